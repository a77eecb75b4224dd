//! Who gets an admin connection: the ordinary pool, the health reserve, or a 503.
//!
//! **Ordinary pool.** `admin.max-connections` (default 16) connections, HTTP and
//! WebSocket together, of which at most `admin.max-connections-per-source` (default
//! 8) from one source. A source is an address masked to the `[limits]` prefix
//! (`/32` for IPv4, `/64` for IPv6 by default; see [`SourcePrefix`]). A connection
//! takes its place when accepted, before it has sent anything, and an upgraded
//! WebSocket keeps it.
//!
//! **Health reserve.** A connection the ordinary pool turns away (full, or its source
//! at its cap) may still be served from a small reserve that only answers `/healthz`,
//! `/readyz` and `/metrics` (anything else gets `503`), so the kubelet's probes and the
//! Prometheus scraper are answered however the ordinary pool is used. What is in it:
//!
//! - [`RESERVE_CONNECTIONS`] (4) places, at most [`RESERVE_PER_SOURCE`] (2) from one
//!   source;
//! - one request per connection (no keep-alive, no upgrade), whose head must arrive
//!   within [`RESERVE_HEAD_TIMEOUT`] (2 s), and the whole connection ends after
//!   [`RESERVE_LIFETIME`] (5 s) at most;
//! - **eviction**: a newcomer that finds no free place (the reserve full, or its own
//!   source at its reserve cap) takes the place of the oldest reserve connection that
//!   is still sending its request head (within its own source when that source is at
//!   its cap). Only when every place is held by a connection whose request is already
//!   being answered (milliseconds: the answers are small enough to fit in the socket's
//!   send buffer) is the newcomer refused.
//!
//! So half-sent requests cannot hold the reserve: each is displaced by the next
//! connection, and a probe's request, sent with the handshake, is being answered (and
//! so no longer displaceable) before the attacker's next connection is even accepted,
//! because the accept loop yields after each accept. A single source cannot displace
//! another's connections at all (at its cap it displaces its own). Idle WebSockets
//! cannot be in the reserve. Requests in the reserve are answered by the same
//! handlers, with the same access rules, as in the ordinary pool.

use crate::metrics::AdminCounters;
use crate::turn::source::SourcePrefix;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;

/// Places in the health reserve.
pub(crate) const RESERVE_CONNECTIONS: usize = 4;
/// Of those, held by one source at a time.
pub(crate) const RESERVE_PER_SOURCE: usize = 2;
/// A reserve connection must send its request head within this.
pub(crate) const RESERVE_HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// A reserve connection is closed after this, whatever it is doing.
pub(crate) const RESERVE_LIFETIME: Duration = Duration::from_secs(5);

/// The admission state of one listener.
#[derive(Debug)]
pub(crate) struct Admission {
    inner: Mutex<Inner>,
    sources: SourcePrefix,
    max_connections: usize,
    per_source: usize,
    counters: Arc<AdminCounters>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Connections in the ordinary pool, and per source.
    ordinary: usize,
    by_source: HashMap<IpAddr, usize>,
    /// The reserve's connections, oldest first.
    reserve: Vec<Reserved>,
    next_id: u64,
}

#[derive(Debug)]
struct Reserved {
    id: u64,
    source: IpAddr,
    /// Still sending its request head (so it may be displaced).
    reading_head: bool,
    /// Told when it is displaced.
    evict: Arc<Notify>,
}

/// Where a new connection goes.
#[derive(Debug)]
pub(crate) enum Admitted {
    /// A place in the ordinary pool.
    Ordinary(Slot),
    /// A place in the health reserve.
    Reserve(Reservation),
    /// Nowhere: answer 503 and close.
    Refused,
}

