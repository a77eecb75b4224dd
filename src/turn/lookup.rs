//! Users no local source knows, looked up by the shell (the authentication webhook):
//! what a lookup answers ([`LookupResult`]), the worker's cache of answers and its
//! table of requests parked while a lookup is in flight (`Lookups`).
//!
//! The core cannot do HTTP. When a request names a user that is neither a static user
//! nor a TURN REST username and a webhook is configured, the core parks the request
//! here and emits [`super::Output::LookupUser`]; the shell answers with
//! [`super::Server::handle_lookup`], and the parked requests run again against the
//! answer, as for a static user. Everything here is bounded by [`LookupSettings`]:
//! parked requests (each at most [`super::server::MAX_CONTROL_MESSAGE`] bytes, each
//! for at most `wait`) and cached answers.

use super::auth::Key;
use super::ttl_cache::TtlCache;
use super::FiveTuple;
use crate::stun::attributes::Algorithm;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use stun_codec::{Method, TransactionId};

/// How the core parks and caches lookups (`[auth.webhook]`, per worker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LookupSettings {
    /// Requests parked at once on this worker; past it a request is answered 500.
    pub max_parked: usize,
    /// How long a request stays parked before it is answered 500 (a little more than
    /// the shell's HTTP timeout, so the shell's own answer normally comes first).
    pub wait: Duration,
    /// Answers cached on this worker; past it the oldest goes.
    pub cache_size: usize,
}

impl Default for LookupSettings {
    fn default() -> Self {
        LookupSettings { max_parked: 256, wait: Duration::from_secs(3), cache_size: 10_000 }
    }
}

/// Limits the lookup answer sets for one user, in place of `[limits]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserLimits {
    /// Allocations the user may hold at once (replaces `allocations-per-user`).
    pub max_allocations: Option<u32>,
    /// Relayed bytes per second over the user's allocations (replaces
    /// `bandwidth-per-user`).
    pub bandwidth: Option<u32>,
}

/// A user as the lookup found them: their keys (never the password) and limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserRecord {
    /// The key for the MD5 password algorithm (and RFC 5389 clients), if known.
    pub md5: Option<Key>,
    /// The key for SHA-256, if known.
    pub sha256: Option<Key>,
    /// Per-user limits.
    pub limits: UserLimits,
}

impl UserRecord {
    /// The key for `algorithm`, if the lookup gave one.
    pub fn key(&self, algorithm: Algorithm) -> Option<Key> {
        match algorithm {
            Algorithm::Md5 => self.md5,
            Algorithm::Sha256 => self.sha256,
        }
    }
}

/// What a lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupOutcome {
    /// The user exists: cache the record for `ttl`.
    Found {
        /// Keys and limits.
        record: UserRecord,
        /// How long the answer may be reused.
        ttl: Duration,
    },
    /// No such user: cache that for `ttl` (negative caching).
    NotFound {
        /// How long the answer may be reused.
        ttl: Duration,
    },
    /// The lookup could not tell (error, timeout, invalid answer, overload): the
    /// parked requests get 500 and nothing is cached here.
    Failed,
}

/// The shell's answer to [`super::Output::LookupUser`]. It carries the realm so that
/// answers are keyed by (realm, user), ready for several realms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupResult {
    /// The realm the lookup was for.
    pub realm: String,
    /// The username.
    pub username: String,
    /// What was found.
    pub outcome: LookupOutcome,
}

/// (realm, username): what answers are cached and lookups deduplicated by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct UserKey {
    realm: Box<str>,
    user: Box<str>,
}

impl UserKey {
    pub(crate) fn new(realm: &str, user: &str) -> Self {
        UserKey { realm: realm.into(), user: user.into() }
    }
}

/// A request waiting for its user's lookup.
#[derive(Debug)]
pub(crate) struct Parked {
    /// Where it came from (the answer goes back there).
    pub from: FiveTuple,
    /// The whole request, to run again once the answer is in.
    pub packet: Vec<u8>,
    /// For the 500 when the lookup fails or the wait runs out.
    pub method: Method,
    /// Its transaction id.
    pub transaction_id: TransactionId,
    /// The wall clock it arrived at (REST credentials are not involved, but the
    /// revocation list is read at this time, as for a request not parked).
    pub unix_now: u64,
    /// When it is answered 500 if no answer came.
    pub deadline: Instant,
}

/// What [`Lookups::cached`] knows about a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Known {
    /// Found, with this record.
    Found(UserRecord),
    /// Known not to exist.
    NotFound,
    /// Not cached (or expired).
    Unknown,
}

