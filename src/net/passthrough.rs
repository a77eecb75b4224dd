//! One port for TURN and HTTPS: a `tls` listener with `passthrough-to` reads each
//! connection's ClientHello ([`super::client_hello`]) before any TLS is terminated and
//! either serves it as `turns:` (the bytes read are replayed to rustls, see [`Rewind`])
//! or hands the raw TCP connection, those bytes first, to the backend, which
//! terminates TLS with its own certificate.
//!
//! The rule ([`Passthrough::is_turn`]): a connection is TURN when its ClientHello
//! offers the ALPN id `stun.turn` or `stun.nat-discovery`; or when it offers no ALPN
//! at all and either names no server (SNI: a client connecting to an IP address) or
//! names one of `turn-names` (when that list is empty: a name turnd's certificate is
//! valid for). Everything else goes to the backend: `h2` or `http/1.1` (every
//! browser's HTTPS), another ALPN, or no ALPN with another name. Browsers' `turns:`
//! send SNI and no ALPN today, so they need their name to be a TURN name.
//!
//! Bounded like every stream connection: it is admitted by the per-source and total
//! caps before a byte is read (`net::admission`), the ClientHello must be whole
//! within `first-message-timeout` and [`client_hello::MAX_HELLO_BYTES`], and a
//! spliced connection buffers at most [`SPLICE_BUFFER`] bytes each way, ends after
//! `idle-timeout` without traffic, and is cut when a write waits `write-timeout`.

use super::client_hello::{self, Hello, HelloError, Parsed};
use super::stream::StreamLimits;
use super::tls::{ReloadableCert, ALPN_PROTOCOLS};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Bytes buffered each way while splicing a connection to the backend.
pub const SPLICE_BUFFER: usize = 8 * 1024;
/// How much is read from the client at a time while waiting for its ClientHello.
const READ_CHUNK: usize = 2048;

/// Which SNI names are TURN's when a ClientHello offers no ALPN.
#[derive(Debug, Clone)]
pub enum TurnNames {
    /// These names (lower case, no trailing dot): `turn-names`.
    Listed(Vec<String>),
    /// The names the certificate in force is valid for (followed across reloads).
    Certificate(Arc<ReloadableCert>),
}

/// A listener's passthrough: where non-TURN connections go, and what TURN is.
#[derive(Debug, Clone)]
pub struct Passthrough {
    /// The backend (an HTTPS server) that gets non-TURN connections, still encrypted.
    pub backend: SocketAddr,
    /// The SNI names served as TURN when no ALPN is offered.
    pub names: TurnNames,
}

/// Where a connection goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Served by turnd as `turns:`.
    Turn,
    /// Spliced to the backend.
    Backend,
}

impl Passthrough {
    /// Decides where a connection with this ClientHello goes (the rule is in the
    /// module's documentation).
    pub fn route(&self, hello: &Hello) -> Route {
        if self.is_turn(hello) {
            Route::Turn
        } else {
            Route::Backend
        }
    }

    /// Whether a connection with this ClientHello is TURN.
    pub fn is_turn(&self, hello: &Hello) -> bool {
        match (&hello.alpn, &hello.server_name) {
            (Some(offered), _) => offered.iter().any(|id| ALPN_PROTOCOLS.contains(&id.as_slice())),
            (None, None) => true,
            (None, Some(name)) => match &self.names {
                TurnNames::Listed(names) => names.iter().any(|n| n == name),
                TurnNames::Certificate(cert) => cert.is_valid_for(name),
            },
        }
    }
}

/// Reads from `stream` until the bytes read hold a whole ClientHello, and returns
/// them (all of them: whoever gets the connection must see each byte) with what the
/// ClientHello says. The caller bounds the time.
pub async fn read_client_hello<R: AsyncRead + Unpin>(stream: &mut R) -> Result<(Vec<u8>, Hello), PeekError> {
    let mut bytes = Vec::with_capacity(READ_CHUNK);
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        // Never past the bound: the parser refuses a ClientHello that needs more.
        let room = client_hello::MAX_HELLO_BYTES.saturating_sub(bytes.len()).min(READ_CHUNK);
        let n = stream.read(&mut chunk[..room.max(1)]).await.map_err(|_| PeekError::Closed)?;
        if n == 0 {
            return Err(PeekError::Closed);
        }
        bytes.extend_from_slice(&chunk[..n]);
        match client_hello::parse(&bytes) {
            Ok(Parsed::Hello(hello)) => return Ok((bytes, hello)),
            Ok(Parsed::NeedMore) => {}
            Err(e) => return Err(PeekError::Hello(e)),
        }
    }
}

/// Why no ClientHello was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PeekError {
    /// The client closed the connection, or it failed, before a whole ClientHello.
    #[error("connection ended before a whole ClientHello")]
    Closed,
    /// What the client sent is not a ClientHello turnd routes.
    #[error(transparent)]
    Hello(#[from] HelloError),
}

