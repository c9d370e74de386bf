//! Claims: who may send a device to which endpoint, decided in one registry transaction and
//! recorded whatever the outcome.
//!
//! A claim is accepted when the claiming OEM is ACTIVE, the endpoint is one it registered, the
//! claimer is not locked out, the device is known to staging (manifest or a connection), the
//! claim code matches whenever the factory manifest holds a verifier (the owner's repeated
//! claim included), and no other OEM (or, in a portal, no other user) holds the device.
//!
//! What a stranger can learn or block: a claimer without the right code gets the same answer
//! for a device that does not exist, one that exists and one that someone owns
//! (`ClaimCodeRequired` without a code, `ClaimCodeWrong` with one); only the right code can
//! hear `AlreadyOwned`. Wrong codes lock out the *claimer* (an OEM, a portal user, a source
//! address): from its third wrong code a minute, doubling up to a day, forgotten after a quiet
//! day. A device is locked against everyone only at [`DEVICE_CEILING`] wrong codes in a day,
//! which takes thousands of locked-out claimers to reach and still leaves an 80-bit code
//! unguessable (at most 2^24 guesses in 20 years).
//!
//! The device's row is locked for the decision and the owner is changed conditionally, so two
//! claims racing on PostgreSQL cannot both win; counters are incremented in SQL. An accepted
//! claim is a claim row and an audit row; refusals are counted in aggregate per claimer, device
//! and reason per hour ([`crate::store::ClaimRefusals`]), audited once per such
//! window, instead of a row per junk attempt. Rate limits (per OEM, per claimer and device)
//! are [`RateLimiter`]s the caller keeps in memory and checks before any registry work.

use std::collections::HashMap;

use crate::store::{ClaimerLockout, NewClaim, Oem, OemStatus, Records, StagingDevice, check_endpoint};
use claimlink_registry::{AuditRecord, RegistryError, Store, Tx};

use crate::claim_code::ClaimCode;

/// How a claim arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// An MQTT publish by the claim-thing on `{ThingName}/expresslink_config`.
    Mqtt,
    /// The claim REST API.
    Api,
}

impl Via {
    fn as_str(self) -> &'static str {
        match self {
            Self::Mqtt => "mqtt",
            Self::Api => "api",
        }
    }
}

/// Who makes a claim for the OEM: the key its wrong codes are counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimer {
    /// The OEM's claim-thing (MQTT or the claim API).
    ClaimThing,
    /// A user of the OEM's registration portal, from a source address. A portal user may claim
    /// only devices no other user of the portal holds.
    PortalUser {
        /// The portal user.
        user_id: i64,
        /// Where the request came from (locked out too: sign-ups are free).
        source: Option<std::net::IpAddr>,
    },
}

/// A claim to decide. The claim code is what the user typed; it is never stored or logged.
#[derive(Clone, Copy)]
pub struct ClaimRequest<'a> {
    /// The claiming OEM (authenticated by its claim-thing certificate).
    pub oem_id: &'a str,
    /// Who claims for it.
    pub claimer: Claimer,
    /// The device.
    pub thing_name: &'a str,
    /// Where to send it (`host[:port]`).
    pub endpoint: &'a str,
    /// The claim code from the label, if given.
    pub claim_code: Option<&'a str>,
    /// How the claim arrived.
    pub via: Via,
}

impl std::fmt::Debug for ClaimRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimRequest")
            .field("oem_id", &self.oem_id)
            .field("thing_name", &self.thing_name)
            .field("endpoint", &self.endpoint)
            .field("claim_code", &self.claim_code.map(|_| ".."))
            .field("via", &self.via)
            .field("claimer", &self.claimer)
            .finish()
    }
}

impl ClaimRequest<'_> {
    /// The lockout keys of the claimer: `oem:{uuid}`, or `portal:{oem}:{user}` and the source
    /// (`ip:{v4}` or `ip:{v6 /64}`).
    pub fn claimer_keys(&self) -> Vec<String> {
        match self.claimer {
            Claimer::ClaimThing => vec![format!("oem:{}", self.oem_id)],
            Claimer::PortalUser { user_id, source } => {
                let mut keys = vec![format!("portal:{}:{user_id}", self.oem_id)];
                keys.extend(source.map(source_key));
                keys
            }
        }
    }

    /// The claimer's name in records: its first lockout key.
    pub fn claimer_name(&self) -> String {
        self.claimer_keys().swap_remove(0)
    }
}

