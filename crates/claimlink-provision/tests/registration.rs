//! The account registry's rules (moved up from the registry, which only stores): what may be
//! registered and which changes are allowed, run on SQLite and on PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use claimlink_pki::KeyAlgorithm;
use claimlink_provision::registration::{self, CaApplication, RegisterCaError, RegisterCertificateError};
use claimlink_registry::*;
use claimlink_testkit::postgres;
use claimlink_testpki::TestCa;

fn id<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse().unwrap()
}

async fn stores(test: &str) -> (Vec<Store>, tempfile::TempDir, Option<claimlink_testkit::PostgresDatabase>) {
    let dir = tempfile::tempdir().unwrap();
    let mut stores =
        vec![Store::open(&format!("sqlite://{}", dir.path().join("r.db").display())).await.unwrap()];
    let pg = postgres(test);
    if let Some(db) = &pg {
        stores.push(Store::open(&db.url).await.unwrap());
    }
    (stores, dir, pg)
}

async fn account(store: &Store, name: &str) -> Account {
    let mut tx = store.begin().await.unwrap();
    let a = tx.create_account(name, &format!("{name}.iot.example.com"), "cn-north-1").await.unwrap();
    tx.commit().await.unwrap();
    a
}

fn application<'a>(pem: &'a str, mode: CaMode, verification: Option<&'a str>) -> CaApplication<'a> {
    let mut app = CaApplication::new(pem, mode);
    app.auto_registration = true;
    app.verification_pem = verification;
    app
}

#[tokio::test]
async fn ca_registration_default_vs_sni_only() {
    let (stores, _dir, _pg) = stores("rules_ca_modes").await;
    for store in stores {
        let maker = TestCa::issuing(KeyAlgorithm::Sm2, "CN=Module Maker CA,O=Maker");
        let a = account(&store, "acme").await;
        let b = account(&store, "globex").await;
        let pem = maker.certificate.to_pem();
        let mut tx = store.begin().await.unwrap();
        // DEFAULT without proof of possession: refused.
        let e = registration::register_ca(&mut tx, &a, &application(&pem, CaMode::Default, None))
            .await
            .unwrap_err();
        assert!(matches!(e, RegisterCaError::VerificationMissing), "{e}");
        assert_eq!(e.code(), "InvalidRequestException");
        // With a verification certificate for another account's code: refused.
        let wrong = maker.device(&format!("CN={}", b.registration_code)).certificate.to_pem();
        let e = registration::register_ca(&mut tx, &a, &application(&pem, CaMode::Default, Some(&wrong)))
            .await
            .unwrap_err();
        assert!(matches!(e, RegisterCaError::VerificationName), "{e}");
        assert!(e.to_string().contains("registration code"), "{e}");
        // Signed by another CA: refused.
        let other = TestCa::issuing(KeyAlgorithm::Sm2, "CN=Other");
        let forged = other.device(&format!("CN={}", a.registration_code)).certificate.to_pem();
        let e = registration::register_ca(&mut tx, &a, &application(&pem, CaMode::Default, Some(&forged)))
            .await
            .unwrap_err();
        assert!(matches!(e, RegisterCaError::VerificationSignature), "{e}");
        let proof = maker.device(&format!("CN={}", a.registration_code)).certificate.to_pem();
        let ca = registration::register_ca(&mut tx, &a, &application(&pem, CaMode::Default, Some(&proof)))
            .await
            .unwrap();
        assert_eq!(ca.id, CaId::of(&maker.certificate));
        tx.commit().await.unwrap();

        // DEFAULT is exclusive per region: the second account cannot, even with its own proof.
        let mut tx = store.begin().await.unwrap();
        let proof_b = maker.device(&format!("CN={}", b.registration_code)).certificate.to_pem();
        let e = registration::register_ca(&mut tx, &b, &application(&pem, CaMode::Default, Some(&proof_b)))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, RegisterCaError::DefaultElsewhere { region, .. } if region == "cn-north-1"),
            "{e}"
        );
        assert_eq!(e.code(), "CertificateStateException", "{e}");
        drop(tx);
        // SNI_ONLY needs no proof and is not exclusive.
        let mut tx = store.begin().await.unwrap();
        let ca_b =
            registration::register_ca(&mut tx, &b, &application(&pem, CaMode::SniOnly, None)).await.unwrap();
        assert_eq!(ca_b.mode, CaMode::SniOnly);
        let e = registration::register_ca(&mut tx, &b, &application(&pem, CaMode::SniOnly, None))
            .await
            .unwrap_err();
        assert_eq!(e.code(), "ResourceAlreadyExistsException");
        // Not a CA, or a PEM with a key: refused, the key never echoed.
        let leaf = maker.device("CN=x");
        let leaf_pem = leaf.certificate.to_pem();
        let e = registration::register_ca(&mut tx, &b, &application(&leaf_pem, CaMode::SniOnly, None))
            .await
            .unwrap_err();
        assert!(matches!(e, RegisterCaError::NotACa), "{e}");
        let with_key = format!("{}{}", leaf_pem, leaf.key_pem());
        let e =
            registration::register_certificate(&mut tx, &b.id, &with_key, None, CertificateStatus::Active)
                .await
                .unwrap_err();
        assert!(e.to_string().contains("private key") && !e.to_string().contains("BEGIN"), "{e}");
        tx.commit().await.unwrap();
    }
}

