//! RFC 8016 mobility: the ticket an Allocate asks for, and the Refresh from a new
//! 5-tuple that moves the allocation there, on one worker and across two.

use super::*;
use crate::stun::attributes::{MobilityTicket, Opaque};

fn ask_mobility() -> Vec<Attribute> {
    vec![RequestedTransport::new(17).into(), Opaque::<0x8030>(Vec::new()).into()]
}

fn ticket_of(m: &Message) -> Vec<u8> {
    m.get_attribute::<MobilityTicket>().expect("a MOBILITY-TICKET").value().to_vec()
}

fn refresh_with(ticket: &[u8]) -> Vec<Attribute> {
    vec![Lifetime::new(Duration::from_secs(600)).unwrap().into(), Opaque::<0x8030>(ticket.to_vec()).into()]
}

fn new_address(h: &mut Harness, port: u16) -> FiveTuple {
    let old = h.client;
    h.client.client = SocketAddr::new(old.client.ip(), port).into();
    old
}

/// alice allocates with mobility, permits PEER and binds channel 0x4000 to it.
fn mobile_allocation(h: &mut Harness) -> Vec<u8> {
    let response = h.request(ALLOCATE, ask_mobility());
    assert_eq!(response.class(), MessageClass::SuccessResponse);
    let ticket = ticket_of(&response);
    assert_eq!(ticket.len(), crate::turn::mobility::TICKET_LEN);
    let bound = h.request(CHANNEL_BIND, vec![channel(0x4000), XorPeerAddress::new(addr(PEER)).into()]);
    assert_eq!(bound.class(), MessageClass::SuccessResponse);
    ticket
}

#[test]
fn rfc8016_3_1_an_allocate_asking_for_mobility_gets_a_ticket_and_refreshes_renew_it() {
    let mut h = Harness::new();
    let ticket = mobile_allocation(&mut h);
    let refreshed = h.request(REFRESH, refresh_with(&ticket));
    assert_eq!(refreshed.class(), MessageClass::SuccessResponse, "the ticket on its own 5-tuple changes nothing");
    assert_eq!(ticket_of(&refreshed).len(), ticket.len());
    let plain = h.request(REFRESH, vec![Lifetime::new(Duration::from_secs(600)).unwrap().into()]);
    assert!(plain.get_attribute::<MobilityTicket>().is_some(), "a mobile allocation's refreshes carry one");

    let mut other = Harness::new();
    let response = other.allocate();
    assert!(response.get_attribute::<MobilityTicket>().is_none(), "not asked, not given");
    let filled = vec![RequestedTransport::new(17).into(), Opaque::<0x8030>(vec![1, 2]).into()];
    other.client.client = addr("198.51.100.1:40001").into();
    assert_eq!(error_code(&other.request(ALLOCATE, filled)), Some(400), "the Allocate's ticket is empty");
}

#[test]
fn rfc8016_3_2_a_refresh_from_a_new_5_tuple_moves_the_allocation_and_keeps_channels_flowing() {
    let mut h = Harness::new();
    let ticket = mobile_allocation(&mut h);
    let relay = h.relay_addr();
    let old = new_address(&mut h, 40100);
    let moved = h.request(REFRESH, refresh_with(&ticket));
    assert_eq!(moved.class(), MessageClass::SuccessResponse);
    let next = ticket_of(&moved);
    assert_ne!(next, ticket, "a new ticket after the move");
    assert!(h.events.iter().any(|e| matches!(e, Event::AllocationMoved { from, to, from_worker: None, .. }
        if *from == old && *to == h.client)));
    assert_eq!(h.server.stats().mobility_moves[crate::turn::stats::MoveResult::Moved as usize], 1);

    // ChannelData from the new 5-tuple goes out of the same relay; the peer's answer
    // comes back framed on the channel to the new 5-tuple (peer_packet checks where).
    let out = h.client_packet(&channel_data(0x4000, b"hi")).expect("relayed from the new address");
    assert_eq!(out.peer, peer_addr(PEER));
    assert_eq!(h.relay_addr(), relay);
    assert_eq!(h.peer_packet(PEER, b"back").unwrap(), channel_data(0x4000, b"back"));

    // The old 5-tuple has nothing any more.
    let new = std::mem::replace(&mut h.client, old);
    assert!(h.client_packet(&channel_data(0x4000, b"stale")).is_none());
    h.client = new;

    // A ticket from before the move cannot move it again (nor can anyone replay it).
    new_address(&mut h, 40200);
    assert_eq!(error_code(&h.request(REFRESH, refresh_with(&ticket))), Some(437));
    assert_eq!(h.server.stats().mobility_moves[crate::turn::stats::MoveResult::StaleTicket as usize], 1);
    // The new one can.
    assert_eq!(h.request(REFRESH, refresh_with(&next)).class(), MessageClass::SuccessResponse);
}

