//! `[relay] external-ipv4 = "auto"`: turnd asks a STUN server for its external address
//! at start and advertises it in XOR-RELAYED-ADDRESS.
//!
//! On loopback: one turnd is the STUN server (127.0.0.1); the turnd under test has two
//! UDP listeners, 127.0.0.5 first (the discovery's source) and 127.0.0.1, and the
//! client allocates through 127.0.0.1. Its relay binds 127.0.0.1 (the address the
//! request came to), so a relayed address of 127.0.0.5 can only come from the STUN
//! answer; a control turnd with the same listeners and no `"auto"` says 127.0.0.1.
// A test may unwrap (a panic is a failed test) and use unsafe for signals; the server
// code denies both (Cargo.toml [lints]).
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::turn_client;

use common::*;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};
use turn_client::TurnClient;

/// The discovery's source address: distinct from 127.0.0.1, where the client comes in.
const SOURCE: &str = "127.0.0.5";

/// A config with UDP listeners on 127.0.0.5 (first) and 127.0.0.1, and `relay_extra`
/// added to `[relay]`.
fn two_listener_config(relay_extra: &str) -> String {
    let base = config_with(&[]);
    let listeners = format!(
        "[[listen]]\ntransport = \"udp\"\naddress = \"{SOURCE}:0\"\n\n\
         [[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:0\"\n\n"
    );
    let base = base.replacen("[relay]\n", &format!("{listeners}[relay]\n{relay_extra}"), 1);
    // config_with puts `realm` first: the listeners go after it, before [relay].
    assert!(base.contains(&format!("address = \"{SOURCE}:0\"")), "{base}");
    base
}

fn loopback_listener(turnd: &TurndProcess) -> SocketAddr {
    turnd
        .listeners()
        .iter()
        .find(|(t, a)| t == "udp" && a.ip() == IpAddr::from([127, 0, 0, 1]))
        .map(|(_, a)| *a)
        .unwrap_or_else(|| panic!("no udp listener on 127.0.0.1: {:?}", turnd.listeners()))
}

fn relayed_via_loopback(turnd: &TurndProcess) -> SocketAddr {
    let mut client = TurnClient::on_loopback(loopback_listener(turnd), USER, PASSWORD, REALM);
    client.allocate_relay()
}

fn wait_for_log(turnd: &TurndProcess, what: &str, count: usize) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if turnd.logs().matches(what).count() >= count {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn auto_external_address_comes_from_the_stun_server_and_survives_a_reload() {
    let mut stun = TurndProcess::with_transports(&["udp"]);
    let stun_addr = stun.udp_addr();

    // Control: the same listeners without "auto" advertise what the relay binds.
    let control = TurndProcess::start(&two_listener_config(""), &[]);
    let plain = relayed_via_loopback(&control);
    assert_eq!(plain.ip(), IpAddr::from([127, 0, 0, 1]), "control relay address");
    drop(control);

    let auto = format!("external-ipv4 = \"auto\"\nexternal-address-stun = \"{stun_addr}\"\n");
    let turnd = TurndProcess::start(&two_listener_config(&auto), &[]);
    let discovered = turnd.logs().lines().find(|l| l.contains("external address discovered")).map(str::to_owned);
    let discovered = discovered
        .unwrap_or_else(|| panic!("no `external address discovered` log line; log tail:\n{}", turnd.logs_tail(40)));
    assert!(discovered.contains(SOURCE), "discovered another address than {SOURCE}: {discovered}");
    let relayed = relayed_via_loopback(&turnd);
    assert_eq!(
        relayed.ip(),
        SOURCE.parse::<IpAddr>().unwrap(),
        "XOR-RELAYED-ADDRESS is not the discovered address; log tail:\n{}",
        turnd.logs_tail(40)
    );

    // A reload keeps the address found at start, without asking again: the STUN
    // server is gone by now.
    stun.terminate(Duration::from_secs(10));
    // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
    unsafe { libc::kill(turnd.pid() as libc::pid_t, libc::SIGHUP) };
    assert!(
        wait_for_log(&turnd, "configuration reloaded", 1),
        "the reload was not applied; log tail:\n{}",
        turnd.logs_tail(40)
    );
    let after = relayed_via_loopback(&turnd);
    assert_eq!(after.ip(), relayed.ip(), "the reload lost the discovered address; log tail:\n{}", turnd.logs_tail(40));
}

/// `turnd serve` with `config`; returns its output once it exits (or is killed).
fn serve_until_exit(config: &str) -> CmdOutput {
    let dir = TempDir::new("turnd-external");
    let file = dir.write("turnd.toml", &with_ephemeral_admin(config));
    run_with_timeout(
        Command::new(turnd_binary()).arg("serve").arg("-c").arg(&file).env("NO_COLOR", "1"),
        Duration::from_secs(60),
    )
}

#[test]
fn an_unanswering_stun_server_stops_the_start_with_a_clear_error() {
    // A socket that never answers: every retransmission goes unanswered.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let server = silent.local_addr().unwrap();
    let auto = format!("external-ipv4 = \"auto\"\nexternal-address-stun = \"{server}\"\n");
    let out = serve_until_exit(&two_listener_config(&auto));
    assert!(!out.timed_out(), "turnd kept running without an external address:\n{out}");
    assert!(!out.success(), "turnd exited 0 without an external address:\n{out}");
    let wanted = format!("relay.external-address-stun = {server} gave no address: no answer from {server} within 5s");
    assert!(out.stderr.contains(&wanted), "the error does not say {wanted:?}:\n{out}");
    assert!(!out.stderr.contains("listening on"), "turnd bound its listeners before discovery:\n{out}");
    // The Binding was sent, and sent again (RFC 8489 retransmission), from the source.
    silent.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut requests = Vec::new();
    let mut buf = [0u8; 1500];
    while let Ok((n, from)) = silent.recv_from(&mut buf) {
        requests.push((n, from));
    }
    assert!(requests.len() >= 3, "{} Binding requests reached the server: {requests:?}", requests.len());
    assert!(requests.iter().all(|(_, from)| from.ip().to_string() == SOURCE), "sources: {requests:?}");
    println!(
        "no answer: turnd exited {} after {:.1?} with {} requests sent",
        out.status.unwrap(),
        out.elapsed,
        requests.len()
    );
}

#[test]
fn auto_without_a_stun_server_is_a_config_error_naming_the_key() {
    let dir = TempDir::new("turnd-external");
    let file = dir.write("turnd.toml", "[relay]\nport-min = 50000\nexternal-ipv4 = \"auto\"\n");
    let out = run_with_timeout(Command::new(turnd_binary()).arg("check-config").arg(&file), Duration::from_secs(20));
    assert!(!out.success(), "{out}");
    let wanted = format!("{}:3: `relay.external-ipv4`: \"auto\" needs relay.external-address-stun", file.display());
    assert!(out.stderr.contains(&wanted), "the error does not say {wanted:?}:\n{out}");
}
