//! OCSP with OpenSSL as the independent judge: OpenSSL makes the requests (SHA-1, SHA-256 and
//! SM3 CertIDs, with a nonce), we answer as a delegated responder, and `openssl ocsp` verifies
//! P-256 responses (signature, responder certificate, nonce) and reads every status; SM2
//! responses are checked by cutting out the signed bytes for `openssl dgst -sm3 -sigopt
//! distid:...`. A malformed request gets `malformedRequest`, which OpenSSL reads as such.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use claimlink_pki::crl::{Reason, Serial};
use claimlink_pki::ocsp::{self, ErrorStatus, Responder, Status};
use claimlink_pki::profile::YEAR;
use claimlink_pki::{Certificate, Issuer, KeyAlgorithm, PrivateKey, Profile, Signer, Subject, issue, name};
use claimlink_testkit::{openssl, run, run_ok};

fn rng() -> rand_core::UnwrapErr<getrandom::SysRng> {
    rand_core::UnwrapErr(getrandom::SysRng)
}

fn leaf(
    ca: &Certificate,
    ca_key: &PrivateKey,
    profile: &Profile,
    cn: &str,
    alg: KeyAlgorithm,
) -> (PrivateKey, Certificate) {
    let key = PrivateKey::generate(alg, &mut rng()).unwrap();
    let s = Subject::new(
        name::parse(&format!("CN={cn}")).unwrap(),
        key.public_key(),
        SystemTime::now() - Duration::from_secs(60),
        YEAR,
    );
    let c = issue(&Issuer { certificate: Some(ca), signer: ca_key }, profile, &s, &mut rng()).unwrap();
    (key, c)
}

