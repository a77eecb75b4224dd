//! Scenario tests of the core on virtual time: scripted inputs, expected outputs, no
//! sockets and no sleeps.

use super::effects::{carry_out, Effects};
use super::ledger::Ledger;
use super::relay::ToPeer;
use super::server::RESERVATION_LIFETIME;
use super::stats::{AuthFailure, Direction, DropReason};
use super::tests_support::CountingRng;
use super::{worker_of, AllocationId, CoreConfig, FiveTuple, Server, Transport};
use super::{ConnectionId, EndReason, Event, Output, PeerAddr, Received, RelayBindError};
use crate::stun::attributes::{Attribute, ChannelNumber};
use crate::stun::integrity::long_term_key_md5;
use crate::stun::message::{self, IntegritySet, Message, Protection};
use crate::turn::policy::PeerPolicy;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stun_codec::rfc5389::attributes::{ErrorCode, Nonce, Realm, UnknownAttributes, Username, XorMappedAddress};
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5766::attributes::{
    Data, EvenPort, Lifetime, RequestedTransport, ReservationToken, XorPeerAddress, XorRelayAddress,
};
use stun_codec::rfc5766::methods::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, REFRESH, SEND};
use stun_codec::{MessageClass, Method, TransactionId};

const UNIX_NOW: u64 = 1_800_000_000;
const PEER: &str = "192.0.2.200:9000";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A server plus a scripted client that answers the core's relay-socket requests.
struct Harness {
    server: Server,
    /// The ledger, shared with the other worker's harness in `two_workers`.
    ledger: Shared,
    now: Instant,
    client: FiveTuple,
    nonce: Option<String>,
    next_tid: u32,
    user: &'static str,
    password: &'static str,
    bind_failures: Vec<RelayBindError>,
    opened: Vec<(AllocationId, SocketAddr)>,
    closed: Vec<AllocationId>,
    events: Vec<Event>,
    tcp_outputs: Vec<Output>,
    /// What the last drain transmitted.
    sent: Vec<Vec<u8>>,
}

type Shared = Arc<Mutex<Ledger>>;

/// The scripted shell: relay sockets bind unless a failure is queued; RFC 6062
/// outputs are kept for the tests that script those sockets.
impl Effects for Harness {
    fn core(&mut self) -> &mut Server {
        &mut self.server
    }
    fn with_ledger(&mut self, f: &mut dyn FnMut(&mut Server, &mut Ledger)) {
        f(&mut self.server, &mut self.ledger.lock().unwrap());
    }
    fn transmit(&mut self, to: FiveTuple, bytes: Vec<u8>) {
        assert_eq!(to, self.client, "responses go back on the request's 5-tuple");
        self.sent.push(bytes);
    }
    fn bind_relay(
        &mut self,
        allocation: AllocationId,
        local: SocketAddr,
        _: bool,
        _: bool,
    ) -> Result<SocketAddr, RelayBindError> {
        if self.bind_failures.is_empty() {
            self.opened.push((allocation, local));
            Ok(local)
        } else {
            Err(self.bind_failures.remove(0))
        }
    }
    fn close_relay(&mut self, allocation: AllocationId) {
        self.closed.push(allocation);
    }
    fn connect_peer(
        &mut self,
        connection: ConnectionId,
        allocation: AllocationId,
        local: SocketAddr,
        peer: SocketAddr,
    ) {
        self.tcp_outputs.push(Output::ConnectPeer { connection, allocation, local, peer });
    }
    fn bind_data(&mut self, connection: ConnectionId, data: FiveTuple) -> bool {
        self.tcp_outputs.push(Output::BindData { connection, data });
        true
    }
    fn close_peer_connection(&mut self, connection: ConnectionId, data: Option<FiveTuple>) {
        self.tcp_outputs.push(Output::ClosePeerConnection { connection, data });
    }
    fn event(&mut self, event: Event) {
        self.events.push(event);
    }
}

fn peer_addr(s: &str) -> PeerAddr {
    PeerAddr::new(addr(s))
}

fn config() -> CoreConfig {
    let mut credentials = crate::turn::auth::Credentials::new("example.org");
    credentials.add_user("alice", "secret");
    credentials.add_user("bob", "hunter2");
    CoreConfig {
        credentials,
        port_range: 50000..=50009,
        // 192.0.2.0/24 is documentation space, denied by default; allow it for the tests.
        policy: PeerPolicy::new(vec!["192.0.2.0/24".parse().unwrap()], vec![]),
        ..CoreConfig::default()
    }
}

