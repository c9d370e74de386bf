//! The codec against bytes written from the MQTT 3.1.1 and 5.0 specifications, round trips of
//! every packet type in both versions, and the errors malformed input must produce.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use bytes::Bytes;
use claimlink_mqtt::packet::*;
use claimlink_mqtt::{
    DecodeError, Packet, Properties, ProtocolVersion, QoS, ReasonCode, TopicFilter, decode, encode,
};

const V3: ProtocolVersion = ProtocolVersion::V311;
const V5: ProtocolVersion = ProtocolVersion::V5;
const MAX: usize = 1 << 20;

fn dec(bytes: &[u8], v: ProtocolVersion) -> Result<Packet, DecodeError> {
    let (p, used) = decode(bytes, v, MAX)?.expect("a whole packet");
    assert_eq!(used, bytes.len());
    Ok(p)
}

fn enc(p: &Packet, v: ProtocolVersion) -> Vec<u8> {
    let mut out = Vec::new();
    encode(p, v, &mut out).unwrap();
    out
}

/// Decodes `bytes`, checks the packet, re-encodes to the same bytes, and checks that every strict
/// prefix asks for more input instead of failing.
fn exact(bytes: &[u8], v: ProtocolVersion, want: &Packet) {
    let p = dec(bytes, v).unwrap();
    assert_eq!(&p, want);
    assert_eq!(enc(&p, v), bytes);
    for cut in 0..bytes.len() {
        assert_eq!(decode(&bytes[..cut], v, MAX), Ok(None), "prefix of {cut} bytes");
    }
}

#[test]
fn connect_v311_minimal() {
    // CONNECT, "MQTT", level 4, clean session, keep alive 60, client id "test".
    let bytes = [0x10, 0x10, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 4, b't', b'e', b's', b't'];
    let want = Packet::Connect(Box::new(Connect {
        version: V3,
        clean_start: true,
        keep_alive: 60,
        client_id: "test".into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }));
    exact(&bytes, V3, &want);
}

#[test]
fn connect_v5_variable_header_of_the_specification_example() {
    // MQTT 5 section 3.1.2.12 Figure 3-6: flags 0xCE (user, password, will QoS 1, will, clean
    // start), keep alive 10, properties: Session Expiry Interval 10.
    let mut bytes = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0xCE, 0, 10, 5, 0x11, 0, 0, 0, 10];
    bytes.extend([0, 2, b'c', b'1']); // client id
    bytes.extend([5, 0x18, 0, 0, 0, 30]); // will properties: Will Delay Interval 30
    bytes.extend([0, 1, b'w', 0, 2, b'b', b'y']); // will topic, payload
    bytes.extend([0, 1, b'u', 0, 1, b'p']); // user name, password
    let mut packet = vec![0x10, bytes.len() as u8];
    packet.extend(bytes);
    let want = Packet::Connect(Box::new(Connect {
        version: V5,
        clean_start: true,
        keep_alive: 10,
        client_id: "c1".into(),
        will: Some(Will {
            topic: "w".into(),
            payload: Bytes::from_static(b"by"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties { will_delay: Some(30), ..Default::default() },
        }),
        username: Some("u".into()),
        password: Some(Bytes::from_static(b"p")),
        properties: Properties { session_expiry: Some(10), ..Default::default() },
    }));
    exact(&packet, V5, &want);
    assert!(!format!("{want:?}").contains("\"p\""), "the password must not appear in Debug");
}

#[test]
fn publish_qos0_qos1_and_acks() {
    let bytes = [0x30, 0x0A, 0, 3, b'a', b'/', b'b', b'h', b'e', b'l', b'l', b'o'];
    let p = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "a/b".into(),
        packet_id: None,
        properties: Properties::default(),
        payload: Bytes::from_static(b"hello"),
    };
    exact(&bytes, V3, &Packet::Publish(p.clone()));
    // QoS 1, retained, duplicate, packet id 10; in MQTT 5 an empty property section follows.
    let bytes = [0x3B, 0x08, 0, 1, b't', 0, 10, 0, b'h', b'i'];
    let want = Publish {
        dup: true,
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: "t".into(),
        packet_id: Some(10),
        payload: Bytes::from_static(b"hi"),
        ..p
    };
    exact(&bytes, V5, &Packet::Publish(want));
    exact(&[0x40, 0x02, 0, 1], V3, &Packet::PubAck(Ack::new(1)));
    exact(&[0x40, 0x02, 0, 1], V5, &Packet::PubAck(Ack::new(1)));
    let no_subscribers =
        Ack { packet_id: 1, reason: ReasonCode::NoMatchingSubscribers, properties: Properties::default() };
    exact(&[0x40, 0x03, 0, 1, 0x10], V5, &Packet::PubAck(no_subscribers));
    exact(&[0x50, 0x02, 0, 7], V3, &Packet::PubRec(Ack::new(7)));
    exact(&[0x62, 0x02, 0, 7], V3, &Packet::PubRel(Ack::new(7)));
    exact(&[0x70, 0x02, 0, 7], V3, &Packet::PubComp(Ack::new(7)));
}

