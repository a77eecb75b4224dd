//! STUN request handlers: Binding, authentication, Allocate, Refresh, CreatePermission
//! and ChannelBind (RFC 8489 §9.2, RFC 8656 §7-11).

use super::allocation::{Allocation, BindError, Family, RelayAddr};
use super::auth::{CredentialError, NonceStatus};
use super::ledger::{self, Refusal};
use super::policy::{canonical, unmapped};
use super::server::{
    Auth, EndReason, Event, Output, PendingAllocate, PendingRelay, Reject, Server, BIND_ATTEMPTS, DEFAULT_LIFETIME,
    RESERVATION_LIFETIME,
};
use super::stats::{AuthFailure, DropReason};
use super::{AllocationId, FiveTuple, Transport};
use crate::stun::attributes::ChannelNumber;
use crate::stun::channel_data::CHANNEL_RANGE;
use crate::stun::message::{self, IntegritySet, Message};
use std::cmp::Reverse;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};
use stun_codec::rfc5389::attributes::{AlternateServer, Nonce, Realm, Username, XorMappedAddress};
use stun_codec::rfc5766::attributes::{
    DontFragment, EvenPort, Lifetime, RequestedTransport, ReservationToken, XorPeerAddress, XorRelayAddress,
};
use stun_codec::rfc5766::methods::ALLOCATE;
use stun_codec::rfc8656::attributes::{AdditionalAddressFamily, AddressFamily, RequestedAddressFamily};
use stun_codec::{MessageClass, TransactionId};

/// RFC 8656 §14.7: REQUESTED-TRANSPORT value for UDP.
const PROTOCOL_UDP: u8 = 17;
/// RFC 6062 §6.1: REQUESTED-TRANSPORT value for TCP.
const PROTOCOL_TCP: u8 = 6;

/// Why the shell could not bind a relay socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayBindError {
    /// The port is taken by another socket: try another.
    AddrInUse,
    /// Anything else (out of file descriptors, address not local...).
    Other,
}

/// RFC 8656 §18.12 ADDRESS-ERROR-CODE: family, reserved, then an ERROR-CODE body.
fn address_error_code(family: Family, code: u16) -> crate::stun::attributes::AddressErrorCode {
    let family = match family {
        Family::V4 => 0x01,
        Family::V6 => 0x02,
    };
    crate::stun::attributes::Opaque(vec![family, 0, (code / 100) as u8, (code % 100) as u8])
}

fn success(request: &Message) -> Message {
    Message::new(MessageClass::SuccessResponse, request.method(), request.transaction_id())
}

impl Server {
    /// RFC 8489 §6.3.1: a Binding success carries the client's reflexive address.
    pub(crate) fn binding(&mut self, from: FiveTuple, request: &Message) {
        let mut response = success(request);
        response.add_attribute(XorMappedAddress::new(from.client));
        match self.nat_discovery_for(from) {
            Some(discovery) => self.binding_rfc5780(from, request, response, discovery),
            None => self.respond(from, response, None),
        }
    }

    /// A 401 or 438 carrying the realm, a fresh nonce that starts with the nonce cookie
    /// and turnd's security feature bits, and the PASSWORD-ALGORITHMS turnd offers
    /// (RFC 8489 §9.2.4: every 401 and 438 has all three).
    ///
    /// When that answer would pass the request's amplification budget, it goes without
    /// PASSWORD-ALGORITHMS and its nonce without the matching feature bit: the client
    /// then authenticates as an RFC 5389 one (MD5 key, SHA-1 integrity).
    fn challenge(&self, code: u16, now: Instant, from: FiveTuple) -> Reject {
        use super::auth::{SecurityFeatures, NONCE_LEN, OFFERED_ALGORITHMS};
        let credentials = &self.config.credentials;
        let attribute = |len: usize| 4 + len.div_ceil(4) * 4;
        // Header, ERROR-CODE with no reason phrase, REALM, NONCE, PASSWORD-ALGORITHMS.
        let full = 20
            + 8
            + attribute(credentials.realm().len())
            + attribute(NONCE_LEN)
            + attribute(4 * OFFERED_ALGORITHMS.len());
        let offer_algorithms = self.answer_budget.map_or(true, |budget| full <= budget);
        let features = if offer_algorithms {
            credentials.features()
        } else {
            credentials.features().without(SecurityFeatures::PASSWORD_ALGORITHMS)
        };
        let mut reject = Reject::new(code, "");
        if let Ok(realm) = Realm::new(credentials.realm().to_owned()) {
            reject.attributes.push(realm.into());
        }
        if let Ok(nonce) = Nonce::new(self.nonces.issue(now, from.client, features)) {
            reject.attributes.push(nonce.into());
        }
        if offer_algorithms {
            reject.attributes.push(super::auth::offered_algorithms().into());
        }
        reject
    }

