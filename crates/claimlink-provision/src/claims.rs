//! Claims: who may send a device to which endpoint, decided in one registry transaction and
//! recorded whatever the outcome.
//!
//! A claim is accepted when the claiming OEM is ACTIVE, the endpoint is one it registered, the
//! device is known to staging (manifest or a connection), no other OEM owns it, it is not locked
//! out, and - when the factory manifest holds a claim code verifier - the claim code matches.
//! Wrong codes are counted per device; from the third in a row the device is locked for a
//! minute, doubling with each further wrong code up to a day. A correct claim resets the count.
//! A repeated claim by the owner is accepted again (idempotent) without a new owner change.
//! Every attempt is a claim row and an audit row. Rate limits (per OEM, per device) are
//! [`RateLimiter`]s the caller keeps in memory and checks before [`claim`].

use std::collections::HashMap;

use claimlink_registry::staging::{NewClaim, OemStatus, StagingDevice, check_endpoint};
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

/// A claim to decide. The claim code is what the user typed; it is never stored or logged.
#[derive(Clone, Copy)]
pub struct ClaimRequest<'a> {
    /// The claiming OEM (authenticated by its claim-thing certificate).
    pub oem_id: &'a str,
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
            .finish()
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
    /// Staging has never heard of this device.
    DeviceUnknown,
    /// Another OEM owns the device.
    AlreadyOwned,
    /// The manifest has a claim code for this device and none was given.
    ClaimCodeRequired,
    /// The claim code does not match.
    ClaimCodeWrong,
    /// Too many wrong claim codes: the device is locked for a while.
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
            Self::DeviceUnknown => "DeviceUnknown",
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
            Self::DeviceUnknown => "no device with this ID has been made or seen",
            Self::AlreadyOwned => "the device belongs to someone else; its owner must release it first",
            Self::ClaimCodeRequired => "this device needs its claim code (printed on its label)",
            Self::ClaimCodeWrong => "the claim code does not match this device",
            Self::LockedOut => "too many wrong claim codes for this device; try again later",
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
            Self::DeviceUnknown => 404,
            Self::AlreadyOwned => 409,
            Self::LockedOut | Self::RateLimited => 429,
        }
    }
}

/// What [`claim`] decided.
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
    },
    /// Refused.
    Rejected {
        /// Why.
        reason: Rejection,
        /// When a lockout ends (Unix ms).
        retry_at: Option<i64>,
    },
}

/// Wrong codes allowed before the first lockout.
pub const FREE_WRONG_CODES: i64 = 2;
/// The first lockout (ms); each further wrong code doubles it.
pub const FIRST_LOCKOUT_MS: i64 = 60_000;
/// The longest lockout (ms).
pub const MAX_LOCKOUT_MS: i64 = 24 * 3600 * 1000;

/// The lockout after `failed` wrong codes in a row (ms; 0 for none).
pub fn lockout_ms(failed: i64) -> i64 {
    if failed <= FREE_WRONG_CODES {
        return 0;
    }
    let doublings = (failed - FREE_WRONG_CODES - 1).min(20) as u32;
    FIRST_LOCKOUT_MS.saturating_mul(1 << doublings).min(MAX_LOCKOUT_MS)
}

fn audit(req: &ClaimRequest<'_>, result: &str, claim_id: i64, now: i64) -> AuditRecord {
    AuditRecord {
        actor: format!("oem:{}", req.oem_id),
        action: "Claim".into(),
        target: req.thing_name.into(),
        result: result.into(),
        detail: Some(
            serde_json::json!({"endpoint": req.endpoint, "via": req.via.as_str(), "claimId": claim_id})
                .to_string(),
        ),
        at: now,
    }
}

/// Records a refusal made before the registry was consulted (a rate limit, a malformed
/// request).
pub async fn record_rejection(
    store: &Store,
    req: &ClaimRequest<'_>,
    reason: Rejection,
) -> Result<(), RegistryError> {
    let mut tx = store.begin().await?;
    reject(&mut tx, req, reason).await?;
    tx.commit().await
}

async fn reject(tx: &mut Tx, req: &ClaimRequest<'_>, reason: Rejection) -> Result<(), RegistryError> {
    let endpoint = (req.endpoint.len() <= 300).then_some(req.endpoint);
    let thing: String = req.thing_name.chars().take(128).collect();
    let id = tx
        .record_claim(&NewClaim {
            oem_id: req.oem_id,
            thing_name: &thing,
            endpoint,
            via: req.via.as_str(),
            accepted: false,
            reason: reason.code(),
        })
        .await?;
    tx.audit(
        None,
        &audit(
            &ClaimRequest { thing_name: &thing, endpoint: endpoint.unwrap_or(""), ..*req },
            reason.code(),
            id,
            claimlink_registry::now(),
        ),
    )
    .await
}

/// Decides a claim and records it (claim row + audit row, and the owner on acceptance), in one
/// transaction.
pub async fn claim(store: &Store, req: &ClaimRequest<'_>) -> Result<ClaimOutcome, RegistryError> {
    let now = claimlink_registry::now();
    let mut tx = store.begin().await?;
    let outcome = decide(&mut tx, req, now).await?;
    match &outcome {
        ClaimOutcome::Rejected { reason, .. } => reject(&mut tx, req, *reason).await?,
        ClaimOutcome::Accepted { claim_id, .. } => tx.audit(None, &audit(req, "ok", *claim_id, now)).await?,
    }
    tx.commit().await?;
    Ok(outcome)
}

