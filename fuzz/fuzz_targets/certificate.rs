//! Arbitrary bytes as a DER certificate: parsing must never panic, and a parsed certificate's
//! accessors and path validation (against itself as an anchor and as an intermediate) must not
//! either.
#![no_main]

use std::time::{Duration, SystemTime};

use claimlink_pki::{Certificate, TrustAnchors, ValidationOptions, verify_chain};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(cert) = Certificate::from_der(data) else { return };
    let _ = (cert.id(), cert.subject().to_string(), cert.common_name(), cert.subject_serial_number());
    let _ = (cert.not_after_rfc3339(), cert.public_key(), cert.signature_algorithm(), cert.tbs_der());
    let _ = (cert.is_ca(), cert.subject_alt_name(), cert.extended_key_usage());
    let opts = ValidationOptions::at(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
    let _ = verify_chain(&cert, &[], &TrustAnchors::new(vec![cert.clone()]), &opts);
    let _ = verify_chain(&cert, &[cert.clone()], &TrustAnchors::default(), &opts);
});
