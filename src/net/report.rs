//! What the event loop tells the rest of the process (the admin plane, systemd): a
//! snapshot published every second, events as they happen, and answers to control
//! requests. Publishing is off the relay path: the loop copies its counters once a
//! second rather than sharing them.

use crate::turn::{AllocationId, CoreConfig, Event, Stats, TenantId};
use serde::Serialize;
use std::net::SocketAddr;
use tokio::sync::oneshot;

/// Upper bounds (seconds) of the request handling time histogram.
pub const REQUEST_SECONDS_BOUNDS: [f64; 10] = [1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 0.1];
/// Upper bounds (seconds) of the allocation lifetime histogram.
pub const LIFETIME_SECONDS_BOUNDS: [f64; 10] = [1.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 86400.0];

/// A fixed-bucket histogram: cumulative export is the publisher's job.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Histogram<const N: usize> {
    /// Observations per bucket (not cumulative); the last slot is +Inf.
    #[serde(skip)]
    pub counts: [u64; N],
    /// Sum of observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl<const N: usize> Default for Histogram<N> {
    fn default() -> Self {
        Histogram { counts: [0; N], sum: 0.0, count: 0 }
    }
}

impl<const N: usize> Histogram<N> {
    /// Adds another histogram's observations (same bounds) to this one.
    pub fn add(&mut self, other: &Self) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts) {
            *mine += theirs;
        }
        self.sum += other.sum;
        self.count += other.count;
    }

    /// Records `value` against `bounds` (N - 1 upper bounds).
    pub fn observe(&mut self, bounds: &[f64], value: f64) {
        let slot = bounds.iter().position(|&b| value <= b).unwrap_or(N - 1).min(N - 1);
        self.counts[slot] += 1;
        self.sum += value;
        self.count += 1;
    }
}

/// The loop's state, published once a second.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    /// Wall-clock time of the snapshot, milliseconds since the Unix epoch: a worker's
    /// when it published, the merge's when it merged (so merged snapshots are a
    /// merge interval apart, and rates over them are over that interval); 0 until
    /// every worker has published.
    pub unix_ms: u64,
    /// The oldest worker snapshot in a merged one (its `unix_ms`): a wedged worker
    /// shows in /readyz as a stale one. A worker's own snapshot leaves it 0.
    #[serde(skip)]
    pub oldest_worker_ms: u64,
    /// Allocations in force.
    pub allocations: usize,
    /// Live permissions over all allocations.
    pub permissions: usize,
    /// Live channel bindings over all allocations.
    pub channels: usize,
    /// Open TCP/TLS client connections.
    pub tcp_connections: usize,
    /// Relay ports in use.
    pub ports_in_use: usize,
    /// Relay ports still free.
    pub ports_available: usize,
    /// Whether new allocations are refused (draining before exit).
    pub draining: bool,
    /// The core's counters.
    #[serde(skip)]
    pub stats: Stats,
    /// Request handling time, seconds.
    #[serde(skip)]
    pub request_seconds: Histogram<11>,
    /// Lifetimes of ended allocations, seconds.
    #[serde(skip)]
    pub allocation_lifetime_seconds: Histogram<11>,
    /// Figures per configured tenant (realm), the default one first.
    pub realms: Vec<RealmFigures>,
}

/// One tenant's figures: what the `realm`-labelled metrics and the `stats` message
/// show. Only configured realms appear, so the label set is the configured one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RealmFigures {
    /// The tenant's id, for the admin plane to name events' realms.
    #[serde(skip)]
    pub tenant: TenantId,
    /// The realm.
    pub realm: String,
    /// Allocations in force.
    pub allocations: usize,
    /// Requests that failed authentication, since start.
    pub auth_failures: u64,
    /// Payload bytes relayed, both directions, since start (ended allocations and
    /// live ones).
    pub relayed_bytes: u64,
}

impl Snapshot {
    /// Folds another worker's snapshot into this one. Port figures come from the
    /// shared ledger, so every worker reports the same ones and they are not summed;
    /// the process is draining once every worker is; the time is the oldest worker's
    /// (see [`Snapshot::oldest_worker_ms`]).
    pub fn add(&mut self, other: &Snapshot) {
        self.unix_ms = self.unix_ms.min(other.unix_ms);
        self.allocations += other.allocations;
        self.permissions += other.permissions;
        self.channels += other.channels;
        self.tcp_connections += other.tcp_connections;
        self.draining &= other.draining;
        self.stats.add(&other.stats);
        self.request_seconds.add(&other.request_seconds);
        self.allocation_lifetime_seconds.add(&other.allocation_lifetime_seconds);
        for theirs in &other.realms {
            match self.realms.iter_mut().find(|r| r.tenant == theirs.tenant) {
                Some(mine) => {
                    mine.allocations += theirs.allocations;
                    mine.auth_failures += theirs.auth_failures;
                    mine.relayed_bytes += theirs.relayed_bytes;
                }
                None => self.realms.push(theirs.clone()),
            }
        }
    }
}

/// One allocation as an operator sees it.
#[derive(Debug, Clone, Serialize)]
pub struct AllocationInfo {
    /// Its id.
    pub id: u64,
    /// The user that created it.
    pub user: String,
    /// The realm (tenant) it belongs to.
    pub realm: String,
    /// The client's transport address.
    pub client: SocketAddr,
    /// udp, tcp or tls.
    pub transport: &'static str,
    /// The advertised relay address.
    pub relay: SocketAddr,
    /// Seconds since creation.
    pub age_secs: u64,
    /// Seconds until expiry unless refreshed.
    pub expires_in_secs: u64,
    /// Live permissions.
    pub permissions: usize,
    /// Live channels.
    pub channels: usize,
    /// Payload bytes client to peer.
    pub bytes_to_peer: u64,
    /// Payload bytes peer to client.
    pub bytes_to_client: u64,
}

