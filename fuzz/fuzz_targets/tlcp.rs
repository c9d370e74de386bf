//! claimlink-tls's TLCP decoders, structure-aware: the handshake message decoders on raw
//! bytes, then the bytes framed as TLCP records (valid headers, fuzzed types and bodies) fed to
//! a server reading a ClientHello and to a client reading a server's flight. Nothing may
//! panic, and no client completes a handshake without the server's signature.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let established = claimlink_tls::tlcp::fuzz_decoders(data);
    assert!(!established, "a client finished a TLCP handshake with forged input");
});
