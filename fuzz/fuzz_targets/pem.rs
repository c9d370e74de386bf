//! Arbitrary bytes as PEM: block framing, certificate bundles, CSRs and unencrypted private keys.
#![no_main]

use claimlink_pki::{Certificate, CertificateRequest, PrivateKey, pem};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = pem::decode_all(data);
    let _ = Certificate::chain_from_pem(data);
    let _ = Certificate::from_pem_or_der(data);
    let _ = CertificateRequest::from_pem_or_der(data);
    let _ = PrivateKey::from_pkcs8_der(data);
    if !data.windows(9).any(|w| w == b"ENCRYPTED") {
        // Encrypted keys run PBKDF2 with the file's iteration count: CA keys are local files,
        // not network input, so that path is left to the unit tests.
        let _ = pem::private_key_from_pem(data, None);
    }
});
