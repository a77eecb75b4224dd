//! A cache of answers that expire, bounded in entries, with O(1) work per operation:
//! when full, the oldest insertion goes (its answer is the closest to expiry when the
//! TTLs are alike, as they are for the webhook's answers). The authentication
//! webhook's answers are cached with it twice: per worker in the core
//! ([`super::lookup`]) and process-wide in the shell's lookup service. A scan for the
//! entry closest to expiry would cost a worker up to `cache-size` steps per answer,
//! which a client naming fresh usernames could make it pay on the relay thread.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// At most `capacity` entries of `K` to `V`, each valid up to its expiry.
#[derive(Debug)]
pub struct TtlCache<K, V> {
    capacity: usize,
    entries: HashMap<K, (V, Instant)>,
    /// Insertions, oldest first, with the expiry each set; a record whose key was
    /// inserted again since (a different expiry) or removed is skipped when it comes
    /// up. At most twice `capacity` records are kept.
    order: VecDeque<(K, Instant)>,
}

impl<K: Clone + Eq + Hash, V: Copy> TtlCache<K, V> {
    /// An empty cache of at most `capacity` entries (0 keeps nothing).
    pub fn new(capacity: usize) -> Self {
        TtlCache { capacity, entries: HashMap::new(), order: VecDeque::new() }
    }

    /// The value for `key` and the time it has left at `now` (an entry is valid up to
    /// and including its expiry); an expired entry is removed.
    pub fn get(&mut self, key: &K, now: Instant) -> Option<(V, Duration)> {
        match self.entries.get(key) {
            Some(&(value, expires)) if expires >= now => Some((value, expires - now)),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Caches `value` for `key` until `now + ttl`, making room by dropping the oldest
    /// insertions.
    pub fn insert(&mut self, key: K, value: V, ttl: Duration, now: Instant) {
        if self.capacity == 0 {
            return;
        }
        let expires = now + ttl;
        self.entries.insert(key.clone(), (value, expires));
        self.order.push_back((key, expires));
        while self.entries.len() > self.capacity || self.order.len() > 2 * self.capacity {
            let Some((key, expires)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&key).is_some_and(|&(_, e)| e == expires) {
                self.entries.remove(&key);
            }
        }
    }

    /// Drops everything (a reload).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
    }

    /// Changes the bound; entries past it go at the next insertion.
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity;
    }

    /// Entries held (expired ones included until they are looked up or pushed out).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_the_oldest_insertion_makes_room() {
        let now = Instant::now();
        let s = Duration::from_secs;
        let mut c = TtlCache::new(2);
        c.insert("a", 1, s(10), now);
        c.insert("b", 2, s(10), now);
        assert_eq!(c.get(&"a", now + s(4)), Some((1, s(6))));
        c.insert("c", 3, s(10), now + s(1));
        assert_eq!((c.get(&"a", now), c.len()), (None, 2), "a was inserted first");
        assert_eq!(c.get(&"b", now + s(10)), Some((2, Duration::ZERO)), "valid up to its expiry");
        assert_eq!(c.get(&"b", now + s(11)), None);
        assert_eq!(c.len(), 1, "the expired entry is gone once looked up");
    }

    #[test]
    fn reinsertions_keep_the_bookkeeping_bounded() {
        let now = Instant::now();
        let mut c = TtlCache::new(3);
        for i in 0..1000u32 {
            c.insert(i % 2, i, Duration::from_secs(60), now + Duration::from_millis(u64::from(i)));
            assert!(c.order.len() <= 6 && c.len() <= 3);
        }
        // The key inserted again keeps its latest value: its older records were skipped.
        assert_eq!(c.get(&1, now).map(|(v, _)| v), Some(999));
        assert_eq!(c.get(&0, now).map(|(v, _)| v), Some(998));
        c.clear();
        assert!(c.is_empty());
        let mut none = TtlCache::new(0);
        none.insert(1, 1, Duration::from_secs(1), now);
        assert!(none.is_empty());
    }
}
