//! turnd driven by Python's aioice (`aioice.turn.create_turn_endpoint`)
//! through tests/py/aioice_turn.py.
//!
//! Quirks: aioice discards any response to an authenticated request that is
//! not itself authenticated (except 401/438), so an unsigned error answer
//! looks like a timeout (about 30 s of retransmissions). It sends data only
//! through channels (ChannelBind, then ChannelData).
// A test may unwrap (a panic is a failed test) and use unsafe for process plumbing
// (signals, namespaces); the server code denies both (Cargo.toml [lints]).
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/aioice_turn.py");

fn need_aioice() -> bool {
    need(python_module_available("aioice"), "Python module `aioice` (pip install aioice)")
}

fn aioice(server: SocketAddr, transport: &str, password: &str, peer: SocketAddr) -> CmdOutput {
    aioice_as(server, transport, USER, password, peer, &[])
}

fn aioice_as(
    server: SocketAddr,
    transport: &str,
    user: &str,
    password: &str,
    peer: SocketAddr,
    extra: &[&str],
) -> CmdOutput {
    run_with_timeout(
        Command::new(python())
            .arg(SCRIPT)
            .args(["--server", &server.to_string(), "--peer", &peer.to_string()])
            .args(["--user", user, "--password", password])
            .args(["--transport", transport, "--count", "5"])
            .args(extra),
        Duration::from_secs(60),
    )
}

