//! Staging's records: OEMs with their claim-thing certificate and registered endpoints, the
//! devices staging knows (from a factory manifest or their first connection), every claim
//! attempt, staging administrators' tokens, and the registration portal's users.

use claimlink_registry::{
    Migration, RegistryError, Result, Store, Tx, args, columns, created, now, random_hex, token_hash,
};

/// Staging's schema, in the registry's database and ledger. (Versions 3 and 4 were applied as
/// the registry's before staging had a crate; new ones take numbers from 1000.)
const MIGRATIONS: &[Migration] = &[
    (3, include_str!("../migrations/0003_staging.sql")),
    (4, include_str!("../migrations/0004_claim_lockouts.sql")),
    (1000, include_str!("../migrations/1000_revocation.sql")),
];

/// Opens the database at `url` (`sqlite://PATH` or `postgres://...`) with the registry's and
/// staging's schemas applied.
pub async fn open(url: &str) -> Result<Store> {
    let store = Store::open(url).await?;
    migrate(&store).await?;
    Ok(store)
}

/// Applies staging's migrations to a store that is open already.
pub async fn migrate(store: &Store) -> Result<()> {
    store.migrate("staging", MIGRATIONS).await
}

fn now_ms() -> i64 {
    now()
}

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
            _ => Err(RegistryError::invalid("OEM status", s, "ACTIVE or SUSPENDED")),
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
    if host_ok && port_ok { Ok(()) } else { Err(RegistryError::invalid("endpoint", endpoint, "host[:port]")) }
}

columns!(StagingDevice {
    thing_name,
    certificate_id,
    claim_code_verifier,
    first_seen,
    last_seen,
    owner_oem,
    endpoint,
    claim_id,
    delivered_at,
    failed_codes,
    failures_since,
    locked_until
});

columns!(ClaimerLockout { failed, locked_until });
columns!(ClaimRefusals { claimer, thing_name, reason, window_start, attempts, first_at, last_at });
columns!(PortalUser { id, oem_id, email });

/// An OEM's row, before its endpoints are read.
struct OemRow {
    id: String,
    name: String,
    status: String,
    claim_certificate_id: Option<String>,
    created: i64,
}

columns!(OemRow { id, name, status, claim_certificate_id, created });

columns!(ClaimRecord {
    id,
    oem_id,
    thing_name,
    endpoint,
    via,
    result,
    reason,
    at,
    delivered_at,
    released_at
});

/// Staging's records, as statements on a registry transaction. (A trait because [`Tx`] is the
/// registry's type; bring it into scope with `use claimlink_staging::store::Records`.)
pub trait Records {
    /// Registers an OEM (ACTIVE) with the endpoints it may send devices to.
    fn create_oem(&mut self, name: &str, endpoints: &[String]) -> impl Future<Output = Result<Oem>> + Send;

    /// An OEM by id.
    fn oem(&mut self, id: &str) -> impl Future<Output = Result<Oem>> + Send;

    /// Every OEM, by name.
    fn oems(&mut self) -> impl Future<Output = Result<Vec<Oem>>> + Send;

    /// An OEM by name.
    fn oem_by_name(&mut self, name: &str) -> impl Future<Output = Result<Option<Oem>>> + Send;

