//! The relay hot path: ChannelData and Send indications from clients, datagrams from
//! peers. No heap allocation, no codec: headers are read and written in place.

use super::allocation::Allocation;
use super::config::{CoreConfig, Quotas};
use super::outbox::Outbox;
use super::rate::Bucket;
use super::stats::{Direction, DropReason, Stats};
use super::table::AllocationTable;
use super::{AllocationId, FiveTuple, PeerAddr, Transport};
use crate::stun::channel_data::{self, ChannelData};
use crate::stun::raw::{self, padded, Attributes, Header, HEADER_LEN, MAGIC_COOKIE};
use std::ops::Range;
use std::time::Instant;

/// Headroom a peer datagram needs before its payload for the largest header turnd
/// writes in place: a Data indication with an IPv6 XOR-PEER-ADDRESS (20 + 24 + 4).
pub const PEER_HEADROOM: usize = HEADER_LEN + 4 + 20 + 4;
/// Room needed after the payload for padding to 4 bytes.
pub const PEER_TAILROOM: usize = 3;

/// ICMP errors relayed per second per allocation (RFC 8656 §11 asks for a limit, so
/// that a peer cannot have turnd flood a client with them), in bursts of up to
/// [`ICMP_BURST`].
pub const ICMP_PER_SECOND: f64 = 5.0;
/// See [`ICMP_PER_SECOND`].
pub const ICMP_BURST: f64 = 10.0;

/// An ICMP error that a relay socket's error queue gave back (Linux IP_RECVERR):
/// what the ICMP attribute (RFC 8656 §18.13) carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcmpError {
    /// ICMPv6 (the relay socket is IPv6) rather than ICMPv4.
    pub v6: bool,
    /// The ICMP type, as received.
    pub kind: u8,
    /// The ICMP code, as received.
    pub code: u8,
    /// The ICMP header's extra field: the next-hop MTU for "fragmentation needed"
    /// (ICMPv4 3/4) and "packet too big" (ICMPv6 2).
    pub info: u32,
}

impl IcmpError {
    /// RFC 8656 §11: only ICMPv4 types 3 (destination unreachable) and 11 (time
    /// exceeded), and ICMPv6 types 1 (destination unreachable), 2 (packet too big) and
    /// 3 (time exceeded) are relayed.
    pub fn is_relayed(&self) -> bool {
        if self.v6 {
            matches!(self.kind, 1..=3)
        } else {
            matches!(self.kind, 3 | 11)
        }
    }

    /// RFC 8656 §18.13 Error Data: the MTU for "fragmentation needed" and "packet too
    /// big", zero for everything else.
    pub fn error_data(&self) -> u32 {
        let carries_mtu = if self.v6 { self.kind == 2 } else { self.kind == 3 && self.code == 4 };
        if carries_mtu {
            self.info
        } else {
            0
        }
    }

    /// The ICMP attribute's value: Reserved (2 bytes), Type, Code, Error Data (4).
    pub fn attribute_value(&self) -> [u8; 8] {
        let mut value = [0u8; 8];
        value[2] = self.kind;
        value[3] = self.code;
        value[4..].copy_from_slice(&self.error_data().to_be_bytes());
        value
    }
}

/// A payload to send from an allocation's relay socket to a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToPeer {
    /// The allocation whose relay socket sends it.
    pub allocation: AllocationId,
    /// The destination.
    pub peer: PeerAddr,
    /// Where the payload sits in the client's packet.
    pub payload: Range<usize>,
}

/// A framed message to send to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToClient {
    /// The client 5-tuple to send on.
    pub to: FiveTuple,
    /// Where the framed message sits in the buffer.
    pub range: Range<usize>,
}

/// Charges `len` relayed bytes to the allocation's and its user's bandwidth caps;
/// false when either is exhausted. With no caps configured this is three comparisons.
/// A user the authentication webhook gave a cap of their own is held to it instead of
/// `bandwidth-per-user`.
fn within_bandwidth(
    quotas: &Quotas,
    allocation: &mut Allocation,
    users: &mut super::user_bandwidth::UserBandwidth,
    len: usize,
    now: Instant,
) -> bool {
    let bytes = len as f64;
    if quotas.bandwidth_per_allocation > 0 {
        // A burst of one second's worth.
        let rate = quotas.bandwidth_per_allocation as f64;
        let bucket = allocation.bandwidth.get_or_insert_with(|| Bucket::full(rate, now));
        if !bucket.take(bytes, rate, rate, now) {
            return false;
        }
    }
    let per_user = allocation.user_bandwidth.map_or(quotas.bandwidth_per_user, u64::from);
    if per_user > 0 && !users.take(&allocation.user, per_user, len, now) {
        return false;
    }
    true
}

