//! Property tests over turnd's public API (proptest): codec round trips for every
//! attribute turnd reads or writes, integrity that breaks with any bit flipped, stream
//! framing under arbitrary splits, peer-policy membership for arbitrary addresses of
//! both families and every IPv4 embedding, and the server's allocation, permission,
//! channel and port invariants under random operation sequences on virtual time (the
//! same driver as the `server` fuzz target), with wall-clock jumps among them.
//!
//! `PROPTEST_CASES` raises the number of cases (default 64 for the server runs).
// A test may unwrap (a panic is a failed test) and use unsafe for process plumbing
// (signals, namespaces); the server code denies both (Cargo.toml [lints]).
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

#[path = "../fuzz/src/server_driver.rs"]
mod server_driver;

use proptest::prelude::*;
use server_driver::{Driver, FamilyRequest, Op, Request, MAX_LIFETIME, PORTS, REST_VALIDITY, UNIX_START};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use stun_codec::rfc5389::attributes::{
    ErrorCode, Nonce, Realm, Software, UnknownAttributes, Username, XorMappedAddress,
};
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5766::attributes::{
    Data, DontFragment, EvenPort, Lifetime, RequestedTransport, ReservationToken, XorPeerAddress, XorRelayAddress,
};
use stun_codec::rfc8656::attributes::{AdditionalAddressFamily, AddressFamily, RequestedAddressFamily};
use stun_codec::{AttributeType, MessageClass, TransactionId};
use turnd::stun::attributes::{Attribute, ChannelNumber, Opaque};
use turnd::stun::channel_data::{ChannelData, CHANNEL_RANGE};
use turnd::stun::framing::Framer;
use turnd::stun::message::{self, IntegritySet, Message, Protection};
use turnd::stun::raw;
use turnd::turn::policy::{canonical, Denied, PeerPolicy};

// ---------------------------------------------------------------------------------
// Strategies

fn ipv4() -> impl Strategy<Value = Ipv4Addr> {
    any::<u32>().prop_map(Ipv4Addr::from)
}

fn ipv6() -> impl Strategy<Value = Ipv6Addr> {
    any::<u128>().prop_map(Ipv6Addr::from)
}

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (ipv4(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip.into(), port)),
        (ipv6(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip.into(), port)),
    ]
}

/// Text of at most `max` characters (any Unicode scalar, so multi-byte UTF-8 too).
fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>(), 0..max).prop_map(|c| c.into_iter().collect())
}

/// Every attribute turnd decodes or encodes, with arbitrary values.
fn attribute() -> impl Strategy<Value = Attribute> {
    prop_oneof![
        socket_addr().prop_map(|a| XorPeerAddress::new(a).into()),
        socket_addr().prop_map(|a| XorRelayAddress::new(a).into()),
        socket_addr().prop_map(|a| XorMappedAddress::new(a).into()),
        any::<u32>().prop_map(|l| Lifetime::from_u32(l).into()),
        any::<u8>().prop_map(|p| RequestedTransport::new(p).into()),
        any::<bool>().prop_map(|r| EvenPort::new(r).into()),
        any::<u64>().prop_map(|t| ReservationToken::new(t).into()),
        proptest::collection::vec(any::<u8>(), 0..600).prop_map(|d| Data::new(d).unwrap().into()),
        any::<u16>().prop_map(|n| {
            let number: ChannelNumber = Opaque(vec![(n >> 8) as u8, n as u8, 0, 0]);
            number.into()
        }),
        text(100).prop_filter_map("USERNAME is at most 513 bytes", |u| Username::new(u).ok().map(Into::into)),
        text(100).prop_filter_map("REALM is under 128 characters", |r| Realm::new(r).ok().map(Into::into)),
        text(100).prop_filter_map("NONCE is under 128 characters", |n| Nonce::new(n).ok().map(Into::into)),
        text(100).prop_filter_map("SOFTWARE is under 128 characters", |s| Software::new(s).ok().map(Into::into)),
        (300u16..700, text(60)).prop_filter_map("ERROR-CODE", |(c, r)| ErrorCode::new(c, r).ok().map(Into::into)),
        proptest::collection::vec(any::<u16>(), 0..8)
            .prop_map(|t| UnknownAttributes::new(t.into_iter().map(AttributeType::new).collect()).into()),
        Just(DontFragment.into()),
        prop_oneof![Just(AddressFamily::V4), Just(AddressFamily::V6)]
            .prop_map(|f| RequestedAddressFamily::new(f).into()),
        prop_oneof![Just(AddressFamily::V4), Just(AddressFamily::V6)]
            .prop_map(|f| AdditionalAddressFamily::new(f).into()),
    ]
}

