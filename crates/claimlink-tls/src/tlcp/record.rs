//! TLCP's record layer (GB/T 38636-2020 section 6.3): 5-byte headers with version 0x0101, and
//! the two protections of the SM4 suites. CBC is MAC-then-encrypt with HMAC-SM3 and an explicit
//! IV per record; its opening is constant-time in the padding and the MAC (below). GCM is as in
//! TLS 1.2 (RFC 5288): a 4-byte implicit salt from the key block and the 8-byte sequence number
//! sent as the explicit nonce.

use claimlink_gm::sm4::{AeadMode, GCM_NONCE_LEN, GCM_TAG_LEN, Sm4Aead};
use claimlink_gm::{Sm4Cbc, Sm4Key};
use hmac::{KeyInit, Mac};
use zeroize::Zeroizing;

use super::{AlertDescription, Error};

/// The record version of TLCP.
pub(crate) const VERSION: [u8; 2] = [0x01, 0x01];
/// Largest plaintext fragment (2^14).
pub(crate) const MAX_FRAGMENT: usize = 16_384;
/// Largest protected fragment accepted: 2^14 + 2048 as TLS allows.
pub(crate) const MAX_CIPHERTEXT: usize = MAX_FRAGMENT + 2048;
/// Header length.
pub(crate) const HEADER: usize = 5;

const MAC_LEN: usize = 32;
const BLOCK: usize = 16;
const EXPLICIT_NONCE: usize = 8;

/// Content types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ContentType {
    ChangeCipherSpec = 20,
    Alert = 21,
    Handshake = 22,
    ApplicationData = 23,
}

impl ContentType {
    pub(crate) fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            20 => Self::ChangeCipherSpec,
            21 => Self::Alert,
            22 => Self::Handshake,
            23 => Self::ApplicationData,
            _ => return None,
        })
    }
}

type HmacSm3 = hmac::Hmac<sm3::Sm3>;

/// One direction's protection.
pub(crate) enum Protection {
    /// Before ChangeCipherSpec.
    Null,
    Cbc {
        cipher: Sm4Cbc,
        mac_key: Zeroizing<[u8; MAC_LEN]>,
    },
    Gcm {
        aead: Box<Sm4Aead>,
        salt: [u8; 4],
    },
}

impl std::fmt::Debug for Protection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Null => "Null",
            Self::Cbc { .. } => "SM4-CBC/HMAC-SM3",
            Self::Gcm { .. } => "SM4-GCM",
        })
    }
}

impl Protection {
    /// CBC keys: MAC key (32 bytes) and SM4 key.
    pub(crate) fn cbc(mac_key: &[u8], key: &[u8]) -> Self {
        let mut mk = Zeroizing::new([0u8; MAC_LEN]);
        mk.copy_from_slice(mac_key);
        let key = Sm4Key::from_slice(key).unwrap_or_else(|_| unreachable!("key block slices are 16 bytes"));
        Self::Cbc { cipher: Sm4Cbc::new(&key), mac_key: mk }
    }

    /// GCM key and 4-byte salt.
    pub(crate) fn gcm(key: &[u8], salt: &[u8]) -> Self {
        let key = Sm4Key::from_slice(key).unwrap_or_else(|_| unreachable!("key block slices are 16 bytes"));
        let mut s = [0u8; 4];
        s.copy_from_slice(salt);
        Self::Gcm { aead: Box::new(Sm4Aead::new(AeadMode::Gcm, &key)), salt: s }
    }
}

/// One direction: its protection and sequence number.
#[derive(Debug)]
pub(crate) struct Direction {
    pub(crate) protection: Protection,
    seq: u64,
}

impl Default for Direction {
    fn default() -> Self {
        Self { protection: Protection::Null, seq: 0 }
    }
}

fn mac_header(seq: u64, typ: u8, len: usize) -> [u8; 13] {
    let mut h = [0u8; 13];
    h[..8].copy_from_slice(&seq.to_be_bytes());
    h[8] = typ;
    h[9..11].copy_from_slice(&VERSION);
    h[11..13].copy_from_slice(&(len as u16).to_be_bytes());
    h
}

fn bad_mac() -> Error {
    Error::alert(AlertDescription::BadRecordMac, "record failed authentication")
}

impl Direction {
    /// A fresh direction under `protection`, sequence number 0 (after ChangeCipherSpec).
    pub(crate) fn new(protection: Protection) -> Self {
        Self { protection, seq: 0 }
    }

