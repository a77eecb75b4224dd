//! The TURN core's whole contract: [`Server`] and every way in and out of it.
//!
//! # The run loop
//!
//! A shell owns one `Server` per worker thread and does, in a loop:
//!
//! 1. Receive from a socket, then call the matching `handle_*` with the time it read
//!    (`now`), the 5-tuple and the bytes. [`Server::handle_client_packet`] and
//!    [`Server::handle_peer_packet`] are the relay hot path: they return what to send
//!    at once, as a range of the receive buffer. A client packet the hot path does
//!    not take comes back as [`Received::Request`]: call [`Server::handle_request`]
//!    with the workers' shared ledger.
//! 2. Drain [`Server::poll_output`] until it returns `None` (or hand the core to
//!    [`super::effects::carry_out`], which does that): transmit, bind or close relay
//!    sockets, report what became of each (`handle_relay_bound`, `handle_peer_*`).
//! 3. Sleep until [`Server::poll_timeout`] (or the next packet); when that instant
//!    passes, call [`Server::handle_timeout`], then drain again.
//!
//! The core never reads a clock, owns no socket and holds no lock. What every worker
//! must count together (relay ports, quotas, reservations, the 401 limiter) is a
//! [`super::Ledger`] the shell owns and shares; the entry points that may need it take
//! it as `&impl Shared`, through which the core runs each group of ledger operations
//! that must happen together, so the shell's lock is held for that span only (never
//! while a request is decoded, authenticated or answered). None of the hot-path entry
//! points takes it.
//!
//! Request handling lives in the child modules (`requests`, `authenticate`,
//! `allocate`, `permissions`, `connections`); this file is the interface.

mod allocate;
mod authenticate;
mod connections;
mod lookup;
mod mobility;
mod permissions;
mod requests;
mod upgrade;

use super::allocation::Allocation;
use super::auth::NonceCodec;
use super::config::CoreConfig;
use super::ledger::Shared;
use super::lookup::{LookupResult, Lookups};
use super::outbox::Outbox;
use super::output::{EndReason, Event, Output, RelayBindError};
use super::relay::{IcmpError, ToClient, ToPeer};
use super::revocations::{Revocations, RevokeError};
use super::stats::{DropReason, Stats};
use super::table::AllocationTable;
use super::tcp_relay::PeerConnections;
use super::{AllocationId, ConnectionId, FiveTuple, PeerAddr, Rng};
use allocate::PendingAllocate;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::time::{Duration, Instant};

/// RFC 8656 §7.2: the default allocation lifetime.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);
/// STUN messages other than Send indications larger than this are dropped before
/// decoding: no legitimate request comes close, and decoding allocates.
pub const MAX_CONTROL_MESSAGE: usize = 4096;
/// An answer to a request from an unverified UDP source is at most this many times the
/// request's size (a reflector that multiplies bytes is worth spoofing for).
pub const AMPLIFICATION_LIMIT: usize = 3;
/// RFC 8656 §7.2: how long a RESERVATION-TOKEN holds its port.
pub const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);

/// What [`Server::handle_client_packet`] made of a client's packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// ChannelData or a Send indication to relay: send `payload` of the packet from
    /// the allocation's relay socket.
    Relay(ToPeer),
    /// Answered (see [`Server::poll_output`]) or dropped and counted.
    Handled,
    /// A STUN request: pass it to [`Server::handle_request`] with the ledger.
    Request,
}

/// Whether new allocations are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    /// Serving.
    Open,
    /// Draining: new Allocates get 300 Try Alternate naming this server.
    Redirect(SocketAddr),
    /// Draining with nowhere to send clients: new Allocates get 508.
    Refuse,
}

