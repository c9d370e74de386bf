//! TLCP interop with Tongsuo (`-ntls`), every suite, both directions, over loopback TCP: its
//! `s_client` with dual certificates against our server, and our client with dual certificates
//! against its `s_server -enable_ntls -Verify`; a server with a single certificate is refused.
//! Skipped with a notice without Tongsuo; a failure under CI.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use claimlink_gm::Sm2PrivateKey;
use claimlink_pki::KeyAlgorithm;
use claimlink_testpki::{TestCa, TestLeaf};
use claimlink_tls::tlcp::{CipherSuite, ClientConfig, Connection, Identity, ServerConfig};
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::WebPkiClientVerifier;

const NAME: &str = "tlcp.test";

struct Pki {
    ca: TestCa,
    server_sign: TestLeaf,
    server_enc: TestLeaf,
    client_sign: TestLeaf,
    client_enc: TestLeaf,
    _dir: tempfile::TempDir,
    dir: PathBuf,
}

fn pki() -> Pki {
    let ca = TestCa::issuing(KeyAlgorithm::Sm2, "CN=TLCP interop CA,O=claimlink,C=CN");
    let server_sign = ca.server(&[NAME]);
    let server_enc = ca.encryption(&[NAME], "CN=tlcp.test");
    let client_sign = ca.device("CN=tlcp-device-1,O=claimlink");
    let client_enc = ca.encryption(&[], "CN=tlcp-device-1,O=claimlink");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let write = |name: &str, text: String| std::fs::write(path.join(name), text).unwrap();
    write("root.pem", ca.root.as_ref().unwrap().to_pem());
    write("chain.pem", format!("{}{}", ca.certificate.to_pem(), ca.root.as_ref().unwrap().to_pem()));
    for (name, leaf) in [("ss", &server_sign), ("se", &server_enc), ("cs", &client_sign), ("ce", &client_enc)]
    {
        write(&format!("{name}.pem"), leaf.certificate.to_pem());
        write(&format!("{name}.key"), leaf.key_pem());
    }
    Pki { ca, server_sign, server_enc, client_sign, client_enc, _dir: dir, dir: path }
}

impl Pki {
    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn sm2(leaf: &TestLeaf) -> Sm2PrivateKey {
    Sm2PrivateKey::from_pkcs8_der(&leaf.key.to_pkcs8_der().unwrap()).unwrap()
}

fn der(leaf: &TestLeaf) -> CertificateDer<'static> {
    CertificateDer::from(leaf.certificate.der().to_vec())
}

fn roots(ca: &TestCa) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(ca.root.as_ref().unwrap().der().to_vec())).unwrap();
    Arc::new(roots)
}

fn identity(sign: &TestLeaf, enc: Option<&TestLeaf>, ca: &TestCa) -> Identity {
    let chain = vec![der(sign), CertificateDer::from(ca.certificate.der().to_vec())];
    Identity::new(chain, sm2(sign), enc.map(|e| (der(e), sm2(e)))).unwrap()
}

/// Runs `conn`'s handshake over `tcp`, then writes `send` and reads until the peer closes or
/// `until` appears. Returns what was read.
fn drive(conn: &mut Connection, tcp: &mut TcpStream, send: &[u8], until: &str) -> Result<String, String> {
    let mut buf = vec![0u8; 32 * 1024];
    let mut sent = false;
    let mut got = Vec::new();
    loop {
        let out = conn.take_tls();
        if !out.is_empty() {
            tcp.write_all(&out).map_err(|e| e.to_string())?;
        }
        if let Some(e) = conn.error() {
            return Err(e.to_string());
        }
        if !conn.is_handshaking() && !sent {
            conn.write_plaintext(send).map_err(|e| e.to_string())?;
            sent = true;
            continue;
        }
        if conn.peer_has_closed() || (!until.is_empty() && String::from_utf8_lossy(&got).contains(until)) {
            return Ok(String::from_utf8_lossy(&got).into_owned());
        }
        let n = tcp
            .read(&mut buf)
            .map_err(|e| format!("read: {e}; so far {:?}", String::from_utf8_lossy(&got)))?;
        if n == 0 {
            return if conn.is_handshaking() {
                Err("peer closed during the handshake".into())
            } else {
                Ok(String::from_utf8_lossy(&got).into_owned())
            };
        }
        conn.read_tls(&buf[..n]).map_err(|e| e.to_string())?;
        let m = conn.read_plaintext(&mut buf);
        got.extend_from_slice(&buf[..m]);
    }
}

