//! The database: one [`Store`] over SQLite or PostgreSQL, its migrations, and the [`Tx`] every
//! operation runs in, with the three ways to run a statement ([`Tx::run`], [`Tx::optional`],
//! [`Tx::all`]) that every entity module uses.

use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyArguments, AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, FromRow, Transaction};

use crate::{RegistryError, Result};

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

/// A schema change: its version (unique across every set sharing the database) and its SQL, in
/// the dialect SQLite and PostgreSQL both accept, `{ID}` standing for the auto-increment key.
pub type Migration = (i64, &'static str);

/// The registry's own schema. Staging's tables are staging's (`claimlink-staging`), applied
/// with [`Store::migrate`] into the same ledger (versions 3 and 4 are staging's).
const MIGRATIONS: &[Migration] = &[
    (1, include_str!("../migrations/0001_registry.sql")),
    (2, include_str!("../migrations/0002_connect_indexes.sql")),
    (5, include_str!("../migrations/0005_view_index.sql")),
    (6, include_str!("../migrations/0006_claim_bound_admission.sql")),
    (7, include_str!("../migrations/0007_ca_crls.sql")),
];

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// An `INSERT ... ON CONFLICT DO NOTHING` that inserted nothing: the row exists. (Inserting
/// without a conflict error keeps a PostgreSQL transaction usable after it.)
pub fn created(rows: u64, kind: &'static str, name: &str) -> Result<()> {
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
            return Err(RegistryError::DatabaseUrl);
        };
        store.migrate("registry", MIGRATIONS).await?;
        Ok(store)
    }

    /// The database in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Applies the migrations of `set` the database lacks, in one transaction (on PostgreSQL
    /// under a lock, so two processes migrating at once take turns).
    pub async fn migrate(&self, set: &str, migrations: &[Migration]) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied BIGINT NOT NULL)")
            .execute(&mut *tx)
            .await?;
        if self.backend == Backend::Postgres {
            // Two processes migrating at once: the second waits for the first.
            sqlx::query("LOCK TABLE schema_migrations IN EXCLUSIVE MODE").execute(&mut *tx).await?;
        }
        for (version, sql) in migrations {
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
            tracing::info!(set, version, "migration applied");
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
    url.parse::<AnyConnectOptions>().map_err(|_| RegistryError::DatabaseUrl)
}

/// A transaction: every registry operation. Dropped without [`Tx::commit`], it rolls back.
pub struct Tx {
    pub(crate) tx: Transaction<'static, Any>,
}

impl std::fmt::Debug for Tx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tx")
    }
}

impl Tx {
    /// Makes everything done in this transaction durable.
    pub async fn commit(self) -> Result<()> {
        Ok(self.tx.commit().await?)
    }

    /// Runs a statement; returns how many rows it changed.
    pub async fn run<'q>(&mut self, sql: &'q str, args: AnyArguments<'q>) -> Result<u64> {
        Ok(sqlx::query_with(sql, args).execute(&mut *self.tx).await?.rows_affected())
    }

    /// The first row of a query, mapped to `T`, if there is one.
    pub async fn optional<'q, T>(&mut self, sql: &'q str, args: AnyArguments<'q>) -> Result<Option<T>>
    where
        T: for<'r> FromRow<'r, AnyRow> + Send + Unpin,
    {
        Ok(sqlx::query_as_with(sql, args).fetch_optional(&mut *self.tx).await?)
    }

    /// The one row a query returns (an aggregate), mapped to `T`.
    pub async fn one<'q, T>(&mut self, sql: &'q str, args: AnyArguments<'q>) -> Result<T>
    where
        T: for<'r> FromRow<'r, AnyRow> + Send + Unpin,
    {
        Ok(sqlx::query_as_with(sql, args).fetch_one(&mut *self.tx).await?)
    }

    /// Every row of a query, mapped to `T`.
    pub async fn all<'q, T>(&mut self, sql: &'q str, args: AnyArguments<'q>) -> Result<Vec<T>>
    where
        T: for<'r> FromRow<'r, AnyRow> + Send + Unpin,
    {
        Ok(sqlx::query_as_with(sql, args).fetch_all(&mut *self.tx).await?)
    }

    /// The first value of every row (a list of ids or names).
    pub async fn column<'q, T>(&mut self, sql: &'q str, args: AnyArguments<'q>) -> Result<Vec<T>>
    where
        T: for<'r> sqlx::Decode<'r, Any> + sqlx::Type<Any> + Send + Unpin,
    {
        let rows: Vec<(T,)> = self.all(sql, args).await?;
        Ok(rows.into_iter().map(|(v,)| v).collect())
    }
}

/// A stored value that does not decode (a column holding text no variant spells): a database
/// error, never a request error.
pub(crate) fn undecodable(e: impl std::error::Error + Send + Sync + 'static) -> sqlx::Error {
    sqlx::Error::Decode(Box::new(e))
}

/// Random bytes from the operating system, or an error (never zeros).
pub fn random_bytes(n: usize) -> Result<Vec<u8>> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).map_err(|_| RegistryError::Randomness)?;
    Ok(b)
}

pub(crate) fn random_digits(n: usize) -> Result<String> {
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

/// `bytes` random bytes from the operating system, as lowercase hex.
pub fn random_hex(bytes: usize) -> Result<String> {
    Ok(hex::encode(random_bytes(bytes)?))
}

/// API tokens are 256-bit random strings, so a plain SHA-256 is the right hash for them (no
/// password stretching needed: nothing to guess).
pub fn token_hash(token: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()))
}
