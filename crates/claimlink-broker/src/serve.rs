//! The one way every listener of claimlink accepts connections (staging MQTT, the account
//! endpoint, the staging API, the admin API, the portal, `claimlink broker`).
//!
//! What a stranger who opens connections can cost us is bounded here, before any protocol
//! runs: a permit is taken before the TLS handshake (at most
//! [`ListenerLimits::max_connections`] open at once), at most
//! [`ListenerLimits::max_per_source`] from one source address, the handshake has
//! [`ListenerLimits::handshake_timeout`], and an accept error (EMFILE when descriptors run out)
//! is logged and retried with backoff instead of ending the listener. Over a limit, the
//! connection is closed at once.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::listener::TlsSelector;

/// What one listener admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Connections open at once, handshaking or established.
    pub max_connections: usize,
    /// Connections open at once from one source address (IPv6 by /64).
    pub max_per_source: usize,
    /// Time allowed for the TLS handshake.
    pub handshake_timeout: Duration,
}

impl ListenerLimits {
    /// For MQTT listeners: many long-lived devices, possibly behind one NAT.
    pub const MQTT: Self =
        Self { max_connections: 100_000, max_per_source: 20_000, handshake_timeout: Duration::from_secs(10) };
    /// For HTTP listeners (APIs, portal): short requests from people and scripts.
    pub const HTTP: Self =
        Self { max_connections: 1_024, max_per_source: 64, handshake_timeout: Duration::from_secs(10) };
}

/// A byte stream a connection runs on: plain TCP or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An accepted (and, with TLS, handshaken) connection.
pub struct Accepted {
    /// The stream.
    pub io: Box<dyn Io>,
    /// Remote address.
    pub addr: SocketAddr,
    /// The server name the client asked for (TLS).
    pub sni: Option<String>,
    /// The client's certificate chain, leaf first (TLS client authentication).
    pub certificates: Vec<CertificateDer<'static>>,
    /// What the listener's [`crate::TlsSelector::admit`] made of the client.
    pub admission: Option<crate::hooks::PeerAdmission>,
    /// Held for the connection's life: its place under the listener's limits.
    pub permit: Permit,
}

impl std::fmt::Debug for Accepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accepted").field("addr", &self.addr).field("sni", &self.sni).finish_non_exhaustive()
    }
}

/// A connection's place under a listener's limits; released on drop.
#[derive(Debug)]
pub struct Permit {
    _global: OwnedSemaphorePermit,
    source: IpAddr,
    sources: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut sources = self.sources.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = sources.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                sources.remove(&self.source);
            }
        }
    }
}

/// The key a source address is counted under: IPv4 as is, IPv6 by its /64.
fn source_of(addr: &SocketAddr) -> IpAddr {
    match addr.ip() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
        }
    }
}

