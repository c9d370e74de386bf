//! `claimlink iot <verb>`: the account's admin API with the AWS CLI's verbs, flags and JSON
//! output, so that scripts written for `aws iot` work with the command name changed.
//!
//! Arguments that take a document accept `file://PATH` (as the AWS CLI does) or the text
//! itself; structures (`--attribute-payload`, `--registration-config`, ...) are JSON. The API
//! is `--endpoint-url` (or `$CLAIMLINK_API`), the token `$CLAIMLINK_TOKEN`. Errors print as
//! the AWS CLI prints them and exit with 254 (the service refused) or 255 (no answer).

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::files::read_bounded;

/// `iot` arguments.
#[derive(clap::Args)]
pub(crate) struct IotArgs {
    /// The admin API (default $CLAIMLINK_API, else https://localhost:8081, where `up` serves it).
    #[arg(long, global = true)]
    endpoint_url: Option<String>,
    /// The CA certificates (PEM) that the admin API's certificate must chain to (default
    /// $CLAIMLINK_CA_BUNDLE; `up` writes DATA/endpoint-ca.pem). Without one, the system's roots.
    #[arg(long, global = true)]
    ca_bundle: Option<std::path::PathBuf>,
    /// Accepted for compatibility with `aws iot` scripts; only JSON is printed.
    #[arg(long, global = true, hide = true)]
    output: Option<String>,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(clap::Subcommand)]
