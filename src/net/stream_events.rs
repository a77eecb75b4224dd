//! What TCP/TLS connection tasks report to the loop ([`StreamEvent`]): connections
//! handed over to the loop ([`super::stream_conn`]); for the RFC 6062 data connections
//! that stay with their task, opening and closing and framed messages for the core;
//! and RFC 6062 peer connections (handed to [`super::rfc6062`]).

use super::event_loop::through_core;
use super::event_loop::{unix_now, EventLoop};
use super::report;
use super::stream::{StreamEvent, StreamHandle};
use crate::stun::raw::is_control;
use std::time::Instant;
use tracing::debug;

impl EventLoop {
    /// Handles one event from a connection task.
    pub(super) fn stream_event(&mut self, event: StreamEvent) {
        let now = Instant::now();
        match event {
            StreamEvent::Opened { five_tuple, client } => {
                self.streams.insert(five_tuple, StreamHandle::Task(client));
            }
            StreamEvent::Adopt(handover) => self.adopt_stream(handover),
            StreamEvent::Frame { five_tuple, frame } => {
                let started = is_control(&frame).then(Instant::now);
                let relayed = through_core(&mut self.core, &self.ledger, now, unix_now(), five_tuple, &frame);
                if let Some(started) = started {
                    let seconds = started.elapsed().as_secs_f64();
                    self.snapshot.request_seconds.observe(&report::REQUEST_SECONDS_BOUNDS, seconds);
                }
                if let Some(out) = relayed {
                    if let (Some(relay), Some(payload)) =
                        (self.relay_socket(out.allocation, out.peer.get()), frame.get(out.payload))
                    {
                        // Once more after a failure: an ICMP error an earlier datagram
                        // brought back fails the next send (see `mmsg::send_batch`).
                        let sent = relay.send_to(payload, out.peer.get());
                        if let Err(e) = sent.or_else(|_| relay.send_to(payload, out.peer.get())) {
                            debug!(error = %e, peer = %out.peer, "send to peer failed");
                        }
                    }
                }
                self.drain_outputs();
            }
            StreamEvent::Closed { five_tuple } => {
                // A task's connection only: a served one closes in the loop.
                if !matches!(self.streams.get(&five_tuple), Some(StreamHandle::Task(_))) {
                    return;
                }
                self.streams.remove(&five_tuple);
                self.core.close_five_tuple(five_tuple, now, &*self.ledger);
                self.drain_outputs();
            }
            StreamEvent::PeerIncoming { allocation, stream, peer } => self.peer_incoming(allocation, stream, peer),
            StreamEvent::PeerConnected { connection, stream } => self.peer_connected(connection, stream),
        }
    }
}
