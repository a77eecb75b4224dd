//! TCP and TLS client connections served by their worker's event loop itself. Once a
//! connection's first message has chosen its worker ([`super::route::StreamRouter`]),
//! the accepting task hands the connection over ([`Handover`]: the socket, the rustls
//! session, the bytes already read) and the loop puts the socket in its epoll set
//! beside the UDP listeners and relay sockets. From then on one thread reads, frames,
//! runs the core and writes: no channel and no copy between threads per message.
//!
//! - Reading: into the connection's [`Framer`] (for TLS, rustls decrypts into it); each
//!   whole frame goes through the core straight from that buffer; the payloads a read's
//!   messages relay are gathered (copied, into one reused buffer) and sent with one
//!   sendmmsg per relay socket once that read is served.
//! - Writing: answers and relayed data for a connection are appended to its output
//!   buffer (reused, no allocation per message) and written once per pass of the loop,
//!   all together: one `write` (for TLS, one record per 16 KiB) for everything the pass
//!   produced.
//! - Back-pressure: while a connection's output cannot be written (the client is not
//!   reading), the loop stops reading it (the epoll entry watches for room to write
//!   instead), queues at most [`OUTPUT_LIMIT`] bytes (more is dropped, as UDP would),
//!   and cuts it once nothing could be written for `write_timeout`.
//! - Timeouts (`idle_timeout`, a message stalled for `first_message_timeout`,
//!   `unauthenticated_timeout`, `write_timeout`) are checked every [`SWEEP_EVERY`].
//!
//! RFC 6062 data connections (first message a ConnectionBind) are served here too until
//! bound; then the loop splices them to their peer ([`super::stream_splice`]).

use super::admission::{SourceSlot, StreamLimits, CUT_UNAUTHENTICATED, CUT_WRITE_TIMEOUT};
use super::event_loop::{through_core, unix_now, EventLoop, READS_PER_WAKE};
use super::ledger::SharedLedger;
use super::outbox::{Outbox, Payload};
use super::report::{self, Snapshot};
use super::tls_write::{write_plaintext, WriteError};
use super::token::Token;
use crate::stun::framing::Framer;
use crate::stun::raw::is_control;
use crate::turn::allocation::Family;
use crate::turn::id_map::IdMap;
use crate::turn::{FiveTuple, Server};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::debug;

/// Bytes queued for one client beyond which further messages are dropped (the client
/// is not reading; the write timeout cuts it if that goes on).
pub(super) const OUTPUT_LIMIT: usize = 256 * 1024;
/// An output buffer that grew past this (a burst) is given back once written.
const OUTPUT_KEEP: usize = 64 * 1024;
/// How often the loop checks its connections' timeouts.
pub(super) const SWEEP_EVERY: Duration = Duration::from_millis(200);
/// rustls calls per read or write before the loop moves on (the socket stays ready).
pub(super) const TLS_STEPS: usize = 8;
/// What rustls reads from a socket per call at most: a shorter read emptied it.
const TLS_READ: usize = 4096;

/// What keeps a connection counted while it lives (its place under `max-connections`,
/// its PROXY protocol claim), released when it is dropped.
pub(super) type Held = Box<dyn Send>;

/// A connection on its way from its accepting task to its worker's loop.
pub struct Handover {
    /// Its 5-tuple.
    pub(super) five_tuple: FiveTuple,
    /// The socket (non-blocking, out of tokio's reactor).
    pub(super) socket: TcpStream,
    /// The TLS session, for a `tls` listener's connection.
    pub(super) tls: Option<Box<rustls::ServerConnection>>,
    /// The first message, already framed.
    pub(super) first: Vec<u8>,
    /// What was read behind it.
    pub(super) framer: Framer,
    /// Its place in its source's counts.
    pub(super) source: Arc<SourceSlot>,
    /// See [`Held`].
    pub(super) held: Held,
    /// The listener's limits.
    pub(super) limits: StreamLimits,
    /// When it was accepted.
    pub(super) accepted_at: Instant,
}

