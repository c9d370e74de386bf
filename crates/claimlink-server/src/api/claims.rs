//! Claim issuers (staging's keys) and release notices.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use claimlink_service::api::{ApiError, Audited, Body, Page};
use serde::Deserialize;
use serde_json::json;

use super::{ApiResult, Caller};
use crate::AccountServer;

pub(super) async fn list_claim_issuers(
    State(s): State<AccountServer>,
    Caller { account: a, .. }: Caller,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult {
    let page = Page::parse(&q)?;
    let issuers = s.store().read().await?.claim_issuers(&a.id).await?;
    Ok(axum::Json(page.slice(
        "claimIssuers",
        issuers,
        |(n, _)| n.clone(),
        |(name, pem)| json!({"name": name, "publicKeyPem": pem}),
    )))
}

/// `put-claim-issuer`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct PutClaimIssuer {
    public_key_pem: String,
}

pub(super) async fn put_claim_issuer(
    State(s): State<AccountServer>,
    Caller { account: a, actor }: Caller,
    Path(name): Path<String>,
    Body(b): Body<PutClaimIssuer>,
) -> ApiResult {
    let pem = &b.public_key_pem;
    if pem.contains("PRIVATE KEY") {
        return Err(ApiError::bad("send the claim issuer's public key only, never its private key"));
    }
    let key = claimlink_pki::pem::public_key_from_pem(pem.as_bytes())
        .map_err(|e| ApiError::bad(format!("publicKeyPem is not one SM2 or P-256 PUBLIC KEY block: {e}")))?;
    let canonical = claimlink_pki::pem::public_key_to_pem(&key);
    let mut tx = Audited::begin(s.store(), Some(&a.id), &actor).await?;
    tx.put_claim_issuer(&a.id, &name, &canonical).await?;
    tx.commit("PutClaimIssuer", &name).await?;
    let _ = s.reload(&a.id).await;
    Ok(axum::Json(json!({ "name": name, "publicKeyPem": canonical })))
}

/// `release-claim`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct ReleaseClaim {
    release_notice: String,
}

pub(super) async fn release_claim(
    State(s): State<AccountServer>,
    Caller { account: a, .. }: Caller,
    Body(b): Body<ReleaseClaim>,
) -> ApiResult {
    let notice = &b.release_notice;
    let entry = s.entry(&a.id).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailableException",
            "the account is not loaded",
        )
    })?;
    let ticket = claimlink_claim::ticket::verify_release(notice, &entry.claim_issuers)
        .map_err(|e| ApiError::bad(format!("releaseNotice: {e}")))?;
    if !ticket.aud.eq_ignore_ascii_case(&claimlink_claim::ticket::audience(&a.endpoint)) {
        return Err(ApiError::bad("releaseNotice is for another endpoint"));
    }
    s.claim_released(&ticket).await.map_err(|e| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalFailureException", e.to_string())
    })?;
    Ok(axum::Json(
        json!({ "thingName": ticket.thing, "certificateId": ticket.cert, "claimId": ticket.claim, "released": true }),
    ))
}
