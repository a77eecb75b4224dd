//! The servers under test as child processes (turnd, coturn's `turnserver`, the raw
//! forwarder), and what `/proc` says about them.
//!
//! Every child is started with PR_SET_PDEATHSIG so it dies with the bench, and is
//! stopped on drop (SIGTERM, then SIGKILL after a grace period).

use crate::stun;
use crate::udp;
use crate::veth;
use std::io::{self, BufRead, BufReader};
use std::net::{SocketAddrV4, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to answer its first Binding request.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a stopped server gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(1);
/// The same under a profiler, which writes its output at exit.
const PROFILED_STOP_GRACE: Duration = Duration::from_secs(30);

/// Which server, and how it is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// turnd from this tree, with its `workers` key (1: one event loop; 0: one per
    /// available core).
    Turnd { workers: usize },
    /// coturn; `threads` is its `--relay-threads` (0: single-threaded mode; `None`:
    /// its default, one relay thread per CPU).
    Coturn { threads: Option<u32> },
    /// The raw forwarder, stripping and adding `header` bytes of framing.
    Forwarder,
    /// turnd with `[relay] udp-offload = false` (no GRO, no GSO), one worker.
    TurndPlain,
    /// turnd with the XDP fast path on the servers' veth (`[relay] xdp = "on"`), one
    /// worker: the veth path only, and a turnd built with the `xdp` feature.
    TurndXdp,
}

impl Kind {
    pub fn label(&self) -> String {
        match self {
            // One event loop is the plain name, as coturn's single-threaded mode is.
            Kind::Turnd { workers: 1 } => "turnd".into(),
            Kind::Turnd { workers: 0 } => "turnd(w=auto)".into(),
            Kind::Turnd { workers } => format!("turnd(w={workers})"),
            Kind::Coturn { threads: None } => "coturn(default threads)".into(),
            Kind::Coturn { threads: Some(0) } => "coturn".into(),
            Kind::Coturn { threads: Some(n) } => format!("coturn(-m {n})"),
            Kind::Forwarder => "forwarder".into(),
            Kind::TurndPlain => "turnd(no-gso)".into(),
            Kind::TurndXdp => "turnd-xdp".into(),
        }
    }
}

/// Where the bench keeps its files and which binaries it runs.
#[derive(Debug, Clone)]
pub struct Setup {
    pub dir: PathBuf,
    pub turnd: PathBuf,
    /// A command put in front of turnd (a profiler); CPU figures then describe it.
    pub turnd_prefix: Vec<String>,
    pub coturn: Option<PathBuf>,
    /// Relay port ranges of turnd and coturn.
    pub turnd_ports: (u16, u16),
    pub coturn_ports: (u16, u16),
    /// The server certificate and key (PEM) when the servers also listen on TCP (the
    /// UDP port's number) and TLS (the next free port); None: UDP only.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// TOML merged into turnd's generated config (`--turnd-config-extra`).
    pub turnd_extra: Option<toml::Table>,
    pub verbose: bool,
}

/// A running server.
pub struct Server {
    child: Child,
    grace: Duration,
    pub pid: u32,
    pub addr: SocketAddrV4,
    pub label: String,
    /// turnd's configured `workers` (None for the other servers).
    pub workers: Option<usize>,
    /// The TCP and TLS listeners, when `Setup::tls` asked for them.
    pub streams: Option<(SocketAddrV4, SocketAddrV4)>,
}

impl Drop for Server {
    fn drop(&mut self) {
        stop(&mut self.child, self.grace);
    }
}

fn stop(child: &mut Child, grace: Duration) {
    let pid = child.id() as libc::pid_t;
    stop_child(child, pid, grace);
    // Whatever is left of its process group: turnd started behind a `--turnd-prefix`
    // (perf) is the child's child, which outlives a signal to the child alone.
    // SAFETY: kill(2) on our own child's process group; ESRCH when it has none left.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
}

