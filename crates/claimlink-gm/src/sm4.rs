//! SM4 block cipher (GB/T 32907-2016) in ECB, CBC, CTR and GCM modes.
//!
//! ECB and CBC pad with PKCS#7 so that any message length round-trips; [`Sm4Key::encrypt_block`]
//! gives the raw block function for test vectors and constructions such as GM/T 0021 OTP.
//! GCM is the generic GCM of the `aes-gcm` crate instantiated over SM4 (RFC 8998 `SM4_GCM`):
//! 12-byte nonce, 16-byte tag appended to the ciphertext. Every mode runs on the constant-time
//! block cipher of [`crate::sm4_ct`] (no table lookups), 16 blocks per pass where the mode allows.

use crate::sm4_ct::Sm4Ct as Sm4;
use aes_gcm::{
    AesGcm,
    aead::{Aead, AeadInOut, Payload},
};
use cbc::cipher::{
    BlockCipherDecrypt, BlockCipherEncrypt, BlockModeDecrypt, BlockModeEncrypt, KeyInit, KeyIvInit,
    StreamCipher, block_padding::Pkcs7, consts::U12,
};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// SM4 block and key size in bytes.
pub const BLOCK_LEN: usize = 16;
/// SM4-GCM nonce length in bytes.
pub const GCM_NONCE_LEN: usize = 12;
/// SM4-GCM tag length in bytes.
pub const GCM_TAG_LEN: usize = 16;

type Sm4Gcm = AesGcm<Sm4, U12>;
type Sm4Ccm = ccm::Ccm<Sm4, ccm::consts::U16, U12>;

/// Errors of SM4 operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Sm4Error {
    /// A key, IV or nonce had the wrong length.
    #[error("{what} must be {expected} bytes, got {actual}")]
    BadLength {
        /// Which input.
        what: &'static str,
        /// Required length.
        expected: usize,
        /// Given length.
        actual: usize,
    },
    /// The ciphertext is not a whole number of blocks or its padding is wrong.
    #[error("ciphertext is not validly padded")]
    BadPadding,
    /// GCM authentication failed: the ciphertext, tag, nonce or AAD was altered.
    #[error("authentication tag mismatch")]
    TagMismatch,
}

/// A 128-bit SM4 key. Zeroized on drop; `Debug` does not show it.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Sm4Key([u8; BLOCK_LEN]);

impl std::fmt::Debug for Sm4Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sm4Key(..)")
    }
}

fn exact<const N: usize>(what: &'static str, bytes: &[u8]) -> Result<[u8; N], Sm4Error> {
    bytes.try_into().map_err(|_| Sm4Error::BadLength { what, expected: N, actual: bytes.len() })
}

impl Sm4Key {
    /// A key from its 16 bytes.
    pub fn new(key: [u8; BLOCK_LEN]) -> Self {
        Self(key)
    }

    /// A key from a slice that must be 16 bytes long.
    pub fn from_slice(key: &[u8]) -> Result<Self, Sm4Error> {
        exact("key", key).map(Self)
    }

    fn cipher(&self) -> Sm4 {
        Sm4::new(&self.0.into())
    }

    /// Encrypts one 16-byte block in place (the raw block function).
    pub fn encrypt_block(&self, block: &mut [u8; BLOCK_LEN]) {
        let mut b = (*block).into();
        self.cipher().encrypt_block(&mut b);
        *block = b.into();
    }

    /// Decrypts one 16-byte block in place.
    pub fn decrypt_block(&self, block: &mut [u8; BLOCK_LEN]) {
        let mut b = (*block).into();
        self.cipher().decrypt_block(&mut b);
        *block = b.into();
    }

    /// ECB encryption with PKCS#7 padding.
    pub fn ecb_encrypt(&self, plaintext: &[u8]) -> Vec<u8> {
        let cipher = self.cipher();
        let mut out = pkcs7_pad(plaintext);
        for chunk in out.chunks_exact_mut(BLOCK_LEN) {
            cipher.encrypt_block(chunk.try_into().unwrap_or_else(|_| unreachable!("chunks_exact")));
        }
        out
    }

