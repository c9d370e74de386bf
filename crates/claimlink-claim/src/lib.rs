//! The claim's wire formats, shared by staging, the OEM's account endpoint and its tests, with no
//! I/O: [`message`] (what a claim-thing publishes on `{ThingName}/expresslink_config`, and what
//! staging delivers there) and [`ticket`] (the signed claim tickets a device presents to its
//! new endpoint, and the release notices that end them).

#![forbid(unsafe_code)]

pub mod message;
pub mod ticket;
