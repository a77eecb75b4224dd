//! Faults and resource exhaustion against the real binary on loopback:
//!
//! - `kill -9` under load, then a restart on the same ports: new allocations at once;
//! - peers and clients whose ports are closed (ICMP port unreachable): allocations and
//!   listeners carry on;
//! - descriptors running out (RLIMIT_NOFILE lowered on the running turnd with
//!   prlimit(2)): Allocates get 508, the event is logged once, existing allocations keep
//!   relaying, and service resumes when the limit is raised again;
//! - relay ports running out (508) and per-IP quotas (486), and ports coming back;
//! - the admin listener flooded with WebSocket and HTTP connections: the extra ones are
//!   refused, relaying never notices.
//!
//! Clock jumps are covered at the unit level in tests/properties.rs (lifetimes follow
//! the monotonic clock, TURN REST expiry the wall clock).
// A test may unwrap (a panic is a failed test) and use unsafe for process plumbing
// (signals, namespaces); the server code denies both (Cargo.toml [lints]).
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

mod common;
#[allow(dead_code)]
use common::http;
use common::turn_client;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stun_codec::rfc5389::attributes::XorMappedAddress;
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5766::attributes::Lifetime;
use stun_codec::rfc5766::methods::REFRESH;
use stun_codec::{MessageClass, TransactionId};
use turn_client::{error_code, TurnClient};
use turnd::stun::message::{self, Message, Protection};

const CHANNEL: u16 = 0x4000;

fn client(local: &str, server: SocketAddr) -> TurnClient {
    TurnClient::new(local, server, USER, PASSWORD, REALM)
}

/// A client with an allocation and a channel to `peer`.
fn relaying_client(local: &str, server: SocketAddr, peer: SocketAddr) -> TurnClient {
    let mut c = client(local, server);
    c.allocate(vec![]).expect("allocation");
    assert_eq!(c.channel_bind(CHANNEL, peer), None, "channel bind");
    c
}

/// Sends `payload` on the channel and waits for the echo (skipping stray datagrams).
fn relays(c: &TurnClient, payload: &[u8]) -> bool {
    c.send_channel_data(CHANNEL, payload);
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        // Raw: Data indications that carry an ICMP error and no DATA (RFC 8656 §11)
        // may come first, and are skipped like any other datagram.
        let Some(bytes) = c.recv() else {
            return false;
        };
        let channel_data = bytes.first().is_some_and(|b| (0x40..0x80).contains(b));
        if channel_data && bytes.get(4..) == Some(payload) {
            return true;
        }
    }
    false
}

fn binding_answered(server: SocketAddr) -> bool {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let m = Message::new(MessageClass::Request, BINDING, TransactionId::new([3; 12]));
    s.send_to(&message::encode(m, Protection { key: None, fingerprint: true }).unwrap(), server).unwrap();
    let mut buf = [0u8; 512];
    let Ok(n) = s.recv(&mut buf) else { return false };
    message::decode(&buf[..n]).is_ok_and(|d| d.message.get_attribute::<XorMappedAddress>().is_some())
}

