//! Certificate revocation lists (RFC 5280 section 5): full and delta CRLs, signed with SM2 or
//! ECDSA through a [`Signer`], built by streaming DER and read without an object per entry.
//!
//! Why not `x509-cert`'s `CertificateList`: a CRL of a million entries would be a million
//! `RevokedCert`s, each with a heap-allocated serial and extension list, built to be encoded once
//! or decoded to answer "is this serial in it". Here a CRL is written entry by entry into one
//! buffer, and read by walking its DER in place: [`Crl::from_der`] checks every byte once and
//! keeps offsets, [`Crl::entries`] yields plain values, and [`RevokedSerials`] is one sorted array
//! of fixed-size serials (20 bytes each) that answers by binary search.

use std::ops::Range;
use std::time::{Duration, SystemTime};

use claimlink_gm::DistId;
use der::Encode;

use crate::SignatureAlgorithm;
use crate::cert::Certificate;
use crate::key::{KeyError, Signer};

/// Largest CRL accepted by default, in DER bytes: a million entries with 16-byte serials and a
/// reason code each take about 51 MB.
pub const DEFAULT_MAX_CRL_LEN: usize = 64 << 20;

/// Longest serial number RFC 5280 allows (section 4.1.2.2), in octets.
pub const MAX_SERIAL_LEN: usize = 20;

/// Errors of building, reading and checking CRLs. Messages name the problem, never key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CrlError {
    /// The CRL is larger than the limit given.
    #[error("CRL is {len} bytes, more than the {max} allowed")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes are not a well-formed CRL; `what` says where it went wrong.
    #[error("malformed CRL: {what}")]
    Malformed {
        /// The part that did not parse.
        what: &'static str,
    },
    /// A reason code RFC 5280 does not define (7 is unused; 11 and above do not exist).
    #[error("unknown CRL reason code {0}")]
    UnknownReason(u8),
    /// A reason name that is not one of RFC 5280's.
    #[error("unknown CRL reason {0:?} (one of {names})", names = Reason::NAMES)]
    UnknownReasonName(String),
    /// A serial number that is empty, negative or longer than 20 octets.
    #[error("invalid certificate serial number")]
    BadSerial,
    /// The CRL carries a critical extension this implementation does not know.
    #[error("CRL has an unknown critical extension")]
    UnknownCriticalExtension,
    /// The CRL's issuer name is not the certificate's subject.
    #[error("CRL issuer does not match the CA certificate")]
    IssuerMismatch,
    /// The CRL was signed with an algorithm that is not supported.
    #[error("unsupported CRL signature algorithm")]
    UnsupportedAlgorithm,
    /// The signature does not verify under the CA's key.
    #[error("CRL signature does not verify")]
    BadSignature,
    /// nextUpdate is not after thisUpdate.
    #[error("nextUpdate must be after thisUpdate")]
    EmptyValidity,
    /// A delta CRL was applied to a base it does not extend.
    #[error("delta CRL extends base CRL {base}, not {have}")]
    DeltaBaseMismatch {
        /// The base the delta names.
        base: u64,
        /// The CRL number it was applied to.
        have: u64,
    },
    /// A CRL no newer than the last one applied for its CA.
    #[error("CRL {number} is not newer than CRL {last}, already applied")]
    Stale {
        /// Its number.
        number: u64,
        /// The number applied before.
        last: u64,
    },
    /// Signing failed.
    #[error("signing the CRL failed: {0}")]
    Signing(#[from] KeyError),
}

/// Why a certificate was revoked: RFC 5280 section 5.3.1's CRLReason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Reason {
    /// unspecified (0). RFC 5280 recommends omitting the extension instead.
    Unspecified,
    /// keyCompromise (1).
    KeyCompromise,
    /// cACompromise (2).
    CaCompromise,
    /// affiliationChanged (3).
    AffiliationChanged,
    /// superseded (4).
    Superseded,
    /// cessationOfOperation (5).
    CessationOfOperation,
    /// certificateHold (6): suspended, may be released by a delta's removeFromCRL.
    CertificateHold,
    /// removeFromCRL (8): in delta CRLs only, lifts a hold.
    RemoveFromCrl,
    /// privilegeWithdrawn (9).
    PrivilegeWithdrawn,
    /// aACompromise (10).
    AaCompromise,
}

impl Reason {
    const ALL: [Reason; 10] = [
        Reason::Unspecified,
        Reason::KeyCompromise,
        Reason::CaCompromise,
        Reason::AffiliationChanged,
        Reason::Superseded,
        Reason::CessationOfOperation,
        Reason::CertificateHold,
        Reason::RemoveFromCrl,
        Reason::PrivilegeWithdrawn,
        Reason::AaCompromise,
    ];
    const NAMES: &'static str = "unspecified keyCompromise cACompromise affiliationChanged superseded \
                                 cessationOfOperation certificateHold removeFromCRL privilegeWithdrawn aACompromise";

