//! Long-term credentials (RFC 8489 §9.2): user keys for the MD5 and SHA-256 password
//! algorithms, USERHASH lookup, TURN REST API ephemeral credentials, the password
//! algorithm negotiation, and stateless nonces carrying the nonce cookie.

use crate::stun::attributes::{Algorithm, PasswordAlgorithm, PasswordAlgorithms};
use crate::stun::integrity::{long_term_key_md5, long_term_key_sha256, userhash};
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
        if self.secrets.is_empty() {
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

/// The STUN Security Features a nonce cookie announces (RFC 8489 §9.2, §18.1): 24
/// flag bits.
///
/// Bit order: RFC 8489 §9.2 and §18.1 as published make bit 0 the most significant
/// bit; the RFC's own Appendix B.1 vector ("obMatJos2AAAC", a USERHASH request) and
/// the erratum on §18.1 make bit 0 the least significant, and so does libjuice's
/// client. turnd follows the erratum and the vector. A client reading the other order
/// sees two unassigned bits, so it sends USERNAME rather than USERHASH; it still finds
/// PASSWORD-ALGORITHMS in the challenge and negotiates with it (§9.2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SecurityFeatures(u32);

/// RFC 8489 §9.2: the nonce cookie's fixed prefix.
pub const NONCE_COOKIE: &str = "obMatJos2";
/// The cookie prefix plus the 4 base64 characters of the 24 feature bits.
const COOKIE_LEN: usize = NONCE_COOKIE.len() + 4;

impl SecurityFeatures {
    /// Bit 0, "Password algorithms": the challenge lists PASSWORD-ALGORITHMS.
    pub const PASSWORD_ALGORITHMS: SecurityFeatures = SecurityFeatures(1 << 0);
    /// Bit 1, "Username anonymity": clients send USERHASH instead of USERNAME.
    pub const USERNAME_ANONYMITY: SecurityFeatures = SecurityFeatures(1 << 1);

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: SecurityFeatures) -> bool {
        self.0 & other.0 == other.0
    }

    /// These features less the bits of `other`.
    pub fn without(self, other: SecurityFeatures) -> SecurityFeatures {
        SecurityFeatures(self.0 & !other.0)
    }

    /// The three bytes the cookie encodes.
    fn bytes(self) -> [u8; 3] {
        let b = self.0.to_be_bytes();
        [b[1], b[2], b[3]]
    }

    /// The 13-character nonce cookie: "obMatJos2" and the base64 of the 24 bits.
    pub fn cookie(self) -> String {
        let mut cookie = String::with_capacity(COOKIE_LEN);
        cookie.push_str(NONCE_COOKIE);
        base64::engine::general_purpose::STANDARD.encode_string(self.bytes(), &mut cookie);
        cookie
    }

    /// The features a nonce announces, or `None` when it does not start with a nonce
    /// cookie. This reads what the client sent back; only [`NonceCodec::check`] says
    /// whether turnd issued it.
    pub fn from_nonce(nonce: &str) -> Option<SecurityFeatures> {
        let encoded = nonce.strip_prefix(NONCE_COOKIE)?.get(..4)?;
        let mut bytes = [0u8; 3];
        let n = base64::engine::general_purpose::STANDARD.decode_slice(encoded, &mut bytes).ok()?;
        (n == 3).then(|| SecurityFeatures(u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]])))
    }
}

impl std::ops::BitOr for SecurityFeatures {
    type Output = SecurityFeatures;

    fn bitor(self, other: SecurityFeatures) -> SecurityFeatures {
        SecurityFeatures(self.0 | other.0)
    }
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

/// Whether a received nonce can be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceStatus {
    /// Issued by us, for this client, and not expired.
    Valid,
    /// Expired, forged, or issued to another client address: answer 438.
    Stale,
}

