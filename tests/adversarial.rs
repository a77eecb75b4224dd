//! Adversarial inputs against the real binary on loopback: truncated and oversized
//! messages, wrong magic cookies, lying length fields, duplicate and out-of-order
//! attributes, attributes after MESSAGE-INTEGRITY, FINGERPRINT mismatches, unknown
//! comprehension-required attributes, ChannelData on unbound channels and with lying
//! lengths, Send indications without permission, an Allocate flood from many source
//! addresses, and slowloris clients on TCP and TLS. After each group the server must
//! still answer a Binding and relay on an allocation made before the group started.
// A test may unwrap (a panic is a failed test) and use unsafe for process plumbing
// (signals, namespaces); the server code denies both (Cargo.toml [lints]).
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::turn_client;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};
use stun_codec::rfc5389::attributes::{
    ErrorCode, Nonce, Realm, Software, UnknownAttributes, Username, XorMappedAddress,
};
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5766::attributes::{Data, Lifetime, RequestedTransport, XorPeerAddress};
use stun_codec::rfc5766::methods::{ALLOCATE, CREATE_PERMISSION, REFRESH, SEND};
use stun_codec::{MessageClass, Method, TransactionId};
use turn_client::TurnClient;
use turnd::stun::attributes::Attribute;
use turnd::stun::integrity::long_term_key_md5;
use turnd::stun::message::{self, IntegritySet, Message, Protection};

const CHANNEL: u16 = 0x4000;
/// How long "no answer" is waited for.
const QUIET: Duration = Duration::from_millis(300);

/// A turnd on UDP, TCP and TLS with a 1 s slowloris cut, and a client whose allocation
/// relays to an echo peer over a channel: the yardstick every group is checked against.
struct Fixture {
    turnd: TurndProcess,
    _cert: TestCert,
    peer: UdpEchoPeer,
    client: TurnClient,
}

impl Fixture {
    fn new(extra: &str) -> Fixture {
        let cert = TestCert::new();
        let config = cert.add_to(&format!(
            "{}\n[tcp]\nfirst-message-timeout = \"1s\"\n{extra}",
            config_with(&["udp", "tcp", "tls"])
        ));
        let turnd = TurndProcess::start(&config, &[]);
        let peer = UdpEchoPeer::start();
        let mut client = TurnClient::new("127.0.0.1:0", turnd.udp_addr(), USER, PASSWORD, REALM);
        client.allocate(vec![]).expect("the yardstick allocation");
        assert_eq!(client.channel_bind(CHANNEL, peer.addr()), None, "the yardstick channel");
        let f = Fixture { turnd, _cert: cert, peer, client };
        f.assert_alive("at the start");
        f
    }

    /// The server answers a Binding and relays on the yardstick allocation.
    fn assert_alive(&self, after: &str) {
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        probe.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let tid = TransactionId::new([0x77; 12]);
        let binding = message::encode(Message::new(MessageClass::Request, BINDING, tid), plain()).unwrap();
        probe.send_to(&binding, self.turnd.udp_addr()).unwrap();
        let mut buf = [0u8; 2048];
        let n = probe.recv(&mut buf).unwrap_or_else(|_| panic!("no Binding answer {after}"));
        let answer = message::decode(&buf[..n]).expect("a decodable Binding answer").message;
        assert_eq!(answer.class(), MessageClass::SuccessResponse, "Binding {after}");
        assert_eq!(answer.get_attribute::<XorMappedAddress>().map(|a| a.address()), probe.local_addr().ok());
        // The yardstick client reads other datagrams meanwhile; skip what is not ours.
        let payload = format!("alive {after}");
        self.client.send_channel_data(CHANNEL, payload.as_bytes());
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            match self.client.recv_data() {
                Some((_, _, data)) if data == payload.as_bytes() => return,
                Some(_) => continue,
                None => break,
            }
        }
        panic!("the existing allocation stopped relaying {after}");
    }
}

fn plain() -> Protection<'static> {
    Protection { key: None, fingerprint: true }
}

fn tid(n: u32) -> TransactionId {
    let mut t = [0x5Au8; 12];
    t[8..].copy_from_slice(&n.to_be_bytes());
    TransactionId::new(t)
}

