//! A fleet (`[cluster]`): three turnd nodes on distinct loopback addresses sharing a
//! real Redis (`redis-server`, started here on an ephemeral port with no persistence,
//! killed at the end). The front node sends every Allocate to the least-loaded serving
//! node with 300 Try Alternate; clients follow it and relay through the node named; a
//! killed node stops being named within the TTL; Redis killed mid-test stops nothing
//! and the fleet rejoins when it comes back. Third-party clients (aioice, coturn's
//! `turnutils_uclient`) are pointed at the front node to record what they do with a 300.

#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

mod common;
mod netns;

use common::http::{get, metric, scrape};
use common::turn_client::{error_code, TurnClient};
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use stun_codec::rfc5389::attributes::AlternateServer;
use turnd::client::Request;

const INTERVAL_MS: u64 = 200;
const TTL_MS: u64 = 1000;
const TOKEN: &str = "cluster-test-token-0123456789";

/// A `redis-server` child on `127.0.0.1:port`, no persistence; killed on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        Redis::start_on(port)
    }

    fn start_on(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        let redis = Redis { child, port };
        let up =
            wait_for(Duration::from_secs(10), || (redis.command(&["PING"]).as_deref() == Some("+PONG")).then_some(()));
        assert!(up.is_some(), "redis-server did not answer PING on port {port}");
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A `redis-server` answering TLS on a second port with `pki`'s server certificate
    /// (clients are not asked for one); the plain port stays for the test's own
    /// commands. Returns it and the TLS port.
    fn start_tls(pki: &common::ca::TestCa) -> (Redis, u16) {
        let ports: Vec<u16> = (0..2)
            .map(|_| {
                let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                listener.local_addr().unwrap().port()
            })
            .collect();
        let (port, tls_port) = (ports[0], ports[1]);
        let (cert, key, ca) =
            (pki.cert.display().to_string(), pki.key.display().to_string(), pki.ca.display().to_string());
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--tls-port", &tls_port.to_string(), "--tls-cert-file", &cert, "--tls-key-file", &key])
            .args(["--tls-ca-cert-file", &ca, "--tls-auth-clients", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        let redis = Redis { child, port };
        let up =
            wait_for(Duration::from_secs(10), || (redis.command(&["PING"]).as_deref() == Some("+PONG")).then_some(()));
        assert!(up.is_some(), "redis-server (TLS) did not answer PING on port {port}");
        (redis, tls_port)
    }

    /// One command in RESP; the first line of the answer.
    fn command(&self, args: &[&str]) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out += &format!("${}\r\n{a}\r\n", a.len());
        }
        stream.write_all(out.as_bytes()).ok()?;
        let mut buf = [0u8; 512];
        let n = stream.read(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).lines().next()?.to_owned())
    }

    /// One command; the whole answer as text (read until the server goes quiet).
    fn raw(&self, args: &[&str]) -> String {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else { return String::new() };
        stream.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out += &format!("${}\r\n{a}\r\n", a.len());
        }
        stream.write_all(out.as_bytes()).unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 || answer.len() > 1 << 20 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&answer).into_owned()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `f` every 20 ms until it gives a value or `timeout` passes.
fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A free UDP port on `ip` (bound, then let go; the node binds it right after).
fn free_udp_port(ip: &str) -> u16 {
    UdpSocket::bind((ip, 0)).unwrap().local_addr().unwrap().port()
}

/// A node's config: one UDP listener on `ip`, registry in `redis`, `extra` in [cluster].
fn node_config(ip: &str, port: u16, redis: &str, id: &str, extra: &str) -> String {
    let timing = format!("publish-interval = \"{INTERVAL_MS}ms\"\nttl = \"{TTL_MS}ms\"\n{extra}");
    node_config_timed(ip, port, redis, id, &timing)
}

/// [`node_config`] with the cluster's timing (`publish-interval`, `ttl`) left to `extra`
/// (none there: the defaults).
fn node_config_timed(ip: &str, port: u16, redis: &str, id: &str, extra: &str) -> String {
    let (min, max) = relay_port_range();
    format!(
        "realm = \"{REALM}\"\n\n[[listen]]\ntransport = \"udp\"\naddress = \"{ip}:{port}\"\n\n\
         [relay]\nport-min = {min}\nport-max = {max}\nallowed-peers = [\"127.0.0.0/8\"]\nallow-host-peers = true\n\n\
         [[auth.user]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\n\n\
         [admin]\naddress = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\n\
         [cluster]\nredis = \"{redis}\"\nnode-id = \"{id}\"\n{extra}"
    )
}

/// A serving node on `ip`, advertising its own listener.
fn serving_node(ip: &str, redis: &Redis, id: &str) -> TurndProcess {
    let port = free_udp_port(ip);
    TurndProcess::start(&node_config(ip, port, &redis.url(), id, &format!("advertise-ipv4 = \"{ip}:{port}\"\n")), &[])
}

fn front_node(redis: &Redis) -> TurndProcess {
    let port = free_udp_port("127.0.0.2");
    TurndProcess::start(&node_config("127.0.0.2", port, &redis.url(), "front", "front = true\n"), &[])
}

/// What the front node answers a fresh client's Allocate: `Ok(alternate)` for a 300,
/// `Err(code or 0 for success)` otherwise (a success is released at once).
fn allocate_at(server: SocketAddr) -> Result<SocketAddr, u16> {
    // A fresh loopback source each time: polling from one address would meet the
    // per-source limit on unauthenticated requests (every first Allocate is one).
    let r = random_u64();
    let source = format!("127.1.{}.{}:0", (r >> 8) as u8, (r as u8).max(1));
    let mut client = TurnClient::new(&source, server, USER, PASSWORD, REALM);
    let request = Request::allocate();
    let response = client.request(request.method, request.attributes);
    match error_code(&response) {
        Some(300) => Ok(response.get_attribute::<AlternateServer>().expect("ALTERNATE-SERVER in a 300").address()),
        Some(code) => Err(code),
        None => {
            let _ = client.refresh(0);
            Err(0)
        }
    }
}

fn cluster_metric(node: &TurndProcess, name: &str) -> Option<f64> {
    metric(&scrape(node.admin_addr()), name)
}

/// Waits until `node` has read `n` live nodes from the registry.
fn wait_nodes(node: &TurndProcess, n: f64) {
    let seen =
        wait_for(Duration::from_secs(10), || (cluster_metric(node, "turnd_cluster_nodes") == Some(n)).then_some(()));
    assert!(seen.is_some(), "{n} nodes not seen:\n{}", node.logs());
}

fn need_redis() -> bool {
    need_tool("redis-server", "redis-server")
}

#[test]
fn the_front_node_sends_clients_to_the_least_loaded_node_and_they_relay_there() {
    if !need_redis() {
        return;
    }
    let redis = Redis::start();
    let b = serving_node("127.0.0.3", &redis, "b");
    let c = serving_node("127.0.0.4", &redis, "c");
    let front = front_node(&redis);
    let peer = UdpEchoPeer::start();
    wait_nodes(&front, 3.0);
    // Both serving nodes are empty: the tie goes to the lower id, "b".
    let first = wait_for(Duration::from_secs(5), || allocate_at(front.udp_addr()).ok());
    assert_eq!(first, Some(b.udp_addr()), "front named {first:?}\n{}", front.logs());
    // The client follows the 300 and relays through the node named.
    let mut client = TurnClient::on_loopback(b.udp_addr(), USER, PASSWORD, REALM);
    let relayed = client.allocate_relay();
    assert_eq!(relayed.ip().to_string(), "127.0.0.3", "relayed from the node named");
    client.permit(peer.addr());
    client.send_indication(peer.addr(), b"through b");
    let (_, from, data) = client.recv_data().expect("the echo through b");
    assert_eq!((from, data.as_slice()), (Some(peer.addr()), &b"through b"[..]));
    // "b" now holds an allocation: within a publish interval or two the front names "c".
    let started = Instant::now();
    let next = wait_for(Duration::from_secs(5), || allocate_at(front.udp_addr()).ok().filter(|a| *a == c.udp_addr()));
    assert_eq!(next, Some(c.udp_addr()), "the less-loaded node is named next");
    eprintln!("load change seen by the front after {:?}", started.elapsed());
    // The front serves nothing itself, and says why it redirected (counters reach
    // /metrics with the workers' next snapshot, so wait for them).
    let redirects = "turnd_redirects_total{reason=\"front\"}";
    let counted = wait_for(Duration::from_secs(5), || {
        let text = scrape(front.admin_addr());
        (metric(&text, redirects) >= Some(2.0)).then_some(text)
    });
    let last = scrape(front.admin_addr());
    let text = counted.unwrap_or_else(|| panic!("{redirects} below 2: {:?}", metric(&last, redirects)));
    assert_eq!(metric(&text, "turnd_cluster_nodes"), Some(3.0), "turnd_cluster_nodes");
    assert_eq!(metric(&text, "turnd_cluster_redis_up"), Some(1.0));
    let ready = wait_for(Duration::from_secs(5), || {
        let ready = get(front.admin_addr(), "/readyz", &[]);
        (ready.status == 200).then_some(ready)
    });
    let body = ready.expect("the front is ready").body;
    assert!(body.contains("cluster: redis up, 3 nodes"), "{body}");
}

