//! The admin REST API of the account endpoint, shaped like AWS IoT's control plane (paths,
//! verbs, JSON field names), authenticated with per-account API tokens (`Authorization: Bearer
//! clk_...`, stored hashed). Errors are `{"code": ..., "message": ...}` with a 4xx status and a
//! stable code; a refused request changes nothing. The OpenAPI document is at `/openapi.json`.

use std::collections::BTreeMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::FromRequestParts;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::get;
use axum::routing::on;
use claimlink_registry::{Account, CaMode, CaStatus, CertificateStatus, NewCa, PolicyTarget, TemplateKind};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::AccountServer;
use claimlink_service::HttpLimits;
use claimlink_service::api::{
    ApiError, Audited, Operation, Page, Route, bearer, json_errors, list, object, openapi_document,
};

type ApiResult = Result<axum::Json<Value>, ApiError>;

/// The routes: method, path, operation (the AWS CLI verb), summary. The OpenAPI document is
/// made from this table, and a test checks that every entry is served.
/// The routes: method, path, operation (the AWS CLI verb), summary, handler. The router and
/// the OpenAPI document are both made from this table.
pub const ROUTES: &[Route<AccountServer>] = &[
    Route {
        method: "get",
        path: "/endpoint",
        operation: "describe-endpoint",
        summary: "The MQTT endpoint of the account",
        handler: |m| on(m, describe_endpoint),
    },
    Route {
        method: "get",
        path: "/registrationcode",
        operation: "get-registration-code",
        summary: "The code a DEFAULT-mode CA's verification certificate carries as CN",
        handler: |m| on(m, registration_code),
    },
    Route {
        method: "post",
        path: "/cacertificate",
        operation: "register-ca-certificate",
        summary: "Register a CA certificate",
        handler: |m| on(m, register_ca),
    },
    Route {
        method: "get",
        path: "/cacertificates",
        operation: "list-ca-certificates",
        summary: "List CA certificates",
        handler: |m| on(m, list_cas),
    },
    Route {
        method: "get",
        path: "/cacertificate/{caCertificateId}",
        operation: "describe-ca-certificate",
        summary: "Describe a CA certificate",
        handler: |m| on(m, describe_ca),
    },
    Route {
        method: "put",
        path: "/cacertificate/{caCertificateId}",
        operation: "update-ca-certificate",
        summary: "Change status, auto-registration, template",
        handler: |m| on(m, update_ca),
    },
    Route {
        method: "post",
        path: "/certificate/register",
        operation: "register-certificate",
        summary: "Register a device certificate",
        handler: |m| on(m, register_certificate),
    },
    Route {
        method: "get",
        path: "/certificates",
        operation: "list-certificates",
        summary: "List device certificates",
        handler: |m| on(m, list_certificates),
    },
    Route {
        method: "get",
        path: "/certificates/{certificateId}",
        operation: "describe-certificate",
        summary: "Describe a device certificate",
        handler: |m| on(m, describe_certificate),
    },
    Route {
        method: "put",
        path: "/certificates/{certificateId}",
        operation: "update-certificate",
        summary: "Change a certificate's status (live sessions end when it leaves ACTIVE)",
        handler: |m| on(m, update_certificate),
    },
    Route {
        method: "post",
        path: "/provisioning-templates",
        operation: "create-provisioning-template",
        summary: "Create a provisioning template",
        handler: |m| on(m, create_template),
    },
    Route {
        method: "get",
        path: "/provisioning-templates",
        operation: "list-provisioning-templates",
        summary: "List provisioning templates",
        handler: |m| on(m, list_templates),
    },
    Route {
        method: "get",
        path: "/provisioning-templates/{templateName}",
        operation: "describe-provisioning-template",
        summary: "Describe a template",
        handler: |m| on(m, describe_template),
    },
    Route {
        method: "patch",
        path: "/provisioning-templates/{templateName}",
        operation: "update-provisioning-template",
        summary: "Update a template",
        handler: |m| on(m, update_template),
    },
    Route {
        method: "delete",
        path: "/provisioning-templates/{templateName}",
        operation: "delete-provisioning-template",
        summary: "Delete a template",
        handler: |m| on(m, delete_template),
    },
    Route {
        method: "post",
        path: "/policies/{policyName}",
        operation: "create-policy",
        summary: "Create a policy",
        handler: |m| on(m, create_policy),
    },
    Route {
        method: "get",
        path: "/policies/{policyName}",
        operation: "get-policy",
        summary: "Get a policy",
        handler: |m| on(m, get_policy),
    },
    Route {
        method: "get",
        path: "/policies",
        operation: "list-policies",
        summary: "List policies",
        handler: |m| on(m, list_policies),
    },
    Route {
        method: "put",
        path: "/target-policies/{policyName}",
        operation: "attach-policy",
        summary: "Attach a policy to a certificate or thing group ARN",
        handler: |m| on(m, attach_policy),
    },
    Route {
        method: "post",
        path: "/target-policies/{policyName}",
        operation: "detach-policy",
        summary: "Detach a policy",
        handler: |m| on(m, detach_policy),
    },
    Route {
        method: "post",
        path: "/things/{thingName}",
        operation: "create-thing",
        summary: "Create a thing",
        handler: |m| on(m, create_thing),
    },
    Route {
        method: "get",
        path: "/things/{thingName}",
        operation: "describe-thing",
        summary: "Describe a thing",
        handler: |m| on(m, describe_thing),
    },
    Route {
        method: "delete",
        path: "/things/{thingName}",
        operation: "delete-thing",
        summary: "Delete a thing",
        handler: |m| on(m, delete_thing),
    },
    Route {
        method: "get",
        path: "/things",
        operation: "list-things",
        summary: "List things",
        handler: |m| on(m, list_things),
    },
    Route {
        method: "post",
        path: "/thing-types/{thingTypeName}",
        operation: "create-thing-type",
        summary: "Create a thing type",
        handler: |m| on(m, create_thing_type),
    },
    Route {
        method: "post",
        path: "/thing-groups/{thingGroupName}",
        operation: "create-thing-group",
        summary: "Create a thing group",
        handler: |m| on(m, create_thing_group),
    },
    Route {
        method: "put",
        path: "/thing-groups/addThingToThingGroup",
        operation: "add-thing-to-thing-group",
        summary: "Add a thing to a group",
        handler: |m| on(m, add_thing_to_group),
    },
    Route {
        method: "put",
        path: "/things/{thingName}/principals",
        operation: "attach-thing-principal",
        summary: "Attach a certificate ARN to a thing",
        handler: |m| on(m, attach_thing_principal),
    },
    Route {
        method: "get",
        path: "/provisioning-failures",
        operation: "list-provisioning-failures",
        summary: "Why provisioning failed, newest first",
        handler: |m| on(m, provisioning_failures),
    },
    Route {
        method: "get",
        path: "/claim-issuers",
        operation: "list-claim-issuers",
        summary: "The claim issuers (staging keys) this account trusts",
        handler: |m| on(m, list_claim_issuers),
    },
    Route {
        method: "put",
        path: "/claim-issuers/{name}",
        operation: "put-claim-issuer",
        summary: "Trust a claim issuer's public key for CAs registered with requireClaim",
        handler: |m| on(m, put_claim_issuer),
    },
    Route {
        method: "post",
        path: "/claim-releases",
        operation: "release-claim",
        summary: "Apply staging's signed release notice: the claim's device is admitted no more",
        handler: |m| on(m, release_claim),
    },
];

