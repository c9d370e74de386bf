//! Distinguished names: parsing the `CN=...,O=...` form users type, and reading attributes.

use std::str::FromStr;

use der::asn1::{Any, ObjectIdentifier as Oid, PrintableStringRef, Utf8StringRef};
use der::{Tag, Tagged};
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};

/// Attribute type OIDs (X.520).
pub mod attr {
    use der::asn1::ObjectIdentifier as Oid;
    /// commonName.
    pub const COMMON_NAME: Oid = Oid::new_unwrap("2.5.4.3");
    /// serialNumber (the subject attribute, not the certificate serial).
    pub const SERIAL_NUMBER: Oid = Oid::new_unwrap("2.5.4.5");
    /// countryName.
    pub const COUNTRY: Oid = Oid::new_unwrap("2.5.4.6");
    /// localityName.
    pub const LOCALITY: Oid = Oid::new_unwrap("2.5.4.7");
    /// stateOrProvinceName.
    pub const STATE: Oid = Oid::new_unwrap("2.5.4.8");
    /// organizationName.
    pub const ORGANIZATION: Oid = Oid::new_unwrap("2.5.4.10");
    /// organizationalUnitName.
    pub const ORGANIZATIONAL_UNIT: Oid = Oid::new_unwrap("2.5.4.11");
    /// dnQualifier.
    pub const DN_QUALIFIER: Oid = Oid::new_unwrap("2.5.4.46");
}

/// Longest subject string accepted.
pub const MAX_NAME_STRING: usize = 1024;

/// A subject string that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// Empty, too long, or not `KEY=value` pairs separated by commas.
    #[error("invalid distinguished name {input:?}: expected KEY=value pairs such as \"CN=Acme Root,O=Acme\"")]
    Syntax {
        /// The input (names are public, so it is safe to echo).
        input: String,
    },
    /// A value too long or with characters its attribute type cannot hold.
    #[error("invalid value for {attribute}: {reason}")]
    Value {
        /// Attribute name.
        attribute: &'static str,
        /// What was wrong.
        reason: &'static str,
    },
}

/// Parses an RFC 4514 string (`CN=Acme Root,O=Acme,C=CN`; written most specific first, encoded
/// in the reverse order as RFC 4514 specifies). Keys: CN, O, OU, C, ST, L, serialNumber, or a
/// dotted OID.
pub fn parse(input: &str) -> Result<Name, NameError> {
    let syntax = || NameError::Syntax { input: input.chars().take(MAX_NAME_STRING).collect() };
    if input.trim().is_empty() || input.len() > MAX_NAME_STRING || !input.contains('=') {
        return Err(syntax());
    }
    let name = Name::from_str(input).map_err(|_| syntax())?;
    if name.iter().any(|atv| string_value(atv).is_none_or(str::is_empty)) {
        return Err(syntax());
    }
    Ok(name)
}

/// Builds a name from `(type, value)` pairs in encoding order; countries and serial numbers are
/// PrintableString, everything else UTF8String.
pub fn build(attrs: &[(Oid, &str)]) -> Result<Name, NameError> {
    let mut seq = RdnSequence::default();
    for (oid, value) in attrs {
        let printable = *oid == attr::COUNTRY || *oid == attr::SERIAL_NUMBER;
        let any = if printable {
            let s = PrintableStringRef::new(value).map_err(|_| NameError::Value {
                attribute: attr_name(*oid),
                reason: "not a PrintableString",
            })?;
            Any::from(s)
        } else {
            let s = Utf8StringRef::new(value)
                .map_err(|_| NameError::Value { attribute: attr_name(*oid), reason: "too long" })?;
            Any::from(s)
        };
        let mut rdn = RelativeDistinguishedName::default();
        rdn.insert(AttributeTypeAndValue { oid: *oid, value: any })
            .map_err(|_| NameError::Value { attribute: attr_name(*oid), reason: "cannot be encoded" })?;
        seq.push(rdn);
    }
    Ok(Name::hazmat_from_rdn_sequence(seq))
}

fn attr_name(oid: Oid) -> &'static str {
    match oid {
        attr::COMMON_NAME => "CN",
        attr::SERIAL_NUMBER => "serialNumber",
        attr::COUNTRY => "C",
        attr::ORGANIZATION => "O",
        attr::ORGANIZATIONAL_UNIT => "OU",
        attr::STATE => "ST",
        attr::LOCALITY => "L",
        attr::DN_QUALIFIER => "dnQualifier",
        _ => "attribute",
    }
}

fn string_value(atv: &AttributeTypeAndValue) -> Option<&str> {
    match atv.value.tag() {
        Tag::Utf8String | Tag::PrintableString | Tag::Ia5String | Tag::TeletexString => {
            std::str::from_utf8(atv.value.value()).ok()
        }
        _ => None,
    }
}

/// `name` with its commonName replaced by `cn` (added last if it had none).
pub fn with_common_name(name: &Name, cn: &str) -> Result<Name, NameError> {
    let mut attrs: Vec<(Oid, String)> = name
        .iter()
        .filter(|atv| atv.oid != attr::COMMON_NAME)
        .filter_map(|atv| string_value(atv).map(|v| (atv.oid, v.to_owned())))
        .collect();
    attrs.push((attr::COMMON_NAME, cn.to_owned()));
    let refs: Vec<(Oid, &str)> = attrs.iter().map(|(o, v)| (*o, v.as_str())).collect();
    build(&refs)
}

/// The first value of attribute `oid` in `name`, if it is a string.
pub fn attribute(name: &Name, oid: Oid) -> Option<String> {
    name.iter().find(|atv| atv.oid == oid).and_then(string_value).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc4514_and_reads_attributes() {
        let name = parse("CN=Acme Root CA,O=Acme Ltd,C=CN").unwrap();
        assert_eq!(attribute(&name, attr::COMMON_NAME).as_deref(), Some("Acme Root CA"));
        assert_eq!(attribute(&name, attr::ORGANIZATION).as_deref(), Some("Acme Ltd"));
        assert_eq!(name.to_string(), "CN=Acme Root CA,O=Acme Ltd,C=CN");
    }

    #[test]
    fn rejects_bad_subjects() {
        for bad in ["", "   ", "Acme", "CN=", "XX=1", &format!("CN={}", "a".repeat(2000))] {
            assert!(matches!(parse(bad), Err(NameError::Syntax { .. })), "{bad:?}");
        }
        assert!(matches!(build(&[(attr::COUNTRY, "C*N")]), Err(NameError::Value { .. })));
    }
}
