//! Mutual-TLS 1.3 handshakes per second over loopback: our rustls client (two threads, one
//! handshake after the other, each a fresh TCP connection with a client certificate) against
//! our server (rustls on claimlink-tls) and against Tongsuo's `s_server`, with SM2 certificates
//! and TLS_SM4_GCM_SM3/curveSM2, and against our server with P-256 certificates and the
//! international suites. Same client load for every server; all on one machine.
//!
//!     cargo bench -p claimlink-tls --bench handshake
//!
//! Prints a Markdown table; a row whose peer is missing says so. The "revocation" rows run our
//! server with what admission does after the handshake: parse the client's chain, and (on) look
//! every link up in a revocation index holding a CRL of 1,000,000 serials from its CA, or (off)
//! not; `REVOCATION_ONLY=1` runs just those rows, three rounds each way, interleaved.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: fail loudly

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use claimlink_pki::KeyAlgorithm;
use claimlink_testpki::{TestCa, TestLeaf};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;

const SECONDS: u64 = 5;
const CLIENTS: usize = 2;

struct Pki {
    ca: TestCa,
    server: TestLeaf,
    device: TestLeaf,
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

fn roots(ca: &TestCa) -> rustls::RootCertStore {
    let mut r = rustls::RootCertStore::empty();
    r.add(CertificateDer::from(ca.root.as_ref().unwrap().der().to_vec())).unwrap();
    r
}

fn provider(sm: bool) -> Arc<rustls::crypto::CryptoProvider> {
    if sm { claimlink_tls::shared_provider(true) } else { Arc::new(rustls::crypto::ring::default_provider()) }
}

/// What the server does with the client's chain after the handshake.
#[derive(Clone)]
enum After {
    Nothing,
    /// Parse it (as admission does), and look it up in the index when there is one.
    Admit(Option<Arc<claimlink_pki::crl::RevocationIndex>>),
}

/// A revocation index with a CRL of `n` random serials from `pki`'s CA applied.
fn index_of(pki: &Pki, n: usize) -> Arc<claimlink_pki::crl::RevocationIndex> {
    use claimlink_pki::crl::{self, Crl, CrlParams, Revocation, Serial};
    use rand_core::Rng as _;
    let mut rng = rand_core::UnwrapErr(getrandom::SysRng);
    let now = std::time::SystemTime::now();
    let entries = (0..n).map(|_| {
        let mut b = [0u8; 16];
        rng.fill_bytes(&mut b);
        b[0] = (b[0] & 0x7f) | 0x40;
        Revocation { serial: Serial::from_der_content(&b).unwrap(), revoked_at: now, reason: None }
    });
    let params = CrlParams {
        this_update: now,
        next_update: now + Duration::from_secs(86_400),
        number: 1,
        delta_base: None,
    };
    let der = crl::build(&pki.ca.certificate, &pki.ca.key, &params, entries.collect::<Vec<_>>()).unwrap();
    let crl = Crl::from_der(der, crl::DEFAULT_MAX_CRL_LEN).unwrap();
    let mut index = claimlink_pki::crl::RevocationIndex::default();
    index.apply(&pki.ca.certificate, &crl).unwrap();
    Arc::new(index)
}

/// Our server: a thread per connection, handshake then close.
fn our_server(pki: &Pki, sm: bool) -> (u16, Arc<AtomicBool>) {
    our_server_with(pki, sm, After::Nothing)
}

fn our_server_with(pki: &Pki, sm: bool, after: After) -> (u16, Arc<AtomicBool>) {
    let p = provider(sm);
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(&pki.ca)), p.clone()).build().unwrap();
    let certified = Arc::new(rustls::sign::CertifiedKey::new(
        chain(&pki.server, &pki.ca),
        claimlink_tls::any_signing_key(key(&pki.server)).unwrap(),
    ));
    let (sm2, intl) = if sm { (Some(certified), None) } else { (None, Some(certified)) };
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(p)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(claimlink_tls::DualCertResolver::new(sm2, intl))),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            if s.load(Ordering::Relaxed) {
                break;
            }
            let Ok(mut tcp) = tcp else { continue };
            let config = config.clone();
            let after = after.clone();
            std::thread::spawn(move || {
                let mut conn = rustls::ServerConnection::new(config).unwrap();
                while conn.is_handshaking() {
                    if conn.complete_io(&mut tcp).is_err() {
                        return;
                    }
                }
                if let After::Admit(index) = &after {
                    let path: Vec<claimlink_pki::Certificate> = conn
                        .peer_certificates()
                        .unwrap_or_default()
                        .iter()
                        .map(|c| claimlink_pki::Certificate::from_der(c.as_ref()).unwrap())
                        .collect();
                    if let Some(index) = index
                        && index.revoked_in(&path).is_some()
                    {
                        return;
                    }
                    std::hint::black_box(&path);
                }
                let _ = conn.complete_io(&mut tcp);
            });
        }
    });
    (port, stop)
}

