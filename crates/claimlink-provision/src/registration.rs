//! The account registry's rules: what may be registered and which changes are allowed. Each
//! operation judges its input (certificate contents, proof of possession, policy document,
//! status transition) and then asks the registry, which only stores, to keep the result - in the
//! caller's transaction. Each has its own error, with typed fields and a stable code.

use claimlink_pki::{Certificate, CertificateError};
use claimlink_policy::{Policy, PolicyError};
use claimlink_registry::{
    Account, AccountId, CaCertificate, CaId, CaMode, CaStatus, CertificateId, CertificateRecord,
    CertificateStatus, Coded, NewCa, PolicyName, PolicyRecord, RegistryError, TemplateName, Tx,
};

/// Why a PEM sent to us is not one certificate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PemError {
    /// A private key came with it (never echoed back, never stored).
    #[error("the PEM holds a private key; send the certificate only")]
    PrivateKey,
    /// It does not parse.
    #[error("not a valid certificate PEM: {0}")]
    Certificate(#[from] CertificateError),
    /// Not exactly one certificate.
    #[error("expected one certificate, found {0}")]
    Count(usize),
}

impl Coded for PemError {
    fn code(&self) -> &'static str {
        "InvalidRequestException"
    }
}

/// A certificate given as PEM: exactly one certificate, and no private key beside it.
pub fn certificate_from_pem(pem: &str) -> Result<Certificate, PemError> {
    if pem.contains("PRIVATE KEY-----") {
        return Err(PemError::PrivateKey);
    }
    let chain = Certificate::chain_from_pem(pem.as_bytes())?;
    match <[Certificate; 1]>::try_from(chain) {
        Ok([c]) => Ok(c),
        Err(v) => Err(PemError::Count(v.len())),
    }
}

/// Whether `cert` carries a valid signature by `issuer`'s key.
pub fn signed_by(cert: &Certificate, issuer: &Certificate) -> bool {
    claimlink_pki::verify::verify_signed_by(cert, issuer).is_ok()
}

/// A CA certificate an account asks to register (`register-ca-certificate`).
#[derive(Debug, Clone, Copy)]
pub struct CaApplication<'a> {
    /// The CA certificate, PEM.
    pub pem: &'a str,
    /// DEFAULT or SNI_ONLY.
    pub mode: CaMode,
    /// Initial status.
    pub status: CaStatus,
    /// Register unknown certificates it issued when they first connect.
    pub auto_registration: bool,
    /// The JITP template for them.
    pub template_name: Option<&'a TemplateName>,
    /// Admit its certificates only with a claim ticket.
    pub require_claim: bool,
    /// DEFAULT mode: a certificate from this CA whose CN is the registration code.
    pub verification_pem: Option<&'a str>,
}

impl<'a> CaApplication<'a> {
    /// An ACTIVE CA in `mode` without auto-registration, template, claim or verification.
    pub fn new(pem: &'a str, mode: CaMode) -> Self {
        Self {
            pem,
            mode,
            status: CaStatus::Active,
            auto_registration: false,
            template_name: None,
            require_claim: false,
            verification_pem: None,
        }
    }
}

/// Why a CA certificate was not registered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterCaError {
    /// The CA certificate is not one certificate.
    #[error("{0}")]
    Certificate(PemError),
    /// basicConstraints cA is not set.
    #[error("the certificate is not a CA (basicConstraints cA is not set)")]
    NotACa,
    /// DEFAULT mode without a verification certificate.
    #[error("DEFAULT mode needs a verification certificate whose CN is the registration code")]
    VerificationMissing,
    /// The verification certificate is not one certificate.
    #[error("verification certificate: {0}")]
    Verification(PemError),
    /// Its CN is not the account's registration code.
    #[error("the verification certificate's CN is not this account's registration code")]
    VerificationName,
    /// This CA did not sign it.
    #[error("the verification certificate was not signed by this CA")]
    VerificationSignature,
    /// DEFAULT mode, and another account of the region registered it in DEFAULT mode.
    #[error(
        "CA certificate {id} is registered in DEFAULT mode by another account in {region}; \
         register it with --certificate-mode SNI_ONLY"
    )]
    DefaultElsewhere {
        /// The CA.
        id: CaId,
        /// The region.
        region: String,
    },
    /// The registry refused or failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl Coded for RegisterCaError {
    fn code(&self) -> &'static str {
        match self {
            Self::DefaultElsewhere { .. } => "CertificateStateException",
            Self::Registry(e) => e.code(),
            _ => "InvalidRequestException",
        }
    }
}

/// Registers a CA certificate. DEFAULT mode needs `verification_pem`: a certificate issued by
/// this CA whose CN is the account's registration code (proof of possession); and a CA in
/// DEFAULT mode may belong to only one account per region.
pub async fn register_ca(
    tx: &mut Tx,
    account: &Account,
    app: &CaApplication<'_>,
) -> Result<CaCertificate, RegisterCaError> {
    let ca = certificate_from_pem(app.pem).map_err(RegisterCaError::Certificate)?;
    if !ca.is_ca() {
        return Err(RegisterCaError::NotACa);
    }
    if app.mode == CaMode::Default {
        let v = app.verification_pem.ok_or(RegisterCaError::VerificationMissing)?;
        let v = certificate_from_pem(v).map_err(RegisterCaError::Verification)?;
        if v.common_name().as_deref() != Some(account.registration_code.as_str()) {
            return Err(RegisterCaError::VerificationName);
        }
        if !signed_by(&v, &ca) {
            return Err(RegisterCaError::VerificationSignature);
        }
    }
    let new = NewCa {
        certificate: &ca,
        mode: app.mode,
        status: app.status,
        auto_registration: app.auto_registration,
        template_name: app.template_name,
        require_claim: app.require_claim,
    };
    if let Some(stored) = tx.insert_ca(account, &new).await? {
        return Ok(stored);
    }
    // Either this account has it already, or (DEFAULT) another account in the region.
    let id = CaId::of(&ca);
    let mine = tx.describe_ca(&account.id, &id).await.is_ok();
    Err(if mine || app.mode != CaMode::Default {
        RegistryError::AlreadyExists { kind: "CA certificate", name: id.to_string() }.into()
    } else {
        RegisterCaError::DefaultElsewhere { id, region: account.region.clone() }
    })
}

