//! Things, thing types, thing groups and their members, things' principals.

use crate::db::*;
use crate::*;

use std::collections::BTreeMap;

impl<'r> sqlx::FromRow<'r, sqlx::any::AnyRow> for Thing {
    fn from_row(r: &'r sqlx::any::AnyRow) -> sqlx::Result<Self> {
        use sqlx::Row;
        let attributes: String = r.try_get("attributes")?;
        Ok(Self {
            name: r.try_get("name")?,
            thing_type: r.try_get("thing_type")?,
            attributes: serde_json::from_str(&attributes).unwrap_or_default(),
            version: r.try_get("version")?,
            created: r.try_get("created")?,
            updated: r.try_get("updated")?,
        })
    }
}

impl Tx {
    /// Creates a thing.
    pub async fn create_thing(
        &mut self,
        account_id: &AccountId,
        name: &ThingName,
        thing_type: Option<&ThingTypeName>,
        attributes: &BTreeMap<String, String>,
    ) -> Result<Thing> {
        validate_attributes(attributes)?;
        if let Some(t) = thing_type {
            self.require_thing_type(account_id, t).await?;
        }
        let now = now_ms();
        let n = self.run("INSERT INTO things (account_id, name, thing_type, attributes, version, created, updated) VALUES ($1, $2, $3, $4, 1, $5, $5) ON CONFLICT DO NOTHING", args![account_id, name, thing_type, serde_json::to_string(attributes).unwrap_or_default(), now]).await?;
        created(n, "thing", name)?;
        self.describe_thing(account_id, name).await
    }

    /// A thing, if it exists.
    pub async fn thing(&mut self, account_id: &AccountId, name: &ThingName) -> Result<Option<Thing>> {
        self.optional::<Thing>(
            "SELECT * FROM things WHERE account_id = $1 AND name = $2",
            args![account_id, name],
        )
        .await
    }

    /// A thing.
    pub async fn describe_thing(&mut self, account_id: &AccountId, name: &ThingName) -> Result<Thing> {
        self.thing(account_id, name).await?.ok_or_else(|| RegistryError::not_found("thing", name))
    }

    /// An account's things, by name.
    pub async fn list_things(&mut self, account_id: &AccountId) -> Result<Vec<Thing>> {
        self.things_page(account_id, None, i64::MAX).await
    }

