//! A scripted shell around `turnd::turn::Server` on virtual time, shared by the `server`
//! fuzz target and the property tests (`tests/properties.rs` includes this file by
//! path). It carries out the core's outputs the way the real event loop does, and after
//! every input checks what must always hold:
//!
//! - no panic, whatever the input;
//! - `allocation_count()` within the total quota, per-user and per-IP counts within
//!   theirs (a user is a name in a tenant: three clients belong to a second tenant,
//!   held to its own per-user and total quotas), live permissions and channels within
//!   theirs;
//! - `port_usage()` adds up to the range, every relay port is in the range, held by one
//!   allocation only, and counted as in use;
//! - no allocation outlives its lifetime (after `handle_timeout(now)`, every allocation
//!   expires after `now` and no later than `now + max-lifetime`);
//! - a channel number maps to one peer and a peer to one channel number;
//! - nothing is relayed either way without a live permission;
//! - every relay socket the shell holds belongs to a live allocation (nothing leaks);
//! - every response decodes and answers the request's transaction;
//! - what the relay path hands back stays inside the buffers and goes where it should;
//! - at the end, once every lifetime has run out, every port is back in the pool.
//!
//! Requests are encoded and signed by the driver with the right key and the nonce the
//! server last issued to that client, so inputs reach deep into the state machine: a
//! fuzzer could never forge an HMAC on its own.

// The property tests use only part of it.
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use stun_codec::rfc5389::attributes::{ErrorCode, Nonce, Realm, Username};
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5766::attributes::{
    Data, DontFragment, EvenPort, Lifetime, RequestedTransport, ReservationToken, XorPeerAddress, XorRelayAddress,
};
use stun_codec::rfc5766::methods::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, REFRESH, SEND};
use stun_codec::rfc8656::attributes::{AdditionalAddressFamily, AddressFamily, RequestedAddressFamily};
use stun_codec::{MessageClass, Method, TransactionId};
use turnd::stun::attributes::{Attribute, ChannelNumber, Opaque};
use turnd::stun::channel_data::ChannelData;
use turnd::stun::integrity::long_term_key_md5;
use turnd::stun::message::{self, IntegritySet, Message, Protection};
use turnd::turn::auth::{rest_password, Credentials};
use turnd::turn::effects::{carry_out, Effects};
use turnd::turn::policy::PeerPolicy;
use turnd::turn::relay::{PEER_HEADROOM, PEER_TAILROOM};
use turnd::turn::server::RESERVATION_LIFETIME;
use turnd::turn::tenant::Tenant;
use turnd::turn::{
    AllocationId, ConnectionId, CoreConfig, Event, FiveTuple, Ledger, PeerAddr, Quotas, Received, RelayAddresses,
    RelayBindError, Rng, Server, TenantId, Transport,
};

/// The realm of the default tenant's users.
pub const REALM: &str = "fuzz.example";
/// A second tenant: its realm, id and alice's password there (bob is not one of its
/// users; the REST secret is shared).
pub const B_REALM: &str = "b.fuzz.example";
/// The second tenant's id.
pub const B: TenantId = TenantId(1);
const B_ALICE_PASSWORD: &str = "b-secret";
/// The wall clock at the start (seconds since the epoch).
pub const UNIX_START: u64 = 1_800_000_000;
/// The REST user's credential expires this long after the start (wall clock).
pub const REST_VALIDITY: u64 = 3600;
/// The relay port range: small, so exhaustion is reached.
pub const PORTS: std::ops::RangeInclusive<u16> = 50000..=50011;
/// The longest lifetime granted.
pub const MAX_LIFETIME: Duration = Duration::from_secs(3600);
/// Channel numbers the driver uses (checked for the channel invariants).
pub const CHANNELS: [u16; 6] = [0x4000, 0x4001, 0x4002, 0x4FFF, 0x5000, 0x7FFF];
const SHARED_SECRET: &[u8] = b"rest-secret";

/// The quotas: small, so every limit is reached.
pub fn quotas() -> Quotas {
    Quotas {
        total_allocations: 6,
        allocations_per_user: 4,
        allocations_per_ip: 3,
        permissions_per_allocation: 3,
        channels_per_allocation: 2,
        ..Quotas::default()
    }
}

/// The second tenant's quotas: tighter still, so its own totals are reached.
pub fn b_quotas() -> Quotas {
    Quotas { total_allocations: 2, allocations_per_user: 1, ..quotas() }
}

/// Users: (name, password); the last is a TURN REST API user.
fn users() -> [(String, String); 3] {
    let rest = format!("{}:carol", UNIX_START + REST_VALIDITY);
    let rest_pass = rest_password(SHARED_SECRET, &rest);
    [("alice".into(), "secret".into()), ("bob".into(), "hunter2".into()), (rest, rest_pass)]
}

