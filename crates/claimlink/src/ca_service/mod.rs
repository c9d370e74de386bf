//! `claimlink ca serve`: the CA system of a CA directory as a service - RA, CA, KM and
//! publication behind one HTTP API (GM/T 0034's CA/RA/KM with the five roles).
//!
//! - **RA**: anyone may apply for a certificate (a CSR, a profile, names); the application is
//!   reviewed automatically by the review policy (a renewal proven with the key of a valid
//!   certificate of the same subject and profile; profiles the business administrator lets
//!   through) or by a business operator who approves or rejects it. The applicant downloads
//!   the result with the token it got when applying. Revocation requests carry an RFC 5280
//!   reason and are approved by an operator other than the one who asked.
//! - **CA**: issuance through the one pipeline of `claimlink-pki`, every certificate naming
//!   the CA's CRL distribution point and OCSP responder when the directory has a public URL.
//! - **KM**: dual certificates (`dual-server`, `dual-client`), the encryption key made,
//!   archived and enveloped by [`crate::km::issue_dual`].
//! - **Publication**: `GET /crl/{issuing,root}.crl` (full CRLs, re-signed at half their
//!   validity) and `/crl/{issuing,root}-delta.crl` (delta CRLs, signed on every revocation and
//!   within a second of the revocation index changing under it), `POST /ocsp`
//!   and `/ocsp/root` (the responder of `ca ocsp-responder`), `GET /ca/{issuing,root}.der`.
//!
//! Records live in a registry store (`sqlite://DIR/ra.db` unless `--database-url`); every
//! change is written with its audit row in one transaction, and the audit log is a hash chain
//! the audit roles can verify.

pub(crate) mod api;
pub(crate) mod client;
pub(crate) mod roles;
pub(crate) mod store;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use claimlink_gm::Sm2PrivateKey;
use claimlink_pki::crl::Serial;
use claimlink_pki::{Certificate, CertificateRequest, Issuer, PrivateKey, Profile, issue};
use claimlink_registry::Store;

use crate::PassphraseArg;
use crate::ca::{LoadedCa, load, rng};
use crate::files::{write_atomic, write_new};
use crate::ocsp_cmd::OcspState;
use crate::revoke::{By, build_crl, index_path, signer_key};

/// Applications waiting for an operator at once; more are refused until some are decided.
pub(crate) const MAX_PENDING_APPLICATIONS: i64 = 10_000;
/// Revocation requests waiting at once.
pub(crate) const MAX_PENDING_REVOCATIONS: i64 = 10_000;
/// Largest JSON request body (a CSR and a renewal proof fit in a few KiB).
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// `ca serve` arguments.
#[derive(clap::Args)]
pub(crate) struct ServeArgs {
    /// CA directory (`claimlink ca init`; `--public-url` there names where this serves).
    #[arg(long)]
    pub(crate) ca: PathBuf,
    #[command(flatten)]
    pub(crate) passphrase: PassphraseArg,
    /// Address to listen on. Plain HTTP, so loopback only: put a TLS-terminating proxy in
    /// front to serve others (CRLs and OCSP are signed; the API's tokens are not).
    #[arg(long, default_value = "127.0.0.1:8890")]
    pub(crate) listen: SocketAddr,
    /// The records' database (default `sqlite://CA/ra.db`; PostgreSQL: `postgres://...`).
    #[arg(long, env = "CLAIMLINK_CA_DATABASE_URL")]
    pub(crate) database_url: Option<String>,
    /// Hours from thisUpdate to nextUpdate of the CRLs it publishes.
    #[arg(long, default_value_t = 24)]
    pub(crate) crl_hours: u64,
    /// Minutes from thisUpdate to nextUpdate of its OCSP responses.
    #[arg(long, default_value_t = 60)]
    pub(crate) ocsp_minutes: u64,
}

/// A published CRL.
struct Published {
    der: Vec<u8>,
    signed: Instant,
    index_modified: Option<SystemTime>,
}

/// A delta listing more than this many revocations is folded into a new full CRL.
const MAX_DELTA_ENTRIES: usize = 10_000;

/// Called with every CRL the service publishes: the issuing CA's as PEM followed by the issuing
/// CA's certificate (what staging's `PUT /staging/crls` takes), the root's as DER. `up` hands
/// them to staging, which ends the sessions they revoke and passes them on to the accounts.
pub(crate) type CrlHook = Arc<dyn Fn(Vec<u8>) + Send + Sync>;

