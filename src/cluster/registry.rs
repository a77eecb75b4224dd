//! The node registry's entries: what a node publishes, how an entry read back is
//! checked (nothing from Redis is trusted as it comes), and which node a redirect names.

use crate::config::{is_advertisable, is_domain, is_node_id};
use crate::turn::allocation::Family;
use crate::turn::fleet::{Alternate, Alternates, PerFamily};
use crate::turn::Transport;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// The most nodes read from the registry; entries past this are not looked at.
pub const MAX_NODES: usize = 256;
/// The largest entry accepted (a real one is about 250 bytes).
pub const MAX_ENTRY_BYTES: usize = 2048;

/// Whether a node takes new allocations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Takes new allocations: may be named in a redirect.
    Serving,
    /// Draining before exit: never named.
    Draining,
    /// A front door: sends Allocates away, never named.
    Front,
}

/// A node's addresses for the clients of one transport, per family (`null`: it does
/// not serve that transport over that family).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Addresses {
    /// For IPv4 clients.
    pub ipv4: Option<SocketAddr>,
    /// For IPv6 clients.
    pub ipv6: Option<SocketAddr>,
}

impl Addresses {
    fn of(&self, family: Family) -> Option<SocketAddr> {
        match family {
            Family::V4 => self.ipv4,
            Family::V6 => self.ipv6,
        }
    }
}

/// One node's registry entry (JSON under `PREFIX:node:ID`, expiring after the TTL).
///
/// Fields unknown to this version are ignored rather than refused, so that a node of
/// the next version, adding fields, is still read by this one during a rolling
/// upgrade. Fields added since the first version are optional for the same reason
/// the other way round: an entry of the previous version (no `tcp`, `tls`, `cpu`)
/// is read as a node serving UDP and TCP at `ipv4`/`ipv6`, which is what that
/// version's nodes did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    /// The node id.
    pub id: String,
    /// Whether it takes new allocations.
    pub state: NodeState,
    /// Where IPv4 UDP clients are sent (and TCP ones, in an entry without `tcp`).
    pub ipv4: Option<SocketAddr>,
    /// Where IPv6 UDP clients are sent (and TCP ones, in an entry without `tcp`).
    pub ipv6: Option<SocketAddr>,
    /// Where TCP clients are sent; absent in entries of the previous version.
    #[serde(default)]
    pub tcp: Option<Addresses>,
    /// Where TLS clients are sent; absent (or null): none are.
    #[serde(default)]
    pub tls: Option<Addresses>,
    /// Its TLS name (ALTERNATE-DOMAIN).
    pub domain: Option<String>,
    /// Allocations in force.
    pub allocations: u64,
    /// `max-allocations`, if set.
    pub capacity: Option<u64>,
    /// Relayed payload, bits per second (both directions), over the last interval.
    pub relayed_bps: u64,
    /// The process's CPU use over the last interval, in thousandths of one core
    /// (user and system time; 1000 is one core busy, more on several workers);
    /// absent in entries of the previous version, or when it could not be read.
    #[serde(default)]
    pub cpu_millicores: Option<u64>,
    /// Wall-clock time of the publish, milliseconds since the Unix epoch.
    pub unix_ms: u64,
}

impl NodeEntry {
    /// The load that ranks nodes: the fraction of capacity in use, in millionths
    /// (allocations themselves when no capacity is set, scaled the same way).
    pub fn load(&self) -> u64 {
        match self.capacity {
            Some(capacity) if capacity > 0 => self.allocations.saturating_mul(1_000_000) / capacity,
            _ => self.allocations.saturating_mul(1_000_000),
        }
    }

    /// Its address for clients of `transport` and `family`, if it serves them.
    pub fn address(&self, transport: Transport, family: Family) -> Option<SocketAddr> {
        let udp = Addresses { ipv4: self.ipv4, ipv6: self.ipv6 };
        match transport {
            Transport::Udp => udp.of(family),
            // The previous version advertised one address for UDP and TCP.
            Transport::Tcp => self.tcp.unwrap_or(udp).of(family),
            Transport::Tls => self.tls.and_then(|tls| tls.of(family)),
        }
    }

    /// Whether the node is full: at or over its capacity.
    fn full(&self) -> bool {
        self.capacity.is_some_and(|c| self.allocations >= c)
    }
}