    /// ECB decryption, removing PKCS#7 padding.
    pub fn ecb_decrypt(&self, ciphertext: &[u8]) -> Result<Vec<u8>, Sm4Error> {
        if ciphertext.is_empty() || !ciphertext.len().is_multiple_of(BLOCK_LEN) {
            return Err(Sm4Error::BadPadding);
        }
        let cipher = self.cipher();
        let mut out = ciphertext.to_vec();
        for chunk in out.chunks_exact_mut(BLOCK_LEN) {
            cipher.decrypt_block(chunk.try_into().unwrap_or_else(|_| unreachable!("chunks_exact")));
        }
        pkcs7_unpad(out)
    }

    /// CBC encryption with PKCS#7 padding under a 16-byte IV.
    pub fn cbc_encrypt(&self, iv: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, Sm4Error> {
        let iv: [u8; BLOCK_LEN] = exact("iv", iv)?;
        let enc = cbc::Encryptor::<Sm4>::new(&self.0.into(), &iv.into());
        Ok(enc.encrypt_padded_vec::<Pkcs7>(plaintext))
    }

    /// CBC decryption, removing PKCS#7 padding.
    pub fn cbc_decrypt(&self, iv: &[u8], ciphertext: &[u8]) -> Result<Vec<u8>, Sm4Error> {
        let iv: [u8; BLOCK_LEN] = exact("iv", iv)?;
        let dec = cbc::Decryptor::<Sm4>::new(&self.0.into(), &iv.into());
        dec.decrypt_padded_vec::<Pkcs7>(ciphertext).map_err(|_| Sm4Error::BadPadding)
    }

    /// CTR mode (128-bit big-endian counter starting at `iv`): encrypts or decrypts in place.
    pub fn ctr_apply(&self, iv: &[u8], data: &mut [u8]) -> Result<(), Sm4Error> {
        let iv: [u8; BLOCK_LEN] = exact("iv", iv)?;
        let mut ctr = ctr::Ctr128BE::<Sm4>::new(&self.0.into(), &iv.into());
        ctr.apply_keystream(data);
        Ok(())
    }

    /// GCM encryption: returns ciphertext || 16-byte tag.
    pub fn gcm_seal(&self, nonce: &[u8], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, Sm4Error> {
        let nonce: [u8; GCM_NONCE_LEN] = exact("nonce", nonce)?;
        let gcm = Sm4Gcm::new(&self.0.into());
        let payload = Payload { msg: plaintext, aad };
        // The only failure is a plaintext over 2^36 - 32 bytes.
        gcm.encrypt(&nonce.into(), payload).map_err(|_| Sm4Error::BadLength {
            what: "plaintext",
            expected: (1 << 36) - 32,
            actual: plaintext.len(),
        })
    }

    /// GCM decryption of ciphertext || tag; fails without output if anything was altered.
    pub fn gcm_open(&self, nonce: &[u8], aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, Sm4Error> {
        let nonce: [u8; GCM_NONCE_LEN] = exact("nonce", nonce)?;
        if sealed.len() < GCM_TAG_LEN {
            return Err(Sm4Error::TagMismatch);
        }
        let gcm = Sm4Gcm::new(&self.0.into());
        let payload = Payload { msg: sealed, aad };
        gcm.decrypt(&nonce.into(), payload).map_err(|_| Sm4Error::TagMismatch)
    }
}

fn pkcs7_pad(data: &[u8]) -> Vec<u8> {
    let pad = BLOCK_LEN - data.len() % BLOCK_LEN;
    let mut out = Vec::with_capacity(data.len() + pad);
    out.extend_from_slice(data);
    out.resize(data.len() + pad, pad as u8);
    out
}

fn pkcs7_unpad(mut data: Vec<u8>) -> Result<Vec<u8>, Sm4Error> {
    let pad = usize::from(*data.last().ok_or(Sm4Error::BadPadding)?);
    if pad == 0 || pad > BLOCK_LEN || pad > data.len() {
        return Err(Sm4Error::BadPadding);
    }
    if !data[data.len() - pad..].iter().all(|&b| usize::from(b) == pad) {
        return Err(Sm4Error::BadPadding);
    }
    data.truncate(data.len() - pad);
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    fn standard_key() -> Sm4Key {
        Sm4Key::from_slice(&h("0123456789abcdeffedcba9876543210")).unwrap()
    }

    #[test]
    fn sm4_block_standard_vector() {
        let key = standard_key();
        let mut block: [u8; 16] = h("0123456789abcdeffedcba9876543210").try_into().unwrap();
        key.encrypt_block(&mut block);
        assert_eq!(hex::encode(block), "681edf34d206965e86b3e94f536e4246");
        key.decrypt_block(&mut block);
        assert_eq!(hex::encode(block), "0123456789abcdeffedcba9876543210");
    }

    #[test]
    fn sm4_block_one_million_iterations() {
        let key = standard_key();
        let mut block: [u8; 16] = h("0123456789abcdeffedcba9876543210").try_into().unwrap();
        for _ in 0..1_000_000 {
            key.encrypt_block(&mut block);
        }
        assert_eq!(hex::encode(block), "595298c7c6fd271f0402f804c33d3f66");
    }

    #[test]
    fn sm4_gcm_rfc8998_vector() {
        let key = standard_key();
        let nonce = h("00001234567800000000ABCD");
        let aad = h("FEEDFACEDEADBEEFFEEDFACEDEADBEEFABADDAD2");
        // RFC 8998 A.1: the plaintext's last eight bytes are AA (the project's REFERENCE.md says
        // DD, a typo: with DD the expected C and T of the RFC are not reproduced by any peer).
        let pt: Vec<u8> =
            [0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0xFF, 0xEE, 0xAA].iter().flat_map(|&b| [b; 8]).collect();
        let sealed = key.gcm_seal(&nonce, &aad, &pt).unwrap();
        let (ct, tag) = sealed.split_at(pt.len());
        assert_eq!(
            hex::encode_upper(ct),
            "17F399F08C67D5EE19D0DC9969C4BB7D5FD46FD3756489069157B282BB200735D82710CA5C22F0CCFA7CBF93D496AC15A56834CBCF98C397B4024A2691233B8D"
        );
        assert_eq!(hex::encode_upper(tag), "83DE3541E4C2B58177E065A9BF7B62EC");
        assert_eq!(key.gcm_open(&nonce, &aad, &sealed).unwrap(), pt);
    }

    #[test]
    fn sm4_gcm_rejects_any_altered_byte() {
        let key = standard_key();
        let nonce = [7u8; 12];
        let sealed = key.gcm_seal(&nonce, b"aad", b"secret payload").unwrap();
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert_eq!(key.gcm_open(&nonce, b"aad", &bad), Err(Sm4Error::TagMismatch));
        }
        assert_eq!(key.gcm_open(&nonce, b"aaX", &sealed), Err(Sm4Error::TagMismatch));
        assert_eq!(key.gcm_open(&nonce, b"aad", &sealed[..10]), Err(Sm4Error::TagMismatch));
    }

    #[test]
    fn sm4_cbc_matches_manual_chaining_and_round_trips() {
        let key = standard_key();
        let iv = [0x11u8; 16];
        let msg = b"thirty-three bytes of plaintext!!";
        let ct = key.cbc_encrypt(&iv, msg).unwrap();
        assert_eq!(ct.len(), 48);
        // First block by hand: E(P1 xor IV).
        let mut b1: [u8; 16] = msg[..16].try_into().unwrap();
        b1.iter_mut().zip(iv).for_each(|(b, v)| *b ^= v);
        key.encrypt_block(&mut b1);
        assert_eq!(&ct[..16], &b1);
        assert_eq!(key.cbc_decrypt(&iv, &ct).unwrap(), msg);
        assert_eq!(key.cbc_decrypt(&iv, &ct[..47]), Err(Sm4Error::BadPadding));
        assert!(matches!(key.cbc_encrypt(&iv[..8], msg), Err(Sm4Error::BadLength { .. })));
    }

    #[test]
    fn sm4_ecb_and_ctr_round_trip() {
        let key = standard_key();
        for len in [0usize, 1, 15, 16, 17, 100] {
            let msg = vec![0x5au8; len];
            let ct = key.ecb_encrypt(&msg);
            assert_eq!(ct.len(), (len / 16 + 1) * 16);
            assert_eq!(key.ecb_decrypt(&ct).unwrap(), msg);
            let mut buf = msg.clone();
            key.ctr_apply(&[0u8; 16], &mut buf).unwrap();
            if len > 0 {
                assert_ne!(buf, msg);
            }
            key.ctr_apply(&[0u8; 16], &mut buf).unwrap();
            assert_eq!(buf, msg);
        }
        // CTR keystream block 0 is E(IV).
        let mut zero = [0u8; 16];
        key.ctr_apply(&[0u8; 16], &mut zero).unwrap();
        let mut e = [0u8; 16];
        key.encrypt_block(&mut e);
        assert_eq!(zero, e);
    }

    #[test]
    fn raw_cbc_is_the_padded_cbc_without_its_last_block() {
        let key = standard_key();
        let iv = [7u8; BLOCK_LEN];
        let data: Vec<u8> = (0u8..160).collect();
        let padded = key.cbc_encrypt(&iv, &data).unwrap_or_default();
        let cbc = Sm4Cbc::new(&key);
        let mut buf = data.clone();
        assert!(cbc.encrypt_in_place(&iv, &mut buf).is_ok());
        assert_eq!(buf, padded[..data.len()]);
        assert!(cbc.decrypt_in_place(&iv, &mut buf).is_ok());
        assert_eq!(buf, data);
        assert!(cbc.encrypt_in_place(&iv, &mut [0u8; 17]).is_err());
        assert!(cbc.decrypt_in_place(&iv, &mut [0u8; 15]).is_err());
    }

    #[test]
    fn sm4_key_debug_hides_the_key() {
        assert_eq!(format!("{:?}", standard_key()), "Sm4Key(..)");
    }
}

/// SM4-CBC over whole blocks without padding, the key schedule made once: for record layers
/// that pad and authenticate themselves (TLCP's `SM4_CBC` suites). Decryption runs the block
/// cipher over all blocks at once (16 per pass) and chains afterwards.
pub struct Sm4Cbc(Sm4);

impl std::fmt::Debug for Sm4Cbc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sm4Cbc(key hidden)")
    }
}

