//! Just-in-time provisioning with AWS IoT-format provisioning templates.
//!
//! [`Template::parse`] validates a template when it is created: shape, resource types,
//! properties, override settings, intrinsic functions (`Ref`, `Fn::Join`, `Fn::Sub`,
//! `Fn::Select`, `Fn::Split`, `Fn::FindInMap`) and that every `Ref` names a declared parameter
//! and every map lookup a declared mapping; inline policy documents are validated as policies.
//!
//! [`jitp`] runs a template for a device certificate inside one registry transaction: register
//! the certificate PENDING_ACTIVATION, create or update the thing (with its override settings),
//! the policy, the attachments, then the final status. If any step fails the transaction rolls
//! back - no half-provisioned device - and the reason is recorded as a provisioning failure
//! with an audit row, queryable by the account's owner.

#![forbid(unsafe_code)]

pub mod ticket;

use std::collections::BTreeMap;

use claimlink_pki::Certificate;
use claimlink_pki::name::{attr, attribute};
use claimlink_registry::{
    Account, AuditRecord, CertificateRecord, CertificateStatus, ProvisioningFailure, RegistryError, Store, Tx,
};
use serde_json::{Map, Value};

/// The certificate subject parameters a template may declare, with the X.520 attribute each
/// one reads.
pub const CERTIFICATE_PARAMETERS: [(&str, der::asn1::ObjectIdentifier); 7] = [
    ("AWS::IoT::Certificate::Country", attr::COUNTRY),
    ("AWS::IoT::Certificate::Organization", attr::ORGANIZATION),
    ("AWS::IoT::Certificate::OrganizationalUnit", attr::ORGANIZATIONAL_UNIT),
    ("AWS::IoT::Certificate::DistinguishedNameQualifier", attr::DN_QUALIFIER),
    ("AWS::IoT::Certificate::StateName", attr::STATE),
    ("AWS::IoT::Certificate::CommonName", attr::COMMON_NAME),
    ("AWS::IoT::Certificate::SerialNumber", attr::SERIAL_NUMBER),
];

/// The registry's id of the certificate being provisioned.
pub const CERTIFICATE_ID_PARAMETER: &str = "AWS::IoT::Certificate::Id";

/// A template that does not validate. [`TemplateError::code`] is stable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    /// Not JSON, or not the template shape.
    #[error("invalid template: {0}")]
    Invalid(String),
    /// Larger than 10 KiB.
    #[error("the template body is {0} bytes; the limit is 10240")]
    TooLarge(usize),
}

impl TemplateError {
    /// A stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "InvalidRequestException",
            Self::TooLarge(_) => "LimitExceededException",
        }
    }
}

fn invalid(msg: impl Into<String>) -> TemplateError {
    TemplateError::Invalid(msg.into())
}

/// Why provisioning failed (recorded, and shown to the account owner).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProvisionError {
    /// The template cannot be applied to this certificate (a missing subject field without a
    /// Default, an override setting of FAIL that triggered, an unknown thing group...).
    #[error("{0}")]
    DoesNotFit(String),
    /// The template is not valid (it changed since it was stored, or was stored by an older
    /// version).
    #[error("{0}")]
    Template(#[from] TemplateError),
    /// The registry refused a step.
    #[error("{0}")]
    Registry(#[from] RegistryError),
}

impl ProvisionError {
    /// Whether retrying could help (a database failure, a concurrent provisioning of the same
    /// certificate) as opposed to a template that will never fit.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Registry(e) if e.is_conflict() || matches!(e, RegistryError::Database(_)))
    }
}

/// What to do with a field of a thing that exists already (OverrideSettings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Override {
    /// Keep the thing's value (the default).
    DoNothing,
    /// Take the template's value.
    Replace,
    /// Add the template's attributes or groups to the thing's.
    Merge,
    /// Fail provisioning if they differ.
    Fail,
}