/// A listener's counters, shared by its connections.
#[derive(Debug)]
struct Gate {
    limits: ListenerLimits,
    global: Arc<Semaphore>,
    sources: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Gate {
    fn new(limits: ListenerLimits) -> Self {
        Self {
            limits,
            global: Arc::new(Semaphore::new(limits.max_connections)),
            sources: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A place for a connection from `addr`, or `None` over a limit.
    fn admit(&self, addr: &SocketAddr) -> Option<Permit> {
        let global = self.global.clone().try_acquire_owned().ok()?;
        let source = source_of(addr);
        let mut sources = self.sources.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = sources.entry(source).or_insert(0);
        if *n >= self.limits.max_per_source {
            return None;
        }
        *n += 1;
        Some(Permit { _global: global, source, sources: self.sources.clone() })
    }
}

/// At most one line a second per listener and kind for what strangers can cause at will (failed
/// handshakes, refused clients); the line says how many were left out since the last one, so a
/// flood costs the log one line a second and the operator still sees its size.
#[derive(Debug, Default)]
struct FailureLog {
    second: AtomicU64,
    left_out: AtomicU64,
}

impl FailureLog {
    /// `Some(left out since the last line)` when this one may be written.
    fn admit(&self) -> Option<u64> {
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let last = self.second.load(Ordering::Relaxed);
        if last != now
            && self.second.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            Some(self.left_out.swap(0, Ordering::Relaxed))
        } else {
            self.left_out.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Accepts on `listener` until `shutdown` turns true, handing each connection that fits the
/// limits (TLS-handshaken when `tls` is given) to `handle` in a task of its own. Ends only at
/// shutdown: accept errors are retried.
pub async fn serve<F, Fut>(
    name: &'static str,
    listener: TcpListener,
    limits: ListenerLimits,
    tls: Option<Arc<dyn TlsSelector>>,
    mut shutdown: watch::Receiver<bool>,
    handle: F,
) where
    F: Fn(Accepted) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let gate = Gate::new(limits);
    let handle = Arc::new(handle);
    let (failed_log, refused_log) = (Arc::new(FailureLog::default()), Arc::new(FailureLog::default()));
    let mut backoff = BACKOFF_MIN;
    let mut refused: u64 = 0;
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => { backoff = BACKOFF_MIN; a }
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS and the like: the listener stays; try again soon.
                    tracing::warn!(listener = name, error = %e, retry_in_ms = backoff.as_millis() as u64, "accept failed");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => return,
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let Some(permit) = gate.admit(&addr) else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(listener = name, %addr, refused, "connection limit reached; closing");
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (tls, handle) = (tls.clone(), handle.clone());
        let (failed_log, refused_log) = (failed_log.clone(), refused_log.clone());
        let timeout = limits.handshake_timeout;
        tokio::spawn(async move {
            let accepted = match tls {
                None => Accepted {
                    io: Box::new(stream),
                    addr,
                    sni: None,
                    certificates: Vec::new(),
                    admission: None,
                    permit,
                },
                Some(tls) => {
                    match tokio::time::timeout(timeout, crate::listener::handshake(stream, &*tls)).await {
                        Ok(Ok((stream, sni, certificates))) => match tls.admit(sni.as_deref(), &certificates)
                        {
                            Ok(admission) => {
                                Accepted { io: stream, addr, sni, certificates, admission, permit }
                            }
                            Err(why) => {
                                // Nothing of the client's protocol has been read; closing is all.
                                if let Some(left_out) = refused_log.admit() {
                                    tracing::info!(listener = name, %addr, reason = %why, left_out, "client refused");
                                }
                                return;
                            }
                        },
                        // rustls has sent the alert; the error says what was wrong (an invalid
                        // key share, a bad certificate signature, a corrupt record, ...).
                        Ok(Err(e)) => {
                            if let Some(left_out) = failed_log.admit() {
                                tracing::warn!(listener = name, %addr, error = %e, left_out, "TLS handshake failed");
                            }
                            return;
                        }
                        Err(_) => {
                            if let Some(left_out) = failed_log.admit() {
                                tracing::warn!(listener = name, %addr, left_out, "TLS handshake timed out");
                            }
                            return;
                        }
                    }
                }
            };
            handle(accepted).await;
        });
    }
}

/// A stream that fails with `TimedOut` once nothing has been read or written for `idle`: for
/// HTTP keep-alive connections, which would otherwise be held open forever.
pub struct IdleTimeout<S> {
    inner: S,
    idle: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl<S> IdleTimeout<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, idle: Duration) -> Self {
        Self { inner, idle, sleep: Box::pin(tokio::time::sleep(idle)) }
    }

    fn progressed(&mut self) {
        self.sleep.as_mut().reset(tokio::time::Instant::now() + self.idle);
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.sleep.as_mut().poll(cx).is_ready()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.progressed();
                }
                Poll::Ready(r)
            }
            Poll::Pending if self.expired(cx) => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "connection idle too long")))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.progressed();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending if self.expired(cx) => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "connection idle too long")))
            }
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_failures_writes_about_one_line_a_second_and_counts_the_rest() {
        let log = FailureLog::default();
        assert_eq!(log.admit(), Some(0), "the first failure is always written");
        let written = (0..10_000).filter(|_| log.admit().is_some()).count();
        // A second boundary may fall inside the loop; a flood never gets more than that.
        assert!(written <= 1, "{written} lines for 10,000 failures");
        let pending = log.left_out.load(Ordering::Relaxed);
        assert!(pending >= 9_999 - 1, "left out {pending}");
        // The next line written reports what was left out since the previous one.
        log.second.store(0, Ordering::Relaxed);
        assert_eq!(log.admit(), Some(pending));
    }

    #[test]
    fn the_gate_caps_connections_per_source_and_in_total() {
        let gate =
            Gate::new(ListenerLimits { max_connections: 3, max_per_source: 2, ..ListenerLimits::HTTP });
        let a: SocketAddr = "192.0.2.1:1000".parse().unwrap_or_else(|_| unreachable!());
        let b: SocketAddr = "192.0.2.2:1000".parse().unwrap_or_else(|_| unreachable!());
        let p1 = gate.admit(&a);
        let p2 = gate.admit(&a);
        assert!(p1.is_some() && p2.is_some());
        assert!(gate.admit(&a).is_none(), "third from one source");
        let p3 = gate.admit(&b);
        assert!(p3.is_some());
        assert!(gate.admit(&b).is_none(), "fourth in total");
        drop(p1);
        assert!(gate.admit(&a).is_some(), "a place freed is a place again");
        drop((p2, p3));
    }

    #[test]
    fn ipv6_sources_count_by_their_64() {
        let gate =
            Gate::new(ListenerLimits { max_connections: 10, max_per_source: 1, ..ListenerLimits::HTTP });
        let x: SocketAddr = "[2001:db8:1:2::1]:1".parse().unwrap_or_else(|_| unreachable!());
        let y: SocketAddr = "[2001:db8:1:2::ffff]:1".parse().unwrap_or_else(|_| unreachable!());
        let z: SocketAddr = "[2001:db8:1:3::1]:1".parse().unwrap_or_else(|_| unreachable!());
        let _px = gate.admit(&x);
        assert!(gate.admit(&y).is_none());
        assert!(gate.admit(&z).is_some());
    }
}
