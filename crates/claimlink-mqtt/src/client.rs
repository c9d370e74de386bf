//! The client side of one MQTT connection, sans-IO: what the device agent and the fleet
//! simulator speak.
//!
//! [`ClientConnection::new`] queues the CONNECT; bytes from the server go in with
//! [`ClientConnection::handle_input`]; what happened comes out as [`ClientEvent`]s; bytes to
//! send come out of [`ClientConnection::take_output`]; [`ClientConnection::poll_timeout`] says
//! when to call [`ClientConnection::handle_timeout`] (CONNACK deadline, keep-alive PINGREQ and
//! its answer). Time is always a parameter.
//!
//! It acknowledges incoming QoS 1 and 2 messages itself (a QoS 2 message is handed out once,
//! when its PUBLISH first arrives), keeps outgoing QoS 1 and 2 messages within the server's
//! Receive Maximum with a bounded queue behind it, refuses what the server said it does not
//! accept (Maximum QoS, Retain Available, Maximum Packet Size), and resolves topic aliases the
//! server sends when the client allowed them.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::codec::{decode, encode};
use crate::packet::*;
use crate::properties::Properties;
use crate::reason::ReasonCode;
use crate::topic::{TopicFilter, TopicName};

/// How to connect.
#[derive(Clone)]
pub struct ClientOptions {
    /// Protocol version.
    pub version: ProtocolVersion,
    /// Client identifier (empty: let the server assign one, MQTT 5).
    pub client_id: String,
    /// Start a new session (MQTT 3.1.1: clean session).
    pub clean_start: bool,
    /// Keep-alive in seconds (0: none).
    pub keep_alive: u16,
    /// Session Expiry Interval in seconds (MQTT 5).
    pub session_expiry: u32,
    /// User name.
    pub username: Option<String>,
    /// Password (never printed by `Debug`).
    pub password: Option<Bytes>,
    /// Will message.
    pub will: Option<Will>,
    /// Incoming QoS 1/2 messages the server may have in flight to us (announced, MQTT 5).
    pub receive_maximum: u16,
    /// Largest packet we accept (announced, MQTT 5).
    pub max_packet_size: u32,
    /// Topic aliases the server may use towards us (announced, MQTT 5; 0: none).
    pub topic_alias_maximum: u16,
    /// Time allowed between sending CONNECT and receiving CONNACK.
    pub connect_timeout: Duration,
    /// Outgoing QoS 1/2 messages that may wait behind the server's receive window.
    pub max_queued: usize,
}

impl ClientOptions {
    /// MQTT 5 defaults for `client_id`: clean start, 60 s keep-alive, no session expiry.
    pub fn new(client_id: impl Into<String>) -> Self {
        Self {
            version: ProtocolVersion::V5,
            client_id: client_id.into(),
            clean_start: true,
            keep_alive: 60,
            session_expiry: 0,
            username: None,
            password: None,
            will: None,
            receive_maximum: 100,
            max_packet_size: 256 * 1024,
            topic_alias_maximum: 0,
            connect_timeout: Duration::from_secs(10),
            max_queued: 1000,
        }
    }
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("version", &self.version)
            .field("client_id", &self.client_id)
            .field("clean_start", &self.clean_start)
            .field("keep_alive", &self.keep_alive)
            .field("session_expiry", &self.session_expiry)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("will", &self.will.as_ref().map(|w| &w.topic))
            .finish_non_exhaustive()
    }
}

/// What happened on the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The server accepted the connection.
    Connected {
        /// Whether the server kept a session for this client id.
        session_present: bool,
        /// CONNACK properties (assigned client id, server limits, ...).
        properties: Properties,
    },
    /// The server refused the connection (the connection is over).
    Refused(ReasonCode),
    /// An application message arrived (already acknowledged as its QoS requires).
    Message(Publish),
    /// An outgoing QoS 1 or 2 message finished: PUBACK, or PUBREC with an error, or PUBCOMP.
    Published {
        /// Its packet identifier.
        packet_id: u16,
        /// The server's answer (MQTT 5; Success for 3.1.1).
        reason: ReasonCode,
    },
    /// SUBACK.
    Subscribed {
        /// The SUBSCRIBE's packet identifier.
        packet_id: u16,
        /// Granted QoS or failure, one per filter.
        reasons: Vec<ReasonCode>,
    },
    /// UNSUBACK.
    Unsubscribed {
        /// The UNSUBSCRIBE's packet identifier.
        packet_id: u16,
    },
    /// The connection is over: the server's DISCONNECT reason, a protocol error found here,
    /// a keep-alive timeout, or the transport closing.
    Disconnected(ReasonCode),
}

