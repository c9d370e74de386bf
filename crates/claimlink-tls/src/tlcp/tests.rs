#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::sync::Arc;

use claimlink_gm::Sm2PrivateKey;
use claimlink_pki::KeyAlgorithm;
use claimlink_testpki::{TestCa, TestLeaf};
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::WebPkiClientVerifier;

use super::*;

const NAME: &str = "tlcp.test";

struct Pki {
    ca: TestCa,
    server_sign: TestLeaf,
    server_enc: TestLeaf,
    client_sign: TestLeaf,
    client_enc: TestLeaf,
}

fn pki() -> Pki {
    let ca = TestCa::issuing(KeyAlgorithm::Sm2, "CN=TLCP test CA,O=claimlink,C=CN");
    Pki {
        server_sign: ca.server(&[NAME]),
        server_enc: ca.encryption(&[NAME], "CN=tlcp.test"),
        client_sign: ca.device("CN=tlcp-device,O=claimlink"),
        client_enc: ca.encryption(&[], "CN=tlcp-device,O=claimlink"),
        ca,
    }
}

fn sm2(leaf: &TestLeaf) -> Sm2PrivateKey {
    Sm2PrivateKey::from_pkcs8_der(&leaf.key.to_pkcs8_der().unwrap()).unwrap()
}

fn der(leaf: &TestLeaf) -> CertificateDer<'static> {
    CertificateDer::from(leaf.certificate.der().to_vec())
}

fn chain(leaf: &TestLeaf, ca: &TestCa) -> Vec<CertificateDer<'static>> {
    vec![der(leaf), CertificateDer::from(ca.certificate.der().to_vec())]
}

fn roots(ca: &TestCa) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(ca.root.as_ref().unwrap().der().to_vec())).unwrap();
    Arc::new(roots)
}

fn server_identity(p: &Pki) -> Identity {
    Identity::new(
        chain(&p.server_sign, &p.ca),
        sm2(&p.server_sign),
        Some((der(&p.server_enc), sm2(&p.server_enc))),
    )
    .unwrap()
}

fn client_identity(p: &Pki, dual: bool) -> Identity {
    let enc = dual.then(|| (der(&p.client_enc), sm2(&p.client_enc)));
    Identity::new(chain(&p.client_sign, &p.ca), sm2(&p.client_sign), enc).unwrap()
}

fn server_config(p: &Pki, client_auth: bool) -> Arc<ServerConfig> {
    let verifier = client_auth.then(|| {
        WebPkiClientVerifier::builder_with_provider(roots(&p.ca), Arc::new(crate::provider()))
            .allow_unauthenticated()
            .build()
            .unwrap()
    });
    Arc::new(ServerConfig::new(server_identity(p), verifier).unwrap())
}

fn client_config(p: &Pki, identity: Option<Identity>) -> Arc<ClientConfig> {
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(&p.ca), Arc::new(crate::provider()))
        .build()
        .unwrap();
    Arc::new(ClientConfig::new(verifier, identity))
}

/// Moves bytes both ways until neither side has anything to send. Returns the first error.
fn pump(client: &mut Connection, server: &mut Connection) -> Result<(), Error> {
    for _ in 0..20 {
        let to_server = client.take_tls();
        let to_client = server.take_tls();
        if to_server.is_empty() && to_client.is_empty() {
            return Ok(());
        }
        if !to_server.is_empty() {
            server.read_tls(&to_server)?;
        }
        if !to_client.is_empty() {
            client.read_tls(&to_client)?;
        }
    }
    Ok(())
}

fn connect(
    client: &Arc<ClientConfig>,
    server: &Arc<ServerConfig>,
) -> (Connection, Connection, Result<(), Error>) {
    let mut c = Connection::client(client.clone(), &ServerName::try_from(NAME).unwrap()).unwrap();
    let mut s = Connection::server(server.clone());
    let r = pump(&mut c, &mut s);
    (c, s, r)
}

fn exchange(c: &mut Connection, s: &mut Connection) {
    let big: Vec<u8> = (0..40_000).map(|i| (i % 251) as u8).collect();
    c.write_plaintext(b"CONNECT").unwrap();
    s.write_plaintext(&big).unwrap();
    pump(c, s).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let n = s.read_plaintext(&mut buf);
    assert_eq!(&buf[..n], b"CONNECT");
    let n = c.read_plaintext(&mut buf);
    assert_eq!(&buf[..n], &big[..]);
}

