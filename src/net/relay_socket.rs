//! Relay sockets: one UDP socket per allocation, bound in the relay port range.

use crate::turn::relay::IcmpError;
use crate::turn::RelayBindError;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

/// Datagrams taken per recvmmsg call on a relay socket.
pub const BATCH: usize = 8;

/// Opens a non-blocking UDP socket bound to `local`; with `dont_fragment`, the DF bit
/// is set on everything it sends (RFC 8656 §14.8, IP_PMTUDISC_DO).
pub fn bind(local: SocketAddr, dont_fragment: bool) -> Result<Socket, (RelayBindError, io::Error)> {
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
    Ok(socket)
}

/// Reads up to [`BATCH`] datagrams with one recvmmsg call. Datagram `i` lands in
/// slot `i` (`slots` cut in `slot_len` pieces) at offset `headroom`, so its ChannelData
/// or Data indication header can be written in front of it in place; `received[i]`
/// gets its length and sender, or `None` for one that cannot be relayed (truncated,
/// or from an address family we do not know). Returns how many slots were filled. A
/// short batch means the socket is drained: the caller need not ask again (the epoll
/// set is level-triggered), which saves the EAGAIN call that a read-until-empty loop
/// makes on every wake-up.
pub fn recv_batch(
    fd: RawFd,
    slots: &mut [u8],
    slot_len: usize,
    headroom: usize,
    received: &mut [Option<(usize, SocketAddr)>; BATCH],
) -> io::Result<usize> {
    // SAFETY: all-zero is a valid value of these plain C structs.
    let mut addrs: [libc::sockaddr_storage; BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above (null pointers, zero lengths).
    let mut iovecs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    let mut count = 0;
    for (slot, ((iovec, header), addr)) in
        slots.chunks_exact_mut(slot_len).zip(iovecs.iter_mut().zip(headers.iter_mut()).zip(addrs.iter_mut()))
    {
        let Some(area) = slot.get_mut(headroom..) else {
            break;
        };
        *iovec = libc::iovec { iov_base: area.as_mut_ptr().cast(), iov_len: area.len() };
        header.msg_hdr.msg_iov = iovec;
        header.msg_hdr.msg_iovlen = 1;
        header.msg_hdr.msg_name = (addr as *mut libc::sockaddr_storage).cast();
        header.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        count += 1;
    }
    // SAFETY: the first `count` headers point at iovecs, buffers and address storage
    // that live, and are not otherwise borrowed, until the call returns.
    let n = unsafe { libc::recvmmsg(fd, headers.as_mut_ptr(), count as libc::c_uint, 0, std::ptr::null_mut()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = (n as usize).min(count);
    for ((entry, header), addr) in received.iter_mut().zip(&headers).zip(&addrs).take(n) {
        let from = super::sockaddr::from_storage(addr, header.msg_hdr.msg_namelen);
        let truncated = header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        *entry = from.filter(|_| !truncated).map(|from| (header.msg_len as usize, from));
    }
    Ok(n)
}

/// Error-queue entries read per wake-up of a relay socket; the rest wait for the next
/// (epoll keeps reporting EPOLLERR while the queue holds any).
pub const ICMP_PER_WAKE: usize = 16;

/// Reads one entry of the socket's error queue (IP_RECVERR): `Ok(Some((peer, icmp)))`
/// for an ICMP error about a datagram sent to `peer`, `Ok(None)` for an entry that is
/// not one (a local error, say), and `WouldBlock` when the queue is empty. Reading
/// also clears the socket's pending error, so the next send does not fail with it.
pub fn recv_icmp(fd: RawFd) -> io::Result<Option<(SocketAddr, IcmpError)>> {
    // SAFETY: all-zero is a valid sockaddr_storage and msghdr (null pointers).
    let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // The offending datagram comes back too; its first bytes are enough (MSG_TRUNC).
    let mut data = [0u8; 8];
    let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: data.len() };
    // u64s for cmsghdr alignment; room for a sock_extended_err and its offender address.
    let mut control = [0u64; 32];
    msg.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: msg points at name, iov (at data) and control, all live and unborrowed
    // until the call returns; the kernel writes within the lengths given.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let Some(peer) = super::sockaddr::from_storage(&name, msg.msg_namelen) else {
        return Ok(None);
    };
    let mut found = None;
    // SAFETY: msg.msg_control/msg_controllen describe `control` as the kernel filled
    // it; CMSG_FIRSTHDR/CMSG_NXTHDR stay within it, and CMSG_DATA of an IP_RECVERR or
    // IPV6_RECVERR message holds a sock_extended_err (read unaligned to be safe).
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let c = &*cmsg;
            let recverr = (c.cmsg_level == libc::SOL_IP && c.cmsg_type == libc::IP_RECVERR)
                || (c.cmsg_level == libc::SOL_IPV6 && c.cmsg_type == libc::IPV6_RECVERR);
            let len = c.cmsg_len as usize;
            if recverr && len >= libc::CMSG_LEN(std::mem::size_of::<libc::sock_extended_err>() as u32) as usize {
                let err = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::sock_extended_err>());
                let v6 = match err.ee_origin {
                    libc::SO_EE_ORIGIN_ICMP => Some(false),
                    libc::SO_EE_ORIGIN_ICMP6 => Some(true),
                    _ => None,
                };
                if let Some(v6) = v6 {
                    found = Some(IcmpError { v6, kind: err.ee_type, code: err.ee_code, info: err.ee_info });
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(found.map(|icmp| (peer, icmp)))
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
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a valid c_int.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether the DF bit is set on an IPv4 relay socket.
#[cfg(test)]
fn dont_fragment_is_set(socket: &Socket) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value == libc::IP_PMTUDISC_DO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc8656_14_8_dont_fragment_sets_the_df_bit() {
        let with = bind("127.0.0.1:0".parse().unwrap(), true).unwrap();
        assert!(dont_fragment_is_set(&with).unwrap());
        let without = bind("127.0.0.1:0".parse().unwrap(), false).unwrap();
        assert!(!dont_fragment_is_set(&without).unwrap());
    }

    #[test]
    fn recv_batch_takes_every_queued_datagram_in_one_call_and_leaves_headroom() {
        let relay: std::net::UdpSocket = bind("127.0.0.1:0".parse().unwrap(), false).unwrap().into();
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
            assert_eq!(received[i], Some((10, peer.local_addr().unwrap())));
            let slot = &slots[i * slot_len..(i + 1) * slot_len];
            assert_eq!(&slot[..headroom], &[0xEE; 8], "headroom left alone");
            assert_eq!(&slot[headroom..headroom + 10], &[i as u8; 10]);
        }
        let again = recv_batch(relay.as_raw_fd(), &mut slots, slot_len, headroom, &mut received);
        assert_eq!(again.unwrap_err().kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn a_datagram_larger_than_its_slot_is_not_relayed_cut() {
        let relay: std::net::UdpSocket = bind("127.0.0.1:0".parse().unwrap(), false).unwrap().into();
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
        let relay: std::net::UdpSocket = bind("127.0.0.1:0".parse().unwrap(), false).unwrap().into();
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
        let first = bind("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let taken = first.local_addr().unwrap().as_socket().unwrap();
        assert_eq!(bind(taken, false).unwrap_err().0, RelayBindError::AddrInUse);
    }
}