impl Override {
    fn parse(field: &str, v: &Value, merge_allowed: bool) -> Result<Self, TemplateError> {
        let o = match v.as_str() {
            Some("DO_NOTHING") => Self::DoNothing,
            Some("REPLACE") => Self::Replace,
            Some("FAIL") => Self::Fail,
            Some("MERGE") if merge_allowed => Self::Merge,
            _ => {
                let allowed = if merge_allowed {
                    "DO_NOTHING, REPLACE, MERGE, FAIL"
                } else {
                    "DO_NOTHING, REPLACE, FAIL"
                };
                return Err(invalid(format!("OverrideSettings.{field} must be one of {allowed}")));
            }
        };
        Ok(o)
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Parameter {
    default: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
struct ThingResource {
    properties: Map<String, Value>,
    attributes: Override,
    thing_type: Override,
    groups: Override,
}

#[derive(Debug, Clone, PartialEq)]
enum PolicyResource {
    Named(Value),
    Document(String, Value),
}

/// A validated provisioning template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parameters: BTreeMap<String, Parameter>,
    mappings: Map<String, Value>,
    thing: Option<ThingResource>,
    certificate: Option<Map<String, Value>>,
    policies: Vec<PolicyResource>,
}

/// Most bytes in a template body.
pub const MAX_TEMPLATE_BYTES: usize = 10 * 1024;

impl Template {
    /// Validates a template body.
    pub fn parse(body: &str) -> Result<Self, TemplateError> {
        if body.len() > MAX_TEMPLATE_BYTES {
            return Err(TemplateError::TooLarge(body.len()));
        }
        let json: Value = serde_json::from_str(body).map_err(|e| invalid(format!("not JSON: {e}")))?;
        let Value::Object(top) = json else { return Err(invalid("the template must be a JSON object")) };
        let mut t = Template {
            parameters: BTreeMap::new(),
            mappings: Map::new(),
            thing: None,
            certificate: None,
            policies: Vec::new(),
        };
        let mut resources = None;
        for (key, value) in &top {
            match key.as_str() {
                "Parameters" => t.parameters = parse_parameters(value)?,
                "Mappings" => {
                    t.mappings =
                        value.as_object().cloned().ok_or_else(|| invalid("Mappings must be an object"))?;
                }
                "Resources" => resources = Some(value),
                "DeviceConfiguration" | "Description" | "AWSTemplateFormatVersion" => {}
                "Conditions" => return Err(invalid("Conditions are not supported")),
                other => return Err(invalid(format!("unknown top-level element {other:?}"))),
            }
        }
        let resources = resources
            .and_then(Value::as_object)
            .ok_or_else(|| invalid("Resources must be a non-empty object"))?;
        if resources.is_empty() {
            return Err(invalid("Resources must be a non-empty object"));
        }
        for (logical, r) in resources {
            t.add_resource(logical, r)?;
        }
        // Every intrinsic function must be well formed and refer to what exists.
        let all: Vec<&Value> = t
            .thing
            .iter()
            .map(|th| &th.properties)
            .chain(t.certificate.iter())
            .flat_map(|m| m.values())
            .chain(t.policies.iter().map(|p| match p {
                PolicyResource::Named(v) => v,
                PolicyResource::Document(_, v) => v,
            }))
            .collect();
        for v in all {
            t.check_value(v)?;
        }
        Ok(t)
    }

    fn add_resource(&mut self, logical: &str, r: &Value) -> Result<(), TemplateError> {
        let r = r.as_object().ok_or_else(|| invalid(format!("resource {logical:?} must be an object")))?;
        let kind = r
            .get("Type")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("resource {logical:?} has no Type")))?;
        let properties = match r.get("Properties") {
            Some(Value::Object(p)) => p.clone(),
            None => Map::new(),
            Some(_) => return Err(invalid(format!("resource {logical:?}: Properties must be an object"))),
        };
        for key in r.keys() {
            if !matches!(key.as_str(), "Type" | "Properties" | "OverrideSettings") {
                return Err(invalid(format!("resource {logical:?}: unknown element {key:?}")));
            }
        }
        let known = |allowed: &[&str]| -> Result<(), TemplateError> {
            match properties.keys().find(|k| !allowed.contains(&k.as_str())) {
                Some(k) => Err(invalid(format!("resource {logical:?} ({kind}): unknown property {k:?}"))),
                None => Ok(()),
            }
        };
        match kind {
            "AWS::IoT::Thing" => {
                if self.thing.is_some() {
                    return Err(invalid("a template provisions at most one thing"));
                }
                known(&["ThingName", "AttributePayload", "ThingTypeName", "ThingGroups", "BillingGroup"])?;
                if !properties.contains_key("ThingName") {
                    return Err(invalid(format!("resource {logical:?}: ThingName is required")));
                }
                let (mut attributes, mut thing_type, mut groups) =
                    (Override::DoNothing, Override::DoNothing, Override::DoNothing);
                if let Some(o) = r.get("OverrideSettings") {
                    let o = o.as_object().ok_or_else(|| invalid("OverrideSettings must be an object"))?;
                    for (k, v) in o {
                        match k.as_str() {
                            "AttributePayload" => attributes = Override::parse(k, v, true)?,
                            "ThingTypeName" => thing_type = Override::parse(k, v, false)?,
                            "ThingGroups" => groups = Override::parse(k, v, true)?,
                            other => {
                                return Err(invalid(format!("OverrideSettings: unknown setting {other:?}")));
                            }
                        }
                    }
                }
                self.thing = Some(ThingResource { properties, attributes, thing_type, groups });
            }
            "AWS::IoT::Certificate" => {
                if self.certificate.is_some() {
                    return Err(invalid("a template provisions at most one certificate"));
                }
                known(&["CertificateId", "Status", "CertificatePem"])?;
                if let Some(s) = properties.get("Status").and_then(Value::as_str) {
                    CertificateStatus::parse(s).map_err(|e| invalid(e.to_string()))?;
                }
                self.certificate = Some(properties);
            }
            "AWS::IoT::Policy" => {
                known(&["PolicyName", "PolicyDocument"])?;
                match (properties.get("PolicyName"), properties.get("PolicyDocument")) {
                    (Some(name), None) => self.policies.push(PolicyResource::Named(name.clone())),
                    (None, Some(doc)) => {
                        // A literal document is validated now; a computed one when it runs.
                        if let Some(text) = doc.as_str() {
                            claimlink_policy::Policy::parse(text)
                                .map_err(|e| invalid(format!("resource {logical:?}: PolicyDocument: {e}")))?;
                        } else if doc.is_object() && !is_intrinsic(doc) {
                            let text = doc.to_string();
                            claimlink_policy::Policy::parse(&text)
                                .map_err(|e| invalid(format!("resource {logical:?}: PolicyDocument: {e}")))?;
                        }
                        self.policies.push(PolicyResource::Document(logical.to_owned(), doc.clone()));
                    }
                    _ => {
                        return Err(invalid(format!(
                            "resource {logical:?}: a policy has exactly one of PolicyName and PolicyDocument"
                        )));
                    }
                }
            }
            other => return Err(invalid(format!("resource {logical:?}: unsupported Type {other:?}"))),
        }
        Ok(())
    }

