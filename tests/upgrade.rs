//! Live upgrade (`turnd upgrade`, SIGUSR2) against the real binary: a running turnd
//! starts a new one of the same binary and hands it its UDP allocations, listeners
//! and secrets. The project's client relays a paced ChannelData stream through an echo
//! peer across two upgrades in a row: nothing is lost, the relay address stays, the
//! gap is measured and printed, a Refresh (with the nonce from before) and a new
//! ChannelBind succeed afterwards, the old processes exit and the newest serves new
//! allocations. A successor that refuses its config, or fails after receiving the
//! sockets, leaves the old one serving, and the failure is counted.
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

mod common;
#[allow(dead_code)]
use common::fd_store::{FakeSystemd, Started};
use common::http;

use common::*;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use turnd::client::blocking::{Connection, Link};
use turnd::client::{channel_data, Client, Credentials, Request};

const TIMEOUT: Duration = Duration::from_secs(3);
const CHANNEL: u16 = 0x4000;
/// The paced stream: one datagram every `PACE`, `PACKETS` in all (about 4 s).
const PACE: Duration = Duration::from_millis(2);
const PACKETS: u32 = 2000;

fn client() -> Client {
    let seed = random_u64().to_be_bytes();
    let mut tid = [0u8; 12];
    tid[..8].copy_from_slice(&seed);
    Client::new(Credentials::long_term(USER, PASSWORD), tid)
}

/// Successors are children of the turnd they replaced, not of the test: stopped here
/// (declared after the `TurndProcess`, so dropped first: its log readers end only
/// once every process writing to the pipe is gone).
#[derive(Default)]
struct Successors(Mutex<Vec<i32>>);

impl Successors {
    fn add(&self, pid: i32) {
        self.0.lock().unwrap().push(pid);
    }
}

