//! What the cluster task last saw, for `/readyz` and the metrics (atomics: written by
//! the task, read by the admin thread); and the one signal the other way, from the
//! admin plane to the task: this node's revocation list changed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::sync::Notify;

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
    /// REST secrets from Redis in force (the last good set).
    secrets: AtomicU64,
    /// Reads of the secrets key refused as bad data.
    secrets_rejected: AtomicU64,
    /// Users whose bandwidth cap is shared with other nodes, at the last read.
    capped_users: AtomicU64,
    /// Set by the admin plane when a revoke or lift on this node succeeded: the task
    /// syncs at once instead of at its next tick (a `Notify` keeps one permit, so a
    /// change made while the task is busy is not lost, and a burst is one sync).
    revocations_changed: Notify,
    /// Whether the subscription to the fleet's revocation pushes is up.
    revocations_subscribed: AtomicBool,
    /// Revocation changes this node pushed to the fleet.
    revocation_pushes_sent: AtomicU64,
    /// Pushed revocation changes from other nodes that woke a sync here.
    revocation_pushes_received: AtomicU64,
    /// Messages on the revocation channel ignored as malformed.
    revocation_messages_rejected: AtomicU64,
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

    /// Records the fleet's secrets now in force.
    pub fn set_secrets(&self, n: usize) {
        self.secrets.store(n as u64, Ordering::Relaxed);
    }

    /// Counts a read of the secrets key refused as bad data.
    pub fn secrets_rejected_once(&self) {
        self.secrets_rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// Records how many users' bandwidth caps are shared with other nodes.
    pub fn set_capped_users(&self, n: usize) {
        self.capped_users.store(n as u64, Ordering::Relaxed);
    }

    /// Tells the cluster task that this node's revocation list changed (a revoke or
    /// lift asked for here): it pushes the change to the fleet at once. Harmless
    /// without `[cluster]` (nobody waits).
    pub fn revocations_changed_here(&self) {
        self.revocations_changed.notify_one();
    }

    /// Waits for [`revocations_changed_here`](Self::revocations_changed_here).
    pub(super) async fn local_revocation_change(&self) {
        self.revocations_changed.notified().await;
    }

    /// Records whether the revocation subscription is up.
    pub(super) fn set_revocations_subscribed(&self, up: bool) {
        self.revocations_subscribed.store(up, Ordering::Relaxed);
    }

    /// Counts changes pushed to the fleet.
    pub(super) fn revocations_pushed(&self, n: usize) {
        self.revocation_pushes_sent.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts a push from another node.
    pub(super) fn revocation_push_received(&self) {
        self.revocation_pushes_received.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a malformed message on the revocation channel.
    pub(super) fn revocation_message_rejected(&self) {
        self.revocation_messages_rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the revocation subscription is up.
    pub fn revocations_subscribed(&self) -> bool {
        self.revocations_subscribed.load(Ordering::Relaxed)
    }

    /// Changes pushed to the fleet so far.
    pub fn revocation_pushes_sent(&self) -> u64 {
        self.revocation_pushes_sent.load(Ordering::Relaxed)
    }

    /// Pushes from other nodes received so far.
    pub fn revocation_pushes_received(&self) -> u64 {
        self.revocation_pushes_received.load(Ordering::Relaxed)
    }

    /// Malformed messages on the revocation channel so far.
    pub fn revocation_messages_rejected(&self) -> u64 {
        self.revocation_messages_rejected.load(Ordering::Relaxed)
    }

    /// The fleet's secrets in force.
    pub fn secrets(&self) -> u64 {
        self.secrets.load(Ordering::Relaxed)
    }

    /// Refused reads of the secrets key so far.
    pub fn secrets_rejected(&self) -> u64 {
        self.secrets_rejected.load(Ordering::Relaxed)
    }

    /// Users whose bandwidth caps are shared, at the last read.
    pub fn capped_users(&self) -> u64 {
        self.capped_users.load(Ordering::Relaxed)
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
