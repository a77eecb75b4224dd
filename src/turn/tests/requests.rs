//! Binding, the long-term credential challenge, 420/400 and what is dropped before the handlers (RFC 8489).

use super::*;

#[test]
fn rfc8489_binding_returns_the_reflexive_address() {
    let mut h = Harness::new();
    let m = Message::new(MessageClass::Request, BINDING, TransactionId::new([1; 12]));
    let bytes = message::encode(m, Protection { key: None, fingerprint: true }).unwrap();
    let responses = h.send_raw(&bytes);
    let response = message::decode(&responses[0]).unwrap().message;
    assert_eq!(response.class(), MessageClass::SuccessResponse);
    assert_eq!(response.get_attribute::<XorMappedAddress>().unwrap().address(), h.client.client.get());
}

#[test]
fn rfc8489_9_2_first_request_is_challenged_and_unprotected_within_3x_its_size() {
    // The default realm ("turnd"): ERROR-CODE 8 bytes, REALM 12, NONCE 32 (RFC 8489
    // cookie, expiry and MAC), PASSWORD-ALGORITHMS 12: 84 bytes, 3x the 28-byte Allocate.
    let mut c = config();
    c.credentials = crate::turn::auth::Credentials::new("turnd");
    let mut h = Harness::with_config(c);
    let bytes = unauthenticated_allocate();
    assert_eq!(bytes.len(), 28);
    let responses = h.send_raw(&bytes);
    let decoded = message::decode(&responses[0]).unwrap();
    assert_eq!(error_code(&decoded.message), Some(401));
    assert!(decoded.message.get_attribute::<Realm>().is_some());
    assert_eq!(decoded.message.get_attribute::<Nonce>().unwrap().value().len(), crate::turn::auth::NONCE_LEN);
    assert!(decoded.message.get_attribute::<crate::stun::attributes::PasswordAlgorithms>().is_some());
    assert!(decoded.integrity_sha1.is_none());
    assert_eq!(responses[0].len(), 84, "3.0x the request");
}

#[test]
fn a_401_that_would_pass_3x_leaves_out_password_algorithms_and_a_smaller_request_gets_none() {
    use crate::stun::attributes::PasswordAlgorithms;
    use crate::turn::auth::SecurityFeatures;
    // "example.org" takes 16 bytes: with PASSWORD-ALGORITHMS the 401 would be 88 bytes.
    let mut h = Harness::new();
    let responses = h.send_raw(&unauthenticated_allocate());
    assert_eq!(responses[0].len(), 76);
    let decoded = message::decode(&responses[0]).unwrap().message;
    assert!(decoded.get_attribute::<PasswordAlgorithms>().is_none());
    let nonce = decoded.get_attribute::<Nonce>().unwrap().value().to_owned();
    let features = SecurityFeatures::from_nonce(&nonce).unwrap();
    assert!(!features.contains(SecurityFeatures::PASSWORD_ALGORITHMS), "the cookie must not promise them");
    // The client authenticates with that nonce as an RFC 5389 client would.
    h.nonce = Some(nonce);
    assert_eq!(error_code(&h.allocate()), None);
    // A bare 20-byte Allocate cannot be challenged within 60 bytes: dropped, counted.
    let m = Message::new(MessageClass::Request, ALLOCATE, TransactionId::new([2; 12]));
    let bare = message::encode(m, Protection { key: None, fingerprint: false }).unwrap();
    h.client.client = addr("198.51.100.2:40000").into();
    assert!(h.send_raw(&bare).is_empty());
    assert_eq!(h.server.stats().dropped(DropReason::Amplification), 1);
    // Over TCP the source is verified: the whole 401, PASSWORD-ALGORITHMS included.
    h.client.transport = Transport::Tcp;
    let responses = h.send_raw(&bare);
    let decoded = message::decode(&responses[0]).unwrap().message;
    assert_eq!(error_code(&decoded), Some(401));
    assert!(decoded.get_attribute::<PasswordAlgorithms>().is_some());
}

#[test]
fn binding_answers_over_udp_stay_within_3x() {
    let mut h = Harness::new();
    for client in ["198.51.100.1:40000", "[2001:db8::1]:40000"] {
        h.client.client = addr(client).into();
        // The fast path (no attribute) and the general one (an unknown optional attribute).
        let plain = Message::new(MessageClass::Request, stun_codec::rfc5389::methods::BINDING, h.tid());
        let plain = message::encode(plain, Protection { key: None, fingerprint: false }).unwrap();
        let mut general = Message::new(MessageClass::Request, stun_codec::rfc5389::methods::BINDING, h.tid());
        general.add_attribute(stun_codec::rfc5389::attributes::Software::new("c".into()).unwrap());
        let general = message::encode(general, Protection { key: None, fingerprint: false }).unwrap();
        for request in [plain, general] {
            let responses = h.send_raw(&request);
            assert_eq!(responses.len(), 1, "{client}");
            assert!(responses[0].len() <= 3 * request.len(), "{client}: {} for {}", responses[0].len(), request.len());
        }
    }
}

