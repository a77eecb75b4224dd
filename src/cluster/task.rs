//! The cluster task: once per publish interval, publish this node's entry with a TTL,
//! read every live entry, and send the workers the chosen alternates. Every exchange
//! with Redis is bounded; a failed one drops the connection,
//! marks Redis down and is retried at the next tick (so a node rejoins within one
//! interval of Redis coming back). One exchange may take up to half the TTL.
//!
//! Revocations do not wait for the tick: a change made here (the admin plane says so
//! through [`ClusterStatus::revocations_changed_here`]) is synced and pushed at once,
//! and a second task keeps a subscription to the fleet's pushes (see
//! `super::revocation_sync`) that wakes a sync here when another node's change arrives.

use super::advertise::{advertised, Advertised};
use super::quotas;
use super::registry::{choose, parse_entry, NodeEntry, NodeState, MAX_NODES};
use super::revocation_sync::{subscribe, sync_revocations};
use super::revocations::RevocationSync;
use super::secrets::{self, Rejected};
use super::status::ClusterStatus;
use crate::config::{Cluster, ListenTransport, PASSWORD_ENV};
use crate::net::report::{Control, Redacted, Snapshot};
use crate::turn::ledger::MAX_REMOTE_USERS;
use crate::turn::stats::Direction;
use crate::turn::TenantId;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, IntoConnectionInfo};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tracing::{debug, info, warn};

/// SCAN rounds per read: with COUNT 100, enough for [`MAX_NODES`] among other keys.
const MAX_SCAN_ROUNDS: usize = 64;

/// The cluster task's settings, from `[cluster]`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub(super) client: redis::Client,
    /// This node's id.
    pub node_id: String,
    prefix: String,
    interval: Duration,
    pub(super) ttl: Duration,
    capacity: Option<usize>,
    front: bool,
    /// Where other nodes send this node's clients, per transport: from `cluster`
    /// and the bound listeners (see `with_listeners`).
    advertised: Advertised,
    domain: Option<String>,
    usage_max_len: u64,
    /// Whether the fleet's REST secrets are read from `PREFIX:secrets`.
    secrets_from_redis: bool,
    /// Each tenant's realm at start (the snapshots carry them from their first
    /// publish, and after reloads).
    realms: Vec<(TenantId, String)>,
}

/// Why `[cluster]` could not be turned into settings.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// `redis` is not set: no fleet.
    #[error("cluster.redis: not set")]
    NoRedis,
    /// The URL did not parse.
    #[error("cluster.redis: {0}")]
    Url(redis::RedisError),
    /// The password file could not be read.
    #[error("cluster.password-file: {path}: {source}")]
    PasswordFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The CA file could not be read or holds no usable certificate.
    #[error("cluster.ca-file: {path}: {why}")]
    CaFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        why: String,
    },
    /// No node id was given and the host name is not usable as one.
    #[error("cluster.node-id: not set, and the host name {0:?} is not a usable node id")]
    NodeId(String),
}

