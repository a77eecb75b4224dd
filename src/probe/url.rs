//! `stun:`/`stuns:` (RFC 7064) and `turn:`/`turns:` (RFC 7065) URLs.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

/// Default port of `stun:` and `turn:` URLs (RFC 7064 §3.2, RFC 7065 §3.2).
pub const DEFAULT_PORT: u16 = 3478;
/// Default port of `stuns:` and `turns:` URLs (RFC 7064 §3.2, RFC 7065 §3.2).
pub const DEFAULT_TLS_PORT: u16 = 5349;

/// URL schemes the probe understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `stun:` (RFC 7064).
    Stun,
    /// `stuns:`: STUN over TLS (RFC 7064).
    Stuns,
    /// `turn:` (RFC 7065).
    Turn,
    /// `turns:`: TURN over TLS (RFC 7065).
    Turns,
}

impl Scheme {
    /// Whether the scheme names a TURN server (which the probe then allocates on).
    pub fn is_turn(self) -> bool {
        matches!(self, Scheme::Turn | Scheme::Turns)
    }
}

/// How the probe talks to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Datagrams.
    Udp,
    /// A TCP connection with RFC 8489 §6.2.2 / RFC 8656 §12.5 framing.
    Tcp,
    /// TLS over TCP.
    Tls,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        })
    }
}

/// A parsed `stun:`/`stuns:`/`turn:`/`turns:` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    /// The scheme.
    pub scheme: Scheme,
    /// Host name or IP address (without brackets).
    pub host: String,
    /// The port (the scheme's default when the URL has none).
    pub port: u16,
    /// The transport: `?transport=` for TURN, else the scheme's.
    pub transport: Transport,
}

/// Why a URL is not a STUN/TURN URL the probe can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Not one of the four schemes.
    #[error("unknown scheme (expected stun:, stuns:, turn: or turns:)")]
    Scheme,
    /// `turn://host`: RFC 7065 URLs have no authority part.
    #[error("no '//' after the scheme: write turn:HOST[:PORT] (RFC 7065)")]
    Slashes,
    /// An empty host or a broken `[v6]` literal.
    #[error("missing or malformed host")]
    Host,
    /// A port that is not a number in 1..=65535.
    #[error("malformed port")]
    Port,
    /// A query other than `transport=udp|tcp`, or one on a `stun:` URL.
    #[error("unsupported query {0:?} (only turn: URLs take ?transport=udp or ?transport=tcp)")]
    Query(String),
    /// `turns:...?transport=udp` is DTLS, which the probe does not speak.
    #[error("turns: over UDP is DTLS, which the probe does not support")]
    Dtls,
}

impl FromStr for ServerUrl {
    type Err = UrlError;

    fn from_str(url: &str) -> Result<Self, UrlError> {
        let (scheme, rest) = url.split_once(':').ok_or(UrlError::Scheme)?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "stun" => Scheme::Stun,
            "stuns" => Scheme::Stuns,
            "turn" => Scheme::Turn,
            "turns" => Scheme::Turns,
            _ => return Err(UrlError::Scheme),
        };
        if rest.starts_with("//") {
            return Err(UrlError::Slashes);
        }
        let (authority, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let (host, port) = split_host_port(authority)?;
        let tls = matches!(scheme, Scheme::Stuns | Scheme::Turns);
        let mut transport = if tls { Transport::Tls } else { Transport::Udp };
        if let Some(query) = query {
            let value = query.strip_prefix("transport=").filter(|_| scheme.is_turn());
            transport = match (value.map(str::to_ascii_lowercase).as_deref(), tls) {
                (Some("tcp"), false) => Transport::Tcp,
                (Some("udp"), false) => Transport::Udp,
                (Some("tcp"), true) => Transport::Tls,
                (Some("udp"), true) => return Err(UrlError::Dtls),
                _ => return Err(UrlError::Query(query.to_owned())),
            };
        }
        let port = port.unwrap_or(if tls { DEFAULT_TLS_PORT } else { DEFAULT_PORT });
        Ok(ServerUrl { scheme, host, port, transport })
    }
}

