//! The IoT policy language of claimlink, compatible with AWS IoT Core policies so that OEMs can
//! paste theirs.
//!
//! A document is validated once, when it is created ([`Policy::parse`]): JSON shape, size,
//! `Effect`, known actions, ARN resources and known policy variables. When a device connects,
//! its policies are bound to its variables once ([`Bound::bind`]): every `${...}` is replaced by
//! the connection's value (taken literally, never as a wildcard), so that checking a packet
//! ([`Bound::decide`]) is only wildcard matching, without allocation.
//!
//! Semantics: default deny; an explicit `Deny` that matches beats every `Allow`. A resource
//! whose variable has no value for this connection (for example a thing attribute the thing does
//! not have) matches nothing, as in AWS IoT.

#![forbid(unsafe_code)]

mod glob;

use std::collections::BTreeMap;

use serde_json::Value;

use crate::glob::{Pattern, Token};

/// Longest policy document, in characters other than whitespace (AWS IoT's limit).
pub const MAX_DOCUMENT_CHARS: usize = 2048;

/// Why a policy document was refused. [`PolicyError::code`] is stable for APIs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// Not JSON, or not the policy shape.
    #[error("malformed policy document: {0}")]
    Malformed(String),
    /// More than [`MAX_DOCUMENT_CHARS`] characters without whitespace.
    #[error("policy document has {0} characters without whitespace; the limit is {MAX_DOCUMENT_CHARS}")]
    TooLarge(usize),
    /// An action that is not an IoT action.
    #[error("unknown action {0:?}")]
    UnknownAction(String),
    /// A resource that is not `*` or an IoT ARN.
    #[error("invalid resource {resource:?}: {why}")]
    BadResource {
        /// The resource as written.
        resource: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A `${...}` that is not a known policy variable.
    #[error("unknown policy variable ${{{0}}}")]
    UnknownVariable(String),
    /// An element claimlink does not evaluate (Condition, NotAction, ...): refused rather than
    /// silently ignored, since ignoring it could grant more than the author meant.
    #[error("unsupported policy element {0:?}")]
    Unsupported(String),
}

impl PolicyError {
    /// A stable error code for API responses.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "MalformedPolicy",
            Self::TooLarge(_) => "PolicyTooLarge",
            Self::UnknownAction(_) => "UnknownAction",
            Self::BadResource { .. } => "InvalidResource",
            Self::UnknownVariable(_) => "UnknownPolicyVariable",
            Self::Unsupported(_) => "UnsupportedPolicyElement",
        }
    }
}

/// What a device asks to do over MQTT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// `iot:Connect`, resource `client/{clientId}`.
    Connect,
    /// `iot:Publish`, resource `topic/{topic}`.
    Publish,
    /// `iot:Subscribe`, resource `topicfilter/{filter}`.
    Subscribe,
    /// `iot:Receive`, resource `topic/{topic}`.
    Receive,
    /// `iot:RetainPublish`, resource `topic/{topic}`.
    RetainPublish,
}

impl Action {
    /// Every action, in index order.
    pub const ALL: [Action; 5] =
        [Self::Connect, Self::Publish, Self::Subscribe, Self::Receive, Self::RetainPublish];

    fn index(self) -> usize {
        self as usize
    }

    /// The action's name in policies.
    pub fn name(self) -> &'static str {
        match self {
            Self::Connect => "iot:Connect",
            Self::Publish => "iot:Publish",
            Self::Subscribe => "iot:Subscribe",
            Self::Receive => "iot:Receive",
            Self::RetainPublish => "iot:RetainPublish",
        }
    }

    /// The ARN resource type the action applies to.
    pub fn resource_type(self) -> &'static str {
        match self {
            Self::Connect => "client",
            Self::Subscribe => "topicfilter",
            Self::Publish | Self::Receive | Self::RetainPublish => "topic",
        }
    }
}

/// IoT actions that are valid in a policy but not MQTT actions claimlink enforces (device
/// shadow, jobs and retained-message APIs, credentials provider). Accepted so that AWS policies
/// paste unchanged; they grant nothing here.
const OTHER_ACTIONS: [&str; 11] = [
    "iot:GetThingShadow",
    "iot:UpdateThingShadow",
    "iot:DeleteThingShadow",
    "iot:DescribeJobExecution",
    "iot:GetPendingJobExecutions",
    "iot:StartNextPendingJobExecution",
    "iot:UpdateJobExecution",
    "iot:GetRetainedMessage",
    "iot:ListRetainedMessages",
    "iot:AssumeRoleWithCertificate",
    "iot:ListNamedShadowsForThing",
];

