//! Staging's HTTPS API. Two kinds of caller on one listener:
//!
//! - staging administrators (the module maker), with `Authorization: Bearer stg_...`: register
//!   OEMs (each gets a UUID), upload an OEM's claim-thing certificate (a PEM that holds a private
//!   key is refused), add endpoints, suspend, look up devices and claims;
//! - OEMs' portals, authenticated by the claim-thing certificate at the TLS handshake: claim,
//!   list their claims and devices, release.
//!
//! Errors are `{"code", "message"}` with a 4xx status; a refused request changes nothing.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Router};
use claimlink_pki::Certificate;
use claimlink_provision::claims::{ClaimOutcome, ClaimRequest, ReleaseError, Via};
use claimlink_registry::staging::OemStatus;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::api::{ApiError, Page};
use crate::staging::{StagingServer, claim_result};

const MAX_BODY: usize = 64 * 1024;

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
    use crate::staging::StagingAdmitted;
    let app = router(server.clone());
    let shutdown = server.shared.shutdown.clone();
    crate::serve_http("staging-api", listener, Some(config), shutdown, move |conn| {
        let peer = match conn.admission.as_deref().and_then(|a| a.downcast_ref::<StagingAdmitted>()) {
            Some(StagingAdmitted::ClaimThing { oem }) => Some(oem.clone()),
            _ => None,
        };
        app.clone().layer(Extension(ClaimPeer(peer)))
    })
    .await
}

/// The routes: method, path, operation, summary. `/staging/...` takes a staging administrator's
/// bearer token; `/claims` and `/devices` take the OEM's claim-thing certificate (TLS client
/// authentication). The OpenAPI document is made from this table.
pub const ROUTES: &[(&str, &str, &str, &str)] = &[
    ("post", "/staging/oems", "create-oem", "Register an OEM (its UUID is the claim-thing's client id)"),
    ("get", "/staging/oems", "list-oems", "List OEMs"),
    ("get", "/staging/oems/{oemId}", "describe-oem", "Describe an OEM"),
    (
        "put",
        "/staging/oems/{oemId}/claim-certificate",
        "set-claim-certificate",
        "Pin the OEM's claim-thing certificate",
    ),
    (
        "post",
        "/staging/oems/{oemId}/endpoints",
        "add-oem-endpoint",
        "Register an endpoint the OEM may send devices to",
    ),
    ("put", "/staging/oems/{oemId}/status", "set-oem-status", "ACTIVE or SUSPENDED"),
    ("get", "/staging/devices/{thingName}", "describe-staging-device", "A device as staging knows it"),
    ("get", "/staging/claims", "list-staging-claims", "Accepted claims, newest first"),
    ("get", "/staging/claim-refusals", "list-claim-refusals", "Refused claims in aggregate"),
    ("post", "/claims", "claim", "Claim a device (claim-thing certificate)"),
    ("get", "/claims", "list-claims", "This OEM's accepted claims, newest first"),
    ("get", "/claims/refusals", "list-my-claim-refusals", "This OEM's refused claims in aggregate"),
    ("post", "/claims/{thingName}/release", "release", "End this OEM's ownership of a device"),
    ("get", "/devices", "list-owned-devices", "The devices this OEM owns"),
];

fn staging_operation(op: &str) -> crate::api::Operation {
    use crate::api::{Operation, list};
    let s = || json!({ "type": "string" });
    let body = |required: &[&str], properties: Value| Operation {
        query: Vec::new(),
        body: Some(crate::api::object(required, properties)),
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
        _ => Operation { query: Vec::new(), body: None, response: json!({ "type": "object" }) },
    }
}

async fn openapi() -> axum::Json<Value> {
    let mut doc = crate::api::openapi_document("claimlink staging API", ROUTES, staging_operation, false);
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
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/staging/oems", post(create_oem).get(list_oems))
        .route("/staging/oems/{id}", get(describe_oem))
        .route("/staging/oems/{id}/claim-certificate", put(upload_claim_certificate))
        .route("/staging/oems/{id}/endpoints", post(add_endpoint))
        .route("/staging/oems/{id}/status", put(set_status))
        .route("/staging/devices/{thing}", get(describe_device))
        .route("/staging/claims", get(admin_claims))
        .route("/staging/claim-refusals", get(admin_refusals))
        .route("/claims", post(claim).get(my_claims))
        .route("/claims/refusals", get(my_refusals))
        .route("/claims/{thing}/release", post(release))
        .route("/devices", get(my_devices))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "ResourceNotFoundException", "no such API path")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::map_response(crate::api::json_errors))
        .with_state(Arc::new(server))
}

type St = State<Arc<StagingServer>>;

