//! `claimlink ca ocsp-responder`: an OCSP responder (RFC 6960, over HTTP POST) for one CA of a
//! CA directory, answering from that CA's revocation index (`revoked-*.txt`, re-read when it
//! changes) through a delegated responder certificate the CA issues for it.
//!
//! Responses to requests without a nonce are signed once per certificate and served from a
//! cache until half their validity has passed (then signed again, well before nextUpdate);
//! requests with a nonce are signed fresh, since the nonce must come back. The cache holds at
//! most [`MAX_CACHED`] responses and starts over when full.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use claimlink_pki::crl::{Revocation, Serial};
use claimlink_pki::ocsp::{self, ErrorStatus, Status};
use claimlink_pki::profile::YEAR;
use claimlink_pki::{Certificate, Issuer, PrivateKey, Profile, Signer, Subject, issue, name, pem};

use crate::PassphraseArg;
use crate::ca::rng;
use crate::files::{read_bounded, write_atomic};
use crate::revoke::{By, index_path, read_index, signer_cert, signer_key};

/// Responses kept signed at once.
pub(crate) const MAX_CACHED: usize = 100_000;

/// `ca ocsp-responder` arguments.
#[derive(clap::Args)]
pub(crate) struct OcspArgs {
    /// CA directory.
    #[arg(long)]
    ca: PathBuf,
    #[command(flatten)]
    passphrase: PassphraseArg,
    /// Which CA it answers for: `issuing` (its certificates) or `root` (the issuing CA).
    #[arg(long, value_enum, default_value = "issuing")]
    by: By,
    /// Address to listen on (HTTP).
    #[arg(long, default_value = "127.0.0.1:8889")]
    listen: SocketAddr,
    /// Minutes from thisUpdate to nextUpdate in every response.
    #[arg(long, default_value_t = 60)]
    validity_minutes: u64,
}

/// A signed response and when it was signed, by the request bytes that asked for it.
type Cached = (Vec<u8>, Instant);

struct Revoked {
    modified: Option<SystemTime>,
    /// Sorted by serial.
    entries: Vec<Revocation>,
}

pub(crate) struct OcspState {
    ca: Certificate,
    responder: Certificate,
    key: PrivateKey,
    index: PathBuf,
    dir: PathBuf,
    by: By,
    revoked: RwLock<Revoked>,
    cache: Mutex<HashMap<Vec<u8>, Cached>>,
    validity: Duration,
}

/// The delegated responder certificate and key of `by`, issued on first use (and again when
/// it has less than a week left), its key encrypted like the CA keys.
fn responder_identity(
    dir: &std::path::Path,
    by: By,
    passphrase: &PassphraseArg,
    ca: &Certificate,
) -> Result<(Certificate, PrivateKey)> {
    let cert_path = dir.join(format!("ocsp-{}.pem", by.name()));
    let key_path = dir.join(format!("ocsp-{}.key", by.name()));
    let pass = crate::secret::passphrase(passphrase.passphrase_file.as_deref())?;
    if cert_path.exists() && key_path.exists() {
        let cert = Certificate::from_pem(&read_bounded(&cert_path, 1 << 20)?)?;
        let key = pem::private_key_from_pem(&read_bounded(&key_path, 1 << 20)?, Some(pass.as_bytes()))?;
        let fresh = cert.not_after() > SystemTime::now() + Duration::from_secs(7 * 86_400);
        if fresh
            && cert.public_key().ok().as_ref() == Some(&key.public_key())
            && cert.issuer() == ca.subject()
        {
            return Ok((cert, key));
        }
    }
    let ca_key = signer_key(dir, by, passphrase)?;
    let key = PrivateKey::generate(ca_key.algorithm(), &mut rng())?;
    let cn = ca.common_name().unwrap_or_default();
    let subject = Subject::new(
        name::parse(&format!("CN={cn} OCSP Responder")).context("responder name")?,
        key.public_key(),
        SystemTime::now(),
        YEAR / 4,
    );
    let cert = issue(
        &Issuer { certificate: Some(ca), signer: &ca_key },
        &Profile::OcspResponder,
        &subject,
        &mut rng(),
    )?;
    write_atomic(&key_path, pem::encrypt_private_key(&key, pass.as_bytes(), &mut rng())?.as_bytes(), 0o600)?;
    write_atomic(&cert_path, cert.to_pem().as_bytes(), 0o644)?;
    Ok((cert, key))
}

impl OcspState {
    /// The responder for the `by` CA of `dir`, its revocation index read.
    pub(crate) fn open(
        dir: &std::path::Path,
        by: By,
        passphrase: &PassphraseArg,
        validity: Duration,
    ) -> Result<Arc<Self>> {
        let ca = signer_cert(dir, by)?;
        let (responder, key) = responder_identity(dir, by, passphrase, &ca)?;
        let state = Arc::new(OcspState {
            ca,
            responder,
            key,
            index: index_path(dir, by),
            dir: dir.to_owned(),
            by,
            revoked: RwLock::new(Revoked { modified: None, entries: Vec::new() }),
            cache: Mutex::new(HashMap::new()),
            validity,
        });
        state.refresh()?;
        Ok(state)
    }