    /// The ENUMERATED value.
    pub fn code(self) -> u8 {
        match self {
            Self::Unspecified => 0,
            Self::KeyCompromise => 1,
            Self::CaCompromise => 2,
            Self::AffiliationChanged => 3,
            Self::Superseded => 4,
            Self::CessationOfOperation => 5,
            Self::CertificateHold => 6,
            Self::RemoveFromCrl => 8,
            Self::PrivilegeWithdrawn => 9,
            Self::AaCompromise => 10,
        }
    }

    /// The reason of an ENUMERATED value; 7 and anything above 10 are refused.
    pub fn from_code(code: u8) -> Result<Self, CrlError> {
        Self::ALL.into_iter().find(|r| r.code() == code).ok_or(CrlError::UnknownReason(code))
    }

    /// RFC 5280's name (`keyCompromise`), as OpenSSL prints it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::KeyCompromise => "keyCompromise",
            Self::CaCompromise => "cACompromise",
            Self::AffiliationChanged => "affiliationChanged",
            Self::Superseded => "superseded",
            Self::CessationOfOperation => "cessationOfOperation",
            Self::CertificateHold => "certificateHold",
            Self::RemoveFromCrl => "removeFromCRL",
            Self::PrivilegeWithdrawn => "privilegeWithdrawn",
            Self::AaCompromise => "aACompromise",
        }
    }

    /// The reason called `name` (case-insensitive, as RFC 5280 or OpenSSL spell it).
    pub fn from_name(name: &str) -> Result<Self, CrlError> {
        Self::ALL
            .into_iter()
            .find(|r| r.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| CrlError::UnknownReasonName(name.chars().take(64).collect()))
    }
}

/// A certificate serial number: its magnitude, big-endian, left-padded to 20 bytes, so that the
/// byte order is the numeric order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial([u8; MAX_SERIAL_LEN]);

impl Serial {
    /// From the content octets of a DER INTEGER (positive; a leading zero octet allowed).
    pub fn from_der_content(bytes: &[u8]) -> Result<Self, CrlError> {
        let Some(&first) = bytes.first() else { return Err(CrlError::BadSerial) };
        if first & 0x80 != 0 {
            return Err(CrlError::BadSerial);
        }
        Self::from_magnitude(bytes)
    }

    /// From big-endian magnitude bytes (leading zeros ignored).
    pub fn from_magnitude(bytes: &[u8]) -> Result<Self, CrlError> {
        let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
        let digits = &bytes[start..];
        if digits.is_empty() || digits.len() > MAX_SERIAL_LEN {
            // Zero is not a valid serial (RFC 5280: positive); more than 20 octets is not allowed.
            return Err(CrlError::BadSerial);
        }
        let mut out = [0u8; MAX_SERIAL_LEN];
        out[MAX_SERIAL_LEN - digits.len()..].copy_from_slice(digits);
        Ok(Self(out))
    }

    /// From hex (as `openssl x509 -serial` prints it, colons allowed).
    pub fn from_hex(hex: &str) -> Result<Self, CrlError> {
        let clean: String = hex.chars().filter(|c| *c != ':').collect();
        if clean.len() > 2 * (MAX_SERIAL_LEN + 1) {
            return Err(CrlError::BadSerial);
        }
        let padded = if clean.len() % 2 == 1 { format!("0{clean}") } else { clean };
        let bytes = hex::decode(padded).map_err(|_| CrlError::BadSerial)?;
        Self::from_magnitude(&bytes)
    }

    /// The serial of `cert`.
    pub fn of(cert: &Certificate) -> Result<Self, CrlError> {
        Self::from_der_content(cert.inner().tbs_certificate().serial_number().as_bytes())
    }

    /// Upper-case hex of the magnitude, no leading zero octets.
    pub fn to_hex(&self) -> String {
        hex::encode_upper(self.magnitude())
    }

    fn magnitude(&self) -> &[u8] {
        let start = self.0.iter().position(|&b| b != 0).unwrap_or(MAX_SERIAL_LEN - 1);
        &self.0[start..]
    }

    /// Writes the DER INTEGER (tag, length, content with a leading zero if the top bit is set).
    pub(crate) fn write_der(&self, out: &mut Vec<u8>) {
        let m = self.magnitude();
        let pad = m[0] & 0x80 != 0;
        out.push(0x02);
        out.push((m.len() + usize::from(pad)) as u8);
        if pad {
            out.push(0);
        }
        out.extend_from_slice(m);
    }
}

impl std::fmt::Debug for Serial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Serial({})", self.to_hex())
    }
}

/// One revoked certificate: what a CRL entry says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revocation {
    /// The certificate's serial number.
    pub serial: Serial,
    /// When it was revoked (second precision on the wire).
    pub revoked_at: SystemTime,
    /// Why, when given.
    pub reason: Option<Reason>,
}

