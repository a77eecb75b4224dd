//! Users the authentication webhook knows: requests parked while the shell looks the
//! user up, the answers (found, not found, failed), the wait's timeout, the bound on
//! parked requests, the cache (positive and negative) and the limits an answer sets.

use super::*;
use crate::stun::integrity::long_term_key_sha256;
use crate::turn::auth::Key;
use crate::turn::lookup::{LookupOutcome, LookupResult, LookupSettings, UserLimits, UserRecord};

const WAIT: Duration = Duration::from_secs(3);

fn webhook_config(max_parked: usize) -> CoreConfig {
    CoreConfig { lookup: Some(LookupSettings { max_parked, wait: WAIT, cache_size: 8 }), ..config() }
}

/// A harness whose user "carol" is known only to the webhook; it holds a nonce.
fn carol(max_parked: usize) -> Harness {
    let mut h = Harness::with_config(webhook_config(max_parked));
    h.user = "carol";
    h.password = "pw";
    fetch_nonce(&mut h);
    h
}

fn fetch_nonce(h: &mut Harness) {
    let responses = h.send_raw(&unauthenticated_allocate());
    let challenge = message::decode(&responses[0]).unwrap().message;
    h.nonce = Some(challenge.get_attribute::<Nonce>().unwrap().value().to_owned());
}

fn record(password: &str, limits: UserLimits) -> UserRecord {
    UserRecord {
        md5: Some(Key::new(&long_term_key_md5("carol", "example.org", password))),
        sha256: Some(Key::new(&long_term_key_sha256("carol", "example.org", password))),
        limits,
    }
}

fn found(ttl: u64) -> LookupOutcome {
    LookupOutcome::Found { record: record("pw", UserLimits::default()), ttl: Duration::from_secs(ttl) }
}

fn allocate_bytes(h: &mut Harness) -> Vec<u8> {
    h.authenticated(ALLOCATE, vec![RequestedTransport::new(17).into()])
}

/// The shell's answer for carol; what the core then transmitted, decoded.
fn answer(h: &mut Harness, user: &str, outcome: LookupOutcome) -> Vec<Message> {
    let result = LookupResult { realm: "example.org".into(), username: user.into(), outcome };
    h.server.handle_lookup(h.now, result, &*h.ledger);
    h.drain().iter().map(|b| message::decode(b).unwrap().message).collect()
}

fn carol_lookups(n: usize) -> Vec<(String, String)> {
    vec![("example.org".to_owned(), "carol".to_owned()); n]
}

#[test]
fn a_found_user_waits_for_the_lookup_then_authenticates_with_its_key() {
    let mut h = carol(4);
    let bytes = allocate_bytes(&mut h);
    assert!(h.send_raw(&bytes).is_empty(), "parked: no answer yet");
    assert_eq!(h.lookups, carol_lookups(1), "the lookup carries the realm");
    assert_eq!(h.server.lookup_counts().0, 1);
    let responses = answer(&mut h, "carol", found(60));
    assert_eq!(responses.len(), 1);
    assert_eq!(error_code(&responses[0]), None, "{:?}", responses[0]);
    assert!(responses[0].get_attribute::<XorRelayAddress>().is_some());
    assert_eq!(h.server.allocation_count(), 1);
    assert_eq!(h.server.lookup_counts(), (0, 1));
    // Cached: a Refresh is answered at once, with no lookup.
    let refresh = h.request(REFRESH, vec![]);
    assert_eq!(error_code(&refresh), None);
    assert_eq!(h.lookups.len(), 1, "a cache hit asks nothing");
}

#[test]
fn a_wrong_password_against_a_found_user_is_401() {
    let mut h = carol(4);
    h.password = "not-pw";
    let bytes = allocate_bytes(&mut h);
    assert!(h.send_raw(&bytes).is_empty());
    let responses = answer(&mut h, "carol", found(60));
    assert_eq!(error_code(&responses[0]), Some(401));
    assert_eq!(h.server.stats().auth_failures[AuthFailure::BadIntegrity as usize], 1);
}

