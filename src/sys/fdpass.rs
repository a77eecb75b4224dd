//! Passing descriptors between two turnd processes for a live upgrade: a
//! SOCK_SEQPACKET socket pair (one message per send, so a control message and the
//! descriptors that ride with it never merge with the next), `sendmsg`/`recvmsg` with
//! SCM_RIGHTS, and a sealed memfd holding the handover state (in memory only: the
//! state carries keys, and nothing of it may reach a disk).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;

/// Descriptors sent in one message at most (the kernel's SCM_MAX_FD is 253).
pub const FDS_PER_MESSAGE: usize = 250;
/// The largest control message payload read.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// A connected SOCK_SEQPACKET pair, both ends close-on-exec. `UnixDatagram` is used as
/// the owning type only: every send and receive goes through [`send`] and [`recv`].
pub fn seqpacket_pair() -> io::Result<(UnixDatagram, UnixDatagram)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: socketpair writes two descriptors into `fds`, a live local array of two.
    let rc = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created by socketpair and are owned by nobody
    // else; each is wrapped exactly once.
    Ok(unsafe { (UnixDatagram::from_raw_fd(fds[0]), UnixDatagram::from_raw_fd(fds[1])) })
}

/// Clears close-on-exec on `fd`, so a child started next inherits it.
pub fn inherit_on_exec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl with F_GETFD/F_SETFD takes and returns plain integers.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Takes ownership of an inherited descriptor `fd` (named in the environment by the
/// process that started this one) and sets close-on-exec on it again; fails unless it
/// is an open socket.
pub fn adopt_inherited_socket(fd: RawFd) -> io::Result<UnixDatagram> {
    let mut kind: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `kind`, a live local int.
    let rc = unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_TYPE, (&mut kind as *mut libc::c_int).cast(), &mut len)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if kind != libc::SOCK_SEQPACKET {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "the inherited descriptor is not a SOCK_SEQPACKET"));
    }
    // SAFETY: the descriptor is open (getsockopt succeeded) and was handed to this
    // process for it alone; it is wrapped once.
    let socket = unsafe { UnixDatagram::from_raw_fd(fd) };
    // SAFETY: as in `inherit_on_exec`: plain integers.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
        }
    }
    Ok(socket)
}

/// Sends one message: `payload` with `fds` (at most [`FDS_PER_MESSAGE`]) attached.
/// The descriptors stay open here: the receiver gets duplicates.
pub fn send(socket: &UnixDatagram, payload: &[u8], fds: &[RawFd]) -> io::Result<()> {
    if fds.len() > FDS_PER_MESSAGE {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many descriptors for one message"));
    }
    let fd_bytes = std::mem::size_of_val(fds) as u32;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes) } as usize;
    // u64 elements keep the buffer aligned for cmsghdr.
    let mut control = vec![0u64; space.div_ceil(8).max(1)];
    let mut iov = libc::iovec { iov_base: payload.as_ptr() as *mut libc::c_void, iov_len: payload.len() };
    // SAFETY: all-zero is a valid msghdr (null pointers, zero lengths).
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    if !fds.is_empty() {
        header.msg_control = control.as_mut_ptr().cast();
        header.msg_controllen = space as _;
        // SAFETY: msg_control points at `control`, at least CMSG_SPACE(fd_bytes) bytes
        // and aligned, so CMSG_FIRSTHDR is non-null and the header and CMSG_DATA's
        // `fds.len()` descriptors fit inside it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&header);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg).cast::<RawFd>(), fds.len());
        }
    }
    // SAFETY: `header` points at `iov` (reading `payload`) and `control`, all alive for
    // the call; sendmsg only reads them.
    let sent = unsafe { libc::sendmsg(socket.as_raw_fd(), &header, libc::MSG_NOSIGNAL) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    if sent as usize != payload.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "message cut short"));
    }
    Ok(())
}

/// Receives one message (blocking, within the socket's read timeout): its payload and
/// the descriptors attached, each owned by the caller. An empty payload with no
/// descriptors is the other end closing.
pub fn recv(socket: &UnixDatagram) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut payload = vec![0u8; MAX_MESSAGE];
    let fd_bytes = (FDS_PER_MESSAGE * std::mem::size_of::<RawFd>()) as u32;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec { iov_base: payload.as_mut_ptr().cast(), iov_len: payload.len() };
    // SAFETY: all-zero is a valid msghdr.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    header.msg_control = control.as_mut_ptr().cast();
    header.msg_controllen = space as _;
    // SAFETY: `header` points at `iov` (writing into `payload`) and `control`, both
    // alive and of the lengths given; MSG_CMSG_CLOEXEC marks received descriptors.
    let received = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut header, libc::MSG_CMSG_CLOEXEC) };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: recvmsg filled `control` and set msg_controllen to what it wrote; the
    // CMSG_* walk stays within it. Each SCM_RIGHTS descriptor is new in this process
    // and owned by nobody else, so wrapping it once is sound.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&header);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&header, cmsg);
        }
    }
    if header.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "message or descriptors cut short"));
    }
    payload.truncate(received as usize);
    Ok((payload, fds))
}

