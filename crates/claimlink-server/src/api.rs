//! The admin REST API of the account endpoint, shaped like AWS IoT's control plane (paths,
//! verbs, JSON field names), authenticated with per-account API tokens (`Authorization: Bearer
//! clk_...`, stored hashed). Errors are `{"code": ..., "message": ...}` with a 4xx status and a
//! stable code; a refused request changes nothing. The OpenAPI document is at `/openapi.json`.

use std::collections::BTreeMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use claimlink_registry::{
    Account, AuditRecord, CaMode, CaStatus, CertificateStatus, NewCa, PolicyTarget, RegistryError,
    TemplateKind, Tx,
};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::AccountServer;

/// Largest request body.
const MAX_BODY: usize = 64 * 1024;

/// An API error: status and stable code.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    pub(crate) fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidRequestException", message)
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        let status = match &e {
            RegistryError::NotFound { .. } => StatusCode::NOT_FOUND,
            RegistryError::AlreadyExists { .. } | RegistryError::State(_) | RegistryError::InUse { .. } => {
                StatusCode::CONFLICT
            }
            RegistryError::Invalid(_) | RegistryError::LimitExceeded(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, "registry failure in the API");
            "internal failure".to_owned()
        } else {
            e.to_string()
        };
        Self { status, code: e.code(), message }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({ "code": self.code, "message": self.message }))).into_response()
    }
}

type ApiResult = Result<axum::Json<Value>, ApiError>;

/// The routes: method, path, operation (the AWS CLI verb), summary. The OpenAPI document is
/// made from this table, and a test checks that every entry is served.
pub const ROUTES: &[(&str, &str, &str, &str)] = &[
    ("get", "/endpoint", "describe-endpoint", "The MQTT endpoint of the account"),
    (
        "get",
        "/registrationcode",
        "get-registration-code",
        "The code a DEFAULT-mode CA's verification certificate carries as CN",
    ),
    ("post", "/cacertificate", "register-ca-certificate", "Register a CA certificate"),
    ("get", "/cacertificates", "list-ca-certificates", "List CA certificates"),
    ("get", "/cacertificate/{caCertificateId}", "describe-ca-certificate", "Describe a CA certificate"),
    (
        "put",
        "/cacertificate/{caCertificateId}",
        "update-ca-certificate",
        "Change status, auto-registration, template",
    ),
    ("post", "/certificate/register", "register-certificate", "Register a device certificate"),
    ("get", "/certificates", "list-certificates", "List device certificates"),
    ("get", "/certificates/{certificateId}", "describe-certificate", "Describe a device certificate"),
    (
        "put",
        "/certificates/{certificateId}",
        "update-certificate",
        "Change a certificate's status (live sessions end when it leaves ACTIVE)",
    ),
    ("post", "/provisioning-templates", "create-provisioning-template", "Create a provisioning template"),
    ("get", "/provisioning-templates", "list-provisioning-templates", "List provisioning templates"),
    (
        "get",
        "/provisioning-templates/{templateName}",
        "describe-provisioning-template",
        "Describe a template",
    ),
    ("patch", "/provisioning-templates/{templateName}", "update-provisioning-template", "Update a template"),
    ("delete", "/provisioning-templates/{templateName}", "delete-provisioning-template", "Delete a template"),
    ("post", "/policies/{policyName}", "create-policy", "Create a policy"),
    ("get", "/policies/{policyName}", "get-policy", "Get a policy"),
    ("get", "/policies", "list-policies", "List policies"),
    (
        "put",
        "/target-policies/{policyName}",
        "attach-policy",
        "Attach a policy to a certificate or thing group ARN",
    ),
    ("post", "/target-policies/{policyName}", "detach-policy", "Detach a policy"),
    ("post", "/things/{thingName}", "create-thing", "Create a thing"),
    ("get", "/things/{thingName}", "describe-thing", "Describe a thing"),
    ("delete", "/things/{thingName}", "delete-thing", "Delete a thing"),
    ("get", "/things", "list-things", "List things"),
    ("post", "/thing-types/{thingTypeName}", "create-thing-type", "Create a thing type"),
    ("post", "/thing-groups/{thingGroupName}", "create-thing-group", "Create a thing group"),
    ("put", "/thing-groups/addThingToThingGroup", "add-thing-to-thing-group", "Add a thing to a group"),
    (
        "put",
        "/things/{thingName}/principals",
        "attach-thing-principal",
        "Attach a certificate ARN to a thing",
    ),
    ("get", "/provisioning-failures", "list-provisioning-failures", "Why provisioning failed, newest first"),
    ("get", "/claim-issuers", "list-claim-issuers", "The claim issuers (staging keys) this account trusts"),
    (
        "put",
        "/claim-issuers/{name}",
        "put-claim-issuer",
        "Trust a claim issuer's public key for CAs registered with requireClaim",
    ),
    (
        "post",
        "/claim-releases",
        "release-claim",
        "Apply staging's signed release notice: the claim's device is admitted no more",
    ),
];

