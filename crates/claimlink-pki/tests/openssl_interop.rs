//! Every profile, both algorithms, cross-checked with the OpenSSL 3 CLI: `openssl x509 -text`
//! parses what we issue, `openssl verify` accepts the chain (SM2 with the GM/T 0009 ID passed
//! explicitly, since OpenSSL 3.0 defaults to an empty ID), `openssl req -verify` accepts our CSRs,
//! and we accept CSRs OpenSSL makes.
//!
//! OpenSSL 3.0 applies `-vfyopt distid:...` only to the certificate being verified, not to the
//! CA certificates it loads, so an SM2 chain is checked link by link: the issuing CA against the
//! root, then the leaf against the issuing CA as a partial-chain anchor.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::Path;
use std::process::Command;
use std::time::SystemTime;

use claimlink_pki::profile::YEAR;
use claimlink_pki::verify::Purpose;
use claimlink_pki::{
    Certificate, CertificateRequest, Issuer, KeyAlgorithm, PrivateKey, Profile, Signer, Subject,
    TrustAnchors, ValidationOptions, issue, name, verify_chain,
};
use claimlink_testkit::{openssl, run, run_ok};

const DISTID: &str = "distid:1234567812345678";

fn rng() -> rand_core::UnwrapErr<getrandom::SysRng> {
    rand_core::UnwrapErr(getrandom::SysRng)
}

fn subject(dn: &str, key: &dyn Signer, years: u32) -> Subject {
    Subject::new(name::parse(dn).unwrap(), key.public_key(), SystemTime::now(), YEAR * years)
}

