//! `claimlink server --config FILE`: the OEM account endpoint (MQTT over mutual TLS for every
//! account, chosen by SNI, and the admin API); `claimlink account create`: the operator's way
//! to open an account and get its first API token.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use claimlink_broker::Limits;
use claimlink_server::{AccountServer, ServerIdentity};
use serde::Deserialize;

use crate::files::read_bounded;

/// `server` arguments.
#[derive(clap::Args)]
pub(crate) struct ServerArgs {
    /// TOML configuration: `database`, `mqtt`, `api` and `[tls] certificate / private_key`.
    #[arg(long)]
    config: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerFile {
    /// `sqlite://PATH` or `postgres://...` (else `$DATABASE_URL`).
    database: Option<String>,
    mqtt: SocketAddr,
    api: SocketAddr,
    tls: TlsFile,
    #[serde(default)]
    limits: LimitsFile,
    /// Run staging too.
    staging: Option<StagingFile>,
}

/// `[staging]`: the module maker's staging service in the same process.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StagingFile {
    /// MQTT over mutual TLS for devices and claim-things.
    mqtt: SocketAddr,
    /// HTTPS API (administrators with tokens, claim-things with their certificate).
    api: SocketAddr,
    /// PEM files of the manufacturer CAs whose birth certificates are accepted.
    manufacturer_cas: Vec<PathBuf>,
    /// The key (PKCS#8 PEM, SM2 or P-256) that signs claim tickets and release notices; an
    /// account trusts its public key with `PUT /claim-issuers/{name}`. Without it, deliveries
    /// carry no ticket (AWS-compatible).
    #[serde(default)]
    ticket_key: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    certificate: PathBuf,
    private_key: PathBuf,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    max_connections: Option<usize>,
    max_queued: Option<usize>,
}

/// The registry to use: what the command line or the configuration file says, else
/// `$DATABASE_URL`.
pub(crate) fn database_url(configured: Option<&str>) -> Result<String> {
    configured
        .map(str::to_owned)
        .or_else(|| std::env::var("DATABASE_URL").ok())
        .context("no database: set `database` in the configuration (or --database), or $DATABASE_URL")
}

/// `claimlink server`.
pub(crate) fn run(args: &ServerArgs) -> Result<()> {
    let text = String::from_utf8(read_bounded(&args.config, 1 << 20)?)
        .with_context(|| format!("{} is not UTF-8", args.config.display()))?;
    let file: ServerFile = toml::from_str(&text).with_context(|| format!("{}", args.config.display()))?;
    let base = args.config.parent().unwrap_or(Path::new("."));
    let path = |p: &PathBuf| if p.is_absolute() { p.clone() } else { base.join(p) };
    let identity = ServerIdentity {
        chain_pem: String::from_utf8(read_bounded(&path(&file.tls.certificate), 1 << 20)?)?,
        key_pem: String::from_utf8(read_bounded(&path(&file.tls.private_key), 1 << 20)?)?.into(),
    };
    let url = database_url(file.database.as_deref())?;
    let mut limits = Limits::default();
    limits.max_connections = file.limits.max_connections.unwrap_or(limits.max_connections);
    limits.max_queued = file.limits.max_queued.unwrap_or(limits.max_queued);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let store = claimlink_staging::store::open(&url).await.context("cannot open the registry")?;
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let server = AccountServer::new(store.clone(), &identity, limits.clone(), shutdown.clone()).await?;
        let (mqtt, api) = server.start(file.mqtt, file.api).await?;
        let staging = match &file.staging {
            Some(st) => {
                let mut cas = Vec::new();
                for p in &st.manufacturer_cas {
                    let pem = read_bounded(&path(p), 1 << 20)?;
                    let chain = claimlink_pki::Certificate::chain_from_pem(&pem)
                        .with_context(|| format!("{} is not a PEM certificate file", path(p).display()))?;
                    cas.extend(chain);
                }
                let ticket_signer = match &st.ticket_key {
                    Some(p) => {
                        let key = claimlink_pki::pem::private_key_from_pem(&std::fs::read(path(p))?, None)
                            .with_context(|| {
                                format!("{} is not an unencrypted PKCS#8 key", path(p).display())
                            })?;
                        Some(std::sync::Arc::new(key) as std::sync::Arc<dyn claimlink_pki::Signer>)
                    }
                    None => None,
                };
                let config = claimlink_staging::StagingConfig {
                    manufacturer_cas: cas,
                    claim_limits: Default::default(),
                    limits: limits.clone(),
                    ticket_signer,
                };
                let staging =
                    claimlink_staging::StagingServer::new(store.clone(), &identity, config, shutdown.clone())
                        .await?;
                let mqtt_l = tokio::net::TcpListener::bind(st.mqtt).await?;
                let api_l = tokio::net::TcpListener::bind(st.api).await?;
                let addrs = (mqtt_l.local_addr()?, api_l.local_addr()?);
                let s = staging.clone();
                claimlink_server::spawn_role("staging-mqtt", async move { s.serve_mqtt(mqtt_l).await });
                claimlink_server::spawn_role("staging-api", claimlink_staging::api::serve(staging, api_l));
                Some(addrs)
            }
            None => None,
        };
        // Not println!: a closed stdout (the reader of the addresses went away) must not bring the
        // server down.
        use std::io::Write;
        let mut out = std::io::stdout();
        let _ = writeln!(out, "listening on mqtts://{mqtt}");
        let _ = writeln!(out, "admin API on http://{api}");
        if let Some((m, a)) = staging {
            let _ = writeln!(out, "staging on mqtts://{m}");
            let _ = writeln!(out, "staging API on https://{a}");
        }
        let _ = out.flush();
        tokio::signal::ctrl_c().await?;
        let _ = stop.send(true);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        Ok(())
    })
}

/// `account create` arguments.
#[derive(clap::Args)]
pub(crate) struct AccountCreateArgs {
    /// Registry: `sqlite://PATH` or `postgres://...` (else $DATABASE_URL).
    #[arg(long)]
    database: Option<String>,
    /// Account name (1-128 of a-z A-Z 0-9 : _ -).
    #[arg(long)]
    name: String,
    /// Host name its devices connect to (SNI); the server certificate must cover it.
    #[arg(long)]
    endpoint: String,
    /// Region, for ARNs.
    #[arg(long, default_value = "cn-north-1")]
    region: String,
}

/// `claimlink account create`: prints the account and its first API token (shown once).
pub(crate) fn account_create(args: &AccountCreateArgs) -> Result<()> {
    let url = database_url(args.database.as_deref())?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let store = claimlink_staging::store::open(&url).await.context("cannot open the registry")?;
        let mut tx = store.begin().await?;
        let account = tx.create_account(&args.name, &args.endpoint, &args.region).await?;
        let token = tx.create_api_token(&account.id, "owner").await?;
        tx.commit().await?;
        let out = serde_json::json!({
            "accountId": account.id,
            "endpointAddress": account.endpoint,
            "region": account.region,
            "apiToken": token,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        Ok(())
    })
}
