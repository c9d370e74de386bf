//! TLS 1.3 with China's commercial cryptography (RFC 8998) as a rustls `CryptoProvider`.
//!
//! [`provider`] is rustls's own (ring) provider with RFC 8998 added beside the international
//! algorithms: the cipher suites `TLS_SM4_GCM_SM3` (0x00C6) and `TLS_SM4_CCM_SM3` (0x00C7), the
//! key exchange group `curveSM2` (0x0029) and the signature scheme `sm2sig_sm3` (0x0708).
//! [`strict_provider`] has the SM algorithms only, for deployments that must refuse the
//! international ones.
//!
//! Two SM2 distinguishing IDs are in play and never mixed up: a `CertificateVerify` is signed
//! and verified with `TLSv1.3+GM+Cipher+Suite` (RFC 8998 section 3.2.1), certificate chains with
//! the GM/T 0009 default `1234567812345678`. The provider's verification algorithms hold one of
//! each: rustls looks up a handshake signature through the scheme mapping and a certificate's
//! signature through the algorithm list, so each finds its own.
//!
//! A server serving both kinds of client picks its certificate with [`DualCertResolver`]: the SM2
//! one for a ClientHello offering `sm2sig_sm3`, else the international one.
//!
//! No sockets here: the crate is bytes and keys, driven by rustls.

#![forbid(unsafe_code)]

mod aead;
mod hash;
mod kx;
mod resolve;
mod sign;
pub mod tlcp;
mod verify;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::{CipherSuite, NamedGroup, SignatureScheme, SupportedCipherSuite};

pub use kx::CURVE_SM2;
pub use resolve::DualCertResolver;
pub use sign::{Sm2SigningKey, any_signing_key};
pub use verify::{SM2_SM3_CERTIFICATE, SM2_SM3_TLS13};

/// `TLS_SM4_GCM_SM3` (RFC 8998).
pub const TLS_SM4_GCM_SM3: CipherSuite = CipherSuite::Unknown(0x00c6);
/// `TLS_SM4_CCM_SM3` (RFC 8998).
pub const TLS_SM4_CCM_SM3: CipherSuite = CipherSuite::Unknown(0x00c7);
/// `curveSM2` (RFC 8998).
pub const NAMED_GROUP_CURVE_SM2: NamedGroup = NamedGroup::Unknown(0x0029);
/// `sm2sig_sm3` (RFC 8998).
pub const SM2SIG_SM3: SignatureScheme = SignatureScheme::Unknown(0x0708);

/// The IANA name of a cipher suite, RFC 8998's included (rustls has no names for them and
/// calls the other TLS 1.3 suites `TLS13_...`).
pub fn suite_name(suite: CipherSuite) -> Option<&'static str> {
    const TLS13: [(CipherSuite, &str); 7] = [
        (TLS_SM4_GCM_SM3, "TLS_SM4_GCM_SM3"),
        (TLS_SM4_CCM_SM3, "TLS_SM4_CCM_SM3"),
        (CipherSuite::TLS13_AES_128_GCM_SHA256, "TLS_AES_128_GCM_SHA256"),
        (CipherSuite::TLS13_AES_256_GCM_SHA384, "TLS_AES_256_GCM_SHA384"),
        (CipherSuite::TLS13_CHACHA20_POLY1305_SHA256, "TLS_CHACHA20_POLY1305_SHA256"),
        (CipherSuite::TLS13_AES_128_CCM_SHA256, "TLS_AES_128_CCM_SHA256"),
        (CipherSuite::TLS13_AES_128_CCM_8_SHA256, "TLS_AES_128_CCM_8_SHA256"),
    ];
    TLS13.iter().find(|(s, _)| *s == suite).map(|(_, name)| *name).or_else(|| suite.as_str())
}

/// The SM cipher suites, GCM first.
pub static SM_CIPHER_SUITES: [SupportedCipherSuite; 2] = [aead::SM4_GCM_SM3, aead::SM4_CCM_SM3];

/// rustls's ring provider with RFC 8998 beside it. The international suites and groups keep
/// their order and come first, so a client that offers both gets what it prefers and a peer
/// that knows only one kind finds it.
pub fn provider() -> CryptoProvider {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites.extend(SM_CIPHER_SUITES.iter().copied());
    p.kx_groups.push(&kx::CURVE_SM2);
    p.signature_verification_algorithms = verify::all();
    p.key_provider = &sign::KEY_PROVIDER;
    p
}

/// [`provider`] with the SM algorithms first: what a client with an SM2 key offers, so that a
/// server honouring the client's order (ours do) picks `TLS_SM4_GCM_SM3` and `curveSM2` while
/// the international ones stay as a fallback.
pub fn provider_preferring_sm() -> CryptoProvider {
    let mut p = provider();
    p.cipher_suites.sort_by_key(|s| !SM_CIPHER_SUITES.iter().any(|sm| sm.suite() == s.suite()));
    p.kx_groups.sort_by_key(|g| g.name() != NAMED_GROUP_CURVE_SM2);
    p
}

/// Only RFC 8998: `TLS_SM4_GCM_SM3`, `TLS_SM4_CCM_SM3`, `curveSM2`, `sm2sig_sm3`, SM2
/// certificates. A peer offering nothing else is refused.
pub fn strict_provider() -> CryptoProvider {
    CryptoProvider {
        cipher_suites: SM_CIPHER_SUITES.to_vec(),
        kx_groups: vec![&kx::CURVE_SM2],
        signature_verification_algorithms: verify::SM_ONLY,
        ..provider()
    }
}

/// [`provider`] or, when `strict`, [`strict_provider`], shareable.
pub fn shared_provider(strict: bool) -> Arc<CryptoProvider> {
    Arc::new(if strict { strict_provider() } else { provider() })
}

/// The provider's parsing entry points for peer input, for the fuzz target: a peer's key share
/// (curveSM2), a handshake or certificate signature (public key, message, DER signature) under
/// both SM2 IDs, and a TLS 1.3 record opened with each SM suite. Each must refuse garbage
/// without panicking; the return says what was accepted.
#[doc(hidden)]
pub fn fuzz_peer_input(data: &[u8]) -> (bool, bool, bool) {
    use rustls::crypto::SupportedKxGroup;
    use rustls::pki_types::SignatureVerificationAlgorithm;
    let kx = CURVE_SM2.start().is_ok_and(|k| k.complete(data).is_ok());
    let split = data.len() / 3;
    let (key, rest) = data.split_at(split);
    let (msg, sig) = rest.split_at(rest.len() / 2);
    let verified = SM2_SM3_TLS13.verify_signature(key, msg, sig).is_ok()
        | SM2_SM3_CERTIFICATE.verify_signature(key, msg, sig).is_ok();
    let opened = aead::open_fuzz(data);
    (kx, verified, opened)
}

#[cfg(test)]
mod names {
    #[test]
    fn suites_have_their_iana_names() {
        use super::*;
        assert_eq!(suite_name(TLS_SM4_GCM_SM3), Some("TLS_SM4_GCM_SM3"));
        assert_eq!(suite_name(CipherSuite::TLS13_AES_128_GCM_SHA256), Some("TLS_AES_128_GCM_SHA256"));
        for s in provider().cipher_suites {
            let name = suite_name(s.suite()).unwrap_or_default();
            assert!(name.starts_with("TLS_") && !name.starts_with("TLS13_"), "{name}");
        }
    }
}
