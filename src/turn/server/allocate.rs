//! RFC 8656 §7.2 Allocate: admission against the quotas, the relay port(s) taken from
//! the shared pool, the wait for the shell to bind the sockets, and the answer. Also
//! the RESERVATION-TOKEN an EVEN-PORT with R leaves behind.

use super::requests::success;
use super::{Server, RESERVATION_LIFETIME};
use crate::stun::errors;
use crate::stun::message::Message;
use crate::turn::allocation::{Allocation, Family, RelayAddr};
use crate::turn::answer::{Auth, Reject};
use crate::turn::ledger::{Refusal, Shared};
use crate::turn::output::{Event, Output, RelayBindError};
use crate::turn::policy::canonical;
use crate::turn::request::{self, PortRequest, RelayKind};
use crate::turn::tenant::UserKey;
use crate::turn::{AllocationId, FiveTuple};
use std::cmp::Reverse;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};
use stun_codec::rfc5389::attributes::XorMappedAddress;
use stun_codec::rfc5766::attributes::{Lifetime, ReservationToken, XorRelayAddress};
use stun_codec::rfc5766::methods::ALLOCATE;
use stun_codec::{MessageClass, TransactionId};

/// How many ports an Allocate tries when binding fails because a port is taken by
/// another process.
const BIND_ATTEMPTS: u8 = 8;

/// An Allocate waiting for the shell to bind its relay sockets.
#[derive(Debug)]
pub(super) struct PendingAllocate {
    five_tuple: FiveTuple,
    transaction_id: TransactionId,
    auth: Auth,
    lifetime: Duration,
    kind: RelayKind,
    port: PortRequest,
    /// The requested family first, then the additional one of a dual-stack request.
    relays: Vec<PendingRelay>,
    /// An additional family refused before binding (440 or 508).
    refused_additional: Option<u16>,
    /// RFC 8016 mobility asked for and granted.
    mobile: bool,
}

/// One relay socket of a pending Allocate.
#[derive(Debug)]
struct PendingRelay {
    family: Family,
    bind_ip: IpAddr,
    port: u16,
    attempts: u8,
    /// `Ok(bound)`, or the error code the family failed with; `None` while binding.
    outcome: Option<Result<SocketAddr, u16>>,
}

/// RFC 8656 §18.12 ADDRESS-ERROR-CODE: family, reserved, then an ERROR-CODE body.
fn address_error_code(family: Family, code: u16) -> crate::stun::attributes::AddressErrorCode {
    let family = match family {
        Family::V4 => 0x01,
        Family::V6 => 0x02,
    };
    crate::stun::attributes::Opaque(vec![family, 0, (code / 100) as u8, (code % 100) as u8])
}

fn bind_output(allocation: AllocationId, local: SocketAddr, kind: RelayKind) -> Output {
    let (dont_fragment, tcp) = match kind {
        RelayKind::Udp { dont_fragment } => (dont_fragment, false),
        RelayKind::Tcp => (false, true),
    };
    Output::BindRelay { allocation, local, dont_fragment, tcp }
}

