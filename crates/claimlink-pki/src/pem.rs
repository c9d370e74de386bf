//! PEM (RFC 7468) framing and PKCS#8 private keys, plain and password-encrypted (PBES2).

use der::Decode;
use pkcs8::{EncryptedPrivateKeyInfoRef, PrivateKeyInfoRef, pkcs5::pbes2};
use rand_core::CryptoRng;
use zeroize::Zeroizing;

use crate::key::{KeyError, PrivateKey};
use crate::limits::{MAX_CHAIN_CERTS, MAX_PEM_LEN};

/// PBKDF2-HMAC-SHA256 iterations for encrypted private keys (OWASP 2023 guidance).
pub const PBKDF2_ITERATIONS: u32 = 600_000;
/// Most PBKDF2 iterations accepted when reading a key (a crafted file must not hang us).
pub const MAX_PBKDF2_ITERATIONS: u32 = 5_000_000;
/// Largest scrypt cost N (2^20, 1 GiB with r = 8) and r * p accepted when reading a key.
pub const MAX_SCRYPT_COST: u64 = 1 << 20;

/// Errors reading or writing PEM and PKCS#8. Messages never contain key material or passphrases.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PemError {
    /// The input is larger than this crate accepts.
    #[error("input is {len} bytes, more than the {max} allowed")]
    TooLarge {
        /// Input size.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// No `-----BEGIN ...-----` block was found.
    #[error("no PEM block found")]
    NoPem,
    /// A block could not be decoded (bad base64, mismatched END line, stray data).
    #[error("malformed PEM block {index}: {reason}")]
    Malformed {
        /// Zero-based index of the block.
        index: usize,
        /// What was wrong.
        reason: String,
    },
    /// More blocks than [`MAX_CHAIN_CERTS`].
    #[error("more than {max} PEM blocks")]
    TooManyBlocks {
        /// Limit.
        max: usize,
    },
    /// A block had a different label than expected.
    #[error("expected a PEM block labelled {expected:?}, found {found:?}")]
    WrongLabel {
        /// The label wanted.
        expected: &'static str,
        /// The label found.
        found: String,
    },
    /// The passphrase does not decrypt the key (or the key was altered).
    #[error("wrong passphrase, or the encrypted key is corrupt")]
    WrongPassphrase,
    /// The key's password-based encryption asks for more work than this crate allows.
    #[error("the key's encryption parameters are too costly ({what})")]
    KdfTooCostly {
        /// Which parameter.
        what: &'static str,
    },
    /// The key is encrypted but no passphrase was given.
    #[error("the private key is encrypted and needs a passphrase")]
    NeedsPassphrase,
    /// The key inside is invalid or unsupported.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Encryption failed.
    #[error("private key encryption failed")]
    EncryptionFailed,
}

/// One decoded PEM block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PemBlock {
    /// The label (`CERTIFICATE`, `PRIVATE KEY`, ...).
    pub label: String,
    /// The DER contents.
    pub der: Vec<u8>,
}

/// Whether `bytes` holds PEM rather than DER (DER starts with a SEQUENCE tag, PEM is text with
/// a `-----BEGIN` line).
pub fn looks_like_pem(bytes: &[u8]) -> bool {
    bytes.first() != Some(&0x30) && bytes.windows(11).any(|w| w == b"-----BEGIN ")
}

/// Decodes every PEM block in `text` (text between blocks is ignored, as OpenSSL does).
pub fn decode_all(text: &[u8]) -> Result<Vec<PemBlock>, PemError> {
    decode_all_within(text, MAX_PEM_LEN)
}

/// [`decode_all`] for text of at most `max_len` bytes (a CRL with its issuer's chain).
pub fn decode_all_within(text: &[u8], max_len: usize) -> Result<Vec<PemBlock>, PemError> {
    if text.len() > max_len {
        return Err(PemError::TooLarge { len: text.len(), max: max_len });
    }
    let text = std::str::from_utf8(text)
        .map_err(|_| PemError::Malformed { index: 0, reason: "not UTF-8 text".into() })?;
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let index = blocks.len();
        if index == MAX_CHAIN_CERTS {
            return Err(PemError::TooManyBlocks { max: MAX_CHAIN_CERTS });
        }
        let from_begin = &rest[start..];
        let end_at = from_begin
            .find("-----END ")
            .ok_or_else(|| PemError::Malformed { index, reason: "no END line".into() })?;
        let after_end = &from_begin[end_at + 9..];
        let close = after_end
            .find("-----")
            .ok_or_else(|| PemError::Malformed { index, reason: "unterminated END line".into() })?;
        let block_len = end_at + 9 + close + 5;
        let (label, der) = der::pem::decode_vec(&from_begin.as_bytes()[..block_len])
            .map_err(|e| PemError::Malformed { index, reason: e.to_string() })?;
        blocks.push(PemBlock { label: label.to_owned(), der });
        rest = &from_begin[block_len..];
    }
    if blocks.is_empty() {
        return Err(PemError::NoPem);
    }
    Ok(blocks)
}

