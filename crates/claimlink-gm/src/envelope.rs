//! GM/T 0009 `SM2EnvelopedKey`: an SM2 private key delivered to (or archived for) the holder of
//! another SM2 key - how a key management centre hands a subscriber the encryption key pair of
//! its dual certificates.
//!
//! ```text
//! SM2EnvelopedKey ::= SEQUENCE {
//!     symAlgID               AlgorithmIdentifier,  -- SM4 in ECB mode
//!     symEncryptedKey        SM2Cipher,            -- the SM4 key, SM2-encrypted to the recipient
//!     sm2PublicKey           BIT STRING,           -- 04 || x || y of the enveloped key
//!     sm2EncryptedPrivateKey BIT STRING            -- SM4-ECB of its 32-byte private scalar
//! }
//! ```
//!
//! OpenSSL 3.0 can open one with nothing but its CLI: `pkeyutl -decrypt` on `symEncryptedKey`
//! with the recipient's key gives the SM4 key, and `enc -d -sm4-ecb -nopad` on
//! `sm2EncryptedPrivateKey` the scalar (`crates/claimlink/tests/ca_dual.rs` does exactly that).

use der::asn1::{BitString, ObjectIdentifier};
use der::{Decode, Encode, Sequence};
use rand_core::CryptoRng;
use zeroize::Zeroizing;

use crate::sm2::{Sm2CiphertextFormat, Sm2Error, Sm2PrivateKey, Sm2PublicKey};
use crate::sm4::Sm4Key;

/// SM4 in ECB mode (1.2.156.10197.1.104.1), as GM/T 0006 names it; the bare SM4 OID
/// (1.2.156.10197.1.104) is accepted when opening.
const SM4_ECB: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.156.10197.1.104.1");
const SM4: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.156.10197.1.104");

/// Errors of opening an envelope. Messages never contain key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The bytes are not an SM2EnvelopedKey.
    #[error("malformed SM2EnvelopedKey")]
    Malformed,
    /// The symmetric algorithm is not SM4.
    #[error("SM2EnvelopedKey uses a symmetric algorithm other than SM4")]
    UnsupportedAlgorithm,
    /// The SM4 key does not decrypt with this private key (another recipient, or altered).
    #[error("the envelope is not for this key, or it was altered")]
    NotForThisKey,
    /// The private key inside does not match the public key beside it.
    #[error("the enveloped private key does not match its public key")]
    KeyMismatch,
    /// An SM2 operation failed.
    #[error("{0}")]
    Sm2(#[from] Sm2Error),
}

#[derive(Sequence)]
struct AlgorithmIdentifier {
    algorithm: ObjectIdentifier,
}

#[derive(Sequence)]
struct Sm2EnvelopedKey {
    sym_alg_id: AlgorithmIdentifier,
    sym_encrypted_key: der::Any,
    sm2_public_key: BitString,
    sm2_encrypted_private_key: BitString,
}

/// Envelopes `key` to `recipient`: a fresh SM4 key encrypts the private scalar, and SM2
/// encryption to `recipient` carries the SM4 key. Returns the DER.
pub fn seal<R: CryptoRng + ?Sized>(
    rng: &mut R,
    recipient: &Sm2PublicKey,
    key: &Sm2PrivateKey,
) -> Result<Vec<u8>, Sm2Error> {
    let mut sym = Zeroizing::new([0u8; 16]);
    rng.fill_bytes(&mut sym[..]);
    let sm4 = Sm4Key::new(*sym);
    let scalar = key.to_bytes();
    let mut sealed = Zeroizing::new([0u8; 32]);
    sealed.copy_from_slice(&scalar[..]);
    for block in sealed.chunks_exact_mut(16) {
        let block: &mut [u8; 16] = block.try_into().unwrap_or_else(|_| unreachable!("16-byte chunks"));
        sm4.encrypt_block(block);
    }
    let cipher = recipient.encrypt(rng, &sym[..], Sm2CiphertextFormat::Der)?;
    let encoded = Sm2EnvelopedKey {
        sym_alg_id: AlgorithmIdentifier { algorithm: SM4_ECB },
        sym_encrypted_key: der::Any::from_der(&cipher).map_err(|_| Sm2Error::EncryptionFailed)?,
        sm2_public_key: BitString::from_bytes(&key.public_key().to_sec1_uncompressed())
            .map_err(|_| Sm2Error::EncryptionFailed)?,
        sm2_encrypted_private_key: BitString::from_bytes(&sealed[..])
            .map_err(|_| Sm2Error::EncryptionFailed)?,
    };
    encoded.to_der().map_err(|_| Sm2Error::EncryptionFailed)
}