/// The clients: 5-tuples over both families and transports, some sharing an IP.
pub fn clients() -> Vec<FiveTuple> {
    let v4 = |c: &str| FiveTuple {
        transport: Transport::Udp,
        client: c.parse().unwrap(),
        server: server_v4(),
        tenant: TenantId::DEFAULT,
    };
    let v6 = |c: &str| FiveTuple {
        transport: Transport::Udp,
        client: c.parse().unwrap(),
        server: server_v6(),
        tenant: TenantId::DEFAULT,
    };
    let mut tcp = v4("198.51.100.9:40000");
    tcp.transport = Transport::Tcp;
    let mut tls = v6("[2001:db8:9::9]:40000");
    tls.transport = Transport::Tls;
    vec![
        v4("198.51.100.1:40000"),
        v4("198.51.100.1:40001"),
        v4("198.51.100.1:40002"),
        v4("198.51.100.1:40003"),
        v4("198.51.100.2:40000"),
        v6("[2001:db8:9::1]:40000"),
        tcp,
        tls,
        // The second tenant's clients (8, 9, 10), from an IP of their own.
        FiveTuple { tenant: B, ..v4("198.51.100.3:40000") },
        FiveTuple { tenant: B, ..v4("198.51.100.3:40001") },
        FiveTuple { tenant: B, ..v4("198.51.100.3:40002") },
    ]
}

fn server_v4() -> SocketAddr {
    "203.0.113.1:3478".parse().unwrap()
}

fn server_v6() -> SocketAddr {
    "[2001:db8::1]:3478".parse().unwrap()
}

/// Peers: allowed ones of both families, denied ones in every disguise, and the
/// server's own listener.
pub fn peers() -> Vec<SocketAddr> {
    [
        "192.0.2.10:9000",
        "192.0.2.11:9001",
        "[2001:db8:77::1]:9000",
        "[::ffff:192.0.2.12]:9002",
        "10.0.0.1:9000",
        "127.0.0.1:9000",
        "[::ffff:10.0.0.1]:9000",
        "[64:ff9b::a00:1]:9000",
        "[2002:a00:1::]:9000",
        "203.0.113.1:3478",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect()
}

/// The core's configuration for the driver.
pub fn config() -> CoreConfig {
    let mut credentials = Credentials::new(REALM);
    let [alice, bob, _] = users();
    credentials.add_user(&alice.0, &alice.1);
    credentials.add_user(&bob.0, &bob.1);
    credentials.add_secret(SHARED_SECRET);
    let mut policy = PeerPolicy::new(
        vec!["192.0.2.0/24".parse().unwrap(), "2001:db8:77::/48".parse().unwrap()],
        vec!["192.0.2.99/32".parse().unwrap()],
    );
    policy.deny_own_sockets([server_v4(), server_v6()]);
    let mut b = Credentials::new(B_REALM);
    b.add_user(&alice.0, B_ALICE_PASSWORD);
    b.add_secret(SHARED_SECRET);
    let tenants = vec![Tenant { id: B, credentials: b, quotas: b_quotas(), policy: policy.clone() }];
    CoreConfig {
        software: Some("turnd-fuzz".into()),
        credentials,
        nonce_lifetime: Duration::from_secs(600),
        max_lifetime: MAX_LIFETIME,
        port_range: PORTS,
        relay: RelayAddresses { bind_v6: Some("2001:db8::1".parse().unwrap()), ..RelayAddresses::default() },
        policy,
        quotas: quotas(),
        tenants,
        ..CoreConfig::default()
    }
}

/// A deterministic random source (splitmix64) for the core.
#[derive(Debug, Clone)]
pub struct SeededRng(pub u64);

impl Rng for SeededRng {
    fn fill(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_be_bytes()[..chunk.len()]);
        }
    }
}

/// Which relay family an Allocate asks for (RFC 8656 §7.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FamilyRequest {
    /// No family attribute.
    Default,
    /// REQUESTED-ADDRESS-FAMILY IPv4.
    RequestV4,
    /// REQUESTED-ADDRESS-FAMILY IPv6.
    RequestV6,
    /// ADDITIONAL-ADDRESS-FAMILY IPv6 (dual stack).
    AdditionalV6,
}

/// An authenticated request the driver encodes and signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Binding (no authentication).
    Binding,
    /// Allocate.
    Allocate {
        /// LIFETIME, if any.
        lifetime: Option<u32>,
        /// EVEN-PORT, with its R bit.
        even_port: Option<bool>,
        /// RESERVATION-TOKEN: the last token the server handed out (or a made-up one).
        token: bool,
        /// Address family attributes.
        family: FamilyRequest,
        /// DONT-FRAGMENT.
        dont_fragment: bool,
        /// REQUESTED-TRANSPORT protocol (17 is UDP); `None` leaves it out.
        transport: Option<u8>,
    },
    /// Refresh with an optional LIFETIME (0 deletes).
    Refresh {
        /// LIFETIME, if any.
        lifetime: Option<u32>,
    },
    /// CreatePermission for peers (indices into [`peers`]).
    CreatePermission {
        /// Peers.
        peers: Vec<u8>,
    },
    /// ChannelBind (index into [`CHANNELS`], or a raw number when >= 0x100).
    ChannelBind {
        /// The channel number or index.
        channel: u16,
        /// The peer index.
        peer: u8,
    },
}