fn class() -> impl Strategy<Value = MessageClass> {
    prop_oneof![
        Just(MessageClass::Request),
        Just(MessageClass::Indication),
        Just(MessageClass::SuccessResponse),
        Just(MessageClass::ErrorResponse),
    ]
}

// ---------------------------------------------------------------------------------
// Codec

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any list of attributes survives encode then decode, integrity and fingerprint
    /// included, and the integrity verifies with the key and with no other.
    #[test]
    fn attributes_round_trip_through_the_codec(
        class in class(),
        tid in any::<[u8; 12]>(),
        attrs in proptest::collection::vec(attribute(), 0..8),
        key in proptest::collection::vec(any::<u8>(), 1..40),
        sha1 in any::<bool>(),
        sha256 in any::<bool>(),
    ) {
        let mut m = Message::new(class, BINDING, TransactionId::new(tid));
        for a in &attrs {
            m.add_attribute(a.clone());
        }
        let set = IntegritySet { sha1, sha256 };
        let protect = sha1 || sha256;
        let bytes = message::encode(m, Protection { key: protect.then_some((&key[..], set)), fingerprint: true })
            .expect("encodes");
        prop_assert_eq!(raw::classify(&bytes), raw::PacketKind::Stun);
        let decoded = message::decode(&bytes).expect("decodes");
        prop_assert_eq!(decoded.message.class(), class);
        prop_assert_eq!(decoded.message.transaction_id(), TransactionId::new(tid));
        let back: Vec<Attribute> = decoded
            .message
            .attributes()
            .filter(|a| !matches!(a, Attribute::MessageIntegrity(_) | Attribute::MessageIntegritySha256(_)))
            .cloned()
            .collect();
        prop_assert_eq!(back, attrs);
        let mut other = key.clone();
        other[0] ^= 1;
        for (present, got) in [(sha1, decoded.integrity_sha1), (sha256, decoded.integrity_sha256)] {
            prop_assert_eq!(present, got.is_some());
            if let Some(integrity) = got {
                prop_assert!(integrity.verify(&key, &bytes));
                prop_assert!(!integrity.verify(&other, &bytes));
            }
        }
    }

    /// Flipping any bit of a protected message (before its FINGERPRINT) is caught: it
    /// no longer decodes, or its integrity no longer verifies.
    #[test]
    fn any_flipped_bit_breaks_integrity(
        attrs in proptest::collection::vec(attribute(), 0..4),
        key in proptest::collection::vec(any::<u8>(), 1..40),
        flip in any::<proptest::sample::Index>(),
        bit in 0u8..8,
    ) {
        let mut m = Message::new(MessageClass::Request, BINDING, TransactionId::new([9; 12]));
        for a in attrs {
            m.add_attribute(a);
        }
        let set = IntegritySet { sha1: true, sha256: false };
        let mut bytes = message::encode(m, Protection { key: Some((&key, set)), fingerprint: false }).unwrap();
        let at = flip.index(bytes.len());
        bytes[at] ^= 1 << bit;
        let intact = message::decode(&bytes).ok().and_then(|d| d.integrity_sha1).is_some_and(|i| i.verify(&key, &bytes));
        prop_assert!(!intact, "a flipped bit at byte {} went unnoticed", at);
    }

    /// XOR-*-ADDRESS encoding round-trips for every address and transaction id.
    #[test]
    fn xor_addresses_round_trip(addr in socket_addr(), tid in any::<[u8; 12]>()) {
        let mut out = [0u8; 20];
        let n = raw::encode_xor_address(addr, &tid, &mut out).unwrap();
        prop_assert_eq!(raw::decode_xor_address(&out[..n], &tid), Some(addr));
    }

    /// ChannelData headers round-trip, and only the channel range parses.
    #[test]
    fn channel_data_headers_round_trip(channel in any::<u16>(), len in any::<u16>(), extra in 0usize..8) {
        let mut header = [0u8; 4];
        ChannelData::write_header(channel, len, &mut header);
        let mut datagram = header.to_vec();
        datagram.resize(4 + usize::from(len) + extra, 0);
        let parsed = ChannelData::parse_datagram(&datagram);
        if CHANNEL_RANGE.contains(&channel) {
            prop_assert_eq!(parsed, Some(ChannelData { channel, len: usize::from(len) }));
            // One byte short is refused: a length that lies is never trusted.
            prop_assert_eq!(ChannelData::parse_datagram(&datagram[..4 + usize::from(len) - 1.min(usize::from(len))]).is_some(), len == 0);
        } else {
            prop_assert_eq!(parsed, None);
        }
    }

    /// Frames concatenated on a stream and cut at arbitrary points come out whole and
    /// in order.
    #[test]
    fn stream_framing_survives_any_split(
        frames in proptest::collection::vec(
            prop_oneof![
                (0u16..400).prop_map(|n| {
                    let mut m = vec![0, 1];
                    m.extend_from_slice(&(n * 4).to_be_bytes());
                    m.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
                    m.extend(std::iter::repeat(0x33).take(12 + usize::from(n) * 4));
                    m
                }),
                (0x4000u16..=0x7FFF, 0u16..1500).prop_map(|(c, n)| {
                    let mut m = c.to_be_bytes().to_vec();
                    m.extend_from_slice(&n.to_be_bytes());
                    m.extend(std::iter::repeat(0x44).take(usize::from(n)));
                    m.resize(4 + usize::from(n).div_ceil(4) * 4, 0);
                    m
                }),
            ],
            1..20,
        ),
        cuts in proptest::collection::vec(1usize..3000, 1..40),
    ) {
        let stream: Vec<u8> = frames.concat();
        let mut framer = Framer::default();
        let mut out = Vec::new();
        let (mut fed, mut cut) = (0, 0);
        while fed < stream.len() {
            // The framer's buffer grows with need: a read takes at most what it offers.
            let spare = framer.spare();
            let n = cuts[cut % cuts.len()].min(stream.len() - fed).min(spare.len());
            cut += 1;
            spare[..n].copy_from_slice(&stream[fed..fed + n]);
            framer.filled(n);
            fed += n;
            while let Some(frame) = framer.next_frame().expect("valid frames") {
                out.push(frame.to_vec());
            }
        }
        prop_assert_eq!(out, frames);
        prop_assert!(!framer.has_partial());
    }
}