fn stop_child(child: &mut Child, pid: libc::pid_t, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SAFETY: kill(2) on our own child's process group, else (no group of its own) on
    // its pid.
    if unsafe { libc::kill(-pid, libc::SIGTERM) } != 0 {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Makes the child die with us, whatever happens to the bench.
fn die_with_parent(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// A UDP port on 127.0.0.1 that was free a moment ago (for TCP too when `tcp`).
fn free_port(tcp: bool) -> io::Result<u16> {
    for _ in 0..100 {
        let port = UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
        if !tcp || std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(io::Error::other("no port free for both UDP and TCP"))
}

/// The UDP (and TCP) port and, with `Setup::tls`, the TLS port.
fn ports(setup: &Setup) -> io::Result<(u16, u16)> {
    let port = free_port(setup.tls.is_some())?;
    let tls = if setup.tls.is_some() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.local_addr()?.port()
    } else {
        0
    };
    Ok((port, tls))
}

fn stream_addrs(setup: &Setup, port: u16, tls: u16) -> Option<(SocketAddrV4, SocketAddrV4)> {
    setup.tls.as_ref().map(|_| (SocketAddrV4::new(veth::server_ip(), port), SocketAddrV4::new(veth::server_ip(), tls)))
}

/// Starts `kind`. `peer` and `header` only matter for the forwarder.
pub fn start(setup: &Setup, kind: &Kind, client: &UdpSocket, peer: SocketAddrV4, header: usize) -> io::Result<Server> {
    match kind {
        Kind::Turnd { workers } => start_turnd(setup, *workers, client, kind),
        Kind::TurndPlain | Kind::TurndXdp => start_turnd(setup, 1, client, kind),
        Kind::Coturn { threads } => start_coturn(setup, *threads, client),
        Kind::Forwarder => start_forwarder(peer, header),
    }
}

fn start_turnd(setup: &Setup, workers: usize, client: &UdpSocket, kind: &Kind) -> io::Result<Server> {
    let (port, tls_port) = ports(setup)?;
    let (min, max) = setup.turnd_ports;
    // Limits raised for the 10,000-allocation memory run and the worker count written
    // out (turnd's default is one per core); everything else is turnd's default
    // (including info-level logging, as coturn logs at its default too).
    let mut config = format!(
        "realm = \"r\"\ndrain-time = \"0s\"\nworkers = {workers}\n\
         [[listen]]\ntransport = \"udp\"\naddress = \"{ip}:{port}\"\n\
         [relay]\nport-min = {min}\nport-max = {max}\nallowed-peers = [\"{peers}\"]\nallow-host-peers = true\n\
         [[auth.user]]\nname = \"u\"\npassword = \"p\"\n\
         [limits]\ntotal-allocations = 50000\nallocations-per-user = 50000\nallocations-per-ip = 50000\n\
         [admin]\nenabled = false\n",
        ip = veth::server_ip(),
        peers = veth::peer_net(),
    );
    if let Some((cert, key)) = &setup.tls {
        config.push_str(&format!(
            "[[listen]]\ntransport = \"tcp\"\naddress = \"{ip}:{port}\"\n\
             [[listen]]\ntransport = \"tls\"\naddress = \"{ip}:{tls_port}\"\n\
             [tls]\ncertificate = \"{}\"\nprivate-key = \"{}\"\n",
            cert.display(),
            key.display(),
            ip = veth::server_ip(),
        ));
    }
    let config = with_extra(&config, variant_config(kind), setup.turnd_extra.as_ref())?;
    // Files named after the port: the scale section runs two turnd at once.
    let path = setup.dir.join(format!("turnd-{port}.toml"));
    std::fs::write(&path, config)?;
    let log = std::fs::File::create(setup.dir.join(format!("turnd-{port}.log")))?;
    let mut command = match setup.turnd_prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(&setup.turnd);
            c
        }
        None => Command::new(&setup.turnd),
    };
    command.arg("serve").arg("-c").arg(&path).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
    // A group of its own, so that stopping it reaches turnd behind a prefix too.
    command.process_group(0);
    die_with_parent(&mut command);
    veth::enter_server_ns(&mut command);
    let child = command.spawn()?;
    let label = kind.label();
    let mut server = ready(child, SocketAddrV4::new(veth::server_ip(), port), &label, client, setup.verbose)?;
    server.workers = Some(workers);
    server.streams = stream_addrs(setup, port, tls_port);
    if !setup.turnd_prefix.is_empty() {
        server.grace = PROFILED_STOP_GRACE;
    }
    Ok(server)
}

fn start_coturn(setup: &Setup, threads: Option<u32>, client: &UdpSocket) -> io::Result<Server> {
    let Some(bin) = &setup.coturn else {
        return Err(io::Error::new(io::ErrorKind::NotFound, "turnserver (Debian package coturn) is not installed"));
    };
    let (port, tls_port) = ports(setup)?;
    let (min, max) = setup.coturn_ports;
    let dir = &setup.dir;
    let mut command = Command::new(bin);
    let ip = veth::server_ip().to_string();
    command.args(["-n", "--no-cli", "--listening-ip", &ip, "--relay-ip", &ip]);
    command.args(["--allow-loopback-peers", "--lt-cred-mech", "--user", "u:p", "--realm", "r"]);
    command.args([
        "--listening-port",
        &port.to_string(),
        "--min-port",
        &min.to_string(),
        "--max-port",
        &max.to_string(),
    ]);
    // Same surface as the turnd config: UDP only, or with the stream cells TCP on the
    // same port and TLS on another; never DTLS or RFC 6062 TCP relays.
    command.args(["--no-dtls", "--no-tcp-relay"]);
    match &setup.tls {
        None => {
            command.args(["--no-tls", "--no-tcp"]);
        }
        Some((cert, key)) => {
            command.arg("--tls-listening-port").arg(tls_port.to_string());
            command.arg("--cert").arg(cert).arg("--pkey").arg(key);
        }
    }
    if let Some(threads) = threads {
        command.args(["--relay-threads", &threads.to_string()]);
    }
    // Files named after the port: the scale section runs two coturn at once.
    command.arg("--pidfile").arg(dir.join(format!("coturn-{port}.pid")));
    command.arg("--db").arg(dir.join(format!("coturn-{port}.sqlite")));
    command.arg("--log-file").arg(dir.join(format!("coturn-{port}.log"))).arg("--simple-log").arg("--no-stdout-log");
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    die_with_parent(&mut command);
    veth::enter_server_ns(&mut command);
    let child = command.spawn()?;
    let label = Kind::Coturn { threads }.label();
    let mut server = ready(child, SocketAddrV4::new(veth::server_ip(), port), &label, client, setup.verbose)?;
    server.streams = stream_addrs(setup, port, tls_port);
    Ok(server)
}

/// What a turnd variant changes in the generated config (applied last: it wins over
/// `--turnd-config-extra`, or the variant would not be what its label says).
fn variant_config(kind: &Kind) -> Option<String> {
    match kind {
        Kind::TurndPlain => Some("[relay]\nudp-offload = false".into()),
        Kind::TurndXdp => Some(format!("[relay]\nxdp = \"on\"\nxdp-interfaces = [\"{}\"]", veth::SERVER_IF)),
        _ => None,
    }
}

/// turnd's generated `config` with `extra` merged in, table by table (a key of `extra`
/// wins), then the `variant`'s keys.
fn with_extra(config: &str, variant: Option<String>, extra: Option<&toml::Table>) -> io::Result<String> {
    if variant.is_none() && extra.is_none() {
        return Ok(config.to_owned());
    }
    let mut table: toml::Table = config.parse().map_err(|e| io::Error::other(format!("generated config: {e}")))?;
    if let Some(extra) = extra {
        merge(&mut table, extra);
    }
    if let Some(variant) = variant {
        let variant: toml::Table = variant.parse().map_err(io::Error::other)?;
        merge(&mut table, &variant);
    }
    toml::to_string(&table).map_err(io::Error::other)
}

fn merge(into: &mut toml::Table, from: &toml::Table) {
    for (key, value) in from {
        match (into.get_mut(key), value) {
            (Some(toml::Value::Table(mine)), toml::Value::Table(theirs)) => merge(mine, theirs),
            _ => {
                into.insert(key.clone(), value.clone());
            }
        }
    }
}

/// Waits until the server answers a Binding request.
fn ready(mut child: Child, addr: SocketAddrV4, label: &str, client: &UdpSocket, verbose: bool) -> io::Result<Server> {
    let pid = child.id();
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let mut batch = udp::RecvBatch::new(64, 0);
    let mut seq = 0u32;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(io::Error::other(format!("{label} exited during startup: {status}")));
        }
        seq += 1;
        let request = stun::binding_request(stun::tid(u32::MAX, seq));
        let _ = client.send_to(&request, addr);
        udp::wait_readable(&[udp::fd(client)], 50);
        let n = batch.recv(udp::fd(client));
        for i in 0..n {
            let (bytes, from) = batch.get(i);
            if from == addr && stun::Response::parse(bytes).is_some_and(|r| r.is_success()) {
                if verbose {
                    eprintln!("  {label} (pid {pid}) ready on {addr}");
                }
                return Ok(Server {
                    child,
                    grace: STOP_GRACE,
                    pid,
                    addr,
                    label: label.to_owned(),
                    workers: None,
                    streams: None,
                });
            }
        }
    }
    stop(&mut child, STOP_GRACE);
    Err(io::Error::other(format!("{label} did not answer on {addr} within {STARTUP_TIMEOUT:?}")))
}

