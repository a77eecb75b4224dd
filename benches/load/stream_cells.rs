//! The relay cells over TCP and TLS client transports (`--transports tcp,tls`): the
//! same closed loop as the UDP channel cells, one connection per allocation, through
//! turnd (with `--turnd-workers`, and with one worker per core beside it) and coturn
//! (with `--coturn-threads`), all started at once and interleaved.

use crate::procs::{self, Kind, Setup};
use crate::relay::{Mode, Outcome, Spec};
use crate::streams::{self, Transport};
use crate::{udp, Bench};
use serde_json::json;

/// The issue 18 target for stream relaying: server CPU per round trip at most this
/// much of coturn's.
const CPU_TARGET: f64 = 0.7;

impl Bench {
    /// The CA and server certificate the stream cells' servers use, made on first need.
    pub(crate) fn tls_files(&mut self) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
        let ca = self.ca.get_or_insert_with(|| {
            crate::ca::TestCa::new(&["127.0.0.1", "localhost", &crate::veth::server_ip().to_string()])
        });
        (ca.ca.clone(), ca.cert.clone(), ca.key.clone())
    }

    /// The servers of a stream cell: label, kind, relay ports.
    fn stream_plan(&self) -> Vec<(String, Kind, (u16, u16))> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (lo, hi) = self.setup.turnd_ports;
        let mid = lo + (hi - lo) / 2;
        let mut plan = Vec::new();
        for kind in self.kinds() {
            match kind {
                Kind::Turnd { workers } => {
                    plan.push((kind.label(), kind.clone(), (lo, mid)));
                    if cores > 1 && workers != cores && workers != 0 {
                        let all = Kind::Turnd { workers: cores };
                        plan.push((all.label(), all, (mid + 1, hi)));
                    }
                }
                Kind::Coturn { .. } => plan.push((kind.label(), kind.clone(), self.setup.coturn_ports)),
                Kind::Forwarder | Kind::TurndPlain | Kind::TurndXdp => {}
            }
        }
        plan
    }

    pub(crate) fn stream_matrix(&mut self, transports: &[Transport]) -> std::io::Result<()> {
        if transports.is_empty() {
            return Ok(());
        }
        let (ca, cert, key) = self.tls_files();
        let config = streams::tls_config(&ca)?;
        println!(
            "\n== relay over streams: ChannelData (padded to 4 bytes) over one TCP or TLS connection per allocation, \
             relayed to the UDP echo peer; {} packets in flight per allocation; median of {} windows per server, \
             servers interleaved (the forwarder speaks UDP only)",
            self.o.window, self.o.repeat
        );
        println!(
            "{:<8}{:>7}{:>8}  {:<14}{:>9}{:>9}{:>9}{:>8}{:>7}{:>11}{:>13}{:>6}",
            "transp",
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
        let peer = udp::local_v4(&self.peer)?;
        for &transport in transports {
            for &allocations in &self.o.stream_allocations.clone() {
                let mut servers = Vec::new();
                for (label, kind, ports) in self.stream_plan() {
                    let setup = Setup {
                        turnd_ports: ports,
                        coturn_ports: ports,
                        tls: Some((cert.clone(), key.clone())),
                        ..self.setup.clone()
                    };
                    let server = match self.start_in(&setup, &kind, Mode::Channel.header()) {
                        Ok(s) => s,
                        Err(e) => {
                            eprintln!("note: {label} not measured: {e}");
                            continue;
                        }
                    };
                    let (tcp, tls) = server.streams.expect("stream listeners");
                    let (addr, tls_config) = match transport {
                        Transport::Tls => (tls, Some(&config)),
                        _ => (tcp, None),
                    };
                    match streams::connect(addr, allocations, tls_config, peer) {
                        Ok(conns) => servers.push((label, server, conns)),
                        Err(e) => eprintln!("note: {label} over {} not measured: {e}", transport.label()),
                    }
                }
                for &payload in &self.o.payloads.clone() {
                    self.stream_cell(transport, allocations, payload, &mut servers)?;
                }
            }
        }
        Ok(())
    }

    fn stream_cell(
        &mut self,
        transport: Transport,
        allocations: usize,
        payload: usize,
        servers: &mut [(String, procs::Server, Vec<streams::Stream>)],
    ) -> std::io::Result<()> {
        let spec = Spec {
            mode: Mode::Channel,
            allocations,
            payload,
            window: self.o.window,
            warmup: self.o.warmup,
            duration: self.o.duration,
        };
        let mut runs: Vec<Vec<Outcome>> = vec![Vec::new(); servers.len()];
        for _ in 0..self.o.repeat {
            for ((_, server, conns), runs) in servers.iter_mut().zip(&mut runs) {
                runs.push(streams::run(conns, &self.peer, server.pid, &spec)?);
            }
        }
        let mut results = Vec::new();
        for ((label, server, _), mut runs) in servers.iter().zip(runs) {
            runs.sort_by(|a, b| a.window.cpu_us_per_unit().total_cmp(&b.window.cpu_us_per_unit()));
            let all: Vec<f64> = runs.iter().map(|r| r.window.cpu_us_per_unit()).collect();
            let outcome = runs.swap_remove(runs.len() / 2);
            let peak = procs::status_kb(server.pid, "VmHWM").unwrap_or(0);
            let w = outcome.window;
            println!(
                "{:<8}{:>7}{:>8}  {:<14}{:>9.0}{:>9.0}{:>9.0}{:>8.2}{:>7.0}{:>11.2}{:>13}{:>6.0}",
                transport.label(),
                allocations,
                payload,
                label,
                w.per_second(),
                outcome.p50_us,
                outcome.p99_us,
                100.0 * outcome.loss(),
                w.cpu_percent(),
                w.cpu_us_per_unit(),
                peak,
                w.generator_percent()
            );
            self.emit_for(
                server,
                json!({"kind": "relay", "transport": transport.label(), "server": label, "mode": "channel",
                "allocations": allocations, "payload": payload, "window": self.o.window,
                "repeats": self.o.repeat, "seconds": w.seconds, "round_trips": w.units,
                "round_trips_per_s": w.per_second(), "p50_us": outcome.p50_us, "p99_us": outcome.p99_us,
                "sent": outcome.sent, "lost": outcome.lost, "loss": outcome.loss(),
                "server_cpu_s": w.cpu_seconds, "server_cpu_percent": w.cpu_percent(),
                "cpu_us_per_round_trip": w.cpu_us_per_unit(), "peak_rss_kb": peak,
                "generator_cpu_percent": w.generator_percent(), "cpu_us_per_round_trip_all": all}),
            );
            results.push((label.clone(), outcome));
        }
        // Issue 18's targets for this cell: turnd (each worker count) against coturn.
        let Some((coturn, c)) = results.iter().find(|r| r.0.starts_with("coturn")) else { return Ok(()) };
        for (label, t) in results.iter().filter(|r| r.0.starts_with("turnd")) {
            let cpu = t.window.cpu_us_per_unit() / c.window.cpu_us_per_unit().max(1e-9);
            let p99 = t.p99_us / c.p99_us.max(1e-9);
            println!(
                "        {label} / {coturn}: cpu/rt {cpu:.2} ({}), p99 {p99:.2} ({}), loss {:.2}% vs {:.2}%",
                if cpu <= CPU_TARGET { "met" } else { "NOT met" },
                if p99 <= 1.0 { "met" } else { "NOT met" },
                100.0 * t.loss(),
                100.0 * c.loss()
            );
            self.emit(json!({"kind": "stream_target", "transport": transport.label(), "allocations": allocations,
                "payload": payload, "server": label, "baseline": coturn, "cpu_ratio": cpu,
                "cpu_met": cpu <= CPU_TARGET, "p99_ratio": p99, "p99_met": p99 <= 1.0,
                "loss": t.loss(), "baseline_loss": c.loss()}));
        }
        Ok(())
    }
}
