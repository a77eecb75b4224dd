//! `turnd probe URL` against the real turnd binary and against coturn's `turnserver`
//! (Debian package `coturn`), on loopback with ephemeral ports.
// A test may unwrap (a panic is a failed test) and use unsafe for process plumbing
// (signals, namespaces); the server code denies both (Cargo.toml [lints]).
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

use common::ca;
mod common;
use common::turn_client;

use ca::TestCa;
use common::*;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use turn_client::TurnClient;

const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

/// `turnd probe ARGS...` with a time limit.
fn probe(args: &[&str]) -> CmdOutput {
    run_with_timeout(Command::new(turnd_binary()).arg("probe").args(args), PROBE_TIMEOUT)
}

fn turn_url(addr: SocketAddr, query: &str) -> String {
    format!("turn:{addr}{query}")
}

/// Asserts a full pass: every step through the relay and the allocation deleted.
fn assert_passed(out: &CmdOutput) {
    assert!(out.success(), "probe failed:\n{out}");
    for step in ["binding", "challenge", "allocate", "permission", "indication", "channel-data", "refresh"] {
        assert!(
            out.stdout.lines().any(|l| l.trim_start().starts_with("ok") && l.contains(step)),
            "no successful `{step}` step:\n{out}"
        );
    }
    assert!(out.stdout.contains("PASS") && out.stdout.contains("data relayed both ways"), "{out}");
}

/// Asserts a failure at `step` with `code`, and the code's explanation.
fn assert_failed(out: &CmdOutput, step: &str, code: u16, meaning: &str) {
    assert_eq!(out.code(), Some(1), "expected exit status 1:\n{out}");
    let fail = out.stdout.lines().find(|l| l.starts_with("FAIL")).unwrap_or_else(|| panic!("no verdict:\n{out}"));
    assert!(fail.contains(&format!("{step} failed: {code}")), "{out}");
    assert!(fail.contains(meaning), "the verdict does not explain {code}:\n{out}");
    assert!(out.stderr.contains(&format!("{step} failed: {code}")), "{out}");
}

// ---- against turnd ----

#[test]
fn probe_turnd_over_udp_relays_both_ways() {
    let turnd = TurndProcess::with_transports(&["udp"]);
    let out = probe(&[&turn_url(turnd.udp_addr(), ""), "--user", USER, "--password", PASSWORD]);
    assert_passed(&out);
    // The peer is a second local socket, so the relay went out and came back in.
    assert!(out.stdout.contains("a local UDP socket"), "{out}");
    assert!(out.stdout.contains("server software \"turnd/"), "{out}");
}

#[test]
fn probe_turnd_over_tcp_relays_both_ways() {
    let turnd = TurndProcess::with_transports(&["udp", "tcp"]);
    let out = probe(&[&turn_url(turnd.tcp_addr(), "?transport=tcp"), "--user", USER, "--password", PASSWORD]);
    assert_passed(&out);
    assert!(out.stdout.contains("tcp connected from"), "{out}");
}

#[test]
fn probe_turnd_over_tcp_only_relays_to_the_allocation_itself() {
    // No UDP listener: the probe's peer socket gets no Binding answer, so it relays
    // to its own relayed address.
    let turnd = TurndProcess::with_transports(&["tcp"]);
    let out = probe(&[&turn_url(turnd.tcp_addr(), "?transport=tcp"), "--user", USER, "--password", PASSWORD]);
    assert_passed(&out);
    assert!(out.stdout.contains("the allocation itself"), "{out}");
}

#[test]
fn probe_turnd_over_tls_verifies_the_certificate() {
    if !need_tool("openssl", "openssl") {
        return;
    }
    let pki = TestCa::new(&["127.0.0.1", "localhost"]);
    let turnd = TurndProcess::start(&pki.add_to(&config_with(&["udp", "tls"])), &[]);
    let port = turnd.tls_addr().port();
    let ca = pki.ca.to_str().expect("utf-8 temp path");
    let url = format!("turns:localhost:{port}");
    let out = probe(&[&url, "--user", USER, "--password", PASSWORD, "--ca", ca]);
    assert_passed(&out);
    assert!(out.stdout.contains("tls TLSv1_3"), "{out}");

    // The system's CAs do not know the test CA: the handshake must fail, and say so.
    let out = probe(&[&url, "--user", USER, "--password", PASSWORD]);
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(out.stdout.contains("connect failed: TLS handshake failed"), "{out}");
    // A name the certificate does not carry.
    let out = probe(&[&url, "--user", USER, "--password", PASSWORD, "--ca", ca, "--server-name", "example.org"]);
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(out.stdout.contains("TLS handshake failed"), "{out}");
    // --insecure skips verification.
    let out = probe(&[&url, "--user", USER, "--password", PASSWORD, "--insecure"]);
    assert_passed(&out);
}