// ---------------------------------------------------------------------------------
// Peer policy

/// IPv4 ranges denied by default (a sample of the built-in list; each must hold for
/// every address inside it and every IPv6 form that embeds it).
const DENIED_V4: &[(u32, u8)] = &[
    (0x0000_0000, 8),  // 0/8
    (0x0A00_0000, 8),  // 10/8
    (0x6440_0000, 10), // 100.64/10
    (0x7F00_0000, 8),  // 127/8
    (0xA9FE_0000, 16), // 169.254/16
    (0xAC10_0000, 12), // 172.16/12
    (0xC0A8_0000, 16), // 192.168/16
    (0xE000_0000, 4),  // 224/4
    (0xF000_0000, 4),  // 240/4
];

fn in_denied_v4() -> impl Strategy<Value = Ipv4Addr> {
    (proptest::sample::select(DENIED_V4), any::<u32>())
        .prop_map(|((net, len), host)| Ipv4Addr::from(net | (host >> len)))
}

/// Public unicast IPv4: first octets that hold no denied range at all.
fn global_v4() -> impl Strategy<Value = Ipv4Addr> {
    let firsts: Vec<u8> = (1u8..=223).filter(|o| ![10, 100, 127, 169, 172, 192, 198, 203].contains(o)).collect();
    (proptest::sample::select(firsts), any::<[u8; 3]>()).prop_map(|(a, [b, c, d])| Ipv4Addr::new(a, b, c, d))
}

/// Public unicast IPv6: 2400::/6 .. 2fff::/16 hold no denied range.
fn global_v6() -> impl Strategy<Value = Ipv6Addr> {
    (0x2400u16..=0x2FFF, any::<[u16; 7]>())
        .prop_map(|(first, rest)| Ipv6Addr::new(first, rest[0], rest[1], rest[2], rest[3], rest[4], rest[5], rest[6]))
}

