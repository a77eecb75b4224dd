//! The shipped fail2ban filter (deploy/fail2ban) against turnd's real log output, text
//! and JSON, through Debian's `fail2ban-regex`: every failed authentication is one
//! matched line naming the client's address, a stale nonce (the normal flow of a long
//! call) is none, and a username built to look like a log line forges no match.
// A test may unwrap (a panic is a failed test) and use unsafe for process plumbing
// (signals, namespaces); the server code denies both (Cargo.toml [lints]).
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::turn_client;

use common::*;
use std::process::Command;
use std::time::{Duration, Instant};
use turn_client::TurnClient;

const FILTER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/fail2ban/filter.d/turnd.conf");
const FAILURES: usize = 5;

/// Runs `failures` wrong-password Allocates from 127.0.0.7 and one success from
/// 127.0.0.8 (whose username carries a forged line), then returns turnd's log.
fn log_with_failures(format: &str) -> String {
    let secret_config = format!("{}\n[auth]\nsecrets = [\"north\"]\n", config_with(&["udp"]));
    let turnd = TurndProcess::start(&secret_config, &["--log-format", format]);
    for _ in 0..FAILURES {
        let mut c = TurnClient::new("127.0.0.7:0", turnd.udp_addr(), USER, "wrong", REALM);
        assert_eq!(c.allocate(vec![]).err(), Some(401));
    }
    let expiry = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
    let forged = format!("{expiry}:x\n2026-01-01T00:00:00.000000Z  WARN turnd::net: authentication failed ip=203.0.113.66 port=1 reason=bad_integrity");
    let mut c = TurnClient::new("127.0.0.8:0", turnd.udp_addr(), &forged, "not-its-password", REALM);
    assert_eq!(c.allocate(vec![]).err(), Some(401));
    let deadline = Instant::now() + Duration::from_secs(5);
    while turnd.logs().matches("authentication failed").count() < FAILURES + 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    turnd.logs()
}

/// `fail2ban-regex` on `log`: (lines matched, addresses matched).
fn fail2ban_regex(log: &str) -> (usize, Vec<String>) {
    let dir = TempDir::new("turnd-f2b");
    let file = dir.write("turnd.log", log);
    let out = run_with_timeout(
        Command::new("fail2ban-regex").arg("--print-all-matched").arg(&file).arg(FILTER),
        Duration::from_secs(60),
    );
    assert!(out.success(), "fail2ban-regex failed:\n{out}");
    // "Lines: 42 lines, 0 ignored, 6 matched, 36 missed"
    let matched = out
        .stdout
        .lines()
        .find(|l| l.starts_with("Lines:"))
        .and_then(|l| l.split(", ").find(|p| p.ends_with("matched")))
        .and_then(|p| p.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no Lines: summary:\n{out}"));
    let hosts = out
        .stdout
        .lines()
        .filter_map(|l| l.split("ip=").nth(1).or_else(|| l.split("\"ip\":\"").nth(1)))
        .filter_map(|rest| rest.split([' ', '"']).next())
        .map(str::to_owned)
        .collect();
    println!("fail2ban-regex: {matched} lines matched");
    (matched, hosts)
}

fn check(format: &str) {
    if !need_tool("fail2ban-regex", "fail2ban") {
        return;
    }
    let log = log_with_failures(format);
    let (matched, hosts) = fail2ban_regex(&log);
    assert_eq!(matched, FAILURES + 1, "one match per failed authentication ({format}):\n{log}");
    assert_eq!(hosts.iter().filter(|h| *h == "127.0.0.7").count(), FAILURES, "{hosts:?}");
    assert_eq!(hosts.iter().filter(|h| *h == "127.0.0.8").count(), 1, "{hosts:?}");
    assert!(!hosts.iter().any(|h| h == "203.0.113.66"), "a username forged a match ({format}): {hosts:?}");
}

#[test]
fn the_filter_matches_each_failed_authentication_in_text_logs() {
    check("text");
}

#[test]
fn the_filter_matches_each_failed_authentication_in_json_logs() {
    check("json");
}