/// A request the connection cannot carry out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Not connected (yet, or any more).
    #[error("not connected")]
    NotConnected,
    /// The topic name or filter is not valid.
    #[error("invalid topic: {0}")]
    Topic(#[from] crate::topic::TopicError),
    /// The server does not accept this QoS (CONNACK Maximum QoS).
    #[error("the server accepts QoS up to {0:?}")]
    QosNotSupported(QoS),
    /// The server does not accept retained messages.
    #[error("the server does not accept retained messages")]
    RetainNotSupported,
    /// Larger than the server's Maximum Packet Size.
    #[error("packet larger than the server accepts")]
    TooLarge,
    /// The queue behind the server's receive window is full.
    #[error("outgoing queue full")]
    QueueFull,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    Connected,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// The answer an outgoing QoS 1 or 2 message waits for.
enum Stage {
    Puback,
    Pubrec,
    Pubcomp,
}

/// One client connection's protocol state.
pub struct ClientConnection {
    options: ClientOptions,
    state: State,
    input: Vec<u8>,
    output: Vec<u8>,
    events: VecDeque<ClientEvent>,
    /// CONNACK deadline while connecting; afterwards the PINGRESP deadline, if a ping is out.
    deadline: Option<Instant>,
    keep_alive: Option<Duration>,
    last_sent: Instant,
    // Limits from CONNACK.
    server_receive_maximum: u16,
    server_max_packet: Option<u32>,
    server_max_qos: QoS,
    server_retain: bool,
    // Outgoing.
    inflight: BTreeMap<u16, (Publish, Stage)>,
    queue: VecDeque<Publish>,
    pending_acks: HashSet<u16>,
    next_id: u16,
    // Incoming.
    incoming_qos2: HashSet<u16>,
    aliases_in: HashMap<u16, String>,
}

impl fmt::Debug for ClientConnection {
    // The output buffer holds the CONNECT (and its password) until taken: never shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConnection")
            .field("client_id", &self.options.client_id)
            .field("state", &self.state)
            .field("inflight", &self.inflight.len())
            .field("queued", &self.queue.len())
            .finish_non_exhaustive()
    }
}

impl ClientConnection {
    /// A new connection at `now`: the CONNECT is ready in `take_output`.
    pub fn new(options: ClientOptions, now: Instant) -> Self {
        let mut properties = Properties::default();
        if options.version == ProtocolVersion::V5 {
            properties.session_expiry = (options.session_expiry > 0).then_some(options.session_expiry);
            properties.receive_maximum =
                (options.receive_maximum != u16::MAX).then_some(options.receive_maximum);
            properties.maximum_packet_size = Some(options.max_packet_size);
            properties.topic_alias_maximum =
                (options.topic_alias_maximum > 0).then_some(options.topic_alias_maximum);
        }
        let connect = Connect {
            version: options.version,
            clean_start: options.clean_start,
            keep_alive: options.keep_alive,
            client_id: options.client_id.clone(),
            will: options.will.clone(),
            username: options.username.clone(),
            password: options.password.clone(),
            properties,
        };
        let mut c = Self {
            deadline: Some(now + options.connect_timeout),
            options,
            state: State::Connecting,
            input: Vec::new(),
            output: Vec::new(),
            events: VecDeque::new(),
            keep_alive: None,
            last_sent: now,
            server_receive_maximum: u16::MAX,
            server_max_packet: None,
            server_max_qos: QoS::ExactlyOnce,
            server_retain: true,
            inflight: BTreeMap::new(),
            queue: VecDeque::new(),
            pending_acks: HashSet::new(),
            next_id: 1,
            incoming_qos2: HashSet::new(),
            aliases_in: HashMap::new(),
        };
        c.send(now, &Packet::Connect(Box::new(connect)));
        c
    }

