//! Relaying through the allocation and back: to a second local UDP socket when the
//! server answers it (else to the allocation itself), with Send/Data indications and
//! over the bound channel.

use super::error::ProbeError;
use super::steps::{binding, unspecified};
use super::{PEER_BINDING_WAIT, PROBE_CHANNEL};
use crate::client::blocking::{Connection, Link, Received, TransportError};
use crate::client::{channel_data, Client, Credentials, DataIndication};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// The largest datagram the peer socket reads.
const MAX_MESSAGE: usize = 65_536 + 4;

/// Where relayed data goes.
pub(super) enum Peer {
    /// A second local UDP socket, at the address the server sees for it.
    Socket {
        /// The socket.
        socket: UdpSocket,
        /// Its server-reflexive address.
        reflexive: SocketAddr,
    },
    /// The allocation itself: the relay sends to its own address and receives it back.
    Relay {
        /// The relayed address.
        address: SocketAddr,
    },
}

impl Peer {
    /// A UDP socket when the server answers a Binding on it over UDP (always, for a UDP
    /// URL); otherwise the allocation itself.
    pub(super) fn open(
        conn: &Connection,
        server: SocketAddr,
        relayed: SocketAddr,
        timeout: Duration,
    ) -> Result<Peer, ProbeError> {
        let io = |what| move |source| ProbeError::Io { what, source };
        let socket = UdpSocket::bind(unspecified(relayed)).map_err(io("binding the peer socket"))?;
        let wait = if conn.is_datagram() { timeout } else { PEER_BINDING_WAIT.min(timeout) };
        let mut probe = Connection::new(Link::Udp(socket), server);
        let mut client = Client::new(Credentials::None, super::steps::random_bytes()?);
        match binding(&mut probe, &mut client, wait) {
            Ok((reflexive, _)) => {
                let Link::Udp(socket) = probe.into_link() else {
                    return Err(ProbeError::Malformed("unreachable: the peer link is UDP"));
                };
                Ok(Peer::Socket { socket, reflexive })
            }
            Err(e) if conn.is_datagram() => Err(e),
            Err(_) => Ok(Peer::Relay { address: relayed }),
        }
    }

    pub(super) fn address(&self) -> SocketAddr {
        match self {
            Peer::Socket { reflexive, .. } => *reflexive,
            Peer::Relay { address } => *address,
        }
    }

    /// Receives one datagram on the peer socket; returns (source, payload).
    fn recv(socket: &UdpSocket, deadline: Instant, want: &[u8]) -> Result<SocketAddr, ProbeError> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ProbeError::Relay("the peer socket received nothing from the relay".into()));
            }
            socket.set_read_timeout(Some(left)).map_err(|source| ProbeError::Io { what: "socket option", source })?;
            match socket.recv_from(&mut buf) {
                Ok((n, from)) if buf.get(..n) == Some(want) => return Ok(from),
                Ok(_) => continue,
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
                Err(source) => return Err(ProbeError::Io { what: "receiving on the peer socket", source }),
            }
        }
    }
}

/// Checks a received Data indication: from `peer`, carrying `payload`.
fn check_data_indication(bytes: &[u8], peer: SocketAddr, payload: &[u8]) -> Result<Option<SocketAddr>, ProbeError> {
    let Some(indication) = DataIndication::parse(bytes)? else {
        return Ok(None);
    };
    if indication.data != payload {
        return Ok(None);
    }
    let from = indication.peer;
    // Permissions are per IP address (RFC 8656 §9): a NAT in front of the peer may give
    // it another port towards the relay than towards the server.
    if from.ip() != peer.ip() {
        return Err(ProbeError::Relay(format!("data came back from {from} instead of {peer}")));
    }
    Ok(Some(from))
}

/// Waits for `payload` to come back to the client, as a Data indication or on `channel`.
/// Returns the peer address a Data indication named.
fn await_at_client(
    conn: &mut Connection,
    peer: SocketAddr,
    channel: Option<u16>,
    payload: &[u8],
    timeout: Duration,
) -> Result<Option<SocketAddr>, ProbeError> {
    let deadline = Instant::now() + timeout;
    loop {
        let packet = match conn.recv_data(deadline) {
            Ok(p) => p,
            Err(TransportError::Timeout { .. }) => {
                let how = if channel.is_some() { "ChannelData" } else { "a Data indication" };
                return Err(ProbeError::Relay(format!(
                    "the client got no {how} back from the relay within {timeout:?}"
                )));
            }
            Err(e) => return Err(e.into()),
        };
        match (packet, channel) {
            (Received::ChannelData { channel: c, data }, Some(want)) if c == want && data == payload => {
                return Ok(None)
            }
            (Received::Stun(bytes), None) => {
                if let Some(from) = check_data_indication(&bytes, peer, payload)? {
                    return Ok(Some(from));
                }
            }
            _ => continue,
        }
    }
}

/// Relays with a Send indication and, for a socket peer, back with a Data indication.
/// Returns what happened and the peer's address as the relay sees it (behind an
/// address-dependent NAT, another port than the server saw).
pub(super) fn relay_by_indication(
    conn: &mut Connection,
    client: &mut Client,
    peer: &Peer,
    relayed: SocketAddr,
    payload: &[u8],
    timeout: Duration,
) -> Result<(String, SocketAddr), ProbeError> {
    match peer {
        Peer::Socket { socket, reflexive } => {
            // The peer speaks first: that opens its own NAT (if any) towards the relay,
            // and tests the inbound direction (peer -> relay -> Data indication).
            socket
                .send_to(payload, relayed)
                .map_err(|source| ProbeError::Io { what: "sending from the peer", source })?;
            let seen = await_at_client(conn, *reflexive, None, payload, timeout)?.unwrap_or(*reflexive);
            conn.send(&client.send_indication(seen, payload)?)?;
            let from = Peer::recv(socket, Instant::now() + timeout, payload)?;
            let detail =
                format!("peer {seen} -> relay -> Data indication, Send indication -> relay -> peer (from {from})");
            Ok((detail, seen))
        }
        Peer::Relay { address } => {
            conn.send(&client.send_indication(*address, payload)?)?;
            await_at_client(conn, *address, None, payload, timeout)?;
            Ok(("Send indication -> relay -> relay -> Data indication".into(), *address))
        }
    }
}

/// Relays over the bound channel, both ways.
pub(super) fn relay_by_channel(
    conn: &mut Connection,
    peer: &Peer,
    relayed: SocketAddr,
    payload: &[u8],
    timeout: Duration,
) -> Result<String, ProbeError> {
    // Over a stream, ChannelData is padded to four bytes (RFC 8656 §12.5).
    let frame = channel_data(PROBE_CHANNEL, payload, !conn.is_datagram())?;
    conn.send(&frame)?;
    match peer {
        Peer::Socket { socket, .. } => {
            let from = Peer::recv(socket, Instant::now() + timeout, payload)?;
            socket
                .send_to(payload, relayed)
                .map_err(|source| ProbeError::Io { what: "sending from the peer", source })?;
            await_at_client(conn, peer.address(), Some(PROBE_CHANNEL), payload, timeout)?;
            Ok(format!("ChannelData -> relay -> peer (from {from}) -> relay -> ChannelData"))
        }
        Peer::Relay { address } => {
            await_at_client(conn, *address, Some(PROBE_CHANNEL), payload, timeout)?;
            Ok("ChannelData -> relay -> relay -> ChannelData".into())
        }
    }
}
