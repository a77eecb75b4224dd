//! TCP relay allocations (RFC 6062): Connect to a peer, ConnectionAttempt for inbound
//! peer connections, and ConnectionBind of a client's data connection. The core only
//! decides; the shell opens, accepts and splices the TCP connections it is told about.

use super::answer::Auth;
use super::output::Output;
use super::{AllocationId, ConnectionId, FiveTuple, PeerAddr, Rng};
use crate::stun::attributes::ConnectionId as ConnectionIdAttr;
use crate::stun::raw::{Attributes, Header, ATTR_CONNECTION_ID, MAGIC_COOKIE};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use stun_codec::{Method, TransactionId};

/// RFC 6062 §4.3: Connect.
pub fn connect_method() -> Method {
    Method::from(0x0A_u8)
}
/// The worker (of `workers`) that holds connection `id`.
pub fn worker_of_connection(id: ConnectionId, workers: u32) -> u32 {
    id.0 % workers.max(1)
}

/// RFC 6062 §4.4: ConnectionBind.
pub fn connection_bind_method() -> Method {
    Method::from(0x0B_u8)
}
/// RFC 6062 §4.5: ConnectionAttempt.
pub fn connection_attempt_method() -> Method {
    Method::from(0x0C_u8)
}

/// A STUN request's message type is its method with both class bits clear.
const CLASS_BITS: u16 = 0x0110;

/// The CONNECTION-ID of a ConnectionBind request, if `message` is one: read in place,
/// so the shell can route a new connection's first message to the worker that holds
/// the peer connection before any core sees it.
pub fn connection_bind_target(message: &[u8]) -> Option<ConnectionId> {
    let header = Header::parse(message)?;
    let method = connection_bind_method().as_u16();
    if header.cookie != MAGIC_COOKIE || header.message_type & CLASS_BITS != 0 || header.method() != method {
        return None;
    }
    Attributes::new(message).map_while(Result::ok).find(|a| a.kind == ATTR_CONNECTION_ID).and_then(|a| {
        let value: [u8; 4] = a.value.try_into().ok()?;
        Some(ConnectionId(u32::from_be_bytes(value)))
    })
}

/// RFC 6062 §5.3: a peer connection not bound within 30 seconds is closed.
pub const CONNECTION_BIND_TIMEOUT: Duration = Duration::from_secs(30);
/// Connect requests of one allocation in progress at once (each holds a socket
/// connecting for up to the shell's connect timeout); more get 486.
pub const MAX_CONNECTING_PER_ALLOCATION: usize = 8;
/// Peer connections of one worker not yet bound to a data connection (connecting,
/// or waiting for ConnectionBind), over all its allocations: more Connects get 508
/// and more inbound peer connections are closed. With `permissions-per-allocation`
/// bounding each allocation, a client cannot make the server hold thousands of
/// half-open connections.
pub const MAX_UNBOUND_PER_WORKER: usize = 1024;

/// Where a peer connection stands.
#[derive(Debug)]
pub(crate) enum ConnectionState {
    /// The shell is connecting on behalf of a Connect request, to be answered on
    /// `five_tuple`.
    Connecting {
        /// The control connection the Connect came on.
        five_tuple: FiveTuple,
        /// The Connect's transaction.
        transaction_id: TransactionId,
        /// Who asked, to protect the answer.
        auth: Auth,
    },
    /// Connected (or accepted); waiting for the client's ConnectionBind until `expires`.
    Waiting {
        /// The ConnectionBind deadline.
        expires: Instant,
    },
    /// Spliced to a client data connection.
    Bound {
        /// The client's data connection.
        data: FiveTuple,
    },
}

/// A TCP connection between a TCP allocation's relay address and a peer.
#[derive(Debug)]
pub(crate) struct PeerConnection {
    /// The TCP allocation it belongs to.
    pub allocation: AllocationId,
    /// The peer.
    pub peer: PeerAddr,
    /// Where it stands.
    pub state: ConnectionState,
}

/// The CONNECTION-ID attribute naming `id`.
pub(crate) fn connection_id_attr(id: ConnectionId) -> ConnectionIdAttr {
    crate::stun::attributes::Opaque(id.0.to_be_bytes().to_vec())
}

/// One worker's RFC 6062 peer connections, and the client data connections bound to
/// them. Bounded: [`MAX_UNBOUND_PER_WORKER`] unbound ones, and bound ones by the
/// per-allocation permission quota.
#[derive(Debug, Default)]
pub(crate) struct PeerConnections {
    by_id: HashMap<ConnectionId, PeerConnection>,
    by_data: HashMap<FiveTuple, ConnectionId>,
}