/// Why an entry read back was ignored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadEntry {
    /// Larger than [`MAX_ENTRY_BYTES`].
    #[error("entry of {0} bytes is too large")]
    TooLarge(usize),
    /// Not the JSON of a [`NodeEntry`].
    #[error("entry does not parse: {0}")]
    Parse(String),
    /// A field failed a check.
    #[error("entry has a bad {0}")]
    Field(&'static str),
}

/// Parses and checks one entry read from Redis.
pub fn parse_entry(bytes: &[u8]) -> Result<NodeEntry, BadEntry> {
    if bytes.len() > MAX_ENTRY_BYTES {
        return Err(BadEntry::TooLarge(bytes.len()));
    }
    let entry: NodeEntry = serde_json::from_slice(bytes).map_err(|e| BadEntry::Parse(e.to_string()))?;
    if !is_node_id(&entry.id) {
        return Err(BadEntry::Field("id"));
    }
    let none = Addresses::default();
    for (field, addresses) in [
        ("ipv4", Addresses { ipv4: entry.ipv4, ipv6: None }),
        ("ipv6", Addresses { ipv4: None, ipv6: entry.ipv6 }),
        ("tcp", entry.tcp.unwrap_or(none)),
        ("tls", entry.tls.unwrap_or(none)),
    ] {
        let bad_v4 = addresses.ipv4.is_some_and(|a| !a.is_ipv4() || !is_advertisable(a));
        let bad_v6 = addresses.ipv6.is_some_and(|a| !a.is_ipv6() || !is_advertisable(a));
        if bad_v4 || bad_v6 {
            return Err(BadEntry::Field(field));
        }
    }
    if entry.domain.as_deref().is_some_and(|d| !is_domain(d)) {
        return Err(BadEntry::Field("domain"));
    }
    Ok(entry)
}