    pub(crate) fn is_protected(&self) -> bool {
        !matches!(self.protection, Protection::Null)
    }

    fn next_seq(&mut self) -> Result<u64, Error> {
        let seq = self.seq;
        self.seq = seq
            .checked_add(1)
            .ok_or_else(|| Error::alert(AlertDescription::InternalError, "sequence number exhausted"))?;
        Ok(seq)
    }

    /// Appends one record carrying `plaintext` (at most [`MAX_FRAGMENT`] bytes) to `out`.
    pub(crate) fn seal(
        &mut self,
        typ: ContentType,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        debug_assert!(plaintext.len() <= MAX_FRAGMENT);
        let seq = if self.is_protected() { self.next_seq()? } else { 0 };
        let start = out.len();
        out.extend_from_slice(&[typ as u8, VERSION[0], VERSION[1], 0, 0]);
        match &self.protection {
            Protection::Null => out.extend_from_slice(plaintext),
            Protection::Cbc { cipher, mac_key } => {
                let mut mac = <HmacSm3 as KeyInit>::new_from_slice(&mac_key[..])
                    .unwrap_or_else(|_| unreachable!("any key length"));
                mac.update(&mac_header(seq, typ as u8, plaintext.len()));
                mac.update(plaintext);
                let tag = mac.finalize().into_bytes();
                let mut iv = [0u8; BLOCK];
                getrandom::fill(&mut iv)
                    .map_err(|_| Error::alert(AlertDescription::InternalError, "no randomness"))?;
                out.extend_from_slice(&iv);
                let body = out.len();
                out.extend_from_slice(plaintext);
                out.extend_from_slice(&tag);
                let pad = BLOCK - 1 - (plaintext.len() + MAC_LEN) % BLOCK;
                out.resize(out.len() + pad + 1, pad as u8);
                cipher.encrypt_in_place(&iv, &mut out[body..]).map_err(|_| Error::internal("CBC length"))?;
            }
            Protection::Gcm { aead, salt } => {
                let explicit = seq.to_be_bytes();
                let mut nonce = [0u8; GCM_NONCE_LEN];
                nonce[..4].copy_from_slice(salt);
                nonce[4..].copy_from_slice(&explicit);
                out.extend_from_slice(&explicit);
                let body = out.len();
                out.extend_from_slice(plaintext);
                let tag = aead
                    .seal_in_place(&nonce, &mac_header(seq, typ as u8, plaintext.len()), &mut out[body..])
                    .map_err(|_| Error::internal("GCM length"))?;
                out.extend_from_slice(&tag);
            }
        }
        let len = out.len() - start - HEADER;
        out[start + 3..start + 5].copy_from_slice(&(len as u16).to_be_bytes());
        Ok(())
    }

    /// Opens the fragment of a record of type `typ` in place, leaving the plaintext in
    /// `fragment`. Every failure is `bad_record_mac`, whatever failed.
    pub(crate) fn open(&mut self, typ: u8, fragment: &mut Vec<u8>) -> Result<(), Error> {
        if !self.is_protected() {
            return if fragment.len() > MAX_FRAGMENT {
                Err(Error::alert(AlertDescription::RecordOverflow, "plaintext record over 2^14 bytes"))
            } else {
                Ok(())
            };
        }
        let seq = self.next_seq()?;
        match &self.protection {
            Protection::Null => unreachable!("checked above"),
            Protection::Cbc { cipher, mac_key } => {
                // IV, then at least one block holding the MAC and one byte of padding.
                let len = fragment.len();
                if len < BLOCK + (MAC_LEN + 1).next_multiple_of(BLOCK) || !len.is_multiple_of(BLOCK) {
                    return Err(bad_mac());
                }
                let iv: [u8; BLOCK] =
                    fragment[..BLOCK].try_into().unwrap_or_else(|_| unreachable!("16 bytes"));
                cipher.decrypt_in_place(&iv, &mut fragment[BLOCK..]).map_err(|_| bad_mac())?;
                let body = &fragment[BLOCK..];
                let plain_len = cbc_open_constant_time(mac_key, seq, typ, body)?;
                fragment.copy_within(BLOCK..BLOCK + plain_len, 0);
                fragment.truncate(plain_len);
            }
            Protection::Gcm { aead, salt } => {
                if fragment.len() < EXPLICIT_NONCE + GCM_TAG_LEN {
                    return Err(bad_mac());
                }
                let mut nonce = [0u8; GCM_NONCE_LEN];
                nonce[..4].copy_from_slice(salt);
                nonce[4..].copy_from_slice(&fragment[..EXPLICIT_NONCE]);
                let plain_len = fragment.len() - EXPLICIT_NONCE - GCM_TAG_LEN;
                let tag: [u8; GCM_TAG_LEN] = fragment[fragment.len() - GCM_TAG_LEN..]
                    .try_into()
                    .unwrap_or_else(|_| unreachable!("16 bytes"));
                let aad = mac_header(seq, typ, plain_len);
                aead.open_in_place(
                    &nonce,
                    &aad,
                    &mut fragment[EXPLICIT_NONCE..EXPLICIT_NONCE + plain_len],
                    &tag,
                )
                .map_err(|_| bad_mac())?;
                fragment.copy_within(EXPLICIT_NONCE..EXPLICIT_NONCE + plain_len, 0);
                fragment.truncate(plain_len);
            }
        }
        if fragment.len() > MAX_FRAGMENT {
            return Err(Error::alert(AlertDescription::RecordOverflow, "record over 2^14 bytes"));
        }
        Ok(())
    }
}

