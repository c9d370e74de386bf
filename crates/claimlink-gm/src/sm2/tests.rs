use super::*;

fn rng() -> rand_core::UnwrapErr<getrandom::SysRng> {
    rand_core::UnwrapErr(getrandom::SysRng)
}

fn h(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

#[test]
fn standard_signature_vector_verifies_against_d_times_g() {
    let d = Sm2PrivateKey::from_bytes(&h("3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8"))
        .unwrap();
    let r = h("F5A03B0648D2C4630EEAC513E1BB81A15944DA3827D5B74143AC7EACEEE720B3");
    let s = h("B1B6AA29DF212FD8763182BC0D421CA1BB9038FD1F7F42D4840B69C485BBC1AA");
    let sig = Sm2Signature::from_bytes(&[r, s].concat()).unwrap();
    let public = d.public_key();
    public.verify(&DistId::GMT_0009_DEFAULT, b"message digest", &sig).unwrap();
    // The same signature under another ID or another message must fail.
    let empty = DistId::new("").unwrap();
    assert_eq!(public.verify(&empty, b"message digest", &sig), Err(Sm2Error::VerificationFailed));
    assert_eq!(
        public.verify(&DistId::GMT_0009_DEFAULT, b"message digesT", &sig),
        Err(Sm2Error::VerificationFailed)
    );
}

#[test]
fn sign_verify_round_trip_and_id_binding() {
    let key = Sm2PrivateKey::generate(&mut rng());
    let signer = key.signing_key(&DistId::GMT_0009_DEFAULT);
    let sig = signer.sign(b"hello").unwrap();
    signer.verifying_key().verify(b"hello", &sig).unwrap();
    let tls = key.public_key().verifying_key(&DistId::TLS13);
    assert_eq!(tls.verify(b"hello", &sig), Err(Sm2Error::VerificationFailed));
}

#[test]
fn der_signature_encoding_round_trips_and_is_strict() {
    let key = Sm2PrivateKey::generate(&mut rng());
    let sig = key.sign(&DistId::GMT_0009_DEFAULT, b"m").unwrap();
    let der = sig.to_der();
    assert_eq!(der[0], 0x30, "DER SEQUENCE");
    assert_eq!(Sm2Signature::from_der(&der).unwrap(), sig);
    assert_eq!(Sm2Signature::from_bytes(&sig.to_bytes()).unwrap(), sig);
    let mut trailing = der.clone();
    trailing.push(0);
    assert_eq!(Sm2Signature::from_der(&trailing), Err(Sm2Error::MalformedSignature));
    assert_eq!(Sm2Signature::from_der(&der[..der.len() - 1]), Err(Sm2Error::MalformedSignature));
    assert_eq!(Sm2Signature::from_bytes(&[0u8; 64]), Err(Sm2Error::MalformedSignature));
}

#[test]
fn encryption_round_trips_in_both_formats_and_detects_tampering() {
    let key = Sm2PrivateKey::generate(&mut rng());
    let public = key.public_key();
    for format in [Sm2CiphertextFormat::C1C3C2, Sm2CiphertextFormat::Der] {
        let ct = public.encrypt(&mut rng(), b"encryption standard", format).unwrap();
        assert_eq!(&key.decrypt(&ct, format).unwrap()[..], b"encryption standard");
        let mut bad = ct.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(key.decrypt(&bad, format), Err(Sm2Error::DecryptionFailed));
    }
    let raw = public.encrypt(&mut rng(), b"abc", Sm2CiphertextFormat::C1C3C2).unwrap();
    assert_eq!(raw.len(), 65 + 32 + 3);
    assert_eq!(raw[0], 0x04);
}

#[test]
fn c1c3c2_layout_has_the_sm3_check_value_before_the_ciphertext() {
    // C3 = SM3(x2 || M || y2) sits right after C1; decrypting a C1C2C3 reordering must fail.
    let key = Sm2PrivateKey::generate(&mut rng());
    let ct = key.public_key().encrypt(&mut rng(), b"0123456789", Sm2CiphertextFormat::C1C3C2).unwrap();
    let (c1, rest) = ct.split_at(65);
    let (c3, c2) = rest.split_at(32);
    let reordered = [c1, c2, c3].concat();
    assert_eq!(key.decrypt(&reordered, Sm2CiphertextFormat::C1C3C2), Err(Sm2Error::DecryptionFailed));
}

#[test]
fn our_pkcs8_encoding_matches_upstreams() {
    use sm2::pkcs8::EncodePrivateKey;
    let key = Sm2PrivateKey::generate(&mut rng());
    let upstream = key.secret.to_pkcs8_der().unwrap();
    assert_eq!(&key.to_pkcs8_der().unwrap()[..], upstream.as_bytes());
}

#[test]
fn pkcs8_and_sec1_round_trip() {
    let key = Sm2PrivateKey::generate(&mut rng());
    let der = key.to_pkcs8_der().unwrap();
    let back = Sm2PrivateKey::from_pkcs8_der(&der).unwrap();
    assert_eq!(back.public_key(), key.public_key());
    let sec1 = key.public_key().to_sec1_uncompressed();
    assert_eq!(sec1.len(), 65);
    assert_eq!(Sm2PublicKey::from_sec1_bytes(&sec1).unwrap(), key.public_key());
    assert_eq!(Sm2PublicKey::from_sec1_bytes(&[4u8; 65]), Err(Sm2Error::InvalidPublicKey));
    assert_eq!(Sm2PrivateKey::from_bytes(&[0u8; 32]).err(), Some(Sm2Error::InvalidPrivateKey));
}

#[test]
fn debug_output_never_contains_the_private_scalar() {
    let key = Sm2PrivateKey::generate(&mut rng());
    let secret = hex::encode(*key.to_bytes());
    for text in [format!("{key:?}"), format!("{:?}", key.signing_key(&DistId::GMT_0009_DEFAULT))] {
        assert!(!text.to_lowercase().contains(&secret), "{text}");
    }
}

#[test]
fn dist_id_length_is_bounded_by_entl() {
    assert!(DistId::new("a".repeat(MAX_DIST_ID_LEN)).is_ok());
    assert_eq!(DistId::new("a".repeat(MAX_DIST_ID_LEN + 1)), Err(DistIdError { len: MAX_DIST_ID_LEN + 1 }));
    assert_eq!(DistId::GMT_0009_DEFAULT.as_str(), "1234567812345678");
}

#[test]
fn our_verifier_agrees_with_the_sm2_crates_on_valid_tampered_and_random_signatures() {
    use rand_core::Rng;
    use sm2::dsa::signature::Verifier;
    let mut rng = rng();
    let ids = [DistId::GMT_0009_DEFAULT, DistId::TLS13, DistId::new("").unwrap()];
    for round in 0..300 {
        let key = Sm2PrivateKey::generate(&mut rng);
        let id = &ids[round % ids.len()];
        let mut msg = vec![0u8; round % 97];
        rng.fill_bytes(&mut msg);
        let mut sig = key.sign(id, &msg).unwrap().to_bytes();
        match round % 4 {
            0 => {}
            1 => sig[round % 64] ^= 1 << (round % 8),
            2 => msg.push(0),
            _ => rng.fill_bytes(&mut sig),
        }
        let Ok(sig) = Sm2Signature::from_bytes(&sig) else { continue };
        let upstream = sm2::dsa::VerifyingKey::new(id.as_str(), key.public_key().0).unwrap();
        let theirs = upstream.verify(&msg, &sig.0).is_ok();
        let ours = key.public_key().verify(id, &msg, &sig).is_ok();
        assert_eq!(ours, theirs, "round {round}");
        assert_eq!(ours, round % 4 == 0, "round {round}");
    }
}
