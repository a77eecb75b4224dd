//! The usage task: records from the event channel to the sinks.

use super::record::UsageRecord;
use crate::net::report::Snapshot;
use crate::turn::Event;
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, watch};
use tracing::warn;

/// Records held for a sink that is away; older ones are dropped past this.
pub const MAX_PENDING: usize = 10_000;
/// How often waiting records go to Redis, and the most one round sends.
const FLUSH_EVERY: Duration = Duration::from_millis(200);
const FLUSH_BATCH: usize = 500;
/// How long one round with Redis may take.
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);

/// Where records go.
#[derive(Debug, Clone)]
pub struct UsageSinks {
    /// This node's id (in each record).
    pub node: String,
    /// The Redis stream: client, key, approximate MAXLEN.
    pub redis: Option<(redis::Client, String, u64)>,
    /// The JSON-lines file (appended to).
    pub file: Option<PathBuf>,
    /// Each tenant's realm at start (the snapshots name tenants a reload adds, but
    /// only from their first publish, a second after start).
    pub realms: Vec<(crate::turn::TenantId, String)>,
}

/// What became of the records (exported as metrics).
#[derive(Debug, Default)]
pub struct UsageCounters {
    /// Records added to the Redis stream.
    pub written_redis: AtomicU64,
    /// Records appended to the file.
    pub written_file: AtomicU64,
    /// Records lost: queue full, file not writable, or events the task missed.
    pub dropped: AtomicU64,
}

/// Starts the usage task on the current runtime, if any sink is configured.
pub fn spawn(
    sinks: UsageSinks,
    events: broadcast::Receiver<Event>,
    snapshots: watch::Receiver<Snapshot>,
    counters: Arc<UsageCounters>,
) -> Option<tokio::task::JoinHandle<()>> {
    (sinks.redis.is_some() || sinks.file.is_some()).then(|| tokio::spawn(run(sinks, events, snapshots, counters)))
}

async fn run(
    sinks: UsageSinks,
    mut events: broadcast::Receiver<Event>,
    snapshots: watch::Receiver<Snapshot>,
    counters: Arc<UsageCounters>,
) {
    let mut file = FileSink { path: sinks.file.clone(), file: None, warned: false };
    let mut pending: VecDeque<String> = VecDeque::new();
    let mut connection: Option<MultiplexedConnection> = None;
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            received = events.recv() => match received {
                Ok(event) => {
                    let end_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
                    let realm_of = |tenant| {
                        let published = snapshots.borrow().realms.iter().find(|r| r.tenant == tenant).map(|r| r.realm.clone());
                        published.or_else(|| sinks.realms.iter().find(|(t, _)| *t == tenant).map(|(_, r)| r.clone()))
                    };
                    let Some(record) = UsageRecord::of(&event, &sinks.node, end_ms, realm_of) else { continue };
                    let Ok(json) = serde_json::to_string(&record) else { continue };
                    if file.path.is_some() {
                        if file.append(&json) {
                            counters.written_file.fetch_add(1, Ordering::Relaxed);
                        } else {
                            counters.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if sinks.redis.is_some() {
                        if pending.len() >= MAX_PENDING {
                            pending.pop_front();
                            counters.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        pending.push_back(json);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    counters.dropped.fetch_add(missed, Ordering::Relaxed);
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = flush.tick(), if !pending.is_empty() => {
                if let Some((client, key, max_len)) = &sinks.redis {
                    let batch = pending.len().min(FLUSH_BATCH);
                    let sent = tokio::time::timeout(REDIS_TIMEOUT, xadd(client, &mut connection, key, *max_len, pending.range(..batch))).await;
                    match sent {
                        Ok(Ok(())) => {
                            pending.drain(..batch);
                            counters.written_redis.fetch_add(batch as u64, Ordering::Relaxed);
                        }
                        _ => connection = None, // kept, and tried again at the next tick
                    }
                }
            }
        }
    }
}

/// Adds `records` to the stream in one pipeline, trimming it to about `max_len`.
async fn xadd<'a>(
    client: &redis::Client,
    connection: &mut Option<MultiplexedConnection>,
    key: &str,
    max_len: u64,
    records: impl Iterator<Item = &'a String>,
) -> redis::RedisResult<()> {
    let conn = match connection {
        Some(conn) => conn,
        None => {
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(REDIS_TIMEOUT))
                .set_response_timeout(Some(REDIS_TIMEOUT));
            connection.insert(client.get_multiplexed_async_connection_with_config(&config).await?)
        }
    };
    let mut pipe = redis::pipe();
    for record in records {
        pipe.cmd("XADD").arg(key).arg("MAXLEN").arg("~").arg(max_len).arg("*").arg("record").arg(record).ignore();
    }
    pipe.query_async::<()>(conn).await
}

/// The JSON-lines file, opened on first use and again after an error.
struct FileSink {
    path: Option<PathBuf>,
    file: Option<std::fs::File>,
    warned: bool,
}

impl FileSink {
    /// Appends one line; false if it could not be written. (A small blocking write
    /// on this task's thread, once per ended allocation.)
    fn append(&mut self, json: &str) -> bool {
        let Some(path) = &self.path else { return false };
        if self.file.is_none() {
            self.file = std::fs::OpenOptions::new().create(true).append(true).open(path).ok();
        }
        let written = self.file.as_mut().is_some_and(|f| writeln!(f, "{json}").is_ok());
        if !written {
            self.file = None;
            if !self.warned {
                warn!(path = %path.display(), "usage: cannot append to the usage file; records are dropped and counted");
                self.warned = true;
            }
        } else {
            self.warned = false;
        }
        written
    }
}
