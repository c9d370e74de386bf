//! `claimlink ca issue-devices`: device identities in bulk.
//!
//! Workers on every core each generate a key pair, a birth certificate, a claim code and a label,
//! and write the device folder under `OUT/.staging/<ThingName>/`. One committer collects them in
//! groups: it flushes the file system once per group (`syncfs`), appends the group to
//! `manifest.jsonl` and fsyncs it, then renames each folder to `OUT/devices/<ThingName>/` and its
//! label to `OUT/labels/`. A device is counted once its manifest line is durable; a rerun after a
//! crash finishes the renames of the last group, deletes any uncommitted staging folder, and
//! continues up to `--count`. Memory is bounded by the group size, not by N.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use claimlink_pki::profile::{DEVICE_VALIDITY, YEAR};
use claimlink_pki::{Issuer, PrivateKey, Profile, Signer, ThingName, issue, name, pem};
use serde::{Deserialize, Serialize};

use crate::PassphraseArg;
use crate::ca::{self, LoadedCa};
use crate::files::{create_with_mode, write_atomic};
use crate::label;
use claimlink_staging::claim_code::ClaimCode;

/// Devices committed together (one `syncfs` and one manifest fsync per group).
const GROUP: usize = 256;

/// `ca issue-devices` arguments.
#[derive(clap::Args)]
pub(crate) struct IssueArgs {
    /// CA directory made by `claimlink ca init`.
    #[arg(long)]
    pub(crate) ca: PathBuf,
    #[command(flatten)]
    pub(crate) passphrase: PassphraseArg,
    /// Number of devices the batch must hold when done.
    #[arg(long)]
    pub(crate) count: u64,
    /// Batch directory (created, or resumed if it holds this batch).
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Staging endpoint written into every device bundle.
    #[arg(long, default_value = "localhost:8883", value_name = "HOST:PORT")]
    pub(crate) staging_endpoint: String,
    /// Issue devices without claim codes (claims then rely on other proof).
    #[arg(long)]
    pub(crate) no_claim_code: bool,
    /// Birth certificate validity in years.
    #[arg(long, default_value_t = 20)]
    pub(crate) validity_years: u32,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub(crate) threads: Option<usize>,
    /// The root CAs the endpoints' TLS server certificates chain to (a PEM bundle: an SM2 and a
    /// P-256 root when the endpoints serve both), written into every bundle as the device's
    /// `RootCA` (default: the manufacturer root).
    #[arg(long, value_name = "PEM")]
    pub(crate) endpoint_root_ca: Option<PathBuf>,
}

/// `OUT/batch.toml`: what this batch is, so a rerun can tell "continue" from "conflict".
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct BatchInfo {
    ca_root_id: String,
    ca_issuing_id: String,
    algorithm: String,
    count: u64,
    staging_endpoint: String,
    claim_codes: bool,
    validity_years: u32,
    /// Id of the endpoints' root CA given to devices (absent: the manufacturer root).
    #[serde(default)]
    endpoint_root_ca_id: Option<String>,
}

/// One line of `manifest.jsonl`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ManifestEntry {
    /// The device's ThingName.
    pub(crate) thing_name: String,
    /// Lowercase hex SHA-256 of the certificate DER.
    pub(crate) certificate_id: String,
    /// `SHA256:AB:CD:...`.
    pub(crate) fingerprint: String,
    /// notAfter, RFC 3339.
    pub(crate) not_after: String,
    /// `sm2` or `p256`.
    pub(crate) algorithm: String,
    /// Salted verifier of the claim code (`None` with `--no-claim-code`).
    pub(crate) claim_code_verifier: Option<String>,
}

struct Done {
    thing: String,
    line: String,
}

struct Batch {
    out: PathBuf,
    staging: PathBuf,
    devices: PathBuf,
    labels: PathBuf,
}

impl Batch {
    fn new(out: &Path) -> Self {
        Self {
            out: out.to_owned(),
            staging: out.join(".staging"),
            devices: out.join("devices"),
            labels: out.join("labels"),
        }
    }

