//! SM2-with-SM3 signature verification for rustls and webpki: one algorithm object per SM2 ID.

use std::sync::{Mutex, OnceLock};

use claimlink_gm::{DistId, Sm2PublicKey, Sm2Signature};
use rustls::SignatureScheme;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{AlgorithmIdentifier, InvalidSignature, SignatureVerificationAlgorithm};

/// `id-ecPublicKey` + `sm2p256v1`, the AlgorithmIdentifier of an SM2 SubjectPublicKeyInfo
/// (content only, as webpki compares it).
const SM2_PUBLIC_KEY: AlgorithmIdentifier = AlgorithmIdentifier::from_slice(&[
    0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x81, 0x1c, 0xcf, 0x55, 0x01,
    0x82, 0x2d,
]);

/// `SM2-with-SM3` (1.2.156.10197.1.501), no parameters.
const SM2_WITH_SM3: AlgorithmIdentifier =
    AlgorithmIdentifier::from_slice(&[0x06, 0x08, 0x2a, 0x81, 0x1c, 0xcf, 0x55, 0x01, 0x83, 0x75]);

/// SM2-with-SM3 under one distinguishing ID.
#[derive(Debug)]
pub struct Sm2Sm3 {
    id: DistId,
    /// Signatures this object has already verified, for the ones that come back (see
    /// [`VerifiedSignatures`]); `None` where every signature is new (handshake signatures).
    verified: Option<&'static VerifiedSignatures>,
}

/// Certificates, CRLs and OCSP responses: the GM/T 0009 default ID `1234567812345678`.
pub static SM2_SM3_CERTIFICATE: Sm2Sm3 =
    Sm2Sm3 { id: DistId::GMT_0009_DEFAULT, verified: Some(&CERTIFICATE_SIGNATURES) };

/// TLS 1.3 `CertificateVerify`: `TLSv1.3+GM+Cipher+Suite` (RFC 8998 section 3.2.1).
pub static SM2_SM3_TLS13: Sm2Sm3 = Sm2Sm3 { id: DistId::TLS13, verified: None };

static CERTIFICATE_SIGNATURES: VerifiedSignatures = VerifiedSignatures::new();

/// Slots of [`VerifiedSignatures`]: 4,096 x 32 bytes = 128 KiB per process, fixed.
const VERIFIED_SLOTS: usize = 4096;

/// A fixed-size, direct-mapped memo of certificate signatures that verified: the SM3 digest of
/// (ID, public key, signed bytes, signature), each length-prefixed.
///
/// Every handshake verifies the same issuing-CA links again (the device's manufacturer CA under
/// its root, the endpoint's certificate on the device side), and SM2 verification is the cost of
/// an SM2 handshake. A hit means these exact bytes verified before, which a deterministic check
/// would repeat, so the answer is the same; only successes are stored, so a forged signature
/// can never be remembered as good, and finding a different input with the same SM3 digest is
/// what SM3's collision resistance rules out. Unknown inputs just overwrite a slot: the memo is
/// bounded whatever a peer sends, and an evicted link is verified again.
#[derive(Debug)]
pub(crate) struct VerifiedSignatures {
    slots: Mutex<[[u8; 32]; VERIFIED_SLOTS]>,
}

impl VerifiedSignatures {
    const fn new() -> Self {
        Self { slots: Mutex::new([[0; 32]; VERIFIED_SLOTS]) }
    }

    fn key(id: &DistId, public_key: &[u8], message: &[u8], signature: &[u8]) -> [u8; 32] {
        use claimlink_gm::sm3::Digest;
        let mut h = claimlink_gm::sm3::Sm3::new();
        for part in [id.as_str().as_bytes(), public_key, message, signature] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        h.finalize().into()
    }

    fn slot(key: &[u8; 32]) -> usize {
        usize::from(u16::from_be_bytes([key[0], key[1]])) % VERIFIED_SLOTS
    }

    fn contains(&self, key: &[u8; 32]) -> bool {
        self.slots.lock().map(|slots| slots[Self::slot(key)] == *key).unwrap_or(false)
    }

    fn insert(&self, key: [u8; 32]) {
        if let Ok(mut slots) = self.slots.lock() {
            slots[Self::slot(&key)] = key;
        }
    }
}

impl SignatureVerificationAlgorithm for Sm2Sm3 {
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        let memo =
            self.verified.map(|v| (v, VerifiedSignatures::key(&self.id, public_key, message, signature)));
        if let Some((verified, key)) = &memo
            && verified.contains(key)
        {
            return Ok(());
        }
        let key = Sm2PublicKey::from_sec1_bytes(public_key).map_err(|_| InvalidSignature)?;
        let sig = Sm2Signature::from_der(signature).map_err(|_| InvalidSignature)?;
        key.verify(&self.id, message, &sig).map_err(|_| InvalidSignature)?;
        if let Some((verified, key)) = memo {
            verified.insert(key);
        }
        Ok(())
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        SM2_PUBLIC_KEY
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        SM2_WITH_SM3
    }

    fn fips(&self) -> bool {
        false
    }
}

