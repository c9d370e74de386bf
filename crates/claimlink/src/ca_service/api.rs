//! The CA system's HTTP API: one route table (the router and `/openapi.json`), callers told
//! apart by their bearer token (`cas_...`: an administrator, whose role [`roles::may`]
//! decides; `app_...`: an applicant, for its own application), every change written with its
//! audit row in one transaction.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::on;
use claimlink_pki::crl::{Reason, Serial};
use claimlink_pki::ocsp::Status;
use claimlink_pki::{Certificate, CertificateRequest, PublicKey, ThingName, name};
use claimlink_registry::{now, random_hex, token_hash};
use claimlink_service::api::{ApiError, Body, Operation, Route, bearer, object, openapi_document};
use serde::Deserialize;
use serde_json::{Value, json};

use super::roles::{Action, Role};
use super::store::{self, AuditRow};
use super::{AppProfile, MAX_PENDING_APPLICATIONS, MAX_PENDING_REVOCATIONS, Names, Service, produce};
use crate::revoke::By;

type Svc = Arc<Service>;
type ApiResult = Result<Response, ApiError>;

/// Longest validity an application may ask for, in days (a birth certificate's 20 years).
const MAX_DAYS: i64 = 7320;
/// Most rows a list answers.
const MAX_LIST: i64 = 1000;
/// Longest CSR PEM an application may carry.
const MAX_CSR_PEM: usize = 8 * 1024;

fn ok(v: Value) -> ApiResult {
    Ok(axum::Json(v).into_response())
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %e, "CA system failure");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalFailureException", "internal failure")
}

fn not_found(what: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "ResourceNotFoundException", format!("no such {what}"))
}

fn conflict(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "ConflictingResourceUpdateException", message)
}

/// An audit row to append (seq, time and hashes are filled in by the store).
pub(crate) fn audit_row(
    actor: &str,
    role: &str,
    action: &str,
    target: &str,
    result: &str,
    detail: &str,
    scope: &str,
) -> AuditRow {
    AuditRow {
        seq: 0,
        at: 0,
        actor: actor.into(),
        role: role.into(),
        action: action.into(),
        target: target.into(),
        result: result.into(),
        detail: detail.into(),
        scope: scope.into(),
        prev: String::new(),
        hash: String::new(),
    }
}

/// Who is asking.
enum Caller {
    Admin {
        name: String,
        role: Role,
    },
    /// An applicant's token (`app_...`), checked against the application it names.
    Applicant(String),
    Anonymous,
}

impl Caller {
    fn actor(&self) -> (&str, &str) {
        match self {
            Caller::Admin { name, role } => (name, role.as_str()),
            Caller::Applicant(_) => ("applicant", "-"),
            Caller::Anonymous => ("anonymous", "-"),
        }
    }
}

async fn caller(svc: &Service, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(Caller::Anonymous);
    };
    let unauthorized =
        || ApiError::new(StatusCode::UNAUTHORIZED, "UnauthorizedException", "the bearer token is not valid");
    let token = value.to_str().ok().and_then(bearer).ok_or_else(unauthorized)?;
    if token.starts_with("app_") {
        return Ok(Caller::Applicant(token.to_owned()));
    }
    let mut tx = svc.store.read().await?;
    let admin = store::admin_for_token(&mut tx, token).await?;
    tx.commit().await?;
    let admin = admin.ok_or_else(unauthorized)?;
    let role = Role::parse(&admin.role).ok_or_else(|| internal("an administrator with an unknown role"))?;
    Ok(Caller::Admin { name: admin.name, role })
}

/// A caller with a token (an administrator's or an applicant's), told apart before the body is
/// read: a request without one is 401 whatever its body holds.
struct Authenticated(Caller);

impl axum::extract::FromRequestParts<Svc> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, svc: &Svc) -> Result<Self, ApiError> {
        match caller(svc, &parts.headers).await? {
            Caller::Anonymous => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "UnauthorizedException",
                "this needs a bearer token (an administrator's, or the applicant's for its own application)",
            )),
            known => Ok(Authenticated(known)),
        }
    }
}

/// The administrator behind `caller` if its role may do `action`; otherwise 401 (no
/// administrator) or 403, the refusal audited for a known administrator.
async fn require(
    svc: &Service,
    caller: &Caller,
    action: Action,
    target: &str,
) -> Result<(String, Role), ApiError> {
    match caller {
        Caller::Admin { name, role } if super::roles::may(*role, action) => Ok((name.clone(), *role)),
        Caller::Admin { name, role } => {
            refused(svc, name, role.as_str(), &format!("{action:?}"), target).await;
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "AccessDeniedException",
                format!("the {role} role may not do this"),
            ))
        }
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UnauthorizedException",
            "this needs an administrator's bearer token",
        )),
    }
}

/// Records a refused request of a known administrator.
async fn refused(svc: &Service, actor: &str, role: &str, action: &str, target: &str) {
    let _w = svc.write.lock().await;
    let result = async {
        let mut tx = svc.store.begin().await?;
        store::append_audit(&mut tx, audit_row(actor, role, action, target, "refused", "", "admin")).await?;
        tx.commit().await
    }
    .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "a refusal could not be audited");
    }
}

