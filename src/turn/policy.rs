//! Which peers an allocation may reach: one check, used by every path that installs
//! a permission or names a peer (CreatePermission, ChannelBind, Send).
//!
//! By default everything that is not globally routable unicast is denied, so a relay
//! cannot be turned on the network it sits in (the class of bug behind coturn
//! CVE-2020-26262 and relays to 169.254.169.254). Embedded IPv4 addresses in IPv6
//! (mapped, compatible, NAT64, 6to4) are judged by their IPv4 part.

use super::ports::LivePorts;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// Why a peer was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// In a range denied by default (loopback, private, link-local...).
    #[error("peer address is in a range denied by default")]
    Builtin,
    /// In a `denied-peers` range from the config.
    #[error("peer address is in a configured denied-peers range")]
    Configured,
    /// One of the server's own listening transport addresses.
    #[error("peer address is one of the server's own sockets")]
    OwnSocket,
    /// An address of the host itself, at a port that holds no relay of this server.
    #[error("peer address is a service of this host, not one of its relays")]
    HostService,
}

/// IPv4 ranges that are never relayed to unless explicitly allowed.
const DENIED_V4: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8),       // "this network", incl. 0.0.0.0 (RFC 791)
    (Ipv4Addr::new(10, 0, 0, 0), 8),      // private (RFC 1918)
    (Ipv4Addr::new(100, 64, 0, 0), 10),   // carrier-grade NAT (RFC 6598)
    (Ipv4Addr::new(127, 0, 0, 0), 8),     // loopback
    (Ipv4Addr::new(169, 254, 0, 0), 16),  // link-local, incl. cloud metadata (RFC 3927)
    (Ipv4Addr::new(172, 16, 0, 0), 12),   // private (RFC 1918)
    (Ipv4Addr::new(192, 0, 0, 0), 24),    // IETF protocol assignments (RFC 6890)
    (Ipv4Addr::new(192, 0, 2, 0), 24),    // TEST-NET-1 (RFC 5737)
    (Ipv4Addr::new(192, 88, 99, 0), 24),  // 6to4 relay anycast (RFC 7526)
    (Ipv4Addr::new(192, 168, 0, 0), 16),  // private (RFC 1918)
    (Ipv4Addr::new(198, 18, 0, 0), 15),   // benchmarking (RFC 2544)
    (Ipv4Addr::new(198, 51, 100, 0), 24), // TEST-NET-2
    (Ipv4Addr::new(203, 0, 113, 0), 24),  // TEST-NET-3
    (Ipv4Addr::new(224, 0, 0, 0), 4),     // multicast
    (Ipv4Addr::new(240, 0, 0, 0), 4),     // reserved, incl. broadcast 255.255.255.255
];

/// IPv6 ranges that are never relayed to unless explicitly allowed. Ranges that embed
/// an IPv4 address are handled separately, by the IPv4 part.
const DENIED_V6: &[(Ipv6Addr, u8)] = &[
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 128),         // unspecified
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1), 128),         // loopback
    (Ipv6Addr::new(0x0100, 0, 0, 0, 0, 0, 0, 0), 64),     // discard-only (RFC 6666)
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 32),     // Teredo: tunnels to arbitrary IPv4
    (Ipv6Addr::new(0x2001, 0x2, 0, 0, 0, 0, 0, 0), 48),   // benchmarking (RFC 5180)
    (Ipv6Addr::new(0x2001, 0x10, 0, 0, 0, 0, 0, 0), 28),  // ORCHID (RFC 4843)
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32), // documentation (RFC 3849)
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20),     // documentation (RFC 9637)
    (Ipv6Addr::new(0x5f00, 0, 0, 0, 0, 0, 0, 0), 16),     // SRv6 SIDs (RFC 9602)
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),      // unique local (RFC 4193)
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),     // link-local
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10),     // site-local (deprecated)
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),      // multicast
];

/// The peer policy: built-in denials, overridden by configured allow and deny lists.
#[derive(Debug, Clone, Default)]
pub struct PeerPolicy {
    allowed: Vec<IpNet>,
    denied: Vec<IpNet>,
    own_sockets: Vec<SocketAddr>,
    /// The host's own addresses (canonical), as the shell reads them from its
    /// interfaces and the relay settings.
    host: Vec<IpAddr>,
    /// The relay ports of this server in use now (shared with the ledger).
    relay_ports: Option<Arc<LivePorts>>,
    /// Whether any port of the host's own addresses may be a peer (`allow-host-peers`),
    /// not only the relay ports.
    host_services: bool,
}

