//! SM2 (GM/T 0003-2012) signatures and public-key encryption on the curve `sm2p256v1`.
//!
//! Every signature operation takes a [`DistId`]: the distinguishing ID hashed into
//! `Z = SM3(ENTL || ID || a || b || xG || yG || xA || yA)`. Certificates, CSRs and CRLs use
//! [`DistId::GMT_0009_DEFAULT`]; TLS 1.3 (RFC 8998) uses [`DistId::TLS13`]. A signing or
//! verifying key is bound to one ID at creation, so `Z` is computed once per key, not per message.

use std::borrow::Cow;
use std::fmt;

use rand_core::CryptoRng;
use sm2::dsa::signature::Signer;
use sm2::elliptic_curve::sec1::ToSec1Point;
use sm2::pkcs8::DecodePrivateKey;
use sm2::pke::{DecryptingKey, EncryptingKey, Mode};
use zeroize::Zeroizing;

/// Longest distinguishing ID: its bit length must fit the 16-bit ENTL field.
pub const MAX_DIST_ID_LEN: usize = 8191;

/// An SM2 distinguishing ID (user identity hashed into `Z`). Public, so `Debug` shows it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct DistId(Cow<'static, str>);

/// A distinguishing ID that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("SM2 distinguishing ID is {len} bytes, more than the {MAX_DIST_ID_LEN} that ENTL can express")]
pub struct DistIdError {
    /// Length of the rejected ID in bytes.
    pub len: usize,
}

impl DistId {
    /// The GM/T 0009 default ID `1234567812345678`, used in certificates, CSRs, CRLs and CMS.
    pub const GMT_0009_DEFAULT: DistId = DistId(Cow::Borrowed("1234567812345678"));
    /// The ID for TLS 1.3 handshake signatures (RFC 8998 section 3.2.1).
    pub const TLS13: DistId = DistId(Cow::Borrowed("TLSv1.3+GM+Cipher+Suite"));

    /// A custom ID. The empty ID is allowed (it is OpenSSL 3.0's default) but must be chosen.
    pub fn new(id: impl Into<String>) -> Result<Self, DistIdError> {
        let id = id.into();
        if id.len() > MAX_DIST_ID_LEN {
            return Err(DistIdError { len: id.len() });
        }
        Ok(Self(Cow::Owned(id)))
    }

    /// The ID as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for DistId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DistId({:?})", self.as_str())
    }
}

/// Errors of SM2 operations. Messages never contain key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Sm2Error {
    /// Bytes that are not a valid SM2 private key (zero, or not below the group order).
    #[error("invalid SM2 private key")]
    InvalidPrivateKey,
    /// Bytes that are not a point on sm2p256v1.
    #[error("invalid SM2 public key")]
    InvalidPublicKey,
    /// A signature that is not a valid encoding (DER or r||s) with r, s in range.
    #[error("malformed SM2 signature")]
    MalformedSignature,
    /// The signature does not verify for this key, ID and message.
    #[error("SM2 signature verification failed")]
    VerificationFailed,
    /// Signing failed (only possible with a broken random source or an internal error).
    #[error("SM2 signing failed")]
    SigningFailed,
    /// Encryption failed (the random source failed).
    #[error("SM2 encryption failed")]
    EncryptionFailed,
    /// The ciphertext is malformed or its C3 check value does not match.
    #[error("SM2 decryption failed")]
    DecryptionFailed,
}

/// How an SM2 ciphertext is laid out. Both are C1C3C2 as GM/T 0003-2012 specifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sm2CiphertextFormat {
    /// `04 || x1 || y1 || C3 || C2` (raw, uncompressed C1).
    C1C3C2,
    /// GM/T 0009 `SEQUENCE { x INTEGER, y INTEGER, hash OCTET STRING, ciphertext OCTET STRING }`.
    Der,
}

/// An SM2 private key with its public key computed once. Zeroized on drop; `Debug` shows only
/// the public key.
#[derive(Clone)]
pub struct Sm2PrivateKey {
    secret: sm2::SecretKey,
    public: sm2::PublicKey,
}

/// An SM2 public key (a point on sm2p256v1).
#[derive(Clone, PartialEq, Eq)]
pub struct Sm2PublicKey(sm2::PublicKey);

/// An SM2 signature `(r, s)`.
#[derive(Clone, PartialEq, Eq)]
pub struct Sm2Signature(sm2::dsa::Signature);

/// A private key bound to a distinguishing ID, ready to sign.
#[derive(Clone)]
pub struct Sm2SigningKey {
    inner: sm2::dsa::SigningKey,
    id: DistId,
}

