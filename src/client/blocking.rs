//! A blocking transport for the sans-IO client: one server over UDP, TCP or TLS on
//! std sockets, one request at a time (what `turnd probe` and the integration tests
//! need; nothing to multiplex). Unlike the rest of [`crate::client`], this file does
//! I/O and reads the clock.

use super::{Client, ClientError, Outgoing, Packet, Request, Response, AUTH_ATTEMPTS};
use crate::stun::framing::Framer;
use crate::stun::raw::{Header, TYPE_DATA_INDICATION};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

/// RFC 8489 §6.2.1: the initial retransmission timeout over UDP.
pub const INITIAL_RTO: Duration = Duration::from_millis(500);
/// The largest datagram read (a STUN message or ChannelData is at most 64 KiB).
const MAX_DATAGRAM: usize = 65_536 + 4;

/// A client-side TLS stream (rustls over std TCP).
pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// The socket to the server.
#[derive(Debug)]
pub enum Link {
    /// A UDP socket (not connected: answers from elsewhere are noticed, not dropped).
    Udp(UdpSocket),
    /// A TCP connection.
    Tcp(TcpStream),
    /// TLS over TCP, handshake done.
    Tls(Box<TlsStream>),
}

/// Why a transaction got no answer.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What the transport was doing.
        what: &'static str,
        /// The system's error.
        source: io::Error,
    },
    /// Nothing came back in time.
    #[error("no answer from {server} within {waited:?}")]
    Timeout {
        /// Where the request went.
        server: SocketAddr,
        /// How long the transport waited.
        waited: Duration,
        /// A datagram that came from another address than the server's, if one did.
        stray_from: Option<SocketAddr>,
    },
    /// The server closed the connection.
    #[error("the server closed the connection")]
    Closed,
    /// What came back could not be read.
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// A packet from the server, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A STUN message.
    Stun(Vec<u8>),
    /// ChannelData.
    ChannelData {
        /// The channel number.
        channel: u16,
        /// The application data.
        data: Vec<u8>,
    },
}

impl From<Packet<'_>> for Received {
    fn from(packet: Packet<'_>) -> Received {
        match packet {
            Packet::Stun(m) => Received::Stun(m.to_vec()),
            Packet::ChannelData { channel, data } => Received::ChannelData { channel, data: data.to_vec() },
        }
    }
}

/// The connection to one server, with the packets that arrived while a transaction
/// waited for its response (relayed data must not be lost to a Refresh).
#[derive(Debug)]
pub struct Connection {
    link: Link,
    server: SocketAddr,
    framer: Framer,
    pending: VecDeque<Received>,
    stray_from: Option<SocketAddr>,
}

fn io_error(what: &'static str) -> impl FnOnce(io::Error) -> TransportError {
    move |source| TransportError::Io { what, source }
}

impl Connection {
    /// A connection over `link` to `server`.
    pub fn new(link: Link, server: SocketAddr) -> Connection {
        Connection { link, server, framer: Framer::default(), pending: VecDeque::new(), stray_from: None }
    }

    /// The socket.
    pub fn link(&self) -> &Link {
        &self.link
    }

    /// The socket, for other uses (unread stream bytes are lost).
    pub fn into_link(self) -> Link {
        self.link
    }

