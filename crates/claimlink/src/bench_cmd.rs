//! `claimlink bench mqtt`: a load generator for any MQTT broker (ours or Mosquitto), so both
//! face the same client. Measures message throughput (fan-in, fan-out), connection handshakes
//! per second, or holds idle connections open for a memory measurement.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use claimlink_mqtt::packet::{Ack, Connect, Publish, Subscribe, SubscriptionOptions};
use claimlink_mqtt::{Packet, Properties, ProtocolVersion, QoS, TopicFilter, decode, encode};
use claimlink_pki::{Certificate, pem};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::files::read_bounded;

const V: ProtocolVersion = ProtocolVersion::V311;

/// `bench mqtt` arguments.
#[derive(clap::Args, Clone)]
pub(crate) struct BenchMqttArgs {
    /// Broker host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Broker port.
    #[arg(long)]
    port: u16,
    /// CA bundle to verify the broker with; enables TLS.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Client certificate chain (PEM) for mutual TLS.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Client private key (PKCS#8 PEM).
    #[arg(long)]
    key: Option<PathBuf>,
    /// What to measure.
    #[arg(long, value_enum, default_value = "throughput")]
    mode: Mode,
    /// Publishing connections.
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Subscribing connections (each subscribes to everything published).
    #[arg(long, default_value_t = 1)]
    subscribers: usize,
    /// QoS of publications and subscriptions (0 or 1).
    #[arg(long, default_value_t = 0)]
    qos: u8,
    /// Payload bytes.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Measured seconds (after one second of warm-up).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Connections for `idle`, concurrent connectors for `handshakes`.
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// Offer only this TLS 1.3 cipher suite (`TLS_SM4_GCM_SM3`, `TLS_AES_128_GCM_SHA256`, ...),
    /// to compare record ciphers on the same certificates.
    #[arg(long, value_name = "IANA_NAME")]
    cipher_suite: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    /// Messages per second delivered to subscribers.
    Throughput,
    /// Complete connections (TLS handshake, CONNECT, CONNACK) per second.
    Handshakes,
    /// Open `--connections` idle connections, report, and hold them for `--seconds`.
    Idle,
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

struct Target {
    addr: String,
    tls: Option<(tokio_rustls::TlsConnector, rustls::pki_types::ServerName<'static>)>,
}

impl Target {
    async fn connect(&self, client_id: &str) -> Result<(Box<dyn Stream>, Vec<u8>)> {
        let tcp = TcpStream::connect(&self.addr).await?;
        tcp.set_nodelay(true)?;
        let mut stream: Box<dyn Stream> = match &self.tls {
            Some((connector, name)) => Box::new(connector.connect(name.clone(), tcp).await?),
            None => Box::new(tcp),
        };
        let connect = Packet::Connect(Box::new(Connect {
            version: V,
            clean_start: true,
            keep_alive: 120,
            client_id: client_id.to_owned(),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        }));
        let mut out = Vec::new();
        encode(&connect, V, &mut out)?;
        stream.write_all(&out).await?;
        let mut buf = Vec::with_capacity(64 * 1024);
        match read_packet(&mut stream, &mut buf).await? {
            Packet::ConnAck(a) if !a.reason.is_error() => Ok((stream, buf)),
            other => bail!("connection refused: {other:?}"),
        }
    }
}

async fn read_packet(stream: &mut Box<dyn Stream>, buf: &mut Vec<u8>) -> Result<Packet> {
    loop {
        if let Some((p, n)) = decode(buf, V, usize::MAX)? {
            buf.drain(..n);
            return Ok(p);
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed by the broker");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn target(args: &BenchMqttArgs) -> Result<Target> {
    let addr = format!("{}:{}", args.host, args.port);
    let Some(ca) = &args.ca else { return Ok(Target { addr, tls: None }) };
    let mut roots = rustls::RootCertStore::empty();
    for c in Certificate::chain_from_pem(&read_bounded(ca, 1 << 20)?)
        .with_context(|| format!("{}", ca.display()))?
    {
        roots.add(rustls::pki_types::CertificateDer::from(c.der().to_vec()))?;
    }
    let mut provider = claimlink_tls::provider();
    if let Some(only) = &args.cipher_suite {
        provider.cipher_suites.retain(|s| claimlink_tls::suite_name(s.suite()) == Some(only.as_str()));
        if provider.cipher_suites.is_empty() {
            bail!("--cipher-suite {only}: not a cipher suite we speak");
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => {
            let chain = Certificate::chain_from_pem(&read_bounded(cert, 1 << 20)?)?
                .iter()
                .map(|c| rustls::pki_types::CertificateDer::from(c.der().to_vec()))
                .collect();
            let key = pem::private_key_from_pem(&read_bounded(key, 1 << 20)?, None)?;
            let der = rustls::pki_types::PrivatePkcs8KeyDer::from(key.to_pkcs8_der()?.to_vec());
            builder.with_client_auth_cert(chain, der.into())?
        }
        _ => builder.with_no_client_auth(),
    };
    let name = rustls::pki_types::ServerName::try_from(args.host.clone())?;
    Ok(Target { addr, tls: Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name)) })
}

/// `claimlink bench mqtt`.
pub(crate) fn run(args: &BenchMqttArgs) -> Result<()> {
    if args.qos > 1 {
        bail!("--qos must be 0 or 1");
    }
    let target = Arc::new(target(args)?);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        match args.mode {
            Mode::Throughput => throughput(args, target).await,
            Mode::Handshakes => handshakes(args, target).await,
            Mode::Idle => idle(args, target).await,
        }
    })
}

async fn throughput(args: &BenchMqttArgs, target: Arc<Target>) -> Result<()> {
    let qos = if args.qos == 1 { QoS::AtLeastOnce } else { QoS::AtMostOnce };
    let received = Arc::new(AtomicU64::new(0));
    let run = uuid_like();
    let filter = format!("bench/{run}/#");
    for i in 0..args.subscribers {
        let (mut stream, mut buf) = target.connect(&format!("bench-sub-{run}-{i}")).await?;
        let sub = Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: vec![(TopicFilter::new(filter.clone())?, SubscriptionOptions::qos(qos))],
        });
        let mut out = Vec::new();
        encode(&sub, V, &mut out)?;
        stream.write_all(&out).await?;
        read_packet(&mut stream, &mut buf).await?; // SUBACK
        let received = received.clone();
        tokio::spawn(async move {
            let mut acks = Vec::new();
            while let Ok(p) = read_packet(&mut stream, &mut buf).await {
                if let Packet::Publish(m) = p {
                    received.fetch_add(1, Ordering::Relaxed);
                    if let Some(id) = m.packet_id {
                        let _ = encode(&Packet::PubAck(Ack::new(id)), V, &mut acks);
                    }
                }
                if !acks.is_empty() && buf.is_empty() {
                    if stream.write_all(&acks).await.is_err() {
                        break;
                    }
                    acks.clear();
                }
            }
        });
    }
    let payload = Bytes::from(vec![0x42u8; args.payload]);
    for i in 0..args.publishers {
        let (stream, buf) = target.connect(&format!("bench-pub-{run}-{i}")).await?;
        let topic = format!("bench/{run}/{i}");
        tokio::spawn(publisher(stream, buf, topic, qos, payload.clone()));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start_count = received.load(Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let got = received.load(Ordering::Relaxed) - start_count;
    let rate = got as f64 / start.elapsed().as_secs_f64();
    println!(
        "throughput qos={} payload={} publishers={} subscribers={}: {rate:.0} msg/s delivered",
        args.qos, args.payload, args.publishers, args.subscribers
    );
    Ok(())
}

/// Publishes as fast as the connection allows: QoS 0 in batches, QoS 1 with up to 64 in flight.
async fn publisher(
    stream: Box<dyn Stream>,
    buf: Vec<u8>,
    topic: String,
    qos: QoS,
    payload: Bytes,
) -> Result<()> {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let window = Arc::new(tokio::sync::Semaphore::new(64));
    if qos == QoS::AtLeastOnce {
        let window = window.clone();
        tokio::spawn(async move {
            let mut buf = buf;
            let mut chunk = vec![0u8; 16 * 1024];
            loop {
                while let Ok(Some((p, n))) = decode(&buf, V, usize::MAX) {
                    buf.drain(..n);
                    if matches!(p, Packet::PubAck(_)) {
                        window.add_permits(1);
                    }
                }
                match rd.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        });
    }
    let mut id: u16 = 0;
    let mut out = Vec::with_capacity(32 * (topic.len() + payload.len() + 8));
    loop {
        out.clear();
        for _ in 0..32 {
            let packet_id = if qos == QoS::AtLeastOnce {
                window.acquire().await?.forget();
                id = id.checked_add(1).unwrap_or(1);
                Some(id)
            } else {
                None
            };
            let m = Publish {
                dup: false,
                qos,
                retain: false,
                topic: topic.clone(),
                packet_id,
                properties: Properties::default(),
                payload: payload.clone(),
            };
            encode(&Packet::Publish(m), V, &mut out)?;
        }
        wr.write_all(&out).await?;
    }
}

async fn handshakes(args: &BenchMqttArgs, target: Arc<Target>) -> Result<()> {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..args.connections {
        let (target, done, failed) = (target.clone(), done.clone(), failed.clone());
        tasks.spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                match target.connect(&format!("bench-hs-{w}-{n}")).await {
                    Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
                n += 1;
            }
        });
    }
    let start = Instant::now();
    while tasks.join_next().await.is_some() {}
    let rate = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    println!(
        "handshakes concurrency={}: {rate:.0} connections/s ({} failed)",
        args.connections,
        failed.load(Ordering::Relaxed)
    );
    Ok(())
}

