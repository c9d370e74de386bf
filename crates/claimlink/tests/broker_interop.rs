//! `claimlink broker` against real MQTT clients (mosquitto_pub and mosquitto_sub) over mutual
//! TLS with P-256 certificates from our own CA, and against raw bytes for malformed input.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, SystemTime};

use claimlink_pki::{Issuer, Profile, Subject, issue, pem};
use claimlink_testkit::{openssl, run_ok, tool};

const PASS: &str = "correct horse battery staple";

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_claimlink"))
}

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn p(&self, f: &str) -> String {
        self.dir.path().join(f).to_string_lossy().into_owned()
    }

    /// A P-256 CA, a server certificate for 127.0.0.1, and client certificates: "good" from our
    /// CA, "stranger" from another CA, "expired" from our CA but expired yesterday.
    fn new() -> Self {
        let pki = Self { dir: tempfile::tempdir().unwrap() };
        std::fs::write(pki.p("pass"), format!("{PASS}\n")).unwrap();
        for ca in ["ca", "other-ca"] {
            run_ok(bin().args([
                "ca",
                "init",
                "--algorithm",
                "p256",
                "--subject",
                &format!("CN={ca},O=T"),
                "--out",
                &pki.p(ca),
                "--passphrase-file",
                &pki.p("pass"),
            ]));
        }
        for (name, ca, profile) in [
            ("server", "ca", "server"),
            ("good", "ca", "claim-thing"),
            ("stranger", "other-ca", "claim-thing"),
            ("expired", "ca", "claim-thing"),
        ] {
            run_ok(Command::new("openssl").args([
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                &pki.p(&format!("{name}.key")),
            ]));
            run_ok(Command::new("openssl").args([
                "req",
                "-new",
                "-key",
                &pki.p(&format!("{name}.key")),
                "-subj",
                &format!("/CN={name}"),
                "-out",
                &pki.p(&format!("{name}.csr")),
            ]));
            if name == "expired" {
                pki.issue_expired();
                continue;
            }
            let mut cmd = bin();
            cmd.args([
                "ca",
                "sign-csr",
                "--ca",
                &pki.p(ca),
                "--passphrase-file",
                &pki.p("pass"),
                "--csr",
                &pki.p(&format!("{name}.csr")),
                "--profile",
                profile,
                "--out",
                &pki.p(&format!("{name}.leaf.pem")),
            ]);
            if name == "server" {
                cmd.args(["--dns", "localhost", "--ip", "127.0.0.1"]);
            }
            run_ok(&mut cmd);
            let chain = std::fs::read_to_string(pki.p(&format!("{name}.leaf.pem"))).unwrap()
                + &std::fs::read_to_string(pki.p(&format!("{ca}/issuing-ca.pem"))).unwrap();
            std::fs::write(pki.p(&format!("{name}.pem")), chain).unwrap();
        }
        pki
    }

    fn issue_expired(&self) {
        let key = pem::private_key_from_pem(
            &std::fs::read(self.p("ca/issuing-ca.key")).unwrap(),
            Some(PASS.as_bytes()),
        )
        .unwrap();
        let ca = claimlink_pki::Certificate::from_pem(&std::fs::read(self.p("ca/issuing-ca.pem")).unwrap())
            .unwrap();
        let csr = claimlink_pki::CertificateRequest::from_pem(&std::fs::read(self.p("expired.csr")).unwrap())
            .unwrap();
        let day = Duration::from_secs(86_400);
        let mut subject =
            Subject::new(csr.subject().clone(), csr.public_key().clone(), SystemTime::now() - day * 3, day);
        subject.not_before = SystemTime::now() - day * 3;
        let mut rng = rand_core::UnwrapErr(getrandom::SysRng);
        let cert =
            issue(&Issuer { certificate: Some(&ca), signer: &key }, &Profile::ClaimThing, &subject, &mut rng)
                .unwrap();
        std::fs::write(self.p("expired.pem"), cert.to_pem() + &ca.to_pem()).unwrap();
    }
}

struct BrokerProc {
    child: Child,
    tls: u16,
    tcp: u16,
}