/// A source address as a lockout key; IPv6 by its /64 (one subscriber's usual allocation).
fn source_key(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => format!("ip:{v4}"),
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("ip:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

/// Why a claim was refused. [`Rejection::code`] is stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// The request is malformed (not JSON, no endpoint, a bad ThingName or endpoint).
    InvalidRequest,
    /// The claiming OEM is suspended or unknown.
    OemNotActive,
    /// Another OEM (or another user of the portal) holds the device. Only a claimer with the
    /// right code (or of a device that has none) hears this.
    AlreadyOwned,
    /// The manifest has a claim code for this device and none was given.
    ClaimCodeRequired,
    /// The claim code does not match, or there is no such device (the same answer, so that a
    /// claimer without the code learns nothing).
    ClaimCodeWrong,
    /// Too many wrong claim codes from this claimer (or, at its daily ceiling, for this
    /// device): refused for a while.
    LockedOut,
    /// The OEM did not register this endpoint.
    EndpointNotRegistered,
    /// Too many claims (per OEM or per device).
    RateLimited,
}

impl Rejection {
    /// The stable code.
    pub fn code(self) -> &'static str {
        match self {
            Self::InvalidRequest => "InvalidRequest",
            Self::OemNotActive => "OemNotActive",
            Self::AlreadyOwned => "AlreadyOwned",
            Self::ClaimCodeRequired => "ClaimCodeRequired",
            Self::ClaimCodeWrong => "ClaimCodeWrong",
            Self::LockedOut => "LockedOut",
            Self::EndpointNotRegistered => "EndpointNotRegistered",
            Self::RateLimited => "RateLimited",
        }
    }

    /// A sentence for people.
    pub fn message(self) -> &'static str {
        match self {
            Self::InvalidRequest => {
                "the claim is malformed: it needs a ThingName and an Endpoint of the form host[:port]"
            }
            Self::OemNotActive => "this OEM may not claim devices",
            Self::AlreadyOwned => "the device belongs to someone else; its owner must release it first",
            Self::ClaimCodeRequired => "this device needs its claim code (printed on its label)",
            Self::ClaimCodeWrong => "the device ID and claim code do not match",
            Self::LockedOut => "too many wrong claim codes; try again later",
            Self::EndpointNotRegistered => "the endpoint is not one this OEM registered",
            Self::RateLimited => "too many claims; slow down",
        }
    }

    /// The HTTP status the claim API answers with.
    pub fn http_status(self) -> u16 {
        match self {
            Self::InvalidRequest => 400,
            Self::OemNotActive | Self::ClaimCodeWrong | Self::EndpointNotRegistered => 403,
            Self::ClaimCodeRequired => 400,
            Self::AlreadyOwned => 409,
            Self::LockedOut | Self::RateLimited => 429,
        }
    }
}

/// What [`claim_with`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The OEM owns the device; deliver `endpoint` to it.
    Accepted {
        /// The claim row that made (or, when repeated, confirmed) the owner.
        claim_id: i64,
        /// The endpoint to deliver.
        endpoint: String,
        /// The device has acknowledged this claim already.
        delivered: bool,
        /// The device's birth certificate id, when staging knows it (for its claim ticket).
        certificate_id: Option<String>,
    },
    /// Refused.
    Rejected {
        /// Why.
        reason: Rejection,
        /// When a lockout ends (Unix ms).
        retry_at: Option<i64>,
    },
}

/// The lockout schedule and the windows claims are judged in (all durations in ms). Every
/// number is settable (`[claims]` in the configuration); [`ClaimPolicy::default`] is what the
/// README documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimPolicy {
    /// Wrong codes a claimer may make before its first lockout.
    pub free_wrong_codes: i64,
    /// A claimer's wrong codes are forgotten after this long without one.
    pub quiet_ms: i64,
    /// Wrong codes per device per [`ClaimPolicy::device_window_ms`], from all claimers
    /// together, before the device itself is locked for the rest of the window.
    pub device_ceiling: i64,
    /// The window of [`ClaimPolicy::device_ceiling`].
    pub device_window_ms: i64,
    /// The window refusals are counted in.
    pub refusal_window_ms: i64,
    /// The first lockout; each further wrong code doubles it.
    pub first_lockout_ms: i64,
    /// The longest lockout.
    pub max_lockout_ms: i64,
}

