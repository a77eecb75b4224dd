//! Allocate, Refresh and expiry, relay ports and reservations, address families, draining (RFC 8656 §7, §8).

use super::*;

#[test]
fn allocate_succeeds_with_protected_response_and_relay_address() {
    let mut h = Harness::new();
    let response = h.allocate();
    assert_eq!(response.class(), MessageClass::SuccessResponse);
    let relay = response.get_attribute::<XorRelayAddress>().unwrap().address();
    assert_eq!(relay, h.relay_addr());
    assert_eq!(relay.ip(), h.client.server.ip(), "the relay binds the address the request came to");
    assert!((50000..=50009).contains(&relay.port()));
    assert_eq!(response.get_attribute::<Lifetime>().unwrap().lifetime(), Duration::from_secs(600));
    assert_eq!(response.get_attribute::<XorMappedAddress>().unwrap().address(), h.client.client.get());
}

#[test]
fn external_address_is_advertised_while_the_private_one_is_bound() {
    let mut c = config();
    c.relay.external_v4 = Some("203.0.113.7".parse().unwrap());
    let mut h = Harness::with_config(c);
    let relay = h.allocate().get_attribute::<XorRelayAddress>().unwrap().address();
    assert_eq!(relay.ip().to_string(), "203.0.113.7");
    assert_eq!(h.relay_addr().ip().to_string(), "10.0.0.1");
}

#[test]
fn rfc8656_7_2_allocation_expires_and_its_port_returns() {
    let mut h = Harness::new();
    h.allocate();
    assert_eq!(h.port_usage().0, 1);
    h.advance(Duration::from_secs(599));
    assert_eq!(h.server.allocation_count(), 1);
    h.advance(Duration::from_secs(1));
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.closed, vec![h.allocation_id()]);
    assert_eq!(h.port_usage().0, 0);
    assert!(h.events.iter().any(|e| matches!(e, Event::AllocationEnded { reason: EndReason::Expired, .. })));
}

#[test]
fn rfc8656_7_3_refresh_extends_and_lifetime_zero_deletes() {
    let mut h = Harness::new();
    h.allocate();
    h.advance(Duration::from_secs(500));
    let response = h.request(REFRESH, vec![Lifetime::new(Duration::from_secs(600)).unwrap().into()]);
    assert_eq!(response.class(), MessageClass::SuccessResponse);
    h.advance(Duration::from_secs(500));
    assert_eq!(h.server.allocation_count(), 1, "refreshed allocation outlives its first lifetime");
    let response = h.request(REFRESH, vec![Lifetime::new(Duration::ZERO).unwrap().into()]);
    assert_eq!(response.get_attribute::<Lifetime>().unwrap().lifetime(), Duration::ZERO);
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.closed.len(), 1);
}

#[test]
fn lifetime_is_capped_by_the_configured_maximum() {
    let mut h = Harness::new();
    h.allocate();
    let response = h.request(REFRESH, vec![Lifetime::new(Duration::from_secs(100_000)).unwrap().into()]);
    assert_eq!(response.get_attribute::<Lifetime>().unwrap().lifetime(), Duration::from_secs(3600));
}

#[test]
fn port_exhaustion_gives_508() {
    let mut c = config();
    c.port_range = 50000..=50000;
    let mut h = Harness::with_config(c);
    assert_eq!(h.allocate().class(), MessageClass::SuccessResponse);
    h.client.client = addr("198.51.100.1:40001").into();
    assert_eq!(error_code(&h.allocate()), Some(508));
}

#[test]
fn a_port_taken_by_another_process_is_skipped() {
    let mut h = Harness::new();
    h.bind_failures = vec![RelayBindError::AddrInUse, RelayBindError::AddrInUse];
    assert_eq!(h.allocate().class(), MessageClass::SuccessResponse);
    assert_eq!(h.port_usage().0, 1, "failed ports went back to the pool");
}