impl PeerPolicy {
    /// A policy with the given `allowed-peers` and `denied-peers` lists.
    pub fn new(allowed: Vec<IpNet>, denied: Vec<IpNet>) -> Self {
        PeerPolicy { allowed, denied, ..PeerPolicy::default() }
    }

    /// Adds the server's own listening sockets, which are never a valid peer (a relay
    /// to itself is a loop an attacker can amplify). Wildcard listeners must be given
    /// as one entry per local interface address: matching is exact.
    pub fn deny_own_sockets(&mut self, sockets: impl IntoIterator<Item = SocketAddr>) {
        self.own_sockets.extend(sockets);
    }

    /// The host's own addresses: a peer on one of them, at a port that holds a relay of
    /// this server, is that relay (two clients of one server relaying to each other's
    /// relayed addresses), allowed even where the built-in list denies the range
    /// (loopback on a laptop, a private network behind a load balancer).
    pub fn set_host_addresses(&mut self, addresses: impl IntoIterator<Item = IpAddr>) {
        self.host = addresses.into_iter().map(canonical).collect();
        self.host.sort_unstable();
        self.host.dedup();
    }

    /// The ports that hold this server's relays now (the ledger's live view).
    pub fn watch_relay_ports(&mut self, ports: Arc<LivePorts>) {
        self.relay_ports = Some(ports);
    }

    /// Lets peers reach any port of the host's own addresses (`allow-host-peers`): for
    /// tests and single-host labs, never a public server.
    pub fn allow_host_services(&mut self, allow: bool) {
        self.host_services = allow;
    }

    /// Whether `ip` is one of the host's own addresses.
    pub fn is_host(&self, ip: IpAddr) -> bool {
        self.host.binary_search(&canonical(ip)).is_ok()
    }

    /// Whether `peer` is a relayed transport address of this server that is in use.
    pub fn is_own_relay(&self, peer: SocketAddr) -> bool {
        self.relay_ports.as_ref().is_some_and(|ports| ports.contains(peer.port()))
            && self.host.binary_search(&canonical(peer.ip())).is_ok()
    }

    /// Checks the peer a CreatePermission names: its IP, as [`PeerPolicy::check_ip`],
    /// except that one of this server's own relays in a denied range is allowed.
    pub fn check_permission(&self, peer: SocketAddr) -> Result<(), Denied> {
        match self.check_ip(peer.ip()) {
            Err(Denied::Builtin) if self.is_own_relay(peer) => Ok(()),
            verdict => verdict,
        }
    }

    /// Whether a permission already installed for `ip` survives a reload: the IP
    /// passes, or it is the host's own (a permission for another allocation's relay;
    /// what can be sent there is checked per transport address by [`PeerPolicy::check`]).
    pub fn keeps_permission(&self, ip: IpAddr) -> bool {
        self.check_ip(ip).is_ok() || self.host.binary_search(&canonical(ip)).is_ok()
    }

    /// Checks an IP address (for permissions, which are per IP).
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Denied> {
        let ip = canonical(ip);
        if self.allowed.iter().any(|net| net.contains(&ip)) {
            return Ok(());
        }
        if self.denied.iter().any(|net| net.contains(&ip)) {
            return Err(Denied::Configured);
        }
        if builtin_denied(ip) {
            return Err(Denied::Builtin);
        }
        Ok(())
    }

    /// Checks a full transport address: the IP check (with this server's own relays
    /// allowed, as in [`PeerPolicy::check_permission`]) plus the server's own sockets.
    ///
    /// The host's own addresses are reachable only at ports that hold a relay of this
    /// server (another allocation): every other port of them is a service of the host
    /// (a database, an admin API) that its firewall only guards from outside, and
    /// `allowed-peers` does not reopen them; `allow-host-peers` does.
    pub fn check(&self, peer: SocketAddr) -> Result<(), Denied> {
        self.check_permission(peer)?;
        if !self.host_services && self.is_host(peer.ip()) && !self.is_own_relay(peer) {
            return Err(Denied::HostService);
        }
        let peer_ip = canonical(peer.ip());
        let own = self.own_sockets.iter().any(|own| own.port() == peer.port() && canonical(own.ip()) == peer_ip);
        if own {
            return Err(Denied::OwnSocket);
        }
        Ok(())
    }
}