impl Sm4Cbc {
    /// CBC under `key`.
    pub fn new(key: &Sm4Key) -> Self {
        Self(key.cipher())
    }

    fn whole_blocks(buf: &[u8]) -> Result<(), Sm4Error> {
        if buf.len().is_multiple_of(BLOCK_LEN) {
            Ok(())
        } else {
            Err(Sm4Error::BadLength {
                what: "CBC data",
                expected: buf.len().next_multiple_of(BLOCK_LEN),
                actual: buf.len(),
            })
        }
    }

    /// Encrypts `buf` (a whole number of blocks) in place under `iv`.
    pub fn encrypt_in_place(&self, iv: &[u8; BLOCK_LEN], buf: &mut [u8]) -> Result<(), Sm4Error> {
        Self::whole_blocks(buf)?;
        let mut chain = *iv;
        for block in buf.chunks_exact_mut(BLOCK_LEN) {
            for (b, c) in block.iter_mut().zip(chain.iter()) {
                *b ^= c;
            }
            let mut b = cipher::Block::<Sm4>::try_from(&*block).unwrap_or_else(|_| unreachable!("16 bytes"));
            self.0.encrypt_block(&mut b);
            block.copy_from_slice(&b);
            chain.copy_from_slice(block);
        }
        Ok(())
    }

