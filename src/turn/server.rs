//! The TURN server state machine: what it owns, its inputs and outputs, timers, and
//! the dispatch of STUN requests. Request handlers live in `handlers.rs`, the relay
//! hot path in `relay.rs`.

use super::allocation::{Allocation, Traffic};
use super::auth::{Credentials, Key, NonceCodec};
use super::ledger::{self, decrement, Ledger, SharedLedger};
use super::policy::PeerPolicy;
use super::rate::Bucket;
use super::revocations::{Revocations, RevokeError};
use super::stats::{AuthFailure, DropReason, Stats};
use super::tcp_relay;
use super::tcp_relay::PeerConnection;
use super::{AllocationId, ConnectionId, FiveTuple, Rng};
use crate::stun::binding;
use crate::stun::message::{self, DecodeError, IntegritySet, Message, Protection};
use crate::stun::raw::{self, PacketKind};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stun_codec::rfc5389::attributes::{ErrorCode, Software, UnknownAttributes};
use stun_codec::{MessageClass, Method, TransactionId};

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
/// How many ports an Allocate tries when binding fails because a port is taken by
/// another process.
pub(crate) const BIND_ATTEMPTS: u8 = 8;

/// Where relay sockets bind and what address they advertise.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayAddresses {
    /// Bind IPv4 relays here; `None`: the local address the request arrived on.
    pub bind_v4: Option<Ipv4Addr>,
    /// Advertise this IPv4 address in XOR-RELAYED-ADDRESS (a server behind NAT).
    pub external_v4: Option<Ipv4Addr>,
    /// Bind IPv6 relays here; `None`: the local address the request arrived on.
    pub bind_v6: Option<Ipv6Addr>,
    /// Advertise this IPv6 address.
    pub external_v6: Option<Ipv6Addr>,
    /// The host's IPv4 address for an IPv4 relay requested over IPv6 with no
    /// `bind_v4` (RFC 8656 §7.2: IPv4 unless the client asks otherwise); the shell
    /// picks it from the interfaces. A request to `::1` gets `127.0.0.1` instead.
    pub host_v4: Option<Ipv4Addr>,
    /// The same for an IPv6 relay requested over IPv4.
    pub host_v6: Option<Ipv6Addr>,
}

/// Limits on what clients may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// Allocations on this server in all (508 past it).
    pub total_allocations: usize,
    /// Allocations per username (486 past it).
    pub allocations_per_user: usize,
    /// Allocations per client IP address (486 past it).
    pub allocations_per_ip: usize,
    /// Permissions per allocation (486 past it).
    pub permissions_per_allocation: usize,
    /// Channels per allocation (486 past it).
    pub channels_per_allocation: usize,
    /// Unauthenticated requests answered with 401, per source IP per second; more are
    /// dropped unanswered so turnd cannot be used as a reflector.
    pub unauthenticated_per_second: u32,
    /// Burst allowance for the above.
    pub unauthenticated_burst: u32,
    /// Relayed payload bytes per second per allocation, both directions; 0: no cap.
    pub bytes_per_second_per_allocation: u64,
    /// Relayed payload bytes per second per user over all its allocations; 0: no cap.
    pub bytes_per_second_per_user: u64,
    /// RESERVATION-TOKENs held at once over the server (508 past it). Each also counts
    /// as an allocation of its user and source until it is redeemed or expires.
    pub total_reservations: usize,
    /// How client addresses are grouped into sources for `allocations_per_ip` and the
    /// 401 limiter (IPv6 by /64 by default).
    pub source_prefix: super::source::SourcePrefix,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            total_allocations: 10_000,
            allocations_per_user: 100,
            allocations_per_ip: 100,
            permissions_per_allocation: 64,
            channels_per_allocation: 64,
            unauthenticated_per_second: 20,
            unauthenticated_burst: 40,
            bytes_per_second_per_allocation: 0,
            bytes_per_second_per_user: 0,
            total_reservations: 1000,
            source_prefix: super::source::SourcePrefix::default(),
        }
    }
}

