//! Arbitrary bytes as a provisioning template: creation must answer every body with a compiled
//! template or an error with a stable code, and running a compiled template with parameters
//! taken from the rest of the input must give a plan or a "does not fit", never a panic.
#![no_main]

use claimlink_template::{Parameters, Template};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (body, values) = text.split_once('\u{0}').unwrap_or((&text, ""));
    match Template::parse(body) {
        Err(e) => assert!(!e.code().is_empty()),
        Ok(template) => {
            let mut params = Parameters::new();
            for (i, v) in values.split(',').enumerate().take(16) {
                params.insert(format!("P{i}"), v.to_owned());
                params.insert("AWS::IoT::Certificate::CommonName".to_owned(), v.to_owned());
            }
            if let Ok(plan) = template.plan(&params, "fuzz") {
                for (name, doc) in &plan.policies {
                    assert!(!name.is_empty());
                    if let Some(doc) = doc {
                        claimlink_policy::Policy::parse(doc).expect("a planned document validates");
                    }
                }
            }
        }
    }
});
