//! The authentication webhook end to end: a real HTTP(S) server started by the test on
//! loopback (a small blocking server below, with TLS from the test CA for the
//! `https://` case), turnd configured to ask it, and real clients (the project's own
//! and coturn's `turnutils_uclient`) against turnd's sockets.
//!
//! The endpoint's behaviour is chosen by username, so one server covers the good,
//! unknown, failing (500), garbage, huge and slow answers; it counts requests per user
//! and the most it served at once.
// The shared helpers use unsafe for process plumbing (signals); tests may unwrap.
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::http::{metric, scrape};
use common::turn_client::{StreamClient, TurnClient};
use common::*;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stun_codec::rfc5389::methods::BINDING;

/// The bearer token the endpoint requires.
const TOKEN: &str = "webhook-test-token-0123456789";
/// The password of every user the endpoint knows.
const WEB_PASSWORD: &str = "web-secret";

/// What the endpoint does for a user (by the username's prefix).
fn behaviour(user: &str) -> &'static str {
    ["slow", "limited", "garbage", "huge-stream", "huge", "fail", "unknown", "flaky"]
        .into_iter()
        .find(|p| user.starts_with(p))
        .unwrap_or("good")
}

/// The test's webhook endpoint.
struct Endpoint {
    addr: SocketAddr,
    /// Requests per username.
    asked: Arc<Mutex<HashMap<String, usize>>>,
    /// Requests being served now, and the most at once.
    busy: Arc<AtomicUsize>,
    most_busy: Arc<AtomicUsize>,
    /// Huge answers the endpoint managed to send whole (turnd should cut them short).
    fully_sent: Arc<AtomicUsize>,
    /// A "flaky" user's lookups fail until this is set.
    healed: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    _ca: Option<Arc<ca::TestCa>>,
}

impl Endpoint {
    /// Plain http on loopback (allowed without the danger option).
    fn plain(slow: Duration) -> Endpoint {
        Endpoint::start(None, slow)
    }

    /// https with a certificate from a fresh test CA.
    fn tls() -> Endpoint {
        let ca = ca::TestCa::new(&["127.0.0.1", "localhost"]);
        Endpoint::start(Some(Arc::new(ca)), Duration::ZERO)
    }

