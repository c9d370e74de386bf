use super::*;
use crate::profile::YEAR;
use crate::{Issuer, KeyAlgorithm, PrivateKey, Profile, Subject, issue, name};

fn rng() -> rand_core::UnwrapErr<getrandom::SysRng> {
    rand_core::UnwrapErr(getrandom::SysRng)
}

fn ca(alg: KeyAlgorithm, cn: &str) -> (PrivateKey, Certificate) {
    let key = PrivateKey::generate(alg, &mut rng()).unwrap();
    let subject = Subject::new(
        name::parse(&format!("CN={cn},O=claimlink")).unwrap(),
        key.public_key(),
        SystemTime::now(),
        YEAR,
    );
    let cert =
        issue(&Issuer { certificate: None, signer: &key }, &Profile::RootCa, &subject, &mut rng()).unwrap();
    (key, cert)
}

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn params(number: u64, delta_base: Option<u64>) -> CrlParams {
    CrlParams { this_update: at(1_790_000_000), next_update: at(1_790_086_400), number, delta_base }
}

fn serial(hex: &str) -> Serial {
    Serial::from_hex(hex).unwrap()
}

fn sample() -> Vec<Revocation> {
    vec![
        Revocation { serial: serial("01"), revoked_at: at(1_789_000_000), reason: None },
        // Top bit set: written with a leading zero octet.
        Revocation {
            serial: serial("80"),
            revoked_at: at(1_789_000_001),
            reason: Some(Reason::KeyCompromise),
        },
        Revocation {
            serial: serial(&"7f".repeat(20)),
            revoked_at: at(2_600_000_000),
            reason: Some(Reason::CertificateHold),
        },
        Revocation {
            serial: serial("0a1b2c3d4e5f"),
            revoked_at: at(1_789_000_002),
            reason: Some(Reason::AaCompromise),
        },
    ]
}

#[test]
fn crls_of_both_algorithms_round_trip_and_verify_only_under_their_ca() {
    for alg in [KeyAlgorithm::Sm2, KeyAlgorithm::P256] {
        let (key, cert) = ca(alg, "CRL CA");
        let der = build(&cert, &key, &params(7, None), sample()).unwrap();
        let crl = Crl::from_der(der.clone(), DEFAULT_MAX_CRL_LEN).unwrap();
        assert_eq!(crl.entries().collect::<Vec<_>>(), sample(), "{alg}");
        assert_eq!((crl.number(), crl.delta_base(), crl.len()), (Some(7), None, 4));
        assert_eq!(crl.this_update(), at(1_790_000_000));
        assert!(crl.is_current(at(1_790_000_100)) && !crl.is_current(at(1_790_086_400)));
        crl.verify_signature(&cert).unwrap();
        // Another CA with the same name: the signature fails; another name: the issuer differs.
        let (_, same_name) = ca(alg, "CRL CA");
        assert_eq!(crl.verify_signature(&same_name), Err(CrlError::BadSignature));
        let (_, other) = ca(alg, "Other CA");
        assert_eq!(crl.verify_signature(&other), Err(CrlError::IssuerMismatch));
        // One changed byte of the entries: still a CRL, no longer a valid signature.
        let mut bad = der.clone();
        let i = bad.windows(3).position(|w| w == [0x02, 0x02, 0x00]).unwrap() + 3;
        bad[i] ^= 0x01;
        let bad = Crl::from_der(bad, DEFAULT_MAX_CRL_LEN).unwrap();
        assert_eq!(bad.verify_signature(&cert), Err(CrlError::BadSignature));
        // A signer that is not the certificate's key is refused before signing.
        let (stranger, _) = ca(alg, "Stranger");
        assert_eq!(build(&cert, &stranger, &params(8, None), []).unwrap_err(), CrlError::IssuerMismatch);
    }
}