impl Drop for Successors {
    fn drop(&mut self) {
        for &pid in self.0.lock().unwrap().iter().filter(|&&pid| alive(pid)) {
            unsafe_kill(pid, libc::SIGINT);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        for &pid in self.0.lock().unwrap().iter() {
            while alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if alive(pid) {
                unsafe_kill(pid, libc::SIGKILL);
            }
        }
    }
}

#[allow(unsafe_code)]
fn unsafe_kill(pid: i32, signal: i32) {
    // SAFETY: kill takes no pointers.
    unsafe { libc::kill(pid, signal) };
}

/// Whether `pid` runs (a zombie, reaped by nobody yet, counts as gone).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

/// `turnd upgrade --pid PID`.
fn upgrade(pid: u32) {
    let out = std::process::Command::new(turnd_binary()).args(["upgrade", "--pid", &pid.to_string()]).output().unwrap();
    assert!(out.status.success(), "turnd upgrade: {}", String::from_utf8_lossy(&out.stderr));
}

/// Waits for the `nth` (from 1) log line containing `what`; returns it.
fn wait_for_line(turnd: &TurndProcess, what: &str, nth: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(line) = turnd.logs().lines().filter(|l| l.contains(what)).nth(nth - 1) {
            return line.to_string();
        }
        assert!(Instant::now() < deadline, "no {nth}. log line with {what:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn field<'a>(line: &'a str, name: &str) -> &'a str {
    let value = line.split(&format!("{name}=")).nth(1).unwrap_or_else(|| panic!("no {name} in {line}"));
    value.split_whitespace().next().unwrap().trim_matches('"')
}

/// An echo peer that remembers where datagrams came from (the relay address).
struct Peer {
    socket: UdpSocket,
    sources: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Peer {
    fn start() -> Peer {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let (sources, stop) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)));
        let (s, sources2, stop2) = (socket.try_clone().unwrap(), sources.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop2.load(Ordering::Relaxed) {
                if let Ok((n, from)) = s.recv_from(&mut buf) {
                    let _ = s.send_to(&buf[..n], from);
                    let mut seen = sources2.lock().unwrap();
                    if !seen.contains(&from) {
                        seen.push(from);
                    }
                }
            }
        });
        Peer { socket, sources, stop, thread: Some(thread) }
    }

    fn addr(&self) -> SocketAddr {
        self.socket.local_addr().unwrap()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the paced stream saw: each sequence number's arrival, the largest gap
/// between two arrivals.
struct Stream {
    received: Vec<Option<Instant>>,
}

impl Stream {
    fn lost(&self) -> Vec<u32> {
        self.received.iter().enumerate().filter(|(_, r)| r.is_none()).map(|(i, _)| i as u32).collect()
    }

    fn largest_gap(&self) -> Duration {
        let mut times: Vec<Instant> = self.received.iter().flatten().copied().collect();
        times.sort();
        times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
    }
}

/// Sends `PACKETS` ChannelData datagrams, one every `PACE`, from `socket` to `server`,
/// and reads their echoes on the same socket; `during(i)` runs on the main thread
/// once `i` datagrams are sent, between sends (it must return quickly).
fn paced_stream(socket: &UdpSocket, server: SocketAddr, mut during: impl FnMut(u32)) -> Stream {
    let reader = socket.try_clone().unwrap();
    reader.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let done2 = done.clone();
    let receiver = std::thread::spawn(move || {
        let mut received = vec![None; PACKETS as usize];
        let mut buf = [0u8; 2048];
        let mut quiet_since: Option<Instant> = None;
        loop {
            match reader.recv(&mut buf) {
                Ok(n) if n >= 8 && u16::from_be_bytes([buf[0], buf[1]]) == CHANNEL => {
                    let seq = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
                    if let Some(slot) = received.get_mut(seq) {
                        slot.get_or_insert(Instant::now());
                    }
                    quiet_since = None;
                }
                _ => {
                    // Stop once sending is over and nothing came for 1 s.
                    if done2.load(Ordering::Relaxed) {
                        let since = *quiet_since.get_or_insert(Instant::now());
                        if since.elapsed() > Duration::from_secs(1) {
                            break;
                        }
                    }
                }
            }
        }
        received
    });
    let start = Instant::now();
    for i in 0..PACKETS {
        let at = start + PACE * i;
        if let Some(wait) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        socket.send_to(&channel_data(CHANNEL, &i.to_be_bytes(), true).unwrap(), server).unwrap();
        during(i + 1);
    }
    done.store(true, Ordering::Relaxed);
    Stream { received: receiver.join().unwrap() }
}

/// Sends `what` on the channel and waits for the peer's echo on it.
fn echo(conn: &mut Connection, what: &[u8]) {
    conn.send(&channel_data(CHANNEL, what, !conn.is_datagram()).unwrap()).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match conn.recv_data(deadline) {
            Ok(turnd::client::blocking::Received::ChannelData { data, .. }) if data == what => return,
            Ok(_) => continue,
            Err(e) => panic!("no echo of {:?}: {e}", String::from_utf8_lossy(what)),
        }
    }
}

fn metric(turnd: &TurndProcess, series: &str) -> f64 {
    http::metric(&http::scrape(turnd.admin_addr()), series).unwrap_or(0.0)
}

