//! RFC 8016 mobility against the real binary, with turnd's default worker count: the
//! project's client allocates with a MOBILITY-TICKET, binds a channel to an echo peer,
//! then moves to new UDP sockets (new 5-tuples) one after another, presenting the
//! ticket in a Refresh each time: relaying goes on through the same relay address
//! both ways, and the old socket gets nothing more. Enough moves are made that one
//! lands on another worker than the allocation's (checked in the metrics). Also:
//! another user's ticket, a forged one, mobility off (405), and coturn's
//! `turnutils_uclient -M`.
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

mod common;
#[allow(dead_code)]
use common::http;

use common::*;
use std::net::UdpSocket;
use std::time::{Duration, Instant};
use turnd::client::blocking::{Connection, Link, Received};
use turnd::client::{channel_data, Client, Credentials, Request};

const TIMEOUT: Duration = Duration::from_secs(3);
const CHANNEL: u16 = 0x4000;
/// Moves made at least; more (up to `MAX_MOVES`) until one crossed workers.
const MOVES: usize = 8;
const MAX_MOVES: usize = 32;

fn config(mobility: Option<bool>) -> String {
    let mut config = config_with(&["udp"]);
    if let Some(on) = mobility {
        config = config.replace("[relay]\n", &format!("[relay]\nmobility = {on}\n"));
    }
    config
        + "\n[[auth.user]]\nname = \"bob\"\npassword = \"hunter2\"\n"
        + &format!("\n[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n")
}

const TOKEN: &str = "mobility-test-token-0123";

fn connect(turnd: &TurndProcess) -> Connection {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    Connection::new(Link::Udp(socket), turnd.udp_addr())
}

fn client(user: &str, password: &str) -> Client {
    let seed = random_u64().to_be_bytes();
    let mut tid = [0u8; 12];
    tid[..8].copy_from_slice(&seed);
    Client::new(Credentials::long_term(user, password), tid)
}

/// Sends `payload` on the channel and waits for the echo to come back on it.
fn echo(conn: &mut Connection, payload: &[u8]) -> Result<(), String> {
    conn.send(&channel_data(CHANNEL, payload, true).unwrap()).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match conn.recv_data(deadline) {
            Ok(Received::ChannelData { channel, data }) if channel == CHANNEL && data == payload => return Ok(()),
            Ok(_) => continue,
            Err(e) => return Err(format!("no echo of {:?}: {e}", String::from_utf8_lossy(payload))),
        }
    }
}

/// Whether anything at all arrives on `conn` within `wait`.
fn hears_anything(conn: &mut Connection, wait: Duration) -> bool {
    conn.recv_data(Instant::now() + wait).is_ok()
}

fn moves(turnd: &TurndProcess, result: &str) -> f64 {
    let text = http::scrape(turnd.admin_addr());
    http::metric(&text, &format!("turnd_mobility_moves_total{{result=\"{result}\"}}")).unwrap_or(0.0)
}

