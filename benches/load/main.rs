//! turnd's load benchmark: the relay data plane (clients over UDP, TCP and TLS), Binding, Allocate + Refresh(0) churn
//! and memory per idle allocation, against turnd, coturn and a raw forwarder (the
//! kernel's floor), in one run, and how turnd and coturn scale over the cores. See
//! docs/bench.md.
//!
//! The main comparison is one core against one core: turnd with `workers = 1` (one event
//! loop; `--turnd-workers` changes it) beside coturn's single-threaded mode. The scale
//! section runs one channel workload through turnd with one worker and with one per
//! core, and through coturn single-threaded and with its default thread count.
//!
//! `cargo bench --bench load` runs it in full (about twelve minutes), `-- --quick` in about
//! one; `-- --help` lists the options. Under `cargo test` it runs a smoke check of its
//! own machinery against turnd (no timings are judged). It prints a table, one JSON line
//! per measurement and a last JSON line with the targets of issue 8.
// A benchmark may unwrap (a panic is a failed run) and use unsafe for process plumbing
// (signals, namespaces); the server code denies both (Cargo.toml [lints]).
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

// The tests' CA helper (openssl): the TLS cells' server certificate.
#[path = "../../tests/common/ca.rs"]
mod ca;
mod control;
mod forwarder;
mod procs;
mod relay;
mod sessions;
mod smoke;
mod stream_cells;
mod streams;
mod stun;
mod udp;
mod veth;

use control::{Clients, Meter, Window};
use procs::{Kind, Setup};
use relay::{Mode, Spec};
use serde_json::{json, Value};
use sessions::Prepare;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use streams::Transport;

const HELP: &str = "\
turnd load benchmark: cargo bench --bench load -- [OPTIONS]

  --quick               short run (about a minute): 1 s windows, fewer cells, 2,000 idle allocations
  --duration SECS       measurement window (default 2, quick 1)
  --warmup SECS         traffic before each window (default 0.3)
  --window N            packets in flight per allocation (default 2)
  --repeat N            windows per server in each relay cell and in scale, median
                        reported (default 3, quick 1)
  --allocations LIST    UDP relay cells (default 10,200,1000,10000; quick: 10,200); past 2,000
                        packets in flight, packets rotate over the allocations (docs/bench.md)
  --stream-allocations LIST  TCP/TLS relay cells, one connection each (default 10,200,1000;
                        quick: 10,200)
  --payloads LIST       payload bytes (default 100,1000; quick: 100)
  --modes LIST          channel,send (default both; UDP cells only)
  --transports LIST     udp,tcp,tls: client transports of the relay cells (default all three;
                        quick: udp). TCP and TLS cells relay ChannelData over one connection
                        per allocation to the UDP echo peer, through turnd (also with one worker
                        per core) and coturn
  --servers LIST        turnd,coturn,forwarder (default all; coturn needs `turnserver`);
                        turnd-plain adds turnd with `[relay] udp-offload = false` (no GRO/GSO);
                        turnd-xdp adds turnd with its XDP fast path on the servers' veth
                        (`--path veth` only; build with `cargo bench --features xdp`)
  --path PATH           loopback (default) or veth: the servers in one network namespace and
                        the generator in another, joined by a veth pair (root; removed with
                        the bench however it ends); relay cells then also report softirq time
  --veth-gro on|off     GRO on both ends of the veth pair (default on: NAPI receive)
  --generator-gso       the generator (clients, echo peer) sends runs of same-sized datagrams
                        to one destination as one GSO send, as QUIC stacks do (the
                        forwarder is unchanged)
  --bulk                add a bulk relay cell: 4 allocations x window 64 of 1,000-byte
                        ChannelData (one flow each, many datagrams in flight: where GRO/GSO
                        can apply)
  --turnd-config-extra TOML  a file, or TOML text (`\\n` for a newline), merged into
                        turnd's generated config, a key given winning: '[relay]\\nxdp = \"on\"'
  --only LIST           relay,binding,churn,memory,scale (default all); scale runs 1,000
                        channel allocations through turnd with 1 worker and with one per
                        core, and through coturn -m 0 and coturn with its default threads
  --memory-allocations N  idle allocations for the memory run (default 10000, quick 2000)
  --turnd-workers N     turnd's `workers` for the main comparison (default 1: one event
                        loop, one core; 0: one per core)
  --coturn-threads N    coturn --relay-threads for the main comparison (default 0: its
                        single-threaded mode, one core like --turnd-workers 1)
  --json FILE           also append the JSON lines to FILE
  --turnd PATH          the turnd binary (default: the one cargo built with this bench)
  --turnd-prefix CMD    run turnd under CMD (a profiler; CPU figures then describe CMD)
  --realtime            run the generator and the servers SCHED_FIFO (root): on a machine
                        shared with other work, wake-up delays otherwise dominate
  --verbose             say what is happening on stderr
";

/// Allocations of the scale section: enough that the SO_REUSEPORT hash spreads them
/// evenly over turnd's workers (with two, one standard deviation is 16 of a worker's
/// 500), and, at the usual window of 2, 2,000 packets in flight: the relay matrix's
/// 1,000-allocation cells keep one turnd event loop at 95% of a core with that, queues
/// never empty. A larger window only adds queueing: at window 8 the p99 round trip
/// reached 470 ms on a busy 2-core machine, next to the 500 ms after which a packet
/// counts as lost, and loss became an artefact of the timeout.
const SCALE_ALLOCATIONS: usize = 1000;
/// The bulk cell (`--bulk`): a few allocations, each one flow with many datagrams in
/// flight, of a size media and QUIC use: where GRO can coalesce and GSO batch.
const BULK_ALLOCATIONS: usize = 4;
const BULK_WINDOW: usize = 64;
const BULK_PAYLOAD: usize = 1000;
/// Payload bytes in the scale section: small, so per-packet work dominates, as it does
/// for media.
const SCALE_PAYLOAD: usize = 100;

