//! Templates as OEMs paste them from AWS, run for real certificates on SQLite and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::BTreeMap;

use claimlink_pki::KeyAlgorithm;
use claimlink_provision::registration::{self, CaApplication};
use claimlink_provision::{ProvisionError, Template, jitp, jitr};
use claimlink_registry::*;

/// A typed name or id from a literal of the test.
fn id<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse().unwrap()
}
use claimlink_testkit::postgres;
use claimlink_testpki::TestCa;

/// The template of REFERENCE.md section 3, as AWS documents it.
const AWS_TEMPLATE: &str = r#"{ "Parameters": {
    "AWS::IoT::Certificate::CommonName": {"Type": "String"},
    "AWS::IoT::Certificate::SerialNumber": {"Type": "String"},
    "AWS::IoT::Certificate::Country": {"Type": "String", "Default": "CN"},
    "AWS::IoT::Certificate::Id": {"Type": "String"} },
  "Resources": {
    "thing": { "Type": "AWS::IoT::Thing",
      "Properties": { "ThingName": {"Ref": "AWS::IoT::Certificate::CommonName"},
        "AttributePayload": {"version": "v1", "serialNumber": {"Ref": "AWS::IoT::Certificate::SerialNumber"}},
        "ThingTypeName": "lightBulb-versionA",
        "ThingGroups": ["v1-lightbulbs", {"Ref": "AWS::IoT::Certificate::Country"}] },
      "OverrideSettings": {"AttributePayload": "MERGE", "ThingTypeName": "REPLACE", "ThingGroups": "DO_NOTHING"} },
    "certificate": { "Type": "AWS::IoT::Certificate",
      "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "ACTIVE"} },
    "policy": { "Type": "AWS::IoT::Policy",
      "Properties": {"PolicyName": "DevicePolicy"} } } }"#;

const POLICY: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Connect","Resource":"arn:aws-cn:iot:cn-north-1:*:client/${iot:Connection.Thing.ThingName}"}]}"#;

struct Setup {
    store: Store,
    account: Account,
    maker: TestCa,
    ca_id: CaId,
}

async fn setups(test: &str) -> (Vec<Setup>, tempfile::TempDir, Option<claimlink_testkit::PostgresDatabase>) {
    let dir = tempfile::tempdir().unwrap();
    let mut urls = vec![format!("sqlite://{}", dir.path().join("r.db").display())];
    let pg = postgres(test);
    if let Some(db) = &pg {
        urls.push(db.url.clone());
    }
    let mut out = Vec::new();
    for url in urls {
        let store = Store::open(&url).await.unwrap();
        let maker = TestCa::issuing(KeyAlgorithm::Sm2, "CN=Module Maker,O=Maker,C=CN");
        let mut tx = store.begin().await.unwrap();
        let account = tx.create_account("acme", "acme.iot.example.com", "cn-north-1").await.unwrap();
        tx.create_template(&account.id, &id("lights"), TemplateKind::Jitp, AWS_TEMPLATE, true, None)
            .await
            .unwrap();
        let pem = maker.certificate.to_pem();
        let lights = id("lights");
        let mut new = CaApplication::new(&pem, CaMode::SniOnly);
        new.auto_registration = true;
        new.template_name = Some(&lights);
        let ca = registration::register_ca(&mut tx, &account, &new).await.unwrap();
        tx.create_thing_type(&account.id, &id("lightBulb-versionA"), None, &[]).await.unwrap();
        for g in ["v1-lightbulbs", "CN"] {
            tx.create_thing_group(&account.id, &id(g), None, &BTreeMap::new()).await.unwrap();
        }
        registration::create_policy(&mut tx, &account.id, &id("DevicePolicy"), POLICY).await.unwrap();
        tx.commit().await.unwrap();
        out.push(Setup { store, account, maker, ca_id: ca.id });
    }
    (out, dir, pg)
}