#[test]
fn rfc8016_another_users_ticket_a_forged_one_and_an_expired_one_move_nothing() {
    let mut h = Harness::new();
    let ticket = mobile_allocation(&mut h);
    let home = h.client;

    // bob, authenticated as himself, presents alice's ticket.
    new_address(&mut h, 40100);
    (h.user, h.password) = ("bob", "hunter2");
    assert_eq!(error_code(&h.request(REFRESH, refresh_with(&ticket))), Some(400));
    (h.user, h.password) = ("alice", "secret");

    let mut forged = ticket.clone();
    forged[5] = if forged[5] == b'A' { b'B' } else { b'A' };
    assert_eq!(error_code(&h.request(REFRESH, refresh_with(&forged))), Some(400));
    assert_eq!(error_code(&h.request(REFRESH, refresh_with(b"short"))), Some(400));
    let invalid = crate::turn::stats::MoveResult::InvalidTicket as usize;
    assert_eq!(h.server.stats().mobility_moves[invalid], 3);

    // Past the allocation's lifetime the ticket is expired (and the allocation gone).
    h.advance(Duration::from_secs(601));
    assert_eq!(error_code(&h.request(REFRESH, refresh_with(&ticket))), Some(437));
    assert!(h.server.allocations().all(|(_, a)| a.five_tuple != home));
}

#[test]
fn rfc8016_3_4_mobility_off_answers_405() {
    let mut h = Harness::with_config(CoreConfig { mobility: false, ..config() });
    assert_eq!(error_code(&h.request(ALLOCATE, ask_mobility())), Some(405));
    assert_eq!(h.allocate().class(), MessageClass::SuccessResponse, "without the ticket it allocates");
    assert_eq!(error_code(&h.request(REFRESH, refresh_with(b"anything"))), Some(405));
    let forbidden = crate::turn::stats::MoveResult::Forbidden as usize;
    assert_eq!(h.server.stats().mobility_moves[forbidden], 1);
}

#[test]
fn rfc8016_a_tcp_client_gets_its_allocation_without_a_ticket() {
    let mut h = Harness::new();
    h.client.transport = Transport::Tcp;
    let response = h.request(ALLOCATE, ask_mobility());
    assert_eq!(response.class(), MessageClass::SuccessResponse);
    assert!(response.get_attribute::<MobilityTicket>().is_none());
}

