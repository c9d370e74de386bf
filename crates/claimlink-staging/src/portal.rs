//! The registration portal an OEM runs for its end users: server-rendered HTML, no JavaScript.
//!
//! Sign-up and sign-in with e-mail and password (Argon2id, PHC strings; sessions are random
//! 256-bit cookies, `HttpOnly; SameSite=Strict`, stored hashed); add a device by typing its ID
//! and claim code or by uploading a photo of its QR label (decoded here, on the server); watch
//! it come online in the OEM's account (the page refreshes itself until it is); list my devices
//! with their online state; release one (ownership ends at staging, and the device is told over
//! the account endpoint to go back to staging).
//!
//! The portal claims through the staging service in-process, as the OEM; a portal deployed
//! apart does the same through the claim API with the OEM's claim-thing certificate.

use crate::store::Records as _;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use crate::claims::{ClaimOutcome, ClaimRequest, Claimer, Rejection, Via};
use crate::store::PortalUser;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::Router;
use axum::extract::ConnectInfo;
use axum::extract::{DefaultBodyLimit, Form, Multipart, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use std::net::{IpAddr, SocketAddr};
use tokio::net::TcpListener;

use crate::claims::ClaimPolicy;
use crate::server::{StagingServer, config_message};
use claimlink_mqtt::packet::Publish;

/// What the portal holds for the strangers who use it. Sign-in failures lock out the account
/// name and the source address with the claims' schedule ([`ClaimPolicy`]), from their own
/// free allowances.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PortalLimits {
    /// Largest label photo accepted, in bytes.
    pub max_upload: usize,
    /// Largest form (sign-in, add device), in bytes.
    pub max_form: usize,
    /// Argon2id hashes computed at once (19 MiB each).
    pub argon2_running: usize,
    /// Sign-ups and sign-ins that may wait for one.
    pub argon2_waiting: usize,
    /// QR photos decoded at once (up to `max_upload` plus 160 MiB of decoder memory each).
    pub qr_running: usize,
    /// Uploads that may wait (their bodies are read only once they have a place).
    pub qr_waiting: usize,
    /// Longest wait for a place in a pool.
    pub pool_wait: Duration,
    /// Largest image side decoded, in pixels.
    pub max_image_side: u32,
    /// Session lifetime.
    pub session: Duration,
    /// Lockouts of an account name after failed sign-ins.
    pub signin_per_account: ClaimPolicy,
    /// Lockouts of a source address after failed sign-ins.
    pub signin_per_source: ClaimPolicy,
    /// The portal's HTTP listener.
    pub http: claimlink_service::HttpLimits,
}

impl Default for PortalLimits {
    fn default() -> Self {
        // 30 s doubling per further failure, up to 15 minutes, forgotten after a quiet day.
        let signin = ClaimPolicy {
            free_wrong_codes: 5,
            first_lockout_ms: 30_000,
            max_lockout_ms: 15 * 60_000,
            ..ClaimPolicy::default()
        };
        Self {
            max_upload: 8 * 1024 * 1024,
            max_form: 16 * 1024,
            argon2_running: 2,
            argon2_waiting: 32,
            qr_running: 1,
            qr_waiting: 2,
            pool_wait: Duration::from_secs(10),
            max_image_side: 6000,
            session: Duration::from_secs(12 * 3600),
            signin_per_account: signin,
            signin_per_source: ClaimPolicy { free_wrong_codes: 20, ..signin },
            http: claimlink_service::HttpLimits::default(),
        }
    }
}

const COOKIE: &str = "claimlink_session";

/// Which OEM the portal serves.
#[derive(Debug, Clone)]
pub struct PortalConfig {
    /// The OEM's staging UUID.
    pub oem_id: String,
    /// Where claims send devices (`host[:port]`).
    pub endpoint: String,
    /// Where a released device goes back to.
    pub staging_endpoint: String,
    /// Shown in page titles.
    pub title: String,
    /// What it holds for strangers.
    pub limits: PortalLimits,
}