/// Splits `host[:port]` or `[v6][:port]`.
fn split_host_port(authority: &str) -> Result<(String, Option<u16>), UrlError> {
    let parse_port = |p: &str| p.parse::<u16>().ok().filter(|p| *p != 0).ok_or(UrlError::Port);
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or(UrlError::Host)?;
        host.parse::<Ipv6Addr>().map_err(|_| UrlError::Host)?;
        let port = match after {
            "" => None,
            p => Some(parse_port(p.strip_prefix(':').ok_or(UrlError::Port)?)?),
        };
        return Ok((host.to_owned(), port));
    }
    let (host, port) = match authority.rsplit_once(':') {
        // A bare IPv6 address has colons but no brackets: RFC 7065 requires them.
        Some((h, _)) if h.contains(':') => return Err(UrlError::Host),
        Some((h, p)) => (h, Some(parse_port(p)?)),
        None => (authority, None),
    };
    let valid = |c: char| c.is_ascii_alphanumeric() || "-._".contains(c);
    if host.is_empty() || !host.chars().all(valid) {
        return Err(UrlError::Host);
    }
    Ok((host.to_owned(), port))
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Stun => "stun",
            Scheme::Stuns => "stuns",
            Scheme::Turn => "turn",
            Scheme::Turns => "turns",
        };
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        write!(f, "{scheme}:{host}:{}", self.port)?;
        if self.scheme == Scheme::Turn && self.transport == Transport::Tcp {
            f.write_str("?transport=tcp")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Result<ServerUrl, UrlError> {
        s.parse()
    }

    #[test]
    fn rfc7065_3_1_turn_urls_with_default_ports_and_transports() {
        let u = url("turn:example.org").unwrap();
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port, u.transport),
            (Scheme::Turn, "example.org", 3478, Transport::Udp)
        );
        let u = url("turn:example.org:3479?transport=tcp").unwrap();
        assert_eq!((u.port, u.transport), (3479, Transport::Tcp));
        let u = url("turns:example.org").unwrap();
        assert_eq!((u.port, u.transport), (5349, Transport::Tls));
        let u = url("turns:example.org?transport=tcp").unwrap();
        assert_eq!(u.transport, Transport::Tls);
        assert_eq!(url("turns:example.org?transport=udp"), Err(UrlError::Dtls));
        assert_eq!(url("TURN:Example.org:1?transport=UDP").unwrap().transport, Transport::Udp);
    }

    #[test]
    fn rfc7064_3_1_stun_urls_take_no_query() {
        let u = url("stun:127.0.0.1:19302").unwrap();
        assert_eq!((u.scheme, u.port, u.transport), (Scheme::Stun, 19302, Transport::Udp));
        assert_eq!(url("stuns:h").unwrap().port, 5349);
        assert!(matches!(url("stun:h?transport=tcp"), Err(UrlError::Query(_))));
    }

    #[test]
    fn ipv6_literals_need_brackets() {
        let u = url("turn:[::1]:3478?transport=tcp").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 3478));
        assert_eq!(url("turn:[2001:db8::1]").unwrap().port, 3478);
        assert_eq!(url("turn:::1"), Err(UrlError::Host));
        assert_eq!(url("turn:[nope]:1"), Err(UrlError::Host));
        assert_eq!(u.to_string(), "turn:[::1]:3478?transport=tcp");
    }

    #[test]
    fn malformed_urls_say_why() {
        assert_eq!(url("http://example.org"), Err(UrlError::Scheme));
        assert_eq!(url("example.org"), Err(UrlError::Scheme));
        assert_eq!(url("turn://example.org"), Err(UrlError::Slashes));
        assert_eq!(url("turn:example.org:0"), Err(UrlError::Port));
        assert_eq!(url("turn:example.org:99999"), Err(UrlError::Port));
        assert_eq!(url("turn:"), Err(UrlError::Host));
        assert_eq!(url("turn:a b"), Err(UrlError::Host));
        assert!(matches!(url("turn:h?transport=sctp"), Err(UrlError::Query(_))));
    }
}