fn udp_tcp_config(udp: u16, tcp: u16, relay: (u16, u16), extra: &str) -> String {
    format!(
        "realm = \"{REALM}\"\n\
         [[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:{udp}\"\n\
         [[listen]]\ntransport = \"tcp\"\naddress = \"127.0.0.1:{tcp}\"\n\
         [relay]\nport-min = {}\nport-max = {}\nallowed-peers = [\"127.0.0.0/8\"]\nallow-host-peers = true\n\
         [[auth.user]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\n{extra}",
        relay.0, relay.1
    )
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

#[test]
fn kill_9_under_load_then_restart_on_the_same_ports_serves_at_once() {
    let relay = relay_port_range();
    let first = TurndProcess::start(&udp_tcp_config(0, 0, relay, ""), &[]);
    let (udp, tcp) = (first.udp_addr(), first.tcp_addr());
    let peer = UdpEchoPeer::start();
    let clients: Vec<TurnClient> = (0..20).map(|_| relaying_client("127.0.0.1:0", udp, peer.addr())).collect();
    // A TCP client connected too, so the listening port has live connections when killed.
    let mut tcp_client = TcpStream::connect(tcp).unwrap();
    tcp_client.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    // Load: every client sends ChannelData as fast as it can, for at most 3 s.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let load = {
        let (stop, sent) = (stop.clone(), sent.clone());
        let sockets: Vec<UdpSocket> = clients.iter().map(|c| c.socket.try_clone().unwrap()).collect();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(3);
            let frame = [0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4];
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                for s in &sockets {
                    let _ = s.send_to(&frame, udp);
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    signal(first.pid(), libc::SIGKILL);
    let killed = Instant::now();
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    assert!(sent.load(Ordering::Relaxed) > 1000, "the load never ran");
    let mut buf = [0u8; 16];
    assert!(matches!(tcp_client.read(&mut buf), Ok(0) | Err(_)), "the TCP connection died with turnd");
    drop(first);

    // Same listener ports, same relay range: up at once and allocating.
    let restarted = Instant::now();
    let second = TurndProcess::start(&udp_tcp_config(udp.port(), tcp.port(), relay, ""), &[]);
    assert_eq!((second.udp_addr(), second.tcp_addr()), (udp, tcp));
    let c = relaying_client("127.0.0.1:0", udp, peer.addr());
    assert!(relays(&c, b"after restart"), "a new allocation relays after the restart");
    let ready = restarted.elapsed();
    assert!(ready < Duration::from_secs(3), "serving {ready:?} after the restart");
    // The old clients' allocations are gone with the process: a Refresh gets 437.
    let mut old = clients.into_iter().next().unwrap();
    // Skip the echoes of the load still queued on its socket.
    old.socket.set_nonblocking(true).unwrap();
    while old.socket.recv(&mut [0u8; 2048]).is_ok() {}
    old.socket.set_nonblocking(false).unwrap();
    let refresh = old.request(REFRESH, vec![Lifetime::from_u32(600).into()]);
    assert_eq!(error_code(&refresh), Some(437), "an allocation survived kill -9");
    let mut tcp_again = TcpStream::connect(tcp).unwrap();
    tcp_again.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let m = Message::new(MessageClass::Request, BINDING, TransactionId::new([4; 12]));
    tcp_again.write_all(&message::encode(m, Protection { key: None, fingerprint: true }).unwrap()).unwrap();
    assert_eq!(turn_client::read_stun(&mut tcp_again).class(), MessageClass::SuccessResponse);
    eprintln!("killed -> restarted: {:?}; restart -> relaying: {ready:?}", restarted - killed);
}

/// Reads a counter from /proc/net/snmp (`Icmp: ... OutDestUnreachs ...`).
fn snmp(section: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut lines = text.lines().filter(|l| l.starts_with(&format!("{section}:")));
    let names: Vec<&str> = lines.next()?.split_whitespace().collect();
    let values: Vec<&str> = lines.next()?.split_whitespace().collect();
    values.get(names.iter().position(|n| *n == field)?)?.parse().ok()
}

#[test]
fn icmp_port_unreachable_from_peers_and_clients_breaks_nothing() {
    let turnd = TurndProcess::with_transports(&["udp"]);
    let server = turnd.udp_addr();
    let peer = UdpEchoPeer::start();
    let mut c = relaying_client("127.0.0.1:0", server, peer.addr());
    // A peer port that is surely closed: bound, then released.
    let closed = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    assert_eq!(c.channel_bind(0x4001, closed), None);
    let unreachable_before = snmp("Icmp", "OutDestUnreachs");
    for i in 0..50u8 {
        c.send_channel_data(0x4001, &[i; 32]);
    }
    // A Send indication to it too.
    c.send_indication(closed, b"nobody home");
    std::thread::sleep(Duration::from_millis(200));
    let unreachable_after = snmp("Icmp", "OutDestUnreachs");
    if let (Some(b), Some(a)) = (unreachable_before, unreachable_after) {
        assert!(a > b, "the kernel sent no port-unreachable: the test did not test anything");
    }
    assert!(relays(&c, b"after icmp"), "the allocation relays after its peer's ICMP errors");
    // The closed peer comes back to life on the same port: relaying to it works too.
    let revived = UdpSocket::bind(closed).expect("rebind the closed peer port");
    revived.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    c.send_channel_data(0x4001, b"hello again");
    let mut buf = [0u8; 64];
    let (n, _) = revived.recv_from(&mut buf).expect("the peer gets data once it listens again");
    assert_eq!(&buf[..n], b"hello again");

    // Clients that vanish: each sends a Binding and closes its socket before the
    // answer, so turnd's listener gets ICMP errors back.
    for _ in 0..100 {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let m = Message::new(MessageClass::Request, BINDING, TransactionId::new([5; 12]));
        s.send_to(&message::encode(m, Protection { key: None, fingerprint: true }).unwrap(), server).unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(binding_answered(server), "the listener answers after ICMP errors from vanished clients");
    assert!(relays(&c, b"after vanished clients"));
    assert!(!turnd.logs().contains("panicked"));
}

/// Sets the soft RLIMIT_NOFILE of a running process (the hard limit is left alone, so
/// it can be raised again).
fn set_nofile(pid: u32, soft: u64) {
    let mut old = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: prlimit(2) with a null new limit only reads into `old`.
    let rc = unsafe { libc::prlimit(pid as libc::pid_t, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    assert_eq!(rc, 0, "prlimit read: {}", std::io::Error::last_os_error());
    let new = libc::rlimit { rlim_cur: soft.min(old.rlim_max), rlim_max: old.rlim_max };
    // SAFETY: prlimit(2) reads one valid rlimit.
    let rc = unsafe { libc::prlimit(pid as libc::pid_t, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit set: {}", std::io::Error::last_os_error());
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64).unwrap_or(0)
}

#[test]
fn descriptor_exhaustion_gets_508_logs_once_and_recovers() {
    let turnd = TurndProcess::start(&config_with(&["udp", "tcp"]), &[]);
    let (server, pid) = (turnd.udp_addr(), turnd.pid());
    let peer = UdpEchoPeer::start();
    let yardstick = relaying_client("127.0.0.1:0", server, peer.addr());
    // Room for exactly two more descriptors.
    let in_use = open_fds(pid);
    set_nofile(pid, in_use + 2);
    let mut codes = Vec::new();
    let mut extra = Vec::new();
    for i in 0..12 {
        let mut c = client(&format!("127.0.3.{}:0", i + 1), server);
        codes.push(c.allocate(vec![]).err());
        extra.push(c);
    }
    let granted = codes.iter().filter(|c| c.is_none()).count();
    let refused = codes.iter().filter(|c| **c == Some(508)).count();
    // Room for about two (a descriptor may come or go meanwhile, e.g. the admin thread's).
    assert!(granted <= 4, "{granted} allocations with room for 2 descriptors: {codes:?}");
    assert_eq!(granted + refused, 12, "every other Allocate gets 508: {codes:?}");
    // A TCP client cannot be accepted now; it waits in the backlog.
    let mut tcp = TcpStream::connect(turnd.tcp_addr()).unwrap();
    let m = Message::new(MessageClass::Request, BINDING, TransactionId::new([6; 12]));
    tcp.write_all(&message::encode(m, Protection { key: None, fingerprint: true }).unwrap()).unwrap();
    // Existing allocations and UDP Binding carry on regardless.
    assert!(relays(&yardstick, b"while out of descriptors"), "relaying stopped when descriptors ran out");
    assert!(binding_answered(server), "Binding stopped when descriptors ran out");

    // Resources return: the waiting TCP client is accepted and answered, Allocates work.
    set_nofile(pid, 4096);
    tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    assert_eq!(turn_client::read_stun(&mut tcp).class(), MessageClass::SuccessResponse, "TCP served after recovery");
    let mut after = client("127.0.4.1:0", server);
    assert!(after.allocate(vec![]).is_ok(), "Allocate after descriptors came back");
    assert!(relays(&yardstick, b"after recovery"));

    // One warning for the episode, not one per refused Allocate.
    let logs = turnd.logs();
    let warnings = logs.lines().filter(|l| l.contains("WARN") && l.contains("cannot open relay socket")).count();
    assert!(warnings >= 1, "running out of descriptors was not logged at all:\n{logs}");
    assert!(warnings <= 1, "{warnings} warnings for {refused} refused Allocates (should log once per episode)");
}

#[test]
fn relay_port_exhaustion_gets_508_per_ip_quota_486_and_ports_come_back() {
    let (min, _) = relay_port_range();
    let config = format!(
        "realm = \"{REALM}\"\n[[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:0\"\n\
         [relay]\nport-min = {min}\nport-max = {}\nallowed-peers = [\"127.0.0.0/8\"]\nallow-host-peers = true\n\
         [limits]\nallocations-per-ip = 2\n\
         [admin]\naddress = \"127.0.0.1:0\"\n\
         [[auth.user]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\n",
        min + 4
    );
    let turnd = TurndProcess::start(&config, &[]);
    let server = turnd.udp_addr();
    let peer = UdpEchoPeer::start();
    let yardstick = relaying_client("127.0.5.1:0", server, peer.addr());
    // Per IP: 127.0.5.1 has one; a second is fine, a third gets 486.
    let mut same_ip = client("127.0.5.1:0", server);
    assert!(same_ip.allocate(vec![]).is_ok());
    assert_eq!(client("127.0.5.1:0", server).allocate(vec![]).err(), Some(486));
    // Ports: 5 in the range, 2 held; 3 more, then 508.
    let mut held: Vec<TurnClient> = (2..5).map(|i| client(&format!("127.0.5.{i}:0"), server)).collect();
    for c in &mut held {
        assert!(c.allocate(vec![]).is_ok());
    }
    let mut late = client("127.0.5.9:0", server);
    assert_eq!(late.allocate(vec![]).err(), Some(508), "a sixth allocation on five ports");
    assert!(relays(&yardstick, b"with the range full"));
    // A deleted allocation gives its port back at once.
    let deleted = held[0].request(REFRESH, vec![Lifetime::from_u32(0).into()]);
    assert_eq!(error_code(&deleted), None);
    let mut next = client("127.0.5.10:0", server);
    assert!(next.allocate(vec![]).is_ok(), "the freed port is handed out again");
    // The loop publishes its counters once a second.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = http::scrape(turnd.admin_addr());
        let count = |code: &str| http::metric(&text, &format!("turnd_error_responses_total{{code=\"{code}\"}}"));
        if count("508") == Some(1.0) && count("486") == Some(1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "508 and 486 not counted once each:\n{text}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn admin_websocket_flood_is_refused_and_relaying_never_notices() {
    let turnd = TurndProcess::start(
        &format!(
            "{}\n[admin]\naddress = \"127.0.0.1:0\"\nmax-connections = 4\nmax-connections-per-source = 4\n",
            config_with(&["udp"])
        ),
        &[],
    );
    let admin = turnd.admin_addr();
    let peer = UdpEchoPeer::start();
    let c = relaying_client("127.0.0.1:0", turnd.udp_addr(), peer.addr());
    // Fill the cap with WebSockets that never read.
    let mut sockets: Vec<http::Ws> =
        (0..4).map(|_| http::ws_connect(admin, "/ws", &[]).expect("a WebSocket under the cap")).collect();
    // Flood: 200 more connections, WebSocket upgrades and plain requests; each is refused
    // (503) or closed, none is kept.
    let mut refused = 0;
    for i in 0..200 {
        let mut s = TcpStream::connect(admin).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let upgrade = if i % 2 == 0 {
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        } else {
            "Connection: close\r\n"
        };
        let _ = s.write_all(format!("GET /ws HTTP/1.1\r\nHost: {admin}\r\n{upgrade}\r\n").as_bytes());
        let mut head = [0u8; 64];
        match s.read(&mut head) {
            Ok(n) if head[..n].starts_with(b"HTTP/1.1 503") => refused += 1,
            Ok(0) | Err(_) => refused += 1,
            Ok(n) => panic!("connection {i} over the cap was served: {}", String::from_utf8_lossy(&head[..n])),
        }
        if i % 50 == 0 {
            assert!(relays(&c, format!("during the flood {i}").as_bytes()), "relaying stalled during the flood");
        }
    }
    assert_eq!(refused, 200);
    // A WebSocket client flooding frames of its own: the server keeps up or drops it.
    for n in 0..2000 {
        if sockets[0].send(tungstenite::Message::text(format!("{{\"flood\":{n}}}"))).is_err() {
            break;
        }
    }
    assert!(relays(&c, b"after the flood"));
    assert!(binding_answered(turnd.udp_addr()));
    // Freed slots serve again: close two, scrape, and count the refusals.
    for mut ws in sockets.drain(..2) {
        let _ = ws.close(None);
        let _ = ws.flush();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let r = http::get(admin, "/metrics", &[]);
        if r.status == 200 {
            break r.body;
        }
        assert!(Instant::now() < deadline, "the admin listener never recovered: {r:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let counted = http::metric(&text, "turnd_admin_connections_refused_total").unwrap_or(0.0);
    assert!(counted >= 200.0, "refusals counted: {counted}");
    assert!(http::ws_connect(admin, "/ws", &[]).is_ok(), "a new WebSocket after the flood");
    assert!(!turnd.logs().contains("panicked"));
}

#[test]
fn sigterm_under_load_drains_with_508_then_exits_cleanly() {
    let config = format!("drain-time = \"3s\"\n{}", config_with(&["udp"]));
    let mut turnd = TurndProcess::start(&config, &[]);
    let server = turnd.udp_addr();
    let peer = UdpEchoPeer::start();
    let old = relaying_client("127.0.0.1:0", server, peer.addr());
    signal(turnd.pid(), libc::SIGTERM);
    let term = Instant::now();
    // Give the loop a moment to hear the signal, then: new Allocates get 508 (no
    // alternate-server configured) while the old allocation relays until the end.
    std::thread::sleep(Duration::from_millis(300));
    let mut late = client("127.0.0.2:0", server);
    assert_eq!(late.allocate(vec![]).err(), Some(508), "a new Allocate while draining");
    let mut relayed = 0;
    while term.elapsed() < Duration::from_millis(2500) {
        assert!(relays(&old, format!("draining {relayed}").as_bytes()), "relaying stopped during the drain");
        relayed += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    // Wait without a second SIGTERM (that would end the drain at once).
    while turnd.is_running() && term.elapsed() < Duration::from_secs(8) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = term.elapsed();
    let status = turnd.terminate(Duration::from_secs(1)).expect("turnd exits after its drain time");
    assert!(status.success(), "a drained exit is clean: {status}");
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(6),
        "exited {took:?} after SIGTERM, drain-time 3s"
    );
}