#[test]
fn wrong_password_is_refused_with_401() {
    let mut h = Harness::new();
    h.password = "wrong";
    let response = h.allocate();
    assert_eq!(error_code(&response), Some(401));
    // Once with the placeholder nonce, once with the real one: integrity is checked
    // before the nonce (RFC 8489 §9.2.4).
    assert_eq!(h.server.stats().auth_failures_total(), 2);
}

#[test]
fn nonce_goes_stale_and_the_client_recovers_with_438() {
    let mut h = Harness::new();
    let lifetime = Lifetime::new(Duration::from_secs(3600)).unwrap();
    h.request(ALLOCATE, vec![RequestedTransport::new(17).into(), lifetime.into()]);
    let first_nonce = h.nonce.clone();
    h.advance(Duration::from_secs(590));
    // Stale nonce: the first attempt gets 438 with a fresh nonce, the retry succeeds.
    h.advance(Duration::from_secs(20));
    let bytes = h.authenticated(REFRESH, vec![]);
    let response = message::decode(&h.send_raw(&bytes)[0]).unwrap().message;
    assert_eq!(error_code(&response), Some(438));
    let response = h.request(REFRESH, vec![]);
    assert_eq!(response.class(), MessageClass::SuccessResponse);
    assert_ne!(h.nonce, first_nonce);
}

#[test]
fn rfc8489_unknown_comprehension_required_attribute_gets_420() {
    let mut h = Harness::new();
    let m = Message::new(MessageClass::Request, BINDING, TransactionId::new([1; 12]));
    let mut bytes = message::encode(m, Protection { key: None, fingerprint: false }).unwrap();
    bytes.extend_from_slice(&[0x00, 0x7F, 0x00, 0x00]); // unknown, comprehension-required
    bytes[3] = 4;
    let response = message::decode(&h.send_raw(&bytes)[0]).unwrap().message;
    assert_eq!(error_code(&response), Some(420));
    let unknown = response.get_attribute::<UnknownAttributes>().unwrap();
    assert_eq!(unknown.unknowns()[0].as_u16(), 0x007F);
    // Comprehension-optional unknowns are ignored.
    bytes[20] = 0x80;
    let response = message::decode(&h.send_raw(&bytes)[0]).unwrap().message;
    assert_eq!(response.class(), MessageClass::SuccessResponse);
}

#[test]
fn malformed_requests_get_400_and_garbage_is_dropped_and_counted() {
    let mut h = Harness::new();
    let m = Message::new(MessageClass::Request, BINDING, TransactionId::new([1; 12]));
    let mut bytes = message::encode(m, Protection { key: None, fingerprint: false }).unwrap();
    // An XOR-MAPPED-ADDRESS with a bad family: readable header, broken body.
    bytes.extend_from_slice(&[0x00, 0x20, 0x00, 0x08, 0x00, 0x09, 0, 0, 0, 0, 0, 0]);
    bytes[3] = 12;
    let response = message::decode(&h.send_raw(&bytes)[0]).unwrap().message;
    assert_eq!(error_code(&response), Some(400));
    for garbage in [&[][..], &[0xFF; 40][..], &[0, 1, 0, 4, 0x21, 0x12, 0xA4, 0x42][..], &[0x40, 0, 0, 9, 1][..]] {
        assert!(h.send_raw(garbage).is_empty());
    }
    assert!(h.server.stats().dropped(DropReason::Malformed) >= 4);
    // Indications never get a response.
    let ind = Message::new(MessageClass::Indication, BINDING, TransactionId::new([2; 12]));
    let bytes = message::encode(ind, Protection { key: None, fingerprint: false }).unwrap();
    assert!(h.send_raw(&bytes).is_empty());
}

#[test]
fn rfc3489_binding_gets_mapped_address() {
    let mut h = Harness::new();
    let mut req = vec![0x00, 0x01, 0x00, 0x00];
    req.extend_from_slice(&[7u8; 16]);
    let responses = h.send_raw(&req);
    assert_eq!(responses.len(), 1);
    assert_eq!(&responses[0][4..20], &[7u8; 16]);
}

#[test]
fn unauthenticated_answers_are_rate_limited_per_source_ip() {
    let mut c = config();
    c.quotas.unauthenticated_per_second = 5;
    c.quotas.unauthenticated_burst = 5;
    let mut h = Harness::with_config(c);
    let bytes = unauthenticated_allocate();
    let answered: usize = (0..20).map(|_| h.send_raw(&bytes).len()).sum();
    assert_eq!(answered, 5);
    assert_eq!(h.server.stats().auth_failures[crate::turn::stats::AuthFailure::RateLimited as usize], 15);
    // Another source is not affected; the first recovers with time.
    h.client.client = addr("198.51.100.2:40000").into();
    assert_eq!(h.send_raw(&bytes).len(), 1);
    h.client.client = addr("198.51.100.1:40000").into();
    h.now += Duration::from_secs(1);
    assert_eq!(h.send_raw(&bytes).len(), 1);
}

