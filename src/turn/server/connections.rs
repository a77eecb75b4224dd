//! RFC 6062 on a TCP allocation: Connect to a peer, a peer connecting in
//! (ConnectionAttempt), and ConnectionBind of a client's data connection. The core
//! only decides; the shell opens, accepts and splices the TCP connections.

use super::permissions::PeerCheck;
use super::Server;
use crate::stun::errors;
use crate::stun::message::{self, Message, Protection};
use crate::turn::answer::{Auth, Reject};
use crate::turn::output::Output;
use crate::turn::request;
use crate::turn::stats::DropReason;
use crate::turn::tcp_relay::{
    connect_method, connection_attempt_method, connection_bind_method, connection_id_attr, ConnectionState,
    PeerConnection, CONNECTION_BIND_TIMEOUT, MAX_CONNECTING_PER_ALLOCATION, MAX_UNBOUND_PER_WORKER,
};
use crate::turn::{AllocationId, ConnectionId, FiveTuple, PeerAddr, Transport};
use std::time::Instant;
use stun_codec::rfc5766::attributes::XorPeerAddress;
use stun_codec::{MessageClass, TransactionId};

impl Server {
    /// RFC 6062 §5.2. The answer waits for the shell's [`Server::handle_peer_connected`].
    pub(super) fn connect(&mut self, from: FiveTuple, message: &Message, auth: Auth) -> Result<(), Reject> {
        let id = self.own_allocation(from, &auth)?;
        let bad = || Reject::new(errors::BAD_REQUEST).with_auth(&auth);
        let peer = request::one_peer(message).map_err(|_| bad())?;
        let allocation = self.table.get(id).ok_or_else(bad)?;
        if !allocation.tcp {
            return Err(bad());
        }
        let local = allocation.relay_for(peer.ip()).map(|r| r.bound);
        self.admit_peer(id, peer, PeerCheck::WithPort, &auth)?;
        let local = local.ok_or_else(|| Reject::new(errors::PEER_ADDRESS_FAMILY_MISMATCH).with_auth(&auth))?;
        if self.connections.exists(id, peer) {
            return Err(Reject::new(errors::CONNECTION_ALREADY_EXISTS).with_auth(&auth));
        }
        if self.connections.count_of(id) >= self.config.quotas_of(from.tenant).permissions_per_allocation
            || self.connections.connecting_of(id) >= MAX_CONNECTING_PER_ALLOCATION
        {
            return Err(Reject::new(errors::CONNECTION_QUOTA_REACHED).with_auth(&auth));
        }
        if self.connections.unbound() >= MAX_UNBOUND_PER_WORKER {
            return Err(Reject::new(errors::INSUFFICIENT_CAPACITY).with_auth(&auth));
        }
        let connection = self.connections.new_id(self.rng.as_mut(), self.table.worker());
        let state = ConnectionState::Connecting { five_tuple: from, transaction_id: message.transaction_id(), auth };
        self.connections.insert(connection, PeerConnection { allocation: id, peer, state });
        self.out.push(Output::ConnectPeer { connection, allocation: id, local, peer: peer.get() });
        Ok(())
    }

    /// See [`Server::handle_peer_connected`].
    pub(super) fn peer_connected(&mut self, now: Instant, connection: ConnectionId, connected: bool) {
        let Some(entry) = self.connections.get_mut(connection) else {
            return;
        };
        if !matches!(entry.state, ConnectionState::Connecting { .. }) {
            return;
        }
        let waiting = ConnectionState::Waiting { expires: now + CONNECTION_BIND_TIMEOUT };
        let ConnectionState::Connecting { five_tuple, transaction_id, auth } =
            std::mem::replace(&mut entry.state, waiting)
        else {
            return;
        };
        let (allocation, peer) = (entry.allocation, entry.peer);
        if !connected {
            self.connections.forget(connection);
            let reject = Reject::new(errors::CONNECTION_TIMEOUT_OR_FAILURE).with_auth(&auth);
            self.reject_authenticated(five_tuple, connect_method(), transaction_id, reject);
            return;
        }
        // A connection the client asked for admits the peer back in.
        let max = self.config.quotas_of(five_tuple.tenant).permissions_per_allocation;
        if let Some(a) = self.table.get_mut(allocation) {
            a.permit(peer.ip(), now, max);
        }
        let mut response = Message::new(MessageClass::SuccessResponse, connect_method(), transaction_id);
        response.add_attribute(connection_id_attr(connection));
        self.respond(five_tuple, response, Some(&auth));
    }

    /// See [`Server::handle_peer_incoming`].
    pub(super) fn peer_incoming(
        &mut self,
        now: Instant,
        allocation: AllocationId,
        peer: PeerAddr,
    ) -> Option<ConnectionId> {
        let entry = self.table.get(allocation)?;
        let client = entry.five_tuple;
        let policy = self.config.policy_of(client.tenant);
        if !entry.tcp || !entry.is_permitted(peer.ip(), now) || policy.check_ip(peer.ip()).is_err() {
            self.drop_packet(DropReason::NoPermission);
            return None;
        }
        if self.connections.count_of(allocation) >= self.config.quotas_of(client.tenant).permissions_per_allocation
            || self.connections.unbound() >= MAX_UNBOUND_PER_WORKER
        {
            self.drop_packet(DropReason::Quota);
            return None;
        }
        let connection = self.connections.new_id(self.rng.as_mut(), self.table.worker());
        let state = ConnectionState::Waiting { expires: now + CONNECTION_BIND_TIMEOUT };
        self.connections.insert(connection, PeerConnection { allocation, peer, state });
        let mut tid = [0u8; 12];
        self.rng.fill(&mut tid);
        let mut attempt = Message::new(MessageClass::Indication, connection_attempt_method(), TransactionId::new(tid));
        attempt.add_attribute(XorPeerAddress::new(peer.get()));
        attempt.add_attribute(connection_id_attr(connection));
        if let Some(bytes) = message::encode(attempt, Protection { key: None, fingerprint: true }) {
            self.out.push(Output::Transmit { to: client, bytes });
        }
        Some(connection)
    }

    /// RFC 6062 §5.4: binds the data connection `from` to a waiting peer connection.
    pub(super) fn connection_bind(
        &mut self,
        now: Instant,
        from: FiveTuple,
        message: &Message,
        auth: Auth,
    ) -> Result<(), Reject> {
        let bad = || Reject::new(errors::BAD_REQUEST).with_auth(&auth);
        if from.transport == Transport::Udp || self.connections.is_data(&from) {
            return Err(bad());
        }
        if self.table.id_on(&from).is_some() {
            return Err(bad()); // a control connection cannot become a data connection
        }
        let connection = request::connection_id(message).map_err(|_| bad())?;
        let entry = self.connections.get(connection).ok_or_else(bad)?;
        let waiting = matches!(entry.state, ConnectionState::Waiting { expires } if expires > now);
        if !waiting {
            return Err(bad());
        }
        match self.table.get(entry.allocation) {
            Some(a) if *a.username == *auth.username => {}
            Some(_) => return Err(Reject::new(errors::WRONG_CREDENTIALS).with_auth(&auth)),
            None => return Err(bad()),
        }
        self.connections.bind(connection, from);
        let response = Message::new(MessageClass::SuccessResponse, connection_bind_method(), message.transaction_id());
        // The success goes out on the data connection before it turns into raw bytes.
        self.respond(from, response, Some(&auth));
        self.out.push(Output::BindData { connection, data: from });
        Ok(())
    }
}
