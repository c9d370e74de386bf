//! CA certificates and device certificates.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use claimlink_provision::registration::{self, CaApplication};
use claimlink_registry::{Account, CaId, CaMode, CaStatus, CertificateId, CertificateStatus, TemplateName};
use claimlink_service::api::{ApiError, Audited, Body, Object, Page};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiResult, Caller, arn};
use crate::AccountServer;

fn ca_json(a: &Account, ca: &claimlink_registry::CaCertificate) -> Value {
    json!({
        "certificateArn": arn(a, &format!("cacert/{}", ca.id)),
        "certificateId": ca.id,
        "status": ca.status,
        "certificatePem": ca.pem,
        "autoRegistrationStatus": if ca.auto_registration { "ENABLE" } else { "DISABLE" },
        "certificateMode": ca.mode,
        "requireClaim": ca.require_claim,
        "creationDate": ca.created as f64 / 1000.0,
        "lastModifiedDate": ca.updated as f64 / 1000.0,
    })
}

/// `register-ca-certificate`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RegisterCa {
    ca_certificate: String,
    certificate_mode: Option<String>,
    set_as_active: Option<bool>,
    allow_auto_registration: Option<bool>,
    require_claim: Option<bool>,
    registration_config: Option<Object<RegistrationConfig>>,
    verification_certificate: Option<String>,
}

/// A CA's `registrationConfig`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RegistrationConfig {
    template_name: Option<TemplateName>,
}

pub(super) async fn apply_crl(
    State(s): State<AccountServer>,
    Caller { account: a, actor }: Caller,
    body: axum::body::Bytes,
) -> ApiResult {
    let applied = s.apply_crl(&a.id, &body, &actor).await.map_err(|e| match e {
        crate::CrlUploadError::Invalid(why) => ApiError::bad(why),
        crate::CrlUploadError::Internal => ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "InternalFailureException",
            "the CRL could not be stored; nothing changed; try again",
        ),
    })?;
    Ok(axum::Json(json!({
        "issuer": applied.issuer,
        "crlNumber": applied.number,
        "delta": applied.delta,
        "revokedCertificates": applied.revoked,
        "sessionsEnded": applied.dropped,
    })))
}

pub(super) async fn register_ca(
    State(s): State<AccountServer>,
    Caller { account: a, actor }: Caller,
    Body(b): Body<RegisterCa>,
) -> ApiResult {
    let mode = match &b.certificate_mode {
        Some(mode) => CaMode::parse(mode)?,
        None => CaMode::Default,
    };
    let template = b.registration_config.and_then(|rc| rc.0.template_name);
    let application = CaApplication {
        pem: &b.ca_certificate,
        mode,
        status: if b.set_as_active.unwrap_or(false) { CaStatus::Active } else { CaStatus::Inactive },
        auto_registration: b.allow_auto_registration.unwrap_or(false),
        template_name: template.as_ref(),
        require_claim: b.require_claim.unwrap_or(false),
        verification_pem: b.verification_certificate.as_deref(),
    };
    let mut tx = Audited::begin(s.store(), Some(&a.id), &actor).await?;
    let ca = registration::register_ca(&mut tx, &a, &application).await?;
    tx.commit("RegisterCACertificate", &ca.id).await?;
    let _ = s.reload(&a.id).await;
    Ok(axum::Json(json!({ "certificateArn": arn(&a, &format!("cacert/{}", ca.id)), "certificateId": ca.id })))
}

pub(super) async fn list_cas(
    State(s): State<AccountServer>,
    Caller { account: a, .. }: Caller,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult {
    let page = Page::parse(&q)?;
    let cas = s.store().read().await?.list_cas(&a.id).await?;
    Ok(axum::Json(page.slice("certificates", cas, |c| c.id.to_string(), |c| {
        json!({ "certificateArn": arn(&a, &format!("cacert/{}", c.id)), "certificateId": c.id, "status": c.status, "certificateMode": c.mode, "creationDate": c.created as f64 / 1000.0 })
    })))
}

pub(super) async fn describe_ca(
    State(s): State<AccountServer>,
    Caller { account: a, .. }: Caller,
    Path(id): Path<CaId>,
) -> ApiResult {
    let ca = s.store().read().await?.describe_ca(&a.id, &id).await?;
    Ok(axum::Json(json!({
        "certificateDescription": ca_json(&a, &ca),
        "registrationConfig": { "templateName": ca.template_name },
    })))
}

/// `update-ca-certificate` (AWS puts the first two in the query string; either works).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct UpdateCa {
    new_status: Option<String>,
    new_auto_registration_status: Option<String>,
    require_claim: Option<bool>,
    registration_config: Option<Object<RegistrationConfig>>,
}