#[test]
fn not_found_is_401_and_cached_for_its_ttl() {
    let mut h = carol(4);
    let bytes = allocate_bytes(&mut h);
    assert!(h.send_raw(&bytes).is_empty());
    let responses = answer(&mut h, "carol", LookupOutcome::NotFound { ttl: Duration::from_secs(10) });
    assert_eq!(error_code(&responses[0]), Some(401));
    assert_eq!(h.server.stats().auth_failures[AuthFailure::UnknownUser as usize], 1);
    // Within the negative TTL: 401 at once, no lookup.
    h.now += Duration::from_secs(10);
    fetch_nonce(&mut h);
    let bytes = allocate_bytes(&mut h);
    let responses = h.send_raw(&bytes);
    assert_eq!(error_code(&message::decode(&responses[0]).unwrap().message), Some(401));
    assert_eq!(h.lookups.len(), 1);
    // After it: asked again.
    h.now += Duration::from_millis(1);
    let bytes = allocate_bytes(&mut h);
    assert!(h.send_raw(&bytes).is_empty());
    assert_eq!(h.lookups, carol_lookups(2));
}

#[test]
fn a_failed_lookup_is_500_and_not_cached() {
    let mut h = carol(4);
    let bytes = allocate_bytes(&mut h);
    assert!(h.send_raw(&bytes).is_empty());
    let responses = answer(&mut h, "carol", LookupOutcome::Failed);
    assert_eq!(error_code(&responses[0]), Some(500));
    assert_eq!(h.server.stats().auth_failures[AuthFailure::LookupUnavailable as usize], 1);
    let bytes = allocate_bytes(&mut h);
    assert!(h.send_raw(&bytes).is_empty(), "parked again");
    assert_eq!(h.lookups, carol_lookups(2));
    assert_eq!(error_code(&answer(&mut h, "carol", found(60))[0]), None);
}

#[test]
fn a_parked_request_gets_500_when_its_wait_runs_out() {
    let mut h = carol(4);
    let bytes = allocate_bytes(&mut h);
    assert!(h.send_raw(&bytes).is_empty());
    assert_eq!(h.server.poll_timeout(), Some(h.now + WAIT));
    h.now += WAIT - Duration::from_millis(1);
    h.server.handle_timeout(h.now, &*h.ledger);
    assert!(h.drain().is_empty());
    h.now += Duration::from_millis(1);
    h.server.handle_timeout(h.now, &*h.ledger);
    let responses = h.drain();
    assert_eq!(error_code(&message::decode(&responses[0]).unwrap().message), Some(500));
    assert_eq!(h.server.stats().auth_failures[AuthFailure::LookupUnavailable as usize], 1);
    assert_eq!(h.server.lookup_counts().0, 0);
    assert_eq!(h.server.poll_timeout(), None);
    // A late answer finds nobody waiting but is cached.
    assert!(answer(&mut h, "carol", found(60)).is_empty());
    assert_eq!(error_code(&h.allocate()), None);
}

#[test]
fn past_the_parked_bound_requests_get_500_at_once() {
    let mut h = carol(2);
    for user in ["carol", "dave"] {
        h.user = user;
        let bytes = allocate_bytes(&mut h);
        assert!(h.send_raw(&bytes).is_empty());
    }
    h.user = "erin";
    let bytes = allocate_bytes(&mut h);
    let responses = h.send_raw(&bytes);
    assert_eq!(error_code(&message::decode(&responses[0]).unwrap().message), Some(500));
    assert_eq!(h.lookups.len(), 2, "no lookup for the refused one");
    assert_eq!(h.server.lookup_counts().0, 2);
}

#[test]
fn requests_for_a_user_in_flight_share_one_lookup_and_are_all_answered() {
    let mut h = carol(4);
    let first = allocate_bytes(&mut h);
    assert!(h.send_raw(&first).is_empty());
    assert!(h.send_raw(&first).is_empty(), "a retransmission");
    let peer = XorPeerAddress::new(addr(PEER));
    let second = h.authenticated(CREATE_PERMISSION, vec![peer.into()]);
    assert!(h.send_raw(&second).is_empty());
    assert_eq!(h.lookups.len(), 1, "one lookup");
    assert_eq!(h.server.lookup_counts().0, 2, "the retransmission is not parked twice");
    let responses = answer(&mut h, "carol", found(60));
    // Both answered: the CreatePermission, run right after the Allocate but before its
    // relay socket is bound, finds no allocation yet (437, sent first); the Allocate's
    // success follows the bind.
    assert_eq!(responses.iter().map(error_code).collect::<Vec<_>>(), vec![Some(437), None]);
}