/// The service's state.
pub(crate) struct Service {
    pub(crate) dir: PathBuf,
    pub(crate) ca: LoadedCa,
    root_key: PrivateKey,
    pub(crate) km: Option<Sm2PrivateKey>,
    pub(crate) store: Store,
    pub(crate) ocsp_issuing: Arc<OcspState>,
    pub(crate) ocsp_root: Arc<OcspState>,
    /// Full and delta CRLs of the issuing CA and of the root.
    crls: [RwLock<Published>; 4],
    crl_validity: Duration,
    /// Serializes the service's writes: one audit chain, one writer at a time.
    pub(crate) write: tokio::sync::Mutex<()>,
    /// Serializes CRL signing (the revocation path and the watcher).
    signing: std::sync::Mutex<()>,
    on_crl: Option<CrlHook>,
}

impl Service {
    fn published(&self, by: By, delta: bool) -> &RwLock<Published> {
        let i = match by {
            By::Issuing => 0,
            By::Root => 2,
        };
        &self.crls[i + usize::from(delta)]
    }

    /// The current full (or delta) CRL of `by`, DER.
    pub(crate) fn crl(&self, by: By, delta: bool) -> Vec<u8> {
        claimlink_service::read(self.published(by, delta)).der.clone()
    }

    /// Signs the next CRL of `by` from its revocation index - full, or a delta over the last
    /// full one - writes it to `DIR/published/`, serves it from now on and hands it to the hook.
    /// A full CRL is followed by its (empty) delta, so that a delta is always there to fetch.
    /// (Blocking: call off the runtime.)
    fn sign(&self, by: By, delta: bool) -> Result<usize> {
        let modified = std::fs::metadata(index_path(&self.dir, by)).and_then(|m| m.modified()).ok();
        let key = match by {
            By::Issuing => &self.ca.issuing_key,
            By::Root => &self.root_key,
        };
        let built = build_crl(&self.dir, by, key, delta, self.crl_validity)?;
        let out = self.dir.join("published");
        std::fs::create_dir_all(&out)?;
        let file = format!("{}{}.crl", by.name(), if delta { "-delta" } else { "" });
        write_atomic(&out.join(file), &built.der, 0o644)?;
        if let Some(hook) = &self.on_crl {
            hook(match by {
                By::Issuing => format!(
                    "{}{}",
                    claimlink_pki::pem::encode("X509 CRL", &built.der),
                    self.ca.issuing.to_pem()
                )
                .into_bytes(),
                By::Root => built.der.clone(),
            });
        }
        *claimlink_service::write(self.published(by, delta)) =
            Published { der: built.der, signed: Instant::now(), index_modified: modified };
        tracing::info!(
            ca = by.name(),
            delta,
            number = built.number,
            entries = built.entries,
            "CRL published"
        );
        Ok(built.entries)
    }

    /// A new full CRL of `by` and its empty delta.
    pub(crate) fn republish(&self, by: By) -> Result<()> {
        let _one = claimlink_service::lock(&self.signing);
        self.sign(by, false)?;
        self.sign(by, true)?;
        Ok(())
    }

    /// What a revocation publishes: a delta CRL of `by` with everything revoked since the last
    /// full one (cheap whatever the full one's size); a full CRL when the delta has grown past
    /// [`MAX_DELTA_ENTRIES`].
    pub(crate) fn publish_revocation(&self, by: By) -> Result<()> {
        let _one = claimlink_service::lock(&self.signing);
        if self.sign(by, true)? > MAX_DELTA_ENTRIES {
            self.sign(by, false)?;
            self.sign(by, true)?;
        }
        Ok(())
    }

    /// Publishes what changed under the service (a `ca revoke` beside it: a delta) and re-signs
    /// the CRLs half way to their nextUpdate (full and delta).
    fn refresh_crls(&self) {
        for by in [By::Issuing, By::Root] {
            let modified = std::fs::metadata(index_path(&self.dir, by)).and_then(|m| m.modified()).ok();
            let (changed, old) = {
                let full = claimlink_service::read(self.published(by, false));
                let delta = claimlink_service::read(self.published(by, true));
                (
                    delta.index_modified != modified && full.index_modified != modified,
                    full.signed.elapsed() >= self.crl_validity / 2,
                )
            };
            let result = if old {
                self.republish(by)
            } else if changed {
                self.publish_revocation(by)
            } else {
                Ok(())
            };
            if let Err(e) = result {
                tracing::error!(ca = by.name(), error = %e, "a CRL could not be signed; the last one is served");
            }
        }
    }