impl PeerConnections {
    /// A fresh, unpredictable connection id that names worker `worker` of `workers`
    /// ([`worker_of_connection`]): the client's ConnectionBind arrives on a new TCP
    /// connection, which the shell must hand to the worker holding the peer connection.
    pub fn new_id(&self, rng: &mut dyn Rng, (worker, workers): (u32, u32)) -> ConnectionId {
        let workers = workers.max(1);
        loop {
            let random = rng.next_u32();
            let Some(id) = (random - random % workers).checked_add(worker % workers).map(ConnectionId) else {
                continue;
            };
            if id.0 != 0 && worker_of_connection(id, workers) == worker && !self.by_id.contains_key(&id) {
                return id;
            }
        }
    }

    /// A connection by id.
    pub fn get(&self, id: ConnectionId) -> Option<&PeerConnection> {
        self.by_id.get(&id)
    }

    /// A connection by id, to change.
    pub fn get_mut(&mut self, id: ConnectionId) -> Option<&mut PeerConnection> {
        self.by_id.get_mut(&id)
    }

    /// Adds a connection.
    pub fn insert(&mut self, id: ConnectionId, connection: PeerConnection) {
        self.by_id.insert(id, connection);
    }

    /// Forgets a connection that never got going (a failed Connect).
    pub fn forget(&mut self, id: ConnectionId) {
        self.by_id.remove(&id);
    }

    /// Whether the allocation already has a connection to `peer` (446).
    pub fn exists(&self, allocation: AllocationId, peer: PeerAddr) -> bool {
        self.by_id.values().any(|c| c.allocation == allocation && c.peer == peer)
    }

    /// Connections of an allocation.
    pub fn count_of(&self, allocation: AllocationId) -> usize {
        self.by_id.values().filter(|c| c.allocation == allocation).count()
    }

    /// Connects of an allocation in progress.
    pub fn connecting_of(&self, allocation: AllocationId) -> usize {
        let connecting = |c: &&PeerConnection| matches!(c.state, ConnectionState::Connecting { .. });
        self.by_id.values().filter(|c| c.allocation == allocation).filter(connecting).count()
    }

    /// Connections not spliced to a data connection, over the worker.
    pub fn unbound(&self) -> usize {
        self.by_id.values().filter(|c| !matches!(c.state, ConnectionState::Bound { .. })).count()
    }

    /// Whether `five_tuple` is a data connection already.
    pub fn is_data(&self, five_tuple: &FiveTuple) -> bool {
        self.by_data.contains_key(five_tuple)
    }

    /// The peer connection a data connection is spliced to.
    pub fn of_data(&self, five_tuple: &FiveTuple) -> Option<ConnectionId> {
        self.by_data.get(five_tuple).copied()
    }

    /// Splices `data` to connection `id`.
    pub fn bind(&mut self, id: ConnectionId, data: FiveTuple) {
        if let Some(entry) = self.by_id.get_mut(&id) {
            entry.state = ConnectionState::Bound { data };
            self.by_data.insert(data, id);
        }
    }

    /// The connections of an allocation.
    pub fn of_allocation(&self, allocation: AllocationId) -> Vec<ConnectionId> {
        self.by_id.iter().filter(|(_, c)| c.allocation == allocation).map(|(id, _)| *id).collect()
    }

    /// Connections left unbound past their deadline.
    pub fn expired(&self, now: Instant) -> Vec<ConnectionId> {
        let expired = |c: &PeerConnection| matches!(c.state, ConnectionState::Waiting { expires } if expires <= now);
        self.by_id.iter().filter(|(_, c)| expired(c)).map(|(id, _)| *id).collect()
    }

    /// The earliest ConnectionBind deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.by_id
            .values()
            .filter_map(|c| match c.state {
                ConnectionState::Waiting { expires } => Some(expires),
                _ => None,
            })
            .min()
    }

    /// Forgets a connection; the output that tells the shell to close it.
    pub fn close(&mut self, id: ConnectionId) -> Option<Output> {
        let entry = self.by_id.remove(&id)?;
        let data = match entry.state {
            ConnectionState::Bound { data } => {
                self.by_data.remove(&data);
                Some(data)
            }
            _ => None,
        };
        Some(Output::ClosePeerConnection { connection: id, data })
    }
}
