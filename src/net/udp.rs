//! The UDP path: datagrams from clients on the listeners (handed to the core, and
//! what it relays queued for the peers' relay sockets), and datagrams and ICMP errors
//! from peers on the relay sockets (relayed to the clients through the outbox). Also
//! opening a relay socket, and finding the one to send from.

use super::event_loop::through_core;
use super::event_loop::{unix_now, EventLoop, BATCH, MAX_DATAGRAM, READS_PER_WAKE, RELAY_SLOT, RELAY_SLOTS};
use super::listeners::ListenerKey;
use super::outbox::Payload;
use super::relay_socket::{self, Received};
use super::report;
use super::token::Token;
use crate::stun::raw::is_control;
use crate::sys::prefetch::prefetch;
use crate::turn::allocation::Family;
use crate::turn::allocation::RELAY_PATH_BYTES;
use crate::turn::relay::PEER_HEADROOM;
use crate::turn::PeerAddr;
use crate::turn::RelayBindError;
use crate::turn::{AllocationId, ClientAddr, FiveTuple, Transport};
use quinn_udp::RecvMeta;
use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tracing::{debug, info, warn};

/// `[relay] udp-offload`: GRO on relay sockets and listeners, GSO on what they send.
/// Set once at start, before the workers (a reload does not change it).
static OFFLOAD: AtomicBool = AtomicBool::new(true);

/// Turns GRO and GSO on or off for the event loops started from now on.
pub fn set_offload(on: bool) {
    OFFLOAD.store(on, Ordering::Relaxed);
}

/// Whether event loops use GRO and GSO (see [`set_offload`]).
pub(super) fn offload() -> bool {
    OFFLOAD.load(Ordering::Relaxed)
}

/// Set while relay sockets cannot be opened (out of descriptors, say), so the episode
/// is logged once for the process rather than once per worker or per Allocate.
static RELAY_BIND_FAILING: AtomicBool = AtomicBool::new(false);

