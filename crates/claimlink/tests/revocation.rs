//! Revocation at the handshake, against a real `claimlink up`: the manufacturer revokes an SM2
//! device's birth certificate (`claimlink ca revoke`, `claimlink ca crl`), the staging
//! administrator applies the CRL (`PUT /staging/crls`); the device's live session ends at once,
//! its next handshake is refused, a restart keeps refusing it, another device is untouched;
//! the root then revokes the issuing CA and every device under it is refused. Bad, forged and
//! stale CRLs change nothing.

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
                CertificateDer::pem_file_iter(&chain).unwrap().map(Result::unwrap).collect(),
                PrivateKeyDer::from_pem_file(&key).unwrap(),
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
    let devices = p.sm2_devices();
    let (victim, bystander) = (devices[0].clone(), devices[1].clone());
    let ca_dir = p.data("manufacturer-ca-sm2");
    let issuing = std::fs::read_to_string(p.data("manufacturer-ca-sm2/issuing-ca.pem")).unwrap();
    let dir = tempfile::tempdir().unwrap();

    let mut live = connect(&p, &victim).expect("the victim connects before it is revoked");
    let mut other = connect(&p, &bystander).expect("the bystander connects");

    // Bad input changes nothing: junk, a CRL alone that no trusted CA signed, and a CRL of a
    // CA whose chain is not given.
    assert_eq!(upload(&p, "not a CRL").0, 400);
    let empty = text(crl_of(&p, "manufacturer-ca-sm2", "issuing", &dir.path().join("empty.pem")));
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
    let crl = text(crl_of(&p, "manufacturer-ca-sm2", "issuing", &dir.path().join("crl.pem")));
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
    assert_eq!(list["crls"].as_array().map(Vec::len), Some(1), "{list}");

    // The root revokes the issuing CA: every device under it is refused, its sessions end.
    let mut bystander_live = connect(&p, &bystander).unwrap();
    let issuing_path = p.data("manufacturer-ca-sm2/issuing-ca.pem");
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
    let der = crl_of(&p, "manufacturer-ca-sm2", "root", &dir.path().join("root-crl.der"));
    assert_eq!(der[0], 0x30, "a .der name writes DER");
    let pem = claimlink_pki::pem::encode("X509 CRL", &der);
    let (status, body) = upload(&p, &pem);
    assert_eq!(status, 200, "{body}");
    assert!(time_to_close(&mut bystander_live) < Duration::from_secs(1));
    assert!(connect(&p, &bystander).is_err(), "a device under a revoked issuing CA is refused");
    // P-256 devices, of another manufacturer CA, are not.
    connect(&p, &p.devices()[0]).unwrap();
}

#[test]
fn a_device_online_at_the_account_is_dropped_within_a_second_of_its_revocation() {
    let p = Platform::up("revocation-account");
    let thing = p.sm2_devices()[0].clone();
    let mut d = platform::AtDevice::start(&p, &thing);
    assert_eq!(d.at("AT+CONNECT"), "OK 1 CONNECTED");
    let (status, body) = p.claim_api(
        "POST",
        "/claims",
        &serde_json::json!({"thingName": thing, "endpoint": p.oem_endpoint(), "claimCode": p.claim_code(&thing)}),
    );
    assert_eq!(status, 200, "{body}");
    d.wait_for("AT+CONNECT?", "OK 1 1 CONNECTED CUSTOMER");

    let ca_dir = p.data("manufacturer-ca-sm2");
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
    let crl = text(crl_of(&p, "manufacturer-ca-sm2", "issuing", &dir.path().join("crl.pem")));
    let issuing = std::fs::read_to_string(p.data("manufacturer-ca-sm2/issuing-ca.pem")).unwrap();
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