    /// Re-reads the revocation index every second, while the runtime runs.
    pub(crate) fn spawn_watcher(self: &Arc<Self>) {
        let watcher = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let w = watcher.clone();
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || w.refresh()).await {
                    tracing::error!(error = %e, "the revocation index could not be read; answers use the last one read");
                }
            }
        });
    }

    /// Re-reads the revocation index if it changed; a change empties the cache.
    pub(crate) fn refresh(&self) -> Result<()> {
        let modified = std::fs::metadata(&self.index).and_then(|m| m.modified()).ok();
        if modified == claimlink_service::read(&self.revoked).modified && modified.is_some() {
            return Ok(());
        }
        let mut entries = read_index(&self.dir, self.by)?;
        entries.sort_by_key(|r| r.serial);
        *claimlink_service::write(&self.revoked) = Revoked { modified, entries };
        claimlink_service::lock(&self.cache).clear();
        Ok(())
    }

    pub(crate) fn status(&self, serial: &Serial) -> Status {
        let revoked = claimlink_service::read(&self.revoked);
        match revoked.entries.binary_search_by_key(serial, |r| r.serial) {
            Ok(i) => Status::Revoked { at: revoked.entries[i].revoked_at, reason: revoked.entries[i].reason },
            Err(_) => Status::Good,
        }
    }

    /// The DER OCSP response to the DER request `body` (an error response for junk).
    pub(crate) fn answer(&self, body: &[u8]) -> Vec<u8> {
        let Ok(request) = ocsp::parse_request(body) else {
            return ocsp::error_response(ErrorStatus::MalformedRequest);
        };
        if !request.ids.iter().all(|id| id.is_issued_by(&self.ca)) {
            return ocsp::error_response(ErrorStatus::Unauthorized);
        }
        // One certificate without a nonce: the cache (keyed by the request's CertID bytes).
        let cacheable = request.nonce.is_none() && request.ids.len() == 1;
        let key = if cacheable { Some(body.to_vec()) } else { None };
        if let Some(k) = &key
            && let Some((der, signed)) = claimlink_service::lock(&self.cache).get(k)
            && signed.elapsed() < self.validity / 2
        {
            return der.clone();
        }
        let answers: Vec<_> = request.ids.iter().map(|id| (id.clone(), self.status(&id.serial))).collect();
        let now = SystemTime::now();
        let signed = ocsp::respond(
            &ocsp::Responder { certificate: &self.responder, signer: &self.key },
            &answers,
            now,
            now - Duration::from_secs(60),
            now + self.validity,
            request.nonce.as_deref(),
        );
        match signed {
            Ok(der) => {
                if let Some(k) = key {
                    let mut cache = claimlink_service::lock(&self.cache);
                    if cache.len() >= MAX_CACHED {
                        cache.clear();
                    }
                    cache.insert(k, (der.clone(), Instant::now()));
                }
                der
            }
            Err(e) => {
                tracing::error!(error = %e, "signing an OCSP response failed");
                ocsp::error_response(ErrorStatus::InternalError)
            }
        }
    }
}

/// `POST` of an OCSP request: the response, signed off the runtime's threads.
/// A POST without a body is no OCSP request at all: 400, with a `malformedRequest` response.
pub(crate) async fn post(State(state): State<Arc<OcspState>>, body: Bytes) -> Response {
    if body.is_empty() {
        let der = ocsp::error_response(ErrorStatus::MalformedRequest);
        return (StatusCode::BAD_REQUEST, [(header::CONTENT_TYPE, "application/ocsp-response")], der)
            .into_response();
    }
    let answer = tokio::task::spawn_blocking(move || state.answer(&body))
        .await
        .unwrap_or_else(|_| ocsp::error_response(ErrorStatus::InternalError));
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/ocsp-response")], answer).into_response()
}

/// `claimlink ca ocsp-responder`.
pub(crate) fn run(args: &OcspArgs) -> Result<()> {
    if args.validity_minutes == 0 {
        bail!("--validity-minutes must be at least 1");
    }
    let state = OcspState::open(
        &args.ca,
        args.by,
        &args.passphrase,
        Duration::from_secs(args.validity_minutes * 60),
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        println!("OCSP responder for {} on http://{}", state.ca.subject(), listener.local_addr()?);
        state.spawn_watcher();
        let app = axum::Router::new()
            .route("/", axum::routing::post(post))
            .layer(axum::extract::DefaultBodyLimit::max(ocsp::MAX_REQUEST_LEN))
            .with_state(state);
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        claimlink_service::serve_http(
            "ocsp",
            listener,
            None,
            claimlink_service::HttpLimits::default(),
            shutdown,
            move |_| app.clone(),
        )
        .await?;
        Ok(())
    })
}