/// The TURN server core: one per worker thread. Its allocations, relay path and timers
/// are its own; see the module documentation for how to drive it.
pub struct Server {
    config: CoreConfig,
    nonces: NonceCodec,
    /// Revoked users and credentials; kept across reloads.
    revocations: Revocations,
    /// The authentication webhook's answers and the requests waiting for them.
    lookups: Lookups,
    rng: Box<dyn Rng + Send>,
    table: AllocationTable,
    /// Allocates waiting for the shell to bind their relay sockets.
    pending: HashMap<AllocationId, PendingAllocate>,
    /// Expiries of the reservations this worker minted (the ledger holds them), so its
    /// timer wakes to release their ports.
    reservation_expiries: BinaryHeap<Reverse<(Instant, u64)>>,
    /// RFC 6062 peer connections of TCP allocations.
    connections: PeerConnections,
    out: Outbox,
    admission: Admission,
    /// The `now` of the input being handled, for code deep in a request's handling.
    last_now: Instant,
    /// Seals and opens RFC 8016 MOBILITY-TICKETs (the same keys on every worker).
    tickets: super::mobility::TicketCodec,
    /// Refreshes waiting for an allocation another worker is handing over, by its id
    /// (at most [`mobility::MOVES_IN_FLIGHT`]).
    moving: HashMap<AllocationId, mobility::PendingMove>,
    /// The fleet's other nodes, as the cluster task last reported them.
    fleet: super::fleet::FleetView,
    /// The fleet's REST secrets from Redis (empty without them): kept here so a
    /// reload, which brings new credentials, keeps them.
    fleet_secrets: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("allocations", &self.table.len()).field("stats", &self.out.stats).finish()
    }
}

impl Server {
    /// A single-worker server with `config` and its own `shared` ledger, drawing
    /// randomness (the nonce secret included) from `rng`; `now` is the nonce epoch.
    pub fn new(config: CoreConfig, mut rng: Box<dyn Rng + Send>, now: Instant, shared: &impl Shared) -> Self {
        let mut secret = [0u8; 32];
        rng.fill(&mut secret);
        Server::new_worker(config, rng, now, shared, secret, 0, 1)
    }

    /// Worker `worker` (from 0) of `workers`. Ports, reservations, quotas and the 401
    /// limiter are counted in `shared`, the one ledger of every worker. Give every
    /// worker the same `nonce_secret` (32 bytes from a CSPRNG) so a nonce one issues
    /// verifies on another; the first worker's `now` becomes the nonce epoch of all.
    /// The ledger's limits are brought in line with `config`, as on a reload. A
    /// `worker` out of range is taken modulo `workers`, which keeps ids unique.
    pub fn new_worker(
        config: CoreConfig,
        mut rng: Box<dyn Rng + Send>,
        now: Instant,
        shared: &impl Shared,
        nonce_secret: [u8; 32],
        worker: u32,
        workers: u32,
    ) -> Self {
        let workers = workers.max(1);
        let mut config = config;
        let (live_ports, epoch) = shared.with(|ledger| {
            ledger.reconfigure(&config);
            (ledger.live_ports(), ledger.nonce_epoch(now))
        });
        for policy in config.policies_mut() {
            policy.watch_relay_ports(live_ports.clone());
        }
        let out = Outbox::new(rng.next_u32(), rng.next_u64());
        Server {
            nonces: NonceCodec::new(&nonce_secret, config.nonce_lifetime, epoch),
            tickets: super::mobility::TicketCodec::new(&nonce_secret, epoch),
            moving: HashMap::new(),
            fleet: super::fleet::FleetView::default(),
            fleet_secrets: Vec::new(),
            revocations: Revocations::default(),
            lookups: Lookups::new(config.lookup.unwrap_or_default()),
            table: AllocationTable::new(worker % workers, workers),
            pending: HashMap::new(),
            reservation_expiries: BinaryHeap::new(),
            connections: PeerConnections::default(),
            out,
            admission: Admission::Open,
            last_now: now,
            config,
            rng,
        }
    }

