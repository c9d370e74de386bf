//! The CA system's records in a registry [`Store`] (SQLite in the CA directory by default, or
//! PostgreSQL): administrators, applications, issued certificates, revocation requests, the
//! review policy, and the audit log.
//!
//! The audit log is a hash chain: row `n` stores `SM3(row n-1's hash, row n's fields)`, so a
//! row changed, removed or inserted afterwards breaks every hash after it, and
//! [`verify_audit`] finds the first one. Every change of the service is written in the same
//! transaction as its audit row ([`Audited`]), so a change never lands without its record.

use claimlink_registry::{Migration, Result, Store, Tx, args, columns, now, token_hash};

const MIGRATIONS: &[Migration] = &[(2000, include_str!("../../migrations/2000_ca_system.sql"))];

/// Opens the store at `url` with the CA system's schema.
pub(crate) async fn open(url: &str) -> Result<Store> {
    let store = Store::open(url).await?;
    store.migrate("ca-system", MIGRATIONS).await?;
    Ok(store)
}

/// An administrator as stored.
#[derive(Debug, Clone)]
pub(crate) struct Admin {
    pub(crate) name: String,
    pub(crate) role: String,
    pub(crate) created_by: String,
    pub(crate) created: i64,
    pub(crate) disabled: i64,
}
columns!(Admin { name, role, created_by, created, disabled });

/// A certificate application as stored.
#[derive(Debug, Clone)]
pub(crate) struct Application {
    pub(crate) id: String,
    pub(crate) profile: String,
    pub(crate) subject: String,
    pub(crate) csr_pem: String,
    /// JSON: `{"dns": [...], "ips": [...]}`.
    pub(crate) names: String,
    pub(crate) days: i64,
    pub(crate) renewal_of: Option<String>,
    pub(crate) token_hash: String,
    pub(crate) status: String,
    pub(crate) reviewer: Option<String>,
    pub(crate) reason: Option<String>,
    pub(crate) serial: Option<String>,
    pub(crate) certificate_pem: Option<String>,
    pub(crate) enc_certificate_pem: Option<String>,
    pub(crate) enc_key_envelope: Option<String>,
    pub(crate) created: i64,
    pub(crate) decided: Option<i64>,
}
columns!(Application {
    id,
    profile,
    subject,
    csr_pem,
    names,
    days,
    renewal_of,
    token_hash,
    status,
    reviewer,
    reason,
    serial,
    certificate_pem,
    enc_certificate_pem,
    enc_key_envelope,
    created,
    decided
});

/// A certificate issued through the service.
#[derive(Debug, Clone)]
pub(crate) struct Issued {
    pub(crate) serial: String,
    pub(crate) application_id: String,
    pub(crate) profile: String,
    pub(crate) subject: String,
    pub(crate) not_after: i64,
    pub(crate) certificate_pem: String,
}
columns!(Issued { serial, application_id, profile, subject, not_after, certificate_pem });

/// A revocation request as stored.
#[derive(Debug, Clone)]
pub(crate) struct RevocationRequest {
    pub(crate) id: String,
    pub(crate) serial: String,
    pub(crate) reason: String,
    pub(crate) requested_by: String,
    pub(crate) status: String,
    pub(crate) reviewer: Option<String>,
    pub(crate) created: i64,
    pub(crate) decided: Option<i64>,
}
columns!(RevocationRequest { id, serial, reason, requested_by, status, reviewer, created, decided });

/// An audit row.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct AuditRow {
    pub(crate) seq: i64,
    pub(crate) at: i64,
    pub(crate) actor: String,
    pub(crate) role: String,
    pub(crate) action: String,
    pub(crate) target: String,
    pub(crate) result: String,
    pub(crate) detail: String,
    pub(crate) scope: String,
    pub(crate) prev: String,
    pub(crate) hash: String,
}
columns!(AuditRow { seq, at, actor, role, action, target, result, detail, scope, prev, hash });

