//! The agent's decisions, without I/O: which endpoint to connect to and when to retry, what a
//! configuration message does (persist, then move, or nothing), what each AT command changes
//! and answers, which events the host sees. Like `claimlink-mqtt`'s connection machines it is
//! driven by calls - the host's commands and what the transport reports - and says what to do
//! (persist these settings, connect there, wait this long); the tokio driver ([`crate::agent`])
//! does the I/O. Time enters only as the jitter fraction of a backoff.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use claimlink_mqtt::QoS;

use crate::at::{self, AtError, GetFrom};
use crate::bundle::{Settings, certificates, split_endpoint};

/// Topic indexes `Topic1..Topic16`.
pub const MAX_TOPICS: u8 = 16;
/// Messages kept for the host; more queue an OVERRUN event and are dropped.
pub const INBOX: usize = 64;
/// Events kept (the oldest is dropped beyond).
pub const EVENTS: usize = 64;
/// Longest claim ticket kept from a delivery.
const MAX_TICKET: usize = 4096;

/// Event ids (REFERENCE.md section 2).
pub mod event {
    /// A message arrived (parameter: its topic index).
    pub const MSG: u8 = 1;
    /// The agent started.
    pub const STARTUP: u8 = 2;
    /// The connection was lost.
    pub const CONLOST: u8 = 3;
    /// The inbox was full; a message was dropped.
    pub const OVERRUN: u8 = 4;
    /// A connection was made (parameter: 0, or a failure hint for a non-blocking connect).
    pub const CONNECT: u8 = 6;
    /// A subscription was acknowledged.
    pub const SUBACK: u8 = 8;
    /// A subscription was refused.
    pub const SUBNACK: u8 = 9;
}

/// Backoff between connection attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// The ceiling before attempt `n` (1-based): min(cap, base * 2^(n-1)).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        self.base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16)).min(self.cap)
    }

    /// The wait before attempt `n` with jitter fraction `frac` in [0, 1): full jitter.
    pub fn delay_with(&self, attempt: u32, frac: f64) -> Duration {
        self.ceiling(attempt).mul_f64(frac.clamp(0.0, 1.0))
    }

    /// The wait before attempt `n`, uniform in [0, ceiling] from the system's randomness.
    pub fn delay(&self, attempt: u32) -> Duration {
        let mut r = [0u8; 8];
        if getrandom::fill(&mut r).is_err() {
            return self.ceiling(attempt); // no jitter rather than no wait
        }
        self.delay_with(attempt, (u64::from_le_bytes(r) >> 11) as f64 / (1u64 << 53) as f64)
    }
}

/// What the agent is, from its bundle: fixed for its life.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The ThingName (client id).
    pub thing_name: String,
    /// The staging endpoint of the factory settings.
    pub staging_endpoint: String,
    /// The birth certificate, PEM (`AT+CONF? Certificate`).
    pub certificate_pem: String,
    /// The bundle's root CA, PEM (`AT+CONF? RootCA` without an override).
    pub root_ca_pem: String,
    /// The bundle's transport, `TLS` or `TLCP` (`AT+CONF? Transport` without an override).
    pub transport: String,
}

/// A message kept for the host.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Message {
    index: u8,
    topic: String,
    payload: Bytes,
}

/// Settings that live until a reset: topics, QoS, which topics the host subscribed.
#[derive(Debug, Default, Clone)]
struct Volatile {
    qos: u8,
    topics: [Option<String>; MAX_TOPICS as usize + 1],
    subscribed: [bool; MAX_TOPICS as usize + 1],
}

/// What a configuration message asks of the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigEffect {
    /// Nothing (not a configuration, an invalid endpoint, a repeated delivery).
    Ignore,
    /// Persist `settings`, then [`Machine::commit`] them; if `moving`, acknowledge the message
    /// and reconnect to the new endpoint. If persisting fails, stay.
    Persist {
        /// The settings to write.
        settings: Settings,
        /// The endpoint changed: the device moves.
        moving: bool,
    },
}

/// What an `AT+CONF` asks of the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfChange {
    /// Done (a volatile setting).
    Done,
    /// Persist these settings, then [`Machine::commit`] them (`ERR` if writing fails).
    Persist(Settings),
}