pub(super) async fn update_ca(
    State(s): State<AccountServer>,
    Caller { account: a, actor }: Caller,
    Path(id): Path<CaId>,
    Query(q): Query<BTreeMap<String, String>>,
    Body(b): Body<UpdateCa>,
) -> ApiResult {
    let status = match q.get("newStatus").or(b.new_status.as_ref()) {
        Some(v) => Some(CaStatus::parse(v)?),
        None => None,
    };
    let auto = match q
        .get("newAutoRegistrationStatus")
        .or(b.new_auto_registration_status.as_ref())
        .map(String::as_str)
    {
        Some("ENABLE") => Some(true),
        Some("DISABLE") => Some(false),
        Some(other) => {
            return Err(ApiError::bad(format!(
                "newAutoRegistrationStatus must be ENABLE or DISABLE, not {other:?}"
            )));
        }
        None => None,
    };
    // A registrationConfig replaces the template (without templateName: removes it).
    let template = b.registration_config.map(|rc| rc.0.template_name);
    let mut tx = Audited::begin(s.store(), Some(&a.id), &actor).await?;
    tx.update_ca(&a.id, &id, status, auto, template.as_ref().map(|t| t.as_ref())).await?;
    if let Some(r) = b.require_claim {
        tx.set_ca_require_claim(&a.id, &id, r).await?;
    }
    tx.commit("UpdateCACertificate", &id).await?;
    let _ = s.reload(&a.id).await;
    if status.is_some_and(|st| st != CaStatus::Active) {
        let dropped = s.drop_where(&a.id, |l| l.ca_id.as_ref() == Some(&id));
        tracing::info!(ca = %id, dropped, "CA left ACTIVE: its devices' sessions ended");
    }
    Ok(axum::Json(json!({})))
}

fn cert_json(a: &Account, c: &claimlink_registry::CertificateRecord) -> Value {
    json!({
        "certificateArn": arn(a, &format!("cert/{}", c.id)),
        "certificateId": c.id,
        "caCertificateId": c.ca_id,
        "status": c.status,
        "certificatePem": c.pem,
        "ownedBy": a.id,
        "creationDate": c.created as f64 / 1000.0,
        "lastModifiedDate": c.updated as f64 / 1000.0,
    })
}

/// `register-certificate`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RegisterCertificate {
    certificate_pem: String,
    ca_certificate_pem: Option<String>,
    status: Option<String>,
}

pub(super) async fn register_certificate(
    State(s): State<AccountServer>,
    Caller { account: a, actor }: Caller,
    Body(b): Body<RegisterCertificate>,
) -> ApiResult {
    let pem = &b.certificate_pem;
    let status = match &b.status {
        Some(v) => CertificateStatus::parse(v)?,
        None => CertificateStatus::Inactive,
    };
    let mut tx = Audited::begin(s.store(), Some(&a.id), &actor).await?;
    let ca_id = match &b.ca_certificate_pem {
        Some(ca_pem) => {
            let ca = registration::certificate_from_pem(ca_pem)?;
            let id = CaId::of(&ca);
            tx.describe_ca(&a.id, &id).await?;
            Some(id)
        }
        None => None,
    };
    let c = registration::register_certificate(&mut tx, &a.id, pem, ca_id.as_ref(), status).await?;
    tx.commit("RegisterCertificate", &c.id).await?;
    let _ = s.reload(&a.id).await;
    Ok(axum::Json(json!({ "certificateArn": arn(&a, &format!("cert/{}", c.id)), "certificateId": c.id })))
}

pub(super) async fn list_certificates(
    State(s): State<AccountServer>,
    Caller { account: a, .. }: Caller,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult {
    let page = Page::parse(&q)?;
    let certs = s.store().read().await?.certificates_page(&a.id, page.after.as_deref(), page.fetch()).await?;
    Ok(axum::Json(page.respond("certificates", certs, |c| c.id.to_string(), |c| {
        json!({ "certificateArn": arn(&a, &format!("cert/{}", c.id)), "certificateId": c.id, "status": c.status, "creationDate": c.created as f64 / 1000.0 })
    })))
}

pub(super) async fn describe_certificate(
    State(s): State<AccountServer>,
    Caller { account: a, .. }: Caller,
    Path(id): Path<CertificateId>,
) -> ApiResult {
    let c = s.store().read().await?.describe_certificate(&a.id, &id).await?;
    Ok(axum::Json(json!({ "certificateDescription": cert_json(&a, &c) })))
}

/// `update-certificate` (AWS puts `newStatus` in the query string; either works).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct UpdateCertificate {
    new_status: Option<String>,
}

pub(super) async fn update_certificate(
    State(s): State<AccountServer>,
    Caller { account: a, actor }: Caller,
    Path(id): Path<CertificateId>,
    Query(q): Query<BTreeMap<String, String>>,
    Body(b): Body<UpdateCertificate>,
) -> ApiResult {
    let status =
        q.get("newStatus").or(b.new_status.as_ref()).ok_or_else(|| ApiError::bad("newStatus is required"))?;
    let status = CertificateStatus::parse(status)?;
    let mut tx = Audited::begin(s.store(), Some(&a.id), &actor).await?;
    registration::set_certificate_status(&mut tx, &a.id, &id, status).await?;
    tx.commit("UpdateCertificate", &id).await?;
    let _ = s.reload(&a.id).await;
    if status != CertificateStatus::Active {
        let dropped = s.drop_sessions(&a.id, &id);
        tracing::info!(certificate = %id, %status, dropped, "certificate left ACTIVE");
    }
    Ok(axum::Json(json!({})))
}