/// The hash before the first row.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The hash of a row: SM3 over the previous hash and every field, each length-prefixed (so no
/// field's text can pass for another's).
fn chain_hash(row: &AuditRow) -> String {
    let mut h = Vec::with_capacity(512);
    let seq = row.seq.to_string();
    let at = row.at.to_string();
    for field in [
        row.prev.as_str(),
        &seq,
        &at,
        &row.actor,
        &row.role,
        &row.action,
        &row.target,
        &row.result,
        &row.detail,
        &row.scope,
    ] {
        h.extend_from_slice(&(field.len() as u64).to_be_bytes());
        h.extend_from_slice(field.as_bytes());
    }
    hex::encode(claimlink_gm::sm3(&h))
}

/// Appends an audit row (its seq, prev and hash are filled in) inside `tx`.
pub(crate) async fn append_audit(tx: &mut Tx, mut row: AuditRow) -> Result<AuditRow> {
    #[derive(Debug)]
    struct Last {
        seq: i64,
        hash: String,
    }
    columns!(Last { seq, hash });
    let last: Option<Last> =
        tx.optional("SELECT seq, hash FROM ca_audit ORDER BY seq DESC LIMIT 1", args![]).await?;
    let (seq, prev) = last.map_or((1, GENESIS.to_owned()), |l| (l.seq + 1, l.hash));
    row.seq = seq;
    row.prev = prev;
    row.at = now();
    row.hash = chain_hash(&row);
    tx.run(
        "INSERT INTO ca_audit (seq, at, actor, role, action, target, result, detail, scope, prev, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        args![
            row.seq,
            row.at,
            &row.actor,
            &row.role,
            &row.action,
            &row.target,
            &row.result,
            &row.detail,
            &row.scope,
            &row.prev,
            &row.hash
        ],
    )
    .await?;
    Ok(row)
}

/// Up to `limit` audit rows after `after`, oldest first; only `business` rows unless `all`.
pub(crate) async fn audit_rows(tx: &mut Tx, all: bool, after: i64, limit: i64) -> Result<Vec<AuditRow>> {
    tx.all(
        "SELECT * FROM ca_audit WHERE seq > $1 AND ($2 = 1 OR scope = 'business') ORDER BY seq LIMIT $3",
        args![after, i64::from(all), limit],
    )
    .await
}

/// The outcome of checking the chain.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ChainCheck {
    pub(crate) rows: i64,
    pub(crate) valid: bool,
    /// The first row whose hash, link or place is wrong.
    pub(crate) first_bad_seq: Option<i64>,
    pub(crate) head: String,
}

/// Recomputes the whole chain, a page at a time.
pub(crate) async fn verify_audit(store: &Store) -> Result<ChainCheck> {
    let mut prev = GENESIS.to_owned();
    let mut expected_seq = 1;
    let mut rows = 0;
    loop {
        let mut tx = store.read().await?;
        let page = audit_rows(&mut tx, true, expected_seq - 1, 1000).await?;
        tx.commit().await?;
        if page.is_empty() {
            return Ok(ChainCheck { rows, valid: true, first_bad_seq: None, head: prev });
        }
        for row in page {
            if row.seq != expected_seq || row.prev != prev || chain_hash(&row) != row.hash {
                return Ok(ChainCheck { rows, valid: false, first_bad_seq: Some(expected_seq), head: prev });
            }
            prev = row.hash;
            expected_seq += 1;
            rows += 1;
        }
    }
}

pub(crate) async fn count_admins(tx: &mut Tx) -> Result<i64> {
    let n: Vec<i64> = tx.column("SELECT COUNT(*) FROM ca_admins", args![]).await?;
    Ok(n.first().copied().unwrap_or(0))
}