#[test]
fn rfc8656_5_tuple_mismatch_gives_437() {
    let mut h = Harness::new();
    h.allocate();
    // A second Allocate (new transaction) on the same 5-tuple.
    assert_eq!(error_code(&h.allocate()), Some(437));
    // A Refresh from another 5-tuple that has no allocation.
    h.client.client = addr("198.51.100.1:40002").into();
    assert_eq!(error_code(&h.request(REFRESH, vec![])), Some(437));
}

#[test]
fn allocate_retransmission_gets_the_same_relay() {
    let mut h = Harness::new();
    h.allocate();
    // Reuse the last transaction id: RFC 8656 §7.2 treats it as a retransmission.
    h.next_tid -= 1;
    let retransmit = h.authenticated(ALLOCATE, vec![RequestedTransport::new(17).into()]);
    let again = message::decode(&h.send_raw(&retransmit)[0]).unwrap().message;
    assert_eq!(again.class(), MessageClass::SuccessResponse);
    assert_eq!(again.get_attribute::<XorRelayAddress>().unwrap().address(), h.relay_addr());
    assert_eq!(h.opened.len(), 1, "no second relay socket");
}

#[test]
fn rfc8656_7_2_unknown_transport_442_and_tcp_over_udp_400() {
    let mut h = Harness::new();
    let response = h.request(ALLOCATE, vec![RequestedTransport::new(132).into()]);
    assert_eq!(error_code(&response), Some(442));
    // RFC 6062 §5.1: a TCP relay needs a TCP or TLS control connection.
    let response = h.request(ALLOCATE, vec![RequestedTransport::new(6).into()]);
    assert_eq!(error_code(&response), Some(400));
    let response = h.request(ALLOCATE, vec![]);
    assert_eq!(error_code(&response), Some(400));
}

#[test]
fn even_port_with_reservation_then_token_gets_the_next_port() {
    let mut h = Harness::new();
    let response = h.request(ALLOCATE, vec![RequestedTransport::new(17).into(), EvenPort::new(true).into()]);
    let relay = response.get_attribute::<XorRelayAddress>().unwrap().address();
    assert_eq!(relay.port() % 2, 0);
    let token = response.get_attribute::<ReservationToken>().unwrap().token();
    h.client.client = addr("198.51.100.1:40003").into();
    let second = h.request(ALLOCATE, vec![RequestedTransport::new(17).into(), ReservationToken::new(token).into()]);
    assert_eq!(second.get_attribute::<XorRelayAddress>().unwrap().address().port(), relay.port() + 1);
    // Reservations expire after 30 s and a used token is gone.
    h.client.client = addr("198.51.100.1:40004").into();
    let third = h.request(ALLOCATE, vec![RequestedTransport::new(17).into(), ReservationToken::new(token).into()]);
    assert_eq!(error_code(&third), Some(508));
}

#[test]
fn reservation_expires_and_frees_the_port() {
    let mut h = Harness::new();
    h.request(ALLOCATE, vec![RequestedTransport::new(17).into(), EvenPort::new(true).into()]);
    assert_eq!(h.port_usage().0, 2);
    h.advance(Duration::from_secs(31));
    assert_eq!(h.port_usage().0, 1);
}

fn family_attr(v6: bool, additional: bool) -> Attribute {
    use stun_codec::rfc8656::attributes::{AdditionalAddressFamily, AddressFamily, RequestedAddressFamily};
    let family = if v6 { AddressFamily::V6 } else { AddressFamily::V4 };
    if additional {
        AdditionalAddressFamily::new(family).into()
    } else {
        RequestedAddressFamily::new(family).into()
    }
}

fn relayed(m: &Message) -> Vec<SocketAddr> {
    m.attributes()
        .filter_map(|a| stun_codec::convert::TryAsRef::<XorRelayAddress>::try_as_ref(a))
        .map(|r| r.address())
        .collect()
}

#[test]
fn rfc8656_ipv6_relay_needs_an_ipv6_address_440() {
    let mut h = Harness::new();
    let response = h.request(ALLOCATE, vec![RequestedTransport::new(17).into(), family_attr(true, false)]);
    assert_eq!(error_code(&response), Some(440));
}

