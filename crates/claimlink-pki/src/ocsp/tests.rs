use super::*;
use crate::crl::tlv;
use crate::profile::YEAR;
use crate::{Issuer, KeyAlgorithm, PrivateKey, Profile, Subject, issue, name};
use std::time::Duration;

fn rng() -> rand_core::UnwrapErr<getrandom::SysRng> {
    rand_core::UnwrapErr(getrandom::SysRng)
}

fn ca(alg: KeyAlgorithm) -> (PrivateKey, Certificate) {
    let key = PrivateKey::generate(alg, &mut rng()).unwrap();
    let s = Subject::new(name::parse("CN=OCSP CA").unwrap(), key.public_key(), SystemTime::now(), YEAR);
    let c = issue(&Issuer { certificate: None, signer: &key }, &Profile::RootCa, &s, &mut rng()).unwrap();
    (key, c)
}

/// A request as OpenSSL writes one: CertIDs with `hash` over `issuer`, and a nonce.
fn request(hash: CertIdHash, issuer: &Certificate, serials: &[&str], nonce: Option<&[u8]>) -> Vec<u8> {
    let oid = match hash {
        CertIdHash::Sha1 => OID_SHA1,
        CertIdHash::Sha256 => OID_SHA256,
        CertIdHash::Sm3 => OID_SM3,
    };
    let name = der::Encode::to_der(issuer.subject()).unwrap();
    let key = issuer.public_key().unwrap().to_spki();
    let mut list = Vec::new();
    for s in serials {
        let mut id = Vec::new();
        let mut alg = Vec::new();
        tlv(0x06, oid, &mut alg);
        alg.extend_from_slice(&[0x05, 0x00]);
        tlv(0x30, &alg, &mut id);
        tlv(0x04, &hash.digest(&name), &mut id);
        tlv(0x04, &hash.digest(key.subject_public_key.raw_bytes()), &mut id);
        Serial::from_hex(s).unwrap().write_der(&mut id);
        let mut cert_id = Vec::new();
        tlv(0x30, &id, &mut cert_id);
        let mut req = Vec::new();
        tlv(0x30, &cert_id, &mut req);
        list.extend(req);
    }
    let mut tbs = Vec::new();
    tlv(0x30, &list, &mut tbs);
    if let Some(n) = nonce {
        let mut value = Vec::new();
        tlv(0x04, n, &mut value);
        let mut ext = Vec::new();
        crl::extension(OID_NONCE, false, &value, &mut ext);
        let mut seq = Vec::new();
        tlv(0x30, &ext, &mut seq);
        tlv(0xa2, &seq, &mut tbs);
    }
    let mut t = Vec::new();
    tlv(0x30, &tbs, &mut t);
    let mut out = Vec::new();
    tlv(0x30, &t, &mut out);
    out
}

#[test]
fn requests_of_each_hash_name_their_issuer_and_responses_verify() {
    for alg in [KeyAlgorithm::Sm2, KeyAlgorithm::P256] {
        let (key, cert) = ca(alg);
        let (_, other) = ca(alg);
        let rkey = PrivateKey::generate(alg, &mut rng()).unwrap();
        let rs = Subject::new(
            name::parse("CN=OCSP responder").unwrap(),
            rkey.public_key(),
            SystemTime::now(),
            YEAR,
        );
        let rcert = issue(
            &Issuer { certificate: Some(&cert), signer: &key },
            &Profile::OcspResponder,
            &rs,
            &mut rng(),
        )
        .unwrap();
        for hash in [CertIdHash::Sha1, CertIdHash::Sha256, CertIdHash::Sm3] {
            let der = request(hash, &cert, &["0A1B", "80"], Some(b"nonce-1234567890"));
            let req = parse_request(&der).unwrap();
            assert_eq!(req.ids.len(), 2);
            assert!(req.ids.iter().all(|id| id.is_issued_by(&cert) && !id.is_issued_by(&other)), "{hash:?}");
            assert_eq!(req.ids[1].serial, Serial::from_hex("80").unwrap());
            let now = SystemTime::now();
            let answers = [
                (req.ids[0].clone(), Status::Revoked { at: now, reason: Some(Reason::KeyCompromise) }),
                (req.ids[1].clone(), Status::Good),
            ];
            let resp = respond(
                &Responder { certificate: &rcert, signer: &rkey },
                &answers,
                now,
                now,
                now + Duration::from_secs(3600),
                req.nonce.as_deref(),
            )
            .unwrap();
            let (tbs, sig, a) = signed_parts(&resp).unwrap();
            assert_eq!(a, rkey.signature_algorithm());
            rcert
                .public_key()
                .unwrap()
                .verify(a, &claimlink_gm::DistId::GMT_0009_DEFAULT, &tbs, &sig)
                .unwrap();
            // The nonce comes back as it was sent, and each CertID as requested.
            assert!(
                resp.windows(req.nonce.as_ref().unwrap().len())
                    .any(|w| w == &req.nonce.as_ref().unwrap()[..])
            );
        }
    }
}

#[test]
fn bad_requests_are_errors_never_panics() {
    let (_, cert) = ca(KeyAlgorithm::P256);
    let der = request(CertIdHash::Sha1, &cert, &["01", "02"], Some(b"0123456789abcdef"));
    for n in 0..der.len() {
        assert!(parse_request(&der[..n]).is_err(), "truncated at {n}");
    }
    for i in 0..der.len() {
        let mut d = der.clone();
        d[i] ^= 0x40;
        let _ = fuzz_parse_request(&d);
    }
    assert_eq!(parse_request(&vec![0x30; MAX_REQUEST_LEN + 1]), Err(OcspError::TooLarge));
    let many: Vec<String> = (1..=MAX_REQUESTS + 1).map(|i| format!("{i:x}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_eq!(parse_request(&request(CertIdHash::Sha1, &cert, &many, None)), Err(OcspError::TooLarge));
    // MD5 (1.2.840.113549.2.5) is not a CertID hash we take.
    let mut md5 = der.clone();
    let i = md5.windows(OID_SHA1.len()).position(|w| w == OID_SHA1).unwrap();
    md5[i..i + 5].copy_from_slice(&[0x2a, 0x86, 0x48, 0x86, 0xf7]);
    assert!(parse_request(&md5).is_err());
    assert_eq!(error_response(ErrorStatus::MalformedRequest), [0x30, 0x03, 0x0a, 0x01, 0x01]);
}
