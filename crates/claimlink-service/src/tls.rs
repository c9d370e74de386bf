//! Client admission for every listener of ours: one TLS server configuration per listener,
//! built once, whose handshake proves that the client holds the key of the certificate it
//! sends; then, before a byte of MQTT or HTTP is read, the listener's [`Admission`] verifies
//! the chain once and returns what it found (the account and CA for the account endpoint, the
//! OEM or the device for staging). That value travels with the connection to the hooks
//! ([`claimlink_broker::PeerIdentity::admitted`]); nothing is stashed on the side.

use std::sync::Arc;

use claimlink_pki::Certificate;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// Which client certificates a listener admits, and what it learns from them. The TLS
/// signature checks before it are the same for every role ([`ProofOfPossession`]).
pub trait Admission: Send + Sync + 'static {
    /// What an admitted client is, for the hooks.
    type Admitted: Send + Sync + 'static;

    /// Whether a client must present a certificate.
    fn mandatory(&self) -> bool {
        true
    }

    /// Whether a handshake may go on for `sni` (`false`: refused at the ClientHello).
    fn serves(&self, _sni: Option<&str>) -> bool {
        true
    }

    /// Admits `leaf` (never a CA certificate; with the `intermediates` the client sent), or
    /// says why not. The only chain verification of the connection.
    fn admit(
        &self,
        sni: Option<&str>,
        leaf: Certificate,
        intermediates: &[Certificate],
    ) -> Result<Self::Admitted, String>;
}

/// A listener's TLS: its one configuration and its admission rule.
pub struct Listener<A> {
    config: Arc<rustls::ServerConfig>,
    tlcp: Option<claimlink_broker::TlcpConfig>,
    admission: A,
}

impl<A: Admission> Listener<A> {
    /// The listener serving `identity` (one or two certificates, strict or not) whose clients
    /// `admission` decides.
    pub fn new(admission: A, identity: &crate::ServerIdentity) -> Result<Self, crate::ServerError> {
        let (builder, resolver) = identity.server_builder()?;
        let verifier = Arc::new(ProofOfPossession {
            mandatory: admission.mandatory(),
            algorithms: builder.crypto_provider().signature_verification_algorithms,
        });
        // TLCP asks for the same certificates; its own CertificateVerify is the proof.
        let tlcp = identity.tlcp_config(Some(verifier.clone()))?;
        let config = builder.with_client_cert_verifier(verifier).with_cert_resolver(resolver);
        Ok(Self { config: Arc::new(config), tlcp, admission })
    }

    /// Admits a client whose certificate chain (leaf first) is `certificates`: `Ok(None)`
    /// without a certificate where none is required.
    pub fn admit_chain(
        &self,
        sni: Option<&str>,
        certificates: &[CertificateDer<'static>],
    ) -> Result<Option<A::Admitted>, String> {
        let Some((leaf, rest)) = certificates.split_first() else {
            return if self.admission.mandatory() { Err("no client certificate".into()) } else { Ok(None) };
        };
        let leaf = Certificate::from_der(leaf.as_ref()).map_err(|e| e.to_string())?;
        // A CA certificate is never a client, whatever it chains to (RFC 5280 lets a CA be the
        // target of a path; we do not).
        if leaf.is_ca() {
            return Err("the client certificate is a CA certificate (basicConstraints CA:TRUE)".into());
        }
        let intermediates: Vec<Certificate> =
            rest.iter().filter_map(|c| Certificate::from_der(c.as_ref()).ok()).collect();
        self.admission.admit(sni, leaf, &intermediates).map(Some)
    }
}

impl<A: Admission> claimlink_broker::TlsSelector for Listener<A> {
    fn select(&self, sni: Option<&str>) -> Option<Arc<rustls::ServerConfig>> {
        self.admission.serves(sni).then(|| self.config.clone())
    }

    fn select_tlcp(&self, sni: Option<&str>) -> Option<claimlink_broker::TlcpConfig> {
        self.admission.serves(sni).then(|| self.tlcp.clone()).flatten()
    }

    fn admit(
        &self,
        sni: Option<&str>,
        certificates: &[CertificateDer<'static>],
    ) -> Result<Option<claimlink_broker::PeerAdmission>, String> {
        Ok(self.admit_chain(sni, certificates)?.map(|a| Arc::new(a) as claimlink_broker::PeerAdmission))
    }
}

/// The handshake's part: a client certificate is asked for (and required where the listener
/// requires one), and the client's signature over the handshake is checked with its key.
/// Which certificates are admitted is decided once the handshake is done ([`Listener`]), so
/// that the result can travel with the connection.
#[derive(Debug)]
struct ProofOfPossession {
    mandatory: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for ProofOfPossession {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
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