    /// Checks intrinsic functions recursively.
    fn check_value(&self, v: &Value) -> Result<(), TemplateError> {
        match v {
            Value::Object(m) if m.len() == 1 && m.keys().all(|k| k == "Ref" || k.starts_with("Fn::")) => {
                let (f, arg) = m.iter().next().map(|(k, v)| (k.as_str(), v)).unwrap_or(("", &Value::Null));
                match f {
                    "Ref" => {
                        let name = arg.as_str().ok_or_else(|| invalid("Ref takes a parameter name"))?;
                        if !self.parameters.contains_key(name) {
                            return Err(invalid(format!("Ref {name:?}: no such parameter in Parameters")));
                        }
                    }
                    "Fn::Join" => {
                        let a =
                            arg.as_array().filter(|a| a.len() == 2 && a[0].is_string() && a[1].is_array());
                        let a = a.ok_or_else(|| invalid("Fn::Join takes [delimiter, [values]]"))?;
                        self.check_value(&a[1])?;
                    }
                    "Fn::Select" => {
                        let a = arg.as_array().filter(|a| a.len() == 2);
                        let a = a.ok_or_else(|| invalid("Fn::Select takes [index, list]"))?;
                        self.check_value(&a[0])?;
                        self.check_value(&a[1])?;
                    }
                    "Fn::Split" => {
                        let a = arg.as_array().filter(|a| a.len() == 2 && a[0].is_string());
                        let a = a.ok_or_else(|| invalid("Fn::Split takes [delimiter, string]"))?;
                        self.check_value(&a[1])?;
                    }
                    "Fn::Sub" => match arg {
                        Value::String(s) => self.check_sub(s, &Map::new())?,
                        Value::Array(a) if a.len() == 2 && a[0].is_string() && a[1].is_object() => {
                            let vars = a[1].as_object().cloned().unwrap_or_default();
                            for v in vars.values() {
                                self.check_value(v)?;
                            }
                            self.check_sub(a[0].as_str().unwrap_or_default(), &vars)?;
                        }
                        _ => return Err(invalid("Fn::Sub takes a string or [string, {variables}]")),
                    },
                    "Fn::FindInMap" => {
                        let a = arg.as_array().filter(|a| a.len() == 3);
                        let a = a.ok_or_else(|| invalid("Fn::FindInMap takes [map, top key, second key]"))?;
                        match a[0].as_str() {
                            Some(map) if self.mappings.contains_key(map) => {}
                            Some(map) => {
                                return Err(invalid(format!(
                                    "Fn::FindInMap: no mapping {map:?} in Mappings"
                                )));
                            }
                            None => self.check_value(&a[0])?,
                        }
                        self.check_value(&a[1])?;
                        self.check_value(&a[2])?;
                    }
                    other => return Err(invalid(format!("unsupported intrinsic function {other:?}"))),
                }
                Ok(())
            }
            Value::Object(m) => m.values().try_for_each(|v| self.check_value(v)),
            Value::Array(a) => a.iter().try_for_each(|v| self.check_value(v)),
            _ => Ok(()),
        }
    }

