//! What the XDP fast path may relay without the core, and the map operations that
//! keep the kernel's maps equal to it. Pure: the core's allocations in, operations
//! out; the shell (`net::xdp`) applies them. The core stays the source of truth: a
//! channel is offloaded only while every check the socket path makes would pass
//! without the core, so what the fast path relays is exactly what the socket path
//! would have.

use super::allocation::Allocation;
use super::config::CoreConfig;
use super::{AllocationId, Transport};
use std::collections::BTreeMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::Instant;

/// A channel as the fast path looks it up from the client side (RFC 8656 §12: the
/// client 5-tuple and the channel number name the binding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OffloadKey {
    /// The client's address.
    pub client: SocketAddrV4,
    /// The listener address the client sends to.
    pub server: SocketAddrV4,
    /// The channel number.
    pub channel: u16,
}

/// Where an offloaded channel relays to, and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffloadTarget {
    /// The peer bound to the channel.
    pub peer: SocketAddrV4,
    /// The relay socket's bound address (what peers send to).
    pub relay: SocketAddrV4,
    /// The allocation it belongs to, whose counters the fast path's traffic joins.
    pub allocation: AllocationId,
    /// The earliest of the channel's, the permission's and the allocation's expiry:
    /// the fast path stops relaying at this instant even before the entry goes.
    pub expires: Instant,
}

/// One map operation for the shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapOp {
    /// Insert the entry, or update its target.
    Upsert(OffloadKey, OffloadTarget),
    /// Remove the entry that had this target (the peer side of the map is keyed by it).
    Remove(OffloadKey, OffloadTarget),
}

/// Whether an allocation's channels may leave the core: UDP over IPv4 on both sides,
/// with no bandwidth cap (a cap is a per-packet decision the fast path does not make;
/// capped users keep the socket path).
fn eligible(allocation: &Allocation, config: &CoreConfig) -> bool {
    let quotas = config.quotas_of(allocation.five_tuple.tenant);
    let capped = quotas.bandwidth_per_allocation > 0
        || allocation.user_bandwidth.map_or(quotas.bandwidth_per_user, u64::from) > 0;
    allocation.five_tuple.transport == Transport::Udp && !allocation.tcp && !capped
}

fn v4(addr: SocketAddr) -> Option<SocketAddrV4> {
    match addr {
        SocketAddr::V4(a) => Some(a),
        SocketAddr::V6(_) => None,
    }
}

/// Appends to `out` every channel the fast path may relay at `now`. A channel to an
/// address of this host is left out: the socket path rechecks the policy for each of
/// its packets (the other relay may have ended).
pub fn offloadable<'a>(
    allocations: impl Iterator<Item = (AllocationId, &'a Allocation)>,
    config: &CoreConfig,
    now: Instant,
    out: &mut Vec<(OffloadKey, OffloadTarget)>,
) {
    for (id, allocation) in allocations {
        if allocation.expires <= now || !eligible(allocation, config) {
            continue;
        }
        let (Some(client), Some(server)) = (v4(allocation.five_tuple.client.get()), v4(allocation.five_tuple.server))
        else {
            continue;
        };
        for (channel, peer, channel_expires, to_host) in allocation.live_channels(now) {
            let (Some(peer_v4), Some(relay)) = (v4(peer.get()), allocation.relay_for(peer.ip())) else {
                continue;
            };
            let (Some(relay), Some(permission)) = (v4(relay.bound), allocation.permission_expiry(peer.ip(), now))
            else {
                continue;
            };
            if to_host {
                continue;
            }
            let expires = channel_expires.min(permission).min(allocation.expires);
            out.push((
                OffloadKey { client, server, channel },
                OffloadTarget { peer: peer_v4, relay, allocation: id, expires },
            ));
        }
    }
}

/// What one worker has put in the kernel's maps, so that each sync sends only the
/// difference. Bounded by the worker's channels, which the quotas bound.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MapModel {
    entries: BTreeMap<OffloadKey, OffloadTarget>,
}

impl MapModel {
    /// The entries, as the maps should now hold them.
    pub fn entries(&self) -> &BTreeMap<OffloadKey, OffloadTarget> {
        &self.entries
    }

    /// Makes the model equal to `wanted` (as [`offloadable`] lists it), appending to
    /// `ops` what the maps need: removals first, so that a peer address moving from
    /// one channel to another is never in the peer side twice.
    pub fn sync(&mut self, wanted: &[(OffloadKey, OffloadTarget)], ops: &mut Vec<MapOp>) {
        let wanted: BTreeMap<OffloadKey, OffloadTarget> = wanted.iter().copied().collect();
        self.entries.retain(|key, target| {
            let keep = wanted.get(key).is_some_and(|w| w.peer == target.peer && w.relay == target.relay);
            if !keep {
                ops.push(MapOp::Remove(*key, *target));
            }
            keep
        });
        for (key, target) in wanted {
            if self.entries.get(&key) != Some(&target) {
                ops.push(MapOp::Upsert(key, target));
                self.entries.insert(key, target);
            }
        }
    }

    /// Forgets everything, appending the removals (the shell is turning the fast path
    /// off, or handing the allocations to another process).
    pub fn clear(&mut self, ops: &mut Vec<MapOp>) {
        for (key, target) in std::mem::take(&mut self.entries) {
            ops.push(MapOp::Remove(key, target));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::time::Duration;

    fn key(n: u8, channel: u16) -> OffloadKey {
        OffloadKey {
            client: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, n), 5000),
            server: SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, 1), 3478),
            channel,
        }
    }

    fn target(peer: u8, at: Instant) -> OffloadTarget {
        OffloadTarget {
            peer: SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, peer), 7000),
            relay: SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, 1), 50000),
            allocation: AllocationId(1),
            expires: at,
        }
    }

    #[test]
    fn a_rebound_channel_is_removed_before_it_is_inserted() {
        let t = Instant::now();
        let mut model = MapModel::default();
        let mut ops = Vec::new();
        model.sync(&[(key(1, 0x4000), target(1, t))], &mut ops);
        assert_eq!(ops, vec![MapOp::Upsert(key(1, 0x4000), target(1, t))]);
        ops.clear();
        model.sync(&[(key(1, 0x4000), target(2, t))], &mut ops);
        assert_eq!(ops, vec![MapOp::Remove(key(1, 0x4000), target(1, t)), MapOp::Upsert(key(1, 0x4000), target(2, t))]);
    }

    #[test]
    fn a_refresh_updates_in_place_and_nothing_new_sends_nothing() {
        let t = Instant::now();
        let later = t + Duration::from_secs(60);
        let mut model = MapModel::default();
        let mut ops = Vec::new();
        model.sync(&[(key(1, 0x4000), target(1, t))], &mut ops);
        ops.clear();
        model.sync(&[(key(1, 0x4000), target(1, later))], &mut ops);
        assert_eq!(ops, vec![MapOp::Upsert(key(1, 0x4000), target(1, later))]);
        ops.clear();
        model.sync(&[(key(1, 0x4000), target(1, later))], &mut ops);
        assert!(ops.is_empty());
    }
}