#[tokio::test]
async fn the_aws_template_provisions_a_device_in_one_go() {
    let (setups, _dir, _pg) = setups("jitp_aws_template").await;
    for s in setups {
        let device = s.maker.device("CN=lamp-1,serialNumber=SN0001,O=Acme");
        let done = jitp(&s.store, &s.account, &s.ca_id, &id("lights"), &device.certificate).await.unwrap();
        assert_eq!(done.certificate.status, CertificateStatus::Active);
        assert_eq!(done.thing_name.as_deref(), Some("lamp-1"));
        assert_eq!(done.policies, ["DevicePolicy"]);
        let mut tx = s.store.read().await.unwrap();
        let thing = tx.describe_thing(&s.account.id, &id("lamp-1")).await.unwrap();
        assert_eq!(thing.thing_type.as_deref(), Some("lightBulb-versionA"));
        assert_eq!(thing.attributes["serialNumber"], "SN0001");
        assert_eq!(thing.attributes["version"], "v1");
        assert_eq!(
            tx.groups_of_thing(&s.account.id, &id("lamp-1")).await.unwrap(),
            ["CN", "v1-lightbulbs"],
            "Country came from the Default"
        );
        assert_eq!(tx.things_of_certificate(&s.account.id, &done.certificate.id).await.unwrap(), ["lamp-1"]);
        let policies =
            tx.effective_policies(&s.account.id, &done.certificate.id, Some(&id("lamp-1"))).await.unwrap();
        assert_eq!(policies[0].name, "DevicePolicy");
        let audit = tx.audit_records(&s.account.id, 5).await.unwrap();
        assert!(
            audit.iter().any(|r| r.action == "JITP" && r.result == "ok" && r.target == done.certificate.id)
        );
        drop(tx);
        // Running again for the same certificate: it exists; nothing changes, no failure kept.
        let again =
            jitp(&s.store, &s.account, &s.ca_id, &id("lights"), &device.certificate).await.unwrap_err();
        assert!(again.is_transient(), "{again}");
        // A second device with an existing thing name merges attributes (MERGE).
        let twin = s.maker.device("CN=lamp-1,serialNumber=SN0002");
        jitp(&s.store, &s.account, &s.ca_id, &id("lights"), &twin.certificate).await.unwrap();
        let mut tx = s.store.read().await.unwrap();
        let thing = tx.describe_thing(&s.account.id, &id("lamp-1")).await.unwrap();
        assert_eq!((thing.attributes["serialNumber"].as_str(), thing.version), ("SN0002", 2));
    }
}

#[tokio::test]
async fn a_template_that_does_not_fit_says_why_and_leaves_nothing() {
    let (setups, _dir, _pg) = setups("jitp_no_fit").await;
    for s in setups {
        // No serialNumber in the subject and no Default.
        let device = s.maker.device("CN=lamp-2");
        let e = jitp(&s.store, &s.account, &s.ca_id, &id("lights"), &device.certificate).await.unwrap_err();
        assert!(matches!(e, ProvisionError::DoesNotFit(_)), "{e:?}");
        assert!(e.to_string().contains("AWS::IoT::Certificate::SerialNumber"), "{e}");
        let id = CertificateId::of(&device.certificate);
        let mut tx = s.store.read().await.unwrap();
        assert!(
            tx.certificate(&s.account.id, &id).await.unwrap().is_none(),
            "never a silently pending certificate"
        );
        let failures = tx.provisioning_failures(&s.account.id, Some(&id)).await.unwrap();
        assert_eq!(failures.len(), 1);
        assert!(failures[0].reason.contains("SerialNumber"));
        assert_eq!(failures[0].template_name.as_deref(), Some("lights"));
        assert!(tx.audit_records(&s.account.id, 5).await.unwrap().iter().any(|r| r.result == "failed"));
    }
}

