//! The agent: the AT commands of REFERENCE.md section 2 over one MQTT-over-TLS session that
//! follows the device's life - staging, claim, move, the OEM's endpoint.
//!
//! A session task owns the connection. It connects to the `Endpoint` setting with the birth
//! certificate (SNI = the endpoint's host, client id = ThingName), subscribes to
//! `{ThingName}/expresslink_config` in both states, and when a message there carries an
//! `Endpoint` other than the current one it persists it (before acknowledging it), hands the
//! message to the host (topic index 0), disconnects and connects to the new endpoint. Once
//! connected it stays connected: a lost connection is retried with exponential backoff and full
//! jitter until `AT+DISCONNECT`. Every connected-to-disconnected transition queues `CONLOST`;
//! every reconnection made on its own queues `CONNECT 0`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use claimlink_mqtt::QoS;
use claimlink_mqtt::client::{ClientConnection, ClientEvent, ClientOptions};
use claimlink_mqtt::packet::{SubscriptionOptions, Will};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;

use crate::at::{self, AtError, Command, ConnectMode};
use crate::bundle::{Bundle, BundleError, Settings, certificates, split_endpoint};
pub use crate::machine::{Backoff, MAX_TOPICS};
use crate::machine::{ConfChange, ConfigEffect, Identity, Machine};

/// Why a connection attempt failed: the ExpressLink hint and a detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectFailure {
    /// 1 backoff, 2 network, 3 endpoint unreachable, 4 TLS failed, 5 MQTT login failed.
    pub hint: u8,
    /// What happened.
    pub detail: String,
}

/// The agent's state as others may watch it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Status {
    /// Connected now.
    pub connected: bool,
    /// The endpoint of the current (or last) connection.
    pub endpoint: String,
    /// The endpoint is not the staging one.
    pub onboarded: bool,
    /// Connections made so far.
    pub connections: u64,
    /// The TLS cipher suite of the current (or last) connection, as IANA names it
    /// (`TLS_SM4_GCM_SM3`, `TLS_AES_128_GCM_SHA256`, ...).
    pub cipher_suite: Option<&'static str>,
}

/// What the session task and the host's commands share: the bundle, the machine that
/// decides, and the status others watch.
struct Core {
    bundle: Bundle,
    machine: Mutex<Machine>,
    status: watch::Sender<Status>,
}

/// A jitter fraction in [0, 1) from the system's randomness (1.0, no jitter, without one).
fn jitter() -> f64 {
    let mut r = [0u8; 8];
    if getrandom::fill(&mut r).is_err() {
        return 1.0;
    }
    (u64::from_le_bytes(r) >> 11) as f64 / (1u64 << 53) as f64
}

impl Core {
    fn lock(&self) -> MutexGuard<'_, Machine> {
        self.machine.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Publishes the machine's view to watchers.
    fn publish_status(&self) {
        let m = self.lock();
        let (connected, endpoint) = match m.connected_to() {
            Some(e) => (true, e.to_owned()),
            None => (false, m.settings().endpoint.clone()),
        };
        let onboarded = m.is_customer(&endpoint);
        let connections = m.connections();
        drop(m);
        self.status.send_modify(|s| {
            s.connected = connected;
            s.endpoint = endpoint;
            s.onboarded = onboarded;
            s.connections = connections;
        });
    }

    /// Writes settings the machine asked for, then commits them to it.
    fn persist(&self, settings: Settings) -> Result<(), BundleError> {
        settings.save(&self.bundle.dir)?;
        self.lock().commit(settings);
        Ok(())
    }
}

enum Ctl {
    Publish { topic: String, payload: Bytes, qos: QoS, reply: oneshot::Sender<Result<(), AtError>> },
    Subscribe { index: u8, filter: String },
    Unsubscribe { filter: String },
    Stop(oneshot::Sender<()>),
}