/// The OEM's account as its portal needs it (the portal is the OEM's, and staging knows no
/// account endpoint): whether a device is online there, and a message to a device over it.
pub trait OemAccount: Send + Sync + 'static {
    /// Whether the device with this client id is connected to the account now.
    fn online(&self, thing: &str) -> bool;
    /// Publishes `message` at the account (QoS 1 reaches a persistent session later).
    fn publish(&self, message: Publish);
}

struct Inner {
    staging: StagingServer,
    account: Arc<dyn OemAccount>,
    config: PortalConfig,
    argon2: Pool,
    qr: Pool,
}

/// A bounded pool for expensive work a stranger can ask for (password hashing, photo
/// decoding): `running` at once, `waiting` more queued; beyond that, refused at once.
struct Pool {
    places: Arc<tokio::sync::Semaphore>,
    running: Arc<tokio::sync::Semaphore>,
    wait: Duration,
}

/// A place in a [`Pool`], held while the work runs.
struct Place {
    _place: tokio::sync::OwnedSemaphorePermit,
    _running: tokio::sync::OwnedSemaphorePermit,
}

impl Pool {
    fn new(running: usize, waiting: usize, wait: Duration) -> Self {
        Self {
            places: Arc::new(tokio::sync::Semaphore::new(running + waiting)),
            running: Arc::new(tokio::sync::Semaphore::new(running)),
            wait,
        }
    }

    /// A place to run, or `None` when the queue is full or the wait too long.
    async fn enter(&self) -> Option<Place> {
        let place = self.places.clone().try_acquire_owned().ok()?;
        let running =
            tokio::time::timeout(self.wait, self.running.clone().acquire_owned()).await.ok()?.ok()?;
        Some(Place { _place: place, _running: running })
    }
}

/// The portal.
#[derive(Clone)]
pub struct Portal {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Portal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Portal").field("oem", &self.inner.config.oem_id).finish_non_exhaustive()
    }
}

type PortalResult = Result<Response, Response>;

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

impl Portal {
    /// A portal for one OEM.
    pub fn new(staging: StagingServer, account: Arc<dyn OemAccount>, config: PortalConfig) -> Self {
        let l = &config.limits;
        let argon2 = Pool::new(l.argon2_running, l.argon2_waiting, l.pool_wait);
        let qr = Pool::new(l.qr_running, l.qr_waiting, l.pool_wait);
        Self { inner: Arc::new(Inner { staging, account, config, argon2, qr }) }
    }

    /// Serves on `listener` until the staging service shuts down: over HTTPS with `tls` (a
    /// configuration made once, e.g. [`claimlink_service::ServerIdentity::https_config`]), else
    /// plain HTTP.
    pub async fn serve(
        self,
        listener: TcpListener,
        tls: Option<Arc<claimlink_service::Https>>,
    ) -> std::io::Result<()> {
        let shutdown = self.inner.staging.shared.shutdown.clone();
        let http = self.inner.config.limits.http;
        let mut app = self.router();
        if tls.is_some() {
            // Over TLS the session cookie never goes back in the clear.
            app = app.layer(axum::middleware::map_response(secure_cookies));
        }
        let tls = tls.map(|c| c as Arc<dyn claimlink_broker::TlsSelector>);
        claimlink_service::serve_http("portal", listener, tls, http, shutdown, move |_| app.clone()).await
    }

    /// The routes.
    pub fn router(self) -> Router {
        Router::new()
            .route("/", get(home))
            .route("/signup", get(signup_page).post(signup))
            .route("/signin", get(signin_page).post(signin))
            .route("/signout", post(signout))
            .route("/devices", get(devices))
            .route("/devices/add", post(add_device))
            .route(
                "/devices/scan",
                post(scan_device).layer(DefaultBodyLimit::max(self.inner.config.limits.max_upload)),
            )
            .route("/devices/{thing}", get(device_status))
            .route("/devices/{thing}/release", post(release))
            .layer(DefaultBodyLimit::max(self.inner.config.limits.max_form))
            .with_state(self)
    }