impl Settings {
    /// Settings from a validated `[cluster]`; reads the password file (or
    /// `TURND_REDIS_PASSWORD`) and the host name when needed.
    pub fn from_config(cluster: &Cluster) -> Result<Settings, SettingsError> {
        let url = cluster.redis.as_deref().ok_or(SettingsError::NoRedis)?;
        let info = url.into_connection_info().map_err(SettingsError::Url)?;
        let password = match &cluster.password_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|source| SettingsError::PasswordFile { path: path.clone(), source })?
                    .trim_end()
                    .to_owned(),
            ),
            None => std::env::var(PASSWORD_ENV).ok().filter(|p| !p.is_empty()),
        };
        let info = match password {
            Some(password) => {
                let redis = info.redis_settings().clone().set_password(password);
                info.set_redis_settings(redis)
            }
            None => info,
        };
        let client = match &cluster.ca_file {
            Some(path) => {
                let ca_error = |why: String| SettingsError::CaFile { path: path.clone(), why };
                let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
                if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
                    return Err(ca_error("no PEM certificate in it".into()));
                }
                let certificates = redis::TlsCertificates { client_tls: None, root_cert: Some(pem) };
                redis::Client::build_with_tls(info, certificates).map_err(|e| ca_error(e.to_string()))?
            }
            None => redis::Client::open(info).map_err(SettingsError::Url)?,
        };
        let node_id = match &cluster.node_id {
            Some(id) => id.clone(),
            None => {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
                let host = host.trim().to_owned();
                if !crate::config::is_node_id(&host) {
                    return Err(SettingsError::NodeId(host));
                }
                host
            }
        };
        Ok(Settings {
            client,
            node_id,
            prefix: cluster.key_prefix.clone(),
            interval: cluster.publish_interval,
            ttl: cluster.ttl,
            capacity: cluster.max_allocations,
            front: cluster.front,
            advertised: Advertised::default(),
            domain: cluster.tls_domain.clone(),
            usage_max_len: cluster.usage_max_len,
            secrets_from_redis: cluster.secrets_from_redis,
            realms: Vec::new(),
        })
    }

    /// The per-transport advertised addresses of `cluster` (the one these settings
    /// came from), given the listeners as bound (transport, local address; in config
    /// order): the defaults come from them.
    pub fn with_listeners(mut self, cluster: &Cluster, listeners: &[(ListenTransport, SocketAddr)]) -> Self {
        self.advertised = advertised(cluster, listeners);
        self
    }

    /// The tenants' realms at start: per-user counts are shared by realm name.
    pub fn with_realms(mut self, realms: Vec<(TenantId, String)>) -> Self {
        self.realms = realms;
        self
    }

    /// Where usage records go in Redis: client, stream key, approximate MAXLEN
    /// (`None` when `usage-max-len` is 0).
    pub fn usage_stream(&self) -> Option<(redis::Client, String, u64)> {
        (self.usage_max_len > 0).then(|| (self.client.clone(), format!("{}:usage", self.prefix), self.usage_max_len))
    }

    /// The Redis client (TLS and password as configured): `turnd ctl secrets` uses it.
    pub fn redis_client(&self) -> redis::Client {
        self.client.clone()
    }

    /// The list of the fleet's REST secrets: `PREFIX:secrets`.
    pub fn secrets_key(&self) -> String {
        format!("{}:secrets", self.prefix)
    }

    fn users_key(&self, id: &str) -> String {
        format!("{}:users:{id}", self.prefix)
    }

    fn key(&self, id: &str) -> String {
        format!("{}:node:{id}", self.prefix)
    }

    pub(super) fn revoked_key(&self) -> String {
        format!("{}:revoked", self.prefix)
    }

    /// The channel revocation changes are pushed on.
    pub(super) fn revocations_channel(&self) -> String {
        format!("{}:revocations", self.prefix)
    }
}

/// Starts the cluster task on the current runtime. It runs until the runtime stops.
pub fn spawn(
    settings: Settings,
    snapshots: watch::Receiver<Snapshot>,
    control: mpsc::Sender<Control>,
    status: Arc<ClusterStatus>,
) -> tokio::task::JoinHandle<()> {
    status.set_configured();
    let pushed = Arc::new(Notify::new());
    tokio::spawn(subscribe(settings.clone(), status.clone(), pushed.clone()));
    tokio::spawn(run(settings, snapshots, control, status, pushed))
}

/// The shortest gap between two syncs woken by pushes: a flood of messages on the
/// channel costs at most this many syncs a second (40), never the tick's exchange.
const MIN_PUSHED_SYNC_GAP: Duration = Duration::from_millis(25);

