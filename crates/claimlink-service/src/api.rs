//! What every HTTP API of ours is made of: one route table per API that drives both its
//! router and its OpenAPI document, one error vocabulary (`{"code", "message"}` with a stable
//! code, AWS's exception names where AWS IoT has one), AWS-style paging, bearer tokens, and the
//! audited write transaction whose only way to commit writes its audit row.

use std::collections::BTreeMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter};
use claimlink_registry::{AccountId, AuditRecord, Coded, Store, Tx};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// A JSON request body read into `T` - a `deny_unknown_fields` struct, so a misspelt field is
/// refused rather than ignored. An empty body is `{}`. Refusals are 400
/// `InvalidRequestException` with serde's reason (which names the field, never echoes values
/// beyond their type); a body over the route's limit is 413 `PayloadTooLarge`.
#[derive(Debug, Clone)]
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        let bytes = Bytes::from_request(req, state).await.map_err(IntoResponse::into_response)?;
        let bytes: &[u8] = if bytes.is_empty() { b"{}" } else { &bytes };
        let refuse = |e: String| ApiError::bad(format!("the request body: {e}")).into_response();
        let value: Value = serde_json::from_slice(bytes).map_err(|e| refuse(e.to_string()))?;
        object_into(value).map(Body).map_err(refuse)
    }
}

/// `value` as `T` when it is a JSON object (serde would also build a struct from an array,
/// field by position; a body or a nested object given as an array is refused).
fn object_into<T: DeserializeOwned>(value: Value) -> Result<T, String> {
    if !value.is_object() {
        return Err("expected a JSON object".into());
    }
    serde_json::from_value(value).map_err(|e| e.to_string())
}

/// A nested object of a request body (`registrationConfig`, `attributePayload`, ...): only a
/// JSON object, never an array read field by position.
#[derive(Debug, Clone, Default)]
pub struct Object<T>(pub T);

impl<'de, T: DeserializeOwned> serde::Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        object_into(value).map(Object).map_err(serde::de::Error::custom)
    }
}

/// One operation of an API: how it is reached, what it is called (the AWS CLI verb), and the
/// handler that serves it. The router and `/openapi.json` are both made from a table of these,
/// so neither can list an operation the other lacks.
pub struct Route<S> {
    /// HTTP method, lowercase.
    pub method: &'static str,
    /// Path, with `{parameter}` segments.
    pub path: &'static str,
    /// Operation id.
    pub operation: &'static str,
    /// One line for the document.
    pub summary: &'static str,
    /// The handler, for the method given to it.
    pub handler: fn(MethodFilter) -> MethodRouter<S>,
}

impl<S> std::fmt::Debug for Route<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} ({})", self.method, self.path, self.operation)
    }
}

/// The router of an API: every route of `routes`, `/openapi.json` served by `openapi`, JSON
/// errors for everything refused (an unknown path included), bodies of at most `max_body`.
pub fn router<S: Clone + Send + Sync + 'static>(
    routes: &[Route<S>],
    openapi: MethodRouter<S>,
    max_body: usize,
) -> Router<S> {
    let routed = routes.iter().fold(Router::new(), |router, route| {
        let filter = match route.method {
            "get" => MethodFilter::GET,
            "post" => MethodFilter::POST,
            "put" => MethodFilter::PUT,
            "patch" => MethodFilter::PATCH,
            "delete" => MethodFilter::DELETE,
            other => unreachable!("route table method {other}"),
        };
        router.route(route.path, (route.handler)(filter))
    });
    routed
        .route("/openapi.json", openapi)
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "ResourceNotFoundException", "no such API path")
        })
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::map_response(json_errors))
}

/// An API error: status and stable code.
///
/// The vocabulary, one for every API of ours (README, "API errors"): AWS IoT's exception
/// names where AWS has the case - `InvalidRequestException` (400), `UnauthorizedException`
/// (401), `AccessDeniedException` (403), `ResourceNotFoundException` (404), `ResourceAlreadyExistsException`,
/// `CertificateStateException`, `DeleteConflictException` (409), `LimitExceededException`
/// (400), `InternalFailureException` (500), `ServiceUnavailableException` (503) -; the policy
/// language's validation codes (`MalformedPolicy`, `UnknownAction`, ...); HTTP's own
/// (`PayloadTooLarge`, `MethodNotAllowed`, `UnsupportedMediaType`); and the claim decision's
/// (`ClaimCodeWrong`, `AlreadyOwned`, `LockedOut`, `NotOwner`, ...). Registry errors map to
/// these in one place: [`status_of`], through `From<E: Coded>`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// An error with `status`, a stable `code` and a message for the caller.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    /// An error with a `code` of the vocabulary, its status from [`status_of`] (for the codes of
    /// crates below the registry: the template engine's, the policy language's).
    pub fn coded(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(status_of(code), code, message)
    }

    /// A request that breaks a rule (400 `InvalidRequestException`).
    pub fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "InvalidRequestException", message)
    }
}

/// The HTTP status of every code of the vocabulary: the one place a code gets its status. A
/// code not listed is a validation code of a language of ours (the policy language's
/// `MalformedPolicy`, `UnknownAction`, ...; the template engine's): 400.
pub fn status_of(code: &str) -> StatusCode {
    match code {
        "UnauthorizedException" => StatusCode::UNAUTHORIZED,
        "AccessDeniedException" => StatusCode::FORBIDDEN,
        "ResourceNotFoundException" => StatusCode::NOT_FOUND,
        "ResourceAlreadyExistsException"
        | "CertificateStateException"
        | "DeleteConflictException"
        | "ConflictingResourceUpdateException" => StatusCode::CONFLICT,
        "InternalFailureException" => StatusCode::INTERNAL_SERVER_ERROR,
        "ServiceUnavailableException" => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// Any error with a code of the vocabulary (the registry's, the registration rules', the
/// provisioning engine's, an id that does not check) answers with that code and its status. An
/// internal failure is logged here and its detail never sent.
impl<E: Coded> From<E> for ApiError {
    fn from(e: E) -> Self {
        let code = e.code();
        let status = status_of(code);
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, "internal failure in the API");
            "internal failure".to_owned()
        } else {
            e.to_string()
        };
        Self { status, code, message }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({ "code": self.code, "message": self.message }))).into_response()
    }
}

