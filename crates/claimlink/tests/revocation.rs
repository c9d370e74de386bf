//! Revocation at the handshake, against a real `claimlink up`: the manufacturer revokes a
//! device's birth certificate (`claimlink ca revoke`, `claimlink ca crl`), the staging
//! administrator applies the CRL (`PUT /staging/crls`); the device's live session ends at once,
//! its next handshake is refused, a restart keeps refusing it, another device is untouched;
//! the root then revokes the issuing CA and every device under it is refused. Bad, forged and
//! stale CRLs change nothing. Through `up`'s CA system (the SM2 module maker's RA), a revocation
//! asked by one operator and approved by another ends the device's session at staging and at
//! the account within a second, with nothing uploaded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod platform;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use platform::Platform;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

type Session = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS connection to staging MQTT with `thing`'s birth certificate and an MQTT 3.1.1 CONNECT
/// as that thing; the session once CONNACK says accepted, else why not.
fn connect(p: &Platform, thing: &str) -> Result<Session, String> {
    let dir = tempfile::tempdir().unwrap();
    let (chain, key) = p.device_files(thing, dir.path());
    connect_as(p, Path::new(&chain), Path::new(&key), thing)
}

/// The same with any certificate chain and key (PEM files) and client id.
fn connect_as(p: &Platform, chain: &Path, key: &Path, client_id: &str) -> Result<Session, String> {
    let thing = client_id;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(p.endpoint_ca()).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(claimlink_tls::provider_preferring_sm()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(chain).unwrap().map(Result::unwrap).collect(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap();
    let conn =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("staging.localhost").unwrap())
            .unwrap();
    let sock = TcpStream::connect(("127.0.0.1", p.staging_mqtt)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut s = rustls::StreamOwned::new(conn, sock);
    let id = thing.as_bytes();
    let mut packet = vec![0x10, (12 + id.len()) as u8, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
    packet.extend_from_slice(&(id.len() as u16).to_be_bytes());
    packet.extend_from_slice(id);
    s.write_all(&packet).map_err(|e| format!("CONNECT not sent: {e}"))?;
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).map_err(|e| format!("no CONNACK: {e}"))?;
    if connack != [0x20, 0x02, 0x00, 0x00] {
        return Err(format!("CONNACK {connack:02x?}"));
    }
    Ok(s)
}

/// How long until the server ends `s` (end of stream or an error), at most 10 s.
fn time_to_close(s: &mut Session) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return start.elapsed(),
            Ok(_) => continue, // a DISCONNECT or a delivery; the close follows
        }
    }
}

fn claimlink(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_claimlink")).args(args).output().unwrap();
    assert!(out.status.success(), "claimlink {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn upload(p: &Platform, body: &str) -> (u16, serde_json::Value) {
    let root = p.read("endpoint-ca.pem");
    let token = p.read("staging-admin-token");
    let tls = claimlink_testkit::Tls { server_name: "staging.localhost", root_pem: &root, client: None };
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], p.staging_api));
    let (status, text) =
        claimlink_testkit::https_json(addr, &tls, "PUT", "/staging/crls", Some(token.trim()), body).unwrap();
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::Null))
}

fn crl_of(p: &Platform, ca: &str, by: &str, out: &Path) -> Vec<u8> {
    let pass = p.data("ca-passphrase");
    let ca_dir = p.data(ca);
    let out_s = out.to_string_lossy();
    claimlink(&["ca", "crl", "--ca", &ca_dir, "--by", by, "--passphrase-file", &pass, "--out", &out_s]);
    std::fs::read(out).unwrap()
}

fn text(b: Vec<u8>) -> String {
    String::from_utf8(b).unwrap()
}