async fn admin(server: &StagingServer, headers: &HeaderMap) -> Result<String, ApiError> {
    let token =
        headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(crate::api::bearer).ok_or_else(
            || {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "Unauthorized",
                    "a staging administrator token is required",
                )
            },
        )?;
    server.store().read().await?.staging_admin_for_token(token).await?.ok_or_else(|| {
        ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", "the token is not a staging administrator's")
    })
}

fn oem_peer(peer: &ClaimPeer) -> Result<&str, ApiError> {
    peer.0.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "the claim API needs the OEM's claim-thing certificate (TLS client authentication)",
        )
    })
}

fn body(bytes: &Bytes) -> Result<Value, ApiError> {
    let v: Value =
        serde_json::from_slice(bytes).map_err(|e| ApiError::bad(format!("the body is not JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad("the body must be a JSON object"));
    }
    Ok(v)
}

fn field<'a>(v: &'a Value, name: &str) -> Result<&'a str, ApiError> {
    v.get(name).and_then(Value::as_str).ok_or_else(|| ApiError::bad(format!("{name} (a string) is required")))
}

fn oem_json(o: &claimlink_registry::staging::Oem) -> Value {
    json!({"oemId": o.id, "name": o.name, "status": o.status.as_str(), "endpoints": o.endpoints,
        "claimCertificateId": o.claim_certificate_id, "created": o.created})
}

/// Writes the audit row of a change in the change's own transaction.
async fn audit(
    tx: &mut claimlink_registry::Tx,
    actor: &str,
    action: &str,
    target: &str,
) -> Result<(), ApiError> {
    tx.audit(
        None,
        &claimlink_registry::AuditRecord {
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            result: "ok".into(),
            detail: None,
            at: claimlink_registry::now(),
        },
    )
    .await?;
    Ok(())
}

async fn create_oem(State(s): St, headers: HeaderMap, bytes: Bytes) -> ApiResult {
    let who = admin(&s, &headers).await?;
    let v = body(&bytes)?;
    let name = field(&v, "name")?;
    let endpoints: Vec<String> = match v.get("endpoints") {
        None => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|e| e.as_str().map(str::to_owned).ok_or_else(|| ApiError::bad("endpoints must be strings")))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(ApiError::bad("endpoints must be an array of host[:port]")),
    };
    let mut tx = s.store().begin().await?;
    let oem = tx.create_oem(name, &endpoints).await?;
    audit(&mut tx, &format!("staging-admin:{who}"), "CreateOem", &oem.id).await?;
    tx.commit().await?;
    ok(oem_json(&oem))
}

async fn list_oems(State(s): St, headers: HeaderMap, Query(q): Query<PageQuery>) -> ApiResult {
    admin(&s, &headers).await?;
    let page = Page::from_params(q.max_results.as_ref(), q.next_token.as_ref())?;
    let oems = s.store().read().await?.oems().await?;
    ok(page.slice("oems", oems, |o| o.id.clone(), oem_json))
}

async fn describe_oem(State(s): St, headers: HeaderMap, Path(id): Path<String>) -> ApiResult {
    admin(&s, &headers).await?;
    ok(oem_json(&s.store().read().await?.oem(&id).await?))
}

async fn upload_claim_certificate(
    State(s): St,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: Bytes,
) -> ApiResult {
    let who = admin(&s, &headers).await?;
    let v = body(&bytes)?;
    let pem = field(&v, "certificatePem")?;
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
    let mut tx = s.store().begin().await?;
    tx.set_claim_certificate(&id, &cert_id, &cert.to_pem()).await?;
    audit(&mut tx, &format!("staging-admin:{who}"), "SetClaimCertificate", &id).await?;
    tx.commit().await?;
    s.reload()
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalFailure", e.to_string()))?;
    ok(json!({"oemId": id, "claimCertificateId": cert_id}))
}

async fn add_endpoint(State(s): St, headers: HeaderMap, Path(id): Path<String>, bytes: Bytes) -> ApiResult {
    let who = admin(&s, &headers).await?;
    let v = body(&bytes)?;
    let endpoint = field(&v, "endpoint")?;
    let mut tx = s.store().begin().await?;
    tx.oem(&id).await?;
    tx.add_oem_endpoint(&id, endpoint).await?;
    let oem = tx.oem(&id).await?;
    audit(&mut tx, &format!("staging-admin:{who}"), "AddEndpoint", &id).await?;
    tx.commit().await?;
    ok(oem_json(&oem))
}

async fn set_status(State(s): St, headers: HeaderMap, Path(id): Path<String>, bytes: Bytes) -> ApiResult {
    let who = admin(&s, &headers).await?;
    let v = body(&bytes)?;
    let status = OemStatus::parse(field(&v, "status")?)?;
    let mut tx = s.store().begin().await?;
    tx.set_oem_status(&id, status).await?;
    let oem = tx.oem(&id).await?;
    audit(&mut tx, &format!("staging-admin:{who}"), "SetOemStatus", &id).await?;
    tx.commit().await?;
    ok(oem_json(&oem))
}