#[test]
fn rfc8656_ipv6_relay_serves_ipv6_peers_only() {
    let mut c = config();
    c.relay.bind_v6 = Some("2001:db8::10".parse().unwrap());
    c.policy = PeerPolicy::new(vec!["2001:db8::/32".parse().unwrap(), "192.0.2.0/24".parse().unwrap()], vec![]);
    let mut h = Harness::with_config(c);
    let response = h.request(ALLOCATE, vec![RequestedTransport::new(17).into(), family_attr(true, false)]);
    assert_eq!(relayed(&response)[0].ip().to_string(), "2001:db8::10");
    let v6_peer = XorPeerAddress::new(addr("[2001:db8::99]:5000"));
    assert_eq!(h.request(CREATE_PERMISSION, vec![v6_peer.into()]).class(), MessageClass::SuccessResponse);
    let v4_peer = XorPeerAddress::new(addr(PEER));
    assert_eq!(error_code(&h.request(CREATE_PERMISSION, vec![v4_peer.into()])), Some(443));
    let framed = h.peer_packet("[2001:db8::99]:5000", b"six").unwrap();
    let decoded = message::decode(&framed).unwrap().message;
    assert_eq!(decoded.get_attribute::<XorPeerAddress>().unwrap().address(), addr("[2001:db8::99]:5000"));
}

#[test]
fn rfc8656_dual_stack_allocation_gets_two_relays() {
    let mut c = config();
    c.relay.bind_v6 = Some("2001:db8::10".parse().unwrap());
    let mut h = Harness::with_config(c);
    let response = h.request(ALLOCATE, vec![RequestedTransport::new(17).into(), family_attr(true, true)]);
    let relays = relayed(&response);
    assert_eq!(relays.len(), 2, "{response:?}");
    assert!(relays[0].is_ipv4() && relays[1].is_ipv6());
    assert_eq!(h.opened.len(), 2);
    // Both families accept permissions; deleting releases both ports.
    assert_eq!(h.port_usage().0, 2);
    h.request(REFRESH, vec![Lifetime::new(Duration::ZERO).unwrap().into()]);
    assert_eq!(h.port_usage().0, 0);
}

#[test]
fn rfc8656_dual_stack_without_ipv6_reports_address_error_code() {
    let mut h = Harness::new();
    let response = h.request(ALLOCATE, vec![RequestedTransport::new(17).into(), family_attr(true, true)]);
    assert_eq!(response.class(), MessageClass::SuccessResponse);
    assert_eq!(relayed(&response).len(), 1);
    let error = response.get_attribute::<crate::stun::attributes::AddressErrorCode>().unwrap();
    assert_eq!(error.value(), &[0x02, 0, 4, 40]);
}

#[test]
fn rfc8656_contradictory_family_attributes_get_400() {
    let mut h = Harness::new();
    let attrs = vec![RequestedTransport::new(17).into(), family_attr(false, false), family_attr(true, true)];
    assert_eq!(error_code(&h.request(ALLOCATE, attrs)), Some(400));
    let attrs = vec![RequestedTransport::new(17).into(), family_attr(false, true)];
    assert_eq!(error_code(&h.request(ALLOCATE, attrs)), Some(400), "ADDITIONAL-ADDRESS-FAMILY must be IPv6");
}

#[test]
fn draining_turns_new_allocations_away_and_keeps_old_ones() {
    let mut h = Harness::new();
    h.allocate();
    h.server.drain(Some(addr("203.0.113.9:3478")));
    // The existing allocation refreshes and relays.
    assert_eq!(h.request(REFRESH, vec![]).class(), MessageClass::SuccessResponse);
    h.request(CHANNEL_BIND, vec![channel(0x4001), XorPeerAddress::new(addr(PEER)).into()]);
    assert!(h.client_packet(&channel_data(0x4001, b"x")).is_some());
    // A new one is redirected, with integrity.
    h.client.client = addr("198.51.100.1:40100").into();
    let response = h.allocate();
    assert_eq!(error_code(&response), Some(300));
    let alternate = response.get_attribute::<stun_codec::rfc5389::attributes::AlternateServer>().unwrap();
    assert_eq!(alternate.address(), addr("203.0.113.9:3478"));
    let mut h = Harness::new();
    h.server.drain(None);
    assert_eq!(error_code(&h.allocate()), Some(508));
}