#[test]
fn a_revoked_birth_certificate_is_dropped_and_refused_and_stays_refused() {
    let mut p = Platform::up("revocation");
    // The P-256 module maker: its CA runs elsewhere (the SM2 one publishes through `up`'s CA
    // system, tested below), so its CRLs reach staging only by upload.
    let devices = p.devices();
    let (victim, bystander) = (devices[0].clone(), devices[1].clone());
    let ca_dir = p.data("manufacturer-ca");
    let issuing = std::fs::read_to_string(p.data("manufacturer-ca/issuing-ca.pem")).unwrap();
    let dir = tempfile::tempdir().unwrap();

    let mut live = connect(&p, &victim).expect("the victim connects before it is revoked");
    let mut other = connect(&p, &bystander).expect("the bystander connects");

    // Bad input changes nothing: junk, a CRL alone that no trusted CA signed, and a CRL of a
    // CA whose chain is not given.
    assert_eq!(upload(&p, "not a CRL").0, 400);
    let empty = text(crl_of(&p, "manufacturer-ca", "issuing", &dir.path().join("empty.pem")));
    let (status, body) = upload(&p, &empty);
    assert_eq!(status, 400, "{body}");
    assert!(body["message"].as_str().unwrap().contains("not signed by a trusted CA"), "{body}");

    // The manufacturer revokes the victim's birth certificate and publishes a CRL.
    let cert = p.bundle(&victim).join("cert.pem");
    let said = claimlink(&[
        "ca",
        "revoke",
        "--ca",
        &ca_dir,
        "--cert",
        &cert.to_string_lossy(),
        "--reason",
        "keyCompromise",
    ]);
    assert!(said.contains("keyCompromise"), "{said}");
    let crl = text(crl_of(&p, "manufacturer-ca", "issuing", &dir.path().join("crl.pem")));
    let (status, body) = upload(&p, &format!("{crl}{issuing}"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["revokedCertificates"].as_u64(), body["sessionsEnded"].as_u64()),
        (Some(1), Some(1)),
        "{body}"
    );
    let closed_in = time_to_close(&mut live);
    assert!(
        closed_in < Duration::from_secs(1),
        "the revoked session lasted {closed_in:?} after the CRL was applied"
    );
    let refused = connect(&p, &victim).expect_err("a revoked birth certificate is refused");
    eprintln!("victim refused: {refused}");
    // The bystander's session is still up and it can connect again.
    other.sock.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut b = [0u8; 1];
    assert!(
        matches!(other.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut)
    );
    drop(other);
    connect(&p, &bystander).expect("a device the CRL does not name is untouched");

    // The same CRL again is not newer: refused, nothing changes.
    let (status, body) = upload(&p, &format!("{crl}{issuing}"));
    assert_eq!(status, 400, "{body}");
    assert!(body["message"].as_str().unwrap().contains("not newer"), "{body}");

    // A restart keeps refusing it: the CRL was stored with what it revokes.
    p.restart("revocation");
    assert!(connect(&p, &victim).is_err(), "the victim is admitted again after a restart");
    connect(&p, &bystander).expect("the bystander connects after the restart");
    let (status, list) = p.staging_admin("GET", "/staging/crls", None);
    assert_eq!(status, 200, "{list}");
    let revoking: Vec<_> =
        list["crls"].as_array().unwrap().iter().filter(|c| c["revokedCertificates"] == 1).collect();
    assert_eq!(revoking.len(), 1, "{list}");

    // The root revokes the issuing CA: every device under it is refused, its sessions end.
    let mut bystander_live = connect(&p, &bystander).unwrap();
    let issuing_path = p.data("manufacturer-ca/issuing-ca.pem");
    claimlink(&[
        "ca",
        "revoke",
        "--ca",
        &ca_dir,
        "--by",
        "root",
        "--cert",
        &issuing_path,
        "--reason",
        "cACompromise",
    ]);
    // DER this time, as `openssl crl` would publish it; the https helper sends text, so PEM-wrap.
    let der = crl_of(&p, "manufacturer-ca", "root", &dir.path().join("root-crl.der"));
    assert_eq!(der[0], 0x30, "a .der name writes DER");
    let pem = claimlink_pki::pem::encode("X509 CRL", &der);
    let (status, body) = upload(&p, &pem);
    assert_eq!(status, 200, "{body}");
    assert!(time_to_close(&mut bystander_live) < Duration::from_secs(1));
    assert!(connect(&p, &bystander).is_err(), "a device under a revoked issuing CA is refused");
    // SM2 devices, of another manufacturer CA, are not.
    connect(&p, &p.sm2_devices()[0]).unwrap();
}

