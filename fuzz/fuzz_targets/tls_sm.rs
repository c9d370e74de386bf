//! claimlink-tls's parsing of peer input: curveSM2 key shares (off-curve, compressed, identity,
//! truncated), SM2 signatures and public keys under both IDs, and SM4-GCM/CCM records (short,
//! truncated, tampered). Nothing may panic; garbage is never accepted as a record.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (_kx, _verified, opened) = claimlink_tls::fuzz_peer_input(data);
    // Forging a 128-bit tag under a key the fuzzer does not know does not happen.
    assert!(!opened, "a random record opened");
});
