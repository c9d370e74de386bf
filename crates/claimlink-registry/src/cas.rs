//! CA certificates: registration (with DEFAULT mode's proof of possession), status, mode, template.

use crate::db::*;
use crate::*;

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
        let n = self.run("INSERT INTO ca_certificates (account_id, id, region, pem, mode, status, auto_registration, template_name, created, updated) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) ON CONFLICT DO NOTHING", args![&account.id, &id, &account.region, ca.to_pem(), mode.as_str(), status.as_str(), i64::from(auto_registration), template_name, now]).await?;
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
        self.optional::<CaCertificate>(
            "SELECT * FROM ca_certificates WHERE account_id = $1 AND id = $2",
            args![account_id, id],
        )
        .await?
        .ok_or_else(|| RegistryError::not_found("CA certificate", id))
    }

    /// An account's CA certificates.
    pub async fn list_cas(&mut self, account_id: &str) -> Result<Vec<CaCertificate>> {
        self.all::<CaCertificate>(
            "SELECT * FROM ca_certificates WHERE account_id = $1 ORDER BY created, id",
            args![account_id],
        )
        .await
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
        self.run("UPDATE ca_certificates SET status = $1, auto_registration = $2, template_name = $3, updated = $4 \
             WHERE account_id = $5 AND id = $6", args![ca.status.as_str(), i64::from(ca.auto_registration), &ca.template_name, now_ms(), account_id, id]).await?;
        self.describe_ca(account_id, id).await
    }

    /// Whether the CA admits its certificates only with a claim ticket.
    pub async fn set_ca_require_claim(&mut self, account_id: &str, id: &str, require: bool) -> Result<()> {
        let rows = self.run("UPDATE ca_certificates SET require_claim = $1, updated = $2 WHERE account_id = $3 AND id = $4", args![i64::from(require), now_ms(), account_id, id]).await?;
        if rows == 0 {
            return Err(RegistryError::not_found("CA certificate", id));
        }
        Ok(())
    }
}
