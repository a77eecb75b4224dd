//! A live upgrade: UDP allocations leave one process's core and enter another's (the
//! shell carries the relay sockets and updates the ledger, scripted here).

use super::*;

#[test]
fn live_upgrade_a_udp_allocation_moves_with_its_channel_and_quota_and_refreshes_after() {
    let mut old = Harness::new();
    assert_eq!(old.allocate().class(), MessageClass::SuccessResponse);
    let (id, relay) = (old.allocation_id(), old.relay_addr());
    let bound = old.request(CHANNEL_BIND, vec![channel(0x4000), XorPeerAddress::new(addr(PEER)).into()]);
    assert_eq!(bound.class(), MessageClass::SuccessResponse);
    old.advance(Duration::from_secs(30));

    let exported = old.server.export_udp_allocations(old.now);
    assert_eq!(exported.len(), 1);
    assert_eq!(exported[0].id, id);
    assert_eq!(exported[0].relays[0].map(|r| r.bound), Some(relay));
    assert_eq!(exported[0].age, Duration::from_secs(30));
    assert_eq!(exported[0].channels.len(), 1);
    assert_eq!(old.server.allocations().count(), 1, "exporting changes nothing: a failed successor leaves it");

    let mut new = Harness::new();
    new.now = old.now + Duration::from_millis(20);
    for state in exported.clone() {
        let ports: Vec<u16> = state.relays.iter().flatten().map(|r| r.bound.port()).collect();
        assert!(new.ledger.lock().unwrap().adopt_allocation(
            &crate::turn::tenant::UserKey::new(state.five_tuple.tenant, &state.username),
            state.five_tuple.client.ip(),
            &ports
        ));
        new.server.adopt_allocation(new.now, state);
    }
    new.opened.push((id, relay));
    assert_eq!(new.port_usage().0, 1, "the relay port is counted in the new ledger");
    assert_eq!(new.ledger.lock().unwrap().allocation_count(), 1, "and so is the allocation, for the quotas");

    // ChannelData goes on being relayed both ways, from and to the same 5-tuple.
    let out = new.client_packet(&channel_data(0x4000, b"after")).expect("relayed by the new core");
    assert_eq!(out.peer, peer_addr(PEER));
    assert_eq!(new.peer_packet(PEER, b"back").unwrap(), channel_data(0x4000, b"back"));
    // A Refresh (with a nonce the new core mints) and a new ChannelBind succeed.
    let refreshed = new.request(REFRESH, vec![Lifetime::new(Duration::from_secs(600)).unwrap().into()]);
    assert_eq!(refreshed.class(), MessageClass::SuccessResponse);
    let bound = new.request(CHANNEL_BIND, vec![channel(0x4001), XorPeerAddress::new(addr("192.0.2.201:9000")).into()]);
    assert_eq!(bound.class(), MessageClass::SuccessResponse);

    // The old core forgets it without a word to anyone.
    old.server.forget_handed_over(&[id]);
    assert_eq!(old.server.allocations().count(), 0);
    assert!(old.drain().is_empty());

    // A new allocation on the new core gets an id of its own, and another port.
    new.client.client = addr("198.51.100.1:40001").into();
    assert_eq!(new.allocate().class(), MessageClass::SuccessResponse);
    assert_ne!(new.allocation_id(), id);
    assert_ne!(new.relay_addr().port(), relay.port());

    // When it expires, the moved allocation's port goes back to the new ledger.
    new.advance(Duration::from_secs(601));
    assert_eq!(new.port_usage().0, 0);
}

#[test]
fn live_upgrade_reservations_move_with_their_port_and_tcp_clients_allocations_stay() {
    let mut old = Harness::new();
    let even = vec![RequestedTransport::new(17).into(), EvenPort::new(true).into()];
    let reserved = old.request(ALLOCATE, even);
    let token = reserved.get_attribute::<ReservationToken>().expect("a RESERVATION-TOKEN").token();
    let held = old.ledger.lock().unwrap().export_reservations(old.now);
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].0, token);

    let new = Harness::new();
    let (token, port, left, user, source) = held[0].clone();
    assert!(new.ledger.lock().unwrap().adopt_reservation(token, port, new.now + left, &user, source));
    assert_eq!(new.ledger.lock().unwrap().reservation_count(), 1);
    assert!(!new.ledger.lock().unwrap().adopt_reservation(token, port, new.now + left, &user, source), "once");

    let mut tcp = Harness::new();
    tcp.client.transport = Transport::Tcp;
    assert_eq!(tcp.allocate().class(), MessageClass::SuccessResponse);
    assert!(tcp.server.export_udp_allocations(tcp.now).is_empty(), "a TCP client's allocation stays");
}