/// The agent's state and rules.
#[derive(Debug)]
pub struct Machine {
    id: Identity,
    config_topic: String,
    settings: Settings,
    volatile: Volatile,
    inbox: VecDeque<Message>,
    events: VecDeque<(u8, u32, &'static str)>,
    backoff: Backoff,
    /// Failed attempts since the last connection.
    attempt: u32,
    /// A connection was made before: the next one the session makes is reported.
    reconnecting: bool,
    /// The endpoint of the connection up now.
    connected: Option<String>,
    connections: u64,
}

impl Machine {
    /// An agent with `settings` (from disk or the factory); queues STARTUP.
    pub fn new(id: Identity, settings: Settings, backoff: Backoff) -> Self {
        let config_topic = format!("{}/expresslink_config", id.thing_name);
        let mut m = Self {
            id,
            config_topic,
            settings,
            volatile: Volatile::default(),
            inbox: VecDeque::new(),
            events: VecDeque::new(),
            backoff,
            attempt: 0,
            reconnecting: false,
            connected: None,
            connections: 0,
        };
        m.push_event(event::STARTUP, 0, "STARTUP");
        m
    }

    /// The persisted settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The configuration topic (subscribed in both states).
    pub fn config_topic(&self) -> &str {
        &self.config_topic
    }

    /// Whether `endpoint` is the OEM's rather than staging's.
    pub fn is_customer(&self, endpoint: &str) -> bool {
        endpoint != self.id.staging_endpoint
    }

    /// The endpoint of the connection up now.
    pub fn connected_to(&self) -> Option<&str> {
        self.connected.as_deref()
    }

    /// Connections made so far.
    pub fn connections(&self) -> u64 {
        self.connections
    }

    fn push_event(&mut self, id: u8, param: u32, mnemonic: &'static str) {
        if self.events.len() >= EVENTS {
            self.events.pop_front();
        }
        self.events.push_back((id, param, mnemonic));
    }

    /// A non-blocking `AT+CONNECT!` ended its first attempt with `hint` (0: connected).
    pub fn connect_reported(&mut self, hint: u32) {
        self.push_event(event::CONNECT, hint, "CONNECT");
    }

    // ---- the session ------------------------------------------------------------------

    /// The filters to subscribe on a new connection: the configuration topic, then what the
    /// host subscribed to.
    pub fn subscriptions(&self) -> Vec<String> {
        let mut out = vec![self.config_topic.clone()];
        for i in 1..=MAX_TOPICS as usize {
            if self.volatile.subscribed[i] {
                out.extend(self.volatile.topics[i].clone());
            }
        }
        out
    }

    /// A connection to `endpoint` is up. `first` is the attempt a host command waits for
    /// (answered there); a reconnection the session made on its own queues `CONNECT 0`.
    pub fn connection_up(&mut self, endpoint: &str, first: bool) {
        self.attempt = 0;
        self.connections += 1;
        self.connected = Some(endpoint.to_owned());
        if !first && self.reconnecting {
            self.push_event(event::CONNECT, 0, "CONNECT");
        }
        self.reconnecting = true;
    }

    /// A connection attempt failed; returns the wait before the next (full jitter `frac`).
    pub fn attempt_failed(&mut self, frac: f64) -> Duration {
        self.attempt += 1;
        self.backoff.delay_with(self.attempt, frac)
    }

    /// The connection ended: lost (the next attempt waits a first backoff) or moved to a new
    /// endpoint (connect there at once). Queues `CONLOST` either way. Returns the wait.
    pub fn connection_down(&mut self, moved: bool, frac: f64) -> Duration {
        self.connected = None;
        self.push_event(event::CONLOST, 0, "CONLOST");
        if moved {
            self.attempt = 0;
            Duration::ZERO
        } else {
            self.attempt = 1;
            self.backoff.delay_with(1, frac)
        }
    }

    /// A message from the server. On the configuration topic it may be a claim's delivery
    /// (persist, then move) or a release (back to staging); every message is kept for the host.
    pub fn message(&mut self, topic: String, payload: Bytes) -> ConfigEffect {
        let effect =
            if topic == self.config_topic { self.configuration(&payload) } else { ConfigEffect::Ignore };
        self.deliver(topic, payload);
        effect
    }

