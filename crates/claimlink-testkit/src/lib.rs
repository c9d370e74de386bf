//! Test support for claimlink's interop tests: finds the independent peers (the OpenSSL CLI,
//! Python with `gmssl`) and decides what happens when one is missing.
//!
//! On a developer's machine a missing peer skips the check and says so on stderr. Under CI
//! (`CI=true`) a missing peer is a failure: `.ci/run` installs every peer, so a skip there would
//! hide a broken setup.
//!
//! It is not a test framework: no assertions live here.

#![forbid(unsafe_code)]

pub mod dudect;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Whether we run under CI, where missing peers are failures.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Reports a missing peer: panics under CI, else prints a skip notice and returns `None`.
pub fn missing<T>(test: &str, peer: &str, how: &str) -> Option<T> {
    if under_ci() {
        panic!("{test}: interop peer {peer} is missing under CI ({how})");
    }
    eprintln!("SKIPPED {test}: {peer} not found ({how})");
    None
}

fn runs(cmd: &mut Command) -> bool {
    cmd.output().is_ok_and(|o| o.status.success())
}

/// The OpenSSL 3 CLI, if installed.
pub fn openssl(test: &str) -> Option<PathBuf> {
    let ok = runs(Command::new("openssl").arg("version"));
    if ok { Some(PathBuf::from("openssl")) } else { missing(test, "openssl", "apt-get install openssl") }
}

/// A command-line tool, if it can be started (`probe` is a harmless argument such as
/// `--help`; its exit status does not matter), else the missing-peer policy with the Debian
/// package that provides it.
pub fn tool(test: &str, name: &str, probe: &str, package: &str) -> Option<PathBuf> {
    if Command::new(name).arg(probe).output().is_ok() {
        Some(PathBuf::from(name))
    } else {
        missing(test, name, &format!("apt-get install {package}"))
    }
}

/// Tongsuo's CLI (the reference GM TLS stack): `$CLAIMLINK_TONGSUO`, then the build that
/// `.ci/tongsuo.sh` keeps in `$CLAIMLINK_CACHE` (default `~/.cache/claimlink`), then `tongsuo`
/// on the PATH.
pub fn tongsuo(test: &str) -> Option<PathBuf> {
    let cache = std::env::var_os("CLAIMLINK_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/claimlink")));
    let mut candidates: Vec<PathBuf> =
        std::env::var_os("CLAIMLINK_TONGSUO").map(PathBuf::from).into_iter().collect();
    if let Some(cache) = cache
        && let Ok(dirs) = std::fs::read_dir(&cache)
    {
        let mut found: Vec<PathBuf> = dirs
            .filter_map(Result::ok)
            .map(|d| d.path())
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("tongsuo-")))
            .map(|p| p.join("bin/tongsuo"))
            .collect();
        found.sort();
        candidates.extend(found.into_iter().rev());
    }
    candidates.push(PathBuf::from("tongsuo"));
    for c in candidates {
        if runs(Command::new(&c).arg("version")) {
            return Some(c);
        }
    }
    missing(test, "tongsuo", "bash .ci/tongsuo.sh (builds it from the tongsuo-src crate)")
}

/// The workspace root (two levels above a crate's manifest directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// A Python interpreter that can import `module`: `$CLAIMLINK_PYTHON`, then the workspace's
/// `.venv` (made by `.ci/run`), then `python3`.
pub fn python_with(test: &str, module: &str) -> Option<PathBuf> {
    let candidates = std::env::var_os("CLAIMLINK_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain([workspace_root().join(".venv/bin/python"), PathBuf::from("python3")]);
    for python in candidates {
        if runs(Command::new(&python).args(["-c", &format!("import {module}")])) {
            return Some(python);
        }
    }
    missing(test, &format!("Python module {module}"), "bash .ci/run creates .venv with it")
}

/// Runs a command and returns its output, panicking with stderr if it could not start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command that must succeed; returns stdout as text.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A PostgreSQL database made for one test and dropped after it.
#[derive(Debug)]
pub struct PostgresDatabase {
    admin_url: String,
    name: String,
    /// URL of the new database.
    pub url: String,
}

/// A fresh, empty database on the PostgreSQL server of `$DATABASE_URL` (`.ci/run` sets it),
/// created and dropped with `psql`. Without `$DATABASE_URL` the missing-peer policy applies.
pub fn postgres(test: &str) -> Option<PostgresDatabase> {
    let Ok(admin_url) = std::env::var("DATABASE_URL") else {
        return missing(test, "PostgreSQL ($DATABASE_URL)", "bash .ci/run starts PostgreSQL and sets it");
    };
    let name = format!(
        "claimlink_test_{}_{}_{}",
        test.chars().filter(char::is_ascii_alphanumeric).take(20).collect::<String>().to_lowercase(),
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos())
    );
    run_ok(Command::new("psql").args([&admin_url, "-qAt", "-c", &format!("CREATE DATABASE {name}")]));
    // Replace the database part of the URL (after the last '/', before any '?').
    let (base, query) = admin_url.split_once('?').map_or((admin_url.as_str(), ""), |(b, q)| (b, q));
    let server = base.rsplit_once('/').map_or(base, |(s, _)| s);
    let url = if query.is_empty() { format!("{server}/{name}") } else { format!("{server}/{name}?{query}") };
    Some(PostgresDatabase { admin_url, name, url })
}

impl Drop for PostgresDatabase {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                &self.admin_url,
                "-qAt",
                "-c",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}

