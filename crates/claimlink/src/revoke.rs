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

/// `claimlink ca revoke`.
pub(crate) fn revoke(args: &RevokeArgs) -> Result<()> {
    let ca = signer_cert(&args.ca, args.by)?;
    let reason = Reason::from_name(&args.reason)?;
    if reason == Reason::RemoveFromCrl {
        bail!("removeFromCRL lifts a hold in a delta CRL; it is not a reason to revoke");
    }
    let serial = match (&args.cert, &args.serial) {
        (Some(path), _) => {
            let cert = Certificate::from_pem_or_der(&read_bounded(path, 1 << 20)?)
                .with_context(|| format!("{}", path.display()))?;
            let key = ca.public_key()?;
            let alg = cert.signature_algorithm().context("unsupported signature algorithm")?;
            if cert.issuer() != ca.subject()
                || key
                    .verify(alg, &claimlink_gm::DistId::GMT_0009_DEFAULT, cert.tbs_der(), cert.signature())
                    .is_err()
            {
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
    let mut index = read_index(&args.ca, args.by)?;
    if index.iter().any(|r| r.serial == serial) {
        bail!("serial {} is already revoked by the {} CA", serial.to_hex(), args.by.name());
    }
    let now = SystemTime::now();
    index.push(Revocation { serial, revoked_at: now, reason: Some(reason) });
    let text: String = index
        .iter()
        .map(|r| {
            format!("{}\t{}\t{}\n", r.serial.to_hex(), unix(r.revoked_at), r.reason.map_or("-", Reason::name))
        })
        .collect();
    write_atomic(&index_path(&args.ca, args.by), text.as_bytes(), 0o644)?;
    println!(
        "revoked serial {} ({}) by the {} CA; run `claimlink ca crl` to publish",
        serial.to_hex(),
        reason.name(),
        args.by.name()
    );
    Ok(())
}

/// `claimlink ca crl`.
pub(crate) fn crl(args: &CrlArgs) -> Result<()> {
    let ca = signer_cert(&args.ca, args.by)?;
    let key_path = args.ca.join(format!("{}-ca.key", args.by.name()));
    let pass = crate::secret::passphrase(args.passphrase.passphrase_file.as_deref())?;
    let key: PrivateKey =
        pem::private_key_from_pem(&read_bounded(&key_path, 1 << 20)?, Some(pass.as_bytes()))
            .with_context(|| format!("{}", key_path.display()))?;
    if ca.public_key().ok().as_ref() != Some(&key.public_key()) {
        bail!("{}: the key does not match the certificate", key_path.display());
    }
    let state_file = state_path(&args.ca, args.by);
    let mut state: CrlState = if state_file.exists() {
        toml::from_str(&String::from_utf8(read_bounded(&state_file, 1 << 16)?)?)
            .with_context(|| format!("{}", state_file.display()))?
    } else {
        CrlState { next_number: 1, ..Default::default() }
    };
    let index = read_index(&args.ca, args.by)?;
    let now = SystemTime::now();
    let number = state.next_number;
    let (entries, delta_base): (Vec<Revocation>, Option<u64>) = if args.delta {
        let (Some(base), Some(at)) = (state.full_number, state.full_at) else {
            bail!("a delta CRL needs a full CRL first: run `claimlink ca crl` without --delta");
        };
        (index.into_iter().filter(|r| unix(r.revoked_at) >= at).collect(), Some(base))
    } else {
        (index, None)
    };
    let params = CrlParams {
        this_update: now,
        next_update: now + Duration::from_secs(86_400 * u64::from(args.days.max(1))),
        number,
        delta_base,
    };
    let count = entries.len();
    let der = crl::build(&ca, &key, &params, entries)?;
    let bytes = if args.out.extension().is_some_and(|e| e == "pem") {
        pem::encode("X509 CRL", &der).into_bytes()
    } else {
        der
    };
    // The CRL first, then the numbering: a crash between them reuses the number, never skips
    // past a CRL that was not written.
    write_atomic(&args.out, &bytes, 0o644)?;
    state.next_number = number + 1;
    if !args.delta {
        state.full_number = Some(number);
        state.full_at = Some(unix(now));
    }
    write_atomic(&state_file, toml::to_string(&state)?.as_bytes(), 0o644)?;
    println!(
        "wrote {} CRL {} of the {} CA with {} entr{} to {}",
        if args.delta { "delta" } else { "full" },
        number,
        args.by.name(),
        count,
        if count == 1 { "y" } else { "ies" },
        args.out.display()
    );
    Ok(())
}
