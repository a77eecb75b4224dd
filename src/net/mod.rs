//! The tokio shell around the sans-IO core: sockets, timers and signals. One event loop
//! owns one [`Server`]; every socket it serves (client listeners and relay sockets) sits
//! in one level-triggered epoll set that tokio watches as a single descriptor. A
//! process runs one event loop per worker thread ([`workers`]).

mod admission;
mod epoll;
pub mod framing;
pub mod interfaces;
mod listeners;
mod outbox;
pub mod proxy;
pub mod relay_socket;
pub mod report;
pub mod route;
mod sockaddr;
pub mod stream;
mod tcp_relay;
pub mod tls;
pub mod workers;

pub use listeners::bind_udp_listener;
pub use report::{Control, Publisher, Snapshot};
pub use workers::Workers;

use crate::turn::allocation::Family;
use crate::turn::relay::{PEER_HEADROOM, PEER_TAILROOM};
use crate::turn::stats::AuthFailure;
use crate::turn::RelayBindError;
use crate::turn::{AllocationId, CoreConfig, FiveTuple, Ledger, PeerAddr, Received, Server, Transport};
use crate::turn::{EndReason, Event, Output};
use epoll::Epoll;
use listeners::{ListenerKey, UdpListeners};
use outbox::{Outbox, Payload};
use quinn_udp::RecvMeta;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use stream::{Outbound, StreamEvent};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use workers::{lock, SharedLedger};

/// Datagrams read per recvmmsg call on a listener.
const BATCH: usize = 8;
/// The largest UDP payload.
const MAX_DATAGRAM: usize = 65536;
/// How many reads one socket gets per wake-up before others get a turn.
const READS_PER_WAKE: usize = 16;
/// The host's addresses are read again every this many publishes (seconds): an address
/// added while turnd runs is kept from peers within that time.
const HOST_CHECK_EVERY: u32 = 5;
/// Set while relay sockets cannot be opened (out of descriptors, say), so the episode
/// is logged once for the process rather than once per worker or per Allocate.
static RELAY_BIND_FAILING: AtomicBool = AtomicBool::new(false);
/// One relay receive slot: room for the relay header in front of the largest datagram
/// and for padding after it.
const RELAY_SLOT: usize = PEER_HEADROOM + MAX_DATAGRAM + PEER_TAILROOM;
/// Relay receive slots: relayed packets wait in theirs, framed, until the outbox is
/// flushed, so there is a slot for every datagram the outbox can hold.
const RELAY_SLOTS: usize = outbox::CAPACITY;
/// Binds a TCP listener (IPv6 sockets are IPv6-only, so `[::]` and `0.0.0.0` can
/// both be configured on one port).
pub fn bind_tcp_listener(address: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM.cloexec(), Some(Protocol::TCP))?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SockAddr::from(address))?;
    socket.listen(1024)?;
    tokio::net::TcpListener::from_std(socket.into())
}

/// The event loop: owns the core, the listeners and the relay sockets.
pub struct EventLoop {
    core: Server,
    /// What every worker counts together; locked only for the core's control-plane
    /// entry points that take it.
    ledger: SharedLedger,
    listeners: UdpListeners,
    /// Relay sockets by allocation, one per [`Family`].
    relays: HashMap<AllocationId, [Option<UdpSocket>; 2]>,
    epoll: Epoll,
    recv_slots: Vec<u8>,
    /// [`RELAY_SLOTS`] receive slots for relay sockets.
    relay_buf: Vec<u8>,
    /// The first relay slot not holding a datagram that waits in `outbox`.
    next_slot: usize,
    /// Datagrams for UDP clients, sent in batches.
    outbox: Outbox,
    /// Datagrams from one listener batch for peers, payloads still in `recv_slots`.
    to_peers: Outbox,
    events: Vec<libc::epoll_event>,
    ready: Vec<u64>,
    publisher: Publisher,
    snapshot: Snapshot,
    /// TCP/TLS connections (their outbound queues), by their 5-tuple.
    streams: HashMap<FiveTuple, stream::Client>,
    /// Where spawned connection tasks report (RFC 6062 peer connections).
    stream_events: mpsc::Sender<StreamEvent>,
    /// RFC 6062: accept loops of TCP relay listeners, by allocation.
    tcp_relays: HashMap<AllocationId, tokio::task::JoinHandle<()>>,
    /// RFC 6062: peer connections waiting for a ConnectionBind.
    peer_streams: HashMap<crate::turn::ConnectionId, tokio::net::TcpStream>,
    /// The host's interface addresses as last read (see [`HOST_CHECK_EVERY`]).
    host_addresses: Vec<std::net::IpAddr>,
    /// Snapshots published so far.
    publishes: u32,
}

