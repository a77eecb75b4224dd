//! Who may hold a TCP/TLS connection, decided at accept: the `[clients]` filter (denied
//! clients, trusted proxies), the process-wide and per-source caps (by
//! [`SourcePrefix`](crate::turn::source::SourcePrefix)), the claims that keep two
//! proxied connections from naming one client, and the counters `/metrics` reads.
//! The connection tasks themselves are in [`super::stream`].

use crate::turn::{FiveTuple, TenantId};
use arc_swap::ArcSwap;
use ipnet::IpNet;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tracing::debug;

/// Connections refused or cut by the limits, since the process started (all
/// listeners): [`counters`] reads them.
pub(super) static REFUSED_MAX_CONNECTIONS: AtomicU64 = AtomicU64::new(0);
pub(super) static REFUSED_PER_SOURCE: AtomicU64 = AtomicU64::new(0);
pub(super) static REFUSED_UNAUTHENTICATED: AtomicU64 = AtomicU64::new(0);
pub(super) static CUT_UNAUTHENTICATED: AtomicU64 = AtomicU64::new(0);
pub(super) static CUT_WRITE_TIMEOUT: AtomicU64 = AtomicU64::new(0);
pub(super) static REFUSED_DENIED: AtomicU64 = AtomicU64::new(0);
pub(super) static REFUSED_UNTRUSTED_PROXY: AtomicU64 = AtomicU64::new(0);
pub(super) static REFUSED_PROXY_HEADER: AtomicU64 = AtomicU64::new(0);
pub(super) static REFUSED_CLIENT_HELLO: AtomicU64 = AtomicU64::new(0);
pub(super) static REFUSED_PASSTHROUGH_BACKEND: AtomicU64 = AtomicU64::new(0);
/// Connections a passthrough listener handed to its backend.
pub(super) static PASSED_THROUGH: AtomicU64 = AtomicU64::new(0);

/// What the stream limits did, since the process started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamCounters {
    /// Refused at accept: `max_connections` reached.
    pub refused_max_connections: u64,
    /// Refused at accept: the source at `max_connections_per_source`.
    pub refused_per_source: u64,
    /// Refused at accept: the source at `max_unauthenticated_per_source`.
    pub refused_unauthenticated: u64,
    /// Closed: still unauthenticated `unauthenticated_timeout` after accept.
    pub cut_unauthenticated: u64,
    /// Closed: a write made no progress for `write_timeout`.
    pub cut_write_timeout: u64,
    /// Refused: the client is in `clients.denied` (at accept, or as named by a PROXY
    /// protocol header).
    pub refused_denied: u64,
    /// Refused at accept: a `proxy-protocol` listener, and the peer is not in
    /// `clients.trusted-proxies`.
    pub refused_untrusted_proxy: u64,
    /// Closed: no PROXY protocol header, or a malformed, truncated, too long or
    /// unsupported one, or none within `first_message_timeout`.
    pub refused_proxy_header: u64,
    /// Closed on a `passthrough-to` listener: no well-formed ClientHello within
    /// `first_message_timeout` (garbage, not TLS, too long, too slow).
    pub refused_client_hello: u64,
    /// Closed on a `passthrough-to` listener: not TURN, and the backend could not be
    /// reached.
    pub refused_passthrough_backend: u64,
    /// Connections a `passthrough-to` listener handed to its backend.
    pub passed_through: u64,
}

/// The limits' counters (for metrics).
pub fn counters() -> StreamCounters {
    StreamCounters {
        refused_max_connections: REFUSED_MAX_CONNECTIONS.load(Ordering::Relaxed),
        refused_per_source: REFUSED_PER_SOURCE.load(Ordering::Relaxed),
        refused_unauthenticated: REFUSED_UNAUTHENTICATED.load(Ordering::Relaxed),
        cut_unauthenticated: CUT_UNAUTHENTICATED.load(Ordering::Relaxed),
        cut_write_timeout: CUT_WRITE_TIMEOUT.load(Ordering::Relaxed),
        refused_denied: REFUSED_DENIED.load(Ordering::Relaxed),
        refused_untrusted_proxy: REFUSED_UNTRUSTED_PROXY.load(Ordering::Relaxed),
        refused_proxy_header: REFUSED_PROXY_HEADER.load(Ordering::Relaxed),
        refused_client_hello: REFUSED_CLIENT_HELLO.load(Ordering::Relaxed),
        refused_passthrough_backend: REFUSED_PASSTHROUGH_BACKEND.load(Ordering::Relaxed),
        passed_through: PASSED_THROUGH.load(Ordering::Relaxed),
    }
}

