//! Policy documents as OEMs write them for AWS IoT: validation errors, variables, wildcards,
//! explicit deny, and a property test of the combination rule.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use claimlink_policy::{Action, Bound, Decision, Policy, PolicyError, Variables};
use proptest::prelude::*;

const REGION: &str = "cn-north-1";
const ACCOUNT: &str = "123456789012";

fn arn(rest: &str) -> String {
    format!("arn:aws-cn:iot:{REGION}:{ACCOUNT}:{rest}")
}

fn device_vars() -> Variables {
    let mut v =
        Variables { client_id: "lamp-7".into(), thing_name: Some("lamp-7".into()), ..Variables::default() };
    v.thing_attributes.insert("site".into(), "hz-01".into());
    v.subject.insert("CommonName".into(), "lamp-7".into());
    v.subject.insert("Organization".into(), "Acme".into());
    v
}

fn bind(doc: &str, vars: &Variables) -> Bound {
    Bound::bind([&Policy::parse(doc).unwrap()], REGION, ACCOUNT, vars)
}

/// The usual device policy: connect as your thing, publish and receive under your own topics,
/// subscribe to your own filters.
fn device_policy() -> String {
    format!(
        r#"{{
  "Version": "2012-10-17",
  "Statement": [
    {{"Effect": "Allow", "Action": "iot:Connect",
      "Resource": "{}"}},
    {{"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"],
      "Resource": ["{}"]}},
    {{"Effect": "Allow", "Action": "iot:Subscribe",
      "Resource": "{}"}},
    {{"Effect": "Deny", "Action": "iot:Publish",
      "Resource": "{}"}}
  ]
}}"#,
        arn("client/${iot:Connection.Thing.ThingName}"),
        arn("topic/devices/${iot:Connection.Thing.ThingName}/*"),
        arn("topicfilter/devices/${iot:Connection.Thing.ThingName}/*"),
        arn("topic/devices/${iot:Connection.Thing.ThingName}/admin"),
    )
}

#[test]
fn a_device_policy_confines_a_device_to_its_own_topics() {
    let b = bind(&device_policy(), &device_vars());
    assert!(b.allows(Action::Connect, "lamp-7"));
    assert!(!b.allows(Action::Connect, "lamp-8"));
    assert!(b.allows(Action::Publish, "devices/lamp-7/telemetry"));
    assert!(b.allows(Action::Receive, "devices/lamp-7/cmd"));
    assert!(!b.allows(Action::Publish, "devices/lamp-8/telemetry"));
    assert!(b.allows(Action::Subscribe, "devices/lamp-7/#"));
    assert!(!b.allows(Action::Subscribe, "devices/+/cmd"));
    assert_eq!(b.decide(Action::Publish, "devices/lamp-7/admin"), Decision::ExplicitDeny);
    assert_eq!(b.decide(Action::RetainPublish, "devices/lamp-7/telemetry"), Decision::ImplicitDeny);
    assert_eq!(b.arn_prefix(), format!("arn:aws-cn:iot:{REGION}:{ACCOUNT}:"));
}

#[test]
fn variable_values_are_literal_not_wildcards() {
    let mut vars = device_vars();
    vars.thing_name = Some("*".into());
    let b = bind(&device_policy(), &vars);
    assert!(b.allows(Action::Connect, "*"));
    assert!(!b.allows(Action::Connect, "anyone"), "a thing named * is not a wildcard");
}

#[test]
fn unresolved_variables_match_nothing() {
    let doc = format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":"iot:Publish","Resource":["{}","{}"]}}]}}"#,
        arn("topic/site/${iot:Connection.Thing.Attributes[site]}/*"),
        arn("topic/type/${iot:Connection.Thing.ThingTypeName}/*"),
    );
    let b = bind(&doc, &device_vars());
    assert!(b.allows(Action::Publish, "site/hz-01/x"));
    assert!(!b.allows(Action::Publish, "site/hz-02/x"));
    assert!(!b.allows(Action::Publish, "type//x"), "no thing type: the resource matches nothing");
    // Without an attached thing, thing variables resolve to nothing.
    let no_thing = Variables { client_id: "x".into(), ..Variables::default() };
    assert!(!bind(&doc, &no_thing).allows(Action::Publish, "site//x"));
}