    /// Whether the server accepted the connection and it is still up.
    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    /// Whether the connection is over.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Outgoing QoS 1/2 messages sent and not yet finished.
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// Bytes received from the server.
    pub fn handle_input(&mut self, now: Instant, bytes: &[u8]) {
        if self.state == State::Closed {
            return;
        }
        self.input.extend_from_slice(bytes);
        let mut used = 0;
        let max = self.options.max_packet_size as usize;
        while self.state != State::Closed {
            match decode(&self.input[used..], self.options.version, max) {
                Ok(Some((packet, n))) => {
                    used += n;
                    self.handle_packet(now, packet);
                }
                Ok(None) => break,
                Err(e) => {
                    self.fail(now, e.reason_code());
                    break;
                }
            }
        }
        self.input.drain(..used.min(self.input.len()));
    }

    fn handle_packet(&mut self, now: Instant, packet: Packet) {
        match (self.state, packet) {
            (State::Connecting, Packet::ConnAck(ack)) => self.connack(now, ack),
            (State::Connecting, _) => self.fail(now, ReasonCode::ProtocolError),
            (State::Connected, Packet::Publish(p)) => self.incoming_publish(now, p),
            (State::Connected, Packet::PubAck(a)) => self.finish(now, a.packet_id, Stage::Puback, a.reason),
            (State::Connected, Packet::PubRec(a)) => {
                if a.reason.is_error() {
                    self.finish(now, a.packet_id, Stage::Pubrec, a.reason);
                } else if let Some((_, stage @ Stage::Pubrec)) = self.inflight.get_mut(&a.packet_id) {
                    *stage = Stage::Pubcomp;
                    self.send(now, &Packet::PubRel(Ack::new(a.packet_id)));
                } else {
                    self.fail(now, ReasonCode::ProtocolError);
                }
            }
            (State::Connected, Packet::PubComp(a)) => {
                self.finish(now, a.packet_id, Stage::Pubcomp, a.reason);
            }
            (State::Connected, Packet::PubRel(a)) => {
                self.incoming_qos2.remove(&a.packet_id);
                self.send(now, &Packet::PubComp(Ack::new(a.packet_id)));
            }
            (State::Connected, Packet::SubAck(s)) if self.pending_acks.remove(&s.packet_id) => {
                self.events.push_back(ClientEvent::Subscribed { packet_id: s.packet_id, reasons: s.reasons });
            }
            (State::Connected, Packet::UnsubAck(u)) if self.pending_acks.remove(&u.packet_id) => {
                self.events.push_back(ClientEvent::Unsubscribed { packet_id: u.packet_id });
            }
            (State::Connected, Packet::PingResp) => self.deadline = None,
            (State::Connected, Packet::Disconnect(d)) => self.close(d.reason),
            (State::Closed, _) => {}
            _ => self.fail(now, ReasonCode::ProtocolError),
        }
    }

    fn connack(&mut self, now: Instant, ack: ConnAck) {
        if ack.reason != ReasonCode::Success {
            self.state = State::Closed;
            self.deadline = None;
            self.events.push_back(ClientEvent::Refused(ack.reason));
            return;
        }
        let p = &ack.properties;
        self.server_receive_maximum = p.receive_maximum.unwrap_or(u16::MAX);
        self.server_max_packet = p.maximum_packet_size;
        self.server_max_qos = match p.maximum_qos {
            Some(0) => QoS::AtMostOnce,
            Some(1) => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        };
        self.server_retain = p.retain_available.unwrap_or(true);
        let keep_alive = p.server_keep_alive.unwrap_or(self.options.keep_alive);
        self.keep_alive = (keep_alive > 0).then(|| Duration::from_secs(u64::from(keep_alive)));
        self.state = State::Connected;
        self.deadline = None;
        self.events.push_back(ClientEvent::Connected {
            session_present: ack.session_present,
            properties: ack.properties,
        });
        self.release_queue(now);
    }

