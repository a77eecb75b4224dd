//! Several workers (`workers = 2`) against the real binary: UDP clients spread over the
//! workers' SO_REUSEPORT sockets and all relay, TCP clients spread too; the admin plane lists and drops
//! allocations of every worker and its metrics add them up; quotas and EVEN-PORT
//! reservations hold across workers; a second turnd cannot join the UDP port.
// A test may unwrap (a panic is a failed test) and use unsafe for process plumbing
// (signals, namespaces); the server code denies both (Cargo.toml [lints]).
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

mod common;
#[allow(dead_code)]
use common::http;
use common::turn_client;

use common::*;
use http::{metric, scrape, ws_connect, ws_next, ws_send, ws_wait};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};
use stun_codec::rfc5766::attributes::{EvenPort, ReservationToken};
use stun_codec::rfc5766::methods::ALLOCATE;
use turn_client::{error_code, StreamClient, TurnClient};

const TOKEN: &str = "workers-test-token-0123";
const WORKERS: u64 = 2;
/// Snapshots are merged every second; anything should show within this.
const SHOW_WITHIN: Duration = Duration::from_secs(5);

fn start(limits: &str) -> TurndProcess {
    let config = format!(
        "workers = {WORKERS}\n{}\n[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n[limits]\n{limits}\n",
        config_with(&["udp"])
    );
    TurndProcess::start(&config, &[])
}

fn client(turnd: &TurndProcess) -> TurnClient {
    TurnClient::new("127.0.0.1:0", turnd.udp_addr(), USER, PASSWORD, REALM)
}

/// The allocations the admin plane lists, by client address: their ids.
fn listed_ids(ws: &mut http::Ws) -> HashMap<String, u64> {
    ws_send(ws, json!({"op": "list_allocations", "offset": 0, "limit": 1000, "req": 1}));
    let list = ws_wait(ws, SHOW_WITHIN, |m| m["type"] == "allocations");
    let all = list["allocations"].as_array().cloned().unwrap_or_default();
    assert_eq!(list["total"].as_u64(), Some(all.len() as u64), "{list}");
    all.iter()
        .map(|a| (a["client"].as_str().unwrap_or_default().to_string(), a["id"].as_u64().expect("an id")))
        .collect()
}

fn admin_ws(turnd: &TurndProcess) -> http::Ws {
    let bearer = format!("Bearer {TOKEN}");
    let mut ws = ws_connect(turnd.admin_addr(), "/ws", &[("Authorization", &bearer)]).expect("open /ws");
    assert_eq!(ws_next(&mut ws).expect("hello")["admin"], true);
    ws
}

