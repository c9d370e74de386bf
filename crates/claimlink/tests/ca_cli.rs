//! The manufacturer CA from the command line, as an operator uses it: the real binary, real
//! files, and OpenSSL as the independent judge of what it produces.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use claimlink_testkit::{openssl, run_ok, tool};

const PASS: &str = "correct horse battery staple";

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_claimlink"));
    c.env_remove("CLAIMLINK_CA_PASSPHRASE");
    c
}

fn out(cmd: &mut Command) -> Output {
    cmd.output().expect("run claimlink")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pass"), format!("{PASS}\n")).unwrap();
        Self { dir }
    }
    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    fn s(&self, rel: &str) -> String {
        self.p(rel).to_string_lossy().into_owned()
    }
    fn init(&self, alg: &str, dir: &str) {
        run_ok(bin().args([
            "ca",
            "init",
            "--algorithm",
            alg,
            "--subject",
            "CN=Acme Devices,O=Acme,C=CN",
            "--out",
            &self.s(dir),
            "--passphrase-file",
            &self.s("pass"),
        ]));
    }
    fn issue(&self, ca: &str, out_dir: &str, count: u32, extra: &[&str]) -> Output {
        out(bin()
            .args([
                "ca",
                "issue-devices",
                "--ca",
                &self.s(ca),
                "--passphrase-file",
                &self.s("pass"),
                "--count",
                &count.to_string(),
                "--out",
                &self.s(out_dir),
            ])
            .args(extra))
    }
}

fn manifest_names(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["thing_name"].as_str().unwrap().to_owned()
        })
        .collect()
}

fn openssl_verify_device(env: &Env, alg: &str, ca: &str, device: &Path) {
    let cert = device.join("cert.pem").to_string_lossy().into_owned();
    let (root, issuing) = (env.s(&format!("{ca}/root-ca.pem")), env.s(&format!("{ca}/issuing-ca.pem")));
    let runs: Vec<Vec<&str>> = if alg == "sm2" {
        vec![
            vec!["verify", "-vfyopt", "distid:1234567812345678", "-CAfile", &root, &issuing],
            vec![
                "verify",
                "-vfyopt",
                "distid:1234567812345678",
                "-partial_chain",
                "-CAfile",
                &issuing,
                &cert,
            ],
        ]
    } else {
        vec![vec!["verify", "-CAfile", &root, "-untrusted", &issuing, &cert]]
    };
    for args in runs {
        assert!(run_ok(Command::new("openssl").args(args)).contains("OK"));
    }
}

