//! Permissions, channels and the relay path both ways: policy, quotas, bandwidth caps, ICMP (RFC 8656 §9-§12).

use super::*;

#[test]
fn rfc8656_9_permission_gates_peer_traffic_and_expires_after_300s() {
    let mut h = Harness::new();
    h.allocate();
    assert_eq!(h.peer_packet(PEER, b"early"), None, "no permission yet");
    let response = h.request(CREATE_PERMISSION, vec![XorPeerAddress::new(addr(PEER)).into()]);
    assert_eq!(response.class(), MessageClass::SuccessResponse);
    let framed = h.peer_packet("192.0.2.200:1234", b"hello").expect("permission is per IP, any port");
    let decoded = message::decode(&framed).unwrap().message;
    assert_eq!(decoded.method(), stun_codec::rfc5766::methods::DATA);
    assert_eq!(decoded.get_attribute::<Data>().unwrap().data(), b"hello");
    assert_eq!(decoded.get_attribute::<XorPeerAddress>().unwrap().address(), addr("192.0.2.200:1234"));
    h.advance(Duration::from_secs(300));
    assert_eq!(h.peer_packet(PEER, b"late"), None, "the permission expired");
    assert!(h.server.stats().dropped(DropReason::NoPermission) >= 2);
}

#[test]
fn send_indication_is_relayed_only_with_a_permission() {
    let mut h = Harness::new();
    h.allocate();
    let mut send = Message::new(MessageClass::Indication, SEND, TransactionId::new([9; 12]));
    send.add_attribute(XorPeerAddress::new(addr(PEER)));
    send.add_attribute(Data::new(b"payload".to_vec()).unwrap());
    let bytes = message::encode(send, Protection { key: None, fingerprint: false }).unwrap();
    assert!(h.client_packet(&bytes).is_none());
    h.request(CREATE_PERMISSION, vec![XorPeerAddress::new(addr(PEER)).into()]);
    let out = h.client_packet(&bytes).unwrap();
    assert_eq!(out.peer.get(), addr(PEER));
    assert_eq!(&bytes[out.payload], b"payload");
}

#[test]
fn rfc8656_11_channel_relays_both_ways_and_expires_after_600s() {
    let mut h = Harness::new();
    h.allocate();
    let response = h.request(CHANNEL_BIND, vec![channel(0x4001), XorPeerAddress::new(addr(PEER)).into()]);
    assert_eq!(response.class(), MessageClass::SuccessResponse);
    let packet = channel_data(0x4001, b"to peer");
    let out = h.client_packet(&packet).unwrap();
    assert_eq!((out.peer.get(), &packet[out.payload.clone()]), (addr(PEER), &b"to peer"[..]));
    let framed = h.peer_packet(PEER, b"to client").unwrap();
    assert_eq!(framed, channel_data(0x4001, b"to client"), "UDP ChannelData is not padded");
    // A packet from the same IP but another port uses a Data indication.
    let other = h.peer_packet("192.0.2.200:9001", b"x").unwrap();
    assert_eq!(&other[..2], &[0x00, 0x17]);
    // Channel bindings refresh the permission; let the permission be refreshed by
    // CreatePermission and check the channel itself expires at 600 s.
    h.advance(Duration::from_secs(299));
    h.request(CREATE_PERMISSION, vec![XorPeerAddress::new(addr(PEER)).into()]);
    h.advance(Duration::from_secs(299));
    h.request(CREATE_PERMISSION, vec![XorPeerAddress::new(addr(PEER)).into()]);
    h.advance(Duration::from_secs(2));
    assert!(h.client_packet(&packet).is_none(), "the channel expired");
}

#[test]
fn rfc8656_11_2_rebinding_rules() {
    let mut h = Harness::new();
    h.allocate();
    let ok = |m: &Message| m.class() == MessageClass::SuccessResponse;
    assert!(ok(&h.request(CHANNEL_BIND, vec![channel(0x4001), XorPeerAddress::new(addr(PEER)).into()])));
    // Same pair: a refresh.
    assert!(ok(&h.request(CHANNEL_BIND, vec![channel(0x4001), XorPeerAddress::new(addr(PEER)).into()])));
    // Number bound to another peer, or peer bound to another number: 400.
    let other_peer = XorPeerAddress::new(addr("192.0.2.201:9000"));
    assert_eq!(error_code(&h.request(CHANNEL_BIND, vec![channel(0x4001), other_peer.into()])), Some(400));
    assert_eq!(
        error_code(&h.request(CHANNEL_BIND, vec![channel(0x4002), XorPeerAddress::new(addr(PEER)).into()])),
        Some(400)
    );
    // Outside the channel range: 400.
    assert_eq!(
        error_code(&h.request(CHANNEL_BIND, vec![channel(0x3FFF), XorPeerAddress::new(addr(PEER)).into()])),
        Some(400)
    );
}