    /// Up to `limit` things named after `after`, by name (a page of a list).
    pub async fn things_page(
        &mut self,
        account_id: &AccountId,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Thing>> {
        self.all::<Thing>(
            "SELECT * FROM things WHERE account_id = $1 AND name > $2 ORDER BY name LIMIT $3",
            args![account_id, after.unwrap_or(""), limit],
        )
        .await
    }

    /// Replaces a thing's type and attributes (one version up).
    pub async fn update_thing(
        &mut self,
        account_id: &AccountId,
        name: &ThingName,
        thing_type: Option<&ThingTypeName>,
        attributes: &BTreeMap<String, String>,
    ) -> Result<Thing> {
        validate_attributes(attributes)?;
        if let Some(t) = thing_type {
            self.require_thing_type(account_id, t).await?;
        }
        let n = self
            .run(
                "UPDATE things SET thing_type = $1, attributes = $2, version = version + 1, updated = $3 \
             WHERE account_id = $4 AND name = $5",
                args![
                    thing_type,
                    serde_json::to_string(attributes).unwrap_or_default(),
                    now_ms(),
                    account_id,
                    name
                ],
            )
            .await?;
        if n == 0 {
            return Err(RegistryError::not_found("thing", name));
        }
        self.describe_thing(account_id, name).await
    }

    /// Deletes a thing. Its certificates must be detached first.
    pub async fn delete_thing(&mut self, account_id: &AccountId, name: &ThingName) -> Result<()> {
        let attached: Option<(String,)> = self
            .optional(
                "SELECT certificate_id FROM thing_principals WHERE account_id = $1 AND thing_name = $2",
                args![account_id, name],
            )
            .await?;
        if let Some((certificate,)) = attached {
            return Err(RegistryError::InUse {
                kind: "thing",
                name: name.to_string(),
                user: format!("certificate {certificate} (detach it first)"),
            });
        }
        let n = self
            .run("DELETE FROM things WHERE account_id = $1 AND name = $2", args![account_id, name])
            .await?;
        if n == 0 {
            return Err(RegistryError::not_found("thing", name));
        }
        self.run(
            "DELETE FROM thing_group_members WHERE account_id = $1 AND thing_name = $2",
            args![account_id, name],
        )
        .await?;
        Ok(())
    }

    /// Creates a thing type.
    pub async fn create_thing_type(
        &mut self,
        account_id: &AccountId,
        name: &ThingTypeName,
        description: Option<&str>,
        searchable_attributes: &[String],
    ) -> Result<()> {
        if searchable_attributes.len() > 3 {
            return Err(RegistryError::limit("searchable attributes per thing type", 3));
        }
        if let Some(a) = searchable_attributes.iter().find(|a| !attribute_name_ok(a)) {
            return Err(RegistryError::invalid(
                "searchable attribute",
                a,
                "1-128 characters of a-z A-Z 0-9 _ . , @ / : # -",
            ));
        }
        if description.is_some_and(|d| d.chars().count() > 2028) {
            return Err(RegistryError::limit("characters of a thing type description", 2028));
        }
        let n = self.run("INSERT INTO thing_types (account_id, name, description, searchable_attributes, created) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING", args![account_id, name, description, serde_json::to_string(searchable_attributes).unwrap_or_default(), now_ms()]).await?;
        created(n, "thing type", name)?;
        Ok(())
    }

    /// Whether a thing type exists.
    pub async fn thing_type_exists(&mut self, account_id: &AccountId, name: &ThingTypeName) -> Result<bool> {
        Ok(self
            .optional::<(String,)>(
                "SELECT name FROM thing_types WHERE account_id = $1 AND name = $2",
                args![account_id, name],
            )
            .await?
            .is_some())
    }

    pub(crate) async fn require_thing_type(
        &mut self,
        account_id: &AccountId,
        name: &ThingTypeName,
    ) -> Result<()> {
        if self.thing_type_exists(account_id, name).await? {
            Ok(())
        } else {
            Err(RegistryError::not_found("thing type", name))
        }
    }

    /// Creates a thing group.
    pub async fn create_thing_group(
        &mut self,
        account_id: &AccountId,
        name: &ThingGroupName,
        parent: Option<&ThingGroupName>,
        attributes: &BTreeMap<String, String>,
    ) -> Result<()> {
        validate_attributes(attributes)?;
        if let Some(p) = parent
            && !self.thing_group_exists(account_id, p).await?
        {
            return Err(RegistryError::not_found("thing group", p));
        }
        let n = self.run("INSERT INTO thing_groups (account_id, name, parent, attributes, created) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING", args![account_id, name, parent, serde_json::to_string(attributes).unwrap_or_default(), now_ms()]).await?;
        created(n, "thing group", name)?;
        Ok(())
    }

    /// Whether a thing group exists.
    pub async fn thing_group_exists(
        &mut self,
        account_id: &AccountId,
        name: &ThingGroupName,
    ) -> Result<bool> {
        Ok(self
            .optional::<(String,)>(
                "SELECT name FROM thing_groups WHERE account_id = $1 AND name = $2",
                args![account_id, name],
            )
            .await?
            .is_some())
    }

    /// Adds a thing to a group (a thing is in at most 10). Adding it twice is not an error.
    pub async fn add_thing_to_group(
        &mut self,
        account_id: &AccountId,
        group: &ThingGroupName,
        thing: &ThingName,
    ) -> Result<()> {
        if !self.thing_group_exists(account_id, group).await? {
            return Err(RegistryError::not_found("thing group", group));
        }
        self.describe_thing(account_id, thing).await?;
        let groups = self.groups_of_thing(account_id, thing).await?;
        if groups.iter().any(|g| g == group) {
            return Ok(());
        }
        if groups.len() >= MAX_GROUPS_PER_THING {
            return Err(RegistryError::limit("groups per thing", MAX_GROUPS_PER_THING));
        }
        self.run(
            "INSERT INTO thing_group_members (account_id, group_name, thing_name) VALUES ($1, $2, $3)",
            args![account_id, group, thing],
        )
        .await?;
        Ok(())
    }

    /// Removes a thing from a group (absent: nothing to do).
    pub async fn remove_thing_from_group(
        &mut self,
        account_id: &AccountId,
        group: &ThingGroupName,
        thing: &ThingName,
    ) -> Result<()> {
        self.run(
            "DELETE FROM thing_group_members WHERE account_id = $1 AND group_name = $2 AND thing_name = $3",
            args![account_id, group, thing],
        )
        .await?;
        Ok(())
    }

    /// The things in a group.
    pub async fn things_in_group(
        &mut self,
        account_id: &AccountId,
        group: &ThingGroupName,
    ) -> Result<Vec<ThingName>> {
        self.column("SELECT thing_name FROM thing_group_members WHERE account_id = $1 AND group_name = $2 ORDER BY thing_name", args![account_id, group]).await
    }

    /// The groups a thing is in.
    pub async fn groups_of_thing(
        &mut self,
        account_id: &AccountId,
        thing: &ThingName,
    ) -> Result<Vec<ThingGroupName>> {
        self.column("SELECT group_name FROM thing_group_members WHERE account_id = $1 AND thing_name = $2 ORDER BY group_name", args![account_id, thing]).await
    }

    /// Attaches a certificate to a thing. Attaching it twice is not an error.
    pub async fn attach_thing_principal(
        &mut self,
        account_id: &AccountId,
        thing: &ThingName,
        certificate_id: &CertificateId,
    ) -> Result<()> {
        self.describe_thing(account_id, thing).await?;
        self.describe_certificate(account_id, certificate_id).await?;
        let present = self.optional::<(String,)>("SELECT thing_name FROM thing_principals WHERE account_id = $1 AND thing_name = $2 AND certificate_id = $3", args![account_id, thing, certificate_id]).await?.is_some();
        if !present {
            self.run(
                "INSERT INTO thing_principals (account_id, thing_name, certificate_id) VALUES ($1, $2, $3)",
                args![account_id, thing, certificate_id],
            )
            .await?;
        }
        Ok(())
    }

    /// Detaches a certificate from a thing.
    pub async fn detach_thing_principal(
        &mut self,
        account_id: &AccountId,
        thing: &ThingName,
        certificate_id: &CertificateId,
    ) -> Result<()> {
        self.run(
            "DELETE FROM thing_principals WHERE account_id = $1 AND thing_name = $2 AND certificate_id = $3",
            args![account_id, thing, certificate_id],
        )
        .await?;
        Ok(())
    }

    /// The things a certificate is attached to.
    pub async fn things_of_certificate(
        &mut self,
        account_id: &AccountId,
        certificate_id: &CertificateId,
    ) -> Result<Vec<ThingName>> {
        self.column("SELECT thing_name FROM thing_principals WHERE account_id = $1 AND certificate_id = $2 ORDER BY thing_name", args![account_id, certificate_id]).await
    }
}
