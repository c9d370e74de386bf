//! Typed names and ids. Each one is checked when it is made - from a request, a row or a
//! certificate - so that a function taking a [`ThingName`] never sees anything else, and a
//! certificate id cannot be passed where a thing name is meant.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Serialize};
use sqlx::any::{AnyTypeInfo, AnyValueRef};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::{Any, Decode, Encode, Type};

use crate::error::Invalid;

macro_rules! id {
    ($(#[$m:meta])* $name:ident, $what:literal, $rule:literal, |$s:ident| $ok:expr) => {
        $(#[$m])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// What the value is, in messages.
            pub const WHAT: &'static str = $what;
            /// The rule, in messages and in the OpenAPI document.
            pub const RULE: &'static str = $rule;

            /// Checks `value` against the rule.
            pub fn new(value: &str) -> Result<Self, Invalid> {
                let $s = value;
                if $ok { Ok(Self(value.to_owned())) } else { Err(Invalid::new($what, value, $rule)) }
            }

            /// The text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = Invalid;
            fn try_from(value: String) -> Result<Self, Invalid> {
                let $s = value.as_str();
                if $ok { Ok(Self(value)) } else { Err(Invalid::new($what, &value, $rule)) }
            }
        }

        impl std::str::FromStr for $name {
            type Err = Invalid;
            fn from_str(s: &str) -> Result<Self, Invalid> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl Type<Any> for $name {
            fn type_info() -> AnyTypeInfo {
                <String as Type<Any>>::type_info()
            }
            fn compatible(ty: &AnyTypeInfo) -> bool {
                <String as Type<Any>>::compatible(ty)
            }
        }

        impl<'q> Encode<'q, Any> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut <Any as sqlx::Database>::ArgumentBuffer<'q>,
            ) -> Result<IsNull, BoxDynError> {
                <String as Encode<'q, Any>>::encode_by_ref(&self.0, buf)
            }
        }

        impl<'r> Decode<'r, Any> for $name {
            fn decode(value: AnyValueRef<'r>) -> Result<Self, BoxDynError> {
                Ok(Self::try_from(<String as Decode<'r, Any>>::decode(value)?)?)
            }
        }
    };
}

fn name_chars(s: &str, max: usize, extra: &[u8]) -> bool {
    (1..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
}

id! {
    /// An account id: twelve digits, like an AWS account id.
    AccountId, "account id", "12 digits",
    |s| s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

id! {
    /// A thing's name: 1-128 of `[a-zA-Z0-9:_-]`.
    ThingName, "thing name", "1-128 characters of a-z A-Z 0-9 : _ -",
    |s| name_chars(s, 128, b":_-")
}

id! {
    /// A thing type's name: 1-128 of `[a-zA-Z0-9:_-]`.
    ThingTypeName, "thing type name", "1-128 characters of a-z A-Z 0-9 : _ -",
    |s| name_chars(s, 128, b":_-")
}

id! {
    /// A thing group's name: 1-128 of `[a-zA-Z0-9:_-]`.
    ThingGroupName, "thing group name", "1-128 characters of a-z A-Z 0-9 : _ -",
    |s| name_chars(s, 128, b":_-")
}

id! {
    /// A device certificate's id: the hex SHA-256 of its DER, lower case.
    CertificateId, "certificate id", "64 characters of 0-9 a-f (the SHA-256 of the DER)",
    |s| s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

id! {
    /// A registered CA certificate's id: the hex SHA-256 of its DER, lower case.
    CaId, "CA certificate id", "64 characters of 0-9 a-f (the SHA-256 of the DER)",
    |s| s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

id! {
    /// A policy's name: 1-128 of `[\w+=,.@-]`.
    PolicyName, "policy name", "1-128 characters of a-z A-Z 0-9 _ + = , . @ -",
    |s| name_chars(s, 128, b"_+=,.@-")
}

id! {
    /// A provisioning template's name: 1-36 of `[0-9A-Za-z_-]`.
    TemplateName, "template name", "1-36 characters of 0-9 A-Z a-z _ -",
    |s| name_chars(s, 36, b"_-")
}

impl CertificateId {
    /// The id of `cert` (always valid).
    pub fn of(cert: &claimlink_pki::Certificate) -> Self {
        Self(cert.id().to_string())
    }
}

impl CaId {
    /// The id of `cert` (always valid).
    pub fn of(cert: &claimlink_pki::Certificate) -> Self {
        Self(cert.id().to_string())
    }

    /// The same digest as a device certificate's id (a CA's own certificate is a certificate).
    pub fn as_certificate(&self) -> CertificateId {
        CertificateId(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_when_made() {
        assert!(ThingName::new("lamp-7:a_b").is_ok());
        for bad in ["", "has space", "ünï", &"x".repeat(129)] {
            let e = ThingName::new(bad).unwrap_err();
            assert_eq!(e.what, "thing name");
        }
        assert!(TemplateName::new(&"t".repeat(36)).is_ok());
        assert!(TemplateName::new(&"t".repeat(37)).is_err());
        assert!(TemplateName::new("bad.name").is_err());
        assert!(PolicyName::new("Device.Policy@v1").is_ok());
        assert!(PolicyName::new("no/slash").is_err());
        assert!(AccountId::new("123456789012").is_ok());
        assert!(AccountId::new("12345678901a").is_err());
        assert!(CertificateId::new(&"ab".repeat(32)).is_ok());
        assert!(CertificateId::new(&"AB".repeat(32)).is_err(), "upper case is another id");
        assert!(CaId::new(&"ab".repeat(31)).is_err());
        // Messages show at most 64 characters of what was sent.
        let e = ThingName::new(&"é".repeat(500)).unwrap_err();
        assert_eq!(e.shown.chars().count(), 64);
    }

    #[test]
    fn serde_checks_too() {
        let ok: ThingName = serde_json::from_str("\"lamp-1\"").unwrap();
        assert_eq!(ok, "lamp-1");
        assert_eq!(serde_json::to_string(&ok).unwrap(), "\"lamp-1\"");
        let e = serde_json::from_str::<ThingName>("\"no spaces\"").unwrap_err();
        assert!(e.to_string().contains("thing name"), "{e}");
    }
}
