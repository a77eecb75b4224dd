//! Limits on TCP/TLS client connections against the real binary (issue 21, item 2):
//! per-source caps on connections and on unauthenticated ones, checked at accept; the
//! unauthenticated timeout; the write timeout that cuts a client which floods requests
//! and never reads; and the memory an idle connection costs.
//!
//! Loopback only: the many sources are addresses of 127.0.0.0/8, bound before connect.
// A test may unwrap (a panic is a failed test) and use unsafe for process plumbing
// (signals, namespaces); the server code denies both (Cargo.toml [lints]).
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::turn_client;

use common::*;
use socket2::{Domain, Socket, Type};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::{MessageClass, TransactionId};
use turn_client::{StreamClient, TurnClient};
use turnd::stun::message::{self, Message, Protection};

fn binding_request(tid: u8) -> Vec<u8> {
    let m = Message::new(MessageClass::Request, BINDING, TransactionId::new([tid; 12]));
    message::encode(m, Protection { key: None, fingerprint: true }).unwrap()
}

/// A config with one TCP and one UDP listener and `tcp` as the `[tcp]` section's body.
fn config(tcp: &str) -> String {
    let (min, max) = relay_port_range();
    format!(
        "realm = \"{REALM}\"\n\
         [[listen]]\ntransport = \"tcp\"\naddress = \"127.0.0.1:0\"\n\
         [[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:0\"\n\
         [tcp]\n{tcp}\n\
         [relay]\nport-min = {min}\nport-max = {max}\nallowed-peers = [\"127.0.0.0/8\"]\n\
         [[auth.user]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\n"
    )
}

/// A TCP connection to `server` from the loopback address `source`.
fn connect_from(source: Ipv4Addr, server: SocketAddr) -> TcpStream {
    connect_with(source, server, |_| {})
}

fn connect_with(source: Ipv4Addr, server: SocketAddr, setup: impl FnOnce(&Socket)) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    socket.bind(&SocketAddr::V4(SocketAddrV4::new(source, 0)).into()).expect("bind a loopback source");
    setup(&socket);
    socket.connect(&server.into()).expect("connect");
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    stream
}

/// Reads one STUN message, or `None` when the stream ends, fails or times out first.
fn try_read_stun(stream: &mut TcpStream) -> Option<Message> {
    let mut head = [0u8; 20];
    stream.read_exact(&mut head).ok()?;
    let len = u16::from_be_bytes([head[2], head[3]]) as usize;
    let mut all = head.to_vec();
    all.resize(20 + len, 0);
    stream.read_exact(&mut all[20..]).ok()?;
    Some(message::decode(&all).ok()?.message)
}

/// Whether a Binding over `stream` is answered (a refused connection is closed at once).
fn binding_answered(stream: &mut TcpStream, tid: u8) -> bool {
    if stream.write_all(&binding_request(tid)).is_err() {
        return false;
    }
    try_read_stun(stream).is_some_and(|m| m.class() == MessageClass::SuccessResponse)
}

/// Whether `stream` was closed by the server, waiting at most `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 512];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return false,
            Err(_) => return true,
        }
    }
}

