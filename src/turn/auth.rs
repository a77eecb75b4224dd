//! Long-term credentials (RFC 8489 §9.2): user keys, REST API ephemeral credentials,
//! and stateless nonces.

use crate::stun::integrity::long_term_key_md5;
use base64::Engine;
use ring::hmac;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A long-term credential key: 16 bytes for the MD5 algorithm, 32 for SHA-256.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Key {
    bytes: [u8; 32],
    len: u8,
}

impl Key {
    /// A key from raw bytes (at most 32 are kept).
    pub fn new(bytes: &[u8]) -> Self {
        let mut key = Key { bytes: [0; 32], len: bytes.len().min(32) as u8 };
        key.bytes[..key.len as usize].copy_from_slice(&bytes[..key.len as usize]);
        key
    }

    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

/// Why a username has no key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// No static user of that name and not a REST username.
    #[error("unknown user")]
    UnknownUser,
    /// A REST username whose expiry time has passed.
    #[error("credential expired")]
    Expired,
}

/// The users and shared secrets turnd accepts.
#[derive(Clone, Default)]
pub struct Credentials {
    realm: String,
    users: HashMap<String, Key>,
    secrets: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("realm", &self.realm).field("users", &self.users.len()).finish()
    }
}

impl Credentials {
    /// Credentials for `realm`, with no users yet.
    pub fn new(realm: impl Into<String>) -> Self {
        Credentials { realm: realm.into(), ..Default::default() }
    }

    /// The realm users authenticate in.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// Adds a user by plaintext password.
    pub fn add_user(&mut self, name: &str, password: &str) {
        let key = long_term_key_md5(name, &self.realm, password);
        self.users.insert(name.to_owned(), Key::new(&key));
    }

    /// Adds a user by the precomputed key `MD5(name:realm:password)`.
    pub fn add_user_key(&mut self, name: &str, key: [u8; 16]) {
        self.users.insert(name.to_owned(), Key::new(&key));
    }

    /// Adds a TURN REST API shared secret; several may be active during rotation.
    pub fn add_secret(&mut self, secret: &[u8]) {
        self.secrets.push(secret.to_vec());
    }

    /// Number of static users.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// The candidate keys for `username` at wall-clock time `unix_now`: one for a static
    /// user, one per secret for a REST username (the MESSAGE-INTEGRITY check then
    /// tells which secret the client's password came from).
    pub fn keys_for(&self, username: &str, unix_now: u64) -> Result<Vec<Key>, CredentialError> {
        if let Some(key) = self.users.get(username) {
            return Ok(vec![*key]);
        }
        if self.secrets.is_empty() {
            return Err(CredentialError::UnknownUser);
        }
        // TURN REST API (draft-uberti-behave-turn-rest): "<expiry>[:<user id>]".
        let expiry = username.split(':').next().and_then(|t| t.parse::<u64>().ok());
        let Some(expiry) = expiry else {
            return Err(CredentialError::UnknownUser);
        };
        if expiry <= unix_now {
            return Err(CredentialError::Expired);
        }
        Ok(self
            .secrets
            .iter()
            .map(|secret| {
                let password = rest_password(secret, username);
                Key::new(&long_term_key_md5(username, &self.realm, &password))
            })
            .collect())
    }
}

/// The TURN REST API password for `username`: base64(HMAC-SHA1(secret, username)).
pub fn rest_password(secret: &[u8], username: &str) -> String {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret), username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
}

/// Whether a received nonce can be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceStatus {
    /// Issued by us, for this client, and not expired.
    Valid,
    /// Expired, forged, or issued to another client address: answer 438.
    Stale,
}

/// Stateless nonces: `<expiry><mac>`, where the MAC binds the expiry to the client's
/// transport address. A flood of unauthenticated requests costs no memory, and a nonce
/// captured from one client is useless from another address.
pub struct NonceCodec {
    key: hmac::Key,
    lifetime: Duration,
    epoch: Instant,
}

impl std::fmt::Debug for NonceCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NonceCodec").field("lifetime", &self.lifetime).finish()
    }
}

/// Hex digits of the expiry field.
const EXPIRY_HEX: usize = 8;
/// Bytes of MAC kept in the nonce (80 bits: forging one is out of reach).
const MAC_BYTES: usize = 10;

impl NonceCodec {
    /// `secret` keys the MAC; `epoch` is the instant expiries are counted from (nonces
    /// use the monotonic clock, so wall-clock jumps do not expire them all).
    pub fn new(secret: &[u8; 32], lifetime: Duration, epoch: Instant) -> Self {
        NonceCodec { key: hmac::Key::new(hmac::HMAC_SHA256, secret), lifetime, epoch }
    }

