//! Device certificates and their statuses; the view marker of the account endpoint's memory.
//! What may be registered and which status changes are allowed is decided above (`claimlink-provision`'s
//! `registration`).

use crate::db::*;
use crate::*;

use claimlink_pki::Certificate;

impl<'r> sqlx::FromRow<'r, sqlx::any::AnyRow> for CertificateRecord {
    fn from_row(r: &'r sqlx::any::AnyRow) -> sqlx::Result<Self> {
        use sqlx::Row;
        Ok(Self {
            id: r.try_get("id")?,
            pem: r.try_get("pem")?,
            status: CertificateStatus::parse(&r.try_get::<String, _>("status")?).map_err(undecodable)?,
            ca_id: r.try_get("ca_id")?,
            created: r.try_get("created")?,
            updated: r.try_get("updated")?,
        })
    }
}

impl Tx {
    /// Stores a device certificate (judged fit by the caller: parsed, issued by `ca_id` if
    /// given, not a CA) with `status`: one INSERT, nothing re-read.
    pub async fn insert_certificate(
        &mut self,
        account_id: &AccountId,
        cert: &Certificate,
        ca_id: Option<&CaId>,
        status: CertificateStatus,
    ) -> Result<CertificateRecord> {
        let now = now_ms();
        let record = CertificateRecord {
            id: CertificateId::of(cert),
            pem: cert.to_pem(),
            status,
            ca_id: ca_id.cloned(),
            created: now,
            updated: now,
        };
        let n = self
            .run(
                "INSERT INTO certificates (account_id, id, pem, status, ca_id, created, updated) \
             VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT DO NOTHING",
                args![account_id, &record.id, &record.pem, status.as_str(), ca_id, now],
            )
            .await?;
        created(n, "certificate", &record.id)?;
        Ok(record)
    }

    /// A device certificate, if registered.
    pub async fn certificate(
        &mut self,
        account_id: &AccountId,
        id: &CertificateId,
    ) -> Result<Option<CertificateRecord>> {
        self.optional::<CertificateRecord>(
            "SELECT * FROM certificates WHERE account_id = $1 AND id = $2",
            args![account_id, id],
        )
        .await
    }

    /// A device certificate.
    pub async fn describe_certificate(
        &mut self,
        account_id: &AccountId,
        id: &CertificateId,
    ) -> Result<CertificateRecord> {
        self.certificate(account_id, id).await?.ok_or_else(|| RegistryError::not_found("certificate", id))
    }

    /// An account's device certificates.
    pub async fn list_certificates(&mut self, account_id: &AccountId) -> Result<Vec<CertificateRecord>> {
        self.all::<CertificateRecord>(
            "SELECT * FROM certificates WHERE account_id = $1 ORDER BY created, id",
            args![account_id],
        )
        .await
    }

    /// Up to `limit` certificates with ids after `after`, by id (a page of a list).
    pub async fn certificates_page(
        &mut self,
        account_id: &AccountId,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<CertificateRecord>> {
        self.all::<CertificateRecord>(
            "SELECT * FROM certificates WHERE account_id = $1 AND id > $2 ORDER BY id LIMIT $3",
            args![account_id, after.unwrap_or(""), limit],
        )
        .await
    }

    /// Ids of the certificates registered without a CA and not revoked (from the index, no
    /// PEM read).
    pub async fn registered_without_ca(&mut self, account_id: &AccountId) -> Result<Vec<CertificateId>> {
        self.column(
            "SELECT id FROM certificates WHERE account_id = $1 AND ca_id IS NULL AND status <> 'REVOKED'",
            args![account_id],
        )
        .await
    }

    /// A cheap fingerprint of what the account endpoint keeps in memory for an account: count
    /// and latest change of its CAs, of its certificates registered without a CA, and of its
    /// claim issuers. It changes when they change.
    pub async fn view_marker(&mut self, account_id: &AccountId) -> Result<[i64; 6]> {
        let cas: (i64, i64) = self.one("SELECT COUNT(*) AS n, COALESCE(MAX(updated), 0) AS at FROM ca_certificates WHERE account_id = $1", args![account_id]).await?;
        let certs: (i64, i64) = self
            .one(
                "SELECT COUNT(*) AS n, COALESCE(MAX(updated), 0) AS at FROM certificates \
             WHERE account_id = $1 AND ca_id IS NULL AND status <> 'REVOKED'",
                args![account_id],
            )
            .await?;
        let issuers: (i64, i64) = self.one("SELECT COUNT(*) AS n, COALESCE(MAX(created), 0) AS at FROM claim_issuers WHERE account_id = $1", args![account_id]).await?;
        Ok([cas.0, cas.1, certs.0, certs.1, issuers.0, issuers.1])
    }

    /// Changes a certificate's status from `from` to `to`, if it is still `from` (a compare and
    /// set: two changes racing cannot both apply to what they read). `false` when it was not.
    pub async fn set_certificate_status(
        &mut self,
        account_id: &AccountId,
        id: &CertificateId,
        from: CertificateStatus,
        to: CertificateStatus,
    ) -> Result<bool> {
        let n = self
            .run(
                "UPDATE certificates SET status = $1, updated = $2 WHERE account_id = $3 AND id = $4 AND status = $5",
                args![to.as_str(), now_ms(), account_id, id, from.as_str()],
            )
            .await?;
        Ok(n == 1)
    }
}
