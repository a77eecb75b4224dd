//! turnd driven by coturn's client tools (Debian package `coturn`):
//! `turnutils_stunclient` and `turnutils_uclient`.
//!
//! Quirks (learned against coturn 4.6.1's own turnserver):
//! - stunclient exits 0 even when it fails ("Cannot read the response", e.g.
//!   when the answer has MAPPED-ADDRESS but no XOR-MAPPED-ADDRESS), and waits
//!   forever when nothing answers: the output is what tells.
//! - uclient exits 0 even when every packet is lost; the closing lines
//!   `tot_send_msgs=N, tot_recv_msgs=M` and `Total lost packets L` tell.
//! - uclient first makes a "probe" allocation it refreshes and then abandons
//!   without deleting it; then the real one(s). With `-c` it still binds
//!   channels to both the peer port and peer port + 1, and binds each twice.
//! - `-S` (TLS) with `-E CA`: a failed verification is followed by a
//!   reconnect that succeeds anyway, so uclient cannot test verification.
//! - without `-c` it allocates an RTP/RTCP pair: EVEN-PORT with the R bit,
//!   then a second allocation with RESERVATION-TOKEN, and sends to the peer
//!   port and peer port + 1.
// A test may unwrap (a panic is a failed test) and use unsafe for process plumbing
// (signals, namespaces); the server code denies both (Cargo.toml [lints]).
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// The reflexive address stunclient prints: `IPv4. UDP reflexive addr: A:P`.
fn reflexive_addr(output: &str) -> Option<SocketAddr> {
    let line = output.lines().find(|l| l.contains("reflexive addr:"))?;
    line.rsplit(' ').next()?.trim().parse().ok()
}

/// uclient's closing statistics.
#[derive(Debug, PartialEq)]
struct UclientStats {
    sent: u64,
    received: u64,
    lost: u64,
}

/// The number after `key` in `line` (e.g. `tot_send_msgs=` -> 10).
fn number_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// Parses the final `start_mclient: tot_send_msgs=N, tot_recv_msgs=M` line
/// (the progress lines carry `msz=` and are skipped) and `Total lost packets L`.
fn uclient_stats(output: &str) -> Option<UclientStats> {
    let totals = output.lines().rfind(|l| l.contains("tot_send_msgs=") && !l.contains("msz="))?;
    let lost_line = output.lines().rfind(|l| l.contains("Total lost packets "))?;
    Some(UclientStats {
        sent: number_after(totals, "tot_send_msgs=")?,
        received: number_after(totals, "tot_recv_msgs=")?,
        lost: number_after(lost_line, "Total lost packets ")?,
    })
}

/// `turnutils_uclient FLAGS -p PORT -u alice -w secret -n N -l 100 [-e -r] 127.0.0.1`
fn uclient(server: SocketAddr, flags: &[&str], n: u32, peer: Option<SocketAddr>) -> CmdOutput {
    let mut cmd = Command::new("turnutils_uclient");
    cmd.args(flags).args(["-p", &server.port().to_string()]).args(["-u", USER, "-w", PASSWORD]).args([
        "-n",
        &n.to_string(),
        "-l",
        "100",
    ]);
    if let Some(peer) = peer {
        cmd.args(["-e", &peer.ip().to_string(), "-r", &peer.port().to_string()]);
    }
    cmd.arg(server.ip().to_string());
    run_with_timeout(&mut cmd, CLIENT_TIMEOUT)
}

/// Asserts uclient ran, sent `want_sent` messages and got (nearly) all back.
fn assert_relayed(out: &CmdOutput, want_sent: u64, turnd: &mut TurndProcess) -> UclientStats {
    assert!(turnd.is_running(), "turnd exited during the uclient run:\n{out}");
    assert!(out.success(), "uclient failed:\n{out}");
    let stats = uclient_stats(&out.all()).unwrap_or_else(|| panic!("no closing statistics in uclient output:\n{out}"));
    assert_eq!(stats.sent, want_sent, "messages sent:\n{out}");
    // Loopback loses nothing in practice; allow one in ten for a busy machine.
    let tolerated = want_sent / 10;
    assert!(
        stats.received + tolerated >= want_sent && stats.lost <= tolerated,
        "relayed data did not come back: {stats:?}\n{out}"
    );
    stats
}

