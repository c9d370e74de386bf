//! The SM2 key exchange protocol (GM/T 0003.3-2012, GB/T 32918.3-2016 section 6), sans-IO: two
//! parties with long-term SM2 keys and distinguishing IDs each make an ephemeral key, swap the
//! ephemeral public points, and derive the same key of `klen` bytes and the optional
//! confirmation values `S_B`/`S_A`. TLCP's ECDHE suites (GB/T 38636) take their pre-master
//! secret from it.
//!
//! The initiator is the standard's A, the responder B. With `x̄ = 2^w + (x mod 2^w)`, `w = 127`:
//! `t = d + x̄(R_own)·r mod n`, `U = [t](P_peer + [x̄(R_peer)]R_peer)`,
//! `K = KDF(x_U || y_U || Z_A || Z_B, klen)`, and the confirmations
//! `S_B = SM3(0x02 || y_U || SM3(x_U || Z_A || Z_B || x_1 || y_1 || x_2 || y_2))`,
//! `S_A = SM3(0x03 || ...)` over the same inner hash. The scalar multiplication by `t` (secret)
//! is the curve crate's constant-time one.

use rand_core::CryptoRng;
use sm2::elliptic_curve::Group;
use sm2::elliptic_curve::ops::Reduce;
use sm2::elliptic_curve::point::AffineCoordinates;
use sm3::Digest;
use zeroize::Zeroizing;

use super::{DistId, Sm2Error, Sm2PrivateKey, Sm2PublicKey, identity_hash};

/// Which side of the exchange this party is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The standard's user A, who sends its ephemeral point first.
    Initiator,
    /// User B.
    Responder,
}

/// An ephemeral key pair `(r, R = [r]G)`, used for one exchange. Zeroized on drop.
pub struct Ephemeral {
    r: sm2::NonZeroScalar,
    point: Sm2PublicKey,
}

impl Ephemeral {
    /// A fresh ephemeral key from `rng`.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let secret: sm2::SecretKey = sm2::elliptic_curve::Generate::generate_from_rng(rng);
        Self { r: secret.to_nonzero_scalar(), point: Sm2PublicKey(secret.public_key()) }
    }

    /// The ephemeral key of a given private key (`r = d`), for tests against other
    /// implementations that take the ephemeral scalar as an input.
    pub fn from_private(key: &Sm2PrivateKey) -> Self {
        Self { r: key.secret.to_nonzero_scalar(), point: key.public_key() }
    }

    /// `R`, the point sent to the peer.
    pub fn public(&self) -> &Sm2PublicKey {
        &self.point
    }
}

impl std::fmt::Debug for Ephemeral {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ephemeral").field("public", &self.point).finish_non_exhaustive()
    }
}

/// This party: its long-term key and ID, and its ephemeral key for this exchange.
pub struct Party<'a> {
    /// Long-term key `d`.
    pub key: &'a Sm2PrivateKey,
    /// Its distinguishing ID.
    pub id: &'a DistId,
    /// `r`, `R`.
    pub ephemeral: &'a Ephemeral,
}

/// The peer: its long-term public key and ID (from its certificate), and the ephemeral point it
/// sent.
pub struct Peer<'a> {
    /// `P`.
    pub key: &'a Sm2PublicKey,
    /// Its distinguishing ID.
    pub id: &'a DistId,
    /// `R`.
    pub ephemeral: &'a Sm2PublicKey,
}

/// What the exchange gives one party.
pub struct Agreed {
    /// The shared key, `klen` bytes.
    pub key: Zeroizing<Vec<u8>>,
    /// The confirmation this party sends (the responder's `S_B`, the initiator's `S_A`).
    pub confirmation_to_send: [u8; 32],
    /// The confirmation it expects from the peer.
    pub confirmation_expected: [u8; 32],
}

impl std::fmt::Debug for Agreed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agreed").field("key_len", &self.key.len()).finish_non_exhaustive()
    }
}

/// The longest key derived (SM3's counter mode would go far beyond; TLCP needs 48 bytes).
pub const MAX_KEY_LEN: usize = 1024;