impl Default for ClaimPolicy {
    fn default() -> Self {
        Self {
            free_wrong_codes: 2,
            quiet_ms: 24 * 3600 * 1000,
            device_ceiling: 10_000,
            device_window_ms: 24 * 3600 * 1000,
            refusal_window_ms: 3600 * 1000,
            first_lockout_ms: 60_000,
            max_lockout_ms: 24 * 3600 * 1000,
        }
    }
}

impl ClaimPolicy {
    /// The lockout after `failed` wrong codes in a row (ms; 0 for none).
    pub fn lockout_ms(&self, failed: i64) -> i64 {
        if failed <= self.free_wrong_codes {
            return 0;
        }
        let doublings = (failed - self.free_wrong_codes - 1).min(20) as u32;
        self.first_lockout_ms.saturating_mul(1 << doublings).min(self.max_lockout_ms)
    }
}

/// The longest lockout of the default policy (ms).
pub const MAX_LOCKOUT_MS: i64 = 24 * 3600 * 1000;
/// The per-device ceiling of the default policy.
pub const DEVICE_CEILING: i64 = 10_000;

/// The time claims are decided at (Unix ms): the system clock in service, a virtual one in tests.
pub trait Clock: Send + Sync {
    /// Now, in Unix milliseconds.
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        claimlink_registry::now()
    }
}

/// What the claim decision reads and writes: staging's records inside one transaction. [`Tx`]
/// is the database's; the unit tests run the same decision on an in-memory store.
pub trait ClaimStore: Send {
    /// An OEM by id.
    fn oem(&mut self, id: &str) -> impl Future<Output = Result<Oem, RegistryError>> + Send;
    /// A claimer's lockout, if it has failed before.
    fn claimer_lockout(
        &mut self,
        key: &str,
    ) -> impl Future<Output = Result<Option<ClaimerLockout>, RegistryError>> + Send;
    /// Locks the device's row for the rest of the decision; whether it exists.
    fn lock_device(&mut self, thing: &str) -> impl Future<Output = Result<bool, RegistryError>> + Send;
    /// The device.
    fn device(
        &mut self,
        thing: &str,
    ) -> impl Future<Output = Result<Option<StagingDevice>, RegistryError>> + Send;
    /// Counts a wrong code for a claimer (from one again after `quiet_since`); the count.
    fn count_claimer_failure(
        &mut self,
        key: &str,
        quiet_since: i64,
        now: i64,
    ) -> impl Future<Output = Result<i64, RegistryError>> + Send;
    /// Locks a claimer out until `until`.
    fn lock_claimer_until(
        &mut self,
        key: &str,
        until: i64,
    ) -> impl Future<Output = Result<(), RegistryError>> + Send;
    /// Counts a wrong code for a device (its window restarting before `window_start`); the
    /// count and the window's start.
    fn count_device_failure(
        &mut self,
        thing: &str,
        window_start: i64,
        now: i64,
    ) -> impl Future<Output = Result<(i64, i64), RegistryError>> + Send;
    /// Locks the device against every claimer until `until`.
    fn lock_device_until(
        &mut self,
        thing: &str,
        until: i64,
    ) -> impl Future<Output = Result<(), RegistryError>> + Send;
    /// The portal user whose list holds the device.
    fn portal_holder(
        &mut self,
        thing: &str,
    ) -> impl Future<Output = Result<Option<i64>, RegistryError>> + Send;
    /// Appends an accepted claim; its id.
    fn record_claim(
        &mut self,
        claim: &NewClaim<'_>,
        now: i64,
    ) -> impl Future<Output = Result<i64, RegistryError>> + Send;
    /// Sets the owner unless another OEM holds the device; whether it did.
    fn set_owner(
        &mut self,
        thing: &str,
        oem: &str,
        endpoint: &str,
        claim_id: i64,
    ) -> impl Future<Output = Result<bool, RegistryError>> + Send;
    /// Lists the device under a portal user unless another holds it; whether the user does.
    fn add_portal_device(
        &mut self,
        user: i64,
        thing: &str,
        now: i64,
    ) -> impl Future<Output = Result<bool, RegistryError>> + Send;
}

