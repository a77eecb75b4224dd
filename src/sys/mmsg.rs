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

/// One datagram (or, with UDP_GRO, one run of coalesced datagrams) [`recv_batch`] took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Bytes received.
    pub len: usize,
    /// The sender.
    pub from: SocketAddr,
    /// With UDP_GRO on the socket, the size of each coalesced datagram (the last may be
    /// shorter; see [`segments`]); `len` otherwise.
    pub segment: usize,
}

/// Room for one UDP_GRO control message (an int), aligned for cmsghdr.
type GroControl = [u64; 4];

/// Reads up to [`RECV_BATCH`] datagrams with one recvmmsg call. Datagram `i` lands in
/// slot `i` (`slots` cut in `slot_len` pieces) at offset `headroom`, so its ChannelData
/// or Data indication header can be written in front of it in place; `received[i]`
/// gets its length, sender and GRO segment size, or `None` for one that cannot be
/// relayed (truncated, or from an address family we do not know). Returns how many
/// slots were filled. A short batch means the socket is drained: the caller need not
/// ask again (the epoll set is level-triggered), which saves the EAGAIN call that a
/// read-until-empty loop makes on every wake-up.
pub fn recv_batch(
    fd: RawFd,
    slots: &mut [u8],
    slot_len: usize,
    headroom: usize,
    received: &mut [Option<Received>; RECV_BATCH],
) -> io::Result<usize> {
    let mut addrs = [sockaddr::zeroed(); RECV_BATCH];
    let mut iovecs = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; RECV_BATCH];
    let mut controls: [GroControl; RECV_BATCH] = [[0; 4]; RECV_BATCH];
    // SAFETY: all-zero is a valid mmsghdr (a plain C struct: null pointers, zero
    // lengths, and on some libcs private padding, which is why it is not built).
    let mut headers: [libc::mmsghdr; RECV_BATCH] = unsafe { std::mem::zeroed() };
    let mut count = 0;
    for ((slot, ((iovec, header), addr)), control) in slots
        .chunks_exact_mut(slot_len)
        .zip(iovecs.iter_mut().zip(headers.iter_mut()).zip(addrs.iter_mut()))
        .zip(controls.iter_mut())
    {
        let Some(area) = slot.get_mut(headroom..) else {
            break;
        };
        *iovec = libc::iovec { iov_base: area.as_mut_ptr().cast(), iov_len: area.len() };
        header.msg_hdr.msg_iov = iovec;
        header.msg_hdr.msg_iovlen = 1;
        header.msg_hdr.msg_name = (addr as *mut libc::sockaddr_storage).cast();
        header.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        header.msg_hdr.msg_control = control.as_mut_ptr().cast();
        header.msg_hdr.msg_controllen = std::mem::size_of::<GroControl>() as _;
        count += 1;
    }
    // SAFETY: the first `count` headers point at iovecs (each at a part of `slots`
    // of the length it says), address storage and control buffers, all of which live,
    // and are not otherwise borrowed, until the call returns; the kernel writes within
    // them.
    let n = unsafe { libc::recvmmsg(fd, headers.as_mut_ptr(), count as libc::c_uint, 0, std::ptr::null_mut()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = (n as usize).min(count);
    for ((entry, header), addr) in received.iter_mut().zip(&headers).zip(&addrs).take(n) {
        let from = sockaddr::from_storage(addr, header.msg_hdr.msg_namelen);
        let truncated = header.msg_hdr.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0;
        let len = header.msg_len as usize;
        let segment = gro_segment(&header.msg_hdr).unwrap_or(len);
        *entry = from.filter(|_| !truncated).map(|from| Received { len, from, segment });
    }
    Ok(n)
}

/// The UDP_GRO segment size the kernel reported for a received message, if any.
fn gro_segment(msg: &libc::msghdr) -> Option<usize> {
    let mut found = None;
    // SAFETY: msg_control/msg_controllen describe the control buffer as the kernel
    // filled it; CMSG_FIRSTHDR/CMSG_NXTHDR stay within it, and the data of a UDP_GRO
    // message at least an int long is read unaligned.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            let c = &*cmsg;
            let long_enough = c.cmsg_len as usize >= libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as usize;
            if c.cmsg_level == libc::SOL_UDP && c.cmsg_type == libc::UDP_GRO && long_enough {
                let size = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
                found = usize::try_from(size).ok().filter(|&s| s > 0);
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    found
}

/// The datagrams of a received buffer of `len` bytes coalesced by GRO into `segment`
/// bytes each (the last may be shorter), as ranges of it. Both numbers come from the
/// kernel and are checked anyway: a zero or oversized segment gives the whole buffer
/// as one datagram, and no range leaves `0..len`.
pub fn segments(len: usize, segment: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let step = if segment == 0 || segment > len { len.max(1) } else { segment };
    (0..len).step_by(step).map(move |start| start..(start + step).min(len))
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

/// Most datagrams one UDP_SEGMENT send carries: the kernel's UDP_MAX_SEGMENTS (64 on
/// the kernels that introduced GSO; later ones allow more, none fewer).
pub const GSO_MAX_SEGMENTS: usize = 64;
/// Most payload bytes one UDP_SEGMENT send carries: the whole goes down the stack as one
/// IPv4 datagram, whose length field (65,535, headers included) bounds it.
pub const GSO_MAX_BYTES: usize = 65_507;
/// Largest datagram sent as a GSO segment. The kernel refuses (EINVAL) a segment that
/// does not fit the device MTU, and a refusal turns GSO off for the socket: segments
/// that fit a 1,500-byte Ethernet MTU under IPv6 never meet it on an ordinary path,
/// and larger datagrams (which fragment anyway) go out one by one.
pub const GSO_MAX_SEGMENT: usize = 1452;

/// A run of datagrams being gathered into one UDP_SEGMENT (GSO) send: the same
/// destination and source, every one `segment` bytes but the last, which may be
/// shorter and then ends the run. The decision alone, without I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GsoRun {
    to: SocketAddr,
    from: Option<IpAddr>,
    /// The size of the first datagram, which every other but a shorter last must match.
    segment: usize,
    count: usize,
    bytes: usize,
    /// A shorter datagram joined: nothing may follow it.
    closed: bool,
}

impl GsoRun {
    /// A run that starts with a datagram of `len` bytes.
    pub fn start(to: SocketAddr, from: Option<IpAddr>, len: usize) -> Self {
        let closed = len == 0 || len > GSO_MAX_SEGMENT;
        GsoRun { to, from, segment: len, count: 1, bytes: len, closed }
    }

    /// Adds a datagram of `len` bytes to `to` from `from` if it can go out in the same
    /// send; false leaves the run unchanged (the datagram starts another).
    pub fn admit(&mut self, to: SocketAddr, from: Option<IpAddr>, len: usize) -> bool {
        let fits = !self.closed
            && to == self.to
            && from == self.from
            && len > 0
            && len <= self.segment
            && self.count < GSO_MAX_SEGMENTS
            && self.bytes + len <= GSO_MAX_BYTES;
        if fits {
            self.count += 1;
            self.bytes += len;
            self.closed = len < self.segment;
        }
        fits
    }

    /// Datagrams in the run.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The segment size to ask for, when the run is worth a GSO send (two or more).
    pub fn segment(&self) -> Option<u16> {
        if self.count > 1 {
            u16::try_from(self.segment).ok()
        } else {
            None
        }
    }
}

/// What [`send_batch`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    /// Datagrams that could not be sent.
    pub failed: usize,
    /// The kernel refused a GSO send (EIO: no checksum offload on the way out; EINVAL:
    /// a segment past the MTU); its datagrams were sent again one by one. The caller
    /// should stop asking for GSO on this socket.
    pub gso_refused: bool,
}

/// Room for an IP_PKTINFO or IPV6_PKTINFO control message and a UDP_SEGMENT one,
/// aligned for cmsghdr.
type Control = [u64; 8];

// CMSG_SPACE only computes a size; the control buffer fits both messages.
const _: () = {
    const V6: u32 = std::mem::size_of::<libc::in6_pktinfo>() as u32;
    const SEGMENT: u32 = std::mem::size_of::<u16>() as u32;
    // SAFETY: CMSG_SPACE is arithmetic on its argument; it reads no memory.
    assert!(unsafe { libc::CMSG_SPACE(V6) + libc::CMSG_SPACE(SEGMENT) } as usize <= std::mem::size_of::<Control>());
};

/// Sends `datagrams` (the first [`SEND_BATCH`]) on `socket` with sendmmsg, without
/// blocking. With `gso`, each run of datagrams that [`GsoRun`] admits goes out as one
/// message with UDP_SEGMENT: the kernel walks its stack once for the run and cuts it
/// into datagrams at the device (or at the receiving socket on a veth), each datagram
/// its own iovec, so nothing is copied. `failed` counts datagrams, not messages: the
/// rest of the batch once the socket buffer is full, and each one the kernel refuses
/// (an unreachable destination, say), as a full buffer would drop them.
pub fn send_batch<'a>(socket: RawFd, datagrams: impl IntoIterator<Item = Datagram<'a>>, gso: bool) -> Sent {
    // Left uninitialized: zeroing 16 kB of arrays on every call cost more than the
    // batching saved for small batches. Element `i < count` is written before use.
    let mut headers = [const { MaybeUninit::<libc::mmsghdr>::uninit() }; SEND_BATCH];
    let mut iovecs = [const { MaybeUninit::<libc::iovec>::uninit() }; SEND_BATCH];
    let mut names = [const { MaybeUninit::<libc::sockaddr_storage>::uninit() }; SEND_BATCH];
    let mut controls = [const { MaybeUninit::<Control>::uninit() }; SEND_BATCH];
    // Per message: its first iovec and its run (destination, source, count, segment).
    let mut runs = [const { MaybeUninit::<(usize, GsoRun)>::uninit() }; SEND_BATCH];
    let mut messages = 0;
    let mut open: Option<(usize, GsoRun)> = None;
    for (index, datagram) in datagrams.into_iter().take(SEND_BATCH).enumerate() {
        let Some(iovec) = iovecs.get_mut(index) else {
            break;
        };
        let bytes = datagram.bytes;
        // sendmmsg only reads through iov_base; the cast to *mut is the C signature's.
        iovec.write(libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() });
        let joined = match open.as_mut() {
            Some((_, run)) => gso && run.admit(datagram.to, datagram.from, bytes.len()),
            None => false,
        };
        if !joined {
            if let Some((first, run)) = open.take() {
                if let Some(slot) = runs.get_mut(messages) {
                    slot.write((first, run));
                    messages += 1;
                }
            }
            open = Some((index, GsoRun::start(datagram.to, datagram.from, bytes.len())));
        }
    }
    if let Some((first, run)) = open.take() {
        if let Some(slot) = runs.get_mut(messages) {
            slot.write((first, run));
            messages += 1;
        }
    }
    for i in 0..messages {
        // SAFETY: runs[..messages] were written above.
        let (first, run) = unsafe { runs.get_unchecked(i).assume_init() };
        let (Some(name), Some(control), Some(header)) = (names.get_mut(i), controls.get_mut(i), headers.get_mut(i))
        else {
            break;
        };
        // SAFETY: all-zero is a valid mmsghdr (null pointers, zero lengths).
        let mut message: libc::mmsghdr = unsafe { std::mem::zeroed() };
        let msg = &mut message.msg_hdr;
        // The run's iovecs are consecutive: first..first + count, all written above.
        msg.msg_iov = iovecs.as_mut_ptr().wrapping_add(first).cast();
        msg.msg_iovlen = run.count() as _;
        msg.msg_namelen = sockaddr::to_storage(run.to, name);
        msg.msg_name = name.as_mut_ptr().cast();
        write_control(msg, control.write([0; 8]), run.from, run.segment());
        header.write(message);
    }
    let mut outcome = Sent::default();
    let mut sent = 0;
    // The message that already failed once, sent again (see below).
    let mut again = None;
    while sent < messages {
        // SAFETY: headers[..messages] were written above and point at iovecs, payloads
        // (borrowed for 'a), names and control buffers (written too) that outlive the
        // call; `sent < messages`, so the pointer stays within the array; the kernel
        // only reads them.
        let n = unsafe {
            let first = headers.as_mut_ptr().cast::<libc::mmsghdr>().add(sent);
            libc::sendmmsg(socket, first, (messages - sent) as libc::c_uint, libc::MSG_DONTWAIT)
        };
        if n > 0 {
            sent += n as usize;
            continue;
        }
        let error = io::Error::last_os_error();
        // SAFETY: runs[..messages] were written above and `sent < messages`.
        let (_, run) = unsafe { runs.get_unchecked(sent).assume_init() };
        match error.raw_os_error() {
            Some(libc::EINTR) => continue,
            // The socket buffer is full: the rest would meet the same fate now.
            Some(libc::EAGAIN) => {
                for i in sent..messages {
                    // SAFETY: as above, i < messages.
                    outcome.failed += unsafe { runs.get_unchecked(i).assume_init() }.1.count();
                }
                break;
            }
            Some(libc::EIO | libc::EINVAL) if run.segment().is_some() => {
                debug!(error = %error, "GSO send refused: sending the run one datagram at a time");
                outcome.gso_refused = true;
                // SAFETY: headers[sent] was written above, as were its iovecs, name
                // and control, which outlive the call.
                let header = unsafe { &mut *headers.as_mut_ptr().cast::<libc::mmsghdr>().add(sent) };
                outcome.failed += send_one_by_one(socket, &mut header.msg_hdr, run);
                sent += 1;
            }
            // An ICMP error that an earlier datagram brought back (relay sockets ask for
            // them, IP_RECVERR) waits on the socket, and the next send fails with it and
            // clears it, whatever that send's destination: that message goes again once.
            _ if again != Some(sent) => again = Some(sent),
            // This message cannot be sent (unreachable destination, say); the others may.
            _ => {
                debug!(error = %error, "send to client failed");
                outcome.failed += run.count();
                sent += 1;
            }
        }
    }
    outcome
}

