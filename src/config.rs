//! The TOML configuration: a strict serde model (unknown keys are errors) turned into
//! the core's validated [`CoreConfig`] plus what the shell needs (listeners, logging).

use crate::turn::auth::Credentials;
use crate::turn::policy::PeerPolicy;
use crate::turn::source::SourcePrefix;
use crate::turn::{CoreConfig, NatDiscovery, Quotas, RelayAddresses};
use ipnet::IpNet;
use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
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

/// `[relay]`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Relay {
    /// Lowest relay port.
    pub port_min: u16,
    /// Highest relay port.
    pub port_max: u16,
    /// IPv4 address relay sockets bind to (default: the address the request came to).
    pub bind_ipv4: Option<Ipv4Addr>,
    /// IPv4 address advertised to clients (the public IP of a server behind NAT).
    pub external_ipv4: Option<Ipv4Addr>,
    /// IPv6 address relay sockets bind to.
    pub bind_ipv6: Option<Ipv6Addr>,
    /// IPv6 address advertised to clients.
    pub external_ipv6: Option<Ipv6Addr>,
    /// The longest lifetime granted to an allocation.
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Duration,
    /// Peers allowed even if denied by default (e.g. "10.0.0.0/8" for an internal SFU).
    pub allowed_peers: Vec<IpNet>,
    /// Peers denied in addition to the built-in list.
    pub denied_peers: Vec<IpNet>,
    /// Whether peers may be any port of the host's own addresses, not only the relay
    /// ports of its other allocations: for tests and single-host labs only.
    pub allow_host_peers: bool,
}

impl Default for Relay {
    fn default() -> Self {
        Relay {
            port_min: 49152,
            port_max: 65535,
            bind_ipv4: None,
            external_ipv4: None,
            bind_ipv6: None,
            external_ipv6: None,
            max_lifetime: Duration::from_secs(3600),
            allowed_peers: Vec::new(),
            denied_peers: Vec::new(),
            allow_host_peers: false,
        }
    }
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

/// `[[auth.user]]`: a static user, by password or precomputed key.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct User {
    /// The username.
    pub name: String,
    /// The plaintext password.
    #[serde(default, skip_serializing)]
    pub password: Option<String>,
    /// Or the key MD5(name:realm:password) in hex (as coturn's turnadmin -k prints).
    #[serde(default, skip_serializing)]
    pub key: Option<String>,
}

/// `[auth]`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Auth {
    /// How long a nonce stays valid before 438 Stale Nonce.
    #[serde(with = "humantime_serde")]
    pub nonce_lifetime: Duration,
    /// Static users.
    pub user: Vec<User>,
    /// TURN REST API shared secrets (several during rotation).
    #[serde(skip_serializing)]
    pub secrets: Vec<String>,
    /// Whether an allocation made with a REST credential ends when the credential
    /// expires, not only at its next refresh (which the expired credential fails).
    pub end_allocations_at_expiry: bool,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            nonce_lifetime: Duration::from_secs(600),
            user: Vec::new(),
            secrets: Vec::new(),
            end_allocations_at_expiry: false,
        }
    }
}

/// `[limits]`: the core's quotas, read as they are (see [`Quotas`]).
pub type Limits = Quotas;

/// `[nat-discovery]`: RFC 5780 NAT behaviour discovery on Binding (as coturn's
/// `--rfc5780`); see `turn::nat_discovery`. Off unless `alternate-address` is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct NatDiscoveryConfig {
    /// A second IP address of this host, of the primary's family: the primary is the
    /// first UDP `[[listen]]` of that family, which must name a specific address and port.
    pub alternate_address: Option<IpAddr>,
    /// The alternate port (default: the primary's port + 1).
    pub alternate_port: Option<u16>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Log {
    /// A tracing filter: "info", "turnd=debug"...
    pub level: String,
    /// text or json.
    pub format: LogFormat,
}

impl Default for Log {
    fn default() -> Self {
        Log { level: "info".into(), format: LogFormat::Text }
    }
}

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
                        Listen { transport, address: SocketAddr::from(([0, 0, 0, 0], 3478)), proxy_protocol: false },
                        Listen { transport, address: SocketAddr::from(([0u16; 8], 3478)), proxy_protocol: false },
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
        }
    }
}

