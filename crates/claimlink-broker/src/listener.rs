//! Listeners (plain TCP for development and tests, TLS for everything else) and the broker
//! handle that owns the router and the hooks.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, Weak};

use claimlink_mqtt::ReasonCode;
use claimlink_mqtt::packet::Publish;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::LazyConfigAcceptor;

use crate::connection;
use crate::hooks::{Hooks, PeerIdentity};
use crate::router::Router;

/// Bounds on what clients may make the broker hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Simultaneous connections per broker.
    pub max_connections: usize,
    /// Simultaneous connections from one source address (IPv6 by /64), per listener.
    pub max_per_source: usize,
    /// Largest packet accepted.
    pub max_packet_size: u32,
    /// Incoming unacknowledged QoS 1/2 messages per connection.
    pub receive_maximum: u16,
    /// Incoming topic aliases per connection.
    pub topic_alias_maximum: u16,
    /// Outgoing messages queued per connection (router queue and the window queue each).
    pub max_queued: usize,
    /// Longest topic name or filter, in bytes.
    pub max_topic_len: usize,
    /// Most `/`-separated levels in a topic.
    pub max_topic_levels: usize,
    /// Subscriptions per connection.
    pub max_subscriptions: usize,
    /// Longest client identifier, in bytes.
    pub max_client_id_len: usize,
    /// Time allowed for the TLS handshake and the CONNECT.
    pub connect_timeout: Duration,
    /// Longest a session outlives its connection (MQTT 5 session expiry is capped to this; an
    /// MQTT 3.1.1 persistent session gets exactly this).
    pub max_session_expiry: Duration,
    /// Messages kept per offline session.
    pub max_offline_messages: usize,
}

impl Limits {
    /// What an MQTT listener serving this broker admits.
    pub fn listener(&self) -> crate::serve::ListenerLimits {
        crate::serve::ListenerLimits {
            max_connections: self.max_connections,
            max_per_source: self.max_per_source,
            handshake_timeout: self.connect_timeout,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            max_per_source: 20_000,
            max_packet_size: 128 * 1024 + 1024,
            receive_maximum: 100,
            topic_alias_maximum: 10,
            max_queued: 1000,
            max_topic_len: 256,
            max_topic_levels: 8,
            max_subscriptions: 50,
            max_client_id_len: 128,
            connect_timeout: Duration::from_secs(10),
            max_session_expiry: Duration::from_secs(3600),
            max_offline_messages: 1000,
        }
    }
}

impl Limits {
    /// Whether a topic name or filter is within the length and level limits.
    pub fn fits_topic(&self, topic: &str) -> bool {
        topic.len() <= self.max_topic_len && topic.split('/').count() <= self.max_topic_levels
    }
}

/// Chooses the TLS configuration (server certificate, client verifier) per connection from
/// the server name the client asked for. `None` refuses the handshake.
pub trait TlsSelector: Send + Sync + 'static {
    /// The configuration for `sni` (`None`: refuse the handshake). Configurations are built
    /// ahead, not per handshake.
    fn select(&self, sni: Option<&str>) -> Option<Arc<rustls::ServerConfig>>;

    /// Admits (or refuses, with the reason for the log) the client of a finished handshake
    /// before a byte of its protocol is read: the one place a role verifies a client
    /// certificate chain. What it returns travels with the connection
    /// ([`crate::PeerIdentity::admission`]). By default every handshaken client is admitted
    /// with nothing carried.
    fn admit(
        &self,
        _sni: Option<&str>,
        _certificates: &[rustls::pki_types::CertificateDer<'static>],
    ) -> Result<Option<crate::hooks::PeerAdmission>, String> {
        Ok(None)
    }

    /// The TLCP configuration for `sni`, for a client whose first record is TLCP's (version
    /// 0x0101); `None` (the default) refuses TLCP on this listener. Its client certificates go
    /// through [`Self::admit`] like TLS ones: the signing certificate and its chain.
    fn select_tlcp(&self, _sni: Option<&str>) -> Option<TlcpConfig> {
        None
    }
}

/// The TLCP configuration a [`TlsSelector`] serves beside TLS on the same port (see
/// [`handshake`]).
pub type TlcpConfig = Arc<claimlink_tls::tlcp::ServerConfig>;

