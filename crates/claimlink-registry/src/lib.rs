//! The registry of claimlink's OEM accounts: accounts and their API tokens, things, thing types
//! and groups, device and CA certificates, policies and their attachments, provisioning
//! templates, provisioning failures and an audit trail.
//!
//! One [`Store`] serves SQLite (the embedded default: WAL, one writer connection and several
//! read-only ones) and PostgreSQL (a pool), through sqlx's `Any` driver: the SQL is written once
//! in the dialect both accept, and only the DDL differs (the auto-increment key). Every
//! operation runs in a [`Tx`], so that several of them (a just-in-time provisioning) commit or
//! vanish together. Values are checked against the registry's limits before any SQL runs.

#![forbid(unsafe_code)]

pub mod model;
pub mod staging;

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use claimlink_pki::Certificate;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Row, Transaction};

pub use model::*;

/// Why an operation failed. [`RegistryError::code`] is stable (AWS IoT's exception names), and
/// messages never hold secrets.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// Something named does not exist.
    #[error("{kind} {name:?} does not exist")]
    NotFound {
        /// What kind of thing.
        kind: &'static str,
        /// Its name or id.
        name: String,
    },
    /// It exists already.
    #[error("{kind} {name:?} already exists")]
    AlreadyExists {
        /// What kind of thing.
        kind: &'static str,
        /// Its name or id.
        name: String,
    },
    /// A value breaks a rule.
    #[error("{0}")]
    Invalid(String),
    /// A registry limit would be exceeded.
    #[error("{0}")]
    LimitExceeded(String),
    /// The certificate's state does not allow this (a revoked certificate, an inactive CA...).
    #[error("{0}")]
    State(String),
    /// Still used by something else (a template a CA runs): delete or change that first.
    #[error("{kind} {name:?} is in use by {user}")]
    InUse {
        /// What kind of thing.
        kind: &'static str,
        /// Its name.
        name: String,
        /// What uses it.
        user: String,
    },
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The operating system's random generator failed: no identifier or token is made.
    #[error("the random generator failed")]
    Randomness,
}

impl RegistryError {
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }

    pub(crate) fn limit(message: impl Into<String>) -> Self {
        Self::LimitExceeded(message.into())
    }

    fn not_found(kind: &'static str, name: &str) -> Self {
        Self::NotFound { kind, name: name.to_owned() }
    }

    /// The stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "ResourceNotFoundException",
            Self::AlreadyExists { .. } => "ResourceAlreadyExistsException",
            Self::Invalid(_) => "InvalidRequestException",
            Self::LimitExceeded(_) => "LimitExceededException",
            Self::State(_) => "CertificateStateException",
            Self::InUse { .. } => "DeleteConflictException",
            Self::Database(_) | Self::Randomness => "InternalFailureException",
        }
    }

    /// Whether a unique constraint refused the write (a concurrent creation of the same row).
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::AlreadyExists { .. })
            || matches!(self, Self::Database(sqlx::Error::Database(e)) if e.is_unique_violation())
    }
}

/// Result of registry operations.
pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// The database behind a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// The registry database.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Backend,
    writer: AnyPool,
    reader: AnyPool,
}

const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/0001_registry.sql")),
    (2, include_str!("../migrations/0002_connect_indexes.sql")),
    (3, include_str!("../migrations/0003_staging.sql")),
    (4, include_str!("../migrations/0004_claim_lockouts.sql")),
    (5, include_str!("../migrations/0005_view_index.sql")),
    (6, include_str!("../migrations/0006_claim_bound_admission.sql")),
];

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// An `INSERT ... ON CONFLICT DO NOTHING` that inserted nothing: the row exists. (Inserting
/// without a conflict error keeps a PostgreSQL transaction usable after it.)
fn created(rows: u64, kind: &'static str, name: &str) -> Result<()> {
    if rows == 0 { Err(RegistryError::AlreadyExists { kind, name: name.to_owned() }) } else { Ok(()) }
}

impl Store {
    /// Opens (creating if needed) the registry at `url` - `sqlite://PATH` or
    /// `postgres://...` - and applies the migrations it lacks.
    pub async fn open(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let store = if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))
        {
            let path = path.split('?').next().unwrap_or(path).to_owned();
            // One writer: SQLite takes one at a time anyway, and a single connection never
            // meets SQLITE_BUSY between two writers upgrading their locks.
            let writer = AnyPoolOptions::new()
                .max_connections(1)
                .after_connect(|c, _| sqlite_pragmas(c))
                .connect_with(any_options(&format!("sqlite://{path}?mode=rwc"))?)
                .await?;
            sqlx::query("PRAGMA journal_mode = WAL").execute(&writer).await?;
            let reader = AnyPoolOptions::new()
                .max_connections(4)
                .after_connect(|c, _| sqlite_pragmas(c))
                .connect_with(any_options(&format!("sqlite://{path}?mode=ro"))?)
                .await?;
            Store { backend: Backend::Sqlite, writer, reader }
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = AnyPoolOptions::new().max_connections(16).connect_with(any_options(url)?).await?;
            Store { backend: Backend::Postgres, writer: pool.clone(), reader: pool }
        } else {
            return Err(RegistryError::invalid("the database URL must start with sqlite:// or postgres://"));
        };
        store.migrate().await?;
        Ok(store)
    }

    /// The database in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    async fn migrate(&self) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied BIGINT NOT NULL)")
            .execute(&mut *tx)
            .await?;
        if self.backend == Backend::Postgres {
            // Two processes migrating at once: the second waits for the first.
            sqlx::query("LOCK TABLE schema_migrations IN EXCLUSIVE MODE").execute(&mut *tx).await?;
        }
        for (version, sql) in MIGRATIONS {
            let done = sqlx::query("SELECT version FROM schema_migrations WHERE version = $1")
                .bind(version)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            if done {
                continue;
            }
            let id = match self.backend {
                Backend::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
                Backend::Postgres => "BIGSERIAL PRIMARY KEY",
            };
            sqlx::raw_sql(&sql.replace("{ID}", id)).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO schema_migrations (version, applied) VALUES ($1, $2)")
                .bind(version)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
            tracing::info!(version, "registry migration applied");
        }
        tx.commit().await?;
        Ok(())
    }

    /// A read-write transaction.
    pub async fn begin(&self) -> Result<Tx> {
        Ok(Tx { tx: self.writer.begin().await? })
    }

    /// A read-write transaction whose commit does not wait for the disk: a crash (of the
    /// machine, not the process) may lose it whole, never half of it. For work that is redone
    /// anyway if lost - a just-in-time provisioning, which the device's next connection
    /// repeats. This is what SQLite's `synchronous=NORMAL` gives every commit; on PostgreSQL
    /// it is `synchronous_commit = off` for this transaction only.
    pub async fn begin_relaxed(&self) -> Result<Tx> {
        let mut tx = self.writer.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SET LOCAL synchronous_commit = off").execute(&mut *tx).await?;
        }
        Ok(Tx { tx })
    }

    /// A read-only transaction (on SQLite, a read-only connection that does not wait for the
    /// writer).
    pub async fn read(&self) -> Result<Tx> {
        Ok(Tx { tx: self.reader.begin().await? })
    }
}

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Per-connection SQLite settings: wait for the writer rather than fail, enforce foreign keys,
/// and fsync at checkpoints rather than at every commit (WAL keeps commits atomic and the
/// database consistent after a crash; the last commits before a power loss may be lost).
fn sqlite_pragmas(conn: &mut sqlx::AnyConnection) -> BoxFuture<'_, Result<(), sqlx::Error>> {
    Box::pin(async move {
        for p in ["PRAGMA busy_timeout = 5000", "PRAGMA foreign_keys = ON", "PRAGMA synchronous = NORMAL"] {
            sqlx::query(p).execute(&mut *conn).await?;
        }
        Ok(())
    })
}