/// The IPv6 forms that embed `v4`: mapped, compatible, NAT64 and 6to4 (with any
/// subnet and interface bits).
fn embeddings(v4: Ipv4Addr, subnet: u16, iid: u64) -> Vec<Ipv6Addr> {
    let [a, b, c, d] = v4.octets();
    let hi = u16::from_be_bytes([a, b]);
    let lo = u16::from_be_bytes([c, d]);
    let mut forms = vec![
        v4.to_ipv6_mapped(),
        Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, hi, lo),
        Ipv6Addr::new(0x2002, hi, lo, subnet, (iid >> 48) as u16, (iid >> 32) as u16, (iid >> 16) as u16, iid as u16),
    ];
    // ::a.b.c.d (compatible) stands for IPv4 only when it is not :: or ::1.
    if hi != 0 {
        forms.push(Ipv6Addr::new(0, 0, 0, 0, 0, 0, hi, lo));
    }
    forms
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Every address of a denied range is refused, in every disguise.
    #[test]
    fn denied_ipv4_is_denied_in_every_embedding(v4 in in_denied_v4(), subnet in any::<u16>(), iid in any::<u64>()) {
        let policy = PeerPolicy::default();
        prop_assert_eq!(policy.check_ip(v4.into()), Err(Denied::Builtin));
        for v6 in embeddings(v4, subnet, iid) {
            prop_assert_eq!(canonical(v6.into()), IpAddr::V4(v4), "{} does not reduce to {}", v6, v4);
            prop_assert_eq!(policy.check_ip(v6.into()), Err(Denied::Builtin), "{} ({}) allowed", v6, v4);
            prop_assert!(policy.check(SocketAddr::new(v6.into(), 9)).is_err());
        }
    }

    /// Public addresses are allowed, also when they arrive embedded in IPv6.
    #[test]
    fn global_addresses_are_allowed(v4 in global_v4(), v6 in global_v6(), subnet in any::<u16>(), iid in any::<u64>(), port in 1u16..) {
        let policy = PeerPolicy::default();
        prop_assert_eq!(policy.check_ip(v4.into()), Ok(()));
        prop_assert_eq!(policy.check(SocketAddr::new(v4.into(), port)), Ok(()));
        prop_assert_eq!(policy.check_ip(v6.into()), Ok(()), "{} denied", v6);
        for form in embeddings(v4, subnet, iid) {
            prop_assert_eq!(policy.check_ip(form.into()), Ok(()), "{} ({}) denied", form, v4);
        }
    }

    /// allowed-peers opens a range in all its forms; denied-peers closes one in all of
    /// its forms; own listening sockets stay closed whatever is allowed.
    #[test]
    fn configured_ranges_apply_to_every_form(v10 in any::<u32>(), g in global_v4(), port in any::<u16>(), subnet in any::<u16>(), iid in any::<u64>()) {
        let v10 = Ipv4Addr::from(0x0A00_0000 | (v10 >> 8));
        let deny_net: ipnet::IpNet = ipnet::Ipv4Net::new(g, 24).unwrap().trunc().into();
        let mut policy = PeerPolicy::new(vec!["10.0.0.0/8".parse().unwrap()], vec![deny_net]);
        let own = SocketAddr::new(v10.into(), port);
        policy.deny_own_sockets([own]);
        for form in std::iter::once(IpAddr::V4(v10)).chain(embeddings(v10, subnet, iid).into_iter().map(IpAddr::V6)) {
            prop_assert_eq!(policy.check_ip(form), Ok(()), "{} refused though 10/8 is allowed", form);
            prop_assert_eq!(policy.check(SocketAddr::new(form, port)), Err(Denied::OwnSocket), "own socket {} allowed", form);
        }
        for form in std::iter::once(IpAddr::V4(g)).chain(embeddings(g, subnet, iid).into_iter().map(IpAddr::V6)) {
            prop_assert_eq!(policy.check_ip(form), Err(Denied::Configured), "{} allowed though denied", form);
        }
    }
}

// ---------------------------------------------------------------------------------
// The server on virtual time

