//! TCP relay allocations (RFC 6062): Connect to a peer, ConnectionAttempt for inbound
//! peer connections, and ConnectionBind of a client's data connection. The core only
//! decides; the shell opens, accepts and splices the TCP connections it is told about.

use super::server::{Auth, Output, Reject, Server};
use super::{AllocationId, ConnectionId, FiveTuple, Transport};
use crate::stun::attributes::ConnectionId as ConnectionIdAttr;
use crate::stun::message::{self, Message, Protection};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use stun_codec::rfc5766::attributes::XorPeerAddress;
use stun_codec::{MessageClass, Method, TransactionId};

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
    /// The shell is connecting on behalf of a Connect request.
    Connecting { five_tuple: FiveTuple, transaction_id: TransactionId, auth: Auth },
    /// Connected (or accepted); waiting for the client's ConnectionBind.
    Waiting { expires: Instant },
    /// Spliced to a client data connection.
    Bound { data: FiveTuple },
}

/// A TCP connection between a TCP allocation's relay address and a peer.
#[derive(Debug)]
pub(crate) struct PeerConnection {
    pub allocation: AllocationId,
    pub peer: SocketAddr,
    pub state: ConnectionState,
}

fn connection_id_attr(id: ConnectionId) -> ConnectionIdAttr {
    crate::stun::attributes::Opaque(id.0.to_be_bytes().to_vec())
}

impl Server {
    /// A fresh, unpredictable connection id that names this worker ([`worker_of_connection`]):
    /// the client's ConnectionBind arrives on a new TCP connection, which the shell must
    /// hand to the worker holding the peer connection.
    fn new_connection_id(&mut self) -> ConnectionId {
        let workers = self.workers.max(1);
        loop {
            let random = self.rng.next_u32();
            let Some(id) = (random - random % workers).checked_add(self.worker % workers).map(ConnectionId) else {
                continue;
            };
            if id.0 != 0 && worker_of_connection(id, workers) == self.worker && !self.connections.contains_key(&id) {
                return id;
            }
        }
    }

    fn connection_count(&self, allocation: AllocationId) -> usize {
        self.connections.values().filter(|c| c.allocation == allocation).count()
    }

    fn connecting_count(&self, allocation: AllocationId) -> usize {
        let connecting = |c: &&PeerConnection| matches!(c.state, ConnectionState::Connecting { .. });
        self.connections.values().filter(|c| c.allocation == allocation).filter(connecting).count()
    }

    fn unbound_count(&self) -> usize {
        self.connections.values().filter(|c| !matches!(c.state, ConnectionState::Bound { .. })).count()
    }

    /// RFC 6062 §5.2. The answer waits for the shell's [`Server::handle_peer_connected`].
    pub(crate) fn connect(&mut self, from: FiveTuple, request: &Message, auth: Auth) -> Result<(), Reject> {
        let id = self.own_allocation(from, &auth)?;
        let bad = || Reject::new(400, "Bad Request").with_auth(&auth);
        let peer = request.get_attribute::<XorPeerAddress>().map(|p| super::policy::unmapped(p.address()));
        let peer = peer.ok_or_else(bad)?;
        let allocation = self.allocations.get(&id).ok_or_else(bad)?;
        if !allocation.tcp {
            return Err(bad());
        }
        let local = allocation.relay_for(peer.ip()).map(|r| r.bound);
        self.admit_peer(id, peer, true, &auth)?;
        let local = local.ok_or_else(|| Reject::new(443, "Peer Address Family Mismatch").with_auth(&auth))?;
        if self.connections.values().any(|c| c.allocation == id && c.peer == peer) {
            return Err(Reject::new(446, "Connection Already Exists").with_auth(&auth));
        }
        if self.connection_count(id) >= self.config.quotas.permissions_per_allocation
            || self.connecting_count(id) >= MAX_CONNECTING_PER_ALLOCATION
        {
            return Err(Reject::new(486, "Connection Quota Reached").with_auth(&auth));
        }
        if self.unbound_count() >= MAX_UNBOUND_PER_WORKER {
            return Err(Reject::new(508, "Insufficient Capacity").with_auth(&auth));
        }
        let connection = self.new_connection_id();
        let state = ConnectionState::Connecting { five_tuple: from, transaction_id: request.transaction_id(), auth };
        self.connections.insert(connection, PeerConnection { allocation: id, peer, state });
        self.outputs.push_back(Output::ConnectPeer { connection, allocation: id, local, peer });
        Ok(())
    }

    /// The shell's answer to [`Output::ConnectPeer`]: whether the TCP connection to the
    /// peer was established (RFC 6062 §5.2: 447 when not).
    pub fn handle_peer_connected(&mut self, now: Instant, connection: ConnectionId, connected: bool) {
        let Some(entry) = self.connections.get_mut(&connection) else {
            return;
        };
        let ConnectionState::Connecting { five_tuple, transaction_id, .. } = &entry.state else {
            return;
        };
        let (five_tuple, transaction_id) = (*five_tuple, *transaction_id);
        let waiting = ConnectionState::Waiting { expires: now + CONNECTION_BIND_TIMEOUT };
        let ConnectionState::Connecting { auth, .. } = std::mem::replace(&mut entry.state, waiting) else {
            return;
        };
        let (allocation, peer) = (entry.allocation, entry.peer);
        if !connected {
            self.connections.remove(&connection);
            let reject = Reject::new(447, "Connection Timeout or Failure").with_auth(&auth);
            self.reject(five_tuple, connect_method(), transaction_id, reject);
            return;
        }
        // A connection the client asked for admits the peer back in.
        let max = self.config.quotas.permissions_per_allocation;
        if let Some(a) = self.allocations.get_mut(&allocation) {
            a.permit(peer.ip(), now, max);
        }
        let mut response = Message::new(MessageClass::SuccessResponse, connect_method(), transaction_id);
        response.add_attribute(connection_id_attr(connection));
        self.respond(five_tuple, response, Some(&auth));
    }

