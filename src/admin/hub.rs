//! The hub: one task between the event loop and the WebSocket clients. It turns each
//! loop snapshot into one `stats` JSON message (with rates) and each loop event into
//! one `event` JSON message, once, however many clients there are; clients pick them
//! up from a watch channel (stats) and a broadcast channel (events).
//!
//! Loop events name an allocation by id only after its creation; the hub remembers
//! who, from where and on which relay address each live allocation is, so every event
//! carries them.

use super::protocol::{AllocationRef, Ended, EventBody, EventMessage, PerDirection, Topic};
use crate::metrics::AdminCounters;
use crate::net::report::AllocationInfo;
use crate::net::{Control, Snapshot};
use crate::turn::stats::{AuthFailure, Direction, DropReason, MoveResult, RequestMethod};
use crate::turn::Event;
use crate::turn::{EndReason, TenantId};
use axum::extract::ws::Utf8Bytes;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::warn;

/// Events a client may fall behind before it is dropped as too slow.
pub(crate) const CLIENT_BACKLOG: usize = 256;
/// Auth failures and policy denials streamed per second and topic; past this they are
/// counted and reported as one `suppressed` event, so a login flood cannot overrun
/// (and so drop) every admin client.
const EVENTS_PER_SECOND: u64 = 50;
/// How long the hub waits on the loop when it rebuilds its allocation table.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);

/// One serialised message for clients of `topic`.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    /// Who wants it.
    pub topic: Topic,
    /// The JSON text (cheap to clone: reference-counted bytes).
    pub json: Utf8Bytes,
    /// The realm the event is about, for sessions that filter by realm; `None` for
    /// events about no one realm (or one the hub could not name).
    pub realm: Option<Arc<str>>,
}

/// What the hub feeds the clients.
#[derive(Debug, Clone)]
pub(crate) struct Feeds {
    /// The latest `stats` message; `None` until the loop's first snapshot, so no
    /// client is shown the zeros of a loop that has not reported yet.
    pub stats: watch::Receiver<Option<Utf8Bytes>>,
    /// `event` messages.
    pub events: broadcast::Sender<Outgoing>,
}

/// What the hub knows about a live allocation.
#[derive(Debug, Clone)]
struct Known {
    user: String,
    realm: Option<Arc<str>>,
    client: SocketAddr,
    relay: SocketAddr,
    transport: &'static str,
}

struct Hub {
    snapshots: watch::Receiver<Snapshot>,
    events: broadcast::Receiver<Event>,
    control: mpsc::Sender<Control>,
    counters: Arc<AdminCounters>,
    stats_tx: watch::Sender<Option<Utf8Bytes>>,
    out: broadcast::Sender<Outgoing>,
    known: HashMap<u64, Known>,
    previous: Option<Snapshot>,
    /// Events sent and left out this second, for the `auth` and `policy` topics.
    budget: [(u64, u64); 2],
    /// The configured realms by tenant id, from the latest snapshot.
    realms: HashMap<TenantId, Arc<str>>,
}

/// Starts the hub on the current runtime.
pub(crate) fn start(
    snapshots: watch::Receiver<Snapshot>,
    events: broadcast::Receiver<Event>,
    control: mpsc::Sender<Control>,
    counters: Arc<AdminCounters>,
) -> Feeds {
    let first = Some(&*snapshots.borrow()).filter(|s| s.unix_ms != 0).map(|s| stats_json(s, None, 0));
    let (stats_tx, stats) = watch::channel(first);
    let (out, _) = broadcast::channel(CLIENT_BACKLOG);
    let feeds = Feeds { stats, events: out.clone() };
    let hub = Hub {
        snapshots,
        events,
        control,
        counters,
        stats_tx,
        out,
        known: HashMap::new(),
        previous: None,
        budget: [(0, 0); 2],
        realms: HashMap::new(),
    };
    tokio::spawn(hub.run());
    feeds
}

