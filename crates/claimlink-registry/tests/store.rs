//! One test suite for both backends: every test runs on a fresh SQLite file and on a fresh
//! PostgreSQL database (`$DATABASE_URL`; `.ci/run` provides it, elsewhere it is skipped with a
//! notice).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::BTreeMap;

use claimlink_pki::KeyAlgorithm;
use claimlink_registry::*;
use claimlink_testkit::postgres;
use claimlink_testpki::TestCa;

/// A typed name or id from a literal of the test.
fn id<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse().unwrap()
}

/// A CA to store (the registry does not judge it: `claimlink-provision` does).
fn new_ca<'a>(
    certificate: &'a claimlink_pki::Certificate,
    mode: CaMode,
    template: Option<&'a TemplateName>,
) -> NewCa<'a> {
    NewCa {
        certificate,
        mode,
        status: CaStatus::Active,
        auto_registration: true,
        template_name: template,
        require_claim: false,
    }
}

/// A store on each backend; keeps the SQLite directory and the PostgreSQL database alive.
struct Backends {
    stores: Vec<Store>,
    _dir: tempfile::TempDir,
    _pg: Option<claimlink_testkit::PostgresDatabase>,
}

async fn backends(test: &str) -> Backends {
    let dir = tempfile::tempdir().unwrap();
    let sqlite =
        Store::open(&format!("sqlite://{}", dir.path().join("registry.db").display())).await.unwrap();
    let mut stores = vec![sqlite];
    let pg = postgres(test);
    if let Some(db) = &pg {
        stores.push(Store::open(&db.url).await.unwrap());
    }
    Backends { stores, _dir: dir, _pg: pg }
}

async fn account(store: &Store, name: &str) -> Account {
    let mut tx = store.begin().await.unwrap();
    let a = tx.create_account(name, &format!("{name}.iot.example.com"), "cn-north-1").await.unwrap();
    tx.commit().await.unwrap();
    a
}

#[tokio::test]
async fn accounts_and_api_tokens() {
    for store in backends("accounts_tokens").await.stores {
        let a = account(&store, "acme").await;
        assert_eq!(a.id.len(), 12);
        let mut tx = store.begin().await.unwrap();
        let token = tx.create_api_token(&a.id, "ci").await.unwrap();
        assert!(token.starts_with("clk_") && token.len() > 60);
        let (found, name) = tx.account_for_token(&token).await.unwrap().unwrap();
        assert_eq!((found.id.as_str(), name.as_str()), (a.id.as_str(), "ci"));
        assert!(tx.account_for_token("clk_wrong").await.unwrap().is_none());
        assert_eq!(tx.account_by_endpoint("ACME.iot.example.com").await.unwrap().unwrap().id, a.id);
        let dup = tx.create_account("acme", "other.example.com", "cn-north-1").await.unwrap_err();
        assert_eq!(dup.code(), "ResourceAlreadyExistsException", "{dup}");
        tx.commit().await.unwrap();
    }
}

