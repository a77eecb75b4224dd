//! Credentials and abuse protection against the real binary: TURN REST credentials
//! (minted by `turnd credentials`), the peer policy on every path, quotas, the 401 rate
//! limit, the amplification factor, and memory under an unauthenticated flood.
// A test may unwrap (a panic is a failed test) and use unsafe for process plumbing
// (signals, namespaces); the server code denies both (Cargo.toml [lints]).
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::turn_client;

use common::*;
use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use stun_codec::rfc5766::attributes::XorPeerAddress;
use stun_codec::rfc5766::methods::{ALLOCATE, CREATE_PERMISSION};
use stun_codec::{MessageClass, TransactionId};
use turn_client::{error_code, TurnClient};
use turnd::stun::message::{self, Message, Protection};

/// `allowed` also opens the host's own services (echo peers on loopback) when set.
fn config(extra_top: &str, limits: &str, allowed: &str) -> String {
    let (min, max) = relay_port_range();
    let host = !allowed.is_empty();
    format!(
        "realm = \"{REALM}\"\n{extra_top}\n[[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:0\"\n\
         [admin]\nenabled = false\n[limits]\n{limits}\n\
         [relay]\nport-min = {min}\nport-max = {max}\nallowed-peers = [{allowed}]\nallow-host-peers = {host}\n\
         [auth]\nsecrets = [\"north-secret\", \"south-secret\"]\n\
         [[auth.user]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\n"
    )
}

/// Mints REST credentials with the real CLI: (username, password).
fn mint(secret: &str, ttl: &str) -> (String, String) {
    let out = Command::new(turnd_binary())
        .args(["credentials", "--secret", secret, "--user", "carol", "--ttl", ttl])
        .output()
        .expect("turnd credentials");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON for iceServers");
    assert!(json["urls"].is_array());
    (json["username"].as_str().unwrap().into(), json["credential"].as_str().unwrap().into())
}

#[test]
fn rest_credentials_work_with_either_secret_and_expire() {
    let turnd = TurndProcess::start(&config("", "", "\"127.0.0.0/8\""), &[]);
    for secret in ["north-secret", "south-secret"] {
        let (user, password) = mint(secret, "1h");
        let mut c = TurnClient::new("127.0.0.1:0", turnd.udp_addr(), &user, &password, REALM);
        assert!(c.allocate(vec![]).is_ok(), "REST credential from {secret}");
    }
    let (user, _) = mint("retired-secret", "1h");
    let password = turnd::turn::auth::rest_password(b"retired-secret", &user);
    let mut c = TurnClient::new("127.0.0.1:0", turnd.udp_addr(), &user, &password, REALM);
    assert_eq!(c.allocate(vec![]), Err(401), "a secret the server does not have");
    // An expired username (its timestamp in the past) is refused.
    let past = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() - 10;
    let user = format!("{past}:carol");
    let password = turnd::turn::auth::rest_password(b"north-secret", &user);
    let mut c = TurnClient::new("127.0.0.1:0", turnd.udp_addr(), &user, &password, REALM);
    assert_eq!(c.allocate(vec![]), Err(401));
    // Static users keep working beside the secrets.
    let mut c = TurnClient::new("127.0.0.1:0", turnd.udp_addr(), USER, PASSWORD, REALM);
    assert!(c.allocate(vec![]).is_ok());
}

#[test]
fn denied_peers_get_403_on_every_path() {
    // Loopback is NOT allowed here: the built-in policy is in force.
    let turnd = TurndProcess::start(&config("", "", ""), &[]);
    let mut c = TurnClient::new("127.0.0.1:0", turnd.udp_addr(), USER, PASSWORD, REALM);
    c.allocate(vec![]).expect("allocation");
    let denied = [
        "127.0.0.1:9",
        "[::ffff:127.0.0.1]:9",
        "0.0.0.0:9",
        "169.254.169.254:80",
        "10.1.2.3:9",
        "192.168.0.1:9",
        "100.64.0.1:9",
        "224.0.0.1:9",
        "255.255.255.255:9",
    ];
    for peer in denied {
        let peer: SocketAddr = peer.parse().unwrap();
        assert_eq!(c.create_permission(peer), Some(403), "CreatePermission {peer}");
        assert_eq!(c.channel_bind(0x4000, peer), Some(403), "ChannelBind {peer}");
    }
    // IPv6 forms of denied addresses: 403 or 443 (no IPv6 relay), never a success.
    for peer in ["[::]:9", "[::1]:9", "[64:ff9b::7f00:1]:9", "[fe80::1]:9", "[2002:7f00:1::]:9"] {
        let peer: SocketAddr = peer.parse().unwrap();
        let code = c.create_permission(peer);
        assert!(matches!(code, Some(403) | Some(443)), "{peer}: {code:?}");
    }
    // A Send indication to a denied peer goes nowhere (no permission can exist).
    let victim = UdpSocket::bind("127.0.0.1:0").unwrap();
    victim.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    c.send_indication(victim.local_addr().unwrap(), b"attack");
    assert!(victim.recv_from(&mut [0u8; 64]).is_err());
}