/// A raw UDP client that holds a valid nonce and signs whatever it is told to, so
/// malformed requests can still carry correct credentials.
struct Raw {
    socket: UdpSocket,
    server: SocketAddr,
    nonce: String,
    key: [u8; 16],
    next: std::cell::Cell<u32>,
}

impl Raw {
    fn new(local: &str, server: SocketAddr) -> Raw {
        let socket = UdpSocket::bind(local).expect("bind a raw client");
        let mut raw =
            Raw { socket, server, nonce: String::new(), key: long_term_key_md5(USER, REALM, PASSWORD), next: 1.into() };
        let request = Message::new(MessageClass::Request, ALLOCATE, raw.tid());
        let answer = raw.exchange(&message::encode(request, plain()).unwrap()).expect("a 401 with a nonce");
        let answer = message::decode(&answer).unwrap().message;
        raw.nonce = answer.get_attribute::<Nonce>().expect("NONCE on the 401").value().to_owned();
        raw
    }

    fn tid(&self) -> TransactionId {
        self.next.set(self.next.get() + 1);
        tid(self.next.get())
    }

    /// A request with USERNAME, REALM, NONCE and MESSAGE-INTEGRITY (and FINGERPRINT
    /// when asked) after `attrs`.
    fn signed(&self, method: Method, attrs: Vec<Attribute>, fingerprint: bool) -> Vec<u8> {
        let mut m = Message::new(MessageClass::Request, method, self.tid());
        for a in attrs {
            m.add_attribute(a);
        }
        m.add_attribute(Username::new(USER.into()).unwrap());
        m.add_attribute(Realm::new(REALM.into()).unwrap());
        m.add_attribute(Nonce::new(self.nonce.clone()).unwrap());
        let set = IntegritySet { sha1: true, sha256: false };
        message::encode(m, Protection { key: Some((&self.key, set)), fingerprint }).unwrap()
    }

    /// Sends `bytes`; the answer with the same transaction id, if one comes in time.
    fn exchange(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        self.socket.send_to(bytes, self.server).unwrap();
        self.answer_to(bytes, Duration::from_secs(2))
    }

    fn answer_to(&self, bytes: &[u8], within: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + within;
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            self.socket.set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
            let (n, _) = self.socket.recv_from(&mut buf).ok()?;
            if n >= 20 && bytes.len() >= 20 && buf[8..20] == bytes[8..20] {
                return Some(buf[..n].to_vec());
            }
        }
    }

    /// The error code of the answer to `bytes` (`Ok(None)` for a success), or `Err` when
    /// no answer came.
    fn code(&self, bytes: &[u8]) -> Result<Option<u16>, &'static str> {
        let answer = self.exchange(bytes).ok_or("no answer")?;
        let m = message::decode(&answer).map_err(|_| "undecodable answer")?.message;
        Ok(m.get_attribute::<ErrorCode>().map(|e| e.code()))
    }

    /// Sends `bytes` and asserts nothing comes back.
    fn assert_silence(&self, bytes: &[u8], what: &str) {
        self.socket.send_to(bytes, self.server).unwrap();
        assert!(self.answer_to(bytes, QUIET).is_none(), "{what} was answered; it should be dropped silently");
    }
}

fn binding(t: TransactionId) -> Vec<u8> {
    message::encode(Message::new(MessageClass::Request, BINDING, t), plain()).unwrap()
}

fn set_length(bytes: &mut [u8]) {
    let len = (bytes.len() - 20) as u16;
    bytes[2..4].copy_from_slice(&len.to_be_bytes());
}

/// An attribute in wire form, padded.
fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
    let mut v = kind.to_be_bytes().to_vec();
    v.extend_from_slice(&(value.len() as u16).to_be_bytes());
    v.extend_from_slice(value);
    v.resize(4 + value.len().div_ceil(4) * 4, 0);
    v
}

