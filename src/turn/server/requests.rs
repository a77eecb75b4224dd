//! What a client packet is, and the route of a STUN request to its handler (RFC 8489
//! §6.3): the fast paths first (ChannelData, Send, a plain Binding), then decoding,
//! the 420 check, authentication and the method's handler.

use super::{Admission, Received, Server, AMPLIFICATION_LIMIT, MAX_CONTROL_MESSAGE};
use crate::stun::binding;
use crate::stun::errors;
use crate::stun::message::{self, DecodeError, Message};
use crate::stun::raw::{self, PacketKind};
use crate::turn::answer::{Auth, Reject};
use crate::turn::ledger::Shared;
use crate::turn::stats::{AuthFailure, DropReason};
use crate::turn::{FiveTuple, Transport};
use std::time::Instant;
use stun_codec::rfc5389::attributes::{UnknownAttributes, XorMappedAddress};
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5766::methods::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, REFRESH};
use stun_codec::{MessageClass, Method, TransactionId};

impl Server {
    /// Sorts a client packet (see [`Server::handle_client_packet`]).
    pub(super) fn receive(&mut self, now: Instant, from: FiveTuple, packet: &[u8]) -> Received {
        if !self.config.denied_clients.is_empty() && self.config.is_denied_client(from.client) {
            self.drop_packet(DropReason::DeniedClient);
            return Received::Handled;
        }
        self.out.budget = (from.transport == Transport::Udp).then(|| packet.len() * AMPLIFICATION_LIMIT);
        let relayed = match raw::classify(packet) {
            PacketKind::ChannelData => {
                self.table.relay_channel_data(now, from, packet, &self.config, &mut self.out.stats)
            }
            PacketKind::Stun if raw::is_send_indication(packet) => {
                self.table.relay_send_indication(now, from, packet, &self.config, &mut self.out.stats)
            }
            PacketKind::Stun => return self.receive_stun(from, packet),
            PacketKind::ClassicStun => {
                match message::classic_binding_response(packet, from.client.get()) {
                    Some(bytes) if self.out.budget.is_some_and(|b| bytes.len() > b) => {
                        self.drop_packet(DropReason::Amplification)
                    }
                    Some(bytes) => {
                        self.out.stats.answer(BINDING, None);
                        self.out.push(crate::turn::Output::Transmit { to: from, bytes });
                    }
                    None => self.drop_packet(DropReason::Malformed),
                }
                return Received::Handled;
            }
            PacketKind::Unknown => {
                self.drop_packet(DropReason::Malformed);
                return Received::Handled;
            }
        };
        relayed.map_or(Received::Handled, Received::Relay)
    }

    /// A STUN message that is not a Send indication: a plain Binding is answered here
    /// without decoding; anything else is a request for [`Server::handle_request`].
    fn receive_stun(&mut self, from: FiveTuple, packet: &[u8]) -> Received {
        if packet.len() > MAX_CONTROL_MESSAGE {
            self.drop_packet(DropReason::Malformed);
            return Received::Handled;
        }
        // The codec's own limit on SOFTWARE: what the general path would send.
        let software = self.config.software.as_deref().filter(|s| s.len() < 128 || s.chars().count() < 128);
        // RFC 5780 answers carry more than the fast path writes.
        let fast = from.transport != Transport::Udp || self.config.nat_discovery_for(from).is_none();
        let answer =
            fast.then(|| binding::plain_binding_response(packet, from.client.get(), software, self.out.budget));
        match answer.flatten() {
            Some(bytes) => {
                self.out.stats.answer(BINDING, None);
                self.out.push(crate::turn::Output::Transmit { to: from, bytes });
                Received::Handled
            }
            None => Received::Request,
        }
    }

