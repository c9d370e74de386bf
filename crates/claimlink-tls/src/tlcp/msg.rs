//! TLCP handshake messages (GB/T 38636-2020 section 6.4.5), decoded strictly: every length must
//! match, nothing may trail, and every list is bounded before it is read.

use super::{AlertDescription, CipherSuite, Error};

/// Handshake message types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandshakeType {
    HelloRequest = 0,
    ClientHello = 1,
    ServerHello = 2,
    Certificate = 11,
    ServerKeyExchange = 12,
    CertificateRequest = 13,
    ServerHelloDone = 14,
    CertificateVerify = 15,
    ClientKeyExchange = 16,
    Finished = 20,
}

impl HandshakeType {
    pub(crate) fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0 => Self::HelloRequest,
            1 => Self::ClientHello,
            2 => Self::ServerHello,
            11 => Self::Certificate,
            12 => Self::ServerKeyExchange,
            13 => Self::CertificateRequest,
            14 => Self::ServerHelloDone,
            15 => Self::CertificateVerify,
            16 => Self::ClientKeyExchange,
            20 => Self::Finished,
            _ => return None,
        })
    }
}

/// The protocol version in hellos.
pub(crate) const VERSION: u16 = 0x0101;
/// `named_curve` in ECParameters.
const NAMED_CURVE: u8 = 3;
/// SM2's curve in TLCP's ECParameters: curveSM2's TLS code point, as Tongsuo sends it.
pub(crate) const CURVE_SM2: u16 = 0x0029;
/// Most certificates accepted in one Certificate message.
pub(crate) const MAX_CERTIFICATES: usize = 10;
/// Longest handshake message accepted (a Certificate message of ten large certificates).
pub(crate) const MAX_MESSAGE: usize = 64 * 1024;
/// Certificate types we ask clients for: rsa_sign(1), ecdsa_sign(64) (GB/T 38636 6.4.5.5).
const CERT_TYPES: [u8; 2] = [1, 64];

fn decode(what: &str) -> Error {
    Error::alert(AlertDescription::DecodeError, format!("malformed {what}"))
}

/// A cursor over a message body.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, what }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.buf.len() < n {
            return Err(decode(self.what));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, Error> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u24(&mut self) -> Result<usize, Error> {
        let b = self.take(3)?;
        Ok(((b[0] as usize) << 16) | ((b[1] as usize) << 8) | b[2] as usize)
    }

    pub(crate) fn vec8(&mut self) -> Result<&'a [u8], Error> {
        let n = self.u8()? as usize;
        self.take(n)
    }

    pub(crate) fn vec16(&mut self) -> Result<&'a [u8], Error> {
        let n = self.u16()? as usize;
        self.take(n)
    }

    pub(crate) fn vec24(&mut self) -> Result<&'a [u8], Error> {
        let n = self.u24()?;
        self.take(n)
    }

    pub(crate) fn rest_len(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn end(self) -> Result<(), Error> {
        if self.buf.is_empty() { Ok(()) } else { Err(decode(self.what)) }
    }
}

fn put_u16(out: &mut Vec<u8>, v: usize) {
    out.extend_from_slice(&(v as u16).to_be_bytes());
}

fn put_u24(out: &mut Vec<u8>, v: usize) {
    out.extend_from_slice(&(v as u32).to_be_bytes()[1..]);
}