async fn run(
    settings: Settings,
    snapshots: watch::Receiver<Snapshot>,
    control: mpsc::Sender<Control>,
    status: Arc<ClusterStatus>,
    pushed: Arc<Notify>,
) {
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut connection: Option<MultiplexedConnection> = None;
    let mut relayed = Relayed::default();
    let mut was_up: Option<bool> = None;
    let mut revocations = RevocationSync::default();
    let mut nonce_key: Option<([u8; 32], u64)> = None;
    let mut cpu = CpuUse::default();
    let a = &settings.advertised;
    let shown = |address: Option<SocketAddr>| address.map_or_else(|| "-".to_owned(), |a| a.to_string());
    info!(
        node = %settings.node_id,
        interval = ?settings.interval,
        ttl = ?settings.ttl,
        udp = %format!("{} {}", shown(a.udp.ipv4), shown(a.udp.ipv6)),
        tcp = %format!("{} {}", shown(a.tcp.ipv4), shown(a.tcp.ipv6)),
        tls = %format!("{} {}", shown(a.tls.ipv4), shown(a.tls.ipv6)),
        "cluster: joining the registry"
    );
    let mut fleet_secrets = FleetSecrets::default();
    let mut last_pushed_sync: Option<Instant> = None;
    loop {
        // The tick first: it is ready once per interval, so a stream of pushes can
        // delay it by one sync at most, never starve it.
        tokio::select! {
            biased;
            _ = tick.tick() => {}
            () = status.local_revocation_change() => {
                sync_now(&settings, &mut connection, &control, &mut revocations, &status).await;
                continue;
            }
            () = pushed.notified() => {
                if let Some(gap) = last_pushed_sync.map(|at| MIN_PUSHED_SYNC_GAP.saturating_sub(at.elapsed())) {
                    tokio::time::sleep(gap).await;
                }
                last_pushed_sync = Some(Instant::now());
                sync_now(&settings, &mut connection, &control, &mut revocations, &status).await;
                continue;
            }
        }
        let mut entry = own_entry(&settings, &snapshots, &mut relayed);
        entry.cpu_millicores = cpu.sample(crate::sys::process::cpu_time(), Instant::now());
        status.set_cpu(entry.cpu_millicores);
        // An exchange may take half the TTL: past that, the facts it would bring are
        // too old to keep redirecting on anyway.
        let exchanged = tokio::time::timeout(settings.ttl / 2, async {
            let raw = exchange(&settings, &mut connection, &entry).await?;
            let (entries, bad) = parse_all(&settings, raw);
            if let Some(conn) = connection.as_mut() {
                share_nonce_key(&settings, conn, &control, &mut nonce_key, &status).await?;
                sync_revocations(&settings, conn, &control, &mut revocations, &status).await?;
                share_counts(&settings, conn, &control, &snapshots, &entries, &status).await?;
                share_rates(&settings, conn, &control, &snapshots, &entries, &status).await?;
                if settings.secrets_from_redis {
                    read_secrets(&settings, conn, &control, &mut fleet_secrets, &status).await?;
                }
            }
            Ok::<_, redis::RedisError>((entries, bad))
        })
        .await;
        match exchanged {
            Ok(Ok((entries, bad))) => {
                if bad > 0 {
                    status.bad(bad);
                }
                status.up(entries.len());
                if was_up != Some(true) {
                    info!(nodes = entries.len(), "cluster: registry reachable");
                }
                was_up = Some(true);
                let alternates = choose(&entries, &settings.node_id);
                let _ = control
                    .send(Control::SetAlternates { alternates: Box::new(alternates), valid_for: settings.ttl })
                    .await;
            }
            failed => {
                connection = None;
                status.down();
                if was_up != Some(false) {
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".to_owned(),
                    };
                    let hint = if why.contains("certificate") {
                        "the Redis server's TLS certificate was refused: check cluster.ca-file (or the system's roots) and the host name in cluster.redis"
                    } else {
                        ""
                    };
                    warn!(error = %why, hint, "cluster: Redis unreachable; serving with local limits, redirects stop within the TTL");
                }
                was_up = Some(false);
            }
        }
    }
}

/// The process's CPU time at the last publish, for its CPU use over the interval.
#[derive(Debug, Default)]
struct CpuUse {
    last: Option<(Duration, Instant)>,
}

impl CpuUse {
    /// The CPU used since the last sample, in thousandths of one core; `None` at the
    /// first sample or when the CPU time could not be read.
    fn sample(&mut self, cpu: Option<Duration>, now: Instant) -> Option<u64> {
        let cpu = cpu?;
        let previous = self.last.replace((cpu, now));
        let (was, at) = previous?;
        let wall = now.checked_duration_since(at).filter(|d| !d.is_zero())?;
        let used = cpu.saturating_sub(was);
        u64::try_from(used.as_micros().saturating_mul(1000) / wall.as_micros().max(1)).ok()
    }
}

