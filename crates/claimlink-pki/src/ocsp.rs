//! OCSP (RFC 6960): requests decoded, responses built and signed by a delegated responder.
//!
//! Certificate IDs hashed with SHA-1, SHA-256 or SM3 are accepted (GM/T 0014 responders use
//! SM3; OpenSSL defaults to SHA-1). Responses echo each request's CertID as it came, carry the
//! responder's certificate, name it by key hash, and echo a nonce when asked. As for CRLs, the
//! DER is written and read in place (see [`crate::crl`]).

use std::time::SystemTime;

use crate::SignatureAlgorithm;
use crate::cert::Certificate;
use crate::crl::{self, CrlError, Der, Reason, Serial};
use crate::key::{KeyError, Signer};

/// Largest OCSP request accepted, in DER bytes.
pub const MAX_REQUEST_LEN: usize = 16 * 1024;
/// Most certificates asked about in one request.
pub const MAX_REQUESTS: usize = 64;

/// Errors of reading requests and building responses. Messages never contain key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OcspError {
    /// Not a well-formed OCSP request (answer `malformedRequest`).
    #[error("malformed OCSP request: {0}")]
    Malformed(&'static str),
    /// More than [`MAX_REQUEST_LEN`] bytes or [`MAX_REQUESTS`] certificates.
    #[error("OCSP request too large")]
    TooLarge,
    /// A CertID hash algorithm other than SHA-1, SHA-256 and SM3.
    #[error("unsupported CertID hash algorithm")]
    UnsupportedHash,
    /// Signing failed.
    #[error("signing the OCSP response failed: {0}")]
    Signing(#[from] KeyError),
    /// A time that cannot be encoded.
    #[error("time out of range")]
    BadTime,
}

impl From<CrlError> for OcspError {
    fn from(e: CrlError) -> Self {
        match e {
            CrlError::Malformed { what } => Self::Malformed(what),
            CrlError::BadSerial => Self::Malformed("serialNumber"),
            _ => Self::Malformed("request"),
        }
    }
}

/// The hash of a CertID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertIdHash {
    /// SHA-1 (1.3.14.3.2.26), OpenSSL's default.
    Sha1,
    /// SHA-256.
    Sha256,
    /// SM3 (1.2.156.10197.1.401).
    Sm3,
}

const OID_SHA1: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1a];
const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
const OID_SM3: &[u8] = &[0x2a, 0x81, 0x1c, 0xcf, 0x55, 0x01, 0x83, 0x11];
const OID_NONCE: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x02];
const OID_BASIC: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01];

impl CertIdHash {
    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha1 => {
                ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, data).as_ref().to_vec()
            }
            Self::Sha256 => ring::digest::digest(&ring::digest::SHA256, data).as_ref().to_vec(),
            Self::Sm3 => claimlink_gm::sm3(data).to_vec(),
        }
    }
}

/// One certificate asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertId {
    /// The hash of the issuer fields.
    pub hash: CertIdHash,
    /// Hash of the issuer's subject DER.
    pub issuer_name_hash: Vec<u8>,
    /// Hash of the issuer's public key (the subjectPublicKey bits).
    pub issuer_key_hash: Vec<u8>,
    /// The certificate's serial number.
    pub serial: Serial,
    /// The CertID as it came (echoed in the response).
    raw: Vec<u8>,
}

impl CertId {
    /// Whether `issuer` is the CA this id names.
    pub fn is_issued_by(&self, issuer: &Certificate) -> bool {
        let Ok(name) = der::Encode::to_der(issuer.subject()) else { return false };
        let Ok(key) = issuer.public_key() else { return false };
        let spki = key.to_spki();
        self.hash.digest(&name) == self.issuer_name_hash
            && self.hash.digest(spki.subject_public_key.raw_bytes()) == self.issuer_key_hash
    }
}

/// A decoded OCSP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OcspRequest {
    /// The certificates asked about.
    pub ids: Vec<CertId>,
    /// The nonce extension's value as sent (echoed in the response), when present.
    pub nonce: Option<Vec<u8>>,
}