fn write(dir: &Path, file: &str, text: &str) -> String {
    let p = dir.join(file);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

fn openssl_verify(alg: KeyAlgorithm, dir: &Path, root: &str, issuing: &str, leaf: &str) {
    let mut links = vec![];
    match alg {
        KeyAlgorithm::P256 => links.push(vec!["-CAfile", root, "-untrusted", issuing, leaf]),
        KeyAlgorithm::Sm2 => {
            links.push(vec!["-vfyopt", DISTID, "-CAfile", root, issuing]);
            links.push(vec!["-vfyopt", DISTID, "-partial_chain", "-CAfile", issuing, leaf]);
        }
    }
    for args in links {
        let out = run_ok(Command::new("openssl").arg("verify").args(&args).current_dir(dir));
        assert!(out.contains(": OK"), "{out}");
    }
}

fn text_of(cert_path: &str) -> String {
    run_ok(Command::new("openssl").args(["x509", "-noout", "-text", "-in", cert_path]))
}

#[test]
fn every_profile_of_both_algorithms_is_accepted_by_openssl() {
    if openssl("every_profile_openssl").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for alg in [KeyAlgorithm::Sm2, KeyAlgorithm::P256] {
        let root_key = PrivateKey::generate(alg, &mut rng()).unwrap();
        let root = issue(
            &Issuer { certificate: None, signer: &root_key },
            &Profile::RootCa,
            &subject("CN=Interop Root,O=claimlink,C=CN", &root_key, 30),
            &mut rng(),
        )
        .unwrap();
        let ca_key = PrivateKey::generate(alg, &mut rng()).unwrap();
        let ca = issue(
            &Issuer { certificate: Some(&root), signer: &root_key },
            &Profile::IssuingCa { path_len: Some(0) },
            &subject("CN=Interop Issuing,O=claimlink", &ca_key, 20),
            &mut rng(),
        )
        .unwrap();
        let root_path = write(d, &format!("{alg}-root.pem"), &root.to_pem());
        let ca_path = write(d, &format!("{alg}-ca.pem"), &ca.to_pem());
        let root_text = text_of(&root_path);
        assert!(
            root_text.contains("CA:TRUE") && root_text.contains("Certificate Sign, CRL Sign"),
            "{root_text}"
        );
        assert!(text_of(&ca_path).contains("CA:TRUE, pathlen:0"));

        let thing = claimlink_pki::ThingName::generate(&mut rng());
        let profiles = [
            (
                Profile::DeviceBirth,
                format!("CN={thing},serialNumber={thing}"),
                "TLS Web Client Authentication",
                Purpose::ClientAuth,
            ),
            (
                Profile::TlsServer {
                    dns: vec!["staging.example.com".into()],
                    ips: vec!["127.0.0.1".parse().unwrap()],
                },
                "CN=staging.example.com".to_owned(),
                "DNS:staging.example.com, IP Address:127.0.0.1",
                Purpose::ServerAuth,
            ),
            (
                Profile::ClaimThing,
                "CN=claim-thing,O=OEM".to_owned(),
                "TLS Web Client Authentication",
                Purpose::ClientAuth,
            ),
        ];
        for (i, (profile, dn, expect, purpose)) in profiles.into_iter().enumerate() {
            let key = PrivateKey::generate(alg, &mut rng()).unwrap();
            let leaf = issue(
                &Issuer { certificate: Some(&ca), signer: &ca_key },
                &profile,
                &subject(&dn, &key, 20),
                &mut rng(),
            )
            .unwrap();
            let leaf_path = write(d, &format!("{alg}-leaf{i}.pem"), &leaf.to_pem());
            let text = text_of(&leaf_path);
            assert!(text.contains(expect) && text.contains("CA:FALSE"), "{text}");
            if profile == Profile::DeviceBirth {
                assert!(
                    text.contains(&format!("CN = {thing}"))
                        && text.contains(&format!("serialNumber = {thing}")),
                    "{text}"
                );
            }
            openssl_verify(alg, d, &root_path, &ca_path, &leaf_path);
            let mut opts = ValidationOptions::at(SystemTime::now());
            opts.purpose = purpose;
            verify_chain(&leaf, std::slice::from_ref(&ca), &TrustAnchors::new(vec![root.clone()]), &opts)
                .unwrap();
        }
    }
}

#[test]
fn sm2_chain_fails_in_openssl_without_the_gmt_0009_id() {
    // The negative control for the test above: the ID is really what makes OpenSSL accept it.
    if openssl("sm2_chain_without_id").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root_key = PrivateKey::generate(KeyAlgorithm::Sm2, &mut rng()).unwrap();
    let root = issue(
        &Issuer { certificate: None, signer: &root_key },
        &Profile::RootCa,
        &subject("CN=R", &root_key, 1),
        &mut rng(),
    )
    .unwrap();
    let ca_key = PrivateKey::generate(KeyAlgorithm::Sm2, &mut rng()).unwrap();
    let ca = issue(
        &Issuer { certificate: Some(&root), signer: &root_key },
        &Profile::IssuingCa { path_len: None },
        &subject("CN=I", &ca_key, 1),
        &mut rng(),
    )
    .unwrap();
    let r = write(dir.path(), "r.pem", &root.to_pem());
    let c = write(dir.path(), "c.pem", &ca.to_pem());
    let out = run(Command::new("openssl").args(["verify", "-CAfile", &r, &c]));
    assert!(!out.status.success());
}

#[test]
fn csrs_interoperate_with_openssl_req_both_ways() {
    if openssl("csr_interop").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for alg in [KeyAlgorithm::Sm2, KeyAlgorithm::P256] {
        // Ours -> openssl req -verify.
        let key = PrivateKey::generate(alg, &mut rng()).unwrap();
        let csr = CertificateRequest::build(
            name::parse("CN=server.example,O=OEM").unwrap(),
            &key,
            &["server.example".into()],
        )
        .unwrap();
        let path = write(d, &format!("{alg}-ours.csr"), &csr.to_pem());
        let mut cmd = Command::new("openssl");
        cmd.args(["req", "-noout", "-verify", "-text", "-in", &path]);
        if alg == KeyAlgorithm::Sm2 {
            cmd.args(["-vfyopt", DISTID]);
        }
        let out = run(&mut cmd);
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && text.contains("verify OK"), "{text}");
        assert!(text.contains("DNS:server.example"), "{text}");

        // OpenSSL -> ours.
        let key_path = d.join(format!("{alg}-openssl.key"));
        let genpkey: &[&str] = match alg {
            KeyAlgorithm::Sm2 => &["genpkey", "-algorithm", "SM2", "-out"],
            KeyAlgorithm::P256 => {
                &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out"]
            }
        };
        run_ok(Command::new("openssl").args(genpkey).arg(&key_path));
        let csr_path = d.join(format!("{alg}-openssl.csr"));
        let mut req = Command::new("openssl");
        req.args(["req", "-new", "-subj", "/CN=device-from-openssl/O=OEM", "-key"])
            .arg(&key_path)
            .arg("-out")
            .arg(&csr_path);
        if alg == KeyAlgorithm::Sm2 {
            req.args(["-sm3", "-sigopt", DISTID]);
        }
        run_ok(&mut req);
        let theirs = CertificateRequest::from_pem(&std::fs::read(&csr_path).unwrap()).unwrap();
        assert_eq!(
            name::attribute(theirs.subject(), name::attr::COMMON_NAME).as_deref(),
            Some("device-from-openssl")
        );
        // And a tampered one is refused.
        let mut der = theirs.der().to_vec();
        let pos = der.windows(6).position(|w| w == b"device").unwrap();
        der[pos] = b'D';
        assert!(matches!(CertificateRequest::from_der(&der), Err(claimlink_pki::CsrError::BadSignature)));
        // An OpenSSL key file is readable by us too.
        let key = claimlink_pki::pem::private_key_from_pem(&std::fs::read(&key_path).unwrap(), None).unwrap();
        assert_eq!(&key.public_key(), theirs.public_key());
        let _: &Certificate = &issue(
            &Issuer { certificate: None, signer: &key },
            &Profile::RootCa,
            &subject("CN=self", &key, 1),
            &mut rng(),
        )
        .unwrap();
    }
}

