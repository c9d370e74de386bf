//! A TLCP [`Connection`] over any tokio byte stream (feature `tokio`): the handshake as an async
//! function, then `AsyncRead + AsyncWrite` for the application. Writes are bounded: a write
//! waits until what the previous one queued has gone out.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::conn::ClientHelloInfo;
use super::{ClientConfig, Connection, ServerConfig};

/// Plaintext taken per write (four records).
const MAX_WRITE: usize = 4 * super::record::MAX_FRAGMENT;

/// A TLCP connection over `IO`.
pub struct TlcpStream<IO> {
    io: IO,
    conn: Connection,
    buf: Box<[u8]>,
    pending: Vec<u8>,
    sent: usize,
    eof: bool,
}

impl<IO> std::fmt::Debug for TlcpStream<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlcpStream").field("conn", &self.conn).finish_non_exhaustive()
    }
}

fn to_io(e: &super::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.clone())
}

impl<IO: AsyncRead + AsyncWrite + Unpin> TlcpStream<IO> {
    fn new(io: IO, conn: Connection) -> Self {
        Self {
            io,
            conn,
            buf: vec![0u8; super::record::HEADER + super::record::MAX_CIPHERTEXT].into(),
            pending: Vec::new(),
            sent: 0,
            eof: false,
        }
    }

    /// Runs the server side of a handshake on `io`: `select` sees the ClientHello and gives the
    /// configuration (`None` refuses the client).
    pub async fn accept(
        io: IO,
        select: impl FnOnce(&ClientHelloInfo<'_>) -> Option<Arc<ServerConfig>>,
    ) -> io::Result<Self> {
        let mut s = Self::new(io, Connection::accept());
        let mut select = Some(select);
        while s.conn.is_handshaking() {
            s.exchange().await?;
            if let (Some(hello), true) = (s.conn.client_hello(), select.is_some()) {
                let choose = select.take().unwrap_or_else(|| unreachable!("checked"));
                let Some(config) = choose(&hello) else {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        "no TLCP configuration for this server name",
                    ));
                };
                if let Err(e) = s.conn.set_config(config) {
                    // The alert, then the error.
                    let _ = s.flush_all().await;
                    return Err(to_io(&e));
                }
            }
        }
        s.flush_all().await?;
        Ok(s)
    }

    /// Runs the client side of a handshake with `name` on `io`.
    pub async fn connect(io: IO, config: Arc<ClientConfig>, name: &ServerName<'_>) -> io::Result<Self> {
        let conn = Connection::client(config, name).map_err(|e| to_io(&e))?;
        let mut s = Self::new(io, conn);
        while s.conn.is_handshaking() {
            s.exchange().await?;
        }
        s.flush_all().await?;
        if let Some(e) = s.conn.error() {
            return Err(to_io(e));
        }
        Ok(s)
    }

    /// The connection (suite, peer certificates, server name).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The stream underneath.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    async fn flush_all(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_send(cx)).await
    }

    /// One round of the handshake: send what is queued, read once, process.
    async fn exchange(&mut self) -> io::Result<()> {
        self.flush_all().await?;
        if let Some(e) = self.conn.error() {
            return Err(to_io(e));
        }
        if !self.conn.is_handshaking() || self.conn.wants_config() {
            return Ok(());
        }
        let n = std::future::poll_fn(|cx| {
            let mut rb = ReadBuf::new(&mut self.buf);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut rb))?;
            Poll::Ready(Ok::<_, io::Error>(rb.filled().len()))
        })
        .await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "peer closed during the TLCP handshake",
            ));
        }
        let r = self.conn.read_tls(&self.buf[..n]);
        if let Err(e) = r {
            // The alert, then the error.
            let _ = self.flush_all().await;
            return Err(to_io(&e));
        }
        Ok(())
    }

    /// Writes what the connection queued.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.sent == self.pending.len() {
                self.pending.clear();
                self.sent = 0;
                if !self.conn.wants_write() {
                    return Poll::Ready(Ok(()));
                }
                self.pending = self.conn.take_tls();
            }
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.pending[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlcpStream<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.conn.plaintext_available() > 0 {
                let n = this.conn.read_plaintext(out.initialize_unfilled());
                out.advance(n);
                return Poll::Ready(Ok(()));
            }
            if let Some(e) = this.conn.error() {
                return Poll::Ready(Err(to_io(e)));
            }
            if this.conn.peer_has_closed() || this.eof {
                return Poll::Ready(Ok(()));
            }
            // Alerts and no_renegotiation warnings the connection queued go out best-effort.
            let _ = this.poll_send(cx)?;
            let mut rb = ReadBuf::new(&mut this.buf);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            if n == 0 {
                this.eof = true;
                continue;
            }
            if let Err(e) = this.conn.read_tls(&this.buf[..n]) {
                let _ = this.poll_send(cx);
                return Poll::Ready(Err(to_io(&e)));
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlcpStream<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_send(cx))?;
        let n = data.len().min(MAX_WRITE);
        this.conn.write_plaintext(&data[..n]).map_err(|e| to_io(&e))?;
        // Start sending; what does not go now goes before the next write.
        match this.poll_send(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(n)),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.conn.is_closed() {
            this.conn.send_close_notify();
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}
