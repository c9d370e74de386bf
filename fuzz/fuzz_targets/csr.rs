//! Arbitrary bytes as a DER PKCS#10 request: parsing and signature checking must never panic.
#![no_main]

use claimlink_pki::CertificateRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(csr) = CertificateRequest::from_der(data) {
        let _ = (csr.subject().to_string(), csr.requested_extensions(), csr.info_der(), csr.signature());
    }
});
