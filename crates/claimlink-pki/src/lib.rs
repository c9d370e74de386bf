//! X.509 PKI for claimlink: keys (SM2, ECDSA P-256, RSA for verification), a [`Signer`] trait,
//! PKCS#8 (plain and password-encrypted), certificates and CSRs built and parsed, certificate
//! profiles (root CA, issuing CA, device birth certificate, TLS server, claim-thing client), and
//! path validation at a given time.
//!
//! What it is not: it does no I/O and reads no clock - validation time is a parameter. The
//! exception to "no global RNG" is ECDSA P-256 through `ring`, whose sealed `SecureRandom` trait
//! only admits the operating system's generator; SM2 takes the caller's RNG.
//!
//! SM2 signatures in certificates, CSRs and CRLs always use the GM/T 0009 distinguishing ID
//! ([`claimlink_gm::DistId::GMT_0009_DEFAULT`]) unless a caller names another one explicitly.

#![forbid(unsafe_code)]

pub mod alg;
pub mod cert;
pub mod crl;
pub mod csr;
pub mod key;
pub mod name;
pub mod ocsp;
pub mod pem;
pub mod profile;
pub mod verify;

pub use alg::{KeyAlgorithm, SignatureAlgorithm};
pub use cert::{Certificate, CertificateError, CertificateId};
pub use csr::{CertificateRequest, CsrError};
pub use key::{KeyError, PrivateKey, PublicKey, Signer};
pub use pem::PemError;
pub use profile::{IssueError, Issuer, Profile, Subject, ThingName, issue};
pub use verify::{Purpose, TrustAnchors, ValidationOptions, VerifyError, verify_chain};
pub use x509_cert::ext::Extension;
pub use x509_cert::name::Name;

/// Limits on untrusted input.
pub mod limits {
    /// Largest certificate or CSR accepted, in DER bytes.
    pub const MAX_DER_LEN: usize = 64 * 1024;
    /// Largest PEM file accepted, in bytes.
    pub const MAX_PEM_LEN: usize = 1024 * 1024;
    /// Most certificates in one PEM chain or bundle.
    pub const MAX_CHAIN_CERTS: usize = 64;
    /// Most extensions in a certificate or CSR.
    pub const MAX_EXTENSIONS: usize = 32;
}
