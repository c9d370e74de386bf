//! The staging role: where devices wait, fresh from the factory, until someone claims them.
//!
//! Who may connect (checked at the TLS handshake): a device whose birth certificate chains to
//! one of the trusted manufacturer CAs, or an OEM's claim-thing presenting exactly the
//! certificate the OEM uploaded (pinned by its SHA-256; a look-alike with another key fails the
//! handshake). On CONNECT a device must use its ThingName (the certificate's CN) as client id
//! and, when a factory manifest named its certificate, that very certificate; a claim-thing must
//! use its OEM's UUID. Anything else gets CONNACK "not authorized".
//!
//! A device is recorded on its first connection, subscribed by staging to
//! `{ThingName}/expresslink_config`, and confined to topics under `{ThingName}/`. A claim-thing
//! may publish only on `{ThingName}/expresslink_config` (a claim, which staging takes instead of
//! routing) and subscribe only under `{uuid}/` (where results arrive:
//! `{uuid}/claims/{ThingName}/accepted|rejected`). An accepted claim is delivered to the device
//! as `{"Endpoint": ...}` (QoS 1) at once when it is online, else on its next connection, until
//! the device acknowledges it. A device that comes back to staging after acknowledging its
//! owner's claim has been factory-reset: its ownership ends (audited) and it can be claimed
//! again.

use crate::store::Records as _;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use crate::claims::{self, ClaimOutcome, ClaimRequest, RateLimiter, Rejection, ReleaseError, Releaser, Via};
use claimlink_broker::{Broker, ConnectRequest, Hooks, Inbound, Limits, Origin, Verdict, WeakBroker};
use claimlink_mqtt::packet::Publish;
use claimlink_mqtt::{QoS, ReasonCode, TopicFilter, TopicName};
use claimlink_pki::Certificate;
use claimlink_pki::crl::{Crl, Link, RevocationIndex};
use claimlink_registry::{RegistryError, Store};
use tokio::net::TcpListener;
use tokio::sync::watch;

use claimlink_service::{ServerError, ServerIdentity, client_chain};

/// The configuration topic suffix.
pub const CONFIG_TOPIC: &str = "expresslink_config";

/// What staging holds for claims before the registry sees them: rates, queues, sizes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClaimLimits {
    /// Claims per second per OEM (sustained).
    pub per_oem_rate: f64,
    /// Burst per OEM.
    pub per_oem_burst: f64,
    /// Claims per second per claimer and device (sustained).
    pub per_device_rate: f64,
    /// Burst per claimer and device.
    pub per_device_burst: f64,
    /// Claims waiting for the registry at once; more are refused `RateLimited` at once.
    pub in_flight: usize,
    /// Largest claim JSON accepted over MQTT, in bytes.
    pub max_payload: usize,
    /// Claimers whose rate-limited claims are tallied in memory at once.
    pub max_tallies: usize,
}

impl Default for ClaimLimits {
    fn default() -> Self {
        // An OEM's portal claiming a whole pallet at once is fine; one device hammered is not.
        Self {
            per_oem_rate: 2000.0,
            per_oem_burst: 4000.0,
            per_device_rate: 0.2,
            per_device_burst: 5.0,
            in_flight: 256,
            max_payload: 4096,
            max_tallies: 10_000,
        }
    }
}

/// What staging is set up with.
#[derive(Clone)]
pub struct StagingConfig {
    /// Birth certificates must chain to one of these.
    pub manufacturer_cas: Vec<Certificate>,
    /// Claim rate limits, queues and sizes.
    pub claim_limits: ClaimLimits,
    /// The lockout schedule and windows of the claim decision.
    pub claim_policy: crate::claims::ClaimPolicy,
    /// MQTT limits.
    pub limits: Limits,
    /// The staging API's HTTP limits.
    pub http: claimlink_service::HttpLimits,
    /// Signs claim tickets and release notices (claim-bound admission); `None`: deliveries
    /// carry no ticket, as AWS's do.
    pub ticket_signer: Option<Arc<dyn claimlink_pki::Signer>>,
}

impl std::fmt::Debug for StagingConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagingConfig")
            .field("manufacturer_cas", &self.manufacturer_cas.len())
            .field("claim_limits", &self.claim_limits)
            .field("claim_policy", &self.claim_policy)
            .field("http", &self.http)
            .field("limits", &self.limits)
            .field("ticket_signer", &self.ticket_signer.as_ref().map(|s| s.public_key()))
            .finish()
    }
}

/// Told of every release (by the owner or by a factory reset), with its signed notice, so
/// that the account the device was claimed for stops admitting it under the ended claim.
pub type ReleaseSink = Arc<dyn Fn(&ReleaseNotice) + Send + Sync>;