    /// The revocation status of a serial of the issuing CA, from its responder's index.
    pub(crate) fn status(&self, serial: &Serial) -> claimlink_pki::ocsp::Status {
        self.ocsp_issuing.status(serial)
    }
}

/// What an application asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AppProfile {
    /// A device birth certificate (the subject's serialNumber is the ThingName).
    Device,
    /// An OEM's claim-thing client certificate.
    ClaimThing,
    /// A TLS server certificate (names required).
    Server,
    /// A TLS/TLCP server's signing and encryption certificates (SM2).
    DualServer,
    /// A client's signing and encryption certificates (SM2).
    DualClient,
}

impl AppProfile {
    pub(crate) const ALL: [AppProfile; 5] =
        [Self::Device, Self::ClaimThing, Self::Server, Self::DualServer, Self::DualClient];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Device => "device",
            Self::ClaimThing => "claim-thing",
            Self::Server => "server",
            Self::DualServer => "dual-server",
            Self::DualClient => "dual-client",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    pub(crate) fn is_dual(self) -> bool {
        matches!(self, Self::DualServer | Self::DualClient)
    }
}

/// The names of a server application.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Names {
    #[serde(default)]
    pub(crate) dns: Vec<String>,
    #[serde(default)]
    pub(crate) ips: Vec<std::net::IpAddr>,
}

/// What issuing an application produced.
pub(crate) struct Produced {
    pub(crate) certificate: Certificate,
    /// Dual: the encryption certificate and the enveloped key (GM/T 0009 DER).
    pub(crate) encryption: Option<(Certificate, Vec<u8>)>,
}

/// Issues what `profile` asks for `csr` (blocking: signing).
pub(crate) fn produce(
    svc: &Service,
    profile: AppProfile,
    csr: &CertificateRequest,
    names: &Names,
    validity: Duration,
) -> Result<Produced> {
    let ca = &svc.ca;
    let simple = |p: Profile| -> Result<Produced> {
        let subject = ca.subject(csr.subject().clone(), csr.public_key().clone(), validity)?;
        let certificate = issue(
            &Issuer { certificate: Some(&ca.issuing), signer: &ca.issuing_key },
            &p,
            &subject,
            &mut rng(),
        )?;
        Ok(Produced { certificate, encryption: None })
    };
    match profile {
        AppProfile::Device => simple(Profile::DeviceBirth),
        AppProfile::ClaimThing => simple(Profile::ClaimThing),
        AppProfile::Server => simple(Profile::TlsServer { dns: names.dns.clone(), ips: names.ips.clone() }),
        AppProfile::DualServer | AppProfile::DualClient => {
            let Some(km) = &svc.km else { bail!("dual certificates need an SM2 CA") };
            let request = crate::km::DualRequest {
                csr,
                server: profile == AppProfile::DualServer,
                dns: &names.dns,
                ips: &names.ips,
                validity,
            };
            let dual = crate::km::issue_dual(&svc.dir, ca, km, &request)?;
            Ok(Produced { certificate: dual.sign, encryption: Some((dual.enc, dual.envelope)) })
        }
    }
}

fn default_database(dir: &Path) -> Result<String> {
    let path = std::fs::canonicalize(dir).with_context(|| format!("{}", dir.display()))?.join("ra.db");
    Ok(format!("sqlite://{}", path.display()))
}

/// What [`start`] needs besides its listener.
pub(crate) struct Setup {
    pub(crate) dir: PathBuf,
    pub(crate) passphrase: PassphraseArg,
    pub(crate) database_url: Option<String>,
    pub(crate) crl_validity: Duration,
    pub(crate) ocsp_validity: Duration,
    pub(crate) on_crl: Option<CrlHook>,
}