#[test]
fn a_killed_node_stops_being_named_within_the_ttl_and_bad_entries_are_ignored() {
    if !need_redis() {
        return;
    }
    let redis = Redis::start();
    let mut b = serving_node("127.0.0.3", &redis, "b");
    let c = serving_node("127.0.0.4", &redis, "c");
    let front = front_node(&redis);
    // Entries that must never be trusted: not JSON, a wrong family, a key of another id.
    redis.command(&["SET", "turnd:node:junk", "{not json"]).unwrap();
    let spoof = r#"{"id":"a","state":"serving","ipv4":"[::1]:3478","ipv6":null,"domain":null,"allocations":0,"capacity":null,"relayed_bps":0,"unix_ms":1}"#;
    redis.command(&["SET", "turnd:node:a", spoof]).unwrap();
    let other = r#"{"id":"zz","state":"serving","ipv4":"127.0.0.9:3478","ipv6":null,"domain":null,"allocations":0,"capacity":null,"relayed_bps":0,"unix_ms":1}"#;
    redis.command(&["SET", "turnd:node:aa", other]).unwrap();
    wait_nodes(&front, 3.0);
    assert_eq!(wait_for(Duration::from_secs(5), || allocate_at(front.udp_addr()).ok()), Some(b.udp_addr()));
    let bad = wait_for(Duration::from_secs(5), || {
        cluster_metric(&front, "turnd_cluster_bad_entries_total").filter(|n| *n >= 3.0)
    });
    assert!(bad.is_some(), "the three bad entries are counted");
    let killed = Instant::now();
    b.stop_with(libc::SIGKILL, Duration::from_secs(5));
    let moved = wait_for(Duration::from_secs(5), || allocate_at(front.udp_addr()).ok().filter(|a| *a == c.udp_addr()));
    let took = killed.elapsed();
    assert_eq!(moved, Some(c.udp_addr()));
    eprintln!(
        "MEASURED: a killed node was last named {took:?} after SIGKILL (ttl {TTL_MS} ms, interval {INTERVAL_MS} ms)"
    );
    // The bound: the entry's TTL plus one read interval, plus the test's polling.
    assert!(took <= Duration::from_millis(TTL_MS + 2 * INTERVAL_MS + 300), "took {took:?}");
    // And it stays gone.
    for _ in 0..5 {
        assert_eq!(allocate_at(front.udp_addr()), Ok(c.udp_addr()));
    }
}

#[test]
fn redis_killed_mid_test_stops_no_relaying_and_the_fleet_rejoins_when_it_returns() {
    if !need_redis() {
        return;
    }
    let mut redis = Redis::start();
    let port = redis.port;
    let b = serving_node("127.0.0.3", &redis, "b");
    let front = front_node(&redis);
    let peer = UdpEchoPeer::start();
    assert_eq!(wait_for(Duration::from_secs(5), || allocate_at(front.udp_addr()).ok()), Some(b.udp_addr()));
    let mut client = TurnClient::on_loopback(b.udp_addr(), USER, PASSWORD, REALM);
    client.allocate_relay();
    client.permit(peer.addr());

    redis.kill();
    let killed = Instant::now();
    // Relaying goes on throughout, and requests are answered.
    let mut echoed = 0;
    let down = wait_for(Duration::from_secs(5), || {
        client.send_indication(peer.addr(), b"during the outage");
        if client.recv_data().is_some_and(|(_, _, d)| d == b"during the outage") {
            echoed += 1;
        }
        (cluster_metric(&front, "turnd_cluster_redis_up") == Some(0.0)).then(|| killed.elapsed())
    });
    let down = down.expect("the front reports Redis down");
    eprintln!("MEASURED: redis_up went to 0 {down:?} after Redis was killed");
    // A node without Redis is still ready (its first snapshot comes within a second).
    let ready = wait_for(Duration::from_secs(5), || {
        let ready = get(front.admin_addr(), "/readyz", &[]);
        (ready.status == 200).then_some(ready)
    });
    let ready = ready.expect("the front is ready without Redis");
    assert!(ready.body.contains("redis unreachable"), "{}", ready.body);
    // Within the TTL the front stops naming nodes it cannot see and serves itself.
    let served =
        wait_for(Duration::from_secs(5), || (allocate_at(front.udp_addr()) == Err(0)).then(|| killed.elapsed()));
    eprintln!("MEASURED: the front served Allocates itself {served:?} after Redis was killed");
    assert!(served.expect("the front serves without Redis") <= Duration::from_millis(TTL_MS + 2 * INTERVAL_MS + 500));
    assert_eq!(client.refresh(600), Ok(()), "the node named before keeps answering");
    client.send_indication(peer.addr(), b"still relaying");
    assert_eq!(client.recv_data().map(|(_, _, d)| d), Some(b"still relaying".to_vec()));
    assert!(echoed > 0, "relayed during the outage");

    let redis = Redis::start_on(port);
    let restarted = Instant::now();
    let back = wait_for(Duration::from_secs(10), || allocate_at(front.udp_addr()).ok());
    assert_eq!(back, Some(b.udp_addr()), "the fleet rejoins");
    eprintln!("MEASURED: redirects resumed {:?} after Redis restarted", restarted.elapsed());
    assert_eq!(cluster_metric(&front, "turnd_cluster_redis_up"), Some(1.0));
    assert!(cluster_metric(&front, "turnd_cluster_redis_failures_total").unwrap() >= 1.0);
    drop(redis);
}

/// A front node and one serving node, for the third-party clients.
fn small_fleet(redis: &Redis) -> (TurndProcess, TurndProcess) {
    let b = serving_node("127.0.0.3", redis, "b");
    let front = front_node(redis);
    assert_eq!(wait_for(Duration::from_secs(5), || allocate_at(front.udp_addr()).ok()), Some(b.udp_addr()));
    (front, b)
}

fn allocations_on(node: &TurndProcess) -> f64 {
    metric(&scrape(node.admin_addr()), "turnd_allocations_created_total").unwrap_or(0.0)
}

#[test]
fn aioice_pointed_at_the_front_node() {
    if !need_redis() || !need(python_module_available("aioice"), "Python module `aioice` (pip install aioice)") {
        return;
    }
    let redis = Redis::start();
    let (front, b) = small_fleet(&redis);
    let peer = UdpEchoPeer::start();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/aioice_turn.py");
    let out = run_with_timeout(
        Command::new(python())
            .arg(script)
            .args(["--server", &front.udp_addr().to_string(), "--peer", &peer.addr().to_string()])
            .args(["--user", USER, "--password", PASSWORD, "--transport", "udp", "--count", "5"]),
        Duration::from_secs(60),
    );
    // aioice (1.x) does not follow 300: its Allocate fails with the code, and no
    // allocation is made anywhere.
    assert_eq!(out.code(), Some(2), "{out}");
    assert!(out.stdout.contains("ALLOCATE FAILED: TransactionFailed error_code=300"), "{out}");
    std::thread::sleep(Duration::from_millis(1200)); // one snapshot, so a stray allocation would show
    assert_eq!(allocations_on(&b), 0.0);
}

