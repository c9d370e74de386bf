//! Claim authorisation and the staging records behind it, on SQLite and on PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use claimlink_registry::Store;
use claimlink_staging::claim_code::ClaimCode;
use claimlink_staging::claims::{
    self, ClaimOutcome, ClaimRequest, Claimer, Rejection, ReleaseError, Releaser, Via,
};
use claimlink_staging::store::Records as _;

/// A claim under the default policy, now.
async fn claim(
    store: &Store,
    req: &ClaimRequest<'_>,
) -> Result<ClaimOutcome, claimlink_registry::RegistryError> {
    claims::claim_with(store, &claims::ClaimPolicy::default(), &claims::SystemClock, req).await
}

fn rng() -> rand_core::UnwrapErr<getrandom::SysRng> {
    rand_core::UnwrapErr(getrandom::SysRng)
}

fn request<'a>(oem: &'a str, thing: &'a str, endpoint: &'a str, code: Option<&'a str>) -> ClaimRequest<'a> {
    ClaimRequest {
        oem_id: oem,
        claimer: Claimer::ClaimThing,
        thing_name: thing,
        endpoint,
        claim_code: code,
        via: Via::Api,
    }
}

fn rejected(o: &ClaimOutcome) -> Option<Rejection> {
    match o {
        ClaimOutcome::Rejected { reason, .. } => Some(*reason),
        ClaimOutcome::Accepted { .. } => None,
    }
}

fn portal<'a>(
    oem: &'a str,
    user: i64,
    thing: &'a str,
    ep: &'a str,
    code: Option<&'a str>,
) -> ClaimRequest<'a> {
    let source = Some(std::net::IpAddr::from([192, 0, 2, user as u8]));
    ClaimRequest { claimer: Claimer::PortalUser { user_id: user, source }, ..request(oem, thing, ep, code) }
}

