//! TLCP (GB/T 38636-2020, the protocol of GM/T 0024 SSL VPNs), sans-IO: bytes in, bytes out.
//!
//! The server presents two SM2 certificates, a **signing** one and an **encryption** one (told
//! apart by keyUsage). Four suites: `ECC_SM4_CBC_SM3` (0xE013) and `ECC_SM4_GCM_SM3` (0xE053)
//! encrypt the pre-master secret to the encryption certificate with SM2; `ECDHE_SM4_CBC_SM3`
//! (0xE011) and `ECDHE_SM4_GCM_SM3` (0xE051) run the SM2 key exchange protocol (GB/T 32918.3,
//! [`claimlink_gm::sm2::kex`]) between the two encryption keys and fresh ephemerals, the server
//! as initiator, which needs the client's encryption certificate too (client dual
//! certificates). Every signature (ServerKeyExchange, CertificateVerify) is SM2 with SM3 and the
//! GM/T 0009 ID `1234567812345678`. The PRF is TLS 1.2's with HMAC-SM3.
//!
//! What is refused: any record or hello version other than 0x0101, renegotiation (a
//! `no_renegotiation` warning), compression, extensions the client did not send, certificates
//! that are not SM2 or whose keyUsage does not fit their place, more than 10 certificates, a
//! handshake message over 64 KiB. Failures send a fatal alert and end the connection; the
//! [`Error`] says which alert and why, never a key.
//!
//! Certificates are checked by rustls's verifier traits, so a TLCP listener or client uses the
//! same chain rules as its TLS 1.3 twin: the client calls
//! [`rustls::client::danger::ServerCertVerifier::verify_server_cert`] for the signing and the
//! encryption certificate; the server calls
//! [`rustls::server::danger::ClientCertVerifier::verify_client_cert`] for the client's. The
//! proof that each side holds its keys is TLCP's own (the ServerKeyExchange signature, the
//! CertificateVerify, the Finished messages).

mod conn;
mod msg;
mod prf;
mod record;
#[cfg(feature = "tokio")]
mod stream;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use claimlink_gm::{DistId, Sm2PrivateKey, Sm2PublicKey, Sm2Signature};
use der::Decode;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::CertificateDer;
use rustls::server::danger::ClientCertVerifier;
use zeroize::Zeroizing;

pub use conn::{ClientHelloInfo, Connection};
#[cfg(feature = "tokio")]
pub use stream::TlcpStream;

/// The four TLCP cipher suites.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CipherSuite {
    /// `ECC_SM4_CBC_SM3` (0xE013).
    EccSm4CbcSm3,
    /// `ECC_SM4_GCM_SM3` (0xE053).
    EccSm4GcmSm3,
    /// `ECDHE_SM4_CBC_SM3` (0xE011).
    EcdheSm4CbcSm3,
    /// `ECDHE_SM4_GCM_SM3` (0xE051).
    EcdheSm4GcmSm3,
}

impl CipherSuite {
    /// All four, in the order a server of ours prefers: forward secrecy first, GCM before CBC.
    pub const ALL: [CipherSuite; 4] =
        [Self::EcdheSm4GcmSm3, Self::EcdheSm4CbcSm3, Self::EccSm4GcmSm3, Self::EccSm4CbcSm3];

    /// The code point.
    pub fn code(self) -> u16 {
        match self {
            Self::EccSm4CbcSm3 => 0xe013,
            Self::EccSm4GcmSm3 => 0xe053,
            Self::EcdheSm4CbcSm3 => 0xe011,
            Self::EcdheSm4GcmSm3 => 0xe051,
        }
    }