/// Serves the API on `listener` until shutdown.
pub async fn serve(server: AccountServer, listener: TcpListener, http: HttpLimits) -> std::io::Result<()> {
    let shutdown = server.shared.shutdown.clone();
    let app = router_with(server, http.max_body);
    claimlink_service::serve_http("admin-api", listener, None, http, shutdown, move |_| app.clone()).await
}

/// The API's routes.
pub fn router(server: AccountServer) -> Router {
    router_with(server, HttpLimits::default().max_body)
}

/// The API's routes, taking request bodies of at most `max_body` bytes.
pub fn router_with(server: AccountServer, max_body: usize) -> Router {
    claimlink_service::api::router(ROUTES)
        .route("/openapi.json", get(openapi))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "ResourceNotFoundException", "no such API path")
        })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::map_response(json_errors))
        .with_state(server)
}

async fn openapi() -> axum::Json<Value> {
    axum::Json(openapi_document("claimlink account API", ROUTES, account_operation, true))
}

fn plain(body: Option<Value>) -> Operation {
    Operation { query: Vec::new(), body, response: json!({ "type": "object" }) }
}

fn account_operation(op: &str) -> Operation {
    let s = || json!({ "type": "string" });
    let b = || json!({ "type": "boolean" });
    let name = || json!({ "type": "string", "pattern": "^[a-zA-Z0-9:_-]{1,128}$" });
    let attributes = || {
        object(
            &[],
            json!({ "attributes": {
        "type": "object", "maxProperties": 50,
        "propertyNames": { "pattern": "^[a-zA-Z0-9_.,@/:#-]{1,128}$" },
        "additionalProperties": { "type": "string", "maxLength": 800, "pattern": "^[^\\x00-\\x1f\\x7f-\\x9f]*$" } } }),
        )
    };
    let registration = || object(&[], json!({ "templateName": s() }));
    match op {
        "list-ca-certificates" | "list-certificates" => list("certificates", Vec::new()),
        "list-provisioning-templates" => list("templates", Vec::new()),
        "list-policies" => list("policies", Vec::new()),
        "list-things" => list("things", Vec::new()),
        "list-claim-issuers" => list("claimIssuers", Vec::new()),
        "list-provisioning-failures" => list(
            "failures",
            vec![("certificateId", json!({ "type": "string", "pattern": "^[0-9a-f]{64}$" }))],
        ),
        "register-ca-certificate" => plain(Some(object(
            &["caCertificate"],
            json!({
            "caCertificate": s(), "certificateMode": { "enum": ["DEFAULT", "SNI_ONLY"] },
            "setAsActive": b(), "allowAutoRegistration": b(), "requireClaim": b(),
            "registrationConfig": registration(),
            "verificationCertificate": s() }),
        ))),
        "update-ca-certificate" => Operation {
            query: vec![
                ("newStatus", json!({ "enum": ["ACTIVE", "INACTIVE"] })),
                ("newAutoRegistrationStatus", json!({ "enum": ["ENABLE", "DISABLE"] })),
            ],
            body: Some(object(
                &[],
                json!({ "newStatus": { "enum": ["ACTIVE", "INACTIVE"] },
                "newAutoRegistrationStatus": { "enum": ["ENABLE", "DISABLE"] }, "requireClaim": b(),
                "registrationConfig": registration() }),
            )),
            response: json!({ "type": "object" }),
        },
        "register-certificate" => plain(Some(object(
            &["certificatePem"],
            json!({
            "certificatePem": s(), "caCertificatePem": s(),
            "status": { "enum": ["ACTIVE", "INACTIVE", "PENDING_ACTIVATION"] } }),
        ))),
        "update-certificate" => Operation {
            query: vec![("newStatus", json!({ "enum": ["ACTIVE", "INACTIVE", "REVOKED"] }))],
            body: Some(object(&[], json!({ "newStatus": { "enum": ["ACTIVE", "INACTIVE", "REVOKED"] } }))),
            response: json!({ "type": "object" }),
        },
        "create-provisioning-template" => plain(Some(object(
            &["templateName", "templateBody"],
            json!({
            "templateName": s(), "templateBody": s(), "enabled": b(), "description": s(),
            "type": { "enum": ["JITP", "FLEET_PROVISIONING"] } }),
        ))),
        "update-provisioning-template" => {
            plain(Some(object(&[], json!({ "templateBody": s(), "enabled": b(), "description": s() }))))
        }
        "create-policy" => plain(Some(object(&["policyDocument"], json!({ "policyDocument": s() })))),
        "attach-policy" | "detach-policy" => plain(Some(object(&["target"], json!({ "target": s() })))),
        "create-thing" => {
            plain(Some(object(&[], json!({ "thingTypeName": name(), "attributePayload": attributes() }))))
        }
        "create-thing-type" => plain(Some(object(
            &[],
            json!({ "thingTypeProperties": object(&[], json!({
            "thingTypeDescription": { "type": "string", "maxLength": 2028 },
            "searchableAttributes": { "type": "array", "maxItems": 3,
                "items": { "type": "string", "pattern": "^[a-zA-Z0-9_.,@/:#-]{1,128}$" } } })) }),
        ))),
        "create-thing-group" => plain(Some(object(
            &[],
            json!({ "parentGroupName": name(),
            "thingGroupProperties": object(&[], json!({ "attributePayload": attributes() })) }),
        ))),
        "add-thing-to-thing-group" => plain(Some(object(
            &["thingGroupName", "thingName"],
            json!({ "thingGroupName": s(), "thingName": s() }),
        ))),
        "attach-thing-principal" => plain(Some(object(&["principal"], json!({ "principal": s() })))),
        "put-claim-issuer" => plain(Some(object(&["publicKeyPem"], json!({ "publicKeyPem": s() })))),
        "release-claim" => plain(Some(object(&["releaseNotice"], json!({ "releaseNotice": s() })))),
        _ => plain(None),
    }
}