/// A memfd holding `bytes`, sealed against any change (the reader checks the seals).
pub fn sealed_memfd(name: &str, bytes: &[u8]) -> io::Result<OwnedFd> {
    let name = std::ffi::CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: memfd_create reads the NUL-terminated `name`, alive for the call.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nobody else owns.
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.write_all(bytes)?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl F_ADD_SEALS takes plain integers.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file.into())
}

/// Reads a sealed memfd's contents (at most `limit` bytes); refuses one that can still
/// change under the reader.
pub fn read_sealed_memfd(fd: OwnedFd, limit: u64) -> io::Result<Vec<u8>> {
    // SAFETY: fcntl F_GET_SEALS takes plain integers.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    let needed = libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
    if seals < 0 || seals & needed != needed {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "the state descriptor is not a sealed memfd"));
    }
    let mut file = File::from(fd);
    let len = file.seek(SeekFrom::End(0))?;
    if len > limit {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("the state is {len} bytes, over {limit}")));
    }
    file.seek(SeekFrom::Start(0))?;
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(limit).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The descriptors systemd passed this process (`LISTEN_PID`, `LISTEN_FDS`,
/// `LISTEN_FDNAMES`, from descriptor 3 on), each with its name, owned and
/// close-on-exec; the variables are removed so that no child sees them. Empty when
/// they are not for this process.
pub fn listen_fds_with_names() -> Vec<(String, OwnedFd)> {
    let for_us = std::env::var("LISTEN_PID").ok().and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
    let count = std::env::var("LISTEN_FDS").ok().and_then(|n| n.parse::<i32>().ok()).unwrap_or(0);
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    for variable in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(variable);
    }
    if !for_us || !(1..=65_536).contains(&count) {
        return Vec::new();
    }
    let mut names = names.split(':');
    (0..count)
        .filter_map(|i| {
            let fd = 3 + i;
            let name = names.next().unwrap_or("unknown").to_owned();
            // SAFETY: fcntl takes plain integers; F_GETFD fails on a closed descriptor.
            let open = unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0;
            if !open {
                return None;
            }
            // SAFETY: the descriptor is open, and LISTEN_PID says systemd passed it to
            // this process alone, which takes it once, here.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: plain integers, as above.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            Some((name, owned))
        })
        .collect()
}

/// Sends one message to systemd's notify socket (`NOTIFY_SOCKET`: a path, or an
/// abstract name starting with `@`) with `fds` attached (FDSTORE=1).
pub fn notify_with_fds(message: &str, fds: &[RawFd]) -> io::Result<()> {
    let path = std::env::var_os("NOTIFY_SOCKET").ok_or_else(|| io::Error::other("NOTIFY_SOCKET is not set"))?;
    let socket = UnixDatagram::unbound()?;
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let address = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)?;
        socket.connect_addr(&address)?;
    } else {
        socket.connect(&path)?;
    }
    send(&socket, message.as_bytes(), fds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn descriptors_and_payload_cross_a_seqpacket_pair() {
        let (a, b) = seqpacket_pair().unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let local = udp.local_addr().unwrap();
        send(&a, b"hello", &[udp.as_raw_fd()]).unwrap();
        let (payload, fds) = recv(&b).unwrap();
        assert_eq!(payload, b"hello");
        assert_eq!(fds.len(), 1);
        let received = std::net::UdpSocket::from(fds.into_iter().next().unwrap());
        assert_eq!(received.local_addr().unwrap(), local);
    }

    #[test]
    fn a_sealed_memfd_reads_back_and_an_unsealed_one_is_refused() {
        let fd = sealed_memfd("test", b"state bytes").unwrap();
        assert_eq!(read_sealed_memfd(fd, 1024).unwrap(), b"state bytes");
        let fd = sealed_memfd("test", &[7; 100]).unwrap();
        assert!(read_sealed_memfd(fd, 10).is_err(), "over the limit");
        let (a, _b) = seqpacket_pair().unwrap();
        let not_memfd = a.as_fd().try_clone_to_owned().unwrap();
        assert!(read_sealed_memfd(not_memfd, 1024).is_err());
    }
}
