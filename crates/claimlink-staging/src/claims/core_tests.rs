//! The claim decision on an in-memory store with a virtual clock: no database, no sockets. What
//! the SQL does (conditional owner change, counters restarting after a window) is modelled by
//! the same rules the statements in `store.rs` state.

use std::collections::HashMap;

use super::*;
use crate::store::{ClaimerLockout, Oem, OemStatus, StagingDevice};

#[derive(Default)]
struct Memory {
    oems: HashMap<String, Oem>,
    devices: HashMap<String, StagingDevice>,
    /// key -> (failed, locked_until, last_failure)
    lockouts: HashMap<String, (i64, i64, i64)>,
    holders: HashMap<String, i64>,
    claims: Vec<(String, String)>,
}

impl ClaimStore for Memory {
    async fn oem(&mut self, id: &str) -> Result<Oem, RegistryError> {
        self.oems.get(id).cloned().ok_or_else(|| RegistryError::not_found("OEM", id))
    }
    async fn claimer_lockout(&mut self, key: &str) -> Result<Option<ClaimerLockout>, RegistryError> {
        Ok(self.lockouts.get(key).map(|&(failed, locked_until, _)| ClaimerLockout { failed, locked_until }))
    }
    async fn lock_device(&mut self, thing: &str) -> Result<bool, RegistryError> {
        Ok(self.devices.contains_key(thing))
    }
    async fn device(&mut self, thing: &str) -> Result<Option<StagingDevice>, RegistryError> {
        Ok(self.devices.get(thing).cloned())
    }
    async fn count_claimer_failure(
        &mut self,
        key: &str,
        quiet_since: i64,
        now: i64,
    ) -> Result<i64, RegistryError> {
        let e = self.lockouts.entry(key.to_owned()).or_insert((0, 0, now));
        e.0 = if e.2 < quiet_since { 1 } else { e.0 + 1 };
        e.2 = now;
        Ok(e.0)
    }
    async fn lock_claimer_until(&mut self, key: &str, until: i64) -> Result<(), RegistryError> {
        if let Some(e) = self.lockouts.get_mut(key) {
            e.1 = until;
        }
        Ok(())
    }
    async fn count_device_failure(
        &mut self,
        thing: &str,
        window_start: i64,
        now: i64,
    ) -> Result<(i64, i64), RegistryError> {
        let d = self.devices.get_mut(thing).ok_or_else(|| RegistryError::not_found("device", thing))?;
        if d.failures_since < window_start {
            d.failed_codes = 1;
            d.failures_since = now;
        } else {
            d.failed_codes += 1;
        }
        Ok((d.failed_codes, d.failures_since))
    }
    async fn lock_device_until(&mut self, thing: &str, until: i64) -> Result<(), RegistryError> {
        if let Some(d) = self.devices.get_mut(thing) {
            d.locked_until = until;
        }
        Ok(())
    }
    async fn portal_holder(&mut self, thing: &str) -> Result<Option<i64>, RegistryError> {
        Ok(self.holders.get(thing).copied())
    }
    async fn record_claim(&mut self, claim: &NewClaim<'_>, _now: i64) -> Result<i64, RegistryError> {
        self.claims.push((claim.oem_id.to_owned(), claim.thing_name.to_owned()));
        Ok(self.claims.len() as i64)
    }
    async fn set_owner(
        &mut self,
        thing: &str,
        oem: &str,
        endpoint: &str,
        claim_id: i64,
    ) -> Result<bool, RegistryError> {
        let Some(d) = self.devices.get_mut(thing) else { return Ok(false) };
        if d.owner_oem.as_deref().is_some_and(|o| o != oem) {
            return Ok(false);
        }
        d.owner_oem = Some(oem.to_owned());
        d.endpoint = Some(endpoint.to_owned());
        d.claim_id = Some(claim_id);
        d.delivered_at = None;
        (d.failed_codes, d.failures_since, d.locked_until) = (0, 0, 0);
        Ok(true)
    }
    async fn add_portal_device(&mut self, user: i64, thing: &str, _now: i64) -> Result<bool, RegistryError> {
        Ok(*self.holders.entry(thing.to_owned()).or_insert(user) == user)
    }
}

const T0: i64 = 1_800_000_000_000;
const ENDPOINT: &str = "acme.iot.test:8884";

