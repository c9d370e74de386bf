//! Just-in-time provisioning with AWS IoT-format provisioning templates.
//!
//! [`Template::parse`] validates a template when it is created: shape, resource types,
//! properties, override settings, intrinsic functions (`Ref`, `Fn::Join`, `Fn::Sub`,
//! `Fn::Select`, `Fn::Split`, `Fn::FindInMap`) and that every `Ref` names a declared parameter
//! and every map lookup a declared mapping; inline policy documents are validated as policies.
//!
//! [`jitp`] runs a template for a device certificate inside one registry transaction: register
//! the certificate PENDING_ACTIVATION, create or update the thing (with its override settings),
//! the policy, the attachments, then the final status. If any step fails the transaction rolls
//! back - no half-provisioned device - and the reason is recorded as a provisioning failure
//! with an audit row, queryable by the account's owner.

#![forbid(unsafe_code)]

pub mod registration;

pub use claimlink_template::{
    CERTIFICATE_ID_PARAMETER, CERTIFICATE_PARAMETERS, DoesNotFit, Expr, MAX_TEMPLATE_BYTES, Override,
    Parameters, Plan, SubPart, Template, TemplateError, ThingPlan,
};

use std::collections::BTreeMap;

use claimlink_pki::Certificate;
use claimlink_pki::name::attribute;
use claimlink_registry::{
    Account, AccountId, AuditRecord, CaId, CertificateId, CertificateRecord, CertificateStatus, Coded,
    Invalid, PolicyName, ProvisioningFailure, RegistryError, Store, TemplateName, ThingGroupName, ThingName,
    ThingTypeName, Tx,
};
use serde_json::Value;

fn fit(msg: &str) -> ProvisionError {
    ProvisionError::DoesNotFit(msg.to_owned())
}

/// Why provisioning failed (recorded, and shown to the account owner).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProvisionError {
    /// The template cannot be applied to this certificate (a missing subject field without a
    /// Default, an override setting of FAIL that triggered, an unknown thing group...).
    #[error("{0}")]
    DoesNotFit(String),
    /// The template is not valid (it changed since it was stored, or was stored by an older
    /// version).
    #[error("{0}")]
    Template(#[from] TemplateError),
    /// The registry refused a step.
    #[error("{0}")]
    Registry(#[from] RegistryError),
}

impl From<DoesNotFit> for ProvisionError {
    fn from(e: DoesNotFit) -> Self {
        Self::DoesNotFit(e.0)
    }
}

impl From<Invalid> for ProvisionError {
    fn from(e: Invalid) -> Self {
        Self::DoesNotFit(format!("the template makes an invalid name: {e}"))
    }
}

impl From<registration::CreatePolicyError> for ProvisionError {
    fn from(e: registration::CreatePolicyError) -> Self {
        match e {
            registration::CreatePolicyError::Document(e) => Self::DoesNotFit(format!("{}: {e}", e.code())),
            registration::CreatePolicyError::Registry(e) => Self::Registry(e),
        }
    }
}

impl Coded for ProvisionError {
    fn code(&self) -> &'static str {
        match self {
            Self::DoesNotFit(_) => "InvalidRequestException",
            Self::Template(e) => e.code(),
            Self::Registry(e) => e.code(),
        }
    }
}

impl ProvisionError {
    /// Whether retrying could help (a database failure, a concurrent provisioning of the same
    /// certificate) as opposed to a template that will never fit.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Registry(e) if e.is_conflict() || matches!(e, RegistryError::Database(_)))
    }
}

/// The certificate subject fields by their AWS policy-variable names (`CommonName`,
/// `Organization`, ...), for policy variables and template parameters.
pub fn subject_fields(cert: &Certificate) -> BTreeMap<String, String> {
    name_fields(cert.subject())
}

/// A distinguished name's fields by their AWS policy-variable names (for
/// `${iot:Certificate.Subject.X}` and `${iot:Certificate.Issuer.X}`).
pub fn name_fields(name: &claimlink_pki::Name) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (param, oid) in CERTIFICATE_PARAMETERS {
        if let Some(v) = attribute(name, oid) {
            let field = param.trim_start_matches("AWS::IoT::Certificate::");
            let field = if field == "StateName" { "State" } else { field };
            out.insert(field.to_owned(), v);
        }
    }
    out
}

/// What provisioning produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioned {
    /// The certificate as registered.
    pub certificate: CertificateRecord,
    /// The thing it is attached to.
    pub thing_name: Option<ThingName>,
    /// Policies attached to the certificate.
    pub policies: Vec<PolicyName>,
}

