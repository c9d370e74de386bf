//! Arbitrary bytes as an AT command line (what a host sends the device agent over a serial
//! line): the parser must answer every line with a command or an error, and escaping must
//! round-trip.
#![no_main]

use claimlink_agent::at;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let line = String::from_utf8_lossy(data);
    match at::parse(&line) {
        Ok(_) => {}
        Err(e) => assert!(e.response().starts_with("ERR") && e.response().ends_with("\r\n")),
    }
    if let Ok(text) = std::str::from_utf8(data) {
        assert_eq!(at::unescape(&at::escape(data)).ok().as_deref(), Some(text.as_bytes()));
    }
});
