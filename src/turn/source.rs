//! Client sources as limits count them: an address masked to a prefix. One host on
//! IPv6 usually holds a whole /64 and can pick any address in it, so counting IPv6
//! addresses one by one would give it 2^64 times every per-source limit.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// How many leading bits of a client address name its source, per family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct SourcePrefix {
    /// IPv4 prefix length, 1 to 32 (32: each address is its own source).
    pub v4: u8,
    /// IPv6 prefix length, 1 to 128 (64: a subnet, usually one host or one home).
    pub v6: u8,
}

impl Default for SourcePrefix {
    fn default() -> Self {
        SourcePrefix { v4: 32, v6: 64 }
    }
}

impl SourcePrefix {
    /// The source `ip` counts as: the address with the bits past the prefix cleared.
    /// IPv4-mapped IPv6 addresses count as the IPv4 address they are.
    pub fn key(self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => IpAddr::V4(mask_v4(v4, self.v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(mask_v4(v4, self.v4)),
                None => IpAddr::V6(mask_v6(v6, self.v6)),
            },
        }
    }
}

fn mask_v4(ip: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let keep = u32::MAX.checked_shl(32 - u32::from(prefix.clamp(1, 32))).unwrap_or(0);
    Ipv4Addr::from(u32::from(ip) & keep)
}

fn mask_v6(ip: Ipv6Addr, prefix: u8) -> Ipv6Addr {
    let keep = u128::MAX.checked_shl(128 - u32::from(prefix.clamp(1, 128))).unwrap_or(0);
    Ipv6Addr::from(u128::from(ip) & keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(prefix: SourcePrefix, ip: &str) -> String {
        prefix.key(ip.parse().unwrap()).to_string()
    }

    #[test]
    fn ipv6_sources_are_grouped_by_64_and_ipv4_ones_are_not_by_default() {
        let d = SourcePrefix::default();
        assert_eq!(key(d, "2001:db8:1:2:aaaa::1"), "2001:db8:1:2::");
        assert_eq!(key(d, "2001:db8:1:2:ffff::9"), "2001:db8:1:2::");
        assert_ne!(key(d, "2001:db8:1:3::1"), "2001:db8:1:2::");
        assert_eq!(key(d, "198.51.100.7"), "198.51.100.7");
        assert_eq!(key(d, "::ffff:198.51.100.7"), "198.51.100.7");
        let wide = SourcePrefix { v4: 24, v6: 48 };
        assert_eq!(key(wide, "198.51.100.7"), "198.51.100.0");
        assert_eq!(key(wide, "2001:db8:1:2::1"), "2001:db8:1::");
        let exact = SourcePrefix { v4: 32, v6: 128 };
        assert_eq!(key(exact, "2001:db8::1"), "2001:db8::1");
    }
}
