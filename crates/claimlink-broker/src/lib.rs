//! The MQTT broker runtime of claimlink: TCP and TLS listeners, one task per connection driving
//! a [`claimlink_mqtt::server::ServerConnection`], a router with a topic trie and retained
//! messages, and the [`Hooks`] through which a role (staging, account) decides who may connect,
//! publish, subscribe and receive.
//!
//! What it is not: it knows nothing of accounts, certificates as business objects or SQL; the
//! roles bring that through the hooks. Security choices (client certificates required or not,
//! trusted CAs) are runtime configuration of each listener.

#![forbid(unsafe_code)]

mod connection;
pub mod hooks;
pub mod listener;
pub mod router;
pub mod serve;
pub mod tls;

pub use hooks::{AllowAll, ConnectRequest, Hooks, Inbound, Origin, PeerAdmission, PeerIdentity, Verdict};
pub use listener::{Broker, Handshaken, Limits, TlcpConfig, TlsSelector, WeakBroker, handshake};