/// Why a device certificate was not registered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterCertificateError {
    /// It is not one certificate.
    #[error("{0}")]
    Certificate(#[from] PemError),
    /// The CA named did not issue it.
    #[error("the certificate was not issued by CA {0}")]
    NotIssuedBy(CaId),
    /// It is a CA certificate.
    #[error("a CA certificate cannot be registered as a device certificate")]
    IsACa,
    /// The registry refused or failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl Coded for RegisterCertificateError {
    fn code(&self) -> &'static str {
        match self {
            Self::Registry(e) => e.code(),
            _ => "InvalidRequestException",
        }
    }
}

/// Registers a device certificate. With `ca_id`, the CA must be registered in this account
/// and must have signed it.
pub async fn register_certificate(
    tx: &mut Tx,
    account_id: &AccountId,
    pem: &str,
    ca_id: Option<&CaId>,
    status: CertificateStatus,
) -> Result<CertificateRecord, RegisterCertificateError> {
    let cert = certificate_from_pem(pem)?;
    if let Some(ca_id) = ca_id {
        let ca = tx.describe_ca(account_id, ca_id).await?;
        let ca_cert = certificate_from_pem(&ca.pem)?;
        if !signed_by(&cert, &ca_cert) {
            return Err(RegisterCertificateError::NotIssuedBy(ca_id.clone()));
        }
    }
    if cert.is_ca() {
        return Err(RegisterCertificateError::IsACa);
    }
    Ok(tx.insert_certificate(account_id, &cert, ca_id, status).await?)
}

/// Why a certificate's status did not change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StatusChangeError {
    /// REVOKED is final.
    #[error("certificate {0} is revoked; that is final")]
    Revoked(CertificateId),
    /// The registry refused or failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl Coded for StatusChangeError {
    fn code(&self) -> &'static str {
        match self {
            Self::Revoked(_) => "CertificateStateException",
            Self::Registry(e) => e.code(),
        }
    }
}

/// Whether a certificate in status `from` may be put in `to`: anything but leaving REVOKED.
pub fn status_change_allowed(from: CertificateStatus, to: CertificateStatus) -> bool {
    from != CertificateStatus::Revoked || to == CertificateStatus::Revoked
}

/// Changes a certificate's status. REVOKED is final, also against a change racing this one:
/// the write applies only to the status this read.
pub async fn set_certificate_status(
    tx: &mut Tx,
    account_id: &AccountId,
    id: &CertificateId,
    status: CertificateStatus,
) -> Result<CertificateRecord, StatusChangeError> {
    let current = tx.describe_certificate(account_id, id).await?;
    if !status_change_allowed(current.status, status) {
        return Err(StatusChangeError::Revoked(id.clone()));
    }
    if !tx.set_certificate_status(account_id, id, current.status, status).await? {
        return Err(RegistryError::Changed { kind: "certificate", name: id.to_string() }.into());
    }
    Ok(tx.describe_certificate(account_id, id).await?)
}

/// Why a policy was not created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CreatePolicyError {
    /// The document is not a valid policy (the code is the policy language's:
    /// `MalformedPolicy`, `UnknownAction`, ...).
    #[error("{0}")]
    Document(#[from] PolicyError),
    /// The registry refused or failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

impl Coded for CreatePolicyError {
    fn code(&self) -> &'static str {
        match self {
            Self::Document(e) => e.code(),
            Self::Registry(e) => e.code(),
        }
    }
}

/// Creates a policy after validating its document. Returns it with the validator's warnings.
pub async fn create_policy(
    tx: &mut Tx,
    account_id: &AccountId,
    name: &PolicyName,
    document: &str,
) -> Result<(PolicyRecord, Vec<String>), CreatePolicyError> {
    let policy = Policy::parse(document)?;
    let record = tx.insert_policy(account_id, name, document).await?;
    Ok((record, policy.warnings().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use CertificateStatus::*;

    #[test]
    fn revoked_is_final() {
        for from in [Active, Inactive, Revoked, PendingTransfer, PendingActivation] {
            for to in [Active, Inactive, Revoked, PendingTransfer, PendingActivation] {
                let allowed = status_change_allowed(from, to);
                assert_eq!(allowed, from != Revoked || to == Revoked, "{from} -> {to}");
            }
        }
    }

    #[test]
    fn pem_rules() {
        assert!(matches!(certificate_from_pem(""), Err(PemError::Certificate(_))));
        let key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        let e = certificate_from_pem(key).unwrap_err();
        assert!(matches!(e, PemError::PrivateKey));
        assert!(!e.to_string().contains("AAAA"), "the key is not echoed");
    }
}
