//! The agent's life on the machine alone: no sockets, no files, no clock.

use super::*;

const STAGING: &str = "staging.example:8883";
const OEM: &str = "acme.example:8884";

fn settings() -> Settings {
    Settings {
        endpoint: STAGING.into(),
        custom_name: String::new(),
        root_ca: String::new(),
        keep_alive: 60,
        lwt_topic: String::new(),
        lwt_message: String::new(),
        claim_ticket: String::new(),
        transport: String::new(),
    }
}

fn machine() -> Machine {
    let id = Identity {
        thing_name: "dev1".into(),
        staging_endpoint: STAGING.into(),
        certificate_pem: "CERT".into(),
        root_ca_pem: "ROOT".into(),
        transport: "TLS".into(),
    };
    let backoff = Backoff { base: Duration::from_secs(1), cap: Duration::from_secs(8) };
    Machine::new(id, settings(), backoff)
}

fn events(m: &mut Machine) -> Vec<String> {
    std::iter::from_fn(|| Some(m.next_event()).filter(|e| e != "OK\r\n")).collect()
}

#[test]
fn a_claim_is_persisted_then_moves_the_device_and_a_repeat_changes_nothing() {
    let mut m = machine();
    assert_eq!(events(&mut m), ["OK 2 0 STARTUP\r\n"]);
    m.connection_up(STAGING, true);
    assert_eq!(m.connect_query(), "OK 1 0 CONNECTED STAGING\r\n");
    let delivery = Bytes::from(format!(r#"{{"Endpoint": "{OEM}", "ClaimTicket": "clt1.a.b"}}"#));
    let ConfigEffect::Persist { settings, moving: true } =
        m.message("dev1/expresslink_config".into(), delivery.clone())
    else {
        panic!("a claim's delivery moves the device");
    };
    assert_eq!((settings.endpoint.as_str(), settings.claim_ticket.as_str()), (OEM, "clt1.a.b"));
    // Not committed yet (the driver writes first): still staging's settings.
    assert_eq!(m.settings().endpoint, STAGING);
    m.commit(settings);
    // The host sees the message on topic index 0 and then the move.
    assert_eq!(m.get(GetFrom::Unassigned).lines().next(), Some("OK dev1/expresslink_config"));
    assert_eq!(m.connection_down(true, 0.9), Duration::ZERO, "a move reconnects at once");
    assert_eq!(m.connect_query(), "OK 0 1 DISCONNECTED CUSTOMER\r\n");
    m.connection_up(OEM, false);
    assert_eq!(m.connect_query(), "OK 1 1 CONNECTED CUSTOMER\r\n");
    assert_eq!(events(&mut m), ["OK 1 0 MSG\r\n", "OK 3 0 CONLOST\r\n", "OK 6 0 CONNECT\r\n"]);
    // The same delivery again (QoS 1 redelivery): nothing to do.
    assert_eq!(m.message("dev1/expresslink_config".into(), delivery), ConfigEffect::Ignore);
    // A new ticket for the same endpoint (a re-claim) is persisted without a move.
    let again = Bytes::from(format!(r#"{{"Endpoint": "{OEM}", "ClaimTicket": "clt1.c.d"}}"#));
    assert!(matches!(
        m.message("dev1/expresslink_config".into(), again),
        ConfigEffect::Persist { moving: false, .. }
    ));
}

#[test]
fn junk_on_the_configuration_topic_moves_nothing() {
    let mut m = machine();
    for junk in
        [&b"not json"[..], br#"{"Endpoint": "no host:port:x"}"#, br#"{"Endpoint": 5}"#, br#"{"Other": 1}"#]
    {
        assert_eq!(
            m.message("dev1/expresslink_config".into(), Bytes::from_static(junk)),
            ConfigEffect::Ignore
        );
    }
    // An oversized ticket is not kept; the endpoint still counts.
    let big = format!(r#"{{"Endpoint": "{OEM}", "ClaimTicket": "{}"}}"#, "x".repeat(5000));
    let ConfigEffect::Persist { settings, .. } = m.message("dev1/expresslink_config".into(), big.into())
    else {
        panic!()
    };
    assert_eq!(settings.claim_ticket, "");
    // A message elsewhere is only kept for the host.
    assert_eq!(
        m.message("dev1/other".into(), Bytes::from_static(b"{\"Endpoint\": \"x:1\"}")),
        ConfigEffect::Ignore
    );
}

#[test]
fn lost_connections_back_off_doubling_to_the_cap_and_a_connection_resets_it() {
    let mut m = machine();
    m.connection_up(STAGING, true);
    assert_eq!(m.connection_down(false, 1.0), Duration::from_secs(1));
    let waits: Vec<u64> = (0..5).map(|_| m.attempt_failed(1.0).as_secs()).collect();
    assert_eq!(waits, [2, 4, 8, 8, 8]);
    assert_eq!(m.attempt_failed(0.5), Duration::from_secs(4), "full jitter: a fraction of the ceiling");
    m.connection_up(STAGING, false);
    assert_eq!(m.connection_down(false, 1.0), Duration::from_secs(1));
    // Every drop is a CONLOST; only the session's own reconnection is a CONNECT.
    let e = events(&mut m);
    assert_eq!(e.iter().filter(|e| e.contains("CONLOST")).count(), 2);
    assert_eq!(e.iter().filter(|e| e.contains("CONNECT\r")).count(), 1);
    assert_eq!(m.connections(), 2);
}

#[test]
fn the_inbox_and_the_event_queue_are_bounded() {
    let mut m = machine();
    for i in 0..INBOX + 3 {
        m.message("dev1/data".into(), Bytes::from(i.to_string()));
    }
    let e = events(&mut m);
    assert_eq!(e.len(), EVENTS, "the oldest events are dropped");
    assert_eq!(e.iter().filter(|e| e.contains("OVERRUN")).count(), 3);
    assert_eq!((0..INBOX).filter(|_| m.get(GetFrom::Any) != "OK\r\n").count(), INBOX);
    assert_eq!(m.get(GetFrom::Any), "OK\r\n");
}

#[test]
fn conf_commands_validate_and_say_what_to_persist() {
    let mut m = machine();
    assert_eq!(m.conf_set("Topic1", b"dev1/cmd/#".to_vec()), Ok(ConfChange::Done));
    assert_eq!(m.conf_set("Topic17", b"x".to_vec()), Err(AtError::OutOfRange));
    assert_eq!(m.conf_set("Topic2", b"bad/#/x".to_vec()), Err(AtError::Parameter));
    assert_eq!(m.conf_set("ThingName", b"x".to_vec()), Err(AtError::KeyReadonly));
    assert_eq!(m.conf_set("KeepAlive", b"5".to_vec()), Err(AtError::OutOfRange));
    assert_eq!(m.conf_set("Endpoint", b"no port:x".to_vec()), Err(AtError::Parameter));
    assert_eq!(m.conf_set("Nonsense", b"1".to_vec()), Err(AtError::UnknownKey));
    let Ok(ConfChange::Persist(next)) = m.conf_set("KeepAlive", b"300".to_vec()) else { panic!() };
    assert_eq!(next.keep_alive, 300);
    assert_eq!(m.conf_get("KeepAlive", None).unwrap(), "OK 60\r\n", "not before the driver commits");
    m.commit(next);
    assert_eq!(m.conf_get("KeepAlive", None).unwrap(), "OK 300\r\n");
    assert_eq!(m.conf_get("RootCA", None).unwrap(), "OK ROOT\r\n");
    assert_eq!(m.conf_get("Certificate", Some("der")), Err(AtError::Parameter));
    // Messages on a configured topic carry its index; subscriptions survive reconnections.
    m.message("dev1/cmd/reboot".into(), Bytes::from_static(b"now"));
    assert_eq!(m.get(GetFrom::Topic(1)), "OK1 now\r\n");
    assert_eq!(m.subscribe(1).unwrap(), "dev1/cmd/#");
    assert_eq!(m.subscriptions(), ["dev1/expresslink_config", "dev1/cmd/#"]);
    assert_eq!(m.subscribe(3), Err(AtError::ParameterUndefined));
    m.reset();
    assert_eq!(m.subscriptions(), ["dev1/expresslink_config"]);
}

#[test]
fn a_factory_reset_returns_to_staging_with_nothing_kept() {
    let mut m = machine();
    let mut claimed = settings();
    claimed.endpoint = OEM.into();
    claimed.claim_ticket = "clt1.x".into();
    m.commit(claimed);
    m.message("dev1/data".into(), Bytes::from_static(b"1"));
    m.factory_reset(settings());
    assert_eq!(m.settings().claim_ticket, "");
    assert_eq!(m.connect_query(), "OK 0 0 DISCONNECTED STAGING\r\n");
    assert_eq!(m.get(GetFrom::Any), "OK\r\n");
    assert_eq!(m.next_event(), "OK\r\n");
}
