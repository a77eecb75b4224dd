//! Long-term credentials (RFC 8489 §9.2): user keys for the MD5 and SHA-256 password
//! algorithms, USERHASH lookup, TURN REST API ephemeral credentials and the password
//! algorithm negotiation. The nonces that carry the nonce cookie are in
//! [`crate::turn::nonce`].

use crate::stun::attributes::{Algorithm, PasswordAlgorithm, PasswordAlgorithms};
use crate::stun::integrity::{long_term_key_md5, long_term_key_sha256, userhash};
use base64::Engine;
use ring::hmac;
use std::collections::HashMap;
use std::time::Duration;

// Nonces were part of this module; these paths stay so that callers (and the public
// `turnd::turn::auth::*` API) need not change.
pub use super::nonce::{NonceCodec, NonceStatus, SecurityFeatures, NONCE_COOKIE, NONCE_LEN};

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
    /// A static user configured by precomputed MD5 key asked for the SHA-256 algorithm:
    /// that key cannot be derived without the password.
    #[error("no key for this password algorithm")]
    NoKeyForAlgorithm,
}

/// The keys of a static user, one per password algorithm it can use.
#[derive(Clone, Copy)]
struct UserKeys {
    md5: Key,
    /// `None` for a user configured by its MD5 key.
    sha256: Option<Key>,
}

/// The users and shared secrets turnd accepts.
#[derive(Clone, Default)]
pub struct Credentials {
    realm: String,
    users: HashMap<String, UserKeys>,
    /// USERHASH (RFC 8489 §14.4) to username, for static users. Kept in step with
    /// `users` by the `add_*` methods; a reload builds new `Credentials`, so the map is
    /// rebuilt with them.
    by_hash: HashMap<[u8; 32], String>,
    secrets: Vec<Vec<u8>>,
    /// The fleet's REST secrets, read from Redis (`[cluster] secrets-from-redis`),
    /// tried before `secrets`; empty without them.
    fleet_secrets: Vec<Vec<u8>>,
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

    /// Adds a user by plaintext password: it gets both the MD5 and the SHA-256 key.
    pub fn add_user(&mut self, name: &str, password: &str) {
        let keys = UserKeys {
            md5: Key::new(&long_term_key_md5(name, &self.realm, password)),
            sha256: Some(Key::new(&long_term_key_sha256(name, &self.realm, password))),
        };
        self.insert_user(name, keys);
    }

    /// Adds a user by the precomputed key `MD5(name:realm:password)`. Such a user can
    /// only authenticate with the MD5 password algorithm.
    pub fn add_user_key(&mut self, name: &str, key: [u8; 16]) {
        self.insert_user(name, UserKeys { md5: Key::new(&key), sha256: None });
    }

    fn insert_user(&mut self, name: &str, keys: UserKeys) {
        self.users.insert(name.to_owned(), keys);
        self.by_hash.insert(userhash(name, &self.realm), name.to_owned());
    }

    /// Adds a TURN REST API shared secret; several may be active during rotation.
    pub fn add_secret(&mut self, secret: &[u8]) {
        self.secrets.push(secret.to_vec());
    }

    /// Replaces the fleet's REST secrets (newest first): tried before the configured
    /// ones, which stay in force.
    pub fn set_fleet_secrets(&mut self, secrets: &[Vec<u8>]) {
        self.fleet_secrets = secrets.to_vec();
    }

    /// The REST secrets in force, the fleet's first.
    fn all_secrets(&self) -> impl Iterator<Item = &Vec<u8>> {
        self.fleet_secrets.iter().chain(&self.secrets)
    }

    /// Whether any REST secret is in force.
    fn has_secrets(&self) -> bool {
        !self.secrets.is_empty() || !self.fleet_secrets.is_empty()
    }

    /// Number of static users.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// The static user whose USERHASH is `hash`. REST usernames cannot be found this
    /// way: they are minted by the application, never listed here, and a hash does not
    /// give back the expiry the username carries.
    pub fn user_for_hash(&self, hash: &[u8]) -> Option<&str> {
        let hash: &[u8; 32] = hash.try_into().ok()?;
        self.by_hash.get(hash).map(String::as_str)
    }

    /// The security features the nonce cookie announces (RFC 8489 §9.2, §18.1):
    /// password algorithms always; username anonymity only when every user can be
    /// found by USERHASH, that is when no REST secret is configured, because a client
    /// that sees the bit MUST send USERHASH (§9.2.5), which would lock REST users out.
    pub fn features(&self) -> SecurityFeatures {
        if !self.has_secrets() {
            SecurityFeatures::PASSWORD_ALGORITHMS | SecurityFeatures::USERNAME_ANONYMITY
        } else {
            SecurityFeatures::PASSWORD_ALGORITHMS
        }
    }