impl AllocationTable {
    /// ChannelData from a client: the payload to send to the channel's peer, if the
    /// channel, the permission, the policy and the bandwidth caps allow it.
    pub(crate) fn relay_channel_data(
        &mut self,
        now: Instant,
        from: FiveTuple,
        packet: &[u8],
        config: &CoreConfig,
        stats: &mut Stats,
    ) -> Option<ToPeer> {
        let Some(frame) = ChannelData::parse_datagram(packet) else {
            stats.drop(DropReason::Malformed);
            return None;
        };
        let users = &mut self.user_bandwidth;
        let target = self.by_five_tuple.get(&from).and_then(|id| {
            let allocation = self.by_id.get_mut(id)?;
            let (peer, to_host) = allocation.channel_peer(frame.channel, now)?;
            allocation.is_permitted(peer.ip(), now).then_some((*id, peer, to_host, allocation))
        });
        let Some((allocation_id, peer, to_host, allocation)) = target else {
            stats.drop(DropReason::NoPermission);
            return None;
        };
        // A channel to another allocation's relay: that relay may have ended since.
        if to_host && config.policy_of(from.tenant).check(peer.get()).is_err() {
            stats.drop(DropReason::Policy);
            return None;
        }
        if !within_bandwidth(config.quotas_of(from.tenant), allocation, users, frame.len, now) {
            stats.drop(DropReason::RateCap);
            return None;
        }
        allocation.traffic.to_peer_packets += 1;
        allocation.traffic.to_peer_bytes += frame.len as u64;
        stats.relay(Direction::ClientToPeer, from.transport, frame.len);
        let start = channel_data::HEADER_LEN;
        Some(ToPeer { allocation: allocation_id, peer, payload: start..start + frame.len })
    }

    /// A Send indication from a client (RFC 8656 §11.1), read in place: the DATA to
    /// send to the XOR-PEER-ADDRESS, if permitted.
    pub(crate) fn relay_send_indication(
        &mut self,
        now: Instant,
        from: FiveTuple,
        packet: &[u8],
        config: &CoreConfig,
        stats: &mut Stats,
    ) -> Option<ToPeer> {
        let header = Header::parse(packet)?;
        let mut peer = None;
        let mut data = None;
        for attr in Attributes::new(packet) {
            let Ok(attr) = attr else {
                stats.drop(DropReason::Malformed);
                return None;
            };
            match attr.kind {
                raw::ATTR_XOR_PEER_ADDRESS if peer.is_none() => {
                    peer = raw::decode_xor_address(attr.value, &header.transaction_id).map(PeerAddr::new);
                }
                raw::ATTR_DATA if data.is_none() => {
                    let start = attr.offset + 4;
                    data = Some(start..start + attr.value.len());
                }
                _ => {}
            }
        }
        let (Some(peer), Some(data)) = (peer, data) else {
            stats.drop(DropReason::Malformed);
            return None;
        };
        let Some(&id) = self.by_five_tuple.get(&from) else {
            stats.drop(DropReason::NoPermission);
            return None;
        };
        let allocation = self.by_id.get_mut(&id)?;
        if !allocation.is_permitted(peer.ip(), now) {
            stats.drop(DropReason::NoPermission);
            return None;
        }
        // The permission proves the IP passed the policy; the port may still be one of
        // our own listeners.
        if config.policy_of(from.tenant).check(peer.get()).is_err() {
            stats.drop(DropReason::Policy);
            return None;
        }
        if !within_bandwidth(config.quotas_of(from.tenant), allocation, &mut self.user_bandwidth, data.len(), now) {
            stats.drop(DropReason::RateCap);
            return None;
        }
        allocation.traffic.to_peer_packets += 1;
        allocation.traffic.to_peer_bytes += data.len() as u64;
        stats.relay(Direction::ClientToPeer, from.transport, data.len());
        Some(ToPeer { allocation: id, peer, payload: data })
    }