#[test]
fn certificate_subject_variables_and_wildcards() {
    let doc = format!(
        r#"{{"Version":"2012-10-17","Statement":[
            {{"Effect":"Allow","Action":"iot:*","Resource":"{}"}},
            {{"Effect":"Allow","Action":"iot:Subscribe","Resource":"{}"}}]}}"#,
        arn("topic/${iot:Certificate.Subject.Organization}/${iot:Certificate.Subject.CommonName}/?"),
        "arn:aws-cn:iot:*:*:topicfilter/broadcast/*",
    );
    let b = bind(&doc, &device_vars());
    assert!(b.allows(Action::Publish, "Acme/lamp-7/a"));
    assert!(b.allows(Action::RetainPublish, "Acme/lamp-7/b"), "iot:* covers RetainPublish");
    assert!(!b.allows(Action::Publish, "Acme/lamp-7/ab"), "? is exactly one character");
    assert!(b.allows(Action::Subscribe, "broadcast/#"));
}

#[test]
fn explicit_deny_beats_allow_across_policies() {
    let allow_all =
        r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"iot:*","Resource":"*"}}"#;
    let deny = format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Deny","Action":"iot:Publish","Resource":"{}"}}]}}"#,
        arn("topic/$aws/*")
    );
    let (a, d) = (Policy::parse(allow_all).unwrap(), Policy::parse(&deny).unwrap());
    let b = Bound::bind([&a, &d], REGION, ACCOUNT, &device_vars());
    assert_eq!(b.decide(Action::Publish, "$aws/things/x"), Decision::ExplicitDeny);
    assert!(b.allows(Action::Publish, "anything/else"));
    assert!(b.allows(Action::Receive, "$aws/things/x"), "the deny names Publish only");
    assert!(!a.warnings().is_empty(), "Connect as anyone deserves a warning");
}

#[test]
fn invalid_documents_are_refused_with_a_stable_code() {
    let ok_resource = arn("topic/x");
    let cases: Vec<(String, &str)> = vec![
        ("not json".into(), "MalformedPolicy"),
        ("[]".into(), "MalformedPolicy"),
        (r#"{"Version":"2012-10-17"}"#.into(), "MalformedPolicy"),
        (r#"{"Version":"2012-10-17","Statement":[]}"#.into(), "MalformedPolicy"),
        (
            format!(r#"{{"Version":"2099-01-01","Statement":{{"Effect":"Allow","Action":"iot:Publish","Resource":"{ok_resource}"}}}}"#),
            "MalformedPolicy",
        ),
        (
            format!(r#"{{"Version":"2012-10-17","Statement":{{"Effect":"Maybe","Action":"iot:Publish","Resource":"{ok_resource}"}}}}"#),
            "MalformedPolicy",
        ),
        (
            format!(r#"{{"Version":"2012-10-17","Statement":{{"Effect":"Allow","Action":"iot:Publsh","Resource":"{ok_resource}"}}}}"#),
            "UnknownAction",
        ),
        (
            format!(r#"{{"Version":"2012-10-17","Statement":{{"Effect":"Allow","Action":"s3:GetObject","Resource":"{ok_resource}"}}}}"#),
            "UnknownAction",
        ),
        (
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"iot:Publish","Resource":"topic/x"}}"#.into(),
            "InvalidResource",
        ),
        (
            r#"{"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"iot:Publish","Resource":"arn:aws:s3:::bucket/x"}}"#.into(),
            "InvalidResource",
        ),
        (
            format!(
                r#"{{"Version":"2012-10-17","Statement":{{"Effect":"Allow","Action":"iot:Publish","Resource":"{}"}}}}"#,
                arn("topic/${iot:Connection.Thing.Nickname}")
            ),
            "UnknownPolicyVariable",
        ),
        (
            format!(
                r#"{{"Version":"2012-10-17","Statement":{{"Effect":"Allow","Action":"iot:Publish","Resource":"{}"}}}}"#,
                arn("topic/${iot:ClientId")
            ),
            "InvalidResource",
        ),
        (
            format!(
                r#"{{"Statement":{{"Effect":"Allow","Action":"iot:Publish","Resource":"{}"}}}}"#,
                arn("topic/${iot:ClientId}")
            ),
            "MalformedPolicy",
        ),
        (
            format!(
                r#"{{"Version":"2012-10-17","Statement":{{"Effect":"Allow","Action":"iot:Publish","Resource":"{ok_resource}","Condition":{{"Bool":{{"iot:Connection.Thing.IsAttached":"true"}}}}}}}}"#
            ),
            "UnsupportedPolicyElement",
        ),
        (
            format!(
                r#"{{"Version":"2012-10-17","Statement":{{"Effect":"Allow","Action":"iot:Publish","Resource":["{}"]}}}}"#,
                arn(&format!("topic/{}", "x".repeat(2100)))
            ),
            "PolicyTooLarge",
        ),
    ];
    for (doc, code) in cases {
        let err = Policy::parse(&doc).expect_err(&doc);
        assert_eq!(err.code(), code, "{doc}: {err}");
    }
    // Whitespace does not count towards the size limit.
    let spaced = format!(
        r#"{{"Version":"2012-10-17","Statement":{{"Effect":"Allow","Action":"iot:Publish","Resource":"{ok_resource}"}}{}}}"#,
        " ".repeat(5000)
    );
    assert!(Policy::parse(&spaced).is_ok());
    assert!(matches!(Policy::parse("{}"), Err(PolicyError::Malformed(_))));
}

#[test]
fn aws_policies_paste_unchanged() {
    // Shadow and jobs actions are valid (they grant nothing here); action names ignore case.
    let doc = format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Sid":"shadow","Effect":"Allow",
            "Action":["iot:GetThingShadow","iot:UpdateThingShadow","IOT:PUBLISH"],"Resource":["{}"]}}]}}"#,
        arn("topic/$aws/things/${iot:Connection.Thing.ThingName}/shadow/*")
    );
    let b = bind(&doc, &device_vars());
    assert!(b.allows(Action::Publish, "$aws/things/lamp-7/shadow/update"));
}