#[test]
fn a_forged_or_stale_nonce_never_causes_a_lookup() {
    let mut h = carol(4);
    h.nonce = Some("obMatJos2AAAAforged-nonce-xxxxxxx".into());
    let bytes = allocate_bytes(&mut h);
    let responses = h.send_raw(&bytes);
    assert_eq!(error_code(&message::decode(&responses[0]).unwrap().message), Some(438));
    assert!(h.lookups.is_empty());
}

#[test]
fn the_limits_of_the_answer_replace_the_configured_ones() {
    let mut h = carol(4);
    let bytes = allocate_bytes(&mut h);
    h.send_raw(&bytes);
    let limited = LookupOutcome::Found {
        record: record("pw", UserLimits { max_allocations: Some(1), ..UserLimits::default() }),
        ttl: Duration::from_secs(60),
    };
    assert_eq!(error_code(&answer(&mut h, "carol", limited)[0]), None);
    // A second allocation from another client of the same user: over its quota of 1
    // (the configured allocations-per-user is 100).
    h.client.client = addr("198.51.100.1:40001").into();
    fetch_nonce(&mut h);
    assert_eq!(error_code(&h.allocate()), Some(486));
    assert_eq!(h.lookups.len(), 1, "from the cache");
}

#[test]
fn the_bandwidth_of_the_answer_replaces_the_configured_per_user_cap() {
    let mut h = carol(4);
    let bytes = allocate_bytes(&mut h);
    h.send_raw(&bytes);
    let capped = LookupOutcome::Found {
        record: record("pw", UserLimits { bandwidth: Some(1000), ..UserLimits::default() }),
        ttl: Duration::from_secs(60),
    };
    assert_eq!(error_code(&answer(&mut h, "carol", capped)[0]), None);
    h.request(CHANNEL_BIND, vec![channel(0x4001), XorPeerAddress::new(addr(PEER)).into()]);
    // No bandwidth-per-user is configured; the answer's 1000 bytes/s (burst of one
    // second) lets two 400-byte packets through.
    let packet = channel_data(0x4001, &[0; 400]);
    let passed = (0..5).filter(|_| h.client_packet(&packet).is_some()).count();
    assert_eq!(passed, 2);
    assert_eq!(h.server.stats().dropped(DropReason::RateCap), 3);
}

#[test]
fn revocation_applies_to_webhook_users_before_any_lookup() {
    let mut h = carol(4);
    h.server.revoke("carol", h.now, UNIX_NOW, &*h.ledger).unwrap();
    let bytes = allocate_bytes(&mut h);
    let responses = h.send_raw(&bytes);
    assert_eq!(error_code(&message::decode(&responses[0]).unwrap().message), Some(401));
    assert!(h.lookups.is_empty());
    assert_eq!(h.server.stats().auth_failures[AuthFailure::Revoked as usize], 1);
}

#[test]
fn static_users_and_a_reload_that_flushes_the_cache() {
    let mut h = carol(4);
    // A static user is never looked up.
    h.user = "alice";
    h.password = "secret";
    assert_eq!(error_code(&h.allocate()), None);
    assert!(h.lookups.is_empty());
    h.user = "carol";
    h.password = "pw";
    h.client.client = addr("198.51.100.1:40001").into();
    fetch_nonce(&mut h);
    let bytes = allocate_bytes(&mut h);
    h.send_raw(&bytes);
    answer(&mut h, "carol", found(60));
    h.reconfigure(webhook_config(4));
    let bytes = h.authenticated(REFRESH, vec![]);
    assert!(h.send_raw(&bytes).is_empty(), "asked again after the reload");
    assert_eq!(h.lookups.len(), 2);
    // Without a webhook, unknown users get 401 at once.
    h.reconfigure(config());
    h.user = "frank";
    let bytes = h.authenticated(REFRESH, vec![]);
    let responses = h.send_raw(&bytes);
    assert_eq!(error_code(&message::decode(&responses[0]).unwrap().message), Some(401));
}
