//! The server connection state machine driven in memory with a virtual clock: no sockets, no
//! sleeps. The "client" is the codec encoding what a client would send.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::time::{Duration, Instant};

use bytes::Bytes;
use claimlink_mqtt::packet::*;
use claimlink_mqtt::server::{Event, SendError, ServerConfig, ServerConnection};
use claimlink_mqtt::{Packet, Properties, ProtocolVersion, QoS, ReasonCode, TopicFilter, decode, encode};

struct Pair {
    server: ServerConnection,
    now: Instant,
    version: ProtocolVersion,
}

fn connect_packet(version: ProtocolVersion, keep_alive: u16, props: Properties) -> Packet {
    Packet::Connect(Box::new(Connect {
        version,
        clean_start: true,
        keep_alive,
        client_id: "dev-1".into(),
        will: Some(Will {
            topic: "dev-1/status".into(),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties::default(),
        }),
        username: None,
        password: None,
        properties: props,
    }))
}

impl Pair {
    fn new(version: ProtocolVersion, config: ServerConfig) -> Self {
        let now = Instant::now();
        Self { server: ServerConnection::new(config, now), now, version }
    }

    /// Connected and accepted, with the CONNACK consumed.
    fn connected(version: ProtocolVersion, keep_alive: u16, props: Properties, config: ServerConfig) -> Self {
        let mut p = Self::new(version, config);
        p.send(&connect_packet(version, keep_alive, props));
        assert!(matches!(p.server.poll_event(), Some(Event::Connect(_))));
        p.server.accept(p.now, false, Properties::default());
        assert!(matches!(
            p.received().as_slice(),
            [Packet::ConnAck(ConnAck { reason: ReasonCode::Success, .. })]
        ));
        p
    }

    fn send(&mut self, packet: &Packet) {
        let mut bytes = Vec::new();
        encode(packet, self.version, &mut bytes).unwrap();
        self.server.handle_input(self.now, &bytes);
    }

    fn received(&mut self) -> Vec<Packet> {
        let bytes = self.server.take_output();
        let mut rest = bytes.as_slice();
        let mut out = Vec::new();
        while let Some((p, n)) = decode(rest, self.version, usize::MAX).unwrap() {
            out.push(p);
            rest = &rest[n..];
        }
        assert!(rest.is_empty());
        out
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.server.handle_timeout(self.now);
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.server.poll_event()).collect()
    }
}

fn publish(topic: &str, qos: QoS, id: Option<u16>) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: id,
        properties: Properties::default(),
        payload: Bytes::from_static(b"data"),
    }
}

fn closed_with(events: &[Event]) -> Option<(ReasonCode, bool)> {
    events.iter().find_map(|e| match e {
        Event::Closed { reason, will, .. } => Some((*reason, will.is_some())),
        _ => None,
    })
}

#[test]
fn connect_accept_and_the_announced_limits() {
    let p = Pair::connected(ProtocolVersion::V311, 0, Properties::default(), ServerConfig::default());
    assert!(!p.server.is_closed());
    let mut p5 = Pair::new(ProtocolVersion::V5, ServerConfig { receive_maximum: 7, ..Default::default() });
    p5.send(&connect_packet(ProtocolVersion::V5, 0, Properties::default()));
    let Some(Event::Connect(c)) = p5.server.poll_event() else { panic!() };
    assert_eq!(c.client_id, "dev-1");
    p5.server.accept(p5.now, true, Properties::default());
    let received = p5.received();
    let [Packet::ConnAck(ack)] = received.as_slice() else { panic!("{received:?}") };
    assert!(ack.session_present);
    assert_eq!(ack.properties.receive_maximum, Some(7));
    assert_eq!(ack.properties.topic_alias_maximum, Some(10));
}

