//! What a role decides for the broker.

use std::any::Any;
use std::net::SocketAddr;
use std::sync::Arc;

use claimlink_mqtt::{ReasonCode, TopicFilter, TopicName};
use rustls::pki_types::CertificateDer;

/// What a listener's [`crate::TlsSelector::admit`] decided about a client after its handshake
/// (the account and CA a certificate chains to, for example), carried with the connection to
/// the role's hooks, which know its type ([`PeerIdentity::admitted`]).
pub type PeerAdmission = Arc<dyn Any + Send + Sync>;

/// Who is on the other end of a connection, as the transport saw it.
#[derive(Clone)]
pub struct PeerIdentity {
    /// Remote address.
    pub addr: SocketAddr,
    /// The TLS server name the client asked for (SNI), if any.
    pub sni: Option<String>,
    /// The client's certificate chain, leaf first (empty without TLS client authentication).
    pub certificates: Vec<CertificateDer<'static>>,
    /// The listener's admission of the client, made once after the handshake.
    pub admission: Option<PeerAdmission>,
}

impl PeerIdentity {
    /// The listener's admission, as the type the role's selector made it.
    pub fn admitted<T: Any>(&self) -> Option<&T> {
        self.admission.as_deref().and_then(|a| a.downcast_ref::<T>())
    }
}

impl std::fmt::Debug for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerIdentity")
            .field("addr", &self.addr)
            .field("sni", &self.sni)
            .field("certificates", &self.certificates.len())
            .field("admitted", &self.admission.is_some())
            .finish()
    }
}

/// How a message enters the broker from a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A PUBLISH packet.
    Packet,
    /// The client's will.
    Will,
}

/// A message a client puts into the broker, for [`Hooks::admit_publish`].
#[derive(Debug, Clone, Copy)]
pub struct Inbound<'a> {
    /// How it arrived.
    pub origin: Origin,
    /// Its topic.
    pub topic: &'a TopicName,
    /// Its retain flag.
    pub retain: bool,
    /// Its payload.
    pub payload: &'a [u8],
}

/// What becomes of a message a client puts into the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Route it (and retain it when flagged).
    Route,
    /// The role takes it: it is acknowledged and never routed (staging takes claims this way).
    Take,
    /// Refused: MQTT 5 clients get "not authorized" in the acknowledgement of a QoS 1/2
    /// message, others are disconnected; a will is dropped (refused at CONNECT).
    Refuse,
}

/// A CONNECT to decide on. The password is given as bytes and must not be logged.
#[derive(Debug)]
pub struct ConnectRequest<'a> {
    /// Client identifier (already assigned by the broker if the client sent none).
    pub client_id: &'a str,
    /// User name.
    pub username: Option<&'a str>,
    /// Password.
    pub password: Option<&'a [u8]>,
    /// Transport identity.
    pub peer: &'a PeerIdentity,
}

/// Decisions a role makes. Every method runs on the connection's task; all but `on_connect`
/// are called for every packet and must not block.
pub trait Hooks: Send + Sync + 'static {
    /// Per-connection state the role keeps (identity, bound policy variables, ...).
    type Context: Send + Sync + 'static;

    /// Accept a CONNECT with a context, or refuse it with a reason (CONNACK "not authorized",
    /// "bad user name or password", ...). It may wait (a database, just-in-time provisioning);
    /// the connection does nothing else meanwhile.
    fn on_connect(
        &self,
        request: &ConnectRequest<'_>,
    ) -> impl Future<Output = Result<Self::Context, ReasonCode>> + Send;

    /// The one decision on every message a client puts into the broker, whatever the way in:
    /// a PUBLISH packet (topic alias already resolved, retain flag as sent) or its will (checked
    /// at CONNECT, where a refused will refuses the connection, and again when it is due). A
    /// role that must keep some topics for itself (staging's configuration topics) decides it
    /// here, in one place. For a will, [`Verdict::Take`] counts as [`Verdict::Refuse`]: only a
    /// client's own packet can be taken. Retained messages are stored only when this routes
    /// them, so a refused message cannot reach a later subscriber either.
    fn admit_publish(&self, _ctx: &Self::Context, _message: &Inbound<'_>) -> Verdict {
        Verdict::Route
    }

    /// May this connection subscribe to `filter`?
    fn authorize_subscribe(&self, _ctx: &Self::Context, _filter: &TopicFilter) -> bool {
        true
    }

    /// May this connection receive a message published on `topic`?
    fn authorize_receive(&self, _ctx: &Self::Context, _topic: &TopicName) -> bool {
        true
    }

    /// Subscriptions the broker makes for the connection as it is accepted (QoS 1), before
    /// [`Hooks::connected`]: staging subscribes every device to its configuration topic.
    fn initial_subscriptions(&self, _ctx: &Self::Context) -> Vec<TopicFilter> {
        Vec::new()
    }

    /// Whether the role wants [`Hooks::acknowledged`] for QoS 1/2 deliveries on `topic` to
    /// this connection.
    fn track_acknowledgement(&self, _ctx: &Self::Context, _topic: &str) -> bool {
        false
    }

    /// The client acknowledged a QoS 1/2 delivery on a topic [`Hooks::track_acknowledgement`]
    /// asked for.
    fn acknowledged(&self, _ctx: &Self::Context, _topic: &str) {}

    /// The connection was accepted.
    fn connected(&self, _ctx: &Self::Context, _client_id: &str) {}

    /// The connection ended.
    fn disconnected(&self, _ctx: &Self::Context, _client_id: &str) {}
}

/// Lets everyone do everything: for `claimlink broker` and tests. Transport security (client
/// certificates) still applies.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Hooks for AllowAll {
    type Context = ();

    async fn on_connect(&self, _request: &ConnectRequest<'_>) -> Result<(), ReasonCode> {
        Ok(())
    }
}