    pub(super) fn handle_stun(
        &mut self,
        now: Instant,
        unix_now: u64,
        from: FiveTuple,
        packet: &[u8],
        shared: &impl Shared,
    ) {
        self.out.budget = (from.transport == Transport::Udp).then(|| packet.len() * AMPLIFICATION_LIMIT);
        let decoded = match message::decode(packet) {
            Ok(decoded) => decoded,
            Err(DecodeError::Drop(_)) => {
                self.drop_packet(DropReason::Malformed);
                return;
            }
            Err(DecodeError::Malformed { method, class, transaction_id }) => {
                self.drop_packet(DropReason::Malformed);
                if class == MessageClass::Request {
                    self.reject(from, method, transaction_id, Reject::new(errors::BAD_REQUEST), shared);
                }
                return;
            }
        };
        let request = &decoded.message;
        if request.class() != MessageClass::Request {
            // RFC 8489 §6.3.2: indications never get a response; clients send no responses.
            self.drop_packet(DropReason::Unexpected);
            return;
        }
        let (method, transaction_id) = (request.method(), request.transaction_id());
        let mut unknown: Vec<_> = request
            .unknown_attributes()
            .map(stun_codec::Attribute::get_type)
            .filter(|t| t.is_comprehension_required())
            .collect();
        // RFC 5780's request attributes are known only where discovery answers them.
        if method != BINDING || self.config.nat_discovery_for(from).is_none() {
            unknown.extend(crate::turn::nat_discovery::request_attributes(request));
        }
        if !unknown.is_empty() {
            let reject = Reject::new(errors::UNKNOWN_ATTRIBUTE).with(UnknownAttributes::new(unknown));
            self.reject(from, method, transaction_id, reject, shared);
            return;
        }
        match self.dispatch(now, unix_now, from, &decoded, packet, shared) {
            Ok(None) => {}
            Ok(Some((response, auth))) => self.respond(from, response, Some(&auth)),
            Err(reject) => self.reject(from, method, transaction_id, reject, shared),
        }
    }

    /// Routes a request to its handler. `Ok(None)`: the answer comes later (an
    /// Allocate waiting for its relay socket) or was already queued.
    fn dispatch(
        &mut self,
        now: Instant,
        unix_now: u64,
        from: FiveTuple,
        decoded: &message::Decoded,
        packet: &[u8],
        shared: &impl Shared,
    ) -> Result<Option<(Message, Auth)>, Reject> {
        use crate::turn::tcp_relay::{connect_method, connection_bind_method};
        let request = &decoded.message;
        let method = request.method();
        if method == BINDING {
            self.binding(from, request, shared);
            return Ok(None);
        }
        let (connect, connection_bind) = (connect_method(), connection_bind_method());
        if ![ALLOCATE, REFRESH, CREATE_PERMISSION, CHANNEL_BIND, connect, connection_bind].contains(&method) {
            return Err(Reject::new(errors::BAD_REQUEST));
        }
        let Some(auth) = self.authenticate(now, unix_now, from, decoded, packet)? else {
            return Ok(None); // parked until the webhook answers
        };
        match method {
            ALLOCATE => self.allocate(now, from, request, auth, shared).map(|()| None),
            m if m == connect => self.connect(from, request, auth).map(|()| None),
            m if m == connection_bind => self.connection_bind(now, from, request, auth).map(|()| None),
            REFRESH => self.refresh(now, from, request, &auth, shared).map(|m| m.map(|m| (m, auth))),
            CREATE_PERMISSION => self.create_permission(now, from, request, &auth).map(|m| Some((m, auth))),
            _ => self.channel_bind(now, from, request, &auth).map(|m| Some((m, auth))),
        }
    }

    /// RFC 8489 §6.3.1: a Binding success carries the client's reflexive address; on
    /// an RFC 5780 address it follows that RFC's rules.
    fn binding(&mut self, from: FiveTuple, request: &Message, shared: &impl Shared) {
        let mut response = success(request);
        response.add_attribute(XorMappedAddress::new(from.client.get()));
        match self.config.nat_discovery_for(from) {
            Some(discovery) => {
                if let Err(kind) =
                    discovery.answer(&mut self.out, self.config.software.as_deref(), from, request, response)
                {
                    self.reject(from, request.method(), request.transaction_id(), Reject::new(kind), shared);
                }
            }
            None => self.respond(from, response, None),
        }
    }

