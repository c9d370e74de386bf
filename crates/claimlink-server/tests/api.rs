//! The admin API refuses bad input with a 4xx and a stable code, and changes nothing; tokens
//! are required and scoped to their account; every documented route is served.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::net::SocketAddr;

use claimlink_broker::Limits;
use claimlink_pki::KeyAlgorithm;
use claimlink_registry::Store;
use claimlink_server::{AccountServer, ServerIdentity, api};
use claimlink_testkit::http_json;
use claimlink_testpki::TestCa;
use serde_json::{Value, json};

fn raw(api: SocketAddr, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    let (status, json) = http_json(api, method, path, token, body);
    (status, serde_json::from_str(&json).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_a_code_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}", dir.path().join("r.db").display())).await.unwrap();
    let server_ca = TestCa::issuing(KeyAlgorithm::P256, "CN=Endpoint CA");
    let leaf = server_ca.server(&["acme.iot.test"]);
    let identity = ServerIdentity::new(leaf.certificate.to_pem(), leaf.key_pem().into());
    let mut tx = store.begin().await.unwrap();
    let acme = tx.create_account("acme", "acme.iot.test", "cn-north-1").await.unwrap();
    let token = tx.create_api_token(&acme.id, "admin").await.unwrap();
    let globex = tx.create_account("globex", "globex.iot.test", "cn-north-1").await.unwrap();
    let other_token = tx.create_api_token(&globex.id, "admin").await.unwrap();
    tx.commit().await.unwrap();
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let server = AccountServer::new(store.clone(), &identity, Limits::default(), shutdown).await.unwrap();
    let (_, api_addr) =
        server.start("127.0.0.1:0".parse().unwrap(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let t = Some(token.as_str());

    // Without a token, or with a wrong one: 401, and the secret is not echoed.
    let (s, v) = raw(api_addr, "GET", "/things", None, "");
    assert_eq!((s, v["code"].as_str()), (401, Some("UnauthorizedException")));
    let (s, v) = raw(api_addr, "GET", "/things", Some("clk_0000"), "");
    assert_eq!(s, 401);
    assert!(!v.to_string().contains("clk_0000"));

    let maker = TestCa::issuing(KeyAlgorithm::P256, "CN=Maker");
    let device = maker.device("CN=x");
    let key_pem = device.key_pem();
    let cases: Vec<(&str, String, String, u16, &str)> = vec![
        ("POST", "/things/ok".into(), "{not json".into(), 400, "InvalidRequestException"),
        ("POST", "/things/ok".into(), "[1,2]".into(), 400, "InvalidRequestException"),
        ("POST", "/things/bad%20name".into(), "{}".into(), 400, "InvalidRequestException"),
        ("POST", "/things/ok".into(), r#"{"attributePayload": {"attributes": {"k": 1}}}"#.into(), 400, "InvalidRequestException"),
        ("POST", "/things/ok".into(), r#"{"thingTypeName": "nope"}"#.into(), 404, "ResourceNotFoundException"),
        // A misspelt field is refused, not ignored (typed bodies deny unknown fields).
        ("POST", "/things/ok".into(), r#"{"thingTypeNmae": "t"}"#.into(), 400, "InvalidRequestException"),
        // serde would read a struct from an array, field by position: refused, nested too.
        ("POST", "/things/ok".into(), "[null, null]".into(), 400, "InvalidRequestException"),
        ("POST", "/thing-types/tt".into(), r#"{"thingTypeProperties": [null, null]}"#.into(), 400, "InvalidRequestException"),
        ("POST", "/policies/p".into(), r#"{"policyDocument": "{}", "extra": 1}"#.into(), 400, "InvalidRequestException"),
        ("POST", "/policies/p".into(), r#"{"policyDocument": "{\"Statement\": 5}"}"#.into(), 400, "MalformedPolicy"),
        ("POST", "/policies/p".into(), json!({"policyDocument": r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"iot:Fly","Resource":"*"}}"#}).to_string(), 400, "UnknownAction"),
        ("POST", "/policies/p".into(), "{}".into(), 400, "InvalidRequestException"),
        ("POST", "/provisioning-templates".into(), json!({"templateName": "t", "templateBody": "{\"Resources\": 1}"}).to_string(), 400, "InvalidRequestException"),
        ("POST", "/provisioning-templates".into(), json!({"templateName": "bad name", "templateBody": "{\"Resources\": {\"c\": {\"Type\": \"AWS::IoT::Certificate\"}}}"}).to_string(), 400, "InvalidRequestException"),
        ("POST", "/certificate/register".into(), json!({"certificatePem": "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n"}).to_string(), 400, "InvalidRequestException"),
        ("POST", "/certificate/register".into(), json!({"certificatePem": format!("{}{}", device.certificate.to_pem(), key_pem)}).to_string(), 400, "InvalidRequestException"),
        ("POST", "/cacertificate".into(), json!({"caCertificate": device.certificate.to_pem(), "certificateMode": "SNI_ONLY"}).to_string(), 400, "InvalidRequestException"),
        ("POST", "/cacertificate".into(), json!({"caCertificate": maker.certificate.to_pem(), "certificateMode": "WHATEVER"}).to_string(), 400, "InvalidRequestException"),
        ("POST", "/cacertificate".into(), json!({"caCertificate": maker.certificate.to_pem()}).to_string(), 400, "InvalidRequestException"),
        // An id that is no certificate id is refused as such; a well-formed one that is not
        // registered is not found.
        ("PUT", "/certificates/ffff".into(), json!({"newStatus": "ACTIVE"}).to_string(), 400, "InvalidRequestException"),
        ("PUT", format!("/certificates/{}", "f".repeat(64)), json!({"newStatus": "ACTIVE"}).to_string(), 404, "ResourceNotFoundException"),
        ("PUT", "/target-policies/p".into(), json!({"target": "arn:aws:s3:::bucket"}).to_string(), 400, "InvalidRequestException"),
        ("GET", "/no/such/path".into(), String::new(), 404, "ResourceNotFoundException"),
        ("POST", "/things/big".into(), format!("{{\"x\": \"{}\"}}", "a".repeat(70 * 1024)), 413, "PayloadTooLarge"),
        ("GET", "/things?maxResults=0".into(), String::new(), 400, "InvalidRequestException"),
        ("GET", "/things?maxResults=251".into(), String::new(), 400, "InvalidRequestException"),
        ("GET", "/provisioning-failures?certificateId=nope".into(), String::new(), 400, "InvalidRequestException"),
    ];
    for (method, path, body, status, code) in cases {
        let (s, v) = raw(api_addr, method, &path, t, &body);
        assert_eq!(s, status, "{method} {path}: {v}");
        if !code.is_empty() {
            assert_eq!(v["code"].as_str(), Some(code), "{method} {path}: {v}");
            assert!(!v["message"].as_str().unwrap_or_default().is_empty());
        }
        assert!(!v.to_string().contains("PRIVATE KEY"), "a key never comes back: {v}");
    }
    // Nothing was created by any of them.
    let mut tx = store.read().await.unwrap();
    assert!(tx.list_things(&acme.id).await.unwrap().is_empty());
    assert!(tx.list_policies(&acme.id).await.unwrap().is_empty());
    assert!(tx.list_templates(&acme.id).await.unwrap().is_empty());
    assert!(tx.list_certificates(&acme.id).await.unwrap().is_empty());
    assert!(tx.list_cas(&acme.id).await.unwrap().is_empty());
    drop(tx);

    // A thing made by acme is invisible to globex's token.
    assert_eq!(raw(api_addr, "POST", "/things/lamp", t, "{}").0, 200);
    assert_eq!(raw(api_addr, "GET", "/things/lamp", Some(&other_token), "").0, 404);
    assert_eq!(raw(api_addr, "GET", "/endpoint", t, "").1, json!({"endpointAddress": "acme.iot.test"}));
    // The mutation was audited under the token's name.
    let audit = store.read().await.unwrap().audit_records(&acme.id, 10).await.unwrap();
    assert!(audit.iter().any(|r| r.action == "CreateThing" && r.actor == "admin" && r.target == "lamp"));

    // Every documented route is served (no 404 for "no such path", no 405) and the OpenAPI
    // document lists them all.
    for route in api::ROUTES {
        let (method, op) = (route.method, route.operation);
        let path = route
            .path
            .replace("{caCertificateId}", "x")
            .replace("{certificateId}", "x")
            .replace("{templateName}", "x")
            .replace("{policyName}", "x")
            .replace("{thingName}", "x")
            .replace("{thingTypeName}", "x")
            .replace("{thingGroupName}", "x")
            .replace("{name}", "x");
        let (s, v) = raw(api_addr, api::method_of(method).as_ref(), &path, t, "{}");
        assert!(
            s != 405 && !(s == 404 && v["message"] == "no such API path"),
            "{op}: {method} {path} -> {s} {v}"
        );
    }
    let (s, doc) = raw(api_addr, "GET", "/openapi.json", None, "");
    assert_eq!(s, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let ops: usize = doc["paths"].as_object().unwrap().values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(ops, api::ROUTES.len());
    let describe = &doc["paths"]["/things/{thingName}"]["get"];
    assert_eq!(describe["parameters"][0]["in"], "path");
    assert!(describe["parameters"][0]["schema"]["pattern"].is_string(), "{describe}");
    assert!(doc["paths"]["/things"]["get"]["parameters"].to_string().contains("nextToken"));
    assert!(doc["paths"]["/policies/{policyName}"]["post"]["requestBody"].is_object());

    // Lists come in pages: maxResults and the nextToken of the previous page.
    for name in ["lamp-a", "lamp-b", "lamp-c"] {
        assert_eq!(raw(api_addr, "POST", &format!("/things/{name}"), t, "{}").0, 200);
    }
    let mut seen = Vec::new();
    let mut path = "/things?maxResults=2".to_owned();
    loop {
        let (s, page) = raw(api_addr, "GET", &path, t, "");
        assert_eq!(s, 200, "{page}");
        let things = page["things"].as_array().unwrap();
        assert!(things.len() <= 2);
        seen.extend(things.iter().map(|t| t["thingName"].as_str().unwrap().to_owned()));
        match page["nextToken"].as_str() {
            Some(next) => path = format!("/things?maxResults=2&nextToken={next}"),
            None => break,
        }
    }
    assert_eq!(seen, ["lamp", "lamp-a", "lamp-b", "lamp-c"], "every thing once, in order");

    // A template a CA uses cannot be deleted: 409, and it stays.
    let template = json!({"templateName": "jitp", "enabled": true, "type": "JITP", "templateBody": json!({
        "Parameters": {"AWS::IoT::Certificate::Id": {"Type": "String"}},
        "Resources": {"certificate": {"Type": "AWS::IoT::Certificate", "Properties": {
            "CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "ACTIVE"}}}}).to_string()});
    let (s, v) = raw(api_addr, "POST", "/provisioning-templates", t, &template.to_string());
    assert_eq!(s, 200, "{v}");
    let ca = json!({"caCertificate": maker.certificate.to_pem(), "certificateMode": "SNI_ONLY", "setAsActive": true,
        "allowAutoRegistration": true, "registrationConfig": {"templateName": "jitp"}});
    let (s, v) = raw(api_addr, "POST", "/cacertificate", t, &ca.to_string());
    assert_eq!(s, 200, "{v}");
    let (s, v) = raw(api_addr, "DELETE", "/provisioning-templates/jitp", t, "");
    assert_eq!((s, v["code"].as_str()), (409, Some("DeleteConflictException")), "{v}");
    assert_eq!(raw(api_addr, "GET", "/provisioning-templates/jitp", t, "").0, 200);
}
