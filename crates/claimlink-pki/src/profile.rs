//! Certificate profiles and the one issuance pipeline: profile -> extensions -> TBS -> signature.

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use der::asn1::{Any, BitString, Ia5String, ObjectIdentifier as Oid, OctetString, UintRef};
use der::flagset::FlagSet;
use der::{Encode, Sequence};
use rand_core::CryptoRng;
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages, SubjectAltName,
    SubjectKeyIdentifier,
};
use x509_cert::name::Name;
use x509_cert::time::{Time, Validity};

use crate::cert::{Certificate, ext_oids};
use crate::key::{KeyError, PublicKey, Signer, signature_bits};

/// One year, for validity arithmetic.
pub const YEAR: Duration = Duration::from_secs(365 * 24 * 3600 + 6 * 3600);
/// Default validity of a device birth certificate (REFERENCE.md section 1 requires >= 10 years).
pub const DEVICE_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600 + 5 * 24 * 3600);

/// A device's unique ID: 128 random bits as 32 lowercase hex characters.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ThingName(String);

/// Text that is not a ThingName of a birth certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a ThingName: expected 32 lowercase hex characters")]
pub struct ThingNameError;

impl ThingName {
    /// A fresh random, nonsequential ThingName.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut bytes = [0u8; 16];
        rng.fill_bytes(&mut bytes);
        Self(hex::encode(bytes))
    }

    /// Parses a ThingName (exactly 32 lowercase hex digits).
    pub fn parse(s: &str) -> Result<Self, ThingNameError> {
        let ok = s.len() == 32 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        ok.then(|| Self(s.to_owned())).ok_or(ThingNameError)
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ThingName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ThingName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ThingName({})", self.0)
    }
}

/// What a certificate is for. Each profile fixes its extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Profile {
    /// Self-signed root: CA:TRUE (critical), keyCertSign + cRLSign.
    RootCa,
    /// Intermediate: CA:TRUE with an optional pathLenConstraint, keyCertSign + cRLSign.
    IssuingCa {
        /// pathLenConstraint (0: may only issue end-entity certificates).
        path_len: Option<u8>,
    },
    /// Device birth certificate: CA:FALSE, digitalSignature, clientAuth.
    DeviceBirth,
    /// TLS server: CA:FALSE, digitalSignature, serverAuth, SAN with DNS names and IPs.
    TlsServer {
        /// DNS names.
        dns: Vec<String>,
        /// IP addresses.
        ips: Vec<IpAddr>,
    },
    /// An OEM's claim-thing client certificate: CA:FALSE, digitalSignature, clientAuth.
    ClaimThing,
    /// A delegated OCSP responder of its issuing CA (RFC 6960 section 4.2.2.2): CA:FALSE,
    /// digitalSignature, id-kp-OCSPSigning, id-pkix-ocsp-nocheck.
    OcspResponder,
    /// The encryption certificate of a dual pair (GM/T 0015; TLCP's second server or client
    /// certificate): CA:FALSE, keyEncipherment + dataEncipherment + keyAgreement and never
    /// digitalSignature, no extended key usage; a SAN when names are given (a server's).
    Encryption {
        /// DNS names (may be empty).
        dns: Vec<String>,
        /// IP addresses (may be empty).
        ips: Vec<IpAddr>,
    },
}

impl Profile {
    fn is_ca(&self) -> bool {
        matches!(self, Self::RootCa | Self::IssuingCa { .. })
    }
}

/// Errors issuing a certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IssueError {
    /// notAfter is not after notBefore.
    #[error("validity ends before it starts")]
    EmptyValidity,
    /// The issuer certificate is not a CA.
    #[error("issuer certificate is not a CA (basicConstraints CA:FALSE or absent)")]
    IssuerNotCa,
    /// A TLS server profile without any DNS name or IP address.
    #[error("a TLS server certificate needs at least one DNS name or IP address")]
    NoSubjectAltName,
    /// A DNS name that is not an IA5String host name.
    #[error("invalid DNS name {name:?}")]
    InvalidDnsName {
        /// The name.
        name: String,
    },
    /// The issuer certificate does not carry the signer's public key.
    #[error("the signing key does not match the issuer certificate")]
    SignerMismatch,
    /// The signer failed.
    #[error("signing failed: {0}")]
    Signing(#[from] KeyError),
    /// The certificate built does not parse back (a bug, or a subject that cannot be encoded).
    #[error("issued certificate does not parse back: {reason}")]
    Unparsable {
        /// The parser's message.
        reason: String,
    },
    /// A time outside what X.509 can encode.
    #[error("time cannot be encoded in a certificate")]
    BadTime,
    /// A publication URL that is not a plain `http://` URL.
    #[error("{url:?} is not an http:// URL a certificate can carry")]
    InvalidUrl {
        /// The URL.
        url: String,
    },
}