/// Sends the datagrams of a refused GSO message one by one (its iovecs, in turn, with
/// the same destination and source and no UDP_SEGMENT); returns how many failed.
fn send_one_by_one(socket: RawFd, msg: &mut libc::msghdr, run: GsoRun) -> usize {
    let first = msg.msg_iov;
    let mut control = [0u64; 8];
    write_control(msg, &mut control, run.from, None);
    msg.msg_iovlen = 1;
    let mut failed = 0;
    for i in 0..run.count() {
        msg.msg_iov = first.wrapping_add(i);
        // Sent once more after a failure: the error may have been an earlier
        // datagram's ICMP error (see `send_batch`).
        // SAFETY: msg points at the run's i-th iovec (i < count, written by the
        // caller), its name, and `control`, all live for the call; the kernel reads them.
        let send = || unsafe { libc::sendmsg(socket, msg, libc::MSG_DONTWAIT) };
        if send() < 0 && send() < 0 {
            failed += 1;
        }
    }
    failed
}

/// Writes `msg`'s control messages into `control`: the source address to send from (a
/// wildcard listener answers from the address the client wrote to) and the GSO segment
/// size, each when set.
fn write_control(msg: &mut libc::msghdr, control: &mut Control, from: Option<IpAddr>, segment: Option<u16>) {
    let base = control.as_mut_ptr().cast::<u8>();
    let mut used = 0usize;
    // SAFETY: each cmsghdr is written at `base + used`, 8-aligned (CMSG_SPACE keeps
    // alignment, base is a u64 array), and the assertion on `Control` shows both
    // messages fit; CMSG_DATA points within the message, written unaligned.
    unsafe {
        if let Some(from) = from {
            let cmsg = base.add(used).cast::<libc::cmsghdr>();
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
                    used += libc::CMSG_SPACE(LEN) as usize;
                }
                IpAddr::V6(ip) => {
                    const LEN: u32 = std::mem::size_of::<libc::in6_pktinfo>() as u32;
                    (*cmsg).cmsg_level = libc::IPPROTO_IPV6;
                    (*cmsg).cmsg_type = libc::IPV6_PKTINFO;
                    (*cmsg).cmsg_len = libc::CMSG_LEN(LEN) as _;
                    let info =
                        libc::in6_pktinfo { ipi6_addr: libc::in6_addr { s6_addr: ip.octets() }, ipi6_ifindex: 0 };
                    std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::in6_pktinfo>(), info);
                    used += libc::CMSG_SPACE(LEN) as usize;
                }
            }
        }
        if let Some(segment) = segment {
            const LEN: u32 = std::mem::size_of::<u16>() as u32;
            let cmsg = base.add(used).cast::<libc::cmsghdr>();
            (*cmsg).cmsg_level = libc::SOL_UDP;
            (*cmsg).cmsg_type = libc::UDP_SEGMENT;
            (*cmsg).cmsg_len = libc::CMSG_LEN(LEN) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment);
            used += libc::CMSG_SPACE(LEN) as usize;
        }
    }
    if used == 0 {
        msg.msg_control = std::ptr::null_mut();
        msg.msg_controllen = 0;
    } else {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = used as _;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::{AsFd, AsRawFd};
    use std::time::Duration;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_gso_run_takes_same_sized_datagrams_to_one_destination_and_a_shorter_last() {
        let (a, b) = (addr("192.0.2.1:1000"), addr("192.0.2.2:1000"));
        let mut run = GsoRun::start(a, None, 100);
        assert_eq!(run.segment(), None, "one datagram is a plain send");
        assert!(run.admit(a, None, 100));
        assert!(!run.admit(b, None, 100), "another destination");
        assert!(!run.admit(a, Some("192.0.2.9".parse().unwrap()), 100), "another source");
        assert!(!run.admit(a, None, 101), "a longer datagram");
        assert!(!run.admit(a, None, 0), "an empty datagram");
        assert!(run.admit(a, None, 60), "a shorter last");
        assert!(!run.admit(a, None, 60), "nothing after a shorter one");
        assert_eq!((run.count(), run.segment()), (3, Some(100)));
    }

    #[test]
    fn a_gso_run_stops_at_the_segment_and_byte_limits_and_skips_large_datagrams() {
        let a = addr("192.0.2.1:1000");
        let mut run = GsoRun::start(a, None, 10);
        while run.admit(a, None, 10) {}
        assert_eq!(run.count(), GSO_MAX_SEGMENTS);
        let mut run = GsoRun::start(a, None, GSO_MAX_SEGMENT);
        while run.admit(a, None, GSO_MAX_SEGMENT) {}
        assert!(run.count() * GSO_MAX_SEGMENT <= GSO_MAX_BYTES);
        assert!((run.count() + 1) * GSO_MAX_SEGMENT > GSO_MAX_BYTES);
        let mut big = GsoRun::start(a, None, GSO_MAX_SEGMENT + 1);
        assert!(!big.admit(a, None, GSO_MAX_SEGMENT + 1), "past the MTU-safe size: one by one");
    }

    #[test]
    fn segments_split_a_gro_buffer_and_never_leave_it() {
        let cut = |len, segment| segments(len, segment).collect::<Vec<_>>();
        assert_eq!(cut(10, 4), vec![0..4, 4..8, 8..10]);
        assert_eq!(cut(8, 4), vec![0..4, 4..8]);
        assert_eq!(cut(10, 10), vec![0..10]);
        assert_eq!(cut(10, 0), vec![0..10], "a zero segment size from the kernel");
        assert_eq!(cut(10, 99), vec![0..10], "a segment size past the length");
        assert_eq!(cut(0, 4), Vec::<std::ops::Range<usize>>::new());
        for len in 0..50 {
            for segment in 0..60 {
                let parts = cut(len, segment);
                assert_eq!(parts.iter().map(|r| r.len()).sum::<usize>(), len);
                assert!(parts.iter().all(|r| r.end <= len && !r.is_empty()));
            }
        }
    }

    fn receiver(gro: bool) -> UdpSocket {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        if gro {
            crate::sys::sockopt::set_int(socket.as_fd(), libc::SOL_UDP, libc::UDP_GRO, 1).unwrap();
        }
        socket
    }

    /// The payloads a test sends: `n` datagrams of `size` bytes, then one of `last`.
    fn payloads(n: usize, size: usize, last: usize) -> Vec<Vec<u8>> {
        let mut all: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8; size]).collect();
        all.push(vec![0xAA; last]);
        all
    }

    #[test]
    fn a_gso_batch_arrives_as_the_datagrams_it_was_made_of() {
        let (sender, to) = (UdpSocket::bind("127.0.0.1:0").unwrap(), receiver(false));
        let dest = to.local_addr().unwrap();
        let sent = payloads(20, 300, 120);
        let datagrams = sent.iter().map(|bytes| Datagram { to: dest, from: None, bytes });
        assert_eq!(send_batch(sender.as_raw_fd(), datagrams, true), Sent::default());
        let mut buf = [0u8; 2048];
        for want in &sent {
            let n = to.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], &want[..]);
        }
    }

    #[test]
    fn recv_batch_reports_a_gro_run_and_its_segment_size() {
        let (sender, to) = (UdpSocket::bind("127.0.0.1:0").unwrap(), receiver(true));
        let dest = to.local_addr().unwrap();
        let sent = payloads(9, 200, 50);
        let datagrams = sent.iter().map(|bytes| Datagram { to: dest, from: None, bytes });
        assert_eq!(send_batch(sender.as_raw_fd(), datagrams, true).failed, 0);
        std::thread::sleep(Duration::from_millis(50));
        let (slot_len, headroom) = (65536 + 16, 16);
        let mut slots = vec![0u8; slot_len * RECV_BATCH];
        let mut received = [None; RECV_BATCH];
        let n = recv_batch(to.as_raw_fd(), &mut slots, slot_len, headroom, &mut received).unwrap();
        // Loopback hands the GSO message to a GRO socket whole.
        assert_eq!(n, 1);
        let got = received[0].unwrap();
        assert_eq!((got.len, got.segment, got.from), (9 * 200 + 50, 200, sender.local_addr().unwrap()));
        let data = &slots[headroom..headroom + got.len];
        let split: Vec<&[u8]> = segments(got.len, got.segment).map(|r| &data[r]).collect();
        assert_eq!(split, sent.iter().map(Vec::as_slice).collect::<Vec<_>>());
    }

    #[test]
    fn a_gso_run_from_a_wildcard_socket_leaves_from_the_address_it_is_told() {
        let sender = UdpSocket::bind("0.0.0.0:0").unwrap();
        let port = sender.local_addr().unwrap().port();
        let to = receiver(false);
        let dest = to.local_addr().unwrap();
        let from = Some("127.0.0.1".parse().unwrap());
        let sent = payloads(5, 100, 100);
        let datagrams = sent.iter().map(|bytes| Datagram { to: dest, from, bytes });
        assert_eq!(send_batch(sender.as_raw_fd(), datagrams, true), Sent::default());
        let mut buf = [0u8; 256];
        for want in &sent {
            let (n, source) = to.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..n], source), (&want[..], addr(&format!("127.0.0.1:{port}"))));
        }
    }

    #[test]
    fn without_gso_every_datagram_is_its_own_message() {
        let (sender, to) = (UdpSocket::bind("127.0.0.1:0").unwrap(), receiver(true));
        let dest = to.local_addr().unwrap();
        let sent = payloads(3, 200, 200);
        let datagrams = sent.iter().map(|bytes| Datagram { to: dest, from: None, bytes });
        assert_eq!(send_batch(sender.as_raw_fd(), datagrams, false).failed, 0);
        std::thread::sleep(Duration::from_millis(50));
        let mut slots = vec![0u8; 4096 * RECV_BATCH];
        let mut received = [None; RECV_BATCH];
        let n = recv_batch(to.as_raw_fd(), &mut slots, 4096, 0, &mut received).unwrap();
        assert_eq!(n, 4);
        assert!(received.iter().take(n).all(|r| r.is_some_and(|r| r.segment == r.len && r.len == 200)));
    }

    #[test]
    fn an_icmp_error_an_earlier_datagram_brought_back_costs_no_other_datagram() {
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        // As relay sockets are: ICMP errors are reported (and left pending on the socket).
        crate::sys::sockopt::set_int(sender.as_fd(), libc::IPPROTO_IP, libc::IP_RECVERR, 1).unwrap();
        let closed = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let to = UdpSocket::bind("127.0.0.1:0").unwrap();
        to.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let dest = to.local_addr().unwrap();
        for gso in [false, true] {
            let stray = [Datagram { to: closed, from: None, bytes: b"stray" }];
            assert_eq!(send_batch(sender.as_raw_fd(), stray, gso).failed, 0);
            // Until the port unreachable is back: the socket reports an error.
            let mut poll = libc::pollfd { fd: sender.as_raw_fd(), events: 0, revents: 0 };
            // SAFETY: one valid pollfd, for the call.
            assert_eq!(unsafe { libc::poll(&mut poll, 1, 2000) }, 1);
            assert_ne!(poll.revents & libc::POLLERR, 0);
            // Two of a size: with GSO, one message.
            let payloads = [vec![1u8; 10], vec![2u8; 10]];
            let datagrams = payloads.iter().map(|bytes| Datagram { to: dest, from: None, bytes });
            assert_eq!(send_batch(sender.as_raw_fd(), datagrams, gso).failed, 0, "gso {gso}");
            for payload in &payloads {
                let mut buf = [0u8; 64];
                let n = to.recv(&mut buf).unwrap();
                assert_eq!(&buf[..n], &payload[..], "gso {gso}");
            }
        }
    }
}
