//! The CA system as a service (`claimlink ca serve`), driven the way its users drive it: the
//! `claimlink ca ra` verbs and plain HTTP. A claim-thing, a device and an endpoint certificate
//! are applied for, reviewed, issued and revoked; the five roles are held to their table; the
//! published CRL and OCSP are checked by OpenSSL at the URLs the certificates name; a renewal
//! passes the review policy; dual certificates come with an envelope OpenSSL opens; the audit
//! log verifies, and a row changed in the database afterwards is found.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use claimlink_testkit::{http_json, openssl, run_ok};
use serde_json::Value;

const PASS: &str = "correct horse battery staple";

fn claimlink(d: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_claimlink"))
        .current_dir(d)
        .env_remove("CLAIMLINK_CA_PASSPHRASE")
        .env_remove("CLAIMLINK_CA_TOKEN_FILE")
        .env_remove("CLAIMLINK_CA_URL")
        .args(args)
        .output()
        .unwrap()
}

fn ok(d: &Path, args: &[&str]) -> String {
    let o = claimlink(d, args);
    assert!(o.status.success(), "claimlink {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

struct Service {
    child: Child,
    addr: SocketAddr,
    url: String,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Service {
    /// `claimlink ca ra <verb> ...` with a token file; JSON out, or the refusal's exit code 254.
    fn ra(&self, d: &Path, token: Option<&str>, args: &[&str]) -> Result<Value, String> {
        let mut full = vec!["ca", "ra", "--endpoint-url", &self.url];
        if let Some(t) = token {
            full.extend(["--token-file", t]);
        }
        full.extend(args);
        let o = claimlink(d, &full);
        match o.status.code() {
            Some(0) => Ok(serde_json::from_slice(&o.stdout).unwrap()),
            Some(254) => Err(String::from_utf8_lossy(&o.stderr).into_owned()),
            other => panic!("claimlink {full:?} exited {other:?}: {}", String::from_utf8_lossy(&o.stderr)),
        }
    }

    /// Applies for a claim-thing certificate as a renewal of `cert`, proven with `key`.
    fn renew(&self, d: &Path, csr: &str, cert: &str, key: &str, token_out: &str) -> Result<Value, String> {
        let args =
            ["apply", "--profile", "claim-thing", "--csr", csr, "--renew-cert", cert, "--renew-key", key];
        self.ra(d, None, &[&args[..], &["--token-out", token_out]].concat())
    }

    fn get(&self, path: &str) -> (u16, Vec<u8>) {
        let mut s = std::net::TcpStream::connect(self.addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: ca\r\nConnection: close\r\n\r\n").unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        assert!(!head.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{head}");
        (status, raw[end + 4..].to_vec())
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start(d: &Path, ca: &str, port: u16) -> Service {
    let mut child = Command::new(env!("CARGO_BIN_EXE_claimlink"))
        .current_dir(d)
        .env_remove("CLAIMLINK_CA_PASSPHRASE")
        .args([
            "ca",
            "serve",
            "--ca",
            ca,
            "--passphrase-file",
            "pass",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains(" on http://") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "ca serve ended before it listened");
    }
    let url = line.trim().rsplit(' ').next().unwrap().to_owned();
    let addr = url.trim_start_matches("http://").parse().unwrap();
    Service { child, addr, url }
}

fn make_ca(d: &Path, alg: &str, dir: &str, port: u16) {
    ok(
        d,
        &[
            "ca",
            "init",
            "--algorithm",
            alg,
            "--subject",
            &format!("CN=RA {alg} CA,O=claimlink,C=CN"),
            "--out",
            dir,
            "--passphrase-file",
            "pass",
            "--public-url",
            &format!("http://127.0.0.1:{port}"),
        ],
    );
}

/// A key and CSR made by OpenSSL.
fn csr(d: &Path, alg: &str, stem: &str, subject: &str) {
    let genpkey: &[&str] = if alg == "sm2" {
        &["genpkey", "-algorithm", "SM2"]
    } else {
        &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]
    };
    run_ok(Command::new("openssl").current_dir(d).args(genpkey).args(["-out", &format!("{stem}.key")]));
    let mut req = Command::new("openssl");
    req.current_dir(d).args([
        "req",
        "-new",
        "-subj",
        subject,
        "-key",
        &format!("{stem}.key"),
        "-out",
        &format!("{stem}.csr"),
    ]);
    if alg == "sm2" {
        req.args(["-sm3", "-sigopt", "distid:1234567812345678"]);
    }
    run_ok(&mut req);
}

fn openssl_text(d: &Path, args: &[&str]) -> String {
    let o = Command::new("openssl").current_dir(d).args(args).output().unwrap();
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn token(d: &Path, file: &str) -> String {
    std::fs::read_to_string(d.join(file)).unwrap().trim().to_owned()
}

/// A fresh directory with a passphrase, a CA of `alg` published at a free port, and its CA
/// system serving there; `None` (skipped, or a failure under CI) without OpenSSL.
fn ca_system(alg: &str) -> Option<(tempfile::TempDir, u16, Service)> {
    openssl("ca_service")?;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("pass"), PASS).unwrap();
    let port = free_port();
    make_ca(d, alg, "ca", port);
    let svc = start(d, "ca", port);
    Some((tmp, port, svc))
}

#[test]
fn applied_reviewed_issued_revoked_and_published_under_five_roles() {
    let Some((tmp, port, svc)) = ca_system("p256") else { return };
    let d = tmp.path();
    let sup = "ca/super-admin.token";
    assert!(token(d, sup).starts_with("cas_"));
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(d.join(sup)).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "the super administrator's token is its user's alone");

    // Appointments follow the table: the super administrator appoints business and audit
    // administrators and auditors, never operators; the business administrator appoints
    // operators.
    let appoint = |by: &str, name: &str, role: &str| {
        svc.ra(
            d,
            Some(by),
            &[
                "create-administrator",
                "--name",
                name,
                "--role",
                role,
                "--token-out",
                &format!("{name}.token"),
            ],
        )
    };
    appoint(sup, "ba", "business-administrator").unwrap();
    appoint(sup, "aa", "audit-administrator").unwrap();
    appoint(sup, "au", "auditor").unwrap();
    let e = appoint(sup, "op0", "business-operator").unwrap_err();
    assert!(e.contains("AccessDeniedException"), "{e}");
    appoint("ba.token", "op1", "business-operator").unwrap();
    appoint("ba.token", "op2", "business-operator").unwrap();
    let e = appoint("op1.token", "op3", "business-operator").unwrap_err();
    assert!(e.contains("AccessDeniedException"), "{e}");

    // A claim-thing applies; nothing is issued until an operator approves.
    csr(d, "p256", "ct", "/CN=Acme claim-thing/O=Acme");
    let applied = svc
        .ra(d, None, &["apply", "--profile", "claim-thing", "--csr", "ct.csr", "--token-out", "ct.app"])
        .unwrap();
    assert_eq!(applied["status"], "PENDING_REVIEW");
    assert!(!applied.to_string().contains("app_"), "the download token is not printed: {applied}");
    let ct_id = applied["applicationId"].as_str().unwrap().to_owned();
    let e = svc
        .ra(d, Some("ct.app"), &["get-certificate", "--application-id", &ct_id, "--out", "ct"])
        .unwrap_err();
    assert!(e.contains("PENDING_REVIEW"), "{e}");
    // The auditor and the super administrator may not review; a stranger's token sees nothing.
    for who in ["au.token", sup, "ba.token"] {
        let e = svc.ra(d, Some(who), &["approve-application", "--application-id", &ct_id]).unwrap_err();
        assert!(e.contains("AccessDeniedException"), "{who}: {e}");
    }
    std::fs::write(
        d.join("stranger.app"),
        "app_0000000000000000000000000000000000000000000000000000000000000000",
    )
    .unwrap();
    let e =
        svc.ra(d, Some("stranger.app"), &["describe-application", "--application-id", &ct_id]).unwrap_err();
    assert!(e.contains("ResourceNotFoundException"), "{e}");
    let (status, _) = http_json(svc.addr, "GET", "/applications", None, "");
    assert_eq!(status, 401);
    let issued = svc.ra(d, Some("op1.token"), &["approve-application", "--application-id", &ct_id]).unwrap();
    assert_eq!(issued["status"], "ISSUED");
    svc.ra(d, Some("ct.app"), &["get-certificate", "--application-id", &ct_id, "--out", "ct"]).unwrap();
    let text = openssl_text(d, &["x509", "-in", "ct/cert.pem", "-noout", "-text", "-serial"]);
    assert!(text.contains(&format!("URI:http://127.0.0.1:{port}/crl/issuing.crl")), "{text}");
    assert!(
        text.contains("Freshest CRL")
            && text.contains(&format!("URI:http://127.0.0.1:{port}/crl/issuing-delta.crl")),
        "{text}"
    );
    assert!(text.contains(&format!("OCSP - URI:http://127.0.0.1:{port}/ocsp")), "{text}");
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    let serial = text.lines().find_map(|l| l.strip_prefix("serial=")).unwrap().to_owned();
    std::fs::write(d.join("root.pem"), std::fs::read(d.join("ca/root-ca.pem")).unwrap()).unwrap();
    let v =
        openssl_text(d, &["verify", "-CAfile", "root.pem", "-untrusted", "ca/issuing-ca.pem", "ct/cert.pem"]);
    assert!(v.contains("ct/cert.pem: OK"), "{v}");
    // The issuing CA's certificate names the root's CRL and OCSP.
    let text = openssl_text(d, &["x509", "-in", "ca/issuing-ca.pem", "-noout", "-text"]);
    assert!(text.contains(&format!("URI:http://127.0.0.1:{port}/crl/root.crl")), "{text}");

    // A device application is rejected; an endpoint certificate is issued with its names.
    let thing = "0123456789abcdef0123456789abcdef";
    csr(d, "p256", "dev0", &format!("/CN=lamp/serialNumber={thing}"));
    let e = svc
        .ra(d, None, &["apply", "--profile", "device", "--csr", "dev0.csr", "--token-out", "dev0.app"])
        .unwrap_err();
    assert!(e.contains("both CN and serialNumber"), "{e}");
    csr(d, "p256", "dev", &format!("/CN={thing}/serialNumber={thing}"));
    let dev = svc
        .ra(d, None, &["apply", "--profile", "device", "--csr", "dev.csr", "--token-out", "dev.app"])
        .unwrap();
    let dev_id = dev["applicationId"].as_str().unwrap().to_owned();
    let r = svc
        .ra(
            d,
            Some("op2.token"),
            &["reject-application", "--application-id", &dev_id, "--reason", "unknown batch"],
        )
        .unwrap();
    assert_eq!(r["status"], "REJECTED");
    let e = svc.ra(d, Some("op1.token"), &["approve-application", "--application-id", &dev_id]).unwrap_err();
    assert!(e.contains("REJECTED"), "a decided application stays decided: {e}");
    csr(d, "p256", "srv", "/CN=endpoint.example/O=Acme");
    let srv = svc
        .ra(
            d,
            None,
            &[
                "apply",
                "--profile",
                "server",
                "--csr",
                "srv.csr",
                "--dns",
                "endpoint.example",
                "--token-out",
                "srv.app",
            ],
        )
        .unwrap();
    let srv_id = srv["applicationId"].as_str().unwrap().to_owned();
    svc.ra(d, Some("op2.token"), &["approve-application", "--application-id", &srv_id]).unwrap();
    svc.ra(d, Some("srv.app"), &["get-certificate", "--application-id", &srv_id, "--out", "srv"]).unwrap();
    let text = openssl_text(
        d,
        &["x509", "-in", "srv/cert.pem", "-noout", "-ext", "subjectAltName,extendedKeyUsage"],
    );
    assert!(
        text.contains("DNS:endpoint.example") && text.contains("TLS Web Server Authentication"),
        "{text}"
    );

    // Bad applications change nothing.
    for body in [
        r#"{"profile":"claim-thing","csr":"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"}"#,
        r#"{"profile":"root","csr":""}"#,
        r#"{"profile":"claim-thing","csr":"x","extra":1}"#,
    ] {
        let (status, json) = http_json(svc.addr, "POST", "/applications", None, body);
        assert_eq!(status, 400, "{body}: {json}");
    }
    let big = serde_json::json!({ "profile": "claim-thing", "csr": "A".repeat(9000) }).to_string();
    let (status, json) = http_json(svc.addr, "POST", "/applications", None, &big);
    assert!(status == 400 && json.contains("at most 8192 bytes"), "{status} {json}");
    let pending = svc.ra(d, Some("op1.token"), &["list-applications", "--status", "PENDING_REVIEW"]).unwrap();
    assert!(
        pending["applications"].as_array().unwrap().is_empty(),
        "refused applications are not stored: {pending}"
    );
    let e = svc
        .ra(d, None, &["apply", "--profile", "server", "--csr", "srv.csr", "--token-out", "x.app"])
        .unwrap_err();
    assert!(e.contains("dns or ips"), "{e}");

    // A renewal proven with the current key passes the policy; one signed by another key does not.
    csr(d, "p256", "ct2", "/CN=Acme claim-thing/O=Acme");
    let e = svc.renew(d, "ct2.csr", "ct/cert.pem", "srv.key", "bad.app").unwrap_err();
    assert!(e.contains("does not verify"), "{e}");
    let renewed = svc.renew(d, "ct2.csr", "ct/cert.pem", "ct.key", "ct2.app").unwrap();
    assert_eq!(renewed["status"], "ISSUED", "{renewed}");
    let ct2_id = renewed["applicationId"].as_str().unwrap().to_owned();
    svc.ra(d, Some("ct2.app"), &["get-certificate", "--application-id", &ct2_id, "--out", "ct2"]).unwrap();

    // Revocation: asked by one operator, approved by another, never by the one who asked.
    let e = svc
        .ra(d, Some("op1.token"), &["request-revocation", "--serial", &serial, "--reason", "notAReason"])
        .unwrap_err();
    assert!(e.contains("reason"), "{e}");
    let req = svc
        .ra(d, Some("op1.token"), &["request-revocation", "--serial", &serial, "--reason", "keyCompromise"])
        .unwrap();
    let req_id = req["requestId"].as_str().unwrap().to_owned();
    let e = svc.ra(d, Some("op1.token"), &["approve-revocation", "--request-id", &req_id]).unwrap_err();
    assert!(e.contains("other than the one who asked"), "{e}");
    let status = svc.ra(d, None, &["describe-certificate", "--serial", &serial]).unwrap();
    assert_eq!(status["status"], "GOOD");
    let done = svc.ra(d, Some("op2.token"), &["approve-revocation", "--request-id", &req_id]).unwrap();
    assert_eq!(done["status"], "REVOKED");
    let status = svc.ra(d, None, &["describe-certificate", "--serial", &serial]).unwrap();
    assert_eq!(status["status"], "REVOKED");
    assert_eq!(status["revocation"]["reason"], "keyCompromise");

    // The delta CRL at the freshestCRL point the certificate names: signed by the issuing CA,
    // listing the serial, over the full CRL at its distribution point (which does not list it
    // until it is re-signed); OCSP at the URL it names says revoked, and good for the renewal.
    let (code, crl) = svc.get("/crl/issuing-delta.crl");
    assert_eq!(code, 200);
    std::fs::write(d.join("delta.crl"), crl).unwrap();
    let text = openssl_text(
        d,
        &["crl", "-inform", "DER", "-in", "delta.crl", "-CAfile", "ca/issuing-ca.pem", "-noout", "-text"],
    );
    assert!(text.contains("verify OK") && text.contains("Delta CRL Indicator"), "{text}");
    assert!(text.contains(&format!("Serial Number: {serial}")) && text.contains("Key Compromise"), "{text}");
    let (code, full) = svc.get("/crl/issuing.crl");
    assert_eq!(code, 200);
    std::fs::write(d.join("issuing.crl"), full).unwrap();
    let text = openssl_text(
        d,
        &["crl", "-inform", "DER", "-in", "issuing.crl", "-CAfile", "ca/issuing-ca.pem", "-noout", "-text"],
    );
    assert!(text.contains("verify OK") && !text.contains("Delta CRL Indicator"), "{text}");
    // Our reader applies the delta on its base and finds the serial.
    let parse =
        |f: &str| claimlink_pki::crl::Crl::from_der(std::fs::read(d.join(f)).unwrap(), 1 << 26).unwrap();
    let issuing_ca =
        claimlink_pki::Certificate::from_pem(&std::fs::read(d.join("ca/issuing-ca.pem")).unwrap()).unwrap();
    let mut index = claimlink_pki::crl::RevocationIndex::default();
    index.apply(&issuing_ca, &parse("issuing.crl")).unwrap();
    index.apply(&issuing_ca, &parse("delta.crl")).unwrap();
    let leaf = claimlink_pki::Certificate::chain_from_pem(&std::fs::read(d.join("ct/cert.pem")).unwrap())
        .unwrap()
        .remove(0);
    assert!(index.is_revoked(&issuing_ca, &leaf));
    let (code, _) = svc.get("/crl/other.crl");
    assert_eq!(code, 404);
    let ask = |cert: &str| {
        openssl_text(
            d,
            &[
                "ocsp",
                "-issuer",
                "ca/issuing-ca.pem",
                "-cert",
                cert,
                "-url",
                &format!("{}/ocsp", svc.url),
                "-CAfile",
                "root.pem",
                "-VAfile",
                "ca/ocsp-issuing.pem",
            ],
        )
    };
    let a = ask("ct/cert.pem");
    assert!(a.contains("Response verify OK") && a.contains("ct/cert.pem: revoked"), "{a}");
    let a = ask("ct2/cert.pem");
    assert!(a.contains("ct2/cert.pem: good"), "{a}");
    // A revoked certificate cannot be renewed, and the applicant may ask to revoke only its own.
    csr(d, "p256", "ct3", "/CN=Acme claim-thing/O=Acme");
    let e = svc.renew(d, "ct3.csr", "ct/cert.pem", "ct.key", "ct3.app").unwrap_err();
    assert!(e.contains("revoked"), "{e}");
    let srv_serial = openssl_text(d, &["x509", "-in", "srv/cert.pem", "-noout", "-serial"]);
    let srv_serial = srv_serial.trim().trim_start_matches("serial=");
    let e = svc
        .ra(d, Some("ct2.app"), &["request-revocation", "--serial", srv_serial, "--reason", "superseded"])
        .unwrap_err();
    assert!(e.contains("ResourceNotFoundException"), "{e}");
    let own = svc
        .ra(d, Some("srv.app"), &["request-revocation", "--serial", srv_serial, "--reason", "superseded"])
        .unwrap();
    assert_eq!(own["status"], "PENDING_REVIEW");

    // The audit roles read and verify, and change nothing; the auditor sees the business, the
    // audit administrator appointments too.
    let rows = svc.ra(d, Some("au.token"), &["get-audit-log"]).unwrap();
    let actions: Vec<&str> =
        rows["rows"].as_array().unwrap().iter().map(|r| r["action"].as_str().unwrap()).collect();
    for a in ["apply", "issue", "reject", "request-revocation", "revoke"] {
        assert!(actions.contains(&a), "{a} in {actions:?}");
    }
    assert!(!actions.contains(&"appoint"), "{actions:?}");
    let rows = svc.ra(d, Some("aa.token"), &["get-audit-log"]).unwrap();
    let all = rows["rows"].as_array().unwrap();
    assert!(all.iter().any(|r| r["action"] == "appoint" && r["target"] == "op1"));
    assert!(all.iter().any(|r| r["result"] == "refused" && r["actor"] == "au"), "refusals are audited");
    for who in ["au.token", "aa.token"] {
        for args in [
            &["request-revocation", "--serial", srv_serial, "--reason", "superseded"][..],
            &["set-review-policy", "--auto-approve-renewals", "false"][..],
            &["create-administrator", "--name", "x", "--role", "auditor", "--token-out", "x.token"][..],
        ] {
            let e = svc.ra(d, Some(who), args).unwrap_err();
            assert!(e.contains("AccessDeniedException"), "{who} {args:?}: {e}");
        }
    }
    let check = svc.ra(d, Some("au.token"), &["verify-audit-log"]).unwrap();
    assert_eq!(check["valid"], true, "{check}");
    let rows_before = check["rows"].as_i64().unwrap();
    assert!(rows_before > 20, "{check}");
    let e = svc.ra(d, Some("op1.token"), &["verify-audit-log"]).unwrap_err();
    assert!(e.contains("AccessDeniedException"), "{e}");

    // A row changed in the database behind the service's back is found.
    drop(svc);
    let db = d.join("ca/ra.db");
    let o = Command::new("sqlite3")
        .arg(&db)
        .arg("UPDATE ca_audit SET detail = 'serial=00 reason=superseded' WHERE action = 'revoke'")
        .output();
    let Ok(o) = o else {
        claimlink_testkit::missing::<()>("ca_service", "sqlite3", "apt-get install sqlite3");
        return;
    };
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let svc = start(d, "ca", port);
    let check = svc.ra(d, Some("au.token"), &["verify-audit-log"]).unwrap();
    assert_eq!(check["valid"], false, "{check}");
    let revoke_seq = {
        let rows = svc.ra(d, Some("aa.token"), &["get-audit-log"]).unwrap();
        rows["rows"].as_array().unwrap().iter().find(|r| r["action"] == "revoke").unwrap()["seq"]
            .as_i64()
            .unwrap()
    };
    assert_eq!(check["firstBadSeq"], revoke_seq, "{check}");
    // The CAs as records; the root revoking the issuing CA (on the CLI, beside the service)
    // shows within seconds, and the root's CRL at its distribution point lists it.
    let cas = svc.ra(d, None, &["list-cas"]).unwrap();
    assert_eq!(cas["cas"][1]["role"], "issuing");
    assert_eq!(cas["cas"][1]["status"], "ACTIVE", "{cas}");
    ok(
        d,
        &[
            "ca",
            "revoke",
            "--ca",
            "ca",
            "--by",
            "root",
            "--cert",
            "ca/issuing-ca.pem",
            "--reason",
            "cACompromise",
        ],
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let cas = svc.ra(d, None, &["list-cas"]).unwrap();
        if cas["cas"][1]["status"] == "REVOKED" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{cas}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // The root's delta CRL lists it once the service's watcher has seen the index change
    // (within a second; OCSP and the CRLs each look every second).
    let text = loop {
        let (_, root_crl) = svc.get("/crl/root-delta.crl");
        std::fs::write(d.join("root.crl"), root_crl).unwrap();
        let text = openssl_text(
            d,
            &["crl", "-inform", "DER", "-in", "root.crl", "-CAfile", "root.pem", "-noout", "-text"],
        );
        if text.contains("CA Compromise")
            || std::time::Instant::now() > deadline + std::time::Duration::from_secs(3)
        {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(text.contains("verify OK") && text.contains("CA Compromise"), "{text}");

    // The CRL survives the restart, re-signed from the same index.
    let (_, crl) = svc.get("/crl/issuing.crl");
    std::fs::write(d.join("issuing2.crl"), crl).unwrap();
    let text = openssl_text(d, &["crl", "-inform", "DER", "-in", "issuing2.crl", "-noout", "-text"]);
    assert!(text.contains(&format!("Serial Number: {serial}")), "{text}");
}

#[test]
fn dual_certificates_through_the_ra_open_with_openssl() {
    let Some((tmp, _, svc)) = ca_system("sm2") else { return };
    let d = tmp.path();
    let sup = "ca/super-admin.token";
    svc.ra(
        d,
        Some(sup),
        &[
            "create-administrator",
            "--name",
            "ba",
            "--role",
            "business-administrator",
            "--token-out",
            "ba.token",
        ],
    )
    .unwrap();
    // The business administrator lets dual server certificates through without an operator.
    let p = svc
        .ra(
            d,
            Some("ba.token"),
            &[
                "set-review-policy",
                "--auto-approve-renewals",
                "true",
                "--auto-approve-profile",
                "dual-server",
            ],
        )
        .unwrap();
    assert_eq!(p["autoApproveProfiles"][0], "dual-server");
    let e =
        svc.ra(d, Some("ba.token"), &["set-review-policy", "--auto-approve-profile", "root"]).unwrap_err();
    assert!(e.contains("not a profile"), "{e}");
    csr(d, "sm2", "gw", "/CN=tlcp.example/O=Acme");
    let a = svc
        .ra(
            d,
            None,
            &[
                "apply",
                "--profile",
                "dual-server",
                "--csr",
                "gw.csr",
                "--dns",
                "tlcp.example",
                "--token-out",
                "gw.app",
            ],
        )
        .unwrap();
    assert_eq!(a["status"], "ISSUED", "{a}");
    let id = a["applicationId"].as_str().unwrap().to_owned();
    svc.ra(d, Some("gw.app"), &["get-certificate", "--application-id", &id, "--out", "gw"]).unwrap();
    let sign =
        openssl_text(d, &["x509", "-in", "gw/cert.pem", "-noout", "-ext", "keyUsage,crlDistributionPoints"]);
    assert!(sign.contains("Digital Signature") && sign.contains("/crl/issuing.crl"), "{sign}");
    let enc = openssl_text(d, &["x509", "-in", "gw/enc.pem", "-noout", "-subject", "-ext", "keyUsage"]);
    assert!(enc.contains("Key Encipherment") && !enc.contains("Digital Signature"), "{enc}");
    assert!(enc.contains("CN = tlcp.example"), "same subject: {enc}");
    // OpenSSL alone opens the envelope with the signing key; the scalar is the encryption
    // certificate's key.
    let scalar = claimlink_testkit::openssl_open_envelope(
        d,
        &std::fs::read(d.join("gw/enc-key.env")).unwrap(),
        "gw.key",
    );
    assert_eq!(scalar.len(), 32);
    let key = claimlink_gm::Sm2PrivateKey::from_bytes(&scalar).unwrap();
    let cert = claimlink_pki::Certificate::from_pem(&std::fs::read(d.join("gw/enc.pem")).unwrap()).unwrap();
    match cert.public_key().unwrap() {
        claimlink_pki::PublicKey::Sm2(k) => assert_eq!(k, key.public_key()),
        other => panic!("{}", other.kind()),
    }
    // SM2 CRL from the service: the signature checked by OpenSSL with the SM2 ID.
    let (code, crl) = svc.get("/crl/issuing.crl");
    assert_eq!(code, 200);
    let crl = claimlink_pki::crl::Crl::from_der(crl, claimlink_pki::crl::DEFAULT_MAX_CRL_LEN).unwrap();
    std::fs::write(d.join("tbs"), crl.tbs_der()).unwrap();
    std::fs::write(d.join("sig"), crl.signature()).unwrap();
    run_ok(Command::new("openssl").current_dir(d).args([
        "x509",
        "-in",
        "ca/issuing-ca.pem",
        "-pubkey",
        "-noout",
        "-out",
        "issuing.pub",
    ]));
    let v = openssl_text(
        d,
        &[
            "dgst",
            "-sm3",
            "-verify",
            "issuing.pub",
            "-sigopt",
            "distid:1234567812345678",
            "-signature",
            "sig",
            "tbs",
        ],
    );
    assert!(v.contains("Verified OK"), "{v}");
}