/// The routes. Applying, certificate status, CRLs, OCSP and the CA certificates take no
/// token; everything else takes an administrator's (or, for its own application, the
/// applicant's).
pub(crate) const ROUTES: &[Route<Svc>] = &[
    Route {
        method: "post",
        path: "/applications",
        operation: "apply",
        summary: "Apply for a certificate (CSR, profile, names); the answer holds the download token",
        handler: |m| on(m, apply),
    },
    Route {
        method: "get",
        path: "/applications",
        operation: "list-applications",
        summary: "Applications, newest first",
        handler: |m| on(m, list_applications),
    },
    Route {
        method: "get",
        path: "/applications/{applicationId}",
        operation: "describe-application",
        summary: "An application (administrators, or its applicant)",
        handler: |m| on(m, describe_application),
    },
    Route {
        method: "post",
        path: "/applications/{applicationId}/approve",
        operation: "approve-application",
        summary: "Approve a pending application: the certificate is issued",
        handler: |m| on(m, approve_application),
    },
    Route {
        method: "post",
        path: "/applications/{applicationId}/reject",
        operation: "reject-application",
        summary: "Reject a pending application, with a reason",
        handler: |m| on(m, reject_application),
    },
    Route {
        method: "get",
        path: "/applications/{applicationId}/certificate",
        operation: "get-certificate",
        summary: "The applicant downloads what was issued (and the enveloped encryption key)",
        handler: |m| on(m, download),
    },
    Route {
        method: "get",
        path: "/certificates/{serial}",
        operation: "describe-certificate",
        summary: "A certificate issued through the RA and its revocation status",
        handler: |m| on(m, describe_certificate),
    },
    Route {
        method: "post",
        path: "/revocation-requests",
        operation: "request-revocation",
        summary: "Ask for a certificate's revocation (operators, or the applicant for its own)",
        handler: |m| on(m, request_revocation),
    },
    Route {
        method: "get",
        path: "/revocation-requests",
        operation: "list-revocation-requests",
        summary: "Revocation requests, newest first",
        handler: |m| on(m, list_revocations),
    },
    Route {
        method: "post",
        path: "/revocation-requests/{requestId}/approve",
        operation: "approve-revocation",
        summary: "Revoke (an operator other than the one who asked): CRL re-signed, OCSP answers revoked",
        handler: |m| on(m, approve_revocation),
    },
    Route {
        method: "post",
        path: "/revocation-requests/{requestId}/reject",
        operation: "reject-revocation",
        summary: "Reject a revocation request",
        handler: |m| on(m, reject_revocation),
    },
    Route {
        method: "post",
        path: "/administrators",
        operation: "create-administrator",
        summary: "Appoint an administrator (its token is in the answer, once)",
        handler: |m| on(m, create_admin),
    },
    Route {
        method: "get",
        path: "/administrators",
        operation: "list-administrators",
        summary: "Administrators and their roles",
        handler: |m| on(m, list_admins),
    },
    Route {
        method: "delete",
        path: "/administrators/{name}",
        operation: "disable-administrator",
        summary: "Disable an administrator (its token stops working)",
        handler: |m| on(m, disable_admin),
    },
    Route {
        method: "get",
        path: "/review-policy",
        operation: "get-review-policy",
        summary: "What is approved without an operator",
        handler: |m| on(m, get_policy),
    },
    Route {
        method: "put",
        path: "/review-policy",
        operation: "set-review-policy",
        summary: "Replace the review policy",
        handler: |m| on(m, set_policy),
    },
    Route {
        method: "get",
        path: "/audit",
        operation: "get-audit-log",
        summary: "Audit rows after a sequence number, oldest first",
        handler: |m| on(m, audit_log),
    },
    Route {
        method: "get",
        path: "/audit/verify",
        operation: "verify-audit-log",
        summary: "Recompute the audit log's hash chain",
        handler: |m| on(m, verify_audit),
    },
    Route {
        method: "get",
        path: "/cas",
        operation: "list-cas",
        summary: "The CAs of this system (root and issuing) and their status",
        handler: |m| on(m, list_cas),
    },
    Route {
        method: "get",
        path: "/crl/{file}",
        operation: "get-crl",
        summary: "issuing.crl or root.crl: the CA's full CRL; issuing-delta.crl, root-delta.crl: its delta (DER)",
        handler: |m| on(m, get_crl),
    },
    Route {
        method: "get",
        path: "/ca/{file}",
        operation: "get-ca-certificate",
        summary: "issuing.der or root.der: the CA certificates (DER)",
        handler: |m| on(m, get_ca_certificate),
    },
    Route {
        method: "post",
        path: "/ocsp",
        operation: "ocsp",
        summary: "OCSP (RFC 6960) for certificates of the issuing CA",
        handler: |m| on(m, ocsp_issuing),
    },
    Route {
        method: "post",
        path: "/ocsp/root",
        operation: "ocsp-root",
        summary: "OCSP for the issuing CA, answered for the root",
        handler: |m| on(m, ocsp_root),
    },
];

fn operation(op: &str) -> Operation {
    let string = json!({ "type": "string" });
    let body = match op {
        "apply" => Some(object(
            &["profile", "csr"],
            json!({ "profile": { "type": "string", "enum": AppProfile::ALL.map(AppProfile::as_str) },
                "csr": { "type": "string", "maxLength": MAX_CSR_PEM }, "dns": { "type": "array", "items": string }, "ips": { "type": "array", "items": string },
                "days": { "type": "integer", "minimum": 1, "maximum": MAX_DAYS },
                "renewal": object(&["certificate", "signature"], json!({ "certificate": string, "signature": string })) }),
        )),
        "reject-application" | "reject-revocation" => Some(object(&[], json!({ "reason": string }))),
        "request-revocation" => {
            Some(object(&["serial", "reason"], json!({ "serial": string, "reason": string })))
        }
        "create-administrator" => Some(object(
            &["name", "role"],
            json!({ "name": string, "role": { "type": "string", "enum": Role::ALL.map(Role::as_str) } }),
        )),
        "set-review-policy" => Some(object(
            &[],
            json!({ "autoApproveRenewals": { "type": "boolean" }, "autoApproveProfiles": { "type": "array", "items": string } }),
        )),
        "ocsp" | "ocsp-root" => Some(claimlink_service::api::crl_body()),
        _ => None,
    };
    let query = match op {
        "list-applications" | "list-revocation-requests" => vec![
            ("status", string.clone()),
            ("maxResults", json!({ "type": "integer", "minimum": 1, "maximum": MAX_LIST })),
        ],
        "get-audit-log" => vec![
            ("after", json!({ "type": "integer", "minimum": 0 })),
            ("maxResults", json!({ "type": "integer", "minimum": 1, "maximum": MAX_LIST })),
        ],
        _ => Vec::new(),
    };
    Operation { query, body, response: json!({ "type": "object" }) }
}