/// Who calls the admin API: the account its bearer token stands for, and the token's name
/// (the actor of the audit trail). Every operation takes one; without a valid token the
/// request is refused before its handler runs.
pub(crate) struct Caller {
    account: Account,
    actor: String,
}

impl FromRequestParts<AccountServer> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, server: &AccountServer) -> Result<Self, ApiError> {
        let unauthorized = || {
            ApiError::new(StatusCode::UNAUTHORIZED, "UnauthorizedException", "a valid API token is required")
        };
        let token = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .ok_or_else(unauthorized)?;
        let mut tx = server.store().read().await?;
        let (account, actor) = tx.account_for_token(token.trim()).await?.ok_or_else(unauthorized)?;
        Ok(Self { account, actor })
    }
}

fn body(bytes: &Bytes) -> Result<serde_json::Map<String, Value>, ApiError> {
    if bytes.is_empty() {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad("the request body must be a JSON object")),
        Err(e) => Err(ApiError::bad(format!("the request body is not valid JSON: {e}"))),
    }
}

fn field<'a>(m: &'a serde_json::Map<String, Value>, name: &str) -> Result<Option<&'a str>, ApiError> {
    match m.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::bad(format!("{name} must be a string"))),
    }
}

fn required<'a>(m: &'a serde_json::Map<String, Value>, name: &str) -> Result<&'a str, ApiError> {
    field(m, name)?.ok_or_else(|| ApiError::bad(format!("{name} is required")))
}