fn request() -> impl Strategy<Value = Request> {
    let family = prop_oneof![
        4 => Just(FamilyRequest::Default),
        1 => Just(FamilyRequest::RequestV4),
        1 => Just(FamilyRequest::RequestV6),
        1 => Just(FamilyRequest::AdditionalV6),
    ];
    prop_oneof![
        1 => Just(Request::Binding),
        4 => (
            proptest::option::of(0u32..4000),
            proptest::option::weighted(0.2, any::<bool>()),
            proptest::bool::weighted(0.1),
            family,
            any::<bool>(),
            proptest::option::weighted(0.95, prop_oneof![9 => Just(17u8), 1 => any::<u8>()]),
        )
            .prop_map(|(lifetime, even_port, token, family, dont_fragment, transport)| Request::Allocate {
                lifetime,
                even_port,
                token,
                family,
                dont_fragment,
                transport,
            }),
        2 => proptest::option::of(prop_oneof![Just(0u32), 1u32..5000]).prop_map(|lifetime| Request::Refresh { lifetime }),
        2 => proptest::collection::vec(0u8..10, 1..5).prop_map(|peers| Request::CreatePermission { peers }),
        3 => (prop_oneof![9 => 0u16..6, 1 => any::<u16>()], 0u8..10)
            .prop_map(|(channel, peer)| Request::ChannelBind { channel, peer }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (0u8..8, 0u8..3, any::<bool>(), any::<bool>(), proptest::bool::weighted(0.05), request())
            .prop_map(|(client, user, sha256, sha1, wrong_key, request)| Op::Request { client, user, sha256, sha1, wrong_key, request }),
        1 => (0u8..8, proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(client, bytes)| Op::Raw { client, bytes }),
        3 => (0u8..8, prop_oneof![0u16..6, any::<u16>()], 0u16..300, -4i8..4)
            .prop_map(|(client, channel, len, lie)| Op::ChannelData { client, channel, len, lie }),
        2 => (0u8..8, 0u8..10, 0u16..300).prop_map(|(client, peer, len)| Op::Send { client, peer, len }),
        3 => (any::<u8>(), 0u8..10, 0u16..300).prop_map(|(allocation, peer, len)| Op::Peer { allocation, peer, len }),
        3 => prop_oneof![0u32..2000, 0u32..700_000, 0u32..4_000_000].prop_map(|millis| Op::Advance { millis }),
        1 => any::<i32>().prop_map(|seconds| Op::WallJump { seconds }),
        1 => (0u8..4, any::<bool>()).prop_map(|(count, in_use)| Op::FailBinds { count, in_use }),
        1 => (0u8..8).prop_map(|client| Op::Close { client }),
    ]
}

fn server_cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(server_cases()))]

    /// Random operation sequences: after every one, quotas hold, the port pool adds up,
    /// no relay port has two owners, no allocation outlives its lifetime, channels map
    /// one to one, no relay socket outlives its allocation; at the end every port is
    /// back in the pool (see fuzz/src/server_driver.rs for the full list).
    #[test]
    fn server_invariants_hold_under_random_operations(seed in any::<u64>(), ops in proptest::collection::vec(op(), 1..80)) {
        server_driver::run(seed, &ops);
    }
}

fn allocate(lifetime: Option<u32>) -> Request {
    Request::Allocate {
        lifetime,
        even_port: None,
        token: false,
        family: FamilyRequest::Default,
        dont_fragment: false,
        transport: Some(17),
    }
}

fn signed(client: u8, user: u8, request: Request) -> Op {
    Op::Request { client, user, sha256: false, sha1: true, wrong_key: false, request }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// An allocation lives exactly its granted lifetime on the monotonic clock: present
    /// a millisecond before, gone at the instant, whatever the wall clock does meanwhile.
    #[test]
    fn lifetime_is_monotonic_whatever_the_wall_clock_does(
        lifetime in 1u32..7200,
        jumps in proptest::collection::vec(any::<i32>(), 0..6),
    ) {
        let mut d = Driver::new(1);
        d.apply(&signed(0, 0, allocate(Some(lifetime))));
        prop_assert_eq!(d.tally.last, Some(None));
        let granted = Duration::from_secs(u64::from(lifetime)).min(MAX_LIFETIME);
        let created = d.now;
        let expires = d.server.allocations().next().map(|(_, a)| a.expires).unwrap();
        prop_assert_eq!(expires, created + granted);
        for j in &jumps {
            d.apply(&Op::WallJump { seconds: *j });
        }
        let before = granted.as_millis() as u32 - 1;
        d.apply(&Op::Advance { millis: before });
        prop_assert_eq!(d.server.allocation_count(), 1, "expired early");
        for j in &jumps {
            d.apply(&Op::WallJump { seconds: j.wrapping_neg() });
        }
        d.apply(&Op::Advance { millis: 1 });
        prop_assert_eq!(d.server.allocation_count(), 0, "outlived its lifetime");
        prop_assert_eq!(d.ledger.borrow().port_usage().0, 0);
    }

    /// TURN REST credentials follow the wall clock (accepted while their expiry is
    /// ahead of it) while the allocation they made follows the monotonic clock, and
    /// nonces (monotonic too) do not go stale when the wall clock jumps.
    #[test]
    fn rest_expiry_follows_the_wall_clock_and_nothing_else(jump in any::<i32>()) {
        let mut d = Driver::new(2);
        d.apply(&signed(0, 2, allocate(Some(600))));
        prop_assert_eq!(d.tally.last, Some(None), "REST user allocates");
        let expires = d.server.allocations().next().map(|(_, a)| a.expires).unwrap();
        d.apply(&Op::WallJump { seconds: jump });
        let still_valid = d.unix_now < UNIX_START + REST_VALIDITY;
        let stale_before = d.tally.codes.get(&438).copied().unwrap_or(0);
        d.apply(&signed(0, 2, Request::Refresh { lifetime: Some(300) }));
        let stale_after = d.tally.codes.get(&438).copied().unwrap_or(0);
        prop_assert_eq!(stale_before, stale_after, "a wall-clock jump made the nonce stale");
        let new_expiry = d.server.allocations().next().map(|(_, a)| a.expires).unwrap();
        if still_valid {
            prop_assert_eq!(d.tally.last, Some(None));
            prop_assert_eq!(new_expiry, d.now + Duration::from_secs(300));
        } else {
            prop_assert_eq!(d.tally.last, Some(Some(401)), "an expired REST credential was accepted");
            prop_assert_eq!(new_expiry, expires, "a refused refresh changed the lifetime");
        }
        // A static user is unaffected by the wall clock either way.
        d.apply(&signed(1, 0, allocate(None)));
        prop_assert_eq!(d.tally.last, Some(None));
    }

    /// Allocations from one IP stop at the per-IP quota (486), all allocations at the
    /// total (508), and a full port range answers 508; freed ports come back.
    #[test]
    fn quotas_answer_486_and_508_and_ports_come_back(order in Just(()).prop_perturb(|_, mut rng| {
        let mut v: Vec<u8> = (0..8).collect();
        for i in (1..v.len()).rev() { v.swap(i, (rng.next_u32() as usize) % (i + 1)); }
        v
    })) {
        let q = server_driver::quotas();
        let mut d = Driver::new(3);
        let mut per_ip: std::collections::HashMap<IpAddr, usize> = Default::default();
        let clients = server_driver::clients();
        for &c in &order {
            let ip = clients[usize::from(c)].client.ip();
            let before = d.server.allocation_count();
            d.apply(&signed(c, u8::from(c % 2 == 1), allocate(None)));
            let n = per_ip.entry(ip).or_default();
            let expected = if before >= q.total_allocations {
                Some(508)
            } else if *n >= q.allocations_per_ip {
                Some(486)
            } else {
                None
            };
            // v6 clients get 440 here (no IPv4 relay address for them): not a quota case.
            if d.tally.last == Some(Some(440)) {
                continue;
            }
            prop_assert_eq!(d.tally.last, Some(expected), "client {} ({}), {} allocations", c, ip, before);
            if expected.is_none() {
                *n += 1;
            }
        }
        prop_assert!(d.ledger.borrow().port_usage().0 <= PORTS.len());
        d.finish();
    }
}

