//! `claimlink config default` and `claimlink config check`, and the roles refusing a file that
//! lacks what they need, through the binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_claimlink"))
}

#[test]
fn the_default_file_checks_and_a_mistyped_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin().args(["config", "default"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for section in ["[limits]", "[http]", "[claims]", "[portal]"] {
        assert!(text.contains(section), "{section} missing");
    }
    let good = dir.path().join("good.toml");
    std::fs::write(&good, &text).unwrap();
    let out = bin().arg("config").arg("check").arg(&good).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));

    // One mistyped key: refused, with the key and where it is.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, text.replace("max_offline_messages", "max_ofline_messages")).unwrap();
    let out = bin().arg("config").arg("check").arg(&bad).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_ofline_messages") && err.contains("line"), "{err}");

    // A file naming a certificate that is not there.
    let missing = dir.path().join("missing.toml");
    std::fs::write(
        &missing,
        "mqtt = \"127.0.0.1:1\"\napi = \"127.0.0.1:2\"\n[tls]\ncertificate = \"nope.pem\"\nprivate_key = \"nope.key\"\n",
    )
    .unwrap();
    let out = bin().arg("config").arg("check").arg(&missing).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.pem"));

    // `server` with a limits-only file says what it lacks (and starts nothing).
    let out =
        bin().arg("server").arg("--config").arg(&good).env("DATABASE_URL", "sqlite://x").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("`server` needs `mqtt`, `api` and [tls]"));
    // A zero bound is refused by name.
    let zero = dir.path().join("zero.toml");
    std::fs::write(&zero, "[claims]\nin_flight = 0\n").unwrap();
    let out = bin().arg("config").arg("check").arg(&zero).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("claims.in_flight must be at least 1"));
}
