//! Where this node tells other nodes to send clients, per client transport: RFC 8489
//! §14.15 has a client follow ALTERNATE-SERVER with the transport it used, so a TLS
//! client must be named the node's TLS port, not its UDP one.
//!
//! Worked out once at start from `[cluster]` and the listeners as bound (so port 0
//! and `--port` give the real ports):
//!
//! - UDP: `advertise-ipv4`/`-ipv6`, when the node has a UDP listener.
//! - TCP: `advertise-tcp-ipv4`/`-ipv6`; else `advertise-ipv4`/`-ipv6` when a TCP
//!   listener has that port (the usual `turn:` host with UDP and TCP on one port).
//! - TLS: `advertise-tls-ipv4`/`-ipv6`; else `advertise-ipv4`/`-ipv6`'s IP with the
//!   port of the first TLS listener (of that family, or a wildcard one).
//!
//! A transport with no address is not advertised: the other nodes never send its
//! clients here.

use super::registry::Addresses;
use crate::config::{Cluster, ListenTransport};
use std::net::SocketAddr;

/// This node's addresses per client transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Advertised {
    /// For UDP clients.
    pub udp: Addresses,
    /// For TCP clients.
    pub tcp: Addresses,
    /// For TLS clients.
    pub tls: Addresses,
}

/// The addresses `cluster` advertises, given the bound `listeners` (in config order).
pub fn advertised(cluster: &Cluster, listeners: &[(ListenTransport, SocketAddr)]) -> Advertised {
    let has = |transport| listeners.iter().any(|(t, _)| *t == transport);
    let udp = |address: Option<SocketAddr>| address.filter(|_| has(ListenTransport::Udp));
    let tcp = |explicit: Option<SocketAddr>, base: Option<SocketAddr>| {
        explicit.or_else(|| {
            base.filter(|b| listeners.iter().any(|(t, a)| *t == ListenTransport::Tcp && a.port() == b.port()))
        })
    };
    let tls = |explicit: Option<SocketAddr>, base: Option<SocketAddr>| {
        explicit.or_else(|| {
            let base = base?;
            let (_, listener) = listeners.iter().find(|(t, a)| {
                *t == ListenTransport::Tls && (a.is_ipv4() == base.is_ipv4() || a.ip().is_unspecified())
            })?;
            Some(SocketAddr::new(base.ip(), listener.port()))
        })
    };
    let (v4, v6) = (cluster.advertise_ipv4, cluster.advertise_ipv6);
    Advertised {
        udp: Addresses { ipv4: udp(v4), ipv6: udp(v6) },
        tcp: Addresses { ipv4: tcp(cluster.advertise_tcp_ipv4, v4), ipv6: tcp(cluster.advertise_tcp_ipv6, v6) },
        tls: Addresses { ipv4: tls(cluster.advertise_tls_ipv4, v4), ipv6: tls(cluster.advertise_tls_ipv6, v6) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ListenTransport::{Tcp, Tls, Udp};

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn cluster(v4: &str) -> Cluster {
        Cluster { advertise_ipv4: Some(a(v4)), ..Cluster::default() }
    }

    #[test]
    fn tcp_on_the_udp_port_and_tls_on_its_listeners_port_by_default() {
        let listeners = [(Udp, a("0.0.0.0:3478")), (Tcp, a("0.0.0.0:3478")), (Tls, a("0.0.0.0:5349"))];
        let got = advertised(&cluster("203.0.113.11:3478"), &listeners);
        assert_eq!(got.udp.ipv4, Some(a("203.0.113.11:3478")));
        assert_eq!(got.tcp.ipv4, Some(a("203.0.113.11:3478")));
        assert_eq!(got.tls.ipv4, Some(a("203.0.113.11:5349")));
        assert_eq!((got.udp.ipv6, got.tcp.ipv6, got.tls.ipv6), (None, None, None));
    }

    #[test]
    fn a_transport_without_a_listener_is_not_advertised() {
        let got = advertised(&cluster("203.0.113.11:3478"), &[(Udp, a("0.0.0.0:3478")), (Tcp, a("0.0.0.0:3479"))]);
        assert_eq!(got.tcp.ipv4, None, "no TCP listener on the advertised port");
        assert_eq!(got.tls.ipv4, None);
        let got = advertised(&cluster("203.0.113.11:3478"), &[(Tls, a("0.0.0.0:443"))]);
        assert_eq!((got.udp.ipv4, got.tls.ipv4), (None, Some(a("203.0.113.11:443"))));
    }

    #[test]
    fn explicit_addresses_win_and_tls_listeners_match_the_family() {
        let c = Cluster {
            advertise_ipv6: Some(a("[2001:db8::11]:3478")),
            advertise_tcp_ipv4: Some(a("203.0.113.11:443")),
            advertise_tls_ipv4: Some(a("203.0.113.12:8443")),
            ..cluster("203.0.113.11:3478")
        };
        let listeners = [(Udp, a("[::]:3478")), (Tcp, a("10.0.0.5:3478")), (Tls, a("[2001:db8::11]:5349"))];
        let got = advertised(&c, &listeners);
        assert_eq!(got.tcp.ipv4, Some(a("203.0.113.11:443")));
        assert_eq!(got.tls.ipv4, Some(a("203.0.113.12:8443")));
        assert_eq!(got.tcp.ipv6, Some(a("[2001:db8::11]:3478")));
        assert_eq!(got.tls.ipv6, Some(a("[2001:db8::11]:5349")));
    }
}