/// All-ones when `a < b`, else zero (both below 2^31), without a branch.
fn ct_lt(a: usize, b: usize) -> u8 {
    (((a as u64).wrapping_sub(b as u64)) >> 63) as u8 * 0xff
}

/// All-ones when `a == b`, else zero.
fn ct_eq(a: usize, b: usize) -> u8 {
    let x = (a ^ b) as u64;
    // (x | -x) has its top bit set exactly when x != 0.
    let nonzero = ((x | x.wrapping_neg()) >> 63) as u8;
    nonzero.wrapping_sub(1)
}

/// HMAC-SM3 over `mac_header(seq, typ, len) || body[..len]` in constant time for a secret
/// `len` between `min_len` and `max_len` (both public): the blocks before the first byte that
/// can differ are hashed as they are; every block after it, up to the last the longest message
/// needs, is built byte by byte with masks (data, the 0x80, zeros, and the bit length in
/// whichever block ends the message) and compressed, and the state after the block that ends
/// this message is kept with masks. The same blocks are compressed whatever `len` is (the
/// construction of OpenSSL's `ssl3_cbc_digest_record`).
fn hmac_sm3_ct(
    mac_key: &[u8; MAC_LEN],
    seq: u64,
    typ: u8,
    body: &[u8],
    len: usize,
    min_len: usize,
    max_len: usize,
) -> [u8; 32] {
    use digest::block_api::UpdateCore;
    use digest::common::hazmat::SerializableState;
    const HEADER_AT: usize = 64;
    const DATA_AT: usize = HEADER_AT + 13;
    let mut ipad = [0x36u8; 64];
    let mut opad = [0x5cu8; 64];
    for (i, k) in mac_key.iter().enumerate() {
        ipad[i] ^= k;
        opad[i] ^= k;
    }
    let header = mac_header(seq, typ, len);
    // The inner message's byte at `p` for any length: ipad, header, data.
    let byte = |p: usize| -> u8 {
        if p < HEADER_AT {
            ipad[p]
        } else if p < DATA_AT {
            header[p - HEADER_AT]
        } else {
            body.get(p - DATA_AT).copied().unwrap_or(0)
        }
    };
    let total = DATA_AT + len;
    let bit_len = ((total as u64) * 8).to_be_bytes();
    // The block holding the length field: the last of ceil((total + 9) / 64).
    let final_block = (total + 8) / 64;
    let fixed_blocks = (DATA_AT + min_len) / 64;
    let last_block = (DATA_AT + max_len + 8) / 64;
    let mut core = sm3::Sm3Core::default();
    let mut block = [0u8; 64];
    for i in 0..fixed_blocks {
        for (j, b) in block.iter_mut().enumerate() {
            *b = byte(64 * i + j);
        }
        core.update_blocks(&[block.into()]);
    }
    let mut state = [0u8; 32];
    for i in fixed_blocks..=last_block {
        // The masks go through black_box: knowing they are 0 or 0xff, the optimiser may turn
        // `x & mask` back into a branch on the secret length.
        let is_final = std::hint::black_box(ct_eq(i, final_block));
        for (j, b) in block.iter_mut().enumerate() {
            let p = 64 * i + j;
            let data = byte(p) & std::hint::black_box(ct_lt(p, total));
            let marker = 0x80 & std::hint::black_box(ct_eq(p, total));
            let length = if j >= 56 { bit_len[j - 56] & is_final } else { 0 };
            *b = data | marker | length;
        }
        core.update_blocks(&[block.into()]);
        let serialized = core.serialize();
        for (s, v) in state.iter_mut().zip(serialized.iter()) {
            *s |= v & is_final;
        }
    }
    // The serialized state is the eight words little-endian; the digest is them big-endian.
    let mut inner = [0u8; 32];
    for (out, word) in inner.chunks_exact_mut(4).zip(state.chunks_exact(4)) {
        out.copy_from_slice(&[word[3], word[2], word[1], word[0]]);
    }
    let mut outer = sm3::Sm3::default();
    sm3::Digest::update(&mut outer, opad);
    sm3::Digest::update(&mut outer, inner);
    sm3::Digest::finalize(outer).into()
}