/// The device agent.
pub struct Agent {
    core: Arc<Core>,
    session: Option<mpsc::Sender<Ctl>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("thing_name", &self.core.bundle.thing_name).finish_non_exhaustive()
    }
}

/// The byte stream a link runs on: TLS or TLCP.
trait LinkIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> LinkIo for T {}

/// TLS 1.3 (RFC 8998 first for an SM2 device) or 1.2 to the endpoint.
async fn tls_connect(
    core: &Core,
    roots: rustls::RootCertStore,
    name: ServerName<'static>,
    tcp: TcpStream,
) -> Result<TlsStream<TcpStream>, ConnectFailure> {
    let fail = |hint, detail: String| ConnectFailure { hint, detail };
    // A device with an SM2 key offers TLS 1.3 with SM first (RFC 8998), the international
    // suites after; a P-256 device the other way round.
    let sm2_key = matches!(&core.bundle.key, rustls::pki_types::PrivateKeyDer::Pkcs8(k)
        if claimlink_gm::Sm2PrivateKey::from_pkcs8_der(k.secret_pkcs8_der()).is_ok());
    let provider =
        Arc::new(if sm2_key { claimlink_tls::provider_preferring_sm() } else { claimlink_tls::provider() });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(4, e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(core.bundle.chain.clone(), core.bundle.key.clone_key())
        .map_err(|e| fail(4, format!("the device certificate or key is unusable: {e}")))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .map_err(|_| fail(4, "TLS handshake timed out".into()))?
        .map_err(|e| fail(4, format!("TLS handshake failed: {e}")))
}

/// TLCP (GB/T 38636) to the endpoint: the birth certificate signs; with the bundle's
/// encryption certificate the ECDHE suites are offered too.
async fn tlcp_connect(
    core: &Core,
    roots: rustls::RootCertStore,
    name: &ServerName<'static>,
    tcp: TcpStream,
) -> Result<claimlink_tls::tlcp::TlcpStream<TcpStream>, ConnectFailure> {
    let fail = |hint, detail: String| ConnectFailure { hint, detail };
    let sm2 = |key: &rustls::pki_types::PrivateKeyDer<'static>| match key {
        rustls::pki_types::PrivateKeyDer::Pkcs8(k) => {
            claimlink_gm::Sm2PrivateKey::from_pkcs8_der(k.secret_pkcs8_der()).map_err(|_| ())
        }
        _ => Err(()),
    };
    let sign = sm2(&core.bundle.key).map_err(|()| fail(4, "TLCP needs an SM2 device key".into()))?;
    let enc = match &core.bundle.encryption {
        Some((cert, key)) => {
            Some((cert.clone(), sm2(key).map_err(|()| fail(4, "the encryption key is not SM2".into()))?))
        }
        None => None,
    };
    let identity = claimlink_tls::tlcp::Identity::new(core.bundle.chain.clone(), sign, enc)
        .map_err(|e| fail(4, format!("the device certificates are unusable for TLCP: {e}")))?;
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(claimlink_tls::provider()),
    )
    .build()
    .map_err(|e| fail(4, e.to_string()))?;
    let config = Arc::new(claimlink_tls::tlcp::ClientConfig::new(verifier, Some(identity)));
    tokio::time::timeout(Duration::from_secs(10), claimlink_tls::tlcp::TlcpStream::connect(tcp, config, name))
        .await
        .map_err(|_| fail(4, "TLCP handshake timed out".into()))?
        .map_err(|e| fail(4, format!("TLCP handshake failed: {e}")))
}

/// A connected link: TLS or TLCP stream and MQTT state.
struct Link {
    stream: Box<dyn LinkIo>,
    /// The negotiated cipher suite's name.
    suite: Option<&'static str>,
    client: ClientConnection,
    buf: Vec<u8>,
}

enum End {
    Moved,
    Lost,
    /// The host asked; it is answered once the machine has recorded the disconnection.
    Stopped(Option<oneshot::Sender<()>>),
}

