//! Process-wide figures of live upgrades, read by `/metrics`. A success is counted by
//! the successor (the predecessor exits soon after, taking its counters with it); a
//! failure by the predecessor, which keeps serving.

use std::sync::atomic::{AtomicU64, Ordering};

/// How a handover ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandoverResult {
    /// This process took over from its predecessor.
    Success = 0,
    /// The successor refused (its config cannot carry the sockets, or the state).
    Refused = 1,
    /// The successor failed (did not start, crashed, timed out, broke the protocol).
    Failed = 2,
}

impl HandoverResult {
    /// Every result, in label order.
    pub const ALL: [HandoverResult; 3] = [HandoverResult::Success, HandoverResult::Refused, HandoverResult::Failed];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            HandoverResult::Success => "success",
            HandoverResult::Refused => "refused",
            HandoverResult::Failed => "failed",
        }
    }
}

static RESULTS: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
static MOVED: AtomicU64 = AtomicU64::new(0);
static GAP_MICROS: AtomicU64 = AtomicU64::new(0);

/// Counts a handover.
pub fn count(result: HandoverResult) {
    RESULTS[result as usize].fetch_add(1, Ordering::Relaxed);
}

/// Records a handover this process took over: allocations moved and the gap
/// (predecessor's freeze to this one serving).
pub fn taken_over(allocations: usize, gap_micros: u64) {
    count(HandoverResult::Success);
    MOVED.fetch_add(allocations as u64, Ordering::Relaxed);
    GAP_MICROS.store(gap_micros, Ordering::Relaxed);
}

/// A copy of the figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    /// Handovers by [`HandoverResult`].
    pub results: [u64; 3],
    /// Allocations taken over.
    pub allocations_moved: u64,
    /// The last takeover's gap, µs (0: none).
    pub last_gap_micros: u64,
}

/// The figures now.
pub fn counters() -> Counters {
    Counters {
        results: [0, 1, 2].map(|i| RESULTS[i].load(Ordering::Relaxed)),
        allocations_moved: MOVED.load(Ordering::Relaxed),
        last_gap_micros: GAP_MICROS.load(Ordering::Relaxed),
    }
}
