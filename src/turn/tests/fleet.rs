//! The fleet's redirect decision (`turn::fleet`) on Allocate: RFC 8489 §10 300 Try
//! Alternate naming the node the cluster task reported, on injected time.

use super::*;
use crate::stun::attributes::AlternateDomain;
use crate::turn::fleet::{Alternate, Alternates, PerFamily, RedirectPolicy, RedirectReason};
use stun_codec::rfc5389::attributes::AlternateServer;

const TTL: Duration = Duration::from_secs(3);

fn to(address: &str, domain: &str) -> Option<Alternate> {
    Some(Alternate { address: addr(address), domain: Some(domain.into()) })
}

/// b serves IPv4 (UDP and TCP on 3478, TLS on 5349), c IPv6 (UDP and TLS).
fn alternates() -> Alternates {
    Alternates {
        udp: PerFamily {
            v4: to("203.0.113.20:3478", "b.turn.example.net"),
            v6: to("[2001:db8::20]:3478", "c.turn.example.net"),
        },
        tcp: PerFamily { v4: to("203.0.113.20:3478", "b.turn.example.net"), v6: None },
        tls: PerFamily {
            v4: to("203.0.113.20:5349", "b.turn.example.net"),
            v6: to("[2001:db8::20]:5349", "c.turn.example.net"),
        },
    }
}

fn fleet_harness(redirect: RedirectPolicy) -> Harness {
    let mut h = Harness::with_config(CoreConfig { redirect, ..config() });
    h.server.set_alternates(h.now, alternates(), TTL);
    h
}

fn alternate(response: &Message) -> Option<SocketAddr> {
    response.get_attribute::<AlternateServer>().map(|a| a.address())
}

#[test]
fn a_front_door_sends_every_allocate_to_the_reported_node_with_integrity() {
    let mut h = fleet_harness(RedirectPolicy { front: true, max_allocations: None });
    let response = h.allocate();
    assert_eq!(error_code(&response), Some(300));
    assert_eq!(alternate(&response), Some(addr("203.0.113.20:3478")));
    assert!(response.get_attribute::<AlternateDomain>().is_none(), "ALTERNATE-DOMAIN is for TLS clients");
    assert!(response.get_attribute::<crate::stun::attributes::MessageIntegrity>().is_some());
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.server.stats().redirects[RedirectReason::Front as usize], 1);
    // Binding is still answered by the front door itself.
    assert_eq!(h.request(stun_codec::rfc5389::methods::BINDING, vec![]).class(), MessageClass::SuccessResponse);
}

/// RFC 8489 §14.15/§14.16: a TLS client follows ALTERNATE-SERVER over TLS, so it is
/// named the node's TLS address, with the node's name to check its certificate.
#[test]
fn tls_clients_get_the_nodes_tls_address_and_its_domain() {
    let mut h = fleet_harness(RedirectPolicy { front: true, max_allocations: None });
    h.client.transport = Transport::Tls;
    let response = h.allocate();
    assert_eq!(error_code(&response), Some(300));
    assert_eq!(alternate(&response), Some(addr("203.0.113.20:5349")));
    let domain = response.get_attribute::<AlternateDomain>().map(|d| d.value().to_vec());
    assert_eq!(domain.as_deref(), Some(&b"b.turn.example.net"[..]));
    // An IPv6 TLS client is sent to the IPv6 node, with that node's name.
    h.client.client = addr("[2001:db8:1::5]:40000").into();
    let response = h.allocate();
    assert_eq!(alternate(&response), Some(addr("[2001:db8::20]:5349")));
    let domain = response.get_attribute::<AlternateDomain>().map(|d| d.value().to_vec());
    assert_eq!(domain.as_deref(), Some(&b"c.turn.example.net"[..]));
}

#[test]
fn a_tcp_client_is_named_a_node_serving_tcp_or_served_here() {
    let mut h = fleet_harness(RedirectPolicy { front: true, max_allocations: None });
    h.client.transport = Transport::Tcp;
    let response = h.allocate();
    assert_eq!(alternate(&response), Some(addr("203.0.113.20:3478")));
    assert!(response.get_attribute::<AlternateDomain>().is_none(), "ALTERNATE-DOMAIN is for TLS clients");
    // No node serves TCP over IPv6: the front serves the client rather than naming
    // a node that would not answer it.
    h.client.client = addr("[2001:db8:1::5]:40000").into();
    let response = h.allocate();
    assert_eq!(response.class(), MessageClass::SuccessResponse, "{response:?}");
}

