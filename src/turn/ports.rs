//! The relay port pool: which ports of the configured range are free, handed out at
//! random (RFC 8656 §7.2 asks for unpredictable relay ports) from the injected CSPRNG.

use super::Rng;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Which port numbers hold a relay (or a reservation) right now, one bit each, for
/// every worker's peer policy to read without the ledger's lock: a client may relay to
/// another allocation of this server, but not to whatever else listens on the host.
#[derive(Debug)]
pub struct LivePorts(Box<[AtomicU64]>);

impl Default for LivePorts {
    fn default() -> Self {
        LivePorts((0..1024).map(|_| AtomicU64::new(0)).collect())
    }
}

impl LivePorts {
    /// Whether `port` holds a relay of this server now.
    pub fn contains(&self, port: u16) -> bool {
        self.0.get(usize::from(port / 64)).is_some_and(|w| w.load(Ordering::Relaxed) & (1 << (port % 64)) != 0)
    }

    fn set(&self, port: u16, live: bool) {
        if let Some(word) = self.0.get(usize::from(port / 64)) {
            let bit = 1 << (port % 64);
            if live {
                word.fetch_or(bit, Ordering::Relaxed);
            } else {
                word.fetch_and(!bit, Ordering::Relaxed);
            }
        }
    }
}

/// A bitmap of the ports in a range: set bits are in use.
#[derive(Debug, Clone)]
pub struct PortPool {
    first: u16,
    len: usize,
    used: Vec<u64>,
    in_use: usize,
    /// The same bits by port number, shared with the peer policies.
    live: Arc<LivePorts>,
}

impl PortPool {
    /// A pool covering `range` (inclusive); an empty range gives an empty pool.
    pub fn new(range: RangeInclusive<u16>) -> Self {
        PortPool::with_live(range, Arc::default())
    }

    /// A pool covering `range` that reports its ports in `live` (which must have none
    /// set: a new pool starts empty).
    pub fn with_live(range: RangeInclusive<u16>, live: Arc<LivePorts>) -> Self {
        let first = *range.start();
        let len = if range.is_empty() { 0 } else { usize::from(*range.end() - first) + 1 };
        PortPool { first, len, used: vec![0; len.div_ceil(64)], in_use: 0, live }
    }

    /// The ports in use, as the peer policies read them.
    pub fn live(&self) -> Arc<LivePorts> {
        self.live.clone()
    }

    /// Ports currently taken.
    pub fn in_use(&self) -> usize {
        self.in_use
    }

    /// Ports still free.
    pub fn available(&self) -> usize {
        self.len - self.in_use
    }

    fn index(&self, port: u16) -> Option<usize> {
        let i = usize::from(port.checked_sub(self.first)?);
        (i < self.len).then_some(i)
    }

    /// Whether `port` is in the range and free.
    pub fn is_free(&self, port: u16) -> bool {
        self.index(port).is_some_and(|i| self.used[i / 64] & (1 << (i % 64)) == 0)
    }

    /// Marks a free port as used; false if it is not in the range or already taken.
    pub fn take(&mut self, port: u16) -> bool {
        if !self.is_free(port) {
            return false;
        }
        if let Some(i) = self.index(port) {
            self.used[i / 64] |= 1 << (i % 64);
            self.in_use += 1;
            self.live.set(port, true);
        }
        true
    }

    /// Returns a port to the pool. Releasing a free or foreign port does nothing.
    pub fn release(&mut self, port: u16) {
        if let Some(i) = self.index(port) {
            if self.used[i / 64] & (1 << (i % 64)) != 0 {
                self.used[i / 64] &= !(1 << (i % 64));
                self.in_use -= 1;
                self.live.set(port, false);
            }
        }
    }

    /// Takes a random free port; with `even`, an even one whose successor is also
    /// free when `with_successor` (RFC 8656 §7.2, EVEN-PORT with the R bit).
    pub fn take_random(&mut self, rng: &mut dyn Rng, even: bool, with_successor: bool) -> Option<u16> {
        if self.len == 0 {
            return None;
        }
        let start = (rng.next_u32() as usize) % self.len;
        // A linear probe from a random start: O(range) worst case, but the bitmap makes
        // each step a bit test, and a full scan of 16k ports is a few microseconds.
        let port = (0..self.len).map(|k| (start + k) % self.len).find_map(|i| {
            let port = self.first.checked_add(u16::try_from(i).ok()?)?;
            let fits = self.is_free(port)
                && (!even || port % 2 == 0)
                && (!with_successor || port.checked_add(1).is_some_and(|next| self.is_free(next)));
            fits.then_some(port)
        })?;
        self.take(port);
        if with_successor {
            self.take(port + 1);
        }
        Some(port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::turn::tests_support::CountingRng;

    #[test]
    fn hands_out_every_port_once_then_runs_dry() {
        let mut pool = PortPool::new(50000..=50009);
        let mut rng = CountingRng::default();
        let mut seen: Vec<u16> = (0..10).map(|_| pool.take_random(&mut rng, false, false).unwrap()).collect();
        seen.sort();
        assert_eq!(seen, (50000..=50009).collect::<Vec<_>>());
        assert_eq!(pool.take_random(&mut rng, false, false), None);
        pool.release(50004);
        assert_eq!(pool.available(), 1);
        assert_eq!(pool.take_random(&mut rng, false, false), Some(50004));
    }

    #[test]
    fn even_port_with_reservation_takes_a_pair() {
        let mut pool = PortPool::new(50001..=50004);
        let mut rng = CountingRng::default();
        assert_eq!(pool.take_random(&mut rng, true, true), Some(50002));
        assert!(!pool.is_free(50003));
        assert!(pool.live().contains(50002) && pool.live().contains(50003) && !pool.live().contains(50001));
        assert_eq!(pool.take_random(&mut rng, true, true), None);
        assert_eq!(pool.take_random(&mut rng, true, false), Some(50004));
    }

    #[test]
    fn release_is_idempotent_and_ignores_foreign_ports() {
        let mut pool = PortPool::new(1000..=1001);
        assert!(pool.take(1000));
        pool.release(1000);
        pool.release(1000);
        pool.release(9);
        assert_eq!(pool.in_use(), 0);
        assert!(!pool.live().contains(1000));
        assert!(PortPool::new(std::ops::RangeInclusive::new(5, 4))
            .take_random(&mut CountingRng::default(), false, false)
            .is_none());
    }
}