/// Everything the command line says.
#[derive(Debug, Clone)]
struct Options {
    quick: bool,
    duration: Duration,
    warmup: Duration,
    window: usize,
    repeat: usize,
    allocations: Vec<usize>,
    stream_allocations: Vec<usize>,
    payloads: Vec<usize>,
    modes: Vec<Mode>,
    transports: Vec<Transport>,
    servers: Vec<String>,
    only: Vec<String>,
    memory_allocations: usize,
    /// turnd's `workers` in the main comparison (the scale section sets its own).
    turnd_workers: usize,
    coturn_threads: Option<u32>,
    json: Option<PathBuf>,
    turnd: PathBuf,
    turnd_prefix: Vec<String>,
    realtime: bool,
    verbose: bool,
    /// `--path veth`.
    veth: bool,
    veth_gro: bool,
    bulk: bool,
    generator_gso: bool,
    turnd_extra: Option<toml::Table>,
}

fn list<T: std::str::FromStr>(s: &str) -> Result<Vec<T>, String> {
    s.split(',').map(|x| x.trim().parse::<T>().map_err(|_| format!("bad list item {x:?}"))).collect()
}

fn parse(args: &[String]) -> Result<Options, String> {
    let quick = args.iter().any(|a| a == "--quick");
    let mut o = Options {
        quick,
        duration: Duration::from_secs(if quick { 1 } else { 2 }),
        warmup: Duration::from_millis(300),
        window: 2,
        repeat: if quick { 1 } else { 3 },
        allocations: if quick { vec![10, 200] } else { vec![10, 200, 1000, 10_000] },
        stream_allocations: if quick { vec![10, 200] } else { vec![10, 200, 1000] },
        payloads: if quick { vec![100] } else { vec![100, 1000] },
        modes: vec![Mode::Channel, Mode::Send],
        transports: if quick { vec![Transport::Udp] } else { vec![Transport::Udp, Transport::Tcp, Transport::Tls] },
        servers: vec!["turnd".into(), "coturn".into(), "forwarder".into()],
        only: vec!["relay".into(), "binding".into(), "churn".into(), "memory".into(), "scale".into()],
        memory_allocations: if quick { 2000 } else { 10_000 },
        turnd_workers: 1,
        coturn_threads: Some(0),
        json: None,
        turnd: PathBuf::from(env!("CARGO_BIN_EXE_turnd")),
        turnd_prefix: Vec::new(),
        realtime: false,
        verbose: false,
        veth: false,
        veth_gro: true,
        bulk: false,
        generator_gso: false,
        turnd_extra: None,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().cloned().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--bench" | "--quick" => {}
            "--help" | "-h" => return Err(String::new()),
            "--verbose" | "-v" => o.verbose = true,
            "--realtime" => o.realtime = true,
            "--duration" => o.duration = Duration::from_secs_f64(value()?.parse().map_err(|_| "bad --duration")?),
            "--warmup" => o.warmup = Duration::from_secs_f64(value()?.parse().map_err(|_| "bad --warmup")?),
            "--repeat" => o.repeat = value()?.parse().map_err(|_| "bad --repeat")?,
            "--window" => o.window = value()?.parse().map_err(|_| "bad --window")?,
            "--allocations" => o.allocations = list(&value()?)?,
            "--stream-allocations" => o.stream_allocations = list(&value()?)?,
            "--payloads" => o.payloads = list(&value()?)?,
            "--modes" => {
                o.modes = list::<String>(&value()?)?
                    .iter()
                    .map(|m| match m.as_str() {
                        "channel" => Ok(Mode::Channel),
                        "send" => Ok(Mode::Send),
                        other => Err(format!("unknown mode {other:?}")),
                    })
                    .collect::<Result<_, _>>()?
            }
            "--transports" => {
                o.transports =
                    list::<String>(&value()?)?.iter().map(|t| Transport::parse(t)).collect::<Result<_, _>>()?
            }
            "--servers" => o.servers = list(&value()?)?,
            "--only" => o.only = list(&value()?)?,
            "--memory-allocations" => {
                o.memory_allocations = value()?.parse().map_err(|_| "bad --memory-allocations")?
            }
            "--turnd-workers" => o.turnd_workers = value()?.parse().map_err(|_| "bad --turnd-workers")?,
            "--coturn-threads" => {
                let v = value()?;
                o.coturn_threads =
                    if v == "default" { None } else { Some(v.parse().map_err(|_| "bad --coturn-threads")?) };
            }
            "--json" => o.json = Some(PathBuf::from(value()?)),
            "--turnd" => o.turnd = PathBuf::from(value()?),
            "--turnd-prefix" => o.turnd_prefix = value()?.split_whitespace().map(String::from).collect(),
            "--path" => {
                o.veth = match value()?.as_str() {
                    "veth" => true,
                    "loopback" => false,
                    other => return Err(format!("unknown path {other:?} (loopback or veth)")),
                }
            }
            "--veth-gro" => {
                o.veth_gro = match value()?.as_str() {
                    "on" => true,
                    "off" => false,
                    other => return Err(format!("--veth-gro: {other:?} is neither on nor off")),
                }
            }
            "--bulk" => o.bulk = true,
            "--generator-gso" => o.generator_gso = true,
            "--turnd-config-extra" => {
                let v = value()?;
                let text = match std::fs::read_to_string(&v) {
                    Ok(file) => file,
                    Err(_) => v.replace("\\n", "\n"),
                };
                o.turnd_extra = Some(text.parse().map_err(|e| format!("--turnd-config-extra: {e}"))?);
            }
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    if o.window == 0 || o.payloads.iter().any(|&p| !(16..=1400).contains(&p)) {
        return Err("--window must be at least 1 and payloads 16..=1400 bytes".into());
    }
    Ok(o)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--forwarder") {
        let peer = args.get(1).and_then(|a| a.parse().ok()).expect("--forwarder PEER HEADER");
        let header = args.get(2).and_then(|a| a.parse().ok()).expect("--forwarder PEER HEADER");
        let bind = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(Ipv4Addr::LOCALHOST);
        if let Err(e) = forwarder::main(peer, header, bind) {
            eprintln!("forwarder: {e}");
            std::process::exit(1);
        }
        return;
    }
    // `cargo bench` passes --bench; `cargo test` (which builds benches with
    // --all-targets) passes nothing: then check the machinery, briefly, and stop.
    if !args.iter().any(|a| a == "--bench") {
        smoke::smoke();
        return;
    }
    let options = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}\n");
            }
            eprint!("{HELP}");
            std::process::exit(if e.is_empty() { 0 } else { 2 });
        }
    };
    if let Err(e) = Bench::new(options).and_then(|mut b| b.run()) {
        eprintln!("load bench failed: {e}");
        std::process::exit(1);
    }
}