/// Decodes exactly the blocks labelled `label` (others are an error).
pub fn decode_labelled(text: &[u8], label: &'static str) -> Result<Vec<Vec<u8>>, PemError> {
    decode_all(text)?
        .into_iter()
        .map(|b| {
            if b.label == label {
                Ok(b.der)
            } else {
                Err(PemError::WrongLabel { expected: label, found: b.label })
            }
        })
        .collect()
}

/// A public key as a `PUBLIC KEY` (SubjectPublicKeyInfo) block, as OpenSSL writes it.
pub fn public_key_to_pem(key: &crate::PublicKey) -> String {
    encode("PUBLIC KEY", &key.to_spki_der())
}

/// Exactly one `PUBLIC KEY` block.
pub fn public_key_from_pem(text: &[u8]) -> Result<crate::PublicKey, PemError> {
    let blocks = decode_labelled(text, "PUBLIC KEY")?;
    let [der] = blocks.as_slice() else { return Err(PemError::TooManyBlocks { max: 1 }) };
    Ok(crate::PublicKey::from_spki_der(der)?)
}

/// Encodes DER as PEM with LF line endings.
pub fn encode(label: &str, der: &[u8]) -> String {
    der::pem::encode_string(label, der::pem::LineEnding::LF, der)
        .unwrap_or_else(|_| unreachable!("labels are static ASCII"))
}

/// The private key as unencrypted PKCS#8 PEM (`PRIVATE KEY`). The result is a secret.
pub fn private_key_to_pem(key: &PrivateKey) -> Result<Zeroizing<String>, PemError> {
    let der = key.to_pkcs8_der()?;
    Ok(Zeroizing::new(encode("PRIVATE KEY", &der)))
}

/// Encrypts the private key as PKCS#8 `ENCRYPTED PRIVATE KEY` with PBES2
/// (PBKDF2-HMAC-SHA256, [`PBKDF2_ITERATIONS`], AES-256-CBC) - readable by OpenSSL.
pub fn encrypt_private_key<R: CryptoRng + ?Sized>(
    key: &PrivateKey,
    passphrase: &[u8],
    rng: &mut R,
) -> Result<String, PemError> {
    let der = key.to_pkcs8_der()?;
    let mut salt = [0u8; 16];
    let mut iv = [0u8; 16];
    rng.fill_bytes(&mut salt);
    rng.fill_bytes(&mut iv);
    let params = pbes2::Parameters::generate_pbkdf2_sha256_aes256cbc(PBKDF2_ITERATIONS, &salt, iv)
        .map_err(|_| PemError::EncryptionFailed)?;
    let info = PrivateKeyInfoRef::from_der(&der).map_err(|_| PemError::EncryptionFailed)?;
    let doc = info.encrypt_with_params(params, passphrase).map_err(|_| PemError::EncryptionFailed)?;
    Ok(encode("ENCRYPTED PRIVATE KEY", doc.as_bytes()))
}

/// Reads a private key from PEM: `PRIVATE KEY` as is, `ENCRYPTED PRIVATE KEY` with `passphrase`.
pub fn private_key_from_pem(text: &[u8], passphrase: Option<&[u8]>) -> Result<PrivateKey, PemError> {
    let mut blocks = decode_all(text)?;
    if blocks.len() != 1 {
        return Err(PemError::Malformed { index: 1, reason: "expected exactly one private key".into() });
    }
    let block = blocks.remove(0);
    let der = Zeroizing::new(block.der);
    match block.label.as_str() {
        "PRIVATE KEY" => Ok(PrivateKey::from_pkcs8_der(&der)?),
        "ENCRYPTED PRIVATE KEY" => {
            let passphrase = passphrase.ok_or(PemError::NeedsPassphrase)?;
            let info = EncryptedPrivateKeyInfoRef::from_der(&der)
                .map_err(|e| PemError::Malformed { index: 0, reason: e.to_string() })?;
            check_kdf_cost(&info.encryption_algorithm)?;
            let plain = info.decrypt(passphrase).map_err(|_| PemError::WrongPassphrase)?;
            // A wrong passphrase that happens to leave valid padding yields garbage DER.
            PrivateKey::from_pkcs8_der(plain.as_bytes()).map_err(|_| PemError::WrongPassphrase)
        }
        other => Err(PemError::WrongLabel { expected: "PRIVATE KEY", found: other.to_owned() }),
    }
}