#[test]
fn subscribe_suback_unsubscribe_unsuback_ping_disconnect() {
    let f = TopicFilter::new("a/+").unwrap();
    let sub = Subscribe {
        packet_id: 1,
        properties: Properties::default(),
        filters: vec![(f.clone(), SubscriptionOptions::qos(QoS::AtLeastOnce))],
    };
    exact(&[0x82, 0x08, 0, 1, 0, 3, b'a', b'/', b'+', 0x01], V3, &Packet::Subscribe(sub));
    // MQTT 5 options: QoS 2, no local, retain as published, retain handling 2 = 0b0010_1110.
    let opts = SubscriptionOptions {
        qos: QoS::ExactlyOnce,
        no_local: true,
        retain_as_published: true,
        retain_handling: RetainHandling::DoNotSend,
    };
    let props = Properties { subscription_ids: vec![300], ..Default::default() };
    let sub5 = Subscribe { packet_id: 2, properties: props, filters: vec![(f.clone(), opts)] };
    exact(
        &[0x82, 0x0C, 0, 2, 3, 0x0B, 0xAC, 0x02, 0, 3, b'a', b'/', b'+', 0x2E],
        V5,
        &Packet::Subscribe(sub5),
    );
    let suback = SubAck {
        packet_id: 1,
        properties: Properties::default(),
        reasons: vec![ReasonCode::GrantedQoS1, ReasonCode::UnspecifiedError],
    };
    exact(&[0x90, 0x04, 0, 1, 0x01, 0x80], V3, &Packet::SubAck(suback));
    let unsub = Unsubscribe { packet_id: 3, properties: Properties::default(), filters: vec![f] };
    exact(&[0xA2, 0x07, 0, 3, 0, 3, b'a', b'/', b'+'], V3, &Packet::Unsubscribe(unsub));
    exact(
        &[0xB0, 0x02, 0, 3],
        V3,
        &Packet::UnsubAck(UnsubAck { packet_id: 3, properties: Properties::default(), reasons: vec![] }),
    );
    let unsuback5 = UnsubAck {
        packet_id: 3,
        properties: Properties::default(),
        reasons: vec![ReasonCode::NoSubscriptionExisted],
    };
    exact(&[0xB0, 0x04, 0, 3, 0, 0x11], V5, &Packet::UnsubAck(unsuback5));
    exact(&[0xC0, 0x00], V3, &Packet::PingReq);
    exact(&[0xD0, 0x00], V5, &Packet::PingResp);
    let normal = Disconnect { reason: ReasonCode::Success, properties: Properties::default() };
    exact(&[0xE0, 0x00], V3, &Packet::Disconnect(normal.clone()));
    exact(&[0xE0, 0x00], V5, &Packet::Disconnect(normal));
    let taken = Disconnect { reason: ReasonCode::SessionTakenOver, properties: Properties::default() };
    exact(&[0xE0, 0x01, 0x8E], V5, &Packet::Disconnect(taken));
    let auth = Disconnect {
        reason: ReasonCode::ContinueAuthentication,
        properties: Properties { auth_method: Some("X".into()), ..Default::default() },
    };
    exact(&[0xF0, 0x06, 0x18, 0x04, 0x15, 0, 1, b'X'], V5, &Packet::Auth(auth));
}