/// `[clients]` as the accept loops apply it: denied clients, and the proxies trusted
/// to send a PROXY protocol header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientFilter {
    denied: Vec<IpNet>,
    trusted_proxies: Vec<IpNet>,
}

impl ClientFilter {
    /// From `clients.denied` and `clients.trusted-proxies`.
    pub fn new(denied: Vec<IpNet>, trusted_proxies: Vec<IpNet>) -> ClientFilter {
        ClientFilter { denied, trusted_proxies }
    }

    /// Whether connections from `ip` are refused (IPv4-mapped addresses as IPv4).
    pub fn is_denied(&self, ip: IpAddr) -> bool {
        let ip = crate::turn::policy::canonical(ip);
        self.denied.iter().any(|net| net.contains(&ip))
    }

    /// Whether `ip` may send a PROXY protocol header.
    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        let ip = crate::turn::policy::canonical(ip);
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }
}

/// The filter every accept loop reads at each accept: [`set_client_filter`] replaces
/// it (at start, and on a reload), and the next connection sees the new one.
pub(super) static CLIENT_FILTER: LazyLock<ArcSwap<ClientFilter>> = LazyLock::new(ArcSwap::default);

/// Puts `filter` in force for connections accepted from now on (all listeners).
/// Connections already open are not closed here; the core drops what a client that
/// became denied sends on them.
pub fn set_client_filter(filter: ClientFilter) {
    CLIENT_FILTER.store(Arc::new(filter));
}

/// Tenants by TLS server name (`[[tenant]] server-names`, normalised): replaced at
/// start and on a reload, read once per TLS handshake.
static SERVER_NAMES: LazyLock<ArcSwap<HashMap<String, TenantId>>> = LazyLock::new(ArcSwap::default);

/// Puts the tenants' server names in force for TLS handshakes from now on.
pub fn set_tenant_server_names(names: Vec<(String, TenantId)>) {
    SERVER_NAMES.store(Arc::new(names.into_iter().collect()));
}

/// The tenant a TLS client's server name (SNI) chooses, if any.
pub(super) fn tenant_by_server_name(name: &str) -> Option<TenantId> {
    SERVER_NAMES.load().get(&crate::config::normalize_name(name)).copied()
}

/// The 5-tuples of open proxied connections. A proxy names the client, so two
/// connections could claim one 5-tuple (two proxies in front of one listener, or a
/// confused one); the event loop keys connections by it, so the second is refused.
pub(super) static PROXIED: LazyLock<Mutex<HashSet<FiveTuple>>> = LazyLock::new(Mutex::default);

/// A proxied connection's claim on its 5-tuple, given back on drop.
pub(super) struct ProxiedClaim(FiveTuple);

impl ProxiedClaim {
    pub(super) fn claim(five_tuple: FiveTuple) -> Option<ProxiedClaim> {
        let inserted = PROXIED.lock().unwrap_or_else(|e| e.into_inner()).insert(five_tuple);
        // Built only when inserted (and after the lock is released): dropping one
        // removes its 5-tuple.
        if inserted {
            Some(ProxiedClaim(five_tuple))
        } else {
            None
        }
    }
}

impl Drop for ProxiedClaim {
    fn drop(&mut self) {
        PROXIED.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.0);
    }
}

/// Live connections of one source.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct SourceCount {
    open: usize,
    unauthenticated: usize,
}

/// Which connection slots (the `max_connections` semaphore, by address) and which
/// source a count is for. Listeners that share their slots share their per-source
/// counts: a source's TCP and TLS connections count together.
type SourceKey = (usize, IpAddr);

/// Live connections by source. Only sources with a live connection are in it (an
/// entry goes with its last connection), so it is bounded by `max_connections`.
pub(super) static SOURCES: LazyLock<Mutex<HashMap<SourceKey, SourceCount>>> = LazyLock::new(Mutex::default);

pub(super) fn sources() -> std::sync::MutexGuard<'static, HashMap<SourceKey, SourceCount>> {
    SOURCES.lock().unwrap_or_else(|e| e.into_inner())
}