/// One input to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A request from client `client`, signed with user `user`'s key.
    Request {
        /// Client index.
        client: u8,
        /// User index.
        user: u8,
        /// Use MESSAGE-INTEGRITY-SHA256 as well as (or, when `sha1` is false, instead of)
        /// MESSAGE-INTEGRITY.
        sha256: bool,
        /// Use MESSAGE-INTEGRITY.
        sha1: bool,
        /// A wrong password (401 expected).
        wrong_key: bool,
        /// The request.
        request: Request,
    },
    /// Raw bytes from a client, as they came.
    Raw {
        /// Client index.
        client: u8,
        /// The datagram.
        bytes: Vec<u8>,
    },
    /// ChannelData from a client, possibly with a lying length field.
    ChannelData {
        /// Client index.
        client: u8,
        /// The channel (index into [`CHANNELS`] or raw).
        channel: u16,
        /// Payload length.
        len: u16,
        /// Added to the length field (a lie when non-zero).
        lie: i8,
    },
    /// A Send indication from a client.
    Send {
        /// Client index.
        client: u8,
        /// Peer index.
        peer: u8,
        /// Payload length.
        len: u16,
    },
    /// A datagram from a peer to the relay of the `allocation`-th allocation (by id).
    Peer {
        /// Allocation index.
        allocation: u8,
        /// Peer index.
        peer: u8,
        /// Payload length.
        len: u16,
    },
    /// Virtual time passes.
    Advance {
        /// Milliseconds.
        millis: u32,
    },
    /// The wall clock jumps (REST credentials use it; lifetimes must not).
    WallJump {
        /// Seconds, either way.
        seconds: i32,
    },
    /// The next `count` relay binds fail.
    FailBinds {
        /// How many.
        count: u8,
        /// With EADDRINUSE (retried on another port) rather than anything else.
        in_use: bool,
    },
    /// A stream client's connection closes.
    Close {
        /// Client index.
        client: u8,
    },
    /// The server starts draining: new Allocates are turned away.
    Drain,
}

/// A cursor over fuzzer bytes; reads past the end give zeros.
pub struct Bytes<'a>(pub &'a [u8]);

impl Bytes<'_> {
    /// One byte.
    pub fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    /// Two bytes, big-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    /// Four bytes, big-endian.
    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    /// Whether bytes are left.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Up to `n` bytes.
    pub fn take(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head.to_vec()
    }
}

impl Op {
    /// Decodes one operation from fuzzer bytes.
    pub fn decode(b: &mut Bytes<'_>) -> Op {
        let kind = b.u8();
        match kind % 16 {
            0..=5 => {
                let client = b.u8();
                let flags = b.u8();
                let request = match b.u8() % 8 {
                    0 => Request::Binding,
                    1 | 2 => {
                        let f = b.u8();
                        Request::Allocate {
                            lifetime: (f & 1 != 0).then(|| b.u32() % 7200),
                            even_port: (f & 2 != 0).then_some(f & 4 != 0),
                            token: f & 8 != 0,
                            family: match (f >> 4) & 3 {
                                0 => FamilyRequest::Default,
                                1 => FamilyRequest::RequestV4,
                                2 => FamilyRequest::RequestV6,
                                _ => FamilyRequest::AdditionalV6,
                            },
                            dont_fragment: f & 0x40 != 0,
                            transport: if f & 0x80 != 0 { Some(b.u8()) } else { Some(17) },
                        }
                    }
                    3 => Request::Refresh { lifetime: if b.u8() % 4 == 0 { Some(0) } else { Some(b.u32() % 7200) } },
                    4 | 5 => {
                        let n = 1 + b.u8() % 4;
                        Request::CreatePermission { peers: (0..n).map(|_| b.u8()).collect() }
                    }
                    _ => Request::ChannelBind { channel: b.u16(), peer: b.u8() },
                };
                Op::Request {
                    client,
                    user: flags & 3,
                    sha256: flags & 4 != 0,
                    sha1: flags & 8 == 0,
                    wrong_key: flags & 0x30 == 0x30,
                    request,
                }
            }
            6 => {
                let client = b.u8();
                let len = usize::from(b.u8()) * 2;
                Op::Raw { client, bytes: b.take(len) }
            }
            7 | 8 => Op::ChannelData { client: b.u8(), channel: b.u16(), len: b.u16() % 1500, lie: b.u8() as i8 % 8 },
            9 => Op::Send { client: b.u8(), peer: b.u8(), len: b.u16() % 1500 },
            10 | 11 => Op::Peer { allocation: b.u8(), peer: b.u8(), len: b.u16() % 1500 },
            12 | 13 => Op::Advance { millis: b.u32() % 4_000_000 },
            14 => match b.u8() % 4 {
                0 => Op::WallJump { seconds: b.u32() as i32 },
                1 => Op::Close { client: b.u8() },
                2 => Op::Drain,
                _ => Op::FailBinds { count: b.u8() % 10, in_use: b.u8() % 2 == 0 },
            },
            _ => Op::FailBinds { count: b.u8() % 10, in_use: b.u8() % 2 == 0 },
        }
    }