#[test]
fn every_suite_handshakes_and_carries_data_with_client_certificates() {
    let p = pki();
    let server = server_config(&p, true);
    for suite in CipherSuite::ALL {
        let client = Arc::new(
            ClientConfig::new(
                WebPkiServerVerifier::builder_with_provider(roots(&p.ca), Arc::new(crate::provider()))
                    .build()
                    .unwrap(),
                Some(client_identity(&p, true)),
            )
            .with_suites(&[suite]),
        );
        let (mut c, mut s, r) = connect(&client, &server);
        r.unwrap_or_else(|e| panic!("{suite}: {e}"));
        assert!(!c.is_handshaking() && !s.is_handshaking(), "{suite}");
        assert_eq!((c.cipher_suite(), s.cipher_suite()), (Some(suite), Some(suite)));
        assert_eq!(s.peer_certificates()[0], der(&p.client_sign), "{suite}: the signing certificate first");
        assert_eq!(s.peer_encryption_certificate(), Some(&der(&p.client_enc)));
        assert_eq!(c.peer_encryption_certificate(), Some(&der(&p.server_enc)));
        assert_eq!(s.server_name(), Some(NAME));
        exchange(&mut c, &mut s);
    }
}

#[test]
fn a_device_with_one_signing_certificate_connects_over_the_ecc_suites_only() {
    let p = pki();
    let server = server_config(&p, true);
    let client = client_config(&p, Some(client_identity(&p, false)));
    assert!(client.suites.iter().all(|s| !s.is_ecdhe()), "ECDHE needs an encryption certificate");
    let (mut c, mut s, r) = connect(&client, &server);
    r.unwrap();
    assert_eq!(s.cipher_suite(), Some(CipherSuite::EccSm4GcmSm3));
    assert_eq!(s.peer_certificates().len(), 2, "leaf and CA, no encryption certificate");
    assert!(s.peer_encryption_certificate().is_none());
    exchange(&mut c, &mut s);
    // Offering only ECDHE without an encryption certificate: the client refuses itself.
    let only_ecdhe = Arc::new(
        ClientConfig::new(
            WebPkiServerVerifier::builder_with_provider(roots(&p.ca), Arc::new(crate::provider()))
                .build()
                .unwrap(),
            Some(client_identity(&p, false)),
        )
        .with_suites(&[CipherSuite::EcdheSm4GcmSm3]),
    );
    let (_, _, r) = connect(&only_ecdhe, &server);
    assert_eq!(r.err().map(|e| e.alert), Some(AlertDescription::HandshakeFailure));
}

#[test]
fn without_client_authentication_only_ecc_suites_are_chosen() {
    let p = pki();
    let server = server_config(&p, false);
    let client = client_config(&p, None);
    let (mut c, mut s, r) = connect(&client, &server);
    r.unwrap();
    assert_eq!(s.cipher_suite(), Some(CipherSuite::EccSm4GcmSm3));
    assert!(s.peer_certificates().is_empty());
    exchange(&mut c, &mut s);
    let ecdhe_only = Arc::new(
        ClientConfig::new(
            WebPkiServerVerifier::builder_with_provider(roots(&p.ca), Arc::new(crate::provider()))
                .build()
                .unwrap(),
            Some(client_identity(&p, true)),
        )
        .with_suites(&[CipherSuite::EcdheSm4CbcSm3]),
    );
    let (_, _, r) = connect(&ecdhe_only, &server);
    assert_eq!(r.err().map(|e| e.alert), Some(AlertDescription::HandshakeFailure));
}

#[test]
fn sessions_resume_by_id_and_a_failed_one_is_forgotten() {
    let p = pki();
    let server = server_config(&p, true);
    let client = client_config(&p, Some(client_identity(&p, true)));
    let (_, s1, r) = connect(&client, &server);
    r.unwrap();
    assert!(!s1.is_resumed());
    let (mut c, mut s, r) = connect(&client, &server);
    r.unwrap();
    assert!(c.is_resumed() && s.is_resumed());
    assert_eq!(s.peer_certificates()[0], der(&p.client_sign), "the resumed session keeps who the client is");
    exchange(&mut c, &mut s);
    // Another server (another cache) does not know the session: a full handshake.
    let other = server_config(&p, true);
    let (_, s3, r) = connect(&client, &other);
    r.unwrap();
    assert!(!s3.is_resumed());
    assert_eq!(other.sessions.len(), 1);
}

