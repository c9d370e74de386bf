//! TLS per account: the SNI picks the account, whose verifier admits certificates that chain to
//! its ACTIVE CAs or are registered in it without a CA. Devices that send no SNI are admitted
//! against the DEFAULT-mode CAs of all accounts. Staging uses the same verifier with its own
//! [`Admission`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use claimlink_pki::Certificate;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
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
        let mut cache = crate::lock(&self.cache);
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
        let shared = &self.server.shared;
        let admission = AccountAdmission { admits, server: self.server.clone() };
        server_config(admission, &shared.server_chain, &shared.server_key).ok()
    }
}

#[derive(Debug)]
enum Admits {
    Account(Arc<AccountEntry>),
    /// No SNI: certificates from any DEFAULT-mode CA (the account is found after the handshake).
    DefaultMode(Vec<Certificate>),
}

/// Which client certificates a listener admits. The TLS signature checks around it are the
/// same for every role ([`ClientVerifier`]).
pub(crate) trait Admission: std::fmt::Debug + Send + Sync + 'static {
    /// Whether a client must present a certificate.
    fn mandatory(&self) -> bool {
        true
    }

    /// Admits `leaf` (with the `intermediates` the client sent), or says why not.
    fn admit(&self, leaf: &Certificate, intermediates: &[Certificate]) -> Result<(), String>;
}

/// A server configuration whose client certificates `admission` decides.
pub(crate) fn server_config<A: Admission>(
    admission: A,
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = rustls::crypto::ring::default_provider();
    let verifier =
        Arc::new(ClientVerifier { admission, algorithms: provider.signature_verification_algorithms });
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.to_vec(), key.clone_key())?;
    Ok(Arc::new(config))
}

struct AccountAdmission {
    admits: Admits,
    server: AccountServer,
}

impl std::fmt::Debug for AccountAdmission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountAdmission").field("admits", &self.admits).finish_non_exhaustive()
    }
}

impl Admission for AccountAdmission {
    fn admit(&self, leaf: &Certificate, intermediates: &[Certificate]) -> Result<(), String> {
        match &self.admits {
            Admits::Account(entry) => {
                let ca = entry.admit(leaf, intermediates)?;
                self.server.note_admitted(leaf.id().to_string(), ca);
            }
            Admits::DefaultMode(cas) => {
                crate::client_chain(leaf, intermediates, cas.clone())?;
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct ClientVerifier<A> {
    admission: A,
    algorithms: WebPkiSupportedAlgorithms,
}

impl<A: Admission> ClientCertVerifier for ClientVerifier<A> {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        self.admission.mandatory()
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
        // A CA certificate is never a client, whatever it chains to (RFC 5280 lets a CA be
        // the target of a path; we do not).
        if leaf.is_ca() {
            return Err(bad("the client certificate is a CA certificate (basicConstraints CA:TRUE)".into()));
        }
        let intermediates: Vec<Certificate> =
            intermediates.iter().filter_map(|c| Certificate::from_der(c.as_ref()).ok()).collect();
        self.admission.admit(&leaf, &intermediates).map_err(bad)?;
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
