//! One TLCP connection, client or server, as a state machine over bytes: [`Connection::read_tls`]
//! takes what the peer sent, [`Connection::take_tls`] gives what to send it, and application data
//! goes through [`Connection::write_plaintext`] / [`Connection::read_plaintext`].

use std::sync::Arc;
use std::time::Instant;

use claimlink_gm::sm2::kex::{self, Ephemeral, Party, Peer, Role};
use claimlink_gm::{Sm2CiphertextFormat, Sm2PublicKey, sm3::Digest};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use zeroize::Zeroizing;

use super::msg::{self, ClientHello, HandshakeType, Reader, ServerHello};
use super::prf::prf;
use super::record::{self, ContentType, Direction, Protection};
use super::{
    AlertDescription, CertInfo, CipherSuite, ClientConfig, Error, ServerConfig, Session, gm_id, verify_sm2,
};

/// Consecutive empty records accepted before the peer is taken for a flood.
const MAX_EMPTY_RECORDS: u32 = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    // Server.
    ExpectClientHello,
    AwaitConfig,
    ExpectClientCertificate,
    ExpectClientKeyExchange,
    ExpectCertificateVerify,
    // Client.
    ExpectServerHello,
    ExpectServerCertificate,
    ExpectServerKeyExchange,
    ExpectCertificateRequestOrDone,
    ExpectServerHelloDone,
    // Both.
    ExpectChangeCipherSpec,
    ExpectFinished,
    Established,
    Closed,
}

enum Side {
    Server { config: Option<Arc<ServerConfig>>, hello: Option<ClientHello> },
    Client { config: Arc<ClientConfig>, name: String },
}

/// One TLCP connection.
pub struct Connection {
    side: Side,
    state: State,
    read: Direction,
    pub(super) write: Direction,
    next_read: Option<Direction>,
    next_write: Option<Direction>,
    incoming: Vec<u8>,
    handshake: Vec<u8>,
    outgoing: Vec<u8>,
    plaintext: Vec<u8>,
    plaintext_read: usize,
    transcript: claimlink_gm::Sm3,
    client_random: [u8; 32],
    server_random: [u8; 32],
    session_id: Vec<u8>,
    suite: Option<CipherSuite>,
    master: Zeroizing<[u8; 48]>,
    resumed: bool,
    /// The server's ephemeral key (ECDHE).
    ephemeral: Option<Ephemeral>,
    /// The server's ephemeral point, as the client received it.
    peer_ephemeral: Option<Sm2PublicKey>,
    /// The peer's signing certificate and chain (its encryption certificate apart).
    peer_certificates: Vec<CertificateDer<'static>>,
    peer_encryption: Option<CertificateDer<'static>>,
    peer_sign_key: Option<Sm2PublicKey>,
    peer_enc_key: Option<Sm2PublicKey>,
    /// Whether the server asked for (the client: was asked for) a client certificate.
    client_auth: bool,
    sent_certificate: bool,
    empty_records: u32,
    peer_closed: bool,
    error: Option<Error>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("server", &matches!(self.side, Side::Server { .. }))
            .field("state", &self.state)
            .field("suite", &self.suite)
            .field("resumed", &self.resumed)
            .finish_non_exhaustive()
    }
}

fn random32() -> Result<[u8; 32], Error> {
    let mut r = [0u8; 32];
    getrandom::fill(&mut r).map_err(|_| Error::internal("no randomness"))?;
    Ok(r)
}

fn rng() -> rand_core::UnwrapErr<getrandom::SysRng> {
    rand_core::UnwrapErr(getrandom::SysRng)
}

fn unexpected(what: &str) -> Error {
    Error::alert(AlertDescription::UnexpectedMessage, format!("unexpected {what}"))
}

impl Connection {
    fn new(side: Side, state: State) -> Self {
        Self {
            side,
            state,
            read: Direction::default(),
            write: Direction::default(),
            next_read: None,
            next_write: None,
            incoming: Vec::new(),
            handshake: Vec::new(),
            outgoing: Vec::new(),
            plaintext: Vec::new(),
            plaintext_read: 0,
            transcript: claimlink_gm::Sm3::new(),
            client_random: [0; 32],
            server_random: [0; 32],
            session_id: Vec::new(),
            suite: None,
            master: Zeroizing::new([0; 48]),
            resumed: false,
            ephemeral: None,
            peer_ephemeral: None,
            peer_certificates: Vec::new(),
            peer_encryption: None,
            peer_sign_key: None,
            peer_enc_key: None,
            client_auth: false,
            sent_certificate: false,
            empty_records: 0,
            peer_closed: false,
            error: None,
        }
    }

    /// A server connection that reads the ClientHello first; once [`Self::client_hello`] is
    /// `Some`, choose the configuration (by the server name) and call [`Self::set_config`].
    pub fn accept() -> Self {
        Self::new(Side::Server { config: None, hello: None }, State::ExpectClientHello)
    }

    /// A server connection with its configuration known.
    pub fn server(config: Arc<ServerConfig>) -> Self {
        Self::new(Side::Server { config: Some(config), hello: None }, State::ExpectClientHello)
    }