    /// Decrypts `buf` (a whole number of blocks) in place under `iv`.
    pub fn decrypt_in_place(&self, iv: &[u8; BLOCK_LEN], buf: &mut [u8]) -> Result<(), Sm4Error> {
        Self::whole_blocks(buf)?;
        let ciphertext = buf.to_vec();
        let (blocks, _) = cipher::Array::slice_as_chunks_mut(buf);
        self.0.decrypt_blocks(blocks);
        for (i, block) in buf.chunks_exact_mut(BLOCK_LEN).enumerate() {
            let previous = if i == 0 { &iv[..] } else { &ciphertext[(i - 1) * BLOCK_LEN..i * BLOCK_LEN] };
            for (b, p) in block.iter_mut().zip(previous) {
                *b ^= p;
            }
        }
        Ok(())
    }
}

/// Which AEAD of RFC 8998 a [`Sm4Aead`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AeadMode {
    /// SM4-GCM (`TLS_SM4_GCM_SM3`).
    Gcm,
    /// SM4-CCM with a 16-byte tag (`TLS_SM4_CCM_SM3`).
    Ccm,
}

enum AeadState {
    Gcm(Box<Sm4Gcm>),
    Ccm(Box<Sm4Ccm>),
}

/// SM4-GCM or SM4-CCM with its key schedule made once (a TLS connection's direction keeps one),
/// sealing and opening in place: 12-byte nonce, 16-byte tag kept apart.
pub struct Sm4Aead(AeadState);

