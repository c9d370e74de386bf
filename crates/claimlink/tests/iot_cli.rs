//! A new OEM's first hour, through the binary only: `claimlink server`, `claimlink account
//! create`, then `claimlink iot` verbs with `file://` arguments exactly as one would type
//! `aws iot` ones, and a paho device provisioned on its first connection.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

use claimlink_pki::KeyAlgorithm;
use claimlink_testkit::Paho;
use claimlink_testpki::TestCa;
use serde_json::{Value, json};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_claimlink"))
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Where the admin API is and the CA its certificate chains to.
struct Api {
    url: String,
    ca_bundle: String,
}

fn iot(api: &Api, token: &str, args: &[&str]) -> Output {
    bin()
        .arg("iot")
        .args(args)
        .args(["--endpoint-url", &api.url, "--ca-bundle", &api.ca_bundle])
        .env("CLAIMLINK_TOKEN", token)
        .output()
        .unwrap()
}

fn iot_json(api: &Api, token: &str, args: &[&str]) -> Value {
    let out = iot(api, token, args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() }
}

#[test]
fn an_oem_sets_up_its_account_with_aws_style_commands() {
    let Some(mut paho) = Paho::start("iot_cli") else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = |name: &str| d.join(name).display().to_string();
    let server_ca = TestCa::issuing(KeyAlgorithm::P256, "CN=Endpoint CA");
    let leaf = server_ca.server(&["acme.iot.test", "localhost"]);
    std::fs::write(
        p("server.pem"),
        format!("{}{}", leaf.certificate.to_pem(), server_ca.certificate.to_pem()),
    )
    .unwrap();
    std::fs::write(p("server.key"), leaf.key_pem()).unwrap();
    std::fs::write(p("server-root.pem"), server_ca.root.as_ref().unwrap().to_pem()).unwrap();
    let db = format!("sqlite://{}", p("registry.db"));
    std::fs::write(
        p("server.toml"),
        format!("database = \"{db}\"\nmqtt = \"127.0.0.1:0\"\napi = \"127.0.0.1:0\"\n[tls]\ncertificate = \"server.pem\"\nprivate_key = \"server.key\"\n"),
    )
    .unwrap();

    // The operator opens the account.
    let out = bin()
        .args(["account", "create", "--database", &db, "--name", "acme", "--endpoint", "acme.iot.test"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let account: Value = serde_json::from_slice(&out.stdout).unwrap();
    let token = account["apiToken"].as_str().unwrap().to_owned();

    let mut child = bin()
        .args(["server", "--config", &p("server.toml")])
        .env_remove("DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mqtt_line = lines.next().unwrap().unwrap();
    let api_line = lines.next().unwrap().unwrap();
    let _server = Server(child);
    let mqtt_port: u16 = mqtt_line.rsplit(':').next().unwrap().parse().unwrap();
    // The admin API is HTTPS with the endpoint's certificate: reached by a name it carries.
    let api_port = api_line.rsplit(':').next().unwrap();
    assert!(api_line.starts_with("admin API on https://"), "{api_line}");
    let api = Api { url: format!("https://localhost:{api_port}"), ca_bundle: p("server-root.pem") };

    // The OEM, with files as it would keep them for `aws iot`.
    let maker = TestCa::issuing(KeyAlgorithm::P256, "CN=Module Maker CA,O=Maker");
    std::fs::write(p("maker-ca.pem"), maker.certificate.to_pem()).unwrap();
    std::fs::write(
        p("policy.json"),
        json!({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "iot:Connect", "Resource": "arn:aws-cn:iot:*:*:client/${iot:Connection.Thing.ThingName}"},
            {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"], "Resource": "arn:aws-cn:iot:*:*:topic/${iot:Connection.Thing.ThingName}/*"}
        ]})
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        p("template.json"),
        json!({
            "Parameters": {"AWS::IoT::Certificate::CommonName": {"Type": "String"}, "AWS::IoT::Certificate::Id": {"Type": "String"}},
            "Resources": {
                "thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "AWS::IoT::Certificate::CommonName"}, "ThingTypeName": "lamp"}},
                "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "ACTIVE"}},
                "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "LampPolicy"}}
            }
        })
        .to_string(),
    )
    .unwrap();
    let file = |n: &str| format!("file://{}", p(n));
    let endpoint = iot_json(&api, &token, &["describe-endpoint", "--endpoint-type", "iot:Data-ATS"]);
    assert_eq!(endpoint["endpointAddress"], "acme.iot.test");
    iot_json(&api, &token, &["create-thing-type", "--thing-type-name", "lamp"]);
    let policy = iot_json(
        &api,
        &token,
        &["create-policy", "--policy-name", "LampPolicy", "--policy-document", &file("policy.json")],
    );
    assert_eq!(policy["policyVersionId"], "1");
    let t = iot_json(
        &api,
        &token,
        &[
            "create-provisioning-template",
            "--template-name",
            "lamps",
            "--template-body",
            &file("template.json"),
            "--enabled",
            "--type",
            "JITP",
        ],
    );
    assert_eq!(t["templateName"], "lamps");
    let ca = iot_json(
        &api,
        &token,
        &[
            "register-ca-certificate",
            "--ca-certificate",
            &file("maker-ca.pem"),
            "--certificate-mode",
            "SNI_ONLY",
            "--set-as-active",
            "--allow-auto-registration",
            "--registration-config",
            "{\"templateName\": \"lamps\"}",
        ],
    );
    let ca_id = ca["certificateId"].as_str().unwrap().to_owned();
    assert_eq!(
        ca["certificateArn"].as_str().unwrap(),
        format!("arn:aws-cn:iot:cn-north-1:{}:cacert/{ca_id}", account["accountId"].as_str().unwrap())
    );
    let described = iot_json(&api, &token, &["describe-ca-certificate", "--certificate-id", &ca_id]);
    assert_eq!(described["certificateDescription"]["autoRegistrationStatus"], "ENABLE");
    assert_eq!(described["registrationConfig"]["templateName"], "lamps");

    // A refusal looks like the AWS CLI's and exits 254.
    let out = iot(&api, &token, &["describe-thing", "--thing-name", "nope"]);
    assert_eq!(out.status.code(), Some(254));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "An error occurred (ResourceNotFoundException) when calling the DescribeThing operation"
        ),
        "{err}"
    );
    let out = iot(&api, "clk_wrong", &["list-things"]);
    assert_eq!(out.status.code(), Some(254));

    // The device's first connection provisions it.
    let device = maker.device("CN=lamp-1");
    std::fs::write(p("lamp.pem"), device.certificate.to_pem()).unwrap();
    std::fs::write(p("lamp.key"), device.key_pem()).unwrap();
    let r = paho.run(
        &json!({"op": "connect", "name": "d", "cid": "lamp-1", "port": mqtt_port, "sni": "acme.iot.test",
        "ca": p("server-root.pem"), "cert": p("lamp.pem"), "key": p("lamp.key")})
        .to_string(),
    );
    assert_eq!(serde_json::from_str::<Value>(&r).unwrap(), json!({"rc": 0}));
    let thing = iot_json(&api, &token, &["describe-thing", "--thing-name", "lamp-1"]);
    assert_eq!(thing["thingTypeName"], "lamp");
    let certs = iot_json(&api, &token, &["list-certificates"]);
    let cert_id = certs["certificates"][0]["certificateId"].as_str().unwrap().to_owned();
    // Deactivating it through the CLI ends the session.
    iot_json(&api, &token, &["update-certificate", "--certificate-id", &cert_id, "--new-status", "INACTIVE"]);
    let gone: Value =
        serde_json::from_str(&paho.run(&json!({"op": "disconnected", "name": "d"}).to_string())).unwrap();
    assert_eq!(gone, json!({"rc": 0x87}));
}
