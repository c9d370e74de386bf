//! Private and public keys, and the [`Signer`] trait that certificate issuance signs through.

use std::fmt;
use std::sync::OnceLock;

use claimlink_gm::{DistId, Sm2PrivateKey, Sm2PublicKey, Sm2Signature, Sm2SigningKey};
use der::asn1::{BitString, ObjectIdentifier as Oid};
use der::{Decode, Encode};
use pkcs8::PrivateKeyInfoRef;
use rand_core::CryptoRng;
use ring::signature::{self as rsig, KeyPair};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use zeroize::Zeroizing;

use crate::alg::{KeyAlgorithm, SignatureAlgorithm, oids};

/// Errors about keys and signatures. Messages never contain key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The PKCS#8 structure is malformed or holds an invalid key.
    #[error("malformed or invalid private key")]
    MalformedPrivateKey,
    /// The private key's algorithm or curve is not one this crate signs with.
    #[error("unsupported private key algorithm {oid}")]
    UnsupportedPrivateKey {
        /// Algorithm or curve OID found.
        oid: String,
    },
    /// The SubjectPublicKeyInfo is malformed or its point is not on the curve.
    #[error("malformed or invalid public key")]
    MalformedPublicKey,
    /// The public key's algorithm or curve is not supported.
    #[error("unsupported public key algorithm {oid}")]
    UnsupportedPublicKey {
        /// Algorithm or curve OID found.
        oid: String,
    },
    /// The signature algorithm does not fit the key (e.g. an RSA signature on an SM2 key).
    #[error("signature algorithm {algorithm} does not match a {key} key")]
    AlgorithmMismatch {
        /// The signature algorithm.
        algorithm: SignatureAlgorithm,
        /// The key type.
        key: &'static str,
    },
    /// The signature does not verify.
    #[error("signature verification failed")]
    BadSignature,
    /// Signing failed (random source or internal error).
    #[error("signing failed")]
    SigningFailed,
}

/// Something that signs certificates, CSRs and CRLs: a key in memory today, an HSM later.
pub trait Signer: Send + Sync {
    /// The algorithm of the signatures this signer makes.
    fn signature_algorithm(&self) -> SignatureAlgorithm;
    /// The public key that verifies this signer's signatures.
    fn public_key(&self) -> PublicKey;
    /// Signs `msg` and returns the signature in its X.509 encoding (DER `SEQUENCE { r, s }` for
    /// ECDSA and SM2). SM2 signers use the GM/T 0009 default distinguishing ID.
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, KeyError>;
}

/// A private key. `Debug` shows only the algorithm and public key.
pub enum PrivateKey {
    /// SM2. The signer bound to the GM/T 0009 ID (with Z precomputed) is made on first use, so a
    /// key that is only generated and exported costs one scalar multiplication.
    Sm2 {
        /// The key.
        key: Sm2PrivateKey,
        /// The key bound to [`DistId::GMT_0009_DEFAULT`].
        signer: OnceLock<Sm2SigningKey>,
    },
    /// ECDSA P-256 held by `ring`. A freshly generated key takes its public key from ring's
    /// PKCS#8 document and builds the signing key pair (which recomputes the public key to check
    /// it) only when it first signs; an imported key is checked at once.
    P256 {
        /// The PKCS#8 encoding, kept for export.
        pkcs8: Zeroizing<Vec<u8>>,
        /// Uncompressed public point.
        public: Vec<u8>,
        /// The signing key pair.
        pair: OnceLock<rsig::EcdsaKeyPair>,
    },
}

const P256_POINT_LEN: usize = 65;

fn ring_rng() -> ring::rand::SystemRandom {
    ring::rand::SystemRandom::new()
}

impl PrivateKey {
    /// Generates a new key. SM2 draws from `rng`; P-256 from the OS generator (see crate docs).
    pub fn generate<R: CryptoRng + ?Sized>(algorithm: KeyAlgorithm, rng: &mut R) -> Result<Self, KeyError> {
        match algorithm {
            KeyAlgorithm::Sm2 => Ok(Self::from_sm2(Sm2PrivateKey::generate(rng))),
            KeyAlgorithm::P256 => {
                let doc =
                    rsig::EcdsaKeyPair::generate_pkcs8(&rsig::ECDSA_P256_SHA256_ASN1_SIGNING, &ring_rng())
                        .map_err(|_| KeyError::SigningFailed)?;
                // ring's v1 document ends with `[1] { BIT STRING 04 || x || y }`.
                let der = doc.as_ref();
                let public = der
                    .len()
                    .checked_sub(P256_POINT_LEN)
                    .map(|at| &der[at..])
                    .filter(|p| p[0] == 4 && der[..der.len() - P256_POINT_LEN].ends_with(&[0x03, 0x42, 0x00]))
                    .ok_or(KeyError::MalformedPrivateKey)?;
                Ok(Self::P256 {
                    public: public.to_vec(),
                    pkcs8: Zeroizing::new(der.to_vec()),
                    pair: OnceLock::new(),
                })
            }
        }
    }