#[command(rename_all = "kebab-case")]
enum Verb {
    /// The MQTT endpoint of the account.
    DescribeEndpoint {
        /// Accepted for compatibility (iot:Data-ATS, ...).
        #[arg(long)]
        endpoint_type: Option<String>,
    },
    /// The code a DEFAULT-mode CA's verification certificate must carry as CN.
    GetRegistrationCode,
    /// Register a CA certificate.
    RegisterCaCertificate {
        #[arg(long)]
        ca_certificate: String,
        #[arg(long)]
        verification_certificate: Option<String>,
        #[arg(long, overrides_with = "no_set_as_active")]
        set_as_active: bool,
        #[arg(long)]
        no_set_as_active: bool,
        #[arg(long, overrides_with = "no_allow_auto_registration")]
        allow_auto_registration: bool,
        #[arg(long)]
        no_allow_auto_registration: bool,
        /// JSON: {"templateName": "..."}.
        #[arg(long)]
        registration_config: Option<String>,
        /// DEFAULT or SNI_ONLY.
        #[arg(long)]
        certificate_mode: Option<String>,
    },
    /// Change a CA's status, auto-registration or template.
    UpdateCaCertificate {
        #[arg(long)]
        certificate_id: String,
        #[arg(long)]
        new_status: Option<String>,
        #[arg(long)]
        new_auto_registration_status: Option<String>,
        #[arg(long)]
        registration_config: Option<String>,
    },
    /// List CA certificates.
    ListCaCertificates,
    /// Describe a CA certificate.
    DescribeCaCertificate {
        #[arg(long)]
        certificate_id: String,
    },
    /// Register a device certificate.
    RegisterCertificate {
        #[arg(long)]
        certificate_pem: String,
        #[arg(long)]
        ca_certificate_pem: Option<String>,
        /// ACTIVE, INACTIVE, ...
        #[arg(long)]
        status: Option<String>,
        /// Deprecated in the AWS CLI: same as --status ACTIVE.
        #[arg(long)]
        set_as_active: bool,
    },
    /// Change a certificate's status (live sessions end when it leaves ACTIVE).
    UpdateCertificate {
        #[arg(long)]
        certificate_id: String,
        #[arg(long)]
        new_status: String,
    },
    /// Describe a device certificate.
    DescribeCertificate {
        #[arg(long)]
        certificate_id: String,
    },
    /// List device certificates.
    ListCertificates,
    /// Create a provisioning template.
    CreateProvisioningTemplate {
        #[arg(long)]
        template_name: String,
        #[arg(long)]
        template_body: String,
        #[arg(long)]
        description: Option<String>,
        #[arg(long, overrides_with = "no_enabled")]
        enabled: bool,
        #[arg(long)]
        no_enabled: bool,
        /// JITP or FLEET_PROVISIONING.
        #[arg(long = "type")]
        kind: Option<String>,
        /// Accepted for compatibility; claimlink needs no role.
        #[arg(long)]
        provisioning_role_arn: Option<String>,
    },
    /// Describe a provisioning template.
    DescribeProvisioningTemplate {
        #[arg(long)]
        template_name: String,
    },
    /// List provisioning templates.
    ListProvisioningTemplates,
    /// Update a provisioning template.
    UpdateProvisioningTemplate {
        #[arg(long)]
        template_name: String,
        #[arg(long)]
        description: Option<String>,
        #[arg(long, overrides_with = "no_enabled")]
        enabled: bool,
        #[arg(long)]
        no_enabled: bool,
        /// claimlink extension: replace the body.
        #[arg(long)]
        template_body: Option<String>,
        #[arg(long)]
        provisioning_role_arn: Option<String>,
    },
    /// Delete a provisioning template.
    DeleteProvisioningTemplate {
        #[arg(long)]
        template_name: String,
    },
    /// Create a policy.
    CreatePolicy {
        #[arg(long)]
        policy_name: String,
        #[arg(long)]
        policy_document: String,
    },
    /// Get a policy.
    GetPolicy {
        #[arg(long)]
        policy_name: String,
    },
    /// List policies.
    ListPolicies,
    /// Attach a policy to a certificate or thing group ARN.
    AttachPolicy {
        #[arg(long)]
        policy_name: String,
        #[arg(long)]
        target: String,
    },
    /// Detach a policy.
    DetachPolicy {
        #[arg(long)]
        policy_name: String,
        #[arg(long)]
        target: String,
    },
    /// Create a thing.
    CreateThing {
        #[arg(long)]
        thing_name: String,
        #[arg(long)]
        thing_type_name: Option<String>,
        /// JSON: {"attributes": {"k": "v"}}.
        #[arg(long)]
        attribute_payload: Option<String>,
    },
    /// Describe a thing.
    DescribeThing {
        #[arg(long)]
        thing_name: String,
    },
    /// List things.
    ListThings,
    /// Delete a thing.
    DeleteThing {
        #[arg(long)]
        thing_name: String,
    },
    /// Create a thing type.
    CreateThingType {
        #[arg(long)]
        thing_type_name: String,
        /// JSON: {"thingTypeDescription": "...", "searchableAttributes": [...]}.
        #[arg(long)]
        thing_type_properties: Option<String>,
    },
    /// Create a thing group.
    CreateThingGroup {
        #[arg(long)]
        thing_group_name: String,
        #[arg(long)]
        parent_group_name: Option<String>,
        /// JSON: {"attributePayload": {"attributes": {...}}}.
        #[arg(long)]
        thing_group_properties: Option<String>,
    },
    /// Add a thing to a thing group.
    AddThingToThingGroup {
        #[arg(long)]
        thing_group_name: String,
        #[arg(long)]
        thing_name: String,
    },
    /// Attach a certificate (ARN) to a thing.
    AttachThingPrincipal {
        #[arg(long)]
        thing_name: String,
        #[arg(long)]
        principal: String,
    },
    /// claimlink extension: why provisioning failed, newest first.
    ListProvisioningFailures {
        #[arg(long)]
        certificate_id: Option<String>,
    },
}

/// A document argument: `file://PATH` or the text itself.
fn doc(arg: &str) -> Result<String> {
    match arg.strip_prefix("file://") {
        Some(path) => String::from_utf8(read_bounded(Path::new(path), 1 << 20)?)
            .with_context(|| format!("{path} is not UTF-8")),
        None => Ok(arg.to_owned()),
    }
}

/// A JSON structure argument (`file://` allowed).
fn structure(arg: &str, flag: &str) -> Result<Value> {
    serde_json::from_str(&doc(arg)?).with_context(|| format!("--{flag} must be JSON"))
}

/// Percent-encodes a path segment or query value (RFC 3986 unreserved characters kept).
pub(crate) fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn toggle(on: bool, off: bool) -> Option<bool> {
    if on {
        Some(true)
    } else if off {
        Some(false)
    } else {
        None
    }
}