/// Checks the padding and MAC of a decrypted CBC body (plaintext || MAC || padding) and returns
/// the plaintext's length. Constant-time in what an attacker learns from timing (Lucky
/// Thirteen): the padding is checked over the largest possible span with masks; the MAC is
/// computed over the plaintext the padding byte implies (the longest one when the padding is
/// bad) by [`hmac_sm3_ct`], whose work does not depend on that length; the received MAC is
/// copied out from a fixed window with masks and compared without early exit.
fn cbc_open_constant_time(mac_key: &[u8; MAC_LEN], seq: u64, typ: u8, body: &[u8]) -> Result<usize, Error> {
    let len = body.len();
    let pad = body[len - 1] as usize;
    // Every byte of the padding (pad + 1 bytes, the last included) must equal pad. The last
    // 256 bytes (or the whole body) are read, counting only those inside the padding; a
    // padding longer than the body fails the length check.
    let mut bad = 0u8;
    for i in 0..len.min(256) {
        bad |= std::hint::black_box(ct_lt(i, pad + 1)) & (body[len - 1 - i] ^ pad as u8);
    }
    let good = std::hint::black_box(!ct_lt(len, pad + 1 + MAC_LEN) & ct_eq(bad as usize, 0));
    // The plaintext length: as the padding says when good, else the longest.
    let longest = len - 1 - MAC_LEN;
    let shortest = len.saturating_sub(256 + MAC_LEN);
    let claimed = len.wrapping_sub(pad + 1 + MAC_LEN);
    let plain_len = (claimed & mask_usize(good)) | (longest & !mask_usize(good));
    let computed = hmac_sm3_ct(mac_key, seq, typ, body, plain_len, shortest, longest);
    // The received MAC sits at plain_len..plain_len + 32; copy it out of the window that holds
    // every possible position, one masked byte at a time.
    let window_start = len.saturating_sub(MAC_LEN + 256);
    let mut received = [0u8; MAC_LEN];
    for (i, &b) in body.iter().enumerate().skip(window_start) {
        // The byte goes into at most one place: the offset from the MAC's start, masked.
        let offset = i.wrapping_sub(plain_len);
        for (j, r) in received.iter_mut().enumerate() {
            *r |= b & std::hint::black_box(ct_eq(offset, j));
        }
    }
    let mut diff = 0u8;
    for (a, b) in received.iter().zip(computed.iter()) {
        diff |= a ^ b;
    }
    let ok = good & ct_eq(diff as usize, 0);
    if ok == 0xff { Ok(plain_len) } else { Err(bad_mac()) }
}

fn mask_usize(m: u8) -> usize {
    (m as usize & 1).wrapping_neg()
}