/// A release, as staging signed it.
#[derive(Debug, Clone)]
pub struct ReleaseNotice {
    /// What ended.
    pub ticket: claimlink_claim::ticket::ClaimTicket,
    /// The signed notice (`clr1...`), for an account run by someone else.
    pub notice: String,
}

pub(crate) struct StagingShared {
    pub(crate) store: Store,
    manufacturer_cas: Vec<Certificate>,
    /// Claim-thing certificate id -> OEM id.
    claim_certs: RwLock<HashMap<String, (String, Certificate)>>,
    broker: OnceLock<WeakBroker<StagingHooks>>,
    limiters: Mutex<(RateLimiter, RateLimiter)>,
    /// Rate-limited claims not yet written, per claimer: (count, last write in Unix ms).
    refused: Mutex<HashMap<String, (i64, i64)>>,
    claims_in_flight: Arc<tokio::sync::Semaphore>,
    pub(crate) claim_limits: ClaimLimits,
    claim_policy: crate::claims::ClaimPolicy,
    pub(crate) config_limits: Limits,
    pub(crate) http: claimlink_service::HttpLimits,
    /// Staging's TLS identity (one or two certificates; checked at start).
    identity: ServerIdentity,
    ticket_signer: Option<Arc<dyn claimlink_pki::Signer>>,
    release_sink: OnceLock<ReleaseSink>,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// What the manufacturer CAs' CRLs revoke, checked at every device handshake.
    revocations: RwLock<RevocationIndex>,
    /// Live device sessions: client id -> (connection number, the links of its chain), so that
    /// a CRL drops the sessions it revokes. One entry per live session.
    live: Mutex<HashMap<String, (u64, Vec<Link>)>>,
    connections: std::sync::atomic::AtomicU64,
    /// One CRL upload at a time (check, store, apply).
    crl_uploads: tokio::sync::Mutex<()>,
    /// Told of every CRL applied (the upload as given), for the accounts of this process.
    crl_sink: OnceLock<CrlSink>,
}

/// Told of every CRL staging applied, with the upload's bytes.
pub type CrlSink = Arc<dyn Fn(Vec<u8>) + Send + Sync>;

pub use claimlink_service::revocation::MAX_CRL_UPLOAD;

pub use claimlink_service::revocation::{CrlApplied, CrlUploadError};

/// The staging service.
#[derive(Clone)]
pub struct StagingServer {
    pub(crate) shared: Arc<StagingShared>,
    broker: Broker<StagingHooks>,
}

impl std::fmt::Debug for StagingServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagingServer").finish_non_exhaustive()
    }
}

/// Who is connected to staging.
#[derive(Debug)]
pub enum StagingPeer {
    /// A device.
    Device {
        /// Its ThingName.
        thing: String,
        /// `{ThingName}/`.
        prefix: String,
        /// `{ThingName}/expresslink_config`.
        config_topic: String,
        /// Its birth certificate's id.
        certificate_id: String,
        /// The claim to deliver now (endpoint, claim id), if any.
        pending: Option<(String, i64)>,
        /// The links of its validated chain (issuer key, serial), for revocation.
        links: Vec<Link>,
        /// This connection's number (a later one may take over the client id).
        seq: u64,
    },
    /// An OEM's claim-thing.
    ClaimThing {
        /// The OEM's UUID.
        oem: String,
        /// `{uuid}/`.
        prefix: String,
        /// The links of its chain to a manufacturer CA, if it has one (for revocation).
        links: Vec<Link>,
        /// This connection's number.
        seq: u64,
    },
}

/// The broker hooks of staging.
pub struct StagingHooks {
    shared: Arc<StagingShared>,
}

/// The message that sends a device to `endpoint`: `{"Endpoint": ...}` on its config topic,
/// QoS 1, with `"ClaimTicket"` when staging signs tickets.
pub(crate) fn config_message(thing: &str, endpoint: &str, ticket: Option<&str>) -> Publish {
    Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: format!("{thing}/{CONFIG_TOPIC}"),
        packet_id: None,
        properties: Default::default(),
        payload: claimlink_claim::message::delivery(endpoint, ticket).into(),
    }
}