#[test]
fn every_property_round_trips_in_its_packets() {
    let publish_props = Properties {
        payload_format_utf8: Some(true),
        message_expiry: Some(3600),
        content_type: Some("application/json".into()),
        response_topic: Some("reply/here".into()),
        correlation_data: Some(Bytes::from_static(&[1, 2, 3])),
        subscription_ids: vec![1, 268_435_455],
        topic_alias: Some(5),
        user: vec![("k".into(), "v".into()), ("k".into(), "v2".into())],
        ..Default::default()
    };
    let p = Packet::Publish(Publish {
        dup: false,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: String::new(), // the alias stands for it
        packet_id: Some(9),
        properties: publish_props,
        payload: Bytes::from_static(b"{}"),
    });
    assert_eq!(dec(&enc(&p, V5), V5).unwrap(), p);
    let connack = Packet::ConnAck(ConnAck {
        session_present: true,
        reason: ReasonCode::Success,
        properties: Properties {
            session_expiry: Some(7200),
            assigned_client_id: Some("auto-1".into()),
            server_keep_alive: Some(30),
            auth_method: Some("SCRAM".into()),
            auth_data: Some(Bytes::from_static(b"x")),
            response_info: Some("resp/".into()),
            server_reference: Some("other:8883".into()),
            reason_string: Some("welcome".into()),
            receive_maximum: Some(100),
            topic_alias_maximum: Some(10),
            maximum_qos: Some(1),
            retain_available: Some(true),
            maximum_packet_size: Some(131_072),
            wildcard_subscription_available: Some(true),
            subscription_ids_available: Some(false),
            shared_subscription_available: Some(true),
            ..Default::default()
        },
    });
    assert_eq!(dec(&enc(&connack, V5), V5).unwrap(), connack);
    // The same CONNACK for a 3.1.1 client drops the properties and keeps the return code.
    let v3 = dec(&enc(&connack, V3), V3).unwrap();
    assert!(
        matches!(v3, Packet::ConnAck(ConnAck { session_present: true, reason: ReasonCode::Success, ref properties }) if properties.is_empty())
    );
}

fn err(bytes: &[u8], v: ProtocolVersion) -> DecodeError {
    decode(bytes, v, MAX).expect_err("must be refused")
}

#[test]
fn malformed_packets_are_refused_with_the_right_reason() {
    use DecodeError as E;
    let cases: Vec<(&[u8], ProtocolVersion, DecodeError, ReasonCode)> = vec![
        (&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F], V3, E::MalformedVarint, ReasonCode::MalformedPacket),
        (&[0x30, 0x80, 0x00], V3, E::MalformedVarint, ReasonCode::MalformedPacket),
        (&[0x00, 0x00], V3, E::ReservedPacketType(0), ReasonCode::MalformedPacket),
        (&[0xF0, 0x00], V3, E::ReservedPacketType(15), ReasonCode::MalformedPacket),
        (&[0x80, 0x06, 0, 1, 0, 1, b'a', 0], V3, E::BadFlags(8), ReasonCode::MalformedPacket),
        (&[0xC1, 0x00], V3, E::BadFlags(12), ReasonCode::MalformedPacket),
        (&[0x36, 0x05, 0, 1, b'a', 0, 1], V3, E::InvalidQoS, ReasonCode::MalformedPacket),
        (&[0x38, 0x03, 0, 1, b'a'], V3, E::BadFlags(3), ReasonCode::MalformedPacket), // DUP on QoS 0
        (&[0x30, 0x04, 0, 2, 0xC3, 0x28], V3, E::InvalidUtf8, ReasonCode::MalformedPacket),
        (&[0x30, 0x04, 0, 2, b'a', 0], V3, E::InvalidUtf8, ReasonCode::MalformedPacket),
        (
            &[0x30, 0x03, 0, 1, b'#'],
            V3,
            E::BadTopicName(claimlink_mqtt::TopicError::WildcardInName),
            ReasonCode::TopicNameInvalid,
        ),
        (&[0xC0, 0x01, 0x00], V3, E::TrailingBytes, ReasonCode::MalformedPacket),
        (&[0x40, 0x02, 0, 0], V3, E::ZeroPacketId, ReasonCode::ProtocolError),
        (&[0x40, 0x01, 0], V3, E::Truncated, ReasonCode::MalformedPacket),
        (&[0x82, 0x02, 0, 1], V3, E::NoTopicFilters, ReasonCode::ProtocolError),
        (&[0x82, 0x06, 0, 1, 0, 1, b'a', 0x04], V3, E::BadSubscriptionOptions, ReasonCode::MalformedPacket),
        (
            &[0x82, 0x07, 0, 1, 0, 0, 1, b'a', 0x30],
            V5,
            E::BadSubscriptionOptions,
            ReasonCode::MalformedPacket,
        ),
        (
            &[0x82, 0x07, 0, 1, 0, 2, b'a', b'#', 0],
            V3,
            E::BadTopicFilter(claimlink_mqtt::TopicError::MisplacedWildcard),
            ReasonCode::MalformedPacket,
        ),
        // MQTT 5 properties: Session Expiry in a PUBLISH, a duplicate, an unknown identifier,
        // Receive Maximum 0 in CONNACK.
        (
            &[0x30, 0x09, 0, 1, b'a', 5, 0x11, 0, 0, 0, 1],
            V5,
            E::PropertyNotAllowed,
            ReasonCode::ProtocolError,
        ),
        (&[0x30, 0x08, 0, 1, b'a', 4, 0x01, 0, 0x01, 1], V5, E::DuplicateProperty, ReasonCode::ProtocolError),
        (&[0x30, 0x06, 0, 1, b'a', 2, 0x7F, 0], V5, E::UnknownProperty, ReasonCode::MalformedPacket),
        (&[0x20, 0x06, 0, 0, 3, 0x21, 0, 0], V5, E::BadPropertyValue, ReasonCode::ProtocolError),
        (&[0x30, 0x06, 0, 1, b'a', 4, 0x01, 0], V5, E::Truncated, ReasonCode::MalformedPacket),
        (
            &[0x30, 0x03, 0, 0, 0],
            V5,
            E::BadTopicName(claimlink_mqtt::TopicError::Empty),
            ReasonCode::TopicNameInvalid,
        ),
        (&[0xE0, 0x01, 0x03], V5, E::BadReasonCode(3), ReasonCode::MalformedPacket),
    ];
    for (bytes, v, want, code) in cases {
        let got = err(bytes, v);
        assert_eq!(got, want, "{bytes:02x?}");
        assert_eq!(got.reason_code(), code, "{bytes:02x?}");
    }
}