/// The parts of an envelope, for tools that open it themselves (DER of `symEncryptedKey`, the
/// public key, the encrypted scalar).
#[derive(Debug, Clone)]
pub struct EnvelopeParts {
    /// `symEncryptedKey`: the GM/T 0009 DER SM2 ciphertext of the SM4 key.
    pub sym_encrypted_key: Vec<u8>,
    /// `sm2PublicKey`: `04 || x || y`.
    pub public_key: Vec<u8>,
    /// `sm2EncryptedPrivateKey`: SM4-ECB of the 32-byte scalar.
    pub encrypted_private_key: Vec<u8>,
}

/// Splits an envelope into its parts (checking its structure and algorithm).
pub fn parts(der: &[u8]) -> Result<EnvelopeParts, EnvelopeError> {
    let e = Sm2EnvelopedKey::from_der(der).map_err(|_| EnvelopeError::Malformed)?;
    if e.sym_alg_id.algorithm != SM4_ECB && e.sym_alg_id.algorithm != SM4 {
        return Err(EnvelopeError::UnsupportedAlgorithm);
    }
    let (Some(public_key), Some(encrypted)) =
        (e.sm2_public_key.as_bytes(), e.sm2_encrypted_private_key.as_bytes())
    else {
        return Err(EnvelopeError::Malformed);
    };
    if encrypted.len() != 32 {
        return Err(EnvelopeError::Malformed);
    }
    Ok(EnvelopeParts {
        sym_encrypted_key: e.sym_encrypted_key.to_der().map_err(|_| EnvelopeError::Malformed)?,
        public_key: public_key.to_vec(),
        encrypted_private_key: encrypted.to_vec(),
    })
}

/// Opens an envelope with the recipient's private key: the enveloped private key, checked
/// against the public key beside it.
pub fn open(recipient: &Sm2PrivateKey, der: &[u8]) -> Result<Sm2PrivateKey, EnvelopeError> {
    let p = parts(der)?;
    let sym = recipient
        .decrypt(&p.sym_encrypted_key, Sm2CiphertextFormat::Der)
        .map_err(|_| EnvelopeError::NotForThisKey)?;
    let sym: [u8; 16] = sym[..].try_into().map_err(|_| EnvelopeError::NotForThisKey)?;
    let sm4 = Sm4Key::new(sym);
    let mut scalar = Zeroizing::new([0u8; 32]);
    scalar.copy_from_slice(&p.encrypted_private_key);
    for block in scalar.chunks_exact_mut(16) {
        let block: &mut [u8; 16] = block.try_into().unwrap_or_else(|_| unreachable!("16-byte chunks"));
        sm4.decrypt_block(block);
    }
    let key = Sm2PrivateKey::from_bytes(&scalar[..]).map_err(|_| EnvelopeError::KeyMismatch)?;
    if key.public_key().to_sec1_uncompressed() != p.public_key {
        return Err(EnvelopeError::KeyMismatch);
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng() -> rand_core::UnwrapErr<getrandom::SysRng> {
        rand_core::UnwrapErr(getrandom::SysRng)
    }

    #[test]
    fn a_sealed_key_opens_only_for_its_recipient_and_only_unaltered() {
        let (recipient, stranger, key) = (
            Sm2PrivateKey::generate(&mut rng()),
            Sm2PrivateKey::generate(&mut rng()),
            Sm2PrivateKey::generate(&mut rng()),
        );
        let env = seal(&mut rng(), &recipient.public_key(), &key).unwrap();
        let opened = open(&recipient, &env).unwrap();
        assert_eq!(opened.to_bytes()[..], key.to_bytes()[..]);
        assert_eq!(open(&stranger, &env).unwrap_err(), EnvelopeError::NotForThisKey);
        // Every single-bit change is refused (or, in the public key, caught as a mismatch).
        for i in 0..env.len() {
            let mut bad = env.clone();
            bad[i] ^= 0x01;
            assert!(open(&recipient, &bad).is_err(), "byte {i} altered and still opened");
        }
        assert_eq!(parts(b"\x30\x00").unwrap_err(), EnvelopeError::Malformed);
        // Two envelopes of the same key differ (fresh SM4 key and SM2 randomness each time).
        assert_ne!(env, seal(&mut rng(), &recipient.public_key(), &key).unwrap());
    }
}