    fn page(&self, title: &str, user: Option<&PortalUser>, body: &str) -> String {
        let nav = match user {
            Some(u) => format!(
                r#"<nav><span id="who">{}</span> · <a href="/devices">My devices</a> · <form class="inline" method="post" action="/signout"><button id="signout">Sign out</button></form></nav>"#,
                esc(&u.email)
            ),
            None => r#"<nav><a href="/signin">Sign in</a> · <a href="/signup">Sign up</a></nav>"#.into(),
        };
        format!(
            r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · {oem}</title><style>body{{font-family:system-ui,sans-serif;max-width:44rem;margin:2rem auto;padding:0 1rem}}
form.inline{{display:inline}} .error{{color:#a00}} .online{{color:#070}} .offline{{color:#777}} table{{border-collapse:collapse}} td,th{{padding:.3rem .6rem;text-align:left}}
input{{margin:.2rem 0}} fieldset{{margin:1rem 0}}</style></head><body><header><strong>{oem}</strong> device registration</header>{nav}<main><h1>{title}</h1>{body}</main></body></html>"#,
            title = esc(title),
            oem = esc(&self.inner.config.title),
        )
    }

    fn html(&self, status: StatusCode, title: &str, user: Option<&PortalUser>, body: &str) -> Response {
        (status, Html(self.page(title, user, body))).into_response()
    }

    async fn user(&self, headers: &HeaderMap) -> Option<PortalUser> {
        let token = cookie(headers)?;
        let user = self.inner.staging.store().read().await.ok()?.portal_session(&token).await.ok()??;
        (user.oem_id == self.inner.config.oem_id).then_some(user)
    }

    async fn require(&self, headers: &HeaderMap) -> Result<PortalUser, Response> {
        self.user(headers).await.ok_or_else(|| Redirect::to("/signin").into_response())
    }

    fn online(&self, thing: &str) -> bool {
        self.inner.account.online(thing)
    }

    fn busy(&self, user: Option<&PortalUser>) -> Response {
        let mut r = self.html(
            StatusCode::SERVICE_UNAVAILABLE,
            "Busy",
            user,
            r#"<p class="error" id="error">The portal is busy right now; please try again in a few seconds.</p>"#,
        );
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        r
    }

    /// When a sign-in lockout for one of `keys` ends, if one is running.
    async fn signin_locked(&self, keys: &[String]) -> Result<Option<i64>, Response> {
        let mut tx = self.inner.staging.store().read().await.map_err(|e| self.internal(e))?;
        crate::claims::locked_until(&mut tx, keys, claimlink_registry::now())
            .await
            .map_err(|e| self.internal(e))
    }

    /// Counts a failed sign-in against the account and the source.
    async fn signin_failed(&self, keys: &[String]) -> Result<(), Response> {
        let now = claimlink_registry::now();
        let mut tx = self.inner.staging.store().begin().await.map_err(|e| self.internal(e))?;
        let l = &self.inner.config.limits;
        for (i, key) in keys.iter().enumerate() {
            let policy = if i == 0 { &l.signin_per_account } else { &l.signin_per_source };
            let failed = tx
                .count_claimer_failure(key, now - policy.quiet_ms, now)
                .await
                .map_err(|e| self.internal(e))?;
            let lock = policy.lockout_ms(failed);
            if lock > 0 {
                tx.lock_claimer_until(key, now + lock).await.map_err(|e| self.internal(e))?;
            }
        }
        tx.commit().await.map_err(|e| self.internal(e))
    }

    fn internal(&self, e: impl std::fmt::Display) -> Response {
        tracing::error!(error = %e, "portal failure");
        self.html(StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong", None, "<p>Please try again.</p>")
    }

    /// Claims `thing` for `user` (its wrong codes lock out the user and the source address;
    /// a device another user holds is refused) and answers with the status page or the form
    /// with an error.
    async fn claim(&self, user: &PortalUser, source: IpAddr, thing: &str, code: &str) -> PortalResult {
        let thing = thing.trim().to_ascii_lowercase();
        let request = ClaimRequest {
            oem_id: &self.inner.config.oem_id,
            claimer: Claimer::PortalUser { user_id: user.id, source: Some(source) },
            thing_name: &thing,
            endpoint: &self.inner.config.endpoint,
            claim_code: (!code.trim().is_empty()).then_some(code.trim()),
            via: Via::Api,
        };
        match self.inner.staging.claim(&request).await.map_err(|e| self.internal(e))? {
            // The claim's transaction put it in this user's list.
            ClaimOutcome::Accepted { .. } => Ok(Redirect::to(&format!("/devices/{thing}")).into_response()),
            ClaimOutcome::Rejected { reason, .. } => {
                let status = StatusCode::from_u16(reason.http_status()).unwrap_or(StatusCode::FORBIDDEN);
                let message = match reason {
                    Rejection::AlreadyOwned => {
                        "This device is registered to another account. Its owner must release it before it can be added here."
                    }
                    other => other.message(),
                };
                let error = format!(
                    r#"<p class="error" id="error" data-code="{}">{}</p>"#,
                    reason.code(),
                    esc(message)
                );
                Err(self.devices_page(status, user, &error).await)
            }
        }
    }

    async fn scan_error(&self, user: &PortalUser, msg: &str) -> Response {
        let error = format!(r#"<p class="error" id="error">{}</p>"#, esc(msg));
        self.devices_page(StatusCode::BAD_REQUEST, user, &error).await
    }

    /// Whether `thing` is in `user`'s list; answers 404 when it is not.
    async fn listed(&self, user: &PortalUser, thing: &str) -> Result<(), Response> {
        let mut tx = self.inner.staging.store().read().await.map_err(|e| self.internal(e))?;
        let devices = tx.portal_devices(user.id).await.map_err(|e| self.internal(e))?;
        if devices.iter().any(|(t, _)| t == thing) {
            Ok(())
        } else {
            Err(self.html(
                StatusCode::NOT_FOUND,
                "Not found",
                Some(user),
                "<p>This device is not in your list.</p>",
            ))
        }
    }

    async fn devices_page(&self, status: StatusCode, user: &PortalUser, message: &str) -> Response {
        let list = match self.inner.staging.store().read().await {
            Ok(mut tx) => tx.portal_devices(user.id).await.unwrap_or_default(),
            Err(e) => return self.internal(e),
        };
        let mut rows = String::new();
        for (thing, _) in &list {
            let online = self.online(thing);
            let _ = write!(
                rows,
                r#"<tr data-thing="{t}"><td><a href="/devices/{t}"><code>{t}</code></a></td><td class="{c}">{s}</td><td><form class="inline" method="post" action="/devices/{t}/release"><button class="release">Release</button></form></td></tr>"#,
                t = esc(thing),
                c = if online { "online" } else { "offline" },
                s = if online { "online" } else { "offline" },
            );
        }
        let table = if list.is_empty() {
            "<p id=\"empty\">No devices yet.</p>".to_owned()
        } else {
            format!("<table id=\"devices\"><tr><th>Device ID</th><th>State</th><th></th></tr>{rows}</table>")
        };
        let body = format!(
            r#"{message}{table}
<fieldset><legend>Add a device</legend>
<form method="post" action="/devices/add"><label>Device ID <input name="thing" id="thing" required autocomplete="off" size="36"></label><br>
<label>Claim code <input name="code" id="code" autocomplete="off" placeholder="XXXX-XXXX-XXXX-XXXX"></label><br>
<button id="add">Add device</button></form>
<p>or upload a photo of the QR code on its label:</p>
<form method="post" action="/devices/scan" enctype="multipart/form-data"><input type="file" name="photo" id="photo" accept="image/*" required> <button id="scan">Add from photo</button></form>
</fieldset>"#
        );
        self.html(status, "My devices", Some(user), &body)
    }
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == COOKIE && v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit())).then(|| v.to_owned())
        })
}

