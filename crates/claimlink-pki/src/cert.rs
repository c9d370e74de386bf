//! Parsed certificates, their ids and fingerprints.

use std::fmt;
use std::time::SystemTime;

use der::asn1::ObjectIdentifier as Oid;
use der::{Decode, Encode, Reader, SliceReader};
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAltName};
use x509_cert::name::Name;

use crate::alg::SignatureAlgorithm;
use crate::key::{KeyError, PublicKey};
use crate::limits::{MAX_DER_LEN, MAX_EXTENSIONS};
use crate::name::{self, attr};
use crate::pem::{self, PemError};

/// Errors parsing a certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertificateError {
    /// Larger than [`MAX_DER_LEN`].
    #[error("certificate is {len} bytes, more than the {max} allowed")]
    TooLarge {
        /// Size.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// Not a DER X.509 certificate.
    #[error("malformed certificate: {reason}")]
    Malformed {
        /// The decoder's message.
        reason: String,
    },
    /// Not version 3 (rustls and this project reject v1/v2).
    #[error("certificate is not X.509 v3")]
    NotV3,
    /// More extensions than [`MAX_EXTENSIONS`].
    #[error("certificate has more than {max} extensions")]
    TooManyExtensions {
        /// Limit.
        max: usize,
    },
    /// An extension occurs twice (RFC 5280 4.2).
    #[error("extension {oid} occurs more than once")]
    DuplicateExtension {
        /// The OID.
        oid: String,
    },
    /// A known extension whose contents do not decode.
    #[error("malformed {name} extension")]
    MalformedExtension {
        /// Which.
        name: &'static str,
    },
    /// PEM framing failed.
    #[error(transparent)]
    Pem(#[from] PemError),
    /// The PEM input held no certificate.
    #[error("no certificate found")]
    Empty,
}

/// A certificate id: lowercase hex SHA-256 of the DER (as AWS IoT's certificate ids).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CertificateId([u8; 32]);

impl CertificateId {
    /// The id of a DER encoding.
    pub fn of_der(der: &[u8]) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, der);
        let mut id = [0u8; 32];
        id.copy_from_slice(d.as_ref());
        Self(id)
    }

    /// The digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The OpenSSL-style fingerprint `SHA256:AB:CD:...` (same digest, as `openssl x509 -fingerprint -sha256`).
    pub fn fingerprint(&self) -> String {
        let hex: Vec<String> = self.0.iter().map(|b| format!("{b:02X}")).collect();
        format!("SHA256:{}", hex.join(":"))
    }
}

impl fmt::Display for CertificateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for CertificateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertificateId({self})")
    }
}

/// A parsed X.509 v3 certificate with its exact DER.
#[derive(Clone)]
pub struct Certificate {
    der: Vec<u8>,
    inner: x509_cert::Certificate,
}

impl PartialEq for Certificate {
    fn eq(&self, other: &Self) -> bool {
        self.der == other.der
    }
}
impl Eq for Certificate {}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("id", &self.id())
            .field("subject", &self.subject().to_string())
            .field("issuer", &self.issuer().to_string())
            .finish()
    }
}

fn malformed(e: der::Error) -> CertificateError {
    CertificateError::Malformed { reason: e.to_string() }
}

impl Certificate {
    /// Parses DER (strict; bounded by [`MAX_DER_LEN`]).
    pub fn from_der(der: &[u8]) -> Result<Self, CertificateError> {
        if der.len() > MAX_DER_LEN {
            return Err(CertificateError::TooLarge { len: der.len(), max: MAX_DER_LEN });
        }
        let inner = x509_cert::Certificate::from_der(der).map_err(malformed)?;
        if inner.tbs_certificate().version() != x509_cert::Version::V3 {
            return Err(CertificateError::NotV3);
        }
        let cert = Self { der: der.to_vec(), inner };
        cert.check_extensions()?;
        Ok(cert)
    }