impl EventLoop {
    /// Reads batches from a ready listener (at most [`READS_PER_WAKE`]) and hands each
    /// datagram to the core.
    pub(super) fn serve_listener(&mut self, key: ListenerKey) {
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
            let (local, tenant) = (listener.local, listener.tenant);
            for (slot, meta) in meta.iter().take(count).enumerate() {
                let server = SocketAddr::new(meta.dst_ip.unwrap_or(local.ip()), local.port());
                let from = FiveTuple { transport: Transport::Udp, client: ClientAddr::new(meta.addr), server, tenant };
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
                    let relayed = through_core(&mut self.core, &self.ledger, now, unix, from, packet);
                    if let Some(started) = started {
                        let seconds = started.elapsed().as_secs_f64();
                        self.snapshot.request_seconds.observe(&report::REQUEST_SECONDS_BOUNDS, seconds);
                    }
                    if let Some(out) = relayed {
                        // Queued in place (the payload stays in its receive slot) and sent
                        // after the batch, one sendmmsg per relay socket.
                        if let Some(relay) = self.relay_socket(out.allocation, out.peer.get()) {
                            let (fd, peer) = (relay.as_raw_fd(), out.peer.get());
                            // A GRO run can hold more datagrams than the queue: what is
                            // queued goes now (its payloads stay put until the next read).
                            if self.to_peers.is_full() {
                                self.to_peers.flush_by_socket(&self.recv_slots);
                            }
                            let payload = start + offset + out.payload.start..start + offset + out.payload.end;
                            self.to_peers.push(fd, peer, None, Payload::Slot(payload));
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

    /// Reads batches from a ready relay socket (at most [`READS_PER_WAKE`]) and relays
    /// each datagram to its client.
    pub(super) fn serve_relay(&mut self, id: AllocationId, family: Family) {
        // On its way into the cache while the kernel copies the datagrams out.
        if let Some(allocation) = self.core.allocation(id) {
            prefetch(allocation, RELAY_PATH_BYTES);
        }
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
            let base_slot = self.next_slot;
            self.next_slot += count;
            let now = Instant::now();
            for (slot, entry) in received.iter().take(count).enumerate() {
                let Some(entry) = *entry else {
                    continue;
                };
                if entry.segment < entry.len {
                    // A GRO run: this and the rest of the batch move out of the slots,
                    // so that its datagrams can each take a slot of their own.
                    self.relay_coalesced(id, now, base_slot + slot, &received[slot..count]);
                    break;
                }
                let start = base + slot * RELAY_SLOT + PEER_HEADROOM;
                self.relay_to_client(now, id, entry.from, start, entry.len);
            }
            if count < relay_socket::BATCH {
                return;
            }
        }
    }

    /// Relays the peer datagram at `start..start + len` of the relay buffer (with
    /// [`PEER_HEADROOM`] free in front) through the core to its client.
    fn relay_to_client(&mut self, now: Instant, id: AllocationId, peer: SocketAddr, start: usize, len: usize) {
        let Some(out) =
            self.core.handle_peer_packet(now, id, PeerAddr::new(peer), &mut self.relay_buf, start..start + len)
        else {
            return;
        };
        self.send_to_client(out.to, Payload::Slot(out.range));
    }

    /// Relays `entries`, received into the consecutive relay slots from `first_slot`
    /// on, at least the first of them a GRO run: copied out first (the slots are
    /// reused once the outbox is flushed), then each datagram copied into a slot of
    /// its own, with the headroom the core writes its header into. Every datagram
    /// goes through the core on its own, so counters, quotas and caps see datagrams.
    fn relay_coalesced(&mut self, id: AllocationId, now: Instant, first_slot: usize, entries: &[Option<Received>]) {
        if self.gro_scratch.len() < relay_socket::BATCH * MAX_DATAGRAM {
            // Once per loop, the first time a peer's datagrams arrive coalesced.
            self.gro_scratch.resize(relay_socket::BATCH * MAX_DATAGRAM, 0);
        }
        // The kernel's lengths are input too: one past a scratch slot is dropped, not
        // allowed to run into its neighbour's.
        let fits = |entry: &Option<Received>| entry.filter(|e| e.len <= MAX_DATAGRAM);
        for (i, entry) in entries.iter().enumerate() {
            let Some(entry) = fits(entry) else {
                continue;
            };
            let from = (first_slot + i) * RELAY_SLOT + PEER_HEADROOM;
            let (Some(source), Some(scratch)) = (
                self.relay_buf.get(from..from + entry.len),
                self.gro_scratch.get_mut(i * MAX_DATAGRAM..i * MAX_DATAGRAM + entry.len),
            ) else {
                continue;
            };
            scratch.copy_from_slice(source);
        }
        for (i, entry) in entries.iter().enumerate() {
            let Some(entry) = fits(entry) else {
                continue;
            };
            for range in relay_socket::segments(entry.len, entry.segment) {
                if self.next_slot >= RELAY_SLOTS || self.outbox.is_full() {
                    self.flush();
                }
                let start = self.next_slot * RELAY_SLOT + PEER_HEADROOM;
                let at = i * MAX_DATAGRAM;
                let len = range.len();
                let (Some(source), Some(slot)) = (
                    self.gro_scratch.get(at + range.start..at + range.end),
                    self.relay_buf.get_mut(start..start + len),
                ) else {
                    continue;
                };
                slot.copy_from_slice(source);
                self.next_slot += 1;
                self.relay_to_client(now, id, entry.from, start, len);
            }
        }
    }

    /// Reads a relay socket's error queue (bounded per wake-up) and hands each ICMP
    /// error to the core, which relays it to the client (RFC 8656 §11).
    pub(super) fn serve_relay_errors(&mut self, id: AllocationId, family: Family) {
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

    /// The relay socket of `id` for sending to `peer`.
    pub(super) fn relay_socket(&self, id: AllocationId, peer: SocketAddr) -> Option<&UdpSocket> {
        self.relays.get(&id)?[Family::of(peer.ip()) as usize].as_ref()
    }

    pub(super) fn open_relay(
        &mut self,
        id: AllocationId,
        local: SocketAddr,
        dont_fragment: bool,
    ) -> Result<SocketAddr, RelayBindError> {
        let socket = match relay_socket::bind(local, dont_fragment, offload()) {
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
        // The core names the port; only a port of 0 (which it does not ask for) would
        // need the kernel's answer: one getsockname per allocation saved.
        let bound = match local.port() {
            0 => socket.local_addr().map_err(|_| RelayBindError::Other)?,
            _ => local,
        };
        let family = Family::of(bound.ip());
        // A refusal of GSO remembered for an earlier socket of this number is not this one's.
        self.to_peers.forget(socket.as_raw_fd());
        if let Err(e) = self.epoll.add(socket.as_raw_fd(), Token::Relay(id, family).encode()) {
            warn!(error = %e, "cannot watch relay socket");
            return Err(RelayBindError::Other);
        }
        self.relays.entry(id).or_default()[family as usize] = Some(socket);
        Ok(bound)
    }
}
