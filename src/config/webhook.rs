//! `[auth.webhook]`: the authentication webhook, asked for users that no static user
//! and no REST secret covers. See README "Authentication webhook" for the exchange.

use serde::Deserialize;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The CA bundle used when `ca-file` is not set (Debian's ca-certificates).
pub const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// `[auth.webhook]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Webhook {
    /// The endpoint, `https://...` (plain `http://` only to a loopback address, or with
    /// `danger-allow-http`).
    pub url: String,
    /// The longest a lookup may take, waiting for a free slot included.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Lookups in flight at once, over the whole process.
    pub concurrency: usize,
    /// How long a found user's keys are reused without asking again.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// How long "no such user" is reused.
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// Answers cached (process-wide, and again per worker).
    pub cache_size: usize,
    /// Requests waiting for a lookup, per worker; past it they get 500 at once.
    pub max_parked: usize,
    /// A file holding the bearer token sent as `Authorization: Bearer <token>`.
    pub token_file: Option<PathBuf>,
    /// Or the environment variable holding it.
    pub token_env: Option<String>,
    /// PEM CA certificates to verify the endpoint with; unset: the system bundle.
    pub ca_file: Option<PathBuf>,
    /// Allow `http://` to a non-loopback host: credentials would cross the network in
    /// clear, so an operator must opt in by this name.
    pub danger_allow_http: bool,
}

impl Default for Webhook {
    fn default() -> Self {
        Webhook {
            url: String::new(),
            timeout: Duration::from_secs(2),
            concurrency: 16,
            cache_ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(10),
            cache_size: 10_000,
            max_parked: 256,
            token_file: None,
            token_env: None,
            ca_file: None,
            danger_allow_http: false,
        }
    }
}

/// The longest TTL an answer may be cached for.
const MAX_TTL: Duration = Duration::from_secs(86_400);

