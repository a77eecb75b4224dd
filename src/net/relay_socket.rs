//! Relay sockets: one UDP socket per allocation, bound in the relay port range.

use crate::turn::handlers::RelayBindError;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io;
use std::net::SocketAddr;

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
    Ok(socket)
}

fn set_dont_fragment(socket: &Socket, ipv6: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (level, name, value) = if ipv6 {
        (libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER, libc::IPV6_PMTUDISC_DO)
    } else {
        (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, libc::IP_PMTUDISC_DO)
    };
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
    fn a_taken_port_reports_addr_in_use() {
        let first = bind("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let taken = first.local_addr().unwrap().as_socket().unwrap();
        assert_eq!(bind(taken, false).unwrap_err().0, RelayBindError::AddrInUse);
    }
}
