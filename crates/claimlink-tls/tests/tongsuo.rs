//! Interop with Tongsuo, the reference GM TLS stack, over loopback TCP: its `s_client` against
//! a rustls server on our provider and our client against its `s_server`, with SM2 certificates
//! both ways, in each RFC 8998 suite; a handshake signature made with the wrong SM2 ID is
//! refused by Tongsuo too. Skipped with a notice without Tongsuo; a failure under CI.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use claimlink_pki::KeyAlgorithm;
use claimlink_testpki::{TestCa, TestLeaf};
use claimlink_tls::{DualCertResolver, Sm2SigningKey};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

struct Files {
    _dir: tempfile::TempDir,
    root: PathBuf,
    server_chain: PathBuf,
    server_key: PathBuf,
    device_chain: PathBuf,
    device_key: PathBuf,
    issuing: PathBuf,
}

struct Pki {
    ca: TestCa,
    server: TestLeaf,
    device: TestLeaf,
    files: Files,
}

fn pki() -> Pki {
    let ca = TestCa::issuing(KeyAlgorithm::Sm2, "CN=Tongsuo interop CA,O=claimlink,C=CN");
    let server = ca.server(&["endpoint.test"]);
    let device = ca.device("CN=sm2-device-1,O=claimlink");
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let files = Files {
        root: write("root.pem", ca.root.as_ref().unwrap().to_pem()),
        server_chain: write(
            "server.pem",
            format!("{}{}", server.certificate.to_pem(), ca.certificate.to_pem()),
        ),
        server_key: write("server.key", server.key_pem()),
        device_chain: write(
            "device.pem",
            format!("{}{}", device.certificate.to_pem(), ca.certificate.to_pem()),
        ),
        device_key: write("device.key", device.key_pem()),
        issuing: write("issuing.pem", ca.certificate.to_pem()),
        _dir: dir,
    };
    Pki { ca, server, device, files }
}

fn chain(leaf: &TestLeaf, ca: &TestCa) -> Vec<CertificateDer<'static>> {
    vec![
        CertificateDer::from(leaf.certificate.der().to_vec()),
        CertificateDer::from(ca.certificate.der().to_vec()),
    ]
}

fn key(leaf: &TestLeaf) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(leaf.key_pem().as_bytes()).unwrap()
}

fn roots(ca: &TestCa) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(ca.root.as_ref().unwrap().der().to_vec())).unwrap();
    roots
}

/// Serves one TLS connection on a loopback port: reads a line, answers `echo: LINE`. Returns the
/// port and the thread's outcome (the negotiated suite's name, or the error).
fn serve_once(config: ServerConfig) -> (u16, std::thread::JoinHandle<Result<String, String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let conn = rustls::ServerConnection::new(Arc::new(config)).map_err(|e| e.to_string())?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut line = String::new();
        BufReader::new(&mut tls).read_line(&mut line).map_err(|e| e.to_string())?;
        let suite = format!("{:?}", tls.conn.negotiated_cipher_suite().map(|s| s.suite()));
        let peer = tls.conn.peer_certificates().map(|c| c.len()).unwrap_or(0);
        tls.write_all(format!("echo: {line}").as_bytes()).map_err(|e| e.to_string())?;
        tls.conn.send_close_notify();
        let _ = tls.flush();
        Ok(format!("{suite} peer-certs={peer} line={}", line.trim()))
    });
    (port, handle)
}

fn s_client(tongsuo: &Path, port: u16, suite: &str, pki: &Pki) -> (String, String) {
    let mut child = Command::new(tongsuo)
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-tls1_3", "-ciphersuites", suite])
        .args(["-sigalgs", "sm2sig_sm3", "-groups", "curveSM2", "-servername", "endpoint.test"])
        .arg("-CAfile")
        .arg(&pki.files.root)
        .arg("-cert")
        .arg(&pki.files.device_chain)
        .arg("-key")
        .arg(&pki.files.device_key)
        .arg("-cert_chain")
        .arg(&pki.files.issuing)
        .args(["-verify_return_error", "-quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hello from tongsuo\n").unwrap();
    let out = child.wait_with_output().unwrap();
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn server_config(pki: &Pki, signer: Arc<dyn rustls::sign::SigningKey>) -> ServerConfig {
    let provider = claimlink_tls::shared_provider(true);
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(&pki.ca)), provider.clone())
        .build()
        .unwrap();
    let certified = Arc::new(CertifiedKey::new(chain(&pki.server, &pki.ca), signer));
    ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(DualCertResolver::new(Some(certified), None)))
}

