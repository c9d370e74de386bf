//! A subscriber that stops reading must cost only itself: the publisher and the other
//! subscribers go on at full speed. Driven in-process over loopback TCP with the protocol
//! core's client.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::time::{Duration, Instant};

use claimlink_broker::{AllowAll, Broker, Limits};
use claimlink_mqtt::QoS;
use claimlink_mqtt::client::{ClientConnection, ClientEvent, ClientOptions};
use claimlink_mqtt::packet::SubscriptionOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A client connection with its socket.
struct Client {
    socket: TcpStream,
    conn: ClientConnection,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(port: u16, id: &str) -> Self {
        let socket = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut c = Self {
            socket,
            conn: ClientConnection::new(ClientOptions::new(id), Instant::now()),
            buf: vec![0; 64 * 1024],
        };
        let events = c.until(|e| matches!(e, ClientEvent::Connected { .. })).await;
        assert!(matches!(events.last(), Some(ClientEvent::Connected { .. })), "{events:?}");
        c
    }

    async fn flush(&mut self) {
        let out = self.conn.take_output();
        if !out.is_empty() {
            self.socket.write_all(&out).await.unwrap();
        }
    }

    /// Runs until an event satisfies `stop`; returns the events seen.
    async fn until(&mut self, stop: impl Fn(&ClientEvent) -> bool) -> Vec<ClientEvent> {
        let mut seen = Vec::new();
        loop {
            // Events left from the last read first.
            while let Some(e) = self.conn.poll_event() {
                let done = stop(&e);
                seen.push(e);
                if done {
                    self.flush().await;
                    return seen;
                }
            }
            self.flush().await;
            let Ok(n) = tokio::time::timeout(Duration::from_secs(10), self.socket.read(&mut self.buf)).await
            else {
                panic!("no progress for 10 s: {:?}; seen {seen:?}", self.conn);
            };
            let n = n.unwrap();
            assert!(n > 0, "closed");
            self.conn.handle_input(Instant::now(), &self.buf[..n]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_does_not_slow_the_others() {
    let limits = Limits { max_queued: 100, ..Limits::default() };
    let broker = Broker::new(AllowAll, limits);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let b = broker.clone();
    tokio::spawn(async move { b.serve_tcp(listener, shutdown).await });

    // The stalled subscriber subscribes, then never reads again.
    let mut stalled = Client::connect(port, "stalled").await;
    stalled
        .conn
        .subscribe(Instant::now(), &[("load/#", SubscriptionOptions::qos(QoS::AtLeastOnce))])
        .unwrap();
    stalled.until(|e| matches!(e, ClientEvent::Subscribed { .. })).await;

    let mut fast = Client::connect(port, "fast").await;
    fast.conn.subscribe(Instant::now(), &[("load/#", SubscriptionOptions::qos(QoS::AtLeastOnce))]).unwrap();
    fast.until(|e| matches!(e, ClientEvent::Subscribed { .. })).await;

    // Rounds of 50 messages (the fast subscriber's queues hold 100, so a round never overflows
    // them); 400 rounds of 1 KiB fill the stalled subscriber's window, queue and socket buffers
    // many times over. If anything waited on the stalled one, a round would stop.
    let mut publisher = Client::connect(port, "publisher").await;
    let payload = vec![7u8; 1024];
    let started = Instant::now();
    for round in 0..400 {
        for _ in 0..50 {
            publisher
                .conn
                .publish(Instant::now(), "load/x", payload.clone(), QoS::AtLeastOnce, false)
                .unwrap();
        }
        let mut acked = 0;
        while acked < 50 {
            let events = publisher.until(|e| matches!(e, ClientEvent::Published { .. })).await;
            acked += events.iter().filter(|e| matches!(e, ClientEvent::Published { .. })).count();
        }
        let mut got = 0;
        while got < 50 {
            let events = fast.until(|e| matches!(e, ClientEvent::Message(_))).await;
            got += events.iter().filter(|e| matches!(e, ClientEvent::Message(_))).count();
        }
        assert_eq!(got, 50, "round {round}: the fast subscriber got exactly the round's messages");
    }
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
    assert_eq!(broker.clients(), 3, "the stalled one is still connected, just not served");
    drop(stalled);
}
