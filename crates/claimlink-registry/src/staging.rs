//! Staging's records: OEMs with their claim-thing certificate and registered endpoints, the
//! devices staging knows (from a factory manifest or their first connection), every claim
//! attempt, staging administrators' tokens, and the registration portal's users.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{RegistryError, Result, Tx, created, now_ms, random_hex, token_hash};

/// Whether an OEM may claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OemStatus {
    /// It may claim.
    Active,
    /// It may not (claims are refused with `OemNotActive`).
    Suspended,
}

impl OemStatus {
    /// `ACTIVE` or `SUSPENDED`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Suspended => "SUSPENDED",
        }
    }

    /// Parses `ACTIVE` or `SUSPENDED`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "ACTIVE" => Ok(Self::Active),
            "SUSPENDED" => Ok(Self::Suspended),
            _ => Err(RegistryError::invalid("OEM status must be ACTIVE or SUSPENDED")),
        }
    }
}

/// An OEM registered with staging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Oem {
    /// Its UUID: the claim-thing's MQTT client id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// ACTIVE or SUSPENDED.
    pub status: OemStatus,
    /// Id (lowercase hex SHA-256) of its claim-thing certificate, once uploaded.
    pub claim_certificate_id: Option<String>,
    /// The endpoints (`host[:port]`) it may send devices to.
    pub endpoints: Vec<String>,
    /// Unix ms.
    pub created: i64,
}

/// A device as staging knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagingDevice {
    /// ThingName.
    pub thing_name: String,
    /// Its birth certificate's id, when known (manifest or first connection).
    pub certificate_id: Option<String>,
    /// The claim code verifier from the manifest (`hmac-sm3$salt$mac`). Not a secret by itself,
    /// but never shown by the APIs.
    pub claim_code_verifier: Option<String>,
    /// First connection (Unix ms).
    pub first_seen: Option<i64>,
    /// Last connection (Unix ms).
    pub last_seen: Option<i64>,
    /// The owning OEM.
    pub owner_oem: Option<String>,
    /// Where the owner sends it.
    pub endpoint: Option<String>,
    /// The accepted claim that made the owner.
    pub claim_id: Option<i64>,
    /// When the device acknowledged that claim.
    pub delivered_at: Option<i64>,
    /// Wrong claim codes for this device, from anyone, since `failures_since`.
    pub failed_codes: i64,
    /// Start of the window `failed_codes` counts in (Unix ms; 0: none yet).
    pub failures_since: i64,
    /// Claims of this device are refused until then (Unix ms): only once its ceiling of wrong
    /// codes per window is reached.
    pub locked_until: i64,
}

/// A claimer's wrong claim codes and lockout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimerLockout {
    /// Wrong codes counted (reset after a quiet period).
    pub failed: i64,
    /// Refused until then (Unix ms).
    pub locked_until: i64,
}

/// Refused claims of one claimer, device, reason and window.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimRefusals {
    /// Who was refused (`oem:{uuid}`, `portal:{user}`, ...).
    pub claimer: String,
    /// The device, or empty when staging does not know the name given.
    pub thing_name: String,
    /// The stable reason code.
    pub reason: String,
    /// Start of the window (Unix ms).
    pub window_start: i64,
    /// Refusals in the window.
    pub attempts: i64,
    /// First and last refusal (Unix ms).
    pub first_at: i64,
    /// Last refusal.
    pub last_at: i64,
}

/// One claim attempt.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimRecord {
    /// Sequence number.
    pub id: i64,
    /// The claiming OEM.
    pub oem_id: String,
    /// The device.
    pub thing_name: String,
    /// The endpoint asked for.
    pub endpoint: Option<String>,
    /// `mqtt` or `api`.
    pub via: String,
    /// `ACCEPTED` or `REJECTED`.
    pub result: String,
    /// Why (a stable code; `Accepted` when accepted).
    pub reason: String,
    /// Unix ms.
    pub at: i64,
    /// When the device acknowledged it.
    pub delivered_at: Option<i64>,
    /// When the ownership it made ended.
    pub released_at: Option<i64>,
}