fn check_kdf_cost(scheme: &pkcs8::pkcs5::EncryptionScheme) -> Result<(), PemError> {
    use pkcs8::pkcs5::{EncryptionScheme, pbes2::Kdf};
    let EncryptionScheme::Pbes2(params) = scheme else {
        return Ok(()); // PBES1 is refused by the decryptor itself
    };
    match &params.kdf {
        Kdf::Pbkdf2(p) if p.iteration_count > MAX_PBKDF2_ITERATIONS => {
            Err(PemError::KdfTooCostly { what: "PBKDF2 iteration count" })
        }
        Kdf::Scrypt(p)
            if p.cost_parameter > MAX_SCRYPT_COST
                || u32::from(p.block_size) * u32::from(p.parallelization) > 64 =>
        {
            Err(PemError::KdfTooCostly { what: "scrypt cost" })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alg::KeyAlgorithm;
    use crate::key::Signer;

    fn rng() -> rand_core::UnwrapErr<getrandom::SysRng> {
        rand_core::UnwrapErr(getrandom::SysRng)
    }

    #[test]
    fn encrypted_keys_round_trip_and_refuse_a_wrong_passphrase() {
        for alg in [KeyAlgorithm::Sm2, KeyAlgorithm::P256] {
            let key = PrivateKey::generate(alg, &mut rng()).unwrap();
            let pem = encrypt_private_key(&key, b"correct horse", &mut rng()).unwrap();
            assert!(pem.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
            let back = private_key_from_pem(pem.as_bytes(), Some(b"correct horse")).unwrap();
            assert_eq!(back.public_key(), key.public_key());
            assert_eq!(
                private_key_from_pem(pem.as_bytes(), Some(b"wrong")).err(),
                Some(PemError::WrongPassphrase)
            );
            assert_eq!(private_key_from_pem(pem.as_bytes(), None).err(), Some(PemError::NeedsPassphrase));
        }
    }

    #[test]
    fn a_key_demanding_absurd_pbkdf2_work_is_refused_before_deriving() {
        let key = PrivateKey::generate(KeyAlgorithm::P256, &mut rng()).unwrap();
        let der = key.to_pkcs8_der().unwrap();
        let info = PrivateKeyInfoRef::from_der(&der).unwrap();
        // Encrypt cheaply with 65,536 iterations, then rewrite the count to 8,388,607.
        let params =
            pbes2::Parameters::generate_pbkdf2_sha256_aes256cbc(0x01_0000, &[1; 16], [2; 16]).unwrap();
        let mut doc = info.encrypt_with_params(params, b"pw").unwrap().as_bytes().to_vec();
        let at = doc.windows(5).position(|w| w == [0x02, 0x03, 0x01, 0x00, 0x00]).unwrap();
        doc[at + 2..at + 5].copy_from_slice(&[0x7f, 0xff, 0xff]);
        let pem = encode("ENCRYPTED PRIVATE KEY", &doc);
        let started = std::time::Instant::now();
        assert_eq!(
            private_key_from_pem(pem.as_bytes(), Some(b"pw")).err(),
            Some(PemError::KdfTooCostly { what: "PBKDF2 iteration count" })
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn malformed_pem_is_reported_with_the_block_index() {
        assert_eq!(decode_all(b"hello").err(), Some(PemError::NoPem));
        let bad = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(matches!(decode_all(bad), Err(PemError::Malformed { index: 0, .. })));
        let open = b"-----BEGIN CERTIFICATE-----\nAAAA\n";
        assert!(matches!(decode_all(open), Err(PemError::Malformed { index: 0, .. })));
        let big = vec![b'A'; MAX_PEM_LEN + 1];
        assert!(matches!(decode_all(&big), Err(PemError::TooLarge { .. })));
        let two = format!("{}{}", encode("A", b"\x05\x00"), encode("B", b"\x05\x00"));
        assert_eq!(decode_all(two.as_bytes()).unwrap().len(), 2);
        assert!(matches!(
            decode_labelled(two.as_bytes(), "A"),
            Err(PemError::WrongLabel { expected: "A", .. })
        ));
    }
}
