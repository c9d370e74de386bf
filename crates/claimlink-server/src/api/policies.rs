//! Policies and their attachments.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use claimlink_provision::registration;
use claimlink_registry::{Account, CertificateId, PolicyName, PolicyTarget, ThingGroupName, ThingName};
use claimlink_service::api::{ApiError, Audited, Body, Page};
use serde::Deserialize;
use serde_json::json;

use super::{ApiResult, Caller, arn};
use crate::AccountServer;

/// `create-policy`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct CreatePolicy {
    policy_document: String,
}

pub(super) async fn create_policy(
    State(s): State<AccountServer>,
    Caller { account: a, actor }: Caller,
    Path(name): Path<PolicyName>,
    Body(b): Body<CreatePolicy>,
) -> ApiResult {
    let mut tx = Audited::begin(s.store(), Some(&a.id), &actor).await?;
    let (p, warnings) = registration::create_policy(&mut tx, &a.id, &name, &b.policy_document).await?;
    tx.commit("CreatePolicy", &name).await?;
    Ok(axum::Json(json!({
        "policyName": p.name,
        "policyArn": arn(&a, &format!("policy/{}", p.name)),
        "policyDocument": p.document,
        "policyVersionId": p.default_version.to_string(),
        "warnings": warnings,
    })))
}

pub(super) async fn get_policy(
    State(s): State<AccountServer>,
    Caller { account: a, .. }: Caller,
    Path(name): Path<PolicyName>,
) -> ApiResult {
    let p = s.store().read().await?.get_policy(&a.id, &name).await?;
    Ok(axum::Json(json!({
        "policyName": p.name,
        "policyArn": arn(&a, &format!("policy/{}", p.name)),
        "policyDocument": p.document,
        "defaultVersionId": p.default_version.to_string(),
        "creationDate": p.created as f64 / 1000.0,
        "lastModifiedDate": p.updated as f64 / 1000.0,
    })))
}

pub(super) async fn list_policies(
    State(s): State<AccountServer>,
    Caller { account: a, .. }: Caller,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult {
    let page = Page::parse(&q)?;
    let ps = s.store().read().await?.list_policies(&a.id).await?;
    Ok(axum::Json(page.slice(
        "policies",
        ps,
        |p| p.name.to_string(),
        |p| json!({ "policyName": p.name, "policyArn": arn(&a, &format!("policy/{}", p.name)) }),
    )))
}

/// `attach-policy` and `detach-policy`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct PolicyTargetBody {
    target: String,
}

/// A certificate or thing group ARN of this account, or a bare certificate id.
pub(super) fn policy_target(a: &Account, target: &str) -> Result<PolicyTarget, ApiError> {
    let prefix = arn(a, "");
    let rest = target.strip_prefix(&prefix).unwrap_or(target);
    if let Some(id) = rest.strip_prefix("cert/") {
        Ok(PolicyTarget::Certificate(CertificateId::new(id)?))
    } else if let Some(g) = rest.strip_prefix("thinggroup/") {
        Ok(PolicyTarget::ThingGroup(ThingGroupName::new(g)?))
    } else if let Ok(id) = CertificateId::new(rest) {
        Ok(PolicyTarget::Certificate(id))
    } else {
        Err(ApiError::bad(format!(
            "target {target:?} is not a certificate or thing group ARN of this account ({prefix}...)"
        )))
    }
}

pub(super) async fn attach_policy(
    state: State<AccountServer>,
    caller: Caller,
    name: Path<PolicyName>,
    body: Body<PolicyTargetBody>,
) -> ApiResult {
    change_attachment(state, caller, name, body, true).await
}

pub(super) async fn detach_policy(
    state: State<AccountServer>,
    caller: Caller,
    name: Path<PolicyName>,
    body: Body<PolicyTargetBody>,
) -> ApiResult {
    change_attachment(state, caller, name, body, false).await
}

/// `attach-policy` (`attach`) or `detach-policy`, then the affected sessions bound again.
async fn change_attachment(
    State(s): State<AccountServer>,
    Caller { account: a, actor }: Caller,
    Path(name): Path<PolicyName>,
    Body(b): Body<PolicyTargetBody>,
    attach: bool,
) -> ApiResult {
    let target = policy_target(&a, &b.target)?;
    let mut tx = Audited::begin(s.store(), Some(&a.id), &actor).await?;
    if attach {
        tx.attach_policy(&a.id, &name, &target).await?;
    } else {
        tx.detach_policy(&a.id, &name, &target).await?;
    }
    tx.commit(if attach { "AttachPolicy" } else { "DetachPolicy" }, &name).await?;
    rebind(&s, &a, &target).await?;
    Ok(axum::Json(json!({})))
}

/// Ends the live sessions whose rights a change of `target`'s policies affects (they
/// reconnect and are bound again): the certificate's, or those of the group's things.
pub(super) async fn rebind(s: &AccountServer, a: &Account, target: &PolicyTarget) -> Result<(), ApiError> {
    let dropped = match target {
        PolicyTarget::Certificate(id) => s.drop_sessions(&a.id, id),
        PolicyTarget::ThingGroup(group) => {
            let things: std::collections::HashSet<ThingName> =
                s.store().read().await?.things_in_group(&a.id, group).await?.into_iter().collect();
            s.drop_where(&a.id, |l| l.thing_name.as_ref().is_some_and(|t| things.contains(t)))
        }
    };
    tracing::info!(?target, dropped, "policies changed: affected sessions ended");
    Ok(())
}