/// Runs JITP for `cert` (issued by the registered CA `ca_id`) with the stored template
/// `template_name`, in one transaction. On failure nothing is kept but a provisioning failure
/// record and an audit row.
pub async fn jitp(
    store: &Store,
    account: &Account,
    ca_id: &CaId,
    template_name: &TemplateName,
    cert: &Certificate,
) -> Result<Provisioned, ProvisionError> {
    // Everything that only reads happens before the write transaction, which SQLite
    // serialises: it should hold the writer for as few statements as possible.
    let stored = match store.read().await {
        Ok(mut tx) => tx.template(&account.id, template_name).await,
        Err(e) => Err(e),
    };
    match stored {
        Ok(stored) => jitp_with(store, account, ca_id, &stored, cert).await,
        Err(e) => {
            let e = ProvisionError::from(e);
            let id = CertificateId::of(cert);
            record_failure(store, account, &id, Some(ca_id), Some(template_name), &e.to_string()).await;
            Err(e)
        }
    }
}

/// [`jitp`] with the stored template already read (the account endpoint reads it in the same
/// transaction as the certificate lookup).
pub async fn jitp_with(
    store: &Store,
    account: &Account,
    ca_id: &CaId,
    stored: &claimlink_registry::Template,
    cert: &Certificate,
) -> Result<Provisioned, ProvisionError> {
    match Template::parse(&stored.body) {
        Ok(template) => jitp_compiled(store, account, ca_id, stored, &template, cert).await,
        Err(e) => {
            let e = ProvisionError::from(e);
            let certificate_id = CertificateId::of(cert);
            record_failure(store, account, &certificate_id, Some(ca_id), Some(&stored.name), &e.to_string())
                .await;
            Err(e)
        }
    }
}

/// [`jitp_with`] with the stored template already compiled (the account endpoint keeps
/// compiled templates, so a device's provisioning parses nothing).
pub async fn jitp_compiled(
    store: &Store,
    account: &Account,
    ca_id: &CaId,
    stored: &claimlink_registry::Template,
    template: &Template,
    cert: &Certificate,
) -> Result<Provisioned, ProvisionError> {
    let certificate_id = CertificateId::of(cert);
    let template_name = &stored.name;
    let result = async {
        if !stored.enabled {
            return Err(fit(&format!("template {template_name} is disabled")));
        }
        let params = template.parameters_for(cert, certificate_id.as_str());
        let plan = template.plan(&params, template_name)?;
        // Lost in a machine crash, it is redone by the device's next connection.
        let mut tx = store.begin_relaxed().await?;
        let provisioned = apply(&mut tx, account, ca_id, cert, &plan).await?;
        tx.audit(Some(&account.id), &audit_row("JITP", &certificate_id, "ok", Some(template_name))).await?;
        tx.commit().await?;
        Ok(provisioned)
    }
    .await;
    if let Err(e) = &result {
        if !e.is_transient() {
            record_failure(store, account, &certificate_id, Some(ca_id), Some(template_name), &e.to_string())
                .await;
        }
        tracing::info!(account = %account.id, certificate = %certificate_id, error = %e, "JITP failed");
    }
    result
}

/// Records a failure and its audit row (best effort: the failure itself is already reported to
/// the caller).
pub async fn record_failure(
    store: &Store,
    account: &Account,
    certificate_id: &CertificateId,
    ca_id: Option<&CaId>,
    template: Option<&TemplateName>,
    reason: &str,
) {
    let failure = ProvisioningFailure {
        certificate_id: certificate_id.to_string(),
        ca_id: ca_id.map(CaId::to_string),
        template_name: template.map(TemplateName::to_string),
        reason: reason.to_owned(),
        at: claimlink_registry::now(),
    };
    let write = async {
        let mut tx = store.begin().await?;
        tx.record_provisioning_failure(&account.id, &failure).await?;
        tx.audit(Some(&account.id), &audit_row("JITP", certificate_id, "failed", Some(reason))).await?;
        tx.commit().await
    };
    if let Err(e) = write.await {
        tracing::warn!(error = %e, "could not record a provisioning failure");
    }
}

fn audit_row(action: &str, target: &str, result: &str, detail: Option<&str>) -> AuditRecord {
    AuditRecord {
        actor: "jitp".into(),
        action: action.into(),
        target: target.into(),
        result: result.into(),
        detail: detail.map(|d| serde_json::json!({ "detail": d }).to_string()),
        at: claimlink_registry::now(),
    }
}