impl BrokerProc {
    fn start(pki: &Pki) -> Self {
        let config = format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[[listener]]\nbind = \"127.0.0.1:0\"\n[listener.tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\nclient_ca = \"{}\"\n",
            pki.p("server.pem"),
            pki.p("server.key"),
            pki.p("ca/chain.pem")
        );
        std::fs::write(pki.p("broker.toml"), config).unwrap();
        let mut child = bin()
            .args(["broker", "--config", &pki.p("broker.toml")])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut port = |scheme: &str| -> u16 {
            let line = lines.next().unwrap().unwrap();
            assert!(line.starts_with(&format!("listening on {scheme}://")), "{line}");
            line.rsplit(':').next().unwrap().parse().unwrap()
        };
        let tcp = port("mqtt");
        let tls = port("mqtts");
        Self { child, tls, tcp }
    }
}

impl Drop for BrokerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tls_args(pki: &Pki, port: u16, client: Option<&str>) -> Vec<String> {
    let mut a = vec![
        "-h".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
        "--cafile".into(),
        pki.p("ca/root-ca.pem"),
    ];
    if let Some(c) = client {
        a.extend(["--cert".into(), pki.p(&format!("{c}.pem")), "--key".into(), pki.p(&format!("{c}.key"))]);
    }
    a
}

fn sub(pki: &Pki, b: &BrokerProc, extra: &[&str]) -> Child {
    let child = Command::new("mosquitto_sub")
        .args(tls_args(pki, b.tls, Some("good")))
        .args(["-v", "-W", "10"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400)); // let the subscription land
    child
}

fn publish(pki: &Pki, b: &BrokerProc, client: Option<&str>, extra: &[&str]) -> Output {
    Command::new("mosquitto_pub").args(tls_args(pki, b.tls, client)).args(extra).output().unwrap()
}

