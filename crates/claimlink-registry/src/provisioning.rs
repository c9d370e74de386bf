//! The few statements a new device needs (just-in-time provisioning), each one write.

use crate::db::*;
use crate::*;

use std::collections::BTreeMap;

impl Tx {
    /// Creates a thing known not to exist (checked in this transaction), in `groups` (at most
    /// 10, each must exist): one INSERT per row.
    pub async fn insert_new_thing(
        &mut self,
        account_id: &AccountId,
        name: &ThingName,
        thing_type: Option<&ThingTypeName>,
        attributes: &BTreeMap<String, String>,
        groups: &[ThingGroupName],
    ) -> Result<()> {
        validate_attributes(attributes)?;
        if groups.len() > MAX_GROUPS_PER_THING {
            return Err(RegistryError::limit("groups per thing", MAX_GROUPS_PER_THING));
        }
        if let Some(t) = thing_type {
            self.require_thing_type(account_id, t).await?;
        }
        let now = now_ms();
        let n = self
            .run(
                "INSERT INTO things (account_id, name, thing_type, attributes, version, created, updated) \
             VALUES ($1, $2, $3, $4, 1, $5, $5) ON CONFLICT DO NOTHING",
                args![
                    account_id,
                    name,
                    thing_type,
                    serde_json::to_string(attributes).unwrap_or_default(),
                    now
                ],
            )
            .await?;
        created(n, "thing", name)?;
        for g in groups {
            let n = self.run("INSERT INTO thing_group_members (account_id, group_name, thing_name) \
                 SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM thing_groups WHERE account_id = $1 AND name = $2) \
                 ON CONFLICT DO NOTHING", args![account_id, g, name]).await?;
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
        account_id: &AccountId,
        certificate_id: &CertificateId,
        policies: &[PolicyName],
    ) -> Result<()> {
        if policies.len() > MAX_POLICIES_PER_CERTIFICATE {
            return Err(RegistryError::limit("policies per certificate", MAX_POLICIES_PER_CERTIFICATE));
        }
        for p in policies {
            let n = self.run("INSERT INTO policy_attachments (account_id, policy_name, target_type, target) \
                 SELECT $1, $2, 'cert', $3 WHERE EXISTS (SELECT 1 FROM policies WHERE account_id = $1 AND name = $2) \
                 ON CONFLICT DO NOTHING", args![account_id, p, certificate_id]).await?;
            if n == 0 {
                return Err(RegistryError::not_found("policy", p));
            }
        }
        Ok(())
    }

    /// Links a certificate and a thing that both exist in this transaction: one INSERT.
    pub async fn link_thing_principal(
        &mut self,
        account_id: &AccountId,
        thing: &ThingName,
        certificate_id: &CertificateId,
    ) -> Result<()> {
        self.run("INSERT INTO thing_principals (account_id, thing_name, certificate_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING", args![account_id, thing, certificate_id]).await?;
        Ok(())
    }

    /// Sets the status of a certificate made in this transaction: one UPDATE.
    pub async fn set_new_certificate_status(
        &mut self,
        account_id: &AccountId,
        record: &mut CertificateRecord,
        status: CertificateStatus,
    ) -> Result<()> {
        let now = now_ms();
        self.run(
            "UPDATE certificates SET status = $1, updated = $2 WHERE account_id = $3 AND id = $4",
            args![status.as_str(), now, account_id, &record.id],
        )
        .await?;
        record.status = status;
        record.updated = now;
        Ok(())
    }
}
