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

use std::collections::{HashMap, VecDeque};
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

use crate::at::{self, AtError, Command, ConnectMode, GetFrom};
use crate::bundle::{Bundle, BundleError, Settings, certificates, split_endpoint};

/// Topic indexes `Topic1..Topic16`.
pub const MAX_TOPICS: u8 = 16;
/// Messages kept for the host; more queue an OVERRUN event and are dropped.
const INBOX: usize = 64;
/// Events kept.
const EVENTS: usize = 64;

/// Event ids.
mod event {
    pub(super) const MSG: u8 = 1;
    pub(super) const STARTUP: u8 = 2;
    pub(super) const CONLOST: u8 = 3;
    pub(super) const OVERRUN: u8 = 4;
    pub(super) const CONNECT: u8 = 6;
    pub(super) const SUBACK: u8 = 8;
    pub(super) const SUBNACK: u8 = 9;
}

/// Why a connection attempt failed: the ExpressLink hint and a detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectFailure {
    /// 1 backoff, 2 network, 3 endpoint unreachable, 4 TLS failed, 5 MQTT login failed.
    pub hint: u8,
    /// What happened.
    pub detail: String,
}

/// Backoff between connection attempts.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// The first ceiling.
    pub base: Duration,
    /// The largest ceiling.
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { base: Duration::from_secs(1), cap: Duration::from_secs(120) }
    }
}

impl Backoff {
    /// The wait before attempt `n` (1-based): uniform in [0, min(cap, base * 2^(n-1))].
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16)).min(self.cap);
        let mut r = [0u8; 8];
        if getrandom::fill(&mut r).is_err() {
            return ceiling; // no jitter rather than no wait
        }
        let frac = (u64::from_le_bytes(r) >> 11) as f64 / (1u64 << 53) as f64;
        ceiling.mul_f64(frac)
    }
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
}

struct Message {
    index: u8,
    topic: String,
    payload: Bytes,
}

#[derive(Default)]
struct Volatile {
    qos: u8,
    topics: [Option<String>; MAX_TOPICS as usize + 1],
    subscribed: [bool; MAX_TOPICS as usize + 1],
}

struct State {
    settings: Settings,
    volatile: Volatile,
    inbox: VecDeque<Message>,
    events: VecDeque<(u8, u32, &'static str)>,
}

struct Core {
    bundle: Bundle,
    config_topic: String,
    state: Mutex<State>,
    status: watch::Sender<Status>,
    backoff: Backoff,
}

impl Core {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn push_event(&self, id: u8, param: u32, mnemonic: &'static str) {
        let mut s = self.lock();
        if s.events.len() >= EVENTS {
            s.events.pop_front();
        }
        s.events.push_back((id, param, mnemonic));
    }

    fn index_of(&self, topic: &str) -> u8 {
        let s = self.lock();
        (1..=MAX_TOPICS)
            .find(|&i| {
                s.volatile.topics[i as usize].as_deref().is_some_and(|f| {
                    f == topic
                        || claimlink_mqtt::TopicName::new(topic)
                            .is_ok_and(|t| claimlink_mqtt::TopicFilter::new(f).is_ok_and(|f| f.matches(&t)))
                })
            })
            .unwrap_or(0)
    }

    fn deliver(&self, topic: String, payload: Bytes) {
        let index = self.index_of(&topic);
        let overrun = {
            let mut s = self.lock();
            if s.inbox.len() >= INBOX {
                true
            } else {
                s.inbox.push_back(Message { index, topic, payload });
                false
            }
        };
        if overrun {
            self.push_event(event::OVERRUN, u32::from(index), "OVERRUN");
        } else {
            self.push_event(event::MSG, u32::from(index), "MSG");
        }
    }

