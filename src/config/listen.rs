//! `[[listen]]` and the sections about the connections listeners accept: `[clients]`
//! (denied clients, trusted proxies), `[tcp]` (stream limits) and `[tls]`.

use crate::turn::source::SourcePrefix;
use ipnet::IpNet;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How a listener carries STUN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenTransport {
    /// UDP datagrams.
    Udp,
    /// TCP streams.
    Tcp,
    /// TLS over TCP.
    Tls,
}

/// `[[listen]]`: one listening socket.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Listen {
    /// udp, tcp or tls.
    pub transport: ListenTransport,
    /// Address and port; port 0 picks a free port (logged at startup).
    pub address: SocketAddr,
    /// TCP and TLS: each connection starts with a PROXY protocol (v1 or v2) header
    /// naming the real client, sent by a proxy in `clients.trusted-proxies`.
    #[serde(default)]
    pub proxy_protocol: bool,
}

/// `[clients]`: who may talk to turnd, and through which proxies.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Clients {
    /// Clients whose packets and connections are dropped before any parsing.
    pub denied: Vec<IpNet>,
    /// Proxies allowed to send a PROXY protocol header on `proxy-protocol` listeners;
    /// a connection from anywhere else to such a listener is refused.
    pub trusted_proxies: Vec<IpNet>,
}

/// `[tcp]`: limits on TCP and TLS client connections.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Tcp {
    /// From accept (TLS handshake included) to the first whole message, and to finish
    /// any message once started: a slowloris client is cut after this.
    #[serde(with = "humantime_serde")]
    pub first_message_timeout: Duration,
    /// A connection with no traffic for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Concurrent TCP and TLS connections; more are refused at accept.
    pub max_connections: usize,
    /// Concurrent connections from one source (an IPv4 address, an IPv6 /64: see
    /// `limits.ipv4-prefix`/`ipv6-prefix`); more from it are refused at accept.
    pub max_connections_per_source: usize,
    /// Of those, connections that hold no allocation yet.
    pub max_unauthenticated_per_source: usize,
    /// A connection that holds no allocation this long after accept is closed.
    #[serde(with = "humantime_serde")]
    pub unauthenticated_timeout: Duration,
    /// A client that leaves answers unread this long (its outbound queue full, or a
    /// write blocked) is cut.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
}

impl Default for Tcp {
    fn default() -> Self {
        let d = crate::net::stream::StreamLimits::default();
        Tcp {
            first_message_timeout: d.first_message_timeout,
            idle_timeout: d.idle_timeout,
            max_connections: d.max_connections,
            max_connections_per_source: d.max_connections_per_source,
            max_unauthenticated_per_source: d.max_unauthenticated_per_source,
            unauthenticated_timeout: d.unauthenticated_timeout,
            write_timeout: d.write_timeout,
        }
    }
}

impl Tcp {
    /// The shell's view; `sources` groups client addresses as `[limits]` says.
    pub fn limits(&self, sources: SourcePrefix) -> crate::net::stream::StreamLimits {
        crate::net::stream::StreamLimits {
            first_message_timeout: self.first_message_timeout,
            idle_timeout: self.idle_timeout,
            max_connections: self.max_connections,
            max_connections_per_source: self.max_connections_per_source,
            max_unauthenticated_per_source: self.max_unauthenticated_per_source,
            unauthenticated_timeout: self.unauthenticated_timeout,
            write_timeout: self.write_timeout,
            sources,
        }
    }
}

/// `[tls]`: the certificate for `tls` listeners (PEM files; reloaded on SIGHUP and
/// when the files change).
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Tls {
    /// Certificate chain, leaf first.
    pub certificate: Option<PathBuf>,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub private_key: Option<PathBuf>,
}
