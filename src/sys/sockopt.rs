//! Socket options `socket2` has no setter for (IP_MTU_DISCOVER, IP_RECVERR, UDP_GRO
//! and their IPv6 twins), set as the C `int` they are.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// setsockopt(2) with an `int` value.
pub fn set_int(socket: BorrowedFd<'_>, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from `value`, a live c_int
    // on this stack frame; the descriptor is borrowed, so open, for the call.
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

/// getsockopt(2) of an `int` option.
pub fn get_int(socket: BorrowedFd<'_>, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes (the size of a c_int) into
    // `value` and the actual length into `len`, both live locals.
    let rc =
        unsafe { libc::getsockopt(socket.as_raw_fd(), level, name, (&mut value as *mut libc::c_int).cast(), &mut len) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn an_int_option_reads_back_as_set() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let fd = socket.as_fd();
        set_int(fd, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, libc::IP_PMTUDISC_DO).unwrap();
        assert_eq!(get_int(fd, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER).unwrap(), libc::IP_PMTUDISC_DO);
        set_int(fd, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, libc::IP_PMTUDISC_DONT).unwrap();
        assert_eq!(get_int(fd, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER).unwrap(), libc::IP_PMTUDISC_DONT);
    }
}