#[test]
fn an_empty_crl_and_a_delta_crl() {
    let (key, cert) = ca(KeyAlgorithm::Sm2, "Delta CA");
    let empty =
        Crl::from_der(build(&cert, &key, &params(1, None), []).unwrap(), DEFAULT_MAX_CRL_LEN).unwrap();
    assert!(empty.is_empty());
    empty.verify_signature(&cert).unwrap();
    let full =
        Crl::from_der(build(&cert, &key, &params(2, None), sample()).unwrap(), DEFAULT_MAX_CRL_LEN).unwrap();
    let mut set = RevokedSerials::from_crl(&full).unwrap();
    assert!(set.contains(&serial("80")) && set.contains(&serial("7f".repeat(20).as_str())));
    assert!(!set.contains(&serial("02")));
    let delta_entries = [
        Revocation { serial: serial("02"), revoked_at: at(1_790_000_500), reason: Some(Reason::Superseded) },
        // The hold on 7f..7f is lifted.
        Revocation {
            serial: serial(&"7f".repeat(20)),
            revoked_at: at(1_790_000_500),
            reason: Some(Reason::RemoveFromCrl),
        },
    ];
    let delta =
        Crl::from_der(build(&cert, &key, &params(3, Some(2)), delta_entries).unwrap(), DEFAULT_MAX_CRL_LEN)
            .unwrap();
    assert_eq!(delta.delta_base(), Some(2));
    // A delta is not a full CRL, and a delta for a later base does not apply.
    assert!(RevokedSerials::from_crl(&delta).is_err());
    let later =
        Crl::from_der(build(&cert, &key, &params(4, Some(3)), []).unwrap(), DEFAULT_MAX_CRL_LEN).unwrap();
    assert_eq!(set.clone().apply_delta(&later), Err(CrlError::DeltaBaseMismatch { base: 3, have: 2 }));
    set.apply_delta(&delta).unwrap();
    assert!(set.contains(&serial("02")) && set.contains(&serial("01")));
    assert!(!set.contains(&serial(&"7f".repeat(20))), "removeFromCRL lifts the hold");
    assert_eq!(set.len(), 4);
}

#[test]
fn reason_codes_and_names_are_rfc_5280s_only() {
    for code in 0..=10u8 {
        match Reason::from_code(code) {
            Ok(r) => {
                assert_eq!(r.code(), code);
                assert_eq!(Reason::from_name(r.name()).unwrap(), r);
            }
            Err(e) => assert_eq!((code, e), (7, CrlError::UnknownReason(7))),
        }
    }
    assert_eq!(Reason::from_code(11), Err(CrlError::UnknownReason(11)));
    assert_eq!(Reason::from_name("KEYCOMPROMISE").unwrap(), Reason::KeyCompromise);
    let e = Reason::from_name("stolen").unwrap_err().to_string();
    assert!(e.contains("stolen") && e.contains("keyCompromise"), "{e}");
}

#[test]
fn serials_are_positive_and_at_most_20_octets() {
    assert!(Serial::from_der_content(&[]).is_err());
    assert!(Serial::from_der_content(&[0x80]).is_err(), "negative");
    assert!(Serial::from_magnitude(&[0, 0]).is_err(), "zero");
    assert!(Serial::from_magnitude(&[1; 21]).is_err());
    assert_eq!(Serial::from_der_content(&[0x00, 0x80]).unwrap(), serial("80"));
    assert_eq!(serial("00:0A:bc").to_hex(), "0ABC");
    assert!(serial("ff") > serial("fe") && serial("0100") > serial("ff"), "byte order is numeric order");
}

#[test]
fn every_truncation_and_corruption_is_an_error_not_a_panic() {
    let (key, cert) = ca(KeyAlgorithm::P256, "Fuzz CA");
    let der = build(&cert, &key, &params(9, Some(8)), sample()).unwrap();
    for n in 0..der.len() {
        assert!(Crl::from_der(der[..n].to_vec(), DEFAULT_MAX_CRL_LEN).is_err(), "truncated at {n}");
    }
    for i in 0..der.len() {
        for bit in [0x01, 0x80] {
            let mut d = der.clone();
            d[i] ^= bit;
            let _ = fuzz_parse(&d);
        }
    }
    assert_eq!(
        Crl::from_der(der.clone(), der.len() - 1).unwrap_err(),
        CrlError::TooLarge { len: der.len(), max: der.len() - 1 }
    );
}

#[test]
fn unknown_critical_extensions_and_reason_7_are_refused() {
    let (key, cert) = ca(KeyAlgorithm::P256, "Ext CA");
    let der = build(&cert, &key, &params(1, None), sample()).unwrap();
    // Reason code 10 (aACompromise) patched to 7: unknown.
    let i = der
        .windows(4)
        .position(|w| w == [0x0a, 0x01, 0x0a, 0x30])
        .map(|i| i + 2)
        .unwrap_or_else(|| der.windows(3).rposition(|w| w == [0x0a, 0x01, 0x0a]).unwrap() + 2);
    let mut d = der.clone();
    d[i] = 7;
    assert_eq!(Crl::from_der(d, DEFAULT_MAX_CRL_LEN).unwrap_err(), CrlError::UnknownReason(7));
    // The delta indicator is written critical: renamed to an unknown OID it must be refused,
    // and the same extension non-critical is ignored.
    let delta = build(&cert, &key, &params(2, Some(1)), []).unwrap();
    let i = delta.windows(6).position(|w| w == [0x06, 0x03, 0x55, 0x1d, 0x1b, 0x01]).unwrap() + 4;
    let mut d = delta.clone();
    d[i] = 0x63;
    assert_eq!(
        Crl::from_der(d.clone(), DEFAULT_MAX_CRL_LEN).unwrap_err(),
        CrlError::UnknownCriticalExtension
    );
    d[i + 3] = 0x00; // critical FALSE spelt out: not DER
    assert!(matches!(Crl::from_der(d, DEFAULT_MAX_CRL_LEN).unwrap_err(), CrlError::Malformed { .. }));
}

