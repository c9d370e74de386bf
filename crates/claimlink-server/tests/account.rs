//! The account endpoint end to end, with paho-mqtt devices over mutual TLS (SNI per account)
//! and the admin API over HTTP: JITP inside the first CONNECT, policies on every packet,
//! revocation, DEFAULT vs SNI_ONLY, two accounts sharing a CA, a template that does not fit -
//! on SQLite and on PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use claimlink_broker::Limits;
use claimlink_pki::KeyAlgorithm;
use claimlink_registry::Store;
use claimlink_server::{AccountServer, ServerIdentity};
use claimlink_testkit::{Paho, http_json, postgres};
use claimlink_testpki::{TestCa, TestLeaf};
use serde_json::{Value, json};

/// The admin API, with JSON in and out.
fn http(
    api: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let body = body.map(Value::to_string).unwrap_or_default();
    let (status, json) = http_json(api, method, path, token, &body);
    (status, serde_json::from_str(&json).unwrap_or(Value::Null))
}

struct Env {
    api: SocketAddr,
    mqtt: u16,
    dir: PathBuf,
    server_root: PathBuf,
    _stop: tokio::sync::watch::Sender<bool>,
}

impl Env {
    fn write(&self, name: &str, text: &str) -> String {
        let p = self.dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }

    /// Writes a device's certificate and key; returns (cert path, key path).
    fn device_files(&self, name: &str, leaf: &TestLeaf) -> (String, String) {
        (
            self.write(&format!("{name}.pem"), &leaf.certificate.to_pem()),
            self.write(&format!("{name}.key"), &leaf.key_pem()),
        )
    }

    fn connect(
        &self,
        paho: &mut Paho,
        name: &str,
        cid: &str,
        files: &(String, String),
        sni: Option<&str>,
    ) -> Value {
        let cmd = json!({
            "op": "connect", "name": name, "cid": cid, "port": self.mqtt, "sni": sni,
            "ca": self.server_root.display().to_string(), "cert": files.0, "key": files.1,
        });
        serde_json::from_str(&paho.run(&cmd.to_string())).unwrap()
    }
}

fn run(paho: &mut Paho, cmd: Value) -> Value {
    serde_json::from_str(&paho.run(&cmd.to_string())).unwrap()
}

const NOT_AUTHORIZED: i64 = 0x87;

fn policy() -> String {
    let thing = "${iot:Connection.Thing.ThingName}";
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "iot:Connect", "Resource": format!("arn:aws-cn:iot:*:*:client/{thing}")},
            {"Effect": "Allow", "Action": "iot:Publish", "Resource": format!("arn:aws-cn:iot:*:*:topic/devices/{thing}/*")},
            {"Effect": "Allow", "Action": "iot:Subscribe", "Resource": ["arn:aws-cn:iot:*:*:topicfilter/devices/*", "arn:aws-cn:iot:*:*:topicfilter/$aws/events/presence/*"]},
            {"Effect": "Allow", "Action": "iot:Receive", "Resource": ["arn:aws-cn:iot:*:*:topic/devices/*", "arn:aws-cn:iot:*:*:topic/$aws/events/presence/*"]},
            {"Effect": "Deny", "Action": "iot:Publish", "Resource": format!("arn:aws-cn:iot:*:*:topic/devices/{thing}/admin")}
        ]
    })
    .to_string()
}

fn template(policy: &str) -> String {
    json!({
        "Parameters": {
            "AWS::IoT::Certificate::CommonName": {"Type": "String"},
            "AWS::IoT::Certificate::SerialNumber": {"Type": "String"},
            "AWS::IoT::Certificate::Id": {"Type": "String"}
        },
        "Resources": {
            "thing": {"Type": "AWS::IoT::Thing", "Properties": {
                "ThingName": {"Ref": "AWS::IoT::Certificate::CommonName"},
                "AttributePayload": {"serialNumber": {"Ref": "AWS::IoT::Certificate::SerialNumber"}}}},
            "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {
                "CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "ACTIVE"}},
            "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": policy}}
        }
    })
    .to_string()
}