/// Two OEMs (`acme`, `rival`), both may send devices to [`ENDPOINT`]; device `d1` with the
/// returned claim code, `d2` without one.
fn fleet() -> (Memory, String) {
    let mut rng = rand_core::UnwrapErr(getrandom::SysRng);
    let code = ClaimCode::generate(&mut rng);
    let mut m = Memory::default();
    for id in ["acme", "rival"] {
        m.oems.insert(
            id.into(),
            Oem {
                id: id.into(),
                name: id.into(),
                status: OemStatus::Active,
                claim_certificate_id: None,
                endpoints: vec![ENDPOINT.into()],
                created: T0,
            },
        );
    }
    for (thing, verifier) in [("d1", Some(code.verifier(&mut rng))), ("d2", None)] {
        m.devices.insert(
            thing.into(),
            StagingDevice {
                thing_name: thing.into(),
                certificate_id: None,
                claim_code_verifier: verifier,
                first_seen: None,
                last_seen: None,
                owner_oem: None,
                endpoint: None,
                claim_id: None,
                delivered_at: None,
                failed_codes: 0,
                failures_since: 0,
                locked_until: 0,
            },
        );
    }
    (m, code.expose_canonical().to_owned())
}

fn request<'a>(oem: &'a str, thing: &'a str, code: Option<&'a str>) -> ClaimRequest<'a> {
    ClaimRequest {
        oem_id: oem,
        claimer: Claimer::ClaimThing,
        thing_name: thing,
        endpoint: ENDPOINT,
        claim_code: code,
        via: Via::Api,
    }
}

fn run(m: &mut Memory, policy: &ClaimPolicy, req: &ClaimRequest<'_>, now: i64) -> ClaimOutcome {
    let fut = decide(m, policy, req, now);
    tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(fut).expect("decide").0
}

fn reason(o: &ClaimOutcome) -> Option<Rejection> {
    match o {
        ClaimOutcome::Rejected { reason, .. } => Some(*reason),
        ClaimOutcome::Accepted { .. } => None,
    }
}

#[test]
fn the_right_code_claims_and_the_owner_may_repeat_the_claim() {
    let (mut m, code) = fleet();
    let p = ClaimPolicy::default();
    let first = run(&mut m, &p, &request("acme", "d1", Some(&code)), T0);
    let ClaimOutcome::Accepted { claim_id, ref endpoint, delivered: false, .. } = first else {
        panic!("{first:?}")
    };
    assert_eq!(endpoint, ENDPOINT);
    assert_eq!(m.devices["d1"].owner_oem.as_deref(), Some("acme"));
    // The same claim again (with the code): the same claim id, no second claim row.
    let again = run(&mut m, &p, &request("acme", "d1", Some(&code)), T0 + 1);
    assert!(matches!(again, ClaimOutcome::Accepted { claim_id: c, .. } if c == claim_id), "{again:?}");
    assert_eq!(m.claims.len(), 1);
    // A device without a code is claimed without one.
    assert!(reason(&run(&mut m, &p, &request("acme", "d2", None), T0)).is_none());
}

#[test]
fn a_claimer_without_the_code_hears_the_same_of_unknown_owned_and_free_devices() {
    let (mut m, code) = fleet();
    let p = ClaimPolicy::default();
    run(&mut m, &p, &request("acme", "d1", Some(&code)), T0);
    let wrong = "0000-0000-0000-0000";
    for thing in ["d1", "no-such-device"] {
        assert_eq!(
            reason(&run(&mut m, &p, &request("rival", thing, None), T0)),
            Some(Rejection::ClaimCodeRequired)
        );
        assert_eq!(
            reason(&run(&mut m, &p, &request("rival", thing, Some(wrong)), T0)),
            Some(Rejection::ClaimCodeWrong)
        );
    }
    // Only the right code hears that the device is someone else's.
    assert_eq!(
        reason(&run(&mut m, &p, &request("rival", "d1", Some(&code)), T0)),
        Some(Rejection::AlreadyOwned)
    );
    assert_eq!(m.devices["d1"].owner_oem.as_deref(), Some("acme"), "nothing changed");
}