/// What a CRL says about itself.
#[derive(Debug, Clone, Copy)]
pub struct CrlParams {
    /// thisUpdate.
    pub this_update: SystemTime,
    /// nextUpdate (always written: RFC 5280 requires it of conforming CAs).
    pub next_update: SystemTime,
    /// cRLNumber, increasing with every CRL of this CA (full and delta share the sequence).
    pub number: u64,
    /// For a delta CRL, the number of the full CRL it extends (deltaCRLIndicator).
    pub delta_base: Option<u64>,
}

// OIDs of the CRL extensions, as DER content octets.
const OID_CRL_NUMBER: &[u8] = &[0x55, 0x1d, 0x14]; // 2.5.29.20
const OID_REASON: &[u8] = &[0x55, 0x1d, 0x15]; // 2.5.29.21
const OID_INVALIDITY_DATE: &[u8] = &[0x55, 0x1d, 0x18]; // 2.5.29.24
const OID_DELTA_INDICATOR: &[u8] = &[0x55, 0x1d, 0x1b]; // 2.5.29.27
const OID_ISSUING_DP: &[u8] = &[0x55, 0x1d, 0x1c]; // 2.5.29.28
const OID_AKI: &[u8] = &[0x55, 0x1d, 0x23]; // 2.5.29.35
const OID_FRESHEST_CRL: &[u8] = &[0x55, 0x1d, 0x2e]; // 2.5.29.46

/// Builds and signs a CRL of `issuer` (its subject becomes the CRL's issuer, its key the
/// authorityKeyIdentifier) over `entries`, streamed: nothing per entry is kept but its bytes.
pub fn build(
    issuer: &Certificate,
    signer: &dyn Signer,
    params: &CrlParams,
    entries: impl IntoIterator<Item = Revocation>,
) -> Result<Vec<u8>, CrlError> {
    if params.next_update <= params.this_update {
        return Err(CrlError::EmptyValidity);
    }
    if issuer.public_key().ok().as_ref() != Some(&signer.public_key()) {
        return Err(CrlError::IssuerMismatch);
    }
    let alg = signer.signature_algorithm();
    let alg_der = alg.identifier().to_der().map_err(|_| CrlError::UnsupportedAlgorithm)?;
    let issuer_der = issuer.subject().to_der().map_err(|_| CrlError::Malformed { what: "issuer name" })?;

    let mut revoked = Vec::new();
    let mut entry = Vec::with_capacity(64);
    for r in entries {
        entry.clear();
        r.serial.write_der(&mut entry);
        write_time(r.revoked_at, &mut entry)?;
        if let Some(reason) = r.reason {
            // SEQUENCE OF Extension { SEQUENCE { OID reasonCode, OCTET STRING { ENUMERATED } } }
            entry.extend_from_slice(&[
                0x30, 0x0c, 0x30, 0x0a, 0x06, 0x03, 0x55, 0x1d, 0x15, 0x04, 0x03, 0x0a, 0x01,
            ]);
            entry.push(reason.code());
        }
        tlv(0x30, &entry, &mut revoked);
    }

    let mut exts = Vec::new();
    let key_id = signer.public_key().key_identifier();
    let mut aki = vec![0x30, 0x16, 0x80, 0x14];
    aki.extend_from_slice(&key_id);
    extension(OID_AKI, false, &aki, &mut exts);
    extension(OID_CRL_NUMBER, false, &integer_u64(params.number), &mut exts);
    if let Some(base) = params.delta_base {
        extension(OID_DELTA_INDICATOR, true, &integer_u64(base), &mut exts);
    }

    let mut tbs_body = vec![0x02, 0x01, 0x01]; // version v2
    tbs_body.extend_from_slice(&alg_der);
    tbs_body.extend_from_slice(&issuer_der);
    write_time(params.this_update, &mut tbs_body)?;
    write_time(params.next_update, &mut tbs_body)?;
    if !revoked.is_empty() {
        tlv(0x30, &revoked, &mut tbs_body);
    }
    drop(revoked);
    let mut ext_seq = Vec::new();
    tlv(0x30, &exts, &mut ext_seq);
    tlv(0xa0, &ext_seq, &mut tbs_body);
    let mut tbs = Vec::with_capacity(tbs_body.len() + 8);
    tlv(0x30, &tbs_body, &mut tbs);
    drop(tbs_body);

    let signature = signer.sign(&tbs)?;
    let mut bits = Vec::with_capacity(signature.len() + 1);
    bits.push(0);
    bits.extend_from_slice(&signature);
    let mut body = tbs;
    body.extend_from_slice(&alg_der);
    tlv(0x03, &bits, &mut body);
    let mut out = Vec::with_capacity(body.len() + 8);
    tlv(0x30, &body, &mut out);
    Ok(out)
}

pub(crate) fn extension(oid: &[u8], critical: bool, value: &[u8], out: &mut Vec<u8>) {
    let mut e = Vec::with_capacity(value.len() + 16);
    tlv(0x06, oid, &mut e);
    if critical {
        e.extend_from_slice(&[0x01, 0x01, 0xff]);
    }
    tlv(0x04, value, &mut e);
    tlv(0x30, &e, out);
}