#[test]
fn rsa_and_p384_chains_issued_by_openssl_verify_with_ours() {
    if openssl("rsa_p384_chains").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ossl = |args: &[&str]| run_ok(Command::new("openssl").args(args).current_dir(d));
    let ext = d.join("ext.cnf");
    std::fs::write(&ext, "[v3_ca]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n[leaf]\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n").unwrap();
    for (name, genkey) in [
        ("rsa", vec!["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
        ("p384", vec!["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"]),
    ] {
        let (ca_key, ca_crt, leaf_key, leaf_csr, leaf_crt) = (
            format!("{name}-ca.key"),
            format!("{name}-ca.pem"),
            format!("{name}-leaf.key"),
            format!("{name}-leaf.csr"),
            format!("{name}-leaf.pem"),
        );
        ossl(&[&genkey[..], &["-out", &ca_key]].concat());
        ossl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            &ca_key,
            "-subj",
            "/CN=OpenSSL CA",
            "-days",
            "30",
            "-sha384",
            "-config",
            "ext.cnf",
            "-extensions",
            "v3_ca",
            "-out",
            &ca_crt,
        ]);
        ossl(&[&genkey[..], &["-out", &leaf_key]].concat());
        ossl(&["req", "-new", "-key", &leaf_key, "-subj", "/CN=OpenSSL leaf", "-out", &leaf_csr]);
        ossl(&[
            "x509",
            "-req",
            "-in",
            &leaf_csr,
            "-CA",
            &ca_crt,
            "-CAkey",
            &ca_key,
            "-days",
            "30",
            "-sha256",
            "-extfile",
            "ext.cnf",
            "-extensions",
            "leaf",
            "-out",
            &leaf_crt,
        ]);
        let ca = Certificate::from_pem(&std::fs::read(d.join(&ca_crt)).unwrap()).unwrap();
        let leaf = Certificate::from_pem(&std::fs::read(d.join(&leaf_crt)).unwrap()).unwrap();
        let csr = CertificateRequest::from_pem(&std::fs::read(d.join(&leaf_csr)).unwrap()).unwrap();
        assert_eq!(csr.public_key(), &leaf.public_key().unwrap());
        let mut opts = ValidationOptions::at(SystemTime::now());
        opts.purpose = Purpose::ClientAuth;
        let path = verify_chain(&leaf, &[], &TrustAnchors::new(vec![ca.clone()]), &opts).unwrap();
        assert_eq!(path.len(), 2, "{name}");
        // One flipped bit in the signature and the path is refused.
        let mut der = leaf.der().to_vec();
        let last = der.len() - 1;
        der[last] ^= 1;
        let bad = Certificate::from_der(&der).unwrap();
        assert!(verify_chain(&bad, &[], &TrustAnchors::new(vec![ca]), &opts).is_err(), "{name}");
    }
}