/// A new claim row.
#[derive(Debug, Clone, Copy)]
pub struct NewClaim<'a> {
    /// The claiming OEM.
    pub oem_id: &'a str,
    /// The device.
    pub thing_name: &'a str,
    /// The endpoint asked for.
    pub endpoint: Option<&'a str>,
    /// `mqtt` or `api`.
    pub via: &'a str,
    /// Accepted?
    pub accepted: bool,
    /// Stable reason code.
    pub reason: &'a str,
}

/// A registration portal user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortalUser {
    /// Id.
    pub id: i64,
    /// The OEM whose portal it is.
    pub oem_id: String,
    /// E-mail address (the sign-in name).
    pub email: String,
}

fn uuid_v4() -> Result<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|_| RegistryError::Randomness)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    Ok(format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32]))
}

/// `host` or `host:port`: a DNS name (or IP literal) of at most 253 characters.
pub fn check_endpoint(endpoint: &str) -> Result<()> {
    let (host, port) = match endpoint.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (endpoint, None),
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    if host_ok && port_ok {
        Ok(())
    } else {
        Err(RegistryError::invalid(format!("endpoint {endpoint:?} is not host[:port]")))
    }
}

fn device_from(r: &AnyRow) -> Result<StagingDevice> {
    Ok(StagingDevice {
        thing_name: r.try_get("thing_name")?,
        certificate_id: r.try_get("certificate_id")?,
        claim_code_verifier: r.try_get("claim_code_verifier")?,
        first_seen: r.try_get("first_seen")?,
        last_seen: r.try_get("last_seen")?,
        owner_oem: r.try_get("owner_oem")?,
        endpoint: r.try_get("endpoint")?,
        claim_id: r.try_get("claim_id")?,
        delivered_at: r.try_get("delivered_at")?,
        failed_codes: r.try_get("failed_codes")?,
        failures_since: r.try_get("failures_since")?,
        locked_until: r.try_get("locked_until")?,
    })
}

fn claim_from(r: &AnyRow) -> Result<ClaimRecord> {
    Ok(ClaimRecord {
        id: r.try_get("id")?,
        oem_id: r.try_get("oem_id")?,
        thing_name: r.try_get("thing_name")?,
        endpoint: r.try_get("endpoint")?,
        via: r.try_get("via")?,
        result: r.try_get("result")?,
        reason: r.try_get("reason")?,
        at: r.try_get("at")?,
        delivered_at: r.try_get("delivered_at")?,
        released_at: r.try_get("released_at")?,
    })
}

impl Tx {
    async fn oem_from(&mut self, r: &AnyRow) -> Result<Oem> {
        let id: String = r.try_get("id")?;
        let endpoints =
            sqlx::query("SELECT endpoint FROM staging_oem_endpoints WHERE oem_id = $1 ORDER BY endpoint")
                .bind(&id)
                .fetch_all(&mut *self.tx)
                .await?
                .iter()
                .map(|r| r.try_get("endpoint"))
                .collect::<Result<_, _>>()?;
        Ok(Oem {
            status: OemStatus::parse(&r.try_get::<String, _>("status")?)?,
            name: r.try_get("name")?,
            claim_certificate_id: r.try_get("claim_certificate_id")?,
            created: r.try_get("created")?,
            endpoints,
            id,
        })
    }

    /// Registers an OEM (ACTIVE) with the endpoints it may send devices to.
    pub async fn create_oem(&mut self, name: &str, endpoints: &[String]) -> Result<Oem> {
        if name.trim().is_empty() || name.len() > 128 {
            return Err(RegistryError::invalid("OEM name must be 1-128 characters"));
        }
        for e in endpoints {
            check_endpoint(e)?;
        }
        let id = uuid_v4()?;
        let rows = sqlx::query(
            "INSERT INTO staging_oems (id, name, status, created) VALUES ($1, $2, 'ACTIVE', $3) ON CONFLICT DO NOTHING",
        )
        .bind(&id)
        .bind(name)
        .bind(now_ms())
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        created(rows, "OEM", name)?;
        for e in endpoints {
            self.add_oem_endpoint(&id, e).await?;
        }
        self.oem(&id).await
    }

