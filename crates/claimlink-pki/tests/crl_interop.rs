//! CRLs we sign, checked by independent implementations: OpenSSL 3 parses both algorithms
//! (`crl -text`) and verifies P-256 CRLs directly (`crl -verify`); it cannot verify SM2 CRLs,
//! so their to-be-signed bytes and signature are cut out and checked with `openssl dgst -sm3
//! -sigopt distid:1234567812345678`; Python `asn1crypto` reads every entry, and `gmssl`
//! verifies the SM2 signature.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use claimlink_pki::crl::{self, Crl, CrlParams, Reason, Revocation, Serial};
use claimlink_pki::profile::YEAR;
use claimlink_pki::{
    Certificate, Issuer, KeyAlgorithm, PrivateKey, Profile, PublicKey, Signer, Subject, issue, name,
};
use claimlink_testkit::{openssl, python_with, run, run_ok};

fn rng() -> rand_core::UnwrapErr<getrandom::SysRng> {
    rand_core::UnwrapErr(getrandom::SysRng)
}

fn ca(alg: KeyAlgorithm) -> (PrivateKey, Certificate) {
    loop {
        let key = PrivateKey::generate(alg, &mut rng()).unwrap();
        // gmssl strips a leading "04" with lstrip: keep x from starting with hex 0 or 4.
        if let PublicKey::Sm2(k) = key.public_key()
            && hex::encode(&k.to_sec1_uncompressed()[1..]).starts_with(['0', '4'])
        {
            continue;
        }
        let subject = Subject::new(
            name::parse("CN=CRL Interop CA,O=claimlink,C=CN").unwrap(),
            key.public_key(),
            SystemTime::now() - Duration::from_secs(3600),
            YEAR,
        );
        let cert = issue(&Issuer { certificate: None, signer: &key }, &Profile::RootCa, &subject, &mut rng())
            .unwrap();
        return (key, cert);
    }
}

fn entries() -> Vec<Revocation> {
    let now = SystemTime::now() - Duration::from_secs(60);
    vec![
        Revocation {
            serial: Serial::from_hex("0A1B2C3D4E5F").unwrap(),
            revoked_at: now,
            reason: Some(Reason::KeyCompromise),
        },
        Revocation {
            serial: Serial::from_hex("80").unwrap(),
            revoked_at: now,
            reason: Some(Reason::CessationOfOperation),
        },
        Revocation { serial: Serial::from_hex("01").unwrap(), revoked_at: now, reason: None },
    ]
}

fn sign(alg: KeyAlgorithm, delta: Option<u64>) -> (PrivateKey, Certificate, Vec<u8>) {
    let (key, cert) = ca(alg);
    let now = SystemTime::now() - Duration::from_secs(60);
    let params = CrlParams {
        this_update: now,
        next_update: now + Duration::from_secs(86_400),
        number: 42,
        delta_base: delta,
    };
    let der = crl::build(&cert, &key, &params, entries()).unwrap();
    (key, cert, der)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_string_lossy().into_owned()
}

#[test]
fn openssl_reads_both_and_verifies_p256_crls_and_sm2_signatures() {
    if openssl("crl_openssl").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (alg, delta) in [
        (KeyAlgorithm::P256, None),
        (KeyAlgorithm::P256, Some(41)),
        (KeyAlgorithm::Sm2, None),
        (KeyAlgorithm::Sm2, Some(41)),
    ] {
        let (_, cert, der) = sign(alg, delta);
        let crl_path = write(d, "crl.der", &der);
        let ca_path = write(d, "ca.pem", cert.to_pem().as_bytes());
        let text = run_ok(
            Command::new("openssl").args(["crl", "-inform", "DER", "-in", &crl_path, "-noout", "-text"]),
        );
        for needle in [
            "CRL Number: \n                42",
            "Serial Number: 0A1B2C3D4E5F",
            "Serial Number: 80",
            "Serial Number: 01",
            "Key Compromise",
            "Cessation Of Operation",
            "Authority Key Identifier",
        ] {
            assert!(text.contains(needle), "{alg}: {needle:?} missing in:\n{text}");
        }
        assert_eq!(text.contains("Delta CRL Indicator"), delta.is_some(), "{text}");
        match alg {
            KeyAlgorithm::P256 => {
                let out = run(Command::new("openssl").args([
                    "crl", "-inform", "DER", "-in", &crl_path, "-CAfile", &ca_path, "-noout", "-verify",
                ]));
                let said = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                assert!(said.contains("verify OK"), "{said}");
                // A CRL signed by another key under the same name: OpenSSL refuses it too.
                let (_, other, _) = sign(alg, None);
                let other_path = write(d, "other.pem", other.to_pem().as_bytes());
                let out = run(Command::new("openssl").args([
                    "crl",
                    "-inform",
                    "DER",
                    "-in",
                    &crl_path,
                    "-CAfile",
                    &other_path,
                    "-noout",
                    "-verify",
                ]));
                let said = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                assert!(!said.contains("verify OK"), "{said}");
            }
            KeyAlgorithm::Sm2 => {
                assert!(text.contains("SM2-with-SM3") || text.contains("sm2sign-with-sm3"), "{text}");
                let crl = Crl::from_der(der.clone(), crl::DEFAULT_MAX_CRL_LEN).unwrap();
                let tbs = write(d, "tbs.der", crl.tbs_der());
                let sig = write(d, "sig.der", crl.signature());
                let pubkey = write(
                    d,
                    "pub.pem",
                    run_ok(Command::new("openssl").args(["x509", "-in", &ca_path, "-noout", "-pubkey"]))
                        .as_bytes(),
                );
                let verify = |tbs: &str| {
                    let out = run(Command::new("openssl").args([
                        "dgst",
                        "-sm3",
                        "-verify",
                        &pubkey,
                        "-sigopt",
                        "distid:1234567812345678",
                        "-signature",
                        &sig,
                        tbs,
                    ]));
                    String::from_utf8_lossy(&out.stdout).into_owned()
                };
                assert!(verify(&tbs).contains("Verified OK"));
                let mut changed = crl.tbs_der().to_vec();
                let last = changed.len() - 1;
                changed[last] ^= 1;
                let changed = write(d, "changed.der", &changed);
                assert!(!verify(&changed).contains("Verified OK"));
            }
        }
    }
}

