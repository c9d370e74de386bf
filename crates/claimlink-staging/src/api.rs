//! Staging's HTTPS API. Two kinds of caller on one listener:
//!
//! - staging administrators (the module maker), with `Authorization: Bearer stg_...`: register
//!   OEMs (each gets a UUID), upload an OEM's claim-thing certificate (a PEM that holds a private
//!   key is refused), add endpoints, suspend, look up devices and claims;
//! - OEMs' portals, authenticated by the claim-thing certificate at the TLS handshake: claim,
//!   list their claims and devices, release.
//!
//! Errors are `{"code", "message"}` with a 4xx status; a refused request changes nothing.

use crate::store::Records as _;
use std::sync::Arc;

use crate::claims::{ClaimOutcome, ClaimRequest, ReleaseError, Via};
use crate::store::OemStatus;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, on};
use axum::{Extension, Router};
use claimlink_pki::Certificate;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::server::{StagingServer, claim_result};
use claimlink_service::api::{
    ApiError, Audited, Body, Operation, Page, Route, bearer, list, object, openapi_document,
};

type ApiResult = Result<Response, ApiError>;

fn ok(v: Value) -> ApiResult {
    Ok(axum::Json(v).into_response())
}

/// The OEM the TLS client certificate belongs to (claim API callers).
#[derive(Debug, Clone)]
struct ClaimPeer(Option<String>);

/// Serves the staging API over TLS on `listener` until shutdown.
pub async fn serve(server: StagingServer, listener: TcpListener) -> std::io::Result<()> {
    let config: std::sync::Arc<dyn claimlink_broker::TlsSelector> =
        std::sync::Arc::new(server.tls(false).map_err(std::io::Error::other)?);
    use crate::server::StagingAdmitted;
    let app = router(server.clone());
    let shutdown = server.shared.shutdown.clone();
    let http = server.shared.http;
    claimlink_service::serve_http("staging-api", listener, Some(config), http, shutdown, move |conn| {
        let peer = match conn.admission.as_deref().and_then(|a| a.downcast_ref::<StagingAdmitted>()) {
            Some(StagingAdmitted::ClaimThing { oem, .. }) => Some(oem.clone()),
            _ => None,
        };
        app.clone().layer(Extension(ClaimPeer(peer)))
    })
    .await
}

/// The routes: method, path, operation, summary. `/staging/...` takes a staging administrator's
/// bearer token; `/claims` and `/devices` take the OEM's claim-thing certificate (TLS client
/// authentication). The OpenAPI document is made from this table.
pub const ROUTES: &[Route<Arc<StagingServer>>] = &[
    Route {
        method: "post",
        path: "/staging/oems",
        operation: "create-oem",
        summary: "Register an OEM (its UUID is the claim-thing's client id)",
        handler: |m| on(m, create_oem),
    },
    Route {
        method: "get",
        path: "/staging/oems",
        operation: "list-oems",
        summary: "List OEMs",
        handler: |m| on(m, list_oems),
    },
    Route {
        method: "get",
        path: "/staging/oems/{oemId}",
        operation: "describe-oem",
        summary: "Describe an OEM",
        handler: |m| on(m, describe_oem),
    },
    Route {
        method: "put",
        path: "/staging/oems/{oemId}/claim-certificate",
        operation: "set-claim-certificate",
        summary: "Pin the OEM's claim-thing certificate",
        handler: |m| on(m, upload_claim_certificate),
    },
    Route {
        method: "post",
        path: "/staging/oems/{oemId}/endpoints",
        operation: "add-oem-endpoint",
        summary: "Register an endpoint the OEM may send devices to",
        handler: |m| on(m, add_endpoint),
    },
    Route {
        method: "put",
        path: "/staging/oems/{oemId}/status",
        operation: "set-oem-status",
        summary: "ACTIVE or SUSPENDED",
        handler: |m| on(m, set_status),
    },
    Route {
        method: "put",
        path: "/staging/crls",
        operation: "apply-crl",
        summary: "Apply a manufacturer CA's CRL (DER, or PEM with the issuing CA's chain): the birth \
                  certificates it revokes are refused at the handshake and their sessions end",
        handler: |m| {
            on(m, apply_crl).layer(axum::extract::DefaultBodyLimit::max(crate::server::MAX_CRL_UPLOAD))
        },
    },
    Route {
        method: "get",
        path: "/staging/crls",
        operation: "list-crls",
        summary: "The CRL applied for each manufacturer CA",
        handler: |m| on(m, list_crls),
    },
    Route {
        method: "get",
        path: "/staging/devices/{thingName}",
        operation: "describe-staging-device",
        summary: "A device as staging knows it",
        handler: |m| on(m, describe_device),
    },
    Route {
        method: "get",
        path: "/staging/claims",
        operation: "list-staging-claims",
        summary: "Accepted claims, newest first",
        handler: |m| on(m, admin_claims),
    },
    Route {
        method: "get",
        path: "/staging/claim-refusals",
        operation: "list-claim-refusals",
        summary: "Refused claims in aggregate",
        handler: |m| on(m, admin_refusals),
    },
    Route {
        method: "post",
        path: "/claims",
        operation: "claim",
        summary: "Claim a device (claim-thing certificate)",
        handler: |m| on(m, claim),
    },
    Route {
        method: "get",
        path: "/claims",
        operation: "list-claims",
        summary: "This OEM's accepted claims, newest first",
        handler: |m| on(m, my_claims),
    },
    Route {
        method: "get",
        path: "/claims/refusals",
        operation: "list-my-claim-refusals",
        summary: "This OEM's refused claims in aggregate",
        handler: |m| on(m, my_refusals),
    },
    Route {
        method: "post",
        path: "/claims/{thingName}/release",
        operation: "release",
        summary: "End this OEM's ownership of a device",
        handler: |m| on(m, release),
    },
    Route {
        method: "get",
        path: "/devices",
        operation: "list-owned-devices",
        summary: "The devices this OEM owns",
        handler: |m| on(m, my_devices),
    },
];

