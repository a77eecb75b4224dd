//! File descriptors, budgeted: every TCP/TLS connection and every relay socket costs
//! one, and the process has a limit. Left alone, held TCP connections can take the
//! descriptors every UDP Allocate needs (508 for everyone), so the soft limit is raised
//! to the hard one at start and split: a fixed reserve for listeners, epoll sets and
//! the admin plane, then half of the rest at most for client streams (when there is a
//! TCP or TLS listener) and the rest for relay sockets, one per allocation and relay
//! address family. Configured limits above their share are lowered, with a warning
//! naming the key.

use std::net::IpAddr;
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
    /// Relay sockets one allocation may hold: one per address family it can relay
    /// (two for a dual-stack allocation, RFC 8656 §7.2).
    pub relay_families: u64,
}

impl Shape {
    /// The shape of `config`. A family counts when a listener is bound to it (relay
    /// sockets default to the address the request came to) or `relay.bind-ipv4/-ipv6`
    /// names it; an unspecified IPv6 listener (`[::]`) takes IPv4 clients too, so it
    /// counts as both.
    pub fn of(config: &Config) -> Shape {
        let (mut v4, mut v6) = (config.relay.bind_ipv4.is_some(), config.relay.bind_ipv6.is_some());
        for listen in &config.listen {
            match listen.address.ip() {
                IpAddr::V4(_) => v4 = true,
                IpAddr::V6(ip) => {
                    v6 = true;
                    v4 |= ip.is_unspecified() || ip.to_ipv4_mapped().is_some();
                }
            }
        }
        Shape {
            workers: config.worker_count(),
            streams: config.listen.iter().any(|l| l.transport != ListenTransport::Udp),
            relay_families: u64::from(v4) + u64::from(v6),
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
    /// Allocations at most (each may hold a relay socket per family).
    pub allocations: usize,
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
            allocations: usize::try_from((relays / shape.relay_families.max(1)).max(1)).unwrap_or(usize::MAX),
        }
    }

    /// Lowers `tcp.max-connections` and `limits.total-allocations` to this budget;
    /// warns (once per start or reload) when it does.
    pub fn apply(&self, config: &mut Config) {
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

    const DUAL_STACK_WITH_STREAMS: Shape = Shape { workers: 2, streams: true, relay_families: 2 };

    #[test]
    fn streams_get_half_of_what_the_reserve_leaves_and_relays_the_rest() {
        let b = Budget::of(1024, DUAL_STACK_WITH_STREAMS);
        assert_eq!(b.streams, Some((1024 - 160) / 2));
        assert_eq!(b.allocations, (1024 - 160 - 432) / 2);
        let mut config = Config::default();
        b.apply(&mut config);
        assert_eq!(config.tcp.max_connections, 432, "10,000 lowered to the share");
        assert_eq!(config.limits.total_allocations, 216);
        // A large limit leaves the defaults alone.
        let mut config = Config::default();
        Budget::of(1_048_576, DUAL_STACK_WITH_STREAMS).apply(&mut config);
        assert_eq!((config.tcp.max_connections, config.limits.total_allocations), (10_000, 10_000));
        // A tiny one still leaves one of each.
        let tiny = Budget::of(10, DUAL_STACK_WITH_STREAMS);
        assert_eq!((tiny.streams, tiny.allocations), (Some(1), 1));
    }

    #[test]
    fn udp_only_single_family_servers_give_relays_every_descriptor() {
        // 20,000 is a common container hard limit: 10,000 UDP allocations fit in it
        // when no listener takes streams and one family is relayed.
        let b = Budget::of(20_000, Shape { workers: 1, streams: false, relay_families: 1 });
        assert_eq!((b.streams, b.allocations), (None, 20_000 - 144));
        let mut config = Config::default();
        b.apply(&mut config);
        assert_eq!(config.tcp.max_connections, Config::default().tcp.max_connections, "no streams to budget");
        let b = Budget::of(20_000, Shape { workers: 1, streams: true, relay_families: 1 });
        assert_eq!((b.streams, b.allocations), (Some(9_928), 9_928));
    }

    fn shape_of(toml: &str) -> Shape {
        Shape::of(&Config::parse(toml, std::path::Path::new("test.toml")).expect("test config"))
    }

    #[test]
    fn the_shape_counts_stream_listeners_and_relay_families() {
        let udp4 = "workers = 1\n[[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:3478\"\n";
        assert_eq!(shape_of(udp4), Shape { workers: 1, streams: false, relay_families: 1 });
        let tcp6 = "workers = 1\n[[listen]]\ntransport = \"tcp\"\naddress = \"[::1]:3478\"\n";
        assert_eq!(shape_of(tcp6), Shape { workers: 1, streams: true, relay_families: 1 });
        let any6 = "workers = 1\n[[listen]]\ntransport = \"udp\"\naddress = \"[::]:3478\"\n";
        assert_eq!(shape_of(any6).relay_families, 2, "[::] takes IPv4 clients too");
        let bound = format!("{udp4}[relay]\nbind-ipv6 = \"::1\"\n");
        assert_eq!(shape_of(&bound).relay_families, 2);
        let default = Shape::of(&Config::default());
        assert!(default.streams && default.relay_families == 2, "{default:?}");
    }
}