    fn manifest(&self) -> PathBuf {
        self.out.join("manifest.jsonl")
    }
}

/// `claimlink ca issue-devices`.
pub(crate) fn run(args: &IssueArgs) -> Result<()> {
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    check_endpoint(&args.staging_endpoint)?;
    let ca = ca::load(&args.ca, &args.passphrase)?;
    let endpoint_root = match &args.endpoint_root_ca {
        Some(p) => Some(
            claimlink_pki::Certificate::chain_from_pem(
                &fs::read(p).with_context(|| format!("cannot read {}", p.display()))?,
            )
            .with_context(|| format!("{} is not a PEM certificate bundle", p.display()))?,
        ),
        None => None,
    };
    let batch = Batch::new(&args.out);
    let info = BatchInfo {
        ca_root_id: ca.root.id().to_string(),
        ca_issuing_id: ca.issuing.id().to_string(),
        algorithm: ca.algorithm.to_string(),
        count: args.count,
        staging_endpoint: args.staging_endpoint.clone(),
        claim_codes: !args.no_claim_code,
        validity_years: args.validity_years,
        endpoint_root_ca_id: endpoint_root
            .as_ref()
            .map(|roots| roots.iter().map(|c| c.id().to_string()).collect::<Vec<_>>().join(",")),
    };
    fs::create_dir_all(&batch.out).with_context(|| format!("cannot create {}", batch.out.display()))?;
    let _lock = lock(&batch)?;
    prepare(&batch, &info, &ca, endpoint_root.as_deref())?;
    let done = recover(&batch)?;
    if done > args.count {
        bail!("{} already holds {done} devices, more than --count {}", batch.out.display(), args.count);
    }
    let started = Instant::now();
    if done < args.count {
        if done > 0 {
            eprintln!("resuming: {done} of {} devices already issued", args.count);
        }
        produce(args, &ca, &batch, done)?;
    } else {
        eprintln!("batch already complete: {done} devices in {}", batch.out.display());
    }
    finish(&batch)?;
    let made = args.count - done;
    if made > 0 {
        let secs = started.elapsed().as_secs_f64();
        println!(
            "issued {made} {} devices in {secs:.1} s ({:.0} devices/s); {} in {}",
            ca.algorithm,
            made as f64 / secs.max(1e-9),
            args.count,
            batch.out.display()
        );
    }
    Ok(())
}

fn check_endpoint(endpoint: &str) -> Result<()> {
    let ok = endpoint.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok_and(|p| p > 0)
    });
    if !ok {
        bail!("--staging-endpoint {endpoint:?} is not HOST:PORT");
    }
    Ok(())
}

fn prepare(
    batch: &Batch,
    info: &BatchInfo,
    ca: &LoadedCa,
    endpoint_root: Option<&[claimlink_pki::Certificate]>,
) -> Result<()> {
    for dir in [&batch.out, &batch.devices, &batch.labels, &batch.staging] {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let info_path = batch.out.join("batch.toml");
    if info_path.exists() {
        let text =
            fs::read_to_string(&info_path).with_context(|| format!("cannot read {}", info_path.display()))?;
        let existing: BatchInfo = toml::from_str(&text)
            .with_context(|| format!("{} is not a batch description", info_path.display()))?;
        if existing.ca_issuing_id != info.ca_issuing_id || existing.algorithm != info.algorithm {
            bail!("{} was issued by another CA; use a new --out directory", batch.out.display());
        }
        if existing != *info {
            bail!(
                "{} holds a batch made with other options ({}); rerun with the same --count, --staging-endpoint, \
                 --no-claim-code and --validity-years to continue it, or use a new --out directory",
                batch.out.display(),
                toml::to_string(&existing).unwrap_or_default().replace('\n', "; ")
            );
        }
    } else {
        if fs::read_dir(&batch.devices)?.next().is_some() {
            bail!("{} holds devices but no batch.toml; use a new --out directory", batch.out.display());
        }
        write_atomic(&info_path, toml::to_string(info)?.as_bytes(), 0o644)?;
    }
    let chain = format!("{}{}", ca.issuing.to_pem(), ca.root.to_pem());
    write_atomic(&batch.out.join("chain.pem"), chain.as_bytes(), 0o644)?;
    write_atomic(&batch.out.join("root-ca.pem"), ca.root.to_pem().as_bytes(), 0o644)?;
    let endpoint_roots = match endpoint_root {
        Some(roots) => roots.iter().map(|c| c.to_pem()).collect::<String>(),
        None => ca.root.to_pem(),
    };
    write_atomic(&batch.out.join("endpoint-ca.pem"), endpoint_roots.as_bytes(), 0o644)?;
    Ok(())
}

/// Takes `OUT/.lock` so that two runs never work on one batch; released when the process ends.
fn lock(batch: &Batch) -> Result<File> {
    let path = batch.out.join(".lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(|_| {
        anyhow::anyhow!("{} is being issued by another claimlink process", batch.out.display())
    })?;
    Ok(file)
}

