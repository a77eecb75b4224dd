//! turnd's load benchmark: the relay data plane, Binding, Allocate + Refresh(0) churn
//! and memory per idle allocation, against turnd, coturn and a raw forwarder (the
//! kernel's floor), in one run. See docs/bench.md.
//!
//! `cargo bench --bench load` runs it in full (about six minutes), `-- --quick` in about
//! one; `-- --help` lists the options. Under `cargo test` it runs a smoke check of its
//! own machinery against turnd (no timings are judged). It prints a table, one JSON line
//! per measurement and a last JSON line with the targets of issue 8.

mod control;
mod forwarder;
mod procs;
mod relay;
mod sessions;
mod stun;
mod udp;

use control::{Clients, Meter, Window};
use procs::{Kind, Setup};
use relay::{Mode, Spec};
use serde_json::{json, Value};
use sessions::Prepare;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const HELP: &str = "\
turnd load benchmark: cargo bench --bench load -- [OPTIONS]

  --quick               short run (about a minute): 1 s windows, fewer cells, 2,000 idle allocations
  --duration SECS       measurement window (default 2, quick 1)
  --warmup SECS         traffic before each window (default 0.3)
  --window N            packets in flight per allocation (default 2)
  --repeat N            windows per server and relay cell, median reported (default 3, quick 1)
  --allocations LIST    relay cells, e.g. 10,200,1000 (default; quick: 10,200)
  --payloads LIST       payload bytes (default 100,1000; quick: 100)
  --modes LIST          channel,send (default both)
  --servers LIST        turnd,coturn,forwarder (default all; coturn needs `turnserver`)
  --only LIST           relay,binding,churn,memory,scale (default all)
  --memory-allocations N  idle allocations for the memory run (default 10000, quick 2000)
  --coturn-threads N    coturn --relay-threads for the main comparison (default 0: its
                        single-threaded mode, like turnd's one event loop)
  --json FILE           also append the JSON lines to FILE
  --turnd PATH          the turnd binary (default: the one cargo built with this bench)
  --turnd-prefix CMD    run turnd under CMD (a profiler; CPU figures then describe CMD)
  --realtime            run the generator and the servers SCHED_FIFO (root): on a machine
                        shared with other work, wake-up delays otherwise dominate
  --verbose             say what is happening on stderr
";

/// Everything the command line says.
#[derive(Debug, Clone)]
struct Options {
    quick: bool,
    duration: Duration,
    warmup: Duration,
    window: usize,
    repeat: usize,
    allocations: Vec<usize>,
    payloads: Vec<usize>,
    modes: Vec<Mode>,
    servers: Vec<String>,
    only: Vec<String>,
    memory_allocations: usize,
    coturn_threads: Option<u32>,
    json: Option<PathBuf>,
    turnd: PathBuf,
    turnd_prefix: Vec<String>,
    realtime: bool,
    verbose: bool,
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
        allocations: if quick { vec![10, 200] } else { vec![10, 200, 1000] },
        payloads: if quick { vec![100] } else { vec![100, 1000] },
        modes: vec![Mode::Channel, Mode::Send],
        servers: vec!["turnd".into(), "coturn".into(), "forwarder".into()],
        only: vec!["relay".into(), "binding".into(), "churn".into(), "memory".into(), "scale".into()],
        memory_allocations: if quick { 2000 } else { 10_000 },
        coturn_threads: Some(0),
        json: None,
        turnd: PathBuf::from(env!("CARGO_BIN_EXE_turnd")),
        turnd_prefix: Vec::new(),
        realtime: false,
        verbose: false,
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
            "--servers" => o.servers = list(&value()?)?,
            "--only" => o.only = list(&value()?)?,
            "--memory-allocations" => {
                o.memory_allocations = value()?.parse().map_err(|_| "bad --memory-allocations")?
            }
            "--coturn-threads" => {
                let v = value()?;
                o.coturn_threads =
                    if v == "default" { None } else { Some(v.parse().map_err(|_| "bad --coturn-threads")?) };
            }
            "--json" => o.json = Some(PathBuf::from(value()?)),
            "--turnd" => o.turnd = PathBuf::from(value()?),
            "--turnd-prefix" => o.turnd_prefix = value()?.split_whitespace().map(String::from).collect(),
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
        if let Err(e) = forwarder::main(peer, header) {
            eprintln!("forwarder: {e}");
            std::process::exit(1);
        }
        return;
    }
    // `cargo bench` passes --bench; `cargo test` (which builds benches with
    // --all-targets) passes nothing: then check the machinery, briefly, and stop.
    if !args.iter().any(|a| a == "--bench") {
        smoke();
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
}

impl Bench {
    fn new(o: Options) -> std::io::Result<Self> {
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
            verbose: o.verbose,
        };
        let client = udp::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
        let peer = udp::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?;
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
                "turnd" => kinds.push(Kind::Turnd),
                "coturn" if self.setup.coturn.is_some() => kinds.push(Kind::Coturn { threads: self.o.coturn_threads }),
                "coturn" => eprintln!("note: coturn skipped: `turnserver` not found (apt-get install coturn)"),
                "forwarder" => kinds.push(Kind::Forwarder),
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

    fn run(&mut self) -> std::io::Result<()> {
        let started = Instant::now();
        self.header();
        if self.wants("relay") {
            self.relay_matrix()?;
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
        println!("turnd: {} | coturn: {coturn} (relay threads: {:?}) | window {} per allocation | {} s windows after {} s warm-up",
            self.o.turnd.display(), self.o.coturn_threads.map_or("default".to_string(), |t| t.to_string()),
            self.o.window, self.o.duration.as_secs_f64(), self.o.warmup.as_secs_f64());
        if self.o.realtime {
            println!("scheduling: SCHED_FIFO (--realtime) for the generator and the servers");
        } else if load.first().and_then(|l| l.parse::<f64>().ok()).is_some_and(|l| l > 0.5) {
            println!("note: the machine is busy (load average above 0.5): figures will be noisier than usual");
        }
        let value = json!({"kind": "machine", "cpus": cores, "cpu_model": cpu, "kernel": kernel,
            "loadavg": load, "coturn": coturn, "realtime": self.o.realtime, "options": format!("{:?}", self.o)});
        self.emit(value);
    }

    fn start(&self, kind: &Kind, header: usize) -> std::io::Result<procs::Server> {
        let peer = udp::local_v4(&self.peer)?;
        procs::start(&self.setup, kind, &self.client, peer, header)
    }

    fn relay_matrix(&mut self) -> std::io::Result<()> {
        println!(
            "\n== relay: closed loop, {} packets in flight per allocation; a round trip is client -> peer -> client \
             (two relayed datagrams); median of {} windows per server, servers interleaved",
            self.o.window, self.o.repeat
        );
        println!(
            "{:<8}{:>7}{:>8}  {:<12}{:>9}{:>9}{:>9}{:>8}{:>7}{:>11}{:>13}{:>6}",
            "mode",
            "allocs",
            "payload",
            "server",
            "rt/s",
            "p50 us",
            "p99 us",
            "loss%",
            "cpu%",
            "cpu us/rt",
            "peak RSS kB",
            "gen%"
        );
        let kinds = self.kinds();
        let peer = udp::local_v4(&self.peer)?;
        for &mode in &self.o.modes.clone() {
            for &allocations in &self.o.allocations.clone() {
                // All servers of the cell run at once (idle ones cost nothing) and take
                // turns, so a change in background load hits them alike.
                let mut servers = Vec::new();
                for kind in &kinds {
                    match self.prepared(kind, mode, allocations, peer) {
                        Ok(server) => servers.push(server),
                        Err(e) => eprintln!("note: {} not measured: {e}", kind.label()),
                    }
                }
                for &payload in &self.o.payloads.clone() {
                    let spec = Spec {
                        mode,
                        allocations,
                        payload,
                        window: self.o.window,
                        warmup: self.o.warmup,
                        duration: self.o.duration,
                    };
                    let mut runs: Vec<Vec<relay::Outcome>> = vec![Vec::new(); servers.len()];
                    for _ in 0..self.o.repeat {
                        for (server, runs) in servers.iter().zip(&mut runs) {
                            runs.push(relay::run(&self.clients(), &self.peer, server.addr, server.pid, &spec));
                        }
                    }
                    for (server, mut runs) in servers.iter().zip(runs) {
                        runs.sort_by(|a, b| a.window.cpu_us_per_unit().total_cmp(&b.window.cpu_us_per_unit()));
                        let outcome = runs.swap_remove(runs.len() / 2);
                        let peak = procs::status_kb(server.pid, "VmHWM").unwrap_or(0);
                        let w = outcome.window;
                        println!(
                            "{:<8}{:>7}{:>8}  {:<12}{:>9.0}{:>9.0}{:>9.0}{:>8.2}{:>7.0}{:>11.2}{:>13}{:>6.0}",
                            mode.label(),
                            allocations,
                            payload,
                            server.label,
                            w.per_second(),
                            outcome.p50_us,
                            outcome.p99_us,
                            100.0 * outcome.loss(),
                            w.cpu_percent(),
                            w.cpu_us_per_unit(),
                            peak,
                            w.generator_percent()
                        );
                        self.emit(json!({"kind": "relay", "server": server.label, "mode": mode.label(),
                            "allocations": allocations, "payload": payload, "window": self.o.window,
                            "repeats": self.o.repeat, "seconds": w.seconds, "round_trips": w.units,
                            "round_trips_per_s": w.per_second(), "p50_us": outcome.p50_us, "p99_us": outcome.p99_us,
                            "sent": outcome.sent, "lost": outcome.lost, "loss": outcome.loss(),
                            "server_cpu_s": w.cpu_seconds, "server_cpu_percent": w.cpu_percent(),
                            "cpu_us_per_round_trip": w.cpu_us_per_unit(), "peak_rss_kb": peak,
                            "generator_cpu_percent": w.generator_percent(),
                            "cpu_us_per_round_trip_all": runs.iter().map(|r| r.window.cpu_us_per_unit()).collect::<Vec<_>>()}));
                        self.relay.push((mode, allocations, payload, server.label.clone(), outcome));
                    }
                }
            }
        }
        Ok(())
    }

    /// Starts `kind` with `allocations` allocations ready for `mode` towards `peer`.
    fn prepared(
        &self,
        kind: &Kind,
        mode: Mode,
        allocations: usize,
        peer: SocketAddrV4,
    ) -> std::io::Result<procs::Server> {
        let server = self.start(kind, mode.header())?;
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
            self.emit(json!({"kind": "binding", "server": server.label, "sessions": 64, "seconds": w.seconds,
                "responses": w.units, "responses_per_s": w.per_second(), "server_cpu_s": w.cpu_seconds,
                "server_cpu_percent": w.cpu_percent(), "cpu_us_per_response": w.cpu_us_per_unit()}));
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
            self.emit(json!({"kind": "churn", "server": server.label, "sessions": 32, "seconds": w.seconds,
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
            self.emit(json!({"kind": "memory", "server": server.label, "allocations": ok, "rss0_kb": rss0,
                "rss_kb": rss1, "bytes_per_allocation": per, "fds": fds}));
            self.memory.push((server.label.clone(), rss0, rss1, ok));
        }
        Ok(())
    }

    fn scale_runs(&mut self) -> std::io::Result<()> {
        let (mode, allocations, payload) = (Mode::Channel, 200, 100);
        println!(
            "\n== scale: channel, {allocations} allocations, {payload} B; turnd has one event loop (one core) today"
        );
        println!("{:<26}{:>9}{:>8}{:>11}{:>9}", "server", "rt/s", "cpu%", "cpu us/rt", "threads");
        let mut kinds = vec![Kind::Turnd];
        if self.setup.coturn.is_some() && self.o.servers.iter().any(|s| s == "coturn") {
            kinds.push(Kind::Coturn { threads: Some(0) });
            kinds.push(Kind::Coturn { threads: None });
        }
        let peer = udp::local_v4(&self.peer)?;
        for kind in kinds {
            let server = self.start(&kind, mode.header())?;
            let (convs, _) = sessions::allocate(
                &self.clients(),
                server.addr,
                allocations,
                Prepare::Channel,
                peer,
                Duration::from_secs(60),
            );
            if convs.iter().any(|c| c.relay.is_none()) {
                eprintln!("note: allocations failed on {}; skipped", server.label);
                continue;
            }
            let spec = Spec {
                mode,
                allocations,
                payload,
                window: self.o.window,
                warmup: self.o.warmup,
                duration: self.o.duration,
            };
            let outcome = relay::run(&self.clients(), &self.peer, server.addr, server.pid, &spec);
            let threads = procs::threads(server.pid).unwrap_or(0);
            let w = outcome.window;
            let label = match kind {
                Kind::Turnd => "turnd (1 event loop)".to_string(),
                Kind::Coturn { threads: Some(0) } => "coturn -m 0 (1 thread)".to_string(),
                _ => "coturn default (all cores)".to_string(),
            };
            println!(
                "{:<26}{:>9.0}{:>8.0}{:>11.2}{:>9}",
                label,
                w.per_second(),
                w.cpu_percent(),
                w.cpu_us_per_unit(),
                threads
            );
            self.emit(json!({"kind": "scale", "server": label, "mode": mode.label(), "allocations": allocations,
                "payload": payload, "round_trips_per_s": w.per_second(), "server_cpu_percent": w.cpu_percent(),
                "cpu_us_per_round_trip": w.cpu_us_per_unit(), "threads": threads, "p99_us": outcome.p99_us}));
        }
        Ok(())
    }

    /// The targets of issue 8, each with its ratio and whether it is met.
    fn targets(&mut self) {
        println!("\n== targets (ratios are turnd / other)");
        let mut rows: Vec<Value> = Vec::new();
        let coturn = Kind::Coturn { threads: self.o.coturn_threads }.label();
        let find = |mode: Mode, n: usize, p: usize, label: &str| {
            self.relay.iter().find(|r| r.0 == mode && r.1 == n && r.2 == p && r.3 == label).map(|r| r.4.clone())
        };
        let mut cells = Vec::new();
        for &mode in &self.o.modes {
            for &n in &self.o.allocations {
                for &p in &self.o.payloads {
                    if let Some(t) = find(mode, n, p, "turnd") {
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
                rows.push(target(&format!("{name}: cpu/rt vs forwarder <= 1.15"), ratio, ratio <= 1.15));
            }
            if let Some(c) = c {
                let ratio = t.p99_us / c.p99_us;
                rows.push(target(&format!("{name}: p99 vs coturn <= 1.0"), ratio, ratio <= 1.0));
                let cpu_ratio = cpu / c.window.cpu_us_per_unit();
                info(&format!("{name}: cpu/rt vs coturn (no target)"), cpu_ratio);
            }
        }
        let binding = |label: &str| self.binding.iter().find(|b| b.0 == label).map(|b| b.1);
        if let (Some(t), Some(c)) = (binding("turnd"), binding(&coturn)) {
            let ratio = t.cpu_us_per_unit() / c.cpu_us_per_unit();
            rows.push(target("Binding: cpu/response vs coturn <= 0.65", ratio, ratio <= 0.65));
        }
        let churn = |label: &str| self.churn.iter().find(|b| b.0 == label).cloned();
        if let (Some(t), Some(c)) = (churn("turnd"), churn(&coturn)) {
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
        if let (Some(t), Some(c)) = (memory("turnd"), memory(&coturn)) {
            let per = |m: &(String, u64, u64, usize)| (m.2.saturating_sub(m.1) * 1024) as f64 / m.3.max(1) as f64;
            let ratio = per(&t) / per(&c);
            rows.push(target("Memory: bytes per idle allocation vs coturn <= 0.25", ratio, ratio <= 0.25));
        }
        let met = rows.iter().filter(|r| r["met"] == json!(true)).count();
        println!("{met} of {} met", rows.len());
        self.emit(json!({"kind": "targets", "targets": rows}));
    }
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

fn target(name: &str, ratio: f64, met: bool) -> Value {
    println!("  {:<70} {:>7.2}  {}", name, ratio, if met { "met" } else { "NOT met" });
    json!({"target": name, "ratio": ratio, "met": met})
}

/// A ratio worth printing that is no target of its own.
fn info(name: &str, ratio: f64) {
    println!("  {:<70} {:>7.2}", name, ratio);
}

/// Under `cargo test`: a few round trips through turnd and the forwarder, to keep the
/// bench's machinery working. Timings are printed, never judged.
fn smoke() {
    let options = parse(&[
        "--bench".into(),
        "--quick".into(),
        "--duration".into(),
        "0.3".into(),
        "--warmup".into(),
        "0.1".into(),
    ])
    .expect("smoke options");
    let mut bench = Bench::new(options).expect("bench setup");
    let peer = udp::local_v4(&bench.peer).expect("peer");
    for mode in [Mode::Channel, Mode::Send] {
        for kind in [Kind::Turnd, Kind::Forwarder] {
            let server = bench.start(&kind, mode.header()).expect("server starts");
            if kind == Kind::Turnd {
                let prepare = if mode == Mode::Channel { Prepare::Channel } else { Prepare::Permission };
                let (convs, _) =
                    sessions::allocate(&bench.clients(), server.addr, 4, prepare, peer, Duration::from_secs(10));
                assert!(convs.iter().all(|c| c.relay.is_some() && c.error.is_none()), "allocations on turnd");
            }
            let spec = Spec {
                mode,
                allocations: 4,
                payload: 100,
                window: 2,
                warmup: Duration::from_millis(100),
                duration: Duration::from_millis(300),
            };
            let outcome = relay::run(&bench.clients(), &bench.peer, server.addr, server.pid, &spec);
            assert!(outcome.window.units > 0, "{} relayed nothing in {} mode", server.label, mode.label());
            println!("smoke: {} {} mode: {} round trips", server.label, mode.label(), outcome.window.units);
        }
    }
    let server = bench.start(&Kind::Turnd, 0).expect("turnd starts");
    let mut meter = Meter::new(server.pid, Duration::ZERO, Duration::from_millis(200));
    let until = Instant::now() + Duration::from_millis(250);
    let churn = sessions::churn(&bench.clients(), server.addr, 4, &bench.churn_pool, &mut meter, until);
    assert!(meter.count > 0 && churn.errors == 0, "Allocate + Refresh(0) pairs on turnd");
    println!("smoke: turnd churn: {} pairs", meter.count);
    let _ = std::fs::remove_dir_all(&bench.setup.dir);
    bench.json.clear();
}