/// `x̄ = 2^127 + (x mod 2^127)` of a point, as a scalar (GB/T 32918.3 section 6.1, w = 127).
fn x_bar(point: &sm2::AffinePoint) -> sm2::Scalar {
    let x = point.x();
    let mut bytes = sm2::FieldBytes::default();
    bytes[16..].copy_from_slice(&x[16..]);
    bytes[16] = (bytes[16] & 0x7f) | 0x80;
    <sm2::Scalar as Reduce<sm2::FieldBytes>>::reduce(&bytes)
}

/// SM3's key derivation function (GB/T 32918.4 section 5.4.3): `SM3(z || ct)` for a 32-bit
/// counter from 1, concatenated and cut to `len` bytes.
pub(crate) fn kdf(z: &[u8], len: usize) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(len + 32));
    let mut ct: u32 = 1;
    while out.len() < len {
        out.extend_from_slice(&sm3::Sm3::new().chain_update(z).chain_update(ct.to_be_bytes()).finalize());
        ct = ct.wrapping_add(1);
    }
    out.truncate(len);
    out
}

/// Runs the exchange for `me` against `peer` and derives `klen` bytes (1 to [`MAX_KEY_LEN`]).
/// A peer point that is the identity, or a shared point at infinity, is refused.
pub fn agree(role: Role, me: &Party<'_>, peer: &Peer<'_>, klen: usize) -> Result<Agreed, Sm2Error> {
    if klen == 0 || klen > MAX_KEY_LEN {
        return Err(Sm2Error::InvalidPublicKey);
    }
    let own_r = *me.ephemeral.point.0.as_affine();
    let peer_r = *peer.ephemeral.0.as_affine();
    // A4, A5 (B3, B4): t = d + x̄·r mod n.
    let d: sm2::Scalar = *me.key.secret.to_nonzero_scalar();
    let t = d + x_bar(&own_r) * *me.ephemeral.r;
    // A6, A7 (B5, B6): U = [h·t](P + [x̄]R); h = 1 for sm2p256v1.
    let base = sm2::ProjectivePoint::from(*peer.key.0.as_affine())
        + sm2::ProjectivePoint::from(peer_r) * x_bar(&peer_r);
    let u = (base * t).to_affine();
    if bool::from(sm2::ProjectivePoint::from(u).is_identity()) {
        return Err(Sm2Error::InvalidPublicKey);
    }
    let (xu, yu) = (u.x(), sm2::elliptic_curve::sec1::ToSec1Point::to_sec1_point(&u, false));
    let yu = &yu.as_bytes()[33..65];
    let z_me = identity_hash(me.id, &me.key.public);
    let z_peer = identity_hash(peer.id, &peer.key.0);
    let (z_a, z_b, (r_a, r_b)) = match role {
        Role::Initiator => (z_me, z_peer, (own_r, peer_r)),
        Role::Responder => (z_peer, z_me, (peer_r, own_r)),
    };
    // A8 (B7): K = KDF(x_U || y_U || Z_A || Z_B, klen).
    let mut material = Zeroizing::new(Vec::with_capacity(128));
    material.extend_from_slice(&xu);
    material.extend_from_slice(yu);
    material.extend_from_slice(&z_a);
    material.extend_from_slice(&z_b);
    let key = kdf(&material, klen);
    // A9, A10 (B8, B10): the confirmations.
    let coords = |p: &sm2::AffinePoint| {
        let e = sm2::elliptic_curve::sec1::ToSec1Point::to_sec1_point(p, false);
        e.as_bytes()[1..65].to_vec()
    };
    let inner: [u8; 32] = sm3::Sm3::new()
        .chain_update(xu)
        .chain_update(z_a)
        .chain_update(z_b)
        .chain_update(coords(&r_a))
        .chain_update(coords(&r_b))
        .finalize()
        .into();
    let confirm = |tag: u8| -> [u8; 32] {
        sm3::Sm3::new().chain_update([tag]).chain_update(yu).chain_update(inner).finalize().into()
    };
    let (s_b, s_a) = (confirm(0x02), confirm(0x03));
    let (confirmation_to_send, confirmation_expected) = match role {
        Role::Initiator => (s_a, s_b),
        Role::Responder => (s_b, s_a),
    };
    Ok(Agreed { key, confirmation_to_send, confirmation_expected })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng() -> rand_core::UnwrapErr<getrandom::SysRng> {
        rand_core::UnwrapErr(getrandom::SysRng)
    }

    struct Side {
        key: Sm2PrivateKey,
        id: DistId,
        eph: Ephemeral,
    }

    fn side(id: &str) -> Side {
        Side {
            key: Sm2PrivateKey::generate(&mut rng()),
            id: DistId::new(id).unwrap(),
            eph: Ephemeral::generate(&mut rng()),
        }
    }

    fn run(a: &Side, b: &Side, b_sees_a_id: &DistId, klen: usize) -> (Agreed, Agreed) {
        let (pa, pb) = (a.key.public_key(), b.key.public_key());
        let alice = agree(
            Role::Initiator,
            &Party { key: &a.key, id: &a.id, ephemeral: &a.eph },
            &Peer { key: &pb, id: &b.id, ephemeral: b.eph.public() },
            klen,
        )
        .unwrap();
        let bob = agree(
            Role::Responder,
            &Party { key: &b.key, id: &b.id, ephemeral: &b.eph },
            &Peer { key: &pa, id: b_sees_a_id, ephemeral: a.eph.public() },
            klen,
        )
        .unwrap();
        (alice, bob)
    }

    #[test]
    fn both_sides_derive_the_same_key_and_each_others_confirmation() {
        for klen in [16, 48, 100] {
            let (a, b) = (side("ALICE123@YAHOO.COM"), side("BILL456@YAHOO.COM"));
            let (alice, bob) = run(&a, &b, &a.id, klen);
            assert_eq!(alice.key.len(), klen);
            assert_eq!(*alice.key, *bob.key);
            assert_eq!(alice.confirmation_expected, bob.confirmation_to_send, "S_B");
            assert_eq!(bob.confirmation_expected, alice.confirmation_to_send, "S_A");
            assert_ne!(alice.confirmation_to_send, bob.confirmation_to_send);
        }
    }

    #[test]
    fn a_wrong_identity_or_another_ephemeral_gives_another_key_and_fails_confirmation() {
        let (a, b) = (side("ALICE123@YAHOO.COM"), side("BILL456@YAHOO.COM"));
        let (alice, bob) = run(&a, &b, &DistId::new("MALLORY@YAHOO.COM").unwrap(), 48);
        assert_ne!(*alice.key, *bob.key);
        assert_ne!(alice.confirmation_expected, bob.confirmation_to_send);
        // The responder answering another initiator's ephemeral point.
        let other = side("ALICE123@YAHOO.COM");
        let pa = a.key.public_key();
        let bob = agree(
            Role::Responder,
            &Party { key: &b.key, id: &b.id, ephemeral: &b.eph },
            &Peer { key: &pa, id: &a.id, ephemeral: other.eph.public() },
            48,
        )
        .unwrap();
        assert_ne!(*alice.key, *bob.key);
    }

    #[test]
    fn key_lengths_out_of_range_are_refused() {
        let (a, b) = (side("A"), side("B"));
        let pb = b.key.public_key();
        let me = Party { key: &a.key, id: &a.id, ephemeral: &a.eph };
        let peer = Peer { key: &pb, id: &b.id, ephemeral: b.eph.public() };
        assert!(agree(Role::Initiator, &me, &peer, 0).is_err());
        assert!(agree(Role::Initiator, &me, &peer, MAX_KEY_LEN + 1).is_err());
    }

    #[test]
    fn kdf_is_sm3_in_counter_mode() {
        let z = b"claimlink";
        let one: [u8; 32] =
            sm3::Sm3::new().chain_update(z).chain_update(1u32.to_be_bytes()).finalize().into();
        let two: [u8; 32] =
            sm3::Sm3::new().chain_update(z).chain_update(2u32.to_be_bytes()).finalize().into();
        let k = kdf(z, 40);
        assert_eq!(&k[..32], &one);
        assert_eq!(&k[32..], &two[..8]);
    }

    #[test]
    fn x_bar_keeps_the_low_127_bits_and_sets_bit_127() {
        let p = *Sm2PrivateKey::generate(&mut rng()).public_key().0.as_affine();
        let x = p.x();
        let bar = <sm2::Scalar as sm2::elliptic_curve::PrimeField>::to_repr(&x_bar(&p));
        assert!(bar[..16].iter().all(|b| *b == 0));
        assert_eq!(bar[16], (x[16] & 0x7f) | 0x80);
        assert_eq!(&bar[17..], &x[17..]);
    }
}
