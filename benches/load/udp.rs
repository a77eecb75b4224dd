//! Batched UDP over IPv4 for the load generator and the raw forwarder: `recvmmsg` and
//! `sendmmsg` with per-datagram source addresses (IP_PKTINFO).
//!
//! One client socket bound to `0.0.0.0:port` stands in for thousands of clients: each
//! datagram names its source address in 127.0.0.0/8 through an `in_pktinfo` control
//! message, and the server's answers to any of those addresses come back to the same
//! socket. The generator then batches across clients, so it is not the bottleneck, and
//! needs one file descriptor instead of one per allocation.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use turnd::sys::mmsg::{self, Datagram};

/// Bytes reserved per datagram in a batch: enough for the 1000-byte payloads plus any
/// TURN framing, well under the loopback MTU.
pub const SLOT: usize = 2048;
/// Socket buffer size asked for (the kernel caps it at net.core.{r,w}mem_max).
const SOCKET_BUFFER: usize = 4 << 20;
/// Room for one `in_pktinfo` control message (CMSG_SPACE(12) on 64-bit Linux is 32).
const CMSG_WORDS: usize = 4;

/// A `sockaddr_in` for `addr`.
pub fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*addr.ip()).to_be() },
        sin_zero: [0; 8],
    }
}

/// The address in a `sockaddr_in`.
pub fn from_sockaddr(raw: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(u32::from_be(raw.sin_addr.s_addr)), u16::from_be(raw.sin_port))
}

/// A non-blocking UDP socket bound to `addr` with large buffers.
pub fn bind(addr: SocketAddrV4) -> io::Result<UdpSocket> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    // Best effort: a smaller buffer only means earlier drops, which the bench counts.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&socket2::SockAddr::from(addr))?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// The local IPv4 address of a socket.
pub fn local_v4(socket: &UdpSocket) -> io::Result<SocketAddrV4> {
    match socket.local_addr()? {
        std::net::SocketAddr::V4(a) => Ok(a),
        std::net::SocketAddr::V6(_) => Err(io::Error::other("expected an IPv4 socket")),
    }
}

/// Waits until one of `fds` is readable or `timeout_ms` passes.
pub fn wait_readable(fds: &[RawFd], timeout_ms: i32) {
    let mut polls: Vec<libc::pollfd> =
        fds.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }).collect();
    // SAFETY: `polls` is a valid array of `polls.len()` pollfd structs.
    unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, timeout_ms) };
}

/// Datagrams gathered for one `sendmmsg` call.
pub struct SendBatch {
    data: Vec<u8>,
    lens: Vec<usize>,
    dst: Vec<libc::sockaddr_in>,
    src: Vec<Option<Ipv4Addr>>,
    cap: usize,
    /// Datagrams the kernel refused (counted, then dropped).
    pub errors: u64,
}

impl SendBatch {
    /// A batch of at most `cap` datagrams.
    pub fn new(cap: usize) -> Self {
        SendBatch {
            data: vec![0; cap * SLOT],
            lens: Vec::with_capacity(cap),
            dst: Vec::with_capacity(cap),
            src: Vec::with_capacity(cap),
            cap,
            errors: 0,
        }
    }

    /// Whether another datagram fits.
    pub fn is_full(&self) -> bool {
        self.lens.len() == self.cap
    }

    /// Adds a datagram to `dst`, sent from `src` when given; `write` fills the slot and
    /// returns the length. The caller flushes first when the batch is full.
    pub fn push(&mut self, dst: SocketAddrV4, src: Option<Ipv4Addr>, write: impl FnOnce(&mut [u8]) -> usize) {
        debug_assert!(!self.is_full());
        let i = self.lens.len();
        let len = write(&mut self.data[i * SLOT..(i + 1) * SLOT]);
        self.lens.push(len.min(SLOT));
        self.dst.push(sockaddr(dst));
        self.src.push(src);
    }

