//! What every network role of claimlink shares (staging, the account endpoint, the portal):
//! client admission after the TLS handshake ([`tls`]), HTTP serving with its bounds
//! ([`serve_http`]), the API kit ([`api`]: route tables that drive router and OpenAPI document,
//! one error vocabulary, paging, audited writes), the server identity, and role tasks that
//! never end unseen ([`spawn_role`]).

#![forbid(unsafe_code)]

pub mod api;
pub mod revocation;
pub mod tls;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use claimlink_pki::Certificate;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Why the server cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The server certificate or key is unusable.
    #[error("server TLS material: {0}")]
    Tls(String),
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] claimlink_registry::RegistryError),
    /// A socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Locks a mutex whose data stays valid if a holder panicked (caches, maps of live sessions):
/// a poisoned lock must neither allow nor silently refuse everything after it.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// [`lock`] for reading an `RwLock`.
pub fn read<T>(m: &std::sync::RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// [`lock`] for writing an `RwLock`.
pub fn write<T>(m: &std::sync::RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs a role's long-lived task (a listener, a sweeper) and logs how it ends: an error, a
/// panic, or an end before shutdown. Nothing a role spawns ends unseen.
pub fn spawn_role<F, E>(name: &'static str, task: F)
where
    F: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let inner = tokio::spawn(task);
    tokio::spawn(async move {
        match inner.await {
            Ok(Ok(())) => tracing::info!(role = name, "stopped"),
            Ok(Err(e)) => tracing::error!(role = name, error = %e, "stopped with an error"),
            Err(e) if e.is_panic() => tracing::error!(role = name, "panicked"),
            Err(_) => tracing::warn!(role = name, "cancelled"),
        }
    });
}

/// What an HTTP listener of ours (an API, the portal) admits and holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Connections open at once from one source address (IPv6 by /64).
    pub max_per_source: usize,
    /// Time allowed for the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time a client may take to send a request's headers.
    pub header_timeout: Duration,
    /// Time a connection may sit with nothing read or written.
    pub idle_timeout: Duration,
    /// Largest request head (request line and headers) buffered, in bytes.
    pub max_header_bytes: usize,
    /// Largest JSON request body of an API, in bytes.
    pub max_body: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: 1_024,
            max_per_source: 64,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            max_body: 64 * 1024,
        }
    }
}

/// Serves HTTP/1.1 (over TLS when `tls` is given) on `listener` until shutdown, through the
/// one accept primitive ([`claimlink_broker::serve`]: permits before the handshake, a cap per
/// source, handshake timeout, accept errors retried), with a header-read timeout and an idle
/// timeout per connection. `app` makes the router for a connection (the staging API puts the
/// client certificate's OEM into it); every request can extract `ConnectInfo<SocketAddr>`.
pub async fn serve_http<F>(
    name: &'static str,
    listener: TcpListener,
    tls: Option<Arc<dyn claimlink_broker::TlsSelector>>,
    http: HttpLimits,
    shutdown: watch::Receiver<bool>,
    app: F,
) -> std::io::Result<()>
where
    F: Fn(&claimlink_broker::serve::Accepted) -> axum::Router + Send + Sync + 'static,
{
    let limits = claimlink_broker::serve::ListenerLimits {
        max_connections: http.max_connections,
        max_per_source: http.max_per_source,
        handshake_timeout: http.handshake_timeout,
    };
    let stop = shutdown.clone();
    claimlink_broker::serve::serve(name, listener, limits, tls, shutdown, move |conn| {
        let router = app(&conn).layer(axum::Extension(axum::extract::ConnectInfo(conn.addr)));
        let mut stop = stop.clone();
        async move {
            let _permit = conn.permit;
            let service = hyper_util::service::TowerToHyperService::new(router);
            let io = hyper_util::rt::TokioIo::new(claimlink_broker::serve::IdleTimeout::new(
                conn.io,
                http.idle_timeout,
            ));
            let serving = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(http.header_timeout)
                .max_buf_size(http.max_header_bytes)
                .serve_connection(io, service);
            tokio::select! {
                _ = serving => {}
                _ = stop.changed() => {}
            }
        }
    })
    .await;
    Ok(())
}

/// Validates a client certificate up to one of `anchors` (TLS client authentication); returns
/// the path, anchor last.
pub fn client_chain(
    leaf: &Certificate,
    intermediates: &[Certificate],
    anchors: Vec<Certificate>,
) -> Result<Vec<Certificate>, String> {
    let mut opts = claimlink_pki::ValidationOptions::at(std::time::SystemTime::now());
    opts.purpose = claimlink_pki::Purpose::ClientAuth;
    claimlink_pki::verify_chain(leaf, intermediates, &claimlink_pki::TrustAnchors::new(anchors), &opts)
        .map_err(|e| e.to_string())
}

