//! Onboarding by claim, end to end, against the real `claimlink up` process: the AT dialogue of
//! a simulated device (`claimlink device --at-stdio`) through staging, claim, move, JITP,
//! policy, factory reset and a second claim; and the hijack attempts (wrong claim codes and
//! lockouts, a rival OEM, an unregistered endpoint, topics of other devices, a claim-thing
//! outside its topics, a forged claim-thing certificate) with paho-mqtt as the independent
//! client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod platform;

use std::time::{Duration, Instant};

use claimlink_testkit::Paho;
use platform::{AtDevice, Platform};
use serde_json::{Value, json};

const NOT_AUTHORIZED: i64 = 0x87;

#[test]
fn at_dialogue_from_staging_to_the_oem_and_back_after_a_factory_reset() {
    let p = Platform::up("at_dialogue");
    let thing = p.devices()[0].clone();
    let mut d = AtDevice::start(&p, &thing);
    assert_eq!(d.at("AT"), "OK");
    assert_eq!(d.at("at+conf? thingname"), format!("OK {thing}"));
    assert_eq!(d.at("AT+CONF ThingName=someone-else"), "ERR12 KEY READONLY");
    assert_eq!(d.at("AT+CONF? Endpoint"), format!("OK {}", p.staging_endpoint()));
    assert_eq!(d.at("AT+CONNECT?"), "OK 0 0 DISCONNECTED STAGING");
    assert_eq!(d.at("AT+BOGUS"), "ERR3 COMMAND NOT FOUND");
    assert_eq!(d.at("AT+CONF Topic1=a\\xb"), "ERR5 INVALID ESCAPE");
    assert_eq!(d.at("AT+CONF QoS=2"), "ERR7 OUT OF RANGE");
    assert_eq!(d.at("AT+SEND1 hello"), "ERR8 PARAMETER UNDEFINED");
    assert!(d.at("AT+CONF? Certificate pem").starts_with("OK -----BEGIN CERTIFICATE-----\\A"));
    assert_eq!(d.at("AT+EVENT?"), "OK 2 0 STARTUP");
    assert_eq!(d.at("AT+EVENT?"), "OK");
    assert_eq!(d.at("AT+CONNECT"), "OK 1 CONNECTED");
    assert_eq!(d.at("AT+CONNECT?"), "OK 1 0 CONNECTED STAGING");
    // In staging the device may not leave its own topics.
    assert_eq!(d.at("AT+CONF Topic2=elsewhere/x"), "OK");
    assert_eq!(d.at("AT+CONF QoS=1"), "OK");
    assert_eq!(d.at("AT+SEND2 nope"), "ERR25 NOT ALLOWED");

    // The OEM claims it (claim API, claim-thing certificate); the device moves by itself.
    let code = p.claim_code(&thing);
    let (status, body) = p.claim_api(
        "POST",
        "/claims",
        &json!({"thingName": thing, "endpoint": p.oem_endpoint(), "claimCode": code}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], "ACCEPTED");
    d.wait_for("AT+CONNECT?", "OK 1 1 CONNECTED CUSTOMER");
    let claim = d.at_lines("AT+GET0", 2);
    assert_eq!(claim[0], format!("OK {thing}/expresslink_config"));
    let delivered: Value = serde_json::from_str(&claim[1]).unwrap();
    // Only the endpoint and staging's claim ticket reach the device (never the claim code).
    assert_eq!(delivered["Endpoint"], p.oem_endpoint());
    assert!(delivered["ClaimTicket"].as_str().is_some_and(|t| t.starts_with("clt1.")), "{delivered}");
    assert_eq!(delivered.as_object().unwrap().len(), 2, "{delivered}");
    let events: Vec<String> = std::iter::from_fn(|| Some(d.at("AT+EVENT?")).filter(|e| e != "OK")).collect();
    assert_eq!(events, ["OK 1 0 MSG", "OK 3 0 CONLOST", "OK 6 0 CONNECT"]);
    assert_eq!(d.at("AT+CONF? Endpoint"), format!("OK {}", p.oem_endpoint()));
    // Provisioned just in time: its policy allows its own topics only.
    assert_eq!(d.at(&format!("AT+CONF Topic1={thing}/telemetry")), "OK");
    assert_eq!(d.at("AT+SEND1 {\"t\":21.5}"), "OK");
    assert_eq!(d.at("AT+SEND2 nope"), "ERR25 NOT ALLOWED");
    assert_eq!(d.at("AT+SUBSCRIBE1"), "OK");
    d.wait_for("AT+EVENT?", "OK 8 1 SUBACK");
    let thing_record = p.admin_api("GET", &format!("/things/{thing}"));
    assert_eq!(thing_record["thingName"], thing.as_str());

    // The endpoint survived a restart of the agent (persistent settings).
    drop(d);
    let mut d = AtDevice::start(&p, &thing);
    assert_eq!(d.at("AT+CONF? Endpoint"), format!("OK {}", p.oem_endpoint()));
    assert_eq!(d.at("AT+CONNECT"), "OK 1 CONNECTED");
    assert_eq!(d.at("AT+CONNECT?"), "OK 1 1 CONNECTED CUSTOMER");

    // Factory reset: back to staging, where the device's return ends the ownership.
    assert_eq!(d.at("AT+FACTORY_RESET"), "OK");
    assert_eq!(d.at("AT+CONF? Endpoint"), format!("OK {}", p.staging_endpoint()));
    assert_eq!(d.at("AT+CONNECT"), "OK 1 CONNECTED");
    assert_eq!(d.at("AT+CONNECT?"), "OK 1 0 CONNECTED STAGING");
    let device = wait_json(
        || p.staging_admin("GET", &format!("/staging/devices/{thing}"), None).1,
        |v| v["owner"].is_null(),
    );
    assert_eq!(device["delivered"], false);
    let released = p.staging_admin("GET", &format!("/staging/claims?thingName={thing}"), None).1;
    assert!(released["claims"][0]["releasedAt"].is_i64(), "{released}");

    // A new claim works and moves it again.
    let (status, body) = p.claim_api(
        "POST",
        "/claims",
        &json!({"thingName": thing, "endpoint": p.oem_endpoint(), "claimCode": code}),
    );
    assert_eq!(status, 200, "{body}");
    d.wait_for("AT+CONNECT?", "OK 1 1 CONNECTED CUSTOMER");
    assert_eq!(d.at("AT+DISCONNECT"), "OK 0 DISCONNECTED");
    assert_eq!(d.at("AT+CONNECT?"), "OK 0 1 DISCONNECTED CUSTOMER");
}