    fn set_status(&self, connected: bool, endpoint: &str) {
        let onboarded = endpoint != self.bundle.staging_endpoint;
        self.status.send_modify(|s| {
            s.connections += u64::from(connected && !s.connected);
            s.connected = connected;
            s.endpoint = endpoint.to_owned();
            s.onboarded = onboarded;
        });
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

/// A connected link: TLS stream and MQTT state.
struct Link {
    stream: TlsStream<TcpStream>,
    client: ClientConnection,
    buf: Vec<u8>,
}

enum End {
    Moved,
    Lost,
    Stopped,
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
        let (root_pem, keep_alive, will, ticket) = {
            let s = core.lock();
            let root = if s.settings.root_ca.is_empty() {
                core.bundle.root_ca_pem.clone()
            } else {
                s.settings.root_ca.clone()
            };
            let will = (!s.settings.lwt_topic.is_empty()).then(|| Will {
                topic: s.settings.lwt_topic.clone(),
                payload: Bytes::from(s.settings.lwt_message.clone()),
                qos: QoS::AtMostOnce,
                retain: false,
                properties: Default::default(),
            });
            (root, s.settings.keep_alive, will, s.settings.claim_ticket.clone())
        };
        let mut roots = rustls::RootCertStore::empty();
        for c in certificates(&root_pem).map_err(|e| fail(4, format!("RootCA: {e}")))? {
            roots.add(c).map_err(|e| fail(4, format!("RootCA: {e}")))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| fail(4, e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(core.bundle.chain.clone(), core.bundle.key.clone_key())
            .map_err(|e| fail(4, format!("the device certificate or key is unusable: {e}")))?;
        let name = ServerName::try_from(host.to_owned()).map_err(|e| fail(3, e.to_string()))?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let stream = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
            .await
            .map_err(|_| fail(4, "TLS handshake timed out".into()))?
            .map_err(|e| fail(4, format!("TLS handshake failed: {e}")))?;
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
        let mut link = Link { stream, client: ClientConnection::new(options, now), buf: vec![0; 16 * 1024] };
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
        let mut filters = vec![core.config_topic.clone()];
        {
            let s = core.lock();
            for i in 1..=MAX_TOPICS as usize {
                if s.volatile.subscribed[i] {
                    if let Some(t) = &s.volatile.topics[i] {
                        filters.push(t.clone());
                    }
                }
            }
        }
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
                        if let Some(Ctl::Stop(done)) = c {
                            let _ = done.send(());
                        }
                        return End::Stopped;
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
                            Err(_) => core.push_event(event::SUBNACK, u32::from(index), "SUBNACK"),
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
                        if p.topic == core.config_topic {
                            moved |= take_config(core, &p.payload);
                        }
                        core.deliver(p.topic, p.payload);
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
                            if reasons.iter().all(|r| !r.is_error()) {
                                core.push_event(event::SUBACK, u32::from(index), "SUBACK");
                            } else {
                                core.push_event(event::SUBNACK, u32::from(index), "SUBNACK");
                            }
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

/// A configuration message: persist a new `Endpoint`. Returns whether the device must move.
fn take_config(core: &Core, payload: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) else { return false };
    let Some(endpoint) = v.get("Endpoint").and_then(|e| e.as_str()) else { return false };
    if split_endpoint(endpoint).is_none() {
        tracing::warn!("ignoring a configuration message with an invalid Endpoint");
        return false;
    }
    // The claim ticket travels with the endpoint (bounded: a ticket is small).
    let ticket = v.get("ClaimTicket").and_then(|t| t.as_str()).filter(|t| t.len() <= 4096).unwrap_or("");
    let mut s = core.lock();
    if s.settings.endpoint == endpoint && s.settings.claim_ticket == ticket {
        return false; // a repeated delivery
    }
    let moving = s.settings.endpoint != endpoint;
    let mut next = s.settings.clone();
    next.endpoint = endpoint.to_owned();
    next.claim_ticket = ticket.to_owned();
    if let Err(e) = next.save(&core.bundle.dir) {
        tracing::error!(error = %e, "cannot persist the new endpoint; staying");
        return false;
    }
    s.settings = next;
    if moving {
        tracing::info!(endpoint, "claimed: moving to a new endpoint");
    }
    moving
}

async fn session(
    core: Arc<Core>,
    mut ctl: mpsc::Receiver<Ctl>,
    mut first: Option<oneshot::Sender<Result<(), ConnectFailure>>>,
) {
    let mut attempt = 0u32;
    let mut report_connect = false;
    loop {
        let endpoint = core.lock().settings.endpoint.clone();
        match Link::open(&core, &endpoint).await {
            Err(failure) => {
                tracing::debug!(hint = failure.hint, detail = %failure.detail, "connection attempt failed");
                if let Some(tx) = first.take() {
                    let _ = tx.send(Err(failure));
                    return;
                }
                attempt += 1;
            }
            Ok(link) => {
                attempt = 0;
                core.set_status(true, &endpoint);
                match first.take() {
                    Some(tx) => {
                        let _ = tx.send(Ok(()));
                    }
                    None if report_connect => core.push_event(event::CONNECT, 0, "CONNECT"),
                    None => {}
                }
                report_connect = true;
                let end = link.run(&core, &mut ctl).await;
                core.set_status(false, &endpoint);
                core.push_event(event::CONLOST, 0, "CONLOST");
                match end {
                    End::Stopped => return,
                    End::Moved => continue,
                    End::Lost => attempt = 1,
                }
            }
        }
        // Wait out the backoff, still answering the host.
        let wait = tokio::time::sleep(core.backoff.delay(attempt));
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
        let core = Arc::new(Core {
            config_topic: format!("{}/expresslink_config", bundle.thing_name),
            bundle,
            state: Mutex::new(State {
                settings,
                volatile: Volatile::default(),
                inbox: VecDeque::new(),
                events: VecDeque::new(),
            }),
            status: watch::Sender::new(status),
            backoff: options.backoff,
        });
        core.push_event(event::STARTUP, 0, "STARTUP");
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

    /// Runs one parsed command.
    pub async fn execute(&mut self, cmd: Command) -> Result<String, AtError> {
        match cmd {
            Command::Attention => Ok(at::ok(None, None)),
            Command::Connect(ConnectMode::Query) => {
                let st = self.core.status.borrow().clone();
                // Connected: where the connection is (a claim just persisted does not count
                // until the device is there); else where it will connect.
                let onboarded = if st.connected {
                    st.onboarded
                } else {
                    self.core.lock().settings.endpoint != self.core.bundle.staging_endpoint
                };
                Ok(at::ok(
                    None,
                    Some(&format!(
                        "{} {} {} {}",
                        u8::from(st.connected),
                        u8::from(onboarded),
                        if st.connected { "CONNECTED" } else { "DISCONNECTED" },
                        if onboarded { "CUSTOMER" } else { "STAGING" }
                    )),
                ))
            }
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
                    core.push_event(event::CONNECT, hint, "CONNECT");
                });
                Ok(at::ok(None, None))
            }
            Command::Disconnect => {
                self.disconnect().await;
                Ok(at::ok(None, Some("0 DISCONNECTED")))
            }
            Command::Send { topic, message } => {
                let (name, qos) = {
                    let s = self.core.lock();
                    (s.volatile.topics[usize::from(topic)].clone(), s.volatile.qos)
                };
                let name = name.ok_or(AtError::ParameterUndefined)?;
                let qos = if qos == 1 { QoS::AtLeastOnce } else { QoS::AtMostOnce };
                self.publish(&name, Bytes::from(message), qos).await?;
                Ok(at::ok(None, None))
            }
            Command::Get(from) => Ok(self.get(from)),
            Command::Subscribe(index) => {
                let filter = self.topic(index)?;
                let s = self
                    .session
                    .as_ref()
                    .filter(|_| self.core.status.borrow().connected)
                    .ok_or(AtError::NoConnection)?;
                self.core.lock().volatile.subscribed[usize::from(index)] = true;
                let _ = s.send(Ctl::Subscribe { index, filter }).await;
                Ok(at::ok(None, None))
            }
            Command::Unsubscribe(index) => {
                let filter = self.topic(index)?;
                self.core.lock().volatile.subscribed[usize::from(index)] = false;
                if let Some(s) = &self.session {
                    let _ = s.send(Ctl::Unsubscribe { filter }).await;
                }
                Ok(at::ok(None, None))
            }
            Command::ConfSet { key, value } => self.conf_set(&key, value),
            Command::ConfGet { key, argument } => self.conf_get(&key, argument.as_deref()),
            Command::Event => {
                let e = self.core.lock().events.pop_front();
                Ok(match e {
                    Some((id, param, m)) => at::ok(None, Some(&format!("{id} {param} {m}"))),
                    None => at::ok(None, None),
                })
            }
            Command::Reset => {
                self.disconnect().await;
                let mut s = self.core.lock();
                s.volatile = Volatile::default();
                s.inbox.clear();
                Ok(at::ok(None, None))
            }
            Command::FactoryReset => {
                self.disconnect().await;
                let factory = Settings::factory(&self.core.bundle);
                factory.save(&self.core.bundle.dir).map_err(|_| AtError::NotAllowed)?;
                let mut s = self.core.lock();
                s.settings = factory;
                s.volatile = Volatile::default();
                s.inbox.clear();
                s.events.clear();
                drop(s);
                self.core.set_status(false, &self.core.bundle.staging_endpoint);
                Ok(at::ok(None, None))
            }
        }
    }

    fn topic(&self, index: u8) -> Result<String, AtError> {
        self.core.lock().volatile.topics[usize::from(index)].clone().ok_or(AtError::ParameterUndefined)
    }

    fn get(&self, from: GetFrom) -> String {
        let mut s = self.core.lock();
        let pos = s.inbox.iter().position(|m| match from {
            GetFrom::Any => true,
            GetFrom::Unassigned => m.index == 0,
            GetFrom::Topic(i) => m.index == i,
        });
        let Some(m) = pos.and_then(|p| s.inbox.remove(p)) else { return at::ok(None, None) };
        match from {
            GetFrom::Topic(i) => at::ok(Some(i), Some(&at::escape(&m.payload))),
            _ => format!("OK {}\r\n{}\r\n", m.topic, at::escape(&m.payload)),
        }
    }

    fn conf_set(&mut self, key: &str, value: Vec<u8>) -> Result<String, AtError> {
        let text = String::from_utf8(value).map_err(|_| AtError::Parameter)?;
        let lower = key.to_ascii_lowercase();
        if let Some(n) = lower.strip_prefix("topic") {
            let i: u8 = n.parse().map_err(|_| AtError::UnknownKey)?;
            if !(1..=MAX_TOPICS).contains(&i) {
                return Err(AtError::OutOfRange);
            }
            if !text.is_empty() && claimlink_mqtt::TopicFilter::new(&text).is_err() {
                return Err(AtError::Parameter);
            }
            self.core.lock().volatile.topics[usize::from(i)] = (!text.is_empty()).then_some(text);
            return Ok(at::ok(None, None));
        }
        let mut s = self.core.lock();
        let mut next = s.settings.clone();
        match lower.as_str() {
            "thingname" | "certificate" => return Err(AtError::KeyReadonly),
            "qos" => {
                s.volatile.qos = match text.as_str() {
                    "0" => 0,
                    "1" => 1,
                    _ => return Err(AtError::OutOfRange),
                };
                return Ok(at::ok(None, None));
            }
            "endpoint" => {
                if split_endpoint(&text).is_none() {
                    return Err(AtError::Parameter);
                }
                next.endpoint = text;
            }
            "customname" => {
                if text.len() > 128 {
                    return Err(AtError::OutOfRange);
                }
                next.custom_name = text;
            }
            "keepalive" => {
                next.keep_alive = match text.parse::<u16>() {
                    Ok(k) if (30..=1200).contains(&k) => k,
                    Ok(_) => return Err(AtError::OutOfRange),
                    Err(_) => return Err(AtError::Parameter),
                };
            }
            "rootca" => {
                certificates(&text).map_err(|_| AtError::InvalidCertificate)?;
                next.root_ca = text;
            }
            "lwtconfig" => {
                if !text.is_empty() && claimlink_mqtt::TopicName::new(&text).is_err() {
                    return Err(AtError::Parameter);
                }
                next.lwt_topic = text;
            }
            "lwtmessage" => next.lwt_message = text,
            _ => return Err(AtError::UnknownKey),
        }
        next.save(&self.core.bundle.dir).map_err(|_| AtError::NotAllowed)?;
        s.settings = next;
        Ok(at::ok(None, None))
    }

    fn conf_get(&self, key: &str, argument: Option<&str>) -> Result<String, AtError> {
        let lower = key.to_ascii_lowercase();
        let s = self.core.lock();
        if let Some(n) = lower.strip_prefix("topic") {
            let i: u8 = n.parse().map_err(|_| AtError::UnknownKey)?;
            if !(1..=MAX_TOPICS).contains(&i) {
                return Err(AtError::OutOfRange);
            }
            let t = s.volatile.topics[usize::from(i)].clone().unwrap_or_default();
            return Ok(at::ok(None, Some(&at::escape(t.as_bytes()))));
        }
        let value = match lower.as_str() {
            "thingname" => self.core.bundle.thing_name.clone(),
            "certificate" => {
                if argument.is_some_and(|a| !a.eq_ignore_ascii_case("pem")) {
                    return Err(AtError::Parameter);
                }
                self.core.bundle.certificate_pem.clone()
            }
            "endpoint" => s.settings.endpoint.clone(),
            "customname" => s.settings.custom_name.clone(),
            "keepalive" => s.settings.keep_alive.to_string(),
            "qos" => s.volatile.qos.to_string(),
            "rootca" => {
                if s.settings.root_ca.is_empty() {
                    self.core.bundle.root_ca_pem.clone()
                } else {
                    s.settings.root_ca.clone()
                }
            }
            "lwtconfig" => s.settings.lwt_topic.clone(),
            "lwtmessage" => s.settings.lwt_message.clone(),
            _ => return Err(AtError::UnknownKey),
        };
        Ok(at::ok(None, Some(&at::escape(value.as_bytes()))))
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