/// Decodes a DER OCSP request. Signed requests are read; their signature is not required.
pub fn parse_request(der: &[u8]) -> Result<OcspRequest, OcspError> {
    if der.len() > MAX_REQUEST_LEN {
        return Err(OcspError::TooLarge);
    }
    let mut outer = Der::new(der);
    let request = outer.expect(0x30, "OCSPRequest")?;
    if !outer.is_empty() {
        return Err(OcspError::Malformed("trailing data"));
    }
    let mut r = Der::new(request);
    let tbs = r.expect(0x30, "tbsRequest")?;
    if r.peek_tag() == Some(0xa0) {
        r.expect(0xa0, "optionalSignature")?;
    }
    if !r.is_empty() {
        return Err(OcspError::Malformed("OCSPRequest"));
    }
    let mut t = Der::new(tbs);
    if t.peek_tag() == Some(0xa0) {
        let v = t.expect(0xa0, "version")?;
        if v != [0x02, 0x01, 0x00] {
            return Err(OcspError::Malformed("version"));
        }
    }
    if t.peek_tag() == Some(0xa1) {
        t.expect(0xa1, "requestorName")?;
    }
    let list = t.expect(0x30, "requestList")?;
    let mut ids = Vec::new();
    let mut l = Der::new(list);
    while !l.is_empty() {
        if ids.len() == MAX_REQUESTS {
            return Err(OcspError::TooLarge);
        }
        let mut req = Der::new(l.expect(0x30, "Request")?);
        let (_, raw) = req.raw("reqCert")?;
        let raw = req.bytes_of(raw).to_vec();
        if req.peek_tag() == Some(0xa0) {
            req.expect(0xa0, "singleRequestExtensions")?;
        }
        if !req.is_empty() {
            return Err(OcspError::Malformed("Request"));
        }
        ids.push(cert_id(&raw)?);
    }
    if ids.is_empty() {
        return Err(OcspError::Malformed("empty requestList"));
    }
    let mut nonce = None;
    if t.peek_tag() == Some(0xa2) {
        let mut exts =
            Der::new(Der::new(t.expect(0xa2, "requestExtensions")?).expect(0x30, "requestExtensions")?);
        while !exts.is_empty() {
            let (oid, critical, value) = crl::read_extension(&mut exts)?;
            if oid == OID_NONCE {
                if value.len() > 128 {
                    return Err(OcspError::Malformed("nonce longer than 128 bytes"));
                }
                nonce = Some(value.to_vec());
            } else if critical {
                return Err(OcspError::Malformed("unknown critical request extension"));
            }
        }
    }
    if !t.is_empty() {
        return Err(OcspError::Malformed("tbsRequest"));
    }
    Ok(OcspRequest { ids, nonce })
}

fn cert_id(raw: &[u8]) -> Result<CertId, OcspError> {
    let mut outer = Der::new(raw);
    let mut c = Der::new(outer.expect(0x30, "CertID")?);
    let mut alg = Der::new(c.expect(0x30, "hashAlgorithm")?);
    let oid = alg.expect(0x06, "hashAlgorithm")?;
    if alg.peek_tag() == Some(0x05) && !alg.expect(0x05, "hashAlgorithm parameters")?.is_empty() {
        return Err(OcspError::Malformed("hashAlgorithm parameters"));
    }
    if !alg.is_empty() {
        return Err(OcspError::Malformed("hashAlgorithm"));
    }
    let hash = match oid {
        OID_SHA1 => CertIdHash::Sha1,
        OID_SHA256 => CertIdHash::Sha256,
        OID_SM3 => CertIdHash::Sm3,
        _ => return Err(OcspError::UnsupportedHash),
    };
    let issuer_name_hash = c.expect(0x04, "issuerNameHash")?.to_vec();
    let issuer_key_hash = c.expect(0x04, "issuerKeyHash")?.to_vec();
    let len = hash.digest(b"").len();
    if issuer_name_hash.len() != len || issuer_key_hash.len() != len {
        return Err(OcspError::Malformed("CertID hash length"));
    }
    let serial = Serial::from_der_content(c.expect(0x02, "serialNumber")?)?;
    if !c.is_empty() {
        return Err(OcspError::Malformed("CertID"));
    }
    Ok(CertId { hash, issuer_name_hash, issuer_key_hash, serial, raw: raw.to_vec() })
}

/// A certificate's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Not revoked.
    Good,
    /// Revoked at a time, with a reason when known.
    Revoked {
        /// When.
        at: SystemTime,
        /// Why.
        reason: Option<Reason>,
    },
    /// Not a certificate this responder answers for.
    Unknown,
}

/// RFC 6960's responseStatus values other than success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorStatus {
    /// malformedRequest (1).
    MalformedRequest = 1,
    /// internalError (2).
    InternalError = 2,
    /// tryLater (3).
    TryLater = 3,
    /// unauthorized (6): a CA this responder does not answer for.
    Unauthorized = 6,
}

/// An unsigned error response (`OCSPResponse` with only a status).
pub fn error_response(status: ErrorStatus) -> Vec<u8> {
    vec![0x30, 0x03, 0x0a, 0x01, status as u8]
}

/// Who signs responses: a delegated responder certificate (issued by the CA for OCSP signing)
/// and its key.
pub struct Responder<'a> {
    /// The responder's certificate (included in every response).
    pub certificate: &'a Certificate,
    /// Its key.
    pub signer: &'a dyn Signer,
}

