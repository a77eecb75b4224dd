//! A live upgrade from a worker's side. In the running process: `EventLoop::freeze`
//! stops reading the UDP listeners and the UDP clients' relay sockets and exports
//! those allocations with duplicates of their sockets, so that datagrams arriving
//! meanwhile wait in the kernel's buffers, which the successor reads from the same
//! sockets; `EventLoop::thaw` undoes it when the successor fails, and
//! `EventLoop::release` forgets what moved once it serves. In the successor:
//! [`EventLoop::adopt`] puts the received relay sockets into the epoll set and the
//! allocations into the core, before the loop runs.
//!
//! TCP and TLS clients' allocations never freeze: their connections stay with this
//! process until they close (see the README, "Upgrade without dropping calls").

use super::event_loop::EventLoop;
use super::token::Token;
use crate::turn::allocation::{AllocationState, Family};
use crate::turn::tenant::UserKey;
use crate::turn::AllocationId;
use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::time::Instant;
use tracing::warn;

/// One worker's share of a live upgrade: its UDP listener sockets and its UDP
/// allocations with their relay sockets (by [`Family`]).
#[derive(Debug, Default)]
pub struct WorkerHandover {
    /// The worker's UDP listener sockets (one of each SO_REUSEPORT group).
    pub listeners: Vec<UdpSocket>,
    /// The allocations and their relay sockets.
    pub allocations: Vec<(AllocationState, [Option<UdpSocket>; 2])>,
    /// The worker's counters at the freeze.
    pub stats: crate::turn::stats::Stats,
}

impl EventLoop {
    /// Stops reading UDP and exports this worker's share (duplicated sockets: this
    /// loop keeps its own until [`EventLoop::release`]). On error nothing changed.
    pub(super) fn freeze(&mut self) -> io::Result<WorkerHandover> {
        if self.frozen.is_some() || self.released {
            return Err(io::Error::other("already handed over or being handed over"));
        }
        // What this worker already read goes out first.
        self.drain_outputs();
        if !self.to_peers.is_empty() {
            self.to_peers.flush_by_socket(&self.recv_slots);
        }
        self.flush_stream_peers();
        self.flush();
        let listeners = self.listeners.duplicates()?;
        let mut allocations = Vec::new();
        for state in self.core.export_udp_allocations(Instant::now()) {
            let mut sockets = [None, None];
            if let Some(own) = self.relays.get(&state.id) {
                for (copy, socket) in sockets.iter_mut().zip(own) {
                    if let Some(socket) = socket {
                        *copy = Some(socket.try_clone()?);
                    }
                }
            }
            allocations.push((state, sockets));
        }
        // Only now stop reading: nothing runs on this thread between the export and
        // here, so the state is exactly what the sockets were read up to.
        for (_, fd) in self.listeners.keys() {
            let _ = self.epoll.delete(fd);
        }
        let ids: Vec<AllocationId> = allocations.iter().map(|(state, _)| state.id).collect();
        for id in &ids {
            for socket in self.relays.get(id).into_iter().flatten().flatten() {
                let _ = self.epoll.delete(socket.as_raw_fd());
            }
        }
        self.frozen = Some(ids);
        Ok(WorkerHandover { listeners, allocations, stats: self.core.stats() })
    }

    /// The successor failed: read the UDP sockets again, as before the freeze.
    pub(super) fn thaw(&mut self) {
        let Some(ids) = self.frozen.take() else {
            return;
        };
        for (key, fd) in self.listeners.keys() {
            if let Err(e) = self.epoll.add(fd, Token::Listener(key).encode()) {
                warn!(error = %e, "cannot watch a UDP listener again after a failed upgrade");
            }
        }
        for id in ids {
            self.watch_relays(id);
        }
    }