/// The header of a record: its type byte and fragment length, if the version is TLCP's and
/// the length is acceptable.
pub(crate) fn parse_header(h: &[u8; HEADER]) -> Result<(u8, usize), Error> {
    if h[1..3] != VERSION {
        return Err(Error::alert(AlertDescription::ProtocolVersion, "record version is not TLCP's 0x0101"));
    }
    let len = u16::from_be_bytes([h[3], h[4]]) as usize;
    if len > MAX_CIPHERTEXT {
        return Err(Error::alert(AlertDescription::RecordOverflow, "record longer than 2^14 + 2048 bytes"));
    }
    Ok((h[0], len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(cbc: bool) -> (Direction, Direction) {
        let (k, m) = ([3u8; 16], [9u8; 32]);
        let p = || if cbc { Protection::cbc(&m, &k) } else { Protection::gcm(&k, &[1, 2, 3, 4]) };
        (Direction::new(p()), Direction::new(p()))
    }

    #[test]
    fn records_round_trip_at_every_length_that_matters() {
        for cbc in [true, false] {
            let (mut tx, mut rx) = pair(cbc);
            for n in [0usize, 1, 15, 16, 17, 31, 32, 33, 255, 256, 1000, MAX_FRAGMENT] {
                let data: Vec<u8> = (0..n).map(|i| i as u8).collect();
                let mut out = Vec::new();
                assert!(tx.seal(ContentType::ApplicationData, &data, &mut out).is_ok());
                let h: [u8; HEADER] = out[..HEADER].try_into().unwrap_or([0; HEADER]);
                let (typ, len) = parse_header(&h).unwrap_or((0, 0));
                assert_eq!((typ, len), (23, out.len() - HEADER));
                let mut frag = out[HEADER..].to_vec();
                assert!(rx.open(typ, &mut frag).is_ok(), "cbc={cbc} n={n}");
                assert_eq!(frag, data);
            }
        }
    }

    #[test]
    fn any_flipped_bit_replayed_or_reordered_record_is_bad_record_mac() {
        for cbc in [true, false] {
            let (mut tx, mut rx) = pair(cbc);
            let mut a = Vec::new();
            let mut b = Vec::new();
            assert!(tx.seal(ContentType::ApplicationData, b"first record", &mut a).is_ok());
            assert!(tx.seal(ContentType::ApplicationData, b"second record", &mut b).is_ok());
            // Out of order: sequence number 0 expected, the second record carries 1.
            let mut frag = b[HEADER..].to_vec();
            let e = rx.open(23, &mut frag).err().map(|e| e.alert);
            assert_eq!(e, Some(AlertDescription::BadRecordMac), "cbc={cbc}");
            for byte in 0..a.len() - HEADER {
                let (_, mut rx) = pair(cbc);
                let mut frag = a[HEADER..].to_vec();
                frag[byte] ^= 0x40;
                assert!(rx.open(23, &mut frag).is_err(), "cbc={cbc} byte {byte}");
            }
            // The wrong content type is authenticated too.
            let (_, mut rx) = pair(cbc);
            let mut frag = a[HEADER..].to_vec();
            assert!(rx.open(22, &mut frag).is_err());
        }
    }

    #[test]
    fn cbc_padding_of_every_value_is_checked() {
        // Bodies built by hand (plaintext || MAC || padding), encrypted: the valid one opens, and
        // one wrong padding byte anywhere, or a padding length longer than the body, fails.
        let (k, m) = ([5u8; 16], [6u8; 32]);
        let key = Sm4Key::from_slice(&k).unwrap_or_else(|_| unreachable!());
        let iv = [0u8; 16];
        let open = |body: &[u8]| {
            let mut body = body.to_vec();
            assert!(Sm4Cbc::new(&key).encrypt_in_place(&iv, &mut body).is_ok());
            let mut frag = iv.to_vec();
            frag.extend_from_slice(&body);
            let mut rx = Direction::new(Protection::cbc(&m, &k));
            rx.open(23, &mut frag).map(|()| frag)
        };
        for wanted in [0usize, 1, 7, 15, 31, 255] {
            let plaintext = b"0123456789";
            let mut mac = <HmacSm3 as KeyInit>::new_from_slice(&m).unwrap_or_else(|_| unreachable!());
            mac.update(&mac_header(0, 23, plaintext.len()));
            mac.update(plaintext);
            let mut body = plaintext.to_vec();
            body.extend_from_slice(&mac.finalize().into_bytes());
            let mut total = (body.len() + wanted + 1).next_multiple_of(16);
            if total - body.len() - 1 > 255 {
                total -= 16;
            }
            let pad = total - body.len() - 1;
            body.resize(total, pad as u8);
            assert_eq!(open(&body).ok().as_deref(), Some(&plaintext[..]), "pad {pad}");
            for c in 1..=pad {
                let mut bad = body.clone();
                let at = bad.len() - 1 - c;
                bad[at] ^= 1;
                assert!(open(&bad).is_err(), "pad {pad}, byte {c} from the end");
            }
            if body.len() < 255 + 1 + MAC_LEN {
                let mut bad = body.clone();
                let last = bad.len() - 1;
                bad[last] = 255;
                assert!(open(&bad).is_err(), "padding longer than the body");
            }
        }
    }

    #[test]
    fn headers_with_the_wrong_version_or_an_oversized_length_are_refused() {
        assert!(parse_header(&[23, 3, 3, 0, 1]).is_err());
        assert!(parse_header(&[23, 1, 1, 0xff, 0xff]).is_err());
        assert_eq!(parse_header(&[22, 1, 1, 0, 5]).ok(), Some((22, 5)));
    }

    /// A CBC body of `len` bytes (plaintext || MAC || padding) with a correct padding of
    /// `pad` and a MAC that does not verify (a forged record, as an attacker sends).
    fn forged_body(len: usize, pad: usize, fill: u8) -> Vec<u8> {
        let mut body = vec![fill; len];
        for b in &mut body[len - 1 - pad..] {
            *b = pad as u8;
        }
        body
    }

    /// The MAC check written the naive way (the MAC over the length the padding claims, no
    /// dummy work): what the timing test must be able to tell apart.
    fn naive_open(mac_key: &[u8; MAC_LEN], body: &[u8]) -> bool {
        let pad = body[body.len() - 1] as usize;
        let Some(plain_len) = body.len().checked_sub(pad + 1 + MAC_LEN) else { return false };
        let mut mac = <HmacSm3 as KeyInit>::new_from_slice(mac_key).unwrap_or_else(|_| unreachable!());
        mac.update(&mac_header(0, 23, plain_len));
        mac.update(&body[..plain_len]);
        mac.finalize().into_bytes()[..] == body[plain_len..plain_len + MAC_LEN]
    }

    /// Lucky Thirteen, statistically: forged records whose padding is valid and short (class 0)
    /// or valid and of a random length up to 255 bytes (class 1) take the same time to refuse,
    /// while the naive check is told apart by the same harness.
    #[test]
    fn cbc_refusal_time_does_not_depend_on_the_padding_length() {
        use claimlink_testkit::dudect::{LEAK, max_t};
        use rand_core::Rng as _;
        let mut rng = rand_core::UnwrapErr(getrandom::SysRng);
        let mac_key = [7u8; MAC_LEN];
        let len = 512;
        let total = 40_000;
        let mut classes = vec![0u8; total];
        rng.fill_bytes(&mut classes);
        let bodies: Vec<Vec<u8>> = classes
            .iter()
            .map(|c| {
                let pad = if c & 1 == 0 { 0 } else { (rng.next_u32() % 256) as usize };
                forged_body(len, pad, 0x41)
            })
            .collect();
        let naive = max_t(&bodies, &classes, |b| {
            std::hint::black_box(naive_open(&mac_key, b));
        });
        assert!(naive > LEAK, "the harness did not see the naive check's leak (|t| = {naive:.1})");
        let ours = max_t(&bodies, &classes, |b| {
            std::hint::black_box(cbc_open_constant_time(&mac_key, 0, 23, b).is_ok());
        });
        assert!(
            ours < LEAK,
            "refusing a forged CBC record takes longer or shorter with its padding (|t| = {ours:.1})"
        );
    }

    #[test]
    fn the_constant_time_hmac_is_hmac_sm3_at_every_length() {
        let key = [9u8; MAC_LEN];
        for len in [48usize, 64, 100, 200, 300, 512, 1000] {
            let body: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let longest = len - 1 - MAC_LEN;
            let shortest = len.saturating_sub(256 + MAC_LEN);
            for l in shortest..=longest {
                let mut mac = <HmacSm3 as KeyInit>::new_from_slice(&key).unwrap_or_else(|_| unreachable!());
                mac.update(&mac_header(3, 23, l));
                mac.update(&body[..l]);
                let want: [u8; 32] = mac.finalize().into_bytes().into();
                assert_eq!(hmac_sm3_ct(&key, 3, 23, &body, l, shortest, longest), want, "len {len}, l {l}");
            }
        }
    }

    #[test]
    fn constant_time_helpers() {
        assert_eq!(ct_lt(1, 2), 0xff);
        assert_eq!(ct_lt(2, 2), 0);
        assert_eq!(ct_lt(3, 2), 0);
        assert_eq!(ct_eq(7, 7), 0xff);
        assert_eq!(ct_eq(7, 8), 0);
        assert_eq!(mask_usize(0xff), usize::MAX);
        assert_eq!(mask_usize(0), 0);
    }
}
