//! `[cluster]`: an optional fleet of turnd nodes sharing a registry in Redis (see
//! `crate::cluster`). Absent (the default), turnd is a single node that talks to no
//! Redis at all.

use super::{Listen, ListenTransport};
use crate::turn::fleet::{RedirectPolicy, MAX_DOMAIN};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The environment variable a Redis password may come from (`password-file` wins).
pub const PASSWORD_ENV: &str = "TURND_REDIS_PASSWORD";
/// The longest node id: it is part of a Redis key and of log lines.
pub const MAX_NODE_ID: usize = 64;

/// `[cluster]`. Without `redis` (the default) there is no fleet and the other keys
/// have no effect.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Cluster {
    /// The Redis server: `redis://host:port/db`, or `rediss://` for TLS (verified
    /// against the system's roots). A password in the URL works but is better kept in
    /// `password-file` or `TURND_REDIS_PASSWORD`.
    #[serde(default, serialize_with = "serialize_redacted")]
    pub redis: Option<String>,
    /// A file holding the Redis password (one line; trailing whitespace dropped).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// This node's name in the registry; default: the host name.
    #[serde(default)]
    pub node_id: Option<String>,
    /// Prefix of every Redis key turnd writes (`PREFIX:node:ID`), so fleets can share
    /// one Redis.
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
    /// How often the node publishes itself and reads the others.
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub publish_interval: Duration,
    /// How long a node's entry outlives its last publish: a dead node drops out of
    /// the registry this long after it stopped (plus one publish interval).
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub ttl: Duration,
    /// Allocations on this node from which new Allocates go to a less-loaded node
    /// (300 Try Alternate); unset: no threshold. Also published as the capacity.
    #[serde(default)]
    pub max_allocations: Option<usize>,
    /// Front door: this node sends every Allocate to a serving node (it still answers
    /// Binding and serves Allocates itself when no other node is known).
    #[serde(default)]
    pub front: bool,
    /// The IPv4 address other nodes name when they send clients here.
    #[serde(default)]
    pub advertise_ipv4: Option<SocketAddr>,
    /// The IPv6 address other nodes name when they send clients here.
    #[serde(default)]
    pub advertise_ipv6: Option<SocketAddr>,
    /// The IPv4 address TCP clients are sent to; default: `advertise-ipv4` when a
    /// TCP listener has its port.
    #[serde(default)]
    pub advertise_tcp_ipv4: Option<SocketAddr>,
    /// The IPv6 address TCP clients are sent to; default as for IPv4.
    #[serde(default)]
    pub advertise_tcp_ipv6: Option<SocketAddr>,
    /// The IPv4 address TLS clients are sent to; default: `advertise-ipv4`'s IP
    /// with the first TLS listener's port.
    #[serde(default)]
    pub advertise_tls_ipv4: Option<SocketAddr>,
    /// The IPv6 address TLS clients are sent to; default as for IPv4.
    #[serde(default)]
    pub advertise_tls_ipv6: Option<SocketAddr>,
    /// This node's TLS name, sent as ALTERNATE-DOMAIN to TLS clients sent here.
    #[serde(default)]
    pub tls_domain: Option<String>,
    /// Usage records go to the Redis stream `PREFIX:usage`, trimmed to about this many
    /// entries; 0: no stream.
    #[serde(default = "default_usage_max_len")]
    pub usage_max_len: u64,
    /// Read the fleet's TURN REST secrets from the Redis list `PREFIX:secrets` (newest
    /// first) every publish interval, and accept them besides `[auth] secrets`.
    #[serde(default)]
    pub secrets_from_redis: bool,
    /// A PEM file of the CA(s) a `rediss://` server's certificate is verified against,
    /// in place of the system's roots (a private CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// `[usage]`: where usage records (one per ended allocation) go besides Redis.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Usage {
    /// A JSON-lines file records are appended to (rotate it with copytruncate, or
    /// move it: the file is reopened only after a write fails).
    #[serde(default)]
    pub file: Option<PathBuf>,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            redis: None,
            password_file: None,
            node_id: None,
            key_prefix: default_prefix(),
            publish_interval: default_interval(),
            ttl: default_ttl(),
            max_allocations: None,
            front: false,
            advertise_ipv4: None,
            advertise_ipv6: None,
            advertise_tcp_ipv4: None,
            advertise_tcp_ipv6: None,
            advertise_tls_ipv4: None,
            advertise_tls_ipv6: None,
            tls_domain: None,
            usage_max_len: default_usage_max_len(),
            secrets_from_redis: false,
            ca_file: None,
        }
    }
}

fn default_usage_max_len() -> u64 {
    100_000
}

/// `turnd check-config` prints the effective config: a password in the URL is shown
/// as `***`.
fn serialize_redacted<S: serde::Serializer>(url: &Option<String>, serializer: S) -> Result<S::Ok, S::Error> {
    match url {
        Some(url) => serializer.serialize_some(&redact_url(url)),
        None => serializer.serialize_none(),
    }
}