/// A random statement over a small alphabet of topics.
fn statement() -> impl Strategy<Value = (bool, String)> {
    (any::<bool>(), prop::sample::select(vec!["a/*", "a/b", "*", "?/b", "b/*", "a/?"]))
        .prop_map(|(allow, r)| (allow, r.to_owned()))
}

proptest! {
    #[test]
    fn deny_wins_and_default_is_deny(statements in prop::collection::vec(statement(), 1..6), topic in "[ab]/[ab]") {
        let body: Vec<String> = statements
            .iter()
            .map(|(allow, r)| {
                format!(
                    r#"{{"Effect":"{}","Action":"iot:Publish","Resource":"{}"}}"#,
                    if *allow { "Allow" } else { "Deny" },
                    arn(&format!("topic/{r}"))
                )
            })
            .collect();
        let doc = format!(r#"{{"Version":"2012-10-17","Statement":[{}]}}"#, body.join(","));
        let b = bind(&doc, &device_vars());
        // The reference: a resource matches by the glob definition.
        let matches = |pat: &str| {
            let regex_like = |p: &[u8], t: &[u8]| -> bool {
                fn m(p: &[u8], t: &[u8]) -> bool {
                    match p.split_first() {
                        None => t.is_empty(),
                        Some((b'*', rest)) => (0..=t.len()).any(|k| m(rest, &t[k..])),
                        Some((b'?', rest)) => !t.is_empty() && m(rest, &t[1..]),
                        Some((c, rest)) => t.first() == Some(c) && m(rest, &t[1..]),
                    }
                }
                m(p, t)
            };
            regex_like(pat.as_bytes(), topic.as_bytes())
        };
        let denied = statements.iter().any(|(allow, r)| !allow && matches(r));
        let allowed = statements.iter().any(|(allow, r)| *allow && matches(r));
        let expected = if denied { Decision::ExplicitDeny } else if allowed { Decision::Allow } else { Decision::ImplicitDeny };
        prop_assert_eq!(b.decide(Action::Publish, &topic), expected);
    }
}
