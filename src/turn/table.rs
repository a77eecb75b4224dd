//! One worker's allocations: by id and by client 5-tuple, their expiry timers, the
//! users that hold them (for the per-user bandwidth buckets) and the numbering of new
//! ids. The relay hot path (`relay.rs`) reads it through one 5-tuple lookup.

use super::allocation::Allocation;
use super::id_map::IdMap;
use super::user_bandwidth::UserBandwidth;
use super::{AllocationId, FiveTuple};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Instant;

/// The allocations of one worker. Every map is bounded by the allocations it holds,
/// which the ledger's quotas bound.
#[derive(Debug)]
pub struct AllocationTable {
    /// Boxed: the map's own array stays small (16 bytes a bucket) and stable
    /// addresses let the shell prefetch an entry ([`AllocationTable::get`]) before the
    /// system call whose datagram needs it; with the ~550-byte entries inline, 10,000
    /// allocations made a 9 MB array whose every read missed the caches and the TLB.
    pub(super) by_id: IdMap<Box<Allocation>>,
    pub(super) by_five_tuple: HashMap<FiveTuple, AllocationId>,
    /// Expiry timers. Refreshes and deletions leave stale entries (skipped when they
    /// come up); when stale ones outnumber live ones the heap is rebuilt, so churn
    /// cannot grow it past about twice the live allocations.
    expiries: BinaryHeap<Reverse<(Instant, AllocationId)>>,
    /// Allocations per user on this worker, to know when a user's bandwidth bucket can
    /// be forgotten (the ledger's count is over all workers).
    users: HashMap<super::tenant::UserKey, usize>,
    /// Bandwidth buckets per user with allocations on this worker. Kept per worker so
    /// the relay path takes no lock: the per-user cap is enforced per worker, so a
    /// user whose clients land on several workers may relay up to that many times it.
    /// In a fleet, the other nodes' rates for the user lower it (see `user_bandwidth`).
    pub(super) user_bandwidth: UserBandwidth,
    /// This worker's index and the worker count, and how many ids it has numbered:
    /// see [`AllocationId`].
    worker: u32,
    workers: u32,
    numbered: u64,
}

impl AllocationTable {
    /// An empty table for worker `worker` of `workers`.
    pub fn new(worker: u32, workers: u32) -> Self {
        AllocationTable {
            by_id: IdMap::default(),
            by_five_tuple: HashMap::new(),
            expiries: BinaryHeap::new(),
            users: HashMap::new(),
            user_bandwidth: UserBandwidth::default(),
            worker,
            workers: workers.max(1),
            numbered: 0,
        }
    }

    /// The next id of this worker (see [`AllocationId`] for the numbering).
    pub fn next_id(&mut self) -> AllocationId {
        self.numbered += 1;
        AllocationId(self.numbered * u64::from(self.workers) + u64::from(self.worker))
    }

    /// Takes over an allocation numbered elsewhere (a live upgrade): ids this table
    /// numbers later stay above it, so they never collide with it.
    pub fn adopt(&mut self, id: AllocationId, allocation: Allocation) {
        self.numbered = self.numbered.max(id.0 / u64::from(self.workers));
        self.insert(id, allocation);
    }

    /// This worker's index and the number of workers.
    pub fn worker(&self) -> (u32, u32) {
        (self.worker, self.workers)
    }

    /// How many allocations are in force.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// An allocation by id.
    pub fn get(&self, id: AllocationId) -> Option<&Allocation> {
        self.by_id.get(&id).map(|a| &**a)
    }

    /// An allocation by id, to change.
    pub fn get_mut(&mut self, id: AllocationId) -> Option<&mut Allocation> {
        self.by_id.get_mut(&id).map(|a| &mut **a)
    }

    /// The allocation on a client 5-tuple.
    pub fn id_on(&self, five_tuple: &FiveTuple) -> Option<AllocationId> {
        self.by_five_tuple.get(five_tuple).copied()
    }

