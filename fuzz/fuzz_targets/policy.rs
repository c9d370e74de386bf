//! Arbitrary bytes as an IoT policy document: validation must answer every document with a
//! policy or an error with a stable code, and a policy it accepts must bind and decide any
//! client id and topic (the rest of the input) without panicking; an explicit deny wins.
#![no_main]

use claimlink_policy::{Action, Bound, Policy, Variables};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (document, name) = text.split_once('\n').unwrap_or((&text, "thing-1"));
    match Policy::parse(document) {
        Err(e) => assert!(!e.code().is_empty()),
        Ok(policy) => {
            let vars = Variables { client_id: name.to_owned(), thing_name: Some(name.to_owned()), ..Variables::default() };
            let bound = Bound::bind([&policy], "cn-north-1", "123456789012", &vars);
            for action in Action::ALL {
                let _ = bound.decide(action, name);
                let _ = bound.allows(action, name);
            }
        }
    }
});