    /// An SM2 key (its signer made on first use), e.g. one delivered in an SM2EnvelopedKey.
    pub fn from_sm2(key: Sm2PrivateKey) -> Self {
        Self::Sm2 { key, signer: OnceLock::new() }
    }

    fn p256_from_pkcs8(der: &[u8]) -> Result<Self, KeyError> {
        let pair = rsig::EcdsaKeyPair::from_pkcs8(&rsig::ECDSA_P256_SHA256_ASN1_SIGNING, der, &ring_rng())
            .map_err(|_| KeyError::MalformedPrivateKey)?;
        Ok(Self::P256 {
            public: pair.public_key().as_ref().to_vec(),
            pkcs8: Zeroizing::new(der.to_vec()),
            pair: OnceLock::from(pair),
        })
    }

    /// Parses an unencrypted PKCS#8 `PrivateKeyInfo` holding an SM2 or P-256 key.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, KeyError> {
        let info = PrivateKeyInfoRef::from_der(der).map_err(|_| KeyError::MalformedPrivateKey)?;
        if info.algorithm.oid != oids::EC_PUBLIC_KEY {
            return Err(KeyError::UnsupportedPrivateKey { oid: info.algorithm.oid.to_string() });
        }
        let curve: Oid = info.algorithm.parameters_oid().map_err(|_| KeyError::MalformedPrivateKey)?;
        match curve {
            oids::SM2P256V1 => Sm2PrivateKey::from_pkcs8_der(der)
                .map(Self::from_sm2)
                .map_err(|_| KeyError::MalformedPrivateKey),
            oids::SECP256R1 => Self::p256_from_pkcs8(der),
            other => Err(KeyError::UnsupportedPrivateKey { oid: other.to_string() }),
        }
    }

    /// The unencrypted PKCS#8 DER (a secret: it is zeroized on drop).
    pub fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        match self {
            Self::Sm2 { key, .. } => key.to_pkcs8_der().map_err(|_| KeyError::MalformedPrivateKey),
            Self::P256 { pkcs8, .. } => Ok(pkcs8.clone()),
        }
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> KeyAlgorithm {
        match self {
            Self::Sm2 { .. } => KeyAlgorithm::Sm2,
            Self::P256 { .. } => KeyAlgorithm::P256,
        }
    }
}

impl Signer for PrivateKey {
    fn signature_algorithm(&self) -> SignatureAlgorithm {
        self.algorithm().signature_algorithm()
    }

    fn public_key(&self) -> PublicKey {
        match self {
            Self::Sm2 { key, .. } => PublicKey::Sm2(key.public_key()),
            Self::P256 { public, .. } => PublicKey::P256(public.clone()),
        }
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, KeyError> {
        match self {
            Self::Sm2 { key, signer } => signer
                .get_or_init(|| key.signing_key(&DistId::GMT_0009_DEFAULT))
                .sign(msg)
                .map(|s| s.to_der())
                .map_err(|_| KeyError::SigningFailed),
            Self::P256 { pkcs8, pair, .. } => {
                let pair = match pair.get() {
                    Some(p) => p,
                    None => {
                        let made = rsig::EcdsaKeyPair::from_pkcs8(
                            &rsig::ECDSA_P256_SHA256_ASN1_SIGNING,
                            pkcs8,
                            &ring_rng(),
                        )
                        .map_err(|_| KeyError::MalformedPrivateKey)?;
                        pair.get_or_init(|| made)
                    }
                };
                pair.sign(&ring_rng(), msg).map(|s| s.as_ref().to_vec()).map_err(|_| KeyError::SigningFailed)
            }
        }
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("algorithm", &self.algorithm())
            .field("public_key", &self.public_key())
            .finish_non_exhaustive()
    }
}

/// A public key from a SubjectPublicKeyInfo.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublicKey {
    /// SM2 (ecPublicKey on sm2p256v1).
    Sm2(Sm2PublicKey),
    /// ECDSA P-256, uncompressed SEC1 point.
    P256(Vec<u8>),
    /// ECDSA P-384, uncompressed SEC1 point (verification only).
    P384(Vec<u8>),
    /// RSA, the DER `RSAPublicKey` (verification only).
    Rsa(Vec<u8>),
}