/// One connection's place in its source's counts, given back on drop.
#[derive(Debug)]
pub(super) struct SourceSlot {
    key: SourceKey,
    authenticated: AtomicBool,
}

/// Why a source's connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refused {
    PerSource,
    Unauthenticated,
}

impl SourceSlot {
    /// Counts a new (unauthenticated) connection from `source`, unless that source is
    /// at either cap.
    pub(super) fn admit(
        slots: &Arc<Semaphore>,
        source: IpAddr,
        limits: &StreamLimits,
    ) -> Result<Arc<SourceSlot>, Refused> {
        let key = (Arc::as_ptr(slots) as usize, limits.sources.key(source));
        let mut all = sources();
        let count = all.entry(key).or_default();
        let refused = if count.open >= limits.max_connections_per_source {
            Some(Refused::PerSource)
        } else if count.unauthenticated >= limits.max_unauthenticated_per_source {
            Some(Refused::Unauthenticated)
        } else {
            None
        };
        if let Some(refused) = refused {
            if count.open == 0 {
                all.remove(&key);
            }
            return Err(refused);
        }
        count.open += 1;
        count.unauthenticated += 1;
        Ok(Arc::new(SourceSlot { key, authenticated: AtomicBool::new(false) }))
    }

    pub(super) fn authenticate(&self) {
        if !self.authenticated.swap(true, Ordering::AcqRel) {
            if let Some(count) = sources().get_mut(&self.key) {
                count.unauthenticated = count.unauthenticated.saturating_sub(1);
            }
        }
    }

    pub(super) fn is_authenticated(&self) -> bool {
        self.authenticated.load(Ordering::Acquire)
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut all = sources();
        if let Some(count) = all.get_mut(&self.key) {
            count.open = count.open.saturating_sub(1);
            if !*self.authenticated.get_mut() {
                count.unauthenticated = count.unauthenticated.saturating_sub(1);
            }
            if count.open == 0 {
                all.remove(&self.key);
            }
        }
    }
}

/// Counts a new connection from `client` in its source's counts, or refuses it
/// (counted and logged) when the source is at a cap.
pub(super) fn admit(slots: &Arc<Semaphore>, client: SocketAddr, limits: &StreamLimits) -> Option<Arc<SourceSlot>> {
    match SourceSlot::admit(slots, client.ip(), limits) {
        Ok(source) => Some(source),
        Err(Refused::PerSource) => {
            REFUSED_PER_SOURCE.fetch_add(1, Ordering::Relaxed);
            debug!(%client, "connection refused: source at max-connections-per-source");
            None
        }
        Err(Refused::Unauthenticated) => {
            REFUSED_UNAUTHENTICATED.fetch_add(1, Ordering::Relaxed);
            debug!(%client, "connection refused: source at max-unauthenticated-per-source");
            None
        }
    }
}

