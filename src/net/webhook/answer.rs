//! The webhook's answer body, parsed and validated before anything of it is used: a
//! strict JSON model (unknown fields refused), exact key lengths, bounded passwords,
//! TTLs and limits. The password, if sent, is turned into keys here and dropped: only
//! keys are cached.

use crate::stun::integrity::{long_term_key_md5, long_term_key_sha256};
use crate::turn::auth::Key;
use crate::turn::lookup::{UserLimits, UserRecord};
use serde::Deserialize;
use std::time::Duration;

/// The longest password accepted (RFC 8489 §9.2.2 puts it through OpaqueString; 256
/// bytes is far beyond any generated one).
pub const MAX_PASSWORD: usize = 256;
/// The most allocations an answer may grant one user.
pub const MAX_ALLOCATIONS: u32 = 100_000;
/// The smallest bandwidth cap an answer may set, bytes per second (below it not even
/// the control traffic of a call gets through: a backend bug, not a policy).
pub const MIN_BANDWIDTH: u32 = 1000;

/// The JSON body of a 200 answer.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Body {
    /// The user's password: both keys are derived from it.
    password: Option<String>,
    /// Or MD5(username:realm:password), 32 hex digits.
    key_md5: Option<String>,
    /// And/or SHA-256(username:realm:password), 64 hex digits.
    key_sha256: Option<String>,
    /// Seconds the answer may be cached (at most the configured cache-ttl).
    ttl: Option<u64>,
    /// Per-user limits.
    limits: Option<Limits>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Limits {
    max_allocations: Option<u32>,
    bandwidth: Option<u32>,
}

/// Why an answer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidAnswer {
    /// Not JSON, or not the expected fields and types.
    #[error("not the expected JSON: {0}")]
    Json(String),
    /// Neither a password nor a key, or both kinds.
    #[error("give either password or key-md5/key-sha256")]
    Credential,
    /// A key of the wrong length or not hex.
    #[error("{0} must be {1} hex digits")]
    Key(&'static str, usize),
    /// An empty or too long password.
    #[error("password must be 1 to {MAX_PASSWORD} bytes")]
    Password,
    /// A limit out of range.
    #[error("limits.max-allocations must be 1 to {MAX_ALLOCATIONS}")]
    Limit,
    /// A bandwidth cap out of range.
    #[error("limits.bandwidth must be {MIN_BANDWIDTH} to 4294967295 bytes per second")]
    Bandwidth,
}

/// A validated answer: the user's record and how long it may be cached (the answer's
/// `ttl`, at most `max_ttl`).
pub fn parse(
    bytes: &[u8],
    realm: &str,
    username: &str,
    max_ttl: Duration,
) -> Result<(UserRecord, Duration), InvalidAnswer> {
    let body: Body = serde_json::from_slice(bytes).map_err(|e| InvalidAnswer::Json(e.to_string()))?;
    let (md5, sha256) = match (body.password, body.key_md5, body.key_sha256) {
        (Some(password), None, None) => {
            if password.is_empty() || password.len() > MAX_PASSWORD {
                return Err(InvalidAnswer::Password);
            }
            (
                Some(Key::new(&long_term_key_md5(username, realm, &password))),
                Some(Key::new(&long_term_key_sha256(username, realm, &password))),
            )
        }
        (None, None, None) | (Some(_), _, _) => return Err(InvalidAnswer::Credential),
        (None, md5, sha256) => (
            md5.map(|hex| hex_key::<16>(&hex).ok_or(InvalidAnswer::Key("key-md5", 32))).transpose()?,
            sha256.map(|hex| hex_key::<32>(&hex).ok_or(InvalidAnswer::Key("key-sha256", 64))).transpose()?,
        ),
    };
    let (max_allocations, bandwidth) = body.limits.map_or((None, None), |l| (l.max_allocations, l.bandwidth));
    if max_allocations.is_some_and(|n| n == 0 || n > MAX_ALLOCATIONS) {
        return Err(InvalidAnswer::Limit);
    }
    if bandwidth.is_some_and(|b| b < MIN_BANDWIDTH) {
        return Err(InvalidAnswer::Bandwidth);
    }
    let ttl = body.ttl.map_or(max_ttl, |s| Duration::from_secs(s).min(max_ttl));
    Ok((UserRecord { md5, sha256, limits: UserLimits { max_allocations, bandwidth } }, ttl))
}

