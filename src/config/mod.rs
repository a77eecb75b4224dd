//! The TOML configuration: a strict serde model (unknown keys are errors) turned into
//! the core's validated [`CoreConfig`] plus what the shell needs (listeners, logging).
//!
//! This module holds the whole file's [`Config`], loading and the errors; each section's
//! model lives in a submodule (re-exported here, so every type is `turnd::config::*`),
//! and the checks that go beyond the types are in `validate`.

mod admin;
mod auth;
mod cluster;
mod listen;
mod logging;
mod nat_discovery;
mod relay;
mod tenant;
mod validate;
mod webhook;
mod xdp;

pub use admin::Admin;
pub use auth::{Auth, User};
pub use cluster::{is_advertisable, is_domain, is_node_id, Cluster, Usage, MAX_NODE_ID, PASSWORD_ENV};
pub use listen::{Clients, Listen, ListenTransport, Tcp, Tls};
pub use logging::{Log, LogFormat};
pub use nat_discovery::NatDiscoveryConfig;
pub use relay::{External, Relay, StunServer};
pub use tenant::{normalize_name, TenantConfig, TenantLimits, MAX_TENANTS};
pub use webhook::{Webhook, SYSTEM_CA_FILE};
pub use xdp::XdpMode;

use crate::turn::policy::PeerPolicy;
use crate::turn::{CoreConfig, Quotas, RelayAddresses};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The most workers (event loop threads) a config may ask for.
pub const MAX_WORKERS: usize = 256;

/// A configuration error, naming the file, the line and the key where it can.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML did not parse or did not fit the model (unknown key, wrong type).
    #[error("{path}:{line}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// The parser's message (names the key).
        message: String,
    },
    /// A value is out of range or contradicts another.
    #[error("{path}:{line}: `{key}`: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the key (0 when the key is absent).
        line: usize,
        /// The key, dotted.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// `[limits]`: the core's quotas, read as they are (see [`Quotas`]).
pub type Limits = Quotas;

/// The whole file.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Config {
    /// The realm for long-term credentials.
    pub realm: String,
    /// SOFTWARE attribute value; empty to send none.
    pub software: String,
    /// On SIGTERM, how long existing allocations keep relaying before turnd exits
    /// (new Allocates are turned away meanwhile); 0 exits at once.
    #[serde(with = "humantime_serde")]
    pub drain_time: Duration,
    /// Where new Allocates are sent while draining (300 Try Alternate); unset: 508.
    pub alternate_server: Option<SocketAddr>,
    /// Event loops (threads), each with its own allocations and relay sockets; 0 means
    /// one per available core.
    pub workers: usize,
    /// Listening sockets.
    pub listen: Vec<Listen>,
    /// Relay settings.
    pub relay: Relay,
    /// Credentials.
    pub auth: Auth,
    /// Quotas.
    pub limits: Limits,
    /// Denied clients and trusted proxies.
    pub clients: Clients,
    /// TCP/TLS connection limits.
    pub tcp: Tcp,
    /// TLS certificate.
    pub tls: Tls,
    /// Logging.
    pub log: Log,
    /// The admin listener.
    pub admin: Admin,
    /// RFC 5780 NAT behaviour discovery.
    pub nat_discovery: NatDiscoveryConfig,
    /// Realms besides `realm`, each with its own credentials, limits and peer policy.
    pub tenant: Vec<TenantConfig>,
    /// A fleet sharing a registry in Redis; without `redis`: a single node.
    pub cluster: Cluster,
    /// Where usage records go besides Redis.
    pub usage: Usage,
    /// Not a key: the relay sockets the open-file limit leaves room for, set at start
    /// from the descriptor budget (`None`: no bound).
    #[serde(skip)]
    pub relay_sockets: Option<usize>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            realm: "turnd".into(),
            software: concat!("turnd/", env!("CARGO_PKG_VERSION")).into(),
            drain_time: Duration::from_secs(30),
            alternate_server: None,
            workers: 0,
            // 3478 over UDP and TCP, IPv4 and IPv6 (IPv6 is skipped on hosts without it).
            listen: [ListenTransport::Udp, ListenTransport::Tcp]
                .into_iter()
                .flat_map(|transport| {
                    [
                        Listen::new(transport, SocketAddr::from(([0, 0, 0, 0], 3478))),
                        Listen::new(transport, SocketAddr::from(([0u16; 8], 3478))),
                    ]
                })
                .collect(),
            relay: Relay::default(),
            auth: Auth::default(),
            limits: Limits::default(),
            clients: Clients::default(),
            tcp: Tcp::default(),
            tls: Tls::default(),
            log: Log::default(),
            admin: Admin::default(),
            nat_discovery: NatDiscoveryConfig::default(),
            cluster: Cluster::default(),
            usage: Usage::default(),
            tenant: Vec::new(),
            relay_sockets: None,
        }
    }
}