    /// The suite of a code point.
    pub fn from_u16(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.code() == code)
    }

    /// The standard's name (`ECC_SM4_GCM_SM3`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::EccSm4CbcSm3 => "ECC_SM4_CBC_SM3",
            Self::EccSm4GcmSm3 => "ECC_SM4_GCM_SM3",
            Self::EcdheSm4CbcSm3 => "ECDHE_SM4_CBC_SM3",
            Self::EcdheSm4GcmSm3 => "ECDHE_SM4_GCM_SM3",
        }
    }

    /// Tongsuo's name (`ECC-SM2-SM4-GCM-SM3`, ...), for `-cipher`.
    pub fn tongsuo_name(self) -> &'static str {
        match self {
            Self::EccSm4CbcSm3 => "ECC-SM2-SM4-CBC-SM3",
            Self::EccSm4GcmSm3 => "ECC-SM2-SM4-GCM-SM3",
            Self::EcdheSm4CbcSm3 => "ECDHE-SM2-SM4-CBC-SM3",
            Self::EcdheSm4GcmSm3 => "ECDHE-SM2-SM4-GCM-SM3",
        }
    }

    /// A suite by either name, case-insensitive.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(name) || s.tongsuo_name().eq_ignore_ascii_case(name))
    }

    /// Whether the suite runs the SM2 key exchange (and so needs client dual certificates).
    pub fn is_ecdhe(self) -> bool {
        matches!(self, Self::EcdheSm4CbcSm3 | Self::EcdheSm4GcmSm3)
    }

    /// Whether records are SM4-GCM (else SM4-CBC with HMAC-SM3).
    pub fn is_gcm(self) -> bool {
        matches!(self, Self::EccSm4GcmSm3 | Self::EcdheSm4GcmSm3)
    }
}

impl std::fmt::Display for CipherSuite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// TLS alert descriptions TLCP uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AlertDescription {
    /// `close_notify` (0).
    CloseNotify,
    /// `unexpected_message` (10).
    UnexpectedMessage,
    /// `bad_record_mac` (20).
    BadRecordMac,
    /// `record_overflow` (22).
    RecordOverflow,
    /// `handshake_failure` (40).
    HandshakeFailure,
    /// `bad_certificate` (42).
    BadCertificate,
    /// `unsupported_certificate` (43).
    UnsupportedCertificate,
    /// `certificate_expired` (45) and other verifier refusals map to bad_certificate.
    CertificateUnknown,
    /// `illegal_parameter` (47).
    IllegalParameter,
    /// `unknown_ca` (48).
    UnknownCa,
    /// `decode_error` (50).
    DecodeError,
    /// `decrypt_error` (51).
    DecryptError,
    /// `protocol_version` (70).
    ProtocolVersion,
    /// `internal_error` (80).
    InternalError,
    /// `no_renegotiation` (100).
    NoRenegotiation,
    /// `unsupported_extension` (110).
    UnsupportedExtension,
    /// Another code (from a peer).
    Other(u8),
}

impl AlertDescription {
    /// The wire code.
    pub fn code(self) -> u8 {
        match self {
            Self::CloseNotify => 0,
            Self::UnexpectedMessage => 10,
            Self::BadRecordMac => 20,
            Self::RecordOverflow => 22,
            Self::HandshakeFailure => 40,
            Self::BadCertificate => 42,
            Self::UnsupportedCertificate => 43,
            Self::CertificateUnknown => 46,
            Self::IllegalParameter => 47,
            Self::UnknownCa => 48,
            Self::DecodeError => 50,
            Self::DecryptError => 51,
            Self::ProtocolVersion => 70,
            Self::InternalError => 80,
            Self::NoRenegotiation => 100,
            Self::UnsupportedExtension => 110,
            Self::Other(c) => c,
        }
    }

    /// The description of a wire code.
    pub fn from_code(code: u8) -> Self {
        [
            Self::CloseNotify,
            Self::UnexpectedMessage,
            Self::BadRecordMac,
            Self::RecordOverflow,
            Self::HandshakeFailure,
            Self::BadCertificate,
            Self::UnsupportedCertificate,
            Self::CertificateUnknown,
            Self::IllegalParameter,
            Self::UnknownCa,
            Self::DecodeError,
            Self::DecryptError,
            Self::ProtocolVersion,
            Self::InternalError,
            Self::NoRenegotiation,
            Self::UnsupportedExtension,
        ]
        .into_iter()
        .find(|a| a.code() == code)
        .unwrap_or(Self::Other(code))
    }
}

/// Why a TLCP connection failed: the alert sent (or received) and a reason. Never key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("TLCP: {reason} ({alert:?}{})", if *.received { ", from the peer" } else { "" })]
pub struct Error {
    /// The alert.
    pub alert: AlertDescription,
    /// Whether the peer sent it (else we did, or would have).
    pub received: bool,
    /// What was wrong.
    pub reason: String,
}

