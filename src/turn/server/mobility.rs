//! RFC 8016 mobility: the MOBILITY-TICKET an Allocate asks for, and the Refresh from a
//! new 5-tuple that presents it to move the allocation there.
//!
//! A move is decided here. When the ticket names an allocation of this worker, it
//! moves at once. When another worker owns it (the new 5-tuple hashed to this one),
//! the core asks the shell to fetch it ([`Output::FetchAllocation`]); the owner's
//! core gives it up with [`Server::export_allocation`], the shell carries the
//! [`AllocationState`] and the relay sockets over, and [`Server::handle_handover`]
//! imports it here and answers the Refresh. The relay ports stay counted in the
//! ledger throughout: the allocation never ends.

use super::requests::success;
use super::Server;
use crate::stun::attributes::{Attribute, MobilityTicket};
use crate::stun::errors::{self, ErrorKind};
use crate::stun::message::Message;
use crate::turn::allocation::{Allocation, AllocationState};
use crate::turn::answer::{Auth, Reject};
use crate::turn::ledger::Shared;
use crate::turn::mobility::{Ticket, TicketError};
use crate::turn::output::{EndReason, Event, Fetch, Output};
use crate::turn::stats::MoveResult;
use crate::turn::tenant::UserKey;
use crate::turn::{request, AllocationId, FiveTuple, Transport};
use std::time::{Duration, Instant};
use stun_codec::rfc5766::attributes::Lifetime;
use stun_codec::rfc5766::methods::REFRESH;
use stun_codec::{MessageClass, TransactionId};

/// Moves waiting for another worker's allocation, at most this many per worker: a
/// bound on what clients can make the workers hold and carry.
pub(crate) const MOVES_IN_FLIGHT: usize = 64;
/// Retransmissions of a Refresh answered together when its move completes.
const RETRANSMISSIONS: usize = 4;

/// A Refresh whose allocation is being fetched from its worker.
#[derive(Debug)]
pub(super) struct PendingMove {
    to: FiveTuple,
    transactions: Vec<TransactionId>,
    auth: Auth,
    lifetime: Option<Duration>,
}

impl Server {
    /// Whether an Allocate asks for mobility and gets it: 405 when mobility is off,
    /// 400 for a non-empty ticket (RFC 8016 §3.1: the Allocate's is empty). Granted
    /// to UDP clients only: a TCP or TLS allocation ends with its connection, so there
    /// is nothing to move to a new one; such a client gets its allocation without a
    /// ticket, which RFC 8016 §3.1 says means "no mobility".
    pub(super) fn mobility_requested(&self, from: FiveTuple, message: &Message) -> Result<bool, ErrorKind> {
        match message.get_attribute::<MobilityTicket>() {
            None => Ok(false),
            Some(_) if !self.config.mobility => Err(errors::MOBILITY_FORBIDDEN),
            Some(ticket) if !ticket.value().is_empty() => Err(errors::BAD_REQUEST),
            Some(_) => Ok(from.transport == Transport::Udp),
        }
    }

    /// A fresh MOBILITY-TICKET for a mobile allocation (`None` otherwise).
    pub(super) fn ticket_for(&self, id: AllocationId, allocation: &Allocation) -> Option<MobilityTicket> {
        if !allocation.mobile {
            return None;
        }
        let worker = u8::try_from(self.table.worker().0).ok()?;
        let ticket = Ticket { worker, moves: allocation.moves, id, expires: self.tickets.expiry(allocation.expires) };
        self.tickets.seal(&ticket, &allocation.user).map(crate::stun::attributes::Opaque)
    }

    /// RFC 8016 §3.2: a Refresh carrying a ticket from a 5-tuple with no allocation.
    /// `Ok(None)`: the allocation is being fetched from its worker and the answer
    /// comes with it.
    pub(super) fn refresh_from_new_five_tuple(
        &mut self,
        now: Instant,
        from: FiveTuple,
        message: &Message,
        auth: &Auth,
        ticket: &[u8],
        shared: &impl Shared,
    ) -> Result<Option<Message>, Reject> {
        let mismatch = || Reject::new(errors::ALLOCATION_MISMATCH).with_auth(auth);
        if from.transport != Transport::Udp {
            return Err(mismatch());
        }
        // The name in the tenant the client came to: a ticket moves an allocation only
        // within its realm.
        let user = UserKey::new(from.tenant, &auth.username);
        let ticket = match self.tickets.open(ticket, &user, now) {
            Ok(ticket) => ticket,
            Err(TicketError::Invalid) => {
                self.out.stats.mobility(MoveResult::InvalidTicket);
                return Err(Reject::new(errors::BAD_REQUEST).with_auth(auth));
            }
            Err(TicketError::Expired) => {
                self.out.stats.mobility(MoveResult::StaleTicket);
                return Err(mismatch());
            }
        };
        let lifetime = request::lifetime(message);
        let transaction_id = message.transaction_id();
        if let Some(pending) = self.moving.get_mut(&ticket.id) {
            // A retransmission while the allocation travels: answered with the first,
            // once per copy received, as every Refresh on a 5-tuple is.
            if pending.to == from && pending.transactions.len() < RETRANSMISSIONS {
                pending.transactions.push(transaction_id);
                return Ok(None);
            }
            return Err(mismatch());
        }
        if u32::from(ticket.worker) != self.table.worker().0 {
            if self.moving.len() >= MOVES_IN_FLIGHT {
                return Err(Reject::new(errors::INSUFFICIENT_CAPACITY).with_auth(auth));
            }
            let pending = PendingMove { to: from, transactions: vec![transaction_id], auth: auth.clone(), lifetime };
            self.moving.insert(ticket.id, pending);
            self.out.push(Output::FetchAllocation(Fetch {
                owner: ticket.worker.into(),
                id: ticket.id,
                moves: ticket.moves,
                user,
            }));
            return Ok(None);
        }
        let movable = self.table.get(ticket.id).is_some_and(|a| can_move(a, &ticket, &user));
        if !movable {
            self.out.stats.mobility(MoveResult::StaleTicket);
            return Err(mismatch());
        }
        self.out.stats.mobility(MoveResult::Moved);
        let attributes = self.finish_move(now, ticket.id, from, lifetime, auth, None, shared)?;
        let mut response = success(message);
        attributes.into_iter().for_each(|a| response.add_attribute(a));
        Ok(Some(response))
    }

