//! Micro-benchmarks of the code every packet or request runs through: the STUN codec
//! (Binding, authenticated Allocate), integrity and fingerprint, and the sans-IO core's
//! relay path and request handling, driven directly (no sockets).
//!
//! `cargo bench --bench micro` (add a filter after `--`, e.g. `-- relay/`). Under
//! `cargo test` each benchmark runs once, as a check that it still works.
// A benchmark may unwrap: a panic is a failed run (the server code denies it, Cargo.toml [lints]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::net::SocketAddr;
use std::time::Instant;
use stun_codec::rfc5389::attributes::{Nonce, Realm, Software, Username, XorMappedAddress};
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5766::attributes::{Lifetime, RequestedTransport, XorPeerAddress};
use stun_codec::rfc5766::methods::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, REFRESH};
use stun_codec::{MessageClass, Method, TransactionId};
use turnd::stun::attributes::{Attribute, Opaque};
use turnd::stun::integrity::{self, long_term_key_md5, IntegrityKind};
use turnd::stun::message::{self, IntegritySet, Message, Protection};
use turnd::turn::auth::Credentials;
use turnd::turn::policy::PeerPolicy;
use turnd::turn::relay::ToPeer;
use turnd::turn::relay::{PEER_HEADROOM, PEER_TAILROOM};
use turnd::turn::{
    AllocationId, CoreConfig, FiveTuple, Ledger, Output, PeerAddr, Quotas, Received, Rng, Server, Transport,
};

const USER: &str = "alice";
const PASSWORD: &str = "secret";
const REALM: &str = "example.org";
const PEER: &str = "192.0.2.200:9000";
const CHANNEL: u16 = 0x4000;

/// A deterministic "random" source (the core only needs it for nonce secrets, ports
/// and transaction id prefixes).
struct Counting(u64);

