//! The authentication webhook's lookup service: one per process, shared by the
//! workers. A worker's core asks for a user ([`crate::turn::Output::LookupUser`]); the
//! event loop passes the request here over a bounded channel; the service answers
//! from its cache, joins a lookup already in flight for that (realm, user), or starts
//! one (at most `concurrency` at once, a bounded number waiting), and sends the
//! [`LookupResult`] back to every worker that asked.
//!
//! Nothing here can hold a worker: the workers only `try_send` to the service and
//! poll its answers in their loop; a slow, failing or hostile endpoint costs at most
//! `timeout` per lookup, `concurrency` connections, 64 KiB (`http::MAX_ANSWER`) per
//! answer, and a bounded cache and in-flight table.

mod answer;
mod http;

pub use answer::{parse as parse_answer, InvalidAnswer};

use crate::config::{Webhook, SYSTEM_CA_FILE};
use crate::turn::lookup::{LookupOutcome, LookupResult, UserKey, UserRecord};
use crate::turn::ttl_cache::TtlCache;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;
use tracing::{debug, warn};

/// Lookup requests queued from the workers to the service.
const REQUEST_QUEUE: usize = 1024;
/// Answers queued from the service to one worker.
const RESULT_QUEUE: usize = 1024;
/// A failed lookup (error, timeout, invalid answer) is remembered this long, so that a
/// broken endpoint is asked at most about once a second per user, and a fixed one is
/// used again about a second later.
pub const ERROR_TTL: Duration = Duration::from_secs(1);
/// Lookups in flight or waiting for a slot, as a multiple of `concurrency`; past it a
/// new lookup fails at once as overloaded.
const QUEUE_FACTOR: usize = 4;

