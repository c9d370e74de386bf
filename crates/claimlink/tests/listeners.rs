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

/// One HTTP/1.1 request from `source` (a loopback address); returns status, head and body.
fn http(
    source: [u8; 4],
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((source, 0))).unwrap();
        let Ok(mut s) = socket.connect(SocketAddr::from(([127, 0, 0, 1], port))).await else {
            return (0, String::new(), Vec::new());
        };
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        let _ = s.write_all(req.as_bytes()).await;
        let _ = s.write_all(body).await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut out)).await;
        let split = out.windows(4).position(|w| w == b"\r\n\r\n").map_or(out.len(), |i| i + 4);
        let head = String::from_utf8_lossy(&out[..split]).into_owned();
        let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        (status, head, out[split..].to_vec())
    })
}

fn session_cookie(head: &str) -> String {
    head.lines()
        .find_map(|l| l.strip_prefix("set-cookie: ").or_else(|| l.strip_prefix("Set-Cookie: ")))
        .and_then(|c| c.split(';').next())
        .unwrap_or_default()
        .to_owned()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

#[test]
fn expensive_portal_work_is_bounded_while_a_real_user_signs_in() {
    let p = Platform::up("portal_work");
    let (user, attacker) = ([127, 0, 0, 2], [127, 0, 0, 1]);
    let form = |email: &str| format!("email={email}&password=correct-horse-battery");
    let (status, _, _) =
        http(user, p.portal, "POST", "/signup", &[FORM], form("user%40example.com").as_bytes());
    assert_eq!(status, 303);
    let (status, head, _) =
        http(attacker, p.portal, "POST", "/signup", &[FORM], form("mallory%40example.com").as_bytes());
    assert_eq!(status, 303);
    let cookie = session_cookie(&head);
    assert!(cookie.starts_with("claimlink_session="), "{head}");

    // A decompression bomb: a small PNG that decodes to 6000 x 6000 pixels.
    let img = image::GrayImage::from_pixel(6000, 6000, image::Luma([255u8]));
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
    let boundary = "claimlinkboundary";
    let mut upload = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"x.png\"\r\nContent-Type: image/png\r\n\r\n").into_bytes();
    upload.extend_from_slice(&png);
    upload.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let upload = std::sync::Arc::new(upload);

    let pid = p.pid();
    let baseline = rss_kib(pid);
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(baseline));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let port = p.portal;
    let mut attack = Vec::new();
    for _ in 0..16 {
        let (upload, cookie) = (upload.clone(), cookie.clone());
        attack.push(std::thread::spawn(move || {
            let ct = format!("multipart/form-data; boundary={boundary}");
            http(
                attacker,
                port,
                "POST",
                "/devices/scan",
                &[("Content-Type", &ct), ("Cookie", &cookie)],
                &upload,
            )
            .0
        }));
    }
    for i in 0..100 {
        attack.push(std::thread::spawn(move || {
            let body = format!("email=nobody{i}%40example.com&password=wrong-password-{i}");
            http(attacker, port, "POST", "/signin", &[FORM], body.as_bytes()).0
        }));
    }
    // The real user signs in meanwhile (a busy answer is allowed, an endless wait is not).
    let started = Instant::now();
    let signed_in = loop {
        let (status, head, _) =
            http(user, port, "POST", "/signin", &[FORM], form("user%40example.com").as_bytes());
        if status == 303 {
            break session_cookie(&head);
        }
        assert!(matches!(status, 503 | 429), "the real user got {status}");
        assert!(started.elapsed() < Duration::from_secs(30), "the real user could not sign in for 30 s");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(signed_in.starts_with("claimlink_session="));
    let statuses: Vec<u16> = attack.into_iter().map(|t| t.join().unwrap()).collect();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    sampler.join().unwrap();
    let grown_mib = peak.load(std::sync::atomic::Ordering::Relaxed).saturating_sub(baseline) / 1024;
    eprintln!(
        "portal work: grew {grown_mib} MiB; statuses {statuses:?}; real user in {:?}",
        started.elapsed()
    );
    assert!(grown_mib < 600, "the process grew by {grown_mib} MiB under the flood");
    // At most the pool's places (1 decoding, 2 waiting) are worked on; the rest are refused with
    // 503 before their bodies are read - which a client still writing its 8 MiB body may see as
    // a reset connection (0) instead of the answer.
    let uploads = &statuses[..16];
    let processed = uploads.iter().filter(|s| !matches!(s, 503 | 0)).count();
    assert!(processed <= 3, "QR uploads beyond the pool are refused: {statuses:?}");
    assert!(
        uploads.iter().any(|s| matches!(s, 503 | 0)),
        "QR uploads beyond the pool are refused: {statuses:?}"
    );
    // The locked-out source is refused; the real user's source is not.
    let (status, _, _) =
        http(attacker, port, "POST", "/signin", &[FORM], form("mallory%40example.com").as_bytes());
    assert_eq!(status, 429, "a locked-out source is refused even with the right password");
}