/// The second tenant's clients (8 to 10) authenticate in its realm with its passwords
/// and are held to its quotas (one allocation per user, two in all), apart from the
/// default tenant's; every invariant, per-tenant counts included, is checked throughout.
#[test]
fn a_second_tenant_is_held_to_its_own_quotas() {
    let mut d = Driver::new(5);
    d.apply(&signed(8, 0, allocate(None)));
    assert_eq!(d.tally.last, Some(None), "alice of b.fuzz.example, with her password there");
    d.apply(&signed(9, 0, allocate(None)));
    assert_eq!(d.tally.last, Some(Some(486)), "one allocation per user in b");
    d.apply(&signed(9, 1, allocate(None)));
    assert_eq!(d.tally.last, Some(Some(401)), "bob is not a user of b");
    d.apply(&signed(9, 2, allocate(None)));
    assert_eq!(d.tally.last, Some(None), "the REST user, with the shared secret");
    d.apply(&signed(10, 2, allocate(None)));
    assert_eq!(d.tally.last, Some(Some(508)), "b's total");
    d.apply(&signed(0, 0, allocate(None)));
    assert_eq!(d.tally.last, Some(None), "the default tenant's alice is another user");
    d.finish();
}

/// The driver itself reaches deep states (so the random runs above can too): allocate,
/// bind, relay both ways, refresh, and expire, with every invariant checked.
#[test]
fn scripted_session_reaches_every_path() {
    let mut d = Driver::new(4);
    d.apply(&signed(0, 0, allocate(Some(60))));
    d.apply(&signed(0, 0, Request::ChannelBind { channel: 0, peer: 0 }));
    d.apply(&signed(0, 0, Request::CreatePermission { peers: vec![1] }));
    assert_eq!(d.tally.last, Some(None));
    // An IPv6 peer on an IPv4-only allocation: 443.
    d.apply(&signed(0, 0, Request::CreatePermission { peers: vec![2] }));
    assert_eq!(d.tally.last, Some(Some(443)));
    d.apply(&Op::ChannelData { client: 0, channel: 0, len: 100, lie: 0 });
    d.apply(&Op::Send { client: 0, peer: 1, len: 10 });
    d.apply(&Op::Peer { allocation: 0, peer: 0, len: 100 });
    d.apply(&Op::Peer { allocation: 0, peer: 1, len: 7 });
    // Denied peers are refused with 403, unpermitted ones relay nothing.
    d.apply(&signed(0, 0, Request::CreatePermission { peers: vec![4] }));
    assert_eq!(d.tally.last, Some(Some(403)));
    d.apply(&Op::Peer { allocation: 0, peer: 5, len: 7 });
    d.apply(&signed(0, 0, Request::Refresh { lifetime: Some(120) }));
    assert_eq!(d.tally.last, Some(None));
    // A TCP client and a dual-stack allocation.
    d.apply(&signed(
        6,
        1,
        Request::Allocate {
            lifetime: None,
            even_port: Some(true),
            token: false,
            family: FamilyRequest::Default,
            dont_fragment: true,
            transport: Some(17),
        },
    ));
    d.apply(&signed(4, 1, allocate(None)));
    d.apply(&signed(
        1,
        0,
        Request::Allocate {
            lifetime: None,
            even_port: None,
            token: false,
            family: FamilyRequest::AdditionalV6,
            dont_fragment: false,
            transport: Some(17),
        },
    ));
    assert_eq!(d.server.allocation_count(), 4);
    d.apply(&Op::Advance { millis: 119_999 });
    assert_eq!(d.server.allocation_count(), 4);
    d.apply(&Op::Advance { millis: 1 });
    assert_eq!(d.server.allocation_count(), 3, "the refreshed allocation expired at 120 s");
    let t = d.tally.clone();
    assert!(t.allocated == 4 && t.to_peer == 2 && t.to_client == 2, "{t:?}");
    d.finish();
}