    /// How long a credential for `username` stays valid from `unix_now`: `None` for a
    /// static user (no expiry), else the time to its TURN REST expiry.
    pub fn valid_for(&self, username: &str, unix_now: u64) -> Option<Duration> {
        if self.users.contains_key(username) {
            return None;
        }
        let expiry = username.split(':').next()?.parse::<u64>().ok()?;
        Some(Duration::from_secs(expiry.saturating_sub(unix_now)))
    }

    /// The candidate keys for `username` and `algorithm` at wall-clock time
    /// `unix_now`: one for a static user, one per secret for a REST username (the
    /// integrity check then tells which secret the client's password came from).
    pub fn keys_for(&self, username: &str, algorithm: Algorithm, unix_now: u64) -> Result<Vec<Key>, CredentialError> {
        if let Some(keys) = self.users.get(username) {
            return match algorithm {
                Algorithm::Md5 => Ok(vec![keys.md5]),
                Algorithm::Sha256 => keys.sha256.map(|k| vec![k]).ok_or(CredentialError::NoKeyForAlgorithm),
            };
        }
        if !self.has_secrets() {
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
            .all_secrets()
            .map(|secret| {
                let password = rest_password(secret, username);
                match algorithm {
                    Algorithm::Md5 => Key::new(&long_term_key_md5(username, &self.realm, &password)),
                    Algorithm::Sha256 => Key::new(&long_term_key_sha256(username, &self.realm, &password)),
                }
            })
            .collect())
    }
}

/// The TURN REST API password for `username`: base64(HMAC-SHA1(secret, username)).
pub fn rest_password(secret: &[u8], username: &str) -> String {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret), username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
}

/// The password algorithms turnd offers in PASSWORD-ALGORITHMS, in order of
/// preference (RFC 8489 §9.2.4): a client takes the first one it supports (§9.2.5),
/// so SHA-256 comes first and MD5 stays for clients that only know it.
pub const OFFERED_ALGORITHMS: [Algorithm; 2] = [Algorithm::Sha256, Algorithm::Md5];

/// The PASSWORD-ALGORITHMS attribute every 401 and 438 carries.
pub fn offered_algorithms() -> PasswordAlgorithms {
    PasswordAlgorithms::new(&OFFERED_ALGORITHMS)
}

/// Which key a request is checked with (RFC 8489 §9.2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyChoice {
    /// Neither PASSWORD-ALGORITHMS nor PASSWORD-ALGORITHM: an RFC 5389 client, or one
    /// processed as such. The MD5 key, and responses carry the integrity attribute(s)
    /// the request did.
    Legacy,
    /// The client negotiated this algorithm: responses carry MESSAGE-INTEGRITY-SHA256
    /// whatever else the request had (§9.2.4, last paragraph).
    Negotiated(Algorithm),
}

impl KeyChoice {
    /// The password algorithm whose key checks the request.
    pub fn algorithm(self) -> Algorithm {
        match self {
            KeyChoice::Legacy => Algorithm::Md5,
            KeyChoice::Negotiated(algorithm) => algorithm,
        }
    }
}

/// Why a request's password algorithm attributes were refused: 400 (RFC 8489 §9.2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    /// Only one of PASSWORD-ALGORITHMS and PASSWORD-ALGORITHM.
    #[error("PASSWORD-ALGORITHMS and PASSWORD-ALGORITHM must come together")]
    Incomplete,
    /// PASSWORD-ALGORITHMS differs from the list turnd sent (a bid-down attempt, or a
    /// broken client).
    #[error("PASSWORD-ALGORITHMS differs from the offered list")]
    Tampered,
    /// PASSWORD-ALGORITHM is malformed or names an algorithm that was not offered.
    #[error("PASSWORD-ALGORITHM is not one of the offered algorithms")]
    NotOffered,
}