#[tokio::test]
async fn things_types_groups_and_limits() {
    for store in backends("things").await.stores {
        let a = account(&store, "acme").await;
        let mut tx = store.begin().await.unwrap();
        tx.create_thing_type(&a.id, &id("lamp"), Some("a lamp"), &["color".into()]).await.unwrap();
        let attrs = BTreeMap::from([("color".to_owned(), "red".to_owned())]);
        let t = tx.create_thing(&a.id, &id("lamp-1"), Some(&id("lamp")), &attrs).await.unwrap();
        assert_eq!((t.version, t.thing_type.as_deref()), (1, Some("lamp")));
        let e = tx.create_thing(&a.id, &id("lamp-1"), None, &BTreeMap::new()).await.unwrap_err();
        assert_eq!(e.code(), "ResourceAlreadyExistsException");
        assert_eq!(ThingName::new("lamp 2").unwrap_err().code(), "InvalidRequestException");
        let e =
            tx.create_thing(&a.id, &id("lamp-2"), Some(&id("kettle")), &BTreeMap::new()).await.unwrap_err();
        assert_eq!(e.code(), "ResourceNotFoundException");
        let attrs2 = BTreeMap::from([("color".to_owned(), "blue".to_owned())]);
        let t = tx.update_thing(&a.id, &id("lamp-1"), Some(&id("lamp")), &attrs2).await.unwrap();
        assert_eq!((t.version, t.attributes["color"].as_str()), (2, "blue"));
        for g in 0..11 {
            tx.create_thing_group(&a.id, &id(&format!("g{g}")), None, &BTreeMap::new()).await.unwrap();
        }
        for g in 0..10 {
            tx.add_thing_to_group(&a.id, &id(&format!("g{g}")), &id("lamp-1")).await.unwrap();
        }
        tx.add_thing_to_group(&a.id, &id("g0"), &id("lamp-1")).await.unwrap(); // again: fine
        let e = tx.add_thing_to_group(&a.id, &id("g10"), &id("lamp-1")).await.unwrap_err();
        assert_eq!(e.code(), "LimitExceededException");
        assert_eq!(tx.groups_of_thing(&a.id, &id("lamp-1")).await.unwrap().len(), 10);
        tx.commit().await.unwrap();

        // Another account sees none of it.
        let b = account(&store, "globex").await;
        let mut tx = store.read().await.unwrap();
        assert!(tx.list_things(&b.id).await.unwrap().is_empty());
        assert_eq!(tx.list_things(&a.id).await.unwrap().len(), 1);
    }
}

#[tokio::test]
async fn a_rolled_back_transaction_leaves_nothing() {
    for store in backends("rollback").await.stores {
        let a = account(&store, "acme").await;
        {
            let mut tx = store.begin().await.unwrap();
            tx.create_thing(&a.id, &id("half"), None, &BTreeMap::new()).await.unwrap();
            // Dropped without commit: a crash in the middle.
        }
        let mut tx = store.read().await.unwrap();
        assert!(tx.thing(&a.id, &id("half")).await.unwrap().is_none());
    }
}

#[tokio::test]
async fn cas_one_default_owner_per_region() {
    for store in backends("ca_modes").await.stores {
        let maker = TestCa::issuing(KeyAlgorithm::Sm2, "CN=Module Maker CA,O=Maker");
        let a = account(&store, "acme").await;
        let b = account(&store, "globex").await;
        let mut tx = store.begin().await.unwrap();
        let ca = tx.insert_ca(&a, &new_ca(&maker.certificate, CaMode::Default, None)).await.unwrap().unwrap();
        assert_eq!(
            (ca.id.clone(), ca.mode, ca.auto_registration),
            (CaId::of(&maker.certificate), CaMode::Default, true)
        );
        // Again, or DEFAULT in another account of the region: nothing stored.
        assert!(
            tx.insert_ca(&a, &new_ca(&maker.certificate, CaMode::SniOnly, None)).await.unwrap().is_none()
        );
        assert!(
            tx.insert_ca(&b, &new_ca(&maker.certificate, CaMode::Default, None)).await.unwrap().is_none()
        );
        // SNI_ONLY is not exclusive.
        let ca_b =
            tx.insert_ca(&b, &new_ca(&maker.certificate, CaMode::SniOnly, None)).await.unwrap().unwrap();
        assert_eq!(ca_b.mode, CaMode::SniOnly);
        // A template must exist.
        let other = TestCa::issuing(KeyAlgorithm::P256, "CN=Other");
        let e = tx
            .insert_ca(&b, &new_ca(&other.certificate, CaMode::SniOnly, Some(&id("nope"))))
            .await
            .unwrap_err();
        assert_eq!(e.code(), "ResourceNotFoundException");
        let updated =
            tx.update_ca(&b.id, &ca_b.id, Some(CaStatus::Inactive), Some(false), None).await.unwrap();
        assert_eq!((updated.status, updated.auto_registration), (CaStatus::Inactive, false));
        tx.set_ca_require_claim(&b.id, &ca_b.id, true).await.unwrap();
        assert!(tx.describe_ca(&b.id, &ca_b.id).await.unwrap().require_claim);
        tx.commit().await.unwrap();
    }
}