/// RFC 8656 §9: a permission is for an IP address. A client that names its peer in the
/// IPv4-mapped form (`::ffff:a.b.c.d`, as an IPv6 socket API reports IPv4 peers) must
/// get the same permission as for `a.b.c.d`: the peer's datagrams arrive from the
/// IPv4 address, and ChannelBind and Send already unmap. (Peer index 3 in the driver
/// is `[::ffff:192.0.2.12]:9002`.)
#[test]
fn a_permission_for_a_mapped_peer_admits_its_ipv4_traffic() {
    let mut d = Driver::new(5);
    d.apply(&signed(0, 0, allocate(None)));
    d.apply(&signed(0, 0, Request::CreatePermission { peers: vec![3] }));
    assert_eq!(d.tally.last, Some(None), "CreatePermission for a mapped peer");
    d.apply(&Op::Peer { allocation: 0, peer: 3, len: 20 });
    d.apply(&Op::Send { client: 0, peer: 3, len: 20 });
    assert_eq!((d.tally.to_client, d.tally.to_peer), (1, 1), "the permission did not admit the peer's traffic");
}

// ---------------------------------------------------------------------------------
// Bounded state

/// Counts the bytes this thread holds on the heap, so a test can see what the server's
/// state costs while other tests run on other threads.
mod heap {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static LIVE: Cell<isize> = const { Cell::new(0) };
    }

    pub struct Counting;

    fn add(n: isize) {
        // try_with: no panic while the thread-local is being torn down.
        let _ = LIVE.try_with(|l| l.set(l.get() + n));
    }

    // SAFETY: every call is forwarded to the system allocator unchanged; the counter
    // is a const-initialized thread-local Cell, which never allocates.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            add(layout.size() as isize);
            System.alloc(layout)
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            add(-(layout.size() as isize));
            System.dealloc(ptr, layout)
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            add(new_size as isize - layout.size() as isize);
            System.realloc(ptr, layout, new_size)
        }
    }

    /// Bytes this thread has allocated and not freed.
    pub fn live() -> isize {
        LIVE.with(Cell::get)
    }
}

#[global_allocator]
static COUNTING: heap::Counting = heap::Counting;

/// One allocation refreshed over and over must cost the server the same memory however
/// often it is refreshed: an authenticated client can send Refreshes as fast as it
/// likes. (Each Refresh used to push a new entry on the expiry heap, kept until its
/// instant passes: up to max-lifetime, an hour by default.)
#[test]
fn refreshing_one_allocation_does_not_grow_the_server() {
    let mut d = Driver::new(6);
    d.apply(&signed(0, 0, allocate(Some(3600))));
    let refresh = signed(0, 0, Request::Refresh { lifetime: Some(3600) });
    for _ in 0..100 {
        d.apply(&refresh);
    }
    let before = heap::live();
    for _ in 0..3000 {
        d.apply(&refresh);
    }
    assert_eq!(d.tally.last, Some(None));
    let grown = heap::live() - before;
    assert!(grown < 24 * 1024, "3000 Refreshes of one allocation grew the heap by {grown} bytes");
}