    fn check_extensions(&self) -> Result<(), CertificateError> {
        let exts = self.extensions();
        if exts.len() > MAX_EXTENSIONS {
            return Err(CertificateError::TooManyExtensions { max: MAX_EXTENSIONS });
        }
        for (i, e) in exts.iter().enumerate() {
            if exts[..i].iter().any(|p| p.extn_id == e.extn_id) {
                return Err(CertificateError::DuplicateExtension { oid: e.extn_id.to_string() });
            }
        }
        // Decode the extensions path validation relies on, so later reads cannot fail.
        self.basic_constraints()?;
        self.key_usage()?;
        self.extended_key_usage()?;
        self.subject_alt_name()?;
        Ok(())
    }

    /// Parses one PEM `CERTIFICATE` block.
    pub fn from_pem(text: &[u8]) -> Result<Self, CertificateError> {
        let mut all = Self::chain_from_pem(text)?;
        if all.len() != 1 {
            return Err(CertificateError::Malformed {
                reason: format!("expected one certificate, found {}", all.len()),
            });
        }
        Ok(all.remove(0))
    }

    /// Parses a file's contents: PEM if it has a `-----BEGIN` line, else DER.
    pub fn from_pem_or_der(bytes: &[u8]) -> Result<Self, CertificateError> {
        if pem::looks_like_pem(bytes) { Self::from_pem(bytes) } else { Self::from_der(bytes) }
    }

    /// Parses every `CERTIFICATE` block of a PEM bundle, in order.
    pub fn chain_from_pem(text: &[u8]) -> Result<Vec<Self>, CertificateError> {
        let blocks = pem::decode_labelled(text, "CERTIFICATE")?;
        if blocks.is_empty() {
            return Err(CertificateError::Empty);
        }
        blocks.iter().map(|d| Self::from_der(d)).collect()
    }

    /// The DER encoding.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// PEM `CERTIFICATE`.
    pub fn to_pem(&self) -> String {
        pem::encode("CERTIFICATE", &self.der)
    }

    /// The parsed structure.
    pub fn inner(&self) -> &x509_cert::Certificate {
        &self.inner
    }

    /// Lowercase hex SHA-256 of the DER.
    pub fn id(&self) -> CertificateId {
        CertificateId::of_der(&self.der)
    }

    /// The exact signed bytes (the DER of tbsCertificate as received).
    pub fn tbs_der(&self) -> &[u8] {
        first_inner_tlv(&self.der).unwrap_or_else(|| unreachable!("parsed certificate"))
    }

    /// The subject name.
    pub fn subject(&self) -> &Name {
        self.inner.tbs_certificate().subject()
    }

    /// The issuer name.
    pub fn issuer(&self) -> &Name {
        self.inner.tbs_certificate().issuer()
    }

    /// Subject commonName.
    pub fn common_name(&self) -> Option<String> {
        name::attribute(self.subject(), attr::COMMON_NAME)
    }

    /// Subject serialNumber attribute (the ThingName of a birth certificate).
    pub fn subject_serial_number(&self) -> Option<String> {
        name::attribute(self.subject(), attr::SERIAL_NUMBER)
    }

    /// The certificate serial number, hex.
    pub fn serial_hex(&self) -> String {
        hex::encode(self.inner.tbs_certificate().serial_number().as_bytes())
    }

    /// notBefore.
    pub fn not_before(&self) -> SystemTime {
        self.inner.tbs_certificate().validity().not_before.to_system_time()
    }

    /// notAfter.
    pub fn not_after(&self) -> SystemTime {
        self.inner.tbs_certificate().validity().not_after.to_system_time()
    }

    /// notAfter as RFC 3339 (`2046-11-23T12:00:00Z`).
    pub fn not_after_rfc3339(&self) -> String {
        self.inner.tbs_certificate().validity().not_after.to_date_time().to_string()
    }

    /// The subject public key.
    pub fn public_key(&self) -> Result<PublicKey, KeyError> {
        PublicKey::from_spki(self.inner.tbs_certificate().subject_public_key_info())
    }