    /// Queues a response (see [`crate::turn::outbox::Outbox::respond`]).
    pub(super) fn respond(&mut self, to: FiveTuple, response: Message, auth: Option<&Auth>) {
        self.out.respond(to, response, auth, self.config.software.as_deref());
    }

    /// Queues an error response. An unauthenticated 401 goes only within its source's
    /// rate (the ledger's limiter, over all workers); past it the request is dropped
    /// so turnd cannot be used as a reflector.
    pub(super) fn reject(
        &mut self,
        to: FiveTuple,
        method: Method,
        transaction_id: TransactionId,
        reject: Reject,
        shared: &impl Shared,
    ) {
        if reject.auth.is_none()
            && reject.kind.code == errors::UNAUTHENTICATED.code
            && !shared.with(|ledger| ledger.allow_unauthenticated(to.client.ip(), self.last_now))
        {
            self.out.stats.auth_failures[AuthFailure::RateLimited as usize] += 1;
            return;
        }
        self.reject_authenticated(to, method, transaction_id, reject);
    }

    /// Queues an error response that the 401 limiter has no say in (it is protected,
    /// or not a 401).
    pub(super) fn reject_authenticated(&mut self, to: FiveTuple, method: Method, tid: TransactionId, reject: Reject) {
        self.out.reject(to, method, tid, reject, self.config.software.as_deref());
    }

    /// Whether a new Allocate is turned away, and how (RFC 8489 §10: a redirect,
    /// protected like any answer to an authenticated request). The fleet's choice
    /// comes first (draining, front door, over `max-allocations`: 300 naming the
    /// least-loaded other node serving the client's transport and family, at its
    /// address for that transport, with ALTERNATE-DOMAIN for TLS clients); then a
    /// draining node's static `alternate-server`, else 508. The ledger is locked only
    /// to read the node's allocation count, and only when a threshold is configured.
    pub(super) fn turn_away(&mut self, from: FiveTuple, auth: &Auth, shared: &impl Shared) -> Option<Reject> {
        use crate::turn::allocation::Family;
        use crate::turn::fleet::RedirectReason;
        let policy = self.config.redirect;
        let draining = self.admission != Admission::Open;
        let allocations = match policy.max_allocations {
            Some(_) if !draining => shared.with(|ledger| ledger.allocation_count()),
            _ => 0,
        };
        let family = if crate::turn::policy::canonical(from.client.ip()).is_ipv4() { Family::V4 } else { Family::V6 };
        let redirect = self.fleet.redirect(self.last_now, &policy, draining, allocations, from.transport, family);
        if let Some((to, reason)) = redirect {
            self.out.stats.redirects[reason as usize] += 1;
            let mut reject = Reject::new(errors::TRY_ALTERNATE)
                .with_auth(auth)
                .with(stun_codec::rfc5389::attributes::AlternateServer::new(to.address));
            if let (Transport::Tls, Some(domain)) = (from.transport, &to.domain) {
                let attribute: crate::stun::attributes::AlternateDomain =
                    crate::stun::attributes::Opaque(domain.as_bytes().to_vec());
                reject = reject.with(attribute);
            }
            return Some(reject);
        }
        match self.admission {
            Admission::Open => None,
            Admission::Redirect(server) => {
                self.out.stats.redirects[RedirectReason::Draining as usize] += 1;
                Some(
                    Reject::new(errors::TRY_ALTERNATE)
                        .with_auth(auth)
                        .with(stun_codec::rfc5389::attributes::AlternateServer::new(server)),
                )
            }
            Admission::Refuse => Some(Reject::new(errors::INSUFFICIENT_CAPACITY).with_auth(auth)),
        }
    }
}

/// An empty success response to `request`.
pub(super) fn success(request: &Message) -> Message {
    Message::new(MessageClass::SuccessResponse, request.method(), request.transaction_id())
}