/// `scheme://user:password@host...` with the password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let (authority, path) = rest.split_once('/').map_or((rest, None), |(a, p)| (a, Some(p)));
    let Some((credentials, host)) = authority.rsplit_once('@') else { return url.to_owned() };
    let user = credentials.split_once(':').map_or("", |(user, _)| user);
    let shown = if credentials.contains(':') { format!("{user}:***") } else { "***".to_owned() };
    let path = path.map(|p| format!("/{p}")).unwrap_or_default();
    format!("{scheme}://{shown}@{host}{path}")
}

fn default_prefix() -> String {
    "turnd".into()
}

fn default_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_ttl() -> Duration {
    Duration::from_secs(3)
}

impl Cluster {
    /// Whether this node is part of a fleet (`redis` is set).
    pub fn enabled(&self) -> bool {
        self.redis.is_some()
    }

    /// The core's redirect policy (none without a fleet).
    pub fn redirect_policy(&self) -> RedirectPolicy {
        match self.enabled() {
            true => RedirectPolicy { front: self.front, max_allocations: self.max_allocations },
            false => RedirectPolicy::default(),
        }
    }

    /// The checks beyond the types: `(key, what is wrong)`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let scheme = self.redis.as_deref().map(|url| url.split_once("://").map(|(s, _)| s));
        if !matches!(scheme, None | Some(Some("redis" | "rediss"))) {
            return Err(("cluster.redis", "must be a redis:// or rediss:// URL".into()));
        }
        if self.ca_file.is_some() && !matches!(scheme, Some(Some("rediss"))) {
            return Err(("cluster.ca-file", "needs a rediss:// URL in cluster.redis".into()));
        }
        if let Some(id) = &self.node_id {
            if !is_node_id(id) {
                return Err((
                    "cluster.node-id",
                    format!("1 to {MAX_NODE_ID} characters of letters, digits, '.', '-' and '_'"),
                ));
            }
        }
        if !is_node_id(&self.key_prefix) {
            return Err(("cluster.key-prefix", format!("1 to {MAX_NODE_ID} of letters, digits, '.', '-', '_'")));
        }
        if self.publish_interval < Duration::from_millis(100) || self.publish_interval > Duration::from_secs(60) {
            return Err(("cluster.publish-interval", "must be between 100ms and 60s".into()));
        }
        if self.ttl <= self.publish_interval || self.ttl > Duration::from_secs(600) {
            return Err(("cluster.ttl", "must be longer than publish-interval and at most 10m".into()));
        }
        if self.max_allocations == Some(0) {
            return Err(("cluster.max-allocations", "must be at least 1 (leave it out for no threshold)".into()));
        }
        for (key, address, v4) in [
            ("cluster.advertise-ipv4", self.advertise_ipv4, true),
            ("cluster.advertise-ipv6", self.advertise_ipv6, false),
            ("cluster.advertise-tcp-ipv4", self.advertise_tcp_ipv4, true),
            ("cluster.advertise-tcp-ipv6", self.advertise_tcp_ipv6, false),
            ("cluster.advertise-tls-ipv4", self.advertise_tls_ipv4, true),
            ("cluster.advertise-tls-ipv6", self.advertise_tls_ipv6, false),
        ] {
            if let Some(address) = address {
                if address.is_ipv4() != v4 || !is_advertisable(address) {
                    return Err((key, format!("{address}: needs a unicast address of its family and a port")));
                }
            }
        }
        if self.usage_max_len > 100_000_000 {
            return Err(("cluster.usage-max-len", "at most 100000000 (Redis keeps the stream in memory)".into()));
        }
        if let Some(domain) = &self.tls_domain {
            if !is_domain(domain) {
                return Err(("cluster.tls-domain", format!("not a DNS name of at most {MAX_DOMAIN} characters")));
            }
        }
        Ok(())
    }
}

impl Cluster {
    /// The checks of the per-transport advertised addresses against the listeners:
    /// a node is not advertised for a transport it has no listener for.
    pub fn validate_transports(&self, listen: &[Listen]) -> Result<(), (&'static str, String)> {
        let has = |transport| listen.iter().any(|l| l.transport == transport);
        for (key, address, transport) in [
            ("cluster.advertise-tcp-ipv4", self.advertise_tcp_ipv4, ListenTransport::Tcp),
            ("cluster.advertise-tcp-ipv6", self.advertise_tcp_ipv6, ListenTransport::Tcp),
            ("cluster.advertise-tls-ipv4", self.advertise_tls_ipv4, ListenTransport::Tls),
            ("cluster.advertise-tls-ipv6", self.advertise_tls_ipv6, ListenTransport::Tls),
        ] {
            if address.is_some() && !has(transport) {
                let name = if transport == ListenTransport::Tcp { "tcp" } else { "tls" };
                return Err((key, format!("this node has no {name} listener to send {name} clients to")));
            }
        }
        Ok(())
    }
}

