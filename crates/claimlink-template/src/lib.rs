//! AWS-format provisioning templates, compiled once. [`Template::parse`] validates the body and
//! compiles every property into an expression tree ([`Expr`]): intrinsic functions resolved to
//! their nodes, `Fn::Sub` strings split into literal parts and references, literal policy
//! documents validated and kept as text. Running the template for a device
//! ([`Template::plan`]) walks those trees with the device's parameters and parses nothing again.
//! Like `claimlink-policy`, this crate does no I/O: provisioning (`claimlink-provision`) applies
//! the plan to the registry.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use claimlink_pki::Certificate;
use claimlink_pki::name::{attr, attribute};
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

/// The certificate statuses a template may name (`Status` of `AWS::IoT::Certificate`): the
/// registry's.
pub const CERTIFICATE_STATUSES: [&str; 5] =
    ["ACTIVE", "INACTIVE", "REVOKED", "PENDING_TRANSFER", "PENDING_ACTIVATION"];

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

/// A template that cannot be applied to one device's parameters (a missing subject field
/// without a Default, a list where a string belongs...). The template stays valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DoesNotFit(pub String);

fn status(s: &str) -> Option<&'static str> {
    CERTIFICATE_STATUSES.into_iter().find(|c| *c == s)
}

fn invalid(msg: impl Into<String>) -> TemplateError {
    TemplateError::Invalid(msg.into())
}

fn fit(msg: &str) -> DoesNotFit {
    DoesNotFit(msg.to_owned())
}

/// Most bytes in a template body.
pub const MAX_TEMPLATE_BYTES: usize = 10 * 1024;

/// Deepest nesting of intrinsic functions and objects in a property.
const MAX_DEPTH: usize = 32;

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

/// A compiled property: what it evaluates to for one device.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A string.
    Text(String),
    /// A number, a boolean or null, as written.
    Json(Value),
    /// A list whose elements are evaluated.
    Array(Vec<Expr>),
    /// An object whose members are evaluated (a policy document with references inside).
    Object(Vec<(String, Expr)>),
    /// `{"Ref": name}`: a parameter.
    Ref(String),
    /// `{"Fn::Join": [delimiter, list]}`.
    Join(String, Box<Expr>),
    /// `{"Fn::Split": [delimiter, string]}`.
    Split(String, Box<Expr>),
    /// `{"Fn::Select": [index, list]}`.
    Select(Box<Expr>, Box<Expr>),
    /// `{"Fn::Sub": ...}`, its string cut into parts once.
    Sub(Vec<SubPart>),
    /// `{"Fn::FindInMap": [map, top key, second key]}`.
    FindInMap(Box<[Expr; 3]>),
}

/// A piece of an `Fn::Sub` string.
#[derive(Debug, Clone, PartialEq)]
pub enum SubPart {
    /// Text as written (`${!x}` already turned into `${x}`).
    Literal(String),
    /// `${name}` naming a parameter.
    Parameter(String),
    /// `${name}` naming one of the function's own variables, compiled.
    Variable(Expr),
}

#[derive(Debug, Clone, PartialEq)]
struct ThingResource {
    name: Expr,
    thing_type: Option<Expr>,
    attributes: Vec<(String, Expr)>,
    groups: Option<Expr>,
    overrides: [Override; 3],
}

#[derive(Debug, Clone, PartialEq)]
enum PolicyResource {
    /// An existing policy by name.
    Named(Expr),
    /// A document validated at creation (no references): created as it is.
    Literal { logical: String, document: String },
    /// A document with references, validated when it has been evaluated.
    Computed { logical: String, document: Expr },
}

/// A validated and compiled provisioning template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    /// Declared parameters and their defaults.
    parameters: BTreeMap<String, Option<String>>,
    mappings: Map<String, Value>,
    thing: Option<ThingResource>,
    certificate: Option<Option<Expr>>,
    policies: Vec<PolicyResource>,
}

/// The compiler's view of the template while its resources are read.
struct Compiler<'a> {
    parameters: &'a BTreeMap<String, Option<String>>,
    mappings: &'a Map<String, Value>,
}

fn is_intrinsic(v: &Value) -> bool {
    matches!(v, Value::Object(m) if m.len() == 1 && m.keys().all(|k| k == "Ref" || k.starts_with("Fn::")))
}

