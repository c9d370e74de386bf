//! The OEM account endpoint: one TLS listener for many accounts, each chosen by the server name
//! its devices send (SNI), each with its own broker (sessions, topics and client ids never mix
//! between accounts), its registry, its policies; and the admin API.
//!
//! On the handshake a device's certificate must chain to one of the account's ACTIVE CA
//! certificates, or be a certificate registered in the account without a CA. On CONNECT:
//! a registered certificate must be ACTIVE; an unknown one from a CA with auto-registration is
//! provisioned on the spot by the CA's JITP template (so the first connection succeeds), or
//! registered PENDING_ACTIVATION with the JITR event when the CA has no template. Then the
//! policies attached to the certificate (and to its thing's groups) are bound to the
//! connection's variables, `iot:Connect` is checked, and every PUBLISH, SUBSCRIBE and delivery
//! after it is checked against them.

#![forbid(unsafe_code)]

pub mod api;
mod hooks;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use claimlink_broker::{Broker, Limits};
use claimlink_mqtt::ReasonCode;
use claimlink_pki::Certificate;
use claimlink_pki::crl::{Link, RevocationIndex};
use claimlink_registry::{
    Account, AccountId, CaId, CaMode, CaStatus, CertificateId, PolicyName, Store, ThingName,
};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use claimlink_service::revocation::{CrlApplied, CrlUploadError};
pub use claimlink_service::{ServerError, ServerIdentity, spawn_role};
pub use hooks::{AccountHooks, Connection};

use claimlink_service::{client_chain, lock, read, tls, write};

/// What a live session's rights were bound from, to find the sessions a change affects.
#[derive(Debug, Clone)]
pub struct LiveSession {
    /// Tells this connection from a later one with the same client id.
    pub serial: u64,
    /// The certificate it authenticated with.
    pub certificate_id: CertificateId,
    /// The CA that admitted it (`None`: registered without a CA).
    pub ca_id: Option<CaId>,
    /// The thing it speaks for.
    pub thing_name: Option<ThingName>,
    /// The policies bound to it.
    pub policies: Vec<PolicyName>,
    /// The links of its chain (issuer key, serial), for revocation.
    pub links: Vec<Link>,
}

/// Parsed policies kept at once (the cache starts over beyond this).
const MAX_CACHED_POLICIES: usize = 10_000;

/// What an account's devices may connect with, kept in memory for the handshake (which cannot
/// wait for a database).
#[derive(Debug)]
pub(crate) struct AccountEntry {
    pub(crate) account: Account,
    /// ACTIVE CA certificates.
    pub(crate) cas: Vec<ActiveCa>,
    /// Ids of certificates registered without a CA (and not revoked).
    pub(crate) registered: HashSet<CertificateId>,
    /// The registry's marker of this view when it was read.
    pub(crate) marker: [i64; 6],
    /// The claim issuers it trusts (staging's keys) for CAs that require a claim.
    pub(crate) claim_issuers: Vec<claimlink_pki::PublicKey>,
    /// What the CRLs applied for its CAs revoke, checked at every handshake.
    pub(crate) revocations: RevocationIndex,
}

/// An ACTIVE CA certificate of an account, as the handshake needs it.
#[derive(Debug)]
pub(crate) struct ActiveCa {
    pub(crate) id: CaId,
    pub(crate) certificate: Certificate,
    pub(crate) mode: CaMode,
    /// Admits its certificates only with a claim ticket.
    pub(crate) require_claim: bool,
}

impl AccountEntry {
    /// The registered CA that `leaf` (with `intermediates`) chains to, or `None` when the leaf
    /// is a certificate registered without a CA. `Err` when neither.
    pub(crate) fn admit(
        &self,
        leaf: &Certificate,
        intermediates: &[Certificate],
    ) -> Result<(Option<CaId>, Vec<Link>), String> {
        if self.registered.contains(&CertificateId::of(leaf)) {
            return Ok((None, Vec::new()));
        }
        let anchors = self.cas.iter().map(|ca| ca.certificate.clone()).collect();
        let path = client_chain(leaf, intermediates, anchors)?;
        let links = self.unrevoked(&path)?;
        let anchor = path.last().ok_or("empty path")?;
        Ok((self.cas.iter().find(|ca| ca.certificate == *anchor).map(|ca| ca.id.clone()), links))
    }