#[test]
fn a_udp_allocation_keeps_relaying_across_two_upgrades_in_a_row_without_loss() {
    let mut turnd = TurndProcess::start(&config_with(&["udp", "tcp"]), &["--workers", "2"]);
    let successors = Successors::default();
    let peer = Peer::start();
    let server = turnd.udp_addr();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let raw = socket.try_clone().unwrap();
    let mut conn = Connection::new(Link::Udp(socket), server);
    let mut alice = client();
    let allocated = conn.request(&mut alice, &Request::allocate(), TIMEOUT).unwrap().into_result().unwrap();
    let relay = allocated.relayed().expect("a relayed address");
    let bound = conn.request(&mut alice, &Request::channel_bind(CHANNEL, peer.addr()), TIMEOUT).unwrap();
    assert!(bound.is_success(), "{:?}", bound.error());

    // Two upgrades during the stream: at 1/4 and at 5/8 of it.
    let first_pid = turnd.pid();
    let mut second_pid = None;
    let stream = paced_stream(&raw, server, |sent| {
        if sent == PACKETS / 4 {
            upgrade(first_pid);
        }
        if sent == PACKETS * 5 / 8 {
            let line = wait_for_line(&turnd, "live upgrade done", 1);
            let pid: u32 = field(&line, "new_pid").parse().unwrap();
            successors.add(pid as i32);
            upgrade(pid);
            second_pid = Some(pid);
        }
    });
    let done = wait_for_line(&turnd, "live upgrade done", 2);
    let newest: u32 = field(&done, "new_pid").parse().unwrap();
    successors.add(newest as i32);
    let first = wait_for_line(&turnd, "live upgrade done", 1);
    eprintln!(
        "largest gap between two echoes: {:?} (pace {PACE:?}); gap freeze to serving: {} ms then {} ms; allocations moved: {} then {}",
        stream.largest_gap(),
        field(&first, "gap_ms"),
        field(&done, "gap_ms"),
        field(&first, "allocations"),
        field(&done, "allocations"),
    );
    assert_eq!(stream.lost(), Vec::<u32>::new(), "datagrams lost across the upgrades");
    assert_eq!(field(&first, "allocations"), "1");
    assert_eq!(field(&done, "allocations"), "1");
    assert_eq!(*peer.sources.lock().unwrap(), vec![relay], "every datagram reached the peer from the same relay");
    assert!(stream.largest_gap() < Duration::from_secs(1), "a gap of {:?}", stream.largest_gap());

    // The old processes are gone (nothing kept them: no TCP connection).
    assert!(turnd.stop_with(0, Duration::from_secs(5)).is_some(), "the first turnd exited");
    let second = second_pid.unwrap() as i32;
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(second) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(second), "the second turnd exited");
    assert!(alive(newest as i32));

    // A Refresh (the nonce from before the upgrades still valid) and a new ChannelBind
    // succeed on the newest, and the channel still relays.
    let refreshed = conn.request(&mut alice, &Request::refresh(600), TIMEOUT).unwrap();
    assert!(refreshed.is_success(), "{:?}", refreshed.error());
    let other_peer = Peer::start();
    let rebound = conn.request(&mut alice, &Request::channel_bind(CHANNEL + 1, other_peer.addr()), TIMEOUT).unwrap();
    assert!(rebound.is_success(), "{:?}", rebound.error());
    conn.send(&channel_data(CHANNEL + 1, b"to the other peer", true).unwrap()).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while other_peer.sources.lock().unwrap().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(*other_peer.sources.lock().unwrap(), vec![relay]);

    // The newest serves new allocations, on the same listener and admin address.
    let mut bob = client();
    let mut fresh = Connection::new(Link::Udp(UdpSocket::bind("127.0.0.1:0").unwrap()), server);
    let answer = fresh.request(&mut bob, &Request::allocate(), TIMEOUT).unwrap();
    assert!(answer.is_success(), "{:?}", answer.error());
    assert_ne!(answer.relayed(), Some(relay));
    assert_eq!(metric(&turnd, "turnd_handovers_total{result=\"success\"}"), 1.0, "counted by the successor");
    assert_eq!(metric(&turnd, "turnd_handover_allocations_moved_total"), 1.0);
    assert!(metric(&turnd, "turnd_handover_gap_seconds") > 0.0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&turnd, "turnd_allocations") != 2.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(metric(&turnd, "turnd_allocations"), 2.0, "the moved allocation and the new one");
    // The counters go on from the predecessors': alice's allocation was created two
    // processes ago, bob's by this one.
    assert_eq!(metric(&turnd, "turnd_allocations_created_total"), 2.0, "counters carried across both upgrades");
    let relayed = metric(&turnd, "turnd_relayed_packets_total{direction=\"client_to_peer\",transport=\"udp\"}");
    assert!(relayed >= f64::from(PACKETS), "{relayed} relayed to peers counted, {PACKETS} sent");
}