    /// Replaces users, secrets, quotas, policy, tenants and lifetimes (a config
    /// reload). Permissions and channels to peers the new policy (of the allocation's
    /// tenant) refuses are revoked, and allocations of newly denied clients and of
    /// removed tenants end; other tenants' allocations are left as they are. The
    /// shared limits change as [`super::Ledger::reconfigure`] says: every worker
    /// applies the same reload.
    /// The webhook's cached answers are flushed.
    pub fn reconfigure(&mut self, config: CoreConfig, shared: &impl Shared) {
        let mut config = config;
        for allocation in self.table.iter_mut() {
            let policy = config.policy_of(allocation.five_tuple.tenant);
            allocation.revoke(|peer| !policy.keeps_permission(peer.ip()));
        }
        let live_ports = shared.with(|ledger| {
            ledger.reconfigure(&config);
            ledger.live_ports()
        });
        for policy in config.policies_mut() {
            policy.watch_relay_ports(live_ports.clone());
        }
        let newly_denied = !config.denied_clients.is_empty() && config.denied_clients != self.config.denied_clients;
        self.nonces.set_lifetime(config.nonce_lifetime);
        self.lookups.reconfigure(config.lookup.unwrap_or_default());
        self.config = config;
        self.config.credentials.set_fleet_secrets(&self.fleet_secrets);
        let gone = self.table.ids_where(|a| {
            self.config.tenant(a.five_tuple.tenant).is_none()
                || (newly_denied && self.config.is_denied_client(a.five_tuple.client))
        });
        for id in gone {
            self.remove_allocation(id, self.last_now, EndReason::Closed, shared);
        }
    }

    /// The host's interface addresses, read by the shell at start, on reload and when
    /// they change: with the configured relay addresses they are the host the peer
    /// policy keeps peers away from, and they give the relay address of a family the
    /// request did not come over. Channels to what is now the host's are rechecked.
    pub fn set_host_addresses(&mut self, interfaces: &[IpAddr]) {
        self.config.set_host_addresses(interfaces);
        for allocation in self.table.iter_mut() {
            let policy = self.config.policy_of(allocation.five_tuple.tenant);
            allocation.recheck_channels(|peer| policy.check(peer).ok().map(|()| policy.is_host(peer.ip())));
        }
    }

    /// Starts draining: existing allocations keep relaying and refreshing; new
    /// Allocates get 300 Try Alternate with `alternate`, or 508 without one.
    pub fn drain(&mut self, alternate: Option<SocketAddr>) {
        self.admission = alternate.map_or(Admission::Refuse, Admission::Redirect);
    }

    /// The fleet's best other nodes per family (from the cluster task's registry
    /// read at `now`), trusted for `valid_for`: new Allocates this node should not
    /// take (draining, front door, over `max-allocations`) are sent there with 300.
    /// Without a fresh report the node serves them itself.
    pub fn set_alternates(&mut self, now: Instant, alternates: super::fleet::Alternates, valid_for: Duration) {
        self.fleet.set(now, alternates, valid_for);
    }

    /// Takes the fleet's REST secrets (newest first) for the default realm, tried
    /// before `[auth] secrets`; they replace the previous fleet set and outlive reloads.
    pub fn set_fleet_secrets(&mut self, secrets: Vec<Vec<u8>>) {
        self.config.credentials.set_fleet_secrets(&secrets);
        self.fleet_secrets = secrets;
    }

    /// The fleet's per-user rates on other nodes (`remote`, valid for `valid_for`):
    /// this worker holds those users to their share of `bandwidth-per-user` (see
    /// [`super::user_bandwidth`]). Returns this worker's rates to publish: `(user,
    /// bytes/s, cap)` for users relaying a noticeable part of their cap here.
    pub fn exchange_fleet_rates(
        &mut self,
        now: Instant,
        remote: &[(super::tenant::UserKey, super::user_bandwidth::RemoteRate)],
        valid_for: Duration,
    ) -> Vec<(super::tenant::UserKey, u64, u64)> {
        self.table.user_bandwidth.exchange(now, remote, valid_for)
    }

