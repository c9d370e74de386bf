//! `curveSM2` (0x0029): ephemeral ECDH on sm2p256v1. Key shares are uncompressed points; the
//! shared secret is the x coordinate.

use claimlink_gm::Sm2PrivateKey;
use rustls::crypto::{ActiveKeyExchange, SharedSecret, SupportedKxGroup};
use rustls::{Error, NamedGroup, PeerMisbehaved};

/// The `curveSM2` key exchange group.
#[derive(Debug)]
pub struct CurveSm2;

/// The group, for a provider's `kx_groups`.
pub static CURVE_SM2: CurveSm2 = CurveSm2;

impl SupportedKxGroup for CurveSm2 {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, Error> {
        let mut rng = rand_core::UnwrapErr(getrandom::SysRng);
        let secret = Sm2PrivateKey::generate(&mut rng);
        let public = secret.public_key().to_sec1_uncompressed();
        Ok(Box::new(Sm2KeyExchange { secret, public }))
    }

    fn name(&self) -> NamedGroup {
        crate::NAMED_GROUP_CURVE_SM2
    }

    fn usable_for_version(&self, version: rustls::ProtocolVersion) -> bool {
        // RFC 8998 is TLS 1.3 only.
        version == rustls::ProtocolVersion::TLSv1_3
    }
}

struct Sm2KeyExchange {
    secret: Sm2PrivateKey,
    public: Vec<u8>,
}

impl ActiveKeyExchange for Sm2KeyExchange {
    fn complete(self: Box<Self>, peer_pub_key: &[u8]) -> Result<SharedSecret, Error> {
        // A share off the curve, the identity or a compressed point: an illegal parameter.
        let shared = self
            .secret
            .diffie_hellman(peer_pub_key)
            .map_err(|_| Error::from(PeerMisbehaved::InvalidKeyShare))?;
        Ok(SharedSecret::from(&shared[..]))
    }

    fn pub_key(&self) -> &[u8] {
        &self.public
    }

    fn group(&self) -> NamedGroup {
        crate::NAMED_GROUP_CURVE_SM2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_agree_and_bad_shares_are_refused() {
        let a = CURVE_SM2.start().unwrap();
        let b = CURVE_SM2.start().unwrap();
        let (a_pub, b_pub) = (a.pub_key().to_vec(), b.pub_key().to_vec());
        assert_eq!((a_pub.len(), a_pub[0]), (65, 0x04));
        let s1 = a.complete(&b_pub).unwrap();
        let s2 = b.complete(&a_pub).unwrap();
        assert_eq!(s1.secret_bytes(), s2.secret_bytes());
        assert_eq!(s1.secret_bytes().len(), 32);
        let mut off_curve = b_pub.clone();
        off_curve[64] ^= 1;
        let compressed = [&[0x02][..], &b_pub[1..33]].concat();
        for bad in [&off_curve[..], &compressed, &[0x00], &[], &b_pub[..64]] {
            let kx = CURVE_SM2.start().unwrap();
            assert!(kx.complete(bad).is_err(), "{bad:02x?}");
        }
    }
}