    fn check_sub(&self, s: &str, vars: &Map<String, Value>) -> Result<(), TemplateError> {
        for name in sub_variables(s)? {
            if !vars.contains_key(name) && !self.parameters.contains_key(name) {
                return Err(invalid(format!("Fn::Sub: ${{{name}}} is neither a parameter nor a variable")));
            }
        }
        Ok(())
    }

    /// Whether the template provisions a certificate resource (a JITP template should).
    pub fn has_certificate(&self) -> bool {
        self.certificate.is_some()
    }
}

fn is_intrinsic(v: &Value) -> bool {
    matches!(v, Value::Object(m) if m.len() == 1 && m.keys().all(|k| k == "Ref" || k.starts_with("Fn::")))
}

fn parse_parameters(v: &Value) -> Result<BTreeMap<String, Parameter>, TemplateError> {
    let m = v.as_object().ok_or_else(|| invalid("Parameters must be an object"))?;
    let mut out = BTreeMap::new();
    for (name, p) in m {
        let p = p.as_object().ok_or_else(|| invalid(format!("parameter {name:?} must be an object")))?;
        match p.get("Type").and_then(Value::as_str) {
            Some("String") | None => {}
            Some(other) => return Err(invalid(format!("parameter {name:?}: unsupported Type {other:?}"))),
        }
        let default = match p.get("Default") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(_) => return Err(invalid(format!("parameter {name:?}: Default must be a string"))),
        };
        if name.starts_with("AWS::IoT::Certificate::")
            && name != CERTIFICATE_ID_PARAMETER
            && !CERTIFICATE_PARAMETERS.iter().any(|(n, _)| n == name)
        {
            return Err(invalid(format!("parameter {name:?} is not a certificate field")));
        }
        out.insert(name.clone(), Parameter { default });
    }
    Ok(out)
}

/// The `${name}` references of an `Fn::Sub` string (`${!literal}` is an escape).
fn sub_variables(s: &str) -> Result<Vec<&str>, TemplateError> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        let after = &rest[i + 2..];
        let end = after.find('}').ok_or_else(|| invalid("Fn::Sub: unterminated ${"))?;
        let name = &after[..end];
        if !name.starts_with('!') {
            out.push(name);
        }
        rest = &after[end + 1..];
    }
    Ok(out)
}

/// A value during evaluation.
#[derive(Debug, Clone, PartialEq)]
enum Evaluated {
    Text(String),
    List(Vec<String>),
    Json(Value),
}

/// Parameter values for one run: certificate fields, the certificate id, defaults.
pub type Parameters = BTreeMap<String, String>;

/// The certificate subject fields by their AWS policy-variable names (`CommonName`,
/// `Organization`, ...), for policy variables and template parameters.
pub fn subject_fields(cert: &Certificate) -> BTreeMap<String, String> {
    name_fields(cert.subject())
}

/// A distinguished name's fields by their AWS policy-variable names (for
/// `${iot:Certificate.Subject.X}` and `${iot:Certificate.Issuer.X}`).
pub fn name_fields(name: &claimlink_pki::Name) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (param, oid) in CERTIFICATE_PARAMETERS {
        if let Some(v) = attribute(name, oid) {
            let field = param.trim_start_matches("AWS::IoT::Certificate::");
            let field = if field == "StateName" { "State" } else { field };
            out.insert(field.to_owned(), v);
        }
    }
    out
}

/// What the template asks for this certificate, with every function evaluated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The thing: name, type, attributes, groups.
    pub thing: Option<ThingPlan>,
    /// The certificate's final status.
    pub certificate_status: Option<CertificateStatus>,
    /// Policies: existing names, or (name, document) to create.
    pub policies: Vec<(String, Option<String>)>,
}

/// The thing part of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThingPlan {
    /// Name.
    pub name: String,
    /// Type.
    pub thing_type: Option<String>,
    /// Attributes.
    pub attributes: BTreeMap<String, String>,
    /// Groups.
    pub groups: Vec<String>,
    /// OverrideSettings for AttributePayload, ThingTypeName and ThingGroups.
    pub overrides: [Override; 3],
}

