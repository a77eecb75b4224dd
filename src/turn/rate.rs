//! Token buckets: per-source-IP limits on unauthenticated answers (so turnd is a poor
//! reflector), and bandwidth caps per allocation and per user. Time comes in as an
//! argument, like everywhere in the core.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Instant;

/// A token bucket holding up to `burst` tokens, refilled at `rate` per second.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn full(burst: f64, now: Instant) -> Self {
        Bucket { tokens: burst, last: now }
    }

    /// Takes `cost` tokens if there are enough (after refilling up to `burst`).
    pub fn take(&mut self, cost: f64, rate: f64, burst: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.last = now;
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }

    /// Whether the bucket would be full by `now` (so forgetting it changes nothing).
    fn is_full(&self, rate: f64, burst: f64, now: Instant) -> bool {
        self.tokens + now.saturating_duration_since(self.last).as_secs_f64() * rate >= burst
    }
}

/// Buckets keyed by something a client controls (its IP): the table is bounded, and
/// when it is full, idle (refilled) buckets are forgotten first; if none is idle the
/// new key is refused, which under a spray of sources degrades into a global limit
/// instead of unbounded memory.
#[derive(Debug)]
pub struct KeyedLimiter<K> {
    buckets: HashMap<K, Bucket>,
    rate: f64,
    burst: f64,
    capacity: usize,
}

impl<K: Hash + Eq + Copy> KeyedLimiter<K> {
    /// `rate` per second with bursts of `burst`, tracking at most `capacity` keys.
    pub fn new(rate: f64, burst: f64, capacity: usize) -> Self {
        KeyedLimiter { buckets: HashMap::new(), rate, burst: burst.max(1.0), capacity: capacity.max(1) }
    }

    /// Whether `key` may have one more.
    pub fn allow(&mut self, key: K, now: Instant) -> bool {
        let (rate, burst) = (self.rate, self.burst);
        if !self.buckets.contains_key(&key) && self.buckets.len() >= self.capacity {
            self.buckets.retain(|_, b| !b.is_full(rate, burst, now));
            if self.buckets.len() >= self.capacity {
                return false;
            }
        }
        self.buckets.entry(key).or_insert_with(|| Bucket::full(burst, now)).take(1.0, rate, burst, now)
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut l = KeyedLimiter::new(10.0, 5.0, 100);
        assert_eq!((0..8).filter(|_| l.allow(1u32, t0)).count(), 5);
        assert!(l.allow(1, t0 + Duration::from_millis(100)));
        assert!(!l.allow(1, t0 + Duration::from_millis(100)));
        assert!(l.allow(2, t0), "keys are independent");
    }

    #[test]
    fn table_stays_bounded_under_a_spray_of_keys() {
        let t0 = Instant::now();
        let mut l = KeyedLimiter::new(1.0, 2.0, 100);
        for k in 0..10_000u32 {
            l.allow(k, t0);
        }
        assert!(l.len() <= 100);
        // Once buckets refill they are forgotten and new keys get room.
        assert!(l.allow(99_999, t0 + Duration::from_secs(5)));
    }

    #[test]
    fn bandwidth_bucket_counts_bytes() {
        let t0 = Instant::now();
        let mut b = Bucket::full(1000.0, t0);
        assert!(b.take(800.0, 1000.0, 1000.0, t0));
        assert!(!b.take(800.0, 1000.0, 1000.0, t0));
        assert!(b.take(800.0, 1000.0, 1000.0, t0 + Duration::from_millis(700)));
    }
}