/// The router: the route table, `/openapi.json`, JSON errors.
pub(crate) fn router(svc: Svc) -> axum::Router {
    let doc = document();
    let openapi = axum::routing::get(move || {
        let doc = doc.clone();
        async move { axum::Json(doc) }
    });
    claimlink_service::api::router(ROUTES, openapi, super::MAX_BODY).with_state(svc)
}

/// Operations anyone may call (no bearer token; an applicant's is optional).
const PUBLIC: &[&str] =
    &["apply", "describe-certificate", "list-cas", "get-crl", "get-ca-certificate", "ocsp", "ocsp-root"];

/// The OpenAPI document: the route table's, with the public operations taking no token and
/// the binary ones their media types (RFC 5280 and RFC 6960).
pub(crate) fn document() -> Value {
    let mut doc = openapi_document("claimlink CA system", ROUTES, operation, true);
    let binary = json!({ "type": "string", "format": "binary" });
    for route in ROUTES {
        let entry = &mut doc["paths"][route.path][route.method];
        if PUBLIC.contains(&route.operation)
            && let Some(e) = entry.as_object_mut()
        {
            e.remove("security");
        }
        let media = match route.operation {
            "get-crl" => Some("application/pkix-crl"),
            "get-ca-certificate" => Some("application/pkix-cert"),
            "ocsp" | "ocsp-root" => Some("application/ocsp-response"),
            _ => None,
        };
        if let Some(media) = media {
            entry["responses"]["200"]["content"] = json!({ media: { "schema": binary } });
        }
    }
    doc
}

/// The review policy: what is approved without an operator.
#[derive(Clone, Debug, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ReviewPolicy {
    /// A renewal proven with the key of a valid certificate of the same subject and profile.
    #[serde(default = "yes")]
    auto_approve_renewals: bool,
    /// Profiles issued on application alone.
    #[serde(default)]
    auto_approve_profiles: Vec<String>,
}

fn yes() -> bool {
    true
}

impl Default for ReviewPolicy {
    fn default() -> Self {
        Self { auto_approve_renewals: true, auto_approve_profiles: Vec::new() }
    }
}

