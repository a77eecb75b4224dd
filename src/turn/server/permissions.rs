//! Requests on an existing allocation: Refresh (RFC 8656 §8), CreatePermission (§9)
//! and ChannelBind (§11), and the checks they share: whose allocation it is, and
//! whether the peer policy admits the peer.

use super::requests::success;
use super::{Server, DEFAULT_LIFETIME};
use crate::stun::errors;
use crate::stun::message::Message;
use crate::turn::allocation::BindError;
use crate::turn::answer::{Auth, Reject};
use crate::turn::ledger::Shared;
use crate::turn::output::{EndReason, Event, Output};
use crate::turn::request::{self, ChannelBind};
use crate::turn::stats::DropReason;
use crate::turn::{AllocationId, FiveTuple, PeerAddr};
use std::net::IpAddr;
use std::time::{Duration, Instant};
use stun_codec::rfc5766::attributes::Lifetime;

/// Whether a peer is checked with its port (a channel, a connection) or by IP alone
/// (a permission: RFC 8656 §9 installs it for the IP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PeerCheck {
    /// IP and port.
    WithPort,
    /// The IP only.
    IpOnly,
}

impl Server {
    /// The lifetime to grant: the client's request (or the default) capped by the
    /// configured maximum. With `end_at_credential_expiry`, a REST credential's
    /// remaining validity caps it too.
    pub(super) fn granted_lifetime(&self, requested: Option<Duration>, auth: &Auth) -> Duration {
        let granted = requested.unwrap_or(DEFAULT_LIFETIME).min(self.config.max_lifetime);
        match auth.valid_for {
            Some(left) if self.config.end_at_credential_expiry => granted.min(Duration::from_secs(left.get().into())),
            _ => granted,
        }
    }

    /// The allocation on `from`, checked to belong to the authenticated user.
    pub(super) fn own_allocation(&self, from: FiveTuple, auth: &Auth) -> Result<AllocationId, Reject> {
        let mismatch = || Reject::new(errors::ALLOCATION_MISMATCH).with_auth(auth);
        let id = self.table.id_on(&from).ok_or_else(mismatch)?;
        match self.table.get(id) {
            Some(a) if *a.username == *auth.username => Ok(id),
            Some(_) => Err(Reject::new(errors::WRONG_CREDENTIALS).with_auth(auth)),
            None => Err(mismatch()),
        }
    }

    /// RFC 8656 §8 (LIFETIME 0 deletes the allocation at once). With a
    /// MOBILITY-TICKET from a 5-tuple that has no allocation, an RFC 8016 move
    /// (`Ok(None)`: answered once the allocation arrives from another worker); on the
    /// allocation's own 5-tuple the ticket changes nothing, and a mobile allocation's
    /// answer carries a fresh one.
    pub(super) fn refresh(
        &mut self,
        now: Instant,
        from: FiveTuple,
        message: &Message,
        auth: &Auth,
        shared: &impl Shared,
    ) -> Result<Option<Message>, Reject> {
        if let Some(ticket) = message.get_attribute::<crate::stun::attributes::MobilityTicket>() {
            if !self.config.mobility {
                self.out.stats.mobility(crate::turn::stats::MoveResult::Forbidden);
                return Err(Reject::new(errors::MOBILITY_FORBIDDEN).with_auth(auth));
            }
            if self.table.id_on(&from).is_none() {
                return self.refresh_from_new_five_tuple(now, from, message, auth, ticket.value(), shared);
            }
        }
        let id = self.own_allocation(from, auth)?;
        let lifetime = self.granted_lifetime(request::lifetime(message), auth);
        let mut response = success(message);
        if lifetime.is_zero() {
            self.remove_allocation(id, now, EndReason::Deleted, shared);
        } else if let Some(allocation) = self.table.get_mut(id) {
            allocation.expires = now + lifetime;
            allocation.prune(now);
            let expires = allocation.expires;
            self.table.schedule_expiry(id, expires);
            self.out.push(Output::Event(Event::AllocationRefreshed { id, lifetime }));
        }
        response.add_attribute(Lifetime::from_u32(lifetime.as_secs() as u32));
        if let Some(ticket) = self.table.get(id).and_then(|a| self.ticket_for(id, a)) {
            response.add_attribute(ticket);
        }
        Ok(Some(response))
    }

