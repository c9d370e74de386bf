//! Claim tickets: staging's signed statement that a claim made this device (this birth
//! certificate) the charge of one account endpoint, for a while.
//!
//! When staging accepts a claim it sends the device `{"Endpoint", "ClaimTicket"}`; the device
//! presents the ticket as the MQTT password of its first CONNECT to that endpoint. An account
//! whose CA registration says `requireClaim` admits a certificate of that CA only with a valid
//! ticket from a claim issuer it trusts (staging's public key, registered like a CA), for its
//! own endpoint host, naming the certificate and its ThingName, not expired. Staging and the
//! account need no shared database: the account checks the signature.
//!
//! The format is compact and self-describing: `clt1.<payload>.<signature>`, both base64url
//! without padding; the payload is JSON (`thing`, `cert` = the certificate id, `aud` = the
//! endpoint host, `claim` = the claim id, `iat`/`exp` in Unix ms); the signature is over the
//! ASCII of `clt1.<payload>`, in its X.509 encoding (ECDSA P-256 with SHA-256, or SM2 with SM3
//! and the GM/T 0009 default ID). Pure: time is a parameter, the signer is a trait object.

use base64ct::{Base64UrlUnpadded, Encoding};
use claimlink_pki::{PublicKey, SignatureAlgorithm, Signer};

/// The prefix of every ticket.
pub const PREFIX: &str = "clt1";
/// The prefix of a release notice: the same statement, saying the claim has ended.
pub const RELEASE_PREFIX: &str = "clr1";
/// Largest ticket accepted (bytes).
pub const MAX_LEN: usize = 2048;
/// How long a ticket is valid by default: the device must make its first connection to the
/// endpoint within this time (a week: a device bought and claimed, then left in its box).
pub const DEFAULT_VALIDITY_MS: i64 = 7 * 24 * 3600 * 1000;

/// What a ticket says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimTicket {
    /// The device's ThingName.
    pub thing: String,
    /// The id (lowercase hex SHA-256 of the DER) of its birth certificate.
    pub cert: String,
    /// The endpoint host it was claimed for (lowercase, no port).
    pub aud: String,
    /// The claim that made it.
    pub claim: i64,
    /// Issued at (Unix ms).
    pub iat: i64,
    /// Expires at (Unix ms).
    pub exp: i64,
}

/// Why a ticket is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TicketError {
    /// Not of the form `clt1.<payload>.<signature>`, too long, or not base64url/JSON.
    #[error("the claim ticket is malformed")]
    Malformed,
    /// No trusted claim issuer signed it.
    #[error("the claim ticket is not signed by a trusted claim issuer")]
    BadSignature,
    /// Past its expiry.
    #[error("the claim ticket expired")]
    Expired,
    /// For another endpoint, certificate or device.
    #[error("the claim ticket is for another {0}")]
    Mismatch(&'static str),
    /// The signer failed.
    #[error("the claim ticket could not be signed")]
    Signing,
}

/// The endpoint host of `host[:port]`, lowercase.
pub fn audience(endpoint: &str) -> String {
    endpoint.rsplit_once(':').map_or(endpoint, |(h, _)| h).to_ascii_lowercase()
}

fn algorithm_of(key: &PublicKey) -> Option<SignatureAlgorithm> {
    match key.kind() {
        "SM2" => Some(SignatureAlgorithm::Sm2Sm3),
        "P-256" => Some(SignatureAlgorithm::EcdsaSha256),
        _ => None,
    }
}

/// Signs `ticket` with `signer`.
pub fn issue(signer: &dyn Signer, ticket: &ClaimTicket) -> Result<String, TicketError> {
    sign(PREFIX, signer, ticket)
}

/// Signs a release notice: claim `ticket.claim` of this device and certificate has ended (a
/// release by its owner, or a factory reset back to staging). An account that receives it
/// admits the certificate no more under that claim.
pub fn issue_release(signer: &dyn Signer, ticket: &ClaimTicket) -> Result<String, TicketError> {
    sign(RELEASE_PREFIX, signer, ticket)
}

/// Checks a release notice's form and signature (a notice does not expire).
pub fn verify_release(token: &str, issuers: &[PublicKey]) -> Result<ClaimTicket, TicketError> {
    open(RELEASE_PREFIX, token, issuers)
}

fn sign(prefix: &str, signer: &dyn Signer, ticket: &ClaimTicket) -> Result<String, TicketError> {
    let json = serde_json::to_vec(ticket).map_err(|_| TicketError::Signing)?;
    let signed = format!("{prefix}.{}", Base64UrlUnpadded::encode_string(&json));
    let signature = signer.sign(signed.as_bytes()).map_err(|_| TicketError::Signing)?;
    Ok(format!("{signed}.{}", Base64UrlUnpadded::encode_string(&signature)))
}

/// Checks a ticket's form and signature against the trusted issuers' keys and its expiry at
/// `now_ms`; returns what it says. The caller compares it with the connection.
pub fn verify(token: &str, issuers: &[PublicKey], now_ms: i64) -> Result<ClaimTicket, TicketError> {
    let ticket = open(PREFIX, token, issuers)?;
    if now_ms >= ticket.exp {
        return Err(TicketError::Expired);
    }
    Ok(ticket)
}