/// A public key bound to a distinguishing ID, ready to verify.
#[derive(Clone)]
pub struct Sm2VerifyingKey {
    public: sm2::PublicKey,
    /// `Z = SM3(ENTL || ID || a || b || xG || yG || xA || yA)`, computed once per key.
    z: [u8; 32],
    id: DistId,
}

impl Sm2PrivateKey {
    /// Generates a fresh key pair from `rng`.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        Self::from_secret(sm2::elliptic_curve::Generate::generate_from_rng(rng))
    }

    fn from_secret(secret: sm2::SecretKey) -> Self {
        let public = secret.public_key();
        Self { secret, public }
    }

    /// Elliptic-curve Diffie-Hellman with a peer's public point (`curveSM2` of RFC 8998 and
    /// TLS 1.3: the peer's key share is an uncompressed SEC1 point, 65 bytes): the x coordinate
    /// of `d * P`. A point off the curve, the identity or another encoding is refused.
    pub fn diffie_hellman(&self, peer: &[u8]) -> Result<Zeroizing<[u8; 32]>, Sm2Error> {
        use sm2::elliptic_curve::point::AffineCoordinates;
        if peer.len() != 65 || peer[0] != 0x04 {
            return Err(Sm2Error::InvalidPublicKey);
        }
        let peer = sm2::PublicKey::from_sec1_bytes(peer).map_err(|_| Sm2Error::InvalidPublicKey)?;
        let shared = (peer.to_projective() * *self.secret.to_nonzero_scalar()).to_affine();
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(&shared.x());
        Ok(out)
    }

    /// The key from its 32-byte big-endian scalar.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Sm2Error> {
        sm2::SecretKey::from_slice(bytes).map(Self::from_secret).map_err(|_| Sm2Error::InvalidPrivateKey)
    }

    /// The 32-byte big-endian scalar.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.secret.to_bytes().into())
    }

    /// The key from an unencrypted PKCS#8 `PrivateKeyInfo` (algorithm ecPublicKey, curve sm2p256v1).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, Sm2Error> {
        sm2::SecretKey::from_pkcs8_der(der).map(Self::from_secret).map_err(|_| Sm2Error::InvalidPrivateKey)
    }

    /// The unencrypted PKCS#8 `PrivateKeyInfo` DER, with the public key inside the
    /// `ECPrivateKey` (byte-identical to the `sm2` crate's encoding). Encoded here from the cached public key: upstream
    /// recomputes it, a scalar multiplication per key that bulk issuance cannot afford.
    pub fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, Sm2Error> {
        pkcs8::encode(&self.secret.to_bytes(), &self.public_key().to_sec1_uncompressed())
    }

    /// The matching public key.
    pub fn public_key(&self) -> Sm2PublicKey {
        Sm2PublicKey(self.public)
    }

    /// This key bound to `id` for signing.
    pub fn signing_key(&self, id: &DistId) -> Sm2SigningKey {
        // `new` fails only for an ID longer than ENTL allows, which `DistId` rules out.
        let inner = sm2::dsa::SigningKey::new(id.as_str(), &self.secret)
            .unwrap_or_else(|_| unreachable!("DistId length is bounded"));
        Sm2SigningKey { inner, id: id.clone() }
    }

    /// Signs `msg` with distinguishing ID `id`. Prefer [`Self::signing_key`] for many signatures.
    pub fn sign(&self, id: &DistId, msg: &[u8]) -> Result<Sm2Signature, Sm2Error> {
        self.signing_key(id).sign(msg)
    }

    /// Decrypts a C1C3C2 ciphertext in the given format.
    pub fn decrypt(
        &self,
        ciphertext: &[u8],
        format: Sm2CiphertextFormat,
    ) -> Result<Zeroizing<Vec<u8>>, Sm2Error> {
        let key = DecryptingKey::new_with_mode(self.secret.to_nonzero_scalar(), Mode::C1C3C2);
        let result = match format {
            Sm2CiphertextFormat::C1C3C2 => key.decrypt(ciphertext),
            Sm2CiphertextFormat::Der => key.decrypt_der(ciphertext),
        };
        result.map(Zeroizing::new).map_err(|_| Sm2Error::DecryptionFailed)
    }
}

impl fmt::Debug for Sm2PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sm2PrivateKey").field("public_key", &self.public_key()).finish_non_exhaustive()
    }
}

impl Sm2PublicKey {
    /// The key from SEC1 bytes (uncompressed `04 || x || y` or compressed).
    pub fn from_sec1_bytes(bytes: &[u8]) -> Result<Self, Sm2Error> {
        sm2::PublicKey::from_sec1_bytes(bytes).map(Self).map_err(|_| Sm2Error::InvalidPublicKey)
    }

    /// Uncompressed SEC1 bytes `04 || x || y` (65 bytes), as used in SubjectPublicKeyInfo.
    pub fn to_sec1_uncompressed(&self) -> Vec<u8> {
        self.0.as_affine().to_sec1_point(false).as_bytes().to_vec()
    }