    /// The outer signature algorithm, if supported and equal to the one inside the TBS.
    pub fn signature_algorithm(&self) -> Option<SignatureAlgorithm> {
        let outer = self.inner.signature_algorithm();
        (outer == self.inner.tbs_certificate().signature())
            .then(|| SignatureAlgorithm::from_identifier(outer))
            .flatten()
    }

    /// The signature bytes.
    pub fn signature(&self) -> &[u8] {
        self.inner.signature().raw_bytes()
    }

    /// All extensions.
    pub fn extensions(&self) -> &[x509_cert::ext::Extension] {
        self.inner.tbs_certificate().extensions().map(|e| e.as_slice()).unwrap_or(&[])
    }

    fn decode_ext<'a, T: Decode<'a>>(
        &'a self,
        oid: Oid,
        name: &'static str,
    ) -> Result<Option<(bool, T)>, CertificateError> {
        self.extensions()
            .iter()
            .find(|e| e.extn_id == oid)
            .map(|e| {
                T::from_der(e.extn_value.as_bytes())
                    .map(|v| (e.critical, v))
                    .map_err(|_| CertificateError::MalformedExtension { name })
            })
            .transpose()
    }

    /// basicConstraints `(critical, value)`.
    pub fn basic_constraints(&self) -> Result<Option<(bool, BasicConstraints)>, CertificateError> {
        self.decode_ext(ext_oids::BASIC_CONSTRAINTS, "basicConstraints")
    }

    /// keyUsage `(critical, value)`.
    pub fn key_usage(&self) -> Result<Option<(bool, KeyUsage)>, CertificateError> {
        self.decode_ext(ext_oids::KEY_USAGE, "keyUsage")
    }

    /// extendedKeyUsage `(critical, value)`.
    pub fn extended_key_usage(&self) -> Result<Option<(bool, ExtendedKeyUsage)>, CertificateError> {
        self.decode_ext(ext_oids::EXT_KEY_USAGE, "extendedKeyUsage")
    }

    /// subjectAltName `(critical, value)`.
    pub fn subject_alt_name(&self) -> Result<Option<(bool, SubjectAltName)>, CertificateError> {
        self.decode_ext(ext_oids::SUBJECT_ALT_NAME, "subjectAltName")
    }

    /// The `http://` URLs of the cRLDistributionPoints extension (full names only).
    pub fn crl_urls(&self) -> Result<Vec<String>, CertificateError> {
        use x509_cert::ext::pkix::CrlDistributionPoints;
        let points = self.decode_ext::<CrlDistributionPoints>(
            ext_oids::CRL_DISTRIBUTION_POINTS,
            "cRLDistributionPoints",
        )?;
        Ok(points.map_or_else(Vec::new, |(_, p)| full_name_urls(&p.0)))
    }

    /// The `http://` URLs of the freshestCRL extension: where the delta CRLs are.
    pub fn delta_crl_urls(&self) -> Result<Vec<String>, CertificateError> {
        use x509_cert::ext::pkix::FreshestCrl;
        let points = self.decode_ext::<FreshestCrl>(ext_oids::FRESHEST_CRL, "freshestCRL")?;
        Ok(points.map_or_else(Vec::new, |(_, p)| full_name_urls(&p.0)))
    }

    /// The `http://` OCSP responder URLs of the authorityInfoAccess extension.
    pub fn ocsp_urls(&self) -> Result<Vec<String>, CertificateError> {
        use x509_cert::ext::pkix::AuthorityInfoAccessSyntax;
        const AD_OCSP: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.48.1");
        let Some((_, access)) = self.decode_ext::<AuthorityInfoAccessSyntax>(
            ext_oids::AUTHORITY_INFO_ACCESS,
            "authorityInfoAccess",
        )?
        else {
            return Ok(Vec::new());
        };
        Ok(access
            .0
            .iter()
            .filter(|a| a.access_method == AD_OCSP)
            .filter_map(|a| http_uri(&a.access_location))
            .collect())
    }