impl Compiler<'_> {
    fn compile(&self, v: &Value, depth: usize) -> Result<Expr, TemplateError> {
        if depth > MAX_DEPTH {
            return Err(invalid(format!("a property nests deeper than {MAX_DEPTH} levels")));
        }
        let d = depth + 1;
        match v {
            Value::String(s) => Ok(Expr::Text(s.clone())),
            Value::Array(a) => {
                Ok(Expr::Array(a.iter().map(|x| self.compile(x, d)).collect::<Result<_, _>>()?))
            }
            Value::Object(m) if is_intrinsic(v) => {
                let (f, arg) = m.iter().next().map(|(k, v)| (k.as_str(), v)).unwrap_or(("", &Value::Null));
                self.function(f, arg, d)
            }
            Value::Object(m) => Ok(Expr::Object(
                m.iter()
                    .map(|(k, x)| Ok((k.clone(), self.compile(x, d)?)))
                    .collect::<Result<_, TemplateError>>()?,
            )),
            other => Ok(Expr::Json(other.clone())),
        }
    }

    fn function(&self, f: &str, arg: &Value, d: usize) -> Result<Expr, TemplateError> {
        let boxed = |v: &Value| self.compile(v, d).map(Box::new);
        match f {
            "Ref" => {
                let name = arg.as_str().ok_or_else(|| invalid("Ref takes a parameter name"))?;
                if !self.parameters.contains_key(name) {
                    return Err(invalid(format!("Ref {name:?}: no such parameter in Parameters")));
                }
                Ok(Expr::Ref(name.to_owned()))
            }
            "Fn::Join" => {
                let a = arg.as_array().filter(|a| a.len() == 2 && a[0].is_string() && a[1].is_array());
                let a = a.ok_or_else(|| invalid("Fn::Join takes [delimiter, [values]]"))?;
                Ok(Expr::Join(a[0].as_str().unwrap_or_default().to_owned(), boxed(&a[1])?))
            }
            "Fn::Select" => {
                let a = arg.as_array().filter(|a| a.len() == 2);
                let a = a.ok_or_else(|| invalid("Fn::Select takes [index, list]"))?;
                Ok(Expr::Select(boxed(&a[0])?, boxed(&a[1])?))
            }
            "Fn::Split" => {
                let a = arg.as_array().filter(|a| a.len() == 2 && a[0].is_string());
                let a = a.ok_or_else(|| invalid("Fn::Split takes [delimiter, string]"))?;
                let delimiter = a[0].as_str().unwrap_or_default();
                if delimiter.is_empty() {
                    return Err(invalid("Fn::Split: empty delimiter"));
                }
                Ok(Expr::Split(delimiter.to_owned(), boxed(&a[1])?))
            }
            "Fn::Sub" => {
                let (text, vars) = match arg {
                    Value::String(s) => (s.as_str(), None),
                    Value::Array(a) if a.len() == 2 && a[0].is_string() && a[1].is_object() => {
                        (a[0].as_str().unwrap_or_default(), a[1].as_object())
                    }
                    _ => return Err(invalid("Fn::Sub takes a string or [string, {variables}]")),
                };
                let vars: BTreeMap<&str, Expr> = match vars {
                    Some(m) => m
                        .iter()
                        .map(|(k, v)| Ok((k.as_str(), self.compile(v, d)?)))
                        .collect::<Result<_, TemplateError>>()?,
                    None => BTreeMap::new(),
                };
                self.sub(text, &vars)
            }
            "Fn::FindInMap" => {
                let a = arg.as_array().filter(|a| a.len() == 3);
                let a = a.ok_or_else(|| invalid("Fn::FindInMap takes [map, top key, second key]"))?;
                if let Some(map) = a[0].as_str()
                    && !self.mappings.contains_key(map)
                {
                    return Err(invalid(format!("Fn::FindInMap: no mapping {map:?} in Mappings")));
                }
                Ok(Expr::FindInMap(Box::new([
                    self.compile(&a[0], d)?,
                    self.compile(&a[1], d)?,
                    self.compile(&a[2], d)?,
                ])))
            }
            other => Err(invalid(format!("unsupported intrinsic function {other:?}"))),
        }
    }

    /// Cuts an `Fn::Sub` string into its parts (`${!literal}` is an escape).
    fn sub(&self, s: &str, vars: &BTreeMap<&str, Expr>) -> Result<Expr, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = s;
        while let Some(i) = rest.find("${") {
            literal.push_str(&rest[..i]);
            let after = &rest[i + 2..];
            let end = after.find('}').ok_or_else(|| invalid("Fn::Sub: unterminated ${"))?;
            let name = &after[..end];
            if let Some(lit) = name.strip_prefix('!') {
                literal.push_str("${");
                literal.push_str(lit);
                literal.push('}');
            } else {
                let part = match vars.get(name) {
                    Some(e) => SubPart::Variable(e.clone()),
                    None if self.parameters.contains_key(name) => SubPart::Parameter(name.to_owned()),
                    None => {
                        return Err(invalid(format!(
                            "Fn::Sub: ${{{name}}} is neither a parameter nor a variable"
                        )));
                    }
                };
                if !literal.is_empty() {
                    parts.push(SubPart::Literal(std::mem::take(&mut literal)));
                }
                parts.push(part);
            }
            rest = &after[end + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(SubPart::Literal(literal));
        }
        Ok(Expr::Sub(parts))
    }
}