impl Server {
    /// RFC 8656 §7.2. On success the answer waits for the relay sockets: the shell
    /// reports each through [`Server::handle_relay_bound`].
    pub(super) fn allocate(
        &mut self,
        now: Instant,
        from: FiveTuple,
        message: &Message,
        auth: Auth,
        shared: &impl Shared,
    ) -> Result<(), Reject> {
        if let Some(id) = self.table.id_on(&from) {
            let retransmission = self.table.get(id).is_some_and(|a| a.transaction_id == message.transaction_id());
            if retransmission {
                if let Some(response) = self.allocate_success(id, message.transaction_id(), now, None, &[]) {
                    self.respond(from, response, Some(&auth));
                }
                return Ok(());
            }
            return Err(Reject::new(errors::ALLOCATION_MISMATCH).with_auth(&auth));
        }
        if self.pending.values().any(|p| p.five_tuple == from) {
            return Ok(()); // a retransmission while the sockets are being bound
        }
        if let Some(reject) = self.turn_away(from, &auth, shared) {
            return Err(reject);
        }
        let request =
            request::Allocate::decode(message, from.transport).map_err(|kind| Reject::new(kind).with_auth(&auth))?;
        let mobile = self.mobility_requested(from, message).map_err(|kind| Reject::new(kind).with_auth(&auth))?;
        let bind_ip = self
            .relay_bind_ip(from, request.family)
            .ok_or_else(|| Reject::new(errors::ADDRESS_FAMILY_NOT_SUPPORTED).with_auth(&auth))?;
        let reserve_next = request.port.reserves_next();
        let additional_ip = request.additional_v6.then(|| self.relay_bind_ip(from, Family::V6));
        // The Allocate is counted from here on (pending ones too), in one ledger
        // operation, so no other worker can admit past a quota. A reservation
        // (EVEN-PORT with R) counts as one more allocation until it is redeemed, which
        // trades its count for the redeeming Allocate's.
        let user = &UserKey::new(from.tenant, &auth.username);
        let mut quotas = *self.config.quotas_of(from.tenant);
        if let Some(max) = auth.max_allocations {
            quotas.allocations_per_user = max.get() as usize;
        }
        let (ip, quotas) = (from.client.ip(), &quotas);
        let rng = self.rng.as_mut();
        let taken = shared.with(|ledger| {
            let port = match request.port {
                PortRequest::Reserved(token) => ledger.redeem(token, user, ip, quotas, now)?,
                _ => {
                    ledger.admit(user, ip, quotas)?;
                    if reserve_next {
                        if let Err(refusal) = ledger.admit_reservation(user, ip, quotas) {
                            ledger.forget_allocation(user, ip);
                            return Err(refusal);
                        }
                    }
                    let port = ledger.take_port(rng, request.port.even(), reserve_next, now);
                    if port.is_none() {
                        ledger.forget_allocation(user, ip);
                        if reserve_next {
                            ledger.forget_allocation(user, ip);
                        }
                    }
                    port
                }
            };
            // The additional family's port: taken only once the primary one is.
            let additional = match (port, additional_ip) {
                (Some(_), Some(Some(ip))) => Some(ledger.take_port(rng, false, false, now).map(|port| (ip, port))),
                _ => None,
            };
            Ok((port, additional))
        });
        let (port, additional) = taken.map_err(|refusal| {
            match refusal {
                Refusal::Capacity => Reject::new(errors::INSUFFICIENT_CAPACITY),
                Refusal::Quota => Reject::new(errors::ALLOCATION_QUOTA_REACHED),
            }
            .with_auth(&auth)
        })?;
        let Some(port) = port else {
            return Err(Reject::new(errors::INSUFFICIENT_CAPACITY).with_auth(&auth));
        };
        let family = request.family;
        let mut relays = vec![PendingRelay { family, bind_ip, port, attempts: 1, outcome: None }];
        let mut refused_additional = None;
        match (additional_ip, additional) {
            (None, _) => {}
            (Some(None), _) => refused_additional = Some(errors::ADDRESS_FAMILY_NOT_SUPPORTED.code),
            (Some(Some(_)), Some(Some((ip, port)))) => {
                relays.push(PendingRelay { family: Family::V6, bind_ip: ip, port, attempts: 1, outcome: None })
            }
            (Some(Some(_)), _) => refused_additional = Some(errors::INSUFFICIENT_CAPACITY.code),
        }
        let id = self.table.next_id();
        for relay in &relays {
            self.out.push(bind_output(id, SocketAddr::new(relay.bind_ip, relay.port), request.kind));
        }
        let lifetime = self.granted_lifetime(request.lifetime, &auth).max(Duration::from_secs(1));
        let pending = PendingAllocate {
            five_tuple: from,
            transaction_id: message.transaction_id(),
            auth,
            lifetime,
            kind: request.kind,
            port: request.port,
            relays,
            refused_additional,
            mobile,
        };
        self.pending.insert(id, pending);
        Ok(())
    }