/// The config file `turnd` was started with (`-c FILE` on its command line).
fn config_path(turnd: &TurndProcess) -> std::path::PathBuf {
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", turnd.pid())).unwrap();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let i = args.iter().position(|a| *a == b"-c").expect("-c FILE");
    std::path::PathBuf::from(String::from_utf8(args[i + 1].to_vec()).unwrap())
}

#[test]
fn a_successor_that_refuses_or_fails_at_start_leaves_the_old_one_serving() {
    let config = config_with(&["udp"]);
    let turnd = TurndProcess::start(&config, &[]);
    let successors = Successors::default();
    let peer = Peer::start();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut conn = Connection::new(Link::Udp(socket), turnd.udp_addr());
    let mut alice = client();
    let allocated = conn.request(&mut alice, &Request::allocate(), TIMEOUT).unwrap().into_result().unwrap();
    let relay = allocated.relayed().unwrap();
    assert!(conn.request(&mut alice, &Request::channel_bind(CHANNEL, peer.addr()), TIMEOUT).unwrap().is_success());
    echo(&mut conn, b"before");
    let path = config_path(&turnd);
    let (min, max) = relay_range_of(&config).unwrap();

    // 1. A config that does not parse: the successor exits at once.
    std::fs::write(&path, "this is not toml =").unwrap();
    upgrade(turnd.pid());
    let failed = wait_for_line(&turnd, "live upgrade failed", 1);
    assert!(failed.contains("`config`"), "{failed}");
    echo(&mut conn, b"after a successor with a broken config");

    // 2. A relay range without the moved allocation's port: refused, naming the key.
    let narrowed = if relay.port() > min { (min, relay.port() - 1) } else { (relay.port() + 1, max) };
    let key = if relay.port() > min { "relay.port-max" } else { "relay.port-min" };
    let changed = with_ephemeral_admin(&config)
        .replace(&format!("port-min = {min}"), &format!("port-min = {}", narrowed.0))
        .replace(&format!("port-max = {max}"), &format!("port-max = {}", narrowed.1));
    std::fs::write(&path, &changed).unwrap();
    upgrade(turnd.pid());
    let failed = wait_for_line(&turnd, "live upgrade failed", 2);
    assert!(failed.contains(&format!("`{key}`")), "{failed}");
    echo(&mut conn, b"after a successor with another relay range");

    // 3. A successor that fails after it received the sockets (a new listener whose
    //    address is taken): the old one thaws and serves on.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let extra = format!(
        "{}\n[[listen]]\ntransport = \"tcp\"\naddress = \"{}\"\n",
        with_ephemeral_admin(&config),
        taken.local_addr().unwrap()
    );
    std::fs::write(&path, extra).unwrap();
    upgrade(turnd.pid());
    let failed = wait_for_line(&turnd, "live upgrade failed", 3);
    assert!(failed.contains("did not take over"), "{failed}");
    echo(&mut conn, b"after a successor that failed at start");
    assert!(conn.request(&mut alice, &Request::refresh(600), TIMEOUT).unwrap().is_success());
    assert_eq!(metric(&turnd, "turnd_handovers_total{result=\"refused\"}"), 2.0);
    assert_eq!(metric(&turnd, "turnd_handovers_total{result=\"failed\"}"), 1.0);
    assert!(!turnd.logs().contains("live upgrade done"));

    // 4. And with the config back as it was, the upgrade goes through.
    std::fs::write(&path, with_ephemeral_admin(&config)).unwrap();
    upgrade(turnd.pid());
    let done = wait_for_line(&turnd, "live upgrade done", 1);
    successors.add(field(&done, "new_pid").parse().unwrap());
    echo(&mut conn, b"after the upgrade");
}

