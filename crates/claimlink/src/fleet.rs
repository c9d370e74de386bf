//! `claimlink fleet`: N simulated devices in one process going through the whole journey
//! against a running platform (`claimlink up`): first power-on -> staging -> claim (over MQTT by
//! the OEM's claim-thing, with the claim code read from the device's label) -> move -> JITP in
//! the account -> first accepted publish. Reports the total time and the claim-to-online
//! latency (claim sent -> device connected and provisioned in the account) p50/p99.

use claimlink_staging::store::Records as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use claimlink_agent::{Agent, AgentOptions, Backoff};
use claimlink_mqtt::QoS;
use tokio::sync::Semaphore;

/// `fleet` arguments.
#[derive(clap::Args)]
pub(crate) struct FleetArgs {
    /// Directory of device bundles (`.../devices` of a batch).
    #[arg(long)]
    bundles: PathBuf,
    /// Devices to run (the first N bundles by name).
    #[arg(long)]
    count: usize,
    /// The `claimlink up` data directory (for the demo OEM's claim-thing).
    #[arg(long, default_value = "claimlink-data")]
    data: PathBuf,
    /// Where the claim sends devices.
    #[arg(long, default_value = "demo-oem.localhost:8884")]
    endpoint: String,
    /// Journeys in progress at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
}

/// The claim code printed on a device's label (`BATCH/labels/{ThingName}.svg`), dashes removed.
fn label_code(bundle: &Path) -> Option<String> {
    let thing = bundle.file_name()?.to_str()?;
    let label = bundle.parent()?.parent()?.join("labels").join(format!("{thing}.svg"));
    crate::label::claim_code_of(&std::fs::read_to_string(label).ok()?)
}

/// A bundle for the OEM's claim-thing (client id = the OEM's UUID), so that the agent can
/// drive it.
fn claim_thing_bundle(data: &Path, staging_endpoint: &str, oem_id: &str) -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    for (from, to) in [
        ("oem/claim-thing.pem", "cert.pem"),
        ("oem/claim-thing.key", "key.pem"),
        ("endpoint-ca.pem", "root.pem"),
    ] {
        std::fs::copy(data.join(from), dir.path().join(to))
            .with_context(|| format!("{}", data.join(from).display()))?;
    }
    std::fs::write(
        dir.path().join("device.toml"),
        format!(
            "thing_name = \"{oem_id}\"\nstaging_endpoint = \"{staging_endpoint}\"\nprivate_key = \"key.pem\"\n\
             certificate = \"cert.pem\"\nroot_ca = \"root.pem\"\n"
        ),
    )?;
    Ok(dir)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// `claimlink fleet`.
pub(crate) fn run(args: &FleetArgs) -> Result<()> {
    let mut bundles: Vec<PathBuf> = std::fs::read_dir(&args.bundles)
        .with_context(|| format!("cannot read {}", args.bundles.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("device.toml").exists())
        .collect();
    bundles.sort();
    if bundles.len() < args.count {
        bail!(
            "{} holds {} bundles, fewer than --count {}",
            args.bundles.display(),
            bundles.len(),
            args.count
        );
    }
    bundles.truncate(args.count);
    // Each simulated device starts from the factory state.
    for b in &bundles {
        let _ = std::fs::remove_file(b.join("settings.toml"));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(journey(args, bundles))
}

async fn journey(args: &FleetArgs, bundles: Vec<PathBuf>) -> Result<()> {
    let first = claimlink_agent::bundle::Bundle::load(&bundles[0])?;
    let url = format!("sqlite://{}", args.data.join("claimlink.db").display());
    let store = claimlink_staging::store::open(&url).await?;
    let oem = store
        .read()
        .await?
        .oem_by_name("Demo OEM")
        .await?
        .context("no Demo OEM: run `claimlink up` first")?;
    drop(store);
    let ct_dir = claim_thing_bundle(&args.data, &first.staging_endpoint, &oem.id)?;
    let mut claimer = Agent::open(ct_dir.path(), AgentOptions::default())?;
    claimer.connect().await.map_err(|f| anyhow::anyhow!("claim-thing cannot connect: {}", f.detail))?;
    let claimer = Arc::new(tokio::sync::Mutex::new(claimer));
    let options =
        AgentOptions { backoff: Backoff { base: Duration::from_millis(100), cap: Duration::from_secs(5) } };
    let gate = Arc::new(Semaphore::new(args.concurrency));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for b in bundles {
        let gate = gate.clone();
        let claimer = claimer.clone();
        let endpoint = args.endpoint.clone();
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let code = label_code(&b);
            let mut agent = Agent::open(&b, options)?;
            let thing = agent.thing_name().to_owned();
            let mut status = agent.status();
            connect_retrying(&mut agent).await?;
            let mut claim = serde_json::json!({ "Endpoint": endpoint });
            if let Some(c) = code {
                claim["ClaimCode"] = c.into();
            }
            let sent = Instant::now();
            claimer
                .lock()
                .await
                .publish(&format!("{thing}/expresslink_config"), claim.to_string().into(), QoS::AtLeastOnce)
                .await
                .map_err(|e| anyhow::anyhow!("claim of {thing} not sent: {e}"))?;
            tokio::time::timeout(Duration::from_secs(120), status.wait_for(|s| s.connected && s.onboarded))
                .await
                .with_context(|| format!("{thing} did not come online in the account"))??;
            let online = sent.elapsed();
            agent
                .publish(&format!("{thing}/hello"), "{\"hello\":1}".into(), QoS::AtLeastOnce)
                .await
                .map_err(|e| anyhow::anyhow!("{thing}: first publish refused: {e}"))?;
            Ok::<_, anyhow::Error>((agent, online))
        });
    }
    let mut latencies = Vec::new();
    let mut agents = Vec::new();
    let mut failures = 0usize;
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok((agent, latency))) => {
                latencies.push(latency);
                agents.push(agent);
            }
            Ok(Err(e)) => {
                failures += 1;
                if failures <= 5 {
                    eprintln!("device failed: {e:#}");
                }
            }
            Err(e) => {
                failures += 1;
                eprintln!("device task failed: {e}");
            }
        }
    }
    let total = started.elapsed();
    latencies.sort();
    println!(
        "fleet: {} of {} devices onboarded (staging -> claim -> move -> JITP -> first publish) in {:.1} s \
         ({:.0} devices/s); claim-to-online p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; {} failed",
        latencies.len(),
        latencies.len() + failures,
        total.as_secs_f64(),
        latencies.len() as f64 / total.as_secs_f64().max(1e-9),
        percentile(&latencies, 0.5).as_secs_f64() * 1000.0,
        percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1000.0,
        failures
    );
    for mut a in agents {
        a.disconnect().await;
    }
    claimer.lock().await.disconnect().await;
    if failures > 0 {
        bail!("{failures} devices did not finish the journey");
    }
    Ok(())
}

async fn connect_retrying(agent: &mut Agent) -> Result<()> {
    let backoff = Backoff { base: Duration::from_millis(50), cap: Duration::from_secs(2) };
    for attempt in 1..=20 {
        match agent.connect().await {
            Ok(()) => return Ok(()),
            Err(f) if attempt == 20 => bail!("{} cannot reach staging: {}", agent.thing_name(), f.detail),
            Err(_) => tokio::time::sleep(backoff.delay(attempt)).await,
        }
    }
    Ok(())
}