impl Link {
    async fn flush(&mut self) -> std::io::Result<()> {
        let out = self.client.take_output();
        if !out.is_empty() {
            self.stream.write_all(&out).await?;
            self.stream.flush().await?;
        }
        Ok(())
    }

    async fn open(core: &Core, endpoint: &str) -> Result<Self, ConnectFailure> {
        let fail = |hint, detail: String| ConnectFailure { hint, detail };
        let (host, port) = split_endpoint(endpoint)
            .ok_or_else(|| fail(3, format!("endpoint {endpoint:?} is not host[:port]")))?;
        // RFC 6761: names under .localhost are loopback.
        let addrs: Vec<std::net::SocketAddr> = if host == "localhost" || host.ends_with(".localhost") {
            vec![std::net::SocketAddr::from(([127, 0, 0, 1], port))]
        } else {
            tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| fail(2, format!("cannot resolve {host}: {e}")))?
                .collect()
        };
        let mut tcp = None;
        let mut last = String::from("no address");
        for a in addrs {
            match tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(a)).await {
                Ok(Ok(s)) => {
                    tcp = Some(s);
                    break;
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "timed out".into(),
            }
        }
        let tcp = tcp.ok_or_else(|| fail(3, format!("cannot reach {endpoint}: {last}")))?;
        let _ = tcp.set_nodelay(true);
        let (root_pem, keep_alive, will, ticket, transport) = {
            let m = core.lock();
            let s = m.settings();
            let root = if s.root_ca.is_empty() { core.bundle.root_ca_pem.clone() } else { s.root_ca.clone() };
            let will = (!s.lwt_topic.is_empty()).then(|| Will {
                topic: s.lwt_topic.clone(),
                payload: Bytes::from(s.lwt_message.clone()),
                qos: QoS::AtMostOnce,
                retain: false,
                properties: Default::default(),
            });
            (root, s.keep_alive, will, s.claim_ticket.clone(), m.transport().to_owned())
        };
        let mut roots = rustls::RootCertStore::empty();
        for c in certificates(&root_pem).map_err(|e| fail(4, format!("RootCA: {e}")))? {
            roots.add(c).map_err(|e| fail(4, format!("RootCA: {e}")))?;
        }
        let name = ServerName::try_from(host.to_owned()).map_err(|e| fail(3, e.to_string()))?;
        let (stream, suite): (Box<dyn LinkIo>, _) = if transport == "TLCP" {
            let s = tlcp_connect(core, roots, &name, tcp).await?;
            let suite = s.connection().cipher_suite().map(claimlink_tls::tlcp::CipherSuite::name);
            (Box::new(s), suite)
        } else {
            let s = tls_connect(core, roots, name, tcp).await?;
            let suite =
                s.get_ref().1.negotiated_cipher_suite().and_then(|s| claimlink_tls::suite_name(s.suite()));
            (Box::new(s), suite)
        };
        let mut options = ClientOptions::new(core.bundle.thing_name.clone());
        options.keep_alive = keep_alive;
        options.will = will;
        let onboarded = endpoint != core.bundle.staging_endpoint;
        if onboarded && !ticket.is_empty() {
            // Proof of the claim for an account that admits claimed devices only (MQTT 3.1.1
            // needs a user name with a password).
            options.username = Some(TICKET_USERNAME.into());
            options.password = Some(Bytes::from(ticket));
        }
        if onboarded {
            // A persistent session: what the owner sends while the device is away (a release)
            // waits for it.
            options.clean_start = false;
            options.session_expiry = 7 * 24 * 3600;
        }
        let now = Instant::now().into_std();
        let mut link =
            Link { stream, suite, client: ClientConnection::new(options, now), buf: vec![0; 16 * 1024] };
        let login = async {
            link.flush().await.map_err(|e| fail(4, e.to_string()))?;
            loop {
                let n = link.stream.read(&mut link.buf).await.map_err(|e| fail(4, e.to_string()))?;
                if n == 0 {
                    // TLS 1.3 reports a refused client certificate only here.
                    return Err(fail(4, "the server closed the connection (certificate refused?)".into()));
                }
                link.client.handle_input(Instant::now().into_std(), &link.buf[..n]);
                while let Some(e) = link.client.poll_event() {
                    match e {
                        ClientEvent::Connected { .. } => return Ok(()),
                        ClientEvent::Refused(r) => return Err(fail(5, format!("CONNACK {r:?}"))),
                        ClientEvent::Disconnected(r) => return Err(fail(5, format!("disconnected: {r:?}"))),
                        _ => {}
                    }
                }
                link.flush().await.map_err(|e| fail(4, e.to_string()))?;
            }
        };
        tokio::time::timeout(Duration::from_secs(15), login)
            .await
            .map_err(|_| fail(5, "no CONNACK in time".into()))??;
        // The configuration topic in both states, and what the host subscribed to.
        let filters = core.lock().subscriptions();
        let now = Instant::now().into_std();
        for f in &filters {
            let _ = link.client.subscribe(now, &[(f.as_str(), SubscriptionOptions::qos(QoS::AtLeastOnce))]);
        }
        link.flush().await.map_err(|e| fail(4, e.to_string()))?;
        Ok(link)
    }

    /// Runs until the connection ends; returns how.
    async fn run(mut self, core: &Core, ctl: &mut mpsc::Receiver<Ctl>) -> End {
        let mut publishes: HashMap<u16, oneshot::Sender<Result<(), AtError>>> = HashMap::new();
        let mut subscribes: HashMap<u16, u8> = HashMap::new();
        loop {
            if self.flush().await.is_err() {
                return End::Lost;
            }
            let deadline = self.client.poll_timeout().map(Instant::from_std);
            tokio::select! {
                read = self.stream.read(&mut self.buf) => match read {
                    Ok(n) if n > 0 => self.client.handle_input(Instant::now().into_std(), &self.buf[..n]),
                    _ => {
                        self.client.handle_transport_closed();
                    }
                },
                c = ctl.recv() => match c {
                    None | Some(Ctl::Stop(_)) => {
                        self.client.disconnect(Instant::now().into_std());
                        let _ = self.flush().await;
                        let _ = self.stream.shutdown().await;
                        return End::Stopped(match c {
                            Some(Ctl::Stop(done)) => Some(done),
                            _ => None,
                        });
                    }
                    Some(Ctl::Publish { topic, payload, qos, reply }) => {
                        match self.client.publish(Instant::now().into_std(), &topic, payload, qos, false) {
                            Ok(Some(id)) => { publishes.insert(id, reply); }
                            Ok(None) => { let _ = reply.send(Ok(())); }
                            Err(_) => { let _ = reply.send(Err(AtError::NotAllowed)); }
                        }
                    }
                    Some(Ctl::Subscribe { index, filter }) => {
                        let now = Instant::now().into_std();
                        match self.client.subscribe(now, &[(filter.as_str(), SubscriptionOptions::qos(QoS::AtLeastOnce))]) {
                            Ok(id) => { subscribes.insert(id, index); }
                            Err(_) => core.lock().subscribed(index, false),
                        }
                    }
                    Some(Ctl::Unsubscribe { filter }) => {
                        let _ = self.client.unsubscribe(Instant::now().into_std(), &[filter.as_str()]);
                    }
                },
                _ = sleep_until(deadline) => self.client.handle_timeout(Instant::now().into_std()),
            }
            let mut moved = false;
            while let Some(e) = self.client.poll_event() {
                match e {
                    ClientEvent::Message(p) => {
                        let effect = core.lock().message(p.topic, p.payload);
                        if let ConfigEffect::Persist { settings, moving } = effect {
                            // Persist, then acknowledge, then move.
                            let endpoint = settings.endpoint.clone();
                            match core.persist(settings) {
                                Ok(()) if moving => {
                                    tracing::info!(endpoint, "claimed: moving to a new endpoint");
                                    moved = true;
                                }
                                Ok(()) => {}
                                Err(e) => {
                                    tracing::error!(error = %e, "cannot persist the new endpoint; staying")
                                }
                            }
                        }
                    }
                    ClientEvent::Published { packet_id, reason } => {
                        if let Some(reply) = publishes.remove(&packet_id) {
                            let _ = reply.send(if !reason.is_error() {
                                Ok(())
                            } else {
                                Err(AtError::NotAllowed)
                            });
                        }
                    }
                    ClientEvent::Subscribed { packet_id, reasons } => {
                        if let Some(index) = subscribes.remove(&packet_id) {
                            core.lock().subscribed(index, reasons.iter().all(|r| !r.is_error()));
                        }
                    }
                    ClientEvent::Disconnected(_) | ClientEvent::Refused(_) => {
                        let _ = self.flush().await;
                        return End::Lost;
                    }
                    _ => {}
                }
            }
            if moved {
                // The acknowledgement goes out after the new endpoint is on disk.
                let _ = self.flush().await;
                self.client.disconnect(Instant::now().into_std());
                let _ = self.flush().await;
                let _ = self.stream.shutdown().await;
                return End::Moved;
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The MQTT user name that says the password is a claim ticket.
pub const TICKET_USERNAME: &str = "claimlink-claim-ticket";

async fn session(
    core: Arc<Core>,
    mut ctl: mpsc::Receiver<Ctl>,
    mut first: Option<oneshot::Sender<Result<(), ConnectFailure>>>,
) {
    loop {
        let endpoint = core.lock().settings().endpoint.clone();
        let wait = match Link::open(&core, &endpoint).await {
            Err(failure) => {
                tracing::debug!(hint = failure.hint, detail = %failure.detail, "connection attempt failed");
                if let Some(tx) = first.take() {
                    let _ = tx.send(Err(failure));
                    return;
                }
                core.lock().attempt_failed(jitter())
            }
            Ok(link) => {
                core.lock().connection_up(&endpoint, first.is_some());
                let suite = link.suite;
                // Recorded without waking watchers: publish_status wakes them once, whole.
                core.status.send_if_modified(|s| {
                    s.cipher_suite = suite;
                    false
                });
                core.publish_status();
                if let Some(tx) = first.take() {
                    let _ = tx.send(Ok(()));
                }
                let end = link.run(&core, &mut ctl).await;
                let wait = core.lock().connection_down(matches!(end, End::Moved), jitter());
                core.publish_status();
                match end {
                    End::Stopped(done) => {
                        // Answered only now: the host's next query sees the disconnection.
                        if let Some(done) = done {
                            let _ = done.send(());
                        }
                        return;
                    }
                    End::Moved => continue,
                    End::Lost => wait,
                }
            }
        };
        // Wait out the backoff, still answering the host.
        let wait = tokio::time::sleep(wait);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = &mut wait => break,
                c = ctl.recv() => match c {
                    None => return,
                    Some(Ctl::Stop(done)) => { let _ = done.send(()); return; }
                    Some(Ctl::Publish { reply, .. }) => { let _ = reply.send(Err(AtError::NoConnection)); }
                    Some(_) => {}
                },
            }
        }
    }
}

/// What the agent is opened with.
#[derive(Debug, Clone, Copy, Default)]
pub struct AgentOptions {
    /// Backoff between connection attempts.
    pub backoff: Backoff,
}

impl Agent {
    /// Opens the agent for the bundle in `dir` (settings from `settings.toml` or the factory
    /// defaults). Queues the STARTUP event.
    pub fn open(dir: &std::path::Path, options: AgentOptions) -> Result<Self, BundleError> {
        let bundle = Bundle::load(dir)?;
        let settings = Settings::load(&bundle)?;
        let status = Status {
            endpoint: settings.endpoint.clone(),
            onboarded: settings.endpoint != bundle.staging_endpoint,
            ..Status::default()
        };
        let id = Identity {
            thing_name: bundle.thing_name.clone(),
            staging_endpoint: bundle.staging_endpoint.clone(),
            certificate_pem: bundle.certificate_pem.clone(),
            root_ca_pem: bundle.root_ca_pem.clone(),
            transport: bundle.transport.clone(),
        };
        let machine = Mutex::new(Machine::new(id, settings, options.backoff));
        let core = Arc::new(Core { bundle, machine, status: watch::Sender::new(status) });
        Ok(Self { core, session: None })
    }

    /// The ThingName.
    pub fn thing_name(&self) -> &str {
        &self.core.bundle.thing_name
    }

    /// Watches the agent's status.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.core.status.subscribe()
    }

    fn running(&self) -> bool {
        self.session.as_ref().is_some_and(|s| !s.is_closed())
    }

    /// Starts the session and waits for the first connection's outcome. The session then
    /// keeps the device connected (moving when claimed) until [`Agent::disconnect`].
    pub async fn connect(&mut self) -> Result<(), ConnectFailure> {
        if self.running() {
            return Ok(());
        }
        let (first_tx, first_rx) = oneshot::channel();
        self.start_session(Some(first_tx));
        match first_rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(f)) => {
                self.session = None;
                Err(f)
            }
            Err(_) => Err(ConnectFailure { hint: 2, detail: "the session ended".into() }),
        }
    }

    /// Starts the session without waiting; it retries with backoff until it connects.
    pub fn connect_in_background(&mut self) {
        if self.running() {
            return;
        }
        self.start_session(None);
    }

    /// Spawns the session task. Given `first`, it reports the first attempt's outcome there
    /// and ends if that failed; without, it retries until it connects.
    fn start_session(&mut self, first: Option<oneshot::Sender<Result<(), ConnectFailure>>>) {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(session(self.core.clone(), rx, first));
        self.session = Some(tx);
    }

    /// Ends the session.
    pub async fn disconnect(&mut self) {
        if let Some(s) = self.session.take() {
            let (tx, rx) = oneshot::channel();
            if s.send(Ctl::Stop(tx)).await.is_ok() {
                let _ = rx.await;
            }
        }
    }

    /// Publishes `payload` on `topic` (QoS 0 or 1); for QoS 1 waits for the acknowledgement.
    pub async fn publish(&self, topic: &str, payload: Bytes, qos: QoS) -> Result<(), AtError> {
        let s = self
            .session
            .as_ref()
            .filter(|_| self.core.status.borrow().connected)
            .ok_or(AtError::NoConnection)?;
        let (reply, rx) = oneshot::channel();
        s.send(Ctl::Publish { topic: topic.to_owned(), payload, qos, reply })
            .await
            .map_err(|_| AtError::NoConnection)?;
        tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .map_err(|_| AtError::NoConnection)?
            .map_err(|_| AtError::NoConnection)?
    }

    /// Runs one AT command line; returns the response (one or more CRLF-terminated lines).
    pub async fn execute_line(&mut self, line: &str) -> String {
        match at::parse(line) {
            Ok(cmd) => self.execute(cmd).await.unwrap_or_else(AtError::response),
            Err(e) => e.response(),
        }
    }

    /// Runs one parsed command: the machine decides, this does the I/O it asks for.
    pub async fn execute(&mut self, cmd: Command) -> Result<String, AtError> {
        match cmd {
            Command::Attention => Ok(at::ok(None, None)),
            Command::Connect(ConnectMode::Query) => Ok(self.core.lock().connect_query()),
            Command::Connect(ConnectMode::Blocking)
                if self.running() && !self.core.status.borrow().connected =>
            {
                // The session lost its connection and is waiting out its backoff.
                Ok("ERR14 1 UNABLE TO CONNECT reconnecting after backoff\r\n".to_owned())
            }
            Command::Connect(ConnectMode::Blocking) => match self.connect().await {
                Ok(()) => Ok(at::ok(None, Some("1 CONNECTED"))),
                Err(f) => {
                    Ok(format!("ERR14 {} UNABLE TO CONNECT {}\r\n", f.hint, at::escape(f.detail.as_bytes())))
                }
            },
            Command::Connect(ConnectMode::NonBlocking) => {
                if self.running() {
                    return Ok(at::ok(None, None));
                }
                let (first_tx, first_rx) = oneshot::channel();
                self.start_session(Some(first_tx));
                let core = self.core.clone();
                tokio::spawn(async move {
                    let hint = match first_rx.await {
                        Ok(Ok(())) => 0,
                        Ok(Err(f)) => u32::from(f.hint),
                        Err(_) => 2,
                    };
                    core.lock().connect_reported(hint);
                });
                Ok(at::ok(None, None))
            }
            Command::Disconnect => {
                self.disconnect().await;
                Ok(at::ok(None, Some("0 DISCONNECTED")))
            }
            Command::Send { topic, message } => {
                let (name, qos) = self.core.lock().send_target(topic)?;
                self.publish(&name, Bytes::from(message), qos).await?;
                Ok(at::ok(None, None))
            }
            Command::Get(from) => Ok(self.core.lock().get(from)),
            Command::Subscribe(index) => {
                let s = self
                    .session
                    .as_ref()
                    .filter(|_| self.core.status.borrow().connected)
                    .ok_or(AtError::NoConnection)?;
                let filter = self.core.lock().subscribe(index)?;
                let _ = s.send(Ctl::Subscribe { index, filter }).await;
                Ok(at::ok(None, None))
            }
            Command::Unsubscribe(index) => {
                let filter = self.core.lock().unsubscribe(index)?;
                if let Some(s) = &self.session {
                    let _ = s.send(Ctl::Unsubscribe { filter }).await;
                }
                Ok(at::ok(None, None))
            }
            Command::ConfSet { key, value } => {
                let change = self.core.lock().conf_set(&key, value)?;
                if let ConfChange::Persist(settings) = change {
                    self.core.persist(settings).map_err(|_| AtError::NotAllowed)?;
                }
                Ok(at::ok(None, None))
            }
            Command::ConfGet { key, argument } => self.core.lock().conf_get(&key, argument.as_deref()),
            Command::Event => Ok(self.core.lock().next_event()),
            Command::Reset => {
                self.disconnect().await;
                self.core.lock().reset();
                Ok(at::ok(None, None))
            }
            Command::FactoryReset => {
                self.disconnect().await;
                let factory = Settings::factory(&self.core.bundle);
                factory.save(&self.core.bundle.dir).map_err(|_| AtError::NotAllowed)?;
                self.core.lock().factory_reset(factory);
                self.core.publish_status();
                Ok(at::ok(None, None))
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let (tx, _) = oneshot::channel();
            let _ = s.try_send(Ctl::Stop(tx));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_full_jitter_under_a_doubling_ceiling() {
        let b = Backoff { base: Duration::from_millis(100), cap: Duration::from_secs(2) };
        for (attempt, ceiling) in [(1, 100), (2, 200), (3, 400), (5, 1600), (6, 2000), (40, 2000)] {
            let delays: Vec<Duration> = (0..200).map(|_| b.delay(attempt)).collect();
            assert!(delays.iter().all(|d| *d <= Duration::from_millis(ceiling)), "attempt {attempt}");
            // Jitter: spread over the whole range, not a fixed delay.
            let max = delays.iter().max().copied().unwrap_or_default();
            let min = delays.iter().min().copied().unwrap_or_default();
            assert!(max - min > Duration::from_millis(ceiling / 2), "attempt {attempt}: {min:?}..{max:?}");
        }
    }
}
