//! The claimlink device agent. So far: the AT command line of REFERENCE.md section 2 -
//! framing, escapes, commands and the response format - as a pure parser with no I/O; the
//! state machine that runs the commands over the MQTT client core comes next.

#![forbid(unsafe_code)]

pub mod at;