fn integer_u64(n: u64) -> Vec<u8> {
    let bytes = n.to_be_bytes();
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(7);
    let mut content = Vec::with_capacity(9);
    if bytes[start] & 0x80 != 0 {
        content.push(0);
    }
    content.extend_from_slice(&bytes[start..]);
    let mut out = Vec::with_capacity(11);
    tlv(0x02, &content, &mut out);
    out
}

pub(crate) fn tlv(tag: u8, content: &[u8], out: &mut Vec<u8>) {
    out.push(tag);
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes = (n as u64).to_be_bytes();
        let start = bytes.iter().position(|&b| b != 0).unwrap_or(7);
        out.push(0x80 | (8 - start) as u8);
        out.extend_from_slice(&bytes[start..]);
    }
    out.extend_from_slice(content);
}

/// UTCTime through 2049, GeneralizedTime from 2050 (RFC 5280 section 5.1.2.4).
fn write_time(t: SystemTime, out: &mut Vec<u8>) -> Result<(), CrlError> {
    write_time_as(t, false, out)
}

/// GeneralizedTime always (OCSP, RFC 6960).
pub(crate) fn write_generalized_time(t: SystemTime, out: &mut Vec<u8>) -> Result<(), CrlError> {
    write_time_as(t, true, out)
}

fn write_time_as(t: SystemTime, generalized: bool, out: &mut Vec<u8>) -> Result<(), CrlError> {
    let dt =
        der::DateTime::from_system_time(t).map_err(|_| CrlError::Malformed { what: "time out of range" })?;
    let year = dt.year();
    let mut digits = Vec::with_capacity(15);
    let two = |v: u8, d: &mut Vec<u8>| d.extend_from_slice(&[b'0' + v / 10, b'0' + v % 10]);
    let utc = !generalized && (1950..2050).contains(&year);
    if utc {
        two((year % 100) as u8, &mut digits);
    } else {
        two((year / 100) as u8, &mut digits);
        two((year % 100) as u8, &mut digits);
    }
    for v in [dt.month(), dt.day(), dt.hour(), dt.minutes(), dt.seconds()] {
        two(v, &mut digits);
    }
    digits.push(b'Z');
    tlv(if utc { 0x17 } else { 0x18 }, &digits, out);
    Ok(())
}

/// A DER reader over a slice: tag, length and content, definite short or long lengths only.
pub(crate) struct Der<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Der<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    pub(crate) fn peek_tag(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    /// The next element: (tag, content range relative to the reader's slice).
    pub(crate) fn next(&mut self, what: &'static str) -> Result<(u8, Range<usize>), CrlError> {
        let bad = CrlError::Malformed { what };
        let tag = *self.bytes.get(self.pos).ok_or(bad.clone())?;
        let first = *self.bytes.get(self.pos + 1).ok_or(bad.clone())?;
        let mut at = self.pos + 2;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 {
                return Err(bad);
            }
            let raw = self.bytes.get(at..at + n).ok_or(bad.clone())?;
            at += n;
            let len = raw.iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            // DER: the shortest length form.
            if raw[0] == 0 || len < 0x80 {
                return Err(bad);
            }
            len
        };
        let end = at.checked_add(len).filter(|&e| e <= self.bytes.len()).ok_or(bad)?;
        self.pos = end;
        Ok((tag, at..end))
    }

    pub(crate) fn expect(&mut self, tag: u8, what: &'static str) -> Result<&'a [u8], CrlError> {
        let (t, r) = self.next(what)?;
        if t != tag {
            return Err(CrlError::Malformed { what });
        }
        Ok(&self.bytes[r])
    }

    /// The bytes of `range` (as returned by [`Der::next`] or [`Der::raw`]).
    pub(crate) fn bytes_of(&self, range: Range<usize>) -> &'a [u8] {
        &self.bytes[range]
    }

    /// The whole next element (header included) and its tag.
    pub(crate) fn raw(&mut self, what: &'static str) -> Result<(u8, Range<usize>), CrlError> {
        let start = self.pos;
        let (tag, _) = self.next(what)?;
        Ok((tag, start..self.pos))
    }
}

pub(crate) fn parse_time(tag: u8, content: &[u8]) -> Result<SystemTime, CrlError> {
    let bad = CrlError::Malformed { what: "time" };
    let digits = content.strip_suffix(b"Z").ok_or(bad.clone())?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return Err(bad);
    }
    let num = |i: usize| u16::from(digits[i] - b'0') * 10 + u16::from(digits[i + 1] - b'0');
    let (year, rest) = match (tag, digits.len()) {
        (0x17, 12) => {
            let yy = num(0);
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
        }
        (0x18, 14) => (num(0) * 100 + num(2), 4),
        _ => return Err(bad),
    };
    let f = |i: usize| num(rest + 2 * i) as u8;
    let dt = der::DateTime::new(year, f(0), f(1), f(2), f(3), f(4)).map_err(|_| bad)?;
    Ok(dt.to_system_time())
}