#[test]
fn uclient_pointed_at_the_front_node() {
    if !need_redis() || !need_tool("turnutils_uclient", "coturn") {
        return;
    }
    let redis = Redis::start();
    let (front, b) = small_fleet(&redis);
    let peer = UdpEchoPeer::start();
    let server = front.udp_addr();
    // The front's own Allocates so far (served before it had seen the registry).
    let created = |node: &TurndProcess| node.logs().matches("allocation created").count();
    let front_before = created(&front);
    let out = run_with_timeout(
        Command::new("turnutils_uclient")
            .args(["-c", "-p", &server.port().to_string(), "-u", USER, "-w", PASSWORD, "-n", "5", "-l", "100"])
            .args(["-e", &peer.addr().ip().to_string(), "-r", &peer.addr().port().to_string()])
            .arg(server.ip().to_string()),
        Duration::from_secs(30),
    );
    // uclient follows the 300 (for its probe allocation and the real one) and relays
    // through the node named.
    assert!(out.success(), "{out}");
    assert!(out.stdout.matches("error 300 (Try Alternate)").count() >= 1, "{out}");
    assert!(out.stdout.contains("tot_send_msgs=5, tot_recv_msgs=5"), "{out}");
    assert!(out.stdout.contains("Total lost packets 0"), "{out}");
    assert!(wait_for(Duration::from_secs(3), || (allocations_on(&b) >= 1.0).then_some(())).is_some());
    assert_eq!(created(&front), front_before, "the front allocated nothing for uclient:\n{out}");
}

/// `turnd ctl --admin ADDR ARGS...` (the tests' admin listeners are on loopback).
fn ctl(node: &TurndProcess, args: &[&str]) -> CmdOutput {
    let mut command = Command::new(turnd_binary());
    command.arg("ctl").arg("--admin").arg(node.admin_addr().to_string()).args(args);
    for var in ["TURND_ADMIN_TOKEN", "TURND_ADMIN_TOKEN_FILE", "TURND_CONFIG", "TURND_ADMIN_ADDRESS"] {
        command.env_remove(var);
    }
    run_with_timeout(command.env("TURND_ADMIN_TOKEN", TOKEN), Duration::from_secs(15))
}

#[test]
fn a_revocation_on_one_node_cuts_the_users_allocations_on_every_node() {
    if !need_redis() {
        return;
    }
    let redis = Redis::start();
    let a = serving_node("127.0.0.2", &redis, "a");
    let b = serving_node("127.0.0.3", &redis, "b");
    let c = serving_node("127.0.0.4", &redis, "c");
    let peer = UdpEchoPeer::start();
    let mut on_b = TurnClient::on_loopback(b.udp_addr(), USER, PASSWORD, REALM);
    let mut on_c = TurnClient::on_loopback(c.udp_addr(), USER, PASSWORD, REALM);
    for client in [&mut on_b, &mut on_c] {
        client.allocate_relay();
        client.permit(peer.addr());
    }
    // Every node has synced at least once (an empty list) before the revoke.
    assert!(wait_for(Duration::from_secs(5), || (cluster_metric(&c, "turnd_cluster_nodes") == Some(3.0))
        .then_some(()))
    .is_some());
    let out = ctl(&a, &["revoke", USER]);
    assert!(out.success(), "{out}");
    let revoked = Instant::now();
    let cut = wait_for(Duration::from_secs(3), || {
        (on_b.refresh(600).is_err() && on_c.refresh(600).is_err()).then(|| revoked.elapsed())
    });
    let cut = cut.expect("alice's allocations on b and c end");
    eprintln!("MEASURED: a revoke on node a ended the user's allocations on b and c {cut:?} later (interval {INTERVAL_MS} ms)");
    assert!(cut < Duration::from_secs(1), "took {cut:?}");
    on_b.send_indication(peer.addr(), b"after the revoke");
    assert!(on_b.recv_data().is_none(), "relayed for a revoked user");
    assert!(redis.command(&["SISMEMBER", "turnd:revoked", USER]).as_deref() == Some(":1"));
    // Lifted on c: alice may allocate on b again.
    let out = ctl(&c, &["unrevoke", USER]);
    assert!(out.success(), "{out}");
    let lifted = wait_for(Duration::from_secs(3), || {
        let mut again = TurnClient::on_loopback(b.udp_addr(), USER, PASSWORD, REALM);
        again.allocate(Vec::new()).is_ok().then_some(())
    });
    assert!(lifted.is_some(), "the lift on c reached b");
    assert!(redis.command(&["SISMEMBER", "turnd:revoked", USER]).as_deref() == Some(":0"));
}

/// A serving node with the cluster's timing in `timing` (empty: the defaults,
/// `publish-interval` 1 s and `ttl` 3 s).
fn timed_node(ip: &str, redis: &Redis, id: &str, timing: &str) -> TurndProcess {
    let port = free_udp_port(ip);
    let extra = format!("advertise-ipv4 = \"{ip}:{port}\"\n{timing}");
    TurndProcess::start(&node_config_timed(ip, port, &redis.url(), id, &extra), &[])
}

/// Waits until every node's revocation subscription is `up` (1) or down (0).
fn wait_subscribed(nodes: &[&TurndProcess], up: f64) {
    for node in nodes {
        let seen = wait_for(Duration::from_secs(15), || {
            (cluster_metric(node, "turnd_cluster_revocations_subscribed") == Some(up)).then_some(())
        });
        assert!(seen.is_some(), "revocations_subscribed never {up}; log tail:\n{}", log_tail(node));
    }
}