async fn policy(svc: &Service) -> Result<ReviewPolicy, ApiError> {
    let mut tx = svc.store.read().await?;
    let doc = store::review_policy(&mut tx).await?;
    tx.commit().await?;
    match doc {
        Some(d) => serde_json::from_str(&d).map_err(internal),
        None => Ok(ReviewPolicy::default()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Renewal {
    /// The certificate being renewed (PEM).
    certificate: String,
    /// Hex of its key's signature over the new CSR's DER (SM2: GM/T 0009 default ID).
    signature: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplyBody {
    profile: String,
    csr: String,
    #[serde(default)]
    dns: Option<Vec<String>>,
    #[serde(default)]
    ips: Option<Vec<String>>,
    #[serde(default)]
    days: Option<i64>,
    #[serde(default)]
    renewal: Option<Renewal>,
}

/// Checks a renewal proof; `Ok(serial)` of the certificate it renews.
async fn check_renewal(
    svc: &Service,
    renewal: &Renewal,
    csr: &CertificateRequest,
    profile: AppProfile,
) -> Result<String, ApiError> {
    let bad = |why: &str| ApiError::bad(format!("renewal: {why}"));
    // The certificate as downloaded: the leaf first, the issuing CA after it.
    let old = Certificate::chain_from_pem(renewal.certificate.as_bytes())
        .map_err(|e| bad(&e.to_string()))?
        .into_iter()
        .next()
        .ok_or_else(|| bad("no certificate"))?;
    if !crate::revoke::issued_by(&old, &svc.ca.issuing) {
        return Err(bad("the certificate was not issued by this CA"));
    }
    let serial = Serial::of(&old).map_err(|e| bad(&e.to_string()))?;
    let key = serial.to_hex();
    let mut tx = svc.store.read().await?;
    let issued = store::issued(&mut tx, &key).await?;
    tx.commit().await?;
    let issued = issued.ok_or_else(|| bad("the certificate was not issued through this RA"))?;
    if issued.profile != profile.as_str() {
        return Err(bad("a renewal keeps the profile of the certificate it renews"));
    }
    if old.not_after() <= SystemTime::now() {
        return Err(bad("the certificate has expired; apply for a new one"));
    }
    if !matches!(svc.status(&serial), Status::Good) {
        return Err(bad("the certificate is revoked"));
    }
    if old.subject() != csr.subject() {
        return Err(bad("a renewal keeps the subject of the certificate it renews"));
    }
    let sig = hex::decode(&renewal.signature).map_err(|_| bad("the signature is not hex"))?;
    let old_key = old.public_key().map_err(|e| bad(&e.to_string()))?;
    let alg = match old_key {
        PublicKey::Sm2(_) => claimlink_pki::SignatureAlgorithm::Sm2Sm3,
        _ => claimlink_pki::SignatureAlgorithm::EcdsaSha256,
    };
    old_key
        .verify(alg, &claimlink_gm::DistId::GMT_0009_DEFAULT, csr.der(), &sig)
        .map_err(|_| bad("the signature over the CSR does not verify with the certificate's key"))?;
    Ok(key)
}

async fn apply(State(svc): State<Svc>, Body(body): Body<ApplyBody>) -> ApiResult {
    let profile = AppProfile::parse(&body.profile).ok_or_else(|| {
        ApiError::bad(format!(
            "profile must be one of {}",
            AppProfile::ALL.map(AppProfile::as_str).join(", ")
        ))
    })?;
    // A CSR is a few hundred bytes (an RSA-4096 one under 4 KiB): what a stranger can make the
    // RA store while it waits for review is bounded by this times the pending applications.
    if body.csr.len() > MAX_CSR_PEM {
        return Err(ApiError::bad(format!("csr: at most {MAX_CSR_PEM} bytes of PEM")));
    }
    let csr = CertificateRequest::from_pem_or_der(body.csr.as_bytes())
        .map_err(|e| ApiError::bad(format!("csr: {e}")))?;
    let mut names = Names { dns: body.dns.unwrap_or_default(), ips: Vec::new() };
    for ip in body.ips.unwrap_or_default() {
        names.ips.push(ip.parse().map_err(|_| ApiError::bad(format!("ips: {ip:?} is not an IP address")))?);
    }
    if names.dns.len() + names.ips.len() > 100 {
        return Err(ApiError::bad("at most 100 names"));
    }
    match profile {
        AppProfile::Server | AppProfile::DualServer if names.dns.is_empty() && names.ips.is_empty() => {
            return Err(ApiError::bad("a server certificate needs dns or ips"));
        }
        AppProfile::Device | AppProfile::ClaimThing | AppProfile::DualClient
            if !(names.dns.is_empty() && names.ips.is_empty()) =>
        {
            return Err(ApiError::bad("names are for server profiles"));
        }
        _ => {}
    }
    if profile == AppProfile::Device {
        // As a birth certificate from `ca issue-devices`: staging takes the CN as the ThingName
        // and the client id.
        let serial = name::attribute(csr.subject(), name::attr::SERIAL_NUMBER).unwrap_or_default();
        let cn = name::attribute(csr.subject(), name::attr::COMMON_NAME).unwrap_or_default();
        if ThingName::parse(&serial).is_err() || cn != serial {
            return Err(ApiError::bad(
                "a device certificate's subject carries its ThingName (32 lowercase hex) as both CN and \
                 serialNumber",
            ));
        }
    }
    if profile.is_dual() && (svc.km.is_none() || !matches!(csr.public_key(), PublicKey::Sm2(_))) {
        return Err(ApiError::bad("dual certificates are SM2: an SM2 CSR to an SM2 CA"));
    }
    if name::attribute(csr.subject(), name::attr::COMMON_NAME).is_none() {
        return Err(ApiError::bad("the CSR's subject needs a CN"));
    }
    let default_days = if profile == AppProfile::Device { 7305 } else { 825 };
    let days = body.days.unwrap_or(default_days);
    if !(1..=MAX_DAYS).contains(&days) {
        return Err(ApiError::bad(format!("days must be 1 to {MAX_DAYS}")));
    }
    let renewal_of = match &body.renewal {
        Some(r) => Some(check_renewal(&svc, r, &csr, profile).await?),
        None => None,
    };
    let review = policy(&svc).await?;
    let auto = if renewal_of.is_some() && review.auto_approve_renewals {
        Some("policy:renewal")
    } else if review.auto_approve_profiles.iter().any(|p| p == profile.as_str()) {
        Some("policy:profile")
    } else {
        None
    };
    let token = format!("app_{}", random_hex(32)?);
    let id = format!("ap-{}", random_hex(12)?);
    let application = store::Application {
        id: id.clone(),
        profile: profile.as_str().into(),
        subject: csr.subject().to_string(),
        csr_pem: csr.to_pem(),
        names: serde_json::to_string(&names).map_err(internal)?,
        days,
        renewal_of: renewal_of.clone(),
        token_hash: token_hash(&token),
        status: "PENDING_REVIEW".into(),
        reviewer: None,
        reason: None,
        serial: None,
        certificate_pem: None,
        enc_certificate_pem: None,
        enc_key_envelope: None,
        created: now(),
        decided: None,
    };
    let detail = format!("profile={} subject={}", application.profile, application.subject);
    {
        let _w = svc.write.lock().await;
        let mut tx = svc.store.begin().await?;
        if auto.is_none()
            && store::count_by_status(&mut tx, "applications", "PENDING_REVIEW").await?
                >= MAX_PENDING_APPLICATIONS
        {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailableException",
                format!("{MAX_PENDING_APPLICATIONS} applications are waiting for review; try again later"),
            ));
        }
        store::insert_application(&mut tx, &application).await?;
        store::append_audit(&mut tx, audit_row("applicant", "-", "apply", &id, "ok", &detail, "business"))
            .await?;
        tx.commit().await?;
    }
    let status = match auto {
        Some(reviewer) => issue_application(&svc, &id, reviewer, "-").await?,
        None => "PENDING_REVIEW".to_owned(),
    };
    // A create answers 200 with the new record, as AWS's APIs do.
    ok(json!({ "applicationId": id, "status": status, "downloadToken": token, "renewalOf": renewal_of }))
}

/// Issues a pending application and records it: ISSUED, the certificate stored for its
/// applicant, audit rows. Returns the new status.
async fn issue_application(svc: &Svc, id: &str, reviewer: &str, role: &str) -> Result<String, ApiError> {
    let _w = svc.write.lock().await;
    let mut tx = svc.store.read().await?;
    let app = store::application(&mut tx, id).await?;
    tx.commit().await?;
    let app = app.ok_or_else(|| not_found("application"))?;
    if app.status != "PENDING_REVIEW" {
        return Err(conflict(format!("application {id} is {}", app.status)));
    }
    let profile =
        AppProfile::parse(&app.profile).ok_or_else(|| internal("a stored application's profile"))?;
    let csr = CertificateRequest::from_pem(app.csr_pem.as_bytes()).map_err(internal)?;
    let names: Names = serde_json::from_str(&app.names).map_err(internal)?;
    let validity = Duration::from_secs(u64::try_from(app.days).unwrap_or(1) * 86_400);
    let s = svc.clone();
    let produced = tokio::task::spawn_blocking(move || produce(&s, profile, &csr, &names, validity))
        .await
        .map_err(internal)?
        .map_err(|e| ApiError::bad(format!("the certificate cannot be issued: {e}")))?;
    let cert = &produced.certificate;
    let serial = Serial::of(cert).map_err(internal)?.to_hex();
    let chain = format!("{}{}", cert.to_pem(), svc.ca.issuing.to_pem());
    let (enc_pem, envelope) = match &produced.encryption {
        Some((enc, env)) => (Some(enc.to_pem()), Some(hex::encode(env))),
        None => (None, None),
    };
    let mut tx = svc.store.begin().await?;
    let decision = store::Decision {
        status: "ISSUED",
        reviewer,
        reason: None,
        serial: Some(&serial),
        certificate_pem: Some(&chain),
        enc_certificate_pem: enc_pem.as_deref(),
        enc_key_envelope: envelope.as_deref(),
    };
    if !store::decide_application(&mut tx, id, &decision).await? {
        return Err(conflict(format!("application {id} was decided meanwhile")));
    }
    let not_after = cert.not_after().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    store::insert_issued(
        &mut tx,
        &store::Issued {
            serial: serial.clone(),
            application_id: id.into(),
            profile: app.profile.clone(),
            subject: cert.subject().to_string(),
            not_after,
            certificate_pem: cert.to_pem(),
        },
    )
    .await?;
    if let Some((enc, _)) = &produced.encryption {
        let enc_serial = Serial::of(enc).map_err(internal)?.to_hex();
        store::insert_issued(
            &mut tx,
            &store::Issued {
                serial: enc_serial,
                application_id: id.into(),
                profile: format!("{}-encryption", app.profile),
                subject: enc.subject().to_string(),
                not_after,
                certificate_pem: enc.to_pem(),
            },
        )
        .await?;
    }
    let detail = format!("serial={serial} id={}", cert.id());
    store::append_audit(&mut tx, audit_row(reviewer, role, "issue", id, "ok", &detail, "business")).await?;
    tx.commit().await?;
    Ok("ISSUED".into())
}

fn application_json(a: &store::Application) -> Value {
    json!({
        "applicationId": a.id, "profile": a.profile, "subject": a.subject, "status": a.status,
        "reviewer": a.reviewer, "reason": a.reason, "serial": a.serial, "renewalOf": a.renewal_of,
        "days": a.days, "names": serde_json::from_str::<Value>(&a.names).unwrap_or(Value::Null),
        "created": a.created, "decided": a.decided,
    })
}

fn limit(q: &BTreeMap<String, String>) -> Result<i64, ApiError> {
    match q.get("maxResults") {
        None => Ok(100),
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_LIST).contains(n))
            .ok_or_else(|| ApiError::bad(format!("maxResults must be 1 to {MAX_LIST}"))),
    }
}