fn any_options(url: &str) -> Result<AnyConnectOptions> {
    url.parse::<AnyConnectOptions>().map_err(|_| RegistryError::invalid("the database URL is not valid"))
}

/// A transaction: every registry operation. Dropped without [`Tx::commit`], it rolls back.
pub struct Tx {
    tx: Transaction<'static, Any>,
}

impl std::fmt::Debug for Tx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tx")
    }
}

/// A CA certificate to register.
#[derive(Debug, Clone, Copy)]
pub struct NewCa<'a> {
    /// The CA certificate, PEM.
    pub pem: &'a str,
    /// DEFAULT or SNI_ONLY.
    pub mode: CaMode,
    /// Initial status.
    pub status: CaStatus,
    /// Register unknown certificates it issued when they first connect.
    pub auto_registration: bool,
    /// The JITP template for them.
    pub template_name: Option<&'a str>,
    /// DEFAULT mode: a certificate from this CA whose CN is the registration code.
    pub verification_pem: Option<&'a str>,
}

impl<'a> NewCa<'a> {
    /// An ACTIVE CA in `mode` without auto-registration, template or verification.
    pub fn new(pem: &'a str, mode: CaMode) -> Self {
        Self {
            pem,
            mode,
            status: CaStatus::Active,
            auto_registration: false,
            template_name: None,
            verification_pem: None,
        }
    }
}

/// What a policy is attached to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyTarget {
    /// A certificate, by id.
    Certificate(String),
    /// A thing group, by name.
    ThingGroup(String),
}

impl PolicyTarget {
    fn parts(&self) -> (&'static str, &str) {
        match self {
            Self::Certificate(id) => ("cert", id),
            Self::ThingGroup(name) => ("thinggroup", name),
        }
    }
}

/// Random bytes from the operating system, or an error (never zeros).
fn random_bytes(n: usize) -> Result<Vec<u8>> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).map_err(|_| RegistryError::Randomness)?;
    Ok(b)
}

fn random_digits(n: usize) -> Result<String> {
    // Rejection sampling: bytes of 250 and more would bias the digits.
    let mut out = String::with_capacity(n);
    while out.len() < n {
        for b in random_bytes(n)? {
            if b < 250 && out.len() < n {
                out.push(char::from(b'0' + b % 10));
            }
        }
    }
    Ok(out)
}

fn random_hex(bytes: usize) -> Result<String> {
    Ok(hex::encode(random_bytes(bytes)?))
}

/// API tokens are 256-bit random strings, so a plain SHA-256 is the right hash for them (no
/// password stretching needed: nothing to guess).
fn token_hash(token: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()))
}

fn account_from(r: &AnyRow) -> Result<Account> {
    Ok(Account {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        endpoint: r.try_get("endpoint")?,
        region: r.try_get("region")?,
        registration_code: r.try_get("registration_code")?,
        created: r.try_get("created")?,
    })
}

fn ca_from(r: &AnyRow) -> Result<CaCertificate> {
    Ok(CaCertificate {
        id: r.try_get("id")?,
        pem: r.try_get("pem")?,
        mode: CaMode::parse(&r.try_get::<String, _>("mode")?)?,
        status: CaStatus::parse(&r.try_get::<String, _>("status")?)?,
        auto_registration: r.try_get::<i64, _>("auto_registration")? != 0,
        template_name: r.try_get("template_name")?,
        require_claim: r.try_get::<i64, _>("require_claim")? != 0,
        created: r.try_get("created")?,
        updated: r.try_get("updated")?,
    })
}

fn cert_from(r: &AnyRow) -> Result<CertificateRecord> {
    Ok(CertificateRecord {
        id: r.try_get("id")?,
        pem: r.try_get("pem")?,
        status: CertificateStatus::parse(&r.try_get::<String, _>("status")?)?,
        ca_id: r.try_get("ca_id")?,
        created: r.try_get("created")?,
        updated: r.try_get("updated")?,
    })
}

fn thing_from(r: &AnyRow) -> Result<Thing> {
    let attributes: String = r.try_get("attributes")?;
    Ok(Thing {
        name: r.try_get("name")?,
        thing_type: r.try_get("thing_type")?,
        attributes: serde_json::from_str(&attributes).unwrap_or_default(),
        version: r.try_get("version")?,
        created: r.try_get("created")?,
        updated: r.try_get("updated")?,
    })
}

fn template_from(r: &AnyRow) -> Result<Template> {
    Ok(Template {
        name: r.try_get("name")?,
        kind: TemplateKind::parse(&r.try_get::<String, _>("kind")?)?,
        body: r.try_get("body")?,
        enabled: r.try_get::<i64, _>("enabled")? != 0,
        description: r.try_get("description")?,
        created: r.try_get("created")?,
        updated: r.try_get("updated")?,
    })
}

/// A certificate given as PEM: exactly one certificate, and no private key beside it.
pub fn parse_certificate_pem(pem: &str) -> Result<Certificate> {
    if pem.contains("PRIVATE KEY-----") {
        return Err(RegistryError::invalid("the PEM holds a private key; send the certificate only"));
    }
    let chain = Certificate::chain_from_pem(pem.as_bytes())
        .map_err(|e| RegistryError::invalid(format!("not a valid certificate PEM: {e}")))?;
    match <[Certificate; 1]>::try_from(chain) {
        Ok([c]) => Ok(c),
        Err(v) => Err(RegistryError::invalid(format!("expected one certificate, found {}", v.len()))),
    }
}

impl Tx {
    /// Makes everything done in this transaction durable.
    pub async fn commit(self) -> Result<()> {
        Ok(self.tx.commit().await?)
    }

    // ---- accounts ----------------------------------------------------------------------

