use std::time::{Duration, SystemTime};

use der::asn1::OctetString;
use x509_cert::ext::Extension;

use super::*;
use crate::alg::KeyAlgorithm;
use crate::key::{PrivateKey, Signer};
use crate::name;
use crate::profile::{Issuer, Profile, Subject, YEAR, build_signed, issue};

fn rng() -> rand_core::UnwrapErr<getrandom::SysRng> {
    rand_core::UnwrapErr(getrandom::SysRng)
}

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn subject(cn: &str, key: &PrivateKey, years: u32) -> Subject {
    Subject::new(name::parse(&format!("CN={cn},O=Test")).unwrap(), key.public_key(), now(), YEAR * years)
}

struct Pki {
    root_key: PrivateKey,
    root: Certificate,
    ca_key: PrivateKey,
    ca: Certificate,
}

fn pki(alg: KeyAlgorithm) -> Pki {
    let root_key = PrivateKey::generate(alg, &mut rng()).unwrap();
    let root = issue(
        &Issuer { certificate: None, signer: &root_key },
        &Profile::RootCa,
        &subject("Root", &root_key, 30),
        &mut rng(),
    )
    .unwrap();
    let ca_key = PrivateKey::generate(alg, &mut rng()).unwrap();
    let ca = issue(
        &Issuer { certificate: Some(&root), signer: &root_key },
        &Profile::IssuingCa { path_len: Some(0) },
        &subject("Issuing", &ca_key, 20),
        &mut rng(),
    )
    .unwrap();
    Pki { root_key, root, ca_key, ca }
}

fn leaf(p: &Pki, s: &Subject) -> Certificate {
    issue(&Issuer { certificate: Some(&p.ca), signer: &p.ca_key }, &Profile::DeviceBirth, s, &mut rng())
        .unwrap()
}

fn check(p: &Pki, leaf: &Certificate, opts: &ValidationOptions) -> Result<Vec<Certificate>, VerifyError> {
    verify_chain(leaf, std::slice::from_ref(&p.ca), &TrustAnchors::new(vec![p.root.clone()]), opts)
}

#[test]
fn valid_paths_verify_for_both_algorithms() {
    for alg in [KeyAlgorithm::Sm2, KeyAlgorithm::P256] {
        let p = pki(alg);
        let key = PrivateKey::generate(alg, &mut rng()).unwrap();
        let l = leaf(&p, &subject("dev", &key, 20));
        let mut opts = ValidationOptions::at(now());
        opts.purpose = Purpose::ClientAuth;
        let path = check(&p, &l, &opts).unwrap();
        assert_eq!(path.len(), 3);
        opts.purpose = Purpose::ServerAuth;
        assert!(matches!(check(&p, &l, &opts), Err(VerifyError::WrongPurpose { .. })));
    }
}

#[test]
fn wrong_sm2_id_is_refused() {
    let p = pki(KeyAlgorithm::Sm2);
    let key = PrivateKey::generate(KeyAlgorithm::Sm2, &mut rng()).unwrap();
    let l = leaf(&p, &subject("dev", &key, 20));
    let mut opts = ValidationOptions::at(now());
    opts.sm2_id = DistId::new("").unwrap();
    assert!(matches!(check(&p, &l, &opts), Err(VerifyError::BadSignature { .. })));
}

#[test]
fn expired_and_not_yet_valid_are_refused() {
    let p = pki(KeyAlgorithm::P256);
    let key = PrivateKey::generate(KeyAlgorithm::P256, &mut rng()).unwrap();
    let l = leaf(&p, &subject("dev", &key, 1));
    assert!(matches!(
        check(&p, &l, &ValidationOptions::at(now() + YEAR * 2)),
        Err(VerifyError::Expired { .. })
    ));
    assert!(matches!(
        check(&p, &l, &ValidationOptions::at(now() - Duration::from_secs(7200))),
        Err(VerifyError::NotYetValid { .. })
    ));
}

#[test]
fn wrong_issuer_is_refused() {
    let p = pki(KeyAlgorithm::Sm2);
    let other = pki(KeyAlgorithm::Sm2);
    let key = PrivateKey::generate(KeyAlgorithm::Sm2, &mut rng()).unwrap();
    let l = leaf(&other, &subject("dev", &key, 20));
    // Same issuer *name* ("Issuing"), different key: the signature fails.
    assert!(matches!(check(&p, &l, &ValidationOptions::at(now())), Err(VerifyError::BadSignature { .. })));
    // A leaf from a differently named CA: no issuer at all.
    let stranger_key = PrivateKey::generate(KeyAlgorithm::Sm2, &mut rng()).unwrap();
    let stranger = build_signed(
        name::parse("CN=Elsewhere").unwrap(),
        &stranger_key,
        &Profile::DeviceBirth,
        &subject("dev", &key, 20),
        &mut rng(),
    )
    .unwrap();
    assert!(matches!(
        check(&p, &stranger, &ValidationOptions::at(now())),
        Err(VerifyError::UnknownIssuer { .. })
    ));
}