/// A handshake message with its 4-byte header.
pub(crate) fn handshake(typ: HandshakeType, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + body.len());
    out.push(typ as u8);
    put_u24(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

/// A ClientHello.
#[derive(Debug, Clone)]
pub(crate) struct ClientHello {
    pub(crate) random: [u8; 32],
    pub(crate) session_id: Vec<u8>,
    pub(crate) suites: Vec<u16>,
    pub(crate) server_name: Option<String>,
}

impl ClientHello {
    pub(crate) fn decode(body: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(body, "ClientHello");
        let version = r.u16()?;
        if version != VERSION {
            return Err(Error::alert(
                AlertDescription::ProtocolVersion,
                format!("ClientHello version {version:#06x} is not TLCP's 0x0101"),
            ));
        }
        let random: [u8; 32] = r.take(32)?.try_into().map_err(|_| decode("ClientHello"))?;
        let session_id = r.vec8()?;
        if session_id.len() > 32 {
            return Err(decode("ClientHello session id"));
        }
        let suites = r.vec16()?;
        if suites.is_empty() || suites.len() % 2 != 0 {
            return Err(decode("ClientHello cipher suites"));
        }
        let compression = r.vec8()?;
        if !compression.contains(&0) {
            return Err(Error::alert(
                AlertDescription::IllegalParameter,
                "ClientHello without null compression",
            ));
        }
        let mut server_name = None;
        if !r.is_empty() {
            let mut exts = Reader::new(r.vec16()?, "ClientHello extensions");
            let mut seen = Vec::new();
            while !exts.is_empty() {
                let typ = exts.u16()?;
                let data = exts.vec16()?;
                if seen.contains(&typ) {
                    return Err(Error::alert(
                        AlertDescription::IllegalParameter,
                        "duplicate ClientHello extension",
                    ));
                }
                seen.push(typ);
                if typ == 0 {
                    server_name = parse_server_name(data)?;
                }
            }
        }
        r.end()?;
        Ok(Self {
            random,
            session_id: session_id.to_vec(),
            suites: suites.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect(),
            server_name,
        })
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(128);
        put_u16(&mut b, VERSION as usize);
        b.extend_from_slice(&self.random);
        b.push(self.session_id.len() as u8);
        b.extend_from_slice(&self.session_id);
        put_u16(&mut b, self.suites.len() * 2);
        for s in &self.suites {
            put_u16(&mut b, *s as usize);
        }
        b.extend_from_slice(&[1, 0]);
        if let Some(name) = &self.server_name {
            // server_name: list<u16> of (host_name(0), u16 name).
            let mut sni = Vec::new();
            put_u16(&mut sni, name.len() + 3);
            sni.push(0);
            put_u16(&mut sni, name.len());
            sni.extend_from_slice(name.as_bytes());
            let mut exts = Vec::new();
            put_u16(&mut exts, 0);
            put_u16(&mut exts, sni.len());
            exts.extend_from_slice(&sni);
            put_u16(&mut b, exts.len());
            b.extend_from_slice(&exts);
        }
        handshake(HandshakeType::ClientHello, &b)
    }
}

/// The host name of a server_name extension (RFC 6066 section 3), if it holds one.
fn parse_server_name(data: &[u8]) -> Result<Option<String>, Error> {
    let mut r = Reader::new(data, "server_name extension");
    let mut list = Reader::new(r.vec16()?, "server_name extension");
    r.end()?;
    let mut name = None;
    while !list.is_empty() {
        let typ = list.u8()?;
        let value = list.vec16()?;
        if typ == 0 && name.is_none() {
            let host = std::str::from_utf8(value).map_err(|_| decode("server name"))?;
            if host.is_empty() || host.len() > 253 || !host.bytes().all(|c| c.is_ascii_graphic()) {
                return Err(decode("server name"));
            }
            name = Some(host.to_ascii_lowercase());
        }
    }
    Ok(name)
}

/// A ServerHello.
#[derive(Debug, Clone)]
pub(crate) struct ServerHello {
    pub(crate) random: [u8; 32],
    pub(crate) session_id: Vec<u8>,
    pub(crate) suite: u16,
}

impl ServerHello {
    pub(crate) fn decode(body: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(body, "ServerHello");
        let version = r.u16()?;
        if version != VERSION {
            return Err(Error::alert(AlertDescription::ProtocolVersion, "ServerHello version is not TLCP's"));
        }
        let random: [u8; 32] = r.take(32)?.try_into().map_err(|_| decode("ServerHello"))?;
        let session_id = r.vec8()?;
        if session_id.len() > 32 {
            return Err(decode("ServerHello session id"));
        }
        let suite = r.u16()?;
        if r.u8()? != 0 {
            return Err(Error::alert(AlertDescription::IllegalParameter, "ServerHello chose compression"));
        }
        if !r.is_empty() {
            // Extensions we did not ask for are not allowed (we send only server_name, which a
            // server acknowledges with an empty one).
            let mut exts = Reader::new(r.vec16()?, "ServerHello extensions");
            while !exts.is_empty() {
                let typ = exts.u16()?;
                let data = exts.vec16()?;
                if typ != 0 || !data.is_empty() {
                    return Err(Error::alert(
                        AlertDescription::UnsupportedExtension,
                        "unsolicited ServerHello extension",
                    ));
                }
            }
        }
        r.end()?;
        Ok(Self { random, session_id: session_id.to_vec(), suite })
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(72);
        put_u16(&mut b, VERSION as usize);
        b.extend_from_slice(&self.random);
        b.push(self.session_id.len() as u8);
        b.extend_from_slice(&self.session_id);
        put_u16(&mut b, self.suite as usize);
        b.push(0);
        handshake(HandshakeType::ServerHello, &b)
    }
}

/// A Certificate message: the DER certificates in order.
pub(crate) fn decode_certificates(body: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
    let mut r = Reader::new(body, "Certificate");
    let mut list = Reader::new(r.vec24()?, "Certificate");
    r.end()?;
    let mut certs = Vec::new();
    while !list.is_empty() {
        let der = list.vec24()?;
        if der.is_empty() {
            return Err(decode("Certificate"));
        }
        if certs.len() == MAX_CERTIFICATES {
            return Err(Error::alert(AlertDescription::BadCertificate, "more than 10 certificates"));
        }
        certs.push(der.to_vec());
    }
    Ok(certs)
}

pub(crate) fn encode_certificates<'a>(certs: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut list = Vec::new();
    for c in certs {
        list.extend_from_slice(&asn1_cert(c));
    }
    let mut b = Vec::with_capacity(list.len() + 3);
    put_u24(&mut b, list.len());
    b.extend_from_slice(&list);
    handshake(HandshakeType::Certificate, &b)
}