impl PublicKey {
    /// Parses a SubjectPublicKeyInfo.
    pub fn from_spki(spki: &SubjectPublicKeyInfoOwned) -> Result<Self, KeyError> {
        let bits = spki.subject_public_key.as_bytes().ok_or(KeyError::MalformedPublicKey)?;
        let alg = &spki.algorithm;
        if alg.oid == oids::RSA_ENCRYPTION {
            return Ok(Self::Rsa(bits.to_vec()));
        }
        if alg.oid != oids::EC_PUBLIC_KEY {
            return Err(KeyError::UnsupportedPublicKey { oid: alg.oid.to_string() });
        }
        let curve: Oid =
            alg.parameters.as_ref().and_then(|p| p.decode_as().ok()).ok_or(KeyError::MalformedPublicKey)?;
        match curve {
            oids::SM2P256V1 => {
                Sm2PublicKey::from_sec1_bytes(bits).map(Self::Sm2).map_err(|_| KeyError::MalformedPublicKey)
            }
            oids::SECP256R1 if bits.len() == 65 && bits[0] == 4 => Ok(Self::P256(bits.to_vec())),
            oids::SECP384R1 if bits.len() == 97 && bits[0] == 4 => Ok(Self::P384(bits.to_vec())),
            oids::SECP256R1 | oids::SECP384R1 => Err(KeyError::MalformedPublicKey),
            other => Err(KeyError::UnsupportedPublicKey { oid: other.to_string() }),
        }
    }

    /// Parses a DER SubjectPublicKeyInfo.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, KeyError> {
        let spki = SubjectPublicKeyInfoOwned::from_der(der).map_err(|_| KeyError::MalformedPublicKey)?;
        Self::from_spki(&spki)
    }

    /// The SubjectPublicKeyInfo.
    pub fn to_spki(&self) -> SubjectPublicKeyInfoOwned {
        let (alg_oid, curve, bits): (Oid, Option<Oid>, Vec<u8>) = match self {
            Self::Sm2(k) => (oids::EC_PUBLIC_KEY, Some(oids::SM2P256V1), k.to_sec1_uncompressed()),
            Self::P256(b) => (oids::EC_PUBLIC_KEY, Some(oids::SECP256R1), b.clone()),
            Self::P384(b) => (oids::EC_PUBLIC_KEY, Some(oids::SECP384R1), b.clone()),
            Self::Rsa(b) => (oids::RSA_ENCRYPTION, None, b.clone()),
        };
        let parameters = match curve {
            Some(c) => Some(der::Any::from(&c)),
            None => Some(der::asn1::AnyRef::NULL.into()),
        };
        SubjectPublicKeyInfoOwned {
            algorithm: AlgorithmIdentifierOwned { oid: alg_oid, parameters },
            subject_public_key: BitString::from_bytes(&bits).unwrap_or_else(|_| unreachable!("byte-aligned")),
        }
    }

    /// The DER SubjectPublicKeyInfo.
    pub fn to_spki_der(&self) -> Vec<u8> {
        self.to_spki().to_der().unwrap_or_else(|_| unreachable!("SPKI always encodes"))
    }

    /// A short name of the key type.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Sm2(_) => "SM2",
            Self::P256(_) => "P-256",
            Self::P384(_) => "P-384",
            Self::Rsa(_) => "RSA",
        }
    }

    /// The subject key identifier: the leftmost 160 bits of SHA-256 of the public key bits
    /// (RFC 7093 method 1).
    pub fn key_identifier(&self) -> [u8; 20] {
        let spki = self.to_spki();
        let bits = spki.subject_public_key.raw_bytes();
        let digest = ring::digest::digest(&ring::digest::SHA256, bits);
        let mut id = [0u8; 20];
        id.copy_from_slice(&digest.as_ref()[..20]);
        id
    }

    /// Verifies an X.509-encoded signature (`dist_id` is used only for SM2).
    pub fn verify(
        &self,
        algorithm: SignatureAlgorithm,
        dist_id: &DistId,
        msg: &[u8],
        signature: &[u8],
    ) -> Result<(), KeyError> {
        let mismatch = || KeyError::AlgorithmMismatch { algorithm, key: self.kind() };
        let ring_alg: &dyn rsig::VerificationAlgorithm = match (self, algorithm) {
            (Self::Sm2(k), SignatureAlgorithm::Sm2Sm3) => {
                let sig = Sm2Signature::from_der(signature).map_err(|_| KeyError::BadSignature)?;
                return k.verify(dist_id, msg, &sig).map_err(|_| KeyError::BadSignature);
            }
            (Self::P256(_), SignatureAlgorithm::EcdsaSha256) => &rsig::ECDSA_P256_SHA256_ASN1,
            (Self::P256(_), SignatureAlgorithm::EcdsaSha384) => &rsig::ECDSA_P256_SHA384_ASN1,
            (Self::P384(_), SignatureAlgorithm::EcdsaSha256) => &rsig::ECDSA_P384_SHA256_ASN1,
            (Self::P384(_), SignatureAlgorithm::EcdsaSha384) => &rsig::ECDSA_P384_SHA384_ASN1,
            (Self::Rsa(_), SignatureAlgorithm::RsaPkcs1Sha256) => &rsig::RSA_PKCS1_2048_8192_SHA256,
            (Self::Rsa(_), SignatureAlgorithm::RsaPkcs1Sha384) => &rsig::RSA_PKCS1_2048_8192_SHA384,
            (Self::Rsa(_), SignatureAlgorithm::RsaPkcs1Sha512) => &rsig::RSA_PKCS1_2048_8192_SHA512,
            _ => return Err(mismatch()),
        };
        let bytes = match self {
            Self::P256(b) | Self::P384(b) | Self::Rsa(b) => b,
            Self::Sm2(_) => return Err(mismatch()),
        };
        rsig::UnparsedPublicKey::new(ring_alg, bytes)
            .verify(msg, signature)
            .map_err(|_| KeyError::BadSignature)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({}, ", self.kind())?;
        self.key_identifier().iter().try_for_each(|b| write!(f, "{b:02x}"))?;
        write!(f, ")")
    }
}

