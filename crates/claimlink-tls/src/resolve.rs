//! One server configuration for both kinds of client: the SM2 certificate for a ClientHello
//! that offers `sm2sig_sm3`, the international one otherwise.

use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Picks the server certificate by what the ClientHello offers.
#[derive(Debug)]
pub struct DualCertResolver {
    sm2: Option<Arc<CertifiedKey>>,
    international: Option<Arc<CertifiedKey>>,
}

impl DualCertResolver {
    /// Serves `sm2` to clients that offer `sm2sig_sm3` and `international` (P-256, RSA, ...) to
    /// the others. Either may be absent: a client that cannot use the one present gets none and
    /// the handshake fails.
    pub fn new(sm2: Option<Arc<CertifiedKey>>, international: Option<Arc<CertifiedKey>>) -> Self {
        Self { sm2, international }
    }
}

impl ResolvesServerCert for DualCertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let wants_sm2 = hello.signature_schemes().contains(&crate::SM2SIG_SM3);
        let offers_other = hello.signature_schemes().iter().any(|s| *s != crate::SM2SIG_SM3);
        match (wants_sm2, offers_other) {
            (true, _) if self.sm2.is_some() => self.sm2.clone(),
            (_, true) => self.international.clone(),
            _ => None,
        }
    }
}