impl ClaimStore for Tx {
    async fn oem(&mut self, id: &str) -> Result<Oem, RegistryError> {
        Records::oem(self, id).await
    }
    async fn claimer_lockout(&mut self, key: &str) -> Result<Option<ClaimerLockout>, RegistryError> {
        Records::claimer_lockout(self, key).await
    }
    async fn lock_device(&mut self, thing: &str) -> Result<bool, RegistryError> {
        self.lock_staging_device(thing).await
    }
    async fn device(&mut self, thing: &str) -> Result<Option<StagingDevice>, RegistryError> {
        self.staging_device(thing).await
    }
    async fn count_claimer_failure(
        &mut self,
        key: &str,
        quiet_since: i64,
        now: i64,
    ) -> Result<i64, RegistryError> {
        Records::count_claimer_failure(self, key, quiet_since, now).await
    }
    async fn lock_claimer_until(&mut self, key: &str, until: i64) -> Result<(), RegistryError> {
        Records::lock_claimer_until(self, key, until).await
    }
    async fn count_device_failure(
        &mut self,
        thing: &str,
        window_start: i64,
        now: i64,
    ) -> Result<(i64, i64), RegistryError> {
        Records::count_device_failure(self, thing, window_start, now).await
    }
    async fn lock_device_until(&mut self, thing: &str, until: i64) -> Result<(), RegistryError> {
        Records::lock_device_until(self, thing, until).await
    }
    async fn portal_holder(&mut self, thing: &str) -> Result<Option<i64>, RegistryError> {
        Records::portal_holder(self, thing).await
    }
    async fn record_claim(&mut self, claim: &NewClaim<'_>, now: i64) -> Result<i64, RegistryError> {
        Records::record_claim(self, claim, now).await
    }
    async fn set_owner(
        &mut self,
        thing: &str,
        oem: &str,
        endpoint: &str,
        claim_id: i64,
    ) -> Result<bool, RegistryError> {
        Records::set_owner(self, thing, oem, endpoint, claim_id).await
    }
    async fn add_portal_device(&mut self, user: i64, thing: &str, now: i64) -> Result<bool, RegistryError> {
        Records::add_portal_device(self, user, thing, now).await
    }
}

fn audit(req: &ClaimRequest<'_>, result: &str, detail: serde_json::Value, now: i64) -> AuditRecord {
    AuditRecord {
        actor: req.claimer_name(),
        action: "Claim".into(),
        target: req.thing_name.into(),
        result: result.into(),
        detail: Some(detail.to_string()),
        at: now,
    }
}

/// Records refusals decided before the registry was consulted (a rate limit, a malformed
/// request): `n` of them, in aggregate, in `policy`'s refusal windows.
pub async fn record_rejection(
    store: &Store,
    policy: &ClaimPolicy,
    req: &ClaimRequest<'_>,
    reason: Rejection,
    n: i64,
) -> Result<(), RegistryError> {
    let mut tx = store.begin().await?;
    count_refusals(&mut tx, policy, req, reason, false, n).await?;
    tx.commit().await
}

/// Counts refusals in the aggregate row of (claimer, device or "" when unknown, reason, hour);
/// the first of a window is audited with the window it opens.
async fn count_refusals(
    tx: &mut Tx,
    policy: &ClaimPolicy,
    req: &ClaimRequest<'_>,
    reason: Rejection,
    known: bool,
    n: i64,
) -> Result<(), RegistryError> {
    let now = claimlink_registry::now();
    let window = now - now.rem_euclid(policy.refusal_window_ms);
    let thing = if known { req.thing_name } else { "" };
    let claimer = req.claimer_name();
    if tx.count_refusals(&claimer, thing, reason.code(), window, n).await? {
        let detail = serde_json::json!({"via": req.via.as_str(), "window": window,
            "windowMs": policy.refusal_window_ms, "known": known});
        let mut record = audit(req, reason.code(), detail, now);
        record.action = "ClaimRefused".into();
        record.target = thing.into();
        tx.audit(None, &record).await?;
    }
    Ok(())
}

/// Decides a claim under `policy` at `clock`'s time and records it (claim row, owner and audit
/// row on acceptance; counters and the aggregate refusal otherwise), in one transaction.
pub async fn claim_with(
    store: &Store,
    policy: &ClaimPolicy,
    clock: &dyn Clock,
    req: &ClaimRequest<'_>,
) -> Result<ClaimOutcome, RegistryError> {
    let now = clock.now_ms();
    let mut tx = store.begin().await?;
    let (outcome, known) = decide(&mut tx, policy, req, now).await?;
    match &outcome {
        ClaimOutcome::Rejected { reason, .. } => {
            count_refusals(&mut tx, policy, req, *reason, known, 1).await?
        }
        ClaimOutcome::Accepted { claim_id, endpoint, .. } => {
            let detail =
                serde_json::json!({"endpoint": endpoint, "via": req.via.as_str(), "claimId": claim_id});
            tx.audit(None, &audit(req, "ok", detail, now)).await?
        }
    }
    tx.commit().await?;
    Ok(outcome)
}