impl StagingServer {
    /// Staging over `store`.
    pub async fn new(
        store: Store,
        identity: &ServerIdentity,
        config: StagingConfig,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, ServerError> {
        crate::store::migrate(&store).await?;
        identity.certified_keys()?;
        if config.manufacturer_cas.is_empty() {
            return Err(ServerError::Tls("staging needs at least one trusted manufacturer CA".into()));
        }
        let l = config.claim_limits;
        let shared = Arc::new(StagingShared {
            store,
            manufacturer_cas: config.manufacturer_cas,
            claim_certs: RwLock::new(HashMap::new()),
            broker: OnceLock::new(),
            limiters: Mutex::new((
                RateLimiter::new(l.per_oem_rate, l.per_oem_burst),
                RateLimiter::new(l.per_device_rate, l.per_device_burst),
            )),
            refused: Mutex::new(HashMap::new()),
            claims_in_flight: Arc::new(tokio::sync::Semaphore::new(l.in_flight)),
            claim_limits: l,
            claim_policy: config.claim_policy,
            config_limits: config.limits.clone(),
            http: config.http,
            identity: identity.clone(),
            ticket_signer: config.ticket_signer,
            release_sink: OnceLock::new(),
            shutdown,
            revocations: RwLock::new(RevocationIndex::default()),
            live: Mutex::new(HashMap::new()),
            connections: std::sync::atomic::AtomicU64::new(0),
            crl_uploads: tokio::sync::Mutex::new(()),
            crl_sink: OnceLock::new(),
        });
        let broker = Broker::new(StagingHooks { shared: shared.clone() }, config.limits);
        let _ = shared.broker.set(broker.downgrade());
        let server = Self { shared, broker };
        server.reload().await?;
        server.load_crls().await?;
        Ok(server)
    }

    /// Applies the CRLs stored before a restart. One that no longer applies stops the start:
    /// serving without what it revokes would admit revoked devices.
    async fn load_crls(&self) -> Result<(), ServerError> {
        let rows = self.shared.store.read().await?.crls().await?;
        let mut index = RevocationIndex::default();
        for (issuer_pem, crl_pem) in rows {
            let bad = |e: String| ServerError::Tls(format!("a stored CRL no longer applies: {e}"));
            let issuer = Certificate::from_pem(issuer_pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
            let (der, _) = claimlink_service::revocation::split(crl_pem.as_bytes()).map_err(bad)?;
            let crl = Crl::from_der(der, claimlink_pki::crl::DEFAULT_MAX_CRL_LEN)
                .map_err(|e| bad(e.to_string()))?;
            index.apply(&issuer, &crl).map_err(|e| bad(e.to_string()))?;
        }
        *claimlink_service::write(&self.shared.revocations) = index;
        Ok(())
    }

    /// Applies a manufacturer CA's CRL: DER signed by a trusted manufacturer CA, or PEM with
    /// the CRL and the issuing CA's chain up to a trusted one. It is checked (signature, newer
    /// than the last, delta on its base), stored, applied, and the live sessions of every
    /// device it revokes end at once. Errors are for the caller and change nothing.
    pub async fn apply_crl(&self, body: &[u8], who: &str) -> Result<CrlApplied, CrlUploadError> {
        use CrlUploadError::Invalid;
        let (crl, issuer) =
            claimlink_service::revocation::read_crl_upload(body, &self.shared.manufacturer_cas)
                .map_err(Invalid)?;
        let _one_at_a_time = self.shared.crl_uploads.lock().await;
        let key = claimlink_service::read(&self.shared.revocations)
            .check(&issuer, &crl)
            .map_err(|e| Invalid(e.to_string()))?;
        fn fail<E: std::fmt::Debug>(e: E) -> CrlUploadError {
            tracing::error!(error = ?e, "staging could not store a CRL");
            CrlUploadError::Internal
        }
        let number = crl.number().and_then(|n| i64::try_from(n).ok()).unwrap_or(0);
        let mut tx =
            claimlink_service::api::Audited::begin(&self.shared.store, None, &format!("staging-admin:{who}"))
                .await
                .map_err(fail)?;
        tx.save_crl(
            &hex::encode(key),
            number,
            crl.delta_base().is_some(),
            &issuer.to_pem(),
            &claimlink_pki::pem::encode("X509 CRL", crl.der()),
        )
        .await
        .map_err(fail)?;
        tx.commit("ApplyCrl", &issuer.subject().to_string()).await.map_err(fail)?;
        let applied = claimlink_service::write(&self.shared.revocations)
            .apply(&issuer, &crl)
            .map_err(|e| Invalid(e.to_string()))?;
        let dropped = self.drop_revoked();
        if let Some(sink) = self.shared.crl_sink.get() {
            sink(body.to_vec());
        }
        tracing::info!(issuer = %issuer.subject(), number = ?applied.number, delta = applied.delta, revoked = applied.revoked, dropped, "CRL applied");
        Ok(CrlApplied {
            issuer: issuer.subject().to_string(),
            number: applied.number,
            delta: applied.delta,
            revoked: applied.revoked,
            dropped,
        })
    }

    /// Ends the live sessions whose chains the revocation index now refuses. Returns how many.
    fn drop_revoked(&self) -> usize {
        let doomed: Vec<String> = {
            let index = claimlink_service::read(&self.shared.revocations);
            claimlink_service::lock(&self.shared.live)
                .iter()
                .filter(|(_, (_, links))| links.iter().any(|l| index.link_revoked(l)))
                .map(|(id, _)| id.clone())
                .collect()
        };
        doomed.iter().filter(|id| self.broker.disconnect(id, ReasonCode::NotAuthorized)).count()
    }

    /// Per CA with a CRL applied: (its key identifier, hex; CRL number; nextUpdate; revoked).
    pub fn crl_status(&self) -> Vec<(String, Option<u64>, Option<std::time::SystemTime>, usize)> {
        let index = claimlink_service::read(&self.shared.revocations);
        index.issuers().map(|(k, n, next, revoked)| (hex::encode(k), n, next, revoked)).collect()
    }

    /// The registry.
    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// The staging broker.
    pub fn broker(&self) -> &Broker<StagingHooks> {
        &self.broker
    }

    /// Re-reads the claim-thing certificates.
    pub async fn reload(&self) -> Result<(), ServerError> {
        let certs = self.shared.store.read().await?.claim_certificates().await?;
        let mut map = HashMap::new();
        for (oem, pem) in certs {
            if let Ok(c) = Certificate::from_pem(pem.as_bytes()) {
                map.insert(c.id().to_string(), (oem, c));
            }
        }
        *claimlink_service::write(&self.shared.claim_certs) = map;
        Ok(())
    }

    /// Decides a claim (shape and rate limits first, before any registry work, then
    /// [`claims::claim_with`]) and, when accepted and not yet acknowledged, delivers it to the
    /// device if it is online.
    pub async fn claim(&self, request: &ClaimRequest<'_>) -> Result<ClaimOutcome, RegistryError> {
        if claimlink_registry::ThingName::new(request.thing_name).is_err() || request.oem_id.len() > 64 {
            // Refused before anything is stored under its (peer-chosen) names.
            return Ok(ClaimOutcome::Rejected { reason: Rejection::InvalidRequest, retry_at: None });
        }
        let now = claimlink_registry::now();
        // At most `in_flight` claims wait for the registry; more are refused at once
        // (a flood from an MQTT claim-thing cannot pile up tasks behind a slow database).
        let Ok(_in_flight) = self.shared.claims_in_flight.clone().try_acquire_owned() else {
            self.tally_rate_limited(request, now);
            return Ok(ClaimOutcome::Rejected { reason: Rejection::RateLimited, retry_at: None });
        };
        let allowed = {
            let mut l = claimlink_service::lock(&self.shared.limiters);
            let per_device = format!("{}|{}", request.claimer_name(), request.thing_name);
            l.0.allow(request.oem_id, now) && l.1.allow(&per_device, now)
        };
        if !allowed {
            self.tally_rate_limited(request, now);
            return Ok(ClaimOutcome::Rejected { reason: Rejection::RateLimited, retry_at: None });
        }
        let outcome =
            claims::claim_with(&self.shared.store, &self.shared.claim_policy, &claims::SystemClock, request)
                .await?;
        if let ClaimOutcome::Accepted { endpoint, delivered: false, claim_id, certificate_id } = &outcome {
            self.deliver(request.thing_name, endpoint, *claim_id, certificate_id.as_deref());
        }
        Ok(outcome)
    }

    /// Where applied CRLs are reported (`up` hands them to its accounts).
    pub fn on_crl(&self, sink: CrlSink) {
        let _ = self.shared.crl_sink.set(sink);
    }

    /// Where releases are reported (`up` hands them to the account in the same process).
    pub fn on_release(&self, sink: ReleaseSink) {
        let _ = self.shared.release_sink.set(sink);
    }

    /// The public key that verifies this staging's claim tickets and release notices.
    pub fn ticket_public_key(&self) -> Option<claimlink_pki::PublicKey> {
        self.shared.ticket_signer.as_ref().map(|s| s.public_key())
    }

    /// What a ticket for this claim says.
    fn ticket_for(
        thing: &str,
        endpoint: &str,
        claim_id: i64,
        cert: &str,
        validity_ms: i64,
    ) -> claimlink_claim::ticket::ClaimTicket {
        let now = claimlink_registry::now();
        claimlink_claim::ticket::ClaimTicket {
            thing: thing.to_owned(),
            cert: cert.to_owned(),
            aud: claimlink_claim::ticket::audience(endpoint),
            claim: claim_id,
            iat: now,
            exp: now.saturating_add(validity_ms),
        }
    }

    /// A fresh claim ticket for a delivery, when staging signs tickets and knows the device's
    /// certificate.
    fn ticket(&self, thing: &str, endpoint: &str, claim_id: i64, cert: Option<&str>) -> Option<String> {
        let signer = self.shared.ticket_signer.as_ref()?;
        let Some(cert) = cert else {
            tracing::warn!(thing, "no certificate known for this device: its claim carries no ticket");
            return None;
        };
        let t =
            Self::ticket_for(thing, endpoint, claim_id, cert, claimlink_claim::ticket::DEFAULT_VALIDITY_MS);
        claimlink_claim::ticket::issue(&**signer, &t)
            .inspect_err(|e| tracing::error!(error = %e, "signing a claim ticket failed"))
            .ok()
    }

    /// Signs a release's notice (once) and reports it; returns the notice.
    fn released(&self, thing: &str, released: &claims::Released) -> Option<String> {
        let (ticket, notice) = self.notice(thing, released)?;
        let release = ReleaseNotice { ticket, notice };
        if let Some(sink) = self.shared.release_sink.get() {
            sink(&release);
        }
        Some(release.notice)
    }

    /// What a release ended and its signed notice, when staging signs tickets and knows the
    /// claim and the certificate.
    fn notice(
        &self,
        thing: &str,
        released: &claims::Released,
    ) -> Option<(claimlink_claim::ticket::ClaimTicket, String)> {
        let signer = self.shared.ticket_signer.as_ref()?;
        let (claim, cert) = (released.claim_id?, released.certificate_id.as_deref()?);
        let ticket = Self::ticket_for(thing, &released.endpoint, claim, cert, i64::MAX / 2);
        let notice = claimlink_claim::ticket::issue_release(&**signer, &ticket)
            .inspect_err(|e| tracing::error!(error = %e, "signing a release notice failed"))
            .ok()?;
        Some((ticket, notice))
    }

    /// Rate-limited claims are counted in memory and written in aggregate at most once a second
    /// per claimer, so that a flood costs no write per attempt.
    fn tally_rate_limited(&self, request: &ClaimRequest<'_>, now: i64) {
        let claimer = request.claimer_name();
        let due = Some(claimlink_service::lock(&self.shared.refused)).and_then(|mut tally| {
            let max = self.shared.claim_limits.max_tallies;
            if tally.len() >= max && !tally.contains_key(&claimer) {
                tally.retain(|_, (n, _)| *n > 0);
                if tally.len() >= max {
                    return None; // counted nowhere rather than grow without bound
                }
            }
            let (pending, last) = tally.entry(claimer).or_insert((0, 0));
            *pending += 1;
            (now - *last >= 1000).then(|| {
                *last = now;
                std::mem::take(pending)
            })
        });
        let Some(n) = due else { return };
        let shared = self.shared.clone();
        let (oem, claimer, via) = (request.oem_id.to_owned(), request.claimer, request.via);
        tokio::spawn(async move {
            let request =
                ClaimRequest { oem_id: &oem, claimer, thing_name: "", endpoint: "", claim_code: None, via };
            let recorded = claims::record_rejection(
                &shared.store,
                &shared.claim_policy,
                &request,
                Rejection::RateLimited,
                n,
            );
            if let Err(e) = recorded.await {
                tracing::error!(error = %e, "recording rate-limited claims failed");
            }
        });
    }

    fn deliver(&self, thing: &str, endpoint: &str, claim_id: i64, cert: Option<&str>) {
        let ticket = self.ticket(thing, endpoint, claim_id, cert);
        self.broker.publish(config_message(thing, endpoint, ticket.as_deref()));
    }

    /// Ends an OEM's ownership of a device, reports the release, and returns it with its
    /// signed notice (for an account run elsewhere), when staging signs them.
    pub async fn release(
        &self,
        oem_id: &str,
        thing: &str,
    ) -> Result<(claims::Released, Option<String>), ReleaseError> {
        let released = claims::release(&self.shared.store, thing, Releaser::Oem(oem_id)).await?;
        let notice = self.released(thing, &released);
        Ok((released, notice))
    }

    /// Serves MQTT over mutual TLS on `listener` until shutdown.
    pub async fn serve_mqtt(&self, listener: TcpListener) -> Result<(), ServerError> {
        let config: Arc<dyn claimlink_broker::TlsSelector> = Arc::new(self.tls(true)?);
        let limits = self.shared.config_limits.listener();
        let me = self.clone();
        let shutdown = self.shared.shutdown.clone();
        claimlink_broker::serve::serve(
            "staging-mqtt",
            listener,
            limits,
            Some(config),
            shutdown,
            move |conn| {
                let me = me.clone();
                async move { me.broker.serve_accepted(conn, me.shared.shutdown.clone()).await }
            },
        )
        .await;
        Ok(())
    }

    /// The listener TLS: client certificates required (MQTT) or optional (the claim API, where
    /// administrators use tokens instead).
    pub(crate) fn tls(
        &self,
        mandatory: bool,
    ) -> Result<claimlink_service::tls::Listener<StagingAdmission>, ServerError> {
        let admission = StagingAdmission { shared: self.shared.clone(), mandatory };
        claimlink_service::tls::Listener::new(admission, &self.shared.identity)
    }
}

impl StagingShared {
    fn broker(&self) -> Option<Broker<StagingHooks>> {
        self.broker.get().and_then(WeakBroker::upgrade)
    }

    fn pinned(&self, id: &str) -> Option<(String, Certificate)> {
        claimlink_service::read(&self.claim_certs).get(id).cloned()
    }
}

/// Who staging's listener admitted.
#[derive(Debug)]
pub(crate) enum StagingAdmitted {
    /// An OEM's pinned claim-thing certificate, and the links of its chain when it chains to a
    /// trusted manufacturer CA (whose CRLs can revoke it).
    ClaimThing {
        /// The OEM.
        oem: String,
        /// Its chain's links (empty when its issuer is a CA staging has no CRLs for).
        links: Vec<Link>,
    },
    /// A device's birth certificate, chaining to a trusted manufacturer CA, and the links of
    /// that chain.
    Device(Box<Certificate>, Vec<Link>),
}

/// Staging's admission: exactly a registered claim-thing certificate (within its validity), or
/// a birth certificate chaining to a trusted manufacturer CA.
pub(crate) struct StagingAdmission {
    shared: Arc<StagingShared>,
    mandatory: bool,
}

impl claimlink_service::tls::Admission for StagingAdmission {
    type Admitted = StagingAdmitted;

    fn mandatory(&self) -> bool {
        self.mandatory
    }

    fn admit(
        &self,
        _sni: Option<&str>,
        leaf: Certificate,
        intermediates: &[Certificate],
    ) -> Result<StagingAdmitted, String> {
        if let Some((oem, pinned)) = self.shared.pinned(&leaf.id().to_string()) {
            client_chain(&leaf, &[], vec![pinned])?;
            // Pinned, and revocable by its issuer when that is a CA whose CRLs staging applies
            // (a claim-thing from the module maker's CA system).
            let links = match client_chain(&leaf, intermediates, self.shared.manufacturer_cas.clone()) {
                Ok(path) => {
                    if claimlink_service::read(&self.shared.revocations).revoked_in(&path).is_some() {
                        return Err("claim-thing certificate revoked by its CA".to_owned());
                    }
                    RevocationIndex::links(&path)
                }
                Err(_) => Vec::new(),
            };
            Ok(StagingAdmitted::ClaimThing { oem, links })
        } else {
            let path = client_chain(&leaf, intermediates, self.shared.manufacturer_cas.clone())?;
            if let Some(i) = claimlink_service::read(&self.shared.revocations).revoked_in(&path) {
                return Err(if i == 0 {
                    "birth certificate revoked by its CA".to_owned()
                } else {
                    "a CA of the birth certificate's chain is revoked".to_owned()
                });
            }
            Ok(StagingAdmitted::Device(Box::new(leaf), RevocationIndex::links(&path)))
        }
    }
}

impl StagingHooks {
    fn server(&self) -> Option<StagingServer> {
        Some(StagingServer { shared: self.shared.clone(), broker: self.shared.broker()? })
    }

    async fn connect_device(
        &self,
        leaf: &Certificate,
        links: &[Link],
        client_id: &str,
    ) -> Result<StagingPeer, ReasonCode> {
        let thing = leaf.common_name().ok_or(ReasonCode::NotAuthorized)?;
        if client_id != thing || claimlink_registry::ThingName::new(&thing).is_err() {
            tracing::debug!(client_id, "staging: client id is not the certificate's ThingName");
            return Err(ReasonCode::NotAuthorized);
        }
        let certificate_id = leaf.id().to_string();
        let store = &self.shared.store;
        let fail = |e: RegistryError| {
            tracing::error!(error = %e, "staging registry failure");
            ReasonCode::ServerUnavailable
        };
        let mut tx = store.begin().await.map_err(fail)?;
        if let Some(known) = tx.staging_device(&thing).await.map_err(fail)?
            && known.certificate_id.as_deref().is_some_and(|c| c != certificate_id)
        {
            tracing::warn!(thing = %thing, "staging: a certificate other than the manifest's");
            return Err(ReasonCode::NotAuthorized);
        }
        let device = tx.device_seen(&thing, &certificate_id).await.map_err(fail)?;
        tx.commit().await.map_err(fail)?;
        let mut pending = None;
        if device.owner_oem.is_some() {
            if device.delivered_at.is_some() {
                // It acknowledged its owner's claim and is back: a factory reset.
                let released =
                    claims::release(store, &thing, Releaser::Device).await.map_err(|e| match e {
                        ReleaseError::Registry(e) => fail(e),
                        _ => ReasonCode::ServerUnavailable,
                    })?;
                if let Some(server) = self.server() {
                    server.released(&thing, &released);
                }
                tracing::info!(thing = %thing, "device returned to staging: ownership ended");
            } else {
                pending = device.endpoint.zip(device.claim_id);
            }
        }
        Ok(StagingPeer::Device {
            certificate_id,
            prefix: format!("{thing}/"),
            config_topic: format!("{thing}/{CONFIG_TOPIC}"),
            thing,
            pending,
            links: links.to_vec(),
            seq: self.shared.connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        })
    }

    async fn connect_claim_thing(
        &self,
        oem: String,
        links: Vec<Link>,
        client_id: &str,
    ) -> Result<StagingPeer, ReasonCode> {
        if client_id != oem {
            return Err(ReasonCode::NotAuthorized);
        }
        let active = match self.shared.store.read().await {
            Ok(mut tx) => tx.oem(&oem).await.is_ok_and(|o| o.status == crate::store::OemStatus::Active),
            Err(_) => return Err(ReasonCode::ServerUnavailable),
        };
        if !active {
            return Err(ReasonCode::NotAuthorized);
        }
        let seq = self.shared.connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(StagingPeer::ClaimThing { prefix: format!("{oem}/"), oem, links, seq })
    }

    fn take_claim(&self, oem: &str, thing: &str, payload: &[u8]) {
        let Some(server) = self.server() else { return };
        let oem = oem.to_owned();
        let thing = thing.to_owned();
        let parsed = claimlink_claim::message::parse_claim(payload, self.shared.claim_limits.max_payload);
        tokio::spawn(async move {
            let (endpoint, code) = parsed.map(|c| (c.endpoint, c.claim_code)).unwrap_or_default();
            let request = ClaimRequest {
                oem_id: &oem,
                claimer: claims::Claimer::ClaimThing,
                thing_name: &thing,
                endpoint: &endpoint,
                claim_code: code.as_deref().map(|c| c.as_str()),
                via: Via::Mqtt,
            };
            let outcome = if endpoint.is_empty() {
                let _ = claims::record_rejection(
                    &server.shared.store,
                    &server.shared.claim_policy,
                    &request,
                    Rejection::InvalidRequest,
                    1,
                )
                .await;
                Ok(ClaimOutcome::Rejected { reason: Rejection::InvalidRequest, retry_at: None })
            } else {
                server.claim(&request).await
            };
            let (suffix, body) = match outcome {
                Ok(outcome) => claim_result(&thing, &outcome),
                Err(e) => {
                    tracing::error!(error = %e, "claim failed");
                    (
                        "rejected",
                        serde_json::json!({"thingName": thing, "result": "REJECTED", "reason": "InternalFailure",
                            "message": "staging could not record the claim; try again"}),
                    )
                }
            };
            server.broker.publish(Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: format!("{oem}/claims/{thing}/{suffix}"),
                packet_id: None,
                properties: Default::default(),
                payload: body.to_string().into(),
            });
        });
    }

    fn acknowledged_claim(&self, thing: &str) {
        let store = self.shared.store.clone();
        let thing = thing.to_owned();
        tokio::spawn(async move {
            let result = async {
                let mut tx = store.begin().await?;
                if let Some(claim) = tx.staging_device(&thing).await?.and_then(|d| d.claim_id) {
                    tx.mark_delivered(&thing, claim).await?;
                }
                tx.commit().await
            };
            if let Err(e) = result.await {
                tracing::error!(error = %e, "recording a claim delivery failed");
            }
        });
    }
}

/// The one place that decides what may enter staging's broker, and so what may reach a
/// device's configuration topic. Only a claim-thing's own PUBLISH (not retained) on
/// `{ThingName}/expresslink_config` gets there, and it is taken as a claim, never routed; the
/// device then hears only what an accepted claim (or a release) publishes through
/// [`Broker::publish`]. Nobody else writes a configuration topic: no will (a claim-thing's
/// will there would reach the device with no claim code, no claim row and no audit; it is
/// refused at CONNECT), no retained message (a device could leave itself an endpoint that
/// outlives its factory reset), and no device publish. A device may otherwise publish under
/// its own `{ThingName}/`; a claim-thing nowhere else.
pub(crate) fn config_gate(ctx: &StagingPeer, message: &Inbound<'_>) -> Verdict {
    let topic = message.topic.as_str();
    let config = topic.split_once('/').is_some_and(|(thing, rest)| rest == CONFIG_TOPIC && !thing.is_empty());
    match ctx {
        StagingPeer::ClaimThing { .. } if config && !message.retain && message.origin == Origin::Packet => {
            Verdict::Take
        }
        StagingPeer::ClaimThing { .. } => Verdict::Refuse,
        StagingPeer::Device { .. } if config => Verdict::Refuse,
        StagingPeer::Device { prefix, .. } if topic.starts_with(prefix.as_str()) => Verdict::Route,
        StagingPeer::Device { .. } => Verdict::Refuse,
    }
}

/// The result topic suffix and body for a claim outcome.
pub fn claim_result(thing: &str, outcome: &ClaimOutcome) -> (&'static str, serde_json::Value) {
    match outcome {
        ClaimOutcome::Accepted { claim_id, endpoint, delivered, .. } => (
            "accepted",
            serde_json::json!({"thingName": thing, "result": "ACCEPTED", "claimId": claim_id,
                "endpoint": endpoint, "delivered": delivered}),
        ),
        ClaimOutcome::Rejected { reason, retry_at } => {
            let mut body = serde_json::json!({"thingName": thing, "result": "REJECTED",
                "reason": reason.code(), "message": reason.message()});
            if let Some(at) = retry_at {
                body["retryAt"] = (*at).into();
            }
            ("rejected", body)
        }
    }
}

impl Hooks for StagingHooks {
    type Context = StagingPeer;