/// Marks every cookie the portal sets `Secure` (served over HTTPS).
async fn secure_cookies(mut response: Response) -> Response {
    let cookies: Vec<HeaderValue> = response.headers().get_all(header::SET_COOKIE).iter().cloned().collect();
    response.headers_mut().remove(header::SET_COOKIE);
    for cookie in cookies {
        let secured = cookie.to_str().ok().and_then(|c| HeaderValue::from_str(&format!("{c}; Secure")).ok());
        if let Some(v) = secured {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    response
}

fn with_session(token: &str, to: &str, session: Duration) -> Response {
    let mut r = Redirect::to(to).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        session.as_secs()
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// POSTs from another site are refused (the cookie is SameSite=Strict too).
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else { return true };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    origin == "null" && host.is_empty() || origin.split_once("://").is_some_and(|(_, h)| h == host)
}

#[derive(serde::Deserialize)]
struct Credentials {
    email: String,
    password: String,
}

fn credentials_form(action: &str, button: &str, error: &str) -> String {
    format!(
        r#"{error}<form method="post" action="{action}"><label>E-mail <input type="email" name="email" id="email" required maxlength="254"></label><br>
<label>Password <input type="password" name="password" id="password" required minlength="10" maxlength="256"></label><br><button id="submit">{button}</button></form>"#
    )
}

async fn home(State(p): State<Portal>, headers: HeaderMap) -> Response {
    if p.user(&headers).await.is_some() {
        Redirect::to("/devices").into_response()
    } else {
        Redirect::to("/signin").into_response()
    }
}

async fn signup_page(State(p): State<Portal>) -> Response {
    p.html(StatusCode::OK, "Sign up", None, &credentials_form("/signup", "Sign up", ""))
}

async fn signin_page(State(p): State<Portal>) -> Response {
    p.html(StatusCode::OK, "Sign in", None, &credentials_form("/signin", "Sign in", ""))
}

fn valid_email(e: &str) -> bool {
    e.len() <= 254
        && e.split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !e.contains(char::is_whitespace))
}

async fn signup(State(p): State<Portal>, headers: HeaderMap, Form(c): Form<Credentials>) -> PortalResult {
    if !same_origin(&headers) {
        return Err(StatusCode::FORBIDDEN.into_response());
    }
    let email = c.email.trim().to_ascii_lowercase();
    let again = |msg: &str| {
        p.html(
            StatusCode::BAD_REQUEST,
            "Sign up",
            None,
            &credentials_form(
                "/signup",
                "Sign up",
                &format!(r#"<p class="error" id="error">{}</p>"#, esc(msg)),
            ),
        )
    };
    if !valid_email(&email) {
        return Err(again("That is not an e-mail address."));
    }
    if c.password.chars().count() < 10 || c.password.len() > 256 {
        return Err(again("The password must have 10 to 256 characters."));
    }
    let password = c.password;
    let Some(place) = p.inner.argon2.enter().await else { return Err(p.busy(None)) };
    let hash = tokio::task::spawn_blocking(move || {
        let _place = place;
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|_| argon2::password_hash::Error::Crypto)?;
        let salt = SaltString::encode_b64(&bytes)?;
        argon2::Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string())
    })
    .await
    .map_err(|e| p.internal(e))?
    .map_err(|e| p.internal(e))?;
    let mut tx = p.inner.staging.store().begin().await.map_err(|e| p.internal(e))?;
    let id = match tx.create_portal_user(&p.inner.config.oem_id, &email, &hash).await {
        Ok(id) => id,
        Err(claimlink_registry::RegistryError::AlreadyExists { .. }) => {
            return Err(again("An account with this e-mail exists; sign in instead."));
        }
        Err(e) => return Err(p.internal(e)),
    };
    let token = tx
        .create_portal_session(id, p.inner.config.limits.session.as_millis() as i64)
        .await
        .map_err(|e| p.internal(e))?;
    tx.commit().await.map_err(|e| p.internal(e))?;
    Ok(with_session(&token, "/devices", p.inner.config.limits.session))
}

