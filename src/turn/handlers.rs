//! STUN request handlers: Binding, authentication, Allocate, Refresh, CreatePermission
//! and ChannelBind (RFC 8489 §9.2, RFC 8656 §7-11).

use super::allocation::{Allocation, BindError};
use super::auth::{CredentialError, NonceStatus};
use super::policy::canonical;
use super::server::{
    Auth, EndReason, Event, Output, PendingAllocate, Reject, Reservation, Server, BIND_ATTEMPTS, DEFAULT_LIFETIME,
    RESERVATION_LIFETIME,
};
use super::stats::{AuthFailure, DropReason};
use super::{AllocationId, FiveTuple};
use crate::stun::attributes::ChannelNumber;
use crate::stun::channel_data::CHANNEL_RANGE;
use crate::stun::message::{self, IntegritySet, Message};
use std::cmp::Reverse;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use stun_codec::rfc5389::attributes::{Nonce, Realm, Username, XorMappedAddress};
use stun_codec::rfc5766::attributes::{
    DontFragment, EvenPort, Lifetime, RequestedTransport, ReservationToken, XorPeerAddress, XorRelayAddress,
};
use stun_codec::rfc8656::attributes::RequestedAddressFamily;
use stun_codec::{MessageClass, TransactionId};

/// RFC 8656 §14.7: REQUESTED-TRANSPORT value for UDP.
const PROTOCOL_UDP: u8 = 17;

/// Why the shell could not bind a relay socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayBindError {
    /// The port is taken by another socket: try another.
    AddrInUse,
    /// Anything else (out of file descriptors, address not local...).
    Other,
}

fn success(request: &Message) -> Message {
    Message::new(MessageClass::SuccessResponse, request.method(), request.transaction_id())
}

impl Server {
    /// RFC 8489 §6.3.1: a Binding success carries the client's reflexive address.
    pub(crate) fn binding(&mut self, from: FiveTuple, request: &Message) {
        let mut response = success(request);
        response.add_attribute(XorMappedAddress::new(from.client));
        self.respond(from, response, None);
    }

    /// A 401 or 438 carrying a fresh nonce and the realm.
    fn challenge(&self, code: u16, now: Instant, from: FiveTuple) -> Reject {
        let mut reject = Reject::new(code, "");
        if let Ok(realm) = Realm::new(self.config.credentials.realm().to_owned()) {
            reject.attributes.push(realm.into());
        }
        if let Ok(nonce) = Nonce::new(self.nonces.issue(now, from.client)) {
            reject.attributes.push(nonce.into());
        }
        reject
    }

    fn auth_failed(&mut self, now: Instant, from: FiveTuple, reason: AuthFailure) -> Reject {
        self.stats.auth_failures[reason as usize] += 1;
        self.outputs.push_back(Output::Event(Event::AuthFailed { client: from.client, reason }));
        let code = if reason == AuthFailure::StaleNonce { 438 } else { 401 };
        self.challenge(code, now, from)
    }

    /// RFC 8489 §9.2.4: the long-term credential checks, in the RFC's order.
    pub(crate) fn authenticate(
        &mut self,
        now: Instant,
        unix_now: u64,
        from: FiveTuple,
        decoded: &message::Decoded,
        packet: &[u8],
    ) -> Result<Auth, Reject> {
        let request = &decoded.message;
        let Some(integrity) = decoded.integrity_sha256.or(decoded.integrity_sha1) else {
            return Err(self.challenge(401, now, from));
        };
        let (Some(username), Some(_), Some(nonce)) =
            (request.get_attribute::<Username>(), request.get_attribute::<Realm>(), request.get_attribute::<Nonce>())
        else {
            return Err(Reject::new(400, "Bad Request"));
        };
        let keys = match self.config.credentials.keys_for(username.name(), unix_now) {
            Ok(keys) => keys,
            Err(CredentialError::UnknownUser) => return Err(self.auth_failed(now, from, AuthFailure::UnknownUser)),
            Err(CredentialError::Expired) => return Err(self.auth_failed(now, from, AuthFailure::Expired)),
        };
        let Some(key) = keys.into_iter().find(|k| integrity.verify(k.as_bytes(), packet)) else {
            return Err(self.auth_failed(now, from, AuthFailure::BadIntegrity));
        };
        if self.nonces.check(nonce.value(), now, from.client) == NonceStatus::Stale {
            return Err(self.auth_failed(now, from, AuthFailure::StaleNonce));
        }
        Ok(Auth {
            username: username.name().to_owned(),
            key,
            integrity: IntegritySet {
                sha1: decoded.integrity_sha1.is_some(),
                sha256: decoded.integrity_sha256.is_some(),
            },
        })
    }