fn status_filter<'a>(q: &'a BTreeMap<String, String>, allowed: &[&str]) -> Result<Option<&'a str>, ApiError> {
    match q.get("status") {
        None => Ok(None),
        Some(s) if allowed.contains(&s.as_str()) => Ok(Some(s)),
        Some(_) => Err(ApiError::bad(format!("status must be one of {}", allowed.join(", ")))),
    }
}

async fn list_applications(
    State(svc): State<Svc>,
    Authenticated(who): Authenticated,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult {
    require(&svc, &who, Action::ReadApplications, "applications").await?;
    let status = status_filter(&q, &["PENDING_REVIEW", "ISSUED", "REJECTED"])?;
    let mut tx = svc.store.read().await?;
    let rows = store::applications(&mut tx, status, limit(&q)?).await?;
    tx.commit().await?;
    ok(json!({ "applications": rows.iter().map(application_json).collect::<Vec<_>>() }))
}

/// The application `id` if the caller may see it: an administrator who reads applications, or
/// the applicant holding its token (a wrong token is "no such application": it tells nothing).
async fn visible_application(svc: &Service, who: &Caller, id: &str) -> Result<store::Application, ApiError> {
    let mut tx = svc.store.read().await?;
    let app = store::application(&mut tx, id).await?;
    tx.commit().await?;
    match who {
        Caller::Applicant(token) => {
            app.filter(|a| a.token_hash == token_hash(token)).ok_or_else(|| not_found("application"))
        }
        _ => {
            require(svc, who, Action::ReadApplications, id).await?;
            app.ok_or_else(|| not_found("application"))
        }
    }
}

async fn describe_application(
    State(svc): State<Svc>,
    Authenticated(who): Authenticated,
    Path(id): Path<String>,
) -> ApiResult {
    let app = visible_application(&svc, &who, &id).await?;
    ok(application_json(&app))
}

async fn approve_application(
    State(svc): State<Svc>,
    Authenticated(who): Authenticated,
    Path(id): Path<String>,
) -> ApiResult {
    let (name, role) = require(&svc, &who, Action::ReviewApplication, &id).await?;
    let status = issue_application(&svc, &id, &name, role.as_str()).await?;
    ok(json!({ "applicationId": id, "status": status }))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    #[serde(default)]
    reason: Option<String>,
}

async fn reject_application(
    State(svc): State<Svc>,
    Authenticated(who): Authenticated,
    Path(id): Path<String>,
    Body(body): Body<ReasonBody>,
) -> ApiResult {
    let (name, role) = require(&svc, &who, Action::ReviewApplication, &id).await?;
    let reason = body.reason.unwrap_or_default();
    if reason.len() > 1024 {
        return Err(ApiError::bad("reason: at most 1024 bytes"));
    }
    let _w = svc.write.lock().await;
    let mut tx = svc.store.begin().await?;
    if store::application(&mut tx, &id).await?.is_none() {
        return Err(not_found("application"));
    }
    let decision = store::Decision {
        status: "REJECTED",
        reviewer: &name,
        reason: Some(&reason),
        serial: None,
        certificate_pem: None,
        enc_certificate_pem: None,
        enc_key_envelope: None,
    };
    if !store::decide_application(&mut tx, &id, &decision).await? {
        return Err(conflict(format!("application {id} is no longer pending review")));
    }
    store::append_audit(&mut tx, audit_row(&name, role.as_str(), "reject", &id, "ok", &reason, "business"))
        .await?;
    tx.commit().await?;
    ok(json!({ "applicationId": id, "status": "REJECTED" }))
}

async fn download(
    State(svc): State<Svc>,
    Authenticated(who): Authenticated,
    Path(id): Path<String>,
) -> ApiResult {
    if !matches!(who, Caller::Applicant(_)) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UnauthorizedException",
            "the applicant downloads with the token it got when applying",
        ));
    }
    let app = visible_application(&svc, &who, &id).await?;
    if app.status != "ISSUED" {
        return Err(conflict(format!("application {id} is {}", app.status)));
    }
    ok(json!({
        "applicationId": id,
        "serial": app.serial,
        "certificatePem": app.certificate_pem,
        "encryptionCertificatePem": app.enc_certificate_pem,
        "encryptionKeyEnvelope": app.enc_key_envelope,
    }))
}