/// Keys whose values are secrets: never quoted back in an error, which `check-config`
/// prints and a SIGHUP reload writes to the server log.
const SECRET_KEYS: [&str; 5] = ["secrets", "password", "key", "token", "redis"];

/// The parser's message, or, when the error is in the value of a secret-bearing key
/// (found on the error's line or the nearest line above that assigns a key, for a
/// multi-line array), a message that names the key and the expected type only.
fn without_secrets(source: &str, line: usize, message: &str) -> String {
    // These name a key, never a value: nothing to hide, and the key above may be in
    // another table (an unknown `[peers]` right after a user's `password`).
    if ["unknown field", "missing field", "duplicate key"].iter().any(|p| message.starts_with(p)) {
        return message.to_owned();
    }
    let lines: Vec<&str> = source.lines().take(line).collect();
    // The assignment the error line belongs to: the nearest one above, but not past a
    // table header (a `[table]` line), which starts another table's keys.
    let key = lines.iter().rev().take_while(|l| !is_table_header(l)).find_map(|l| {
        let (key, _) = l.split_once('=')?;
        let key = key.trim();
        (!key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')).then_some(key)
    });
    match key {
        Some(key) if SECRET_KEYS.contains(&key) => {
            let expected = message.find(", expected").map_or("", |i| &message[i..]);
            format!("invalid value for `{key}` (not shown: it holds a secret){expected}")
        }
        _ => message.to_owned(),
    }
}

/// `[name]` or `[[name]]` on a line of its own (a comment may follow), as opposed to a
/// line of a multi-line array.
fn is_table_header(line: &str) -> bool {
    let t = line.trim();
    let Some(inner) = t.strip_prefix('[') else { return false };
    let name = inner.trim_start_matches('[');
    let name = name.split(']').next().unwrap_or("");
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_. \"'".contains(&b))
}

fn line_of(source: &str, offset: usize) -> usize {
    source.get(..offset).map_or(1, |s| s.lines().count().max(1) + usize::from(s.ends_with('\n')))
}

/// The line a `key = ` assignment appears on, or 0.
fn line_of_key(source: &str, key: &str) -> usize {
    let leaf = key.rsplit('.').next().unwrap_or(key);
    source
        .lines()
        .position(|l| {
            let t = l.trim_start();
            t.starts_with(leaf) && t[leaf.len()..].trim_start().starts_with('=')
        })
        .map_or(0, |i| i + 1)
}