fn wait_json(mut get: impl FnMut() -> Value, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = get();
        if ok(&v) || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn paho(paho: &mut Paho, cmd: Value) -> Value {
    serde_json::from_str(&paho.run(&cmd.to_string())).unwrap()
}

#[test]
fn claim_hijack_attempts_are_refused_counted_and_audited() {
    let Some(mut py) = Paho::start("claim_hijack") else { return };
    let p = Platform::up("claim_hijack");
    let devices = p.devices();
    let (a, b, c) = (&devices[0], &devices[1], &devices[2]);
    let endpoint = p.oem_endpoint();
    let dir = tempfile::tempdir().unwrap();

    // Devices in staging: client id must be the ThingName; confined to their own topics.
    let (cert_a, key_a) = p.device_files(a, dir.path());
    let conn = |name: &str, cid: &str, cert: &str, key: &str| {
        json!({"op": "connect", "name": name, "cid": cid, "port": p.staging_port(), "sni": "staging.localhost",
               "ca": p.endpoint_ca(), "cert": cert, "key": key})
    };
    assert_eq!(paho(&mut py, conn("imp", "not-its-name", &cert_a, &key_a))["rc"], NOT_AUTHORIZED);
    assert_eq!(paho(&mut py, conn("a", a, &cert_a, &key_a))["rc"], 0);
    let codes = paho(&mut py, json!({"op": "subscribe", "name": "a", "topic": format!("{b}/#"), "qos": 1}));
    assert_eq!(codes["codes"], json!([NOT_AUTHORIZED]));
    let codes = paho(&mut py, json!({"op": "subscribe", "name": "a", "topic": "#", "qos": 1}));
    assert_eq!(codes["codes"], json!([NOT_AUTHORIZED]));
    let rc = paho(
        &mut py,
        json!({"op": "publish", "name": "a", "topic": format!("{b}/expresslink_config"), "payload": "{\"Endpoint\":\"evil.example.com\"}", "qos": 1}),
    );
    assert_eq!(rc["rc"], NOT_AUTHORIZED);
    let rc = paho(
        &mut py,
        json!({"op": "publish", "name": "a", "topic": format!("{a}/state"), "payload": "x", "qos": 1}),
    );
    assert!(rc["rc"] == 0 || rc["rc"] == 16, "{rc}"); // own topic: allowed (no subscribers: 16)

    // The claim-thing: only config topics to publish, only its own results to read.
    let oem_id = p.oem_id();
    let (ct_cert, ct_key) = (p.data("oem/claim-thing.pem"), p.data("oem/claim-thing.key"));
    assert_eq!(
        paho(&mut py, conn("ct-x", a, &ct_cert, &ct_key))["rc"],
        NOT_AUTHORIZED,
        "a claim-thing is its UUID"
    );
    assert_eq!(paho(&mut py, conn("ct", &oem_id, &ct_cert, &ct_key))["rc"], 0);
    let rc = paho(
        &mut py,
        json!({"op": "publish", "name": "ct", "topic": format!("{a}/state"), "payload": "x", "qos": 1}),
    );
    assert_eq!(rc["rc"], NOT_AUTHORIZED);
    let codes = paho(
        &mut py,
        json!({"op": "subscribe", "name": "ct", "topic": format!("{a}/expresslink_config"), "qos": 1}),
    );
    assert_eq!(codes["codes"], json!([NOT_AUTHORIZED]));
    let codes = paho(
        &mut py,
        json!({"op": "subscribe", "name": "ct", "topic": format!("{oem_id}/claims/#"), "qos": 1}),
    );
    assert_eq!(codes["codes"], json!([1]));

    // A claim over MQTT with the right code: accepted, and the device gets only the endpoint.
    let claim = json!({"Endpoint": endpoint, "ClaimCode": p.claim_code(a), "Note": "extra fields are fine"});
    let rc = paho(
        &mut py,
        json!({"op": "publish", "name": "ct", "topic": format!("{a}/expresslink_config"), "payload": claim.to_string(), "qos": 1}),
    );
    assert_eq!(rc["rc"], 0);
    let got = paho(&mut py, json!({"op": "expect", "name": "ct", "count": 1}));
    assert_eq!(got["messages"][0][0], format!("{oem_id}/claims/{a}/accepted"));
    let got = paho(&mut py, json!({"op": "expect", "name": "a", "count": 1}));
    assert_eq!(got["messages"][0][0], format!("{a}/expresslink_config"));
    let delivered: Value = serde_json::from_str(got["messages"][0][1].as_str().unwrap()).unwrap();
    assert_eq!(delivered["Endpoint"], endpoint);
    assert!(delivered["ClaimTicket"].as_str().is_some_and(|t| t.starts_with("clt1.")), "{delivered}");
    assert_eq!(delivered.as_object().unwrap().len(), 2, "only the endpoint and its ticket: {delivered}");

    // Refused over MQTT: the reason comes back on the rejected topic; the device hears nothing.
    let bad = json!({"Endpoint": endpoint, "ClaimCode": "2222-2222-2222-2222"});
    let rc = paho(
        &mut py,
        json!({"op": "publish", "name": "ct", "topic": format!("{c}/expresslink_config"), "payload": bad.to_string(), "qos": 1}),
    );
    assert_eq!(rc["rc"], 0);
    let got = paho(&mut py, json!({"op": "expect", "name": "ct", "count": 1}));
    assert_eq!(got["messages"][0][0], format!("{oem_id}/claims/{c}/rejected"));
    let result: Value = serde_json::from_str(got["messages"][0][1].as_str().unwrap()).unwrap();
    assert_eq!(
        (result["result"].as_str(), result["reason"].as_str()),
        (Some("REJECTED"), Some("ClaimCodeWrong"))
    );
    let rc = paho(
        &mut py,
        json!({"op": "publish", "name": "ct", "topic": format!("{c}/expresslink_config"), "payload": "not json", "qos": 1}),
    );
    assert_eq!(rc["rc"], 0);
    let got = paho(&mut py, json!({"op": "expect", "name": "ct", "count": 1}));
    let result: Value = serde_json::from_str(got["messages"][0][1].as_str().unwrap()).unwrap();
    assert_eq!(result["reason"], "InvalidRequest");

    let (status, body) = p.claim_api("POST", "/claims", &json!({"thingName": c, "endpoint": endpoint}));
    assert_eq!((status, body["code"].as_str()), (400, Some("ClaimCodeRequired")), "{body}");

    // An endpoint the OEM did not register.
    let evil = json!({"thingName": c, "endpoint": "evil.example.com:8883", "claimCode": p.claim_code(c)});
    let (status, body) = p.claim_api("POST", "/claims", &evil);
    assert_eq!((status, body["code"].as_str()), (403, Some("EndpointNotRegistered")), "{body}");

    // A rival OEM: registered by the staging administrator; its upload with a key is refused.
    let (status, rival) = p.staging_admin(
        "POST",
        "/staging/oems",
        Some(json!({"name": "Rival", "endpoints": ["rival.localhost:9999"]})),
    );
    assert_eq!(status, 200, "{rival}");
    let rival_id = rival["oemId"].as_str().unwrap().to_owned();
    let ca = claimlink_testpki::TestCa::root(claimlink_pki::KeyAlgorithm::P256, "CN=Rival CA");
    let rival_ct = ca.leaf_with(
        &claimlink_pki::Profile::ClaimThing,
        "CN=Rival claim-thing",
        std::time::SystemTime::now(),
        claimlink_pki::profile::YEAR,
    );
    let with_key = format!("{}{}", rival_ct.certificate.to_pem(), rival_ct.key_pem().as_str());
    let path = format!("/staging/oems/{rival_id}/claim-certificate");
    let (status, body) = p.staging_admin("PUT", &path, Some(json!({"certificatePem": with_key})));
    assert_eq!(status, 400, "{body}");
    assert!(!body.to_string().contains("PRIVATE KEY"), "the key is not echoed");
    assert_eq!(
        p.staging_admin("GET", &format!("/staging/oems/{rival_id}"), None).1["claimCertificateId"],
        Value::Null
    );
    let (status, _) =
        p.staging_admin("PUT", &path, Some(json!({"certificatePem": rival_ct.certificate.to_pem()})));
    assert_eq!(status, 200);
    let rival_tls = (rival_ct.certificate.to_pem(), rival_ct.key_pem().to_string());
    let steal = json!({"thingName": a, "endpoint": "rival.localhost:9999", "claimCode": p.claim_code(a)});
    let (status, body) = p.claim_api_as(Some((&rival_tls.0, &rival_tls.1)), "POST", "/claims", &steal);
    assert_eq!((status, body["code"].as_str()), (409, Some("AlreadyOwned")), "{body}");
    let (status, body) = p.claim_api_as(
        Some((&rival_tls.0, &rival_tls.1)),
        "POST",
        &format!("/claims/{a}/release"),
        &json!({}),
    );
    assert_eq!((status, body["code"].as_str()), (403, Some("NotOwner")), "{body}");
    // Without a claim-thing certificate there is no claim API.
    let (status, _) = p.claim_api_as(None, "POST", "/claims", &steal);
    assert_eq!(status, 401);

    // A forged claim-thing certificate (same subject, another key and issuer) fails the handshake.
    let forged = claimlink_testpki::TestCa::root(claimlink_pki::KeyAlgorithm::P256, "CN=Forger").leaf_with(
        &claimlink_pki::Profile::ClaimThing,
        "CN=Demo OEM claim-thing,O=Demo OEM",
        std::time::SystemTime::now(),
        claimlink_pki::profile::YEAR,
    );
    let fc = dir.path().join("forged.pem");
    let fk = dir.path().join("forged.key");
    std::fs::write(&fc, forged.certificate.to_pem()).unwrap();
    std::fs::write(&fk, forged.key_pem().as_str()).unwrap();
    let r = paho(&mut py, conn("forged", &oem_id, fc.to_str().unwrap(), fk.to_str().unwrap()));
    assert!(r.get("error").is_some() || r["rc"] != 0, "{r}");
    let forged_api = p.try_claim_api_as(
        Some((&forged.certificate.to_pem(), forged.key_pem().as_str())),
        "GET",
        "/claims",
        &json!({}),
    );
    assert!(matches!(forged_api, Err(_) | Ok((401, _))), "{forged_api:?}");

    // The owner releases; the rival may then claim (it is the device's new owner).
    let (status, _) = p.claim_api("POST", &format!("/claims/{a}/release"), &json!({}));
    assert_eq!(status, 200);
    let (status, body) = p.claim_api_as(Some((&rival_tls.0, &rival_tls.1)), "POST", "/claims", &steal);
    assert_eq!(status, 200, "{body}");

    // A claim made while the device is offline reaches it when it next connects.
    let (status, body) = p.claim_api(
        "POST",
        "/claims",
        &json!({"thingName": c, "endpoint": endpoint, "claimCode": p.claim_code(c)}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["delivered"], false);
    let (cert_c, key_c) = p.device_files(c, dir.path());
    assert_eq!(paho(&mut py, conn("c", c, &cert_c, &key_c))["rc"], 0);
    let got = paho(&mut py, json!({"op": "expect", "name": "c", "count": 1}));
    assert_eq!(got["messages"][0][0], format!("{c}/expresslink_config"));
    let delivered: Value = serde_json::from_str(got["messages"][0][1].as_str().unwrap()).unwrap();
    assert_eq!(delivered["Endpoint"], endpoint);
    let dev = wait_json(
        || p.staging_admin("GET", &format!("/staging/devices/{c}"), None).1,
        |v| v["delivered"] == true,
    );
    assert_eq!(dev["delivered"], true, "the device's PUBACK is recorded");

    // A stranger's wrong codes lock out the stranger, never the device: the owner still claims.
    let wrong =
        json!({"thingName": b, "endpoint": "rival.localhost:9999", "claimCode": "0000-0000-0000-0000"});
    let as_rival = |body: &Value| p.claim_api_as(Some((&rival_tls.0, &rival_tls.1)), "POST", "/claims", body);
    for n in 1..=3 {
        let (status, body) = as_rival(&wrong);
        assert_eq!((status, body["code"].as_str()), (403, Some("ClaimCodeWrong")), "{body}");
        let dev = p.staging_admin("GET", &format!("/staging/devices/{b}"), None).1;
        assert_eq!(dev["failedClaimCodes"], n);
        assert_eq!(dev["owner"], Value::Null);
        assert_eq!(dev["lockedUntil"], Value::Null, "the device itself is not locked");
        if n == 3 {
            assert!(body["retryAt"].as_i64().unwrap() > claimlink_registry::now() + 50_000, "{body}");
        }
    }
    let stolen_code =
        json!({"thingName": b, "endpoint": "rival.localhost:9999", "claimCode": p.claim_code(b)});
    let (status, body) = as_rival(&stolen_code);
    assert_eq!((status, body["code"].as_str()), (429, Some("LockedOut")), "{body}");
    let (status, body) = as_rival(&stolen_code);
    assert_eq!((status, body["code"].as_str()), (429, Some("LockedOut")), "{body}");
    // Five claims of one device by one claimer use up its burst; the sixth is refused unread.
    let (status, body) = as_rival(&stolen_code);
    assert_eq!((status, body["code"].as_str()), (429, Some("RateLimited")), "{body}");
    let right = json!({"thingName": b, "endpoint": endpoint, "claimCode": p.claim_code(b)});
    let (status, body) = p.claim_api("POST", "/claims", &right);
    assert_eq!(status, 200, "the owner is not locked out by a stranger: {body}");

    // The owner's repeated claim needs the code too (it used to be accepted without one).
    let (status, body) = p.claim_api("POST", "/claims", &json!({"thingName": b, "endpoint": endpoint}));
    assert_eq!((status, body["code"].as_str()), (400, Some("ClaimCodeRequired")), "{body}");
    let (status, body) = p.claim_api(
        "POST",
        "/claims",
        &json!({"thingName": b, "endpoint": endpoint, "claimCode": "2222-3333-4444-5555"}),
    );
    assert_eq!((status, body["code"].as_str()), (403, Some("ClaimCodeWrong")), "{body}");
    let (status, body) = p.claim_api("POST", "/claims", &right);
    assert_eq!(status, 200, "{body}");

    // Accepted claims are rows; refusals are counted in aggregate per claimer, device and reason.
    let claims = p.staging_admin("GET", &format!("/staging/claims?thingName={b}"), None).1;
    let reasons: Vec<&str> =
        claims["claims"].as_array().unwrap().iter().map(|c| c["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons, ["Accepted"], "{claims}");
    let refusals = p.staging_admin("GET", &format!("/staging/claim-refusals?thingName={b}"), None).1;
    let attempts = |claimer: &str, reason: &str| {
        refusals["refusals"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["claimer"] == claimer && r["reason"] == reason)
            .map(|r| r["attempts"].as_i64().unwrap())
            .sum::<i64>()
    };
    assert_eq!(attempts(&format!("oem:{rival_id}"), "ClaimCodeWrong"), 3, "{refusals}");
    assert_eq!(attempts(&format!("oem:{oem_id}"), "ClaimCodeWrong"), 1, "{refusals}");
    let mine = p.claim_api("GET", "/claims/refusals", &json!({})).1;
    assert!(
        mine["refusals"].as_array().unwrap().iter().all(|r| r["claimer"] == format!("oem:{oem_id}")),
        "{mine}"
    );
    let everything = format!("{} {}", p.claim_api("GET", "/claims", &json!({})).1, mine);
    assert!(!everything.contains(&p.claim_code(b)), "claim codes are never stored");
}

#[test]
fn no_will_retained_message_or_device_publish_reaches_a_config_topic() {
    let Some(mut py) = Paho::start("config_topic_paths") else { return };
    let p = Platform::up("config_topic_paths");
    let devices = p.devices();
    let (a, b) = (&devices[0], &devices[1]);
    let dir = tempfile::tempdir().unwrap();
    let oem_id = p.oem_id();
    let (ct_cert, ct_key) = (p.data("oem/claim-thing.pem"), p.data("oem/claim-thing.key"));
    let base = |name: &str, cid: &str, cert: &str, key: &str| {
        json!({"op": "connect", "name": name, "cid": cid, "port": p.staging_port(), "sni": "staging.localhost",
               "ca": p.endpoint_ca(), "cert": cert, "key": key})
    };
    let (cert_a, key_a) = p.device_files(a, dir.path());
    assert_eq!(paho(&mut py, base("a", a, &cert_a, &key_a))["rc"], 0);
    let evil = json!({"Endpoint": "evil.example.com:8883"}).to_string();

    // A claim-thing's will on a device's config topic: refused with the connection, and so
    // neither a drop nor a takeover can fire it.
    let mut with_will = base("ct-will", &oem_id, &ct_cert, &ct_key);
    with_will["will_topic"] = json!(format!("{a}/expresslink_config"));
    with_will["will_payload"] = json!(evil);
    assert_eq!(paho(&mut py, with_will)["rc"], NOT_AUTHORIZED);
    // The same claim-thing without a will connects; dropping it and taking it over deliver nothing.
    assert_eq!(paho(&mut py, base("ct", &oem_id, &ct_cert, &ct_key))["rc"], 0);
    assert_eq!(paho(&mut py, base("ct2", &oem_id, &ct_cert, &ct_key))["rc"], 0);
    paho(&mut py, json!({"op": "drop", "name": "ct2"}));
    // A retained claim from the claim-thing is refused and not stored.
    let rc = paho(
        &mut py,
        json!({"op": "publish", "name": "ct", "topic": format!("{a}/expresslink_config"), "payload": evil, "qos": 1, "retain": true}),
    );
    assert!(rc["rc"] == NOT_AUTHORIZED || rc.get("error").is_some(), "{rc}");

    // A device may not write its own config topic: not retained (it would outlive a factory
    // reset), not plain, not as its will.
    let (cert_b, key_b) = p.device_files(b, dir.path());
    let mut b_will = base("b-will", b, &cert_b, &key_b);
    b_will["will_topic"] = json!(format!("{b}/expresslink_config"));
    b_will["will_payload"] = json!(evil);
    b_will["will_retain"] = json!(true);
    assert_eq!(paho(&mut py, b_will)["rc"], NOT_AUTHORIZED);
    assert_eq!(paho(&mut py, base("b", b, &cert_b, &key_b))["rc"], 0);
    paho(&mut py, json!({"op": "expect", "name": "b", "count": 1, "timeout": 1}));
    for retain in [true, false] {
        let rc = paho(
            &mut py,
            json!({"op": "publish", "name": "b", "topic": format!("{b}/expresslink_config"), "payload": evil, "qos": 1, "retain": retain}),
        );
        assert_eq!(rc["rc"], NOT_AUTHORIZED, "retain={retain}: {rc}");
    }
    // A will on its own other topics is fine.
    let (cert_c, key_c) = p.device_files(&devices[2], dir.path());
    let mut c_will = base("c", &devices[2], &cert_c, &key_c);
    c_will["will_topic"] = json!(format!("{}/status", devices[2]));
    c_will["will_payload"] = json!("offline");
    assert_eq!(paho(&mut py, c_will)["rc"], 0);

    // Nothing reached either device, now or after reconnecting (no retained endpoint).
    let got = paho(&mut py, json!({"op": "expect", "name": "a", "count": 1, "timeout": 2}));
    assert_eq!(got["messages"], json!([]), "device a heard: {got}");
    paho(&mut py, json!({"op": "disconnect", "name": "b"}));
    assert_eq!(paho(&mut py, base("b2", b, &cert_b, &key_b))["rc"], 0);
    let got = paho(&mut py, json!({"op": "expect", "name": "b2", "count": 1, "timeout": 2}));
    assert_eq!(got["messages"], json!([]), "device b heard: {got}");
    let dev = p.staging_admin("GET", &format!("/staging/devices/{a}"), None).1;
    assert_eq!(dev["owner"], Value::Null, "no claim was made: {dev}");
}

#[test]
fn portal_in_headless_chromium_claims_by_qr_photo_follows_the_device_and_releases_it() {
    let test = "portal_chromium";
    let Some(python) = claimlink_testkit::python_with(test, "selenium") else { return };
    let Some(rsvg) = claimlink_testkit::tool(test, "rsvg-convert", "--version", "librsvg2-bin") else {
        return;
    };
    for (bin, package) in [("/usr/bin/chromium", "chromium"), ("/usr/bin/chromedriver", "chromium-driver")] {
        if !std::path::Path::new(bin).exists() {
            claimlink_testkit::missing::<()>(test, bin, &format!("apt-get install {package}"));
            return;
        }
    }
    // Over HTTPS (`up --https`): Chromium takes the portal's P-256 certificate by its key.
    let p = Platform::up_https(test);
    let Some(openssl) = claimlink_testkit::openssl(test) else { return };
    let spki = portal_spki_pin(&openssl, &p);
    // The device photographed is an SM2 one (its label says so); the one typed in is P-256.
    let (sm2, p256) = (p.sm2_devices(), p.devices());
    let (running, typed) = (&sm2[0], &p256[1]);
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("label.png");
    let label = p.data(&format!("factory-sm2/labels/{running}.svg"));
    assert!(std::fs::read_to_string(&label).unwrap().contains("SM2"), "the label says SM2");
    claimlink_testkit::run_ok(
        std::process::Command::new(rsvg).args(["-w", "700", "-b", "white", "-o"]).arg(&png).arg(&label),
    );
    let device = platform::Device::start(&p, running);
    device.wait_line("waiting to be claimed");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/portal/portal_e2e.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(format!("https://localhost:{}", p.portal))
        .arg(&png)
        .args([running.as_str(), typed.as_str(), &p.claim_code(typed), &spki])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for step in
        ["signed up", "wrong code refused", "online", "typed device waiting", "my devices", "released"]
    {
        assert!(stdout.contains(&format!("\"step\": \"{step}\"")), "{step} missing:\n{stdout}");
    }
    // The device did the journey and, released, went back to staging.
    device.wait_line("published");
    device.wait_count("connected to staging", 2);
    // On the wire both ways: TLS 1.3 with SM, at staging and at the OEM's endpoint.
    device.wait_line(&format!("connected to {} (CUSTOMER) over TLS_SM4_GCM_SM3", p.oem_endpoint()));
    device.wait_line(&format!("connected to {} (STAGING) over TLS_SM4_GCM_SM3", p.staging_endpoint()));
    let released = p.staging_admin("GET", &format!("/staging/devices/{running}"), None).1;
    assert_eq!(released["owner"], Value::Null);
    let waiting = p.staging_admin("GET", &format!("/staging/devices/{typed}"), None).1;
    assert_eq!(waiting["owner"].as_str(), Some(p.oem_id().as_str()));
    assert_eq!(waiting["delivered"], false);
    https_listeners_speak_tls13_with_sm(&p);
}

/// Under `up --https` the admin API and the portal are TLS only: Tongsuo gets them over
/// TLS_SM4_GCM_SM3 with the SM2 certificate (verified against the endpoint CA) and over TLCP on
/// the same port with the dual certificates, `claimlink iot`
/// reaches the API with `--ca-bundle`, and a plaintext request gets no answer.
fn https_listeners_speak_tls13_with_sm(p: &Platform) {
    let Some(tongsuo) = claimlink_testkit::tongsuo("https_listeners_sm") else { return };
    let token = p.read("account-token");
    for (port, request, expect) in [
        (
            p.admin_api,
            format!(
                "GET /things HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
                token.trim()
            ),
            "\"things\"",
        ),
        (
            p.portal,
            "GET /signin HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".to_owned(),
            "<form",
        ),
    ] {
        let mut child = std::process::Command::new(&tongsuo)
            .args([
                "s_client",
                "-connect",
                &format!("127.0.0.1:{port}"),
                "-servername",
                "localhost",
                "-tls1_3",
            ])
            .args(["-ciphersuites", "TLS_SM4_GCM_SM3", "-sigalgs", "sm2sig_sm3", "-groups", "curveSM2"])
            .args(["-verify_return_error", "-ign_eof", "-CAfile", &p.endpoint_ca()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .env("OPENSSL_CONF", "/dev/null")
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), request.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("TLS_SM4_GCM_SM3"), "port {port}: {stdout}");
        assert!(stdout.contains("Verify return code: 0 (ok)"), "port {port}: {stdout}");
        assert!(stdout.contains("HTTP/1.1 200") && stdout.contains(expect), "port {port}: {stdout}");
        // TLCP on the same port (no client certificate: an ECC suite).
        for suite in ["ECC-SM2-SM4-GCM-SM3", "ECC-SM2-SM4-CBC-SM3"] {
            let mut child = std::process::Command::new(&tongsuo)
                .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-servername", "localhost"])
                .args(["-ntls", "-enable_ntls", "-cipher", suite])
                .args(["-verify_return_error", "-ign_eof", "-CAfile", &p.endpoint_ca()])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .env("OPENSSL_CONF", "/dev/null")
                .spawn()
                .unwrap();
            std::io::Write::write_all(&mut child.stdin.take().unwrap(), request.as_bytes()).unwrap();
            let out = child.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(stdout.contains(&format!("Cipher is {suite}")), "port {port} TLCP: {stdout}");
            assert!(stdout.contains("Verify return code: 0 (ok)"), "port {port} TLCP: {stdout}");
            assert!(stdout.contains("HTTP/1.1 200") && stdout.contains(expect), "port {port} TLCP: {stdout}");
        }
        // No plaintext fallback on a TLS port.
        let mut plain = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        plain.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        std::io::Write::write_all(&mut plain, b"GET /signin HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        let mut answer = Vec::new();
        let _ = std::io::Read::read_to_end(&mut plain, &mut answer);
        assert!(!answer.starts_with(b"HTTP/"), "port {port} answered plaintext HTTP");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_claimlink"))
        .args(["iot", "describe-endpoint", "--endpoint-url", &format!("https://localhost:{}", p.admin_api)])
        .args(["--ca-bundle", &p.endpoint_ca()])
        .env("CLAIMLINK_TOKEN", token.trim())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("endpointAddress"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Base64 of the SHA-256 of the public key the portal presents to a client without SM (what
/// Chromium's `--ignore-certificate-errors-spki-list` takes), read off the wire by OpenSSL.
fn portal_spki_pin(openssl: &std::path::Path, p: &Platform) -> String {
    let sh = |script: &str| {
        let out = std::process::Command::new("sh").args(["-c", script]).output().unwrap();
        assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let o = openssl.display();
    let port = p.portal;
    let ca = p.endpoint_ca();
    // The chain verifies against the endpoint CA, then the key is hashed.
    let verified = sh(&format!(
        "{o} s_client -connect 127.0.0.1:{port} -servername localhost -CAfile {ca} -verify_return_error </dev/null 2>/dev/null | grep 'Verify return code'"
    ));
    assert!(
        verified.lines().all(|l| l.trim() == "Verify return code: 0 (ok)"),
        "OpenSSL verifies the portal certificate against the endpoint CA: {verified}"
    );
    sh(&format!(
        "{o} s_client -connect 127.0.0.1:{port} -servername localhost </dev/null 2>/dev/null | {o} x509 -pubkey -noout | {o} pkey -pubin -outform der | {o} dgst -sha256 -binary | base64"
    ))
}

#[test]
fn up_restarted_reuses_its_data_and_ownership_survives() {
    let mut p = Platform::up("up_restart");
    assert!(p.stdout.contains("created p256 CA"), "{}", p.stdout);
    let devices = p.devices();
    let oem = p.oem_id();
    let thing = &devices[3];
    let (status, body) = p.claim_api(
        "POST",
        "/claims",
        &json!({"thingName": thing, "endpoint": p.oem_endpoint(), "claimCode": p.claim_code(thing)}),
    );
    assert_eq!(status, 200, "{body}");
    let ca_before = p.read("manufacturer-ca/chain.pem");
    let mut d = AtDevice::start(&p, thing);
    assert_eq!(d.at("AT+CONNECT"), "OK 1 CONNECTED");
    d.wait_for("AT+CONNECT?", "OK 1 1 CONNECTED CUSTOMER");
    while d.at("AT+EVENT?") != "OK" {}
    p.restart("up_restart");
    assert!(!p.stdout.contains("created"), "nothing is made again:\n{}", p.stdout);
    assert_eq!(p.devices(), devices);
    assert_eq!(p.oem_id(), oem);
    assert_eq!(p.read("manufacturer-ca/chain.pem"), ca_before);
    let dev = p.staging_admin("GET", &format!("/staging/devices/{thing}"), None).1;
    assert_eq!(dev["owner"].as_str(), Some(oem.as_str()));
    // The device lost its connection and came back by itself (backoff with jitter), to the
    // restarted platform, where its certificate is still registered.
    d.wait_for("AT+CONNECT?", "OK 1 1 CONNECTED CUSTOMER");
    let events: Vec<String> = std::iter::from_fn(|| Some(d.at("AT+EVENT?")).filter(|e| e != "OK")).collect();
    assert_eq!(events.first().map(String::as_str), Some("OK 3 0 CONLOST"), "{events:?}");
    assert_eq!(events.last().map(String::as_str), Some("OK 6 0 CONNECT"), "{events:?}");
    assert_eq!(d.at(&format!("AT+CONF Topic1={thing}/after-restart")), "OK");
    assert_eq!(d.at("AT+SEND1 still here"), "OK");
}

#[test]
fn the_at_interface_on_a_pseudo_terminal() {
    use std::io::{BufRead, Write};
    let p = Platform::up("at_pty");
    let thing = p.devices()[0].clone();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_claimlink"))
        .args(["device", "--at-pty", "--bundle"])
        .arg(p.bundle(&thing))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let path = line.trim().strip_prefix("AT interface on ").unwrap_or_else(|| panic!("{line}")).to_owned();
    let mut tty = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let mut reader = std::io::BufReader::new(tty.try_clone().unwrap());
    let mut ask = |cmd: &str| {
        tty.write_all(format!("{cmd}\r\n").as_bytes()).unwrap();
        let mut answer = String::new();
        reader.read_line(&mut answer).unwrap();
        answer
    };
    assert_eq!(ask("AT"), "OK\r\n");
    assert_eq!(ask("AT+CONF? ThingName"), format!("OK {thing}\r\n"));
    assert_eq!(ask("AT+CONNECT"), "OK 1 CONNECTED\r\n");
    assert_eq!(ask("AT+CONNECT?"), "OK 1 0 CONNECTED STAGING\r\n");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn data_files_with_claim_codes_and_hashes_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let p = Platform::up("private_files");
    let thing = &p.devices()[0];
    let mut checked = 0;
    for rel in [
        "".to_owned(),
        "claimlink.db".to_owned(),
        "claimlink.db-wal".to_owned(),
        "factory".to_owned(),
        "factory/manifest.jsonl".to_owned(),
        "factory/manifest.csv".to_owned(),
        "factory/labels.html".to_owned(),
        "factory/labels".to_owned(),
        format!("factory/labels/{thing}.svg"),
        format!("factory/devices/{thing}/key.pem"),
        "staging-admin-token".to_owned(),
        "account-token".to_owned(),
    ] {
        let path = p.data.join(&rel);
        let Ok(meta) = std::fs::metadata(&path) else {
            assert!(rel.ends_with("-wal"), "{rel} is missing");
            continue;
        };
        let mode = meta.permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is mode {mode:o}", path.display());
        checked += 1;
    }
    assert!(checked >= 11, "{checked}");
}

#[test]
fn the_account_admits_only_devices_claimed_for_it_and_no_longer_after_a_release() {
    let Some(mut py) = Paho::start("claim_bound_admission") else { return };
    let p = Platform::up("claim_bound_admission");
    let devices = p.devices();
    let (a, b) = (&devices[0], &devices[1]);
    let dir = tempfile::tempdir().unwrap();
    let (cert_a, key_a) = p.device_files(a, dir.path());
    let (cert_b, key_b) = p.device_files(b, dir.path());
    let staging = |name: &str, cid: &str, cert: &str, key: &str| {
        json!({"op": "connect", "name": name, "cid": cid, "port": p.staging_port(), "sni": "staging.localhost",
               "ca": p.endpoint_ca(), "cert": cert, "key": key})
    };
    let account = |name: &str, cid: &str, cert: &str, key: &str, ticket: Option<&str>| {
        let mut c = json!({"op": "connect", "name": name, "cid": cid, "port": p.account_mqtt, "sni": "demo-oem.localhost",
               "ca": p.endpoint_ca(), "cert": cert, "key": key});
        if let Some(t) = ticket {
            c["username"] = json!("claimlink-claim-ticket");
            c["password"] = json!(t);
        }
        c
    };
    let thing_status = |thing: &str| p.admin_api_call("GET", &format!("/things/{thing}"), "").0;
    // An unclaimed device of the module maker's CA goes straight to the OEM's endpoint: refused
    // and not provisioned (it used to be JIT-provisioned).
    assert_eq!(paho(&mut py, account("b0", b, &cert_b, &key_b, None))["rc"], NOT_AUTHORIZED);
    assert_eq!(paho(&mut py, account("b1", b, &cert_b, &key_b, Some("clt1.e30.AAAA")))["rc"], NOT_AUTHORIZED);
    assert_eq!(thing_status(b), 404, "an unclaimed device was provisioned");

    // Claimed: staging sends the endpoint with a ticket, which admits exactly this device.
    assert_eq!(paho(&mut py, staging("a", a, &cert_a, &key_a))["rc"], 0);
    let claim = json!({"thingName": a, "endpoint": p.oem_endpoint(), "claimCode": p.claim_code(a)});
    let (status, body) = p.claim_api("POST", "/claims", &claim);
    assert_eq!(status, 200, "{body}");
    let got = paho(&mut py, json!({"op": "expect", "name": "a", "count": 1}));
    let config: Value = serde_json::from_str(got["messages"][0][1].as_str().unwrap()).unwrap();
    let ticket = config["ClaimTicket"].as_str().unwrap().to_owned();
    paho(&mut py, json!({"op": "disconnect", "name": "a"}));
    // The OpenSSL CLI verifies the ticket's signature with staging's published key.
    if let Some(openssl) = claimlink_testkit::openssl("claim_bound_admission") {
        let (signed, sig) = ticket.rsplit_once('.').unwrap();
        let mut b64: String = sig
            .chars()
            .map(|c| match c {
                '-' => '+',
                '_' => '/',
                c => c,
            })
            .collect();
        while !b64.len().is_multiple_of(4) {
            b64.push('=');
        }
        std::fs::write(dir.path().join("sig.b64"), &b64).unwrap();
        std::fs::write(dir.path().join("signed"), signed).unwrap();
        let d = |f: &str| dir.path().join(f).to_string_lossy().into_owned();
        claimlink_testkit::run_ok(std::process::Command::new(&openssl).args([
            "base64",
            "-d",
            "-A",
            "-in",
            &d("sig.b64"),
            "-out",
            &d("sig.der"),
        ]));
        let ok = std::process::Command::new(&openssl)
            .args([
                "dgst",
                "-sha256",
                "-verify",
                &p.data("staging/ticket.pub.pem"),
                "-signature",
                &d("sig.der"),
                &d("signed"),
            ])
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&ok.stdout).contains("Verified OK"), "{ok:?}");
        std::fs::write(dir.path().join("signed"), format!("{signed}x")).unwrap();
        let bad = std::process::Command::new(&openssl)
            .args([
                "dgst",
                "-sha256",
                "-verify",
                &p.data("staging/ticket.pub.pem"),
                "-signature",
                &d("sig.der"),
                &d("signed"),
            ])
            .output()
            .unwrap();
        assert!(!bad.status.success(), "a changed ticket must not verify");
    }
    assert_eq!(
        paho(&mut py, account("b2", b, &cert_b, &key_b, Some(&ticket)))["rc"],
        NOT_AUTHORIZED,
        "another device's ticket"
    );
    let mut tampered = ticket.clone();
    tampered.pop();
    tampered.push(if ticket.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(
        paho(&mut py, account("a0", a, &cert_a, &key_a, Some(&tampered)))["rc"],
        NOT_AUTHORIZED,
        "a tampered ticket"
    );
    assert_eq!(paho(&mut py, account("a1", a, &cert_a, &key_a, Some(&ticket)))["rc"], 0);
    assert_eq!(thing_status(a), 200, "provisioned just in time");
    assert_eq!(thing_status(b), 404);

    // Released: the account drops it and its ticket admits it no more.
    let (status, body) = p.claim_api("POST", &format!("/claims/{a}/release"), &json!({}));
    assert_eq!(status, 200, "{body}");
    let notice = body["releaseNotice"].as_str().unwrap_or_default().to_owned();
    assert!(notice.starts_with("clr1."), "{body}");
    // An account run elsewhere takes the notice over its API; a forged one is refused.
    let post = |body: &Value| {
        let (status, text) = p.admin_api_call("POST", "/claim-releases", &body.to_string());
        (status, serde_json::from_str::<Value>(&text).unwrap_or(Value::Null))
    };
    let (status, v) = post(&json!({"releaseNotice": notice}));
    assert_eq!((status, v["thingName"].as_str()), (200, Some(a.as_str())), "{v}");
    let forged = notice.replacen("clr1.", "clr1.e30", 1);
    let (status, v) = post(&json!({"releaseNotice": forged}));
    assert_eq!((status, v["code"].as_str()), (400, Some("InvalidRequestException")), "{v}");
    let (status, _) = post(&json!({"releaseNotice": ticket}));
    assert_eq!(status, 400, "a claim ticket is not a release notice");
    let gone = paho(&mut py, json!({"op": "disconnected", "name": "a1", "timeout": 5}));
    assert_eq!(gone["rc"], NOT_AUTHORIZED, "the released device's session went on: {gone}");
    assert_eq!(
        paho(&mut py, account("a2", a, &cert_a, &key_a, Some(&ticket)))["rc"],
        NOT_AUTHORIZED,
        "the old claim's ticket"
    );
    // A new claim gives a new ticket, which admits it again.
    assert_eq!(paho(&mut py, staging("a3", a, &cert_a, &key_a))["rc"], 0);
    let (status, body) = p.claim_api("POST", "/claims", &claim);
    assert_eq!(status, 200, "{body}");
    let got = paho(&mut py, json!({"op": "expect", "name": "a3", "count": 1}));
    let config: Value = serde_json::from_str(got["messages"][0][1].as_str().unwrap()).unwrap();
    let fresh = config["ClaimTicket"].as_str().unwrap().to_owned();
    assert_ne!(fresh, ticket);
    assert_eq!(paho(&mut py, account("a4", a, &cert_a, &key_a, Some(&fresh)))["rc"], 0);
}

/// An MQTT 3.1.1 CONNECT (clean session, keep-alive 60 s) for `client_id`, with a user name and
/// password when given.
fn mqtt_connect(client_id: &str, login: Option<(&str, &str)>) -> Vec<u8> {
    let field = |s: &str| [&(s.len() as u16).to_be_bytes()[..], s.as_bytes()].concat();
    let flags = if login.is_some() { 0xc2 } else { 0x02 };
    let mut body = [&field("MQTT")[..], &[0x04, flags, 0x00, 0x3c]].concat();
    body.extend(field(client_id));
    if let Some((user, password)) = login {
        body.extend(field(user));
        body.extend(field(password));
    }
    let mut packet = vec![0x10];
    let mut len = body.len();
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        packet.push(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            break;
        }
    }
    packet.extend(body);
    packet
}

/// Tongsuo's `s_client` in TLS 1.3 with SM only, with a device's SM2 certificate, carrying
/// `packet` to `port` (server name `sni`); returns the first bytes that come back.
fn tongsuo_mqtt(
    tongsuo: &std::path::Path,
    p: &Platform,
    thing: &str,
    port: u16,
    sni: &str,
    packet: &[u8],
) -> Vec<u8> {
    use std::io::{Read, Write};
    let b = p.bundle(thing);
    let mut child = std::process::Command::new(tongsuo)
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-servername", sni, "-tls1_3"])
        .args([
            "-ciphersuites",
            "TLS_SM4_GCM_SM3:TLS_SM4_CCM_SM3",
            "-sigalgs",
            "sm2sig_sm3",
            "-groups",
            "curveSM2",
        ])
        .args(["-CAfile", &p.endpoint_ca()])
        .arg("-cert")
        .arg(b.join("cert.pem"))
        .arg("-cert_chain")
        .arg(b.join("chain.pem"))
        .arg("-key")
        .arg(b.join("key.pem"))
        .args(["-verify_return_error", "-quiet"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.as_mut().unwrap().write_all(packet).unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4];
        let n = stdout.read(&mut buf).unwrap_or(0);
        let _ = tx.send(buf[..n].to_vec());
    });
    let got = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert!(!got.is_empty(), "nothing came back over Tongsuo: {}", String::from_utf8_lossy(&out.stderr));
    got
}

/// An encryption certificate for `thing`'s birth key from the module maker's KM
/// (`claimlink ca sign-dual`, the KM's dual issuance), its key opened from the SM2EnvelopedKey
/// by OpenSSL with the birth key: what a TLCP client presents beside its signing certificate.
/// Returns the paths of the encryption certificate and key.
fn device_encryption_pair(p: &Platform, thing: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let b = p.bundle(thing);
    let dir = b.join("tlcp");
    std::fs::create_dir_all(&dir).unwrap();
    let key = b.join("key.pem");
    let run = |cmd: &mut std::process::Command| {
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(std::process::Command::new("openssl")
        .args(["req", "-new", "-subj", &format!("/CN={thing}"), "-sm3", "-sigopt", "distid:1234567812345678"])
        .arg("-key")
        .arg(&key)
        .arg("-out")
        .arg(dir.join("csr.pem")));
    run(std::process::Command::new(env!("CARGO_BIN_EXE_claimlink"))
        .args([
            "ca",
            "sign-dual",
            "--ca",
            &p.data("manufacturer-ca-sm2"),
            "--passphrase-file",
            &p.data("ca-passphrase"),
        ])
        .arg("--csr")
        .arg(dir.join("csr.pem"))
        .arg("--out")
        .arg(dir.join("dual")));
    let scalar = claimlink_testkit::openssl_open_envelope(
        &dir,
        &std::fs::read(dir.join("dual/enc-key.env")).unwrap(),
        key.to_str().unwrap(),
    );
    let enc = claimlink_gm::Sm2PrivateKey::from_bytes(&scalar).unwrap();
    let enc = claimlink_pki::PrivateKey::from_pkcs8_der(&enc.to_pkcs8_der().unwrap()).unwrap();
    std::fs::write(dir.join("enc.key"), claimlink_pki::pem::private_key_to_pem(&enc).unwrap().as_bytes())
        .unwrap();
    (dir.join("dual/enc.pem"), dir.join("enc.key"))
}

/// Tongsuo's `s_client` in TLCP (`-ntls`) with `suite`, the device's SM2 birth certificate as
/// its signing certificate and `enc` (certificate, key) as its encryption certificate (Tongsuo
/// sends both or none), carrying `packet` to `port`; returns the first bytes back and the
/// session's description (which names the suite).
#[allow(clippy::too_many_arguments)]
fn tongsuo_tlcp(
    tongsuo: &std::path::Path,
    p: &Platform,
    thing: &str,
    enc: &(std::path::PathBuf, std::path::PathBuf),
    port: u16,
    sni: &str,
    suite: &str,
    packet: &[u8],
) -> (Vec<u8>, String) {
    use std::io::{Read, Write};
    let b = p.bundle(thing);
    let mut child = std::process::Command::new(tongsuo)
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-servername", sni])
        .args(["-ntls", "-enable_ntls", "-cipher", suite, "-CAfile", &p.endpoint_ca()])
        .arg("-sign_cert")
        .arg(b.join("cert.pem"))
        .arg("-sign_key")
        .arg(b.join("key.pem"))
        .arg("-enc_cert")
        .arg(&enc.0)
        .arg("-enc_key")
        .arg(&enc.1)
        .arg("-chainCAfile")
        .arg(b.join("chain.pem"))
        .args(["-verify_return_error", "-ign_eof"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .env("OPENSSL_CONF", "/dev/null")
        .spawn()
        .unwrap();
    child.stdin.as_mut().unwrap().write_all(packet).unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // The session summary, then the answer: read until the MQTT bytes after "---\n".
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            let n = stdout.read(&mut buf).unwrap_or(0);
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&all);
            if let Some(i) = text.rfind("---\n")
                && all.len() > i + 4
                && text.contains("Verify return code")
            {
                break;
            }
        }
        let _ = tx.send(all);
    });
    let all = rx.recv_timeout(Duration::from_secs(25)).unwrap_or_default();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&all).into_owned();
    let tail = text.rfind("---\n").map(|i| all[i + 4..].to_vec()).unwrap_or_default();
    assert!(
        !tail.is_empty(),
        "nothing came back over TLCP: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (tail, text)
}

#[test]
fn an_sm2_device_onboards_by_claim_and_tongsuo_speaks_tls13_with_sm_and_tlcp_to_both_endpoints() {
    let p = Platform::up("sm2_journey");
    let things = p.sm2_devices();
    let thing = things[0].clone();
    // The label says which kind of device it is; the birth certificate is SM2.
    assert!(p.read(&format!("factory-sm2/labels/{thing}.svg")).contains(">SM2</text>"));
    assert!(p.read(&format!("factory/labels/{}.svg", p.devices()[0])).contains(">P-256</text>"));
    let cert = claimlink_pki::Certificate::from_pem(
        p.read(&format!("factory-sm2/devices/{thing}/cert.pem")).as_bytes(),
    )
    .unwrap();
    assert!(matches!(cert.public_key().unwrap(), claimlink_pki::PublicKey::Sm2(_)));

    // Tongsuo, the reference GM stack, in strict RFC 8998 with the SM2 birth certificate: staging
    // accepts its MQTT CONNECT.
    let tongsuo = claimlink_testkit::tongsuo("sm2_journey");
    if let Some(t) = &tongsuo {
        let connack = tongsuo_mqtt(
            t,
            &p,
            &things[1],
            p.staging_port(),
            "staging.localhost",
            &mqtt_connect(&things[1], None),
        );
        assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "staging accepted the CONNECT over Tongsuo");
        // TLCP on the same port, told apart by its first record: the CONNECT is accepted too.
        let enc = device_encryption_pair(&p, &things[2]);
        for suite in
            ["ECC-SM2-SM4-GCM-SM3", "ECC-SM2-SM4-CBC-SM3", "ECDHE-SM2-SM4-GCM-SM3", "ECDHE-SM2-SM4-CBC-SM3"]
        {
            let (connack, session) = tongsuo_tlcp(
                t,
                &p,
                &things[2],
                &enc,
                p.staging_port(),
                "staging.localhost",
                suite,
                &mqtt_connect(&things[2], None),
            );
            assert!(session.contains(suite) && session.contains("Verify return code: 0 (ok)"), "{session}");
            assert_eq!(
                connack[..4],
                [0x20, 0x02, 0x00, 0x00],
                "staging accepted the CONNECT over TLCP {suite}"
            );
        }
    }

    // The agent (SM first, as an SM2 device) is claimed and moves to the OEM's account, where it
    // is provisioned just in time and its policy holds.
    let mut d = AtDevice::start(&p, &thing);
    assert_eq!(d.at("AT+CONNECT"), "OK 1 CONNECTED");
    let code = p.claim_code(&thing);
    let (status, body) = p.claim_api(
        "POST",
        "/claims",
        &json!({"thingName": thing, "endpoint": p.oem_endpoint(), "claimCode": code}),
    );
    assert_eq!((status, body["result"].as_str()), (200, Some("ACCEPTED")), "{body}");
    d.wait_for("AT+CONNECT?", "OK 1 1 CONNECTED CUSTOMER");
    let delivered: Value = serde_json::from_str(&d.at_lines("AT+GET0", 2)[1]).unwrap();
    assert_eq!(d.at(&format!("AT+CONF Topic1={thing}/telemetry")), "OK");
    assert_eq!(d.at("AT+SEND1 {\"t\":21.5}"), "OK");
    assert_eq!(d.at("AT+CONF Topic2=elsewhere/x"), "OK");
    assert_eq!(d.at("AT+CONF QoS=1"), "OK");
    assert_eq!(d.at("AT+SEND2 nope"), "ERR25 NOT ALLOWED");
    let registered = p.admin_api("GET", &format!("/certificates/{}", cert.id()));
    assert_eq!(registered["certificateDescription"]["status"], "ACTIVE", "{registered}");
    assert_eq!(p.admin_api("GET", &format!("/things/{thing}"))["thingName"], thing.as_str());

    // Tongsuo with the same SM2 certificate and the device's claim ticket at the account
    // endpoint (SNI picks the account): CONNECT accepted.
    if let Some(t) = &tongsuo {
        let ticket = delivered["ClaimTicket"].as_str().unwrap();
        let port: u16 = p.oem_endpoint().rsplit_once(':').unwrap().1.parse().unwrap();
        let packet = mqtt_connect(&thing, Some(("claimlink-claim-ticket", ticket)));
        let connack = tongsuo_mqtt(t, &p, &thing, port, "demo-oem.localhost", &packet);
        assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "the account accepted the CONNECT over Tongsuo");
        // Without the ticket it is refused (the CA admits claimed devices only).
        let refused = tongsuo_mqtt(t, &p, &thing, port, "demo-oem.localhost", &mqtt_connect(&thing, None));
        assert_eq!(refused[..2], [0x20, 0x02]);
        assert_ne!(refused[3], 0x00, "refused without a claim ticket");
        // TLCP at the account endpoint, the account chosen by SNI as for TLS.
        let enc = device_encryption_pair(&p, &thing);
        let suite = "ECDHE-SM2-SM4-GCM-SM3";
        let (connack, session) =
            tongsuo_tlcp(t, &p, &thing, &enc, port, "demo-oem.localhost", suite, &packet);
        assert!(session.contains(suite), "{session}");
        assert_eq!(connack[..4], [0x20, 0x02, 0x00, 0x00], "the account accepted the CONNECT over TLCP");
    }
}

#[test]
fn an_sm2_device_that_speaks_tlcp_onboards_by_claim_with_dual_certificates() {
    if claimlink_testkit::openssl("tlcp_journey").is_none() {
        return;
    }
    let p = Platform::up("tlcp_journey");
    let thing = p.sm2_devices()[0].clone();
    // The bundle option: TLCP, with an encryption certificate from the module maker's KM beside
    // the birth certificate (so the ECDHE suites are offered).
    let (enc_cert, enc_key) = device_encryption_pair(&p, &thing);
    let b = p.bundle(&thing);
    let rel = |f: &std::path::Path| f.strip_prefix(&b).unwrap().to_string_lossy().into_owned();
    let mut toml = std::fs::read_to_string(b.join("device.toml")).unwrap();
    toml.push_str(&format!(
        "transport = \"tlcp\"\nencryption_certificate = \"{}\"\nencryption_key = \"{}\"\n",
        rel(&enc_cert),
        rel(&enc_key)
    ));
    std::fs::write(b.join("device.toml"), toml).unwrap();
    let device = platform::Device::start(&p, &thing);
    device.wait_line(&format!("connected to {} (STAGING) over ECDHE_SM4_GCM_SM3", p.staging_endpoint()));
    device.wait_line("waiting to be claimed");
    let code = p.claim_code(&thing);
    let (status, body) = p.claim_api(
        "POST",
        "/claims",
        &json!({"thingName": thing, "endpoint": p.oem_endpoint(), "claimCode": code}),
    );
    assert_eq!((status, body["result"].as_str()), (200, Some("ACCEPTED")), "{body}");
    // Moved to the OEM's endpoint over TLCP, provisioned just in time there.
    device.wait_line(&format!("connected to {} (CUSTOMER) over ECDHE_SM4_GCM_SM3", p.oem_endpoint()));
    let thing_json = p.admin_api("GET", &format!("/things/{thing}"));
    assert_eq!(thing_json["thingName"], thing.as_str(), "{thing_json}");

    // The same device over AT: `AT+CONF Transport` reads and sets the setting.
    drop(device);
    let mut d = AtDevice::start(&p, &thing);
    assert_eq!(d.at("AT+CONF? Transport"), "OK TLCP");
    assert_eq!(d.at("AT+CONF Transport=quic"), "ERR4 PARAMETER ERROR");
    assert_eq!(d.at("AT+CONF Transport=tls"), "OK");
    assert_eq!(d.at("AT+CONF? Transport"), "OK TLS");
    assert_eq!(d.at("AT+CONNECT"), "OK 1 CONNECTED");
    // A device with its birth certificate only, switched to TLCP by AT: the ECC suites, its lone
    // signing certificate admitted by staging.
    let single = p.sm2_devices()[1].clone();
    let mut d = AtDevice::start(&p, &single);
    assert_eq!(d.at("AT+CONF Transport=TLCP"), "OK");
    assert_eq!(d.at("AT+CONNECT"), "OK 1 CONNECTED");
}
