//! `[relay] external-ipv4 = "auto"` (and `external-ipv6`): at start, ask the STUN server
//! `external-address-stun` which address this host's traffic comes from, and advertise
//! that in XOR-RELAYED-ADDRESS, as if it had been written in the file.
//!
//! One Binding request per family, sent from the address relays of that family use
//! (`bind-ipv4`/`bind-ipv6`, else the first UDP `[[listen]]` of the family that names a
//! specific address, else the wildcard: the kernel picks the source) on an ephemeral
//! port, retransmitted as RFC 8489 §6.2.1 says (500 ms, then doubling) for at most
//! [`TIMEOUT`]. The answer's XOR-MAPPED-ADDRESS IP is taken; its port is not (the
//! relays' ports are their own). Behind a 1:1 NAT (a cloud VM, a Kubernetes node) that
//! is the public address. Behind a NAT that maps each relay port differently no
//! single address is right, and TURN through it does not work anyway.
//!
//! It runs once, before anything is bound: when the server does not answer, or answers
//! without a usable address, `turnd serve` stops with an error naming the key and the
//! server. Serving without the address would hand every client a private relay address
//! that its peers cannot reach, which fails later and silently; an orchestrator
//! restarting the process retries the discovery. Reloads keep the discovered address
//! (see [`Discovered::apply`]).
//!
//! This is the shell (sockets, a clock): the Binding is the sans-IO
//! [`crate::client::Client`] over its blocking UDP transport.

use crate::client::blocking::{Connection, Link, TransportError};
use crate::client::{Client, ClientError, Credentials, Request};
use crate::config::{Config, External, Listen, ListenTransport, Relay, StunServer};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::Duration;

/// How long one family's discovery waits for an answer, retransmissions included.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// The external addresses found at start, one per family set to `"auto"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Discovered {
    /// `external-ipv4`'s.
    pub ipv4: Option<Ipv4Addr>,
    /// `external-ipv6`'s.
    pub ipv6: Option<Ipv6Addr>,
}

/// Why discovery failed: each names the key and the server.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The server's name did not resolve.
    #[error("relay.external-address-stun: cannot resolve {server:?}: {cause}")]
    Resolve {
        /// The server as configured.
        server: String,
        /// The resolver's error (named `cause`, not `source`: the message says it once).
        cause: std::io::Error,
    },
    /// The name resolved, but to no address of the family asked about.
    #[error("relay.external-{family} = \"auto\": {server:?} has no {family} address to ask")]
    NoAddress {
        /// `ipv4` or `ipv6`.
        family: &'static str,
        /// The server as configured.
        server: String,
    },
    /// No socket to ask from.
    #[error("relay.external-{family} = \"auto\": cannot bind a UDP socket on {from}: {cause}")]
    Bind {
        /// `ipv4` or `ipv6`.
        family: &'static str,
        /// The local address.
        from: IpAddr,
        /// The system's error.
        cause: std::io::Error,
    },
    /// No answer, or one that could not be read.
    #[error(
        "relay.external-{family} = \"auto\": the STUN server relay.external-address-stun = {server} gave no address: {cause}"
    )]
    Transport {
        /// `ipv4` or `ipv6`.
        family: &'static str,
        /// The server's address.
        server: SocketAddr,
        /// What happened (boxed: it is large, and this path runs once).
        cause: Box<TransportError>,
    },
    /// An answer without a usable XOR-MAPPED-ADDRESS (an error response, none, or an
    /// address of the wrong family or no single host).
    #[error("relay.external-{family} = \"auto\": the STUN server {server} answered {what}")]
    Unusable {
        /// `ipv4` or `ipv6`.
        family: &'static str,
        /// The server's address.
        server: SocketAddr,
        /// What came back.
        what: String,
    },
}

/// Asks `relay.external-address-stun` for each family whose external address is
/// `"auto"` (nothing to do, and no traffic, when none is).
pub fn discover(relay: &Relay, listen: &[Listen]) -> Result<Discovered, DiscoveryError> {
    let mut found = Discovered::default();
    let Some(server) = relay.external_address_stun.as_deref() else { return Ok(found) };
    if relay.external_ipv4.is_some_and(External::is_auto) {
        let source = relay.bind_ipv4.map(IpAddr::V4).unwrap_or_else(|| listen_source(listen, true));
        found.ipv4 = match ask(server, source)? {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        };
    }
    if relay.external_ipv6.is_some_and(External::is_auto) {
        let source = relay.bind_ipv6.map(IpAddr::V6).unwrap_or_else(|| listen_source(listen, false));
        found.ipv6 = match ask(server, source)? {
            IpAddr::V6(ip) => Some(ip),
            IpAddr::V4(_) => None,
        };
    }
    Ok(found)
}