/// Keys whose values are secrets: never quoted back in an error, which `check-config`
/// prints and a SIGHUP reload writes to the server log.
const SECRET_KEYS: [&str; 4] = ["secrets", "password", "key", "token"];

/// The parser's message, or, when the error is in the value of a secret-bearing key
/// (found on the error's line or the nearest line above that assigns a key, for a
/// multi-line array), a message that names the key and the expected type only.
fn without_secrets(source: &str, line: usize, message: &str) -> String {
    let lines: Vec<&str> = source.lines().take(line).collect();
    let key = lines.iter().rev().find_map(|l| {
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
        Ok(config)
    }

    /// Checks values that the types alone do not constrain.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.realm.is_empty() || self.realm.len() > 127 {
            return Err(("realm", "must be 1 to 127 characters (RFC 8489 §14.9)".into()));
        }
        if self.listen.is_empty() {
            return Err(("listen", "at least one listener is needed".into()));
        }
        if self.workers > MAX_WORKERS {
            return Err(("workers", format!("at most {MAX_WORKERS} (0 means one per core)")));
        }
        if self.listen.iter().any(|l| l.proxy_protocol && l.transport == ListenTransport::Udp) {
            return Err(("proxy-protocol", "only tcp and tls listeners take a PROXY protocol header".into()));
        }
        if self.listen.iter().any(|l| l.proxy_protocol) && self.clients.trusted_proxies.is_empty() {
            return Err(("proxy-protocol", "needs [clients] trusted-proxies: the proxies allowed to send it".into()));
        }
        let has_tls = self.listen.iter().any(|l| l.transport == ListenTransport::Tls);
        if has_tls && (self.tls.certificate.is_none() || self.tls.private_key.is_none()) {
            return Err(("transport", "a \"tls\" listener needs [tls] certificate and private-key".into()));
        }
        if self.tcp.first_message_timeout < Duration::from_secs(1) || self.tcp.idle_timeout < Duration::from_secs(10) {
            return Err(("tcp.first-message-timeout", "timeouts must be at least 1s (idle-timeout 10s)".into()));
        }
        if self.tcp.max_connections == 0 {
            return Err(("tcp.max-connections", "must be at least 1".into()));
        }
        if self.tcp.max_connections_per_source == 0 {
            return Err(("tcp.max-connections-per-source", "must be at least 1".into()));
        }
        if self.tcp.max_unauthenticated_per_source == 0 {
            return Err(("tcp.max-unauthenticated-per-source", "must be at least 1".into()));
        }
        if self.tcp.unauthenticated_timeout < Duration::from_secs(1)
            || self.tcp.unauthenticated_timeout > self.tcp.idle_timeout
        {
            return Err(("tcp.unauthenticated-timeout", "must be at least 1s and at most idle-timeout".into()));
        }
        if self.tcp.write_timeout < Duration::from_secs(1) {
            return Err(("tcp.write-timeout", "must be at least 1s".into()));
        }
        if !(1..=32).contains(&self.limits.ipv4_prefix) {
            return Err(("limits.ipv4-prefix", "must be 1 to 32".into()));
        }
        if !(1..=128).contains(&self.limits.ipv6_prefix) {
            return Err(("limits.ipv6-prefix", "must be 1 to 128".into()));
        }
        if self.relay.port_min > self.relay.port_max || self.relay.port_min == 0 {
            return Err((
                "relay.port-min",
                format!("relay port range {}-{} is empty or starts at 0", self.relay.port_min, self.relay.port_max),
            ));
        }
        if self.relay.max_lifetime < Duration::from_secs(60) {
            return Err(("relay.max-lifetime", "must be at least 60s".into()));
        }
        if self.auth.nonce_lifetime < Duration::from_secs(10) {
            return Err(("auth.nonce-lifetime", "must be at least 10s".into()));
        }
        for user in &self.auth.user {
            match (&user.password, &user.key) {
                (Some(_), None) => {}
                (None, Some(key)) if parse_hex_key(key).is_some() => {}
                (None, Some(_)) => {
                    return Err(("auth.user.key", format!("user {:?}: key must be 32 hex digits", user.name)))
                }
                _ => {
                    return Err((
                        "auth.user.name",
                        format!("user {:?}: give exactly one of password or key", user.name),
                    ))
                }
            }
            if user.name.is_empty() || user.name.len() > 512 {
                return Err(("auth.user.name", "must be 1 to 512 bytes (RFC 8489 §14.3)".into()));
            }
        }
        if self.auth.secrets.iter().any(|s| s.is_empty()) {
            return Err(("auth.secrets", "a shared secret cannot be empty".into()));
        }
        let l = &self.limits;
        if [
            l.total_allocations,
            l.allocations_per_user,
            l.allocations_per_ip,
            l.permissions_per_allocation,
            l.channels_per_allocation,
        ]
        .contains(&0)
        {
            return Err(("limits", "limits must be at least 1".into()));
        }
        if l.unauthenticated_per_second == 0 || l.unauthenticated_burst == 0 {
            return Err(("limits.unauthenticated-per-second", "must be at least 1 (and its burst too)".into()));
        }
        self.validate_admin()?;
        self.nat_discovery_addresses()?;
        Ok(())
    }

    /// The RFC 5780 addresses (`None`: discovery is off), or what is wrong with them.
    pub fn nat_discovery_addresses(&self) -> Result<Option<NatDiscovery>, (&'static str, String)> {
        const KEY: &str = "nat-discovery.alternate-address";
        let n = &self.nat_discovery;
        let Some(alternate_ip) = n.alternate_address else {
            if n.alternate_port.is_some() {
                return Err(("nat-discovery.alternate-port", "needs nat-discovery.alternate-address".into()));
            }
            return Ok(None);
        };
        if alternate_ip.is_unspecified() || alternate_ip.is_multicast() {
            return Err((KEY, format!("{alternate_ip} is not an address of this host to answer from")));
        }
        let primary = self
            .listen
            .iter()
            .find(|l| l.transport == ListenTransport::Udp && l.address.is_ipv4() == alternate_ip.is_ipv4())
            .map(|l| l.address)
            .ok_or((KEY, format!("needs a udp [[listen]] of the same family as {alternate_ip} (the primary)")))?;
        if primary.ip().is_unspecified() || primary.port() == 0 {
            return Err((
                KEY,
                format!(
                    "the primary, the first udp [[listen]] of its family, must have a specific address and port, not {primary}"
                ),
            ));
        }
        if primary.ip() == alternate_ip {
            return Err((KEY, format!("must differ from the primary address {}", primary.ip())));
        }
        let alternate_port = match n.alternate_port {
            Some(port) => port,
            None => primary
                .port()
                .checked_add(1)
                .ok_or(("nat-discovery.alternate-port", "needed: the primary port is 65535".to_owned()))?,
        };
        if alternate_port == 0 || alternate_port == primary.port() {
            return Err((
                "nat-discovery.alternate-port",
                format!("must be a port other than 0 and the primary's {}", primary.port()),
            ));
        }
        Ok(Some(NatDiscovery { primary, alternate: SocketAddr::new(alternate_ip, alternate_port) }))
    }

    fn validate_admin(&self) -> Result<(), (&'static str, String)> {
        let a = &self.admin;
        if let Some(token) = &a.token {
            // Tokens travel in an HTTP header, so visible ASCII only; short ones are guessable.
            if token.len() < 16 || token.len() > 256 || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(("admin.token", "must be 16 to 256 visible ASCII characters".into()));
            }
        } else if a.metrics_require_token {
            return Err(("admin.metrics-require-token", "needs admin.token".into()));
        }
        if !(1..=1024).contains(&a.max_connections) {
            return Err(("admin.max-connections", "must be 1 to 1024".into()));
        }
        if !(1..=a.max_connections).contains(&a.max_connections_per_source) {
            return Err(("admin.max-connections-per-source", "must be 1 to admin.max-connections".into()));
        }
        Ok(())
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
        !self.auth.user.is_empty() || !self.auth.secrets.is_empty()
    }

    /// The core's view of this config.
    pub fn core(&self) -> CoreConfig {
        let mut credentials = Credentials::new(self.realm.clone());
        for user in &self.auth.user {
            match (&user.password, user.key.as_deref().and_then(parse_hex_key)) {
                (Some(password), _) => credentials.add_user(&user.name, password),
                (None, Some(key)) => credentials.add_user_key(&user.name, key),
                (None, None) => {}
            }
        }
        for secret in &self.auth.secrets {
            credentials.add_secret(secret.as_bytes());
        }
        CoreConfig {
            software: (!self.software.is_empty()).then(|| self.software.clone()),
            credentials,
            nonce_lifetime: self.auth.nonce_lifetime,
            max_lifetime: self.relay.max_lifetime,
            port_range: self.relay.port_min..=self.relay.port_max,
            relay: RelayAddresses {
                bind_v4: self.relay.bind_ipv4,
                external_v4: self.relay.external_ipv4,
                bind_v6: self.relay.bind_ipv6,
                external_v6: self.relay.external_ipv6,
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
        }
    }
}