fn serial_key(text: &str) -> Result<Serial, ApiError> {
    Serial::from_hex(text.trim_start_matches("0x"))
        .map_err(|_| ApiError::bad("serial: hex digits of a serial number"))
}

async fn describe_certificate(State(svc): State<Svc>, Path(serial): Path<String>) -> ApiResult {
    let serial = serial_key(&serial)?;
    let mut tx = svc.store.read().await?;
    let issued = store::issued(&mut tx, &serial.to_hex()).await?;
    tx.commit().await?;
    let issued = issued.ok_or_else(|| not_found("certificate issued through this RA"))?;
    let (status, revoked) = match svc.status(&serial) {
        Status::Revoked { at, reason } => (
            "REVOKED",
            json!({ "at": at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                "reason": reason.map(Reason::name) }),
        ),
        _ => ("GOOD", Value::Null),
    };
    ok(json!({
        "serial": issued.serial, "profile": issued.profile, "subject": issued.subject,
        "notAfter": issued.not_after, "applicationId": issued.application_id,
        "status": status, "revocation": revoked,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevocationBody {
    serial: String,
    reason: String,
}

async fn request_revocation(
    State(svc): State<Svc>,
    Authenticated(who): Authenticated,
    Body(body): Body<RevocationBody>,
) -> ApiResult {
    let serial = serial_key(&body.serial)?;
    let key = serial.to_hex();
    let reason = Reason::from_name(&body.reason).map_err(|e| ApiError::bad(format!("reason: {e}")))?;
    if reason == Reason::RemoveFromCrl {
        return Err(ApiError::bad("reason: removeFromCRL lifts a hold; it is not a reason to revoke"));
    }
    let requested_by = match &who {
        Caller::Applicant(token) => {
            // The applicant may ask for its own certificate only.
            let mut tx = svc.store.read().await?;
            let issued = store::issued(&mut tx, &key).await?;
            let app = match &issued {
                Some(i) => store::application(&mut tx, &i.application_id).await?,
                None => None,
            };
            tx.commit().await?;
            match app {
                Some(a) if a.token_hash == token_hash(token) => format!("applicant:{}", a.id),
                _ => return Err(not_found("certificate of this applicant")),
            }
        }
        _ => require(&svc, &who, Action::RequestRevocation, &key).await?.0,
    };
    if matches!(svc.status(&serial), Status::Revoked { .. }) {
        return Err(conflict(format!("serial {key} is revoked already")));
    }
    let id = format!("rv-{}", random_hex(12)?);
    let (actor, role) = who.actor();
    let _w = svc.write.lock().await;
    let mut tx = svc.store.begin().await?;
    if store::pending_revocation_for(&mut tx, &key).await? {
        return Err(conflict(format!("a revocation of {key} is pending already")));
    }
    if store::count_by_status(&mut tx, "revocations", "PENDING_REVIEW").await? >= MAX_PENDING_REVOCATIONS {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailableException",
            "too many revocation requests are pending; try again later",
        ));
    }
    let request = store::RevocationRequest {
        id: id.clone(),
        serial: key.clone(),
        reason: reason.name().into(),
        requested_by: requested_by.clone(),
        status: "PENDING_REVIEW".into(),
        reviewer: None,
        created: now(),
        decided: None,
    };
    store::insert_revocation_request(&mut tx, &request).await?;
    let detail = format!("serial={key} reason={}", reason.name());
    store::append_audit(
        &mut tx,
        audit_row(actor, role, "request-revocation", &id, "ok", &detail, "business"),
    )
    .await?;
    tx.commit().await?;
    // A create answers 200 with the new record, as AWS's APIs do.
    ok(json!({ "requestId": id, "serial": key, "reason": reason.name(), "status": "PENDING_REVIEW" }))
}

fn revocation_json(r: &store::RevocationRequest) -> Value {
    json!({ "requestId": r.id, "serial": r.serial, "reason": r.reason, "requestedBy": r.requested_by,
        "status": r.status, "reviewer": r.reviewer, "created": r.created, "decided": r.decided })
}

async fn list_revocations(
    State(svc): State<Svc>,
    Authenticated(who): Authenticated,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult {
    require(&svc, &who, Action::ReadApplications, "revocation-requests").await?;
    let status = status_filter(&q, &["PENDING_REVIEW", "REVOKED", "REJECTED"])?;
    let mut tx = svc.store.read().await?;
    let rows = store::revocation_requests(&mut tx, status, limit(&q)?).await?;
    tx.commit().await?;
    ok(json!({ "revocationRequests": rows.iter().map(revocation_json).collect::<Vec<_>>() }))
}

async fn decide_revocation(svc: &Svc, who: Caller, id: &str, approve: bool) -> ApiResult {
    let (name, role) = require(svc, &who, Action::ReviewRevocation, id).await?;
    let _w = svc.write.lock().await;
    let mut tx = svc.store.read().await?;
    let request = store::revocation_request(&mut tx, id).await?;
    tx.commit().await?;
    let request = request.ok_or_else(|| not_found("revocation request"))?;
    if request.status != "PENDING_REVIEW" {
        return Err(conflict(format!("revocation request {id} is {}", request.status)));
    }
    if request.requested_by == name {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "AccessDeniedException",
            "a revocation is approved by an operator other than the one who asked for it",
        ));
    }
    if approve {
        // Revoked first, recorded after: if recording fails the certificate is revoked (fail
        // closed) and approving the request again finishes it.
        let s = svc.clone();
        let serial = serial_key(&request.serial)?;
        let reason = Reason::from_name(&request.reason).map_err(internal)?;
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            if !matches!(s.status(&serial), Status::Revoked { .. }) {
                crate::revoke::record(&s.dir, By::Issuing, serial, reason)?;
            }
            s.ocsp_issuing.refresh()?;
            s.publish_revocation(By::Issuing)
        })
        .await
        .map_err(internal)?
        .map_err(internal)?;
    }
    let status = if approve { "REVOKED" } else { "REJECTED" };
    let mut tx = svc.store.begin().await?;
    if !store::decide_revocation(&mut tx, id, status, &name).await? {
        return Err(conflict(format!("revocation request {id} was decided meanwhile")));
    }
    let detail = format!("serial={} reason={}", request.serial, request.reason);
    let action = if approve { "revoke" } else { "reject-revocation" };
    store::append_audit(&mut tx, audit_row(&name, role.as_str(), action, id, "ok", &detail, "business"))
        .await?;
    tx.commit().await?;
    ok(json!({ "requestId": id, "serial": request.serial, "status": status }))
}

