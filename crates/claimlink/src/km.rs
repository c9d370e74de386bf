//! The key management centre (KM) of a CA directory, and dual certificates (GM/T 0014/0015).
//!
//! `claimlink ca sign-dual` signs a subscriber's SM2 CSR as its **signing** certificate and has
//! the KM generate the **encryption** key pair: the KM issues its certificate (same subject,
//! keyEncipherment + dataEncipherment + keyAgreement, never digitalSignature), archives the
//! private key and delivers it to the subscriber as a GM/T 0009 `SM2EnvelopedKey` sealed to the
//! signing public key of the CSR, so that only the holder of the signing key can open it.
//!
//! Key tiers: the CA passphrase protects the KM key (`km/km.key`, PKCS#8 PBES2 like the CA keys);
//! every archived encryption key is an `SM2EnvelopedKey` sealed to the KM key
//! (`km/archive/<certificate id>.env`); delivered keys are sealed to their subscriber.
//!
//! Recovery of an archived key (`claimlink ca km recover`) takes approvals from two distinct
//! KM operators (`km/operators/<name>.pem`, their public keys), each a signature over the
//! request (which key, for which recipient, when), made with `claimlink ca km approve` by the
//! operator holding the private key. One approval, two by the same operator, a stale or forged
//! one: refused. Every approval checked and every recovery or refusal is a line of
//! `km/audit.log`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use claimlink_gm::{DistId, Sm2PrivateKey, envelope};
use claimlink_pki::{
    Certificate, CertificateRequest, Issuer, KeyAlgorithm, PrivateKey, Profile, PublicKey, Signer, issue, pem,
};
use serde::{Deserialize, Serialize};

use crate::PassphraseArg;
use crate::ca::{load, rng};
use crate::files::{read_bounded, write_atomic, write_new};

const MAX_INPUT: u64 = 1 << 20;
/// How long an approval stays good.
const APPROVAL_LIFETIME: Duration = Duration::from_secs(3600);
/// Approvals a recovery needs, from distinct operators.
const APPROVALS_NEEDED: usize = 2;

/// `ca sign-dual` arguments.
#[derive(clap::Args)]
pub(crate) struct SignDualArgs {
    /// CA directory (SM2).
    #[arg(long)]
    ca: PathBuf,
    #[command(flatten)]
    passphrase: PassphraseArg,
    /// The subscriber's SM2 CSR (its signing key pair).
    #[arg(long)]
    csr: PathBuf,
    /// A TLS/TLCP server (serverAuth on the signing certificate; the SAN on both); else a client.
    #[arg(long)]
    server: bool,
    /// DNS name for the subjectAltName (repeatable; servers).
    #[arg(long = "dns")]
    dns: Vec<String>,
    /// IP address for the subjectAltName (repeatable; servers).
    #[arg(long = "ip")]
    ip: Vec<std::net::IpAddr>,
    /// Validity in days.
    #[arg(long, default_value_t = 825)]
    days: u32,
    /// Directory to write `sign.pem`, `enc.pem` and `enc-key.env` (the enveloped key) into.
    #[arg(long)]
    out: PathBuf,
}

/// `ca km` commands.
#[derive(clap::Subcommand)]
pub(crate) enum KmCommand {
    /// Register a KM operator's public key (PEM) under a name.
    AddOperator(AddOperatorArgs),
    /// Approve the recovery of an archived encryption key, as one operator.
    Approve(ApproveArgs),
    /// Recover an archived encryption key for a recipient, with two operators' approvals.
    Recover(RecoverArgs),
}

#[derive(clap::Args)]
pub(crate) struct AddOperatorArgs {
    #[arg(long)]
    ca: PathBuf,
    /// Operator name (letters, digits, - and _).
    #[arg(long)]
    name: String,
    /// The operator's public key (PEM SubjectPublicKeyInfo, SM2 or P-256).
    #[arg(long)]
    public_key: PathBuf,
}