/// Serves one TLCP connection: reads a line, answers `echo: LINE`, closes. Returns the port and
/// the outcome (suite, client certificates seen, the line).
fn serve_once(config: Arc<ServerConfig>) -> (u16, std::thread::JoinHandle<Result<String, String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let (mut tcp, _) = listener.accept().map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut conn = Connection::accept();
        let mut buf = vec![0u8; 32 * 1024];
        let mut line = Vec::new();
        let mut configured = false;
        loop {
            let out = conn.take_tls();
            if !out.is_empty() {
                tcp.write_all(&out).map_err(|e| e.to_string())?;
            }
            if let Some(e) = conn.error() {
                return Err(e.to_string());
            }
            if line.ends_with(b"\n") {
                break;
            }
            let n = tcp.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err(format!("client went away ({:?})", conn));
            }
            conn.read_tls(&buf[..n]).map_err(|e| e.to_string())?;
            if conn.client_hello().is_some() && !configured {
                configured = true;
                conn.set_config(config.clone()).map_err(|e| e.to_string())?;
            }
            let m = conn.read_plaintext(&mut buf);
            line.extend_from_slice(&buf[..m]);
        }
        let line = String::from_utf8_lossy(&line).trim().to_owned();
        conn.write_plaintext(format!("echo: {line}\n").as_bytes()).map_err(|e| e.to_string())?;
        conn.send_close_notify();
        tcp.write_all(&conn.take_tls()).map_err(|e| e.to_string())?;
        Ok(format!(
            "suite={} sign={} enc={} sni={:?} line={line}",
            conn.cipher_suite().map(|s| s.name()).unwrap_or("-"),
            conn.peer_certificates().len(),
            conn.peer_encryption_certificate().is_some(),
            conn.server_name(),
        ))
    });
    (port, handle)
}

fn server_config(p: &Pki, client_auth: bool) -> Arc<ServerConfig> {
    let verifier = client_auth.then(|| {
        WebPkiClientVerifier::builder_with_provider(roots(&p.ca), Arc::new(claimlink_tls::provider()))
            .build()
            .unwrap()
    });
    Arc::new(ServerConfig::new(identity(&p.server_sign, Some(&p.server_enc), &p.ca), verifier).unwrap())
}

fn s_client(tongsuo: &Path, port: u16, suite: CipherSuite, p: &Pki, dual: bool) -> (String, String) {
    let mut cmd = Command::new(tongsuo);
    cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-ntls", "-enable_ntls"])
        .args(["-cipher", suite.tongsuo_name()])
        .args(["-servername", NAME, "-verify_return_error", "-quiet", "-CAfile"])
        .arg(p.file("root.pem"))
        .arg("-chainCAfile")
        .arg(p.file("chain.pem"));
    if dual {
        cmd.arg("-sign_cert").arg(p.file("cs.pem")).arg("-sign_key").arg(p.file("cs.key"));
        cmd.arg("-enc_cert").arg(p.file("ce.pem")).arg("-enc_key").arg(p.file("ce.key"));
    }
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"hello over tlcp\n").unwrap();
    // Keep stdin open until our server has answered and closed (s_client -quiet ends at EOF).
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn tongsuo_s_client_against_our_server_in_every_suite() {
    let Some(tongsuo) = claimlink_testkit::tongsuo("tlcp: tongsuo s_client against our server") else {
        return;
    };
    let p = pki();
    let server = server_config(&p, true);
    for suite in CipherSuite::ALL {
        let (port, ours) = serve_once(server.clone());
        let (stdout, stderr) = s_client(&tongsuo, port, suite, &p, true);
        let seen =
            ours.join().unwrap().unwrap_or_else(|e| panic!("{suite}: our server: {e}\ntongsuo: {stderr}"));
        assert!(stdout.contains("echo: hello over tlcp"), "{suite}: {stdout}\n{stderr}");
        assert!(seen.contains(&format!("suite={}", suite.name())), "{suite}: {seen}");
        assert!(seen.contains("enc=true") && seen.contains("line=hello over tlcp"), "{suite}: {seen}");
        assert!(seen.contains(&format!("sni=Some(\"{NAME}\")")), "{suite}: {seen}");
    }
}