/// The workers' counters are merged once a second: waits (at most 5 s) until `done`
/// holds for the moves by result, and returns them.
fn settled_moves(turnd: &TurndProcess, done: impl Fn(&dyn Fn(&str) -> f64) -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if done(&|result| moves(turnd, result)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn rfc8016_a_client_moves_to_new_sockets_and_keeps_relaying_through_the_same_relay() {
    let turnd = TurndProcess::start(&config(None), &[]);
    let peer = UdpEchoPeer::start();
    let mut alice = client(USER, PASSWORD);
    let mut conn = connect(&turnd);
    let allocated = conn.request(&mut alice, &Request::allocate_mobile(), TIMEOUT).unwrap().into_result().unwrap();
    let relay = allocated.relayed().expect("a relayed address");
    assert!(alice.mobility_ticket().is_some(), "the Allocate success carries a MOBILITY-TICKET");
    let bound = conn.request(&mut alice, &Request::channel_bind(CHANNEL, peer.addr()), TIMEOUT).unwrap();
    assert!(bound.is_success(), "{:?}", bound.error());
    echo(&mut conn, b"before any move").unwrap();

    let mut made = 0;
    while made < MOVES || (moves(&turnd, "moved_across_workers") == 0.0 && made < MAX_MOVES) {
        made += 1;
        let ticket = alice.mobility_ticket().unwrap().to_vec();
        let mut moved = connect(&turnd);
        let answer = moved.request(&mut alice, &Request::refresh_mobile(600, &ticket), TIMEOUT).unwrap();
        assert!(answer.is_success(), "move {made}: {:?}", answer.error());
        assert_ne!(alice.mobility_ticket().unwrap(), &ticket[..], "a new ticket with each move");
        // The same relay: the echo peer's answer comes back on the channel, to the new socket.
        echo(&mut moved, format!("after move {made}").as_bytes()).unwrap();
        // The old 5-tuple is forgotten: what it sends is not relayed, nothing comes to it.
        let before = peer.count();
        conn.send(&channel_data(CHANNEL, b"from the old socket", true).unwrap()).unwrap();
        assert!(!hears_anything(&mut conn, Duration::from_millis(200)), "move {made}: the old socket heard back");
        assert_eq!(peer.count(), before, "move {made}: the old socket's data was relayed");
        conn = moved;
    }
    let counted = settled_moves(&turnd, |m| m("moved") + m("moved_across_workers") == made as f64);
    assert!(counted, "the metrics count every move");
    let allocations = http::metric(&http::scrape(turnd.admin_addr()), "turnd_allocations").unwrap_or(0.0);
    assert_eq!(allocations, 1.0, "still the one allocation");
    let (local, across) = (moves(&turnd, "moved"), moves(&turnd, "moved_across_workers"));
    eprintln!("{made} moves: {local} on the owning worker, {across} across workers");
    let logs = turnd.logs();
    let handovers: Vec<&str> =
        logs.lines().filter_map(|l| l.split("handover_us=").nth(1)?.split_whitespace().next()).collect();
    eprintln!("hand-over times (µs, owner's export to receiver's import): {}", handovers.join(" "));
    if std::thread::available_parallelism().map_or(1, |n| n.get()) > 1 {
        assert!(across > 0.0, "no move crossed workers in {made}");
    }
    // The relayed address never changed: a fresh Refresh still names the same allocation.
    let refreshed = conn.request(&mut alice, &Request::refresh(600), TIMEOUT).unwrap();
    assert!(refreshed.is_success());
    assert_eq!(relay, allocated.relayed().unwrap());

    // The admin plane finds it wherever it moved to: listed with its new client, and
    // dropped by id (its id names the worker that made it, not the one holding it).
    let bearer = format!("Bearer {TOKEN}");
    let mut ws = http::ws_connect(turnd.admin_addr(), "/ws", &[("Authorization", &bearer)]).expect("open /ws");
    http::ws_next(&mut ws).expect("hello");
    http::ws_send(&mut ws, serde_json::json!({"op": "list_allocations", "offset": 0, "limit": 10, "req": 1}));
    let list = http::ws_wait(&mut ws, TIMEOUT, |m| m["type"] == "allocations");
    let listed = &list["allocations"][0];
    assert_eq!(listed["client"], conn.local_addr().unwrap().to_string(), "{list}");
    http::ws_send(&mut ws, serde_json::json!({"op": "drop_allocation", "id": listed["id"], "req": 2}));
    let dropped = http::ws_wait(&mut ws, TIMEOUT, |m| m["type"] == "dropped");
    assert_eq!(dropped["count"], 1, "{dropped}");
    assert!(echo(&mut conn, b"after the drop").is_err(), "relayed for a dropped allocation");
}

#[test]
fn rfc8016_another_users_ticket_and_a_forged_one_are_refused() {
    let turnd = TurndProcess::start(&config(None), &[]);
    let mut alice = client(USER, PASSWORD);
    let mut conn = connect(&turnd);
    conn.request(&mut alice, &Request::allocate_mobile(), TIMEOUT).unwrap().into_result().unwrap();
    let ticket = alice.mobility_ticket().unwrap().to_vec();

    let mut bob = client("bob", "hunter2");
    let mut elsewhere = connect(&turnd);
    let answer = elsewhere.request(&mut bob, &Request::refresh_mobile(600, &ticket), TIMEOUT).unwrap();
    assert_eq!(answer.error_code(), Some(400), "bob cannot take alice's allocation");

    let mut forged = ticket.clone();
    forged[3] = if forged[3] == b'x' { b'y' } else { b'x' };
    let mut moved = connect(&turnd);
    let answer = moved.request(&mut alice, &Request::refresh_mobile(600, &forged), TIMEOUT).unwrap();
    assert_eq!(answer.error_code(), Some(400), "a forged ticket");
    assert!(settled_moves(&turnd, |m| m("invalid_ticket") == 2.0), "both counted as invalid tickets");
    // The allocation stayed where it was.
    assert!(conn.request(&mut alice, &Request::refresh(600), TIMEOUT).unwrap().is_success());
}

#[test]
fn rfc8016_mobility_off_answers_405() {
    let turnd = TurndProcess::start(&config(Some(false)), &[]);
    let mut alice = client(USER, PASSWORD);
    let mut conn = connect(&turnd);
    let answer = conn.request(&mut alice, &Request::allocate_mobile(), TIMEOUT).unwrap();
    assert_eq!(answer.error_code(), Some(405));
    assert!(conn.request(&mut alice, &Request::allocate(), TIMEOUT).unwrap().is_success());
}

/// coturn's test client with `-M`: it asks for mobility in its Allocate, keeps the
/// ticket and presents it in its Refreshes. It reopens its socket (a new source port)
/// before the Refresh, so its refresh is a move.
#[test]
fn coturn_uclient_with_mobility_gets_a_ticket_and_refreshes_with_it() {
    if !need_tool("turnutils_uclient", "coturn") {
        return;
    }
    let turnd = TurndProcess::start(&config(None), &[]);
    let peer = UdpEchoPeer::start();
    let server = turnd.udp_addr();
    let out = run_with_timeout(
        std::process::Command::new("turnutils_uclient")
            .args(["-M", "-v", "-n", "4", "-l", "100", "-u", USER, "-w", PASSWORD])
            .args(["-p", &server.port().to_string(), "-e", &peer.addr().ip().to_string()])
            .args(["-r", &peer.addr().port().to_string()])
            .arg(server.ip().to_string()),
        Duration::from_secs(30),
    );
    let logs = turnd.logs();
    let all = out.all();
    eprintln!("{out}");
    assert!(!out.timed_out(), "uclient hung");
    assert!(all.contains("smid="), "uclient never got a ticket");
    settled_moves(&turnd, |m| m("moved") + m("moved_across_workers") >= 1.0);
    let moved = moves(&turnd, "moved") + moves(&turnd, "moved_across_workers");
    eprintln!("turnd saw {moved} moves; log lines about moves:");
    for line in logs.lines().filter(|l| l.contains("moved") || l.contains("handed over")) {
        eprintln!("  {line}");
    }
    // With -M, uclient 4.6.1 also sends to the peer's port + 1, where nothing listens:
    // each ICMP port unreachable comes back as a Data indication with the ICMP
    // attribute and no DATA (RFC 8656 §11), which uclient, older than that, logs as
    // "received DATA message has no data, size=44". One such line per ICMP relayed.
    let no_data = all.lines().filter(|l| l.contains("DATA message has no data")).count();
    let icmp = http::metric(&http::scrape(turnd.admin_addr()), "turnd_icmp_relayed_total").unwrap_or(0.0);
    eprintln!("uclient logged {no_data} Data indications without DATA; turnd relayed {icmp} ICMP errors");
    assert!(no_data as f64 <= icmp, "a Data indication without DATA that was not an ICMP error");
    let errors = all.lines().filter(|l| l.contains("ERROR") && !l.contains("DATA message has no data"));
    assert_eq!(errors.count(), 0, "uclient reported an error");
    assert!(out.success(), "uclient failed");
    assert!(moved >= 1.0, "uclient's Refresh from its reopened socket moved the allocation");
}