#[derive(clap::Args)]
pub(crate) struct ApproveArgs {
    /// The encryption certificate whose key is to be recovered.
    #[arg(long)]
    cert: PathBuf,
    /// The signing certificate of whoever receives the key (the envelope is sealed to it).
    #[arg(long)]
    to: PathBuf,
    /// The operator's name.
    #[arg(long)]
    operator: String,
    /// The operator's private key (PEM PKCS#8).
    #[arg(long)]
    key: PathBuf,
    /// Where to write the approval.
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args)]
pub(crate) struct RecoverArgs {
    #[arg(long)]
    ca: PathBuf,
    #[command(flatten)]
    passphrase: PassphraseArg,
    /// The encryption certificate whose key is recovered.
    #[arg(long)]
    cert: PathBuf,
    /// The recipient's signing certificate (SM2).
    #[arg(long)]
    to: PathBuf,
    /// Approvals (`ca km approve`), from two distinct operators.
    #[arg(long = "approval")]
    approvals: Vec<PathBuf>,
    /// Where to write the recovered key, enveloped to the recipient.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct Approval {
    operator: String,
    /// Unix seconds.
    at: u64,
    /// Hex of the DER signature over [`approval_message`].
    signature: String,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn read_cert(path: &Path) -> Result<Certificate> {
    Certificate::from_pem_or_der(&read_bounded(path, MAX_INPUT)?)
        .with_context(|| format!("{}", path.display()))
}

fn km_dir(ca: &Path) -> PathBuf {
    ca.join("km")
}

fn audit(ca: &Path, line: &str) -> Result<()> {
    let path = km_dir(ca).join("audit.log");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    writeln!(f, "{}\t{line}", unix(SystemTime::now()))?;
    f.sync_all()?;
    Ok(())
}

/// The KM key, made on first use.
fn km_key(ca: &Path, passphrase: &PassphraseArg) -> Result<Sm2PrivateKey> {
    let dir = km_dir(ca);
    let path = dir.join("km.key");
    let pass = crate::secret::passphrase(passphrase.passphrase_file.as_deref())?;
    if !path.exists() {
        std::fs::create_dir_all(dir.join("archive"))?;
        std::fs::create_dir_all(dir.join("operators"))?;
        let key = PrivateKey::generate(KeyAlgorithm::Sm2, &mut rng())?;
        write_new(&path, pem::encrypt_private_key(&key, pass.as_bytes(), &mut rng())?.as_bytes(), 0o600)?;
    }
    match pem::private_key_from_pem(&read_bounded(&path, MAX_INPUT)?, Some(pass.as_bytes()))
        .with_context(|| format!("{}", path.display()))?
    {
        PrivateKey::Sm2 { key, .. } => Ok(key),
        _ => bail!("{} is not an SM2 key", path.display()),
    }
}

fn sm2_public(cert: &Certificate, what: &str) -> Result<claimlink_gm::Sm2PublicKey> {
    match cert.public_key()? {
        PublicKey::Sm2(k) => Ok(k),
        other => bail!("{what} must be an SM2 certificate, not {}", other.kind()),
    }
}

/// A dual pair issued: the signing certificate, the encryption certificate and the
/// encryption key as a GM/T 0009 `SM2EnvelopedKey` sealed to the signing public key.
pub(crate) struct DualIssued {
    pub(crate) sign: Certificate,
    pub(crate) enc: Certificate,
    pub(crate) envelope: Vec<u8>,
}

/// What a dual pair is for: a TLS/TLCP server (with its names) or a client.
pub(crate) struct DualRequest<'a> {
    pub(crate) csr: &'a CertificateRequest,
    pub(crate) server: bool,
    pub(crate) dns: &'a [String],
    pub(crate) ips: &'a [std::net::IpAddr],
    pub(crate) validity: Duration,
}