/// Sets up an account through the API: policy, JITP template, and the maker CA.
fn onboard_account(env: &Env, token: &str, maker: &TestCa, mode: &str, verification: Option<&str>) -> String {
    let (s, v) = http(
        env.api,
        "POST",
        "/policies/DevicePolicy",
        Some(token),
        Some(&json!({"policyDocument": policy()})),
    );
    assert_eq!(s, 200, "{v}");
    let body = json!({"templateName": "jitp", "templateBody": template("DevicePolicy"), "enabled": true, "type": "JITP"});
    let (s, v) = http(env.api, "POST", "/provisioning-templates", Some(token), Some(&body));
    assert_eq!(s, 200, "{v}");
    let mut body = json!({
        "caCertificate": maker.certificate.to_pem(), "certificateMode": mode, "setAsActive": true,
        "allowAutoRegistration": true, "registrationConfig": {"templateName": "jitp"}
    });
    if let Some(v) = verification {
        body["verificationCertificate"] = json!(v);
    }
    let (s, v) = http(env.api, "POST", "/cacertificate", Some(token), Some(&body));
    assert_eq!(s, 200, "{v}");
    v["certificateId"].as_str().unwrap().to_owned()
}

async fn start(store: Store, dir: &Path) -> (Env, Vec<(String, String, String)>) {
    let server_ca = TestCa::issuing(KeyAlgorithm::P256, "CN=Endpoint CA,O=claimlink");
    let leaf = server_ca.server(&["acme.iot.test", "globex.iot.test"]);
    let identity = ServerIdentity::new(
        format!("{}{}", leaf.certificate.to_pem(), server_ca.certificate.to_pem()),
        leaf.key_pem().into(),
    );
    let server_root = dir.join("server-root.pem");
    std::fs::write(&server_root, server_ca.root.as_ref().unwrap().to_pem()).unwrap();
    // Accounts are made by the operator (claimlink up, or the registry directly).
    let mut accounts = Vec::new();
    let mut tx = store.begin().await.unwrap();
    for name in ["acme", "globex"] {
        let a = tx.create_account(name, &format!("{name}.iot.test"), "cn-north-1").await.unwrap();
        let token = tx.create_api_token(&a.id, "test").await.unwrap();
        accounts.push((a.id.to_string(), token, a.registration_code));
    }
    tx.commit().await.unwrap();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let server = AccountServer::new(store, &identity, Limits::default(), shutdown).await.unwrap();
    let (mqtt, api) =
        server.start("127.0.0.1:0".parse().unwrap(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let env = Env { api, mqtt: mqtt.port(), dir: dir.to_owned(), server_root, _stop: stop };
    (env, accounts)
}

async fn scenario(store: Store, dir: &Path, paho: &mut Paho) {
    let (env, accounts) = start(store, dir).await;
    let (acme, globex) = (&accounts[0], &accounts[1]);
    let maker = TestCa::issuing(KeyAlgorithm::P256, "CN=Module Maker CA,O=Maker");
    onboard_account(&env, &acme.1, &maker, "SNI_ONLY", None);

    // A never-seen device connects: JITP inside the CONNECT, which succeeds.
    let lamp1 = env.device_files("lamp-1", &maker.device("CN=lamp-1,serialNumber=SN0001"));
    assert_eq!(env.connect(paho, "d1", "lamp-1", &lamp1, Some("acme.iot.test")), json!({"rc": 0}));
    let (s, thing) = http(env.api, "GET", "/things/lamp-1", Some(&acme.1), None);
    assert_eq!((s, thing["attributes"]["serialNumber"].as_str()), (200, Some("SN0001")), "{thing}");
    let (_, certs) = http(env.api, "GET", "/certificates", Some(&acme.1), None);
    assert_eq!(certs["certificates"][0]["status"], "ACTIVE", "{certs}");
    let cert_id = certs["certificates"][0]["certificateId"].as_str().unwrap().to_owned();

    // A CA certificate under the registered CA is not a device: refused at the handshake.
    let ca_leaf = maker.leaf_with(
        &claimlink_pki::Profile::IssuingCa { path_len: Some(0) },
        "CN=lamp-ca,serialNumber=SN00CA",
        std::time::SystemTime::now(),
        claimlink_pki::profile::YEAR,
    );
    let files = env.device_files("lamp-ca", &ca_leaf);
    let refused = env.connect(paho, "dca", "lamp-ca", &files, Some("acme.iot.test"));
    assert!(refused.get("error").is_some(), "a CA:TRUE certificate was admitted: {refused}");
    let (_, things) = http(env.api, "GET", "/things/lamp-ca", Some(&acme.1), None);
    assert_eq!(things["code"], "ResourceNotFoundException", "not provisioned: {things}");

    // A second device watches; the policy decides what goes through.
    let lamp2 = env.device_files("lamp-2", &maker.device("CN=lamp-2,serialNumber=SN0002"));
    assert_eq!(env.connect(paho, "d2", "lamp-2", &lamp2, Some("acme.iot.test")), json!({"rc": 0}));
    assert_eq!(
        run(paho, json!({"op": "subscribe", "name": "d2", "topic": "devices/lamp-1/#"})),
        json!({"codes": [1]})
    );
    assert_eq!(
        run(paho, json!({"op": "subscribe", "name": "d2", "topic": "$aws/events/presence/connected/+"})),
        json!({"codes": [1]})
    );
    let ok = run(
        paho,
        json!({"op": "publish", "name": "d1", "topic": "devices/lamp-1/telemetry", "payload": "21.5"}),
    );
    assert_eq!(ok, json!({"rc": 0}));
    let got = run(paho, json!({"op": "expect", "name": "d2", "count": 1}));
    assert_eq!(got, json!({"messages": [["devices/lamp-1/telemetry", "21.5"]]}));
    for topic in ["devices/lamp-2/x", "devices/lamp-1/admin", "elsewhere"] {
        let refused = run(paho, json!({"op": "publish", "name": "d1", "topic": topic, "payload": "x"}));
        assert_eq!(refused, json!({"rc": NOT_AUTHORIZED}), "publish to {topic}");
    }
    assert_eq!(
        run(paho, json!({"op": "subscribe", "name": "d1", "topic": "other/#"})),
        json!({"codes": [NOT_AUTHORIZED]})
    );
    // The watcher saw no refused message, and gets presence events.
    let lamp3 = env.device_files("lamp-3", &maker.device("CN=lamp-3,serialNumber=SN0003"));
    assert_eq!(env.connect(paho, "d3", "lamp-3", &lamp3, Some("acme.iot.test")), json!({"rc": 0}));
    let events = run(paho, json!({"op": "expect", "name": "d2", "count": 1}));
    assert_eq!(events["messages"].as_array().unwrap().len(), 1, "{events}");
    assert_eq!(events["messages"][0][0], "$aws/events/presence/connected/lamp-3");
    let presence: Value = serde_json::from_str(events["messages"][0][1].as_str().unwrap()).unwrap();
    assert_eq!(presence["clientId"], "lamp-3");

    // iot:Connect: lamp-1's certificate cannot connect as someone else.
    assert_eq!(
        env.connect(paho, "imp", "lamp-2", &lamp1, Some("acme.iot.test")),
        json!({"rc": NOT_AUTHORIZED})
    );

    // Revocation drops the live session and refuses the next connection.
    let (s, v) =
        http(env.api, "PUT", &format!("/certificates/{cert_id}?newStatus=REVOKED"), Some(&acme.1), None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(run(paho, json!({"op": "disconnected", "name": "d1"})), json!({"rc": NOT_AUTHORIZED}));
    assert_eq!(
        env.connect(paho, "d1b", "lamp-1", &lamp1, Some("acme.iot.test")),
        json!({"rc": NOT_AUTHORIZED})
    );
    let (s, v) =
        http(env.api, "PUT", &format!("/certificates/{cert_id}?newStatus=ACTIVE"), Some(&acme.1), None);
    assert_eq!((s, v["code"].as_str()), (409, Some("CertificateStateException")), "REVOKED is final");

    // A device whose certificate lacks what the template needs: refused, and the owner can see why.
    let bare = maker.device("CN=lamp-4");
    let bare_id = bare.certificate.id().to_string();
    let lamp4 = env.device_files("lamp-4", &bare);
    assert_eq!(
        env.connect(paho, "d4", "lamp-4", &lamp4, Some("acme.iot.test")),
        json!({"rc": NOT_AUTHORIZED})
    );
    let (_, failures) =
        http(env.api, "GET", &format!("/provisioning-failures?certificateId={bare_id}"), Some(&acme.1), None);
    let reason = failures["failures"][0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("AWS::IoT::Certificate::SerialNumber"), "{failures}");
    let (s, _) = http(env.api, "GET", &format!("/certificates/{bare_id}"), Some(&acme.1), None);
    assert_eq!(s, 404, "no certificate left pending");

    // Another account registers the same CA (SNI_ONLY is not exclusive) and provisions its own.
    onboard_account(&env, &globex.1, &maker, "SNI_ONLY", None);
    let lamp9 = env.device_files("lamp-9", &maker.device("CN=lamp-9,serialNumber=SN0009"));
    assert_eq!(env.connect(paho, "d9", "lamp-9", &lamp9, Some("globex.iot.test")), json!({"rc": 0}));
    assert_eq!(http(env.api, "GET", "/things/lamp-9", Some(&globex.1), None).0, 200);
    assert_eq!(http(env.api, "GET", "/things/lamp-9", Some(&acme.1), None).0, 404, "accounts do not mix");
    // Topics do not mix either: lamp-2 (acme) does not see globex's lamp-9.
    run(paho, json!({"op": "subscribe", "name": "d2", "topic": "devices/lamp-9/#"}));
    run(paho, json!({"op": "publish", "name": "d9", "topic": "devices/lamp-9/t", "payload": "globex"}));
    assert_eq!(
        run(paho, json!({"op": "expect", "name": "d2", "count": 1, "timeout": 1})),
        json!({"messages": []})
    );

    // DEFAULT mode: a CA acme proves it holds; its devices need no SNI.
    let maker2 = TestCa::issuing(KeyAlgorithm::P256, "CN=Second Maker CA,O=Maker2");
    let proof = maker2.device(&format!("CN={}", acme.2));
    let (s, v) = http(
        env.api,
        "POST",
        "/cacertificate",
        Some(&acme.1),
        Some(&json!({
            "caCertificate": maker2.certificate.to_pem(), "certificateMode": "DEFAULT", "setAsActive": true,
            "allowAutoRegistration": true, "registrationConfig": {"templateName": "jitp"},
            "verificationCertificate": proof.certificate.to_pem()
        })),
    );
    assert_eq!(s, 200, "{v}");
    // globex cannot register it in DEFAULT mode too.
    let proof_g = maker2.device(&format!("CN={}", globex.2));
    let (s, v) = http(
        env.api,
        "POST",
        "/cacertificate",
        Some(&globex.1),
        Some(&json!({
            "caCertificate": maker2.certificate.to_pem(), "certificateMode": "DEFAULT", "setAsActive": true,
            "verificationCertificate": proof_g.certificate.to_pem()
        })),
    );
    assert_eq!((s, v["code"].as_str()), (409, Some("CertificateStateException")), "{v}");
    let lamp5 = env.device_files("lamp-5", &maker2.device("CN=lamp-5,serialNumber=SN0005"));
    assert_eq!(
        env.connect(paho, "d5", "lamp-5", &lamp5, None),
        json!({"rc": 0}),
        "DEFAULT mode works without SNI"
    );
    assert_eq!(http(env.api, "GET", "/things/lamp-5", Some(&acme.1), None).0, 200);
    // A device of the SNI_ONLY CA without SNI: refused at the handshake.
    let lamp6 = env.device_files("lamp-6", &maker.device("CN=lamp-6,serialNumber=SN0006"));
    let r = env.connect(paho, "d6", "lamp-6", &lamp6, None);
    assert!(r.get("error").is_some(), "{r}");
    // A certificate from a CA nobody registered: refused at the handshake.
    let stranger = TestCa::issuing(KeyAlgorithm::P256, "CN=Stranger");
    let st = env.device_files("stranger", &stranger.device("CN=lamp-7,serialNumber=SN7"));
    let r = env.connect(paho, "d7", "lamp-7", &st, Some("acme.iot.test"));
    assert!(r.get("error").is_some(), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_account_endpoint_on_sqlite() {
    let Some(mut paho) = Paho::start("account_endpoint_sqlite") else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}", dir.path().join("r.db").display())).await.unwrap();
    scenario(store, dir.path(), &mut paho).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_account_endpoint_on_postgres() {
    let Some(db) = postgres("account_endpoint_pg") else { return };
    let Some(mut paho) = Paho::start("account_endpoint_pg") else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&db.url).await.unwrap();
    scenario(store, dir.path(), &mut paho).await;
}

/// A stored policy that no longer parses (an upgrade that tightened validation, a restored
/// backup, a hand edit) refuses the connection: leaving it out could drop a Deny.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_policy_that_does_not_parse_refuses_the_connection() {
    let Some(mut paho) = Paho::start("unparsable_policy") else { return };
    let Some(python) = claimlink_testkit::tool("unparsable_policy", "python3", "--version", "python3") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let store = Store::open(&format!("sqlite://{}", db.display())).await.unwrap();
    let (env, accounts) = start(store, dir.path()).await;
    let acme = &accounts[0];
    let maker = TestCa::issuing(KeyAlgorithm::P256, "CN=Module Maker CA,O=Maker");
    onboard_account(&env, &acme.1, &maker, "SNI_ONLY", None);
    let lamp = env.device_files("lamp-1", &maker.device("CN=lamp-1,serialNumber=SN0001"));
    assert_eq!(env.connect(&mut paho, "d1", "lamp-1", &lamp, Some("acme.iot.test")), json!({"rc": 0}));
    run(&mut paho, json!({"op": "disconnect", "name": "d1"}));
    // A second policy with a Deny, attached to the certificate, then damaged in the database.
    let guard = json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Deny", "Action": "iot:Publish", "Resource": "arn:aws-cn:iot:*:*:topic/devices/*/telemetry"}]});
    let (s, v) = http(
        env.api,
        "POST",
        "/policies/Guard",
        Some(&acme.1),
        Some(&json!({"policyDocument": guard.to_string()})),
    );
    assert_eq!(s, 200, "{v}");
    let (_, certs) = http(env.api, "GET", "/certificates", Some(&acme.1), None);
    let cert_id = certs["certificates"][0]["certificateId"].as_str().unwrap().to_owned();
    let (s, v) =
        http(env.api, "PUT", "/target-policies/Guard", Some(&acme.1), Some(&json!({"target": cert_id})));
    assert_eq!(s, 200, "{v}");
    let damage = format!(
        "import sqlite3; c = sqlite3.connect({:?}); c.execute(\"UPDATE policy_versions SET document = '{{\\\"Version\\\": 7}}' WHERE policy_name = 'Guard'\"); c.commit()",
        db.display().to_string()
    );
    let out = std::process::Command::new(&python).args(["-c", &damage]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r = env.connect(&mut paho, "d2", "lamp-1", &lamp, Some("acme.iot.test"));
    assert_eq!(r, json!({"rc": NOT_AUTHORIZED}), "connected without its Deny policy");
}

/// Every change of rights reaches the live sessions it affects (they are ended and bound
/// again when they reconnect); sessions it does not affect stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_sessions_follow_changes_of_their_rights() {
    let Some(mut paho) = Paho::start("live_rights") else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}", dir.path().join("r.db").display())).await.unwrap();
    let (env, accounts) = start(store, dir.path()).await;
    let token = &accounts[0].1;
    let maker = TestCa::issuing(KeyAlgorithm::P256, "CN=Module Maker CA,O=Maker");
    let ca_id = onboard_account(&env, token, &maker, "SNI_ONLY", None);
    let lamp_leaf = maker.device("CN=lamp-1,serialNumber=SN0001");
    let lamp = env.device_files("lamp-1", &lamp_leaf);
    let other = env.device_files("lamp-2", &maker.device("CN=lamp-2,serialNumber=SN0002"));
    let sni = Some("acme.iot.test");
    assert_eq!(env.connect(&mut paho, "a", "lamp-1", &lamp, sni), json!({"rc": 0}));
    assert_eq!(env.connect(&mut paho, "bystander", "lamp-2", &other, sni), json!({"rc": 0}));
    let cert = lamp_leaf.certificate.id().to_string();
    let gone = |paho: &mut Paho, name: &str, timeout: f64| {
        run(paho, json!({"op": "disconnected", "name": name, "timeout": timeout}))["rc"].clone()
    };
    // Detaching its policy ends the session; without a policy it cannot come back.
    let (s, v) =
        http(env.api, "POST", "/target-policies/DevicePolicy", Some(token), Some(&json!({"target": cert})));
    assert_eq!(s, 200, "{v}");
    assert_eq!(gone(&mut paho, "a", 5.0), json!(NOT_AUTHORIZED), "the session outlived its policy");
    assert_eq!(env.connect(&mut paho, "a2", "lamp-1", &lamp, sni), json!({"rc": NOT_AUTHORIZED}));
    run(&mut paho, json!({"op": "disconnect", "name": "a2"})); // no retries by paho
    let (s, v) =
        http(env.api, "PUT", "/target-policies/DevicePolicy", Some(token), Some(&json!({"target": cert})));
    assert_eq!(s, 200, "{v}");
    assert_eq!(env.connect(&mut paho, "a3", "lamp-1", &lamp, sni), json!({"rc": 0}));
    // A Deny on a group the thing is not in changes nothing for it; adding it to the group does.
    let guard = json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Deny", "Action": "iot:Publish", "Resource": "arn:aws-cn:iot:*:*:topic/devices/*/telemetry"}]});
    let (s, v) = http(
        env.api,
        "POST",
        "/policies/Guard",
        Some(token),
        Some(&json!({"policyDocument": guard.to_string()})),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(http(env.api, "POST", "/thing-groups/quiet", Some(token), Some(&json!({}))).0, 200);
    let group_arn = format!("arn:aws-cn:iot:cn-north-1:{}:thinggroup/quiet", accounts[0].0);
    let (s, v) =
        http(env.api, "PUT", "/target-policies/Guard", Some(token), Some(&json!({"target": group_arn})));
    assert_eq!(s, 200, "{v}");
    assert_eq!(gone(&mut paho, "a3", 1.0), json!(null), "a session the change does not affect stays");
    let (s, v) = http(
        env.api,
        "PUT",
        "/thing-groups/addThingToThingGroup",
        Some(token),
        Some(&json!({"thingGroupName": "quiet", "thingName": "lamp-1"})),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(gone(&mut paho, "a3", 5.0), json!(NOT_AUTHORIZED), "the session kept rights its group denies");
    assert_eq!(env.connect(&mut paho, "a4", "lamp-1", &lamp, sni), json!({"rc": 0}));
    let r = run(
        &mut paho,
        json!({"op": "publish", "name": "a4", "topic": "devices/lamp-1/telemetry", "payload": "x"}),
    );
    assert_eq!(r, json!({"rc": NOT_AUTHORIZED}), "bound again: the group's Deny applies");
    // Deactivating the CA ends the sessions of every device it admitted.
    let (s, v) =
        http(env.api, "PUT", &format!("/cacertificate/{ca_id}?newStatus=INACTIVE"), Some(token), None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(gone(&mut paho, "a4", 5.0), json!(NOT_AUTHORIZED));
    assert_ne!(gone(&mut paho, "bystander", 5.0), json!(null), "every device of the CA is ended");
}