#[test]
fn issued_devices_are_complete_unique_and_verify_with_openssl() {
    let env = Env::new();
    for alg in ["sm2", "p256"] {
        let (ca, batch) = (format!("{alg}-ca"), format!("{alg}-batch"));
        env.init(alg, &ca);
        let o = env.issue(&ca, &batch, 40, &["--staging-endpoint", "staging.acme.example:8883"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let names = manifest_names(&env.p(&format!("{batch}/manifest.jsonl")));
        assert_eq!(names.len(), 40);
        assert_eq!(names.iter().collect::<HashSet<_>>().len(), 40);
        let csv = std::fs::read_to_string(env.p(&format!("{batch}/manifest.csv"))).unwrap();
        assert_eq!(csv.lines().count(), 41);
        let sheet = std::fs::read_to_string(env.p(&format!("{batch}/labels.html"))).unwrap();
        for name in &names {
            assert!(
                name.len() == 32 && name.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
            let dev = env.p(&format!("{batch}/devices/{name}"));
            let mode = std::fs::metadata(dev.join("key.pem")).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "key.pem must be private");
            let toml = std::fs::read_to_string(dev.join("device.toml")).unwrap();
            assert!(
                toml.contains(&format!("thing_name = \"{name}\""))
                    && toml.contains("staging.acme.example:8883")
            );
            let label = std::fs::read_to_string(env.p(&format!("{batch}/labels/{name}.svg"))).unwrap();
            assert!(label.contains(&name[..16]) && label.contains("Claim code"));
            assert!(sheet.contains(&format!("labels/{name}.svg")));
        }
        // The claim code is on the label but never in the manifest.
        let label = std::fs::read_to_string(env.p(&format!("{batch}/labels/{}.svg", names[0]))).unwrap();
        let line = |n: usize| label.split("font-weight=\"bold\">").nth(n).unwrap().split('<').next().unwrap();
        let code = format!("{}-{}", line(1), line(2));
        assert_eq!(code.len(), 19);
        let manifest = std::fs::read_to_string(env.p(&format!("{batch}/manifest.jsonl"))).unwrap();
        assert!(!manifest.contains(&code) && !manifest.contains(&code.replace('-', "")));
        assert!(manifest.contains("\"claim_code_verifier\":\"hmac-sm3$"));
        if openssl("issued_devices_openssl").is_some() {
            for name in names.iter().take(5) {
                openssl_verify_device(&env, alg, &ca, &env.p(&format!("{batch}/devices/{name}")));
            }
            let key = env.s(&format!("{batch}/devices/{}/key.pem", names[0]));
            run_ok(Command::new("openssl").args(["pkey", "-noout", "-in", &key]));
            let enc = env.s(&format!("{ca}/issuing-ca.key"));
            run_ok(Command::new("openssl").args([
                "pkey",
                "-noout",
                "-in",
                &enc,
                "-passin",
                &format!("pass:{PASS}"),
            ]));
        }
        // Our own verifier agrees, for the client purpose, and refuses the server purpose.
        let dev_cert = env.s(&format!("{batch}/devices/{}/cert.pem", names[0]));
        let chain = env.s(&format!("{batch}/devices/{}/chain.pem", names[0]));
        run_ok(bin().args(["ca", "verify", "--purpose", "client", "--chain", &chain, &dev_cert]));
        let o = out(bin().args(["ca", "verify", "--purpose", "server", "--chain", &chain, &dev_cert]));
        assert!(!o.status.success() && stderr(&o).contains("not valid for TLS server"), "{}", stderr(&o));
        let o = out(bin().args(["ca", "verify", "--sm2-id", "", "--chain", &chain, &dev_cert]));
        assert_eq!(o.status.success(), alg == "p256", "the SM2 ID matters only for SM2: {}", stderr(&o));
    }
}

#[test]
fn an_existing_ca_is_never_overwritten_and_passphrases_come_from_file_or_env() {
    let env = Env::new();
    env.init("p256", "ca");
    let before = std::fs::read(env.p("ca/issuing-ca.key")).unwrap();
    let o = out(bin().args([
        "ca",
        "init",
        "--algorithm",
        "p256",
        "--subject",
        "CN=Other",
        "--out",
        &env.s("ca"),
        "--passphrase-file",
        &env.s("pass"),
    ]));
    assert!(!o.status.success() && stderr(&o).contains("already holds a CA"), "{}", stderr(&o));
    assert_eq!(std::fs::read(env.p("ca/issuing-ca.key")).unwrap(), before);
    // No passphrase at all: a clear error, nothing created.
    let o =
        out(bin().args(["ca", "init", "--algorithm", "sm2", "--subject", "CN=X", "--out", &env.s("ca2")]));
    assert!(!o.status.success() && stderr(&o).contains("CLAIMLINK_CA_PASSPHRASE"));
    assert!(!env.p("ca2").exists());
    // From the environment.
    run_ok(bin().env("CLAIMLINK_CA_PASSPHRASE", PASS).args([
        "ca",
        "init",
        "--algorithm",
        "sm2",
        "--subject",
        "CN=X",
        "--out",
        &env.s("ca2"),
    ]));
    // The passphrase never appears in what the CA wrote.
    for f in ["root-ca.key", "issuing-ca.key", "ca.toml"] {
        assert!(!std::fs::read_to_string(env.p(&format!("ca2/{f}"))).unwrap().contains(PASS));
    }
}

#[test]
fn bad_input_gets_a_clear_error_and_writes_nothing() {
    let env = Env::new();
    env.init("sm2", "ca");
    // Wrong passphrase.
    std::fs::write(env.p("wrong"), "not the passphrase\n").unwrap();
    let o = out(bin().args([
        "ca",
        "issue-devices",
        "--ca",
        &env.s("ca"),
        "--passphrase-file",
        &env.s("wrong"),
        "--count",
        "3",
        "--out",
        &env.s("b"),
    ]));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("issuing-ca.key") && stderr(&o).contains("wrong passphrase"),
        "{}",
        stderr(&o)
    );
    assert!(!env.p("b").exists());
    // Unwritable output (a path below a regular file).
    std::fs::write(env.p("file"), "x").unwrap();
    let o = env.issue("ca", "file/batch", 3, &[]);
    assert!(!o.status.success() && stderr(&o).contains("file/batch"), "{}", stderr(&o));
    // Malformed CSR files, each named in the error; no certificate written.
    let cases: [(&str, &[u8], &str); 4] = [
        ("garbage.csr", b"hello", "malformed CSR"),
        (
            "b64.csr",
            b"-----BEGIN CERTIFICATE REQUEST-----\n@@@@\n-----END CERTIFICATE REQUEST-----\n",
            "malformed PEM",
        ),
        (
            "der.csr",
            b"-----BEGIN CERTIFICATE REQUEST-----\nMAMCAQA=\n-----END CERTIFICATE REQUEST-----\n",
            "malformed CSR",
        ),
        (
            "cert.csr",
            b"-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n",
            "CERTIFICATE REQUEST",
        ),
    ];
    for (file, body, want) in cases {
        std::fs::write(env.p(file), body).unwrap();
        let o = out(bin().args([
            "ca",
            "sign-csr",
            "--ca",
            &env.s("ca"),
            "--passphrase-file",
            &env.s("pass"),
            "--csr",
            &env.s(file),
            "--profile",
            "claim-thing",
            "--out",
            &env.s("out.pem"),
        ]));
        let e = stderr(&o);
        assert!(!o.status.success() && e.contains(file) && e.contains(want), "{file}: {e}");
        assert!(!env.p("out.pem").exists());
    }
    // A malformed certificate given to verify.
    std::fs::write(env.p("bad.pem"), "-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n")
        .unwrap();
    let o = out(bin().args(["ca", "verify", "--chain", &env.s("ca/chain.pem"), &env.s("bad.pem")]));
    assert!(
        !o.status.success() && stderr(&o).contains("bad.pem") && stderr(&o).contains("malformed certificate"),
        "{}",
        stderr(&o)
    );
    // A bad subject and a bad endpoint.
    let o = out(bin().args([
        "ca",
        "init",
        "--algorithm",
        "sm2",
        "--subject",
        "Acme",
        "--out",
        &env.s("x"),
        "--passphrase-file",
        &env.s("pass"),
    ]));
    assert!(!o.status.success() && stderr(&o).contains("invalid distinguished name"));
    let o = env.issue("ca", "b", 3, &["--staging-endpoint", "no-port"]);
    assert!(!o.status.success() && stderr(&o).contains("HOST:PORT"));
    assert!(!env.p("b").exists());
}

#[test]
fn openssl_csrs_are_signed_for_server_and_claim_thing_profiles() {
    if openssl("sign_csr_cli").is_none() {
        return;
    }
    let env = Env::new();
    for alg in ["sm2", "p256"] {
        let ca = format!("{alg}-ca");
        env.init(alg, &ca);
        let key = env.s(&format!("{alg}.key"));
        let genpkey: &[&str] = if alg == "sm2" {
            &["genpkey", "-algorithm", "SM2"]
        } else {
            &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]
        };
        run_ok(Command::new("openssl").args(genpkey).args(["-out", &key]));
        let csr = env.s(&format!("{alg}.csr"));
        let mut req = Command::new("openssl");
        req.args(["req", "-new", "-subj", "/CN=endpoint.oem.example", "-key", &key, "-out", &csr]);
        if alg == "sm2" {
            req.args(["-sm3", "-sigopt", "distid:1234567812345678"]);
        }
        run_ok(&mut req);
        for (profile, extra, purpose) in [
            ("server", vec!["--dns", "endpoint.oem.example", "--dns", "alt.oem.example"], "server"),
            ("claim-thing", vec![], "client"),
        ] {
            let cert = env.s(&format!("{alg}-{profile}.pem"));
            run_ok(
                bin()
                    .args([
                        "ca",
                        "sign-csr",
                        "--ca",
                        &env.s(&ca),
                        "--passphrase-file",
                        &env.s("pass"),
                        "--csr",
                        &csr,
                        "--profile",
                        profile,
                        "--out",
                        &cert,
                    ])
                    .args(&extra),
            );
            run_ok(bin().args([
                "ca",
                "verify",
                "--purpose",
                purpose,
                "--chain",
                &env.s(&format!("{ca}/chain.pem")),
                &cert,
            ]));
            let text = run_ok(Command::new("openssl").args(["x509", "-noout", "-text", "-in", &cert]));
            if profile == "server" {
                assert!(text.contains("DNS:endpoint.oem.example, DNS:alt.oem.example"), "{text}");
            }
            let mut v = Command::new("openssl");
            v.arg("verify");
            if alg == "sm2" {
                v.args([
                    "-vfyopt",
                    "distid:1234567812345678",
                    "-partial_chain",
                    "-CAfile",
                    &env.s(&format!("{ca}/issuing-ca.pem")),
                ]);
            } else {
                v.args([
                    "-CAfile",
                    &env.s(&format!("{ca}/root-ca.pem")),
                    "-untrusted",
                    &env.s(&format!("{ca}/issuing-ca.pem")),
                ]);
            }
            assert!(run_ok(v.arg(&cert)).contains("OK"));
        }
        // The same CSR in DER is accepted too.
        let der = env.s(&format!("{alg}.csr.der"));
        run_ok(Command::new("openssl").args(["req", "-in", &csr, "-outform", "DER", "-out", &der]));
        let cert = env.s(&format!("{alg}-from-der.pem"));
        run_ok(bin().args([
            "ca",
            "sign-csr",
            "--ca",
            &env.s(&ca),
            "--passphrase-file",
            &env.s("pass"),
            "--csr",
            &der,
            "--profile",
            "claim-thing",
            "--out",
            &cert,
        ]));
        // A server certificate needs a name.
        let o = out(bin().args([
            "ca",
            "sign-csr",
            "--ca",
            &env.s(&ca),
            "--passphrase-file",
            &env.s("pass"),
            "--csr",
            &csr,
            "--profile",
            "server",
            "--out",
            &env.s("nodns.pem"),
        ]));
        assert!(!o.status.success() && stderr(&o).contains("at least one DNS name"));
    }
}