    fn auth_failed(&mut self, now: Instant, from: FiveTuple, reason: AuthFailure) -> Reject {
        self.stats.auth_failures[reason as usize] += 1;
        self.outputs.push_back(Output::Event(Event::AuthFailed { client: from.client, reason }));
        let code = if reason == AuthFailure::StaleNonce { 438 } else { 401 };
        self.challenge(code, now, from)
    }

    /// RFC 8489 §9.2.4: the long-term credential checks, in the RFC's order. A request
    /// with neither PASSWORD-ALGORITHMS nor PASSWORD-ALGORITHM (an RFC 5389 client) is
    /// checked with the MD5 key, as before RFC 8489; one that negotiated uses the key of
    /// the algorithm it chose. MESSAGE-INTEGRITY-SHA256 is checked in preference to
    /// MESSAGE-INTEGRITY when both are present.
    pub(crate) fn authenticate(
        &mut self,
        now: Instant,
        unix_now: u64,
        from: FiveTuple,
        decoded: &message::Decoded,
        packet: &[u8],
    ) -> Result<Auth, Reject> {
        use super::auth::{negotiate, KeyChoice};
        use crate::stun::attributes::{PasswordAlgorithm, PasswordAlgorithms, Userhash};

        let request = &decoded.message;
        let Some(integrity) = decoded.integrity_sha256.or(decoded.integrity_sha1) else {
            return Err(self.challenge(401, now, from));
        };
        let username = request.get_attribute::<Username>();
        let userhash = request.get_attribute::<Userhash>();
        let (Some(_), Some(nonce)) = (request.get_attribute::<Realm>(), request.get_attribute::<Nonce>()) else {
            return Err(Reject::new(400, "Bad Request"));
        };
        // Exactly one of USERNAME and USERHASH names the user.
        if username.is_some() == userhash.is_some() {
            return Err(Reject::new(400, "Bad Request"));
        }
        let choice = negotiate(
            nonce.value(),
            request.get_attribute::<PasswordAlgorithms>(),
            request.get_attribute::<PasswordAlgorithm>(),
        )
        .map_err(|_| Reject::new(400, "Bad Request"))?;
        let credentials = &self.config.credentials;
        let name = match (username, userhash) {
            (Some(username), _) => Some(username.name().to_owned()),
            // Only static users can be found by hash (see `Credentials::user_for_hash`).
            (None, Some(hash)) => credentials.user_for_hash(hash.value()).map(str::to_owned),
            (None, None) => None,
        };
        let Some(name) = name else {
            return Err(self.auth_failed(now, from, AuthFailure::UnknownUser));
        };
        if self.revocations.refuses(&name, unix_now) {
            return Err(self.auth_failed(now, from, AuthFailure::Revoked));
        }
        let keys = match credentials.keys_for(&name, choice.algorithm(), unix_now) {
            Ok(keys) => keys,
            // A user with only an MD5 key has no credential for SHA-256: as unknown.
            Err(CredentialError::UnknownUser | CredentialError::NoKeyForAlgorithm) => {
                return Err(self.auth_failed(now, from, AuthFailure::UnknownUser))
            }
            Err(CredentialError::Expired) => return Err(self.auth_failed(now, from, AuthFailure::Expired)),
        };
        let Some(key) = keys.into_iter().find(|k| integrity.verify(k.as_bytes(), packet)) else {
            return Err(self.auth_failed(now, from, AuthFailure::BadIntegrity));
        };
        if self.nonces.check(nonce.value(), now, from.client) == NonceStatus::Stale {
            return Err(self.auth_failed(now, from, AuthFailure::StaleNonce));
        }
        Ok(Auth {
            valid_for: credentials.valid_for(&name, unix_now).map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX)),
            username: name,
            key,
            integrity: IntegritySet {
                sha1: decoded.integrity_sha1.is_some(),
                // After a negotiation every response carries MESSAGE-INTEGRITY-SHA256
                // (RFC 8489 §9.2.4, last paragraph); otherwise mirror the request.
                sha256: decoded.integrity_sha256.is_some() || matches!(choice, KeyChoice::Negotiated(_)),
            },
        })
    }

    /// The lifetime to grant: the client's request capped by the configured maximum.
    /// With `end_at_credential_expiry`, a REST credential's remaining validity caps it.
    fn granted_lifetime(&self, request: &Message, auth: &Auth) -> Duration {
        let requested = request.get_attribute::<Lifetime>().map(|l| l.lifetime()).unwrap_or(DEFAULT_LIFETIME);
        let granted = requested.min(self.config.max_lifetime);
        match auth.valid_for {
            Some(left) if self.config.end_at_credential_expiry => granted.min(Duration::from_secs(left.into())),
            _ => granted,
        }
    }

    /// The allocation on `from`, checked to belong to the authenticated user.
    pub(crate) fn own_allocation(&self, from: FiveTuple, auth: &Auth) -> Result<AllocationId, Reject> {
        let id =
            *self.by_five_tuple.get(&from).ok_or_else(|| Reject::new(437, "Allocation Mismatch").with_auth(auth))?;
        match self.allocations.get(&id) {
            Some(a) if *a.username == *auth.username => Ok(id),
            Some(_) => Err(Reject::new(441, "Wrong Credentials").with_auth(auth)),
            None => Err(Reject::new(437, "Allocation Mismatch").with_auth(auth)),
        }
    }

    /// RFC 8656 §7.2. On success the answer waits for the relay sockets: the shell
    /// reports each through [`Server::handle_relay_bound`].
    pub(crate) fn allocate(
        &mut self,
        now: Instant,
        from: FiveTuple,
        request: &Message,
        auth: Auth,
    ) -> Result<(), Reject> {
        if let Some(id) = self.by_five_tuple.get(&from).copied() {
            let retransmission =
                self.allocations.get(&id).is_some_and(|a| a.transaction_id == request.transaction_id());
            if retransmission {
                if let Some(response) = self.allocate_success(id, request.transaction_id(), now, None, &[]) {
                    self.respond(from, response, Some(&auth));
                }
                return Ok(());
            }
            return Err(Reject::new(437, "Allocation Mismatch").with_auth(&auth));
        }
        if self.pending.values().any(|p| p.five_tuple == from) {
            return Ok(()); // a retransmission while the sockets are being bound
        }
        if let Some(alternate) = self.draining {
            // RFC 8489 §10: redirect, protected like any answer to an authenticated request.
            return Err(match alternate {
                Some(server) => {
                    let mut reject = Reject::new(300, "Try Alternate").with_auth(&auth);
                    reject.attributes.push(AlternateServer::new(server).into());
                    reject
                }
                None => Reject::new(508, "Insufficient Capacity").with_auth(&auth),
            });
        }
        let bad = || Reject::new(400, "Bad Request").with_auth(&auth);
        let transport = request.get_attribute::<RequestedTransport>().ok_or_else(bad)?;
        let tcp = match transport.protocol() {
            PROTOCOL_UDP => false,
            // RFC 6062 §5.1: TCP relays only for clients on a TCP or TLS connection.
            PROTOCOL_TCP if from.transport != Transport::Udp => true,
            PROTOCOL_TCP => return Err(bad()),
            _ => return Err(Reject::new(442, "Unsupported Transport Protocol").with_auth(&auth)),
        };
        let udp_only = request.get_attribute::<EvenPort>().is_some()
            || request.get_attribute::<ReservationToken>().is_some()
            || request.get_attribute::<DontFragment>().is_some()
            || request.get_attribute::<AdditionalAddressFamily>().is_some();
        if tcp && udp_only {
            return Err(bad());
        }
        let even_port = request.get_attribute::<EvenPort>();
        let token = request.get_attribute::<ReservationToken>();
        let requested = request.get_attribute::<RequestedAddressFamily>().map(|f| f.address_family());
        let additional = request.get_attribute::<AdditionalAddressFamily>().map(|f| f.address_family());
        // RFC 8656 §7.2: these combinations are contradictory.
        if (token.is_some() && (even_port.is_some() || requested.is_some() || additional.is_some()))
            || (requested.is_some() && additional.is_some())
            || (even_port.is_some() && additional.is_some())
            || additional.is_some_and(|f| f != AddressFamily::V6)
        {
            return Err(bad());
        }
        let primary = if requested == Some(AddressFamily::V6) { Family::V6 } else { Family::V4 };
        let bind_ip = self
            .relay_bind_ip(from, primary)
            .ok_or_else(|| Reject::new(440, "Address Family not Supported").with_auth(&auth))?;
        let reserve_next = even_port.is_some_and(|e| e.is_requested());
        let additional_ip = additional.and_then(|_| self.relay_bind_ip(from, Family::V6));
        // One lock for the quotas and the ports: the Allocate is counted from here on
        // (pending ones too), so no other worker can admit past a quota meanwhile.
        // A reservation (EVEN-PORT with R) counts as one more allocation until it is
        // redeemed, which trades its count for the redeeming Allocate's.
        let mut shared = ledger::lock(&self.ledger);
        let refused = |refusal| {
            match refusal {
                Refusal::Capacity => Reject::new(508, "Insufficient Capacity"),
                Refusal::Quota => Reject::new(486, "Allocation Quota Reached"),
            }
            .with_auth(&auth)
        };
        let (user, ip, quotas) = (&auth.username, from.client.ip(), &self.config.quotas);
        let port = match token {
            Some(token) => shared.redeem(token.token(), user, ip, quotas, now).map_err(refused)?,
            None => {
                shared.admit(user, ip, quotas).map_err(refused)?;
                if reserve_next {
                    if let Err(refusal) = shared.admit_reservation(user, ip, quotas) {
                        shared.forget_allocation(user, ip);
                        return Err(refused(refusal));
                    }
                }
                let port = shared.take_port(self.rng.as_mut(), even_port.is_some(), reserve_next, now);
                if port.is_none() {
                    shared.forget_allocation(user, ip);
                    if reserve_next {
                        shared.forget_allocation(user, ip);
                    }
                }
                port
            }
        };
        let Some(port) = port else {
            return Err(Reject::new(508, "Insufficient Capacity").with_auth(&auth));
        };
        let mut relays = vec![PendingRelay { family: primary, bind_ip, port, attempts: 1, outcome: None }];
        let mut refused_additional = None;
        if additional.is_some() {
            match additional_ip {
                None => refused_additional = Some(440),
                Some(ip) => match shared.take_port(self.rng.as_mut(), false, false, now) {
                    Some(port) => {
                        relays.push(PendingRelay { family: Family::V6, bind_ip: ip, port, attempts: 1, outcome: None })
                    }
                    None => refused_additional = Some(508),
                },
            }
        }
        drop(shared);
        let id = self.next_allocation_id();
        let dont_fragment = request.get_attribute::<DontFragment>().is_some();
        for relay in &relays {
            let local = SocketAddr::new(relay.bind_ip, relay.port);
            self.outputs.push_back(Output::BindRelay { allocation: id, local, dont_fragment, tcp });
        }
        self.pending.insert(
            id,
            PendingAllocate {
                five_tuple: from,
                transaction_id: request.transaction_id(),
                username: auth.username.clone(),
                lifetime: self.granted_lifetime(request, &auth).max(Duration::from_secs(1)),
                relays,
                refused_additional,
                reserve_next,
                from_reservation: token.is_some(),
                even_port: even_port.is_some(),
                dont_fragment,
                tcp,
                auth,
            },
        );
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

    /// The shell's answer to [`Output::BindRelay`] for the socket of `local`'s family:
    /// `Ok` with the bound address, or why binding failed.
    pub fn handle_relay_bound(
        &mut self,
        now: Instant,
        id: AllocationId,
        local: SocketAddr,
        result: Result<SocketAddr, RelayBindError>,
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
                let mut shared = ledger::lock(&self.ledger);
                shared.release_port(relay.port);
                if pending.reserve_next {
                    shared.release_port(relay.port.saturating_add(1));
                }
                let retry =
                    error == RelayBindError::AddrInUse && !pending.from_reservation && relay.attempts < BIND_ATTEMPTS;
                let next = if retry {
                    shared.take_port(self.rng.as_mut(), pending.even_port, pending.reserve_next, now)
                } else {
                    None
                };
                drop(shared);
                match next {
                    Some(port) => {
                        relay.port = port;
                        relay.attempts += 1;
                        let local = SocketAddr::new(relay.bind_ip, port);
                        let (dont_fragment, tcp) = (pending.dont_fragment, pending.tcp);
                        self.outputs.push_back(Output::BindRelay { allocation: id, local, dont_fragment, tcp });
                        return;
                    }
                    None => relay.outcome = Some(Err(508)),
                }
            }
        }
        if pending.relays.iter().all(|r| r.outcome.is_some()) {
            if let Some(pending) = self.pending.remove(&id) {
                self.finish_allocate(now, id, pending);
            }
        }
    }

    /// Creates the allocation once every relay socket is bound (or failed).
    fn finish_allocate(&mut self, now: Instant, id: AllocationId, pending: PendingAllocate) {
        let mut relays = [None, None];
        let mut address_errors = Vec::new();
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
                    let mut shared = ledger::lock(&self.ledger);
                    shared.forget_allocation(&pending.username, pending.five_tuple.client.ip());
                    if pending.reserve_next {
                        shared.forget_allocation(&pending.username, pending.five_tuple.client.ip());
                    }
                    for relay in &pending.relays {
                        if let Some(Ok(bound)) = relay.outcome {
                            shared.release_port(bound.port());
                        }
                    }
                    drop(shared);
                    self.outputs.push_back(Output::CloseRelay { allocation: id });
                    let reject = Reject::new(508, "Insufficient Capacity").with_auth(&pending.auth);
                    self.reject(pending.five_tuple, ALLOCATE, pending.transaction_id, reject);
                    return;
                }
            }
        }
        if let Some(code) = pending.refused_additional {
            address_errors.push((Family::V6, code));
        }
        // The pool took the primary port's successor with it (EVEN-PORT with R).
        let reserved = pending.relays.first().filter(|_| pending.reserve_next).map(|r| r.port.saturating_add(1));
        let (user, ip) = (pending.username.as_str(), pending.five_tuple.client.ip());
        let reservation = reserved.and_then(|port| self.mint_reservation(port, now, user, ip));
        let mut allocation = Allocation::new(
            pending.five_tuple,
            &pending.username,
            pending.auth.key,
            relays,
            now,
            pending.lifetime,
            pending.transaction_id,
        );
        allocation.tcp = pending.tcp;
        let advertised = allocation.relay_addrs().next().map(|r| r.advertised);
        self.by_five_tuple.insert(pending.five_tuple, id);
        // The ledger counted it at admission; this count is only for `user_bandwidth`.
        *self.local_users.entry(pending.username.clone().into_boxed_str()).or_default() += 1;
        let expires = allocation.expires;
        self.allocations.insert(id, allocation);
        self.schedule_expiry(id, expires);
        self.stats.allocations_created += 1;
        if let Some(relay) = advertised {
            self.outputs.push_back(Output::Event(Event::AllocationCreated {
                id,
                five_tuple: pending.five_tuple,
                username: pending.username.clone(),
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
    pub(crate) fn mint_reservation(&mut self, port: u16, now: Instant, user: &str, ip: IpAddr) -> Option<u64> {
        let expires = now + RESERVATION_LIFETIME;
        let mut shared = ledger::lock(&self.ledger);
        // Tokens are random u64s: a collision needs the rng to repeat, so a few draws
        // are plenty.
        for _ in 0..4 {
            let token = self.rng.next_u64();
            if shared.reserve(token, port, expires, user, ip) {
                self.reservation_expiries.push(Reverse((expires, token)));
                if self.reservation_expiries.len() > 2 * shared.reservation_count() + 1024 {
                    self.reservation_expiries.retain(|Reverse((_, token))| shared.holds_reservation(*token));
                }
                return Some(token);
            }
        }
        shared.release_port(port);
        shared.forget_allocation(user, ip);
        None
    }

    fn allocate_success(
        &self,
        id: AllocationId,
        transaction_id: TransactionId,
        now: Instant,
        reservation: Option<u64>,
        address_errors: &[(Family, u16)],
    ) -> Option<Message> {
        let allocation = self.allocations.get(&id)?;
        let mut response = Message::new(MessageClass::SuccessResponse, ALLOCATE, transaction_id);
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
        response.add_attribute(XorMappedAddress::new(allocation.five_tuple.client));
        Some(response)
    }

    /// RFC 8656 §7.3 (LIFETIME 0 deletes the allocation at once).
    pub(crate) fn refresh(
        &mut self,
        now: Instant,
        from: FiveTuple,
        request: &Message,
        auth: &Auth,
    ) -> Result<Message, Reject> {
        let id = self.own_allocation(from, auth)?;
        let lifetime = self.granted_lifetime(request, auth);
        let mut response = success(request);
        if lifetime.is_zero() {
            self.remove_allocation(id, now, EndReason::Deleted);
        } else if let Some(allocation) = self.allocations.get_mut(&id) {
            allocation.expires = now + lifetime;
            allocation.prune(now);
            let expires = allocation.expires;
            self.schedule_expiry(id, expires);
            self.outputs.push_back(Output::Event(Event::AllocationRefreshed { id, lifetime }));
        }
        response.add_attribute(Lifetime::from_u32(lifetime.as_secs() as u32));
        Ok(response)
    }

    /// Checks a peer against the relay's family and the peer policy (403 and one log
    /// line per allocation when refused).
    pub(crate) fn admit_peer(
        &mut self,
        id: AllocationId,
        peer: SocketAddr,
        with_port: bool,
        auth: &Auth,
    ) -> Result<(), Reject> {
        let Some(allocation) = self.allocations.get_mut(&id) else {
            return Err(Reject::new(437, "Allocation Mismatch").with_auth(auth));
        };
        if allocation.relay_for(peer.ip()).is_none() {
            return Err(Reject::new(443, "Peer Address Family Mismatch").with_auth(auth));
        }
        let policy = &self.config.policy;
        let verdict = if with_port { policy.check(peer) } else { policy.check_permission(peer) };
        if verdict.is_err() {
            self.stats.drop(DropReason::Policy);
            if !allocation.denial_logged {
                allocation.denial_logged = true;
                self.outputs.push_back(Output::Event(Event::PeerDenied { id, peer }));
            }
            return Err(Reject::new(403, "Forbidden").with_auth(auth));
        }
        Ok(())
    }

    /// RFC 8656 §9.
    pub(crate) fn create_permission(
        &mut self,
        now: Instant,
        from: FiveTuple,
        request: &Message,
        auth: &Auth,
    ) -> Result<Message, Reject> {
        let id = self.own_allocation(from, auth)?;
        let peers: Vec<SocketAddr> = request
            .attributes()
            .filter_map(|a| stun_codec::convert::TryAsRef::<XorPeerAddress>::try_as_ref(a))
            .map(|p| unmapped(p.address()))
            .collect();
        if peers.is_empty() {
            return Err(Reject::new(400, "Bad Request").with_auth(auth));
        }
        for &peer in &peers {
            self.admit_peer(id, peer, false, auth)?;
        }
        let max = self.config.quotas.permissions_per_allocation;
        let ips: Vec<IpAddr> = peers.iter().map(|p| p.ip()).collect();
        let allocation = self.allocations.get_mut(&id).ok_or_else(|| Reject::new(437, "Allocation Mismatch"))?;
        if !allocation.has_room_for_permissions(&ips, now, max) {
            return Err(Reject::new(486, "Permission Quota Reached").with_auth(auth));
        }
        for ip in ips {
            allocation.permit(ip, now, max);
        }
        Ok(success(request))
    }

    /// RFC 8656 §11.
    pub(crate) fn channel_bind(
        &mut self,
        now: Instant,
        from: FiveTuple,
        request: &Message,
        auth: &Auth,
    ) -> Result<Message, Reject> {
        let id = self.own_allocation(from, auth)?;
        let bad = || Reject::new(400, "Bad Request").with_auth(auth);
        let number = request.get_attribute::<ChannelNumber>().and_then(|c| c.number()).ok_or_else(bad)?;
        let peer = request.get_attribute::<XorPeerAddress>().map(|p| unmapped(p.address())).ok_or_else(bad)?;
        if !CHANNEL_RANGE.contains(&number) {
            return Err(bad());
        }
        self.admit_peer(id, peer, true, auth)?;
        let quotas = self.config.quotas;
        let allocation = self.allocations.get_mut(&id).ok_or_else(|| Reject::new(437, "Allocation Mismatch"))?;
        if !allocation.has_room_for_permissions(&[peer.ip()], now, quotas.permissions_per_allocation) {
            return Err(Reject::new(486, "Permission Quota Reached").with_auth(auth));
        }
        let to_host = self.config.policy.is_host(peer.ip());
        let allocation = self.allocations.get_mut(&id).ok_or_else(|| Reject::new(437, "Allocation Mismatch"))?;
        match allocation.bind_channel(number, peer, to_host, now, quotas.channels_per_allocation) {
            Ok(()) => {}
            Err(BindError::Conflict) => return Err(bad()),
            Err(BindError::Quota) => return Err(Reject::new(486, "Channel Quota Reached").with_auth(auth)),
        }
        allocation.permit(peer.ip(), now, quotas.permissions_per_allocation);
        Ok(success(request))
    }
}