/// Who signs: a signer and, unless self-signing a root, the certificate of its key.
pub struct Issuer<'a> {
    /// The issuer's certificate; `None` to self-sign.
    pub certificate: Option<&'a Certificate>,
    /// The issuer's key.
    pub signer: &'a dyn Signer,
}

/// What the new certificate says about its subject.
#[derive(Debug, Clone)]
pub struct Subject {
    /// The subject name.
    pub name: Name,
    /// The subject's public key.
    pub public_key: PublicKey,
    /// notBefore.
    pub not_before: SystemTime,
    /// notAfter.
    pub not_after: SystemTime,
    /// Extensions added after the profile's own (for example, from an approved CSR).
    pub extra_extensions: Vec<Extension>,
}

/// How far notBefore is set back from the time of issue, so that a device whose clock is a
/// little behind still accepts a certificate issued just now.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(3600);

impl Subject {
    /// A subject valid from [`CLOCK_SKEW_ALLOWANCE`] before `now` until `now + validity`.
    pub fn new(name: Name, public_key: PublicKey, now: SystemTime, validity: Duration) -> Self {
        Self {
            name,
            public_key,
            not_before: now - CLOCK_SKEW_ALLOWANCE,
            not_after: now + validity,
            extra_extensions: Vec::new(),
        }
    }
}

#[derive(Sequence)]
struct TbsCertificate<'a> {
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT")]
    version: u8,
    serial_number: UintRef<'a>,
    signature: AlgorithmIdentifierOwned,
    issuer: Name,
    validity: Validity,
    subject: Name,
    subject_public_key_info: SubjectPublicKeyInfoOwned,
    #[asn1(context_specific = "3", tag_mode = "EXPLICIT", optional = "true")]
    extensions: Option<Vec<Extension>>,
}

#[derive(Sequence)]
struct SignedDer {
    tbs: Any,
    algorithm: AlgorithmIdentifierOwned,
    signature: BitString,
}

fn ext<T: Encode>(oid: Oid, critical: bool, value: &T) -> Extension {
    let der = value.to_der().unwrap_or_else(|_| unreachable!("extensions encode"));
    Extension {
        extn_id: oid,
        critical,
        extn_value: OctetString::new(der).unwrap_or_else(|_| unreachable!("small")),
    }
}

fn time(t: SystemTime) -> Result<Time, IssueError> {
    der::DateTime::from_system_time(t).map(Time::from).map_err(|_| IssueError::BadTime)
}

fn extensions(
    profile: &Profile,
    subject_key: &PublicKey,
    issuer_key: &PublicKey,
) -> Result<Vec<Extension>, IssueError> {
    let (bc, usages, eku): (BasicConstraints, FlagSet<KeyUsages>, Option<Oid>) = match profile {
        Profile::RootCa => (bc(true, None), KeyUsages::KeyCertSign | KeyUsages::CRLSign, None),
        Profile::IssuingCa { path_len } => (
            bc(true, *path_len),
            KeyUsages::KeyCertSign | KeyUsages::CRLSign | KeyUsages::DigitalSignature,
            None,
        ),
        Profile::DeviceBirth | Profile::ClaimThing => {
            (bc(false, None), KeyUsages::DigitalSignature.into(), Some(ext_oids::KP_CLIENT_AUTH))
        }
        Profile::TlsServer { .. } => {
            (bc(false, None), KeyUsages::DigitalSignature.into(), Some(ext_oids::KP_SERVER_AUTH))
        }
        Profile::OcspResponder => {
            (bc(false, None), KeyUsages::DigitalSignature.into(), Some(ext_oids::KP_OCSP_SIGNING))
        }
        Profile::Encryption { .. } => (
            bc(false, None),
            KeyUsages::KeyEncipherment | KeyUsages::DataEncipherment | KeyUsages::KeyAgreement,
            None,
        ),
    };
    let mut out =
        vec![ext(ext_oids::BASIC_CONSTRAINTS, true, &bc), ext(ext_oids::KEY_USAGE, true, &KeyUsage(usages))];
    if let Some(purpose) = eku {
        out.push(ext(ext_oids::EXT_KEY_USAGE, false, &ExtendedKeyUsage(vec![purpose])));
    }
    match profile {
        Profile::TlsServer { dns, ips } => out.push(ext(ext_oids::SUBJECT_ALT_NAME, false, &san(dns, ips)?)),
        Profile::Encryption { dns, ips } if !(dns.is_empty() && ips.is_empty()) => {
            out.push(ext(ext_oids::SUBJECT_ALT_NAME, false, &san(dns, ips)?))
        }
        // Its own status is not checked by OCSP (it would ask itself).
        Profile::OcspResponder => out.push(ext(ext_oids::OCSP_NOCHECK, false, &der::asn1::Null)),
        _ => {}
    }
    let ski =
        OctetString::new(subject_key.key_identifier().to_vec()).unwrap_or_else(|_| unreachable!("20 bytes"));
    out.push(ext(ext_oids::SUBJECT_KEY_ID, false, &SubjectKeyIdentifier(ski)));
    if !matches!(profile, Profile::RootCa) {
        let aki = AuthorityKeyIdentifier {
            key_identifier: Some(
                OctetString::new(issuer_key.key_identifier().to_vec())
                    .unwrap_or_else(|_| unreachable!("20 bytes")),
            ),
            authority_cert_issuer: None,
            authority_cert_serial_number: None,
        };
        out.push(ext(ext_oids::AUTHORITY_KEY_ID, false, &aki));
    }
    Ok(out)
}