    /// The allocation on a client 5-tuple, to change: the relay path's one lookup
    /// pair.
    pub fn on_mut(&mut self, five_tuple: &FiveTuple) -> Option<(AllocationId, &mut Allocation)> {
        let id = *self.by_five_tuple.get(five_tuple)?;
        Some((id, &mut **self.by_id.get_mut(&id)?))
    }

    /// Every allocation, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (AllocationId, &Allocation)> {
        self.by_id.iter().map(|(id, a)| (*id, &**a))
    }

    /// Every allocation, to change.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Allocation> {
        self.by_id.values_mut().map(|a| &mut **a)
    }

    /// The ids of the allocations `pick` chooses.
    pub fn ids_where(&self, pick: impl Fn(&Allocation) -> bool) -> Vec<AllocationId> {
        self.by_id.iter().filter(|(_, a)| pick(a)).map(|(id, _)| *id).collect()
    }

    /// Adds a new allocation and schedules its expiry.
    pub fn insert(&mut self, id: AllocationId, allocation: Allocation) {
        self.by_five_tuple.insert(allocation.five_tuple, id);
        *self.users.entry(allocation.user.clone()).or_default() += 1;
        self.schedule_expiry(id, allocation.expires);
        self.by_id.insert(id, Box::new(allocation));
    }

    /// Moves an allocation to a new client 5-tuple (RFC 8016); returns the one it
    /// left. Permissions, channels and timers stay as they are.
    pub fn move_to(&mut self, id: AllocationId, to: FiveTuple) -> Option<FiveTuple> {
        let allocation = self.by_id.get_mut(&id)?;
        let from = std::mem::replace(&mut allocation.five_tuple, to);
        self.by_five_tuple.remove(&from);
        self.by_five_tuple.insert(to, id);
        Some(from)
    }

    /// Takes an allocation out; its user's bandwidth bucket goes with its last one.
    pub fn remove(&mut self, id: AllocationId) -> Option<Allocation> {
        let allocation = *self.by_id.remove(&id)?;
        self.by_five_tuple.remove(&allocation.five_tuple);
        self.compact_expiries();
        super::ledger::decrement(&mut self.users, &allocation.user);
        if !self.users.contains_key(&allocation.user) {
            self.user_bandwidth.remove(&allocation.user);
        }
        Some(allocation)
    }

    /// Schedules an allocation's expiry (after a refresh).
    pub fn schedule_expiry(&mut self, id: AllocationId, at: Instant) {
        self.expiries.push(Reverse((at, id)));
        self.compact_expiries();
    }

    fn compact_expiries(&mut self) {
        if self.expiries.len() > 2 * self.by_id.len() + 1024 {
            self.expiries = self.by_id.iter().map(|(id, a)| Reverse((a.expires, *id))).collect();
        }
    }

    /// The earliest expiry timer (possibly a stale one, which costs one early wake).
    pub fn next_expiry(&self) -> Option<Instant> {
        self.expiries.peek().map(|Reverse((at, _))| *at)
    }

    /// Expiry timers held, stale ones included.
    #[cfg(test)]
    pub(crate) fn expiry_timers(&self) -> usize {
        self.expiries.len()
    }

    /// Pops the next timer due by `now`: `Some(Ok(id))` when allocation `id` has
    /// expired, `Some(Err(()))` for a stale timer (the allocation was refreshed or is
    /// gone; a refreshed one is pruned of expired permissions), `None` when nothing
    /// is due.
    pub fn pop_due(&mut self, now: Instant) -> Option<Result<AllocationId, ()>> {
        let Reverse((at, id)) = self.expiries.peek().copied()?;
        if at > now {
            return None;
        }
        self.expiries.pop();
        match self.by_id.get_mut(&id) {
            Some(a) if a.expires <= now => Some(Ok(id)),
            Some(a) => {
                a.prune(now);
                Some(Err(()))
            }
            None => Some(Err(())),
        }
    }
}
