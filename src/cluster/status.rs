//! What the cluster task last saw, for `/readyz` and the metrics (atomics: written by
//! the task, read by the admin thread).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The cluster task's state. The default is "no cluster configured".
#[derive(Debug, Default)]
pub struct ClusterStatus {
    /// Whether `[cluster]` is configured (the metrics are exported only then).
    configured: AtomicBool,
    /// Whether the last exchange with Redis succeeded.
    redis_up: AtomicBool,
    /// Live nodes in the registry at the last read, this one included.
    nodes: AtomicU64,
    /// Registry entries ignored because they did not parse or failed a check.
    bad_entries: AtomicU64,
    /// Exchanges with Redis that failed or timed out.
    failures: AtomicU64,
    /// The CPU use this node last published, thousandths of a core ([`NO_CPU`]:
    /// unknown; the default 0 is replaced at the first publish).
    cpu_millicores: AtomicU64,
    /// What became of the usage records (kept here so one handle carries every
    /// figure of the fleet's tasks to the metrics; written with or without Redis).
    pub usage: std::sync::Arc<crate::usage::UsageCounters>,
}

/// `cpu_millicores` when the CPU use is not known.
const NO_CPU: u64 = u64::MAX;

impl ClusterStatus {
    /// Records the CPU use this node published (`None`: not known).
    pub fn set_cpu(&self, millicores: Option<u64>) {
        self.cpu_millicores.store(millicores.unwrap_or(NO_CPU), Ordering::Relaxed);
    }

    /// The CPU use this node last published, thousandths of a core.
    pub fn cpu_millicores(&self) -> Option<u64> {
        Some(self.cpu_millicores.load(Ordering::Relaxed)).filter(|&c| c != NO_CPU)
    }

    /// Marks the cluster as configured.
    pub fn set_configured(&self) {
        self.configured.store(true, Ordering::Relaxed);
    }

    /// Whether `[cluster]` is configured.
    pub fn configured(&self) -> bool {
        self.configured.load(Ordering::Relaxed)
    }

    /// Records a successful publish and read that found `nodes` live nodes.
    pub fn up(&self, nodes: usize) {
        self.redis_up.store(true, Ordering::Relaxed);
        self.nodes.store(nodes as u64, Ordering::Relaxed);
    }

    /// Records a failed exchange with Redis.
    pub fn down(&self) {
        self.redis_up.store(false, Ordering::Relaxed);
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts registry entries that were ignored.
    pub fn bad(&self, entries: usize) {
        self.bad_entries.fetch_add(entries as u64, Ordering::Relaxed);
    }

    /// Whether Redis answered the last exchange.
    pub fn redis_up(&self) -> bool {
        self.redis_up.load(Ordering::Relaxed)
    }

    /// Live nodes at the last read.
    pub fn nodes(&self) -> u64 {
        self.nodes.load(Ordering::Relaxed)
    }

    /// Entries ignored so far.
    pub fn bad_entries(&self) -> u64 {
        self.bad_entries.load(Ordering::Relaxed)
    }

    /// Failed exchanges so far.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}
