//! Self-tests of the integration-test harness (no turnd needed).
// A test may unwrap (a panic is a failed test) and use unsafe for process plumbing
// (signals, namespaces); the server code denies both (Cargo.toml [lints]).
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

#[test]
fn parses_listening_lines() {
    let l = "2026-01-01T00:00:00.1Z  INFO turnd::net: listening on udp 127.0.0.1:43122";
    let want = |t: &str, a: &str| Some((t.to_string(), a.parse().expect("addr")));
    assert_eq!(parse_listening(l), want("udp", "127.0.0.1:43122"));
    let j = r#"{"fields":{"message":"listening on tcp [::1]:5"},"level":"INFO"}"#;
    assert_eq!(parse_listening(j), want("tcp", "[::1]:5"));
    let c = "\u{1b}[32m INFO\u{1b}[0m \u{1b}[2mturnd::net\u{1b}[0m: listening on admin 127.0.0.1:9";
    assert_eq!(parse_listening(c), want("admin", "127.0.0.1:9"));
    assert_eq!(parse_listening("listening on udp"), None);
    assert_eq!(parse_listening("not listening"), None);
}

#[test]
fn config_lists_listeners_and_a_random_relay_range() {
    let c = config_with(&["udp", "tcp"]);
    assert_eq!(expected_listeners(&c), vec!["udp", "tcp"]);
    let (min, max) = relay_range_of(&c).expect("relay range");
    assert!((20000..60000).contains(&min) && max == min + 199, "{min}..{max}");
    let with_admin = format!("{c}\n[admin]\naddress = \"127.0.0.1:0\"\n");
    assert_eq!(expected_listeners(&with_admin), vec!["udp", "tcp", "admin"]);
}

#[test]
fn echo_peer_echoes_and_counts() {
    let peer = UdpEchoPeer::start();
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    let mut buf = [0u8; 64];
    for i in 0..3u8 {
        s.send_to(&[i; 10], peer.addr()).expect("send");
        let (n, from) = s.recv_from(&mut buf).expect("echo");
        assert_eq!((&buf[..n], from), (&[i; 10][..], peer.addr()));
    }
    assert_eq!(peer.count(), 3);
    let (a, b) = UdpEchoPeer::start_pair();
    assert_eq!(a.addr().port() + 1, b.addr().port());
}

#[test]
fn run_with_timeout_captures_and_kills() {
    let ok =
        run_with_timeout(Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]), Duration::from_secs(10));
    assert_eq!((ok.code(), ok.stdout.as_str(), ok.stderr.as_str()), (Some(3), "out\n", "err\n"));
    let slow = run_with_timeout(Command::new("sleep").arg("30"), Duration::from_millis(300));
    assert!(slow.timed_out(), "{slow}");
    assert!(slow.elapsed < Duration::from_secs(5), "{slow}");
    assert!(tool_on_path("sh") && !tool_on_path("no-such-tool-xyz"));
}
