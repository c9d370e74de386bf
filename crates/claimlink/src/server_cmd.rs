//! `claimlink server --config FILE`: the OEM account endpoint (MQTT over mutual TLS for every
//! account, chosen by SNI, and the admin API); `claimlink account create`: the operator's way
//! to open an account and get its first API token.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use claimlink_server::{AccountServer, ServerIdentity};

use crate::files::read_bounded;

/// `server` arguments.
#[derive(clap::Args)]
pub(crate) struct ServerArgs {
    /// TOML configuration (`claimlink config default`): `database`, `mqtt`, `api`, `[tls]`,
    /// and optionally `[staging]` and the bounds of every role.
    #[arg(long)]
    config: PathBuf,
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
    let file = crate::config::Config::load(&args.config)?;
    let (Some(mqtt_addr), Some(api_addr), Some(tls)) = (file.mqtt, file.api, &file.tls) else {
        anyhow::bail!("{}: `server` needs `mqtt`, `api` and [tls]", args.config.display());
    };
    let base = args.config.parent().unwrap_or(Path::new("."));
    let path = |p: &PathBuf| if p.is_absolute() { p.clone() } else { base.join(p) };
    let read = |p: &PathBuf| -> Result<String> { Ok(String::from_utf8(read_bounded(&path(p), 1 << 20)?)?) };
    let mut identity = ServerIdentity::new(read(&tls.certificate)?, read(&tls.private_key)?.into());
    match (&tls.sm2_certificate, &tls.sm2_private_key) {
        (Some(c), Some(k)) => {
            identity.alternate = Some(Box::new(ServerIdentity::new(read(c)?, read(k)?.into())))
        }
        (None, None) => {}
        _ => anyhow::bail!("[tls]: sm2_certificate and sm2_private_key go together"),
    }
    identity.strict_sm = tls.strict_sm;
    match (&tls.tlcp_sign_certificate, &tls.tlcp_sign_key, &tls.tlcp_enc_certificate, &tls.tlcp_enc_key) {
        (Some(sc), Some(sk), Some(ec), Some(ek)) => {
            let tlcp = claimlink_service::TlcpIdentity {
                sign_chain_pem: read(sc)?,
                sign_key_pem: read(sk)?.into(),
                enc_cert_pem: read(ec)?,
                enc_key_pem: read(ek)?.into(),
            };
            // Refuse a mismatched or misplaced pair now, not at the first connection.
            tlcp.identity()?;
            identity.tlcp = Some(tlcp);
        }
        (None, None, None, None) => {}
        _ => anyhow::bail!(
            "[tls]: tlcp_sign_certificate, tlcp_sign_key, tlcp_enc_certificate and tlcp_enc_key go together"
        ),
    }
    // Refuse a mismatched pair now, not at the first connection.
    identity.certified_keys()?;
    let url = database_url(file.database.as_deref())?;
    let limits = file.broker_limits();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let store = claimlink_staging::store::open(&url).await.context("cannot open the registry")?;
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let server = AccountServer::new(store.clone(), &identity, limits.clone(), shutdown.clone()).await?;
        server.set_max_crl_sources(file.revocation.max_crl_sources_per_account);
        crate::crl_fetch::spawn(server.clone(), file.crl_fetch_limits());
        let (mqtt, api) = server
            .start_with(mqtt_addr, api_addr, file.http_limits(), Some(identity.https_config()?))
            .await?;
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
                let (claim_limits, claim_policy) = file.claims();
                let config = claimlink_staging::StagingConfig {
                    manufacturer_cas: cas,
                    claim_limits,
                    claim_policy,
                    limits: limits.clone(),
                    http: file.http_limits(),
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
        let _ = writeln!(out, "admin API on https://{api}");
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