    /// A datagram a peer sent to an allocation's relay socket (see
    /// [`crate::turn::Server::handle_peer_packet`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn relay_from_peer(
        &mut self,
        now: Instant,
        allocation: AllocationId,
        peer: PeerAddr,
        buf: &mut [u8],
        payload: Range<usize>,
        config: &CoreConfig,
        out: &mut Outbox,
    ) -> Option<ToClient> {
        let stats = &mut out.stats;
        let Some(entry) = self.by_id.get_mut(&allocation) else {
            stats.drop(DropReason::NoPermission);
            return None;
        };
        if !entry.is_permitted(peer.ip(), now) {
            stats.drop(DropReason::NoPermission);
            return None;
        }
        let len = payload.len();
        let quotas = config.quotas_of(entry.five_tuple.tenant);
        if !within_bandwidth(quotas, entry, &mut self.user_bandwidth, len, now) {
            stats.drop(DropReason::RateCap);
            return None;
        }
        let stream = entry.five_tuple.transport != Transport::Udp;
        let range = match entry.channel_for(peer, now) {
            Some(channel) => {
                let start = payload.start.checked_sub(channel_data::HEADER_LEN)?;
                let header: &mut [u8; 4] = buf.get_mut(start..payload.start)?.try_into().ok()?;
                ChannelData::write_header(channel, u16::try_from(len).ok()?, header);
                // RFC 8656 §12.5: over streams, ChannelData is padded to 4 bytes.
                let end = if stream { payload.start + padded(len) } else { payload.end };
                buf.get_mut(payload.end..end)?.fill(0);
                start..end
            }
            None => {
                let tid = out.data_indication_tid();
                write_data_indication(buf, &payload, peer.get(), &tid)?
            }
        };
        entry.traffic.to_client_packets += 1;
        entry.traffic.to_client_bytes += len as u64;
        out.stats.relay(Direction::PeerToClient, entry.five_tuple.transport, len);
        Some(ToClient { to: entry.five_tuple, range })
    }

    /// Handles an ICMP error that came back for a datagram the allocation's relay
    /// socket sent to `peer` (RFC 8656 §11): if the allocation has a permission for
    /// `peer`'s IP (the destination of the offending datagram: only the address is
    /// compared, never the port) and is within its ICMP rate, the client gets a Data
    /// indication with XOR-PEER-ADDRESS `peer` and an ICMP attribute, and no DATA, on
    /// the allocation's 5-tuple. Returns whether it was sent.
    pub(crate) fn relay_icmp(
        &mut self,
        now: Instant,
        allocation: AllocationId,
        peer: PeerAddr,
        icmp: IcmpError,
        out: &mut Outbox,
    ) -> bool {
        if !icmp.is_relayed() {
            return false;
        }
        let Some(entry) = self.by_id.get_mut(&allocation) else {
            out.stats.drop(DropReason::NoPermission);
            return false;
        };
        if !entry.is_permitted(peer.ip(), now) {
            out.stats.drop(DropReason::NoPermission);
            return false;
        }
        let bucket = entry.icmp.get_or_insert_with(|| Bucket::full(ICMP_BURST, now));
        if !bucket.take(1.0, ICMP_PER_SECOND, ICMP_BURST, now) {
            out.stats.drop(DropReason::IcmpRateLimit);
            return false;
        }
        let to = entry.five_tuple;
        let tid = out.data_indication_tid();
        let Some(bytes) = icmp_data_indication(peer.get(), &icmp, &tid) else {
            return false;
        };
        out.stats.icmp_relayed += 1;
        out.push(super::output::Output::Transmit { to, bytes });
        true
    }
}

/// A Data indication for an ICMP error (RFC 8656 §11): XOR-PEER-ADDRESS and ICMP,
/// no DATA.
pub(crate) fn icmp_data_indication(peer: std::net::SocketAddr, icmp: &IcmpError, tid: &[u8; 12]) -> Option<Vec<u8>> {
    let addr_len = if peer.is_ipv4() { 8 } else { 20 };
    let body_len = 4 + addr_len + 4 + 8;
    let mut out = vec![0u8; HEADER_LEN + body_len];
    out[0..2].copy_from_slice(&raw::TYPE_DATA_INDICATION.to_be_bytes());
    out[2..4].copy_from_slice(&(body_len as u16).to_be_bytes());
    out[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out[8..20].copy_from_slice(tid);
    out[20..22].copy_from_slice(&raw::ATTR_XOR_PEER_ADDRESS.to_be_bytes());
    out[22..24].copy_from_slice(&(addr_len as u16).to_be_bytes());
    raw::encode_xor_address(peer, tid, &mut out[24..24 + addr_len])?;
    let icmp_at = 24 + addr_len;
    out[icmp_at..icmp_at + 2].copy_from_slice(&raw::ATTR_ICMP.to_be_bytes());
    out[icmp_at + 2..icmp_at + 4].copy_from_slice(&8u16.to_be_bytes());
    out[icmp_at + 4..icmp_at + 12].copy_from_slice(&icmp.attribute_value());
    Some(out)
}

/// Writes a Data indication (RFC 8656 §11.6) around `buf[payload]` in place.
fn write_data_indication(
    buf: &mut [u8],
    payload: &Range<usize>,
    peer: std::net::SocketAddr,
    tid: &[u8; 12],
) -> Option<Range<usize>> {
    let addr_len = if peer.is_ipv4() { 8 } else { 20 };
    let len = payload.len();
    let start = payload.start.checked_sub(HEADER_LEN + 4 + addr_len + 4)?;
    let end = payload.start + padded(len);
    buf.get_mut(payload.end..end)?.fill(0);
    let head = buf.get_mut(start..payload.start)?;
    let body_len = u16::try_from(end - start - HEADER_LEN).ok()?;
    head[0..2].copy_from_slice(&raw::TYPE_DATA_INDICATION.to_be_bytes());
    head[2..4].copy_from_slice(&body_len.to_be_bytes());
    head[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    head[8..20].copy_from_slice(tid);
    head[20..22].copy_from_slice(&raw::ATTR_XOR_PEER_ADDRESS.to_be_bytes());
    head[22..24].copy_from_slice(&(addr_len as u16).to_be_bytes());
    raw::encode_xor_address(peer, tid, &mut head[24..24 + addr_len])?;
    let data = 24 + addr_len;
    head[data..data + 2].copy_from_slice(&raw::ATTR_DATA.to_be_bytes());
    head[data + 2..data + 4].copy_from_slice(&u16::try_from(len).ok()?.to_be_bytes());
    Some(start..end)
}
