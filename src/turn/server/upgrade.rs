//! A live upgrade from the core's side: the UDP allocations leave one process's core
//! as [`AllocationState`] and enter the successor's with their ids, times and counts
//! unchanged. The shell carries the relay sockets; the ledger is updated by the
//! successor's shell ([`crate::turn::Ledger::adopt_allocation`]).

use super::Server;
use crate::turn::allocation::{Allocation, AllocationState};
use crate::turn::{AllocationId, Transport};
use std::time::Instant;

impl Server {
    /// The allocations a live upgrade moves: those of UDP clients (TCP and TLS
    /// clients' allocations end with their connection, which stays in this process).
    /// Nothing changes here: if the successor fails they go on being served.
    pub fn export_udp_allocations(&self, now: Instant) -> Vec<AllocationState> {
        let mut all: Vec<AllocationState> = self
            .table
            .iter()
            .filter(|(_, a)| a.five_tuple.transport == Transport::Udp && !a.tcp && a.expires > now)
            .map(|(id, a)| a.export(id, now))
            .collect();
        all.sort_by_key(|a| a.id);
        all
    }

    /// Forgets allocations the successor took over: no event, no answer, no ledger
    /// change (the ports are the successor's now; this process is on its way out).
    pub fn forget_handed_over(&mut self, ids: &[AllocationId]) {
        for &id in ids {
            let _ = self.table.remove(id);
        }
    }

    /// Takes over an allocation from the predecessor, as it was at its export.
    /// Adds a predecessor worker's counters to this one's, so the process's counters
    /// (Prometheus, /ws totals) go on from where the old process left them.
    pub fn adopt_stats(&mut self, stats: &crate::turn::stats::Stats) {
        self.out.stats.add(stats);
    }

    pub fn adopt_allocation(&mut self, now: Instant, state: AllocationState) {
        self.last_now = now;
        let id = state.id;
        self.table.adopt(id, Allocation::import(state, now));
    }
}
