//! `claimlink ca init | sign-csr | verify`: the manufacturer CA on disk.
//!
//! A CA directory holds `root-ca.pem`, `root-ca.key` and `issuing-ca.pem`, `issuing-ca.key`
//! (PKCS#8 encrypted with PBES2: PBKDF2-SHA256 and AES-256-CBC), `chain.pem` (issuing then root)
//! and `ca.toml` describing it. It is built in a hidden sibling directory and renamed into place,
//! so a crash never leaves half a CA.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result, bail};
use claimlink_gm::DistId;
use claimlink_pki::profile::YEAR;
use claimlink_pki::verify::Purpose;
use claimlink_pki::{
    Certificate, CertificateRequest, Issuer, KeyAlgorithm, Name, PrivateKey, Profile, Signer, Subject,
    TrustAnchors, ValidationOptions, issue, name, pem, verify_chain,
};
use serde::{Deserialize, Serialize};

use crate::PassphraseArg;
use crate::files::{read_bounded, write_atomic, write_new};
use crate::secret::{self, MIN_PASSPHRASE_LEN};

const MAX_INPUT: u64 = 1 << 20;

/// `ca init` arguments.
#[derive(clap::Args)]
pub(crate) struct InitArgs {
    /// Key algorithm: sm2 or p256.
    #[arg(long)]
    pub(crate) algorithm: KeyAlgorithm,
    /// Root CA subject, e.g. "CN=Acme Devices,O=Acme Ltd,C=CN".
    #[arg(long)]
    pub(crate) subject: String,
    /// Directory to create (must not exist or be empty).
    #[arg(long)]
    pub(crate) out: PathBuf,
    #[command(flatten)]
    pub(crate) passphrase: PassphraseArg,
    /// Where `claimlink ca serve` publishes this CA (`http://HOST:PORT`): every certificate it
    /// issues then names `URL/crl/...` as its CRL distribution point and `URL/ocsp...` as its
    /// OCSP responder.
    #[arg(long)]
    pub(crate) public_url: Option<String>,
}

/// Description of a CA directory (`ca.toml`).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CaInfo {
    /// Key algorithm.
    pub(crate) algorithm: String,
    /// Root certificate id.
    pub(crate) root_id: String,
    /// Issuing certificate id.
    pub(crate) issuing_id: String,
    /// Root subject.
    pub(crate) subject: String,
    /// Where the CA publishes its CRLs, OCSP and certificates (`claimlink ca serve`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) public_url: Option<String>,
}

/// A CA directory with its issuing key decrypted.
pub(crate) struct LoadedCa {
    /// Key algorithm.
    pub(crate) algorithm: KeyAlgorithm,
    /// Root certificate.
    pub(crate) root: Certificate,
    /// Issuing certificate.
    pub(crate) issuing: Certificate,
    /// Issuing key.
    pub(crate) issuing_key: PrivateKey,
    /// The publication extensions of every certificate the issuing CA signs (made once).
    leaf_extensions: Vec<claimlink_pki::Extension>,
}

/// The publication extensions (CRL distribution point, OCSP and issuer URLs) for certificates
/// signed by the `signer` CA ("issuing" or "root") of a CA published at `base`.
pub(crate) fn publication(base: Option<&str>, signer: &str) -> Result<Vec<claimlink_pki::Extension>> {
    let Some(base) = base.map(|b| b.trim_end_matches('/')) else {
        return Ok(Vec::new());
    };
    let ocsp = if signer == "root" { format!("{base}/ocsp/root") } else { format!("{base}/ocsp") };
    Ok(claimlink_pki::profile::publication_extensions(
        &format!("{base}/crl/{signer}.crl"),
        Some(&format!("{base}/crl/{signer}-delta.crl")),
        &ocsp,
        Some(&format!("{base}/ca/{signer}.der")),
    )?)
}

impl LoadedCa {
    /// A subject for an end-entity certificate of this CA: the CA's publication extensions
    /// added.
    pub(crate) fn subject(
        &self,
        name: Name,
        public_key: claimlink_pki::PublicKey,
        validity: std::time::Duration,
    ) -> Result<Subject> {
        let mut s = Subject::new(name, public_key, SystemTime::now(), validity);
        s.extra_extensions = self.leaf_extensions.clone();
        Ok(s)
    }
}

pub(crate) fn rng() -> rand_core::UnwrapErr<getrandom::SysRng> {
    rand_core::UnwrapErr(getrandom::SysRng)
}

fn subject(name: Name, key: &PrivateKey, years: u32) -> Subject {
    Subject::new(name, key.public_key(), SystemTime::now(), YEAR * years)
}

