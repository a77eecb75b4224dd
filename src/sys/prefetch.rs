//! Cache prefetch hints, so that the relay path can ask for an allocation's entry
//! before the system call whose datagram needs it, and the miss (with 10,000
//! allocations, memory and a page walk: hundreds of nanoseconds) overlaps the call
//! instead of stalling the path after it.

/// Asks the CPU to bring the cache lines holding the first `bytes` bytes of `value`
/// (at most all of it) into its caches. A hint only: nothing is read or changed, and
/// on targets without a prefetch instruction it does nothing.
pub fn prefetch<T>(value: &T, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        const LINE: usize = 64;
        let start = std::ptr::from_ref(value).cast::<i8>();
        let len = bytes.min(size_of::<T>());
        let misalign = start as usize % LINE;
        let mut offset = 0;
        while offset < misalign + len {
            // SAFETY: a prefetch never faults and writes nothing; every address given
            // is a cache line `value` occupies (computed with wrapping arithmetic, so
            // no out-of-bounds pointer is ever made by `add`).
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_sub(misalign).wrapping_add(offset)) };
            offset += LINE;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (value, bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefetching_changes_nothing() {
        let value = [7u8; 300];
        prefetch(&value, 1000);
        prefetch(&value, 0);
        prefetch(&value[299], 64);
        assert_eq!(value, [7u8; 300]);
    }
}
