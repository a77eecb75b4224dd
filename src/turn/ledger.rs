//! What every worker's [`Server`](super::Server) must count together: relay ports,
//! RESERVATION-TOKENs, allocation quotas and the unauthenticated-401 limiter.
//!
//! Each worker thread owns its own `Server` (allocations, relay sockets, the hot path)
//! without locks; only these figures are shared (the shell keeps them behind one mutex
//! and the core reaches them through [`Shared`]), because splitting
//! them per worker would break them: two workers would hand out the same relay port, a
//! token minted on one worker could not be redeemed on another (a client's second
//! socket hashes elsewhere), a user would get the quota once per worker, and a source
//! spraying ports would get the 401 rate once per worker.
//!
//! It is needed on control-plane paths only (STUN requests, an allocation ending, a
//! reload, a timer); never on the relay hot path nor in `poll_timeout`. Every map here is bounded: the quota counts by the total-allocation
//! quota, the reservations by the port range (each holds a port), the limiter by
//! [`RATE_LIMITED_SOURCES`].

use super::config::{CoreConfig, Quotas};
use super::ports::{LivePorts, PortPool};
use super::rate::KeyedLimiter;
use super::source::SourcePrefix;
use super::tenant::{TenantId, UserKey};
use super::Rng;
use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Instant;

/// Source IPs tracked by the unauthenticated-rate limiter at most.
pub const RATE_LIMITED_SOURCES: usize = 65_536;
/// The most users whose allocations on other nodes of a fleet are counted.
pub const MAX_REMOTE_USERS: usize = 100_000;

/// How the core reaches the ledger every worker shares. The shell implements it (over
/// its mutex, `net/ledger.rs`); the core calls [`Shared::with`] around each group of
/// ledger operations that must happen together, and holds nothing between calls, so
/// a lock is held for exactly that span and never while a request is decoded,
/// authenticated or answered.
pub trait Shared {
    /// Runs `f` on the ledger.
    fn with<R>(&self, f: impl FnOnce(&mut Ledger) -> R) -> R;
}

/// One thread's ledger (a single worker, the fuzz driver, benchmarks): no lock.
impl Shared for std::cell::RefCell<Ledger> {
    fn with<R>(&self, f: impl FnOnce(&mut Ledger) -> R) -> R {
        f(&mut self.borrow_mut())
    }
}

/// Why the ledger turned an Allocate away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The total-allocation quota is reached: 508 Insufficient Capacity.
    Capacity,
    /// The user's or the client IP's quota is reached: 486 Allocation Quota Reached.
    Quota,
}

/// A port held for a later Allocate by RESERVATION-TOKEN (RFC 8656 §7.2). It counts as
/// an allocation of the user and source that made it, so looping "Allocate with
/// EVEN-PORT(R), delete" cannot hold ports past a quota.
#[derive(Debug, Clone)]
struct Reservation {
    port: u16,
    expires: Instant,
    user: UserKey,
    source: IpAddr,
}

/// Counts shared by every worker. See the module documentation.
pub struct Ledger {
    ports: PortPool,
    /// The range `ports` covers, to tell whether a reload changes it.
    port_range: RangeInclusive<u16>,
    /// Ports (so relay sockets) held at once at most: [`CoreConfig::relay_sockets`].
    relay_sockets: usize,
    /// Reserved ports by token; each port is taken in `ports` while reserved.
    reservations: HashMap<u64, Reservation>,
    /// No reservation expires before this; `None` when there is none. It may lag
    /// behind (a redeemed token leaves it early), which costs one needless sweep.
    next_reservation_expiry: Option<Instant>,
    /// Allocations (pending or live) per user of a tenant, over all workers.
    per_user: HashMap<UserKey, usize>,
    /// The same users' allocations on the fleet's other nodes, as the cluster task
    /// last read them (at most [`MAX_REMOTE_USERS`]; empty without a fleet). They
    /// count against `allocations-per-user` with this node's own.
    remote_per_user: HashMap<UserKey, usize>,
    /// Allocations (pending or live) and reservations per tenant, over all workers:
    /// one entry per configured tenant at most (removed when it reaches zero).
    per_tenant: HashMap<TenantId, usize>,
    /// The server-wide `total-allocations` (a tenant's own cap comes with its quotas).
    server_total: usize,
    /// Allocations (pending or live) and reservations per client source (an address
    /// masked by `source_prefix`), over all workers.
    per_ip: HashMap<IpAddr, usize>,
    /// Allocations (pending or live) and reservations over all workers.
    allocations: usize,
    /// How client addresses are grouped into sources; fixed while anything is counted,
    /// so that every count is undone under the key it was made with.
    source_prefix: SourcePrefix,
    /// 401s per source IP, over all workers.
    unauthenticated: KeyedLimiter<IpAddr>,
    /// The (per second, burst) `unauthenticated` was built with.
    unauthenticated_limits: (u32, u32),
    /// The instant nonce expiries count from, the same for every worker (set by the
    /// first one built) so that a nonce's expiry means the same on all of them.
    nonce_epoch: Option<Instant>,
}

