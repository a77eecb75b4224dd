//! What the core asks of the shell ([`Output`]) and tells operators ([`Event`]).

use super::allocation::Traffic;
use super::stats::AuthFailure;
use super::{AllocationId, ConnectionId, FiveTuple};
use std::net::SocketAddr;
use std::time::Duration;

/// Something the shell must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    /// Send `bytes` to the client on `to`.
    Transmit {
        /// The client 5-tuple to send on.
        to: FiveTuple,
        /// The encoded STUN message.
        bytes: Vec<u8>,
    },
    /// Open a UDP relay socket bound to `local` (or, with `tcp`, a TCP listener for
    /// peer connections: RFC 6062), then call [`super::Server::handle_relay_bound`] with the
    /// outcome. A dual-stack allocation asks for two, one per family.
    BindRelay {
        /// The allocation the socket belongs to.
        allocation: AllocationId,
        /// The address (with port) to bind.
        local: SocketAddr,
        /// Set the DF bit on outgoing datagrams (RFC 8656 §14.8 DONT-FRAGMENT).
        dont_fragment: bool,
        /// A TCP relay (RFC 6062) rather than UDP.
        tcp: bool,
    },
    /// RFC 6062: open a TCP connection from `local` (the relay address) to `peer`, then
    /// call [`super::Server::handle_peer_connected`].
    ConnectPeer {
        /// The connection's id.
        connection: ConnectionId,
        /// Its allocation.
        allocation: AllocationId,
        /// The relayed address to connect from.
        local: SocketAddr,
        /// The peer.
        peer: SocketAddr,
    },
    /// RFC 6062: splice the client data connection `data` to peer connection
    /// `connection`; from now on it carries raw bytes both ways.
    BindData {
        /// The peer connection.
        connection: ConnectionId,
        /// The client's data connection.
        data: FiveTuple,
    },
    /// RFC 6062: close a peer connection (and its data connection, if bound).
    ClosePeerConnection {
        /// Which.
        connection: ConnectionId,
        /// The client data connection spliced to it, if any.
        data: Option<FiveTuple>,
    },
    /// Close the relay sockets of an allocation that is gone.
    CloseRelay {
        /// The allocation.
        allocation: AllocationId,
    },
    /// RFC 8016: fetch an allocation another worker owns for a client that moved
    /// here, then call [`super::Server::handle_handover`] with what came back.
    FetchAllocation(Fetch),
    /// Look up `username` in `realm` (the authentication webhook), then call
    /// [`super::Server::handle_lookup`] with the answer. Asked once per user while a
    /// lookup is in flight; requests that need it wait in the core meanwhile.
    LookupUser {
        /// The realm the user authenticates in.
        realm: String,
        /// The username no local source knows.
        username: String,
    },
    /// Something worth logging or streaming to operators.
    Event(Event),
}

/// What [`Output::FetchAllocation`] asks of the owning worker: give up allocation `id`
/// if a ticket issued after `moves` moves, presented by `username`, may move it
/// (see [`super::Server::export_allocation`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    /// The worker that owns it.
    pub owner: u32,
    /// The allocation.
    pub id: AllocationId,
    /// The moves the ticket was issued after.
    pub moves: u16,
    /// The user the Refresh authenticated as, in the tenant it came to.
    pub user: super::tenant::UserKey,
}

/// Why an allocation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Its lifetime ran out.
    Expired,
    /// The client sent Refresh with LIFETIME 0.
    Deleted,
    /// The shell closed it (TCP connection closed, admin action).
    Closed,
}

/// Events for logs, metrics and the admin channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An allocation was created.
    AllocationCreated {
        /// Its id.
        id: AllocationId,
        /// The client.
        five_tuple: FiveTuple,
        /// The user.
        username: String,
        /// The advertised relay address.
        relay: SocketAddr,
        /// Its lifetime.
        lifetime: Duration,
    },
    /// An allocation was refreshed.
    AllocationRefreshed {
        /// Its id.
        id: AllocationId,
        /// The new lifetime.
        lifetime: Duration,
    },
    /// An allocation ended.
    AllocationEnded {
        /// Its id.
        id: AllocationId,
        /// The client.
        five_tuple: FiveTuple,
        /// The (first) advertised relay address, so that one log line tells who used
        /// which relay port when.
        relay: SocketAddr,
        /// The user.
        username: String,
        /// Why it ended.
        reason: EndReason,
        /// What it relayed.
        traffic: Traffic,
        /// How long it lived.
        duration: Duration,
    },
    /// A request failed authentication.
    AuthFailed {
        /// The client.
        client: SocketAddr,
        /// The tenant it tried to authenticate in.
        tenant: super::TenantId,
        /// Which check failed.
        reason: AuthFailure,
    },
    /// RFC 8016: an allocation moved to a new client 5-tuple.
    AllocationMoved {
        /// Its id.
        id: AllocationId,
        /// The 5-tuple it left.
        from: FiveTuple,
        /// The 5-tuple it is on now.
        to: FiveTuple,
        /// The worker it came from, when it crossed workers.
        from_worker: Option<u32>,
    },
    /// A peer was refused by the peer policy (logged once per allocation).
    PeerDenied {
        /// The allocation.
        id: AllocationId,
        /// The refused peer.
        peer: SocketAddr,
    },
}

/// Why the shell could not bind a relay socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayBindError {
    /// The port is taken by another socket: try another.
    AddrInUse,
    /// Anything else (out of file descriptors, address not local...).
    Other,
}