impl Error {
    pub(crate) fn alert(alert: AlertDescription, reason: impl Into<String>) -> Self {
        Self { alert, received: false, reason: reason.into() }
    }

    pub(crate) fn internal(reason: &str) -> Self {
        Self::alert(AlertDescription::InternalError, reason)
    }
}

/// What a certificate holds that TLCP needs.
#[derive(Debug)]
pub(crate) struct CertInfo {
    pub(crate) public: Sm2PublicKey,
    /// keyUsage bits (bit 0 = digitalSignature ... as in RFC 5280), if present.
    pub(crate) key_usage: Option<u16>,
    pub(crate) is_ca: bool,
}

const KU_DIGITAL_SIGNATURE: u16 = 1 << 0;
const KU_NON_REPUDIATION: u16 = 1 << 1;
const KU_KEY_ENCIPHERMENT: u16 = 1 << 2;
const KU_DATA_ENCIPHERMENT: u16 = 1 << 3;
const KU_KEY_AGREEMENT: u16 = 1 << 4;
const KU_KEY_CERT_SIGN: u16 = 1 << 5;

impl CertInfo {
    pub(crate) fn parse(der: &[u8]) -> Result<Self, Error> {
        use x509_cert::ext::pkix::{BasicConstraints, KeyUsage};
        let bad = |why: &str| Error::alert(AlertDescription::BadCertificate, format!("certificate {why}"));
        let cert = x509_cert::Certificate::from_der(der).map_err(|_| bad("is not valid DER X.509"))?;
        let tbs = cert.tbs_certificate();
        let spki = tbs.subject_public_key_info();
        let ec = der::oid::ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
        let sm2 = der::oid::ObjectIdentifier::new_unwrap(claimlink_gm::oid::SM2_CURVE);
        let curve =
            spki.algorithm.parameters.as_ref().and_then(|p| p.decode_as::<der::oid::ObjectIdentifier>().ok());
        let is_sm2 = spki.algorithm.oid == sm2 || (spki.algorithm.oid == ec && curve == Some(sm2));
        if !is_sm2 {
            return Err(Error::alert(AlertDescription::UnsupportedCertificate, "certificate key is not SM2"));
        }
        let public = Sm2PublicKey::from_sec1_bytes(spki.subject_public_key.raw_bytes())
            .map_err(|_| bad("has an invalid SM2 key"))?;
        let mut key_usage = None;
        let mut is_ca = false;
        for ext in tbs.extensions().map(|e| e.as_slice()).unwrap_or(&[]) {
            if ext.extn_id == der::oid::ObjectIdentifier::new_unwrap("2.5.29.15") {
                let ku = KeyUsage::from_der(ext.extn_value.as_bytes())
                    .map_err(|_| bad("has a malformed keyUsage"))?;
                key_usage = Some(ku.0.bits());
            } else if ext.extn_id == der::oid::ObjectIdentifier::new_unwrap("2.5.29.19") {
                let bc = BasicConstraints::from_der(ext.extn_value.as_bytes())
                    .map_err(|_| bad("has malformed basicConstraints"))?;
                is_ca = bc.ca;
            }
        }
        Ok(Self { public, key_usage, is_ca })
    }

    /// A signing certificate: not a CA; keyUsage, if present, allows signatures.
    pub(crate) fn check_signing(&self) -> Result<(), Error> {
        if self.is_ca {
            return Err(Error::alert(
                AlertDescription::BadCertificate,
                "signing certificate is a CA certificate",
            ));
        }
        match self.key_usage {
            Some(ku) if ku & (KU_DIGITAL_SIGNATURE | KU_NON_REPUDIATION) == 0 => Err(Error::alert(
                AlertDescription::BadCertificate,
                "signing certificate's keyUsage has neither digitalSignature nor nonRepudiation",
            )),
            _ => Ok(()),
        }
    }