impl Webhook {
    /// The endpoint as a URI (checked when the config is validated).
    pub fn uri(&self) -> Result<hyper::Uri, String> {
        let uri: hyper::Uri = self.url.parse().map_err(|e| format!("not a URL: {e}"))?;
        let Some(authority) = uri.authority() else {
            return Err("needs a host".into());
        };
        if authority.as_str().contains('@') {
            return Err("no user:password in the URL; use token-file or token-env".into());
        }
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if self.danger_allow_http || is_loopback(authority.host()) => {}
            Some("http") => {
                return Err("plain http only to a loopback address (or set danger-allow-http = true)".into())
            }
            _ => return Err("must start with https:// (or http:// to a loopback address)".into()),
        }
        Ok(uri)
    }

    /// The bearer token, read from `token-file` or `token-env` (trailing newline
    /// dropped): visible ASCII, 1 to 4096 characters.
    pub fn token(&self) -> Result<Option<String>, (&'static str, String)> {
        let token = match (&self.token_file, &self.token_env) {
            (Some(_), Some(_)) => {
                return Err(("auth.webhook.token-file", "give at most one of token-file and token-env".into()))
            }
            (Some(path), None) => std::fs::read_to_string(path)
                .map_err(|e| ("auth.webhook.token-file", format!("cannot read {}: {e}", path.display())))?,
            (None, Some(name)) => std::env::var(name)
                .map_err(|_| ("auth.webhook.token-env", format!("environment variable {name} is not set")))?,
            (None, None) => return Ok(None),
        };
        let token = token.trim_end_matches(['\r', '\n']);
        if token.is_empty() || token.len() > 4096 || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(("auth.webhook.token-file", "the token must be 1 to 4096 visible ASCII characters".into()));
        }
        Ok(Some(token.to_owned()))
    }

    /// Range checks; each failure names its key.
    pub(super) fn validate(&self) -> Result<(), (&'static str, String)> {
        self.uri().map_err(|m| ("auth.webhook.url", m))?;
        if self.timeout < Duration::from_millis(100) || self.timeout > Duration::from_secs(30) {
            return Err(("auth.webhook.timeout", "must be 100ms to 30s".into()));
        }
        if !(1..=1024).contains(&self.concurrency) {
            return Err(("auth.webhook.concurrency", "must be 1 to 1024".into()));
        }
        if self.cache_ttl > MAX_TTL {
            return Err(("auth.webhook.cache-ttl", "must be at most 1 day".into()));
        }
        if self.negative_ttl > MAX_TTL {
            return Err(("auth.webhook.negative-ttl", "must be at most 1 day".into()));
        }
        if !(1..=1_000_000).contains(&self.cache_size) {
            return Err(("auth.webhook.cache-size", "must be 1 to 1000000".into()));
        }
        // Each parked request holds a copy of up to 4 KiB, and an answer rescans the
        // parked table for the next deadline: 10,000 keeps both small.
        if !(1..=10_000).contains(&self.max_parked) {
            return Err(("auth.webhook.max-parked", "must be 1 to 10000".into()));
        }
        if let Some(ca) = &self.ca_file {
            if !ca.is_file() {
                return Err(("auth.webhook.ca-file", format!("{} is not a readable file", ca.display())));
            }
        }
        self.token()?;
        Ok(())
    }
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use crate::config::tests::parse;

    #[test]
    fn a_webhook_parses_with_defaults_and_reaches_the_core() {
        let c = parse("[auth.webhook]\nurl = \"https://auth.example.com/turn\"\n").unwrap();
        let w = c.auth.webhook.as_ref().unwrap();
        assert_eq!(w.concurrency, 16);
        let lookup = c.core().lookup.unwrap();
        assert_eq!(lookup.max_parked, 256);
        assert_eq!(lookup.wait, std::time::Duration::from_secs(3), "the timeout plus a second");
        assert!(parse("").unwrap().core().lookup.is_none());
    }

    #[test]
    fn cleartext_needs_loopback_or_the_danger_option() {
        for url in ["http://127.0.0.1:8080/x", "http://[::1]/x", "http://localhost/x"] {
            assert!(parse(&format!("[auth.webhook]\nurl = \"{url}\"\n")).is_ok(), "{url}");
        }
        let err = parse("[auth]\n[auth.webhook]\nurl = \"http://auth.example.com/x\"\n").unwrap_err().to_string();
        assert_eq!(
            err,
            "t.toml:3: `auth.webhook.url`: plain http only to a loopback address (or set danger-allow-http = true)"
        );
        assert!(parse("[auth.webhook]\nurl = \"http://auth.example.com/x\"\ndanger-allow-http = true\n").is_ok());
        let err = parse("[auth.webhook]\nurl = \"https://u:p@auth.example.com/x\"\n").unwrap_err().to_string();
        assert!(err.contains("token-file"), "{err}");
        let err = parse("[auth.webhook]\nurl = \"ftp://auth.example.com/x\"\n").unwrap_err().to_string();
        assert!(err.contains("https://"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let base = "[auth.webhook]\nurl = \"https://a.example\"\n";
        for (extra, key) in [
            ("timeout = \"10ms\"", "auth.webhook.timeout"),
            ("concurrency = 0", "auth.webhook.concurrency"),
            ("cache-size = 0", "auth.webhook.cache-size"),
            ("negative-ttl = \"2days\"", "auth.webhook.negative-ttl"),
            ("max-parked = 0", "auth.webhook.max-parked"),
            ("token-env = \"TURND_SURELY_UNSET_VARIABLE\"", "auth.webhook.token-env"),
            ("token-file = \"/nonexistent/token\"", "auth.webhook.token-file"),
            ("ca-file = \"/nonexistent/ca.pem\"", "auth.webhook.ca-file"),
        ] {
            let err = parse(&format!("{base}{extra}\n")).unwrap_err().to_string();
            assert!(err.starts_with("t.toml:3:") && err.contains(&format!("`{key}`")), "{extra}: {err}");
        }
        let err = parse(&format!("{base}methd = \"GET\"\n")).unwrap_err().to_string();
        assert!(err.contains("methd"), "{err}");
    }

    #[test]
    fn the_token_comes_from_a_file_without_its_newline() {
        let dir = std::env::temp_dir().join(format!("turnd-webhook-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "s3cret-token\n").unwrap();
        let c = parse(&format!("[auth.webhook]\nurl = \"https://a.example\"\ntoken-file = {:?}\n", path)).unwrap();
        assert_eq!(c.auth.webhook.unwrap().token().unwrap().as_deref(), Some("s3cret-token"));
        std::fs::write(&path, "two words\n").unwrap();
        assert!(parse(&format!("[auth.webhook]\nurl = \"https://a.example\"\ntoken-file = {:?}\n", path)).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
