//! One configuration file for every role: `claimlink server`, `claimlink broker` and
//! `claimlink up --config` read the same TOML schema, each the sections it uses, and refuse a
//! key it does not know. Every bound the README lists is a key here, with the default the
//! README states. `claimlink config default` prints the whole file with comments;
//! `claimlink config check FILE` validates one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use claimlink_broker::Limits;
use claimlink_service::HttpLimits;
use claimlink_staging::ClaimLimits;
use claimlink_staging::claims::ClaimPolicy;
use claimlink_staging::portal::PortalLimits;
use serde::Deserialize;

use crate::files::read_bounded;

/// The whole file.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// `sqlite://PATH` or `postgres://...` (else `$DATABASE_URL`).
    pub(crate) database: Option<String>,
    /// `server`: the account endpoint's MQTT listener.
    pub(crate) mqtt: Option<SocketAddr>,
    /// `server`: the admin API.
    pub(crate) api: Option<SocketAddr>,
    /// `server`: the TLS identity of its listeners.
    pub(crate) tls: Option<TlsFiles>,
    /// `server`: staging in the same process.
    pub(crate) staging: Option<StagingSection>,
    /// `broker`: its listeners.
    #[serde(default)]
    pub(crate) listener: Vec<ListenerSection>,
    /// Every MQTT listener and broker.
    #[serde(default)]
    pub(crate) limits: LimitsSection,
    /// Every HTTP listener.
    #[serde(default)]
    pub(crate) http: HttpSection,
    /// Claims at staging.
    #[serde(default)]
    pub(crate) claims: ClaimsSection,
    /// The registration portal.
    #[serde(default)]
    pub(crate) portal: PortalSection,
    /// Fetching the CRLs of CAs registered in accounts.
    #[serde(default)]
    pub(crate) revocation: RevocationSection,
}

/// A certificate chain and its key.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsFiles {
    pub(crate) certificate: PathBuf,
    pub(crate) private_key: PathBuf,
    /// A second identity of the other kind (SM2 beside P-256): RFC 8998 clients get it.
    #[serde(default)]
    pub(crate) sm2_certificate: Option<PathBuf>,
    #[serde(default)]
    pub(crate) sm2_private_key: Option<PathBuf>,
    /// Refuse every client that does not speak TLS 1.3 with SM.
    #[serde(default)]
    pub(crate) strict_sm: bool,
    /// TLCP (GB/T 38636) on the same ports: the SM2 signing chain and key, and the encryption
    /// certificate and key (all four, or none).
    #[serde(default)]
    pub(crate) tlcp_sign_certificate: Option<PathBuf>,
    #[serde(default)]
    pub(crate) tlcp_sign_key: Option<PathBuf>,
    #[serde(default)]
    pub(crate) tlcp_enc_certificate: Option<PathBuf>,
    #[serde(default)]
    pub(crate) tlcp_enc_key: Option<PathBuf>,
}

/// `[staging]`.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct StagingSection {
    /// MQTT over mutual TLS for devices and claim-things.
    pub(crate) mqtt: SocketAddr,
    /// HTTPS API (administrators with tokens, claim-things with their certificate).
    pub(crate) api: SocketAddr,
    /// PEM files of the manufacturer CAs whose birth certificates are accepted.
    pub(crate) manufacturer_cas: Vec<PathBuf>,
    /// The key (PKCS#8 PEM, SM2 or P-256) that signs claim tickets and release notices.
    #[serde(default)]
    pub(crate) ticket_key: Option<PathBuf>,
}

/// `[[listener]]` of `claimlink broker`.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenerSection {
    pub(crate) bind: SocketAddr,
    pub(crate) tls: Option<ListenerTls>,
}

/// `[listener.tls]`.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenerTls {
    pub(crate) certificate: PathBuf,
    pub(crate) private_key: PathBuf,
    pub(crate) client_ca: Option<PathBuf>,
    #[serde(default = "required")]
    pub(crate) client_auth: String,
}

