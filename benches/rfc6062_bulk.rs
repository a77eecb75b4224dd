//! RFC 6062 bulk transfer: turnd's CPU per byte spliced between TCP clients' data
//! connections and TCP peers, with `[tcp] worker-loop` off (each data connection's
//! task splices it) and on (the worker's loop does), interleaved run by run.
//!
//! Each run starts turnd (the release binary by default), makes one TCP allocation,
//! binds `--connections` data connections to peer connections made by Connect, then
//! sends `--mib` MiB each way on each of them at once (client to peer and peer to
//! client, every byte read) and ends them with half-closes. The figure is bytes moved
//! per second of turnd's CPU (user + system, all threads, from /proc), which the
//! client and peer threads of this process do not count in.
//!
//! ```text
//! cargo bench --bench rfc6062_bulk -- [--turnd PATH] [--mib N] [--connections N] [--rounds N]
//! ```
//!
//! (defaults: the turnd `cargo bench` builds, 256 MiB, 4 connections, 3 rounds). Under
//! `cargo test --all-targets` it moves 4 MiB each way once per path, as a check.
// A benchmark may unwrap (a failure ends the run) and call sysconf.
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use turnd::client::blocking::{Connection, Link};
use turnd::client::{Client, Credentials, Request, PROTOCOL_TCP};

const USER: &str = "bench";
const PASSWORD: &str = "bench-password";
const TIMEOUT: Duration = Duration::from_secs(5);

struct Options {
    turnd: String,
    mib: usize,
    connections: usize,
    rounds: usize,
}

fn options() -> Options {
    let mut o = Options { turnd: env!("CARGO_BIN_EXE_turnd").into(), mib: 256, connections: 4, rounds: 3 };
    // `cargo bench` passes --bench; `cargo test` (which runs bench targets with
    // --all-targets) does not: then a short check that every byte still arrives.
    if !std::env::args().any(|a| a == "--bench") {
        (o.mib, o.connections, o.rounds) = (4, 1, 1);
    }
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--turnd" => o.turnd = value(),
            "--mib" => o.mib = value().parse().expect("--mib N"),
            "--connections" => o.connections = value().parse().expect("--connections N"),
            "--rounds" => o.rounds = value().parse().expect("--rounds N"),
            // What `cargo bench` passes to every bench target.
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    o
}

/// User plus system CPU seconds of a process, from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

struct Turnd {
    child: Child,
    addr: SocketAddr,
    _config: TempConfig,
}

struct TempConfig(std::path::PathBuf);

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Drop for Turnd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(o: &Options, worker_loop: bool, run: usize) -> Turnd {
    // A free port, as far as a moment ago goes.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let config = format!(
        "realm = \"bench\"\n[[listen]]\ntransport = \"tcp\"\naddress = \"{addr}\"\n[admin]\nenabled = false\n\
         [tcp]\nworker-loop = {worker_loop}\n[log]\nlevel = \"warn\"\n\
         [relay]\nallowed-peers = [\"127.0.0.0/8\"]\nallow-host-peers = true\n\
         [[auth.user]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\n"
    );
    let path = std::env::temp_dir().join(format!("rfc6062-bulk-{}-{run}.toml", std::process::id()));
    std::fs::write(&path, config).unwrap();
    let child = Command::new(&o.turnd)
        .args(["serve", "-c"])
        .arg(&path)
        .env_remove("RUST_LOG")
        .env_remove("TURND_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", o.turnd));
    let turnd = Turnd { child, addr, _config: TempConfig(path) };
    let until = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < until, "turnd did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
    turnd
}

fn request(link: &mut Connection, client: &mut Client, request: &Request) -> turnd::client::Response {
    let response = link.request(client, request, TIMEOUT).unwrap();
    assert!(response.is_success(), "{:?}: {:?}", request.method, response.error());
    response
}

fn client() -> Client {
    Client::new(Credentials::long_term(USER, PASSWORD), *b"rfc6062bulk\0")
}