/// The core's configuration: what can change on reload without touching sockets.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// SOFTWARE attribute on responses to authenticated and Binding requests.
    pub software: Option<String>,
    /// Accepted users and secrets, with the realm.
    pub credentials: Credentials,
    /// How long a nonce is valid.
    pub nonce_lifetime: Duration,
    /// The longest lifetime an allocation may be given.
    pub max_lifetime: Duration,
    /// Relay port range.
    pub port_range: RangeInclusive<u16>,
    /// Relay bind and advertised addresses.
    pub relay: RelayAddresses,
    /// Which peers may be reached.
    pub policy: PeerPolicy,
    /// Limits.
    pub quotas: Quotas,
    /// Clients whose packets are dropped before anything else looks at them (and whose
    /// allocations a reload that adds them closes).
    pub denied_clients: Vec<ipnet::IpNet>,
    /// Whether an allocation made with a TURN REST credential ends when the credential
    /// expires (its lifetime is capped there), not only at its next refresh.
    pub end_at_credential_expiry: bool,
    /// RFC 5780 NAT behaviour discovery on Binding (see `nat_discovery`); `None`: off.
    pub nat_discovery: Option<super::NatDiscovery>,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            software: Some(concat!("turnd/", env!("CARGO_PKG_VERSION")).to_owned()),
            credentials: Credentials::new("turnd"),
            nonce_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            port_range: 49152..=65535,
            relay: RelayAddresses::default(),
            policy: PeerPolicy::default(),
            quotas: Quotas::default(),
            denied_clients: Vec::new(),
            end_at_credential_expiry: false,
            nat_discovery: None,
        }
    }
}

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
    /// peer connections: RFC 6062), then call [`Server::handle_relay_bound`] with the
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
    /// call [`Server::handle_peer_connected`].
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
    /// Something worth logging or streaming to operators.
    Event(Event),
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
        /// Which check failed.
        reason: AuthFailure,
    },
    /// A peer was refused by the peer policy (logged once per allocation).
    PeerDenied {
        /// The allocation.
        id: AllocationId,
        /// The refused peer.
        peer: SocketAddr,
    },
}

/// An Allocate waiting for the shell to bind its relay sockets.
#[derive(Debug)]
pub(crate) struct PendingAllocate {
    pub five_tuple: FiveTuple,
    pub transaction_id: TransactionId,
    pub username: String,
    pub auth: Auth,
    pub lifetime: Duration,
    /// The requested family first, then the additional one of a dual-stack request.
    pub relays: Vec<PendingRelay>,
    /// An additional family refused before binding (440 or 508).
    pub refused_additional: Option<u16>,
    pub reserve_next: bool,
    pub from_reservation: bool,
    pub even_port: bool,
    pub dont_fragment: bool,
    /// RFC 6062 TCP relay.
    pub tcp: bool,
}

/// One relay socket of a pending Allocate.
#[derive(Debug)]
pub(crate) struct PendingRelay {
    pub family: super::allocation::Family,
    pub bind_ip: IpAddr,
    pub port: u16,
    pub attempts: u8,
    /// `Ok(bound)`, or the error code the family failed with; `None` while binding.
    pub outcome: Option<Result<SocketAddr, u16>>,
}

/// The authenticated identity behind a request, to protect the response with.
#[derive(Debug, Clone)]
pub(crate) struct Auth {
    pub username: String,
    pub key: Key,
    pub integrity: IntegritySet,
    /// For a TURN REST credential, the seconds it stays valid from this request
    /// (u32 keeps `Reject`, which carries an `Auth`, small).
    pub valid_for: Option<u32>,
}

/// An error answer to a request.
#[derive(Debug)]
pub(crate) struct Reject {
    pub code: u16,
    pub reason: &'static str,
    /// Extra attributes (REALM/NONCE on 401/438, UNKNOWN-ATTRIBUTES on 420).
    pub attributes: Vec<crate::stun::attributes::Attribute>,
    /// Set once the request authenticated: the error response then carries integrity.
    pub auth: Option<Auth>,
}

