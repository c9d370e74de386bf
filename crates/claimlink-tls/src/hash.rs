//! SM3 and HMAC-SM3 for rustls's transcript hash and HKDF.

use digest::{Digest, KeyInit, Mac};
use rustls::crypto::hash::{self, HashAlgorithm};
use rustls::crypto::hmac;

/// SM3 as rustls's transcript hash.
pub(crate) struct Sm3;

pub(crate) static SM3: Sm3 = Sm3;

/// SM3 has no TLS 1.2 `HashAlgorithm` code point; rustls uses it in TLS 1.2 only.
const SM3_ALGORITHM: HashAlgorithm = HashAlgorithm::Unknown(0x07);

impl hash::Hash for Sm3 {
    fn start(&self) -> Box<dyn hash::Context> {
        Box::new(Sm3Context(sm3::Sm3::new()))
    }

    fn hash(&self, data: &[u8]) -> hash::Output {
        hash::Output::new(&sm3::Sm3::digest(data))
    }

    fn output_len(&self) -> usize {
        32
    }

    fn algorithm(&self) -> HashAlgorithm {
        SM3_ALGORITHM
    }
}

struct Sm3Context(sm3::Sm3);

impl hash::Context for Sm3Context {
    fn fork_finish(&self) -> hash::Output {
        hash::Output::new(&self.0.clone().finalize())
    }

    fn fork(&self) -> Box<dyn hash::Context> {
        Box::new(Sm3Context(self.0.clone()))
    }

    fn finish(self: Box<Self>) -> hash::Output {
        hash::Output::new(&self.0.finalize())
    }

    fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
}

/// HMAC-SM3, for HKDF-SM3 (RFC 8998's key schedule).
pub(crate) struct HmacSm3;

pub(crate) static HMAC_SM3: HmacSm3 = HmacSm3;

type HmacSm3Impl = ::hmac::Hmac<sm3::Sm3>;

impl hmac::Hmac for HmacSm3 {
    fn with_key(&self, key: &[u8]) -> Box<dyn hmac::Key> {
        // HMAC takes keys of any length (longer ones are hashed first).
        Box::new(HmacSm3Key(<HmacSm3Impl as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!())))
    }

    fn hash_output_len(&self) -> usize {
        32
    }
}

struct HmacSm3Key(HmacSm3Impl);

impl hmac::Key for HmacSm3Key {
    fn sign_concat(&self, first: &[u8], middle: &[&[u8]], last: &[u8]) -> hmac::Tag {
        let mut mac = self.0.clone();
        mac.update(first);
        for m in middle {
            mac.update(m);
        }
        mac.update(last);
        hmac::Tag::new(&mac.finalize().into_bytes())
    }

    fn tag_len(&self) -> usize {
        32
    }
}

#[cfg(test)]
mod tests {
    use rustls::crypto::hash::Hash as _;
    use rustls::crypto::hmac::Hmac as _;

    use super::*;

    #[test]
    fn sm3_and_hmac_sm3_match_the_standard_and_claimlink_gm() {
        let abc = SM3.hash(b"abc");
        assert_eq!(abc.as_ref(), claimlink_gm::sm3::sm3(b"abc"), "SM3(abc) = 66c7f0f4... (GB/T 32905 A.1)");
        let mut ctx = SM3.start();
        ctx.update(b"ab");
        let fork = ctx.fork_finish();
        ctx.update(b"c");
        assert_eq!(ctx.finish().as_ref(), abc.as_ref());
        assert_eq!(fork.as_ref(), claimlink_gm::sm3::sm3(b"ab"));
        let key = HMAC_SM3.with_key(b"key");
        let tag = key.sign_concat(b"mes", &[b"sa"], b"ge");
        assert_eq!(tag.as_ref(), claimlink_gm::sm3::hmac_sm3(b"key", b"message"));
    }
}