#[test]
fn stunclient_binding_reports_loopback_mapped_address() {
    if !need_tool("turnutils_stunclient", "coturn") {
        return;
    }
    let turnd = TurndProcess::with_transports(&["udp"]);
    let server = turnd.udp_addr();
    let out = run_with_timeout(
        Command::new("turnutils_stunclient").args(["-p", &server.port().to_string()]).arg(server.ip().to_string()),
        Duration::from_secs(15),
    );
    assert!(out.success(), "stunclient got no answer:\n{out}");
    let mapped =
        reflexive_addr(&out.all()).unwrap_or_else(|| panic!("stunclient printed no reflexive address:\n{out}"));
    assert_eq!(mapped.ip().to_string(), "127.0.0.1", "{out}");
    assert_ne!(mapped.port(), 0, "{out}");
    assert_ne!(mapped.port(), server.port(), "mapped port is the server's:\n{out}");
}

#[test]
fn uclient_udp_channels_relay_to_echo_peer() {
    if !need_tool("turnutils_uclient", "coturn") {
        return;
    }
    let mut turnd = TurndProcess::with_transports(&["udp"]);
    let peer = UdpEchoPeer::start();
    let out = uclient(turnd.udp_addr(), &["-c"], 10, Some(peer.addr()));
    let stats = assert_relayed(&out, 10, &mut turnd);
    assert!(peer.count() as u64 >= stats.received, "peer saw {}", peer.count());
}

#[test]
fn uclient_udp_send_indications_relay_to_echo_peer() {
    if !need_tool("turnutils_uclient", "coturn") {
        return;
    }
    let mut turnd = TurndProcess::with_transports(&["udp"]);
    let peer = UdpEchoPeer::start();
    let out = uclient(turnd.udp_addr(), &["-c", "-s"], 10, Some(peer.addr()));
    let stats = assert_relayed(&out, 10, &mut turnd);
    assert!(peer.count() as u64 >= stats.received, "peer saw {}", peer.count());
}

#[test]
fn uclient_tcp_channels_relay_to_echo_peer() {
    if !need_tool("turnutils_uclient", "coturn") {
        return;
    }
    let mut turnd = TurndProcess::with_transports(&["tcp"]);
    let peer = UdpEchoPeer::start();
    let out = uclient(turnd.tcp_addr(), &["-t", "-c"], 10, Some(peer.addr()));
    let stats = assert_relayed(&out, 10, &mut turnd);
    assert!(peer.count() as u64 >= stats.received, "peer saw {}", peer.count());
}

#[test]
fn uclient_tls_channels_relay_to_echo_peer() {
    if !need_tool("turnutils_uclient", "coturn") || !need_tool("openssl", "openssl") {
        return;
    }
    let cert = TestCert::new();
    let mut turnd = TurndProcess::start(&cert.add_to(&config_with(&["tls"])), &[]);
    let peer = UdpEchoPeer::start();
    // -S: TLS without verifying the server (uclient's -E CA check is not
    // reliable: after a failed handshake it reconnects without it).
    let out = uclient(turnd.tls_addr(), &["-t", "-S", "-c"], 10, Some(peer.addr()));
    let stats = assert_relayed(&out, 10, &mut turnd);
    assert!(out.all().contains("tls_connect: client session connected"), "no TLS session:\n{out}");
    assert!(peer.count() as u64 >= stats.received, "peer saw {}", peer.count());
}

#[test]
fn uclient_client_to_client_through_two_relays() {
    if !need_tool("turnutils_uclient", "coturn") {
        return;
    }
    let mut turnd = TurndProcess::with_transports(&["udp"]);
    // -y: two allocations send to each other's relayed address (both loopback).
    let out = uclient(turnd.udp_addr(), &["-y", "-c"], 10, None);
    assert_relayed(&out, 20, &mut turnd);
}

#[test]
fn uclient_rtp_rtcp_pair_with_even_port_and_reservation_token() {
    if !need_tool("turnutils_uclient", "coturn") {
        return;
    }
    let mut turnd = TurndProcess::with_transports(&["udp"]);
    let (rtp, rtcp) = UdpEchoPeer::start_pair();
    let out = uclient(turnd.udp_addr(), &[], 10, Some(rtp.addr()));
    assert_relayed(&out, 20, &mut turnd);
    assert!(rtp.count() >= 9 && rtcp.count() >= 9, "peers saw {} and {}", rtp.count(), rtcp.count());
}