fn rejected(reason: Rejection) -> ClaimOutcome {
    ClaimOutcome::Rejected { reason, retry_at: None }
}

/// The decision: the outcome, and whether the device is one staging knows (for the refusal's
/// record). Everything it reads and writes goes through `tx`; time is `now`.
pub async fn decide<S: ClaimStore>(
    tx: &mut S,
    policy: &ClaimPolicy,
    req: &ClaimRequest<'_>,
    now: i64,
) -> Result<(ClaimOutcome, bool), RegistryError> {
    if claimlink_registry::ThingName::new(req.thing_name).is_err() || check_endpoint(req.endpoint).is_err() {
        return Ok((rejected(Rejection::InvalidRequest), false));
    }
    let endpoint = req.endpoint.to_ascii_lowercase();
    let oem = match tx.oem(req.oem_id).await {
        Ok(o) => o,
        Err(RegistryError::NotFound { .. }) => return Ok((rejected(Rejection::OemNotActive), false)),
        Err(e) => return Err(e),
    };
    if oem.status != OemStatus::Active {
        return Ok((rejected(Rejection::OemNotActive), false));
    }
    if !oem.endpoints.contains(&endpoint) {
        return Ok((rejected(Rejection::EndpointNotRegistered), false));
    }
    if let Some(until) = locked_until(tx, &req.claimer_keys(), now).await? {
        return Ok((ClaimOutcome::Rejected { reason: Rejection::LockedOut, retry_at: Some(until) }, false));
    }
    // Concurrent claims of one device are decided one after the other from here on.
    if !tx.lock_device(req.thing_name).await? {
        // No such device: answered as a code-bearing device would be, and counted against the
        // claimer as a wrong code when one was given.
        let Some(_) = req.claim_code else { return Ok((rejected(Rejection::ClaimCodeRequired), false)) };
        let retry_at = count_claimer_failure(tx, policy, req, now).await?;
        return Ok((ClaimOutcome::Rejected { reason: Rejection::ClaimCodeWrong, retry_at }, false));
    }
    let device = tx
        .device(req.thing_name)
        .await?
        .ok_or_else(|| RegistryError::Changed { kind: "device", name: req.thing_name.to_owned() })?;
    if device.locked_until > now {
        return Ok((
            ClaimOutcome::Rejected { reason: Rejection::LockedOut, retry_at: Some(device.locked_until) },
            true,
        ));
    }
    if let Some(refusal) = check_code(tx, policy, req, &device, now).await? {
        return Ok((refusal, true));
    }
    // The claimer has proved it holds the label (or the device has no code): ownership next.
    if device.owner_oem.as_deref().is_some_and(|owner| owner != oem.id) {
        return Ok((rejected(Rejection::AlreadyOwned), true));
    }
    if let Claimer::PortalUser { user_id, .. } = req.claimer
        && tx.portal_holder(req.thing_name).await?.is_some_and(|holder| holder != user_id)
    {
        return Ok((rejected(Rejection::AlreadyOwned), true));
    }
    let outcome = match (device.owner_oem.as_deref(), device.claim_id) {
        // The owner asking again with the code: the same claim, delivered again if need be.
        (Some(_), Some(claim_id)) if device.endpoint.as_deref() == Some(&endpoint) => {
            ClaimOutcome::Accepted {
                claim_id,
                endpoint,
                delivered: device.delivered_at.is_some(),
                certificate_id: device.certificate_id.clone(),
            }
        }
        _ => {
            let claim_id = tx
                .record_claim(
                    &NewClaim {
                        oem_id: &oem.id,
                        thing_name: req.thing_name,
                        endpoint: Some(&endpoint),
                        via: req.via.as_str(),
                        accepted: true,
                        reason: "Accepted",
                    },
                    now,
                )
                .await?;
            if !tx.set_owner(req.thing_name, &oem.id, &endpoint, claim_id).await? {
                // Cannot happen under the row lock; if it did, nothing of this claim is kept.
                return Err(RegistryError::Changed { kind: "device", name: req.thing_name.to_owned() });
            }
            ClaimOutcome::Accepted {
                claim_id,
                endpoint,
                delivered: false,
                certificate_id: device.certificate_id.clone(),
            }
        }
    };
    if let Claimer::PortalUser { user_id, .. } = req.claimer
        && !tx.add_portal_device(user_id, req.thing_name, now).await?
    {
        return Err(RegistryError::Changed { kind: "device", name: req.thing_name.to_owned() });
    }
    Ok((outcome, true))
}