    /// The IP a new relay socket of `family` binds to: the configured one, else the
    /// local address the request arrived on when it is of that family, else the
    /// loopback of that family for a request to loopback, else the host's address of
    /// that family (a browser on IPv6 asks for an IPv4 relay by default).
    fn relay_bind_ip(&self, from: FiveTuple, family: Family) -> Option<IpAddr> {
        let arrived = canonical(from.server.ip());
        let relay = &self.config.relay;
        let loopback = arrived.is_loopback();
        match family {
            Family::V6 => relay.bind_v6.map(IpAddr::V6).or(arrived.is_ipv6().then_some(arrived)).or_else(|| {
                if loopback {
                    Some(Ipv6Addr::LOCALHOST.into())
                } else {
                    relay.host_v6.map(IpAddr::V6)
                }
            }),
            Family::V4 => relay.bind_v4.map(IpAddr::V4).or(arrived.is_ipv4().then_some(arrived)).or_else(|| {
                if loopback {
                    Some(Ipv4Addr::LOCALHOST.into())
                } else {
                    relay.host_v4.map(IpAddr::V4)
                }
            }),
        }
    }

    /// See [`Server::handle_relay_bound`].
    pub(super) fn relay_bound(
        &mut self,
        now: Instant,
        id: AllocationId,
        local: SocketAddr,
        result: Result<SocketAddr, RelayBindError>,
        shared: &impl Shared,
    ) {
        let Some(pending) = self.pending.get_mut(&id) else {
            return;
        };
        let family = Family::of(local.ip());
        let Some(relay) = pending.relays.iter_mut().find(|r| r.family == family && r.outcome.is_none()) else {
            return;
        };
        match result {
            Ok(bound) => relay.outcome = Some(Ok(bound)),
            Err(error) => {
                let reserve_next = pending.port.reserves_next();
                let from_reservation = matches!(pending.port, PortRequest::Reserved(_));
                let retry = error == RelayBindError::AddrInUse && !from_reservation && relay.attempts < BIND_ATTEMPTS;
                let (failed, even, rng) = (relay.port, pending.port.even(), self.rng.as_mut());
                let next = shared.with(|ledger| {
                    ledger.release_port(failed);
                    if reserve_next {
                        ledger.release_port(failed.saturating_add(1));
                    }
                    if retry {
                        ledger.take_port(rng, even, reserve_next, now)
                    } else {
                        None
                    }
                });
                match next {
                    Some(port) => {
                        relay.port = port;
                        relay.attempts += 1;
                        let output = bind_output(id, SocketAddr::new(relay.bind_ip, port), pending.kind);
                        self.out.push(output);
                        return;
                    }
                    None => relay.outcome = Some(Err(errors::INSUFFICIENT_CAPACITY.code)),
                }
            }
        }
        if pending.relays.iter().all(|r| r.outcome.is_some()) {
            if let Some(pending) = self.pending.remove(&id) {
                self.finish_allocate(now, id, pending, shared);
            }
        }
    }

    /// Creates the allocation once every relay socket is bound (or failed).
    fn finish_allocate(&mut self, now: Instant, id: AllocationId, pending: PendingAllocate, shared: &impl Shared) {
        let mut relays = [None, None];
        let mut address_errors = Vec::new();
        let user = &UserKey::new(pending.five_tuple.tenant, &pending.auth.username);
        let client_ip = pending.five_tuple.client.ip();
        for (i, relay) in pending.relays.iter().enumerate() {
            match relay.outcome {
                Some(Ok(bound)) => {
                    let advertised_ip: IpAddr = match canonical(bound.ip()) {
                        IpAddr::V4(ip) => self.config.relay.external_v4.unwrap_or(ip).into(),
                        IpAddr::V6(ip) => self.config.relay.external_v6.unwrap_or(ip).into(),
                    };
                    let advertised = SocketAddr::new(advertised_ip, bound.port());
                    relays[relay.family as usize] = Some(RelayAddr { bound, advertised });
                }
                Some(Err(code)) if i > 0 => address_errors.push((relay.family, code)),
                _ => {
                    // The requested family failed: the whole Allocate fails and stops
                    // counting against the quotas.
                    shared.with(|ledger| {
                        ledger.forget_allocation(user, client_ip);
                        if pending.port.reserves_next() {
                            ledger.forget_allocation(user, client_ip);
                        }
                        for relay in &pending.relays {
                            if let Some(Ok(bound)) = relay.outcome {
                                ledger.release_port(bound.port());
                            }
                        }
                    });
                    self.out.push(Output::CloseRelay { allocation: id });
                    let reject = Reject::new(errors::INSUFFICIENT_CAPACITY).with_auth(&pending.auth);
                    self.reject_authenticated(pending.five_tuple, ALLOCATE, pending.transaction_id, reject);
                    return;
                }
            }
        }
        if let Some(code) = pending.refused_additional {
            address_errors.push((Family::V6, code));
        }
        // The pool took the primary port's successor with it (EVEN-PORT with R).
        let reserved =
            pending.relays.first().filter(|_| pending.port.reserves_next()).map(|r| r.port.saturating_add(1));
        let reservation = reserved.and_then(|port| self.mint_reservation(port, now, user, client_ip, shared));
        let mut allocation = Allocation::new(
            pending.five_tuple,
            &pending.auth.username,
            pending.auth.key,
            relays,
            now,
            pending.lifetime,
            pending.transaction_id,
        );
        allocation.tcp = pending.kind == RelayKind::Tcp;
        allocation.mobile = pending.mobile;
        allocation.user_bandwidth = pending.auth.bandwidth.map(std::num::NonZeroU32::get);
        let advertised = allocation.relay_addrs().next().map(|r| r.advertised);
        // The ledger counted it at admission.
        self.table.insert(id, allocation);
        self.out.stats.allocations_created += 1;
        if let Some(relay) = advertised {
            self.out.push(Output::Event(Event::AllocationCreated {
                id,
                five_tuple: pending.five_tuple,
                username: pending.auth.username.clone(),
                relay,
                lifetime: pending.lifetime,
            }));
        }
        if let Some(response) = self.allocate_success(id, pending.transaction_id, now, reservation, &address_errors) {
            self.respond(pending.five_tuple, response, Some(&pending.auth));
        }
    }