#[test]
fn truncated_oversized_and_lying_lengths() {
    let f = Fixture::new("");
    let raw = Raw::new("127.0.0.1:0", f.turnd.udp_addr());
    // Truncated at every length: dropped silently (the header length no longer fits).
    let whole = binding(raw.tid());
    for len in 0..whole.len() {
        raw.socket.send_to(&whole[..len], f.turnd.udp_addr()).unwrap();
    }
    assert!(raw.answer_to(&whole, QUIET).is_none(), "a truncated Binding was answered");
    // Header length larger or smaller than the datagram: dropped.
    for delta in [4i32, -4, 8, 1, -1] {
        let mut lying = binding(raw.tid());
        let claimed = (lying.len() as i32 - 20 + delta) as u16;
        lying[2..4].copy_from_slice(&claimed.to_be_bytes());
        raw.assert_silence(&lying, &format!("a header length off by {delta}"));
    }
    // An attribute whose length runs past a well-framed message: 400 for a request.
    let mut overrun = binding(raw.tid());
    overrun.truncate(20);
    overrun.extend_from_slice(&[0x80, 0x22, 0x00, 0x40, b'x', b'y', b'z', 0]);
    set_length(&mut overrun);
    assert_eq!(raw.code(&overrun), Ok(Some(400)), "an overrunning attribute");
    // Oversized: a control message past turnd's 4 kB cap is dropped before decoding,
    // however valid; one under the cap is answered, and the answer is small (no
    // amplification from a big request).
    let mut huge = binding(raw.tid());
    huge.truncate(20);
    huge.extend(attr(0x8055, &vec![0xAB; 65_000]));
    set_length(&mut huge);
    raw.assert_silence(&huge, "a 65 kB Binding");
    let mut big = binding(raw.tid());
    big.truncate(20);
    big.extend(attr(0x8055, &vec![0xAB; 4000]));
    set_length(&mut big);
    let answer = raw.exchange(&big).expect("a 4 kB Binding is answered");
    assert!(answer.len() < 200, "a {}-byte answer to a 4 kB request", answer.len());
    // A datagram of 65507 bytes of noise, and the largest ChannelData: dropped.
    raw.socket.send_to(&vec![0xFF; 65_507], f.turnd.udp_addr()).unwrap();
    let mut cd = vec![0x40, 0x00, 0xFF, 0xFF];
    cd.resize(65_507, 1);
    raw.socket.send_to(&cd, f.turnd.udp_addr()).unwrap();
    f.assert_alive("after truncated, oversized and lying messages");
    // Over TCP: a maximal frame (64 kB) is read whole and dropped; the connection
    // stays in step and the next request on it is served.
    let mut tcp = TcpStream::connect(f.turnd.tcp_addr()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut max = binding(tid(1));
    max.truncate(20);
    max.extend(attr(0x8055, &vec![0xCD; 0xFFFF - 4 - 3]));
    set_length(&mut max);
    assert_eq!(max.len(), 20 + 0xFFFC);
    tcp.write_all(&max).unwrap();
    tcp.write_all(&binding(tid(2))).unwrap();
    let answer = turn_client::read_stun(&mut tcp);
    assert_eq!(answer.transaction_id(), tid(2), "the request after a maximal frame is the one answered");
    f.assert_alive("after maximal TCP frames");
}

#[test]
fn wrong_cookie_duplicates_order_and_fingerprint() {
    let f = Fixture::new("");
    let raw = Raw::new("127.0.0.1:0", f.turnd.udp_addr());
    // A wrong magic cookie makes it an RFC 3489 message: a Binding gets the classic
    // answer (MAPPED-ADDRESS, the 16-byte id echoed), anything else is dropped.
    let mut classic = binding(raw.tid());
    classic.truncate(20);
    classic[2..4].copy_from_slice(&[0, 0]);
    classic[4..8].copy_from_slice(&[0xDE, 0xAD, 0xBE, 0xEF]);
    raw.socket.send_to(&classic, f.turnd.udp_addr()).unwrap();
    let mut buf = [0u8; 512];
    raw.socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let n = raw.socket.recv(&mut buf).expect("a classic Binding answer");
    assert_eq!(&buf[..2], &[0x01, 0x01]);
    assert_eq!(&buf[4..20], &classic[4..20], "the RFC 3489 transaction id echoed");
    let mut classic_allocate = classic.clone();
    classic_allocate[1] = 0x03;
    raw.assert_silence(&classic_allocate, "an Allocate without the magic cookie");
    assert!(n < 64);

    // FINGERPRINT mismatch: dropped silently. FINGERPRINT not last: 400.
    let mut bad_fp = binding(raw.tid());
    let last = bad_fp.len() - 1;
    bad_fp[last] ^= 0x01;
    raw.assert_silence(&bad_fp, "a FINGERPRINT mismatch");
    let mut not_last = binding(raw.tid());
    not_last.extend(attr(0x8022, b"late"));
    set_length(&mut not_last);
    assert_eq!(raw.code(&not_last), Ok(Some(400)), "an attribute after FINGERPRINT");

    // Duplicate attributes: two REQUESTED-TRANSPORTs (the first counts), two
    // MESSAGE-INTEGRITYs (malformed: 400).
    let dup = raw.signed(ALLOCATE, vec![RequestedTransport::new(99).into(), RequestedTransport::new(17).into()], true);
    assert_eq!(raw.code(&dup), Ok(Some(442)), "the first REQUESTED-TRANSPORT (99) counts");
    let mut twice = raw.signed(BINDING, vec![], false);
    let mi = twice[twice.len() - 24..].to_vec();
    twice.extend_from_slice(&mi);
    set_length(&mut twice);
    assert_eq!(raw.code(&twice), Ok(Some(400)), "MESSAGE-INTEGRITY twice");

    // Out of order: credentials before the request's own attributes are still fine;
    // SOFTWARE and XOR-PEER-ADDRESS in a Binding are ignored.
    let odd = raw.signed(
        BINDING,
        vec![Software::new("x".into()).unwrap().into(), XorPeerAddress::new(f.peer.addr()).into()],
        true,
    );
    assert_eq!(raw.code(&odd), Ok(None));
    f.assert_alive("after wrong cookies, duplicates, odd orders and bad fingerprints");
}

#[test]
fn attributes_after_integrity_are_ignored_and_unknown_required_ones_get_420() {
    let f = Fixture::new("");
    let raw = Raw::new("127.0.0.1:0", f.turnd.udp_addr());
    assert_eq!(raw.code(&raw.signed(ALLOCATE, vec![RequestedTransport::new(17).into()], true)), Ok(None));
    // A Refresh for 600 s whose LIFETIME 0 comes after MESSAGE-INTEGRITY: the trailing
    // attribute is not covered, so it must not delete the allocation.
    let mut refresh = raw.signed(REFRESH, vec![Lifetime::from_u32(600).into()], false);
    refresh.extend(attr(0x000D, &0u32.to_be_bytes()));
    set_length(&mut refresh);
    let answer = raw.exchange(&refresh).expect("the Refresh is answered");
    let answer = message::decode(&answer).unwrap().message;
    assert_eq!(answer.get_attribute::<ErrorCode>().map(|e| e.code()), None);
    assert_eq!(
        answer.get_attribute::<Lifetime>().map(|l| l.lifetime().as_secs()),
        Some(600),
        "LIFETIME 0 after MI was obeyed"
    );
    // The allocation is still there: a second Allocate on the 5-tuple is a mismatch.
    assert_eq!(raw.code(&raw.signed(ALLOCATE, vec![RequestedTransport::new(17).into()], true)), Ok(Some(437)));

    // Unknown comprehension-required attributes: 420 naming them; optional ones ignored.
    let mut required = binding(raw.tid());
    required.truncate(20);
    required.extend(attr(0x0031, b"abcd"));
    required.extend(attr(0x7FFE, b""));
    set_length(&mut required);
    let answer = message::decode(&raw.exchange(&required).expect("a 420")).unwrap().message;
    assert_eq!(answer.get_attribute::<ErrorCode>().map(|e| e.code()), Some(420));
    let listed: Vec<u16> = answer
        .get_attribute::<UnknownAttributes>()
        .map(|u| u.unknowns().iter().map(|t| t.as_u16()).collect())
        .unwrap_or_default();
    assert_eq!(listed, vec![0x0031, 0x7FFE], "UNKNOWN-ATTRIBUTES lists both");
    let mut optional = binding(raw.tid());
    optional.truncate(20);
    optional.extend(attr(0xC0DE, b"optional"));
    set_length(&mut optional);
    assert_eq!(raw.code(&optional), Ok(None), "an unknown optional attribute is ignored");
    // An unknown method with valid credentials: 400.
    let unknown_method = raw.signed(Method::new(0x0FF).unwrap(), vec![], true);
    assert_eq!(raw.code(&unknown_method), Ok(Some(400)));
    f.assert_alive("after trailing and unknown attributes");
}

#[test]
fn channel_data_and_send_without_binding_or_permission_go_nowhere() {
    let f = Fixture::new("");
    let raw = Raw::new("127.0.0.1:0", f.turnd.udp_addr());
    assert_eq!(raw.code(&raw.signed(ALLOCATE, vec![RequestedTransport::new(17).into()], true)), Ok(None));
    let before = f.peer.count();
    let send = |raw: &Raw, bytes: &[u8]| raw.socket.send_to(bytes, f.turnd.udp_addr()).unwrap();
    // ChannelData on a channel never bound, on the yardstick's channel from another
    // client, out of the range, and with lengths that lie.
    send(&raw, &[0x40, 0x05, 0x00, 0x02, 1, 2]);
    send(&raw, &[0x40, 0x00, 0x00, 0x02, 1, 2]);
    send(&raw, &[0x80, 0x00, 0x00, 0x02, 1, 2]);
    f.client.socket.send_to(&[0x40, 0x00, 0x00, 0x10, 1, 2, 3, 4], f.turnd.udp_addr()).unwrap();
    f.client.socket.send_to(&[0x40, 0x00, 0xFF, 0xFF], f.turnd.udp_addr()).unwrap();
    f.client.socket.send_to(&[0x40, 0x00, 0x00], f.turnd.udp_addr()).unwrap();
    // Send indications without a permission, and to the server's own listener even
    // with a permission for its IP.
    let indication = |to: SocketAddr, t: TransactionId| {
        let mut m = Message::new(MessageClass::Indication, SEND, t);
        m.add_attribute(XorPeerAddress::new(to));
        m.add_attribute(Data::new(b"unpermitted".to_vec()).unwrap());
        message::encode(m, Protection { key: None, fingerprint: false }).unwrap()
    };
    send(&raw, &indication(f.peer.addr(), raw.tid()));
    assert_eq!(
        raw.code(&raw.signed(CREATE_PERMISSION, vec![XorPeerAddress::new(f.turnd.udp_addr()).into()], true)),
        Ok(None)
    );
    send(&raw, &indication(f.turnd.udp_addr(), raw.tid()));
    // A Send indication with a lying DATA length.
    let mut lying = indication(f.peer.addr(), raw.tid());
    let data_len_at = lying.len() - 12 - 2;
    lying[data_len_at..data_len_at + 2].copy_from_slice(&0x0400u16.to_be_bytes());
    send(&raw, &lying);
    std::thread::sleep(QUIET);
    assert_eq!(f.peer.count(), before, "something reached the peer without a binding or permission");
    // No Binding answer came back to the client through its own listener either (a
    // relay to itself would have looped).
    assert!(raw.answer_to(&[0u8; 20], QUIET).is_none());
    f.assert_alive("after unbound ChannelData and unpermitted Send indications");
}

#[test]
fn allocate_flood_from_many_addresses_hits_quotas_and_spares_the_yardstick() {
    // 40 allocations in all (the yardstick holds one), 2 per IP.
    let f = Fixture::new("[limits]\ntotal-allocations = 40\nallocations-per-ip = 2\n");
    let server = f.turnd.udp_addr();
    // Unauthenticated Allocates from 600 addresses across 127.0.0.0/8: every one gets a
    // 401 with a nonce and costs the server no state.
    let mut answered = 0;
    let mut sockets = Vec::new();
    for i in 0..600u32 {
        let ip = format!("127.{}.{}.{}", 10 + i / 250, i % 250 + 1, 1 + i % 7);
        let s = UdpSocket::bind(format!("{ip}:0")).expect("bind across 127/8");
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let request = Message::new(MessageClass::Request, ALLOCATE, tid(i));
        s.send_to(&message::encode(request, plain()).unwrap(), server).unwrap();
        sockets.push(s);
    }
    let mut buf = [0u8; 1024];
    for s in &sockets {
        if let Ok(n) = s.recv(&mut buf) {
            let m = message::decode(&buf[..n]).expect("decodable").message;
            assert_eq!(m.get_attribute::<ErrorCode>().map(|e| e.code()), Some(401));
            answered += 1;
        }
    }
    assert!(answered >= 590, "only {answered} of 600 flood requests answered");
    // Authenticated Allocates from 30 IPs, 3 sources each: 2 per IP, then 486; past 40
    // in all, 508.
    let mut codes = std::collections::BTreeMap::<Option<u16>, usize>::new();
    for i in 0..90u32 {
        let ip = format!("127.20.{}.1", i / 3 + 1);
        let raw = Raw::new(&format!("{ip}:0"), server);
        let code = raw.code(&raw.signed(ALLOCATE, vec![RequestedTransport::new(17).into()], true)).expect("answered");
        *codes.entry(code).or_default() += 1;
    }
    assert_eq!(codes.get(&None), Some(&39), "39 allocations beside the yardstick: {codes:?}");
    // IPs 1-19 get two each and a 486; IP 20 gets the 40th; everything after is 508
    // (the total is checked before the per-IP quota).
    assert_eq!(codes.get(&Some(486)), Some(&19), "the third source of each of the first 19 IPs: {codes:?}");
    assert_eq!(codes.get(&Some(508)), Some(&32), "everything past 40 in all: {codes:?}");
    f.assert_alive("after an Allocate flood from 630 addresses");
}

#[test]
fn slowloris_on_tcp_and_tls_is_cut_while_udp_relays() {
    // 40 unauthenticated connections from one source: past the default per-source cap.
    let f = Fixture::new("max-unauthenticated-per-source = 64");
    let started = Instant::now();
    let mut held = Vec::new();
    for i in 0..40 {
        let (addr, partial): (SocketAddr, &[u8]) = match i % 4 {
            // TCP: half a STUN header; nothing at all.
            0 => (f.turnd.tcp_addr(), &[0x00, 0x01, 0x00, 0x00, 0x21, 0x12]),
            1 => (f.turnd.tcp_addr(), &[]),
            // TLS: the first bytes of a ClientHello; nothing at all.
            2 => (f.turnd.tls_addr(), &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]),
            _ => (f.turnd.tls_addr(), &[]),
        };
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(partial).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        held.push(s);
    }
    // While they hang, UDP relays and a well-behaved TCP client is served.
    f.assert_alive("during a slowloris");
    let mut ok = TcpStream::connect(f.turnd.tcp_addr()).unwrap();
    ok.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    ok.write_all(&binding(tid(9))).unwrap();
    assert_eq!(turn_client::read_stun(&mut ok).class(), MessageClass::SuccessResponse);
    // Every slow connection is closed by the server after about a second.
    for (i, s) in held.iter_mut().enumerate() {
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("slow connection {i} not cut: {other:?}"),
        }
    }
    assert!(started.elapsed() < Duration::from_secs(5), "cut after {:?}, configured 1 s", started.elapsed());
    f.assert_alive("after a slowloris on TCP and TLS");
}

