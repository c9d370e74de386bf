//! The server side of one MQTT connection, sans-IO.
//!
//! Bytes go in with [`ServerConnection::handle_input`]; decisions come out as [`Event`]s that
//! the broker answers ([`ServerConnection::accept`], [`ServerConnection::puback`], ...); bytes to
//! send come out of [`ServerConnection::take_output`]; [`ServerConnection::poll_timeout`] says
//! when to call [`ServerConnection::handle_timeout`]. Time is always a parameter.
//!
//! It enforces, per connection: CONNECT first and only once, within a deadline; the keep-alive
//! (1.5 times the interval, section 3.1.2.10); the receive maximum the server announced for
//! incoming QoS 1 and 2 messages; incoming topic aliases; packet identifier rules of the QoS 1
//! and 2 flows in both directions; and, outgoing, the client's receive maximum and maximum
//! packet size, with a bounded queue behind the window, and topic aliases up to the client's
//! Topic Alias Maximum (the first topics sent get one, for the life of the connection).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::codec::{decode, encode};
use crate::packet::*;
use crate::properties::Properties;
use crate::reason::ReasonCode;
use crate::topic::TopicName;

/// Limits and announcements of the server for one connection.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest packet accepted from the client (announced in an MQTT 5 CONNACK).
    pub max_packet_size: u32,
    /// Incoming QoS 1 and 2 messages the client may have unacknowledged (announced).
    pub receive_maximum: u16,
    /// Incoming topic aliases accepted (announced; 0 disables them).
    pub topic_alias_maximum: u16,
    /// Time allowed between the TCP/TLS connection and CONNECT.
    pub connect_timeout: Duration,
    /// Outgoing messages that may wait behind the client's receive window.
    pub max_queued: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_packet_size: 128 * 1024 + 1024,
            receive_maximum: 100,
            topic_alias_maximum: 10,
            connect_timeout: Duration::from_secs(10),
            max_queued: 1000,
        }
    }
}

/// What the broker must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The client asks to connect: answer with `accept` or `reject`.
    Connect(Box<Connect>),
    /// An application message from the client (topic alias resolved). For QoS 1 answer with
    /// `puback`, for QoS 2 with `pubrec`.
    Publish(Publish),
    /// Answer with `suback`.
    Subscribe(Subscribe),
    /// Answer with `unsuback`.
    Unsubscribe(Unsubscribe),
    /// An outgoing QoS 1 or 2 message was acknowledged by the client: its packet id and topic.
    Delivered(u16, String),
    /// The connection is over; close the transport after sending `take_output`.
    Closed {
        /// Why (Success for a normal DISCONNECT from the client).
        reason: ReasonCode,
        /// The will to publish, if the connection did not end with a normal DISCONNECT.
        will: Option<Will>,
        /// The Session Expiry Interval the client set in its DISCONNECT (MQTT 5, section
        /// 3.14.2.2.2): it replaces the one from CONNECT. `None` keeps that one.
        session_expiry: Option<u32>,
    },
}

/// An outgoing message that cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The connection is not (or no longer) established.
    #[error("connection not established")]
    NotConnected,
    /// The queue behind the client's receive window is full.
    #[error("outgoing queue full")]
    QueueFull,
    /// Larger than the client's maximum packet size (MQTT 5): the message is dropped for it.
    #[error("message larger than the client accepts")]
    TooLarge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitingConnect,
    AwaitingAccept,
    Connected,
    Closed,
}

/// The acknowledgement an outgoing message awaits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// QoS 1 sent, awaiting PUBACK.
    Qos1Sent,
    /// QoS 2 sent, awaiting PUBREC.
    Qos2Sent,
    /// PUBREL sent, awaiting PUBCOMP.
    Qos2Released,
}

/// One connection's protocol state.
#[derive(Debug)]
pub struct ServerConnection {
    config: ServerConfig,
    state: State,
    version: ProtocolVersion,
    input: Vec<u8>,
    output: Vec<u8>,
    events: VecDeque<Event>,
    will: Option<Will>,
    /// The Session Expiry Interval of the CONNECT (MQTT 5; absent means 0).
    connect_session_expiry: u32,
    client_keep_alive: u16,
    keep_alive: Option<Duration>,
    deadline: Option<Instant>,
    // Incoming QoS 1/2 messages not yet fully acknowledged, and QoS 2 ids awaiting PUBREL.
    incoming: HashSet<u16>,
    incoming_qos2: HashSet<u16>,
    aliases_in: HashMap<u16, String>,
    // Outgoing.
    client_receive_maximum: u16,
    client_max_packet: Option<u32>,
    client_alias_maximum: u16,
    aliases_out: HashMap<String, u16>,
    inflight: BTreeMap<u16, (Publish, Stage)>,
    queue: VecDeque<Publish>,
    next_id: u16,
}