/// The alternates for this node (`me`): per client transport and family, the
/// least-loaded serving node other than `me` that is not full and has an address
/// for that transport and family, ties broken by id so every node agrees. The TLS
/// name of each goes with it.
pub fn choose(entries: &[NodeEntry], me: &str) -> Alternates {
    let best = |transport: Transport, family: Family| {
        entries
            .iter()
            .filter(|e| e.id != me && e.state == NodeState::Serving && !e.full())
            .filter_map(|e| e.address(transport, family).map(|address| (e, address)))
            .min_by(|(a, _), (b, _)| (a.load(), &a.id).cmp(&(b.load(), &b.id)))
            .map(|(e, address)| Alternate { address, domain: e.domain.clone() })
    };
    let per_family = |transport| PerFamily { v4: best(transport, Family::V4), v6: best(transport, Family::V6) };
    Alternates { udp: per_family(Transport::Udp), tcp: per_family(Transport::Tcp), tls: per_family(Transport::Tls) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, allocations: u64) -> NodeEntry {
        NodeEntry {
            id: id.into(),
            state: NodeState::Serving,
            ipv4: Some(format!("192.0.2.{}:3478", id.len()).parse().unwrap()),
            ipv6: None,
            tcp: None,
            tls: None,
            domain: None,
            allocations,
            capacity: Some(10),
            relayed_bps: 0,
            cpu_millicores: Some(250),
            unix_ms: 1,
        }
    }

    #[test]
    fn the_least_loaded_serving_other_node_is_named() {
        let mut draining = entry("dd", 0);
        draining.state = NodeState::Draining;
        let entries = [entry("a", 5), entry("bbb", 2), draining, entry("me", 0), entry("full", 10)];
        let chosen = choose(&entries, "me");
        assert_eq!(chosen.udp.v4.map(|a| a.address), Some("192.0.2.3:3478".parse().unwrap()));
        assert_eq!(chosen.udp.v6, None);
    }

    #[test]
    fn each_transport_names_the_least_loaded_node_serving_it_at_its_address_for_it() {
        let mut tls_only = entry("t", 3);
        tls_only.ipv4 = None;
        tls_only.tcp = Some(Addresses::default());
        tls_only.tls = Some(Addresses { ipv4: Some("192.0.2.50:5349".parse().unwrap()), ipv6: None });
        tls_only.domain = Some("t.example.net".into());
        let mut udp_only = entry("u", 0);
        udp_only.tcp = Some(Addresses::default());
        let mut both = entry("both", 5);
        both.tcp = Some(Addresses { ipv4: Some("192.0.2.60:443".parse().unwrap()), ipv6: None });
        both.tls = Some(Addresses { ipv4: Some("192.0.2.60:5349".parse().unwrap()), ipv6: None });
        let chosen = choose(&[tls_only, udp_only, both], "me");
        let address = |a: &Option<Alternate>| a.as_ref().map(|a| a.address.to_string());
        assert_eq!(address(&chosen.udp.v4).as_deref(), Some("192.0.2.1:3478"), "u is the least loaded");
        assert_eq!(address(&chosen.tcp.v4).as_deref(), Some("192.0.2.60:443"), "u serves no TCP");
        assert_eq!(address(&chosen.tls.v4).as_deref(), Some("192.0.2.50:5349"));
        assert_eq!(chosen.tls.v4.and_then(|a| a.domain).as_deref(), Some("t.example.net"));
        assert_eq!(chosen.tls.v6, None);
    }

    /// A node of the previous version publishes no `tcp`, `tls` nor `cpu_millicores`:
    /// it is read as serving UDP and TCP at its one address per family, and no TLS.
    #[test]
    fn an_entry_of_the_previous_version_serves_udp_and_tcp() {
        let old = br#"{"id":"old","state":"serving","ipv4":"192.0.2.9:3478","ipv6":null,"domain":"old.example.net","allocations":0,"capacity":null,"relayed_bps":0,"unix_ms":1}"#;
        let entry = parse_entry(old).unwrap();
        assert_eq!((entry.tcp, entry.tls, entry.cpu_millicores), (None, None, None));
        let chosen = choose(&[entry], "me");
        assert_eq!(chosen.tcp.v4.map(|a| a.address), Some("192.0.2.9:3478".parse().unwrap()));
        assert_eq!(chosen.tls, PerFamily::default(), "an old node's advertised port is not a TLS port");
        // And a field of a later version does not make an entry unreadable.
        let newer = br#"{"id":"new","state":"serving","ipv4":null,"ipv6":null,"domain":null,"allocations":0,"capacity":null,"relayed_bps":0,"unix_ms":1,"quic":{"ipv4":"192.0.2.9:443"}}"#;
        assert!(parse_entry(newer).is_ok());
    }

    #[test]
    fn no_other_node_means_no_alternate() {
        assert_eq!(choose(&[entry("me", 0)], "me"), Alternates::default());
    }

    #[test]
    fn entries_round_trip_and_bad_ones_are_refused() {
        let good = entry("node-1", 3);
        assert_eq!(parse_entry(&serde_json::to_vec(&good).unwrap()), Ok(good.clone()));
        assert!(matches!(parse_entry(b"{not json"), Err(BadEntry::Parse(_))));
        assert_eq!(parse_entry(&vec![b' '; MAX_ENTRY_BYTES + 1]), Err(BadEntry::TooLarge(MAX_ENTRY_BYTES + 1)));
        let mut bad = good.clone();
        bad.ipv4 = Some("0.0.0.0:3478".parse().unwrap());
        assert_eq!(parse_entry(&serde_json::to_vec(&bad).unwrap()), Err(BadEntry::Field("ipv4")));
        let mut bad = good.clone();
        bad.ipv4 = Some("[2001:db8::1]:3478".parse().unwrap());
        assert_eq!(parse_entry(&serde_json::to_vec(&bad).unwrap()), Err(BadEntry::Field("ipv4")));
        let mut bad = good.clone();
        bad.tls = Some(Addresses { ipv4: Some("[2001:db8::1]:5349".parse().unwrap()), ipv6: None });
        assert_eq!(parse_entry(&serde_json::to_vec(&bad).unwrap()), Err(BadEntry::Field("tls")));
        let mut bad = good.clone();
        bad.tcp = Some(Addresses { ipv4: None, ipv6: Some("[::]:3478".parse().unwrap()) });
        assert_eq!(parse_entry(&serde_json::to_vec(&bad).unwrap()), Err(BadEntry::Field("tcp")));
        let mut bad = good.clone();
        bad.id = "x y".into();
        assert_eq!(parse_entry(&serde_json::to_vec(&bad).unwrap()), Err(BadEntry::Field("id")));
        let mut bad = good;
        bad.domain = Some("a..b".into());
        assert_eq!(parse_entry(&serde_json::to_vec(&bad).unwrap()), Err(BadEntry::Field("domain")));
    }
}