    /// Decodes operations until the bytes run out (at most `max`).
    pub fn decode_all(bytes: &[u8], max: usize) -> Vec<Op> {
        let mut b = Bytes(bytes);
        let mut ops = Vec::new();
        while !b.is_empty() && ops.len() < max {
            ops.push(Op::decode(&mut b));
        }
        ops
    }
}

/// What the driver saw, for the property tests to assert on.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Responses by class: success, error.
    pub successes: u64,
    /// Error responses.
    pub errors: u64,
    /// Error codes seen.
    pub codes: BTreeMap<u16, u64>,
    /// Allocations created (success responses to Allocate).
    pub allocated: u64,
    /// Packets relayed towards peers.
    pub to_peer: u64,
    /// Packets relayed towards clients.
    pub to_client: u64,
    /// The outcome of the last request: `Some(None)` success, `Some(Some(code))` an
    /// error, `None` no answer.
    pub last: Option<Option<u16>>,
}

/// The scripted shell.
pub struct Driver {
    /// The core under test.
    pub server: Server,
    /// Its ledger (one worker: no one to share it with, so no lock).
    pub ledger: RefCell<Ledger>,
    /// Virtual monotonic time.
    pub now: Instant,
    /// The start of virtual time.
    pub start: Instant,
    /// Virtual wall-clock time.
    pub unix_now: u64,
    clients: Vec<FiveTuple>,
    peers: Vec<SocketAddr>,
    nonces: HashMap<usize, String>,
    tokens: Vec<u64>,
    next_tid: u64,
    bind_failures: Vec<RelayBindError>,
    /// Relay sockets the shell holds: bound address by allocation.
    sockets: BTreeMap<AllocationId, Vec<SocketAddr>>,
    /// What the drain in progress transmitted.
    sent: Vec<(FiveTuple, Vec<u8>)>,
    /// What happened.
    pub tally: Tally,
}

impl Driver {
    /// A fresh server whose randomness comes from `seed`.
    pub fn new(seed: u64) -> Driver {
        let start = Instant::now();
        let ledger = RefCell::new(Ledger::new(&config()));
        Driver {
            server: Server::new(config(), Box::new(SeededRng(seed)), start, &ledger),
            ledger,
            now: start,
            start,
            unix_now: UNIX_START,
            clients: clients(),
            peers: peers(),
            nonces: HashMap::new(),
            tokens: Vec::new(),
            next_tid: 0,
            bind_failures: Vec::new(),
            sockets: BTreeMap::new(),
            sent: Vec::new(),
            tally: Tally::default(),
        }
    }

    fn client(&self, index: u8) -> (usize, FiveTuple) {
        let i = usize::from(index) % self.clients.len();
        (i, self.clients[i])
    }

    fn peer(&self, index: u8) -> SocketAddr {
        self.peers[usize::from(index) % self.peers.len()]
    }

    fn tid(&mut self) -> TransactionId {
        self.next_tid += 1;
        let mut t = [0u8; 12];
        t[4..].copy_from_slice(&self.next_tid.to_be_bytes());
        TransactionId::new(t)
    }

