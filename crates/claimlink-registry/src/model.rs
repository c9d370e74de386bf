//! What the registry holds, and the rules a value must follow to get in.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::RegistryError;
use crate::ids::*;

/// An OEM account: its own endpoint (the TLS server name devices use), region and things.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Account {
    /// Twelve digits, like an AWS account id.
    pub id: AccountId,
    /// Unique display name.
    pub name: String,
    /// Host name devices connect to (SNI), unique.
    pub endpoint: String,
    /// Region, for ARNs and the DEFAULT-mode CA rule.
    pub region: String,
    /// The code a DEFAULT-mode CA's verification certificate must carry as its CN.
    pub registration_code: String,
    /// Creation time, Unix milliseconds.
    pub created: i64,
}

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// The value as stored and shown (AWS spelling).
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }

            /// Parses the AWS spelling.
            pub fn parse(s: &str) -> Result<Self, crate::Invalid> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    other => Err(crate::Invalid::new(
                        stringify!($name),
                        other,
                        concat!("one of" $(, " ", $text)+),
                    )),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum! {
    /// A device certificate's status. Only ACTIVE authenticates; REVOKED is final.
    CertificateStatus {
        /// Authenticates.
        Active = "ACTIVE",
        /// Turned off by its owner; can be turned on again.
        Inactive = "INACTIVE",
        /// Turned off for good.
        Revoked = "REVOKED",
        /// Being transferred to another account.
        PendingTransfer = "PENDING_TRANSFER",
        /// Registered, waiting for activation (JITR) or for provisioning to finish.
        PendingActivation = "PENDING_ACTIVATION",
    }
}

string_enum! {
    /// How a CA certificate is registered.
    CaMode {
        /// Proof of possession required; one account per region.
        Default = "DEFAULT",
        /// No proof; any number of accounts, devices must send SNI.
        SniOnly = "SNI_ONLY",
    }
}

string_enum! {
    /// A CA certificate's status.
    CaStatus {
        /// Device certificates it issued are accepted.
        Active = "ACTIVE",
        /// They are not.
        Inactive = "INACTIVE",
    }
}

string_enum! {
    /// The kind of a provisioning template.
    TemplateKind {
        /// Just-in-time provisioning, run on a device's first connection.
        Jitp = "JITP",
        /// Fleet provisioning by claim certificate.
        FleetProvisioning = "FLEET_PROVISIONING",
    }
}

/// A registered CA certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CaCertificate {
    /// Hex SHA-256 of the DER.
    pub id: CaId,
    /// PEM.
    pub pem: String,
    /// Registration mode.
    pub mode: CaMode,
    /// Status.
    pub status: CaStatus,
    /// Whether unknown certificates it issued are registered on first connection.
    pub auto_registration: bool,
    /// Template run for them (JITP); without one, they wait in PENDING_ACTIVATION (JITR).
    pub template_name: Option<TemplateName>,
    /// Its certificates are admitted only with a claim ticket from a trusted claim issuer.
    pub require_claim: bool,
    /// Unix milliseconds.
    pub created: i64,
    /// Unix milliseconds.
    pub updated: i64,
}

/// A registered device certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateRecord {
    /// Hex SHA-256 of the DER.
    pub id: CertificateId,
    /// PEM.
    pub pem: String,
    /// Status.
    pub status: CertificateStatus,
    /// The registered CA that issued it, if any.
    pub ca_id: Option<CaId>,
    /// Unix milliseconds.
    pub created: i64,
    /// Unix milliseconds.
    pub updated: i64,
}

/// A thing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Thing {
    /// Name.
    pub name: ThingName,
    /// Thing type.
    pub thing_type: Option<ThingTypeName>,
    /// Attributes.
    pub attributes: BTreeMap<String, String>,
    /// Incremented on every change.
    pub version: i64,
    /// Unix milliseconds.
    pub created: i64,
    /// Unix milliseconds.
    pub updated: i64,
}

