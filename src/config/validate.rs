//! The checks that the types alone do not make: each failure names the dotted key it is
//! about, so that `Config::parse` can point at the key's line.

use super::auth::parse_hex_key;
use super::{Config, ListenTransport, MAX_WORKERS};
use std::time::Duration;

impl Config {
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
        for listen in &self.listen {
            listen.validate_passthrough()?;
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
        if let Some(webhook) = &self.auth.webhook {
            webhook.validate()?;
        }
        self.relay.validate()?;
        self.validate_admin()?;
        self.nat_discovery_addresses()?;
        self.cluster.validate()?;
        self.cluster.validate_transports(&self.listen)?;
        Ok(())
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
}

#[cfg(test)]
mod tests {
    use crate::config::tests::parse;

    #[test]
    fn bad_values_name_the_key_and_line() {
        let err = parse("[relay]\nport-min = 60000\nport-max = 50000\n").unwrap_err().to_string();
        assert_eq!(err, "t.toml:2: `relay.port-min`: relay port range 60000-50000 is empty or starts at 0");
        let err = parse("[[auth.user]]\nname = \"a\"\n").unwrap_err().to_string();
        assert!(err.contains("exactly one of password or key"), "{err}");
        let err = parse("[relay]\nmax-lifetime = \"soon\"\n").unwrap_err().to_string();
        assert!(err.starts_with("t.toml:2:"), "{err}");
    }
}