/// `N` bytes from exactly `2 * N` hex digits.
fn hex_key<const N: usize>(hex: &str) -> Option<Key> {
    if hex.len() != 2 * N {
        return None;
    }
    let mut key = [0u8; N];
    for (i, b) in key.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(Key::new(&key))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_secs(60);

    #[test]
    fn a_password_gives_both_keys_and_a_key_only_its_own() {
        let (record, ttl) = parse(br#"{"password": "pw"}"#, "example.org", "alice", MAX).unwrap();
        assert_eq!(record.md5.unwrap().as_bytes(), &long_term_key_md5("alice", "example.org", "pw"));
        assert_eq!(record.sha256.unwrap().as_bytes(), &long_term_key_sha256("alice", "example.org", "pw"));
        assert_eq!(ttl, MAX);
        let key = hex(&long_term_key_md5("alice", "example.org", "pw"));
        let body =
            format!(r#"{{"key-md5": "{key}", "ttl": 5, "limits": {{"max-allocations": 2, "bandwidth": 125000}}}}"#);
        let (record, ttl) = parse(body.as_bytes(), "example.org", "alice", MAX).unwrap();
        assert_eq!(record.md5.unwrap().as_bytes(), &long_term_key_md5("alice", "example.org", "pw"));
        assert_eq!((record.sha256, ttl), (None, Duration::from_secs(5)));
        assert_eq!(record.limits, UserLimits { max_allocations: Some(2), bandwidth: Some(125_000) });
        let (_, ttl) = parse(br#"{"password": "pw", "ttl": 99999}"#, "r", "u", MAX).unwrap();
        assert_eq!(ttl, MAX, "capped at cache-ttl");
    }

    #[test]
    fn garbage_and_contradictions_are_refused() {
        for (body, want) in [
            (&b"not json"[..], None),
            (br#"{"password": "pw", "admin": true}"#, None),
            (br#"{"password": 5}"#, None),
            (br#"{}"#, Some(InvalidAnswer::Credential)),
            (br#"{"password": "pw", "key-md5": "00"}"#, Some(InvalidAnswer::Credential)),
            (br#"{"password": ""}"#, Some(InvalidAnswer::Password)),
            (br#"{"key-md5": "0123"}"#, Some(InvalidAnswer::Key("key-md5", 32))),
            (br#"{"key-sha256": "zz"}"#, Some(InvalidAnswer::Key("key-sha256", 64))),
            (br#"{"password": "pw", "limits": {"max-allocations": 0}}"#, Some(InvalidAnswer::Limit)),
            (br#"{"password": "pw", "limits": {"bandwidth": 10}}"#, Some(InvalidAnswer::Bandwidth)),
            (br#"{"password": "pw", "limits": {"bandwidth": 5000000000}}"#, None),
            (br#"{"password": "pw", "limits": {"sessions": 1}}"#, None),
            (br#"{"password": "pw", "ttl": -1}"#, None),
        ] {
            let err = parse(body, "r", "u", MAX).unwrap_err();
            match want {
                Some(want) => assert_eq!(err, want),
                None => assert!(matches!(err, InvalidAnswer::Json(_)), "{err:?}"),
            }
        }
        let long = format!(r#"{{"password": "{}"}}"#, "x".repeat(MAX_PASSWORD + 1));
        assert_eq!(parse(long.as_bytes(), "r", "u", MAX).unwrap_err(), InvalidAnswer::Password);
        let bad_hex = format!(r#"{{"key-md5": "{}"}}"#, "g".repeat(32));
        assert!(parse(bad_hex.as_bytes(), "r", "u", MAX).is_err());
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