/// What a verb sends: operation name (for messages), method, path, body.
fn request(verb: &Verb) -> Result<(&'static str, &'static str, String, Option<Value>)> {
    use Verb::*;
    Ok(match verb {
        DescribeEndpoint { .. } => ("DescribeEndpoint", "GET", "/endpoint".into(), None),
        GetRegistrationCode => ("GetRegistrationCode", "GET", "/registrationcode".into(), None),
        RegisterCaCertificate {
            ca_certificate,
            verification_certificate,
            set_as_active,
            no_set_as_active,
            allow_auto_registration,
            no_allow_auto_registration,
            registration_config,
            certificate_mode,
        } => {
            let mut b = json!({ "caCertificate": doc(ca_certificate)? });
            if let Some(v) = verification_certificate {
                b["verificationCertificate"] = json!(doc(v)?);
            }
            if let Some(v) = toggle(*set_as_active, *no_set_as_active) {
                b["setAsActive"] = json!(v);
            }
            if let Some(v) = toggle(*allow_auto_registration, *no_allow_auto_registration) {
                b["allowAutoRegistration"] = json!(v);
            }
            if let Some(rc) = registration_config {
                b["registrationConfig"] = structure(rc, "registration-config")?;
            }
            if let Some(m) = certificate_mode {
                b["certificateMode"] = json!(m);
            }
            ("RegisterCACertificate", "POST", "/cacertificate".into(), Some(b))
        }
        UpdateCaCertificate {
            certificate_id,
            new_status,
            new_auto_registration_status,
            registration_config,
        } => {
            let mut b = json!({});
            if let Some(s) = new_status {
                b["newStatus"] = json!(s);
            }
            if let Some(s) = new_auto_registration_status {
                b["newAutoRegistrationStatus"] = json!(s);
            }
            if let Some(rc) = registration_config {
                b["registrationConfig"] = structure(rc, "registration-config")?;
            }
            ("UpdateCACertificate", "PUT", format!("/cacertificate/{}", enc(certificate_id)), Some(b))
        }
        ListCaCertificates => ("ListCACertificates", "GET", "/cacertificates".into(), None),
        DescribeCaCertificate { certificate_id } => {
            ("DescribeCACertificate", "GET", format!("/cacertificate/{}", enc(certificate_id)), None)
        }
        RegisterCertificate { certificate_pem, ca_certificate_pem, status, set_as_active } => {
            let mut b = json!({ "certificatePem": doc(certificate_pem)? });
            if let Some(ca) = ca_certificate_pem {
                b["caCertificatePem"] = json!(doc(ca)?);
            }
            let status = status.clone().or_else(|| set_as_active.then(|| "ACTIVE".to_owned()));
            if let Some(s) = status {
                b["status"] = json!(s);
            }
            ("RegisterCertificate", "POST", "/certificate/register".into(), Some(b))
        }
        UpdateCertificate { certificate_id, new_status } => (
            "UpdateCertificate",
            "PUT",
            format!("/certificates/{}?newStatus={}", enc(certificate_id), enc(new_status)),
            None,
        ),
        DescribeCertificate { certificate_id } => {
            ("DescribeCertificate", "GET", format!("/certificates/{}", enc(certificate_id)), None)
        }
        ListCertificates => ("ListCertificates", "GET", "/certificates".into(), None),
        CreateProvisioningTemplate {
            template_name,
            template_body,
            description,
            enabled,
            no_enabled,
            kind,
            ..
        } => {
            let mut b = json!({ "templateName": template_name, "templateBody": doc(template_body)? });
            if let Some(d) = description {
                b["description"] = json!(d);
            }
            if let Some(e) = toggle(*enabled, *no_enabled) {
                b["enabled"] = json!(e);
            }
            if let Some(k) = kind {
                b["type"] = json!(k);
            }
            ("CreateProvisioningTemplate", "POST", "/provisioning-templates".into(), Some(b))
        }
        DescribeProvisioningTemplate { template_name } => (
            "DescribeProvisioningTemplate",
            "GET",
            format!("/provisioning-templates/{}", enc(template_name)),
            None,
        ),
        ListProvisioningTemplates => {
            ("ListProvisioningTemplates", "GET", "/provisioning-templates".into(), None)
        }
        UpdateProvisioningTemplate {
            template_name, description, enabled, no_enabled, template_body, ..
        } => {
            let mut b = json!({});
            if let Some(d) = description {
                b["description"] = json!(d);
            }
            if let Some(e) = toggle(*enabled, *no_enabled) {
                b["enabled"] = json!(e);
            }
            if let Some(t) = template_body {
                b["templateBody"] = json!(doc(t)?);
            }
            (
                "UpdateProvisioningTemplate",
                "PATCH",
                format!("/provisioning-templates/{}", enc(template_name)),
                Some(b),
            )
        }
        DeleteProvisioningTemplate { template_name } => (
            "DeleteProvisioningTemplate",
            "DELETE",
            format!("/provisioning-templates/{}", enc(template_name)),
            None,
        ),
        CreatePolicy { policy_name, policy_document } => (
            "CreatePolicy",
            "POST",
            format!("/policies/{}", enc(policy_name)),
            Some(json!({ "policyDocument": doc(policy_document)? })),
        ),
        GetPolicy { policy_name } => ("GetPolicy", "GET", format!("/policies/{}", enc(policy_name)), None),
        ListPolicies => ("ListPolicies", "GET", "/policies".into(), None),
        AttachPolicy { policy_name, target } => (
            "AttachPolicy",
            "PUT",
            format!("/target-policies/{}", enc(policy_name)),
            Some(json!({ "target": target })),
        ),
        DetachPolicy { policy_name, target } => (
            "DetachPolicy",
            "POST",
            format!("/target-policies/{}", enc(policy_name)),
            Some(json!({ "target": target })),
        ),
        CreateThing { thing_name, thing_type_name, attribute_payload } => {
            let mut b = json!({});
            if let Some(t) = thing_type_name {
                b["thingTypeName"] = json!(t);
            }
            if let Some(a) = attribute_payload {
                b["attributePayload"] = structure(a, "attribute-payload")?;
            }
            ("CreateThing", "POST", format!("/things/{}", enc(thing_name)), Some(b))
        }
        DescribeThing { thing_name } => {
            ("DescribeThing", "GET", format!("/things/{}", enc(thing_name)), None)
        }
        ListThings => ("ListThings", "GET", "/things".into(), None),
        DeleteThing { thing_name } => ("DeleteThing", "DELETE", format!("/things/{}", enc(thing_name)), None),
        CreateThingType { thing_type_name, thing_type_properties } => {
            let mut b = json!({});
            if let Some(p) = thing_type_properties {
                b["thingTypeProperties"] = structure(p, "thing-type-properties")?;
            }
            ("CreateThingType", "POST", format!("/thing-types/{}", enc(thing_type_name)), Some(b))
        }
        CreateThingGroup { thing_group_name, parent_group_name, thing_group_properties } => {
            let mut b = json!({});
            if let Some(p) = parent_group_name {
                b["parentGroupName"] = json!(p);
            }
            if let Some(p) = thing_group_properties {
                b["thingGroupProperties"] = structure(p, "thing-group-properties")?;
            }
            ("CreateThingGroup", "POST", format!("/thing-groups/{}", enc(thing_group_name)), Some(b))
        }
        AddThingToThingGroup { thing_group_name, thing_name } => (
            "AddThingToThingGroup",
            "PUT",
            "/thing-groups/addThingToThingGroup".into(),
            Some(json!({ "thingGroupName": thing_group_name, "thingName": thing_name })),
        ),
        AttachThingPrincipal { thing_name, principal } => (
            "AttachThingPrincipal",
            "PUT",
            format!("/things/{}/principals", enc(thing_name)),
            Some(json!({ "principal": principal })),
        ),
        ListProvisioningFailures { certificate_id } => (
            "ListProvisioningFailures",
            "GET",
            match certificate_id {
                Some(id) => format!("/provisioning-failures?certificateId={}", enc(id)),
                None => "/provisioning-failures".into(),
            },
            None,
        ),
    })
}