/// Certificate subject and issuer fields usable as `${iot:Certificate.Subject.X}` and
/// `${iot:Certificate.Issuer.X}`.
pub const CERTIFICATE_NAME_FIELDS: [&str; 13] = [
    "Country",
    "Organization",
    "OrganizationalUnit",
    "DistinguishedNameQualifier",
    "State",
    "CommonName",
    "SerialNumber",
    "Title",
    "Surname",
    "GivenName",
    "Initials",
    "Pseudonym",
    "GenerationQualifier",
];

/// A policy variable.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Variable {
    ClientId,
    ThingName,
    ThingTypeName,
    ThingAttribute(String),
    ThingIsAttached,
    Subject(&'static str),
    Issuer(&'static str),
    CertificateSerialNumber,
}

impl Variable {
    fn parse(name: &str) -> Option<Self> {
        let field = |rest: &str| CERTIFICATE_NAME_FIELDS.iter().copied().find(|f| *f == rest);
        Some(match name {
            "iot:ClientId" => Self::ClientId,
            "iot:Connection.Thing.ThingName" => Self::ThingName,
            "iot:Connection.Thing.ThingTypeName" => Self::ThingTypeName,
            "iot:Connection.Thing.IsAttached" => Self::ThingIsAttached,
            "iot:Certificate.SerialNumber" => Self::CertificateSerialNumber,
            _ => {
                if let Some(attr) = name
                    .strip_prefix("iot:Connection.Thing.Attributes[")
                    .and_then(|r| r.strip_suffix(']'))
                    .filter(|a| !a.is_empty() && a.len() <= 128)
                {
                    Self::ThingAttribute(attr.to_owned())
                } else if let Some(rest) = name.strip_prefix("iot:Certificate.Subject.") {
                    Self::Subject(field(rest)?)
                } else if let Some(rest) = name.strip_prefix("iot:Certificate.Issuer.") {
                    Self::Issuer(field(rest)?)
                } else {
                    return None;
                }
            }
        })
    }

    fn value<'a>(&self, v: &'a Variables) -> Option<&'a str> {
        match self {
            Self::ClientId => Some(&v.client_id),
            Self::ThingName => v.thing_name.as_deref(),
            Self::ThingTypeName => v.thing_type_name.as_deref(),
            Self::ThingAttribute(a) => v.thing_attributes.get(a).map(String::as_str),
            Self::ThingIsAttached => Some(if v.thing_name.is_some() { "true" } else { "false" }),
            Self::Subject(f) => v.subject.get(*f).map(String::as_str),
            Self::Issuer(f) => v.issuer.get(*f).map(String::as_str),
            Self::CertificateSerialNumber => v.certificate_serial.as_deref(),
        }
    }
}

/// One piece of a resource as written.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Token(Token),
    Var(Variable),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Statement {
    effect: Effect,
    /// Bit per [`Action`] index.
    actions: u8,
    resources: Vec<Vec<Part>>,
}

/// A validated policy document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    statements: Vec<Statement>,
    warnings: Vec<String>,
}

impl Policy {
    /// Validates a policy document.
    pub fn parse(document: &str) -> Result<Self, PolicyError> {
        let size = document.chars().filter(|c| !c.is_whitespace()).count();
        if size > MAX_DOCUMENT_CHARS {
            return Err(PolicyError::TooLarge(size));
        }
        let json: Value =
            serde_json::from_str(document).map_err(|e| PolicyError::Malformed(e.to_string()))?;
        let Value::Object(top) = json else {
            return Err(PolicyError::Malformed("the document must be a JSON object".into()));
        };
        let mut version_2012 = false;
        let mut statements_json = None;
        for (key, value) in &top {
            match key.as_str() {
                "Version" => match value.as_str() {
                    Some("2012-10-17") => version_2012 = true,
                    Some("2008-10-17") => {}
                    _ => return Err(PolicyError::Malformed("Version must be \"2012-10-17\"".into())),
                },
                "Statement" => statements_json = Some(value),
                "Id" => {}
                other => return Err(PolicyError::Malformed(format!("unknown top-level element {other:?}"))),
            }
        }
        let list = match statements_json {
            Some(Value::Array(a)) if !a.is_empty() => a.iter().collect::<Vec<_>>(),
            Some(v @ Value::Object(_)) => vec![v],
            _ => {
                return Err(PolicyError::Malformed("Statement must be an object or a non-empty list".into()));
            }
        };
        let mut policy = Policy { statements: Vec::with_capacity(list.len()), warnings: Vec::new() };
        for s in list {
            let statement = parse_statement(s)?;
            let has_vars = statement.resources.iter().flatten().any(|p| matches!(p, Part::Var(_)));
            if has_vars && !version_2012 {
                return Err(PolicyError::Malformed(
                    "policy variables need \"Version\": \"2012-10-17\"".into(),
                ));
            }
            policy.warn_about(&statement);
            policy.statements.push(statement);
        }
        Ok(policy)
    }