async fn apply(
    tx: &mut Tx,
    account: &Account,
    ca_id: &CaId,
    cert: &Certificate,
    plan: &Plan,
) -> Result<Provisioned, ProvisionError> {
    let a = &account.id;
    // The chain was verified by the TLS handshake that brought the device here.
    let mut record =
        tx.insert_certificate(a, cert, Some(ca_id), CertificateStatus::PendingActivation).await?;
    let mut thing_name = None;
    if let Some(t) = &plan.thing {
        let name = ThingName::new(&t.name)?;
        match tx.thing(a, &name).await? {
            None => {
                let thing_type = t.thing_type.as_deref().map(ThingTypeName::new).transpose()?;
                let groups =
                    t.groups.iter().map(|g| ThingGroupName::new(g)).collect::<Result<Vec<_>, _>>()?;
                tx.insert_new_thing(a, &name, thing_type.as_ref(), &t.attributes, &groups)
                    .await
                    .map_err(group_error)?
            }
            Some(existing) => update_thing(tx, a, &existing, t).await?,
        }
        thing_name = Some(name);
    }
    let mut policies = Vec::new();
    for (name, doc) in &plan.policies {
        let name = PolicyName::new(name)?;
        if let Some(doc) = doc {
            match tx.get_policy(a, &name).await {
                Ok(_) => {}
                Err(RegistryError::NotFound { .. }) => {
                    registration::create_policy(tx, a, &name, doc).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        policies.push(name);
    }
    tx.attach_policies_to_new_certificate(a, &record.id, &policies).await.map_err(|e| match e {
        RegistryError::NotFound { kind: "policy", name } => {
            fit(&format!("policy {name} named by the template does not exist in this account"))
        }
        other => other.into(),
    })?;
    if let Some(thing) = &thing_name {
        tx.link_thing_principal(a, thing, &record.id).await?;
    }
    let status = match plan.certificate_status {
        Some(s) => CertificateStatus::parse(s)?,
        None => CertificateStatus::Active,
    };
    tx.set_new_certificate_status(a, &mut record, status).await?;
    Ok(Provisioned { certificate: record, thing_name, policies })
}

/// A missing thing group is the template's fault: say so.
fn group_error(e: RegistryError) -> ProvisionError {
    match e {
        RegistryError::NotFound { kind: "thing group", name } => {
            fit(&format!("thing group {name} named by the template does not exist in this account"))
        }
        other => other.into(),
    }
}

/// Applies the template to a thing that exists, as its override settings say.
async fn update_thing(
    tx: &mut Tx,
    a: &AccountId,
    existing: &claimlink_registry::Thing,
    t: &ThingPlan,
) -> Result<(), ProvisionError> {
    let plan_type = t.thing_type.as_deref().map(ThingTypeName::new).transpose()?;
    let plan_groups = t.groups.iter().map(|g| ThingGroupName::new(g)).collect::<Result<Vec<_>, _>>()?;
    let [attr_o, type_o, groups_o] = t.overrides;
    let refuse =
        |what: &str| fit(&format!("thing {} exists with other {what} and the template says FAIL", t.name));
    let mut attributes = existing.attributes.clone();
    match attr_o {
        Override::DoNothing => {}
        Override::Replace => attributes.clone_from(&t.attributes),
        Override::Merge => attributes.extend(t.attributes.clone()),
        Override::Fail if existing.attributes != t.attributes => return Err(refuse("attributes")),
        Override::Fail => {}
    }
    let mut thing_type = existing.thing_type.clone();
    match type_o {
        Override::Replace | Override::Merge => thing_type.clone_from(&plan_type),
        Override::Fail if existing.thing_type != plan_type => return Err(refuse("thing type")),
        Override::Fail | Override::DoNothing => {}
    }
    if attributes != existing.attributes || thing_type != existing.thing_type {
        tx.update_thing(a, &existing.name, thing_type.as_ref(), &attributes).await?;
    }
    let current = tx.groups_of_thing(a, &existing.name).await?;
    let missing: Vec<&ThingGroupName> = plan_groups.iter().filter(|g| !current.contains(g)).collect();
    let extra: Vec<&ThingGroupName> = current.iter().filter(|g| !plan_groups.contains(g)).collect();
    match groups_o {
        Override::DoNothing => {}
        Override::Fail if !missing.is_empty() || !extra.is_empty() => return Err(refuse("thing groups")),
        Override::Fail => {}
        Override::Merge | Override::Replace => {
            if groups_o == Override::Replace {
                for g in &extra {
                    tx.remove_thing_from_group(a, g, &existing.name).await?;
                }
            }
            for g in missing {
                tx.add_thing_to_group(a, g, &existing.name).await.map_err(group_error)?;
            }
        }
    }
    Ok(())
}

/// Just-in-time registration (a CA with auto-registration and no template): the certificate is
/// registered PENDING_ACTIVATION and the event for `$aws/events/certificates/registered/{caId}`
/// is returned for the caller to publish.
pub async fn jitr(
    store: &Store,
    account: &Account,
    ca_id: &CaId,
    cert: &Certificate,
) -> Result<(CertificateRecord, Value), ProvisionError> {
    let mut tx = store.begin().await?;
    // The chain was verified by the TLS handshake that brought the device here.
    let record =
        tx.insert_certificate(&account.id, cert, Some(ca_id), CertificateStatus::PendingActivation).await?;
    tx.audit(Some(&account.id), &audit_row("JITR", &record.id, "ok", None)).await?;
    tx.commit().await?;
    let event = serde_json::json!({
        "certificateId": record.id,
        "caCertificateId": ca_id,
        "timestamp": record.created,
        "certificateStatus": "PENDING_ACTIVATION",
        "awsAccountId": account.id,
        "certificateRegistrationTimestamp": record.created,
    });
    Ok((record, event))
}