    /// Sends everything gathered on `socket`; returns how many datagrams left.
    pub fn flush(&mut self, socket: RawFd) -> usize {
        let n = self.lens.len();
        if n == 0 {
            return 0;
        }
        if GENERATOR_GSO.load(Ordering::Relaxed) {
            return self.flush_gso(socket);
        }
        // SAFETY: all-zero is a valid iovec (a null pointer, a zero length).
        let mut iov: Vec<libc::iovec> = vec![unsafe { zeroed() }; n];
        let mut cmsg = vec![[0u64; CMSG_WORDS]; n];
        // SAFETY: all-zero is a valid mmsghdr (a plain C struct: null pointers, zero lengths).
        let mut hdrs: Vec<libc::mmsghdr> = vec![unsafe { zeroed() }; n];
        for i in 0..n {
            iov[i] = libc::iovec { iov_base: self.data[i * SLOT..].as_mut_ptr().cast(), iov_len: self.lens[i] };
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = (&mut self.dst[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut iov[i];
            h.msg_iovlen = 1;
            if let Some(src) = self.src[i] {
                write_pktinfo(h, &mut cmsg[i], src);
            }
        }
        let mut sent = 0;
        let mut retries = 0;
        while sent < n {
            // SAFETY: every header points into buffers that live until this call returns.
            let rc = unsafe { libc::sendmmsg(socket, hdrs[sent..].as_mut_ptr(), (n - sent) as libc::c_uint, 0) };
            if rc > 0 {
                sent += rc as usize;
                continue;
            }
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock && retries < 100 {
                // The send buffer is full: let it drain briefly (bounded) rather than drop.
                retries += 1;
                let mut p = libc::pollfd { fd: socket, events: libc::POLLOUT, revents: 0 };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut p, 1, 1) };
                continue;
            }
            if err.kind() != io::ErrorKind::Interrupted {
                // The first remaining datagram failed (e.g. ECONNREFUSED from an ICMP
                // error): skip it.
                self.errors += 1;
                sent += 1;
            }
        }
        self.lens.clear();
        self.dst.clear();
        self.src.clear();
        n
    }
}

/// `--generator-gso`: the generator (clients and echo peer, not the forwarder) sends
/// runs of same-sized datagrams to one destination from one source as one UDP_SEGMENT
/// message, as a QUIC stack does; a veth pair carries each as one packet, which a
/// server's GRO socket takes whole.
static GENERATOR_GSO: AtomicBool = AtomicBool::new(false);

/// Turns [`GENERATOR_GSO`] on.
pub fn generator_gso() {
    GENERATOR_GSO.store(true, Ordering::Relaxed);
}

impl SendBatch {
    /// [`SendBatch::flush`] with GSO, through turnd's own batching (`sys::mmsg`).
    fn flush_gso(&mut self, socket: RawFd) -> usize {
        let n = self.lens.len();
        let datagrams: Vec<Datagram<'_>> = (0..n)
            .map(|i| Datagram {
                to: SocketAddr::V4(from_sockaddr(&self.dst[i])),
                from: self.src[i].map(IpAddr::V4),
                bytes: &self.data[i * SLOT..i * SLOT + self.lens[i]],
            })
            .collect();
        for chunk in datagrams.chunks(mmsg::SEND_BATCH) {
            self.errors += mmsg::send_batch(socket, chunk.iter().copied(), true).failed as u64;
        }
        self.lens.clear();
        self.dst.clear();
        self.src.clear();
        n
    }
}

/// Fills `h`'s control buffer with an IP_PKTINFO message naming `src` as the source.
fn write_pktinfo(h: &mut libc::msghdr, buf: &mut [u64; CMSG_WORDS], src: Ipv4Addr) {
    h.msg_control = buf.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is a pure computation.
    h.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) } as usize;
    // SAFETY: msg_control points at `CMSG_WORDS * 8` zeroed bytes, at least CMSG_SPACE
    // of one in_pktinfo, so the first header and its data are in bounds.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(h);
        (*c).cmsg_level = libc::IPPROTO_IP;
        (*c).cmsg_type = libc::IP_PKTINFO;
        (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as usize;
        let info = libc::in_pktinfo {
            ipi_ifindex: 0,
            ipi_spec_dst: libc::in_addr { s_addr: u32::from(src).to_be() },
            ipi_addr: libc::in_addr { s_addr: 0 },
        };
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::in_pktinfo>(), info);
    }
}