/// A provisioning template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Template {
    /// Name.
    pub name: TemplateName,
    /// Kind.
    pub kind: TemplateKind,
    /// The template document (JSON).
    pub body: String,
    /// Whether it runs.
    pub enabled: bool,
    /// Description.
    pub description: Option<String>,
    /// Unix milliseconds.
    pub created: i64,
    /// Unix milliseconds.
    pub updated: i64,
}

/// A policy with its default version's document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRecord {
    /// Name.
    pub name: PolicyName,
    /// The default version's document.
    pub document: String,
    /// The default version.
    pub default_version: i64,
    /// Unix milliseconds.
    pub created: i64,
    /// Unix milliseconds.
    pub updated: i64,
}

/// A provisioning attempt that failed, kept so that the owner can see why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProvisioningFailure {
    /// The device certificate.
    pub certificate_id: String,
    /// Its CA.
    pub ca_id: Option<String>,
    /// The template that ran.
    pub template_name: Option<String>,
    /// Why it failed.
    pub reason: String,
    /// Unix milliseconds.
    pub at: i64,
}

/// One audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    /// Who (an API token name, "jitp", "staging", ...).
    pub actor: String,
    /// What (an API verb or an event).
    pub action: String,
    /// On what.
    pub target: String,
    /// "ok" or an error code.
    pub result: String,
    /// Free-form JSON detail, never secrets.
    pub detail: Option<String>,
    /// Unix milliseconds.
    pub at: i64,
}

/// Most attributes a thing may have.
pub const MAX_THING_ATTRIBUTES: usize = 50;
/// Most groups a thing may be in.
pub const MAX_GROUPS_PER_THING: usize = 10;
/// Most policies attached to one certificate.
pub const MAX_POLICIES_PER_CERTIFICATE: usize = 10;
/// Largest template body, bytes.
pub const MAX_TEMPLATE_BYTES: usize = 10 * 1024;

/// Attributes: at most 50, keys 1-128 and values up to 800 characters without control
/// characters.
pub fn validate_attributes(attributes: &BTreeMap<String, String>) -> Result<(), RegistryError> {
    if attributes.len() > MAX_THING_ATTRIBUTES {
        return Err(RegistryError::limit("attributes per thing", MAX_THING_ATTRIBUTES));
    }
    for (k, v) in attributes {
        if !attribute_name_ok(k) {
            return Err(RegistryError::invalid(
                "attribute name",
                k,
                "1-128 characters of a-z A-Z 0-9 _ . , @ / : # -",
            ));
        }
        if v.chars().count() > 800 || v.chars().any(char::is_control) {
            return Err(RegistryError::invalid(
                "attribute value",
                v,
                "at most 800 characters, no control characters",
            ));
        }
    }
    Ok(())
}

/// An attribute name (of a thing, or searchable in a thing type): 1-128 of
/// `[a-zA-Z0-9_.,@/:#-]`.
pub fn attribute_name_ok(k: &str) -> bool {
    (1..=128).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.,@/:#-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Coded;

    #[test]
    fn attributes_and_statuses_follow_the_registry_rules() {
        let mut attrs = BTreeMap::new();
        attrs.insert("serialNumber".to_owned(), "v".repeat(800));
        assert!(validate_attributes(&attrs).is_ok());
        attrs.insert("k".to_owned(), "v".repeat(801));
        assert!(validate_attributes(&attrs).is_err());
        attrs.clear();
        attrs.insert("bad key".to_owned(), String::new());
        assert_eq!(validate_attributes(&attrs).unwrap_err().code(), "InvalidRequestException");
        let many: BTreeMap<String, String> = (0..51).map(|i| (format!("k{i}"), String::new())).collect();
        assert_eq!(validate_attributes(&many).unwrap_err().code(), "LimitExceededException");
        assert_eq!(CertificateStatus::parse("REVOKED").unwrap(), CertificateStatus::Revoked);
        let e = CertificateStatus::parse("revoked").unwrap_err();
        assert!(e.to_string().contains("one of ACTIVE INACTIVE REVOKED"), "{e}");
    }
}
