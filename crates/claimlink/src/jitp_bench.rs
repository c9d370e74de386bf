//! `claimlink bench jitp`: the account endpoint's onboarding rate. An in-process account
//! endpoint on the given registry (SQLite by default, or PostgreSQL), a CA with a JITP
//! template, and N never-seen devices (P-256 certificates made beforehand) connecting with C at
//! a time: TLS handshake, CONNECT (provisioned inside it), one QoS 1 PUBLISH accepted, DISCONNECT.
//! Then the same devices again, now known: the connect rate of provisioned devices.
//!
//! The load generator shares the machine with the server; the figures are what one 2-core box
//! does playing both sides.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use claimlink_broker::Limits;
use claimlink_mqtt::QoS;
use claimlink_mqtt::client::{ClientConnection, ClientEvent, ClientOptions};
use claimlink_pki::profile::YEAR;
use claimlink_pki::{Certificate, Issuer, KeyAlgorithm, PrivateKey, Profile, Signer, Subject, issue, name};
use claimlink_provision::registration::{self, CaApplication};
use claimlink_registry::{CaMode, PolicyName, Store, TemplateKind, TemplateName};
use claimlink_server::{AccountServer, ServerIdentity};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// `bench jitp` arguments.
#[derive(clap::Args)]
pub(crate) struct JitpArgs {
    /// Registry URL (default: a new SQLite file in a temporary directory).
    #[arg(long)]
    database: Option<String>,
    /// Never-seen devices to onboard.
    #[arg(long, default_value_t = 2000)]
    devices: usize,
    /// Devices connecting at the same time.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Devices send no server name (SNI): the CA is registered in DEFAULT mode and the account
    /// is found from it after the handshake.
    #[arg(long)]
    no_sni: bool,
}

fn rng() -> rand_core::UnwrapErr<getrandom::SysRng> {
    rand_core::UnwrapErr(getrandom::SysRng)
}

struct Device {
    name: String,
    config: Arc<rustls::ClientConfig>,
}

const POLICY: &str = r#"{"Version":"2012-10-17","Statement":[
 {"Effect":"Allow","Action":"iot:Connect","Resource":"arn:aws-cn:iot:*:*:client/${iot:Connection.Thing.ThingName}"},
 {"Effect":"Allow","Action":"iot:Publish","Resource":"arn:aws-cn:iot:*:*:topic/${iot:Connection.Thing.ThingName}/*"}]}"#;

const TEMPLATE: &str = r#"{"Parameters":{"AWS::IoT::Certificate::CommonName":{"Type":"String"},"AWS::IoT::Certificate::Id":{"Type":"String"}},
 "Resources":{"thing":{"Type":"AWS::IoT::Thing","Properties":{"ThingName":{"Ref":"AWS::IoT::Certificate::CommonName"}}},
 "certificate":{"Type":"AWS::IoT::Certificate","Properties":{"CertificateId":{"Ref":"AWS::IoT::Certificate::Id"},"Status":"ACTIVE"}},
 "policy":{"Type":"AWS::IoT::Policy","Properties":{"PolicyName":"BenchPolicy"}}}}"#;

fn self_signed_ca(cn: &str) -> Result<(Certificate, PrivateKey)> {
    let key = PrivateKey::generate(KeyAlgorithm::P256, &mut rng())?;
    let subject = Subject::new(name::parse(&format!("CN={cn}"))?, key.public_key(), SystemTime::now(), YEAR);
    let cert = issue(&Issuer { certificate: None, signer: &key }, &Profile::RootCa, &subject, &mut rng())?;
    Ok((cert, key))
}

fn leaf(ca: &(Certificate, PrivateKey), profile: &Profile, dn: &str) -> Result<(Certificate, PrivateKey)> {
    let key = PrivateKey::generate(KeyAlgorithm::P256, &mut rng())?;
    let subject = Subject::new(name::parse(dn)?, key.public_key(), SystemTime::now(), YEAR);
    let cert = issue(&Issuer { certificate: Some(&ca.0), signer: &ca.1 }, profile, &subject, &mut rng())?;
    Ok((cert, key))
}

