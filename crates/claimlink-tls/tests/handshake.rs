//! Full TLS 1.3 handshakes in memory between rustls clients and servers on our provider: SM
//! suites with SM2 certificates both ways, one server for both kinds of client, the strict
//! mode, and handshake signatures made with the wrong SM2 ID refused.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::io::{Read, Write};
use std::sync::Arc;

use claimlink_pki::KeyAlgorithm;
use claimlink_testpki::{TestCa, TestLeaf};
use claimlink_tls::{DualCertResolver, Sm2SigningKey, TLS_SM4_CCM_SM3, TLS_SM4_GCM_SM3};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection, SignatureScheme,
};

struct Pki {
    ca: TestCa,
    server: TestLeaf,
    device: TestLeaf,
}

fn pki(alg: KeyAlgorithm, name: &str) -> Pki {
    let ca = TestCa::issuing(alg, &format!("CN={name} CA,O=claimlink"));
    let server = ca.server(&["endpoint.test"]);
    let device = ca.device(&format!("CN={name}-device"));
    Pki { ca, server, device }
}

fn chain(leaf: &TestLeaf, ca: &TestCa) -> Vec<CertificateDer<'static>> {
    vec![
        CertificateDer::from(leaf.certificate.der().to_vec()),
        CertificateDer::from(ca.certificate.der().to_vec()),
    ]
}

fn key(leaf: &TestLeaf) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(leaf.key_pem().as_bytes()).unwrap()
}

fn certified(leaf: &TestLeaf, ca: &TestCa) -> Arc<CertifiedKey> {
    Arc::new(CertifiedKey::new(chain(leaf, ca), claimlink_tls::any_signing_key(key(leaf)).unwrap()))
}

fn roots(cas: &[&TestCa]) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(CertificateDer::from(ca.root.as_ref().unwrap().der().to_vec())).unwrap();
    }
    roots
}

fn server_config(provider: CryptoProvider, certs: DualCertResolver, client_cas: &[&TestCa]) -> ServerConfig {
    let provider = Arc::new(provider);
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap();
    let builder = if client_cas.is_empty() {
        builder.with_no_client_auth()
    } else {
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(client_cas)), provider)
            .build()
            .unwrap();
        builder.with_client_cert_verifier(verifier)
    };
    builder.with_cert_resolver(Arc::new(certs))
}

#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesClientCert for Fixed {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

fn client_config(
    provider: CryptoProvider,
    server_cas: &[&TestCa],
    me: Option<Arc<CertifiedKey>>,
) -> ClientConfig {
    let builder = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots(server_cas));
    match me {
        Some(k) => builder.with_client_cert_resolver(Arc::new(Fixed(k))),
        None => builder.with_no_client_auth(),
    }
}

/// Runs the handshake in memory, then sends a line each way. Returns both ends, or the first
/// error (with the side that raised it).
fn connect(
    client: ClientConfig,
    server: ServerConfig,
) -> Result<(ClientConnection, ServerConnection), String> {
    let mut c =
        ClientConnection::new(Arc::new(client), ServerName::try_from("endpoint.test").unwrap()).unwrap();
    let mut s = ServerConnection::new(Arc::new(server)).unwrap();
    for _ in 0..20 {
        let mut buf = Vec::new();
        c.write_tls(&mut buf).unwrap();
        if !buf.is_empty() {
            s.read_tls(&mut &buf[..]).unwrap();
            s.process_new_packets().map_err(|e| format!("server: {e}"))?;
        }
        let mut buf = Vec::new();
        s.write_tls(&mut buf).unwrap();
        if !buf.is_empty() {
            c.read_tls(&mut &buf[..]).unwrap();
            c.process_new_packets().map_err(|e| format!("client: {e}"))?;
        }
        if !c.is_handshaking() && !s.is_handshaking() {
            break;
        }
    }
    assert!(!c.is_handshaking() && !s.is_handshaking(), "the handshake finished");
    c.writer().write_all(b"PUBLISH from the device\n").unwrap();
    s.writer().write_all(b"PUBACK from the endpoint\n").unwrap();
    let mut buf = Vec::new();
    c.write_tls(&mut buf).unwrap();
    s.read_tls(&mut &buf[..]).unwrap();
    s.process_new_packets().map_err(|e| format!("server: {e}"))?;
    let mut buf = Vec::new();
    s.write_tls(&mut buf).unwrap();
    c.read_tls(&mut &buf[..]).unwrap();
    c.process_new_packets().map_err(|e| format!("client: {e}"))?;
    let mut got = [0u8; 24];
    s.reader().read_exact(&mut got).unwrap();
    assert_eq!(&got, b"PUBLISH from the device\n");
    let mut got = [0u8; 25];
    c.reader().read_exact(&mut got).unwrap();
    assert_eq!(&got, b"PUBACK from the endpoint\n");
    Ok((c, s))
}

