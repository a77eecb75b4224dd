//! The admin plane against the real binary on loopback: `/metrics` moving with a live
//! allocation, promtool, the `/ws` stream and its admin actions, tokens, slow clients,
//! the connection cap, health, config, and the dashboard in headless Chromium.
mod common;
#[path = "admin/http.rs"]
mod http;
#[path = "admin/turn_client.rs"]
mod turn_client;

use common::*;
use http::{get, metric, scrape, ws_connect, ws_next, ws_send, ws_wait};
use serde_json::{json, Value};
use std::net::SocketAddr;
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
    let mut client = TurnClient::new(turnd.udp_addr(), USER, PASSWORD, REALM);
    client.allocate();
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
    let mut intruder = TurnClient::new(turnd.udp_addr(), USER, "wrong password", REALM);
    let refused = intruder.request(stun_codec::rfc5766::methods::ALLOCATE, vec![]);
    assert_eq!(turn_client::error_code(&refused), Some(401));

    let up = "turnd_relayed_bytes_total{direction=\"client_to_peer\",transport=\"udp\"}";
    let down = "turnd_relayed_bytes_total{direction=\"peer_to_client\",transport=\"udp\"}";
    let live = scrape_until(admin, "the allocation and its traffic", |t| {
        is(t, "turnd_allocations", 1.0) && is(t, down, 1000.0)
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
    at_least("turnd_requests_total{method=\"allocate\",result=\"success\"}", 1.0);
    at_least("turnd_requests_total{method=\"allocate\",result=\"error\"}", 2.0);
    at_least("turnd_error_responses_total{code=\"401\"}", 2.0);
    at_least("turnd_auth_failures_total{reason=\"bad_integrity\"}", 1.0);
    at_least("turnd_request_duration_seconds_count", 5.0);
    at_least("process_resident_memory_bytes", 1.0);
    at_least("process_open_fds", 3.0);

    client.refresh(0).expect("delete the allocation");
    let after = scrape_until(admin, "the allocation gone", |t| is(t, "turnd_allocations", 0.0));
    for (series, value) in [
        ("turnd_permissions", 0.0),
        ("turnd_channels", 0.0),
        ("turnd_relay_ports_in_use", 0.0),
        ("turnd_allocation_lifetime_seconds_count", 1.0),
        ("turnd_allocation_lifetime_seconds_bucket{le=\"+Inf\"}", 1.0),
        ("turnd_allocations_expired_total", 0.0),
    ] {
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
    assert!((500..=3000).contains(&gap), "snapshots {gap} ms apart");

    // Intervals are clamped to what the loop can give.
    ws_send(&mut ws, json!({"op": "subscribe", "topics": ["allocations"], "interval_ms": 10, "req": 1}));
    let subscribed = ws_wait(&mut ws, SHOW_WITHIN, |m| m["type"] == "subscribed");
    assert_eq!(subscribed["req"], 1);
    assert_eq!(subscribed["interval_ms"], 1000);
    assert_eq!(subscribed["topics"], json!(["stats", "allocations"]));

    let mut client = TurnClient::new(turnd.udp_addr(), USER, PASSWORD, REALM);
    let relay = client.allocate();
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
    let mut a = TurnClient::new(turnd.udp_addr(), USER, PASSWORD, REALM);
    let mut b = TurnClient::new(turnd.udp_addr(), USER, PASSWORD, REALM);
    a.allocate();
    b.allocate();
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
        for path in ["/", "/readyz", "/dashboard.css"] {
            assert_eq!(get(admin, path, &[]).status, 401, "{path}");
            // (/readyz may say 503 for a moment, until the loop's first report.)
            let r = get(admin, path, &[&bearer]);
            assert!(r.status == 200 || (path == "/readyz" && r.status == 503), "{path}: {r:?}");
        }
        assert_eq!(get(admin, "/healthz", &[]).status, 200);
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
    let mut churn = TurnClient::new(turnd.udp_addr(), USER, PASSWORD, REALM);
    let mut worst = Duration::ZERO;
    for i in 0..CHURN as u32 {
        churn.allocate();
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
fn connections_over_the_cap_are_refused() {
    let turnd = start("max-connections = 2\n");
    let admin = turnd.admin_addr();
    let first = ws_connect(admin, "/ws", &[]).expect("first");
    let _second = ws_connect(admin, "/ws", &[]).expect("second");
    let refused = get(admin, "/healthz", &[]);
    assert_eq!(refused.status, 503, "{refused:?}");
    drop(first);
    let deadline = Instant::now() + SHOW_WITHIN;
    while get(admin, "/healthz", &[]).status != 200 {
        assert!(Instant::now() < deadline, "a freed slot was never reused");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(metric(&scrape(admin), "turnd_admin_connections_refused_total").is_some_and(|n| n >= 1.0));
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
    let mut client = TurnClient::new(turnd.udp_addr(), USER, PASSWORD, REALM);
    client.allocate();
    assert_eq!(ready(503), "not ready: no relay ports available\n");
    client.refresh(0).expect("delete");
    ready(200);
    assert_eq!(get(admin, "/nope", &[]).status, 404);
}

#[test]
fn the_admin_listener_can_be_turned_off() {
    let mut turnd = TurndProcess::start(&format!("{}\n[admin]\nenabled = false\n", config_with(&["udp"])), &[]);
    let mut client = TurnClient::new(turnd.udp_addr(), USER, PASSWORD, REALM);
    client.allocate();
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
    for (admin, key) in [
        ("token = \"short\"\n", "admin.token"),
        ("metrics-require-token = true\n", "admin.metrics-require-token"),
        ("max-connections = 0\n", "admin.max-connections"),
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
    let mut intruder = TurnClient::new(turnd.udp_addr(), USER, "wrong password", REALM);
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
            let mut client = TurnClient::new(server, USER, PASSWORD, REALM);
            client.allocate();
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