impl ServerConnection {
    /// A new connection accepted at `now`; CONNECT must arrive within the connect timeout.
    pub fn new(config: ServerConfig, now: Instant) -> Self {
        let deadline = Some(now + config.connect_timeout);
        Self {
            config,
            state: State::AwaitingConnect,
            version: ProtocolVersion::V5,
            input: Vec::new(),
            output: Vec::new(),
            events: VecDeque::new(),
            will: None,
            connect_session_expiry: 0,
            client_keep_alive: 0,
            keep_alive: None,
            deadline,
            incoming: HashSet::new(),
            incoming_qos2: HashSet::new(),
            aliases_in: HashMap::new(),
            client_receive_maximum: u16::MAX,
            client_max_packet: None,
            client_alias_maximum: 0,
            aliases_out: HashMap::new(),
            inflight: BTreeMap::new(),
            queue: VecDeque::new(),
            next_id: 1,
        }
    }

    /// The protocol version of the connection (meaningful once CONNECT arrived).
    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// Whether the connection is over.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Outgoing QoS 1/2 messages sent and not yet acknowledged.
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// Bytes received from the transport.
    pub fn handle_input(&mut self, now: Instant, bytes: &[u8]) {
        if self.state == State::Closed {
            return;
        }
        if self.input.is_empty() {
            // The usual case: whole packets, decoded straight from the caller's buffer; only an
            // incomplete tail is kept.
            let used = self.decode_from(now, bytes);
            if self.state != State::Closed {
                self.input.extend_from_slice(&bytes[used..]);
            }
            return;
        }
        let mut input = std::mem::take(&mut self.input);
        input.extend_from_slice(bytes);
        let used = self.decode_from(now, &input);
        input.drain(..used.min(input.len()));
        if self.state != State::Closed {
            self.input = input;
        }
    }

    /// Handles every whole packet at the start of `buf`; returns the bytes they used. Packets
    /// after a CONNECT wait, undecoded, until the broker has accepted it: clients may send them
    /// without waiting for CONNACK (section 3.1.4), and a refused client's are never processed.
    fn decode_from(&mut self, now: Instant, buf: &[u8]) -> usize {
        let mut used = 0;
        while matches!(self.state, State::AwaitingConnect | State::Connected) {
            match decode(&buf[used..], self.version, self.config.max_packet_size as usize) {
                Ok(Some((packet, n))) => {
                    used += n;
                    self.touch(now);
                    self.handle_packet(packet);
                }
                Ok(None) => break,
                Err(e) => {
                    if let crate::codec::DecodeError::UnsupportedProtocolVersion(level) = e {
                        // Answer in the format the client can read (section 3.2.2.2).
                        self.version = if level < 5 { ProtocolVersion::V311 } else { ProtocolVersion::V5 };
                    }
                    self.fail(e.reason_code());
                    break;
                }
            }
        }
        used
    }

    fn touch(&mut self, now: Instant) {
        if let Some(k) = self.keep_alive {
            self.deadline = Some(now + k + k / 2);
        }
    }

    fn handle_packet(&mut self, packet: Packet) {
        match (self.state, packet) {
            (State::AwaitingConnect, Packet::Connect(c)) => {
                self.version = c.version;
                self.will = c.will.clone();
                self.connect_session_expiry = c.properties.session_expiry.unwrap_or(0);
                self.client_keep_alive = c.keep_alive;
                self.client_receive_maximum = c.properties.receive_maximum.unwrap_or(u16::MAX);
                self.client_max_packet = c.properties.maximum_packet_size;
                self.client_alias_maximum = if c.version == ProtocolVersion::V5 {
                    c.properties.topic_alias_maximum.unwrap_or(0)
                } else {
                    0
                };
                self.state = State::AwaitingAccept;
                self.events.push_back(Event::Connect(c));
            }
            (State::AwaitingConnect, _) | (_, Packet::Connect(_)) => self.fail(ReasonCode::ProtocolError),
            (State::AwaitingAccept, _) => self.fail(ReasonCode::ProtocolError),
            (State::Connected, p) => self.handle_connected(p),
            (State::Closed, _) => {}
        }
    }

