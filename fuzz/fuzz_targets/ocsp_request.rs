//! Arbitrary bytes as a DER OCSP request: decoding must never panic, and every CertID it
//! accepts must answer `is_issued_by` without panicking.
#![no_main]

use claimlink_pki::ocsp::parse_request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = parse_request(data) {
        assert!(!req.ids.is_empty() && req.ids.len() <= claimlink_pki::ocsp::MAX_REQUESTS);
        for id in &req.ids {
            let _ = (id.hash, id.serial.to_hex(), id.issuer_key_hash.len());
        }
    }
});