    /// Switches to the fleet's shared nonce key (see [`super::nonce::NonceCodec::shared`]):
    /// nonces this node issued before become stale (clients get 438 once and retry).
    pub fn set_nonce_key(&mut self, now: Instant, secret: &[u8; 32], since_origin: u32) {
        self.nonces = NonceCodec::shared(secret, self.config.nonce_lifetime, now, since_origin);
    }

    /// Whether the server is draining.
    pub fn is_draining(&self) -> bool {
        self.admission != Admission::Open
    }

    /// A datagram (or a framed stream message) from a client. ChannelData and Send
    /// indications come back as [`Received::Relay`] (the hot path: no allocation, no
    /// lock); Binding requests are answered; other requests come back as
    /// [`Received::Request`] for [`Server::handle_request`].
    pub fn handle_client_packet(&mut self, now: Instant, from: FiveTuple, packet: &[u8]) -> Received {
        self.last_now = now;
        self.receive(now, from, packet)
    }

    /// A STUN request [`Server::handle_client_packet`] returned as
    /// [`Received::Request`]; `unix_now` is the wall clock for REST credentials.
    pub fn handle_request(
        &mut self,
        now: Instant,
        unix_now: u64,
        from: FiveTuple,
        packet: &[u8],
        shared: &impl Shared,
    ) {
        self.last_now = now;
        self.handle_stun(now, unix_now, from, packet, shared);
    }

    /// A datagram a peer sent to an allocation's relay socket. The payload sits at
    /// `buf[payload]` with at least [`super::relay::PEER_HEADROOM`] bytes before it and
    /// [`super::relay::PEER_TAILROOM`] after; the ChannelData or Data indication header
    /// is written in place and the framed range returned.
    pub fn handle_peer_packet(
        &mut self,
        now: Instant,
        allocation: AllocationId,
        peer: PeerAddr,
        buf: &mut [u8],
        payload: Range<usize>,
    ) -> Option<ToClient> {
        self.table.relay_from_peer(now, allocation, peer, buf, payload, &self.config, &mut self.out)
    }

    /// An ICMP error that came back for a datagram the allocation's relay socket sent
    /// to `peer` (RFC 8656 §11); see `AllocationTable::relay_icmp`. Returns whether
    /// the client is told.
    pub fn handle_peer_icmp(
        &mut self,
        now: Instant,
        allocation: AllocationId,
        peer: PeerAddr,
        icmp: IcmpError,
    ) -> bool {
        self.table.relay_icmp(now, allocation, peer, icmp, &mut self.out)
    }

    /// The shell's answer to [`Output::BindRelay`] for the socket of `local`'s family:
    /// the bound address, or why binding failed.
    pub fn handle_relay_bound(
        &mut self,
        now: Instant,
        id: AllocationId,
        local: SocketAddr,
        result: Result<SocketAddr, RelayBindError>,
        shared: &impl Shared,
    ) {
        self.relay_bound(now, id, local, result, shared);
    }

    /// The shell's answer to [`Output::LookupUser`]: the user's keys and limits, that
    /// they do not exist, or that the lookup failed. The requests parked for that
    /// (realm, user) run again against the answer (or get 500 when it failed).
    pub fn handle_lookup(&mut self, now: Instant, result: LookupResult, shared: &impl Shared) {
        self.last_now = now;
        self.lookup_answered(now, result, shared);
    }

    /// The shell's answer to [`Output::ConnectPeer`]: whether the TCP connection to the
    /// peer was established (RFC 6062 §5.2: 447 when not).
    pub fn handle_peer_connected(&mut self, now: Instant, connection: ConnectionId, connected: bool) {
        self.peer_connected(now, connection, connected);
    }