    /// Things worth telling the author that do not make the document invalid.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    fn warn_about(&mut self, s: &Statement) {
        let connect = 1 << Action::Connect.index();
        if s.effect == Effect::Allow && s.actions & connect != 0 {
            let any_client = s.resources.iter().any(|r| {
                matches!(r.as_slice(), [Part::Token(Token::Star)])
                    || matches!(r.last(), Some(Part::Var(Variable::ClientId)))
                        && r.iter()
                            .any(|p| matches!(p, Part::Token(Token::Literal(l)) if l.ends_with(":client/")))
            });
            if any_client {
                self.warnings.push(
                    "iot:Connect is allowed for any client id (\"*\" or client/${iot:ClientId}): a device can \
                     connect as any identity; prefer client/${iot:Connection.Thing.ThingName}"
                        .into(),
                );
            }
        }
    }
}

fn strings(value: &Value, what: &str) -> Result<Vec<String>, PolicyError> {
    let list = match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) if !a.is_empty() => a
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| PolicyError::Malformed(format!("{what} must hold strings")))?,
        _ => return Err(PolicyError::Malformed(format!("{what} must be a string or a non-empty list"))),
    };
    Ok(list)
}

fn parse_statement(s: &Value) -> Result<Statement, PolicyError> {
    let Value::Object(map) = s else {
        return Err(PolicyError::Malformed("each Statement must be an object".into()));
    };
    let (mut effect, mut actions, mut resources) = (None, None, None);
    for (key, value) in map {
        match key.as_str() {
            "Sid" => {}
            "Effect" => {
                effect = Some(match value.as_str() {
                    Some("Allow") => Effect::Allow,
                    Some("Deny") => Effect::Deny,
                    _ => return Err(PolicyError::Malformed("Effect must be \"Allow\" or \"Deny\"".into())),
                })
            }
            "Action" => actions = Some(strings(value, "Action")?),
            "Resource" => resources = Some(strings(value, "Resource")?),
            "Condition" | "NotAction" | "NotResource" | "Principal" | "NotPrincipal" => {
                return Err(PolicyError::Unsupported(key.clone()));
            }
            other => return Err(PolicyError::Malformed(format!("unknown statement element {other:?}"))),
        }
    }
    let effect = effect.ok_or_else(|| PolicyError::Malformed("a Statement has no Effect".into()))?;
    let actions = actions.ok_or_else(|| PolicyError::Malformed("a Statement has no Action".into()))?;
    let resources = resources.ok_or_else(|| PolicyError::Malformed("a Statement has no Resource".into()))?;
    let mut mask = 0u8;
    for a in &actions {
        mask |= action_mask(a)?;
    }
    let resources = resources.iter().map(|r| parse_resource(r)).collect::<Result<Vec<_>, _>>()?;
    Ok(Statement { effect, actions: mask, resources })
}

/// The enforced actions an action pattern (`iot:Publish`, `iot:*`, `iot:Re*`) covers. Action
/// names are case-insensitive, as in IAM; a pattern that names no IoT action is an error.
fn action_mask(pattern: &str) -> Result<u8, PolicyError> {
    let glob = compile_literal_glob(&pattern.to_ascii_lowercase());
    let covers = |name: &str| glob.matches("", &name.to_ascii_lowercase());
    let mask = Action::ALL.iter().filter(|a| covers(a.name())).fold(0u8, |m, a| m | 1 << a.index());
    if mask != 0 || OTHER_ACTIONS.iter().any(|o| covers(o)) {
        Ok(mask)
    } else {
        Err(PolicyError::UnknownAction(pattern.to_owned()))
    }
}

fn compile_literal_glob(s: &str) -> Pattern {
    let mut p = Pattern::default();
    for c in s.chars() {
        p.push(match c {
            '*' => Token::Star,
            '?' => Token::One,
            c => Token::Literal(c.to_string()),
        });
    }
    p
}

