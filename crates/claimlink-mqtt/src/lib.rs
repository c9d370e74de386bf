//! The MQTT 3.1.1 and 5.0 protocol core of claimlink, shared by the broker and the device agent.
//!
//! - [`codec`]: every packet of both versions, decoded with bounds (maximum packet size, the
//!   remaining-length and UTF-8 rules of the specifications, property validity per packet type)
//!   and encoded back;
//! - [`topic`]: topic name and filter newtypes, wildcard matching and shared subscriptions;
//! - [`reason`]: MQTT 5 reason codes and their MQTT 3.1.1 equivalents;
//! - [`server`]: the server side of one connection, driven by bytes, answers and time;
//! - [`client`]: the client side of one connection, for the device agent and the simulator.
//!
//! What it is not: it opens no sockets, spawns no tasks, reads no clock. Callers hand it bytes
//! and the current time; it hands back packets, bytes and deadlines.

#![forbid(unsafe_code)]

pub mod client;
pub mod codec;
pub mod packet;
pub mod properties;
pub mod reason;
pub mod server;
pub mod topic;

pub use codec::{DecodeError, EncodeError, decode, encode};
pub use packet::{Packet, ProtocolVersion, QoS};
pub use properties::Properties;
pub use reason::ReasonCode;
pub use topic::{TopicError, TopicFilter, TopicName};