/// TCP and TLS connections are not moved: the old process serves them until they
/// close (or its drain time ends), while the successor accepts every new one.
#[test]
fn tcp_clients_stay_with_the_old_process_until_they_close_and_new_ones_go_to_the_new() {
    let mut turnd = TurndProcess::start(&config_with(&["udp", "tcp"]), &[]);
    let successors = Successors::default();
    let peer = Peer::start();
    let address = turnd.tcp_addr();
    let connect = || Connection::new(Link::Tcp(std::net::TcpStream::connect(address).unwrap()), address);
    let mut tcp = connect();
    let mut alice = client();
    let allocated = tcp.request(&mut alice, &Request::allocate(), TIMEOUT).unwrap().into_result().unwrap();
    let relay = allocated.relayed().unwrap();
    assert!(tcp.request(&mut alice, &Request::channel_bind(CHANNEL, peer.addr()), TIMEOUT).unwrap().is_success());
    echo(&mut tcp, b"before");

    upgrade(turnd.pid());
    let done = wait_for_line(&turnd, "live upgrade done", 1);
    successors.add(field(&done, "new_pid").parse().unwrap());
    assert_eq!(field(&done, "allocations"), "0", "a TCP client's allocation does not move");

    // The old process goes on serving the open connection and its allocation.
    echo(&mut tcp, b"after the upgrade, still on the old process");
    assert!(tcp.request(&mut alice, &Request::refresh(600), TIMEOUT).unwrap().is_success());
    assert!(turnd.is_running(), "the old process waits for its TCP connection");
    // A new connection is the new process's: its allocation shows in the new metrics.
    let mut fresh = connect();
    let mut bob = client();
    let answer = fresh.request(&mut bob, &Request::allocate(), TIMEOUT).unwrap();
    assert!(answer.is_success(), "{:?}", answer.error());
    assert_ne!(answer.relayed(), Some(relay));
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&turnd, "turnd_allocations") != 1.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(metric(&turnd, "turnd_allocations"), 1.0, "the new process has bob's allocation only");

    // Once its last connection closes, the old process exits.
    drop(tcp);
    assert!(turnd.stop_with(0, Duration::from_secs(5)).is_some(), "the old turnd exited after its last connection");
    // And the new connection relays through the new process.
    assert!(fresh.request(&mut bob, &Request::channel_bind(CHANNEL, peer.addr()), TIMEOUT).unwrap().is_success());
    echo(&mut fresh, b"through the new process");
}