    async fn on_connect(&self, request: &ConnectRequest<'_>) -> Result<StagingPeer, ReasonCode> {
        match request.peer.admitted::<StagingAdmitted>().ok_or(ReasonCode::NotAuthorized)? {
            StagingAdmitted::ClaimThing { oem, links } => {
                self.connect_claim_thing(oem.clone(), links.clone(), request.client_id).await
            }
            StagingAdmitted::Device(leaf, links) => self.connect_device(leaf, links, request.client_id).await,
        }
    }

    fn admit_publish(&self, ctx: &StagingPeer, message: &Inbound<'_>) -> Verdict {
        let verdict = config_gate(ctx, message);
        if let (Verdict::Take, StagingPeer::ClaimThing { oem, .. }) = (verdict, ctx)
            && let Some((thing, _)) = message.topic.as_str().split_once('/')
        {
            self.take_claim(oem, thing, message.payload);
        }
        verdict
    }

    fn authorize_subscribe(&self, ctx: &StagingPeer, filter: &TopicFilter) -> bool {
        let prefix = match ctx {
            StagingPeer::Device { prefix, .. } | StagingPeer::ClaimThing { prefix, .. } => prefix,
        };
        filter.shared().is_none() && filter.pattern().starts_with(prefix.as_str())
    }

