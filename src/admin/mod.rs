//! The admin plane: one HTTP listener serving `/metrics` (Prometheus), `/healthz`,
//! `/readyz`, `/ws` (live stats, events and admin actions over a WebSocket) and a
//! dashboard at `/`.
//!
//! It runs on a thread and a tokio runtime of its own, so nothing it does (rendering
//! metrics, serialising JSON, a flood of requests) can take time from the event loop.
//! It talks to the loop only through the loop's [`Publisher`] (a watch channel of
//! snapshots, a broadcast channel of events; neither ever blocks the sender) and the
//! bounded control channel, which it uses with `try_send` and a reply timeout.
//!
//! What no client can take from the others:
//!
//! - **Connections**: `admin.max-connections` (16) in all, `admin.max-connections-per-source`
//!   (8) from one source (an address masked to the `[limits]` prefix), and beyond those a
//!   small reserve that answers only `/healthz`, `/readyz` and `/metrics` and that
//!   half-sent requests cannot hold (`admission`).
//! - **Time**: 10 s for each request head on an ordinary connection, 2 s (and 5 s in
//!   all) on a reserve one (`server`); a WebSocket that has sent no request for 30 s
//!   and has not subscribed to anything is closed (`ws`).
//! - **Frames**: 20 WebSocket frames a second of any kind (text, binary, ping, pong)
//!   before the client is dropped (`ws`).

mod access;
mod admission;
mod hub;
mod protocol;
mod routes;
mod server;
mod ws;

use crate::config;
use crate::metrics::{AdminCounters, Metrics, MetricsError};
use crate::net::{Control, Publisher, Snapshot};
use crate::turn::source::SourcePrefix;
use access::Access;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// Why the admin listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The address could not be bound (in use, not local, no permission).
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The configured address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The admin thread or its runtime could not be created.
    #[error("cannot start the admin thread: {0}")]
    Runtime(std::io::Error),
    /// The metrics registry refused a definition (a bug).
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

/// What every request handler shares.
struct State {
    /// Who may see what.
    access: Access,
    /// The `/metrics` registry.
    metrics: Metrics,
    /// The admin plane's own counters (also exported as metrics).
    counters: Arc<AdminCounters>,
    /// The loop's latest snapshot (for `/readyz`).
    snapshots: watch::Receiver<Snapshot>,
    /// Serialised stats and events, shared by every WebSocket client.
    hub: hub::Feeds,
    /// Requests to the event loop.
    control: mpsc::Sender<Control>,
    /// How long a WebSocket that sends nothing and subscribed to nothing is kept.
    ws_idle: Duration,
    /// The cluster task's state (for `/readyz`).
    cluster: Arc<crate::cluster::ClusterStatus>,
}

/// A running admin listener. Dropping it stops the admin thread's accept loop.
#[derive(Debug)]
pub struct AdminHandle {
    local: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AdminHandle {
    /// The address the listener is bound to (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for AdminHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            // The accept loop exits on `stop`; open connections end with the runtime.
            let _ = thread.join();
        }
    }
}

/// [`spawn_with_sources`] with the default source prefixes (/32 for IPv4, /64 for
/// IPv6) for `admin.max-connections-per-source`.
pub fn spawn(
    settings: &config::Admin,
    publisher: &Publisher,
    control: mpsc::Sender<Control>,
) -> Result<AdminHandle, AdminError> {
    spawn_with_sources(settings, SourcePrefix::default(), publisher, control)
}

/// Binds the admin listener and starts serving it on a thread of its own. Binding
/// happens here, synchronously, so a taken address is an error the caller reports.
/// `sources` groups client addresses for `admin.max-connections-per-source` (pass
/// `config.limits.sources()`).
pub fn spawn_with_sources(
    settings: &config::Admin,
    sources: SourcePrefix,
    publisher: &Publisher,
    control: mpsc::Sender<Control>,
) -> Result<AdminHandle, AdminError> {
    spawn_on(bind(settings)?, settings, sources, publisher, control)
}

/// Binds the admin listener at `admin.address`.
pub fn bind(settings: &config::Admin) -> Result<std::net::TcpListener, AdminError> {
    let address = settings.address;
    std::net::TcpListener::bind(address).map_err(|source| AdminError::Bind { address, source })
}

/// [`spawn_with_sources`] on a listener already bound (by [`bind`], or handed over by
/// the turnd this one replaces in a live upgrade).
pub fn spawn_on(
    listener: std::net::TcpListener,
    settings: &config::Admin,
    sources: SourcePrefix,
    publisher: &Publisher,
    control: mpsc::Sender<Control>,
) -> Result<AdminHandle, AdminError> {
    let address = settings.address;
    let bind_error = |source| AdminError::Bind { address, source };
    listener.set_nonblocking(true).map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;
    let counters = Arc::new(AdminCounters::default());
    let snapshots = publisher.snapshots.subscribe();
    // Subscribe now, before the loop runs, so no early event is missed.
    let events = publisher.events.subscribe();
    let metrics = Metrics::new(snapshots.clone(), counters.clone(), publisher.cluster.clone())?;
    let cluster = publisher.cluster.clone();
    let access = Access::new(local, settings.token.as_deref(), settings.metrics_require_token);
    if !access.open_read() && settings.token.is_none() {
        tracing::warn!(%local, "admin listener is not on loopback and has no token: only /healthz, /readyz and /metrics are served");
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(AdminError::Runtime)?;
    let (stop, stopped) = oneshot::channel();
    let admission = admission::Admission::new(
        settings.max_connections,
        settings.max_connections_per_source,
        sources,
        counters.clone(),
    );
    let ws_idle = ws::idle_timeout();
    let thread = std::thread::Builder::new()
        .name("turnd-admin".into())
        .spawn(move || {
            runtime.block_on(async move {
                let feeds = hub::start(snapshots.clone(), events, control.clone(), counters.clone());
                let state =
                    Arc::new(State { access, metrics, counters, snapshots, hub: feeds, control, ws_idle, cluster });
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => server::serve(listener, state, admission, stopped).await,
                    Err(e) => tracing::error!(error = %e, "admin listener unusable"),
                }
            })
        })
        .map_err(AdminError::Runtime)?;
    Ok(AdminHandle { local, stop: Some(stop), thread: Some(thread) })
}