impl Reject {
    pub fn new(code: u16, reason: &'static str) -> Self {
        Reject { code, reason, attributes: Vec::new(), auth: None }
    }

    pub fn with_auth(mut self, auth: &Auth) -> Self {
        self.auth = Some(auth.clone());
        self
    }
}

/// The TURN server core: one per worker thread. What must be counted over all workers
/// (relay ports, reservations, quotas, the 401 limiter) lives in the shared [`Ledger`];
/// everything else, the relay hot path included, is this worker's alone.
pub struct Server {
    pub(crate) config: CoreConfig,
    pub(crate) nonces: NonceCodec,
    /// Shared with the other workers; never locked on the relay path nor in
    /// `poll_timeout`.
    pub(crate) ledger: SharedLedger,
    /// This worker's index, below `workers`; they number allocations (see
    /// [`AllocationId`]).
    pub(crate) worker: u32,
    pub(crate) workers: u32,
    pub(crate) rng: Box<dyn Rng + Send>,
    pub(crate) allocations: HashMap<AllocationId, Allocation>,
    pub(crate) by_five_tuple: HashMap<FiveTuple, AllocationId>,
    /// Allocations per user on this worker, to know when a user's bandwidth bucket can
    /// be forgotten (the ledger's count is over all workers).
    pub(crate) local_users: HashMap<Box<str>, usize>,
    pub(crate) expiries: BinaryHeap<Reverse<(Instant, AllocationId)>>,
    pub(crate) pending: HashMap<AllocationId, PendingAllocate>,
    /// Expiries of the reservations this worker minted (the ledger holds them), so its
    /// timer wakes to release their ports. Entries of redeemed tokens stay until due or
    /// until `mint_reservation` (handlers.rs) compacts the heap.
    pub(crate) reservation_expiries: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Allocations this worker has numbered so far (see [`AllocationId`]).
    pub(crate) allocation_seq: u64,
    pub(crate) outputs: VecDeque<Output>,
    pub(crate) stats: Stats,
    /// Random prefix and counter for Data indication transaction ids: drawing from the
    /// CSPRNG per packet would cost a syscall on the relay path.
    pub(crate) tid_prefix: u32,
    pub(crate) data_indication_tid: u64,
    /// While draining before exit: `Some(alternate)`; new Allocates are turned away.
    pub(crate) draining: Option<Option<SocketAddr>>,
    /// The `now` of the input being handled, for code deep in a request's handling.
    pub(crate) last_now: Instant,
    /// The most bytes the answer to the request being handled may take: three times
    /// its size over UDP, whose source address nothing has verified (so that turnd is
    /// a poor amplifier); `None` over TCP and TLS. Answers to authenticated requests
    /// are not held to it.
    pub(crate) answer_budget: Option<usize>,
    /// Revoked users and credentials; kept across reloads.
    pub(crate) revocations: Revocations,
    /// RFC 6062 peer connections of TCP allocations.
    pub(crate) connections: HashMap<ConnectionId, PeerConnection>,
    /// Client data connections bound to a peer connection.
    pub(crate) data_connections: HashMap<FiveTuple, ConnectionId>,
    /// Bandwidth buckets per user with allocations on this worker (bounded by them).
    /// Kept per worker so the relay path takes no lock: the per-user cap
    /// (`bytes_per_second_per_user`) is enforced per worker, so a user whose clients
    /// land on several workers may relay up to that many times the cap.
    pub(crate) user_bandwidth: HashMap<Box<str>, Bucket>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("allocations", &self.allocations.len()).field("stats", &self.stats).finish()
    }
}

impl Server {
    /// A single-worker server with `config`, drawing randomness (including the nonce
    /// secret) from `rng`. `now` is the epoch nonces count from. It has a ledger of
    /// its own.
    pub fn new(config: CoreConfig, mut rng: Box<dyn Rng + Send>, now: Instant) -> Self {
        let mut secret = [0u8; 32];
        rng.fill(&mut secret);
        let ledger = Arc::new(Mutex::new(Ledger::new(&config)));
        Server::new_worker(config, rng, now, ledger, secret, 0, 1)
    }

