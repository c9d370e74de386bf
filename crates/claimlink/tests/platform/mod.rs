//! A `claimlink up` process in a temporary directory on free loopback ports, and simulated
//! devices driven over their AT interface (`claimlink device --at-stdio`).

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::Value;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn spawn_up(
    test: &str,
    cwd: &Path,
    data: &Path,
    ports: [u16; 6],
    nofile: Option<u32>,
    https: bool,
    log: &Arc<Mutex<String>>,
) -> (Child, String) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        // With a descriptor limit, through a shell that lowers it and then becomes claimlink.
        let mut command = match nofile {
            None => Command::new(env!("CARGO_BIN_EXE_claimlink")),
            Some(n) => {
                let mut c = Command::new("sh");
                c.args([
                    "-c",
                    &format!("ulimit -n {n} && exec \"$0\" \"$@\""),
                    env!("CARGO_BIN_EXE_claimlink"),
                ]);
                c
            }
        };
        let mut child = command
            .current_dir(cwd)
            .args(["up", "--devices", "4", "--data"])
            .arg(data)
            .args(["--staging-mqtt", &format!("127.0.0.1:{}", ports[0])])
            .args(["--staging-api", &format!("127.0.0.1:{}", ports[1])])
            .args(["--account-mqtt", &format!("127.0.0.1:{}", ports[2])])
            .args(["--admin-api", &format!("127.0.0.1:{}", ports[3])])
            .args(["--portal", &format!("127.0.0.1:{}", ports[4])])
            .args(["--ca-system", &format!("127.0.0.1:{}", ports[5])])
            .args(https.then_some("--https"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The log (stderr): shown as the test's output and kept for assertions on it.
        let err = child.stderr.take().unwrap();
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("{line}");
                let mut log = log.lock().unwrap();
                if log.len() < 4 << 20 {
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        });
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stdout = String::new();
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    stdout.push_str(&line);
                    stdout.push('\n');
                    if line.starts_with("Stop with Ctrl-C") {
                        return (child, stdout);
                    }
                }
                // Exited early: a port just released may still be taken; try again.
                Err(mpsc::RecvTimeoutError::Disconnected) if Instant::now() < deadline => {
                    let _ = child.wait();
                    std::thread::sleep(Duration::from_millis(200));
                    break;
                }
                Err(_) => panic!("{test}: claimlink up did not come up:\n{stdout}"),
            }
        }
    }
}

/// The platform, stopped (killed) on drop.
pub struct Platform {
    child: Child,
    _dir: tempfile::TempDir,
    pub data: PathBuf,
    pub staging_mqtt: u16,
    pub staging_api: u16,
    pub account_mqtt: u16,
    pub admin_api: u16,
    pub portal: u16,
    /// The SM2 module maker's CA system (plain HTTP).
    pub ca_system: u16,
    /// The admin API and the portal are HTTPS (`up --https`).
    pub https: bool,
    pub stdout: String,
    /// Everything the process wrote to stderr (its log), up to 4 MiB.
    log: Arc<Mutex<String>>,
}

impl Drop for Platform {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Platform {
    /// Starts `claimlink up` with 4 devices and waits until it serves.
    pub fn up(test: &str) -> Self {
        Self::start(test, None, false)
    }

    /// `up --https`: the admin API and the portal over TLS too.
    pub fn up_https(test: &str) -> Self {
        Self::start(test, None, true)
    }

    /// `up` with at most `nofile` open descriptors (`ulimit -n`), when given.
    pub fn up_with_nofile(test: &str, nofile: Option<u32>) -> Self {
        Self::start(test, nofile, false)
    }

    fn start(test: &str, nofile: Option<u32>, https: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("claimlink-data");
        let ports = [free_port(), free_port(), free_port(), free_port(), free_port(), free_port()];
        let log = Arc::new(Mutex::new(String::new()));
        let (child, stdout) = spawn_up(test, dir.path(), &data, ports, nofile, https, &log);
        Platform {
            child,
            _dir: dir,
            data,
            staging_mqtt: ports[0],
            staging_api: ports[1],
            account_mqtt: ports[2],
            admin_api: ports[3],
            portal: ports[4],
            ca_system: ports[5],
            https,
            stdout,
            log,
        }
    }