impl Hub {
    async fn run(mut self) {
        let mut second = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                changed = self.snapshots.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    self.publish_stats();
                }
                event = self.events.recv() => match event {
                    Ok(event) => self.on_event(event),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        warn!(missed, "admin hub fell behind the event loop; rebuilding its allocation table");
                        self.resync().await;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = second.tick() => self.report_suppressed(),
            }
        }
    }

    fn publish_stats(&mut self) {
        let snapshot = self.snapshots.borrow_and_update().clone();
        let admin = self.counters.connections.load(Ordering::Relaxed);
        if snapshot.unix_ms == 0 {
            return; // the loop's initial, never-published value
        }
        if snapshot.realms.len() != self.realms.len()
            || snapshot.realms.iter().any(|r| self.realms.get(&r.tenant).map(|k| &**k) != Some(r.realm.as_str()))
        {
            self.realms = snapshot.realms.iter().map(|r| (r.tenant, Arc::from(r.realm.as_str()))).collect();
        }
        self.stats_tx.send_replace(Some(stats_json(&snapshot, self.previous.as_ref(), admin)));
        self.previous = Some(snapshot);
    }

    fn on_event(&mut self, event: Event) {
        let realm;
        let (topic, body) = match event {
            Event::AllocationCreated { id, five_tuple, username, relay, lifetime } => {
                let known = Known {
                    user: username,
                    realm: self.realm_of(five_tuple.tenant),
                    client: five_tuple.client.get(),
                    relay,
                    transport: five_tuple.transport.label(),
                };
                realm = known.realm.clone();
                self.known.insert(id.0, known);
                let allocation = self.describe(id.0);
                (Topic::Allocations, EventBody::AllocationCreated { allocation, lifetime_secs: lifetime.as_secs() })
            }
            Event::AllocationRefreshed { id, lifetime } => {
                realm = self.known.get(&id.0).and_then(|k| k.realm.clone());
                let allocation = self.describe(id.0);
                (Topic::Allocations, EventBody::AllocationRefreshed { allocation, lifetime_secs: lifetime.as_secs() })
            }
            Event::AllocationEnded { id, five_tuple, relay, username, reason, traffic, duration } => {
                let known = self.known.remove(&id.0);
                realm = known.and_then(|k| k.realm).or_else(|| self.realm_of(five_tuple.tenant));
                let relay = Some(relay);
                let allocation = AllocationRef {
                    id: id.0,
                    user: Some(username),
                    realm: realm.as_deref().map(str::to_owned),
                    client: Some(five_tuple.client.get()),
                    relay,
                    transport: Some(five_tuple.transport.label()),
                };
                let ended = |reason| Ended {
                    allocation,
                    reason,
                    duration_secs: duration.as_secs_f64(),
                    bytes: PerDirection {
                        client_to_peer: traffic.to_peer_bytes,
                        peer_to_client: traffic.to_client_bytes,
                    },
                    packets: PerDirection {
                        client_to_peer: traffic.to_peer_packets,
                        peer_to_client: traffic.to_client_packets,
                    },
                };
                let body = match reason {
                    EndReason::Expired => EventBody::AllocationExpired(ended("expired")),
                    EndReason::Deleted => EventBody::AllocationDeleted(ended("client")),
                    EndReason::Closed => EventBody::AllocationDeleted(ended("closed")),
                };
                (Topic::Allocations, body)
            }
            Event::AuthFailed { client, tenant, reason } => {
                if !self.within_budget(0) {
                    return;
                }
                realm = self.realm_of(tenant);
                let named = realm.as_deref().map(str::to_owned);
                (Topic::Auth, EventBody::AuthFailed { client, realm: named, reason: reason.label() })
            }
            Event::AllocationMoved { id, to, .. } => {
                // RFC 8016: the refresh event that follows shows the new client.
                if let Some(known) = self.known.get_mut(&id.0) {
                    known.client = to.client.get();
                }
                return;
            }
            Event::PeerDenied { id, peer } => {
                if !self.within_budget(1) {
                    return;
                }
                realm = self.known.get(&id.0).and_then(|k| k.realm.clone());
                (Topic::Policy, EventBody::PeerDenied { allocation: self.describe(id.0), peer })
            }
        };
        self.send_about(topic, body, realm);
    }

    fn realm_of(&self, tenant: TenantId) -> Option<Arc<str>> {
        self.realms.get(&tenant).cloned()
    }

    fn describe(&self, id: u64) -> AllocationRef {
        let known = self.known.get(&id);
        AllocationRef {
            id,
            user: known.map(|k| k.user.clone()),
            realm: known.and_then(|k| k.realm.as_deref().map(str::to_owned)),
            client: known.map(|k| k.client),
            relay: known.map(|k| k.relay),
            transport: known.map(|k| k.transport),
        }
    }

    fn within_budget(&mut self, slot: usize) -> bool {
        let (sent, suppressed) = &mut self.budget[slot];
        if *sent < EVENTS_PER_SECOND {
            *sent += 1;
            true
        } else {
            *suppressed += 1;
            false
        }
    }

    fn report_suppressed(&mut self) {
        for (slot, topic) in [(0, Topic::Auth), (1, Topic::Policy)] {
            let (_, suppressed) = std::mem::take(&mut self.budget[slot]);
            if suppressed > 0 {
                self.send(topic, EventBody::Suppressed { count: suppressed });
            }
        }
    }

    fn send(&self, topic: Topic, body: EventBody) {
        self.send_about(topic, body, None);
    }

    fn send_about(&self, topic: Topic, body: EventBody, realm: Option<Arc<str>>) {
        let message = EventMessage { kind: "event", topic, unix_ms: unix_ms(), body };
        if let Ok(json) = serde_json::to_string(&message) {
            // No subscriber is fine: nobody is watching.
            let _ = self.out.send(Outgoing { topic, json: json.into(), realm });
        }
    }

    /// Rebuilds the allocation table from the loop after missing events, so entries of
    /// allocations whose end we missed do not linger.
    async fn resync(&mut self) {
        let mut fresh = HashMap::new();
        let mut offset = 0;
        // Bounded: the loop caps allocations; 1000 pages of 1000 is far past any cap.
        for _ in 0..1000 {
            let (reply, answer) = oneshot::channel();
            let asked = Control::ListAllocations { realm: None, offset, limit: 1000, reply };
            if self.control.try_send(asked).is_err() {
                return;
            }
            let Ok(Ok((page, total))) = tokio::time::timeout(CONTROL_TIMEOUT, answer).await else {
                return;
            };
            offset += page.len();
            fresh.extend(page.into_iter().map(|a: AllocationInfo| {
                let realm = Some(Arc::from(a.realm.as_str()));
                (a.id, Known { user: a.user, realm, client: a.client, relay: a.relay, transport: a.transport })
            }));
            if offset >= total || offset == 0 {
                break;
            }
        }
        self.known = fresh;
    }
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The `stats` message.
#[derive(Debug, Serialize)]
struct StatsMessage {
    #[serde(rename = "type")]
    kind: &'static str,
    unix_ms: u64,
    allocations: usize,
    permissions: usize,
    channels: usize,
    tcp_connections: usize,
    ports_in_use: usize,
    ports_available: usize,
    draining: bool,
    admin_connections: u64,
    totals: Totals,
    rates: Rates,
    /// Per configured realm: allocations, auth failures and relayed bytes.
    realms: Vec<crate::net::report::RealmFigures>,
}