impl std::fmt::Debug for Ledger {
    // The maps can be large: their sizes say enough.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("ports_in_use", &self.ports.in_use())
            .field("reservations", &self.reservations.len())
            .field("allocations", &self.allocations)
            .finish()
    }
}

impl Ledger {
    /// An empty ledger with the port range and 401 limits of `config` (the quotas
    /// come with each admission). The shell shares one among its workers.
    pub fn new(config: &CoreConfig) -> Self {
        let limits = (config.quotas.unauthenticated_per_second, config.quotas.unauthenticated_burst);
        Ledger {
            ports: PortPool::new(config.port_range.clone()),
            port_range: config.port_range.clone(),
            relay_sockets: config.relay_sockets,
            reservations: HashMap::new(),
            next_reservation_expiry: None,
            per_user: HashMap::new(),
            remote_per_user: HashMap::new(),
            per_tenant: HashMap::new(),
            server_total: config.quotas.total_allocations,
            per_ip: HashMap::new(),
            allocations: 0,
            source_prefix: config.quotas.sources(),
            unauthenticated: limiter(limits),
            unauthenticated_limits: limits,
            nonce_epoch: None,
        }
    }

    /// Applies a reload. Every worker receives the same reload and applies it here, so
    /// this is idempotent: the limiter is rebuilt (forgetting its buckets) only when
    /// its rate or burst changes, and the port range is switched only when it differs
    /// and no port of the old range is in use (ports in use stay valid; a later reload
    /// retries the switch).
    pub fn reconfigure(&mut self, config: &CoreConfig) {
        let limits = (config.quotas.unauthenticated_per_second, config.quotas.unauthenticated_burst);
        self.server_total = config.quotas.total_allocations;
        self.relay_sockets = config.relay_sockets;
        if limits != self.unauthenticated_limits {
            self.unauthenticated = limiter(limits);
            self.unauthenticated_limits = limits;
        }
        if config.quotas.sources() != self.source_prefix && self.allocations == 0 {
            self.source_prefix = config.quotas.sources();
            self.unauthenticated = limiter(limits);
        }
        if config.port_range != self.port_range && self.ports.in_use() == 0 {
            // Nothing is in use, so the shared bits are all clear for the new pool.
            self.ports = PortPool::with_live(config.port_range.clone(), self.ports.live());
            self.port_range = config.port_range.clone();
        }
    }

    /// The relay ports in use, readable without this ledger's lock.
    pub fn live_ports(&self) -> Arc<LivePorts> {
        self.ports.live()
    }

    /// Relay ports in use (by allocations and reservations of every worker) and still
    /// available.
    pub fn port_usage(&self) -> (usize, usize) {
        (self.ports.in_use(), self.ports.available())
    }

    /// Allocations counted against the quotas over all workers, including those still
    /// waiting for their relay socket.
    pub fn allocation_count(&self) -> usize {
        self.allocations
    }

    /// The nonce epoch of every worker: the `now` of the first worker to ask.
    pub(crate) fn nonce_epoch(&mut self, now: Instant) -> Instant {
        *self.nonce_epoch.get_or_insert(now)
    }

    /// Checks the quotas for one more allocation of `user` from `ip` and, if they
    /// allow it, counts it at once: checking and counting under one lock is what keeps
    /// two workers from both admitting the last allocation. `quotas` are the user's
    /// tenant's. The totals are checked first (508: the server's, then the tenant's),
    /// then the user and the IP (486), in the order turnd always used.
    pub(crate) fn admit(&mut self, user: &UserKey, ip: IpAddr, quotas: &Quotas) -> Result<(), Refusal> {
        if self.allocations >= self.server_total
            || self.per_tenant.get(&user.tenant).copied().unwrap_or(0) >= quotas.total_allocations
        {
            return Err(Refusal::Capacity);
        }
        let source = self.source_prefix.key(ip);
        let fleet = self.remote_per_user.get(user).copied().unwrap_or(0);
        if self.per_user.get(user).copied().unwrap_or(0).saturating_add(fleet) >= quotas.allocations_per_user
            || self.per_ip.get(&source).copied().unwrap_or(0) >= quotas.allocations_per_ip
        {
            return Err(Refusal::Quota);
        }
        self.count(user, source);
        Ok(())
    }