/// Builds and signs a successful response answering `answers` (each CertID as requested and its
/// status), valid from `this_update` to `next_update`, with `nonce` echoed when given.
pub fn respond(
    responder: &Responder<'_>,
    answers: &[(CertId, Status)],
    produced_at: SystemTime,
    this_update: SystemTime,
    next_update: SystemTime,
    nonce: Option<&[u8]>,
) -> Result<Vec<u8>, OcspError> {
    let t = |at: SystemTime, out: &mut Vec<u8>| {
        crl::write_generalized_time(at, out).map_err(|_| OcspError::BadTime)
    };
    let key = responder.signer.public_key().to_spki();
    let key_hash = CertIdHash::Sha1.digest(key.subject_public_key.raw_bytes());
    let mut data = Vec::new();
    let mut rid = Vec::new();
    crl::tlv(0x04, &key_hash, &mut rid);
    crl::tlv(0xa2, &rid, &mut data);
    t(produced_at, &mut data)?;
    let mut responses = Vec::new();
    for (id, status) in answers {
        let mut single = id.raw.clone();
        match status {
            Status::Good => single.extend_from_slice(&[0x80, 0x00]),
            Status::Unknown => single.extend_from_slice(&[0x82, 0x00]),
            Status::Revoked { at, reason } => {
                let mut info = Vec::new();
                t(*at, &mut info)?;
                if let Some(r) = reason {
                    info.extend_from_slice(&[0xa0, 0x03, 0x0a, 0x01, r.code()]);
                }
                crl::tlv(0xa1, &info, &mut single);
            }
        }
        t(this_update, &mut single)?;
        let mut next = Vec::new();
        t(next_update, &mut next)?;
        crl::tlv(0xa0, &next, &mut single);
        crl::tlv(0x30, &single, &mut responses);
    }
    crl::tlv(0x30, &responses, &mut data);
    if let Some(nonce) = nonce {
        let mut exts = Vec::new();
        crl::extension(OID_NONCE, false, nonce, &mut exts);
        let mut seq = Vec::new();
        crl::tlv(0x30, &exts, &mut seq);
        crl::tlv(0xa1, &seq, &mut data);
    }
    let mut tbs = Vec::new();
    crl::tlv(0x30, &data, &mut tbs);
    let alg = responder.signer.signature_algorithm();
    let alg_der = der::Encode::to_der(&alg.identifier()).map_err(|_| OcspError::Malformed("algorithm"))?;
    let signature = responder.signer.sign(&tbs)?;
    let mut basic = tbs;
    basic.extend_from_slice(&alg_der);
    let mut bits = vec![0];
    bits.extend_from_slice(&signature);
    crl::tlv(0x03, &bits, &mut basic);
    let mut certs = Vec::new();
    crl::tlv(0x30, responder.certificate.der(), &mut certs);
    crl::tlv(0xa0, &certs, &mut basic);
    let mut basic_der = Vec::new();
    crl::tlv(0x30, &basic, &mut basic_der);
    let mut bytes = Vec::new();
    crl::tlv(0x06, OID_BASIC, &mut bytes);
    crl::tlv(0x04, &basic_der, &mut bytes);
    let mut rb = Vec::new();
    crl::tlv(0x30, &bytes, &mut rb);
    let mut body = vec![0x0a, 0x01, 0x00];
    crl::tlv(0xa0, &rb, &mut body);
    let mut out = Vec::new();
    crl::tlv(0x30, &body, &mut out);
    Ok(out)
}

/// The signed part of a successful response (tbsResponseData), its signature and algorithm,
/// for checking a response with tools that cannot (OpenSSL 3.0 and SM2).
pub fn signed_parts(response: &[u8]) -> Result<(Vec<u8>, Vec<u8>, SignatureAlgorithm), OcspError> {
    let mut o = Der::new(Der::new(response).expect(0x30, "OCSPResponse")?);
    if o.expect(0x0a, "responseStatus")? != [0] {
        return Err(OcspError::Malformed("not a successful response"));
    }
    let mut rb = Der::new(Der::new(o.expect(0xa0, "responseBytes")?).expect(0x30, "ResponseBytes")?);
    if rb.expect(0x06, "responseType")? != OID_BASIC {
        return Err(OcspError::Malformed("responseType"));
    }
    let basic = rb.expect(0x04, "response")?;
    let mut b = Der::new(Der::new(basic).expect(0x30, "BasicOCSPResponse")?);
    let (_, tbs) = b.raw("tbsResponseData")?;
    let tbs = b.bytes_of(tbs).to_vec();
    let alg = crl::algorithm_of(b.expect(0x30, "signatureAlgorithm")?)?;
    let bits = b.expect(0x03, "signature")?;
    let sig = bits.get(1..).ok_or(OcspError::Malformed("signature"))?.to_vec();
    Ok((tbs, sig, alg))
}

/// Entry point for the fuzz target: arbitrary bytes as an OCSP request; must never panic.
pub fn fuzz_parse_request(data: &[u8]) -> Option<usize> {
    parse_request(data).ok().map(|r| r.ids.len())
}

#[cfg(test)]
mod tests;