#[test]
fn churn_does_not_grow_the_expiry_heap() {
    let mut h = Harness::new();
    for i in 0..3000u16 {
        h.client.client = SocketAddr::new(addr("198.51.100.1:1").ip(), 10_000 + i).into();
        assert_eq!(h.allocate().class(), MessageClass::SuccessResponse);
        h.request(REFRESH, vec![Lifetime::new(Duration::ZERO).unwrap().into()]);
    }
    assert_eq!(h.server.allocation_count(), 0);
    assert!(h.server.expiry_timers() <= 1025, "heap holds {} stale entries", h.server.expiry_timers());
    assert_eq!(h.port_usage().0, 0);
}

#[test]
fn rfc8656_7_2_an_ipv4_relay_asked_over_ipv6_binds_the_hosts_ipv4_address() {
    // No REQUESTED-ADDRESS-FAMILY means IPv4, whatever the client's own family.
    let mut c = config();
    c.relay.host_v4 = Some("10.0.0.1".parse().unwrap());
    let mut h = Harness::with_config(c);
    h.client = FiveTuple {
        transport: Transport::Udp,
        client: addr("[2001:db8::7]:40000").into(),
        server: addr("[2001:db8::1]:3478"),
        tenant: crate::turn::TenantId::DEFAULT,
    };
    assert_eq!(error_code(&h.allocate()), None);
    assert_eq!(h.relay_addr().ip(), "10.0.0.1".parse::<std::net::IpAddr>().unwrap());
    // To ::1, the IPv4 loopback; with no IPv4 address known, 440.
    let mut h = Harness::new();
    h.client = FiveTuple {
        transport: Transport::Udp,
        client: addr("[::1]:40000").into(),
        server: addr("[::1]:3478"),
        tenant: crate::turn::TenantId::DEFAULT,
    };
    assert_eq!(error_code(&h.allocate()), None);
    assert_eq!(h.relay_addr().ip(), "127.0.0.1".parse::<std::net::IpAddr>().unwrap());
    let mut h = Harness::new();
    h.client = FiveTuple {
        transport: Transport::Udp,
        client: addr("[2001:db8::7]:40000").into(),
        server: addr("[2001:db8::1]:3478"),
        tenant: crate::turn::TenantId::DEFAULT,
    };
    assert_eq!(error_code(&h.allocate()), Some(440));
}

#[test]
fn even_port_reservations_count_against_the_users_quota_so_a_loop_cannot_hoard_ports() {
    // Issue: a user limited to 2 allocations looping "Allocate EVEN-PORT(R), Refresh 0"
    // ended with no allocation and half the port range reserved.
    let mut c = config();
    c.quotas.allocations_per_user = 2;
    let mut h = Harness::with_config(c);
    let even_r = || vec![RequestedTransport::new(17).into(), EvenPort::new(true).into()];
    let mut granted = 0;
    for i in 0..5u16 {
        h.client.client = addr(&format!("198.51.100.1:{}", 41000 + i)).into();
        let response = h.request(ALLOCATE, even_r());
        match error_code(&response) {
            None => {
                granted += 1;
                assert_eq!(error_code(&h.request(REFRESH, vec![Lifetime::from_u32(0).into()])), None);
            }
            Some(code) => assert_eq!(code, 486, "refused by the user's quota"),
        }
    }
    assert_eq!(granted, 1, "the reservation left behind still counts");
    let (in_use, _) = h.port_usage();
    assert_eq!(in_use, 1, "only the one reserved port stays held");
    // Once it expires, the user may allocate again.
    h.advance(RESERVATION_LIFETIME);
    h.client.client = addr("198.51.100.1:42000").into();
    assert_eq!(error_code(&h.request(ALLOCATE, even_r())), None);
}