/// Parses `*` or `arn:{partition}:iot:{region}:{account}:{type}/{name}` with wildcards and
/// variables.
fn parse_resource(r: &str) -> Result<Vec<Part>, PolicyError> {
    let bad = |why| PolicyError::BadResource { resource: r.to_owned(), why };
    if r != "*" {
        let fields: Vec<&str> = r.splitn(6, ':').collect();
        if fields.len() != 6 || fields[0] != "arn" {
            return Err(bad("expected arn:partition:iot:region:account:type/name"));
        }
        if !matches!(fields[2], "iot" | "*") {
            return Err(bad("the service must be iot"));
        }
        let kind = fields[5].split('/').next().unwrap_or_default();
        let known = ["client", "topic", "topicfilter", "thing", "thinggroup", "cert", "rolealias", "job"];
        if !known.contains(&kind) && !kind.contains(['*', '?']) {
            return Err(bad("unknown resource type"));
        }
    }
    let mut parts = Vec::new();
    let mut rest = r;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("${") {
            let end = after.find('}').ok_or_else(|| bad("unterminated ${"))?;
            let name = &after[..end];
            match name {
                // IAM's escapes for the special characters themselves.
                "*" | "?" | "$" => parts.push(Part::Token(Token::Literal(name.to_owned()))),
                _ => parts.push(Part::Var(
                    Variable::parse(name).ok_or_else(|| PolicyError::UnknownVariable(name.to_owned()))?,
                )),
            }
            rest = &after[end + 1..];
            continue;
        }
        let mut chars = rest.chars();
        let c = chars.next().unwrap_or_default();
        parts.push(Part::Token(match c {
            '*' => Token::Star,
            '?' => Token::One,
            c => Token::Literal(c.to_string()),
        }));
        rest = chars.as_str();
    }
    Ok(parts)
}

/// The values of one connection's policy variables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Variables {
    /// `${iot:ClientId}`.
    pub client_id: String,
    /// `${iot:Connection.Thing.ThingName}`, when a thing is attached to the certificate.
    pub thing_name: Option<String>,
    /// `${iot:Connection.Thing.ThingTypeName}`.
    pub thing_type_name: Option<String>,
    /// `${iot:Connection.Thing.Attributes[name]}`.
    pub thing_attributes: BTreeMap<String, String>,
    /// `${iot:Certificate.Subject.X}`, keyed by the names of [`CERTIFICATE_NAME_FIELDS`].
    pub subject: BTreeMap<String, String>,
    /// `${iot:Certificate.Issuer.X}`.
    pub issuer: BTreeMap<String, String>,
    /// `${iot:Certificate.SerialNumber}`.
    pub certificate_serial: Option<String>,
}

/// The outcome of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// An Allow matched and no Deny did.
    Allow,
    /// A Deny matched.
    ExplicitDeny,
    /// Nothing matched.
    ImplicitDeny,
}

/// Policies bound to one connection: per action, the Allow and Deny patterns with variables
/// replaced by this connection's values.
#[derive(Debug, Clone, Default)]
pub struct Bound {
    arn_prefix: String,
    allow: [Vec<Pattern>; 5],
    deny: [Vec<Pattern>; 5],
    prefixes: [String; 5],
}

impl Bound {
    /// Binds `policies` for a connection to the account `account` in `region`.
    pub fn bind<'a>(
        policies: impl IntoIterator<Item = &'a Policy>,
        region: &str,
        account: &str,
        vars: &Variables,
    ) -> Self {
        let partition = if region.starts_with("cn-") { "aws-cn" } else { "aws" };
        let arn_prefix = format!("arn:{partition}:iot:{region}:{account}:");
        let prefixes = Action::ALL.map(|a| format!("{arn_prefix}{}/", a.resource_type()));
        let mut bound = Bound { arn_prefix, prefixes, ..Bound::default() };
        for policy in policies {
            for s in &policy.statements {
                let patterns: Vec<Pattern> = s.resources.iter().filter_map(|r| substitute(r, vars)).collect();
                for a in Action::ALL {
                    if s.actions & (1 << a.index()) == 0 {
                        continue;
                    }
                    let list = match s.effect {
                        Effect::Allow => &mut bound.allow[a.index()],
                        Effect::Deny => &mut bound.deny[a.index()],
                    };
                    list.extend(patterns.iter().cloned());
                }
            }
        }
        bound
    }

    /// The ARN prefix of this account (`arn:aws:iot:{region}:{account}:`).
    pub fn arn_prefix(&self) -> &str {
        &self.arn_prefix
    }

    /// Decides `action` on `name` (a client id, topic or topic filter).
    pub fn decide(&self, action: Action, name: &str) -> Decision {
        let i = action.index();
        let prefix = &self.prefixes[i];
        if self.deny[i].iter().any(|p| p.matches(prefix, name)) {
            Decision::ExplicitDeny
        } else if self.allow[i].iter().any(|p| p.matches(prefix, name)) {
            Decision::Allow
        } else {
            Decision::ImplicitDeny
        }
    }

    /// Whether `action` on `name` is allowed.
    pub fn allows(&self, action: Action, name: &str) -> bool {
        self.decide(action, name) == Decision::Allow
    }
}

/// The pattern with this connection's values, or `None` if a variable has no value.
fn substitute(parts: &[Part], vars: &Variables) -> Option<Pattern> {
    let mut p = Pattern::default();
    for part in parts {
        match part {
            Part::Token(t) => p.push(t.clone()),
            Part::Var(v) => p.push(Token::Literal(v.value(vars)?.to_owned())),
        }
    }
    Some(p)
}