    /// Replaces the other nodes' per-user counts (the cluster task's latest read;
    /// eventually consistent: a count is at most about one publish interval old).
    /// Entries past [`MAX_REMOTE_USERS`] are ignored.
    pub fn set_remote_counts(&mut self, counts: impl IntoIterator<Item = (UserKey, usize)>) {
        self.remote_per_user = counts.into_iter().filter(|(_, n)| *n > 0).take(MAX_REMOTE_USERS).collect();
    }

    /// This node's allocations per user (for the fleet's other nodes to count).
    pub fn user_counts(&self) -> Vec<(UserKey, usize)> {
        self.per_user.iter().map(|(user, n)| (user.clone(), *n)).collect()
    }

    /// [`Ledger::admit`] for a reservation the Allocate being admitted will make
    /// (EVEN-PORT with the R bit): it counts like one more allocation of the user and
    /// source, within the reservation bound too.
    pub(crate) fn admit_reservation(&mut self, user: &UserKey, ip: IpAddr, quotas: &Quotas) -> Result<(), Refusal> {
        if self.reservations.len() >= quotas.total_reservations {
            return Err(Refusal::Capacity);
        }
        self.admit(user, ip, quotas)
    }

    fn count(&mut self, user: &UserKey, source: IpAddr) {
        self.allocations += 1;
        *self.per_tenant.entry(user.tenant).or_default() += 1;
        match self.per_user.get_mut(user) {
            Some(n) => *n += 1,
            None => {
                self.per_user.insert(user.clone(), 1);
            }
        }
        *self.per_ip.entry(source).or_default() += 1;
    }

    /// Uncounts an allocation [`Ledger::admit`] counted (or a reservation
    /// [`Ledger::admit_reservation`] did): it ended, or never came to be.
    pub(crate) fn forget_allocation(&mut self, user: &UserKey, ip: IpAddr) {
        let source = self.source_prefix.key(ip);
        self.uncount(user, source);
    }

    fn uncount(&mut self, user: &UserKey, source: IpAddr) {
        self.allocations = self.allocations.saturating_sub(1);
        decrement(&mut self.per_tenant, &user.tenant);
        decrement(&mut self.per_user, user);
        decrement(&mut self.per_ip, &source);
    }

    /// An allocation moved from source `from` to `to` (RFC 8016): the per-source
    /// count follows it. The move is not refused for the new source's quota: the
    /// allocation exists already, and refusing would strand its client.
    pub(crate) fn move_source(&mut self, from: IpAddr, to: IpAddr) {
        let (from, to) = (self.source_prefix.key(from), self.source_prefix.key(to));
        if from != to {
            decrement(&mut self.per_ip, &from);
            *self.per_ip.entry(to).or_default() += 1;
        }
    }

    /// Takes a random free relay port (see [`PortPool::take_random`]); `None` also when
    /// the ports held would pass the relay-socket bound (a dual-stack allocation takes
    /// one per family, so it is its second socket that finds the bound).
    pub(crate) fn take_port(
        &mut self,
        rng: &mut dyn Rng,
        even: bool,
        with_successor: bool,
        now: Instant,
    ) -> Option<u16> {
        self.sweep_reservations(now);
        let taking = if with_successor { 2 } else { 1 };
        if self.ports.in_use().saturating_add(taking) > self.relay_sockets {
            return None;
        }
        self.ports.take_random(rng, even, with_successor)
    }

    /// Returns a relay port to the pool.
    pub(crate) fn release_port(&mut self, port: u16) {
        self.ports.release(port);
    }

    /// Records that `port`, already taken, is held for `token` until `expires`, on the
    /// count [`Ledger::admit_reservation`] made for `user` from `ip`; false if `token`
    /// is already in use (the caller draws another).
    pub(crate) fn reserve(&mut self, token: u64, port: u16, expires: Instant, user: &UserKey, ip: IpAddr) -> bool {
        if self.reservations.contains_key(&token) {
            return false;
        }
        let source = self.source_prefix.key(ip);
        self.reservations.insert(token, Reservation { port, expires, user: user.clone(), source });
        self.next_reservation_expiry = Some(self.next_reservation_expiry.map_or(expires, |t| t.min(expires)));
        true
    }

