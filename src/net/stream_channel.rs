//! What flows between the TCP/TLS connection tasks and the event loops: events up
//! ([`StreamEvent`], through the channel [`super::route::StreamRouter`] picks), among
//! them whole connections handed over to the loop ([`StreamEvent::Adopt`]), and, for
//! the connections that stay with their task (RFC 6062 data connections), messages
//! down ([`Outbound`], through each connection's [`Client`] queue).

use super::admission::SourceSlot;
use crate::turn::FiveTuple;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// What the event loop sends a client connection.
#[derive(Debug)]
pub enum Outbound {
    /// A framed message to write.
    Bytes(Vec<u8>),
    /// RFC 6062: from now on, relay raw bytes between this connection and `peer`.
    Splice(TcpStream),
}

/// The event loop's handle on one client connection.
#[derive(Debug)]
pub struct Client {
    queue: mpsc::Sender<Outbound>,
    source: Arc<SourceSlot>,
}

impl Client {
    /// The handle on a connection whose task reads `queue` and holds `source`.
    pub(super) fn new(queue: mpsc::Sender<Outbound>, source: Arc<SourceSlot>) -> Self {
        Client { queue, source }
    }

    /// Queues `message` for the client; `false` when the queue is full (the client is
    /// not reading: the message is dropped, as UDP would) or the connection is gone.
    pub fn send(&self, message: Outbound) -> bool {
        self.queue.try_send(message).is_ok()
    }

    /// The connection now holds an allocation, or is an RFC 6062 data connection: it
    /// leaves its source's unauthenticated count (at once, before the answer that
    /// says so is written) and the unauthenticated timeout no longer applies.
    pub fn authenticated(&self) {
        self.source.authenticate();
    }
}

/// How the event loop reaches one of its TCP/TLS connections.
#[derive(Debug)]
pub enum StreamHandle {
    /// Served by the loop itself, in this slot of its connections.
    Served(usize),
    /// Served by its own task (an RFC 6062 data connection), through its queue.
    Task(Client),
    /// An RFC 6062 data connection the loop splices to its peer, in this slot of its
    /// splices: raw bytes only, nothing more for the core to send it.
    Spliced(usize),
}

/// What connections tell the event loop.
#[derive(Debug)]
pub enum StreamEvent {
    /// A connection is up; send to it through `outbound`.
    Opened {
        /// Its 5-tuple.
        five_tuple: FiveTuple,
        /// Its outbound queue.
        client: Client,
    },
    /// A connection whose first message chose this loop's worker: from now on the loop
    /// serves it (see the `stream_conn` module).
    Adopt(Box<super::stream_conn::Handover>),
    /// A whole STUN message or ChannelData frame arrived.
    Frame {
        /// From which connection.
        five_tuple: FiveTuple,
        /// The framed bytes.
        frame: Vec<u8>,
    },
    /// The connection is gone: its allocation goes with it (RFC 8656 §3.1).
    Closed {
        /// Which connection.
        five_tuple: FiveTuple,
    },
    /// RFC 6062: a peer connected to a TCP allocation's relay address.
    PeerIncoming {
        /// The allocation.
        allocation: crate::turn::AllocationId,
        /// The peer's connection.
        stream: TcpStream,
        /// The peer's address.
        peer: std::net::SocketAddr,
    },
    /// RFC 6062: the outcome of connecting to a peer for a Connect request.
    PeerConnected {
        /// The connection id the core gave it.
        connection: crate::turn::ConnectionId,
        /// The connection, or why there is none.
        stream: std::io::Result<TcpStream>,
    },
}
