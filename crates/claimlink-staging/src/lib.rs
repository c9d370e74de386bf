//! Staging: the module maker's service where devices wait, with their birth certificates, until
//! an OEM claims them - everything of it in one crate.
//!
//! - [`claim_code`]: the codes printed on labels and their salted HMAC-SM3 verifiers;
//! - [`claims`]: the claim decision (code, owner, lockouts per claimer, the device's daily
//!   ceiling, refusals in aggregate) and release, over the [`store`];
//! - [`store`]: staging's records and schema (OEMs, devices, claims, lockouts, administrator
//!   tokens, portal users), in the registry's database with migrations of its own;
//! - [`server`]: the MQTT listener for birth certificates and claim-things, with the one gate on
//!   configuration topics, claim tickets and deliveries;
//! - [`api`]: the HTTPS API for staging administrators and OEMs' claim-things;
//! - [`portal`]: an OEM's registration portal, which claims as its OEM.
//!
//! The account endpoint (`claimlink-server`) knows nothing of this crate; the two meet in the
//! signed claim tickets and release notices (`claimlink_claim::ticket`).

#![forbid(unsafe_code)]

pub mod api;
pub mod claim_code;
pub mod claims;
pub mod portal;
pub mod server;
pub mod store;

pub use server::{ClaimLimits, ReleaseNotice, StagingConfig, StagingHooks, StagingServer};