#[test]
fn wrong_codes_lock_out_the_claimer_on_the_virtual_clock_not_the_owner() {
    let (mut m, code) = fleet();
    let p = ClaimPolicy::default();
    let wrong = Some("0000-0000-0000-0000");
    // Two free wrong codes, the third locks the rival for a minute.
    assert!(matches!(
        run(&mut m, &p, &request("rival", "d1", wrong), T0),
        ClaimOutcome::Rejected { retry_at: None, .. }
    ));
    run(&mut m, &p, &request("rival", "d1", wrong), T0 + 1);
    let third = run(&mut m, &p, &request("rival", "d1", wrong), T0 + 2);
    assert!(
        matches!(third, ClaimOutcome::Rejected { reason: Rejection::ClaimCodeWrong, retry_at: Some(t) } if t == T0 + 2 + 60_000),
        "{third:?}"
    );
    // Locked: even the right code is refused for the rival until the minute is over ...
    let locked = run(&mut m, &p, &request("rival", "d1", Some(&code)), T0 + 59_000);
    assert!(
        matches!(locked, ClaimOutcome::Rejected { reason: Rejection::LockedOut, retry_at: Some(t) } if t == T0 + 2 + 60_000)
    );
    // ... while the owner with the label claims at once.
    assert!(reason(&run(&mut m, &p, &request("acme", "d1", Some(&code)), T0 + 3)).is_none());
    // The fourth wrong code, after the lockout, doubles it.
    let fourth = run(&mut m, &p, &request("rival", "d2", wrong), T0 + 70_000);
    assert_eq!(reason(&fourth), None, "d2 has no code: the rival claims it (no wrong code counted)");
    let fourth = run(&mut m, &p, &request("rival", "d1", wrong), T0 + 70_000);
    assert!(
        matches!(fourth, ClaimOutcome::Rejected { retry_at: Some(t), .. } if t == T0 + 70_000 + 120_000),
        "{fourth:?}"
    );
    // A quiet day forgets the count: the next wrong code is the first again.
    let later = T0 + 70_000 + p.quiet_ms + 1;
    assert!(matches!(
        run(&mut m, &p, &request("rival", "d1", wrong), later),
        ClaimOutcome::Rejected { retry_at: None, .. }
    ));
    assert_eq!(m.lockouts["oem:rival"].0, 1);
}

#[test]
fn the_device_ceiling_locks_the_device_for_everyone_until_its_window_ends() {
    let (mut m, code) = fleet();
    let p = ClaimPolicy { device_ceiling: 3, ..ClaimPolicy::default() };
    let wrong = Some("0000-0000-0000-0000");
    for (i, oem) in ["rival", "acme", "rival"].into_iter().enumerate() {
        run(&mut m, &p, &request(oem, "d1", wrong), T0 + i as i64);
    }
    assert_eq!(m.devices["d1"].locked_until, T0 + p.device_window_ms);
    let refused = run(&mut m, &p, &request("acme", "d1", Some(&code)), T0 + 10);
    assert!(
        matches!(refused, ClaimOutcome::Rejected { reason: Rejection::LockedOut, retry_at: Some(t) } if t == T0 + p.device_window_ms)
    );
    assert!(reason(&run(&mut m, &p, &request("acme", "d1", Some(&code)), T0 + p.device_window_ms)).is_none());
}

#[test]
fn a_portal_user_may_not_take_a_device_another_user_holds() {
    let (mut m, code) = fleet();
    let p = ClaimPolicy::default();
    let user = |id| ClaimRequest {
        claimer: Claimer::PortalUser { user_id: id, source: None },
        ..request("acme", "d1", Some(&code))
    };
    assert!(reason(&run(&mut m, &p, &user(1), T0)).is_none());
    assert_eq!(m.holders["d1"], 1);
    assert_eq!(reason(&run(&mut m, &p, &user(2), T0 + 1)), Some(Rejection::AlreadyOwned));
    assert_eq!(m.holders["d1"], 1);
    // A malformed request or an endpoint the OEM did not register changes nothing.
    let bad = ClaimRequest { endpoint: "not a host", ..request("acme", "d2", None) };
    assert_eq!(reason(&run(&mut m, &p, &bad, T0)), Some(Rejection::InvalidRequest));
    let elsewhere = ClaimRequest { endpoint: "evil.example:8884", ..request("acme", "d2", None) };
    assert_eq!(reason(&run(&mut m, &p, &elsewhere, T0)), Some(Rejection::EndpointNotRegistered));
    assert!(m.devices["d2"].owner_oem.is_none());
}