    /// A client connection to `name`: its ClientHello is ready in [`Self::take_tls`]. A DNS
    /// name is sent as SNI; both certificates are verified for it.
    pub fn client(config: Arc<ClientConfig>, name: &ServerName<'_>) -> Result<Self, Error> {
        let sni = match name {
            ServerName::DnsName(d) => Some(d.as_ref().to_ascii_lowercase()),
            _ => None,
        };
        let key = name.to_str().into_owned();
        let mut c =
            Self::new(Side::Client { config: config.clone(), name: key.clone() }, State::ExpectServerHello);
        c.client_random = random32()?;
        let resume = config.sessions.get(&key);
        if let Some(s) = &resume {
            c.session_id = s.id.to_vec();
        }
        let mut suites: Vec<u16> = config.suites.iter().map(|s| s.code()).collect();
        if let Some(s) = &resume
            && !suites.contains(&s.suite.code())
        {
            suites.push(s.suite.code());
        }
        let hello = ClientHello {
            random: c.client_random,
            session_id: c.session_id.clone(),
            suites,
            server_name: sni,
        };
        c.send_handshake(&hello.encode())?;
        Ok(c)
    }

    /// The ClientHello a server connection read (server name, suites offered).
    pub fn client_hello(&self) -> Option<ClientHelloInfo<'_>> {
        match &self.side {
            Side::Server { hello: Some(h), .. } => Some(ClientHelloInfo { hello: h }),
            _ => None,
        }
    }

    /// Gives a server connection made with [`Self::accept`] its configuration and goes on.
    pub fn set_config(&mut self, config: Arc<ServerConfig>) -> Result<(), Error> {
        if self.state != State::AwaitConfig {
            return Err(Error::internal("set_config outside of AwaitConfig"));
        }
        if let Side::Server { config: c, .. } = &mut self.side {
            *c = Some(config);
        }
        let r = self.server_respond();
        self.fail_on(r)
    }

    /// Whether a server connection made with [`Self::accept`] waits for [`Self::set_config`].
    pub fn wants_config(&self) -> bool {
        self.state == State::AwaitConfig
    }

    /// Whether the handshake is still running.
    pub fn is_handshaking(&self) -> bool {
        !matches!(self.state, State::Established | State::Closed)
    }

    /// Whether the connection has ended (an alert either way, or close_notify received).
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed || self.peer_closed
    }

    /// Whether the peer sent close_notify.
    pub fn peer_has_closed(&self) -> bool {
        self.peer_closed
    }

    /// The error the connection ended with.
    pub fn error(&self) -> Option<&Error> {
        self.error.as_ref()
    }

    /// The negotiated suite.
    pub fn cipher_suite(&self) -> Option<CipherSuite> {
        self.suite
    }

    /// Whether the session was resumed (abbreviated handshake).
    pub fn is_resumed(&self) -> bool {
        self.resumed
    }

    /// The server name the client sent (server side) or asked for (client side).
    pub fn server_name(&self) -> Option<&str> {
        match &self.side {
            Side::Server { hello, .. } => hello.as_ref().and_then(|h| h.server_name.as_deref()),
            Side::Client { name, .. } => Some(name),
        }
    }

    /// The peer's signing certificate and its chain, leaf first (empty when the client sent
    /// none). Its encryption certificate is [`Self::peer_encryption_certificate`].
    pub fn peer_certificates(&self) -> &[CertificateDer<'static>] {
        &self.peer_certificates
    }

    /// The peer's encryption certificate.
    pub fn peer_encryption_certificate(&self) -> Option<&CertificateDer<'static>> {
        self.peer_encryption.as_ref()
    }

    /// Whether [`Self::take_tls`] has bytes.
    pub fn wants_write(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// The bytes to send to the peer now.
    pub fn take_tls(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.outgoing)
    }

    /// Takes bytes from the peer and processes every whole record in them. On error the
    /// connection is closed and the alert to send is in [`Self::take_tls`].
    pub fn read_tls(&mut self, data: &[u8]) -> Result<(), Error> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        self.incoming.extend_from_slice(data);
        let r = self.process_records();
        self.fail_on(r)
    }

    /// Copies decrypted application data into `buf`; returns how many bytes.
    pub fn read_plaintext(&mut self, buf: &mut [u8]) -> usize {
        let available = &self.plaintext[self.plaintext_read..];
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.plaintext_read += n;
        if self.plaintext_read == self.plaintext.len() {
            self.plaintext.clear();
            self.plaintext_read = 0;
        }
        n
    }

    /// Bytes of decrypted application data waiting.
    pub fn plaintext_available(&self) -> usize {
        self.plaintext.len() - self.plaintext_read
    }

    /// Encrypts `data` as application data records (after the handshake).
    pub fn write_plaintext(&mut self, data: &[u8]) -> Result<(), Error> {
        if self.state != State::Established {
            return Err(self.error.clone().unwrap_or_else(|| Error::internal("not established")));
        }
        for chunk in data.chunks(record::MAX_FRAGMENT) {
            self.write.seal(ContentType::ApplicationData, chunk, &mut self.outgoing)?;
        }
        Ok(())
    }

    /// Queues close_notify; nothing more can be written.
    pub fn send_close_notify(&mut self) {
        if self.state != State::Closed {
            let _ = self.write.seal(ContentType::Alert, &[1, 0], &mut self.outgoing);
            self.state = State::Closed;
        }
    }

    fn fail_on<T>(&mut self, r: Result<T, Error>) -> Result<T, Error> {
        if let Err(e) = &r
            && self.error.is_none()
        {
            if !e.received && self.state != State::Closed {
                let _ = self.write.seal(ContentType::Alert, &[2, e.alert.code()], &mut self.outgoing);
            }
            self.error = Some(e.clone());
            self.state = State::Closed;
            // Nothing of a failed session may be resumed.
            if let Side::Server { config: Some(c), .. } = &self.side
                && let Ok(id) = <[u8; 32]>::try_from(&self.session_id[..])
            {
                c.sessions.remove(&id);
            }
        }
        r
    }

    fn process_records(&mut self) -> Result<(), Error> {
        let mut offset = 0;
        let result = loop {
            if self.state == State::Closed || self.state == State::AwaitConfig {
                break Ok(());
            }
            let rest = &self.incoming[offset..];
            if rest.len() < record::HEADER {
                break Ok(());
            }
            let header: [u8; record::HEADER] =
                rest[..record::HEADER].try_into().unwrap_or_else(|_| unreachable!("5 bytes"));
            let (typ, len) = match record::parse_header(&header) {
                Ok(h) => h,
                Err(e) => break Err(e),
            };
            if rest.len() < record::HEADER + len {
                break Ok(());
            }
            let mut fragment = rest[record::HEADER..record::HEADER + len].to_vec();
            offset += record::HEADER + len;
            if let Err(e) = self.read.open(typ, &mut fragment) {
                break Err(e);
            }
            if let Err(e) = self.process_record(typ, fragment) {
                break Err(e);
            }
        };
        self.incoming.drain(..offset);
        result
    }

    fn process_record(&mut self, typ: u8, fragment: Vec<u8>) -> Result<(), Error> {
        if fragment.is_empty() {
            self.empty_records += 1;
            if self.empty_records > MAX_EMPTY_RECORDS {
                return Err(unexpected("flood of empty records"));
            }
            if typ != ContentType::ApplicationData as u8 {
                return Err(Error::alert(AlertDescription::DecodeError, "empty non-application record"));
            }
        } else {
            self.empty_records = 0;
        }
        match ContentType::from_u8(typ) {
            Some(ContentType::ChangeCipherSpec) => {
                if fragment != [1] {
                    return Err(Error::alert(AlertDescription::DecodeError, "malformed ChangeCipherSpec"));
                }
                if self.state != State::ExpectChangeCipherSpec || !self.handshake.is_empty() {
                    return Err(unexpected("ChangeCipherSpec"));
                }
                self.read = self.next_read.take().ok_or_else(|| Error::internal("no pending read keys"))?;
                self.state = State::ExpectFinished;
                Ok(())
            }
            Some(ContentType::Alert) => {
                if fragment.len() != 2 {
                    return Err(Error::alert(AlertDescription::DecodeError, "malformed alert"));
                }
                let alert = AlertDescription::from_code(fragment[1]);
                if alert == AlertDescription::CloseNotify {
                    self.peer_closed = true;
                    if self.is_handshaking() {
                        return Err(Error {
                            alert,
                            received: true,
                            reason: "peer closed during the handshake".into(),
                        });
                    }
                    return Ok(());
                }
                if fragment[0] == 1 && alert == AlertDescription::NoRenegotiation {
                    return Ok(());
                }
                Err(Error { alert, received: true, reason: format!("peer sent alert {}", alert.code()) })
            }
            Some(ContentType::Handshake) => {
                // Bounded by process_handshake: what stays buffered is part of one message of
                // at most 64 KiB (its header is checked as soon as it is there).
                self.handshake.extend_from_slice(&fragment);
                self.process_handshake()
            }
            Some(ContentType::ApplicationData) => {
                if self.state != State::Established {
                    return Err(unexpected("application data during the handshake"));
                }
                if self.peer_closed {
                    return Err(unexpected("application data after close_notify"));
                }
                self.plaintext.extend_from_slice(&fragment);
                Ok(())
            }
            None => Err(unexpected("record type")),
        }
    }

    fn process_handshake(&mut self) -> Result<(), Error> {
        loop {
            if self.handshake.len() < 4 {
                return Ok(());
            }
            let len = ((self.handshake[1] as usize) << 16)
                | ((self.handshake[2] as usize) << 8)
                | self.handshake[3] as usize;
            if len > msg::MAX_MESSAGE {
                return Err(Error::alert(
                    AlertDescription::HandshakeFailure,
                    "handshake message over 64 KiB",
                ));
            }
            if self.handshake.len() < 4 + len {
                return Ok(());
            }
            let message: Vec<u8> = self.handshake.drain(..4 + len).collect();
            let typ =
                HandshakeType::from_u8(message[0]).ok_or_else(|| unexpected("handshake message type"))?;
            self.handle(typ, &message)?;
            if self.state == State::AwaitConfig {
                return Ok(());
            }
        }
    }

    fn add_transcript(&mut self, message: &[u8]) {
        self.transcript.update(message);
    }

    fn transcript_hash(&self) -> [u8; 32] {
        self.transcript.clone().finalize().into()
    }

    fn send_handshake(&mut self, message: &[u8]) -> Result<(), Error> {
        self.add_transcript(message);
        for chunk in message.chunks(record::MAX_FRAGMENT) {
            self.write.seal(ContentType::Handshake, chunk, &mut self.outgoing)?;
        }
        Ok(())
    }

    fn send_change_cipher_spec(&mut self) -> Result<(), Error> {
        self.write.seal(ContentType::ChangeCipherSpec, &[1], &mut self.outgoing)?;
        self.write = self.next_write.take().ok_or_else(|| Error::internal("no pending write keys"))?;
        Ok(())
    }

    fn is_server(&self) -> bool {
        matches!(self.side, Side::Server { .. })
    }

    fn finished(&self, server: bool) -> [u8; 12] {
        let label: &[u8] = if server { b"server finished" } else { b"client finished" };
        let mut out = [0u8; 12];
        prf(&self.master[..], label, &self.transcript_hash(), &mut out);
        out
    }

    fn send_finished(&mut self) -> Result<(), Error> {
        let verify = self.finished(self.is_server());
        self.send_handshake(&msg::handshake(HandshakeType::Finished, &verify))
    }

    /// Derives both directions' keys from the master secret; they take effect at the
    /// ChangeCipherSpec of each direction.
    fn derive_keys(&mut self) {
        let suite = self.suite.unwrap_or(CipherSuite::EccSm4GcmSm3);
        let mut seed = [0u8; 64];
        seed[..32].copy_from_slice(&self.server_random);
        seed[32..].copy_from_slice(&self.client_random);
        let (client, server) = if suite.is_gcm() {
            let mut kb = Zeroizing::new([0u8; 40]);
            prf(&self.master[..], b"key expansion", &seed, &mut kb[..]);
            (Protection::gcm(&kb[0..16], &kb[32..36]), Protection::gcm(&kb[16..32], &kb[36..40]))
        } else {
            // MAC keys, encryption keys, then IVs (unused: every record carries its own).
            let mut kb = Zeroizing::new([0u8; 128]);
            prf(&self.master[..], b"key expansion", &seed, &mut kb[..]);
            (Protection::cbc(&kb[0..32], &kb[64..80]), Protection::cbc(&kb[32..64], &kb[80..96]))
        };
        let (mine, theirs) = if self.is_server() { (server, client) } else { (client, server) };
        self.next_write = Some(Direction::new(mine));
        self.next_read = Some(Direction::new(theirs));
    }

    fn set_master(&mut self, pre_master: &[u8]) {
        let mut seed = [0u8; 64];
        seed[..32].copy_from_slice(&self.client_random);
        seed[32..].copy_from_slice(&self.server_random);
        prf(pre_master, b"master secret", &seed, &mut self.master[..]);
        self.derive_keys();
    }

    fn handle(&mut self, typ: HandshakeType, message: &[u8]) -> Result<(), Error> {
        let body = &message[4..];
        match (self.state, typ) {
            // Renegotiation (a client's new ClientHello, a server's HelloRequest) is refused: a
            // warning, and the connection goes on.
            (State::Established, HandshakeType::ClientHello | HandshakeType::HelloRequest)
                if self.is_server() == (typ == HandshakeType::ClientHello) =>
            {
                self.write.seal(
                    ContentType::Alert,
                    &[1, AlertDescription::NoRenegotiation.code()],
                    &mut self.outgoing,
                )?;
                Ok(())
            }
            (State::ExpectClientHello, HandshakeType::ClientHello) => {
                let hello = ClientHello::decode(body)?;
                self.add_transcript(message);
                self.client_random = hello.random;
                if let Side::Server { hello: h, config } = &mut self.side {
                    *h = Some(hello);
                    if config.is_none() {
                        self.state = State::AwaitConfig;
                        return Ok(());
                    }
                }
                self.server_respond()
            }
            (State::ExpectServerHello, HandshakeType::ServerHello) => self.client_on_server_hello(message),
            (State::ExpectServerCertificate, HandshakeType::Certificate) => {
                self.client_on_certificate(message)
            }
            (State::ExpectServerKeyExchange, HandshakeType::ServerKeyExchange) => {
                self.client_on_key_exchange(message)
            }
            (State::ExpectCertificateRequestOrDone, HandshakeType::CertificateRequest) => {
                msg::decode_certificate_request(body)?;
                self.add_transcript(message);
                self.client_auth = true;
                self.state = State::ExpectServerHelloDone;
                Ok(())
            }
            (
                State::ExpectCertificateRequestOrDone | State::ExpectServerHelloDone,
                HandshakeType::ServerHelloDone,
            ) => {
                if !body.is_empty() {
                    return Err(Error::alert(AlertDescription::DecodeError, "malformed ServerHelloDone"));
                }
                self.add_transcript(message);
                self.client_second_flight()
            }
            (State::ExpectClientCertificate, HandshakeType::Certificate) => {
                self.server_on_certificate(message)
            }
            (State::ExpectClientKeyExchange, HandshakeType::ClientKeyExchange) => {
                self.server_on_key_exchange(message)
            }
            (State::ExpectCertificateVerify, HandshakeType::CertificateVerify) => {
                let sig = msg::decode_opaque16(body, "CertificateVerify")?;
                let hash = self.transcript_hash();
                let key = self.peer_sign_key.as_ref().ok_or_else(|| Error::internal("no client key"))?;
                verify_sm2(key, &hash, sig)?;
                self.add_transcript(message);
                self.state = State::ExpectChangeCipherSpec;
                Ok(())
            }
            (State::ExpectFinished, HandshakeType::Finished) => self.on_finished(message),
            (_, typ) => Err(unexpected(&format!("{typ:?}"))),
        }
    }

    fn on_finished(&mut self, message: &[u8]) -> Result<(), Error> {
        let server = self.is_server();
        let expected = self.finished(!server);
        let body = &message[4..];
        // Constant-time comparison: the verify data is a MAC.
        let diff = body.len() ^ 12
            | expected
                .iter()
                .zip(body.iter().chain(std::iter::repeat(&0)))
                .fold(0usize, |d, (a, b)| d | (a ^ b) as usize);
        if diff != 0 {
            return Err(Error::alert(AlertDescription::DecryptError, "Finished does not verify"));
        }
        self.add_transcript(message);
        // Full handshake: the client finishes first, the server answers. Resumed: the server
        // finished first and the client answers.
        let must_answer = server != self.resumed;
        if must_answer {
            self.send_change_cipher_spec()?;
            self.send_finished()?;
        }
        self.state = State::Established;
        self.remember_session();
        Ok(())
    }

    /// Takes up `session`: its suite, master secret and peer, and the keys they give.
    fn resume(&mut self, session: &Session) {
        self.resumed = true;
        self.suite = Some(session.suite);
        *self.master = *session.master;
        self.peer_certificates = session.peer_certificates.clone();
        self.peer_encryption = session.peer_encryption.clone();
        self.derive_keys();
    }

    /// What a ServerKeyExchange signs: both randoms, then `params` (the encryption certificate
    /// for ECC, the ephemeral parameters for ECDHE).
    fn key_exchange_signed(&self, params: &[u8]) -> Vec<u8> {
        [&self.client_random[..], &self.server_random[..], params].concat()
    }

    fn remember_session(&self) {
        let Some(suite) = self.suite else { return };
        let Ok(id) = <[u8; 32]>::try_from(&self.session_id[..]) else { return };
        let session = Arc::new(Session {
            id,
            master: self.master.clone(),
            suite,
            peer_certificates: self.peer_certificates.clone(),
            peer_encryption: self.peer_encryption.clone(),
            created: Instant::now(),
        });
        match &self.side {
            Side::Server { config: Some(c), .. } if !self.resumed => c.sessions.put(id, session),
            Side::Client { config, name } if !self.resumed => config.sessions.put(name.clone(), session),
            _ => {}
        }
    }

    // ---- server ----

    fn server_config(&self) -> Result<Arc<ServerConfig>, Error> {
        match &self.side {
            Side::Server { config: Some(c), .. } => Ok(c.clone()),
            _ => Err(Error::internal("no server configuration")),
        }
    }

    fn server_respond(&mut self) -> Result<(), Error> {
        let config = self.server_config()?;
        let hello = match &self.side {
            Side::Server { hello: Some(h), .. } => h.clone(),
            _ => return Err(Error::internal("no ClientHello")),
        };
        self.server_random = random32()?;
        // Resumption: a known session whose suite the client still offers.
        if let Ok(id) = <[u8; 32]>::try_from(&hello.session_id[..])
            && let Some(s) = config.sessions.get(&id)
            && hello.suites.contains(&s.suite.code())
        {
            self.session_id = id.to_vec();
            let sh = ServerHello {
                random: self.server_random,
                session_id: self.session_id.clone(),
                suite: s.suite.code(),
            };
            self.send_handshake(&sh.encode())?;
            self.resume(&s);
            self.send_change_cipher_spec()?;
            self.send_finished()?;
            self.state = State::ExpectChangeCipherSpec;
            return Ok(());
        }
        let offered = msg::known_suites(&hello.suites);
        let client_auth = config.client_verifier.is_some();
        let suite = config
            .suites
            .iter()
            .copied()
            .find(|s| offered.contains(s) && (client_auth || !s.is_ecdhe()))
            .ok_or_else(|| {
                Error::alert(AlertDescription::HandshakeFailure, "no TLCP cipher suite in common")
            })?;
        self.suite = Some(suite);
        self.session_id = if config.sessions.capacity > 0 { random32()?.to_vec() } else { Vec::new() };
        let sh = ServerHello {
            random: self.server_random,
            session_id: self.session_id.clone(),
            suite: suite.code(),
        };
        self.send_handshake(&sh.encode())?;
        let identity = &config.identity;
        let enc = identity.enc.as_ref().ok_or_else(|| Error::internal("no encryption certificate"))?;
        let enc_cert: &[u8] = enc.chain[0].as_ref();
        self.send_handshake(&msg::encode_certificates(identity.certificates()))?;
        // ServerKeyExchange: the signature over both randoms and the encryption certificate
        // (ECC) or the ephemeral parameters (ECDHE).
        let (signed, mut ske) = if suite.is_ecdhe() {
            let eph = Ephemeral::generate(&mut rng());
            let params = msg::encode_ec_params(&eph.public().to_sec1_uncompressed());
            self.ephemeral = Some(eph);
            (self.key_exchange_signed(&params), params)
        } else {
            (self.key_exchange_signed(&msg::asn1_cert(enc_cert)), Vec::new())
        };
        let sig = identity
            .sign
            .key
            .sign(gm_id(), &signed)
            .map_err(|_| Error::internal("SM2 signing failed"))?
            .to_der();
        ske.extend_from_slice(&(sig.len() as u16).to_be_bytes());
        ske.extend_from_slice(&sig);
        self.send_handshake(&msg::handshake(HandshakeType::ServerKeyExchange, &ske))?;
        if client_auth {
            self.client_auth = true;
            self.send_handshake(&msg::encode_certificate_request())?;
        }
        self.send_handshake(&msg::handshake(HandshakeType::ServerHelloDone, &[]))?;
        self.state =
            if client_auth { State::ExpectClientCertificate } else { State::ExpectClientKeyExchange };
        Ok(())
    }

    fn server_on_certificate(&mut self, message: &[u8]) -> Result<(), Error> {
        let config = self.server_config()?;
        let verifier = config.client_verifier.clone().ok_or_else(|| Error::internal("no client verifier"))?;
        let certs = msg::decode_certificates(&message[4..])?;
        let suite = self.suite.ok_or_else(|| Error::internal("no suite"))?;
        self.add_transcript(message);
        if certs.is_empty() {
            if suite.is_ecdhe() {
                return Err(Error::alert(
                    AlertDescription::HandshakeFailure,
                    "ECDHE suites need the client's certificates",
                ));
            }
            if verifier.client_auth_mandatory() {
                return Err(Error::alert(
                    AlertDescription::HandshakeFailure,
                    "a client certificate is required",
                ));
            }
            self.state = State::ExpectClientKeyExchange;
            return Ok(());
        }
        let sign = CertInfo::parse(&certs[0])?;
        sign.check_signing()?;
        let mut rest = &certs[1..];
        if let Some(second) = rest.first() {
            let info = CertInfo::parse(second)?;
            if info.is_encryption() {
                self.peer_enc_key = Some(info.public);
                self.peer_encryption = Some(CertificateDer::from(second.clone()));
                rest = &rest[1..];
            }
        }
        if suite.is_ecdhe() && self.peer_enc_key.is_none() {
            return Err(Error::alert(
                AlertDescription::HandshakeFailure,
                "ECDHE suites need the client's encryption certificate (dual certificates)",
            ));
        }
        let leaf = CertificateDer::from(certs[0].clone());
        let intermediates: Vec<CertificateDer<'static>> =
            rest.iter().map(|c| CertificateDer::from(c.clone())).collect();
        let now = UnixTime::now();
        verifier.verify_client_cert(&leaf, &intermediates, now).map_err(verifier_error)?;
        if let Some(enc) = &self.peer_encryption {
            verifier.verify_client_cert(enc, &intermediates, now).map_err(verifier_error)?;
        }
        self.peer_sign_key = Some(sign.public);
        self.peer_certificates = std::iter::once(leaf).chain(intermediates).collect();
        self.state = State::ExpectClientKeyExchange;
        Ok(())
    }

    fn server_on_key_exchange(&mut self, message: &[u8]) -> Result<(), Error> {
        let config = self.server_config()?;
        let suite = self.suite.ok_or_else(|| Error::internal("no suite"))?;
        let enc = config.identity.enc.as_ref().ok_or_else(|| Error::internal("no encryption key"))?;
        let body = &message[4..];
        let pre_master: Zeroizing<Vec<u8>> = if suite.is_ecdhe() {
            // Tongsuo accepts the parameters bare or, as the standard writes it, inside a u16
            // vector; so do we.
            let inner =
                if body.len() >= 2 && u16::from_be_bytes([body[0], body[1]]) as usize == body.len() - 2 {
                    &body[2..]
                } else {
                    body
                };
            let mut r = Reader::new(inner, "ClientKeyExchange");
            let point = msg::decode_ec_params(&mut r)?;
            r.end()?;
            let client_point = Sm2PublicKey::from_sec1_bytes(point).map_err(|_| {
                Error::alert(AlertDescription::IllegalParameter, "client's ephemeral point is not on SM2")
            })?;
            let eph = self.ephemeral.take().ok_or_else(|| Error::internal("no ephemeral key"))?;
            let client_enc =
                self.peer_enc_key.as_ref().ok_or_else(|| Error::internal("no client encryption key"))?;
            pre_master_by_kex(Role::Initiator, &enc.key, &eph, client_enc, &client_point)?
        } else {
            let ciphertext = msg::decode_opaque16(body, "ClientKeyExchange")?;
            // A pre-master secret that does not decrypt, or has the wrong length or version, is
            // replaced by a random one (GB/T 38636-2020 6.4.5.8, as RFC 5246 7.4.7.1 for RSA):
            // the handshake then fails at Finished, telling nothing about why.
            let mut fallback = Zeroizing::new(vec![0u8; 48]);
            getrandom::fill(&mut fallback[..]).map_err(|_| Error::internal("no randomness"))?;
            match enc.key.decrypt(ciphertext, Sm2CiphertextFormat::Der) {
                Ok(pms) if pms.len() == 48 && pms[..2] == [0x01, 0x01] => Zeroizing::new(pms.to_vec()),
                _ => fallback,
            }
        };
        self.add_transcript(message);
        self.set_master(&pre_master);
        self.state = if self.peer_sign_key.is_some() {
            State::ExpectCertificateVerify
        } else {
            State::ExpectChangeCipherSpec
        };
        Ok(())
    }

    // ---- client ----

    fn client_config(&self) -> Result<(Arc<ClientConfig>, String), Error> {
        match &self.side {
            Side::Client { config, name } => Ok((config.clone(), name.clone())),
            Side::Server { .. } => Err(Error::internal("not a client")),
        }
    }

    fn client_on_server_hello(&mut self, message: &[u8]) -> Result<(), Error> {
        let (config, name) = self.client_config()?;
        let sh = ServerHello::decode(&message[4..])?;
        self.add_transcript(message);
        let suite = CipherSuite::from_u16(sh.suite).ok_or_else(|| {
            Error::alert(AlertDescription::IllegalParameter, "server chose a suite we did not offer")
        })?;
        self.server_random = sh.random;
        if !self.session_id.is_empty() && sh.session_id == self.session_id {
            let session = config.sessions.get(&name).ok_or_else(|| {
                Error::alert(AlertDescription::IllegalParameter, "server resumed an unknown session")
            })?;
            if session.suite != suite {
                return Err(Error::alert(
                    AlertDescription::IllegalParameter,
                    "resumed session with another suite",
                ));
            }
            self.resume(&session);
            self.state = State::ExpectChangeCipherSpec;
            return Ok(());
        }
        if !config.suites.contains(&suite) {
            return Err(Error::alert(
                AlertDescription::IllegalParameter,
                "server chose a suite we did not offer",
            ));
        }
        self.session_id = sh.session_id;
        self.suite = Some(suite);
        self.state = State::ExpectServerCertificate;
        Ok(())
    }

    fn client_on_certificate(&mut self, message: &[u8]) -> Result<(), Error> {
        let (config, name) = self.client_config()?;
        let certs = msg::decode_certificates(&message[4..])?;
        if certs.len() < 2 {
            return Err(Error::alert(
                AlertDescription::BadCertificate,
                "server sent fewer than two certificates (TLCP needs signing and encryption)",
            ));
        }
        let sign = CertInfo::parse(&certs[0])?;
        sign.check_signing()?;
        let enc = CertInfo::parse(&certs[1])?;
        if !enc.is_encryption() {
            return Err(Error::alert(
                AlertDescription::BadCertificate,
                "server's second certificate is not an encryption certificate (keyUsage)",
            ));
        }
        if sign.public == enc.public {
            return Err(Error::alert(
                AlertDescription::BadCertificate,
                "server's two certificates share one key",
            ));
        }
        let leaf = CertificateDer::from(certs[0].clone());
        let enc_der = CertificateDer::from(certs[1].clone());
        let intermediates: Vec<CertificateDer<'static>> =
            certs[2..].iter().map(|c| CertificateDer::from(c.clone())).collect();
        let server_name =
            ServerName::try_from(name.as_str()).map_err(|_| Error::internal("server name"))?.to_owned();
        let now = UnixTime::now();
        for cert in [&leaf, &enc_der] {
            config
                .verifier
                .verify_server_cert(cert, &intermediates, &server_name, &[], now)
                .map_err(verifier_error)?;
        }
        self.add_transcript(message);
        self.peer_sign_key = Some(sign.public);
        self.peer_enc_key = Some(enc.public);
        self.peer_certificates = std::iter::once(leaf).chain(intermediates).collect();
        self.peer_encryption = Some(enc_der);
        self.state = State::ExpectServerKeyExchange;
        Ok(())
    }

    fn client_on_key_exchange(&mut self, message: &[u8]) -> Result<(), Error> {
        let suite = self.suite.ok_or_else(|| Error::internal("no suite"))?;
        let body = &message[4..];
        let mut r = Reader::new(body, "ServerKeyExchange");
        let signed = if suite.is_ecdhe() {
            let point = msg::decode_ec_params(&mut r)?;
            self.peer_ephemeral = Some(Sm2PublicKey::from_sec1_bytes(point).map_err(|_| {
                Error::alert(AlertDescription::IllegalParameter, "server's ephemeral point is not on SM2")
            })?);
            self.key_exchange_signed(&body[..body.len() - r.rest_len()])
        } else {
            let enc =
                self.peer_encryption.as_ref().ok_or_else(|| Error::internal("no encryption certificate"))?;
            self.key_exchange_signed(&msg::asn1_cert(enc))
        };
        let sig = r.vec16()?;
        r.end()?;
        let key = self.peer_sign_key.as_ref().ok_or_else(|| Error::internal("no server key"))?;
        verify_sm2(key, &signed, sig).map_err(|e| {
            Error::alert(e.alert, "ServerKeyExchange signature does not verify with the signing certificate")
        })?;
        self.add_transcript(message);
        self.state = State::ExpectCertificateRequestOrDone;
        Ok(())
    }

    fn client_second_flight(&mut self) -> Result<(), Error> {
        let (config, _) = self.client_config()?;
        let suite = self.suite.ok_or_else(|| Error::internal("no suite"))?;
        let identity = config.identity.as_ref();
        if self.client_auth {
            match identity {
                Some(id) => {
                    self.send_handshake(&msg::encode_certificates(id.certificates()))?;
                    self.sent_certificate = true;
                }
                None => self.send_handshake(&msg::encode_certificates(std::iter::empty()))?,
            }
        }
        let pre_master: Zeroizing<Vec<u8>> = if suite.is_ecdhe() {
            let id = identity
                .and_then(|i| i.enc.as_ref().map(|e| (i, e)))
                .filter(|_| self.client_auth)
                .ok_or_else(|| {
                    Error::alert(AlertDescription::HandshakeFailure, "ECDHE needs our encryption certificate")
                })?;
            let eph = Ephemeral::generate(&mut rng());
            let server_enc =
                self.peer_enc_key.clone().ok_or_else(|| Error::internal("no server encryption key"))?;
            let server_eph =
                self.peer_ephemeral.clone().ok_or_else(|| Error::internal("no server ephemeral"))?;
            let pre_master = pre_master_by_kex(Role::Responder, &id.1.key, &eph, &server_enc, &server_eph)?;
            let params = msg::encode_ec_params(&eph.public().to_sec1_uncompressed());
            self.send_handshake(&msg::handshake(HandshakeType::ClientKeyExchange, &params))?;
            pre_master
        } else {
            let mut pms = Zeroizing::new(vec![0u8; 48]);
            getrandom::fill(&mut pms[..]).map_err(|_| Error::internal("no randomness"))?;
            pms[0] = 0x01;
            pms[1] = 0x01;
            let enc =
                self.peer_enc_key.as_ref().ok_or_else(|| Error::internal("no server encryption key"))?;
            let ct = enc
                .encrypt(&mut rng(), &pms, Sm2CiphertextFormat::Der)
                .map_err(|_| Error::internal("SM2 encryption failed"))?;
            self.send_handshake(&msg::encode_opaque16(HandshakeType::ClientKeyExchange, &ct))?;
            pms
        };
        if self.sent_certificate {
            let id = identity.ok_or_else(|| Error::internal("no identity"))?;
            let hash = self.transcript_hash();
            let sig =
                id.sign.key.sign(gm_id(), &hash).map_err(|_| Error::internal("SM2 signing failed"))?.to_der();
            self.send_handshake(&msg::encode_opaque16(HandshakeType::CertificateVerify, &sig))?;
        }
        self.set_master(&pre_master);
        self.send_change_cipher_spec()?;
        self.send_finished()?;
        self.state = State::ExpectChangeCipherSpec;
        Ok(())
    }
}