    fn authorize_receive(&self, ctx: &StagingPeer, topic: &TopicName) -> bool {
        let prefix = match ctx {
            StagingPeer::Device { prefix, .. } | StagingPeer::ClaimThing { prefix, .. } => prefix,
        };
        topic.as_str().starts_with(prefix.as_str())
    }

    fn initial_subscriptions(&self, ctx: &StagingPeer) -> Vec<TopicFilter> {
        match ctx {
            StagingPeer::Device { config_topic, .. } => {
                TopicFilter::new(config_topic.as_str()).into_iter().collect()
            }
            StagingPeer::ClaimThing { .. } => Vec::new(),
        }
    }

    fn track_acknowledgement(&self, ctx: &StagingPeer, topic: &str) -> bool {
        matches!(ctx, StagingPeer::Device { config_topic, .. } if config_topic == topic)
    }

    fn acknowledged(&self, ctx: &StagingPeer, _topic: &str) {
        if let StagingPeer::Device { thing, .. } = ctx {
            self.acknowledged_claim(thing);
        }
    }

    fn connected(&self, ctx: &StagingPeer, client_id: &str) {
        if let StagingPeer::Device { links, seq, .. } | StagingPeer::ClaimThing { links, seq, .. } = ctx
            && !links.is_empty()
        {
            claimlink_service::lock(&self.shared.live).insert(client_id.to_owned(), (*seq, links.clone()));
            // A CRL applied between the handshake and now found no session to drop: look again.
            let index = claimlink_service::read(&self.shared.revocations);
            if links.iter().any(|l| index.link_revoked(l)) {
                drop(index);
                if let Some(server) = self.server() {
                    server.broker.disconnect(client_id, ReasonCode::NotAuthorized);
                }
                return;
            }
        }
        if let StagingPeer::Device { thing, pending: Some((endpoint, claim_id)), certificate_id, .. } = ctx
            && let Some(server) = self.server()
        {
            server.deliver(thing, endpoint, *claim_id, Some(certificate_id));
        }
    }

    fn disconnected(&self, ctx: &StagingPeer, client_id: &str) {
        let (StagingPeer::Device { seq, .. } | StagingPeer::ClaimThing { seq, .. }) = ctx;
        let mut live = claimlink_service::lock(&self.shared.live);
        if live.get(client_id).is_some_and(|(s, _)| s == seq) {
            live.remove(client_id);
        }
    }
}
