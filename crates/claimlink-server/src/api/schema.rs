//! What each admin API operation takes and gives, for `/openapi.json`.

use claimlink_service::api::{Operation, list, object};
use serde_json::{Value, json};

fn plain(body: Option<Value>) -> Operation {
    Operation { query: Vec::new(), body, response: json!({ "type": "object" }) }
}

pub(super) fn account_operation(op: &str) -> Operation {
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
        "apply-crl" => plain(Some(claimlink_service::api::crl_body())),
        _ => plain(None),
    }
}