/// Stateless nonces: `obMatJos2 <features> <base64(expiry | mac)>`, where the MAC binds
/// the feature bits and the expiry to the client's transport address. A flood of
/// unauthenticated requests costs no memory, a nonce captured from one client is
/// useless from another address, and a man in the middle who clears a feature bit to
/// bid the client down (RFC 8489 §9.2.1) turns the nonce stale.
///
/// The nonce is 28 characters (under the 128 RFC 8489 §14.10 allows, and short so that
/// a 401 stays within three times the smallest Allocate). The MAC
/// key is drawn once from the server's random source, the operating system's CSPRNG
/// in production (see [`crate::turn::SystemRng`]); nonces themselves need no
/// randomness.
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

/// Bytes of MAC kept in the nonce. 56 bits: a nonce is no credential (MESSAGE-INTEGRITY
/// still needs the key), and guessing one for a spoofed address takes 2^55 tries
/// on average against a server that answers 20 of them a second per source.
const MAC_BYTES: usize = 7;
/// The expiry (4 bytes) and the MAC, before base64: 11 bytes, 15 characters with no
/// padding, so the whole NONCE attribute needs no padding either.
const BODY_BYTES: usize = 4 + MAC_BYTES;
/// The whole nonce: the cookie, then the body in unpadded base64.
pub const NONCE_LEN: usize = COOKIE_LEN + (BODY_BYTES * 4).div_ceil(3);
// RFC 8489 §14.10: a NONCE has fewer than 128 characters.
const _: () = assert!(NONCE_LEN < 128 && NONCE_LEN % 4 == 0);

impl NonceCodec {
    /// `secret` keys the MAC; `epoch` is the instant expiries are counted from (nonces
    /// use the monotonic clock, so wall-clock jumps do not expire them all).
    pub fn new(secret: &[u8; 32], lifetime: Duration, epoch: Instant) -> Self {
        NonceCodec { key: hmac::Key::new(hmac::HMAC_SHA256, secret), lifetime, epoch }
    }

    /// Changes how long newly issued nonces live (a config reload); nonces already
    /// issued keep the expiry they carry.
    pub fn set_lifetime(&mut self, lifetime: Duration) {
        self.lifetime = lifetime;
    }

    fn mac(&self, features: SecurityFeatures, expiry: u32, client: SocketAddr) -> [u8; MAC_BYTES] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(&features.bytes());
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

    /// A fresh nonce for `client`, announcing `features`.
    pub fn issue(&self, now: Instant, client: SocketAddr, features: SecurityFeatures) -> String {
        let expiry = self.seconds(now).saturating_add(u32::try_from(self.lifetime.as_secs()).unwrap_or(u32::MAX));
        let mut body = [0u8; BODY_BYTES];
        body[..4].copy_from_slice(&expiry.to_be_bytes());
        body[4..].copy_from_slice(&self.mac(features, expiry, client));
        let mut nonce = features.cookie();
        base64::engine::general_purpose::STANDARD_NO_PAD.encode_string(body, &mut nonce);
        nonce
    }