#[test]
fn an_ipv6_client_is_sent_to_an_ipv6_node_or_served() {
    let mut h = fleet_harness(RedirectPolicy { front: true, max_allocations: None });
    h.client.client = addr("[2001:db8:1::5]:40000").into();
    assert_eq!(alternate(&h.allocate()), Some(addr("[2001:db8::20]:3478")));
    let mut h = Harness::with_config(CoreConfig {
        redirect: RedirectPolicy { front: true, max_allocations: None },
        ..config()
    });
    let mut facts = alternates();
    facts.udp.v6 = None;
    h.server.set_alternates(h.now, facts, TTL);
    h.client.client = addr("[2001:db8:1::5]:40000").into();
    let response = h.allocate();
    assert_ne!(error_code(&response), Some(300), "no IPv6 node: an IPv6 client is not sent to an IPv4 one");
}

#[test]
fn over_the_threshold_new_allocates_go_elsewhere_and_below_it_they_stay() {
    let mut h = fleet_harness(RedirectPolicy { front: false, max_allocations: Some(2) });
    for port in [40001, 40002] {
        h.client.client = SocketAddr::new(addr("198.51.100.1:1").ip(), port).into();
        assert_eq!(h.allocate().class(), MessageClass::SuccessResponse);
    }
    h.client.client = addr("198.51.100.1:40003").into();
    let response = h.allocate();
    assert_eq!((error_code(&response), alternate(&response)), (Some(300), Some(addr("203.0.113.20:3478"))));
    assert_eq!(h.server.stats().redirects[RedirectReason::Overloaded as usize], 1);
    // One ends: the next Allocate is served here again.
    h.client.client = addr("198.51.100.1:40001").into();
    h.request(REFRESH, vec![Lifetime::new(Duration::ZERO).unwrap().into()]);
    h.client.client = addr("198.51.100.1:40004").into();
    assert_eq!(h.allocate().class(), MessageClass::SuccessResponse);
}

#[test]
fn without_a_fresh_report_the_node_serves_itself() {
    let mut h = fleet_harness(RedirectPolicy { front: true, max_allocations: None });
    h.advance(TTL);
    assert_eq!(h.allocate().class(), MessageClass::SuccessResponse, "a report one TTL old names nobody");
    // A new report takes effect at once; an empty one (no other node) names nobody.
    h.client.client = addr("198.51.100.1:40100").into();
    h.server.set_alternates(h.now, alternates(), TTL);
    assert_eq!(error_code(&h.allocate()), Some(300));
    h.server.set_alternates(h.now, Alternates::default(), TTL);
    assert_eq!(h.allocate().class(), MessageClass::SuccessResponse);
}

#[test]
fn draining_prefers_the_fleets_node_to_the_static_alternate() {
    let mut h = fleet_harness(RedirectPolicy::default());
    assert_eq!(h.allocate().class(), MessageClass::SuccessResponse, "a serving node under no threshold serves");
    h.server.drain(Some(addr("192.0.2.99:3478")));
    h.client.client = addr("198.51.100.1:40100").into();
    assert_eq!(alternate(&h.allocate()), Some(addr("203.0.113.20:3478")));
    h.advance(TTL);
    h.client.client = addr("198.51.100.1:40101").into();
    assert_eq!(alternate(&h.allocate()), Some(addr("192.0.2.99:3478")), "stale: the static alternate-server");
    assert_eq!(h.server.stats().redirects[RedirectReason::Draining as usize], 2);
}

#[test]
fn the_fleets_counts_hold_a_users_quota_here() {
    let quotas = crate::turn::Quotas { allocations_per_user: 2, ..CoreConfig::default().quotas };
    let mut h = Harness::with_config(CoreConfig { quotas, ..config() });
    let alice = crate::turn::tenant::UserKey::new(crate::turn::TenantId::default(), h.user);
    h.ledger.lock().unwrap().set_remote_counts([(alice.clone(), 1)]);
    assert_eq!(h.allocate().class(), MessageClass::SuccessResponse, "one here plus one elsewhere is the quota");
    h.client.client = addr("198.51.100.1:40100").into();
    assert_eq!(error_code(&h.allocate()), Some(486));
    // The other node's allocation ended: the next read says so.
    h.ledger.lock().unwrap().set_remote_counts([(alice, 0)]);
    assert_eq!(h.allocate().class(), MessageClass::SuccessResponse);
}