#[test]
fn oversized_fields_and_bodies_get_json_errors_and_change_nothing() {
    let p = Platform::up("oversized");
    // A claim over the 64 KiB body limit: refused as JSON.
    let huge = "a".repeat(100 * 1024);
    let (status, body) =
        p.claim_api("POST", "/claims", &json!({"thingName": huge, "endpoint": p.oem_endpoint()}));
    assert_eq!((status, body["code"].as_str()), (413, Some("PayloadTooLarge")), "{body}");
    // The portal's forms take 16 KiB (a 4 MB device ID used to reach the claim rate limiter).
    let (status, head, _) = http(
        [127, 0, 0, 1],
        p.portal,
        "POST",
        "/signup",
        &[FORM],
        b"email=big%40example.com&password=correct-horse-battery",
    );
    assert_eq!(status, 303);
    let cookie = session_cookie(&head);
    let form = format!("thing={}&code=AAAA-AAAA-AAAA-AAAA", "a".repeat(4 * 1024 * 1024));
    let (status, _, _) =
        http([127, 0, 0, 1], p.portal, "POST", "/devices/add", &[FORM, ("Cookie", &cookie)], form.as_bytes());
    assert!(status == 413 || status == 0, "a 4 MB form was taken: {status}");
    let form = format!("thing={}&code=AAAA-AAAA-AAAA-AAAA", "a".repeat(8 * 1024));
    let (status, _, body) =
        http([127, 0, 0, 1], p.portal, "POST", "/devices/add", &[FORM, ("Cookie", &cookie)], form.as_bytes());
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("InvalidRequest"));
    // Within the body limit but not a ThingName: refused before anything is stored.
    let long = "a".repeat(60_000);
    let (status, body) =
        p.claim_api("POST", "/claims", &json!({"thingName": long, "endpoint": p.oem_endpoint()}));
    assert_eq!((status, body["code"].as_str()), (400, Some("InvalidRequest")), "{body}");
    let refusals = p.staging_admin("GET", "/staging/claim-refusals", None).1;
    assert!(!refusals.to_string().contains(&long[..300]), "a junk name is not stored: {refusals}");
    // The admin API: too large, a malformed query, a wrong method: all {code, message}.
    let token = p.read("account-token");
    let auth = format!("bearer {}", token.trim()); // the scheme is case-insensitive
    let big = vec![b'x'; 200 * 1024];
    let (status, _, body) = http(
        [127, 0, 0, 1],
        p.admin_api,
        "POST",
        "/policies/p1",
        &[("Authorization", &auth), ("Content-Type", "application/json")],
        &big,
    );
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((status, v["code"].as_str()), (413, Some("PayloadTooLarge")), "{v}");
    let (status, v) = p.staging_admin("GET", "/staging/claims?maxResults=abc", None);
    assert_eq!((status, v["code"].as_str()), (400, Some("InvalidRequestException")), "{v}");
    assert!(v["message"].as_str().is_some_and(|m| m.contains("maxResults")), "{v}");
    let (status, _, body) =
        http([127, 0, 0, 1], p.admin_api, "GET", "/things", &[("Authorization", &auth)], b"");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let (status, _, body) =
        http([127, 0, 0, 1], p.admin_api, "DELETE", "/endpoint", &[("Authorization", &auth)], b"");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((status, v["code"].as_str()), (405, Some("MethodNotAllowed")), "{v}");
}

/// `curveSM2` as a client that sends a key share off the curve: the point (1, 1).
#[derive(Debug)]
struct OffCurveShare;

impl rustls::crypto::SupportedKxGroup for OffCurveShare {
    fn start(&self) -> Result<Box<dyn rustls::crypto::ActiveKeyExchange>, rustls::Error> {
        let mut point = vec![0u8; 65];
        point[0] = 4;
        point[32] = 1;
        point[64] = 1;
        Ok(Box::new(OffCurve(point)))
    }

    fn name(&self) -> rustls::NamedGroup {
        claimlink_tls::NAMED_GROUP_CURVE_SM2
    }
}

struct OffCurve(Vec<u8>);

impl rustls::crypto::ActiveKeyExchange for OffCurve {
    fn complete(self: Box<Self>, _: &[u8]) -> Result<rustls::crypto::SharedSecret, rustls::Error> {
        Err(rustls::Error::General("never reached: the server refuses the share".into()))
    }

    fn pub_key(&self) -> &[u8] {
        &self.0
    }

    fn group(&self) -> rustls::NamedGroup {
        claimlink_tls::NAMED_GROUP_CURVE_SM2
    }
}

static OFF_CURVE_SHARE: OffCurveShare = OffCurveShare;

