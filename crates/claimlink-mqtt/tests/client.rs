//! The client state machine against the server state machine, in memory with a virtual clock,
//! and against hand-made server packets for the cases a correct server never produces.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::time::{Duration, Instant};

use bytes::Bytes;
use claimlink_mqtt::client::{ClientConnection, ClientError, ClientEvent, ClientOptions};
use claimlink_mqtt::packet::*;
use claimlink_mqtt::server::{Event, ServerConfig, ServerConnection};
use claimlink_mqtt::{Packet, Properties, ProtocolVersion, QoS, ReasonCode, decode, encode};

struct Link {
    client: ClientConnection,
    server: ServerConnection,
    now: Instant,
}

impl Link {
    fn new(options: ClientOptions, config: ServerConfig) -> Self {
        let now = Instant::now();
        Self { client: ClientConnection::new(options, now), server: ServerConnection::new(config, now), now }
    }

    /// Moves bytes both ways until both sides are quiet.
    fn pump(&mut self) {
        loop {
            let up = self.client.take_output();
            let down = self.server.take_output();
            if up.is_empty() && down.is_empty() {
                return;
            }
            self.server.handle_input(self.now, &up);
            self.client.handle_input(self.now, &down);
        }
    }

    fn server_events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.server.poll_event()).collect()
    }

    fn client_events(&mut self) -> Vec<ClientEvent> {
        std::iter::from_fn(|| self.client.poll_event()).collect()
    }

    fn connected(options: ClientOptions, config: ServerConfig, accept: Properties) -> Self {
        let mut l = Self::new(options, config);
        l.pump();
        assert!(matches!(l.server_events().as_slice(), [Event::Connect(_)]));
        l.server.accept(l.now, false, accept);
        l.pump();
        assert!(matches!(
            l.client_events().as_slice(),
            [ClientEvent::Connected { session_present: false, .. }]
        ));
        l
    }
}