    /// Worker `worker` (from 0) of `workers` in a multi-threaded server. Its
    /// allocations, relay path and timers are its own; ports, reservations, quotas and
    /// the 401 limiter are counted in `ledger`, which every worker shares. Give every
    /// worker the same `nonce_secret` (32 bytes from a CSPRNG) so a nonce one issues
    /// verifies on another; the first worker's `now` becomes the nonce epoch of all.
    /// The ledger's limits are brought in line with `config`, as on a reload.
    ///
    /// # Panics
    ///
    /// If `worker >= workers`: the shell's arithmetic is wrong, and allocation ids
    /// would collide across workers.
    pub fn new_worker(
        config: CoreConfig,
        mut rng: Box<dyn Rng + Send>,
        now: Instant,
        ledger: SharedLedger,
        nonce_secret: [u8; 32],
        worker: u32,
        workers: u32,
    ) -> Self {
        assert!(worker < workers, "worker {worker} of {workers}");
        let mut config = config;
        let epoch = {
            let mut shared = ledger::lock(&ledger);
            shared.reconfigure(&config);
            config.policy.watch_relay_ports(shared.live_ports());
            shared.nonce_epoch(now)
        };
        Server {
            nonces: NonceCodec::new(&nonce_secret, config.nonce_lifetime, epoch),
            ledger,
            worker,
            workers,
            config,
            allocations: HashMap::new(),
            by_five_tuple: HashMap::new(),
            local_users: HashMap::new(),
            expiries: BinaryHeap::new(),
            pending: HashMap::new(),
            reservation_expiries: BinaryHeap::new(),
            allocation_seq: 0,
            outputs: VecDeque::new(),
            stats: Stats::default(),
            tid_prefix: rng.next_u32(),
            data_indication_tid: rng.next_u64(),
            rng,
            draining: None,
            user_bandwidth: HashMap::new(),
            last_now: now,
            answer_budget: None,
            revocations: Revocations::default(),
            connections: HashMap::new(),
            data_connections: HashMap::new(),
        }
    }

    /// Replaces users, secrets, quotas, policy and lifetimes (a config reload).
    /// Permissions and channels to peers the new policy refuses are revoked. The
    /// shared limits change as [`Ledger::reconfigure`] says: every worker applies the
    /// same reload, and applying it again changes nothing.
    pub fn reconfigure(&mut self, config: CoreConfig) {
        let mut config = config;
        let policy = &config.policy;
        for allocation in self.allocations.values_mut() {
            allocation.revoke(|peer| !policy.keeps_permission(peer.ip()));
        }
        let mut shared = ledger::lock(&self.ledger);
        shared.reconfigure(&config);
        config.policy.watch_relay_ports(shared.live_ports());
        drop(shared);
        let newly_denied = !config.denied_clients.is_empty() && config.denied_clients != self.config.denied_clients;
        self.nonces.set_lifetime(config.nonce_lifetime);
        self.config = config;
        if newly_denied {
            let denied: Vec<AllocationId> = self
                .allocations
                .iter()
                .filter(|(_, a)| self.is_denied_client(a.five_tuple.client))
                .map(|(id, _)| *id)
                .collect();
            for id in denied {
                self.remove_allocation(id, self.last_now, EndReason::Closed);
            }
        }
    }

    /// Starts draining: existing allocations keep relaying and refreshing; new
    /// Allocates get 300 Try Alternate with `alternate`, or 508 without one.
    pub fn drain(&mut self, alternate: Option<SocketAddr>) {
        self.draining = Some(alternate);
    }

    /// Whether the server is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.is_some()
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Allocations in force on this worker.
    pub fn allocation_count(&self) -> usize {
        self.allocations.len()
    }

    /// Relay ports in use and still available, over all workers (the ledger's figures:
    /// do not add them up across workers).
    pub fn port_usage(&self) -> (usize, usize) {
        ledger::lock(&self.ledger).port_usage()
    }