/// `claimlink ca init`.
pub(crate) fn init(args: &InitArgs) -> Result<()> {
    let pass = secret::passphrase(args.passphrase.passphrase_file.as_deref())?;
    if pass.chars().count() < MIN_PASSPHRASE_LEN {
        bail!("the CA passphrase must be at least {MIN_PASSPHRASE_LEN} characters");
    }
    let root_name = name::parse(&args.subject).context("--subject")?;
    if name::attribute(&root_name, name::attr::COMMON_NAME).is_none() {
        bail!("--subject needs a CN, e.g. \"CN=Acme Devices,O=Acme\"");
    }
    if let Some(url) = &args.public_url {
        publication(Some(url), "issuing").context("--public-url")?;
    }
    refuse_existing_ca(&args.out)?;
    let cn = name::attribute(&root_name, name::attr::COMMON_NAME).unwrap_or_default();
    let issuing_name = name::with_common_name(&root_name, &format!("{cn} Issuing CA"))?;

    let mut rng = rng();
    let root_key = PrivateKey::generate(args.algorithm, &mut rng)?;
    let root = issue(
        &Issuer { certificate: None, signer: &root_key },
        &Profile::RootCa,
        &subject(root_name, &root_key, 30),
        &mut rng,
    )?;
    let issuing_key = PrivateKey::generate(args.algorithm, &mut rng)?;
    let mut issuing_subject = subject(issuing_name, &issuing_key, 25);
    issuing_subject.extra_extensions = publication(args.public_url.as_deref(), "root")?;
    let issuing = issue(
        &Issuer { certificate: Some(&root), signer: &root_key },
        &Profile::IssuingCa { path_len: Some(0) },
        &issuing_subject,
        &mut rng,
    )?;
    let info = CaInfo {
        algorithm: args.algorithm.to_string(),
        root_id: root.id().to_string(),
        issuing_id: issuing.id().to_string(),
        subject: args.subject.clone(),
        public_url: args.public_url.clone(),
    };
    let files: Vec<(&str, Vec<u8>, u32)> = vec![
        ("root-ca.pem", root.to_pem().into_bytes(), 0o644),
        ("root-ca.key", pem::encrypt_private_key(&root_key, pass.as_bytes(), &mut rng)?.into_bytes(), 0o600),
        ("issuing-ca.pem", issuing.to_pem().into_bytes(), 0o644),
        (
            "issuing-ca.key",
            pem::encrypt_private_key(&issuing_key, pass.as_bytes(), &mut rng)?.into_bytes(),
            0o600,
        ),
        ("chain.pem", format!("{}{}", issuing.to_pem(), root.to_pem()).into_bytes(), 0o644),
        ("ca.toml", toml::to_string(&info)?.into_bytes(), 0o644),
    ];
    publish_dir(&args.out, &files)?;
    println!("created {} CA in {}", args.algorithm, args.out.display());
    println!("  root     {}  {}", root.id(), root.subject());
    println!("  issuing  {}  {}", issuing.id(), issuing.subject());
    Ok(())
}

fn refuse_existing_ca(dir: &Path) -> Result<()> {
    if dir.join("ca.toml").exists() {
        bail!("{} already holds a CA; refusing to overwrite it", dir.display());
    }
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
        if entries.next().is_some() {
            bail!("{} exists and is not empty; choose a new directory", dir.display());
        }
    }
    Ok(())
}

