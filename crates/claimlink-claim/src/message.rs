//! The configuration-topic messages of a claim (REFERENCE.md, "claim message").
//!
//! A claim-thing claims a device by publishing `{"Endpoint": "host[:port]", "ClaimCode":
//! "..."}` on the device's `{ThingName}/expresslink_config`; staging answers on the result
//! topic and, once the claim is accepted, delivers `{"Endpoint": ..., "ClaimTicket": ...}` to
//! the device on the same topic.

use zeroize::Zeroizing;

/// Largest claim message staging reads by default, in bytes.
pub const DEFAULT_MAX_LEN: usize = 4096;

/// A claim as a claim-thing published it. The code is what was typed from the label: it is
/// wiped from memory when dropped and never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Claim {
    /// Where the device is to go (`host[:port]`, checked by the claim decision).
    pub endpoint: String,
    /// The claim code, if one was given.
    pub claim_code: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim")
            .field("endpoint", &self.endpoint)
            .field("claim_code", &self.claim_code.as_ref().map(|_| ".."))
            .finish()
    }
}

/// Reads a claim message of at most `max_len` bytes: a JSON object with a string `Endpoint`
/// and optionally a string `ClaimCode`; other members are ignored (AWS's claim-things send
/// more). `None` for anything else.
pub fn parse_claim(payload: &[u8], max_len: usize) -> Option<Claim> {
    if payload.len() > max_len {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let endpoint = v.get("Endpoint")?.as_str()?.to_owned();
    let claim_code = match v.get("ClaimCode") {
        None | Some(serde_json::Value::Null) => None,
        Some(c) => Some(Zeroizing::new(c.as_str()?.to_owned())),
    };
    Some(Claim { endpoint, claim_code })
}

/// What staging delivers to a claimed device (or, with the staging endpoint, to a released
/// one): `{"Endpoint": ..., "ClaimTicket"?: ...}`.
pub fn delivery(endpoint: &str, ticket: Option<&str>) -> String {
    let mut body = serde_json::json!({ "Endpoint": endpoint });
    if let Some(t) = ticket {
        body["ClaimTicket"] = t.into();
    }
    body.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_reads_its_endpoint_and_code_and_nothing_else_passes() {
        let c = parse_claim(br#"{"Endpoint": "a.example:8883", "ClaimCode": "7KQ2-M9XD", "Extra": 1}"#, 4096)
            .unwrap();
        assert_eq!(c.endpoint, "a.example:8883");
        assert_eq!(c.claim_code.as_deref().map(String::as_str), Some("7KQ2-M9XD"));
        assert!(!format!("{c:?}").contains("7KQ2"), "Debug hides the code");
        assert_eq!(parse_claim(br#"{"Endpoint": "a"}"#, 4096).unwrap().claim_code, None);
        for bad in [
            &b"not json"[..],
            b"[]",
            br#"{"Endpoint": 5}"#,
            br#"{"ClaimCode": "x"}"#,
            br#"{"Endpoint": "a", "ClaimCode": 7}"#,
        ] {
            assert!(parse_claim(bad, 4096).is_none(), "{}", String::from_utf8_lossy(bad));
        }
        assert!(parse_claim(br#"{"Endpoint": "a"}"#, 10).is_none(), "over the size limit");
    }

    #[test]
    fn a_delivery_round_trips_through_the_agent_s_reading() {
        let body: serde_json::Value =
            serde_json::from_str(&delivery("b.example:8884", Some("clt1.x.y"))).unwrap();
        assert_eq!(body["Endpoint"], "b.example:8884");
        assert_eq!(body["ClaimTicket"], "clt1.x.y");
        assert!(
            serde_json::from_str::<serde_json::Value>(&delivery("s:1", None))
                .unwrap()
                .get("ClaimTicket")
                .is_none()
        );
    }
}
