//! The cost of one policy check, as the account endpoint pays it for every PUBLISH: a typical
//! device policy (connect as your thing, publish under your own topics, a Deny carve-out)
//! bound to a connection, then `decide` on allowed, denied and unmatched topics.
//!
//!     cargo bench -p claimlink-policy --bench decide

#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::time::Instant;

use claimlink_policy::{Action, Bound, Policy, Variables};

fn main() {
    let doc = r#"{"Version":"2012-10-17","Statement":[
      {"Effect":"Allow","Action":"iot:Connect","Resource":"arn:aws-cn:iot:cn-north-1:123456789012:client/${iot:Connection.Thing.ThingName}"},
      {"Effect":"Allow","Action":["iot:Publish","iot:Receive"],"Resource":[
         "arn:aws-cn:iot:cn-north-1:123456789012:topic/devices/${iot:Connection.Thing.ThingName}/*",
         "arn:aws-cn:iot:cn-north-1:123456789012:topic/$aws/things/${iot:Connection.Thing.ThingName}/shadow/*"]},
      {"Effect":"Allow","Action":"iot:Subscribe","Resource":"arn:aws-cn:iot:cn-north-1:123456789012:topicfilter/devices/${iot:Connection.Thing.ThingName}/*"},
      {"Effect":"Deny","Action":"iot:Publish","Resource":"arn:aws-cn:iot:cn-north-1:123456789012:topic/devices/${iot:Connection.Thing.ThingName}/admin/*"}]}"#;
    let policy = Policy::parse(doc).unwrap();
    let vars = Variables {
        client_id: "lamp-000042".into(),
        thing_name: Some("lamp-000042".into()),
        ..Variables::default()
    };
    let t = Instant::now();
    let n_bind = 100_000;
    for _ in 0..n_bind {
        black_box(Bound::bind([&policy], "cn-north-1", "123456789012", black_box(&vars)));
    }
    println!(
        "bind a 4-statement policy to a connection: {:.0} ns",
        t.elapsed().as_nanos() as f64 / n_bind as f64
    );
    let bound = Bound::bind([&policy], "cn-north-1", "123456789012", &vars);
    let topics = [
        ("allowed", "devices/lamp-000042/telemetry/temperature"),
        ("denied by the Deny", "devices/lamp-000042/admin/reboot"),
        ("matched by nothing", "devices/lamp-000043/telemetry"),
    ];
    for (label, topic) in topics {
        let n = 5_000_000;
        let t = Instant::now();
        for _ in 0..n {
            black_box(bound.decide(Action::Publish, black_box(topic)));
        }
        println!("iot:Publish check, {label} ({topic}): {:.1} ns", t.elapsed().as_nanos() as f64 / n as f64);
    }
}