/// The relayed address from the script's `ALLOCATED relayed=A:P mapped=...`.
fn relayed_addr(output: &str) -> Option<SocketAddr> {
    let rest = &output[output.find("ALLOCATED relayed=")? + "ALLOCATED relayed=".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

fn assert_echoed(out: &CmdOutput, turnd: &mut TurndProcess, peer: &UdpEchoPeer) {
    assert!(turnd.is_running(), "turnd exited during the aioice run:\n{out}");
    assert!(out.success(), "aioice script failed:\n{out}");
    assert!(out.stdout.contains("ECHOED 5/5"), "{out}");
    assert!(out.stdout.contains("DELETED"), "allocation not deleted:\n{out}");
    let relayed = relayed_addr(&out.stdout).unwrap_or_else(|| panic!("no relayed address:\n{out}"));
    assert_eq!(relayed.ip().to_string(), "127.0.0.1", "{out}");
    if let Some((min, max)) = turnd.relay_range() {
        assert!((min..=max).contains(&relayed.port()), "relay port outside {min}..={max}:\n{out}");
    }
    assert_eq!(peer.count(), 5, "datagrams the echo peer received");
}

#[test]
fn aioice_udp_allocation_relays_to_echo_peer() {
    if !need_aioice() {
        return;
    }
    let mut turnd = TurndProcess::with_transports(&["udp"]);
    let peer = UdpEchoPeer::start();
    let out = aioice(turnd.udp_addr(), "udp", PASSWORD, peer.addr());
    assert_echoed(&out, &mut turnd, &peer);
}

#[test]
fn aioice_tcp_allocation_relays_to_echo_peer() {
    if !need_aioice() {
        return;
    }
    let mut turnd = TurndProcess::with_transports(&["tcp"]);
    let peer = UdpEchoPeer::start();
    let out = aioice(turnd.tcp_addr(), "tcp", PASSWORD, peer.addr());
    assert_echoed(&out, &mut turnd, &peer);
}

#[test]
fn aioice_tls_allocation_verifies_certificate_and_relays() {
    if !need_aioice() || !need_tool("openssl", "openssl") {
        return;
    }
    let cert = TestCert::new();
    let mut turnd = TurndProcess::start(&cert.add_to(&config_with(&["tls"])), &[]);
    let peer = UdpEchoPeer::start();
    let ca = cert.cert.to_str().expect("utf-8 temp path");
    let out = aioice_as(turnd.tls_addr(), "tls", USER, PASSWORD, peer.addr(), &["--ca", ca]);
    assert_echoed(&out, &mut turnd, &peer);
}

#[test]
fn aioice_wrong_password_gets_401() {
    if !need_aioice() {
        return;
    }
    let mut turnd = TurndProcess::with_transports(&["udp"]);
    let peer = UdpEchoPeer::start();
    let out = aioice(turnd.udp_addr(), "udp", "wrong", peer.addr());
    assert_eq!(out.code(), Some(2), "expected the allocation to fail:\n{out}");
    assert!(out.stdout.contains("error_code=401"), "{out}");
    assert_eq!(peer.count(), 0);
    assert!(turnd.is_running(), "turnd died");
}

/// A config with a UDP listener and a relay range but no users and no
/// allowed peers: loopback peers are then denied.
fn bare_config() -> String {
    let (min, max) = relay_port_range();
    format!(
        "realm = \"{REALM}\"\n\n[[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:0\"\n\n\
         [relay]\nport-min = {min}\nport-max = {max}\n"
    )
}

#[test]
fn cli_user_and_allow_peer_flags_take_effect() {
    if !need_aioice() {
        return;
    }
    let mut turnd =
        TurndProcess::start(&bare_config(), &["--user", "bob:pw", "--allow-peer", "127.0.0.0/8", "--allow-host-peers"]);
    let peer = UdpEchoPeer::start();
    let out = aioice_as(turnd.udp_addr(), "udp", "bob", "pw", peer.addr(), &[]);
    assert_echoed(&out, &mut turnd, &peer);
}

#[test]
fn loopback_peer_is_denied_unless_allowed() {
    if !need_aioice() {
        return;
    }
    let mut turnd = TurndProcess::start(&bare_config(), &["--user", "bob:pw"]);
    let peer = UdpEchoPeer::start();
    let out = aioice_as(turnd.udp_addr(), "udp", "bob", "pw", peer.addr(), &["--timeout", "0.5"]);
    assert_eq!(out.code(), Some(1), "expected the relay to refuse the peer:\n{out}");
    assert!(out.stdout.contains("ALLOCATED") && out.stdout.contains("ECHOED 0/5"), "{out}");
    // aioice reports the signed 403 to ChannelBind through error_received.
    assert!(out.stdout.contains("403"), "{out}");
    assert_eq!(peer.count(), 0, "a denied peer received data");
    assert!(turnd.is_running(), "turnd died");
}

#[test]
fn relayed_addr_parses_script_output() {
    let s = "ALLOCATED relayed=127.0.0.1:41121 mapped=127.0.0.1:35917\nECHOED 5/5\n";
    assert_eq!(relayed_addr(s), Some("127.0.0.1:41121".parse().expect("addr")));
    assert_eq!(relayed_addr("ALLOCATE FAILED: x"), None);
}

// ---- refresh and stale-nonce recovery (tests/py/aioice_refresh.py) ----

const REFRESH_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/aioice_refresh.py");

/// aioice relays over a channel, waits past turnd's 10 s nonce lifetime, refreshes
/// (turnd answers 438 with a new nonce, aioice retries), relays again, deletes.
fn aioice_refresh_after_stale_nonce(transport: &str) {
    if !need_aioice() {
        return;
    }
    let config = format!("{}\n[auth]\nnonce-lifetime = \"10s\"\n", config_with(&["udp", "tcp"]));
    let mut turnd = TurndProcess::start(&config, &[]);
    let peer = UdpEchoPeer::start();
    let out = run_with_timeout(
        Command::new(python())
            .arg(REFRESH_SCRIPT)
            .args(["--server", &turnd.addr(transport).to_string(), "--peer", &peer.addr().to_string()])
            .args(["--user", USER, "--password", PASSWORD, "--transport", transport])
            .args(["--count", "3", "--lifetime", "300", "--stale-after", "11"]),
        Duration::from_secs(90),
    );
    assert!(turnd.is_running(), "turnd exited during the aioice run:\n{out}");
    assert!(out.success(), "aioice refresh script failed:\n{out}");
    assert!(out.stdout.contains("ECHOED BEFORE 3/3"), "{out}");
    // The refresh went through after exactly one 438, with a new nonce.
    assert!(out.stdout.contains("REFRESHED lifetime=300 errors=[438] new_nonce=True"), "{out}");
    assert!(out.stdout.contains("ECHOED AFTER 3/3"), "{out}");
    assert!(out.stdout.contains("DELETED"), "{out}");
    assert_eq!(peer.count(), 6, "datagrams the echo peer received");
}

#[test]
fn aioice_udp_refresh_recovers_from_a_stale_nonce() {
    aioice_refresh_after_stale_nonce("udp");
}

#[test]
fn aioice_tcp_refresh_recovers_from_a_stale_nonce() {
    aioice_refresh_after_stale_nonce("tcp");
}
