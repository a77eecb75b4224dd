//! Every Prometheus metric turnd exports, declared in one place ([`DEFINITIONS`]).
//!
//! The event loop never touches Prometheus. Its core keeps plain per-worker counters
//! (an add on the relay path, no atomic, no lock); once a second the loop copies them
//! into a [`Snapshot`] on a watch channel. [`Metrics`] is a custom collector that turns
//! the latest snapshot into metric families when `/metrics` is scraped, so the cost of
//! Prometheus is paid per scrape, on the admin thread, and never per packet.
//!
//! Labels come from closed enums (method, result, code, reason, direction, transport):
//! never a username, an address or an allocation id.

mod process;

use crate::cluster::ClusterStatus;
use crate::net::report::{Histogram, Snapshot, LIFETIME_SECONDS_BOUNDS, REQUEST_SECONDS_BOUNDS};
use crate::turn::fleet::RedirectReason;
use crate::turn::stats::{AuthFailure, Direction, DropReason, MoveResult, RequestMethod, ERROR_CODES};
use crate::turn::Transport;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{Registry, TextEncoder};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Why metrics could not be set up or rendered.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The prometheus crate refused a descriptor or a family (a bug in [`DEFINITIONS`]).
    #[error("prometheus: {0}")]
    Prometheus(#[from] prometheus::Error),
}

/// One exported metric: its name, help text, type and label names.
#[derive(Debug, Clone, Copy)]
pub struct Definition {
    /// Full metric name.
    pub name: &'static str,
    /// The `# HELP` line.
    pub help: &'static str,
    /// Counter, gauge or histogram.
    pub kind: MetricType,
    /// Label names (values come from closed enums).
    pub labels: &'static [&'static str],
}

