//! SM2 certificates and CSRs we issue, verified by an independent SM2 implementation (Python
//! `gmssl`): every link of a root -> issuing CA -> device chain, and a CSR's self-signature,
//! with the GM/T 0009 distinguishing ID gmssl uses by default.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::process::Command;
use std::time::SystemTime;

use claimlink_pki::profile::YEAR;
use claimlink_pki::{
    Certificate, CertificateRequest, Issuer, KeyAlgorithm, PrivateKey, Profile, PublicKey, Signer, Subject,
    issue, name,
};
use claimlink_testkit::{python_with, run_ok};

const SCRIPT: &str = r#"
import sys
from gmssl import sm2
ok = []
for arg in sys.argv[1:]:
    pub, tbs, sig = arg.split(":")
    # x||y without the 04 prefix; the caller picks keys whose x does not start with 0 or 4,
    # because gmssl strips a "04" prefix with lstrip, which would eat such digits too.
    c = sm2.CryptSM2(private_key="", public_key=pub, asn1=True)
    ok.append(str(c.verify_with_sm3(sig, bytes.fromhex(tbs))))
print(" ".join(ok))
"#;

fn rng() -> rand_core::UnwrapErr<getrandom::SysRng> {
    rand_core::UnwrapErr(getrandom::SysRng)
}

/// An SM2 key whose public x coordinate does not start with hex digit 0 or 4 (see SCRIPT).
fn key() -> PrivateKey {
    loop {
        let k = PrivateKey::generate(KeyAlgorithm::Sm2, &mut rng()).unwrap();
        if !xy_hex(&k.public_key()).starts_with(['0', '4']) {
            return k;
        }
    }
}

fn xy_hex(pk: &PublicKey) -> String {
    let PublicKey::Sm2(k) = pk else { panic!("not SM2") };
    hex::encode(&k.to_sec1_uncompressed()[1..])
}

fn subject(dn: &str, k: &PrivateKey) -> Subject {
    Subject::new(name::parse(dn).unwrap(), k.public_key(), SystemTime::now(), YEAR * 20)
}

fn link(cert: &Certificate, issuer_key: &PublicKey) -> String {
    format!("{}:{}:{}", xy_hex(issuer_key), hex::encode(cert.tbs_der()), hex::encode(cert.signature()))
}

#[test]
fn gmssl_verifies_every_link_of_our_sm2_chains_and_csrs() {
    let Some(python) = python_with("gmssl_certificates", "gmssl") else { return };
    let (root_key, ca_key, dev_key) = (key(), key(), key());
    let root = issue(
        &Issuer { certificate: None, signer: &root_key },
        &Profile::RootCa,
        &subject("CN=R,O=claimlink", &root_key),
        &mut rng(),
    )
    .unwrap();
    let ca = issue(
        &Issuer { certificate: Some(&root), signer: &root_key },
        &Profile::IssuingCa { path_len: Some(0) },
        &subject("CN=I,O=claimlink", &ca_key),
        &mut rng(),
    )
    .unwrap();
    let thing = claimlink_pki::ThingName::generate(&mut rng());
    let dev = issue(
        &Issuer { certificate: Some(&ca), signer: &ca_key },
        &Profile::DeviceBirth,
        &subject(&format!("CN={thing},serialNumber={thing}"), &dev_key),
        &mut rng(),
    )
    .unwrap();
    let csr = CertificateRequest::build(name::parse("CN=csr").unwrap(), &dev_key, &[]).unwrap();
    let out = run_ok(Command::new(&python).args([
        "-c",
        SCRIPT,
        &link(&root, &root_key.public_key()),
        &link(&ca, &root_key.public_key()),
        &link(&dev, &ca_key.public_key()),
        &format!(
            "{}:{}:{}",
            xy_hex(&dev_key.public_key()),
            hex::encode(csr.info_der()),
            hex::encode(csr.signature())
        ),
        &link(&dev, &root_key.public_key()), // wrong issuer key
    ]));
    assert_eq!(out.trim(), "True True True True False", "gmssl verdicts: {out}");
}
