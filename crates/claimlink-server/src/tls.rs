//! TLS per account: the SNI picks the account, whose verifier admits certificates that chain to
//! its ACTIVE CAs or are registered in it without a CA. Devices that send no SNI are admitted
//! against the DEFAULT-mode CAs of all accounts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use claimlink_pki::Certificate;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::{AccountEntry, AccountServer};

pub(crate) struct Selector {
    pub(crate) server: AccountServer,
    /// Per account: the entry a configuration was built from, and the configuration (rebuilt
    /// when the entry is replaced by a reload).
    pub(crate) cache: Mutex<HashMap<String, Built>>,
}

/// A configuration and the account entry it was built from.
pub(crate) type Built = (Arc<AccountEntry>, Arc<rustls::ServerConfig>);

impl claimlink_broker::TlsSelector for Selector {
    fn select(&self, sni: Option<&str>) -> Option<Arc<rustls::ServerConfig>> {
        let Some(host) = sni else {
            let cas = self.server.default_mode_cas().into_iter().map(|(_, _, c)| c).collect();
            return self.build(Admits::DefaultMode(cas));
        };
        let entry = self.server.entry_for_host(host)?;
        let mut cache = self.cache.lock().ok()?;
        if let Some((built_from, config)) = cache.get(&entry.account.id) {
            if Arc::ptr_eq(built_from, &entry) {
                return Some(config.clone());
            }
        }
        let config = self.build(Admits::Account(entry.clone()))?;
        cache.insert(entry.account.id.clone(), (entry, config.clone()));
        Some(config)
    }
}

impl Selector {
    fn build(&self, admits: Admits) -> Option<Arc<rustls::ServerConfig>> {
        let provider = rustls::crypto::ring::default_provider();
        let verifier = Arc::new(Verifier {
            admits,
            algorithms: provider.signature_verification_algorithms,
            server: self.server.clone(),
        });
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .ok()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                self.server.shared.server_chain.clone(),
                self.server.shared.server_key.clone_key(),
            )
            .ok()?;
        Some(Arc::new(config))
    }
}

#[derive(Debug)]
enum Admits {
    Account(Arc<AccountEntry>),
    /// No SNI: certificates from any DEFAULT-mode CA (the account is found after the handshake).
    DefaultMode(Vec<Certificate>),
}

struct Verifier {
    admits: Admits,
    algorithms: WebPkiSupportedAlgorithms,
    server: AccountServer,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("admits", &self.admits).finish_non_exhaustive()
    }
}

impl ClientCertVerifier for Verifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let bad = |why: String| {
            tracing::debug!(reason = %why, "client certificate refused");
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
        };
        let leaf = Certificate::from_der(end_entity.as_ref()).map_err(|e| bad(e.to_string()))?;
        let intermediates: Vec<Certificate> =
            intermediates.iter().filter_map(|c| Certificate::from_der(c.as_ref()).ok()).collect();
        match &self.admits {
            Admits::Account(entry) => {
                let ca = entry.admit(&leaf, &intermediates).map_err(bad)?;
                self.server.note_admitted(leaf.id().to_string(), ca);
            }
            Admits::DefaultMode(cas) => {
                crate::client_chain(&leaf, &intermediates, cas.clone()).map_err(bad)?;
            }
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