    fn start(ca: Option<Arc<ca::TestCa>>, slow: Duration) -> Endpoint {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let endpoint = Endpoint {
            addr: listener.local_addr().unwrap(),
            asked: Arc::default(),
            busy: Arc::default(),
            most_busy: Arc::default(),
            fully_sent: Arc::default(),
            healed: Arc::default(),
            stop: Arc::default(),
            _ca: ca.clone(),
        };
        let tls = ca.map(|ca| {
            use rustls_pki_types::pem::PemObject;
            let chain =
                rustls_pki_types::CertificateDer::pem_file_iter(&ca.cert).unwrap().map(|c| c.unwrap()).collect();
            let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&ca.key).unwrap();
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap();
            Arc::new(config)
        });
        let shared = (
            endpoint.asked.clone(),
            endpoint.busy.clone(),
            endpoint.most_busy.clone(),
            endpoint.healed.clone(),
            endpoint.stop.clone(),
            endpoint.fully_sent.clone(),
        );
        std::thread::spawn(move || {
            let (asked, busy, most_busy, healed, stop, fully_sent) = shared;
            // Bounded: the test ends by setting `stop`.
            while !stop.load(Ordering::Relaxed) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                stream.set_nonblocking(false).unwrap();
                stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let (asked, busy, most_busy, healed, tls, fully_sent) =
                    (asked.clone(), busy.clone(), most_busy.clone(), healed.clone(), tls.clone(), fully_sent.clone());
                std::thread::spawn(move || {
                    let now = busy.fetch_add(1, Ordering::SeqCst) + 1;
                    most_busy.fetch_max(now, Ordering::SeqCst);
                    match tls {
                        Some(config) => {
                            let connection = rustls::ServerConnection::new(config).unwrap();
                            let mut stream = rustls::StreamOwned::new(connection, stream);
                            serve(&mut stream, &asked, &healed, slow, &fully_sent);
                        }
                        None => serve(&mut { stream }, &asked, &healed, slow, &fully_sent),
                    }
                    busy.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        endpoint
    }

    fn url(&self) -> String {
        let scheme = if self._ca.is_some() { "https" } else { "http" };
        format!("{scheme}://{}/turn/lookup?v=1", self.addr)
    }

    fn asked(&self, user: &str) -> usize {
        self.asked.lock().unwrap().get(user).copied().unwrap_or(0)
    }

    /// `config_toml` with an `[auth.webhook]` for this endpoint and `extra` keys.
    fn configure(&self, config_toml: &str, token_file: &std::path::Path, extra: &str) -> String {
        let ca = self._ca.as_ref().map(|ca| format!("ca-file = \"{}\"\n", ca.ca.display())).unwrap_or_default();
        format!(
            "{config_toml}\n[auth.webhook]\nurl = \"{}\"\ntoken-file = \"{}\"\n{ca}{extra}\n",
            self.url(),
            token_file.display()
        )
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Serves one request on `stream`: checks method, path, headers and the JSON body, then
/// answers as `behaviour` says for its username.
fn serve(
    stream: &mut (impl Read + Write),
    asked: &Mutex<HashMap<String, usize>>,
    healed: &AtomicBool,
    slow: Duration,
    fully_sent: &AtomicUsize,
) {
    let mut reader = BufReader::new(&mut *stream);
    let mut head = Vec::new();
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" && head.len() < 64 {
        head.push(std::mem::take(&mut line));
    }
    let header = |name: &str| {
        head.iter().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    let length: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0).min(4096);
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    drop(reader);
    let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let user = request["username"].as_str().unwrap_or_default().to_owned();
    *asked.lock().unwrap().entry(user.clone()).or_default() += 1;
    let respond = |stream: &mut dyn Write, status: &str, body: &str| {
        let _ = write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.flush();
    };
    let well_formed = head.first().is_some_and(|l| l.starts_with("POST /turn/lookup?v=1 HTTP/1.1"))
        && header("authorization").as_deref() == Some(&format!("Bearer {TOKEN}"))
        && header("content-type").as_deref() == Some("application/json")
        && request["realm"] == REALM;
    if !well_formed {
        respond(stream, "400 Bad Request", "{}");
        return;
    }
    let found = format!("{{\"password\": \"{WEB_PASSWORD}\"}}");
    match behaviour(&user) {
        "good" => respond(stream, "200 OK", &found),
        "limited" => respond(
            stream,
            "200 OK",
            &format!("{{\"password\": \"{WEB_PASSWORD}\", \"limits\": {{\"max-allocations\": 1}}}}"),
        ),
        "slow" => {
            std::thread::sleep(slow);
            respond(stream, "200 OK", &found);
        }
        "unknown" => respond(stream, "404 Not Found", "{}"),
        "fail" => respond(stream, "500 Internal Server Error", "{}"),
        "flaky" if !healed.load(Ordering::SeqCst) => respond(stream, "500 Internal Server Error", "{}"),
        "flaky" => respond(stream, "200 OK", &found),
        "garbage" => respond(stream, "200 OK", "{\"password\": \"pw\", \"is-admin\": tru"),
        "huge" => {
            // Declares 10 MB and tries to send them.
            let _ = write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", 10 << 20);
            send_huge(stream, 10 << 20, fully_sent);
        }
        _ => {
            // "huge-stream": no length, 32 MB (more than loopback's socket buffers can
            // swallow) until the connection closes.
            let _ = write!(stream, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
            send_huge(stream, 32 << 20, fully_sent);
        }
    }
}

/// Writes `len` bytes of a JSON string that never ends; counts it if all went out.
fn send_huge(stream: &mut impl Write, len: usize, fully_sent: &AtomicUsize) {
    let chunk = vec![b'x'; 64 << 10];
    if stream.write_all(b"{\"password\": \"").is_err() {
        return;
    }
    for _ in 0..len / chunk.len() {
        if stream.write_all(&chunk).is_err() {
            return;
        }
    }
    fully_sent.fetch_add(1, Ordering::SeqCst);
}

/// A turnd with one UDP listener, the static user alice, `workers` workers and the
/// webhook at `endpoint` with `extra` settings.
fn turnd(endpoint: &Endpoint, workers: usize, extra: &str) -> (TurndProcess, TempDir) {
    turnd_on(&["udp"], endpoint, workers, extra)
}

/// [`turnd`] with listeners of `transports`.
fn turnd_on(transports: &[&str], endpoint: &Endpoint, workers: usize, extra: &str) -> (TurndProcess, TempDir) {
    let dir = TempDir::new("turnd-webhook");
    let token = dir.write("token", &format!("{TOKEN}\n"));
    let base = config_with(transports).replacen("\n\n", &format!("\nworkers = {workers}\n\n"), 1);
    let config = endpoint.configure(&base, &token, extra);
    (TurndProcess::start(&config, &[]), dir)
}

fn allocate(turnd: &TurndProcess, user: &str) -> Result<SocketAddr, u16> {
    let mut client = TurnClient::on_loopback(turnd.udp_addr(), user, WEB_PASSWORD, REALM);
    client.allocate(Vec::new()).map(|(relayed, _)| relayed)
}

fn lookups(turnd: &TurndProcess, result: &str) -> f64 {
    let text = scrape(turnd.admin_addr());
    metric(&text, &format!("turnd_webhook_lookups_total{{result=\"{result}\"}}")).unwrap_or(-1.0)
}

/// The peak resident size so far (VmHWM): a 10 MB answer read whole, even if freed at
/// once, would show here.
fn peak_resident_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_user_the_https_endpoint_knows_allocates_and_relays_with_the_projects_client_and_uclient() {
    let endpoint = Endpoint::tls();
    let (mut turnd, _dir) = turnd(&endpoint, 1, "");
    let peer = UdpEchoPeer::start();
    let mut client = TurnClient::on_loopback(turnd.udp_addr(), "good-carol", WEB_PASSWORD, REALM);
    client.allocate_relay();
    client.bind_channel(0x4000, peer.addr());
    client.send_channel(0x4000, b"through the webhook");
    assert_eq!(client.recv_channel(Duration::from_secs(3)).as_deref(), Some(&b"through the webhook"[..]));
    assert_eq!(endpoint.asked("good-carol"), 1, "one lookup; the Refresh/ChannelBind hit the cache");
    assert_eq!(lookups(&turnd, "found"), 1.0);
    let text = scrape(turnd.admin_addr());
    let took = metric(&text, "turnd_webhook_lookup_duration_seconds_sum").unwrap();
    assert_eq!(metric(&text, "turnd_webhook_lookup_duration_seconds_count"), Some(1.0));
    eprintln!("one https lookup on loopback (connection and TLS handshake included): {:.1} ms", took * 1e3);
    // A wrong password for a found user: 401, from the cache.
    let mut wrong = TurnClient::on_loopback(turnd.udp_addr(), "good-carol", "not-it", REALM);
    assert_eq!(wrong.allocate(Vec::new()).unwrap_err(), 401);
    assert_eq!(endpoint.asked("good-carol"), 1);

    if !need_tool("turnutils_uclient", "coturn") {
        return;
    }
    let server = turnd.udp_addr();
    let out = run_with_timeout(
        Command::new("turnutils_uclient")
            .args(["-c", "-p", &server.port().to_string(), "-u", "good-uclient", "-w", WEB_PASSWORD])
            .args(["-n", "10", "-l", "100", "-e", &peer.addr().ip().to_string()])
            .args(["-r", &peer.addr().port().to_string(), &server.ip().to_string()]),
        Duration::from_secs(60),
    );
    assert!(turnd.is_running() && out.success(), "uclient failed:\n{out}");
    let all = out.all();
    let totals = all.lines().rfind(|l| l.contains("tot_send_msgs=") && !l.contains("msz=")).unwrap_or_default();
    assert!(totals.contains("tot_send_msgs=10") && totals.contains("tot_recv_msgs=10"), "{totals}\n{out}");
    assert_eq!(endpoint.asked("good-uclient"), 1, "uclient's several allocations: one lookup");
}

#[test]
fn an_unknown_user_gets_401_and_the_endpoint_is_asked_once_within_the_negative_ttl() {
    let endpoint = Endpoint::plain(Duration::ZERO);
    let (turnd, _dir) = turnd(&endpoint, 2, "negative-ttl = \"30s\"");
    for _ in 0..4 {
        assert_eq!(allocate(&turnd, "unknown-dave"), Err(401));
    }
    assert_eq!(endpoint.asked("unknown-dave"), 1, "negative cache, shared by both workers");
    assert_eq!(lookups(&turnd, "not_found"), 1.0);
    // The static user is never looked up.
    assert!(allocate_static(&turnd).is_ok());
    assert_eq!(endpoint.asked(USER), 0);
}

fn allocate_static(turnd: &TurndProcess) -> Result<SocketAddr, u16> {
    let mut client = TurnClient::on_loopback(turnd.udp_addr(), USER, PASSWORD, REALM);
    client.allocate(Vec::new()).map(|(relayed, _)| relayed)
}

#[test]
fn an_endpoint_500_is_a_500_counted_and_not_cached_beyond_a_second() {
    let endpoint = Endpoint::plain(Duration::ZERO);
    let (turnd, _dir) = turnd(&endpoint, 1, "");
    assert_eq!(allocate(&turnd, "flaky-erin"), Err(500));
    assert_eq!(allocate(&turnd, "flaky-erin"), Err(500), "within the second: from the failure cache");
    assert_eq!(endpoint.asked("flaky-erin"), 1);
    assert_eq!(lookups(&turnd, "error"), 1.0);
    endpoint.healed.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(1100));
    assert!(allocate(&turnd, "flaky-erin").is_ok(), "asked again once the failure is a second old");
    assert_eq!(endpoint.asked("flaky-erin"), 2);
    // The workers' counters reach /metrics with their once-a-second snapshot.
    let series = "turnd_auth_failures_total{reason=\"lookup_unavailable\"}";
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&scrape(turnd.admin_addr()), series).unwrap_or(0.0) < 2.0 {
        assert!(Instant::now() < deadline, "{series} stayed below 2");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn garbage_and_huge_answers_are_refused_and_turnd_memory_stays_bounded() {
    let endpoint = Endpoint::plain(Duration::ZERO);
    let (turnd, _dir) = turnd(&endpoint, 1, "");
    assert_eq!(allocate(&turnd, "garbage-frank"), Err(500));
    let before = peak_resident_kb(turnd.pid());
    for i in 0..3 {
        assert_eq!(allocate(&turnd, &format!("huge-{i}")), Err(500));
        assert_eq!(allocate(&turnd, &format!("huge-stream-{i}")), Err(500));
    }
    let grown = peak_resident_kb(turnd.pid()).saturating_sub(before);
    // Six 10 MB answers: at most 64 KiB of each is ever read.
    assert!(grown < 4 * 1024, "turnd's peak grew by {grown} kB reading huge answers");
    eprintln!("peak resident size grew by {grown} kB over six 10 MB answers");
    assert_eq!(endpoint.fully_sent.load(Ordering::SeqCst), 0, "turnd cut every huge answer short");
    assert_eq!(lookups(&turnd, "invalid"), 7.0);
    assert_eq!(endpoint.asked("huge-stream-2"), 1);
}

#[test]
fn a_slow_endpoint_delays_nobody_else_and_its_user_gets_500_after_the_timeout() {
    let endpoint = Endpoint::plain(Duration::from_secs(5));
    let (turnd, _dir) = turnd(&endpoint, 1, "timeout = \"1s\"");
    // A static user relaying through a channel before and during the slow lookup.
    let peer = UdpEchoPeer::start();
    let mut alice = TurnClient::on_loopback(turnd.udp_addr(), USER, PASSWORD, REALM);
    alice.allocate_relay();
    alice.bind_channel(0x4001, peer.addr());
    let server = turnd.udp_addr();
    let slow = std::thread::spawn(move || {
        let started = Instant::now();
        let mut client = TurnClient::on_loopback(server, "slow-gina", WEB_PASSWORD, REALM);
        let result = client.allocate(Vec::new());
        (result.map(|_| ()), started.elapsed())
    });
    // Wait until the lookup is at the endpoint.
    let deadline = Instant::now() + Duration::from_secs(3);
    while endpoint.asked("slow-gina") == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(endpoint.asked("slow-gina"), 1);
    let started = Instant::now();
    let mut binding = TurnClient::on_loopback(turnd.udp_addr(), USER, PASSWORD, REALM);
    assert!(binding.plain(BINDING).is_some());
    let binding_took = started.elapsed();
    let started = Instant::now();
    assert!(allocate_static(&turnd).is_ok());
    let static_took = started.elapsed();
    for i in 0..20u8 {
        alice.send_channel(0x4001, &[i; 32]);
        assert_eq!(alice.recv_channel(Duration::from_secs(1)), Some(vec![i; 32]), "ChannelData {i}");
    }
    let (result, slow_took) = slow.join().unwrap();
    assert_eq!(result, Err(500));
    assert!(slow_took >= Duration::from_millis(900) && slow_took < Duration::from_secs(3), "{slow_took:?}");
    assert!(binding_took < Duration::from_millis(250), "Binding took {binding_took:?}");
    assert!(static_took < Duration::from_millis(500), "a static Allocate took {static_took:?}");
    assert_eq!(lookups(&turnd, "timeout"), 1.0);
    eprintln!(
        "during a 5 s lookup: Binding {binding_took:?}, static Allocate {static_took:?}, 500 after {slow_took:?}"
    );
}

#[test]
fn no_more_than_concurrency_lookups_reach_the_endpoint_at_once() {
    let endpoint = Endpoint::plain(Duration::from_millis(300));
    let (turnd, _dir) = turnd(&endpoint, 2, "concurrency = 2\ntimeout = \"2500ms\"");
    let server = turnd.udp_addr();
    // Seven users, and four clients of one more user (on both workers, as the kernel
    // spreads their ports): eight lookups, which the service lets wait for a slot
    // (4 x concurrency), and the shared user is looked up once.
    let users: Vec<String> = (0..7).map(|i| format!("slow-{i}")).chain((0..4).map(|_| "slow-shared".into())).collect();
    let results = allocate_all(server, users);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let most = endpoint.most_busy.load(Ordering::SeqCst);
    assert!((1..=2).contains(&most), "the endpoint served {most} at once");
    assert_eq!((0..7).map(|i| endpoint.asked(&format!("slow-{i}"))).sum::<usize>(), 7);
    assert_eq!(endpoint.asked("slow-shared"), 1, "one lookup for four clients in flight together");
    // Sixteen at once: past the eight that may wait, lookups fail at once (500,
    // counted as overloaded) and the endpoint never sees them.
    let results = allocate_all(server, (0..16).map(|i| format!("slow-burst-{i}")).collect());
    let refused = results.iter().filter(|r| **r == Err(500)).count();
    assert!(refused >= 1 && results.iter().all(|r| r.is_ok() || *r == Err(500)), "{results:?}");
    assert_eq!(lookups(&turnd, "overloaded"), refused as f64);
    assert_eq!((0..16).map(|i| endpoint.asked(&format!("slow-burst-{i}"))).sum::<usize>(), 16 - refused);
    assert!(endpoint.most_busy.load(Ordering::SeqCst) <= 2);
}

/// Allocations for `users`, each from its own client, all at once.
fn allocate_all(server: SocketAddr, users: Vec<String>) -> Vec<Result<(), u16>> {
    let clients: Vec<_> = users
        .into_iter()
        .map(|user| {
            std::thread::spawn(move || {
                let mut client = TurnClient::on_loopback(server, &user, WEB_PASSWORD, REALM);
                client.allocate(Vec::new()).map(|_| ())
            })
        })
        .collect();
    clients.into_iter().map(|c| c.join().unwrap()).collect()
}

#[test]
fn a_webhook_user_allocates_over_tcp_and_the_parked_answer_comes_back_on_the_connection() {
    let endpoint = Endpoint::plain(Duration::from_millis(200));
    let (turnd, _dir) = turnd_on(&["udp", "tcp"], &endpoint, 1, "");
    let mut stream = std::net::TcpStream::connect(turnd.tcp_addr()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // "slow-" users take 200 ms: the Allocate waits parked, the connection stays open.
    let mut client = StreamClient::new("slow-tcp", WEB_PASSWORD, REALM);
    assert!(client.allocate(&mut stream).is_ok());
    let peer = UdpEchoPeer::start();
    assert_eq!(client.channel_bind(&mut stream, 0x4002, peer.addr()), None, "from the cache");
    assert_eq!(endpoint.asked("slow-tcp"), 1);
}

#[test]
fn the_allocation_limit_in_the_answer_is_enforced() {
    let endpoint = Endpoint::plain(Duration::ZERO);
    let (turnd, _dir) = turnd(&endpoint, 1, "");
    assert!(allocate(&turnd, "limited-hana").is_ok());
    let mut second = TurnClient::on_loopback(turnd.udp_addr(), "limited-hana", WEB_PASSWORD, REALM);
    assert_eq!(second.allocate(Vec::new()).unwrap_err(), 486, "max-allocations = 1 from the answer");
    assert_eq!(endpoint.asked("limited-hana"), 1);
}

/// Whether `done` holds within `limit`, trying every 50 ms.
fn within(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The config file the harness wrote (the `-c` argument of the child).
fn config_path(turnd: &TurndProcess) -> std::path::PathBuf {
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", turnd.pid())).unwrap();
    let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    let i = args.iter().position(|a| a == "-c").unwrap();
    args[i + 1].clone().into()
}

/// Rewrites turnd's config, sends SIGHUP and waits for the `nth` log line with `needle`.
fn reload(turnd: &TurndProcess, config: &str, needle: &str, nth: usize) {
    std::fs::write(config_path(turnd), config).unwrap();
    let ok = Command::new("kill").arg("-HUP").arg(turnd.pid().to_string()).status();
    assert!(ok.is_ok_and(|s| s.success()), "kill -HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while turnd.logs().matches(needle).count() < nth {
        assert!(Instant::now() < deadline, "no {needle:?} in the logs:\n{}", turnd.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_reload_applies_new_webhook_settings_flushes_the_caches_and_can_turn_it_off() {
    let (first, second) = (Endpoint::plain(Duration::ZERO), Endpoint::plain(Duration::ZERO));
    let (turnd, dir) = turnd(&first, 2, "negative-ttl = \"1h\"");
    let token = dir.path().join("token");
    // The running config but its webhook table: the same listeners, ports and admin.
    let running = turnd.config().to_owned();
    let (base, rest) = running.split_once("\n[auth.webhook]").unwrap();
    let admin = &rest[rest.find("\n[admin]").unwrap()..];
    assert_eq!(allocate(&turnd, "unknown-ivan"), Err(401));
    assert_eq!(allocate(&turnd, "unknown-ivan"), Err(401));
    assert_eq!(first.asked("unknown-ivan"), 1);

    // Another endpoint: the next lookup goes there, the cached "not found" is gone.
    let moved = second.configure(base, &token, "negative-ttl = \"1h\"");
    reload(&turnd, &format!("{moved}{admin}"), "configuration reloaded users=", 1);
    // The log line says the reload was handed to the workers; each applies it when it
    // next reads its control channel, so the first tries may still meet a worker's
    // old cache (401 all the same).
    let applied = || {
        assert_eq!(allocate(&turnd, "unknown-ivan"), Err(401));
        second.asked("unknown-ivan") > 0
    };
    assert!(within(Duration::from_secs(5), applied), "the new endpoint was never asked");
    assert_eq!((first.asked("unknown-ivan"), second.asked("unknown-ivan")), (1, 1));
    assert!(allocate(&turnd, "good-judy").is_ok());

    // A token file that cannot be read rejects the reload; the webhook keeps working.
    let broken = second.configure(base, &dir.path().join("missing-token"), "");
    reload(&turnd, &format!("{broken}{admin}"), "reload rejected", 1);
    assert!(allocate(&turnd, "good-karl").is_ok());

    // Without the table, unknown users get 401 at once and nobody is asked.
    reload(&turnd, &format!("{base}{admin}"), "configuration reloaded users=", 2);
    assert!(within(Duration::from_secs(5), || allocate(&turnd, "good-judy") == Err(401)), "judy still found");
    assert_eq!(allocate(&turnd, "good-judy"), Err(401));
    assert_eq!(second.asked("good-judy"), 1);
    assert!(allocate_static(&turnd).is_ok());
}