/// A certificate as `opaque ASN.1Cert<1..2^24-1>` (what an ECC ServerKeyExchange signs).
pub(crate) fn asn1_cert(der: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 + der.len());
    put_u24(&mut out, der.len());
    out.extend_from_slice(der);
    out
}

/// ECDHE parameters: `named_curve`, SM2's curve and the point (ServerKeyExchange and, for
/// ECDHE suites, ClientKeyExchange).
pub(crate) fn encode_ec_params(point: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + point.len());
    b.push(NAMED_CURVE);
    put_u16(&mut b, CURVE_SM2 as usize);
    b.push(point.len() as u8);
    b.extend_from_slice(point);
    b
}

/// Reads ECDHE parameters, returning the point.
pub(crate) fn decode_ec_params<'a>(r: &mut Reader<'a>) -> Result<&'a [u8], Error> {
    if r.u8()? != NAMED_CURVE {
        return Err(Error::alert(AlertDescription::IllegalParameter, "ECParameters is not a named curve"));
    }
    let curve = r.u16()?;
    if curve != CURVE_SM2 {
        return Err(Error::alert(
            AlertDescription::IllegalParameter,
            format!("curve {curve:#06x} is not SM2"),
        ));
    }
    let point = r.vec8()?;
    if point.is_empty() {
        return Err(decode("EC point"));
    }
    Ok(point)
}

/// CertificateRequest: the certificate types, and no CA names.
pub(crate) fn encode_certificate_request() -> Vec<u8> {
    let mut b = vec![CERT_TYPES.len() as u8];
    b.extend_from_slice(&CERT_TYPES);
    put_u16(&mut b, 0);
    handshake(HandshakeType::CertificateRequest, &b)
}