    /// An OEM by id.
    pub async fn oem(&mut self, id: &str) -> Result<Oem> {
        let row = sqlx::query("SELECT * FROM staging_oems WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *self.tx)
            .await?
            .ok_or_else(|| RegistryError::not_found("OEM", id))?;
        self.oem_from(&row).await
    }

    /// Every OEM, by name.
    pub async fn oems(&mut self) -> Result<Vec<Oem>> {
        let rows = sqlx::query("SELECT * FROM staging_oems ORDER BY name").fetch_all(&mut *self.tx).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push(self.oem_from(r).await?);
        }
        Ok(out)
    }

    /// An OEM by name.
    pub async fn oem_by_name(&mut self, name: &str) -> Result<Option<Oem>> {
        let row = sqlx::query("SELECT * FROM staging_oems WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *self.tx)
            .await?;
        match row {
            Some(r) => Ok(Some(self.oem_from(&r).await?)),
            None => Ok(None),
        }
    }

    /// Sets (or replaces) an OEM's claim-thing certificate.
    pub async fn set_claim_certificate(
        &mut self,
        oem_id: &str,
        certificate_id: &str,
        pem: &str,
    ) -> Result<()> {
        self.oem(oem_id).await?;
        let taken = sqlx::query("SELECT id FROM staging_oems WHERE claim_certificate_id = $1 AND id <> $2")
            .bind(certificate_id)
            .bind(oem_id)
            .fetch_optional(&mut *self.tx)
            .await?;
        if taken.is_some() {
            return Err(RegistryError::AlreadyExists {
                kind: "claim certificate",
                name: certificate_id.into(),
            });
        }
        sqlx::query(
            "UPDATE staging_oems SET claim_certificate_id = $1, claim_certificate_pem = $2 WHERE id = $3",
        )
        .bind(certificate_id)
        .bind(pem)
        .bind(oem_id)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Every claim-thing certificate: (OEM id, PEM).
    pub async fn claim_certificates(&mut self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT id, claim_certificate_pem FROM staging_oems WHERE claim_certificate_pem IS NOT NULL",
        )
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter().map(|r| Ok((r.try_get("id")?, r.try_get("claim_certificate_pem")?))).collect()
    }

    /// Adds an endpoint an OEM may send devices to.
    pub async fn add_oem_endpoint(&mut self, oem_id: &str, endpoint: &str) -> Result<()> {
        check_endpoint(endpoint)?;
        sqlx::query(
            "INSERT INTO staging_oem_endpoints (oem_id, endpoint) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(oem_id)
        .bind(endpoint.to_ascii_lowercase())
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Activates or suspends an OEM.
    pub async fn set_oem_status(&mut self, oem_id: &str, status: OemStatus) -> Result<()> {
        let rows = sqlx::query("UPDATE staging_oems SET status = $1 WHERE id = $2")
            .bind(status.as_str())
            .bind(oem_id)
            .execute(&mut *self.tx)
            .await?
            .rows_affected();
        if rows == 0 { Err(RegistryError::not_found("OEM", oem_id)) } else { Ok(()) }
    }

    /// Records a device from a factory manifest (its certificate id and claim code verifier),
    /// keeping what staging already knows of its connections and owner. Returns whether the
    /// device was new.
    pub async fn import_device(
        &mut self,
        thing_name: &str,
        certificate_id: Option<&str>,
        verifier: Option<&str>,
    ) -> Result<bool> {
        crate::model::validate_thing_name("thing name", thing_name)?;
        let new = sqlx::query(
            "INSERT INTO staging_devices (thing_name, certificate_id, claim_code_verifier) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(thing_name)
        .bind(certificate_id)
        .bind(verifier)
        .execute(&mut *self.tx)
        .await?
        .rows_affected()
            == 1;
        if !new {
            sqlx::query(
                "UPDATE staging_devices SET certificate_id = $1, claim_code_verifier = $2 WHERE thing_name = $3",
            )
            .bind(certificate_id)
            .bind(verifier)
            .bind(thing_name)
            .execute(&mut *self.tx)
            .await?;
        }
        Ok(new)
    }

    /// A device staging knows.
    pub async fn staging_device(&mut self, thing_name: &str) -> Result<Option<StagingDevice>> {
        sqlx::query("SELECT * FROM staging_devices WHERE thing_name = $1")
            .bind(thing_name)
            .fetch_optional(&mut *self.tx)
            .await?
            .as_ref()
            .map(device_from)
            .transpose()
    }

    /// Records a connection of a device (the first one creates the row).
    pub async fn device_seen(&mut self, thing_name: &str, certificate_id: &str) -> Result<StagingDevice> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO staging_devices (thing_name, certificate_id, first_seen, last_seen) VALUES ($1, $2, $3, $3) \
             ON CONFLICT (thing_name) DO UPDATE SET last_seen = $3, \
             first_seen = COALESCE(staging_devices.first_seen, $3), \
             certificate_id = COALESCE(staging_devices.certificate_id, $2)",
        )
        .bind(thing_name)
        .bind(certificate_id)
        .bind(now)
        .execute(&mut *self.tx)
        .await?;
        self.staging_device(thing_name).await?.ok_or_else(|| RegistryError::not_found("device", thing_name))
    }

    /// Devices an OEM owns, by name.
    pub async fn owned_devices(&mut self, oem_id: &str) -> Result<Vec<StagingDevice>> {
        self.owned_devices_page(oem_id, None, i64::MAX).await
    }

    /// Up to `limit` devices an OEM owns, named after `after` (a page of a list).
    pub async fn owned_devices_page(
        &mut self,
        oem_id: &str,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<StagingDevice>> {
        let rows = sqlx::query(
            "SELECT * FROM staging_devices WHERE owner_oem = $1 AND thing_name > $2 ORDER BY thing_name LIMIT $3",
        )
        .bind(oem_id)
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter().map(device_from).collect()
    }

    /// Appends a claim attempt; returns its id.
    pub async fn record_claim(&mut self, claim: &NewClaim<'_>) -> Result<i64> {
        let row = sqlx::query(
            "INSERT INTO staging_claims (oem_id, thing_name, endpoint, via, result, reason, at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(claim.oem_id)
        .bind(claim.thing_name)
        .bind(claim.endpoint)
        .bind(claim.via)
        .bind(if claim.accepted { "ACCEPTED" } else { "REJECTED" })
        .bind(claim.reason)
        .bind(now_ms())
        .fetch_one(&mut *self.tx)
        .await?;
        Ok(row.try_get("id")?)
    }

    /// Takes the write lock on a device's row (a row lock on PostgreSQL, the database's write
    /// lock on SQLite) so that concurrent claims of it are decided one after the other.
    /// Returns whether the device exists.
    pub async fn lock_staging_device(&mut self, thing_name: &str) -> Result<bool> {
        let rows = sqlx::query("UPDATE staging_devices SET thing_name = thing_name WHERE thing_name = $1")
            .bind(thing_name)
            .execute(&mut *self.tx)
            .await?
            .rows_affected();
        Ok(rows == 1)
    }

    /// Makes `oem_id` the owner of a device through claim `claim_id`, only if it has no owner or
    /// is `oem_id`'s already. Returns whether it did: `false` means another owner won.
    pub async fn set_owner(
        &mut self,
        thing_name: &str,
        oem_id: &str,
        endpoint: &str,
        claim_id: i64,
    ) -> Result<bool> {
        let rows = sqlx::query(
            "UPDATE staging_devices SET owner_oem = $1, endpoint = $2, claim_id = $3, delivered_at = NULL, \
             failed_codes = 0, failures_since = 0, locked_until = 0 \
             WHERE thing_name = $4 AND (owner_oem IS NULL OR owner_oem = $1)",
        )
        .bind(oem_id)
        .bind(endpoint)
        .bind(claim_id)
        .bind(thing_name)
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        Ok(rows == 1)
    }

    /// Ends a device's ownership (and marks the claim that made it released).
    pub async fn clear_owner(&mut self, thing_name: &str) -> Result<Option<StagingDevice>> {
        let Some(device) = self.staging_device(thing_name).await? else { return Ok(None) };
        if let Some(claim) = device.claim_id {
            sqlx::query("UPDATE staging_claims SET released_at = $1 WHERE id = $2")
                .bind(now_ms())
                .bind(claim)
                .execute(&mut *self.tx)
                .await?;
        }
        sqlx::query(
            "UPDATE staging_devices SET owner_oem = NULL, endpoint = NULL, claim_id = NULL, delivered_at = NULL \
             WHERE thing_name = $1",
        )
        .bind(thing_name)
        .execute(&mut *self.tx)
        .await?;
        // Whoever held it in a portal list holds it no more.
        sqlx::query("DELETE FROM portal_devices WHERE thing_name = $1")
            .bind(thing_name)
            .execute(&mut *self.tx)
            .await?;
        Ok(Some(device))
    }

    /// The device acknowledged claim `claim_id`.
    pub async fn mark_delivered(&mut self, thing_name: &str, claim_id: i64) -> Result<()> {
        let now = now_ms();
        sqlx::query("UPDATE staging_devices SET delivered_at = $1 WHERE thing_name = $2 AND claim_id = $3")
            .bind(now)
            .bind(thing_name)
            .bind(claim_id)
            .execute(&mut *self.tx)
            .await?;
        sqlx::query("UPDATE staging_claims SET delivered_at = $1 WHERE id = $2 AND delivered_at IS NULL")
            .bind(now)
            .bind(claim_id)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// Counts one wrong claim code for a device, atomically: the count restarts when its
    /// window (started at `failures_since`) is older than `window_start`. Returns the count and
    /// the window's start.
    pub async fn count_device_failure(&mut self, thing_name: &str, window_start: i64) -> Result<(i64, i64)> {
        let row = sqlx::query(
            "UPDATE staging_devices SET \
             failed_codes = CASE WHEN failures_since < $1 THEN 1 ELSE failed_codes + 1 END, \
             failures_since = CASE WHEN failures_since < $1 THEN $2 ELSE failures_since END \
             WHERE thing_name = $3 RETURNING failed_codes, failures_since",
        )
        .bind(window_start)
        .bind(now_ms())
        .bind(thing_name)
        .fetch_one(&mut *self.tx)
        .await?;
        Ok((row.try_get("failed_codes")?, row.try_get("failures_since")?))
    }

    /// Locks a device against every claimer until `until` (its ceiling was reached).
    pub async fn lock_device_until(&mut self, thing_name: &str, until: i64) -> Result<()> {
        sqlx::query("UPDATE staging_devices SET locked_until = $1 WHERE thing_name = $2")
            .bind(until)
            .bind(thing_name)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// A claimer's lockout, if it has failed before.
    pub async fn claimer_lockout(&mut self, claimer: &str) -> Result<Option<ClaimerLockout>> {
        let row = sqlx::query("SELECT failed, locked_until FROM claim_lockouts WHERE claimer = $1")
            .bind(claimer)
            .fetch_optional(&mut *self.tx)
            .await?;
        row.map(|r| {
            Ok(ClaimerLockout { failed: r.try_get("failed")?, locked_until: r.try_get("locked_until")? })
        })
        .transpose()
    }

    /// Counts one wrong claim code for a claimer, atomically; a claimer whose last failure is
    /// older than `quiet_since` starts again from one. Returns the new count.
    pub async fn count_claimer_failure(&mut self, claimer: &str, quiet_since: i64) -> Result<i64> {
        let row = sqlx::query(
            "INSERT INTO claim_lockouts (claimer, failed, locked_until, last_failure) VALUES ($1, 1, 0, $2) \
             ON CONFLICT (claimer) DO UPDATE SET \
             failed = CASE WHEN claim_lockouts.last_failure < $3 THEN 1 ELSE claim_lockouts.failed + 1 END, \
             last_failure = $2 RETURNING failed",
        )
        .bind(claimer)
        .bind(now_ms())
        .bind(quiet_since)
        .fetch_one(&mut *self.tx)
        .await?;
        Ok(row.try_get("failed")?)
    }

    /// Forgets a key's failures (a successful sign-in).
    pub async fn clear_lockout(&mut self, key: &str) -> Result<()> {
        sqlx::query("DELETE FROM claim_lockouts WHERE claimer = $1").bind(key).execute(&mut *self.tx).await?;
        Ok(())
    }

    /// Sets when a claimer's lockout ends.
    pub async fn lock_claimer_until(&mut self, claimer: &str, until: i64) -> Result<()> {
        sqlx::query("UPDATE claim_lockouts SET locked_until = $1 WHERE claimer = $2")
            .bind(until)
            .bind(claimer)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// Counts `n` refused claims in aggregate; returns whether this opened the row (the first
    /// refusal of its claimer, device, reason and window).
    pub async fn count_refusals(
        &mut self,
        claimer: &str,
        thing_name: &str,
        reason: &str,
        window_start: i64,
        n: i64,
    ) -> Result<bool> {
        let now = now_ms();
        let row = sqlx::query(
            "INSERT INTO claim_refusals (claimer, thing_name, reason, window_start, attempts, first_at, last_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6) \
             ON CONFLICT (claimer, thing_name, reason, window_start) DO UPDATE SET \
             attempts = claim_refusals.attempts + $5, last_at = $6 RETURNING attempts",
        )
        .bind(claimer)
        .bind(thing_name)
        .bind(reason)
        .bind(window_start)
        .bind(n)
        .bind(now)
        .fetch_one(&mut *self.tx)
        .await?;
        let attempts: i64 = row.try_get("attempts")?;
        Ok(attempts == n)
    }

    /// Refused claims in aggregate, newest window first, by claimer and/or device.
    pub async fn claim_refusals(
        &mut self,
        claimer: Option<&str>,
        thing_name: Option<&str>,
        limit: i64,
    ) -> Result<Vec<ClaimRefusals>> {
        let rows = sqlx::query(
            "SELECT * FROM claim_refusals WHERE ($1 IS NULL OR claimer = $1) AND ($2 IS NULL OR thing_name = $2) \
             ORDER BY window_start DESC, last_at DESC LIMIT $3",
        )
        .bind(claimer)
        .bind(thing_name)
        .bind(limit.clamp(1, 1000))
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ClaimRefusals {
                    claimer: r.try_get("claimer")?,
                    thing_name: r.try_get("thing_name")?,
                    reason: r.try_get("reason")?,
                    window_start: r.try_get("window_start")?,
                    attempts: r.try_get("attempts")?,
                    first_at: r.try_get("first_at")?,
                    last_at: r.try_get("last_at")?,
                })
            })
            .collect()
    }

    /// Claim attempts, newest first, by OEM and/or device.
    pub async fn claims(
        &mut self,
        oem_id: Option<&str>,
        thing_name: Option<&str>,
        limit: i64,
    ) -> Result<Vec<ClaimRecord>> {
        self.claims_before(oem_id, thing_name, None, limit).await
    }

    /// Claims older than claim `before`, newest first (a page of a list).
    pub async fn claims_before(
        &mut self,
        oem_id: Option<&str>,
        thing_name: Option<&str>,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<ClaimRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM staging_claims WHERE ($1 IS NULL OR oem_id = $1) AND ($2 IS NULL OR thing_name = $2) \
             AND id < $3 ORDER BY id DESC LIMIT $4",
        )
        .bind(oem_id)
        .bind(thing_name)
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit.clamp(1, 1001))
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter().map(claim_from).collect()
    }

    /// A new staging administrator token (`stg_...`), shown once; only its hash is kept.
    pub async fn create_staging_admin_token(&mut self, name: &str) -> Result<String> {
        let token = format!("stg_{}", random_hex(32)?);
        sqlx::query("INSERT INTO staging_admin_tokens (token_hash, name, created) VALUES ($1, $2, $3)")
            .bind(token_hash(&token))
            .bind(name)
            .bind(now_ms())
            .execute(&mut *self.tx)
            .await?;
        Ok(token)
    }

    /// The name of the staging administrator token `token`, if it is one.
    pub async fn staging_admin_for_token(&mut self, token: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT name FROM staging_admin_tokens WHERE token_hash = $1")
            .bind(token_hash(token))
            .fetch_optional(&mut *self.tx)
            .await?;
        Ok(row.map(|r| r.try_get("name")).transpose()?)
    }

    /// Adds a portal user; `password_hash` is a PHC string (Argon2id).
    pub async fn create_portal_user(
        &mut self,
        oem_id: &str,
        email: &str,
        password_hash: &str,
    ) -> Result<i64> {
        let row = sqlx::query(
            "INSERT INTO portal_users (oem_id, email, password_hash, created) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING RETURNING id",
        )
        .bind(oem_id)
        .bind(email)
        .bind(password_hash)
        .bind(now_ms())
        .fetch_optional(&mut *self.tx)
        .await?;
        match row {
            Some(r) => Ok(r.try_get("id")?),
            None => Err(RegistryError::AlreadyExists { kind: "user", name: email.into() }),
        }
    }

    /// A portal user and their password hash, by e-mail.
    pub async fn portal_user_by_email(
        &mut self,
        oem_id: &str,
        email: &str,
    ) -> Result<Option<(PortalUser, String)>> {
        let row = sqlx::query("SELECT * FROM portal_users WHERE oem_id = $1 AND email = $2")
            .bind(oem_id)
            .bind(email)
            .fetch_optional(&mut *self.tx)
            .await?;
        row.map(|r| {
            Ok((
                PortalUser { id: r.try_get("id")?, oem_id: r.try_get("oem_id")?, email: r.try_get("email")? },
                r.try_get("password_hash")?,
            ))
        })
        .transpose()
    }

    /// A new portal session for `user_id`, valid `ttl_ms`; returns the cookie value.
    pub async fn create_portal_session(&mut self, user_id: i64, ttl_ms: i64) -> Result<String> {
        let token = random_hex(32)?;
        sqlx::query("DELETE FROM portal_sessions WHERE expires < $1")
            .bind(now_ms())
            .execute(&mut *self.tx)
            .await?;
        sqlx::query("INSERT INTO portal_sessions (token_hash, user_id, expires) VALUES ($1, $2, $3)")
            .bind(token_hash(&token))
            .bind(user_id)
            .bind(now_ms() + ttl_ms)
            .execute(&mut *self.tx)
            .await?;
        Ok(token)
    }

    /// The user of a live portal session.
    pub async fn portal_session(&mut self, token: &str) -> Result<Option<PortalUser>> {
        let row = sqlx::query(
            "SELECT u.id, u.oem_id, u.email FROM portal_sessions s JOIN portal_users u ON u.id = s.user_id \
             WHERE s.token_hash = $1 AND s.expires > $2",
        )
        .bind(token_hash(token))
        .bind(now_ms())
        .fetch_optional(&mut *self.tx)
        .await?;
        row.map(|r| {
            Ok(PortalUser { id: r.try_get("id")?, oem_id: r.try_get("oem_id")?, email: r.try_get("email")? })
        })
        .transpose()
    }

    /// Ends a portal session.
    pub async fn delete_portal_session(&mut self, token: &str) -> Result<()> {
        sqlx::query("DELETE FROM portal_sessions WHERE token_hash = $1")
            .bind(token_hash(token))
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// The portal user whose list holds a device, if any.
    pub async fn portal_holder(&mut self, thing_name: &str) -> Result<Option<i64>> {
        let row = sqlx::query("SELECT user_id FROM portal_devices WHERE thing_name = $1")
            .bind(thing_name)
            .fetch_optional(&mut *self.tx)
            .await?;
        row.map(|r| Ok(r.try_get("user_id")?)).transpose()
    }

    /// Lists a device under a portal user, unless another user holds it (a device is in one
    /// list at a time). Returns whether `user_id` holds it now.
    pub async fn add_portal_device(&mut self, user_id: i64, thing_name: &str) -> Result<bool> {
        sqlx::query(
            "INSERT INTO portal_devices (user_id, thing_name, added) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(user_id)
        .bind(thing_name)
        .bind(now_ms())
        .execute(&mut *self.tx)
        .await?;
        Ok(self.portal_holder(thing_name).await? == Some(user_id))
    }

    /// Removes a device from a portal user's list; returns whether it was there.
    pub async fn remove_portal_device(&mut self, user_id: i64, thing_name: &str) -> Result<bool> {
        Ok(sqlx::query("DELETE FROM portal_devices WHERE user_id = $1 AND thing_name = $2")
            .bind(user_id)
            .bind(thing_name)
            .execute(&mut *self.tx)
            .await?
            .rows_affected()
            == 1)
    }

    /// A portal user's devices: (ThingName, added), newest first.
    pub async fn portal_devices(&mut self, user_id: i64) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT thing_name, added FROM portal_devices WHERE user_id = $1 ORDER BY added DESC",
        )
        .bind(user_id)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter().map(|r| Ok((r.try_get("thing_name")?, r.try_get("added")?))).collect()
    }
}