/// The CA and KM issue a dual pair for `request`: the CA signs the CSR's key as the signing
/// certificate; the KM makes the encryption key pair, has it certified, archives it sealed to
/// the KM key and seals it to the subscriber. Audited in `km/audit.log`.
pub(crate) fn issue_dual(
    dir: &Path,
    ca: &crate::ca::LoadedCa,
    km: &Sm2PrivateKey,
    request: &DualRequest<'_>,
) -> Result<DualIssued> {
    let csr = request.csr;
    let PublicKey::Sm2(signing_public) = csr.public_key().clone() else {
        bail!("dual certificates are SM2: the CSR's key is {}", csr.public_key().kind());
    };
    if ca.algorithm != KeyAlgorithm::Sm2 {
        bail!("dual certificates need an SM2 CA; {} is {}", dir.display(), ca.algorithm);
    }
    let issuer = Issuer { certificate: Some(&ca.issuing), signer: &ca.issuing_key };
    let sign_profile = if request.server {
        Profile::TlsServer { dns: request.dns.to_vec(), ips: request.ips.to_vec() }
    } else {
        Profile::ClaimThing
    };
    let sign = issue(
        &issuer,
        &sign_profile,
        &ca.subject(csr.subject().clone(), csr.public_key().clone(), request.validity)?,
        &mut rng(),
    )?;
    // The KM's part: a fresh encryption key pair, its certificate, the archive, the envelope.
    let enc_key = Sm2PrivateKey::generate(&mut rng());
    let enc = issue(
        &issuer,
        &Profile::Encryption { dns: request.dns.to_vec(), ips: request.ips.to_vec() },
        &ca.subject(csr.subject().clone(), PublicKey::Sm2(enc_key.public_key()), request.validity)?,
        &mut rng(),
    )?;
    let archived = envelope::seal(&mut rng(), &km.public_key(), &enc_key)?;
    std::fs::create_dir_all(km_dir(dir).join("archive"))?;
    write_new(&km_dir(dir).join("archive").join(format!("{}.env", enc.id())), &archived, 0o600)?;
    let delivered = envelope::seal(&mut rng(), &signing_public, &enc_key)?;
    drop(enc_key);
    audit(dir, &format!("issued-dual\tsign={}\tenc={}\tsubject={}", sign.id(), enc.id(), sign.subject()))?;
    Ok(DualIssued { sign, enc, envelope: delivered })
}

/// The KM key of CA directory `dir` (made on first use), for a long-running service.
pub(crate) fn load_km_key(dir: &Path, passphrase: &PassphraseArg) -> Result<Sm2PrivateKey> {
    km_key(dir, passphrase)
}

/// `claimlink ca sign-dual`.
pub(crate) fn sign_dual(args: &SignDualArgs) -> Result<()> {
    let csr = CertificateRequest::from_pem_or_der(&read_bounded(&args.csr, MAX_INPUT)?)
        .with_context(|| format!("{}", args.csr.display()))?;
    let ca = load(&args.ca, &args.passphrase)?;
    if args.out.exists() && std::fs::read_dir(&args.out)?.next().is_some() {
        bail!("{} exists and is not empty", args.out.display());
    }
    let km = km_key(&args.ca, &args.passphrase)?;
    let request = DualRequest {
        csr: &csr,
        server: args.server,
        dns: &args.dns,
        ips: &args.ip,
        validity: Duration::from_secs(u64::from(args.days) * 86_400),
    };
    let DualIssued { sign, enc, envelope: delivered } = issue_dual(&args.ca, &ca, &km, &request)?;
    std::fs::create_dir_all(&args.out)?;
    write_new(&args.out.join("sign.pem"), sign.to_pem().as_bytes(), 0o644)?;
    write_new(&args.out.join("enc.pem"), enc.to_pem().as_bytes(), 0o644)?;
    write_new(&args.out.join("enc-key.env"), &delivered, 0o644)?;
    println!("signing certificate    {}  {}", sign.id(), args.out.join("sign.pem").display());
    println!("encryption certificate {}  {}", enc.id(), args.out.join("enc.pem").display());
    println!("encryption key, enveloped to the CSR's key: {}", args.out.join("enc-key.env").display());
    Ok(())
}

