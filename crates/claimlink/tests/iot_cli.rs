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

/// `claimlink server` in `d` with one account ("acme", endpoint acme.iot.test), the endpoint's
/// certificate from a test CA, `extra` appended to its configuration file: the server, the MQTT
/// port, the admin API and the account (with its `apiToken`).
fn start_server(d: &std::path::Path, extra: &str) -> (Server, u16, Api, Value) {
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
        format!("database = \"{db}\"\nmqtt = \"127.0.0.1:0\"\napi = \"127.0.0.1:0\"\n[tls]\ncertificate = \"server.pem\"\nprivate_key = \"server.key\"\n{extra}"),
    )
    .unwrap();

    // The operator opens the account.
    let out = bin()
        .args(["account", "create", "--database", &db, "--name", "acme", "--endpoint", "acme.iot.test"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let account: Value = serde_json::from_slice(&out.stdout).unwrap();

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
    let server = Server(child);
    let mqtt_port: u16 = mqtt_line.rsplit(':').next().unwrap().parse().unwrap();
    // The admin API is HTTPS with the endpoint's certificate: reached by a name it carries.
    let api_port = api_line.rsplit(':').next().unwrap();
    assert!(api_line.starts_with("admin API on https://"), "{api_line}");
    let api = Api { url: format!("https://localhost:{api_port}"), ca_bundle: p("server-root.pem") };
    (server, mqtt_port, api, account)
}

#[test]
fn an_oem_sets_up_its_account_with_aws_style_commands() {
    let Some(mut paho) = Paho::start("iot_cli") else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = |name: &str| d.join(name).display().to_string();
    let (_server, mqtt_port, api, account) = start_server(d, "");
    let token = account["apiToken"].as_str().unwrap().to_owned();

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

/// An OEM's own CA, registered in its account, publishes its CRL with `claimlink ca serve` at
/// the distribution point its certificates name. The account endpoint learns the URL from the
/// device it admits, fetches the CRL, and when the CA revokes the device the session ends and
/// the device is refused, without anyone uploading anything.
#[test]
fn a_registered_ca_s_crl_is_fetched_from_where_its_certificates_say() {
    let Some(mut paho) = Paho::start("iot_cli") else { return };
    if claimlink_testkit::openssl("iot_cli").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = |name: &str| d.join(name).display().to_string();
    let (_server, mqtt_port, api, account) = start_server(d, "[revocation]\ncrl_fetch_interval_secs = 1\n");
    let token = account["apiToken"].as_str().unwrap().to_owned();

    // The OEM's CA, published by its CA service.
    std::fs::write(p("pass"), "correct horse battery staple").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let ok = |args: &[&str]| {
        let o = bin().current_dir(d).env_remove("CLAIMLINK_CA_PASSPHRASE").args(args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    ok(&[
        "ca",
        "init",
        "--algorithm",
        "p256",
        "--subject",
        "CN=Acme Lamps,O=Acme",
        "--out",
        "acme-ca",
        "--passphrase-file",
        "pass",
        "--public-url",
        &format!("http://127.0.0.1:{port}"),
    ]);
    let mut ca = bin()
        .current_dir(d)
        .env_remove("CLAIMLINK_CA_PASSPHRASE")
        .args([
            "ca",
            "serve",
            "--ca",
            "acme-ca",
            "--passphrase-file",
            "pass",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(ca.stdout.take().unwrap()).lines();
    while !out.next().unwrap().unwrap().contains(" on http://") {}
    let _ca = Server(ca);

    let file = |n: &str| format!("file://{}", p(n));
    std::fs::write(
        p("policy.json"),
        json!({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"}]})
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        p("template.json"),
        json!({
            "Parameters": {"AWS::IoT::Certificate::CommonName": {"Type": "String"}, "AWS::IoT::Certificate::Id": {"Type": "String"}},
            "Resources": {
                "thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "AWS::IoT::Certificate::CommonName"}}},
                "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "ACTIVE"}},
                "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "Lamps"}}
            }
        })
        .to_string(),
    )
    .unwrap();
    iot_json(
        &api,
        &token,
        &["create-policy", "--policy-name", "Lamps", "--policy-document", &file("policy.json")],
    );
    iot_json(
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
    iot_json(
        &api,
        &token,
        &[
            "register-ca-certificate",
            "--ca-certificate",
            &file("acme-ca/issuing-ca.pem"),
            "--certificate-mode",
            "SNI_ONLY",
            "--set-as-active",
            "--allow-auto-registration",
            "--registration-config",
            "{\"templateName\": \"lamps\"}",
        ],
    );

    // A lamp's certificate from the OEM's CA: it names the CRL's URL.
    let run = |args: &[&str]| claimlink_testkit::run_ok(Command::new("openssl").current_dir(d).args(args));
    run(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "lamp.key"]);
    run(&["req", "-new", "-subj", "/CN=lamp-9", "-key", "lamp.key", "-out", "lamp.csr"]);
    ok(&[
        "ca",
        "sign-csr",
        "--ca",
        "acme-ca",
        "--passphrase-file",
        "pass",
        "--csr",
        "lamp.csr",
        "--profile",
        "claim-thing",
        "--out",
        "lamp.pem",
    ]);
    let connect = |paho: &mut Paho, name: &str| -> Value {
        serde_json::from_str(&paho.run(
            &json!({"op": "connect", "name": name, "cid": "lamp-9", "port": mqtt_port, "sni": "acme.iot.test",
            "ca": p("server-root.pem"), "cert": p("lamp.pem"), "key": p("lamp.key")})
            .to_string(),
        ))
        .unwrap()
    };
    assert_eq!(connect(&mut paho, "a"), json!({"rc": 0}));
    // The account fetches the (empty) CRL as soon as it learns the URL; give it a moment.
    std::thread::sleep(std::time::Duration::from_secs(2));

    // The OEM revokes the lamp on its own CA; the service re-signs its CRL within a second,
    // the account fetches it within another, and the lamp's session ends.
    ok(&["ca", "revoke", "--ca", "acme-ca", "--cert", "lamp.pem", "--reason", "keyCompromise"]);
    let revoked = std::time::Instant::now();
    let gone: Value = serde_json::from_str(
        &paho.run(&json!({"op": "disconnected", "name": "a", "timeout": 15}).to_string()),
    )
    .unwrap();
    assert_eq!(gone, json!({"rc": 0x87}), "the session ends when the fetched CRL revokes it");
    let took = revoked.elapsed();
    eprintln!("session ended {took:?} after the revocation at the CA");
    assert!(took < std::time::Duration::from_secs(8), "{took:?}");
    let again = connect(&mut paho, "b");
    assert_ne!(again, json!({"rc": 0}), "refused after: {again}");
}

#[test]
fn claimlink_server_serves_tlcp_beside_tls_from_its_configuration() {
    use std::io::{Read, Write};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = |name: &str| d.join(name).display().to_string();
    // A dual pair from an SM2 CA: signing certificate (TLS server profile) and encryption one.
    let ca = TestCa::issuing(KeyAlgorithm::Sm2, "CN=Endpoint SM2 CA,O=claimlink");
    let sign = ca.server(&["acme.iot.test", "localhost"]);
    let enc = ca.encryption(&["acme.iot.test", "localhost"], "CN=acme.iot.test");
    std::fs::write(p("tlcp-sign.pem"), format!("{}{}", sign.certificate.to_pem(), ca.certificate.to_pem()))
        .unwrap();
    std::fs::write(p("tlcp-sign.key"), sign.key_pem()).unwrap();
    std::fs::write(p("tlcp-enc.pem"), enc.certificate.to_pem()).unwrap();
    std::fs::write(p("tlcp-enc.key"), enc.key_pem()).unwrap();

    // Three of the four: refused at start, by name.
    std::fs::write(
        p("half.toml"),
        "database = \"sqlite://x.db\"\nmqtt = \"127.0.0.1:0\"\napi = \"127.0.0.1:0\"\n[tls]\ncertificate = \"tlcp-sign.pem\"\nprivate_key = \"tlcp-sign.key\"\ntlcp_sign_certificate = \"tlcp-sign.pem\"\ntlcp_sign_key = \"tlcp-sign.key\"\ntlcp_enc_certificate = \"tlcp-enc.pem\"\n",
    )
    .unwrap();
    let out = bin().args(["server", "--config", &p("half.toml")]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("go together"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let extra = "tlcp_sign_certificate = \"tlcp-sign.pem\"\ntlcp_sign_key = \"tlcp-sign.key\"\ntlcp_enc_certificate = \"tlcp-enc.pem\"\ntlcp_enc_key = \"tlcp-enc.key\"\n";
    let (_server, _mqtt, api, _account) = start_server(d, extra);
    let port: u16 = api.url.rsplit(':').next().unwrap().parse().unwrap();
    // Our TLCP client on the admin API's port (the same port as its HTTPS): the ECC suite (no
    // client certificate asked there), an HTTP request without a token gets its 401.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(ca.root.as_ref().unwrap().der().to_vec())).unwrap();
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(claimlink_tls::provider()),
    )
    .build()
    .unwrap();
    let config = Arc::new(claimlink_tls::tlcp::ClientConfig::new(verifier, None));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = claimlink_tls::tlcp::Connection::client(config, &name).unwrap();
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    let mut buf = vec![0u8; 32 * 1024];
    let mut sent = false;
    let mut answer = Vec::new();
    loop {
        let out = conn.take_tls();
        if !out.is_empty() {
            tcp.write_all(&out).unwrap();
        }
        assert!(conn.error().is_none(), "{:?}", conn.error());
        if !conn.is_handshaking() && !sent {
            conn.write_plaintext(b"GET /things HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .unwrap();
            sent = true;
            continue;
        }
        let n = tcp.read(&mut buf).unwrap_or(0);
        if n == 0 || conn.peer_has_closed() {
            break;
        }
        conn.read_tls(&buf[..n]).unwrap();
        let m = conn.read_plaintext(&mut buf);
        answer.extend_from_slice(&buf[..m]);
    }
    assert_eq!(conn.cipher_suite(), Some(claimlink_tls::tlcp::CipherSuite::EccSm4GcmSm3));
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
}
