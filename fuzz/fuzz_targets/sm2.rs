//! Arbitrary bytes as SM2 signatures (DER and raw), public keys and ciphertexts (both formats).
#![no_main]

use claimlink_gm::{DistId, Sm2CiphertextFormat, Sm2PrivateKey, Sm2PublicKey, Sm2Signature};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = Sm2PrivateKey::from_bytes(&[7u8; 32]).expect("a valid scalar");
    if let Ok(sig) = Sm2Signature::from_der(data) {
        assert_eq!(Sm2Signature::from_der(&sig.to_der()).ok(), Some(sig.clone()), "DER round trip");
        let _ = key.public_key().verify(&DistId::GMT_0009_DEFAULT, b"m", &sig);
    }
    let _ = Sm2Signature::from_bytes(data);
    let _ = Sm2PublicKey::from_sec1_bytes(data);
    let _ = key.decrypt(data, Sm2CiphertextFormat::Der);
    let _ = key.decrypt(data, Sm2CiphertextFormat::C1C3C2);
});
