//! Who may see what on the admin listener.
//!
//! - `/healthz` is always open.
//! - `/readyz` is open too, so that a Kubernetes readiness probe (which can carry no
//!   secret but in plain sight) can use it off loopback; there, without the token, it
//!   says only `ready` or `not ready`, and the reason is for loopback or token holders.
//! - `/metrics` is open unless `metrics-require-token` is set.
//! - Read-only pages (`/`, `/ws`) are open when the listener is on a loopback address,
//!   and need the token anywhere else.
//! - Admin actions always need the token; with none configured they are refused.
//!
//! A presented token that is wrong is refused everywhere but `/healthz`, even where no
//! token is needed: a client holding a bad credential should learn so, not get data.
//! The token is read from `Authorization: Bearer T` or, for browsers, which cannot set
//! that header on a navigation or a WebSocket, from an `access_token` query parameter
//! (RFC 6750 §2.3).
//!
//! On loopback, open access would let any web page the operator visits read the admin
//! plane through DNS rebinding (a hostile name resolving to 127.0.0.1), so there the
//! `Host` header must name a loopback address or `localhost`.

use ring::digest::{digest, SHA256};
use std::net::{IpAddr, SocketAddr};
use subtle::ConstantTimeEq;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resource {
    /// `/healthz`.
    Health,
    /// `/readyz`.
    Readiness,
    /// `/metrics`.
    Metrics,
    /// The dashboard, `/ws`.
    ReadOnly,
}

/// What a request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Grant {
    /// Read-only access.
    Read,
    /// The token was presented: admin actions too.
    Admin,
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// 401: the token is missing or wrong.
    Unauthorized,
    /// 403: the Host header is not a loopback name (DNS rebinding guard).
    ForeignHost,
}

/// The access policy of one listener.
#[derive(Debug)]
pub(crate) struct Access {
    /// Whether the listener is on loopback, where read-only pages are open.
    loopback: bool,
    /// SHA-256 of the configured token: comparing digests in constant time hides both
    /// the token's bytes and its length.
    token: Option<[u8; 32]>,
    metrics_require_token: bool,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

impl Access {
    /// The policy for a listener bound to `local`.
    pub(crate) fn new(local: SocketAddr, token: Option<&str>, metrics_require_token: bool) -> Self {
        Access { loopback: local.ip().is_loopback(), token: token.map(|t| sha256(t.as_bytes())), metrics_require_token }
    }

    /// Whether read-only pages are open without a token.
    pub(crate) fn open_read(&self) -> bool {
        self.loopback
    }