    /// A peer connected to a TCP allocation's relay address. Returns the connection id
    /// to keep it under, after telling the client with a ConnectionAttempt indication;
    /// `None` (close it) without a permission for the peer (RFC 6062 §5.3).
    pub fn handle_peer_incoming(
        &mut self,
        now: Instant,
        allocation: AllocationId,
        peer: SocketAddr,
    ) -> Option<ConnectionId> {
        let peer = super::policy::unmapped(peer);
        let entry = self.allocations.get(&allocation)?;
        let client = entry.five_tuple;
        if !entry.tcp || !entry.is_permitted(peer.ip(), now) || self.config.policy.check_ip(peer.ip()).is_err() {
            self.stats.drop(super::stats::DropReason::NoPermission);
            return None;
        }
        if self.connection_count(allocation) >= self.config.quotas.permissions_per_allocation
            || self.unbound_count() >= MAX_UNBOUND_PER_WORKER
        {
            self.stats.drop(super::stats::DropReason::Quota);
            return None;
        }
        let connection = self.new_connection_id();
        let state = ConnectionState::Waiting { expires: now + CONNECTION_BIND_TIMEOUT };
        self.connections.insert(connection, PeerConnection { allocation, peer, state });
        let tid = TransactionId::new(self.rng_transaction_id());
        let mut attempt = Message::new(MessageClass::Indication, connection_attempt_method(), tid);
        attempt.add_attribute(XorPeerAddress::new(peer));
        attempt.add_attribute(connection_id_attr(connection));
        if let Some(bytes) = message::encode(attempt, Protection { key: None, fingerprint: true }) {
            self.outputs.push_back(Output::Transmit { to: client, bytes });
        }
        Some(connection)
    }

    fn rng_transaction_id(&mut self) -> [u8; 12] {
        let mut tid = [0u8; 12];
        self.rng.fill(&mut tid);
        tid
    }

    /// RFC 6062 §5.4: binds the data connection `from` to a waiting peer connection.
    pub(crate) fn connection_bind(
        &mut self,
        now: Instant,
        from: FiveTuple,
        request: &Message,
        auth: Auth,
    ) -> Result<(), Reject> {
        let bad = || Reject::new(400, "Bad Request").with_auth(&auth);
        if from.transport == Transport::Udp || self.data_connections.contains_key(&from) {
            return Err(bad());
        }
        if self.by_five_tuple.contains_key(&from) {
            return Err(bad()); // a control connection cannot become a data connection
        }
        let value = request.get_attribute::<ConnectionIdAttr>().map(|c| c.value().to_vec());
        let id = value.and_then(|v| <[u8; 4]>::try_from(v.as_slice()).ok()).map(u32::from_be_bytes);
        let connection = ConnectionId(id.ok_or_else(bad)?);
        let entry = self.connections.get(&connection).ok_or_else(bad)?;
        let waiting = matches!(entry.state, ConnectionState::Waiting { expires } if expires > now);
        if !waiting {
            return Err(bad());
        }
        match self.allocations.get(&entry.allocation) {
            Some(a) if *a.username == *auth.username => {}
            Some(_) => return Err(Reject::new(441, "Wrong Credentials").with_auth(&auth)),
            None => return Err(bad()),
        }
        if let Some(entry) = self.connections.get_mut(&connection) {
            entry.state = ConnectionState::Bound { data: from };
        }
        self.data_connections.insert(from, connection);
        let response = Message::new(MessageClass::SuccessResponse, connection_bind_method(), request.transaction_id());
        // The success goes out on the data connection before it turns into raw bytes.
        self.respond(from, response, Some(&auth));
        self.outputs.push_back(Output::BindData { connection, data: from });
        Ok(())
    }

    /// Closes peer connections left unbound past their deadline.
    pub(crate) fn expire_connections(&mut self, now: Instant) {
        let expired: Vec<ConnectionId> = self
            .connections
            .iter()
            .filter(|(_, c)| matches!(c.state, ConnectionState::Waiting { expires } if expires <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.close_connection(id);
        }
    }

    /// The earliest ConnectionBind deadline.
    pub(crate) fn next_connection_deadline(&self) -> Option<Instant> {
        self.connections
            .values()
            .filter_map(|c| match c.state {
                ConnectionState::Waiting { expires } => Some(expires),
                _ => None,
            })
            .min()
    }

    /// Forgets a peer connection and tells the shell to close it.
    pub(crate) fn close_connection(&mut self, id: ConnectionId) {
        if let Some(entry) = self.connections.remove(&id) {
            let data = match entry.state {
                ConnectionState::Bound { data } => {
                    self.data_connections.remove(&data);
                    Some(data)
                }
                _ => None,
            };
            self.outputs.push_back(Output::ClosePeerConnection { connection: id, data });
        }
    }

    /// Closes every peer connection of an allocation that is going away.
    pub(crate) fn close_connections_of(&mut self, allocation: AllocationId) {
        let ids: Vec<ConnectionId> =
            self.connections.iter().filter(|(_, c)| c.allocation == allocation).map(|(id, _)| *id).collect();
        for id in ids {
            self.close_connection(id);
        }
    }
}