fn parse_u64(content: &[u8], what: &'static str) -> Result<u64, CrlError> {
    let bad = CrlError::Malformed { what };
    match content {
        [] => Err(bad),
        [b, ..] if b & 0x80 != 0 => Err(bad),
        [0, b, ..] if b & 0x80 == 0 => Err(bad), // not minimal
        _ => {
            let digits = if content[0] == 0 { &content[1..] } else { content };
            if digits.len() > 8 {
                return Err(bad);
            }
            Ok(digits.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
        }
    }
}

/// A CRL read and checked for structure: its bytes and where each part is.
#[derive(Clone)]
pub struct Crl {
    der: Vec<u8>,
    tbs: Range<usize>,
    issuer: Range<usize>,
    entries: Range<usize>,
    signature: Range<usize>,
    algorithm: SignatureAlgorithm,
    this_update: SystemTime,
    next_update: Option<SystemTime>,
    number: Option<u64>,
    delta_base: Option<u64>,
    count: usize,
}

impl std::fmt::Debug for Crl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Crl")
            .field("len", &self.der.len())
            .field("number", &self.number)
            .field("delta_base", &self.delta_base)
            .field("entries", &self.count)
            .finish_non_exhaustive()
    }
}

impl Crl {
    /// Reads a DER CRL of at most `max_len` bytes, checking every element (each entry's serial,
    /// date and reason code included) once. Unknown critical extensions, on the CRL or on an
    /// entry, are refused (RFC 5280 section 5.2).
    pub fn from_der(der: Vec<u8>, max_len: usize) -> Result<Self, CrlError> {
        if der.len() > max_len {
            return Err(CrlError::TooLarge { len: der.len(), max: max_len });
        }
        let mut outer = Der::new(&der);
        let (tag, list) = outer.next("CertificateList")?;
        if tag != 0x30 || !outer.is_empty() {
            return Err(CrlError::Malformed { what: "CertificateList" });
        }
        let mut list_r = Der::new(&der[list.clone()]);
        let (tag, tbs_raw) = list_r.raw("tbsCertList")?;
        if tag != 0x30 {
            return Err(CrlError::Malformed { what: "tbsCertList" });
        }
        let outer_alg = list_r.expect(0x30, "signatureAlgorithm")?;
        let bits = list_r.expect(0x03, "signatureValue")?;
        if !list_r.is_empty() || bits.first() != Some(&0) {
            return Err(CrlError::Malformed { what: "signatureValue" });
        }
        let base = list.start;
        let tbs = base + tbs_raw.start..base + tbs_raw.end;
        let sig_start = base + list_r.pos - bits.len() + 1;
        let signature = sig_start..base + list_r.pos;

        let mut t = Der::new(&der[tbs.clone()]);
        let (_, tbs_content) = t.next("tbsCertList")?;
        let tbs_base = tbs.start + tbs_content.start;
        let mut r = Der::new(&der[tbs_base..tbs.end]);
        if r.peek_tag() == Some(0x02) {
            let v = r.expect(0x02, "version")?;
            if v != [1] {
                return Err(CrlError::Malformed { what: "version" });
            }
        }
        let inner_alg = r.expect(0x30, "signature")?;
        if inner_alg != outer_alg {
            return Err(CrlError::Malformed { what: "signature algorithms differ" });
        }
        let algorithm = algorithm_of(outer_alg)?;
        let (tag, issuer_raw) = r.raw("issuer")?;
        if tag != 0x30 {
            return Err(CrlError::Malformed { what: "issuer" });
        }
        let issuer = tbs_base + issuer_raw.start..tbs_base + issuer_raw.end;
        let (tag, c) = r.next("thisUpdate")?;
        let this_update = parse_time(tag, &r.bytes[c])?;
        let mut next_update = None;
        if matches!(r.peek_tag(), Some(0x17 | 0x18)) {
            let (tag, c) = r.next("nextUpdate")?;
            next_update = Some(parse_time(tag, &r.bytes[c])?);
        }
        let mut entries = 0..0;
        let mut count = 0;
        if r.peek_tag() == Some(0x30) {
            let (_, c) = r.next("revokedCertificates")?;
            entries = tbs_base + c.start..tbs_base + c.end;
            let mut it = Entries { r: Der::new(&der[entries.clone()]) };
            while let Some(e) = it.next_entry() {
                e?;
                count += 1;
            }
        }
        let (mut number, mut delta_base) = (None, None);
        if r.peek_tag() == Some(0xa0) {
            let exts = r.expect(0xa0, "crlExtensions")?;
            let mut er = Der::new(exts);
            let seq = er.expect(0x30, "crlExtensions")?;
            if !er.is_empty() {
                return Err(CrlError::Malformed { what: "crlExtensions" });
            }
            let mut er = Der::new(seq);
            while !er.is_empty() {
                let (oid, critical, value) = read_extension(&mut er)?;
                match oid {
                    OID_CRL_NUMBER => {
                        number = Some(parse_u64(Der::new(value).expect(0x02, "cRLNumber")?, "cRLNumber")?)
                    }
                    OID_DELTA_INDICATOR => {
                        delta_base = Some(parse_u64(
                            Der::new(value).expect(0x02, "deltaCRLIndicator")?,
                            "deltaCRLIndicator",
                        )?)
                    }
                    // Known and either informational or handled by the caller's choice of CRL.
                    OID_AKI | OID_ISSUING_DP | OID_FRESHEST_CRL => {}
                    _ if critical => return Err(CrlError::UnknownCriticalExtension),
                    _ => {}
                }
            }
        }
        if !r.is_empty() {
            return Err(CrlError::Malformed { what: "trailing data in tbsCertList" });
        }
        if next_update.is_some_and(|n| n <= this_update) {
            return Err(CrlError::EmptyValidity);
        }
        Ok(Self {
            der,
            tbs,
            issuer,
            entries,
            signature,
            algorithm,
            this_update,
            next_update,
            number,
            delta_base,
            count,
        })
    }

