//! `claimlink broker --config FILE`: a plain MQTT broker (every authenticated client may do
//! everything) on TCP and TLS listeners - for interop tests and benchmarks.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{ListenerSection, ListenerTls};
use anyhow::{Context, Result, bail};
use claimlink_broker::tls::{ClientAuth, server_config};
use claimlink_broker::{AllowAll, Broker, TlsSelector};
use claimlink_pki::{Certificate, pem};

use crate::files::read_bounded;

/// `broker` arguments.
#[derive(clap::Args)]
pub(crate) struct BrokerArgs {
    /// TOML configuration: `[[listener]]` entries with `bind` and an optional `[listener.tls]`.
    #[arg(long)]
    config: PathBuf,
}

/// `claimlink broker`.
pub(crate) fn run(args: &BrokerArgs) -> Result<()> {
    let file = crate::config::Config::load(&args.config)?;
    if file.listener.is_empty() {
        bail!("{}: no [[listener]]", args.config.display());
    }
    let base = args.config.parent().unwrap_or(Path::new("."));
    let limits = file.broker_limits();
    let tls: Vec<Option<Arc<dyn TlsSelector>>> = file
        .listener
        .iter()
        .map(|l| l.tls.as_ref().map(|t| tls_config(base, t)).transpose())
        .collect::<Result<_>>()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(serve(Broker::new(AllowAll, limits), &file.listener, tls))
}

async fn serve(
    broker: Broker<AllowAll>,
    listeners: &[ListenerSection],
    tls: Vec<Option<Arc<dyn TlsSelector>>>,
) -> Result<()> {
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for (conf, tls) in listeners.iter().zip(tls) {
        let socket = tokio::net::TcpListener::bind(conf.bind)
            .await
            .with_context(|| format!("cannot listen on {}", conf.bind))?;
        let addr = socket.local_addr()?;
        let scheme = if tls.is_some() { "mqtts" } else { "mqtt" };
        // Not println!: a closed stdout must not bring the broker down.
        let _ = writeln!(std::io::stdout(), "listening on {scheme}://{addr}");
        let (broker, shutdown) = (broker.clone(), shutdown.clone());
        tasks.spawn(async move {
            match tls {
                Some(tls) => broker.serve_tls(socket, tls, shutdown).await,
                None => broker.serve_tcp(socket, shutdown).await,
            }
        });
    }
    let _ = std::io::stdout().flush();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        Some(done) = tasks.join_next() => { done??; }
    }
    let _ = stop.send(true);
    // Let connections send their DISCONNECT before the process ends.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    Ok(())
}

fn tls_config(base: &Path, t: &ListenerTls) -> Result<Arc<dyn TlsSelector>> {
    let path = |p: &PathBuf| if p.is_absolute() { p.clone() } else { base.join(p) };
    let (cert_path, key_path) = (path(&t.certificate), path(&t.private_key));
    let chain = Certificate::chain_from_pem(&read_bounded(&cert_path, 1 << 20)?)
        .with_context(|| format!("{}", cert_path.display()))?;
    let key = pem::private_key_from_pem(&read_bounded(&key_path, 1 << 20)?, None)
        .with_context(|| format!("{}", key_path.display()))?;
    let client_auth = match t.client_auth.as_str() {
        "required" => ClientAuth::Required,
        "optional" => ClientAuth::Optional,
        "none" => ClientAuth::None,
        other => bail!("client_auth = {other:?}: expected required, optional or none"),
    };
    let cas = match &t.client_ca {
        Some(p) => {
            let p = path(p);
            Certificate::chain_from_pem(&read_bounded(&p, 1 << 20)?)
                .with_context(|| format!("{}", p.display()))?
        }
        None => Vec::new(),
    };
    let config = server_config(
        chain.iter().map(|c| c.der().to_vec()).collect(),
        key.to_pkcs8_der()?.to_vec(),
        &cas.iter().map(|c| c.der().to_vec()).collect::<Vec<_>>(),
        client_auth,
    )
    .with_context(|| format!("TLS listener with {}", cert_path.display()))?;
    Ok(Arc::new(config))
}