/// The relayed byte total at the last publish, for the bit rate.
#[derive(Debug, Default)]
struct Relayed {
    bytes: u64,
    at: Option<Instant>,
}

fn own_entry(settings: &Settings, snapshots: &watch::Receiver<Snapshot>, relayed: &mut Relayed) -> NodeEntry {
    let (allocations, draining, bytes) = {
        let s = snapshots.borrow();
        let bytes = s.stats.relayed(Direction::ClientToPeer).1 + s.stats.relayed(Direction::PeerToClient).1;
        (s.allocations, s.draining, bytes)
    };
    let now = Instant::now();
    let relayed_bps = match relayed.at {
        Some(at) if now > at => {
            let seconds = now.duration_since(at).as_secs_f64();
            (bytes.saturating_sub(relayed.bytes) as f64 * 8.0 / seconds) as u64
        }
        _ => 0,
    };
    *relayed = Relayed { bytes, at: Some(now) };
    let state = if draining {
        NodeState::Draining
    } else if settings.front {
        NodeState::Front
    } else {
        NodeState::Serving
    };
    NodeEntry {
        id: settings.node_id.clone(),
        state,
        ipv4: settings.advertised.udp.ipv4,
        ipv6: settings.advertised.udp.ipv6,
        tcp: Some(settings.advertised.tcp),
        tls: Some(settings.advertised.tls),
        domain: settings.domain.clone(),
        allocations: allocations as u64,
        capacity: settings.capacity.map(|c| c as u64),
        relayed_bps,
        cpu_millicores: None,
        unix_ms: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
    }
}

/// The connection, opened if there is none.
async fn connect<'c>(
    settings: &Settings,
    connection: &'c mut Option<MultiplexedConnection>,
) -> redis::RedisResult<&'c mut MultiplexedConnection> {
    match connection {
        Some(conn) => Ok(conn),
        None => {
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(settings.ttl / 2))
                .set_response_timeout(Some(settings.ttl / 2));
            Ok(connection.insert(settings.client.get_multiplexed_async_connection_with_config(&config).await?))
        }
    }
}

/// A revocation sync out of turn (a change here, or a push from another node),
/// bounded like an exchange. A failure drops the connection and is left to the next
/// tick, which reports Redis down and syncs (and pushes) again.
async fn sync_now(
    settings: &Settings,
    connection: &mut Option<MultiplexedConnection>,
    control: &mpsc::Sender<Control>,
    sync: &mut RevocationSync,
    status: &ClusterStatus,
) {
    let synced = tokio::time::timeout(settings.ttl / 2, async {
        // A connection kept since the last tick may have died with a Redis restart
        // in between: one retry on a fresh one, or the push would wait for the tick.
        let had_one = connection.is_some();
        let conn = connect(settings, connection).await?;
        match sync_revocations(settings, conn, control, sync, status).await {
            Err(e) if had_one && !e.is_timeout() => {
                debug!(error = %e, "cluster: revocation sync failed on the kept connection; reconnecting");
                *connection = None;
                let conn = connect(settings, connection).await?;
                sync_revocations(settings, conn, control, sync, status).await
            }
            done => done,
        }
    })
    .await;
    match synced {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            debug!(error = %e, "cluster: revocation sync failed; retried at the next interval");
            *connection = None;
        }
        Err(_) => {
            debug!("cluster: revocation sync timed out; retried at the next interval");
            *connection = None;
        }
    }
}

/// Publishes `entry` and reads every entry: `(key, value)` pairs, values as stored.
async fn exchange(
    settings: &Settings,
    connection: &mut Option<MultiplexedConnection>,
    entry: &NodeEntry,
) -> redis::RedisResult<Vec<(String, Option<Vec<u8>>)>> {
    let conn = connect(settings, connection).await?;
    let json = serde_json::to_vec(entry).unwrap_or_default();
    let ttl_ms = u64::try_from(settings.ttl.as_millis()).unwrap_or(u64::MAX);
    redis::cmd("SET")
        .arg(settings.key(&settings.node_id))
        .arg(json)
        .arg("PX")
        .arg(ttl_ms)
        .query_async::<()>(conn)
        .await?;
    let pattern = format!("{}:node:*", settings.prefix);
    let mut keys: Vec<String> = Vec::new();
    let mut cursor = 0u64;
    for _ in 0..MAX_SCAN_ROUNDS {
        let (next, found): (u64, Vec<String>) =
            redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(100).query_async(conn).await?;
        keys.extend(found);
        cursor = next;
        if cursor == 0 || keys.len() >= MAX_NODES {
            break;
        }
    }
    keys.sort();
    keys.dedup();
    keys.truncate(MAX_NODES);
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET").arg(&keys).query_async(conn).await?;
    Ok(keys.into_iter().zip(values).collect())
}