    /// Whether basicConstraints says CA:TRUE.
    pub fn is_ca(&self) -> bool {
        matches!(self.basic_constraints(), Ok(Some((_, bc))) if bc.ca)
    }

    /// Whether the certificate is self-issued (subject == issuer).
    pub fn is_self_issued(&self) -> bool {
        self.subject() == self.issuer()
    }
}

/// The `http://` URIs of the full names of distribution points.
fn full_name_urls(points: &[x509_cert::ext::pkix::crl::dp::DistributionPoint]) -> Vec<String> {
    use x509_cert::ext::pkix::name::DistributionPointName;
    points
        .iter()
        .filter_map(|p| match &p.distribution_point {
            Some(DistributionPointName::FullName(names)) => Some(names),
            _ => None,
        })
        .flatten()
        .filter_map(http_uri)
        .collect()
}

fn http_uri(name: &x509_cert::ext::pkix::name::GeneralName) -> Option<String> {
    match name {
        x509_cert::ext::pkix::name::GeneralName::UniformResourceIdentifier(u)
            if u.as_str().starts_with("http://") =>
        {
            Some(u.as_str().to_owned())
        }
        _ => None,
    }
}

/// The first TLV inside the outer SEQUENCE of `der`.
pub(crate) fn first_inner_tlv(der: &[u8]) -> Option<&[u8]> {
    let mut outer = SliceReader::new(der).ok()?;
    let header = der::Header::decode(&mut outer).ok()?;
    let body = outer.read_slice(header.length()).ok()?;
    SliceReader::new(body).ok()?.tlv_bytes().ok()
}

/// Extension OIDs.
pub mod ext_oids {
    use der::asn1::ObjectIdentifier as Oid;
    /// subjectKeyIdentifier.
    pub const SUBJECT_KEY_ID: Oid = Oid::new_unwrap("2.5.29.14");
    /// keyUsage.
    pub const KEY_USAGE: Oid = Oid::new_unwrap("2.5.29.15");
    /// subjectAltName.
    pub const SUBJECT_ALT_NAME: Oid = Oid::new_unwrap("2.5.29.17");
    /// basicConstraints.
    pub const BASIC_CONSTRAINTS: Oid = Oid::new_unwrap("2.5.29.19");
    /// cRLDistributionPoints.
    pub const CRL_DISTRIBUTION_POINTS: Oid = Oid::new_unwrap("2.5.29.31");
    /// certificatePolicies.
    pub const CERTIFICATE_POLICIES: Oid = Oid::new_unwrap("2.5.29.32");
    /// authorityKeyIdentifier.
    pub const AUTHORITY_KEY_ID: Oid = Oid::new_unwrap("2.5.29.35");
    /// extKeyUsage.
    pub const EXT_KEY_USAGE: Oid = Oid::new_unwrap("2.5.29.37");
    /// freshestCRL (where delta CRLs are published).
    pub const FRESHEST_CRL: Oid = Oid::new_unwrap("2.5.29.46");
    /// authorityInfoAccess.
    pub const AUTHORITY_INFO_ACCESS: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.1.1");
    /// id-kp-serverAuth.
    pub const KP_SERVER_AUTH: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.3.1");
    /// id-kp-clientAuth.
    pub const KP_CLIENT_AUTH: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.3.2");
    /// id-kp-OCSPSigning.
    pub const KP_OCSP_SIGNING: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.3.9");
    /// id-pkix-ocsp-nocheck.
    pub const OCSP_NOCHECK: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.48.1.5");
}

impl Encode for Certificate {
    fn encoded_len(&self) -> der::Result<der::Length> {
        der::Length::try_from(self.der.len())
    }
    fn encode(&self, writer: &mut impl der::Writer) -> der::Result<()> {
        writer.write(&self.der)
    }
}