fn staging_operation(op: &str) -> Operation {
    let s = || json!({ "type": "string" });
    let body = |required: &[&str], properties: Value| Operation {
        query: Vec::new(),
        body: Some(object(required, properties)),
        response: json!({ "type": "object" }),
    };
    let thing = || json!({ "type": "string", "pattern": "^[a-zA-Z0-9:_-]{1,128}$" });
    match op {
        "create-oem" => {
            body(&["name"], json!({ "name": s(), "endpoints": { "type": "array", "items": s() } }))
        }
        "set-claim-certificate" => body(&["certificatePem"], json!({ "certificatePem": s() })),
        "add-oem-endpoint" => body(&["endpoint"], json!({ "endpoint": s() })),
        "set-oem-status" => body(&["status"], json!({ "status": { "enum": ["ACTIVE", "SUSPENDED"] } })),
        "claim" => {
            body(&["thingName", "endpoint"], json!({ "thingName": s(), "endpoint": s(), "claimCode": s() }))
        }
        "list-oems" => list("oems", Vec::new()),
        "list-staging-claims" => list("claims", vec![("thingName", thing()), ("oemId", s())]),
        "list-claims" => list("claims", vec![("thingName", thing())]),
        "list-claim-refusals" => list("refusals", vec![("thingName", thing()), ("claimer", s())]),
        "list-my-claim-refusals" => list("refusals", vec![("thingName", thing())]),
        "list-owned-devices" => list("devices", Vec::new()),
        "apply-crl" => Operation {
            query: Vec::new(),
            body: Some(claimlink_service::api::crl_body()),
            response: json!({ "type": "object" }),
        },
        _ => Operation { query: Vec::new(), body: None, response: json!({ "type": "object" }) },
    }
}

async fn openapi() -> axum::Json<Value> {
    let mut doc = openapi_document("claimlink staging API", ROUTES, staging_operation, false);
    // Administrators' routes take the bearer token; the claim API the client certificate.
    if let Some(paths) = doc["paths"].as_object_mut() {
        for (path, item) in paths.iter_mut() {
            if path.starts_with("/staging/") {
                for (_, op) in item.as_object_mut().into_iter().flatten() {
                    op["security"] = json!([{ "bearer": [] }]);
                }
            }
        }
    }
    axum::Json(doc)
}

/// The staging API's routes.
pub fn router(server: StagingServer) -> Router {
    let max_body = server.shared.http.max_body;
    claimlink_service::api::router(ROUTES, get(openapi), max_body).with_state(Arc::new(server))
}

type St = State<Arc<StagingServer>>;

/// A staging administrator: the name of the bearer token the request carries. Administrators'
/// operations take one; without a valid token the request is refused before its handler runs.
struct Admin(String);

