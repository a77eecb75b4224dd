//! Request/response conversations over the shared client socket: many sessions (one
//! client source address each), one request outstanding per session, retransmission on
//! loss, and a measurement window read from `/proc` at its edges.

use crate::procs;
use crate::stun::{self, Response};
use crate::udp::{self, RecvBatch, SendBatch};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

/// How long a request waits for its answer before it is sent again.
const RETRANSMIT_AFTER: Duration = Duration::from_millis(400);
/// Sends of one request before the session is told it got no answer.
const MAX_TRIES: u32 = 4;

/// What a session does next.
pub enum Next {
    /// Send this request (built with the transaction id the engine handed over).
    Send(Vec<u8>),
    /// Send this request; the answer just received completed a unit of work (a
    /// Binding response, an Allocate + Refresh pair) for the meter.
    SendCompleted(Vec<u8>),
    /// The session has finished.
    Done,
}

/// The measurement window: server CPU and a count of completed units at its edges.
pub struct Meter {
    pid: u32,
    start: Instant,
    end: Instant,
    /// Time, server CPU seconds, units, the generator's own CPU seconds and the
    /// machine's softirq seconds at each edge.
    started: Option<(Instant, f64, u64, f64, f64)>,
    ended: Option<(Instant, f64, u64, f64, f64)>,
    /// Completed units (responses, pairs, round trips), counted by the workload.
    pub count: u64,
    /// Latencies of units completed inside the window, in microseconds.
    pub latencies_us: Vec<u32>,
}

/// What a window measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Window {
    pub seconds: f64,
    pub units: u64,
    pub cpu_seconds: f64,
    /// CPU the generator itself used (it must stay well below one core).
    pub generator_cpu_seconds: f64,
    /// Softirq time of the whole machine (`/proc/stat`): receive work on both ends of
    /// the path that no process's own time shows.
    pub softirq_seconds: f64,
}

impl Window {
    pub fn per_second(&self) -> f64 {
        self.units as f64 / self.seconds.max(1e-9)
    }
    /// Server CPU per unit in microseconds.
    pub fn cpu_us_per_unit(&self) -> f64 {
        self.cpu_seconds * 1e6 / (self.units.max(1) as f64)
    }
    pub fn cpu_percent(&self) -> f64 {
        100.0 * self.cpu_seconds / self.seconds.max(1e-9)
    }
    pub fn generator_percent(&self) -> f64 {
        100.0 * self.generator_cpu_seconds / self.seconds.max(1e-9)
    }
    /// Machine softirq time per unit in microseconds.
    pub fn softirq_us_per_unit(&self) -> f64 {
        self.softirq_seconds * 1e6 / (self.units.max(1) as f64)
    }
}

impl Meter {
    /// A window opening `warmup` from now and lasting `duration`, on server `pid`.
    pub fn new(pid: u32, warmup: Duration, duration: Duration) -> Self {
        let start = Instant::now() + warmup;
        Meter { pid, start, end: start + duration, started: None, ended: None, count: 0, latencies_us: Vec::new() }
    }

    /// Reads `/proc` when an edge of the window has been crossed.
    pub fn poll(&mut self, now: Instant) {
        if self.started.is_none() && now >= self.start {
            let cpu = procs::cpu_seconds(self.pid).unwrap_or(0.0);
            self.started = Some((now, cpu, self.count, own_cpu(), crate::veth::softirq_seconds()));
        }
        if self.started.is_some() && self.ended.is_none() && now >= self.end {
            let cpu = procs::cpu_seconds(self.pid).unwrap_or(0.0);
            self.ended = Some((now, cpu, self.count, own_cpu(), crate::veth::softirq_seconds()));
        }
    }

    pub fn in_window(&self) -> bool {
        self.started.is_some() && self.ended.is_none()
    }

    pub fn is_over(&self) -> bool {
        self.ended.is_some()
    }

    /// Counts a completed unit, with its latency if it falls in the window.
    pub fn complete(&mut self, latency: Duration) {
        self.count += 1;
        if self.in_window() {
            self.latencies_us.push(latency.as_micros().min(u32::MAX as u128) as u32);
        }
    }

    pub fn window(&self) -> Window {
        match (self.started, self.ended) {
            (Some((t0, c0, n0, g0, s0)), Some((t1, c1, n1, g1, s1))) => Window {
                seconds: (t1 - t0).as_secs_f64(),
                units: n1 - n0,
                cpu_seconds: c1 - c0,
                generator_cpu_seconds: g1 - g0,
                softirq_seconds: s1 - s0,
            },
            _ => Window::default(),
        }
    }
}

/// The generator's own CPU seconds (this process only, not its children).
fn own_cpu() -> f64 {
    procs::cpu_seconds(std::process::id()).unwrap_or(0.0)
}

/// One session's bookkeeping.
struct Session {
    seq: u32,
    source: Ipv4Addr,
    outstanding: Option<(Vec<u8>, Instant, u32)>,
    done: bool,
}

/// Counters of one `drive` call.
#[derive(Debug, Default, Clone, Copy)]
pub struct Totals {
    pub requests: u64,
    pub retransmits: u64,
    /// Requests that got no answer after every retransmission.
    pub timeouts: u64,
}

