//! TLCP handshakes per second over loopback, per suite: our client (two threads, one handshake
//! after the other, a fresh TCP connection and dual client certificates each) against our
//! server (the sans-IO connection, a thread per connection) and against Tongsuo's
//! `s_server -enable_ntls -Verify`, the same load for both; then the record layer's bulk
//! rate (16 KiB records, sealed then opened, one core) beside Tongsuo's `speed -evp` for the
//! same ciphers.
//!
//!     bash .ci/tongsuo.sh && CLAIMLINK_TONGSUO=... cargo bench -p claimlink-tls --bench tlcp
//!
//! Prints Markdown tables; a row whose peer is missing says so.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: fail loudly

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use claimlink_gm::Sm2PrivateKey;
use claimlink_pki::KeyAlgorithm;
use claimlink_testpki::{TestCa, TestLeaf};
use claimlink_tls::tlcp::{CipherSuite, ClientConfig, Connection, Identity, ServerConfig};
use rustls::pki_types::{CertificateDer, ServerName};

const SECONDS: u64 = 5;
const CLIENTS: usize = 2;
const NAME: &str = "tlcp.test";

struct Pki {
    ca: TestCa,
    ss: TestLeaf,
    se: TestLeaf,
    cs: TestLeaf,
    ce: TestLeaf,
}

fn pki() -> Pki {
    let ca = TestCa::issuing(KeyAlgorithm::Sm2, "CN=TLCP bench CA,O=claimlink");
    Pki {
        ss: ca.server(&[NAME]),
        se: ca.encryption(&[NAME], "CN=tlcp.test"),
        cs: ca.device("CN=bench-device"),
        ce: ca.encryption(&[], "CN=bench-device"),
        ca,
    }
}

fn sm2(leaf: &TestLeaf) -> Sm2PrivateKey {
    Sm2PrivateKey::from_pkcs8_der(&leaf.key.to_pkcs8_der().unwrap()).unwrap()
}

fn der(leaf: &TestLeaf) -> CertificateDer<'static> {
    CertificateDer::from(leaf.certificate.der().to_vec())
}

fn identity(sign: &TestLeaf, enc: &TestLeaf, ca: &TestCa) -> Identity {
    let chain = vec![der(sign), CertificateDer::from(ca.certificate.der().to_vec())];
    Identity::new(chain, sm2(sign), Some((der(enc), sm2(enc)))).unwrap()
}

fn roots(ca: &TestCa) -> Arc<rustls::RootCertStore> {
    let mut r = rustls::RootCertStore::empty();
    r.add(CertificateDer::from(ca.root.as_ref().unwrap().der().to_vec())).unwrap();
    Arc::new(r)
}

/// Drives `conn` over `tcp` until the handshake ends; whether it succeeded.
fn handshake(conn: &mut Connection, tcp: &mut TcpStream) -> bool {
    let mut buf = vec![0u8; 20 * 1024];
    loop {
        let out = conn.take_tls();
        if !out.is_empty() && tcp.write_all(&out).is_err() {
            return false;
        }
        if conn.error().is_some() {
            return false;
        }
        if !conn.is_handshaking() {
            return true;
        }
        if conn.wants_config() {
            return true;
        }
        match tcp.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => {
                if conn.read_tls(&buf[..n]).is_err() {
                    let _ = tcp.write_all(&conn.take_tls());
                    return false;
                }
            }
        }
    }
}

/// Our TLCP server on a loopback port, a thread per connection, until the process ends.
fn our_server(config: Arc<ServerConfig>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let config = config.clone();
            std::thread::spawn(move || {
                let mut tcp = tcp;
                let _ = tcp.set_nodelay(true);
                let mut conn = Connection::server(config);
                handshake(&mut conn, &mut tcp);
            });
        }
    });
    port
}

fn write(dir: &Path, name: &str, text: String) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn tongsuo_server(tongsuo: &str, p: &Pki, dir: &Path, suite: CipherSuite) -> (u16, Child) {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(tongsuo)
        .args([
            "s_server",
            "-quiet",
            "-accept",
            &port.to_string(),
            "-enable_ntls",
            "-cipher",
            suite.tongsuo_name(),
        ])
        .args(["-Verify", "2", "-CAfile"])
        .arg(write(dir, "root.pem", p.ca.root.as_ref().unwrap().to_pem()))
        .arg("-chainCAfile")
        .arg(write(dir, "chain.pem", p.ca.chain_pem()))
        .arg("-sign_cert")
        .arg(write(dir, "ss.pem", p.ss.certificate.to_pem()))
        .arg("-sign_key")
        .arg(write(dir, "ss.key", p.ss.key_pem()))
        .arg("-enc_cert")
        .arg(write(dir, "se.pem", p.se.certificate.to_pem()))
        .arg("-enc_key")
        .arg(write(dir, "se.key", p.se.key_pem()))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (port, child)
}