fn start_forwarder(peer: SocketAddrV4, header: usize) -> io::Result<Server> {
    let exe = std::env::current_exe()?;
    let mut command = Command::new(exe);
    command.args(["--forwarder", &peer.to_string(), &header.to_string(), &veth::server_ip().to_string()]);
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    die_with_parent(&mut command);
    veth::enter_server_ns(&mut command);
    let mut child = command.spawn()?;
    let pid = child.id();
    let stdout = child.stdout.take().ok_or_else(|| io::Error::other("no stdout"))?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line.trim().strip_prefix("listening on ").and_then(|a| a.parse().ok());
    match addr {
        Some(addr) => {
            Ok(Server { child, grace: STOP_GRACE, pid, addr, label: "forwarder".into(), workers: None, streams: None })
        }
        None => {
            stop(&mut child, STOP_GRACE);
            Err(io::Error::other(format!("forwarder did not start: {line:?}")))
        }
    }
}

/// User plus system CPU time of a whole process (all its threads), in seconds, from
/// fields 14 and 15 of `/proc/PID/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    stat_cpu_seconds(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// User plus system CPU seconds from the text of a `stat` file (a process's or a thread's).
fn stat_cpu_seconds(stat: &str) -> Option<f64> {
    // The command name may hold spaces: count fields after its closing parenthesis.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// A `kB` line of `/proc/PID/status` (VmRSS, VmHWM), in KiB.
pub fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].trim_start_matches(':').split_whitespace().next()?.parse().ok()
}