#[test]
fn the_session_cache_is_bounded() {
    let cache = SessionCache::new(3, SESSION_LIFETIME);
    for i in 0..10u8 {
        let s = Arc::new(Session {
            id: [i; 32],
            master: Zeroizing::new([0; 48]),
            suite: CipherSuite::EccSm4GcmSm3,
            peer_certificates: vec![],
            peer_encryption: None,
            created: Instant::now(),
        });
        cache.put([i; 32], s);
    }
    assert_eq!(cache.len(), 3);
    assert!(cache.get(&[0; 32]).is_none(), "the oldest went first");
    assert!(cache.get(&[9; 32]).is_some());
}

#[test]
fn an_untrusted_or_misnamed_server_is_refused() {
    let p = pki();
    let server = server_config(&p, false);
    let stranger = TestCa::issuing(KeyAlgorithm::Sm2, "CN=Stranger CA,O=elsewhere");
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(&stranger), Arc::new(crate::provider()))
        .build()
        .unwrap();
    let client = Arc::new(ClientConfig::new(verifier, None));
    let (_, _, r) = connect(&client, &server);
    let e = r.unwrap_err();
    assert_eq!(e.alert, AlertDescription::UnknownCa, "{e}");
    let client = client_config(&p, None);
    let mut c = Connection::client(client, &ServerName::try_from("other.test").unwrap()).unwrap();
    let mut s = Connection::server(server);
    let r = pump(&mut c, &mut s);
    assert!(r.is_err(), "the certificates do not name other.test");
}

#[test]
fn a_server_identity_needs_both_certificates_each_in_its_place() {
    let p = pki();
    // The encryption certificate where the signing one belongs, and the other way round.
    assert!(Identity::new(vec![der(&p.server_enc)], sm2(&p.server_enc), None).is_err());
    assert!(
        Identity::new(
            chain(&p.server_sign, &p.ca),
            sm2(&p.server_sign),
            Some((der(&p.client_sign), sm2(&p.client_sign)))
        )
        .is_err()
    );
    // A key that is not the certificate's.
    assert!(Identity::new(chain(&p.server_sign, &p.ca), sm2(&p.client_sign), None).is_err());
    // A single certificate cannot serve.
    let single = Identity::new(chain(&p.server_sign, &p.ca), sm2(&p.server_sign), None).unwrap();
    assert!(ServerConfig::new(single, None).is_err());
}

#[test]
fn a_tampered_record_ends_the_connection_with_bad_record_mac() {
    let p = pki();
    let server = server_config(&p, false);
    for suite in [CipherSuite::EccSm4CbcSm3, CipherSuite::EccSm4GcmSm3] {
        let client = Arc::new(
            ClientConfig::new(
                WebPkiServerVerifier::builder_with_provider(roots(&p.ca), Arc::new(crate::provider()))
                    .build()
                    .unwrap(),
                None,
            )
            .with_suites(&[suite]),
        );
        let (mut c, mut s, r) = connect(&client, &server);
        r.unwrap();
        c.write_plaintext(b"PUBLISH").unwrap();
        let mut bytes = c.take_tls();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let e = s.read_tls(&bytes).unwrap_err();
        assert_eq!(e.alert, AlertDescription::BadRecordMac, "{suite}");
        assert!(s.is_closed());
        // The alert goes back encrypted and the client reports it.
        let alert = s.take_tls();
        let e = c.read_tls(&alert).unwrap_err();
        assert!(e.received && e.alert == AlertDescription::BadRecordMac, "{suite}: {e}");
        assert!(s.write_plaintext(b"x").is_err());
    }
}

#[test]
fn renegotiation_is_refused_and_the_connection_goes_on() {
    let p = pki();
    let server = server_config(&p, false);
    let (mut c, mut s, r) = connect(&client_config(&p, None), &server);
    r.unwrap();
    // A second ClientHello inside the established connection.
    let hello =
        msg::ClientHello { random: [1; 32], session_id: vec![], suites: vec![0xe053], server_name: None }
            .encode();
    let mut rec = Vec::new();
    c.write.seal(record::ContentType::Handshake, &hello, &mut rec).unwrap();
    s.read_tls(&rec).unwrap();
    let answer = s.take_tls();
    c.read_tls(&answer).unwrap();
    assert!(!c.is_closed() && !s.is_closed());
    exchange(&mut c, &mut s);
}

