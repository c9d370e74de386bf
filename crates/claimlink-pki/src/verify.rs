//! Certification path validation at a given time (RFC 5280 section 6, the parts a device PKI uses):
//! signature (with the SM2 distinguishing ID), validity, issuer/subject chaining, basicConstraints
//! and pathLenConstraint, keyUsage keyCertSign, extended key usage of the leaf, unknown critical
//! extensions, and a depth budget.

use std::time::SystemTime;

use claimlink_gm::DistId;
use der::asn1::ObjectIdentifier as Oid;
use x509_cert::ext::pkix::KeyUsages;

use crate::cert::{Certificate, ext_oids};

/// Why a path was refused. Each names the certificate by subject (public data).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The time is after notAfter.
    #[error("certificate {subject:?} expired")]
    Expired {
        /// Subject.
        subject: String,
    },
    /// The time is before notBefore.
    #[error("certificate {subject:?} is not yet valid")]
    NotYetValid {
        /// Subject.
        subject: String,
    },
    /// No certificate in the chain or trust store issued this one.
    #[error("no trusted issuer found for {subject:?} (issuer {issuer:?})")]
    UnknownIssuer {
        /// Subject.
        subject: String,
        /// The issuer name it claims.
        issuer: String,
    },
    /// A candidate issuer's name matches but its signature does not verify.
    #[error("signature on {subject:?} does not verify with its issuer's key")]
    BadSignature {
        /// Subject.
        subject: String,
    },
    /// The signature algorithm is unsupported or inconsistent.
    #[error("certificate {subject:?} uses an unsupported signature algorithm")]
    UnsupportedAlgorithm {
        /// Subject.
        subject: String,
    },
    /// The issuer is not a CA.
    #[error("issuer {issuer:?} is not a CA (basicConstraints CA:FALSE or absent)")]
    IssuerNotCa {
        /// Issuer subject.
        issuer: String,
    },
    /// The issuer's keyUsage lacks keyCertSign.
    #[error("issuer {issuer:?} may not sign certificates (keyUsage without keyCertSign)")]
    IssuerCannotSign {
        /// Issuer subject.
        issuer: String,
    },
    /// An issuer's pathLenConstraint is exceeded.
    #[error("path length constraint of {issuer:?} ({path_len}) exceeded")]
    PathLenExceeded {
        /// Issuer subject.
        issuer: String,
        /// Its pathLenConstraint.
        path_len: u8,
    },
    /// A critical extension this validator does not process.
    #[error("certificate {subject:?} has an unknown critical extension {oid}")]
    UnknownCriticalExtension {
        /// Subject.
        subject: String,
        /// The extension OID.
        oid: String,
    },
    /// The path is longer than the depth budget.
    #[error("certification path longer than {max} certificates")]
    DepthExceeded {
        /// The budget.
        max: usize,
    },
    /// The leaf lacks a required extended key usage.
    #[error("certificate {subject:?} is not valid for {purpose}")]
    WrongPurpose {
        /// Subject.
        subject: String,
        /// The required purpose.
        purpose: &'static str,
    },
}

/// The certificates trusted as roots of paths.
#[derive(Debug, Clone, Default)]
pub struct TrustAnchors {
    anchors: Vec<Certificate>,
}

impl TrustAnchors {
    /// Trust these certificates.
    pub fn new(anchors: Vec<Certificate>) -> Self {
        Self { anchors }
    }

    /// The anchors.
    pub fn certificates(&self) -> &[Certificate] {
        &self.anchors
    }
}

/// Extended key usage a leaf must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Any (no EKU check).
    Any,
    /// TLS client authentication.
    ClientAuth,
    /// TLS server authentication.
    ServerAuth,
}

impl Purpose {
    fn oid(self) -> Option<(Oid, &'static str)> {
        match self {
            Self::Any => None,
            Self::ClientAuth => Some((ext_oids::KP_CLIENT_AUTH, "TLS client authentication")),
            Self::ServerAuth => Some((ext_oids::KP_SERVER_AUTH, "TLS server authentication")),
        }
    }
}

/// How to validate.
#[derive(Debug, Clone)]
pub struct ValidationOptions {
    /// The time at which every certificate must be valid.
    pub time: SystemTime,
    /// The SM2 distinguishing ID certificate signatures were made with.
    pub sm2_id: DistId,
    /// Most certificates in a path, leaf and anchor included.
    pub max_depth: usize,
    /// Required extended key usage of the leaf.
    pub purpose: Purpose,
}

impl ValidationOptions {
    /// Defaults at `time`: GM/T 0009 ID, depth 8, any purpose.
    pub fn at(time: SystemTime) -> Self {
        Self { time, sm2_id: DistId::GMT_0009_DEFAULT, max_depth: 8, purpose: Purpose::Any }
    }
}

const KNOWN_EXTENSIONS: [Oid; 10] = [
    ext_oids::BASIC_CONSTRAINTS,
    ext_oids::KEY_USAGE,
    ext_oids::EXT_KEY_USAGE,
    ext_oids::SUBJECT_ALT_NAME,
    ext_oids::SUBJECT_KEY_ID,
    ext_oids::AUTHORITY_KEY_ID,
    ext_oids::CRL_DISTRIBUTION_POINTS,
    ext_oids::AUTHORITY_INFO_ACCESS,
    ext_oids::CERTIFICATE_POLICIES,
    ext_oids::FRESHEST_CRL,
];

fn subject(c: &Certificate) -> String {
    c.subject().to_string()
}