/// Server TLS identity: the chain (leaf first, covering every account endpoint's host name,
/// for example with a wildcard) and its PKCS#8 key, PEM; optionally a second chain and key of
/// the other kind (SM2 beside P-256, or the reverse), so that one listener serves both kinds of
/// client: a ClientHello offering `sm2sig_sm3` gets the SM2 certificate (RFC 8998), the others
/// the international one. `strict_sm` refuses every client that does not speak RFC 8998.
#[derive(Clone, Default)]
pub struct ServerIdentity {
    /// Certificate chain, PEM.
    pub chain_pem: String,
    /// Private key, PKCS#8 PEM.
    pub key_pem: zeroize::Zeroizing<String>,
    /// The other kind's identity.
    pub alternate: Option<Box<ServerIdentity>>,
    /// Only TLS 1.3 with SM (`claimlink_tls::strict_provider`).
    pub strict_sm: bool,
    /// TLCP's dual certificates, served beside TLS on the same ports.
    pub tlcp: Option<TlcpIdentity>,
}

/// A TLCP server's dual certificates: the SM2 signing chain and key, the encryption
/// certificate and its key (GM/T 0015 dual certificates, as the CA system's KM issues them).
#[derive(Clone, Default)]
pub struct TlcpIdentity {
    /// Signing certificate and its CAs, PEM.
    pub sign_chain_pem: String,
    /// Signing key, PKCS#8 PEM.
    pub sign_key_pem: zeroize::Zeroizing<String>,
    /// Encryption certificate, PEM.
    pub enc_cert_pem: String,
    /// Encryption key, PKCS#8 PEM.
    pub enc_key_pem: zeroize::Zeroizing<String>,
}

impl std::fmt::Debug for TlcpIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlcpIdentity(keys hidden)")
    }
}

fn sm2_key(pem: &str, what: &str) -> Result<claimlink_gm::Sm2PrivateKey, ServerError> {
    match claimlink_pki::pem::private_key_from_pem(pem.as_bytes(), None)
        .map_err(|e| ServerError::Tls(format!("TLCP {what} key: {e}")))?
    {
        claimlink_pki::PrivateKey::Sm2 { key, .. } => Ok(key),
        _ => Err(ServerError::Tls(format!("the TLCP {what} key is not an SM2 key"))),
    }
}

impl TlcpIdentity {
    /// The identity for `claimlink_tls::tlcp`, checked (each key its certificate's, each
    /// certificate's keyUsage fit for its place).
    pub fn identity(&self) -> Result<claimlink_tls::tlcp::Identity, ServerError> {
        let der = |pem: &str, what: &str| -> Result<Vec<CertificateDer<'static>>, ServerError> {
            let chain = Certificate::chain_from_pem(pem.as_bytes())
                .map_err(|e| ServerError::Tls(format!("TLCP {what} certificate: {e}")))?;
            Ok(chain.iter().map(|c| CertificateDer::from(c.der().to_vec())).collect())
        };
        let sign = der(&self.sign_chain_pem, "signing")?;
        let enc = der(&self.enc_cert_pem, "encryption")?.into_iter().next();
        let enc = enc.ok_or_else(|| ServerError::Tls("no TLCP encryption certificate".into()))?;
        claimlink_tls::tlcp::Identity::new(
            sign,
            sm2_key(&self.sign_key_pem, "signing")?,
            Some((enc, sm2_key(&self.enc_key_pem, "encryption")?)),
        )
        .map_err(|e| ServerError::Tls(e.to_string()))
    }
}

impl std::fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerIdentity")
            .field("alternate", &self.alternate.is_some())
            .field("strict_sm", &self.strict_sm)
            .field("tlcp", &self.tlcp.is_some())
            .finish_non_exhaustive()
    }
}

/// A server certificate chain with its signing key, ready for rustls.
pub type CertifiedKey = Arc<rustls::sign::CertifiedKey>;

impl ServerIdentity {
    /// One chain and key.
    pub fn new(chain_pem: String, key_pem: zeroize::Zeroizing<String>) -> Self {
        Self { chain_pem, key_pem, alternate: None, strict_sm: false, tlcp: None }
    }