async fn approve_revocation(
    State(svc): State<Svc>,
    Authenticated(who): Authenticated,
    Path(id): Path<String>,
) -> ApiResult {
    decide_revocation(&svc, who, &id, true).await
}

async fn reject_revocation(
    State(svc): State<Svc>,
    Authenticated(who): Authenticated,
    Path(id): Path<String>,
    Body(_): Body<ReasonBody>,
) -> ApiResult {
    decide_revocation(&svc, who, &id, false).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminBody {
    name: String,
    role: String,
}

fn valid_admin_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

async fn create_admin(
    State(svc): State<Svc>,
    Authenticated(who): Authenticated,
    Body(body): Body<AdminBody>,
) -> ApiResult {
    let (name, role) = require(&svc, &who, Action::Appoint, &body.name).await?;
    let new_role = Role::parse(&body.role).ok_or_else(|| {
        ApiError::bad(format!("role must be one of {}", Role::ALL.map(Role::as_str).join(", ")))
    })?;
    if !role.appoints().contains(&new_role) {
        refused(&svc, &name, role.as_str(), "appoint", &body.name).await;
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "AccessDeniedException",
            format!("the {role} role does not appoint {new_role}s"),
        ));
    }
    if !valid_admin_name(&body.name) {
        return Err(ApiError::bad("name: 1 to 64 of A-Z a-z 0-9 - _ ."));
    }
    let _w = svc.write.lock().await;
    let mut tx = svc.store.begin().await?;
    let token = store::insert_admin(&mut tx, &body.name, new_role.as_str(), &name).await?;
    store::append_audit(
        &mut tx,
        audit_row(&name, role.as_str(), "appoint", &body.name, "ok", new_role.as_str(), "admin"),
    )
    .await?;
    tx.commit().await?;
    // A create answers 200 with the new record, as AWS's APIs do.
    ok(json!({ "name": body.name, "role": new_role.as_str(), "token": token }))
}

async fn list_admins(State(svc): State<Svc>, Authenticated(who): Authenticated) -> ApiResult {
    require(&svc, &who, Action::ListAdministrators, "administrators").await?;
    let mut tx = svc.store.read().await?;
    let admins = store::list_admins(&mut tx).await?;
    tx.commit().await?;
    let list: Vec<Value> = admins
        .iter()
        .map(|a| {
            json!({ "name": a.name, "role": a.role, "createdBy": a.created_by, "created": a.created,
            "disabled": a.disabled != 0 })
        })
        .collect();
    ok(json!({ "administrators": list }))
}

async fn disable_admin(
    State(svc): State<Svc>,
    Authenticated(who): Authenticated,
    Path(target): Path<String>,
) -> ApiResult {
    let (name, role) = require(&svc, &who, Action::Appoint, &target).await?;
    let _w = svc.write.lock().await;
    let mut tx = svc.store.begin().await?;
    let admin = store::admin(&mut tx, &target).await?.ok_or_else(|| not_found("administrator"))?;
    let target_role =
        Role::parse(&admin.role).ok_or_else(|| internal("an administrator with an unknown role"))?;
    if !role.appoints().contains(&target_role) {
        drop(tx);
        drop(_w);
        refused(&svc, &name, role.as_str(), "disable", &target).await;
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "AccessDeniedException",
            format!("the {role} role does not manage {target_role}s"),
        ));
    }
    if !store::disable_admin(&mut tx, &target).await? {
        return Err(conflict(format!("{target} is disabled already")));
    }
    store::append_audit(&mut tx, audit_row(&name, role.as_str(), "disable", &target, "ok", "", "admin"))
        .await?;
    tx.commit().await?;
    ok(json!({ "name": target, "disabled": true }))
}

