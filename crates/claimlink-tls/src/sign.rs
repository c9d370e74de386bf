//! SM2 keys signing `CertificateVerify` with `sm2sig_sm3` and the RFC 8998 ID, and the key
//! provider that loads them (other keys go to ring's).

use std::sync::Arc;

use claimlink_gm::{DistId, Sm2PrivateKey};
use rustls::crypto::KeyProvider;
use rustls::pki_types::{PrivateKeyDer, SubjectPublicKeyInfoDer};
use rustls::sign::{Signer, SigningKey};
use rustls::{Error, SignatureAlgorithm, SignatureScheme};

/// `AlgorithmIdentifier { id-ecPublicKey, sm2p256v1 }`, DER with its SEQUENCE header.
const SM2_SPKI_ALGORITHM: [u8; 21] = [
    0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x81, 0x1c, 0xcf,
    0x55, 0x01, 0x82, 0x2d,
];

/// An SM2 private key as rustls signs with it: `sm2sig_sm3` over the TLS 1.3 signed content,
/// with the ID `TLSv1.3+GM+Cipher+Suite` (RFC 8998 section 3.2.1). `Debug` shows no key.
pub struct Sm2SigningKey {
    key: Arc<claimlink_gm::Sm2SigningKey>,
    spki: Vec<u8>,
}

impl std::fmt::Debug for Sm2SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sm2SigningKey(sm2sig_sm3)")
    }
}

impl Sm2SigningKey {
    /// Signs handshakes with `key` and the RFC 8998 ID.
    pub fn new(key: &Sm2PrivateKey) -> Self {
        Self::with_id(key, &DistId::TLS13)
    }

    /// Signs with another ID: for tests that a peer refuses a handshake signed with the wrong one.
    pub fn with_id(key: &Sm2PrivateKey, id: &DistId) -> Self {
        let point = key.public_key().to_sec1_uncompressed();
        let mut spki = vec![0x30, 0x59];
        spki.extend_from_slice(&SM2_SPKI_ALGORITHM);
        spki.extend_from_slice(&[0x03, 0x42, 0x00]);
        spki.extend_from_slice(&point);
        Self { key: Arc::new(key.signing_key(id)), spki }
    }
}

impl SigningKey for Sm2SigningKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        offered.contains(&crate::SM2SIG_SM3).then(|| Box::new(Sm2Signer(self.key.clone())) as Box<dyn Signer>)
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(&self.spki[..]))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        // TLS 1.2 has no SM2; choose_scheme never offers it there (no sm2sig_sm3 in a TLS 1.2
        // ClientHello of ours, and the SM suites are TLS 1.3 only).
        SignatureAlgorithm::ECDSA
    }
}

struct Sm2Signer(Arc<claimlink_gm::Sm2SigningKey>);

impl std::fmt::Debug for Sm2Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sm2Signer")
    }
}

impl Signer for Sm2Signer {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        let sig = self.0.sign(message).map_err(|e| Error::General(format!("SM2 signing failed: {e}")))?;
        Ok(sig.to_der())
    }

    fn scheme(&self) -> SignatureScheme {
        crate::SM2SIG_SM3
    }
}

/// Loads SM2 PKCS#8 keys itself and every other key through ring's provider.
#[derive(Debug)]
pub(crate) struct Sm2KeyProvider;

pub(crate) static KEY_PROVIDER: Sm2KeyProvider = Sm2KeyProvider;

impl KeyProvider for Sm2KeyProvider {
    fn load_private_key(&self, key_der: PrivateKeyDer<'static>) -> Result<Arc<dyn SigningKey>, Error> {
        if let PrivateKeyDer::Pkcs8(p) = &key_der
            && let Ok(key) = Sm2PrivateKey::from_pkcs8_der(p.secret_pkcs8_der())
        {
            return Ok(Arc::new(Sm2SigningKey::new(&key)));
        }
        rustls::crypto::ring::default_provider().key_provider.load_private_key(key_der)
    }
}

/// A rustls signing key for any key we use: SM2 (PKCS#8), P-256, P-384, RSA, Ed25519.
pub fn any_signing_key(key_der: PrivateKeyDer<'static>) -> Result<Arc<dyn SigningKey>, Error> {
    KEY_PROVIDER.load_private_key(key_der)
}