    fn configuration(&self, payload: &[u8]) -> ConfigEffect {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) else { return ConfigEffect::Ignore };
        let Some(endpoint) = v.get("Endpoint").and_then(|e| e.as_str()) else { return ConfigEffect::Ignore };
        if split_endpoint(endpoint).is_none() {
            return ConfigEffect::Ignore;
        }
        // The claim ticket travels with the endpoint (bounded: a ticket is small).
        let ticket =
            v.get("ClaimTicket").and_then(|t| t.as_str()).filter(|t| t.len() <= MAX_TICKET).unwrap_or("");
        if self.settings.endpoint == endpoint && self.settings.claim_ticket == ticket {
            return ConfigEffect::Ignore; // a repeated delivery
        }
        let moving = self.settings.endpoint != endpoint;
        let mut settings = self.settings.clone();
        settings.endpoint = endpoint.to_owned();
        settings.claim_ticket = ticket.to_owned();
        ConfigEffect::Persist { settings, moving }
    }

    /// The settings a [`ConfigEffect`] or [`ConfChange`] asked for are on disk.
    pub fn commit(&mut self, settings: Settings) {
        self.settings = settings;
    }

    fn index_of(&self, topic: &str) -> u8 {
        (1..=MAX_TOPICS)
            .find(|&i| {
                self.volatile.topics[i as usize].as_deref().is_some_and(|f| {
                    f == topic
                        || claimlink_mqtt::TopicName::new(topic)
                            .is_ok_and(|t| claimlink_mqtt::TopicFilter::new(f).is_ok_and(|f| f.matches(&t)))
                })
            })
            .unwrap_or(0)
    }

    fn deliver(&mut self, topic: String, payload: Bytes) {
        let index = self.index_of(&topic);
        if self.inbox.len() >= INBOX {
            self.push_event(event::OVERRUN, u32::from(index), "OVERRUN");
        } else {
            self.inbox.push_back(Message { index, topic, payload });
            self.push_event(event::MSG, u32::from(index), "MSG");
        }
    }

    /// The server answered the host's subscription of topic `index`.
    pub fn subscribed(&mut self, index: u8, ok: bool) {
        if ok {
            self.push_event(event::SUBACK, u32::from(index), "SUBACK");
        } else {
            self.push_event(event::SUBNACK, u32::from(index), "SUBNACK");
        }
    }

    // ---- the host's commands ---------------------------------------------------------

    /// `AT+CONNECT?`: connected or not, and staging or customer (where the connection is; when
    /// disconnected, where it will connect - a claim just persisted counts once it is there).
    pub fn connect_query(&self) -> String {
        let (connected, customer) = match &self.connected {
            Some(e) => (true, self.is_customer(e)),
            None => (false, self.is_customer(&self.settings.endpoint)),
        };
        at::ok(
            None,
            Some(&format!(
                "{} {} {} {}",
                u8::from(connected),
                u8::from(customer),
                if connected { "CONNECTED" } else { "DISCONNECTED" },
                if customer { "CUSTOMER" } else { "STAGING" }
            )),
        )
    }

    /// `AT+SEND{n}`: the topic and QoS to publish on.
    pub fn send_target(&self, index: u8) -> Result<(String, QoS), AtError> {
        let name = self.topic(index)?;
        Ok((name, if self.volatile.qos == 1 { QoS::AtLeastOnce } else { QoS::AtMostOnce }))
    }

    /// `AT+SUBSCRIBE{n}`: the filter to subscribe (kept for reconnections).
    pub fn subscribe(&mut self, index: u8) -> Result<String, AtError> {
        let filter = self.topic(index)?;
        self.volatile.subscribed[usize::from(index)] = true;
        Ok(filter)
    }

    /// `AT+UNSUBSCRIBE{n}`: the filter to unsubscribe.
    pub fn unsubscribe(&mut self, index: u8) -> Result<String, AtError> {
        let filter = self.topic(index)?;
        self.volatile.subscribed[usize::from(index)] = false;
        Ok(filter)
    }

    fn topic(&self, index: u8) -> Result<String, AtError> {
        self.volatile.topics.get(usize::from(index)).cloned().flatten().ok_or(AtError::ParameterUndefined)
    }

    /// `AT+EVENT?`: the oldest event, or a bare OK.
    pub fn next_event(&mut self) -> String {
        match self.events.pop_front() {
            Some((id, param, m)) => at::ok(None, Some(&format!("{id} {param} {m}"))),
            None => at::ok(None, None),
        }
    }

