//! Several event loops, one per core. Each worker is a thread with its own
//! current-thread runtime, its own [`Server`] and its own relay sockets, so the relay
//! path shares nothing. A client always reaches the same worker: its UDP listener is
//! one socket of an SO_REUSEPORT group, which the kernel picks by hashing the 4-tuple,
//! and peer traffic arrives on relay sockets that only the owning worker watches.
//! TCP and TLS connections are spread by [`StreamRouter`](super::route::StreamRouter),
//! which sends an RFC 6062 data connection to the worker of the peer connection it
//! binds; every other connection is then handed over to its worker, whose thread
//! serves it from then on (so one worker is one thread on the relay path, for every
//! transport).
//!
//! What must be counted across workers (relay ports, reservations, quotas, the 401
//! limiter) sits in the shared [`Ledger`], locked only on the allocation path.
//! Around the workers, this module fans admin requests out and merges their
//! snapshots into one, and tells systemd the process is alive only while every
//! worker is.

use super::event_loop::{EventLoop, PUBLISH_EVERY};
use super::ledger::SharedLedger;
use super::report::{AllocationInfo, Control, Publisher, Snapshot};
use super::stream::StreamEvent;
use crate::turn::ledger::Ledger;
use crate::turn::{AllocationId, CoreConfig, Server, SystemRng};
use std::collections::HashMap;
use std::io;
use std::net::UdpSocket;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::debug;

/// Queue depth of each worker's control channel.
const CONTROL_QUEUE: usize = 8;
/// Queue depth of each worker's stream channel (connections handed over, RFC 6062 data
/// connections' frames and events).
pub const STREAM_QUEUE: usize = 4096;
/// A worker whose snapshot has not moved for this many merges is taken as wedged.
const STALE_MERGES: u32 = 3;

/// The running workers.
#[derive(Debug)]
pub struct Workers {
    exited: mpsc::UnboundedReceiver<(usize, io::Result<()>)>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// The shared ledger and the nonce secret, for a live upgrade's state.
    ledger: SharedLedger,
    secret: [u8; 32],
}