    /// The server's address.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// The local address of the socket.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match &self.link {
            Link::Udp(s) => s.local_addr().ok(),
            Link::Tcp(s) => s.local_addr().ok(),
            Link::Tls(s) => s.sock.local_addr().ok(),
        }
    }

    /// Whether the link carries datagrams (UDP) rather than a stream.
    pub fn is_datagram(&self) -> bool {
        matches!(self.link, Link::Udp(_))
    }

    /// Sends bytes to the server.
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), TransportError> {
        let io = io_error("sending to the server");
        match &mut self.link {
            Link::Udp(s) => s.send_to(bytes, self.server).map(drop).map_err(io),
            Link::Tcp(s) => s.write_all(bytes).map_err(io),
            Link::Tls(s) => s.write_all(bytes).and_then(|()| s.flush()).map_err(io),
        }
    }

    /// Reads the next packet from the server, waiting until `deadline` at most.
    pub fn recv(&mut self, deadline: Instant) -> Result<Received, TransportError> {
        loop {
            let framed = self
                .framer
                .next_frame()
                .map_err(|_| ClientError::Malformed("stream data that is neither STUN nor ChannelData"))?;
            if let Some(frame) = framed {
                return Ok(Packet::parse(frame)?.into());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let stray_from = self.stray_from;
                return Err(TransportError::Timeout { server: self.server, waited: Duration::ZERO, stray_from });
            }
            let option = io_error("socket option");
            let read = match &mut self.link {
                Link::Udp(s) => {
                    s.set_read_timeout(Some(left)).map_err(option)?;
                    let mut buf = vec![0u8; MAX_DATAGRAM];
                    match s.recv_from(&mut buf) {
                        Ok((n, from)) if from == self.server => {
                            return Ok(Packet::parse(buf.get(..n).unwrap_or_default())?.into())
                        }
                        Ok((_, from)) => {
                            self.stray_from = Some(from);
                            continue;
                        }
                        Err(e) => Err(e),
                    }
                }
                Link::Tcp(s) => {
                    s.set_read_timeout(Some(left)).map_err(option)?;
                    s.read(self.framer.spare())
                }
                Link::Tls(s) => {
                    s.sock.set_read_timeout(Some(left)).map_err(option)?;
                    s.read(self.framer.spare())
                }
            };
            match read {
                Ok(0) => return Err(TransportError::Closed),
                Ok(n) => self.framer.filled(n),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(TransportError::Io { what: "receiving from the server", source }),
            }
        }
    }

    /// Sends `sent` and returns the bytes of its response, retransmitting over UDP
    /// (RFC 8489 §6.2.1); other packets that arrive meanwhile are kept for
    /// [`Connection::recv_data`].
    pub fn transact(&mut self, sent: &Outgoing, timeout: Duration) -> Result<Vec<u8>, TransportError> {
        let start = Instant::now();
        let deadline = start + timeout;
        let mut rto = INITIAL_RTO;
        let mut next_send = start;
        loop {
            let now = Instant::now();
            if now >= deadline {
                let stray_from = self.stray_from;
                return Err(TransportError::Timeout { server: self.server, waited: timeout, stray_from });
            }
            if now >= next_send {
                self.send(&sent.bytes)?;
                next_send = if self.is_datagram() { now + rto } else { deadline };
                rto *= 2;
            }
            match self.recv(next_send.min(deadline)) {
                Ok(Received::Stun(bytes)) if sent.is_answered_by(&bytes) => return Ok(bytes),
                Ok(packet) => self.pending.push_back(packet),
                Err(TransportError::Timeout { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends `request` and returns its final response, sending it again (at most
    /// [`AUTH_ATTEMPTS`] times in all) while 401/438 answers bring fresh nonces.
    pub fn request(
        &mut self,
        client: &mut Client,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, TransportError> {
        let mut attempts = 0;
        loop {
            let sent = client.request(request)?;
            let response = client.response(&sent, &self.transact(&sent, timeout)?)?;
            attempts += 1;
            if attempts >= AUTH_ATTEMPTS || !client.learn(&response) {
                return Ok(response);
            }
        }
    }

    /// The next Data indication or ChannelData, queued or read before `deadline`
    /// (late responses are skipped).
    pub fn recv_data(&mut self, deadline: Instant) -> Result<Received, TransportError> {
        loop {
            let packet = match self.pending.pop_front() {
                Some(p) => p,
                None => self.recv(deadline)?,
            };
            match &packet {
                Received::Stun(bytes) if Header::parse(bytes).map(|h| h.message_type) != Some(TYPE_DATA_INDICATION) => {
                    continue
                }
                _ => return Ok(packet),
            }
        }
    }
}