impl Template {
    /// The parameters for `cert` (registry id `certificate_id`): certificate fields, then
    /// defaults. A declared parameter with neither is left out; using it fails the run.
    pub fn parameters_for(&self, cert: &Certificate, certificate_id: &str) -> Parameters {
        let mut out = Parameters::new();
        for (name, p) in &self.parameters {
            let from_cert = if name == CERTIFICATE_ID_PARAMETER {
                Some(certificate_id.to_owned())
            } else {
                CERTIFICATE_PARAMETERS
                    .iter()
                    .find(|(n, _)| n == name)
                    .and_then(|(_, oid)| attribute(cert.subject(), *oid))
            };
            if let Some(v) = from_cert.or_else(|| p.default.clone()) {
                out.insert(name.clone(), v);
            }
        }
        out
    }

    /// Evaluates the template with `params`.
    pub fn plan(&self, params: &Parameters, template_name: &str) -> Result<Plan, ProvisionError> {
        let ev = Evaluator { params, mappings: &self.mappings };
        let thing = match &self.thing {
            None => None,
            Some(t) => {
                let p = &t.properties;
                let name = ev.text(p.get("ThingName").unwrap_or(&Value::Null), "ThingName")?;
                let thing_type = p
                    .get("ThingTypeName")
                    .map(|v| ev.text(v, "ThingTypeName"))
                    .transpose()?
                    .filter(|s| !s.is_empty());
                let mut attributes = BTreeMap::new();
                if let Some(a) = p.get("AttributePayload") {
                    let a = a.as_object().ok_or_else(|| fit("AttributePayload must be an object"))?;
                    for (k, v) in a {
                        attributes.insert(k.clone(), ev.text(v, &format!("AttributePayload.{k}"))?);
                    }
                }
                let mut groups = Vec::new();
                if let Some(g) = p.get("ThingGroups") {
                    match ev.eval(g, "ThingGroups")? {
                        Evaluated::List(l) => groups = l,
                        Evaluated::Json(Value::Array(a)) => {
                            for (i, v) in a.iter().enumerate() {
                                groups.push(ev.text(v, &format!("ThingGroups[{i}]"))?);
                            }
                        }
                        Evaluated::Text(t) => groups.push(t),
                        Evaluated::Json(_) => return Err(fit("ThingGroups must be a list")),
                    }
                }
                Some(ThingPlan {
                    name,
                    thing_type,
                    attributes,
                    groups,
                    overrides: [t.attributes, t.thing_type, t.groups],
                })
            }
        };
        let certificate_status = match &self.certificate {
            None => None,
            Some(c) => Some(match c.get("Status") {
                Some(v) => {
                    CertificateStatus::parse(&ev.text(v, "Status")?).map_err(|e| fit(&e.to_string()))?
                }
                None => CertificateStatus::Active,
            }),
        };
        let mut policies = Vec::new();
        for p in &self.policies {
            match p {
                PolicyResource::Named(v) => policies.push((ev.text(v, "PolicyName")?, None)),
                PolicyResource::Document(logical, v) => {
                    let doc = match ev.eval(v, "PolicyDocument")? {
                        Evaluated::Text(t) => t,
                        Evaluated::Json(j) => j.to_string(),
                        Evaluated::List(_) => return Err(fit("PolicyDocument must be a document")),
                    };
                    claimlink_policy::Policy::parse(&doc)
                        .map_err(|e| fit(&format!("PolicyDocument: {e}")))?;
                    // Same document, same name: running the template again reuses the policy.
                    let digest = ring::digest::digest(&ring::digest::SHA256, doc.as_bytes());
                    let name = format!("{template_name}-{logical}-{}", &hex::encode(digest)[..16]);
                    policies.push((name, Some(doc)));
                }
            }
        }
        Ok(Plan { thing, certificate_status, policies })
    }
}

fn fit(msg: &str) -> ProvisionError {
    ProvisionError::DoesNotFit(msg.to_owned())
}

struct Evaluator<'a> {
    params: &'a Parameters,
    mappings: &'a Map<String, Value>,
}