    /// Hands the port reserved for `token` to an Allocate of `user` from `ip`, which
    /// the quotas must admit in the reservation's place (the reservation's own count
    /// goes); `None` if the token is unknown, already used or expired (an expired port
    /// goes back to the pool), or `Err` when the quotas refuse and the reservation
    /// stays as it was.
    pub(crate) fn redeem(
        &mut self,
        token: u64,
        user: &UserKey,
        ip: IpAddr,
        quotas: &Quotas,
        now: Instant,
    ) -> Result<Option<u16>, Refusal> {
        self.sweep_reservations(now);
        let Some(reservation) = self.reservations.remove(&token) else {
            return Ok(None);
        };
        self.uncount(&reservation.user, reservation.source);
        if reservation.expires <= now {
            self.ports.release(reservation.port);
            return Ok(None);
        }
        match self.admit(user, ip, quotas) {
            Ok(()) => Ok(Some(reservation.port)),
            Err(refusal) => {
                self.count(&reservation.user, reservation.source);
                self.reservations.insert(token, reservation);
                Err(refusal)
            }
        }
    }

    /// Drops `token`'s reservation if it is still held and expired, releasing its
    /// port: the timer of the worker that minted it calls this.
    pub(crate) fn expire_reservation(&mut self, token: u64, now: Instant) {
        if self.reservations.get(&token).is_some_and(|r| r.expires <= now) {
            if let Some(reservation) = self.reservations.remove(&token) {
                self.ports.release(reservation.port);
                self.uncount(&reservation.user, reservation.source);
            }
        }
        self.sweep_reservations(now);
    }

    /// Whether `token` still holds a port.
    pub(crate) fn holds_reservation(&self, token: u64) -> bool {
        self.reservations.contains_key(&token)
    }

    /// Reservations held now, over all workers.
    pub fn reservation_count(&self) -> usize {
        self.reservations.len()
    }

    /// The nonce epoch if one is set (a live upgrade hands it over).
    pub fn nonce_epoch_if_set(&self) -> Option<Instant> {
        self.nonce_epoch
    }

    /// Sets the nonce epoch to the predecessor's (a live upgrade), before any worker
    /// asks for it: nonces and mobility tickets it minted keep their expiries.
    pub fn set_nonce_epoch(&mut self, at: Instant) {
        self.nonce_epoch = Some(at);
    }

    /// The reservations held, with the time each has left at `now`, for a live
    /// upgrade: (token, port, time left, user, source).
    pub fn export_reservations(&self, now: Instant) -> Vec<(u64, u16, std::time::Duration, UserKey, IpAddr)> {
        let mut all: Vec<_> = self
            .reservations
            .iter()
            .filter(|(_, r)| r.expires > now)
            .map(|(token, r)| (*token, r.port, r.expires.saturating_duration_since(now), r.user.clone(), r.source))
            .collect();
        all.sort_by_key(|r| r.0);
        all
    }

    /// Takes over a predecessor's reservation (a live upgrade): its port is taken and
    /// it counts against its user and source, as where it was made. False when the
    /// port is outside the range or already taken (the reservation is then dropped).
    pub fn adopt_reservation(
        &mut self,
        token: u64,
        port: u16,
        expires: Instant,
        user: &UserKey,
        source: IpAddr,
    ) -> bool {
        if self.reservations.contains_key(&token) || !self.ports.take(port) {
            return false;
        }
        self.count(user, source);
        self.reservations.insert(token, Reservation { port, expires, user: user.clone(), source });
        self.next_reservation_expiry = Some(self.next_reservation_expiry.map_or(expires, |t| t.min(expires)));
        true
    }

    /// Takes over a predecessor's allocation of `user` from `ip` holding relay `ports`
    /// (a live upgrade): counted as if admitted here, without the quota check (it
    /// exists already; refusing would strand its client). False when a port was
    /// outside the range or already taken (the successor's config check refuses a
    /// range that no longer holds the moved ports, so this is a bug if it happens).
    pub fn adopt_allocation(&mut self, user: &UserKey, ip: IpAddr, ports: &[u16]) -> bool {
        let mut all = true;
        for (i, &port) in ports.iter().enumerate() {
            // A dual-stack allocation may hold one port number for both families.
            if !ports[..i].contains(&port) {
                all &= self.ports.take(port);
            }
        }
        let source = self.source_prefix.key(ip);
        self.count(user, source);
        all
    }

