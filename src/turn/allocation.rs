//! One allocation's state (RFC 8656 §2.2): its relay address, lifetime, permissions and
//! channel bindings. Lists are small vectors bounded by the per-allocation quotas
//! (the first entry inline): a linear scan of a few entries beats hashing on the relay
//! path.

use super::auth::Key;
use super::{FiveTuple, PeerAddr};
use smallvec::SmallVec;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use stun_codec::TransactionId;

/// RFC 8656 §9: permissions last 300 seconds.
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// RFC 8656 §12: channel bindings last 600 seconds.
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);

/// A permission for one peer IP address.
#[derive(Debug, Clone, Copy)]
struct Permission {
    ip: IpAddr,
    expires: Instant,
}

/// A channel binding: a channel number bound to a peer transport address (kept
/// normalised, so the relay path compares and returns it as it is).
#[derive(Debug, Clone, Copy)]
struct Channel {
    number: u16,
    peer: PeerAddr,
    expires: Instant,
    /// The peer is an address of this host: each packet checks that its port still
    /// holds a relay (see [`crate::turn::policy::PeerPolicy::check`]).
    to_host: bool,
}

/// An address family, as an index into per-family arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4.
    V4 = 0,
    /// IPv6.
    V6 = 1,
}

impl Family {
    /// The family of an address (IPv4-mapped IPv6 counts as IPv4).
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

/// One relayed transport address of an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayAddr {
    /// The relay socket's local address.
    pub bound: SocketAddr,
    /// The address told to the client (differs from `bound` behind NAT).
    pub advertised: SocketAddr,
}

/// Traffic relayed for one allocation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Datagrams relayed client to peer.
    pub to_peer_packets: u64,
    /// Payload bytes relayed client to peer.
    pub to_peer_bytes: u64,
    /// Datagrams relayed peer to client.
    pub to_client_packets: u64,
    /// Payload bytes relayed peer to client.
    pub to_client_bytes: u64,
}

/// Why a channel could not be bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindError {
    /// The number is bound to another peer, or the peer to another number (400).
    Conflict,
    /// The allocation has as many channels as its quota allows.
    Quota,
}

/// One channel binding of an [`AllocationState`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelState {
    /// The channel number.
    pub number: u16,
    /// The peer it is bound to.
    pub peer: SocketAddr,
    /// How long the binding has left.
    pub remaining: Duration,
    /// Whether the peer is an address of this host.
    pub to_host: bool,
}

/// An allocation as plain data, detached from any worker: what one worker hands
/// another when a client moves (RFC 8016), free of sockets, handles and instants (times
/// are durations from the export) so that it could as well cross to another process.
/// The relay ports stay counted in the ledger while it travels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocationState {
    /// Its id (kept: ids are unique over the process's workers).
    pub id: super::AllocationId,
    /// The client 5-tuple it was on.
    pub five_tuple: FiveTuple,
    /// The user that created it.
    pub username: Box<str>,
    /// The key later requests are checked with.
    pub key: Key,
    /// The relayed addresses by family.
    pub relays: [Option<RelayAddr>; 2],
    /// How long ago it was created.
    pub age: Duration,
    /// How long it has left unless refreshed.
    pub remaining: Duration,
    /// The Allocate transaction that created it.
    pub transaction_id: TransactionId,
    /// Traffic so far.
    pub traffic: Traffic,
    /// An RFC 6062 TCP relay.
    pub tcp: bool,
    /// Mobility granted.
    /// The user's bandwidth cap from the authentication webhook, if any.
    pub user_bandwidth: Option<u32>,
    pub mobile: bool,
    /// Moves so far.
    pub moves: u16,
    /// Permissions in force: the peer IP and the time left.
    pub permissions: Vec<(IpAddr, Duration)>,
    /// Channel bindings in force.
    pub channels: Vec<ChannelState>,
}