/// One bench run: its sockets, its scratch directory and what it measured.
struct Bench {
    o: Options,
    setup: Setup,
    client: UdpSocket,
    peer: UdpSocket,
    sources: Vec<Ipv4Addr>,
    json: Vec<Value>,
    /// Relay results by (mode, allocations, payload, server label).
    relay: Vec<(Mode, usize, usize, String, relay::Outcome)>,
    binding: Vec<(String, Window)>,
    churn: Vec<(String, Window, sessions::Churn, u64, u64)>,
    memory: Vec<(String, u64, u64, usize)>,
    /// Client addresses the churn workload cycles through (one 5-tuple per pair).
    churn_pool: Vec<Ipv4Addr>,
    /// The TLS cells' CA and server certificate, made when first needed.
    ca: Option<ca::TestCa>,
}

impl Bench {
    fn new(o: Options) -> std::io::Result<Self> {
        // Before any socket or thread: the process moves to the generator's namespace.
        if o.veth {
            veth::setup(o.veth_gro)?;
            if o.servers.iter().any(|s| s == "turnd-xdp") {
                veth::enable_xdp(xdp_object()?)?;
            }
        }
        if o.generator_gso {
            udp::generator_gso();
        }
        udp::raise_fd_limit();
        if o.realtime {
            realtime()?;
        }
        let dir = std::env::temp_dir().join(format!("turnd-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let setup = Setup {
            dir,
            turnd: o.turnd.clone(),
            turnd_prefix: o.turnd_prefix.clone(),
            coturn: procs::find_coturn(),
            // Room for 10,000 allocations each; the two servers of a relay cell run at
            // once, so their ranges differ. Mostly below the kernel's ephemeral range
            // (32768-60999 by default), so other programs' sockets rarely collide.
            turnd_ports: (12000, 23999),
            coturn_ports: (24000, 35999),
            tls: None,
            turnd_extra: o.turnd_extra.clone(),
            verbose: o.verbose,
        };
        let client = udp::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
        let peer = udp::bind(SocketAddrV4::new(veth::generator_ip(), 0))?;
        let most = o.allocations.iter().copied().chain([o.memory_allocations, 256]).max().unwrap_or(256);
        let sources = (0..most).map(control::source).collect();
        Ok(Bench {
            o,
            setup,
            client,
            peer,
            sources,
            json: Vec::new(),
            relay: Vec::new(),
            binding: Vec::new(),
            churn: Vec::new(),
            memory: Vec::new(),
            // Past the relay and memory sources, so a churned 5-tuple is never one of theirs.
            churn_pool: (0..200_000).map(|i| control::source(100_000 + i)).collect(),
            ca: None,
        })
    }

    fn clients(&self) -> Clients<'_> {
        Clients { socket: &self.client, sources: &self.sources }
    }

    fn wants(&self, group: &str) -> bool {
        self.o.only.iter().any(|g| g == group)
    }

    /// The servers of the main comparison, in order.
    fn kinds(&self) -> Vec<Kind> {
        let mut kinds = Vec::new();
        for s in &self.o.servers {
            match s.as_str() {
                "turnd" => kinds.push(Kind::Turnd { workers: self.o.turnd_workers }),
                "coturn" if self.setup.coturn.is_some() => kinds.push(Kind::Coturn { threads: self.o.coturn_threads }),
                "coturn" => eprintln!("note: coturn skipped: `turnserver` not found (apt-get install coturn)"),
                "forwarder" => kinds.push(Kind::Forwarder),
                "turnd-plain" => kinds.push(Kind::TurndPlain),
                "turnd-xdp" if self.o.veth => kinds.push(Kind::TurndXdp),
                "turnd-xdp" => eprintln!("note: turnd-xdp skipped: the XDP fast path needs --path veth"),
                other => eprintln!("note: unknown server {other:?} skipped"),
            }
        }
        kinds
    }

