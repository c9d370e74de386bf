//! Arbitrary bytes as a claim message a claim-thing publishes: the reader must take it or
//! refuse it without panicking, never read past its size limit, and the delivery staging
//! writes for an accepted endpoint must read back as JSON with that endpoint.
#![no_main]

use claimlink_claim::message::{delivery, parse_claim};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(claim) = parse_claim(data, 4096) {
        assert!(data.len() <= 4096);
        let body: serde_json::Value = serde_json::from_str(&delivery(&claim.endpoint, None)).expect("JSON");
        assert_eq!(body["Endpoint"].as_str(), Some(claim.endpoint.as_str()));
    }
    assert!(parse_claim(data, data.len().saturating_sub(1)).is_none() || data.is_empty());
});