#[test]
fn a_rejected_connect_gets_the_reason_in_the_clients_version() {
    let mut p = Pair::new(ProtocolVersion::V311, ServerConfig::default());
    p.send(&connect_packet(ProtocolVersion::V311, 0, Properties::default()));
    p.server.poll_event();
    p.server.reject(ReasonCode::NotAuthorized);
    assert_eq!(p.server.take_output(), [0x20, 0x02, 0x00, 0x05]);
    assert_eq!(
        closed_with(&p.events()),
        Some((ReasonCode::NotAuthorized, false)),
        "no will on a refused CONNECT"
    );
    // An MQTT 3.1 client (protocol level 3) is told 0x01 in the 3.1.1 format.
    let mut old = Pair::new(ProtocolVersion::V311, ServerConfig::default());
    old.server.handle_input(old.now, &[0x10, 0x0D, 0, 4, b'M', b'Q', b'T', b'T', 3, 0x02, 0, 0, 0, 1, b'c']);
    assert_eq!(old.server.take_output(), [0x20, 0x02, 0x00, 0x01]);
    assert!(old.server.is_closed());
}

#[test]
fn anything_before_connect_and_a_second_connect_are_protocol_errors() {
    let mut p = Pair::new(ProtocolVersion::V5, ServerConfig::default());
    p.send(&Packet::PingReq);
    assert_eq!(closed_with(&p.events()), Some((ReasonCode::ProtocolError, false)));
    let mut p = Pair::connected(ProtocolVersion::V5, 0, Properties::default(), ServerConfig::default());
    p.send(&connect_packet(ProtocolVersion::V5, 0, Properties::default()));
    assert!(matches!(
        p.received().as_slice(),
        [Packet::Disconnect(Disconnect { reason: ReasonCode::ProtocolError, .. })]
    ));
    assert_eq!(closed_with(&p.events()), Some((ReasonCode::ProtocolError, true)), "the will is published");
}

#[test]
fn connect_must_arrive_in_time_and_keep_alive_is_enforced_at_one_and_a_half_times() {
    let mut p = Pair::new(
        ProtocolVersion::V311,
        ServerConfig { connect_timeout: Duration::from_secs(5), ..Default::default() },
    );
    assert_eq!(p.server.poll_timeout(), Some(p.now + Duration::from_secs(5)));
    p.advance(Duration::from_secs(5));
    assert!(p.server.is_closed());

    let mut p = Pair::connected(ProtocolVersion::V311, 10, Properties::default(), ServerConfig::default());
    p.advance(Duration::from_secs(14));
    assert!(!p.server.is_closed());
    p.send(&Packet::PingReq);
    assert_eq!(p.received(), vec![Packet::PingResp]);
    p.advance(Duration::from_secs(14));
    assert!(!p.server.is_closed(), "the ping restarted the timer");
    p.advance(Duration::from_secs(1));
    assert_eq!(closed_with(&p.events()), Some((ReasonCode::KeepAliveTimeout, true)));
}

#[test]
fn incoming_qos1_and_qos2_flows() {
    let mut p = Pair::connected(ProtocolVersion::V311, 0, Properties::default(), ServerConfig::default());
    p.send(&Packet::Publish(publish("a/b", QoS::AtLeastOnce, Some(1))));
    assert!(matches!(p.events().as_slice(), [Event::Publish(m)] if m.topic == "a/b"));
    p.server.puback(1, ReasonCode::Success);
    assert_eq!(p.received(), vec![Packet::PubAck(Ack::new(1))]);

    p.send(&Packet::Publish(publish("a/b", QoS::ExactlyOnce, Some(2))));
    assert_eq!(p.events().len(), 1);
    p.server.pubrec(2, ReasonCode::Success);
    assert_eq!(p.received(), vec![Packet::PubRec(Ack::new(2))]);
    // A retransmission before PUBREL is not delivered twice.
    let mut dup = publish("a/b", QoS::ExactlyOnce, Some(2));
    dup.dup = true;
    p.send(&Packet::Publish(dup));
    assert!(p.events().is_empty());
    assert_eq!(p.received(), vec![Packet::PubRec(Ack::new(2))]);
    p.send(&Packet::PubRel(Ack::new(2)));
    assert_eq!(p.received(), vec![Packet::PubComp(Ack::new(2))]);
}