#[test]
fn connect_violations_are_refused() {
    let base = |level: u8, flags: u8| {
        let mut b = vec![0, 4, b'M', b'Q', b'T', b'T', level, flags, 0, 0];
        if level == 5 {
            b.push(0);
        }
        b.extend([0, 1, b'c']);
        let mut p = vec![0x10, b.len() as u8];
        p.extend(b);
        p
    };
    assert_eq!(err(&base(3, 0x02), V3), DecodeError::UnsupportedProtocolVersion(3));
    assert_eq!(err(&base(3, 0x02), V3).reason_code(), ReasonCode::UnsupportedProtocolVersion);
    assert_eq!(err(&base(4, 0x03), V3), DecodeError::BadConnectFlags, "reserved bit");
    assert_eq!(err(&base(4, 0x20), V3), DecodeError::BadConnectFlags, "will retain without will");
    assert_eq!(err(&base(4, 0x18), V3), DecodeError::BadConnectFlags, "will QoS 3");
    let mut pass_only = base(4, 0x42);
    pass_only.extend([0, 1, b'p']);
    pass_only[1] += 3;
    assert_eq!(err(&pass_only, V3), DecodeError::BadConnectFlags, "3.1.1: password without user name");
    let mut name = base(4, 0x02);
    name[4] = b'X';
    assert_eq!(err(&name, V3), DecodeError::BadProtocolName);
}

#[test]
fn the_packet_size_limit_applies_before_the_body_arrives() {
    // A PUBLISH announcing 1,000,000 bytes, of which only the header has arrived.
    let header = [0x30, 0xC0, 0x84, 0x3D];
    assert_eq!(
        decode(&header, V3, 65_536),
        Err(DecodeError::PacketTooLarge { size: 1_000_004, max: 65_536 })
    );
    assert_eq!(decode(&header, V3, 2_000_000), Ok(None));
}

#[test]
fn two_packets_in_one_buffer_are_decoded_one_at_a_time() {
    let mut buf = vec![0xC0, 0x00];
    buf.extend([0x40, 0x02, 0, 5]);
    let (first, used) = decode(&buf, V3, MAX).unwrap().unwrap();
    assert_eq!((first, used), (Packet::PingReq, 2));
    let (second, used2) = decode(&buf[used..], V3, MAX).unwrap().unwrap();
    assert_eq!((second, used2), (Packet::PubAck(Ack::new(5)), 4));
}