    /// The links of a validated path, unless a CRL applied for this account revokes one.
    pub(crate) fn unrevoked(&self, path: &[Certificate]) -> Result<Vec<Link>, String> {
        match self.revocations.revoked_in(path) {
            Some(0) => Err("certificate revoked by its CA".into()),
            Some(_) => Err("a CA of the certificate's chain is revoked".into()),
            None => Ok(RevocationIndex::links(path)),
        }
    }
}

/// A device the account endpoint's listener admitted: the account it belongs to (by SNI, or
/// without SNI by the DEFAULT-mode CA its chain ends at) and the CA (`None`: a certificate
/// registered without a CA). Made once per connection, read by the CONNECT hook.
#[derive(Debug)]
pub(crate) struct Admitted {
    pub(crate) account_id: AccountId,
    pub(crate) certificate: Certificate,
    pub(crate) ca_id: Option<CaId>,
    /// The links of its chain (issuer key, serial), for revocation.
    pub(crate) links: Vec<Link>,
}

/// The account endpoint's admission: certificates that chain to the account's ACTIVE CAs or
/// are registered in it without a CA; without SNI, certificates of DEFAULT-mode CAs.
struct AccountAdmission {
    server: AccountServer,
}

impl tls::Admission for AccountAdmission {
    type Admitted = Admitted;

    fn serves(&self, sni: Option<&str>) -> bool {
        sni.is_none_or(|host| self.server.entry_for_host(host).is_some())
    }

    fn admit(
        &self,
        sni: Option<&str>,
        leaf: Certificate,
        intermediates: &[Certificate],
    ) -> Result<Admitted, String> {
        let (account_id, (ca_id, links)) = match sni {
            Some(host) => {
                let entry = self.server.entry_for_host(host).ok_or("no account serves this server name")?;
                (entry.account.id.clone(), entry.admit(&leaf, intermediates)?)
            }
            None => {
                // One verification against every DEFAULT-mode CA; the anchor names the account.
                let (anchors, owners) = self.server.default_mode_cas();
                let path = client_chain(&leaf, intermediates, anchors)?;
                let anchor = CaId::of(path.last().ok_or("empty path")?);
                let (account, ca) = owners
                    .into_iter()
                    .find(|(_, ca)| *ca == anchor)
                    .ok_or("anchor is not a registered CA")?;
                let entry = self.server.entry(&account).ok_or("the account is not loaded")?;
                let links = entry.unrevoked(&path)?;
                (account, (Some(ca), links))
            }
        };
        if ca_id.is_some() {
            self.server.note_crl_sources(&account_id, &leaf);
        }
        Ok(Admitted { account_id, certificate: leaf, ca_id, links })
    }
}

/// A template's body and what it compiled to.
type CompiledTemplate = (String, Arc<claimlink_provision::Template>);

/// Everything the account endpoint shares between connections, the API and the accept loop.
pub(crate) struct Shared {
    pub(crate) store: Store,
    accounts: RwLock<HashMap<AccountId, Arc<AccountEntry>>>,
    hosts: RwLock<HashMap<String, AccountId>>,
    brokers: Mutex<HashMap<AccountId, Broker<AccountHooks>>>,
    /// The endpoint's TLS identity (one or two certificates; checked at start).
    pub(crate) identity: ServerIdentity,
    policies: Mutex<HashMap<(AccountId, PolicyName, i64), Arc<claimlink_policy::Policy>>>,
    /// Compiled provisioning templates by (account, name), with the body they were compiled from.
    templates: Mutex<HashMap<(AccountId, claimlink_registry::TemplateName), CompiledTemplate>>,
    /// Live connections per account: client id -> what its rights were bound from.
    live: Mutex<HashMap<AccountId, HashMap<String, LiveSession>>>,
    next_serial: AtomicU64,
    /// When an unknown server name last made us reload the accounts (Unix ms).
    last_reload: std::sync::atomic::AtomicI64,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
    /// One CRL upload at a time (check, store, apply).
    crl_uploads: tokio::sync::Mutex<()>,
    /// Where the CRLs of each account's CAs are published, learnt from the cRLDistributionPoints
    /// of the certificates it admits (at most `max_crl_sources` URLs per account).
    crl_sources: Mutex<HashMap<AccountId, Vec<String>>>,
    max_crl_sources: std::sync::atomic::AtomicUsize,
    crl_source_added: tokio::sync::Notify,
}