impl EventLoop {
    /// An event loop serving `listeners` with the core `make_core` builds from `config`
    /// (once the listeners' own addresses are in its peer policy).
    pub fn new(
        config: CoreConfig,
        listeners: Vec<UdpSocket>,
        publisher: Publisher,
        stream_events: mpsc::Sender<StreamEvent>,
        ledger: SharedLedger,
        make_core: impl FnOnce(CoreConfig, &mut Ledger) -> Server,
    ) -> io::Result<Self> {
        let epoll = Epoll::new()?;
        let (bound, keys) = UdpListeners::new(listeners)?;
        for (key, fd) in keys {
            epoll.add(fd, key.token())?;
        }
        let mut config = config;
        config.policy.deny_own_sockets(bound.own_addresses());
        let host_addresses = interfaces::host_addresses();
        if host_addresses.is_empty() {
            // Loopback is always there: none means getifaddrs failed (no AF_NETLINK?).
            warn!("cannot read the host's addresses: only configured relay addresses are kept from peers");
        }
        Ok(EventLoop {
            core: {
                let mut core = make_core(config, &mut lock(&ledger));
                core.set_host_addresses(&host_addresses);
                core
            },
            ledger,
            host_addresses,
            publishes: 0,
            listeners: bound,
            relays: HashMap::new(),
            epoll,
            recv_slots: vec![0; BATCH * MAX_DATAGRAM],
            relay_buf: vec![0; RELAY_SLOT * RELAY_SLOTS],
            next_slot: 0,
            outbox: Outbox::default(),
            to_peers: Outbox::default(),
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 256],
            ready: Vec::with_capacity(256),
            publisher,
            snapshot: Snapshot::default(),
            streams: HashMap::new(),
            stream_events,
            tcp_relays: HashMap::new(),
            peer_streams: HashMap::new(),
        })
    }

    /// Runs until `control` says stop or closes; `streams` brings TCP/TLS traffic.
    pub async fn run(
        mut self,
        mut control: mpsc::Receiver<Control>,
        mut streams: mpsc::Receiver<StreamEvent>,
    ) -> io::Result<()> {
        // SAFETY: the epoll fd is owned by `self.epoll`, which outlives `watch` (a local
        // dropped before `self` at the end of this function) and is never replaced.
        let watch = unsafe { AsyncFd::register_with_interest(EpollFd(self.epoll.as_raw_fd()), Interest::READABLE) }
            .map_err(|e| io::Error::other(e.to_string()))?;
        let mut publish = tokio::time::interval(PUBLISH_EVERY);
        publish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = self.core.poll_timeout().map(tokio::time::Instant::from_std);
            let sleep = pin!(async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            });
            tokio::select! {
                guard = watch.readable() => {
                    let mut guard = guard?;
                    if self.serve_ready()? == 0 {
                        guard.clear_ready();
                    }
                }
                () = sleep => {}
                Some(event) = streams.recv() => {
                    self.stream_event(event);
                    // Take what else is queued, within a budget, before timers run.
                    for _ in 0..READS_PER_WAKE * BATCH {
                        match streams.try_recv() {
                            Ok(event) => self.stream_event(event),
                            Err(_) => break,
                        }
                    }
                }
                _ = publish.tick() => self.publish(),
                message = control.recv() => match message {
                    Some(Control::Shutdown) | None => return Ok(()),
                    Some(message) => self.control(message),
                },
            }
            let now = Instant::now();
            if self.core.poll_timeout().is_some_and(|at| at <= now) {
                self.core.handle_timeout(now, &mut lock(&self.ledger));
            }
            self.drain_outputs();
            self.flush();
        }
    }

    fn control(&mut self, message: Control) {
        let now = Instant::now();
        match message {
            Control::Reconfigure(mut config) => {
                config.policy.deny_own_sockets(self.listeners.own_addresses());
                self.core.reconfigure(*config, &mut lock(&self.ledger));
                self.host_addresses = interfaces::host_addresses();
                self.core.set_host_addresses(&self.host_addresses);
                info!("configuration reloaded");
            }
            Control::ListAllocations { offset, limit, reply } => {
                let mut all: Vec<_> = self.core.allocations().map(|(id, a)| describe(id, a, now)).collect();
                all.sort_by_key(|a| a.id);
                let total = all.len();
                let page = all.into_iter().skip(offset).take(limit).collect();
                let _ = reply.send((page, total));
            }
            Control::DropAllocation { id, reply } => {
                let _ = reply.send(self.core.close_allocation(id, now, &mut lock(&self.ledger)));
            }
            Control::DropUser { user, reply } => {
                let _ = reply.send(self.core.close_user(&user, now, &mut lock(&self.ledger)));
            }
            Control::Revoke { user, reply } => {
                let ended =
                    self.core.revoke(&user, now, unix_now(), &mut lock(&self.ledger)).map_err(|e| e.to_string());
                if ended.is_ok() {
                    info!(user = %user, "revoked");
                }
                let _ = reply.send(ended);
            }
            Control::LiftRevocation { user, reply } => {
                let _ = reply.send(self.core.lift_revocation(&user));
            }
            Control::ListRevocations { reply } => {
                let _ = reply.send(self.core.revocations(unix_now()));
            }
            Control::Drain { alternate, reply } => {
                self.core.drain(alternate);
                let _ = reply.send(());
            }
            Control::Shutdown => {}
        }
        self.drain_outputs();
    }

    fn stream_event(&mut self, event: StreamEvent) {
        let now = Instant::now();
        match event {
            StreamEvent::Opened { five_tuple, client } => {
                self.streams.insert(five_tuple, client);
            }
            StreamEvent::Frame { five_tuple, frame } => {
                let started = is_control(&frame).then(Instant::now);
                let relayed = match self.core.handle_client_packet(now, five_tuple, &frame) {
                    Received::Relay(out) => Some(out),
                    Received::Handled => None,
                    Received::Request => {
                        let mut shared = lock(&self.ledger);
                        self.core.handle_request(now, unix_now(), five_tuple, &frame, &mut shared);
                        None
                    }
                };
                if let Some(started) = started {
                    let seconds = started.elapsed().as_secs_f64();
                    self.snapshot.request_seconds.observe(&report::REQUEST_SECONDS_BOUNDS, seconds);
                }
                if let Some(out) = relayed {
                    if let (Some(relay), Some(payload)) =
                        (self.relay_socket(out.allocation, out.peer.get()), frame.get(out.payload))
                    {
                        if let Err(e) = relay.send_to(payload, out.peer.get()) {
                            debug!(error = %e, peer = %out.peer, "send to peer failed");
                        }
                    }
                }
                self.drain_outputs();
            }
            StreamEvent::Closed { five_tuple } => {
                self.streams.remove(&five_tuple);
                self.core.close_five_tuple(five_tuple, now, &mut lock(&self.ledger));
                self.drain_outputs();
            }
            StreamEvent::PeerIncoming { allocation, stream, peer } => {
                if let Some(connection) = self.core.handle_peer_incoming(now, allocation, PeerAddr::new(peer)) {
                    self.peer_streams.insert(connection, stream);
                }
                self.drain_outputs();
            }
            StreamEvent::PeerConnected { connection, stream } => {
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
                self.core.handle_peer_connected(now, connection, connected);
                self.drain_outputs();
            }
        }
    }

    /// Sends a framed message to a client on any transport: over UDP through the
    /// outbox (flushed when full and after every pass over the ready sockets).
    fn send_to_client(&mut self, to: FiveTuple, payload: Payload) {
        if to.transport == Transport::Udp {
            let Some(listener) = self.listeners.reply_via(to.server) else {
                return;
            };
            let (socket, from) =
                (listener.socket.as_raw_fd(), listener.local.ip().is_unspecified().then_some(to.server.ip()));
            if self.outbox.is_full() {
                self.flush();
            }
            self.outbox.push(socket, to.client, from, payload);
        } else if let Some(client) = self.streams.get(&to) {
            let bytes = match payload {
                Payload::Owned(bytes) => bytes,
                Payload::Slot(range) => self.relay_buf.get(range).map(<[u8]>::to_vec).unwrap_or_default(),
            };
            // A full queue means the client is not reading: drop, as UDP would (and
            // the connection's write timeout cuts it if that goes on).
            let _ = client.send(Outbound::Bytes(bytes));
        }
    }

    /// Sends what the outbox holds; the relay slots are free again afterwards.
    fn flush(&mut self) {
        if !self.outbox.is_empty() {
            self.outbox.flush(&self.relay_buf);
        }
        self.next_slot = 0;
    }

    /// Copies the loop's state into the published snapshot.
    fn publish(&mut self) {
        self.publishes = self.publishes.wrapping_add(1);
        if self.publishes % HOST_CHECK_EVERY == 0 {
            let now_host = interfaces::host_addresses();
            if now_host != self.host_addresses {
                info!(addresses = ?now_host, "the host's addresses changed");
                self.core.set_host_addresses(&now_host);
                self.host_addresses = now_host;
            }
        }
        let now = Instant::now();
        let (permissions, channels) = self.core.binding_counts(now);
        let (ports_in_use, ports_available) = lock(&self.ledger).port_usage();
        let snapshot = &mut self.snapshot;
        snapshot.unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        snapshot.allocations = self.core.allocation_count();
        snapshot.permissions = permissions;
        snapshot.channels = channels;
        snapshot.ports_in_use = ports_in_use;
        snapshot.ports_available = ports_available;
        snapshot.tcp_connections = self.streams.len();
        snapshot.draining = self.core.is_draining();
        snapshot.stats = self.core.stats();
        // Publishing is also this loop's heartbeat: the merge in [`workers`] feeds
        // systemd's watchdog only while every loop's snapshot keeps moving.
        self.publisher.snapshots.send_replace(snapshot.clone());
    }

    /// Serves every ready socket once; returns how many were ready.
    fn serve_ready(&mut self) -> io::Result<usize> {
        let n = self.epoll.poll_ready(&mut self.events, &mut self.ready)?;
        for i in 0..self.ready.len() {
            let token = self.ready[i];
            if let Some(listener) = ListenerKey::from_token(token) {
                self.serve_listener(listener);
            } else {
                let family = if token & 1 == 0 { Family::V4 } else { Family::V6 };
                self.serve_relay(AllocationId(token >> 1), family);
            }
        }
        self.flush();
        Ok(n)
    }

    fn serve_listener(&mut self, key: ListenerKey) {
        for _ in 0..READS_PER_WAKE {
            let Some(listener) = self.listeners.get(key) else {
                return;
            };
            let mut meta = [RecvMeta::default(); BATCH];
            let received = {
                let mut slots = self.recv_slots.chunks_mut(MAX_DATAGRAM);
                let mut bufs: [IoSliceMut<'_>; BATCH] =
                    std::array::from_fn(|_| IoSliceMut::new(slots.next().unwrap_or_default()));
                listener.state.recv((&listener.socket).into(), &mut bufs, &mut meta)
            };
            let count = match received {
                Ok(count) => count,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    debug!(error = %e, "receive error on listener");
                    return;
                }
            };
            // One clock read per batch, not per datagram.
            let now = Instant::now();
            let unix = unix_now();
            let local = listener.local;
            for (slot, meta) in meta.iter().take(count).enumerate() {
                let server = SocketAddr::new(meta.dst_ip.unwrap_or(local.ip()), local.port());
                let from = FiveTuple { transport: Transport::Udp, client: meta.addr, server };
                // A zero source port cannot be answered and is a classic spoofing tell.
                if meta.addr.port() == 0 {
                    continue;
                }
                let start = slot * MAX_DATAGRAM;
                let stride = meta.stride.max(1);
                let mut offset = 0;
                while offset < meta.len {
                    let end = (offset + stride).min(meta.len);
                    let Some(packet) = self.recv_slots.get(start + offset..start + end) else {
                        break;
                    };
                    let control = is_control(packet);
                    let started = if control { Some(Instant::now()) } else { None };
                    let relayed = match self.core.handle_client_packet(now, from, packet) {
                        Received::Relay(out) => Some(out),
                        Received::Handled => None,
                        Received::Request => {
                            self.core.handle_request(now, unix, from, packet, &mut lock(&self.ledger));
                            None
                        }
                    };
                    if let Some(started) = started {
                        let seconds = started.elapsed().as_secs_f64();
                        self.snapshot.request_seconds.observe(&report::REQUEST_SECONDS_BOUNDS, seconds);
                    }
                    if let Some(out) = relayed {
                        // Queued in place (the payload stays in its receive slot) and sent
                        // after the batch, one sendmmsg per relay socket.
                        if let Some(relay) = self.relay_socket(out.allocation, out.peer.get()) {
                            let payload = start + offset + out.payload.start..start + offset + out.payload.end;
                            self.to_peers.push(relay.as_raw_fd(), out.peer.get(), None, Payload::Slot(payload));
                        }
                    }
                    offset = end;
                    self.drain_outputs();
                }
            }
            // Before the next receive reuses the slots the payloads are in.
            if !self.to_peers.is_empty() {
                self.to_peers.flush_by_socket(&self.recv_slots);
            }
            // A short batch drained the socket; level-triggered epoll says if more came.
            if count < BATCH {
                return;
            }
        }
    }

    fn serve_relay(&mut self, id: AllocationId, family: Family) {
        for _ in 0..READS_PER_WAKE {
            // Room for a whole batch, in the slots and in the outbox, so that nothing
            // flushes while this batch's packets sit in their slots half-queued.
            if self.next_slot + relay_socket::BATCH > RELAY_SLOTS || self.outbox.room() < relay_socket::BATCH {
                self.flush();
            }
            let Some(relay) = self.relays.get(&id).and_then(|r| r[family as usize].as_ref()) else {
                return;
            };
            let base = self.next_slot * RELAY_SLOT;
            let Some(area) = self.relay_buf.get_mut(base..base + relay_socket::BATCH * RELAY_SLOT) else {
                return;
            };
            let mut received = [None; relay_socket::BATCH];
            let count =
                match relay_socket::recv_batch(relay.as_raw_fd(), area, RELAY_SLOT, PEER_HEADROOM, &mut received) {
                    Ok(count) => count,
                    // Nothing to read: the wake-up may be an EPOLLERR alone (a send
                    // took the socket's pending error, the queue still holds it).
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.serve_relay_errors(id, family);
                        return;
                    }
                    Err(e) => {
                        // An ICMP error about a datagram this socket sent (IP_RECVERR):
                        // relayed to the client from the error queue; the allocation
                        // lives on.
                        debug!(error = %e, allocation = id.0, "receive error on relay socket");
                        self.serve_relay_errors(id, family);
                        continue;
                    }
                };
            self.next_slot += count;
            let now = Instant::now();
            for (slot, entry) in received.iter().take(count).enumerate() {
                let Some((len, peer)) = *entry else {
                    continue;
                };
                let start = base + slot * RELAY_SLOT + PEER_HEADROOM;
                let Some(out) =
                    self.core.handle_peer_packet(now, id, PeerAddr::new(peer), &mut self.relay_buf, start..start + len)
                else {
                    continue;
                };
                self.send_to_client(out.to, Payload::Slot(out.range));
            }
            if count < relay_socket::BATCH {
                return;
            }
        }
    }

    /// Reads a relay socket's error queue (bounded per wake-up) and hands each ICMP
    /// error to the core, which relays it to the client (RFC 8656 §11).
    fn serve_relay_errors(&mut self, id: AllocationId, family: Family) {
        let Some(fd) = self.relays.get(&id).and_then(|r| r[family as usize].as_ref()).map(|s| s.as_raw_fd()) else {
            return;
        };
        let now = Instant::now();
        for _ in 0..relay_socket::ICMP_PER_WAKE {
            match relay_socket::recv_icmp(fd) {
                Ok(Some((peer, icmp))) => {
                    debug!(allocation = id.0, %peer, kind = icmp.kind, code = icmp.code, "ICMP error from peer");
                    self.core.handle_peer_icmp(now, id, PeerAddr::new(peer), icmp);
                }
                Ok(None) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.drain_outputs();
    }

    fn drain_outputs(&mut self) {
        while let Some(output) = self.core.poll_output() {
            match output {
                Output::Transmit { to, bytes } => self.send_to_client(to, Payload::Owned(bytes)),
                Output::BindRelay { allocation, local, dont_fragment, tcp } => {
                    let result = if tcp {
                        self.open_tcp_relay(allocation, local)
                    } else {
                        self.open_relay(allocation, local, dont_fragment)
                    };
                    self.core.handle_relay_bound(Instant::now(), allocation, local, result, &mut lock(&self.ledger));
                }
                Output::CloseRelay { allocation } => {
                    // Closing a socket takes it out of the epoll set (its descriptor is
                    // never duplicated), so no EPOLL_CTL_DEL: one syscall less per allocation.
                    drop(self.relays.remove(&allocation));
                    if let Some(accepting) = self.tcp_relays.remove(&allocation) {
                        accepting.abort();
                    }
                }
                Output::ConnectPeer { connection, local, peer, .. } => {
                    let events = self.stream_events.clone();
                    tokio::spawn(async move {
                        let stream = tcp_relay::connect(local, peer).await;
                        let _ = events.send(StreamEvent::PeerConnected { connection, stream }).await;
                    });
                }
                Output::BindData { connection, data } => {
                    let spliced = match (self.peer_streams.remove(&connection), self.streams.get(&data)) {
                        // Queued behind the ConnectionBind success already sent to it; a
                        // bound data connection counts as authenticated.
                        (Some(peer), Some(client)) => {
                            let queued = client.send(Outbound::Splice(peer));
                            if queued {
                                client.authenticated();
                            }
                            queued
                        }
                        _ => false,
                    };
                    if !spliced {
                        self.core.close_five_tuple(data, Instant::now(), &mut lock(&self.ledger));
                    }
                }
                Output::ClosePeerConnection { connection, data } => {
                    self.peer_streams.remove(&connection);
                    if let Some(data) = data {
                        // Dropping its queue ends the splice and closes both sides.
                        self.streams.remove(&data);
                    }
                }
                Output::Event(event) => {
                    log_event(&event);
                    // A TCP/TLS connection that holds an allocation is authenticated: out
                    // of its source's unauthenticated count and timeout (before the
                    // Allocate success, which follows this event, is written).
                    if let Event::AllocationCreated { five_tuple, .. } = &event {
                        if let Some(client) = self.streams.get(five_tuple) {
                            client.authenticated();
                        }
                    }
                    if let Event::AllocationEnded { duration, .. } = &event {
                        let seconds = duration.as_secs_f64();
                        self.snapshot.allocation_lifetime_seconds.observe(&report::LIFETIME_SECONDS_BOUNDS, seconds);
                    }
                    // No receiver is fine: nobody is watching.
                    let _ = self.publisher.events.send(event);
                }
            }
        }
    }

    /// RFC 6062: a TCP listener on the relayed address, accepting peer connections.
    fn open_tcp_relay(&mut self, id: AllocationId, local: SocketAddr) -> Result<SocketAddr, RelayBindError> {
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

    /// The relay socket of `id` for sending to `peer`.
    fn relay_socket(&self, id: AllocationId, peer: SocketAddr) -> Option<&UdpSocket> {
        self.relays.get(&id)?[Family::of(peer.ip()) as usize].as_ref()
    }

    fn open_relay(
        &mut self,
        id: AllocationId,
        local: SocketAddr,
        dont_fragment: bool,
    ) -> Result<SocketAddr, RelayBindError> {
        let socket = match relay_socket::bind(local, dont_fragment) {
            Ok(socket) => socket,
            Err((kind, e)) => {
                // Once per episode (e.g. out of file descriptors), not once per Allocate.
                if kind != RelayBindError::AddrInUse && !RELAY_BIND_FAILING.swap(true, Ordering::Relaxed) {
                    warn!(error = %e, %local, "cannot open relay socket; new allocations get 508 until this clears");
                }
                return Err(kind);
            }
        };
        if RELAY_BIND_FAILING.load(Ordering::Relaxed) && RELAY_BIND_FAILING.swap(false, Ordering::Relaxed) {
            info!("relay sockets can be opened again");
        }
        let socket: UdpSocket = socket.into();
        let bound = socket.local_addr().map_err(|_| RelayBindError::Other)?;
        let family = Family::of(bound.ip());
        if let Err(e) = self.epoll.add(socket.as_raw_fd(), id.0 << 1 | family as u64) {
            warn!(error = %e, "cannot watch relay socket");
            return Err(RelayBindError::Other);
        }
        self.relays.entry(id).or_default()[family as usize] = Some(socket);
        Ok(bound)
    }
}

/// The epoll descriptor as tokio sees it; ownership stays with [`Epoll`].
struct EpollFd(std::os::fd::RawFd);

impl AsRawFd for EpollFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}

/// How often the loop publishes its snapshot.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// STUN requests (not ChannelData, not Send indications): what the request time
/// histogram measures.
fn is_control(packet: &[u8]) -> bool {
    packet.first().is_some_and(|b| *b < 0x40) && packet.get(..2) != Some(&[0x00, 0x16][..])
}

fn describe(id: AllocationId, a: &crate::turn::allocation::Allocation, now: Instant) -> report::AllocationInfo {
    let (permissions, channels) = a.counts(now);
    report::AllocationInfo {
        id: id.0,
        user: a.username.to_string(),
        client: a.five_tuple.client,
        transport: a.five_tuple.transport.label(),
        relay: a.relay_addrs().next().map_or(a.five_tuple.server, |r| r.advertised),
        age_secs: now.saturating_duration_since(a.created).as_secs(),
        expires_in_secs: a.remaining(now).as_secs(),
        permissions,
        channels,
        bytes_to_peer: a.traffic.to_peer_bytes,
        bytes_to_client: a.traffic.to_client_bytes,
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Warning lines about failed authentications at most this often a second, over the
/// process: enough for fail2ban to count an attacker, too few to flood the log.
const AUTH_FAILURE_LINES_PER_SECOND: u64 = 100;
/// (second, lines logged in it, lines left out) of the limiter below.
static AUTH_FAILURE_LOG: std::sync::Mutex<(u64, u64, u64)> = std::sync::Mutex::new((0, 0, 0));

/// One warning line per failed authentication, in the fixed format the shipped
/// fail2ban filter matches (`ip=`, then `port=` and `reason=`; nothing a client chose),
/// rate limited. Stale nonces are the normal flow of a long call: debug only.
fn log_auth_failure(client: SocketAddr, reason: AuthFailure) {
    let (ip, port, label) = (client.ip(), client.port(), reason.label());
    if matches!(reason, AuthFailure::StaleNonce | AuthFailure::RateLimited) {
        debug!(ip = %ip, port, reason = %label, "authentication failed");
        return;
    }
    let now = unix_now();
    let left_out = {
        let mut state = AUTH_FAILURE_LOG.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (second, logged, dropped) = &mut *state;
        let mut left_out = 0;
        if *second != now {
            left_out = std::mem::take(dropped);
            (*second, *logged) = (now, 0);
        }
        if *logged >= AUTH_FAILURE_LINES_PER_SECOND {
            *dropped += 1;
            return;
        }
        *logged += 1;
        left_out
    };
    if left_out > 0 {
        warn!(count = left_out, "authentication failure lines left out in the last second (rate limit)");
    }
    warn!(ip = %ip, port, reason = %label, "authentication failed");
}

fn log_event(event: &Event) {
    match event {
        // One info line per allocation, when it ends, with everything an operator looks
        // up later (who, from where, which relay port, how long, how much): half the log
        // volume of a line at each end, and logging is a tenth of the CPU of a short call.
        Event::AllocationCreated { id, five_tuple, username, relay, lifetime } => debug!(
            allocation = id.0, client = %five_tuple.client, user = %username, relay = %relay,
            lifetime = lifetime.as_secs(), "allocation created"
        ),
        Event::AllocationRefreshed { id, lifetime } => {
            debug!(allocation = id.0, lifetime = lifetime.as_secs(), "allocation refreshed")
        }
        Event::AllocationEnded { id, five_tuple, relay, username, reason, traffic, duration } => info!(
            allocation = id.0, client = %five_tuple.client, user = %username, relay = %relay,
            reason = match reason { EndReason::Expired => "expired", EndReason::Deleted => "deleted", EndReason::Closed => "closed" },
            to_peer_bytes = traffic.to_peer_bytes, to_client_bytes = traffic.to_client_bytes,
            duration = duration.as_secs(), "allocation ended"
        ),
        Event::AuthFailed { client, reason } => log_auth_failure(*client, *reason),
        Event::PeerDenied { id, peer } => warn!(allocation = id.0, peer = %peer, "peer refused by policy"),
    }
}
