//! `[auth]`: static users (`[[auth.user]]`), TURN REST secrets, nonce lifetime and the
//! authentication webhook (`[auth.webhook]`, in `webhook.rs`).

use serde::Deserialize;
use std::time::Duration;

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
    /// The authentication webhook, asked for users no static user or secret covers.
    pub webhook: Option<super::webhook::Webhook>,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            nonce_lifetime: Duration::from_secs(600),
            user: Vec::new(),
            secrets: Vec::new(),
            end_allocations_at_expiry: false,
            webhook: None,
        }
    }
}

/// The key of a `key = ` value: 32 hex digits, `0x` allowed, as coturn's `turnadmin -k`
/// prints it; `None` if it is not one (validation says so, naming the user).
pub(super) fn parse_hex_key(hex: &str) -> Option<[u8; 16]> {
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
    use crate::config::tests::parse;

    #[test]
    fn precomputed_keys_are_accepted() {
        let c = parse("[[auth.user]]\nname = \"a\"\nkey = \"0x0123456789abcdef0123456789abcdef\"\n").unwrap();
        assert_eq!(c.core().credentials.user_count(), 1);
    }
}
