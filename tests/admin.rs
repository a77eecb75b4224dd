//! The admin plane against the real binary on loopback: `/metrics` moving with a live
//! allocation, promtool, the `/ws` stream and its admin actions, tokens, slow clients,
//! the connection caps and the health reserve, WebSocket idle and rate limits, health,
//! config, and the dashboard in headless Chromium.
// A test may unwrap (a panic is a failed test) and use unsafe for process plumbing
// (signals, namespaces); the server code denies both (Cargo.toml [lints]).
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::http;
use common::turn_client;

use common::*;
use http::{
    get, get_from, half_sent, metric, scrape, ws_closed, ws_connect, ws_connect_from, ws_next, ws_send, ws_wait,
    LOOPBACK,
};
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use turn_client::TurnClient;

const TOKEN: &str = "test-token-0123456789";
const CHANNEL: u16 = 0x4000;
/// Snapshots are published every second; anything should show within this.
const SHOW_WITHIN: Duration = Duration::from_secs(5);

/// A loopback UDP turnd with an admin listener on an ephemeral port plus `admin` keys.
fn start(admin: &str) -> TurndProcess {
    TurndProcess::start(&format!("{}\n[admin]\naddress = \"127.0.0.1:0\"\n{admin}", config_with(&["udp"])), &[])
}