/// Data connections bound to peer connections: (client's end, peer's end).
fn bind(turnd: &Turnd, count: usize) -> (Connection, Vec<(TcpStream, TcpStream)>) {
    let mut control = Connection::new(Link::Tcp(TcpStream::connect(turnd.addr).unwrap()), turnd.addr);
    let mut creds = client();
    request(&mut control, &mut creds, &Request::allocate_transport(PROTOCOL_TCP));
    let mut pairs = Vec::new();
    for i in 0..count {
        // A peer address per connection (a second Connect to one gets 446).
        let peers = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1 + i as u8], 0))).unwrap();
        let target = peers.local_addr().unwrap();
        let id = request(&mut control, &mut creds, &Request::connect(target)).connection_id().expect("CONNECTION-ID");
        let (peer_end, _) = peers.accept().unwrap();
        let mut data = Connection::new(Link::Tcp(TcpStream::connect(turnd.addr).unwrap()), turnd.addr);
        request(&mut data, &mut client(), &Request::connection_bind(id));
        let Link::Tcp(data) = data.into_link() else { unreachable!("a TCP link") };
        pairs.push((data, peer_end));
    }
    (control, pairs)
}

/// Sends `bytes` then ends the stream.
fn send(mut to: TcpStream, bytes: usize) {
    let chunk = vec![0x5a_u8; 64 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        to.write_all(&chunk[..n]).unwrap();
        left -= n;
    }
    to.shutdown(Shutdown::Write).unwrap();
}

/// Reads to the end of the stream; how many bytes came.
fn receive(mut from: TcpStream) -> usize {
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    loop {
        match from.read(&mut buf).unwrap() {
            0 => return got,
            n => got += n,
        }
    }
}

/// One run: (bytes moved, turnd CPU seconds, wall seconds).
fn run(o: &Options, worker_loop: bool, run: usize) -> (usize, f64, f64) {
    let turnd = start(o, worker_loop, run);
    let (_control, pairs) = bind(&turnd, o.connections);
    let each = o.mib << 20;
    let pid = turnd.child.id();
    let cpu = cpu_seconds(pid);
    let started = Instant::now();
    let mut threads = Vec::new();
    for (data, peer) in pairs {
        let (data2, peer2) = (data.try_clone().unwrap(), peer.try_clone().unwrap());
        threads.push(std::thread::spawn(move || {
            send(data, each);
            0
        }));
        threads.push(std::thread::spawn(move || receive(peer)));
        threads.push(std::thread::spawn(move || {
            send(peer2, each);
            0
        }));
        threads.push(std::thread::spawn(move || receive(data2)));
    }
    let moved: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu;
    assert_eq!(moved, 2 * each * o.connections, "every byte arrives");
    (moved, cpu, wall)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let o = options();
    println!(
        "RFC 6062 bulk: {} data connection(s), {} MiB each way on each, {} round(s), turnd {}",
        o.connections, o.mib, o.rounds, o.turnd
    );
    let mut per_cpu = [Vec::new(), Vec::new()];
    for round in 0..o.rounds {
        for (i, worker_loop) in [false, true].into_iter().enumerate() {
            let (bytes, cpu, wall) = run(&o, worker_loop, round * 2 + i);
            let mib = bytes as f64 / (1 << 20) as f64;
            println!(
                "round {round} worker-loop={worker_loop:<5} {mib:.0} MiB: turnd CPU {cpu:.2} s, {:.0} MiB per CPU-second, {:.0} MiB/s",
                mib / cpu,
                mib / wall
            );
            per_cpu[i].push(mib / cpu);
        }
    }
    let (task, inloop) = (median(per_cpu[0].clone()), median(per_cpu[1].clone()));
    println!("median MiB per turnd CPU-second: task {task:.0}, loop {inloop:.0} ({:.2}x)", inloop / task);
}