impl FromRequestParts<Arc<StagingServer>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, server: &Arc<StagingServer>) -> Result<Self, ApiError> {
        let refused = |why: &str| ApiError::new(StatusCode::UNAUTHORIZED, "UnauthorizedException", why);
        let token = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .ok_or_else(|| refused("a staging administrator token is required"))?;
        let name = server.store().read().await?.staging_admin_for_token(token).await?;
        name.map(Admin).ok_or_else(|| refused("the token is not a staging administrator's"))
    }
}

/// An OEM calling the claim API: the OEM whose pinned claim-thing certificate the connection's
/// TLS client authentication presented (the listener's admission, per connection).
struct ClaimThing(String);

impl<S: Send + Sync> FromRequestParts<S> for ClaimThing {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let peer = parts.extensions.get::<ClaimPeer>().and_then(|p| p.0.clone());
        peer.map(ClaimThing).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "UnauthorizedException",
                "the claim API needs the OEM's claim-thing certificate (TLS client authentication)",
            )
        })
    }
}

/// `create-oem`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CreateOem {
    name: String,
    #[serde(default)]
    endpoints: Vec<String>,
}

/// `set-claim-certificate`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ClaimCertificate {
    certificate_pem: String,
}

/// `add-oem-endpoint`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AddEndpoint {
    endpoint: String,
}

/// `set-oem-status`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SetStatus {
    status: String,
}

/// `claim`: the claim API's body (the MQTT claim message's fields, in the API's spelling).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ClaimBody {
    thing_name: String,
    endpoint: String,
    claim_code: Option<String>,
}

impl std::fmt::Debug for ClaimBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimBody").field("thing_name", &self.thing_name).finish_non_exhaustive()
    }
}

fn oem_json(o: &crate::store::Oem) -> Value {
    json!({"oemId": o.id, "name": o.name, "status": o.status.as_str(), "endpoints": o.endpoints,
        "claimCertificateId": o.claim_certificate_id, "created": o.created})
}

async fn create_oem(State(s): St, Admin(who): Admin, Body(b): Body<CreateOem>) -> ApiResult {
    let mut tx = Audited::begin(s.store(), None, &format!("staging-admin:{who}")).await?;
    let oem = tx.create_oem(&b.name, &b.endpoints).await?;
    tx.commit("CreateOem", &oem.id).await?;
    ok(oem_json(&oem))
}

async fn list_oems(State(s): St, _: Admin, Query(q): Query<PageQuery>) -> ApiResult {
    let page = Page::from_params(q.max_results.as_ref(), q.next_token.as_ref())?;
    let oems = s.store().read().await?.oems().await?;
    ok(page.slice("oems", oems, |o| o.id.clone(), oem_json))
}

async fn describe_oem(State(s): St, _: Admin, Path(id): Path<String>) -> ApiResult {
    ok(oem_json(&s.store().read().await?.oem(&id).await?))
}

async fn upload_claim_certificate(
    State(s): St,
    Admin(who): Admin,
    Path(id): Path<String>,
    Body(b): Body<ClaimCertificate>,
) -> ApiResult {
    let pem = &b.certificate_pem;
    if pem.contains("PRIVATE KEY") {
        return Err(ApiError::bad(
            "the upload holds a private key: send only the claim-thing's certificate; the key never leaves the OEM",
        ));
    }
    let chain = Certificate::chain_from_pem(pem.as_bytes())
        .map_err(|e| ApiError::bad(format!("certificatePem is not a PEM certificate: {e}")))?;
    let [cert] = chain.as_slice() else {
        return Err(ApiError::bad("certificatePem must hold exactly one certificate"));
    };
    if cert.is_ca() {
        return Err(ApiError::bad("a CA certificate cannot be a claim-thing certificate"));
    }
    let cert_id = cert.id().to_string();
    let mut tx = Audited::begin(s.store(), None, &format!("staging-admin:{who}")).await?;
    tx.set_claim_certificate(&id, &cert_id, &cert.to_pem()).await?;
    tx.commit("SetClaimCertificate", &id).await?;
    s.reload().await.map_err(|e| {
        tracing::error!(error = %e, "staging could not reload the claim-thing certificates");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalFailureException",
            "the request failed; try again",
        )
    })?;
    ok(json!({"oemId": id, "claimCertificateId": cert_id}))
}