// ---------------------------------------------------------------------------------
// The XDP fast path's map sync (turnd::turn::offload), without a kernel: the maps are
// modelled as the program sees them (keyed by the client side and by the peer side).

mod offload_sync {
    use super::*;
    use std::collections::BTreeMap;
    use std::net::SocketAddrV4;
    use turnd::turn::offload::{offloadable, MapModel, MapOp, OffloadKey, OffloadTarget};
    use turnd::turn::PeerAddr;

    /// The two maps as the program reads them.
    #[derive(Default)]
    struct Kernel {
        by_client: BTreeMap<OffloadKey, OffloadTarget>,
        by_peer: BTreeMap<(SocketAddrV4, SocketAddrV4), OffloadKey>,
    }

    impl Kernel {
        fn apply(&mut self, op: MapOp) {
            match op {
                MapOp::Upsert(key, target) => {
                    let side = (target.peer, target.relay);
                    // One peer and relay pair names one channel at a time: a second
                    // would overwrite the first's return path.
                    if let Some(other) = self.by_peer.get(&side) {
                        assert_eq!(*other, key, "two channels for {side:?}");
                    }
                    if let Some(old) = self.by_client.insert(key, target) {
                        assert_eq!((old.peer, old.relay), side, "an upsert that moves the peer side");
                    }
                    self.by_peer.insert(side, key);
                }
                MapOp::Remove(key, target) => {
                    assert_eq!(self.by_client.remove(&key), Some(target), "removing what is not there");
                    assert_eq!(self.by_peer.remove(&(target.peer, target.relay)), Some(key));
                }
            }
        }
    }

    /// After every operation on the core, the synced maps hold exactly what the core
    /// says may be offloaded, and each entry is one the socket path would relay.
    fn check(ops: &[Op], seed: u64) -> usize {
        let mut driver = Driver::new(seed);
        let mut model = MapModel::default();
        let mut kernel = Kernel::default();
        let (mut wanted, mut map_ops, mut most) = (Vec::new(), Vec::new(), 0);
        for op in ops {
            driver.apply(op);
            let now = driver.now;
            wanted.clear();
            offloadable(driver.server.allocations(), driver.server.config(), now, &mut wanted);
            map_ops.clear();
            model.sync(&wanted, &mut map_ops);
            for op in &map_ops {
                kernel.apply(*op);
            }
            let expected: BTreeMap<_, _> = wanted.iter().copied().collect();
            assert_eq!(expected.len(), wanted.len(), "a channel listed twice");
            assert_eq!(kernel.by_client, expected);
            assert_eq!(model.entries(), &expected);
            assert_eq!(kernel.by_peer.len(), expected.len());
            for (key, target) in &expected {
                let a = driver.server.allocation(target.allocation).expect("the allocation exists");
                assert_eq!(a.five_tuple.client.get(), SocketAddr::V4(key.client));
                assert_eq!(a.five_tuple.server, SocketAddr::V4(key.server));
                let peer = PeerAddr::new(SocketAddr::V4(target.peer));
                assert_eq!(a.channel_peer(key.channel, now), Some((peer, false)));
                assert!(a.is_permitted(peer.ip(), now));
                assert_eq!(a.relay_for(peer.ip()).map(|r| r.bound), Some(SocketAddr::V4(target.relay)));
                assert!(target.expires > now && target.expires <= a.expires);
            }
            most = most.max(expected.len());
        }
        most
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(server_cases()))]

        #[test]
        fn the_maps_follow_the_core_under_random_operations(seed in any::<u64>(), ops in proptest::collection::vec(op(), 1..80)) {
            check(&ops, seed);
        }
    }

    /// The property above is not vacuous: a scripted session offloads a channel, and
    /// the channel leaves the maps when its allocation is deleted.
    #[test]
    fn a_bound_channel_is_offloaded_until_its_allocation_goes() {
        let client = 0;
        let bind = Request::ChannelBind { channel: 0, peer: 0 };
        let ops = [signed(client, 0, allocate(Some(600))), signed(client, 0, bind), Op::Advance { millis: 1000 }];
        assert_eq!(check(&ops, 1), 1);
        let mut with_delete = ops.to_vec();
        with_delete.push(signed(client, 0, Request::Refresh { lifetime: Some(0) }));
        let mut driver = Driver::new(1);
        for op in &with_delete {
            driver.apply(op);
        }
        let mut wanted = Vec::new();
        offloadable(driver.server.allocations(), driver.server.config(), driver.now, &mut wanted);
        assert!(wanted.is_empty(), "{wanted:?}");
    }
}