/// How the command ended, for the exit status.
pub(crate) enum Outcome {
    /// Printed the answer.
    Done,
    /// The service refused (exit 254).
    Refused,
}

/// The API client: TLS 1.3 with SM offered first (the international suites after it), the
/// server's certificate checked up to `ca_bundle` (or the system's roots); HTTP errors are
/// answers, not failures.
fn http_agent(ca_bundle: Option<&std::path::Path>) -> Result<ureq::Agent> {
    use ureq::tls::{Certificate, RootCerts, TlsConfig};
    let mut tls = TlsConfig::builder()
        .unversioned_rustls_crypto_provider(std::sync::Arc::new(claimlink_tls::provider_preferring_sm()));
    if let Some(path) = ca_bundle {
        let pem = read_bounded(path, 1 << 20)?;
        let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if certs.is_empty() {
            bail!("{}: no certificate in the CA bundle", path.display());
        }
        tls = tls.root_certs(RootCerts::Specific(std::sync::Arc::new(certs)));
    }
    Ok(ureq::Agent::config_builder().http_status_as_error(false).tls_config(tls.build()).build().into())
}

/// `claimlink iot`.
pub(crate) fn run(args: &IotArgs) -> Result<Outcome> {
    let (operation, method, path, body) = request(&args.verb)?;
    let base = args
        .endpoint_url
        .clone()
        .or_else(|| std::env::var("CLAIMLINK_API").ok())
        .unwrap_or_else(|| "https://localhost:8081".into());
    let token =
        std::env::var("CLAIMLINK_TOKEN").context("set $CLAIMLINK_TOKEN to the account's API token")?;
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let ca_bundle =
        args.ca_bundle.clone().or_else(|| std::env::var_os("CLAIMLINK_CA_BUNDLE").map(Into::into));
    let agent = http_agent(ca_bundle.as_deref())?;
    let auth = format!("Bearer {token}");
    let response = match (method, body) {
        ("GET", _) => agent.get(&url).header("Authorization", &auth).call(),
        ("DELETE", _) => agent.delete(&url).header("Authorization", &auth).call(),
        (m, body) => {
            let text = body.unwrap_or_else(|| json!({})).to_string();
            let req = match m {
                "POST" => agent.post(&url),
                "PUT" => agent.put(&url),
                _ => agent.patch(&url),
            };
            req.header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .send(text.as_bytes())
        }
    };
    let mut response = match response {
        Ok(r) => r,
        Err(e) => bail!("could not reach the API at {base}: {e}"),
    };
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    let mut value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if (200..300).contains(&status) && method == "GET" {
        // Lists come in pages: follow nextToken and print them as one, as the AWS CLI does.
        while let Some(next) = value.get("nextToken").and_then(Value::as_str).map(str::to_owned) {
            let sep = if url.contains('?') { '&' } else { '?' };
            let mut page = agent
                .get(&format!("{url}{sep}nextToken={next}"))
                .header("Authorization", &auth)
                .call()
                .with_context(|| format!("could not reach the API at {base}"))?;
            let more: Value = serde_json::from_str(&page.body_mut().read_to_string().unwrap_or_default())
                .unwrap_or(Value::Null);
            let Some(obj) = value.as_object_mut() else { break };
            obj.remove("nextToken");
            for (k, v) in more.as_object().into_iter().flatten() {
                match (obj.get_mut(k), v) {
                    (Some(Value::Array(all)), Value::Array(items)) => all.extend(items.iter().cloned()),
                    _ => {
                        obj.insert(k.clone(), v.clone());
                    }
                }
            }
        }
    }
    if (200..300).contains(&status) {
        if value.as_object().is_some_and(|o| !o.is_empty()) {
            println!("{}", pretty(&value));
        }
        return Ok(Outcome::Done);
    }
    let code = value["code"].as_str().unwrap_or("HttpError");
    let message = value["message"].as_str().map_or_else(|| format!("HTTP {status}"), str::to_owned);
    eprintln!("\nAn error occurred ({code}) when calling the {operation} operation: {message}");
    Ok(Outcome::Refused)
}

/// JSON with four-space indentation, as the AWS CLI prints it.
fn pretty(v: &Value) -> String {
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    let _ = serde::Serialize::serialize(v, &mut ser);
    String::from_utf8(out).unwrap_or_default()
}
