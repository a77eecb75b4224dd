//! The host's own addresses as the core sees them: which relay address to bind when a
//! client asks for the other family than it came over (the shell reads the interfaces
//! and hands the list in through [`crate::turn::Server::set_host_addresses`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The IPv4 address an IPv4 relay binds to when the request came over IPv6 and no
/// `bind-ipv4` is set: the first public one, else the first private one; never
/// loopback or link-local.
pub fn primary_v4(addresses: &[IpAddr]) -> Option<Ipv4Addr> {
    let usable = || {
        addresses.iter().filter_map(|ip| match ip {
            IpAddr::V4(v4) if !v4.is_loopback() && !v4.is_link_local() && !v4.is_unspecified() => Some(*v4),
            _ => None,
        })
    };
    usable().find(|v4| !v4.is_private()).or_else(|| usable().next())
}

/// The IPv6 address an IPv6 relay binds to when the request came over IPv4 and no
/// `bind-ipv6` is set: the first global one, else the first unique local one; never
/// loopback or link-local.
pub fn primary_v6(addresses: &[IpAddr]) -> Option<Ipv6Addr> {
    let usable = || {
        addresses.iter().filter_map(|ip| match ip {
            IpAddr::V6(v6) if !v6.is_loopback() && !v6.is_unspecified() && (v6.segments()[0] & 0xffc0) != 0xfe80 => {
                Some(*v6)
            }
            _ => None,
        })
    };
    let unique_local = |v6: &Ipv6Addr| (v6.segments()[0] & 0xfe00) == 0xfc00;
    usable().find(|v6| !unique_local(v6)).or_else(|| usable().next())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_primary_address_is_public_first_and_never_loopback_or_link_local() {
        let list: Vec<IpAddr> =
            ["127.0.0.1", "169.254.1.1", "10.0.0.5", "198.51.100.7", "::1", "fe80::1", "fd00::2", "2001:db8::9"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect();
        assert_eq!(primary_v4(&list), Some("198.51.100.7".parse().unwrap()));
        assert_eq!(primary_v6(&list), Some("2001:db8::9".parse().unwrap()));
        let private: Vec<IpAddr> = ["127.0.0.1", "10.0.0.5", "fd00::2"].iter().map(|s| s.parse().unwrap()).collect();
        assert_eq!(primary_v4(&private), Some("10.0.0.5".parse().unwrap()));
        assert_eq!(primary_v6(&private), Some("fd00::2".parse().unwrap()));
        assert_eq!(primary_v4(&["::1".parse().unwrap()]), None);
    }
}
