//! The conversation between the running turnd (the predecessor) and the one it starts
//! (the successor) on the inherited SOCK_SEQPACKET socket. Each message is one JSON
//! object in one packet:
//!
//! 1. predecessor: [`Message::Offer`]: what the moved sockets are (worker count,
//!    listeners, relay ports in use), so the successor can check its config first;
//! 2. successor: [`Message::Ready`], or [`Message::Refuse`] naming the config key;
//! 3. predecessor: freezes its UDP reads, exports, sends [`Message::State`] with the
//!    state's memfd attached, then the sockets in [`Message::Descriptors`] packets
//!    (at most [`crate::sys::fdpass::FDS_PER_MESSAGE`] each);
//! 4. successor: starts serving on them and answers [`Message::Serving`], or
//!    [`Message::Refuse`].
//!
//! Anything else, a timeout or the socket closing before step 4 means the handover
//! failed: the predecessor thaws and keeps serving.

use crate::sys::fdpass;
use serde::{Deserialize, Serialize};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;

/// The environment variable naming the inherited socket's descriptor in the successor.
pub const HANDOVER_FD_ENV: &str = "TURND_HANDOVER_FD";

/// One message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// What will be handed over.
    Offer(Offer),
    /// The successor's config fits: send the state.
    Ready,
    /// The successor will not take over; `key` names the config key (or "state").
    Refuse {
        /// The config key at fault, or "state".
        key: String,
        /// Why, for the operator.
        message: String,
    },
    /// The state follows in the attached memfd; `descriptors` sockets follow it.
    State {
        /// How many descriptors the [`Message::Descriptors`] packets carry in all.
        descriptors: usize,
    },
    /// A batch of the state's descriptors, in order.
    Descriptors,
    /// The successor serves on the sockets: the predecessor stops.
    Serving {
        /// Allocations taken over.
        allocations: usize,
        /// Its pid.
        pid: u32,
        /// Freeze to serving, as the successor measured it (wall clock), in µs.
        gap_us: u64,
    },
}

/// What the predecessor offers: enough for the successor to check that its config can
/// carry the sockets before anything is frozen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// The state version the predecessor will write.
    pub version: u32,
    /// Its worker count (each worker's listener sockets go to the same index).
    pub workers: usize,
    /// Its UDP listener addresses (as bound).
    pub udp_listeners: Vec<SocketAddr>,
    /// Its TCP and TLS listeners: ("tcp" | "tls", address).
    pub stream_listeners: Vec<(String, SocketAddr)>,
    /// Relay ports held by allocations that move.
    pub relay_ports: Vec<u16>,
    /// The port `--port 0` resolved to.
    pub port_override: Option<u16>,
    /// The admin listener's address, when there is one.
    pub admin: Option<SocketAddr>,
    /// The realms of `[[tenant]]`s (not the default one) whose allocations move: the
    /// successor must have each.
    #[serde(default)]
    pub realms: Vec<String>,
}

/// Sends a message with `fds` attached.
pub fn send(socket: &UnixDatagram, message: &Message, fds: &[RawFd]) -> io::Result<()> {
    let payload = serde_json::to_vec(message).map_err(io::Error::other)?;
    fdpass::send(socket, &payload, fds)
}

/// Receives a message and its descriptors; the other end closing is an error.
pub fn recv(socket: &UnixDatagram) -> io::Result<(Message, Vec<OwnedFd>)> {
    let (payload, fds) = fdpass::recv(socket)?;
    if payload.is_empty() && fds.is_empty() {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the other turnd closed the handover socket"));
    }
    let message = serde_json::from_slice(&payload)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("not a handover message: {e}")))?;
    Ok((message, fds))
}

/// Sends `fds` in as many [`Message::Descriptors`] packets as they need.
pub fn send_descriptors(socket: &UnixDatagram, fds: &[RawFd]) -> io::Result<()> {
    for batch in fds.chunks(fdpass::FDS_PER_MESSAGE) {
        send(socket, &Message::Descriptors, batch)?;
    }
    Ok(())
}

/// Receives `count` descriptors sent by [`send_descriptors`].
pub fn recv_descriptors(socket: &UnixDatagram, count: usize) -> io::Result<Vec<OwnedFd>> {
    let mut all = Vec::with_capacity(count);
    while all.len() < count {
        match recv(socket)? {
            (Message::Descriptors, fds) if !fds.is_empty() && all.len() + fds.len() <= count => all.extend(fds),
            (other, _) => {
                return Err(io::Error::new(io::ErrorKind::InvalidData, format!("expected descriptors, got {other:?}")))
            }
        }
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn messages_and_many_descriptors_cross() {
        let (a, b) = fdpass::seqpacket_pair().unwrap();
        send(&a, &Message::Refuse { key: "workers".into(), message: "2 != 4".into() }, &[]).unwrap();
        let (message, _) = recv(&b).unwrap();
        assert_eq!(message, Message::Refuse { key: "workers".into(), message: "2 != 4".into() });
        // More than one packet's worth, sent from one thread and read from another.
        let sockets: Vec<_> = (0..300).map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
        let raw: Vec<RawFd> = sockets.iter().map(|s| s.as_raw_fd()).collect();
        let reader = std::thread::spawn(move || recv_descriptors(&b, 300).unwrap());
        send_descriptors(&a, &raw).unwrap();
        let received = reader.join().unwrap();
        for (sent, got) in sockets.iter().zip(received) {
            let got = std::net::UdpSocket::from(got);
            assert_eq!(got.local_addr().unwrap(), sent.local_addr().unwrap());
        }
    }

    #[test]
    fn a_closed_peer_is_an_error() {
        let (a, b) = fdpass::seqpacket_pair().unwrap();
        drop(a);
        assert_eq!(recv(&b).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }
}