fn required() -> String {
    "required".into()
}

/// Declares a section whose keys all have defaults (its `Default` reads the runtime defaults, so
/// the two cannot disagree) with what each bounds, for the commented default file.
macro_rules! section {
    ($(#[$m:meta])* $name:ident { $($field:ident: $ty:ty $(=> $note:literal)?),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
        #[serde(default, deny_unknown_fields)]
        pub(crate) struct $name { $(pub(crate) $field: $ty),+ }

        impl $name {
            /// The section's keys as TOML, each with its value and what it bounds (the keys and
            /// their notes are stated once, here).
            fn toml(&self) -> String {
                let mut out = String::new();
                $(
                    out.push_str(&format!("{} = {:?}", stringify!($field), self.$field));
                    $(out.push_str(concat!(" # ", $note));)?
                    out.push('\n');
                )+
                out
            }
        }
    };
}

section!(
    /// `[limits]`: every MQTT listener and broker.
    LimitsSection {
        max_connections: usize => "connections open at once",
        max_per_source: usize => "connections open at once from one address (IPv6 by /64)",
        max_packet_size: u32 => "bytes",
        receive_maximum: u16 => "incoming QoS 1/2 in flight per connection",
        topic_alias_maximum: u16 => "incoming topic aliases per connection",
        max_queued: usize => "outgoing messages queued per connection",
        max_topic_len: usize => "bytes",
        max_topic_levels: usize,
        max_subscriptions: usize => "per connection",
        max_client_id_len: usize => "bytes",
        connect_timeout_secs: u64 => "TLS handshake and CONNECT",
        max_session_expiry_secs: u64 => "longest a session outlives its connection",
        max_offline_messages: usize => "kept per offline session",
    }
);

section!(
    /// `[http]`: the admin API, the staging API and the portal.
    HttpSection {
        max_connections: usize,
        max_per_source: usize,
        handshake_timeout_secs: u64,
        header_timeout_secs: u64 => "to send a request's headers",
        idle_timeout_secs: u64 => "a connection with nothing read or written is closed",
        max_header_bytes: usize,
        max_body: usize => "JSON request bodies of the APIs",
    }
);

section!(
    /// `[claims]`: rates, queues and the lockout schedule at staging.
    ClaimsSection {
        per_oem_rate: f64 => "claims per second per OEM",
        per_oem_burst: f64,
        per_device_rate: f64 => "claims per second per claimer and device",
        per_device_burst: f64,
        in_flight: usize => "claims waiting for the registry; more are refused RateLimited",
        max_payload: usize => "bytes of claim JSON over MQTT",
        max_tallies: usize => "claimers whose rate-limited refusals are counted in memory",
        free_wrong_codes: i64 => "a claimer's wrong codes before its first lockout",
        quiet_secs: i64 => "a claimer's wrong codes are forgotten after this long without one",
        device_ceiling: i64 => "wrong codes per device per window, from everyone, before it is locked",
        device_window_secs: i64,
        refusal_window_secs: i64 => "refusals are counted in aggregate per window",
        first_lockout_secs: i64 => "doubling with each further wrong code",
        max_lockout_secs: i64,
    }
);

section!(
    /// `[portal]`: what the registration portal holds for strangers.
    PortalSection {
        max_upload: usize => "bytes of label photo",
        max_form: usize => "bytes of a form",
        argon2_running: usize => "password hashes at once (19 MiB each)",
        argon2_waiting: usize,
        qr_running: usize => "photos decoded at once (up to 160 MiB of decoder memory each)",
        qr_waiting: usize,
        pool_wait_secs: u64,
        max_image_side: u32 => "pixels",
        session_secs: u64,
        signin_free_per_account: i64 => "failed sign-ins before a lockout",
        signin_free_per_source: i64,
        signin_first_lockout_secs: i64,
        signin_max_lockout_secs: i64,
    }
);

impl Default for LimitsSection {
    fn default() -> Self {
        let l = Limits::default();
        Self {
            max_connections: l.max_connections,
            max_per_source: l.max_per_source,
            max_packet_size: l.max_packet_size,
            receive_maximum: l.receive_maximum,
            topic_alias_maximum: l.topic_alias_maximum,
            max_queued: l.max_queued,
            max_topic_len: l.max_topic_len,
            max_topic_levels: l.max_topic_levels,
            max_subscriptions: l.max_subscriptions,
            max_client_id_len: l.max_client_id_len,
            connect_timeout_secs: l.connect_timeout.as_secs(),
            max_session_expiry_secs: l.max_session_expiry.as_secs(),
            max_offline_messages: l.max_offline_messages,
        }
    }
}

impl Default for HttpSection {
    fn default() -> Self {
        let h = HttpLimits::default();
        Self {
            max_connections: h.max_connections,
            max_per_source: h.max_per_source,
            handshake_timeout_secs: h.handshake_timeout.as_secs(),
            header_timeout_secs: h.header_timeout.as_secs(),
            idle_timeout_secs: h.idle_timeout.as_secs(),
            max_header_bytes: h.max_header_bytes,
            max_body: h.max_body,
        }
    }
}

impl Default for ClaimsSection {
    fn default() -> Self {
        let (l, p) = (ClaimLimits::default(), ClaimPolicy::default());
        Self {
            per_oem_rate: l.per_oem_rate,
            per_oem_burst: l.per_oem_burst,
            per_device_rate: l.per_device_rate,
            per_device_burst: l.per_device_burst,
            in_flight: l.in_flight,
            max_payload: l.max_payload,
            max_tallies: l.max_tallies,
            free_wrong_codes: p.free_wrong_codes,
            quiet_secs: p.quiet_ms / 1000,
            device_ceiling: p.device_ceiling,
            device_window_secs: p.device_window_ms / 1000,
            refusal_window_secs: p.refusal_window_ms / 1000,
            first_lockout_secs: p.first_lockout_ms / 1000,
            max_lockout_secs: p.max_lockout_ms / 1000,
        }
    }
}

section!(
    /// `[revocation]`: the CRLs the account endpoint fetches for registered CAs.
    RevocationSection {
        crl_fetch_interval_secs: u64 => "each CRL distribution point learnt is fetched this often",
        max_crl_fetch_bytes: u64 => "a larger CRL is refused and changes nothing",
        crl_fetch_timeout_secs: u64 => "one fetch in all",
        max_crl_sources_per_account: usize => "CRL URLs followed per account",
    }
);

impl Default for RevocationSection {
    fn default() -> Self {
        let f = crate::crl_fetch::FetchLimits::default();
        Self {
            crl_fetch_interval_secs: f.interval.as_secs(),
            max_crl_fetch_bytes: f.max_bytes,
            crl_fetch_timeout_secs: f.timeout.as_secs(),
            max_crl_sources_per_account: claimlink_server::DEFAULT_MAX_CRL_SOURCES,
        }
    }
}

impl Default for PortalSection {
    fn default() -> Self {
        let p = PortalLimits::default();
        Self {
            max_upload: p.max_upload,
            max_form: p.max_form,
            argon2_running: p.argon2_running,
            argon2_waiting: p.argon2_waiting,
            qr_running: p.qr_running,
            qr_waiting: p.qr_waiting,
            pool_wait_secs: p.pool_wait.as_secs(),
            max_image_side: p.max_image_side,
            session_secs: p.session.as_secs(),
            signin_free_per_account: p.signin_per_account.free_wrong_codes,
            signin_free_per_source: p.signin_per_source.free_wrong_codes,
            signin_first_lockout_secs: p.signin_per_account.first_lockout_ms / 1000,
            signin_max_lockout_secs: p.signin_per_account.max_lockout_ms / 1000,
        }
    }
}

impl Config {
    /// Reads and validates `path` (at most 1 MiB of UTF-8 TOML).
    pub(crate) fn load(path: &Path) -> Result<Self> {
        let text = String::from_utf8(read_bounded(path, 1 << 20)?)
            .with_context(|| format!("{} is not UTF-8", path.display()))?;
        Self::parse(&text).with_context(|| format!("{}", path.display()))
    }

    /// Parses and validates a configuration's text.
    pub(crate) fn parse(text: &str) -> Result<Self> {
        let config: Self = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// The rules a value must follow beyond its type.
    fn validate(&self) -> Result<()> {
        let l = &self.limits;
        let positive = [
            ("limits.max_connections", l.max_connections as u64),
            ("limits.max_per_source", l.max_per_source as u64),
            ("limits.max_packet_size", u64::from(l.max_packet_size)),
            ("limits.receive_maximum", u64::from(l.receive_maximum)),
            ("limits.max_queued", l.max_queued as u64),
            ("limits.max_topic_len", l.max_topic_len as u64),
            ("limits.max_topic_levels", l.max_topic_levels as u64),
            ("limits.max_subscriptions", l.max_subscriptions as u64),
            ("limits.max_client_id_len", l.max_client_id_len as u64),
            ("limits.connect_timeout_secs", l.connect_timeout_secs),
            ("http.max_connections", self.http.max_connections as u64),
            ("http.max_per_source", self.http.max_per_source as u64),
            ("http.handshake_timeout_secs", self.http.handshake_timeout_secs),
            ("http.header_timeout_secs", self.http.header_timeout_secs),
            ("http.idle_timeout_secs", self.http.idle_timeout_secs),
            ("http.max_header_bytes", self.http.max_header_bytes as u64),
            ("http.max_body", self.http.max_body as u64),
            ("claims.in_flight", self.claims.in_flight as u64),
            ("claims.max_payload", self.claims.max_payload as u64),
            ("portal.argon2_running", self.portal.argon2_running as u64),
            ("portal.qr_running", self.portal.qr_running as u64),
            ("portal.max_image_side", u64::from(self.portal.max_image_side)),
            ("portal.session_secs", self.portal.session_secs),
            ("revocation.crl_fetch_interval_secs", self.revocation.crl_fetch_interval_secs),
            ("revocation.max_crl_fetch_bytes", self.revocation.max_crl_fetch_bytes),
            ("revocation.crl_fetch_timeout_secs", self.revocation.crl_fetch_timeout_secs),
        ];
        for (key, value) in positive {
            if value == 0 {
                bail!("{key} must be at least 1");
            }
        }
        let c = &self.claims;
        for (key, rate) in
            [("claims.per_oem_rate", c.per_oem_rate), ("claims.per_device_rate", c.per_device_rate)]
        {
            if !(rate.is_finite() && rate > 0.0) {
                bail!("{key} must be a positive number of claims per second");
            }
        }
        for (key, burst) in
            [("claims.per_oem_burst", c.per_oem_burst), ("claims.per_device_burst", c.per_device_burst)]
        {
            if !(burst.is_finite() && burst >= 1.0) {
                bail!("{key} must be at least 1 (one claim)");
            }
        }
        let schedules = [
            ("claims", c.free_wrong_codes, c.first_lockout_secs, c.max_lockout_secs),
            (
                "portal.signin",
                self.portal.signin_free_per_account.min(self.portal.signin_free_per_source),
                self.portal.signin_first_lockout_secs,
                self.portal.signin_max_lockout_secs,
            ),
        ];
        for (what, free, first, max) in schedules {
            if free < 0 || first < 1 || max < first {
                bail!("{what}: free wrong codes >= 0 and 1 <= first lockout <= max lockout (seconds)");
            }
        }
        for (key, v) in [
            ("claims.quiet_secs", c.quiet_secs),
            ("claims.device_ceiling", c.device_ceiling),
            ("claims.device_window_secs", c.device_window_secs),
            ("claims.refusal_window_secs", c.refusal_window_secs),
        ] {
            if v < 1 {
                bail!("{key} must be at least 1");
            }
        }
        for l in &self.listener {
            if let Some(t) = &l.tls
                && !["required", "optional", "none"].contains(&t.client_auth.as_str())
            {
                bail!("listener {}: client_auth must be required, optional or none", l.bind);
            }
        }
        Ok(())
    }

    /// `[limits]` as the brokers take them.
    pub(crate) fn broker_limits(&self) -> Limits {
        let l = &self.limits;
        Limits {
            max_connections: l.max_connections,
            max_per_source: l.max_per_source,
            max_packet_size: l.max_packet_size,
            receive_maximum: l.receive_maximum,
            topic_alias_maximum: l.topic_alias_maximum,
            max_queued: l.max_queued,
            max_topic_len: l.max_topic_len,
            max_topic_levels: l.max_topic_levels,
            max_subscriptions: l.max_subscriptions,
            max_client_id_len: l.max_client_id_len,
            connect_timeout: Duration::from_secs(l.connect_timeout_secs),
            max_session_expiry: Duration::from_secs(l.max_session_expiry_secs),
            max_offline_messages: l.max_offline_messages,
        }
    }

    /// `[http]`.
    pub(crate) fn http_limits(&self) -> HttpLimits {
        let h = &self.http;
        HttpLimits {
            max_connections: h.max_connections,
            max_per_source: h.max_per_source,
            handshake_timeout: Duration::from_secs(h.handshake_timeout_secs),
            header_timeout: Duration::from_secs(h.header_timeout_secs),
            idle_timeout: Duration::from_secs(h.idle_timeout_secs),
            max_header_bytes: h.max_header_bytes,
            max_body: h.max_body,
        }
    }

    /// `[claims]`: staging's limits and the claim decision's schedule.
    pub(crate) fn claims(&self) -> (ClaimLimits, ClaimPolicy) {
        let c = &self.claims;
        let limits = ClaimLimits {
            per_oem_rate: c.per_oem_rate,
            per_oem_burst: c.per_oem_burst,
            per_device_rate: c.per_device_rate,
            per_device_burst: c.per_device_burst,
            in_flight: c.in_flight,
            max_payload: c.max_payload,
            max_tallies: c.max_tallies,
        };
        let policy = ClaimPolicy {
            free_wrong_codes: c.free_wrong_codes,
            quiet_ms: c.quiet_secs * 1000,
            device_ceiling: c.device_ceiling,
            device_window_ms: c.device_window_secs * 1000,
            refusal_window_ms: c.refusal_window_secs * 1000,
            first_lockout_ms: c.first_lockout_secs * 1000,
            max_lockout_ms: c.max_lockout_secs * 1000,
        };
        (limits, policy)
    }

    /// `[revocation]`: the CRL fetcher's bounds.
    pub(crate) fn crl_fetch_limits(&self) -> crate::crl_fetch::FetchLimits {
        let r = &self.revocation;
        crate::crl_fetch::FetchLimits {
            interval: Duration::from_secs(r.crl_fetch_interval_secs),
            max_bytes: r.max_crl_fetch_bytes,
            timeout: Duration::from_secs(r.crl_fetch_timeout_secs),
        }
    }

    /// `[portal]` (its HTTP listener from `[http]`).
    pub(crate) fn portal_limits(&self) -> PortalLimits {
        let p = &self.portal;
        let signin = ClaimPolicy {
            free_wrong_codes: p.signin_free_per_account,
            first_lockout_ms: p.signin_first_lockout_secs * 1000,
            max_lockout_ms: p.signin_max_lockout_secs * 1000,
            ..PortalLimits::default().signin_per_account
        };
        PortalLimits {
            max_upload: p.max_upload,
            max_form: p.max_form,
            argon2_running: p.argon2_running,
            argon2_waiting: p.argon2_waiting,
            qr_running: p.qr_running,
            qr_waiting: p.qr_waiting,
            pool_wait: Duration::from_secs(p.pool_wait_secs),
            max_image_side: p.max_image_side,
            session: Duration::from_secs(p.session_secs),
            signin_per_account: signin,
            signin_per_source: ClaimPolicy { free_wrong_codes: p.signin_free_per_source, ..signin },
            http: self.http_limits(),
        }
    }
}

/// The whole file with every key, its default and what it bounds: `claimlink config default`.
pub(crate) fn default_file() -> String {
    let sections = [
        (
            "every MQTT listener and broker (broker, server, staging, up)",
            "limits",
            LimitsSection::default().toml(),
        ),
        ("every HTTP listener (admin API, staging API, portal)", "http", HttpSection::default().toml()),
        ("claims at staging (server with [staging], up)", "claims", ClaimsSection::default().toml()),
        ("the registration portal (up)", "portal", PortalSection::default().toml()),
        (
            "CRLs of CAs registered in accounts (server, up)",
            "revocation",
            RevocationSection::default().toml(),
        ),
    ];
    let mut out = String::from(HEADER);
    for (title, name, keys) in sections {
        let rule = "-".repeat(90usize.saturating_sub(title.len() + 7));
        out.push_str(&format!("\n# ---- {title} {rule}\n[{name}]\n{keys}"));
    }
    out
}

/// The part of the default file before the sections of limits: what the commands read, their
/// listeners, TLS (commented out: they have no default).
const HEADER: &str = r#"# claimlink configuration: `claimlink server --config`, `claimlink broker --config` and
# `claimlink up --config` read this one schema, each the sections it uses; an unknown key is an
# error. Check a file with `claimlink config check FILE`. Paths are relative to this file.

# The registry: sqlite://PATH or postgres://USER@HOST/DB (else $DATABASE_URL). `server`.
# database = "sqlite://claimlink.db"

# ---- claimlink server: the OEM account endpoint -------------------------------------------
# mqtt = "0.0.0.0:8883"            # MQTT over mutual TLS, every account (SNI picks it)
# api = "127.0.0.1:8081"           # admin API (plain HTTP: keep it on loopback or behind TLS)
# [tls]
# certificate = "server-chain.pem" # leaf first; its names cover every account endpoint
# private_key = "server.key"       # PKCS#8 PEM
# sm2_certificate = "server-sm2-chain.pem" # SM2, for clients offering sm2sig_sm3 (RFC 8998)
# sm2_private_key = "server-sm2.key"
# strict_sm = false                # true: TLS 1.3 with SM only, every other client refused
# tlcp_sign_certificate = "tlcp-sign-chain.pem" # TLCP on the same ports: SM2 signing chain...
# tlcp_sign_key = "tlcp-sign.key"  # ...its key,
# tlcp_enc_certificate = "tlcp-enc.pem" # the encryption certificate (`claimlink ca sign-dual`)
# tlcp_enc_key = "tlcp-enc.key"    # and its key (all four, or none)

# ---- staging in the same process (server) --------------------------------------------------
# [staging]
# mqtt = "0.0.0.0:8884"
# api = "0.0.0.0:8443"
# manufacturer_cas = ["acme-ca/chain.pem"]
# ticket_key = "staging-ticket.key" # signs claim tickets (claim-bound admission)

# ---- claimlink broker: a plain MQTT broker --------------------------------------------------
# [[listener]]
# bind = "127.0.0.1:1884"          # plain TCP
# [[listener]]
# bind = "127.0.0.1:8884"
# [listener.tls]
# certificate = "server-chain.pem"
# private_key = "server.key"
# client_ca = "acme-ca/chain.pem"
# client_auth = "required"         # or "optional", "none"
"#;

/// `claimlink config` arguments.
#[derive(clap::Subcommand)]
pub(crate) enum ConfigCommand {
    /// Print a complete configuration file: every key, its default, what it bounds.
    Default,
    /// Validate a configuration file (syntax, unknown keys, values, the files it names).
    Check {
        /// The file.
        file: PathBuf,
    },
}

/// `claimlink config`.
pub(crate) fn run(command: &ConfigCommand) -> Result<()> {
    use std::io::Write;
    match command {
        ConfigCommand::Default => {
            std::io::stdout().write_all(default_file().as_bytes())?;
        }
        ConfigCommand::Check { file } => {
            let config = Config::load(file)?;
            let base = file.parent().unwrap_or(Path::new("."));
            let mut files: Vec<&PathBuf> = Vec::new();
            if let Some(t) = &config.tls {
                files.extend([&t.certificate, &t.private_key]);
                files.extend(t.sm2_certificate.iter().chain(&t.sm2_private_key));
                files.extend(
                    t.tlcp_sign_certificate
                        .iter()
                        .chain(&t.tlcp_sign_key)
                        .chain(&t.tlcp_enc_certificate)
                        .chain(&t.tlcp_enc_key),
                );
            }
            if let Some(s) = &config.staging {
                files.extend(&s.manufacturer_cas);
                files.extend(&s.ticket_key);
            }
            for l in &config.listener {
                if let Some(t) = &l.tls {
                    files.extend([&t.certificate, &t.private_key]);
                    files.extend(&t.client_ca);
                }
            }
            for f in files {
                let path = if f.is_absolute() { f.clone() } else { base.join(f) };
                if !path.is_file() {
                    bail!("{}: {} (named in it) is not a readable file", file.display(), path.display());
                }
            }
            let mut roles = Vec::new();
            if config.mqtt.is_some() && config.api.is_some() && config.tls.is_some() {
                roles.push("server");
            }
            if config.staging.is_some() {
                roles.push("staging");
            }
            if !config.listener.is_empty() {
                roles.push("broker");
            }
            let roles =
                if roles.is_empty() { "limits only (up --config)".to_owned() } else { roles.join(", ") };
            println!("{}: ok ({roles})", file.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_file_parses_to_the_runtime_defaults() {
        let parsed = Config::parse(&default_file()).unwrap();
        assert_eq!(parsed, Config::default());
        assert_eq!(parsed.broker_limits(), Limits::default());
        assert_eq!(parsed.http_limits(), HttpLimits::default());
        assert_eq!(parsed.claims(), (ClaimLimits::default(), ClaimPolicy::default()));
        assert_eq!(parsed.portal_limits(), PortalLimits::default());
    }

    #[test]
    fn unknown_keys_wrong_types_and_bad_values_are_refused_with_the_key() {
        for (text, says) in [
            ("[limits]\nmax_conections = 5\n", "max_conections"),
            ("[claims]\nper_oem_rate = \"fast\"\n", "per_oem_rate"),
            ("[limits]\nmax_connections = 0\n", "limits.max_connections"),
            ("[claims]\nper_device_burst = 0.5\n", "claims.per_device_burst"),
            ("[claims]\nfirst_lockout_secs = 100\nmax_lockout_secs = 10\n", "claims"),
            ("[portal]\nsession_secs = 0\n", "portal.session_secs"),
            (
                "[[listener]]\nbind = \"127.0.0.1:1\"\n[listener.tls]\ncertificate = \"a\"\nprivate_key = \"b\"\nclient_auth = \"maybe\"\n",
                "client_auth",
            ),
            ("nonsense = 1\n", "nonsense"),
        ] {
            let e = format!("{:#}", Config::parse(text).unwrap_err());
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }

    #[test]
    fn a_partial_file_keeps_the_defaults_of_what_it_leaves_out() {
        let c = Config::parse("[limits]\nmax_queued = 7\n[claims]\ndevice_ceiling = 50\n").unwrap();
        assert_eq!(c.broker_limits(), Limits { max_queued: 7, ..Limits::default() });
        assert_eq!(c.claims().1, ClaimPolicy { device_ceiling: 50, ..ClaimPolicy::default() });
    }
}