async fn apply_crl(State(s): St, Admin(who): Admin, body: bytes::Bytes) -> ApiResult {
    let a = s.apply_crl(&body, &who).await.map_err(|e| match e {
        crate::server::CrlUploadError::Invalid(why) => ApiError::bad(why),
        crate::server::CrlUploadError::Internal => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalFailureException",
            "the CRL could not be stored; nothing changed; try again",
        ),
    })?;
    ok(json!({
        "issuer": a.issuer,
        "crlNumber": a.number,
        "delta": a.delta,
        "revokedCertificates": a.revoked,
        "sessionsEnded": a.dropped,
    }))
}

async fn list_crls(State(s): St, _: Admin) -> ApiResult {
    let crls: Vec<Value> = s
        .crl_status()
        .into_iter()
        .map(|(key, number, next, revoked)| {
            json!({
                "issuerKeyId": key,
                "crlNumber": number,
                "nextUpdate": next.and_then(|t| der::DateTime::from_system_time(t).ok()).map(|t| t.to_string()),
                "revokedCertificates": revoked,
            })
        })
        .collect();
    ok(json!({"crls": crls}))
}

async fn add_endpoint(
    State(s): St,
    Admin(who): Admin,
    Path(id): Path<String>,
    Body(b): Body<AddEndpoint>,
) -> ApiResult {
    let endpoint = &b.endpoint;
    let mut tx = Audited::begin(s.store(), None, &format!("staging-admin:{who}")).await?;
    tx.oem(&id).await?;
    tx.add_oem_endpoint(&id, endpoint).await?;
    let oem = tx.oem(&id).await?;
    tx.commit("AddEndpoint", &id).await?;
    ok(oem_json(&oem))
}

async fn set_status(
    State(s): St,
    Admin(who): Admin,
    Path(id): Path<String>,
    Body(b): Body<SetStatus>,
) -> ApiResult {
    let status = OemStatus::parse(&b.status)?;
    let mut tx = Audited::begin(s.store(), None, &format!("staging-admin:{who}")).await?;
    tx.set_oem_status(&id, status).await?;
    let oem = tx.oem(&id).await?;
    tx.commit("SetOemStatus", &id).await?;
    ok(oem_json(&oem))
}

fn device_json(d: &crate::store::StagingDevice) -> Value {
    json!({"thingName": d.thing_name, "certificateId": d.certificate_id, "firstSeen": d.first_seen,
        "lastSeen": d.last_seen, "owner": d.owner_oem, "endpoint": d.endpoint, "claimId": d.claim_id,
        "delivered": d.delivered_at.is_some(), "hasClaimCode": d.claim_code_verifier.is_some(),
        "failedClaimCodes": d.failed_codes, "lockedUntil": (d.locked_until > 0).then_some(d.locked_until)})
}

async fn describe_device(State(s): St, _: Admin, Path(thing): Path<String>) -> ApiResult {
    let d = s.store().read().await?.staging_device(&thing).await?.ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "ResourceNotFoundException", "staging does not know this device")
    })?;
    ok(device_json(&d))
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClaimQuery {
    thing_name: Option<String>,
    oem_id: Option<String>,
    max_results: Option<String>,
    next_token: Option<String>,
}

impl ClaimQuery {
    fn page(&self) -> Result<Page, ApiError> {
        Page::from_params(self.max_results.as_ref(), self.next_token.as_ref())
    }
}

/// A `thingName` filter: a ThingName or a 400.
fn thing_filter(name: Option<&String>) -> Result<Option<&str>, ApiError> {
    match name {
        Some(n) if claimlink_registry::ThingName::new(n).is_err() => {
            Err(ApiError::bad("thingName is 1-128 characters of a-z A-Z 0-9 : _ -"))
        }
        other => Ok(other.map(String::as_str)),
    }
}

/// A page of claims, newest first (the token is the last claim's id).
async fn claims_page(s: &StagingServer, oem: Option<&str>, q: &ClaimQuery) -> ApiResult {
    let page = q.page()?;
    let before = match &page.after {
        Some(k) => Some(k.parse::<i64>().map_err(|_| ApiError::bad("nextToken is not one this API gave"))?),
        None => None,
    };
    let thing = thing_filter(q.thing_name.as_ref())?;
    let claims = s
        .store()
        .read()
        .await?
        .claims_before(oem.or(q.oem_id.as_deref()), thing, before, page.fetch())
        .await?;
    ok(page.respond("claims", claims, |c| c.id.to_string(), |c| json!(c)))
}