    /// This key bound to `id` for verifying.
    pub fn verifying_key(&self, id: &DistId) -> Sm2VerifyingKey {
        Sm2VerifyingKey { public: self.0, z: identity_hash(id, &self.0), id: id.clone() }
    }

    /// Verifies `sig` over `msg` with distinguishing ID `id`.
    pub fn verify(&self, id: &DistId, msg: &[u8], sig: &Sm2Signature) -> Result<(), Sm2Error> {
        self.verifying_key(id).verify(msg, sig)
    }

    /// Encrypts `msg` to this key (C1C3C2, SM3 check value).
    pub fn encrypt<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        msg: &[u8],
        format: Sm2CiphertextFormat,
    ) -> Result<Vec<u8>, Sm2Error> {
        let key = EncryptingKey::new_with_mode(self.0, Mode::C1C3C2);
        let mut rng = rand_core::UnwrapErr(AsTry(rng));
        let result = match format {
            Sm2CiphertextFormat::C1C3C2 => key.encrypt(&mut rng, msg),
            Sm2CiphertextFormat::Der => key.encrypt_der(&mut rng, msg),
        };
        result.map_err(|_| Sm2Error::EncryptionFailed)
    }
}

impl fmt::Debug for Sm2PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.to_sec1_uncompressed();
        write!(f, "Sm2PublicKey(")?;
        bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))?;
        write!(f, ")")
    }
}

impl Sm2SigningKey {
    /// Signs `msg` (deterministic nonce per RFC 6979 with SM3, so no RNG is needed).
    pub fn sign(&self, msg: &[u8]) -> Result<Sm2Signature, Sm2Error> {
        self.inner.try_sign(msg).map(Sm2Signature).map_err(|_| Sm2Error::SigningFailed)
    }

    /// The distinguishing ID this key signs with.
    pub fn dist_id(&self) -> &DistId {
        &self.id
    }

    /// The matching verifying key, bound to the same ID.
    pub fn verifying_key(&self) -> Sm2VerifyingKey {
        Sm2PublicKey(sm2::PublicKey::from(self.inner.verifying_key())).verifying_key(&self.id)
    }
}

impl fmt::Debug for Sm2SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sm2SigningKey").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Sm2VerifyingKey {
    /// Verifies `sig` over `msg`.
    ///
    /// GM/T 0003.2 section 7, steps B1-B7. Everything here is public (key, message, signature),
    /// so the point arithmetic is variable-time: `[s]G` from the curve's precomputed basepoint
    /// table and `[t]P` by wNAF. The `sm2` crate's own verifier computes both halves with the
    /// constant-time generic ladder and no table, which made verification the cost of an SM2
    /// handshake (BENCHMARKS.md).
    pub fn verify(&self, msg: &[u8], sig: &Sm2Signature) -> Result<(), Sm2Error> {
        use sm2::elliptic_curve::Group;
        use sm2::elliptic_curve::ops::{MulByGeneratorVartime, MulVartime, Reduce};
        use sm2::elliptic_curve::point::AffineCoordinates;
        use sm3::Digest;

        // B1, B2: r and s in [1, n-1] (checked when the signature was decoded).
        let (r, s) = (*sig.0.r(), *sig.0.s());
        // B3, B4: e = SM3(Z || M).
        let e: sm2::FieldBytes = sm3::Sm3::new_with_prefix(self.z).chain_update(msg).finalize();
        let e = <sm2::Scalar as Reduce<sm2::FieldBytes>>::reduce(&e);
        // B5: t = r + s mod n, not zero.
        let t = r + s;
        if bool::from(t.is_zero()) {
            return Err(Sm2Error::VerificationFailed);
        }
        // B6: (x1, y1) = [s]G + [t]P, not the point at infinity.
        let point = sm2::ProjectivePoint::mul_by_generator_vartime(&s)
            + sm2::ProjectivePoint::from(self.public.as_affine()).mul_vartime(&t);
        if bool::from(point.is_identity()) {
            return Err(Sm2Error::VerificationFailed);
        }
        // B7: R = e + x1 mod n must equal r (public values: a plain comparison is fine).
        let x = point.to_affine().x();
        if r == e + <sm2::Scalar as Reduce<sm2::FieldBytes>>::reduce(&x) {
            Ok(())
        } else {
            Err(Sm2Error::VerificationFailed)
        }
    }

    /// The distinguishing ID this key verifies with.
    pub fn dist_id(&self) -> &DistId {
        &self.id
    }
}

