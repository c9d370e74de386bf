//! Claim codes: 80 random bits written as 16 Crockford base32 characters in four groups
//! (`7KQ2-M9XD-4HPT-ZC3W`), and the salted verifier that the manifest and staging keep instead.
//!
//! Verifier format: `hmac-sm3$<16-byte salt, hex>$<HMAC-SM3(salt, canonical code), hex>`.
//! A slow password hash is not needed: the code has 80 bits of entropy, so an offline search of
//! a stolen manifest costs about 2^79 HMAC evaluations per device, and the salt stops
//! precomputation across devices. Online guessing is bounded by staging's rate limits.

use std::fmt;

use claimlink_gm::hmac_sm3;
use rand_core::CryptoRng;
use zeroize::Zeroizing;

/// Crockford base32 alphabet (no I, L, O, U).
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Characters in a claim code (without separators).
pub const CODE_CHARS: usize = 16;

/// A claim code. `Debug` does not show it.
pub struct ClaimCode(Zeroizing<String>);

/// Input that is not a claim code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a claim code: expected 16 characters of 0-9 and A-Z (without I, L, O, U), dashes optional")]
pub struct ClaimCodeError;

impl ClaimCode {
    /// A fresh random code (80 bits).
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut bytes = Zeroizing::new([0u8; 10]);
        rng.fill_bytes(bytes.as_mut());
        let mut bits: u128 = 0;
        for b in bytes.iter() {
            bits = (bits << 8) | u128::from(*b);
        }
        let chars: String = (0..CODE_CHARS)
            .map(|i| ALPHABET[((bits >> (5 * (CODE_CHARS - 1 - i))) & 31) as usize] as char)
            .collect();
        Self(Zeroizing::new(chars))
    }

    /// Parses what a person typed: case-insensitive, dashes and spaces ignored, and the
    /// Crockford look-alikes O -> 0, I/L -> 1 accepted.
    pub fn parse(input: &str) -> Result<Self, ClaimCodeError> {
        let mut out = Zeroizing::new(String::with_capacity(CODE_CHARS));
        for c in input.chars().filter(|c| *c != '-' && !c.is_whitespace()) {
            let c = match c.to_ascii_uppercase() {
                'O' => '0',
                'I' | 'L' => '1',
                c => c,
            };
            if !c.is_ascii() || !ALPHABET.contains(&(c as u8)) || out.len() == CODE_CHARS {
                return Err(ClaimCodeError);
            }
            out.push(c);
        }
        if out.len() != CODE_CHARS {
            return Err(ClaimCodeError);
        }
        Ok(Self(out))
    }

    /// The canonical 16 characters (for the QR payload).
    pub fn expose_canonical(&self) -> &str {
        &self.0
    }

    /// The code in four dash-separated groups, as printed on labels.
    pub fn expose_grouped(&self) -> String {
        self.0
            .as_bytes()
            .chunks(4)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join("-")
    }

    /// A salted verifier of this code.
    pub fn verifier<R: CryptoRng + ?Sized>(&self, rng: &mut R) -> String {
        let mut salt = [0u8; 16];
        rng.fill_bytes(&mut salt);
        let mac = hmac_sm3(&salt, self.0.as_bytes());
        format!("hmac-sm3${}${}", hex::encode(salt), hex::encode(mac))
    }

    /// Whether this code matches `verifier` (constant-time comparison of the MAC).
    pub fn matches(&self, verifier: &str) -> bool {
        let mut parts = verifier.split('$');
        let (Some("hmac-sm3"), Some(salt), Some(mac), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        let (Ok(salt), Ok(expected)) = (hex::decode(salt), hex::decode(mac)) else {
            return false;
        };
        let actual = hmac_sm3(&salt, self.0.as_bytes());
        expected.len() == actual.len()
            && expected.iter().zip(actual).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

impl fmt::Debug for ClaimCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClaimCode(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng() -> rand_core::UnwrapErr<getrandom::SysRng> {
        rand_core::UnwrapErr(getrandom::SysRng)
    }

    #[test]
    fn generated_codes_parse_back_and_match_their_verifier_only() {
        let code = ClaimCode::generate(&mut rng());
        let grouped = code.expose_grouped();
        assert_eq!(grouped.len(), 19);
        let v = code.verifier(&mut rng());
        assert!(ClaimCode::parse(&grouped.to_lowercase()).unwrap().matches(&v));
        let other = ClaimCode::generate(&mut rng());
        assert!(!other.matches(&v));
        assert!(!code.matches("hmac-sm3$00$00"));
        assert!(!code.matches("garbage"));
        // Two verifiers of one code differ (salted).
        assert_ne!(v, code.verifier(&mut rng()));
    }

    #[test]
    fn typing_mistakes_of_look_alikes_are_forgiven_and_bad_input_refused() {
        let code = ClaimCode::parse("0111-2222-3333-4444").unwrap();
        assert_eq!(
            ClaimCode::parse("OIL1 2222 3333 4444").unwrap().expose_canonical(),
            code.expose_canonical()
        );
        for bad in
            ["", "0111-2222-3333-444", "0111-2222-3333-44445", "U111-2222-3333-4444", "ä111222233334444"]
        {
            assert_eq!(ClaimCode::parse(bad).err(), Some(ClaimCodeError), "{bad}");
        }
    }

    #[test]
    fn debug_hides_the_code() {
        let code = ClaimCode::generate(&mut rng());
        assert!(!format!("{code:?}").contains(code.expose_canonical()));
    }
}