impl std::fmt::Debug for Handover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handover").field("five_tuple", &self.five_tuple).finish_non_exhaustive()
    }
}

/// A connection taken out of the loop's set by [`Conns::detach`].
pub(super) struct Detached {
    /// The data connection's 5-tuple.
    pub(super) five_tuple: FiveTuple,
    /// Its socket, still in the loop's epoll set under its old token.
    pub(super) socket: TcpStream,
    /// Its TLS session, with whatever it holds.
    pub(super) tls: Option<Box<rustls::ServerConnection>>,
    /// What waits to be written to the client (the ConnectionBind success).
    pub(super) output: Vec<u8>,
    /// What was read from the client and not framed.
    pub(super) early: Vec<u8>,
    /// Its place in its source's counts.
    pub(super) source: Arc<SourceSlot>,
    /// See [`Held`].
    pub(super) held: Held,
}

/// One connection the loop serves.
struct Conn {
    five_tuple: FiveTuple,
    socket: TcpStream,
    tls: Option<Box<rustls::ServerConnection>>,
    framer: Framer,
    /// Bytes for the client not written yet (for TLS: not yet given to rustls).
    output: Vec<u8>,
    source: Arc<SourceSlot>,
    _held: Held,
    limits: StreamLimits,
    accepted_at: Instant,
    last_activity: Instant,
    /// Since when a message has been arriving, if one is partly read.
    partial_since: Option<Instant>,
    /// Since when output has been waiting for the client to read.
    blocked_since: Option<Instant>,
    /// Its epoll entry watches for room to write (and not for data).
    watching_writable: bool,
    /// In the loop's list of connections to write at the end of the pass.
    dirty: bool,
}

