//! `claimlink ca revoke | crl`: revocation by the manufacturer CA on disk.
//!
//! Each signing CA of a CA directory (the issuing CA for device and server certificates, the
//! root for the issuing CA) keeps its revocations in `revoked-{issuing,root}.txt`, one line per
//! certificate (`SERIAL<TAB>UNIX-SECONDS<TAB>REASON`), and its CRL numbering in
//! `crl-{issuing,root}.toml`. Files are replaced whole through a temporary file and a rename,
//! so a crash leaves the old version or the new one, never half of one.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use claimlink_pki::crl::{self, CrlParams, Reason, Revocation, Serial};
use claimlink_pki::{Certificate, PrivateKey, Signer, pem};
use serde::{Deserialize, Serialize};

use crate::PassphraseArg;
use crate::files::{read_bounded, write_atomic};

/// The most revocations one CA directory keeps (a line is under 80 bytes).
const MAX_INDEX: u64 = 256 << 20;

/// Which of the directory's CAs signs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum By {
    /// The issuing CA: devices' birth certificates, servers, claim-things.
    Issuing,
    /// The root: the issuing CA itself.
    Root,
}

impl By {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Issuing => "issuing",
            Self::Root => "root",
        }
    }
}

/// `ca revoke` arguments.
#[derive(clap::Args)]
pub(crate) struct RevokeArgs {
    /// CA directory.
    #[arg(long)]
    ca: PathBuf,
    /// The certificate to revoke (PEM or DER); it must be one this CA issued.
    #[arg(long, conflicts_with = "serial", required_unless_present = "serial")]
    cert: Option<PathBuf>,
    /// Or its serial number in hex (as `openssl x509 -serial` prints it).
    #[arg(long)]
    serial: Option<String>,
    /// RFC 5280 reason: keyCompromise, cACompromise, affiliationChanged, superseded,
    /// cessationOfOperation, certificateHold, privilegeWithdrawn, unspecified.
    #[arg(long, default_value = "unspecified")]
    reason: String,
    /// Which CA revokes: `issuing` (its certificates) or `root` (the issuing CA).
    #[arg(long, value_enum, default_value = "issuing")]
    by: By,
}

/// `ca crl` arguments.
#[derive(clap::Args)]
pub(crate) struct CrlArgs {
    /// CA directory.
    #[arg(long)]
    ca: PathBuf,
    #[command(flatten)]
    passphrase: PassphraseArg,
    /// Which CA signs: `issuing` or `root`.
    #[arg(long, value_enum, default_value = "issuing")]
    by: By,
    /// A delta CRL: only what was revoked since the last full CRL.
    #[arg(long)]
    delta: bool,
    /// Days until nextUpdate.
    #[arg(long, default_value_t = 7)]
    days: u32,
    /// Where to write the CRL (`.pem`: PEM, else DER).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Serialize, Deserialize, Default)]
struct CrlState {
    /// The number the next CRL takes.
    next_number: u64,
    /// The last full CRL's number and thisUpdate (Unix seconds).
    full_number: Option<u64>,
    full_at: Option<u64>,
}

pub(crate) fn index_path(dir: &Path, by: By) -> PathBuf {
    dir.join(format!("revoked-{}.txt", by.name()))
}

fn state_path(dir: &Path, by: By) -> PathBuf {
    dir.join(format!("crl-{}.toml", by.name()))
}

pub(crate) fn signer_cert(dir: &Path, by: By) -> Result<Certificate> {
    let path = dir.join(format!("{}-ca.pem", by.name()));
    if !dir.join("ca.toml").exists() {
        bail!("{} is not a CA directory (no ca.toml)", dir.display());
    }
    Certificate::from_pem_or_der(&read_bounded(&path, 1 << 20)?)
        .with_context(|| format!("{}", path.display()))
}

pub(crate) fn read_index(dir: &Path, by: By) -> Result<Vec<Revocation>> {
    let path = index_path(dir, by);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = String::from_utf8(read_bounded(&path, MAX_INDEX)?).context("revocation index is not UTF-8")?;
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            let bad =
                || anyhow::anyhow!("{} line {}: not SERIAL<TAB>SECONDS<TAB>REASON", path.display(), i + 1);
            let mut f = line.split('\t');
            let (Some(serial), Some(at), Some(reason), None) = (f.next(), f.next(), f.next(), f.next())
            else {
                return Err(bad());
            };
            let reason = if reason == "-" { None } else { Some(Reason::from_name(reason)?) };
            Ok(Revocation {
                serial: Serial::from_hex(serial).map_err(|_| bad())?,
                revoked_at: SystemTime::UNIX_EPOCH + Duration::from_secs(at.parse().map_err(|_| bad())?),
                reason,
            })
        })
        .collect()
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// An exclusive lock on a CA directory's revocation state, held while its index or numbering
/// is read, changed and replaced (by `ca revoke`, `ca crl` and `ca serve` alike).
pub(crate) struct StateLock {
    _file: std::fs::File,
}

