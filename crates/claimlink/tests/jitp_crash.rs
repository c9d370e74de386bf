//! The account endpoint killed (SIGKILL) while hundreds of devices are being provisioned just
//! in time: afterwards every certificate in the registry is ACTIVE, attached to its thing and
//! to its policy - nothing half-provisioned - and after a restart every device gets on.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use claimlink_mqtt::client::{ClientConnection, ClientEvent, ClientOptions};
use claimlink_pki::KeyAlgorithm;
use claimlink_provision::registration::{self, CaApplication};
use claimlink_registry::{CaMode, CertificateStatus, PolicyTarget, Store, TemplateKind, TemplateName};
use claimlink_testpki::TestCa;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TEMPLATE: &str = r#"{"Parameters":{"AWS::IoT::Certificate::CommonName":{"Type":"String"},"AWS::IoT::Certificate::Id":{"Type":"String"}},
 "Resources":{"thing":{"Type":"AWS::IoT::Thing","Properties":{"ThingName":{"Ref":"AWS::IoT::Certificate::CommonName"}}},
 "certificate":{"Type":"AWS::IoT::Certificate","Properties":{"CertificateId":{"Ref":"AWS::IoT::Certificate::Id"},"Status":"ACTIVE"}},
 "policy":{"Type":"AWS::IoT::Policy","Properties":{"PolicyName":"P"}}}}"#;

const POLICY: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Connect","Resource":"arn:aws-cn:iot:*:*:client/${iot:Connection.Thing.ThingName}"}]}"#;

struct Server(Child, u16);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(config: &str) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_claimlink"))
        .args(["server", "--config", config])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = BufReader::new(child.stdout.take().unwrap()).lines().next().unwrap().unwrap();
    let port = line.rsplit(':').next().unwrap().parse().unwrap();
    Server(child, port)
}

/// Connects one device; true if its CONNECT was accepted.
async fn connect(port: u16, name: String, config: Arc<rustls::ClientConfig>) -> bool {
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let server_name = rustls::pki_types::ServerName::try_from("crash.iot.test").ok()?;
        let mut tls = tokio_rustls::TlsConnector::from(config).connect(server_name, tcp).await.ok()?;
        let mut conn = ClientConnection::new(ClientOptions::new(name), Instant::now());
        let mut buf = [0u8; 4096];
        loop {
            let out = conn.take_output();
            tls.write_all(&out).await.ok()?;
            let n = tls.read(&mut buf).await.ok()?;
            if n == 0 {
                return Some(false);
            }
            conn.handle_input(Instant::now(), &buf[..n]);
            while let Some(e) = conn.poll_event() {
                match e {
                    ClientEvent::Connected { .. } => return Some(true),
                    ClientEvent::Refused(_) | ClientEvent::Disconnected(_) => return Some(false),
                    _ => {}
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), attempt).await.ok().flatten().unwrap_or(false)
}

async fn wave(port: u16, devices: &[(String, Arc<rustls::ClientConfig>)]) -> usize {
    let mut tasks = tokio::task::JoinSet::new();
    for (name, config) in devices {
        tasks.spawn(connect(port, name.clone(), config.clone()));
    }
    let mut ok = 0;
    while let Some(r) = tasks.join_next().await {
        ok += usize::from(r.unwrap_or(false));
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_jitp_leaves_no_half_provisioned_device() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).display().to_string();
    let db = format!("sqlite://{}", p("registry.db"));
    let server_ca = TestCa::issuing(KeyAlgorithm::P256, "CN=Endpoint CA");
    let leaf = server_ca.server(&["crash.iot.test"]);
    std::fs::write(
        p("server.pem"),
        format!("{}{}", leaf.certificate.to_pem(), server_ca.certificate.to_pem()),
    )
    .unwrap();
    std::fs::write(p("server.key"), leaf.key_pem()).unwrap();
    std::fs::write(
        p("server.toml"),
        format!("database = \"{db}\"\nmqtt = \"127.0.0.1:0\"\napi = \"127.0.0.1:0\"\n[tls]\ncertificate = \"server.pem\"\nprivate_key = \"server.key\"\n"),
    )
    .unwrap();
    let maker = TestCa::issuing(KeyAlgorithm::P256, "CN=Maker CA");
    let store = Store::open(&db).await.unwrap();
    let mut tx = store.begin().await.unwrap();
    let account = tx.create_account("crash", "crash.iot.test", "cn-north-1").await.unwrap();
    registration::create_policy(&mut tx, &account.id, &"P".parse().unwrap(), POLICY).await.unwrap();
    let template: TemplateName = "t".parse().unwrap();
    tx.create_template(&account.id, &template, TemplateKind::Jitp, TEMPLATE, true, None).await.unwrap();
    let pem = maker.certificate.to_pem();
    let mut ca = CaApplication::new(&pem, CaMode::SniOnly);
    ca.auto_registration = true;
    ca.template_name = Some(&template);
    registration::register_ca(&mut tx, &account, &ca).await.unwrap();
    tx.commit().await.unwrap();
    drop(store);

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(server_ca.root.as_ref().unwrap().der().to_vec()))
        .unwrap();
    let devices: Vec<(String, Arc<rustls::ClientConfig>)> = (0..600)
        .map(|i| {
            let name = format!("dev-{i:04}");
            let d = maker.device(&format!("CN={name}"));
            let key = rustls::pki_types::PrivatePkcs8KeyDer::from(d.key.to_pkcs8_der().unwrap().to_vec());
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(claimlink_tls::provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_client_auth_cert(vec![d.certificate.der().to_vec().into()], key.into())
                .unwrap();
            (name, Arc::new(config))
        })
        .collect();

    // The first wave, killed in the middle.
    let server = start(&p("server.toml"));
    let port = server.1;
    let first = tokio::spawn({
        let devices = devices.clone();
        async move { wave(port, &devices).await }
    });
    tokio::time::sleep(Duration::from_millis(250)).await;
    let mut server = server;
    server.0.kill().unwrap(); // SIGKILL: no shutdown path runs
    server.0.wait().unwrap();
    let connected_before = first.await.unwrap();

    // What the registry holds: whole devices only.
    let store = Store::open(&db).await.unwrap();
    let mut tx = store.read().await.unwrap();
    let certs = tx.list_certificates(&account.id).await.unwrap();
    let things = tx.list_things(&account.id).await.unwrap();
    eprintln!("{} of {} devices were provisioned when the endpoint was killed", certs.len(), devices.len());
    assert!(
        certs.len() < devices.len(),
        "the kill came too late to test anything ({} provisioned)",
        certs.len()
    );
    for c in &certs {
        assert_eq!(c.status, CertificateStatus::Active, "{c:?}");
        assert_eq!(tx.things_of_certificate(&account.id, &c.id).await.unwrap().len(), 1, "thing attached");
        let policies =
            tx.attached_policy_names(&account.id, &PolicyTarget::Certificate(c.id.clone())).await.unwrap();
        assert_eq!(policies, ["P"]);
    }
    assert_eq!(things.len(), certs.len(), "no thing without its certificate");
    assert!(connected_before <= certs.len(), "every accepted CONNECT was committed first");
    drop(tx);
    drop(store);

    // After a restart, every device gets on: the committed ones as known, the rest by JITP.
    let server = start(&p("server.toml"));
    let all = wave(server.1, &devices).await;
    assert_eq!(all, devices.len());
    let store = Store::open(&db).await.unwrap();
    assert_eq!(
        store.read().await.unwrap().list_certificates(&account.id).await.unwrap().len(),
        devices.len()
    );
}