/// Counts committed devices, repairs a torn manifest tail, and settles leftover staging folders.
fn recover(batch: &Batch) -> Result<u64> {
    let path = batch.manifest();
    let (count, tail) = match File::options().read(true).write(true).open(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, VecDeque::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
        Ok(file) => scan_manifest(file, &path)?,
    };
    let entries =
        fs::read_dir(&batch.staging).with_context(|| format!("cannot read {}", batch.staging.display()))?;
    for entry in entries {
        let entry = entry?;
        if !tail.contains(&entry.file_name().to_string_lossy().into_owned()) {
            fs::remove_dir_all(entry.path())
                .with_context(|| format!("cannot remove {}", entry.path().display()))?;
        }
    }
    // The last group may have been cut off anywhere in its renames (folder or label).
    for thing in &tail {
        publish(batch, thing)?;
    }
    Ok(count)
}

/// Streams the manifest: counts whole lines, keeps the last group's names, truncates a torn line.
fn scan_manifest(mut file: File, path: &Path) -> Result<(u64, VecDeque<String>)> {
    let mut reader = BufReader::new(&mut file);
    let (mut count, mut good_len) = (0u64, 0u64);
    let mut tail = VecDeque::with_capacity(GROUP);
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 || !line.ends_with('\n') {
            break;
        }
        let entry: ManifestEntry = serde_json::from_str(&line)
            .with_context(|| format!("{}: line {} is not a manifest entry", path.display(), count + 1))?;
        if tail.len() == GROUP {
            tail.pop_front();
        }
        tail.push_back(entry.thing_name);
        count += 1;
        good_len += n as u64;
    }
    drop(reader);
    if file.metadata()?.len() != good_len {
        file.set_len(good_len)?;
        file.seek(std::io::SeekFrom::End(0))?;
        file.sync_all()?;
    }
    Ok((count, tail))
}

/// Moves a committed device from staging into place (idempotent).
fn publish(batch: &Batch, thing: &str) -> Result<()> {
    let staged = batch.staging.join(thing);
    let dir = batch.devices.join(thing);
    if staged.exists() && !dir.exists() {
        fs::rename(&staged, &dir).with_context(|| format!("cannot move {} into place", staged.display()))?;
    }
    let label = dir.join("label.svg");
    if label.exists() {
        fs::rename(&label, batch.labels.join(format!("{thing}.svg")))
            .with_context(|| format!("cannot move {}", label.display()))?;
    }
    Ok(())
}