pub(crate) fn lock_state(dir: &Path) -> Result<StateLock> {
    let path = dir.join(".revocation.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
        .with_context(|| format!("cannot lock {}", path.display()))?;
    Ok(StateLock { _file: file })
}

/// Adds `serial` to the revocations of the `by` CA of `dir` (refused if it is there already;
/// removeFromCRL is not a reason to revoke).
pub(crate) fn record(dir: &Path, by: By, serial: Serial, reason: Reason) -> Result<Revocation> {
    if reason == Reason::RemoveFromCrl {
        bail!("removeFromCRL lifts a hold in a delta CRL; it is not a reason to revoke");
    }
    let _lock = lock_state(dir)?;
    let mut index = read_index(dir, by)?;
    if index.iter().any(|r| r.serial == serial) {
        bail!("serial {} is already revoked by the {} CA", serial.to_hex(), by.name());
    }
    let entry = Revocation { serial, revoked_at: SystemTime::now(), reason: Some(reason) };
    index.push(entry);
    let text: String = index
        .iter()
        .map(|r| {
            format!("{}\t{}\t{}\n", r.serial.to_hex(), unix(r.revoked_at), r.reason.map_or("-", Reason::name))
        })
        .collect();
    write_atomic(&index_path(dir, by), text.as_bytes(), 0o644)?;
    Ok(entry)
}

/// `claimlink ca revoke`.
pub(crate) fn revoke(args: &RevokeArgs) -> Result<()> {
    let ca = signer_cert(&args.ca, args.by)?;
    let reason = Reason::from_name(&args.reason)?;
    let serial = match (&args.cert, &args.serial) {
        (Some(path), _) => {
            let cert = Certificate::from_pem_or_der(&read_bounded(path, 1 << 20)?)
                .with_context(|| format!("{}", path.display()))?;
            if !issued_by(&cert, &ca) {
                bail!(
                    "{} was not issued by the {} CA of {}",
                    path.display(),
                    args.by.name(),
                    args.ca.display()
                );
            }
            Serial::of(&cert)?
        }
        (None, Some(hex)) => Serial::from_hex(hex).context("--serial")?,
        (None, None) => bail!("give --cert or --serial"),
    };
    record(&args.ca, args.by, serial, reason)?;
    println!(
        "revoked serial {} ({}) by the {} CA; run `claimlink ca crl` to publish",
        serial.to_hex(),
        reason.name(),
        args.by.name()
    );
    Ok(())
}

/// Whether `ca` signed `cert`.
pub(crate) fn issued_by(cert: &Certificate, ca: &Certificate) -> bool {
    let (Ok(key), Some(alg)) = (ca.public_key(), cert.signature_algorithm()) else {
        return false;
    };
    cert.issuer() == ca.subject()
        && key.verify(alg, &claimlink_gm::DistId::GMT_0009_DEFAULT, cert.tbs_der(), cert.signature()).is_ok()
}

/// A CRL built by [`build_crl`].
pub(crate) struct BuiltCrl {
    pub(crate) der: Vec<u8>,
    pub(crate) number: u64,
    pub(crate) entries: usize,
}

/// Builds and signs the next CRL of the `by` CA of `dir` (full, or a delta over the last full
/// one) valid for `validity`, and advances the numbering before it returns: a crash after
/// that skips a number, never gives one number to two different CRLs.
pub(crate) fn build_crl(
    dir: &Path,
    by: By,
    key: &PrivateKey,
    delta: bool,
    validity: Duration,
) -> Result<BuiltCrl> {
    let ca = signer_cert(dir, by)?;
    if ca.public_key().ok().as_ref() != Some(&key.public_key()) {
        bail!("the {} CA key does not match its certificate", by.name());
    }
    let _lock = lock_state(dir)?;
    let state_file = state_path(dir, by);
    let mut state: CrlState = if state_file.exists() {
        toml::from_str(&String::from_utf8(read_bounded(&state_file, 1 << 16)?)?)
            .with_context(|| format!("{}", state_file.display()))?
    } else {
        CrlState { next_number: 1, ..Default::default() }
    };
    let index = read_index(dir, by)?;
    let now = SystemTime::now();
    let number = state.next_number;
    let (entries, delta_base): (Vec<Revocation>, Option<u64>) = if delta {
        let (Some(base), Some(at)) = (state.full_number, state.full_at) else {
            bail!("a delta CRL needs a full CRL first: run `claimlink ca crl` without --delta");
        };
        (index.into_iter().filter(|r| unix(r.revoked_at) >= at).collect(), Some(base))
    } else {
        (index, None)
    };
    let params = CrlParams { this_update: now, next_update: now + validity, number, delta_base };
    let count = entries.len();
    let der = crl::build(&ca, key, &params, entries)?;
    state.next_number = number + 1;
    if !delta {
        state.full_number = Some(number);
        state.full_at = Some(unix(now));
    }
    write_atomic(&state_file, toml::to_string(&state)?.as_bytes(), 0o644)?;
    Ok(BuiltCrl { der, number, entries: count })
}

/// The decrypted key of the `by` CA of `dir`.
pub(crate) fn signer_key(dir: &Path, by: By, passphrase: &PassphraseArg) -> Result<PrivateKey> {
    let key_path = dir.join(format!("{}-ca.key", by.name()));
    let pass = crate::secret::passphrase(passphrase.passphrase_file.as_deref())?;
    pem::private_key_from_pem(&read_bounded(&key_path, 1 << 20)?, Some(pass.as_bytes()))
        .with_context(|| format!("{}", key_path.display()))
}

/// `claimlink ca crl`.
pub(crate) fn crl(args: &CrlArgs) -> Result<()> {
    let key = signer_key(&args.ca, args.by, &args.passphrase)?;
    let validity = Duration::from_secs(86_400 * u64::from(args.days.max(1)));
    // The numbering moves on when the CRL is built; writing it out can still fail, which
    // leaves a gap in the numbers, never a number used twice.
    let built = build_crl(&args.ca, args.by, &key, args.delta, validity)?;
    let bytes = if args.out.extension().is_some_and(|e| e == "pem") {
        pem::encode("X509 CRL", &built.der).into_bytes()
    } else {
        built.der
    };
    write_atomic(&args.out, &bytes, 0o644)?;
    let count = built.entries;
    println!(
        "wrote {} CRL {} of the {} CA with {} entr{} to {}",
        if args.delta { "delta" } else { "full" },
        built.number,
        args.by.name(),
        count,
        if count == 1 { "y" } else { "ies" },
        args.out.display()
    );
    Ok(())
}