    /// Checks a peer against the relay's family and the peer policy (403 and one log
    /// line per allocation when refused).
    pub(super) fn admit_peer(
        &mut self,
        id: AllocationId,
        peer: PeerAddr,
        check: PeerCheck,
        auth: &Auth,
    ) -> Result<(), Reject> {
        let Some(allocation) = self.table.get_mut(id) else {
            return Err(Reject::new(errors::ALLOCATION_MISMATCH).with_auth(auth));
        };
        if allocation.relay_for(peer.ip()).is_none() {
            return Err(Reject::new(errors::PEER_ADDRESS_FAMILY_MISMATCH).with_auth(auth));
        }
        let policy = self.config.policy_of(allocation.five_tuple.tenant);
        let verdict = match check {
            PeerCheck::WithPort => policy.check(peer.get()),
            PeerCheck::IpOnly => policy.check_permission(peer.get()),
        };
        if verdict.is_err() {
            let first = !allocation.denial_logged;
            allocation.denial_logged = true;
            self.drop_packet(DropReason::Policy);
            if first {
                self.out.push(Output::Event(Event::PeerDenied { id, peer: peer.get() }));
            }
            return Err(Reject::new(errors::FORBIDDEN).with_auth(auth));
        }
        Ok(())
    }

    /// RFC 8656 §9.
    pub(super) fn create_permission(
        &mut self,
        now: Instant,
        from: FiveTuple,
        message: &Message,
        auth: &Auth,
    ) -> Result<Message, Reject> {
        let id = self.own_allocation(from, auth)?;
        let peers = request::permission_peers(message).map_err(|kind| Reject::new(kind).with_auth(auth))?;
        for &peer in &peers {
            self.admit_peer(id, peer, PeerCheck::IpOnly, auth)?;
        }
        let max = self.config.quotas_of(from.tenant).permissions_per_allocation;
        let ips: Vec<IpAddr> = peers.iter().map(|p| p.ip()).collect();
        let allocation = self.table.get_mut(id).ok_or_else(|| Reject::new(errors::ALLOCATION_MISMATCH))?;
        if !allocation.has_room_for_permissions(&ips, now, max) {
            return Err(Reject::new(errors::PERMISSION_QUOTA_REACHED).with_auth(auth));
        }
        for ip in ips {
            allocation.permit(ip, now, max);
        }
        Ok(success(message))
    }

    /// RFC 8656 §11.
    pub(super) fn channel_bind(
        &mut self,
        now: Instant,
        from: FiveTuple,
        message: &Message,
        auth: &Auth,
    ) -> Result<Message, Reject> {
        let id = self.own_allocation(from, auth)?;
        let bad = || Reject::new(errors::BAD_REQUEST).with_auth(auth);
        let ChannelBind { number, peer } = ChannelBind::decode(message).map_err(|_| bad())?;
        self.admit_peer(id, peer, PeerCheck::WithPort, auth)?;
        let quotas = *self.config.quotas_of(from.tenant);
        let to_host = self.config.policy_of(from.tenant).is_host(peer.ip());
        let allocation = self.table.get_mut(id).ok_or_else(|| Reject::new(errors::ALLOCATION_MISMATCH))?;
        if !allocation.has_room_for_permissions(&[peer.ip()], now, quotas.permissions_per_allocation) {
            return Err(Reject::new(errors::PERMISSION_QUOTA_REACHED).with_auth(auth));
        }
        match allocation.bind_channel(number, peer, to_host, now, quotas.channels_per_allocation) {
            Ok(()) => {}
            Err(BindError::Conflict) => return Err(bad()),
            Err(BindError::Quota) => return Err(Reject::new(errors::CHANNEL_QUOTA_REACHED).with_auth(auth)),
        }
        allocation.permit(peer.ip(), now, quotas.permissions_per_allocation);
        Ok(success(message))
    }
}