impl std::fmt::Debug for Sm4Aead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            AeadState::Gcm(_) => "Sm4Aead(GCM, key hidden)",
            AeadState::Ccm(_) => "Sm4Aead(CCM, key hidden)",
        })
    }
}

impl Sm4Aead {
    /// The AEAD `mode` under `key`.
    pub fn new(mode: AeadMode, key: &Sm4Key) -> Self {
        Self(match mode {
            AeadMode::Gcm => AeadState::Gcm(Box::new(Sm4Gcm::new(&key.0.into()))),
            AeadMode::Ccm => AeadState::Ccm(Box::new(Sm4Ccm::new(&key.0.into()))),
        })
    }

    /// Encrypts `buffer` in place; returns the tag.
    pub fn seal_in_place(
        &self,
        nonce: &[u8; GCM_NONCE_LEN],
        aad: &[u8],
        buffer: &mut [u8],
    ) -> Result<[u8; GCM_TAG_LEN], Sm4Error> {
        let len = buffer.len();
        let too_long = |_| Sm4Error::BadLength { what: "plaintext", expected: 1 << 24, actual: len };
        let tag = match &self.0 {
            AeadState::Gcm(c) => {
                c.encrypt_inout_detached(&(*nonce).into(), aad, buffer.into()).map_err(too_long)?
            }
            AeadState::Ccm(c) => {
                c.encrypt_inout_detached(&(*nonce).into(), aad, buffer.into()).map_err(too_long)?
            }
        };
        Ok(tag.into())
    }

    /// Decrypts `buffer` in place if `tag` authenticates it with `aad`; on failure `buffer` is
    /// left as ciphertext (nothing unauthenticated is released).
    pub fn open_in_place(
        &self,
        nonce: &[u8; GCM_NONCE_LEN],
        aad: &[u8],
        buffer: &mut [u8],
        tag: &[u8; GCM_TAG_LEN],
    ) -> Result<(), Sm4Error> {
        match &self.0 {
            AeadState::Gcm(c) => {
                c.decrypt_inout_detached(&(*nonce).into(), aad, buffer.into(), &(*tag).into())
            }
            AeadState::Ccm(c) => {
                c.decrypt_inout_detached(&(*nonce).into(), aad, buffer.into(), &(*tag).into())
            }
        }
        .map_err(|_| Sm4Error::TagMismatch)
    }
}
