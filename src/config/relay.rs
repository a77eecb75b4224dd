//! `[relay]`: relay ports, addresses and the peers relays may reach.

use super::cluster::is_domain;
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

/// `external-ipv4` / `external-ipv6`: an address written in the file, or `"auto"`, which
/// `turnd serve` replaces at start with the address a STUN server (`external-address-stun`)
/// sees its Binding request come from (see `net::external`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum External<A> {
    /// `"auto"`: ask `external-address-stun` at start.
    Auto,
    /// This address.
    Address(A),
}

impl<A: Copy> External<A> {
    /// The address, if it is known (not `"auto"` still to be discovered).
    pub fn address(self) -> Option<A> {
        match self {
            External::Auto => None,
            External::Address(a) => Some(a),
        }
    }

    /// Whether it is `"auto"`.
    pub fn is_auto(self) -> bool {
        matches!(self, External::Auto)
    }
}

impl<A: fmt::Display> fmt::Display for External<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            External::Auto => f.write_str("auto"),
            External::Address(a) => a.fmt(f),
        }
    }
}

impl<'de, A: FromStr> Deserialize<'de> for External<A> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text == "auto" {
            return Ok(External::Auto);
        }
        text.parse().map(External::Address).map_err(|_| {
            serde::de::Error::custom(format!("{text:?} is neither an IP address of this family nor \"auto\""))
        })
    }
}

impl<A: fmt::Display> Serialize for External<A> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

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
    /// IPv4 address advertised to clients (the public IP of a server behind NAT), or
    /// `"auto"`: the address `external-address-stun` sees at start.
    pub external_ipv4: Option<External<Ipv4Addr>>,
    /// IPv6 address relay sockets bind to.
    pub bind_ipv6: Option<Ipv6Addr>,
    /// IPv6 address advertised to clients, or `"auto"`.
    pub external_ipv6: Option<External<Ipv6Addr>>,
    /// The STUN server (`host:port`, `[v6]:port` or `ip:port`) asked for the external
    /// address of each family set to `"auto"`; needed by `"auto"`, and only then allowed.
    pub external_address_stun: Option<String>,
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
    /// The XDP fast path for ChannelData over UDP/IPv4 (`net::xdp`).
    pub xdp: super::XdpMode,
    /// The interfaces the XDP program attaches to.
    pub xdp_interfaces: Vec<String>,
    /// UDP segmentation offloads on the UDP path: GRO on relay sockets and listeners
    /// (the kernel may hand over a run of one flow's datagrams as one buffer, split
    /// back here) and GSO on what they send (a run of same-sized datagrams to one
    /// destination leaves in one send). Read at start; a reload does not change it.
    pub udp_offload: bool,
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
            external_address_stun: None,
            max_lifetime: Duration::from_secs(3600),
            allowed_peers: Vec::new(),
            denied_peers: Vec::new(),
            allow_host_peers: false,
            mobility: true,
            xdp: super::XdpMode::Off,
            xdp_interfaces: Vec::new(),
            udp_offload: true,
        }
    }
}

/// The longest `external-address-stun` (a DNS name of at most 253 characters and a port).
const MAX_STUN_SERVER: usize = 260;

impl Relay {
    /// Whether any family's external address is `"auto"`.
    pub fn discovers_external_address(&self) -> bool {
        self.external_ipv4.is_some_and(External::is_auto) || self.external_ipv6.is_some_and(External::is_auto)
    }

    /// The checks beyond the types: `(key, what is wrong)`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        super::xdp::validate(self.xdp, &self.xdp_interfaces)?;
        let auto_v4 = self.external_ipv4.is_some_and(External::is_auto);
        let auto_v6 = self.external_ipv6.is_some_and(External::is_auto);
        let Some(server) = &self.external_address_stun else {
            return match (auto_v4, auto_v6) {
                (true, _) => Err(("relay.external-ipv4", NEEDS_STUN.into())),
                (_, true) => Err(("relay.external-ipv6", NEEDS_STUN.into())),
                _ => Ok(()),
            };
        };
        // Set without "auto" it is not used (and after `turnd serve` fills in the
        // discovered addresses, reloads see it so).
        const KEY: &str = "relay.external-address-stun";
        let target = StunServer::parse(server).map_err(|message| (KEY, message))?;
        if let StunServer::Address(address) = target {
            if auto_v4 && !address.is_ipv4() {
                return Err((KEY, format!("{address} cannot tell external-ipv4: give an IPv4 server or a name")));
            }
            if auto_v6 && !address.is_ipv6() {
                return Err((KEY, format!("{address} cannot tell external-ipv6: give an IPv6 server or a name")));
            }
        }
        Ok(())
    }
}