/// `GET /metrics` from the admin listener.
fn scrape(admin: SocketAddr) -> String {
    let mut s = TcpStream::connect(admin).expect("admin listener");
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// A UDP client still gets an allocation.
fn udp_allocates(turnd: &TurndProcess) {
    let mut c = TurnClient::new("127.0.0.1:0", turnd.udp_addr(), USER, PASSWORD, REALM);
    c.allocate(vec![]).expect("a UDP allocation");
}

/// Waits until `logs` contains `needle`, at most `within` (true at once when the logs
/// are not at debug level: TURND_TEST_LOG overrides it).
fn wait_for_log(turnd: &TurndProcess, needle: &str, within: Duration) -> bool {
    if std::env::var("TURND_TEST_LOG").is_ok_and(|level| level != "debug") {
        return true;
    }
    let deadline = Instant::now() + within;
    while !turnd.logs().contains(needle) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

#[test]
fn one_source_is_held_to_max_connections_per_source() {
    let turnd = TurndProcess::start(&config("max-connections-per-source = 4\nmax-unauthenticated-per-source = 2"), &[]);
    let server = turnd.tcp_addr();
    // Four connections from one source, each authenticated by an allocation.
    let mut held: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = connect_from(ip(2), server);
            StreamClient::new(USER, PASSWORD, REALM).allocate(&mut s).expect("a TCP allocation");
            s
        })
        .collect();
    // The fifth is refused although none of the four is unauthenticated.
    let mut fifth = connect_from(ip(2), server);
    assert!(!binding_answered(&mut fifth, 5), "a fifth connection from one source is refused");
    assert!(wait_for_log(&turnd, "max-connections-per-source", Duration::from_secs(3)), "refusal is logged");
    let metrics = scrape(turnd.admin_addr());
    assert!(
        metrics.lines().any(|l| l.starts_with("turnd_tcp_connections_refused_total{reason=\"per_source\"} ") && !l.ends_with(" 0")),
        "refusal is counted:\n{metrics}"
    );
    // Another source is served, and so is UDP.
    let mut other = connect_from(ip(3), server);
    assert!(binding_answered(&mut other, 6), "another source is served");
    udp_allocates(&turnd);
    // The held connections still work; closing one frees its slot.
    assert!(binding_answered(&mut held[0], 7));
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut again = connect_from(ip(2), server);
        if binding_answered(&mut again, 8) {
            break;
        }
        assert!(Instant::now() < deadline, "a closed connection gave its slot back");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn unauthenticated_connections_have_their_own_cap() {
    let turnd = TurndProcess::start(&config("max-connections-per-source = 8\nmax-unauthenticated-per-source = 2"), &[]);
    let server = turnd.tcp_addr();
    let mut a = connect_from(ip(4), server);
    let mut b = connect_from(ip(4), server);
    assert!(binding_answered(&mut a, 1) && binding_answered(&mut b, 2));
    let mut c = connect_from(ip(4), server);
    assert!(!binding_answered(&mut c, 3), "a third unauthenticated connection is refused");
    assert!(wait_for_log(&turnd, "max-unauthenticated-per-source", Duration::from_secs(3)), "refusal is logged");
    let mut other = connect_from(ip(5), server);
    assert!(binding_answered(&mut other, 4), "another source is served");
    udp_allocates(&turnd);
    // Once `a` holds an allocation it no longer counts as unauthenticated: at once (the
    // count drops before the Allocate success is written).
    StreamClient::new(USER, PASSWORD, REALM).allocate(&mut a).expect("a TCP allocation");
    let mut d = connect_from(ip(4), server);
    assert!(binding_answered(&mut d, 5), "an authenticated connection leaves the unauthenticated count");
    let mut e = connect_from(ip(4), server);
    assert!(!binding_answered(&mut e, 6), "b and d are unauthenticated: the cap holds again");
}

#[test]
fn unauthenticated_connections_are_closed_after_unauthenticated_timeout() {
    let turnd = TurndProcess::start(&config("unauthenticated-timeout = \"2s\""), &[]);
    let server = turnd.tcp_addr();
    let started = Instant::now();
    let mut idle = connect_from(ip(6), server);
    assert!(binding_answered(&mut idle, 1));
    let mut allocated = connect_from(ip(7), server);
    StreamClient::new(USER, PASSWORD, REALM).allocate(&mut allocated).expect("a TCP allocation");
    assert!(closed_within(&mut idle, Duration::from_secs(6)), "the unauthenticated connection is closed");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(1500) && elapsed < Duration::from_secs(6), "closed after {elapsed:?}");
    println!("unauthenticated connection closed {elapsed:?} after accept (unauthenticated-timeout 2s)");
    // The one with an allocation stays, well past the timeout, and is still served.
    assert!(!closed_within(&mut allocated, Duration::from_secs(2)), "the allocated connection stays");
    allocated.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    assert!(binding_answered(&mut allocated, 2));
}

#[test]
fn a_client_that_floods_and_never_reads_is_cut_by_write_timeout() {
    let turnd = TurndProcess::start(&config("write-timeout = \"2s\""), &[]);
    let server = turnd.tcp_addr();
    // A small receive window so that unread answers back up quickly.
    let flooder = connect_with(ip(8), server, |s| s.set_recv_buffer_size(4096).expect("SO_RCVBUF"));
    flooder.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    let batch: Vec<u8> = (0..64u8).flat_map(binding_request).collect();
    let cut = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let writer = {
        let (mut flooder, cut) = (flooder, cut.clone());
        std::thread::spawn(move || {
            let mut sent = 0usize;
            let outcome = loop {
                match flooder.write_all(&batch) {
                    Ok(()) => sent += batch.len(),
                    Err(e) => break e,
                }
            };
            cut.store(!matches!(outcome.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut), Ordering::SeqCst);
            (started.elapsed(), sent, outcome)
        })
    };
    // Meanwhile turnd serves others, over TCP and UDP.
    std::thread::sleep(Duration::from_millis(300));
    let mut other = connect_from(ip(9), server);
    assert!(binding_answered(&mut other, 1), "turnd answers another TCP client during the flood");
    udp_allocates(&turnd);
    let (elapsed, sent, outcome) = writer.join().unwrap();
    assert!(cut.load(Ordering::SeqCst), "the flooder was not cut: {outcome} after {elapsed:?}");
    println!("non-reading flooder cut {elapsed:?} after it started ({sent} bytes of requests sent; {outcome})");
    assert!(elapsed < Duration::from_secs(15), "cut within write-timeout of its answers backing up: {elapsed:?}");
    assert!(wait_for_log(&turnd, "write timeout", Duration::from_secs(3)), "the cut is logged");
    // Still responsive afterwards.
    let mut after = connect_from(ip(8), server);
    assert!(binding_answered(&mut after, 2), "the same source is served again once its flooder is gone");
    udp_allocates(&turnd);
}