/// A value whose `Debug` does not show it (secrets in a [`Control`]).
#[derive(Clone, PartialEq, Eq)]
pub struct Redacted<T>(pub T);

impl<T> std::fmt::Debug for Redacted<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A request to the running event loop.
#[derive(Debug)]
pub enum Control {
    /// Replace the core's configuration (SIGHUP reload).
    Reconfigure(Box<CoreConfig>),
    /// The fleet's best other nodes, from the cluster task (see `turn::fleet`).
    SetAlternates {
        /// Per client transport and family, the node new Allocates are sent to when
        /// this one turns them away (boxed: six addresses and names).
        alternates: Box<crate::turn::fleet::Alternates>,
        /// How long they hold without a newer report.
        valid_for: std::time::Duration,
    },
    /// A page of allocations, ordered by id, and the total.
    ListAllocations {
        /// Only allocations of this realm.
        realm: Option<String>,
        /// Allocations to skip.
        offset: usize,
        /// Page size.
        limit: usize,
        /// Where the answer goes.
        reply: oneshot::Sender<(Vec<AllocationInfo>, usize)>,
    },
    /// Drop one allocation; the reply says whether it existed.
    DropAllocation {
        /// Which.
        id: AllocationId,
        /// Where the answer goes.
        reply: oneshot::Sender<bool>,
    },
    /// Drop every allocation of a user; the reply says how many.
    DropUser {
        /// The username.
        user: String,
        /// Where the answer goes.
        reply: oneshot::Sender<usize>,
    },
    /// Revoke a user or a REST credential (see `turn::revocations`): its allocations
    /// end and it is refused until lifted. The reply: allocations ended, or why not.
    Revoke {
        /// The username (or user id, or one REST username).
        user: String,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<usize, String>>,
    },
    /// Lift a revocation; the reply says whether there was one.
    LiftRevocation {
        /// The name revoked.
        user: String,
        /// Where the answer goes.
        reply: oneshot::Sender<bool>,
    },
    /// The revocations in force: each name with the Unix time it lapses at, if any.
    ListRevocations {
        /// Where the answer goes.
        reply: oneshot::Sender<Vec<(String, Option<u64>)>>,
    },
    /// The fleet's per-user counts from other nodes (see `Ledger::set_remote_counts`);
    /// the reply: this node's own.
    FleetCounts {
        /// The other nodes' allocations per user.
        remote: Vec<(crate::turn::tenant::UserKey, usize)>,
        /// Where this node's counts go.
        reply: oneshot::Sender<Vec<(crate::turn::tenant::UserKey, usize)>>,
    },
    /// The fleet's per-user rates on other nodes (see `Server::exchange_fleet_rates`);
    /// the reply: this node's `(user, bytes/s, cap)`, summed over its workers.
    FleetRates {
        /// The other nodes' rates per user.
        remote: Vec<(crate::turn::tenant::UserKey, crate::turn::user_bandwidth::RemoteRate)>,
        /// How long they hold.
        valid_for: std::time::Duration,
        /// Where this node's rates go.
        reply: oneshot::Sender<Vec<(crate::turn::tenant::UserKey, u64, u64)>>,
    },
    /// The fleet's REST secrets from Redis, newest first (replacing the previous set).
    SetFleetSecrets {
        /// The secrets.
        secrets: Redacted<Vec<Vec<u8>>>,
    },
    /// The fleet's shared nonce key, and the seconds since its origin now.
    SetNonceKey {
        /// The key.
        secret: [u8; 32],
        /// Seconds from the fleet's origin to now.
        since_origin: u32,
    },
    /// Stop taking new allocations (graceful stop): 300 with this alternate server,
    /// or 508 without one.
    Drain {
        /// ALTERNATE-SERVER for new Allocates.
        alternate: Option<SocketAddr>,
        /// Answered once new Allocates are turned away.
        reply: oneshot::Sender<()>,
    },
    /// Live upgrade: stop reading UDP listeners and the UDP clients' relay sockets,
    /// and export those allocations with duplicates of the sockets (nothing is
    /// removed: [`Control::Thaw`] undoes it, [`Control::Release`] completes it).
    Freeze {
        /// Every worker's share, in worker order, or why one could not freeze.
        reply: oneshot::Sender<Result<Vec<super::upgrade::WorkerHandover>, String>>,
    },
    /// Live upgrade failed: read again what [`Control::Freeze`] stopped reading.
    Thaw {
        /// Answered once every worker reads again.
        reply: oneshot::Sender<()>,
    },
    /// Live upgrade done: forget what [`Control::Freeze`] exported (the successor
    /// serves it); TCP and TLS clients' allocations stay here until they end.
    Release {
        /// Answered once every worker let go.
        reply: oneshot::Sender<()>,
    },
    /// Stop.
    Shutdown,
}

/// The channels the loop publishes on.
#[derive(Debug, Clone)]
pub struct Publisher {
    /// The latest snapshot.
    pub snapshots: tokio::sync::watch::Sender<Snapshot>,
    /// Events as they happen (lagging receivers lose the oldest).
    pub events: tokio::sync::broadcast::Sender<Event>,
    /// The cluster task's state (unconfigured without `[cluster]`).
    pub cluster: std::sync::Arc<crate::cluster::ClusterStatus>,
}

impl Publisher {
    /// A publisher with room for `event_backlog` events per slow receiver.
    pub fn new(event_backlog: usize) -> Self {
        Publisher {
            snapshots: tokio::sync::watch::channel(Snapshot::default()).0,
            events: tokio::sync::broadcast::channel(event_backlog.max(1)).0,
            cluster: std::sync::Arc::default(),
        }
    }
}
