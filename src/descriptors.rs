//! File descriptors, budgeted: every TCP/TLS connection and every relay socket costs
//! one, and the process has a limit. Left alone, held TCP connections can take the
//! descriptors every UDP Allocate needs (508 for everyone), so the soft limit is raised
//! to the hard one at start and split: a fixed reserve for listeners, epoll sets and
//! the admin plane, then half of the rest at most for client streams and the other
//! half for relay sockets. Configured limits above their share are lowered, with a
//! warning naming the key.

use tracing::{info, warn};
use turnd::config::Config;
use turnd::sys::process;

/// Descriptors kept for what is not a stream or a relay: listeners, epoll, eventfds,
/// the admin listener and its connections, log and proc files, per worker and overall.
const RESERVED: u64 = 128;
const RESERVED_PER_WORKER: u64 = 16;
/// Relay sockets one allocation may hold: one per address family (dual-stack).
const RELAYS_PER_ALLOCATION: u64 = 2;

/// What the descriptor limit allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The soft RLIMIT_NOFILE in force.
    pub limit: u64,
    /// TCP and TLS client connections at most.
    pub streams: usize,
    /// Allocations at most (each may hold a relay socket per family).
    pub allocations: usize,
}

impl Budget {
    /// The split of `limit` descriptors for `workers` event loops.
    pub fn of(limit: u64, workers: usize) -> Budget {
        let reserved = RESERVED + RESERVED_PER_WORKER * workers as u64;
        let available = limit.saturating_sub(reserved);
        let streams = available / 2;
        let relays = available - streams;
        Budget {
            limit,
            streams: usize::try_from(streams.max(1)).unwrap_or(usize::MAX),
            allocations: usize::try_from((relays / RELAYS_PER_ALLOCATION).max(1)).unwrap_or(usize::MAX),
        }
    }

    /// Lowers `tcp.max-connections` and `limits.total-allocations` to this budget;
    /// warns (once per start or reload) when it does.
    pub fn apply(&self, config: &mut Config) {
        // A default the operator never set is lowered quietly (info); a configured
        // value is a warning, since the operator asked for more than the host allows.
        let defaults = Config::default();
        if config.tcp.max_connections > self.streams {
            let (configured, used) = (config.tcp.max_connections, self.streams);
            if configured == defaults.tcp.max_connections {
                info!(
                    configured,
                    used,
                    open_files = self.limit,
                    "tcp.max-connections lowered to fit the open-file limit"
                );
            } else {
                warn!(
                    configured,
                    used,
                    open_files = self.limit,
                    "tcp.max-connections is more than half the open-file limit leaves: lowered (raise LimitNOFILE)"
                );
            }
            config.tcp.max_connections = used;
        }
        if config.limits.total_allocations > self.allocations {
            let (configured, used) = (config.limits.total_allocations, self.allocations);
            if configured == defaults.limits.total_allocations {
                info!(
                    configured,
                    used,
                    open_files = self.limit,
                    "limits.total-allocations lowered to fit the open-file limit"
                );
            } else {
                warn!(
                    configured, used, open_files = self.limit,
                    "limits.total-allocations needs more relay sockets than the open-file limit leaves: lowered (raise LimitNOFILE)"
                );
            }
            config.limits.total_allocations = used;
        }
    }
}

/// Raises the soft open-file limit to the hard one and returns the budget it allows.
pub fn raise_and_budget(workers: usize) -> Budget {
    let Some((soft, hard)) = process::open_file_limit() else {
        // Unknown: assume the common default rather than nothing.
        return Budget::of(1024, workers);
    };
    let mut limit = soft;
    if soft < hard && process::set_open_file_limit(hard, hard).is_ok() {
        info!(from = soft, to = hard, "raised the open-file limit to its hard limit");
        limit = hard;
    }
    Budget::of(limit, workers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_get_half_of_what_the_reserve_leaves_and_relays_the_rest() {
        let b = Budget::of(1024, 2);
        assert_eq!(b.streams, (1024 - 160) / 2);
        assert_eq!(b.allocations, (1024 - 160 - 432) / 2);
        let mut config = Config::default();
        b.apply(&mut config);
        assert_eq!(config.tcp.max_connections, 432, "10,000 lowered to the share");
        assert_eq!(config.limits.total_allocations, 216);
        // A large limit leaves the defaults alone.
        let mut config = Config::default();
        Budget::of(1_048_576, 2).apply(&mut config);
        assert_eq!((config.tcp.max_connections, config.limits.total_allocations), (10_000, 10_000));
        // A tiny one still leaves one of each.
        let tiny = Budget::of(10, 2);
        assert_eq!((tiny.streams, tiny.allocations), (1, 1));
    }
}