#[test]
fn oversized_control_messages_are_dropped_before_decoding() {
    let mut h = Harness::new();
    let m = Message::new(MessageClass::Request, BINDING, TransactionId::new([1; 12]));
    let mut bytes = message::encode(m, Protection { key: None, fingerprint: false }).unwrap();
    // A comprehension-optional attribute of 5000 bytes: well framed, but too big.
    bytes.extend_from_slice(&[0x80, 0x99, 0x13, 0x88]);
    bytes.resize(bytes.len() + 5000, 0);
    let len = (bytes.len() - 20) as u16;
    bytes[2..4].copy_from_slice(&len.to_be_bytes());
    assert!(h.send_raw(&bytes).is_empty());
    assert_eq!(h.server.stats().dropped(DropReason::Malformed), 1);
}

#[test]
fn denied_clients_are_dropped_before_parsing_and_a_reload_that_denies_one_closes_its_allocations() {
    let mut c = config();
    c.denied_clients = vec!["203.0.113.0/24".parse().unwrap()];
    let mut h = Harness::with_config(c.clone());
    h.allocate();
    let id = h.allocation_id();
    // From a denied address: nothing is answered, even a Binding, and it is counted.
    h.client.client = addr("203.0.113.9:5000").into();
    let binding = message::encode(
        Message::new(MessageClass::Request, stun_codec::rfc5389::methods::BINDING, TransactionId::new([3; 12])),
        Protection { key: None, fingerprint: false },
    )
    .unwrap();
    assert!(h.send_raw(&binding).is_empty());
    assert!(h.send_raw(&[0xff; 40]).is_empty());
    assert_eq!(h.server.stats().dropped(DropReason::DeniedClient), 2);
    // The allocated client's address joins the list: its allocation ends at the reload.
    c.denied_clients.push("198.51.100.1/32".parse().unwrap());
    h.reconfigure(c);
    h.drain();
    assert!(h.server.allocations().all(|(other, _)| other != id), "allocation of a newly denied client kept");
}

#[test]
fn a_revoked_user_loses_its_allocations_and_is_refused_across_reloads_until_lifted() {
    let mut h = Harness::new();
    h.allocate();
    let id = h.allocation_id();
    assert_eq!(h.server.revoke("alice", h.now, UNIX_NOW, &*h.ledger), Ok(1));
    h.drain();
    assert!(h.server.allocations().all(|(other, _)| other != id));
    h.reconfigure(config());
    h.client.client = addr("198.51.100.1:40100").into();
    assert_eq!(error_code(&h.allocate()), Some(401), "revoked, even after a reload");
    assert!(h.server.stats().auth_failures[AuthFailure::Revoked as usize] >= 1);
    h.user = "bob";
    h.password = "hunter2";
    assert_eq!(error_code(&h.allocate()), None, "other users are served");
    assert!(h.server.lift_revocation("alice"));
    h.user = "alice";
    h.password = "secret";
    h.client.client = addr("198.51.100.1:40101").into();
    assert_eq!(error_code(&h.allocate()), None, "lifted");
}

#[test]
fn with_end_at_credential_expiry_a_rest_allocation_ends_when_its_credential_does() {
    let mut c = config();
    c.credentials.add_secret(b"north");
    c.end_at_credential_expiry = true;
    let mut h = Harness::with_config(c);
    let user: &'static str = Box::leak(format!("{}:carol", UNIX_NOW + 120).into_boxed_str());
    let password: &'static str = Box::leak(crate::turn::auth::rest_password(b"north", user).into_boxed_str());
    (h.user, h.password) = (user, password);
    let response = h.allocate();
    assert_eq!(response.get_attribute::<Lifetime>().unwrap().lifetime(), Duration::from_secs(120));
    let id = h.allocation_id();
    h.advance(Duration::from_secs(120));
    assert!(h.server.allocations().all(|(other, _)| other != id), "it outlived its credential");
    // Static users are not capped.
    (h.user, h.password) = ("alice", "secret");
    h.client.client = addr("198.51.100.1:40500").into();
    let response = h.allocate();
    assert_eq!(response.get_attribute::<Lifetime>().unwrap().lifetime(), Duration::from_secs(600));
}

#[test]
fn client_and_peer_addresses_are_normalised_when_built() {
    let mapped: SocketAddr = "[::ffff:192.0.2.7]:5000".parse().unwrap();
    assert_eq!(crate::turn::ClientAddr::new(mapped).get(), addr("192.0.2.7:5000"));
    assert_eq!(PeerAddr::new(mapped).get(), addr("192.0.2.7:5000"));
    let parsed: crate::turn::ClientAddr = "[::ffff:192.0.2.7]:5000".parse().unwrap();
    assert_eq!(parsed, addr("192.0.2.7:5000").into(), "one client, one spelling");
    let v6: SocketAddr = "[2001:db8::7]:5000".parse().unwrap();
    assert_eq!(crate::turn::ClientAddr::new(v6).get(), v6, "a real IPv6 address stays");
}