async fn get_policy(State(svc): State<Svc>, Authenticated(who): Authenticated) -> ApiResult {
    match &who {
        Caller::Admin { role, .. } if super::roles::may(*role, Action::SetReviewPolicy) => {}
        _ => {
            require(&svc, &who, Action::ReadApplications, "review-policy").await?;
        }
    }
    ok(serde_json::to_value(policy(&svc).await?).map_err(internal)?)
}

async fn set_policy(
    State(svc): State<Svc>,
    Authenticated(who): Authenticated,
    Body(body): Body<ReviewPolicy>,
) -> ApiResult {
    let (name, role) = require(&svc, &who, Action::SetReviewPolicy, "review-policy").await?;
    for p in &body.auto_approve_profiles {
        if AppProfile::parse(p).is_none() {
            return Err(ApiError::bad(format!("autoApproveProfiles: {p:?} is not a profile")));
        }
    }
    let doc = serde_json::to_string(&body).map_err(internal)?;
    let _w = svc.write.lock().await;
    let mut tx = svc.store.begin().await?;
    store::set_review_policy(&mut tx, &doc, &name).await?;
    store::append_audit(
        &mut tx,
        audit_row(&name, role.as_str(), "set-review-policy", "review-policy", "ok", &doc, "business"),
    )
    .await?;
    tx.commit().await?;
    ok(serde_json::to_value(&body).map_err(internal)?)
}

async fn audit_log(
    State(svc): State<Svc>,
    Authenticated(who): Authenticated,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult {
    let (name, role) = require(&svc, &who, Action::ReadBusinessAudit, "audit").await?;
    let all = super::roles::may(role, Action::ReadFullAudit);
    let after = match q.get("after") {
        None => 0,
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| ApiError::bad("after: a sequence number"))?,
    };
    let limit = limit(&q)?;
    let mut tx = svc.store.read().await?;
    let rows = store::audit_rows(&mut tx, all, after, limit).await?;
    tx.commit().await?;
    // Reading the log is itself audited (for the audit administrator).
    {
        let _w = svc.write.lock().await;
        let mut tx = svc.store.begin().await?;
        store::append_audit(
            &mut tx,
            audit_row(&name, role.as_str(), "read-audit", "audit", "ok", &format!("after={after}"), "admin"),
        )
        .await?;
        tx.commit().await?;
    }
    ok(json!({ "rows": rows }))
}

async fn verify_audit(State(svc): State<Svc>, Authenticated(who): Authenticated) -> ApiResult {
    require(&svc, &who, Action::VerifyAudit, "audit").await?;
    let check = store::verify_audit(&svc.store).await?;
    ok(serde_json::to_value(check).map_err(internal)?)
}

/// The root and the issuing CA as records: what they are, whether the root has revoked the
/// issuing CA, the CRL each publishes.
async fn list_cas(State(svc): State<Svc>) -> ApiResult {
    let record = |cert: &Certificate, role: &str, by: By, status: &str| {
        let parse =
            |der| claimlink_pki::crl::Crl::from_der(der, claimlink_pki::crl::DEFAULT_MAX_CRL_LEN).ok();
        let crl = parse(svc.crl(by, false));
        let delta = parse(svc.crl(by, true));
        json!({
            "role": role,
            "algorithm": svc.ca.algorithm.to_string(),
            "subject": cert.subject().to_string(),
            "certificateId": cert.id().to_string(),
            "serial": cert.serial_hex(),
            "notAfter": cert.not_after_rfc3339(),
            "status": status,
            "crlNumber": crl.as_ref().and_then(|c| c.number()),
            "deltaCrlNumber": delta.as_ref().and_then(|c| c.number()),
            "crlNextUpdate": crl.as_ref().and_then(|c| c.next_update()).map(|t| {
                t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
            }),
        })
    };
    let issuing_status = match Serial::of(&svc.ca.issuing).map(|s| svc.ocsp_root.status(&s)) {
        Ok(Status::Revoked { .. }) => "REVOKED",
        _ => "ACTIVE",
    };
    ok(json!({ "cas": [
        record(&svc.ca.root, "root", By::Root, "ACTIVE"),
        record(&svc.ca.issuing, "issuing", By::Issuing, issuing_status),
    ] }))
}

fn which(file: &str, ext: &str) -> Result<By, ApiError> {
    match file.strip_suffix(ext) {
        Some("issuing") => Ok(By::Issuing),
        Some("root") => Ok(By::Root),
        _ => Err(not_found("file")),
    }
}

async fn get_crl(State(svc): State<Svc>, Path(file): Path<String>) -> ApiResult {
    let (by, delta) = match file.strip_suffix("-delta.crl") {
        Some(base) => (which(&format!("{base}.crl"), ".crl")?, true),
        None => (which(&file, ".crl")?, false),
    };
    Ok(([(header::CONTENT_TYPE, "application/pkix-crl")], svc.crl(by, delta)).into_response())
}

async fn get_ca_certificate(State(svc): State<Svc>, Path(file): Path<String>) -> ApiResult {
    let cert = match which(&file, ".der")? {
        By::Issuing => &svc.ca.issuing,
        By::Root => &svc.ca.root,
    };
    Ok(([(header::CONTENT_TYPE, "application/pkix-cert")], cert.der().to_vec()).into_response())
}

async fn ocsp_issuing(State(svc): State<Svc>, body: Bytes) -> Response {
    crate::ocsp_cmd::post(State(svc.ocsp_issuing.clone()), body).await
}

async fn ocsp_root(State(svc): State<Svc>, body: Bytes) -> Response {
    crate::ocsp_cmd::post(State(svc.ocsp_root.clone()), body).await
}