    /// Checks a nonce received from `client`.
    pub fn check(&self, nonce: &str, now: Instant, client: SocketAddr) -> NonceStatus {
        let parsed = (|| {
            if nonce.len() != NONCE_LEN {
                return None;
            }
            let features = SecurityFeatures::from_nonce(nonce)?;
            // Room for the decoder's rounded-up estimate; the length is checked after.
            let mut body = [0u8; BODY_BYTES + 2];
            let encoded = nonce.get(COOKIE_LEN..)?;
            let n = base64::engine::general_purpose::STANDARD_NO_PAD.decode_slice(encoded, &mut body).ok()?;
            (n == BODY_BYTES).then_some((features, body))
        })();
        let Some((features, body)) = parsed else {
            return NonceStatus::Stale;
        };
        let expiry = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        let expected = self.mac(features, expiry, client);
        let authentic = bool::from(subtle::ConstantTimeEq::ct_eq(&body[4..BODY_BYTES], &expected[..]));
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

    const FEATURES: SecurityFeatures = SecurityFeatures(0b11);

    fn client(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn nonce_is_valid_until_its_lifetime_then_stale() {
        let t0 = Instant::now();
        let codec = NonceCodec::new(&[1; 32], Duration::from_secs(600), t0);
        let nonce = codec.issue(t0, client("192.0.2.1:5000"), FEATURES);
        assert_eq!(codec.check(&nonce, t0 + Duration::from_secs(599), client("192.0.2.1:5000")), NonceStatus::Valid);
        assert_eq!(codec.check(&nonce, t0 + Duration::from_secs(600), client("192.0.2.1:5000")), NonceStatus::Stale);
    }

    #[test]
    fn nonce_is_bound_to_the_client_address_and_the_secret() {
        let t0 = Instant::now();
        let codec = NonceCodec::new(&[1; 32], Duration::from_secs(600), t0);
        let nonce = codec.issue(t0, client("192.0.2.1:5000"), FEATURES);
        assert_eq!(codec.check(&nonce, t0, client("192.0.2.1:5001")), NonceStatus::Stale);
        assert_eq!(codec.check(&nonce, t0, client("[2001:db8::1]:5000")), NonceStatus::Stale);
        let other = NonceCodec::new(&[2; 32], Duration::from_secs(600), t0);
        assert_eq!(other.check(&nonce, t0, client("192.0.2.1:5000")), NonceStatus::Stale);
        let garbage = ["", "zz", "obMatJos2AAAD", "obMatJos2AAAD!!!!!!!!!!!!!!!!!!!", "ffffffff", &nonce[1..]];
        for garbage in garbage {
            assert_eq!(codec.check(garbage, t0, client("192.0.2.1:5000")), NonceStatus::Stale, "{garbage}");
        }
    }

    #[test]
    fn rfc8489_9_2_nonce_starts_with_the_cookie_and_stays_short() {
        let t0 = Instant::now();
        let codec = NonceCodec::new(&[1; 32], Duration::from_secs(600), t0);
        let nonce = codec.issue(t0, client("[2001:db8::1]:65535"), FEATURES);
        assert_eq!(nonce.len(), NONCE_LEN);
        assert!(nonce.starts_with("obMatJos2AAAD"), "{nonce}");
        // RFC 3261 qdtext: no quote, no backslash, no whitespace.
        assert!(nonce.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\'), "{nonce}");
        assert_eq!(SecurityFeatures::from_nonce(&nonce), Some(FEATURES));
    }

    #[test]
    fn rfc8489_9_2_1_feature_bits_cannot_be_cleared_in_transit() {
        let t0 = Instant::now();
        let codec = NonceCodec::new(&[1; 32], Duration::from_secs(600), t0);
        let from = client("192.0.2.1:5000");
        let nonce = codec.issue(t0, from, FEATURES);
        for bits in ["AAAA", "AAAB", "AAAC"] {
            let tampered = format!("{NONCE_COOKIE}{bits}{}", &nonce[COOKIE_LEN..]);
            assert_eq!(codec.check(&tampered, t0, from), NonceStatus::Stale, "{tampered}");
        }
        let plain = codec.issue(t0, from, SecurityFeatures::PASSWORD_ALGORITHMS);
        assert!(plain.starts_with("obMatJos2AAAB"));
        assert_eq!(codec.check(&plain, t0, from), NonceStatus::Valid);
    }

    #[test]
    fn rfc8489_18_1_cookie_bits_match_the_appendix_b_1_vector() {
        // Appendix B.1's nonce announces username anonymity (its request uses USERHASH).
        let features = SecurityFeatures::from_nonce("obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA").unwrap();
        assert!(features.contains(SecurityFeatures::USERNAME_ANONYMITY));
        assert!(!features.contains(SecurityFeatures::PASSWORD_ALGORITHMS));
        assert_eq!(SecurityFeatures::USERNAME_ANONYMITY.cookie(), "obMatJos2AAAC");
        assert_eq!(SecurityFeatures::default().cookie(), "obMatJos2AAAA");
        for no_cookie in ["", "obMatJos2", "obMatJos2AA", "obMatJos2A*AA", "0123456789abcdef", "obmatjos2AAAD"] {
            assert_eq!(SecurityFeatures::from_nonce(no_cookie), None, "{no_cookie}");
        }
    }

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