/// The last 40 lines of a node's log (for a failure message, after its cause).
fn log_tail(node: &TurndProcess) -> String {
    let logs = node.logs();
    let lines: Vec<&str> = logs.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Revokes `USER` on `a` and waits (up to `limit`) until the allocations of
/// `clients` (on other nodes) are refused; returns how long that took after `turnd
/// ctl` returned.
fn revoke_and_time_the_cut(a: &TurndProcess, clients: &mut [&mut TurnClient], limit: Duration) -> Duration {
    let out = ctl(a, &["revoke", USER]);
    assert!(out.success(), "{out}");
    let revoked = Instant::now();
    let cut = wait_for(limit, || clients.iter_mut().all(|c| c.refresh(600).is_err()).then(|| revoked.elapsed()));
    cut.unwrap_or_else(|| {
        panic!("the revoke on a did not reach the other nodes in {limit:?}; a's log tail:\n{}", log_tail(a))
    })
}

/// Unrevokes `USER` on `c` and waits (up to `limit`) until `b` lets the user allocate
/// (a fresh source address per try: see `allocate_at`); returns how long that took.
fn lift_and_time_the_allocation(c: &TurndProcess, b: &TurndProcess, limit: Duration) -> Duration {
    let out = ctl(c, &["unrevoke", USER]);
    assert!(out.success(), "{out}");
    let lifted = Instant::now();
    let again = wait_for(limit, || (allocate_at(b.udp_addr()) == Err(0)).then(|| lifted.elapsed()));
    again.unwrap_or_else(|| panic!("the lift on c did not reach b in {limit:?}; b's log tail:\n{}", log_tail(b)))
}

fn pushes(node: &TurndProcess, direction: &str) -> f64 {
    cluster_metric(node, &format!("turnd_cluster_revocation_pushes_total{{direction=\"{direction}\"}}")).unwrap_or(0.0)
}

/// `USER`'s UDP allocation on `node`, with a permission for `peer`.
fn allocated(node: &TurndProcess, peer: &UdpEchoPeer) -> TurnClient {
    let mut client = TurnClient::on_loopback(node.udp_addr(), USER, PASSWORD, REALM);
    client.allocate_relay();
    client.permit(peer.addr());
    client
}

#[test]
fn with_the_default_intervals_a_revocation_reaches_every_node_within_a_second() {
    if !need_redis() {
        return;
    }
    let redis = Redis::start();
    let a = timed_node("127.0.0.2", &redis, "a", "");
    let b = timed_node("127.0.0.3", &redis, "b", "");
    let c = timed_node("127.0.0.4", &redis, "c", "");
    wait_subscribed(&[&a, &b, &c], 1.0);
    let peer = UdpEchoPeer::start();
    let (mut on_b, mut on_c) = (allocated(&b, &peer), allocated(&c, &peer));

    let cut = revoke_and_time_the_cut(&a, &mut [&mut on_b, &mut on_c], Duration::from_secs(10));
    eprintln!(
        "MEASURED: with publish-interval 1s, a revoke on node a ended the user's allocations on b and c {cut:?} later"
    );
    assert!(cut < Duration::from_secs(1), "the revoke took {cut:?}");
    assert!(pushes(&a, "sent") >= 1.0 && pushes(&b, "received") >= 1.0 && pushes(&c, "received") >= 1.0);
    assert_eq!(redis.command(&["SISMEMBER", "turnd:revoked", USER]).as_deref(), Some(":1"));

    let again = lift_and_time_the_allocation(&c, &b, Duration::from_secs(10));
    eprintln!("MEASURED: with publish-interval 1s, an unrevoke on node c let the user allocate on b {again:?} later");
    assert!(again < Duration::from_secs(1), "the lift took {again:?}");

    // Garbage on the channel (anyone with Redis access can publish) is counted and
    // ignored; the subscription stays.
    let too_long = format!("revoke a {}", "x".repeat(700));
    for garbage in ["garbage", "revoke", "ban a alice", "revoke not/a/node alice", too_long.as_str()] {
        let subscribers = redis.command(&["PUBLISH", "turnd:revocations", garbage]);
        assert_eq!(subscribers.as_deref(), Some(":3"), "PUBLISH reached the three nodes");
    }
    for node in [&a, &b, &c] {
        let rejected = || cluster_metric(node, "turnd_cluster_revocation_messages_rejected_total");
        let counted = wait_for(Duration::from_secs(5), || (rejected() == Some(5.0)).then_some(()));
        assert!(counted.is_some(), "5 malformed messages published, {:?} counted", rejected());
        assert_eq!(cluster_metric(node, "turnd_cluster_revocations_subscribed"), Some(1.0));
    }
    assert_eq!(allocate_at(b.udp_addr()), Err(0), "garbage revoked nobody");
}

/// With a 30 s interval the merge cannot be what carries a change within a second:
/// only the push can. Redis restarted: the subscriptions come back and push again.
#[test]
fn a_revocation_is_pushed_without_waiting_for_the_interval_and_again_after_redis_restarts() {
    if !need_redis() {
        return;
    }
    let mut redis = Redis::start();
    let port = redis.port;
    let slow = "publish-interval = \"30s\"\nttl = \"90s\"\n";
    let a = timed_node("127.0.0.2", &redis, "a", slow);
    let b = timed_node("127.0.0.3", &redis, "b", slow);
    let c = timed_node("127.0.0.4", &redis, "c", slow);
    wait_subscribed(&[&a, &b, &c], 1.0);
    let peer = UdpEchoPeer::start();
    let (mut on_b, mut on_c) = (allocated(&b, &peer), allocated(&c, &peer));
    let cut = revoke_and_time_the_cut(&a, &mut [&mut on_b, &mut on_c], Duration::from_secs(5));
    eprintln!(
        "MEASURED: with publish-interval 30s, a revoke on node a ended the user's allocations on b and c {cut:?} later"
    );
    assert!(cut < Duration::from_secs(1), "the revoke took {cut:?}");
    let again = lift_and_time_the_allocation(&c, &b, Duration::from_secs(5));
    assert!(again < Duration::from_secs(1), "the lift took {again:?}");

    redis.kill();
    wait_subscribed(&[&a, &b, &c], 0.0);
    let redis = Redis::start_on(port);
    let restarted = Instant::now();
    wait_subscribed(&[&a, &b, &c], 1.0);
    eprintln!("MEASURED: the revocation subscriptions were back {:?} after Redis restarted", restarted.elapsed());
    let received = pushes(&b, "received");
    let mut on_b = allocated(&b, &peer);
    let cut = revoke_and_time_the_cut(&a, &mut [&mut on_b], Duration::from_secs(5));
    eprintln!("MEASURED: after the restart, a revoke on node a ended the user's allocation on b {cut:?} later");
    assert!(cut < Duration::from_secs(1), "the revoke after the restart took {cut:?}");
    assert!(pushes(&b, "received") > received, "no push counted on b after the restart");
    drop(redis);
}

/// Allocates as alice on `node`, relays one datagram each way through the echo peer,
/// then deletes the allocation: one usage record.
fn one_session(node: SocketAddr, peer: &UdpEchoPeer) {
    let mut client = TurnClient::on_loopback(node, USER, PASSWORD, REALM);
    client.allocate_relay();
    client.permit(peer.addr());
    client.send_indication(peer.addr(), b"ninebytes");
    assert_eq!(client.recv_data().map(|(_, _, d)| d), Some(b"ninebytes".to_vec()));
    assert_eq!(client.refresh(0), Ok(()));
}

const RECORD_PARTS: [&str; 5] = [
    r#""user":"alice""#,
    r#""realm":"turnd.test""#,
    r#""bytes_to_peer":9,"packets_to_peer":1,"bytes_to_client":9,"packets_to_client":1"#,
    r#""reason":"deleted""#,
    r#""transport":"udp""#,
];

#[test]
fn each_ended_allocation_is_a_usage_record_in_the_redis_stream() {
    if !need_redis() {
        return;
    }
    let redis = Redis::start();
    let b = serving_node("127.0.0.3", &redis, "b");
    let peer = UdpEchoPeer::start();
    one_session(b.udp_addr(), &peer);
    let found = wait_for(Duration::from_secs(5), || {
        let text = redis.raw(&["XRANGE", "turnd:usage", "-", "+"]);
        text.contains(r#""user":"alice""#).then_some(text)
    });
    let text = found.expect("a usage record in turnd:usage");
    for part in RECORD_PARTS.iter().chain(&[r#""node":"b""#, r#""relay":"127.0.0.3:"#]) {
        assert!(text.contains(part), "{part} not in {text}");
    }
    assert_eq!(redis.command(&["XLEN", "turnd:usage"]).as_deref(), Some(":1"));
    assert_eq!(cluster_metric(&b, "turnd_usage_records_written_total{sink=\"redis\"}"), Some(1.0));
}

#[test]
fn without_redis_usage_records_go_to_a_json_lines_file() {
    let dir = TempDir::new("turnd-usage");
    let path = dir.path().join("usage.jsonl");
    let config = format!("{}\n[usage]\nfile = \"{}\"\n", config_with(&["udp"]), path.display());
    let turnd = TurndProcess::start(&config, &[]);
    let peer = UdpEchoPeer::start();
    one_session(turnd.udp_addr(), &peer);
    one_session(turnd.udp_addr(), &peer);
    let lines = wait_for(Duration::from_secs(5), || {
        let text = std::fs::read_to_string(&path).ok()?;
        (text.lines().count() == 2).then_some(text)
    });
    let text = lines.expect("two records in the usage file");
    for line in text.lines() {
        let record: serde_json::Value = serde_json::from_str(line).expect("one JSON object a line");
        assert!(record["start_ms"].as_u64().unwrap() <= record["end_ms"].as_u64().unwrap());
        for part in RECORD_PARTS {
            assert!(line.contains(part), "{part} not in {line}");
        }
    }
    let written = "turnd_usage_records_written_total{sink=\"file\"}";
    let counted =
        wait_for(Duration::from_secs(5), || (metric(&scrape(turnd.admin_addr()), written) == Some(2.0)).then_some(()));
    assert!(counted.is_some(), "{written} is {:?}, not 2", metric(&scrape(turnd.admin_addr()), written));
    assert!(!scrape(turnd.admin_addr()).contains("turnd_cluster_redis_up"), "no cluster.redis, no Redis metrics");
}

/// A serving node whose users may hold `per_user` allocations (fleet-wide).
fn node_with_quota(ip: &str, redis: &Redis, id: &str, per_user: usize) -> TurndProcess {
    let port = free_udp_port(ip);
    let config = node_config(ip, port, &redis.url(), id, &format!("advertise-ipv4 = \"{ip}:{port}\"\n"))
        .replace("[cluster]", &format!("[limits]\nallocations-per-user = {per_user}\n\n[cluster]"))
        .replace("[[auth.user]]", "[[auth.user]]\nname = \"bob\"\npassword = \"bobsecret\"\n\n[[auth.user]]");
    TurndProcess::start(&config, &[])
}

#[test]
fn a_users_allocation_quota_holds_across_nodes() {
    if !need_redis() {
        return;
    }
    let redis = Redis::start();
    let b = node_with_quota("127.0.0.3", &redis, "b", 2);
    let c = node_with_quota("127.0.0.4", &redis, "c", 2);
    wait_nodes(&b, 2.0);
    wait_nodes(&c, 2.0);
    let mut on_b: Vec<TurnClient> =
        (0..2).map(|_| TurnClient::on_loopback(b.udp_addr(), USER, PASSWORD, REALM)).collect();
    for client in &mut on_b {
        client.allocate_relay();
    }
    let full = Instant::now();
    // Within about one publish interval, c counts alice's two allocations on b.
    let refused = wait_for(Duration::from_secs(3), || {
        let mut on_c = TurnClient::on_loopback(c.udp_addr(), USER, PASSWORD, REALM);
        match on_c.allocate(Vec::new()) {
            Err(486) => Some(full.elapsed()),
            Ok(_) => {
                let _ = on_c.refresh(0);
                None
            }
            Err(code) => panic!("unexpected {code}"),
        }
    });
    let refused = refused.expect("c refuses alice's third allocation with 486");
    eprintln!(
        "MEASURED: node c enforced alice's quota {refused:?} after her allocations on b (interval {INTERVAL_MS} ms)"
    );
    // Other users are not affected.
    let mut bob = TurnClient::on_loopback(c.udp_addr(), "bob", "bobsecret", REALM);
    assert!(bob.allocate(Vec::new()).is_ok());
    // One of alice's allocations on b ends: c admits her again.
    assert_eq!(on_b[0].refresh(0), Ok(()));
    let admitted = wait_for(Duration::from_secs(3), || {
        let mut on_c = TurnClient::on_loopback(c.udp_addr(), USER, PASSWORD, REALM);
        on_c.allocate(Vec::new()).is_ok().then_some(on_c)
    });
    let mut third = admitted.expect("c admits alice once she is under the quota");
    // And now b, which holds one and sees c's one, refuses her.
    let over = wait_for(Duration::from_secs(3), || {
        let mut again = TurnClient::on_loopback(b.udp_addr(), USER, PASSWORD, REALM);
        match again.allocate(Vec::new()) {
            Err(486) => Some(()),
            Ok(_) => {
                let _ = again.refresh(0);
                None
            }
            Err(code) => panic!("unexpected {code}"),
        }
    });
    assert!(over.is_some(), "b counts alice's allocation on c");
    let _ = third.refresh(0);
}

/// A node on `ip` with UDP and TCP on one port and TLS on another (certificate from
/// `pki`); `extra` goes in [cluster], with `{PORT}` replaced by the UDP/TCP port.
fn stream_node(ip: &str, redis: &Redis, id: &str, extra: &str, pki: &common::ca::TestCa) -> TurndProcess {
    let (port, tls_port) = (free_udp_port(ip), free_udp_port(ip));
    let extra = extra.replace("{PORT}", &port.to_string());
    let mut config = node_config(ip, port, &redis.url(), id, &extra);
    for (t, port) in [("tcp", port), ("tls", tls_port)] {
        config += &format!("\n[[listen]]\ntransport = \"{t}\"\naddress = \"{ip}:{port}\"\n");
    }
    TurndProcess::start(&pki.add_to(&config), &[])
}

/// A TURN client over a stream (TCP or TLS, from 127.0.0.1) asks `front` for an
/// allocation: the 300's ALTERNATE-SERVER and ALTERNATE-DOMAIN, and the client (its
/// nonce, which holds fleet-wide) to follow them with.
fn stream_redirect(
    mut stream: impl Read + Write,
) -> (Option<SocketAddr>, Option<String>, common::turn_client::StreamClient) {
    let mut client = common::turn_client::StreamClient::new(USER, PASSWORD, REALM);
    let request = Request::allocate();
    let response = client.request(&mut stream, request.method, request.attributes);
    assert_eq!(error_code(&response), Some(300), "a 300 from the front: {response:?}");
    let to = response.get_attribute::<AlternateServer>().map(|a| a.address());
    let domain = response
        .get_attribute::<turnd::stun::attributes::AlternateDomain>()
        .map(|d| String::from_utf8_lossy(d.value()).into_owned());
    (to, domain, client)
}

/// Allocates over `stream` with `client`, binds a channel to `peer` and has one
/// ChannelData frame echoed through the relay; the relayed address.
fn stream_relays(
    client: &mut common::turn_client::StreamClient,
    stream: &mut (impl Read + Write),
    peer: SocketAddr,
) -> SocketAddr {
    let (relayed, _) = client.allocate(stream).expect("an allocation at the node named");
    assert_eq!(client.channel_bind(stream, 0x4000, peer), None, "ChannelBind");
    stream.write_all(&[0x40, 0x00, 0x00, 0x04, b'e', b'c', b'h', b'o']).unwrap();
    let mut frame = [0u8; 8];
    stream.read_exact(&mut frame).expect("the echo through the relay");
    assert_eq!(&frame, &[0x40, 0x00, 0x00, 0x04, b'e', b'c', b'h', b'o']);
    let release = Request::refresh(0);
    let _ = client.request(stream, release.method, release.attributes);
    relayed
}

/// The registry entry `id` published, as JSON (read with redis-cli's protocol).
fn registry_entry(redis: &Redis, id: &str) -> Option<serde_json::Value> {
    let raw = redis.raw(&["GET", &format!("turnd:node:{id}")]);
    let json = raw.lines().nth(1)?;
    serde_json::from_str(json).ok()
}

/// RFC 8489 §14.15: a client follows ALTERNATE-SERVER with the transport it used. A TCP
/// client and a TLS client pointed at the front get a 300 naming the serving node's TCP
/// and TLS ports (the TLS one with ALTERNATE-DOMAIN), follow it and relay there. "a"
/// (the lower id, so named first on ties) serves UDP only: UDP clients are sent to it,
/// TCP and TLS clients never are. Each entry carries the node's CPU use.
#[test]
fn tcp_and_tls_clients_are_sent_to_the_nodes_port_for_their_transport_and_relay_there() {
    if !need_redis() || !need_tool("openssl", "openssl") {
        return;
    }
    let redis = Redis::start();
    let pki = common::ca::TestCa::new(&["127.0.0.2", "127.0.0.3", "b.turn.test"]);
    let udp_only = serving_node("127.0.0.5", &redis, "a");
    // b advertises its UDP address only: TCP (same port) and TLS follow from its listeners.
    let b = stream_node(
        "127.0.0.3",
        &redis,
        "b",
        "advertise-ipv4 = \"127.0.0.3:{PORT}\"\ntls-domain = \"b.turn.test\"\n",
        &pki,
    );
    let front = stream_node("127.0.0.2", &redis, "front", "front = true\n", &pki);
    let peer = UdpEchoPeer::start();
    wait_nodes(&front, 3.0);
    assert_eq!(allocate_at(front.udp_addr()), Ok(udp_only.udp_addr()), "UDP clients go to a (the lower id)");

    let tcp = TcpStream::connect(front.tcp_addr()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (to, domain, mut client) = stream_redirect(tcp);
    assert_eq!((to, domain), (Some(b.tcp_addr()), None), "a TCP client is named b's TCP address");
    let mut tcp = TcpStream::connect(b.tcp_addr()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let relayed = stream_relays(&mut client, &mut tcp, peer.addr());
    assert_eq!(relayed.ip().to_string(), "127.0.0.3", "relayed by b");

    let tls = common::turn_client::tls_connect(front.tls_addr());
    let (to, domain, mut client) = stream_redirect(tls);
    assert_eq!(to, Some(b.tls_addr()), "a TLS client is named b's TLS port, not its UDP/TCP one");
    assert_eq!(domain.as_deref(), Some("b.turn.test"), "ALTERNATE-DOMAIN");
    let mut tls = common::turn_client::tls_connect_named(b.tls_addr(), "b.turn.test");
    let relayed = stream_relays(&mut client, &mut tls, peer.addr());
    assert_eq!(relayed.ip().to_string(), "127.0.0.3", "relayed by b");

    // The entries as published: per-transport addresses and the CPU use.
    let entry =
        wait_for(Duration::from_secs(5), || registry_entry(&redis, "b").filter(|e| e["cpu_millicores"].is_u64()));
    let entry = entry.unwrap_or_else(|| panic!("no cpu_millicores in b's entry: {:?}", registry_entry(&redis, "b")));
    assert_eq!(entry["tcp"]["ipv4"], b.tcp_addr().to_string(), "{entry}");
    assert_eq!(entry["tls"]["ipv4"], b.tls_addr().to_string(), "{entry}");
    let a = registry_entry(&redis, "a").expect("a's entry");
    assert_eq!((a["tcp"]["ipv4"].is_null(), a["tls"]["ipv4"].is_null()), (true, true), "a serves UDP only: {a}");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let cpu = entry["cpu_millicores"].as_u64().unwrap_or(u64::MAX);
    // Idle but for this test's few requests: well under all the machine's cores (a
    // sampling interval that straddles a tick can read a little high, hence the slack).
    assert!(cpu <= cores * 1000 + 200, "b's cpu_millicores {cpu} on {cores} cores: {entry}");
    eprintln!(
        "MEASURED: b's published CPU use {cpu} millicores ({cores} cores); entry {} bytes",
        entry.to_string().len()
    );
    // /readyz is 503 until every worker has published its first snapshot (a second
    // after start), and this test can get here sooner.
    let ready = wait_for(Duration::from_secs(5), || {
        let ready = get(front.admin_addr(), "/readyz", &[]);
        (ready.status == 200).then_some(ready)
    });
    let body = ready.map(|r| r.body).unwrap_or_else(|| get(front.admin_addr(), "/readyz", &[]).body);
    assert!(body.contains(" cores)"), "/readyz shows the node's CPU use: {body}");
}

/// A node in the browser test's namespace: UDP, TCP and TLS listeners on `ip`, peers
/// allowed on the namespace's subnet, the fleet's Redis on the namespace's loopback.
fn browser_node(
    ip: &str,
    subnet: &str,
    redis: &str,
    id: &str,
    cluster: &str,
    pki: &common::ca::TestCa,
) -> TurndProcess {
    let (min, max) = relay_port_range();
    let ports: Vec<u16> = (0..2).map(|_| free_udp_port(ip)).collect();
    let mut config = format!("realm = \"{REALM}\"\n");
    for (t, port) in [("udp", ports[0]), ("tcp", ports[0]), ("tls", ports[1])] {
        config += &format!("[[listen]]\ntransport = \"{t}\"\naddress = \"{ip}:{port}\"\n");
    }
    config += &format!(
        "[relay]\nport-min = {min}\nport-max = {max}\nallowed-peers = [\"{subnet}\"]\n\
         [[auth.user]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\n\
         [cluster]\nredis = \"{redis}\"\nnode-id = \"{id}\"\npublish-interval = \"{INTERVAL_MS}ms\"\nttl = \"3s\"\n\
         advertise-ipv4 = \"{ip}:{}\"\n{cluster}",
        ports[0]
    );
    TurndProcess::start(&pki.add_to(&config), &[])
}

/// Headless Chromium pointed at the front node (`turn:FRONT` over UDP and over TCP,
/// `turns:FRONT` over TLS) follows the 300 to the serving node and connects a data
/// channel relay-to-relay through it. Over TLS the 300 names the node's TLS port (its
/// per-transport advertised address; naming its UDP/TCP port instead, Chromium fails
/// with 701), and Chromium checks the node's certificate against the IP address it was
/// sent to: with a certificate naming the node only by its `tls-domain`
/// (ALTERNATE-DOMAIN) it fails with 701 too, so the test CA's certificate names the
/// nodes' IP addresses. The nodes share the fleet's nonce key, so the nonce the front
/// issued holds at the node named (libwebrtc carries it there and does not retry an
/// Allocate on 438). The browser is in a namespace of its own, routed to the servers'
/// namespace, so both nodes see it at one address, as they would a client on the
/// Internet (a fleet's nonce is bound to the client's IP address, not its port: over
/// TCP the redirected Allocate comes on a new connection). Chromium refuses a 300
/// naming a loopback address, hence the namespaces.
#[test]
fn chromium_pointed_at_the_front_node_relays_through_the_node_it_was_sent_to() {
    if !need_redis() {
        return;
    }
    if let Err(why) = netns::available() {
        if !need(false, &format!("network namespaces ({why})")) {
            return;
        }
    }
    if let Some(what) = netns::browser::missing() {
        if !need(false, &what) {
            return;
        }
    }
    if !need_tool("tcpdump", "tcpdump") {
        return;
    }
    let servers = netns::Netns::new("fleet");
    let clients = netns::Netns::new("fleetc");
    let octet = 64 + netns::subnet_tag();
    let (front_ip, node_ip) = (format!("100.{octet}.0.1"), format!("100.{octet}.0.2"));
    netns::veth_pair_inside(&servers, &format!("{front_ip}/24"), &format!("{node_ip}/24"));
    netns::link(&servers, "up0", &format!("100.{octet}.1.1/24"), &clients, "down0", &format!("100.{octet}.1.2/24"));
    clients.ip(&["route", "add", &format!("100.{octet}.0.0/24"), "via", &format!("100.{octet}.1.1")]);
    // Both browser peers' relay addresses are on b, and the client subnet reaches them.
    let subnet = format!("100.{octet}.0.0/23");
    let pki = common::ca::TestCa::new(&[&front_ip, &node_ip]);
    let redis = servers.enter(Redis::start);
    let url = redis.url();
    let b = servers.enter(|| browser_node(&node_ip, &subnet, &url, "b", "", &pki));
    let front = servers.enter(|| browser_node(&front_ip, &subnet, &url, "front", "front = true\n", &pki));
    servers.enter(|| wait_nodes(&front, 2.0));
    let home = TempDir::new("turnd-chromium-home");
    netns::browser::home_trusting(home.path(), &pki.ca);
    let mut browser = clients.enter(|| netns::browser::Browser::launch(clients.name(), home.path(), &[]));
    let (front_port, front_tls_port) = (front.addr("udp").port(), front.addr("tls").port());
    let redirects =
        || servers.enter(|| cluster_metric(&front, "turnd_redirects_total{reason=\"front\"}")).unwrap_or(0.0);
    let stale_at_b =
        || servers.enter(|| cluster_metric(&b, "turnd_auth_failures_total{reason=\"stale_nonce\"}")).unwrap_or(0.0);
    let mut results = Vec::new();
    let urls = [
        ("udp", format!("turn:{front_ip}:{front_port}")),
        ("tcp", format!("turn:{front_ip}:{front_port}?transport=tcp")),
        ("tls", format!("turns:{front_ip}:{front_tls_port}?transport=tcp")),
    ];
    // What the front sends the browser over UDP, read as it crosses the link to the
    // browser's namespace: the 300 itself, not only the front's count of them.
    let filter = format!("udp and src host {front_ip} and src port {front_port}");
    let mut capture = Some(netns::capture::Capture::start(&servers, "up0", &filter));
    let mut wire = Vec::new();
    for (transport, url) in urls {
        let (redirects_before, stale_before) = (redirects(), stale_at_b());
        let ice = serde_json::json!([{ "urls": [url], "username": USER, "credential": PASSWORD }]);
        let r = browser.call("loopback", serde_json::json!({ "iceServers": ice, "messages": 3 }));
        if let Some(capture) = capture.take() {
            wire = capture.finish();
        }
        // The counters are published once a second (later on a loaded machine).
        let sent = wait_for(Duration::from_secs(5), || Some(redirects() - redirects_before).filter(|n| *n >= 1.0));
        let (sent, stale) = (sent.unwrap_or(0.0), stale_at_b() - stale_before);
        eprintln!(
            "CHROMIUM {transport}: ok={} 300s from the front {sent}, stale nonces at b {stale}, relay {}:{} over {}, errors {}",
            r["ok"], r["pairA"]["local"]["address"], r["pairA"]["local"]["port"], r["pairA"]["local"]["relayProtocol"], r["a"]["errors"]
        );
        results.push((r, sent, stale));
    }
    let b_udp = b.addr("udp");
    let answers: Vec<(u16, Option<SocketAddr>)> = wire
        .iter()
        .filter_map(|d| turnd::stun::message::decode(&d.payload).ok())
        .filter_map(|m| {
            Some((error_code(&m.message)?, m.message.get_attribute::<AlternateServer>().map(|a| a.address())))
        })
        .collect();
    eprintln!("ON THE WIRE from the front over UDP: {} datagrams, error answers {answers:?}", wire.len());
    assert!(
        answers.contains(&(300, Some(b_udp))),
        "no 300 naming b ({b_udp}) among the front's UDP answers {answers:?} ({} datagrams)",
        wire.len()
    );
    for ((r, sent, stale), protocol) in results.iter().zip(["udp", "tcp", "tls"]) {
        assert!(*sent >= 1.0, "{protocol}: the front answered 300: {r:#}\n---- front ----\n{}", front.logs_tail(40));
        assert_eq!(*stale, 0.0, "{protocol}: the front's nonce held at b");
        assert_eq!(
            r["ok"],
            true,
            "{protocol}: {} (ICE {}, errors {})\n---- b (last lines) ----\n{}",
            r["error"],
            r["ice"],
            r["a"]["errors"],
            b.logs_tail(40)
        );
        for side in ["pairA", "pairB"] {
            assert_eq!(r[side]["local"]["type"], "relay", "{r:#}");
            assert_eq!(r[side]["local"]["address"], node_ip.as_str(), "relayed by the node named in the 300: {r:#}");
            assert_eq!(r[side]["local"]["relayProtocol"], protocol, "{r:#}");
        }
    }
    drop(browser);
    drop(redis);
}

#[test]
fn a_draining_node_is_no_longer_named_and_sends_its_own_new_allocates_to_another() {
    if !need_redis() {
        return;
    }
    let redis = Redis::start();
    // b drains for a while on SIGTERM (it holds an allocation, so it does not exit at once).
    let port = free_udp_port("127.0.0.3");
    let config = format!(
        "drain-time = \"30s\"\n{}",
        node_config("127.0.0.3", port, &redis.url(), "b", &format!("advertise-ipv4 = \"127.0.0.3:{port}\"\n"))
    );
    let mut b = TurndProcess::start(&config, &[]);
    let c = serving_node("127.0.0.4", &redis, "c");
    let front = front_node(&redis);
    wait_nodes(&front, 3.0);
    assert_eq!(allocate_at(front.udp_addr()), Ok(b.udp_addr()), "the tie goes to b while it serves");
    let mut held = TurnClient::on_loopback(b.udp_addr(), USER, PASSWORD, REALM);
    held.allocate_relay();
    // SIGTERM without waiting for the exit (`stop_with` waits; b drains for 30 s).
    let sent = Command::new("kill").args(["-TERM", &b.pid().to_string()]).status().unwrap();
    assert!(sent.success());
    let asked = Instant::now();
    // b turns its own new Allocates to c at once, and the front stops naming b.
    let own = wait_for(Duration::from_secs(5), || allocate_at(b.udp_addr()).ok());
    assert_eq!(own, Some(c.udp_addr()), "a draining node names a serving one");
    let moved = wait_for(Duration::from_secs(5), || allocate_at(front.udp_addr()).ok().filter(|a| *a == c.udp_addr()));
    assert_eq!(moved, Some(c.udp_addr()));
    eprintln!("MEASURED: the front stopped naming a draining node {:?} after its SIGTERM", asked.elapsed());
    assert_eq!(held.refresh(600), Ok(()), "the drained node's allocation keeps working");
    assert!(cluster_metric(&b, "turnd_redirects_total{reason=\"draining\"}").is_some());
    b.stop_with(libc::SIGKILL, Duration::from_secs(5));
}

/// A serving node that reads the fleet's REST secrets from Redis.
fn node_with_fleet_secrets(ip: &str, redis: &Redis, id: &str) -> TurndProcess {
    let port = free_udp_port(ip);
    let extra = format!("advertise-ipv4 = \"{ip}:{port}\"\nsecrets-from-redis = true\n");
    TurndProcess::start(&node_config(ip, port, &redis.url(), id, &extra), &[])
}

/// A TURN REST credential for `user`, valid for an hour, minted with `secret`.
fn rest_credential(secret: &str, user: &str) -> (String, String) {
    let expiry = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600;
    let username = format!("{expiry}:{user}");
    let password = turnd::turn::auth::rest_password(secret.as_bytes(), &username);
    (username, password)
}

/// What `node` answers an Allocate with `credential`: 0 for a success (released at once).
fn allocate_with(node: &TurndProcess, credential: &(String, String)) -> u16 {
    let mut client = TurnClient::on_loopback(node.udp_addr(), &credential.0, &credential.1, REALM);
    match client.allocate(Vec::new()) {
        Ok(_) => {
            let _ = client.refresh(0);
            0
        }
        Err(code) => code,
    }
}

/// The node's `turnd_cluster_secrets*` lines and its log tail, for a failure message.
fn secrets_state(node: &TurndProcess) -> String {
    let text = scrape(node.admin_addr());
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("turnd_cluster_secrets")).collect();
    format!("{}\n--- log tail ---\n{}", lines.join("\n"), node.logs_tail(40))
}

#[test]
fn rest_secrets_from_redis_are_used_by_every_node_and_rotated_once_for_the_fleet() {
    if !need_redis() {
        return;
    }
    let redis = Redis::start();
    assert_eq!(redis.command(&["RPUSH", "turnd:secrets", "fleet-secret-1"]).as_deref(), Some(":1"));
    let b = node_with_fleet_secrets("127.0.0.3", &redis, "b");
    let c = node_with_fleet_secrets("127.0.0.4", &redis, "c");
    for node in [&b, &c] {
        let read = wait_for(Duration::from_secs(10), || {
            (cluster_metric(node, "turnd_cluster_secrets") == Some(1.0)).then_some(())
        });
        assert!(read.is_some(), "the node did not take the secret from Redis\n{}", secrets_state(node));
    }
    // A credential minted with a secret that only Redis holds works on both nodes.
    let old = rest_credential("fleet-secret-1", "carol");
    for node in [&b, &c] {
        assert_eq!(allocate_with(node, &old), 0, "fleet secret refused\n{}", secrets_state(node));
    }
    assert_eq!(allocate_with(&b, &rest_credential("never-configured", "carol")), 401);

    // Garbage at the head of the list: refused whole, counted and logged; the last
    // good set stays in force.
    let long = "x".repeat(300);
    assert_eq!(redis.command(&["LPUSH", "turnd:secrets", &long]).as_deref(), Some(":2"));
    let refused = wait_for(Duration::from_secs(5), || {
        (cluster_metric(&b, "turnd_cluster_secrets_rejected_total").unwrap_or(0.0) >= 1.0).then_some(())
    });
    assert!(refused.is_some(), "an over-long secret was not refused\n{}", secrets_state(&b));
    assert!(b.logs().contains("secrets in Redis are refused"), "no log line\n{}", secrets_state(&b));
    assert_eq!(cluster_metric(&b, "turnd_cluster_secrets"), Some(1.0), "{}", secrets_state(&b));
    assert_eq!(allocate_with(&b, &old), 0, "the last good set was dropped\n{}", secrets_state(&b));
    // Another type under the key: refused too.
    assert_eq!(redis.command(&["DEL", "turnd:secrets"]).as_deref(), Some(":1"));
    assert_eq!(redis.command(&["SET", "turnd:secrets", "not-a-list"]).as_deref(), Some("+OK"));
    let before = cluster_metric(&c, "turnd_cluster_secrets_rejected_total").unwrap_or(0.0);
    let refused = wait_for(Duration::from_secs(5), || {
        (cluster_metric(&c, "turnd_cluster_secrets_rejected_total").unwrap_or(0.0) > before).then_some(())
    });
    assert!(refused.is_some(), "a string under the key was not refused\n{}", secrets_state(&c));
    assert_eq!(allocate_with(&c, &old), 0, "the last good set was dropped\n{}", secrets_state(&c));

    // Rotation, once for the fleet: the new secret first, then the old one dropped.
    assert_eq!(redis.command(&["DEL", "turnd:secrets"]).as_deref(), Some(":1"));
    assert_eq!(redis.command(&["RPUSH", "turnd:secrets", "fleet-secret-2", "fleet-secret-1"]).as_deref(), Some(":2"));
    let new = rest_credential("fleet-secret-2", "carol");
    let both = wait_for(Duration::from_secs(5), || {
        [&b, &c].iter().all(|n| allocate_with(n, &new) == 0 && allocate_with(n, &old) == 0).then_some(())
    });
    assert!(both.is_some(), "the new secret was not taken beside the old\n{}", secrets_state(&b));
    assert_eq!(redis.command(&["LREM", "turnd:secrets", "0", "fleet-secret-1"]).as_deref(), Some(":1"));
    let dropped = Instant::now();
    let gone = wait_for(Duration::from_secs(5), || {
        [&b, &c].iter().all(|n| allocate_with(n, &old) == 401).then(|| dropped.elapsed())
    });
    let gone = gone.unwrap_or_else(|| panic!("the dropped secret is still accepted\n{}", secrets_state(&b)));
    eprintln!("MEASURED: a secret removed from Redis was refused (401) on both nodes {gone:?} later (interval {INTERVAL_MS} ms)");
    assert!(gone < Duration::from_secs(3), "took {gone:?}");
    for node in [&b, &c] {
        assert_eq!(allocate_with(node, &new), 0, "the new secret\n{}", secrets_state(node));
    }

    // The same rotation with `turnd ctl secrets`, which reads the secret from stdin.
    let out = ctl_secrets(&b, "add", "fleet-secret-3");
    assert!(out.success(), "{out}");
    let newest = rest_credential("fleet-secret-3", "carol");
    let taken = wait_for(Duration::from_secs(5), || (allocate_with(&c, &newest) == 0).then_some(()));
    assert!(taken.is_some(), "a secret added with turnd ctl was not taken\n{}", secrets_state(&c));
    let out = ctl_secrets(&b, "list", "");
    assert!(out.success() && out.stdout.lines().count() == 2, "{out}");
    assert!(!out.stdout.contains("fleet-secret"), "list printed a secret: {out}");
    let out = ctl_secrets(&b, "remove", "fleet-secret-2");
    assert!(out.success(), "{out}");
    let gone = wait_for(Duration::from_secs(5), || (allocate_with(&c, &new) == 401).then_some(()));
    assert!(gone.is_some(), "a secret removed with turnd ctl is still accepted\n{}", secrets_state(&c));
    // Neither the last secret nor one the nodes would refuse is written.
    let out = ctl_secrets(&b, "remove", "fleet-secret-3");
    assert_eq!(out.code(), Some(1), "{out}");
    let out = ctl_secrets(&b, "add", &"y".repeat(300));
    assert_eq!(out.code(), Some(1), "{out}");
    assert_eq!(redis.command(&["LLEN", "turnd:secrets"]).as_deref(), Some(":1"));
}

/// `turnd ctl -c NODE_CONFIG secrets ACTION`, with `secret` on its standard input.
fn ctl_secrets(node: &TurndProcess, action: &str, secret: &str) -> CmdOutput {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg("printf '%s\\n' \"$SECRET\" | \"$TURND\" ctl -c \"$CONFIG\" secrets \"$ACTION\"")
        .env("SECRET", secret)
        .env("TURND", turnd_binary())
        .env("CONFIG", node.config_file())
        .env("ACTION", action);
    run_with_timeout(&mut command, Duration::from_secs(15))
}

/// A node joining Redis over TLS (`rediss://`), trusting `ca` (`[cluster] ca-file`).
fn tls_node(ip: &str, tls_port: u16, id: &str, ca: &std::path::Path) -> TurndProcess {
    let port = free_udp_port(ip);
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let extra = format!("advertise-ipv4 = \"{ip}:{port}\"\nca-file = \"{}\"\n", ca.display());
    TurndProcess::start(&node_config(ip, port, &url, id, &extra), &[])
}

#[test]
fn rediss_with_a_private_ca_joins_and_a_wrong_ca_is_a_clear_error_while_the_node_serves() {
    if !need_redis() || !need_tool("openssl", "openssl") {
        return;
    }
    let pki = common::ca::TestCa::new(&["127.0.0.1"]);
    let (redis, tls_port) = Redis::start_tls(&pki);
    let good = tls_node("127.0.0.3", tls_port, "tls-good", &pki.ca);
    let joined = wait_for(Duration::from_secs(10), || {
        (cluster_metric(&good, "turnd_cluster_redis_up") == Some(1.0)
            && redis.command(&["EXISTS", "turnd:node:tls-good"]).as_deref() == Some(":1"))
        .then_some(())
    });
    assert!(joined.is_some(), "the node did not join over TLS\n--- log tail ---\n{}", good.logs_tail(40));

    // A CA that did not sign Redis's certificate: the node says why, reports Redis
    // down, and serves on its own.
    let other = common::ca::TestCa::new(&["127.0.0.1"]);
    let mut wrong = tls_node("127.0.0.4", tls_port, "tls-wrong", &other.ca);
    let said = wait_for(Duration::from_secs(10), || {
        let logs = wrong.logs();
        (logs.contains("Redis unreachable") && logs.contains("certificate")).then_some(())
    });
    assert!(said.is_some(), "no clear TLS error in the log\n--- log tail ---\n{}", wrong.logs_tail(40));
    assert_eq!(cluster_metric(&wrong, "turnd_cluster_redis_up"), Some(0.0), "{}", wrong.logs_tail(40));
    assert_eq!(redis.command(&["EXISTS", "turnd:node:tls-wrong"]).as_deref(), Some(":0"));
    let mut client = TurnClient::on_loopback(wrong.udp_addr(), USER, PASSWORD, REALM);
    assert!(client.allocate(Vec::new()).is_ok(), "the node cut off from Redis still serves");
    assert!(wrong.is_running());
    let line = wrong.logs().lines().find(|l| l.contains("Redis unreachable")).unwrap_or_default().to_owned();
    eprintln!("MEASURED: with the wrong CA the node logs: {line}");
}

/// A serving node with one worker and `bandwidth-per-user = cap` (bytes/s).
fn node_with_bandwidth_cap(ip: &str, redis: &Redis, id: &str, cap: u64) -> TurndProcess {
    let port = free_udp_port(ip);
    let config = node_config(ip, port, &redis.url(), id, &format!("advertise-ipv4 = \"{ip}:{port}\"\n"))
        .replace("[cluster]", &format!("[limits]\nbandwidth-per-user = {cap}\n\n[cluster]"));
    TurndProcess::start(&format!("workers = 1\n{config}"), &[])
}

/// A UDP sink counting the bytes it receives after `from` (the measured window).
fn counting_sink(
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    from: Instant,
) -> (SocketAddr, std::thread::JoinHandle<u64>) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let addr = socket.local_addr().unwrap();
    let counter = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut bytes = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(n) = socket.recv(&mut buf) {
                if Instant::now() >= from {
                    bytes += n as u64;
                }
            }
        }
        bytes
    });
    (addr, counter)
}