/// Reduces an IPv6 address that embeds an IPv4 address (mapped `::ffff:a.b.c.d`,
/// compatible `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`, 6to4 `2002:AABB:CCDD::`) to that
/// IPv4 address, so it is judged like the IPv4 address it reaches.
pub fn canonical(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else {
        return ip;
    };
    let s = v6.segments();
    let o = v6.octets();
    let embedded_low = || Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => IpAddr::V4(embedded_low()),
        // IPv4-compatible, but not :: and ::1, which are IPv6's own.
        [0, 0, 0, 0, 0, 0, hi, _] if hi != 0 => IpAddr::V4(embedded_low()),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => IpAddr::V4(embedded_low()),
        [0x2002, _, _, ..] => IpAddr::V4(Ipv4Addr::new(o[2], o[3], o[4], o[5])),
        _ => ip,
    }
}

/// An IPv4-mapped IPv6 peer (`::ffff:a.b.c.d`) as the IPv4 address it is: relay
/// sockets are single-family, so peers are kept in their plain form.
pub fn unmapped(peer: SocketAddr) -> SocketAddr {
    match peer.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, |v4| SocketAddr::new(IpAddr::V4(v4), peer.port())),
        IpAddr::V4(_) => peer,
    }
}

fn builtin_denied(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => DENIED_V4.iter().any(|&(net, len)| Ipv4Net::new(net, len).is_ok_and(|n| n.contains(&v4))),
        IpAddr::V6(v6) => {
            DENIED_V6.iter().any(|&(net, len)| Ipv6Net::new(net, len).is_ok_and(|n| n.contains(&v6)))
                // 64:ff9b:1::/48 local-use NAT64 (RFC 8215): its mapping is site-specific.
                || Ipv6Net::new(Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48).is_ok_and(|n| n.contains(&v6))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn denies_the_usual_suspects_by_default() {
        let p = PeerPolicy::default();
        for denied in [
            "0.0.0.0",
            "127.0.0.1",
            "10.1.2.3",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.169.254",
            "224.0.0.1",
            "255.255.255.255",
            "192.0.2.1",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "2002:c0a8:0101::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
        ] {
            assert!(p.check_ip(ip(denied)).is_err(), "{denied} should be denied");
        }
        for allowed in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::"]
        {
            assert_eq!(p.check_ip(ip(allowed)), Ok(()), "{allowed} should be allowed");
        }
    }

    #[test]
    fn allow_wins_only_where_listed_and_deny_extends() {
        let p = PeerPolicy::new(vec!["127.0.0.0/8".parse().unwrap()], vec!["8.8.8.0/24".parse().unwrap()]);
        assert_eq!(p.check_ip(ip("127.0.0.1")), Ok(()));
        assert_eq!(p.check_ip(ip("::ffff:127.0.0.1")), Ok(()));
        assert_eq!(p.check_ip(ip("10.0.0.1")), Err(Denied::Builtin));
        assert_eq!(p.check_ip(ip("8.8.8.8")), Err(Denied::Configured));
    }

    #[test]
    fn own_sockets_are_denied_even_when_their_range_is_allowed() {
        let mut p = PeerPolicy::new(vec!["127.0.0.0/8".parse().unwrap()], vec![]);
        p.deny_own_sockets(["127.0.0.1:3478".parse().unwrap(), "[::ffff:127.0.0.5]:9641".parse().unwrap()]);
        assert_eq!(p.check("127.0.0.1:3478".parse().unwrap()), Err(Denied::OwnSocket));
        assert_eq!(p.check("127.0.0.5:9641".parse().unwrap()), Err(Denied::OwnSocket));
        assert_eq!(p.check("127.0.0.6:9641".parse().unwrap()), Ok(()));
        assert_eq!(p.check("127.0.0.1:3479".parse().unwrap()), Ok(()));
    }
}