#[test]
fn peers_refused_by_policy_get_403_and_one_event() {
    let mut h = Harness::new();
    h.allocate();
    for peer in ["127.0.0.1:9", "[::ffff:127.0.0.1]:9", "169.254.169.254:80", "0.0.0.0:1"] {
        let response = h.request(CREATE_PERMISSION, vec![XorPeerAddress::new(addr(peer)).into()]);
        assert!(matches!(error_code(&response), Some(403) | Some(443)), "{peer}");
    }
    let response = h.request(CHANNEL_BIND, vec![channel(0x4001), XorPeerAddress::new(addr("10.0.0.1:9")).into()]);
    assert_eq!(error_code(&response), Some(403));
    let denials = h.events.iter().filter(|e| matches!(e, Event::PeerDenied { .. })).count();
    assert_eq!(denials, 1, "logged once per allocation");
}

#[test]
fn quotas_per_user_and_permissions_give_486() {
    let mut c = config();
    c.quotas.allocations_per_user = 1;
    c.quotas.permissions_per_allocation = 1;
    let mut h = Harness::with_config(c);
    h.allocate();
    let response = h.request(CREATE_PERMISSION, vec![XorPeerAddress::new(addr(PEER)).into()]);
    assert_eq!(response.class(), MessageClass::SuccessResponse);
    let response = h.request(CREATE_PERMISSION, vec![XorPeerAddress::new(addr("192.0.2.9:1")).into()]);
    assert_eq!(error_code(&response), Some(486));
    h.client.client = addr("198.51.100.1:40009").into();
    assert_eq!(error_code(&h.allocate()), Some(486));
}

#[test]
fn refresh_by_another_user_gets_441() {
    let mut h = Harness::new();
    h.allocate();
    let tid = h.tid();
    let mut m = Message::new(MessageClass::Request, REFRESH, tid);
    m.add_attribute(Username::new("bob".into()).unwrap());
    m.add_attribute(Realm::new("example.org".into()).unwrap());
    m.add_attribute(Nonce::new(h.nonce.clone().unwrap()).unwrap());
    let key = long_term_key_md5("bob", "example.org", "hunter2");
    let set = IntegritySet { sha1: true, sha256: false };
    let bytes = message::encode(m, Protection { key: Some((&key, set)), fingerprint: true }).unwrap();
    let response = message::decode(&h.send_raw(&bytes)[0]).unwrap().message;
    assert_eq!(error_code(&response), Some(441));
}

#[test]
fn relay_path_counts_traffic_per_allocation() {
    let mut h = Harness::new();
    h.allocate();
    h.request(CHANNEL_BIND, vec![channel(0x4001), XorPeerAddress::new(addr(PEER)).into()]);
    for _ in 0..3 {
        h.client_packet(&channel_data(0x4001, &[0; 100])).unwrap();
    }
    h.peer_packet(PEER, &[0; 50]).unwrap();
    let stats = h.server.stats();
    assert_eq!(stats.relayed(Direction::ClientToPeer), (3, 300));
    assert_eq!(stats.relayed(Direction::PeerToClient), (1, 50));
    assert_eq!(stats.relayed_packets[Direction::ClientToPeer as usize][Transport::Udp as usize], 3);
}

#[test]
fn bandwidth_cap_per_allocation_drops_over_the_rate() {
    let mut c = config();
    c.quotas.bandwidth_per_allocation = 1000;
    let mut h = Harness::with_config(c);
    h.allocate();
    h.request(CHANNEL_BIND, vec![channel(0x4001), XorPeerAddress::new(addr(PEER)).into()]);
    let packet = channel_data(0x4001, &[0; 400]);
    let passed = (0..5).filter(|_| h.client_packet(&packet).is_some()).count();
    assert_eq!(passed, 2, "1000 bytes/s with a one-second burst: two 400-byte packets");
    assert_eq!(h.server.stats().dropped(DropReason::RateCap), 3);
    h.now += Duration::from_secs(1);
    assert!(h.client_packet(&packet).is_some(), "refilled");
}

#[test]
fn a_mapped_peer_is_permitted_and_relayed_as_ipv4() {
    let mut h = Harness::new();
    h.allocate();
    let mapped = "[::ffff:192.0.2.12]:9002";
    let response = h.request(CREATE_PERMISSION, vec![XorPeerAddress::new(addr(mapped)).into()]);
    assert_eq!(response.class(), MessageClass::SuccessResponse);
    assert!(h.peer_packet(mapped, b"in").is_some(), "from the mapped form");
    assert!(h.peer_packet("192.0.2.12:9002", b"in").is_some(), "from the plain form");
}