    /// Applies one operation, then checks every invariant.
    pub fn apply(&mut self, op: &Op) {
        match op {
            Op::Request { client, user, sha256, sha1, wrong_key, request } => {
                let (index, from) = self.client(*client);
                for attempt in 0..2 {
                    let (tid, bytes) = self.encode_request(index, *user, *sha1, *sha256, *wrong_key, request);
                    let relayed = self.client_packet(from, &bytes);
                    assert!(relayed.is_none(), "a request was relayed: {request:?}");
                    let answers = self.drain();
                    let retry = self.check_answers(index, from, tid, &answers, request);
                    if !(retry && attempt == 0) {
                        break;
                    }
                }
            }
            Op::Raw { client, bytes } => {
                let (_, from) = self.client(*client);
                let relayed = self.client_packet(from, bytes);
                self.check_to_peer(from, bytes, relayed);
                self.drain();
            }
            Op::ChannelData { client, channel, len, lie } => {
                let (_, from) = self.client(*client);
                let channel = channel_number(*channel);
                let claimed = (i32::from(*len) + i32::from(*lie)).clamp(0, 0xFFFF) as u16;
                let mut bytes = channel.to_be_bytes().to_vec();
                bytes.extend_from_slice(&claimed.to_be_bytes());
                bytes.extend((0..*len).map(|i| i as u8));
                let relayed = self.client_packet(from, &bytes);
                if let Some(out) = &relayed {
                    assert!(claimed <= *len, "ChannelData relayed with a length past the datagram");
                    assert_eq!(out.payload.len(), usize::from(claimed));
                }
                self.check_to_peer(from, &bytes, relayed);
                self.drain();
            }
            Op::Send { client, peer, len } => {
                let (_, from) = self.client(*client);
                let peer = self.peer(*peer);
                let mut m = Message::new(MessageClass::Indication, SEND, self.tid());
                m.add_attribute(XorPeerAddress::new(peer));
                m.add_attribute(Data::new(vec![0x5A; usize::from(*len)]).expect("DATA fits"));
                let bytes = message::encode(m, Protection { key: None, fingerprint: false }).expect("encode Send");
                let relayed = self.client_packet(from, &bytes);
                if let Some(out) = &relayed {
                    assert_eq!(out.payload.len(), usize::from(*len));
                    assert!(policy_allows(out.peer.get()), "Send relayed to a denied peer {}", out.peer);
                }
                self.check_to_peer(from, &bytes, relayed);
                self.drain();
            }
            Op::Peer { allocation, peer, len } => {
                let ids: Vec<AllocationId> = self.sockets.keys().copied().collect();
                let id = match ids.get(usize::from(*allocation) % ids.len().max(1)) {
                    Some(id) => *id,
                    // No allocation: a datagram for a stale id must be dropped quietly.
                    None => AllocationId(u64::from(*allocation)),
                };
                let peer = self.peer(*peer);
                let len = usize::from(*len);
                let mut buf = vec![0xEE; PEER_HEADROOM + len + PEER_TAILROOM];
                buf[PEER_HEADROOM..PEER_HEADROOM + len].fill(0xA5);
                let payload = PEER_HEADROOM..PEER_HEADROOM + len;
                if let Some(out) = self.server.handle_peer_packet(self.now, id, PeerAddr::new(peer), &mut buf, payload)
                {
                    self.tally.to_client += 1;
                    let allocation = self.server.allocation(id).expect("relayed to a client with no allocation");
                    assert_eq!(out.to, allocation.five_tuple, "relayed to another client");
                    let canonical = unmapped(peer);
                    assert!(
                        allocation.is_permitted(canonical.ip(), self.now),
                        "relayed from a peer without permission"
                    );
                    let framed = buf.get(out.range.clone()).expect("framed range inside the buffer");
                    check_framed(framed, canonical, len, out.to.transport != Transport::Udp);
                }
                self.drain();
            }
            Op::Advance { millis } => {
                self.now += Duration::from_millis(u64::from(*millis));
                self.unix_now += u64::from(*millis) / 1000;
                self.timers();
            }
            Op::WallJump { seconds } => {
                self.unix_now = self.unix_now.saturating_add_signed(i64::from(*seconds));
            }
            Op::FailBinds { count, in_use } => {
                let kind = if *in_use { RelayBindError::AddrInUse } else { RelayBindError::Other };
                self.bind_failures.extend(std::iter::repeat(kind).take(usize::from(*count)));
            }
            Op::Close { client } => {
                let (_, from) = self.client(*client);
                if from.transport != Transport::Udp {
                    self.server.close_five_tuple(from, self.now, &self.ledger);
                    self.drain();
                }
            }
            Op::Drain => {
                self.server.drain(None);
                self.drain();
            }
        }
        self.check_invariants();
    }

    /// Runs the timers that are due, as the shell's single timer would.
    fn timers(&mut self) {
        while let Some(at) = self.server.poll_timeout() {
            if at > self.now {
                break;
            }
            self.server.handle_timeout(self.now, &self.ledger);
            self.drain();
            // A due timer must make progress, or the shell would spin.
            if self.server.poll_timeout() == Some(at) {
                panic!("handle_timeout({:?}) left the same deadline due", self.now - self.start);
            }
        }
        self.server.handle_timeout(self.now, &self.ledger);
        self.drain();
    }

    /// Ends the run: every lifetime and reservation runs out; everything must return.
    pub fn finish(&mut self) {
        self.now += MAX_LIFETIME + RESERVATION_LIFETIME + Duration::from_secs(1);
        self.timers();
        self.check_invariants();
        assert_eq!(self.server.allocation_count(), 0, "allocations outlived the longest lifetime");
        let (in_use, available) = self.ledger.borrow().port_usage();
        assert_eq!(in_use, 0, "relay ports not returned to the pool");
        assert_eq!(available, PORTS.len());
        assert!(self.sockets.is_empty(), "relay sockets left open: {:?}", self.sockets);
    }