fn rest_config(secret: &str) -> String {
    format!("{}\n[auth]\nsecrets = [\"{secret}\"]\n", config_with(&["udp"]))
}

#[test]
fn probe_turnd_with_rest_credentials_from_a_secret() {
    let turnd = TurndProcess::start(&rest_config("probe-secret"), &[]);
    let url = turn_url(turnd.udp_addr(), "");
    assert_passed(&probe(&[&url, "--secret", "probe-secret", "--user", "deploy-check"]));
    let meaning = "Unauthorized: wrong username or password";
    assert_failed(&probe(&[&url, "--secret", "not-the-secret"]), "allocate", 401, meaning);
    // --ttl 0s: the username expires the second it is made.
    assert_failed(&probe(&[&url, "--secret", "probe-secret", "--ttl", "0s"]), "allocate", 401, meaning);
}

#[test]
fn probe_turnd_wrong_password_is_401_with_its_meaning() {
    let turnd = TurndProcess::with_transports(&["udp"]);
    let out = probe(&[&turn_url(turnd.udp_addr(), ""), "--user", USER, "--password", "wrong"]);
    assert_failed(&out, "allocate", 401, "wrong username or password");
}

#[test]
fn probe_turnd_peer_policy_denial_is_403() {
    // No allowed-peers: the loopback peer socket is denied.
    let (min, max) = relay_port_range();
    let config = format!(
        "realm = \"{REALM}\"\n[[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:0\"\n\
         [relay]\nport-min = {min}\nport-max = {max}\n[[auth.user]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\n"
    );
    let turnd = TurndProcess::start(&config, &[]);
    let out = probe(&[&turn_url(turnd.udp_addr(), ""), "--user", USER, "--password", PASSWORD]);
    assert_failed(&out, "permission", 403, "peer policy");
}

/// turnd with allocation limits; one allocation held by turnd's test client.
fn limited(limits: &str) -> (TurndProcess, TurnClient) {
    let config = format!("{}\n[limits]\n{limits}\n", config_with(&["udp"]));
    let turnd = TurndProcess::start(&config, &[]);
    let mut holder = TurnClient::new("127.0.0.1:0", turnd.udp_addr(), USER, PASSWORD, REALM);
    holder.allocate(Vec::new()).expect("the first allocation");
    (turnd, holder)
}

#[test]
fn probe_turnd_quota_is_486_and_capacity_508() {
    let (turnd, _holder) = limited("allocations-per-user = 1");
    let out = probe(&[&turn_url(turnd.udp_addr(), ""), "--user", USER, "--password", PASSWORD]);
    assert_failed(&out, "allocate", 486, "Allocation Quota Reached");
    let (turnd, _holder) = limited("total-allocations = 1");
    let out = probe(&[&turn_url(turnd.udp_addr(), ""), "--user", USER, "--password", PASSWORD]);
    assert_failed(&out, "allocate", 508, "Insufficient Capacity");
}

#[test]
fn probe_stun_url_and_turn_without_credentials() {
    let turnd = TurndProcess::with_transports(&["udp"]);
    let addr = turnd.udp_addr();
    let out = probe(&[&format!("stun:{addr}")]);
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("mapped address 127.0.0.1:"), "{out}");
    assert!(out.stdout.contains("PASS") && !out.stdout.contains("allocate"), "{out}");
    // turn: without credentials: the server must still challenge.
    let out = probe(&[&turn_url(addr, "")]);
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("401 with realm \"turnd.test\""), "{out}");
    assert!(out.stdout.contains("WARN") && out.stdout.contains("no credentials"), "{out}");
}

#[test]
fn probe_reports_a_silent_server_as_a_timeout() {
    // A bound UDP socket that never answers.
    let silent = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr");
    let start = Instant::now();
    let out = probe(&[&format!("stun:{addr}"), "--timeout", "1s"]);
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(out.stdout.contains("binding failed: no answer from"), "{out}");
    assert!(out.stdout.contains("firewall"), "no hint:\n{out}");
    assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
}

