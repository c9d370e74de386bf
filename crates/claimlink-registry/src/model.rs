//! What the registry holds, and the rules a value must follow to get in.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::RegistryError;

/// An OEM account: its own endpoint (the TLS server name devices use), region and things.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Account {
    /// Twelve digits, like an AWS account id.
    pub id: String,
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
            pub fn parse(s: &str) -> Result<Self, RegistryError> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    other => Err(RegistryError::invalid(format!(
                        "{} must be one of {}, not {other:?}",
                        stringify!($name),
                        [$($text),+].join(", ")
                    ))),
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
    pub id: String,
    /// PEM.
    pub pem: String,
    /// Registration mode.
    pub mode: CaMode,
    /// Status.
    pub status: CaStatus,
    /// Whether unknown certificates it issued are registered on first connection.
    pub auto_registration: bool,
    /// Template run for them (JITP); without one, they wait in PENDING_ACTIVATION (JITR).
    pub template_name: Option<String>,
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
    pub id: String,
    /// PEM.
    pub pem: String,
    /// Status.
    pub status: CertificateStatus,
    /// The registered CA that issued it, if any.
    pub ca_id: Option<String>,
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
    pub name: String,
    /// Thing type.
    pub thing_type: Option<String>,
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
    pub name: String,
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
    pub name: String,
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

fn check(ok: bool, what: &str, value: &str, rule: &str) -> Result<(), RegistryError> {
    if ok {
        Ok(())
    } else {
        let shown: String = value.chars().take(64).collect();
        Err(RegistryError::invalid(format!("{what} {shown:?} is invalid: {rule}")))
    }
}

/// Thing, thing type and thing group names: 1-128 of `[a-zA-Z0-9:_-]`.
pub fn validate_thing_name(what: &str, name: &str) -> Result<(), RegistryError> {
    let ok = (1..=128).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-'));
    check(ok, what, name, "1-128 characters of a-z A-Z 0-9 : _ -")
}

/// Attributes: at most 50, keys 1-128 and values up to 800 characters without control
/// characters.
pub fn validate_attributes(attributes: &BTreeMap<String, String>) -> Result<(), RegistryError> {
    if attributes.len() > MAX_THING_ATTRIBUTES {
        return Err(RegistryError::limit(format!("at most {MAX_THING_ATTRIBUTES} attributes per thing")));
    }
    for (k, v) in attributes {
        let key_ok = (1..=128).contains(&k.len())
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.,@/:#-".contains(&b));
        check(key_ok, "attribute name", k, "1-128 characters of a-z A-Z 0-9 _ . , @ / : # -")?;
        check(
            v.chars().count() <= 800 && !v.chars().any(char::is_control),
            "attribute value",
            v,
            "at most 800 characters",
        )?;
    }
    Ok(())
}

/// Template names: 1-36 of `[0-9A-Za-z_-]`.
pub fn validate_template_name(name: &str) -> Result<(), RegistryError> {
    let ok = (1..=36).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    check(ok, "template name", name, "1-36 characters of 0-9 A-Z a-z _ -")
}

/// Policy names: 1-128 of `[\w+=,.@-]`.
pub fn validate_policy_name(name: &str) -> Result<(), RegistryError> {
    let ok = (1..=128).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_+=,.@-".contains(&b));
    check(ok, "policy name", name, "1-128 characters of a-z A-Z 0-9 _ + = , . @ -")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_registry_rules() {
        assert!(validate_thing_name("thing name", "lamp-7:a_b").is_ok());
        for bad in ["", "has space", "ünï", &"x".repeat(129)] {
            let e = validate_thing_name("thing name", bad).unwrap_err();
            assert_eq!(e.code(), "InvalidRequestException");
        }
        assert!(validate_template_name(&"t".repeat(36)).is_ok());
        assert!(validate_template_name(&"t".repeat(37)).is_err());
        assert!(validate_template_name("bad.name").is_err());
        assert!(validate_policy_name("Device.Policy@v1").is_ok());
        assert!(validate_policy_name("no/slash").is_err());
        let mut attrs = BTreeMap::new();
        attrs.insert("serialNumber".to_owned(), "v".repeat(800));
        assert!(validate_attributes(&attrs).is_ok());
        attrs.insert("k".to_owned(), "v".repeat(801));
        assert!(validate_attributes(&attrs).is_err());
        let many: BTreeMap<String, String> = (0..51).map(|i| (format!("k{i}"), String::new())).collect();
        assert_eq!(validate_attributes(&many).unwrap_err().code(), "LimitExceededException");
        assert_eq!(CertificateStatus::parse("REVOKED").unwrap(), CertificateStatus::Revoked);
        assert!(CertificateStatus::parse("revoked").is_err());
    }
}