#[test]
fn a_device_online_at_the_account_is_dropped_within_a_second_of_its_revocation() {
    let p = Platform::up("revocation-account");
    // A P-256 device: its module maker's CA runs elsewhere and uploads its CRLs.
    let thing = p.devices()[0].clone();
    let mut d = platform::AtDevice::start(&p, &thing);
    assert_eq!(d.at("AT+CONNECT"), "OK 1 CONNECTED");
    let (status, body) = p.claim_api(
        "POST",
        "/claims",
        &serde_json::json!({"thingName": thing, "endpoint": p.oem_endpoint(), "claimCode": p.claim_code(&thing)}),
    );
    assert_eq!(status, 200, "{body}");
    d.wait_for("AT+CONNECT?", "OK 1 1 CONNECTED CUSTOMER");

    let ca_dir = p.data("manufacturer-ca");
    let cert = p.bundle(&thing).join("cert.pem");
    claimlink(&[
        "ca",
        "revoke",
        "--ca",
        &ca_dir,
        "--cert",
        &cert.to_string_lossy(),
        "--reason",
        "keyCompromise",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let crl = text(crl_of(&p, "manufacturer-ca", "issuing", &dir.path().join("crl.pem")));
    let issuing = std::fs::read_to_string(p.data("manufacturer-ca/issuing-ca.pem")).unwrap();
    // Applied at staging, which hands it to the account of this process.
    let (status, body) = upload(&p, &format!("{crl}{issuing}"));
    assert_eq!(status, 200, "{body}");
    let applied = Instant::now();
    loop {
        let state = d.at("AT+CONNECT?");
        if state.contains("DISCONNECTED") {
            break;
        }
        assert!(
            applied.elapsed() < Duration::from_secs(1),
            "still {state} {:?} after the CRL",
            applied.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("dropped at the account {:?} after the CRL was applied at staging", applied.elapsed());
    // It cannot come back: the account refuses it at the handshake.
    let again = d.at("AT+CONNECT");
    assert!(again.starts_with("ERR"), "{again}");
    // The account has the CRL: applying it again through its admin API is refused as not newer,
    // and junk is refused with a clear error.
    let (status, text_) = p.admin_api_call("PUT", "/crls", &format!("{crl}{issuing}"));
    assert_eq!(status, 400, "{text_}");
    assert!(text_.contains("not newer"), "{text_}");
    let (status, text_) = p.admin_api_call("PUT", "/crls", "junk");
    assert_eq!(status, 400, "{text_}");
}

/// `claimlink ca ra` against the platform's CA system with a token file; the JSON answer.
fn ra(p: &Platform, token: &str, args: &[&str]) -> serde_json::Value {
    let url = format!("http://127.0.0.1:{}", p.ca_system);
    let mut full = vec!["ca", "ra", "--endpoint-url", &url, "--token-file", token];
    full.extend(args);
    serde_json::from_str(&claimlink(&full)).unwrap()
}

#[test]
fn a_device_revoked_through_the_ca_system_of_up_is_dropped_at_staging_and_the_account_within_a_second() {
    let p = Platform::up("revocation-ca-system");
    let thing = p.sm2_devices()[0].clone();
    let other = p.sm2_devices()[1].clone();
    let mut session = connect(&p, &thing).expect("the device connects to staging");
    let mut bystander = connect(&p, &other).expect("another device connects");
    // The module maker's administrators: the super administrator appoints a business
    // administrator, who appoints two operators.
    let dir = tempfile::tempdir().unwrap();
    let t = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    let sup = p.data("manufacturer-ca-sm2/super-admin.token");
    ra(
        &p,
        &sup,
        &[
            "create-administrator",
            "--name",
            "bea",
            "--role",
            "business-administrator",
            "--token-out",
            &t("bea"),
        ],
    );
    for op in ["olga", "omar"] {
        ra(
            &p,
            &t("bea"),
            &["create-administrator", "--name", op, "--role", "business-operator", "--token-out", &t(op)],
        );
    }
    // The device's birth certificate names the CA system's CRL and OCSP.
    let cert =
        claimlink_pki::Certificate::from_pem(&std::fs::read(p.bundle(&thing).join("cert.pem")).unwrap())
            .unwrap();
    assert_eq!(cert.crl_urls().unwrap(), vec![format!("http://127.0.0.1:{}/crl/issuing.crl", p.ca_system)]);
    assert_eq!(cert.ocsp_urls().unwrap(), vec![format!("http://127.0.0.1:{}/ocsp", p.ca_system)]);
    let serial = cert.serial_hex();
    let asked = ra(&p, &t("olga"), &["request-revocation", "--serial", &serial, "--reason", "keyCompromise"]);
    let id = asked["requestId"].as_str().unwrap().to_owned();
    let approved = std::time::Instant::now();
    let done = ra(&p, &t("omar"), &["approve-revocation", "--request-id", &id]);
    assert_eq!(done["status"], "REVOKED");
    let took = approved.elapsed() + time_to_close(&mut session);
    eprintln!("session at staging ended {took:?} after the approval was sent");
    assert!(took < Duration::from_secs(1), "{took:?}");
    let again = connect(&p, &thing);
    assert!(again.is_err(), "refused at the handshake after its revocation");
    // The other device is still there.
    bystander.write_all(&[0xc0, 0x00]).unwrap(); // PINGREQ
    let mut pong = [0u8; 2];
    bystander.read_exact(&mut pong).unwrap();
    assert_eq!(pong, [0xd0, 0x00]);

    // A claimed device online at the account: revoked through the CA system, dropped there too
    // (staging hands the CRL to the account of this process).
    let claimed = p.sm2_devices()[2].clone();
    let mut d = platform::AtDevice::start(&p, &claimed);
    assert_eq!(d.at("AT+CONNECT"), "OK 1 CONNECTED");
    let (status, body) = p.claim_api(
        "POST",
        "/claims",
        &serde_json::json!({"thingName": claimed, "endpoint": p.oem_endpoint(), "claimCode": p.claim_code(&claimed)}),
    );
    assert_eq!(status, 200, "{body}");
    d.wait_for("AT+CONNECT?", "OK 1 1 CONNECTED CUSTOMER");
    let cert =
        claimlink_pki::Certificate::from_pem(&std::fs::read(p.bundle(&claimed).join("cert.pem")).unwrap())
            .unwrap();
    let asked =
        ra(&p, &t("omar"), &["request-revocation", "--serial", &cert.serial_hex(), "--reason", "superseded"]);
    let id = asked["requestId"].as_str().unwrap().to_owned();
    let e = Command::new(env!("CARGO_BIN_EXE_claimlink"))
        .args([
            "ca",
            "ra",
            "--endpoint-url",
            &format!("http://127.0.0.1:{}", p.ca_system),
            "--token-file",
            &t("omar"),
        ])
        .args(["approve-revocation", "--request-id", &id])
        .output()
        .unwrap();
    assert_eq!(e.status.code(), Some(254), "the operator who asked cannot approve");
    let approved = Instant::now();
    ra(&p, &t("olga"), &["approve-revocation", "--request-id", &id]);
    loop {
        let state = d.at("AT+CONNECT?");
        if state.contains("DISCONNECTED") {
            break;
        }
        assert!(
            approved.elapsed() < Duration::from_secs(1),
            "still {state} {:?} after approval",
            approved.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("dropped at the account {:?} after the approval was sent", approved.elapsed());
    assert!(d.at("AT+CONNECT").starts_with("ERR"), "refused at the account after");

    // A second OEM's claim-thing certificate, applied for at the CA system and pinned at
    // staging: revoked there, its session at staging ends and it cannot claim again.
    let run =
        |args: &[&str]| claimlink_testkit::run_ok(Command::new("openssl").current_dir(dir.path()).args(args));
    run(&["genpkey", "-algorithm", "SM2", "-out", "ct.key"]);
    run(&[
        "req",
        "-new",
        "-subj",
        "/CN=OEM2 claim-thing/O=OEM2",
        "-key",
        "ct.key",
        "-out",
        "ct.csr",
        "-sm3",
        "-sigopt",
        "distid:1234567812345678",
    ]);
    let applied = ra(
        &p,
        &sup,
        &["apply", "--profile", "claim-thing", "--csr", &t("ct.csr"), "--token-out", &t("ct.app")],
    );
    let app = applied["applicationId"].as_str().unwrap().to_owned();
    ra(&p, &t("olga"), &["approve-application", "--application-id", &app]);
    ra(&p, &t("ct.app"), &["get-certificate", "--application-id", &app, "--out", &t("ct")]);
    let chain = std::fs::read_to_string(dir.path().join("ct/cert.pem")).unwrap();
    let leaf = claimlink_pki::Certificate::chain_from_pem(chain.as_bytes()).unwrap().remove(0);
    let (status, oem) = p.staging_admin("POST", "/staging/oems", Some(serde_json::json!({"name": "OEM2"})));
    assert_eq!(status, 200, "{oem}");
    let oem_id = oem["oemId"].as_str().or(oem["id"].as_str()).unwrap().to_owned();
    let (status, body) = p.staging_admin(
        "PUT",
        &format!("/staging/oems/{oem_id}/claim-certificate"),
        Some(serde_json::json!({"certificatePem": leaf.to_pem()})),
    );
    assert_eq!(status, 200, "{body}");
    let mut claim_thing =
        connect_as(&p, &dir.path().join("ct/cert.pem"), &dir.path().join("ct.key"), &oem_id)
            .expect("the pinned claim-thing connects");
    let asked = ra(
        &p,
        &t("olga"),
        &["request-revocation", "--serial", &leaf.serial_hex(), "--reason", "keyCompromise"],
    );
    let approved = Instant::now();
    ra(&p, &t("omar"), &["approve-revocation", "--request-id", asked["requestId"].as_str().unwrap()]);
    let took = approved.elapsed() + time_to_close(&mut claim_thing);
    eprintln!("claim-thing session at staging ended {took:?} after the approval was sent");
    assert!(took < Duration::from_secs(1), "{took:?}");
    let again = connect_as(&p, &dir.path().join("ct/cert.pem"), &dir.path().join("ct.key"), &oem_id);
    assert!(again.is_err(), "a revoked claim-thing is refused at the handshake though still pinned");
}