    fn handle_connected(&mut self, packet: Packet) {
        match packet {
            Packet::Publish(p) => self.incoming_publish(p),
            Packet::PubRel(a) => {
                if self.incoming_qos2.remove(&a.packet_id) {
                    self.incoming.remove(&a.packet_id);
                    self.send(&Packet::PubComp(Ack::new(a.packet_id)));
                } else if self.version == ProtocolVersion::V5 {
                    let mut ack = Ack::new(a.packet_id);
                    ack.reason = ReasonCode::PacketIdentifierNotFound;
                    self.send(&Packet::PubComp(ack));
                } else {
                    self.send(&Packet::PubComp(Ack::new(a.packet_id)));
                }
            }
            Packet::PubAck(a) => self.outgoing_ack(a.packet_id, Stage::Qos1Sent, None),
            Packet::PubRec(a) => {
                let next = if a.reason.is_error() { None } else { Some(Stage::Qos2Released) };
                self.outgoing_ack(a.packet_id, Stage::Qos2Sent, next);
                if next.is_some() {
                    self.send(&Packet::PubRel(Ack::new(a.packet_id)));
                }
            }
            Packet::PubComp(a) => self.outgoing_ack(a.packet_id, Stage::Qos2Released, None),
            Packet::Subscribe(s) => self.events.push_back(Event::Subscribe(s)),
            Packet::Unsubscribe(u) => self.events.push_back(Event::Unsubscribe(u)),
            Packet::PingReq => self.send(&Packet::PingResp),
            Packet::Disconnect(d) => {
                let expiry = d.properties.session_expiry.filter(|_| self.version == ProtocolVersion::V5);
                // A session that was to end with the connection cannot be extended at DISCONNECT
                // (section 3.14.2.2.2): a protocol error, and the will is published.
                if expiry.is_some_and(|e| e != 0) && self.connect_session_expiry == 0 {
                    return self.fail(ReasonCode::ProtocolError);
                }
                let will = (d.reason == ReasonCode::DisconnectWithWill).then(|| self.will.take()).flatten();
                self.will = None;
                self.close_with_expiry(d.reason, will, expiry);
            }
            // Packets only a server sends, and AUTH (no enhanced authentication offered).
            _ => self.fail(ReasonCode::ProtocolError),
        }
    }

    fn incoming_publish(&mut self, mut p: Publish) {
        if let Err(code) = self.resolve_alias(&mut p) {
            return self.fail(code);
        }
        if TopicName::new(p.topic.as_str()).is_err() {
            return self.fail(ReasonCode::TopicNameInvalid);
        }
        let Some(id) = p.packet_id else {
            self.events.push_back(Event::Publish(p));
            return;
        };
        if p.qos == QoS::ExactlyOnce && self.incoming_qos2.contains(&id) {
            // A retransmission of a message already received (method B of section 4.3.3): it is
            // not delivered again; PUBREC is repeated.
            self.send(&Packet::PubRec(Ack::new(id)));
            return;
        }
        if !self.incoming.contains(&id) && self.incoming.len() >= usize::from(self.config.receive_maximum) {
            return self.fail(ReasonCode::ReceiveMaximumExceeded);
        }
        self.incoming.insert(id);
        self.events.push_back(Event::Publish(p));
    }

    fn resolve_alias(&mut self, p: &mut Publish) -> Result<(), ReasonCode> {
        let Some(alias) = p.properties.topic_alias.take() else { return Ok(()) };
        if alias == 0 || alias > self.config.topic_alias_maximum {
            return Err(ReasonCode::TopicAliasInvalid);
        }
        if p.topic.is_empty() {
            p.topic = self.aliases_in.get(&alias).cloned().ok_or(ReasonCode::ProtocolError)?;
        } else {
            self.aliases_in.insert(alias, p.topic.clone());
        }
        Ok(())
    }

    fn outgoing_ack(&mut self, id: u16, expected: Stage, next: Option<Stage>) {
        match self.inflight.get_mut(&id) {
            Some((_, stage)) if *stage == expected => match next {
                Some(n) => *stage = n,
                None => {
                    if let Some((p, _)) = self.inflight.remove(&id) {
                        self.events.push_back(Event::Delivered(id, p.topic));
                    }
                    self.release_queue();
                }
            },
            // An acknowledgement for nothing we sent: a protocol error (section 4.3).
            _ => self.fail(ReasonCode::ProtocolError),
        }
    }