impl Harness {
    fn new() -> Self {
        Self::with_config(config())
    }

    fn with_config(config: CoreConfig) -> Self {
        let now = Instant::now();
        let ledger = Arc::new(Mutex::new(Ledger::new(&config)));
        let server = Server::new(config, Box::new(CountingRng::default()), now, &mut ledger.lock().unwrap());
        Self::with_server(server, ledger, now)
    }

    fn with_server(server: Server, ledger: Shared, now: Instant) -> Self {
        Harness {
            server,
            ledger,
            now,
            client: FiveTuple {
                transport: Transport::Udp,
                client: addr("198.51.100.1:40000").into(),
                server: addr("10.0.0.1:3478"),
            },
            nonce: None,
            next_tid: 0,
            user: "alice",
            password: "secret",
            bind_failures: Vec::new(),
            opened: Vec::new(),
            closed: Vec::new(),
            events: Vec::new(),
            tcp_outputs: Vec::new(),
            sent: Vec::new(),
        }
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.server.handle_timeout(self.now, &mut self.ledger.lock().unwrap());
        self.drain();
    }

    fn tid(&mut self) -> TransactionId {
        self.next_tid += 1;
        let mut tid = [0u8; 12];
        tid[8..].copy_from_slice(&self.next_tid.to_be_bytes());
        TransactionId::new(tid)
    }

    /// Carries out outputs like the shell would (through the same drain); returns the
    /// transmitted messages.
    fn drain(&mut self) -> Vec<Vec<u8>> {
        carry_out(self.now, self);
        std::mem::take(&mut self.sent)
    }

    /// A client packet through both entry points, as the shell passes it: the relayed
    /// payload, if any.
    fn client_packet(&mut self, bytes: &[u8]) -> Option<ToPeer> {
        match self.server.handle_client_packet(self.now, self.client, bytes) {
            Received::Relay(out) => Some(out),
            Received::Handled => None,
            Received::Request => {
                self.server.handle_request(self.now, UNIX_NOW, self.client, bytes, &mut self.ledger.lock().unwrap());
                None
            }
        }
    }

    /// Relay ports in use and available, over every worker sharing the ledger.
    fn port_usage(&self) -> (usize, usize) {
        self.ledger.lock().unwrap().port_usage()
    }

    fn reconfigure(&mut self, config: CoreConfig) {
        self.server.reconfigure(config, &mut self.ledger.lock().unwrap());
    }

    fn send_raw(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        let relayed = self.client_packet(bytes);
        assert!(relayed.is_none(), "a request is not relayed");
        self.drain()
    }

    fn authenticated(&mut self, method: Method, attrs: Vec<Attribute>) -> Vec<u8> {
        let tid = self.tid();
        let mut m = Message::new(MessageClass::Request, method, tid);
        for a in attrs {
            m.add_attribute(a);
        }
        m.add_attribute(Username::new(self.user.into()).unwrap());
        m.add_attribute(Realm::new("example.org".into()).unwrap());
        m.add_attribute(Nonce::new(self.nonce.clone().unwrap_or_else(|| "none".into())).unwrap());
        let key = long_term_key_md5(self.user, "example.org", self.password);
        let set = IntegritySet { sha1: true, sha256: false };
        message::encode(m, Protection { key: Some((&key, set)), fingerprint: true }).unwrap()
    }

    /// Sends an authenticated request, fetching a nonce first when needed; returns the
    /// decoded final response.
    fn request(&mut self, method: Method, attrs: Vec<Attribute>) -> Message {
        for _ in 0..2 {
            let bytes = self.authenticated(method, attrs.clone());
            let mut responses = self.send_raw(&bytes);
            assert_eq!(responses.len(), 1, "one response per request");
            let response = message::decode(&responses.remove(0)).unwrap().message;
            if let Some(code) = error_code(&response) {
                if code == 401 || code == 438 {
                    if let Some(nonce) = response.get_attribute::<Nonce>() {
                        if self.nonce.as_deref() != Some(nonce.value()) {
                            self.nonce = Some(nonce.value().to_owned());
                            continue;
                        }
                    }
                }
            }
            return response;
        }
        panic!("no answer after a fresh nonce");
    }

    fn allocate(&mut self) -> Message {
        self.request(ALLOCATE, vec![RequestedTransport::new(17).into()])
    }

    fn relay_addr(&self) -> SocketAddr {
        self.opened.last().unwrap().1
    }

    fn allocation_id(&self) -> AllocationId {
        self.opened.last().unwrap().0
    }