/// The handshake-signature algorithms of `sm2sig_sm3`.
static TLS13_ONLY: [&dyn SignatureVerificationAlgorithm; 1] = [&SM2_SM3_TLS13];

/// ring's algorithms with SM2 first: certificate chains through `all`, handshake signatures
/// through `mapping` (where `sm2sig_sm3` names the TLS 1.3 ID's object). Made once.
pub(crate) fn all() -> WebPkiSupportedAlgorithms {
    static ALL: OnceLock<WebPkiSupportedAlgorithms> = OnceLock::new();
    *ALL.get_or_init(|| {
        let ring = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        let all: Vec<&'static dyn SignatureVerificationAlgorithm> =
            std::iter::once(&SM2_SM3_CERTIFICATE as &dyn SignatureVerificationAlgorithm)
                .chain(ring.all.iter().copied())
                .collect();
        let mapping: Vec<(SignatureScheme, &'static [&'static dyn SignatureVerificationAlgorithm])> =
            std::iter::once((crate::SM2SIG_SM3, &TLS13_ONLY[..]))
                .chain(ring.mapping.iter().copied())
                .collect();
        // Leaked once per process: rustls wants 'static slices.
        WebPkiSupportedAlgorithms { all: Vec::leak(all), mapping: Vec::leak(mapping) }
    })
}

/// SM2 only (the strict provider).
pub(crate) static SM_ONLY: WebPkiSupportedAlgorithms =
    WebPkiSupportedAlgorithms { all: &[&SM2_SM3_CERTIFICATE], mapping: &[(crate::SM2SIG_SM3, &TLS13_ONLY)] };

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_object_verifies_under_its_own_id_only() {
        let mut rng = rand_core::UnwrapErr(getrandom::SysRng);
        let key = claimlink_gm::Sm2PrivateKey::generate(&mut rng);
        let public = key.public_key().to_sec1_uncompressed();
        let msg = b"64 spaces, a context string, a zero byte and a transcript hash";
        let tls_sig = key.sign(&DistId::TLS13, msg).unwrap().to_der();
        let cert_sig = key.sign(&DistId::GMT_0009_DEFAULT, msg).unwrap().to_der();
        assert!(SM2_SM3_TLS13.verify_signature(&public, msg, &tls_sig).is_ok());
        assert!(SM2_SM3_CERTIFICATE.verify_signature(&public, msg, &cert_sig).is_ok());
        // The wrong ID is a wrong signature, both ways.
        assert!(SM2_SM3_TLS13.verify_signature(&public, msg, &cert_sig).is_err());
        assert!(SM2_SM3_CERTIFICATE.verify_signature(&public, msg, &tls_sig).is_err());
        // Garbage in every position.
        assert!(SM2_SM3_TLS13.verify_signature(&public[..64], msg, &tls_sig).is_err());
        assert!(SM2_SM3_TLS13.verify_signature(&public, msg, &tls_sig[..tls_sig.len() - 1]).is_err());
        assert!(SM2_SM3_TLS13.verify_signature(&public, b"other", &tls_sig).is_err());
    }

    #[test]
    fn the_memo_answers_only_for_the_exact_bytes_that_verified() {
        let mut rng = rand_core::UnwrapErr(getrandom::SysRng);
        let key = claimlink_gm::Sm2PrivateKey::generate(&mut rng);
        let public = key.public_key().to_sec1_uncompressed();
        let msg = b"a TBSCertificate";
        let sig = key.sign(&DistId::GMT_0009_DEFAULT, msg).unwrap().to_der();
        let memo = VerifiedSignatures::new();
        let alg = Sm2Sm3 { id: DistId::GMT_0009_DEFAULT, verified: Some(Box::leak(Box::new(memo))) };
        let verified = alg.verified.unwrap();
        let k = VerifiedSignatures::key(&alg.id, &public, msg, &sig);
        assert!(!verified.contains(&k));
        // A failure is not remembered.
        let mut bad = sig.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(alg.verify_signature(&public, msg, &bad).is_err());
        assert!(!verified.contains(&VerifiedSignatures::key(&alg.id, &public, msg, &bad)));
        assert!(alg.verify_signature(&public, msg, &bad).is_err());
        // A success is, and the next call answers from the memo.
        assert!(alg.verify_signature(&public, msg, &sig).is_ok());
        assert!(verified.contains(&k));
        assert!(alg.verify_signature(&public, msg, &sig).is_ok());
        // Neighbours of a remembered entry still go through verification and fail.
        assert!(alg.verify_signature(&public, b"a TBSCertificatf", &sig).is_err());
        let other = claimlink_gm::Sm2PrivateKey::generate(&mut rng).public_key().to_sec1_uncompressed();
        assert!(alg.verify_signature(&other, msg, &sig).is_err());
        // Length prefixes keep (key, message) boundaries apart.
        assert_ne!(
            VerifiedSignatures::key(&alg.id, b"ab", b"c", b"s"),
            VerifiedSignatures::key(&alg.id, b"a", b"bc", b"s")
        );
        // Under another ID the same bytes are another entry.
        assert_ne!(k, VerifiedSignatures::key(&DistId::TLS13, &public, msg, &sig));
    }
}