#[test]
fn publishes_in_all_three_qos_levels_complete() {
    let mut l = Link::connected(ClientOptions::new("dev"), ServerConfig::default(), Properties::default());
    assert_eq!(l.client.publish(l.now, "t/0", "zero", QoS::AtMostOnce, false), Ok(None));
    let id1 = l.client.publish(l.now, "t/1", "one", QoS::AtLeastOnce, false).unwrap().unwrap();
    let id2 = l.client.publish(l.now, "t/2", "two", QoS::ExactlyOnce, true).unwrap().unwrap();
    l.pump();
    let got: Vec<(String, QoS, bool)> = l
        .server_events()
        .into_iter()
        .map(|e| match e {
            Event::Publish(p) => (p.topic, p.qos, p.retain),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        got,
        [
            ("t/0".into(), QoS::AtMostOnce, false),
            ("t/1".into(), QoS::AtLeastOnce, false),
            ("t/2".into(), QoS::ExactlyOnce, true)
        ]
    );
    assert_eq!(l.client.inflight(), 2);
    l.server.puback(id1, ReasonCode::Success);
    l.server.pubrec(id2, ReasonCode::Success);
    l.pump(); // PUBREC -> PUBREL -> PUBCOMP
    assert_eq!(
        l.client_events(),
        [
            ClientEvent::Published { packet_id: id1, reason: ReasonCode::Success },
            ClientEvent::Published { packet_id: id2, reason: ReasonCode::Success },
        ]
    );
    assert_eq!(l.client.inflight(), 0);
}

#[test]
fn a_refused_publish_reports_the_servers_reason() {
    let mut l = Link::connected(ClientOptions::new("dev"), ServerConfig::default(), Properties::default());
    let id = l.client.publish(l.now, "forbidden", "x", QoS::AtLeastOnce, false).unwrap().unwrap();
    l.pump();
    l.server_events();
    l.server.puback(id, ReasonCode::NotAuthorized);
    l.pump();
    assert_eq!(
        l.client_events(),
        [ClientEvent::Published { packet_id: id, reason: ReasonCode::NotAuthorized }]
    );
}

#[test]
fn incoming_messages_are_acknowledged_and_qos2_handed_out_once() {
    let mut l = Link::connected(ClientOptions::new("dev"), ServerConfig::default(), Properties::default());
    let message = |qos| Publish {
        dup: false,
        qos,
        retain: false,
        topic: "cmd".into(),
        packet_id: None,
        properties: Properties::default(),
        payload: Bytes::from_static(b"go"),
    };
    l.server.publish(message(QoS::AtLeastOnce)).unwrap();
    l.server.publish(message(QoS::ExactlyOnce)).unwrap();
    l.pump();
    let received = l.client_events();
    assert_eq!(received.len(), 2);
    assert!(received.iter().all(|e| matches!(e, ClientEvent::Message(p) if p.topic == "cmd")));
    assert_eq!(l.server_events().iter().filter(|e| matches!(e, Event::Delivered(..))).count(), 2);
    assert_eq!(l.server.inflight(), 0);

    // A server retransmitting a QoS 2 PUBLISH before PUBREL: delivered once, PUBREC repeated.
    let mut raw = Vec::new();
    let mut p = message(QoS::ExactlyOnce);
    p.packet_id = Some(77);
    encode(&Packet::Publish(p.clone()), ProtocolVersion::V5, &mut raw).unwrap();
    p.dup = true;
    encode(&Packet::Publish(p), ProtocolVersion::V5, &mut raw).unwrap();
    encode(&Packet::PubRel(Ack::new(77)), ProtocolVersion::V5, &mut raw).unwrap();
    l.client.handle_input(l.now, &raw);
    assert_eq!(l.client_events().len(), 1, "a QoS 2 message is handed out once");
    let answers = decode_all(&l.client.take_output());
    assert!(matches!(
        answers.as_slice(),
        [Packet::PubRec(a), Packet::PubRec(b), Packet::PubComp(c)] if a.packet_id == 77 && b.packet_id == 77 && c.packet_id == 77
    ));
}

fn decode_all(bytes: &[u8]) -> Vec<Packet> {
    let mut rest = bytes;
    let mut out = Vec::new();
    while let Some((p, n)) = decode(rest, ProtocolVersion::V5, usize::MAX).unwrap() {
        out.push(p);
        rest = &rest[n..];
    }
    out
}

#[test]
fn the_servers_receive_maximum_bounds_what_is_in_flight() {
    let config = ServerConfig { receive_maximum: 2, ..ServerConfig::default() };
    let mut l = Link::connected(ClientOptions::new("dev"), config, Properties::default());
    let ids: Vec<u16> = (0..5)
        .map(|i| l.client.publish(l.now, "t", format!("{i}"), QoS::AtLeastOnce, false).unwrap().unwrap())
        .collect();
    l.pump();
    assert_eq!(l.client.inflight(), 2);
    let mut seen = Vec::new();
    for _ in 0..5 {
        for e in l.server_events() {
            if let Event::Publish(p) = e {
                seen.push(p.payload.clone());
                l.server.puback(p.packet_id.unwrap(), ReasonCode::Success);
            }
        }
        l.pump();
    }
    assert_eq!(
        seen,
        (0..5).map(|i| Bytes::from(format!("{i}"))).collect::<Vec<_>>(),
        "all, in order, no protocol error"
    );
    let done: Vec<u16> = l
        .client_events()
        .into_iter()
        .filter_map(|e| match e {
            ClientEvent::Published { packet_id, .. } => Some(packet_id),
            _ => None,
        })
        .collect();
    assert_eq!(done, ids);
}

#[test]
fn messages_published_while_connecting_go_out_after_connack() {
    let mut l = Link::new(ClientOptions::new("dev"), ServerConfig::default());
    assert_eq!(
        l.client.publish(l.now, "t", "x", QoS::AtMostOnce, false),
        Err(ClientError::NotConnected),
        "QoS 0 is not queued"
    );
    l.client.publish(l.now, "early", "x", QoS::AtLeastOnce, false).unwrap();
    l.pump();
    assert!(matches!(l.server_events().as_slice(), [Event::Connect(_)]), "nothing before CONNACK");
    l.server.accept(l.now, false, Properties::default());
    l.pump();
    assert!(l.server_events().iter().any(|e| matches!(e, Event::Publish(p) if p.topic == "early")));
}

#[test]
fn keep_alive_pings_and_a_silent_server_is_given_up() {
    let mut options = ClientOptions::new("dev");
    options.keep_alive = 10;
    let mut l = Link::connected(options, ServerConfig::default(), Properties::default());
    assert_eq!(l.client.poll_timeout(), Some(l.now + Duration::from_secs(10)));
    l.now += Duration::from_secs(10);
    l.client.handle_timeout(l.now);
    l.pump(); // PINGREQ answered by the server
    assert!(l.client.is_connected());
    assert_eq!(l.client.poll_timeout(), Some(l.now + Duration::from_secs(10)), "answered: next ping");
    // Now the server goes silent.
    l.now += Duration::from_secs(10);
    l.client.handle_timeout(l.now);
    assert!(decode_all(&l.client.take_output()).contains(&Packet::PingReq));
    l.now += Duration::from_secs(10);
    l.client.handle_timeout(l.now);
    assert_eq!(l.client_events(), [ClientEvent::Disconnected(ReasonCode::KeepAliveTimeout)]);
}

#[test]
fn refusals_and_a_missing_connack() {
    let mut l = Link::new(ClientOptions::new("dev"), ServerConfig::default());
    l.pump();
    l.server_events();
    l.server.reject(ReasonCode::NotAuthorized);
    l.pump();
    assert_eq!(l.client_events(), [ClientEvent::Refused(ReasonCode::NotAuthorized)]);
    assert!(l.client.is_closed());

    let mut options = ClientOptions::new("dev");
    options.version = ProtocolVersion::V311;
    let mut l = Link::new(options, ServerConfig::default());
    l.pump();
    l.server_events();
    l.server.reject(ReasonCode::BadUserNameOrPassword);
    l.pump();
    assert_eq!(
        l.client_events(),
        [ClientEvent::Refused(ReasonCode::BadUserNameOrPassword)],
        "3.1.1 return code 4"
    );

    let mut l = Link::new(ClientOptions::new("dev"), ServerConfig::default());
    l.pump();
    l.now += Duration::from_secs(10);
    l.client.handle_timeout(l.now);
    assert_eq!(l.client_events(), [ClientEvent::Disconnected(ReasonCode::KeepAliveTimeout)]);
}

#[test]
fn what_the_server_does_not_accept_is_refused_locally() {
    let limits = Properties {
        maximum_qos: Some(1),
        retain_available: Some(false),
        maximum_packet_size: Some(64),
        ..Properties::default()
    };
    let mut l = Link::connected(ClientOptions::new("dev"), ServerConfig::default(), limits);
    assert_eq!(
        l.client.publish(l.now, "t", "x", QoS::ExactlyOnce, false),
        Err(ClientError::QosNotSupported(QoS::AtLeastOnce))
    );
    assert_eq!(
        l.client.publish(l.now, "t", "x", QoS::AtMostOnce, true),
        Err(ClientError::RetainNotSupported)
    );
    assert_eq!(
        l.client.publish(l.now, "t", vec![0u8; 100], QoS::AtMostOnce, false),
        Err(ClientError::TooLarge)
    );
    assert!(matches!(
        l.client.publish(l.now, "a/+", "x", QoS::AtMostOnce, false),
        Err(ClientError::Topic(_))
    ));
    assert!(l.client.take_output().is_empty(), "nothing was sent");
    assert!(l.client.is_connected());
}

#[test]
fn server_topic_aliases_are_resolved_when_allowed() {
    let mut options = ClientOptions::new("dev");
    options.topic_alias_maximum = 2;
    let mut l = Link::connected(options, ServerConfig::default(), Properties::default());
    for _ in 0..3 {
        let p = Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "long/topic".into(),
            packet_id: None,
            properties: Properties::default(),
            payload: Bytes::from_static(b"x"),
        };
        l.server.publish(p).unwrap();
    }
    let wire = l.server.take_output();
    assert!(
        decode_all(&wire).iter().any(|p| matches!(p, Packet::Publish(p) if p.topic.is_empty())),
        "aliases used"
    );
    l.client.handle_input(l.now, &wire);
    let topics: Vec<String> = l
        .client_events()
        .into_iter()
        .map(|e| match e {
            ClientEvent::Message(p) => p.topic,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(topics, ["long/topic"; 3]);

    // An alias above what the client allowed is a protocol violation.
    let bad = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "t".into(),
        packet_id: None,
        properties: Properties { topic_alias: Some(3), ..Properties::default() },
        payload: Bytes::new(),
    };
    let mut raw = Vec::new();
    encode(&Packet::Publish(bad), ProtocolVersion::V5, &mut raw).unwrap();
    l.client.handle_input(l.now, &raw);
    assert_eq!(l.client_events(), [ClientEvent::Disconnected(ReasonCode::TopicAliasInvalid)]);
    assert!(matches!(
        decode_all(&l.client.take_output()).as_slice(),
        [Packet::Disconnect(Disconnect { reason: ReasonCode::TopicAliasInvalid, .. })]
    ));
}

#[test]
fn subscribe_unsubscribe_and_unacknowledged_messages_for_the_next_session() {
    let mut l = Link::connected(ClientOptions::new("dev"), ServerConfig::default(), Properties::default());
    let id = l.client.subscribe(l.now, &[("a/#", SubscriptionOptions::qos(QoS::AtLeastOnce))]).unwrap();
    l.pump();
    let Some(Event::Subscribe(s)) = l.server_events().pop() else { panic!("no SUBSCRIBE") };
    l.server.suback(s.packet_id, vec![ReasonCode::GrantedQoS1]);
    l.pump();
    assert_eq!(
        l.client_events(),
        [ClientEvent::Subscribed { packet_id: id, reasons: vec![ReasonCode::GrantedQoS1] }]
    );
    assert!(l.client.subscribe(l.now, &[("a/#/b", SubscriptionOptions::qos(QoS::AtMostOnce))]).is_err());
    let uid = l.client.unsubscribe(l.now, &["a/#"]).unwrap();
    l.pump();
    let Some(Event::Unsubscribe(u)) = l.server_events().pop() else { panic!("no UNSUBSCRIBE") };
    l.server.unsuback(u.packet_id, vec![ReasonCode::Success]);
    l.pump();
    assert_eq!(l.client_events(), [ClientEvent::Unsubscribed { packet_id: uid }]);
    // Unanswered QoS 1 messages are handed back when the connection drops.
    l.client.publish(l.now, "t", "kept", QoS::AtLeastOnce, false).unwrap();
    l.pump();
    l.client.handle_transport_closed();
    let kept = l.client.take_unacknowledged();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].payload, Bytes::from_static(b"kept"));
}

#[test]
fn the_password_never_shows_in_debug_output() {
    let mut options = ClientOptions::new("dev");
    options.password = Some(Bytes::from_static(b"hunter2-secret"));
    let shown = format!("{options:?} {:?}", ClientConnection::new(options.clone(), Instant::now()));
    assert!(!shown.contains("hunter2"), "{shown}");
    // Not even as the bytes of the CONNECT waiting in the output buffer.
    let as_numbers = format!("{:?}", &b"hunter2"[..3]).trim_matches(['[', ']']).to_owned();
    assert!(!shown.contains(&as_numbers), "{shown}");
}
