//! Claim authorisation and the staging records behind it, on SQLite and on PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use claimlink_provision::claim_code::ClaimCode;
use claimlink_provision::claims::{self, ClaimOutcome, ClaimRequest, Rejection, ReleaseError, Releaser, Via};
use claimlink_registry::Store;

fn rng() -> rand_core::UnwrapErr<getrandom::SysRng> {
    rand_core::UnwrapErr(getrandom::SysRng)
}

fn request<'a>(oem: &'a str, thing: &'a str, endpoint: &'a str, code: Option<&'a str>) -> ClaimRequest<'a> {
    ClaimRequest { oem_id: oem, thing_name: thing, endpoint, claim_code: code, via: Via::Api }
}

fn rejected(o: &ClaimOutcome) -> Option<Rejection> {
    match o {
        ClaimOutcome::Rejected { reason, .. } => Some(*reason),
        ClaimOutcome::Accepted { .. } => None,
    }
}

async fn scenario(store: Store) {
    let code = ClaimCode::generate(&mut rng());
    let verifier = code.verifier(&mut rng());
    let good = code.expose_grouped();
    let mut tx = store.begin().await.unwrap();
    let acme = tx.create_oem("Acme", &["acme.example.com:8883".into()]).await.unwrap();
    let rival = tx.create_oem("Rival", &["rival.example.com".into()]).await.unwrap();
    assert!(tx.create_oem("Acme", &[]).await.unwrap_err().is_conflict());
    assert!(tx.create_oem("Bad", &["not a host".into()]).await.is_err());
    assert!(tx.import_device("dev-1", Some(&"ab".repeat(32)), Some(&verifier)).await.unwrap());
    assert!(!tx.import_device("dev-1", Some(&"ab".repeat(32)), Some(&verifier)).await.unwrap(), "idempotent");
    tx.import_device("dev-2", None, None).await.unwrap();
    tx.commit().await.unwrap();
    let ep = "acme.example.com:8883";

    // Unknown device, unregistered endpoint, missing and wrong codes.
    let o = claims::claim(&store, &request(&acme.id, "nobody", ep, Some(&good))).await.unwrap();
    assert_eq!(rejected(&o), Some(Rejection::DeviceUnknown));
    let o =
        claims::claim(&store, &request(&acme.id, "dev-1", "rival.example.com", Some(&good))).await.unwrap();
    assert_eq!(rejected(&o), Some(Rejection::EndpointNotRegistered));
    let o = claims::claim(&store, &request(&acme.id, "dev-1", ep, None)).await.unwrap();
    assert_eq!(rejected(&o), Some(Rejection::ClaimCodeRequired));
    for n in 1..=2 {
        let o = claims::claim(&store, &request(&acme.id, "dev-1", ep, Some("0000-0000-0000-0000")))
            .await
            .unwrap();
        assert_eq!(o, ClaimOutcome::Rejected { reason: Rejection::ClaimCodeWrong, retry_at: None });
        assert_eq!(
            store.read().await.unwrap().staging_device("dev-1").await.unwrap().unwrap().failed_codes,
            n
        );
    }
    // Case and dashes do not matter.
    let o = claims::claim(
        &store,
        &request(&acme.id, "dev-1", "ACME.example.com:8883", Some(&good.to_lowercase())),
    )
    .await
    .unwrap();
    let ClaimOutcome::Accepted { claim_id, endpoint, delivered: false } = o else { panic!("{o:?}") };
    assert_eq!(endpoint, ep);
    let dev = store.read().await.unwrap().staging_device("dev-1").await.unwrap().unwrap();
    assert_eq!(
        (dev.owner_oem.as_deref(), dev.failed_codes, dev.claim_id),
        (Some(acme.id.as_str()), 0, Some(claim_id))
    );

    // The owner again: the same claim. A rival: refused.
    let again = claims::claim(&store, &request(&acme.id, "dev-1", ep, Some(&good))).await.unwrap();
    assert!(matches!(again, ClaimOutcome::Accepted { claim_id: c, .. } if c == claim_id));
    let o =
        claims::claim(&store, &request(&rival.id, "dev-1", "rival.example.com", Some(&good))).await.unwrap();
    assert_eq!(rejected(&o), Some(Rejection::AlreadyOwned));
    assert!(matches!(
        claims::release(&store, "dev-1", Releaser::Oem(&rival.id)).await,
        Err(ReleaseError::NotOwner)
    ));

    // Delivery, then the device's own return (a factory reset) ends the ownership.
    let mut tx = store.begin().await.unwrap();
    tx.mark_delivered("dev-1", claim_id).await.unwrap();
    tx.commit().await.unwrap();
    let again = claims::claim(&store, &request(&acme.id, "dev-1", ep, Some(&good))).await.unwrap();
    assert!(matches!(again, ClaimOutcome::Accepted { delivered: true, .. }));
    assert_eq!(claims::release(&store, "dev-1", Releaser::Device).await.unwrap(), ep);
    let o =
        claims::claim(&store, &request(&rival.id, "dev-1", "rival.example.com", Some(&good))).await.unwrap();
    assert!(matches!(o, ClaimOutcome::Accepted { .. }), "a released device can be claimed again");

    // Growing lockouts on a device without an owner.
    let code2 = ClaimCode::generate(&mut rng());
    let mut tx = store.begin().await.unwrap();
    tx.import_device("dev-3", None, Some(&code2.verifier(&mut rng()))).await.unwrap();
    tx.commit().await.unwrap();
    let mut last = 0;
    for n in 1..=4 {
        let o = claims::claim(&store, &request(&acme.id, "dev-3", ep, Some("1111-1111-1111-1111")))
            .await
            .unwrap();
        match (n, o) {
            (1 | 2, ClaimOutcome::Rejected { reason: Rejection::ClaimCodeWrong, retry_at: None }) => {}
            (3, ClaimOutcome::Rejected { reason: Rejection::ClaimCodeWrong, retry_at: Some(at) }) => {
                last = at
            }
            (4, ClaimOutcome::Rejected { reason: Rejection::LockedOut, retry_at: Some(at) }) => {
                assert_eq!(at, last)
            }
            (n, o) => panic!("attempt {n}: {o:?}"),
        }
    }
    let o =
        claims::claim(&store, &request(&acme.id, "dev-3", ep, Some(code2.expose_canonical()))).await.unwrap();
    assert_eq!(rejected(&o), Some(Rejection::LockedOut), "locked even for the right code");

    // A device without a manifest code (seen only) is claimed without one.
    let o = claims::claim(&store, &request(&acme.id, "dev-2", ep, None)).await.unwrap();
    assert!(matches!(o, ClaimOutcome::Accepted { .. }));

    // Every attempt is a row, newest first, and an audit record.
    let mut tx = store.read().await.unwrap();
    let rows = tx.claims(None, Some("dev-1"), 100).await.unwrap();
    let reasons: Vec<&str> = rows.iter().map(|c| c.reason.as_str()).collect();
    assert_eq!(
        reasons,
        [
            "Accepted",
            "AlreadyOwned",
            "Accepted",
            "ClaimCodeWrong",
            "ClaimCodeWrong",
            "ClaimCodeRequired",
            "EndpointNotRegistered"
        ]
    );
    assert_eq!(tx.claims(Some(&rival.id), None, 100).await.unwrap().len(), 2);
    assert!(rows.iter().any(|c| c.released_at.is_some()));
    assert_eq!(tx.owned_devices(&acme.id).await.unwrap().len(), 1);

    // Portal users and sessions.
    drop(tx);
    let mut tx = store.begin().await.unwrap();
    let uid = tx.create_portal_user(&acme.id, "a@example.com", "$argon2id$x").await.unwrap();
    assert!(tx.create_portal_user(&acme.id, "a@example.com", "$argon2id$y").await.is_err());
    let token = tx.create_portal_session(uid, 60_000).await.unwrap();
    tx.add_portal_device(uid, "dev-2").await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = store.read().await.unwrap();
    assert_eq!(tx.portal_session(&token).await.unwrap().unwrap().email, "a@example.com");
    assert!(tx.portal_session("00").await.unwrap().is_none());
    assert_eq!(tx.portal_devices(uid).await.unwrap()[0].0, "dev-2");
    assert_eq!(tx.portal_user_by_email(&acme.id, "a@example.com").await.unwrap().unwrap().1, "$argon2id$x");
}

#[tokio::test]
async fn claims_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}", dir.path().join("s.db").display())).await.unwrap();
    scenario(store).await;
}

#[tokio::test]
async fn claims_on_postgres() {
    let Some(db) = claimlink_testkit::postgres("claims_on_postgres") else { return };
    let store = Store::open(&db.url).await.unwrap();
    scenario(store).await;
}