    fn emit(&mut self, mut value: Value) {
        value["bench"] = json!("turnd-load");
        let line = value.to_string();
        println!("{line}");
        if let Some(path) = &self.o.json {
            if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
                let _ = writeln!(f, "{line}");
            }
        }
        self.json.push(value);
    }

    /// Emits `value`, a measurement of `server`, with turnd's worker count.
    fn emit_for(&mut self, server: &procs::Server, mut value: Value) {
        if let Some(workers) = server.workers {
            value["workers"] = json!(workers);
        }
        self.emit(value);
    }

    fn run(&mut self) -> std::io::Result<()> {
        let started = Instant::now();
        self.header();
        if self.wants("relay") {
            if self.o.transports.contains(&Transport::Udp) {
                self.relay_matrix()?;
            }
            let streams: Vec<Transport> = self.o.transports.iter().copied().filter(|&t| t != Transport::Udp).collect();
            self.stream_matrix(&streams)?;
        }
        if self.wants("binding") {
            self.binding_runs()?;
        }
        if self.wants("churn") {
            self.churn_runs()?;
        }
        if self.wants("memory") {
            self.memory_runs()?;
        }
        if self.wants("scale") {
            self.scale_runs()?;
        }
        self.targets();
        println!("\n(run took {:.0} s)", started.elapsed().as_secs_f64());
        let _ = std::fs::remove_dir_all(&self.setup.dir);
        Ok(())
    }

    fn header(&mut self) {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("model name"))
                    .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let load: Vec<&str> = load.split_whitespace().take(3).collect();
        let coturn = self
            .setup
            .coturn
            .as_ref()
            .and_then(|p| std::process::Command::new(p).arg("--version").output().ok())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|| "not installed".into());
        let run = if self.o.quick { "quick run" } else { "full run" };
        println!("turnd load bench ({run}): {cores} vCPU, {cpu}, Linux {kernel}, load average {}", load.join(" "));
        let workers = match self.o.turnd_workers {
            0 => "one per core".to_string(),
            n => n.to_string(),
        };
        println!("turnd: {} (workers: {workers}) | coturn: {coturn} (relay threads: {}) | window {} per allocation | {} s windows after {} s warm-up",
            self.o.turnd.display(), self.o.coturn_threads.map_or("default".to_string(), |t| t.to_string()),
            self.o.window, self.o.duration.as_secs_f64(), self.o.warmup.as_secs_f64());
        if self.o.veth {
            println!(
                "path: veth pair between two network namespaces ({} <-> {}), GRO {} at both ends; generator GSO {}; \
                 sirq = the whole machine's softirq time (both ends' receive work)",
                veth::SERVER_IP,
                veth::GENERATOR_IP,
                if self.o.veth_gro { "on" } else { "off" },
                if self.o.generator_gso { "on" } else { "off" }
            );
        }
        if self.o.realtime {
            println!("scheduling: SCHED_FIFO (--realtime) for the generator and the servers");
        } else if load.first().and_then(|l| l.parse::<f64>().ok()).is_some_and(|l| l > 0.5) {
            println!("note: the machine is busy (load average above 0.5): figures will be noisier than usual");
        }
        let value = json!({"kind": "machine", "cpus": cores, "cpu_model": cpu, "kernel": kernel,
            "loadavg": load, "coturn": coturn, "turnd_workers": self.o.turnd_workers, "realtime": self.o.realtime, "options": format!("{:?}", self.o)});
        self.emit(value);
    }

    fn start(&self, kind: &Kind, header: usize) -> std::io::Result<procs::Server> {
        self.start_in(&self.setup, kind, header)
    }

    /// Starts `kind` with `setup` instead of the bench's own (other relay ports).
    fn start_in(&self, setup: &Setup, kind: &Kind, header: usize) -> std::io::Result<procs::Server> {
        let peer = udp::local_v4(&self.peer)?;
        procs::start(setup, kind, &self.client, peer, header)
    }

    fn relay_matrix(&mut self) -> std::io::Result<()> {
        println!(
            "\n== relay: closed loop, {} packets in flight per allocation; a round trip is client -> peer -> client \
             (two relayed datagrams); median of {} windows per server, servers interleaved",
            self.o.window, self.o.repeat
        );
        if self.o.allocations.iter().any(|&n| n * self.o.window > relay::MAX_IN_FLIGHT) {
            println!(
                "note: cells with more than {} packets' worth of slots keep {} in flight, rotating round robin over \
                 the allocations (the socket buffers would overflow otherwise)",
                relay::MAX_IN_FLIGHT,
                relay::MAX_IN_FLIGHT
            );
        }
        println!(
            "{:<8}{:>7}{:>5}{:>8}  {:<14}{:>9}{:>9}{:>9}{:>8}{:>7}{:>11}{:>11}{:>13}{:>6}",
            "mode",
            "allocs",
            "win",
            "payload",
            "server",
            "rt/s",
            "p50 us",
            "p99 us",
            "loss%",
            "cpu%",
            "cpu us/rt",
            "sirq us/rt",
            "peak RSS kB",
            "gen%"
        );
        let kinds = self.kinds();
        let peer = udp::local_v4(&self.peer)?;
        // (mode, allocations, window, payloads): the matrix, then the bulk cell.
        let mut cells: Vec<(Mode, usize, usize, Vec<usize>)> = Vec::new();
        for &mode in &self.o.modes {
            for &allocations in &self.o.allocations {
                cells.push((mode, allocations, self.o.window, self.o.payloads.clone()));
            }
        }
        if self.o.bulk {
            cells.push((Mode::Channel, BULK_ALLOCATIONS, BULK_WINDOW, vec![BULK_PAYLOAD]));
        }
        {
            for (mode, allocations, window, payloads) in cells {
                // All servers of the cell run at once (idle ones cost nothing) and take
                // turns, so a change in background load hits them alike.
                let mut servers = Vec::new();
                for kind in &kinds {
                    match self.prepared(&self.setup, kind, mode, allocations, peer) {
                        Ok(server) => servers.push(server),
                        Err(e) => eprintln!("note: {} not measured: {e}", kind.label()),
                    }
                }
                for payload in payloads {
                    let spec =
                        Spec { mode, allocations, payload, window, warmup: self.o.warmup, duration: self.o.duration };
                    let mut runs: Vec<Vec<relay::Outcome>> = vec![Vec::new(); servers.len()];
                    for _ in 0..self.o.repeat {
                        for (server, runs) in servers.iter().zip(&mut runs) {
                            runs.push(relay::run(&self.clients(), &self.peer, server.addr, server.pid, &spec));
                        }
                    }
                    for (server, mut runs) in servers.iter().zip(runs) {
                        runs.sort_by(|a, b| a.window.cpu_us_per_unit().total_cmp(&b.window.cpu_us_per_unit()));
                        // Every window for the JSON line, the median one included.
                        let all: Vec<f64> = runs.iter().map(|r| r.window.cpu_us_per_unit()).collect();
                        let outcome = runs.swap_remove(runs.len() / 2);
                        let peak = procs::status_kb(server.pid, "VmHWM").unwrap_or(0);
                        let w = outcome.window;
                        println!(
                            "{:<8}{:>7}{:>5}{:>8}  {:<14}{:>9.0}{:>9.0}{:>9.0}{:>8.2}{:>7.0}{:>11.2}{:>11.2}{:>13}{:>6.0}",
                            mode.label(),
                            allocations,
                            window,
                            payload,
                            server.label,
                            w.per_second(),
                            outcome.p50_us,
                            outcome.p99_us,
                            100.0 * outcome.loss(),
                            w.cpu_percent(),
                            w.cpu_us_per_unit(),
                            w.softirq_us_per_unit(),
                            peak,
                            w.generator_percent()
                        );
                        self.emit_for(
                            server,
                            json!({"kind": "relay", "transport": "udp", "server": server.label, "mode": mode.label(),
                            "allocations": allocations, "payload": payload, "window": window,
                            "path": if veth::on() { "veth" } else { "loopback" },
                            "softirq_s": w.softirq_seconds, "softirq_us_per_round_trip": w.softirq_us_per_unit(),
                            "repeats": self.o.repeat, "seconds": w.seconds, "round_trips": w.units,
                            "round_trips_per_s": w.per_second(), "p50_us": outcome.p50_us, "p99_us": outcome.p99_us,
                            "sent": outcome.sent, "lost": outcome.lost, "loss": outcome.loss(),
                            "server_cpu_s": w.cpu_seconds, "server_cpu_percent": w.cpu_percent(),
                            "cpu_us_per_round_trip": w.cpu_us_per_unit(), "peak_rss_kb": peak,
                            "generator_cpu_percent": w.generator_percent(),
                            "cpu_us_per_round_trip_all": all}),
                        );
                        self.relay.push((mode, allocations, payload, server.label.clone(), outcome));
                    }
                }
            }
        }
        Ok(())
    }

    /// Starts `kind` from `setup` with `allocations` allocations ready for `mode` towards
    /// `peer`.
    fn prepared(
        &self,
        setup: &Setup,
        kind: &Kind,
        mode: Mode,
        allocations: usize,
        peer: SocketAddrV4,
    ) -> std::io::Result<procs::Server> {
        if let Kind::Turnd { workers } = kind {
            let streams = setup.tls.is_some();
            let budget = procs::turnd_allocation_budget(*workers, streams);
            if allocations as u64 > budget {
                let (share, needed) =
                    if streams { ("half for streams and ", allocations * 2 + 160) } else { ("", allocations + 160) };
                return Err(std::io::Error::other(format!(
                    "turnd's descriptor budget allows {budget} allocations under the open-file hard limit (it keeps \
                     {share}one relay socket per allocation): raise `ulimit -Hn` to at least {needed} \
                     (needs CAP_SYS_RESOURCE)"
                )));
            }
        }
        let server = self.start_in(setup, kind, mode.header())?;
        if *kind == Kind::Forwarder {
            relay::prime_forwarder(&self.clients(), server.addr, allocations, mode, &self.peer);
            return Ok(server);
        }
        let prepare = if mode == Mode::Channel { Prepare::Channel } else { Prepare::Permission };
        let (convs, _) =
            sessions::allocate(&self.clients(), server.addr, allocations, prepare, peer, Duration::from_secs(60));
        let failed: Vec<_> = convs.iter().filter_map(|c| c.error.clone()).collect();
        if !failed.is_empty() || convs.iter().any(|c| c.relay.is_none()) {
            return Err(std::io::Error::other(format!(
                "{} of {allocations} allocations failed (first: {:?})",
                failed.len().max(1),
                failed.first()
            )));
        }
        Ok(server)
    }

    fn binding_runs(&mut self) -> std::io::Result<()> {
        println!("\n== Binding: 64 clients, one request outstanding each");
        println!("{:<12}{:>12}{:>8}{:>14}", "server", "responses/s", "cpu%", "cpu us/resp");
        for kind in self.kinds().into_iter().filter(|k| *k != Kind::Forwarder) {
            let server = self.start(&kind, 0)?;
            let mut meter = Meter::new(server.pid, self.o.warmup, self.o.duration);
            let until = Instant::now() + self.o.warmup + self.o.duration + Duration::from_millis(50);
            sessions::binding(&self.clients(), server.addr, 64, &mut meter, until);
            let w = meter.window();
            println!(
                "{:<12}{:>12.0}{:>8.0}{:>14.2}",
                server.label,
                w.per_second(),
                w.cpu_percent(),
                w.cpu_us_per_unit()
            );
            self.emit_for(
                &server,
                json!({"kind": "binding", "server": server.label, "sessions": 64, "seconds": w.seconds,
                "responses": w.units, "responses_per_s": w.per_second(), "server_cpu_s": w.cpu_seconds,
                "server_cpu_percent": w.cpu_percent(), "cpu_us_per_response": w.cpu_us_per_unit()}),
            );
            self.binding.push((server.label.clone(), w));
        }
        Ok(())
    }

    fn churn_runs(&mut self) -> std::io::Result<()> {
        println!("\n== Allocate + Refresh(0): 32 clients, one request outstanding each; every pair on a new 5-tuple (401, Allocate, Refresh)");
        println!(
            "{:<12}{:>9}{:>8}{:>14}{:>14}{:>10}{:>9}{:>10}{:>10}",
            "server", "pairs/s", "cpu%", "cpu us/pair", "pairs/cpu-s", "retries", "errors", "RSS kB", "peak kB"
        );
        for kind in self.kinds().into_iter().filter(|k| *k != Kind::Forwarder) {
            let server = self.start(&kind, 0)?;
            let rss = procs::status_kb(server.pid, "VmRSS").unwrap_or(0);
            let mut meter = Meter::new(server.pid, self.o.warmup, self.o.duration);
            let until = Instant::now() + self.o.warmup + self.o.duration + Duration::from_millis(50);
            let churn = sessions::churn(&self.clients(), server.addr, 32, &self.churn_pool, &mut meter, until);
            let pairs_total = meter.count.max(1);
            let peak = procs::status_kb(server.pid, "VmHWM").unwrap_or(0);
            let w = meter.window();
            let per_cpu = w.units as f64 / w.cpu_seconds.max(1e-9);
            let retries = churn.retries as f64 / pairs_total as f64;
            println!(
                "{:<12}{:>9.0}{:>8.0}{:>14.2}{:>14.0}{:>10.3}{:>9}{:>10}{:>10}",
                server.label,
                w.per_second(),
                w.cpu_percent(),
                w.cpu_us_per_unit(),
                per_cpu,
                retries,
                churn.errors,
                rss,
                peak
            );
            self.emit_for(&server, json!({"kind": "churn", "server": server.label, "sessions": 32, "seconds": w.seconds,
                "pairs": w.units, "pairs_per_s": w.per_second(), "server_cpu_s": w.cpu_seconds,
                "server_cpu_percent": w.cpu_percent(), "pairs_per_cpu_second": per_cpu,
                "extra_challenges_per_pair": retries, "requests_per_pair": churn.totals.requests as f64 / pairs_total as f64,
                "errors": churn.errors,
                "error_codes": churn.error_codes.iter().map(|((m, c), n)| format!("method {m:#x} error {c}: {n}")).collect::<Vec<_>>(), "retransmits": churn.totals.retransmits,
                "rss_before_kb": rss, "peak_rss_kb": peak}));
            self.churn.push((server.label.clone(), w, churn, rss, peak));
        }
        Ok(())
    }

    fn memory_runs(&mut self) -> std::io::Result<()> {
        let n = self.o.memory_allocations;
        println!("\n== memory: RSS with 0 and {n} idle allocations (one client address each)");
        println!("{:<12}{:>10}{:>12}{:>14}{:>9}{:>10}", "server", "RSS0 kB", "RSS kB", "bytes/alloc", "ok", "fds");
        for kind in self.kinds().into_iter().filter(|k| *k != Kind::Forwarder) {
            let server = self.start(&kind, 0)?;
            std::thread::sleep(Duration::from_millis(300));
            let rss0 = procs::status_kb(server.pid, "VmRSS").unwrap_or(0);
            let peer = udp::local_v4(&self.peer)?;
            let (convs, _) =
                sessions::allocate(&self.clients(), server.addr, n, Prepare::Nothing, peer, Duration::from_secs(120));
            let ok = convs.iter().filter(|c| c.relay.is_some()).count();
            if let Some(e) = convs.iter().find_map(|c| c.error.clone()) {
                eprintln!("note: {} allocations failed on {} (first: {e})", n - ok, server.label);
            }
            std::thread::sleep(Duration::from_millis(500));
            let rss1 = procs::status_kb(server.pid, "VmRSS").unwrap_or(0);
            let fds = std::fs::read_dir(format!("/proc/{}/fd", server.pid)).map_or(0, |d| d.count());
            let per = (rss1.saturating_sub(rss0) * 1024) as f64 / ok.max(1) as f64;
            println!("{:<12}{:>10}{:>12}{:>14.0}{:>9}{:>10}", server.label, rss0, rss1, per, ok, fds);
            self.emit_for(
                &server,
                json!({"kind": "memory", "server": server.label, "allocations": ok, "rss0_kb": rss0,
                "rss_kb": rss1, "bytes_per_allocation": per, "fds": fds}),
            );
            self.memory.push((server.label.clone(), rss0, rss1, ok));
        }
        Ok(())
    }

    /// The same channel workload through turnd with one worker and with one per core,
    /// and through coturn single-threaded and with its default thread count. The servers
    /// run at once, each on its own relay ports, and take turns, as in the relay matrix;
    /// the window with the median round trips per second is shown.
    ///
    /// Spreading over SO_REUSEPORT: the generator speaks for each allocation from its own
    /// source address (`control::source`, 127.10.x.y) through one socket and one port, so
    /// the allocations are distinct client 5-tuples that differ in the source address
    /// rather than the source port. Linux picks the socket of a SO_REUSEPORT group by a
    /// hash of the whole 4-tuple (`udp_ehashfn` over both addresses and both ports, then
    /// `reuseport_select_sock`), so 1,000 source addresses spread over turnd's workers as
    /// 1,000 source ports would: evenly to within a few percent.
    fn scale_runs(&mut self) -> std::io::Result<()> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let spec = Spec {
            mode: Mode::Channel,
            allocations: SCALE_ALLOCATIONS,
            payload: SCALE_PAYLOAD,
            window: self.o.window,
            warmup: self.o.warmup,
            duration: self.o.duration,
        };
        println!(
            "\n== scale: channel, {} allocations, {} B, {} packets in flight per allocation ({} in all: p99 is mostly \
             queueing); turnd with 1 worker and with {cores} (one per core), coturn single-threaded and with its \
             default threads; median rt/s of {} windows per server, servers interleaved",
            spec.allocations,
            spec.payload,
            spec.window,
            spec.allocations * spec.window,
            self.o.repeat
        );
        let cpus = procs::cpus_allowed(std::process::id()).unwrap_or_else(|| "unknown".into());
        println!(
            "note: the generator (one thread of this process: every client and the echo peer) ran on CPUs {cpus}, \
             the same {cores} cores as the servers; gen% is its own CPU, which no server thread can have"
        );
        // Two servers of a kind run at once: each gets half of its kind's relay ports.
        let halves = |(lo, hi): (u16, u16)| {
            let mid = lo + (hi - lo) / 2;
            [(lo, mid), (mid + 1, hi)]
        };
        let [turnd_one, turnd_all] = halves(self.setup.turnd_ports);
        let [coturn_one, coturn_all] = halves(self.setup.coturn_ports);
        let all_workers = Kind::Turnd { workers: cores };
        let mut plan = Vec::new();
        if self.o.servers.iter().any(|s| s == "turnd") {
            plan.push(("turnd, 1 worker".to_string(), Kind::Turnd { workers: 1 }, turnd_one));
            if cores > 1 {
                plan.push((format!("turnd, {cores} workers"), all_workers.clone(), turnd_all));
            } else {
                println!("note: one core available: turnd runs with one worker only");
            }
        }
        if self.setup.coturn.is_some() && self.o.servers.iter().any(|s| s == "coturn") {
            plan.push(("coturn -m 0 (1 thread)".to_string(), Kind::Coturn { threads: Some(0) }, coturn_one));
            plan.push(("coturn default threads".to_string(), Kind::Coturn { threads: None }, coturn_all));
        }
        let peer = udp::local_v4(&self.peer)?;
        let mut servers = Vec::new();
        for (label, kind, ports) in plan {
            let setup = Setup { turnd_ports: ports, coturn_ports: ports, ..self.setup.clone() };
            match self.prepared(&setup, &kind, spec.mode, spec.allocations, peer) {
                Ok(server) => servers.push((label, kind, server)),
                Err(e) => eprintln!("note: {label} not measured: {e}"),
            }
        }
        let before: Vec<_> = servers.iter().map(|(_, _, s)| procs::thread_cpu(s.pid)).collect();
        let mut runs: Vec<Vec<relay::Outcome>> = vec![Vec::new(); servers.len()];
        for _ in 0..self.o.repeat {
            for ((_, _, server), runs) in servers.iter().zip(&mut runs) {
                runs.push(relay::run(&self.clients(), &self.peer, server.addr, server.pid, &spec));
            }
        }
        // How each turnd's CPU divided over its threads while it relayed: with workers,
        // this is where an uneven SO_REUSEPORT spread would show.
        let spreads: Vec<Option<String>> = servers
            .iter()
            .zip(&before)
            .map(|((label, kind, server), before)| {
                matches!(kind, Kind::Turnd { .. })
                    .then(|| format!("{label}: {}", thread_shares(before, &procs::thread_cpu(server.pid))))
            })
            .collect();
        println!(
            "{:<26}{:>9}{:>8}{:>11}{:>9}{:>9}{:>8}{:>6}",
            "server", "rt/s", "cpu%", "cpu us/rt", "threads", "p99 us", "loss%", "gen%"
        );
        let mut measured: Vec<(Kind, Window)> = Vec::new();
        for ((label, kind, server), mut runs) in servers.into_iter().zip(runs) {
            runs.sort_by(|a, b| a.window.per_second().total_cmp(&b.window.per_second()));
            // Every window for the JSON line, the median one included.
            let all: Vec<f64> = runs.iter().map(|r| r.window.per_second()).collect();
            let outcome = runs.swap_remove(runs.len() / 2);
            let threads = procs::threads(server.pid).unwrap_or(0);
            let w = outcome.window;
            println!(
                "{:<26}{:>9.0}{:>8.0}{:>11.2}{:>9}{:>9.0}{:>8.2}{:>6.0}",
                label,
                w.per_second(),
                w.cpu_percent(),
                w.cpu_us_per_unit(),
                threads,
                outcome.p99_us,
                100.0 * outcome.loss(),
                w.generator_percent()
            );
            self.emit_for(
                &server,
                json!({"kind": "scale", "server": label, "mode": spec.mode.label(),
                    "allocations": spec.allocations, "payload": spec.payload, "window": spec.window,
                    "repeats": self.o.repeat, "seconds": w.seconds, "round_trips_per_s": w.per_second(),
                    "server_cpu_percent": w.cpu_percent(), "cpu_us_per_round_trip": w.cpu_us_per_unit(),
                    "threads": threads, "p50_us": outcome.p50_us, "p99_us": outcome.p99_us, "loss": outcome.loss(),
                    "generator_cpu_percent": w.generator_percent(), "round_trips_per_s_all": all}),
            );
            measured.push((kind, w));
        }
        if !spreads.iter().all(Option::is_none) {
            println!("CPU by thread while relaying (share of the process's CPU; threads under 1% as \"other\"):");
        }
        for spread in spreads.into_iter().flatten() {
            println!("  {spread}");
        }

        let window = |kind: &Kind| measured.iter().find(|m| &m.0 == kind).map(|m| m.1);
        let one_worker = window(&Kind::Turnd { workers: 1 });
        if let (Some(one), Some(all), true) = (one_worker, window(&all_workers), cores > 1) {
            let ratio = all.per_second() / one.per_second().max(1e-9);
            let cpu = all.cpu_percent() / one.cpu_percent().max(1e-9);
            println!(
                "turnd, {cores} workers / 1 worker: {ratio:.2}x the round trips per second ({cpu:.2}x the server CPU)"
            );
            // What was left for turnd's workers: the cores less what the generator used.
            let left = cores as f64 - all.generator_percent() / 100.0;
            println!(
                "note: the generator used {:.0}% of a core beside turnd's {cores} workers, leaving them at most {left:.1} \
                 of the {cores} cores (less whatever else ran: see the load average above); the ratio is bounded by \
                 what this machine had left, not by turnd alone",
                all.generator_percent()
            );
            self.emit(json!({"kind": "scale_ratio", "server": "turnd", "workers": cores, "baseline_workers": 1,
                "throughput_ratio": ratio, "cpu_ratio": cpu, "generator_cpu_percent": all.generator_percent(),
                "cores": cores}));
        }
        let coturn = (window(&Kind::Coturn { threads: Some(0) }), window(&Kind::Coturn { threads: None }));
        if let (Some(single), Some(default)) = coturn {
            let ratio = default.per_second() / single.per_second().max(1e-9);
            let cpu = default.cpu_percent() / single.cpu_percent().max(1e-9);
            println!(
                "coturn default threads / -m 0: {ratio:.2}x the round trips per second ({cpu:.2}x the server CPU)"
            );
            self.emit(json!({"kind": "scale_ratio", "server": "coturn", "relay_threads": "default",
                "baseline_relay_threads": 0, "throughput_ratio": ratio, "cpu_ratio": cpu,
                "generator_cpu_percent": default.generator_percent(), "cores": cores}));
        }
        Ok(())
    }

    /// The targets of issue 8, each with its ratio and whether it is met.
    fn targets(&mut self) {
        println!("\n== targets (ratios are turnd / other)");
        let mut rows: Vec<Value> = Vec::new();
        let coturn = Kind::Coturn { threads: self.o.coturn_threads }.label();
        let turnd = Kind::Turnd { workers: self.o.turnd_workers }.label();
        let find = |mode: Mode, n: usize, p: usize, label: &str| {
            self.relay.iter().find(|r| r.0 == mode && r.1 == n && r.2 == p && r.3 == label).map(|r| r.4.clone())
        };
        let mut cells = Vec::new();
        for &mode in &self.o.modes {
            for &n in &self.o.allocations {
                for &p in &self.o.payloads {
                    if let Some(t) = find(mode, n, p, &turnd) {
                        cells.push((mode, n, p, t, find(mode, n, p, "forwarder"), find(mode, n, p, &coturn)));
                    }
                }
            }
        }
        for (mode, n, p, t, f, c) in cells {
            let cpu = t.window.cpu_us_per_unit();
            let name = format!("{} {n} allocs {p} B", mode.label());
            if let Some(f) = f {
                let ratio = cpu / f.window.cpu_us_per_unit();
                rows.push(target(&format!("{name}: cpu/rt vs forwarder <= 1.1"), ratio, ratio <= 1.1));
            }
            if let Some(c) = c {
                let ratio = t.p99_us / c.p99_us;
                rows.push(target(&format!("{name}: p99 vs coturn <= 1.0"), ratio, ratio <= 1.0));
                let cpu_ratio = cpu / c.window.cpu_us_per_unit();
                info(&format!("{name}: cpu/rt vs coturn (no target)"), cpu_ratio);
            }
        }
        // The fast path's work is all softirq (the program runs in the veth's NAPI poll),
        // so it is compared on process + softirq time per round trip. The softirq figure
        // is the whole machine's, the generator's own receive work included for every
        // server alike, which pulls the ratio down; with tick-based CPU accounting,
        // softirq work run inside a server's system call counts in its process time
        // too, which pushes it up.
        let xdp = Kind::TurndXdp.label();
        let total = |o: &relay::Outcome| o.window.cpu_us_per_unit() + o.window.softirq_us_per_unit();
        let mut sizes: Vec<(usize, usize)> =
            self.o.allocations.iter().flat_map(|&n| self.o.payloads.iter().map(move |&p| (n, p))).collect();
        if self.o.bulk {
            sizes.push((BULK_ALLOCATIONS, BULK_PAYLOAD));
        }
        for (n, p) in sizes {
            let cell = |label: &str| find(Mode::Channel, n, p, label);
            let name = format!("channel {n} allocs {p} B: turnd-xdp");
            if let (Some(x), Some(f)) = (cell(&xdp), cell("forwarder")) {
                let ratio = total(&f) / total(&x).max(1e-9);
                let target_name = format!("{name} packets per cpu-second (process + softirq) vs forwarder >= 5");
                rows.push(target(&target_name, ratio, ratio >= 5.0));
                if let Some(t) = cell(&turnd) {
                    let ratio = total(&t) / total(&x).max(1e-9);
                    info(&format!("{name} packets per cpu-second vs turnd's sockets (no target)"), ratio);
                }
            }
        }
        let binding = |label: &str| self.binding.iter().find(|b| b.0 == label).map(|b| b.1);
        if let (Some(t), Some(c)) = (binding(&turnd), binding(&coturn)) {
            let ratio = t.cpu_us_per_unit() / c.cpu_us_per_unit();
            rows.push(target("Binding: cpu/response vs coturn <= 0.65", ratio, ratio <= 0.65));
        }
        let churn = |label: &str| self.churn.iter().find(|b| b.0 == label).cloned();
        if let (Some(t), Some(c)) = (churn(&turnd), churn(&coturn)) {
            let per = |w: &Window| w.units as f64 / w.cpu_seconds.max(1e-9);
            let ratio = per(&t.1) / per(&c.1);
            rows.push(target("Allocate+Refresh(0): pairs per cpu-second vs coturn >= 3", ratio, ratio >= 3.0));
            // "No memory spike": the peak during churn stays within 25% (and 4 MiB) of
            // the RSS before it.
            let spike = t.4 as f64 / t.3.max(1) as f64;
            let ok = t.4 <= t.3 + 4096 || spike <= 1.25;
            rows.push(target("Allocate+Refresh(0): turnd peak RSS / RSS before (no spike)", spike, ok));
        }
        let memory = |label: &str| self.memory.iter().find(|m| m.0 == label).cloned();
        if let (Some(t), Some(c)) = (memory(&turnd), memory(&coturn)) {
            let per = |m: &(String, u64, u64, usize)| (m.2.saturating_sub(m.1) * 1024) as f64 / m.3.max(1) as f64;
            let ratio = per(&t) / per(&c);
            rows.push(target("Memory: bytes per idle allocation vs coturn <= 0.25", ratio, ratio <= 0.25));
        }
        let met = rows.iter().filter(|r| r["met"] == json!(true)).count();
        println!("{met} of {} met", rows.len());
        self.emit(json!({"kind": "targets", "targets": rows}));
    }
}