/// Limits on stream connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Time allowed from accept (incl. the TLS handshake) to the first whole message,
    /// and to finish any message once started.
    pub first_message_timeout: Duration,
    /// A connection with no traffic at all for this long is closed.
    pub idle_timeout: Duration,
    /// Concurrent connections over all stream listeners.
    pub max_connections: usize,
    /// Concurrent connections from one source.
    pub max_connections_per_source: usize,
    /// Concurrent connections from one source that hold no allocation yet.
    pub max_unauthenticated_per_source: usize,
    /// A connection that holds no allocation this long after accept is closed.
    pub unauthenticated_timeout: Duration,
    /// A client that leaves answers unread this long is cut.
    pub write_timeout: Duration,
    /// How client addresses are grouped into sources.
    pub sources: crate::turn::source::SourcePrefix,
    /// Whether a connection is handed to its worker's event loop after its first
    /// message (`stream_conn`) instead of staying a task that passes each message on.
    pub worker_loop: bool,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            first_message_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(900),
            max_connections: 10_000,
            max_connections_per_source: 256,
            max_unauthenticated_per_source: 16,
            unauthenticated_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(10),
            sources: crate::turn::source::SourcePrefix::default(),
            worker_loop: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::turn::Transport;

    fn limits(per_source: usize, unauthenticated: usize) -> StreamLimits {
        StreamLimits {
            max_connections_per_source: per_source,
            max_unauthenticated_per_source: unauthenticated,
            ..StreamLimits::default()
        }
    }

    fn count(slots: &Arc<Semaphore>, source: &str) -> Option<SourceCount> {
        sources().get(&(Arc::as_ptr(slots) as usize, source.parse().unwrap())).copied()
    }

    #[test]
    fn a_source_is_held_to_both_caps_and_leaves_the_map_with_its_last_connection() {
        let slots = Arc::new(Semaphore::new(100));
        let limits = limits(3, 2);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = SourceSlot::admit(&slots, ip, &limits).unwrap();
        let b = SourceSlot::admit(&slots, ip, &limits).unwrap();
        assert_eq!(SourceSlot::admit(&slots, ip, &limits).unwrap_err(), Refused::Unauthenticated);
        a.authenticate();
        a.authenticate(); // counted once
        assert_eq!(count(&slots, "192.0.2.1"), Some(SourceCount { open: 2, unauthenticated: 1 }));
        let c = SourceSlot::admit(&slots, ip, &limits).unwrap();
        c.authenticate();
        assert_eq!(SourceSlot::admit(&slots, ip, &limits).unwrap_err(), Refused::PerSource);
        // Another source, and the same source under other slots, count apart.
        let other = SourceSlot::admit(&slots, "192.0.2.2".parse().unwrap(), &limits).unwrap();
        let elsewhere = Arc::new(Semaphore::new(100));
        let apart = SourceSlot::admit(&elsewhere, ip, &limits).unwrap();
        drop((a, c));
        assert_eq!(count(&slots, "192.0.2.1"), Some(SourceCount { open: 1, unauthenticated: 1 }));
        drop(b);
        assert_eq!(count(&slots, "192.0.2.1"), None, "no entry without a connection");
        drop((other, apart));
        assert_eq!(count(&slots, "192.0.2.2"), None);
        assert_eq!(count(&elsewhere, "192.0.2.1"), None);
    }

    #[test]
    fn ipv6_sources_count_by_prefix() {
        let slots = Arc::new(Semaphore::new(100));
        let limits = limits(2, 2);
        let held: Vec<_> = ["2001:db8:1:2::1", "2001:db8:1:2:ffff::9"]
            .iter()
            .map(|ip| SourceSlot::admit(&slots, ip.parse().unwrap(), &limits).unwrap())
            .collect();
        assert_eq!(
            SourceSlot::admit(&slots, "2001:db8:1:2::77".parse().unwrap(), &limits).unwrap_err(),
            Refused::PerSource
        );
        assert!(SourceSlot::admit(&slots, "2001:db8:1:3::1".parse().unwrap(), &limits).is_ok());
        drop(held);
    }

    #[test]
    fn a_proxied_five_tuple_is_claimed_once_until_its_connection_ends() {
        let five_tuple = FiveTuple {
            transport: Transport::Tcp,
            client: "198.51.100.77:4000".parse::<std::net::SocketAddr>().unwrap().into(),
            server: "192.0.2.1:3478".parse().unwrap(),
            tenant: crate::turn::TenantId::DEFAULT,
        };
        let first = ProxiedClaim::claim(five_tuple).expect("the first claim");
        // A refused claim must not give the first one's 5-tuple back.
        assert!(ProxiedClaim::claim(five_tuple).is_none());
        assert!(ProxiedClaim::claim(five_tuple).is_none());
        let other = ProxiedClaim::claim(FiveTuple { transport: Transport::Tls, ..five_tuple });
        assert!(other.is_some(), "another transport is another 5-tuple");
        drop(first);
        assert!(ProxiedClaim::claim(five_tuple).is_some());
    }

    #[test]
    fn the_client_filter_matches_ipv4_mapped_addresses_as_ipv4() {
        let filter = ClientFilter::new(vec!["203.0.113.0/24".parse().unwrap()], vec!["10.0.0.9/32".parse().unwrap()]);
        assert!(filter.is_denied("203.0.113.5".parse().unwrap()));
        assert!(filter.is_denied("::ffff:203.0.113.5".parse().unwrap()));
        assert!(!filter.is_denied("203.0.114.5".parse().unwrap()));
        assert!(filter.is_trusted_proxy("::ffff:10.0.0.9".parse().unwrap()));
        assert!(!filter.is_trusted_proxy("10.0.0.8".parse().unwrap()));
        assert!(!ClientFilter::default().is_denied("203.0.113.5".parse().unwrap()));
        assert!(!ClientFilter::default().is_trusted_proxy("10.0.0.9".parse().unwrap()));
    }
}