    fn encode_request(
        &mut self,
        client: usize,
        user: u8,
        sha1: bool,
        sha256: bool,
        wrong_key: bool,
        request: &Request,
    ) -> (TransactionId, Vec<u8>) {
        let tid = self.tid();
        let (method, attrs) = self.attributes(request);
        let mut m = Message::new(MessageClass::Request, method, tid);
        for a in attrs {
            m.add_attribute(a);
        }
        if *request == Request::Binding {
            let bytes = message::encode(m, Protection { key: None, fingerprint: true }).expect("encode Binding");
            return (tid, bytes);
        }
        let users = users();
        let (name, password) = &users[usize::from(user) % users.len()];
        m.add_attribute(Username::new(name.clone()).expect("username"));
        let in_b = self.clients.get(client).is_some_and(|c| c.tenant == B);
        let realm = if in_b { B_REALM } else { REALM };
        m.add_attribute(Realm::new(realm.into()).expect("realm"));
        let nonce = self.nonces.get(&client).cloned().unwrap_or_else(|| "not-a-nonce".into());
        m.add_attribute(Nonce::new(nonce).expect("nonce"));
        let password = match (wrong_key, in_b && name == "alice") {
            (true, _) => "wrong",
            (false, true) => B_ALICE_PASSWORD,
            (false, false) => password.as_str(),
        };
        let key = long_term_key_md5(name, realm, password);
        let set = IntegritySet { sha1: sha1 || !sha256, sha256 };
        let bytes = message::encode(m, Protection { key: Some((&key, set)), fingerprint: true }).expect("encode");
        (tid, bytes)
    }

    fn attributes(&mut self, request: &Request) -> (Method, Vec<Attribute>) {
        match request {
            Request::Binding => (BINDING, Vec::new()),
            Request::Allocate { lifetime, even_port, token, family, dont_fragment, transport } => {
                let mut a: Vec<Attribute> = Vec::new();
                if let Some(protocol) = transport {
                    a.push(RequestedTransport::new(*protocol).into());
                }
                if let Some(l) = lifetime {
                    a.push(Lifetime::from_u32(*l).into());
                }
                if let Some(r) = even_port {
                    a.push(EvenPort::new(*r).into());
                }
                if *token {
                    let t = self.tokens.last().copied().unwrap_or(0x0123_4567_89AB_CDEF);
                    a.push(ReservationToken::new(t).into());
                }
                match family {
                    FamilyRequest::Default => {}
                    FamilyRequest::RequestV4 => a.push(RequestedAddressFamily::new(AddressFamily::V4).into()),
                    FamilyRequest::RequestV6 => a.push(RequestedAddressFamily::new(AddressFamily::V6).into()),
                    FamilyRequest::AdditionalV6 => a.push(AdditionalAddressFamily::new(AddressFamily::V6).into()),
                }
                if *dont_fragment {
                    a.push(DontFragment.into());
                }
                (ALLOCATE, a)
            }
            Request::Refresh { lifetime } => {
                (REFRESH, lifetime.iter().map(|l| Lifetime::from_u32(*l).into()).collect())
            }
            Request::CreatePermission { peers } => {
                (CREATE_PERMISSION, peers.iter().map(|p| XorPeerAddress::new(self.peer(*p)).into()).collect())
            }
            Request::ChannelBind { channel, peer } => {
                let b = channel_number(*channel).to_be_bytes();
                let number: ChannelNumber = Opaque(vec![b[0], b[1], 0, 0]);
                (CHANNEL_BIND, vec![number.into(), XorPeerAddress::new(self.peer(*peer)).into()])
            }
        }
    }

    /// Checks the answers to one request; returns whether to retry with a new nonce.
    fn check_answers(
        &mut self,
        client: usize,
        from: FiveTuple,
        tid: TransactionId,
        answers: &[(FiveTuple, Vec<u8>)],
        request: &Request,
    ) -> bool {
        // An Allocate retransmitted while its sockets are bound may get no answer; every
        // other request gets exactly one.
        assert!(answers.len() <= 1, "{} answers to one request {request:?}", answers.len());
        self.tally.last = None;
        let Some((to, bytes)) = answers.first() else {
            return false;
        };
        assert_eq!(*to, from, "answered on another 5-tuple");
        let response = message::decode(bytes).expect("turnd's own response decodes").message;
        assert_eq!(response.transaction_id(), tid, "response to another transaction");
        match response.get_attribute::<ErrorCode>() {
            Some(e) => {
                let code = e.code();
                self.tally.last = Some(Some(code));
                self.tally.errors += 1;
                *self.tally.codes.entry(code).or_default() += 1;
                assert!((300..700).contains(&code), "error code {code} out of range");
                assert_eq!(response.class(), MessageClass::ErrorResponse);
                if matches!(code, 401 | 438) {
                    if let Some(nonce) = response.get_attribute::<Nonce>() {
                        let fresh = self.nonces.get(&client).map(String::as_str) != Some(nonce.value());
                        self.nonces.insert(client, nonce.value().to_owned());
                        return fresh;
                    }
                }
                false
            }
            None => {
                self.tally.last = Some(None);
                self.tally.successes += 1;
                assert_eq!(response.class(), MessageClass::SuccessResponse);
                if let Some(token) = response.get_attribute::<ReservationToken>() {
                    self.tokens.push(token.token());
                }
                if matches!(request, Request::Allocate { .. }) {
                    self.tally.allocated += 1;
                    let relayed: Vec<SocketAddr> = response
                        .attributes()
                        .filter_map(|a| try_as::<XorRelayAddress>(a).map(|r| r.address()))
                        .collect();
                    assert!(!relayed.is_empty(), "Allocate success without XOR-RELAYED-ADDRESS");
                    if let Some(l) = response.get_attribute::<Lifetime>() {
                        assert!(l.lifetime() <= MAX_LIFETIME, "granted {:?} past max-lifetime", l.lifetime());
                    }
                }
                false
            }
        }
    }