/// Why a request could not be parked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ParkError {
    /// The worker's parked requests are at `max_parked`.
    Full,
}

/// One worker's cache of lookup answers and its parked requests.
#[derive(Debug)]
pub(crate) struct Lookups {
    settings: LookupSettings,
    /// Answers: a record, or `None` for "no such user".
    cache: TtlCache<UserKey, Option<UserRecord>>,
    /// Parked requests by user, with when their lookup was asked for.
    parked: HashMap<UserKey, (Instant, Vec<Parked>)>,
    /// Requests in `parked`, over all users.
    parked_count: usize,
    /// The earliest deadline in `parked`, kept so `poll_timeout` does not scan.
    earliest: Option<Instant>,
}

impl Lookups {
    /// Empty, with `settings`.
    pub(crate) fn new(settings: LookupSettings) -> Self {
        Lookups {
            settings,
            cache: TtlCache::new(settings.cache_size),
            parked: HashMap::new(),
            parked_count: 0,
            earliest: None,
        }
    }

    /// New settings (a reload): the cache is flushed, so a user changed or removed at
    /// the backend is asked again; parked requests keep their deadlines.
    pub(crate) fn reconfigure(&mut self, settings: LookupSettings) {
        self.settings = settings;
        self.cache.set_capacity(settings.cache_size);
        self.cache.clear();
    }

    /// The cached answer for `key` at `now`; an expired entry is removed.
    pub(crate) fn cached(&mut self, key: &UserKey, now: Instant) -> Known {
        match self.cache.get(key, now) {
            Some((Some(record), _)) => Known::Found(record),
            Some((None, _)) => Known::NotFound,
            None => Known::Unknown,
        }
    }

    /// Parks `request` for `key`. Returns whether a lookup must be asked for: the
    /// first request for this user, or one that comes when the lookup in flight was
    /// asked `wait` ago or more (its answer was lost: the shell answers within its
    /// timeout, which is less); other requests wait on the same lookup. A
    /// retransmission of a request already parked is not parked twice.
    pub(crate) fn park(&mut self, key: UserKey, mut request: Parked, now: Instant) -> Result<bool, ParkError> {
        let same = |p: &Parked| p.from == request.from && p.transaction_id == request.transaction_id;
        if self.parked.get(&key).is_some_and(|(_, waiting)| waiting.iter().any(same)) {
            return Ok(false);
        }
        if self.parked_count >= self.settings.max_parked {
            return Err(ParkError::Full);
        }
        request.deadline = now + self.settings.wait;
        self.earliest = Some(self.earliest.map_or(request.deadline, |e| e.min(request.deadline)));
        let (asked, waiting) = self.parked.entry(key).or_insert_with(|| (now, Vec::new()));
        let ask = waiting.is_empty() || now >= *asked + self.settings.wait;
        if ask {
            *asked = now;
        }
        waiting.push(request);
        self.parked_count += 1;
        Ok(ask)
    }

    /// Takes the answer for `key`: caches it and returns the requests that waited
    /// for it.
    pub(crate) fn answer(&mut self, key: UserKey, outcome: LookupOutcome, now: Instant) -> Vec<Parked> {
        match outcome {
            LookupOutcome::Found { record, ttl } => self.cache.insert(key.clone(), Some(record), ttl, now),
            LookupOutcome::NotFound { ttl } => self.cache.insert(key.clone(), None, ttl, now),
            LookupOutcome::Failed => {}
        }
        let parked = self.parked.remove(&key).map(|(_, parked)| parked).unwrap_or_default();
        self.parked_count -= parked.len();
        self.recompute_earliest();
        parked
    }

    /// Removes and returns the parked requests whose deadline has passed at `now`.
    pub(crate) fn expired(&mut self, now: Instant) -> Vec<Parked> {
        if self.earliest.map_or(true, |e| e > now) {
            return Vec::new();
        }
        let mut due = Vec::new();
        self.parked.retain(|_, (_, waiting)| {
            let (late, keep): (Vec<_>, Vec<_>) = waiting.drain(..).partition(|p| p.deadline <= now);
            due.extend(late);
            *waiting = keep;
            !waiting.is_empty()
        });
        self.parked_count -= due.len();
        self.recompute_earliest();
        due
    }

    fn recompute_earliest(&mut self) {
        self.earliest = self.parked.values().flat_map(|(_, parked)| parked).map(|p| p.deadline).min();
    }