    /// An encryption certificate: not a CA; keyUsage present and allowing encipherment or
    /// key agreement.
    pub(crate) fn is_encryption(&self) -> bool {
        !self.is_ca
            && self.key_usage.is_some_and(|ku| {
                ku & (KU_KEY_ENCIPHERMENT | KU_DATA_ENCIPHERMENT | KU_KEY_AGREEMENT) != 0
                    && ku & KU_KEY_CERT_SIGN == 0
            })
    }
}

/// The GM/T 0009 ID every TLCP signature and key exchange uses.
pub(crate) fn gm_id() -> &'static DistId {
    &DistId::GMT_0009_DEFAULT
}

pub(crate) fn verify_sm2(public: &Sm2PublicKey, msg: &[u8], sig: &[u8]) -> Result<(), Error> {
    let sig = Sm2Signature::from_der(sig)
        .map_err(|_| Error::alert(AlertDescription::DecodeError, "signature is not a DER SM2 signature"))?;
    public
        .verify(gm_id(), msg, &sig)
        .map_err(|_| Error::alert(AlertDescription::DecryptError, "signature does not verify"))
}

/// A key with its certificate chain (the certificate first).
pub struct KeyAndChain {
    pub(crate) key: Sm2PrivateKey,
    pub(crate) chain: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for KeyAndChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAndChain").field("certificates", &self.chain.len()).finish_non_exhaustive()
    }
}

/// The certificates and keys one side presents: the signing certificate (with its chain) and,
/// for a server always and for a client of the ECDHE suites, the encryption certificate.
#[derive(Debug)]
pub struct Identity {
    pub(crate) sign: KeyAndChain,
    pub(crate) enc: Option<KeyAndChain>,
}

impl Identity {
    /// The identity of `sign_chain` (signing certificate first, then its CAs) with
    /// `sign_key`, and optionally the encryption certificate with its key. Refused unless each
    /// key is its certificate's and each certificate's keyUsage fits its place.
    pub fn new(
        sign_chain: Vec<CertificateDer<'static>>,
        sign_key: Sm2PrivateKey,
        enc: Option<(CertificateDer<'static>, Sm2PrivateKey)>,
    ) -> Result<Self, Error> {
        let leaf = sign_chain.first().ok_or_else(|| Error::internal("no signing certificate"))?;
        let info = CertInfo::parse(leaf)?;
        info.check_signing()?;
        if info.public != sign_key.public_key() {
            return Err(Error::internal("the signing key is not the signing certificate's"));
        }
        let enc = match enc {
            Some((cert, key)) => {
                let info = CertInfo::parse(&cert)?;
                if !info.is_encryption() {
                    return Err(Error::alert(
                        AlertDescription::BadCertificate,
                        "encryption certificate's keyUsage allows neither encipherment nor key agreement",
                    ));
                }
                if info.public != key.public_key() {
                    return Err(Error::internal("the encryption key is not the encryption certificate's"));
                }
                Some(KeyAndChain { key, chain: vec![cert] })
            }
            None => None,
        };
        Ok(Self { sign: KeyAndChain { key: sign_key, chain: sign_chain }, enc })
    }

    /// The certificates as a Certificate message carries them: signing, encryption (when
    /// there is one), then the signing certificate's CAs.
    pub(crate) fn certificates(&self) -> impl Iterator<Item = &[u8]> {
        std::iter::once(self.sign.chain[0].as_ref())
            .chain(self.enc.iter().map(|e| e.chain[0].as_ref()))
            .chain(self.sign.chain[1..].iter().map(|c| c.as_ref()))
    }

    /// Whether it has an encryption certificate.
    pub fn has_encryption(&self) -> bool {
        self.enc.is_some()
    }
}

/// A session to resume: what both sides keep after a full handshake.
pub(crate) struct Session {
    pub(crate) id: [u8; 32],
    pub(crate) master: Zeroizing<[u8; 48]>,
    pub(crate) suite: CipherSuite,
    pub(crate) peer_certificates: Vec<CertificateDer<'static>>,
    pub(crate) peer_encryption: Option<CertificateDer<'static>>,
    pub(crate) created: Instant,
}

/// Sessions by key, and the keys oldest first.
type Sessions<K> = (HashMap<K, Arc<Session>>, VecDeque<K>);

/// Resumable sessions, bounded: at most `capacity`, each for at most `lifetime`; the oldest is
/// forgotten first.
pub(crate) struct SessionCache<K> {
    inner: Mutex<Sessions<K>>,
    capacity: usize,
    lifetime: Duration,
}

impl<K: std::hash::Hash + Eq + Clone> SessionCache<K> {
    pub(crate) fn new(capacity: usize, lifetime: Duration) -> Self {
        Self { inner: Mutex::new((HashMap::new(), VecDeque::new())), capacity, lifetime }
    }

