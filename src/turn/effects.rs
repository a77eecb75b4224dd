//! The one place the core's outputs are turned into actions: [`carry_out`] drains the
//! [`Server`] of an [`Effects`] (a shell) into it, feeding back what the core asked to
//! be told (a relay socket bound, a data connection that could not be spliced). The
//! shell's event loop, the scenario tests and the fuzz driver all drain through it, so
//! none of them can forget an output or its answer.

use super::ledger::Shared;
use super::output::{Event, Fetch, Output, RelayBindError};
use super::server::Server;
use super::{AllocationId, ConnectionId, FiveTuple};
use std::net::SocketAddr;
use std::time::Instant;

/// A shell: it owns a core and does what each kind of output asks.
pub trait Effects {
    /// How this shell shares the ledger among its workers.
    type Ledger: Shared;
    /// The core it drives and the ledger it shares.
    fn parts(&mut self) -> (&mut Server, &Self::Ledger);
    /// The time of an answer fed back to the core (a relay socket bound). Asked only
    /// when there is one, so draining an empty queue, the relay path's case, reads no
    /// clock.
    fn now(&self) -> Instant;
    /// Sends `bytes` to the client on `to`.
    fn transmit(&mut self, to: FiveTuple, bytes: Vec<u8>);
    /// Opens a relay socket (UDP, or with `tcp` an RFC 6062 listener) on `local`.
    fn bind_relay(
        &mut self,
        allocation: AllocationId,
        local: SocketAddr,
        dont_fragment: bool,
        tcp: bool,
    ) -> Result<SocketAddr, RelayBindError>;
    /// Closes the relay sockets of an allocation that ended.
    fn close_relay(&mut self, allocation: AllocationId);
    /// Starts a TCP connection from `local` to `peer`; its outcome goes to
    /// [`Server::handle_peer_connected`] later.
    fn connect_peer(&mut self, connection: ConnectionId, allocation: AllocationId, local: SocketAddr, peer: SocketAddr);
    /// Splices a client data connection to a peer connection; false if either is
    /// gone (the core then closes the data connection's state).
    fn bind_data(&mut self, connection: ConnectionId, data: FiveTuple) -> bool;
    /// Closes a peer connection and the data connection spliced to it.
    fn close_peer_connection(&mut self, connection: ConnectionId, data: Option<FiveTuple>);
    /// Starts a lookup of a user no local source knows (the authentication webhook);
    /// its answer goes to [`Server::handle_lookup`] later.
    fn lookup_user(&mut self, realm: String, username: String);
    /// Logs or publishes an event.
    fn event(&mut self, event: Event);
    /// RFC 8016: asks the worker that owns an allocation to hand it over; its answer
    /// goes to [`Server::handle_handover`] later. False when it cannot be asked (a
    /// single-worker shell, say): the core is then told at once that nothing came.
    fn fetch_allocation(&mut self, fetch: Fetch) -> bool;
}

/// Carries out every output of the shell's core, until the core has nothing left.
pub fn carry_out(effects: &mut impl Effects) {
    while let Some(output) = effects.parts().0.poll_output() {
        match output {
            Output::Transmit { to, bytes } => effects.transmit(to, bytes),
            Output::BindRelay { allocation, local, dont_fragment, tcp } => {
                let result = effects.bind_relay(allocation, local, dont_fragment, tcp);
                let now = effects.now();
                let (core, shared) = effects.parts();
                core.handle_relay_bound(now, allocation, local, result, shared);
            }
            Output::CloseRelay { allocation } => effects.close_relay(allocation),
            Output::ConnectPeer { connection, allocation, local, peer } => {
                effects.connect_peer(connection, allocation, local, peer)
            }
            Output::BindData { connection, data } => {
                if !effects.bind_data(connection, data) {
                    let now = effects.now();
                    let (core, shared) = effects.parts();
                    core.close_five_tuple(data, now, shared);
                }
            }
            Output::ClosePeerConnection { connection, data } => effects.close_peer_connection(connection, data),
            Output::LookupUser { realm, username } => effects.lookup_user(realm, username),
            Output::Event(event) => effects.event(event),
            Output::FetchAllocation(fetch) => {
                let (id, owner) = (fetch.id, fetch.owner);
                if !effects.fetch_allocation(fetch) {
                    let now = effects.now();
                    let (core, shared) = effects.parts();
                    core.handle_handover(now, id, None, owner, shared);
                }
            }
        }
    }
}
