//! CA certificates: registration (with DEFAULT mode's proof of possession), status, mode, template.

use crate::db::*;
use crate::*;

use claimlink_pki::Certificate;

/// A CA certificate to store, already judged fit (`claimlink-provision`'s `registration`
/// checks that it is a CA and, in DEFAULT mode, the proof of possession).
#[derive(Debug, Clone, Copy)]
pub struct NewCa<'a> {
    /// The CA certificate.
    pub certificate: &'a Certificate,
    /// DEFAULT or SNI_ONLY.
    pub mode: CaMode,
    /// Initial status.
    pub status: CaStatus,
    /// Register unknown certificates it issued when they first connect.
    pub auto_registration: bool,
    /// The JITP template for them (it must exist).
    pub template_name: Option<&'a TemplateName>,
    /// Admit its certificates only with a claim ticket.
    pub require_claim: bool,
}

impl<'r> sqlx::FromRow<'r, sqlx::any::AnyRow> for CaCertificate {
    fn from_row(r: &'r sqlx::any::AnyRow) -> sqlx::Result<Self> {
        use sqlx::Row;
        Ok(Self {
            id: r.try_get("id")?,
            pem: r.try_get("pem")?,
            mode: CaMode::parse(&r.try_get::<String, _>("mode")?).map_err(undecodable)?,
            status: CaStatus::parse(&r.try_get::<String, _>("status")?).map_err(undecodable)?,
            auto_registration: r.try_get::<i64, _>("auto_registration")? != 0,
            template_name: r.try_get("template_name")?,
            require_claim: r.try_get::<i64, _>("require_claim")? != 0,
            created: r.try_get("created")?,
            updated: r.try_get("updated")?,
        })
    }
}

impl Tx {
    /// Stores a CA certificate. `None` when it is there already: in this account, or (DEFAULT
    /// mode, one account per region) in another account of the region.
    pub async fn insert_ca(&mut self, account: &Account, new: &NewCa<'_>) -> Result<Option<CaCertificate>> {
        let NewCa { certificate, mode, status, auto_registration, template_name, require_claim } = *new;
        if let Some(t) = template_name {
            self.template(&account.id, t).await?;
        }
        let id = CaId::of(certificate);
        let now = now_ms();
        let n = self.run("INSERT INTO ca_certificates (account_id, id, region, pem, mode, status, auto_registration, template_name, require_claim, created, updated) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10) ON CONFLICT DO NOTHING", args![&account.id, &id, &account.region, certificate.to_pem(), mode.as_str(), status.as_str(), i64::from(auto_registration), template_name, i64::from(require_claim), now]).await?;
        if n == 0 {
            return Ok(None);
        }
        self.describe_ca(&account.id, &id).await.map(Some)
    }

    /// A CA certificate of an account.
    pub async fn describe_ca(&mut self, account_id: &AccountId, id: &CaId) -> Result<CaCertificate> {
        self.optional::<CaCertificate>(
            "SELECT * FROM ca_certificates WHERE account_id = $1 AND id = $2",
            args![account_id, id],
        )
        .await?
        .ok_or_else(|| RegistryError::not_found("CA certificate", id))
    }

    /// An account's CA certificates.
    pub async fn list_cas(&mut self, account_id: &AccountId) -> Result<Vec<CaCertificate>> {
        self.all::<CaCertificate>(
            "SELECT * FROM ca_certificates WHERE account_id = $1 ORDER BY created, id",
            args![account_id],
        )
        .await
    }

    /// Changes a CA's status, auto-registration or template (`Some(None)` removes it).
    pub async fn update_ca(
        &mut self,
        account_id: &AccountId,
        id: &CaId,
        status: Option<CaStatus>,
        auto_registration: Option<bool>,
        template_name: Option<Option<&TemplateName>>,
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
            ca.template_name = t.cloned();
        }
        self.run("UPDATE ca_certificates SET status = $1, auto_registration = $2, template_name = $3, updated = $4 \
             WHERE account_id = $5 AND id = $6", args![ca.status.as_str(), i64::from(ca.auto_registration), &ca.template_name, now_ms(), account_id, id]).await?;
        self.describe_ca(account_id, id).await
    }

    /// Whether the CA admits its certificates only with a claim ticket.
    pub async fn set_ca_require_claim(
        &mut self,
        account_id: &AccountId,
        id: &CaId,
        require: bool,
    ) -> Result<()> {
        let rows = self.run("UPDATE ca_certificates SET require_claim = $1, updated = $2 WHERE account_id = $3 AND id = $4", args![i64::from(require), now_ms(), account_id, id]).await?;
        if rows == 0 {
            return Err(RegistryError::not_found("CA certificate", id));
        }
        Ok(())
    }
}