/// An allocation on the server.
///
/// `repr(C)` keeps the fields in the order written: what the relay path reads for
/// every datagram comes first, so that it sits in a few adjacent cache lines of the
/// table's entry (with 10,000 allocations the table no longer fits in a core's cache,
/// and each line the path touches elsewhere is a miss); the first permission and
/// channel are stored inline for the same reason.
#[derive(Debug)]
#[repr(C)]
pub struct Allocation {
    /// The client's 5-tuple: the allocation's identity.
    pub five_tuple: FiveTuple,
    /// The user's bandwidth cap (bytes per second) when the authentication webhook set
    /// one for them, in place of `[limits] bandwidth-per-user`.
    pub user_bandwidth: Option<u32>,
    /// Traffic counters.
    pub traffic: Traffic,
    permissions: SmallVec<[Permission; 1]>,
    channels: SmallVec<[Channel; 1]>,
    /// Bandwidth bucket, when a per-allocation cap is configured.
    pub bandwidth: Option<super::rate::Bucket>,
    /// The user as quotas and bandwidth caps count it: the username in its tenant.
    pub user: super::tenant::UserKey,
    /// The user that created it; later requests must use the same one (RFC 8656 §5).
    pub username: Box<str>,
    /// The key later requests are checked with.
    pub key: Key,
    /// The relayed addresses by [`Family`]: one, or two for a dual-stack allocation
    /// (RFC 8656 §7.2 ADDITIONAL-ADDRESS-FAMILY).
    pub relays: [Option<RelayAddr>; 2],
    /// When it was created.
    pub created: Instant,
    /// When it expires unless refreshed.
    pub expires: Instant,
    /// The Allocate transaction that created it, to answer retransmissions.
    pub transaction_id: TransactionId,
    /// Rate limit on relayed ICMP errors (RFC 8656 §11), made on the first one.
    pub icmp: Option<super::rate::Bucket>,
    /// How many times it moved to a new 5-tuple. A ticket names the count it was
    /// issued at, so one from before a move cannot move the allocation again.
    pub moves: u16,
    /// Set once a policy denial on this allocation has been logged.
    pub denial_logged: bool,
    /// An RFC 6062 TCP relay: peers connect and are connected over TCP.
    pub tcp: bool,
    /// RFC 8016: the client asked for mobility and was granted it; its answers carry
    /// a MOBILITY-TICKET.
    pub mobile: bool,
}

/// How many bytes from its start an [`Allocation`] holds what the relay path reads
/// for every datagram (with no bandwidth cap configured): what to prefetch.
pub const RELAY_PATH_BYTES: usize = std::mem::offset_of!(Allocation, bandwidth);

