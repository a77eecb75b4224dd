//! Several workers sharing one ledger: quotas, ports, reservations, nonces and reloads over all of them.

use super::*;

#[test]
fn allocation_quotas_count_the_allocations_of_every_worker() {
    let mut c = config();
    c.quotas.allocations_per_user = 1;
    c.quotas.total_allocations = 2;
    let (mut a, mut b) = two_workers(c);
    b.client.client = addr("198.51.100.2:41000").into();
    assert_eq!(a.allocate().class(), MessageClass::SuccessResponse);
    assert_eq!(error_code(&b.allocate()), Some(486), "alice is at her quota on worker 0");
    (b.user, b.password) = ("bob", "hunter2");
    assert_eq!(b.allocate().class(), MessageClass::SuccessResponse);
    b.client.client = addr("198.51.100.3:41000").into();
    assert_eq!(error_code(&b.allocate()), Some(508), "two allocations in all, one on each worker");
    // Deleting on worker 0 frees alice's quota and the total for worker 1.
    a.request(REFRESH, vec![Lifetime::new(Duration::ZERO).unwrap().into()]);
    (b.user, b.password) = ("alice", "secret");
    assert_eq!(b.allocate().class(), MessageClass::SuccessResponse);
}

#[test]
fn rfc8656_7_2_reservation_token_from_one_worker_is_redeemed_on_another() {
    let (mut a, mut b) = two_workers(config());
    let reserve = || vec![RequestedTransport::new(17).into(), EvenPort::new(true).into()];
    let redeem = |token: u64| vec![RequestedTransport::new(17).into(), ReservationToken::new(token).into()];
    let response = a.request(ALLOCATE, reserve());
    let port = response.get_attribute::<XorRelayAddress>().unwrap().address().port();
    let token = response.get_attribute::<ReservationToken>().unwrap().token();
    let second = b.request(ALLOCATE, redeem(token));
    assert_eq!(second.get_attribute::<XorRelayAddress>().unwrap().address().port(), port + 1);
    assert_eq!(b.port_usage().0, 2, "port usage is global");

    // A token nobody redeems: the timer of the worker that minted it frees the port.
    a.client.client = addr("198.51.100.1:40001").into();
    let token = a.request(ALLOCATE, reserve()).get_attribute::<ReservationToken>().unwrap().token();
    assert_eq!(a.port_usage().0, 4);
    assert_eq!(a.server.poll_timeout(), Some(a.now + RESERVATION_LIFETIME));
    assert!(b.server.poll_timeout() > Some(b.now + RESERVATION_LIFETIME), "not worker 1's timer");
    b.advance(RESERVATION_LIFETIME);
    assert_eq!(b.port_usage().0, 4);
    a.advance(RESERVATION_LIFETIME);
    assert_eq!(b.port_usage().0, 3);
    b.client.client = addr("198.51.100.1:41001").into();
    assert_eq!(error_code(&b.request(ALLOCATE, redeem(token))), Some(508));

    // A token past its expiry before any timer ran is refused too, and its port is
    // freed by the refusal itself.
    a.client.client = addr("198.51.100.1:40002").into();
    let token = a.request(ALLOCATE, reserve()).get_attribute::<ReservationToken>().unwrap().token();
    assert_eq!(b.port_usage().0, 5);
    b.now += RESERVATION_LIFETIME;
    b.client.client = addr("198.51.100.1:41002").into();
    assert_eq!(error_code(&b.request(ALLOCATE, redeem(token))), Some(508));
    assert_eq!(b.port_usage().0, 4);
    a.advance(RESERVATION_LIFETIME);
    assert_eq!(a.port_usage().0, 4, "worker 0's timer finds nothing left to free");
}

#[test]
fn allocation_ids_of_two_workers_never_collide_and_name_their_worker() {
    let (mut a, mut b) = two_workers(config());
    let mut ids = Vec::new();
    for i in 0..3 {
        for (worker, h) in [(0, &mut a), (1, &mut b)] {
            h.client.client = SocketAddr::new(h.client.client.ip(), 42_000 + 10 * worker + i).into();
            assert_eq!(h.allocate().class(), MessageClass::SuccessResponse);
            assert_eq!(worker_of(h.allocation_id(), 2), u32::from(worker));
            ids.push(h.allocation_id().0);
        }
    }
    assert_eq!(ids, [2, 3, 4, 5, 6, 7]);
    // One worker numbers 1, 2, 3... as it always did.
    let mut h = Harness::new();
    h.allocate();
    assert_eq!((h.allocation_id(), worker_of(h.allocation_id(), 1)), (AllocationId(1), 0));
}