/// Opens the CA system of `setup.dir` and serves it on `listener` (its tasks run on the current
/// runtime until `shutdown`).
pub(crate) async fn start(
    setup: Setup,
    listener: tokio::net::TcpListener,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<Arc<Service>> {
    loopback_only(listener.local_addr()?)?;
    let url = match &setup.database_url {
        Some(u) => u.clone(),
        None => default_database(&setup.dir)?,
    };
    let Setup { dir, passphrase, crl_validity, ocsp_validity, on_crl, .. } = setup;
    // Keys decrypted and responders opened off the runtime (PBKDF2, file reads).
    let d = dir.clone();
    let (ca, root_key, km, ocsp_issuing, ocsp_root) = tokio::task::spawn_blocking(move || -> Result<_> {
        let ca = load(&d, &passphrase)?;
        let root_key = signer_key(&d, By::Root, &passphrase)?;
        let km = match ca.algorithm {
            claimlink_pki::KeyAlgorithm::Sm2 => Some(crate::km::load_km_key(&d, &passphrase)?),
            _ => None,
        };
        let ocsp_issuing = OcspState::open(&d, By::Issuing, &passphrase, ocsp_validity)?;
        let ocsp_root = OcspState::open(&d, By::Root, &passphrase, ocsp_validity)?;
        Ok((ca, root_key, km, ocsp_issuing, ocsp_root))
    })
    .await??;
    let store = store::open(&url).await.context("the CA system's database")?;
    let empty = || Published { der: Vec::new(), signed: Instant::now(), index_modified: None };
    let svc = Arc::new(Service {
        dir,
        ca,
        root_key,
        km,
        store,
        ocsp_issuing,
        ocsp_root,
        crls: [RwLock::new(empty()), RwLock::new(empty()), RwLock::new(empty()), RwLock::new(empty())],
        signing: std::sync::Mutex::new(()),
        crl_validity,
        write: tokio::sync::Mutex::new(()),
        on_crl,
    });
    {
        let s = svc.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            s.republish(By::Issuing)?;
            s.republish(By::Root)
        })
        .await??;
    }
    bootstrap(&svc).await?;
    // One watcher for the revocation index: the CRLs first, then the OCSP responders, so that
    // OCSP never answers revoked before the CRL saying so is published.
    let watcher = svc.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let w = watcher.clone();
            let _ = tokio::task::spawn_blocking(move || {
                w.refresh_crls();
                for ocsp in [&w.ocsp_issuing, &w.ocsp_root] {
                    if let Err(e) = ocsp.refresh() {
                        tracing::error!(error = %e, "the revocation index could not be read; OCSP answers use the last one read");
                    }
                }
            })
            .await;
        }
    });
    let app = api::router(svc.clone());
    let limits = claimlink_service::HttpLimits { max_body: MAX_BODY, ..Default::default() };
    claimlink_service::spawn_role(
        "ca-system",
        claimlink_service::serve_http("ca", listener, None, limits, shutdown, move |_| app.clone()),
    );
    Ok(svc)
}

/// The service speaks plain HTTP: it listens on loopback only.
fn loopback_only(addr: SocketAddr) -> Result<()> {
    if !addr.ip().is_loopback() {
        bail!(
            "{addr}: the CA service speaks plain HTTP and listens on loopback only; put a \
             TLS-terminating proxy in front of it to serve others"
        );
    }
    Ok(())
}

/// `claimlink ca serve`.
pub(crate) fn run(args: &ServeArgs) -> Result<()> {
    loopback_only(args.listen).context("--listen")?;
    if args.crl_hours == 0 || args.ocsp_minutes == 0 {
        bail!("--crl-hours and --ocsp-minutes must be at least 1");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener.local_addr()?;
        let setup = Setup {
            dir: args.ca.clone(),
            passphrase: args.passphrase.clone(),
            database_url: args.database_url.clone(),
            crl_validity: Duration::from_secs(args.crl_hours * 3600),
            ocsp_validity: Duration::from_secs(args.ocsp_minutes * 60),
            on_crl: None,
        };
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        let svc = start(setup, listener, shutdown).await?;
        println!("CA system for {} on http://{addr}", svc.ca.issuing.subject());
        tokio::signal::ctrl_c().await?;
        Ok(())
    })
}

/// On the first start, the super administrator: its token is written to
/// `DIR/super-admin.token` (mode 0600), never printed or logged.
async fn bootstrap(svc: &Service) -> Result<()> {
    let _w = svc.write.lock().await;
    let mut tx = svc.store.begin().await?;
    if store::count_admins(&mut tx).await? > 0 {
        return Ok(());
    }
    let role = roles::Role::SuperAdministrator.as_str();
    let token = store::insert_admin(&mut tx, "super", role, "bootstrap").await?;
    store::append_audit(&mut tx, api::audit_row("bootstrap", "-", "appoint", "super", "ok", role, "admin"))
        .await?;
    let path = svc.dir.join("super-admin.token");
    write_new(&path, format!("{token}\n").as_bytes(), 0o600)
        .with_context(|| format!("{} (remove it to bootstrap a new database)", path.display()))?;
    tx.commit().await?;
    println!("the super administrator's token is in {}", path.display());
    Ok(())
}