/// Handshakes per second of the client load against `port`.
fn load(config: &Arc<ClientConfig>, port: u16) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(SECONDS);
    std::thread::scope(|s| {
        for _ in 0..CLIENTS {
            let (config, done) = (config.clone(), done.clone());
            s.spawn(move || {
                while Instant::now() < deadline {
                    let Ok(mut tcp) = TcpStream::connect(("127.0.0.1", port)) else { continue };
                    let _ = tcp.set_nodelay(true);
                    let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut conn =
                        Connection::client(config.clone(), &ServerName::try_from(NAME).unwrap()).unwrap();
                    if handshake(&mut conn, &mut tcp) {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    conn.send_close_notify();
                    let _ = tcp.write_all(&conn.take_tls());
                }
            });
        }
    });
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// MB/s of sealing then opening 16 KiB application records with `suite`'s record protection,
/// through two connected connections (one core).
fn bulk(p: &Pki, suite: CipherSuite) -> f64 {
    let server = Arc::new(ServerConfig::new(identity(&p.ss, &p.se, &p.ca), None).unwrap());
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        roots(&p.ca),
        Arc::new(claimlink_tls::provider()),
    )
    .build()
    .unwrap();
    let client = Arc::new(ClientConfig::new(verifier, None).with_suites(&[suite]).without_resumption());
    let mut c = Connection::client(client, &ServerName::try_from(NAME).unwrap()).unwrap();
    let mut s = Connection::server(server);
    for _ in 0..10 {
        let a = c.take_tls();
        if !a.is_empty() {
            s.read_tls(&a).unwrap();
        }
        let b = s.take_tls();
        if !b.is_empty() {
            c.read_tls(&b).unwrap();
        }
    }
    assert!(!c.is_handshaking() && !s.is_handshaking());
    let data = vec![0x5au8; 16 * 1024];
    let mut sink = vec![0u8; 64 * 1024];
    let mut best = 0f64;
    for _ in 0..5 {
        let start = Instant::now();
        let mut bytes = 0usize;
        while start.elapsed() < Duration::from_secs(1) {
            c.write_plaintext(&data).unwrap();
            let wire = c.take_tls();
            s.read_tls(&wire).unwrap();
            bytes += s.read_plaintext(&mut sink);
        }
        best = best.max(bytes as f64 / start.elapsed().as_secs_f64() / 1e6);
    }
    best
}

/// Tongsuo's `speed -evp <cipher> -bytes 16384 -seconds 3`, MB/s.
fn tongsuo_speed(tongsuo: &str, args: &[&str]) -> Option<f64> {
    let out = Command::new(tongsuo)
        .arg("speed")
        .args(args)
        .args(["-bytes", "16384", "-seconds", "3"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().rev().find(|l| l.split_whitespace().count() >= 2)?;
    let v = line.split_whitespace().last()?.trim_end_matches('k').parse::<f64>().ok()?;
    Some(v * 1000.0 / 1e6)
}

fn main() {
    let tongsuo = std::env::var("CLAIMLINK_TONGSUO").ok().filter(|t| Path::new(t).exists());
    let p = pki();
    let dir = tempfile::tempdir().unwrap();
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        roots(&p.ca),
        Arc::new(claimlink_tls::provider()),
    )
    .build()
    .unwrap();
    let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots(&p.ca),
        Arc::new(claimlink_tls::provider()),
    )
    .build()
    .unwrap();
    let server = Arc::new(
        ServerConfig::new(identity(&p.ss, &p.se, &p.ca), Some(client_verifier))
            .unwrap()
            .with_session_capacity(0),
    );
    let port = our_server(server);
    println!(
        "| suite | claimlink-tls server, handshakes/s | Tongsuo 8.5 s_server, handshakes/s | ours / Tongsuo |"
    );
    println!("|---|---:|---:|---:|");
    for suite in CipherSuite::ALL {
        let client = Arc::new(
            ClientConfig::new(verifier.clone(), Some(identity(&p.cs, &p.ce, &p.ca)))
                .with_suites(&[suite])
                .without_resumption(),
        );
        let ours = load(&client, port);
        let theirs = tongsuo.as_deref().map(|t| {
            let (tport, mut child) = tongsuo_server(t, &p, dir.path(), suite);
            let rate = load(&client, tport);
            let _ = child.kill();
            let _ = child.wait();
            rate
        });
        match theirs {
            Some(t) => println!("| {suite} | {ours:.0} | {t:.0} | {:.2} |", ours / t),
            None => println!("| {suite} | {ours:.0} | n/a (no Tongsuo: bash .ci/tongsuo.sh) | |"),
        }
    }
    println!();
    println!(
        "| record protection (16 KiB records) | claimlink-tls seal+open MB/s | Tongsuo `speed -evp` (encrypt only) MB/s |"
    );
    println!("|---|---:|---:|");
    for (suite, evp) in [(CipherSuite::EccSm4GcmSm3, "sm4-gcm"), (CipherSuite::EccSm4CbcSm3, "sm4-cbc")] {
        let ours = bulk(&p, suite);
        let theirs = tongsuo.as_deref().and_then(|t| tongsuo_speed(t, &["-evp", evp]));
        let theirs = theirs.map_or("n/a".to_owned(), |v| format!("{v:.0}"));
        println!("| {} ({}) | {ours:.0} | {theirs} |", suite.name(), evp);
    }
    if let Some(t) = tongsuo.as_deref() {
        let hmac = tongsuo_speed(t, &["-hmac", "sm3"]).map_or("n/a".to_owned(), |v| format!("{v:.0}"));
        println!("| (HMAC-SM3 alone, CBC's MAC) | | {hmac} |");
    }
}
