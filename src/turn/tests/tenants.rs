//! Tenants: two realms in one core. The shell's choice of tenant arrives in the
//! 5-tuple; credentials, challenges, nonces, quotas and reloads follow it.

use super::*;
use crate::turn::config::Quotas;
use crate::turn::tenant::{Tenant, TenantId};

const B: TenantId = TenantId(7);

/// The default realm "example.org" (alice/secret, bob/hunter2) and tenant B
/// "b.example", where alice's password is "b-pass" and a user holds one allocation.
fn two_tenants() -> CoreConfig {
    let mut config = config();
    let mut credentials = crate::turn::auth::Credentials::new("b.example");
    credentials.add_user("alice", "b-pass");
    let quotas = Quotas { allocations_per_user: 1, ..config.quotas };
    config.tenants.push(Tenant { id: B, credentials, quotas, policy: config.policy.clone() });
    config
}

/// The harness's client, moved to tenant B (another port, as a second listener).
fn in_b(h: &mut Harness) {
    h.client.tenant = B;
    h.client.server = addr("10.0.0.1:3479");
    h.realm = "b.example";
    h.password = "b-pass";
    h.nonce = None;
}

fn challenge_realm(h: &mut Harness) -> String {
    let responses = h.send_raw(&unauthenticated_allocate());
    let response = message::decode(&responses[0]).unwrap().message;
    assert_eq!(error_code(&response), Some(401));
    response.get_attribute::<Realm>().unwrap().text().to_owned()
}

#[test]
fn the_401_challenge_names_the_tenants_realm() {
    let mut h = Harness::with_config(two_tenants());
    assert_eq!(challenge_realm(&mut h), "example.org");
    in_b(&mut h);
    assert_eq!(challenge_realm(&mut h), "b.example");
}

#[test]
fn the_same_user_name_in_two_tenants_is_two_users_with_their_own_passwords() {
    let mut h = Harness::with_config(two_tenants());
    in_b(&mut h);
    assert_eq!(error_code(&h.allocate()), None, "alice of b.example with her b.example password");
    // The default tenant's alice, from another client: her password is not b's.
    let mut d = Harness::with_config(two_tenants());
    d.password = "b-pass";
    assert_eq!(error_code(&d.allocate()), Some(401));
    d.password = "secret";
    assert_eq!(error_code(&d.allocate()), None);
    // bob exists only in the default tenant.
    let mut b = Harness::with_config(two_tenants());
    in_b(&mut b);
    (b.user, b.password) = ("bob", "hunter2");
    assert_eq!(error_code(&b.allocate()), Some(401));
    let failures: Vec<_> = b.events.iter().filter(|e| matches!(e, Event::AuthFailed { tenant: B, .. })).collect();
    assert!(!failures.is_empty(), "auth failures name the tenant");
}

#[test]
fn a_nonce_of_one_tenant_is_stale_in_another() {
    let mut h = Harness::with_config(two_tenants());
    assert_eq!(error_code(&h.allocate()), None);
    let default_nonce = h.nonce.clone();
    in_b(&mut h);
    h.client.server = addr("10.0.0.1:3478"); // the same 5-tuple but for the tenant
    h.nonce = default_nonce;
    let bytes = h.authenticated(ALLOCATE, vec![RequestedTransport::new(17).into()]);
    let response = message::decode(&h.send_raw(&bytes)[0]).unwrap().message;
    assert_eq!(error_code(&response), Some(438), "the integrity is right, the nonce is not b's");
    assert_eq!(response.get_attribute::<Realm>().unwrap().text(), "b.example");
}

#[test]
fn quotas_count_per_tenant_and_user() {
    let mut config = two_tenants();
    config.quotas.allocations_per_user = 1;
    config.tenants[0].quotas.total_allocations = 2;
    let ledger: Shared = Arc::new(Mutex::new(Ledger::new(&config)));
    let now = Instant::now();
    let server = Server::new(config, Box::new(CountingRng::default()), now, &*ledger);
    let mut h = Harness::with_server(server, ledger, now);
    assert_eq!(error_code(&h.allocate()), None, "alice of the default tenant");
    in_b(&mut h);
    assert_eq!(error_code(&h.allocate()), None, "alice of b.example is another user");
    h.client.client = addr("198.51.100.1:40001").into();
    h.nonce = None;
    assert_eq!(error_code(&h.allocate()), Some(486), "b.example's alice holds one");
    let counts = h.ledger.lock().unwrap().allocation_count();
    assert_eq!(counts, 2);
}

#[test]
fn a_tenants_total_caps_its_allocations_only() {
    let mut config = two_tenants();
    config.tenants[0].quotas.total_allocations = 1;
    config.tenants[0].credentials.add_user("carol", "c");
    let ledger: Shared = Arc::new(Mutex::new(Ledger::new(&config)));
    let now = Instant::now();
    let mut h = Harness::with_server(Server::new(config, Box::new(CountingRng::default()), now, &*ledger), ledger, now);
    in_b(&mut h);
    assert_eq!(error_code(&h.allocate()), None);
    h.client.client = addr("198.51.100.1:40001").into();
    (h.user, h.password, h.nonce) = ("carol", "c", None);
    assert_eq!(error_code(&h.allocate()), Some(508), "b.example is full");
    // The default tenant is not.
    h.client.tenant = TenantId::DEFAULT;
    (h.user, h.password, h.realm, h.nonce) = ("bob", "hunter2", "example.org", None);
    assert_eq!(error_code(&h.allocate()), None);
}