const NEEDS_STUN: &str =
    "\"auto\" needs relay.external-address-stun, the STUN server that tells this host its public address";

/// `external-address-stun`, parsed: an address, or a DNS name resolved at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StunServer {
    /// `ip:port` or `[v6]:port`.
    Address(SocketAddr),
    /// `name:port`.
    Name(String, u16),
}

impl StunServer {
    /// Parses `host:port`; the message says what is wrong.
    pub fn parse(text: &str) -> Result<StunServer, String> {
        if let Ok(address) = text.parse::<SocketAddr>() {
            if address.port() == 0 || address.ip().is_unspecified() || address.ip().is_multicast() {
                return Err(format!("{address}: needs a unicast address and a port other than 0"));
            }
            return Ok(StunServer::Address(address));
        }
        let shape = || format!("{text:?}: write host:port, e.g. \"stun.example.net:3478\" or \"192.0.2.1:3478\"");
        if text.len() > MAX_STUN_SERVER {
            return Err(format!("longer than {MAX_STUN_SERVER} characters"));
        }
        let (host, port) = text.rsplit_once(':').ok_or_else(shape)?;
        let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(shape)?;
        if host.parse::<IpAddr>().is_ok() || !is_domain(host) {
            return Err(shape());
        }
        Ok(StunServer::Name(host.to_owned(), port))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::parse;
    use crate::config::External;
    use std::net::Ipv4Addr;

    #[test]
    fn external_addresses_are_an_address_or_auto_with_a_stun_server() {
        let fixed = parse("[relay]\nexternal-ipv4 = \"203.0.113.7\"\n").unwrap();
        assert_eq!(fixed.relay.external_ipv4, Some(External::Address(Ipv4Addr::new(203, 0, 113, 7))));
        assert_eq!(fixed.core().relay.external_v4, Some(Ipv4Addr::new(203, 0, 113, 7)));
        let auto = "[relay]\nexternal-ipv4 = \"auto\"\nexternal-address-stun = \"stun.example.net:3478\"\n";
        let auto = parse(auto).unwrap();
        assert_eq!(auto.relay.external_ipv4, Some(External::Auto));
        assert!(auto.relay.discovers_external_address());
        // Not yet discovered: the core advertises what it binds.
        assert_eq!(auto.core().relay.external_v4, None);
        let both = "[relay]\nexternal-ipv4 = \"auto\"\nexternal-ipv6 = \"auto\"\nexternal-address-stun = \"[2001:db8::1]:3478\"\n";
        for (text, expected) in [
            (
                "[relay]\nexternal-ipv4 = \"auto\"\n",
                "t.toml:2: `relay.external-ipv4`: \"auto\" needs relay.external-address-stun",
            ),
            ("[relay]\nexternal-ipv6 = \"auto\"\n", "t.toml:2: `relay.external-ipv6`: \"auto\" needs"),
            ("[relay]\nexternal-ipv4 = \"2001:db8::1\"\n", "t.toml:2: "),
            ("[relay]\nexternal-ipv4 = \"automatic\"\n", "neither an IP address of this family nor \"auto\""),
            (
                "[relay]\nexternal-ipv4 = \"auto\"\nexternal-address-stun = \"stun.example.net\"\n",
                "t.toml:3: `relay.external-address-stun`: \"stun.example.net\": write host:port",
            ),
            ("[relay]\nexternal-ipv4 = \"auto\"\nexternal-address-stun = \"192.0.2.1:0\"\n", "port other than 0"),
            ("[relay]\nexternal-ipv4 = \"auto\"\nexternal-address-stun = \"bad name!:3478\"\n", "write host:port"),
            (both, "t.toml:4: `relay.external-address-stun`: [2001:db8::1]:3478 cannot tell external-ipv4"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.starts_with(expected) || err.contains(expected), "{text}\n{err}");
        }
        let named = "[relay]\nexternal-ipv4 = \"auto\"\nexternal-ipv6 = \"auto\"\nexternal-address-stun = \"stun.example.net:3478\"\n";
        assert!(parse(named).is_ok());
        // check-config prints it back as written.
        let printed = toml::to_string(&auto.relay).unwrap();
        assert!(printed.contains("external-ipv4 = \"auto\""), "{printed}");
    }
}