/// A node id or key prefix: short, and safe in a Redis key and a log line.
pub fn is_node_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_NODE_ID && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// An address a client can be sent to: unicast, specific, with a port.
pub fn is_advertisable(address: SocketAddr) -> bool {
    let ip = address.ip();
    address.port() != 0 && !ip.is_unspecified() && !ip.is_multicast() && ip != std::net::Ipv4Addr::BROADCAST
}

/// A DNS name for ALTERNATE-DOMAIN: letters, digits, '-' and '.', under the limit.
pub fn is_domain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_DOMAIN
        && name.split('.').all(|label| {
            !label.is_empty() && label.len() <= 63 && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> Cluster {
        toml::from_str("redis = \"redis://127.0.0.1:6379\"").unwrap()
    }

    #[test]
    fn a_password_in_the_url_is_not_printed() {
        assert_eq!(redact_url("redis://:hunter2@10.0.0.5:6379/0"), "redis://:***@10.0.0.5:6379/0");
        assert_eq!(redact_url("rediss://turnd:hunter2@redis:6380"), "rediss://turnd:***@redis:6380");
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        let c = Cluster { redis: Some("redis://:hunter2@h:1".into()), ..Cluster::default() };
        assert!(!toml::to_string(&c).unwrap().contains("hunter2"));
    }

    #[test]
    fn without_redis_there_is_no_fleet() {
        let c = Cluster { front: true, max_allocations: Some(5), ..Cluster::default() };
        assert_eq!((c.enabled(), c.redirect_policy(), c.validate()), (false, RedirectPolicy::default(), Ok(())));
    }

    #[test]
    fn defaults_are_valid() {
        let c = cluster();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(
            (c.publish_interval, c.ttl, c.key_prefix.as_str()),
            (Duration::from_secs(1), Duration::from_secs(3), "turnd")
        );
    }

    /// The error names the file, the line and the key.
    #[test]
    fn a_tls_address_on_a_node_without_a_tls_listener_is_refused_at_its_line() {
        let source = "realm = \"example.org\"\n[[listen]]\ntransport = \"udp\"\naddress = \"0.0.0.0:3478\"\n\
                      [cluster]\nredis = \"redis://127.0.0.1:6379\"\nadvertise-ipv4 = \"203.0.113.11:3478\"\n\
                      advertise-tls-ipv4 = \"203.0.113.11:5349\"\n";
        let error = super::super::tests::parse(source).unwrap_err().to_string();
        assert!(error.contains(":8:") && error.contains("cluster.advertise-tls-ipv4"), "{error}");
        assert!(error.contains("no tls listener"), "{error}");
        let tcp =
            source.replace("advertise-tls-ipv4 = \"203.0.113.11:5349\"", "advertise-tcp-ipv4 = \"203.0.113.11:443\"");
        let error = super::super::tests::parse(&tcp).unwrap_err().to_string();
        assert!(error.contains("cluster.advertise-tcp-ipv4") && error.contains("no tcp listener"), "{error}");
        let with_tls = format!(
            "{}[[listen]]\ntransport = \"tls\"\naddress = \"0.0.0.0:5349\"\n[tls]\ncertificate = \"c.pem\"\nprivate-key = \"k.pem\"\n",
            source.replace("[cluster]", "[[listen]]\ntransport = \"tcp\"\naddress = \"0.0.0.0:3478\"\n[cluster]")
        );
        assert!(super::super::tests::parse(&with_tls).is_ok());
    }

    #[test]
    fn bad_values_name_their_key() {
        let bad = [
            (Cluster { redis: Some("http://x".into()), ..cluster() }, "cluster.redis"),
            (Cluster { node_id: Some("a b".into()), ..cluster() }, "cluster.node-id"),
            (Cluster { ttl: Duration::from_secs(1), ..cluster() }, "cluster.ttl"),
            (Cluster { advertise_ipv4: Some("[::1]:3478".parse().unwrap()), ..cluster() }, "cluster.advertise-ipv4"),
            (Cluster { advertise_ipv4: Some("0.0.0.0:3478".parse().unwrap()), ..cluster() }, "cluster.advertise-ipv4"),
            (Cluster { tls_domain: Some("bad_name".into()), ..cluster() }, "cluster.tls-domain"),
            (Cluster { max_allocations: Some(0), ..cluster() }, "cluster.max-allocations"),
            (
                Cluster { advertise_tls_ipv4: Some("[::1]:5349".parse().unwrap()), ..cluster() },
                "cluster.advertise-tls-ipv4",
            ),
            (
                Cluster { advertise_tcp_ipv6: Some("[::]:3478".parse().unwrap()), ..cluster() },
                "cluster.advertise-tcp-ipv6",
            ),
            (Cluster { ca_file: Some("/etc/ca.pem".into()), ..cluster() }, "cluster.ca-file"),
        ];
        for (config, key) in bad {
            assert_eq!(config.validate().map_err(|e| e.0), Err(key), "{config:?}");
        }
    }
}