fn client_config(
    root: &Certificate,
    cert: &Certificate,
    key: &PrivateKey,
) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(root.der().to_vec()))?;
    let der = rustls::pki_types::PrivatePkcs8KeyDer::from(key.to_pkcs8_der()?.to_vec());
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(claimlink_tls::provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![cert.der().to_vec().into()], der.into())?;
    Ok(Arc::new(config))
}

/// Runs a client connection until `stop` says so; errors if the connection ends first.
async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    conn: &mut ClientConnection,
    stop: impl Fn(&ClientEvent) -> bool,
) -> Result<ClientEvent> {
    let mut buf = [0u8; 4096];
    loop {
        while let Some(e) = conn.poll_event() {
            if stop(&e) {
                return Ok(e);
            }
            if matches!(e, ClientEvent::Refused(_) | ClientEvent::Disconnected(_)) {
                bail!("connection ended: {e:?}");
            }
        }
        let out = conn.take_output();
        if !out.is_empty() {
            s.write_all(&out).await?;
        }
        let n =
            tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf)).await.context("timed out")??;
        if n == 0 {
            conn.handle_transport_closed();
        } else {
            conn.handle_input(Instant::now(), &buf[..n]);
        }
    }
}

/// One device's visit: connect, one accepted publish, disconnect. Returns its duration.
async fn visit(addr: std::net::SocketAddr, host: &str, device: &Device) -> Result<Duration> {
    let start = Instant::now();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    // An IP address as the server name: rustls sends no SNI.
    let name = if host == "127.0.0.1" {
        rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into())
    } else {
        rustls::pki_types::ServerName::try_from(host.to_owned())?
    };
    let mut tls = tokio_rustls::TlsConnector::from(device.config.clone()).connect(name, tcp).await?;
    let mut conn = ClientConnection::new(ClientOptions::new(device.name.clone()), Instant::now());
    drive(&mut tls, &mut conn, |e| matches!(e, ClientEvent::Connected { .. })).await?;
    let id =
        conn.publish(Instant::now(), &format!("{}/hello", device.name), "first", QoS::AtLeastOnce, false)?;
    let done = drive(&mut tls, &mut conn, |e| matches!(e, ClientEvent::Published { .. })).await?;
    if let ClientEvent::Published { packet_id, reason } = done
        && (packet_id != id.unwrap_or_default() || reason.is_error())
    {
        bail!("publish refused: {reason:?}");
    }
    conn.disconnect(Instant::now());
    let out = conn.take_output();
    tls.write_all(&out).await?;
    let _ = tls.shutdown().await;
    Ok(start.elapsed())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn wave(
    addr: std::net::SocketAddr,
    host: &str,
    devices: &Arc<Vec<Device>>,
    concurrency: usize,
) -> Result<(Duration, Vec<Duration>, usize)> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (devices, next, host) = (devices.clone(), next.clone(), host.to_owned());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(d) = devices.get(i) else { break };
                match visit(addr, &host, d).await {
                    Ok(t) => latencies.push(t),
                    Err(e) => {
                        failures += 1;
                        if failures <= 3 {
                            eprintln!("{}: {e:#}", d.name);
                        }
                    }
                }
            }
            (latencies, failures)
        });
    }
    let mut all = Vec::new();
    let mut failures = 0;
    while let Some(r) = tasks.join_next().await {
        let (l, f) = r?;
        all.extend(l);
        failures += f;
    }
    let elapsed = start.elapsed();
    all.sort();
    Ok((elapsed, all, failures))
}

