//! Key and signature algorithms and their X.509 algorithm identifiers.

use std::fmt;
use std::str::FromStr;

use der::asn1::{AnyRef, ObjectIdentifier as Oid};
use spki::AlgorithmIdentifierOwned;

/// OIDs used by this crate.
pub mod oids {
    use der::asn1::ObjectIdentifier as Oid;

    /// id-ecPublicKey.
    pub const EC_PUBLIC_KEY: Oid = Oid::new_unwrap("1.2.840.10045.2.1");
    /// prime256v1 / secp256r1.
    pub const SECP256R1: Oid = Oid::new_unwrap("1.2.840.10045.3.1.7");
    /// secp384r1.
    pub const SECP384R1: Oid = Oid::new_unwrap("1.3.132.0.34");
    /// SM2 curve sm2p256v1.
    pub const SM2P256V1: Oid = Oid::new_unwrap("1.2.156.10197.1.301");
    /// SM2 signature with SM3.
    pub const SM2_WITH_SM3: Oid = Oid::new_unwrap("1.2.156.10197.1.501");
    /// ecdsa-with-SHA256.
    pub const ECDSA_WITH_SHA256: Oid = Oid::new_unwrap("1.2.840.10045.4.3.2");
    /// ecdsa-with-SHA384.
    pub const ECDSA_WITH_SHA384: Oid = Oid::new_unwrap("1.2.840.10045.4.3.3");
    /// rsaEncryption.
    pub const RSA_ENCRYPTION: Oid = Oid::new_unwrap("1.2.840.113549.1.1.1");
    /// sha256WithRSAEncryption.
    pub const SHA256_WITH_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.11");
    /// sha384WithRSAEncryption.
    pub const SHA384_WITH_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.12");
    /// sha512WithRSAEncryption.
    pub const SHA512_WITH_RSA: Oid = Oid::new_unwrap("1.2.840.113549.1.1.13");
}

/// Algorithms of keys this crate can generate and sign with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    /// SM2 on sm2p256v1, signing with SM3 (GM/T 0003).
    Sm2,
    /// ECDSA on NIST P-256, signing with SHA-256.
    P256,
}

impl KeyAlgorithm {
    /// The short name used on the command line and in manifests (`sm2`, `p256`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sm2 => "sm2",
            Self::P256 => "p256",
        }
    }

    /// The signature algorithm a key of this type signs certificates with.
    pub fn signature_algorithm(self) -> SignatureAlgorithm {
        match self {
            Self::Sm2 => SignatureAlgorithm::Sm2Sm3,
            Self::P256 => SignatureAlgorithm::EcdsaSha256,
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key algorithm name that is not `sm2` or `p256`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown key algorithm {0:?}: expected sm2 or p256")]
pub struct UnknownKeyAlgorithm(pub String);

impl FromStr for KeyAlgorithm {
    type Err = UnknownKeyAlgorithm;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "sm2" => Ok(Self::Sm2),
            "p256" | "p-256" | "ecdsa-p256" | "prime256v1" => Ok(Self::P256),
            _ => Err(UnknownKeyAlgorithm(s.to_owned())),
        }
    }
}

/// Signature algorithms this crate can verify (and, for SM2 and P-256, produce).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SignatureAlgorithm {
    /// SM2 with SM3 (`1.2.156.10197.1.501`).
    Sm2Sm3,
    /// ECDSA with SHA-256.
    EcdsaSha256,
    /// ECDSA with SHA-384.
    EcdsaSha384,
    /// RSA PKCS#1 v1.5 with SHA-256.
    RsaPkcs1Sha256,
    /// RSA PKCS#1 v1.5 with SHA-384.
    RsaPkcs1Sha384,
    /// RSA PKCS#1 v1.5 with SHA-512.
    RsaPkcs1Sha512,
}

impl SignatureAlgorithm {
    /// The algorithm's OID.
    pub fn oid(self) -> Oid {
        match self {
            Self::Sm2Sm3 => oids::SM2_WITH_SM3,
            Self::EcdsaSha256 => oids::ECDSA_WITH_SHA256,
            Self::EcdsaSha384 => oids::ECDSA_WITH_SHA384,
            Self::RsaPkcs1Sha256 => oids::SHA256_WITH_RSA,
            Self::RsaPkcs1Sha384 => oids::SHA384_WITH_RSA,
            Self::RsaPkcs1Sha512 => oids::SHA512_WITH_RSA,
        }
    }

    fn is_rsa(self) -> bool {
        matches!(self, Self::RsaPkcs1Sha256 | Self::RsaPkcs1Sha384 | Self::RsaPkcs1Sha512)
    }

    /// The AlgorithmIdentifier to place in certificates and CSRs (RSA carries NULL parameters,
    /// ECDSA and SM2 none, as RFC 5758 and GM/T 0015 require).
    pub fn identifier(self) -> AlgorithmIdentifierOwned {
        AlgorithmIdentifierOwned { oid: self.oid(), parameters: self.is_rsa().then(|| AnyRef::NULL.into()) }
    }

    /// Recognises an AlgorithmIdentifier; `None` for anything unsupported or with wrong parameters.
    pub fn from_identifier(id: &AlgorithmIdentifierOwned) -> Option<Self> {
        let alg = [
            Self::Sm2Sm3,
            Self::EcdsaSha256,
            Self::EcdsaSha384,
            Self::RsaPkcs1Sha256,
            Self::RsaPkcs1Sha384,
            Self::RsaPkcs1Sha512,
        ]
        .into_iter()
        .find(|a| a.oid() == id.oid)?;
        let params_ok = match &id.parameters {
            None => !alg.is_rsa(),
            Some(p) => alg.is_rsa() && p.is_null(),
        };
        params_ok.then_some(alg)
    }
}

impl fmt::Display for SignatureAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Sm2Sm3 => "SM2-with-SM3",
            Self::EcdsaSha256 => "ecdsa-with-SHA256",
            Self::EcdsaSha384 => "ecdsa-with-SHA384",
            Self::RsaPkcs1Sha256 => "sha256WithRSAEncryption",
            Self::RsaPkcs1Sha384 => "sha384WithRSAEncryption",
            Self::RsaPkcs1Sha512 => "sha512WithRSAEncryption",
        })
    }
}