    pub(crate) fn get(&self, key: &K) -> Option<Arc<Session>> {
        let guard = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.0.get(key).filter(|s| s.created.elapsed() < self.lifetime).cloned()
    }

    pub(crate) fn put(&self, key: K, session: Arc<Session>) {
        if self.capacity == 0 {
            return;
        }
        let mut guard = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (map, order) = &mut *guard;
        if map.insert(key.clone(), session).is_none() {
            order.push_back(key);
        }
        while map.len() > self.capacity {
            match order.pop_front() {
                Some(old) => {
                    map.remove(&old);
                }
                None => break,
            }
        }
    }

    pub(crate) fn remove(&self, key: &K) {
        let mut guard = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.0.remove(key);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner).0.len()
    }
}

/// Sessions a server keeps by default.
pub const DEFAULT_SERVER_SESSIONS: usize = 10_000;
/// How long a session may be resumed.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(3600);

/// A TLCP server's configuration: its dual certificates, suites, client authentication and
/// session cache. Made once per listener and shared.
pub struct ServerConfig {
    pub(crate) identity: Identity,
    pub(crate) suites: Vec<CipherSuite>,
    pub(crate) client_verifier: Option<Arc<dyn ClientCertVerifier>>,
    pub(crate) sessions: SessionCache<[u8; 32]>,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("suites", &self.suites)
            .field("client_auth", &self.client_verifier.is_some())
            .finish_non_exhaustive()
    }
}

impl ServerConfig {
    /// A server presenting `identity` (which must have its encryption certificate), asking
    /// clients for certificates when `client_verifier` is given (required when the verifier
    /// says so; always for the ECDHE suites, which need the client's encryption certificate).
    /// All four suites, ECDHE first; [`DEFAULT_SERVER_SESSIONS`] resumable sessions.
    pub fn new(
        identity: Identity,
        client_verifier: Option<Arc<dyn ClientCertVerifier>>,
    ) -> Result<Self, Error> {
        if identity.enc.is_none() {
            return Err(Error::internal("a TLCP server needs its encryption certificate"));
        }
        Ok(Self {
            identity,
            suites: CipherSuite::ALL.to_vec(),
            client_verifier,
            sessions: SessionCache::new(DEFAULT_SERVER_SESSIONS, SESSION_LIFETIME),
        })
    }

    /// Only these suites, in this order of preference.
    pub fn with_suites(mut self, suites: &[CipherSuite]) -> Self {
        self.suites = suites.to_vec();
        self
    }

    /// At most `n` resumable sessions (0: no resumption).
    pub fn with_session_capacity(mut self, n: usize) -> Self {
        self.sessions = SessionCache::new(n, SESSION_LIFETIME);
        self
    }
}