#[tokio::test]
async fn a_failure_midway_rolls_everything_back() {
    let (setups, _dir, _pg) = setups("jitp_rollback").await;
    for s in setups {
        // The thing and certificate steps succeed, then a group the template names is missing.
        let body = AWS_TEMPLATE.replace("\"v1-lightbulbs\"", "\"no-such-group\"");
        let mut tx = s.store.begin().await.unwrap();
        tx.create_template(&s.account.id, &id("broken"), TemplateKind::Jitp, &body, true, None)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let device = s.maker.device("CN=lamp-3,serialNumber=SN3");
        let e = jitp(&s.store, &s.account, &s.ca_id, &id("broken"), &device.certificate).await.unwrap_err();
        assert!(e.to_string().contains("no-such-group"), "{e}");
        let mut tx = s.store.read().await.unwrap();
        assert!(tx.thing(&s.account.id, &id("lamp-3")).await.unwrap().is_none(), "no half-provisioned thing");
        assert!(
            tx.certificate(&s.account.id, &CertificateId::of(&device.certificate)).await.unwrap().is_none()
        );
    }
}

#[tokio::test]
async fn intrinsic_functions_mappings_and_inline_policies() {
    let (setups, _dir, _pg) = setups("jitp_intrinsics").await;
    let body = r#"{
      "Parameters": {
        "AWS::IoT::Certificate::CommonName": {"Type": "String"},
        "AWS::IoT::Certificate::Organization": {"Type": "String", "Default": "unknown"},
        "AWS::IoT::Certificate::Id": {"Type": "String"} },
      "Mappings": { "Sites": { "Acme": { "site": "hz-01", "tags": ["a", "b"] } } },
      "Resources": {
        "thing": { "Type": "AWS::IoT::Thing", "Properties": {
          "ThingName": {"Fn::Join": ["-", ["dev", {"Fn::Select": [1, {"Fn::Split": [".", {"Ref": "AWS::IoT::Certificate::CommonName"}]}]}]]},
          "AttributePayload": {
            "site": {"Fn::FindInMap": ["Sites", {"Ref": "AWS::IoT::Certificate::Organization"}, "site"]},
            "label": {"Fn::Sub": "${AWS::IoT::Certificate::Organization}/${x} ${!literal}"},
            "label2": {"Fn::Sub": ["${x}", {"x": "from-var"}]} } } },
        "certificate": { "Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}} },
        "policy": { "Type": "AWS::IoT::Policy", "Properties": {
          "PolicyDocument": "{\"Version\":\"2012-10-17\",\"Statement\":[{\"Effect\":\"Allow\",\"Action\":\"iot:Publish\",\"Resource\":\"*\"}]}" } } } }"#;
    // ${x} in the first Fn::Sub is not declared: refused at creation.
    let e = Template::parse(body).unwrap_err();
    assert!(e.to_string().contains("${x}"), "{e}");
    let body = body.replace(
        "${AWS::IoT::Certificate::Organization}/${x} ${!literal}",
        "${AWS::IoT::Certificate::Organization} ${!literal}",
    );
    Template::parse(&body).unwrap();
    for s in setups {
        let mut tx = s.store.begin().await.unwrap();
        tx.create_template(&s.account.id, &id("fancy"), TemplateKind::Jitp, &body, true, None).await.unwrap();
        tx.commit().await.unwrap();
        let a = s.maker.device("CN=lamp.0042.x,O=Acme");
        let done = jitp(&s.store, &s.account, &s.ca_id, &id("fancy"), &a.certificate).await.unwrap();
        assert_eq!(done.thing_name.as_deref(), Some("dev-0042"));
        let mut tx = s.store.read().await.unwrap();
        let thing = tx.describe_thing(&s.account.id, &id("dev-0042")).await.unwrap();
        assert_eq!(thing.attributes["site"], "hz-01");
        assert_eq!(thing.attributes["label"], "Acme ${literal}");
        assert_eq!(thing.attributes["label2"], "from-var");
        drop(tx);
        // The inline policy was created once and is reused by the next device.
        let b = s.maker.device("CN=lamp.0043.x,O=Acme");
        let done_b = jitp(&s.store, &s.account, &s.ca_id, &id("fancy"), &b.certificate).await.unwrap();
        assert_eq!(done.policies, done_b.policies);
        assert!(done.policies[0].starts_with("fancy-policy-"));
        // An organisation with no mapping: the template does not fit, and says so.
        let c = s.maker.device("CN=lamp.0044.x,O=Other");
        let e = jitp(&s.store, &s.account, &s.ca_id, &id("fancy"), &c.certificate).await.unwrap_err();
        assert!(e.to_string().contains("Sites/Other/site"), "{e}");
    }
}