#[test]
fn the_receive_maximum_is_enforced() {
    let config = ServerConfig { receive_maximum: 2, ..Default::default() };
    let mut p = Pair::connected(ProtocolVersion::V5, 0, Properties::default(), config);
    for id in 1..=3 {
        p.send(&Packet::Publish(publish("t", QoS::AtLeastOnce, Some(id))));
    }
    let out = p.received();
    assert!(
        matches!(
            out.as_slice(),
            [Packet::Disconnect(Disconnect { reason: ReasonCode::ReceiveMaximumExceeded, .. })]
        ),
        "{out:?}"
    );
    assert!(p.server.is_closed());
}

#[test]
fn incoming_topic_aliases_are_resolved_and_bounded() {
    let config = ServerConfig { topic_alias_maximum: 2, ..Default::default() };
    let mut p = Pair::connected(ProtocolVersion::V5, 0, Properties::default(), config);
    let mut first = publish("sensors/temp", QoS::AtMostOnce, None);
    first.properties.topic_alias = Some(1);
    p.send(&Packet::Publish(first));
    let mut second = publish("", QoS::AtMostOnce, None);
    second.properties.topic_alias = Some(1);
    p.send(&Packet::Publish(second));
    let topics: Vec<String> = p
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Publish(m) => Some(m.topic),
            _ => None,
        })
        .collect();
    assert_eq!(topics, ["sensors/temp", "sensors/temp"]);
    let mut unknown = publish("", QoS::AtMostOnce, None);
    unknown.properties.topic_alias = Some(2);
    p.send(&Packet::Publish(unknown));
    assert!(p.server.is_closed(), "an alias never set is a protocol error");

    let mut p = Pair::connected(
        ProtocolVersion::V5,
        0,
        Properties::default(),
        ServerConfig { topic_alias_maximum: 2, ..Default::default() },
    );
    let mut too_big = publish("x", QoS::AtMostOnce, None);
    too_big.properties.topic_alias = Some(3);
    p.send(&Packet::Publish(too_big));
    assert!(matches!(
        p.received().as_slice(),
        [Packet::Disconnect(Disconnect { reason: ReasonCode::TopicAliasInvalid, .. })]
    ));
}

#[test]
fn outgoing_messages_respect_the_clients_receive_window() {
    let props = Properties { receive_maximum: Some(2), ..Default::default() };
    let mut p =
        Pair::connected(ProtocolVersion::V5, 0, props, ServerConfig { max_queued: 2, ..Default::default() });
    for _ in 0..4 {
        p.server.publish(publish("down", QoS::AtLeastOnce, None)).unwrap();
    }
    assert_eq!(p.server.publish(publish("down", QoS::AtLeastOnce, None)), Err(SendError::QueueFull));
    let sent: Vec<u16> = p
        .received()
        .into_iter()
        .filter_map(|pk| match pk {
            Packet::Publish(m) => m.packet_id,
            _ => None,
        })
        .collect();
    assert_eq!(sent, [1, 2], "only the window goes out");
    p.send(&Packet::PubAck(Ack::new(1)));
    assert_eq!(p.events(), vec![Event::Delivered(1, "down".into())]);
    assert!(matches!(p.received().as_slice(), [Packet::Publish(m)] if m.packet_id == Some(3)));
    // QoS 2 outgoing: PUBREC -> PUBREL -> PUBCOMP.
    p.send(&Packet::PubAck(Ack::new(2)));
    p.send(&Packet::PubAck(Ack::new(3)));
    p.received();
    p.events();
    p.server.publish(publish("down", QoS::ExactlyOnce, None)).unwrap();
    let id = match p.received().as_slice() {
        [Packet::Publish(m)] => m.packet_id.unwrap(),
        other => panic!("{other:?}"),
    };
    p.send(&Packet::PubRec(Ack::new(id)));
    assert_eq!(p.received(), vec![Packet::PubRel(Ack::new(id))]);
    p.send(&Packet::PubComp(Ack::new(id)));
    assert!(p.events().iter().any(|e| matches!(e, Event::Delivered(i, _) if *i == id)));
    // An acknowledgement for nothing in flight is a protocol error.
    p.send(&Packet::PubAck(Ack::new(999)));
    assert_eq!(closed_with(&p.events()), Some((ReasonCode::ProtocolError, true)));
}

