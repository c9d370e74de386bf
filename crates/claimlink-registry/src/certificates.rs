//! Device certificates and their statuses; the view marker of the account endpoint's memory.

use crate::db::*;
use crate::*;

use claimlink_pki::Certificate;

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

/// Whether `cert` carries a valid signature by `issuer`'s key.
pub fn signed_by(cert: &Certificate, issuer: &Certificate) -> bool {
    claimlink_pki::verify::verify_signed_by(cert, issuer).is_ok()
}

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
        let n = self.run("INSERT INTO certificates (account_id, id, pem, status, ca_id, created, updated) VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT DO NOTHING", args![account_id, &id, cert.to_pem(), status.as_str(), ca_id, now]).await?;
        created(n, "certificate", &id)?;
        self.describe_certificate(account_id, &id).await
    }

    /// A device certificate, if registered.
    pub async fn certificate(&mut self, account_id: &str, id: &str) -> Result<Option<CertificateRecord>> {
        self.optional::<CertificateRecord>(
            "SELECT * FROM certificates WHERE account_id = $1 AND id = $2",
            args![account_id, id],
        )
        .await
    }

    /// A device certificate.
    pub async fn describe_certificate(&mut self, account_id: &str, id: &str) -> Result<CertificateRecord> {
        self.certificate(account_id, id).await?.ok_or_else(|| RegistryError::not_found("certificate", id))
    }

    /// An account's device certificates.
    pub async fn list_certificates(&mut self, account_id: &str) -> Result<Vec<CertificateRecord>> {
        self.all::<CertificateRecord>(
            "SELECT * FROM certificates WHERE account_id = $1 ORDER BY created, id",
            args![account_id],
        )
        .await
    }

    /// Up to `limit` certificates with ids after `after`, by id (a page of a list).
    pub async fn certificates_page(
        &mut self,
        account_id: &str,
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
    pub async fn registered_without_ca(&mut self, account_id: &str) -> Result<Vec<String>> {
        self.column(
            "SELECT id FROM certificates WHERE account_id = $1 AND ca_id IS NULL AND status <> 'REVOKED'",
            args![account_id],
        )
        .await
    }

    /// A cheap fingerprint of what the account endpoint keeps in memory for an account: count
    /// and latest change of its CAs, of its certificates registered without a CA, and of its
    /// claim issuers. It changes when they change.
    pub async fn view_marker(&mut self, account_id: &str) -> Result<[i64; 6]> {
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
        self.run(
            "UPDATE certificates SET status = $1, updated = $2 WHERE account_id = $3 AND id = $4",
            args![status.as_str(), now_ms(), account_id, id],
        )
        .await?;
        self.describe_certificate(account_id, id).await
    }
}