    /// The DER bytes.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The signed part (tbsCertList), as signed.
    pub fn tbs_der(&self) -> &[u8] {
        &self.der[self.tbs.clone()]
    }

    /// The signature value (DER `SEQUENCE { r, s }` for ECDSA and SM2).
    pub fn signature(&self) -> &[u8] {
        &self.der[self.signature.clone()]
    }

    /// The signature algorithm.
    pub fn algorithm(&self) -> SignatureAlgorithm {
        self.algorithm
    }

    /// thisUpdate.
    pub fn this_update(&self) -> SystemTime {
        self.this_update
    }

    /// nextUpdate, when given.
    pub fn next_update(&self) -> Option<SystemTime> {
        self.next_update
    }

    /// cRLNumber, when given.
    pub fn number(&self) -> Option<u64> {
        self.number
    }

    /// For a delta CRL, the number of the base CRL it extends.
    pub fn delta_base(&self) -> Option<u64> {
        self.delta_base
    }

    /// How many entries it has.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether it has no entries.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The entries, in the CRL's order (checked by [`Crl::from_der`]).
    pub fn entries(&self) -> impl Iterator<Item = Revocation> + '_ {
        let mut it = Entries { r: Der::new(&self.der[self.entries.clone()]) };
        std::iter::from_fn(move || it.next_entry().and_then(Result::ok))
    }

    /// Whether `at` lies in [thisUpdate, nextUpdate) (a CRL without nextUpdate is never current:
    /// nothing says how long it may be trusted).
    pub fn is_current(&self, at: SystemTime) -> bool {
        self.this_update <= at + Duration::from_secs(60) && self.next_update.is_some_and(|n| at < n)
    }

    /// Checks that `ca` issued this CRL: its subject is the CRL's issuer and its key verifies
    /// the signature (SM2 with the GM/T 0009 default ID).
    pub fn verify_signature(&self, ca: &Certificate) -> Result<(), CrlError> {
        let subject = ca.subject().to_der().map_err(|_| CrlError::IssuerMismatch)?;
        if subject != self.der[self.issuer.clone()] {
            return Err(CrlError::IssuerMismatch);
        }
        let key = ca.public_key().map_err(|_| CrlError::UnsupportedAlgorithm)?;
        key.verify(self.algorithm, &DistId::GMT_0009_DEFAULT, self.tbs_der(), self.signature())
            .map_err(|_| CrlError::BadSignature)
    }
}

pub(crate) fn algorithm_of(alg_content: &[u8]) -> Result<SignatureAlgorithm, CrlError> {
    let mut full = Vec::with_capacity(alg_content.len() + 4);
    tlv(0x30, alg_content, &mut full);
    let id = <x509_cert::spki::AlgorithmIdentifierOwned as der::Decode>::from_der(&full)
        .map_err(|_| CrlError::Malformed { what: "signature algorithm" })?;
    SignatureAlgorithm::from_identifier(&id).ok_or(CrlError::UnsupportedAlgorithm)
}

/// One Extension: (OID content, critical, extnValue content).
pub(crate) fn read_extension<'a>(r: &mut Der<'a>) -> Result<(&'a [u8], bool, &'a [u8]), CrlError> {
    let what = "extension";
    let mut e = Der::new(r.expect(0x30, what)?);
    let oid = e.expect(0x06, what)?;
    let mut critical = false;
    if e.peek_tag() == Some(0x01) {
        critical = match e.expect(0x01, what)? {
            [0xff] => true,
            // DER: FALSE is the default and must be omitted, and TRUE is 0xff.
            _ => return Err(CrlError::Malformed { what: "extension critical flag" }),
        };
    }
    let value = e.expect(0x04, what)?;
    if !e.is_empty() {
        return Err(CrlError::Malformed { what });
    }
    Ok((oid, critical, value))
}

struct Entries<'a> {
    r: Der<'a>,
}