const fn def(name: &'static str, kind: MetricType, labels: &'static [&'static str], help: &'static str) -> Definition {
    Definition { name, help, kind, labels }
}

use MetricType::{COUNTER, GAUGE, HISTOGRAM};

/// Every metric, in the order `collect` emits its families (debug builds check it).
pub const DEFINITIONS: &[Definition] = &[
    def("turnd_build_info", GAUGE, &["version"], "Always 1; the version label says which turnd is running."),
    def(
        "turnd_requests_total",
        COUNTER,
        &["method", "result"],
        "STUN/TURN requests answered, by method and result (success or error).",
    ),
    def(
        "turnd_error_responses_total",
        COUNTER,
        &["code"],
        "Error responses sent, by STUN error code (\"other\" for codes not listed).",
    ),
    def("turnd_auth_failures_total", COUNTER, &["reason"], "Requests that failed authentication, by reason."),
    def("turnd_allocations", GAUGE, &[], "Allocations in force."),
    def("turnd_permissions", GAUGE, &[], "Live permissions over all allocations."),
    def("turnd_channels", GAUGE, &[], "Live channel bindings over all allocations."),
    def("turnd_tcp_connections", GAUGE, &[], "Open TCP and TLS client connections."),
    def(
        "turnd_tcp_connections_refused_total",
        COUNTER,
        &["reason"],
        "TCP and TLS connections refused at accept or cut, by reason (see [tcp] and [clients]).",
    ),
    def(
        "turnd_tls_passthrough_total",
        COUNTER,
        &[],
        "Connections a passthrough-to TLS listener handed, still encrypted, to its backend (not TURN).",
    ),
    def("turnd_allocations_created_total", COUNTER, &[], "Allocations created."),
    def("turnd_allocations_expired_total", COUNTER, &[], "Allocations that expired without a refresh."),
    def(
        "turnd_relayed_packets_total",
        COUNTER,
        &["direction", "transport"],
        "Datagrams relayed, by direction and client transport.",
    ),
    def(
        "turnd_relayed_bytes_total",
        COUNTER,
        &["direction", "transport"],
        "Payload bytes relayed, by direction and client transport.",
    ),
    def(
        "turnd_xdp_packets_total",
        COUNTER,
        &["direction"],
        "Datagrams the XDP fast path relayed (also counted in turnd_relayed_packets_total), by direction.",
    ),
    def(
        "turnd_xdp_bytes_total",
        COUNTER,
        &["direction"],
        "Payload bytes the XDP fast path relayed (also in turnd_relayed_bytes_total), by direction.",
    ),
    def("turnd_xdp_channels", GAUGE, &[], "Channel bindings the XDP fast path relays now ([relay] xdp)."),
    def(
        "turnd_dropped_packets_total",
        COUNTER,
        &["reason"],
        "Packets dropped without relaying or answering, by reason.",
    ),
    def(
        "turnd_icmp_relayed_total",
        COUNTER,
        &[],
        "ICMP errors from peers relayed to clients as Data indications (RFC 8656 section 11).",
    ),
    def(
        "turnd_mobility_moves_total",
        COUNTER,
        &["result"],
        "Refreshes with a MOBILITY-TICKET from a new client address (RFC 8016), by result.",
    ),
    def(
        "turnd_handovers_total",
        COUNTER,
        &["result"],
        "Live upgrades (turnd upgrade, SIGUSR2) by result: success (counted by the successor), refused or failed (counted by the process that stays).",
    ),
    def("turnd_handover_allocations_moved_total", COUNTER, &[], "UDP allocations this process took over in live upgrades."),
    def(
        "turnd_handover_gap_seconds",
        GAUGE,
        &[],
        "The last live upgrade's gap: from the predecessor freezing its UDP reads to this process serving.",
    ),
    def(
        "turnd_redirects_total",
        COUNTER,
        &["reason"],
        "Allocates sent to another node with 300 Try Alternate, by reason (draining, overloaded, front).",
    ),
    def("turnd_relay_ports_in_use", GAUGE, &[], "Relay ports held by allocations."),
    def("turnd_relay_ports_available", GAUGE, &[], "Relay ports still free in the configured range."),
    def("turnd_draining", GAUGE, &[], "1 while new allocations are refused before exit."),
    def("turnd_realm_allocations", GAUGE, &["realm"], "Allocations in force, by configured realm (tenant)."),
    def(
        "turnd_realm_auth_failures_total",
        COUNTER,
        &["realm"],
        "Requests that failed authentication, by configured realm (tenant).",
    ),
    def(
        "turnd_realm_relayed_bytes_total",
        COUNTER,
        &["realm"],
        "Payload bytes relayed (both directions), by configured realm (tenant).",
    ),
    def("turnd_allocation_lifetime_seconds", HISTOGRAM, &[], "How long ended allocations lived."),
    def("turnd_request_duration_seconds", HISTOGRAM, &[], "Time to handle one STUN request."),
    def("turnd_admin_connections", GAUGE, &[], "Open admin HTTP and WebSocket connections."),
    def("turnd_admin_connections_refused_total", COUNTER, &[], "Admin connections refused at the connection cap."),
    def("turnd_admin_unauthorized_total", COUNTER, &[], "Admin requests refused for a missing or wrong token."),
    def("turnd_admin_slow_clients_dropped_total", COUNTER, &[], "WebSocket clients dropped for not keeping up."),
    def(
        "turnd_webhook_lookups_total",
        COUNTER,
        &["result"],
        "Authentication webhook lookups, by result (found, not_found, error, timeout, invalid, overloaded).",
    ),
    def("turnd_webhook_cache_hits_total", COUNTER, &[], "Lookups answered from the webhook service's cache."),
    def(
        "turnd_webhook_lookup_duration_seconds",
        HISTOGRAM,
        &[],
        "Time the authentication webhook took to answer (or to fail).",
    ),
    def("turnd_cluster_redis_up", GAUGE, &[], "With [cluster]: 1 while the last exchange with Redis succeeded."),
    def(
        "turnd_cluster_nodes",
        GAUGE,
        &[],
        "With [cluster]: live nodes in the registry at the last read, this one included.",
    ),
    def(
        "turnd_cluster_bad_entries_total",
        COUNTER,
        &[],
        "With [cluster]: registry entries ignored because they did not parse or failed a check.",
    ),
    def(
        "turnd_cluster_redis_failures_total",
        COUNTER,
        &[],
        "With [cluster]: exchanges with Redis that failed or timed out.",
    ),
    def(
        "turnd_cluster_secrets",
        GAUGE,
        &[],
        "With [cluster] secrets-from-redis: REST secrets read from Redis in force (the last good set).",
    ),
    def(
        "turnd_cluster_secrets_rejected_total",
        COUNTER,
        &[],
        "With [cluster] secrets-from-redis: reads of the secrets key refused as bad data (the last good set kept).",
    ),
    def(
        "turnd_cluster_fleet_capped_users",
        GAUGE,
        &[],
        "With [cluster]: users whose bandwidth-per-user is shared with other nodes at the last read.",
    ),
    def(
        "turnd_cluster_revocations_subscribed",
        GAUGE,
        &[],
        "With [cluster]: 1 while the subscription to the fleet's revocation pushes is up.",
    ),
    def(
        "turnd_cluster_revocation_pushes_total",
        COUNTER,
        &["direction"],
        "With [cluster]: revocation changes pushed to the fleet (sent) and pushes from other nodes that woke a sync here (received).",
    ),
    def(
        "turnd_cluster_revocation_messages_rejected_total",
        COUNTER,
        &[],
        "With [cluster]: messages on the revocation channel ignored as malformed.",
    ),
    def(
        "turnd_usage_records_written_total",
        COUNTER,
        &["sink"],
        "Usage records (one per ended allocation) written, by sink (redis, file).",
    ),
    def(
        "turnd_usage_records_dropped_total",
        COUNTER,
        &[],
        "Usage records lost: the queue for an unreachable Redis was full, the file was not writable, or events were missed.",
    ),
    def(
        "turnd_udp_gso_refused_total",
        COUNTER,
        &[],
        "GSO sends the kernel refused (EIO or EINVAL); their datagrams went out one by one and GSO stays off for that socket.",
    ),
    def("process_cpu_seconds_total", COUNTER, &[], "User and system CPU time spent, seconds."),
    def("process_resident_memory_bytes", GAUGE, &[], "Resident memory size, bytes."),
    def("process_virtual_memory_bytes", GAUGE, &[], "Virtual memory size, bytes."),
    def("process_open_fds", GAUGE, &[], "Open file descriptors."),
    def("process_max_fds", GAUGE, &[], "The limit on open file descriptors."),
    def("process_start_time_seconds", GAUGE, &[], "Start time of the process, seconds since the Unix epoch."),
];

/// Counters the admin plane keeps about itself. Shared by the admin tasks (atomics:
/// these change per connection, not per packet).
#[derive(Debug, Default)]
pub struct AdminCounters {
    /// Open admin connections.
    pub connections: AtomicU64,
    /// Connections refused at the cap.
    pub refused: AtomicU64,
    /// Requests refused for a missing or wrong token.
    pub unauthorized: AtomicU64,
    /// WebSocket clients dropped for being slow.
    pub slow_clients_dropped: AtomicU64,
}

/// The collector: reads the latest snapshot at scrape time.
struct Collect {
    snapshots: watch::Receiver<Snapshot>,
    admin: Arc<AdminCounters>,
    cluster: Arc<ClusterStatus>,
    descs: Vec<Desc>,
}

/// A registry holding turnd's collector, ready to render `/metrics`.
pub struct Metrics {
    registry: Registry,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Metrics over the loop's `snapshots`, the admin plane's own counters and the
    /// cluster task's state.
    pub fn new(
        snapshots: watch::Receiver<Snapshot>,
        admin: Arc<AdminCounters>,
        cluster: Arc<ClusterStatus>,
    ) -> Result<Self, MetricsError> {
        let descs = DEFINITIONS
            .iter()
            .map(|d| {
                let labels = d.labels.iter().map(|l| (*l).to_owned()).collect();
                Desc::new(d.name.to_owned(), d.help.to_owned(), labels, HashMap::new())
            })
            .collect::<Result<_, _>>()?;
        let registry = Registry::new();
        registry.register(Box::new(Collect { snapshots, admin, cluster, descs }))?;
        Ok(Metrics { registry })
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Result<String, MetricsError> {
        Ok(TextEncoder::new().encode_to_string(&self.registry.gather())?)
    }
}

impl Collector for Collect {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        // Clone and let go at once: the borrow holds the watch's read lock, which the
        // loop's once-a-second publish must not wait on.
        let s = self.snapshots.borrow().clone();
        let stats = &s.stats;
        let mut out = Vec::with_capacity(DEFINITIONS.len());
        let mut push = |metrics: Vec<proto::Metric>| {
            let d = DEFINITIONS[out.len()];
            // Families are matched to definitions by position; labels catch a slip.
            debug_assert!(
                metrics.iter().all(|m| m.get_label().iter().map(|l| l.name()).eq(d.labels.iter().copied())),
                "{} pushed out of order",
                d.name
            );
            let mut family = MetricFamily::default();
            family.set_name(d.name.to_owned());
            family.set_help(d.help.to_owned());
            family.set_field_type(d.kind);
            family.set_metric(metrics);
            out.push(family);
        };
        push(vec![gauge(&[("version", env!("CARGO_PKG_VERSION"))], 1.0)]);
        push(
            RequestMethod::ALL
                .iter()
                .flat_map(|m| {
                    let [ok, err] = stats.requests[*m as usize];
                    [
                        counter(&[("method", m.label()), ("result", "success")], ok),
                        counter(&[("method", m.label()), ("result", "error")], err),
                    ]
                })
                .collect(),
        );
        let codes: Vec<String> = ERROR_CODES.iter().map(u16::to_string).chain(["other".to_owned()]).collect();
        push(codes.iter().zip(stats.errors).map(|(code, n)| counter(&[("code", code)], n)).collect());
        push(
            AuthFailure::ALL
                .iter()
                .map(|r| counter(&[("reason", r.label())], stats.auth_failures[*r as usize]))
                .collect(),
        );
        push(vec![gauge(&[], s.allocations as f64)]);
        push(vec![gauge(&[], s.permissions as f64)]);
        push(vec![gauge(&[], s.channels as f64)]);
        push(vec![gauge(&[], s.tcp_connections as f64)]);
        // Process-wide counters of the accept loops (not per worker).
        let c = crate::net::stream::counters();
        push(
            [
                ("max_connections", c.refused_max_connections),
                ("per_source", c.refused_per_source),
                ("unauthenticated_per_source", c.refused_unauthenticated),
                ("unauthenticated_timeout", c.cut_unauthenticated),
                ("write_timeout", c.cut_write_timeout),
                ("denied_client", c.refused_denied),
                ("untrusted_proxy", c.refused_untrusted_proxy),
                ("proxy_header", c.refused_proxy_header),
                ("client_hello", c.refused_client_hello),
                ("passthrough_backend", c.refused_passthrough_backend),
            ]
            .iter()
            .map(|(reason, n)| counter(&[("reason", reason)], *n))
            .collect(),
        );
        push(vec![counter(&[], c.passed_through)]);
        push(vec![counter(&[], stats.allocations_created)]);
        push(vec![counter(&[], stats.allocations_expired)]);
        push(by_direction_and_transport(&stats.relayed_packets));
        push(by_direction_and_transport(&stats.relayed_bytes));
        let x = crate::net::xdp::counters();
        push(Direction::ALL.iter().map(|d| counter(&[("direction", d.label())], x.packets[*d as usize])).collect());
        push(Direction::ALL.iter().map(|d| counter(&[("direction", d.label())], x.bytes[*d as usize])).collect());
        push(vec![gauge(&[], x.channels as f64)]);
        push(DropReason::ALL.iter().map(|r| counter(&[("reason", r.label())], stats.dropped(*r))).collect());
        push(vec![counter(&[], stats.icmp_relayed)]);
        push(
            MoveResult::ALL
                .iter()
                .map(|r| counter(&[("result", r.label())], stats.mobility_moves[*r as usize]))
                .collect(),
        );
        let h = crate::upgrade::counters::counters();
        push(
            crate::upgrade::counters::HandoverResult::ALL
                .iter()
                .map(|r| counter(&[("result", r.label())], h.results[*r as usize]))
                .collect(),
        );
        push(vec![counter(&[], h.allocations_moved)]);
        push(vec![gauge(&[], h.last_gap_micros as f64 / 1e6)]);
        push(
            RedirectReason::ALL
                .iter()
                .map(|r| counter(&[("reason", r.label())], stats.redirects[*r as usize]))
                .collect(),
        );
        push(vec![gauge(&[], s.ports_in_use as f64)]);
        push(vec![gauge(&[], s.ports_available as f64)]);
        push(vec![gauge(&[], if s.draining { 1.0 } else { 0.0 })]);
        // The realm label's values are the configured realms only (the snapshot lists
        // no other), never what a client sent.
        push(s.realms.iter().map(|r| gauge(&[("realm", &r.realm)], r.allocations as f64)).collect());
        push(s.realms.iter().map(|r| counter(&[("realm", &r.realm)], r.auth_failures)).collect());
        push(s.realms.iter().map(|r| counter(&[("realm", &r.realm)], r.relayed_bytes)).collect());
        push(vec![histogram(&s.allocation_lifetime_seconds, &LIFETIME_SECONDS_BOUNDS)]);
        push(vec![histogram(&s.request_seconds, &REQUEST_SECONDS_BOUNDS)]);
        let admin = &self.admin;
        push(vec![gauge(&[], admin.connections.load(Ordering::Relaxed) as f64)]);
        push(vec![counter(&[], admin.refused.load(Ordering::Relaxed))]);
        push(vec![counter(&[], admin.unauthorized.load(Ordering::Relaxed))]);
        push(vec![counter(&[], admin.slow_clients_dropped.load(Ordering::Relaxed))]);
        // Process-wide counters of the webhook's lookup service.
        let w = crate::net::webhook::counters();
        push(
            crate::net::webhook::LookupKind::ALL
                .iter()
                .map(|k| counter(&[("result", k.label())], w.lookups[*k as usize]))
                .collect(),
        );
        push(vec![counter(&[], w.cache_hits)]);
        push(vec![histogram(&w.latency, &crate::net::webhook::LATENCY_BOUNDS)]);
        // The cluster families are left out without [cluster].
        let c = &self.cluster;
        let configured = c.configured();
        push(configured.then(|| gauge(&[], if c.redis_up() { 1.0 } else { 0.0 })).into_iter().collect());
        push(configured.then(|| gauge(&[], c.nodes() as f64)).into_iter().collect());
        push(configured.then(|| counter(&[], c.bad_entries())).into_iter().collect());
        push(configured.then(|| counter(&[], c.failures())).into_iter().collect());
        push(configured.then(|| gauge(&[], c.secrets() as f64)).into_iter().collect());
        push(configured.then(|| counter(&[], c.secrets_rejected())).into_iter().collect());
        push(configured.then(|| gauge(&[], c.capped_users() as f64)).into_iter().collect());
        push(configured.then(|| gauge(&[], if c.revocations_subscribed() { 1.0 } else { 0.0 })).into_iter().collect());
        push(if configured {
            vec![
                counter(&[("direction", "sent")], c.revocation_pushes_sent()),
                counter(&[("direction", "received")], c.revocation_pushes_received()),
            ]
        } else {
            Vec::new()
        });
        push(configured.then(|| counter(&[], c.revocation_messages_rejected())).into_iter().collect());
        let u = &c.usage;
        push(vec![
            counter(&[("sink", "redis")], u.written_redis.load(Ordering::Relaxed)),
            counter(&[("sink", "file")], u.written_file.load(Ordering::Relaxed)),
        ]);
        push(vec![counter(&[], u.dropped.load(Ordering::Relaxed))]);
        push(vec![counter(&[], crate::net::outbox_gso_refusals())]);
        // Off Linux (or with /proc hidden) the process families stay empty and the
        // registry leaves them out.
        let p = process::read();
        let mut push_opt = |value: Option<f64>, kind: MetricType| {
            push(value.map(|v| if kind == COUNTER { counter_f64(&[], v) } else { gauge(&[], v) }).into_iter().collect())
        };
        push_opt(p.cpu_seconds, COUNTER);
        push_opt(p.resident_bytes, GAUGE);
        push_opt(p.virtual_bytes, GAUGE);
        push_opt(p.open_fds, GAUGE);
        push_opt(p.max_fds, GAUGE);
        push_opt(p.start_time_seconds, GAUGE);
        debug_assert_eq!(out.len(), DEFINITIONS.len(), "one family per definition, in order");
        out
    }
}

fn by_direction_and_transport(values: &[[u64; 3]; 2]) -> Vec<proto::Metric> {
    Direction::ALL
        .iter()
        .flat_map(|d| {
            Transport::ALL.iter().map(move |t| {
                counter(&[("direction", d.label()), ("transport", t.label())], values[*d as usize][*t as usize])
            })
        })
        .collect()
}

fn metric(labels: &[(&str, &str)]) -> proto::Metric {
    proto::Metric::from_label(
        labels
            .iter()
            .map(|(name, value)| {
                let mut pair = proto::LabelPair::default();
                pair.set_name((*name).to_owned());
                pair.set_value((*value).to_owned());
                pair
            })
            .collect(),
    )
}

fn counter(labels: &[(&str, &str)], value: u64) -> proto::Metric {
    counter_f64(labels, value as f64)
}

fn counter_f64(labels: &[(&str, &str)], value: f64) -> proto::Metric {
    let mut m = metric(labels);
    let mut c = proto::Counter::default();
    c.set_value(value);
    m.set_counter(c);
    m
}

fn gauge(labels: &[(&str, &str)], value: f64) -> proto::Metric {
    let mut m = metric(labels);
    let mut g = proto::Gauge::default();
    g.set_value(value);
    m.set_gauge(g);
    m
}

/// The loop keeps per-bucket counts; Prometheus wants them cumulative.
fn histogram<const N: usize>(h: &Histogram<N>, bounds: &[f64]) -> proto::Metric {
    let mut cumulative = 0;
    let buckets = bounds
        .iter()
        .zip(h.counts)
        .map(|(bound, count)| {
            cumulative += count;
            let mut b = proto::Bucket::default();
            b.set_upper_bound(*bound);
            b.set_cumulative_count(cumulative);
            b
        })
        .collect();
    let mut p = proto::Histogram::default();
    p.set_bucket(buckets);
    // The encoder adds le="+Inf" from the total count.
    p.set_sample_count(h.count);
    p.set_sample_sum(h.sum);
    let mut m = metric(&[]);
    m.set_histogram(p);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(snapshot: Snapshot) -> String {
        render_with(snapshot, Arc::default())
    }

    fn render_with(snapshot: Snapshot, cluster: Arc<ClusterStatus>) -> String {
        let (tx, rx) = watch::channel(snapshot);
        let metrics = Metrics::new(rx, Arc::default(), cluster).unwrap();
        let text = metrics.render().unwrap();
        drop(tx);
        text
    }

    fn sample<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
    }

    #[test]
    fn every_definition_is_exported_with_help_and_type() {
        // Realm families have a series per configured realm, and there is always one.
        let realm = crate::net::report::RealmFigures {
            realm: "b.example".into(),
            allocations: 2,
            auth_failures: 3,
            relayed_bytes: 4,
            ..Default::default()
        };
        let cluster = Arc::new(ClusterStatus::default());
        cluster.set_configured();
        cluster.up(3);
        let text = render_with(Snapshot { realms: vec![realm], ..Snapshot::default() }, cluster);
        assert_eq!(sample(&text, "turnd_cluster_redis_up"), Some("1"));
        assert_eq!(sample(&text, "turnd_cluster_nodes"), Some("3"));
        assert!(!render(Snapshot::default()).contains("turnd_cluster_"), "no [cluster], no cluster metrics");
        assert_eq!(sample(&text, "turnd_realm_allocations{realm=\"b.example\"}"), Some("2"));
        assert_eq!(sample(&text, "turnd_realm_auth_failures_total{realm=\"b.example\"}"), Some("3"));
        assert_eq!(sample(&text, "turnd_realm_relayed_bytes_total{realm=\"b.example\"}"), Some("4"));
        for d in DEFINITIONS.iter().filter(|d| !d.name.starts_with("process_")) {
            assert!(text.contains(&format!("# HELP {} ", d.name)), "{} missing:\n{text}", d.name);
            assert!(text.contains(&format!("# TYPE {} ", d.name)), "{} missing:\n{text}", d.name);
        }
        assert_eq!(sample(&text, &format!("turnd_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"))), Some("1"));
    }

    #[test]
    fn counters_and_gauges_come_from_the_snapshot() {
        let mut s = Snapshot { allocations: 3, ports_available: 97, ports_in_use: 3, ..Snapshot::default() };
        s.stats.relay(Direction::PeerToClient, Transport::Udp, 100);
        s.stats.relay(Direction::PeerToClient, Transport::Udp, 50);
        s.stats.auth_failures[AuthFailure::StaleNonce as usize] = 4;
        s.stats.answer(stun_codec::rfc5766::methods::ALLOCATE, Some(486));
        let text = render(s);
        assert_eq!(sample(&text, "turnd_allocations"), Some("3"));
        assert_eq!(sample(&text, "turnd_relay_ports_available"), Some("97"));
        let bytes = "turnd_relayed_bytes_total{direction=\"peer_to_client\",transport=\"udp\"}";
        assert_eq!(sample(&text, bytes), Some("150"));
        assert_eq!(sample(&text, "turnd_auth_failures_total{reason=\"stale_nonce\"}"), Some("4"));
        assert_eq!(sample(&text, "turnd_requests_total{method=\"allocate\",result=\"error\"}"), Some("1"));
        assert_eq!(sample(&text, "turnd_error_responses_total{code=\"486\"}"), Some("1"));
    }

    #[test]
    fn histograms_are_exported_cumulative() {
        let mut s = Snapshot::default();
        for v in [0.5, 5.0, 5.0, 100_000.0] {
            s.allocation_lifetime_seconds.observe(&LIFETIME_SECONDS_BOUNDS, v);
        }
        let text = render(s);
        let bucket = |le: &str| sample(&text, &format!("turnd_allocation_lifetime_seconds_bucket{{le=\"{le}\"}}"));
        assert_eq!(bucket("1"), Some("1"));
        assert_eq!(bucket("10"), Some("3"));
        assert_eq!(bucket("86400"), Some("3"));
        assert_eq!(bucket("+Inf"), Some("4"));
        assert_eq!(sample(&text, "turnd_allocation_lifetime_seconds_count"), Some("4"));
    }

    #[test]
    fn process_metrics_are_read_on_linux() {
        if cfg!(target_os = "linux") {
            let text = render(Snapshot::default());
            let rss: f64 = sample(&text, "process_resident_memory_bytes").unwrap().parse().unwrap();
            assert!(rss > 0.0, "{text}");
            let fds: f64 = sample(&text, "process_open_fds").unwrap().parse().unwrap();
            assert!(fds >= 3.0, "{text}");
        }
    }
}