async fn signin(
    State(p): State<Portal>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(c): Form<Credentials>,
) -> PortalResult {
    if !same_origin(&headers) {
        return Err(StatusCode::FORBIDDEN.into_response());
    }
    let email = c.email.trim().to_ascii_lowercase();
    if email.len() > 254 || c.password.len() > 256 {
        return Err(StatusCode::BAD_REQUEST.into_response());
    }
    // Locked out (per account and per source): refused before any hashing.
    let keys = [format!("signin:{}:{email}", p.inner.config.oem_id), format!("signin-ip:{}", peer.ip())];
    if let Some(until) = p.signin_locked(&keys).await? {
        let minutes = ((until - claimlink_registry::now()) / 60_000).max(0) + 1;
        let msg = format!(
            r#"<p class="error" id="error">Too many failed sign-ins. Try again in {minutes} minute(s).</p>"#
        );
        return Err(p.html(
            StatusCode::TOO_MANY_REQUESTS,
            "Sign in",
            None,
            &credentials_form("/signin", "Sign in", &msg),
        ));
    }
    let found = p
        .inner
        .staging
        .store()
        .read()
        .await
        .map_err(|e| p.internal(e))?
        .portal_user_by_email(&p.inner.config.oem_id, &email)
        .await
        .map_err(|e| p.internal(e))?;
    // Verify against a dummy hash when the user is unknown: the same time either way.
    const DUMMY: &str =
        "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$JqvWp2nQ6Bq5Rk0J4Y5r2F9mJgk5m5XxA3b3yPZ0m1E";
    let (user, hash) = match found {
        Some((u, h)) => (Some(u), h),
        None => (None, DUMMY.to_owned()),
    };
    let password = c.password;
    let Some(place) = p.inner.argon2.enter().await else { return Err(p.busy(None)) };
    let ok = tokio::task::spawn_blocking(move || {
        let _place = place;
        PasswordHash::new(&hash)
            .is_ok_and(|h| argon2::Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
    })
    .await
    .unwrap_or(false);
    match user.filter(|_| ok) {
        Some(u) => {
            let mut tx = p.inner.staging.store().begin().await.map_err(|e| p.internal(e))?;
            tx.clear_lockout(&keys[0]).await.map_err(|e| p.internal(e))?;
            let token = tx
                .create_portal_session(u.id, p.inner.config.limits.session.as_millis() as i64)
                .await
                .map_err(|e| p.internal(e))?;
            tx.commit().await.map_err(|e| p.internal(e))?;
            Ok(with_session(&token, "/devices", p.inner.config.limits.session))
        }
        None => Err({
            p.signin_failed(&keys).await?;
            p.html(
                StatusCode::UNAUTHORIZED,
                "Sign in",
                None,
                &credentials_form(
                    "/signin",
                    "Sign in",
                    r#"<p class="error" id="error">Wrong e-mail or password.</p>"#,
                ),
            )
        }),
    }
}

async fn signout(State(p): State<Portal>, headers: HeaderMap) -> Response {
    if let Some(token) = cookie(&headers)
        && let Ok(mut tx) = p.inner.staging.store().begin().await
    {
        let _ = tx.delete_portal_session(&token).await;
        let _ = tx.commit().await;
    }
    let mut r = Redirect::to("/signin").into_response();
    r.headers_mut()
        .insert(header::SET_COOKIE, HeaderValue::from_static("claimlink_session=; Path=/; Max-Age=0"));
    r
}

async fn devices(State(p): State<Portal>, headers: HeaderMap) -> PortalResult {
    let user = p.require(&headers).await?;
    Ok(p.devices_page(StatusCode::OK, &user, "").await)
}

#[derive(serde::Deserialize)]
struct AddForm {
    thing: String,
    #[serde(default)]
    code: String,
}

async fn add_device(
    State(p): State<Portal>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<AddForm>,
) -> PortalResult {
    let user = p.require(&headers).await?;
    if !same_origin(&headers) {
        return Err(StatusCode::FORBIDDEN.into_response());
    }
    p.claim(&user, peer.ip(), &f.thing, &f.code).await
}

/// Decodes the first QR code in an image (PNG or JPEG).
fn decode_qr(bytes: &[u8], max_side: u32) -> Result<String, &'static str> {
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|_| "the upload is not an image")?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(max_side);
    limits.max_image_height = Some(max_side);
    limits.max_alloc = Some(160 * 1024 * 1024);
    reader.limits(limits);
    let img =
        reader.decode().map_err(|_| "the upload is not a PNG or JPEG image this portal can read")?.to_luma8();
    let (w, h) = img.dimensions();
    let mut prepared = rqrr::PreparedImage::prepare_from_greyscale(w as usize, h as usize, |x, y| {
        img.get_pixel(x as u32, y as u32).0[0]
    });
    let grids = prepared.detect_grids();
    let grid = grids.first().ok_or("no QR code found in the photo; try a sharper, closer one")?;
    grid.decode().map(|(_, text)| text).map_err(|_| "the QR code could not be read; try a sharper photo")
}