#[test]
fn issuer_with_ca_false_is_refused() {
    let p = pki(KeyAlgorithm::P256);
    let dev_key = PrivateKey::generate(KeyAlgorithm::P256, &mut rng()).unwrap();
    let dev = leaf(&p, &subject("dev", &dev_key, 20));
    assert_eq!(
        issue(
            &Issuer { certificate: Some(&dev), signer: &dev_key },
            &Profile::DeviceBirth,
            &subject("x", &dev_key, 1),
            &mut rng()
        )
        .err(),
        Some(crate::profile::IssueError::IssuerNotCa)
    );
    let victim_key = PrivateKey::generate(KeyAlgorithm::P256, &mut rng()).unwrap();
    let forged = build_signed(
        dev.subject().clone(),
        &dev_key,
        &Profile::DeviceBirth,
        &subject("victim", &victim_key, 1),
        &mut rng(),
    )
    .unwrap();
    let r = verify_chain(
        &forged,
        &[p.ca.clone(), dev],
        &TrustAnchors::new(vec![p.root.clone()]),
        &ValidationOptions::at(now()),
    );
    assert!(matches!(r, Err(VerifyError::IssuerNotCa { .. })), "{r:?}");
}

#[test]
fn tampered_tbs_is_refused() {
    let p = pki(KeyAlgorithm::Sm2);
    let key = PrivateKey::generate(KeyAlgorithm::Sm2, &mut rng()).unwrap();
    let l = leaf(&p, &subject("device-aaaa", &key, 20));
    let mut der = l.der().to_vec();
    let pos = der.windows(11).position(|w| w == b"device-aaaa").unwrap();
    der[pos + 7] = b'b';
    let tampered = Certificate::from_der(&der).unwrap();
    assert!(matches!(
        check(&p, &tampered, &ValidationOptions::at(now())),
        Err(VerifyError::BadSignature { .. })
    ));
}

#[test]
fn path_len_exceeded_is_refused() {
    let p = pki(KeyAlgorithm::P256);
    let sub_key = PrivateKey::generate(KeyAlgorithm::P256, &mut rng()).unwrap();
    // The issuing CA has pathLen 0 yet signs another CA.
    let sub = issue(
        &Issuer { certificate: Some(&p.ca), signer: &p.ca_key },
        &Profile::IssuingCa { path_len: None },
        &subject("Sub", &sub_key, 10),
        &mut rng(),
    )
    .unwrap();
    let key = PrivateKey::generate(KeyAlgorithm::P256, &mut rng()).unwrap();
    let l = issue(
        &Issuer { certificate: Some(&sub), signer: &sub_key },
        &Profile::DeviceBirth,
        &subject("dev", &key, 5),
        &mut rng(),
    )
    .unwrap();
    let r = verify_chain(
        &l,
        &[p.ca.clone(), sub],
        &TrustAnchors::new(vec![p.root.clone()]),
        &ValidationOptions::at(now()),
    );
    assert!(matches!(r, Err(VerifyError::PathLenExceeded { path_len: 0, .. })), "{r:?}");
}

#[test]
fn unknown_critical_extension_is_refused() {
    let p = pki(KeyAlgorithm::Sm2);
    let key = PrivateKey::generate(KeyAlgorithm::Sm2, &mut rng()).unwrap();
    let mut s = subject("dev", &key, 20);
    s.extra_extensions.push(Extension {
        extn_id: der::asn1::ObjectIdentifier::new_unwrap("1.3.6.1.4.1.99999.1"),
        critical: true,
        extn_value: OctetString::new(vec![5, 0]).unwrap(),
    });
    let l = leaf(&p, &s);
    assert!(matches!(
        check(&p, &l, &ValidationOptions::at(now())),
        Err(VerifyError::UnknownCriticalExtension { .. })
    ));
    // The same extension, non-critical, is fine.
    s.extra_extensions[0].critical = false;
    check(&p, &leaf(&p, &s), &ValidationOptions::at(now())).unwrap();
}

#[test]
fn depth_budget_is_enforced() {
    let p = pki(KeyAlgorithm::P256);
    let key = PrivateKey::generate(KeyAlgorithm::P256, &mut rng()).unwrap();
    let l = leaf(&p, &subject("dev", &key, 20));
    let mut opts = ValidationOptions::at(now());
    opts.max_depth = 2;
    assert!(matches!(check(&p, &l, &opts), Err(VerifyError::DepthExceeded { max: 2 })));
    let _ = p.root_key.public_key();
}