/// The CPUs a process may run on, as the kernel lists them (`0-1`), from
/// `Cpus_allowed_list` in `/proc/PID/status`.
pub fn cpus_allowed(pid: u32) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Cpus_allowed_list:"))?;
    Some(line["Cpus_allowed_list:".len()..].trim().to_owned())
}

/// CPU seconds of each thread of a process so far, by thread id, with the thread's name
/// (`/proc/PID/task/TID/comm` and `stat`), in thread id order.
pub fn thread_cpu(pid: u32) -> Vec<(u32, String, f64)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    let mut threads: Vec<(u32, String, f64)> = tasks
        .filter_map(|t| {
            let tid: u32 = t.ok()?.file_name().to_str()?.parse().ok()?;
            let name = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
            Some((tid, name.trim().to_owned(), stat_cpu_seconds(&stat)?))
        })
        .collect();
    threads.sort_by_key(|t| t.0);
    threads
}

/// Threads of a process.
pub fn threads(pid: u32) -> Option<u64> {
    status_kb(pid, "Threads")
}

/// `turnserver` on PATH, if coturn is installed.
pub fn find_coturn() -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join("turnserver")).find(|p| p.is_file())
}

/// Allocations turnd can hold under this process's open-file hard limit, which it
/// raises its soft limit to and splits (src/descriptors.rs): a reserve of 128 plus 16 per
/// worker, half of the rest for client streams when it listens on TCP or TLS
/// (`streams`), one relay socket per allocation (the bench relays IPv4 only).
pub fn turnd_allocation_budget(workers: usize, streams: bool) -> u64 {
    let workers = if workers == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { workers };
    // SAFETY: getrlimit with a valid rlimit struct.
    let hard = unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return u64::MAX;
        }
        lim.rlim_max
    };
    let available = hard.saturating_sub(128 + 16 * workers as u64);
    if streams {
        available - available / 2
    } else {
        available
    }
}
