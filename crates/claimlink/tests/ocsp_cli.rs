//! The OCSP responder of a CA directory, asked by OpenSSL over HTTP: `openssl ocsp -url`
//! verifies our P-256 answers (delegated responder, nonce) and sees a revocation made while the
//! responder runs within seconds; an SM2 CA's responder answers with SM3 CertIDs; junk gets
//! `malformedRequest` and a certificate of another CA `unauthorized`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use claimlink_testkit::{openssl, run, run_ok};

const PASS: &str = "correct horse battery staple";

fn claimlink(d: &Path, args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_claimlink"))
        .current_dir(d)
        .env_remove("CLAIMLINK_CA_PASSPHRASE")
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "claimlink {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

struct Responder(Child, String);

impl Drop for Responder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(d: &Path, ca: &str) -> Responder {
    let mut child = Command::new(env!("CARGO_BIN_EXE_claimlink"))
        .current_dir(d)
        .args(["ca", "ocsp-responder", "--ca", ca, "--passphrase-file", "pass", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().rsplit(' ').next().unwrap().to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{line}");
    Responder(child, url)
}

fn make_ca(d: &Path, alg: &str, dir: &str) {
    claimlink(
        d,
        &[
            "ca",
            "init",
            "--algorithm",
            alg,
            "--subject",
            &format!("CN=OCSP {alg} CA,O=claimlink,C=CN"),
            "--out",
            dir,
            "--passphrase-file",
            "pass",
        ],
    );
}

fn leaf(d: &Path, ca: &str, alg: &str, name: &str) {
    let genpkey: &[&str] = if alg == "sm2" {
        &["genpkey", "-algorithm", "SM2"]
    } else {
        &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]
    };
    run_ok(Command::new("openssl").current_dir(d).args(genpkey).args(["-out", &format!("{name}.key")]));
    let mut req = Command::new("openssl");
    req.current_dir(d).args([
        "req",
        "-new",
        "-subj",
        &format!("/CN={name}"),
        "-key",
        &format!("{name}.key"),
        "-out",
        &format!("{name}.csr"),
    ]);
    if alg == "sm2" {
        req.args(["-sm3", "-sigopt", "distid:1234567812345678"]);
    }
    run_ok(&mut req);
    claimlink(
        d,
        &[
            "ca",
            "sign-csr",
            "--ca",
            ca,
            "--passphrase-file",
            "pass",
            "--csr",
            &format!("{name}.csr"),
            "--profile",
            "claim-thing",
            "--out",
            &format!("{name}.pem"),
        ],
    );
}

fn ask(d: &Path, args: &[&str]) -> String {
    let o = run(Command::new("openssl").current_dir(d).arg("ocsp").args(args));
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn openssl_asks_our_responder_over_http() {
    if openssl("ocsp_cli").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("pass"), format!("{PASS}\n")).unwrap();
    make_ca(d, "p256", "ca");
    leaf(d, "ca", "p256", "a");
    leaf(d, "ca", "p256", "b");
    claimlink(d, &["ca", "revoke", "--ca", "ca", "--cert", "a.pem", "--reason", "keyCompromise"]);
    let r = start(d, "ca");
    let common = ["-issuer", "ca/issuing-ca.pem", "-CAfile", "ca/chain.pem", "-url"];
    let out = ask(d, &[&common[..], &[&r.1, "-cert", "a.pem", "-cert", "b.pem"]].concat());
    assert!(out.contains("Response verify OK"), "{out}");
    assert!(out.contains("a.pem: revoked") && out.contains("b.pem: good"), "{out}");
    assert!(out.contains("Reason: keyCompromise"), "{out}");
    assert!(!out.to_lowercase().contains("nonce"), "the nonce came back: {out}");
    // Without a nonce (served from the cache the second time), still verified.
    for _ in 0..2 {
        let out = ask(d, &[&common[..], &[&r.1, "-cert", "b.pem", "-no_nonce"]].concat());
        assert!(out.contains("Response verify OK") && out.contains("b.pem: good"), "{out}");
    }
    // Revoked while the responder runs: seen within seconds, the cache notwithstanding.
    claimlink(d, &["ca", "revoke", "--ca", "ca", "--cert", "b.pem", "--reason", "superseded"]);
    let start_at = Instant::now();
    loop {
        let out = ask(d, &[&common[..], &[&r.1, "-cert", "b.pem", "-no_nonce"]].concat());
        if out.contains("b.pem: revoked") {
            break;
        }
        assert!(start_at.elapsed() < Duration::from_secs(5), "still not revoked: {out}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // A certificate of another CA: unauthorized. Junk: malformedRequest.
    make_ca(d, "p256", "other");
    leaf(d, "other", "p256", "c");
    let out = ask(d, &["-issuer", "other/issuing-ca.pem", "-cert", "c.pem", "-url", &r.1, "-noverify"]);
    assert!(out.to_lowercase().contains("unauthorized"), "{out}");
    let junk = std::process::Command::new("python3")
        .args(["-c", &format!("import urllib.request as u; print(u.urlopen(u.Request('{}/', data=b'junk', headers={{'Content-Type': 'application/ocsp-request'}})).read().hex())", r.1)])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&junk.stdout).trim(), "30030a0101", "malformedRequest");
    drop(r);

    // An SM2 CA: SM3 CertIDs; OpenSSL 3.0 reads the statuses (it cannot verify SM2 here).
    make_ca(d, "sm2", "gm");
    leaf(d, "gm", "sm2", "g");
    claimlink(d, &["ca", "revoke", "--ca", "gm", "--cert", "g.pem", "--reason", "cACompromise"]);
    let r = start(d, "gm");
    let out = ask(
        d,
        &["-sm3", "-issuer", "gm/issuing-ca.pem", "-cert", "g.pem", "-url", &r.1, "-noverify", "-resp_text"],
    );
    assert!(out.contains("g.pem: revoked") && out.contains("Reason: cACompromise"), "{out}");
    assert!(out.contains("SM2-with-SM3") || out.contains("sm2sign-with-sm3"), "{out}");
}
