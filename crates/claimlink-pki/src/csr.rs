//! PKCS#10 certificate signing requests: built with a [`Signer`], parsed and self-verified.

use der::asn1::{ObjectIdentifier as Oid, SetOfVec};
use der::{Decode, Encode};
use x509_cert::attr::Attribute;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::name::Name;
use x509_cert::request::{CertReq, CertReqInfo, ExtensionReq, Version};

use claimlink_gm::DistId;

use crate::alg::SignatureAlgorithm;
use crate::cert::ext_oids;
use crate::key::{KeyError, PublicKey, Signer};
use crate::limits::{MAX_DER_LEN, MAX_EXTENSIONS};
use crate::pem::{self, PemError};
use crate::profile::sign_der;

const EXTENSION_REQUEST: Oid = Oid::new_unwrap("1.2.840.113549.1.9.14");

/// Errors about CSRs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    /// Larger than [`MAX_DER_LEN`].
    #[error("CSR is {len} bytes, more than the {max} allowed")]
    TooLarge {
        /// Size.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// Not a DER PKCS#10 request.
    #[error("malformed CSR: {reason}")]
    Malformed {
        /// The decoder's message.
        reason: String,
    },
    /// Its signature algorithm is not supported.
    #[error("unsupported CSR signature algorithm {oid}")]
    UnsupportedAlgorithm {
        /// The OID.
        oid: String,
    },
    /// The self-signature does not verify (proof of possession failed).
    #[error("CSR signature does not verify")]
    BadSignature,
    /// The public key is unsupported or malformed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// PEM framing failed.
    #[error(transparent)]
    Pem(#[from] PemError),
}

/// A parsed CSR whose self-signature has been verified.
#[derive(Debug, Clone)]
pub struct CertificateRequest {
    der: Vec<u8>,
    inner: CertReq,
    public_key: PublicKey,
}

impl CertificateRequest {
    /// Builds and signs a CSR for `subject`, requesting `dns` names in an extensionRequest.
    pub fn build(subject: Name, signer: &dyn Signer, dns: &[String]) -> Result<Self, CsrError> {
        let mut attributes = SetOfVec::new();
        if !dns.is_empty() {
            let names = dns
                .iter()
                .map(|d| {
                    der::asn1::Ia5String::new(d)
                        .map(x509_cert::ext::pkix::name::GeneralName::DnsName)
                        .map_err(|e| CsrError::Malformed { reason: e.to_string() })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let san =
                SubjectAltName(names).to_der().map_err(|e| CsrError::Malformed { reason: e.to_string() })?;
            let ext = x509_cert::ext::Extension {
                extn_id: ext_oids::SUBJECT_ALT_NAME,
                critical: false,
                extn_value: der::asn1::OctetString::new(san)
                    .map_err(|e| CsrError::Malformed { reason: e.to_string() })?,
            };
            let req = ExtensionReq(vec![ext])
                .to_der()
                .map_err(|e| CsrError::Malformed { reason: e.to_string() })?;
            let mut values = SetOfVec::new();
            values
                .insert(der::Any::from_der(&req).map_err(|e| CsrError::Malformed { reason: e.to_string() })?)
                .map_err(|e| CsrError::Malformed { reason: e.to_string() })?;
            attributes
                .insert(Attribute { oid: EXTENSION_REQUEST, values })
                .map_err(|e| CsrError::Malformed { reason: e.to_string() })?;
        }
        let info = CertReqInfo {
            version: Version::V1,
            subject,
            public_key: signer.public_key().to_spki(),
            attributes,
        };
        let der = sign_der(&info, signer.signature_algorithm().identifier(), signer)?;
        Self::from_der(&der)
    }

    /// Parses DER and verifies the self-signature (SM2 with the GM/T 0009 ID).
    pub fn from_der(der: &[u8]) -> Result<Self, CsrError> {
        Self::from_der_with_id(der, &DistId::GMT_0009_DEFAULT)
    }

    /// Parses DER and verifies the self-signature, with an explicit SM2 ID.
    pub fn from_der_with_id(der: &[u8], id: &DistId) -> Result<Self, CsrError> {
        if der.len() > MAX_DER_LEN {
            return Err(CsrError::TooLarge { len: der.len(), max: MAX_DER_LEN });
        }
        let inner = CertReq::from_der(der).map_err(|e| CsrError::Malformed { reason: e.to_string() })?;
        let algorithm = SignatureAlgorithm::from_identifier(&inner.algorithm)
            .ok_or_else(|| CsrError::UnsupportedAlgorithm { oid: inner.algorithm.oid.to_string() })?;
        let public_key = PublicKey::from_spki(&inner.info.public_key)?;
        let info_der = crate::cert::first_inner_tlv(der)
            .ok_or_else(|| CsrError::Malformed { reason: "no request info".into() })?;
        public_key
            .verify(algorithm, id, info_der, inner.signature.raw_bytes())
            .map_err(|_| CsrError::BadSignature)?;
        let csr = Self { der: der.to_vec(), inner, public_key };
        if csr.requested_extensions().len() > MAX_EXTENSIONS {
            return Err(CsrError::Malformed {
                reason: format!("more than {MAX_EXTENSIONS} requested extensions"),
            });
        }
        Ok(csr)
    }

    /// Parses one PEM `CERTIFICATE REQUEST` and verifies it.
    pub fn from_pem(text: &[u8]) -> Result<Self, CsrError> {
        let blocks = pem::decode_labelled(text, "CERTIFICATE REQUEST")?;
        match blocks.as_slice() {
            [one] => Self::from_der(one),
            _ => Err(CsrError::Malformed { reason: format!("expected one CSR, found {}", blocks.len()) }),
        }
    }

    /// Parses a file's contents: PEM if it has a `-----BEGIN` line, else DER.
    pub fn from_pem_or_der(bytes: &[u8]) -> Result<Self, CsrError> {
        if pem::looks_like_pem(bytes) { Self::from_pem(bytes) } else { Self::from_der(bytes) }
    }

    /// The signed part (the DER of certificationRequestInfo as received).
    pub fn info_der(&self) -> &[u8] {
        crate::cert::first_inner_tlv(&self.der).unwrap_or_else(|| unreachable!("parsed and verified"))
    }

    /// The signature bytes.
    pub fn signature(&self) -> &[u8] {
        self.inner.signature.raw_bytes()
    }

    /// The DER.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// PEM `CERTIFICATE REQUEST`.
    pub fn to_pem(&self) -> String {
        pem::encode("CERTIFICATE REQUEST", &self.der)
    }

    /// The requested subject.
    pub fn subject(&self) -> &Name {
        &self.inner.info.subject
    }

    /// The verified public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public_key
    }

    /// Extensions requested through a PKCS#9 extensionRequest attribute.
    pub fn requested_extensions(&self) -> Vec<x509_cert::ext::Extension> {
        self.inner
            .info
            .attributes
            .iter()
            .filter(|a| a.oid == EXTENSION_REQUEST)
            .flat_map(|a| a.values.iter())
            .filter_map(|v| v.decode_as::<ExtensionReq>().ok())
            .flat_map(|r| r.0)
            .collect()
    }
}