    /// The chain as DER and the key as PKCS#8 DER, for rustls.
    pub fn to_rustls(&self) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), ServerError> {
        let chain = Certificate::chain_from_pem(self.chain_pem.as_bytes())
            .map_err(|e| ServerError::Tls(e.to_string()))?;
        let key = claimlink_pki::pem::private_key_from_pem(self.key_pem.as_bytes(), None)
            .map_err(|e| ServerError::Tls(e.to_string()))?;
        let key_der = key.to_pkcs8_der().map_err(|e| ServerError::Tls(e.to_string()))?;
        Ok((
            chain.iter().map(|c| CertificateDer::from(c.der().to_vec())).collect(),
            PrivateKeyDer::Pkcs8(key_der.to_vec().into()),
        ))
    }

    /// The identities sorted by kind: (SM2, international). Two of one kind is an error, and
    /// so is a key that does not fit its certificate.
    pub fn certified_keys(&self) -> Result<(Option<CertifiedKey>, Option<CertifiedKey>), ServerError> {
        let mut sm2 = None;
        let mut international = None;
        for identity in std::iter::once(self).chain(self.alternate.as_deref()) {
            let (chain, key) = identity.to_rustls()?;
            let leaf =
                chain.first().ok_or_else(|| ServerError::Tls("an empty server certificate chain".into()))?;
            let bad = |e: &dyn std::fmt::Display| ServerError::Tls(format!("server certificate: {e}"));
            let leaf = Certificate::from_der(leaf.as_ref()).map_err(|e| bad(&e))?;
            let is_sm2 = matches!(leaf.public_key().map_err(|e| bad(&e))?, claimlink_pki::PublicKey::Sm2(_));
            let signer = claimlink_tls::any_signing_key(key).map_err(|e| ServerError::Tls(e.to_string()))?;
            let certified = rustls::sign::CertifiedKey::new(chain, signer);
            certified
                .keys_match()
                .map_err(|e| ServerError::Tls(format!("the server key does not fit its certificate: {e}")))?;
            let slot = if is_sm2 { &mut sm2 } else { &mut international };
            if slot.replace(Arc::new(certified)).is_some() {
                return Err(ServerError::Tls(format!(
                    "two {} server identities; give one SM2 and one international",
                    if is_sm2 { "SM2" } else { "international" }
                )));
            }
        }
        if self.strict_sm && sm2.is_none() {
            return Err(ServerError::Tls("strict SM mode needs an SM2 server certificate".into()));
        }
        Ok((sm2, international))
    }

    /// What every server configuration of ours starts from: the certificates (SM2 and/or
    /// international, picked per ClientHello), the provider, and TLS 1.3 only in strict mode.
    /// The caller adds the client-certificate rule.
    pub(crate) fn server_builder(
        &self,
    ) -> Result<
        (
            rustls::ConfigBuilder<rustls::ServerConfig, rustls::WantsVerifier>,
            Arc<claimlink_tls::DualCertResolver>,
        ),
        ServerError,
    > {
        let (sm2, international) = self.certified_keys()?;
        let builder =
            rustls::ServerConfig::builder_with_provider(claimlink_tls::shared_provider(self.strict_sm));
        let tls = |e: rustls::Error| ServerError::Tls(e.to_string());
        let builder = if self.strict_sm {
            builder.with_protocol_versions(&[&rustls::version::TLS13]).map_err(tls)?
        } else {
            builder.with_safe_default_protocol_versions().map_err(tls)?
        };
        Ok((builder, Arc::new(claimlink_tls::DualCertResolver::new(sm2, international))))
    }

    /// The TLCP configuration of [`Self::tlcp`], if set, with `client_verifier` deciding
    /// client certificates (`None`: none asked for, so only the ECC suites).
    pub fn tlcp_config(
        &self,
        client_verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    ) -> Result<Option<claimlink_broker::TlcpConfig>, ServerError> {
        let Some(t) = &self.tlcp else { return Ok(None) };
        let config = claimlink_tls::tlcp::ServerConfig::new(t.identity()?, client_verifier)
            .map_err(|e| ServerError::Tls(e.to_string()))?;
        Ok(Some(Arc::new(config)))
    }

    /// A server configuration for HTTPS without client certificates (the admin API, whose
    /// callers bring a bearer token, and the portal, whose users sign in): the same
    /// certificates, suites and strict rule as the MQTT listeners, ALPN `http/1.1`, and TLCP
    /// on the same port when [`Self::tlcp`] is set. Build it once and share it between
    /// listeners.
    pub fn https_config(&self) -> Result<Arc<Https>, ServerError> {
        let (builder, resolver) = self.server_builder()?;
        let mut config = builder.with_no_client_auth().with_cert_resolver(resolver);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(Https { tls: Arc::new(config), tlcp: self.tlcp_config(None)? }))
    }
}

/// An HTTPS listener's configurations: TLS, and TLCP beside it when the identity has dual
/// certificates.
#[derive(Debug)]
pub struct Https {
    /// TLS (1.2, 1.3, RFC 8998).
    pub tls: Arc<rustls::ServerConfig>,
    /// TLCP.
    pub tlcp: Option<claimlink_broker::TlcpConfig>,
}

impl claimlink_broker::TlsSelector for Https {
    fn select(&self, _sni: Option<&str>) -> Option<Arc<rustls::ServerConfig>> {
        Some(self.tls.clone())
    }

    fn select_tlcp(&self, _sni: Option<&str>) -> Option<claimlink_broker::TlcpConfig> {
        self.tlcp.clone()
    }
}