    fn incoming_publish(&mut self, now: Instant, mut p: Publish) {
        if let Some(alias) = p.properties.topic_alias.take() {
            if alias == 0 || alias > self.options.topic_alias_maximum {
                return self.fail(now, ReasonCode::TopicAliasInvalid);
            }
            if p.topic.is_empty() {
                match self.aliases_in.get(&alias) {
                    Some(t) => p.topic.clone_from(t),
                    None => return self.fail(now, ReasonCode::ProtocolError),
                }
            } else {
                self.aliases_in.insert(alias, p.topic.clone());
            }
        }
        if TopicName::new(p.topic.as_str()).is_err() {
            return self.fail(now, ReasonCode::TopicNameInvalid);
        }
        match (p.qos, p.packet_id) {
            (QoS::AtLeastOnce, Some(id)) => {
                self.send(now, &Packet::PubAck(Ack::new(id)));
                self.events.push_back(ClientEvent::Message(p));
            }
            (QoS::ExactlyOnce, Some(id)) => {
                let first = self.incoming_qos2.insert(id);
                self.send(now, &Packet::PubRec(Ack::new(id)));
                if first {
                    self.events.push_back(ClientEvent::Message(p));
                }
            }
            _ => self.events.push_back(ClientEvent::Message(p)),
        }
    }

    fn finish(&mut self, now: Instant, id: u16, expected: Stage, reason: ReasonCode) {
        match self.inflight.get(&id) {
            Some((_, stage)) if *stage == expected => {
                self.inflight.remove(&id);
                self.events.push_back(ClientEvent::Published { packet_id: id, reason });
                self.release_queue(now);
            }
            _ => self.fail(now, ReasonCode::ProtocolError),
        }
    }

    /// Publishes a message. Returns its packet identifier for QoS 1 and 2 (the
    /// [`ClientEvent::Published`] that finishes it carries the same), `None` for QoS 0.
    /// Messages may be queued while connecting or while the server's window is full.
    pub fn publish(
        &mut self,
        now: Instant,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
    ) -> Result<Option<u16>, ClientError> {
        self.publish_with(now, topic, payload, qos, retain, Properties::default())
    }

    /// [`ClientConnection::publish`] with MQTT 5 properties (response topic, correlation data,
    /// message expiry, user properties, ...).
    pub fn publish_with(
        &mut self,
        now: Instant,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
        properties: Properties,
    ) -> Result<Option<u16>, ClientError> {
        if self.state == State::Closed {
            return Err(ClientError::NotConnected);
        }
        TopicName::new(topic)?;
        if qos > self.server_max_qos {
            return Err(ClientError::QosNotSupported(self.server_max_qos));
        }
        if retain && !self.server_retain {
            return Err(ClientError::RetainNotSupported);
        }
        let properties =
            if self.options.version == ProtocolVersion::V5 { properties } else { Properties::default() };
        let mut message = Publish {
            dup: false,
            qos,
            retain,
            topic: topic.to_owned(),
            packet_id: None,
            properties,
            payload: payload.into(),
        };
        if qos == QoS::AtMostOnce {
            if self.state != State::Connected {
                return Err(ClientError::NotConnected);
            }
            return self.transmit(now, &message).map(|()| None);
        }
        if self.queue.len() >= self.options.max_queued {
            return Err(ClientError::QueueFull);
        }
        let id = self.allocate_id();
        message.packet_id = Some(id);
        self.queue.push_back(message);
        self.release_queue(now);
        Ok(Some(id))
    }

    fn release_queue(&mut self, now: Instant) {
        if self.state != State::Connected {
            return;
        }
        while self.inflight.len() < usize::from(self.server_receive_maximum) {
            let Some(m) = self.queue.pop_front() else { break };
            let id = m.packet_id.unwrap_or_default();
            if self.transmit(now, &m).is_err() {
                // Too large for this server: it cannot ever be sent.
                self.events
                    .push_back(ClientEvent::Published { packet_id: id, reason: ReasonCode::PacketTooLarge });
                continue;
            }
            let stage = if m.qos == QoS::AtLeastOnce { Stage::Puback } else { Stage::Pubrec };
            self.inflight.insert(id, (m, stage));
        }
    }

    fn transmit(&mut self, now: Instant, m: &Publish) -> Result<(), ClientError> {
        let start = self.output.len();
        let packet = Packet::Publish(m.clone());
        if encode(&packet, self.options.version, &mut self.output).is_err()
            || self.server_max_packet.is_some_and(|max| self.output.len() - start > max as usize)
        {
            self.output.truncate(start);
            return Err(ClientError::TooLarge);
        }
        self.last_sent = now;
        Ok(())
    }