impl TlsSelector for Arc<rustls::ServerConfig> {
    fn select(&self, _sni: Option<&str>) -> Option<Arc<rustls::ServerConfig>> {
        Some(self.clone())
    }
}

impl<H: Hooks> Shared<H> {
    /// The router, also after a panic elsewhere while it was locked: its maps stay usable, and
    /// refusing every later CONNECT (or admitting unchecked) would be worse.
    pub(crate) fn router(&self) -> std::sync::MutexGuard<'_, Router<H::Context>> {
        self.router.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

pub(crate) struct Shared<H: Hooks> {
    pub(crate) hooks: H,
    pub(crate) router: Mutex<Router<H::Context>>,
    pub(crate) limits: Limits,
    pub(crate) next_connection: AtomicU64,
    connections: Arc<Semaphore>,
    /// Whether a sweeper task runs (one per broker, however many listeners).
    sweeping: AtomicBool,
}

/// A broker handle that does not keep it alive (see [`Broker::downgrade`]).
pub struct WeakBroker<H: Hooks> {
    shared: Weak<Shared<H>>,
}

impl<H: Hooks> Clone for WeakBroker<H> {
    fn clone(&self) -> Self {
        Self { shared: self.shared.clone() }
    }
}

impl<H: Hooks> WeakBroker<H> {
    /// The broker, if it still exists.
    pub fn upgrade(&self) -> Option<Broker<H>> {
        self.shared.upgrade().map(|shared| Broker { shared })
    }
}

/// A broker: hooks, router and limits, served on any number of listeners.
pub struct Broker<H: Hooks> {
    shared: Arc<Shared<H>>,
}

impl<H: Hooks> Clone for Broker<H> {
    fn clone(&self) -> Self {
        Self { shared: self.shared.clone() }
    }
}

impl<H: Hooks> Broker<H> {
    /// A broker with these hooks and limits.
    pub fn new(hooks: H, limits: Limits) -> Self {
        let connections = Arc::new(Semaphore::new(limits.max_connections));
        let shared = Shared {
            hooks,
            router: Mutex::new(Router::with_offline_limit(limits.max_offline_messages)),
            limits,
            next_connection: AtomicU64::new(1),
            connections,
            sweeping: AtomicBool::new(false),
        };
        Self { shared: Arc::new(shared) }
    }

    /// The role's hooks.
    pub fn hooks(&self) -> &H {
        &self.shared.hooks
    }

    /// Connected clients.
    pub fn clients(&self) -> usize {
        self.shared.router().clients()
    }

    /// Serves plain MQTT on `listener` until `shutdown` turns true.
    pub async fn serve_tcp(&self, listener: TcpListener, shutdown: watch::Receiver<bool>) -> io::Result<()> {
        self.serve(listener, None, shutdown).await
    }

    /// Serves MQTT over TLS on `listener` until `shutdown` turns true.
    pub async fn serve_tls(
        &self,
        listener: TcpListener,
        tls: Arc<dyn TlsSelector>,
        shutdown: watch::Receiver<bool>,
    ) -> io::Result<()> {
        self.serve(listener, Some(tls), shutdown).await
    }

    /// Publishes a message from the broker itself (a role's event, a command to a device) to
    /// every subscriber the role lets receive it. Returns how many queues took it.
    pub fn publish(&self, message: Publish) -> usize {
        let mut router = self.shared.router();
        connection::publish_from(&self.shared, &mut router, message, None, std::time::Instant::now())
    }

    /// Ends the connection of `client_id`, if online, with `reason` (MQTT 5 clients get it in a
    /// DISCONNECT). Returns whether it was online.
    pub fn disconnect(&self, client_id: &str, reason: ReasonCode) -> bool {
        self.shared.router().disconnect(client_id, reason)
    }

    /// A handle that does not keep the broker alive, for hooks that must reach their broker.
    pub fn downgrade(&self) -> WeakBroker<H> {
        WeakBroker { shared: Arc::downgrade(&self.shared) }
    }