impl Entries<'_> {
    fn next_entry(&mut self) -> Option<Result<Revocation, CrlError>> {
        if self.r.is_empty() {
            return None;
        }
        Some(self.read())
    }

    fn read(&mut self) -> Result<Revocation, CrlError> {
        let mut e = Der::new(self.r.expect(0x30, "revoked certificate")?);
        let serial = Serial::from_der_content(e.expect(0x02, "userCertificate")?)?;
        let (tag, c) = e.next("revocationDate")?;
        let revoked_at = parse_time(tag, &e.bytes[c])?;
        let mut reason = None;
        if !e.is_empty() {
            let mut exts = Der::new(e.expect(0x30, "crlEntryExtensions")?);
            while !exts.is_empty() {
                let (oid, critical, value) = read_extension(&mut exts)?;
                match oid {
                    OID_REASON => {
                        let code = Der::new(value).expect(0x0a, "reasonCode")?;
                        let [code] = code else { return Err(CrlError::Malformed { what: "reasonCode" }) };
                        reason = Some(Reason::from_code(*code)?);
                    }
                    OID_INVALIDITY_DATE => {}
                    // certificateIssuer (indirect CRLs) and anything else critical: not for us.
                    _ if critical => return Err(CrlError::UnknownCriticalExtension),
                    _ => {}
                }
            }
        }
        if !e.is_empty() {
            return Err(CrlError::Malformed { what: "revoked certificate" });
        }
        Ok(Revocation { serial, revoked_at, reason })
    }
}

/// The serials a CA has revoked, from its full CRL and any deltas: one sorted array of 20-byte
/// serials, so a million revocations take 20 MB and a lookup is a binary search.
#[derive(Debug, Clone, Default)]
pub struct RevokedSerials {
    serials: Vec<Serial>,
    /// The CRL number of the full CRL the set is built from.
    base: Option<u64>,
}

impl RevokedSerials {
    /// The serials of a full CRL (whose signature the caller has checked).
    pub fn from_crl(crl: &Crl) -> Result<Self, CrlError> {
        if let Some(base) = crl.delta_base() {
            return Err(CrlError::DeltaBaseMismatch { base, have: 0 });
        }
        let mut serials: Vec<Serial> =
            crl.entries().filter(|r| r.reason != Some(Reason::RemoveFromCrl)).map(|r| r.serial).collect();
        serials.sort_unstable();
        serials.dedup();
        Ok(Self { serials, base: crl.number() })
    }

    /// Applies a delta CRL that extends this set's base: its entries are added, and its
    /// removeFromCRL entries (a hold lifted) taken out.
    pub fn apply_delta(&mut self, delta: &Crl) -> Result<(), CrlError> {
        let (Some(base), Some(have)) = (delta.delta_base(), self.base) else {
            return Err(CrlError::DeltaBaseMismatch {
                base: delta.delta_base().unwrap_or(0),
                have: self.base.unwrap_or(0),
            });
        };
        // A delta extends every full CRL numbered from its base on (RFC 5280 section 5.2.4).
        if have < base {
            return Err(CrlError::DeltaBaseMismatch { base, have });
        }
        let mut add = Vec::new();
        let mut remove = Vec::new();
        for r in delta.entries() {
            if r.reason == Some(Reason::RemoveFromCrl) { remove.push(r.serial) } else { add.push(r.serial) }
        }
        self.serials.extend(add);
        self.serials.sort_unstable();
        self.serials.dedup();
        if !remove.is_empty() {
            remove.sort_unstable();
            self.serials.retain(|s| remove.binary_search(s).is_err());
        }
        Ok(())
    }

    /// Whether `serial` is revoked.
    pub fn contains(&self, serial: &Serial) -> bool {
        self.serials.binary_search(serial).is_ok()
    }

    /// How many serials are revoked.
    pub fn len(&self) -> usize {
        self.serials.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.serials.is_empty()
    }
}

/// What is known of one issuer's revocations.
#[derive(Debug, Clone, Default)]
struct IssuerRevocations {
    revoked: RevokedSerials,
    /// The number of the newest CRL applied (full or delta).
    last_number: Option<u64>,
    /// When the newest CRL applied says the next one is due.
    next_update: Option<SystemTime>,
}

/// The revocation status of every CA a service trusts, for the handshake: per issuer (by the
/// key identifier of its public key), the serials its CRLs revoke and the serials revoked
/// in-process since. Lookups take no I/O and allocate nothing.
#[derive(Debug, Clone, Default)]
pub struct RevocationIndex {
    issuers: std::collections::HashMap<[u8; 20], IssuerRevocations>,
}

/// One link of a validated path, as the index looks it up: the issuer's key identifier and the
/// serial it gave the certificate. Kept per live session (40 bytes a link).
pub type Link = ([u8; 20], Serial);

/// What [`RevocationIndex::apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The CRL's number.
    pub number: Option<u64>,
    /// Whether it was a delta.
    pub delta: bool,
    /// How many serials the issuer has revoked now.
    pub revoked: usize,
}