    /// Live permissions and channels over all allocations.
    pub fn binding_counts(&self, now: Instant) -> (usize, usize) {
        self.allocations.values().map(|a| a.counts(now)).fold((0, 0), |acc, c| (acc.0 + c.0, acc.1 + c.1))
    }

    /// An allocation, if it exists.
    pub fn allocation(&self, id: AllocationId) -> Option<&Allocation> {
        self.allocations.get(&id)
    }

    /// Every allocation, in no particular order.
    pub fn allocations(&self) -> impl Iterator<Item = (AllocationId, &Allocation)> {
        self.allocations.iter().map(|(id, a)| (*id, a))
    }

    /// Closes every allocation of `username`; returns how many.
    pub fn close_user(&mut self, username: &str, now: Instant) -> usize {
        let ids: Vec<AllocationId> =
            self.allocations.iter().filter(|(_, a)| &*a.username == username).map(|(id, _)| *id).collect();
        ids.iter().filter(|id| self.remove_allocation(**id, now, EndReason::Closed)).count()
    }

    fn is_denied_client(&self, client: SocketAddr) -> bool {
        let ip = super::policy::canonical(client.ip());
        self.config.denied_clients.iter().any(|net| net.contains(&ip))
    }

    /// The host's interface addresses, read by the shell at start, on reload and when
    /// they change: with the configured relay addresses they are the host the peer
    /// policy keeps peers away from, and they give the relay address of a family the
    /// request did not come over. Channels to what is now the host's are rechecked.
    pub fn set_host_addresses(&mut self, interfaces: &[IpAddr]) {
        let relay = &mut self.config.relay;
        relay.host_v4 = super::host::primary_v4(interfaces);
        relay.host_v6 = super::host::primary_v6(interfaces);
        let configured = [relay.bind_v4.map(IpAddr::V4), relay.external_v4.map(IpAddr::V4)]
            .into_iter()
            .chain([relay.bind_v6.map(IpAddr::V6), relay.external_v6.map(IpAddr::V6)])
            .flatten();
        let all: Vec<IpAddr> = interfaces.iter().copied().chain(configured).collect();
        self.config.policy.set_host_addresses(all);
        let policy = &self.config.policy;
        for allocation in self.allocations.values_mut() {
            allocation.recheck_channels(|peer| policy.check(peer).ok().map(|()| policy.is_host(peer.ip())));
        }
    }

    /// Revokes `name` (a user, or one REST credential; see [`Revocations`]): its
    /// allocations on this worker end now and it is refused with 401 until lifted.
    /// Returns how many allocations ended.
    pub fn revoke(&mut self, name: &str, now: Instant, unix_now: u64) -> Result<usize, RevokeError> {
        self.revocations.revoke(name, unix_now)?;
        let ids: Vec<AllocationId> = self
            .allocations
            .iter()
            .filter(|(_, a)| self.revocations.refuses(&a.username, unix_now))
            .map(|(id, _)| *id)
            .collect();
        Ok(ids.iter().filter(|id| self.remove_allocation(**id, now, EndReason::Closed)).count())
    }

    /// Lifts a revocation; false if `name` was not revoked.
    pub fn lift_revocation(&mut self, name: &str) -> bool {
        self.revocations.lift(name)
    }

    /// The revocations in force: each name with the Unix time it lapses at, if any.
    pub fn revocations(&self, unix_now: u64) -> Vec<(String, Option<u64>)> {
        self.revocations.list(unix_now)
    }