    fn check_to_peer(&mut self, from: FiveTuple, packet: &[u8], relayed: Option<turnd::turn::relay::ToPeer>) {
        let Some(out) = relayed else { return };
        self.tally.to_peer += 1;
        assert!(packet.get(out.payload.clone()).is_some(), "payload range outside the packet");
        let allocation = self.server.allocation(out.allocation).expect("relayed through a missing allocation");
        assert_eq!(allocation.five_tuple, from, "relayed through another client's allocation");
        assert!(allocation.is_permitted(out.peer.ip(), self.now), "relayed to {} without a permission", out.peer);
        assert!(allocation.relay_for(out.peer.ip()).is_some(), "no relay socket of the peer's family");
        assert!(
            self.sockets.get(&out.allocation).is_some_and(|s| !s.is_empty()),
            "relayed through an allocation with no socket"
        );
    }

    /// A client packet through both entry points, as the event loop passes it.
    fn client_packet(&mut self, from: FiveTuple, bytes: &[u8]) -> Option<turnd::turn::relay::ToPeer> {
        match self.server.handle_client_packet(self.now, from, bytes) {
            Received::Relay(out) => Some(out),
            Received::Handled => None,
            Received::Request => {
                self.server.handle_request(self.now, self.unix_now, from, bytes, &self.ledger);
                None
            }
        }
    }

    /// Carries out every output through the shell's own drain; returns the transmits.
    fn drain(&mut self) -> Vec<(FiveTuple, Vec<u8>)> {
        carry_out(self);
        std::mem::take(&mut self.sent)
    }

    /// Everything that must hold between inputs.
    pub fn check_invariants(&self) {
        let q = quotas();
        let server = &self.server;
        let count = server.allocation_count();
        assert!(count <= q.total_allocations, "{count} allocations over the total quota");
        let (in_use, available) = self.ledger.borrow().port_usage();
        assert_eq!(in_use + available, PORTS.len(), "port usage does not add up");
        let mut ports = Vec::new();
        let mut per_user: HashMap<(TenantId, &str), usize> = HashMap::new();
        let mut per_tenant: HashMap<TenantId, usize> = HashMap::new();
        let mut per_ip: HashMap<IpAddr, usize> = HashMap::new();
        let mut listed = 0;
        for (id, a) in server.allocations() {
            listed += 1;
            assert!(a.expires > self.now, "allocation {id:?} outlived its lifetime");
            assert!(a.expires <= self.now + MAX_LIFETIME, "allocation {id:?} lives past max-lifetime");
            *per_user.entry((a.five_tuple.tenant, &a.username)).or_default() += 1;
            *per_tenant.entry(a.five_tuple.tenant).or_default() += 1;
            *per_ip.entry(a.five_tuple.client.ip()).or_default() += 1;
            let relays: Vec<_> = a.relay_addrs().collect();
            assert!(!relays.is_empty(), "allocation {id:?} without a relay");
            let open = self.sockets.get(&id).cloned().unwrap_or_default();
            for r in &relays {
                assert!(PORTS.contains(&r.bound.port()), "relay port {} outside the range", r.bound.port());
                assert!(open.contains(&r.bound), "relay {} of {id:?} has no socket", r.bound);
                ports.push(r.bound.port());
            }
            let (permissions, channels) = a.counts(self.now);
            assert!(permissions <= q.permissions_per_allocation, "{permissions} permissions on {id:?}");
            assert!(channels <= q.channels_per_allocation, "{channels} channels on {id:?}");
            for n in CHANNELS {
                if let Some((peer, _)) = a.channel_peer(n, self.now) {
                    assert_eq!(a.channel_for(peer, self.now), Some(n), "channel {n:#x} and {peer} disagree");
                    // A binding outlives the permission it installed (600 s against 300 s,
                    // RFC 8656 §12): nothing flows on it then, which check_to_peer and the
                    // peer path check, but the binding itself may stand.
                }
            }
            for p in &self.peers {
                if let Some(n) = a.channel_for(PeerAddr::new(*p), self.now) {
                    assert_eq!(a.channel_peer(n, self.now).map(|(peer, _)| peer.get()), Some(unmapped(*p)));
                }
            }
        }
        assert_eq!(listed, count);
        let relays = ports.len();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), relays, "a relay port is held by two allocations");
        assert!(relays <= in_use, "{relays} relay ports held but {in_use} counted in use");
        // A user is a name in a tenant, held to that tenant's quota.
        let quota_of = |tenant: TenantId| if tenant == B { b_quotas() } else { q };
        for ((tenant, user), n) in per_user {
            assert!(n <= quota_of(tenant).allocations_per_user, "{n} allocations for {user} of {tenant:?}");
        }
        for (tenant, n) in per_tenant {
            assert!(n <= quota_of(tenant).total_allocations, "{n} allocations in {tenant:?}");
        }
        for (ip, n) in per_ip {
            assert!(n <= q.allocations_per_ip, "{n} allocations from {ip}");
        }
        // Every socket the shell holds belongs to a live allocation: nothing leaks.
        for id in self.sockets.keys() {
            assert!(server.allocation(*id).is_some(), "relay socket of ended allocation {id:?} still open");
        }
    }
}

