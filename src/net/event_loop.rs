//! The worker's run loop: one [`EventLoop`] owns one [`Server`] and every socket it
//! serves. Client listeners, relay sockets and the TCP/TLS client connections handed
//! to it sit in one level-triggered epoll set that tokio watches as a single
//! descriptor; connection hand-overs and the events of RFC 6062 tasks, timers,
//! snapshots and admin commands come through the `select!` in [`EventLoop::run`]. Each
//! socket gets at most [`READS_PER_WAKE`] reads per wake-up, and queued stream events
//! the same budget, so no one source starves the others. Output is gathered during a
//! pass and written at its end ([`EventLoop::flush`]): sendmmsg batches for UDP, one
//! write per TCP/TLS connection. The paths themselves are in sibling files:
//! [`super::udp`], [`super::stream_conn`], [`super::stream_events`],
//! [`super::stream_splice`], [`super::control`], [`super::rfc6062`] and
//! [`super::output`].

use super::ledger::SharedLedger;
use super::listeners::UdpListeners;
use super::outbox::{self, Outbox};
use super::report::{Control, Publisher, Snapshot};
use super::stream::{self, StreamEvent};
use super::token::Token;
use crate::sys::epoll::Epoll;
use crate::sys::interfaces;
use crate::turn::id_map::IdMap;
use crate::turn::lookup::LookupResult;
use crate::turn::relay::ToPeer;
use crate::turn::relay::{PEER_HEADROOM, PEER_TAILROOM};
use crate::turn::{AllocationId, CoreConfig, FiveTuple, Ledger, Received, Server};
use std::collections::HashMap;
use std::io;
use std::net::UdpSocket;
use std::pin::pin;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tracing::warn;

/// Datagrams read per recvmmsg call on a listener. Under load a listener's queue holds
/// many (thousands of clients, each a packet or two in flight): 32, as quinn-udp's own
/// batch and the bench's forwarder, takes a quarter of the calls 8 did; a slot is only
/// touched as far as its datagram, so the larger buffer costs address space, not RSS.
pub(super) const BATCH: usize = 32;
/// Queued stream events taken per wake-up, before other work gets a turn.
const STREAM_EVENTS_PER_WAKE: usize = 128;
/// The largest UDP payload.
pub(super) const MAX_DATAGRAM: usize = 65536;
/// How many reads one socket gets per wake-up before others get a turn.
pub(super) const READS_PER_WAKE: usize = 16;
/// One relay receive slot: room for the relay header in front of the largest datagram
/// and for padding after it.
pub(super) const RELAY_SLOT: usize = PEER_HEADROOM + MAX_DATAGRAM + PEER_TAILROOM;
/// Relay receive slots: relayed packets wait in theirs, framed, until the outbox is
/// flushed, so there is a slot for every datagram the outbox can hold.
pub(super) const RELAY_SLOTS: usize = outbox::CAPACITY;
/// How often the loop publishes its snapshot.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// The event loop: owns the core, the listeners and the relay sockets.
pub struct EventLoop {
    pub(super) core: Server,
    /// What every worker counts together; locked only for the core's control-plane
    /// entry points that take it.
    pub(super) ledger: SharedLedger,
    pub(super) listeners: UdpListeners,
    /// Relay sockets by allocation, one per [`Family`](crate::turn::allocation::Family)
    /// (read for every datagram: a fast hash of the server-chosen id).
    pub(super) relays: IdMap<[Option<UdpSocket>; 2]>,
    pub(super) epoll: Epoll,
    pub(super) recv_slots: Vec<u8>,
    /// [`RELAY_SLOTS`] receive slots for relay sockets.
    pub(super) relay_buf: Vec<u8>,
    /// The first relay slot not holding a datagram that waits in `outbox`.
    pub(super) next_slot: usize,
    /// Where a relay batch holding GRO runs waits while its datagrams are spread over
    /// relay slots (empty until a first run arrives).
    pub(super) gro_scratch: Vec<u8>,
    /// Datagrams for UDP clients, sent in batches.
    pub(super) outbox: Outbox,
    /// Datagrams from one listener batch for peers, payloads still in `recv_slots`.
    pub(super) to_peers: Outbox,
    /// Datagrams for peers from one read of a TCP/TLS connection, payloads copied
    /// into `stream_peer_bytes` (see `stream_conn`).
    pub(super) stream_to_peers: Outbox,
    /// The payloads `stream_to_peers` holds; emptied by each flush.
    pub(super) stream_peer_bytes: Vec<u8>,
    pub(super) events: Vec<libc::epoll_event>,
    pub(super) ready: Vec<u64>,
    pub(super) publisher: Publisher,
    pub(super) snapshot: Snapshot,
    /// Per-tenant counters the snapshot's realm figures start from; one entry per
    /// tenant id the config ever had (operator-configured, so bounded).
    pub(super) realm_counters: HashMap<crate::turn::TenantId, RealmCounters>,
    /// TCP/TLS connections, by their 5-tuple: served here or by their task.
    pub(super) streams: HashMap<FiveTuple, stream::StreamHandle>,
    /// The TCP/TLS connections this loop serves itself.
    pub(super) conns: super::stream_conn::Conns,
    /// RFC 6062 data connections this loop splices to their peers.
    pub(super) splices: super::stream_splice::Splices,
    /// Where spawned connection tasks report (RFC 6062 peer connections).
    pub(super) stream_events: mpsc::Sender<StreamEvent>,
    /// RFC 6062: accept loops of TCP relay listeners, by allocation.
    pub(super) tcp_relays: HashMap<AllocationId, tokio::task::JoinHandle<()>>,
    /// RFC 6062: peer connections waiting for a ConnectionBind.
    pub(super) peer_streams: HashMap<crate::turn::ConnectionId, tokio::net::TcpStream>,
    /// The host's interface addresses as last read (re-read every few publishes).
    pub(super) host_addresses: Vec<std::net::IpAddr>,
    /// Snapshots published so far.
    pub(super) publishes: u32,
    /// RFC 8016: the channels to the other workers, for moves (none: a lone loop).
    pub(super) handovers: Option<super::handover::Handovers>,
    /// Live upgrade: the allocations exported by a freeze, until thawed or released.
    pub(super) frozen: Option<Vec<AllocationId>>,
    /// Live upgrade done: the successor serves UDP, this loop only TCP and TLS.
    pub(super) released: bool,
    /// This worker's index and the lookup service's request queue (the
    /// authentication webhook); `None` in a loop started without one.
    pub(super) lookups: Option<(usize, mpsc::Sender<super::webhook::LookupRequest>)>,
    /// The XDP fast path's map sync (inactive unless `[relay] xdp` attached it).
    pub(super) xdp: super::xdp::Offloader,
}

