//! Soak: thousands of allocations created, refreshed, relaying, deleted and left to
//! expire, in churn, against the real binary on loopback, while turnd's resident
//! memory, open descriptors and relay ports are sampled. After a warm-up every figure
//! must stay flat, and once the load stops and the last allocation has expired, every
//! descriptor and every relay port must be back where it started.
//!
//! The suite runs a short version (15 s of load, about 27 s in all, at least 500
//! allocations). `scripts/soak.sh MINUTES` runs the same test for as long as asked,
//! against a release build, and keeps the samples:
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `TURND_SOAK_SECONDS` | 15 | how long the load runs (the drain comes after) |
//! | `TURND_SOAK_SLOTS` | 300 | client sockets cycling through allocations at once |
//! | `TURND_SOAK_RATE` | 2000 | client steps (round trips) per second, at most |
//! | `TURND_SOAK_LIFETIME` | 10 (short) / 30 | LIFETIME asked for, in seconds |
//! | `TURND_SOAK_SAMPLE` | 2 | seconds between samples |
//! | `TURND_SOAK_CSV` | none | write the samples to this file as well |
// A test may unwrap (a panic is a failed test) and use unsafe for process plumbing
// (signals, namespaces); the server code denies both (Cargo.toml [lints]).
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::turn_client;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stun_codec::rfc5389::attributes::{ErrorCode, XorMappedAddress};
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5766::attributes::{Data, Lifetime, RequestedTransport, XorPeerAddress, XorRelayAddress};
use stun_codec::rfc5766::methods::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, REFRESH};
use stun_codec::{MessageClass, Method, TransactionId};
use turnd::client::{Client as TurnState, Request};
use turnd::stun::attributes::{Attribute, ChannelNumber, Opaque};
use turnd::stun::message::{self, Message, Protection};

/// Relay ports for the soak: below the range the other tests draw from (20000+) and
/// the kernel's ephemeral range, so a soak can run beside them.
const PORT_MIN: u16 = 10000;
const PORT_MAX: u16 = 19999;
/// How long one round trip may take before the client gives up on it.
const ROUND_TRIP: Duration = Duration::from_secs(2);
/// Allocations the short run must make at the least, however slow the machine.
const MIN_CHURN: u64 = 500;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// What went wrong in one step (counted; a few are tolerated, see the end of the test).
#[derive(Debug)]
enum StepError {
    /// No answer within [`ROUND_TRIP`].
    Timeout,
    /// An answer, but not the expected one.
    Unexpected(#[allow(dead_code)] String),
}

/// One client socket with long-term credentials; never panics on the network.
struct Client {
    socket: UdpSocket,
    server: SocketAddr,
    creds: TurnState,
    buf: Vec<u8>,
}

impl Client {
    fn new(local: &str, server: SocketAddr) -> std::io::Result<Client> {
        let socket = UdpSocket::bind(local)?;
        socket.set_read_timeout(Some(ROUND_TRIP))?;
        Ok(Client { socket, server, creds: turn_client::client(USER, PASSWORD), buf: vec![0; 65536] })
    }

    /// The next datagram from the server.
    fn recv(&mut self) -> Result<&[u8], StepError> {
        loop {
            let (n, from) = self.socket.recv_from(&mut self.buf).map_err(|_| StepError::Timeout)?;
            if from == self.server {
                return Ok(&self.buf[..n]);
            }
        }
    }

    /// An authenticated request, retried once on 401/438 with the new nonce.
    fn request(&mut self, method: Method, attrs: Vec<Attribute>) -> Result<Message, StepError> {
        let request = Request::new(method, attrs);
        for _ in 0..3 {
            let sent = self.creds.request(&request).map_err(|e| StepError::Unexpected(e.to_string()))?;
            self.socket.send_to(&sent.bytes, self.server).map_err(|e| StepError::Unexpected(e.to_string()))?;
            let response = loop {
                let got = self.recv()?.to_vec();
                // Skip stray relayed data and late answers to earlier requests.
                if sent.is_answered_by(&got) {
                    break self.creds.response(&sent, &got).map_err(|e| StepError::Unexpected(e.to_string()))?;
                }
            };
            if !self.creds.learn(&response) {
                return Ok(response.message);
            }
        }
        Err(StepError::Unexpected(format!("{method:?}: no final answer after three attempts")))
    }