    /// Serves one connection that the caller accepted (and, for TLS, handshook) itself: for
    /// roles that pick a broker per connection, such as one per account chosen by SNI. The
    /// broker's connection limit applies; over it, the connection is dropped.
    pub async fn serve_stream<S>(&self, stream: S, peer: PeerIdentity, shutdown: watch::Receiver<bool>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        self.spawn_sweeper(shutdown.clone());
        let Ok(_permit) = self.shared.connections.clone().try_acquire_owned() else {
            tracing::warn!(addr = %peer.addr, "connection limit reached; refusing");
            return;
        };
        connection::serve(self.shared.clone(), stream, peer, shutdown).await;
    }

    /// Expires offline sessions and publishes wills whose delay has passed, once a second,
    /// until shutdown.
    fn spawn_sweeper(&self, mut shutdown: watch::Receiver<bool>) {
        if self.shared.sweeping.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let now = std::time::Instant::now();
                        let mut router = shared.router();
                        router.sweep(now);
                        for (client_id, will) in router.due_wills(now) {
                            connection::publish_from(&shared, &mut router, will, Some(&client_id), now);
                        }
                    }
                    _ = shutdown.changed() => {
                        shared.sweeping.store(false, std::sync::atomic::Ordering::Release);
                        return;
                    }
                }
            }
        });
    }

    async fn serve(
        &self,
        listener: TcpListener,
        tls: Option<Arc<dyn TlsSelector>>,
        shutdown: watch::Receiver<bool>,
    ) -> io::Result<()> {
        self.spawn_sweeper(shutdown.clone());
        let limits = self.shared.limits.listener();
        let me = self.clone();
        let stop = shutdown.clone();
        crate::serve::serve("mqtt", listener, limits, tls, shutdown, move |accepted| {
            let (me, stop) = (me.clone(), stop.clone());
            async move { me.serve_accepted(accepted, stop).await }
        })
        .await;
        Ok(())
    }

    /// Serves one connection accepted by [`crate::serve::serve`].
    pub async fn serve_accepted(&self, accepted: crate::serve::Accepted, shutdown: watch::Receiver<bool>) {
        let crate::serve::Accepted { io, addr, sni, certificates, admission, permit } = accepted;
        let _permit = permit;
        self.serve_stream(io, PeerIdentity { addr, sni, certificates, admission }, shutdown).await;
    }
}

/// A finished TLS or TLCP handshake: the stream, the server name the client sent, its
/// certificates (for TLCP, the signing certificate and its chain).
pub type Handshaken =
    (Box<dyn crate::serve::Io>, Option<String>, Vec<rustls::pki_types::CertificateDer<'static>>);

/// How long [`handshake`] waits between looks at a connection's first bytes while fewer than
/// three have arrived (the caller's handshake timeout bounds the whole).
const PEEK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(5);

/// Runs the server side of a handshake with the configuration `tls` picks for the client's
/// server name: TLCP when the first record says version 0x0101 and `tls` serves TLCP, else TLS.
/// The first bytes are peeked, not consumed.
pub async fn handshake(stream: tokio::net::TcpStream, tls: &dyn TlsSelector) -> io::Result<Handshaken> {
    let mut first = [0u8; 3];
    loop {
        let n = stream.peek(&mut first).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed before the handshake"));
        }
        if n >= 3 || first[0] != 22 {
            break;
        }
        tokio::time::sleep(PEEK_INTERVAL).await;
    }
    if claimlink_tls::tlcp::is_tlcp_client_hello(&first) {
        let stream =
            claimlink_tls::tlcp::TlcpStream::accept(stream, |hello| tls.select_tlcp(hello.server_name()))
                .await?;
        let sni = stream.connection().server_name().map(str::to_owned);
        let certificates = stream.connection().peer_certificates().to_vec();
        return Ok((Box::new(stream), sni, certificates));
    }
    let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
    let sni = start.client_hello().server_name().map(str::to_owned);
    let config = tls.select(sni.as_deref()).ok_or_else(|| {
        io::Error::new(io::ErrorKind::PermissionDenied, "no TLS configuration for this server name")
    })?;
    let stream = start.into_stream(config).await?;
    let certificates = stream.get_ref().1.peer_certificates().map(|c| c.to_vec()).unwrap_or_default();
    Ok((Box::new(stream), sni, certificates))
}