impl EventLoop {
    /// An event loop serving `listeners` with the core `make_core` builds from `config`
    /// (once the listeners' own addresses are in its peer policy).
    pub fn new(
        config: CoreConfig,
        listeners: Vec<(UdpSocket, crate::turn::TenantId)>,
        publisher: Publisher,
        stream_events: mpsc::Sender<StreamEvent>,
        ledger: SharedLedger,
        make_core: impl FnOnce(CoreConfig, &Mutex<Ledger>) -> Server,
    ) -> io::Result<Self> {
        let epoll = Epoll::new()?;
        let (bound, keys) = UdpListeners::new(listeners)?;
        for (key, fd) in keys {
            epoll.add(fd, Token::Listener(key).encode())?;
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
                let mut core = make_core(config, &ledger);
                core.set_host_addresses(&host_addresses);
                core
            },
            ledger,
            host_addresses,
            publishes: 0,
            listeners: bound,
            relays: IdMap::default(),
            epoll,
            recv_slots: vec![0; BATCH * MAX_DATAGRAM],
            relay_buf: vec![0; RELAY_SLOT * RELAY_SLOTS],
            next_slot: 0,
            gro_scratch: Vec::new(),
            outbox: Outbox::new(super::udp::offload()),
            to_peers: Outbox::new(super::udp::offload()),
            stream_to_peers: Outbox::new(super::udp::offload()),
            stream_peer_bytes: Vec::new(),
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 256],
            ready: Vec::with_capacity(256),
            publisher,
            snapshot: Snapshot::default(),
            realm_counters: HashMap::new(),
            streams: HashMap::new(),
            conns: Default::default(),
            splices: Default::default(),
            stream_events,
            tcp_relays: HashMap::new(),
            peer_streams: HashMap::new(),
            handovers: None,
            frozen: None,
            released: false,
            lookups: None,
            xdp: super::xdp::Offloader::new(),
        })
    }

    /// Joins the loop to its sibling workers for RFC 8016 moves.
    pub fn with_handovers(mut self, handovers: super::handover::Handovers) -> Self {
        self.handovers = Some(handovers);
        self
    }

    /// Connects the loop to the process's lookup service as worker `worker`; the
    /// service's answers come in through [`EventLoop::run`].
    pub fn with_lookups(mut self, worker: usize, requests: mpsc::Sender<super::webhook::LookupRequest>) -> Self {
        self.lookups = Some((worker, requests));
        self
    }

    /// Runs until `control` says stop or closes; `streams` brings TCP/TLS traffic and
    /// `lookups` the lookup service's answers.
    pub async fn run(
        mut self,
        mut control: mpsc::Receiver<Control>,
        mut streams: mpsc::Receiver<StreamEvent>,
        lookups: Option<mpsc::Receiver<LookupResult>>,
    ) -> io::Result<()> {
        let mut lookups = lookups;
        let watch = self.epoll.watch()?;
        let mut handover_inbox = self.handovers.as_mut().and_then(|h| h.inbox.take());
        let mut publish = tokio::time::interval(PUBLISH_EVERY);
        publish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sweep = tokio::time::interval(super::stream_conn::SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                    for _ in 0..STREAM_EVENTS_PER_WAKE {
                        match streams.try_recv() {
                            Ok(event) => self.stream_event(event),
                            Err(_) => break,
                        }
                    }
                }
                Some(message) = async {
                    match handover_inbox.as_mut() {
                        Some(inbox) => inbox.recv().await,
                        None => std::future::pending().await,
                    }
                } => self.handover(message),
                Some(result) = async {
                    match lookups.as_mut() {
                        Some(results) => results.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    // Answers are rare next to packets: one per wake-up keeps the
                    // request they release within the usual per-input drain.
                    self.core.handle_lookup(Instant::now(), result, &*self.ledger);
                }
                _ = publish.tick() => {
                    // First, so the snapshot counts what the fast path relayed.
                    self.xdp.tick(&mut self.core);
                    self.publish();
                }
                _ = sweep.tick(), if self.conns.len() > 0 => self.sweep_streams(),
                message = control.recv() => match message {
                    Some(Control::Shutdown) | None => return Ok(()),
                    Some(message) => {
                        self.control(message);
                        self.xdp.mark_dirty();
                    }
                },
            }
            let now = Instant::now();
            if self.core.poll_timeout().is_some_and(|at| at <= now) {
                self.core.handle_timeout(now, &*self.ledger);
            }
            self.drain_outputs();
            self.flush();
            self.xdp.after_wake(&mut self.core);
        }
    }

    /// Serves every ready socket once; returns how many were ready.
    fn serve_ready(&mut self) -> io::Result<usize> {
        let n = self.epoll.poll_ready(&mut self.events, &mut self.ready)?;
        for i in 0..self.ready.len() {
            match Token::decode(self.ready[i]) {
                Token::Listener(listener) => self.serve_listener(listener),
                Token::Relay(id, family) => self.serve_relay(id, family),
                Token::Stream(slot) => self.serve_stream(slot),
                Token::Splice(slot, side) => self.serve_splice(slot, side),
            }
        }
        self.flush();
        Ok(n)
    }

    /// Sends what the outbox holds (the relay slots are free again afterwards) and writes
    /// what TCP/TLS connections have queued.
    pub(super) fn flush(&mut self) {
        if !self.outbox.is_empty() {
            self.outbox.flush(&self.relay_buf);
        }
        self.next_slot = 0;
        self.flush_streams();
    }
}

/// What a loop counts per tenant between snapshots (see `control::realm_figures`).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct RealmCounters {
    /// Auth failures.
    pub(super) auth_failures: u64,
    /// Payload bytes of allocations that ended.
    pub(super) ended_bytes: u64,
}

/// Seconds since the Unix epoch, for the core's credential checks and the snapshot.
pub(super) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A client packet through the core: the relay hot path, or for a STUN request the
/// request path with the shared ledger locked for that call alone. Returns what to
/// relay to a peer.
pub(super) fn through_core(
    core: &mut Server,
    ledger: &SharedLedger,
    now: Instant,
    unix_now: u64,
    from: FiveTuple,
    packet: &[u8],
) -> Option<ToPeer> {
    match core.handle_client_packet(now, from, packet) {
        Received::Relay(out) => Some(out),
        Received::Handled => None,
        Received::Request => {
            core.handle_request(now, unix_now, from, packet, &**ledger);
            None
        }
    }
}
