//! MQTT 3.1.1 and 5 scenarios with an independent client implementation, Python paho-mqtt
//! (installed into `.venv` by `.ci/run`), against `claimlink broker` on plain TCP.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use claimlink_testkit::python_with;

#[test]
fn paho_scenarios_pass_in_both_protocol_versions() {
    let Some(python) = python_with("paho_scenarios", "paho.mqtt.client") else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("broker.toml");
    std::fs::write(&config, "[[listener]]\nbind = \"127.0.0.1:0\"\n").unwrap();
    let mut broker = Command::new(env!("CARGO_BIN_EXE_claimlink"))
        .args(["broker", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let line = BufReader::new(broker.stdout.take().unwrap()).lines().next().unwrap().unwrap();
    let port = line.rsplit(':').next().unwrap().trim().to_owned();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/paho/scenarios.py");
    let out = Command::new(python).arg(script).arg(&port).output().unwrap();
    let _ = broker.kill();
    let _ = broker.wait();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}\n{}", String::from_utf8_lossy(&out.stderr));
    // Every scenario the script lists ran and passed (the count guards against a script that
    // silently stops early).
    assert_eq!(report.lines().filter(|l| l.starts_with("ok ")).count(), 14, "{report}");
}