    /// RFC 8656 §7.2: holds `port` (already taken from the pool) for a later Allocate
    /// and returns the RESERVATION-TOKEN naming it; `None`, with the port released, in
    /// the unlikely case that every token drawn is in use.
    ///
    /// The ledger holds the reservation so any worker can redeem it; this worker's
    /// timer remembers the expiry to release the port. Tokens redeemed meanwhile leave
    /// entries behind; when those outnumber the live reservations the heap keeps only
    /// tokens the ledger still holds, so it stays within about twice the reservations
    /// (themselves bounded by the port range) at amortised O(1) cost.
    /// The reservation stands on the count `admit_reservation` made for `user` from
    /// `ip`, which goes when no token can be minted.
    fn mint_reservation(
        &mut self,
        port: u16,
        now: Instant,
        user: &UserKey,
        ip: IpAddr,
        shared: &impl Shared,
    ) -> Option<u64> {
        let expires = now + RESERVATION_LIFETIME;
        let (rng, expiries) = (self.rng.as_mut(), &mut self.reservation_expiries);
        shared.with(|ledger| {
            // Tokens are random u64s: a collision needs the rng to repeat, so a few
            // draws are plenty.
            for _ in 0..4 {
                let token = rng.next_u64();
                if ledger.reserve(token, port, expires, user, ip) {
                    expiries.push(Reverse((expires, token)));
                    if expiries.len() > 2 * ledger.reservation_count() + 1024 {
                        expiries.retain(|Reverse((_, token))| ledger.holds_reservation(*token));
                    }
                    return Some(token);
                }
            }
            ledger.release_port(port);
            ledger.forget_allocation(user, ip);
            None
        })
    }

    fn allocate_success(
        &self,
        id: AllocationId,
        transaction_id: TransactionId,
        now: Instant,
        reservation: Option<u64>,
        address_errors: &[(Family, u16)],
    ) -> Option<Message> {
        let allocation = self.table.get(id)?;
        let mut response = success(&Message::new(MessageClass::Request, ALLOCATE, transaction_id));
        for relay in allocation.relay_addrs() {
            response.add_attribute(XorRelayAddress::new(relay.advertised));
        }
        for (family, code) in address_errors {
            response.add_attribute(address_error_code(*family, *code));
        }
        response.add_attribute(Lifetime::from_u32(allocation.remaining(now).as_secs() as u32));
        if let Some(token) = reservation {
            response.add_attribute(ReservationToken::new(token));
        }
        response.add_attribute(XorMappedAddress::new(allocation.five_tuple.client.get()));
        if let Some(ticket) = self.ticket_for(id, allocation) {
            response.add_attribute(ticket);
        }
        Some(response)
    }
}