#[test]
fn rfc8016_a_move_to_another_worker_carries_the_allocation_over() {
    let (mut a, mut b) = two_workers(config());
    let ticket = mobile_allocation(&mut a);
    let id = a.allocation_id();
    let relay = a.relay_addr();
    let ports = a.port_usage();

    // The client's new address reaches worker 1, which asks worker 0 for it.
    b.client = FiveTuple { client: addr("198.51.100.9:50000").into(), ..a.client };
    b.nonce = a.nonce.clone();
    let bytes = b.authenticated(REFRESH, refresh_with(&ticket));
    let first = b.send_raw(&bytes);
    assert_eq!(first.len(), 1, "a 438: the nonce was issued to the old address");
    let nonce = message::decode(&first[0]).unwrap().message.get_attribute::<Nonce>().unwrap().value().to_owned();
    b.nonce = Some(nonce);
    let bytes = b.authenticated(REFRESH, refresh_with(&ticket));
    assert!(b.send_raw(&bytes).is_empty(), "answered once the allocation arrives");
    assert!(b.send_raw(&bytes).is_empty(), "a retransmission waits with it");
    let fetch = b.fetches.pop().expect("a fetch");
    assert_eq!((fetch.owner, fetch.id, &*fetch.user.name), (0, id, "alice"));

    // Worker 0 gives it up: it is gone there, its ports still counted.
    let state = a.server.export_allocation(a.now, fetch.id, fetch.moves, &fetch.user);
    let state = state.expect("worker 0 hands it over");
    assert_eq!(a.server.allocation_count(), 0);
    assert!(a.drain().is_empty() && a.closed.is_empty(), "no relay closed, nothing sent");
    assert_eq!(a.port_usage(), ports);
    assert_eq!(state.channels.len(), 1);

    b.server.handle_handover(b.now, id, Some(state), 0, &*b.ledger);
    let answers = b.drain();
    assert_eq!(answers.len(), 2, "the Refresh and its retransmission");
    for answer in &answers {
        let answer = message::decode(answer).unwrap().message;
        assert_eq!(answer.class(), MessageClass::SuccessResponse);
        assert!(answer.get_attribute::<MobilityTicket>().is_some());
    }
    assert_eq!(b.server.allocation(id).unwrap().five_tuple, b.client);
    let across = crate::turn::stats::MoveResult::MovedAcrossWorkers as usize;
    assert_eq!(b.server.stats().mobility_moves[across], 1);

    // Channel data flows both ways on worker 1, through the same relay.
    b.opened.push((id, relay));
    assert_eq!(b.client_packet(&channel_data(0x4000, b"hi")).unwrap().allocation, id);
    assert_eq!(b.peer_packet(PEER, b"back").unwrap(), channel_data(0x4000, b"back"));

    // Asking worker 0 again (a replay of the old ticket elsewhere) finds nothing.
    assert!(a.server.export_allocation(a.now, id, fetch.moves, &"alice".into()).is_none());
    // And a worker that will not give it up gets the Refresh a 437.
    let mut c = b.client;
    c.client = addr("198.51.100.9:50001").into();
    b.client = c;
    b.server.handle_handover(b.now, AllocationId(999), None, 0, &*b.ledger);
    assert!(b.drain().is_empty(), "nobody waited for that one");
}

#[test]
fn rfc8016_the_owner_refuses_another_user_and_a_ticket_from_before_a_move() {
    let (mut a, _b) = two_workers(config());
    mobile_allocation(&mut a);
    let id = a.allocation_id();
    assert!(a.server.export_allocation(a.now, id, 0, &"bob".into()).is_none());
    assert!(a.server.export_allocation(a.now, id, 1, &"alice".into()).is_none());
    assert_eq!(a.server.allocation_count(), 1);
}

#[test]
fn rfc8016_a_ticket_over_tcp_moves_nothing_and_lifetime_0_deletes_after_the_move() {
    let mut h = Harness::new();
    let ticket = mobile_allocation(&mut h);
    let udp = h.client;
    h.client = FiveTuple { transport: Transport::Tcp, client: addr("198.51.100.1:40300").into(), ..udp };
    assert_eq!(error_code(&h.request(REFRESH, refresh_with(&ticket))), Some(437), "mobility is for UDP");
    assert_eq!(h.server.allocation(h.allocation_id()).unwrap().five_tuple, udp);

    h.client = udp;
    new_address(&mut h, 40400);
    let delete = vec![Lifetime::new(Duration::ZERO).unwrap().into(), Opaque::<0x8030>(ticket).into()];
    let answer = h.request(REFRESH, delete);
    assert_eq!(answer.class(), MessageClass::SuccessResponse);
    assert_eq!(answer.get_attribute::<Lifetime>().unwrap().lifetime(), Duration::ZERO);
    assert_eq!(h.server.allocation_count(), 0);
    assert_eq!(h.port_usage().0, 0, "its port went back to the pool");
}

#[test]
fn rfc8016_the_per_source_quota_follows_the_client_to_its_new_address() {
    let mut c = config();
    c.quotas.allocations_per_ip = 1;
    let mut h = Harness::with_config(c);
    let ticket = mobile_allocation(&mut h);
    let home = h.client;
    h.client.client = addr("203.0.113.7:40000").into();
    assert_eq!(h.request(REFRESH, refresh_with(&ticket)).class(), MessageClass::SuccessResponse);
    let moved = h.client;
    h.client = FiveTuple { client: addr("203.0.113.7:40001").into(), ..moved };
    assert_eq!(error_code(&h.allocate()), Some(486), "the new address holds the allocation now");
    h.client = FiveTuple { client: addr("198.51.100.1:40001").into(), ..home };
    assert_eq!(h.allocate().class(), MessageClass::SuccessResponse, "the old one no longer does");
}