impl Evaluator<'_> {
    fn text(&self, v: &Value, what: &str) -> Result<String, ProvisionError> {
        match self.eval(v, what)? {
            Evaluated::Text(t) => Ok(t),
            Evaluated::Json(Value::Number(n)) => Ok(n.to_string()),
            Evaluated::Json(Value::Bool(b)) => Ok(b.to_string()),
            _ => Err(fit(&format!("{what} must be a string"))),
        }
    }

    fn param(&self, name: &str) -> Result<String, ProvisionError> {
        self.params.get(name).cloned().ok_or_else(|| {
            let hint = if name.starts_with("AWS::IoT::Certificate::") {
                "the device certificate's subject has no such field"
            } else {
                "no value was given"
            };
            fit(&format!("parameter {name} has no value ({hint}) and no Default"))
        })
    }

    fn eval(&self, v: &Value, what: &str) -> Result<Evaluated, ProvisionError> {
        let Value::Object(m) = v else {
            return Ok(match v {
                Value::String(s) => Evaluated::Text(s.clone()),
                other => Evaluated::Json(other.clone()),
            });
        };
        if !is_intrinsic(v) {
            // A plain object: evaluate its members (a policy document with Refs inside).
            let mut out = Map::new();
            for (k, inner) in m {
                let e = match self.eval(inner, what)? {
                    Evaluated::Text(t) => Value::String(t),
                    Evaluated::List(l) => Value::Array(l.into_iter().map(Value::String).collect()),
                    Evaluated::Json(j) => j,
                };
                out.insert(k.clone(), e);
            }
            return Ok(Evaluated::Json(Value::Object(out)));
        }
        let (f, arg) = m.iter().next().map(|(k, v)| (k.as_str(), v)).unwrap_or(("", &Value::Null));
        let items = |v: &Value| -> Result<Vec<String>, ProvisionError> {
            match self.eval(v, what)? {
                Evaluated::List(l) => Ok(l),
                Evaluated::Json(Value::Array(a)) => a.iter().map(|x| self.text(x, what)).collect(),
                Evaluated::Text(t) => Ok(vec![t]),
                Evaluated::Json(_) => Err(fit(&format!("{what}: expected a list"))),
            }
        };
        let args = arg.as_array().map(Vec::as_slice).unwrap_or_default();
        Ok(match f {
            "Ref" => Evaluated::Text(self.param(arg.as_str().unwrap_or_default())?),
            "Fn::Join" => {
                let delim = args.first().and_then(Value::as_str).unwrap_or_default();
                Evaluated::Text(items(args.get(1).unwrap_or(&Value::Null))?.join(delim))
            }
            "Fn::Split" => {
                let delim = args.first().and_then(Value::as_str).unwrap_or_default();
                let s = self.text(args.get(1).unwrap_or(&Value::Null), what)?;
                if delim.is_empty() {
                    return Err(fit("Fn::Split: empty delimiter"));
                }
                Evaluated::List(s.split(delim).map(str::to_owned).collect())
            }
            "Fn::Select" => {
                let i = self.text(args.first().unwrap_or(&Value::Null), what)?;
                let i: usize =
                    i.parse().map_err(|_| fit(&format!("Fn::Select: index {i:?} is not a number")))?;
                let list = items(args.get(1).unwrap_or(&Value::Null))?;
                Evaluated::Text(
                    list.get(i)
                        .cloned()
                        .ok_or_else(|| fit(&format!("Fn::Select: index {i} of a list of {}", list.len())))?,
                )
            }
            "Fn::Sub" => {
                let (s, vars) = match arg {
                    Value::String(s) => (s.as_str(), Map::new()),
                    _ => (
                        args.first().and_then(Value::as_str).unwrap_or_default(),
                        args.get(1).and_then(Value::as_object).cloned().unwrap_or_default(),
                    ),
                };
                let mut out = String::new();
                let mut rest = s;
                while let Some(i) = rest.find("${") {
                    out.push_str(&rest[..i]);
                    let after = &rest[i + 2..];
                    let end = after.find('}').ok_or_else(|| fit("Fn::Sub: unterminated ${"))?;
                    let name = &after[..end];
                    if let Some(lit) = name.strip_prefix('!') {
                        out.push_str("${");
                        out.push_str(lit);
                        out.push('}');
                    } else if let Some(v) = vars.get(name) {
                        out.push_str(&self.text(v, what)?);
                    } else {
                        out.push_str(&self.param(name)?);
                    }
                    rest = &after[end + 1..];
                }
                out.push_str(rest);
                Evaluated::Text(out)
            }
            "Fn::FindInMap" => {
                let map = self.text(args.first().unwrap_or(&Value::Null), what)?;
                let top = self.text(args.get(1).unwrap_or(&Value::Null), what)?;
                let second = self.text(args.get(2).unwrap_or(&Value::Null), what)?;
                let found = self.mappings.get(&map).and_then(|m| m.get(&top)).and_then(|m| m.get(&second));
                match found {
                    Some(Value::String(s)) => Evaluated::Text(s.clone()),
                    Some(Value::Array(a)) => {
                        Evaluated::List(a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                    }
                    Some(other) => Evaluated::Json(other.clone()),
                    None => return Err(fit(&format!("Fn::FindInMap: no {map}/{top}/{second} in Mappings"))),
                }
            }
            other => return Err(fit(&format!("unsupported intrinsic function {other}"))),
        })
    }
}