#[test]
fn a_users_bandwidth_cap_holds_across_nodes() {
    if !need_redis() {
        return;
    }
    const CAP: u64 = 100_000;
    let redis = Redis::start();
    let b = node_with_bandwidth_cap("127.0.0.3", &redis, "b", CAP);
    let c = node_with_bandwidth_cap("127.0.0.4", &redis, "c", CAP);
    wait_nodes(&b, 2.0);
    wait_nodes(&c, 2.0);
    // The same user on both nodes, each client offering 2.5 times the cap for 6 s;
    // what reaches the peers in the last 3 s is measured.
    let started = Instant::now();
    let (warm_up, run) = (Duration::from_secs(3), Duration::from_secs(6));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    let mut sinks = Vec::new();
    for node in [&b, &c] {
        let (sink, counter) = counting_sink(stop.clone(), started + warm_up);
        let mut client = TurnClient::on_loopback(node.udp_addr(), USER, PASSWORD, REALM);
        client.allocate_relay();
        client.bind_channel(0x4000, sink);
        clients.push(client);
        sinks.push(counter);
    }
    let payload = [0x5au8; 1000];
    let mut sent = 0u64;
    // 5 datagrams per client every 20 ms: 250 KB/s each; a late tick catches up by
    // at most one extra burst, so the loop is bounded in packets and in time.
    let mut tick = Instant::now();
    while started.elapsed() < run && sent < 20_000 {
        for client in &clients {
            for _ in 0..5 {
                client.send_channel_data(0x4000, &payload);
                sent += 1;
            }
        }
        tick += Duration::from_millis(20);
        if let Some(wait) = tick.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        } else if Instant::now() > tick + Duration::from_millis(40) {
            tick = Instant::now();
        }
    }
    let window = started.elapsed().saturating_sub(warm_up).as_secs_f64();
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let per_node: Vec<u64> = sinks.into_iter().map(|s| s.join().unwrap()).collect();
    let rates: Vec<f64> = per_node.iter().map(|&b| b as f64 / window).collect();
    let total = rates.iter().sum::<f64>();
    eprintln!(
        "MEASURED: one user through two nodes with bandwidth-per-user = {CAP} B/s: {total:.0} B/s in total \
         (b {:.0}, c {:.0}) over the last {window:.1} s; offered {} B/s per node",
        rates[0], rates[1], 250_000
    );
    let state = |n: &TurndProcess| {
        let text = scrape(n.admin_addr());
        let lines: Vec<&str> =
            text.lines().filter(|l| l.starts_with("turnd_cluster_") || l.contains("rate_cap")).collect();
        format!("{}\n--- log tail ---\n{}", lines.join("\n"), n.logs_tail(20))
    };
    // Per node, the total would be about twice the cap.
    assert!(
        total < CAP as f64 * 1.5,
        "the user relayed {total:.0} B/s through two nodes, over 1.5 x the cap {CAP}\n{}",
        state(&b)
    );
    assert!(total > CAP as f64 * 0.5, "the user was starved: {total:.0} B/s (cap {CAP})\n{}", state(&b));
    assert!(rates.iter().all(|&r| r > CAP as f64 / 20.0), "a node starved the user: {rates:?}\n{}", state(&c));
}