    /// The next effect for the shell to carry out.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Server::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let allocation = self.expiries.peek().map(|Reverse((at, _))| *at);
        let reservation = self.reservation_expiries.peek().map(|Reverse((at, _))| *at);
        let connection = self.next_connection_deadline();
        [allocation, reservation, connection].into_iter().flatten().min()
    }

    /// Expires allocations and reservations whose time has come.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, id))) = self.expiries.peek().copied() {
            if at > now {
                break;
            }
            self.expiries.pop();
            // The heap keeps stale entries for refreshed or deleted allocations.
            let expired = self.allocations.get(&id).is_some_and(|a| a.expires <= now);
            if expired {
                self.stats.allocations_expired += 1;
                self.remove_allocation(id, now, EndReason::Expired);
            } else if let Some(a) = self.allocations.get_mut(&id) {
                a.prune(now);
            }
        }
        self.expire_connections(now);
        if self.reservation_expiries.peek().is_some_and(|Reverse((at, _))| *at <= now) {
            let mut shared = ledger::lock(&self.ledger);
            while let Some(Reverse((at, token))) = self.reservation_expiries.peek().copied() {
                if at > now {
                    break;
                }
                self.reservation_expiries.pop();
                // A token already redeemed (on any worker) is no longer held: nothing to do.
                shared.expire_reservation(token, now);
            }
        }
    }

    /// Closes an allocation from outside the protocol (its TCP connection closed, or an
    /// operator dropped it).
    pub fn close_allocation(&mut self, id: AllocationId, now: Instant) -> bool {
        self.remove_allocation(id, now, EndReason::Closed)
    }

    /// Closes every allocation on a client 5-tuple (a TCP connection that closed).
    pub fn close_five_tuple(&mut self, five_tuple: FiveTuple, now: Instant) {
        if let Some(id) = self.by_five_tuple.get(&five_tuple).copied() {
            self.remove_allocation(id, now, EndReason::Closed);
        }
        if let Some(connection) = self.data_connections.get(&five_tuple).copied() {
            self.close_connection(connection);
        }
    }

    /// Schedules an allocation's expiry. Refreshes and deletions leave stale entries in
    /// the heap (skipped when they come up); when stale ones outnumber live ones, the
    /// heap is rebuilt, so churn cannot grow it past twice the live allocations.
    pub(crate) fn schedule_expiry(&mut self, id: AllocationId, at: Instant) {
        self.expiries.push(Reverse((at, id)));
        self.compact_expiries();
    }

    fn compact_expiries(&mut self) {
        if self.expiries.len() > 2 * self.allocations.len() + 1024 {
            self.expiries = self.allocations.iter().map(|(id, a)| Reverse((a.expires, *id))).collect();
        }
    }

    pub(crate) fn remove_allocation(&mut self, id: AllocationId, now: Instant, reason: EndReason) -> bool {
        let Some(allocation) = self.allocations.remove(&id) else {
            return false;
        };
        self.by_five_tuple.remove(&allocation.five_tuple);
        self.compact_expiries();
        decrement(&mut self.local_users, &*allocation.username);
        if !self.local_users.contains_key(&*allocation.username) {
            self.user_bandwidth.remove(&*allocation.username);
        }
        {
            let mut shared = ledger::lock(&self.ledger);
            shared.forget_allocation(&allocation.username, allocation.five_tuple.client.ip());
            for relay in allocation.relay_addrs() {
                shared.release_port(relay.bound.port());
            }
        }
        self.close_connections_of(id);
        self.outputs.push_back(Output::CloseRelay { allocation: id });
        let relay = allocation.relay_addrs().next().map_or(allocation.five_tuple.server, |r| r.advertised);
        self.outputs.push_back(Output::Event(Event::AllocationEnded {
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

    /// Handles a datagram (or a framed stream message) from a client. Returns what to
    /// relay to a peer when it is ChannelData or a Send indication (the hot path, with
    /// no allocation); anything else is answered through [`Server::poll_output`].
    pub fn handle_client_packet(
        &mut self,
        now: Instant,
        unix_now: u64,
        from: FiveTuple,
        packet: &[u8],
    ) -> Option<super::relay::ToPeer> {
        self.last_now = now;
        if !self.config.denied_clients.is_empty() && self.is_denied_client(from.client) {
            self.stats.drop(DropReason::DeniedClient);
            return None;
        }
        self.answer_budget = (from.transport == super::Transport::Udp).then(|| packet.len() * AMPLIFICATION_LIMIT);
        match raw::classify(packet) {
            PacketKind::ChannelData => self.relay_channel_data(now, from, packet),
            PacketKind::Stun => {
                if packet.get(..2) == Some(&raw::TYPE_SEND_INDICATION.to_be_bytes()[..]) {
                    return self.relay_send_indication(now, from, packet);
                }
                if packet.len() > MAX_CONTROL_MESSAGE {
                    self.stats.drop(DropReason::Malformed);
                    return None;
                }
                // The codec's own limit on SOFTWARE: what the general path would send.
                let software = self.config.software.as_deref().filter(|s| s.chars().count() < 128);
                // RFC 5780 answers carry more than the fast path writes.
                let fast = from.transport != super::Transport::Udp || self.nat_discovery_for(from).is_none();
                if let Some(bytes) = fast
                    .then(|| binding::plain_binding_response(packet, from.client, software, self.answer_budget))
                    .flatten()
                {
                    self.stats.answer(stun_codec::rfc5389::methods::BINDING, None);
                    self.outputs.push_back(Output::Transmit { to: from, bytes });
                    return None;
                }
                self.handle_stun(now, unix_now, from, packet);
                None
            }
            PacketKind::ClassicStun => {
                match message::classic_binding_response(packet, from.client) {
                    Some(bytes) if self.answer_budget.is_some_and(|b| bytes.len() > b) => {
                        self.stats.drop(DropReason::Amplification)
                    }
                    Some(bytes) => {
                        self.stats.answer(stun_codec::rfc5389::methods::BINDING, None);
                        self.outputs.push_back(Output::Transmit { to: from, bytes });
                    }
                    None => self.stats.drop(DropReason::Malformed),
                }
                None
            }
            PacketKind::Unknown => {
                self.stats.drop(DropReason::Malformed);
                None
            }
        }
    }

    fn handle_stun(&mut self, now: Instant, unix_now: u64, from: FiveTuple, packet: &[u8]) {
        let decoded = match message::decode(packet) {
            Ok(decoded) => decoded,
            Err(DecodeError::Drop(_)) => {
                self.stats.drop(DropReason::Malformed);
                return;
            }
            Err(DecodeError::Malformed { method, class, transaction_id }) => {
                self.stats.drop(DropReason::Malformed);
                if class == MessageClass::Request {
                    self.reject(from, method, transaction_id, Reject::new(400, "Bad Request"));
                }
                return;
            }
        };
        let request = &decoded.message;
        if request.class() != MessageClass::Request {
            // RFC 8489 §6.3.2: indications never get a response; clients send no responses.
            self.stats.drop(DropReason::Unexpected);
            return;
        }
        let (method, transaction_id) = (request.method(), request.transaction_id());
        let mut unknown: Vec<_> = request
            .unknown_attributes()
            .map(stun_codec::Attribute::get_type)
            .filter(|t| t.is_comprehension_required())
            .collect();
        // RFC 5780's request attributes are known only where discovery answers them.
        if method != stun_codec::rfc5389::methods::BINDING || self.nat_discovery_for(from).is_none() {
            unknown.extend(super::nat_discovery::request_attributes(request));
        }
        if !unknown.is_empty() {
            let mut reject = Reject::new(420, "Unknown Attribute");
            reject.attributes.push(UnknownAttributes::new(unknown).into());
            self.reject(from, method, transaction_id, reject);
            return;
        }
        let outcome = self.dispatch(now, unix_now, from, &decoded, packet);
        match outcome {
            Ok(None) => {}
            Ok(Some((response, auth))) => self.respond(from, response, Some(&auth)),
            Err(reject) => self.reject(from, method, transaction_id, reject),
        }
    }

    /// Routes a request to its handler. `Ok(None)`: the answer comes later (an
    /// Allocate waiting for its relay socket) or was already queued.
    fn dispatch(
        &mut self,
        now: Instant,
        unix_now: u64,
        from: FiveTuple,
        decoded: &message::Decoded,
        packet: &[u8],
    ) -> Result<Option<(Message, Auth)>, Reject> {
        use stun_codec::rfc5389::methods::BINDING;
        use stun_codec::rfc5766::methods::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, REFRESH};
        let method = decoded.message.method();
        if method == BINDING {
            self.binding(from, &decoded.message);
            return Ok(None);
        }
        let (connect, connection_bind) = (tcp_relay::connect_method(), tcp_relay::connection_bind_method());
        if ![ALLOCATE, REFRESH, CREATE_PERMISSION, CHANNEL_BIND, connect, connection_bind].contains(&method) {
            return Err(Reject::new(400, "Bad Request"));
        }
        let auth = self.authenticate(now, unix_now, from, decoded, packet)?;
        match method {
            ALLOCATE => self.allocate(now, from, &decoded.message, auth).map(|()| None),
            m if m == connect => self.connect(from, &decoded.message, auth).map(|()| None),
            m if m == connection_bind => self.connection_bind(now, from, &decoded.message, auth).map(|()| None),
            REFRESH => self.refresh(now, from, &decoded.message, &auth).map(|m| Some((m, auth))),
            CREATE_PERMISSION => self.create_permission(now, from, &decoded.message, &auth).map(|m| Some((m, auth))),
            _ => self.channel_bind(now, from, &decoded.message, &auth).map(|m| Some((m, auth))),
        }
    }

    /// Queues a response, adding SOFTWARE, integrity when authenticated, and FINGERPRINT.
    /// An unauthenticated answer over its budget goes without SOFTWARE, or not at all.
    pub(crate) fn respond(&mut self, to: FiveTuple, response: Message, auth: Option<&Auth>) {
        let budget = if auth.is_none() { self.answer_budget } else { None };
        let protection = Protection { key: auth.map(|a| (a.key.as_bytes(), a.integrity)), fingerprint: true };
        let software = self.config.software.as_ref().and_then(|s| Software::new(s.clone()).ok());
        let (method, code) = (response.method(), response.get_attribute::<ErrorCode>().map(|e| e.code()));
        let bytes = match (software, budget) {
            (None, _) => message::encode(response, protection),
            (Some(software), None) => {
                let mut response = response;
                response.add_attribute(software);
                message::encode(response, protection)
            }
            (Some(software), Some(budget)) => {
                let mut with_software = response.clone();
                with_software.add_attribute(software);
                message::encode(with_software, protection)
                    .filter(|bytes| bytes.len() <= budget)
                    .or_else(|| message::encode(response, protection))
            }
        };
        let Some(bytes) = bytes else {
            return;
        };
        if budget.is_some_and(|b| bytes.len() > b) {
            self.stats.drop(DropReason::Amplification);
            return;
        }
        self.stats.answer(method, code);
        self.outputs.push_back(Output::Transmit { to, bytes });
    }

    /// Queues an error response. Unauthenticated rejections are kept minimal (no
    /// SOFTWARE, no reason phrase) so turnd is a poor reflector.
    pub(crate) fn reject(&mut self, to: FiveTuple, method: Method, transaction_id: TransactionId, reject: Reject) {
        let reason = if matches!(reject.code, 401 | 438) { "" } else { reject.reason };
        let mut response = message::error_response(method, transaction_id, reject.code, reason);
        for attr in reject.attributes {
            response.add_attribute(attr);
        }
        match reject.auth {
            Some(auth) => self.respond(to, response, Some(&auth)),
            None => {
                if reject.code == 401
                    && !ledger::lock(&self.ledger).allow_unauthenticated(to.client.ip(), self.last_now)
                {
                    self.stats.auth_failures[AuthFailure::RateLimited as usize] += 1;
                    return;
                }
                let protection = Protection { key: None, fingerprint: reject.code != 401 };
                let Some(bytes) = message::encode(response, protection) else {
                    return;
                };
                if self.answer_budget.is_some_and(|b| bytes.len() > b) {
                    self.stats.drop(DropReason::Amplification);
                    return;
                }
                self.stats.answer(method, Some(reject.code));
                self.outputs.push_back(Output::Transmit { to, bytes });
            }
        }
    }

    /// The next id of this worker (see [`AllocationId`] for the numbering).
    pub(crate) fn next_allocation_id(&mut self) -> AllocationId {
        self.allocation_seq += 1;
        AllocationId(self.allocation_seq * u64::from(self.workers) + u64::from(self.worker))
    }
}
