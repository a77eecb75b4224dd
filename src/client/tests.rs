//! The client against a scripted server: challenge, retry, integrity, typed results.

use super::*;
use crate::stun::message::{decode, encode, error_response};
use stun_codec::rfc5389::attributes::XorMappedAddress;
use stun_codec::rfc5766::attributes::{Lifetime, XorRelayAddress};
use stun_codec::rfc5766::methods::ALLOCATE;

fn client() -> Client {
    Client::new(Credentials::long_term("alice", "secret"), [9; 12])
}

fn respond(
    sent: &Outgoing,
    class: MessageClass,
    attrs: Vec<crate::stun::attributes::Attribute>,
    key: Option<&[u8]>,
) -> Vec<u8> {
    let request = decode(&sent.bytes).unwrap().message;
    let mut m = Message::new(class, request.method(), request.transaction_id());
    for a in attrs {
        m.add_attribute(a);
    }
    let set = IntegritySet { sha1: true, sha256: false };
    encode(m, Protection { key: key.map(|k| (k, set)), fingerprint: true }).unwrap()
}

fn challenge(sent: &Outgoing, code: u16, nonce: &str) -> Vec<u8> {
    let request = decode(&sent.bytes).unwrap().message;
    let mut m = error_response(request.method(), request.transaction_id(), code, "");
    m.add_attribute(Realm::new("example.org".into()).unwrap());
    m.add_attribute(Nonce::new(nonce.into()).unwrap());
    encode(m, Protection { key: None, fingerprint: true }).unwrap()
}

#[test]
fn rfc8489_9_2_a_401_brings_the_nonce_and_the_retry_is_signed() {
    let mut c = client();
    let first = c.request(&Request::allocate()).unwrap();
    assert!(!first.is_authenticated());
    let answer = challenge(&first, 401, "n1");
    assert!(first.is_answered_by(&answer));
    let response = c.response(&first, &answer).unwrap();
    assert_eq!(response.error(), Some(StunError { code: 401, reason: String::new() }));
    assert!(c.learn(&response));
    assert!(!c.learn(&response), "the same nonce twice is a final answer");
    assert_eq!(c.challenge(), Some(("example.org", "n1")));

    let second = c.request(&Request::allocate()).unwrap();
    assert!(second.is_authenticated() && second.transaction_id != first.transaction_id);
    let key = long_term_key_md5("alice", "example.org", "secret");
    let decoded = decode(&second.bytes).unwrap();
    assert!(decoded.integrity_sha1.unwrap().verify(&key, &second.bytes));

    let relayed: SocketAddr = "192.0.2.7:50000".parse().unwrap();
    let mapped: SocketAddr = "198.51.100.1:4000".parse().unwrap();
    let attrs = vec![
        XorRelayAddress::new(relayed).into(),
        XorMappedAddress::new(mapped).into(),
        Lifetime::from_u32(600).into(),
    ];
    let ok = respond(&second, MessageClass::SuccessResponse, attrs.clone(), Some(&key));
    let response = c.response(&second, &ok).unwrap().into_result().unwrap();
    assert_eq!((response.relayed(), response.mapped()), (Some(relayed), Some(mapped)));
    assert_eq!(response.relayed_all(), [relayed]);
    assert_eq!(response.lifetime(), Some(std::time::Duration::from_secs(600)));
    assert_eq!(response.message.method(), ALLOCATE);

    let forged = respond(&second, MessageClass::SuccessResponse, attrs.clone(), Some(&[0; 16]));
    assert_eq!(c.response(&second, &forged).unwrap_err(), ClientError::Integrity);
    let unsigned = respond(&second, MessageClass::SuccessResponse, attrs, None);
    assert!(matches!(c.response(&second, &unsigned), Err(ClientError::Malformed(_))));
    assert!(c.response(&first, &ok).is_err(), "another transaction's answer");
}

#[test]
fn rfc8489_9_2_5_a_stale_nonce_is_replaced() {
    let mut c = client();
    c.set_challenge("example.org", "old");
    let sent = c.request(&Request::refresh(0)).unwrap();
    let response = c.response(&sent, &challenge(&sent, 438, "new")).unwrap();
    assert!(c.learn(&response));
    assert_eq!(c.challenge(), Some(("example.org", "new")));
    let other = c.response(&sent, &respond(&sent, MessageClass::ErrorResponse, vec![], None)).unwrap();
    assert!(!c.learn(&other), "an error without a nonce is final");
}

#[test]
fn without_credentials_requests_stay_bare_and_a_challenge_is_final() {
    let mut c = Client::new(Credentials::None, [0; 12]);
    let sent = c.request(&Request::allocate()).unwrap();
    let response = c.response(&sent, &challenge(&sent, 401, "n")).unwrap();
    assert!(!c.learn(&response));
    assert_eq!(c.challenge(), Some(("example.org", "n")));
    assert!(!c.request(&Request::allocate()).unwrap().is_authenticated());
}

#[test]
fn binding_and_anonymous_requests_carry_no_credentials() {
    let mut c = client();
    c.set_challenge("example.org", "n");
    assert!(!c.request(&Request::binding()).unwrap().is_authenticated());
    assert!(!c.request(&Request::allocate().anonymous()).unwrap().is_authenticated());
    let connect = c.request(&Request::connection_bind(0x0102_0304)).unwrap();
    assert_eq!(decode(&connect.bytes).unwrap().message.method().as_u16(), u16::from(CONNECTION_BIND));
}

#[test]
fn transaction_ids_differ_and_follow_the_seed() {
    let mut a = Client::new(Credentials::None, [1; 12]);
    let mut b = Client::new(Credentials::None, [1; 12]);
    let (x, y) = (a.transaction_id(), a.transaction_id());
    assert_ne!(x, y);
    assert_eq!(b.transaction_id(), x);
}