impl Allocation {
    /// A new allocation with no permissions or channels.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        five_tuple: FiveTuple,
        username: &str,
        key: Key,
        relays: [Option<RelayAddr>; 2],
        now: Instant,
        lifetime: Duration,
        transaction_id: TransactionId,
    ) -> Self {
        Allocation {
            five_tuple,
            username: username.into(),
            user: super::tenant::UserKey::new(five_tuple.tenant, username),
            key,
            relays,
            created: now,
            expires: now + lifetime,
            transaction_id,
            traffic: Traffic::default(),
            denial_logged: false,
            tcp: false,
            bandwidth: None,
            user_bandwidth: None,
            icmp: None,
            mobile: false,
            moves: 0,
            permissions: SmallVec::new(),
            channels: SmallVec::new(),
        }
    }

    /// Its state at `now`, for another worker (or, later, another process) to take it
    /// over with [`Allocation::import`]. Times become durations from `now`.
    pub fn export(&self, id: super::AllocationId, now: Instant) -> AllocationState {
        AllocationState {
            id,
            five_tuple: self.five_tuple,
            username: self.username.clone(),
            key: self.key,
            relays: self.relays,
            age: now.saturating_duration_since(self.created),
            remaining: self.remaining(now),
            transaction_id: self.transaction_id,
            traffic: self.traffic,
            tcp: self.tcp,
            user_bandwidth: self.user_bandwidth,
            mobile: self.mobile,
            moves: self.moves,
            permissions: self
                .permissions
                .iter()
                .filter(|p| p.expires > now)
                .map(|p| (p.ip, p.expires.saturating_duration_since(now)))
                .collect(),
            channels: self
                .channels
                .iter()
                .filter(|c| c.expires > now)
                .map(|c| ChannelState {
                    number: c.number,
                    peer: c.peer.get(),
                    remaining: c.expires.saturating_duration_since(now),
                    to_host: c.to_host,
                })
                .collect(),
        }
    }

    /// The allocation `state` describes, taken over at `now`. Bandwidth buckets start
    /// full, as after a restart of the cap.
    pub fn import(state: AllocationState, now: Instant) -> Self {
        let created = now.checked_sub(state.age).unwrap_or(now);
        Allocation {
            five_tuple: state.five_tuple,
            user: super::tenant::UserKey::new(state.five_tuple.tenant, &state.username),
            username: state.username,
            key: state.key,
            relays: state.relays,
            created,
            expires: now + state.remaining,
            transaction_id: state.transaction_id,
            traffic: state.traffic,
            denial_logged: false,
            tcp: state.tcp,
            bandwidth: None,
            user_bandwidth: state.user_bandwidth,
            icmp: None,
            mobile: state.mobile,
            moves: state.moves,
            permissions: state.permissions.iter().map(|&(ip, left)| Permission { ip, expires: now + left }).collect(),
            channels: state
                .channels
                .iter()
                .map(|c| Channel {
                    number: c.number,
                    peer: PeerAddr::new(c.peer),
                    expires: now + c.remaining,
                    to_host: c.to_host,
                })
                .collect(),
        }
    }

    /// The relay for peers of `ip`'s family, if the allocation has one.
    pub fn relay_for(&self, ip: IpAddr) -> Option<RelayAddr> {
        self.relays[Family::of(ip) as usize]
    }

    /// The relayed addresses, IPv4 first.
    pub fn relay_addrs(&self) -> impl Iterator<Item = RelayAddr> + '_ {
        self.relays.iter().flatten().copied()
    }

    /// Seconds of life left (for LIFETIME in a retransmitted response).
    pub fn remaining(&self, now: Instant) -> Duration {
        self.expires.saturating_duration_since(now)
    }

    /// Whether a permission for `ip` is in force.
    pub fn is_permitted(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions.iter().any(|p| p.ip == ip && p.expires > now)
    }

    /// Installs or refreshes the permission for `ip`; false when a new permission would
    /// exceed `max`.
    pub fn permit(&mut self, ip: IpAddr, now: Instant, max: usize) -> bool {
        let expires = now + PERMISSION_LIFETIME;
        if let Some(p) = self.permissions.iter_mut().find(|p| p.ip == ip) {
            p.expires = expires;
            return true;
        }
        self.permissions.retain(|p| p.expires > now);
        if self.permissions.len() >= max {
            return false;
        }
        self.permissions.push(Permission { ip, expires });
        true
    }

    /// Whether `count` new permissions (for IPs not yet permitted) fit under `max`.
    pub fn has_room_for_permissions(&self, new_ips: &[IpAddr], now: Instant, max: usize) -> bool {
        let live = self.permissions.iter().filter(|p| p.expires > now).count();
        let fresh = new_ips.iter().filter(|ip| !self.permissions.iter().any(|p| p.ip == **ip)).count();
        live + fresh <= max
    }

    /// The peer bound to channel `number`, if the binding is in force, and whether it
    /// is an address of this host.
    pub fn channel_peer(&self, number: u16, now: Instant) -> Option<(PeerAddr, bool)> {
        self.channels.iter().find(|c| c.number == number && c.expires > now).map(|c| (c.peer, c.to_host))
    }

    /// The channel bound to `peer`, if any binding is in force.
    pub fn channel_for(&self, peer: PeerAddr, now: Instant) -> Option<u16> {
        self.channels.iter().find(|c| c.peer == peer && c.expires > now).map(|c| c.number)
    }

    /// The channel bindings in force: number, peer, expiry and whether the peer is an
    /// address of this host (for the XDP fast path's map sync, `super::offload`).
    pub fn live_channels(&self, now: Instant) -> impl Iterator<Item = (u16, PeerAddr, Instant, bool)> + '_ {
        self.channels.iter().filter(move |c| c.expires > now).map(|c| (c.number, c.peer, c.expires, c.to_host))
    }

    /// When the permission for `ip` runs out, if one is in force.
    pub fn permission_expiry(&self, ip: IpAddr, now: Instant) -> Option<Instant> {
        self.permissions.iter().find(|p| p.ip == ip && p.expires > now).map(|p| p.expires)
    }

    /// Binds or refreshes channel `number` to `peer` (RFC 8656 §11.2 rules).
    pub fn bind_channel(
        &mut self,
        number: u16,
        peer: PeerAddr,
        to_host: bool,
        now: Instant,
        max: usize,
    ) -> Result<(), BindError> {
        self.channels.retain(|c| c.expires > now);
        let expires = now + CHANNEL_LIFETIME;
        let by_number = self.channels.iter().position(|c| c.number == number);
        let by_peer = self.channels.iter().position(|c| c.peer == peer);
        match (by_number, by_peer) {
            (Some(a), Some(b)) if a == b => {
                self.channels[a].expires = expires;
                Ok(())
            }
            (None, None) if self.channels.len() < max => {
                self.channels.push(Channel { number, peer, expires, to_host });
                Ok(())
            }
            (None, None) => Err(BindError::Quota),
            _ => Err(BindError::Conflict),
        }
    }

    /// Live permissions and channels, for gauges.
    pub fn counts(&self, now: Instant) -> (usize, usize) {
        (
            self.permissions.iter().filter(|p| p.expires > now).count(),
            self.channels.iter().filter(|c| c.expires > now).count(),
        )
    }

    /// Drops expired permissions and channels.
    pub fn prune(&mut self, now: Instant) {
        self.permissions.retain(|p| p.expires > now);
        self.channels.retain(|c| c.expires > now);
    }

    /// Rechecks every channel's peer after the host's addresses changed: `verdict`
    /// says `None` to drop it, or whether its peer is now an address of the host.
    pub fn recheck_channels(&mut self, verdict: impl Fn(SocketAddr) -> Option<bool>) {
        self.channels.retain_mut(|c| match verdict(c.peer.get()) {
            Some(to_host) => {
                c.to_host = to_host;
                true
            }
            None => false,
        });
    }

    /// Drops permissions and channels whose peers `denied` now refuses (after a policy
    /// reload); returns how many went.
    pub fn revoke(&mut self, denied: impl Fn(SocketAddr) -> bool) -> usize {
        let before = self.permissions.len() + self.channels.len();
        self.permissions.retain(|p| !denied(SocketAddr::new(p.ip, 0)));
        self.channels.retain(|c| !denied(c.peer.get()));
        before - self.permissions.len() - self.channels.len()
    }
}
