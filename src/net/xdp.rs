//! The XDP fast path's shell side: loading and attaching the program (feature `xdp`,
//! `[relay] xdp`), and each worker's [`Offloader`], which keeps the kernel's maps equal
//! to what its core says may be relayed without it ([`crate::turn::offload`]) and
//! brings the program's per-channel counters back into the core's accounting.
//!
//! When it syncs: after any wake-up in which the core answered a request, expired an
//! allocation or took an operator's command (see [`Offloader::after_wake`]), and once a
//! second with the snapshot (which also catches bindings and permissions that simply
//! ran out; the program itself stops using an entry at its expiry instant, so the
//! second is never a second of extra relaying).

use crate::config::XdpMode;
use crate::turn::Server;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Process-wide counts of what the fast path relayed, by direction (client to peer,
/// peer to client), for `/metrics`.
static PACKETS: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
static BYTES: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
/// Channels in the program's maps, over every worker.
static CHANNELS: AtomicU64 = AtomicU64::new(0);

/// What the fast path relayed, for `/metrics`: packets and bytes by
/// [`crate::turn::stats::Direction`] index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XdpCounters {
    /// Datagrams.
    pub packets: [u64; 2],
    /// Payload bytes.
    pub bytes: [u64; 2],
    /// Channels the fast path relays now.
    pub channels: u64,
}

/// The process's fast-path counters so far.
pub fn counters() -> XdpCounters {
    XdpCounters {
        packets: [PACKETS[0].load(Ordering::Relaxed), PACKETS[1].load(Ordering::Relaxed)],
        bytes: [BYTES[0].load(Ordering::Relaxed), BYTES[1].load(Ordering::Relaxed)],
        channels: CHANNELS.load(Ordering::Relaxed),
    }
}

/// Why the fast path could not start.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// This binary was built without the `xdp` feature.
    #[error("this turnd was built without the `xdp` cargo feature")]
    NotBuilt,
    /// Loading the program or its maps failed (kernel, privileges: CAP_BPF and
    /// CAP_NET_ADMIN).
    #[error("loading the XDP program: {0}")]
    Load(String),
    /// The interface does not forward IPv4, and the program's route lookup
    /// (`bpf_fib_lookup`) answers only on one that does.
    #[error("{interface} does not forward IPv4 (net.ipv4.conf.{interface}.forwarding = 0), which the XDP program's route lookup needs")]
    NotForwarding {
        /// The interface.
        interface: String,
    },
    /// Attaching to an interface failed.
    #[error("attaching the XDP program to {interface}: {message}")]
    Attach {
        /// The interface.
        interface: String,
        /// What the kernel said.
        message: String,
    },
}