/// Writes `files` into a hidden sibling of `dir`, then renames it into place.
fn publish_dir(dir: &Path, files: &[(&str, Vec<u8>, u32)]) -> Result<()> {
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let base = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "ca".into());
    let tmp = parent.join(format!(".{base}.tmp-{}", std::process::id()));
    std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    std::fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let result = (|| -> Result<()> {
        for (file, contents, mode) in files {
            write_new(&tmp.join(file), contents, *mode)?;
        }
        if dir.exists() {
            std::fs::remove_dir(dir).with_context(|| format!("cannot replace empty {}", dir.display()))?;
        }
        std::fs::rename(&tmp, dir).with_context(|| format!("cannot create {}", dir.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// Loads a CA directory and decrypts its issuing key.
pub(crate) fn load(dir: &Path, passphrase: &PassphraseArg) -> Result<LoadedCa> {
    let info_path = dir.join("ca.toml");
    let info: CaInfo = toml::from_str(
        &String::from_utf8(read_bounded(&info_path, MAX_INPUT)?)
            .with_context(|| format!("{} is not UTF-8", info_path.display()))?,
    )
    .with_context(|| format!("{} is not a valid ca.toml", info_path.display()))?;
    let algorithm: KeyAlgorithm = info.algorithm.parse()?;
    let root = read_cert(&dir.join("root-ca.pem"))?;
    let issuing = read_cert(&dir.join("issuing-ca.pem"))?;
    let pass = secret::passphrase(passphrase.passphrase_file.as_deref())?;
    let key_path = dir.join("issuing-ca.key");
    let issuing_key = pem::private_key_from_pem(&read_bounded(&key_path, MAX_INPUT)?, Some(pass.as_bytes()))
        .with_context(|| format!("{}", key_path.display()))?;
    if issuing.public_key().ok().as_ref() != Some(&issuing_key.public_key()) {
        bail!("{}: the key does not match issuing-ca.pem", key_path.display());
    }
    let leaf_extensions = publication(info.public_url.as_deref(), "issuing")
        .with_context(|| format!("{}: public_url", info_path.display()))?;
    Ok(LoadedCa { algorithm, root, issuing, issuing_key, leaf_extensions })
}

fn read_cert(path: &Path) -> Result<Certificate> {
    Certificate::from_pem_or_der(&read_bounded(path, MAX_INPUT)?)
        .with_context(|| format!("{}", path.display()))
}

/// `ca sign-csr` arguments.
#[derive(clap::Args)]
pub(crate) struct SignCsrArgs {
    /// CA directory.
    #[arg(long)]
    ca: PathBuf,
    #[command(flatten)]
    passphrase: PassphraseArg,
    /// PEM CSR to sign (its signature is verified first).
    #[arg(long)]
    csr: PathBuf,
    /// Certificate profile.
    #[arg(long, value_enum)]
    profile: CsrProfile,
    /// DNS name for the subjectAltName (server profile; repeatable).
    #[arg(long = "dns")]
    dns: Vec<String>,
    /// IP address for the subjectAltName (server profile; repeatable).
    #[arg(long = "ip")]
    ip: Vec<std::net::IpAddr>,
    /// Validity in days.
    #[arg(long, default_value_t = 825)]
    days: u32,
    /// Where to write the certificate (PEM; must not exist).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CsrProfile {
    /// TLS server certificate (serverAuth, SAN).
    Server,
    /// An OEM claim-thing client certificate (clientAuth).
    ClaimThing,
}

/// `claimlink ca sign-csr`.
pub(crate) fn sign_csr(args: &SignCsrArgs) -> Result<()> {
    if args.out.exists() {
        bail!("{} already exists; refusing to overwrite it", args.out.display());
    }
    let csr = CertificateRequest::from_pem_or_der(&read_bounded(&args.csr, MAX_INPUT)?)
        .with_context(|| format!("{}", args.csr.display()))?;
    let ca = load(&args.ca, &args.passphrase)?;
    let profile = match args.profile {
        CsrProfile::Server => Profile::TlsServer { dns: args.dns.clone(), ips: args.ip.clone() },
        CsrProfile::ClaimThing => Profile::ClaimThing,
    };
    let validity = std::time::Duration::from_secs(u64::from(args.days) * 86_400);
    let subject = ca.subject(csr.subject().clone(), csr.public_key().clone(), validity)?;
    let cert = issue(
        &Issuer { certificate: Some(&ca.issuing), signer: &ca.issuing_key },
        &profile,
        &subject,
        &mut rng(),
    )?;
    write_atomic(&args.out, cert.to_pem().as_bytes(), 0o644)?;
    println!("{}", cert.id());
    Ok(())
}

/// `ca verify` arguments.
#[derive(clap::Args)]
pub(crate) struct VerifyArgs {
    /// PEM bundle: intermediates and the trusted root(s) (self-signed certificates are anchors).
    #[arg(long)]
    chain: PathBuf,
    /// Required purpose of the certificate.
    #[arg(long, value_enum, default_value = "any")]
    purpose: PurposeArg,
    /// SM2 distinguishing ID the signatures were made with.
    #[arg(long, default_value = "1234567812345678")]
    sm2_id: String,
    /// The certificate to check (PEM).
    cert: PathBuf,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PurposeArg {
    Any,
    Client,
    Server,
}

/// `claimlink ca verify`.
pub(crate) fn verify(args: &VerifyArgs) -> Result<()> {
    let leaf = read_cert(&args.cert)?;
    let bundle = Certificate::chain_from_pem(&read_bounded(&args.chain, MAX_INPUT)?)
        .with_context(|| format!("{}", args.chain.display()))?;
    let (anchors, intermediates): (Vec<_>, Vec<_>) = bundle.into_iter().partition(|c| c.is_self_issued());
    if anchors.is_empty() {
        bail!("{}: no self-signed root certificate to trust", args.chain.display());
    }
    let mut opts = ValidationOptions::at(SystemTime::now());
    opts.sm2_id = DistId::new(args.sm2_id.clone())?;
    opts.purpose = match args.purpose {
        PurposeArg::Any => Purpose::Any,
        PurposeArg::Client => Purpose::ClientAuth,
        PurposeArg::Server => Purpose::ServerAuth,
    };
    let path = verify_chain(&leaf, &intermediates, &TrustAnchors::new(anchors), &opts)
        .with_context(|| format!("{}: verification failed", args.cert.display()))?;
    println!("{}: OK", args.cert.display());
    for c in path {
        println!("  {}  {}", c.id(), c.subject());
    }
    Ok(())
}
