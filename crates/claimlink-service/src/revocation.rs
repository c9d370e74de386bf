//! CRL uploads, as staging and the account endpoint take them: a CRL signed by one of the
//! service's trust anchors (DER or PEM), or a PEM CRL followed by the certificate of the CA
//! that signed it and that CA's chain up to an anchor.

use claimlink_pki::Certificate;
use claimlink_pki::crl::{Crl, DEFAULT_MAX_CRL_LEN};

/// The largest CRL upload (a PEM CRL with its issuer's chain): a million entries with 16-byte
/// serials take about 51 MB in DER, 69 MB in PEM.
pub const MAX_CRL_UPLOAD: usize = 96 << 20;

/// The CRL of an upload and the CA that signed it: one of `anchors`, or a CA certificate given
/// with the CRL whose chain validates to one. Errors say what is wrong, for the uploader.
pub fn read_crl_upload(body: &[u8], anchors: &[Certificate]) -> Result<(Crl, Certificate), String> {
    let (der, given) = split(body)?;
    let crl = Crl::from_der(der, DEFAULT_MAX_CRL_LEN).map_err(|e| e.to_string())?;
    let mut opts = claimlink_pki::ValidationOptions::at(std::time::SystemTime::now());
    opts.purpose = claimlink_pki::Purpose::Any;
    let trusted = claimlink_pki::TrustAnchors::new(anchors.to_vec());
    let issuer = anchors
        .iter()
        .chain(
            given
                .iter()
                .filter(|c| c.is_ca() && claimlink_pki::verify_chain(c, &given, &trusted, &opts).is_ok()),
        )
        .find(|c| crl.verify_signature(c).is_ok())
        .cloned()
        .ok_or_else(|| {
            "the CRL is not signed by a trusted CA or by a CA certificate given with it that chains to one"
                .to_owned()
        })?;
    Ok((crl, issuer))
}

/// DER is a CRL alone; PEM holds one `X509 CRL` block and `CERTIFICATE` blocks, nothing else.
pub fn split(body: &[u8]) -> Result<(Vec<u8>, Vec<Certificate>), String> {
    if !claimlink_pki::pem::looks_like_pem(body) {
        return Ok((body.to_vec(), Vec::new()));
    }
    let blocks = claimlink_pki::pem::decode_all_within(body, MAX_CRL_UPLOAD).map_err(|e| e.to_string())?;
    let (mut crl, mut certs) = (None, Vec::new());
    for b in blocks {
        match b.label.as_str() {
            "X509 CRL" if crl.is_none() => crl = Some(b.der),
            "X509 CRL" => return Err("the upload holds more than one CRL".into()),
            "CERTIFICATE" => certs.push(Certificate::from_der(&b.der).map_err(|e| e.to_string())?),
            other => return Err(format!("unexpected PEM block {other:?}: send a CRL and certificates only")),
        }
    }
    Ok((crl.ok_or("the upload holds no X509 CRL block")?, certs))
}

/// Why a CRL upload changed nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CrlUploadError {
    /// The upload is not a CRL this service can apply; the message says why.
    Invalid(String),
    /// It could not be stored (logged); try again.
    Internal,
}

/// A CRL a service applied.
#[derive(Debug, Clone)]
pub struct CrlApplied {
    /// The signing CA's subject.
    pub issuer: String,
    /// The CRL's number.
    pub number: Option<u64>,
    /// Whether it was a delta CRL.
    pub delta: bool,
    /// How many serials that CA has revoked now.
    pub revoked: usize,
    /// Live sessions it ended.
    pub dropped: usize,
}