fn device_json(d: &claimlink_registry::staging::StagingDevice) -> Value {
    json!({"thingName": d.thing_name, "certificateId": d.certificate_id, "firstSeen": d.first_seen,
        "lastSeen": d.last_seen, "owner": d.owner_oem, "endpoint": d.endpoint, "claimId": d.claim_id,
        "delivered": d.delivered_at.is_some(), "hasClaimCode": d.claim_code_verifier.is_some(),
        "failedClaimCodes": d.failed_codes, "lockedUntil": (d.locked_until > 0).then_some(d.locked_until)})
}

async fn describe_device(State(s): St, headers: HeaderMap, Path(thing): Path<String>) -> ApiResult {
    admin(&s, &headers).await?;
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
        Some(n) if claimlink_registry::validate_thing_name("thingName", n).is_err() => {
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

async fn admin_claims(State(s): St, headers: HeaderMap, Query(q): Query<ClaimQuery>) -> ApiResult {
    admin(&s, &headers).await?;
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
fn refusals_page(q: &RefusalQuery, rows: Vec<claimlink_registry::staging::ClaimRefusals>) -> ApiResult {
    let page = Page::from_params(q.max_results.as_ref(), q.next_token.as_ref())?;
    let key = |r: &claimlink_registry::staging::ClaimRefusals| {
        format!("{:020}|{}|{}|{}", i64::MAX - r.window_start, r.claimer, r.thing_name, r.reason)
    };
    ok(page.slice("refusals", rows, key, |r| json!(r)))
}

/// Refused claims in aggregate (per claimer, device, reason and hour).
async fn admin_refusals(State(s): St, headers: HeaderMap, Query(q): Query<RefusalQuery>) -> ApiResult {
    admin(&s, &headers).await?;
    let thing = thing_filter(q.thing_name.as_ref())?;
    let refusals = s.store().read().await?.claim_refusals(q.claimer.as_deref(), thing, 1000).await?;
    refusals_page(&q, refusals)
}

/// The OEM's own refused claims (its claim-thing's), in aggregate.
async fn my_refusals(
    State(s): St,
    Extension(peer): Extension<ClaimPeer>,
    Query(q): Query<RefusalQuery>,
) -> ApiResult {
    let oem = oem_peer(&peer)?;
    let claimer = format!("oem:{oem}");
    let thing = thing_filter(q.thing_name.as_ref())?;
    let refusals = s.store().read().await?.claim_refusals(Some(&claimer), thing, 1000).await?;
    refusals_page(&q, refusals)
}

async fn claim(State(s): St, Extension(peer): Extension<ClaimPeer>, bytes: Bytes) -> ApiResult {
    let oem = oem_peer(&peer)?;
    let v = body(&bytes)?;
    let thing = field(&v, "thingName")?;
    let endpoint = field(&v, "endpoint")?;
    let code = v.get("claimCode").and_then(Value::as_str);
    let request = ClaimRequest {
        oem_id: oem,
        claimer: claimlink_provision::claims::Claimer::ClaimThing,
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

async fn my_claims(
    State(s): St,
    Extension(peer): Extension<ClaimPeer>,
    Query(q): Query<ClaimQuery>,
) -> ApiResult {
    let oem = oem_peer(&peer)?;
    let q = ClaimQuery { oem_id: None, ..q };
    claims_page(&s, Some(oem), &q).await
}

async fn my_devices(
    State(s): St,
    Extension(peer): Extension<ClaimPeer>,
    Query(q): Query<PageQuery>,
) -> ApiResult {
    let oem = oem_peer(&peer)?;
    let page = Page::from_params(q.max_results.as_ref(), q.next_token.as_ref())?;
    let devices =
        s.store().read().await?.owned_devices_page(oem, page.after.as_deref(), page.fetch()).await?;
    ok(page.respond("devices", devices, |d| d.thing_name.clone(), device_json))
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct PageQuery {
    max_results: Option<String>,
    next_token: Option<String>,
}

async fn release(
    State(s): St,
    Extension(peer): Extension<ClaimPeer>,
    Path(thing): Path<String>,
) -> ApiResult {
    let oem = oem_peer(&peer)?;
    match s.release(oem, &thing).await {
        Ok((released, notice)) => {
            ok(json!({"thingName": thing, "released": true, "previousEndpoint": released.endpoint,
            // For the account the device was claimed for: POST it to its /claim-releases.
            "releaseNotice": notice}))
        }
        Err(ReleaseError::NotOwner) => {
            Err(ApiError::new(StatusCode::FORBIDDEN, "NotOwner", "this OEM does not own the device"))
        }
        Err(ReleaseError::Registry(e)) => Err(e.into()),
        Err(e) => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalFailure", e.to_string())),
    }
}