async fn admin_claims(State(s): St, _: Admin, Query(q): Query<ClaimQuery>) -> ApiResult {
    claims_page(&s, None, &q).await
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RefusalQuery {
    thing_name: Option<String>,
    claimer: Option<String>,
    max_results: Option<String>,
    next_token: Option<String>,
}

/// A page of the newest 1,000 aggregate rows (key: window, claimer, device, reason).
fn refusals_page(q: &RefusalQuery, rows: Vec<crate::store::ClaimRefusals>) -> ApiResult {
    let page = Page::from_params(q.max_results.as_ref(), q.next_token.as_ref())?;
    let key = |r: &crate::store::ClaimRefusals| {
        format!("{:020}|{}|{}|{}", i64::MAX - r.window_start, r.claimer, r.thing_name, r.reason)
    };
    ok(page.slice("refusals", rows, key, |r| json!(r)))
}

/// Refused claims in aggregate (per claimer, device, reason and hour).
async fn admin_refusals(State(s): St, _: Admin, Query(q): Query<RefusalQuery>) -> ApiResult {
    let thing = thing_filter(q.thing_name.as_ref())?;
    let refusals = s.store().read().await?.claim_refusals(q.claimer.as_deref(), thing, 1000).await?;
    refusals_page(&q, refusals)
}

/// The OEM's own refused claims (its claim-thing's), in aggregate.
async fn my_refusals(State(s): St, ClaimThing(oem): ClaimThing, Query(q): Query<RefusalQuery>) -> ApiResult {
    let claimer = format!("oem:{oem}");
    let thing = thing_filter(q.thing_name.as_ref())?;
    let refusals = s.store().read().await?.claim_refusals(Some(&claimer), thing, 1000).await?;
    refusals_page(&q, refusals)
}

async fn claim(State(s): St, ClaimThing(oem): ClaimThing, Body(b): Body<ClaimBody>) -> ApiResult {
    let (thing, endpoint) = (b.thing_name.as_str(), b.endpoint.as_str());
    let code = b.claim_code.as_deref();
    let request = ClaimRequest {
        oem_id: &oem,
        claimer: crate::claims::Claimer::ClaimThing,
        thing_name: thing,
        endpoint,
        claim_code: code,
        via: Via::Api,
    };
    let outcome = s.claim(&request).await?;
    let (_, body) = claim_result(thing, &outcome);
    match outcome {
        ClaimOutcome::Accepted { .. } => ok(body),
        ClaimOutcome::Rejected { reason, .. } => {
            let status = StatusCode::from_u16(reason.http_status()).unwrap_or(StatusCode::FORBIDDEN);
            let mut body = body;
            body["code"] = reason.code().into();
            Ok((status, axum::Json(body)).into_response())
        }
    }
}

async fn my_claims(State(s): St, ClaimThing(oem): ClaimThing, Query(q): Query<ClaimQuery>) -> ApiResult {
    let q = ClaimQuery { oem_id: None, ..q };
    claims_page(&s, Some(&oem), &q).await
}

async fn my_devices(State(s): St, ClaimThing(oem): ClaimThing, Query(q): Query<PageQuery>) -> ApiResult {
    let page = Page::from_params(q.max_results.as_ref(), q.next_token.as_ref())?;
    let devices =
        s.store().read().await?.owned_devices_page(&oem, page.after.as_deref(), page.fetch()).await?;
    ok(page.respond("devices", devices, |d| d.thing_name.clone(), device_json))
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct PageQuery {
    max_results: Option<String>,
    next_token: Option<String>,
}

async fn release(State(s): St, ClaimThing(oem): ClaimThing, Path(thing): Path<String>) -> ApiResult {
    match s.release(&oem, &thing).await {
        Ok((released, notice)) => {
            ok(json!({"thingName": thing, "released": true, "previousEndpoint": released.endpoint,
            // For the account the device was claimed for: POST it to its /claim-releases.
            "releaseNotice": notice}))
        }
        Err(ReleaseError::NotOwner) => {
            Err(ApiError::new(StatusCode::FORBIDDEN, "NotOwner", "this OEM does not own the device"))
        }
        Err(ReleaseError::Registry(e)) => Err(e.into()),
    }
}