/// Serves the API on `listener` until shutdown.
pub async fn serve(server: AccountServer, listener: TcpListener) -> std::io::Result<()> {
    let shutdown = server.shared.shutdown.clone();
    let app = router(server);
    crate::serve_http("admin-api", listener, None, shutdown, move |_| app.clone()).await
}

/// The API's routes.
pub fn router(server: AccountServer) -> Router {
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/endpoint", get(describe_endpoint))
        .route("/registrationcode", get(registration_code))
        .route("/cacertificate", post(register_ca))
        .route("/cacertificates", get(list_cas))
        .route("/cacertificate/{id}", get(describe_ca).put(update_ca))
        .route("/certificate/register", post(register_certificate))
        .route("/certificates", get(list_certificates))
        .route("/certificates/{id}", get(describe_certificate).put(update_certificate))
        .route("/provisioning-templates", post(create_template).get(list_templates))
        .route(
            "/provisioning-templates/{name}",
            get(describe_template).patch(update_template).delete(delete_template),
        )
        .route("/policies", get(list_policies))
        .route("/policies/{name}", post(create_policy).get(get_policy))
        .route("/target-policies/{name}", put(attach_policy).post(detach_policy))
        .route("/things", get(list_things))
        .route("/things/{name}", post(create_thing).get(describe_thing).delete(delete_thing))
        .route("/things/{name}/principals", put(attach_thing_principal))
        .route("/thing-types/{name}", post(create_thing_type))
        .route("/thing-groups/addThingToThingGroup", put(add_thing_to_group))
        .route("/thing-groups/{name}", post(create_thing_group))
        .route("/provisioning-failures", get(provisioning_failures))
        .route("/claim-issuers", get(list_claim_issuers))
        .route("/claim-issuers/{name}", put(put_claim_issuer))
        .route("/claim-releases", post(release_claim))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "ResourceNotFoundException", "no such API path")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::map_response(json_errors))
        .with_state(server)
}

/// Every error an API answers is `{"code", "message"}` JSON, including the ones axum makes
/// itself before a handler runs (a body over the route's limit, a malformed query string or
/// path parameter, a method the path does not take).
pub(crate) async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let detail = axum::body::to_bytes(body, 2048).await.unwrap_or_default();
    let detail = String::from_utf8_lossy(&detail).trim().to_owned();
    let (code, message) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => {
            ("PayloadTooLarge", "the request body is larger than this route accepts".to_owned())
        }
        StatusCode::NOT_FOUND => ("ResourceNotFoundException", "no such API path".to_owned()),
        StatusCode::METHOD_NOT_ALLOWED => {
            ("MethodNotAllowed", "this path does not take this method".to_owned())
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("UnsupportedMediaType", detail),
        s if s.is_client_error() => ("InvalidRequestException", detail),
        _ => ("InternalFailureException", "the request failed; try again".to_owned()),
    };
    let mut out = (status, axum::Json(json!({ "code": code, "message": message }))).into_response();
    if let Some(allow) = parts.headers.get(axum::http::header::ALLOW) {
        out.headers_mut().insert(axum::http::header::ALLOW, allow.clone());
    }
    out
}

