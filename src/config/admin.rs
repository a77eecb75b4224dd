//! `[admin]`: the HTTP admin listener.

use serde::Deserialize;
use std::net::SocketAddr;

/// `[admin]`: the HTTP admin listener (metrics, health, live stats, dashboard).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Admin {
    /// Whether the admin listener runs at all.
    pub enabled: bool,
    /// Where it listens. On a loopback address read-only pages are open; on any other
    /// address everything but `/healthz` and `/metrics` needs the token.
    pub address: SocketAddr,
    /// Bearer token for admin actions (and for everything off loopback). No token: actions
    /// are refused.
    #[serde(skip_serializing)]
    pub token: Option<String>,
    /// Whether `/metrics` needs the token too.
    pub metrics_require_token: bool,
    /// Concurrent admin connections (HTTP and WebSocket together); more are refused.
    pub max_connections: usize,
    /// Of those, from one source (see `limits.ipv4-prefix`/`ipv6-prefix`).
    pub max_connections_per_source: usize,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            enabled: true,
            address: SocketAddr::from(([127, 0, 0, 1], 9641)),
            token: None,
            metrics_require_token: false,
            max_connections: 16,
            max_connections_per_source: 8,
        }
    }
}