async fn idle(args: &BenchMqttArgs, target: Arc<Target>) -> Result<()> {
    let mut held = Vec::with_capacity(args.connections);
    let run = uuid_like();
    for i in 0..args.connections {
        held.push(
            target
                .connect(&format!("bench-idle-{run}-{i}"))
                .await
                .with_context(|| format!("connection {i}"))?,
        );
    }
    println!("idle: {} connections open", held.len());
    use std::io::Write;
    let _ = std::io::stdout().flush();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    Ok(())
}

fn uuid_like() -> String {
    let mut b = [0u8; 4];
    rand_core::Rng::fill_bytes(&mut crate::ca::rng(), &mut b);
    hex::encode(b)
}

/// `bench ocsp` arguments.
#[derive(clap::Args, Clone)]
pub(crate) struct BenchOcspArgs {
    /// Responder address (host:port).
    #[arg(long)]
    addr: std::net::SocketAddr,
    /// A DER OCSP request to send (`openssl ocsp -reqout`).
    #[arg(long)]
    request: std::path::PathBuf,
    /// Clients at once, each one request per fresh TCP connection after the other.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
}

/// `claimlink bench ocsp`: OCSP requests over HTTP/1.0-style connections (one request each, as
/// `openssl ocsp -url` sends them) against any responder; counts successful responses.
pub(crate) fn ocsp(args: &BenchOcspArgs) -> Result<()> {
    use std::io::{Read, Write};
    let body = std::fs::read(&args.request)?;
    let head = format!(
        "POST / HTTP/1.0\r\nHost: {}\r\nContent-Type: application/ocsp-request\r\nContent-Length: {}\r\n\r\n",
        args.addr,
        body.len()
    );
    let mut message = head.into_bytes();
    message.extend_from_slice(&body);
    let message = std::sync::Arc::new(message);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let threads: Vec<_> = (0..args.connections.max(1))
        .map(|_| {
            let (message, stop, addr) = (message.clone(), stop.clone(), args.addr);
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0u64, 0u64);
                let mut buf = Vec::with_capacity(4096);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    buf.clear();
                    let good = std::net::TcpStream::connect(addr)
                        .and_then(|mut s| {
                            s.write_all(&message)?;
                            s.read_to_end(&mut buf)
                        })
                        .is_ok()
                        && buf
                            .windows(4)
                            .position(|w| w == b"\r\n\r\n")
                            .and_then(|i| buf.get(i + 4..))
                            .is_some_and(|der| der.windows(3).take(8).any(|w| w == [0x0a, 0x01, 0x00]));
                    if good { ok += 1 } else { failed += 1 }
                }
                (ok, failed)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(args.seconds));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) =
        threads.into_iter().filter_map(|t| t.join().ok()).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    println!(
        "{} responses/s ({ok} successful, {failed} failed in {} s)",
        ok / args.seconds.max(1),
        args.seconds
    );
    Ok(())
}