/// The webhook's settings as the service uses them.
#[derive(Clone)]
pub struct Settings {
    uri: hyper::Uri,
    token: Option<String>,
    /// `None` for plain http.
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
    concurrency: usize,
    cache_ttl: Duration,
    negative_ttl: Duration,
    cache_size: usize,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings").field("uri", &self.uri).field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

/// Why the webhook settings could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A value the config validation should have refused.
    #[error("auth.webhook.{0}: {1}")]
    Invalid(&'static str, String),
    /// The CA bundle could not be read.
    #[error("auth.webhook.ca-file: {path}: {reason}")]
    Ca {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

impl Settings {
    /// Settings from `[auth.webhook]`: the URL, the token read now, the CA bundle
    /// loaded now (`ca-file`, else the system's).
    pub fn from_config(w: &Webhook) -> Result<Settings, SettingsError> {
        let uri = w.uri().map_err(|m| SettingsError::Invalid("url", m))?;
        let token = w.token().map_err(|(_, m)| SettingsError::Invalid("token-file", m))?;
        let tls = if uri.scheme_str() == Some("https") {
            let path = w.ca_file.clone().unwrap_or_else(|| SYSTEM_CA_FILE.into());
            let ca = |reason: String| SettingsError::Ca { path: path.display().to_string(), reason };
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(&path).map_err(|e| ca(e.to_string()))? {
                roots.add(cert.map_err(|e| ca(e.to_string()))?).map_err(|e| ca(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(ca("no CA certificate found".into()));
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| ca(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Some(Arc::new(config))
        } else {
            None
        };
        Ok(Settings {
            uri,
            token,
            tls,
            timeout: w.timeout,
            concurrency: w.concurrency,
            cache_ttl: w.cache_ttl,
            negative_ttl: w.negative_ttl,
            cache_size: w.cache_size,
        })
    }
}

/// A worker's request: look up `username` in `realm`, answer to worker `worker`.
#[derive(Debug)]
pub struct LookupRequest {
    /// The asking worker's index.
    pub worker: usize,
    /// The realm.
    pub realm: String,
    /// The username.
    pub username: String,
}

/// A worker's end of the service.
#[derive(Debug)]
pub struct WorkerLookups {
    /// This worker's index.
    pub worker: usize,
    /// Where requests go.
    pub requests: mpsc::Sender<LookupRequest>,
    /// Where answers come from.
    pub results: mpsc::Receiver<LookupResult>,
}

/// The process's handle on the service: swaps its settings on reload.
#[derive(Debug)]
pub struct Service {
    settings: watch::Sender<Option<Settings>>,
}

impl Service {
    /// Applies reloaded settings (`None`: the webhook is now off). The service's
    /// cache is flushed, as every worker's is by the core's reconfigure.
    pub fn reconfigure(&self, settings: Option<Settings>) {
        self.settings.send_replace(settings);
    }
}

/// Starts the service on the current tokio runtime for `workers` workers; returns its
/// handle and each worker's end.
pub fn start(settings: Option<Settings>, workers: usize) -> (Service, Vec<WorkerLookups>) {
    let (request_tx, requests) = mpsc::channel(REQUEST_QUEUE);
    let (settings_tx, settings_rx) = watch::channel(settings);
    let mut ends = Vec::with_capacity(workers);
    let mut answer_to = Vec::with_capacity(workers);
    for worker in 0..workers {
        let (tx, results) = mpsc::channel(RESULT_QUEUE);
        answer_to.push(tx);
        ends.push(WorkerLookups { worker, requests: request_tx.clone(), results });
    }
    tokio::spawn(run(requests, settings_rx, answer_to));
    (Service { settings: settings_tx }, ends)
}

/// The result label of a lookup, for `turnd_webhook_lookups_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupKind {
    /// 200 with a valid answer.
    Found,
    /// 404.
    NotFound,
    /// Any other status, or a transport error.
    Error,
    /// No answer within `timeout`.
    Timeout,
    /// A 200 whose body was refused (garbage, too large, out of range).
    Invalid,
    /// Too many lookups in flight or waiting: not asked.
    Overloaded,
}

impl LookupKind {
    /// Every kind, in index order.
    pub const ALL: [LookupKind; 6] = [
        LookupKind::Found,
        LookupKind::NotFound,
        LookupKind::Error,
        LookupKind::Timeout,
        LookupKind::Invalid,
        LookupKind::Overloaded,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            LookupKind::Found => "found",
            LookupKind::NotFound => "not_found",
            LookupKind::Error => "error",
            LookupKind::Timeout => "timeout",
            LookupKind::Invalid => "invalid",
            LookupKind::Overloaded => "overloaded",
        }
    }
}

/// Upper bounds of the lookup latency histogram, seconds.
pub const LATENCY_BOUNDS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// Process-wide counters (atomics: they change per lookup, never per packet).
struct Counters {
    lookups: [AtomicU64; 6],
    cache_hits: AtomicU64,
    latency: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    latency_sum_micros: AtomicU64,
}

static COUNTERS: Counters = Counters {
    lookups: [const { AtomicU64::new(0) }; 6],
    cache_hits: AtomicU64::new(0),
    latency: [const { AtomicU64::new(0) }; LATENCY_BOUNDS.len() + 1],
    latency_sum_micros: AtomicU64::new(0),
};

/// What the counters say, for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct CountersSnapshot {
    /// Lookups by [`LookupKind`] index.
    pub lookups: [u64; 6],
    /// Requests answered from the service's cache.
    pub cache_hits: u64,
    /// Latency of the lookups that asked the endpoint.
    pub latency: crate::net::report::Histogram<{ LATENCY_BOUNDS.len() + 1 }>,
}

/// The counters now.
pub fn counters() -> CountersSnapshot {
    let mut latency = crate::net::report::Histogram::default();
    for (slot, n) in latency.counts.iter_mut().zip(&COUNTERS.latency) {
        *slot = n.load(Ordering::Relaxed);
    }
    latency.count = latency.counts.iter().sum();
    latency.sum = COUNTERS.latency_sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
    CountersSnapshot {
        lookups: std::array::from_fn(|i| COUNTERS.lookups[i].load(Ordering::Relaxed)),
        cache_hits: COUNTERS.cache_hits.load(Ordering::Relaxed),
        latency,
    }
}

/// Counts a lookup a worker could not even queue (the service's queue was full).
pub(crate) fn count_overloaded() {
    count(LookupKind::Overloaded);
}

fn count(kind: LookupKind) {
    COUNTERS.lookups[kind as usize].fetch_add(1, Ordering::Relaxed);
}

fn observe(elapsed: Duration) {
    let seconds = elapsed.as_secs_f64();
    let slot = LATENCY_BOUNDS.iter().position(|&b| seconds <= b).unwrap_or(LATENCY_BOUNDS.len());
    COUNTERS.latency[slot].fetch_add(1, Ordering::Relaxed);
    COUNTERS.latency_sum_micros.fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
}

/// What the service caches for a user: found (`Some(Some(record))`), not found
/// (`None`), or failed (`Some(None)`, kept [`ERROR_TTL`]).
type Found = Option<Option<UserRecord>>;

/// The service's state, owned by its one task.
struct State {
    settings: Option<Settings>,
    semaphore: Arc<Semaphore>,
    cache: TtlCache<UserKey, Found>,
    /// Lookups in flight: the workers waiting for each (at most one entry per worker).
    in_flight: HashMap<UserKey, (String, String, Vec<usize>)>,
    answer_to: Vec<mpsc::Sender<LookupResult>>,
}

async fn run(
    mut requests: mpsc::Receiver<LookupRequest>,
    mut settings: watch::Receiver<Option<Settings>>,
    answer_to: Vec<mpsc::Sender<LookupResult>>,
) {
    let initial = settings.borrow_and_update().clone();
    let mut state = State {
        semaphore: Arc::new(Semaphore::new(initial.as_ref().map_or(1, |s| s.concurrency))),
        cache: TtlCache::new(initial.as_ref().map_or(0, |s| s.cache_size)),
        settings: initial,
        in_flight: HashMap::new(),
        answer_to,
    };
    // Finished lookups come back here; bounded by the in-flight table's own bound.
    let (done_tx, mut done) = mpsc::unbounded_channel::<(UserKey, Found, Duration)>();
    loop {
        tokio::select! {
            request = requests.recv() => match request {
                Some(request) => state.request(request, &done_tx),
                None => return,
            },
            Some((key, found, ttl)) = done.recv() => state.finished(key, found, ttl),
            changed = settings.changed() => {
                if changed.is_err() {
                    return;
                }
                let next = settings.borrow_and_update().clone();
                state.semaphore = Arc::new(Semaphore::new(next.as_ref().map_or(1, |s| s.concurrency)));
                state.cache.set_capacity(next.as_ref().map_or(0, |s| s.cache_size));
                state.cache.clear();
                state.settings = next;
            }
        }
    }
}

impl State {
    fn request(&mut self, request: LookupRequest, done: &mpsc::UnboundedSender<(UserKey, Found, Duration)>) {
        let key = UserKey::new(&request.realm, &request.username);
        let Some(settings) = self.settings.clone() else {
            // The webhook was turned off by a reload while the core still asked.
            self.answer(request.worker, request.realm, request.username, LookupOutcome::Failed);
            return;
        };
        if let Some((found, left)) = self.cache.get(&key, std::time::Instant::now()) {
            COUNTERS.cache_hits.fetch_add(1, Ordering::Relaxed);
            self.answer(request.worker, request.realm, request.username, outcome(found, left));
            return;
        }
        if let Some((_, _, waiting)) = self.in_flight.get_mut(&key) {
            if !waiting.contains(&request.worker) {
                waiting.push(request.worker);
            }
            return;
        }
        if self.in_flight.len() >= settings.concurrency * QUEUE_FACTOR {
            count(LookupKind::Overloaded);
            self.answer(request.worker, request.realm, request.username, LookupOutcome::Failed);
            return;
        }
        self.in_flight.insert(key.clone(), (request.realm.clone(), request.username.clone(), vec![request.worker]));
        let (semaphore, done) = (self.semaphore.clone(), done.clone());
        tokio::spawn(async move {
            let (found, ttl) = lookup(&settings, &semaphore, &request.realm, &request.username).await;
            let _ = done.send((key, found, ttl));
        });
    }

    /// A lookup finished: cache it and answer every worker that waited.
    fn finished(&mut self, key: UserKey, found: Found, ttl: Duration) {
        let Some((realm, username, waiting)) = self.in_flight.remove(&key) else {
            return;
        };
        if !ttl.is_zero() {
            self.cache.insert(key, found, ttl, std::time::Instant::now());
        }
        let outcome = outcome(found, ttl);
        for worker in waiting {
            self.answer(worker, realm.clone(), username.clone(), outcome);
        }
    }

    fn answer(&self, worker: usize, realm: String, username: String, outcome: LookupOutcome) {
        if let Some(to) = self.answer_to.get(worker) {
            // A full queue: the worker's core answers the parked requests 500 when
            // their wait runs out.
            if to.try_send(LookupResult { realm, username, outcome }).is_err() {
                debug!(worker, "lookup answer dropped: the worker's queue is full");
            }
        }
    }
}

/// The core's view of a cached answer with `ttl` left. A remembered failure is a
/// failure: the core keeps nothing of it.
fn outcome(found: Found, ttl: Duration) -> LookupOutcome {
    match found {
        Some(Some(record)) => LookupOutcome::Found { record, ttl },
        None => LookupOutcome::NotFound { ttl },
        Some(None) => LookupOutcome::Failed,
    }
}

/// One lookup, within `timeout` from now (waiting for a slot included): what it found
/// (`Some(None)`: failed) and how long that may be cached.
async fn lookup(settings: &Settings, semaphore: &Semaphore, realm: &str, username: &str) -> (Found, Duration) {
    let deadline = Instant::now() + settings.timeout;
    let failed = (Some(None), ERROR_TTL);
    let Ok(Ok(_permit)) = tokio::time::timeout_at(deadline, semaphore.acquire()).await else {
        count(LookupKind::Overloaded);
        return (Some(None), Duration::ZERO);
    };
    let started = Instant::now();
    let body = serde_json::json!({ "realm": realm, "username": username }).to_string().into_bytes();
    let exchange = tokio::time::timeout_at(deadline, http::post(settings, body)).await;
    observe(started.elapsed());
    let (status, answer) = match exchange {
        Err(_) => {
            count(LookupKind::Timeout);
            warn!(timeout = ?settings.timeout, "authentication webhook: no answer in time");
            return failed;
        }
        Ok(Err(http::ExchangeError::TooLarge)) => {
            count(LookupKind::Invalid);
            warn!(limit = http::MAX_ANSWER, "authentication webhook: answer too large, refused");
            return failed;
        }
        Ok(Err(e)) => {
            count(LookupKind::Error);
            warn!(error = %e, "authentication webhook: request failed");
            return failed;
        }
        Ok(Ok(answer)) => answer,
    };
    match status.as_u16() {
        200 => match answer::parse(&answer, realm, username, settings.cache_ttl) {
            Ok((record, ttl)) => {
                count(LookupKind::Found);
                (Some(Some(record)), ttl)
            }
            Err(e) => {
                count(LookupKind::Invalid);
                warn!(error = %e, "authentication webhook: invalid answer, refused");
                failed
            }
        },
        404 => {
            count(LookupKind::NotFound);
            (None, settings.negative_ttl)
        }
        status => {
            count(LookupKind::Error);
            warn!(status, "authentication webhook: unexpected status");
            failed
        }
    }
}