#[test]
fn two_allocations_of_one_server_relay_to_each_other_in_a_denied_range_but_nothing_else_there() {
    // The relays bind 10.0.0.1 (the harness's server address): private, denied by
    // default, but it is this host's address, so another allocation's relay there is
    // a peer; other ports of it are not, and neither is the relay once it is gone.
    let mut c = config();
    c.policy = PeerPolicy::new(vec![], vec![]);
    c.policy.set_host_addresses(["10.0.0.1".parse().unwrap()]);
    let (mut a, mut b) = two_workers(c);
    a.allocate();
    b.allocate();
    let b_relay = b.relay_addr();
    assert_eq!(b_relay.ip(), "10.0.0.1".parse::<std::net::IpAddr>().unwrap());
    let not_a_relay = SocketAddr::new(b_relay.ip(), 9);
    let code = |m: Message| error_code(&m);
    assert_eq!(code(a.request(CREATE_PERMISSION, vec![XorPeerAddress::new(not_a_relay).into()])), Some(403));
    assert_eq!(code(a.request(CREATE_PERMISSION, vec![XorPeerAddress::new(b_relay).into()])), None);
    assert_eq!(
        code(a.request(CHANNEL_BIND, vec![channel(0x4000), XorPeerAddress::new(not_a_relay).into()])),
        Some(403)
    );
    assert_eq!(code(a.request(CHANNEL_BIND, vec![channel(0x4000), XorPeerAddress::new(b_relay).into()])), None);
    let send = |peer: SocketAddr| {
        let mut m = Message::new(MessageClass::Indication, SEND, TransactionId::new([9; 12]));
        m.add_attribute(XorPeerAddress::new(peer));
        m.add_attribute(Data::new(b"payload".to_vec()).unwrap());
        message::encode(m, Protection { key: None, fingerprint: false }).unwrap()
    };
    let relayed = a.client_packet(&send(b_relay));
    assert_eq!(relayed.map(|out| out.peer.get()), Some(b_relay));
    // The permission is per IP, yet the host's other ports stay closed.
    assert!(a.client_packet(&send(not_a_relay)).is_none());
    // A reload keeps the permission to the host's own address.
    let mut reloaded = config();
    reloaded.policy = PeerPolicy::new(vec![], vec![]);
    reloaded.policy.set_host_addresses(["10.0.0.1".parse().unwrap()]);
    a.reconfigure(reloaded);
    assert!(a.client_packet(&send(b_relay)).is_some());
    // B's allocation ends: its port is no relay any more, and nothing goes there.
    assert_eq!(code(b.request(REFRESH, vec![Lifetime::from_u32(0).into()])), None);
    assert!(a.client_packet(&send(b_relay)).is_none());
}

#[test]
fn an_address_the_host_gains_while_running_stops_being_a_peer_but_for_its_relays() {
    let mut h = Harness::new();
    h.allocate();
    assert_eq!(
        error_code(&h.request(CHANNEL_BIND, vec![channel(0x4000), XorPeerAddress::new(addr(PEER)).into()])),
        None
    );
    assert!(h.client_packet(&channel_data(0x4000, b"x")).is_some());
    // The host gains the peer's address (say, an interface comes up): the channel goes.
    h.server.set_host_addresses(&["192.0.2.200".parse().unwrap()]);
    assert!(h.client_packet(&channel_data(0x4000, b"x")).is_none());
    let bind = h.request(CHANNEL_BIND, vec![channel(0x4001), XorPeerAddress::new(addr(PEER)).into()]);
    assert_eq!(error_code(&bind), Some(403));
    // Gone again: a peer like any other.
    h.server.set_host_addresses(&[]);
    let bind = h.request(CHANNEL_BIND, vec![channel(0x4001), XorPeerAddress::new(addr(PEER)).into()]);
    assert_eq!(error_code(&bind), None);
}

fn icmp(v6: bool, kind: u8, code: u8, info: u32) -> crate::turn::relay::IcmpError {
    crate::turn::relay::IcmpError { v6, kind, code, info }
}

/// The ICMP attribute's value in a Data indication, and whether it has a DATA attribute.
fn icmp_attribute(indication: &[u8]) -> (Option<[u8; 8]>, bool) {
    let mut found = (None, false);
    for attr in crate::stun::raw::Attributes::new(indication) {
        let attr = attr.unwrap();
        match attr.kind {
            crate::stun::raw::ATTR_ICMP => found.0 = Some(attr.value.try_into().unwrap()),
            crate::stun::raw::ATTR_DATA => found.1 = true,
            _ => {}
        }
    }
    found
}

