//! Provisioning failures and the audit trail.

use crate::db::*;
use crate::*;

/// A provisioning failure as stored, with its row id (the page marker).
struct FailureRow {
    id: i64,
    certificate_id: String,
    ca_id: Option<String>,
    template_name: Option<String>,
    reason: String,
    at: i64,
}

columns!(FailureRow { id, certificate_id, ca_id, template_name, reason, at });
columns!(AuditRecord { actor, action, target, result, detail, at });

impl Tx {
    /// Records why provisioning a certificate failed.
    pub async fn record_provisioning_failure(
        &mut self,
        account_id: &AccountId,
        failure: &ProvisioningFailure,
    ) -> Result<()> {
        self.run("INSERT INTO provisioning_failures (account_id, certificate_id, ca_id, template_name, reason, at) \
             VALUES ($1, $2, $3, $4, $5, $6)", args![account_id, &failure.certificate_id, &failure.ca_id, &failure.template_name, &failure.reason, failure.at]).await?;
        Ok(())
    }

    /// Provisioning failures of an account, newest first, optionally for one certificate.
    pub async fn provisioning_failures(
        &mut self,
        account_id: &AccountId,
        certificate_id: Option<&CertificateId>,
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
        account_id: &AccountId,
        certificate_id: Option<&CertificateId>,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<(i64, ProvisioningFailure)>> {
        let rows: Vec<FailureRow> = self.all("SELECT * FROM provisioning_failures WHERE account_id = $1 AND ($2 = '' OR certificate_id = $2) \
             AND id < $3 ORDER BY id DESC LIMIT $4", args![account_id, certificate_id.map_or("", |c| c.as_str()), before.unwrap_or(i64::MAX), limit]).await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let failure = ProvisioningFailure {
                    certificate_id: r.certificate_id,
                    ca_id: r.ca_id,
                    template_name: r.template_name,
                    reason: r.reason,
                    at: r.at,
                };
                (r.id, failure)
            })
            .collect())
    }

    /// Appends an audit record.
    pub async fn audit(&mut self, account_id: Option<&AccountId>, record: &AuditRecord) -> Result<()> {
        self.run("INSERT INTO audit (account_id, actor, action, target, result, detail, at) VALUES ($1, $2, $3, $4, $5, $6, $7)", args![account_id, &record.actor, &record.action, &record.target, &record.result, &record.detail, record.at]).await?;
        Ok(())
    }

    /// An account's audit records, newest first.
    pub async fn audit_records(&mut self, account_id: &AccountId, limit: i64) -> Result<Vec<AuditRecord>> {
        self.all(
            "SELECT * FROM audit WHERE account_id = $1 ORDER BY id DESC LIMIT $2",
            args![account_id, limit],
        )
        .await
    }
}
