//! Relay sockets: one UDP socket per allocation, bound in the relay port range.

use crate::sys::{mmsg, sockopt};
use crate::turn::relay::IcmpError;
use crate::turn::RelayBindError;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, RawFd};

/// Datagrams taken per recvmmsg call on a relay socket, and the call itself (see
/// [`mmsg::recv_batch`]), what it reports, and how a GRO buffer splits.
pub use mmsg::{recv_batch, segments, Received, RECV_BATCH as BATCH};

/// Opens a non-blocking UDP socket bound to `local`; with `dont_fragment`, the DF bit
/// is set on everything it sends (RFC 8656 §14.8, IP_PMTUDISC_DO); with `gro`, the
/// kernel may hand over a run of datagrams from one peer as one buffer (UDP_GRO; a
/// kernel without it just never coalesces).
pub fn bind(local: SocketAddr, dont_fragment: bool, gro: bool) -> Result<Socket, (RelayBindError, io::Error)> {
    let classify = |e: io::Error| {
        let kind = if e.kind() == io::ErrorKind::AddrInUse { RelayBindError::AddrInUse } else { RelayBindError::Other };
        (kind, e)
    };
    let socket = Socket::new(Domain::for_address(local), Type::DGRAM.nonblocking().cloexec(), Some(Protocol::UDP))
        .map_err(classify)?;
    if local.is_ipv6() {
        socket.set_only_v6(true).map_err(classify)?;
    }
    socket.bind(&SockAddr::from(local)).map_err(classify)?;
    if dont_fragment {
        set_dont_fragment(&socket, local.is_ipv6()).map_err(classify)?;
    }
    set_recv_err(&socket, local.is_ipv6()).map_err(classify)?;
    if gro {
        // Best effort: before Linux 5.0 there is no UDP_GRO, and nothing is coalesced.
        let _ = set_int_option(&socket, libc::SOL_UDP, libc::UDP_GRO, 1);
    }
    Ok(socket)
}

/// Error-queue entries read per wake-up of a relay socket; the rest wait for the next
/// (epoll keeps reporting EPOLLERR while the queue holds any).
pub const ICMP_PER_WAKE: usize = 16;

/// Reads one entry of the socket's error queue (IP_RECVERR): `Ok(Some((peer, icmp)))`
/// for an ICMP error about a datagram sent to `peer`, `Ok(None)` for an entry that is
/// not one (a local error, say), and `WouldBlock` when the queue is empty. Reading
/// also clears the socket's pending error, so the next send does not fail with it.
pub fn recv_icmp(fd: RawFd) -> io::Result<Option<(SocketAddr, IcmpError)>> {
    let queued = mmsg::recv_error(fd)?;
    Ok(queued.map(|(peer, icmp)| (peer, IcmpError { v6: icmp.v6, kind: icmp.kind, code: icmp.code, info: icmp.info })))
}

/// Asks for ICMP errors about sent datagrams in the socket's error queue (IP_RECVERR
/// / IPV6_RECVERR): an unconnected UDP socket otherwise never hears of them.
fn set_recv_err(socket: &Socket, ipv6: bool) -> io::Result<()> {
    let (level, name) =
        if ipv6 { (libc::IPPROTO_IPV6, libc::IPV6_RECVERR) } else { (libc::IPPROTO_IP, libc::IP_RECVERR) };
    set_int_option(socket, level, name, 1)
}

fn set_dont_fragment(socket: &Socket, ipv6: bool) -> io::Result<()> {
    let (level, name, value) = if ipv6 {
        (libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER, libc::IPV6_PMTUDISC_DO)
    } else {
        (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, libc::IP_PMTUDISC_DO)
    };
    set_int_option(socket, level, name, value)
}

/// setsockopt with an int value (what socket2 does not offer for these options).
fn set_int_option(socket: &Socket, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    sockopt::set_int(socket.as_fd(), level, name, value)
}

/// Whether the DF bit is set on an IPv4 relay socket.
#[cfg(test)]
fn dont_fragment_is_set(socket: &Socket) -> io::Result<bool> {
    Ok(sockopt::get_int(socket.as_fd(), libc::IPPROTO_IP, libc::IP_MTU_DISCOVER)? == libc::IP_PMTUDISC_DO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc8656_14_8_dont_fragment_sets_the_df_bit() {
        let with = bind("127.0.0.1:0".parse().unwrap(), true, false).unwrap();
        assert!(dont_fragment_is_set(&with).unwrap());
        let without = bind("127.0.0.1:0".parse().unwrap(), false, false).unwrap();
        assert!(!dont_fragment_is_set(&without).unwrap());
    }

    #[test]
    fn recv_batch_takes_every_queued_datagram_in_one_call_and_leaves_headroom() {
        let relay: std::net::UdpSocket = bind("127.0.0.1:0".parse().unwrap(), false, false).unwrap().into();
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = relay.local_addr().unwrap();
        for i in 0..3u8 {
            peer.send_to(&[i; 10], to).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        let (slot_len, headroom) = (64, 8);
        let mut slots = vec![0xEEu8; slot_len * BATCH];
        let mut received = [None; BATCH];
        use std::os::fd::AsRawFd;
        let n = recv_batch(relay.as_raw_fd(), &mut slots, slot_len, headroom, &mut received).unwrap();
        assert_eq!(n, 3);
        for i in 0..3 {
            assert_eq!(received[i], Some(Received { len: 10, from: peer.local_addr().unwrap(), segment: 10 }));
            let slot = &slots[i * slot_len..(i + 1) * slot_len];
            assert_eq!(&slot[..headroom], &[0xEE; 8], "headroom left alone");
            assert_eq!(&slot[headroom..headroom + 10], &[i as u8; 10]);
        }
        let again = recv_batch(relay.as_raw_fd(), &mut slots, slot_len, headroom, &mut received);
        assert_eq!(again.unwrap_err().kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn a_datagram_larger_than_its_slot_is_not_relayed_cut() {
        let relay: std::net::UdpSocket = bind("127.0.0.1:0".parse().unwrap(), false, false).unwrap().into();
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.send_to(&[1; 100], relay.local_addr().unwrap()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut slots = vec![0u8; 64 * BATCH];
        let mut received = [None; BATCH];
        use std::os::fd::AsRawFd;
        assert_eq!(recv_batch(relay.as_raw_fd(), &mut slots, 64, 8, &mut received).unwrap(), 1);
        assert_eq!(received[0], None);
    }

    #[test]
    fn a_closed_peer_port_comes_back_as_an_icmp_port_unreachable() {
        use std::os::fd::AsRawFd;
        let relay: std::net::UdpSocket = bind("127.0.0.1:0".parse().unwrap(), false, false).unwrap().into();
        let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let peer = closed.local_addr().unwrap();
        drop(closed);
        assert_eq!(recv_icmp(relay.as_raw_fd()).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        relay.send_to(b"x", peer).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let got = recv_icmp(relay.as_raw_fd()).unwrap();
        assert_eq!(got, Some((peer, IcmpError { v6: false, kind: 3, code: 3, info: 0 })));
        assert_eq!(recv_icmp(relay.as_raw_fd()).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        // Read from the queue, the error does not fail the next send either.
        relay.send_to(b"y", peer).unwrap();
    }

    #[test]
    fn a_taken_port_reports_addr_in_use() {
        let first = bind("127.0.0.1:0".parse().unwrap(), false, false).unwrap();
        let taken = first.local_addr().unwrap().as_socket().unwrap();
        assert_eq!(bind(taken, false, false).unwrap_err().0, RelayBindError::AddrInUse);
    }
}
