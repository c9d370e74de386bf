//! The claimlink device agent: what a device's module does between its host (AT commands) and
//! the platform (MQTT over mutual TLS). [`at`] parses command lines; [`bundle`] loads the
//! factory identity and keeps the persistent settings; [`agent::Agent`] runs the commands and
//! the connection that follows the device from staging to its owner's endpoint.

#![forbid(unsafe_code)]

pub mod agent;
pub mod at;
pub mod bundle;
pub mod machine;

pub use agent::{Agent, AgentOptions, Backoff, ConnectFailure, Status};