#[test]
fn clients_spread_over_the_workers_and_every_one_relays() {
    let turnd = start("");
    let peer = UdpEchoPeer::start();
    let mut clients: Vec<TurnClient> = (0..24).map(|_| client(&turnd)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.allocate(vec![]).unwrap_or_else(|code| panic!("client {i}: Allocate failed with {code}"));
        assert_eq!(c.create_permission(peer.addr()), None, "client {i}: CreatePermission");
        c.send_indication(peer.addr(), format!("hello {i}").as_bytes());
        let (_, from, payload) = c.recv_data().unwrap_or_else(|| panic!("client {i}: nothing relayed back"));
        assert_eq!((from, payload), (Some(peer.addr()), format!("hello {i}").into_bytes()), "client {i}");
    }

    // Ids tell the owning worker (id % workers): 24 clients with distinct source ports
    // all on one worker would mean the listener is not a REUSEPORT group.
    let mut ws = admin_ws(&turnd);
    let ids = listed_ids(&mut ws);
    assert_eq!(ids.len(), clients.len(), "the list merges every worker: {ids:?}");
    let per_worker = (0..WORKERS).map(|w| ids.values().filter(|id| *id % WORKERS == w).count()).collect::<Vec<_>>();
    assert!(per_worker.iter().all(|&n| n > 0), "allocations per worker: {per_worker:?}");

    // /metrics adds the workers up.
    let deadline = Instant::now() + SHOW_WITHIN;
    loop {
        let text = scrape(turnd.admin_addr());
        let relayed = metric(&text, "turnd_relayed_packets_total{direction=\"peer_to_client\",transport=\"udp\"}");
        if metric(&text, "turnd_allocations") == Some(24.0) && relayed == Some(24.0) {
            break;
        }
        assert!(Instant::now() < deadline, "metrics never showed 24 allocations and 24 packets:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Dropping goes to the owning worker, whichever it is.
    for w in 0..WORKERS {
        let (client_addr, id) = ids.iter().find(|(_, id)| *id % WORKERS == w).expect("one per worker");
        ws_send(&mut ws, json!({"op": "drop_allocation", "id": id, "req": 2}));
        let dropped = ws_wait(&mut ws, SHOW_WITHIN, |m| m["type"] == "dropped");
        assert_eq!(dropped["count"], 1, "drop {id} on worker {w}");
        let c = clients
            .iter_mut()
            .find(|c| c.socket.local_addr().map(|a| a.to_string()).ok().as_ref() == Some(client_addr));
        let c = c.expect("the dropped allocation's client");
        c.send_indication(peer.addr(), b"still there?");
        assert!(c.recv_data().is_none(), "worker {w} relayed for a dropped allocation");
    }
    ws_send(&mut ws, json!({"op": "drop_user", "user": USER, "req": 3}));
    let dropped: Value = ws_wait(&mut ws, SHOW_WITHIN, |m| m["type"] == "dropped");
    assert_eq!(dropped["count"], 22, "drop_user sums over the workers");
}

#[test]
fn tcp_clients_spread_over_the_workers_too() {
    let config = format!(
        "workers = {WORKERS}\n{}\n[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n",
        config_with(&["tcp"])
    );
    let turnd = TurndProcess::start(&config, &[]);
    let mut connections = Vec::new();
    for i in 0..16 {
        let mut stream = std::net::TcpStream::connect(turnd.tcp_addr()).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
        let mut client = StreamClient::new(USER, PASSWORD, REALM);
        client.allocate(&mut stream).unwrap_or_else(|code| panic!("TCP client {i}: Allocate failed with {code}"));
        connections.push(stream);
    }
    let mut ws = admin_ws(&turnd);
    let ids = listed_ids(&mut ws);
    assert_eq!(ids.len(), 16, "{ids:?}");
    let per_worker = (0..WORKERS).map(|w| ids.values().filter(|id| *id % WORKERS == w).count()).collect::<Vec<_>>();
    assert!(per_worker.iter().all(|&n| n > 0), "TCP allocations per worker: {per_worker:?}");
}

#[test]
fn quotas_count_every_worker() {
    let turnd = start("allocations-per-user = 5\nallocations-per-ip = 100");
    let mut results = Vec::new();
    let mut clients: Vec<TurnClient> = (0..12).map(|_| client(&turnd)).collect();
    for c in &mut clients {
        results.push(c.allocate(vec![]).err());
    }
    let granted = results.iter().filter(|r| r.is_none()).count();
    let refused = results.iter().filter(|r| **r == Some(486)).count();
    assert_eq!((granted, refused), (5, 7), "per-user quota over two workers: {results:?}");
}

#[test]
fn a_reservation_made_on_one_worker_is_redeemed_on_another() {
    let turnd = start("");
    let mut ws = admin_ws(&turnd);
    let mut crossed = 0;
    // Each pair is two client sockets, so the kernel picks each one's worker; keep
    // going until two pairs crossed workers (a pair crosses with probability 1/2).
    for pair in 0..40 {
        let mut first = client(&turnd);
        let response = first.request(ALLOCATE, vec![requested_udp(), EvenPort::new(true).into()]);
        assert_eq!(error_code(&response), None, "pair {pair}: EVEN-PORT Allocate");
        let relay = relayed_port(&response);
        assert_eq!(relay % 2, 0, "pair {pair}: EVEN-PORT gave an odd port");
        let token = response.get_attribute::<ReservationToken>().expect("a RESERVATION-TOKEN").token();

        let mut second = client(&turnd);
        let response = second.request(ALLOCATE, vec![requested_udp(), ReservationToken::new(token).into()]);
        assert_eq!(error_code(&response), None, "pair {pair}: redeeming the token");
        assert_eq!(relayed_port(&response), relay + 1, "pair {pair}: the reserved port");

        let ids = listed_ids(&mut ws);
        let worker =
            |c: &TurnClient| ids.get(&c.socket.local_addr().expect("bound").to_string()).map(|id| id % WORKERS);
        if worker(&first) != worker(&second) {
            crossed += 1;
            if crossed == 2 {
                return;
            }
        }
    }
    panic!("in 40 pairs, fewer than two landed on different workers: the listener does not spread clients");
}

#[test]
fn a_second_turnd_cannot_join_the_udp_port() {
    let turnd = start("");
    let port = turnd.udp_addr().port();
    let dir = TempDir::new("turnd-workers");
    let file = dir.write(
        "turnd.toml",
        &format!(
            "workers = 2\n[[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:{port}\"\n[admin]\nenabled = false\n\
             [[auth.user]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\n"
        ),
    );
    let out = run_with_timeout(Command::new(turnd_binary()).arg("serve").arg("-c").arg(&file), Duration::from_secs(10));
    assert!(!out.success() && !out.timed_out(), "a second turnd started on a taken port:\n{}", out.all());
    assert!(out.all().contains(&format!("binding udp 127.0.0.1:{port}")), "{}", out.all());
    assert!(out.all().contains("in use"), "{}", out.all());
}

fn requested_udp() -> turnd::stun::attributes::Attribute {
    stun_codec::rfc5766::attributes::RequestedTransport::new(17).into()
}

fn relayed_port(response: &turnd::stun::message::Message) -> u16 {
    use stun_codec::rfc5766::attributes::XorRelayAddress;
    let relay: SocketAddr = response.get_attribute::<XorRelayAddress>().expect("XOR-RELAYED-ADDRESS").address();
    relay.port()
}