/// aioice (a client this project did not write) spans an upgrade: it relays over a
/// channel before, sleeps while the test upgrades turnd, then refreshes (with the
/// nonce from before: the secret moved, so no 438), relays again and deletes.
#[test]
fn aioice_relays_refreshes_and_deletes_across_an_upgrade() {
    if !need(python_module_available("aioice"), "Python module `aioice` (pip install aioice)") {
        return;
    }
    let turnd = TurndProcess::start(&config_with(&["udp"]), &[]);
    let successors = Successors::default();
    let peer = UdpEchoPeer::start();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/aioice_refresh.py");
    let mut child = std::process::Command::new(python())
        .arg(script)
        .args(["--server", &turnd.udp_addr().to_string(), "--peer", &peer.addr().to_string()])
        .args(["--user", USER, "--password", PASSWORD, "--transport", "udp"])
        .args(["--count", "3", "--lifetime", "300", "--stale-after", "3"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut out = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut upgraded = false;
    while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        out += &line;
        out.push('\n');
        if line.starts_with("ECHOED BEFORE") && !upgraded {
            upgrade(turnd.pid());
            let done = wait_for_line(&turnd, "live upgrade done", 1);
            successors.add(field(&done, "new_pid").parse().unwrap());
            assert_eq!(field(&done, "allocations"), "1");
            upgraded = true;
        }
    }
    if child.try_wait().unwrap().is_none() {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    reader.join().unwrap();
    assert!(upgraded, "aioice did not get to relay before the upgrade:\n{out}");
    assert!(status.success(), "aioice script failed ({status}):\n{out}");
    assert!(out.contains("ECHOED BEFORE 3/3"), "{out}");
    assert!(out.contains("REFRESHED lifetime=300 errors=[] new_nonce=False"), "the nonce survived:\n{out}");
    assert!(out.contains("ECHOED AFTER 3/3"), "{out}");
    assert!(out.contains("DELETED"), "{out}");
    assert_eq!(peer.count(), 6, "datagrams the echo peer received");
    eprintln!("aioice across the upgrade:\n{out}");
}

/// The number after `key` in `line` (e.g. `tot_send_msgs=` -> 10).
fn number_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// coturn's `turnutils_uclient` spans an upgrade: one session (`-c`: no RTCP pair) relays 300 messages on a
/// channel through an echo peer, one every 20 ms, while turnd is upgraded under it.
#[test]
fn coturn_uclient_session_continues_across_an_upgrade() {
    if !need_tool("turnutils_uclient", "coturn") {
        return;
    }
    let turnd = TurndProcess::start(&config_with(&["udp"]), &[]);
    let successors = Successors::default();
    let peer = UdpEchoPeer::start();
    let server = turnd.udp_addr();
    let mut child = std::process::Command::new("turnutils_uclient")
        .args(["-p", &server.port().to_string(), "-u", USER, "-w", PASSWORD])
        .args(["-c", "-n", "300", "-l", "100", "-z", "20"])
        .args(["-e", &peer.addr().ip().to_string(), "-r", &peer.addr().port().to_string()])
        .arg(server.ip().to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let readers: Vec<_> = [
        child.stdout.take().map(|r| Box::new(r) as Box<dyn std::io::Read + Send>),
        child.stderr.take().map(|r| Box::new(r) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|mut r| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = r.read_to_string(&mut text);
            text
        })
    })
    .collect();
    // Upgrade once the session relays (the echo peer has heard from it).
    let deadline = Instant::now() + Duration::from_secs(10);
    while peer.count() < 20 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(peer.count() >= 20, "uclient did not start relaying");
    upgrade(turnd.pid());
    let done = wait_for_line(&turnd, "live upgrade done", 1);
    successors.add(field(&done, "new_pid").parse().unwrap());
    let relayed_before = peer.count();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if child.try_wait().unwrap().is_none() {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    let out: String = readers.into_iter().map(|r| r.join().unwrap()).collect();
    let totals = out.lines().rfind(|l| l.contains("tot_send_msgs=") && !l.contains("msz=")).unwrap_or_default();
    let lost = out.lines().rfind(|l| l.contains("Total lost packets ")).unwrap_or_default();
    let (sent, received) = (number_after(totals, "tot_send_msgs="), number_after(totals, "tot_recv_msgs="));
    eprintln!("uclient across the upgrade (moved at message {relayed_before}): {totals} / {lost}");
    assert!(status.success(), "uclient failed:\n{out}");
    // uclient makes two allocations in this mode (turnd's log shows both created);
    // both move.
    assert_eq!(field(&done, "allocations"), "2", "uclient's allocations moved");
    assert_eq!(sent, Some(300), "{out}");
    assert_eq!(received, Some(300), "every message came back across the upgrade:\n{out}");
    assert_eq!(number_after(lost, "Total lost packets "), Some(0), "{out}");
}

/// Under systemd (here a notify socket of the test's, as systemd's would be): the old
/// process, systemd's main pid, names the new one with `MAINPID=` once it serves, and
/// the new one reports READY and feeds the watchdog.
#[test]
fn the_old_process_hands_systemd_the_new_main_pid() {
    let dir = TempDir::new("turnd-upgrade-notify");
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let config_file = dir.write("turnd.toml", &with_ephemeral_admin(&config_with(&["udp"])));
    let mut child = std::process::Command::new(turnd_binary())
        .args(["serve", "-c"])
        .arg(&config_file)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "2000000")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let successors = Successors::default();
    let mut seen = String::new();
    let read_until = |needle: &str, seen: &mut String| {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 4096];
        while !seen.contains(needle) {
            assert!(Instant::now() < deadline, "no {needle} from turnd; got:\n{seen}");
            if let Ok(n) = socket.recv(&mut buf) {
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                seen.push('\n');
            }
        }
    };
    // Stopped with the successors should the test fail before it exits by itself.
    successors.add(child.id() as i32);
    read_until("READY=1", &mut seen);
    seen.clear();
    upgrade(child.id());
    read_until("MAINPID=", &mut seen);
    let new_pid: i32 = seen.split("MAINPID=").nth(1).unwrap().lines().next().unwrap().trim().parse().unwrap();
    successors.add(new_pid);
    assert_ne!(new_pid as u32, child.id());
    // The old one exits (no connection keeps it); the new one goes on feeding the watchdog.
    let deadline = Instant::now() + Duration::from_secs(5);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(child.try_wait().unwrap().is_some(), "the old turnd exited");
    seen.clear();
    read_until("WATCHDOG=1", &mut seen);
    assert!(alive(new_pid));
}