fn parse_hex_key(hex: &str) -> Option<[u8; 16]> {
    let hex = hex.strip_prefix("0x").unwrap_or(hex);
    if hex.len() != 32 {
        return None;
    }
    let mut key = [0u8; 16];
    for (i, b) in key.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
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
    }

    #[test]
    fn bad_values_name_the_key_and_line() {
        let err = parse("[relay]\nport-min = 60000\nport-max = 50000\n").unwrap_err().to_string();
        assert_eq!(err, "t.toml:2: `relay.port-min`: relay port range 60000-50000 is empty or starts at 0");
        let err = parse("[[auth.user]]\nname = \"a\"\n").unwrap_err().to_string();
        assert!(err.contains("exactly one of password or key"), "{err}");
        let err = parse("[relay]\nmax-lifetime = \"soon\"\n").unwrap_err().to_string();
        assert!(err.starts_with("t.toml:2:"), "{err}");
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

    #[test]
    fn nat_discovery_is_off_unless_an_alternate_address_is_set_and_is_checked() {
        let listen = "[[listen]]\ntransport = \"udp\"\naddress = \"192.0.2.1:3478\"\n";
        assert_eq!(parse(listen).unwrap().core().nat_discovery, None);
        let on = parse(&format!("{listen}[nat-discovery]\nalternate-address = \"192.0.2.3\"\n")).unwrap();
        let d = on.core().nat_discovery.unwrap();
        assert_eq!((d.primary, d.alternate), ("192.0.2.1:3478".parse().unwrap(), "192.0.2.3:3479".parse().unwrap()));
        let port =
            parse(&format!("{listen}[nat-discovery]\nalternate-address = \"192.0.2.3\"\nalternate-port = 4000\n"));
        assert_eq!(port.unwrap().core().nat_discovery.unwrap().alternate.port(), 4000);
        for (text, expected) in [
            (format!("{listen}[nat-discovery]\nalternate-address = \"192.0.2.1\"\n"), "t.toml:5: `nat-discovery.alternate-address`: must differ"),
            (format!("{listen}[nat-discovery]\nalternate-address = \"2001:db8::1\"\n"), "t.toml:5: `nat-discovery.alternate-address`: needs a udp"),
            (format!("{listen}[nat-discovery]\nalternate-port = 4000\n"), "t.toml:5: `nat-discovery.alternate-port`: needs"),
            (format!("{listen}[nat-discovery]\nalternate-address = \"192.0.2.3\"\nalternate-port = 3478\n"), "t.toml:6: `nat-discovery.alternate-port`: must be"),
            ("[[listen]]\ntransport = \"udp\"\naddress = \"0.0.0.0:3478\"\n[nat-discovery]\nalternate-address = \"192.0.2.3\"\n".to_owned(), "specific address and port"),
        ] {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.starts_with(expected) || err.contains(expected), "{err}");
        }
    }

    #[test]
    fn precomputed_keys_are_accepted() {
        let c = parse("[[auth.user]]\nname = \"a\"\nkey = \"0x0123456789abcdef0123456789abcdef\"\n").unwrap();
        assert_eq!(c.core().credentials.user_count(), 1);
    }
}