    fn peer_packet(&mut self, peer: &str, payload: &[u8]) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 64 + payload.len() + 4];
        buf[64..64 + payload.len()].copy_from_slice(payload);
        let id = self.allocation_id();
        let out = self.server.handle_peer_packet(self.now, id, peer_addr(peer), &mut buf, 64..64 + payload.len())?;
        assert_eq!(out.to, self.client);
        Some(buf[out.range].to_vec())
    }
}

/// Two workers of one process, as the shell builds them: each its own server (and
/// scripted client, on another port of the same host), sharing a ledger and the nonce
/// secret. Their clocks are advanced separately.
fn two_workers(config: CoreConfig) -> (Harness, Harness) {
    let ledger: Shared = Arc::new(Mutex::new(Ledger::new(&config)));
    let now = Instant::now();
    let worker = |index: u32, seed: u8| {
        let rng = Box::new(CountingRng(seed));
        Server::new_worker(config.clone(), rng, now, &mut ledger.lock().unwrap(), [7; 32], index, 2)
    };
    let a = Harness::with_server(worker(0, 0), ledger.clone(), now);
    let mut b = Harness::with_server(worker(1, 128), ledger.clone(), now);
    b.client.client = addr("198.51.100.1:41000").into();
    (a, b)
}

/// The smallest Allocate a client sends first: 28 bytes, REQUESTED-TRANSPORT only.
fn unauthenticated_allocate() -> Vec<u8> {
    let mut m = Message::new(MessageClass::Request, ALLOCATE, TransactionId::new([1; 12]));
    m.add_attribute(RequestedTransport::new(17));
    message::encode(m, Protection { key: None, fingerprint: false }).unwrap()
}

fn error_code(m: &Message) -> Option<u16> {
    m.get_attribute::<ErrorCode>().map(|e| e.code())
}

fn channel(n: u16) -> Attribute {
    ChannelNumber::new_number(n).into()
}

impl ChannelNumber {
    fn new_number(n: u16) -> Self {
        let b = n.to_be_bytes();
        crate::stun::attributes::Opaque(vec![b[0], b[1], 0, 0])
    }
}

