//! The two RFC 8998 cipher suites: SM4-GCM and SM4-CCM (16-byte tag) with SM3, as TLS 1.3
//! record protection (nonce = IV xor sequence number, additional data = the record header).

use claimlink_gm::sm4::{AeadMode, GCM_TAG_LEN, Sm4Aead, Sm4Key};
use rustls::crypto::cipher::{
    AeadKey, InboundOpaqueMessage, InboundPlainMessage, Iv, MessageDecrypter, MessageEncrypter, Nonce,
    OutboundOpaqueMessage, OutboundPlainMessage, PrefixedPayload, Tls13AeadAlgorithm,
    UnsupportedOperationError, make_tls13_aad,
};
use rustls::crypto::tls13::HkdfUsingHmac;
use rustls::{
    CipherSuiteCommon, ConnectionTrafficSecrets, ContentType, Error, ProtocolVersion, SupportedCipherSuite,
    Tls13CipherSuite,
};

use crate::hash::{HMAC_SM3, SM3};

/// Records one key may protect before a key update (RFC 8998 follows AES-128-GCM's bound: the
/// cipher has the same block and key size).
const CONFIDENTIALITY_LIMIT: u64 = 1 << 24;

pub(crate) static SM4_GCM_SM3: SupportedCipherSuite = SupportedCipherSuite::Tls13(&Tls13CipherSuite {
    common: CipherSuiteCommon {
        suite: crate::TLS_SM4_GCM_SM3,
        hash_provider: &SM3,
        confidentiality_limit: CONFIDENTIALITY_LIMIT,
    },
    hkdf_provider: &HkdfUsingHmac(&HMAC_SM3),
    aead_alg: &Sm4Tls13(AeadMode::Gcm),
    quic: None,
});

pub(crate) static SM4_CCM_SM3: SupportedCipherSuite = SupportedCipherSuite::Tls13(&Tls13CipherSuite {
    common: CipherSuiteCommon {
        suite: crate::TLS_SM4_CCM_SM3,
        hash_provider: &SM3,
        confidentiality_limit: CONFIDENTIALITY_LIMIT,
    },
    hkdf_provider: &HkdfUsingHmac(&HMAC_SM3),
    aead_alg: &Sm4Tls13(AeadMode::Ccm),
    quic: None,
});

struct Sm4Tls13(AeadMode);

fn key_of(key: &AeadKey) -> Sm4Key {
    // rustls derives exactly key_len() bytes.
    Sm4Key::from_slice(key.as_ref()).unwrap_or_else(|_| unreachable!("an SM4 key is 16 bytes"))
}

impl Tls13AeadAlgorithm for Sm4Tls13 {
    fn encrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageEncrypter> {
        Box::new(Sm4Records { aead: Sm4Aead::new(self.0, &key_of(&key)), iv })
    }

    fn decrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageDecrypter> {
        Box::new(Sm4Records { aead: Sm4Aead::new(self.0, &key_of(&key)), iv })
    }

    fn key_len(&self) -> usize {
        16
    }

    fn extract_keys(
        &self,
        _key: AeadKey,
        _iv: Iv,
    ) -> Result<ConnectionTrafficSecrets, UnsupportedOperationError> {
        // No kernel TLS offload knows SM4.
        Err(UnsupportedOperationError)
    }
}

struct Sm4Records {
    aead: Sm4Aead,
    iv: Iv,
}

impl MessageEncrypter for Sm4Records {
    fn encrypt(&mut self, msg: OutboundPlainMessage<'_>, seq: u64) -> Result<OutboundOpaqueMessage, Error> {
        let total_len = self.encrypted_payload_len(msg.payload.len());
        let mut payload = PrefixedPayload::with_capacity(total_len);
        payload.extend_from_chunks(&msg.payload);
        payload.extend_from_slice(&msg.typ.to_array());
        let nonce = Nonce::new(&self.iv, seq).0;
        let aad = make_tls13_aad(total_len);
        let tag = self.aead.seal_in_place(&nonce, &aad, payload.as_mut()).map_err(|_| Error::EncryptError)?;
        payload.extend_from_slice(&tag);
        Ok(OutboundOpaqueMessage::new(ContentType::ApplicationData, ProtocolVersion::TLSv1_2, payload))
    }

    fn encrypted_payload_len(&self, payload_len: usize) -> usize {
        payload_len + 1 + GCM_TAG_LEN
    }
}

impl MessageDecrypter for Sm4Records {
    fn decrypt<'a>(
        &mut self,
        mut msg: InboundOpaqueMessage<'a>,
        seq: u64,
    ) -> Result<InboundPlainMessage<'a>, Error> {
        let payload = &mut msg.payload;
        let Some(body_len) = payload.len().checked_sub(GCM_TAG_LEN) else {
            return Err(Error::DecryptError);
        };
        let nonce = Nonce::new(&self.iv, seq).0;
        let aad = make_tls13_aad(payload.len());
        let (body, tag) = payload.split_at_mut(body_len);
        let tag: [u8; GCM_TAG_LEN] = (&*tag).try_into().map_err(|_| Error::DecryptError)?;
        self.aead.open_in_place(&nonce, &aad, body, &tag).map_err(|_| Error::DecryptError)?;
        payload.truncate(body_len);
        msg.into_tls13_unpadded_message()
    }
}

/// Opens `data` as a TLS 1.3 application-data record under a fixed key with each SM suite.
pub(crate) fn open_fuzz(data: &[u8]) -> bool {
    use rustls::crypto::cipher::InboundOpaqueMessage;
    let mut any = false;
    for mode in [AeadMode::Gcm, AeadMode::Ccm] {
        let mut d = Sm4Records { aead: Sm4Aead::new(mode, &Sm4Key::new([7u8; 16])), iv: Iv::new([9u8; 12]) };
        let mut payload = data.to_vec();
        let msg =
            InboundOpaqueMessage::new(ContentType::ApplicationData, ProtocolVersion::TLSv1_2, &mut payload);
        any |= d.decrypt(msg, 0).is_ok();
    }
    any
}
