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
    /// TLS only: one port for TURN and HTTPS. Connections whose ClientHello is not TURN
    /// (an ALPN other than `stun.turn`/`stun.nat-discovery`, or no ALPN and a server
    /// name that is not TURN's) are spliced, still encrypted, to this address.
    #[serde(default)]
    pub passthrough_to: Option<SocketAddr>,
    /// With `passthrough-to`: the server names (SNI) that are TURN's when a client
    /// offers no ALPN; empty means the names the `[tls]` certificate is valid for.
    #[serde(default)]
    pub turn_names: Vec<String>,
    /// The realm (tenant) of the clients this listener takes: the top-level `realm`
    /// when unset, or a `[[tenant]]`'s. On a tls listener a tenant's `server-names`
    /// take precedence.
    #[serde(default)]
    pub realm: Option<String>,
}

/// The most `turn-names` one listener takes.
pub const MAX_TURN_NAMES: usize = 64;

impl Listen {
    /// A listener on `address` with no options.
    pub fn new(transport: ListenTransport, address: SocketAddr) -> Listen {
        Listen { transport, address, proxy_protocol: false, passthrough_to: None, turn_names: Vec::new(), realm: None }
    }

    /// `turn-names` as the ClientHello's server name is compared with them: lower
    /// case, without a trailing dot.
    pub fn normalized_turn_names(&self) -> Vec<String> {
        self.turn_names.iter().map(|n| n.trim_end_matches('.').to_ascii_lowercase()).collect()
    }

    /// The checks of `passthrough-to` and `turn-names` (the key at fault, and why).
    pub fn validate_passthrough(&self) -> Result<(), (&'static str, String)> {
        let Some(backend) = self.passthrough_to else {
            if !self.turn_names.is_empty() {
                return Err(("turn-names", "only with passthrough-to".into()));
            }
            return Ok(());
        };
        if self.transport != ListenTransport::Tls {
            return Err(("passthrough-to", "only tls listeners pass connections through".into()));
        }
        if self.proxy_protocol {
            return Err((
                "passthrough-to",
                "not with proxy-protocol (the backend would not learn the client's address)".into(),
            ));
        }
        if backend.port() == 0 || backend.ip().is_unspecified() {
            return Err(("passthrough-to", format!("{backend}: needs a specific address and port")));
        }
        let same_port = backend.port() == self.address.port();
        if same_port && (self.address.ip().is_unspecified() || self.address.ip() == backend.ip()) {
            return Err(("passthrough-to", format!("{backend} is this listener itself")));
        }
        if self.turn_names.len() > MAX_TURN_NAMES {
            return Err(("turn-names", format!("at most {MAX_TURN_NAMES} names")));
        }
        for name in self.normalized_turn_names() {
            if rustls_pki_types::DnsName::try_from(name.as_str()).is_err() || name.parse::<std::net::IpAddr>().is_ok() {
                return Err(("turn-names", format!("{name:?} is not a DNS name")));
            }
        }
        Ok(())
    }
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
    /// Serve each connection on its worker's event loop once its first message chose
    /// the worker (reads, TLS and batched writes on the worker's thread, no per-message
    /// hand-off between threads) instead of on a task of its own. On by default; a
    /// change applies to connections accepted after a reload.
    pub worker_loop: bool,
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
            worker_loop: d.worker_loop,
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
            worker_loop: self.worker_loop,
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

#[cfg(test)]
mod tests {
    use super::super::tests::parse;

    const TLS: &str = "[tls]\ncertificate = \"c.pem\"\nprivate-key = \"k.pem\"\n";

    fn listener(lines: &str) -> String {
        format!("[[listen]]\ntransport = \"tls\"\naddress = \"0.0.0.0:443\"\n{lines}\n{TLS}")
    }

    #[test]
    fn passthrough_takes_a_backend_and_turn_names() {
        let config = parse(&listener(
            "passthrough-to = \"127.0.0.1:8443\"\nturn-names = [\"Turn.Example.com.\", \"turn2.example.com\"]",
        ))
        .unwrap();
        let listen = &config.listen[0];
        assert_eq!(listen.passthrough_to, Some("127.0.0.1:8443".parse().unwrap()));
        assert_eq!(listen.normalized_turn_names(), ["turn.example.com", "turn2.example.com"]);
        assert_eq!(parse(&listener("")).unwrap().listen[0].passthrough_to, None, "off by default");
    }

    #[test]
    fn passthrough_mistakes_name_the_key_and_its_line() {
        for (lines, key, why) in [
            ("passthrough-to = \"0.0.0.0:8443\"", "passthrough-to", "specific address"),
            ("passthrough-to = \"127.0.0.1:0\"", "passthrough-to", "specific address"),
            ("passthrough-to = \"127.0.0.1:443\"", "passthrough-to", "this listener itself"),
            ("passthrough-to = \"127.0.0.1:8443\"\nproxy-protocol = true", "passthrough-to", "proxy-protocol"),
            ("turn-names = [\"turn.example.com\"]", "turn-names", "only with passthrough-to"),
            ("passthrough-to = \"127.0.0.1:8443\"\nturn-names = [\"not a name\"]", "turn-names", "not a DNS name"),
            ("passthrough-to = \"127.0.0.1:8443\"\nturn-names = [\"192.0.2.1\"]", "turn-names", "not a DNS name"),
        ] {
            let text = format!("[clients]\ntrusted-proxies = [\"10.0.0.1/32\"]\n{}", listener(lines));
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(&format!("`{key}`")) && err.contains(why), "{lines}: {err}");
        }
        let text = "[[listen]]\ntransport = \"tcp\"\naddress = \"0.0.0.0:443\"\npassthrough-to = \"127.0.0.1:8443\"\n";
        let err = parse(text).unwrap_err().to_string();
        assert!(err.contains("only tls listeners"), "{err}");
        let err = parse(&listener("passthrough = \"127.0.0.1:8443\"")).unwrap_err().to_string();
        assert!(err.contains("unknown field `passthrough`"), "{err}");
    }
}