impl Template {
    /// Validates and compiles a template body.
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
            .filter(|r| !r.is_empty())
            .ok_or_else(|| invalid("Resources must be a non-empty object"))?;
        for (logical, r) in resources {
            t.add_resource(logical, r)?;
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
        let c = Compiler { parameters: &self.parameters, mappings: &self.mappings };
        let compile = |name: &str| properties.get(name).map(|v| c.compile(v, 0)).transpose();
        match kind {
            "AWS::IoT::Thing" => {
                if self.thing.is_some() {
                    return Err(invalid("a template provisions at most one thing"));
                }
                known(&["ThingName", "AttributePayload", "ThingTypeName", "ThingGroups", "BillingGroup"])?;
                let name = compile("ThingName")?
                    .ok_or_else(|| invalid(format!("resource {logical:?}: ThingName is required")))?;
                let attributes = match properties.get("AttributePayload") {
                    None => Vec::new(),
                    Some(Value::Object(a)) => a
                        .iter()
                        .map(|(k, v)| Ok((k.clone(), c.compile(v, 1)?)))
                        .collect::<Result<_, TemplateError>>()?,
                    Some(_) => {
                        return Err(invalid(format!(
                            "resource {logical:?}: AttributePayload must be an object"
                        )));
                    }
                };
                let mut overrides = [Override::DoNothing; 3];
                if let Some(o) = r.get("OverrideSettings") {
                    let o = o.as_object().ok_or_else(|| invalid("OverrideSettings must be an object"))?;
                    for (k, v) in o {
                        match k.as_str() {
                            "AttributePayload" => overrides[0] = Override::parse(k, v, true)?,
                            "ThingTypeName" => overrides[1] = Override::parse(k, v, false)?,
                            "ThingGroups" => overrides[2] = Override::parse(k, v, true)?,
                            other => {
                                return Err(invalid(format!("OverrideSettings: unknown setting {other:?}")));
                            }
                        }
                    }
                }
                let (thing_type, groups) = (compile("ThingTypeName")?, compile("ThingGroups")?);
                self.thing = Some(ThingResource { name, thing_type, attributes, groups, overrides });
            }
            "AWS::IoT::Certificate" => {
                if self.certificate.is_some() {
                    return Err(invalid("a template provisions at most one certificate"));
                }
                known(&["CertificateId", "Status", "CertificatePem"])?;
                if let Some(s) = properties.get("Status").and_then(Value::as_str) {
                    status(s).ok_or_else(|| {
                        invalid(format!(
                            "CertificateStatus must be one of {}, not {s:?}",
                            CERTIFICATE_STATUSES.join(", ")
                        ))
                    })?;
                }
                // CertificateId and CertificatePem name the device's own certificate; only
                // their references are checked.
                compile("CertificateId")?;
                compile("CertificatePem")?;
                self.certificate = Some(compile("Status")?);
            }
            "AWS::IoT::Policy" => {
                known(&["PolicyName", "PolicyDocument"])?;
                let policy = match (properties.get("PolicyName"), properties.get("PolicyDocument")) {
                    (Some(name), None) => PolicyResource::Named(c.compile(name, 0)?),
                    (None, Some(doc)) => {
                        let literal = match doc {
                            Value::String(text) => Some(text.clone()),
                            Value::Object(_) if !contains_intrinsic(doc) => Some(doc.to_string()),
                            _ => None,
                        };
                        match literal {
                            Some(document) => {
                                claimlink_policy::Policy::parse(&document).map_err(|e| {
                                    invalid(format!("resource {logical:?}: PolicyDocument: {e}"))
                                })?;
                                PolicyResource::Literal { logical: logical.to_owned(), document }
                            }
                            None => PolicyResource::Computed {
                                logical: logical.to_owned(),
                                document: c.compile(doc, 0)?,
                            },
                        }
                    }
                    _ => {
                        return Err(invalid(format!(
                            "resource {logical:?}: a policy has exactly one of PolicyName and PolicyDocument"
                        )));
                    }
                };
                self.policies.push(policy);
            }
            other => return Err(invalid(format!("resource {logical:?}: unsupported Type {other:?}"))),
        }
        Ok(())
    }