    /// Sets (or replaces) an OEM's claim-thing certificate.
    fn set_claim_certificate(
        &mut self,
        oem_id: &str,
        certificate_id: &str,
        pem: &str,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Every claim-thing certificate: (OEM id, PEM).
    fn claim_certificates(&mut self) -> impl Future<Output = Result<Vec<(String, String)>>> + Send;

    /// Records a CRL staging applied: a full one replaces the issuer's earlier CRLs, a delta
    /// joins them.
    fn save_crl(
        &mut self,
        issuer_key_id: &str,
        number: i64,
        delta: bool,
        issuer_pem: &str,
        crl_pem: &str,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Every CRL applied, per issuer in CRL-number order: (issuer PEM, CRL PEM).
    fn crls(&mut self) -> impl Future<Output = Result<Vec<(String, String)>>> + Send;

    /// Adds an endpoint an OEM may send devices to.
    fn add_oem_endpoint(&mut self, oem_id: &str, endpoint: &str) -> impl Future<Output = Result<()>> + Send;

    /// Activates or suspends an OEM.
    fn set_oem_status(&mut self, oem_id: &str, status: OemStatus) -> impl Future<Output = Result<()>> + Send;

    /// Records a device from a factory manifest (its certificate id and claim code verifier),
    /// keeping what staging already knows of its connections and owner. Returns whether the
    /// device was new.
    fn import_device(
        &mut self,
        thing_name: &str,
        certificate_id: Option<&str>,
        verifier: Option<&str>,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// A device staging knows.
    fn staging_device(
        &mut self,
        thing_name: &str,
    ) -> impl Future<Output = Result<Option<StagingDevice>>> + Send;

    /// Records a connection of a device (the first one creates the row).
    fn device_seen(
        &mut self,
        thing_name: &str,
        certificate_id: &str,
    ) -> impl Future<Output = Result<StagingDevice>> + Send;

    /// Devices an OEM owns, by name.
    fn owned_devices(&mut self, oem_id: &str) -> impl Future<Output = Result<Vec<StagingDevice>>> + Send;

    /// Up to `limit` devices an OEM owns, named after `after` (a page of a list).
    fn owned_devices_page(
        &mut self,
        oem_id: &str,
        after: Option<&str>,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<StagingDevice>>> + Send;

    /// Appends a claim attempt; returns its id.
    fn record_claim(&mut self, claim: &NewClaim<'_>, now: i64) -> impl Future<Output = Result<i64>> + Send;

    /// Takes the write lock on a device's row (a row lock on PostgreSQL, the database's write
    /// lock on SQLite) so that concurrent claims of it are decided one after the other.
    /// Returns whether the device exists.
    fn lock_staging_device(&mut self, thing_name: &str) -> impl Future<Output = Result<bool>> + Send;

    /// Makes `oem_id` the owner of a device through claim `claim_id`, only if it has no owner or
    /// is `oem_id`'s already. Returns whether it did: `false` means another owner won.
    fn set_owner(
        &mut self,
        thing_name: &str,
        oem_id: &str,
        endpoint: &str,
        claim_id: i64,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Ends a device's ownership (and marks the claim that made it released).
    fn clear_owner(&mut self, thing_name: &str)
    -> impl Future<Output = Result<Option<StagingDevice>>> + Send;

    /// The device acknowledged claim `claim_id`.
    fn mark_delivered(&mut self, thing_name: &str, claim_id: i64) -> impl Future<Output = Result<()>> + Send;

    /// Counts one wrong claim code for a device, atomically: the count restarts when its
    /// window (started at `failures_since`) is older than `window_start`. Returns the count and
    /// the window's start.
    fn count_device_failure(
        &mut self,
        thing_name: &str,
        window_start: i64,
        now: i64,
    ) -> impl Future<Output = Result<(i64, i64)>> + Send;

    /// Locks a device against every claimer until `until` (its ceiling was reached).
    fn lock_device_until(&mut self, thing_name: &str, until: i64) -> impl Future<Output = Result<()>> + Send;

    /// A claimer's lockout, if it has failed before.
    fn claimer_lockout(
        &mut self,
        claimer: &str,
    ) -> impl Future<Output = Result<Option<ClaimerLockout>>> + Send;

    /// Counts one wrong claim code for a claimer, atomically; a claimer whose last failure is
    /// older than `quiet_since` starts again from one. Returns the new count.
    fn count_claimer_failure(
        &mut self,
        claimer: &str,
        quiet_since: i64,
        now: i64,
    ) -> impl Future<Output = Result<i64>> + Send;

    /// Forgets a key's failures (a successful sign-in).
    fn clear_lockout(&mut self, key: &str) -> impl Future<Output = Result<()>> + Send;

    /// Sets when a claimer's lockout ends.
    fn lock_claimer_until(&mut self, claimer: &str, until: i64) -> impl Future<Output = Result<()>> + Send;

    /// Counts `n` refused claims in aggregate; returns whether this opened the row (the first
    /// refusal of its claimer, device, reason and window).
    fn count_refusals(
        &mut self,
        claimer: &str,
        thing_name: &str,
        reason: &str,
        window_start: i64,
        n: i64,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Refused claims in aggregate, newest window first, by claimer and/or device.
    fn claim_refusals(
        &mut self,
        claimer: Option<&str>,
        thing_name: Option<&str>,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<ClaimRefusals>>> + Send;

    /// Claim attempts, newest first, by OEM and/or device.
    fn claims(
        &mut self,
        oem_id: Option<&str>,
        thing_name: Option<&str>,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<ClaimRecord>>> + Send;

    /// Claims older than claim `before`, newest first (a page of a list).
    fn claims_before(
        &mut self,
        oem_id: Option<&str>,
        thing_name: Option<&str>,
        before: Option<i64>,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<ClaimRecord>>> + Send;

    /// A new staging administrator token (`stg_...`), shown once; only its hash is kept.
    fn create_staging_admin_token(&mut self, name: &str) -> impl Future<Output = Result<String>> + Send;

    /// The name of the staging administrator token `token`, if it is one.
    fn staging_admin_for_token(&mut self, token: &str)
    -> impl Future<Output = Result<Option<String>>> + Send;

    /// Adds a portal user; `password_hash` is a PHC string (Argon2id).
    fn create_portal_user(
        &mut self,
        oem_id: &str,
        email: &str,
        password_hash: &str,
    ) -> impl Future<Output = Result<i64>> + Send;

    /// A portal user and their password hash, by e-mail.
    fn portal_user_by_email(
        &mut self,
        oem_id: &str,
        email: &str,
    ) -> impl Future<Output = Result<Option<(PortalUser, String)>>> + Send;

    /// A new portal session for `user_id`, valid `ttl_ms`; returns the cookie value.
    fn create_portal_session(
        &mut self,
        user_id: i64,
        ttl_ms: i64,
    ) -> impl Future<Output = Result<String>> + Send;

    /// The user of a live portal session.
    fn portal_session(&mut self, token: &str) -> impl Future<Output = Result<Option<PortalUser>>> + Send;

    /// Ends a portal session.
    fn delete_portal_session(&mut self, token: &str) -> impl Future<Output = Result<()>> + Send;

    /// The portal user whose list holds a device, if any.
    fn portal_holder(&mut self, thing_name: &str) -> impl Future<Output = Result<Option<i64>>> + Send;

    /// Lists a device under a portal user, unless another user holds it (a device is in one
    /// list at a time). Returns whether `user_id` holds it now.
    fn add_portal_device(
        &mut self,
        user_id: i64,
        thing_name: &str,
        now: i64,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Removes a device from a portal user's list; returns whether it was there.
    fn remove_portal_device(
        &mut self,
        user_id: i64,
        thing_name: &str,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// A portal user's devices: (ThingName, added), newest first.
    fn portal_devices(&mut self, user_id: i64) -> impl Future<Output = Result<Vec<(String, i64)>>> + Send;
}

async fn oem_from(tx: &mut Tx, r: OemRow) -> Result<Oem> {
    let endpoints = tx
        .column(
            "SELECT endpoint FROM staging_oem_endpoints WHERE oem_id = $1 ORDER BY endpoint",
            args![&r.id],
        )
        .await?;
    Ok(Oem {
        status: OemStatus::parse(&r.status)?,
        name: r.name,
        claim_certificate_id: r.claim_certificate_id,
        created: r.created,
        endpoints,
        id: r.id,
    })
}

impl Records for Tx {
    /// Registers an OEM (ACTIVE) with the endpoints it may send devices to.
    async fn create_oem(&mut self, name: &str, endpoints: &[String]) -> Result<Oem> {
        if name.trim().is_empty() || name.len() > 128 {
            return Err(RegistryError::invalid("OEM name", name, "1-128 characters"));
        }
        for e in endpoints {
            check_endpoint(e)?;
        }
        let id = uuid_v4()?;
        let rows = self.run("INSERT INTO staging_oems (id, name, status, created) VALUES ($1, $2, 'ACTIVE', $3) ON CONFLICT DO NOTHING", args![&id, name, now_ms()]).await?;
        created(rows, "OEM", name)?;
        for e in endpoints {
            self.add_oem_endpoint(&id, e).await?;
        }
        self.oem(&id).await
    }

    /// An OEM by id.
    async fn oem(&mut self, id: &str) -> Result<Oem> {
        let row = self
            .optional("SELECT * FROM staging_oems WHERE id = $1", args![id])
            .await?
            .ok_or_else(|| RegistryError::not_found("OEM", id))?;
        oem_from(self, row).await
    }

    /// Every OEM, by name.
    async fn oems(&mut self) -> Result<Vec<Oem>> {
        let rows: Vec<OemRow> = self.all("SELECT * FROM staging_oems ORDER BY name", args![]).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.push(oem_from(self, r).await?);
        }
        Ok(out)
    }

    /// An OEM by name.
    async fn oem_by_name(&mut self, name: &str) -> Result<Option<Oem>> {
        match self.optional("SELECT * FROM staging_oems WHERE name = $1", args![name]).await? {
            Some(r) => Ok(Some(oem_from(self, r).await?)),
            None => Ok(None),
        }
    }

    /// Sets (or replaces) an OEM's claim-thing certificate.
    async fn set_claim_certificate(&mut self, oem_id: &str, certificate_id: &str, pem: &str) -> Result<()> {
        self.oem(oem_id).await?;
        let taken: Option<(String,)> = self
            .optional(
                "SELECT id FROM staging_oems WHERE claim_certificate_id = $1 AND id <> $2",
                args![certificate_id, oem_id],
            )
            .await?;
        if taken.is_some() {
            return Err(RegistryError::AlreadyExists {
                kind: "claim certificate",
                name: certificate_id.into(),
            });
        }
        self.run(
            "UPDATE staging_oems SET claim_certificate_id = $1, claim_certificate_pem = $2 WHERE id = $3",
            args![certificate_id, pem, oem_id],
        )
        .await?;
        Ok(())
    }

    /// Every claim-thing certificate: (OEM id, PEM).
    async fn claim_certificates(&mut self) -> Result<Vec<(String, String)>> {
        self.all(
            "SELECT id, claim_certificate_pem FROM staging_oems WHERE claim_certificate_pem IS NOT NULL",
            args![],
        )
        .await
    }

    async fn save_crl(
        &mut self,
        issuer_key_id: &str,
        number: i64,
        delta: bool,
        issuer_pem: &str,
        crl_pem: &str,
    ) -> Result<()> {
        if !delta {
            self.run("DELETE FROM staging_crls WHERE issuer_key_id = $1", args![issuer_key_id]).await?;
        }
        self.run(
            "INSERT INTO staging_crls (issuer_key_id, crl_number, is_delta, issuer_pem, crl_pem, applied_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            args![issuer_key_id, number, i64::from(delta), issuer_pem, crl_pem, now_ms()],
        )
        .await?;
        Ok(())
    }

    async fn crls(&mut self) -> Result<Vec<(String, String)>> {
        self.all("SELECT issuer_pem, crl_pem FROM staging_crls ORDER BY issuer_key_id, crl_number", args![])
            .await
    }

    /// Adds an endpoint an OEM may send devices to.
    async fn add_oem_endpoint(&mut self, oem_id: &str, endpoint: &str) -> Result<()> {
        check_endpoint(endpoint)?;
        self.run(
            "INSERT INTO staging_oem_endpoints (oem_id, endpoint) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            args![oem_id, endpoint.to_ascii_lowercase()],
        )
        .await?;
        Ok(())
    }

    /// Activates or suspends an OEM.
    async fn set_oem_status(&mut self, oem_id: &str, status: OemStatus) -> Result<()> {
        let rows = self
            .run("UPDATE staging_oems SET status = $1 WHERE id = $2", args![status.as_str(), oem_id])
            .await?;
        if rows == 0 { Err(RegistryError::not_found("OEM", oem_id)) } else { Ok(()) }
    }

    /// Records a device from a factory manifest (its certificate id and claim code verifier),
    /// keeping what staging already knows of its connections and owner. Returns whether the
    /// device was new.
    async fn import_device(
        &mut self,
        thing_name: &str,
        certificate_id: Option<&str>,
        verifier: Option<&str>,
    ) -> Result<bool> {
        claimlink_registry::ThingName::new(thing_name)?;
        let new = self.run("INSERT INTO staging_devices (thing_name, certificate_id, claim_code_verifier) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING", args![thing_name, certificate_id, verifier]).await?
            == 1;
        if !new {
            self.run("UPDATE staging_devices SET certificate_id = $1, claim_code_verifier = $2 WHERE thing_name = $3", args![certificate_id, verifier, thing_name]).await?;
        }
        Ok(new)
    }

    /// A device staging knows.
    async fn staging_device(&mut self, thing_name: &str) -> Result<Option<StagingDevice>> {
        self.optional("SELECT * FROM staging_devices WHERE thing_name = $1", args![thing_name]).await
    }

    /// Records a connection of a device (the first one creates the row).
    async fn device_seen(&mut self, thing_name: &str, certificate_id: &str) -> Result<StagingDevice> {
        let now = now_ms();
        self.run("INSERT INTO staging_devices (thing_name, certificate_id, first_seen, last_seen) VALUES ($1, $2, $3, $3) \
             ON CONFLICT (thing_name) DO UPDATE SET last_seen = $3, \
             first_seen = COALESCE(staging_devices.first_seen, $3), \
             certificate_id = COALESCE(staging_devices.certificate_id, $2)", args![thing_name, certificate_id, now]).await?;
        self.staging_device(thing_name).await?.ok_or_else(|| RegistryError::not_found("device", thing_name))
    }

    /// Devices an OEM owns, by name.
    async fn owned_devices(&mut self, oem_id: &str) -> Result<Vec<StagingDevice>> {
        self.owned_devices_page(oem_id, None, i64::MAX).await
    }

    /// Up to `limit` devices an OEM owns, named after `after` (a page of a list).
    async fn owned_devices_page(
        &mut self,
        oem_id: &str,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<StagingDevice>> {
        self.all::<StagingDevice>("SELECT * FROM staging_devices WHERE owner_oem = $1 AND thing_name > $2 ORDER BY thing_name LIMIT $3", args![oem_id, after.unwrap_or(""), limit]).await
    }

    /// Appends a claim attempt; returns its id.
    async fn record_claim(&mut self, claim: &NewClaim<'_>, now: i64) -> Result<i64> {
        let (id,): (i64,) = self
            .one(
                "INSERT INTO staging_claims (oem_id, thing_name, endpoint, via, result, reason, at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                args![
                    claim.oem_id,
                    claim.thing_name,
                    claim.endpoint,
                    claim.via,
                    if claim.accepted { "ACCEPTED" } else { "REJECTED" },
                    claim.reason,
                    now
                ],
            )
            .await?;
        Ok(id)
    }

    /// Takes the write lock on a device's row (a row lock on PostgreSQL, the database's write
    /// lock on SQLite) so that concurrent claims of it are decided one after the other.
    /// Returns whether the device exists.
    async fn lock_staging_device(&mut self, thing_name: &str) -> Result<bool> {
        let rows = self
            .run(
                "UPDATE staging_devices SET thing_name = thing_name WHERE thing_name = $1",
                args![thing_name],
            )
            .await?;
        Ok(rows == 1)
    }

    /// Makes `oem_id` the owner of a device through claim `claim_id`, only if it has no owner or
    /// is `oem_id`'s already. Returns whether it did: `false` means another owner won.
    async fn set_owner(
        &mut self,
        thing_name: &str,
        oem_id: &str,
        endpoint: &str,
        claim_id: i64,
    ) -> Result<bool> {
        let rows = self.run("UPDATE staging_devices SET owner_oem = $1, endpoint = $2, claim_id = $3, delivered_at = NULL, \
             failed_codes = 0, failures_since = 0, locked_until = 0 \
             WHERE thing_name = $4 AND (owner_oem IS NULL OR owner_oem = $1)", args![oem_id, endpoint, claim_id, thing_name]).await?;
        Ok(rows == 1)
    }

    /// Ends a device's ownership (and marks the claim that made it released).
    async fn clear_owner(&mut self, thing_name: &str) -> Result<Option<StagingDevice>> {
        let Some(device) = self.staging_device(thing_name).await? else { return Ok(None) };
        if let Some(claim) = device.claim_id {
            self.run("UPDATE staging_claims SET released_at = $1 WHERE id = $2", args![now_ms(), claim])
                .await?;
        }
        self.run("UPDATE staging_devices SET owner_oem = NULL, endpoint = NULL, claim_id = NULL, delivered_at = NULL \
             WHERE thing_name = $1", args![thing_name]).await?;
        // Whoever held it in a portal list holds it no more.
        self.run("DELETE FROM portal_devices WHERE thing_name = $1", args![thing_name]).await?;
        Ok(Some(device))
    }

    /// The device acknowledged claim `claim_id`.
    async fn mark_delivered(&mut self, thing_name: &str, claim_id: i64) -> Result<()> {
        let now = now_ms();
        self.run(
            "UPDATE staging_devices SET delivered_at = $1 WHERE thing_name = $2 AND claim_id = $3",
            args![now, thing_name, claim_id],
        )
        .await?;
        self.run(
            "UPDATE staging_claims SET delivered_at = $1 WHERE id = $2 AND delivered_at IS NULL",
            args![now, claim_id],
        )
        .await?;
        Ok(())
    }

    /// Counts one wrong claim code for a device, atomically: the count restarts when its
    /// window (started at `failures_since`) is older than `window_start`. Returns the count and
    /// the window's start.
    async fn count_device_failure(
        &mut self,
        thing_name: &str,
        window_start: i64,
        now: i64,
    ) -> Result<(i64, i64)> {
        self.one(
            "UPDATE staging_devices SET \
             failed_codes = CASE WHEN failures_since < $1 THEN 1 ELSE failed_codes + 1 END, \
             failures_since = CASE WHEN failures_since < $1 THEN $2 ELSE failures_since END \
             WHERE thing_name = $3 RETURNING failed_codes, failures_since",
            args![window_start, now, thing_name],
        )
        .await
    }

    /// Locks a device against every claimer until `until` (its ceiling was reached).
    async fn lock_device_until(&mut self, thing_name: &str, until: i64) -> Result<()> {
        self.run(
            "UPDATE staging_devices SET locked_until = $1 WHERE thing_name = $2",
            args![until, thing_name],
        )
        .await?;
        Ok(())
    }

    /// A claimer's lockout, if it has failed before.
    async fn claimer_lockout(&mut self, claimer: &str) -> Result<Option<ClaimerLockout>> {
        self.optional("SELECT failed, locked_until FROM claim_lockouts WHERE claimer = $1", args![claimer])
            .await
    }

    /// Counts one wrong claim code for a claimer, atomically; a claimer whose last failure is
    /// older than `quiet_since` starts again from one. Returns the new count.
    async fn count_claimer_failure(&mut self, claimer: &str, quiet_since: i64, now: i64) -> Result<i64> {
        let (failed,): (i64,) = self.one("INSERT INTO claim_lockouts (claimer, failed, locked_until, last_failure) VALUES ($1, 1, 0, $2) \
             ON CONFLICT (claimer) DO UPDATE SET \
             failed = CASE WHEN claim_lockouts.last_failure < $3 THEN 1 ELSE claim_lockouts.failed + 1 END, \
             last_failure = $2 RETURNING failed", args![claimer, now, quiet_since]).await?;
        Ok(failed)
    }

    /// Forgets a key's failures (a successful sign-in).
    async fn clear_lockout(&mut self, key: &str) -> Result<()> {
        self.run("DELETE FROM claim_lockouts WHERE claimer = $1", args![key]).await?;
        Ok(())
    }

    /// Sets when a claimer's lockout ends.
    async fn lock_claimer_until(&mut self, claimer: &str, until: i64) -> Result<()> {
        self.run("UPDATE claim_lockouts SET locked_until = $1 WHERE claimer = $2", args![until, claimer])
            .await?;
        Ok(())
    }

    /// Counts `n` refused claims in aggregate; returns whether this opened the row (the first
    /// refusal of its claimer, device, reason and window).
    async fn count_refusals(
        &mut self,
        claimer: &str,
        thing_name: &str,
        reason: &str,
        window_start: i64,
        n: i64,
    ) -> Result<bool> {
        let now = now_ms();
        let (attempts,): (i64,) = self.one("INSERT INTO claim_refusals (claimer, thing_name, reason, window_start, attempts, first_at, last_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6) \
             ON CONFLICT (claimer, thing_name, reason, window_start) DO UPDATE SET \
             attempts = claim_refusals.attempts + $5, last_at = $6 RETURNING attempts", args![claimer, thing_name, reason, window_start, n, now]).await?;
        Ok(attempts == n)
    }

    /// Refused claims in aggregate, newest window first, by claimer and/or device.
    async fn claim_refusals(
        &mut self,
        claimer: Option<&str>,
        thing_name: Option<&str>,
        limit: i64,
    ) -> Result<Vec<ClaimRefusals>> {
        self.all("SELECT * FROM claim_refusals WHERE ($1 IS NULL OR claimer = $1) AND ($2 IS NULL OR thing_name = $2) \
             ORDER BY window_start DESC, last_at DESC LIMIT $3", args![claimer, thing_name, limit.clamp(1, 1000)]).await
    }

    /// Claim attempts, newest first, by OEM and/or device.
    async fn claims(
        &mut self,
        oem_id: Option<&str>,
        thing_name: Option<&str>,
        limit: i64,
    ) -> Result<Vec<ClaimRecord>> {
        self.claims_before(oem_id, thing_name, None, limit).await
    }

    /// Claims older than claim `before`, newest first (a page of a list).
    async fn claims_before(
        &mut self,
        oem_id: Option<&str>,
        thing_name: Option<&str>,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<ClaimRecord>> {
        self.all::<ClaimRecord>("SELECT * FROM staging_claims WHERE ($1 IS NULL OR oem_id = $1) AND ($2 IS NULL OR thing_name = $2) \
             AND id < $3 ORDER BY id DESC LIMIT $4", args![oem_id, thing_name, before.unwrap_or(i64::MAX), limit.clamp(1, 1001)]).await
    }

    /// A new staging administrator token (`stg_...`), shown once; only its hash is kept.
    async fn create_staging_admin_token(&mut self, name: &str) -> Result<String> {
        let token = format!("stg_{}", random_hex(32)?);
        self.run(
            "INSERT INTO staging_admin_tokens (token_hash, name, created) VALUES ($1, $2, $3)",
            args![token_hash(&token), name, now_ms()],
        )
        .await?;
        Ok(token)
    }

    /// The name of the staging administrator token `token`, if it is one.
    async fn staging_admin_for_token(&mut self, token: &str) -> Result<Option<String>> {
        let row: Option<(String,)> = self
            .optional("SELECT name FROM staging_admin_tokens WHERE token_hash = $1", args![token_hash(token)])
            .await?;
        Ok(row.map(|(name,)| name))
    }

    /// Adds a portal user; `password_hash` is a PHC string (Argon2id).
    async fn create_portal_user(&mut self, oem_id: &str, email: &str, password_hash: &str) -> Result<i64> {
        let row: Option<(i64,)> = self
            .optional(
                "INSERT INTO portal_users (oem_id, email, password_hash, created) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING RETURNING id",
                args![oem_id, email, password_hash, now_ms()],
            )
            .await?;
        match row {
            Some((id,)) => Ok(id),
            None => Err(RegistryError::AlreadyExists { kind: "user", name: email.into() }),
        }
    }

    /// A portal user and their password hash, by e-mail.
    async fn portal_user_by_email(
        &mut self,
        oem_id: &str,
        email: &str,
    ) -> Result<Option<(PortalUser, String)>> {
        let row: Option<(i64, String, String, String)> = self
            .optional(
                "SELECT id, oem_id, email, password_hash FROM portal_users WHERE oem_id = $1 AND email = $2",
                args![oem_id, email],
            )
            .await?;
        Ok(row.map(|(id, oem_id, email, hash)| (PortalUser { id, oem_id, email }, hash)))
    }

    /// A new portal session for `user_id`, valid `ttl_ms`; returns the cookie value.
    async fn create_portal_session(&mut self, user_id: i64, ttl_ms: i64) -> Result<String> {
        let token = random_hex(32)?;
        self.run("DELETE FROM portal_sessions WHERE expires < $1", args![now_ms()]).await?;
        self.run(
            "INSERT INTO portal_sessions (token_hash, user_id, expires) VALUES ($1, $2, $3)",
            args![token_hash(&token), user_id, now_ms() + ttl_ms],
        )
        .await?;
        Ok(token)
    }

    /// The user of a live portal session.
    async fn portal_session(&mut self, token: &str) -> Result<Option<PortalUser>> {
        self.optional(
            "SELECT u.id, u.oem_id, u.email FROM portal_sessions s JOIN portal_users u ON u.id = s.user_id \
             WHERE s.token_hash = $1 AND s.expires > $2",
            args![token_hash(token), now_ms()],
        )
        .await
    }

    /// Ends a portal session.
    async fn delete_portal_session(&mut self, token: &str) -> Result<()> {
        self.run("DELETE FROM portal_sessions WHERE token_hash = $1", args![token_hash(token)]).await?;
        Ok(())
    }

    /// The portal user whose list holds a device, if any.
    async fn portal_holder(&mut self, thing_name: &str) -> Result<Option<i64>> {
        Ok(self
            .optional::<(i64,)>("SELECT user_id FROM portal_devices WHERE thing_name = $1", args![thing_name])
            .await?
            .map(|(v,)| v))
    }

    /// Lists a device under a portal user, unless another user holds it (a device is in one
    /// list at a time). Returns whether `user_id` holds it now.
    async fn add_portal_device(&mut self, user_id: i64, thing_name: &str, now: i64) -> Result<bool> {
        self.run("INSERT INTO portal_devices (user_id, thing_name, added) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING", args![user_id, thing_name, now]).await?;
        Ok(self.portal_holder(thing_name).await? == Some(user_id))
    }

    /// Removes a device from a portal user's list; returns whether it was there.
    async fn remove_portal_device(&mut self, user_id: i64, thing_name: &str) -> Result<bool> {
        Ok(self
            .run(
                "DELETE FROM portal_devices WHERE user_id = $1 AND thing_name = $2",
                args![user_id, thing_name],
            )
            .await?
            == 1)
    }

    /// A portal user's devices: (ThingName, added), newest first.
    async fn portal_devices(&mut self, user_id: i64) -> Result<Vec<(String, i64)>> {
        self.all(
            "SELECT thing_name, added FROM portal_devices WHERE user_id = $1 ORDER BY added DESC",
            args![user_id],
        )
        .await
    }
}