impl Workers {
    /// Starts one worker per element of `listeners` (each worker's share of the UDP
    /// listeners, one socket per SO_REUSEPORT group) and of `streams` (each worker's
    /// stream channel: TCP/TLS traffic from the accept loops' router, and events of
    /// its own RFC 6062 tasks). `control` is the
    /// process's single control channel; the workers' snapshots are merged into
    /// `publisher` and its events are theirs. `lookups` are the workers' ends of the
    /// lookup service (one each, in order). Call from within a tokio runtime: the
    /// fan-out and the merge run there.
    pub fn start(
        config: CoreConfig,
        listeners: Vec<Vec<(UdpSocket, crate::turn::TenantId)>>,
        publisher: &Publisher,
        control: mpsc::Receiver<Control>,
        streams: Vec<(mpsc::Sender<StreamEvent>, mpsc::Receiver<StreamEvent>)>,
        lookups: Vec<super::webhook::WorkerLookups>,
        adopted: Option<super::upgrade::Adopted>,
    ) -> io::Result<Workers> {
        let mut lookups = lookups.into_iter();
        let count = listeners.len().max(1);
        let mut ledger = Ledger::new(&config);
        // A live upgrade: the predecessor's secret, counts and allocations.
        let (secret, mut adopted_allocations, mut adopted_stats) = match adopted {
            Some(mut adopted) => {
                super::upgrade::adopt_into_ledger(&mut ledger, &adopted);
                let allocations = std::mem::take(&mut adopted.workers).into_iter();
                (adopted.nonce_secret, Some(allocations), std::mem::take(&mut adopted.stats).into_iter())
            }
            None => (nonce_secret(), None, Vec::new().into_iter()),
        };
        let ledger: SharedLedger = Arc::new(Mutex::new(ledger));
        let (exited_tx, exited) = mpsc::unbounded_channel();
        let mut controls = Vec::with_capacity(count);
        let mut snapshots = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        let mut handovers = super::handover::Handovers::for_workers(count).into_iter();
        for (index, (sockets, (stream_tx, stream_rx))) in listeners.into_iter().zip(streams).enumerate() {
            let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE);
            let own = Publisher {
                snapshots: watch::channel(Snapshot::default()).0,
                events: publisher.events.clone(),
                cluster: publisher.cluster.clone(),
            };
            snapshots.push(own.snapshots.subscribe());
            let ledger_for_loop = ledger.clone();
            let make_core = move |config: CoreConfig, shared: &Mutex<Ledger>| {
                let rng = Box::new(SystemRng::default());
                Server::new_worker(config, rng, Instant::now(), shared, secret, index as u32, count as u32)
            };
            let mut event_loop = EventLoop::new(config.clone(), sockets, own, stream_tx, ledger_for_loop, make_core)?;
            if let Some(handovers) = handovers.next() {
                event_loop = event_loop.with_handovers(handovers);
            }
            if let Some(allocations) = adopted_allocations.as_mut().and_then(Iterator::next) {
                event_loop.adopt(allocations);
            }
            if let Some(stats) = adopted_stats.next() {
                event_loop.adopt_stats(&stats);
            }
            let mut lookup_results = None;
            if let Some(end) = lookups.next() {
                event_loop = event_loop.with_lookups(end.worker, end.requests);
                lookup_results = Some(end.results);
            }
            // Built here, not in the thread, so every descriptor the process keeps
            // exists once start-up is logged (the soak test counts them).
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let exited_tx = exited_tx.clone();
            let thread = std::thread::Builder::new().name(format!("turnd-worker-{index}")).spawn(move || {
                let mut exit = ExitReport { index, to: exited_tx, result: None };
                exit.result = Some(runtime.block_on(event_loop.run(control_rx, stream_rx, lookup_results)));
            })?;
            controls.push(control_tx);
            threads.push(thread);
        }
        tokio::spawn(fan_out(control, controls));
        tokio::spawn(merge(snapshots, publisher.clone(), std::env::var_os("NOTIFY_SOCKET").is_some()));
        Ok(Workers { exited, threads, ledger, secret })
    }

    /// What a live upgrade hands over of the process as a whole, at `now`.
    pub fn export_process(&self, now: Instant) -> super::upgrade::ProcessExport {
        let ledger = super::ledger::lock(&self.ledger);
        super::upgrade::ProcessExport {
            nonce_secret: self.secret,
            nonce_epoch_age: ledger
                .nonce_epoch_if_set()
                .map_or(Default::default(), |e| now.saturating_duration_since(e)),
            reservations: ledger.export_reservations(now),
        }
    }

    /// Waits for the first worker to stop and returns how it ended.
    pub async fn exited(&mut self) -> (usize, io::Result<()>) {
        match self.exited.recv().await {
            Some(exit) => exit,
            None => (0, Err(io::Error::other("every worker is gone"))),
        }
    }

    /// Waits until every worker thread has ended (after a [`Control::Shutdown`]).
    pub async fn join(mut self) {
        let mut remaining = self.threads.len();
        while remaining > 0 && self.exited.recv().await.is_some() {
            remaining -= 1;
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Tells [`Workers::exited`] that a worker ended, also when it panicked: the process
/// then stops (and systemd restarts it) rather than run on with a worker gone, its
/// share of the ledger's ports and quotas held for good.
struct ExitReport {
    index: usize,
    to: mpsc::UnboundedSender<(usize, io::Result<()>)>,
    result: Option<io::Result<()>>,
}

impl Drop for ExitReport {
    fn drop(&mut self) {
        let result = self.result.take().unwrap_or_else(|| Err(io::Error::other("the worker panicked")));
        let _ = self.to.send((self.index, result));
    }
}

/// One nonce secret for every worker: a nonce minted by one verifies on another.
fn nonce_secret() -> [u8; 32] {
    use crate::turn::Rng;
    let mut secret = [0u8; 32];
    SystemRng::default().fill(&mut secret);
    secret
}

/// Relays the process's control requests to the workers and merges their answers.
async fn fan_out(mut control: mpsc::Receiver<Control>, workers: Vec<mpsc::Sender<Control>>) {
    while let Some(message) = control.recv().await {
        match message {
            Control::Reconfigure(config) => {
                for worker in &workers {
                    let _ = worker.send(Control::Reconfigure(config.clone())).await;
                }
            }
            Control::ListAllocations { realm, offset, limit, reply } => {
                let mut all: Vec<AllocationInfo> = Vec::new();
                for worker in &workers {
                    let (tx, rx) = oneshot::channel();
                    let ask =
                        Control::ListAllocations { realm: realm.clone(), offset: 0, limit: usize::MAX, reply: tx };
                    if worker.send(ask).await.is_ok() {
                        if let Ok((page, _)) = rx.await {
                            all.extend(page);
                        }
                    }
                }
                all.sort_by_key(|a| a.id);
                let total = all.len();
                let _ = reply.send((all.into_iter().skip(offset).take(limit).collect(), total));
            }
            Control::DropAllocation { id, reply } => {
                // The worker that numbered it first; an allocation that moved (RFC 8016)
                // lives on another, so the rest are asked when that one has none.
                let owner = owner_of(id, workers.len());
                let order = workers.iter().skip(owner).chain(workers.iter().take(owner));
                let mut dropped = false;
                for worker in order {
                    let (tx, rx) = oneshot::channel();
                    dropped = worker.send(Control::DropAllocation { id, reply: tx }).await.is_ok()
                        && rx.await.unwrap_or(false);
                    if dropped {
                        break;
                    }
                }
                let _ = reply.send(dropped);
            }
            Control::DropUser { user, reply } => {
                let mut dropped = 0;
                for worker in &workers {
                    let (tx, rx) = oneshot::channel();
                    if worker.send(Control::DropUser { user: user.clone(), reply: tx }).await.is_ok() {
                        dropped += rx.await.unwrap_or(0);
                    }
                }
                let _ = reply.send(dropped);
            }
            Control::Revoke { user, reply } => {
                // Every worker holds the list: a client may land on any of them.
                let mut ended = Ok(0);
                for worker in &workers {
                    let (tx, rx) = oneshot::channel();
                    if worker.send(Control::Revoke { user: user.clone(), reply: tx }).await.is_ok() {
                        match (rx.await, &mut ended) {
                            (Ok(Ok(n)), Ok(total)) => *total += n,
                            (Ok(Err(e)), _) => ended = Err(e),
                            _ => {}
                        }
                    }
                }
                let _ = reply.send(ended);
            }
            Control::LiftRevocation { user, reply } => {
                let mut lifted = false;
                for worker in &workers {
                    let (tx, rx) = oneshot::channel();
                    if worker.send(Control::LiftRevocation { user: user.clone(), reply: tx }).await.is_ok() {
                        lifted |= rx.await.unwrap_or(false);
                    }
                }
                let _ = reply.send(lifted);
            }
            Control::ListRevocations { reply } => {
                let (tx, rx) = oneshot::channel();
                let list = match workers.first() {
                    Some(worker) if worker.send(Control::ListRevocations { reply: tx }).await.is_ok() => {
                        rx.await.unwrap_or_default()
                    }
                    _ => Vec::new(),
                };
                let _ = reply.send(list);
            }
            Control::FleetCounts { remote, reply } => {
                // The ledger is shared: one worker reaches it for all.
                if let Some(worker) = workers.first() {
                    let _ = worker.send(Control::FleetCounts { remote, reply }).await;
                }
            }
            Control::FleetRates { remote, valid_for, reply } => {
                // Each worker holds its own buckets: all take the facts; their rates
                // are summed per user.
                let mut total: HashMap<crate::turn::tenant::UserKey, (u64, u64)> = HashMap::new();
                for worker in &workers {
                    let (tx, rx) = oneshot::channel();
                    let sent = Control::FleetRates { remote: remote.clone(), valid_for, reply: tx };
                    if worker.send(sent).await.is_ok() {
                        for (user, rate, cap) in rx.await.unwrap_or_default() {
                            let entry = total.entry(user).or_default();
                            *entry = (entry.0.saturating_add(rate), entry.1.max(cap));
                        }
                    }
                }
                let _ = reply.send(total.into_iter().map(|(user, (rate, cap))| (user, rate, cap)).collect());
            }
            Control::SetFleetSecrets { secrets } => {
                for worker in &workers {
                    let _ = worker.send(Control::SetFleetSecrets { secrets: secrets.clone() }).await;
                }
            }
            Control::SetNonceKey { secret, since_origin } => {
                for worker in &workers {
                    let _ = worker.send(Control::SetNonceKey { secret, since_origin }).await;
                }
            }
            Control::SetAlternates { alternates, valid_for } => {
                for worker in &workers {
                    let _ = worker.send(Control::SetAlternates { alternates: alternates.clone(), valid_for }).await;
                }
            }
            Control::Drain { alternate, reply } => {
                for worker in &workers {
                    let (tx, rx) = oneshot::channel();
                    if worker.send(Control::Drain { alternate, reply: tx }).await.is_ok() {
                        let _ = rx.await;
                    }
                }
                let _ = reply.send(());
            }
            Control::Freeze { reply } => {
                let mut all = Vec::with_capacity(workers.len());
                let mut failed = None;
                for (index, worker) in workers.iter().enumerate() {
                    let (tx, rx) = oneshot::channel();
                    let answer = match worker.send(Control::Freeze { reply: tx }).await {
                        Ok(()) => rx.await.unwrap_or_else(|_| Err("the worker is gone".into())),
                        Err(_) => Err("the worker is gone".into()),
                    };
                    match answer {
                        Ok(share) => all.extend(share),
                        Err(e) => {
                            failed = Some(format!("worker {index}: {e}"));
                            break;
                        }
                    }
                }
                // One worker failing thaws those already frozen: all or nothing.
                if failed.is_some() {
                    thaw_all(&workers).await;
                }
                let _ = reply.send(failed.map_or(Ok(all), Err));
            }
            Control::Thaw { reply } => {
                thaw_all(&workers).await;
                let _ = reply.send(());
            }
            Control::Release { reply } => {
                for worker in &workers {
                    let (tx, rx) = oneshot::channel();
                    if worker.send(Control::Release { reply: tx }).await.is_ok() {
                        let _ = rx.await;
                    }
                }
                let _ = reply.send(());
            }
            Control::Shutdown => break,
        }
    }
    // Asked to stop, or the process dropped its end: either way the workers stop.
    for worker in &workers {
        let _ = worker.send(Control::Shutdown).await;
    }
}

/// Live upgrade failed: every worker reads its UDP sockets again.
async fn thaw_all(workers: &[mpsc::Sender<Control>]) {
    for worker in workers {
        let (tx, rx) = oneshot::channel();
        if worker.send(Control::Thaw { reply: tx }).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// The worker that owns allocation `id` (ids are numbered so that this is a modulo).
fn owner_of(id: AllocationId, workers: usize) -> usize {
    crate::turn::worker_of(id, workers as u32) as usize
}

/// Publishes the sum of the workers' snapshots once a period, and keeps systemd's
/// watchdog fed only while every worker still publishes.
async fn merge(mut workers: Vec<watch::Receiver<Snapshot>>, publisher: Publisher, systemd: bool) {
    let mut tick = tokio::time::interval(PUBLISH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unchanged = vec![0u32; workers.len()];
    let mut last_relayed = 0u64;
    loop {
        tick.tick().await;
        let mut merged: Option<Snapshot> = None;
        for (worker, quiet) in workers.iter_mut().zip(unchanged.iter_mut()) {
            *quiet = if worker.has_changed().unwrap_or(false) { 0 } else { quiet.saturating_add(1) };
            let snapshot = worker.borrow_and_update();
            match &mut merged {
                None => merged = Some(snapshot.clone()),
                Some(merged) => merged.add(&snapshot),
            }
        }
        let Some(mut merged) = merged else {
            return;
        };
        stamp_merged(&mut merged, unix_ms_now());
        let relayed = merged.stats.relayed_packets.iter().flatten().sum::<u64>();
        let wedged = unchanged.iter().position(|&quiet| quiet >= STALE_MERGES);
        if systemd {
            notify_systemd(&merged, relayed.saturating_sub(last_relayed), wedged);
        }
        last_relayed = relayed;
        publisher.snapshots.send_replace(merged);
    }
}

/// Times a merged snapshot by the merge, not by its oldest worker: two workers a
/// millisecond apart, one of which missed a tick under load, would otherwise give two
/// merged snapshots a millisecond apart (and /ws rates over that millisecond). The
/// oldest worker's time stays in `oldest_worker_ms` for /readyz.
fn stamp_merged(merged: &mut Snapshot, now_ms: u64) {
    merged.oldest_worker_ms = merged.unix_ms;
    if merged.unix_ms != 0 {
        merged.unix_ms = now_ms;
    }
}

fn unix_ms_now() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// STATUS always; WATCHDOG only when no worker is wedged, so systemd restarts a
/// process with a stuck worker (WatchdogSec= in the unit).
fn notify_systemd(snapshot: &Snapshot, relayed: u64, wedged: Option<usize>) {
    use sd_notify::NotifyState;
    let rate = relayed as f64 / PUBLISH_EVERY.as_secs_f64();
    let status = format!(
        "{} allocations, {} TCP connections, {:.0} packets/s relayed{}",
        snapshot.allocations,
        snapshot.tcp_connections,
        rate,
        if snapshot.draining { ", draining" } else { "" }
    );
    let result = match wedged {
        None => sd_notify::notify(&[NotifyState::Watchdog, NotifyState::Status(&status)]),
        Some(worker) => {
            debug!(worker, "a worker stopped publishing: not feeding the watchdog");
            sd_notify::notify(&[NotifyState::Status(&status)])
        }
    };
    let _ = result;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_merged_snapshot_is_timed_by_the_merge_and_keeps_its_oldest_worker() {
        let merge = |workers: [u64; 2], now: u64| {
            let mut merged = Snapshot { unix_ms: workers[0], ..Snapshot::default() };
            merged.add(&Snapshot { unix_ms: workers[1], ..Snapshot::default() });
            stamp_merged(&mut merged, now);
            (merged.unix_ms, merged.oldest_worker_ms)
        };
        // Worker 0 missed a tick: the oldest moves by a millisecond, the merge by its
        // interval.
        assert_eq!(merge([10_001, 10_000], 10_500), (10_500, 10_000));
        assert_eq!(merge([10_001, 11_000], 11_500), (11_500, 10_001));
        // A worker that has not published yet: not published.
        assert_eq!(merge([0, 11_000], 11_500), (0, 0));
    }

    #[test]
    fn a_worker_that_panics_is_reported_as_failed() {
        let (to, mut exited) = mpsc::unbounded_channel();
        let thread = std::thread::spawn(move || {
            let _exit = ExitReport { index: 3, to, result: None };
            panic!("a bug in a worker");
        });
        assert!(thread.join().is_err());
        let (index, result) = exited.try_recv().expect("reported");
        assert_eq!(index, 3);
        assert!(result.unwrap_err().to_string().contains("panicked"));
    }

    #[test]
    fn a_worker_that_returns_reports_its_result() {
        let (to, mut exited) = mpsc::unbounded_channel();
        drop(ExitReport { index: 1, to, result: Some(Ok(())) });
        assert!(matches!(exited.try_recv(), Ok((1, Ok(())))));
    }
}