/// The first UDP listener of the family with a specific address, else the wildcard.
fn listen_source(listen: &[Listen], v4: bool) -> IpAddr {
    let wildcard = if v4 { IpAddr::V4(Ipv4Addr::UNSPECIFIED) } else { IpAddr::V6(Ipv6Addr::UNSPECIFIED) };
    listen
        .iter()
        .filter(|l| l.transport == ListenTransport::Udp)
        .map(|l| l.address.ip())
        .find(|ip| ip.is_ipv4() == v4 && !ip.is_unspecified())
        .unwrap_or(wildcard)
}

/// Sends one Binding (retransmitted) from `source` to `server` and returns the IP of
/// its XOR-MAPPED-ADDRESS, which is of `source`'s family.
pub fn ask(server: &str, source: IpAddr) -> Result<IpAddr, DiscoveryError> {
    let family = if source.is_ipv4() { "ipv4" } else { "ipv6" };
    let target = match StunServer::parse(server) {
        Ok(StunServer::Address(address)) => Some(address),
        Ok(StunServer::Name(name, port)) => (name.as_str(), port)
            .to_socket_addrs()
            .map_err(|cause| DiscoveryError::Resolve { server: server.to_owned(), cause })?
            .find(|a| a.is_ipv4() == source.is_ipv4()),
        // Validated with the config; kept an error rather than a panic all the same.
        Err(message) => {
            return Err(DiscoveryError::Resolve { server: server.to_owned(), cause: std::io::Error::other(message) })
        }
    };
    let target = target
        .filter(|a| a.is_ipv4() == source.is_ipv4())
        .ok_or_else(|| DiscoveryError::NoAddress { family, server: server.to_owned() })?;
    let socket = UdpSocket::bind(SocketAddr::new(source, 0)).map_err(|e| DiscoveryError::Bind {
        family,
        from: source,
        cause: e,
    })?;
    let transport =
        |source: TransportError| DiscoveryError::Transport { family, server: target, cause: Box::new(source) };
    let unusable = |what: String| DiscoveryError::Unusable { family, server: target, what };
    let mut connection = Connection::new(Link::Udp(socket), target);
    // Transaction ids an off-path attacker cannot guess, as `turnd probe`'s.
    let mut client = Client::new(Credentials::None, random_seed().map_err(transport)?);
    let response = connection.request(&mut client, &Request::binding(), TIMEOUT).map_err(transport)?;
    if !response.is_success() {
        let error = response.error().map_or_else(|| "an error".to_owned(), |e| format!("{} {}", e.code, e.reason));
        return Err(unusable(format!("{error} to a Binding request")));
    }
    let mapped = response.mapped().ok_or_else(|| unusable("without XOR-MAPPED-ADDRESS".into()))?;
    let ip = mapped.ip();
    if ip.is_ipv4() != source.is_ipv4() || ip.is_unspecified() || ip.is_multicast() || ip == Ipv4Addr::BROADCAST {
        return Err(unusable(format!("{ip}, which is not an address of a single {family} host")));
    }
    Ok(ip)
}

fn random_seed() -> Result<[u8; 12], TransportError> {
    use ring::rand::SecureRandom;
    let mut seed = [0u8; 12];
    ring::rand::SystemRandom::new()
        .fill(&mut seed)
        .map_err(|_| TransportError::Client(ClientError::Encode("the system CSPRNG failed")))?;
    Ok(seed)
}

impl Discovered {
    /// Whether nothing was discovered.
    pub fn is_empty(&self) -> bool {
        self.ipv4.is_none() && self.ipv6.is_none()
    }