/// `turnd upgrade` signals only a turnd that catches SIGUSR2 (SIGUSR2's default action
/// would end a turnd from before live upgrades, dropping every call).
#[test]
fn turnd_upgrade_refuses_a_process_that_would_die_of_it() {
    let mut sleeper = std::process::Command::new("sleep").arg("30").spawn().unwrap();
    let out = std::process::Command::new(turnd_binary())
        .args(["upgrade", "--pid", &sleeper.id().to_string()])
        .output()
        .unwrap();
    let still_running = sleeper.try_wait().unwrap().is_none();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not turnd"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(still_running, "the process was signalled");
    let out = std::process::Command::new(turnd_binary()).args(["upgrade", "--pid", "999999999"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no process"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A thousand allocations move in one upgrade (the gap grows with what is exported and
/// passed): every one is adopted, a sample still relays through its own relay address,
/// and the gap is printed.
#[test]
fn a_thousand_allocations_move_in_one_upgrade() {
    const ALLOCATIONS: usize = 1000;
    let config = config_with(&["udp"]).replace(
        "[relay]\nport-min",
        "[limits]\nallocations-per-user = 2000\nallocations-per-ip = 2000\n\n[relay]\nport-min",
    );
    // Room for four times as many: tests running alongside hold ports of their own.
    let (min, max) = relay_range_of(&config).unwrap();
    let base = min.min(65_535 - 4 * ALLOCATIONS as u16);
    let config = config
        .replace(&format!("port-min = {min}"), &format!("port-min = {base}"))
        .replace(&format!("port-max = {max}"), &format!("port-max = {}", base + 4 * ALLOCATIONS as u16));
    let turnd = TurndProcess::start(&config, &["--workers", "2"]);
    let successors = Successors::default();
    let peer = Peer::start();
    let mut clients = Vec::with_capacity(ALLOCATIONS);
    for _ in 0..ALLOCATIONS {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut conn = Connection::new(Link::Udp(socket), turnd.udp_addr());
        let mut alice = client();
        let relay = conn.request(&mut alice, &Request::allocate(), TIMEOUT).unwrap().into_result().unwrap().relayed();
        clients.push((conn, alice, relay.unwrap()));
    }
    for (conn, alice, _) in clients.iter_mut().step_by(50) {
        assert!(conn.request(alice, &Request::channel_bind(CHANNEL, peer.addr()), TIMEOUT).unwrap().is_success());
        echo(conn, b"before");
    }
    upgrade(turnd.pid());
    let done = wait_for_line(&turnd, "live upgrade done", 1);
    successors.add(field(&done, "new_pid").parse().unwrap());
    eprintln!(
        "{ALLOCATIONS} allocations: gap {} ms, whole handover {} ms",
        field(&done, "gap_ms"),
        field(&done, "took_ms")
    );
    assert_eq!(field(&done, "allocations"), ALLOCATIONS.to_string());
    peer.sources.lock().unwrap().clear();
    for (conn, alice, _) in clients.iter_mut().step_by(50) {
        echo(conn, b"after");
        assert!(conn.request(alice, &Request::refresh(600), TIMEOUT).unwrap().is_success());
    }
    let relays: Vec<SocketAddr> = clients.iter().step_by(50).map(|(_, _, relay)| *relay).collect();
    let mut seen = peer.sources.lock().unwrap().clone();
    seen.sort();
    let mut want = relays.clone();
    want.sort();
    assert_eq!(seen, want, "each through its own relay address, as before");
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&turnd, "turnd_allocations") != ALLOCATIONS as f64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(metric(&turnd, "turnd_allocations"), ALLOCATIONS as f64);
}

/// A restart through systemd's file descriptor store, with the test as systemd: it
/// keeps what turnd pushes on SIGTERM (`FDSTORE=1`, `FDNAME=`), starts the next turnd
/// with those descriptors from 3 on and `LISTEN_PID`/`LISTEN_FDS`/`LISTEN_FDNAMES`, as
/// systemd does. The allocation relays on through the same relay address, and the new
/// turnd empties the store (`FDSTOREREMOVE=1`) once it serves.
#[test]
fn a_restart_through_a_systemd_style_fd_store_keeps_the_allocation() {
    let systemd = FakeSystemd::new();
    let dir = TempDir::new("turnd-fdstore");
    let config_file = dir.write("turnd.toml", &with_ephemeral_admin(&config_with(&["udp", "tcp"])));
    let mut first = Started::spawn(systemd.first(&config_file));
    let listening = first.wait_for("listening on udp");
    let server: SocketAddr = listening.rsplit(' ').next().unwrap().parse().unwrap();

    let peer = Peer::start();
    let mut conn = Connection::new(Link::Udp(UdpSocket::bind("127.0.0.1:0").unwrap()), server);
    let mut alice = client();
    let relay = conn.request(&mut alice, &Request::allocate(), TIMEOUT).unwrap().into_result().unwrap().relayed();
    assert!(conn.request(&mut alice, &Request::channel_bind(CHANNEL, peer.addr()), TIMEOUT).unwrap().is_success());
    echo(&mut conn, b"before the restart");

    // SIGTERM, as `systemctl restart` sends; keep what is pushed into the store.
    unsafe_kill(first.child.id() as i32, libc::SIGTERM);
    let store = systemd
        .collect_store(|| first.exited(), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}:\n{}", first.logs()));
    assert!(first.logs().contains("systemd's file descriptor store"), "{}", first.logs());
    assert!(store.iter().any(|(name, _)| name == "turnd-state"), "{store:?}");
    // State, admin, TCP and UDP listeners (one per worker) and the relay socket.
    assert!(store.len() >= 5, "{store:?}");

    // The next turnd, with the store's descriptors.
    let mut names: Vec<String> = store.iter().map(|(name, _)| name.clone()).collect();
    let second = Started::spawn(systemd.next(&store, &config_file));
    drop(store);
    let took = second.wait_for("took over from the previous turnd");
    eprintln!("restart through the fd store: {took}");
    assert_eq!(field(&took, "allocations"), "1");
    echo(&mut conn, b"after the restart");
    assert!(conn.request(&mut alice, &Request::refresh(600), TIMEOUT).unwrap().is_success(), "the nonce survived");
    assert_eq!(*peer.sources.lock().unwrap(), vec![relay.unwrap()], "the same relay address");
    // The store is emptied of what was taken over.
    names.sort();
    names.dedup();
    assert_eq!(systemd.removed(names.len(), Duration::from_secs(5)), names, "FDSTOREREMOVE for every name");
}