/// Publishes this node's per-user allocation counts and folds the other live nodes'
/// into the ledger (see `super::quotas`).
async fn share_counts(
    settings: &Settings,
    conn: &mut MultiplexedConnection,
    control: &mpsc::Sender<Control>,
    snapshots: &watch::Receiver<Snapshot>,
    entries: &[NodeEntry],
    status: &ClusterStatus,
) -> redis::RedisResult<()> {
    let realms = current_realms(settings, snapshots);
    let by_realm: HashMap<String, TenantId> = realms.iter().map(|(t, r)| (r.clone(), *t)).collect();
    let hashes = others_hashes(settings, conn, entries, "users").await?;
    let (remote, bad) = quotas::sum_remote(hashes, &by_realm, MAX_REMOTE_USERS);
    if bad > 0 {
        status.bad(bad);
    }
    let (reply, counted) = oneshot::channel();
    if control.send(Control::FleetCounts { remote: remote.into_iter().collect(), reply }).await.is_err() {
        return Ok(());
    }
    let local = counted.await.unwrap_or_default();
    let key = settings.users_key(&settings.node_id);
    let mut pipe = redis::pipe();
    pipe.atomic().cmd("DEL").arg(&key).ignore();
    let fields: Vec<(String, usize)> = local
        .iter()
        .filter_map(|(user, n)| {
            let realm = realms.iter().find(|(t, _)| *t == user.tenant).map(|(_, r)| r)?;
            Some((quotas::field(realm, &user.name), *n))
        })
        .collect();
    if !fields.is_empty() {
        pipe.cmd("HSET").arg(&key).arg(&fields).ignore();
        let ttl_ms = u64::try_from(settings.ttl.as_millis()).unwrap_or(u64::MAX);
        pipe.cmd("PEXPIRE").arg(&key).arg(ttl_ms).ignore();
    }
    pipe.query_async::<()>(conn).await
}

/// Each tenant's realm now (from the snapshots, else as at start).
fn current_realms(settings: &Settings, snapshots: &watch::Receiver<Snapshot>) -> Vec<(TenantId, String)> {
    let realms: Vec<(TenantId, String)> =
        snapshots.borrow().realms.iter().map(|r| (r.tenant, r.realm.clone())).collect();
    if realms.is_empty() {
        settings.realms.clone()
    } else {
        realms
    }
}

/// The other live nodes' hashes `PREFIX:KIND:ID`, in one pipeline.
async fn others_hashes(
    settings: &Settings,
    conn: &mut MultiplexedConnection,
    entries: &[NodeEntry],
    kind: &str,
) -> redis::RedisResult<Vec<HashMap<Vec<u8>, Vec<u8>>>> {
    let others: Vec<&NodeEntry> = entries.iter().filter(|e| e.id != settings.node_id).collect();
    if others.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for node in &others {
        pipe.cmd("HGETALL").arg(format!("{}:{kind}:{}", settings.prefix, node.id));
    }
    pipe.query_async(conn).await
}

/// Users' rates published per node at most (the highest first): bounds the hash.
const MAX_PUBLISHED_RATES: usize = 1_000;

