//! What a stranger with no credentials can do to the listeners of a real `claimlink up`:
//! hold connections open (slowloris), run the process out of file descriptors. The listeners
//! must stay up, hold no more than their caps, free what they hold on time, and keep serving
//! everybody else.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod platform;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use claimlink_testkit::Paho;
use platform::Platform;
use serde_json::json;

/// Whether the server has closed `s` (a read returns end of stream or a reset).
fn closed(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let mut b = [0u8; 512];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue, // an answer (e.g. 408) before the close
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// `n` connections from 127.0.0.1 that send `prefix` and then nothing.
fn slow_clients(port: u16, n: usize, prefix: &[u8]) -> Vec<TcpStream> {
    (0..n)
        .filter_map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
            let _ = s.write_all(prefix);
            Some(s)
        })
        .collect()
}

fn count_open(conns: &mut [TcpStream]) -> usize {
    conns.iter_mut().map(closed).filter(|c| !c).count()
}

/// A plain HTTP GET from another loopback source address (127.0.0.2): a real user.
fn get_from_another_source(port: u16, path: &str) -> u16 {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from(([127, 0, 0, 2], 0))).unwrap();
        let mut s = socket.connect(SocketAddr::from(([127, 0, 0, 1], port))).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await.unwrap().unwrap();
        let text = String::from_utf8_lossy(&out);
        text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
    })
}

#[test]
fn slowloris_holds_at_most_the_per_source_cap_and_is_dropped_after_the_header_timeout() {
    let p = Platform::up("slowloris");
    const ATTACK: usize = 300;
    const CAP: usize = 64; // ListenerLimits::HTTP.max_per_source, stated in the README
    // The portal (HTTP): half a request line, then silence.
    let mut portal = slow_clients(p.portal, ATTACK, b"GET /signin HTTP/1.1\r\nHost: x\r\n");
    // The staging API (HTTPS): a TCP connection that never starts its TLS handshake.
    let mut api = slow_clients(p.staging_api, ATTACK, b"");
    std::thread::sleep(Duration::from_millis(500));
    let (held_portal, held_api) = (count_open(&mut portal), count_open(&mut api));
    assert!(held_portal <= CAP, "the portal holds {held_portal} of {ATTACK} slow connections");
    assert!(held_api <= CAP, "the staging API holds {held_api} of {ATTACK} slow connections");
    // Meanwhile somebody else is served at once.
    assert_eq!(get_from_another_source(p.portal, "/signin"), 200);
    // And the held ones are let go: header-read timeout (portal) and handshake timeout (API),
    // 10 s each.
    let deadline = Instant::now() + Duration::from_secs(20);
    while count_open(&mut portal) + count_open(&mut api) > 0 {
        assert!(Instant::now() < deadline, "slow connections still held after 20 s");
        std::thread::sleep(Duration::from_millis(500));
    }
    // A keep-alive connection that goes quiet after a request is closed too (idle timeout).
    let mut idle = TcpStream::connect(("127.0.0.1", p.portal)).unwrap();
    idle.write_all(b"GET /signin HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    idle.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let _ = idle.read_to_end(&mut buf);
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"), "answered first");
    assert!(started.elapsed() < Duration::from_secs(45), "an idle keep-alive connection was held");
}

#[test]
fn running_out_of_file_descriptors_does_not_end_a_listener() {
    let Some(mut py) = Paho::start("emfile") else { return };
    let p = Platform::up_with_nofile("emfile", Some(160));
    // Take every descriptor the process has left (and then some) with idle TCP connections.
    let mut flood = slow_clients(p.staging_mqtt, 400, b"");
    flood.extend(slow_clients(p.account_mqtt, 100, b""));
    std::thread::sleep(Duration::from_secs(1));
    let fds = std::fs::read_dir(format!("/proc/{}/fd", p.pid())).map(|d| d.count()).unwrap_or(0);
    assert!(fds >= 150, "the flood did not exhaust descriptors ({fds} open)");
    drop(flood);
    // The listeners are still there: a device connects to staging once descriptors are free.
    let dir = tempfile::tempdir().unwrap();
    let thing = &p.devices()[0];
    let (cert, key) = p.device_files(thing, dir.path());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = py.run(
            &json!({"op": "connect", "name": format!("d{}", deadline.elapsed().as_millis()), "cid": thing,
                    "port": p.staging_mqtt, "sni": "staging.localhost", "ca": p.endpoint_ca(),
                    "cert": cert, "key": key})
            .to_string(),
        );
        let v: serde_json::Value = serde_json::from_str(&r).unwrap();
        if v["rc"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "staging no longer accepts after descriptor exhaustion: {v}");
        std::thread::sleep(Duration::from_millis(500));
    }
    // And the portal still answers.
    assert_eq!(get_from_another_source(p.portal, "/signin"), 200);
}