/// `claimlink bench jitp`.
pub(crate) fn run(args: &JitpArgs) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let url = args
        .database
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("registry.db").display()));
    let tag = format!("{:08x}", SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?.subsec_nanos());
    let host = format!("bench-{tag}.iot.test");
    let server_ca = self_signed_ca("Bench Endpoint CA")?;
    let (server_cert, server_key) = leaf(
        &server_ca,
        &Profile::TlsServer { dns: vec![host.clone()], ips: vec![std::net::Ipv4Addr::LOCALHOST.into()] },
        &format!("CN={host}"),
    )?;
    let maker = self_signed_ca("Bench Module Maker CA")?;
    eprintln!("making {} device certificates...", args.devices);
    let threads = std::thread::available_parallelism().map_or(2, usize::from);
    let chunk = args.devices.div_ceil(threads).max(1);
    let devices: Vec<Device> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..args.devices)
            .collect::<Vec<_>>()
            .chunks(chunk)
            .map(|ids| {
                let ids = ids.to_vec();
                let (maker, root, tag) = (&maker, &server_ca.0, &tag);
                s.spawn(move || -> Result<Vec<Device>> {
                    ids.iter()
                        .map(|i| {
                            let name = format!("dev-{tag}-{i:07}");
                            let (cert, key) = leaf(maker, &Profile::DeviceBirth, &format!("CN={name}"))?;
                            Ok(Device { name, config: client_config(root, &cert, &key)? })
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow::anyhow!("worker panicked"))?)
            .collect::<Result<Vec<_>>>()
    })?
    .into_iter()
    .flatten()
    .collect();
    let devices = Arc::new(devices);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let store = Store::open(&url).await?;
        let mut tx = store.begin().await?;
        let account = tx.create_account(&format!("bench-{tag}"), &host, "cn-north-1").await?;
        registration::create_policy(&mut tx, &account.id, &PolicyName::new("BenchPolicy")?, POLICY).await?;
        let template = TemplateName::new("bench")?;
        tx.create_template(&account.id, &template, TemplateKind::Jitp, TEMPLATE, true, None).await?;
        let pem = maker.0.to_pem();
        let verification = leaf(&maker, &Profile::DeviceBirth, &format!("CN={}", account.registration_code))?.0;
        let verification_pem = verification.to_pem();
        let mut ca = CaApplication::new(&pem, if args.no_sni { CaMode::Default } else { CaMode::SniOnly });
        ca.auto_registration = true;
        ca.template_name = Some(&template);
        if args.no_sni {
            ca.verification_pem = Some(&verification_pem);
        }
        registration::register_ca(&mut tx, &account, &ca).await?;
        tx.commit().await?;
        let identity = ServerIdentity::new(server_cert.to_pem(), claimlink_pki::pem::private_key_to_pem(&server_key)?.to_string().into());
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        let limits = Limits { max_connections: args.devices + 1000, ..Limits::default() };
        let server = AccountServer::new(store, &identity, limits, shutdown).await?;
        let (mqtt, _) = server.start("127.0.0.1:0".parse()?, "127.0.0.1:0".parse()?).await?;
        let backend = match (url.starts_with("postgres"), args.no_sni) {
            (true, false) => "PostgreSQL",
            (true, true) => "PostgreSQL, no SNI",
            (false, false) => "SQLite",
            (false, true) => "SQLite, no SNI",
        };
        for (label, what) in [("never-seen devices (JITP)", "onboarded"), ("provisioned devices", "connected")] {
            let server_name = if args.no_sni { "127.0.0.1" } else { host.as_str() };
            let (elapsed, latencies, failures) = wave(mqtt, server_name, &devices, args.concurrency).await?;
            let ok = latencies.len();
            println!(
                "{backend}: {label}: {ok} {what} in {:.2} s = {:.0}/s (concurrency {}, failures {failures}); per device p50 {:.1} ms, p99 {:.1} ms",
                elapsed.as_secs_f64(),
                ok as f64 / elapsed.as_secs_f64(),
                args.concurrency,
                percentile(&latencies, 0.5).as_secs_f64() * 1e3,
                percentile(&latencies, 0.99).as_secs_f64() * 1e3,
            );
            if failures > 0 {
                bail!("{failures} devices failed");
            }
        }
        Ok(())
    })
}