/// The line of `leaf` in the `index`th (from 0) `header` table (`[[tenant]]`): its
/// `leaf = ` line or `[table.leaf]` header, else the table's own header line, else 0.
fn line_in_table(source: &str, header: &str, index: usize, leaf: &str) -> usize {
    let lines: Vec<&str> = source.lines().collect();
    let is_header = |l: &&str| l.trim() == header;
    let Some(start) = lines.iter().enumerate().filter(|(_, l)| is_header(l)).nth(index).map(|(i, _)| i) else {
        return 0;
    };
    let end = lines.iter().skip(start + 1).position(is_header).map_or(lines.len(), |n| start + 1 + n);
    let table = header.trim_matches(['[', ']']);
    let sub_table = format!("[{table}.{leaf}]");
    lines[start..end]
        .iter()
        .position(|l| {
            let t = l.trim_start();
            t.trim_end() == sub_table || (t.starts_with(leaf) && t[leaf.len()..].trim_start().starts_with('='))
        })
        .map_or(start + 1, |i| start + i + 1)
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let source =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(&source, path)
    }

    /// Parses and validates config text; `path` names it in errors.
    pub fn parse(source: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(source).map_err(|e| {
            let line = e.span().map_or(0, |s| line_of(source, s.start));
            ConfigError::Parse { path: path.to_owned(), line, message: without_secrets(source, line, e.message()) }
        })?;
        config.validate().map_err(|(key, message)| ConfigError::Invalid {
            path: path.to_owned(),
            line: line_of_key(source, key),
            key: key.to_owned(),
            message,
        })?;
        config.validate_tenants().map_err(|(header, index, leaf, message)| ConfigError::Invalid {
            path: path.to_owned(),
            line: line_in_table(source, header, index, leaf),
            key: format!("{}.{leaf}", header.trim_matches(['[', ']'])),
            message,
        })?;
        Ok(config)
    }

    /// How many workers to run: `workers`, or one per available core when it is 0.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_WORKERS),
            n => n,
        }
    }

    /// Whether anyone can authenticate.
    pub fn has_credentials(&self) -> bool {
        !self.auth.user.is_empty()
            || !self.auth.secrets.is_empty()
            || self.auth.webhook.is_some()
            || (self.cluster.enabled() && self.cluster.secrets_from_redis)
            || self.tenant.iter().any(|t| !t.user.is_empty() || !t.secrets.is_empty())
    }

    /// The core's view of this config.
    pub fn core(&self) -> CoreConfig {
        let credentials = tenant::credentials(&self.realm, &self.auth.user, &self.auth.secrets);
        CoreConfig {
            software: (!self.software.is_empty()).then(|| self.software.clone()),
            credentials,
            nonce_lifetime: self.auth.nonce_lifetime,
            max_lifetime: self.relay.max_lifetime,
            mobility: self.relay.mobility,
            port_range: self.relay.port_min..=self.relay.port_max,
            relay_sockets: self.relay_sockets.unwrap_or(usize::MAX),
            relay: RelayAddresses {
                bind_v4: self.relay.bind_ipv4,
                external_v4: self.relay.external_ipv4.and_then(External::address),
                bind_v6: self.relay.bind_ipv6,
                external_v6: self.relay.external_ipv6.and_then(External::address),
                ..RelayAddresses::default()
            },
            policy: {
                let mut policy = PeerPolicy::new(self.relay.allowed_peers.clone(), self.relay.denied_peers.clone());
                policy.allow_host_services(self.relay.allow_host_peers);
                policy
            },
            denied_clients: self.clients.denied.clone(),
            end_at_credential_expiry: self.auth.end_allocations_at_expiry,
            nat_discovery: self.nat_discovery_addresses().ok().flatten(),
            quotas: self.limits,
            lookup: self.auth.webhook.as_ref().map(|w| crate::turn::lookup::LookupSettings {
                max_parked: w.max_parked,
                // The shell answers every lookup within `timeout` (as failed, if need
                // be); the extra second only catches an answer that got lost.
                wait: w.timeout + Duration::from_secs(1),
                cache_size: w.cache_size,
            }),
            tenants: self.core_tenants(),
            redirect: self.cluster.redirect_policy(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `s` as a file named "t.toml"; the section submodules' tests use it too.
    pub(super) fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s, Path::new("t.toml"))
    }

    #[test]
    fn the_shipped_example_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/turnd.toml");
        let config = Config::load(&path).unwrap();
        assert!(config.has_credentials());
    }

    #[test]
    fn unknown_keys_name_the_file_line_and_key() {
        let err = parse("realm = \"x\"\n\n[relay]\nport-minn = 3\n").unwrap_err().to_string();
        assert!(err.starts_with("t.toml:4:"), "{err}");
        assert!(err.contains("port-minn"), "{err}");
        // An unknown table right after a secret key names that table, not the secret.
        let text = "realm = \"x\"\n[[auth.user]]\nname = \"u\"\npassword = \"p\"\n[peers]\nallow-loopback = true\n";
        let err = parse(text).unwrap_err().to_string();
        assert!(err.starts_with("t.toml:5:") && err.contains("unknown field `peers`"), "{err}");
    }

    #[test]
    fn errors_in_secret_values_do_not_quote_them() {
        for (text, key) in [
            ("[auth]\nsecrets = \"hunter2-secret\"\n", "secrets"),
            ("[auth]\nsecrets = [\n  \"ok\",\n  \"hunter2-secret\",\n  7\n]\n", "secrets"),
            ("[[auth.user]]\nname = \"a\"\npassword = 918273645\n", "password"),
            ("[admin]\ntoken = [\"hunter2-secret\"]\n", "token"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(!err.contains("hunter2") && !err.contains("918273645") && !err.contains('7'), "{err}");
            assert!(err.contains(&format!("`{key}`")) && err.contains("expected"), "{err}");
        }
        // Other keys still quote what is wrong.
        let err = parse("realm = 5\n").unwrap_err().to_string();
        assert!(err.contains('5'), "{err}");
    }
}
