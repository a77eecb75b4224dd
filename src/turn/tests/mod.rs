//! Scenario tests of the core on virtual time: scripted inputs, expected outputs, no
//! sockets and no sleeps. This file is the harness (a scripted shell and client); the
//! tests are grouped by what they cover in the files beside it.

mod allocate;
mod fleet;
mod lookup;
mod mobility;
mod relay;
mod requests;
mod rfc6062;
mod tenants;
mod upgrade;
mod workers;

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
    /// The realm requests name (and their key is made with).
    realm: &'static str,
    bind_failures: Vec<RelayBindError>,
    opened: Vec<(AllocationId, SocketAddr)>,
    closed: Vec<AllocationId>,
    events: Vec<Event>,
    tcp_outputs: Vec<Output>,
    /// What the last drain transmitted.
    sent: Vec<Vec<u8>>,
    /// RFC 8016 fetches the core asked for, for the test to carry to the other worker.
    fetches: Vec<crate::turn::output::Fetch>,
    /// Lookups the core asked for: (realm, username).
    lookups: Vec<(String, String)>,
}

type Shared = Arc<Mutex<Ledger>>;

/// The scripted shell: relay sockets bind unless a failure is queued; RFC 6062
/// outputs are kept for the tests that script those sockets.
impl Effects for Harness {
    type Ledger = Mutex<Ledger>;
    fn parts(&mut self) -> (&mut Server, &Mutex<Ledger>) {
        (&mut self.server, &self.ledger)
    }
    fn now(&self) -> Instant {
        self.now
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
    fn lookup_user(&mut self, realm: String, username: String) {
        self.lookups.push((realm, username));
    }
    fn event(&mut self, event: Event) {
        self.events.push(event);
    }
    fn fetch_allocation(&mut self, fetch: crate::turn::output::Fetch) -> bool {
        self.fetches.push(fetch);
        true
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
        let server = Server::new(config, Box::new(CountingRng::default()), now, &*ledger);
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
                tenant: crate::turn::TenantId::DEFAULT,
            },
            nonce: None,
            next_tid: 0,
            user: "alice",
            password: "secret",
            realm: "example.org",
            bind_failures: Vec::new(),
            opened: Vec::new(),
            closed: Vec::new(),
            events: Vec::new(),
            tcp_outputs: Vec::new(),
            sent: Vec::new(),
            fetches: Vec::new(),
            lookups: Vec::new(),
        }
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.server.handle_timeout(self.now, &*self.ledger);
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
        carry_out(self);
        std::mem::take(&mut self.sent)
    }

    /// A client packet through both entry points, as the shell passes it: the relayed
    /// payload, if any.
    fn client_packet(&mut self, bytes: &[u8]) -> Option<ToPeer> {
        match self.server.handle_client_packet(self.now, self.client, bytes) {
            Received::Relay(out) => Some(out),
            Received::Handled => None,
            Received::Request => {
                self.server.handle_request(self.now, UNIX_NOW, self.client, bytes, &*self.ledger);
                None
            }
        }
    }

    /// Relay ports in use and available, over every worker sharing the ledger.
    fn port_usage(&self) -> (usize, usize) {
        self.ledger.lock().unwrap().port_usage()
    }

    fn reconfigure(&mut self, config: CoreConfig) {
        self.server.reconfigure(config, &*self.ledger);
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
        m.add_attribute(Realm::new(self.realm.into()).unwrap());
        m.add_attribute(Nonce::new(self.nonce.clone().unwrap_or_else(|| "none".into())).unwrap());
        let key = long_term_key_md5(self.user, self.realm, self.password);
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
        Server::new_worker(config.clone(), rng, now, &*ledger, [7; 32], index, 2)
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
