//! Batched datagram I/O on UDP sockets: recvmmsg into caller-laid-out slots, sendmmsg
//! with a per-datagram source address (IP_PKTINFO), and the socket error queue
//! (IP_RECVERR), none of which std, `socket2` or `quinn-udp` offer in this shape.

use super::sockaddr;
use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use tracing::debug;

/// Datagrams taken per [`recv_batch`] call.
pub const RECV_BATCH: usize = 8;
/// Datagrams sent per [`send_batch`] call at most.
pub const SEND_BATCH: usize = 64;

/// Reads up to [`RECV_BATCH`] datagrams with one recvmmsg call. Datagram `i` lands in
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
    received: &mut [Option<(usize, SocketAddr)>; RECV_BATCH],
) -> io::Result<usize> {
    let mut addrs = [sockaddr::zeroed(); RECV_BATCH];
    let mut iovecs = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; RECV_BATCH];
    // SAFETY: all-zero is a valid mmsghdr (a plain C struct: null pointers, zero
    // lengths, and on some libcs private padding, which is why it is not built).
    let mut headers: [libc::mmsghdr; RECV_BATCH] = unsafe { std::mem::zeroed() };
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
    // SAFETY: the first `count` headers point at iovecs (each at a part of `slots`
    // of the length it says) and address storage, all of which live, and are not
    // otherwise borrowed, until the call returns; the kernel writes within them.
    let n = unsafe { libc::recvmmsg(fd, headers.as_mut_ptr(), count as libc::c_uint, 0, std::ptr::null_mut()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = (n as usize).min(count);
    for ((entry, header), addr) in received.iter_mut().zip(&headers).zip(&addrs).take(n) {
        let from = sockaddr::from_storage(addr, header.msg_hdr.msg_namelen);
        let truncated = header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        *entry = from.filter(|_| !truncated).map(|from| (header.msg_len as usize, from));
    }
    Ok(n)
}

/// An ICMP error from a socket's error queue (a `sock_extended_err` of ICMP origin).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueuedIcmp {
    /// ICMPv6 rather than ICMPv4.
    pub v6: bool,
    /// The ICMP type.
    pub kind: u8,
    /// The ICMP code.
    pub code: u8,
    /// The ICMP header's extra field (a next-hop MTU, say).
    pub info: u32,
}

/// Reads one entry of the socket's error queue (IP_RECVERR): `Ok(Some((peer, icmp)))`
/// for an ICMP error about a datagram sent to `peer`, `Ok(None)` for an entry that is
/// not one (a local error, say), and `WouldBlock` when the queue is empty. Reading
/// also clears the socket's pending error, so the next send does not fail with it.
pub fn recv_error(fd: RawFd) -> io::Result<Option<(SocketAddr, QueuedIcmp)>> {
    let mut name = sockaddr::zeroed();
    // The offending datagram comes back too; its first bytes are enough (MSG_TRUNC).
    let mut data = [0u8; 8];
    let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: data.len() };
    // u64s for cmsghdr alignment; room for a sock_extended_err and its offender address.
    let mut control = [0u64; 32];
    // SAFETY: all-zero is a valid msghdr (a plain C struct: null pointers, zero
    // lengths, and on some libcs private padding, which is why it is not built).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
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
    let Some(peer) = sockaddr::from_storage(&name, msg.msg_namelen) else {
        return Ok(None);
    };
    let mut found = None;
    // SAFETY: msg.msg_control/msg_controllen describe `control` as the kernel filled
    // it; CMSG_FIRSTHDR/CMSG_NXTHDR stay within it, and CMSG_DATA of an IP_RECVERR or
    // IPV6_RECVERR message at least that long holds a sock_extended_err (read
    // unaligned, as control data need not be aligned for it).
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
                    found = Some(QueuedIcmp { v6, kind: err.ee_type, code: err.ee_code, info: err.ee_info });
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(found.map(|icmp| (peer, icmp)))
}

/// One datagram for [`send_batch`].
#[derive(Debug, Clone, Copy)]
pub struct Datagram<'a> {
    /// The destination.
    pub to: SocketAddr,
    /// The source address to send from, for a wildcard socket (IP_PKTINFO).
    pub from: Option<IpAddr>,
    /// The payload.
    pub bytes: &'a [u8],
}

/// Room for one IP_PKTINFO or IPV6_PKTINFO control message, aligned for cmsghdr.
type Control = [u64; 6];

// CMSG_SPACE only computes a size; the control buffer fits either message.
const _: () = {
    const V4: u32 = std::mem::size_of::<libc::in_pktinfo>() as u32;
    const V6: u32 = std::mem::size_of::<libc::in6_pktinfo>() as u32;
    // SAFETY: CMSG_SPACE is arithmetic on its argument; it reads no memory.
    assert!(unsafe { libc::CMSG_SPACE(V4) } as usize <= std::mem::size_of::<Control>());
    // SAFETY: as above.
    assert!(unsafe { libc::CMSG_SPACE(V6) } as usize <= std::mem::size_of::<Control>());
};