#[test]
fn tls_versions_other_than_tlcp_and_garbage_are_refused_with_the_right_alert() {
    let mut s = Connection::accept();
    let e = s.read_tls(&[22, 3, 3, 0, 4, 1, 0, 0, 0]).unwrap_err();
    assert_eq!(e.alert, AlertDescription::ProtocolVersion);
    let mut s = Connection::accept();
    let e = s.read_tls(&[22, 1, 1, 0, 4, 1, 0, 0, 0]).unwrap_err();
    assert_eq!(e.alert, AlertDescription::DecodeError, "an empty ClientHello");
    let mut s = Connection::accept();
    let e = s.read_tls(&[23, 1, 1, 0, 1, 0]).unwrap_err();
    assert_eq!(e.alert, AlertDescription::UnexpectedMessage, "application data before the handshake");
    let mut s = Connection::accept();
    // A Finished whose length is not all there yet is waited for; a whole one before the
    // ClientHello is out of order.
    assert!(s.read_tls(&[22, 1, 1, 0, 4, 20, 0, 0, 12]).is_ok());
    let e = s.read_tls(&[22, 1, 1, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap_err();
    assert_eq!(e.alert, AlertDescription::UnexpectedMessage);
}

#[test]
fn accept_reads_the_client_hello_before_the_configuration_is_chosen() {
    let p = pki();
    let client = client_config(&p, None);
    let mut c = Connection::client(client, &ServerName::try_from(NAME).unwrap()).unwrap();
    let mut s = Connection::accept();
    let hello = c.take_tls();
    assert!(is_tlcp_client_hello(&hello));
    s.read_tls(&hello).unwrap();
    let info = s.client_hello().unwrap();
    assert_eq!(info.server_name(), Some(NAME));
    assert!(info.cipher_suites().contains(&CipherSuite::EccSm4GcmSm3));
    assert!(!s.wants_write(), "nothing is sent before the configuration");
    s.set_config(server_config(&p, false)).unwrap();
    pump(&mut c, &mut s).unwrap();
    exchange(&mut c, &mut s);
}

#[test]
fn a_client_refuses_a_server_whose_second_certificate_is_not_for_encryption() {
    let p = pki();
    // A server built around Identity::new's checks, sending its signing certificate twice or
    // a second signing certificate where the encryption one belongs.
    for second in [&p.server_sign, &p.client_sign] {
        let identity = Identity {
            sign: KeyAndChain { key: sm2(&p.server_sign), chain: chain(&p.server_sign, &p.ca) },
            enc: Some(KeyAndChain { key: sm2(second), chain: vec![der(second)] }),
        };
        let server = Arc::new(ServerConfig::new(identity, None).unwrap());
        let (_, _, r) = connect(&client_config(&p, None), &server);
        let e = r.unwrap_err();
        assert_eq!(e.alert, AlertDescription::BadCertificate, "{e}");
        assert!(e.reason.contains("encryption certificate"), "{e}");
    }
}

#[test]
fn the_fuzz_framing_reaches_the_state_machines() {
    let seed =
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/seeds/tlcp/client_hello")).unwrap();
    let framed = fuzz_frame(&seed);
    let mut s = Connection::accept();
    s.read_tls(&framed).unwrap();
    assert_eq!(s.client_hello().map(|h| h.cipher_suites().len()), Some(4), "the framed ClientHello was read");
    for seed in ["client_hello", "server_hello"] {
        let bytes =
            std::fs::read(format!("{}/../../fuzz/seeds/tlcp/{seed}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        assert!(!fuzz_decoders(&bytes));
        for cut in 0..bytes.len() {
            assert!(!fuzz_decoders(&bytes[..cut]));
        }
    }
}

#[test]
fn a_handshake_message_over_64_kib_is_refused_from_its_header() {
    let mut s = Connection::accept();
    // A ClientHello header claiming 64 KiB + 1: refused before any of its body is buffered.
    let e = s.read_tls(&[22, 1, 1, 0, 4, 1, 0x01, 0x00, 0x01]).unwrap_err();
    assert_eq!(e.alert, AlertDescription::HandshakeFailure);
}