/// paho-mqtt clients driven from a test, one JSON command at a time (see
/// `py/paho_driver.py` for the commands).
#[derive(Debug)]
pub struct Paho {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Paho {
    /// Starts the driver, if Python with paho-mqtt is available (else the missing-peer policy).
    pub fn start(test: &str) -> Option<Self> {
        let python = python_with(test, "paho.mqtt.client")?;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("py/paho_driver.py");
        let mut child = Command::new(python)
            .arg(script)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the paho driver: {e}"));
        let stdin = child.stdin.take().unwrap_or_else(|| unreachable!("piped"));
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap_or_else(|| unreachable!("piped")));
        Some(Self { child, stdin, stdout })
    }

    /// Sends one command (a JSON object) and returns the driver's answer (a JSON text).
    pub fn run(&mut self, command: &str) -> String {
        use std::io::{BufRead, Write};
        writeln!(self.stdin, "{command}").unwrap_or_else(|e| panic!("paho driver gone: {e}"));
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap_or_else(|e| panic!("paho driver gone: {e}"));
        assert!(!line.is_empty(), "the paho driver exited");
        line
    }
}

impl Drop for Paho {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// TLS for [`https_json`]: the server name to ask for and check, the root CA (PEM) and an
/// optional client certificate and key (PEM).
pub struct Tls<'a> {
    /// SNI and the name the server certificate must hold.
    pub server_name: &'a str,
    /// Root CA, PEM.
    pub root_pem: &'a str,
    /// Client certificate chain and key, PEM.
    pub client: Option<(&'a str, &'a str)>,
}

/// [`http_json`] over TLS (rustls), with an optional client certificate. `Err` when the TLS
/// handshake fails (a refused client certificate).
pub fn https_json(
    addr: std::net::SocketAddr,
    tls: &Tls<'_>,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Result<(u16, String), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use std::io::{Read, Write};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(tls.root_pem.as_bytes()) {
        roots.add(c.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    let provider = std::sync::Arc::new(claimlink_tls::provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match tls.client {
        Some((cert, key)) => {
            let chain: Vec<_> = CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?;
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| e.to_string())?;
            builder.with_client_auth_cert(chain, key).map_err(|e| e.to_string())?
        }
        None => builder.with_no_client_auth(),
    };
    let name = ServerName::try_from(tls.server_name.to_owned()).map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).map_err(|e| e.to_string())?;
    let sock = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    let mut s = rustls::StreamOwned::new(conn, sock);
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        tls.server_name,
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    match s.read_to_end(&mut raw) {
        Ok(_) => {}
        // Peers that close without close_notify: keep what arrived.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e.to_string()),
    }
    let response = String::from_utf8_lossy(&raw);
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let text = response.find("\r\n\r\n").map_or("", |i| &response[i + 4..]);
    let json = match (text.find('{'), text.rfind('}')) {
        (Some(a), Some(b)) if a < b => text[a..=b].to_owned(),
        _ => "null".to_owned(),
    };
    Ok((status, json))
}

/// One HTTP/1.1 request to `addr` (a connection each, `Connection: close`), with an optional
/// bearer token and a JSON body; returns the status and the body's JSON object text (`"null"`
/// when the body holds none).
pub fn http_json(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("cannot reach {addr}: {e}"));
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: api\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap_or_else(|e| panic!("cannot send to {addr}: {e}"));
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap_or_else(|e| panic!("cannot read from {addr}: {e}"));
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let text = response.find("\r\n\r\n").map_or("", |i| &response[i + 4..]);
    // Chunked or not, the JSON is the first {...} block.
    let json = match (text.find('{'), text.rfind('}')) {
        (Some(a), Some(b)) if a < b => text[a..=b].to_owned(),
        _ => "null".to_owned(),
    };
    (status, json)
}

/// OpenSSL alone opens a GM/T 0009 `SM2EnvelopedKey` (`envelope`, DER) with the SM2 private
/// key at `key` (PEM, relative to `dir`): `pkeyutl -decrypt` recovers the SM4 key, `enc -d
/// -sm4-ecb -nopad` the private scalar, which is returned (32 bytes). Files go into `dir`.
pub fn openssl_open_envelope(dir: &std::path::Path, envelope: &[u8], key: &str) -> Vec<u8> {
    let parts =
        claimlink_gm::envelope::parts(envelope).unwrap_or_else(|e| panic!("not an SM2EnvelopedKey: {e}"));
    let write = |name: &str, bytes: &[u8]| {
        std::fs::write(dir.join(name), bytes).unwrap_or_else(|e| panic!("cannot write {name}: {e}"))
    };
    write("sym.der", &parts.sym_encrypted_key);
    write("encpriv.bin", &parts.encrypted_private_key);
    run_ok(
        Command::new("openssl")
            .current_dir(dir)
            .args(["pkeyutl", "-decrypt", "-inkey", key, "-in", "sym.der", "-out", "sym.bin"]),
    );
    let sym = std::fs::read(dir.join("sym.bin")).unwrap_or_default();
    assert_eq!(sym.len(), 16, "pkeyutl -decrypt gave {} bytes, not an SM4 key", sym.len());
    let hex: String = sym.iter().map(|b| format!("{b:02x}")).collect();
    run_ok(Command::new("openssl").current_dir(dir).args([
        "enc",
        "-d",
        "-sm4-ecb",
        "-nopad",
        "-K",
        &hex,
        "-in",
        "encpriv.bin",
        "-out",
        "d.bin",
    ]));
    std::fs::read(dir.join("d.bin")).unwrap_or_default()
}