/// Whether the policy of [`config`] lets `peer` be relayed to.
fn policy_allows(peer: SocketAddr) -> bool {
    config().policy.check(peer).is_ok()
}

fn try_as<T>(a: &Attribute) -> Option<&T>
where
    Attribute: stun_codec::convert::TryAsRef<T>,
{
    stun_codec::convert::TryAsRef::<T>::try_as_ref(a)
}

/// A channel number: an index into [`CHANNELS`] for small values, else the raw value.
fn channel_number(raw: u16) -> u16 {
    if raw < 0x100 {
        CHANNELS[usize::from(raw) % CHANNELS.len()]
    } else {
        raw
    }
}

/// `::ffff:a.b.c.d` as `a.b.c.d`.
fn unmapped(peer: SocketAddr) -> SocketAddr {
    match peer.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, |v4| SocketAddr::new(IpAddr::V4(v4), peer.port())),
        IpAddr::V4(_) => peer,
    }
}

/// Checks what the relay path framed for a client: ChannelData or a Data indication
/// carrying `len` bytes from `peer`.
fn check_framed(framed: &[u8], peer: SocketAddr, len: usize, stream: bool) {
    if let Some(cd) = ChannelData::parse_datagram(framed) {
        assert_eq!(cd.len, len, "ChannelData length field");
        let expected = if stream { 4 + len.div_ceil(4) * 4 } else { 4 + len };
        assert_eq!(framed.len(), expected, "ChannelData framing");
        assert!(framed[4..4 + len].iter().all(|b| *b == 0xA5), "payload changed");
        return;
    }
    let decoded = message::decode(framed).expect("a Data indication turnd framed decodes");
    let m = decoded.message;
    assert_eq!(m.class(), MessageClass::Indication);
    assert_eq!(m.get_attribute::<XorPeerAddress>().map(|p| p.address()), Some(peer), "Data indication peer");
    let data = m.get_attribute::<Data>().expect("DATA").data();
    assert_eq!(data.len(), len);
    assert!(data.iter().all(|b| *b == 0xA5), "payload changed");
}

/// Runs `ops` on a fresh driver and ends it (the fuzz target and the properties).
pub fn run(seed: u64, ops: &[Op]) -> Tally {
    let mut driver = Driver::new(seed);
    for op in ops {
        driver.apply(op);
    }
    driver.finish();
    driver.tally
}

/// The outputs' side of the scripted shell, checking each as it is carried out.
impl Effects for Driver {
    type Ledger = RefCell<Ledger>;

    fn parts(&mut self) -> (&mut Server, &RefCell<Ledger>) {
        (&mut self.server, &self.ledger)
    }

    fn now(&self) -> Instant {
        self.now
    }

    fn transmit(&mut self, to: FiveTuple, bytes: Vec<u8>) {
        assert!(bytes.len() <= 1500, "a {}-byte response", bytes.len());
        // Everything turnd sends decodes (RFC 3489 answers carry no cookie).
        if bytes.get(4..8) == Some(&[0x21, 0x12, 0xA4, 0x42][..]) {
            assert!(message::decode(&bytes).is_ok(), "turnd sent an undecodable message");
        }
        self.sent.push((to, bytes));
    }

    fn bind_relay(
        &mut self,
        allocation: AllocationId,
        local: SocketAddr,
        _: bool,
        _: bool,
    ) -> Result<SocketAddr, RelayBindError> {
        assert!(PORTS.contains(&local.port()), "bind outside the relay range: {local}");
        let taken = self.sockets.values().flatten().any(|s| s.port() == local.port());
        assert!(!taken, "port {} handed out while a relay socket holds it", local.port());
        if !self.bind_failures.is_empty() {
            return Err(self.bind_failures.remove(0));
        }
        self.sockets.entry(allocation).or_default().push(local);
        Ok(local)
    }

    fn close_relay(&mut self, allocation: AllocationId) {
        self.sockets.remove(&allocation);
    }

    // The RFC 6062 TCP-relay outputs (connections to peers), which this UDP-only shell
    // leaves unanswered, as a shell with no route would; and events.
    fn connect_peer(&mut self, _: ConnectionId, _: AllocationId, _: SocketAddr, _: SocketAddr) {}
    fn bind_data(&mut self, _: ConnectionId, _: FiveTuple) -> bool {
        true
    }
    fn close_peer_connection(&mut self, _: ConnectionId, _: Option<FiveTuple>) {}
    // No webhook is configured here, so the core never asks.
    fn lookup_user(&mut self, _: String, _: String) {}
    fn event(&mut self, _: Event) {}
    fn fetch_allocation(&mut self, _: turnd::turn::output::Fetch) -> bool {
        false
    }
}