    /// Whether one more unauthenticated answer (a 401) may go to `ip`'s source.
    pub(crate) fn allow_unauthenticated(&mut self, ip: IpAddr, now: Instant) -> bool {
        self.unauthenticated.allow(self.source_prefix.key(ip), now)
    }

    /// Drops expired reservations of every worker (one whose worker stopped, too).
    /// O(1) unless one is due; otherwise a pass over the reservations, which are
    /// bounded by the port range.
    fn sweep_reservations(&mut self, now: Instant) {
        if !self.next_reservation_expiry.is_some_and(|t| t <= now) {
            return;
        }
        let expired: Vec<u64> = self.reservations.iter().filter(|(_, r)| r.expires <= now).map(|(t, _)| *t).collect();
        for token in expired {
            if let Some(r) = self.reservations.remove(&token) {
                self.ports.release(r.port);
                self.uncount(&r.user, r.source);
            }
        }
        self.next_reservation_expiry = self.reservations.values().map(|r| r.expires).min();
    }
}

fn limiter((per_second, burst): (u32, u32)) -> KeyedLimiter<IpAddr> {
    KeyedLimiter::new(f64::from(per_second), f64::from(burst), RATE_LIMITED_SOURCES)
}

/// Counts one less of `key`, forgetting it at zero so the map holds only live keys.
pub(crate) fn decrement<K: std::hash::Hash + Eq + ?Sized, Q: std::borrow::Borrow<K> + std::hash::Hash + Eq>(
    map: &mut HashMap<Q, usize>,
    key: &K,
) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::turn::tests_support::CountingRng;
    use std::time::Duration;

    fn ledger(range: RangeInclusive<u16>) -> Ledger {
        Ledger::new(&CoreConfig { port_range: range, ..CoreConfig::default() })
    }

    #[test]
    fn admit_counts_at_once_and_forget_uncounts() {
        let mut l = ledger(50000..=50009);
        let quotas = Quotas { total_allocations: 3, allocations_per_user: 2, ..Quotas::default() };
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(l.admit(&"alice".into(), ip, &quotas), Ok(()));
        assert_eq!(l.admit(&"alice".into(), ip, &quotas), Ok(()));
        assert_eq!(l.admit(&"alice".into(), ip, &quotas), Err(Refusal::Quota));
        assert_eq!(l.admit(&"bob".into(), ip, &quotas), Ok(()));
        assert_eq!(l.admit(&"carol".into(), ip, &quotas), Err(Refusal::Capacity));
        l.forget_allocation(&"alice".into(), ip);
        l.forget_allocation(&"alice".into(), ip);
        l.forget_allocation(&"bob".into(), ip);
        assert_eq!(l.allocation_count(), 0);
        assert!(l.per_user.is_empty() && l.per_ip.is_empty(), "emptied entries are removed");
    }

    #[test]
    fn expired_reservations_are_swept_when_a_port_is_taken() {
        let mut l = ledger(50000..=50001);
        let t0 = Instant::now();
        let mut rng = CountingRng::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let quotas = Quotas::default();
        assert_eq!(l.take_port(&mut rng, true, true, t0), Some(50000));
        assert_eq!(l.admit_reservation(&"alice".into(), ip, &quotas), Ok(()));
        assert!(l.reserve(7, 50001, t0 + Duration::from_secs(30), &"alice".into(), ip));
        assert!(
            !l.reserve(7, 50001, t0 + Duration::from_secs(30), &"alice".into(), ip),
            "a token names one reservation"
        );
        assert_eq!(l.allocation_count(), 1, "the reservation counts");
        assert_eq!(l.take_port(&mut rng, false, false, t0 + Duration::from_secs(29)), None);
        assert_eq!(l.take_port(&mut rng, false, false, t0 + Duration::from_secs(30)), Some(50001));
        assert_eq!(l.reservation_count(), 0);
        assert_eq!(l.allocation_count(), 0, "and stops counting when it expires");
        assert_eq!(l.redeem(7, &"alice".into(), ip, &quotas, t0 + Duration::from_secs(30)), Ok(None));
    }

    #[test]
    fn a_reservation_counts_against_the_quotas_until_redeemed_and_redeeming_trades_its_count() {
        let mut l = ledger(50000..=50009);
        let t0 = Instant::now();
        let quotas = Quotas { allocations_per_user: 2, total_reservations: 1, ..Quotas::default() };
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8::ffff".parse().unwrap();
        assert_eq!(l.admit(&"alice".into(), ip, &quotas), Ok(()));
        assert_eq!(l.admit_reservation(&"alice".into(), ip, &quotas), Ok(()));
        assert!(l.reserve(9, 50005, t0 + Duration::from_secs(30), &"alice".into(), ip));
        assert_eq!(l.admit(&"alice".into(), ip, &quotas), Err(Refusal::Quota), "allocation + reservation = 2");
        assert_eq!(l.admit_reservation(&"bob".into(), ip, &quotas), Err(Refusal::Capacity), "one reservation at most");
        // The redeeming Allocate takes the reservation's place, from another address of the /64 too.
        assert_eq!(l.redeem(9, &"alice".into(), same_64, &quotas, t0), Ok(Some(50005)));
        assert_eq!(l.allocation_count(), 2);
        assert_eq!(l.per_ip.len(), 1, "one /64, one source");
    }

    #[test]
    fn a_refused_redemption_leaves_the_reservation_in_place() {
        let mut l = ledger(50000..=50009);
        let t0 = Instant::now();
        let quotas = Quotas { allocations_per_user: 1, ..Quotas::default() };
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(l.admit_reservation(&"alice".into(), ip, &quotas), Ok(()));
        assert!(l.reserve(3, 50002, t0 + Duration::from_secs(30), &"alice".into(), ip));
        assert_eq!(l.admit(&"bob".into(), ip, &Quotas { allocations_per_ip: 1, ..quotas }), Err(Refusal::Quota));
        assert_eq!(l.redeem(3, &"bob".into(), ip, &Quotas { allocations_per_ip: 1, ..quotas }, t0), Ok(Some(50002)));
        assert_eq!(l.admit_reservation(&"carol".into(), ip, &quotas), Ok(()));
        assert!(l.reserve(4, 50004, t0 + Duration::from_secs(30), &"carol".into(), ip));
        assert_eq!(l.admit(&"carol".into(), "192.0.2.9".parse().unwrap(), &quotas), Err(Refusal::Quota));
        assert_eq!(l.redeem(4, &"bob".into(), ip, &quotas, t0), Err(Refusal::Quota), "bob is at his quota");
        assert!(l.holds_reservation(4), "still carol's");
    }

    #[test]
    fn relay_ports_stop_at_the_relay_socket_bound() {
        let mut l = Ledger::new(&CoreConfig { port_range: 50000..=50099, relay_sockets: 3, ..CoreConfig::default() });
        let mut rng = CountingRng::default();
        let t0 = Instant::now();
        let taken: Vec<_> = (0..3).filter_map(|_| l.take_port(&mut rng, false, false, t0)).collect();
        assert_eq!(taken.len(), 3);
        assert_eq!(l.take_port(&mut rng, false, false, t0), None, "a fourth socket would pass the bound");
        l.release_port(taken[0]);
        assert_eq!(l.take_port(&mut rng, true, true, t0), None, "a port and its reserved successor are two");
        assert!(l.take_port(&mut rng, false, false, t0).is_some(), "a released port frees a socket");
        let mut config = CoreConfig { port_range: 50000..=50099, relay_sockets: 5, ..CoreConfig::default() };
        l.reconfigure(&config);
        assert!(l.take_port(&mut rng, true, true, t0).is_some(), "a reload carries a new bound");
        config.relay_sockets = 5;
        l.reconfigure(&config);
        assert_eq!(l.take_port(&mut rng, false, false, t0), None);
    }

    #[test]
    fn reload_is_idempotent_and_keeps_a_range_in_use() {
        let mut l = ledger(50000..=50001);
        let mut config = CoreConfig { port_range: 50000..=50001, ..CoreConfig::default() };
        config.quotas.unauthenticated_per_second = 1;
        config.quotas.unauthenticated_burst = 1;
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        l.reconfigure(&config);
        assert!(l.allow_unauthenticated(ip, t0));
        l.reconfigure(&config);
        assert!(!l.allow_unauthenticated(ip, t0), "the second application left the buckets alone");
        let port = l.take_port(&mut CountingRng::default(), false, false, t0).unwrap();
        config.port_range = 60000..=60009;
        l.reconfigure(&config);
        assert_eq!(l.port_usage(), (1, 1), "a range in use stays");
        l.release_port(port);
        l.reconfigure(&config);
        assert_eq!(l.port_usage(), (0, 10));
    }
}
