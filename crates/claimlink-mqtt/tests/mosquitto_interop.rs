//! The client state machine against an independent broker: Mosquitto (the Debian `mosquitto`
//! package, which `.ci/run` installs), started on a spare port for the test.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use claimlink_mqtt::client::{ClientConnection, ClientEvent, ClientOptions};
use claimlink_mqtt::packet::SubscriptionOptions;
use claimlink_mqtt::{ProtocolVersion, QoS, ReasonCode};
use claimlink_testkit::tool;

struct Mosquitto {
    child: Child,
    port: u16,
    _dir: std::path::PathBuf,
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

fn mosquitto(test: &str) -> Option<Mosquitto> {
    let bin = tool(test, "mosquitto", "-h", "mosquitto")?;
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!("claimlink-mosquitto-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("mosquitto.conf");
    // `user root`: when the tests run as root, Mosquitto would otherwise switch to a user that
    // may not exist in a container.
    std::fs::write(&conf, format!("listener {port} 127.0.0.1\nallow_anonymous true\nuser root\n")).unwrap();
    let child =
        Command::new(bin).arg("-c").arg(&conf).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Mosquitto { child, port, _dir: dir })
}

/// Drives one client over a blocking socket until `until` says stop (or 5 s pass).
struct Driver {
    socket: TcpStream,
    conn: ClientConnection,
    events: Vec<ClientEvent>,
}

impl Driver {
    fn connect(port: u16, options: ClientOptions) -> Self {
        let socket = TcpStream::connect(("127.0.0.1", port)).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let conn = ClientConnection::new(options, Instant::now());
        let mut d = Self { socket, conn, events: Vec::new() };
        d.run_until(|e| {
            e.iter().any(|e| matches!(e, ClientEvent::Connected { .. } | ClientEvent::Refused(_)))
        });
        d
    }

    fn run_until(&mut self, done: impl Fn(&[ClientEvent]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 4096];
        while !done(&self.events) {
            assert!(Instant::now() < deadline, "timed out; events so far: {:?}", self.events);
            let out = self.conn.take_output();
            if !out.is_empty() {
                self.socket.write_all(&out).unwrap();
            }
            match self.socket.read(&mut buf) {
                Ok(0) => self.conn.handle_transport_closed(),
                Ok(n) => self.conn.handle_input(Instant::now(), &buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("{e}"),
            }
            self.conn.handle_timeout(Instant::now());
            self.events.extend(std::iter::from_fn(|| self.conn.poll_event()));
        }
    }
}

fn count(events: &[ClientEvent], f: impl Fn(&ClientEvent) -> bool) -> usize {
    events.iter().filter(|e| f(e)).count()
}

#[test]
fn our_client_speaks_both_versions_with_mosquitto() {
    let Some(broker) = mosquitto("client_vs_mosquitto") else { return };
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let mut options = ClientOptions::new(format!("claimlink-{version:?}"));
        options.version = version;
        let mut d = Driver::connect(broker.port, options);
        assert!(
            matches!(d.events[0], ClientEvent::Connected { session_present: false, .. }),
            "{:?}",
            d.events
        );
        let now = Instant::now();
        d.conn.subscribe(now, &[("x/#", SubscriptionOptions::qos(QoS::ExactlyOnce))]).unwrap();
        d.run_until(|e| count(e, |e| matches!(e, ClientEvent::Subscribed { .. })) == 1);
        assert!(d.events.iter().any(
            |e| matches!(e, ClientEvent::Subscribed { reasons, .. } if reasons == &[ReasonCode::GrantedQoS2])
        ));
        for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce].into_iter().enumerate() {
            d.conn.publish(Instant::now(), &format!("x/{i}"), format!("m{i}"), qos, false).unwrap();
        }
        d.run_until(|e| {
            count(e, |e| matches!(e, ClientEvent::Message(_))) == 3
                && count(e, |e| matches!(e, ClientEvent::Published { .. })) == 2
        });
        let mut payloads: Vec<String> = d
            .events
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Message(p) => Some(String::from_utf8_lossy(&p.payload).into_owned()),
                _ => None,
            })
            .collect();
        payloads.sort();
        assert_eq!(payloads, ["m0", "m1", "m2"], "{version:?}");
        assert!(
            d.events.iter().all(|e| !matches!(e, ClientEvent::Published { reason, .. } if reason.is_error())),
            "{:?}",
            d.events
        );
        d.conn.disconnect(Instant::now());
        let out = d.conn.take_output();
        d.socket.write_all(&out).unwrap();
    }
}

#[test]
fn a_persistent_session_with_mosquitto_keeps_messages_while_away() {
    let Some(broker) = mosquitto("client_session_vs_mosquitto") else { return };
    let options = || {
        let mut o = ClientOptions::new("claimlink-persistent");
        o.clean_start = false;
        o.session_expiry = 300;
        o
    };
    let mut first = Driver::connect(broker.port, options());
    first.conn.subscribe(Instant::now(), &[("away/#", SubscriptionOptions::qos(QoS::AtLeastOnce))]).unwrap();
    first.run_until(|e| count(e, |e| matches!(e, ClientEvent::Subscribed { .. })) == 1);
    first.conn.disconnect(Instant::now());
    let out = first.conn.take_output();
    first.socket.write_all(&out).unwrap();
    drop(first);

    let mut other = Driver::connect(broker.port, ClientOptions::new("claimlink-other"));
    other.conn.publish(Instant::now(), "away/1", "while away", QoS::AtLeastOnce, false).unwrap();
    other.run_until(|e| count(e, |e| matches!(e, ClientEvent::Published { .. })) == 1);

    let mut back = Driver::connect(broker.port, options());
    assert!(
        matches!(back.events[0], ClientEvent::Connected { session_present: true, .. }),
        "{:?}",
        back.events
    );
    back.run_until(|e| count(e, |e| matches!(e, ClientEvent::Message(_))) == 1);
}
