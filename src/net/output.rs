//! Output dispatch: the event loop as the shell [`carry_out`] drains the core into
//! (everything the core asks for after an input, carried out), and the one way to
//! send a client a message on any transport.

use super::event_loop::EventLoop;
use super::log::log_event;
use super::outbox::Payload;
use super::report;
use super::stream::{Outbound, StreamHandle};
use crate::turn::effects::{carry_out, Effects};
use crate::turn::lookup::{LookupOutcome, LookupResult};
use crate::turn::{AllocationId, ConnectionId, Event, FiveTuple, Ledger, RelayBindError, Server, Transport};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::time::Instant;

impl EventLoop {
    /// Carries out every output the core has queued; called after each input.
    pub(super) fn drain_outputs(&mut self) {
        carry_out(self);
    }

    /// Sends a framed message to a client on any transport: over UDP through the
    /// outbox (flushed when full and after every pass over the ready sockets).
    pub(super) fn send_to_client(&mut self, to: FiveTuple, payload: Payload) {
        if to.transport == Transport::Udp {
            let Some(listener) = self.listeners.reply_via(to.server) else {
                return;
            };
            let (socket, from) =
                (listener.socket.as_raw_fd(), listener.local.ip().is_unspecified().then_some(to.server.ip()));
            if self.outbox.is_full() {
                self.flush();
            }
            self.outbox.push(socket, to.client.get(), from, payload);
        } else if let Some(handle) = self.streams.get(&to) {
            let client = match handle {
                StreamHandle::Served(slot) => {
                    let slot = *slot;
                    match payload {
                        Payload::Owned(bytes) => self.conns.queue(slot, &bytes),
                        // Copied into the connection's output buffer (no allocation);
                        // the relay slot is free again.
                        Payload::Slot(range) => self.conns.queue(slot, self.relay_buf.get(range).unwrap_or_default()),
                    }
                    return;
                }
                StreamHandle::Task(client) => client,
                StreamHandle::Spliced(_) => return,
            };
            let bytes = match payload {
                Payload::Owned(bytes) => bytes,
                Payload::Slot(range) => self.relay_buf.get(range).map(<[u8]>::to_vec).unwrap_or_default(),
            };
            // A full queue means the client is not reading: drop, as UDP would (and
            // the connection's write timeout cuts it if that goes on).
            let _ = client.send(Outbound::Bytes(bytes));
        }
    }
}

/// What the event loop does with each output of its core (see [`carry_out`]).
impl Effects for EventLoop {
    type Ledger = Mutex<Ledger>;

    fn parts(&mut self) -> (&mut Server, &Mutex<Ledger>) {
        (&mut self.core, &self.ledger)
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn transmit(&mut self, to: FiveTuple, bytes: Vec<u8>) {
        self.send_to_client(to, Payload::Owned(bytes));
    }

    fn bind_relay(
        &mut self,
        allocation: AllocationId,
        local: SocketAddr,
        dont_fragment: bool,
        tcp: bool,
    ) -> Result<SocketAddr, RelayBindError> {
        if tcp {
            self.open_tcp_relay(allocation, local)
        } else {
            self.open_relay(allocation, local, dont_fragment)
        }
    }

    fn close_relay(&mut self, allocation: AllocationId) {
        // Datagrams of this batch wait in `to_peers` by descriptor number: send them
        // before the socket closes, or a relay socket opened later in the batch could
        // reuse the number and send them from another allocation's address.
        if self.relays.contains_key(&allocation) && !self.to_peers.is_empty() {
            self.to_peers.flush_by_socket(&self.recv_slots);
        }
        if self.relays.contains_key(&allocation) {
            self.flush_stream_peers();
        }
        // Closing a socket takes it out of the epoll set (its descriptor is never
        // duplicated), so no EPOLL_CTL_DEL: one syscall less per allocation.
        drop(self.relays.remove(&allocation));
        self.close_tcp_relay(allocation);
    }

    fn connect_peer(&mut self, connection: ConnectionId, _: AllocationId, local: SocketAddr, peer: SocketAddr) {
        self.spawn_connect(connection, local, peer);
    }

    fn bind_data(&mut self, connection: ConnectionId, data: FiveTuple) -> bool {
        self.splice(connection, data)
    }

    fn close_peer_connection(&mut self, connection: ConnectionId, data: Option<FiveTuple>) {
        self.close_peer_stream(connection, data);
    }

    fn fetch_allocation(&mut self, fetch: crate::turn::output::Fetch) -> bool {
        self.ask_for(fetch)
    }

    fn lookup_user(&mut self, realm: String, username: String) {
        let sent = match &self.lookups {
            Some((worker, requests)) => {
                let request = super::webhook::LookupRequest { worker: *worker, realm, username };
                requests.try_send(request).map_err(|e| {
                    let request = e.into_inner();
                    (request.realm, request.username)
                })
            }
            None => Err((realm, username)),
        };
        // No service, or its queue is full: the lookup fails at once (500) rather than
        // leave the requests parked until their wait runs out.
        if let Err((realm, username)) = sent {
            super::webhook::count_overloaded();
            let result = LookupResult { realm, username, outcome: LookupOutcome::Failed };
            self.core.handle_lookup(Instant::now(), result, &*self.ledger);
        }
    }

    fn event(&mut self, event: Event) {
        log_event(&event);
        // A TCP/TLS connection that holds an allocation is authenticated: out of its
        // source's unauthenticated count and timeout (before the Allocate success,
        // which follows this event, is written).
        if let Event::AllocationCreated { five_tuple, .. } = &event {
            match self.streams.get(five_tuple) {
                Some(StreamHandle::Task(client)) => client.authenticated(),
                Some(StreamHandle::Served(slot)) => {
                    let slot = *slot;
                    self.stream_authenticated(slot);
                }
                Some(StreamHandle::Spliced(_)) | None => {}
            }
        }
        if let Event::AllocationEnded { duration, five_tuple, traffic, .. } = &event {
            let seconds = duration.as_secs_f64();
            self.snapshot.allocation_lifetime_seconds.observe(&report::LIFETIME_SECONDS_BOUNDS, seconds);
            let counted = self.realm_counters.entry(five_tuple.tenant).or_default();
            counted.ended_bytes += traffic.to_peer_bytes + traffic.to_client_bytes;
        }
        if let Event::AuthFailed { tenant, .. } = &event {
            self.realm_counters.entry(*tenant).or_default().auth_failures += 1;
        }
        // No receiver is fine: nobody is watching.
        let _ = self.publisher.events.send(event);
    }
}
