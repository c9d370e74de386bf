//! Fetching the CRLs of CAs registered in accounts: the account endpoint learns their URLs
//! from the cRLDistributionPoints of the certificates it admits under those CAs
//! ([`AccountServer::crl_sources`]), and this task fetches each one when it is first seen and
//! then every `interval`, applying what it gets exactly as a `PUT /crls` upload would (checked
//! against the registered CA, refused if not newer, live sessions it revokes ended at once).
//!
//! Bounds: a CRL is read up to `max_bytes` (a larger one is refused before or while it is read
//! and changes nothing), each fetch has `timeout` in all, fetches run one at a time, and the
//! URLs are those `AccountServer` keeps (16 per account by default). Only `http://` URLs are
//! followed, as RFC 5280 publishes them; the answer is never shown to anyone but the CRL parser.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use claimlink_server::AccountServer;
use claimlink_service::revocation::CrlUploadError;

/// How the fetcher is bounded (`[revocation]` of the configuration file).
#[derive(Debug, Clone, Copy)]
pub(crate) struct FetchLimits {
    pub(crate) interval: Duration,
    pub(crate) max_bytes: u64,
    pub(crate) timeout: Duration,
}

impl Default for FetchLimits {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(300),
            max_bytes: claimlink_pki::crl::DEFAULT_MAX_CRL_LEN as u64,
            timeout: Duration::from_secs(30),
        }
    }
}

/// GETs `url` and returns its body, at most `limits.max_bytes` of it. (Blocking.)
pub(crate) fn fetch(url: &str, limits: &FetchLimits) -> Result<Vec<u8>> {
    if !url.starts_with("http://") {
        bail!("only http:// CRL distribution points are fetched");
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(limits.timeout))
        .max_redirects(0)
        .build()
        .into();
    let mut response = agent.get(url).call().map_err(|e| anyhow::anyhow!("{e}"))?;
    let status = response.status().as_u16();
    if status != 200 {
        bail!("HTTP {status}");
    }
    let declared = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_bytes) {
        bail!("the CRL is larger than {} bytes; not read", limits.max_bytes);
    }
    response
        .body_mut()
        .with_config()
        .limit(limits.max_bytes)
        .read_to_vec()
        .map_err(|e| anyhow::anyhow!("the CRL could not be read within {} bytes: {e}", limits.max_bytes))
}

/// Runs the fetcher for `server` until the runtime ends.
pub(crate) fn spawn(server: AccountServer, limits: FetchLimits) {
    tokio::spawn(async move {
        let mut last: HashMap<(String, String), Instant> = HashMap::new();
        loop {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1).min(limits.interval)) => {}
                () = server.crl_source_added() => {}
            }
            for (account, url) in server.crl_sources() {
                let key = (account.to_string(), url.clone());
                if last.get(&key).is_some_and(|t| t.elapsed() < limits.interval) {
                    continue;
                }
                last.insert(key, Instant::now());
                let u = url.clone();
                let fetched = tokio::task::spawn_blocking(move || fetch(&u, &limits)).await;
                let body = match fetched {
                    Ok(Ok(body)) => body,
                    Ok(Err(e)) => {
                        tracing::warn!(account = %account, url = %url, error = %e, "CRL fetch refused or failed; nothing changed");
                        continue;
                    }
                    Err(_) => continue,
                };
                match server.apply_crl(&account, &body, "crl-fetch").await {
                    Ok(applied) => tracing::info!(
                        account = %account, url = %url, number = ?applied.number,
                        revoked = applied.revoked, dropped = applied.dropped, "fetched CRL applied"
                    ),
                    Err(CrlUploadError::Invalid(why)) if why.contains("not newer") => {
                        tracing::debug!(account = %account, url = %url, "fetched CRL unchanged");
                    }
                    Err(CrlUploadError::Invalid(why)) => {
                        tracing::warn!(account = %account, url = %url, reason = %why, "fetched CRL refused; nothing changed");
                    }
                    Err(CrlUploadError::Internal) => {
                        tracing::error!(account = %account, url = %url, "fetched CRL could not be stored");
                    }
                }
            }
            // Forget what is no longer a source (an account's URLs are bounded, so is this).
            let live: std::collections::HashSet<(String, String)> =
                server.crl_sources().into_iter().map(|(a, u)| (a.to_string(), u)).collect();
            last.retain(|k, _| live.contains(k));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A one-shot HTTP server answering with `head` and `body_len` bytes of body.
    fn serve_once(head: String, body_len: usize) -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(head.as_bytes());
            let chunk = vec![0x30u8; 64 * 1024];
            let mut left = body_len;
            while left > 0 {
                let n = left.min(chunk.len());
                if s.write_all(&chunk[..n]).is_err() {
                    return;
                }
                left -= n;
            }
        });
        format!("http://{addr}/crl")
    }

    fn limits(max: u64) -> FetchLimits {
        FetchLimits { interval: Duration::from_secs(1), max_bytes: max, timeout: Duration::from_secs(5) }
    }

    #[test]
    fn an_oversized_crl_is_refused_whether_declared_or_streamed() {
        let url = serve_once(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", 10 << 20), 0);
        let e = fetch(&url, &limits(1 << 20)).unwrap_err().to_string();
        assert!(e.contains("larger than 1048576"), "{e}");
        // No length given: read until the limit, then refused.
        let url = serve_once("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".into(), 3 << 20);
        let e = fetch(&url, &limits(1 << 20)).unwrap_err().to_string();
        assert!(e.contains("within 1048576 bytes"), "{e}");
        // Within the limit it is read whole.
        let url = serve_once("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".into(), 1000);
        assert_eq!(fetch(&url, &limits(1 << 20)).unwrap().len(), 1000);
    }

    #[test]
    fn redirects_errors_and_other_schemes_are_not_followed() {
        let url = serve_once(
            "HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/\r\nContent-Length: 0\r\n\r\n".into(),
            0,
        );
        assert!(fetch(&url, &limits(1 << 20)).unwrap_err().to_string().contains("HTTP 302"));
        let url = serve_once("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".into(), 0);
        assert!(fetch(&url, &limits(1 << 20)).unwrap_err().to_string().contains("HTTP 404"));
        assert!(fetch("file:///etc/passwd", &limits(1 << 20)).is_err());
        assert!(fetch("https://example.invalid/crl", &limits(1 << 20)).is_err());
    }
}
