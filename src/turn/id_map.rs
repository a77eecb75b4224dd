//! Maps keyed by [`AllocationId`]: the relay path looks one up for every datagram in
//! each direction (the core's allocation, the shell's relay socket). std's default
//! SipHash is keyed to resist collisions chosen by clients, which ids are not: the
//! server numbers them (see [`AllocationId`]), so a multiply-and-fold hash, a few
//! cycles, is safe here. Maps keyed by what a client chooses (its 5-tuple, its IP)
//! keep SipHash.

use super::AllocationId;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` keyed by allocation id, with [`IdHasher`].
pub type IdMap<V> = HashMap<AllocationId, V, BuildHasherDefault<IdHasher>>;

/// Fibonacci hashing's multiplier (2^64 / golden ratio, odd).
const MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;

/// Hashes a server-chosen `u64` id: a multiply by an odd constant mixes the id into the
/// product's upper bits (its low bits keep the id's own pattern: every id of one worker
/// has the same remainder, ids being `n * workers + index`). The rotation brings mixed
/// bits to both ends hashbrown reads: the low bits pick the bucket, the top 7 the tag.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Not used by `AllocationId` (a `u64`); any other key still hashes all its bytes.
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(MULTIPLIER);
    }

    fn finish(&self) -> u64 {
        self.0.rotate_left(26)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::hash::BuildHasher;

    fn hash(id: u64) -> u64 {
        BuildHasherDefault::<IdHasher>::default().hash_one(AllocationId(id))
    }

    /// hashbrown takes the bucket from the low bits and a tag from the top 7: both
    /// must vary over the ids one worker of several numbers.
    #[test]
    fn ids_of_one_worker_among_several_spread_over_buckets_and_tags() {
        for workers in [1u64, 2, 4, 8] {
            let ids: Vec<u64> = (1..=4096).map(|n| n * workers + workers - 1).collect();
            let buckets: HashSet<u64> = ids.iter().map(|&id| hash(id) & 1023).collect();
            let tags: HashSet<u64> = ids.iter().map(|&id| hash(id) >> 57).collect();
            assert!(buckets.len() > 1000, "{workers} workers: {} of 1024 buckets used", buckets.len());
            assert_eq!(tags.len(), 128, "{workers} workers: every tag used");
        }
    }

    #[test]
    fn a_map_finds_what_it_holds() {
        let mut map: IdMap<u32> = IdMap::default();
        for n in 0..10_000u32 {
            map.insert(AllocationId(u64::from(n) * 3 + 1), n);
        }
        assert_eq!(map.len(), 10_000);
        assert!((0..10_000u32).all(|n| map.get(&AllocationId(u64::from(n) * 3 + 1)) == Some(&n)));
        assert_eq!(map.get(&AllocationId(3)), None);
    }
}