    /// Gives up allocation `id` to another worker, whose client presented a ticket
    /// naming it after `moves` moves, authenticated as `user`: the allocation
    /// leaves the table (its ports stay counted in the ledger, its relay sockets stay
    /// open for the shell to carry) and its state is returned. `None`, and nothing
    /// changes, when the ticket may not move it (gone, moved since, another user's).
    pub fn export_allocation(
        &mut self,
        now: Instant,
        id: AllocationId,
        moves: u16,
        user: &UserKey,
    ) -> Option<AllocationState> {
        self.last_now = now;
        let worker = u8::try_from(self.table.worker().0).ok()?;
        let ticket = Ticket { worker, moves, id, expires: 0 };
        if !self.table.get(id).is_some_and(|a| can_move(a, &ticket, user)) {
            return None;
        }
        let allocation = self.table.remove(id)?;
        Some(allocation.export(id, now))
    }

    /// The answer to [`Output::FetchAllocation`]: the allocation's state (its relay
    /// sockets already in this worker's hands), or `None` when its owner would not
    /// give it up. The waiting Refresh is answered; an allocation nobody waits for
    /// any more is kept on its old 5-tuple, never lost.
    pub fn handle_handover(
        &mut self,
        now: Instant,
        id: AllocationId,
        state: Option<AllocationState>,
        from_worker: u32,
        shared: &impl Shared,
    ) {
        self.last_now = now;
        let pending = self.moving.remove(&id);
        if let Some(state) = state {
            self.table.insert(id, Allocation::import(state, now));
        }
        let Some(pending) = pending else {
            return;
        };
        let outcome = match self.table.get(id) {
            Some(_) => {
                self.out.stats.mobility(MoveResult::MovedAcrossWorkers);
                self.finish_move(now, id, pending.to, pending.lifetime, &pending.auth, Some(from_worker), shared)
            }
            None => {
                self.out.stats.mobility(MoveResult::StaleTicket);
                Err(Reject::new(errors::ALLOCATION_MISMATCH).with_auth(&pending.auth))
            }
        };
        for transaction_id in pending.transactions {
            match &outcome {
                Ok(attributes) => {
                    let mut answer = success(&Message::new(MessageClass::Request, REFRESH, transaction_id));
                    attributes.iter().for_each(|a| answer.add_attribute(a.clone()));
                    self.respond(pending.to, answer, Some(&pending.auth));
                }
                Err(reject) => self.reject_authenticated(pending.to, REFRESH, transaction_id, reject.clone()),
            }
        }
    }

    /// Moves allocation `id` (on this worker, checked movable) to `to` and refreshes
    /// it as the Refresh asks; returns the answer's attributes: LIFETIME and the new
    /// ticket. The old 5-tuple is
    /// forgotten at once: what still comes from it is dropped, and nothing is sent
    /// to it any more.
    #[allow(clippy::too_many_arguments)]
    fn finish_move(
        &mut self,
        now: Instant,
        id: AllocationId,
        to: FiveTuple,
        lifetime: Option<Duration>,
        auth: &Auth,
        from_worker: Option<u32>,
        shared: &impl Shared,
    ) -> Result<Vec<Attribute>, Reject> {
        if self.table.id_on(&to).is_some() {
            // Another Allocate took the new 5-tuple while the allocation travelled.
            return Err(Reject::new(errors::ALLOCATION_MISMATCH).with_auth(auth));
        }
        let lifetime = self.granted_lifetime(lifetime, auth);
        let Some(from) = self.table.move_to(id, to) else {
            return Err(Reject::new(errors::ALLOCATION_MISMATCH).with_auth(auth));
        };
        shared.with(|ledger| ledger.move_source(from.client.ip(), to.client.ip()));
        self.out.push(Output::Event(Event::AllocationMoved { id, from, to, from_worker }));
        if lifetime.is_zero() {
            self.remove_allocation(id, now, EndReason::Deleted, shared);
        } else if let Some(allocation) = self.table.get_mut(id) {
            allocation.moves = allocation.moves.wrapping_add(1);
            allocation.expires = now + lifetime;
            allocation.prune(now);
            let expires = allocation.expires;
            self.table.schedule_expiry(id, expires);
            self.out.push(Output::Event(Event::AllocationRefreshed { id, lifetime }));
        }
        let mut attributes = vec![Lifetime::from_u32(lifetime.as_secs() as u32).into()];
        attributes.extend(self.table.get(id).and_then(|a| self.ticket_for(id, a)).map(Attribute::from));
        Ok(attributes)
    }
}

/// Whether `ticket`, presented by `user`, may move `allocation`: it is a mobile
/// UDP allocation of that user, and has not moved since the ticket was issued.
fn can_move(allocation: &Allocation, ticket: &Ticket, user: &UserKey) -> bool {
    allocation.mobile
        && allocation.five_tuple.transport == Transport::Udp
        && allocation.user == *user
        && allocation.moves == ticket.moves
}