async fn scan_device(
    State(p): State<Portal>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    mut form: Multipart,
) -> PortalResult {
    let user = p.require(&headers).await?;
    if !same_origin(&headers) {
        return Err(StatusCode::FORBIDDEN.into_response());
    }
    // A place first: only uploads with one are read into memory.
    let Some(place) = p.inner.qr.enter().await else { return Err(p.busy(Some(&user))) };
    let mut photo = None;
    while let Ok(Some(field)) = form.next_field().await {
        if field.name() == Some("photo") {
            photo = field.bytes().await.ok();
        }
    }
    let Some(photo) = photo.filter(|b| !b.is_empty()) else {
        return Err(p.scan_error(&user, "no photo was uploaded").await);
    };
    let max_side = p.inner.config.limits.max_image_side;
    let text = match tokio::task::spawn_blocking(move || {
        let _place = place;
        decode_qr(&photo, max_side)
    })
    .await
    {
        Ok(Ok(t)) => t,
        Ok(Err(msg)) => return Err(p.scan_error(&user, msg).await),
        Err(e) => return Err(p.internal(e)),
    };
    // CLM1:<THINGNAME>[:<claim code>]
    let mut parts = text.trim().split(':');
    let (Some("CLM1"), Some(thing), code, None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(p.scan_error(&user, "this QR code is not a claimlink device label").await);
    };
    let thing = thing.to_owned();
    let code = code.unwrap_or("").to_owned();
    p.claim(&user, peer.ip(), &thing, &code).await
}