fn produce(args: &IssueArgs, ca: &LoadedCa, batch: &Batch, done: u64) -> Result<()> {
    let threads =
        args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())).max(1);
    let next = AtomicU64::new(done);
    let stop = AtomicBool::new(false);
    let org = name::attribute(ca.issuing.subject(), name::attr::ORGANIZATION);
    let validity = if args.validity_years == 20 { DEVICE_VALIDITY } else { YEAR * args.validity_years };
    let progress = indicatif::ProgressBar::new(args.count).with_position(done);
    progress.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} devices  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let (tx, rx) = mpsc::sync_channel::<Result<Done>>(GROUP * 2);
    std::thread::scope(|s| {
        for _ in 0..threads {
            let tx = tx.clone();
            let (next, stop, org) = (&next, &stop, org.as_deref());
            s.spawn(move || {
                let mut rng = ca::rng();
                while !stop.load(Ordering::Relaxed) && next.fetch_add(1, Ordering::Relaxed) < args.count {
                    let r = make_device(args, ca, batch, org, validity, &mut rng);
                    let failed = r.is_err();
                    if tx.send(r).is_err() || failed {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let result = commit_loop(batch, &rx, &progress);
        if result.is_err() {
            stop.store(true, Ordering::Relaxed);
            drop(rx); // unblock senders
        }
        result
    })?;
    progress.finish_and_clear();
    Ok(())
}

fn commit_loop(
    batch: &Batch,
    rx: &mpsc::Receiver<Result<Done>>,
    progress: &indicatif::ProgressBar,
) -> Result<()> {
    let mut manifest = OpenOptions::new()
        .create(true)
        .append(true)
        .open(batch.manifest())
        .with_context(|| format!("cannot open {}", batch.manifest().display()))?;
    let out_dir = File::open(&batch.out).with_context(|| format!("cannot open {}", batch.out.display()))?;
    let mut group: Vec<Done> = Vec::with_capacity(GROUP);
    loop {
        // Wait for work; once a group is open, commit it after a short lull even if not full.
        let (item, finished) = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(item) => (Some(item), false),
            Err(mpsc::RecvTimeoutError::Timeout) => (None, false),
            Err(mpsc::RecvTimeoutError::Disconnected) => (None, true),
        };
        let lull = item.is_none();
        if let Some(done) = item {
            group.push(done?);
        }
        if group.len() == GROUP || (lull && !group.is_empty()) {
            let n = group.len() as u64;
            commit(batch, &out_dir, &mut manifest, &mut group)?;
            progress.inc(n);
        }
        if finished {
            return Ok(());
        }
    }
}

fn commit(batch: &Batch, out_dir: &File, manifest: &mut File, group: &mut Vec<Done>) -> Result<()> {
    // 1. Everything the workers wrote for this group reaches the disk.
    rustix::fs::syncfs(out_dir).context("syncfs")?;
    // 2. The group is counted: one append, one fsync.
    let text: String = group.iter().map(|d| d.line.as_str()).collect();
    manifest.write_all(text.as_bytes()).context("cannot append to manifest.jsonl")?;
    manifest.sync_data().context("cannot sync manifest.jsonl")?;
    // 3. Folders move into place (a crash here is finished by `recover`).
    for d in group.drain(..) {
        publish(batch, &d.thing)?;
    }
    Ok(())
}

fn make_device<R: rand_core::CryptoRng + ?Sized>(
    args: &IssueArgs,
    ca: &LoadedCa,
    batch: &Batch,
    org: Option<&str>,
    validity: Duration,
    rng: &mut R,
) -> Result<Done> {
    let thing = ThingName::generate(rng);
    let t = thing.as_str();
    let mut attrs = Vec::with_capacity(3);
    if let Some(o) = org {
        attrs.push((name::attr::ORGANIZATION, o));
    }
    attrs.push((name::attr::COMMON_NAME, t));
    attrs.push((name::attr::SERIAL_NUMBER, t));
    let key = PrivateKey::generate(ca.algorithm, rng)?;
    let subject = ca.subject(name::build(&attrs)?, key.public_key(), validity)?;
    let cert = issue(
        &Issuer { certificate: Some(&ca.issuing), signer: &ca.issuing_key },
        &Profile::DeviceBirth,
        &subject,
        rng,
    )?;
    let code = (!args.no_claim_code).then(|| ClaimCode::generate(rng));
    let entry = ManifestEntry {
        thing_name: t.to_owned(),
        certificate_id: cert.id().to_string(),
        fingerprint: cert.id().fingerprint(),
        not_after: cert.not_after_rfc3339(),
        algorithm: ca.algorithm.to_string(),
        claim_code_verifier: code.as_ref().map(|c| c.verifier(rng)),
    };
    let dir = batch.staging.join(t);
    fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let write = |file: &str, bytes: &[u8], mode: u32| -> Result<()> {
        let path = dir.join(file);
        create_with_mode(&path, mode)
            .and_then(|mut f| f.write_all(bytes))
            .with_context(|| format!("cannot write {}", path.display()))
    };
    write("key.pem", pem::private_key_to_pem(&key)?.as_bytes(), 0o600)?;
    write("cert.pem", cert.to_pem().as_bytes(), 0o644)?;
    write("device.toml", device_toml(t, &args.staging_endpoint, ca).as_bytes(), 0o644)?;
    write(
        "label.svg",
        label::svg(
            t,
            code.as_ref(),
            if ca.algorithm == claimlink_pki::KeyAlgorithm::Sm2 { "SM2" } else { "P-256" },
        )?
        .as_bytes(),
        0o644,
    )?;
    for shared in ["chain.pem", "root-ca.pem", "endpoint-ca.pem"] {
        let target = dir.join(shared);
        fs::hard_link(batch.out.join(shared), &target)
            .or_else(|_| fs::copy(batch.out.join(shared), &target).map(|_| ()))
            .with_context(|| format!("cannot write {}", target.display()))?;
    }
    let mut line = serde_json::to_string(&entry)?;
    line.push('\n');
    Ok(Done { thing: t.to_owned(), line })
}

fn device_toml(thing: &str, endpoint: &str, ca: &LoadedCa) -> String {
    format!(
        "# claimlink device bundle. key.pem is the device's private key: flash it, then delete this copy.\n\
         thing_name = \"{thing}\"\n\
         staging_endpoint = \"{endpoint}\"\n\
         algorithm = \"{}\"\n\
         private_key = \"key.pem\"\n\
         certificate = \"cert.pem\"\n\
         certificate_chain = \"chain.pem\"\n\
         manufacturer_root_ca = \"root-ca.pem\"\n\
         root_ca = \"endpoint-ca.pem\"\n",
        ca.algorithm
    )
}

/// Rewrites `manifest.csv` and `labels.html` from `manifest.jsonl` (streaming) and removes the
/// empty staging directory.
fn finish(batch: &Batch) -> Result<()> {
    let manifest = File::open(batch.manifest())
        .with_context(|| format!("cannot open {}", batch.manifest().display()))?;
    let csv_path = batch.out.join("manifest.csv");
    let sheet_path = batch.out.join("labels.html");
    let mut csv = std::io::BufWriter::new(File::create(batch.out.join(".manifest.csv.tmp"))?);
    let mut sheet = std::io::BufWriter::new(File::create(batch.out.join(".labels.html.tmp"))?);
    writeln!(csv, "thing_name,certificate_id,fingerprint,not_after,algorithm,claim_code_verifier")?;
    sheet.write_all(label::SHEET_HEAD.as_bytes())?;
    for line in BufReader::new(manifest).lines() {
        let e: ManifestEntry = serde_json::from_str(&line?)?;
        writeln!(
            csv,
            "{},{},{},{},{},{}",
            e.thing_name,
            e.certificate_id,
            e.fingerprint,
            e.not_after,
            e.algorithm,
            e.claim_code_verifier.unwrap_or_default()
        )?;
        writeln!(sheet, r#"<img src="labels/{}.svg" alt="{}">"#, e.thing_name, e.thing_name)?;
    }
    sheet.write_all(label::SHEET_TAIL.as_bytes())?;
    for (w, tmp, dst) in [(csv, ".manifest.csv.tmp", &csv_path), (sheet, ".labels.html.tmp", &sheet_path)] {
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        fs::rename(batch.out.join(tmp), dst).with_context(|| format!("cannot write {}", dst.display()))?;
    }
    let _ = fs::remove_dir(&batch.staging);
    Ok(())
}