    fn mac(&self, expiry: u32, client: SocketAddr) -> [u8; MAC_BYTES] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(&expiry.to_be_bytes());
        match client.ip() {
            std::net::IpAddr::V4(ip) => ctx.update(&ip.octets()),
            std::net::IpAddr::V6(ip) => ctx.update(&ip.octets()),
        }
        ctx.update(&client.port().to_be_bytes());
        let tag = ctx.sign();
        let mut out = [0u8; MAC_BYTES];
        out.copy_from_slice(&tag.as_ref()[..MAC_BYTES]);
        out
    }

    fn seconds(&self, now: Instant) -> u32 {
        u32::try_from(now.saturating_duration_since(self.epoch).as_secs()).unwrap_or(u32::MAX)
    }

    /// A fresh nonce for `client`.
    pub fn issue(&self, now: Instant, client: SocketAddr) -> String {
        let expiry = self.seconds(now).saturating_add(u32::try_from(self.lifetime.as_secs()).unwrap_or(u32::MAX));
        let mut nonce = format!("{expiry:0width$x}", width = EXPIRY_HEX);
        for b in self.mac(expiry, client) {
            nonce.push_str(&format!("{b:02x}"));
        }
        nonce
    }

    /// Checks a nonce received from `client`.
    pub fn check(&self, nonce: &str, now: Instant, client: SocketAddr) -> NonceStatus {
        let parsed = (|| {
            let expiry = u32::from_str_radix(nonce.get(..EXPIRY_HEX)?, 16).ok()?;
            let mac_hex = nonce.get(EXPIRY_HEX..)?;
            if mac_hex.len() != MAC_BYTES * 2 {
                return None;
            }
            let mut mac = [0u8; MAC_BYTES];
            for (i, b) in mac.iter_mut().enumerate() {
                *b = u8::from_str_radix(mac_hex.get(2 * i..2 * i + 2)?, 16).ok()?;
            }
            Some((expiry, mac))
        })();
        let Some((expiry, mac)) = parsed else {
            return NonceStatus::Stale;
        };
        let authentic = bool::from(subtle::ConstantTimeEq::ct_eq(&mac[..], &self.mac(expiry, client)[..]));
        if authentic && self.seconds(now) < expiry {
            NonceStatus::Valid
        } else {
            NonceStatus::Stale
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_is_valid_until_its_lifetime_then_stale() {
        let t0 = Instant::now();
        let codec = NonceCodec::new(&[1; 32], Duration::from_secs(600), t0);
        let client: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let nonce = codec.issue(t0, client);
        assert_eq!(codec.check(&nonce, t0 + Duration::from_secs(599), client), NonceStatus::Valid);
        assert_eq!(codec.check(&nonce, t0 + Duration::from_secs(600), client), NonceStatus::Stale);
    }

    #[test]
    fn nonce_is_bound_to_the_client_address_and_the_secret() {
        let t0 = Instant::now();
        let codec = NonceCodec::new(&[1; 32], Duration::from_secs(600), t0);
        let nonce = codec.issue(t0, "192.0.2.1:5000".parse().unwrap());
        assert_eq!(codec.check(&nonce, t0, "192.0.2.1:5001".parse().unwrap()), NonceStatus::Stale);
        let other = NonceCodec::new(&[2; 32], Duration::from_secs(600), t0);
        assert_eq!(other.check(&nonce, t0, "192.0.2.1:5000".parse().unwrap()), NonceStatus::Stale);
        for garbage in ["", "zz", "0000000g00000000000000000000", "ffffffff"] {
            assert_eq!(codec.check(garbage, t0, "192.0.2.1:5000".parse().unwrap()), NonceStatus::Stale);
        }
    }

    #[test]
    fn rest_credentials_follow_the_turn_rest_api() {
        let mut creds = Credentials::new("example.org");
        creds.add_secret(b"north");
        creds.add_secret(b"south");
        let keys = creds.keys_for("2000000000:alice", 1_900_000_000).unwrap();
        assert_eq!(keys.len(), 2);
        let expected =
            long_term_key_md5("2000000000:alice", "example.org", &rest_password(b"south", "2000000000:alice"));
        assert_eq!(keys[1].as_bytes(), &expected);
        assert_eq!(creds.keys_for("2000000000:alice", 2_000_000_000), Err(CredentialError::Expired));
        assert_eq!(creds.keys_for("alice", 0), Err(CredentialError::UnknownUser));
    }

    #[test]
    fn rest_password_matches_a_known_value() {
        // base64(HMAC-SHA1("secret", "1700000000:bob")), computed independently with openssl.
        assert_eq!(rest_password(b"secret", "1700000000:bob"), "YeMuUjjOaxvglmPbYS9o30UEIYg=");
    }
}