/// RFC 8489 §6.3: a response carries the method of its request. turnd answers an
/// unknown method with 400, and must say which method it is answering, whatever its
/// number (methods run to 0xFFF). The request is built by hand: the codec's own
/// encoder is what gets methods of 0x080 and above wrong.
#[test]
fn an_unknown_method_is_answered_with_its_own_method() {
    let f = Fixture::new("");
    let raw = Raw::new("127.0.0.1:0", f.turnd.udp_addr());
    for method in [0x00Fu16, 0x07F, 0x080, 0x0FF, 0xABC, 0xFFF] {
        // RFC 8489 §5: M0-M3, C0, M4-M6, C1, M7-M11 (class bits 0: a request).
        let message_type = (method & 0x000F) | ((method & 0x0070) << 1) | ((method & 0x0F80) << 2);
        let mut request = message_type.to_be_bytes().to_vec();
        request.extend_from_slice(&[0, 0, 0x21, 0x12, 0xA4, 0x42]);
        request.extend_from_slice(&tid(u32::from(method)).as_bytes()[..]);
        let answer = raw.exchange(&request).unwrap_or_else(|| panic!("method {method:#x} not answered"));
        let header = turnd::stun::raw::Header::parse(&answer).expect("a STUN header");
        assert_eq!(header.class_bits(), 3, "method {method:#x}: an error response");
        assert_eq!(header.method(), method, "the 400 to method {method:#x} names method {:#x}", header.method());
    }
    f.assert_alive("after unknown methods");
}