async fn openapi() -> axum::Json<Value> {
    axum::Json(openapi_document("claimlink account API", ROUTES, account_operation, true))
}

/// The pattern and length of a path parameter, by its name.
fn path_parameter(name: &str) -> Value {
    match name {
        "caCertificateId" | "certificateId" => json!({ "type": "string", "pattern": "^[0-9a-f]{64}$" }),
        "thing" | "thingName" | "thingTypeName" | "thingGroupName" => {
            json!({ "type": "string", "pattern": "^[a-zA-Z0-9:_-]{1,128}$" })
        }
        "templateName" => json!({ "type": "string", "pattern": "^[0-9A-Za-z_-]{1,36}$" }),
        "policyName" => json!({ "type": "string", "pattern": "^[a-zA-Z0-9_+=,.@-]{1,128}$" }),
        "oemId" => {
            json!({ "type": "string", "pattern": "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$" })
        }
        _ => json!({ "type": "string", "pattern": "^[a-zA-Z0-9_.-]{1,128}$" }),
    }
}

/// What one operation takes and gives: query parameters, request body and response schemas.
pub(crate) struct Operation {
    /// Query parameters: (name, schema).
    pub(crate) query: Vec<(&'static str, Value)>,
    /// The JSON request body's schema, when it takes one.
    pub(crate) body: Option<Value>,
    /// The 200 response's schema.
    pub(crate) response: Value,
}

/// An object schema. The API takes `null` for an optional field as its absence, so optional
/// properties say so.
pub(crate) fn object(required: &[&str], mut properties: Value) -> Value {
    if let Some(props) = properties.as_object_mut() {
        for (name, schema) in props.iter_mut() {
            if !required.contains(&name.as_str()) {
                *schema = json!({ "anyOf": [schema.take(), { "type": "null" }] });
            }
        }
    }
    json!({ "type": "object", "required": required, "properties": properties })
}

/// A list's response: `{field: [...], "nextToken"?}`, with the paging parameters.
pub(crate) fn list(field: &str, extra_query: Vec<(&'static str, Value)>) -> Operation {
    let mut query = vec![
        ("maxResults", json!({ "type": "integer", "minimum": 1, "maximum": MAX_PAGE })),
        ("nextToken", json!({ "type": "string", "pattern": "^([0-9a-f]{2}){1,256}$" })),
    ];
    query.extend(extra_query);
    let response = object(
        &[field],
        json!({ field: { "type": "array", "items": { "type": "object" } },
        "nextToken": { "type": "string" } }),
    );
    Operation { query, body: None, response }
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

/// An OpenAPI 3.0 document from a route table (method, path, operation, summary) and what
/// each operation takes and gives; the same table drives the router's test.
pub(crate) fn openapi_document(
    title: &str,
    routes: &[(&str, &str, &str, &str)],
    operation: fn(&str) -> Operation,
    bearer: bool,
) -> Value {
    let mut paths = serde_json::Map::new();
    for (method, path, op, summary) in routes {
        let details = operation(op);
        let mut parameters: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": path_parameter(name) }))
            .collect();
        parameters.extend(details.query.iter().map(
            |(name, schema)| json!({ "name": name, "in": "query", "required": false, "schema": schema }),
        ));
        let error = json!({ "description": "Refused: {\"code\", \"message\"}", "content": { "application/json": {
            "schema": { "$ref": "#/components/schemas/Error" } } } });
        let mut entry = json!({
            "operationId": op,
            "summary": summary,
            "parameters": parameters,
            "responses": {
                "200": { "description": "OK", "content": { "application/json": { "schema": details.response } } },
                "4XX": error.clone(),
                "5XX": error,
            }
        });
        if bearer {
            entry["security"] = json!([{ "bearer": [] }]);
        }
        if let Some(body) = details.body {
            // A body whose every field is optional may be left out.
            let required = body["required"].as_array().is_some_and(|r| !r.is_empty());
            entry["requestBody"] =
                json!({ "required": required, "content": { "application/json": { "schema": body } } });
        }
        paths.entry(path.to_string()).or_insert_with(|| json!({}))[*method] = entry;
    }
    json!({
        "openapi": "3.1.0",
        "info": { "title": title, "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": { "Error": { "type": "object", "required": ["code", "message"], "properties": {
                "code": { "type": "string" }, "message": { "type": "string" } } } }
        }
    })
}

/// AWS-style pagination of a list: `maxResults` (1 to [`MAX_PAGE`], default [`MAX_PAGE`]) and
/// the `nextToken` the previous page returned (opaque: the hex of the last key).
#[derive(Debug, Clone)]
pub(crate) struct Page {
    /// Items after this key.
    pub(crate) after: Option<String>,
    /// At most this many.
    pub(crate) limit: usize,
}

/// The largest page.
pub const MAX_PAGE: usize = 250;

impl Page {
    pub(crate) fn parse(q: &BTreeMap<String, String>) -> Result<Self, ApiError> {
        Self::from_params(q.get("maxResults"), q.get("nextToken"))
    }

    /// From the `maxResults` and `nextToken` query parameters.
    pub(crate) fn from_params(
        max_results: Option<&String>,
        next_token: Option<&String>,
    ) -> Result<Self, ApiError> {
        let limit = match max_results {
            None => MAX_PAGE,
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_PAGE).contains(n))
                .ok_or_else(|| ApiError::bad(format!("maxResults must be 1 to {MAX_PAGE}")))?,
        };
        let after = match next_token {
            None => None,
            Some(t) => Some(
                hex::decode(t)
                    .ok()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .filter(|k| !k.is_empty() && k.len() <= 1024)
                    .ok_or_else(|| ApiError::bad("nextToken is not one this API gave"))?,
            ),
        };
        Ok(Self { after, limit })
    }

    /// What to ask the registry for: one more than a page, to know whether another follows.
    pub(crate) fn fetch(&self) -> i64 {
        self.limit as i64 + 1
    }

    /// A page of `items` already after the key (from the registry), as `{field: [...],
    /// "nextToken"?}`.
    pub(crate) fn respond<T>(
        &self,
        field: &str,
        mut items: Vec<T>,
        key: impl Fn(&T) -> String,
        show: impl Fn(&T) -> Value,
    ) -> Value {
        let more = items.len() > self.limit;
        items.truncate(self.limit);
        let mut out = json!({ field: items.iter().map(&show).collect::<Vec<_>>() });
        if more {
            if let Some(last) = items.last() {
                out["nextToken"] = hex::encode(key(last)).into();
            }
        }
        out
    }

    /// A page of a small list held whole (CAs, templates, policies, claim issuers), sorted by key.
    pub(crate) fn slice<T>(
        &self,
        field: &str,
        mut items: Vec<T>,
        key: impl Fn(&T) -> String,
        show: impl Fn(&T) -> Value,
    ) -> Value {
        items.sort_by_key(&key);
        if let Some(after) = &self.after {
            items.retain(|i| key(i).as_str() > after.as_str());
        }
        self.respond(field, items, key, show)
    }
}

/// The token of an `Authorization: Bearer <token>` value; the scheme is case-insensitive
/// (RFC 9110 section 11.1).
pub(crate) fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// The caller's account and token name.
async fn auth(server: &AccountServer, headers: &HeaderMap) -> Result<(Account, String), ApiError> {
    let unauthorized =
        || ApiError::new(StatusCode::UNAUTHORIZED, "UnauthorizedException", "a valid API token is required");
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .ok_or_else(unauthorized)?;
    let mut tx = server.store().read().await?;
    tx.account_for_token(token.trim()).await?.ok_or_else(unauthorized)
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

/// Commits a mutation with its audit row.
async fn commit(mut tx: Tx, a: &Account, actor: &str, action: &str, target: &str) -> Result<(), ApiError> {
    let record = AuditRecord {
        actor: actor.to_owned(),
        action: action.to_owned(),
        target: target.to_owned(),
        result: "ok".into(),
        detail: None,
        at: claimlink_registry::now(),
    };
    tx.audit(Some(&a.id), &record).await?;
    tx.commit().await?;
    Ok(())
}

async fn describe_endpoint(State(s): State<AccountServer>, h: HeaderMap) -> ApiResult {
    let (a, _) = auth(&s, &h).await?;
    Ok(axum::Json(json!({ "endpointAddress": a.endpoint })))
}

async fn registration_code(State(s): State<AccountServer>, h: HeaderMap) -> ApiResult {
    let (a, _) = auth(&s, &h).await?;
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

async fn register_ca(State(s): State<AccountServer>, h: HeaderMap, b: Bytes) -> ApiResult {
    let (a, actor) = auth(&s, &h).await?;
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
    let mut tx = s.store().begin().await?;
    let ca = tx.register_ca(&a, &new).await?;
    if require_claim {
        tx.set_ca_require_claim(&a.id, &ca.id, true).await?;
    }
    commit(tx, &a, &actor, "RegisterCACertificate", &ca.id).await?;
    let _ = s.reload(&a.id).await;
    Ok(axum::Json(json!({ "certificateArn": arn(&a, &format!("cacert/{}", ca.id)), "certificateId": ca.id })))
}

async fn list_cas(
    State(s): State<AccountServer>,
    h: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult {
    let (a, _) = auth(&s, &h).await?;
    let page = Page::parse(&q)?;
    let cas = s.store().read().await?.list_cas(&a.id).await?;
    Ok(axum::Json(page.slice("certificates", cas, |c| c.id.clone(), |c| {
        json!({ "certificateArn": arn(&a, &format!("cacert/{}", c.id)), "certificateId": c.id, "status": c.status, "certificateMode": c.mode, "creationDate": c.created as f64 / 1000.0 })
    })))
}

async fn describe_ca(State(s): State<AccountServer>, h: HeaderMap, Path(id): Path<String>) -> ApiResult {
    let (a, _) = auth(&s, &h).await?;
    let ca = s.store().read().await?.describe_ca(&a.id, &id).await?;
    Ok(axum::Json(json!({
        "certificateDescription": ca_json(&a, &ca),
        "registrationConfig": { "templateName": ca.template_name },
    })))
}

async fn update_ca(
    State(s): State<AccountServer>,
    h: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
    b: Bytes,
) -> ApiResult {
    let (a, actor) = auth(&s, &h).await?;
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
    let mut tx = s.store().begin().await?;
    tx.update_ca(&a.id, &id, status, auto, template).await?;
    if let Some(r) = require_claim {
        tx.set_ca_require_claim(&a.id, &id, r).await?;
    }
    commit(tx, &a, &actor, "UpdateCACertificate", &id).await?;
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

async fn register_certificate(State(s): State<AccountServer>, h: HeaderMap, b: Bytes) -> ApiResult {
    let (a, actor) = auth(&s, &h).await?;
    let m = body(&b)?;
    let pem = required(&m, "certificatePem")?;
    let status = match field(&m, "status")? {
        Some(v) => CertificateStatus::parse(v)?,
        None => CertificateStatus::Inactive,
    };
    let mut tx = s.store().begin().await?;
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
    commit(tx, &a, &actor, "RegisterCertificate", &c.id).await?;
    let _ = s.reload(&a.id).await;
    Ok(axum::Json(json!({ "certificateArn": arn(&a, &format!("cert/{}", c.id)), "certificateId": c.id })))
}

async fn list_certificates(
    State(s): State<AccountServer>,
    h: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult {
    let (a, _) = auth(&s, &h).await?;
    let page = Page::parse(&q)?;
    let certs = s.store().read().await?.certificates_page(&a.id, page.after.as_deref(), page.fetch()).await?;
    Ok(axum::Json(page.respond("certificates", certs, |c| c.id.clone(), |c| {
        json!({ "certificateArn": arn(&a, &format!("cert/{}", c.id)), "certificateId": c.id, "status": c.status, "creationDate": c.created as f64 / 1000.0 })
    })))
}

async fn describe_certificate(
    State(s): State<AccountServer>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let (a, _) = auth(&s, &h).await?;
    let c = s.store().read().await?.describe_certificate(&a.id, &id).await?;
    Ok(axum::Json(json!({ "certificateDescription": cert_json(&a, &c) })))
}

async fn update_certificate(
    State(s): State<AccountServer>,
    h: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
    b: Bytes,
) -> ApiResult {
    let (a, actor) = auth(&s, &h).await?;
    let m = body(&b)?;
    let status = q
        .get("newStatus")
        .map(String::as_str)
        .or(field(&m, "newStatus")?)
        .ok_or_else(|| ApiError::bad("newStatus is required"))?;
    let status = CertificateStatus::parse(status)?;
    let mut tx = s.store().begin().await?;
    tx.update_certificate_status(&a.id, &id, status).await?;
    commit(tx, &a, &actor, "UpdateCertificate", &id).await?;
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

async fn create_template(State(s): State<AccountServer>, h: HeaderMap, b: Bytes) -> ApiResult {
    let (a, actor) = auth(&s, &h).await?;
    let m = body(&b)?;
    let name = required(&m, "templateName")?;
    let body_text = required(&m, "templateBody")?;
    claimlink_provision::Template::parse(body_text)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.code(), e.to_string()))?;
    let kind = match field(&m, "type")? {
        Some(k) => TemplateKind::parse(k)?,
        None => TemplateKind::FleetProvisioning,
    };
    let mut tx = s.store().begin().await?;
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
    commit(tx, &a, &actor, "CreateProvisioningTemplate", name).await?;
    Ok(axum::Json(
        json!({ "templateArn": arn(&a, &format!("provisioningtemplate/{}", t.name)), "templateName": t.name, "defaultVersionId": 1 }),
    ))
}

async fn list_templates(
    State(s): State<AccountServer>,
    h: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult {
    let (a, _) = auth(&s, &h).await?;
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
    h: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    let (a, _) = auth(&s, &h).await?;
    let t = s.store().read().await?.template(&a.id, &name).await?;
    Ok(axum::Json(template_json(&a, &t)))
}

async fn update_template(
    State(s): State<AccountServer>,
    h: HeaderMap,
    Path(name): Path<String>,
    b: Bytes,
) -> ApiResult {
    let (a, actor) = auth(&s, &h).await?;
    let m = body(&b)?;
    let new_body = field(&m, "templateBody")?;
    if let Some(text) = new_body {
        claimlink_provision::Template::parse(text)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.code(), e.to_string()))?;
    }
    let mut tx = s.store().begin().await?;
    tx.update_template(&a.id, &name, new_body, flag(&m, "enabled")?, field(&m, "description")?).await?;
    commit(tx, &a, &actor, "UpdateProvisioningTemplate", &name).await?;
    Ok(axum::Json(json!({})))
}

async fn delete_template(
    State(s): State<AccountServer>,
    h: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    let (a, actor) = auth(&s, &h).await?;
    let mut tx = s.store().begin().await?;
    tx.delete_template(&a.id, &name).await?;
    commit(tx, &a, &actor, "DeleteProvisioningTemplate", &name).await?;
    Ok(axum::Json(json!({})))
}

async fn create_policy(
    State(s): State<AccountServer>,
    h: HeaderMap,
    Path(name): Path<String>,
    b: Bytes,
) -> ApiResult {
    let (a, actor) = auth(&s, &h).await?;
    let m = body(&b)?;
    let doc = required(&m, "policyDocument")?;
    claimlink_policy::Policy::parse(doc)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.code(), e.to_string()))?;
    let mut tx = s.store().begin().await?;
    let (p, warnings) = tx.create_policy(&a.id, &name, doc).await?;
    commit(tx, &a, &actor, "CreatePolicy", &name).await?;
    Ok(axum::Json(json!({
        "policyName": p.name,
        "policyArn": arn(&a, &format!("policy/{}", p.name)),
        "policyDocument": p.document,
        "policyVersionId": p.default_version.to_string(),
        "warnings": warnings,
    })))
}

async fn get_policy(State(s): State<AccountServer>, h: HeaderMap, Path(name): Path<String>) -> ApiResult {
    let (a, _) = auth(&s, &h).await?;
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
    h: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult {
    let (a, _) = auth(&s, &h).await?;
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
    h: HeaderMap,
    Path(name): Path<String>,
    b: Bytes,
) -> ApiResult {
    let (a, actor) = auth(&s, &h).await?;
    let m = body(&b)?;
    let target = policy_target(&a, required(&m, "target")?)?;
    let mut tx = s.store().begin().await?;
    tx.attach_policy(&a.id, &name, &target).await?;
    commit(tx, &a, &actor, "AttachPolicy", &name).await?;
    rebind(&s, &a, &target).await?;
    Ok(axum::Json(json!({})))
}

async fn detach_policy(
    State(s): State<AccountServer>,
    h: HeaderMap,
    Path(name): Path<String>,
    b: Bytes,
) -> ApiResult {
    let (a, actor) = auth(&s, &h).await?;
    let m = body(&b)?;
    let target = policy_target(&a, required(&m, "target")?)?;
    let mut tx = s.store().begin().await?;
    tx.detach_policy(&a.id, &name, &target).await?;
    commit(tx, &a, &actor, "DetachPolicy", &name).await?;
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
    h: HeaderMap,
    Path(name): Path<String>,
    b: Bytes,
) -> ApiResult {
    let (a, actor) = auth(&s, &h).await?;
    let m = body(&b)?;
    let attributes = match m.get("attributePayload") {
        Some(Value::Object(p)) => string_map(p.get("attributes"), "attributes")?,
        None | Some(Value::Null) => BTreeMap::new(),
        Some(_) => return Err(ApiError::bad("attributePayload must be an object")),
    };
    let mut tx = s.store().begin().await?;
    let t = tx.create_thing(&a.id, &name, field(&m, "thingTypeName")?, &attributes).await?;
    commit(tx, &a, &actor, "CreateThing", &name).await?;
    Ok(axum::Json(json!({ "thingName": t.name, "thingArn": arn(&a, &format!("thing/{}", t.name)) })))
}

async fn describe_thing(State(s): State<AccountServer>, h: HeaderMap, Path(name): Path<String>) -> ApiResult {
    let (a, _) = auth(&s, &h).await?;
    let t = s.store().read().await?.describe_thing(&a.id, &name).await?;
    Ok(axum::Json(thing_json(&a, &t)))
}

async fn delete_thing(State(s): State<AccountServer>, h: HeaderMap, Path(name): Path<String>) -> ApiResult {
    let (a, actor) = auth(&s, &h).await?;
    let mut tx = s.store().begin().await?;
    tx.delete_thing(&a.id, &name).await?;
    commit(tx, &a, &actor, "DeleteThing", &name).await?;
    drop_thing_sessions(&s, &a, &name);
    Ok(axum::Json(json!({})))
}

async fn list_things(
    State(s): State<AccountServer>,
    h: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult {
    let (a, _) = auth(&s, &h).await?;
    let page = Page::parse(&q)?;
    let things = s.store().read().await?.things_page(&a.id, page.after.as_deref(), page.fetch()).await?;
    Ok(axum::Json(page.respond("things", things, |t| t.name.clone(), |t| thing_json(&a, t))))
}

async fn create_thing_type(
    State(s): State<AccountServer>,
    h: HeaderMap,
    Path(name): Path<String>,
    b: Bytes,
) -> ApiResult {
    let (a, actor) = auth(&s, &h).await?;
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
    let mut tx = s.store().begin().await?;
    tx.create_thing_type(&a.id, &name, description.as_deref(), &searchable).await?;
    commit(tx, &a, &actor, "CreateThingType", &name).await?;
    Ok(axum::Json(json!({ "thingTypeName": name, "thingTypeArn": arn(&a, &format!("thingtype/{name}")) })))
}

async fn create_thing_group(
    State(s): State<AccountServer>,
    h: HeaderMap,
    Path(name): Path<String>,
    b: Bytes,
) -> ApiResult {
    let (a, actor) = auth(&s, &h).await?;
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
    let mut tx = s.store().begin().await?;
    tx.create_thing_group(&a.id, &name, field(&m, "parentGroupName")?, &attributes).await?;
    commit(tx, &a, &actor, "CreateThingGroup", &name).await?;
    Ok(axum::Json(json!({ "thingGroupName": name, "thingGroupArn": arn(&a, &format!("thinggroup/{name}")) })))
}

async fn add_thing_to_group(State(s): State<AccountServer>, h: HeaderMap, b: Bytes) -> ApiResult {
    let (a, actor) = auth(&s, &h).await?;
    let m = body(&b)?;
    let group = required(&m, "thingGroupName")?;
    let thing = required(&m, "thingName")?;
    let mut tx = s.store().begin().await?;
    tx.add_thing_to_group(&a.id, group, thing).await?;
    commit(tx, &a, &actor, "AddThingToThingGroup", thing).await?;
    drop_thing_sessions(&s, &a, thing);
    Ok(axum::Json(json!({})))
}

async fn attach_thing_principal(
    State(s): State<AccountServer>,
    h: HeaderMap,
    Path(name): Path<String>,
    b: Bytes,
) -> ApiResult {
    let (a, actor) = auth(&s, &h).await?;
    let m = body(&b)?;
    let principal = match h.get("x-amzn-iot-principal").and_then(|v| v.to_str().ok()) {
        Some(p) => p.to_owned(),
        None => required(&m, "principal")?.to_owned(),
    };
    let PolicyTarget::Certificate(cert) = policy_target(&a, &principal)? else {
        return Err(ApiError::bad("the principal must be a certificate ARN"));
    };
    let mut tx = s.store().begin().await?;
    tx.attach_thing_principal(&a.id, &name, &cert).await?;
    commit(tx, &a, &actor, "AttachThingPrincipal", &name).await?;
    s.drop_sessions(&a.id, &cert);
    Ok(axum::Json(json!({})))
}

async fn provisioning_failures(
    State(s): State<AccountServer>,
    h: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult {
    let (a, _) = auth(&s, &h).await?;
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
    h: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> ApiResult {
    let (a, _) = auth(&s, &h).await?;
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
    h: HeaderMap,
    Path(name): Path<String>,
    b: Bytes,
) -> ApiResult {
    let (a, actor) = auth(&s, &h).await?;
    let m = body(&b)?;
    let pem = required(&m, "publicKeyPem")?;
    if pem.contains("PRIVATE KEY") {
        return Err(ApiError::bad("send the claim issuer's public key only, never its private key"));
    }
    let key = claimlink_pki::pem::public_key_from_pem(pem.as_bytes())
        .map_err(|e| ApiError::bad(format!("publicKeyPem is not one SM2 or P-256 PUBLIC KEY block: {e}")))?;
    let canonical = claimlink_pki::pem::public_key_to_pem(&key);
    let mut tx = s.store().begin().await?;
    tx.put_claim_issuer(&a.id, &name, &canonical).await?;
    commit(tx, &a, &actor, "PutClaimIssuer", &name).await?;
    let _ = s.reload(&a.id).await;
    Ok(axum::Json(json!({ "name": name, "publicKeyPem": canonical })))
}

async fn release_claim(State(s): State<AccountServer>, h: HeaderMap, b: Bytes) -> ApiResult {
    let (a, _) = auth(&s, &h).await?;
    let m = body(&b)?;
    let notice = required(&m, "releaseNotice")?;
    let entry = s.entry(&a.id).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailableException",
            "the account is not loaded",
        )
    })?;
    let ticket = claimlink_provision::ticket::verify_release(notice, &entry.claim_issuers)
        .map_err(|e| ApiError::bad(format!("releaseNotice: {e}")))?;
    if !ticket.aud.eq_ignore_ascii_case(&claimlink_provision::ticket::audience(&a.endpoint)) {
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