/// Encodes a signature as the BIT STRING of a certificate or CSR.
pub(crate) fn signature_bits(sig: &[u8]) -> BitString {
    BitString::from_bytes(sig).unwrap_or_else(|_| unreachable!("byte-aligned"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng() -> rand_core::UnwrapErr<getrandom::SysRng> {
        rand_core::UnwrapErr(getrandom::SysRng)
    }

    #[test]
    fn keys_round_trip_through_pkcs8_and_sign_verifiably() {
        for alg in [KeyAlgorithm::Sm2, KeyAlgorithm::P256] {
            let key = PrivateKey::generate(alg, &mut rng()).unwrap();
            let back = PrivateKey::from_pkcs8_der(&key.to_pkcs8_der().unwrap()).unwrap();
            assert_eq!(back.public_key(), key.public_key());
            // The fresh key's cached public key matches what its (lazily built) signer uses.
            let own = key.sign(b"tbs").unwrap();
            key.public_key()
                .verify(alg.signature_algorithm(), &DistId::GMT_0009_DEFAULT, b"tbs", &own)
                .unwrap();
            let sig = back.sign(b"tbs").unwrap();
            let pk = PublicKey::from_spki_der(&key.public_key().to_spki_der()).unwrap();
            pk.verify(alg.signature_algorithm(), &DistId::GMT_0009_DEFAULT, b"tbs", &sig).unwrap();
            assert_eq!(
                pk.verify(alg.signature_algorithm(), &DistId::GMT_0009_DEFAULT, b"tbX", &sig),
                Err(KeyError::BadSignature)
            );
            assert!(matches!(
                pk.verify(SignatureAlgorithm::RsaPkcs1Sha256, &DistId::GMT_0009_DEFAULT, b"tbs", &sig),
                Err(KeyError::AlgorithmMismatch { .. })
            ));
        }
    }

    #[test]
    fn sm2_certificate_signatures_use_the_gmt_0009_id() {
        let key = PrivateKey::generate(KeyAlgorithm::Sm2, &mut rng()).unwrap();
        let sig = key.sign(b"tbs").unwrap();
        let pk = key.public_key();
        let empty = DistId::new("").unwrap();
        assert_eq!(pk.verify(SignatureAlgorithm::Sm2Sm3, &empty, b"tbs", &sig), Err(KeyError::BadSignature));
    }

    #[test]
    fn garbage_private_keys_are_refused() {
        assert_eq!(
            PrivateKey::from_pkcs8_der(b"\x30\x03\x02\x01\x00").err(),
            Some(KeyError::MalformedPrivateKey)
        );
        assert_eq!(PrivateKey::from_pkcs8_der(&[]).err(), Some(KeyError::MalformedPrivateKey));
    }

    #[test]
    fn private_key_debug_does_not_leak() {
        let key = PrivateKey::generate(KeyAlgorithm::P256, &mut rng()).unwrap();
        let der = key.to_pkcs8_der().unwrap();
        let text = format!("{key:?}");
        // The scalar sits at a fixed offset in ring's PKCS#8 v1 document.
        let scalar = hex::encode(&der[36..68]);
        assert!(!text.contains(&scalar));
        assert!(text.contains("P256"));
    }
}
