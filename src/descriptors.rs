//! File descriptors, budgeted: every TCP/TLS connection and every relay socket costs
//! one, and the process has a limit. Left alone, held TCP connections can take the
//! descriptors every UDP Allocate needs (508 for everyone), so the soft limit is raised
//! to the hard one at start and split: a fixed reserve for listeners, epoll sets and
//! the admin plane, then half of the rest at most for client streams (when there is a
//! TCP or TLS listener) and the rest for relay sockets, which the core bounds by the
//! relay ports it hands out (one per socket: a dual-stack allocation takes two).
//! Configured limits above their share are lowered, with a warning naming the key.

use tracing::{info, warn};
use turnd::config::{Config, ListenTransport};
use turnd::sys::process;

/// Descriptors kept for what is not a stream or a relay: listeners, epoll, eventfds,
/// the admin listener and its connections, log and proc files, per worker and overall.
const RESERVED: u64 = 128;
const RESERVED_PER_WORKER: u64 = 16;

/// What of the configuration decides the split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Event loops.
    pub workers: usize,
    /// Whether any listener takes TCP or TLS: without one no client stream (nor RFC
    /// 6062 connection) can exist, and relay sockets may have every descriptor.
    pub streams: bool,
}

impl Shape {
    /// The shape of `config`.
    pub fn of(config: &Config) -> Shape {
        Shape {
            workers: config.worker_count(),
            streams: config.listen.iter().any(|l| l.transport != ListenTransport::Udp),
        }
    }
}

/// What the descriptor limit allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The soft RLIMIT_NOFILE in force.
    pub limit: u64,
    /// TCP and TLS client connections at most; `None` when no listener takes them,
    /// so `tcp.max-connections` is left as it is.
    pub streams: Option<usize>,
    /// Relay sockets at most, so allocations at most (each holds one, or two when
    /// dual-stack).
    pub relay_sockets: usize,
}

impl Budget {
    /// The split of `limit` descriptors for a server of `shape`.
    pub fn of(limit: u64, shape: Shape) -> Budget {
        let reserved = RESERVED + RESERVED_PER_WORKER * shape.workers as u64;
        let available = limit.saturating_sub(reserved);
        let streams = if shape.streams { available / 2 } else { 0 };
        let relays = available - streams;
        Budget {
            limit,
            streams: shape.streams.then(|| usize::try_from(streams.max(1)).unwrap_or(usize::MAX)),
            relay_sockets: usize::try_from(relays.max(1)).unwrap_or(usize::MAX),
        }
    }

    /// Lowers `tcp.max-connections` and `limits.total-allocations` to this budget and
    /// bounds the relay sockets; warns (once per start or reload) when it lowers one.
    pub fn apply(&self, config: &mut Config) {
        config.relay_sockets = Some(self.relay_sockets);
        // A default the operator never set is lowered quietly (info); a configured
        // value is a warning, since the operator asked for more than the host allows.
        let defaults = Config::default();
        if let Some(streams) = self.streams.filter(|&streams| config.tcp.max_connections > streams) {
            let (configured, used) = (config.tcp.max_connections, streams);
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
        if config.limits.total_allocations > self.relay_sockets {
            let (configured, used) = (config.limits.total_allocations, self.relay_sockets);
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
pub fn raise_and_budget(shape: Shape) -> Budget {
    let Some((soft, hard)) = process::open_file_limit() else {
        // Unknown: assume the common default rather than nothing.
        return Budget::of(1024, shape);
    };
    let mut limit = soft;
    if soft < hard && process::set_open_file_limit(hard, hard).is_ok() {
        info!(from = soft, to = hard, "raised the open-file limit to its hard limit");
        limit = hard;
    }
    Budget::of(limit, shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WITH_STREAMS: Shape = Shape { workers: 2, streams: true };

    #[test]
    fn streams_get_half_of_what_the_reserve_leaves_and_relays_the_rest() {
        let b = Budget::of(1024, WITH_STREAMS);
        assert_eq!((b.streams, b.relay_sockets), (Some(432), 432));
        let mut config = Config::default();
        b.apply(&mut config);
        assert_eq!(config.tcp.max_connections, 432, "10,000 lowered to the share");
        assert_eq!(config.limits.total_allocations, 432, "one relay socket each at least");
        assert_eq!(config.core().relay_sockets, 432, "and the core holds no more ports than that");
        // A large limit leaves the defaults alone.
        let mut config = Config::default();
        Budget::of(1_048_576, WITH_STREAMS).apply(&mut config);
        assert_eq!((config.tcp.max_connections, config.limits.total_allocations), (10_000, 10_000));
        // A tiny one still leaves one of each.
        let tiny = Budget::of(10, WITH_STREAMS);
        assert_eq!((tiny.streams, tiny.relay_sockets), (Some(1), 1));
    }

    #[test]
    fn without_a_stream_listener_relay_sockets_get_every_descriptor() {
        // 20,000 is a common container hard limit: 10,000 UDP allocations fit in it.
        let b = Budget::of(20_000, Shape { workers: 1, streams: false });
        assert_eq!((b.streams, b.relay_sockets), (None, 20_000 - 144));
        let mut config = Config::default();
        b.apply(&mut config);
        assert_eq!(config.tcp.max_connections, Config::default().tcp.max_connections, "no streams to budget");
    }

    #[test]
    fn the_shape_counts_stream_listeners() {
        let parse = |toml: &str| Shape::of(&Config::parse(toml, std::path::Path::new("test.toml")).expect("config"));
        let udp = "workers = 1\n[[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:3478\"\n";
        assert_eq!(parse(udp), Shape { workers: 1, streams: false });
        let tls = format!("{udp}[[listen]]\ntransport = \"tcp\"\naddress = \"[::1]:3478\"\n");
        assert_eq!(parse(&tls), Shape { workers: 1, streams: true });
        assert!(Shape::of(&Config::default()).streams);
    }
}