/// Sends `datagrams` (the first [`SEND_BATCH`]) on `socket` with sendmmsg, without
/// blocking. Returns how many could not be sent: the rest of the batch once the
/// socket buffer is full, and each one the kernel refuses (an unreachable
/// destination, say), as a full buffer would drop them.
pub fn send_batch<'a>(socket: RawFd, datagrams: impl IntoIterator<Item = Datagram<'a>>) -> usize {
    // Left uninitialized: zeroing 16 kB of arrays on every call cost more than the
    // batching saved for small batches. Element `i < count` is written before use.
    let mut headers = [const { MaybeUninit::<libc::mmsghdr>::uninit() }; SEND_BATCH];
    let mut iovecs = [const { MaybeUninit::<libc::iovec>::uninit() }; SEND_BATCH];
    let mut names = [const { MaybeUninit::<libc::sockaddr_storage>::uninit() }; SEND_BATCH];
    let mut controls = [const { MaybeUninit::<Control>::uninit() }; SEND_BATCH];
    let mut count = 0;
    for datagram in datagrams.into_iter().take(SEND_BATCH) {
        let (Some(iovec), Some(name), Some(control), Some(header)) =
            (iovecs.get_mut(count), names.get_mut(count), controls.get_mut(count), headers.get_mut(count))
        else {
            break;
        };
        let bytes = datagram.bytes;
        // sendmmsg only reads through iov_base; the cast to *mut is the C signature's.
        let iovec = iovec.write(libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() });
        // SAFETY: all-zero is a valid mmsghdr (null pointers, zero lengths).
        let mut message: libc::mmsghdr = unsafe { std::mem::zeroed() };
        let msg = &mut message.msg_hdr;
        msg.msg_iov = iovec;
        msg.msg_iovlen = 1;
        msg.msg_namelen = sockaddr::to_storage(datagram.to, name);
        msg.msg_name = name.as_mut_ptr().cast();
        if let Some(from) = datagram.from {
            set_source(msg, control.write([0; 6]), from);
        }
        header.write(message);
        count += 1;
    }
    let mut failed = 0;
    let mut sent = 0;
    while sent < count {
        // SAFETY: headers[..count] were written above and point at iovecs, payloads
        // (borrowed for 'a), names and control buffers (written too) that outlive the
        // call; `sent < count`, so the pointer stays within the array; the kernel
        // only reads them.
        let n = unsafe {
            let first = headers.as_mut_ptr().cast::<libc::mmsghdr>().add(sent);
            libc::sendmmsg(socket, first, (count - sent) as libc::c_uint, libc::MSG_DONTWAIT)
        };
        if n > 0 {
            sent += n as usize;
            continue;
        }
        let error = io::Error::last_os_error();
        match error.kind() {
            io::ErrorKind::Interrupted => continue,
            // The socket buffer is full: the rest would meet the same fate now.
            io::ErrorKind::WouldBlock => {
                failed += count - sent;
                break;
            }
            // This datagram cannot be sent (unreachable destination, say); the others may.
            _ => {
                debug!(error = %error, "send to client failed");
                failed += 1;
                sent += 1;
            }
        }
    }
    failed
}

/// Asks for `from` as the source address (a wildcard listener answers from the
/// address the client wrote to).
fn set_source(msg: &mut libc::msghdr, control: &mut Control, from: IpAddr) {
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of::<Control>() as _;
    // SAFETY: msg_control points at `control`, large and aligned enough for one
    // cmsghdr with an in_pktinfo or in6_pktinfo (the assertions above); CMSG_FIRSTHDR
    // returns a pointer into it or null, and CMSG_DATA a pointer within it past the
    // header, written unaligned.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(msg);
        if cmsg.is_null() {
            msg.msg_control = std::ptr::null_mut();
            msg.msg_controllen = 0;
            return;
        }
        match from {
            IpAddr::V4(ip) => {
                const LEN: u32 = std::mem::size_of::<libc::in_pktinfo>() as u32;
                (*cmsg).cmsg_level = libc::IPPROTO_IP;
                (*cmsg).cmsg_type = libc::IP_PKTINFO;
                (*cmsg).cmsg_len = libc::CMSG_LEN(LEN) as _;
                let info = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr { s_addr: u32::from(ip).to_be() },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::in_pktinfo>(), info);
                msg.msg_controllen = libc::CMSG_SPACE(LEN) as _;
            }
            IpAddr::V6(ip) => {
                const LEN: u32 = std::mem::size_of::<libc::in6_pktinfo>() as u32;
                (*cmsg).cmsg_level = libc::IPPROTO_IPV6;
                (*cmsg).cmsg_type = libc::IPV6_PKTINFO;
                (*cmsg).cmsg_len = libc::CMSG_LEN(LEN) as _;
                let info = libc::in6_pktinfo { ipi6_addr: libc::in6_addr { s6_addr: ip.octets() }, ipi6_ifindex: 0 };
                std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::in6_pktinfo>(), info);
                msg.msg_controllen = libc::CMSG_SPACE(LEN) as _;
            }
        }
    }
}