/// `Z` of GM/T 0003.2 section 5.5 for `key` under `id`.
pub(crate) fn identity_hash(id: &DistId, key: &sm2::PublicKey) -> [u8; 32] {
    use sm3::Digest;
    // sm2p256v1's a, b, xG and yG (GM/T 0003.5).
    const CURVE: [u8; 128] = hex_bytes(concat!(
        "FFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC",
        "28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93",
        "32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7",
        "BC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0",
    ));
    // The ID is at most MAX_DIST_ID_LEN bytes, so its bit length fits in 16 bits.
    let entl = u16::try_from(id.as_str().len() * 8).unwrap_or(u16::MAX);
    let point = key.as_affine().to_sec1_point(false);
    sm3::Sm3::new()
        .chain_update(entl.to_be_bytes())
        .chain_update(id.as_str())
        .chain_update(CURVE)
        .chain_update(&point.as_bytes()[1..])
        .finalize()
        .into()
}

/// Hex text to bytes at compile time (the curve constants above).
const fn hex_bytes<const N: usize>(hex: &str) -> [u8; N] {
    const fn nibble(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => panic!("not a hex digit"),
        }
    }
    let h = hex.as_bytes();
    assert!(h.len() == 2 * N);
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = (nibble(h[2 * i]) << 4) | nibble(h[2 * i + 1]);
        i += 1;
    }
    out
}

impl fmt::Debug for Sm2VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sm2VerifyingKey").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Sm2Signature {
    /// Parses the DER `SEQUENCE { r INTEGER, s INTEGER }` form (strict DER).
    pub fn from_der(der: &[u8]) -> Result<Self, Sm2Error> {
        sm2::dsa::Signature::from_der(der).map(Self).map_err(|_| Sm2Error::MalformedSignature)
    }

    /// The DER `SEQUENCE { r INTEGER, s INTEGER }` form used by X.509, CSRs and TLS.
    pub fn to_der(&self) -> Vec<u8> {
        self.0.to_der().to_vec()
    }

    /// Parses the raw 64-byte `r || s` form.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Sm2Error> {
        sm2::dsa::Signature::from_slice(bytes).map(Self).map_err(|_| Sm2Error::MalformedSignature)
    }

    /// The raw 64-byte `r || s` form.
    pub fn to_bytes(&self) -> [u8; 64] {
        self.0.to_bytes().into()
    }
}

impl fmt::Debug for Sm2Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sm2Signature(")?;
        self.to_bytes().iter().try_for_each(|b| write!(f, "{b:02x}"))?;
        write!(f, ")")
    }
}

/// Adapts an infallible `CryptoRng` borrowed as `?Sized` to the sized `TryCryptoRng` upstream wants.
struct AsTry<'a, R: CryptoRng + ?Sized>(&'a mut R);

impl<R: CryptoRng + ?Sized> rand_core::TryRng for AsTry<'_, R> {
    type Error = core::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(self.0.next_u32())
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(self.0.next_u64())
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        self.0.fill_bytes(dst);
        Ok(())
    }
}

impl<R: CryptoRng + ?Sized> rand_core::TryCryptoRng for AsTry<'_, R> {}

pub mod kex;

mod pkcs8 {
    //! PKCS#8 `PrivateKeyInfo` { ecPublicKey, sm2p256v1, ECPrivateKey (RFC 5915) }.

    use der::asn1::{ObjectIdentifier as Oid, OctetStringRef};
    use der::{Encode, Sequence};
    use sec1::EcPrivateKey;
    use zeroize::Zeroizing;

    use super::Sm2Error;

    const EC_PUBLIC_KEY: Oid = Oid::new_unwrap("1.2.840.10045.2.1");
    const SM2P256V1: Oid = Oid::new_unwrap("1.2.156.10197.1.301");

    #[derive(Sequence)]
    struct Algorithm {
        oid: Oid,
        curve: Oid,
    }

    #[derive(Sequence)]
    struct PrivateKeyInfo<'a> {
        version: u8,
        algorithm: Algorithm,
        private_key: &'a OctetStringRef,
    }

    pub(super) fn encode(scalar: &[u8], public_sec1: &[u8]) -> Result<Zeroizing<Vec<u8>>, Sm2Error> {
        let err = |_| Sm2Error::InvalidPrivateKey;
        let ec = EcPrivateKey {
            private_key: scalar,
            parameters: None, // named once, in the AlgorithmIdentifier
            public_key: Some(public_sec1),
        };
        let ec_der = Zeroizing::new(ec.to_der().map_err(err)?);
        let info = PrivateKeyInfo {
            version: 0,
            algorithm: Algorithm { oid: EC_PUBLIC_KEY, curve: SM2P256V1 },
            private_key: OctetStringRef::new(&ec_der).map_err(err)?,
        };
        info.to_der().map(Zeroizing::new).map_err(err)
    }
}

#[cfg(test)]
mod tests;
