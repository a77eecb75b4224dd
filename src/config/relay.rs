//! `[relay]`: relay ports, addresses and the peers relays may reach.

use ipnet::IpNet;
use serde::Deserialize;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// `[relay]`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Relay {
    /// Lowest relay port.
    pub port_min: u16,
    /// Highest relay port.
    pub port_max: u16,
    /// IPv4 address relay sockets bind to (default: the address the request came to).
    pub bind_ipv4: Option<Ipv4Addr>,
    /// IPv4 address advertised to clients (the public IP of a server behind NAT).
    pub external_ipv4: Option<Ipv4Addr>,
    /// IPv6 address relay sockets bind to.
    pub bind_ipv6: Option<Ipv6Addr>,
    /// IPv6 address advertised to clients.
    pub external_ipv6: Option<Ipv6Addr>,
    /// The longest lifetime granted to an allocation.
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Duration,
    /// Peers allowed even if denied by default (e.g. "10.0.0.0/8" for an internal SFU).
    pub allowed_peers: Vec<IpNet>,
    /// Peers denied in addition to the built-in list.
    pub denied_peers: Vec<IpNet>,
    /// Whether peers may be any port of the host's own addresses, not only the relay
    /// ports of its other allocations: for tests and single-host labs only.
    pub allow_host_peers: bool,
    /// RFC 8016 mobility: a UDP client that asks gets a MOBILITY-TICKET and keeps its
    /// allocation when its address changes; off, asking is answered 405.
    pub mobility: bool,
}

impl Default for Relay {
    fn default() -> Self {
        Relay {
            port_min: 49152,
            port_max: 65535,
            bind_ipv4: None,
            external_ipv4: None,
            bind_ipv6: None,
            external_ipv6: None,
            max_lifetime: Duration::from_secs(3600),
            allowed_peers: Vec::new(),
            denied_peers: Vec::new(),
            allow_host_peers: false,
            mobility: true,
        }
    }
}