    /// Creates an account.
    pub async fn create_account(&mut self, name: &str, endpoint: &str, region: &str) -> Result<Account> {
        validate_thing_name("account name", name)?;
        let host_ok = !endpoint.is_empty()
            && endpoint.len() <= 253
            && endpoint.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
        if !host_ok {
            return Err(RegistryError::invalid(format!("endpoint {endpoint:?} is not a host name")));
        }
        validate_thing_name("region", region)?;
        let account = Account {
            id: random_digits(12)?,
            name: name.to_owned(),
            endpoint: endpoint.to_ascii_lowercase(),
            region: region.to_owned(),
            registration_code: random_hex(32)?,
            created: now_ms(),
        };
        let n = sqlx::query(
            "INSERT INTO accounts (id, name, endpoint, region, registration_code, created) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(&account.id)
        .bind(&account.name)
        .bind(&account.endpoint)
        .bind(&account.region)
        .bind(&account.registration_code)
        .bind(account.created)
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        created(n, "account", name)?;
        Ok(account)
    }

    /// An account by id.
    pub async fn account(&mut self, id: &str) -> Result<Account> {
        let row = sqlx::query("SELECT * FROM accounts WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *self.tx)
            .await?;
        row.as_ref().map(account_from).transpose()?.ok_or_else(|| RegistryError::not_found("account", id))
    }

    /// An account by name.
    pub async fn account_by_name(&mut self, name: &str) -> Result<Option<Account>> {
        let row = sqlx::query("SELECT * FROM accounts WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *self.tx)
            .await?;
        row.as_ref().map(account_from).transpose()
    }

    /// The account whose endpoint is `host` (the SNI a device sent).
    pub async fn account_by_endpoint(&mut self, host: &str) -> Result<Option<Account>> {
        let row = sqlx::query("SELECT * FROM accounts WHERE endpoint = $1")
            .bind(host.to_ascii_lowercase())
            .fetch_optional(&mut *self.tx)
            .await?;
        row.as_ref().map(account_from).transpose()
    }

    /// Every account.
    pub async fn accounts(&mut self) -> Result<Vec<Account>> {
        let rows = sqlx::query("SELECT * FROM accounts ORDER BY name").fetch_all(&mut *self.tx).await?;
        rows.iter().map(account_from).collect()
    }

    /// Creates an API token for an account. The token is returned once; only its hash is kept.
    pub async fn create_api_token(&mut self, account_id: &str, name: &str) -> Result<String> {
        self.account(account_id).await?;
        let token = format!("clk_{}", random_hex(32)?);
        sqlx::query("INSERT INTO api_tokens (token_hash, account_id, name, created) VALUES ($1, $2, $3, $4)")
            .bind(token_hash(&token))
            .bind(account_id)
            .bind(name)
            .bind(now_ms())
            .execute(&mut *self.tx)
            .await?;
        Ok(token)
    }

    /// The account and token name an API token belongs to.
    pub async fn account_for_token(&mut self, token: &str) -> Result<Option<(Account, String)>> {
        let row = sqlx::query(
            "SELECT a.*, t.name AS token_name FROM api_tokens t JOIN accounts a ON a.id = t.account_id WHERE t.token_hash = $1",
        )
        .bind(token_hash(token))
        .fetch_optional(&mut *self.tx)
        .await?;
        match row {
            Some(r) => Ok(Some((account_from(&r)?, r.try_get("token_name")?))),
            None => Ok(None),
        }
    }

    // ---- CA certificates -------------------------------------------------------------

    /// Registers a CA certificate. DEFAULT mode needs `verification_pem`: a certificate
    /// issued by this CA whose CN is the account's registration code (proof of possession);
    /// and a CA in DEFAULT mode may belong to only one account per region.
    pub async fn register_ca(&mut self, account: &Account, new: &NewCa<'_>) -> Result<CaCertificate> {
        let NewCa { pem, mode, status, auto_registration, template_name, verification_pem } = *new;
        let ca = parse_certificate_pem(pem)?;
        if !ca.is_ca() {
            return Err(RegistryError::invalid(
                "the certificate is not a CA (basicConstraints cA is not set)",
            ));
        }
        if mode == CaMode::Default {
            let Some(v) = verification_pem else {
                return Err(RegistryError::invalid(
                    "DEFAULT mode needs a verification certificate whose CN is the registration code",
                ));
            };
            let v = parse_certificate_pem(v)?;
            if v.common_name().as_deref() != Some(account.registration_code.as_str()) {
                return Err(RegistryError::invalid(
                    "the verification certificate's CN is not this account's registration code",
                ));
            }
            if !signed_by(&v, &ca) {
                return Err(RegistryError::invalid("the verification certificate was not signed by this CA"));
            }
        }
        if let Some(t) = template_name {
            self.template(&account.id, t).await?;
        }
        let id = ca.id().to_string();
        let now = now_ms();
        let n = sqlx::query(
            "INSERT INTO ca_certificates (account_id, id, region, pem, mode, status, auto_registration, template_name, created, updated) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) ON CONFLICT DO NOTHING",
        )
        .bind(&account.id)
        .bind(&id)
        .bind(&account.region)
        .bind(ca.to_pem())
        .bind(mode.as_str())
        .bind(status.as_str())
        .bind(i64::from(auto_registration))
        .bind(template_name)
        .bind(now)
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        if n == 0 {
            // Either this account has it already, or (DEFAULT) another account in the region.
            let mine = self.describe_ca(&account.id, &id).await.is_ok();
            return Err(if mine || mode != CaMode::Default {
                RegistryError::AlreadyExists { kind: "CA certificate", name: id }
            } else {
                RegistryError::State(format!(
                    "CA certificate {id} is registered in DEFAULT mode by another account in {}; \
                     register it with --certificate-mode SNI_ONLY",
                    account.region
                ))
            });
        }
        self.describe_ca(&account.id, &id).await
    }

    /// A CA certificate of an account.
    pub async fn describe_ca(&mut self, account_id: &str, id: &str) -> Result<CaCertificate> {
        let row = sqlx::query("SELECT * FROM ca_certificates WHERE account_id = $1 AND id = $2")
            .bind(account_id)
            .bind(id)
            .fetch_optional(&mut *self.tx)
            .await?;
        row.as_ref().map(ca_from).transpose()?.ok_or_else(|| RegistryError::not_found("CA certificate", id))
    }

    /// An account's CA certificates.
    pub async fn list_cas(&mut self, account_id: &str) -> Result<Vec<CaCertificate>> {
        let rows = sqlx::query("SELECT * FROM ca_certificates WHERE account_id = $1 ORDER BY created, id")
            .bind(account_id)
            .fetch_all(&mut *self.tx)
            .await?;
        rows.iter().map(ca_from).collect()
    }

    /// Changes a CA's status, auto-registration or template (`Some(None)` removes it).
    pub async fn update_ca(
        &mut self,
        account_id: &str,
        id: &str,
        status: Option<CaStatus>,
        auto_registration: Option<bool>,
        template_name: Option<Option<&str>>,
    ) -> Result<CaCertificate> {
        let mut ca = self.describe_ca(account_id, id).await?;
        if let Some(s) = status {
            ca.status = s;
        }
        if let Some(a) = auto_registration {
            ca.auto_registration = a;
        }
        if let Some(t) = template_name {
            if let Some(t) = t {
                self.template(account_id, t).await?;
            }
            ca.template_name = t.map(str::to_owned);
        }
        sqlx::query(
            "UPDATE ca_certificates SET status = $1, auto_registration = $2, template_name = $3, updated = $4 \
             WHERE account_id = $5 AND id = $6",
        )
        .bind(ca.status.as_str())
        .bind(i64::from(ca.auto_registration))
        .bind(&ca.template_name)
        .bind(now_ms())
        .bind(account_id)
        .bind(id)
        .execute(&mut *self.tx)
        .await?;
        self.describe_ca(account_id, id).await
    }

    /// Whether the CA admits its certificates only with a claim ticket.
    pub async fn set_ca_require_claim(&mut self, account_id: &str, id: &str, require: bool) -> Result<()> {
        let rows = sqlx::query(
            "UPDATE ca_certificates SET require_claim = $1, updated = $2 WHERE account_id = $3 AND id = $4",
        )
        .bind(i64::from(require))
        .bind(now_ms())
        .bind(account_id)
        .bind(id)
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        if rows == 0 {
            return Err(RegistryError::not_found("CA certificate", id));
        }
        Ok(())
    }

    // ---- claim issuers and claim admissions ------------------------------------------

    /// Trusts a claim issuer's public key (SPKI PEM, checked by the caller) under `name`; a
    /// second call with the same name replaces the key.
    pub async fn put_claim_issuer(
        &mut self,
        account_id: &str,
        name: &str,
        public_key_pem: &str,
    ) -> Result<()> {
        if name.is_empty()
            || name.len() > 128
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(RegistryError::invalid("a claim issuer name has 1 to 128 of A-Z a-z 0-9 - _ ."));
        }
        if public_key_pem.len() > 16 * 1024 {
            return Err(RegistryError::limit("a claim issuer key is at most 16 KiB of PEM"));
        }
        sqlx::query(
            "INSERT INTO claim_issuers (account_id, name, public_key_pem, created) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (account_id, name) DO UPDATE SET public_key_pem = $3, created = $4",
        )
        .bind(account_id)
        .bind(name)
        .bind(public_key_pem)
        .bind(now_ms())
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// The claim issuers an account trusts: (name, public key PEM).
    pub async fn claim_issuers(&mut self, account_id: &str) -> Result<Vec<(String, String)>> {
        let rows =
            sqlx::query("SELECT name, public_key_pem FROM claim_issuers WHERE account_id = $1 ORDER BY name")
                .bind(account_id)
                .fetch_all(&mut *self.tx)
                .await?;
        rows.iter().map(|r| Ok((r.try_get("name")?, r.try_get("public_key_pem")?))).collect()
    }

    /// The claim a certificate was last admitted under, and when that claim ended.
    pub async fn claim_admission(
        &mut self,
        account_id: &str,
        certificate_id: &str,
    ) -> Result<Option<(i64, Option<i64>)>> {
        let row = sqlx::query("SELECT claim_id, released_at FROM claim_admissions WHERE account_id = $1 AND certificate_id = $2")
            .bind(account_id)
            .bind(certificate_id)
            .fetch_optional(&mut *self.tx)
            .await?;
        row.map(|r| Ok((r.try_get("claim_id")?, r.try_get("released_at")?))).transpose()
    }

    /// Admits a certificate under claim `claim_id` (a newer claim than any before: the caller
    /// checks), replacing an older admission.
    pub async fn admit_claim(&mut self, account_id: &str, certificate_id: &str, claim_id: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO claim_admissions (account_id, certificate_id, claim_id, admitted_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (account_id, certificate_id) DO UPDATE SET claim_id = $3, admitted_at = $4, released_at = NULL \
             WHERE claim_admissions.claim_id < $3",
        )
        .bind(account_id)
        .bind(certificate_id)
        .bind(claim_id)
        .bind(now_ms())
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Ends claim `claim_id` for a certificate (a release notice): its tickets for that claim,
    /// or any older one, admit it no more. Returns whether anything changed.
    pub async fn release_claim(
        &mut self,
        account_id: &str,
        certificate_id: &str,
        claim_id: i64,
    ) -> Result<bool> {
        let now = now_ms();
        let rows = sqlx::query(
            "INSERT INTO claim_admissions (account_id, certificate_id, claim_id, admitted_at, released_at) \
             VALUES ($1, $2, $3, $4, $4) \
             ON CONFLICT (account_id, certificate_id) DO UPDATE SET claim_id = $3, released_at = $4 \
             WHERE claim_admissions.claim_id <= $3 AND claim_admissions.released_at IS NULL",
        )
        .bind(account_id)
        .bind(certificate_id)
        .bind(claim_id)
        .bind(now)
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        Ok(rows > 0)
    }

    // ---- device certificates ---------------------------------------------------------

    /// Registers a device certificate. With `ca_id`, the CA must be registered in this
    /// account and must have signed it.
    pub async fn register_certificate(
        &mut self,
        account_id: &str,
        pem: &str,
        ca_id: Option<&str>,
        status: CertificateStatus,
    ) -> Result<CertificateRecord> {
        let cert = parse_certificate_pem(pem)?;
        if let Some(ca_id) = ca_id {
            let ca = self.describe_ca(account_id, ca_id).await?;
            let ca_cert = parse_certificate_pem(&ca.pem)?;
            if !signed_by(&cert, &ca_cert) {
                return Err(RegistryError::invalid(format!("the certificate was not issued by CA {ca_id}")));
            }
        }
        if cert.is_ca() {
            return Err(RegistryError::invalid(
                "a CA certificate cannot be registered as a device certificate",
            ));
        }
        let id = cert.id().to_string();
        let now = now_ms();
        let n = sqlx::query(
            "INSERT INTO certificates (account_id, id, pem, status, ca_id, created, updated) VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT DO NOTHING",
        )
        .bind(account_id)
        .bind(&id)
        .bind(cert.to_pem())
        .bind(status.as_str())
        .bind(ca_id)
        .bind(now)
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        created(n, "certificate", &id)?;
        self.describe_certificate(account_id, &id).await
    }

    /// A device certificate, if registered.
    pub async fn certificate(&mut self, account_id: &str, id: &str) -> Result<Option<CertificateRecord>> {
        let row = sqlx::query("SELECT * FROM certificates WHERE account_id = $1 AND id = $2")
            .bind(account_id)
            .bind(id)
            .fetch_optional(&mut *self.tx)
            .await?;
        row.as_ref().map(cert_from).transpose()
    }

    /// A device certificate.
    pub async fn describe_certificate(&mut self, account_id: &str, id: &str) -> Result<CertificateRecord> {
        self.certificate(account_id, id).await?.ok_or_else(|| RegistryError::not_found("certificate", id))
    }

    /// An account's device certificates.
    pub async fn list_certificates(&mut self, account_id: &str) -> Result<Vec<CertificateRecord>> {
        let rows = sqlx::query("SELECT * FROM certificates WHERE account_id = $1 ORDER BY created, id")
            .bind(account_id)
            .fetch_all(&mut *self.tx)
            .await?;
        rows.iter().map(cert_from).collect()
    }

    /// Up to `limit` certificates with ids after `after`, by id (a page of a list).
    pub async fn certificates_page(
        &mut self,
        account_id: &str,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<CertificateRecord>> {
        let rows =
            sqlx::query("SELECT * FROM certificates WHERE account_id = $1 AND id > $2 ORDER BY id LIMIT $3")
                .bind(account_id)
                .bind(after.unwrap_or(""))
                .bind(limit)
                .fetch_all(&mut *self.tx)
                .await?;
        rows.iter().map(cert_from).collect()
    }

    /// Ids of the certificates registered without a CA and not revoked (from the index, no
    /// PEM read).
    pub async fn registered_without_ca(&mut self, account_id: &str) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT id FROM certificates WHERE account_id = $1 AND ca_id IS NULL AND status <> 'REVOKED'",
        )
        .bind(account_id)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter().map(|r| Ok(r.try_get("id")?)).collect()
    }

    /// A cheap fingerprint of what the account endpoint keeps in memory for an account: count
    /// and latest change of its CAs, of its certificates registered without a CA, and of its
    /// claim issuers. It changes when they change.
    pub async fn view_marker(&mut self, account_id: &str) -> Result<[i64; 6]> {
        let cas = sqlx::query(
            "SELECT COUNT(*) AS n, COALESCE(MAX(updated), 0) AS at FROM ca_certificates WHERE account_id = $1",
        )
        .bind(account_id)
        .fetch_one(&mut *self.tx)
        .await?;
        let certs = sqlx::query(
            "SELECT COUNT(*) AS n, COALESCE(MAX(updated), 0) AS at FROM certificates \
             WHERE account_id = $1 AND ca_id IS NULL AND status <> 'REVOKED'",
        )
        .bind(account_id)
        .fetch_one(&mut *self.tx)
        .await?;
        let issuers = sqlx::query(
            "SELECT COUNT(*) AS n, COALESCE(MAX(created), 0) AS at FROM claim_issuers WHERE account_id = $1",
        )
        .bind(account_id)
        .fetch_one(&mut *self.tx)
        .await?;
        Ok([
            cas.try_get("n")?,
            cas.try_get("at")?,
            certs.try_get("n")?,
            certs.try_get("at")?,
            issuers.try_get("n")?,
            issuers.try_get("at")?,
        ])
    }

    /// Changes a certificate's status. REVOKED is final.
    pub async fn update_certificate_status(
        &mut self,
        account_id: &str,
        id: &str,
        status: CertificateStatus,
    ) -> Result<CertificateRecord> {
        let current = self.describe_certificate(account_id, id).await?;
        if current.status == CertificateStatus::Revoked && status != CertificateStatus::Revoked {
            return Err(RegistryError::State(format!("certificate {id} is revoked; that is final")));
        }
        sqlx::query("UPDATE certificates SET status = $1, updated = $2 WHERE account_id = $3 AND id = $4")
            .bind(status.as_str())
            .bind(now_ms())
            .bind(account_id)
            .bind(id)
            .execute(&mut *self.tx)
            .await?;
        self.describe_certificate(account_id, id).await
    }

    // ---- things, types, groups -------------------------------------------------------

    /// Creates a thing.
    pub async fn create_thing(
        &mut self,
        account_id: &str,
        name: &str,
        thing_type: Option<&str>,
        attributes: &BTreeMap<String, String>,
    ) -> Result<Thing> {
        validate_thing_name("thing name", name)?;
        validate_attributes(attributes)?;
        if let Some(t) = thing_type {
            self.require_thing_type(account_id, t).await?;
        }
        let now = now_ms();
        let n = sqlx::query(
            "INSERT INTO things (account_id, name, thing_type, attributes, version, created, updated) VALUES ($1, $2, $3, $4, 1, $5, $5) ON CONFLICT DO NOTHING",
        )
        .bind(account_id)
        .bind(name)
        .bind(thing_type)
        .bind(serde_json::to_string(attributes).unwrap_or_default())
        .bind(now)
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        created(n, "thing", name)?;
        self.describe_thing(account_id, name).await
    }

    /// A thing, if it exists.
    pub async fn thing(&mut self, account_id: &str, name: &str) -> Result<Option<Thing>> {
        let row = sqlx::query("SELECT * FROM things WHERE account_id = $1 AND name = $2")
            .bind(account_id)
            .bind(name)
            .fetch_optional(&mut *self.tx)
            .await?;
        row.as_ref().map(thing_from).transpose()
    }

    /// A thing.
    pub async fn describe_thing(&mut self, account_id: &str, name: &str) -> Result<Thing> {
        self.thing(account_id, name).await?.ok_or_else(|| RegistryError::not_found("thing", name))
    }

    /// An account's things, by name.
    pub async fn list_things(&mut self, account_id: &str) -> Result<Vec<Thing>> {
        self.things_page(account_id, None, i64::MAX).await
    }

    /// Up to `limit` things named after `after`, by name (a page of a list).
    pub async fn things_page(
        &mut self,
        account_id: &str,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Thing>> {
        let rows =
            sqlx::query("SELECT * FROM things WHERE account_id = $1 AND name > $2 ORDER BY name LIMIT $3")
                .bind(account_id)
                .bind(after.unwrap_or(""))
                .bind(limit)
                .fetch_all(&mut *self.tx)
                .await?;
        rows.iter().map(thing_from).collect()
    }

    /// Replaces a thing's type and attributes (one version up).
    pub async fn update_thing(
        &mut self,
        account_id: &str,
        name: &str,
        thing_type: Option<&str>,
        attributes: &BTreeMap<String, String>,
    ) -> Result<Thing> {
        validate_attributes(attributes)?;
        if let Some(t) = thing_type {
            self.require_thing_type(account_id, t).await?;
        }
        let n = sqlx::query(
            "UPDATE things SET thing_type = $1, attributes = $2, version = version + 1, updated = $3 \
             WHERE account_id = $4 AND name = $5",
        )
        .bind(thing_type)
        .bind(serde_json::to_string(attributes).unwrap_or_default())
        .bind(now_ms())
        .bind(account_id)
        .bind(name)
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(RegistryError::not_found("thing", name));
        }
        self.describe_thing(account_id, name).await
    }

    /// Deletes a thing. Its certificates must be detached first.
    pub async fn delete_thing(&mut self, account_id: &str, name: &str) -> Result<()> {
        let attached = sqlx::query(
            "SELECT certificate_id FROM thing_principals WHERE account_id = $1 AND thing_name = $2",
        )
        .bind(account_id)
        .bind(name)
        .fetch_optional(&mut *self.tx)
        .await?;
        if attached.is_some() {
            return Err(RegistryError::invalid(format!(
                "thing {name:?} has certificates attached; detach them first"
            )));
        }
        let n = sqlx::query("DELETE FROM things WHERE account_id = $1 AND name = $2")
            .bind(account_id)
            .bind(name)
            .execute(&mut *self.tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(RegistryError::not_found("thing", name));
        }
        sqlx::query("DELETE FROM thing_group_members WHERE account_id = $1 AND thing_name = $2")
            .bind(account_id)
            .bind(name)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// Creates a thing type.
    pub async fn create_thing_type(
        &mut self,
        account_id: &str,
        name: &str,
        description: Option<&str>,
        searchable_attributes: &[String],
    ) -> Result<()> {
        validate_thing_name("thing type name", name)?;
        if searchable_attributes.len() > 3 {
            return Err(RegistryError::limit("at most 3 searchable attributes per thing type"));
        }
        for a in searchable_attributes {
            let ok = (1..=128).contains(&a.len())
                && a.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.,@/:#-".contains(&b));
            if !ok {
                return Err(RegistryError::invalid(
                    "a searchable attribute is 1-128 characters of a-z A-Z 0-9 _ . , @ / : # -",
                ));
            }
        }
        if description.is_some_and(|d| d.chars().count() > 2028) {
            return Err(RegistryError::limit("a thing type description has at most 2,028 characters"));
        }
        let n = sqlx::query(
            "INSERT INTO thing_types (account_id, name, description, searchable_attributes, created) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(account_id)
        .bind(name)
        .bind(description)
        .bind(serde_json::to_string(searchable_attributes).unwrap_or_default())
        .bind(now_ms())
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        created(n, "thing type", name)?;
        Ok(())
    }

    /// Whether a thing type exists.
    pub async fn thing_type_exists(&mut self, account_id: &str, name: &str) -> Result<bool> {
        Ok(sqlx::query("SELECT name FROM thing_types WHERE account_id = $1 AND name = $2")
            .bind(account_id)
            .bind(name)
            .fetch_optional(&mut *self.tx)
            .await?
            .is_some())
    }

    async fn require_thing_type(&mut self, account_id: &str, name: &str) -> Result<()> {
        if self.thing_type_exists(account_id, name).await? {
            Ok(())
        } else {
            Err(RegistryError::not_found("thing type", name))
        }
    }

    /// Creates a thing group.
    pub async fn create_thing_group(
        &mut self,
        account_id: &str,
        name: &str,
        parent: Option<&str>,
        attributes: &BTreeMap<String, String>,
    ) -> Result<()> {
        validate_thing_name("thing group name", name)?;
        validate_attributes(attributes)?;
        if let Some(p) = parent {
            if !self.thing_group_exists(account_id, p).await? {
                return Err(RegistryError::not_found("thing group", p));
            }
        }
        let n = sqlx::query("INSERT INTO thing_groups (account_id, name, parent, attributes, created) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING")
            .bind(account_id)
            .bind(name)
            .bind(parent)
            .bind(serde_json::to_string(attributes).unwrap_or_default())
            .bind(now_ms())
            .execute(&mut *self.tx)
            .await?
            .rows_affected();
        created(n, "thing group", name)?;
        Ok(())
    }

    /// Whether a thing group exists.
    pub async fn thing_group_exists(&mut self, account_id: &str, name: &str) -> Result<bool> {
        Ok(sqlx::query("SELECT name FROM thing_groups WHERE account_id = $1 AND name = $2")
            .bind(account_id)
            .bind(name)
            .fetch_optional(&mut *self.tx)
            .await?
            .is_some())
    }

    /// Adds a thing to a group (a thing is in at most 10). Adding it twice is not an error.
    pub async fn add_thing_to_group(&mut self, account_id: &str, group: &str, thing: &str) -> Result<()> {
        if !self.thing_group_exists(account_id, group).await? {
            return Err(RegistryError::not_found("thing group", group));
        }
        self.describe_thing(account_id, thing).await?;
        let groups = self.groups_of_thing(account_id, thing).await?;
        if groups.iter().any(|g| g == group) {
            return Ok(());
        }
        if groups.len() >= MAX_GROUPS_PER_THING {
            return Err(RegistryError::limit(format!("a thing is in at most {MAX_GROUPS_PER_THING} groups")));
        }
        sqlx::query(
            "INSERT INTO thing_group_members (account_id, group_name, thing_name) VALUES ($1, $2, $3)",
        )
        .bind(account_id)
        .bind(group)
        .bind(thing)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Removes a thing from a group (absent: nothing to do).
    pub async fn remove_thing_from_group(
        &mut self,
        account_id: &str,
        group: &str,
        thing: &str,
    ) -> Result<()> {
        sqlx::query(
            "DELETE FROM thing_group_members WHERE account_id = $1 AND group_name = $2 AND thing_name = $3",
        )
        .bind(account_id)
        .bind(group)
        .bind(thing)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// The things in a group.
    pub async fn things_in_group(&mut self, account_id: &str, group: &str) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT thing_name FROM thing_group_members WHERE account_id = $1 AND group_name = $2 ORDER BY thing_name",
        )
        .bind(account_id)
        .bind(group)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter().map(|r| Ok(r.try_get("thing_name")?)).collect()
    }

    /// The groups a thing is in.
    pub async fn groups_of_thing(&mut self, account_id: &str, thing: &str) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT group_name FROM thing_group_members WHERE account_id = $1 AND thing_name = $2 ORDER BY group_name",
        )
        .bind(account_id)
        .bind(thing)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter().map(|r| Ok(r.try_get("group_name")?)).collect()
    }

    /// Attaches a certificate to a thing. Attaching it twice is not an error.
    pub async fn attach_thing_principal(
        &mut self,
        account_id: &str,
        thing: &str,
        certificate_id: &str,
    ) -> Result<()> {
        self.describe_thing(account_id, thing).await?;
        self.describe_certificate(account_id, certificate_id).await?;
        let present = sqlx::query(
            "SELECT thing_name FROM thing_principals WHERE account_id = $1 AND thing_name = $2 AND certificate_id = $3",
        )
        .bind(account_id)
        .bind(thing)
        .bind(certificate_id)
        .fetch_optional(&mut *self.tx)
        .await?
        .is_some();
        if !present {
            sqlx::query(
                "INSERT INTO thing_principals (account_id, thing_name, certificate_id) VALUES ($1, $2, $3)",
            )
            .bind(account_id)
            .bind(thing)
            .bind(certificate_id)
            .execute(&mut *self.tx)
            .await?;
        }
        Ok(())
    }

    /// Detaches a certificate from a thing.
    pub async fn detach_thing_principal(
        &mut self,
        account_id: &str,
        thing: &str,
        certificate_id: &str,
    ) -> Result<()> {
        sqlx::query(
            "DELETE FROM thing_principals WHERE account_id = $1 AND thing_name = $2 AND certificate_id = $3",
        )
        .bind(account_id)
        .bind(thing)
        .bind(certificate_id)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// The things a certificate is attached to.
    pub async fn things_of_certificate(
        &mut self,
        account_id: &str,
        certificate_id: &str,
    ) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT thing_name FROM thing_principals WHERE account_id = $1 AND certificate_id = $2 ORDER BY thing_name",
        )
        .bind(account_id)
        .bind(certificate_id)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter().map(|r| Ok(r.try_get("thing_name")?)).collect()
    }

    // ---- policies --------------------------------------------------------------------

    /// Creates a policy after validating its document. Returns it with the validator's
    /// warnings.
    pub async fn create_policy(
        &mut self,
        account_id: &str,
        name: &str,
        document: &str,
    ) -> Result<(PolicyRecord, Vec<String>)> {
        validate_policy_name(name)?;
        let policy = claimlink_policy::Policy::parse(document)
            .map_err(|e| RegistryError::invalid(format!("{}: {e}", e.code())))?;
        let now = now_ms();
        let n = sqlx::query("INSERT INTO policies (account_id, name, default_version, created, updated) VALUES ($1, $2, 1, $3, $3) ON CONFLICT DO NOTHING")
            .bind(account_id)
            .bind(name)
            .bind(now)
            .execute(&mut *self.tx)
            .await?
            .rows_affected();
        created(n, "policy", name)?;
        sqlx::query(
            "INSERT INTO policy_versions (account_id, policy_name, version, document, created) VALUES ($1, $2, 1, $3, $4)",
        )
        .bind(account_id)
        .bind(name)
        .bind(document)
        .bind(now)
        .execute(&mut *self.tx)
        .await?;
        Ok((self.get_policy(account_id, name).await?, policy.warnings().to_vec()))
    }

    /// A policy with its default version's document.
    pub async fn get_policy(&mut self, account_id: &str, name: &str) -> Result<PolicyRecord> {
        let row = sqlx::query(
            "SELECT p.name, p.default_version, p.created, p.updated, v.document FROM policies p \
             JOIN policy_versions v ON v.account_id = p.account_id AND v.policy_name = p.name AND v.version = p.default_version \
             WHERE p.account_id = $1 AND p.name = $2",
        )
        .bind(account_id)
        .bind(name)
        .fetch_optional(&mut *self.tx)
        .await?;
        let r = row.ok_or_else(|| RegistryError::not_found("policy", name))?;
        policy_from(&r)
    }

    /// An account's policies.
    pub async fn list_policies(&mut self, account_id: &str) -> Result<Vec<PolicyRecord>> {
        let rows = sqlx::query(
            "SELECT p.name, p.default_version, p.created, p.updated, v.document FROM policies p \
             JOIN policy_versions v ON v.account_id = p.account_id AND v.policy_name = p.name AND v.version = p.default_version \
             WHERE p.account_id = $1 ORDER BY p.name",
        )
        .bind(account_id)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter().map(policy_from).collect()
    }

    /// Attaches a policy to a certificate (at most 10 per certificate) or a thing group.
    /// Attaching it twice is not an error.
    pub async fn attach_policy(
        &mut self,
        account_id: &str,
        policy: &str,
        target: &PolicyTarget,
    ) -> Result<()> {
        self.get_policy(account_id, policy).await?;
        let (kind, name) = target.parts();
        match target {
            PolicyTarget::Certificate(id) => {
                self.describe_certificate(account_id, id).await?;
            }
            PolicyTarget::ThingGroup(g) => {
                if !self.thing_group_exists(account_id, g).await? {
                    return Err(RegistryError::not_found("thing group", g));
                }
            }
        }
        let attached = self.attached_policy_names(account_id, target).await?;
        if attached.iter().any(|p| p == policy) {
            return Ok(());
        }
        if matches!(target, PolicyTarget::Certificate(_)) && attached.len() >= MAX_POLICIES_PER_CERTIFICATE {
            return Err(RegistryError::limit(format!(
                "at most {MAX_POLICIES_PER_CERTIFICATE} policies per certificate"
            )));
        }
        sqlx::query("INSERT INTO policy_attachments (account_id, policy_name, target_type, target) VALUES ($1, $2, $3, $4)")
            .bind(account_id)
            .bind(policy)
            .bind(kind)
            .bind(name)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// Detaches a policy.
    pub async fn detach_policy(
        &mut self,
        account_id: &str,
        policy: &str,
        target: &PolicyTarget,
    ) -> Result<()> {
        let (kind, name) = target.parts();
        let n = sqlx::query(
            "DELETE FROM policy_attachments WHERE account_id = $1 AND policy_name = $2 AND target_type = $3 AND target = $4",
        )
        .bind(account_id)
        .bind(policy)
        .bind(kind)
        .bind(name)
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Err(RegistryError::not_found("policy attachment", policy));
        }
        Ok(())
    }

    /// Names of the policies attached to a target.
    pub async fn attached_policy_names(
        &mut self,
        account_id: &str,
        target: &PolicyTarget,
    ) -> Result<Vec<String>> {
        let (kind, name) = target.parts();
        let rows = sqlx::query(
            "SELECT policy_name FROM policy_attachments WHERE account_id = $1 AND target_type = $2 AND target = $3 ORDER BY policy_name",
        )
        .bind(account_id)
        .bind(kind)
        .bind(name)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter().map(|r| Ok(r.try_get("policy_name")?)).collect()
    }

    /// The documents of every policy that applies to a certificate used by `thing`: those
    /// attached to the certificate, and those attached to the thing's groups.
    pub async fn effective_policies(
        &mut self,
        account_id: &str,
        certificate_id: &str,
        thing: Option<&str>,
    ) -> Result<Vec<PolicyRecord>> {
        // One round trip: this runs on every CONNECT. Two index searches (the certificate's
        // attachments; the thing's groups' attachments), never a scan of the fleet.
        let rows = sqlx::query(
            "SELECT p.name, p.default_version, p.created, p.updated, v.document FROM ( \
               SELECT policy_name FROM policy_attachments \
                 WHERE account_id = $1 AND target_type = 'cert' AND target = $2 \
               UNION \
               SELECT a.policy_name FROM thing_group_members m JOIN policy_attachments a \
                 ON a.account_id = m.account_id AND a.target_type = 'thinggroup' AND a.target = m.group_name \
                 WHERE m.account_id = $1 AND m.thing_name = $3 \
             ) x \
             JOIN policies p ON p.account_id = $1 AND p.name = x.policy_name \
             JOIN policy_versions v ON v.account_id = p.account_id AND v.policy_name = p.name AND v.version = p.default_version \
             ORDER BY p.name",
        )
        .bind(account_id)
        .bind(certificate_id)
        .bind(thing.unwrap_or(""))
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter().map(policy_from).collect()
    }

    /// The thing named `name` if it is attached to the certificate (the thing a connection
    /// with client id `name` speaks for): one round trip.
    pub async fn attached_thing(
        &mut self,
        account_id: &str,
        certificate_id: &str,
        name: &str,
    ) -> Result<Option<Thing>> {
        let row = sqlx::query(
            "SELECT t.* FROM things t JOIN thing_principals p \
             ON p.account_id = t.account_id AND p.thing_name = t.name \
             WHERE t.account_id = $1 AND p.certificate_id = $2 AND t.name = $3",
        )
        .bind(account_id)
        .bind(certificate_id)
        .bind(name)
        .fetch_optional(&mut *self.tx)
        .await?;
        row.as_ref().map(thing_from).transpose()
    }

    // ---- provisioning templates -------------------------------------------------------

    /// Stores a template (its body is validated by the provisioning engine before this).
    pub async fn create_template(
        &mut self,
        account_id: &str,
        name: &str,
        kind: TemplateKind,
        body: &str,
        enabled: bool,
        description: Option<&str>,
    ) -> Result<Template> {
        validate_template_name(name)?;
        if body.len() > MAX_TEMPLATE_BYTES {
            return Err(RegistryError::limit(format!(
                "a template body is at most {MAX_TEMPLATE_BYTES} bytes"
            )));
        }
        let now = now_ms();
        let n = sqlx::query(
            "INSERT INTO provisioning_templates (account_id, name, kind, body, enabled, description, created, updated) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7) ON CONFLICT DO NOTHING",
        )
        .bind(account_id)
        .bind(name)
        .bind(kind.as_str())
        .bind(body)
        .bind(i64::from(enabled))
        .bind(description)
        .bind(now)
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        created(n, "provisioning template", name)?;
        self.template(account_id, name).await
    }

    /// A template.
    pub async fn template(&mut self, account_id: &str, name: &str) -> Result<Template> {
        let row = sqlx::query("SELECT * FROM provisioning_templates WHERE account_id = $1 AND name = $2")
            .bind(account_id)
            .bind(name)
            .fetch_optional(&mut *self.tx)
            .await?;
        row.as_ref()
            .map(template_from)
            .transpose()?
            .ok_or_else(|| RegistryError::not_found("provisioning template", name))
    }

    /// An account's templates.
    pub async fn list_templates(&mut self, account_id: &str) -> Result<Vec<Template>> {
        let rows = sqlx::query("SELECT * FROM provisioning_templates WHERE account_id = $1 ORDER BY name")
            .bind(account_id)
            .fetch_all(&mut *self.tx)
            .await?;
        rows.iter().map(template_from).collect()
    }

    /// Changes a template's body, enabled flag or description.
    pub async fn update_template(
        &mut self,
        account_id: &str,
        name: &str,
        body: Option<&str>,
        enabled: Option<bool>,
        description: Option<&str>,
    ) -> Result<Template> {
        let mut t = self.template(account_id, name).await?;
        if let Some(b) = body {
            if b.len() > MAX_TEMPLATE_BYTES {
                return Err(RegistryError::limit(format!(
                    "a template body is at most {MAX_TEMPLATE_BYTES} bytes"
                )));
            }
            t.body = b.to_owned();
        }
        if let Some(e) = enabled {
            t.enabled = e;
        }
        if let Some(d) = description {
            t.description = Some(d.to_owned());
        }
        sqlx::query(
            "UPDATE provisioning_templates SET body = $1, enabled = $2, description = $3, updated = $4 \
             WHERE account_id = $5 AND name = $6",
        )
        .bind(&t.body)
        .bind(i64::from(t.enabled))
        .bind(&t.description)
        .bind(now_ms())
        .bind(account_id)
        .bind(name)
        .execute(&mut *self.tx)
        .await?;
        self.template(account_id, name).await
    }

    /// Deletes a template. A CA that names it must be changed first.
    pub async fn delete_template(&mut self, account_id: &str, name: &str) -> Result<()> {
        let used = sqlx::query("SELECT id FROM ca_certificates WHERE account_id = $1 AND template_name = $2")
            .bind(account_id)
            .bind(name)
            .fetch_optional(&mut *self.tx)
            .await?;
        if let Some(r) = used {
            let ca: String = r.try_get("id")?;
            return Err(RegistryError::InUse {
                kind: "template",
                name: name.to_owned(),
                user: format!("CA certificate {ca}"),
            });
        }
        let n = sqlx::query("DELETE FROM provisioning_templates WHERE account_id = $1 AND name = $2")
            .bind(account_id)
            .bind(name)
            .execute(&mut *self.tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(RegistryError::not_found("provisioning template", name));
        }
        Ok(())
    }

    // ---- provisioning: the few statements a new device needs ---------------------------

    /// Registers a certificate whose chain the caller has verified (the TLS handshake did), as
    /// PENDING_ACTIVATION, without re-reading anything: one INSERT.
    pub async fn insert_verified_certificate(
        &mut self,
        account_id: &str,
        cert: &Certificate,
        ca_id: Option<&str>,
    ) -> Result<CertificateRecord> {
        let now = now_ms();
        let record = CertificateRecord {
            id: cert.id().to_string(),
            pem: cert.to_pem(),
            status: CertificateStatus::PendingActivation,
            ca_id: ca_id.map(str::to_owned),
            created: now,
            updated: now,
        };
        let n = sqlx::query(
            "INSERT INTO certificates (account_id, id, pem, status, ca_id, created, updated) \
             VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT DO NOTHING",
        )
        .bind(account_id)
        .bind(&record.id)
        .bind(&record.pem)
        .bind(record.status.as_str())
        .bind(ca_id)
        .bind(now)
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        created(n, "certificate", &record.id)?;
        Ok(record)
    }

    /// Creates a thing known not to exist (checked in this transaction), in `groups` (at most
    /// 10, each must exist): one INSERT per row.
    pub async fn insert_new_thing(
        &mut self,
        account_id: &str,
        name: &str,
        thing_type: Option<&str>,
        attributes: &BTreeMap<String, String>,
        groups: &[String],
    ) -> Result<()> {
        validate_thing_name("thing name", name)?;
        validate_attributes(attributes)?;
        if groups.len() > MAX_GROUPS_PER_THING {
            return Err(RegistryError::limit(format!("a thing is in at most {MAX_GROUPS_PER_THING} groups")));
        }
        if let Some(t) = thing_type {
            self.require_thing_type(account_id, t).await?;
        }
        let now = now_ms();
        let n = sqlx::query(
            "INSERT INTO things (account_id, name, thing_type, attributes, version, created, updated) \
             VALUES ($1, $2, $3, $4, 1, $5, $5) ON CONFLICT DO NOTHING",
        )
        .bind(account_id)
        .bind(name)
        .bind(thing_type)
        .bind(serde_json::to_string(attributes).unwrap_or_default())
        .bind(now)
        .execute(&mut *self.tx)
        .await?
        .rows_affected();
        created(n, "thing", name)?;
        for g in groups {
            let n = sqlx::query(
                "INSERT INTO thing_group_members (account_id, group_name, thing_name) \
                 SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM thing_groups WHERE account_id = $1 AND name = $2) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(account_id)
            .bind(g)
            .bind(name)
            .execute(&mut *self.tx)
            .await?
            .rows_affected();
            if n == 0 && !self.thing_group_exists(account_id, g).await? {
                return Err(RegistryError::not_found("thing group", g));
            }
        }
        Ok(())
    }

    /// Attaches existing policies to a certificate made in this transaction (so it has none
    /// yet): one INSERT per policy, refused if the policy does not exist.
    pub async fn attach_policies_to_new_certificate(
        &mut self,
        account_id: &str,
        certificate_id: &str,
        policies: &[String],
    ) -> Result<()> {
        if policies.len() > MAX_POLICIES_PER_CERTIFICATE {
            return Err(RegistryError::limit(format!(
                "at most {MAX_POLICIES_PER_CERTIFICATE} policies per certificate"
            )));
        }
        for p in policies {
            let n = sqlx::query(
                "INSERT INTO policy_attachments (account_id, policy_name, target_type, target) \
                 SELECT $1, $2, 'cert', $3 WHERE EXISTS (SELECT 1 FROM policies WHERE account_id = $1 AND name = $2) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(account_id)
            .bind(p)
            .bind(certificate_id)
            .execute(&mut *self.tx)
            .await?
            .rows_affected();
            if n == 0 {
                return Err(RegistryError::not_found("policy", p));
            }
        }
        Ok(())
    }

    /// Links a certificate and a thing that both exist in this transaction: one INSERT.
    pub async fn link_thing_principal(
        &mut self,
        account_id: &str,
        thing: &str,
        certificate_id: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO thing_principals (account_id, thing_name, certificate_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(account_id)
        .bind(thing)
        .bind(certificate_id)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Sets the status of a certificate made in this transaction: one UPDATE.
    pub async fn set_new_certificate_status(
        &mut self,
        account_id: &str,
        record: &mut CertificateRecord,
        status: CertificateStatus,
    ) -> Result<()> {
        let now = now_ms();
        sqlx::query("UPDATE certificates SET status = $1, updated = $2 WHERE account_id = $3 AND id = $4")
            .bind(status.as_str())
            .bind(now)
            .bind(account_id)
            .bind(&record.id)
            .execute(&mut *self.tx)
            .await?;
        record.status = status;
        record.updated = now;
        Ok(())
    }

    // ---- failures and audit ----------------------------------------------------------

    /// Records why provisioning a certificate failed.
    pub async fn record_provisioning_failure(
        &mut self,
        account_id: &str,
        failure: &ProvisioningFailure,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO provisioning_failures (account_id, certificate_id, ca_id, template_name, reason, at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(account_id)
        .bind(&failure.certificate_id)
        .bind(&failure.ca_id)
        .bind(&failure.template_name)
        .bind(&failure.reason)
        .bind(failure.at)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Provisioning failures of an account, newest first, optionally for one certificate.
    pub async fn provisioning_failures(
        &mut self,
        account_id: &str,
        certificate_id: Option<&str>,
    ) -> Result<Vec<ProvisioningFailure>> {
        Ok(self
            .provisioning_failures_page(account_id, certificate_id, None, i64::MAX)
            .await?
            .into_iter()
            .map(|(_, f)| f)
            .collect())
    }

    /// Up to `limit` provisioning failures older than the one with id `before`, newest first,
    /// each with its id (a page of a list).
    pub async fn provisioning_failures_page(
        &mut self,
        account_id: &str,
        certificate_id: Option<&str>,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<(i64, ProvisioningFailure)>> {
        let rows = sqlx::query(
            "SELECT * FROM provisioning_failures WHERE account_id = $1 AND ($2 = '' OR certificate_id = $2) \
             AND id < $3 ORDER BY id DESC LIMIT $4",
        )
        .bind(account_id)
        .bind(certificate_id.unwrap_or(""))
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("id")?,
                    ProvisioningFailure {
                        certificate_id: r.try_get("certificate_id")?,
                        ca_id: r.try_get("ca_id")?,
                        template_name: r.try_get("template_name")?,
                        reason: r.try_get("reason")?,
                        at: r.try_get("at")?,
                    },
                ))
            })
            .collect()
    }

    /// Appends an audit record.
    pub async fn audit(&mut self, account_id: Option<&str>, record: &AuditRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit (account_id, actor, action, target, result, detail, at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(account_id)
        .bind(&record.actor)
        .bind(&record.action)
        .bind(&record.target)
        .bind(&record.result)
        .bind(&record.detail)
        .bind(record.at)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// An account's audit records, newest first.
    pub async fn audit_records(&mut self, account_id: &str, limit: i64) -> Result<Vec<AuditRecord>> {
        let rows = sqlx::query("SELECT * FROM audit WHERE account_id = $1 ORDER BY id DESC LIMIT $2")
            .bind(account_id)
            .bind(limit)
            .fetch_all(&mut *self.tx)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditRecord {
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    target: r.try_get("target")?,
                    result: r.try_get("result")?,
                    detail: r.try_get("detail")?,
                    at: r.try_get("at")?,
                })
            })
            .collect()
    }
}

fn policy_from(r: &AnyRow) -> Result<PolicyRecord> {
    Ok(PolicyRecord {
        name: r.try_get("name")?,
        document: r.try_get("document")?,
        default_version: r.try_get("default_version")?,
        created: r.try_get("created")?,
        updated: r.try_get("updated")?,
    })
}

/// Whether `cert` carries a valid signature by `issuer`'s key.
pub fn signed_by(cert: &Certificate, issuer: &Certificate) -> bool {
    claimlink_pki::verify::verify_signed_by(cert, issuer).is_ok()
}

/// The current time in Unix milliseconds (the registry's clock).
pub fn now() -> i64 {
    now_ms()
}