#[test]
fn our_client_against_tongsuo_s_server_in_every_suite() {
    let Some(tongsuo) = claimlink_testkit::tongsuo("tlcp: our client against tongsuo s_server") else {
        return;
    };
    let p = pki();
    for suite in CipherSuite::ALL {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = Command::new(&tongsuo)
            .args(["s_server", "-accept", &port.to_string(), "-enable_ntls", "-cipher", suite.tongsuo_name()])
            .args(["-Verify", "2", "-verify_return_error", "-www", "-naccept", "1", "-CAfile"])
            .arg(p.file("root.pem"))
            .arg("-chainCAfile")
            .arg(p.file("chain.pem"))
            .arg("-sign_cert")
            .arg(p.file("ss.pem"))
            .arg("-sign_key")
            .arg(p.file("ss.key"))
            .arg("-enc_cert")
            .arg(p.file("se.pem"))
            .arg("-enc_key")
            .arg(p.file("se.key"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut tcp = (0..100)
            .find_map(|_| {
                TcpStream::connect(("127.0.0.1", port)).ok().or_else(|| {
                    std::thread::sleep(Duration::from_millis(50));
                    None
                })
            })
            .expect("s_server listens");
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let verifier =
            WebPkiServerVerifier::builder_with_provider(roots(&p.ca), Arc::new(claimlink_tls::provider()))
                .build()
                .unwrap();
        let config = Arc::new(
            ClientConfig::new(verifier, Some(identity(&p.client_sign, Some(&p.client_enc), &p.ca)))
                .with_suites(&[suite]),
        );
        let mut conn = Connection::client(config, &ServerName::try_from(NAME).unwrap()).unwrap();
        let page = drive(&mut conn, &mut tcp, b"GET / HTTP/1.0\r\n\r\n", "");
        let _ = server.kill();
        let out = server.wait_with_output().unwrap();
        let page = page
            .unwrap_or_else(|e| panic!("{suite}: {e}\ns_server: {}", String::from_utf8_lossy(&out.stderr)));
        assert_eq!(conn.cipher_suite(), Some(suite));
        assert!(page.contains(suite.tongsuo_name()), "{suite}: s_server's page:\n{page}");
        assert!(page.contains("tlcp-device-1"), "{suite}: s_server saw our signing certificate:\n{page}");
    }
}

#[test]
fn a_tongsuo_client_without_an_encryption_certificate_is_refused_on_ecdhe() {
    let Some(tongsuo) = claimlink_testkit::tongsuo("tlcp: single-certificate client refused") else { return };
    let p = pki();
    let server = server_config(&p, true);
    let (port, ours) = serve_once(server);
    let out = Command::new(&tongsuo)
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-ntls", "-enable_ntls"])
        .args(["-cipher", "ECDHE-SM2-SM4-GCM-SM3", "-quiet", "-CAfile"])
        .arg(p.file("root.pem"))
        .arg("-cert")
        .arg(p.file("cs.pem"))
        .arg("-key")
        .arg(p.file("cs.key"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let e = ours.join().unwrap().unwrap_err();
    assert!(e.contains("HandshakeFailure"), "{e}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("echo:"));
}

#[test]
fn a_tongsuo_client_with_only_a_signing_certificate_sends_none_and_is_refused_where_one_is_required() {
    // Tongsuo's TLCP client sends its signing and encryption certificates together or not at
    // all; our listeners require a client certificate, so it is refused (our own client sends a
    // lone signing certificate over the ECC suites: the unit tests and the device journey).
    let Some(tongsuo) = claimlink_testkit::tongsuo("tlcp: signing certificate only") else { return };
    let p = pki();
    let (port, ours) = serve_once(server_config(&p, true));
    let _ = Command::new(&tongsuo)
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-ntls", "-enable_ntls"])
        .args(["-cipher", "ECC-SM2-SM4-GCM-SM3", "-quiet", "-servername", NAME, "-CAfile"])
        .arg(p.file("root.pem"))
        .arg("-sign_cert")
        .arg(p.file("cs.pem"))
        .arg("-sign_key")
        .arg(p.file("cs.key"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let e = ours.join().unwrap().unwrap_err();
    assert!(e.contains("a client certificate is required"), "{e}");
}