#[test]
fn unauthenticated_answers_are_rate_limited_per_source_ip_over_every_worker() {
    let mut c = config();
    c.quotas.unauthenticated_per_second = 5;
    c.quotas.unauthenticated_burst = 5;
    let (mut a, mut b) = two_workers(c);
    let bytes = unauthenticated_allocate();
    let answered: usize = (0..3).map(|_| a.send_raw(&bytes).len()).sum();
    // The same host from another port lands on worker 1: it shares the budget.
    let answered = answered + (0..5).map(|_| b.send_raw(&bytes).len()).sum::<usize>();
    assert_eq!(answered, 5);
    assert_eq!(b.server.stats().auth_failures[AuthFailure::RateLimited as usize], 3);
    b.client.client = addr("198.51.100.2:41000").into();
    assert_eq!(b.send_raw(&bytes).len(), 1, "another host has its own budget");
}

#[test]
fn no_two_workers_hand_out_the_same_relay_port() {
    let mut c = config();
    c.port_range = 50000..=50003;
    let (mut a, mut b) = two_workers(c);
    let mut ports = Vec::new();
    for i in 0..3 {
        for (worker, h) in [(0, &mut a), (1, &mut b)] {
            h.client.client = SocketAddr::new(h.client.client.ip(), 43_000 + 10 * worker + i).into();
            let response = h.allocate();
            match response.get_attribute::<XorRelayAddress>() {
                Some(relay) => ports.push(relay.address().port()),
                None => assert_eq!(error_code(&response), Some(508)),
            }
        }
    }
    ports.sort_unstable();
    assert_eq!(ports, [50000, 50001, 50002, 50003], "each port once, then 508 on both workers");
    assert_eq!(a.port_usage(), (4, 0));
}

#[test]
fn a_nonce_issued_by_one_worker_verifies_on_another() {
    let (mut a, mut b) = two_workers(config());
    a.allocate();
    // The same client reaching worker 1 (after a change in the number of workers, say)
    // uses the nonce worker 0 issued, with no new challenge.
    b.client = a.client;
    b.nonce = a.nonce.clone();
    let bytes = b.authenticated(ALLOCATE, vec![RequestedTransport::new(17).into()]);
    let response = message::decode(&b.send_raw(&bytes)[0]).unwrap().message;
    assert_eq!(response.class(), MessageClass::SuccessResponse);
}

#[test]
fn a_reload_applied_by_every_worker_takes_effect_once() {
    let mut c = config();
    c.quotas.unauthenticated_per_second = 5;
    c.quotas.unauthenticated_burst = 5;
    let (mut a, mut b) = two_workers(c.clone());
    let bytes = unauthenticated_allocate();
    a.allocate();
    c.quotas.unauthenticated_burst = 2;
    c.port_range = 50100..=50109;
    // Worker 0 applies the reload: the limiter starts afresh, the range in use stays.
    a.reconfigure(c.clone());
    assert_eq!((0..3).map(|_| a.send_raw(&bytes).len()).sum::<usize>(), 2);
    // Worker 1 applies the same reload: nothing is reset a second time.
    b.reconfigure(c.clone());
    assert_eq!(b.send_raw(&bytes).len(), 0, "the shared budget is spent");
    assert_eq!(b.port_usage(), (1, 9));
    // Once the old range is unused, a reload (on any worker) switches it.
    a.request(REFRESH, vec![Lifetime::new(Duration::ZERO).unwrap().into()]);
    b.reconfigure(c.clone());
    b.client.client = addr("198.51.100.2:41000").into();
    let relay = b.allocate().get_attribute::<XorRelayAddress>().unwrap().address();
    assert!((50100..=50109).contains(&relay.port()), "{relay}");
}