/// How one attempt to read a connection went.
enum Fill {
    /// Bytes landed in the framer.
    Read,
    /// Nothing more for now.
    Empty,
    /// The connection is over, for this reason.
    Closed(&'static str),
}

impl Conn {
    /// Reads what is there into the framer (for TLS: decrypts what is buffered, reading
    /// the socket when nothing is, unless `drained`). Sets `drained` when a read came
    /// back short: the socket is empty, and another read would only say so (epoll
    /// reports what arrives later).
    fn fill(&mut self, drained: &mut bool) -> Fill {
        let Some(tls) = self.tls.as_mut() else {
            if *drained {
                return Fill::Empty;
            }
            let spare = self.framer.spare();
            let room = spare.len();
            return match (&self.socket).read(spare) {
                Ok(0) => Fill::Closed("closed by client"),
                Ok(n) => {
                    *drained = n < room;
                    self.framer.filled(n);
                    Fill::Read
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {
                    Fill::Empty
                }
                Err(_) => Fill::Closed("read error"),
            };
        };
        for _ in 0..TLS_STEPS {
            match tls.reader().read(self.framer.spare()) {
                Ok(0) => return Fill::Closed("closed by client"),
                Ok(n) => {
                    self.framer.filled(n);
                    return Fill::Read;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Fill::Closed("TLS error"),
            }
            // Whatever rustls held is taken: the socket next, unless it is empty.
            if *drained {
                return Fill::Empty;
            }
            match tls.read_tls(&mut self.socket) {
                Ok(0) => return Fill::Closed("closed by client"),
                Ok(n) => *drained = n < TLS_READ,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted => {
                    return Fill::Empty
                }
                Err(_) => return Fill::Closed("read error"),
            }
            if let Err(e) = tls.process_new_packets() {
                debug!(client = %self.five_tuple.client, error = %e, "TLS error");
                // The alert rustls queued, best effort.
                let _ = tls.write_tls(&mut self.socket);
                return Fill::Closed("TLS error");
            }
        }
        Fill::Empty
    }

    /// Whether output waits: queued bytes, or TLS records rustls holds.
    fn has_output(&self) -> bool {
        !self.output.is_empty() || self.tls.as_ref().is_some_and(|tls| tls.wants_write())
    }

    /// Writes what it can of the output; `Err` ends the connection.
    fn write_output(&mut self) -> Result<(), &'static str> {
        match self.tls.as_mut() {
            None => {
                let mut written = 0;
                while written < self.output.len() {
                    match (&self.socket).write(self.output.get(written..).unwrap_or_default()) {
                        Ok(0) => return Err("write error"),
                        Ok(n) => written += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return Err("write error"),
                    }
                }
                self.output.drain(..written);
            }
            Some(tls) => {
                let written = write_plaintext(tls, &self.socket, &self.output).map_err(|e| match e {
                    WriteError::Tls => "TLS error",
                    WriteError::Socket => "write error",
                })?;
                self.output.drain(..written.taken);
            }
        }
        if self.output.is_empty() && self.output.capacity() > OUTPUT_KEEP {
            self.output = Vec::new();
        }
        Ok(())
    }

    /// Why the connection is due to be cut at `now`, if it is.
    fn expired(&self, now: Instant) -> Option<&'static str> {
        let after = |since: Instant, limit: Duration| since.checked_add(limit).is_some_and(|at| now >= at);
        if self.blocked_since.is_some_and(|since| after(since, self.limits.write_timeout)) {
            CUT_WRITE_TIMEOUT.fetch_add(1, Ordering::Relaxed);
            return Some("write timeout");
        }
        let timed_out = match self.partial_since {
            Some(since) => after(since, self.limits.first_message_timeout),
            None => after(self.last_activity, self.limits.idle_timeout),
        };
        if timed_out {
            return Some("timeout");
        }
        if !self.source.is_authenticated() && after(self.accepted_at, self.limits.unauthenticated_timeout) {
            CUT_UNAUTHENTICATED.fetch_add(1, Ordering::Relaxed);
            return Some("unauthenticated timeout");
        }
        None
    }
}

/// The connections a loop serves, in slots (a slot's index is its epoll token).
#[derive(Default)]
pub(super) struct Conns {
    slots: Vec<Option<Box<Conn>>>,
    free: Vec<usize>,
    /// Slots with output to write at the end of the pass.
    dirty: Vec<usize>,
    len: usize,
}

impl Conns {
    /// How many connections the loop serves.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    fn get_mut(&mut self, slot: usize) -> Option<&mut Conn> {
        self.slots.get_mut(slot).and_then(|c| c.as_deref_mut())
    }

    fn insert(&mut self, conn: Box<Conn>) -> usize {
        self.len += 1;
        match self.free.pop() {
            Some(slot) => {
                if let Some(place) = self.slots.get_mut(slot) {
                    *place = Some(conn);
                }
                slot
            }
            None => {
                self.slots.push(Some(conn));
                self.slots.len() - 1
            }
        }
    }

    /// Queues a framed message for a connection, written at the end of the pass.
    pub(super) fn queue(&mut self, slot: usize, bytes: &[u8]) {
        let Some(conn) = self.get_mut(slot) else {
            return;
        };
        if conn.output.len() + bytes.len() > OUTPUT_LIMIT {
            // The client is not reading: dropped, as UDP would.
            return;
        }
        conn.output.extend_from_slice(bytes);
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(slot);
        }
    }

    /// Takes a connection out of the set, to be spliced to its peer (a ConnectionBind
    /// succeeded): its epoll entry stays, to be retagged by the caller.
    pub(super) fn detach(&mut self, slot: usize) -> Option<Detached> {
        let mut conn = self.remove(slot)?;
        // Bytes the client sent behind its ConnectionBind belong to the peer.
        let early = conn.framer.take_pending().to_vec();
        let Conn { five_tuple, socket, tls, output, source, _held, .. } = *conn;
        Some(Detached { five_tuple, socket, tls, output, early, source, held: _held })
    }

    fn remove(&mut self, slot: usize) -> Option<Box<Conn>> {
        let conn = self.slots.get_mut(slot)?.take()?;
        self.len -= 1;
        self.free.push(slot);
        Some(conn)
    }
}