pub(crate) fn decode_certificate_request(body: &[u8]) -> Result<(), Error> {
    let mut r = Reader::new(body, "CertificateRequest");
    if r.vec8()?.is_empty() {
        return Err(decode("CertificateRequest"));
    }
    let mut names = Reader::new(r.vec16()?, "CertificateRequest");
    while !names.is_empty() {
        names.vec16()?;
    }
    r.end()
}

/// A message that is a single u16-prefixed opaque value (a signature, an encrypted pre-master
/// secret).
pub(crate) fn encode_opaque16(typ: HandshakeType, value: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(2 + value.len());
    put_u16(&mut b, value.len());
    b.extend_from_slice(value);
    handshake(typ, &b)
}

pub(crate) fn decode_opaque16<'a>(body: &'a [u8], what: &'static str) -> Result<&'a [u8], Error> {
    let mut r = Reader::new(body, what);
    let v = r.vec16()?;
    r.end()?;
    if v.is_empty() {
        return Err(decode(what));
    }
    Ok(v)
}

/// The cipher suites we implement, from their code points in the peer's order.
pub(crate) fn known_suites(suites: &[u16]) -> Vec<CipherSuite> {
    suites.iter().filter_map(|s| CipherSuite::from_u16(*s)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_hello_round_trips_with_and_without_a_server_name() {
        for name in [None, Some("acme.iot.example".to_owned())] {
            let hello = ClientHello {
                random: [7; 32],
                session_id: vec![1; 32],
                suites: vec![0xe053, 0xe013],
                server_name: name.clone(),
            };
            let enc = hello.encode();
            assert_eq!(enc[0], 1);
            let back = ClientHello::decode(&enc[4..]).ok();
            assert_eq!(back.as_ref().map(|h| h.suites.clone()), Some(vec![0xe053, 0xe013]));
            assert_eq!(back.and_then(|h| h.server_name), name);
        }
    }

    #[test]
    fn malformed_hellos_are_decode_errors() {
        let hello = ClientHello {
            random: [7; 32],
            session_id: vec![],
            suites: vec![0xe053],
            server_name: Some("a.example".into()),
        };
        let enc = hello.encode();
        let body = &enc[4..];
        // Every cut fails except the one right before the extensions (a hello without them).
        let before_extensions = 2 + 32 + 1 + 2 + 2 + 2;
        for cut in (0..body.len()).filter(|c| *c != before_extensions) {
            assert!(ClientHello::decode(&body[..cut]).is_err(), "cut at {cut}");
        }
        assert!(ClientHello::decode(&body[..before_extensions]).is_ok());
        let mut trailing = body.to_vec();
        trailing.push(0);
        assert!(ClientHello::decode(&trailing).is_err());
        let mut tls12 = body.to_vec();
        tls12[0..2].copy_from_slice(&[3, 3]);
        assert_eq!(
            ClientHello::decode(&tls12).err().map(|e| e.alert),
            Some(AlertDescription::ProtocolVersion)
        );
    }

    #[test]
    fn certificate_lists_are_bounded_and_exact() {
        let der = [0x30u8; 10];
        let enc = encode_certificates([&der[..], &der[..]]);
        assert_eq!(decode_certificates(&enc[4..]).ok().map(|c| c.len()), Some(2));
        let eleven = encode_certificates(std::iter::repeat_n(&der[..], 11));
        assert!(decode_certificates(&eleven[4..]).is_err());
        assert!(decode_certificates(&enc[4..enc.len() - 1]).is_err());
    }

    #[test]
    fn ec_params_name_sm2_only() {
        let p = encode_ec_params(&[4; 65]);
        assert_eq!(decode_ec_params(&mut Reader::new(&p, "x")).ok().map(<[u8]>::len), Some(65));
        let mut other = p.clone();
        other[2] = 0x17; // secp256r1
        assert!(decode_ec_params(&mut Reader::new(&other, "x")).is_err());
    }
}