fn only_suite(mut provider: CryptoProvider, suite: rustls::CipherSuite) -> CryptoProvider {
    provider.cipher_suites.retain(|s| s.suite() == suite);
    assert_eq!(provider.cipher_suites.len(), 1);
    provider
}

#[test]
fn sm2_certificates_both_ways_over_each_sm_suite() {
    let sm = pki(KeyAlgorithm::Sm2, "SM2");
    for suite in [TLS_SM4_GCM_SM3, TLS_SM4_CCM_SM3] {
        let server = server_config(
            claimlink_tls::strict_provider(),
            DualCertResolver::new(Some(certified(&sm.server, &sm.ca)), None),
            &[&sm.ca],
        );
        let client = client_config(
            only_suite(claimlink_tls::strict_provider(), suite),
            &[&sm.ca],
            Some(certified(&sm.device, &sm.ca)),
        );
        let (c, s) = connect(client, server).unwrap();
        assert_eq!(c.negotiated_cipher_suite().unwrap().suite(), suite);
        assert_eq!(s.negotiated_key_exchange_group().unwrap().name(), claimlink_tls::NAMED_GROUP_CURVE_SM2);
        let peer = s.peer_certificates().unwrap();
        assert_eq!(
            peer[0].as_ref(),
            sm.device.certificate.der(),
            "the server saw the device's SM2 certificate"
        );
    }
}

#[test]
fn one_server_serves_sm_and_international_clients_with_the_right_certificate() {
    let sm = pki(KeyAlgorithm::Sm2, "SM2");
    let intl = pki(KeyAlgorithm::P256, "P256");
    let resolver = || {
        DualCertResolver::new(Some(certified(&sm.server, &sm.ca)), Some(certified(&intl.server, &intl.ca)))
    };
    // An SM-only client gets the SM2 certificate and an SM suite.
    let (c, _) = connect(
        client_config(claimlink_tls::strict_provider(), &[&sm.ca], None),
        server_config(claimlink_tls::provider(), resolver(), &[]),
    )
    .unwrap();
    assert_eq!(c.peer_certificates().unwrap()[0].as_ref(), sm.server.certificate.der());
    assert_eq!(c.negotiated_cipher_suite().unwrap().suite(), TLS_SM4_GCM_SM3);
    // A client of rustls's own provider gets the P-256 certificate and AES.
    let (c, _) = connect(
        client_config(rustls::crypto::ring::default_provider(), &[&intl.ca], None),
        server_config(claimlink_tls::provider(), resolver(), &[]),
    )
    .unwrap();
    assert_eq!(c.peer_certificates().unwrap()[0].as_ref(), intl.server.certificate.der());
    assert!(format!("{:?}", c.negotiated_cipher_suite().unwrap().suite()).contains("AES"));
    // Client certificates of either algorithm, whatever the suite: an SM2 device over the
    // international suites, a P-256 device over SM4.
    let international_suites_first = claimlink_tls::provider();
    let (_, s) = connect(
        client_config(international_suites_first, &[&sm.ca, &intl.ca], Some(certified(&sm.device, &sm.ca))),
        server_config(claimlink_tls::provider(), resolver(), &[&sm.ca, &intl.ca]),
    )
    .unwrap();
    assert!(format!("{:?}", s.negotiated_cipher_suite().unwrap().suite()).contains("AES"));
    assert_eq!(s.peer_certificates().unwrap()[0].as_ref(), sm.device.certificate.der());
    let (_, s) = connect(
        client_config(
            only_suite(claimlink_tls::provider(), TLS_SM4_GCM_SM3),
            &[&sm.ca],
            Some(certified(&intl.device, &intl.ca)),
        ),
        server_config(claimlink_tls::provider(), resolver(), &[&sm.ca, &intl.ca]),
    )
    .unwrap();
    assert_eq!(s.negotiated_cipher_suite().unwrap().suite(), TLS_SM4_GCM_SM3);
    assert_eq!(s.peer_certificates().unwrap()[0].as_ref(), intl.device.certificate.der());
}