/// When the latest lockout still running under any of `keys` ends (claimers here, portal
/// sign-ins too).
pub async fn locked_until<S: ClaimStore>(
    tx: &mut S,
    keys: &[String],
    now: i64,
) -> Result<Option<i64>, RegistryError> {
    let mut until = None;
    for key in keys {
        if let Some(l) = tx.claimer_lockout(key).await?
            && l.locked_until > now
        {
            until = until.max(Some(l.locked_until));
        }
    }
    Ok(until)
}

/// Counts a wrong code against every key of the claimer; returns when a lockout it started
/// ends.
async fn count_claimer_failure<S: ClaimStore>(
    tx: &mut S,
    policy: &ClaimPolicy,
    req: &ClaimRequest<'_>,
    now: i64,
) -> Result<Option<i64>, RegistryError> {
    let mut until = None;
    for key in req.claimer_keys() {
        let failed = tx.count_claimer_failure(&key, now - policy.quiet_ms, now).await?;
        let lock = policy.lockout_ms(failed);
        if lock > 0 {
            tx.lock_claimer_until(&key, now + lock).await?;
            until = until.max(Some(now + lock));
        }
    }
    Ok(until)
}

/// `Some(refusal)` when the device has a claim code and the claim's is missing or wrong
/// (counted against the claimer and the device).
async fn check_code<S: ClaimStore>(
    tx: &mut S,
    policy: &ClaimPolicy,
    req: &ClaimRequest<'_>,
    device: &StagingDevice,
    now: i64,
) -> Result<Option<ClaimOutcome>, RegistryError> {
    let Some(verifier) = device.claim_code_verifier.as_deref() else { return Ok(None) };
    let Some(code) = req.claim_code else { return Ok(Some(rejected(Rejection::ClaimCodeRequired))) };
    if ClaimCode::parse(code).is_ok_and(|c| c.matches(verifier)) {
        return Ok(None);
    }
    let retry_at = count_claimer_failure(tx, policy, req, now).await?;
    let (failed, since) =
        tx.count_device_failure(&device.thing_name, now - policy.device_window_ms, now).await?;
    if failed >= policy.device_ceiling {
        tx.lock_device_until(&device.thing_name, since + policy.device_window_ms).await?;
    }
    Ok(Some(ClaimOutcome::Rejected { reason: Rejection::ClaimCodeWrong, retry_at }))
}

/// Why a release was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReleaseError {
    /// The device is not owned by the OEM asking.
    #[error("the device is not owned by this OEM")]
    NotOwner,
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// Who ends an ownership.
#[derive(Debug, Clone, Copy)]
pub enum Releaser<'a> {
    /// The owning OEM (API or portal).
    Oem(&'a str),
    /// The device itself, back in staging after its owner's claim reached it (a factory reset).
    Device,
}

/// What a release ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    /// The endpoint the device had been sent to.
    pub endpoint: String,
    /// The claim that ended.
    pub claim_id: Option<i64>,
    /// The device's birth certificate id, when known.
    pub certificate_id: Option<String>,
}