#[tokio::test]
async fn certificates_statuses_and_principals() {
    for store in backends("certificates").await.stores {
        let maker = TestCa::issuing(KeyAlgorithm::P256, "CN=Maker");
        let a = account(&store, "acme").await;
        let mut tx = store.begin().await.unwrap();
        let ca = tx.insert_ca(&a, &new_ca(&maker.certificate, CaMode::SniOnly, None)).await.unwrap().unwrap();
        let dev = maker.device("CN=lamp-1");
        let c = tx
            .insert_certificate(&a.id, &dev.certificate, Some(&ca.id), CertificateStatus::PendingActivation)
            .await
            .unwrap();
        assert_eq!(tx.describe_certificate(&a.id, &c.id).await.unwrap(), c);
        let e = tx
            .insert_certificate(&a.id, &dev.certificate, None, CertificateStatus::Active)
            .await
            .unwrap_err();
        assert_eq!(e.code(), "ResourceAlreadyExistsException");
        // Status changes are compare-and-set: from what was read, or not at all.
        assert!(
            tx.set_certificate_status(
                &a.id,
                &c.id,
                CertificateStatus::PendingActivation,
                CertificateStatus::Active
            )
            .await
            .unwrap()
        );
        assert!(
            !tx.set_certificate_status(
                &a.id,
                &c.id,
                CertificateStatus::PendingActivation,
                CertificateStatus::Inactive
            )
            .await
            .unwrap()
        );
        assert_eq!(tx.describe_certificate(&a.id, &c.id).await.unwrap().status, CertificateStatus::Active);
        tx.create_thing(&a.id, &id("lamp-1"), None, &BTreeMap::new()).await.unwrap();
        tx.attach_thing_principal(&a.id, &id("lamp-1"), &c.id).await.unwrap();
        tx.attach_thing_principal(&a.id, &id("lamp-1"), &c.id).await.unwrap();
        assert_eq!(tx.things_of_certificate(&a.id, &c.id).await.unwrap(), ["lamp-1"]);
        let e = tx.delete_thing(&a.id, &id("lamp-1")).await.unwrap_err();
        assert_eq!(e.code(), "DeleteConflictException");
        assert!(e.to_string().contains("detach"), "{e}");
        tx.commit().await.unwrap();
    }
}

#[tokio::test]
async fn policies_attachments_and_effective_policies() {
    for store in backends("policies").await.stores {
        let maker = TestCa::issuing(KeyAlgorithm::P256, "CN=Maker");
        let a = account(&store, "acme").await;
        let mut tx = store.begin().await.unwrap();
        let doc = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Connect","Resource":"*"}]}"#;
        let p = tx.insert_policy(&a.id, &id("Open"), doc).await.unwrap();
        assert_eq!((p.default_version, p.document.as_str()), (1, doc));
        let dev = maker.device("CN=lamp-1");
        let c =
            tx.insert_certificate(&a.id, &dev.certificate, None, CertificateStatus::Active).await.unwrap();
        let target = PolicyTarget::Certificate(c.id.clone());
        tx.attach_policy(&a.id, &id("Open"), &target).await.unwrap();
        tx.attach_policy(&a.id, &id("Open"), &target).await.unwrap();
        for i in 0..9 {
            tx.insert_policy(&a.id, &id(&format!("P{i}")), doc).await.unwrap();
            tx.attach_policy(&a.id, &id(&format!("P{i}")), &target).await.unwrap();
        }
        tx.insert_policy(&a.id, &id("P9"), doc).await.unwrap();
        let e = tx.attach_policy(&a.id, &id("P9"), &target).await.unwrap_err();
        assert_eq!(e.code(), "LimitExceededException");
        // Group policies apply to things in the group.
        tx.create_thing(&a.id, &id("lamp-1"), None, &BTreeMap::new()).await.unwrap();
        tx.create_thing_group(&a.id, &id("lamps"), None, &BTreeMap::new()).await.unwrap();
        tx.add_thing_to_group(&a.id, &id("lamps"), &id("lamp-1")).await.unwrap();
        tx.attach_policy(&a.id, &id("P9"), &PolicyTarget::ThingGroup(id("lamps"))).await.unwrap();
        let names = |v: Vec<PolicyRecord>| v.into_iter().map(|p| p.name).collect::<Vec<_>>();
        assert_eq!(names(tx.effective_policies(&a.id, &c.id, None).await.unwrap()).len(), 10);
        assert!(
            names(tx.effective_policies(&a.id, &c.id, Some(&id("lamp-1"))).await.unwrap())
                .contains(&id("P9"))
        );
        tx.detach_policy(&a.id, &id("P0"), &target).await.unwrap();
        assert_eq!(
            tx.detach_policy(&a.id, &id("P0"), &target).await.unwrap_err().code(),
            "ResourceNotFoundException"
        );
        tx.commit().await.unwrap();
    }
}