    /// Waits up to 10 s for a log line containing every one of `needles`; returns it.
    pub fn wait_log(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self
                .log
                .lock()
                .unwrap()
                .lines()
                .find(|l| needles.iter().all(|n| l.contains(n)))
                .map(str::to_owned);
            match found {
                Some(line) => return line,
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                None => panic!("no log line with {needles:?} in:\n{}", self.log.lock().unwrap()),
            }
        }
    }

    /// The log lines so far containing every one of `needles`.
    pub fn log_lines(&self, needles: &[&str]) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.lines().filter(|l| needles.iter().all(|n| l.contains(n))).map(str::to_owned).collect()
    }

    /// Stops the process (SIGKILL) and starts it again on the same data and ports.
    pub fn restart(&mut self, test: &str) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let ports = [
            self.staging_mqtt,
            self.staging_api,
            self.account_mqtt,
            self.admin_api,
            self.portal,
            self.ca_system,
        ];
        let cwd = self.data.parent().unwrap().to_owned();
        let (child, stdout) = spawn_up(test, &cwd, &self.data, ports, None, self.https, &self.log);
        self.child = child;
        self.stdout = stdout;
    }

    pub fn data(&self, rel: &str) -> String {
        self.data.join(rel).to_string_lossy().into_owned()
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.data.join(rel)).unwrap()
    }

    pub fn staging_port(&self) -> u16 {
        self.staging_mqtt
    }

    pub fn staging_endpoint(&self) -> String {
        format!("staging.localhost:{}", self.staging_mqtt)
    }

    pub fn oem_endpoint(&self) -> String {
        format!("demo-oem.localhost:{}", self.account_mqtt)
    }

    pub fn endpoint_ca(&self) -> String {
        self.data("endpoint-ca.pem")
    }

    /// The batch a device is in: `factory` (P-256) or `factory-sm2`.
    pub fn factory_of(&self, thing: &str) -> &'static str {
        if self.data.join("factory-sm2/devices").join(thing).exists() { "factory-sm2" } else { "factory" }
    }

    pub fn bundle(&self, thing: &str) -> PathBuf {
        self.data.join(self.factory_of(thing)).join("devices").join(thing)
    }

    fn batch(&self, factory: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.data.join(factory).join("devices"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// ThingNames of the demo's P-256 batch, sorted.
    pub fn devices(&self) -> Vec<String> {
        self.batch("factory")
    }

    /// ThingNames of the demo's SM2 batch, sorted.
    #[allow(dead_code)] // not every test binary uses it
    pub fn sm2_devices(&self) -> Vec<String> {
        self.batch("factory-sm2")
    }

    /// The claim code printed on a device's label.
    pub fn claim_code(&self, thing: &str) -> String {
        let svg = self.read(&format!("{}/labels/{thing}.svg", self.factory_of(thing)));
        let after = svg.split_once(">Claim code</text>").unwrap().1;
        let parts: Vec<&str> = after
            .split("font-weight=\"bold\">")
            .skip(1)
            .map(|s| s.split_once("</text>").unwrap().0)
            .take(2)
            .collect();
        format!("{}-{}", parts[0], parts[1])
    }

    /// A device's certificate chain and key as files a TLS client can load.
    pub fn device_files(&self, thing: &str, dir: &Path) -> (String, String) {
        let b = self.bundle(thing);
        let chain = format!(
            "{}{}",
            std::fs::read_to_string(b.join("cert.pem")).unwrap(),
            std::fs::read_to_string(b.join("chain.pem")).unwrap()
        );
        let path = dir.join(format!("{thing}.pem"));
        std::fs::write(&path, chain).unwrap();
        (path.to_string_lossy().into_owned(), b.join("key.pem").to_string_lossy().into_owned())
    }

    fn staging_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.staging_api))
    }

    pub fn try_claim_api_as(
        &self,
        client: Option<(&str, &str)>,
        method: &str,
        path: &str,
        body: &Value,
    ) -> Result<(u16, Value), String> {
        let root = self.read("endpoint-ca.pem");
        let tls = claimlink_testkit::Tls { server_name: "staging.localhost", root_pem: &root, client };
        let (status, text) =
            claimlink_testkit::https_json(self.staging_addr(), &tls, method, path, None, &body.to_string())?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    pub fn claim_api_as(
        &self,
        client: Option<(&str, &str)>,
        method: &str,
        path: &str,
        body: &Value,
    ) -> (u16, Value) {
        self.try_claim_api_as(client, method, path, body).unwrap()
    }

    /// The claim API as the demo OEM (its claim-thing certificate).
    pub fn claim_api(&self, method: &str, path: &str, body: &Value) -> (u16, Value) {
        let (cert, key) = (self.read("oem/claim-thing.pem"), self.read("oem/claim-thing.key"));
        self.claim_api_as(Some((&cert, &key)), method, path, body)
    }

    /// The staging administrators' API (token made by `up`).
    pub fn staging_admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let root = self.read("endpoint-ca.pem");
        let token = self.read("staging-admin-token");
        let tls = claimlink_testkit::Tls { server_name: "staging.localhost", root_pem: &root, client: None };
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let (status, text) =
            claimlink_testkit::https_json(self.staging_addr(), &tls, method, path, Some(token.trim()), &body)
                .unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// The demo OEM's id at staging.
    pub fn oem_id(&self) -> String {
        let oems = self.staging_admin("GET", "/staging/oems", None).1;
        oems["oems"].as_array().unwrap().iter().find(|o| o["name"] == "Demo OEM").unwrap()["oemId"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The process id of `claimlink up`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The account admin API with the account's token (over HTTPS under `up --https`, the
    /// certificate checked against the endpoint CA by the name `localhost`): status and body.
    pub fn admin_api_call(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let token = self.read("account-token");
        let addr = SocketAddr::from(([127, 0, 0, 1], self.admin_api));
        if !self.https {
            return claimlink_testkit::http_json(addr, method, path, Some(token.trim()), body);
        }
        let root = self.read("endpoint-ca.pem");
        let tls = claimlink_testkit::Tls { server_name: "localhost", root_pem: &root, client: None };
        claimlink_testkit::https_json(addr, &tls, method, path, Some(token.trim()), body).unwrap()
    }

    /// The account admin API, which must answer 200.
    pub fn admin_api(&self, method: &str, path: &str) -> Value {
        let (status, text) = self.admin_api_call(method, path, "");
        assert_eq!(status, 200, "{method} {path}: {text}");
        serde_json::from_str(&text).unwrap()
    }
}

/// A simulated device with its AT interface on stdio.
pub struct AtDevice {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Drop for AtDevice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl AtDevice {
    pub fn start(p: &Platform, thing: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_claimlink"))
            .args(["device", "--at-stdio", "--bundle"])
            .arg(p.bundle(thing))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let out: ChildStdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(out);
            loop {
                let mut line = String::new();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        assert!(line.ends_with("\r\n"), "AT lines end in CRLF: {line:?}");
                        if tx.send(line.trim_end_matches(['\r', '\n']).to_owned()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        AtDevice { child, stdin, lines: rx }
    }

    /// Sends a command; returns `n` response lines.
    pub fn at_lines(&mut self, command: &str, n: usize) -> Vec<String> {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
        (0..n)
            .map(|_| {
                self.lines
                    .recv_timeout(Duration::from_secs(30))
                    .unwrap_or_else(|_| panic!("no answer to {command}"))
            })
            .collect()
    }

    /// Sends a command; returns its one-line response.
    pub fn at(&mut self, command: &str) -> String {
        self.at_lines(command, 1).remove(0)
    }

    /// Repeats `command` until it answers `expected` (or fails after 30 s).
    pub fn wait_for(&mut self, command: &str, expected: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        while Instant::now() < deadline {
            last = self.at(command);
            if last == expected {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{command}: still {last:?}, waited for {expected:?}");
    }
}

/// A simulated device running on its own (`claimlink device`), its output collected.
pub struct Device {
    child: Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Device {
    pub fn start(p: &Platform, thing: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_claimlink"))
            .args(["device", "--bundle"])
            .arg(p.bundle(thing))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Device { child, lines }
    }

    /// Waits until `n` output lines contain `needle`.
    pub fn wait_count(&self, needle: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let lines = self.lines.lock().unwrap().clone();
            if lines.iter().filter(|l| l.contains(needle)).count() >= n {
                return;
            }
            assert!(Instant::now() < deadline, "device output lacks {n} x {needle:?}:\n{}", lines.join("\n"));
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn wait_line(&self, needle: &str) {
        self.wait_count(needle, 1);
    }
}