#[tokio::test]
async fn jitr_registers_pending_and_describes_the_event() {
    let (setups, _dir, _pg) = setups("jitr").await;
    for s in setups {
        let device = s.maker.device("CN=lamp-9");
        let (record, event) = jitr(&s.store, &s.account, &s.ca_id, &device.certificate).await.unwrap();
        assert_eq!(record.status, CertificateStatus::PendingActivation);
        assert_eq!(event["certificateStatus"], "PENDING_ACTIVATION");
        assert_eq!(event["caCertificateId"], s.ca_id.as_str());
        assert_eq!(event["awsAccountId"], s.account.id.as_str());
        assert_eq!(event["certificateId"], record.id.as_str());
    }
}

#[test]
fn invalid_templates_are_refused_at_creation() {
    let cases = [
        ("not json", "not JSON"),
        ("[]", "JSON object"),
        (r#"{"Resources": {}}"#, "non-empty"),
        (r#"{"Resources": {"x": {"Type": "AWS::S3::Bucket"}}}"#, "unsupported Type"),
        (r#"{"Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {}}}}"#, "ThingName is required"),
        (
            r#"{"Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "Nope"}}}}}"#,
            "no such parameter",
        ),
        (
            r#"{"Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": "x", "Colour": "red"}}}}"#,
            "unknown property",
        ),
        (
            r#"{"Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": "x"}, "OverrideSettings": {"ThingTypeName": "MERGE"}}}}"#,
            "OverrideSettings.ThingTypeName",
        ),
        (
            r#"{"Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Fn::If": []}}}}}"#,
            "unsupported intrinsic",
        ),
        (
            r#"{"Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Fn::FindInMap": ["M", "a", "b"]}}}}}"#,
            "no mapping",
        ),
        (
            r#"{"Resources": {"p": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyDocument": "{\"Statement\":[]}"}}}}"#,
            "PolicyDocument",
        ),
        (r#"{"Resources": {"p": {"Type": "AWS::IoT::Policy", "Properties": {}}}}"#, "exactly one"),
        (
            r#"{"Resources": {"c": {"Type": "AWS::IoT::Certificate", "Properties": {"Status": "ENABLED"}}}}"#,
            "CertificateStatus",
        ),
        (
            r#"{"Parameters": {"AWS::IoT::Certificate::Colour": {"Type": "String"}}, "Resources": {"c": {"Type": "AWS::IoT::Certificate"}}}"#,
            "not a certificate field",
        ),
        (r#"{"Conditions": {}, "Resources": {"c": {"Type": "AWS::IoT::Certificate"}}}"#, "Conditions"),
    ];
    for (body, expected) in cases {
        let e = Template::parse(body).unwrap_err();
        assert!(e.to_string().contains(expected), "{body}: {e}");
        assert_eq!(e.code(), "InvalidRequestException");
    }
    let big = format!(
        r#"{{"Description": "{}", "Resources": {{"c": {{"Type": "AWS::IoT::Certificate"}}}}}}"#,
        "x".repeat(10 * 1024)
    );
    assert_eq!(Template::parse(&big).unwrap_err().code(), "LimitExceededException");
    assert!(Template::parse(AWS_TEMPLATE).unwrap().has_certificate());
}