fn check_alone(c: &Certificate, opts: &ValidationOptions) -> Result<(), VerifyError> {
    if opts.time > c.not_after() {
        return Err(VerifyError::Expired { subject: subject(c) });
    }
    if opts.time < c.not_before() {
        return Err(VerifyError::NotYetValid { subject: subject(c) });
    }
    if let Some(e) = c.extensions().iter().find(|e| e.critical && !KNOWN_EXTENSIONS.contains(&e.extn_id)) {
        return Err(VerifyError::UnknownCriticalExtension {
            subject: subject(c),
            oid: e.extn_id.to_string(),
        });
    }
    Ok(())
}

fn check_signed_by(
    child: &Certificate,
    issuer: &Certificate,
    opts: &ValidationOptions,
) -> Result<(), VerifyError> {
    let alg = child
        .signature_algorithm()
        .ok_or_else(|| VerifyError::UnsupportedAlgorithm { subject: subject(child) })?;
    let key =
        issuer.public_key().map_err(|_| VerifyError::UnsupportedAlgorithm { subject: subject(issuer) })?;
    key.verify(alg, &opts.sm2_id, child.tbs_der(), child.signature())
        .map_err(|_| VerifyError::BadSignature { subject: subject(child) })
}

/// Whether `child` names `issuer` as its issuer and carries a valid signature by its key (SM2
/// with the GM/T 0009 default ID). Only that: no validity, usage or path checks - for
/// registering certificates, where the full validation happens at connection time.
pub fn verify_signed_by(child: &Certificate, issuer: &Certificate) -> Result<(), VerifyError> {
    if child.issuer() != issuer.subject() {
        return Err(VerifyError::BadSignature { subject: subject(child) });
    }
    check_signed_by(child, issuer, &ValidationOptions::at(std::time::SystemTime::now()))
}

/// `non_self_issued_below`: intermediate certificates between this issuer and the leaf that
/// are not self-issued (RFC 5280 6.1.4 (l)-(m)).
fn check_issuer_may_sign(issuer: &Certificate, non_self_issued_below: usize) -> Result<(), VerifyError> {
    let name = subject(issuer);
    let bc = match issuer.basic_constraints() {
        Ok(Some((_, bc))) if bc.ca => bc,
        _ => return Err(VerifyError::IssuerNotCa { issuer: name }),
    };
    if let Ok(Some((_, ku))) = issuer.key_usage()
        && !ku.0.contains(KeyUsages::KeyCertSign)
    {
        return Err(VerifyError::IssuerCannotSign { issuer: name });
    }
    if let Some(path_len) = bc.path_len_constraint
        && non_self_issued_below > usize::from(path_len)
    {
        return Err(VerifyError::PathLenExceeded { issuer: name, path_len });
    }
    Ok(())
}

fn check_purpose(leaf: &Certificate, purpose: Purpose) -> Result<(), VerifyError> {
    let Some((oid, label)) = purpose.oid() else {
        return Ok(());
    };
    // TLS authentication signs with the key: keyUsage, when present, must allow it.
    if let Ok(Some((_, ku))) = leaf.key_usage()
        && !ku.0.contains(KeyUsages::DigitalSignature)
    {
        return Err(VerifyError::WrongPurpose { subject: subject(leaf), purpose: label });
    }
    match leaf.extended_key_usage() {
        Ok(Some((_, eku))) if eku.0.contains(&oid) => Ok(()),
        Ok(None) => Ok(()), // RFC 5280: no EKU means any purpose
        _ => Err(VerifyError::WrongPurpose { subject: subject(leaf), purpose: label }),
    }
}

/// Validates `leaf` up to one of `anchors`, using `intermediates` as untrusted helpers. Returns
/// the path from the leaf to the anchor.
pub fn verify_chain(
    leaf: &Certificate,
    intermediates: &[Certificate],
    anchors: &TrustAnchors,
    opts: &ValidationOptions,
) -> Result<Vec<Certificate>, VerifyError> {
    check_purpose(leaf, opts.purpose)?;
    let mut path = vec![leaf.clone()];
    let mut non_self_issued = 0usize;
    loop {
        let current = path.last().unwrap_or_else(|| unreachable!("path starts with the leaf"));
        check_alone(current, opts)?;
        // A trust anchor ends the path: either the current certificate is one, or it issued it.
        if anchors.anchors.iter().any(|a| a == current) {
            return Ok(path);
        }
        if path.len() >= opts.max_depth {
            return Err(VerifyError::DepthExceeded { max: opts.max_depth });
        }
        // An intermediate (not the leaf) counts against every pathLenConstraint above it.
        if path.len() > 1 && !current.is_self_issued() {
            non_self_issued += 1;
        }
        let issuer = find_issuer(current, intermediates, anchors, opts)?;
        check_issuer_may_sign(&issuer, non_self_issued)?;
        if anchors.anchors.contains(&issuer) {
            check_alone(&issuer, opts)?;
            path.push(issuer);
            return Ok(path);
        }
        path.push(issuer);
    }
}

fn find_issuer(
    child: &Certificate,
    intermediates: &[Certificate],
    anchors: &TrustAnchors,
    opts: &ValidationOptions,
) -> Result<Certificate, VerifyError> {
    let mut last_error = None;
    for candidate in anchors.anchors.iter().chain(intermediates) {
        if candidate.subject() != child.issuer() || candidate == child {
            continue;
        }
        match check_signed_by(child, candidate, opts) {
            Ok(()) => return Ok(candidate.clone()),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| VerifyError::UnknownIssuer {
        subject: subject(child),
        issuer: child.issuer().to_string(),
    }))
}

#[cfg(test)]
mod tests;
