//! Arbitrary bytes as a DER CRL: parsing must never panic, every entry the parser accepted must
//! come back out of the iterator, and building the revoked set from it must not panic either.
#![no_main]

use claimlink_pki::crl::{Crl, DEFAULT_MAX_CRL_LEN, RevokedSerials, fuzz_parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = fuzz_parse(data);
    if let Ok(crl) = Crl::from_der(data.to_vec(), DEFAULT_MAX_CRL_LEN) {
        let _ = (crl.number(), crl.delta_base(), crl.tbs_der(), crl.signature(), crl.is_current(crl.this_update()));
        if let Ok(mut set) = RevokedSerials::from_crl(&crl) {
            let _ = set.apply_delta(&crl);
        }
    }
});