#[test]
fn rfc8656_11_icmp_errors_reach_the_client_only_for_permitted_peers() {
    let mut h = Harness::new();
    h.allocate();
    let id = h.allocation_id();
    // No permission yet: dropped and counted.
    assert!(!h.server.handle_peer_icmp(h.now, id, peer_addr(PEER), icmp(false, 3, 3, 0)));
    assert!(h.drain().is_empty());
    assert_eq!(h.server.stats().dropped(DropReason::NoPermission), 1);
    h.request(CREATE_PERMISSION, vec![XorPeerAddress::new(addr(PEER)).into()]);
    // Port unreachable from the permitted IP (any port: only the address is compared).
    assert!(h.server.handle_peer_icmp(h.now, id, peer_addr("192.0.2.200:1234"), icmp(false, 3, 3, 0)));
    let sent = h.drain();
    assert_eq!(sent.len(), 1, "one Data indication, on the allocation's 5-tuple");
    let decoded = message::decode(&sent[0]).unwrap().message;
    assert_eq!(decoded.method(), stun_codec::rfc5766::methods::DATA);
    assert_eq!(decoded.class(), MessageClass::Indication);
    assert_eq!(decoded.get_attribute::<XorPeerAddress>().unwrap().address(), addr("192.0.2.200:1234"));
    assert_eq!(icmp_attribute(&sent[0]), (Some([0, 0, 3, 3, 0, 0, 0, 0]), false), "ICMP, no DATA");
    // Fragmentation needed carries the MTU; other codes carry zero.
    assert!(h.server.handle_peer_icmp(h.now, id, peer_addr(PEER), icmp(false, 3, 4, 1280)));
    assert_eq!(icmp_attribute(&h.drain()[0]).0, Some([0, 0, 3, 4, 0, 0, 0x05, 0x00]));
    assert!(h.server.handle_peer_icmp(h.now, id, peer_addr(PEER), icmp(false, 3, 1, 99)));
    assert_eq!(icmp_attribute(&h.drain()[0]).0, Some([0, 0, 3, 1, 0, 0, 0, 0]));
    // Types RFC 8656 §11 does not relay (echo reply, redirect) are dropped silently.
    assert!(!h.server.handle_peer_icmp(h.now, id, peer_addr(PEER), icmp(false, 0, 0, 0)));
    assert!(!h.server.handle_peer_icmp(h.now, id, peer_addr(PEER), icmp(false, 5, 1, 0)));
    assert!(h.drain().is_empty());
    assert_eq!(h.server.stats().icmp_relayed, 3);
    // Another IP has no permission.
    assert!(!h.server.handle_peer_icmp(h.now, id, peer_addr("192.0.2.201:9000"), icmp(false, 3, 3, 0)));
    // An allocation that is gone gets nothing.
    assert!(!h.server.handle_peer_icmp(h.now, AllocationId(12345), peer_addr(PEER), icmp(false, 3, 3, 0)));
}

#[test]
fn rfc8656_11_icmpv6_types_and_packet_too_big_mtu() {
    let v6 = icmp(true, 2, 0, 1280);
    assert!(v6.is_relayed());
    assert_eq!(v6.attribute_value(), [0, 0, 2, 0, 0, 0, 0x05, 0x00]);
    assert_eq!(icmp(true, 1, 4, 7).attribute_value(), [0, 0, 1, 4, 0, 0, 0, 0]);
    assert!(icmp(true, 3, 0, 0).is_relayed());
    assert!(!icmp(true, 128, 0, 0).is_relayed(), "echo request");
    assert!(icmp(false, 11, 0, 0).is_relayed());
    assert_eq!(icmp(false, 3, 4, 1400).error_data(), 1400);
    assert_eq!(icmp(false, 11, 4, 1400).error_data(), 0);
}

#[test]
fn rfc8656_11_icmp_relaying_is_rate_limited_per_allocation() {
    use crate::turn::relay::{ICMP_BURST, ICMP_PER_SECOND};
    let mut h = Harness::new();
    h.allocate();
    let id = h.allocation_id();
    h.request(CREATE_PERMISSION, vec![XorPeerAddress::new(addr(PEER)).into()]);
    let relayed =
        (0..100).filter(|_| h.server.handle_peer_icmp(h.now, id, peer_addr(PEER), icmp(false, 3, 3, 0))).count();
    assert_eq!(relayed, ICMP_BURST as usize, "a burst, then nothing");
    assert_eq!(h.drain().len(), ICMP_BURST as usize);
    assert_eq!(h.server.stats().dropped(DropReason::IcmpRateLimit), 100 - ICMP_BURST as u64);
    // A second later the bucket has refilled by the rate.
    h.now += Duration::from_secs(1);
    let relayed =
        (0..100).filter(|_| h.server.handle_peer_icmp(h.now, id, peer_addr(PEER), icmp(false, 3, 3, 0))).count();
    assert_eq!(relayed, ICMP_PER_SECOND as usize);
    // Ordinary peer data is not held back by it.
    assert!(h.peer_packet(PEER, b"data").is_some());
}