#[test]
fn quotas_answer_486_and_508() {
    let limits =
        "allocations-per-user = 2\nallocations-per-ip = 3\ntotal-allocations = 4\npermissions-per-allocation = 1";
    let turnd = TurndProcess::start(&config("", limits, "\"127.0.0.0/8\""), &[]);
    let alloc = |local: &str, user: &str, password: &str| {
        TurnClient::new(local, turnd.udp_addr(), user, password, REALM).allocate(vec![]).map(|_| ()).err()
    };
    let (rest_user, rest_password) = mint("north-secret", "1h");
    assert_eq!(alloc("127.0.0.1:0", USER, PASSWORD), None);
    assert_eq!(alloc("127.0.0.1:0", USER, PASSWORD), None);
    assert_eq!(alloc("127.0.0.1:0", USER, PASSWORD), Some(486), "per user");
    assert_eq!(alloc("127.0.0.1:0", &rest_user, &rest_password), None);
    assert_eq!(alloc("127.0.0.1:0", &rest_user, &rest_password), Some(486), "per IP");
    assert_eq!(alloc("127.0.0.2:0", &rest_user, &rest_password), None);
    assert_eq!(alloc("127.0.0.3:0", &rest_user, &rest_password), Some(508), "server total");
    let mut c = TurnClient::new("127.0.0.4:0", turnd.udp_addr(), USER, PASSWORD, REALM);
    let _ = c.allocate(vec![]);
}

fn unauthenticated_allocate(tid: u8) -> Vec<u8> {
    let mut m = Message::new(MessageClass::Request, ALLOCATE, TransactionId::new([tid; 12]));
    m.add_attribute(stun_codec::rfc5766::attributes::RequestedTransport::new(17));
    message::encode(m, Protection { key: None, fingerprint: false }).unwrap()
}

#[test]
fn unauthenticated_answers_are_small_and_rate_limited() {
    let limits = "unauthenticated-per-second = 10\nunauthenticated-burst = 10";
    let turnd = TurndProcess::start(&config("", limits, "\"127.0.0.0/8\""), &[]);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let request = unauthenticated_allocate(1);
    let mut answers = Vec::new();
    for _ in 0..50 {
        socket.send_to(&request, turnd.udp_addr()).unwrap();
    }
    let mut buf = [0u8; 1500];
    while let Ok((n, _)) = socket.recv_from(&mut buf) {
        answers.push(n);
    }
    assert!((10..=12).contains(&answers.len()), "about the burst is answered: {}", answers.len());
    let factor = answers[0] as f64 / request.len() as f64;
    println!("amplification: {} byte 401 for a {} byte Allocate = {factor:.2}x", answers[0], request.len());
    // REALM + NONCE (with the RFC 8489 cookie) + ERROR-CODE, and PASSWORD-ALGORITHMS
    // when it fits: at most 3x the request, and bounded per source by the rate limit.
    assert!(factor <= 3.0, "401 amplification {factor:.2}x");
    let decoded = message::decode(&buf[..answers[0]]).unwrap().message;
    assert_eq!(error_code(&decoded), Some(401));
    assert!(decoded.get_attribute::<stun_codec::rfc5389::attributes::Software>().is_none());
}