/// Counters since start.
#[derive(Debug, Serialize)]
struct Totals {
    requests: u64,
    request_errors: u64,
    allocations_created: u64,
    allocations_expired: u64,
    relayed_bytes: PerDirection,
    relayed_packets: PerDirection,
    auth_failures: BTreeMap<&'static str, u64>,
    dropped: BTreeMap<&'static str, u64>,
    /// RFC 8016 moves by result (see `turnd_mobility_moves_total`).
    mobility_moves: BTreeMap<&'static str, u64>,
}

/// Per-second rates over the last snapshot interval.
#[derive(Debug, Default, Serialize)]
struct Rates {
    requests_per_sec: f64,
    errors_per_sec: f64,
    client_to_peer_bps: f64,
    peer_to_client_bps: f64,
    client_to_peer_pps: f64,
    peer_to_client_pps: f64,
}

fn totals(s: &Snapshot) -> Totals {
    let st = &s.stats;
    let (up_packets, up_bytes) = st.relayed(Direction::ClientToPeer);
    let (down_packets, down_bytes) = st.relayed(Direction::PeerToClient);
    Totals {
        requests: RequestMethod::ALL.iter().map(|m| st.requests[*m as usize].iter().sum::<u64>()).sum(),
        request_errors: st.requests.iter().map(|r| r[1]).sum(),
        allocations_created: st.allocations_created,
        allocations_expired: st.allocations_expired,
        relayed_bytes: PerDirection { client_to_peer: up_bytes, peer_to_client: down_bytes },
        relayed_packets: PerDirection { client_to_peer: up_packets, peer_to_client: down_packets },
        auth_failures: AuthFailure::ALL.iter().map(|r| (r.label(), st.auth_failures[*r as usize])).collect(),
        dropped: DropReason::ALL.iter().map(|r| (r.label(), st.dropped(*r))).collect(),
        mobility_moves: MoveResult::ALL.iter().map(|r| (r.label(), st.mobility_moves[*r as usize])).collect(),
    }
}