/// The ECDHE suites' 48-byte pre-master secret: the SM2 key exchange between our encryption key
/// and ephemeral and the peer's (GB/T 38636-2020: the server is the initiator), GM/T 0009 IDs.
fn pre_master_by_kex(
    role: Role,
    key: &claimlink_gm::Sm2PrivateKey,
    ephemeral: &Ephemeral,
    peer_key: &Sm2PublicKey,
    peer_ephemeral: &Sm2PublicKey,
) -> Result<Zeroizing<Vec<u8>>, Error> {
    let me = Party { key, id: gm_id(), ephemeral };
    let peer = Peer { key: peer_key, id: gm_id(), ephemeral: peer_ephemeral };
    kex::agree(role, &me, &peer, 48)
        .map(|agreed| agreed.key)
        .map_err(|_| Error::alert(AlertDescription::IllegalParameter, "SM2 key exchange failed"))
}

fn verifier_error(e: rustls::Error) -> Error {
    use rustls::CertificateError as C;
    let alert = match &e {
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => AlertDescription::UnknownCa,
        rustls::Error::InvalidCertificate(C::Expired | C::NotValidYet) => {
            AlertDescription::CertificateUnknown
        }
        _ => AlertDescription::BadCertificate,
    };
    Error::alert(alert, format!("certificate refused: {e}"))
}

/// What a server sees of a ClientHello before choosing its configuration.
#[derive(Debug)]
pub struct ClientHelloInfo<'a> {
    hello: &'a ClientHello,
}

impl ClientHelloInfo<'_> {
    /// The server name (SNI), lower-cased.
    pub fn server_name(&self) -> Option<&str> {
        self.hello.server_name.as_deref()
    }

    /// The TLCP suites offered, in the client's order.
    pub fn cipher_suites(&self) -> Vec<CipherSuite> {
        msg::known_suites(&self.hello.suites)
    }
}