impl std::fmt::Debug for Conns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conns").field("len", &self.len).finish_non_exhaustive()
    }
}

/// Where a loop gathers what one read of a connection relays to peers: sent with one
/// sendmmsg per relay socket when the read's messages are served (a connection's
/// messages all go out of its allocation's socket), instead of one sendto each.
struct ToPeers<'a> {
    outbox: &'a mut Outbox,
    /// The payloads, copied out of the connection's read buffer.
    bytes: &'a mut Vec<u8>,
}

impl ToPeers<'_> {
    fn push(&mut self, socket: RawFd, peer: SocketAddr, payload: &[u8]) {
        if self.outbox.is_full() {
            self.flush();
        }
        let start = self.bytes.len();
        self.bytes.extend_from_slice(payload);
        self.outbox.push(socket, peer, None, Payload::Slot(start..self.bytes.len()));
    }

    fn flush(&mut self) {
        if !self.outbox.is_empty() {
            let failed = self.outbox.flush(self.bytes);
            if failed > 0 {
                debug!(failed, "sends to peers failed");
            }
        }
        self.bytes.clear();
        if self.bytes.capacity() > OUTPUT_KEEP {
            *self.bytes = Vec::new();
        }
    }
}

/// One message from a connection through the core, and its payload towards the peer
/// when it is relayed (queued in `to_peers`).
#[allow(clippy::too_many_arguments)]
fn handle_frame(
    core: &mut Server,
    ledger: &SharedLedger,
    relays: &IdMap<[Option<UdpSocket>; 2]>,
    snapshot: &mut Snapshot,
    mut to_peers: ToPeers<'_>,
    now: Instant,
    unix_now: u64,
    five_tuple: FiveTuple,
    frame: &[u8],
) {
    let started = is_control(frame).then(Instant::now);
    let relayed = through_core(core, ledger, now, unix_now, five_tuple, frame);
    if let Some(started) = started {
        snapshot.request_seconds.observe(&report::REQUEST_SECONDS_BOUNDS, started.elapsed().as_secs_f64());
    }
    if let Some(out) = relayed {
        let peer = out.peer.get();
        let relay = relays.get(&out.allocation).and_then(|r| r[Family::of(peer.ip()) as usize].as_ref());
        if let (Some(relay), Some(payload)) = (relay, frame.get(out.payload)) {
            to_peers.push(relay.as_raw_fd(), peer, payload);
        }
    }
}

impl EventLoop {
    /// Takes over a connection from its accepting task: serves its first message and
    /// whatever else was read, then watches its socket.
    pub(super) fn adopt_stream(&mut self, handover: Box<Handover>) {
        let Handover { five_tuple, socket, tls, first, framer, source, held, limits, accepted_at } = *handover;
        let now = Instant::now();
        let fd = socket.as_raw_fd();
        let conn = Box::new(Conn {
            five_tuple,
            socket,
            tls,
            framer,
            output: Vec::new(),
            source,
            _held: held,
            limits,
            accepted_at,
            last_activity: now,
            partial_since: None,
            blocked_since: None,
            watching_writable: false,
            dirty: false,
        });
        let slot = self.conns.insert(conn);
        if let Err(e) = self.epoll.add(fd, Token::Stream(slot).encode()) {
            debug!(error = %e, client = %five_tuple.client, "cannot watch a connection: closed");
            drop(self.conns.remove(slot));
            return;
        }
        self.streams.insert(five_tuple, super::stream::StreamHandle::Served(slot));
        debug!(client = %five_tuple.client, transport = five_tuple.transport.label(), slot, "connection adopted by its worker");
        let to_peers = ToPeers { outbox: &mut self.stream_to_peers, bytes: &mut self.stream_peer_bytes };
        handle_frame(
            &mut self.core,
            &self.ledger,
            &self.relays,
            &mut self.snapshot,
            to_peers,
            now,
            unix_now(),
            five_tuple,
            &first,
        );
        self.flush_stream_peers();
        self.drain_outputs();
        // What came with it, in the framer or (TLS) still in the session.
        self.serve_frames(slot, now, unix_now());
        self.read_stream(slot);
    }

