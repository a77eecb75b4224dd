//! The node registry's entries: what a node publishes, how an entry read back is
//! checked (nothing from Redis is trusted as it comes), and which node a redirect names.

use crate::config::{is_advertisable, is_domain, is_node_id};
use crate::turn::fleet::Alternates;
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

/// One node's registry entry (JSON under `PREFIX:node:ID`, expiring after the TTL).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    /// The node id.
    pub id: String,
    /// Whether it takes new allocations.
    pub state: NodeState,
    /// Where IPv4 clients are sent.
    pub ipv4: Option<SocketAddr>,
    /// Where IPv6 clients are sent.
    pub ipv6: Option<SocketAddr>,
    /// Its TLS name (ALTERNATE-DOMAIN).
    pub domain: Option<String>,
    /// Allocations in force.
    pub allocations: u64,
    /// `max-allocations`, if set.
    pub capacity: Option<u64>,
    /// Relayed payload, bits per second (both directions), over the last interval.
    pub relayed_bps: u64,
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
    if entry.ipv4.is_some_and(|a| !a.is_ipv4() || !is_advertisable(a)) {
        return Err(BadEntry::Field("ipv4"));
    }
    if entry.ipv6.is_some_and(|a| !a.is_ipv6() || !is_advertisable(a)) {
        return Err(BadEntry::Field("ipv6"));
    }
    if entry.domain.as_deref().is_some_and(|d| !is_domain(d)) {
        return Err(BadEntry::Field("domain"));
    }
    Ok(entry)
}

/// The alternates for this node (`me`): per family, the least-loaded serving node
/// other than `me` that is not full, ties broken by id so every node agrees. The
/// TLS name of each goes with it.
pub fn choose(entries: &[NodeEntry], me: &str) -> Alternates {
    let candidates = || entries.iter().filter(|e| e.id != me && e.state == NodeState::Serving && !e.full());
    let best = |has: fn(&NodeEntry) -> Option<SocketAddr>| {
        candidates().filter(|e| has(e).is_some()).min_by(|a, b| (a.load(), &a.id).cmp(&(b.load(), &b.id)))
    };
    let v4 = best(|e| e.ipv4);
    let v6 = best(|e| e.ipv6);
    Alternates {
        v4: v4.and_then(|e| e.ipv4),
        v6: v6.and_then(|e| e.ipv6),
        v4_domain: v4.and_then(|e| e.domain.clone()),
        v6_domain: v6.and_then(|e| e.domain.clone()),
    }
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
            domain: None,
            allocations,
            capacity: Some(10),
            relayed_bps: 0,
            unix_ms: 1,
        }
    }

    #[test]
    fn the_least_loaded_serving_other_node_is_named() {
        let mut draining = entry("dd", 0);
        draining.state = NodeState::Draining;
        let entries = [entry("a", 5), entry("bbb", 2), draining, entry("me", 0), entry("full", 10)];
        let chosen = choose(&entries, "me");
        assert_eq!(chosen.v4, Some("192.0.2.3:3478".parse().unwrap()));
        assert_eq!(chosen.v6, None);
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
        bad.id = "x y".into();
        assert_eq!(parse_entry(&serde_json::to_vec(&bad).unwrap()), Err(BadEntry::Field("id")));
        let mut bad = good;
        bad.domain = Some("a..b".into());
        assert_eq!(parse_entry(&serde_json::to_vec(&bad).unwrap()), Err(BadEntry::Field("domain")));
    }
}
