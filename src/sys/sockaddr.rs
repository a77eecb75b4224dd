//! Socket addresses to and from the C form the batched socket calls (recvmmsg,
//! sendmmsg) read and write, for the two families turnd serves. (`socket2::SockAddr`
//! wraps the same storage, but is made from what the kernel wrote only through an
//! `unsafe` constructor, and these write in place into the arrays a batch call takes.)

use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

/// An all-zero `sockaddr_storage` (family `AF_UNSPEC`), for the kernel to write into.
pub fn zeroed() -> libc::sockaddr_storage {
    // SAFETY: all-zero is a valid sockaddr_storage: a plain C struct of integers
    // (whose padding fields are private in libc, so it cannot be built field by field).
    unsafe { std::mem::zeroed() }
}

/// The address a recvmmsg wrote, or `None` for another family or a short length.
pub fn from_storage(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is
            // large and aligned enough for.
            let v4 = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
            Some(SocketAddr::from((ip, u16::from_be(v4.sin_port))))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for a sockaddr_in6.
            let v6 = unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(v6.sin6_addr.s6_addr);
            Some(SocketAddrV6::new(ip, u16::from_be(v6.sin6_port), v6.sin6_flowinfo, v6.sin6_scope_id).into())
        }
        _ => None,
    }
}

/// Writes `address` at the start of `storage` (only the bytes of its family's
/// struct: the rest stays as it was, possibly uninitialized, and the kernel reads no
/// further than the returned length).
pub fn to_storage(address: SocketAddr, storage: &mut MaybeUninit<libc::sockaddr_storage>) -> libc::socklen_t {
    match address {
        SocketAddr::V4(v4) => {
            let value = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from(*v4.ip()).to_be() },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in.
            unsafe { storage.as_mut_ptr().cast::<libc::sockaddr_in>().write(value) };
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(v6) => {
            let value = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: v6.ip().octets() },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: as above, for a sockaddr_in6.
            unsafe { storage.as_mut_ptr().cast::<libc::sockaddr_in6>().write(value) };
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_survive_the_round_trip() {
        for text in ["127.0.0.1:3478", "[::1]:9", "[fe80::1%3]:65535", "0.0.0.0:0"] {
            let address: SocketAddr = text.parse().unwrap();
            let mut storage = MaybeUninit::new(zeroed());
            let len = to_storage(address, &mut storage);
            // SAFETY: initialized (zeroed), then partly overwritten: initialized throughout.
            let storage = unsafe { storage.assume_init() };
            assert_eq!(from_storage(&storage, len), Some(address), "{text}");
            assert_eq!(from_storage(&storage, len - 1), None, "{text}: short length");
        }
    }
}