/// Inserts an administrator with a fresh token (`cas_...`), returned once; only its hash is
/// kept.
pub(crate) async fn insert_admin(tx: &mut Tx, name: &str, role: &str, created_by: &str) -> Result<String> {
    let token = format!("cas_{}", claimlink_registry::random_hex(32)?);
    let rows = tx
        .run(
            "INSERT INTO ca_admins (name, role, token_hash, created_by, created, disabled) \
             VALUES ($1, $2, $3, $4, $5, 0) ON CONFLICT DO NOTHING",
            args![name, role, token_hash(&token), created_by, now()],
        )
        .await?;
    claimlink_registry::created(rows, "administrator", name)?;
    Ok(token)
}

pub(crate) async fn admin_for_token(tx: &mut Tx, token: &str) -> Result<Option<Admin>> {
    tx.optional(
        "SELECT name, role, created_by, created, disabled FROM ca_admins WHERE token_hash = $1 AND disabled = 0",
        args![token_hash(token)],
    )
    .await
}

pub(crate) async fn admin(tx: &mut Tx, name: &str) -> Result<Option<Admin>> {
    tx.optional(
        "SELECT name, role, created_by, created, disabled FROM ca_admins WHERE name = $1",
        args![name],
    )
    .await
}

pub(crate) async fn list_admins(tx: &mut Tx) -> Result<Vec<Admin>> {
    tx.all("SELECT name, role, created_by, created, disabled FROM ca_admins ORDER BY created, name", args![])
        .await
}

pub(crate) async fn disable_admin(tx: &mut Tx, name: &str) -> Result<bool> {
    Ok(tx.run("UPDATE ca_admins SET disabled = 1 WHERE name = $1 AND disabled = 0", args![name]).await? == 1)
}

pub(crate) async fn insert_application(tx: &mut Tx, a: &Application) -> Result<()> {
    tx.run(
        "INSERT INTO ca_applications (id, profile, subject, csr_pem, names, days, renewal_of, token_hash, status, \
         reviewer, reason, serial, certificate_pem, enc_certificate_pem, enc_key_envelope, created, decided) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, NULL, NULL, NULL, NULL, NULL, $10, NULL)",
        args![
            &a.id,
            &a.profile,
            &a.subject,
            &a.csr_pem,
            &a.names,
            a.days,
            &a.renewal_of,
            &a.token_hash,
            &a.status,
            a.created
        ],
    )
    .await?;
    Ok(())
}

pub(crate) async fn application(tx: &mut Tx, id: &str) -> Result<Option<Application>> {
    tx.optional("SELECT * FROM ca_applications WHERE id = $1", args![id]).await
}

pub(crate) async fn applications(tx: &mut Tx, status: Option<&str>, limit: i64) -> Result<Vec<Application>> {
    tx.all(
        "SELECT * FROM ca_applications WHERE ($1 = '' OR status = $1) ORDER BY created DESC, id LIMIT $2",
        args![status.unwrap_or(""), limit],
    )
    .await
}

pub(crate) async fn count_by_status(tx: &mut Tx, table: &'static str, status: &str) -> Result<i64> {
    let sql = match table {
        "applications" => "SELECT COUNT(*) FROM ca_applications WHERE status = $1",
        _ => "SELECT COUNT(*) FROM ca_revocation_requests WHERE status = $1",
    };
    let n: Vec<i64> = tx.column(sql, args![status]).await?;
    Ok(n.first().copied().unwrap_or(0))
}

/// The outcome of a review, written over a PENDING application only (compare-and-set: of two
/// reviewers racing, one wins and the other is told it was decided).
pub(crate) struct Decision<'a> {
    pub(crate) status: &'a str,
    pub(crate) reviewer: &'a str,
    pub(crate) reason: Option<&'a str>,
    pub(crate) serial: Option<&'a str>,
    pub(crate) certificate_pem: Option<&'a str>,
    pub(crate) enc_certificate_pem: Option<&'a str>,
    pub(crate) enc_key_envelope: Option<&'a str>,
}

