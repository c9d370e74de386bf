//! Policies, their versions and their attachments.

use crate::db::*;
use crate::*;

/// What a policy is attached to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyTarget {
    /// A certificate, by id.
    Certificate(CertificateId),
    /// A thing group, by name.
    ThingGroup(ThingGroupName),
}

impl PolicyTarget {
    fn parts(&self) -> (&'static str, &str) {
        match self {
            Self::Certificate(id) => ("cert", id.as_str()),
            Self::ThingGroup(name) => ("thinggroup", name.as_str()),
        }
    }
}

columns!(PolicyRecord { name, document, default_version, created, updated });

impl Tx {
    /// Stores a policy whose document the caller has validated (`claimlink-provision`'s
    /// `registration::create_policy`), as its version 1.
    pub async fn insert_policy(
        &mut self,
        account_id: &AccountId,
        name: &PolicyName,
        document: &str,
    ) -> Result<PolicyRecord> {
        let now = now_ms();
        let n = self.run("INSERT INTO policies (account_id, name, default_version, created, updated) VALUES ($1, $2, 1, $3, $3) ON CONFLICT DO NOTHING", args![account_id, name, now]).await?;
        created(n, "policy", name)?;
        self.run("INSERT INTO policy_versions (account_id, policy_name, version, document, created) VALUES ($1, $2, 1, $3, $4)", args![account_id, name, document, now]).await?;
        self.get_policy(account_id, name).await
    }

    /// A policy with its default version's document.
    pub async fn get_policy(&mut self, account_id: &AccountId, name: &PolicyName) -> Result<PolicyRecord> {
        self.optional::<PolicyRecord>("SELECT p.name, p.default_version, p.created, p.updated, v.document FROM policies p \
             JOIN policy_versions v ON v.account_id = p.account_id AND v.policy_name = p.name AND v.version = p.default_version \
             WHERE p.account_id = $1 AND p.name = $2", args![account_id, name]).await?
            .ok_or_else(|| RegistryError::not_found("policy", name))
    }

    /// An account's policies.
    pub async fn list_policies(&mut self, account_id: &AccountId) -> Result<Vec<PolicyRecord>> {
        self.all::<PolicyRecord>("SELECT p.name, p.default_version, p.created, p.updated, v.document FROM policies p \
             JOIN policy_versions v ON v.account_id = p.account_id AND v.policy_name = p.name AND v.version = p.default_version \
             WHERE p.account_id = $1 ORDER BY p.name", args![account_id]).await
    }

    /// Attaches a policy to a certificate (at most 10 per certificate) or a thing group.
    /// Attaching it twice is not an error.
    pub async fn attach_policy(
        &mut self,
        account_id: &AccountId,
        policy: &PolicyName,
        target: &PolicyTarget,
    ) -> Result<()> {
        self.get_policy(account_id, policy).await?;
        let (kind, name) = target.parts();
        match target {
            PolicyTarget::Certificate(id) => {
                self.describe_certificate(account_id, id).await?;
            }
            PolicyTarget::ThingGroup(g) => {
                if !self.thing_group_exists(account_id, g).await? {
                    return Err(RegistryError::not_found("thing group", g));
                }
            }
        }
        let attached = self.attached_policy_names(account_id, target).await?;
        if attached.iter().any(|p| p == policy) {
            return Ok(());
        }
        if matches!(target, PolicyTarget::Certificate(_)) && attached.len() >= MAX_POLICIES_PER_CERTIFICATE {
            return Err(RegistryError::limit("policies per certificate", MAX_POLICIES_PER_CERTIFICATE));
        }
        self.run("INSERT INTO policy_attachments (account_id, policy_name, target_type, target) VALUES ($1, $2, $3, $4)", args![account_id, policy, kind, name]).await?;
        Ok(())
    }

    /// Detaches a policy.
    pub async fn detach_policy(
        &mut self,
        account_id: &AccountId,
        policy: &PolicyName,
        target: &PolicyTarget,
    ) -> Result<()> {
        let (kind, name) = target.parts();
        let n = self.run("DELETE FROM policy_attachments WHERE account_id = $1 AND policy_name = $2 AND target_type = $3 AND target = $4", args![account_id, policy, kind, name]).await?;
        if n == 0 {
            return Err(RegistryError::not_found("policy attachment", policy));
        }
        Ok(())
    }

    /// Names of the policies attached to a target.
    pub async fn attached_policy_names(
        &mut self,
        account_id: &AccountId,
        target: &PolicyTarget,
    ) -> Result<Vec<PolicyName>> {
        let (kind, name) = target.parts();
        self.column("SELECT policy_name FROM policy_attachments WHERE account_id = $1 AND target_type = $2 AND target = $3 ORDER BY policy_name", args![account_id, kind, name]).await
    }

    /// The documents of every policy that applies to a certificate used by `thing`: those
    /// attached to the certificate, and those attached to the thing's groups.
    pub async fn effective_policies(
        &mut self,
        account_id: &AccountId,
        certificate_id: &CertificateId,
        thing: Option<&ThingName>,
    ) -> Result<Vec<PolicyRecord>> {
        // One round trip: this runs on every CONNECT. Two index searches (the certificate's
        // attachments; the thing's groups' attachments), never a scan of the fleet.
        self.all::<PolicyRecord>("SELECT p.name, p.default_version, p.created, p.updated, v.document FROM ( \
               SELECT policy_name FROM policy_attachments \
                 WHERE account_id = $1 AND target_type = 'cert' AND target = $2 \
               UNION \
               SELECT a.policy_name FROM thing_group_members m JOIN policy_attachments a \
                 ON a.account_id = m.account_id AND a.target_type = 'thinggroup' AND a.target = m.group_name \
                 WHERE m.account_id = $1 AND m.thing_name = $3 \
             ) x \
             JOIN policies p ON p.account_id = $1 AND p.name = x.policy_name \
             JOIN policy_versions v ON v.account_id = p.account_id AND v.policy_name = p.name AND v.version = p.default_version \
             ORDER BY p.name", args![account_id, certificate_id, thing.map_or("", |t| t.as_str())]).await
    }

    /// The thing named `name` if it is attached to the certificate (the thing a connection
    /// with client id `name` speaks for): one round trip.
    pub async fn attached_thing(
        &mut self,
        account_id: &AccountId,
        certificate_id: &CertificateId,
        name: &ThingName,
    ) -> Result<Option<Thing>> {
        self.optional::<Thing>(
            "SELECT t.* FROM things t JOIN thing_principals p \
             ON p.account_id = t.account_id AND p.thing_name = t.name \
             WHERE t.account_id = $1 AND p.certificate_id = $2 AND t.name = $3",
            args![account_id, certificate_id, name],
        )
        .await
    }
}