#[test]
fn messages_larger_than_the_client_accepts_are_not_sent() {
    let props = Properties { maximum_packet_size: Some(20), ..Default::default() };
    let mut p = Pair::connected(ProtocolVersion::V5, 0, props, ServerConfig::default());
    let mut big = publish("t", QoS::AtMostOnce, None);
    big.payload = Bytes::from(vec![0u8; 64]);
    assert_eq!(p.server.publish(big), Err(SendError::TooLarge));
    assert!(p.received().is_empty());
    p.server.publish(publish("t", QoS::AtMostOnce, None)).unwrap();
    assert_eq!(p.received().len(), 1);
    // A QoS 1 message too large is dropped when its turn comes, and takes no window slot.
    let mut big = publish("t", QoS::AtLeastOnce, None);
    big.payload = Bytes::from(vec![0u8; 64]);
    p.server.publish(big).unwrap();
    p.server.publish(publish("t", QoS::AtLeastOnce, None)).unwrap();
    let sent = p.received();
    assert_eq!(sent.len(), 1);
    assert_eq!(p.server.inflight(), 1);
}

#[test]
fn outgoing_topic_aliases_up_to_the_clients_maximum() {
    let props = Properties { topic_alias_maximum: Some(2), ..Default::default() };
    let mut p = Pair::connected(ProtocolVersion::V5, 0, props, ServerConfig::default());
    for topic in ["a/1", "a/2", "a/3", "a/1", "a/2", "a/3"] {
        p.server.publish(publish(topic, QoS::AtLeastOnce, None)).unwrap();
    }
    let sent: Vec<(String, Option<u16>)> = p
        .received()
        .into_iter()
        .map(|packet| match packet {
            Packet::Publish(m) => (m.topic, m.properties.topic_alias),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    let expected = [
        ("a/1", Some(1)),
        ("a/2", Some(2)),
        ("a/3", None), // no alias left
        ("", Some(1)),
        ("", Some(2)),
        ("a/3", None),
    ];
    assert_eq!(sent, expected.map(|(t, a)| (t.to_owned(), a)));
    // What the session keeps has the full topic (aliases die with the connection).
    let kept = p.server.take_unacknowledged();
    assert!(kept.iter().all(|m| !m.topic.is_empty() && m.properties.topic_alias.is_none()));
    // Without the client's consent (3.1.1, or no Topic Alias Maximum) no alias is used.
    let mut q = Pair::connected(ProtocolVersion::V311, 0, Properties::default(), ServerConfig::default());
    q.server.publish(publish("a/1", QoS::AtMostOnce, None)).unwrap();
    q.server.publish(publish("a/1", QoS::AtMostOnce, None)).unwrap();
    assert!(q.received().iter().all(|m| matches!(m, Packet::Publish(m) if m.topic == "a/1")));
}

#[test]
fn the_will_follows_how_the_connection_ended() {
    let mut p = Pair::connected(ProtocolVersion::V5, 0, Properties::default(), ServerConfig::default());
    p.send(&Packet::Disconnect(Disconnect {
        reason: ReasonCode::Success,
        properties: Properties::default(),
    }));
    assert_eq!(closed_with(&p.events()), Some((ReasonCode::Success, false)));
    let mut p = Pair::connected(ProtocolVersion::V5, 0, Properties::default(), ServerConfig::default());
    p.send(&Packet::Disconnect(Disconnect {
        reason: ReasonCode::DisconnectWithWill,
        properties: Properties::default(),
    }));
    assert_eq!(closed_with(&p.events()), Some((ReasonCode::DisconnectWithWill, true)));
    let mut p = Pair::connected(ProtocolVersion::V5, 0, Properties::default(), ServerConfig::default());
    p.server.disconnect(ReasonCode::SessionTakenOver);
    assert!(matches!(
        p.received().as_slice(),
        [Packet::Disconnect(Disconnect { reason: ReasonCode::SessionTakenOver, .. })]
    ));
    assert_eq!(closed_with(&p.events()), Some((ReasonCode::SessionTakenOver, true)));
}

fn expiry_at_close(events: &[Event]) -> Option<Option<u32>> {
    events.iter().find_map(|e| match e {
        Event::Closed { session_expiry, .. } => Some(*session_expiry),
        _ => None,
    })
}

fn disconnect_with_expiry(expiry: Option<u32>) -> Packet {
    let properties = Properties { session_expiry: expiry, ..Default::default() };
    Packet::Disconnect(Disconnect { reason: ReasonCode::Success, properties })
}

#[test]
fn the_session_expiry_in_disconnect_replaces_the_one_from_connect() {
    let with_expiry = |secs| Properties { session_expiry: Some(secs), ..Default::default() };
    // Shortened to 0 at DISCONNECT: the broker is told, so the session ends now.
    let mut p = Pair::connected(ProtocolVersion::V5, 0, with_expiry(600), ServerConfig::default());
    p.send(&disconnect_with_expiry(Some(0)));
    assert_eq!(expiry_at_close(&p.events()), Some(Some(0)));
    // Extended: allowed when CONNECT had a non-zero interval.
    let mut p = Pair::connected(ProtocolVersion::V5, 0, with_expiry(10), ServerConfig::default());
    p.send(&disconnect_with_expiry(Some(3600)));
    assert_eq!(expiry_at_close(&p.events()), Some(Some(3600)));
    // Absent: CONNECT's interval stands.
    let mut p = Pair::connected(ProtocolVersion::V5, 0, with_expiry(10), ServerConfig::default());
    p.send(&disconnect_with_expiry(None));
    assert_eq!(expiry_at_close(&p.events()), Some(None));
    // 0 (or absent) at CONNECT, non-zero at DISCONNECT: a protocol error (0x82), will published.
    for connect in [Properties::default(), with_expiry(0)] {
        let mut p = Pair::connected(ProtocolVersion::V5, 0, connect, ServerConfig::default());
        p.send(&disconnect_with_expiry(Some(60)));
        assert!(matches!(
            p.received().as_slice(),
            [Packet::Disconnect(Disconnect { reason: ReasonCode::ProtocolError, .. })]
        ));
        let events = p.events();
        assert_eq!(closed_with(&events), Some((ReasonCode::ProtocolError, true)));
        assert_eq!(expiry_at_close(&events), Some(None));
    }
}

#[test]
fn malformed_input_after_connect_closes_with_a_reason() {
    let mut p = Pair::connected(ProtocolVersion::V5, 0, Properties::default(), ServerConfig::default());
    p.server.handle_input(p.now, &[0x30, 0x04, 0, 2, 0xC3, 0x28]); // invalid UTF-8 topic
    assert!(matches!(
        p.received().as_slice(),
        [Packet::Disconnect(Disconnect { reason: ReasonCode::MalformedPacket, .. })]
    ));
    assert!(p.server.is_closed());
    // Input after the close is ignored.
    p.server.handle_input(p.now, &[0xC0, 0x00]);
    assert!(p.received().is_empty());
    let mut p = Pair::connected(
        ProtocolVersion::V5,
        0,
        Properties::default(),
        ServerConfig { max_packet_size: 64, ..Default::default() },
    );
    p.server.handle_input(p.now, &[0x30, 0xC8, 0x01]);
    assert!(matches!(
        p.received().as_slice(),
        [Packet::Disconnect(Disconnect { reason: ReasonCode::PacketTooLarge, .. })]
    ));
}

#[test]
fn subscribe_and_unsubscribe_are_handed_to_the_broker_and_answered() {
    let mut p = Pair::connected(ProtocolVersion::V311, 0, Properties::default(), ServerConfig::default());
    let filter = TopicFilter::new("a/#").unwrap();
    p.send(&Packet::Subscribe(Subscribe {
        packet_id: 5,
        properties: Properties::default(),
        filters: vec![(filter.clone(), SubscriptionOptions::qos(QoS::AtLeastOnce))],
    }));
    assert!(matches!(p.events().as_slice(), [Event::Subscribe(s)] if s.packet_id == 5));
    p.server.suback(5, vec![ReasonCode::GrantedQoS1]);
    assert_eq!(p.server.take_output(), [0x90, 0x03, 0, 5, 0x01]);
    p.send(&Packet::Unsubscribe(Unsubscribe {
        packet_id: 6,
        properties: Properties::default(),
        filters: vec![filter],
    }));
    assert!(matches!(p.events().as_slice(), [Event::Unsubscribe(u)] if u.packet_id == 6));
    p.server.unsuback(6, vec![ReasonCode::Success]);
    assert_eq!(p.server.take_output(), [0xB0, 0x02, 0, 6]);
}

#[test]
fn unacknowledged_messages_are_handed_back_for_the_session() {
    let props = Properties { receive_maximum: Some(2), ..Default::default() };
    let mut p = Pair::connected(ProtocolVersion::V5, 0, props, ServerConfig::default());
    for t in ["m1", "m2", "m3", "m4"] {
        p.server.publish(publish(t, QoS::ExactlyOnce, None)).unwrap();
    }
    p.received();
    // m1 reached PUBREC (the client has it); m2 is in flight unacknowledged; m3, m4 wait.
    p.send(&Packet::PubRec(Ack::new(1)));
    p.received();
    let back: Vec<String> = p.server.take_unacknowledged().into_iter().map(|m| m.topic).collect();
    assert_eq!(back, ["m2", "m3", "m4"]);
}

#[test]
fn packets_split_anywhere_across_reads_decode_the_same() {
    // Three packets cut at every possible pair of points: what the server sees must not depend
    // on how the transport happened to split the bytes. Packets sent right after CONNECT,
    // before CONNACK, are legal (section 3.1.4) and wait for the broker's answer.
    let mut wire = Vec::new();
    encode(&connect_packet(ProtocolVersion::V5, 30, Properties::default()), ProtocolVersion::V5, &mut wire)
        .unwrap();
    let connect_len = wire.len();
    encode(&Packet::Publish(publish("a/b", QoS::AtLeastOnce, Some(1))), ProtocolVersion::V5, &mut wire)
        .unwrap();
    encode(&Packet::PingReq, ProtocolVersion::V5, &mut wire).unwrap();
    for i in 1..wire.len() {
        for j in i..wire.len() {
            let mut p = Pair::new(ProtocolVersion::V5, ServerConfig::default());
            let cuts = [&wire[..i], &wire[i..j], &wire[j..]];
            let mut accepted = false;
            let mut publishes = 0;
            let mut fed = 0;
            for part in cuts {
                p.server.handle_input(p.now, part);
                fed += part.len();
                // Accepting releases packets that came right after CONNECT: loop until quiet.
                while let Some(e) = p.server.poll_event() {
                    match e {
                        Event::Connect(_) => {
                            assert!(fed >= connect_len);
                            p.server.accept(p.now, false, Properties::default());
                            accepted = true;
                        }
                        Event::Publish(m) => {
                            assert_eq!(m.topic, "a/b");
                            publishes += 1;
                        }
                        other => panic!("cut at {i},{j}: {other:?}"),
                    }
                }
            }
            assert!(accepted && publishes == 1, "cut at {i},{j}");
            assert!(!p.server.is_closed());
        }
    }
}

#[test]
fn packets_after_a_refused_connect_are_never_processed() {
    let mut wire = Vec::new();
    encode(&connect_packet(ProtocolVersion::V5, 30, Properties::default()), ProtocolVersion::V5, &mut wire)
        .unwrap();
    encode(&Packet::Publish(publish("a/b", QoS::AtMostOnce, None)), ProtocolVersion::V5, &mut wire).unwrap();
    let mut p = Pair::new(ProtocolVersion::V5, ServerConfig::default());
    p.server.handle_input(p.now, &wire);
    assert!(matches!(p.events().as_slice(), [Event::Connect(_)]), "the PUBLISH waits for the answer");
    p.server.reject(ReasonCode::NotAuthorized);
    let events = p.events();
    assert!(events.iter().all(|e| !matches!(e, Event::Publish(_))), "{events:?}");
    assert!(p.server.is_closed());
}
