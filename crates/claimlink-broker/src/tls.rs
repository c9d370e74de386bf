//! rustls server configurations from DER material: a server chain and key, and the CAs whose
//! client certificates are accepted (required or optional).

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;

/// Whether a listener demands client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every client must present a certificate from a trusted CA.
    Required,
    /// Clients may present one; those without are still admitted (the hooks decide).
    Optional,
    /// No client certificates are asked for.
    None,
}

/// Why a TLS configuration cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// A CA certificate rustls cannot use as a trust anchor.
    #[error("client CA certificate {index} is not usable as a trust anchor: {reason}")]
    BadClientCa {
        /// Position in the bundle.
        index: usize,
        /// rustls's reason.
        reason: String,
    },
    /// Client authentication asked for without any CA.
    #[error("client certificates are required but no client CA is configured")]
    NoClientCa,
    /// The key does not fit the certificate, or its algorithm is unsupported here.
    #[error("server key or certificate rejected: {0}")]
    Rejected(String),
}

/// A TLS 1.2/1.3 server configuration with the `ring` provider.
/// Certificates and the key are DER (the chain leaf first, the key PKCS#8).
pub fn server_config(
    chain: Vec<Vec<u8>>,
    key_pkcs8: Vec<u8>,
    client_cas: &[Vec<u8>],
    client_auth: ClientAuth,
) -> Result<Arc<rustls::ServerConfig>, TlsConfigError> {
    let chain: Vec<CertificateDer<'static>> = chain.into_iter().map(CertificateDer::from).collect();
    let provider = Arc::new(claimlink_tls::provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsConfigError::Rejected(e.to_string()))?;
    let builder = if client_auth == ClientAuth::None {
        builder.with_no_client_auth()
    } else {
        if client_cas.is_empty() {
            return Err(TlsConfigError::NoClientCa);
        }
        let mut roots = RootCertStore::empty();
        for (index, ca) in client_cas.iter().enumerate() {
            roots
                .add(CertificateDer::from(ca.clone()))
                .map_err(|e| TlsConfigError::BadClientCa { index, reason: e.to_string() })?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        let verifier =
            if client_auth == ClientAuth::Optional { verifier.allow_unauthenticated() } else { verifier };
        let verifier = verifier.build().map_err(|e| TlsConfigError::Rejected(e.to_string()))?;
        builder.with_client_cert_verifier(verifier)
    };
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8));
    let config = builder.with_single_cert(chain, key).map_err(|e| TlsConfigError::Rejected(e.to_string()))?;
    Ok(Arc::new(config))
}