const SCRIPT: &str = r#"
import sys
from asn1crypto import crl as acrl, algos
from gmssl import sm2
der = bytes.fromhex(sys.argv[1])
l = acrl.CertificateList.load(der)
tbs = l['tbs_cert_list']
out = [str(tbs['version'].native), str(l.crl_number_value.native), str(l.delta_crl_indicator_value.native if l.delta_crl_indicator_value else None)]
for e in tbs['revoked_certificates']:
    reason = e.crl_reason_value
    out.append("%X=%s" % (e['user_certificate'].native, reason.native if reason else "-"))
if l['signature_algorithm']['algorithm'].dotted == "1.2.156.10197.1.501":
    rs = algos.DSASignature.load(l['signature'].native).native
    c = sm2.CryptSM2(private_key="", public_key=sys.argv[2], asn1=False)
    sig = "%064x%064x" % (rs['r'], rs['s'])
    out.append(str(c.verify_with_sm3(sig, tbs.dump())))
    out.append(str(c.verify_with_sm3(sig, tbs.dump() + b"x")))
print(" ".join(out))
"#;

#[test]
fn asn1crypto_reads_every_entry_and_gmssl_verifies_the_sm2_signature() {
    let Some(python) = python_with("crl_asn1crypto", "asn1crypto") else { return };
    for (alg, delta) in [(KeyAlgorithm::Sm2, Some(41)), (KeyAlgorithm::P256, None)] {
        let (key, _, der) = sign(alg, delta);
        let xy = match key.public_key() {
            PublicKey::Sm2(k) => hex::encode(&k.to_sec1_uncompressed()[1..]),
            _ => String::new(),
        };
        let out = run_ok(Command::new(&python).args(["-c", SCRIPT, &hex::encode(&der), &xy]));
        let want = match alg {
            KeyAlgorithm::Sm2 => {
                "v2 42 41 A1B2C3D4E5F=key_compromise 80=cessation_of_operation 1=- True False"
            }
            _ => "v2 42 None A1B2C3D4E5F=key_compromise 80=cessation_of_operation 1=-",
        };
        assert_eq!(out.trim(), want, "{alg}");
    }
}

#[test]
fn we_read_and_verify_a_crl_openssl_ca_made() {
    if openssl("crl_from_openssl").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run_ok(Command::new("openssl").current_dir(d).args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=OpenSSL CA",
        "-days",
        "30",
    ]));
    std::fs::write(
        d.join("ca.cnf"),
        "[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\ncrlnumber = crlnumber\ndefault_md = sha256\n\
         default_crl_days = 30\ncertificate = ca.pem\nprivate_key = ca.key\ncrl_extensions = ext\n\
         [ext]\nauthorityKeyIdentifier = keyid\n",
    )
    .unwrap();
    std::fs::write(d.join("crlnumber"), "1000\n").unwrap();
    std::fs::write(
        d.join("index.txt"),
        "R\t301231000000Z\t261201000000Z,keyCompromise\t0A1B\tunknown\t/CN=a\n\
         R\t301231000000Z\t261201000000Z,superseded\t80\tunknown\t/CN=b\n\
         V\t301231000000Z\t\t0C\tunknown\t/CN=c\n",
    )
    .unwrap();
    run_ok(
        Command::new("openssl")
            .current_dir(d)
            .args(["ca", "-config", "ca.cnf", "-gencrl", "-out", "crl.pem"]),
    );
    run_ok(
        Command::new("openssl")
            .current_dir(d)
            .args(["crl", "-in", "crl.pem", "-outform", "DER", "-out", "crl.der"]),
    );
    let crl = Crl::from_der(std::fs::read(d.join("crl.der")).unwrap(), crl::DEFAULT_MAX_CRL_LEN).unwrap();
    let ca = Certificate::from_pem(&std::fs::read(d.join("ca.pem")).unwrap()).unwrap();
    crl.verify_signature(&ca).unwrap();
    assert_eq!(crl.number(), Some(0x1000));
    let got: Vec<(String, Option<Reason>)> = crl.entries().map(|e| (e.serial.to_hex(), e.reason)).collect();
    let mut got = got;
    got.sort();
    assert_eq!(
        got,
        [("0A1B".to_owned(), Some(Reason::KeyCompromise)), ("80".to_owned(), Some(Reason::Superseded))]
    );
    let set = claimlink_pki::crl::RevokedSerials::from_crl(&crl).unwrap();
    assert!(
        set.contains(&Serial::from_hex("0a1b").unwrap()) && !set.contains(&Serial::from_hex("0c").unwrap())
    );
}