/// turnd's XDP program as this build made it (the `xdp` feature), for the generator's
/// end of the veth pair.
fn xdp_object() -> std::io::Result<&'static str> {
    #[cfg(feature = "xdp")]
    return Ok(concat!(env!("OUT_DIR"), "/turnd_xdp.o"));
    #[cfg(not(feature = "xdp"))]
    Err(std::io::Error::other(
        "turnd-xdp needs the bench and turnd built with the xdp feature: cargo bench --features xdp",
    ))
}

/// SCHED_FIFO at the lowest real-time priority for this process and the servers it
/// starts (they inherit it). Every loop here blocks when idle and the kernel keeps 5% of
/// each second for other work (sched_rt_runtime_us), so nothing is starved for long.
fn realtime() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: sched_setscheduler on ourselves with a valid sched_param.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
        return Err(std::io::Error::other(format!("--realtime: {}", std::io::Error::last_os_error())));
    }
    Ok(())
}

/// Each thread's share of the CPU a process used between two `procs::thread_cpu` samples,
/// busiest first ("tokio-rt-worker 49%, ..."); threads under 1% are summed as "other".
fn thread_shares(before: &[(u32, String, f64)], after: &[(u32, String, f64)]) -> String {
    let mut used: Vec<(&str, f64)> = after
        .iter()
        .map(|(tid, name, cpu)| {
            let earlier = before.iter().find(|b| b.0 == *tid).map_or(0.0, |b| b.2);
            (name.as_str(), cpu - earlier)
        })
        .collect();
    let total: f64 = used.iter().map(|u| u.1).sum();
    if total <= 0.0 {
        return "no CPU used".into();
    }
    used.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut parts: Vec<String> = Vec::new();
    let mut other = 0.0;
    for (name, cpu) in used {
        if cpu / total < 0.01 {
            other += cpu;
        } else {
            parts.push(format!("{name} {:.0}%", 100.0 * cpu / total));
        }
    }
    if other > 0.0 {
        parts.push(format!("other {:.0}%", 100.0 * other / total));
    }
    parts.join(", ")
}

fn target(name: &str, ratio: f64, met: bool) -> Value {
    println!("  {:<70} {:>7.2}  {}", name, ratio, if met { "met" } else { "NOT met" });
    json!({"target": name, "ratio": ratio, "met": met})
}

/// A ratio worth printing that is no target of its own.
fn info(name: &str, ratio: f64) {
    println!("  {:<70} {:>7.2}", name, ratio);
}