/// Starts the fast path as `mode` asks: `Ok(true)` when it runs, `Ok(false)` when it
/// is off or `auto` fell back to sockets (logged once here); an error only for `on`.
pub fn start(mode: XdpMode, interfaces: &[String]) -> Result<bool, XdpError> {
    if mode == XdpMode::Off {
        return Ok(false);
    }
    match backend::load(interfaces) {
        Ok(()) => {
            tracing::info!(interfaces = ?interfaces, "XDP fast path attached: ChannelData over UDP/IPv4 relayed in the driver");
            Ok(true)
        }
        Err(e) if mode == XdpMode::Auto => {
            tracing::warn!("relay.xdp = \"auto\": relaying through sockets only: {e}");
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// One worker's side of the fast path; does nothing when the fast path is not running.
#[derive(Debug, Default)]
pub struct Offloader {
    inner: Option<backend::Sync>,
}

impl Offloader {
    /// The worker's offloader: active when [`start`] attached the program.
    pub fn new() -> Self {
        Offloader { inner: backend::Sync::new() }
    }

    /// Whether this worker relays through the fast path.
    pub fn is_active(&self) -> bool {
        self.inner.is_some()
    }

    /// After a wake-up: syncs the maps if the core's bindings may have changed.
    pub fn after_wake(&mut self, core: &mut Server) {
        if let Some(sync) = &mut self.inner {
            sync.after_wake(core);
        }
    }

    /// An operator's command ran (it may have closed allocations or revoked peers).
    pub fn mark_dirty(&mut self) {
        if let Some(sync) = &mut self.inner {
            sync.dirty = true;
        }
    }

    /// Once a second, before the snapshot: syncs and reads the counters.
    pub fn tick(&mut self, core: &mut Server) {
        if let Some(sync) = &mut self.inner {
            sync.sync(core, Instant::now(), true);
        }
    }

    /// Takes every entry of this worker out of the maps (its allocations are leaving:
    /// a live upgrade hands them to another process).
    pub fn withdraw(&mut self, core: &mut Server) {
        if let Some(sync) = &mut self.inner {
            sync.withdraw(core);
        }
    }
}

#[cfg(feature = "xdp")]
mod backend {
    use super::{XdpError, BYTES, CHANNELS, PACKETS};
    use crate::sys::xdp::{monotonic_ns, split, Counters, InKey, InVal, OutKey, OutVal};
    use crate::turn::allocation::Traffic;
    use crate::turn::offload::{self, MapModel, MapOp, OffloadKey, OffloadTarget};
    use crate::turn::Server;
    use aya::maps::{HashMap, MapData, PerCpuHashMap, PerCpuValues};
    use aya::programs::{Xdp, XdpFlags};
    use aya::Ebpf;
    use std::collections::HashMap as Map;
    use std::sync::atomic::Ordering;
    use std::sync::{Arc, Mutex, OnceLock};
    use std::time::Instant;

    static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/turnd_xdp.o"));

    /// The maps every worker writes (each only its own channels' entries).
    struct Maps {
        chan_in: HashMap<MapData, InKey, InVal>,
        chan_out: HashMap<MapData, OutKey, OutVal>,
        counters: PerCpuHashMap<MapData, InKey, Counters>,
        cpus: usize,
    }

    /// The loaded program (kept for the process's life: dropping it detaches) and its
    /// maps. Workers lock the maps only to sync, never per packet.
    struct Loaded {
        maps: Mutex<Maps>,
        _program: Mutex<Ebpf>,
    }

    static LOADED: OnceLock<Arc<Loaded>> = OnceLock::new();

    pub(super) fn load(interfaces: &[String]) -> Result<(), XdpError> {
        for interface in interfaces {
            // Checked first: attached there, the program would pass every packet.
            let path = format!("/proc/sys/net/ipv4/conf/{interface}/forwarding");
            match std::fs::read_to_string(&path) {
                Ok(text) if text.trim() != "0" => {}
                Ok(_) => return Err(XdpError::NotForwarding { interface: interface.clone() }),
                Err(e) => {
                    return Err(XdpError::Attach { interface: interface.clone(), message: format!("{path}: {e}") })
                }
            }
        }
        let load_err = |e: &dyn std::fmt::Display| XdpError::Load(e.to_string());
        let mut ebpf = Ebpf::load(OBJECT).map_err(|e| load_err(&e))?;
        let program: &mut Xdp = ebpf
            .program_mut("turnd_xdp")
            .ok_or_else(|| XdpError::Load("no program turnd_xdp in the object".into()))?
            .try_into()
            .map_err(|e| load_err(&e))?;
        program.load().map_err(|e| load_err(&e))?;
        for interface in interfaces {
            // Native (driver) mode only: generic XDP would cost more than the sockets.
            program
                .attach(interface, XdpFlags::DRV_MODE)
                .map_err(|e| XdpError::Attach { interface: interface.clone(), message: error_chain(&e) })?;
        }
        let mut take =
            |name: &str| ebpf.take_map(name).ok_or_else(|| XdpError::Load(format!("no map {name} in the object")));
        let (chan_in, chan_out, counters) = (take("chan_in")?, take("chan_out")?, take("counters")?);
        let maps = Maps {
            chan_in: HashMap::try_from(chan_in).map_err(|e| load_err(&e))?,
            chan_out: HashMap::try_from(chan_out).map_err(|e| load_err(&e))?,
            counters: PerCpuHashMap::try_from(counters).map_err(|e| load_err(&e))?,
            cpus: aya::util::nr_cpus().map_err(|(what, e)| XdpError::Load(format!("{what}: {e}")))?,
        };
        LOADED
            .set(Arc::new(Loaded { maps: Mutex::new(maps), _program: Mutex::new(ebpf) }))
            .map_err(|_| XdpError::Load("the XDP program is already loaded".into()))
    }

    fn error_chain(e: &dyn std::error::Error) -> String {
        let mut text = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        text
    }

    /// One worker's sync state.
    pub(super) struct Sync {
        loaded: Arc<Loaded>,
        model: MapModel,
        wanted: Vec<(OffloadKey, OffloadTarget)>,
        ops: Vec<MapOp>,
        /// Each offloaded channel's counter totals as last read, to credit deltas.
        seen: Map<OffloadKey, Counters>,
        last_fingerprint: u64,
        pub(super) dirty: bool,
    }

    impl std::fmt::Debug for Sync {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Sync").field("entries", &self.model.entries().len()).finish()
        }
    }

    impl Sync {
        pub(super) fn new() -> Option<Self> {
            Some(Sync {
                loaded: LOADED.get()?.clone(),
                model: MapModel::default(),
                wanted: Vec::new(),
                ops: Vec::new(),
                seen: Map::new(),
                last_fingerprint: 0,
                dirty: true,
            })
        }

        pub(super) fn after_wake(&mut self, core: &mut Server) {
            let now_print = fingerprint(core);
            if self.dirty || now_print != self.last_fingerprint {
                self.sync(core, Instant::now(), false);
            }
        }

        pub(super) fn sync(&mut self, core: &mut Server, now: Instant, read_counters: bool) {
            self.dirty = false;
            self.last_fingerprint = fingerprint(core);
            self.wanted.clear();
            offload::offloadable(core.allocations(), core.config(), now, &mut self.wanted);
            self.ops.clear();
            self.model.sync(&self.wanted, &mut self.ops);
            let loaded = self.loaded.clone();
            let Ok(mut maps) = loaded.maps.lock() else {
                return;
            };
            let ops = std::mem::take(&mut self.ops);
            let clock = (now, monotonic_ns());
            for op in &ops {
                self.apply(&mut maps, core, *op, clock);
            }
            self.ops = ops;
            if read_counters {
                let keys: Vec<(OffloadKey, OffloadTarget)> =
                    self.model.entries().iter().map(|(k, t)| (*k, *t)).collect();
                for (key, target) in keys {
                    self.credit(&maps, core, key, target);
                }
            }
        }

        pub(super) fn withdraw(&mut self, core: &mut Server) {
            self.ops.clear();
            self.model.clear(&mut self.ops);
            let loaded = self.loaded.clone();
            let Ok(mut maps) = loaded.maps.lock() else {
                return;
            };
            let ops = std::mem::take(&mut self.ops);
            for op in &ops {
                self.apply(&mut maps, core, *op, (Instant::now(), monotonic_ns()));
            }
        }

        fn apply(&mut self, maps: &mut Maps, core: &mut Server, op: MapOp, (now, now_ns): (Instant, u64)) {
            let in_key = in_key(&op);
            match op {
                MapOp::Upsert(key, target) => {
                    let left = target.expires.saturating_duration_since(now);
                    let expires_ns = now_ns.saturating_add(u64::try_from(left.as_nanos()).unwrap_or(u64::MAX));
                    let new = !self.seen.contains_key(&key);
                    if new {
                        let zero = PerCpuValues::try_from(vec![Counters::default(); maps.cpus]);
                        let Ok(zero) = zero else { return };
                        if maps.counters.insert(in_key, zero, 0).is_err() {
                            // Full: the channel stays on the socket path.
                            return;
                        }
                    }
                    let (peer_ip, peer_port) = split(target.peer);
                    let (relay_ip, relay_port) = split(target.relay);
                    let out_key = OutKey { peer_ip, relay_ip, peer_port, relay_port };
                    let in_val = InVal { peer_ip, relay_ip, peer_port, relay_port, pad: [0; 4], expires_ns };
                    let out_val = OutVal { client: in_key, expires_ns };
                    let inserted = maps.chan_out.insert(out_key, out_val, 0).is_ok()
                        && maps.chan_in.insert(in_key, in_val, 0).is_ok();
                    if !inserted {
                        // Full: the channel stays on the socket path (a later refresh
                        // of it tries again).
                        let _ = maps.chan_out.remove(&out_key);
                        let _ = maps.chan_in.remove(&in_key);
                        if new {
                            let _ = maps.counters.remove(&in_key);
                        } else {
                            self.credit(maps, core, key, target);
                            let _ = maps.counters.remove(&in_key);
                            self.seen.remove(&key);
                            CHANNELS.fetch_sub(1, Ordering::Relaxed);
                        }
                        tracing::debug!(channel = key.channel, "XDP map full: channel left on the socket path");
                        return;
                    }
                    if new {
                        self.seen.insert(key, Counters::default());
                        CHANNELS.fetch_add(1, Ordering::Relaxed);
                    }
                }
                MapOp::Remove(key, target) => {
                    let (peer_ip, peer_port) = split(target.peer);
                    let (relay_ip, relay_port) = split(target.relay);
                    // Entries first, counters last, so no packet is counted after the
                    // final read.
                    let _ = maps.chan_in.remove(&in_key);
                    let _ = maps.chan_out.remove(&OutKey { peer_ip, relay_ip, peer_port, relay_port });
                    self.credit(maps, core, key, target);
                    let _ = maps.counters.remove(&in_key);
                    if self.seen.remove(&key).is_some() {
                        CHANNELS.fetch_sub(1, Ordering::Relaxed);
                    }
                }
            }
        }

        /// Reads one channel's counters and credits what is new since the last read.
        fn credit(&mut self, maps: &Maps, core: &mut Server, key: OffloadKey, target: OffloadTarget) {
            let Some(seen) = self.seen.get_mut(&key) else { return };
            let Ok(per_cpu) = maps.counters.get(&key_of(key), 0) else { return };
            let total = per_cpu.iter().fold(Counters::default(), |a, c| Counters {
                to_peer_packets: a.to_peer_packets + c.to_peer_packets,
                to_peer_bytes: a.to_peer_bytes + c.to_peer_bytes,
                to_client_packets: a.to_client_packets + c.to_client_packets,
                to_client_bytes: a.to_client_bytes + c.to_client_bytes,
            });
            let delta = Traffic {
                to_peer_packets: total.to_peer_packets.saturating_sub(seen.to_peer_packets),
                to_peer_bytes: total.to_peer_bytes.saturating_sub(seen.to_peer_bytes),
                to_client_packets: total.to_client_packets.saturating_sub(seen.to_client_packets),
                to_client_bytes: total.to_client_bytes.saturating_sub(seen.to_client_bytes),
            };
            *seen = total;
            if delta == Traffic::default() {
                return;
            }
            PACKETS[0].fetch_add(delta.to_peer_packets, Ordering::Relaxed);
            BYTES[0].fetch_add(delta.to_peer_bytes, Ordering::Relaxed);
            PACKETS[1].fetch_add(delta.to_client_packets, Ordering::Relaxed);
            BYTES[1].fetch_add(delta.to_client_bytes, Ordering::Relaxed);
            core.credit_offloaded(target.allocation, delta);
        }
    }

    /// A cheap summary of the core's state that changes whenever its bindings may have:
    /// every answered request, expiry and allocation count change moves it.
    fn fingerprint(core: &Server) -> u64 {
        let stats = core.stats();
        let answered: u64 = stats.requests.iter().flatten().sum();
        answered.wrapping_add(stats.allocations_expired).wrapping_add(core.allocation_count() as u64)
    }

    fn key_of(key: OffloadKey) -> InKey {
        let (client_ip, client_port) = split(key.client);
        let (server_ip, server_port) = split(key.server);
        InKey { client_ip, server_ip, client_port, server_port, channel: key.channel.to_be_bytes(), pad: [0; 2] }
    }

    fn in_key(op: &MapOp) -> InKey {
        match op {
            MapOp::Upsert(key, _) | MapOp::Remove(key, _) => key_of(*key),
        }
    }
}

#[cfg(not(feature = "xdp"))]
mod backend {
    use super::XdpError;
    use crate::turn::Server;

    pub(super) fn load(_interfaces: &[String]) -> Result<(), XdpError> {
        Err(XdpError::NotBuilt)
    }

    /// Never made: without the feature nothing is offloaded.
    #[derive(Debug)]
    pub(super) struct Sync {
        pub(super) dirty: bool,
    }

    impl Sync {
        pub(super) fn new() -> Option<Self> {
            None
        }

        pub(super) fn after_wake(&mut self, _core: &mut Server) {}

        pub(super) fn sync(&mut self, _core: &mut Server, _now: std::time::Instant, _read_counters: bool) {}

        pub(super) fn withdraw(&mut self, _core: &mut Server) {}
    }
}
