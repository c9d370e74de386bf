//! TLCP's PRF: TLS 1.2's P_hash (RFC 5246 section 5) with HMAC-SM3 (GB/T 38636-2020 6.5.2).

use hmac::{KeyInit, Mac};

type HmacSm3 = hmac::Hmac<sm3::Sm3>;

fn hmac(key: &[u8]) -> HmacSm3 {
    <HmacSm3 as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
}

/// Fills `out` with `PRF(secret, label, seed)`.
pub(crate) fn prf(secret: &[u8], label: &[u8], seed: &[u8], out: &mut [u8]) {
    let base = hmac(secret);
    // A(1) = HMAC(secret, label || seed)
    let mut a = base.clone().chain_update(label).chain_update(seed).finalize().into_bytes();
    let mut filled = 0;
    while filled < out.len() {
        let block =
            base.clone().chain_update(a).chain_update(label).chain_update(seed).finalize().into_bytes();
        let n = (out.len() - filled).min(block.len());
        out[filled..filled + n].copy_from_slice(&block[..n]);
        filled += n;
        a = base.clone().chain_update(a).finalize().into_bytes();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prf_is_p_sm3_by_its_definition() {
        // P_SM3 written out for two blocks: HMAC(s, A(1) || seed) || HMAC(s, A(2) || seed),
        // A(1) = HMAC(s, seed), A(2) = HMAC(s, A(1)), with seed = label || seed.
        let (s, label, seed) = (b"secret".as_slice(), b"key expansion".as_slice(), b"randoms".as_slice());
        let h = |parts: &[&[u8]]| {
            let mut m = hmac(s);
            for p in parts {
                m.update(p);
            }
            m.finalize().into_bytes().to_vec()
        };
        let a1 = h(&[label, seed]);
        let a2 = h(&[&a1]);
        let mut expected = h(&[&a1, label, seed]);
        expected.extend(h(&[&a2, label, seed]));
        let mut out = [0u8; 48];
        prf(s, label, seed, &mut out);
        assert_eq!(&out[..], &expected[..48]);
        // Any length is a prefix of a longer one.
        let mut short = [0u8; 12];
        prf(s, label, seed, &mut short);
        assert_eq!(short, out[..12]);
    }
}