/// A TLS 1.3 handshake with an SM2 device's certificate to staging MQTT, with `kx` as the only
/// key exchange group; the handshake's result.
fn sm2_handshake(
    p: &Platform,
    kx: &'static dyn rustls::crypto::SupportedKxGroup,
) -> Result<(), rustls::Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let dir = tempfile::tempdir().unwrap();
    let (chain, key) = p.device_files(&p.sm2_devices()[0], dir.path());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(p.endpoint_ca()).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut provider = claimlink_tls::strict_provider();
    provider.kx_groups = vec![kx];
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            CertificateDer::pem_file_iter(&chain).unwrap().map(Result::unwrap).collect(),
            PrivateKeyDer::from_pem_file(&key).unwrap(),
        )
        .unwrap();
    let name = ServerName::try_from("staging.localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut sock = TcpStream::connect(("127.0.0.1", p.staging_mqtt)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).map_err(|e| match e.into_inner() {
            Some(inner) => match inner.downcast::<rustls::Error>() {
                Ok(tls) => *tls,
                Err(other) => rustls::Error::General(other.to_string()),
            },
            None => rustls::Error::General("I/O error".into()),
        })?;
    }
    Ok(())
}

#[test]
fn an_off_curve_key_share_gets_an_alert_and_a_log_line_and_changes_nothing() {
    let p = Platform::up("off-curve-share");
    let err = sm2_handshake(&p, &OFF_CURVE_SHARE).unwrap_err();
    assert_eq!(
        err,
        rustls::Error::AlertReceived(rustls::AlertDescription::IllegalParameter),
        "the server answers an invalid curveSM2 share with illegal_parameter"
    );
    let line = p.wait_log(&["TLS handshake failed", "listener=\"staging-mqtt\"", "InvalidKeyShare"]);
    assert!(line.contains("WARN"), "{line}");
    // A flood of them costs the log about a line a second, not a line each.
    for _ in 0..50 {
        assert!(sm2_handshake(&p, &OFF_CURVE_SHARE).is_err());
    }
    // The listener serves on: the same device with a real share completes its handshake.
    sm2_handshake(&p, &claimlink_tls::CURVE_SM2).unwrap();
    let lines = p.log_lines(&["TLS handshake failed"]);
    assert!(lines.len() <= 5, "51 failures in about a second wrote {} lines:\n{lines:#?}", lines.len());
    std::thread::sleep(Duration::from_millis(1100));
    assert!(sm2_handshake(&p, &OFF_CURVE_SHARE).is_err());
    // The next line written says how many were left out (the log is read as it is written).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !p.log_lines(&["TLS handshake failed", "left_out="]).iter().any(|l| !l.contains("left_out=0")) {
        assert!(
            std::time::Instant::now() < deadline,
            "no line with a left_out count: {:#?}",
            p.log_lines(&["left_out="])
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `bytes` to staging MQTT and returns what comes back before the server closes.
fn raw_exchange(port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    std::io::Write::write_all(&mut s, bytes).unwrap();
    let mut back = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut back);
    back
}

#[test]
fn malformed_tlcp_handshakes_get_the_right_alert_a_log_line_and_change_nothing() {
    let p = Platform::up("tlcp-bad-input");
    let port = p.staging_port();
    // An empty ClientHello in a TLCP record: decode_error (50), fatal, in a TLCP record.
    let back = raw_exchange(port, &[22, 1, 1, 0, 4, 1, 0, 0, 0]);
    assert_eq!(back, [21, 1, 1, 0, 2, 2, 50], "decode_error for an empty ClientHello");
    p.wait_log(&["TLS handshake failed", "listener=\"staging-mqtt\"", "ClientHello", "DecodeError"]);
    // A well-formed ClientHello offering no TLCP suite: handshake_failure (40).
    let mut hello = vec![1, 1];
    hello.extend_from_slice(&[7; 32]);
    hello.extend_from_slice(&[0, 0, 2, 0x00, 0x33, 1, 0]);
    let mut msg = vec![1, 0, 0, hello.len() as u8];
    msg.extend_from_slice(&hello);
    let mut record = vec![22, 1, 1, 0, msg.len() as u8];
    record.extend_from_slice(&msg);
    assert_eq!(
        raw_exchange(port, &record),
        [21, 1, 1, 0, 2, 2, 40],
        "handshake_failure without a common suite"
    );
    // A record longer than TLCP allows: record_overflow (22).
    assert_eq!(raw_exchange(port, &[22, 1, 1, 0xff, 0xff, 1]), [21, 1, 1, 0, 2, 2, 22]);
    // The listener serves on: an SM2 device still gets in over TLS 1.3 with SM.
    sm2_handshake(&p, &claimlink_tls::CURVE_SM2).unwrap();
}