/// URLs of CRLs learnt per account, unless [`AccountServer::set_max_crl_sources`] says otherwise.
pub const DEFAULT_MAX_CRL_SOURCES: usize = 16;
/// The longest CRL URL kept.
const MAX_CRL_URL: usize = 1024;

/// The account endpoint.
#[derive(Clone)]
pub struct AccountServer {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for AccountServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountServer").finish_non_exhaustive()
    }
}

impl AccountServer {
    /// An account endpoint over `store`; `shutdown` turning true stops everything.
    pub async fn new(
        store: Store,
        identity: &ServerIdentity,
        limits: Limits,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, ServerError> {
        identity.certified_keys()?;
        let shared = Shared {
            store,
            accounts: RwLock::new(HashMap::new()),
            hosts: RwLock::new(HashMap::new()),
            brokers: Mutex::new(HashMap::new()),
            identity: identity.clone(),
            policies: Mutex::new(HashMap::new()),
            templates: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            next_serial: AtomicU64::new(1),
            last_reload: std::sync::atomic::AtomicI64::new(0),
            limits,
            shutdown,
            crl_uploads: tokio::sync::Mutex::new(()),
            crl_sources: Mutex::new(HashMap::new()),
            max_crl_sources: std::sync::atomic::AtomicUsize::new(DEFAULT_MAX_CRL_SOURCES),
            crl_source_added: tokio::sync::Notify::new(),
        };
        let server = Self { shared: Arc::new(shared) };
        server.reload_all().await?;
        Ok(server)
    }

    /// The registry.
    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// Re-reads every account's CAs and registered certificates (after changes made elsewhere,
    /// for example by another server process on the same PostgreSQL).
    /// Only accounts whose view changed are read again (a marker query per account: counts and
    /// latest change times, from indexes).
    pub async fn reload_all(&self) -> Result<(), ServerError> {
        let accounts = self.shared.store.read().await?.accounts().await?;
        for a in accounts {
            let marker = self.shared.store.read().await?.view_marker(&a.id).await?;
            if self.entry(&a.id).is_none_or(|e| e.marker != marker) {
                self.reload(&a.id).await?;
            }
        }
        Ok(())
    }

    /// Re-reads one account's view: its ACTIVE CAs (with their certificates) and the ids of
    /// its certificates registered without a CA (ids only).
    pub async fn reload(&self, account_id: &AccountId) -> Result<(), ServerError> {
        let mut tx = self.shared.store.read().await?;
        let account = tx.account(account_id).await?;
        let marker = tx.view_marker(account_id).await?;
        let mut cas = Vec::new();
        for ca in tx.list_cas(account_id).await? {
            if ca.status == CaStatus::Active {
                match Certificate::from_pem(ca.pem.as_bytes()) {
                    Ok(certificate) => cas.push(ActiveCa {
                        id: ca.id,
                        certificate,
                        mode: ca.mode,
                        require_claim: ca.require_claim,
                    }),
                    // Its devices are refused (fail closed); say why.
                    Err(e) => {
                        tracing::error!(ca = %ca.id, error = %e, "a stored CA certificate does not parse")
                    }
                }
            }
        }
        let registered = tx.registered_without_ca(account_id).await?.into_iter().collect();
        let mut claim_issuers = Vec::new();
        for (name, pem) in tx.claim_issuers(account_id).await? {
            match claimlink_pki::pem::public_key_from_pem(pem.as_bytes()) {
                Ok(key) => claim_issuers.push(key),
                Err(e) => {
                    tracing::error!(issuer = %name, error = %e, "a stored claim issuer key does not parse")
                }
            }
        }
        let mut revocations = RevocationIndex::default();
        for (issuer_pem, crl_pem) in tx.ca_crls(account_id).await? {
            // Fail closed: serving this account without what a stored CRL revokes would admit
            // revoked devices.
            let bad = |e: String| {
                ServerError::Tls(format!("a stored CRL of account {account_id} no longer applies: {e}"))
            };
            let issuer = Certificate::from_pem(issuer_pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
            let (der, _) = claimlink_service::revocation::split(crl_pem.as_bytes()).map_err(bad)?;
            let crl = claimlink_pki::crl::Crl::from_der(der, claimlink_pki::crl::DEFAULT_MAX_CRL_LEN)
                .map_err(|e| bad(e.to_string()))?;
            revocations.apply(&issuer, &crl).map_err(|e| bad(e.to_string()))?;
        }
        drop(tx);
        let entry = Arc::new(AccountEntry {
            account: account.clone(),
            cas,
            registered,
            marker,
            claim_issuers,
            revocations,
        });
        write(&self.shared.hosts).insert(account.endpoint.clone(), account.id.clone());
        write(&self.shared.accounts).insert(account.id.clone(), entry);
        Ok(())
    }

    /// The accounts this endpoint serves.
    pub fn account_ids(&self) -> Vec<AccountId> {
        read(&self.shared.accounts).keys().cloned().collect()
    }

    pub(crate) fn entry(&self, account_id: &AccountId) -> Option<Arc<AccountEntry>> {
        read(&self.shared.accounts).get(account_id).cloned()
    }

    pub(crate) fn entry_for_host(&self, host: &str) -> Option<Arc<AccountEntry>> {
        let id = read(&self.shared.hosts).get(&host.to_ascii_lowercase()).cloned();
        match id {
            Some(id) => self.entry(&id),
            None => {
                // Perhaps an account opened since the last reload (`claimlink account create`
                // writes to the registry directly): look again, at most every 5 seconds. This
                // device is refused; its retry will find the account.
                self.reload_soon();
                None
            }
        }
    }

    fn reload_soon(&self) {
        let now = claimlink_registry::now();
        let last = self.shared.last_reload.load(Ordering::Relaxed);
        if now - last < 5_000
            || self
                .shared
                .last_reload
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let me = self.clone();
            handle.spawn(async move {
                if let Err(e) = me.reload_all().await {
                    tracing::warn!(error = %e, "reloading accounts failed");
                }
            });
        }
    }

    /// The ACTIVE DEFAULT-mode CAs of every account: their certificates, and in the same order
    /// whose they are (account id, CA id). They serve devices that send no server name.
    pub(crate) fn default_mode_cas(&self) -> (Vec<Certificate>, Vec<(AccountId, CaId)>) {
        let accounts = read(&self.shared.accounts);
        let (mut anchors, mut owners) = (Vec::new(), Vec::new());
        for entry in accounts.values() {
            for ca in entry.cas.iter().filter(|ca| ca.mode == CaMode::Default) {
                anchors.push(ca.certificate.clone());
                owners.push((entry.account.id.clone(), ca.id.clone()));
            }
        }
        (anchors, owners)
    }

    /// The broker of an account (made on first use).
    pub fn broker(&self, account_id: &AccountId) -> Option<Broker<AccountHooks>> {
        let mut brokers = lock(&self.shared.brokers);
        if let Some(b) = brokers.get(account_id) {
            return Some(b.clone());
        }
        let entry = self.entry(account_id)?;
        let hooks = AccountHooks::new(self.clone(), entry.account.clone());
        let broker = Broker::new(hooks, self.shared.limits.clone());
        broker.hooks().set_broker(broker.downgrade());
        brokers.insert(account_id.clone(), broker.clone());
        Some(broker)
    }

    /// A parsed policy, cached by (account, name, version). A stored document that no longer
    /// parses is an error, never a policy left out: leaving out a Deny would grant what it
    /// denies, so the caller refuses the connection.
    pub(crate) fn policy(
        &self,
        account_id: &AccountId,
        name: &PolicyName,
        version: i64,
        document: &str,
    ) -> Result<Arc<claimlink_policy::Policy>, claimlink_policy::PolicyError> {
        let key = (account_id.clone(), name.clone(), version);
        if let Some(p) = lock(&self.shared.policies).get(&key) {
            return Ok(p.clone());
        }
        let parsed = Arc::new(claimlink_policy::Policy::parse(document)?);
        let mut cache = lock(&self.shared.policies);
        if cache.len() >= MAX_CACHED_POLICIES {
            cache.clear();
        }
        cache.insert(key, parsed.clone());
        Ok(parsed)
    }

    /// A stored template compiled, cached by (account, name) while its body is the same: JITP
    /// compiles a template once, not per device. `None` when it does not compile (any more).
    pub(crate) fn compiled_template(
        &self,
        account_id: &AccountId,
        stored: &claimlink_registry::Template,
    ) -> Option<Arc<claimlink_provision::Template>> {
        let key = (account_id.clone(), stored.name.clone());
        if let Some((body, t)) = lock(&self.shared.templates).get(&key)
            && *body == stored.body
        {
            return Some(t.clone());
        }
        let compiled = Arc::new(claimlink_provision::Template::parse(&stored.body).ok()?);
        let mut cache = lock(&self.shared.templates);
        if cache.len() >= MAX_CACHED_POLICIES {
            cache.clear();
        }
        cache.insert(key, (stored.body.clone(), compiled.clone()));
        Some(compiled)
    }

    pub(crate) fn next_serial(&self) -> u64 {
        self.shared.next_serial.fetch_add(1, Ordering::Relaxed)
    }

    /// Records a connection going up or down (the serial tells a newer connection with the
    /// same client id from the one that ends).
    pub(crate) fn track(&self, account: &AccountId, client_id: &str, session: LiveSession, up: bool) {
        let mut live = lock(&self.shared.live);
        if up {
            live.entry(account.clone()).or_default().insert(client_id.to_owned(), session);
        } else if let Some(clients) = live.get_mut(account) {
            if clients.get(client_id).is_some_and(|s| s.serial == session.serial) {
                clients.remove(client_id);
            }
            if clients.is_empty() {
                live.remove(account);
            }
        }
    }

    /// Whether `client_id` is connected to the account now (one lookup).
    pub fn online(&self, account_id: &AccountId, client_id: &str) -> bool {
        lock(&self.shared.live).get(account_id).is_some_and(|c| c.contains_key(client_id))
    }

    /// A claim ended (a release notice from staging, verified by the caller or made in this
    /// process): the account whose endpoint it was for admits the certificate no more under
    /// that claim (audited) and its live sessions end. Returns whether an account took it.
    pub async fn claim_released(
        &self,
        ticket: &claimlink_claim::ticket::ClaimTicket,
    ) -> Result<bool, ServerError> {
        let Some(entry) = self.entry_for_host(&ticket.aud) else { return Ok(false) };
        let Ok(certificate_id) = CertificateId::new(&ticket.cert) else {
            tracing::warn!(thing = %ticket.thing, "a release notice names no certificate id; ignored");
            return Ok(false);
        };
        let account = &entry.account;
        let mut tx = self.shared.store.begin().await?;
        let changed = tx.release_claim(&account.id, &certificate_id, ticket.claim).await?;
        if changed {
            tx.audit(
                Some(&account.id),
                &claimlink_registry::AuditRecord {
                    actor: "claim-issuer".into(),
                    action: "ClaimReleased".into(),
                    target: ticket.cert.clone(),
                    result: "ok".into(),
                    detail: Some(
                        serde_json::json!({"thingName": ticket.thing, "claimId": ticket.claim}).to_string(),
                    ),
                    at: claimlink_registry::now(),
                },
            )
            .await?;
        }
        tx.commit().await?;
        let dropped = self.drop_sessions(&account.id, &certificate_id);
        tracing::info!(thing = %ticket.thing, claim = ticket.claim, dropped, "claim released");
        Ok(true)
    }

    /// Applies a CRL for one of the account's ACTIVE CAs (signed by a registered CA, or by a CA
    /// certificate given with it that chains to one): checked, stored, applied, and the live
    /// sessions it revokes end at once. Errors say what is wrong and change nothing.
    pub async fn apply_crl(
        &self,
        account_id: &AccountId,
        body: &[u8],
        actor: &str,
    ) -> Result<CrlApplied, CrlUploadError> {
        use CrlUploadError::Invalid;
        let entry = self.entry(account_id).ok_or(CrlUploadError::Internal)?;
        let anchors: Vec<Certificate> = entry.cas.iter().map(|c| c.certificate.clone()).collect();
        let (crl, issuer) =
            claimlink_service::revocation::read_crl_upload(body, &anchors).map_err(Invalid)?;
        let _one_at_a_time = self.shared.crl_uploads.lock().await;
        let entry = self.entry(account_id).ok_or(CrlUploadError::Internal)?;
        let key = entry.revocations.check(&issuer, &crl).map_err(|e| Invalid(e.to_string()))?;
        fn fail<E: std::fmt::Debug>(e: E) -> CrlUploadError {
            tracing::error!(error = ?e, "the account endpoint could not store a CRL");
            CrlUploadError::Internal
        }
        let number = crl.number().and_then(|n| i64::try_from(n).ok()).unwrap_or(0);
        let mut tx = claimlink_service::api::Audited::begin(&self.shared.store, Some(account_id), actor)
            .await
            .map_err(fail)?;
        tx.save_ca_crl(
            account_id,
            &hex::encode(key),
            number,
            crl.delta_base().is_some(),
            &issuer.to_pem(),
            &claimlink_pki::pem::encode("X509 CRL", crl.der()),
        )
        .await
        .map_err(fail)?;
        tx.commit("ApplyCrl", &issuer.subject().to_string()).await.map_err(fail)?;
        self.reload(account_id).await.map_err(fail)?;
        let entry = self.entry(account_id).ok_or(CrlUploadError::Internal)?;
        let dropped =
            self.drop_where(account_id, |s| s.links.iter().any(|l| entry.revocations.link_revoked(l)));
        let revoked = entry.revocations.status_of(&issuer).map_or(0, |s| s.2);
        tracing::info!(account = %account_id, issuer = %issuer.subject(), number = ?crl.number(), revoked, dropped, "CRL applied");
        Ok(CrlApplied {
            issuer: issuer.subject().to_string(),
            number: crl.number(),
            delta: crl.delta_base().is_some(),
            revoked,
            dropped,
        })
    }

    /// How many CRL URLs are kept per account (a certificate naming more is not followed for the
    /// rest; the CRLs can still be uploaded with `PUT /crls`).
    pub fn set_max_crl_sources(&self, n: usize) {
        self.shared.max_crl_sources.store(n, Ordering::Relaxed);
    }

    /// Notes the CRL distribution points (and freshestCRL, the deltas') of a certificate admitted under one of `account`'s
    /// registered CAs. Only certificates that validated up to a registered CA get here, so a
    /// stranger cannot make us fetch anything.
    fn note_crl_sources(&self, account: &AccountId, leaf: &Certificate) {
        // The full CRL first, then the deltas over it (a delta is applied only on its base).
        let (Ok(full), Ok(deltas)) = (leaf.crl_urls(), leaf.delta_crl_urls()) else { return };
        if full.is_empty() && deltas.is_empty() {
            return;
        }
        let urls = full.into_iter().chain(deltas);
        let max = self.shared.max_crl_sources.load(Ordering::Relaxed);
        let mut added = false;
        {
            let mut sources = lock(&self.shared.crl_sources);
            let list = sources.entry(account.clone()).or_default();
            for url in urls {
                if url.len() <= MAX_CRL_URL && list.len() < max && !list.contains(&url) {
                    list.push(url);
                    added = true;
                }
            }
        }
        if added {
            self.shared.crl_source_added.notify_one();
        }
    }

    /// Every CRL URL learnt, with its account.
    pub fn crl_sources(&self) -> Vec<(AccountId, String)> {
        lock(&self.shared.crl_sources)
            .iter()
            .flat_map(|(a, urls)| urls.iter().map(move |u| (a.clone(), u.clone())))
            .collect()
    }

    /// Waits until a new CRL URL is learnt.
    pub async fn crl_source_added(&self) {
        self.shared.crl_source_added.notified().await;
    }

    /// Drops every live session that authenticated with `certificate_id` (a certificate moved
    /// out of ACTIVE, its policies or things changed). Returns how many.
    pub fn drop_sessions(&self, account_id: &AccountId, certificate_id: &CertificateId) -> usize {
        self.drop_where(account_id, |s| s.certificate_id == *certificate_id)
    }

    /// Drops the live sessions of an account whose rights `affected` says were bound from
    /// something that changed; they reconnect and are bound again from the registry. MQTT 5
    /// clients get DISCONNECT "not authorized". Returns how many.
    pub fn drop_where(&self, account_id: &AccountId, affected: impl Fn(&LiveSession) -> bool) -> usize {
        let clients: Vec<String> = lock(&self.shared.live)
            .get(account_id)
            .map(|c| c.iter().filter(|(_, s)| affected(s)).map(|(id, _)| id.clone()).collect())
            .unwrap_or_default();
        let Some(broker) = self.broker(account_id) else { return 0 };
        clients.iter().filter(|c| broker.disconnect(c, ReasonCode::NotAuthorized)).count()
    }

    /// Serves MQTT over TLS on `listener` until shutdown.
    pub async fn serve_mqtt(&self, listener: TcpListener) -> Result<(), ServerError> {
        let shared = &self.shared;
        let tls = tls::Listener::new(AccountAdmission { server: self.clone() }, &shared.identity)?;
        let limits = shared.limits.listener();
        let me = self.clone();
        claimlink_broker::serve::serve(
            "account-mqtt",
            listener,
            limits,
            Some(Arc::new(tls)),
            shared.shutdown.clone(),
            move |conn| {
                let server = me.clone();
                async move {
                    let account = conn.admission.as_deref().and_then(|a| a.downcast_ref::<Admitted>());
                    let Some(broker) = account.and_then(|a| server.broker(&a.account_id)) else {
                        return tracing::debug!(addr = %conn.addr, "no account for this connection");
                    };
                    broker.serve_accepted(conn, server.shared.shutdown.clone()).await;
                }
            },
        )
        .await;
        Ok(())
    }

    /// Starts the MQTT listener and the admin API (plain HTTP, default limits: for tests and
    /// benchmarks on loopback); returns their addresses.
    pub async fn start(
        &self,
        mqtt: SocketAddr,
        api: SocketAddr,
    ) -> Result<(SocketAddr, SocketAddr), ServerError> {
        self.start_with(mqtt, api, claimlink_service::HttpLimits::default(), None).await
    }

    /// [`AccountServer::start`] with the admin API under `http`, over HTTPS with `tls` when
    /// given (`claimlink server` and `up --https` pass the endpoint's
    /// [`ServerIdentity::https_config`]).
    pub async fn start_with(
        &self,
        mqtt: SocketAddr,
        api: SocketAddr,
        http: claimlink_service::HttpLimits,
        tls: Option<Arc<claimlink_service::Https>>,
    ) -> Result<(SocketAddr, SocketAddr), ServerError> {
        let mqtt_listener = TcpListener::bind(mqtt).await?;
        let api_listener = TcpListener::bind(api).await?;
        let addrs = (mqtt_listener.local_addr()?, api_listener.local_addr()?);
        let me = self.clone();
        spawn_role("account-mqtt", async move { me.serve_mqtt(mqtt_listener).await });
        spawn_role("admin-api", api::serve(self.clone(), api_listener, http, tls));
        // Changes made by other processes sharing the database reach this one within a minute.
        let me = self.clone();
        let mut shutdown = self.shared.shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = tick.tick() => { let _ = me.reload_all().await; }
                    _ = shutdown.changed() => return,
                }
            }
        });
        Ok(addrs)
    }
}