impl Admission {
    /// Caps of `max_connections` in all and `per_source` per source (grouped by
    /// `sources`), plus the reserve.
    pub(crate) fn new(
        max_connections: usize,
        per_source: usize,
        sources: SourcePrefix,
        counters: Arc<AdminCounters>,
    ) -> Arc<Self> {
        Arc::new(Admission {
            inner: Mutex::new(Inner::default()),
            sources,
            max_connections: max_connections.max(1),
            per_source: per_source.clamp(1, max_connections.max(1)),
            counters,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a connection from `ip`, displacing a reserve connection that is still
    /// sending its head if that is what it takes (see the module docs).
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Admitted {
        let source = self.sources.key(ip);
        let mut inner = self.lock();
        let held = inner.by_source.get(&source).copied().unwrap_or(0);
        if inner.ordinary < self.max_connections && held < self.per_source {
            inner.ordinary += 1;
            *inner.by_source.entry(source).or_insert(0) += 1;
            drop(inner);
            self.counters.connections.fetch_add(1, Ordering::Relaxed);
            return Admitted::Ordinary(Slot { admission: self.clone(), source });
        }
        let mine = inner.reserve.iter().filter(|r| r.source == source).count();
        let displace = if mine >= RESERVE_PER_SOURCE {
            Some(true)
        } else if inner.reserve.len() >= RESERVE_CONNECTIONS {
            Some(false)
        } else {
            None
        };
        if let Some(own_only) = displace {
            let victim = inner.reserve.iter().position(|r| r.reading_head && (!own_only || r.source == source));
            let Some(victim) = victim else {
                drop(inner);
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                return Admitted::Refused;
            };
            let displaced = inner.reserve.remove(victim);
            displaced.evict.notify_one();
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let evict = Arc::new(Notify::new());
        inner.reserve.push(Reserved { id, source, reading_head: true, evict: evict.clone() });
        drop(inner);
        self.counters.connections.fetch_add(1, Ordering::Relaxed);
        Admitted::Reserve(Reservation { admission: self.clone(), id, evict })
    }

    /// Connections in the ordinary pool and in the reserve (for tests).
    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.ordinary, inner.reserve.len())
    }
}

/// One connection's place in the ordinary pool, counted in the connections gauge and
/// against its source. A WebSocket upgrade takes it from the HTTP connection (see
/// [`ConnectionSlot`]), so a long-lived WebSocket keeps counting.
#[derive(Debug)]
pub(crate) struct Slot {
    admission: Arc<Admission>,
    source: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self.admission.lock();
        inner.ordinary = inner.ordinary.saturating_sub(1);
        if let Some(n) = inner.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                inner.by_source.remove(&self.source);
            }
        }
        drop(inner);
        self.admission.counters.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The slot of the connection a request came on, as a request extension: the HTTP
/// server puts it there and the WebSocket upgrade takes it. (Here rather than in the
/// server so that `ws` and `server` do not import each other.)
#[derive(Debug, Clone)]
pub(crate) struct ConnectionSlot(Arc<Mutex<Option<Slot>>>);

impl ConnectionSlot {
    /// The extension for a connection holding `slot`.
    pub(crate) fn new(slot: Slot) -> Self {
        ConnectionSlot(Arc::new(Mutex::new(Some(slot))))
    }

    /// Takes the slot (for a WebSocket session that outlives the HTTP connection).
    pub(crate) fn take(&self) -> Option<Slot> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// One connection's place in the health reserve.
#[derive(Debug)]
pub(crate) struct Reservation {
    admission: Arc<Admission>,
    id: u64,
    evict: Arc<Notify>,
}

impl Reservation {
    /// The request head has arrived: the connection can no longer be displaced.
    pub(crate) fn head_read(&self) {
        if let Some(r) = self.admission.lock().reserve.iter_mut().find(|r| r.id == self.id) {
            r.reading_head = false;
        }
    }