    /// Subscribes to `filters`. Returns the packet identifier its
    /// [`ClientEvent::Subscribed`] will carry.
    pub fn subscribe(
        &mut self,
        now: Instant,
        filters: &[(&str, SubscriptionOptions)],
    ) -> Result<u16, ClientError> {
        if self.state != State::Connected {
            return Err(ClientError::NotConnected);
        }
        let filters = filters
            .iter()
            .map(|(f, o)| Ok((TopicFilter::new(*f)?, *o)))
            .collect::<Result<Vec<_>, ClientError>>()?;
        let packet_id = self.allocate_id();
        self.pending_acks.insert(packet_id);
        self.send(
            now,
            &Packet::Subscribe(Subscribe { packet_id, properties: Properties::default(), filters }),
        );
        Ok(packet_id)
    }

    /// Unsubscribes from `filters`.
    pub fn unsubscribe(&mut self, now: Instant, filters: &[&str]) -> Result<u16, ClientError> {
        if self.state != State::Connected {
            return Err(ClientError::NotConnected);
        }
        let filters = filters.iter().map(|f| TopicFilter::new(*f)).collect::<Result<Vec<_>, _>>()?;
        let packet_id = self.allocate_id();
        self.pending_acks.insert(packet_id);
        self.send(
            now,
            &Packet::Unsubscribe(Unsubscribe { packet_id, properties: Properties::default(), filters }),
        );
        Ok(packet_id)
    }

    /// Ends the connection normally (the server discards the will).
    pub fn disconnect(&mut self, now: Instant) {
        if self.state == State::Connected {
            let d = Disconnect { reason: ReasonCode::Success, properties: Properties::default() };
            self.send(now, &Packet::Disconnect(d));
        }
        self.close(ReasonCode::Success);
    }

    /// The transport closed.
    pub fn handle_transport_closed(&mut self) {
        self.close(ReasonCode::UnspecifiedError);
    }

    /// Outgoing QoS 1/2 messages not finished, oldest first, to publish again (with the same
    /// content) on the next connection of a persistent session.
    pub fn take_unacknowledged(&mut self) -> Vec<Publish> {
        let mut out: Vec<Publish> =
            std::mem::take(&mut self.inflight).into_values().map(|(m, _)| m).collect();
        out.extend(self.queue.drain(..));
        out
    }

    /// When `handle_timeout` must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Closed => None,
            State::Connecting => self.deadline,
            State::Connected => {
                let ping = self.keep_alive.map(|k| self.last_sent + k);
                match (self.deadline, ping) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
        }
    }

    /// Advances timers: no CONNACK in time or no PINGRESP within the keep-alive ends the
    /// connection; an idle connection sends PINGREQ.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.deadline.is_some_and(|d| now >= d) {
            return self.fail(now, ReasonCode::KeepAliveTimeout);
        }
        if self.state == State::Connected && self.keep_alive.is_some_and(|k| now >= self.last_sent + k) {
            self.send(now, &Packet::PingReq);
            if self.deadline.is_none() {
                self.deadline = self.keep_alive.map(|k| now + k);
            }
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// All bytes to send so far.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }

    fn allocate_id(&mut self) -> u16 {
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.checked_add(1).unwrap_or(1);
            let taken = self.inflight.contains_key(&id)
                || self.pending_acks.contains(&id)
                || self.queue.iter().any(|m| m.packet_id == Some(id));
            if !taken {
                return id;
            }
        }
    }

    fn send(&mut self, now: Instant, packet: &Packet) {
        if encode(packet, self.options.version, &mut self.output).is_ok() {
            self.last_sent = now;
        } else {
            self.close(ReasonCode::ImplementationSpecificError);
        }
    }

    /// A protocol error found here: MQTT 5 servers are told why.
    fn fail(&mut self, now: Instant, reason: ReasonCode) {
        if self.state == State::Connected && self.options.version == ProtocolVersion::V5 {
            let d = Disconnect { reason, properties: Properties::default() };
            self.send(now, &Packet::Disconnect(d));
        }
        self.close(reason);
    }

    fn close(&mut self, reason: ReasonCode) {
        if self.state == State::Closed {
            return;
        }
        self.state = State::Closed;
        self.deadline = None;
        self.events.push_back(ClientEvent::Disconnected(reason));
    }
}