/// A TLCP client's configuration: suites offered, how the server is verified, the client's
/// certificates if it has any, and the sessions it may resume (one per server name, at most
/// 256).
pub struct ClientConfig {
    pub(crate) suites: Vec<CipherSuite>,
    pub(crate) verifier: Arc<dyn ServerCertVerifier>,
    pub(crate) identity: Option<Identity>,
    pub(crate) sessions: SessionCache<String>,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("suites", &self.suites)
            .field("identity", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

impl ClientConfig {
    /// A client verifying servers with `verifier`, authenticating with `identity` when asked.
    /// It offers the ECDHE suites only when the identity has an encryption certificate (they
    /// need one), GCM before CBC.
    pub fn new(verifier: Arc<dyn ServerCertVerifier>, identity: Option<Identity>) -> Self {
        let dual = identity.as_ref().is_some_and(Identity::has_encryption);
        let suites = CipherSuite::ALL.into_iter().filter(|s| dual || !s.is_ecdhe()).collect();
        Self { suites, verifier, identity, sessions: SessionCache::new(256, SESSION_LIFETIME) }
    }

    /// Offers only these suites, in this order.
    pub fn with_suites(mut self, suites: &[CipherSuite]) -> Self {
        self.suites = suites.to_vec();
        self
    }

    /// No session resumption.
    pub fn without_resumption(mut self) -> Self {
        self.sessions = SessionCache::new(0, SESSION_LIFETIME);
        self
    }
}

/// Whether the first bytes a client sent open a TLCP handshake record (type 22, version
/// 0x0101), as opposed to TLS (version 0x03xx): how one port serves both. Needs 3 bytes.
pub fn is_tlcp_client_hello(first: &[u8]) -> bool {
    first.len() >= 3 && first[0] == 22 && first[1..3] == record::VERSION
}

/// The decoders' entry points for the fuzz target, structure-aware: each handshake message
/// decoder over the raw bytes, then the bytes read as a sequence of records (type, handshake
/// type, length-bounded body), framed with correct headers so that they pass the framing and
/// reach the state machines: a server reading a ClientHello and a client (whose verifier
/// accepts any certificate, so that what follows the Certificate is reached) reading a server's
/// flight. Must never panic; returns whether the client reached the established state, which
/// needs a signature the fuzzer cannot make.
#[doc(hidden)]
pub fn fuzz_decoders(data: &[u8]) -> bool {
    let _ = msg::ClientHello::decode(data);
    let _ = msg::ServerHello::decode(data);
    let _ = msg::decode_certificates(data);
    let _ = msg::decode_certificate_request(data);
    let _ = msg::decode_opaque16(data, "fuzz");
    let _ = msg::decode_ec_params(&mut msg::Reader::new(data, "fuzz"));
    let _ = CertInfo::parse(data);
    let framed = fuzz_frame(data);
    let mut server = Connection::accept();
    let _ = server.read_tls(&framed);
    let _ = server.read_tls(data);
    let mut client = match Connection::client(
        fuzz_client(),
        &rustls::pki_types::ServerName::try_from("fuzz.test")
            .unwrap_or_else(|_| unreachable!("a valid name")),
    ) {
        Ok(c) => c,
        Err(_) => return false,
    };
    let _ = client.take_tls();
    let _ = client.read_tls(&framed);
    !client.is_handshaking() && client.error().is_none()
}

/// Frames fuzz input as TLCP records: per record a type byte, for handshake records a message
/// type byte and a length byte, then that many body bytes.
fn fuzz_frame(mut data: &[u8]) -> Vec<u8> {
    const TYPES: [u8; 4] = [20, 21, 22, 23];
    const MESSAGES: [u8; 10] = [0, 1, 2, 11, 12, 13, 14, 15, 16, 20];
    let mut out = Vec::new();
    while data.len() >= 2 {
        let typ = TYPES[usize::from(data[0]) % 4];
        let (header, rest) = if typ == 22 && data.len() >= 3 {
            let n = usize::from(data[2]).min(data.len() - 3);
            let mut h = vec![MESSAGES[usize::from(data[1]) % MESSAGES.len()]];
            h.extend_from_slice(&(n as u32).to_be_bytes()[1..]);
            (h, &data[3..])
        } else {
            (Vec::new(), &data[1..])
        };
        let n = if typ == 22 {
            usize::from(data.get(2).copied().unwrap_or(0)).min(rest.len())
        } else {
            usize::from(data[1]).min(rest.len())
        };
        let body = &rest[..n];
        let len = header.len() + body.len();
        out.extend_from_slice(&[typ, 1, 1]);
        out.extend_from_slice(&(len as u16).to_be_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(body);
        data = &rest[n..];
    }
    out
}

/// A client configuration for the fuzz target: every suite, a verifier that accepts anything.
fn fuzz_client() -> Arc<ClientConfig> {
    static CONFIG: std::sync::OnceLock<Arc<ClientConfig>> = std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            Arc::new(
                ClientConfig::new(Arc::new(AcceptAny), None)
                    .with_suites(&CipherSuite::ALL)
                    .without_resumption(),
            )
        })
        .clone()
}

#[derive(Debug)]
struct AcceptAny;

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("not used by TLCP".into()))
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("not used by TLCP".into()))
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests;