#[test]
fn a_hundred_thousand_entries_build_parse_and_answer() {
    let (key, cert) = ca(KeyAlgorithm::Sm2, "Big CA");
    let n = 100_000u64;
    let entries = (1..=n).map(|i| Revocation {
        serial: Serial::from_magnitude(&(i * 7919).to_be_bytes()).unwrap(),
        revoked_at: at(1_789_000_000 + i),
        reason: Some(Reason::CessationOfOperation),
    });
    let der = build(&cert, &key, &params(5, None), entries).unwrap();
    let crl = Crl::from_der(der, DEFAULT_MAX_CRL_LEN).unwrap();
    crl.verify_signature(&cert).unwrap();
    assert_eq!(crl.len(), n as usize);
    let set = RevokedSerials::from_crl(&crl).unwrap();
    assert!(set.contains(&Serial::from_magnitude(&(5000 * 7919u64).to_be_bytes()).unwrap()));
    assert!(!set.contains(&Serial::from_magnitude(&(5000 * 7919u64 + 1).to_be_bytes()).unwrap()));
}

#[test]
fn the_index_answers_for_a_whole_path_and_refuses_old_crls() {
    let (root_key, root) = ca(KeyAlgorithm::Sm2, "Index Root");
    let ca_key = PrivateKey::generate(KeyAlgorithm::Sm2, &mut rng()).unwrap();
    let issuing = issue(
        &Issuer { certificate: Some(&root), signer: &root_key },
        &Profile::IssuingCa { path_len: Some(0) },
        &Subject::new(name::parse("CN=Index Issuing").unwrap(), ca_key.public_key(), SystemTime::now(), YEAR),
        &mut rng(),
    )
    .unwrap();
    let dev_key = PrivateKey::generate(KeyAlgorithm::Sm2, &mut rng()).unwrap();
    let device = issue(
        &Issuer { certificate: Some(&issuing), signer: &ca_key },
        &Profile::DeviceBirth,
        &Subject::new(
            name::parse("CN=dev,serialNumber=dev").unwrap(),
            dev_key.public_key(),
            SystemTime::now(),
            YEAR,
        ),
        &mut rng(),
    )
    .unwrap();
    let path = [device.clone(), issuing.clone(), root.clone()];
    let mut index = RevocationIndex::default();
    assert_eq!(index.revoked_in(&path), None);
    let revoke = |c: &Certificate| Revocation {
        serial: Serial::of(c).unwrap(),
        revoked_at: at(1_790_000_000),
        reason: Some(Reason::KeyCompromise),
    };
    // The device, by its issuing CA's CRL.
    let crl = Crl::from_der(
        build(&issuing, &ca_key, &params(10, None), [revoke(&device)]).unwrap(),
        DEFAULT_MAX_CRL_LEN,
    )
    .unwrap();
    // Signed by the issuing CA: not the root's CRL.
    assert_eq!(index.apply(&root, &crl).unwrap_err(), CrlError::IssuerMismatch);
    assert_eq!(index.apply(&issuing, &crl).unwrap(), Applied { number: Some(10), delta: false, revoked: 1 });
    assert_eq!(index.revoked_in(&path), Some(0));
    // An older full CRL without the device cannot bring it back; a newer one can lift it.
    let old =
        Crl::from_der(build(&issuing, &ca_key, &params(9, None), []).unwrap(), DEFAULT_MAX_CRL_LEN).unwrap();
    assert_eq!(index.apply(&issuing, &old).unwrap_err(), CrlError::Stale { number: 9, last: 10 });
    assert_eq!(index.revoked_in(&path), Some(0));
    let newer =
        Crl::from_der(build(&issuing, &ca_key, &params(11, None), []).unwrap(), DEFAULT_MAX_CRL_LEN).unwrap();
    index.apply(&issuing, &newer).unwrap();
    assert_eq!(index.revoked_in(&path), None);
    // The issuing CA revoked by the root: every device under it is.
    let root_crl = Crl::from_der(
        build(&root, &root_key, &params(1, None), [revoke(&issuing)]).unwrap(),
        DEFAULT_MAX_CRL_LEN,
    )
    .unwrap();
    index.apply(&root, &root_crl).unwrap();
    assert_eq!(index.revoked_in(&path), Some(1));
    // In-process revocation, before any CRL says so.
    let mut fresh = RevocationIndex::default();
    fresh.revoke(&issuing, Serial::of(&device).unwrap());
    assert_eq!(fresh.revoked_in(&path), Some(0));
    assert_eq!(fresh.status_of(&issuing).map(|s| s.2), Some(1));
}