/// id-ad-ocsp (RFC 5280 section 4.2.2.1).
const AD_OCSP: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.48.1");
/// id-ad-caIssuers.
const AD_CA_ISSUERS: Oid = Oid::new_unwrap("1.3.6.1.5.5.7.48.2");

/// A URL that can go into a certificate: `http://` (RFC 5280 section 4.2.1.13: CRLs and OCSP
/// are fetched over plain HTTP, their own signatures protect them) and IA5 text of at most 1024
/// bytes without spaces or controls.
fn uri(url: &str) -> Result<GeneralName, IssueError> {
    let ok = url.starts_with("http://")
        && url.len() > "http://".len()
        && url.len() <= 1024
        && url.bytes().all(|b| b.is_ascii_graphic());
    let bad = || IssueError::InvalidUrl { url: url.to_owned() };
    if !ok {
        return Err(bad());
    }
    Ok(GeneralName::UniformResourceIdentifier(Ia5String::new(url).map_err(|_| bad())?))
}

/// Where relying parties learn a certificate's status, written into every certificate a CA of
/// ours issues when it publishes: the cRLDistributionPoints extension (one full-name
/// distribution point), freshestCRL (where the delta CRLs are, RFC 5280 section 4.2.1.15) when
/// given, and authorityInfoAccess (the OCSP responder and, when given, the issuer's
/// certificate).
pub fn publication_extensions(
    crl_url: &str,
    delta_crl_url: Option<&str>,
    ocsp_url: &str,
    ca_issuers_url: Option<&str>,
) -> Result<Vec<Extension>, IssueError> {
    use x509_cert::ext::pkix::crl::dp::DistributionPoint;
    use x509_cert::ext::pkix::name::DistributionPointName;
    use x509_cert::ext::pkix::{AccessDescription, AuthorityInfoAccessSyntax, CrlDistributionPoints};
    let cdp = CrlDistributionPoints(vec![DistributionPoint {
        distribution_point: Some(DistributionPointName::FullName(vec![uri(crl_url)?])),
        reasons: None,
        crl_issuer: None,
    }]);
    let mut access = vec![AccessDescription { access_method: AD_OCSP, access_location: uri(ocsp_url)? }];
    if let Some(url) = ca_issuers_url {
        access.push(AccessDescription { access_method: AD_CA_ISSUERS, access_location: uri(url)? });
    }
    let mut out = vec![ext(ext_oids::CRL_DISTRIBUTION_POINTS, false, &cdp)];
    if let Some(url) = delta_crl_url {
        let freshest = x509_cert::ext::pkix::FreshestCrl(vec![DistributionPoint {
            distribution_point: Some(DistributionPointName::FullName(vec![uri(url)?])),
            reasons: None,
            crl_issuer: None,
        }]);
        out.push(ext(ext_oids::FRESHEST_CRL, false, &freshest));
    }
    out.push(ext(ext_oids::AUTHORITY_INFO_ACCESS, false, &AuthorityInfoAccessSyntax(access)));
    Ok(out)
}

fn bc(ca: bool, path_len_constraint: Option<u8>) -> BasicConstraints {
    BasicConstraints { ca, path_len_constraint }
}