/// RFC 8489 §9.2.4: the password algorithm checks, for a request whose NONCE is
/// `nonce`. They apply when the nonce cookie has the "Password algorithms" bit; a
/// nonce without it is read as an RFC 5389 one (turnd issues such nonces when a 401
/// with PASSWORD-ALGORITHMS would exceed its amplification budget; a forged cookie
/// fails the nonce check that comes last).
pub fn negotiate(
    nonce: &str,
    algorithms: Option<&PasswordAlgorithms>,
    algorithm: Option<&PasswordAlgorithm>,
) -> Result<KeyChoice, NegotiationError> {
    let announced =
        SecurityFeatures::from_nonce(nonce).is_some_and(|f| f.contains(SecurityFeatures::PASSWORD_ALGORITHMS));
    if !announced {
        return Ok(KeyChoice::Legacy);
    }
    match (algorithms, algorithm) {
        (None, None) => Ok(KeyChoice::Legacy),
        (Some(list), Some(chosen)) => {
            // The list is the same for every challenge, so "matches the value sent in
            // the response that sent this NONCE" needs no state: compare the bytes.
            if list.value() != offered_algorithms().value() {
                return Err(NegotiationError::Tampered);
            }
            chosen
                .entry()
                .and_then(|entry| entry.algorithm())
                .filter(|a| OFFERED_ALGORITHMS.contains(a))
                .map(KeyChoice::Negotiated)
                .ok_or(NegotiationError::NotOffered)
        }
        _ => Err(NegotiationError::Incomplete),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_users_get_both_keys_and_precomputed_md5_keys_only_md5() {
        let mut creds = Credentials::new("example.org");
        creds.add_user("alice", "secret");
        creds.add_user_key("carol", long_term_key_md5("carol", "example.org", "pw"));
        let md5 = creds.keys_for("alice", Algorithm::Md5, 0).unwrap();
        assert_eq!(md5[0].as_bytes(), &long_term_key_md5("alice", "example.org", "secret"));
        let sha = creds.keys_for("alice", Algorithm::Sha256, 0).unwrap();
        assert_eq!(sha[0].as_bytes(), &long_term_key_sha256("alice", "example.org", "secret"));
        assert_eq!(sha[0].as_bytes().len(), 32);
        assert!(creds.keys_for("carol", Algorithm::Md5, 0).is_ok());
        assert_eq!(creds.keys_for("carol", Algorithm::Sha256, 0), Err(CredentialError::NoKeyForAlgorithm));
        assert_eq!(creds.keys_for("dave", Algorithm::Md5, 0), Err(CredentialError::UnknownUser));
    }

    #[test]
    fn rfc8489_14_4_static_users_are_found_by_userhash() {
        let mut creds = Credentials::new("example.org");
        creds.add_user("alice", "secret");
        creds.add_user_key("carol", [7; 16]);
        assert_eq!(creds.user_for_hash(&userhash("alice", "example.org")), Some("alice"));
        assert_eq!(creds.user_for_hash(&userhash("carol", "example.org")), Some("carol"));
        assert_eq!(creds.user_for_hash(&userhash("alice", "example.com")), None, "the realm is hashed too");
        assert_eq!(creds.user_for_hash(&userhash("alice", "example.org")[..31]), None);
        // Reloaded credentials are new ones: a removed user is gone from the map too.
        let reloaded = Credentials::new("example.org");
        assert_eq!(reloaded.user_for_hash(&userhash("alice", "example.org")), None);
    }

    #[test]
    fn username_anonymity_is_announced_only_without_rest_secrets() {
        let mut creds = Credentials::new("example.org");
        creds.add_user("alice", "secret");
        assert!(creds.features().contains(SecurityFeatures::USERNAME_ANONYMITY));
        creds.add_secret(b"north");
        assert!(!creds.features().contains(SecurityFeatures::USERNAME_ANONYMITY));
        assert!(creds.features().contains(SecurityFeatures::PASSWORD_ALGORITHMS));
    }

    #[test]
    fn rest_credentials_follow_the_turn_rest_api() {
        let mut creds = Credentials::new("example.org");
        creds.add_secret(b"north");
        creds.add_secret(b"south");
        let keys = creds.keys_for("2000000000:alice", Algorithm::Md5, 1_900_000_000).unwrap();
        assert_eq!(keys.len(), 2);
        let password = rest_password(b"south", "2000000000:alice");
        assert_eq!(keys[1].as_bytes(), &long_term_key_md5("2000000000:alice", "example.org", &password));
        let keys = creds.keys_for("2000000000:alice", Algorithm::Sha256, 1_900_000_000).unwrap();
        assert_eq!(keys[1].as_bytes(), &long_term_key_sha256("2000000000:alice", "example.org", &password));
        assert_eq!(creds.keys_for("2000000000:alice", Algorithm::Md5, 2_000_000_000), Err(CredentialError::Expired));
        assert_eq!(creds.keys_for("alice", Algorithm::Md5, 0), Err(CredentialError::UnknownUser));
        assert_eq!(creds.user_for_hash(&userhash("2000000000:alice", "example.org")), None);
    }

    #[test]
    fn the_fleets_secrets_are_tried_first_and_replaced_whole() {
        let mut creds = Credentials::new("example.org");
        creds.add_secret(b"local");
        creds.set_fleet_secrets(&[b"fleet-new".to_vec(), b"fleet-old".to_vec()]);
        let keys = creds.keys_for("2000000000:alice", Algorithm::Md5, 0).unwrap();
        let key_of = |secret: &[u8]| {
            long_term_key_md5("2000000000:alice", "example.org", &rest_password(secret, "2000000000:alice"))
        };
        assert_eq!(keys.len(), 3);
        assert_eq!((keys[0].as_bytes(), keys[2].as_bytes()), (&key_of(b"fleet-new")[..], &key_of(b"local")[..]));
        creds.set_fleet_secrets(&[]);
        assert_eq!(creds.keys_for("2000000000:alice", Algorithm::Md5, 0).unwrap().len(), 1);
        // Fleet secrets alone make REST usernames known.
        let mut only_fleet = Credentials::new("example.org");
        assert_eq!(only_fleet.keys_for("2000000000:a", Algorithm::Md5, 0), Err(CredentialError::UnknownUser));
        only_fleet.set_fleet_secrets(&[b"fleet".to_vec()]);
        assert_eq!(only_fleet.keys_for("2000000000:a", Algorithm::Md5, 0).map(|k| k.len()), Ok(1));
        assert!(!only_fleet.features().contains(SecurityFeatures::USERNAME_ANONYMITY));
    }

    #[test]
    fn rest_password_matches_a_known_value() {
        // base64(HMAC-SHA1("secret", "1700000000:bob")), computed independently with openssl.
        assert_eq!(rest_password(b"secret", "1700000000:bob"), "YeMuUjjOaxvglmPbYS9o30UEIYg=");
    }

    #[test]
    fn rfc8489_9_2_4_password_algorithm_negotiation() {
        let nonce = "obMatJos2AAADxxxxxxxxxxxxxxxxxxx";
        let offered = offered_algorithms();
        let sha = PasswordAlgorithm::new(Algorithm::Sha256);
        let md5 = PasswordAlgorithm::new(Algorithm::Md5);
        assert_eq!(negotiate(nonce, None, None), Ok(KeyChoice::Legacy));
        assert_eq!(negotiate(nonce, Some(&offered), Some(&sha)), Ok(KeyChoice::Negotiated(Algorithm::Sha256)));
        assert_eq!(negotiate(nonce, Some(&offered), Some(&md5)), Ok(KeyChoice::Negotiated(Algorithm::Md5)));
        assert_eq!(negotiate(nonce, Some(&offered), None), Err(NegotiationError::Incomplete));
        assert_eq!(negotiate(nonce, None, Some(&sha)), Err(NegotiationError::Incomplete));
        let stripped = PasswordAlgorithms::new(&[Algorithm::Md5]);
        assert_eq!(negotiate(nonce, Some(&stripped), Some(&md5)), Err(NegotiationError::Tampered));
        let reordered = PasswordAlgorithms::new(&[Algorithm::Md5, Algorithm::Sha256]);
        assert_eq!(negotiate(nonce, Some(&reordered), Some(&sha)), Err(NegotiationError::Tampered));
        let unknown: PasswordAlgorithm = crate::stun::attributes::Opaque(vec![0, 3, 0, 0]);
        assert_eq!(negotiate(nonce, Some(&offered), Some(&unknown)), Err(NegotiationError::NotOffered));
        // Without the "Password algorithms" bit the attributes are not looked at.
        assert_eq!(negotiate("obMatJos2AAAC...", Some(&stripped), Some(&md5)), Ok(KeyChoice::Legacy));
        assert_eq!(negotiate("legacy-nonce", Some(&offered), Some(&sha)), Ok(KeyChoice::Legacy));
    }

    #[test]
    fn rfc8489_b_1_request_authenticates_against_a_static_user_found_by_userhash() {
        use crate::stun::attributes::Userhash;
        use crate::stun::integrity::rfc8489_vectors as b1;
        let mut creds = Credentials::new(b1::REALM);
        creds.add_user(b1::USERNAME, b1::PASSWORD);
        let decoded = crate::stun::message::decode(b1::B1_ERRATUM_6268).unwrap();
        let hash = decoded.message.get_attribute::<Userhash>().unwrap();
        let user = creds.user_for_hash(hash.value()).unwrap();
        assert_eq!(user, b1::USERNAME);
        let chosen = decoded.message.get_attribute::<PasswordAlgorithm>().unwrap().entry().unwrap();
        let keys = creds.keys_for(user, chosen.algorithm().unwrap(), 0).unwrap();
        assert!(decoded.integrity_sha256.unwrap().verify(keys[0].as_bytes(), b1::B1_ERRATUM_6268));
        let md5 = creds.keys_for(user, Algorithm::Md5, 0).unwrap();
        assert!(!decoded.integrity_sha256.unwrap().verify(md5[0].as_bytes(), b1::B1_ERRATUM_6268));
    }
}