    /// Whether admin actions are possible at all.
    pub(crate) fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Decides a request from its `Authorization` and `Host` headers and its query.
    pub(crate) fn check(
        &self,
        resource: Resource,
        authorization: Option<&[u8]>,
        host: Option<&[u8]>,
        query: Option<&str>,
    ) -> Result<Grant, Refusal> {
        if resource == Resource::Health {
            return Ok(Grant::Read);
        }
        if self.loopback && !host.is_some_and(is_loopback_host) {
            return Err(Refusal::ForeignHost);
        }
        let presented = authorization.and_then(bearer).or_else(|| query.and_then(query_token));
        let valid = match (presented, &self.token) {
            (None, _) => None,
            (Some(p), Some(token)) => Some(bool::from(sha256(&p).ct_eq(token))),
            (Some(_), None) => Some(false),
        };
        match (valid, resource) {
            (Some(false), _) => Err(Refusal::Unauthorized),
            (Some(true), _) => Ok(Grant::Admin),
            (None, Resource::Readiness) => Ok(Grant::Read),
            (None, Resource::Metrics) if !self.metrics_require_token => Ok(Grant::Read),
            (None, Resource::ReadOnly) if self.loopback => Ok(Grant::Read),
            (None, _) => Err(Refusal::Unauthorized),
        }
    }
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive, RFC 7235 §2.1).
fn bearer(header: &[u8]) -> Option<Vec<u8>> {
    let (scheme, rest) = header.split_at_checked(7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then(|| rest.trim_ascii().to_vec())
}

/// The percent-decoded `realm` parameter of a query string (`/ws?realm=...`), if it
/// is valid UTF-8 of at most 127 characters (RFC 8489 §14.9: no realm is longer).
pub(crate) fn query_realm(query: &str) -> Option<String> {
    let bytes = query.split('&').find_map(|pair| percent_decode(pair.strip_prefix("realm=")?))?;
    String::from_utf8(bytes).ok().filter(|r| !r.is_empty() && r.chars().count() <= 127)
}

/// The percent-decoded `access_token` parameter of a query string.
fn query_token(query: &str) -> Option<Vec<u8>> {
    query.split('&').find_map(|pair| percent_decode(pair.strip_prefix("access_token=")?))
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

/// Whether a Host header value names this machine's loopback: `localhost`, `127.x.y.z`
/// or `[::1]`, with or without a port.
fn is_loopback_host(host: &[u8]) -> bool {
    let Ok(host) = std::str::from_utf8(host) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((ip, _port)) => ip,
            None => return false,
        },
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether a WebSocket handshake's `Origin` (if any) is this server itself. Browsers
/// send Origin on every WebSocket; a page from elsewhere must not open one, because
/// WebSockets are exempt from the same-origin policy. Non-browser clients send none.
pub(crate) fn same_origin(origin: Option<&[u8]>, host: Option<&[u8]>) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    let Some(host) = host else {
        return false;
    };
    let authority = origin.strip_prefix(b"http://").or_else(|| origin.strip_prefix(b"https://"));
    authority.is_some_and(|a| a.eq_ignore_ascii_case(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef";
    const LOCAL: Option<&[u8]> = Some(b"127.0.0.1:9641");

    fn loopback(token: Option<&str>) -> Access {
        Access::new("127.0.0.1:9641".parse().unwrap(), token, false)
    }

    fn public(token: Option<&str>, metrics_require_token: bool) -> Access {
        Access::new("0.0.0.0:9641".parse().unwrap(), token, metrics_require_token)
    }

    #[test]
    fn loopback_reads_are_open_and_actions_need_the_token() {
        let a = loopback(Some(TOKEN));
        assert_eq!(a.check(Resource::ReadOnly, None, LOCAL, None), Ok(Grant::Read));
        assert_eq!(a.check(Resource::Metrics, None, LOCAL, None), Ok(Grant::Read));
        let bearer = format!("Bearer {TOKEN}");
        assert_eq!(a.check(Resource::ReadOnly, Some(bearer.as_bytes()), LOCAL, None), Ok(Grant::Admin));
        assert_eq!(
            a.check(Resource::ReadOnly, None, LOCAL, Some(&format!("x=1&access_token={TOKEN}"))),
            Ok(Grant::Admin)
        );
    }

    #[test]
    fn a_wrong_token_is_refused_even_where_none_is_needed() {
        let a = loopback(Some(TOKEN));
        assert_eq!(a.check(Resource::ReadOnly, Some(b"Bearer nope"), LOCAL, None), Err(Refusal::Unauthorized));
        assert_eq!(a.check(Resource::Metrics, None, LOCAL, Some("access_token=nope")), Err(Refusal::Unauthorized));
        assert_eq!(a.check(Resource::Health, Some(b"Bearer nope"), LOCAL, None), Ok(Grant::Read));
        let none = loopback(None);
        let bearer = format!("bearer {TOKEN}");
        assert_eq!(none.check(Resource::ReadOnly, Some(bearer.as_bytes()), LOCAL, None), Err(Refusal::Unauthorized));
    }

    #[test]
    fn off_loopback_everything_but_health_and_metrics_needs_the_token() {
        let host = Some(&b"203.0.113.5:9641"[..]);
        let a = public(Some(TOKEN), false);
        assert_eq!(a.check(Resource::ReadOnly, None, host, None), Err(Refusal::Unauthorized));
        assert_eq!(a.check(Resource::Metrics, None, host, None), Ok(Grant::Read));
        assert_eq!(a.check(Resource::Health, None, host, None), Ok(Grant::Read));
        assert_eq!(a.check(Resource::Readiness, None, host, None), Ok(Grant::Read));
        assert_eq!(a.check(Resource::Readiness, Some(b"Bearer nope"), host, None), Err(Refusal::Unauthorized));
        let bearer = format!("Bearer {TOKEN}");
        assert_eq!(a.check(Resource::ReadOnly, Some(bearer.as_bytes()), host, None), Ok(Grant::Admin));
        let strict = public(Some(TOKEN), true);
        assert_eq!(strict.check(Resource::Metrics, None, host, None), Err(Refusal::Unauthorized));
        assert_eq!(strict.check(Resource::Readiness, None, host, None), Ok(Grant::Read));
        assert_eq!(strict.check(Resource::Metrics, Some(bearer.as_bytes()), host, None), Ok(Grant::Admin));
    }

    #[test]
    fn loopback_needs_a_loopback_host_header() {
        let a = loopback(None);
        for host in ["localhost", "LOCALHOST:80", "127.0.0.1", "127.1.2.3:9641", "[::1]:9641", "[::1]"] {
            assert_eq!(a.check(Resource::ReadOnly, None, Some(host.as_bytes()), None), Ok(Grant::Read), "{host}");
        }
        for host in ["evil.example", "evil.example:9641", "10.0.0.1:9641", "[::1"] {
            let got = a.check(Resource::Metrics, None, Some(host.as_bytes()), None);
            assert_eq!(got, Err(Refusal::ForeignHost), "{host}");
        }
        assert_eq!(a.check(Resource::Metrics, None, None, None), Err(Refusal::ForeignHost));
    }

    #[test]
    fn origins_must_match_the_host() {
        assert!(same_origin(None, LOCAL));
        assert!(same_origin(Some(b"http://127.0.0.1:9641"), LOCAL));
        assert!(!same_origin(Some(b"http://evil.example"), LOCAL));
        assert!(!same_origin(Some(b"null"), LOCAL));
    }

    #[test]
    fn query_tokens_are_percent_decoded() {
        assert_eq!(query_token("access_token=a%26b+c"), Some(b"a&b c".to_vec()));
        assert_eq!(query_token("access_token=%zz"), None);
        assert_eq!(query_token("other=1"), None);
        assert_eq!(query_realm("access_token=x&realm=b.example%2Ftest"), Some("b.example/test".into()));
        assert_eq!(query_realm("realm="), None);
    }
}
