//! SM3 hash (GM/T 0004-2012) and HMAC-SM3 (RFC 2104 over SM3).

use hmac::{KeyInit, Mac};

pub use ::sm3::{Digest, Sm3};

/// HMAC with SM3 as the hash function.
pub type HmacSm3 = hmac::Hmac<Sm3>;

/// The SM3 digest of `data`.
pub fn sm3(data: &[u8]) -> [u8; 32] {
    Sm3::digest(data).into()
}

/// HMAC-SM3 of `data` under `key` (any key length, as RFC 2104 allows).
pub fn hmac_sm3(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = <HmacSm3 as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable_key());
    mac.update(data);
    mac.finalize().into_bytes().into()
}

// HMAC accepts keys of every length; `new_from_slice` only fails for fixed-size-key MACs.
fn unreachable_key() -> HmacSm3 {
    <HmacSm3 as KeyInit>::new(&Default::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sm3_standard_vectors() {
        assert_eq!(
            hex::encode(sm3(b"abc")),
            "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
        );
        assert_eq!(
            hex::encode(sm3(&b"abcd".repeat(16))),
            "debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732"
        );
    }

    #[test]
    fn hmac_sm3_matches_rfc2104_construction() {
        // Independent construction from the RFC 2104 definition, for a short and a long key.
        for key in [&b"key"[..], &[0x42u8; 100][..]] {
            let mut k = if key.len() > 64 { sm3(key).to_vec() } else { key.to_vec() };
            k.resize(64, 0);
            let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
            let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
            let inner = sm3(&[&ipad[..], b"message"].concat());
            let outer = sm3(&[&opad[..], &inner[..]].concat());
            assert_eq!(hmac_sm3(key, b"message"), outer);
        }
    }

    #[test]
    fn hmac_sm3_known_answer() {
        // HMAC-SM3 vector from the Python `gmssl`/OpenSSL cross-check:
        // openssl mac -digest SM3 -macopt hexkey:0b0b..0b(20) HMAC <<< "Hi There"
        let key = [0x0bu8; 20];
        assert_eq!(
            hex::encode(hmac_sm3(&key, b"Hi There")),
            "51b00d1fb49832bfb01c3ce27848e59f871d9ba938dc563b338ca964755cce70"
        );
    }
}