fn write(dir: &Path, name: &str, text: String) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn tongsuo_server(tongsuo: &str, pki: &Pki, dir: &Path) -> (u16, Child) {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(tongsuo)
        .args([
            "s_server",
            "-quiet",
            "-accept",
            &port.to_string(),
            "-tls1_3",
            "-ciphersuites",
            "TLS_SM4_GCM_SM3",
        ])
        .args(["-sigalgs", "sm2sig_sm3", "-groups", "curveSM2", "-Verify", "2"])
        .arg("-cert")
        .arg(write(dir, "server.pem", pki.server.certificate.to_pem()))
        .arg("-cert_chain")
        .arg(write(dir, "issuing.pem", pki.ca.certificate.to_pem()))
        .arg("-key")
        .arg(write(dir, "server.key", pki.server.key_pem()))
        .arg("-CAfile")
        .arg(write(dir, "root.pem", pki.ca.root.as_ref().unwrap().to_pem()))
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
fn load(pki: &Pki, sm: bool, port: u16) -> f64 {
    let config = Arc::new(
        rustls::ClientConfig::builder_with_provider(provider(sm))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots(&pki.ca))
            .with_client_auth_cert(chain(&pki.device, &pki.ca), key(&pki.device))
            .unwrap(),
    );
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(SECONDS);
    std::thread::scope(|s| {
        for _ in 0..CLIENTS {
            let (config, done) = (config.clone(), done.clone());
            s.spawn(move || {
                while Instant::now() < deadline {
                    let Ok(mut tcp) = TcpStream::connect(("127.0.0.1", port)) else { continue };
                    let mut conn = rustls::ClientConnection::new(
                        config.clone(),
                        ServerName::try_from("endpoint.test").unwrap(),
                    )
                    .unwrap();
                    let mut ok = true;
                    while conn.is_handshaking() {
                        if conn.complete_io(&mut tcp).is_err() {
                            ok = false;
                            break;
                        }
                    }
                    if ok {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    conn.send_close_notify();
                    let _ = conn.complete_io(&mut tcp);
                }
            });
        }
    });
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn pki(alg: KeyAlgorithm) -> Pki {
    let ca = TestCa::issuing(alg, "CN=Bench CA,O=claimlink");
    Pki { server: ca.server(&["endpoint.test"]), device: ca.device("CN=bench-device"), ca }
}

/// Handshakes per second with the revocation check off and on, interleaved, best of three each.
fn revocation_rows(pki: &Pki, sm: bool, label: &str) {
    let t = Instant::now();
    let index = index_of(pki, 1_000_000);
    eprintln!("{label}: index of 1,000,000 serials built in {:.2} s", t.elapsed().as_secs_f64());
    let (mut off, mut on) = (0f64, 0f64);
    for _ in 0..3 {
        for (with, best) in [(None, &mut off), (Some(index.clone()), &mut on)] {
            let (port, stop) = our_server_with(pki, sm, After::Admit(with));
            *best = best.max(load(pki, sm, port));
            stop.store(true, Ordering::Relaxed);
            let _ = TcpStream::connect(("127.0.0.1", port));
        }
    }
    println!("| claimlink-tls, chain parsed, revocation check off | {label} | {off:.0} |");
    println!(
        "| claimlink-tls, chain parsed, revocation check on (1,000,000 revoked) | {label} | {on:.0} ({:+.1}%) |",
        (on / off - 1.0) * 100.0
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let sm = pki(KeyAlgorithm::Sm2);
    let p256 = pki(KeyAlgorithm::P256);
    if std::env::var("REVOCATION_ONLY").is_ok_and(|v| v == "1") {
        println!(
            "| server | certificates, suite | handshakes/s ({CLIENTS} client threads, {SECONDS} s, best of 3) |"
        );
        println!("|---|---|---:|");
        revocation_rows(&sm, true, "SM2, TLS_SM4_GCM_SM3, curveSM2");
        revocation_rows(&p256, false, "P-256, TLS_AES_256_GCM_SHA384, X25519");
        return;
    }
    println!("| server | certificates, suite | handshakes/s ({CLIENTS} client threads, {SECONDS} s) |");
    println!("|---|---|---:|");
    let (port, stop) = our_server(&sm, true);
    println!("| claimlink-tls (rustls) | SM2, TLS_SM4_GCM_SM3, curveSM2 | {:.0} |", load(&sm, true, port));
    stop.store(true, Ordering::Relaxed);
    let tongsuo = std::env::var("CLAIMLINK_TONGSUO").ok().or_else(|| {
        let home = std::env::var("HOME").ok()?;
        std::fs::read_dir(format!("{home}/.cache/claimlink"))
            .ok()?
            .filter_map(Result::ok)
            .map(|d| d.path().join("bin/tongsuo"))
            .find(|p| p.exists())
            .map(|p| p.to_string_lossy().into_owned())
    });
    match tongsuo {
        Some(t) => {
            let dir = tempfile::tempdir().unwrap();
            let (port, mut child) = tongsuo_server(&t, &sm, dir.path());
            println!(
                "| Tongsuo 8.5 s_server | SM2, TLS_SM4_GCM_SM3, curveSM2 | {:.0} |",
                load(&sm, true, port)
            );
            let _ = child.kill();
            let _ = child.wait();
        }
        None => println!("| Tongsuo s_server | SM2 | n/a (no Tongsuo: bash .ci/tongsuo.sh) |"),
    }
    let (port, stop) = our_server(&p256, false);
    println!(
        "| claimlink-tls (rustls) | P-256, TLS_AES_256_GCM_SHA384, X25519 | {:.0} |",
        load(&p256, false, port)
    );
    stop.store(true, Ordering::Relaxed);
}
