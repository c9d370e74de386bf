//! What a role decides for the broker.

use std::net::SocketAddr;

use claimlink_mqtt::{ReasonCode, TopicFilter, TopicName};
use rustls::pki_types::CertificateDer;

/// Who is on the other end of a connection, as the transport saw it.
#[derive(Debug, Clone)]
pub struct PeerIdentity {
    /// Remote address.
    pub addr: SocketAddr,
    /// The TLS server name the client asked for (SNI), if any.
    pub sni: Option<String>,
    /// The client's certificate chain, leaf first (empty without TLS client authentication).
    pub certificates: Vec<CertificateDer<'static>>,
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

    /// May this connection publish to `topic` (with the retain flag as given)?
    fn authorize_publish(&self, _ctx: &Self::Context, _topic: &TopicName, _retain: bool) -> bool {
        true
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

    /// Called for an authorised PUBLISH before routing: `true` means the role took the message
    /// (it is acknowledged and not routed). Staging takes claims this way.
    fn intercept_publish(&self, _ctx: &Self::Context, _topic: &TopicName, _payload: &[u8]) -> bool {
        false
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
