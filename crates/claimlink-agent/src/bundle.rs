//! The device bundle (identity written at the factory) and the agent's persistent settings.
//!
//! A bundle directory holds `device.toml` (ThingName, staging endpoint, file names), the private
//! key, the birth certificate, the issuing chain and the root CA the endpoints' server
//! certificates chain to. The agent keeps its persistent settings (`Endpoint`, `CustomName`,
//! `RootCA`, `KeepAlive`, `LWTConfig`, `LWTMessage`) in `settings.toml` next to them, replaced
//! atomically (write, fsync, rename) so that a crash leaves the old or the new file, never half.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

/// Why a bundle cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// A file is missing or unreadable.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is malformed.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong (never the key material).
        message: String,
    },
    /// Settings could not be saved.
    #[error("cannot save settings to {path}: {source}")]
    Save {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

#[derive(Deserialize)]
struct DeviceToml {
    thing_name: String,
    staging_endpoint: String,
    private_key: String,
    certificate: String,
    certificate_chain: Option<String>,
    root_ca: String,
    /// `tls` (default) or `tlcp`.
    #[serde(default)]
    transport: Option<String>,
    /// TLCP's encryption certificate and key (a dual pair from a KM; needed for the ECDHE suites).
    #[serde(default)]
    encryption_certificate: Option<String>,
    #[serde(default)]
    encryption_key: Option<String>,
}

/// A device identity loaded from a bundle directory. `Debug` never shows the key.
pub struct Bundle {
    /// The bundle directory.
    pub dir: PathBuf,
    /// The ThingName.
    pub thing_name: String,
    /// The factory (staging) endpoint.
    pub staging_endpoint: String,
    /// The birth certificate, PEM.
    pub certificate_pem: String,
    /// The root CA of the endpoints, PEM (the factory default of `RootCA`).
    pub root_ca_pem: String,
    /// The transport of the factory settings: `TLS` or `TLCP`.
    pub transport: String,
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: PrivateKeyDer<'static>,
    /// TLCP's encryption certificate and key, if the bundle has them.
    pub(crate) encryption: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
}

/// A transport name (`TLS`, `TLCP`, any case) in its canonical form.
pub fn transport_name(text: &str) -> Option<&'static str> {
    if text.eq_ignore_ascii_case("tls") {
        Some("TLS")
    } else if text.eq_ignore_ascii_case("tlcp") {
        Some("TLCP")
    } else {
        None
    }
}

impl fmt::Debug for Bundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bundle")
            .field("dir", &self.dir)
            .field("thing_name", &self.thing_name)
            .field("staging_endpoint", &self.staging_endpoint)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<String, BundleError> {
    std::fs::read_to_string(path).map_err(|source| BundleError::Read { path: path.to_owned(), source })
}

fn invalid(path: &Path, message: impl Into<String>) -> BundleError {
    BundleError::Invalid { path: path.to_owned(), message: message.into() }
}

/// Parses PEM certificates (at least one).
pub(crate) fn certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|_| "not PEM certificates".to_owned())?;
    if certs.is_empty() {
        return Err("no certificate in it".into());
    }
    Ok(certs)
}