async fn decide(tx: &mut Tx, req: &ClaimRequest<'_>, now: i64) -> Result<ClaimOutcome, RegistryError> {
    let rejected = |reason| Ok(ClaimOutcome::Rejected { reason, retry_at: None });
    if claimlink_registry::validate_thing_name("thing name", req.thing_name).is_err()
        || check_endpoint(req.endpoint).is_err()
    {
        return rejected(Rejection::InvalidRequest);
    }
    let endpoint = req.endpoint.to_ascii_lowercase();
    let oem = match tx.oem(req.oem_id).await {
        Ok(o) => o,
        Err(RegistryError::NotFound { .. }) => return rejected(Rejection::OemNotActive),
        Err(e) => return Err(e),
    };
    if oem.status != OemStatus::Active {
        return rejected(Rejection::OemNotActive);
    }
    if !oem.endpoints.contains(&endpoint) {
        return rejected(Rejection::EndpointNotRegistered);
    }
    let Some(device) = tx.staging_device(req.thing_name).await? else {
        return rejected(Rejection::DeviceUnknown);
    };
    match device.owner_oem.as_deref() {
        Some(owner) if owner != oem.id => return rejected(Rejection::AlreadyOwned),
        Some(_) if device.endpoint.as_deref() == Some(&endpoint) => {
            // The owner asking again: the same claim, delivered again if need be.
            if let Some(claim_id) = device.claim_id {
                return Ok(ClaimOutcome::Accepted {
                    claim_id,
                    endpoint,
                    delivered: device.delivered_at.is_some(),
                });
            }
        }
        _ => {}
    }
    if device.locked_until > now {
        return Ok(ClaimOutcome::Rejected {
            reason: Rejection::LockedOut,
            retry_at: Some(device.locked_until),
        });
    }
    if let Some(reason) = check_code(tx, &device, req.claim_code, now).await? {
        return Ok(reason);
    }
    let claim_id = tx
        .record_claim(&NewClaim {
            oem_id: &oem.id,
            thing_name: req.thing_name,
            endpoint: Some(&endpoint),
            via: req.via.as_str(),
            accepted: true,
            reason: "Accepted",
        })
        .await?;
    tx.set_owner(req.thing_name, &oem.id, &endpoint, claim_id).await?;
    Ok(ClaimOutcome::Accepted { claim_id, endpoint, delivered: false })
}

/// `Some(rejection)` when the code is missing or wrong (counting the wrong one).
async fn check_code(
    tx: &mut Tx,
    device: &StagingDevice,
    code: Option<&str>,
    now: i64,
) -> Result<Option<ClaimOutcome>, RegistryError> {
    let Some(verifier) = device.claim_code_verifier.as_deref() else { return Ok(None) };
    let Some(code) = code else {
        return Ok(Some(ClaimOutcome::Rejected { reason: Rejection::ClaimCodeRequired, retry_at: None }));
    };
    if ClaimCode::parse(code).is_ok_and(|c| c.matches(verifier)) {
        return Ok(None);
    }
    let failed = device.failed_codes + 1;
    let lock = lockout_ms(failed);
    let until = if lock > 0 { now + lock } else { 0 };
    tx.set_code_failures(&device.thing_name, failed, until).await?;
    Ok(Some(ClaimOutcome::Rejected {
        reason: Rejection::ClaimCodeWrong,
        retry_at: (until > 0).then_some(until),
    }))
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

/// Ends a device's ownership (audited). Returns the endpoint it had been sent to.
pub async fn release(store: &Store, thing_name: &str, by: Releaser<'_>) -> Result<String, ReleaseError> {
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
    Ok(device.endpoint.unwrap_or_default())
}

/// A token bucket per key: `rate` per second, bursts of `burst`. Time is a parameter (ms).
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: HashMap<String, (f64, i64)>,
}

impl RateLimiter {
    /// `rate` tokens per second, at most `burst` saved.
    pub fn new(rate: f64, burst: f64) -> Self {
        Self { rate, burst, buckets: HashMap::new() }
    }

    /// Takes a token for `key` at `now_ms`; false when none is left.
    pub fn allow(&mut self, key: &str, now_ms: i64) -> bool {
        if self.buckets.len() > 100_000 {
            // Forget full buckets: a key not seen for burst/rate seconds is full again anyway.
            let (rate, burst) = (self.rate, self.burst);
            self.buckets.retain(|_, (t, at)| (*t + (now_ms - *at) as f64 / 1000.0 * rate) < burst);
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
mod tests {
    use super::*;

    #[test]
    fn lockouts_start_at_the_third_wrong_code_and_double_up_to_a_day() {
        assert_eq!(lockout_ms(1), 0);
        assert_eq!(lockout_ms(2), 0);
        assert_eq!(lockout_ms(3), 60_000);
        assert_eq!(lockout_ms(4), 120_000);
        assert_eq!(lockout_ms(5), 240_000);
        assert_eq!(lockout_ms(40), MAX_LOCKOUT_MS);
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
}
