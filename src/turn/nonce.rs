//! Stateless nonces (RFC 8489 §9.2): the nonce cookie announcing the STUN Security
//! Features, and the MAC that binds a nonce's features and expiry to one client.

use super::tenant::TenantId;
use base64::Engine;
use ring::hmac;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

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
    /// Seconds already counted at `epoch`: a fleet's nodes count from one wall-clock
    /// origin (see [`NonceCodec::shared`]); 0 for a node's own codec.
    offset: u32,
    /// Whether the client's port is bound too, not only its IP address. A fleet's
    /// codec binds the address only: a client sent on by 300 over TCP or TLS opens a
    /// new connection, from a new port, with the nonce it has.
    bind_port: bool,
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
        NonceCodec { key: hmac::Key::new(hmac::HMAC_SHA256, secret), lifetime, epoch, offset: 0, bind_port: true }
    }

    /// A codec every node of a fleet shares, so a nonce one node issued is valid on
    /// another (a client sent on by 300 Try Alternate keeps its nonce): the same
    /// `secret`, and expiries counted from one wall-clock origin, `since_origin`
    /// seconds before `now`. Nodes' clocks must agree to within a nonce's lifetime.
    pub fn shared(secret: &[u8; 32], lifetime: Duration, now: Instant, since_origin: u32) -> Self {
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
        NonceCodec { key, lifetime, epoch: now, offset: since_origin, bind_port: false }
    }

    /// Changes how long newly issued nonces live (a config reload); nonces already
    /// issued keep the expiry they carry.
    pub fn set_lifetime(&mut self, lifetime: Duration) {
        self.lifetime = lifetime;
    }

    fn mac(&self, features: SecurityFeatures, expiry: u32, client: SocketAddr, tenant: TenantId) -> [u8; MAC_BYTES] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(&features.bytes());
        // The tenant too: a nonce one realm issued is stale in another.
        ctx.update(&tenant.0.to_be_bytes());
        ctx.update(&expiry.to_be_bytes());
        match client.ip() {
            std::net::IpAddr::V4(ip) => ctx.update(&ip.octets()),
            std::net::IpAddr::V6(ip) => ctx.update(&ip.octets()),
        }
        if self.bind_port {
            ctx.update(&client.port().to_be_bytes());
        }
        let tag = ctx.sign();
        let mut out = [0u8; MAC_BYTES];
        out.copy_from_slice(&tag.as_ref()[..MAC_BYTES]);
        out
    }

    fn seconds(&self, now: Instant) -> u32 {
        let elapsed = u32::try_from(now.saturating_duration_since(self.epoch).as_secs()).unwrap_or(u32::MAX);
        self.offset.saturating_add(elapsed)
    }

    /// A fresh nonce for `client` of `tenant`, announcing `features`.
    pub fn issue(&self, now: Instant, client: SocketAddr, features: SecurityFeatures, tenant: TenantId) -> String {
        let expiry = self.seconds(now).saturating_add(u32::try_from(self.lifetime.as_secs()).unwrap_or(u32::MAX));
        let mut body = [0u8; BODY_BYTES];
        body[..4].copy_from_slice(&expiry.to_be_bytes());
        body[4..].copy_from_slice(&self.mac(features, expiry, client, tenant));
        let mut nonce = features.cookie();
        base64::engine::general_purpose::STANDARD_NO_PAD.encode_string(body, &mut nonce);
        nonce
    }

    /// Checks a nonce received from `client` of `tenant`.
    pub fn check(&self, nonce: &str, now: Instant, client: SocketAddr, tenant: TenantId) -> NonceStatus {
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
        let expected = self.mac(features, expiry, client, tenant);
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

    const D: TenantId = TenantId::DEFAULT;

    const FEATURES: SecurityFeatures = SecurityFeatures(0b11);

    fn client(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn nonce_is_valid_until_its_lifetime_then_stale() {
        let t0 = Instant::now();
        let codec = NonceCodec::new(&[1; 32], Duration::from_secs(600), t0);
        let nonce = codec.issue(t0, client("192.0.2.1:5000"), FEATURES, D);
        assert_eq!(codec.check(&nonce, t0 + Duration::from_secs(599), client("192.0.2.1:5000"), D), NonceStatus::Valid);
        assert_eq!(codec.check(&nonce, t0 + Duration::from_secs(600), client("192.0.2.1:5000"), D), NonceStatus::Stale);
    }

    #[test]
    fn nonce_is_bound_to_the_client_address_and_the_secret() {
        let t0 = Instant::now();
        let codec = NonceCodec::new(&[1; 32], Duration::from_secs(600), t0);
        let nonce = codec.issue(t0, client("192.0.2.1:5000"), FEATURES, D);
        assert_eq!(codec.check(&nonce, t0, client("192.0.2.1:5001"), D), NonceStatus::Stale);
        assert_eq!(codec.check(&nonce, t0, client("[2001:db8::1]:5000"), D), NonceStatus::Stale);
        let other = NonceCodec::new(&[2; 32], Duration::from_secs(600), t0);
        assert_eq!(other.check(&nonce, t0, client("192.0.2.1:5000"), D), NonceStatus::Stale);
        assert_eq!(
            codec.check(&nonce, t0, client("192.0.2.1:5000"), TenantId(1)),
            NonceStatus::Stale,
            "another tenant"
        );
        let garbage = ["", "zz", "obMatJos2AAAD", "obMatJos2AAAD!!!!!!!!!!!!!!!!!!!", "ffffffff", &nonce[1..]];
        for garbage in garbage {
            assert_eq!(codec.check(garbage, t0, client("192.0.2.1:5000"), D), NonceStatus::Stale, "{garbage}");
        }
    }

    #[test]
    fn rfc8489_9_2_nonce_starts_with_the_cookie_and_stays_short() {
        let t0 = Instant::now();
        let codec = NonceCodec::new(&[1; 32], Duration::from_secs(600), t0);
        let nonce = codec.issue(t0, client("[2001:db8::1]:65535"), FEATURES, D);
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
        let nonce = codec.issue(t0, from, FEATURES, D);
        for bits in ["AAAA", "AAAB", "AAAC"] {
            let tampered = format!("{NONCE_COOKIE}{bits}{}", &nonce[COOKIE_LEN..]);
            assert_eq!(codec.check(&tampered, t0, from, D), NonceStatus::Stale, "{tampered}");
        }
        let plain = codec.issue(t0, from, SecurityFeatures::PASSWORD_ALGORITHMS, D);
        assert!(plain.starts_with("obMatJos2AAAB"));
        assert_eq!(codec.check(&plain, t0, from, D), NonceStatus::Valid);
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
    fn shared_codecs_of_two_nodes_accept_each_others_nonces() {
        let (a0, b0) = (Instant::now(), Instant::now() + Duration::from_secs(5000));
        let lifetime = Duration::from_secs(600);
        // Node a started its count 1000 s after the origin; b, whose monotonic clock
        // differs, 1000 s after it too (the same wall-clock moment).
        let a = NonceCodec::shared(&[7; 32], lifetime, a0, 1000);
        let b = NonceCodec::shared(&[7; 32], lifetime, b0, 1000);
        let nonce = a.issue(a0 + Duration::from_secs(10), client("192.0.2.1:5000"), FEATURES, D);
        assert_eq!(b.check(&nonce, b0 + Duration::from_secs(20), client("192.0.2.1:5000"), D), NonceStatus::Valid);
        assert_eq!(b.check(&nonce, b0 + Duration::from_secs(611), client("192.0.2.1:5000"), D), NonceStatus::Stale);
        // The port is not bound (a new TCP connection), the address is.
        assert_eq!(b.check(&nonce, b0 + Duration::from_secs(20), client("192.0.2.1:6000"), D), NonceStatus::Valid);
        assert_eq!(b.check(&nonce, b0 + Duration::from_secs(20), client("192.0.2.2:5000"), D), NonceStatus::Stale);
        let other = NonceCodec::shared(&[8; 32], lifetime, b0, 1000);
        assert_eq!(other.check(&nonce, b0, client("192.0.2.1:5000"), D), NonceStatus::Stale);
    }
}