fn rates(now: &Totals, then: &Totals, seconds: f64) -> Rates {
    let per_sec = |a: u64, b: u64| a.saturating_sub(b) as f64 / seconds;
    Rates {
        requests_per_sec: per_sec(now.requests, then.requests),
        errors_per_sec: per_sec(now.request_errors, then.request_errors),
        client_to_peer_bps: 8.0 * per_sec(now.relayed_bytes.client_to_peer, then.relayed_bytes.client_to_peer),
        peer_to_client_bps: 8.0 * per_sec(now.relayed_bytes.peer_to_client, then.relayed_bytes.peer_to_client),
        client_to_peer_pps: per_sec(now.relayed_packets.client_to_peer, then.relayed_packets.client_to_peer),
        peer_to_client_pps: per_sec(now.relayed_packets.peer_to_client, then.relayed_packets.peer_to_client),
    }
}

fn stats_json(s: &Snapshot, previous: Option<&Snapshot>, admin_connections: u64) -> Utf8Bytes {
    let totals = totals(s);
    let rates = match previous {
        Some(p) if s.unix_ms > p.unix_ms => rates(&totals, &self::totals(p), (s.unix_ms - p.unix_ms) as f64 / 1000.0),
        _ => Rates::default(),
    };
    let message = StatsMessage {
        kind: "stats",
        unix_ms: s.unix_ms,
        allocations: s.allocations,
        permissions: s.permissions,
        channels: s.channels,
        tcp_connections: s.tcp_connections,
        ports_in_use: s.ports_in_use,
        ports_available: s.ports_available,
        draining: s.draining,
        admin_connections,
        totals,
        rates,
        realms: s.realms.clone(),
    };
    // Plain structs of numbers and strings: serialising cannot fail.
    serde_json::to_string(&message).unwrap_or_default().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::turn::{AllocationId, FiveTuple, Transport};

    #[test]
    fn rates_are_per_second_over_the_snapshot_gap() {
        let mut a = Snapshot { unix_ms: 1_000, ..Snapshot::default() };
        a.stats.relay(Direction::ClientToPeer, Transport::Udp, 1000);
        let mut b = Snapshot { unix_ms: 3_000, ..a.clone() };
        b.stats.relay(Direction::ClientToPeer, Transport::Udp, 5000);
        let json: serde_json::Value = serde_json::from_str(&stats_json(&b, Some(&a), 2)).unwrap();
        assert_eq!(json["type"], "stats");
        assert_eq!(json["rates"]["client_to_peer_bps"], 8.0 * 5000.0 / 2.0);
        assert_eq!(json["totals"]["relayed_bytes"]["client_to_peer"], 6000);
        assert_eq!(json["admin_connections"], 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn events_carry_what_the_creation_said() {
        let (_snap_tx, snapshots) = watch::channel(Snapshot::default());
        let (event_tx, events) = broadcast::channel(16);
        let (control, _control_rx) = mpsc::channel(1);
        let feeds = start(snapshots, events, control, Arc::default());
        let mut rx = feeds.events.subscribe();
        let five_tuple = FiveTuple {
            transport: Transport::Udp,
            client: "192.0.2.1:5000".parse::<std::net::SocketAddr>().unwrap().into(),
            server: "192.0.2.2:3478".parse().unwrap(),
            tenant: crate::turn::TenantId::DEFAULT,
        };
        let relay: SocketAddr = "192.0.2.2:50000".parse().unwrap();
        let id = AllocationId(9);
        let lifetime = Duration::from_secs(600);
        event_tx.send(Event::AllocationCreated { id, five_tuple, username: "alice".into(), relay, lifetime }).unwrap();
        event_tx.send(Event::AllocationRefreshed { id, lifetime }).unwrap();
        let created: serde_json::Value = serde_json::from_str(&rx.recv().await.unwrap().json).unwrap();
        assert_eq!(created["event"], "allocation.created");
        let refreshed = rx.recv().await.unwrap();
        assert_eq!(refreshed.topic, Topic::Allocations);
        let refreshed: serde_json::Value = serde_json::from_str(&refreshed.json).unwrap();
        assert_eq!(refreshed["event"], "allocation.refreshed");
        assert_eq!(refreshed["user"], "alice");
        assert_eq!(refreshed["client"], "192.0.2.1:5000");
        assert_eq!(refreshed["relay"], "192.0.2.2:50000");
        assert_eq!(refreshed["transport"], "udp");
        assert_eq!(refreshed["lifetime_secs"], 600);

        // RFC 8016: after a move, the allocation's events name its new client.
        let to = FiveTuple { client: "198.51.100.9:6000".parse::<SocketAddr>().unwrap().into(), ..five_tuple };
        event_tx.send(Event::AllocationMoved { id, from: five_tuple, to, from_worker: Some(1) }).unwrap();
        event_tx.send(Event::AllocationRefreshed { id, lifetime }).unwrap();
        let moved: serde_json::Value = serde_json::from_str(&rx.recv().await.unwrap().json).unwrap();
        assert_eq!(moved["event"], "allocation.refreshed");
        assert_eq!(moved["client"], "198.51.100.9:6000");
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn auth_failure_floods_are_summarised() {
        let (_snap_tx, snapshots) = watch::channel(Snapshot::default());
        let (event_tx, events) = broadcast::channel(1024);
        let (control, _control_rx) = mpsc::channel(1);
        let feeds = start(snapshots, events, control, Arc::default());
        let mut rx = feeds.events.subscribe();
        tokio::task::yield_now().await;
        let client: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        for _ in 0..EVENTS_PER_SECOND + 30 {
            event_tx
                .send(Event::AuthFailed { client, tenant: Default::default(), reason: AuthFailure::BadIntegrity })
                .unwrap();
        }
        for _ in 0..EVENTS_PER_SECOND {
            let e: serde_json::Value = serde_json::from_str(&rx.recv().await.unwrap().json).unwrap();
            assert_eq!(e["event"], "auth.failed");
        }
        tokio::time::advance(Duration::from_millis(1001)).await;
        let summary: serde_json::Value = serde_json::from_str(&rx.recv().await.unwrap().json).unwrap();
        assert_eq!((summary["event"].as_str(), summary["count"].as_u64()), (Some("suppressed"), Some(30)));
    }
}