#[test]
fn an_interrupted_batch_resumes_without_losing_or_duplicating_devices() {
    let env = Env::new();
    env.init("p256", "ca");
    let total = 3000u32;
    let mut child = bin()
        .args([
            "ca",
            "issue-devices",
            "--ca",
            &env.s("ca"),
            "--passphrase-file",
            &env.s("pass"),
            "--count",
            &total.to_string(),
            "--out",
            &env.s("b"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let manifest = env.p("b/manifest.jsonl");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::fs::metadata(&manifest).map_or(0, |m| m.len()) == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // While it runs, a second run on the same batch is refused.
    let o = env.issue("ca", "b", total, &[]);
    assert!(!o.status.success() && stderr(&o).contains("another claimlink process"), "{}", stderr(&o));
    child.kill().unwrap();
    child.wait().unwrap();
    let partial = manifest_names(&manifest).len();
    // Every device the manifest counts is complete on disk.
    for name in manifest_names(&manifest) {
        let d = env.p(&format!("b/devices/{name}"));
        let staged = env.p(&format!("b/.staging/{name}"));
        assert!(
            d.join("cert.pem").exists() || staged.join("cert.pem").exists(),
            "{name} counted but missing"
        );
    }
    // A rerun with other options is refused, and says how to continue.
    let o = env.issue("ca", "b", total + 1, &[]);
    assert!(!o.status.success() && stderr(&o).contains("same --count"), "{}", stderr(&o));
    // The same command continues.
    let o = env.issue("ca", "b", total, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let names = manifest_names(&manifest);
    let devs = std::fs::read_dir(env.p("b/devices")).unwrap().count();
    let raw = std::fs::read_to_string(&manifest).unwrap();
    assert_eq!(
        names.len(),
        total as usize,
        "resumed from {partial}; {devs} devices on disk; {} bytes; {}",
        raw.len(),
        o.status
    );
    assert_eq!(names.iter().collect::<HashSet<_>>().len(), total as usize);
    let on_disk: HashSet<String> = std::fs::read_dir(env.p("b/devices"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(on_disk, names.iter().cloned().collect::<HashSet<_>>());
    assert_eq!(std::fs::read_dir(env.p("b/labels")).unwrap().count(), total as usize);
    assert!(!env.p("b/.staging").exists());
    // A rerun of a finished batch changes nothing.
    let o = env.issue("ca", "b", total, &[]);
    assert!(o.status.success() && stderr(&o).contains("already complete"));
    assert_eq!(manifest_names(&manifest).len(), total as usize);
}

#[test]
fn batches_without_claim_codes_have_no_verifier_and_no_code_on_labels() {
    let env = Env::new();
    env.init("p256", "ca");
    let o = env.issue("ca", "b", 3, &["--no-claim-code"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m = std::fs::read_to_string(env.p("b/manifest.jsonl")).unwrap();
    assert_eq!(m.matches("\"claim_code_verifier\":null").count(), 3);
    let name = manifest_names(&env.p("b/manifest.jsonl")).remove(0);
    let label = std::fs::read_to_string(env.p(&format!("b/labels/{name}.svg"))).unwrap();
    assert!(!label.contains("Claim code"));
}

#[test]
fn printed_labels_scan_back_to_the_id_and_claim_code() {
    // Render the SVG label as a printer would (librsvg) and scan it with an independent decoder
    // (zbar), as a portal user's phone would.
    let Some(rsvg) = tool("labels_scan", "rsvg-convert", "--version", "librsvg2-bin") else { return };
    let Some(zbar) = tool("labels_scan", "zbarimg", "--version", "zbar-tools") else { return };
    let env = Env::new();
    env.init("sm2", "ca");
    assert!(env.issue("ca", "b", 3, &[]).status.success());
    for name in manifest_names(&env.p("b/manifest.jsonl")) {
        let svg = env.p(&format!("b/labels/{name}.svg"));
        let label = std::fs::read_to_string(&svg).unwrap();
        let line = |n: usize| {
            label.split("font-weight=\"bold\">").nth(n).unwrap().split('<').next().unwrap().to_owned()
        };
        let png = env.s(&format!("{name}.png"));
        run_ok(Command::new(&rsvg).args(["-w", "600", "-b", "white", "-o", &png]).arg(&svg));
        let scanned = run_ok(Command::new(&zbar).args(["-q", "--raw", &png]));
        let expected =
            format!("CLM1:{}:{}{}", name.to_uppercase(), line(1).replace('-', ""), line(2).replace('-', ""));
        assert_eq!(scanned.trim(), expected);
    }
}