#[test]
fn tongsuo_s_client_against_our_server_in_each_suite() {
    let Some(tongsuo) = claimlink_testkit::tongsuo("tongsuo_s_client_against_our_server") else { return };
    let pki = pki();
    for suite in ["TLS_SM4_GCM_SM3", "TLS_SM4_CCM_SM3"] {
        let signer = claimlink_tls::any_signing_key(key(&pki.server)).unwrap();
        let (port, server) = serve_once(server_config(&pki, signer));
        let (stdout, stderr) = s_client(&tongsuo, port, suite, &pki);
        let seen = server.join().unwrap();
        let seen = seen.unwrap_or_else(|e| panic!("{suite}: our server: {e}\ntongsuo: {stderr}"));
        assert!(stdout.contains("echo: hello from tongsuo"), "{suite}: {stdout}\n{stderr}");
        assert!(seen.contains("peer-certs=2") && seen.contains("line=hello from tongsuo"), "{suite}: {seen}");
        let code = if suite.contains("GCM") { "c6" } else { "c7" };
        assert!(seen.to_ascii_lowercase().contains(code), "{suite}: negotiated {seen}");
    }
}

#[test]
fn tongsuo_refuses_a_certificate_verify_signed_with_the_wrong_id() {
    let Some(tongsuo) = claimlink_testkit::tongsuo("tongsuo_refuses_wrong_id") else { return };
    let pki = pki();
    let der = key(&pki.server);
    let sm2 = claimlink_gm::Sm2PrivateKey::from_pkcs8_der(der.secret_der()).unwrap();
    let wrong = Arc::new(Sm2SigningKey::with_id(&sm2, &claimlink_gm::DistId::GMT_0009_DEFAULT));
    let (port, server) = serve_once(server_config(&pki, wrong));
    let (stdout, stderr) = s_client(&tongsuo, port, "TLS_SM4_GCM_SM3", &pki);
    let _ = server.join().unwrap();
    assert!(!stdout.contains("echo:"), "Tongsuo accepted a wrong-ID signature: {stdout}");
    assert!(stderr.to_ascii_lowercase().contains("error") || stderr.contains("alert"), "{stderr}");
}

#[test]
fn our_client_against_tongsuo_s_server_with_verify() {
    let Some(tongsuo) = claimlink_testkit::tongsuo("our_client_against_tongsuo_s_server") else { return };
    let pki = pki();
    for suite in ["TLS_SM4_GCM_SM3", "TLS_SM4_CCM_SM3"] {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = Command::new(&tongsuo)
            .args(["s_server", "-accept", &port.to_string(), "-tls1_3", "-ciphersuites", suite])
            .args(["-sigalgs", "sm2sig_sm3", "-groups", "curveSM2", "-Verify", "2", "-www", "-naccept", "1"])
            .arg("-cert")
            .arg(&pki.files.server_chain)
            .arg("-key")
            .arg(&pki.files.server_key)
            .arg("-cert_chain")
            .arg(&pki.files.issuing)
            .arg("-CAfile")
            .arg(&pki.files.root)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut tcp = None;
        for _ in 0..100 {
            if let Ok(t) = TcpStream::connect(("127.0.0.1", port)) {
                tcp = Some(t);
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let tcp = tcp.expect("s_server listens");
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut provider = claimlink_tls::strict_provider();
        provider.cipher_suites.retain(|s| {
            format!("{:?}", s.suite()).to_ascii_lowercase().contains(if suite.contains("GCM") {
                "c6"
            } else {
                "c7"
            })
        });
        assert_eq!(provider.cipher_suites.len(), 1);
        let config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots(&pki.ca))
            .with_client_auth_cert(chain(&pki.device, &pki.ca), key(&pki.device))
            .unwrap();
        let conn =
            rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("endpoint.test").unwrap())
                .unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut page = String::new();
        let _ = tls.read_to_string(&mut page);
        let _ = server.kill();
        let out = server.wait_with_output().unwrap();
        assert!(
            page.contains(suite),
            "{suite}: s_server's page:\n{page}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(page.contains("sm2-device-1"), "s_server saw our client certificate:\n{page}");
    }
}

#[test]
fn a_strict_server_refuses_tongsuo_offering_only_international_algorithms() {
    let Some(tongsuo) = claimlink_testkit::tongsuo("strict_refuses_international") else { return };
    let pki = pki();
    let signer = claimlink_tls::any_signing_key(key(&pki.server)).unwrap();
    let (port, server) = serve_once(server_config(&pki, signer));
    let out = Command::new(&tongsuo)
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-tls1_3"])
        .args(["-ciphersuites", "TLS_AES_128_GCM_SHA256", "-groups", "P-256", "-CAfile"])
        .arg(&pki.files.root)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let ours = server.join().unwrap();
    assert!(ours.is_err(), "the strict server took an international handshake: {ours:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("alert") || stderr.contains("handshake failure"),
        "Tongsuo saw an alert: {stderr}"
    );
}
