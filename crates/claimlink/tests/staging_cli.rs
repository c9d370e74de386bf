//! The module maker's staging, through the binary only: `claimlink server` with a `[staging]`
//! section naming the manufacturer CA, `claimlink staging create-admin-token` and
//! `import-manifest` (a malformed manifest changes nothing), an OEM registered over the staging
//! API, and a claim with the code printed on a label.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use claimlink_pki::KeyAlgorithm;
use claimlink_testkit::{Tls, https_json};
use claimlink_testpki::TestCa;
use serde_json::{Value, json};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_claimlink"))
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.env_remove("DATABASE_URL").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_module_maker_runs_staging_from_its_configuration_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("registry.db").display());
    module_maker(&dir, &db);
}

#[test]
fn a_module_maker_runs_staging_from_its_configuration_on_postgres() {
    let Some(pg) = claimlink_testkit::postgres("staging_cli_postgres") else { return };
    let dir = tempfile::tempdir().unwrap();
    module_maker(&dir, &pg.url);
}

fn module_maker(dir: &tempfile::TempDir, db: &str) {
    let p = |n: &str| dir.path().join(n).display().to_string();
    std::fs::write(p("pass"), "staging test passphrase\n").unwrap();
    ok(bin().args([
        "ca",
        "init",
        "--algorithm",
        "p256",
        "--subject",
        "CN=Maker,O=Maker",
        "--out",
        &p("maker"),
        "--passphrase-file",
        &p("pass"),
    ]));
    ok(bin().args([
        "ca",
        "issue-devices",
        "--ca",
        &p("maker"),
        "--passphrase-file",
        &p("pass"),
        "--count",
        "3",
        "--out",
        &p("batch"),
        "--staging-endpoint",
        "staging.test:8883",
    ]));
    let server_ca = TestCa::issuing(KeyAlgorithm::P256, "CN=Endpoint CA");
    let leaf = server_ca.server(&["staging.test", "oem.test"]);
    std::fs::write(
        p("server.pem"),
        format!("{}{}", leaf.certificate.to_pem(), server_ca.certificate.to_pem()),
    )
    .unwrap();
    std::fs::write(p("server.key"), leaf.key_pem()).unwrap();
    std::fs::write(
        p("server.toml"),
        format!(
            "database = \"{db}\"\nmqtt = \"127.0.0.1:0\"\napi = \"127.0.0.1:0\"\n[tls]\ncertificate = \"server.pem\"\n\
             private_key = \"server.key\"\n[staging]\nmqtt = \"127.0.0.1:0\"\napi = \"127.0.0.1:0\"\n\
             manufacturer_cas = [\"maker/chain.pem\"]\n"
        ),
    )
    .unwrap();

    // A malformed manifest is refused whole; the real one loads, and loading it again is harmless.
    let manifest = std::fs::read_to_string(p("batch/manifest.jsonl")).unwrap();
    std::fs::write(p("bad.jsonl"), format!("{manifest}{{\"thing_name\": \"x\"}}\n")).unwrap();
    let out = bin().args(["staging", "import-manifest", &p("bad.jsonl"), "--database", db]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bad.jsonl:4"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = ok(bin().args(["staging", "import-manifest", &p("batch/manifest.jsonl"), "--database", db]));
    assert!(first.contains("3 new devices, 0 updated"), "{first}");
    let again = ok(bin().args(["staging", "import-manifest", &p("batch/manifest.jsonl"), "--database", db]));
    assert!(again.contains("0 new devices, 3 updated"), "{again}");
    let token = ok(bin().args(["staging", "create-admin-token", "--name", "ops", "--database", db]))
        .trim()
        .to_owned();
    assert!(token.starts_with("stg_"));

    let mut child = bin()
        .args(["server", "--config", &p("server.toml")])
        .env_remove("DATABASE_URL")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines: Vec<String> =
        BufReader::new(child.stdout.take().unwrap()).lines().take(4).map(|l| l.unwrap()).collect();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Kill(child);
    let api: SocketAddr = lines[3].strip_prefix("staging API on https://").unwrap().parse().unwrap();
    let root = server_ca.root.as_ref().unwrap().to_pem();
    let admin = |method: &str, path: &str, body: Value| {
        let tls = Tls { server_name: "staging.test", root_pem: &root, client: None };
        let (s, t) = https_json(api, &tls, method, path, Some(&token), &body.to_string()).unwrap();
        (s, serde_json::from_str::<Value>(&t).unwrap_or(Value::Null))
    };
    let (status, _) = {
        let tls = Tls { server_name: "staging.test", root_pem: &root, client: None };
        https_json(api, &tls, "GET", "/staging/oems", Some("stg_not-a-token"), "").unwrap()
    };
    assert_eq!(status, 401);
    let (status, oem) =
        admin("POST", "/staging/oems", json!({"name": "Acme", "endpoints": ["oem.test:8884"]}));
    assert_eq!(status, 200, "{oem}");
    let oem_id = oem["oemId"].as_str().unwrap();
    assert_eq!(oem_id.len(), 36);
    let (status, body) = admin("POST", "/staging/oems", json!({"name": "Acme"}));
    assert_eq!(status, 409, "{body}");
    let ct = TestCa::issuing(KeyAlgorithm::P256, "CN=Acme CA").leaf_with(
        &claimlink_pki::Profile::ClaimThing,
        "CN=Acme claim-thing",
        std::time::SystemTime::now(),
        claimlink_pki::profile::YEAR,
    );
    let path = format!("/staging/oems/{oem_id}/claim-certificate");
    let (status, _) = admin("PUT", &path, json!({"certificatePem": ct.certificate.to_pem()}));
    assert_eq!(status, 200);

    // Claims with the code from the label.
    let thing = std::fs::read_dir(p("batch/devices"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name()
        .into_string()
        .unwrap();
    let svg = std::fs::read_to_string(p(&format!("batch/labels/{thing}.svg"))).unwrap();
    let after = svg.split_once(">Claim code</text>").unwrap().1;
    let code: String = after
        .split("font-weight=\"bold\">")
        .skip(1)
        .take(2)
        .map(|s| s.split_once("</text>").unwrap().0)
        .collect();
    let key = ct.key_pem();
    let cert = ct.certificate.to_pem();
    let claim = |body: Value| {
        let tls = Tls { server_name: "staging.test", root_pem: &root, client: Some((&cert, &key)) };
        let (s, t) = https_json(api, &tls, "POST", "/claims", None, &body.to_string()).unwrap();
        (s, serde_json::from_str::<Value>(&t).unwrap_or(Value::Null))
    };
    let (status, body) =
        claim(json!({"thingName": "00000000000000000000000000000000", "endpoint": "oem.test:8884"}));
    // An unknown device answers as a device with a claim code would: nothing to learn.
    assert_eq!((status, body["code"].as_str()), (400, Some("ClaimCodeRequired")), "{body}");
    let (status, body) = claim(json!({"thingName": thing, "endpoint": "oem.test:8884", "claimCode": code}));
    assert_eq!(status, 200, "{body}");
    let (status, body) = claim(json!({"endpoint": "oem.test:8884"}));
    assert_eq!(status, 400, "{body}");
    let (_, device) = admin("GET", &format!("/staging/devices/{thing}"), Value::Null);
    assert_eq!(device["owner"], oem_id);
    assert_eq!(device["hasClaimCode"], true);
    assert!(device.get("claimCodeVerifier").is_none(), "verifiers are not shown");
}