    /// `AT+GET`, `AT+GET0`, `AT+GET{n}`: the oldest matching message.
    pub fn get(&mut self, from: GetFrom) -> String {
        let pos = self.inbox.iter().position(|m| match from {
            GetFrom::Any => true,
            GetFrom::Unassigned => m.index == 0,
            GetFrom::Topic(i) => m.index == i,
        });
        let Some(m) = pos.and_then(|p| self.inbox.remove(p)) else { return at::ok(None, None) };
        match from {
            GetFrom::Topic(i) => at::ok(Some(i), Some(&at::escape(&m.payload))),
            _ => format!("OK {}\r\n{}\r\n", m.topic, at::escape(&m.payload)),
        }
    }

    /// `AT+RESET` (after the driver disconnected): volatile settings and messages go.
    pub fn reset(&mut self) {
        self.volatile = Volatile::default();
        self.inbox.clear();
    }

    /// `AT+FACTORY_RESET` (after the driver disconnected and wrote `factory`): back to staging
    /// with nothing kept.
    pub fn factory_reset(&mut self, factory: Settings) {
        self.settings = factory;
        self.reset();
        self.events.clear();
        self.connected = None;
    }

    /// The transport the next connection uses: the setting, else the bundle's.
    pub fn transport(&self) -> &str {
        if self.settings.transport.is_empty() { &self.id.transport } else { &self.settings.transport }
    }

    /// `AT+CONF key=value`.
    pub fn conf_set(&mut self, key: &str, value: Vec<u8>) -> Result<ConfChange, AtError> {
        let text = String::from_utf8(value).map_err(|_| AtError::Parameter)?;
        let lower = key.to_ascii_lowercase();
        if let Some(n) = lower.strip_prefix("topic") {
            let i = topic_index(n)?;
            if !text.is_empty() && claimlink_mqtt::TopicFilter::new(&text).is_err() {
                return Err(AtError::Parameter);
            }
            self.volatile.topics[usize::from(i)] = (!text.is_empty()).then_some(text);
            return Ok(ConfChange::Done);
        }
        let mut next = self.settings.clone();
        match lower.as_str() {
            "thingname" | "certificate" => return Err(AtError::KeyReadonly),
            "qos" => {
                self.volatile.qos = match text.as_str() {
                    "0" => 0,
                    "1" => 1,
                    _ => return Err(AtError::OutOfRange),
                };
                return Ok(ConfChange::Done);
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
            "transport" => {
                next.transport = crate::bundle::transport_name(&text).ok_or(AtError::Parameter)?.to_owned();
            }
            _ => return Err(AtError::UnknownKey),
        }
        Ok(ConfChange::Persist(next))
    }

    /// `AT+CONF? key [argument]`.
    pub fn conf_get(&self, key: &str, argument: Option<&str>) -> Result<String, AtError> {
        let lower = key.to_ascii_lowercase();
        if let Some(n) = lower.strip_prefix("topic") {
            let t = self.volatile.topics[usize::from(topic_index(n)?)].clone().unwrap_or_default();
            return Ok(at::ok(None, Some(&at::escape(t.as_bytes()))));
        }
        let s = &self.settings;
        let value = match lower.as_str() {
            "thingname" => self.id.thing_name.clone(),
            "certificate" => {
                if argument.is_some_and(|a| !a.eq_ignore_ascii_case("pem")) {
                    return Err(AtError::Parameter);
                }
                self.id.certificate_pem.clone()
            }
            "endpoint" => s.endpoint.clone(),
            "customname" => s.custom_name.clone(),
            "keepalive" => s.keep_alive.to_string(),
            "qos" => self.volatile.qos.to_string(),
            "rootca" if s.root_ca.is_empty() => self.id.root_ca_pem.clone(),
            "rootca" => s.root_ca.clone(),
            "lwtconfig" => s.lwt_topic.clone(),
            "lwtmessage" => s.lwt_message.clone(),
            "transport" => self.transport().to_owned(),
            _ => return Err(AtError::UnknownKey),
        };
        Ok(at::ok(None, Some(&at::escape(value.as_bytes()))))
    }
}

fn topic_index(n: &str) -> Result<u8, AtError> {
    let i: u8 = n.parse().map_err(|_| AtError::UnknownKey)?;
    if (1..=MAX_TOPICS).contains(&i) { Ok(i) } else { Err(AtError::OutOfRange) }
}

#[cfg(test)]
#[path = "machine/tests.rs"]
mod tests;
