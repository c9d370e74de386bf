//! SM2 and SM3 cross-checked with an independent implementation: Python `gmssl`.
//! Our signatures and ciphertexts go to gmssl, and its signatures and ciphertexts come back to us.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::process::Command;

use claimlink_gm::{DistId, Sm2CiphertextFormat, Sm2PrivateKey, Sm2Signature, sm3};
use claimlink_testkit::{python_with, run_ok};

const SCRIPT: &str = r#"
import sys
from gmssl import sm2, sm3, func
priv, pub, msg, our_sig, our_ct = sys.argv[1:6]
msg = bytes.fromhex(msg)
c = sm2.CryptSM2(private_key=priv, public_key=pub, mode=1, asn1=True)
print("verify_ours", c.verify_with_sm3(our_sig, msg))
print("their_sig", c.sign_with_sm3(msg))
print("decrypt_ours", c.decrypt(bytes.fromhex(our_ct)).hex())
print("their_ct", c.encrypt(msg).hex())
print("sm3", sm3.sm3_hash(func.bytes_to_list(msg)))
"#;

fn rng() -> rand_core::UnwrapErr<getrandom::SysRng> {
    rand_core::UnwrapErr(getrandom::SysRng)
}

#[test]
fn sm2_signatures_and_ciphertexts_interoperate_with_python_gmssl() {
    let Some(python) = python_with("sm2_gmssl", "gmssl") else { return };
    for round in 0..4 {
        // gmssl strips a leading "04" from public keys with `lstrip`, which also eats leading
        // '0'/'4' digits of x; pick keys whose x does not start with them.
        let key = loop {
            let k = Sm2PrivateKey::generate(&mut rng());
            let x = hex::encode(&k.public_key().to_sec1_uncompressed()[1..2]);
            if !x.starts_with(['0', '4']) {
                break k;
            }
        };
        let public = key.public_key();
        let msg = format!("claimlink interop round {round}").into_bytes();
        let ours = key.sign(&DistId::GMT_0009_DEFAULT, &msg).unwrap();
        let ct = public.encrypt(&mut rng(), &msg, Sm2CiphertextFormat::C1C3C2).unwrap();
        let out = run_ok(Command::new(&python).args([
            "-c",
            SCRIPT,
            &hex::encode(*key.to_bytes()),
            &hex::encode(&public.to_sec1_uncompressed()[1..]),
            &hex::encode(&msg),
            &hex::encode(ours.to_der()),
            &hex::encode(&ct[1..]), // gmssl's C1 has no 04 prefix
        ]));
        let field = |name: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
                .unwrap_or_else(|| panic!("no {name} in {out}"))
        };
        assert_eq!(field("verify_ours"), "True", "gmssl rejected our signature");
        assert_eq!(field("decrypt_ours"), hex::encode(&msg), "gmssl could not decrypt ours");
        let theirs = Sm2Signature::from_der(&hex::decode(field("their_sig")).unwrap()).unwrap();
        public.verify(&DistId::GMT_0009_DEFAULT, &msg, &theirs).unwrap();
        // Their signature must not verify under another ID: the ID really is bound.
        assert!(public.verify(&DistId::new("").unwrap(), &msg, &theirs).is_err());
        let their_ct = [&[4u8][..], &hex::decode(field("their_ct")).unwrap()].concat();
        assert_eq!(&key.decrypt(&their_ct, Sm2CiphertextFormat::C1C3C2).unwrap()[..], &msg[..]);
        assert_eq!(field("sm3"), hex::encode(sm3(&msg)));
    }
}