#[test]
fn uclient_wrong_password_cannot_allocate() {
    if !need_tool("turnutils_uclient", "coturn") {
        return;
    }
    let mut turnd = TurndProcess::with_transports(&["udp"]);
    let peer = UdpEchoPeer::start();
    let server = turnd.udp_addr();
    let out = run_with_timeout(
        Command::new("turnutils_uclient")
            .args(["-c", "-p", &server.port().to_string(), "-u", USER, "-w", "wrong"])
            .args(["-n", "3", "-e", "127.0.0.1", "-r", &peer.addr().port().to_string()])
            .arg(server.ip().to_string()),
        CLIENT_TIMEOUT,
    );
    assert!(!out.timed_out(), "uclient hung:\n{out}");
    assert!(!out.success(), "uclient succeeded with a wrong password:\n{out}");
    assert!(out.all().contains("Cannot complete Allocation"), "{out}");
    assert_eq!(peer.count(), 0, "data reached the peer");
    assert!(turnd.is_running(), "turnd died");
}

#[test]
fn output_parsers_read_real_coturn_output() {
    let stun = "0: : IPv4. UDP reflexive addr: 127.0.0.1:36637\n";
    assert_eq!(reflexive_addr(stun), Some("127.0.0.1:36637".parse().expect("addr")));
    assert_eq!(reflexive_addr("Cannot read the response\n"), None);
    let uc = "\
4: : start_mclient: msz=2, tot_send_msgs=6, tot_recv_msgs=6, tot_send_bytes ~ 600, tot_recv_bytes ~ 600
5: : start_mclient: tot_send_msgs=20, tot_recv_msgs=19
5: : start_mclient: tot_send_bytes ~ 2000, tot_recv_bytes ~ 1900
5: : Total transmit time is 5
5: : Total lost packets 1 (5.000000%), total send dropped 0 (0.000000%)
";
    let want = UclientStats { sent: 20, received: 19, lost: 1 };
    assert_eq!(uclient_stats(uc), Some(want));
    assert_eq!(uclient_stats("0: : ERROR: Cannot complete Allocation\n"), None);
}

// ---- TURN REST API credentials (`-W secret`) ----

/// `[auth] secrets` with the UDP listener of `config_with`.
fn rest_secret_config(secret: &str) -> String {
    format!("{}\n[auth]\nsecrets = [\"{secret}\"]\n", config_with(&["udp"]))
}

/// `turnutils_uclient -c -W SECRET -u restuser ...`: uclient mints `<expiry>:restuser`
/// and its HMAC password itself.
fn uclient_rest(server: SocketAddr, secret: &str, n: u32, peer: SocketAddr) -> CmdOutput {
    run_with_timeout(
        Command::new("turnutils_uclient")
            .args(["-c", "-p", &server.port().to_string(), "-u", "restuser", "-W", secret])
            .args(["-n", &n.to_string(), "-l", "100", "-e", &peer.ip().to_string(), "-r", &peer.port().to_string()])
            .arg(server.ip().to_string()),
        CLIENT_TIMEOUT,
    )
}

#[test]
fn uclient_rest_secret_relays_to_echo_peer() {
    if !need_tool("turnutils_uclient", "coturn") {
        return;
    }
    let mut turnd = TurndProcess::start(&rest_secret_config("uclient-secret"), &[]);
    let peer = UdpEchoPeer::start();
    let out = uclient_rest(turnd.udp_addr(), "uclient-secret", 10, peer.addr());
    let stats = assert_relayed(&out, 10, &mut turnd);
    assert!(peer.count() as u64 >= stats.received, "peer saw {}", peer.count());
    // turnd saw the REST username (`<expiry>:restuser`).
    assert!(turnd.logs().contains(":restuser"), "no REST username in turnd's logs");
}

#[test]
fn uclient_wrong_rest_secret_cannot_allocate() {
    if !need_tool("turnutils_uclient", "coturn") {
        return;
    }
    let mut turnd = TurndProcess::start(&rest_secret_config("uclient-secret"), &[]);
    let peer = UdpEchoPeer::start();
    let out = uclient_rest(turnd.udp_addr(), "not-the-secret", 3, peer.addr());
    assert!(!out.timed_out(), "uclient hung:\n{out}");
    assert!(out.all().contains("Cannot complete Allocation"), "{out}");
    assert_eq!(peer.count(), 0, "data reached the peer");
    assert!(turnd.is_running(), "turnd died");
}

// RFC 6062 TCP relaying (`turnutils_uclient -T`) is not tested: turnd does not
// implement CONNECT/CONNECTION-BIND yet.