/// The client socket and the source addresses it speaks for.
pub struct Clients<'a> {
    pub socket: &'a UdpSocket,
    pub sources: &'a [Ipv4Addr],
}

/// Runs sessions `0..sessions` against `server` until all are done or `until`, with at
/// most `concurrency` started at once. `step(session, answer, tid)` is called with
/// `None` to start a session (or restart it after its request went unanswered) and with
/// each answer; it builds the next request with `tid`, and may move the session to
/// another source address (a new client 5-tuple) through `source`.
pub fn drive(
    clients: &Clients<'_>,
    server: SocketAddrV4,
    sessions: usize,
    concurrency: usize,
    until: Instant,
    mut meter: Option<&mut Meter>,
    mut step: impl FnMut(usize, Option<&Response<'_>>, [u8; 12], &mut Ipv4Addr) -> Next,
) -> Totals {
    let fd = udp::fd(clients.socket);
    let mut state: Vec<Session> =
        (0..sessions).map(|i| Session { seq: 0, source: clients.sources[i], outstanding: None, done: false }).collect();
    let mut totals = Totals::default();
    let mut out = SendBatch::new(64);
    let mut inbox = RecvBatch::new(64, 0);
    let mut next_to_start = 0;
    let mut active = 0;
    let mut last_scan = Instant::now();

    // Asks session `i` for its next request and queues it.
    let mut advance = |i: usize,
                       answer: Option<&Response<'_>>,
                       state: &mut [Session],
                       out: &mut SendBatch,
                       totals: &mut Totals,
                       meter: Option<&mut Meter>,
                       now: Instant|
     -> bool {
        let s = &mut state[i];
        s.seq = s.seq.wrapping_add(1);
        let next = step(i, answer, stun::tid(i as u32, s.seq), &mut s.source);
        if let (Next::SendCompleted(_), Some((_, sent, _)), Some(m)) = (&next, &s.outstanding, meter) {
            m.complete(now.saturating_duration_since(*sent));
        }
        match next {
            Next::Send(bytes) | Next::SendCompleted(bytes) => {
                if out.is_full() {
                    out.flush(fd);
                }
                out.push(server, Some(s.source), |buf| copy(buf, &bytes));
                totals.requests += 1;
                s.outstanding = Some((bytes, now, 1));
                true
            }
            Next::Done => {
                s.outstanding = None;
                s.done = true;
                false
            }
        }
    };

    loop {
        let now = Instant::now();
        if let Some(m) = meter.as_deref_mut() {
            m.poll(now);
        }
        if now >= until {
            break;
        }
        while active < concurrency && next_to_start < sessions {
            if advance(next_to_start, None, &mut state, &mut out, &mut totals, meter.as_deref_mut(), now) {
                active += 1;
            }
            next_to_start += 1;
        }
        if active == 0 && next_to_start >= sessions {
            break;
        }
        out.flush(fd);

        let n = inbox.recv(fd);
        for k in 0..n {
            let (bytes, from) = inbox.get(k);
            if from != server {
                continue;
            }
            let Some(answer) = Response::parse(bytes) else { continue };
            let Some((i, seq)) = stun::tid_parts(&answer.header.transaction_id) else { continue };
            let i = i as usize;
            let Some(s) = state.get(i) else { continue };
            if s.outstanding.is_none() || s.seq != seq || s.done {
                continue; // a late answer to a retransmitted or abandoned request
            }
            if !advance(i, Some(&answer), &mut state, &mut out, &mut totals, meter.as_deref_mut(), now) {
                active -= 1;
            }
        }

        if now.duration_since(last_scan) >= Duration::from_millis(20) {
            last_scan = now;
            for i in 0..next_to_start {
                let Some((bytes, sent, tries)) = &mut state[i].outstanding else { continue };
                if now.duration_since(*sent) < RETRANSMIT_AFTER {
                    continue;
                }
                if *tries < MAX_TRIES {
                    *tries += 1;
                    *sent = now;
                    totals.retransmits += 1;
                    if out.is_full() {
                        out.flush(fd);
                    }
                    let bytes = bytes.clone();
                    let source = state[i].source;
                    out.push(server, Some(source), |buf| copy(buf, &bytes));
                } else {
                    totals.timeouts += 1;
                    state[i].outstanding = None;
                    if !advance(i, None, &mut state, &mut out, &mut totals, meter.as_deref_mut(), now) {
                        active -= 1;
                    }
                }
            }
        }
        out.flush(fd);
        if n == 0 {
            udp::wait_readable(&[fd], 1);
        }
    }
    totals
}

fn copy(buf: &mut [u8], bytes: &[u8]) -> usize {
    let n = bytes.len().min(buf.len());
    buf[..n].copy_from_slice(&bytes[..n]);
    n
}

/// Source address `i` of the client population: 127.10.0.0/16 and up, never a .0
/// octet, away from the 127.0.0.1 everything else uses (on the veth path 10.96.0.0/16
/// and up).
pub fn source(i: usize) -> Ipv4Addr {
    let b = 10 + i / (255 * 255);
    let c = 1 + (i / 255) % 255;
    let d = 1 + i % 255;
    let (first, second) = crate::veth::client_first_octets(b as u8);
    Ipv4Addr::new(first, second, c as u8, d as u8)
}