async fn device_status(
    State(p): State<Portal>,
    headers: HeaderMap,
    Path(thing): Path<String>,
) -> PortalResult {
    let user = p.require(&headers).await?;
    p.listed(&user, &thing).await?;
    let online = p.online(&thing);
    let body = if online {
        format!(
            r#"<p id="state" class="online" data-state="online">Device <code>{}</code> is online.</p><p><a href="/devices">Back to my devices</a></p>"#,
            esc(&thing)
        )
    } else {
        format!(
            r#"<p id="state" class="offline" data-state="waiting">Claimed. Waiting for device <code>{}</code> to come online (power it on and connect it to the network)…</p><p>This page refreshes itself.</p>"#,
            esc(&thing)
        )
    };
    let mut r = p.html(StatusCode::OK, "Device status", Some(&user), &body);
    if !online {
        r.headers_mut().insert(header::REFRESH, HeaderValue::from_static("1"));
    }
    Ok(r)
}

async fn release(State(p): State<Portal>, headers: HeaderMap, Path(thing): Path<String>) -> PortalResult {
    let user = p.require(&headers).await?;
    if !same_origin(&headers) {
        return Err(StatusCode::FORBIDDEN.into_response());
    }
    p.listed(&user, &thing).await?;
    // One writer at a time (SQLite): staging's release commits before the list changes.
    match p.inner.staging.release(&p.inner.config.oem_id, &thing).await {
        Ok(_) => {}
        Err(crate::claims::ReleaseError::NotOwner) => {} // already released (factory reset)
        Err(e) => return Err(p.internal(e)),
    }
    let mut tx = p.inner.staging.store().begin().await.map_err(|e| p.internal(e))?;
    tx.remove_portal_device(user.id, &thing).await.map_err(|e| p.internal(e))?;
    tx.commit().await.map_err(|e| p.internal(e))?;
    // Tell the device, over its owner's endpoint, to go back to staging (QoS 1: a device with a
    // persistent session gets it when it next connects).
    p.inner.account.publish(config_message(&thing, &p.inner.config.staging_endpoint, None));
    Ok(Redirect::to("/devices").into_response())
}