pub(crate) async fn decide_application(tx: &mut Tx, id: &str, d: &Decision<'_>) -> Result<bool> {
    let rows = tx
        .run(
            "UPDATE ca_applications SET status = $1, reviewer = $2, reason = $3, serial = $4, certificate_pem = $5, \
             enc_certificate_pem = $6, enc_key_envelope = $7, decided = $8 WHERE id = $9 AND status = 'PENDING_REVIEW'",
            args![
                d.status,
                d.reviewer,
                d.reason,
                d.serial,
                d.certificate_pem,
                d.enc_certificate_pem,
                d.enc_key_envelope,
                now(),
                id
            ],
        )
        .await?;
    Ok(rows == 1)
}

pub(crate) async fn insert_issued(tx: &mut Tx, i: &Issued) -> Result<()> {
    tx.run(
        "INSERT INTO ca_issued (serial, application_id, profile, subject, not_after, certificate_pem) \
         VALUES ($1, $2, $3, $4, $5, $6)",
        args![&i.serial, &i.application_id, &i.profile, &i.subject, i.not_after, &i.certificate_pem],
    )
    .await?;
    Ok(())
}

pub(crate) async fn issued(tx: &mut Tx, serial: &str) -> Result<Option<Issued>> {
    tx.optional("SELECT * FROM ca_issued WHERE serial = $1", args![serial]).await
}

pub(crate) async fn insert_revocation_request(tx: &mut Tx, r: &RevocationRequest) -> Result<()> {
    tx.run(
        "INSERT INTO ca_revocation_requests (id, serial, reason, requested_by, status, reviewer, created, decided) \
         VALUES ($1, $2, $3, $4, $5, NULL, $6, NULL)",
        args![&r.id, &r.serial, &r.reason, &r.requested_by, &r.status, r.created],
    )
    .await?;
    Ok(())
}

pub(crate) async fn revocation_request(tx: &mut Tx, id: &str) -> Result<Option<RevocationRequest>> {
    tx.optional("SELECT * FROM ca_revocation_requests WHERE id = $1", args![id]).await
}

pub(crate) async fn revocation_requests(
    tx: &mut Tx,
    status: Option<&str>,
    limit: i64,
) -> Result<Vec<RevocationRequest>> {
    tx.all(
        "SELECT * FROM ca_revocation_requests WHERE ($1 = '' OR status = $1) ORDER BY created DESC, id LIMIT $2",
        args![status.unwrap_or(""), limit],
    )
    .await
}

pub(crate) async fn pending_revocation_for(tx: &mut Tx, serial: &str) -> Result<bool> {
    let n: Vec<i64> = tx
        .column(
            "SELECT COUNT(*) FROM ca_revocation_requests WHERE serial = $1 AND status = 'PENDING_REVIEW'",
            args![serial],
        )
        .await?;
    Ok(n.first().copied().unwrap_or(0) > 0)
}

pub(crate) async fn decide_revocation(tx: &mut Tx, id: &str, status: &str, reviewer: &str) -> Result<bool> {
    let rows = tx
        .run(
            "UPDATE ca_revocation_requests SET status = $1, reviewer = $2, decided = $3 \
             WHERE id = $4 AND status = 'PENDING_REVIEW'",
            args![status, reviewer, now(), id],
        )
        .await?;
    Ok(rows == 1)
}

pub(crate) async fn review_policy(tx: &mut Tx) -> Result<Option<String>> {
    let v: Vec<String> = tx.column("SELECT document FROM ca_review_policy WHERE id = 1", args![]).await?;
    Ok(v.into_iter().next())
}

pub(crate) async fn set_review_policy(tx: &mut Tx, document: &str, by: &str) -> Result<()> {
    tx.run(
        "INSERT INTO ca_review_policy (id, document, updated_by, updated) VALUES (1, $1, $2, $3) \
         ON CONFLICT (id) DO UPDATE SET document = excluded.document, updated_by = excluded.updated_by, \
         updated = excluded.updated",
        args![document, by, now()],
    )
    .await?;
    Ok(())
}