    /// Whether the template provisions a certificate resource (a JITP template should).
    pub fn has_certificate(&self) -> bool {
        self.certificate.is_some()
    }
}

/// Whether an intrinsic function appears anywhere in `v`.
fn contains_intrinsic(v: &Value) -> bool {
    match v {
        Value::Object(m) => is_intrinsic(v) || m.values().any(contains_intrinsic),
        Value::Array(a) => a.iter().any(contains_intrinsic),
        _ => false,
    }
}

fn parse_parameters(v: &Value) -> Result<BTreeMap<String, Option<String>>, TemplateError> {
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
        out.insert(name.clone(), default);
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

impl Evaluated {
    fn into_json(self) -> Value {
        match self {
            Self::Text(t) => Value::String(t),
            Self::List(l) => Value::Array(l.into_iter().map(Value::String).collect()),
            Self::Json(j) => j,
        }
    }
}

/// Parameter values for one run: certificate fields, the certificate id, defaults.
pub type Parameters = BTreeMap<String, String>;

/// What the template asks for this certificate, with every function evaluated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The thing: name, type, attributes, groups.
    pub thing: Option<ThingPlan>,
    /// The certificate's final status (one of [`CERTIFICATE_STATUSES`]).
    pub certificate_status: Option<&'static str>,
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
        for (name, default) in &self.parameters {
            let from_cert = if name == CERTIFICATE_ID_PARAMETER {
                Some(certificate_id.to_owned())
            } else {
                CERTIFICATE_PARAMETERS
                    .iter()
                    .find(|(n, _)| n == name)
                    .and_then(|(_, oid)| attribute(cert.subject(), *oid))
            };
            if let Some(v) = from_cert.or_else(|| default.clone()) {
                out.insert(name.clone(), v);
            }
        }
        out
    }

    /// Evaluates the template with `params`.
    pub fn plan(&self, params: &Parameters, template_name: &str) -> Result<Plan, DoesNotFit> {
        let ev = Evaluator { params, mappings: &self.mappings };
        let thing = match &self.thing {
            None => None,
            Some(t) => {
                let name = ev.text(&t.name, "ThingName")?;
                let thing_type = t
                    .thing_type
                    .as_ref()
                    .map(|e| ev.text(e, "ThingTypeName"))
                    .transpose()?
                    .filter(|s| !s.is_empty());
                let mut attributes = BTreeMap::new();
                for (k, e) in &t.attributes {
                    attributes.insert(k.clone(), ev.text(e, &format!("AttributePayload.{k}"))?);
                }
                let groups = match &t.groups {
                    None => Vec::new(),
                    Some(g) => match ev.eval(g, "ThingGroups")? {
                        Evaluated::List(l) => l,
                        Evaluated::Json(Value::Array(a)) => a
                            .iter()
                            .enumerate()
                            .map(|(i, v)| json_text(v, &format!("ThingGroups[{i}]")))
                            .collect::<Result<_, _>>()?,
                        Evaluated::Text(t) => vec![t],
                        Evaluated::Json(_) => return Err(fit("ThingGroups must be a list")),
                    },
                };
                Some(ThingPlan { name, thing_type, attributes, groups, overrides: t.overrides })
            }
        };
        let certificate_status = match &self.certificate {
            None => None,
            Some(None) => Some("ACTIVE"),
            Some(Some(e)) => {
                let s = ev.text(e, "Status")?;
                Some(status(&s).ok_or_else(|| fit(&format!("Status {s:?} is not a certificate status")))?)
            }
        };
        let mut policies = Vec::new();
        for p in &self.policies {
            let (logical, doc) = match p {
                PolicyResource::Named(e) => {
                    policies.push((ev.text(e, "PolicyName")?, None));
                    continue;
                }
                PolicyResource::Literal { logical, document } => (logical, document.clone()),
                PolicyResource::Computed { logical, document } => {
                    let doc = match ev.eval(document, "PolicyDocument")? {
                        Evaluated::Text(t) => t,
                        Evaluated::Json(j) => j.to_string(),
                        Evaluated::List(_) => return Err(fit("PolicyDocument must be a document")),
                    };
                    claimlink_policy::Policy::parse(&doc)
                        .map_err(|e| fit(&format!("PolicyDocument: {e}")))?;
                    (logical, doc)
                }
            };
            // Same document, same name: running the template again reuses the policy.
            let digest = ring::digest::digest(&ring::digest::SHA256, doc.as_bytes());
            let name = format!("{template_name}-{logical}-{}", &hex::encode(digest)[..16]);
            policies.push((name, Some(doc)));
        }
        Ok(Plan { thing, certificate_status, policies })
    }
}

