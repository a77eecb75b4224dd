//! One usage record, made from an `AllocationEnded` event.

use crate::turn::{EndReason, Event, TenantId, Transport};
use serde::Serialize;

/// One ended allocation, as written to the usage sinks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageRecord {
    /// The node that served it.
    pub node: String,
    /// The user (as authenticated; a TURN REST username includes its expiry).
    pub user: String,
    /// The realm (tenant) it was in; empty if the tenant was removed meanwhile.
    pub realm: String,
    /// `udp`, `tcp` or `tls`.
    pub transport: &'static str,
    /// The client's address.
    pub client: String,
    /// The (first) relay address.
    pub relay: String,
    /// When it started, milliseconds since the Unix epoch.
    pub start_ms: u64,
    /// When it ended, milliseconds since the Unix epoch.
    pub end_ms: u64,
    /// Payload bytes, client to peer.
    pub bytes_to_peer: u64,
    /// Datagrams, client to peer.
    pub packets_to_peer: u64,
    /// Payload bytes, peer to client.
    pub bytes_to_client: u64,
    /// Datagrams, peer to client.
    pub packets_to_client: u64,
    /// `expired`, `deleted` (the client's Refresh with lifetime 0) or `closed`.
    pub reason: &'static str,
}

impl UsageRecord {
    /// The record of `event` if it is an `AllocationEnded` (else `None`), ended at
    /// `end_ms`; `realm_of` names a tenant's realm.
    pub fn of(event: &Event, node: &str, end_ms: u64, realm_of: impl Fn(TenantId) -> Option<String>) -> Option<Self> {
        let Event::AllocationEnded { five_tuple, relay, username, reason, traffic, duration, .. } = event else {
            return None;
        };
        let lived = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        Some(UsageRecord {
            node: node.to_owned(),
            user: username.clone(),
            realm: realm_of(five_tuple.tenant).unwrap_or_default(),
            transport: match five_tuple.transport {
                Transport::Udp => "udp",
                Transport::Tcp => "tcp",
                Transport::Tls => "tls",
            },
            client: five_tuple.client.to_string(),
            relay: relay.to_string(),
            start_ms: end_ms.saturating_sub(lived),
            end_ms,
            bytes_to_peer: traffic.to_peer_bytes,
            packets_to_peer: traffic.to_peer_packets,
            bytes_to_client: traffic.to_client_bytes,
            packets_to_client: traffic.to_client_packets,
            reason: match reason {
                EndReason::Expired => "expired",
                EndReason::Deleted => "deleted",
                EndReason::Closed => "closed",
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::turn::allocation::Traffic;
    use crate::turn::{AllocationId, FiveTuple};
    use std::time::Duration;

    #[test]
    fn an_ended_allocation_makes_one_record_and_nothing_else_does() {
        let five_tuple = FiveTuple {
            transport: Transport::Udp,
            client: "198.51.100.7:40000".parse::<std::net::SocketAddr>().unwrap().into(),
            server: "192.0.2.1:3478".parse().unwrap(),
            tenant: TenantId::default(),
        };
        let traffic = Traffic { to_peer_packets: 2, to_peer_bytes: 200, to_client_packets: 3, to_client_bytes: 300 };
        let event = Event::AllocationEnded {
            id: AllocationId(7),
            five_tuple,
            relay: "192.0.2.1:50000".parse().unwrap(),
            username: "alice".into(),
            reason: EndReason::Deleted,
            traffic,
            duration: Duration::from_millis(1500),
        };
        let record = UsageRecord::of(&event, "b", 10_000, |_| Some("example.org".into())).unwrap();
        let json = serde_json::to_string(&record).unwrap();
        assert_eq!(
            json,
            r#"{"node":"b","user":"alice","realm":"example.org","transport":"udp","client":"198.51.100.7:40000","relay":"192.0.2.1:50000","start_ms":8500,"end_ms":10000,"bytes_to_peer":200,"packets_to_peer":2,"bytes_to_client":300,"packets_to_client":3,"reason":"deleted"}"#
        );
        let other = Event::AllocationRefreshed { id: AllocationId(7), lifetime: Duration::from_secs(600) };
        assert_eq!(UsageRecord::of(&other, "b", 0, |_| None), None);
    }
}