    /// A peer connected to a TCP allocation's relay address. Returns the connection id
    /// to keep it under, after telling the client with a ConnectionAttempt indication;
    /// `None` (close it) without a permission for the peer (RFC 6062 §5.3).
    pub fn handle_peer_incoming(
        &mut self,
        now: Instant,
        allocation: AllocationId,
        peer: PeerAddr,
    ) -> Option<ConnectionId> {
        self.peer_incoming(now, allocation, peer)
    }

    /// Expires allocations, reservations, unbound peer connections and requests
    /// parked for a lookup (answered 500) whose time has come.
    pub fn handle_timeout(&mut self, now: Instant, shared: &impl Shared) {
        self.last_now = now;
        while let Some(due) = self.table.pop_due(now) {
            if let Ok(id) = due {
                self.out.stats.allocations_expired += 1;
                self.remove_allocation(id, now, EndReason::Expired, shared);
            }
        }
        for id in self.connections.expired(now) {
            self.close_connection(id);
        }
        self.expire_parked(now, shared);
        if self.reservation_expiries.peek().is_some_and(|Reverse((at, _))| *at <= now) {
            let expiries = &mut self.reservation_expiries;
            shared.with(|ledger| {
                while let Some(Reverse((at, token))) = expiries.peek().copied() {
                    if at > now {
                        break;
                    }
                    expiries.pop();
                    // A token already redeemed (on any worker) is no longer held.
                    ledger.expire_reservation(token, now);
                }
            });
        }
    }

