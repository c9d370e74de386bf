//! The admin REST API of the account endpoint, shaped like AWS IoT's control plane (paths,
//! verbs, JSON field names), authenticated with per-account API tokens (`Authorization: Bearer
//! clk_...`, stored hashed). Errors are `{"code": ..., "message": ...}` with a 4xx status and a
//! stable code; a refused request changes nothing. The OpenAPI document is at `/openapi.json`.

mod certificates;
mod claims;
mod policies;
mod schema;
mod templates;
mod things;

use axum::Router;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::routing::{get, on};
use claimlink_registry::Account;
use claimlink_service::HttpLimits;
use claimlink_service::api::{ApiError, Route, bearer, openapi_document};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::AccountServer;
use certificates::*;
use claims::*;
use policies::*;
use schema::account_operation;
use templates::*;
use things::*;

type ApiResult = Result<axum::Json<Value>, ApiError>;

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
        method: "put",
        path: "/crls",
        operation: "apply-crl",
        summary: "Apply a CRL of a registered CA (DER, or PEM with the signing CA's chain): the \
                  certificates it revokes are refused at the handshake and their sessions end",
        handler: |m| {
            on(m, apply_crl)
                .layer(axum::extract::DefaultBodyLimit::max(claimlink_service::revocation::MAX_CRL_UPLOAD))
        },
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

/// Serves the API on `listener` until shutdown: over HTTPS with `tls` (made once, e.g.
/// [`claimlink_service::ServerIdentity::https_config`]), else plain HTTP (for a listener only
/// the host can reach).
pub async fn serve(
    server: AccountServer,
    listener: TcpListener,
    http: HttpLimits,
    tls: Option<std::sync::Arc<claimlink_service::Https>>,
) -> std::io::Result<()> {
    let shutdown = server.shared.shutdown.clone();
    let tls = tls.map(|c| c as std::sync::Arc<dyn claimlink_broker::TlsSelector>);
    let app = router_with(server, http.max_body);
    claimlink_service::serve_http("admin-api", listener, tls, http, shutdown, move |_| app.clone()).await
}

/// The API's routes.
pub fn router(server: AccountServer) -> Router {
    router_with(server, HttpLimits::default().max_body)
}

/// The API's routes, taking request bodies of at most `max_body` bytes.
pub fn router_with(server: AccountServer, max_body: usize) -> Router {
    claimlink_service::api::router(ROUTES, get(openapi), max_body).with_state(server)
}

async fn openapi() -> axum::Json<Value> {
    axum::Json(openapi_document("claimlink account API", ROUTES, account_operation, true))
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

pub(super) fn arn(a: &Account, rest: &str) -> String {
    let partition = if a.region.starts_with("cn-") { "aws-cn" } else { "aws" };
    format!("arn:{partition}:iot:{}:{}:{rest}", a.region, a.id)
}

async fn describe_endpoint(Caller { account: a, .. }: Caller) -> ApiResult {
    Ok(axum::Json(json!({ "endpointAddress": a.endpoint })))
}

async fn registration_code(Caller { account: a, .. }: Caller) -> ApiResult {
    Ok(axum::Json(json!({ "registrationCode": a.registration_code })))
}

/// The HTTP method of a route-table entry (the tests drive every route with it).
pub fn method_of(m: &str) -> Method {
    match m {
        "post" => Method::POST,
        "put" => Method::PUT,
        "patch" => Method::PATCH,
        "delete" => Method::DELETE,
        _ => Method::GET,
    }
}