fn in_dir(d: &Path, args: &[&str]) -> String {
    let out = run(Command::new("openssl").current_dir(d).args(args));
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn openssl_asks_and_verifies_our_answers() {
    if openssl("ocsp_openssl").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for alg in [KeyAlgorithm::P256, KeyAlgorithm::Sm2] {
        let ca_key = PrivateKey::generate(alg, &mut rng()).unwrap();
        let s = Subject::new(
            name::parse("CN=OCSP Interop CA,O=claimlink").unwrap(),
            ca_key.public_key(),
            SystemTime::now() - Duration::from_secs(60),
            YEAR,
        );
        let ca =
            issue(&Issuer { certificate: None, signer: &ca_key }, &Profile::RootCa, &s, &mut rng()).unwrap();
        let (rkey, rcert) = leaf(&ca, &ca_key, &Profile::OcspResponder, "OCSP responder", alg);
        let (_, a) = leaf(&ca, &ca_key, &Profile::DeviceBirth, "a", alg);
        let (_, b) = leaf(&ca, &ca_key, &Profile::DeviceBirth, "b", alg);
        for (file, c) in [("ca.pem", &ca), ("a.pem", &a), ("b.pem", &b), ("responder.pem", &rcert)] {
            std::fs::write(d.join(file), c.to_pem()).unwrap();
        }
        let revoked_at = SystemTime::now() - Duration::from_secs(30);
        let hashes: &[&str] =
            if alg == KeyAlgorithm::Sm2 { &["-sm3", "-sha1"] } else { &["-sha1", "-sha256"] };
        for hash in hashes {
            in_dir(
                d,
                &[
                    "ocsp", hash, "-issuer", "ca.pem", "-cert", "a.pem", "-cert", "b.pem", "-reqout",
                    "req.der",
                ],
            );
            let req = ocsp::parse_request(&std::fs::read(d.join("req.der")).unwrap()).unwrap();
            assert_eq!(req.ids.len(), 2, "{alg} {hash}");
            assert!(req.nonce.is_some(), "OpenSSL sends a nonce by default");
            assert!(req.ids.iter().all(|id| id.is_issued_by(&ca)), "{alg} {hash}");
            assert_eq!(req.ids[0].serial, Serial::of(&a).unwrap());
            let answers: Vec<_> = req
                .ids
                .iter()
                .map(|id| {
                    let status = if id.serial == Serial::of(&a).unwrap() {
                        Status::Revoked { at: revoked_at, reason: Some(Reason::KeyCompromise) }
                    } else {
                        Status::Good
                    };
                    (id.clone(), status)
                })
                .collect();
            let now = SystemTime::now();
            let resp = ocsp::respond(
                &Responder { certificate: &rcert, signer: &rkey },
                &answers,
                now,
                now - Duration::from_secs(1),
                now + Duration::from_secs(3600),
                req.nonce.as_deref(),
            )
            .unwrap();
            std::fs::write(d.join("resp.der"), &resp).unwrap();
            // OpenSSL reads every status (SM2: without verifying, which 3.0 cannot).
            let text = in_dir(d, &["ocsp", "-respin", "resp.der", "-resp_text", "-noverify"]);
            assert!(text.contains("Cert Status: revoked") && text.contains("Cert Status: good"), "{text}");
            assert!(text.contains("Key Compromise") || text.contains("keyCompromise"), "{text}");
            assert!(text.contains("OCSP Nonce"), "{text}");
            match alg {
                KeyAlgorithm::P256 => {
                    // Verified as a delegated responder of the CA, the nonce matched to the request.
                    let v =
                        in_dir(d, &["ocsp", "-reqin", "req.der", "-respin", "resp.der", "-CAfile", "ca.pem"]);
                    assert!(v.contains("Response verify OK"), "{v}");
                    assert!(!v.to_lowercase().contains("nonce"), "{v}");
                    // Per certificate (a request OpenSSL builds again, so without its nonce).
                    let v = in_dir(
                        d,
                        &[
                            "ocsp",
                            hash,
                            "-respin",
                            "resp.der",
                            "-CAfile",
                            "ca.pem",
                            "-issuer",
                            "ca.pem",
                            "-cert",
                            "a.pem",
                            "-cert",
                            "b.pem",
                            "-no_nonce",
                        ],
                    );
                    assert!(v.contains("Response verify OK"), "{v}");
                    assert!(v.contains("a.pem: revoked") && v.contains("b.pem: good"), "{v}");
                    // Another request's nonce does not match this response.
                    in_dir(
                        d,
                        &[
                            "ocsp", hash, "-issuer", "ca.pem", "-cert", "a.pem", "-cert", "b.pem", "-reqout",
                            "req2.der",
                        ],
                    );
                    let v = in_dir(
                        d,
                        &["ocsp", "-reqin", "req2.der", "-respin", "resp.der", "-CAfile", "ca.pem"],
                    );
                    assert!(v.contains("Nonce Verify error"), "{v}");
                    // Under another CA with the same name, the same response does not verify.
                    let other_key = PrivateKey::generate(alg, &mut rng()).unwrap();
                    let os = Subject::new(
                        name::parse("CN=OCSP Interop CA,O=claimlink").unwrap(),
                        other_key.public_key(),
                        SystemTime::now() - Duration::from_secs(60),
                        YEAR,
                    );
                    let other = issue(
                        &Issuer { certificate: None, signer: &other_key },
                        &Profile::RootCa,
                        &os,
                        &mut rng(),
                    )
                    .unwrap();
                    std::fs::write(d.join("other.pem"), other.to_pem()).unwrap();
                    let v = in_dir(
                        d,
                        &["ocsp", "-reqin", "req.der", "-respin", "resp.der", "-CAfile", "other.pem"],
                    );
                    assert!(!v.contains("Response verify OK"), "{v}");
                }
                _ => {
                    let (tbs, sig, _) = ocsp::signed_parts(&resp).unwrap();
                    std::fs::write(d.join("tbs.der"), &tbs).unwrap();
                    std::fs::write(d.join("sig.der"), &sig).unwrap();
                    let pubkey = run_ok(Command::new("openssl").current_dir(d).args([
                        "x509",
                        "-in",
                        "responder.pem",
                        "-noout",
                        "-pubkey",
                    ]));
                    std::fs::write(d.join("responder.pub"), pubkey).unwrap();
                    let v = in_dir(
                        d,
                        &[
                            "dgst",
                            "-sm3",
                            "-verify",
                            "responder.pub",
                            "-sigopt",
                            "distid:1234567812345678",
                            "-signature",
                            "sig.der",
                            "tbs.der",
                        ],
                    );
                    assert!(v.contains("Verified OK"), "{v}");
                }
            }
        }
        let _ = rkey.public_key();
    }
    // A malformed request gets an unsigned malformedRequest that OpenSSL reads as such.
    assert!(ocsp::parse_request(b"\x30\x03\x02\x01\x00").is_err());
    std::fs::write(d.join("err.der"), ocsp::error_response(ErrorStatus::MalformedRequest)).unwrap();
    let text = in_dir(d, &["ocsp", "-respin", "err.der", "-resp_text", "-noverify"]);
    assert!(text.to_lowercase().contains("malformedrequest"), "{text}");
}