fn output_of(child: Child) -> String {
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn peers(test: &str) -> bool {
    openssl(test).is_some() && tool(test, "mosquitto_pub", "--help", "mosquitto-clients").is_some()
}

#[test]
fn qos_0_1_2_and_retained_over_mutual_tls() {
    if !peers("broker_qos") {
        return;
    }
    let pki = Pki::new();
    let b = BrokerProc::start(&pki);
    for qos in ["0", "1", "2"] {
        let s = sub(&pki, &b, &["-t", "sensors/#", "-q", qos, "-C", "1"]);
        let p = publish(&pki, &b, Some("good"), &["-t", "sensors/t1", "-m", &format!("v{qos}"), "-q", qos]);
        assert!(p.status.success(), "{p:?}");
        assert_eq!(output_of(s).trim(), format!("sensors/t1 v{qos}"));
    }
    let p = publish(&pki, &b, Some("good"), &["-t", "state/lamp", "-m", "on", "-r", "-q", "1"]);
    assert!(p.status.success());
    let s = sub(&pki, &b, &["-t", "state/+", "-C", "1"]);
    assert_eq!(output_of(s).trim(), "state/lamp on", "retained message delivered on subscribe");
}

#[test]
fn the_will_is_published_when_a_client_vanishes() {
    if !peers("broker_will") {
        return;
    }
    let pki = Pki::new();
    let b = BrokerProc::start(&pki);
    let watcher = sub(&pki, &b, &["-t", "lwt/#", "-C", "1"]);
    let mut doomed = Command::new("mosquitto_sub")
        .args(tls_args(&pki, b.tls, Some("good")))
        .args(["-t", "x", "-i", "doomed", "--will-topic", "lwt/doomed", "--will-payload", "gone", "-k", "5"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    doomed.kill().unwrap(); // no DISCONNECT: the socket just closes
    doomed.wait().unwrap();
    assert_eq!(output_of(watcher).trim(), "lwt/doomed gone");
}

#[test]
fn clients_without_a_valid_certificate_are_refused_at_the_handshake() {
    if !peers("broker_refusals") {
        return;
    }
    let pki = Pki::new();
    let b = BrokerProc::start(&pki);
    for client in [None, Some("stranger"), Some("expired")] {
        let p = publish(&pki, &b, client, &["-t", "t", "-m", "x"]);
        assert!(!p.status.success(), "{client:?} must be refused: {p:?}");
    }
    // And a good one still works afterwards.
    assert!(publish(&pki, &b, Some("good"), &["-t", "t", "-m", "x"]).status.success());
}

fn raw_connect(port: u16, client_id: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let id = client_id.as_bytes();
    let mut pkt =
        vec![0x10, (13 + id.len()) as u8, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 30, 0, 0, id.len() as u8];
    pkt.extend(id);
    s.write_all(&pkt).unwrap();
    let mut connack = [0u8; 2];
    s.read_exact(&mut connack).unwrap();
    assert_eq!(connack[0], 0x20);
    let mut rest = vec![0u8; usize::from(connack[1])];
    s.read_exact(&mut rest).unwrap();
    assert_eq!(rest[1], 0, "CONNACK success");
    s
}

fn read_all(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

#[test]
fn malformed_packets_close_only_that_connection_with_the_reason() {
    if !peers("broker_malformed") {
        return;
    }
    let pki = Pki::new();
    let b = BrokerProc::start(&pki);
    let mut bystander = raw_connect(b.tcp, "bystander");
    let cases: [(&[u8], u8); 4] = [
        (&[0x30, 0x04, 0, 2, 0xC3, 0x28], 0x81),       // invalid UTF-8 topic
        (&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F], 0x81), // five-byte remaining length
        (&[0x10, 0x0D, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 30, 0, 0, 0], 0x82), // a second CONNECT
        (&[0x30, 0xFF, 0xFF, 0xFF, 0x7F], 0x95),       // announces 256 MiB
    ];
    for (i, (bytes, reason)) in cases.iter().enumerate() {
        let mut s = raw_connect(b.tcp, &format!("bad{i}"));
        s.write_all(bytes).unwrap();
        let got = read_all(&mut s);
        assert_eq!(got.first(), Some(&0xE0), "case {i}: DISCONNECT expected, got {got:02x?}");
        assert_eq!(got.get(2), Some(reason), "case {i}: reason {got:02x?}");
    }
    // The bystander is unaffected: PINGREQ still answered.
    bystander.write_all(&[0xC0, 0x00]).unwrap();
    let mut pong = [0u8; 2];
    bystander.read_exact(&mut pong).unwrap();
    assert_eq!(pong, [0xD0, 0x00]);
}

#[test]
fn a_second_connection_with_the_same_client_id_takes_over() {
    if !peers("broker_takeover") {
        return;
    }
    let pki = Pki::new();
    let b = BrokerProc::start(&pki);
    let mut first = raw_connect(b.tcp, "same");
    let _second = raw_connect(b.tcp, "same");
    let got = read_all(&mut first);
    assert_eq!(got, [0xE0, 0x01, 0x8E], "the older connection is told: session taken over");
}

#[test]
fn a_shared_subscription_splits_the_messages_between_its_members() {
    if !peers("broker_shared") {
        return;
    }
    let pki = Pki::new();
    let b = BrokerProc::start(&pki);
    let members: Vec<Child> = (0..2)
        .map(|_| sub(&pki, &b, &["-V", "mqttv5", "-t", "$share/workers/jobs/#", "-q", "1", "-C", "2"]))
        .collect();
    for i in 0..4 {
        let p = publish(
            &pki,
            &b,
            Some("good"),
            &["-V", "mqttv5", "-t", &format!("jobs/{i}"), "-m", "work", "-q", "1"],
        );
        assert!(p.status.success());
    }
    let got: Vec<usize> =
        members.into_iter().map(|m| output_of(m).lines().filter(|l| l.ends_with(" work")).count()).collect();
    assert_eq!(got, [2, 2], "each member gets its share, none twice");
}

#[test]
fn a_persistent_session_receives_what_was_published_while_it_was_away() {
    if !peers("broker_persistent") {
        return;
    }
    let pki = Pki::new();
    let b = BrokerProc::start(&pki);
    for (version, id) in
        [(vec!["-V", "mqttv311"], "persist-311"), (vec!["-V", "mqttv5", "-x", "60"], "persist-5")]
    {
        // Subscribe with a persistent session, then leave at once (-E).
        let first = Command::new("mosquitto_sub")
            .args(tls_args(&pki, b.tls, Some("good")))
            .args(&version)
            .args(["-i", id, "-c", "-q", "1", "-t", &format!("{id}/cmd/#"), "-E"])
            .output()
            .unwrap();
        assert!(first.status.success(), "{first:?}");
        let p = publish(&pki, &b, Some("good"), &["-t", &format!("{id}/cmd/reboot"), "-m", "now", "-q", "1"]);
        assert!(p.status.success());
        // Back again: the message waited.
        let again = sub(
            &pki,
            &b,
            &[version.as_slice(), &["-i", id, "-c", "-q", "1", "-t", &format!("{id}/cmd/#"), "-C", "1"]]
                .concat(),
        );
        assert_eq!(output_of(again).trim(), format!("{id}/cmd/reboot now"), "{id}");
    }
}

#[test]
fn a_delayed_will_waits_for_its_delay() {
    if !peers("broker_will_delay") {
        return;
    }
    let pki = Pki::new();
    let b = BrokerProc::start(&pki);
    let watcher = sub(&pki, &b, &["-t", "lwt/#", "-C", "1"]);
    let mut doomed = Command::new("mosquitto_sub")
        .args(tls_args(&pki, b.tls, Some("good")))
        .args(["-V", "5", "-t", "x", "-i", "slow-doom", "-c", "-x", "60"])
        .args([
            "--will-topic",
            "lwt/slow",
            "--will-payload",
            "late",
            "-D",
            "will",
            "will-delay-interval",
            "2",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let gone = std::time::Instant::now();
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    assert_eq!(output_of(watcher).trim(), "lwt/slow late");
    assert!(gone.elapsed() >= Duration::from_millis(1900), "will arrived after {:?}", gone.elapsed());
}

/// MQTT 5.0 section 3.14.2.2.2, with paho as the client: the Session Expiry Interval sent in
/// DISCONNECT replaces the one from CONNECT; 0 at CONNECT and non-zero at DISCONNECT is a
/// protocol error.
#[test]
fn the_session_expiry_set_at_disconnect_is_honoured() {
    let Some(mut py) = claimlink_testkit::Paho::start("session_expiry_at_disconnect") else { return };
    let pki = Pki::new();
    let b = BrokerProc::start(&pki);
    let mut run = |cmd: serde_json::Value| -> serde_json::Value {
        serde_json::from_str(&py.run(&cmd.to_string())).unwrap()
    };
    let connect = |name: &str, cid: &str, expiry: u32| {
        serde_json::json!({"op": "connect", "name": name, "cid": cid, "port": b.tcp, "clean": false,
                           "session_expiry": expiry})
    };
    // Connected with an hour, ended with 0: the session ends with the connection.
    assert_eq!(run(connect("a1", "shortened", 3600))["rc"], 0);
    run(serde_json::json!({"op": "subscribe", "name": "a1", "topic": "t/shortened", "qos": 1}));
    run(serde_json::json!({"op": "disconnect", "name": "a1", "session_expiry": 0}));
    let again = run(connect("a2", "shortened", 3600));
    assert_eq!(again["rc"], 0);
    assert_eq!(
        again.get("session_present"),
        None,
        "the session outlived a DISCONNECT with expiry 0: {again}"
    );
    run(serde_json::json!({"op": "disconnect", "name": "a2"}));
    // Connected with 1 s, extended to an hour at DISCONNECT: still there after 2 s.
    assert_eq!(run(connect("b1", "extended", 1))["rc"], 0);
    run(serde_json::json!({"op": "subscribe", "name": "b1", "topic": "t/extended", "qos": 1}));
    run(serde_json::json!({"op": "disconnect", "name": "b1", "session_expiry": 3600}));
    std::thread::sleep(Duration::from_millis(2500));
    let again = run(connect("b2", "extended", 3600));
    assert_eq!(again["session_present"], true, "the extended session was lost early: {again}");
    run(serde_json::json!({"op": "disconnect", "name": "b2", "session_expiry": 0}));
    // 0 at CONNECT, 60 at DISCONNECT: a protocol error, and no session kept.
    assert_eq!(run(connect("c1", "forbidden", 0))["rc"], 0);
    run(serde_json::json!({"op": "disconnect", "name": "c1", "session_expiry": 60}));
    let again = run(connect("c2", "forbidden", 3600));
    assert_eq!(again.get("session_present"), None, "{again}");
}