    /// The next effect for the shell to carry out; `None` when there is none left.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop()
    }

    /// When [`Server::handle_timeout`] should next be called; `None`: only when a
    /// packet comes. Call it after draining the outputs of every input.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let reservation = self.reservation_expiries.peek().map(|Reverse((at, _))| *at);
        [self.table.next_expiry(), reservation, self.connections.next_deadline(), self.lookups.next_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Counts traffic the XDP fast path relayed for allocation `id` (see
    /// [`super::offload`]) as if the relay path had: the allocation's counters, if it
    /// is still here, and the relayed totals, which count it either way.
    pub fn credit_offloaded(&mut self, id: AllocationId, traffic: super::allocation::Traffic) {
        use super::stats::Direction;
        let stats = &mut self.out.stats;
        let (up, down) = (Direction::ClientToPeer as usize, Direction::PeerToClient as usize);
        let udp = super::Transport::Udp as usize;
        stats.relayed_packets[up][udp] += traffic.to_peer_packets;
        stats.relayed_bytes[up][udp] += traffic.to_peer_bytes;
        stats.relayed_packets[down][udp] += traffic.to_client_packets;
        stats.relayed_bytes[down][udp] += traffic.to_client_bytes;
        if let Some(allocation) = self.table.get_mut(id) {
            let t = &mut allocation.traffic;
            t.to_peer_packets += traffic.to_peer_packets;
            t.to_peer_bytes += traffic.to_peer_bytes;
            t.to_client_packets += traffic.to_client_packets;
            t.to_client_bytes += traffic.to_client_bytes;
        }
    }

    /// Closes an allocation from outside the protocol (an operator dropped it).
    pub fn close_allocation(&mut self, id: AllocationId, now: Instant, shared: &impl Shared) -> bool {
        self.remove_allocation(id, now, EndReason::Closed, shared)
    }

    /// Closes whatever a client 5-tuple held: its allocation, and the peer connection
    /// of an RFC 6062 data connection (a TCP connection that closed).
    pub fn close_five_tuple(&mut self, five_tuple: FiveTuple, now: Instant, shared: &impl Shared) {
        if let Some(id) = self.table.id_on(&five_tuple) {
            self.remove_allocation(id, now, EndReason::Closed, shared);
        }
        if let Some(connection) = self.connections.of_data(&five_tuple) {
            self.close_connection(connection);
        }
    }

    /// Closes every allocation of `username`; returns how many.
    pub fn close_user(&mut self, username: &str, now: Instant, shared: &impl Shared) -> usize {
        let ids = self.table.ids_where(|a| &*a.username == username);
        ids.into_iter().filter(|id| self.remove_allocation(*id, now, EndReason::Closed, shared)).count()
    }

    /// Revokes `name` (a user, or one REST credential; see [`Revocations`]): its
    /// allocations on this worker end now and it is refused with 401 until lifted.
    /// Returns how many allocations ended.
    pub fn revoke(
        &mut self,
        name: &str,
        now: Instant,
        unix_now: u64,
        shared: &impl Shared,
    ) -> Result<usize, RevokeError> {
        self.revocations.revoke(name, unix_now)?;
        let ids = self.table.ids_where(|a| self.revocations.refuses(&a.username, unix_now));
        Ok(ids.into_iter().filter(|id| self.remove_allocation(*id, now, EndReason::Closed, shared)).count())
    }

    /// Lifts a revocation; false if `name` was not revoked.
    pub fn lift_revocation(&mut self, name: &str) -> bool {
        self.revocations.lift(name)
    }

    /// The revocations in force: each name with the Unix time it lapses at, if any.
    pub fn revocations(&self, unix_now: u64) -> Vec<(String, Option<u64>)> {
        self.revocations.list(unix_now)
    }

    /// Requests parked for a lookup, and lookup answers cached, on this worker.
    pub fn lookup_counts(&self) -> (usize, usize) {
        (self.lookups.parked(), self.lookups.cached_count())
    }

    /// The configuration in force (the realms of its tenants, for reports).
    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        self.out.stats
    }

    /// Allocations in force on this worker.
    pub fn allocation_count(&self) -> usize {
        self.table.len()
    }

    /// Live permissions and channels over all allocations.
    pub fn binding_counts(&self, now: Instant) -> (usize, usize) {
        self.table.iter().map(|(_, a)| a.counts(now)).fold((0, 0), |acc, c| (acc.0 + c.0, acc.1 + c.1))
    }

    /// An allocation, if it exists.
    pub fn allocation(&self, id: AllocationId) -> Option<&Allocation> {
        self.table.get(id)
    }

    /// Every allocation, in no particular order.
    pub fn allocations(&self) -> impl Iterator<Item = (AllocationId, &Allocation)> {
        self.table.iter()
    }

    /// Expiry timers held (live and stale), to test that churn cannot grow them.
    #[cfg(test)]
    pub(crate) fn expiry_timers(&self) -> usize {
        self.table.expiry_timers()
    }

    /// Ends an allocation: the ledger uncounts it and frees its ports, its peer
    /// connections close, and the shell is told to close its relay sockets.
    fn remove_allocation(&mut self, id: AllocationId, now: Instant, reason: EndReason, shared: &impl Shared) -> bool {
        let Some(allocation) = self.table.remove(id) else {
            return false;
        };
        shared.with(|ledger| {
            ledger.forget_allocation(&allocation.user, allocation.five_tuple.client.ip());
            for relay in allocation.relay_addrs() {
                ledger.release_port(relay.bound.port());
            }
        });
        for connection in self.connections.of_allocation(id) {
            self.close_connection(connection);
        }
        self.out.push(Output::CloseRelay { allocation: id });
        let relay = allocation.relay_addrs().next().map_or(allocation.five_tuple.server, |r| r.advertised);
        self.out.push(Output::Event(Event::AllocationEnded {
            id,
            five_tuple: allocation.five_tuple,
            relay,
            username: allocation.username.into(),
            reason,
            traffic: allocation.traffic,
            duration: now.saturating_duration_since(allocation.created),
        }));
        true
    }

    /// Forgets a peer connection and tells the shell to close it.
    fn close_connection(&mut self, id: ConnectionId) {
        if let Some(output) = self.connections.close(id) {
            self.out.push(output);
        }
    }

    /// Counts a drop.
    fn drop_packet(&mut self, reason: DropReason) {
        self.out.stats.drop(reason);
    }
}