/// Scrapes until `want` holds (snapshots lag by up to a second); returns the scrape.
fn scrape_until(admin: SocketAddr, what: &str, want: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + SHOW_WITHIN;
    loop {
        let text = scrape(admin);
        if want(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "metrics never showed {what}:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn is(text: &str, series: &str, value: f64) -> bool {
    metric(text, series) == Some(value)
}

/// An allocation with a permission and a channel to `peer`, and `packets` echoed.
fn relaying_client(turnd: &TurndProcess, peer: &UdpEchoPeer, packets: u8) -> TurnClient {
    let mut client = TurnClient::on_loopback(turnd.udp_addr(), USER, PASSWORD, REALM);
    client.allocate_relay();
    client.permit(peer.addr());
    client.bind_channel(CHANNEL, peer.addr());
    for i in 0..packets {
        client.send_channel(CHANNEL, &[i; 100]);
        assert_eq!(client.recv_channel(Duration::from_secs(2)), Some(vec![i; 100]), "packet {i} not echoed");
    }
    client
}

#[test]
fn metrics_move_with_a_live_allocation() {
    let turnd = start("");
    let admin = turnd.admin_addr();
    let peer = UdpEchoPeer::start();
    let idle = scrape_until(admin, "a first snapshot", |t| metric(t, "turnd_relay_ports_available") == Some(200.0));
    assert!(is(&idle, "turnd_allocations", 0.0), "{idle}");

    let mut client = relaying_client(&turnd, &peer, 10);
    let mut intruder = TurnClient::on_loopback(turnd.udp_addr(), USER, "wrong password", REALM);
    let refused = intruder.request(stun_codec::rfc5766::methods::ALLOCATE, vec![]);
    assert_eq!(turn_client::error_code(&refused), Some(401));

    let up = "turnd_relayed_bytes_total{direction=\"client_to_peer\",transport=\"udp\"}";
    let down = "turnd_relayed_bytes_total{direction=\"peer_to_client\",transport=\"udp\"}";
    // Lower bounds, some counted by the other worker (the intruder's address may hash
    // there): wait for every worker's snapshot to show them, not only the allocation's.
    let minimums = [
        ("turnd_requests_total{method=\"allocate\",result=\"success\"}", 1.0),
        ("turnd_requests_total{method=\"allocate\",result=\"error\"}", 2.0),
        ("turnd_error_responses_total{code=\"401\"}", 2.0),
        ("turnd_auth_failures_total{reason=\"bad_integrity\"}", 1.0),
        ("turnd_request_duration_seconds_count", 5.0),
    ];
    let live = scrape_until(admin, "the allocation and its traffic", |t| {
        is(t, "turnd_allocations", 1.0)
            && is(t, down, 1000.0)
            && minimums.iter().all(|(series, min)| metric(t, series).is_some_and(|v| v >= *min))
    });
    for (series, value) in [
        ("turnd_permissions", 1.0),
        ("turnd_channels", 1.0),
        ("turnd_relay_ports_in_use", 1.0),
        ("turnd_relay_ports_available", 199.0),
        ("turnd_allocations_created_total", 1.0),
        (up, 1000.0),
        ("turnd_relayed_packets_total{direction=\"peer_to_client\",transport=\"udp\"}", 10.0),
        ("turnd_requests_total{method=\"channel_bind\",result=\"success\"}", 1.0),
    ] {
        assert_eq!(metric(&live, series), Some(value), "{series}:\n{live}");
    }
    let at_least = |series: &str, min: f64| {
        let v = metric(&live, series).unwrap_or(-1.0);
        assert!(v >= min, "{series} = {v}, want >= {min}:\n{live}");
    };
    for (series, min) in minimums {
        at_least(series, min);
    }
    at_least("process_resident_memory_bytes", 1.0);
    at_least("process_open_fds", 3.0);

    client.refresh(0).expect("delete the allocation");
    let gone = [
        ("turnd_allocations", 0.0),
        ("turnd_permissions", 0.0),
        ("turnd_channels", 0.0),
        ("turnd_relay_ports_in_use", 0.0),
        ("turnd_allocation_lifetime_seconds_count", 1.0),
        ("turnd_allocation_lifetime_seconds_bucket{le=\"+Inf\"}", 1.0),
        ("turnd_allocations_expired_total", 0.0),
    ];
    // Each worker publishes its snapshot once a second, so the figures of two workers
    // can be a second apart: wait for all of them, then check each.
    let after =
        scrape_until(admin, "the allocation gone", |t| gone.iter().all(|(series, value)| is(t, series, *value)));
    for (series, value) in gone {
        assert_eq!(metric(&after, series), Some(value), "{series}:\n{after}");
    }
    // Bounded labels: no user, no address anywhere in the exposition.
    assert!(!after.contains(USER) && !after.contains("127.0.0.1"), "{after}");
}

#[test]
fn promtool_check_metrics_is_clean() {
    if !need_tool("promtool", "prometheus") {
        return;
    }
    let turnd = start("");
    let peer = UdpEchoPeer::start();
    let _client = relaying_client(&turnd, &peer, 3);
    let text = scrape_until(turnd.admin_addr(), "the allocation", |t| is(t, "turnd_allocations", 1.0));
    let dir = TempDir::new("turnd-promtool");
    let file = dir.write("metrics.txt", &text);
    let out = run_with_timeout(
        std::process::Command::new("sh").arg("-c").arg("promtool check metrics < \"$0\"").arg(&file),
        Duration::from_secs(30),
    );
    assert!(out.success() && out.all().trim().is_empty(), "promtool complained:\n{out}");
    // promtool must be able to fail: feed it a counter without the _total suffix.
    let bad = dir.write("bad.txt", "# HELP x_bytes X.\n# TYPE x_bytes counter\nx_bytes 1\n");
    let out = run_with_timeout(
        std::process::Command::new("sh").arg("-c").arg("promtool check metrics < \"$0\"").arg(&bad),
        Duration::from_secs(30),
    );
    assert!(!out.success() || !out.all().trim().is_empty(), "promtool accepted a bad counter:\n{out}");
}

#[test]
fn websocket_streams_snapshots_and_allocation_events() {
    let turnd = start("");
    let mut ws = ws_connect(turnd.admin_addr(), "/ws", &[]).expect("open /ws");
    let hello = ws_next(&mut ws).expect("hello");
    assert_eq!((hello["type"].as_str(), hello["admin"].as_bool()), (Some("hello"), Some(false)), "{hello}");
    assert_eq!(hello["topics"], json!(["stats"]));
    let first = ws_wait(&mut ws, SHOW_WITHIN, |m| m["type"] == "stats");
    assert!(first["unix_ms"].as_u64().is_some_and(|t| t > 0), "a stats message before the loop reported: {first}");
    let second = ws_wait(&mut ws, SHOW_WITHIN, |m| m["type"] == "stats" && m["unix_ms"] != first["unix_ms"]);
    let gap = second["unix_ms"].as_u64().unwrap_or(0).saturating_sub(first["unix_ms"].as_u64().unwrap_or(0));
    // About a second apart; never two in one interval, and a loaded machine (this
    // binary's other tests start servers and a browser meanwhile) may stretch it.
    assert!((500..=10_000).contains(&gap), "snapshots {gap} ms apart");

    // Intervals are clamped to what the loop can give.
    ws_send(&mut ws, json!({"op": "subscribe", "topics": ["allocations"], "interval_ms": 10, "req": 1}));
    let subscribed = ws_wait(&mut ws, SHOW_WITHIN, |m| m["type"] == "subscribed");
    assert_eq!(subscribed["req"], 1);
    assert_eq!(subscribed["interval_ms"], 1000);
    assert_eq!(subscribed["topics"], json!(["stats", "allocations"]));

    let mut client = TurnClient::on_loopback(turnd.udp_addr(), USER, PASSWORD, REALM);
    let relay = client.allocate_relay();
    let me = client.local_addr().to_string();
    let created = ws_wait(&mut ws, SHOW_WITHIN, |m| m["event"] == "allocation.created");
    assert_eq!(created["topic"], "allocations");
    assert_eq!(created["user"], USER);
    assert_eq!(created["client"], me.as_str());
    assert_eq!(created["relay"], relay.to_string());
    assert_eq!(created["transport"], "udp");
    assert!(created["lifetime_secs"].as_u64().is_some_and(|l| l > 0), "{created}");
    ws_wait(&mut ws, SHOW_WITHIN, |m| m["type"] == "stats" && m["allocations"] == 1);

    client.refresh(300).expect("refresh");
    let refreshed = ws_wait(&mut ws, SHOW_WITHIN, |m| m["event"] == "allocation.refreshed");
    assert_eq!((refreshed["id"].clone(), refreshed["user"].clone()), (created["id"].clone(), json!(USER)));
    assert_eq!(refreshed["lifetime_secs"], 300);

    client.refresh(0).expect("delete");
    let deleted = ws_wait(&mut ws, SHOW_WITHIN, |m| m["event"] == "allocation.deleted");
    assert_eq!(deleted["reason"], "client");
    assert_eq!(deleted["relay"], relay.to_string());
    assert!(deleted["duration_secs"].as_f64().is_some() && deleted["bytes"]["client_to_peer"] == 0, "{deleted}");
    ws_wait(&mut ws, SHOW_WITHIN, |m| m["type"] == "stats" && m["allocations"] == 0);
}

#[test]
fn an_admin_action_drops_an_allocation_and_its_client_sees_it_go() {
    let turnd = start(&format!("token = \"{TOKEN}\"\n"));
    let bearer = format!("Bearer {TOKEN}");
    let mut ws = ws_connect(turnd.admin_addr(), "/ws", &[("Authorization", &bearer)]).expect("open /ws");
    assert_eq!(ws_next(&mut ws).expect("hello")["admin"], true);
    ws_send(&mut ws, json!({"op": "subscribe", "topics": ["allocations"]}));
    let peer = UdpEchoPeer::start();
    let mut client = relaying_client(&turnd, &peer, 1);
    let me = client.local_addr().to_string();

    ws_send(&mut ws, json!({"op": "list_allocations", "offset": 0, "limit": 10, "req": 5}));
    let list = ws_wait(&mut ws, SHOW_WITHIN, |m| m["type"] == "allocations");
    assert_eq!((list["req"].as_u64(), list["total"].as_u64()), (Some(5), Some(1)), "{list}");
    let listed = &list["allocations"][0];
    assert_eq!((listed["user"].as_str(), listed["client"].as_str()), (Some(USER), Some(me.as_str())), "{list}");
    assert_eq!((listed["permissions"].as_u64(), listed["channels"].as_u64()), (Some(1), Some(1)));
    let id = listed["id"].as_u64().expect("an allocation id");

    ws_send(&mut ws, json!({"op": "drop_allocation", "id": id, "req": 6}));
    let dropped = ws_wait(&mut ws, SHOW_WITHIN, |m| m["type"] == "dropped");
    assert_eq!((dropped["req"].as_u64(), dropped["count"].as_u64()), (Some(6), Some(1)));
    let ended = ws_wait(&mut ws, SHOW_WITHIN, |m| m["event"] == "allocation.deleted");
    assert_eq!((ended["id"].as_u64(), ended["reason"].as_str()), (Some(id), Some("closed")));
    assert_eq!(ended["bytes"]["peer_to_client"], 100);

    // The client sees it go: no more relaying, and its allocation is unknown (437).
    client.send_channel(CHANNEL, b"anyone there?");
    assert_eq!(client.recv_channel(Duration::from_millis(500)), None, "relayed after the drop");
    assert_eq!(client.refresh(600), Err(437));

    // Every allocation of a user at once.
    let mut a = TurnClient::on_loopback(turnd.udp_addr(), USER, PASSWORD, REALM);
    let mut b = TurnClient::on_loopback(turnd.udp_addr(), USER, PASSWORD, REALM);
    a.allocate_relay();
    b.allocate_relay();
    ws_send(&mut ws, json!({"op": "drop_user", "user": USER, "req": 7}));
    let dropped = ws_wait(&mut ws, SHOW_WITHIN, |m| m["type"] == "dropped");
    assert_eq!(dropped["count"], 2);
    assert_eq!((a.refresh(600), b.refresh(600)), (Err(437), Err(437)));
    ws_send(&mut ws, json!({"op": "drop_allocation", "id": id}));
    assert_eq!(ws_wait(&mut ws, SHOW_WITHIN, |m| m["type"] == "dropped")["count"], 0, "dropped twice");
}

/// Asks for an action without admin rights; the answer must be a refusal, not data.
fn assert_action_refused(ws: &mut http::Ws, why: &str) {
    ws_send(ws, json!({"op": "list_allocations", "req": 1}));
    let reply = ws_wait(ws, SHOW_WITHIN, |m| m["type"] != "stats");
    assert_eq!((reply["type"].as_str(), reply["code"].as_str()), (Some("error"), Some("unauthorized")), "{reply}");
    assert!(reply["message"].as_str().is_some_and(|m| m.contains(why)), "{reply}");
    ws_send(ws, json!({"op": "drop_user", "user": USER, "req": 2}));
    assert_eq!(ws_wait(ws, SHOW_WITHIN, |m| m["type"] != "stats")["code"], "unauthorized");
}

#[test]
fn wrong_and_missing_tokens_are_refused() {
    let turnd = start(&format!("token = \"{TOKEN}\"\n"));
    let admin = turnd.admin_addr();
    // On loopback, reads are open but actions need the token...
    let mut ws = ws_connect(admin, "/ws", &[]).expect("open /ws read-only");
    assert_eq!(ws_next(&mut ws).expect("hello")["admin"], false);
    assert_action_refused(&mut ws, "bearer token");
    // ...and a wrong token gets 401 everywhere but /healthz, never data.
    assert_eq!(ws_connect(admin, "/ws", &[("Authorization", "Bearer wrong-token-000000")]).err(), Some(401));
    assert_eq!(ws_connect(admin, "/ws?access_token=wrong", &[]).err(), Some(401));
    for path in ["/", "/metrics", "/readyz", "/dashboard.js"] {
        let r = get(admin, path, &["Authorization: Bearer wrong-token-000000"]);
        assert_eq!(r.status, 401, "{path}: {r:?}");
        assert!(r.head.contains("www-authenticate: Bearer"), "{r:?}");
        assert!(!r.body.contains("turnd_") && !r.body.contains("<html"), "{r:?}");
    }
    assert_eq!(get(admin, "/healthz", &["Authorization: Bearer wrong"]).status, 200);
    // Off-site pages cannot reach the open loopback plane (DNS rebinding, cross-site WS).
    assert_eq!(get(admin, "/metrics", &["Host: evil.example:9641"]).status, 403);
    assert_eq!(ws_connect(admin, "/ws", &[("Origin", "http://evil.example")]).err(), Some(403));
    let unauthorized = metric(&scrape(admin), "turnd_admin_unauthorized_total").unwrap_or(0.0);
    assert!(unauthorized >= 6.0, "unauthorized counter: {unauthorized}");

    // With no token configured, actions are refused and any token is wrong.
    let tokenless = start("");
    let mut ws = ws_connect(tokenless.admin_addr(), "/ws", &[]).expect("open /ws");
    ws_next(&mut ws).expect("hello");
    assert_action_refused(&mut ws, "no admin.token is configured");
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(ws_connect(tokenless.admin_addr(), "/ws", &[("Authorization", &bearer)]).err(), Some(401));
}

#[test]
fn off_loopback_everything_but_health_and_metrics_needs_the_token() {
    // A wildcard address is not loopback; the test still only talks to 127.0.0.1.
    for require_metrics_token in [false, true] {
        let turnd = TurndProcess::start(
            &format!(
                "{}\n[admin]\naddress = \"0.0.0.0:0\"\ntoken = \"{TOKEN}\"\nmetrics-require-token = {require_metrics_token}\n",
                config_with(&["udp"])
            ),
            &[],
        );
        let admin = SocketAddr::from(([127, 0, 0, 1], turnd.admin_addr().port()));
        let bearer = format!("Authorization: Bearer {TOKEN}");
        for path in ["/", "/dashboard.css"] {
            assert_eq!(get(admin, path, &[]).status, 401, "{path}");
            assert_eq!(get(admin, path, &[&bearer]).status, 200, "{path}");
        }
        assert_eq!(get(admin, "/healthz", &[]).status, 200);
        // /readyz is open for probes, but the reason it is not ready is for the token.
        // (It says 503 for a moment, until the loop's first report.)
        let early = get(admin, "/readyz", &[]);
        assert!(early.body == "ready\n" || early.body == "not ready\n", "{early:?}");
        let explained = get(admin, "/readyz", &[&bearer]);
        assert!(explained.status == 200 || explained.body.starts_with("not ready: "), "{explained:?}");
        wait_ready(admin);
        assert_eq!(get(admin, "/readyz", &["Authorization: Bearer wrong-token-000000"]).status, 401);
        let metrics = get(admin, "/metrics", &[]);
        assert_eq!(metrics.status, if require_metrics_token { 401 } else { 200 }, "{metrics:?}");
        assert_eq!(get(admin, "/metrics", &[&bearer]).status, 200);
        assert_eq!(ws_connect(admin, "/ws", &[]).err(), Some(401));
        let mut ws = ws_connect(admin, &format!("/ws?access_token={TOKEN}"), &[]).expect("token in the query");
        assert_eq!(ws_next(&mut ws).expect("hello")["admin"], true);
    }
}

#[test]
fn a_slow_websocket_client_is_dropped_without_stalling_relaying() {
    const CHURN: usize = 400;
    let turnd = start("");
    let admin = turnd.admin_addr();
    // The slow client: a tiny receive buffer, subscribed to everything, never reading.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(2048).expect("small receive buffer");
    socket.connect(&admin.into()).expect("connect");
    let stream: std::net::TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let request = tungstenite::client::IntoClientRequest::into_client_request(format!("ws://{admin}/ws")).expect("req");
    let (mut slow, _) = tungstenite::client(request, stream).expect("slow client handshake");
    let all = json!({"op": "subscribe", "topics": ["stats", "allocations", "auth", "policy"]});
    slow.send(tungstenite::Message::text(all.to_string())).expect("subscribe");
    // A well-behaved client alongside it, reading everything on a thread of its own.
    let mut fast = ws_connect(admin, "/ws", &[]).expect("fast client");
    ws_send(&mut fast, json!({"op": "subscribe", "topics": ["allocations"]}));
    // Churn only once the subscription is in force, or the first events go unseen.
    ws_wait(&mut fast, SHOW_WITHIN, |m| m["type"] == "subscribed");
    let reader = std::thread::spawn(move || {
        let (mut deleted, deadline) = (0, Instant::now() + Duration::from_secs(60));
        while deleted < CHURN && Instant::now() < deadline {
            let Some(m) = ws_next(&mut fast) else { break };
            deleted += usize::from(m["event"] == "allocation.deleted");
        }
        (fast, deleted)
    });

    // Media keeps flowing while allocations churn out events the slow client ignores.
    let peer = UdpEchoPeer::start();
    let media = relaying_client(&turnd, &peer, 1);
    let mut churn = TurnClient::on_loopback(turnd.udp_addr(), USER, PASSWORD, REALM);
    let mut worst = Duration::ZERO;
    for i in 0..CHURN as u32 {
        churn.allocate_relay();
        churn.refresh(0).expect("delete");
        if i % 4 == 0 {
            let sent = Instant::now();
            media.send_channel(CHANNEL, &i.to_be_bytes());
            assert_eq!(media.recv_channel(Duration::from_secs(2)), Some(i.to_be_bytes().to_vec()), "echo {i} lost");
            worst = worst.max(sent.elapsed());
        }
    }
    assert!(worst < Duration::from_millis(500), "relaying stalled: worst round trip {worst:?}");

    scrape_until(admin, "the slow client dropped", |t| {
        metric(t, "turnd_admin_slow_clients_dropped_total").is_some_and(|n| n >= 1.0)
    });
    // The slow client finds its connection closed once it reads what was buffered.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut read = 0;
    while slow.read().is_ok() {
        read += 1;
        assert!(Instant::now() < deadline, "the slow client was never disconnected ({read} messages)");
    }
    // The fast client saw all of the churn and is still served.
    let (mut fast, deleted) = reader.join().expect("the fast reader");
    assert_eq!(deleted, CHURN, "the fast client missed events");
    ws_wait(&mut fast, SHOW_WITHIN, |m| m["type"] == "stats");
}

#[test]
fn connections_over_the_cap_are_refused_but_health_is_answered() {
    let turnd = start("max-connections = 2\nmax-connections-per-source = 2\n");
    let admin = turnd.admin_addr();
    let first = ws_connect(admin, "/ws", &[]).expect("first");
    let _second = ws_connect(admin, "/ws", &[]).expect("second");
    let refused = get(admin, "/", &[]);
    assert_eq!(refused.status, 503, "{refused:?}");
    assert!(refused.body.contains("busy"), "{refused:?}");
    assert_eq!(ws_connect(admin, "/ws", &[]).err(), Some(503));
    // The probes' paths are answered from the reserve.
    assert_eq!(get(admin, "/healthz", &[]).status, 200);
    drop(first);
    let deadline = Instant::now() + SHOW_WITHIN;
    while get(admin, "/", &[]).status != 200 {
        assert!(Instant::now() < deadline, "a freed slot was never reused");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(metric(&scrape(admin), "turnd_admin_connections_refused_total").is_some_and(|n| n >= 2.0));
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// Waits for `/readyz` to say 200 (the loop's first report).
fn wait_ready(admin: SocketAddr) {
    let deadline = Instant::now() + SHOW_WITHIN;
    while get(admin, "/readyz", &[]).status != 200 {
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Issue 21, item 1: half-sent requests, reopened as fast as they are cut, hold every
/// ordinary slot (and keep trying the reserve from many sources), yet `/healthz`,
/// `/readyz` and `/metrics` keep answering 200, from the attacker's source too.
#[test]
fn half_sent_requests_cannot_keep_health_from_answering() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let turnd = start("max-connections = 4\nmax-connections-per-source = 4\n");
    let admin = turnd.admin_addr();
    wait_ready(admin);
    // Every ordinary slot, from one source: before the reserve, this alone made
    // /healthz answer 503 (and the kubelet restart the pod).
    let _held: Vec<_> = (0..4).map(|_| half_sent(LOOPBACK, admin)).collect();
    assert_eq!(get(admin, "/", &[]).status, 503, "the ordinary slots are not all held");
    // Meanwhile more half-sent requests, from the same source and ten others, as fast
    // as a thread can open them: they can only land in (and churn) the reserve.
    let (stop, opened) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let attacker = {
        let (stop, opened) = (stop.clone(), opened.clone());
        std::thread::spawn(move || {
            let mut open = std::collections::VecDeque::new();
            let mut i = 0u8;
            while !stop.load(Ordering::Relaxed) {
                let source = if i % 3 == 0 { LOOPBACK } else { loopback(10 + i % 10) };
                open.push_back(half_sent(source, admin));
                if open.len() > 200 {
                    open.pop_front();
                }
                opened.fetch_add(1, Ordering::Relaxed);
                i = i.wrapping_add(1);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let started = Instant::now();
    let mut answered = 0;
    while started.elapsed() < Duration::from_secs(4) {
        for source in [LOOPBACK, loopback(3)] {
            for path in ["/healthz", "/readyz", "/metrics"] {
                let r = get_from(source, admin, path, &[]);
                assert_eq!(r.status, 200, "{path} from {source} under attack: {r:?}");
                answered += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    attacker.join().expect("the attacker thread");
    assert!(opened.load(Ordering::Relaxed) > 200, "the attack was too weak to mean anything");
    // The ordinary slots stayed held throughout (10 s header timeout).
    assert_eq!(get(admin, "/", &[]).status, 503);
    let text = scrape(admin);
    assert!(metric(&text, "turnd_admin_connections_refused_total").is_some_and(|n| n >= 100.0), "{text}");
    eprintln!("{answered} probes answered 200 while {} half-sent requests were opened", opened.load(Ordering::Relaxed));
}

/// More than `max-connections-per-source` from one source are refused; another source
/// (127.0.0.2: the IPv4 prefix is /32) is still served.
#[test]
fn one_source_cannot_take_every_admin_connection() {
    let turnd = start("max-connections = 4\nmax-connections-per-source = 2\n");
    let admin = turnd.admin_addr();
    let mut mine: Vec<_> =
        (0..2).map(|i| ws_connect(admin, "/ws", &[]).unwrap_or_else(|e| panic!("ws {i}: {e}"))).collect();
    assert_eq!(ws_connect(admin, "/ws", &[]).err(), Some(503), "a third WebSocket from one source");
    assert_eq!(get(admin, "/", &[]).status, 503);
    assert_eq!(get(admin, "/healthz", &[]).status, 200, "the reserve answers the source over its cap too");
    let other = loopback(2);
    let mut theirs = ws_connect_from(other, admin, "/ws", &[]).expect("another source's WebSocket");
    assert_eq!(ws_next(&mut theirs).expect("hello")["type"], "hello");
    assert_eq!(get_from(other, admin, "/", &[]).status, 200);
    // A freed place is the source's again.
    drop(mine.pop());
    let deadline = Instant::now() + SHOW_WITHIN;
    while ws_connect(admin, "/ws", &[]).is_err() {
        assert!(Instant::now() < deadline, "the freed place was never given back");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Issue 21, item 1 on loopback: WebSockets that send nothing and subscribe to nothing
/// are closed after the idle timeout (1 s here), pings do not keep them, and their
/// slots come back; a subscribed one stays.
#[test]
fn idle_websockets_are_closed() {
    let config = format!(
        "{}\n[admin]\naddress = \"127.0.0.1:0\"\nmax-connections = 3\nmax-connections-per-source = 3\n",
        config_with(&["udp"])
    );
    let turnd = TurndProcess::start_wrapped(&["env", "TURND_ADMIN_WS_IDLE_SECS=1"], &config, &[]);
    let admin = turnd.admin_addr();
    let mut subscribed = ws_connect(admin, "/ws", &[]).expect("subscriber");
    ws_next(&mut subscribed).expect("hello");
    ws_send(&mut subscribed, json!({"op": "subscribe", "topics": ["stats"]}));
    let mut idle = ws_connect(admin, "/ws", &[]).expect("idle");
    let mut pinging = ws_connect(admin, "/ws", &[]).expect("pinging");
    let opened = Instant::now();
    assert_eq!(get(admin, "/", &[]).status, 503, "three WebSockets hold every slot");
    let pinger = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if pinging.send(tungstenite::Message::Ping(b"still here".to_vec().into())).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
            pinging.get_mut().set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
            match pinging.read() {
                Ok(tungstenite::Message::Close(frame)) => {
                    return frame.map(|f| (u16::from(f.code), f.reason.to_string()))
                }
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return None,
                Ok(_) => {}
            }
        }
        None
    });
    let closed = ws_closed(&mut idle, Duration::from_secs(5));
    let after = opened.elapsed();
    assert_eq!(closed.as_ref().map(|c| c.0), Some(1008), "the idle WebSocket: {closed:?}");
    assert!(closed.is_some_and(|c| c.1.contains("idle")));
    assert!(after >= Duration::from_millis(900) && after < Duration::from_secs(4), "closed after {after:?}");
    let pinged = pinger.join().expect("pinger");
    assert_eq!(pinged.map(|c| c.0), Some(1008), "pings kept a WebSocket that asked for nothing");
    // Their slots are free again; the subscriber is still served.
    let deadline = Instant::now() + SHOW_WITHIN;
    while get(admin, "/", &[]).status != 200 {
        assert!(Instant::now() < deadline, "the idle WebSockets' slots never came back");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let later = ws_wait(&mut subscribed, SHOW_WITHIN, |m| m["type"] == "stats");
    assert!(later["unix_ms"].as_u64().is_some(), "{later}");
    assert!(opened.elapsed() > Duration::from_secs(2), "the subscriber was not tested past the timeout");
}

/// Binary frames, pings and pongs count against the frame rate like text does: a
/// flood of any of them ends the session with 1008.
#[test]
fn floods_of_binary_frames_pings_and_pongs_are_cut() {
    use tungstenite::Message;
    let turnd = start("");
    let admin = turnd.admin_addr();
    type Flood = (&'static str, fn() -> Message);
    let floods: [Flood; 4] = [
        ("binary", || Message::Binary(vec![0u8; 64].into())),
        ("ping", || Message::Ping(b"ping".to_vec().into())),
        ("pong", || Message::Pong(b"pong".to_vec().into())),
        ("text", || Message::text("{}")),
    ];
    for (kind, frame) in floods {
        let mut ws = ws_connect(admin, "/ws", &[]).expect("open /ws");
        ws_next(&mut ws).expect("hello");
        let started = Instant::now();
        let mut sent = 0;
        while sent < 200 && ws.send(frame()).is_ok() {
            sent += 1;
        }
        let closed = ws_closed(&mut ws, Duration::from_secs(5));
        assert_eq!(closed.as_ref().map(|c| c.0), Some(1008), "{kind} flood of {sent}: {closed:?}");
        assert!(closed.is_some_and(|c| c.1.contains("rate")), "{kind}");
        assert!(started.elapsed() < Duration::from_secs(2), "{kind} flood cut only after {:?}", started.elapsed());
    }
    // A client within the rate is not cut.
    let mut calm = ws_connect(admin, "/ws", &[]).expect("open /ws");
    ws_next(&mut calm).expect("hello");
    for _ in 0..10 {
        calm.send(Message::Ping(b"ok".to_vec().into())).expect("ping");
        std::thread::sleep(Duration::from_millis(60));
    }
    ws_wait(&mut calm, SHOW_WITHIN, |m| m["type"] == "stats");
}

#[test]
fn health_and_readiness() {
    // One relay port: readiness follows its use.
    let config = config_with(&["udp"]);
    let (min, max) = relay_range_of(&config).expect("relay range");
    let config = config.replace(&format!("port-max = {max}"), &format!("port-max = {min}"));
    let turnd = TurndProcess::start(&format!("{config}\n[admin]\naddress = \"127.0.0.1:0\"\n"), &[]);
    let admin = turnd.admin_addr();
    assert_eq!(get(admin, "/healthz", &[]).body, "ok\n");
    let ready = |want: u16| {
        let deadline = Instant::now() + SHOW_WITHIN;
        loop {
            let r = get(admin, "/readyz", &[]);
            if r.status == want {
                return r.body;
            }
            assert!(Instant::now() < deadline, "/readyz never answered {want}: {r:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert_eq!(ready(200), "ready\n");
    let mut client = TurnClient::on_loopback(turnd.udp_addr(), USER, PASSWORD, REALM);
    client.allocate_relay();
    assert_eq!(ready(503), "not ready: no relay ports available\n");
    client.refresh(0).expect("delete");
    ready(200);
    assert_eq!(get(admin, "/nope", &[]).status, 404);
}

#[test]
fn the_admin_listener_can_be_turned_off() {
    let mut turnd = TurndProcess::start(&format!("{}\n[admin]\nenabled = false\n", config_with(&["udp"])), &[]);
    let mut client = TurnClient::on_loopback(turnd.udp_addr(), USER, PASSWORD, REALM);
    client.allocate_relay();
    assert!(turnd.is_running());
    assert!(!turnd.logs().contains("listening on admin"), "{}", turnd.logs());
}

#[test]
fn admin_config_errors_name_the_key() {
    let parse = |admin: &str| {
        let text = format!("{}\n[admin]\n{admin}", config_with(&["udp"]));
        turnd::config::Config::parse(&text, std::path::Path::new("t.toml")).map(|c| c.admin)
    };
    let defaults = parse("").expect("defaults");
    assert!(defaults.enabled && defaults.token.is_none() && !defaults.metrics_require_token);
    assert_eq!((defaults.address.to_string(), defaults.max_connections), ("127.0.0.1:9641".to_owned(), 16));
    assert_eq!(defaults.max_connections_per_source, 8);
    for (admin, key) in [
        ("token = \"short\"\n", "admin.token"),
        ("metrics-require-token = true\n", "admin.metrics-require-token"),
        ("max-connections = 0\n", "admin.max-connections"),
        ("max-connections-per-source = 0\n", "admin.max-connections-per-source"),
        ("max-connections = 4\nmax-connections-per-source = 5\n", "admin.max-connections-per-source"),
        ("port = 1\n", "port"),
        ("address = \"nowhere\"\n", "address"),
    ] {
        let err = parse(admin).expect_err(admin).to_string();
        assert!(err.contains(key), "{admin:?}: {err}");
    }
}

#[test]
fn the_dashboard_shows_the_live_allocation_count_in_headless_chromium() {
    let browser = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if !need_tool("node", "nodejs")
        || !need(std::path::Path::new("/usr/bin/chromium").exists(), "/usr/bin/chromium (package chromium)")
        || !need(browser.join("node_modules/playwright-core").exists(), "playwright-core (npm ci in tests/browser)")
    {
        return;
    }
    let turnd = start(&format!("token = \"{TOKEN}\"\n"));
    let admin = turnd.admin_addr();
    let peer = UdpEchoPeer::start();
    let mut clients: Vec<TurnClient> = (0..2).map(|_| relaying_client(&turnd, &peer, 1)).collect();
    let traffic = dashboard::Traffic::start(turnd.udp_addr(), peer.addr());

    let mut page = dashboard::Page::open(&browser, &format!("http://{admin}/#token={TOKEN}"));
    let served = |n: f64| scrape_until(admin, "the allocation count", |t| is(t, "turnd_allocations", n));
    served(3.0); // two clients plus the traffic generator
    page.expect(3);
    // Live: the page follows the server without a reload.
    let mut intruder = TurnClient::on_loopback(turnd.udp_addr(), USER, "wrong password", REALM);
    intruder.request(stun_codec::rfc5766::methods::ALLOCATE, vec![]);
    clients.pop().expect("a client").refresh(0).expect("delete");
    served(2.0);
    page.expect(2);
    // A few chart points; a full chart when taking the README's picture.
    let screenshot = std::env::var("TURND_DASHBOARD_SCREENSHOT").map(std::path::PathBuf::from);
    std::thread::sleep(Duration::from_secs(if screenshot.is_ok() { 45 } else { 3 }));
    let dir = TempDir::new("turnd-dashboard");
    let path = screenshot.unwrap_or_else(|_| dir.path().join("dashboard.png"));
    page.screenshot(&path);
    assert!(std::fs::metadata(&path).is_ok_and(|m| m.len() > 10_000), "no screenshot at {}", path.display());
    let report = page.quit();
    assert_eq!(report["problems"], json!([]), "the page logged errors: {report}");
    assert_eq!(report["foreign"], json!([]), "the page loaded something from elsewhere: {report}");
    drop(traffic);
}

mod dashboard {
    //! The Node side of the dashboard test (tests/browser/dashboard.mjs), driven over stdio.
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Child, ChildStdin, Command, Stdio};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{mpsc, Arc};
    use std::thread::JoinHandle;

    /// How long one page command may take (the script waits up to 15 s itself).
    const STEP: Duration = Duration::from_secs(40);

    pub struct Page {
        child: Child,
        stdin: Option<ChildStdin>,
        lines: mpsc::Receiver<String>,
        seen: Vec<String>,
    }

    impl Page {
        pub fn open(dir: &std::path::Path, url: &str) -> Page {
            let mut child = Command::new("node")
                .arg(dir.join("dashboard.mjs"))
                .arg(url)
                .current_dir(dir)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn node");
            let stdout = child.stdout.take().expect("piped stdout");
            let (tx, lines) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
            Page { stdin: child.stdin.take(), child, lines, seen: Vec::new() }
        }

        fn command(&mut self, command: &str, reply: &str) -> String {
            let stdin = self.stdin.as_mut().expect("the page is open");
            writeln!(stdin, "{command}").expect("talk to the page");
            let deadline = Instant::now() + STEP;
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                match self.lines.recv_timeout(left) {
                    Ok(line) if line.starts_with(reply) => return line,
                    Ok(line) => self.seen.push(line),
                    Err(_) => break,
                }
            }
            panic!("the page did not answer {command:?} with {reply:?}: {:?}", self.seen);
        }

        /// Waits until the page shows `n` allocations (and lists them).
        pub fn expect(&mut self, n: usize) {
            self.command(&format!("expect {n}"), &format!("shown {n}"));
        }

        pub fn screenshot(&mut self, path: &std::path::Path) {
            self.command(&format!("screenshot {}", path.display()), "saved");
        }

        /// Closes the browser; returns its report.
        pub fn quit(mut self) -> Value {
            let line = self.command("quit", "report ");
            serde_json::from_str(&line["report ".len()..]).expect("a JSON report")
        }
    }

    impl Drop for Page {
        fn drop(&mut self) {
            self.stdin.take();
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Relayed traffic in both directions until dropped (at most a minute), so the
    /// dashboard's rates and chart have something to show.
    pub struct Traffic {
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
    }

    impl Traffic {
        pub fn start(server: SocketAddr, peer: SocketAddr) -> Traffic {
            let mut client = TurnClient::on_loopback(server, USER, PASSWORD, REALM);
            client.allocate_relay();
            client.permit(peer);
            client.bind_channel(CHANNEL, peer);
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            let thread = std::thread::spawn(move || {
                let until = Instant::now() + Duration::from_secs(60);
                while !flag.load(Ordering::Relaxed) && Instant::now() < until {
                    // 50 packets a second each way, their size swinging over 20 s
                    // between 200 and 1200 bytes (80 to 480 kbit/s).
                    let phase = (Instant::now() - (until - Duration::from_secs(60))).as_millis() % 20_000;
                    let size = 200 + (1000 * phase.abs_diff(10_000) / 10_000) as usize;
                    client.send_channel(CHANNEL, &vec![0x55; size]);
                    let _ = client.recv_channel(Duration::from_millis(20));
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
            Traffic { stop, thread: Some(thread) }
        }
    }

    impl Drop for Traffic {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }
}

#[test]
fn a_revocation_ends_the_users_allocations_and_holds_across_a_reload_until_lifted() {
    let turnd = start(&format!("token = \"{TOKEN}\"\n"));
    let bearer = format!("Bearer {TOKEN}");
    let mut ws = ws_connect(turnd.admin_addr(), "/ws", &[("Authorization", &bearer)]).expect("open /ws");
    ws_next(&mut ws).expect("hello");
    let mut client = TurnClient::on_loopback(turnd.udp_addr(), USER, PASSWORD, REALM);
    client.allocate_relay();

    ws_send(&mut ws, json!({"op": "revoke", "user": USER, "req": 1}));
    let revoked = ws_wait(&mut ws, SHOW_WITHIN, |m| m["type"] == "revoked");
    assert_eq!((revoked["req"].as_u64(), revoked["count"].as_u64()), (Some(1), Some(1)), "{revoked}");
    assert_eq!(client.refresh(600), Err(401), "the allocation is gone and the user refused");
    let mut fresh = TurnClient::on_loopback(turnd.udp_addr(), USER, PASSWORD, REALM);
    let answer = fresh.request(
        stun_codec::rfc5766::methods::ALLOCATE,
        vec![stun_codec::rfc5766::attributes::RequestedTransport::new(17).into()],
    );
    assert_eq!(turn_client::error_code(&answer), Some(401));

    // A reload keeps it.
    // SAFETY: kill(2) on the pid of a child this test started.
    unsafe { libc::kill(turnd.pid() as libc::pid_t, libc::SIGHUP) };
    let deadline = Instant::now() + SHOW_WITHIN;
    while !turnd.logs().contains("configuration reloaded") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(turnd.logs().contains("configuration reloaded"), "no reload");
    let answer = fresh.request(
        stun_codec::rfc5766::methods::ALLOCATE,
        vec![stun_codec::rfc5766::attributes::RequestedTransport::new(17).into()],
    );
    assert_eq!(turn_client::error_code(&answer), Some(401), "revoked after the reload too");

    ws_send(&mut ws, json!({"op": "list_revocations", "req": 2}));
    let list = ws_wait(&mut ws, SHOW_WITHIN, |m| m["type"] == "revocations");
    assert_eq!(list["revocations"], json!([{"user": USER, "lapses_at": null}]), "{list}");
    ws_send(&mut ws, json!({"op": "unrevoke", "user": USER, "req": 3}));
    assert_eq!(ws_wait(&mut ws, SHOW_WITHIN, |m| m["type"] == "unrevoked")["lifted"], true);
    let mut again = TurnClient::on_loopback(turnd.udp_addr(), USER, PASSWORD, REALM);
    again.allocate_relay();

    // Without the token: refused like any admin action.
    let mut plain = ws_connect(turnd.admin_addr(), "/ws", &[]).expect("open /ws");
    ws_next(&mut plain).expect("hello");
    ws_send(&mut plain, json!({"op": "revoke", "user": USER, "req": 4}));
    assert_eq!(ws_wait(&mut plain, SHOW_WITHIN, |m| m["type"] == "error")["code"], "unauthorized");
}