    /// Accepts the pending CONNECT. `properties` are added to the CONNACK (MQTT 5); the server's
    /// own limits are announced there too.
    pub fn accept(&mut self, now: Instant, session_present: bool, mut properties: Properties) {
        if self.state != State::AwaitingAccept {
            return;
        }
        if self.version == ProtocolVersion::V5 {
            properties.receive_maximum.get_or_insert(self.config.receive_maximum);
            properties.maximum_packet_size.get_or_insert(self.config.max_packet_size);
            properties.topic_alias_maximum.get_or_insert(self.config.topic_alias_maximum);
        }
        self.send(&Packet::ConnAck(ConnAck { session_present, reason: ReasonCode::Success, properties }));
        self.state = State::Connected;
        self.keep_alive =
            (self.client_keep_alive > 0).then(|| Duration::from_secs(u64::from(self.client_keep_alive)));
        self.deadline = None;
        self.touch(now);
        // Packets the client sent right after CONNECT.
        if !self.input.is_empty() {
            let mut input = std::mem::take(&mut self.input);
            let used = self.decode_from(now, &input);
            input.drain(..used.min(input.len()));
            if self.state != State::Closed {
                self.input = input;
            }
        }
    }

    /// Refuses the pending CONNECT with `reason` (sent as a 3.1.1 return code to 3.1.1 clients).
    pub fn reject(&mut self, reason: ReasonCode) {
        if self.state != State::AwaitingAccept {
            return;
        }
        self.send(&Packet::ConnAck(ConnAck {
            session_present: false,
            reason,
            properties: Properties::default(),
        }));
        self.will = None;
        self.close(reason, None);
    }

    /// Answers an incoming QoS 1 message.
    pub fn puback(&mut self, packet_id: u16, reason: ReasonCode) {
        if self.incoming.remove(&packet_id) {
            self.send(&Packet::PubAck(Ack { packet_id, reason, properties: Properties::default() }));
        }
    }

    /// Answers an incoming QoS 2 message (the PUBREL that follows is answered here).
    pub fn pubrec(&mut self, packet_id: u16, reason: ReasonCode) {
        if !self.incoming.contains(&packet_id) {
            return;
        }
        if reason.is_error() {
            self.incoming.remove(&packet_id);
        } else {
            self.incoming_qos2.insert(packet_id);
        }
        self.send(&Packet::PubRec(Ack { packet_id, reason, properties: Properties::default() }));
    }

    /// Answers a SUBSCRIBE.
    pub fn suback(&mut self, packet_id: u16, reasons: Vec<ReasonCode>) {
        self.send(&Packet::SubAck(SubAck { packet_id, properties: Properties::default(), reasons }));
    }

    /// Answers an UNSUBSCRIBE.
    pub fn unsuback(&mut self, packet_id: u16, reasons: Vec<ReasonCode>) {
        self.send(&Packet::UnsubAck(UnsubAck { packet_id, properties: Properties::default(), reasons }));
    }

    /// Sends an application message. QoS 1 and 2 messages get a packet identifier and wait in a
    /// bounded queue while the client's receive window is full.
    ///
    /// A message larger than the client's Maximum Packet Size is dropped for it, as section
    /// 3.1.2.25 requires: at once for QoS 0 ([`SendError::TooLarge`]), and for QoS 1 and 2 when
    /// its turn in the window comes.
    pub fn publish(&mut self, mut message: Publish) -> Result<(), SendError> {
        if self.state != State::Connected {
            return Err(SendError::NotConnected);
        }
        if self.version == ProtocolVersion::V311 {
            message.properties = Properties::default();
        }
        message.packet_id = None;
        if message.qos == QoS::AtMostOnce {
            return if self.transmit(message) { Ok(()) } else { Err(SendError::TooLarge) };
        }
        if self.queue.len() >= self.config.max_queued {
            return Err(SendError::QueueFull);
        }
        self.queue.push_back(message);
        self.release_queue();
        Ok(())
    }

    fn release_queue(&mut self) {
        while self.inflight.len() < usize::from(self.client_receive_maximum) {
            let Some(mut m) = self.queue.pop_front() else { break };
            let id = self.allocate_id();
            m.packet_id = Some(id);
            if !self.transmit(m.clone()) {
                continue;
            }
            let stage = if m.qos == QoS::AtLeastOnce { Stage::Qos1Sent } else { Stage::Qos2Sent };
            self.inflight.insert(id, (m, stage));
        }
    }