impl RevocationIndex {
    /// Applies a CRL of `ca` after checking that `ca` signed it. A full CRL replaces what was
    /// known of `ca`, a delta extends it; a CRL no newer than the last applied is refused, so
    /// that an old CRL cannot bring a revoked certificate back.
    pub fn apply(&mut self, ca: &Certificate, crl: &Crl) -> Result<Applied, CrlError> {
        let key = self.check(ca, crl)?;
        let known = self.issuers.get(&key);
        let mut state = match crl.delta_base() {
            None => IssuerRevocations { revoked: RevokedSerials::from_crl(crl)?, ..Default::default() },
            Some(_) => {
                let mut state = known.cloned().unwrap_or_default();
                state.revoked.apply_delta(crl)?;
                state
            }
        };
        state.last_number = crl.number();
        state.next_update = crl.next_update();
        let applied =
            Applied { number: crl.number(), delta: crl.delta_base().is_some(), revoked: state.revoked.len() };
        self.issuers.insert(key, state);
        Ok(applied)
    }

    /// What [`RevocationIndex::apply`] would refuse, without changing anything: a signature
    /// that is not `ca`'s, a CRL no newer than the last applied, a delta without its base.
    /// Returns the issuer's key identifier.
    pub fn check(&self, ca: &Certificate, crl: &Crl) -> Result<[u8; 20], CrlError> {
        crl.verify_signature(ca)?;
        let key = ca.public_key().map_err(|_| CrlError::UnsupportedAlgorithm)?.key_identifier();
        let known = self.issuers.get(&key);
        if let (Some(last), Some(number)) = (known.and_then(|k| k.last_number), crl.number())
            && number <= last
        {
            return Err(CrlError::Stale { number, last });
        }
        if let Some(base) = crl.delta_base() {
            let have = known.and_then(|k| k.revoked.base);
            if have.is_none_or(|have| have < base) {
                return Err(CrlError::DeltaBaseMismatch { base, have: have.unwrap_or(0) });
            }
        }
        Ok(key)
    }

    /// The links of a validated path (leaf first, the anchor last), for [`Self::link_revoked`].
    pub fn links(path: &[Certificate]) -> Vec<Link> {
        path.windows(2)
            .filter_map(|l| Some((l[1].public_key().ok()?.key_identifier(), Serial::of(&l[0]).ok()?)))
            .collect()
    }

    /// Whether the issuer of a link has revoked it.
    pub fn link_revoked(&self, link: &Link) -> bool {
        self.issuers.get(&link.0).is_some_and(|s| s.revoked.contains(&link.1))
    }

    /// Records one revocation decided in-process (the CA's own status, before its next CRL).
    pub fn revoke(&mut self, ca: &Certificate, serial: Serial) {
        if let Ok(key) = ca.public_key() {
            let state = self.issuers.entry(key.key_identifier()).or_default();
            if let Err(i) = state.revoked.serials.binary_search(&serial) {
                state.revoked.serials.insert(i, serial);
            }
        }
    }

    /// Whether `ca` has revoked `cert`.
    pub fn is_revoked(&self, ca: &Certificate, cert: &Certificate) -> bool {
        let (Ok(key), Ok(serial)) = (ca.public_key(), Serial::of(cert)) else {
            // A serial that is not a valid one cannot be looked up: fail closed.
            return true;
        };
        self.issuers.get(&key.key_identifier()).is_some_and(|s| s.revoked.contains(&serial))
    }

    /// The first certificate of a validated `path` (leaf first, each issued by the next, the
    /// anchor last) that its issuer has revoked, by its index.
    pub fn revoked_in(&self, path: &[Certificate]) -> Option<usize> {
        path.windows(2).position(|link| self.is_revoked(&link[1], &link[0]))
    }

    /// Every issuer known: (key identifier, CRL number last applied, nextUpdate, revoked).
    pub fn issuers(&self) -> impl Iterator<Item = ([u8; 20], Option<u64>, Option<SystemTime>, usize)> + '_ {
        self.issuers.iter().map(|(k, s)| (*k, s.last_number, s.next_update, s.revoked.len()))
    }

    /// The CRL number last applied for `ca` and when its next CRL is due.
    pub fn status_of(&self, ca: &Certificate) -> Option<(Option<u64>, Option<SystemTime>, usize)> {
        let key = ca.public_key().ok()?.key_identifier();
        self.issuers.get(&key).map(|s| (s.last_number, s.next_update, s.revoked.len()))
    }
}

/// Entry point for the fuzz target: parse arbitrary bytes as a CRL and walk every entry; must
/// never panic. Returns the number of entries when the bytes are a CRL.
pub fn fuzz_parse(data: &[u8]) -> Option<usize> {
    let crl = Crl::from_der(data.to_vec(), DEFAULT_MAX_CRL_LEN).ok()?;
    let n = crl.entries().count();
    assert_eq!(n, crl.len(), "from_der counted what entries() yields");
    Some(n)
}

#[cfg(test)]
mod tests;
