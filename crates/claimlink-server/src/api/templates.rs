//! Provisioning templates and provisioning failures.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use claimlink_registry::{Account, CertificateId, TemplateKind, TemplateName};
use claimlink_service::api::{ApiError, Audited, Body, Page};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiResult, Caller, arn};
use crate::AccountServer;

fn template_json(a: &Account, t: &claimlink_registry::Template) -> Value {
    json!({
        "templateArn": arn(a, &format!("provisioningtemplate/{}", t.name)),
        "templateName": t.name,
        "description": t.description,
        "creationDate": t.created as f64 / 1000.0,
        "lastModifiedDate": t.updated as f64 / 1000.0,
        "defaultVersionId": 1,
        "templateBody": t.body,
        "enabled": t.enabled,
        "type": t.kind,
    })
}

/// `create-provisioning-template`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct CreateTemplate {
    template_name: TemplateName,
    template_body: String,
    enabled: Option<bool>,
    description: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

pub(super) async fn create_template(
    State(s): State<AccountServer>,
    Caller { account: a, actor }: Caller,
    Body(b): Body<CreateTemplate>,
) -> ApiResult {
    let (name, body_text) = (&b.template_name, &b.template_body);
    claimlink_provision::Template::parse(body_text).map_err(|e| ApiError::coded(e.code(), e.to_string()))?;
    let kind = match &b.kind {
        Some(k) => TemplateKind::parse(k)?,
        None => TemplateKind::FleetProvisioning,
    };
    let mut tx = Audited::begin(s.store(), Some(&a.id), &actor).await?;
    let t = tx
        .create_template(&a.id, name, kind, body_text, b.enabled.unwrap_or(false), b.description.as_deref())
        .await?;
    tx.commit("CreateProvisioningTemplate", name).await?;
    Ok(axum::Json(
        json!({ "templateArn": arn(&a, &format!("provisioningtemplate/{}", t.name)), "templateName": t.name, "defaultVersionId": 1 }),
    ))
}

pub(super) async fn list_templates(
    State(s): State<AccountServer>,
    Caller { account: a, .. }: Caller,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult {
    let page = Page::parse(&q)?;
    let ts = s.store().read().await?.list_templates(&a.id).await?;
    Ok(axum::Json(page.slice(
        "templates",
        ts,
        |t| t.name.to_string(),
        |t| {
            let mut v = template_json(&a, t);
            v.as_object_mut().map(|o| o.remove("templateBody"));
            v
        },
    )))
}

pub(super) async fn describe_template(
    State(s): State<AccountServer>,
    Caller { account: a, .. }: Caller,
    Path(name): Path<TemplateName>,
) -> ApiResult {
    let t = s.store().read().await?.template(&a.id, &name).await?;
    Ok(axum::Json(template_json(&a, &t)))
}

/// `update-provisioning-template`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct UpdateTemplate {
    template_body: Option<String>,
    enabled: Option<bool>,
    description: Option<String>,
}

pub(super) async fn update_template(
    State(s): State<AccountServer>,
    Caller { account: a, actor }: Caller,
    Path(name): Path<TemplateName>,
    Body(b): Body<UpdateTemplate>,
) -> ApiResult {
    let new_body = b.template_body.as_deref();
    if let Some(text) = new_body {
        claimlink_provision::Template::parse(text).map_err(|e| ApiError::coded(e.code(), e.to_string()))?;
    }
    let mut tx = Audited::begin(s.store(), Some(&a.id), &actor).await?;
    tx.update_template(&a.id, &name, new_body, b.enabled, b.description.as_deref()).await?;
    tx.commit("UpdateProvisioningTemplate", &name).await?;
    Ok(axum::Json(json!({})))
}

pub(super) async fn delete_template(
    State(s): State<AccountServer>,
    Caller { account: a, actor }: Caller,
    Path(name): Path<TemplateName>,
) -> ApiResult {
    let mut tx = Audited::begin(s.store(), Some(&a.id), &actor).await?;
    tx.delete_template(&a.id, &name).await?;
    tx.commit("DeleteProvisioningTemplate", &name).await?;
    Ok(axum::Json(json!({})))
}

pub(super) async fn provisioning_failures(
    State(s): State<AccountServer>,
    Caller { account: a, .. }: Caller,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult {
    let page = Page::parse(&q)?;
    let certificate_id = q.get("certificateId").map(|id| CertificateId::new(id)).transpose()?;
    let before = match &page.after {
        Some(k) => Some(k.parse::<i64>().map_err(|_| ApiError::bad("nextToken is not one this API gave"))?),
        None => None,
    };
    let failures = s
        .store()
        .read()
        .await?
        .provisioning_failures_page(&a.id, certificate_id.as_ref(), before, page.fetch())
        .await?;
    Ok(axum::Json(page.respond("failures", failures, |(id, _)| id.to_string(), |(_, f)| json!(f))))
}