/// Publishes this node's per-user relayed rates (`PREFIX:rates:ID`, users relaying a
/// noticeable part of their `bandwidth-per-user`, the top [`MAX_PUBLISHED_RATES`]) and
/// hands the workers the other live nodes' rates, so each holds the user to a share
/// of the cap (see `turn::user_bandwidth`).
async fn share_rates(
    settings: &Settings,
    conn: &mut MultiplexedConnection,
    control: &mpsc::Sender<Control>,
    snapshots: &watch::Receiver<Snapshot>,
    entries: &[NodeEntry],
    status: &ClusterStatus,
) -> redis::RedisResult<()> {
    let realms = current_realms(settings, snapshots);
    let by_realm: HashMap<String, TenantId> = realms.iter().map(|(t, r)| (r.clone(), *t)).collect();
    let hashes = others_hashes(settings, conn, entries, "rates").await?;
    let (remote, bad) = quotas::sum_rates(hashes, &by_realm, MAX_REMOTE_USERS);
    if bad > 0 {
        status.bad(bad);
    }
    status.set_capped_users(remote.len());
    let (reply, measured) = oneshot::channel();
    let sent = Control::FleetRates { remote: remote.into_iter().collect(), valid_for: settings.ttl, reply };
    if control.send(sent).await.is_err() {
        return Ok(());
    }
    let mut local = measured.await.unwrap_or_default();
    local.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.name.cmp(&b.0.name)));
    local.truncate(MAX_PUBLISHED_RATES);
    let fields: Vec<(String, u64)> = local
        .iter()
        .filter_map(|(user, rate, _)| {
            let realm = realms.iter().find(|(t, _)| *t == user.tenant).map(|(_, r)| r)?;
            Some((quotas::field(realm, &user.name), *rate))
        })
        .collect();
    let key = format!("{}:rates:{}", settings.prefix, settings.node_id);
    let mut pipe = redis::pipe();
    pipe.atomic().cmd("DEL").arg(&key).ignore();
    if !fields.is_empty() {
        pipe.cmd("HSET").arg(&key).arg(&fields).ignore();
        let ttl_ms = u64::try_from(settings.ttl.as_millis()).unwrap_or(u64::MAX);
        pipe.cmd("PEXPIRE").arg(&key).arg(ttl_ms).ignore();
    }
    pipe.query_async::<()>(conn).await
}

/// The fleet's secrets in force, and the last refusal (logged once, not every interval).
#[derive(Debug, Default)]
struct FleetSecrets {
    current: Option<Vec<Vec<u8>>>,
    refused: Option<Rejected>,
}

/// Reads `PREFIX:secrets` (see `super::secrets`) and hands a changed good set to the
/// workers; bad data is logged, counted and ignored, so the last good set stays.
async fn read_secrets(
    settings: &Settings,
    conn: &mut MultiplexedConnection,
    control: &mpsc::Sender<Control>,
    state: &mut FleetSecrets,
    status: &ClusterStatus,
) -> redis::RedisResult<()> {
    let key = settings.secrets_key();
    // TYPE first: LRANGE on another type is an error, which must not look like Redis
    // being down.
    let kind: String = redis::cmd("TYPE").arg(&key).query_async(conn).await?;
    let entries: Vec<Vec<u8>> = match kind.as_str() {
        "list" => redis::cmd("LRANGE").arg(&key).arg(0).arg(secrets::MAX_SECRETS).query_async(conn).await?,
        _ => Vec::new(),
    };
    match secrets::parse(&kind, entries) {
        Ok(good) => {
            if state.refused.take().is_some() {
                info!(key = %key, "cluster: the fleet's secrets are valid again");
            }
            if state.current.as_ref() != Some(&good) {
                let count = good.len();
                if control.send(Control::SetFleetSecrets { secrets: Redacted(good.clone()) }).await.is_ok() {
                    info!(key = %key, secrets = count, "cluster: using the fleet's REST secrets from Redis");
                    status.set_secrets(count);
                    state.current = Some(good);
                }
            }
        }
        Err(why) => {
            status.secrets_rejected_once();
            if state.refused.as_ref() != Some(&why) {
                let kept = state.current.as_ref().map_or(0, Vec::len);
                warn!(key = %key, error = %why, kept, "cluster: the fleet's secrets in Redis are refused; the last good set stays");
                state.refused = Some(why);
            }
        }
    }
    Ok(())
}