    /// Encodes one outgoing PUBLISH, replacing its topic by an alias where one is assigned (or
    /// can still be). Returns false, sending nothing, when the packet is larger than the client
    /// accepts.
    fn transmit(&mut self, mut m: Publish) -> bool {
        let mut new_alias = None;
        if self.client_alias_maximum > 0 {
            if let Some(&alias) = self.aliases_out.get(&m.topic) {
                m.properties.topic_alias = Some(alias);
                m.topic.clear();
            } else if self.aliases_out.len() < usize::from(self.client_alias_maximum) {
                let alias = self.aliases_out.len() as u16 + 1;
                m.properties.topic_alias = Some(alias);
                new_alias = Some((m.topic.clone(), alias));
            }
        }
        let start = self.output.len();
        if encode(&Packet::Publish(m), self.version, &mut self.output).is_err()
            || self.client_max_packet.is_some_and(|max| self.output.len() - start > max as usize)
        {
            self.output.truncate(start);
            return false;
        }
        if let Some((topic, alias)) = new_alias {
            self.aliases_out.insert(topic, alias);
        }
        true
    }

    fn allocate_id(&mut self) -> u16 {
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.checked_add(1).unwrap_or(1);
            if !self.inflight.contains_key(&id) {
                return id;
            }
        }
    }

    /// Closes the connection from the server side (for example: session taken over, server
    /// shutting down). MQTT 5 clients get a DISCONNECT with the reason; the will is published.
    pub fn disconnect(&mut self, reason: ReasonCode) {
        self.fail(reason);
    }

    /// Outgoing QoS 1/2 messages the client has not received for sure (sent without PUBACK or
    /// PUBREC, or still queued), oldest first, for the session to keep after the connection.
    /// Messages whose PUBREC arrived are not included: the client has them.
    pub fn take_unacknowledged(&mut self) -> Vec<Publish> {
        let mut out: Vec<Publish> = std::mem::take(&mut self.inflight)
            .into_values()
            .filter(|(_, stage)| *stage != Stage::Qos2Released)
            .map(|(mut m, _)| {
                m.packet_id = None;
                m.dup = false;
                m
            })
            .collect();
        out.extend(self.queue.drain(..));
        out
    }

    /// The transport ended without a DISCONNECT (reset, EOF, TLS error): the will is published.
    pub fn handle_transport_closed(&mut self) {
        if self.state != State::Closed {
            let will = self.will.take();
            self.close(ReasonCode::UnspecifiedError, will);
        }
    }

    /// The earliest time `handle_timeout` must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Closed { None } else { self.deadline }
    }

    /// Advances timers to `now`: a missed CONNECT or keep-alive closes the connection.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.deadline.is_some_and(|d| now >= d) {
            self.fail(ReasonCode::KeepAliveTimeout);
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// All bytes to send so far.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }

    fn send(&mut self, packet: &Packet) {
        // Packets built here always encode; a failure would be a bug, and closing is the answer.
        if encode(packet, self.version, &mut self.output).is_err() {
            self.fail(ReasonCode::ImplementationSpecificError);
        }
    }

    fn fail(&mut self, reason: ReasonCode) {
        if self.state == State::Closed {
            return;
        }
        // Before CONNECT is accepted, only a version mismatch or a refused CONNECT gets a CONNACK
        // (section 3.1.4); afterwards MQTT 5 clients get a DISCONNECT with the reason.
        let connack_due = self.state == State::AwaitingAccept
            || (self.state == State::AwaitingConnect && reason == ReasonCode::UnsupportedProtocolVersion);
        if connack_due && reason != ReasonCode::KeepAliveTimeout {
            let connack = ConnAck { session_present: false, reason, properties: Properties::default() };
            let _ = encode(&Packet::ConnAck(connack), self.version, &mut self.output);
        } else if self.state == State::Connected && self.version == ProtocolVersion::V5 {
            let d = Disconnect { reason, properties: Properties::default() };
            let _ = encode(&Packet::Disconnect(d), self.version, &mut self.output);
        }
        let will = self.will.take();
        self.close(reason, will);
    }

    fn close(&mut self, reason: ReasonCode, will: Option<Will>) {
        self.close_with_expiry(reason, will, None);
    }

    fn close_with_expiry(&mut self, reason: ReasonCode, will: Option<Will>, session_expiry: Option<u32>) {
        self.state = State::Closed;
        self.deadline = None;
        self.events.push_back(Event::Closed { reason, will, session_expiry });
    }
}