#[test]
fn a_tls_client_that_floods_and_never_reads_is_cut_by_write_timeout() {
    // The same over TLS, where unwritten answers wait as records in the session.
    if !need_tool("openssl", "openssl") {
        return;
    }
    let cert = TestCert::new();
    let config = config("write-timeout = \"2s\"").replace("transport = \"tcp\"", "transport = \"tls\"");
    let turnd = TurndProcess::start(&cert.add_to(&config), &[]);
    let server = turnd.tls_addr();
    let tcp = connect_with(ip(10), server, |s| s.set_recv_buffer_size(4096).expect("SO_RCVBUF"));
    tcp.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut flooder = turn_client::tls_over(tcp, server.ip()).expect("TLS handshake");
    let batch: Vec<u8> = (0..64u8).flat_map(binding_request).collect();
    let started = Instant::now();
    let outcome = loop {
        if let Err(e) = flooder.write_all(&batch).and_then(|()| flooder.flush()) {
            break e;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the TLS flooder was never cut");
    };
    let elapsed = started.elapsed();
    assert!(
        !matches!(outcome.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "the TLS flooder was not cut: {outcome} after {elapsed:?}"
    );
    println!("non-reading TLS flooder cut {elapsed:?} after it started ({outcome})");
    assert!(elapsed < Duration::from_secs(15), "cut within write-timeout of its answers backing up: {elapsed:?}");
    assert!(wait_for_log(&turnd, "write timeout", Duration::from_secs(3)), "the cut is logged");
    // Still serving TLS clients.
    let mut after = turn_client::tls_connect(server);
    after.write_all(&binding_request(3)).unwrap();
    assert_eq!(turn_client::read_stun(&mut after).class(), MessageClass::SuccessResponse);
}

/// The resident set of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).and_then(|kb| kb.parse::<u64>().ok()).expect("VmRSS in kB") * 1024
}

/// Opens `count` connections spread over sources 127.1.x.y, each answered once.
fn open_idle(server: SocketAddr, count: usize, first_source: u32) -> Vec<TcpStream> {
    (0..count)
        .map(|i| {
            let source = Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 1, 0, 0)) + first_source + (i as u32) / 8);
            let mut s = connect_from(source, server);
            assert!(binding_answered(&mut s, 1), "connection {i} from {source} is served");
            s
        })
        .collect()
}

#[test]
fn an_idle_connection_costs_little_memory() {
    const IDLE: usize = 2000;
    let turnd = TurndProcess::start(
        &config(
            "unauthenticated-timeout = \"5m\"\nmax-connections-per-source = 64\nmax-unauthenticated-per-source = 64",
        ),
        &[],
    );
    let server = turnd.tcp_addr();
    // Warm up: runtime threads, allocator arenas and the workers' maps.
    drop(open_idle(server, 200, 0));
    std::thread::sleep(Duration::from_millis(500));
    let before = rss(turnd.pid());
    let idle = open_idle(server, IDLE, 1000);
    std::thread::sleep(Duration::from_millis(500));
    let after = rss(turnd.pid());
    let per_connection = after.saturating_sub(before) / IDLE as u64;
    println!(
        "turnd RSS {} KiB -> {} KiB with {IDLE} idle TCP connections: {per_connection} bytes per connection",
        before / 1024,
        after / 1024
    );
    assert!(per_connection < 16 * 1024, "{per_connection} bytes per idle connection");
    drop(idle);
}

#[test]
fn an_idle_tls_connection_costs_little_memory() {
    const IDLE: usize = 500;
    if !need_tool("openssl", "openssl") {
        return;
    }
    let cert = TestCert::new();
    let config = config(
        "unauthenticated-timeout = \"5m\"\nmax-connections-per-source = 2000\nmax-unauthenticated-per-source = 2000",
    )
    .replace("transport = \"tcp\"", "transport = \"tls\"");
    let turnd = TurndProcess::start(&cert.add_to(&config), &[]);
    let server = turnd.tls_addr();
    let open = |count: usize| -> Vec<turn_client::TlsStream> {
        (0..count)
            .map(|i| {
                let mut s = turn_client::tls_connect(server);
                s.write_all(&binding_request(1)).unwrap();
                let answer = turn_client::read_stun(&mut s);
                assert_eq!(answer.class(), MessageClass::SuccessResponse, "TLS connection {i}");
                s
            })
            .collect()
    };
    drop(open(100));
    std::thread::sleep(Duration::from_millis(500));
    let before = rss(turnd.pid());
    let idle = open(IDLE);
    std::thread::sleep(Duration::from_millis(500));
    let after = rss(turnd.pid());
    let per_connection = after.saturating_sub(before) / IDLE as u64;
    println!(
        "turnd RSS {} KiB -> {} KiB with {IDLE} idle TLS connections: {per_connection} bytes per connection",
        before / 1024,
        after / 1024
    );
    assert!(per_connection < 64 * 1024, "{per_connection} bytes per idle TLS connection");
    drop(idle);
}