#[test]
fn a_reload_that_removes_a_tenant_ends_its_allocations_and_leaves_the_others() {
    let mut h = Harness::with_config(two_tenants());
    assert_eq!(error_code(&h.allocate()), None);
    let default_allocation = h.allocation_id();
    let default_client = h.client;
    in_b(&mut h);
    assert_eq!(error_code(&h.allocate()), None);
    let b_allocation = h.allocation_id();
    // Changing b's users leaves every allocation alone.
    let mut changed = two_tenants();
    changed.tenants[0].credentials.add_user("dave", "d");
    h.reconfigure(changed);
    h.drain();
    assert_eq!(h.server.allocation_count(), 2);
    // Removing b ends b's allocation only.
    h.reconfigure(config());
    h.drain();
    assert!(h.server.allocation(b_allocation).is_none());
    assert_eq!(h.closed, vec![b_allocation]);
    assert!(h.server.allocation(default_allocation).is_some());
    assert_eq!(h.ledger.lock().unwrap().allocation_count(), 1, "its quota counts went with it");
    // A client still arriving for b gets a bare 401: no realm to offer.
    let response = message::decode(&h.send_raw(&unauthenticated_allocate())[0]).unwrap().message;
    assert_eq!(error_code(&response), Some(401));
    assert!(response.get_attribute::<Realm>().is_none());
    // Added back, b serves again; the default tenant's allocation still relays.
    h.reconfigure(two_tenants());
    h.nonce = None;
    assert_eq!(error_code(&h.allocate()), None);
    h.client = default_client;
    h.opened.retain(|(id, _)| *id == default_allocation);
    h.realm = "example.org";
    h.password = "secret";
    h.nonce = None;
    let peer_ip = PEER.parse::<SocketAddr>().unwrap().ip();
    assert_eq!(
        error_code(&h.request(CREATE_PERMISSION, vec![XorPeerAddress::new(SocketAddr::new(peer_ip, 0)).into()])),
        None
    );
    assert!(h.peer_packet(PEER, b"still relaying").is_some());
}

#[test]
fn a_tenants_peer_policy_applies_to_its_allocations() {
    let mut config = two_tenants();
    // b.example may not reach the documentation range the default tenant may.
    config.tenants[0].policy = PeerPolicy::default();
    let mut h = Harness::with_config(config);
    assert_eq!(error_code(&h.request(CREATE_PERMISSION, vec![XorPeerAddress::new(addr(PEER)).into()])), Some(437));
    assert_eq!(error_code(&h.allocate()), None);
    assert_eq!(error_code(&h.request(CREATE_PERMISSION, vec![XorPeerAddress::new(addr(PEER)).into()])), None);
    in_b(&mut h);
    assert_eq!(error_code(&h.allocate()), None);
    assert_eq!(error_code(&h.request(CREATE_PERMISSION, vec![XorPeerAddress::new(addr(PEER)).into()])), Some(403));
}

#[test]
fn a_webhook_lookup_asks_in_the_realm_of_the_tenant_the_client_came_to() {
    use crate::turn::lookup::LookupSettings;
    let mut config = two_tenants();
    config.lookup = Some(LookupSettings { max_parked: 4, wait: Duration::from_secs(3), cache_size: 8 });
    let mut h = Harness::with_config(config);
    in_b(&mut h);
    h.user = "carol";
    let challenge = message::decode(&h.send_raw(&unauthenticated_allocate())[0]).unwrap().message;
    h.nonce = Some(challenge.get_attribute::<Nonce>().unwrap().value().to_owned());
    let bytes = h.authenticated(ALLOCATE, vec![RequestedTransport::new(17).into()]);
    assert!(h.send_raw(&bytes).is_empty(), "parked until the lookup answers");
    assert_eq!(h.lookups, vec![("b.example".to_owned(), "carol".to_owned())]);
}

#[test]
fn a_mobility_ticket_moves_an_allocation_only_within_its_tenant() {
    use crate::stun::attributes::{MobilityTicket, Opaque};
    let mut h = Harness::with_config(two_tenants());
    let asked = vec![RequestedTransport::new(17).into(), Opaque::<0x8030>(Vec::new()).into()];
    let allocated = h.request(ALLOCATE, asked);
    let ticket = allocated.get_attribute::<MobilityTicket>().expect("a ticket").value().to_vec();
    // alice of b.example, from a new address on b's listener, with the default
    // tenant's alice's ticket: her own credentials pass, the ticket does not.
    in_b(&mut h);
    h.client.client = addr("192.0.2.1:40999").into();
    let refresh =
        vec![Lifetime::new(Duration::from_secs(600)).unwrap().into(), Opaque::<0x8030>(ticket.clone()).into()];
    let response = h.request(REFRESH, refresh);
    assert_eq!(error_code(&response), Some(400), "a ticket is bound to its tenant");
    assert_eq!(h.server.stats().mobility_moves.iter().sum::<u64>() as usize, 1, "counted as invalid, not moved");
}