/// What provisioning produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioned {
    /// The certificate as registered.
    pub certificate: CertificateRecord,
    /// The thing it is attached to.
    pub thing_name: Option<String>,
    /// Policies attached to the certificate.
    pub policies: Vec<String>,
}

/// Runs JITP for `cert` (issued by the registered CA `ca_id`) with the stored template
/// `template_name`, in one transaction. On failure nothing is kept but a provisioning failure
/// record and an audit row.
pub async fn jitp(
    store: &Store,
    account: &Account,
    ca_id: &str,
    template_name: &str,
    cert: &Certificate,
) -> Result<Provisioned, ProvisionError> {
    // Everything that only reads happens before the write transaction, which SQLite
    // serialises: it should hold the writer for as few statements as possible.
    let stored = match store.read().await {
        Ok(mut tx) => tx.template(&account.id, template_name).await,
        Err(e) => Err(e),
    };
    match stored {
        Ok(stored) => jitp_with(store, account, ca_id, &stored, cert).await,
        Err(e) => {
            let e = ProvisionError::from(e);
            let id = cert.id().to_string();
            record_failure(store, account, &id, Some(ca_id), Some(template_name), &e.to_string()).await;
            Err(e)
        }
    }
}

/// [`jitp`] with the stored template already read (the account endpoint reads it in the same
/// transaction as the certificate lookup).
pub async fn jitp_with(
    store: &Store,
    account: &Account,
    ca_id: &str,
    stored: &claimlink_registry::Template,
    cert: &Certificate,
) -> Result<Provisioned, ProvisionError> {
    let certificate_id = cert.id().to_string();
    let template_name = stored.name.as_str();
    let result = async {
        if !stored.enabled {
            return Err(fit(&format!("template {template_name} is disabled")));
        }
        let template = Template::parse(&stored.body)?;
        let params = template.parameters_for(cert, &certificate_id);
        let plan = template.plan(&params, template_name)?;
        // Lost in a machine crash, it is redone by the device's next connection.
        let mut tx = store.begin_relaxed().await?;
        let provisioned = apply(&mut tx, account, ca_id, cert, &plan).await?;
        tx.audit(Some(&account.id), &audit_row("JITP", &certificate_id, "ok", Some(template_name))).await?;
        tx.commit().await?;
        Ok(provisioned)
    }
    .await;
    if let Err(e) = &result {
        if !e.is_transient() {
            record_failure(store, account, &certificate_id, Some(ca_id), Some(template_name), &e.to_string())
                .await;
        }
        tracing::info!(account = %account.id, certificate = %certificate_id, error = %e, "JITP failed");
    }
    result
}

/// Records a failure and its audit row (best effort: the failure itself is already reported to
/// the caller).
pub async fn record_failure(
    store: &Store,
    account: &Account,
    certificate_id: &str,
    ca_id: Option<&str>,
    template: Option<&str>,
    reason: &str,
) {
    let failure = ProvisioningFailure {
        certificate_id: certificate_id.to_owned(),
        ca_id: ca_id.map(str::to_owned),
        template_name: template.map(str::to_owned),
        reason: reason.to_owned(),
        at: claimlink_registry::now(),
    };
    let write = async {
        let mut tx = store.begin().await?;
        tx.record_provisioning_failure(&account.id, &failure).await?;
        tx.audit(Some(&account.id), &audit_row("JITP", certificate_id, "failed", Some(reason))).await?;
        tx.commit().await
    };
    if let Err(e) = write.await {
        tracing::warn!(error = %e, "could not record a provisioning failure");
    }
}

fn audit_row(action: &str, target: &str, result: &str, detail: Option<&str>) -> AuditRecord {
    AuditRecord {
        actor: "jitp".into(),
        action: action.into(),
        target: target.into(),
        result: result.into(),
        detail: detail.map(|d| serde_json::json!({ "detail": d }).to_string()),
        at: claimlink_registry::now(),
    }
}