/// Ends a device's ownership (audited).
pub async fn release(store: &Store, thing_name: &str, by: Releaser<'_>) -> Result<Released, ReleaseError> {
    let mut tx = store.begin().await?;
    let device = tx.staging_device(thing_name).await?.ok_or(ReleaseError::NotOwner)?;
    let owner = device.owner_oem.clone().ok_or(ReleaseError::NotOwner)?;
    let actor = match by {
        Releaser::Oem(oem) if oem != owner => return Err(ReleaseError::NotOwner),
        Releaser::Oem(oem) => format!("oem:{oem}"),
        Releaser::Device => format!("device:{thing_name}"),
    };
    tx.clear_owner(thing_name).await?;
    tx.audit(
        None,
        &AuditRecord {
            actor,
            action: "Release".into(),
            target: thing_name.into(),
            result: "ok".into(),
            detail: Some(serde_json::json!({"previousOwner": owner, "claimId": device.claim_id}).to_string()),
            at: claimlink_registry::now(),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(Released {
        endpoint: device.endpoint.unwrap_or_default(),
        claim_id: device.claim_id,
        certificate_id: device.certificate_id,
    })
}

/// A token bucket per key: `rate` per second, bursts of `burst`. Time is a parameter (ms).
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: HashMap<String, (f64, i64)>,
}

impl RateLimiter {
    /// Longest key kept.
    pub const MAX_KEY_LEN: usize = 256;
    /// Most keys kept (about 40 MB at the longest keys).
    pub const MAX_KEYS: usize = 100_000;

    /// `rate` tokens per second, at most `burst` saved.
    pub fn new(rate: f64, burst: f64) -> Self {
        Self { rate, burst, buckets: HashMap::new() }
    }

    /// Takes a token for `key` at `now_ms`; false when none is left. Fails closed: a key longer
    /// than [`RateLimiter::MAX_KEY_LEN`] is refused (callers validate names first), and so is a
    /// new key while [`RateLimiter::MAX_KEYS`] keys are still refilling.
    pub fn allow(&mut self, key: &str, now_ms: i64) -> bool {
        if key.len() > Self::MAX_KEY_LEN {
            return false;
        }
        if self.buckets.len() >= Self::MAX_KEYS && !self.buckets.contains_key(key) {
            // Forget full buckets: a key not seen for burst/rate seconds is full again anyway.
            let (rate, burst) = (self.rate, self.burst);
            self.buckets.retain(|_, (t, at)| (*t + (now_ms - *at) as f64 / 1000.0 * rate) < burst);
            if self.buckets.len() >= Self::MAX_KEYS {
                return false;
            }
        }
        let (tokens, at) = self.buckets.entry(key.to_owned()).or_insert((self.burst, now_ms));
        *tokens = (*tokens + (now_ms - *at).max(0) as f64 / 1000.0 * self.rate).min(self.burst);
        *at = now_ms;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
#[path = "claims/core_tests.rs"]
mod core_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockouts_start_at_the_third_wrong_code_and_double_up_to_a_day() {
        let p = ClaimPolicy::default();
        assert_eq!(p.lockout_ms(1), 0);
        assert_eq!(p.lockout_ms(2), 0);
        assert_eq!(p.lockout_ms(3), 60_000);
        assert_eq!(p.lockout_ms(4), 120_000);
        assert_eq!(p.lockout_ms(5), 240_000);
        assert_eq!(p.lockout_ms(40), MAX_LOCKOUT_MS);
    }

    #[test]
    fn the_bucket_refills_at_its_rate_and_keys_are_apart() {
        let mut r = RateLimiter::new(2.0, 3.0);
        assert!((0..3).all(|_| r.allow("a", 0)));
        assert!(!r.allow("a", 0));
        assert!(r.allow("b", 0));
        assert!(!r.allow("a", 400));
        assert!(r.allow("a", 500));
        assert!(!r.allow("a", 500));
    }

    #[test]
    fn oversized_keys_and_too_many_keys_are_refused_not_stored() {
        let mut r = RateLimiter::new(1.0, 1.0);
        assert!(!r.allow(&"x".repeat(RateLimiter::MAX_KEY_LEN + 1), 0));
        assert!(r.buckets.is_empty());
        for i in 0..RateLimiter::MAX_KEYS {
            assert!(r.allow(&i.to_string(), 0));
        }
        assert!(!r.allow("one more", 0), "every bucket is still refilling");
        assert!(r.allow("one more", 1000), "after a second they are full and forgotten");
        assert_eq!(r.buckets.len(), 1);
    }

    #[test]
    fn claimer_keys_name_the_oem_or_the_portal_user_and_source() {
        let base = ClaimRequest {
            oem_id: "o",
            claimer: Claimer::ClaimThing,
            thing_name: "t",
            endpoint: "e",
            claim_code: None,
            via: Via::Api,
        };
        assert_eq!(base.claimer_keys(), ["oem:o"]);
        let v6: std::net::IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        let portal = ClaimRequest { claimer: Claimer::PortalUser { user_id: 7, source: Some(v6) }, ..base };
        assert_eq!(portal.claimer_keys(), ["portal:o:7", "ip:2001:db8:1:2::/64"]);
    }
}