#[test]
fn no_unauthenticated_answer_passes_3x_its_request() {
    let turnd = TurndProcess::start(&config("", "", ""), &[]);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let ask = |request: &[u8]| {
        socket.send_to(request, turnd.udp_addr()).unwrap();
        let mut buf = [0u8; 1500];
        socket.recv_from(&mut buf).ok().map(|(n, _)| n)
    };
    let binding = message::encode(
        Message::new(MessageClass::Request, stun_codec::rfc5389::methods::BINDING, TransactionId::new([3; 12])),
        Protection { key: None, fingerprint: false },
    )
    .unwrap();
    let bare_allocate = message::encode(
        Message::new(MessageClass::Request, ALLOCATE, TransactionId::new([4; 12])),
        Protection { key: None, fingerprint: false },
    )
    .unwrap();
    for (what, request) in [("Binding", binding), ("Allocate", unauthenticated_allocate(5))] {
        let answer = ask(&request).unwrap_or_else(|| panic!("{what}: no answer"));
        let factor = answer as f64 / request.len() as f64;
        println!("amplification: {answer} byte answer to a {} byte {what} = {factor:.2}x", request.len());
        assert!(factor <= 3.0, "{what}: {factor:.2}x");
    }
    // A 401 cannot fit in 60 bytes: a bare 20-byte Allocate gets nothing.
    assert_eq!(ask(&bare_allocate), None, "a 20-byte Allocate was answered");
    println!("amplification: a bare 20-byte Allocate gets no answer");
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn memory_stays_flat_under_100k_unauthenticated_allocates_from_many_sources() {
    let turnd = TurndProcess::start(&config("", "", "\"127.0.0.0/8\""), &[]);
    let request = unauthenticated_allocate(7);
    // Warm up, then measure.
    let warm = UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..1000 {
        warm.send_to(&request, turnd.udp_addr()).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(turnd.pid());
    // 2,000 source addresses across 127.0.0.0/8, 50 requests each: 100,000 requests.
    let mut sent = 0;
    for i in 0..2000u32 {
        let ip = format!("127.{}.{}.{}", 10 + i / 65536, (i / 256) % 256, i % 256 + 1);
        let Ok(s) = UdpSocket::bind(format!("{ip}:0")) else { continue };
        for _ in 0..50 {
            if s.send_to(&request, turnd.udp_addr()).is_ok() {
                sent += 1;
            }
        }
        if i % 200 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(turnd.pid());
    println!("unauthenticated flood: {sent} requests, RSS {before} KiB -> {after} KiB");
    assert!(sent >= 99_000);
    assert!(after < before + 8 * 1024, "RSS grew from {before} KiB to {after} KiB");
    // Still serving.
    let mut c = TurnClient::new("127.0.0.1:0", turnd.udp_addr(), USER, PASSWORD, REALM);
    assert!(c.allocate(vec![]).is_ok());
    assert_eq!(
        error_code(&c.request(CREATE_PERMISSION, vec![XorPeerAddress::new("127.0.0.1:9".parse().unwrap()).into()])),
        None
    );
}

#[test]
fn a_rest_user_id_with_a_newline_cannot_forge_a_log_line() {
    let turnd = TurndProcess::start(&config("", "", ""), &[]);
    let forged = "x\n2026-01-01T00:00:00.000000Z  WARN turnd: FORGED client=203.0.113.9";
    let expiry = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
    let user = format!("{expiry}:{forged}");
    let password = turnd::turn::auth::rest_password(b"north-secret", &user);
    let mut c = TurnClient::new("127.0.0.1:0", turnd.udp_addr(), &user, &password, REALM);
    c.allocate(vec![]).expect("the REST credential works");
    let refresh = c.request(
        stun_codec::rfc5766::methods::REFRESH,
        vec![stun_codec::rfc5766::attributes::Lifetime::from_u32(0).into()],
    );
    assert_eq!(error_code(&refresh), None);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !turnd.logs().contains("allocation ended") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let logs = turnd.logs();
    let ended = logs.lines().find(|l| l.contains("allocation ended")).unwrap_or_else(|| panic!("no end line:\n{logs}"));
    assert!(ended.contains("x\\x0a2026-01-01T00:00:00.000000Z  WARN turnd: FORGED"), "{ended}");
    assert!(!logs.lines().any(|l| l.starts_with("2026-01-01T00:00:00")), "a forged line:\n{logs}");
}

#[test]
fn per_ip_limits_count_a_source_prefix_not_each_address() {
    // IPv6 sources are grouped by /64 by default (unit tests in src/turn/source.rs and
    // ledger.rs); loopback IPv4 shows the same grouping through real sockets with /24.
    let turnd = TurndProcess::start(&config("", "allocations-per-ip = 2\nipv4-prefix = 24", "\"127.0.0.0/8\""), &[]);
    let alloc = |local: &str| TurnClient::new(local, turnd.udp_addr(), USER, PASSWORD, REALM).allocate(vec![]).err();
    assert_eq!(alloc("127.0.0.2:0"), None);
    assert_eq!(alloc("127.0.0.3:0"), None);
    assert_eq!(alloc("127.0.0.4:0"), Some(486), "a third address of the same /24");
    // The 401 limiter counts the /24 too: a burst of 2 for all of its addresses.
    let limits = "ipv4-prefix = 24\nunauthenticated-per-second = 1\nunauthenticated-burst = 2";
    let turnd = TurndProcess::start(&config("", limits, ""), &[]);
    let answered = (5..9u8)
        .filter(|i| {
            let socket = UdpSocket::bind(format!("127.0.0.{i}:0")).unwrap();
            socket.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
            socket.send_to(&unauthenticated_allocate(*i), turnd.udp_addr()).unwrap();
            socket.recv_from(&mut [0u8; 256]).is_ok()
        })
        .count();
    assert_eq!(answered, 2, "401s to four addresses of one /24");
}

#[test]
fn denied_clients_get_nothing_at_all() {
    let turnd = TurndProcess::start(&config("[clients]\ndenied = [\"127.0.0.9/32\"]\n", "", ""), &[]);
    let binding = message::encode(
        Message::new(MessageClass::Request, stun_codec::rfc5389::methods::BINDING, TransactionId::new([7; 12])),
        Protection { key: None, fingerprint: false },
    )
    .unwrap();
    let answered = |local: &str| {
        let socket = UdpSocket::bind(local).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        socket.send_to(&binding, turnd.udp_addr()).unwrap();
        socket.send_to(&unauthenticated_allocate(8), turnd.udp_addr()).unwrap();
        let mut buf = [0u8; 256];
        (0..2).filter(|_| socket.recv_from(&mut buf).is_ok()).count()
    };
    assert_eq!(answered("127.0.0.9:0"), 0, "a denied client was answered");
    assert_eq!(answered("127.0.0.1:0"), 2, "others are answered");
}