    /// A connection's socket is ready: writes what waits, then reads.
    pub(super) fn serve_stream(&mut self, slot: usize) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if conn.has_output() {
            self.write_stream(slot);
        }
        self.read_stream(slot);
    }

    /// Reads a connection (at most [`READS_PER_WAKE`] times) and serves each message.
    fn read_stream(&mut self, slot: usize) {
        let now = Instant::now();
        let unix = unix_now();
        let mut drained = false;
        let mut budget = READS_PER_WAKE;
        loop {
            let Some(conn) = self.conns.get_mut(slot) else {
                return;
            };
            // Output waits for the client to read: no more requests until it does
            // (`write_stream` reads again when it stops waiting).
            if conn.watching_writable {
                return;
            }
            if budget == 0 {
                if conn.tls.is_none() {
                    // What is left waits in the socket, and epoll reports it again.
                    break;
                }
                // Plaintext rustls holds would not be reported: take it, but no more
                // from the socket.
                drained = true;
            }
            budget = budget.saturating_sub(1);
            match conn.fill(&mut drained) {
                Fill::Read => conn.last_activity = now,
                Fill::Empty => break,
                Fill::Closed(reason) => return self.close_stream(slot, reason),
            }
            let framed = self.serve_frames(slot, now, unix);
            let Some(conn) = self.conns.get_mut(slot) else {
                return;
            };
            // The message being received started with this read if one ended in it:
            // a client streaming back to back is never "stalled mid-message".
            conn.partial_since = match (conn.framer.has_partial(), conn.partial_since) {
                (true, Some(since)) if !framed => Some(since),
                (true, _) => Some(now),
                (false, _) => None,
            };
        }
        // A TLS session may owe the client records of its own (alerts, key updates).
        if let Some(conn) = self.conns.get_mut(slot) {
            if conn.tls.as_ref().is_some_and(|tls| tls.wants_write()) && !conn.dirty {
                conn.dirty = true;
                self.conns.dirty.push(slot);
            }
        }
    }

    /// Serves every whole message buffered for a connection; whether there was one.
    /// What they relay goes to the peers before it returns (the payloads are copies).
    fn serve_frames(&mut self, slot: usize, now: Instant, unix: u64) -> bool {
        let framed = self.serve_frames_queued(slot, now, unix);
        self.flush_stream_peers();
        framed
    }

    fn serve_frames_queued(&mut self, slot: usize, now: Instant, unix: u64) -> bool {
        let mut framed = false;
        loop {
            let Some(conn) = self.conns.slots.get_mut(slot).and_then(|c| c.as_deref_mut()) else {
                return framed;
            };
            let five_tuple = conn.five_tuple;
            match conn.framer.next_frame() {
                Ok(Some(frame)) => {
                    framed = true;
                    let to_peers = ToPeers { outbox: &mut self.stream_to_peers, bytes: &mut self.stream_peer_bytes };
                    handle_frame(
                        &mut self.core,
                        &self.ledger,
                        &self.relays,
                        &mut self.snapshot,
                        to_peers,
                        now,
                        unix,
                        five_tuple,
                        frame,
                    );
                }
                Ok(None) => return framed,
                Err(_) => {
                    self.close_stream(slot, "not STUN");
                    return framed;
                }
            }
            // A relay socket the outputs close (or hand to another worker) takes what
            // waits for it first: see `flush_stream_peers` in `close_relay`.
            self.drain_outputs();
        }
    }

    /// Sends what connections' messages queued for peers; before a relay socket closes
    /// or moves, as the datagrams name it by descriptor.
    pub(super) fn flush_stream_peers(&mut self) {
        ToPeers { outbox: &mut self.stream_to_peers, bytes: &mut self.stream_peer_bytes }.flush();
    }

    /// The connection at `slot` now holds an allocation (see [`super::stream::Client::authenticated`]).
    pub(super) fn stream_authenticated(&mut self, slot: usize) {
        if let Some(conn) = self.conns.get_mut(slot) {
            conn.source.authenticate();
        }
    }

    /// Writes every connection that has output from this pass.
    pub(super) fn flush_streams(&mut self) {
        // Closing a connection runs the core, which may queue more: a few rounds.
        for _ in 0..4 {
            if self.conns.dirty.is_empty() {
                return;
            }
            let mut dirty = std::mem::take(&mut self.conns.dirty);
            for &slot in &dirty {
                if self.conns.get_mut(slot).is_some_and(|c| std::mem::take(&mut c.dirty)) {
                    self.write_stream(slot);
                }
            }
            dirty.clear();
            if self.conns.dirty.is_empty() {
                // Keep the list's memory.
                self.conns.dirty = dirty;
            }
        }
    }

    /// Writes a connection's output and watches it for room to write while some waits.
    fn write_stream(&mut self, slot: usize) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let had = conn.output.len();
        if let Err(reason) = conn.write_output() {
            return self.close_stream(slot, reason);
        }
        let now = Instant::now();
        if conn.output.len() < had {
            conn.last_activity = now;
        }
        let waiting = conn.has_output();
        conn.blocked_since = if waiting { Some(conn.blocked_since.unwrap_or(now)) } else { None };
        if waiting != conn.watching_writable {
            let fd = conn.socket.as_raw_fd();
            conn.watching_writable = waiting;
            // Rare (a client that does not keep up), and what a stalled connection's
            // log must show: whether it waits for the client or the client for it.
            let client = conn.five_tuple.client;
            if waiting {
                debug!(%client, queued = conn.output.len(), "client not reading: output waits");
            } else {
                debug!(%client, "client reading again: output written");
            }
            if let Err(e) = self.epoll.watch_for_writable(fd, Token::Stream(slot).encode(), waiting) {
                debug!(error = %e, "cannot change a connection's epoll entry");
                return self.close_stream(slot, "epoll error");
            }
            if !waiting {
                // Reading resumes now: what rustls holds would not wake the loop.
                self.read_stream(slot);
            }
        }
    }

    /// Cuts connections whose time is up.
    pub(super) fn sweep_streams(&mut self) {
        let now = Instant::now();
        for slot in 0..self.conns.slots.len() {
            let reason = self.conns.get_mut(slot).and_then(|conn| conn.expired(now));
            if let Some(reason) = reason {
                self.close_stream(slot, reason);
            }
        }
    }

    /// Ends a served connection: what waits is written if it can be, then it is shut
    /// down and its allocation goes with it (RFC 8656 §3.1).
    pub(super) fn close_stream(&mut self, slot: usize, reason: &'static str) {
        let Some(mut conn) = self.conns.remove(slot) else {
            return;
        };
        if !matches!(reason, "write error" | "read error" | "write timeout") {
            if let Some(tls) = conn.tls.as_mut() {
                tls.send_close_notify();
            }
            let _ = conn.write_output();
        }
        let _ = conn.socket.shutdown(Shutdown::Write);
        let five_tuple = conn.five_tuple;
        self.streams.remove(&five_tuple);
        // Closing the socket takes it out of the epoll set.
        drop(conn);
        self.core.close_five_tuple(five_tuple, Instant::now(), &*self.ledger);
        self.drain_outputs();
        debug!(client = %five_tuple.client, transport = five_tuple.transport.label(), reason, "connection closed");
    }
}