    fn expect_success(&mut self, method: Method, attrs: Vec<Attribute>) -> Result<Message, StepError> {
        let response = self.request(method, attrs)?;
        match response.get_attribute::<ErrorCode>() {
            None => Ok(response),
            Some(e) => Err(StepError::Unexpected(format!("{method:?} answered {} {}", e.code(), e.reason_phrase()))),
        }
    }

    /// Sends `payload` through the relay (a channel, or a Send indication) and waits for
    /// the echo peer's copy to come back.
    fn relay_round_trip(&mut self, channel: Option<u16>, peer: SocketAddr, payload: &[u8]) -> Result<(), StepError> {
        let bytes = match channel {
            Some(channel) => turnd::client::channel_data(channel, payload, false),
            None => self.creds.send_indication(peer, payload),
        }
        .map_err(|e| StepError::Unexpected(e.to_string()))?;
        self.socket.send_to(&bytes, self.server).map_err(|e| StepError::Unexpected(e.to_string()))?;
        loop {
            let got = self.recv()?;
            let data = match got.first() {
                Some(0x40..=0x7F) => got.get(4..4 + payload.len()),
                Some(_) => {
                    let Ok(decoded) = message::decode(got) else { continue };
                    if let Some(d) = decoded.message.get_attribute::<Data>() {
                        if d.data() == payload {
                            return Ok(());
                        }
                    }
                    continue;
                }
                None => continue,
            };
            if data == Some(payload) {
                return Ok(());
            }
        }
    }
}

fn channel_number(channel: u16) -> Attribute {
    let b = channel.to_be_bytes();
    let number: ChannelNumber = Opaque(vec![b[0], b[1], 0, 0]);
    number.into()
}

/// Where one slot is in its allocation's life.
enum Phase {
    /// No allocation: the next step opens a socket and allocates.
    Idle,
    /// Allocated; `step` counts the steps since.
    Live { client: Box<Client>, peer: SocketAddr, channel: Option<u16>, step: u32, ends_by_delete: bool },
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    steps: u64,
    allocations: u64,
    refreshes: u64,
    deletes: u64,
    abandoned: u64,
    relayed: u64,
    timeouts: u64,
    unexpected: u64,
}

/// One sample of turnd's resources.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    rss_kb: u64,
    fds: usize,
    allocations: Option<f64>,
    ports_in_use: Option<f64>,
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// `GET /metrics` on the admin listener, bounded by timeouts; empty on failure.
fn scrape(admin: SocketAddr) -> String {
    let Ok(mut s) = TcpStream::connect_timeout(&admin, Duration::from_secs(2)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    if s.write_all(request.as_bytes()).is_err() {
        return String::new();
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn sample(pid: u32, admin: SocketAddr, started: Instant) -> Sample {
    // Descriptors first: the scrape's own connection is then not counted.
    let fds = open_fds(pid);
    let rss_kb = rss_kb(pid);
    let text = scrape(admin);
    Sample {
        at: started.elapsed(),
        rss_kb,
        fds,
        allocations: metric(&text, "turnd_allocations"),
        ports_in_use: metric(&text, "turnd_relay_ports_in_use"),
    }
}

/// Raises this process's descriptor limit to its hard limit (turnd inherits it): a
/// soak holds a socket per slot here and a relay socket per allocation in turnd.
fn raise_nofile() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write one valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn config() -> String {
    format!(
        "realm = \"{REALM}\"\n\
         [[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:0\"\n\
         [relay]\nport-min = {PORT_MIN}\nport-max = {PORT_MAX}\nallowed-peers = [\"127.0.0.0/8\"]\nallow-host-peers = true\n\
         [limits]\ntotal-allocations = 20000\nallocations-per-user = 20000\nallocations-per-ip = 20000\n\
         [admin]\naddress = \"127.0.0.1:0\"\n\
         [[auth.user]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\n"
    )
}

/// One step of one slot. Returns what the step did, for the counters.
fn step(
    phase: &mut Phase,
    slot: usize,
    server: SocketAddr,
    peers: &[SocketAddr],
    lifetime: u32,
    rand: &mut Xorshift,
    counts: &mut Counts,
) -> Result<(), StepError> {
    match phase {
        Phase::Idle => {
            // Spread clients over 127.0.1.1-127.0.1.250 (per-IP bookkeeping gets churn too).
            let local = format!("127.0.1.{}:0", 1 + slot % 250);
            let mut client = Client::new(&local, server).map_err(|e| StepError::Unexpected(e.to_string()))?;
            // The kernel may hand this socket the port of a client that walked away from
            // a live allocation; its Allocate would then carry the same transaction id
            // and be answered as a retransmission (RFC 8656 §7.2). Start the ids at a
            // random point so a new client is not taken for an old one.
            for _ in 0..rand.below(1 << 10) {
                client.creds.transaction_id();
            }
            let response = client.expect_success(
                ALLOCATE,
                vec![RequestedTransport::new(17).into(), Lifetime::from_u32(lifetime).into()],
            )?;
            if response.get_attribute::<XorRelayAddress>().is_none() {
                return Err(StepError::Unexpected("Allocate success without XOR-RELAYED-ADDRESS".into()));
            }
            counts.allocations += 1;
            let peer = peers[rand.below(peers.len() as u64) as usize];
            // Even slots relay over a channel, odd ones with Send/Data indications.
            let channel = (slot % 2 == 0).then(|| 0x4000 + rand.below(0x1000) as u16);
            match channel {
                Some(channel) => client
                    .expect_success(CHANNEL_BIND, vec![channel_number(channel), XorPeerAddress::new(peer).into()])?,
                None => client.expect_success(CREATE_PERMISSION, vec![XorPeerAddress::new(peer).into()])?,
            };
            *phase =
                Phase::Live { client: Box::new(client), peer, channel, step: 0, ends_by_delete: rand.below(2) == 0 };
        }
        Phase::Live { client, peer, channel, step, ends_by_delete } => {
            *step += 1;
            match *step {
                2..=5 => {
                    let payload = rand.next().to_be_bytes();
                    client.relay_round_trip(*channel, *peer, &payload)?;
                    counts.relayed += 1;
                }
                // Refresh first, so a slow first pass over the slots cannot let the
                // allocation expire under its client.
                1 => {
                    let r = client.expect_success(REFRESH, vec![Lifetime::from_u32(lifetime).into()])?;
                    if r.get_attribute::<Lifetime>().is_none() {
                        return Err(StepError::Unexpected("Refresh success without LIFETIME".into()));
                    }
                    counts.refreshes += 1;
                }
                _ => {
                    if *ends_by_delete {
                        client.expect_success(REFRESH, vec![Lifetime::from_u32(0).into()])?;
                        counts.deletes += 1;
                    } else {
                        // Walk away: the allocation expires on its own in turnd.
                        counts.abandoned += 1;
                    }
                    *phase = Phase::Idle;
                }
            }
        }
    }
    Ok(())
}

#[test]
fn allocations_churn_with_flat_memory_descriptors_and_ports() {
    let seconds = env_u64("TURND_SOAK_SECONDS", 15);
    let slots = env_u64("TURND_SOAK_SLOTS", 300) as usize;
    let rate = env_u64("TURND_SOAK_RATE", 2000).max(1);
    let lifetime = env_u64("TURND_SOAK_LIFETIME", if seconds <= 60 { 10 } else { 30 }) as u32;
    let sample_every = Duration::from_secs(env_u64("TURND_SOAK_SAMPLE", 2).max(1));
    raise_nofile();
    // Allocation churn at info level would be hundreds of lines a second; warnings and
    // panics are what the soak looks for, plus the binary's own "listening on" lines
    // (target `turnd`; the event loop logs under `turnd::net`). TURND_LOG wins over
    // RUST_LOG in turnd.
    let filter = std::env::var("TURND_SOAK_LOG").unwrap_or_else(|_| "warn,turnd=info,turnd::net=warn".into());
    std::env::set_var("TURND_LOG", filter);
    let mut turnd = TurndProcess::start(&config(), &[]);
    std::env::remove_var("TURND_LOG");
    let (pid, server, admin) = (turnd.pid(), turnd.udp_addr(), turnd.admin_addr());
    let peers: Vec<UdpEchoPeer> = (0..4).map(|_| UdpEchoPeer::start()).collect();
    let peer_addrs: Vec<SocketAddr> = peers.iter().map(|p| p.addr()).collect();

    // A Binding first, so the baseline includes everything a served client costs.
    let mut probe = Client::new("127.0.0.1:0", server).expect("probe socket");
    let binding = Message::new(MessageClass::Request, BINDING, TransactionId::new([1; 12]));
    let bytes = message::encode(binding, Protection { key: None, fingerprint: true }).unwrap();
    probe.socket.send_to(&bytes, server).unwrap();
    let answer = message::decode(probe.recv().expect("Binding answered")).unwrap().message;
    assert!(answer.get_attribute::<XorMappedAddress>().is_some());

    let started = Instant::now();
    let samples = Arc::new(Mutex::new(vec![sample(pid, admin, started)]));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (samples, stop) = (samples.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut next = Instant::now() + sample_every;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
                if Instant::now() >= next {
                    next += sample_every;
                    let s = sample(pid, admin, started);
                    samples.lock().unwrap().push(s);
                }
            }
        })
    };

    // The load: every slot takes one step in turn, paced to `rate` steps a second, until
    // the deadline or the step budget (whichever comes first). A machine too busy to
    // reach MIN_CHURN allocations by the deadline keeps going until it does, for at most
    // a minute more: the checks below are about turnd, not about this machine's speed.
    let load_end = started + Duration::from_secs(seconds);
    let hard_end = load_end + Duration::from_secs(60);
    let budget = seconds.saturating_mul(rate).saturating_add(rate);
    let mut rand = Xorshift(random_u64() | 1);
    let mut phases: Vec<Phase> = (0..slots).map(|_| Phase::Idle).collect();
    let mut counts = Counts::default();
    let mut errors: Vec<String> = Vec::new();
    let mut slot = 0;
    let running = |counts: &Counts| {
        let now = Instant::now();
        now < load_end || (counts.allocations < MIN_CHURN && now < hard_end)
    };
    while running(&counts) && (counts.steps < budget || counts.allocations < MIN_CHURN) {
        let due = started + Duration::from_secs_f64(counts.steps as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        counts.steps += 1;
        if let Err(e) = step(&mut phases[slot], slot, server, &peer_addrs, lifetime, &mut rand, &mut counts) {
            match &e {
                StepError::Timeout => counts.timeouts += 1,
                StepError::Unexpected(_) => counts.unexpected += 1,
            }
            if errors.len() < 20 {
                errors.push(format!("{:?} slot {slot}: {e:?}", started.elapsed()));
            }
            phases[slot] = Phase::Idle;
        }
        slot = (slot + 1) % slots;
    }
    let load_time = started.elapsed();
    // Walk away from every live allocation: all of them must now expire by themselves.
    drop(phases);
    assert!(turnd.is_running(), "turnd died under load");
    let drain_deadline = Instant::now() + Duration::from_secs(u64::from(lifetime) + 10);
    let mut drained = None;
    while Instant::now() < drain_deadline {
        std::thread::sleep(Duration::from_millis(500));
        let s = sample(pid, admin, started);
        if s.allocations == Some(0.0) && s.ports_in_use == Some(0.0) {
            // One more publish period, so the snapshot is not a second stale.
            std::thread::sleep(Duration::from_millis(1100));
            drained = Some(sample(pid, admin, started));
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let samples = samples.lock().unwrap().clone();

    // The figures, for the log and for scripts/soak.sh.
    let mut table = String::from("seconds,rss_kb,fds,allocations,relay_ports_in_use\n");
    for s in samples.iter().chain(drained.iter()) {
        let opt = |v: Option<f64>| v.map_or("?".to_owned(), |v| format!("{v}"));
        table += &format!(
            "{:.0},{},{},{},{}\n",
            s.at.as_secs_f64(),
            s.rss_kb,
            s.fds,
            opt(s.allocations),
            opt(s.ports_in_use)
        );
    }
    if let Ok(path) = std::env::var("TURND_SOAK_CSV") {
        std::fs::write(&path, &table).expect("write TURND_SOAK_CSV");
    }
    let warm = load_time / 3;
    let baseline = samples[0];
    let after_warm: Vec<&Sample> = samples.iter().filter(|s| s.at >= warm && s.at <= load_time).collect();
    let warm_rss = after_warm.first().map_or(baseline.rss_kb, |s| s.rss_kb);
    let max_rss = after_warm.iter().map(|s| s.rss_kb).max().unwrap_or(0);
    let max_fds = samples.iter().map(|s| s.fds).max().unwrap_or(0);
    let max_allocations = samples.iter().filter_map(|s| s.allocations).fold(0.0, f64::max);
    let max_ports = samples.iter().filter_map(|s| s.ports_in_use).fold(0.0, f64::max);
    println!("{table}");
    println!(
        "soak: {load_time:.0?} of load, {slots} slots, lifetime {lifetime}s: {counts:?}\n\
         rss kB: start {} after warm-up {warm_rss} max after warm-up {max_rss} end {}\n\
         fds: start {} max {max_fds} end {}\n\
         allocations max {max_allocations}, relay ports in use max {max_ports}\n\
         first errors: {errors:#?}",
        baseline.rss_kb,
        drained.map_or(0, |d| d.rss_kb),
        baseline.fds,
        drained.map_or(0, |d| d.fds),
    );

    // Zero panics, and turnd is still serving.
    let logs = turnd.logs();
    assert!(!logs.contains("panicked"), "turnd panicked:\n{logs}");
    assert!(turnd.is_running(), "turnd exited during the soak");
    // The load really churned: thousands of allocations, all of them relaying.
    assert!(counts.allocations >= MIN_CHURN, "too little churn: {counts:?}");
    assert!(max_allocations >= slots as f64 / 2.0, "never held many allocations at once: max {max_allocations}");
    let failures = counts.timeouts + counts.unexpected;
    assert!(
        failures * 1000 <= counts.steps,
        "more than 0.1% of steps failed ({failures} of {}): {errors:#?}",
        counts.steps
    );
    // Everything returns: no allocation outlives its lifetime, every relay port goes back
    // to the pool and every relay socket is closed.
    let drained =
        drained.unwrap_or_else(|| panic!("allocations or ports still held {lifetime}s + 10s after the load:\n{table}"));
    assert_eq!(drained.ports_in_use, Some(0.0));
    assert!(
        drained.fds <= baseline.fds + 1,
        "descriptors leaked: {} at the start, {} after every allocation ended\n{table}",
        baseline.fds,
        drained.fds
    );
    // Flat memory after warm-up: allow allocator noise, not growth with the churn.
    assert!(
        max_rss <= warm_rss + warm_rss / 4 + 8 * 1024,
        "resident memory grew after warm-up: {warm_rss} kB -> {max_rss} kB\n{table}"
    );
    drop(peers);
}
