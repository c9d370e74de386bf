//! Arbitrary bytes as a stream of MQTT packets, in both protocol versions: decoding must never
//! panic, must respect the size limit, and every packet it accepts must survive an encode and
//! decode round trip unchanged.
#![no_main]

use claimlink_mqtt::{ProtocolVersion, decode, encode};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let mut rest = data;
        while let Ok(Some((packet, used))) = decode(rest, version, MAX) {
            assert!(used <= MAX && used <= rest.len() && used > 0);
            let mut out = Vec::new();
            if encode(&packet, version, &mut out).is_ok() {
                let again = decode(&out, version, usize::MAX).expect("re-encoded packet decodes");
                assert_eq!(again.map(|(p, _)| p), Some(packet), "round trip");
            }
            rest = &rest[used..];
        }
    }
});