#[tokio::test]
async fn certificate_registration_and_status_rules() {
    let (stores, _dir, _pg) = stores("rules_certificates").await;
    for store in stores {
        let maker = TestCa::issuing(KeyAlgorithm::P256, "CN=Maker");
        let a = account(&store, "acme").await;
        let mut tx = store.begin().await.unwrap();
        let ca = registration::register_ca(
            &mut tx,
            &a,
            &application(&maker.certificate.to_pem(), CaMode::SniOnly, None),
        )
        .await
        .unwrap();
        let dev = maker.device("CN=lamp-1");
        let c = registration::register_certificate(
            &mut tx,
            &a.id,
            &dev.certificate.to_pem(),
            Some(&ca.id),
            CertificateStatus::PendingActivation,
        )
        .await
        .unwrap();
        assert_eq!(c.id, CertificateId::of(&dev.certificate));
        let stranger = TestCa::issuing(KeyAlgorithm::P256, "CN=Stranger").device("CN=x");
        let e = registration::register_certificate(
            &mut tx,
            &a.id,
            &stranger.certificate.to_pem(),
            Some(&ca.id),
            CertificateStatus::Active,
        )
        .await
        .unwrap_err();
        assert!(matches!(&e, RegisterCertificateError::NotIssuedBy(by) if *by == ca.id), "{e}");
        let e = registration::register_certificate(
            &mut tx,
            &a.id,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            None,
            CertificateStatus::Active,
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), "InvalidRequestException");
        let e = registration::register_certificate(
            &mut tx,
            &a.id,
            &maker.certificate.to_pem(),
            None,
            CertificateStatus::Active,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, RegisterCertificateError::IsACa), "{e}");
        registration::set_certificate_status(&mut tx, &a.id, &c.id, CertificateStatus::Active).await.unwrap();
        registration::set_certificate_status(&mut tx, &a.id, &c.id, CertificateStatus::Revoked)
            .await
            .unwrap();
        let e = registration::set_certificate_status(&mut tx, &a.id, &c.id, CertificateStatus::Active)
            .await
            .unwrap_err();
        assert_eq!(e.code(), "CertificateStateException");
        assert_eq!(tx.describe_certificate(&a.id, &c.id).await.unwrap().status, CertificateStatus::Revoked);
        let missing: CertificateId = id(&"ab".repeat(32));
        let e = registration::set_certificate_status(&mut tx, &a.id, &missing, CertificateStatus::Active)
            .await
            .unwrap_err();
        assert_eq!(e.code(), "ResourceNotFoundException");
        tx.commit().await.unwrap();
    }
}

#[tokio::test]
async fn policies_are_validated_before_they_are_stored() {
    let (stores, _dir, _pg) = stores("rules_policies").await;
    for store in stores {
        let a = account(&store, "acme").await;
        let mut tx = store.begin().await.unwrap();
        let doc = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Connect","Resource":"*"}]}"#;
        let (p, warnings) = registration::create_policy(&mut tx, &a.id, &id("Open"), doc).await.unwrap();
        assert_eq!((p.default_version, p.document.as_str()), (1, doc));
        assert!(!warnings.is_empty(), "connect-as-anyone is warned about");
        let bad =
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Nope","Resource":"*"}]}"#;
        let e = registration::create_policy(&mut tx, &a.id, &id("Bad"), bad).await.unwrap_err();
        assert_eq!(e.code(), "UnknownAction", "{e}");
        assert!(tx.get_policy(&a.id, &id("Bad")).await.is_err(), "nothing stored");
        let e = registration::create_policy(&mut tx, &a.id, &id("Open"), doc).await.unwrap_err();
        assert_eq!(e.code(), "ResourceAlreadyExistsException");
        tx.commit().await.unwrap();
    }
}
