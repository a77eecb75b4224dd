//! `[nat-discovery]`: RFC 5780 NAT behaviour discovery, and the primary and alternate
//! addresses it answers from.

use super::{Config, ListenTransport};
use crate::turn::NatDiscovery;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};

/// `[nat-discovery]`: RFC 5780 NAT behaviour discovery on Binding (as coturn's
/// `--rfc5780`); see `turn::nat_discovery`. Off unless `alternate-address` is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct NatDiscoveryConfig {
    /// A second IP address of this host, of the primary's family: the primary is the
    /// first UDP `[[listen]]` of that family, which must name a specific address and port.
    pub alternate_address: Option<IpAddr>,
    /// The alternate port (default: the primary's port + 1).
    pub alternate_port: Option<u16>,
}

impl Config {
    /// The RFC 5780 addresses (`None`: discovery is off), or what is wrong with them.
    pub fn nat_discovery_addresses(&self) -> Result<Option<NatDiscovery>, (&'static str, String)> {
        const KEY: &str = "nat-discovery.alternate-address";
        let n = &self.nat_discovery;
        let Some(alternate_ip) = n.alternate_address else {
            if n.alternate_port.is_some() {
                return Err(("nat-discovery.alternate-port", "needs nat-discovery.alternate-address".into()));
            }
            return Ok(None);
        };
        if alternate_ip.is_unspecified() || alternate_ip.is_multicast() {
            return Err((KEY, format!("{alternate_ip} is not an address of this host to answer from")));
        }
        let primary = self
            .listen
            .iter()
            .find(|l| l.transport == ListenTransport::Udp && l.address.is_ipv4() == alternate_ip.is_ipv4())
            .map(|l| l.address)
            .ok_or((KEY, format!("needs a udp [[listen]] of the same family as {alternate_ip} (the primary)")))?;
        if primary.ip().is_unspecified() || primary.port() == 0 {
            return Err((
                KEY,
                format!(
                    "the primary, the first udp [[listen]] of its family, must have a specific address and port, not {primary}"
                ),
            ));
        }
        if primary.ip() == alternate_ip {
            return Err((KEY, format!("must differ from the primary address {}", primary.ip())));
        }
        let alternate_port = match n.alternate_port {
            Some(port) => port,
            None => primary
                .port()
                .checked_add(1)
                .ok_or(("nat-discovery.alternate-port", "needed: the primary port is 65535".to_owned()))?,
        };
        if alternate_port == 0 || alternate_port == primary.port() {
            return Err((
                "nat-discovery.alternate-port",
                format!("must be a port other than 0 and the primary's {}", primary.port()),
            ));
        }
        Ok(Some(NatDiscovery { primary, alternate: SocketAddr::new(alternate_ip, alternate_port) }))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::parse;

    #[test]
    fn nat_discovery_is_off_unless_an_alternate_address_is_set_and_is_checked() {
        let listen = "[[listen]]\ntransport = \"udp\"\naddress = \"192.0.2.1:3478\"\n";
        assert_eq!(parse(listen).unwrap().core().nat_discovery, None);
        let on = parse(&format!("{listen}[nat-discovery]\nalternate-address = \"192.0.2.3\"\n")).unwrap();
        let d = on.core().nat_discovery.unwrap();
        assert_eq!((d.primary, d.alternate), ("192.0.2.1:3478".parse().unwrap(), "192.0.2.3:3479".parse().unwrap()));
        let port =
            parse(&format!("{listen}[nat-discovery]\nalternate-address = \"192.0.2.3\"\nalternate-port = 4000\n"));
        assert_eq!(port.unwrap().core().nat_discovery.unwrap().alternate.port(), 4000);
        for (text, expected) in [
            (format!("{listen}[nat-discovery]\nalternate-address = \"192.0.2.1\"\n"), "t.toml:5: `nat-discovery.alternate-address`: must differ"),
            (format!("{listen}[nat-discovery]\nalternate-address = \"2001:db8::1\"\n"), "t.toml:5: `nat-discovery.alternate-address`: needs a udp"),
            (format!("{listen}[nat-discovery]\nalternate-port = 4000\n"), "t.toml:5: `nat-discovery.alternate-port`: needs"),
            (format!("{listen}[nat-discovery]\nalternate-address = \"192.0.2.3\"\nalternate-port = 3478\n"), "t.toml:6: `nat-discovery.alternate-port`: must be"),
            ("[[listen]]\ntransport = \"udp\"\naddress = \"0.0.0.0:3478\"\n[nat-discovery]\nalternate-address = \"192.0.2.3\"\n".to_owned(), "specific address and port"),
        ] {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.starts_with(expected) || err.contains(expected), "{err}");
        }
    }
}