impl Bundle {
    /// Loads the bundle in `dir`.
    pub fn load(dir: &Path) -> Result<Self, BundleError> {
        let toml_path = dir.join("device.toml");
        let d: DeviceToml =
            toml::from_str(&read(&toml_path)?).map_err(|e| invalid(&toml_path, e.message().to_owned()))?;
        let cert_path = dir.join(&d.certificate);
        let certificate_pem = read(&cert_path)?;
        let mut chain = certificates(&certificate_pem).map_err(|m| invalid(&cert_path, m))?;
        if let Some(c) = &d.certificate_chain {
            let p = dir.join(c);
            chain.extend(certificates(&read(&p)?).map_err(|m| invalid(&p, m))?);
        }
        let key_path = dir.join(&d.private_key);
        let key = PrivateKeyDer::from_pem_slice(read(&key_path)?.as_bytes())
            .map_err(|_| invalid(&key_path, "not a PEM private key"))?;
        let root_path = dir.join(&d.root_ca);
        let root_ca_pem = read(&root_path)?;
        certificates(&root_ca_pem).map_err(|m| invalid(&root_path, m))?;
        let transport = match &d.transport {
            None => "TLS",
            Some(t) => {
                transport_name(t).ok_or_else(|| invalid(&toml_path, "transport must be tls or tlcp"))?
            }
        };
        let encryption = match (&d.encryption_certificate, &d.encryption_key) {
            (None, None) => None,
            (Some(c), Some(k)) => {
                let (cp, kp) = (dir.join(c), dir.join(k));
                let cert = certificates(&read(&cp)?).map_err(|m| invalid(&cp, m))?.remove(0);
                let key = PrivateKeyDer::from_pem_slice(read(&kp)?.as_bytes())
                    .map_err(|_| invalid(&kp, "not a PEM private key"))?;
                Some((cert, key))
            }
            _ => return Err(invalid(&toml_path, "encryption_certificate and encryption_key go together")),
        };
        Ok(Self {
            transport: transport.to_owned(),
            encryption,
            dir: dir.to_owned(),
            thing_name: d.thing_name,
            staging_endpoint: d.staging_endpoint,
            certificate_pem,
            root_ca_pem,
            chain,
            key,
        })
    }
}

/// The persistent settings.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Where to connect (`host[:port]`, port 8883 by default).
    pub endpoint: String,
    /// A name the host may set.
    #[serde(default)]
    pub custom_name: String,
    /// The root CA override, PEM (empty: the bundle's).
    #[serde(default)]
    pub root_ca: String,
    /// Keep-alive in seconds.
    pub keep_alive: u16,
    /// Last-will topic (empty: none).
    #[serde(default)]
    pub lwt_topic: String,
    /// Last-will message.
    #[serde(default)]
    pub lwt_message: String,
    /// The claim ticket staging sent with the `Endpoint` (presented as the MQTT password when
    /// connecting there; empty: none). A secret of sorts: kept with the settings (0600).
    #[serde(default)]
    pub claim_ticket: String,
    /// `TLS` or `TLCP` (empty: the bundle's).
    #[serde(default)]
    pub transport: String,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("endpoint", &self.endpoint)
            .field("custom_name", &self.custom_name)
            .field("keep_alive", &self.keep_alive)
            .field("lwt_topic", &self.lwt_topic)
            .field("claim_ticket", &(!self.claim_ticket.is_empty()).then_some(".."))
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// The factory settings of a bundle.
    pub fn factory(bundle: &Bundle) -> Self {
        Self {
            endpoint: bundle.staging_endpoint.clone(),
            custom_name: String::new(),
            root_ca: String::new(),
            keep_alive: 60,
            lwt_topic: String::new(),
            lwt_message: String::new(),
            claim_ticket: String::new(),
            transport: String::new(),
        }
    }

    /// The settings file of a bundle.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("settings.toml")
    }

    /// Loads the settings, or the factory ones when there are none.
    pub fn load(bundle: &Bundle) -> Result<Self, BundleError> {
        let path = Self::path(&bundle.dir);
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| invalid(&path, e.message().to_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::factory(bundle)),
            Err(source) => Err(BundleError::Read { path, source }),
        }
    }

    /// Saves atomically: a crash leaves the previous file or this one.
    pub fn save(&self, dir: &Path) -> Result<(), BundleError> {
        let path = Self::path(dir);
        let tmp = dir.join(".settings.toml.tmp");
        let text = toml::to_string(self).unwrap_or_default();
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
            Ok(())
        };
        write().map_err(|source| BundleError::Save { path, source })
    }
}

/// Splits `host[:port]` (port 8883 by default).
pub fn split_endpoint(endpoint: &str) -> Option<(&str, u16)> {
    let (host, port) = match endpoint.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().ok().filter(|p| *p > 0)?),
        None => (endpoint, 8883),
    };
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !host.starts_with('.')
        && !host.ends_with('.');
    ok.then_some((host, port))
}