    /// The successor serves: forget the allocations it took (their relay sockets
    /// close here, and stay open there). The UDP listeners stay out of the epoll set.
    pub(super) fn release(&mut self) {
        let Some(ids) = self.frozen.take() else {
            return;
        };
        self.core.forget_handed_over(&ids);
        for id in &ids {
            self.relays.remove(id);
        }
        self.released = true;
    }

    /// Takes over a predecessor worker's counters (before [`EventLoop::run`]).
    pub fn adopt_stats(&mut self, stats: &crate::turn::stats::Stats) {
        self.core.adopt_stats(stats);
    }

    /// Takes over a predecessor's allocations and their relay sockets (before
    /// [`EventLoop::run`]); the shared ledger was updated by the caller.
    pub fn adopt(&mut self, allocations: Vec<(AllocationState, [Option<UdpSocket>; 2])>) {
        let now = Instant::now();
        for (state, sockets) in allocations {
            let id = state.id;
            self.relays.insert(id, sockets);
            self.watch_relays(id);
            self.core.adopt_allocation(now, state);
        }
    }

    /// Adds allocation `id`'s relay sockets to the epoll set.
    fn watch_relays(&mut self, id: AllocationId) {
        let Some(sockets) = self.relays.get(&id) else {
            return;
        };
        for (family, socket) in [Family::V4, Family::V6].into_iter().zip(sockets) {
            if let Some(socket) = socket {
                if let Err(e) = self.epoll.add(socket.as_raw_fd(), Token::Relay(id, family).encode()) {
                    warn!(allocation = id.0, error = %e, "cannot watch a relay socket");
                }
            }
        }
    }
}

/// What a live upgrade hands over of the process as a whole.
#[derive(Debug)]
pub struct ProcessExport {
    /// The nonce secret (it keys mobility tickets too).
    pub nonce_secret: [u8; 32],
    /// How long ago the nonce epoch was.
    pub nonce_epoch_age: std::time::Duration,
    /// RESERVATION-TOKENs: (token, port, time left, user, source).
    pub reservations: Vec<(u64, u16, std::time::Duration, UserKey, std::net::IpAddr)>,
}

/// What a successor takes over, for [`super::Workers::start`].
#[derive(Debug, Default)]
pub struct Adopted {
    /// The predecessor's nonce secret (it keys mobility tickets too).
    pub nonce_secret: [u8; 32],
    /// The predecessor's nonce epoch.
    pub nonce_epoch: Option<Instant>,
    /// RESERVATION-TOKENs: (token, port, expiry, user, source).
    pub reservations: Vec<(u64, u16, Instant, UserKey, std::net::IpAddr)>,
    /// Each worker's allocations, in worker order.
    pub workers: Vec<Vec<(AllocationState, [Option<UdpSocket>; 2])>>,
    /// Each worker's counters, in worker order (empty from a predecessor that sent
    /// none, or whose counters this turnd cannot read: they then start at zero).
    pub stats: Vec<crate::turn::stats::Stats>,
}

/// Puts a predecessor's reservations and allocations into the successor's ledger
/// before any worker runs; returns how many of them did not fit (logged).
pub fn adopt_into_ledger(ledger: &mut crate::turn::Ledger, adopted: &Adopted) -> usize {
    if let Some(epoch) = adopted.nonce_epoch {
        ledger.set_nonce_epoch(epoch);
    }
    let mut misfits = 0;
    for (token, port, expires, user, source) in &adopted.reservations {
        if !ledger.adopt_reservation(*token, *port, *expires, user, *source) {
            misfits += 1;
        }
    }
    for (state, _) in adopted.workers.iter().flatten() {
        let ports: Vec<u16> = state.relays.iter().flatten().map(|r| r.bound.port()).collect();
        let user = UserKey::new(state.five_tuple.tenant, &state.username);
        if !ledger.adopt_allocation(&user, state.five_tuple.client.ip(), &ports) {
            warn!(allocation = state.id.0, ?ports, "a moved allocation's relay port is outside the relay range");
            misfits += 1;
        }
    }
    misfits
}