    /// Completes when another connection has taken this one's place.
    pub(crate) async fn displaced(&self) {
        self.evict.notified().await;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // A displaced connection is already out of the list.
        self.admission.lock().reserve.retain(|r| r.id != self.id);
        self.admission.counters.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn admission(max: usize, per_source: usize) -> Arc<Admission> {
        Admission::new(max, per_source, SourcePrefix::default(), Arc::new(AdminCounters::default()))
    }

    fn displaced(r: &Reservation) -> bool {
        let mut waiting = Box::pin(r.displaced());
        waiting.as_mut().poll(&mut Context::from_waker(Waker::noop())) == Poll::Ready(())
    }

    #[test]
    fn sources_are_capped_in_the_ordinary_pool_and_grouped_by_prefix() {
        let a = admission(4, 2);
        let first: Vec<_> = (0..2).map(|_| a.admit(ip("2001:db8::1"))).collect();
        assert!(first.iter().all(|x| matches!(x, Admitted::Ordinary(_))));
        // Same /64: over the cap, so into the reserve.
        let reserved = a.admit(ip("2001:db8::ffff"));
        assert!(matches!(reserved, Admitted::Reserve(_)));
        let other = a.admit(ip("192.0.2.1"));
        assert!(matches!(other, Admitted::Ordinary(_)));
        assert_eq!(a.held(), (3, 1));
        assert_eq!(a.counters.connections.load(Ordering::Relaxed), 4);
        drop((first, reserved));
        assert_eq!(a.held(), (1, 0));
        assert!(matches!(a.admit(ip("2001:db8::2")), Admitted::Ordinary(_)));
        assert_eq!(a.counters.connections.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_reserve_displaces_half_sent_requests_but_never_answered_ones() {
        let a = admission(1, 1);
        let _ordinary = a.admit(ip("192.0.2.1"));
        let mut held = Vec::new();
        for i in 0..RESERVE_CONNECTIONS {
            match a.admit(ip(&format!("198.51.100.{i}"))) {
                Admitted::Reserve(r) => held.push(r),
                other => panic!("{other:?}"),
            }
        }
        // Full: the next newcomer displaces the oldest half-sent request.
        let Admitted::Reserve(probe) = a.admit(ip("203.0.113.9")) else { panic!("probe refused") };
        assert!(displaced(&held[0]) && !displaced(&held[1]));
        assert_eq!(a.held().1, RESERVE_CONNECTIONS);
        probe.head_read();
        // Once its request is in, the probe stays however many newcomers come.
        for i in 0..2 * RESERVE_CONNECTIONS {
            let newcomer = a.admit(ip(&format!("198.51.100.{}", 10 + i)));
            assert!(matches!(newcomer, Admitted::Reserve(_)));
            assert!(!displaced(&probe));
        }
        // With every place answering, newcomers are refused.
        let answering: Vec<_> = (0..RESERVE_CONNECTIONS - 1)
            .map(|i| match a.admit(ip(&format!("198.51.100.{}", 100 + i))) {
                Admitted::Reserve(r) => {
                    r.head_read();
                    r
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(matches!(a.admit(ip("203.0.113.10")), Admitted::Refused));
        drop(answering);
        assert!(matches!(a.admit(ip("203.0.113.10")), Admitted::Reserve(_)));
    }

    #[test]
    fn a_source_at_its_reserve_cap_displaces_only_its_own() {
        let a = admission(1, 1);
        let _ordinary = a.admit(ip("192.0.2.1"));
        let Admitted::Reserve(other) = a.admit(ip("203.0.113.1")) else { panic!() };
        let mine: Vec<_> = (0..RESERVE_PER_SOURCE).map(|_| a.admit(ip("192.0.2.1"))).collect();
        assert!(mine.iter().all(|m| matches!(m, Admitted::Reserve(_))));
        for _ in 0..5 {
            assert!(matches!(a.admit(ip("192.0.2.1")), Admitted::Reserve(_)));
            assert!(!displaced(&other));
        }
        let Admitted::Reserve(first) = &mine[0] else { unreachable!() };
        assert!(displaced(first));
    }
}