    /// Puts the discovered addresses where the config says `"auto"` (so a reload of a
    /// file that still says `"auto"` keeps them: discovery runs at start only). In a
    /// fleet (`[cluster] redis`), a family without `advertise-ipv*` is advertised to
    /// the other nodes at the discovered address and the port of the first `[[listen]]`
    /// of the family with a port (UDP first), so that no per-node address has to be
    /// written into a config shared by every node.
    pub fn apply(&self, config: &mut Config) {
        if let (Some(ip), Some(External::Auto)) = (self.ipv4, config.relay.external_ipv4) {
            config.relay.external_ipv4 = Some(External::Address(ip));
        }
        if let (Some(ip), Some(External::Auto)) = (self.ipv6, config.relay.external_ipv6) {
            config.relay.external_ipv6 = Some(External::Address(ip));
        }
        if !config.cluster.enabled() {
            return;
        }
        let port = |v4: bool| {
            let of_family = || config.listen.iter().filter(move |l| l.address.is_ipv4() == v4 && l.address.port() != 0);
            of_family()
                .find(|l| l.transport == ListenTransport::Udp)
                .or_else(|| of_family().next())
                .map(|l| l.address.port())
        };
        if let (Some(ip), None, Some(port)) = (self.ipv4, config.cluster.advertise_ipv4, port(true)) {
            config.cluster.advertise_ipv4 = Some(SocketAddr::new(IpAddr::V4(ip), port));
        }
        if let (Some(ip), None, Some(port)) = (self.ipv6, config.cluster.advertise_ipv6, port(false)) {
            config.cluster.advertise_ipv6 = Some(SocketAddr::new(IpAddr::V6(ip), port));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(text: &str) -> Config {
        Config::parse(text, Path::new("t.toml")).unwrap()
    }

    #[test]
    fn discovered_addresses_fill_in_auto_only() {
        let found = Discovered { ipv4: Some(Ipv4Addr::new(203, 0, 113, 7)), ipv6: None };
        let mut auto = parse(
            "[relay]\nexternal-ipv4 = \"auto\"\nexternal-ipv6 = \"2001:db8::7\"\nexternal-address-stun = \"stun.example.net:3478\"\n",
        );
        found.apply(&mut auto);
        assert_eq!(auto.core().relay.external_v4, Some(Ipv4Addr::new(203, 0, 113, 7)));
        assert_eq!(auto.core().relay.external_v6, Some("2001:db8::7".parse().unwrap()));
        // Applied to the config it made, the config still validates (a reload).
        assert_eq!(auto.validate(), Ok(()));
        // A written address is never replaced.
        let mut fixed = parse("[relay]\nexternal-ipv4 = \"198.51.100.1\"\n");
        found.apply(&mut fixed);
        assert_eq!(fixed.core().relay.external_v4, Some(Ipv4Addr::new(198, 51, 100, 1)));
        // No fleet: nothing advertised.
        assert_eq!(auto.cluster.advertise_ipv4, None);
    }

    #[test]
    fn in_a_fleet_the_discovered_address_is_advertised_unless_one_is_written() {
        let found = Discovered { ipv4: Some(Ipv4Addr::new(203, 0, 113, 7)), ipv6: None };
        let fleet = "[[listen]]\ntransport = \"tcp\"\naddress = \"0.0.0.0:443\"\n\
                     [[listen]]\ntransport = \"udp\"\naddress = \"0.0.0.0:3478\"\n\
                     [relay]\nexternal-ipv4 = \"auto\"\nexternal-address-stun = \"192.0.2.1:3478\"\n\
                     [cluster]\nredis = \"redis://redis:6379/0\"\n";
        let mut config = parse(fleet);
        found.apply(&mut config);
        assert_eq!(config.cluster.advertise_ipv4, Some("203.0.113.7:3478".parse().unwrap()));
        assert_eq!(config.cluster.advertise_ipv6, None);
        let mut written = parse(&format!("{fleet}advertise-ipv4 = \"198.51.100.1:3478\"\n"));
        found.apply(&mut written);
        assert_eq!(written.cluster.advertise_ipv4, Some("198.51.100.1:3478".parse().unwrap()));
    }

    #[test]
    fn the_source_is_the_relay_bind_address_else_a_specific_udp_listener() {
        let config = parse(
            "[[listen]]\ntransport = \"tcp\"\naddress = \"192.0.2.9:3478\"\n\
             [[listen]]\ntransport = \"udp\"\naddress = \"0.0.0.0:3478\"\n\
             [[listen]]\ntransport = \"udp\"\naddress = \"192.0.2.5:3478\"\n",
        );
        assert_eq!(listen_source(&config.listen, true), "192.0.2.5".parse::<IpAddr>().unwrap());
        assert_eq!(listen_source(&config.listen, false), IpAddr::V6(Ipv6Addr::UNSPECIFIED));
    }

    #[test]
    fn nothing_is_asked_unless_a_family_is_auto() {
        let config = parse("[relay]\nexternal-ipv4 = \"203.0.113.7\"\n");
        assert_eq!(discover(&config.relay, &config.listen).unwrap(), Discovered::default());
    }
}
