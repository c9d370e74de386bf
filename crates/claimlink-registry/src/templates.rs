//! Provisioning templates.

use crate::db::*;
use crate::*;

impl<'r> sqlx::FromRow<'r, sqlx::any::AnyRow> for Template {
    fn from_row(r: &'r sqlx::any::AnyRow) -> sqlx::Result<Self> {
        use sqlx::Row;
        Ok(Self {
            name: r.try_get("name")?,
            kind: TemplateKind::parse(&r.try_get::<String, _>("kind")?).map_err(undecodable)?,
            body: r.try_get("body")?,
            enabled: r.try_get::<i64, _>("enabled")? != 0,
            description: r.try_get("description")?,
            created: r.try_get("created")?,
            updated: r.try_get("updated")?,
        })
    }
}

impl Tx {
    /// Stores a template (its body is validated by the provisioning engine before this).
    pub async fn create_template(
        &mut self,
        account_id: &AccountId,
        name: &TemplateName,
        kind: TemplateKind,
        body: &str,
        enabled: bool,
        description: Option<&str>,
    ) -> Result<Template> {
        if body.len() > MAX_TEMPLATE_BYTES {
            return Err(RegistryError::limit("bytes of a template body", MAX_TEMPLATE_BYTES));
        }
        let now = now_ms();
        let n = self.run("INSERT INTO provisioning_templates (account_id, name, kind, body, enabled, description, created, updated) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7) ON CONFLICT DO NOTHING", args![account_id, name, kind.as_str(), body, i64::from(enabled), description, now]).await?;
        created(n, "provisioning template", name)?;
        self.template(account_id, name).await
    }

    /// A template.
    pub async fn template(&mut self, account_id: &AccountId, name: &TemplateName) -> Result<Template> {
        self.optional::<Template>(
            "SELECT * FROM provisioning_templates WHERE account_id = $1 AND name = $2",
            args![account_id, name],
        )
        .await?
        .ok_or_else(|| RegistryError::not_found("provisioning template", name))
    }

    /// An account's templates.
    pub async fn list_templates(&mut self, account_id: &AccountId) -> Result<Vec<Template>> {
        self.all::<Template>(
            "SELECT * FROM provisioning_templates WHERE account_id = $1 ORDER BY name",
            args![account_id],
        )
        .await
    }

    /// Changes a template's body, enabled flag or description.
    pub async fn update_template(
        &mut self,
        account_id: &AccountId,
        name: &TemplateName,
        body: Option<&str>,
        enabled: Option<bool>,
        description: Option<&str>,
    ) -> Result<Template> {
        let mut t = self.template(account_id, name).await?;
        if let Some(b) = body {
            if b.len() > MAX_TEMPLATE_BYTES {
                return Err(RegistryError::limit("bytes of a template body", MAX_TEMPLATE_BYTES));
            }
            t.body = b.to_owned();
        }
        if let Some(e) = enabled {
            t.enabled = e;
        }
        if let Some(d) = description {
            t.description = Some(d.to_owned());
        }
        self.run(
            "UPDATE provisioning_templates SET body = $1, enabled = $2, description = $3, updated = $4 \
             WHERE account_id = $5 AND name = $6",
            args![&t.body, i64::from(t.enabled), &t.description, now_ms(), account_id, name],
        )
        .await?;
        self.template(account_id, name).await
    }

    /// Deletes a template. A CA that names it must be changed first.
    pub async fn delete_template(&mut self, account_id: &AccountId, name: &TemplateName) -> Result<()> {
        let used: Option<(String,)> = self
            .optional(
                "SELECT id FROM ca_certificates WHERE account_id = $1 AND template_name = $2",
                args![account_id, name],
            )
            .await?;
        if let Some((ca,)) = used {
            return Err(RegistryError::InUse {
                kind: "template",
                name: name.to_string(),
                user: format!("CA certificate {ca}"),
            });
        }
        let n = self
            .run(
                "DELETE FROM provisioning_templates WHERE account_id = $1 AND name = $2",
                args![account_id, name],
            )
            .await?;
        if n == 0 {
            return Err(RegistryError::not_found("provisioning template", name));
        }
        Ok(())
    }
}