    /// The lifetime to grant: the client's request capped by the configured maximum.
    fn granted_lifetime(&self, request: &Message) -> Duration {
        let requested = request.get_attribute::<Lifetime>().map(|l| l.lifetime()).unwrap_or(DEFAULT_LIFETIME);
        requested.min(self.config.max_lifetime)
    }

    /// The allocation on `from`, checked to belong to the authenticated user.
    fn own_allocation(&self, from: FiveTuple, auth: &Auth) -> Result<AllocationId, Reject> {
        let id =
            *self.by_five_tuple.get(&from).ok_or_else(|| Reject::new(437, "Allocation Mismatch").with_auth(auth))?;
        match self.allocations.get(&id) {
            Some(a) if *a.username == *auth.username => Ok(id),
            Some(_) => Err(Reject::new(441, "Wrong Credentials").with_auth(auth)),
            None => Err(Reject::new(437, "Allocation Mismatch").with_auth(auth)),
        }
    }

    /// RFC 8656 §7.2. On success the answer waits for the relay socket: the shell
    /// reports it through [`Server::handle_relay_bound`].
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
                let response = self.allocate_success(id, request.transaction_id(), now, None);
                if let Some(response) = response {
                    self.respond(from, response, Some(&auth));
                }
                return Ok(());
            }
            return Err(Reject::new(437, "Allocation Mismatch").with_auth(&auth));
        }
        if self.pending.values().any(|p| p.five_tuple == from) {
            return Ok(()); // a retransmission while the socket is being bound
        }
        let bad = |reason| Reject::new(400, reason).with_auth(&auth);
        let transport = request.get_attribute::<RequestedTransport>().ok_or_else(|| bad("Bad Request"))?;
        if transport.protocol() != PROTOCOL_UDP {
            return Err(Reject::new(442, "Unsupported Transport Protocol").with_auth(&auth));
        }
        let even_port = request.get_attribute::<EvenPort>();
        let token = request.get_attribute::<ReservationToken>();
        let family = request.get_attribute::<RequestedAddressFamily>();
        if token.is_some() && (even_port.is_some() || family.is_some()) {
            return Err(bad("Bad Request"));
        }
        let wants_v6 = family.is_some_and(|f| f.address_family() == stun_codec::rfc8656::attributes::AddressFamily::V6);
        let bind_ip = self
            .relay_bind_ip(from, wants_v6)
            .ok_or_else(|| Reject::new(440, "Address Family not Supported").with_auth(&auth))?;
        let quotas = self.config.quotas;
        if self.allocations.len() + self.pending.len() >= quotas.total_allocations {
            return Err(Reject::new(508, "Insufficient Capacity").with_auth(&auth));
        }
        if self.per_user.get(auth.username.as_str()).copied().unwrap_or(0) >= quotas.allocations_per_user
            || self.per_ip.get(&from.client.ip()).copied().unwrap_or(0) >= quotas.allocations_per_ip
        {
            return Err(Reject::new(486, "Allocation Quota Reached").with_auth(&auth));
        }
        let (port, from_reservation) = match token {
            Some(token) => {
                let value = token.token();
                let reservation = self.reservations.remove(&value).filter(|r| r.expires > now);
                let reservation =
                    reservation.ok_or_else(|| Reject::new(508, "Insufficient Capacity").with_auth(&auth))?;
                (reservation.port, true)
            }
            None => {
                let even = even_port.is_some();
                let reserve = even_port.is_some_and(|e| e.is_requested());
                let port = self.ports.take_random(self.rng.as_mut(), even, reserve);
                (port.ok_or_else(|| Reject::new(508, "Insufficient Capacity").with_auth(&auth))?, false)
            }
        };
        let id = self.next_allocation_id();
        let dont_fragment = request.get_attribute::<DontFragment>().is_some();
        self.pending.insert(
            id,
            PendingAllocate {
                five_tuple: from,
                transaction_id: request.transaction_id(),
                username: auth.username.clone(),
                lifetime: self.granted_lifetime(request).max(Duration::from_secs(1)),
                port,
                reserve_next: even_port.is_some_and(|e| e.is_requested()),
                from_reservation,
                even_port: even_port.is_some(),
                dont_fragment,
                bind_ip,
                attempts: 1,
                auth,
            },
        );
        let local = SocketAddr::new(bind_ip, port);
        self.outputs.push_back(Output::BindRelay { allocation: id, local, dont_fragment });
        Ok(())
    }

    /// The IP a new relay socket binds to: the configured one for the family, else the
    /// local address the request arrived on when it is of that family.
    fn relay_bind_ip(&self, from: FiveTuple, wants_v6: bool) -> Option<IpAddr> {
        let arrived = canonical(from.server.ip());
        let relay = &self.config.relay;
        if wants_v6 {
            relay.bind_v6.map(IpAddr::V6).or(arrived.is_ipv6().then_some(arrived))
        } else {
            relay.bind_v4.map(IpAddr::V4).or(arrived.is_ipv4().then_some(arrived))
        }
    }

    /// The shell's answer to [`Output::BindRelay`]: `Ok` with the bound address, or why
    /// binding failed.
    pub fn handle_relay_bound(&mut self, now: Instant, id: AllocationId, result: Result<SocketAddr, RelayBindError>) {
        let Some(mut pending) = self.pending.remove(&id) else {
            return;
        };
        let bound = match result {
            Ok(bound) => bound,
            Err(error) => {
                self.ports.release(pending.port);
                if pending.reserve_next {
                    self.ports.release(pending.port + 1);
                }
                let retry = error == RelayBindError::AddrInUse && !pending.from_reservation;
                let next = if retry && pending.attempts < BIND_ATTEMPTS {
                    self.ports.take_random(self.rng.as_mut(), pending.even_port, pending.reserve_next)
                } else {
                    None
                };
                match next {
                    Some(port) => {
                        pending.port = port;
                        pending.attempts += 1;
                        let local = SocketAddr::new(pending.bind_ip, port);
                        let dont_fragment = pending.dont_fragment;
                        self.pending.insert(id, pending);
                        self.outputs.push_back(Output::BindRelay { allocation: id, local, dont_fragment });
                    }
                    None => {
                        let reject = Reject::new(508, "Insufficient Capacity").with_auth(&pending.auth);
                        self.reject(
                            pending.five_tuple,
                            stun_codec::rfc5766::methods::ALLOCATE,
                            pending.transaction_id,
                            reject,
                        );
                    }
                }
                return;
            }
        };
        let advertised_ip = match canonical(bound.ip()) {
            IpAddr::V4(ip) => self.config.relay.external_v4.unwrap_or(ip).into(),
            IpAddr::V6(ip) => self.config.relay.external_v6.unwrap_or(ip).into(),
        };
        let reservation = pending.reserve_next.then(|| {
            let token = self.rng.next_u64();
            self.reservations
                .insert(token, Reservation { port: pending.port + 1, expires: now + RESERVATION_LIFETIME });
            token
        });
        let allocation = Allocation::new(
            pending.five_tuple,
            &pending.username,
            pending.auth.key,
            bound,
            SocketAddr::new(advertised_ip, bound.port()),
            now,
            pending.lifetime,
            pending.transaction_id,
        );
        self.by_five_tuple.insert(pending.five_tuple, id);
        *self.per_user.entry(pending.username.clone().into_boxed_str()).or_default() += 1;
        *self.per_ip.entry(pending.five_tuple.client.ip()).or_default() += 1;
        self.expiries.push(Reverse((allocation.expires, id)));
        self.allocations.insert(id, allocation);
        self.stats.allocations_created += 1;
        self.outputs.push_back(Output::Event(Event::AllocationCreated {
            id,
            five_tuple: pending.five_tuple,
            username: pending.username.clone(),
            relay: SocketAddr::new(advertised_ip, bound.port()),
            lifetime: pending.lifetime,
        }));
        if let Some(response) = self.allocate_success(id, pending.transaction_id, now, reservation) {
            self.respond(pending.five_tuple, response, Some(&pending.auth));
        }
    }

    fn allocate_success(
        &self,
        id: AllocationId,
        transaction_id: TransactionId,
        now: Instant,
        reservation: Option<u64>,
    ) -> Option<Message> {
        let allocation = self.allocations.get(&id)?;
        let mut response =
            Message::new(MessageClass::SuccessResponse, stun_codec::rfc5766::methods::ALLOCATE, transaction_id);
        response.add_attribute(XorRelayAddress::new(allocation.advertised));
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
        let lifetime = self.granted_lifetime(request);
        let mut response = success(request);
        if lifetime.is_zero() {
            self.remove_allocation(id, now, EndReason::Deleted);
        } else if let Some(allocation) = self.allocations.get_mut(&id) {
            allocation.expires = now + lifetime;
            allocation.prune(now);
            self.expiries.push(Reverse((allocation.expires, id)));
            self.outputs.push_back(Output::Event(Event::AllocationRefreshed { id, lifetime }));
        }
        response.add_attribute(Lifetime::from_u32(lifetime.as_secs() as u32));
        Ok(response)
    }

    /// Checks a peer against the relay's family and the peer policy (403 and one log
    /// line per allocation when refused).
    fn admit_peer(&mut self, id: AllocationId, peer: SocketAddr, with_port: bool, auth: &Auth) -> Result<(), Reject> {
        let Some(allocation) = self.allocations.get_mut(&id) else {
            return Err(Reject::new(437, "Allocation Mismatch").with_auth(auth));
        };
        if canonical(peer.ip()).is_ipv4() != canonical(allocation.relay.ip()).is_ipv4() {
            return Err(Reject::new(443, "Peer Address Family Mismatch").with_auth(auth));
        }
        let policy = &self.config.policy;
        let verdict = if with_port { policy.check(peer) } else { policy.check_ip(peer.ip()) };
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
            .map(|p| p.address())
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
        let peer = request.get_attribute::<XorPeerAddress>().map(|p| p.address()).ok_or_else(bad)?;
        if !CHANNEL_RANGE.contains(&number) {
            return Err(bad());
        }
        self.admit_peer(id, peer, true, auth)?;
        let quotas = self.config.quotas;
        let allocation = self.allocations.get_mut(&id).ok_or_else(|| Reject::new(437, "Allocation Mismatch"))?;
        if !allocation.has_room_for_permissions(&[peer.ip()], now, quotas.permissions_per_allocation) {
            return Err(Reject::new(486, "Permission Quota Reached").with_auth(auth));
        }
        match allocation.bind_channel(number, peer, now, quotas.channels_per_allocation) {
            Ok(()) => {}
            Err(BindError::Conflict) => return Err(bad()),
            Err(BindError::Quota) => return Err(Reject::new(486, "Channel Quota Reached").with_auth(auth)),
        }
        allocation.permit(peer.ip(), now, quotas.permissions_per_allocation);
        Ok(success(request))
    }
}