async fn scenario(store: Store) {
    let code = ClaimCode::generate(&mut rng());
    let verifier = code.verifier(&mut rng());
    let good = code.expose_grouped();
    let mut tx = store.begin().await.unwrap();
    let acme = tx.create_oem("Acme", &["acme.example.com:8883".into()]).await.unwrap();
    let rival = tx.create_oem("Rival", &["rival.example.com".into()]).await.unwrap();
    let third = tx.create_oem("Third", &["third.example.com".into()]).await.unwrap();
    assert!(tx.create_oem("Acme", &[]).await.unwrap_err().is_conflict());
    assert!(tx.create_oem("Bad", &["not a host".into()]).await.is_err());
    assert!(tx.import_device("dev-1", Some(&"ab".repeat(32)), Some(&verifier)).await.unwrap());
    assert!(!tx.import_device("dev-1", Some(&"ab".repeat(32)), Some(&verifier)).await.unwrap(), "idempotent");
    tx.import_device("dev-2", None, None).await.unwrap();
    tx.commit().await.unwrap();
    let ep = "acme.example.com:8883";

    // Without the code, an unknown device and a code-bearing one answer alike.
    let o = claim(&store, &request(&third.id, "nobody", "third.example.com", None)).await.unwrap();
    assert_eq!(rejected(&o), Some(Rejection::ClaimCodeRequired));
    let o = claim(&store, &request(&third.id, "dev-1", "third.example.com", None)).await.unwrap();
    assert_eq!(rejected(&o), Some(Rejection::ClaimCodeRequired));
    let o = claim(&store, &request(&third.id, "nobody", "third.example.com", Some(&good))).await.unwrap();
    assert_eq!(rejected(&o), Some(Rejection::ClaimCodeWrong), "an unknown device looks like a wrong code");
    let o = claim(&store, &request(&acme.id, "dev-1", "rival.example.com", Some(&good))).await.unwrap();
    assert_eq!(rejected(&o), Some(Rejection::EndpointNotRegistered));
    for n in 1..=2 {
        let o = claim(&store, &request(&acme.id, "dev-1", ep, Some("0000-0000-0000-0000"))).await.unwrap();
        assert_eq!(o, ClaimOutcome::Rejected { reason: Rejection::ClaimCodeWrong, retry_at: None });
        assert_eq!(
            store.read().await.unwrap().staging_device("dev-1").await.unwrap().unwrap().failed_codes,
            n
        );
    }
    // Case and dashes do not matter.
    let o = claim(&store, &request(&acme.id, "dev-1", "ACME.example.com:8883", Some(&good.to_lowercase())))
        .await
        .unwrap();
    let ClaimOutcome::Accepted { claim_id, endpoint, delivered: false, certificate_id } = o else {
        panic!("{o:?}")
    };
    assert_eq!(certificate_id, Some("ab".repeat(32)), "the manifest's certificate, for the claim ticket");
    assert_eq!(endpoint, ep);
    let dev = store.read().await.unwrap().staging_device("dev-1").await.unwrap().unwrap();
    assert_eq!(
        (dev.owner_oem.as_deref(), dev.failed_codes, dev.claim_id),
        (Some(acme.id.as_str()), 0, Some(claim_id))
    );

    // The owner again: the code is checked every time; with it, the same claim.
    let o = claim(&store, &request(&acme.id, "dev-1", ep, None)).await.unwrap();
    assert_eq!(rejected(&o), Some(Rejection::ClaimCodeRequired), "the owner's re-claim needs the code");
    let again = claim(&store, &request(&acme.id, "dev-1", ep, Some(&good))).await.unwrap();
    assert!(matches!(again, ClaimOutcome::Accepted { claim_id: c, .. } if c == claim_id));
    // A rival without the code learns nothing; with it, that someone owns the device.
    let o = claim(&store, &request(&rival.id, "dev-1", "rival.example.com", Some("2222-2222-2222-2222")))
        .await
        .unwrap();
    assert_eq!(rejected(&o), Some(Rejection::ClaimCodeWrong));
    let o = claim(&store, &request(&rival.id, "dev-1", "rival.example.com", Some(&good))).await.unwrap();
    assert_eq!(rejected(&o), Some(Rejection::AlreadyOwned));
    assert!(matches!(
        claims::release(&store, "dev-1", Releaser::Oem(&rival.id)).await,
        Err(ReleaseError::NotOwner)
    ));

    // Delivery, then the device's own return (a factory reset) ends the ownership.
    let mut tx = store.begin().await.unwrap();
    tx.mark_delivered("dev-1", claim_id).await.unwrap();
    tx.commit().await.unwrap();
    let again = claim(&store, &request(&acme.id, "dev-1", ep, Some(&good))).await.unwrap();
    assert!(matches!(again, ClaimOutcome::Accepted { delivered: true, .. }));
    let released = claims::release(&store, "dev-1", Releaser::Device).await.unwrap();
    assert_eq!((released.endpoint.as_str(), released.claim_id), (ep, Some(claim_id)));
    let o = claim(&store, &request(&rival.id, "dev-1", "rival.example.com", Some(&good))).await.unwrap();
    assert!(matches!(o, ClaimOutcome::Accepted { .. }), "a released device can be claimed again");

    // Wrong codes lock out the claimer, not the device: the owner still claims it.
    let code3 = ClaimCode::generate(&mut rng());
    let mut tx = store.begin().await.unwrap();
    tx.import_device("dev-3", None, Some(&code3.verifier(&mut rng()))).await.unwrap();
    tx.commit().await.unwrap();
    let mut last = 0;
    for n in 1..=3 {
        let o = claim(&store, &request(&third.id, "dev-3", "third.example.com", Some("1111-1111-1111-1111")))
            .await
            .unwrap();
        match (n, o) {
            // Its wrong guess at "nobody" counted already: the lockout starts at the second.
            (1, ClaimOutcome::Rejected { reason: Rejection::ClaimCodeWrong, retry_at: None }) => {}
            (2, ClaimOutcome::Rejected { reason: Rejection::ClaimCodeWrong, retry_at: Some(at) }) => {
                last = at
            }
            (3, ClaimOutcome::Rejected { reason: Rejection::LockedOut, retry_at: Some(at) }) => {
                assert_eq!(at, last)
            }
            (n, o) => panic!("attempt {n}: {o:?}"),
        }
    }
    let o = claim(&store, &request(&third.id, "dev-3", "third.example.com", Some(code3.expose_canonical())))
        .await
        .unwrap();
    assert_eq!(rejected(&o), Some(Rejection::LockedOut), "the locked-out claimer stays locked out");
    let o = claim(&store, &request(&acme.id, "dev-3", ep, Some(code3.expose_canonical()))).await.unwrap();
    assert!(matches!(o, ClaimOutcome::Accepted { .. }), "the stranger did not lock the owner out: {o:?}");

    // A device without a manifest code (seen only) is claimed without one.
    let o = claim(&store, &request(&acme.id, "dev-2", ep, None)).await.unwrap();
    assert!(matches!(o, ClaimOutcome::Accepted { .. }));

    // Accepted claims are rows; refusals are counted in aggregate, audited once per window.
    let mut tx = store.read().await.unwrap();
    let rows = tx.claims(None, Some("dev-1"), 100).await.unwrap();
    let reasons: Vec<&str> = rows.iter().map(|c| c.reason.as_str()).collect();
    assert_eq!(reasons, ["Accepted", "Accepted"]);
    assert!(rows.iter().any(|c| c.released_at.is_some()));
    let third_refusals = tx.claim_refusals(Some(&format!("oem:{}", third.id)), None, 100).await.unwrap();
    let count = |thing: &str, reason: &str| {
        third_refusals
            .iter()
            .filter(|r| r.thing_name == thing && r.reason == reason)
            .map(|r| r.attempts)
            .sum::<i64>()
    };
    assert_eq!(count("", "ClaimCodeRequired"), 1, "an unknown device is recorded without its name");
    assert_eq!(count("", "ClaimCodeWrong"), 1);
    assert_eq!(count("dev-1", "ClaimCodeRequired"), 1);
    assert_eq!(count("dev-3", "ClaimCodeWrong"), 2);
    assert_eq!(count("dev-3", "LockedOut"), 0, "a lockout is the claimer's: recorded without the device");
    assert_eq!(count("", "LockedOut"), 2);
    assert_eq!(tx.owned_devices(&acme.id).await.unwrap().len(), 2);

    // Portal users: a device is in one user's list; another user, even with the code, is refused.
    drop(tx);
    let mut tx = store.begin().await.unwrap();
    let uid = tx.create_portal_user(&acme.id, "a@example.com", "$argon2id$x").await.unwrap();
    let other = tx.create_portal_user(&acme.id, "b@example.com", "$argon2id$y").await.unwrap();
    assert!(tx.create_portal_user(&acme.id, "a@example.com", "$argon2id$y").await.is_err());
    let token = tx.create_portal_session(uid, 60_000).await.unwrap();
    tx.commit().await.unwrap();
    let code4 = ClaimCode::generate(&mut rng());
    let mut tx = store.begin().await.unwrap();
    tx.import_device("dev-4", None, Some(&code4.verifier(&mut rng()))).await.unwrap();
    tx.commit().await.unwrap();
    let o = claim(&store, &portal(&acme.id, uid, "dev-4", ep, Some(code4.expose_canonical()))).await.unwrap();
    assert!(matches!(o, ClaimOutcome::Accepted { .. }), "{o:?}");
    let o =
        claim(&store, &portal(&acme.id, other, "dev-4", ep, Some(code4.expose_canonical()))).await.unwrap();
    assert_eq!(rejected(&o), Some(Rejection::AlreadyOwned), "another portal user cannot take it");
    let o = claim(&store, &portal(&acme.id, other, "dev-4", ep, Some("3333-3333-3333-3333"))).await.unwrap();
    assert_eq!(rejected(&o), Some(Rejection::ClaimCodeWrong));
    let mut tx = store.read().await.unwrap();
    assert_eq!(tx.portal_holder("dev-4").await.unwrap(), Some(uid), "nothing changed");
    assert!(tx.portal_devices(other).await.unwrap().is_empty());
    let lock = tx.claimer_lockout("ip:192.0.2.2").await.unwrap().unwrap();
    assert_eq!(lock.failed, 1, "the source address is counted too");
    assert_eq!(tx.portal_session(&token).await.unwrap().unwrap().email, "a@example.com");
    assert!(tx.portal_session("00").await.unwrap().is_none());
    assert_eq!(tx.portal_devices(uid).await.unwrap()[0].0, "dev-4");
    assert_eq!(tx.portal_user_by_email(&acme.id, "a@example.com").await.unwrap().unwrap().1, "$argon2id$x");
    drop(tx);
    // A release empties the holder's list, and the other user may then add it.
    claims::release(&store, "dev-4", Releaser::Oem(&acme.id)).await.unwrap();
    let o =
        claim(&store, &portal(&acme.id, other, "dev-4", ep, Some(code4.expose_canonical()))).await.unwrap();
    assert!(matches!(o, ClaimOutcome::Accepted { .. }), "{o:?}");
}