/// Buffers for one `recvmmsg` call; each datagram lands `headroom` bytes into its slot
/// so a header can be written in front of it in place (the forwarder does).
pub struct RecvBatch {
    data: Vec<u8>,
    lens: Vec<usize>,
    src: Vec<libc::sockaddr_in>,
    headroom: usize,
    cap: usize,
}

impl RecvBatch {
    /// Room for `cap` datagrams with `headroom` bytes before each.
    pub fn new(cap: usize, headroom: usize) -> Self {
        // SAFETY: all-zero is a valid sockaddr_in.
        RecvBatch { data: vec![0; cap * SLOT], lens: vec![0; cap], src: vec![unsafe { zeroed() }; cap], headroom, cap }
    }

    /// Receives up to the batch size without blocking; 0 when nothing is queued.
    pub fn recv(&mut self, socket: RawFd) -> usize {
        self.recv_at_most(socket, self.cap)
    }

    /// Receives up to `max` datagrams without blocking.
    pub fn recv_at_most(&mut self, socket: RawFd, max: usize) -> usize {
        let n = max.min(self.cap);
        // SAFETY: as in `SendBatch::flush`.
        let mut iov: Vec<libc::iovec> = vec![unsafe { zeroed() }; n];
        // SAFETY: all-zero is a valid mmsghdr (a plain C struct: null pointers, zero lengths).
        let mut hdrs: Vec<libc::mmsghdr> = vec![unsafe { zeroed() }; n];
        for i in 0..n {
            let start = i * SLOT + self.headroom;
            iov[i] = libc::iovec { iov_base: self.data[start..].as_mut_ptr().cast(), iov_len: SLOT - self.headroom };
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = (&mut self.src[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut iov[i];
            h.msg_iovlen = 1;
        }
        // SAFETY: the headers point into buffers owned by `self` and the locals above.
        let rc = unsafe {
            libc::recvmmsg(socket, hdrs.as_mut_ptr(), n as libc::c_uint, libc::MSG_DONTWAIT, std::ptr::null_mut())
        };
        if rc <= 0 {
            return 0;
        }
        let rc = rc as usize;
        for (len, h) in self.lens.iter_mut().zip(&hdrs).take(rc) {
            *len = h.msg_len as usize;
        }
        rc
    }

    /// Datagram `i` of the last receive and its source.
    pub fn get(&self, i: usize) -> (&[u8], SocketAddrV4) {
        let start = i * SLOT + self.headroom;
        (&self.data[start..start + self.lens[i]], from_sockaddr(&self.src[i]))
    }

    /// Datagram `i`'s whole slot (headroom included), its length and source.
    pub fn slot_mut(&mut self, i: usize) -> (&mut [u8], usize, SocketAddrV4) {
        let src = from_sockaddr(&self.src[i]);
        (&mut self.data[i * SLOT..(i + 1) * SLOT], self.lens[i], src)
    }

    /// Sends the first `n` datagrams of the last receive back to where they came from
    /// (the UDP echo peer).
    pub fn echo(&mut self, socket: RawFd, n: usize) -> u64 {
        let mut batch = SendBatch::new(0);
        // Reuse this batch's buffers: swap them into a SendBatch view.
        batch.cap = n;
        std::mem::swap(&mut batch.data, &mut self.data);
        batch.lens.extend_from_slice(&self.lens[..n]);
        batch.dst.extend_from_slice(&self.src[..n]);
        batch.src.resize(n, None);
        debug_assert_eq!(self.headroom, 0, "echo expects datagrams at the start of their slots");
        batch.flush(socket);
        std::mem::swap(&mut batch.data, &mut self.data);
        batch.errors
    }
}

/// Open files the servers inherit: 10,000 allocations cost coturn two descriptors each.
const WANTED_FILES: libc::rlim_t = 65536;

/// Raises the open-files limit the servers inherit: to [`WANTED_FILES`] where allowed
/// (root), else the soft limit to the hard one.
pub fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        let mut lim: libc::rlimit = zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_cur >= WANTED_FILES {
            return;
        }
        let raised = libc::rlimit { rlim_cur: WANTED_FILES, rlim_max: lim.rlim_max.max(WANTED_FILES) };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The raw descriptor of a socket (shorthand).
pub fn fd(socket: &UdpSocket) -> RawFd {
    socket.as_raw_fd()
}