/// A JSON value as text: strings, numbers and booleans.
fn json_text(v: &Value, what: &str) -> Result<String, DoesNotFit> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(fit(&format!("{what} must be a string"))),
    }
}

struct Evaluator<'a> {
    params: &'a Parameters,
    mappings: &'a Map<String, Value>,
}

impl Evaluator<'_> {
    fn text(&self, e: &Expr, what: &str) -> Result<String, DoesNotFit> {
        match self.eval(e, what)? {
            Evaluated::Text(t) => Ok(t),
            Evaluated::Json(v @ (Value::Number(_) | Value::Bool(_))) => json_text(&v, what),
            _ => Err(fit(&format!("{what} must be a string"))),
        }
    }

    fn param(&self, name: &str) -> Result<String, DoesNotFit> {
        self.params.get(name).cloned().ok_or_else(|| {
            let hint = if name.starts_with("AWS::IoT::Certificate::") {
                "the device certificate's subject has no such field"
            } else {
                "no value was given"
            };
            fit(&format!("parameter {name} has no value ({hint}) and no Default"))
        })
    }

    fn items(&self, e: &Expr, what: &str) -> Result<Vec<String>, DoesNotFit> {
        match self.eval(e, what)? {
            Evaluated::List(l) => Ok(l),
            Evaluated::Json(Value::Array(a)) => a.iter().map(|x| json_text(x, what)).collect(),
            Evaluated::Text(t) => Ok(vec![t]),
            Evaluated::Json(_) => Err(fit(&format!("{what}: expected a list"))),
        }
    }

    fn eval(&self, e: &Expr, what: &str) -> Result<Evaluated, DoesNotFit> {
        Ok(match e {
            Expr::Text(s) => Evaluated::Text(s.clone()),
            Expr::Json(v) => Evaluated::Json(v.clone()),
            Expr::Array(a) => Evaluated::Json(Value::Array(
                a.iter().map(|x| Ok(self.eval(x, what)?.into_json())).collect::<Result<_, DoesNotFit>>()?,
            )),
            Expr::Object(m) => {
                Evaluated::Json(Value::Object(
                    m.iter()
                        .map(|(k, x)| Ok((k.clone(), self.eval(x, what)?.into_json())))
                        .collect::<Result<_, DoesNotFit>>()?,
                ))
            }
            Expr::Ref(name) => Evaluated::Text(self.param(name)?),
            Expr::Join(delimiter, list) => Evaluated::Text(self.items(list, what)?.join(delimiter)),
            Expr::Split(delimiter, s) => {
                Evaluated::List(self.text(s, what)?.split(delimiter.as_str()).map(str::to_owned).collect())
            }
            Expr::Select(index, list) => {
                let i = self.text(index, what)?;
                let i: usize =
                    i.parse().map_err(|_| fit(&format!("Fn::Select: index {i:?} is not a number")))?;
                let list = self.items(list, what)?;
                let len = list.len();
                Evaluated::Text(
                    list.into_iter()
                        .nth(i)
                        .ok_or_else(|| fit(&format!("Fn::Select: index {i} of a list of {len}")))?,
                )
            }
            Expr::Sub(parts) => {
                let mut out = String::new();
                for part in parts {
                    match part {
                        SubPart::Literal(s) => out.push_str(s),
                        SubPart::Parameter(name) => out.push_str(&self.param(name)?),
                        SubPart::Variable(e) => out.push_str(&self.text(e, what)?),
                    }
                }
                Evaluated::Text(out)
            }
            Expr::FindInMap(keys) => {
                let [map, top, second] = &**keys;
                let (map, top, second) =
                    (self.text(map, what)?, self.text(top, what)?, self.text(second, what)?);
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
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Parameters {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn sub_strings_are_cut_once_into_literals_parameters_and_variables() {
        let t = Template::parse(
            r#"{"Parameters": {"SerialNumber": {}, "Site": {"Default": "lab"}},
                "Resources": {"thing": {"Type": "AWS::IoT::Thing", "Properties": {
                  "ThingName": {"Fn::Sub": ["dev-${SerialNumber}-${x}-${!kept}", {"x": {"Ref": "Site"}}]}}}}}"#,
        )
        .unwrap();
        let thing = t.thing.as_ref().unwrap();
        assert_eq!(
            thing.name,
            Expr::Sub(vec![
                SubPart::Literal("dev-".into()),
                SubPart::Parameter("SerialNumber".into()),
                SubPart::Literal("-".into()),
                SubPart::Variable(Expr::Ref("Site".into())),
                SubPart::Literal("-${kept}".into()),
            ])
        );
        let plan = t.plan(&params(&[("SerialNumber", "42"), ("Site", "lab")]), "t").unwrap();
        assert_eq!(plan.thing.unwrap().name, "dev-42-lab-${kept}");
    }

    #[test]
    fn every_function_evaluates_on_the_compiled_tree() {
        let t = Template::parse(
            r#"{"Parameters": {"CN": {}, "Csv": {}},
                "Mappings": {"m": {"lab": {"type": "sensor", "groups": ["a", "b"]}}},
                "Resources": {"thing": {"Type": "AWS::IoT::Thing", "Properties": {
                  "ThingName": {"Fn::Join": ["-", ["x", {"Ref": "CN"}, 7]]},
                  "ThingTypeName": {"Fn::FindInMap": ["m", "lab", "type"]},
                  "ThingGroups": {"Fn::FindInMap": ["m", "lab", "groups"]},
                  "AttributePayload": {"second": {"Fn::Select": [1, {"Fn::Split": [",", {"Ref": "Csv"}]}]}}}},
                 "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyDocument":
                   {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:Connect",
                    "Resource": {"Fn::Sub": "arn:aws:iot:*:*:client/${CN}"}}]}}}}}"#,
        )
        .unwrap();
        let plan = t.plan(&params(&[("CN", "n1"), ("Csv", "p,q,r")]), "tpl").unwrap();
        let thing = plan.thing.unwrap();
        assert_eq!(thing.name, "x-n1-7");
        assert_eq!(thing.thing_type.as_deref(), Some("sensor"));
        assert_eq!(thing.groups, ["a", "b"]);
        assert_eq!(thing.attributes["second"], "q");
        let (name, doc) = &plan.policies[0];
        assert!(name.starts_with("tpl-policy-"), "{name}");
        assert!(doc.as_deref().unwrap().contains("client/n1"), "{doc:?}");
        // A missing parameter fails the run (the template stays valid).
        let e = t.plan(&params(&[("CN", "n1")]), "tpl").unwrap_err();
        assert!(e.to_string().contains("parameter Csv has no value"), "{e}");
    }

    #[test]
    fn bad_templates_are_refused_at_creation() {
        for (body, says) in [
            (
                r#"{"Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "Nope"}}}}}"#,
                "no such parameter",
            ),
            (
                r#"{"Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Fn::Sub": "${a"}}}}}"#,
                "unterminated",
            ),
            (
                r#"{"Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Fn::Split": ["", "a"]}}}}}"#,
                "empty delimiter",
            ),
            (
                r#"{"Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Fn::FindInMap": ["m", "a", "b"]}}}}}"#,
                "no mapping",
            ),
            (
                r#"{"Resources": {"t": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": "x", "AttributePayload": "no"}}}}"#,
                "AttributePayload must be an object",
            ),
            (
                r#"{"Resources": {"p": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyDocument": "{}"}}}}"#,
                "PolicyDocument",
            ),
        ] {
            let e = Template::parse(body).unwrap_err().to_string();
            assert!(e.contains(says), "{body}: {e}");
        }
        let deep = format!(
            r#"{{"Resources": {{"t": {{"Type": "AWS::IoT::Thing", "Properties": {{"ThingName": {}"x"{}}}}}}}}}"#,
            r#"{"Fn::Join": ["", ["#.repeat(40),
            "]]}".repeat(40)
        );
        assert!(Template::parse(&deep).is_err());
    }
}