fn approval_message(enc: &Certificate, to: &Certificate, operator: &str, at: u64) -> Vec<u8> {
    format!("claimlink-km-recover-v1\n{}\n{}\n{operator}\n{at}\n", enc.id(), to.id()).into_bytes()
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `claimlink ca km ...`.
pub(crate) fn run(cmd: &KmCommand) -> Result<()> {
    match cmd {
        KmCommand::AddOperator(a) => {
            if !valid_name(&a.name) {
                bail!("operator names are 1 to 64 of A-Z a-z 0-9 - _");
            }
            let key = pem::public_key_from_pem(&read_bounded(&a.public_key, MAX_INPUT)?)
                .with_context(|| format!("{}", a.public_key.display()))?;
            let dir = km_dir(&a.ca).join("operators");
            std::fs::create_dir_all(&dir)?;
            write_new(&dir.join(format!("{}.pem", a.name)), pem::public_key_to_pem(&key).as_bytes(), 0o644)
                .with_context(|| format!("operator {} already exists", a.name))?;
            audit(&a.ca, &format!("operator-added\t{}", a.name))?;
            println!("KM operator {} added", a.name);
        }
        KmCommand::Approve(a) => {
            let (enc, to) = (read_cert(&a.cert)?, read_cert(&a.to)?);
            let key = pem::private_key_from_pem(&read_bounded(&a.key, MAX_INPUT)?, None)
                .with_context(|| format!("{}", a.key.display()))?;
            let at = unix(SystemTime::now());
            let signature = key.sign(&approval_message(&enc, &to, &a.operator, at))?;
            let approval = Approval { operator: a.operator.clone(), at, signature: hex::encode(signature) };
            write_atomic(&a.out, serde_json::to_string(&approval)?.as_bytes(), 0o644)?;
            println!("approval by {} written to {}", a.operator, a.out.display());
        }
        KmCommand::Recover(a) => recover(a)?,
    }
    Ok(())
}

fn recover(a: &RecoverArgs) -> Result<()> {
    let (enc, to) = (read_cert(&a.cert)?, read_cert(&a.to)?);
    let recipient = sm2_public(&to, "--to")?;
    let now = unix(SystemTime::now());
    let mut approved: Vec<String> = Vec::new();
    for path in &a.approvals {
        let refuse = |why: String| -> Result<()> {
            audit(&a.ca, &format!("approval-refused\tenc={}\t{}\t{why}", enc.id(), path.display()))?;
            eprintln!("{}: {why}", path.display());
            Ok(())
        };
        let approval: Approval = match serde_json::from_slice(&read_bounded(path, MAX_INPUT)?) {
            Ok(v) => v,
            Err(e) => {
                refuse(format!("not an approval: {e}"))?;
                continue;
            }
        };
        if !valid_name(&approval.operator) {
            refuse("bad operator name".into())?;
            continue;
        }
        let key_path = km_dir(&a.ca).join("operators").join(format!("{}.pem", approval.operator));
        let Ok(key_pem) = read_bounded(&key_path, MAX_INPUT) else {
            refuse(format!("{} is not a KM operator", approval.operator))?;
            continue;
        };
        let key = pem::public_key_from_pem(&key_pem)?;
        if approval.at > now + 60 || now.saturating_sub(approval.at) > APPROVAL_LIFETIME.as_secs() {
            refuse(format!("the approval by {} is stale or from the future", approval.operator))?;
            continue;
        }
        let algorithm = match key {
            PublicKey::Sm2(_) => claimlink_pki::SignatureAlgorithm::Sm2Sm3,
            _ => claimlink_pki::SignatureAlgorithm::EcdsaSha256,
        };
        let signature = hex::decode(&approval.signature).unwrap_or_default();
        let message = approval_message(&enc, &to, &approval.operator, approval.at);
        if key.verify(algorithm, &DistId::GMT_0009_DEFAULT, &message, &signature).is_err() {
            refuse(format!(
                "the signature of {} does not verify for this key and recipient",
                approval.operator
            ))?;
            continue;
        }
        audit(
            &a.ca,
            &format!("approval-accepted\tenc={}\tto={}\toperator={}", enc.id(), to.id(), approval.operator),
        )?;
        if !approved.contains(&approval.operator) {
            approved.push(approval.operator);
        }
    }
    if approved.len() < APPROVALS_NEEDED {
        audit(
            &a.ca,
            &format!(
                "recovery-refused\tenc={}\tto={}\tapproved-by={}",
                enc.id(),
                to.id(),
                approved.join(",")
            ),
        )?;
        bail!(
            "recovery needs approvals from {APPROVALS_NEEDED} distinct KM operators; {} valid ({})",
            approved.len(),
            if approved.is_empty() { "none".to_owned() } else { approved.join(", ") }
        );
    }
    let archive = km_dir(&a.ca).join("archive").join(format!("{}.env", enc.id()));
    let archived =
        read_bounded(&archive, MAX_INPUT).with_context(|| format!("no archived key for {}", enc.id()))?;
    let km = km_key(&a.ca, &a.passphrase)?;
    let key = envelope::open(&km, &archived).context("the archived key does not open with the KM key")?;
    if Some(PublicKey::Sm2(key.public_key())) != enc.public_key().ok() {
        bail!("the archived key is not the certificate's");
    }
    let sealed = envelope::seal(&mut rng(), &recipient, &key)?;
    drop(key);
    write_new(&a.out, &sealed, 0o600)?;
    audit(
        &a.ca,
        &format!("recovered\tenc={}\tto={}\tapproved-by={}", enc.id(), to.id(), approved.join(",")),
    )?;
    println!("recovered the key of {} for {} (approved by {})", enc.id(), to.id(), approved.join(", "));
    Ok(())
}