/// A stream that first yields bytes already read from it: how a ClientHello read to
/// route the connection is handed to rustls as if it had never been read. Writes go
/// straight through.
#[derive(Debug)]
pub struct Rewind<S> {
    early: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Rewind<S> {
    /// `inner`, whose reads start with `early`.
    pub fn new(early: Vec<u8>, inner: S) -> Rewind<S> {
        Rewind { early, at: 0, inner }
    }

    /// The stream, and what of `early` was not read yet.
    pub fn into_parts(mut self) -> (Vec<u8>, S) {
        self.early.drain(..self.at.min(self.early.len()));
        (self.early, self.inner)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at < this.early.len() {
            let n = (this.early.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.early[this.at..this.at + n]);
            this.at += n;
            if this.at == this.early.len() {
                // Replayed: give the memory back for the connection's lifetime.
                this.early = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Why a passed-through connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpliceEnd {
    /// The backend could not be reached within the time left.
    BackendUnreachable,
    /// Both sides closed, or one failed.
    Ended(&'static str),
}

/// Connects to the backend (by `connect_by`), sends it `early` (the ClientHello) and
/// relays both ways until both sides close, one fails, nothing moves for
/// `idle_timeout`, or a write waits `write_timeout`.
pub async fn splice(
    mut client: TcpStream,
    early: &[u8],
    backend: SocketAddr,
    connect_by: Instant,
    limits: &StreamLimits,
) -> SpliceEnd {
    let mut server = match tokio::time::timeout_at(connect_by, TcpStream::connect(backend)).await {
        Ok(Ok(server)) => server,
        _ => return SpliceEnd::BackendUnreachable,
    };
    let _ = server.set_nodelay(true);
    match tokio::time::timeout(limits.write_timeout, server.write_all(early)).await {
        Ok(Ok(())) => {}
        _ => return SpliceEnd::Ended("backend write error"),
    }
    SpliceEnd::Ended(pump(&mut client, &mut server, limits).await)
}

/// Copies both ways between `a` (the client) and `b` (the backend) with one fixed
/// buffer each way. The two directions run concurrently, so a side that writes before
/// it reads can never stall the other (a single loop that blocks in one write would).
/// A side that closes its sending half has that passed on (half-close), and the other
/// way keeps going.
async fn pump<A, B>(a: &mut A, b: &mut B, limits: &StreamLimits) -> &'static str
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut a_read, mut a_write) = tokio::io::split(a);
    let (mut b_read, mut b_write) = tokio::io::split(b);
    let start = Instant::now();
    // When a byte last moved either way, in milliseconds after `start`.
    let last = AtomicU64::new(0);
    let up = one_way(&mut a_read, &mut b_write, &last, start, limits, ("client read error", "backend write error"));
    let down = one_way(&mut b_read, &mut a_write, &last, start, limits, ("backend read error", "client write error"));
    let idle = async {
        loop {
            let moved = start + Duration::from_millis(last.load(Ordering::Relaxed));
            if Instant::now() >= moved + limits.idle_timeout {
                return "idle timeout";
            }
            tokio::time::sleep_until(moved + limits.idle_timeout).await;
        }
    };
    tokio::select! {
        both = async { tokio::try_join!(up, down) } => match both {
            Ok(_) => "passthrough ended",
            Err(reason) => reason,
        },
        reason = idle => reason,
    }
}

/// One direction of [`pump`]: reads into its own buffer and writes all of it on, each
/// write bounded by `write_timeout`; at the reader's end, shuts the writer down.
async fn one_way<R, W>(
    reader: &mut R,
    writer: &mut W,
    last: &AtomicU64,
    start: Instant,
    limits: &StreamLimits,
    (read_error, write_error): (&'static str, &'static str),
) -> Result<(), &'static str>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; SPLICE_BUFFER];
    loop {
        let n = reader.read(&mut buf).await.map_err(|_| read_error)?;
        if n == 0 {
            let _ = tokio::time::timeout(limits.write_timeout, writer.shutdown()).await;
            return Ok(());
        }
        match tokio::time::timeout(limits.write_timeout, writer.write_all(&buf[..n])).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(write_error),
            Err(_) => return Err("write timeout"),
        }
        let moved = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        last.fetch_max(moved, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(name: Option<&str>, alpn: Option<&[&[u8]]>) -> Hello {
        Hello { server_name: name.map(str::to_owned), alpn: alpn.map(|ids| ids.iter().map(|id| id.to_vec()).collect()) }
    }

    #[test]
    fn the_turn_rule() {
        let listed = Passthrough {
            backend: "127.0.0.1:8443".parse().unwrap(),
            names: TurnNames::Listed(vec!["turn.example.com".into()]),
        };
        let by_cert =
            Passthrough { names: TurnNames::Certificate(crate::net::tls::tests::test_cert()), ..listed.clone() };
        for p in [&listed, &by_cert] {
            // ALPN decides when offered, whatever the name.
            assert_eq!(p.route(&hello(Some("www.example.com"), Some(&[b"stun.turn"]))), Route::Turn);
            assert_eq!(p.route(&hello(None, Some(&[b"h2", b"stun.nat-discovery"]))), Route::Turn);
            assert_eq!(p.route(&hello(Some("turn.example.com"), Some(&[b"h2", b"http/1.1"]))), Route::Backend);
            assert_eq!(p.route(&hello(None, Some(&[b"http/1.1"]))), Route::Backend);
            assert_eq!(p.route(&hello(None, Some(&[b"acme-tls/1"]))), Route::Backend);
            // No ALPN: no name is TURN (clients dialling an IP address), a TURN name
            // is TURN, another name is the backend's.
            assert_eq!(p.route(&hello(None, None)), Route::Turn);
            assert_eq!(p.route(&hello(Some("turn.example.com"), None)), Route::Turn);
            assert_eq!(p.route(&hello(Some("www.example.com"), None)), Route::Backend);
        }
        // The certificate's wildcard counts when no list is configured.
        assert_eq!(by_cert.route(&hello(Some("eu.turn.example.net"), None)), Route::Turn);
        assert_eq!(listed.route(&hello(Some("eu.turn.example.net"), None)), Route::Backend);
    }

    #[test]
    fn rewind_replays_the_early_bytes_then_reads_on() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let (mut near, far) = tokio::io::duplex(64);
            near.write_all(b" world").await.unwrap();
            drop(near);
            let mut rewound = Rewind::new(b"hello".to_vec(), far);
            let mut all = Vec::new();
            let mut small = [0u8; 3];
            loop {
                let n = rewound.read(&mut small).await.unwrap();
                if n == 0 {
                    break;
                }
                all.extend_from_slice(&small[..n]);
            }
            assert_eq!(all, b"hello world");
            assert!(rewound.early.is_empty() && rewound.early.capacity() == 0);
        });
    }

    #[test]
    fn the_pump_moves_both_ways_at_once_passes_half_closes_on_and_ends_when_idle() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let limits = StreamLimits { idle_timeout: Duration::from_millis(300), ..StreamLimits::default() };
            // The backend writes 1 MB before it reads a byte (a blocking server); the
            // client writes and reads at once (a browser), all through 4 KB pipes. A
            // pump that blocked in its write to the backend would stop reading the
            // backend's answer, and neither would ever finish.
            let (client, mut client_side) = tokio::io::duplex(4096);
            let (mut backend, mut backend_side) = tokio::io::duplex(4096);
            let pumping = tokio::spawn(async move { pump(&mut client_side, &mut backend_side, &limits).await });
            let payload: Vec<u8> = (0..1_000_000u32).map(|i| i as u8).collect();
            let sent = payload.clone();
            let at_client = tokio::spawn(async move {
                let (mut reader, mut writer) = tokio::io::split(client);
                let mut got = Vec::new();
                let write = async {
                    writer.write_all(&sent).await.unwrap();
                    writer.shutdown().await.unwrap();
                };
                let (_, read) = tokio::join!(write, reader.read_to_end(&mut got));
                read.unwrap();
                got
            });
            let sent = payload.clone();
            let at_backend = tokio::spawn(async move {
                backend.write_all(&sent).await.unwrap();
                backend.shutdown().await.unwrap();
                let mut got = Vec::new();
                backend.read_to_end(&mut got).await.unwrap();
                got
            });
            assert!(at_client.await.unwrap() == payload, "client: lost or reordered bytes");
            assert!(at_backend.await.unwrap() == payload, "backend: lost or reordered bytes");
            assert_eq!(pumping.await.unwrap(), "passthrough ended");
            // Nothing moving: ended after the idle timeout.
            let (_client, mut client_side) = tokio::io::duplex(64);
            let (_backend, mut backend_side) = tokio::io::duplex(64);
            let began = Instant::now();
            assert_eq!(pump(&mut client_side, &mut backend_side, &limits).await, "idle timeout");
            assert!(began.elapsed() >= Duration::from_millis(300));
        });
    }

    #[test]
    fn a_client_hello_is_read_in_pieces_and_garbage_is_refused_at_once() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let hello = [22, 3, 1, 0, 45, 1, 0, 0, 41, 3, 3]
                .into_iter()
                .chain([0; 32])
                .chain([0, 0, 2, 0x13, 1, 1, 0])
                .collect::<Vec<u8>>();
            let (mut near, mut far) = tokio::io::duplex(16);
            let writer = tokio::spawn(async move {
                for piece in hello.chunks(5) {
                    near.write_all(piece).await.unwrap();
                    tokio::task::yield_now().await;
                }
                near
            });
            let (bytes, parsed) = read_client_hello(&mut far).await.unwrap();
            assert_eq!(bytes.len(), 50);
            assert_eq!(parsed, Hello::default());
            drop(writer.await.unwrap());
            let (mut near, mut far) = tokio::io::duplex(64);
            near.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
            assert_eq!(read_client_hello(&mut far).await.unwrap_err(), PeekError::Hello(HelloError::NotTls));
            drop(near);
            assert_eq!(read_client_hello(&mut far).await.unwrap_err(), PeekError::Closed);
        });
    }
}