async fn apply(
    tx: &mut Tx,
    account: &Account,
    ca_id: &str,
    cert: &Certificate,
    plan: &Plan,
) -> Result<Provisioned, ProvisionError> {
    let a = &account.id;
    // The chain was verified by the TLS handshake that brought the device here.
    let mut record = tx.insert_verified_certificate(a, cert, Some(ca_id)).await?;
    let mut thing_name = None;
    if let Some(t) = &plan.thing {
        match tx.thing(a, &t.name).await? {
            None => tx
                .insert_new_thing(a, &t.name, t.thing_type.as_deref(), &t.attributes, &t.groups)
                .await
                .map_err(group_error)?,
            Some(existing) => update_thing(tx, a, &existing, t).await?,
        }
        thing_name = Some(t.name.clone());
    }
    let mut policies = Vec::new();
    for (name, doc) in &plan.policies {
        if let Some(doc) = doc {
            match tx.get_policy(a, name).await {
                Ok(_) => {}
                Err(RegistryError::NotFound { .. }) => {
                    tx.create_policy(a, name, doc).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        policies.push(name.clone());
    }
    tx.attach_policies_to_new_certificate(a, &record.id, &policies).await.map_err(|e| match e {
        RegistryError::NotFound { kind: "policy", name } => {
            fit(&format!("policy {name} named by the template does not exist in this account"))
        }
        other => other.into(),
    })?;
    if let Some(thing) = &thing_name {
        tx.link_thing_principal(a, thing, &record.id).await?;
    }
    let status = plan.certificate_status.unwrap_or(CertificateStatus::Active);
    tx.set_new_certificate_status(a, &mut record, status).await?;
    Ok(Provisioned { certificate: record, thing_name, policies })
}

/// A missing thing group is the template's fault: say so.
fn group_error(e: RegistryError) -> ProvisionError {
    match e {
        RegistryError::NotFound { kind: "thing group", name } => {
            fit(&format!("thing group {name} named by the template does not exist in this account"))
        }
        other => other.into(),
    }
}

/// Applies the template to a thing that exists, as its override settings say.
async fn update_thing(
    tx: &mut Tx,
    a: &str,
    existing: &claimlink_registry::Thing,
    t: &ThingPlan,
) -> Result<(), ProvisionError> {
    let [attr_o, type_o, groups_o] = t.overrides;
    let refuse =
        |what: &str| fit(&format!("thing {} exists with other {what} and the template says FAIL", t.name));
    let mut attributes = existing.attributes.clone();
    match attr_o {
        Override::DoNothing => {}
        Override::Replace => attributes.clone_from(&t.attributes),
        Override::Merge => attributes.extend(t.attributes.clone()),
        Override::Fail if existing.attributes != t.attributes => return Err(refuse("attributes")),
        Override::Fail => {}
    }
    let mut thing_type = existing.thing_type.clone();
    match type_o {
        Override::Replace | Override::Merge => thing_type.clone_from(&t.thing_type),
        Override::Fail if existing.thing_type != t.thing_type => return Err(refuse("thing type")),
        Override::Fail | Override::DoNothing => {}
    }
    if attributes != existing.attributes || thing_type != existing.thing_type {
        tx.update_thing(a, &t.name, thing_type.as_deref(), &attributes).await?;
    }
    let current = tx.groups_of_thing(a, &t.name).await?;
    let missing: Vec<&String> = t.groups.iter().filter(|g| !current.contains(g)).collect();
    let extra: Vec<&String> = current.iter().filter(|g| !t.groups.contains(g)).collect();
    match groups_o {
        Override::DoNothing => {}
        Override::Fail if !missing.is_empty() || !extra.is_empty() => return Err(refuse("thing groups")),
        Override::Fail => {}
        Override::Merge | Override::Replace => {
            if groups_o == Override::Replace {
                for g in &extra {
                    tx.remove_thing_from_group(a, g, &t.name).await?;
                }
            }
            for g in missing {
                tx.add_thing_to_group(a, g, &t.name).await.map_err(group_error)?;
            }
        }
    }
    Ok(())
}

/// Just-in-time registration (a CA with auto-registration and no template): the certificate is
/// registered PENDING_ACTIVATION and the event for `$aws/events/certificates/registered/{caId}`
/// is returned for the caller to publish.
pub async fn jitr(
    store: &Store,
    account: &Account,
    ca_id: &str,
    cert: &Certificate,
) -> Result<(CertificateRecord, Value), ProvisionError> {
    let mut tx = store.begin().await?;
    let record = tx
        .register_certificate(&account.id, &cert.to_pem(), Some(ca_id), CertificateStatus::PendingActivation)
        .await?;
    tx.audit(Some(&account.id), &audit_row("JITR", &record.id, "ok", None)).await?;
    tx.commit().await?;
    let event = serde_json::json!({
        "certificateId": record.id,
        "caCertificateId": ca_id,
        "timestamp": record.created,
        "certificateStatus": "PENDING_ACTIVATION",
        "awsAccountId": account.id,
        "certificateRegistrationTimestamp": record.created,
    });
    Ok((record, event))
}