/// Claimers x devices at once: exactly one owner per device, and every wrong code counted.
async fn race(store: Store) {
    const OEMS: usize = 6;
    const DEVICES: usize = 12;
    let mut codes = Vec::new();
    let mut tx = store.begin().await.unwrap();
    let mut oems = Vec::new();
    for i in 0..OEMS {
        oems.push(tx.create_oem(&format!("Racer {i}"), &[format!("racer{i}.example.com")]).await.unwrap().id);
    }
    for d in 0..DEVICES {
        let code = ClaimCode::generate(&mut rng());
        tx.import_device(&format!("race-{d}"), None, Some(&code.verifier(&mut rng()))).await.unwrap();
        codes.push(code.expose_canonical().to_owned());
    }
    tx.commit().await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, oem) in oems.iter().enumerate() {
        for (d, code) in codes.iter().enumerate() {
            let (store, oem, code) = (store.clone(), oem.clone(), code.clone());
            tasks.spawn(async move {
                let thing = format!("race-{d}");
                let endpoint = format!("racer{i}.example.com");
                let o = claim(&store, &request(&oem, &thing, &endpoint, Some(&code))).await.unwrap();
                (thing, oem, matches!(o, ClaimOutcome::Accepted { .. }))
            });
        }
    }
    let mut winners = std::collections::HashMap::<String, Vec<String>>::new();
    while let Some(r) = tasks.join_next().await {
        let (thing, oem, won) = r.unwrap();
        if won {
            winners.entry(thing).or_default().push(oem);
        }
    }
    let mut tx = store.read().await.unwrap();
    for d in 0..DEVICES {
        let thing = format!("race-{d}");
        let won = winners.get(&thing).cloned().unwrap_or_default();
        assert_eq!(won.len(), 1, "{thing}: accepted for {won:?}");
        let owner = tx.staging_device(&thing).await.unwrap().unwrap().owner_oem;
        assert_eq!(owner.as_deref(), Some(won[0].as_str()));
    }
    drop(tx);
    // Concurrent wrong codes at one device, from every racer: each one counted.
    let code = ClaimCode::generate(&mut rng());
    let mut tx = store.begin().await.unwrap();
    tx.import_device("race-wrong", None, Some(&code.verifier(&mut rng()))).await.unwrap();
    tx.commit().await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, oem) in oems.iter().enumerate() {
        for _ in 0..2 {
            let (store, oem) = (store.clone(), oem.clone());
            tasks.spawn(async move {
                let endpoint = format!("racer{i}.example.com");
                claim(&store, &request(&oem, "race-wrong", &endpoint, Some("4444-4444-4444-4444")))
                    .await
                    .unwrap()
            });
        }
    }
    while let Some(r) = tasks.join_next().await {
        assert_eq!(rejected(&r.unwrap()), Some(Rejection::ClaimCodeWrong));
    }
    let mut tx = store.read().await.unwrap();
    assert_eq!(tx.staging_device("race-wrong").await.unwrap().unwrap().failed_codes, (OEMS * 2) as i64);
    for oem in &oems {
        assert_eq!(tx.claimer_lockout(&format!("oem:{oem}")).await.unwrap().unwrap().failed, 2);
    }
}

#[tokio::test]
async fn claims_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = claimlink_staging::store::open(&format!("sqlite://{}", dir.path().join("s.db").display()))
        .await
        .unwrap();
    scenario(store).await;
}

#[tokio::test]
async fn claims_on_postgres() {
    let Some(db) = claimlink_testkit::postgres("claims_on_postgres") else { return };
    let store = claimlink_staging::store::open(&db.url).await.unwrap();
    scenario(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_on_sqlite_have_one_winner_and_count_every_wrong_code() {
    let dir = tempfile::tempdir().unwrap();
    let store = claimlink_staging::store::open(&format!("sqlite://{}", dir.path().join("s.db").display()))
        .await
        .unwrap();
    race(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_on_postgres_have_one_winner_and_count_every_wrong_code() {
    let Some(db) = claimlink_testkit::postgres("concurrent_claims_on_postgres") else { return };
    let store = claimlink_staging::store::open(&db.url).await.unwrap();
    race(store).await;
}