    /// When the next parked request times out.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.earliest
    }

    /// Requests parked now.
    pub(crate) fn parked(&self) -> usize {
        self.parked_count
    }

    /// Answers cached now (expired ones included until they are found).
    pub(crate) fn cached_count(&self) -> usize {
        self.cache.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::turn::Transport;

    fn request(port: u16, tid: u8) -> Parked {
        Parked {
            from: FiveTuple {
                transport: Transport::Udp,
                client: format!("192.0.2.1:{port}").parse::<std::net::SocketAddr>().unwrap().into(),
                server: "10.0.0.1:3478".parse().unwrap(),
                tenant: crate::turn::TenantId::DEFAULT,
            },
            packet: vec![0; 20],
            method: stun_codec::rfc5766::methods::ALLOCATE,
            transaction_id: TransactionId::new([tid; 12]),
            unix_now: 0,
            deadline: Instant::now(),
        }
    }

    fn record() -> UserRecord {
        UserRecord { md5: Some(Key::new(&[1; 16])), sha256: None, limits: UserLimits::default() }
    }

    #[test]
    fn one_lookup_per_user_and_retransmissions_park_once() {
        let now = Instant::now();
        let mut l = Lookups::new(LookupSettings { max_parked: 3, ..LookupSettings::default() });
        let key = UserKey::new("r", "u");
        assert_eq!(l.park(key.clone(), request(1, 1), now), Ok(true));
        assert_eq!(l.park(key.clone(), request(1, 1), now), Ok(false), "a retransmission");
        assert_eq!(l.park(key.clone(), request(2, 2), now), Ok(false));
        assert_eq!(l.park(UserKey::new("r", "v"), request(3, 3), now), Ok(true));
        assert_eq!(l.park(UserKey::new("r", "w"), request(4, 4), now), Err(ParkError::Full));
        assert_eq!(l.parked(), 3);
        let answered = l.answer(key.clone(), LookupOutcome::Found { record: record(), ttl: Duration::ZERO }, now);
        assert_eq!(answered.len(), 2);
        assert_eq!(l.parked(), 1);
        assert_eq!(l.cached(&key, now), Known::Found(record()), "a zero TTL holds for the instant it came");
        assert_eq!(l.cached(&key, now + Duration::from_millis(1)), Known::Unknown);
        assert_eq!(l.cached_count(), 0, "the expired entry is gone");
    }

    #[test]
    fn parked_requests_time_out_and_failures_are_not_cached() {
        let now = Instant::now();
        let mut l = Lookups::new(LookupSettings { wait: Duration::from_secs(2), ..LookupSettings::default() });
        let key = UserKey::new("r", "u");
        l.park(key.clone(), request(1, 1), now).unwrap();
        l.park(key.clone(), request(2, 2), now + Duration::from_secs(1)).unwrap();
        assert_eq!(l.next_deadline(), Some(now + Duration::from_secs(2)));
        assert!(l.expired(now + Duration::from_millis(1999)).is_empty());
        assert_eq!(l.expired(now + Duration::from_secs(2)).len(), 1);
        assert_eq!(l.next_deadline(), Some(now + Duration::from_secs(3)));
        // The lookup was asked 2 s ago and never answered (lost): a new request asks again.
        assert_eq!(l.park(key.clone(), request(3, 3), now + Duration::from_secs(2)), Ok(true));
        assert_eq!(l.park(key.clone(), request(4, 4), now + Duration::from_secs(3)), Ok(false));
        assert_eq!(l.expired(now + Duration::from_secs(3)).len(), 1);
        assert_eq!(l.answer(key.clone(), LookupOutcome::Failed, now).len(), 2);
        assert_eq!(l.cached(&key, now), Known::Unknown);
        assert_eq!(l.next_deadline(), None);
    }

    #[test]
    fn the_cache_is_bounded_and_drops_the_oldest() {
        let now = Instant::now();
        let mut l = Lookups::new(LookupSettings { cache_size: 2, ..LookupSettings::default() });
        let s = Duration::from_secs;
        l.answer(UserKey::new("r", "a"), LookupOutcome::NotFound { ttl: s(10) }, now);
        l.answer(UserKey::new("r", "b"), LookupOutcome::NotFound { ttl: s(10) }, now);
        l.answer(UserKey::new("r", "c"), LookupOutcome::Found { record: record(), ttl: s(60) }, now);
        assert_eq!(l.cached_count(), 2);
        assert_eq!(l.cached(&UserKey::new("r", "a"), now), Known::Unknown);
        assert_eq!(l.cached(&UserKey::new("r", "b"), now), Known::NotFound);
        assert_eq!(l.cached(&UserKey::new("other", "a"), now), Known::Unknown, "keyed by realm too");
        l.reconfigure(LookupSettings::default());
        assert_eq!(l.cached_count(), 0, "a reload flushes the cache");
    }
}
