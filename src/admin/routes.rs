//! HTTP routes: `/metrics`, `/healthz`, `/readyz`, the dashboard, and `/ws` (in
//! [`super::ws`]). Every handler starts with the access check for its resource.
//! Connections in the health reserve (see [`super::admission`]) get a router with the
//! first three only; anything else there is told that the admin plane is busy.

use super::access::{Grant, Refusal, Resource};
use super::{ws, State};
use crate::metrics::CONTENT_TYPE;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// The loop publishes every second; a snapshot older than this means it is stuck.
const STALE_SNAPSHOT_MS: u64 = 5_000;

const DASHBOARD_HTML: &str = include_str!("dashboard/index.html");
const DASHBOARD_JS: &str = include_str!("dashboard/app.js");
const DASHBOARD_CSS: &str = include_str!("dashboard/style.css");
/// Everything the dashboard loads comes from this server; the policy makes the browser
/// enforce that (no CDN, no inline script, no framing).
const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                             img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The admin router.
pub(crate) fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/", get(dashboard))
        .route("/dashboard.js", get(dashboard_js))
        .route("/dashboard.css", get(dashboard_css))
        .route("/ws", get(ws::upgrade))
        .with_state(state)
}

/// The router of the health reserve: the probes' and the scraper's paths, the same
/// handlers; everything else `503`.
pub(crate) fn reserve_router(state: Arc<State>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(busy)
        .with_state(state)
}

async fn busy(axum::extract::State(state): AppState) -> Response {
    state.counters.refused.fetch_add(1, Ordering::Relaxed);
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "busy: every admin connection is in use; only /healthz, /readyz and /metrics are answered\n",
    )
        .into_response()
}

type AppState = axum::extract::State<Arc<State>>;

impl State {
    /// Applies the access policy to a request (counting refusals).
    pub(crate) fn authorize(&self, resource: Resource, headers: &HeaderMap, uri: &Uri) -> Result<Grant, Refusal> {
        let header = |name| headers.get(name).map(HeaderValue::as_bytes);
        let decision = self.access.check(resource, header(header::AUTHORIZATION), header(header::HOST), uri.query());
        if decision == Err(Refusal::Unauthorized) {
            self.counters.unauthorized.fetch_add(1, Ordering::Relaxed);
        }
        decision
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer realm=\"turnd-admin\"")],
                "unauthorized: a valid bearer token is needed\n",
            )
                .into_response(),
            Refusal::ForeignHost => {
                (StatusCode::FORBIDDEN, "forbidden: use a loopback address or localhost\n").into_response()
            }
        }
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(axum::extract::State(state): AppState, headers: HeaderMap, uri: Uri) -> Response {
    let grant = match state.authorize(Resource::Readiness, &headers, &uri) {
        Ok(grant) => grant,
        Err(refused) => return refused.into_response(),
    };
    // Off loopback, the reason is for token holders; anyone may learn the verdict.
    let explain = state.access.open_read() || grant == Grant::Admin;
    let snapshot = state.snapshots.borrow().clone();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let problem = if snapshot.unix_ms == 0 {
        Some("the event loop has not started")
    } else if now.saturating_sub(snapshot.oldest_worker_ms) > STALE_SNAPSHOT_MS {
        Some("a worker's event loop has not reported for 5 s")
    } else if snapshot.draining {
        Some("draining")
    } else if snapshot.ports_available == 0 {
        Some("no relay ports available")
    } else {
        None
    };
    // Redis being away does not make the node unready: it relays and answers on
    // local limits (taking it out of service would only move its load elsewhere);
    // the body says so, for operators and probes that read it.
    let cluster = &state.cluster;
    let ready = match (cluster.configured(), cluster.redis_up()) {
        (false, _) => "ready\n".to_owned(),
        (true, true) => match cluster.cpu_millicores() {
            Some(cpu) => {
                format!(
                    "ready (cluster: redis up, {} nodes, cpu {}.{:03} cores)\n",
                    cluster.nodes(),
                    cpu / 1000,
                    cpu % 1000
                )
            }
            None => format!("ready (cluster: redis up, {} nodes)\n", cluster.nodes()),
        },
        (true, false) => "ready (cluster: redis unreachable, serving on local limits)\n".to_owned(),
    };
    match problem {
        None if explain => (StatusCode::OK, ready).into_response(),
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(why) if explain => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")).into_response(),
        Some(_) => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response(),
    }
}

async fn metrics(axum::extract::State(state): AppState, headers: HeaderMap, uri: Uri) -> Response {
    if let Err(refused) = state.authorize(Resource::Metrics, &headers, &uri) {
        return refused.into_response();
    }
    match state.metrics.render() {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering metrics failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "metrics unavailable\n").into_response()
        }
    }
}

async fn dashboard(state: AppState, headers: HeaderMap, uri: Uri) -> Response {
    asset(state, headers, uri, "text/html; charset=utf-8", DASHBOARD_HTML)
}

async fn dashboard_js(state: AppState, headers: HeaderMap, uri: Uri) -> Response {
    asset(state, headers, uri, "text/javascript; charset=utf-8", DASHBOARD_JS)
}

async fn dashboard_css(state: AppState, headers: HeaderMap, uri: Uri) -> Response {
    asset(state, headers, uri, "text/css; charset=utf-8", DASHBOARD_CSS)
}

fn asset(
    axum::extract::State(state): AppState,
    headers: HeaderMap,
    uri: Uri,
    content_type: &'static str,
    body: &'static str,
) -> Response {
    if let Err(refused) = state.authorize(Resource::ReadOnly, &headers, &uri) {
        return refused.into_response();
    }
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, DASHBOARD_CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}