#[test]
fn strict_mode_refuses_international_algorithms() {
    let sm = pki(KeyAlgorithm::Sm2, "SM2");
    let intl = pki(KeyAlgorithm::P256, "P256");
    let e = connect(
        client_config(rustls::crypto::ring::default_provider(), &[&sm.ca, &intl.ca], None),
        server_config(
            claimlink_tls::strict_provider(),
            DualCertResolver::new(
                Some(certified(&sm.server, &sm.ca)),
                Some(certified(&intl.server, &intl.ca)),
            ),
            &[],
        ),
    )
    .unwrap_err();
    assert!(e.starts_with("server:"), "{e}");
    // And a strict server refuses a P-256 client certificate.
    let e = connect(
        client_config(claimlink_tls::provider(), &[&sm.ca], Some(certified(&intl.device, &intl.ca))),
        server_config(
            claimlink_tls::strict_provider(),
            DualCertResolver::new(Some(certified(&sm.server, &sm.ca)), None),
            &[&sm.ca],
        ),
    )
    .unwrap_err();
    assert!(e.starts_with("server:"), "{e}");
}

/// A certified key whose `CertificateVerify` is signed with the certificate ID instead of
/// RFC 8998's.
fn wrong_id(leaf: &TestLeaf, ca: &TestCa) -> Arc<CertifiedKey> {
    let der = key(leaf);
    let sm2 = claimlink_gm::Sm2PrivateKey::from_pkcs8_der(der.secret_der()).unwrap();
    let signer = Sm2SigningKey::with_id(&sm2, &claimlink_gm::DistId::GMT_0009_DEFAULT);
    Arc::new(CertifiedKey::new(chain(leaf, ca), Arc::new(signer)))
}

#[test]
fn a_handshake_signed_with_the_wrong_sm2_id_is_refused_both_ways() {
    let sm = pki(KeyAlgorithm::Sm2, "SM2");
    // The server signs with the wrong ID: the client refuses.
    let e = connect(
        client_config(claimlink_tls::strict_provider(), &[&sm.ca], None),
        server_config(
            claimlink_tls::strict_provider(),
            DualCertResolver::new(Some(wrong_id(&sm.server, &sm.ca)), None),
            &[],
        ),
    )
    .unwrap_err();
    assert!(e.starts_with("client:") && e.contains("ignature"), "{e}");
    // The device signs with the wrong ID: the server refuses.
    let e = connect(
        client_config(claimlink_tls::strict_provider(), &[&sm.ca], Some(wrong_id(&sm.device, &sm.ca))),
        server_config(
            claimlink_tls::strict_provider(),
            DualCertResolver::new(Some(certified(&sm.server, &sm.ca)), None),
            &[&sm.ca],
        ),
    )
    .unwrap_err();
    assert!(e.starts_with("server:") && e.contains("ignature"), "{e}");
}

#[test]
fn a_client_preferring_sm_gets_sm_from_a_server_offering_both() {
    let sm = pki(KeyAlgorithm::Sm2, "SM2");
    let intl = pki(KeyAlgorithm::P256, "P256");
    let first = claimlink_tls::provider_preferring_sm();
    assert_eq!(first.cipher_suites[0].suite(), TLS_SM4_GCM_SM3);
    assert_eq!(first.kx_groups[0].name(), claimlink_tls::NAMED_GROUP_CURVE_SM2);
    assert!(first.cipher_suites.len() > 2, "the international suites stay as a fallback");
    let (c, s) = connect(
        client_config(first, &[&sm.ca, &intl.ca], Some(certified(&sm.device, &sm.ca))),
        server_config(
            claimlink_tls::provider(),
            DualCertResolver::new(
                Some(certified(&sm.server, &sm.ca)),
                Some(certified(&intl.server, &intl.ca)),
            ),
            &[&sm.ca, &intl.ca],
        ),
    )
    .unwrap();
    assert_eq!(c.negotiated_cipher_suite().unwrap().suite(), TLS_SM4_GCM_SM3);
    assert_eq!(s.negotiated_key_exchange_group().unwrap().name(), claimlink_tls::NAMED_GROUP_CURVE_SM2);
    assert_eq!(c.peer_certificates().unwrap()[0].as_ref(), sm.server.certificate.der());
}