fn flag(m: &serde_json::Map<String, Value>, name: &str) -> Result<Option<bool>, ApiError> {
    match m.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::bad(format!("{name} must be true or false"))),
    }
}

fn string_map(v: Option<&Value>, what: &str) -> Result<BTreeMap<String, String>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| {
                v.as_str()
                    .map(|s| (k.clone(), s.to_owned()))
                    .ok_or_else(|| ApiError::bad(format!("{what} values must be strings")))
            })
            .collect(),
        Some(_) => Err(ApiError::bad(format!("{what} must be an object"))),
    }
}

fn arn(a: &Account, rest: &str) -> String {
    let partition = if a.region.starts_with("cn-") { "aws-cn" } else { "aws" };
    format!("arn:{partition}:iot:{}:{}:{rest}", a.region, a.id)
}

async fn describe_endpoint(Caller { account: a, .. }: Caller) -> ApiResult {
    Ok(axum::Json(json!({ "endpointAddress": a.endpoint })))
}

async fn registration_code(Caller { account: a, .. }: Caller) -> ApiResult {
    Ok(axum::Json(json!({ "registrationCode": a.registration_code })))
}

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

async fn register_ca(
    State(s): State<AccountServer>,
    Caller { account: a, actor }: Caller,
    b: Bytes,
) -> ApiResult {
    let m = body(&b)?;
    let mode = match field(&m, "certificateMode")? {
        Some(mode) => CaMode::parse(mode)?,
        None => CaMode::Default,
    };
    let template = match m.get("registrationConfig") {
        Some(Value::Object(rc)) => field(rc, "templateName")?.map(str::to_owned),
        None | Some(Value::Null) => None,
        Some(_) => return Err(ApiError::bad("registrationConfig must be an object")),
    };
    let new = NewCa {
        pem: required(&m, "caCertificate")?,
        mode,
        status: if flag(&m, "setAsActive")?.unwrap_or(false) { CaStatus::Active } else { CaStatus::Inactive },
        auto_registration: flag(&m, "allowAutoRegistration")?.unwrap_or(false),
        template_name: template.as_deref(),
        verification_pem: field(&m, "verificationCertificate")?,
    };
    let require_claim = flag(&m, "requireClaim")?.unwrap_or(false);
    let mut tx = Audited::begin(s.store(), Some(&a.id), &actor).await?;
    let ca = tx.register_ca(&a, &new).await?;
    if require_claim {
        tx.set_ca_require_claim(&a.id, &ca.id, true).await?;
    }
    tx.commit("RegisterCACertificate", &ca.id).await?;
    let _ = s.reload(&a.id).await;
    Ok(axum::Json(json!({ "certificateArn": arn(&a, &format!("cacert/{}", ca.id)), "certificateId": ca.id })))
}

