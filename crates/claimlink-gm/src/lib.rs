//! China's commercial cryptography (GM/T) for claimlink: SM3 and HMAC-SM3, SM4 in ECB, CBC, CTR
//! and GCM modes, and SM2 signatures and public-key encryption.
//!
//! This crate is a thin, typed layer over the RustCrypto `sm2`, `sm3` and `sm4` crates. It adds
//! what the PKI and the protocols need and the upstream crates leave implicit:
//!
//! - the SM2 **distinguishing ID** is always an explicit, typed parameter ([`DistId`]); the
//!   GM/T 0009 default is the named constant [`DistId::GMT_0009_DEFAULT`], never implied;
//! - SM2 signatures are available in the DER `SEQUENCE { r, s }` form used by X.509, CSRs and TLS;
//! - SM2 ciphertexts are C1C3C2 (GM/T 0003-2012) in either the raw or the GM/T 0009 DER form;
//! - secrets are zeroized on drop and never printed by `Debug`.
//!
//! What it is not: it does no I/O, reads no clock and has no global random number generator;
//! callers pass an RNG where one is needed. SM4 runs on constant-time kernels (no table
//! lookups; `sm4_ct`, and AES-NI where the CPU has it; see `ARCHITECTURE.md`).

// One module may use `unsafe`: the SIMD intrinsics of the AES-NI SM4 kernel (ARCHITECTURE.md).
#![deny(unsafe_code)]

pub mod envelope;
pub mod sm2;
pub mod sm3;
pub mod sm4;
pub mod sm4_ct;
#[allow(unsafe_code)]
mod sm4_ni;

pub use sm2::{
    DistId, DistIdError, Sm2CiphertextFormat, Sm2Error, Sm2PrivateKey, Sm2PublicKey, Sm2Signature,
    Sm2SigningKey, Sm2VerifyingKey,
};
pub use sm3::{HmacSm3, Sm3, hmac_sm3, sm3};
pub use sm4::{Sm4Cbc, Sm4Error, Sm4Key};

/// The object identifiers of the GM/T algorithms (GM/T 0006).
pub mod oid {
    /// SM2 elliptic curve `sm2p256v1` (1.2.156.10197.1.301).
    pub const SM2_CURVE: &str = "1.2.156.10197.1.301";
    /// SM2 signature with SM3 (1.2.156.10197.1.501).
    pub const SM2_WITH_SM3: &str = "1.2.156.10197.1.501";
    /// SM3 hash (1.2.156.10197.1.401).
    pub const SM3: &str = "1.2.156.10197.1.401";
    /// SM4 block cipher (1.2.156.10197.1.104).
    pub const SM4: &str = "1.2.156.10197.1.104";
}