fn san(dns: &[String], ips: &[IpAddr]) -> Result<SubjectAltName, IssueError> {
    if dns.is_empty() && ips.is_empty() {
        return Err(IssueError::NoSubjectAltName);
    }
    let mut names = Vec::with_capacity(dns.len() + ips.len());
    for d in dns {
        let valid = !d.is_empty()
            && d.len() <= 253
            && d.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && (l == "*" || l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
            });
        let ia5 = Ia5String::new(d)
            .ok()
            .filter(|_| valid)
            .ok_or_else(|| IssueError::InvalidDnsName { name: d.clone() })?;
        names.push(GeneralName::DnsName(ia5));
    }
    for ip in ips {
        let bytes = match ip {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        names.push(GeneralName::IpAddress(OctetString::new(bytes).unwrap_or_else(|_| unreachable!("small"))));
    }
    Ok(SubjectAltName(names))
}

/// A random positive 128-bit serial number (RFC 5280: positive, <= 20 octets; CA/B: >= 64 bits of entropy).
fn serial<R: CryptoRng + ?Sized>(rng: &mut R) -> [u8; 16] {
    let mut s = [0u8; 16];
    rng.fill_bytes(&mut s);
    s[0] = (s[0] & 0x7f) | 0x40; // positive, and never shorter than 16 octets in DER
    s
}

/// Issues a certificate of `profile` for `subject`, signed by `issuer`.
pub fn issue<R: CryptoRng + ?Sized>(
    issuer: &Issuer<'_>,
    profile: &Profile,
    subject: &Subject,
    rng: &mut R,
) -> Result<Certificate, IssueError> {
    if subject.not_after <= subject.not_before {
        return Err(IssueError::EmptyValidity);
    }
    let issuer_key = issuer.signer.public_key();
    let issuer_name = match issuer.certificate {
        None => subject.name.clone(),
        Some(cert) => {
            if !cert.is_ca() {
                return Err(IssueError::IssuerNotCa);
            }
            if cert.public_key().ok().as_ref() != Some(&issuer_key) {
                return Err(IssueError::SignerMismatch);
            }
            cert.subject().clone()
        }
    };
    if issuer.certificate.is_none() && !profile.is_ca() {
        return Err(IssueError::IssuerNotCa);
    }
    build_signed(issuer_name, issuer.signer, profile, subject, rng)
}

/// Builds and signs without checking the issuer (tests use it to make invalid paths).
pub(crate) fn build_signed<R: CryptoRng + ?Sized>(
    issuer_name: Name,
    signer: &dyn Signer,
    profile: &Profile,
    subject: &Subject,
    rng: &mut R,
) -> Result<Certificate, IssueError> {
    let issuer_key = signer.public_key();
    let algorithm = signer.signature_algorithm().identifier();
    let serial = serial(rng);
    let tbs = TbsCertificate {
        version: 2,
        serial_number: UintRef::new(&serial).unwrap_or_else(|_| unreachable!("16 bytes")),
        signature: algorithm.clone(),
        issuer: issuer_name,
        validity: Validity::new(time(subject.not_before)?, time(subject.not_after)?),
        subject: subject.name.clone(),
        subject_public_key_info: subject.public_key.to_spki(),
        extensions: Some({
            let mut all = extensions(profile, &subject.public_key, &issuer_key)?;
            all.extend(subject.extra_extensions.iter().cloned());
            all
        }),
    };
    let der = sign_der(&tbs, algorithm, signer)?;
    Certificate::from_der(&der).map_err(|e| IssueError::Unparsable { reason: e.to_string() })
}

/// Signs the DER of `tbs` and wraps it as `SEQUENCE { tbs, algorithm, BIT STRING signature }`
/// (the shape of certificates, CSRs and CRLs).
pub(crate) fn sign_der<T: Encode>(
    tbs: &T,
    algorithm: AlgorithmIdentifierOwned,
    signer: &dyn Signer,
) -> Result<Vec<u8>, KeyError> {
    let tbs_der = tbs.to_der().unwrap_or_else(|_| unreachable!("TBS encodes"));
    let signature = signer.sign(&tbs_der)?;
    let signed = SignedDer {
        tbs: <Any as der::Decode>::from_der(&tbs_der).unwrap_or_else(|_| unreachable!("just encoded")),
        algorithm,
        signature: signature_bits(&signature),
    };
    Ok(signed.to_der().unwrap_or_else(|_| unreachable!("signed structure encodes")))
}