async fn list_cas(
    State(s): State<AccountServer>,
    Caller { account: a, .. }: Caller,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult {
    let page = Page::parse(&q)?;
    let cas = s.store().read().await?.list_cas(&a.id).await?;
    Ok(axum::Json(page.slice("certificates", cas, |c| c.id.clone(), |c| {
        json!({ "certificateArn": arn(&a, &format!("cacert/{}", c.id)), "certificateId": c.id, "status": c.status, "certificateMode": c.mode, "creationDate": c.created as f64 / 1000.0 })
    })))
}

async fn describe_ca(
    State(s): State<AccountServer>,
    Caller { account: a, .. }: Caller,
    Path(id): Path<String>,
) -> ApiResult {
    let ca = s.store().read().await?.describe_ca(&a.id, &id).await?;
    Ok(axum::Json(json!({
        "certificateDescription": ca_json(&a, &ca),
        "registrationConfig": { "templateName": ca.template_name },
    })))
}

async fn update_ca(
    State(s): State<AccountServer>,
    Caller { account: a, actor }: Caller,
    Path(id): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
    b: Bytes,
) -> ApiResult {
    let m = body(&b)?;
    let status = match q.get("newStatus").map(String::as_str).or(field(&m, "newStatus")?) {
        Some(v) => Some(CaStatus::parse(v)?),
        None => None,
    };
    let auto = match q
        .get("newAutoRegistrationStatus")
        .map(String::as_str)
        .or(field(&m, "newAutoRegistrationStatus")?)
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
    let template = match m.get("registrationConfig") {
        Some(Value::Object(rc)) => Some(field(rc, "templateName")?),
        None => None,
        Some(_) => return Err(ApiError::bad("registrationConfig must be an object")),
    };
    let require_claim = flag(&m, "requireClaim")?;
    let mut tx = Audited::begin(s.store(), Some(&a.id), &actor).await?;
    tx.update_ca(&a.id, &id, status, auto, template).await?;
    if let Some(r) = require_claim {
        tx.set_ca_require_claim(&a.id, &id, r).await?;
    }
    tx.commit("UpdateCACertificate", &id).await?;
    let _ = s.reload(&a.id).await;
    if status.is_some_and(|st| st != CaStatus::Active) {
        let dropped = s.drop_where(&a.id, |l| l.ca_id.as_deref() == Some(id.as_str()));
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

async fn register_certificate(
    State(s): State<AccountServer>,
    Caller { account: a, actor }: Caller,
    b: Bytes,
) -> ApiResult {
    let m = body(&b)?;
    let pem = required(&m, "certificatePem")?;
    let status = match field(&m, "status")? {
        Some(v) => CertificateStatus::parse(v)?,
        None => CertificateStatus::Inactive,
    };
    let mut tx = Audited::begin(s.store(), Some(&a.id), &actor).await?;
    let ca_id = match field(&m, "caCertificatePem")? {
        Some(ca_pem) => {
            let ca = claimlink_registry::parse_certificate_pem(ca_pem)?;
            let id = ca.id().to_string();
            tx.describe_ca(&a.id, &id).await?;
            Some(id)
        }
        None => None,
    };
    let c = tx.register_certificate(&a.id, pem, ca_id.as_deref(), status).await?;
    tx.commit("RegisterCertificate", &c.id).await?;
    let _ = s.reload(&a.id).await;
    Ok(axum::Json(json!({ "certificateArn": arn(&a, &format!("cert/{}", c.id)), "certificateId": c.id })))
}

async fn list_certificates(
    State(s): State<AccountServer>,
    Caller { account: a, .. }: Caller,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult {
    let page = Page::parse(&q)?;
    let certs = s.store().read().await?.certificates_page(&a.id, page.after.as_deref(), page.fetch()).await?;
    Ok(axum::Json(page.respond("certificates", certs, |c| c.id.clone(), |c| {
        json!({ "certificateArn": arn(&a, &format!("cert/{}", c.id)), "certificateId": c.id, "status": c.status, "creationDate": c.created as f64 / 1000.0 })
    })))
}

async fn describe_certificate(
    State(s): State<AccountServer>,
    Caller { account: a, .. }: Caller,
    Path(id): Path<String>,
) -> ApiResult {
    let c = s.store().read().await?.describe_certificate(&a.id, &id).await?;
    Ok(axum::Json(json!({ "certificateDescription": cert_json(&a, &c) })))
}

async fn update_certificate(
    State(s): State<AccountServer>,
    Caller { account: a, actor }: Caller,
    Path(id): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
    b: Bytes,
) -> ApiResult {
    let m = body(&b)?;
    let status = q
        .get("newStatus")
        .map(String::as_str)
        .or(field(&m, "newStatus")?)
        .ok_or_else(|| ApiError::bad("newStatus is required"))?;
    let status = CertificateStatus::parse(status)?;
    let mut tx = Audited::begin(s.store(), Some(&a.id), &actor).await?;
    tx.update_certificate_status(&a.id, &id, status).await?;
    tx.commit("UpdateCertificate", &id).await?;
    let _ = s.reload(&a.id).await;
    if status != CertificateStatus::Active {
        let dropped = s.drop_sessions(&a.id, &id);
        tracing::info!(certificate = %id, %status, dropped, "certificate left ACTIVE");
    }
    Ok(axum::Json(json!({})))
}

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

async fn create_template(
    State(s): State<AccountServer>,
    Caller { account: a, actor }: Caller,
    b: Bytes,
) -> ApiResult {
    let m = body(&b)?;
    let name = required(&m, "templateName")?;
    let body_text = required(&m, "templateBody")?;
    claimlink_provision::Template::parse(body_text)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.code(), e.to_string()))?;
    let kind = match field(&m, "type")? {
        Some(k) => TemplateKind::parse(k)?,
        None => TemplateKind::FleetProvisioning,
    };
    let mut tx = Audited::begin(s.store(), Some(&a.id), &actor).await?;
    let t = tx
        .create_template(
            &a.id,
            name,
            kind,
            body_text,
            flag(&m, "enabled")?.unwrap_or(false),
            field(&m, "description")?,
        )
        .await?;
    tx.commit("CreateProvisioningTemplate", name).await?;
    Ok(axum::Json(
        json!({ "templateArn": arn(&a, &format!("provisioningtemplate/{}", t.name)), "templateName": t.name, "defaultVersionId": 1 }),
    ))
}

async fn list_templates(
    State(s): State<AccountServer>,
    Caller { account: a, .. }: Caller,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult {
    let page = Page::parse(&q)?;
    let ts = s.store().read().await?.list_templates(&a.id).await?;
    Ok(axum::Json(page.slice(
        "templates",
        ts,
        |t| t.name.clone(),
        |t| {
            let mut v = template_json(&a, t);
            v.as_object_mut().map(|o| o.remove("templateBody"));
            v
        },
    )))
}

async fn describe_template(
    State(s): State<AccountServer>,
    Caller { account: a, .. }: Caller,
    Path(name): Path<String>,
) -> ApiResult {
    let t = s.store().read().await?.template(&a.id, &name).await?;
    Ok(axum::Json(template_json(&a, &t)))
}

async fn update_template(
    State(s): State<AccountServer>,
    Caller { account: a, actor }: Caller,
    Path(name): Path<String>,
    b: Bytes,
) -> ApiResult {
    let m = body(&b)?;
    let new_body = field(&m, "templateBody")?;
    if let Some(text) = new_body {
        claimlink_provision::Template::parse(text)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.code(), e.to_string()))?;
    }
    let mut tx = Audited::begin(s.store(), Some(&a.id), &actor).await?;
    tx.update_template(&a.id, &name, new_body, flag(&m, "enabled")?, field(&m, "description")?).await?;
    tx.commit("UpdateProvisioningTemplate", &name).await?;
    Ok(axum::Json(json!({})))
}

async fn delete_template(
    State(s): State<AccountServer>,
    Caller { account: a, actor }: Caller,
    Path(name): Path<String>,
) -> ApiResult {
    let mut tx = Audited::begin(s.store(), Some(&a.id), &actor).await?;
    tx.delete_template(&a.id, &name).await?;
    tx.commit("DeleteProvisioningTemplate", &name).await?;
    Ok(axum::Json(json!({})))
}

async fn create_policy(
    State(s): State<AccountServer>,
    Caller { account: a, actor }: Caller,
    Path(name): Path<String>,
    b: Bytes,
) -> ApiResult {
    let m = body(&b)?;
    let doc = required(&m, "policyDocument")?;
    claimlink_policy::Policy::parse(doc)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.code(), e.to_string()))?;
    let mut tx = Audited::begin(s.store(), Some(&a.id), &actor).await?;
    let (p, warnings) = tx.create_policy(&a.id, &name, doc).await?;
    tx.commit("CreatePolicy", &name).await?;
    Ok(axum::Json(json!({
        "policyName": p.name,
        "policyArn": arn(&a, &format!("policy/{}", p.name)),
        "policyDocument": p.document,
        "policyVersionId": p.default_version.to_string(),
        "warnings": warnings,
    })))
}

