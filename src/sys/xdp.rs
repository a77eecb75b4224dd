//! The XDP program's map entries as Rust sees them (ebpf/turnd_xdp.c has the same
//! structs), and the clock its expiries are written in. Addresses and ports are kept
//! as their network-order bytes, exactly as in a packet, so no field depends on the
//! host's byte order.

use std::net::SocketAddrV4;

/// `struct in_key`: a channel as a client's ChannelData names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub struct InKey {
    /// The client's address.
    pub client_ip: [u8; 4],
    /// The listener's address.
    pub server_ip: [u8; 4],
    /// The client's port.
    pub client_port: [u8; 2],
    /// The listener's port.
    pub server_port: [u8; 2],
    /// The channel number.
    pub channel: [u8; 2],
    /// Zero (the C struct's padding, part of the hashed key).
    pub pad: [u8; 2],
}

/// `struct in_val`: where a channel's ChannelData goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct InVal {
    /// The peer's address.
    pub peer_ip: [u8; 4],
    /// The relay socket's address.
    pub relay_ip: [u8; 4],
    /// The peer's port.
    pub peer_port: [u8; 2],
    /// The relay socket's port.
    pub relay_port: [u8; 2],
    /// Zero.
    pub pad: [u8; 4],
    /// CLOCK_MONOTONIC nanoseconds after which the entry is not used.
    pub expires_ns: u64,
}

/// `struct out_key`: a peer's datagram to a relay address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub struct OutKey {
    /// The peer's address.
    pub peer_ip: [u8; 4],
    /// The relay socket's address.
    pub relay_ip: [u8; 4],
    /// The peer's port.
    pub peer_port: [u8; 2],
    /// The relay socket's port.
    pub relay_port: [u8; 2],
}

/// `struct out_val`: the channel a peer's datagrams go to the client on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct OutVal {
    /// The channel, keyed as the client side.
    pub client: InKey,
    /// As [`InVal::expires_ns`].
    pub expires_ns: u64,
}

/// `struct counters`: one CPU's share of one channel's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Counters {
    /// ChannelData datagrams relayed to the peer.
    pub to_peer_packets: u64,
    /// Their data bytes.
    pub to_peer_bytes: u64,
    /// Peer datagrams relayed to the client.
    pub to_client_packets: u64,
    /// Their payload bytes.
    pub to_client_bytes: u64,
}

// SAFETY: each is repr(C), made of byte arrays and u64s laid out with no implicit
// padding (the C side's padding is an explicit field), so every bit pattern is a valid
// value and the kernel can copy them byte for byte.
unsafe impl aya::Pod for InKey {}
// SAFETY: as above.
unsafe impl aya::Pod for InVal {}
// SAFETY: as above.
unsafe impl aya::Pod for OutKey {}
// SAFETY: as above.
unsafe impl aya::Pod for OutVal {}
// SAFETY: as above.
unsafe impl aya::Pod for Counters {}

/// An address's network-order bytes.
pub fn split(addr: SocketAddrV4) -> ([u8; 4], [u8; 2]) {
    (addr.ip().octets(), addr.port().to_be_bytes())
}

/// CLOCK_MONOTONIC now, in nanoseconds: the clock of the program's
/// `bpf_ktime_get_ns`, and of `std::time::Instant` on Linux.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_structs_have_the_c_sizes() {
        assert_eq!(
            [std::mem::size_of::<InKey>(), std::mem::size_of::<InVal>(), std::mem::size_of::<OutKey>()],
            [16, 24, 12]
        );
        assert_eq!([std::mem::size_of::<OutVal>(), std::mem::size_of::<Counters>()], [24, 32]);
    }
}