#[test]
fn probe_rejects_bad_urls_and_half_credentials() {
    for (args, want) in [
        (vec!["http://example.org"], "unknown scheme"),
        (vec!["turn://127.0.0.1"], "no '//'"),
        (vec!["turns:127.0.0.1?transport=udp"], "DTLS"),
        (vec!["turn:127.0.0.1", "--user", "alice"], "--user needs --password"),
    ] {
        let out = probe(&args);
        assert_eq!(out.code(), Some(1), "{args:?}:\n{out}");
        assert!(out.stderr.contains(want), "{args:?}:\n{out}");
    }
}

// ---- against coturn ----

/// coturn's `turnserver` on loopback ephemeral ports, killed on drop.
struct Coturn {
    child: Child,
    _dir: TempDir,
    port: u16,
    tls_port: u16,
}

/// A port free for both UDP and TCP on 127.0.0.1 right now.
fn free_port() -> u16 {
    for _ in 0..100 {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind TCP");
        let port = tcp.local_addr().expect("addr").port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for UDP and TCP in 100 tries");
}

impl Coturn {
    /// Starts turnserver with `auth` flags, loopback peers allowed, a TLS listener
    /// with `pki`'s certificate; waits until its TCP listener accepts.
    fn start(auth: &[&str], pki: &TestCa) -> Coturn {
        let dir = TempDir::new("coturn");
        let (port, tls_port) = (free_port(), free_port());
        let (min, max) = relay_port_range();
        let mut child = Command::new("turnserver")
            .args(["-n", "--no-cli", "--no-dtls", "--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1"])
            .args(["--listening-port", &port.to_string(), "--tls-listening-port", &tls_port.to_string()])
            .args(["--alt-listening-port", "0", "--alt-tls-listening-port", "0"])
            .args(["--min-port", &min.to_string(), "--max-port", &max.to_string()])
            .args(["--realm", "coturn.test", "--allow-loopback-peers", "--simple-log", "--log-file", "stdout"])
            .arg("--cert")
            .arg(&pki.cert)
            .arg("--pkey")
            .arg(&pki.key)
            .arg("--db")
            .arg(dir.path().join("turndb"))
            .arg("--pidfile")
            .arg(dir.path().join("turnserver.pid"))
            .args(auth)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn turnserver");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline || matches!(child.try_wait(), Ok(Some(_))) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("turnserver did not listen on 127.0.0.1:{port} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Coturn { child, _dir: dir, port, tls_port }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn need_coturn() -> bool {
    need_tool("turnserver", "coturn") && need_tool("openssl", "openssl")
}

#[test]
fn probe_coturn_over_udp_tcp_and_tls() {
    if !need_coturn() {
        return;
    }
    let pki = TestCa::new(&["127.0.0.1", "localhost"]);
    let coturn = Coturn::start(&["--lt-cred-mech", "--user", "alice:secret"], &pki);
    let creds = ["--user", "alice", "--password", "secret"];
    let out = probe(&[&[turn_url(coturn.addr(), "").as_str()][..], &creds].concat());
    assert_passed(&out);
    assert!(out.stdout.contains("Coturn"), "not coturn answering:\n{out}");
    let out = probe(&[&[turn_url(coturn.addr(), "?transport=tcp").as_str()][..], &creds].concat());
    assert_passed(&out);
    let url = format!("turns:localhost:{}", coturn.tls_port);
    let ca = pki.ca.to_str().expect("utf-8 temp path");
    let out = probe(&[&[url.as_str(), "--ca", ca][..], &creds].concat());
    assert_passed(&out);
    let out = probe(&[turn_url(coturn.addr(), "").as_str(), "--user", "alice", "--password", "wrong"]);
    assert_failed(&out, "allocate", 401, "wrong username or password");
}

#[test]
fn probe_coturn_with_rest_credentials() {
    if !need_coturn() {
        return;
    }
    let pki = TestCa::new(&["127.0.0.1"]);
    let coturn = Coturn::start(&["--use-auth-secret", "--static-auth-secret", "coturn-secret"], &pki);
    let url = turn_url(coturn.addr(), "");
    assert_passed(&probe(&[&url, "--secret", "coturn-secret"]));
    let out = probe(&[&url, "--secret", "another-secret"]);
    assert_failed(&out, "allocate", 401, "Unauthorized");
}

#[test]
fn probe_flags_coturn_without_auth_as_an_open_relay() {
    if !need_coturn() {
        return;
    }
    let pki = TestCa::new(&["127.0.0.1"]);
    let coturn = Coturn::start(&[], &pki);
    let out = probe(&[&turn_url(coturn.addr(), ""), "--user", "x", "--password", "y"]);
    assert!(out.success(), "{out}");
    assert!(out.stdout.contains("WITHOUT credentials: an open relay"), "{out}");
}
