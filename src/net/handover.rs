//! RFC 8016 moves between workers. A client that changes address usually hashes to
//! another worker's listener socket (SO_REUSEPORT picks by 4-tuple), while its
//! allocation and relay sockets live on the worker that made it. The receiving
//! worker's core asks for the allocation ([`crate::turn::Output::FetchAllocation`]);
//! this file carries the request to the owner, which exports the allocation's state
//! from its core and takes its relay sockets out of its epoll set, and carries both
//! back; the receiver adds the sockets to its own set and imports the state into its
//! core, which answers the waiting Refresh.
//!
//! While the allocation travels (one message each way between two worker threads),
//! datagrams from peers wait in the relay sockets' kernel buffers and are read by the
//! new owner; ChannelData from the client's new address that arrives before the
//! import is dropped, as for any 5-tuple without an allocation.

use super::event_loop::EventLoop;
use super::token::Token;
use crate::turn::allocation::{AllocationState, Family};
use crate::turn::output::Fetch;
use crate::turn::AllocationId;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::time::Instant;
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// A message between workers about a move.
#[derive(Debug)]
pub enum Handover {
    /// Hand over an allocation (see [`crate::turn::Server::export_allocation`]); the
    /// answer goes to worker `reply_to`.
    Ask {
        /// What the receiving core asked for.
        fetch: Fetch,
        /// The asking worker.
        reply_to: u32,
    },
    /// The answer: the allocation's state and its relay sockets by family, or `None`
    /// when the owner would not give it up.
    Moved {
        /// The allocation asked for.
        id: AllocationId,
        /// Its state (boxed: it is large, the ask is small).
        state: Option<Box<AllocationState>>,
        /// Its relay sockets (by [`Family`]).
        sockets: [Option<UdpSocket>; 2],
        /// The worker it comes from.
        from_worker: u32,
        /// When the owner received the request, to log how long the move took.
        asked: Instant,
    },
}

/// One worker's ends of the handover channels.
///
/// The channels are unbounded, yet what they hold is bounded: a worker asks only for
/// moves its core admitted (at most `MOVES_IN_FLIGHT` at a time), and every answer is
/// to one of those asks.
#[derive(Debug)]
pub struct Handovers {
    /// This worker's index.
    pub index: u32,
    /// Every worker's inbox, by index (this one's included).
    pub peers: Vec<mpsc::UnboundedSender<Handover>>,
    /// This worker's inbox, taken by the run loop.
    pub inbox: Option<mpsc::UnboundedReceiver<Handover>>,
}

impl Handovers {
    /// The handover channels of `count` workers.
    pub fn for_workers(count: usize) -> Vec<Handovers> {
        let (peers, inboxes): (Vec<_>, Vec<_>) = (0..count).map(|_| mpsc::unbounded_channel()).unzip();
        inboxes
            .into_iter()
            .enumerate()
            .map(|(index, inbox)| Handovers { index: index as u32, peers: peers.clone(), inbox: Some(inbox) })
            .collect()
    }
}

impl EventLoop {
    /// Sends a fetch to the owning worker; false when there is no such worker.
    pub(super) fn ask_for(&mut self, fetch: Fetch) -> bool {
        let Some(handovers) = &self.handovers else {
            return false;
        };
        let reply_to = handovers.index;
        match handovers.peers.get(fetch.owner as usize) {
            Some(owner) if fetch.owner != reply_to => owner.send(Handover::Ask { fetch, reply_to }).is_ok(),
            _ => false,
        }
    }

    /// Carries out a handover message from another worker.
    pub(super) fn handover(&mut self, message: Handover) {
        match message {
            Handover::Ask { fetch, reply_to } => self.give_up(fetch, reply_to),
            Handover::Moved { id, state, sockets, from_worker, asked } => {
                self.take_over(id, state, sockets, from_worker, asked)
            }
        }
        self.drain_outputs();
    }

    /// The owner's side: the core exports the allocation, the relay sockets leave this
    /// worker's epoll set, and both go to the asking worker.
    fn give_up(&mut self, fetch: Fetch, reply_to: u32) {
        let asked = Instant::now();
        let id = fetch.id;
        let state = self.core.export_allocation(asked, id, fetch.moves, &fetch.user).map(Box::new);
        let mut sockets = [None, None];
        if state.is_some() {
            // Datagrams of this batch wait in `to_peers` by descriptor: send them while
            // the sockets are still ours (as `close_relay` does).
            if !self.to_peers.is_empty() {
                self.to_peers.flush_by_socket(&self.recv_slots);
            }
            self.flush_stream_peers();
            sockets = self.relays.remove(&id).unwrap_or_default();
            for socket in sockets.iter().flatten() {
                if let Err(e) = self.epoll.delete(socket.as_raw_fd()) {
                    warn!(allocation = id.0, error = %e, "cannot take a relay socket out of the epoll set");
                }
            }
        }
        let index = self.handovers.as_ref().map_or(0, |h| h.index);
        let answer = Handover::Moved { id, state, sockets, from_worker: index, asked };
        let sent = self.handovers.as_ref().and_then(|h| h.peers.get(reply_to as usize)).map(|to| to.send(answer));
        if !matches!(sent, Some(Ok(()))) {
            // Only when the asking worker is gone, which stops the process.
            warn!(allocation = id.0, worker = reply_to, "cannot hand an allocation over: the worker is gone");
        }
    }

    /// The receiver's side: the relay sockets join this worker's epoll set, then the
    /// core imports the allocation and answers the Refresh that asked for it.
    fn take_over(
        &mut self,
        id: AllocationId,
        state: Option<Box<AllocationState>>,
        sockets: [Option<UdpSocket>; 2],
        from_worker: u32,
        asked: Instant,
    ) {
        let moved = state.is_some();
        for (family, socket) in [Family::V4, Family::V6].into_iter().zip(&sockets) {
            if let Some(socket) = socket {
                if let Err(e) = self.epoll.add(socket.as_raw_fd(), Token::Relay(id, family).encode()) {
                    warn!(allocation = id.0, error = %e, "cannot watch a relay socket handed over");
                }
            }
        }
        if sockets.iter().any(Option::is_some) {
            self.relays.insert(id, sockets);
        }
        let now = Instant::now();
        self.core.handle_handover(now, id, state.map(|s| *s), from_worker, &*self.ledger);
        if moved {
            let micros = now.saturating_duration_since(asked).as_micros() as u64;
            debug!(allocation = id.0, from_worker, handover_us = micros, "allocation handed over");
        }
    }
}