fn channel_data(n: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = n.to_be_bytes().to_vec();
    v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

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
fn rfc6062_connect_bind_and_expiry_on_virtual_time() {
    use crate::turn::tcp_relay::{connect_method, connection_bind_method};
    let mut h = Harness::new();
    h.client.transport = Transport::Tcp;
    let response = h.request(ALLOCATE, vec![RequestedTransport::new(6).into()]);
    assert_eq!(response.class(), MessageClass::SuccessResponse);
    // Connect: the answer waits for the shell's connect.
    let bytes = h.authenticated(connect_method(), vec![XorPeerAddress::new(addr(PEER)).into()]);
    assert!(h.send_raw(&bytes).is_empty());
    let Some(Output::ConnectPeer { connection, peer, .. }) = h.tcp_outputs.pop() else { panic!("no ConnectPeer") };
    assert_eq!(peer, addr(PEER));
    h.server.handle_peer_connected(h.now, connection, true);
    let answer = message::decode(&h.drain()[0]).unwrap().message;
    assert_eq!(answer.class(), MessageClass::SuccessResponse);
    let id = answer.get_attribute::<crate::stun::attributes::ConnectionId>().unwrap().value().to_vec();
    assert_eq!(id, connection.0.to_be_bytes());
    // ConnectionBind on a new connection (the data connection).
    let control = h.client;
    h.client.client = addr("198.51.100.1:40200").into();
    h.nonce = None;
    let bind = h.request(connection_bind_method(), vec![crate::stun::attributes::Opaque::<0x002A>(id.clone()).into()]);
    assert_eq!(bind.class(), MessageClass::SuccessResponse);
    assert!(matches!(h.tcp_outputs.pop(), Some(Output::BindData { data, .. }) if data == h.client));
    // Deleting the allocation closes the bound connection and its data connection.
    h.client = control;
    h.request(REFRESH, vec![Lifetime::new(Duration::ZERO).unwrap().into()]);
    assert!(matches!(h.tcp_outputs.pop(), Some(Output::ClosePeerConnection { data: Some(_), .. })));
}

#[test]
fn rfc6062_unbound_connections_close_after_30s_and_failures_get_447() {
    use crate::turn::tcp_relay::connect_method;
    let mut h = Harness::new();
    h.client.transport = Transport::Tls;
    h.request(ALLOCATE, vec![RequestedTransport::new(6).into()]);
    let bytes = h.authenticated(connect_method(), vec![XorPeerAddress::new(addr(PEER)).into()]);
    h.send_raw(&bytes);
    let Some(Output::ConnectPeer { connection, .. }) = h.tcp_outputs.pop() else { panic!("no ConnectPeer") };
    h.server.handle_peer_connected(h.now, connection, true);
    h.drain();
    h.advance(Duration::from_secs(31));
    assert!(matches!(h.tcp_outputs.pop(), Some(Output::ClosePeerConnection { data: None, .. })));
    // A failed connect: 447.
    let bytes = h.authenticated(connect_method(), vec![XorPeerAddress::new(addr("192.0.2.201:1")).into()]);
    h.send_raw(&bytes);
    let Some(Output::ConnectPeer { connection, .. }) = h.tcp_outputs.pop() else { panic!("no ConnectPeer") };
    h.server.handle_peer_connected(h.now, connection, false);
    assert_eq!(error_code(&message::decode(&h.drain()[0]).unwrap().message), Some(447));
    // UDP-only attributes with TCP: 400.
    h.client.client = addr("198.51.100.1:40300").into();
    let response = h.request(ALLOCATE, vec![RequestedTransport::new(6).into(), EvenPort::new(false).into()]);
    assert_eq!(error_code(&response), Some(400));
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
fn rfc8656_7_2_an_ipv4_relay_asked_over_ipv6_binds_the_hosts_ipv4_address() {
    // No REQUESTED-ADDRESS-FAMILY means IPv4, whatever the client's own family.
    let mut c = config();
    c.relay.host_v4 = Some("10.0.0.1".parse().unwrap());
    let mut h = Harness::with_config(c);
    h.client = FiveTuple {
        transport: Transport::Udp,
        client: addr("[2001:db8::7]:40000").into(),
        server: addr("[2001:db8::1]:3478"),
    };
    assert_eq!(error_code(&h.allocate()), None);
    assert_eq!(h.relay_addr().ip(), "10.0.0.1".parse::<std::net::IpAddr>().unwrap());
    // To ::1, the IPv4 loopback; with no IPv4 address known, 440.
    let mut h = Harness::new();
    h.client = FiveTuple { transport: Transport::Udp, client: addr("[::1]:40000").into(), server: addr("[::1]:3478") };
    assert_eq!(error_code(&h.allocate()), None);
    assert_eq!(h.relay_addr().ip(), "127.0.0.1".parse::<std::net::IpAddr>().unwrap());
    let mut h = Harness::new();
    h.client = FiveTuple {
        transport: Transport::Udp,
        client: addr("[2001:db8::7]:40000").into(),
        server: addr("[2001:db8::1]:3478"),
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

#[test]
fn rfc6062_connect_attempts_in_progress_are_bounded_per_allocation() {
    use crate::turn::tcp_relay::{connect_method, MAX_CONNECTING_PER_ALLOCATION};
    let mut h = Harness::new();
    h.client.transport = Transport::Tcp;
    assert_eq!(h.request(ALLOCATE, vec![RequestedTransport::new(6).into()]).class(), MessageClass::SuccessResponse);
    let mut connecting = Vec::new();
    for i in 0..MAX_CONNECTING_PER_ALLOCATION as u16 {
        let bytes = h.authenticated(
            connect_method(),
            vec![XorPeerAddress::new(addr(&format!("192.0.2.200:{}", 1000 + i))).into()],
        );
        assert!(h.send_raw(&bytes).is_empty(), "Connect {i} waits for the shell");
        let Some(Output::ConnectPeer { connection, .. }) = h.tcp_outputs.pop() else { panic!("no ConnectPeer") };
        connecting.push(connection);
    }
    // One more while the first eight still connect: refused, with no socket opened.
    let bytes = h.authenticated(connect_method(), vec![XorPeerAddress::new(addr("192.0.2.200:2000")).into()]);
    let answer = message::decode(&h.send_raw(&bytes)[0]).unwrap().message;
    assert_eq!(error_code(&answer), Some(486));
    assert!(h.tcp_outputs.is_empty());
    // One finishes (fails): room for one more.
    h.server.handle_peer_connected(h.now, connecting[0], false);
    h.drain();
    let bytes = h.authenticated(connect_method(), vec![XorPeerAddress::new(addr("192.0.2.200:2001")).into()]);
    assert!(h.send_raw(&bytes).is_empty());
    assert!(matches!(h.tcp_outputs.pop(), Some(Output::ConnectPeer { .. })));
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
    assert_eq!(h.server.revoke("alice", h.now, UNIX_NOW, &mut h.ledger.lock().unwrap()), Ok(1));
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
