//! RFC 6062 (TCP allocations) in the loop: TCP relay listeners, connecting to peers,
//! and splicing a peer connection onto the client's data connection once bound. The
//! sockets and tasks themselves are in [`super::tcp_relay`], the loop's own splices in
//! [`super::stream_splice`].

use super::event_loop::EventLoop;
use super::stream::{Outbound, StreamEvent, StreamHandle};
use super::tcp_relay;
use crate::turn::PeerAddr;
use crate::turn::RelayBindError;
use crate::turn::{AllocationId, ConnectionId, FiveTuple};
use std::io;
use std::net::SocketAddr;
use std::time::Instant;
use tokio::net::TcpStream;
use tracing::{debug, warn};

impl EventLoop {
    /// RFC 6062: a TCP listener on the relayed address, accepting peer connections.
    pub(super) fn open_tcp_relay(&mut self, id: AllocationId, local: SocketAddr) -> Result<SocketAddr, RelayBindError> {
        let (listener, bound) = tcp_relay::listen(local).map_err(|e| {
            if e.kind() == io::ErrorKind::AddrInUse {
                RelayBindError::AddrInUse
            } else {
                warn!(error = %e, %local, "cannot open TCP relay listener");
                RelayBindError::Other
            }
        })?;
        let events = self.stream_events.clone();
        self.tcp_relays.insert(id, tokio::spawn(tcp_relay::accept_peers(listener, id, events)));
        Ok(bound)
    }

    /// Stops accepting peer connections for `id` (its allocation ended).
    pub(super) fn close_tcp_relay(&mut self, id: AllocationId) {
        if let Some(accepting) = self.tcp_relays.remove(&id) {
            accepting.abort();
        }
    }

    /// A Connect request: connects to `peer` from `local` in a task of its own, which
    /// reports back as [`StreamEvent::PeerConnected`].
    pub(super) fn spawn_connect(&mut self, connection: ConnectionId, local: SocketAddr, peer: SocketAddr) {
        let events = self.stream_events.clone();
        tokio::spawn(async move {
            let stream = tcp_relay::connect(local, peer).await;
            let _ = events.send(StreamEvent::PeerConnected { connection, stream }).await;
        });
    }

    /// A peer connected to a TCP relay listener: the core learns of it and waits for
    /// the client's ConnectionBind.
    pub(super) fn peer_incoming(&mut self, allocation: AllocationId, stream: TcpStream, peer: SocketAddr) {
        if let Some(connection) = self.core.handle_peer_incoming(Instant::now(), allocation, PeerAddr::new(peer)) {
            self.peer_streams.insert(connection, stream);
        }
        self.drain_outputs();
    }

    /// The outcome of a [`Self::spawn_connect`].
    pub(super) fn peer_connected(&mut self, connection: ConnectionId, stream: io::Result<TcpStream>) {
        let connected = match stream {
            Ok(stream) => {
                self.peer_streams.insert(connection, stream);
                true
            }
            Err(e) => {
                debug!(error = %e, "connect to peer failed");
                false
            }
        };
        self.core.handle_peer_connected(Instant::now(), connection, connected);
        self.drain_outputs();
    }

    /// A ConnectionBind succeeded: the peer connection is spliced onto the client's
    /// data connection `data`, by the loop when it serves that connection, else by its
    /// task; false when either is gone (the core then closes it).
    pub(super) fn splice(&mut self, connection: ConnectionId, data: FiveTuple) -> bool {
        let spliced = match (self.peer_streams.remove(&connection), self.streams.get(&data)) {
            (Some(peer), Some(StreamHandle::Served(slot))) => {
                let slot = *slot;
                self.splice_served(slot, peer)
            }
            // Queued behind the ConnectionBind success already sent to it; a
            // bound data connection counts as authenticated.
            (Some(peer), Some(StreamHandle::Task(client))) => {
                let queued = client.send(Outbound::Splice(peer));
                if queued {
                    client.authenticated();
                }
                queued
            }
            _ => false,
        };
        spliced
    }

    /// A peer connection ended, with its spliced data connection if it had one.
    pub(super) fn close_peer_stream(&mut self, connection: ConnectionId, data: Option<FiveTuple>) {
        self.peer_streams.remove(&connection);
        if let Some(data) = data {
            match self.streams.get(&data) {
                Some(StreamHandle::Spliced(slot)) => {
                    let slot = *slot;
                    self.close_splice(slot, "closed by server", false);
                }
                // Dropping its queue ends the task's splice and closes both sides.
                _ => drop(self.streams.remove(&data)),
            }
        }
    }
}