async fn get_policy(
    State(s): State<AccountServer>,
    Caller { account: a, .. }: Caller,
    Path(name): Path<String>,
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

async fn list_policies(
    State(s): State<AccountServer>,
    Caller { account: a, .. }: Caller,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult {
    let page = Page::parse(&q)?;
    let ps = s.store().read().await?.list_policies(&a.id).await?;
    Ok(axum::Json(page.slice(
        "policies",
        ps,
        |p| p.name.clone(),
        |p| json!({ "policyName": p.name, "policyArn": arn(&a, &format!("policy/{}", p.name)) }),
    )))
}

/// A certificate or thing group ARN of this account, or a bare certificate id.
fn policy_target(a: &Account, target: &str) -> Result<PolicyTarget, ApiError> {
    let prefix = arn(a, "");
    let rest = target.strip_prefix(&prefix).unwrap_or(target);
    if let Some(id) = rest.strip_prefix("cert/") {
        Ok(PolicyTarget::Certificate(id.to_owned()))
    } else if let Some(g) = rest.strip_prefix("thinggroup/") {
        Ok(PolicyTarget::ThingGroup(g.to_owned()))
    } else if rest.len() == 64 && rest.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(PolicyTarget::Certificate(rest.to_owned()))
    } else {
        Err(ApiError::bad(format!(
            "target {target:?} is not a certificate or thing group ARN of this account ({prefix}...)"
        )))
    }
}

async fn attach_policy(
    State(s): State<AccountServer>,
    Caller { account: a, actor }: Caller,
    Path(name): Path<String>,
    b: Bytes,
) -> ApiResult {
    let m = body(&b)?;
    let target = policy_target(&a, required(&m, "target")?)?;
    let mut tx = Audited::begin(s.store(), Some(&a.id), &actor).await?;
    tx.attach_policy(&a.id, &name, &target).await?;
    tx.commit("AttachPolicy", &name).await?;
    rebind(&s, &a, &target).await?;
    Ok(axum::Json(json!({})))
}

async fn detach_policy(
    State(s): State<AccountServer>,
    Caller { account: a, actor }: Caller,
    Path(name): Path<String>,
    b: Bytes,
) -> ApiResult {
    let m = body(&b)?;
    let target = policy_target(&a, required(&m, "target")?)?;
    let mut tx = Audited::begin(s.store(), Some(&a.id), &actor).await?;
    tx.detach_policy(&a.id, &name, &target).await?;
    tx.commit("DetachPolicy", &name).await?;
    rebind(&s, &a, &target).await?;
    Ok(axum::Json(json!({})))
}

/// Ends the live sessions whose rights a change of `target`'s policies affects (they
/// reconnect and are bound again): the certificate's, or those of the group's things.
async fn rebind(s: &AccountServer, a: &Account, target: &PolicyTarget) -> Result<(), ApiError> {
    let dropped = match target {
        PolicyTarget::Certificate(id) => s.drop_sessions(&a.id, id),
        PolicyTarget::ThingGroup(group) => {
            let things: std::collections::HashSet<String> =
                s.store().read().await?.things_in_group(&a.id, group).await?.into_iter().collect();
            s.drop_where(&a.id, |l| l.thing_name.as_ref().is_some_and(|t| things.contains(t)))
        }
    };
    tracing::info!(?target, dropped, "policies changed: affected sessions ended");
    Ok(())
}

fn drop_thing_sessions(s: &AccountServer, a: &Account, thing: &str) {
    let dropped = s.drop_where(&a.id, |l| l.thing_name.as_deref() == Some(thing));
    tracing::info!(thing, dropped, "thing changed: its sessions ended");
}

fn thing_json(a: &Account, t: &claimlink_registry::Thing) -> Value {
    json!({
        "thingName": t.name,
        "thingArn": arn(a, &format!("thing/{}", t.name)),
        "thingTypeName": t.thing_type,
        "attributes": t.attributes,
        "version": t.version,
    })
}

async fn create_thing(
    State(s): State<AccountServer>,
    Caller { account: a, actor }: Caller,
    Path(name): Path<String>,
    b: Bytes,
) -> ApiResult {
    let m = body(&b)?;
    let attributes = match m.get("attributePayload") {
        Some(Value::Object(p)) => string_map(p.get("attributes"), "attributes")?,
        None | Some(Value::Null) => BTreeMap::new(),
        Some(_) => return Err(ApiError::bad("attributePayload must be an object")),
    };
    let mut tx = Audited::begin(s.store(), Some(&a.id), &actor).await?;
    let t = tx.create_thing(&a.id, &name, field(&m, "thingTypeName")?, &attributes).await?;
    tx.commit("CreateThing", &name).await?;
    Ok(axum::Json(json!({ "thingName": t.name, "thingArn": arn(&a, &format!("thing/{}", t.name)) })))
}

async fn describe_thing(
    State(s): State<AccountServer>,
    Caller { account: a, .. }: Caller,
    Path(name): Path<String>,
) -> ApiResult {
    let t = s.store().read().await?.describe_thing(&a.id, &name).await?;
    Ok(axum::Json(thing_json(&a, &t)))
}

async fn delete_thing(
    State(s): State<AccountServer>,
    Caller { account: a, actor }: Caller,
    Path(name): Path<String>,
) -> ApiResult {
    let mut tx = Audited::begin(s.store(), Some(&a.id), &actor).await?;
    tx.delete_thing(&a.id, &name).await?;
    tx.commit("DeleteThing", &name).await?;
    drop_thing_sessions(&s, &a, &name);
    Ok(axum::Json(json!({})))
}

async fn list_things(
    State(s): State<AccountServer>,
    Caller { account: a, .. }: Caller,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult {
    let page = Page::parse(&q)?;
    let things = s.store().read().await?.things_page(&a.id, page.after.as_deref(), page.fetch()).await?;
    Ok(axum::Json(page.respond("things", things, |t| t.name.clone(), |t| thing_json(&a, t))))
}

async fn create_thing_type(
    State(s): State<AccountServer>,
    Caller { account: a, actor }: Caller,
    Path(name): Path<String>,
    b: Bytes,
) -> ApiResult {
    let m = body(&b)?;
    let (description, searchable) = match m.get("thingTypeProperties") {
        Some(Value::Object(p)) => {
            let searchable = match p.get("searchableAttributes") {
                Some(Value::Array(v)) => v
                    .iter()
                    .map(|x| {
                        x.as_str()
                            .map(str::to_owned)
                            .ok_or_else(|| ApiError::bad("searchableAttributes must hold strings"))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                None => Vec::new(),
                Some(_) => return Err(ApiError::bad("searchableAttributes must be a list")),
            };
            (field(p, "thingTypeDescription")?.map(str::to_owned), searchable)
        }
        None | Some(Value::Null) => (None, Vec::new()),
        Some(_) => return Err(ApiError::bad("thingTypeProperties must be an object")),
    };
    let mut tx = Audited::begin(s.store(), Some(&a.id), &actor).await?;
    tx.create_thing_type(&a.id, &name, description.as_deref(), &searchable).await?;
    tx.commit("CreateThingType", &name).await?;
    Ok(axum::Json(json!({ "thingTypeName": name, "thingTypeArn": arn(&a, &format!("thingtype/{name}")) })))
}

async fn create_thing_group(
    State(s): State<AccountServer>,
    Caller { account: a, actor }: Caller,
    Path(name): Path<String>,
    b: Bytes,
) -> ApiResult {
    let m = body(&b)?;
    let attributes = match m.get("thingGroupProperties") {
        Some(Value::Object(p)) => match p.get("attributePayload") {
            Some(Value::Object(ap)) => string_map(ap.get("attributes"), "attributes")?,
            None | Some(Value::Null) => BTreeMap::new(),
            Some(_) => return Err(ApiError::bad("attributePayload must be an object")),
        },
        None | Some(Value::Null) => BTreeMap::new(),
        Some(_) => return Err(ApiError::bad("thingGroupProperties must be an object")),
    };
    let mut tx = Audited::begin(s.store(), Some(&a.id), &actor).await?;
    tx.create_thing_group(&a.id, &name, field(&m, "parentGroupName")?, &attributes).await?;
    tx.commit("CreateThingGroup", &name).await?;
    Ok(axum::Json(json!({ "thingGroupName": name, "thingGroupArn": arn(&a, &format!("thinggroup/{name}")) })))
}

async fn add_thing_to_group(
    State(s): State<AccountServer>,
    Caller { account: a, actor }: Caller,
    b: Bytes,
) -> ApiResult {
    let m = body(&b)?;
    let group = required(&m, "thingGroupName")?;
    let thing = required(&m, "thingName")?;
    let mut tx = Audited::begin(s.store(), Some(&a.id), &actor).await?;
    tx.add_thing_to_group(&a.id, group, thing).await?;
    tx.commit("AddThingToThingGroup", thing).await?;
    drop_thing_sessions(&s, &a, thing);
    Ok(axum::Json(json!({})))
}

async fn attach_thing_principal(
    State(s): State<AccountServer>,
    Caller { account: a, actor }: Caller,
    Path(name): Path<String>,
    h: HeaderMap,
    b: Bytes,
) -> ApiResult {
    let m = body(&b)?;
    let principal = match h.get("x-amzn-iot-principal").and_then(|v| v.to_str().ok()) {
        Some(p) => p.to_owned(),
        None => required(&m, "principal")?.to_owned(),
    };
    let PolicyTarget::Certificate(cert) = policy_target(&a, &principal)? else {
        return Err(ApiError::bad("the principal must be a certificate ARN"));
    };
    let mut tx = Audited::begin(s.store(), Some(&a.id), &actor).await?;
    tx.attach_thing_principal(&a.id, &name, &cert).await?;
    tx.commit("AttachThingPrincipal", &name).await?;
    s.drop_sessions(&a.id, &cert);
    Ok(axum::Json(json!({})))
}

async fn provisioning_failures(
    State(s): State<AccountServer>,
    Caller { account: a, .. }: Caller,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult {
    let page = Page::parse(&q)?;
    if q.get("certificateId")
        .is_some_and(|id| id.len() != 64 || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
    {
        return Err(ApiError::bad("certificateId is 64 lowercase hex characters"));
    }
    let before = match &page.after {
        Some(k) => Some(k.parse::<i64>().map_err(|_| ApiError::bad("nextToken is not one this API gave"))?),
        None => None,
    };
    let failures = s
        .store()
        .read()
        .await?
        .provisioning_failures_page(&a.id, q.get("certificateId").map(String::as_str), before, page.fetch())
        .await?;
    Ok(axum::Json(page.respond("failures", failures, |(id, _)| id.to_string(), |(_, f)| json!(f))))
}

async fn list_claim_issuers(
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

async fn put_claim_issuer(
    State(s): State<AccountServer>,
    Caller { account: a, actor }: Caller,
    Path(name): Path<String>,
    b: Bytes,
) -> ApiResult {
    let m = body(&b)?;
    let pem = required(&m, "publicKeyPem")?;
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

async fn release_claim(
    State(s): State<AccountServer>,
    Caller { account: a, .. }: Caller,
    b: Bytes,
) -> ApiResult {
    let m = body(&b)?;
    let notice = required(&m, "releaseNotice")?;
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

/// Used by tests: the method of a route-table entry.
pub fn method_of(m: &str) -> Method {
    match m {
        "post" => Method::POST,
        "put" => Method::PUT,
        "patch" => Method::PATCH,
        "delete" => Method::DELETE,
        _ => Method::GET,
    }
}