/// Checks a ticket's form and signature but not its expiry (an account checks expiry only
/// when a ticket first admits a certificate under its claim).
pub fn read(token: &str, issuers: &[PublicKey]) -> Result<ClaimTicket, TicketError> {
    open(PREFIX, token, issuers)
}

fn open(prefix: &str, token: &str, issuers: &[PublicKey]) -> Result<ClaimTicket, TicketError> {
    if token.len() > MAX_LEN {
        return Err(TicketError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(p), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TicketError::Malformed);
    };
    if p != prefix {
        return Err(TicketError::Malformed);
    }
    let json = Base64UrlUnpadded::decode_vec(payload).map_err(|_| TicketError::Malformed)?;
    let signature = Base64UrlUnpadded::decode_vec(signature).map_err(|_| TicketError::Malformed)?;
    let signed = &token[..prefix.len() + 1 + payload.len()];
    let dist_id = claimlink_gm::DistId::GMT_0009_DEFAULT;
    let trusted = issuers.iter().any(|key| {
        algorithm_of(key).is_some_and(|alg| key.verify(alg, &dist_id, signed.as_bytes(), &signature).is_ok())
    });
    if !trusted {
        return Err(TicketError::BadSignature);
    }
    serde_json::from_slice(&json).map_err(|_| TicketError::Malformed)
}

impl ClaimTicket {
    /// Whether the ticket admits the certificate `cert` of `thing` at endpoint host `host`.
    pub fn admits(&self, host: &str, cert: &str, thing: &str) -> Result<(), TicketError> {
        if !self.aud.eq_ignore_ascii_case(host) {
            return Err(TicketError::Mismatch("endpoint"));
        }
        if self.cert != cert {
            return Err(TicketError::Mismatch("certificate"));
        }
        if self.thing != thing {
            return Err(TicketError::Mismatch("device"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use claimlink_pki::{KeyAlgorithm, PrivateKey};

    fn rng() -> rand_core::UnwrapErr<getrandom::SysRng> {
        rand_core::UnwrapErr(getrandom::SysRng)
    }

    fn ticket() -> ClaimTicket {
        ClaimTicket {
            thing: "dev-1".into(),
            cert: "ab".repeat(32),
            aud: "oem.example.com".into(),
            claim: 7,
            iat: 1_000,
            exp: 2_000,
        }
    }

    #[test]
    fn a_ticket_verifies_with_its_issuer_in_sm2_and_p256_and_nothing_else() {
        for alg in [KeyAlgorithm::Sm2, KeyAlgorithm::P256] {
            let key = PrivateKey::generate(alg, &mut rng()).unwrap();
            let other = PrivateKey::generate(alg, &mut rng()).unwrap();
            let token = issue(&key, &ticket()).unwrap();
            assert!(token.starts_with("clt1."));
            assert_eq!(verify(&token, &[other.public_key(), key.public_key()], 1_500), Ok(ticket()));
            assert_eq!(verify(&token, &[other.public_key()], 1_500), Err(TicketError::BadSignature));
            assert_eq!(verify(&token, &[key.public_key()], 2_000), Err(TicketError::Expired));
            // One byte of the payload changed: the signature no longer holds.
            let mut forged = ticket();
            forged.cert = "cd".repeat(32);
            let json = Base64UrlUnpadded::encode_string(&serde_json::to_vec(&forged).unwrap());
            let sig = token.rsplit('.').next().unwrap();
            assert_eq!(
                verify(&format!("clt1.{json}.{sig}"), &[key.public_key()], 1_500),
                Err(TicketError::BadSignature)
            );
        }
    }

    #[test]
    fn a_release_notice_is_not_a_ticket_nor_the_reverse() {
        let key = PrivateKey::generate(KeyAlgorithm::Sm2, &mut rng()).unwrap();
        let notice = issue_release(&key, &ticket()).unwrap();
        assert_eq!(verify_release(&notice, &[key.public_key()]), Ok(ticket()));
        assert_eq!(verify(&notice, &[key.public_key()], 1_500), Err(TicketError::Malformed));
        let t = issue(&key, &ticket()).unwrap();
        assert_eq!(verify_release(&t, &[key.public_key()]), Err(TicketError::Malformed));
    }

    #[test]
    fn malformed_tickets_are_refused_before_any_signature_check() {
        let key = PrivateKey::generate(KeyAlgorithm::P256, &mut rng()).unwrap();
        for bad in ["", "clt1", "clt1.a", "clt2.a.b", "clt1.a.b.c", "clt1.!!.??", &"x".repeat(MAX_LEN + 1)] {
            assert_eq!(verify(bad, &[key.public_key()], 0), Err(TicketError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn a_ticket_admits_only_its_endpoint_certificate_and_device() {
        let t = ticket();
        assert_eq!(t.admits("OEM.example.com", &"ab".repeat(32), "dev-1"), Ok(()));
        assert_eq!(
            t.admits("rival.example.com", &"ab".repeat(32), "dev-1"),
            Err(TicketError::Mismatch("endpoint"))
        );
        assert_eq!(
            t.admits("oem.example.com", &"cd".repeat(32), "dev-1"),
            Err(TicketError::Mismatch("certificate"))
        );
        assert_eq!(
            t.admits("oem.example.com", &"ab".repeat(32), "dev-2"),
            Err(TicketError::Mismatch("device"))
        );
        assert_eq!(audience("OEM.Example.com:8884"), "oem.example.com");
    }
}