/// Every error an API answers is `{"code", "message"}` JSON, including the ones axum makes
/// itself before a handler runs (a body over the route's limit, a malformed query string or
/// path parameter, a method the path does not take).
pub async fn json_errors(response: Response) -> Response {
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
pub struct Operation {
    /// Query parameters: (name, schema).
    pub query: Vec<(&'static str, Value)>,
    /// The JSON request body's schema, when it takes one.
    pub body: Option<Value>,
    /// The 200 response's schema.
    pub response: Value,
}

/// The body of a CRL upload (`claimlink_service::revocation`): the bytes of a DER CRL or of a
/// PEM CRL with the signing CA's chain, not JSON (documented as `application/octet-stream`).
pub fn crl_body() -> Value {
    json!({ "type": "string", "format": "binary" })
}

/// An object schema. The API takes `null` for an optional field as its absence, so optional
/// properties say so.
pub fn object(required: &[&str], mut properties: Value) -> Value {
    if let Some(props) = properties.as_object_mut() {
        for (name, schema) in props.iter_mut() {
            if !required.contains(&name.as_str()) {
                *schema = json!({ "anyOf": [schema.take(), { "type": "null" }] });
            }
        }
    }
    // Bodies are read into structs that refuse unknown fields; the document says so.
    json!({ "type": "object", "required": required, "properties": properties, "additionalProperties": false })
}

/// A list's response: `{field: [...], "nextToken"?}`, with the paging parameters.
pub fn list(field: &str, extra_query: Vec<(&'static str, Value)>) -> Operation {
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

/// An OpenAPI 3.0 document from a route table (method, path, operation, summary) and what
/// each operation takes and gives; the same table drives the router's test.
pub fn openapi_document<S>(
    title: &str,
    routes: &[Route<S>],
    operation: fn(&str) -> Operation,
    bearer: bool,
) -> Value {
    let mut paths = serde_json::Map::new();
    for Route { method, path, operation: op, summary, .. } in routes {
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
            if body == crl_body() {
                // DER or PEM bytes as they are; any content type is taken.
                entry["requestBody"] = json!({ "required": true, "content": { "application/octet-stream": { "schema": body } } });
            } else {
                // A body whose every field is optional may be left out.
                let required = body["required"].as_array().is_some_and(|r| !r.is_empty());
                entry["requestBody"] =
                    json!({ "required": required, "content": { "application/json": { "schema": body } } });
            }
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
pub struct Page {
    /// Items after this key.
    pub after: Option<String>,
    /// At most this many.
    pub limit: usize,
}

/// The largest page.
pub const MAX_PAGE: usize = 250;

impl Page {
    /// From a query string's parameters.
    pub fn parse(q: &BTreeMap<String, String>) -> Result<Self, ApiError> {
        Self::from_params(q.get("maxResults"), q.get("nextToken"))
    }

    /// From the `maxResults` and `nextToken` query parameters.
    pub fn from_params(max_results: Option<&String>, next_token: Option<&String>) -> Result<Self, ApiError> {
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
    pub fn fetch(&self) -> i64 {
        self.limit as i64 + 1
    }

    /// A page of `items` already after the key (from the registry), as `{field: [...],
    /// "nextToken"?}`.
    pub fn respond<T>(
        &self,
        field: &str,
        mut items: Vec<T>,
        key: impl Fn(&T) -> String,
        show: impl Fn(&T) -> Value,
    ) -> Value {
        let more = items.len() > self.limit;
        items.truncate(self.limit);
        let mut out = json!({ field: items.iter().map(&show).collect::<Vec<_>>() });
        if more && let Some(last) = items.last() {
            out["nextToken"] = hex::encode(key(last)).into();
        }
        out
    }

    /// A page of a small list held whole (CAs, templates, policies, claim issuers), sorted by key.
    pub fn slice<T>(
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
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// A write transaction of an API request, for the account and caller it was begun for. It has
/// no plain commit: [`Audited::commit`] writes the audit row of the change into it first, so
/// a change is never made without its record.
pub struct Audited {
    tx: Tx,
    account_id: Option<AccountId>,
    actor: String,
}

impl Audited {
    /// Begins a write transaction for `actor` acting on `account_id` (`None`: staging).
    pub async fn begin(store: &Store, account_id: Option<&AccountId>, actor: &str) -> Result<Self, ApiError> {
        Ok(Self { tx: store.begin().await?, account_id: account_id.cloned(), actor: actor.to_owned() })
    }

    /// Writes the audit row (`action` on `target`, result ok) and commits.
    pub async fn commit(mut self, action: &str, target: &str) -> Result<(), ApiError> {
        let record = AuditRecord {
            actor: self.actor,
            action: action.to_owned(),
            target: target.to_owned(),
            result: "ok".into(),
            detail: None,
            at: claimlink_registry::now(),
        };
        self.tx.audit(self.account_id.as_ref(), &record).await?;
        self.tx.commit().await?;
        Ok(())
    }
}

impl std::ops::Deref for Audited {
    type Target = Tx;
    fn deref(&self) -> &Tx {
        &self.tx
    }
}

impl std::ops::DerefMut for Audited {
    fn deref_mut(&mut self) -> &mut Tx {
        &mut self.tx
    }
}