impl Rng for Counting {
    fn fill(&mut self, dest: &mut [u8]) {
        for b in dest {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            *b = (self.0 >> 56) as u8;
        }
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

fn config() -> CoreConfig {
    let mut credentials = Credentials::new(REALM);
    credentials.add_user(USER, PASSWORD);
    CoreConfig {
        credentials,
        port_range: 20000..=60000,
        // 192.0.2.0/24 is documentation space, denied by default.
        policy: PeerPolicy::new(vec!["192.0.2.0/24".parse().expect("net")], vec![]),
        quotas: Quotas {
            total_allocations: 100_000,
            allocations_per_user: 100_000,
            allocations_per_ip: 100_000,
            ..Quotas::default()
        },
        ..CoreConfig::default()
    }
}

/// Client `i`'s 5-tuple: an address of its own (so no per-source-IP limit is shared),
/// the same server address.
fn client(i: u32) -> FiveTuple {
    let ip = std::net::Ipv4Addr::from(0x0A00_0000 + i); // 10.0.0.0 and up
    FiveTuple {
        transport: Transport::Udp,
        client: SocketAddr::new(ip.into(), 40000).into(),
        server: addr("192.0.2.1:3478"),
        tenant: turnd::turn::TenantId::DEFAULT,
    }
}

fn tid(n: u64) -> TransactionId {
    let mut t = [0u8; 12];
    t[4..].copy_from_slice(&n.to_be_bytes());
    TransactionId::new(t)
}

/// An authenticated request with `nonce` (MESSAGE-INTEGRITY and FINGERPRINT).
fn authenticated(method: Method, id: u64, attrs: Vec<Attribute>, nonce: &str) -> Vec<u8> {
    let mut m = Message::new(MessageClass::Request, method, tid(id));
    for a in attrs {
        m.add_attribute(a);
    }
    m.add_attribute(Username::new(USER.into()).expect("username"));
    m.add_attribute(Realm::new(REALM.into()).expect("realm"));
    m.add_attribute(Nonce::new(nonce.into()).expect("nonce"));
    let key = long_term_key_md5(USER, REALM, PASSWORD);
    let set = IntegritySet { sha1: true, sha256: false };
    message::encode(m, Protection { key: Some((&key, set)), fingerprint: true }).expect("encode")
}

fn binding_request() -> Vec<u8> {
    let mut m = Message::new(MessageClass::Request, BINDING, tid(1));
    m.add_attribute(Software::new("bench client".into()).expect("software"));
    message::encode(m, Protection { key: None, fingerprint: true }).expect("encode")
}

/// A Binding request with FINGERPRINT only: what ICE agents send a STUN server, and
/// what the Binding fast path (`stun::binding`) answers.
fn plain_binding_request() -> Vec<u8> {
    let m = Message::new(MessageClass::Request, BINDING, tid(1));
    message::encode(m, Protection { key: None, fingerprint: true }).expect("encode")
}

fn channel_number(n: u16) -> Attribute {
    let b = n.to_be_bytes();
    let number: turnd::stun::attributes::ChannelNumber = Opaque(vec![b[0], b[1], 0, 0]);
    number.into()
}

/// A core with allocations made through real requests, as the shell would drive it.
struct Core {
    server: Server,
    ledger: std::cell::RefCell<Ledger>,
    now: Instant,
    ids: Vec<AllocationId>,
}

impl Core {
    fn new() -> Self {
        let now = Instant::now();
        let ledger = std::cell::RefCell::new(Ledger::new(&config()));
        let server = Server::new(config(), Box::new(Counting(7)), now, &ledger);
        // Nonces are bound to the client address: `nonce_for` fetches one per client.
        Core { server, ledger, now, ids: Vec::new() }
    }

    /// Carries out the core's outputs; returns the transmitted messages.
    fn drain(&mut self) -> Vec<Vec<u8>> {
        let mut sent = Vec::new();
        while let Some(output) = self.server.poll_output() {
            match output {
                Output::Transmit { bytes, .. } => sent.push(bytes),
                Output::BindRelay { allocation, local, .. } => {
                    self.ids.push(allocation);
                    self.server.handle_relay_bound(self.now, allocation, local, Ok(local), &self.ledger);
                }
                _ => {}
            }
        }
        sent
    }

    fn send(&mut self, from: FiveTuple, bytes: &[u8]) -> Vec<Vec<u8>> {
        let relayed = self.packet(from, bytes);
        assert!(relayed.is_none(), "requests are answered, not relayed");
        self.drain()
    }

    /// A client packet through both entry points, as the shell passes it.
    fn packet(&mut self, from: FiveTuple, bytes: &[u8]) -> Option<ToPeer> {
        match self.server.handle_client_packet(self.now, from, bytes) {
            Received::Relay(out) => Some(out),
            Received::Handled => None,
            Received::Request => {
                self.server.handle_request(self.now, 1_800_000_000, from, bytes, &self.ledger);
                None
            }
        }
    }

    /// The nonce the server issues to `from` (from a 401).
    fn nonce_for(&mut self, from: FiveTuple) -> String {
        // A bare 20-byte Allocate is not answered (no 401 fits in three times it).
        let mut m = Message::new(MessageClass::Request, ALLOCATE, tid(0));
        m.add_attribute(RequestedTransport::new(17));
        let bytes = message::encode(m, Protection { key: None, fingerprint: false }).expect("encode");
        let answer = self.send(from, &bytes);
        let decoded = message::decode(&answer[0]).expect("401").message;
        decoded.get_attribute::<Nonce>().expect("a nonce").value().to_owned()
    }

    /// Allocates for client `i`, then binds a channel to PEER or only permits it.
    fn allocate(&mut self, i: u32, channel: bool) -> AllocationId {
        let from = client(i);
        let nonce = self.nonce_for(from);
        let req = authenticated(ALLOCATE, 1, vec![RequestedTransport::new(17).into()], &nonce);
        let answer = self.send(from, &req);
        assert_eq!(answer.len(), 1);
        let id = *self.ids.last().expect("a relay was bound");
        let peer = XorPeerAddress::new(addr(PEER));
        let req = if channel {
            authenticated(CHANNEL_BIND, 2, vec![channel_number(CHANNEL), peer.into()], &nonce)
        } else {
            authenticated(CREATE_PERMISSION, 2, vec![peer.into()], &nonce)
        };
        let answer = message::decode(&self.send(from, &req)[0]).expect("answer").message;
        assert_eq!(answer.class(), MessageClass::SuccessResponse, "prepare {i}");
        id
    }
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("stun");
    let binding = binding_request();
    g.bench_function("binding_decode", |b| b.iter(|| message::decode(black_box(&binding)).expect("decodes")));
    g.bench_function("binding_response_encode", |b| {
        b.iter(|| {
            let mut m = Message::new(MessageClass::SuccessResponse, BINDING, tid(1));
            m.add_attribute(XorMappedAddress::new(black_box(addr("198.51.100.1:40000"))));
            m.add_attribute(Software::new("turnd/0.1.0".into()).expect("software"));
            message::encode(m, Protection { key: None, fingerprint: true })
        })
    });
    let allocate = authenticated(ALLOCATE, 9, vec![RequestedTransport::new(17).into()], "0123456789abcdef0123456789ab");
    g.bench_function("allocate_decode", |b| b.iter(|| message::decode(black_box(&allocate)).expect("decodes")));
    let key = long_term_key_md5(USER, REALM, PASSWORD);
    g.bench_function("allocate_decode_and_verify", |b| {
        b.iter(|| {
            let d = message::decode(black_box(&allocate)).expect("decodes");
            assert!(d.integrity_sha1.expect("integrity").verify(&key, &allocate));
        })
    });
    g.finish();

    let mut g = c.benchmark_group("integrity");
    let d = message::decode(&allocate).expect("decodes");
    let mi = d.integrity_sha1.expect("integrity");
    g.bench_function("verify_hmac_sha1", |b| b.iter(|| mi.verify(black_box(&key), black_box(&allocate))));
    let covered = allocate[..mi.offset].to_vec();
    g.bench_function("append_hmac_sha1", |b| {
        b.iter_batched(
            || covered.clone(),
            |mut m| integrity::append_integrity(&mut m, IntegrityKind::Sha1, &key),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("append_fingerprint", |b| {
        b.iter_batched(|| covered.clone(), |mut m| integrity::append_fingerprint(&mut m), BatchSize::SmallInput)
    });
    g.bench_function("long_term_key_md5", |b| b.iter(|| long_term_key_md5(black_box(USER), REALM, PASSWORD)));
    g.finish();
}

fn core(c: &mut Criterion) {
    let mut g = c.benchmark_group("core");
    let mut core = Core::new();
    let binding = binding_request();
    let from = client(0);
    g.bench_function("binding_request", |b| {
        b.iter(|| {
            core.packet(from, black_box(&binding));
            while let Some(out) = core.server.poll_output() {
                black_box(out);
            }
        })
    });
    let plain = plain_binding_request();
    g.bench_function("plain_binding_request", |b| {
        b.iter(|| {
            core.packet(from, black_box(&plain));
            while let Some(out) = core.server.poll_output() {
                black_box(out);
            }
        })
    });
    // The whole pair as the core sees it: decode, authenticate (HMAC), allocate a
    // port, open the relay (answered at once here), respond; then Refresh(0), respond.
    // The same bytes work every time: each Allocate finds no allocation on the 5-tuple.
    let from = client(1);
    let nonce = core.nonce_for(from);
    let allocate = authenticated(ALLOCATE, 11, vec![RequestedTransport::new(17).into()], &nonce);
    let refresh = authenticated(REFRESH, 12, vec![Lifetime::from_u32(0).into()], &nonce);
    g.bench_function("allocate_refresh0_pair", |b| {
        b.iter(|| {
            let a = core.send(from, black_box(&allocate));
            let r = core.send(from, black_box(&refresh));
            debug_assert!(a.len() == 1 && r.len() == 1);
            core.ids.clear();
        })
    });
    g.finish();
}

fn relay(c: &mut Criterion) {
    let mut g = c.benchmark_group("relay");
    g.throughput(Throughput::Elements(1));
    let payload = vec![0xA5u8; 100];
    let peer = addr(PEER);
    // `cargo bench` passes --bench; under `cargo test` (a debug build, run once) the
    // 10,000-allocation setup would only cost time.
    let sizes: &[u32] = if std::env::args().any(|a| a == "--bench") { &[1, 1000, 10_000] } else { &[1, 100] };
    for &allocations in sizes {
        let mut core = Core::new();
        let ids: Vec<AllocationId> = (0..allocations).map(|i| core.allocate(i, true)).collect();
        let mut frame = CHANNEL.to_be_bytes().to_vec();
        frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        frame.extend_from_slice(&payload);
        // Walk the clients so lookups are not always the same hot entry.
        let mut i = 0u32;
        g.bench_function(format!("channel_data_to_peer/{allocations}"), |b| {
            b.iter(|| {
                i = (i + 1) % allocations;
                let out = core.packet(client(i), black_box(&frame));
                black_box(out.expect("relayed"))
            })
        });
        let mut buf = vec![0u8; PEER_HEADROOM + payload.len() + PEER_TAILROOM];
        buf[PEER_HEADROOM..PEER_HEADROOM + payload.len()].copy_from_slice(&payload);
        let range = PEER_HEADROOM..PEER_HEADROOM + payload.len();
        let mut k = 0usize;
        g.bench_function(format!("peer_to_channel_data/{allocations}"), |b| {
            b.iter(|| {
                k = (k + 1) % ids.len();
                let out =
                    core.server.handle_peer_packet(core.now, ids[k], PeerAddr::new(peer), &mut buf, range.clone());
                black_box(out.expect("relayed"))
            })
        });
    }
    // Send and Data indications (no channel bound: the peer direction frames a Data
    // indication, the client direction parses a Send indication).
    let mut core = Core::new();
    let id = core.allocate(0, false);
    let mut send = Message::new(MessageClass::Indication, stun_codec::rfc5766::methods::SEND, tid(5));
    send.add_attribute(XorPeerAddress::new(peer));
    send.add_attribute(stun_codec::rfc5766::attributes::Data::new(payload.clone()).expect("data"));
    let send = message::encode(send, Protection { key: None, fingerprint: false }).expect("encode");
    let from = client(0);
    g.bench_function("send_indication_to_peer", |b| {
        b.iter(|| black_box(core.packet(from, black_box(&send)).expect("relayed")))
    });
    let mut buf = vec![0u8; PEER_HEADROOM + payload.len() + PEER_TAILROOM];
    let range = PEER_HEADROOM..PEER_HEADROOM + payload.len();
    g.bench_function("peer_to_data_indication", |b| {
        b.iter(|| {
            black_box(
                core.server
                    .handle_peer_packet(core.now, id, PeerAddr::new(peer), &mut buf, range.clone())
                    .expect("relayed"),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, codec, core, relay);
criterion_main!(benches);