/// The fleet's nonce key (`PREFIX:nonce-key`, `HEX32:ORIGIN_UNIX_SECONDS`): the first
/// node makes it, every node uses it, so a nonce is valid on every node (a client a
/// 300 sends on keeps its nonce). Deleting the key rotates it.
async fn share_nonce_key(
    settings: &Settings,
    conn: &mut MultiplexedConnection,
    control: &mpsc::Sender<Control>,
    current: &mut Option<([u8; 32], u64)>,
    status: &ClusterStatus,
) -> redis::RedisResult<()> {
    let key = format!("{}:nonce-key", settings.prefix);
    let unix_now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut stored: Option<Vec<u8>> = redis::cmd("GET").arg(&key).query_async(conn).await?;
    if stored.is_none() {
        let mut secret = [0u8; 32];
        if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret).is_err() {
            return Ok(());
        }
        let value = format!("{}:{unix_now}", hex(&secret));
        let () = redis::cmd("SET").arg(&key).arg(value).arg("NX").query_async::<Option<()>>(conn).await?.unwrap_or(());
        stored = redis::cmd("GET").arg(&key).query_async(conn).await?;
    }
    let Some(parsed) = stored.as_deref().and_then(|v| parse_nonce_key(v, unix_now)) else {
        status.bad(1);
        return Ok(());
    };
    if current.as_ref() != Some(&parsed) {
        let since_origin = u32::try_from(unix_now - parsed.1).unwrap_or(u32::MAX);
        if control.send(Control::SetNonceKey { secret: parsed.0, since_origin }).await.is_ok() {
            info!("cluster: using the fleet's nonce key");
            *current = Some(parsed);
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `HEX32:ORIGIN`, with the origin not in the future (and not before 2020).
fn parse_nonce_key(value: &[u8], unix_now: u64) -> Option<([u8; 32], u64)> {
    let text = std::str::from_utf8(value).ok()?;
    let (hex, origin) = text.split_once(':')?;
    let origin: u64 = origin.parse().ok()?;
    if hex.len() != 64 || origin > unix_now || origin < 1_577_836_800 {
        return None;
    }
    let mut secret = [0u8; 32];
    for (i, byte) in secret.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some((secret, origin))
}

/// The entries that parse, pass their checks and sit under their own id's key; and
/// how many did not (logged at debug: a fleet with one bad writer would flood).
fn parse_all(settings: &Settings, raw: Vec<(String, Option<Vec<u8>>)>) -> (Vec<NodeEntry>, usize) {
    let mut bad = 0;
    let entries = raw
        .into_iter()
        .filter_map(|(key, value)| {
            let value = value?; // expired between SCAN and MGET
            match parse_entry(&value) {
                Ok(entry) if key == settings.key(&entry.id) => Some(entry),
                Ok(entry) => {
                    tracing::debug!(key = %key, id = %entry.id, "cluster: entry under another node's key ignored");
                    bad += 1;
                    None
                }
                Err(e) => {
                    tracing::debug!(key = %key, error = %e, "cluster: bad registry entry ignored");
                    bad += 1;
                    None
                }
            }
        })
        .collect();
    (entries, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nonce_key_is_checked_before_use() {
        let now = 1_800_000_000;
        let good = format!("{}:1700000000", "ab".repeat(32));
        assert_eq!(parse_nonce_key(good.as_bytes(), now), Some(([0xab; 32], 1_700_000_000)));
        for bad in [
            format!("{}:1700000000", "ab".repeat(31)),
            format!("{}:1900000000", "ab".repeat(32)),
            format!("{}:100", "ab".repeat(32)),
            format!("{}:1700000000", "zz".repeat(32)),
            "junk".to_owned(),
        ] {
            assert_eq!(parse_nonce_key(bad.as_bytes(), now), None, "{bad}");
        }
        assert_eq!(hex(&[0x01, 0xff]), "01ff");
    }

    #[test]
    fn cpu_use_is_cpu_time_over_wall_time_in_thousandths_of_a_core() {
        let start = Instant::now();
        let mut cpu = CpuUse::default();
        assert_eq!(cpu.sample(Some(Duration::from_secs(10)), start), None, "no interval yet");
        let later = start + Duration::from_secs(2);
        assert_eq!(cpu.sample(Some(Duration::from_millis(10_500)), later), Some(250));
        let two_cores = later + Duration::from_secs(1);
        assert_eq!(cpu.sample(Some(Duration::from_millis(12_500)), two_cores), Some(2000));
        assert_eq!(cpu.sample(None, two_cores + Duration::from_secs(1)), None);
    }
}