#[tokio::test]
async fn templates_failures_and_audit() {
    for store in backends("templates").await.stores {
        let a = account(&store, "acme").await;
        let mut tx = store.begin().await.unwrap();
        let t = tx
            .create_template(&a.id, &id("jitp-lamps"), TemplateKind::Jitp, "{}", true, Some("lamps"))
            .await
            .unwrap();
        assert!(t.enabled);
        assert_eq!(TemplateName::new("bad name!").unwrap_err().code(), "InvalidRequestException");
        let e = tx
            .create_template(&a.id, &id("big"), TemplateKind::Jitp, &" ".repeat(10 * 1024 + 1), true, None)
            .await
            .unwrap_err();
        assert_eq!(e.code(), "LimitExceededException");
        let t = tx.update_template(&a.id, &id("jitp-lamps"), None, Some(false), None).await.unwrap();
        assert!(!t.enabled);
        let maker = TestCa::issuing(KeyAlgorithm::P256, "CN=Maker");
        let lamps = id("jitp-lamps");
        let ca = tx
            .insert_ca(&a, &new_ca(&maker.certificate, CaMode::SniOnly, Some(&lamps)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ca.template_name.as_deref(), Some("jitp-lamps"));
        assert!(tx.delete_template(&a.id, &id("jitp-lamps")).await.is_err(), "in use by the CA");
        tx.update_ca(&a.id, &ca.id, None, None, Some(None)).await.unwrap();
        tx.delete_template(&a.id, &id("jitp-lamps")).await.unwrap();
        let failure = ProvisioningFailure {
            certificate_id: "ab".repeat(32),
            ca_id: Some(ca.id.to_string()),
            template_name: Some("jitp-lamps".into()),
            reason: "parameter AWS::IoT::Certificate::Country missing".into(),
            at: now(),
        };
        tx.record_provisioning_failure(&a.id, &failure).await.unwrap();
        assert_eq!(
            tx.provisioning_failures(&a.id, Some(&id(&failure.certificate_id))).await.unwrap(),
            std::slice::from_ref(&failure)
        );
        assert!(tx.provisioning_failures(&a.id, Some(&id(&"cd".repeat(32)))).await.unwrap().is_empty());
        let record = AuditRecord {
            actor: "ci".into(),
            action: "CreateThing".into(),
            target: "lamp-1".into(),
            result: "ok".into(),
            detail: None,
            at: now(),
        };
        tx.audit(Some(&a.id), &record).await.unwrap();
        assert_eq!(tx.audit_records(&a.id, 10).await.unwrap(), [record]);
        tx.commit().await.unwrap();
    }
}

#[tokio::test]
async fn reopening_keeps_data_and_migrations_run_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("r.db").display());
    let store = Store::open(&url).await.unwrap();
    let a = account(&store, "acme").await;
    drop(store);
    let store = Store::open(&url).await.unwrap();
    let mut tx = store.read().await.unwrap();
    assert_eq!(tx.account(&a.id).await.unwrap(), a);
    assert!(Store::open("mysql://x").await.is_err());
}
