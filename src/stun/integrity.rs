//! MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and FINGERPRINT, computed over the raw
//! bytes as received (RFC 8489 §14.5-14.7). The codec is never asked to re-encode a
//! message to check it: the received bytes are the truth, and re-encoding costs
//! allocations per request.

use super::raw::{padded, ATTR_FINGERPRINT, ATTR_MESSAGE_INTEGRITY, ATTR_MESSAGE_INTEGRITY_SHA256, HEADER_LEN};
use ring::hmac;

/// RFC 8489 §14.7: the CRC-32 is XOR'ed with this ("STUN").
const FINGERPRINT_XOR: u32 = 0x5354_554E;
const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// Which HMAC protects a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntegrityKind {
    /// MESSAGE-INTEGRITY: HMAC-SHA1, 20 bytes.
    Sha1,
    /// MESSAGE-INTEGRITY-SHA256: HMAC-SHA256, 32 bytes (may be truncated to 16..32).
    Sha256,
}

impl IntegrityKind {
    fn algorithm(self) -> hmac::Algorithm {
        match self {
            IntegrityKind::Sha1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            IntegrityKind::Sha256 => hmac::HMAC_SHA256,
        }
    }

    /// The attribute type that carries this HMAC.
    pub fn attribute(self) -> u16 {
        match self {
            IntegrityKind::Sha1 => ATTR_MESSAGE_INTEGRITY,
            IntegrityKind::Sha256 => ATTR_MESSAGE_INTEGRITY_SHA256,
        }
    }

    fn output_len(self) -> usize {
        match self {
            IntegrityKind::Sha1 => 20,
            IntegrityKind::Sha256 => 32,
        }
    }
}

/// The long-term credential key for the MD5 password algorithm (RFC 8489 §9.2.2):
/// `MD5(username ":" realm ":" password)`.
pub fn long_term_key_md5(username: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut ctx = md5::Context::new();
    ctx.consume(username.as_bytes());
    ctx.consume(b":");
    ctx.consume(realm.as_bytes());
    ctx.consume(b":");
    ctx.consume(password.as_bytes());
    ctx.compute().0
}

/// The long-term credential key for the SHA-256 password algorithm (RFC 8489
/// §18.5.1.2): `SHA-256(username ":" realm ":" password)`, 32 bytes.
pub fn long_term_key_sha256(username: &str, realm: &str, password: &str) -> [u8; 32] {
    sha256(&[username.as_bytes(), b":", realm.as_bytes(), b":", password.as_bytes()])
}

/// The USERHASH value for `username` in `realm` (RFC 8489 §14.4):
/// `SHA-256(username ":" realm)`. turnd applies no OpaqueString (RFC 8265) profile: the
/// names are hashed as the UTF-8 bytes configured, which is what RFC 8489 Appendix B.1
/// does too.
pub fn userhash(username: &str, realm: &str) -> [u8; 32] {
    sha256(&[username.as_bytes(), b":", realm.as_bytes()])
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        ctx.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The HMAC over `message[..attr_offset]` with the header length field rewritten as if
/// the integrity attribute at `attr_offset` were the last one (RFC 8489 §14.5).
fn integrity_tag(
    kind: IntegrityKind,
    key: &[u8],
    message: &[u8],
    attr_offset: usize,
    value_len: usize,
) -> Option<hmac::Tag> {
    let covered = message.get(..attr_offset)?;
    let head = covered.get(..HEADER_LEN)?;
    let length = u16::try_from(attr_offset + 4 + value_len - HEADER_LEN).ok()?;
    let mut ctx = with_hmac_key(kind, key, hmac::Context::with_key);
    ctx.update(&head[..2]);
    ctx.update(&length.to_be_bytes());
    ctx.update(covered.get(4..)?);
    Some(ctx.sign())
}

/// The last HMAC key each thread used, per algorithm: its bytes and ring's key, which
/// holds the inner and outer hash states already fed with the padded key.
struct LastKey {
    kind: IntegrityKind,
    bytes: [u8; 32],
    len: usize,
    key: hmac::Key,
}

thread_local! {
    /// An authenticated request and its answer use the same key (verify, then sign), and
    /// a client's next request again; setting up an HMAC key costs two hash blocks of the
    /// four or five an HMAC over a request takes, so it is kept between calls. Per thread:
    /// each worker has its own, no lock. Only the last key is kept: a cache that cannot
    /// grow, whatever clients send.
    static LAST_KEY: std::cell::RefCell<Option<LastKey>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with ring's HMAC key for `key` under `kind`, set up again only when it
/// differs from the last one this thread used.
fn with_hmac_key<T>(kind: IntegrityKind, key: &[u8], f: impl FnOnce(&hmac::Key) -> T) -> T {
    let fresh = || hmac::Key::new(kind.algorithm(), key);
    if key.len() > 32 {
        return f(&fresh());
    }
    LAST_KEY.with(|slot| {
        let Ok(mut slot) = slot.try_borrow_mut() else {
            return f(&fresh());
        };
        let same = slot.as_ref().is_some_and(|last| {
            // Constant time: the comparison is over key material.
            last.kind == kind
                && last.len == key.len()
                && bool::from(subtle::ConstantTimeEq::ct_eq(last.bytes.get(..key.len()).unwrap_or_default(), key))
        });
        if !same {
            let mut bytes = [0u8; 32];
            if let Some(prefix) = bytes.get_mut(..key.len()) {
                prefix.copy_from_slice(key);
            }
            *slot = Some(LastKey { kind, bytes, len: key.len(), key: fresh() });
        }
        match slot.as_ref() {
            Some(last) => f(&last.key),
            None => f(&fresh()),
        }
    })
}

/// Checks the integrity attribute found at `attr_offset` (its value `received`) in
/// constant time.
pub fn verify(kind: IntegrityKind, key: &[u8], message: &[u8], attr_offset: usize, received: &[u8]) -> bool {
    let Some(tag) = integrity_tag(kind, key, message, attr_offset, received.len()) else {
        return false;
    };
    let expected = tag.as_ref();
    // RFC 8489 §14.6: SHA256 values may be truncated, to no fewer than 16 bytes.
    let valid_len = match kind {
        IntegrityKind::Sha1 => received.len() == 20,
        IntegrityKind::Sha256 => (16..=32).contains(&received.len()) && received.len() % 4 == 0,
    };
    valid_len && expected.get(..received.len()).is_some_and(|e| bool::from(subtle::ConstantTimeEq::ct_eq(e, received)))
}

/// FINGERPRINT value for a message whose FINGERPRINT attribute starts at `attr_offset`.
fn fingerprint_value(message: &[u8], attr_offset: usize) -> Option<u32> {
    let covered = message.get(..attr_offset)?;
    let length = u16::try_from(attr_offset + 8 - HEADER_LEN).ok()?;
    let mut digest = CRC32.digest();
    digest.update(covered.get(..2)?);
    digest.update(&length.to_be_bytes());
    digest.update(covered.get(4..)?);
    Some(digest.finalize() ^ FINGERPRINT_XOR)
}

/// Checks a received FINGERPRINT attribute.
pub fn verify_fingerprint(message: &[u8], attr_offset: usize, received: &[u8]) -> bool {
    let Ok(received) = <[u8; 4]>::try_from(received) else {
        return false;
    };
    fingerprint_value(message, attr_offset) == Some(u32::from_be_bytes(received))
}

/// Appends an attribute to an encoded message and fixes up the header length.
pub(crate) fn push_attribute(message: &mut Vec<u8>, kind: u16, value: &[u8]) {
    message.extend_from_slice(&kind.to_be_bytes());
    message.extend_from_slice(&(value.len() as u16).to_be_bytes());
    message.extend_from_slice(value);
    message.resize(message.len() + padded(value.len()) - value.len(), 0);
    let length = (message.len() - HEADER_LEN) as u16;
    message[2..4].copy_from_slice(&length.to_be_bytes());
}

/// Appends MESSAGE-INTEGRITY or -SHA256 computed with `key` to an encoded message.
pub fn append_integrity(message: &mut Vec<u8>, kind: IntegrityKind, key: &[u8]) {
    let offset = message.len();
    match integrity_tag(kind, key, message, offset, kind.output_len()) {
        Some(tag) => push_attribute(message, kind.attribute(), tag.as_ref()),
        None => debug_assert!(false, "message shorter than its header"),
    }
}

/// Appends FINGERPRINT to an encoded message.
pub fn append_fingerprint(message: &mut Vec<u8>) {
    let offset = message.len();
    if let Some(value) = fingerprint_value(message, offset) {
        push_attribute(message, ATTR_FINGERPRINT, &value.to_be_bytes());
    }
}

/// RFC 5769 test vectors, shared by the codec's tests.
#[cfg(test)]
pub(crate) mod tests_vectors {
    /// RFC 5769 §2.1: sample request, short-term password "VOkJxbRl1RmTxUk/WvJxBt".
    pub(crate) const SAMPLE_REQUEST: &[u8] = &[
        0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87,
        0xdf, 0xae, 0x80, 0x22, 0x00, 0x10, 0x53, 0x54, 0x55, 0x4e, 0x20, 0x74, 0x65, 0x73, 0x74, 0x20, 0x63, 0x6c,
        0x69, 0x65, 0x6e, 0x74, 0x00, 0x24, 0x00, 0x04, 0x6e, 0x00, 0x01, 0xff, 0x80, 0x29, 0x00, 0x08, 0x93, 0x2f,
        0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36, 0x00, 0x06, 0x00, 0x09, 0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68, 0x36, 0x76,
        0x59, 0x20, 0x20, 0x20, 0x00, 0x08, 0x00, 0x14, 0x9a, 0xea, 0xa7, 0x0c, 0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e,
        0xf2, 0xb5, 0xb2, 0xd3, 0xf2, 0x49, 0xc1, 0xb5, 0x71, 0xa2, 0x80, 0x28, 0x00, 0x04, 0xe5, 0x7a, 0x3b, 0xcf,
    ];

    /// RFC 5769 §2.2: sample IPv4 response.
    pub(crate) const SAMPLE_IPV4_RESPONSE: &[u8] = &[
        0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87,
        0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76, 0x65, 0x63, 0x74, 0x6f, 0x72, 0x20,
        0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43, 0x00, 0x08, 0x00, 0x14, 0x2b, 0x91,
        0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3, 0x8c, 0x74, 0x89, 0xf9, 0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b, 0xe7, 0xd7,
        0x80, 0x28, 0x00, 0x04, 0xc0, 0x7d, 0x4c, 0x96,
    ];

    /// RFC 5769 §2.3: sample IPv6 response.
    pub(crate) const SAMPLE_IPV6_RESPONSE: &[u8] = &[
        0x01, 0x01, 0x00, 0x48, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87,
        0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76, 0x65, 0x63, 0x74, 0x6f, 0x72, 0x20,
        0x00, 0x20, 0x00, 0x14, 0x00, 0x02, 0xa1, 0x47, 0x01, 0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25,
        0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9, 0x00, 0x08, 0x00, 0x14, 0xa3, 0x82, 0x95, 0x4e, 0x4b, 0xe6, 0x7b, 0xf1,
        0x17, 0x84, 0xc9, 0x7c, 0x82, 0x92, 0xc2, 0x75, 0xbf, 0xe3, 0xed, 0x41, 0x80, 0x28, 0x00, 0x04, 0xc8, 0xfb,
        0x0b, 0x4c,
    ];

    /// RFC 5769 §2.4: sample request with long-term authentication. USERNAME is
    /// "<U+30DE><U+30C8><U+30EA><U+30C3><U+30AF><U+30B9>", password "The<U+00AD>M<U+00AA>tr<U+2168>"
    /// (SASLprep gives "TheMatrIX"), realm "example.org".
    pub(crate) const SAMPLE_LONG_TERM_REQUEST: &[u8] = &[
        0x00, 0x01, 0x00, 0x60, 0x21, 0x12, 0xa4, 0x42, 0x78, 0xad, 0x34, 0x33, 0xc6, 0xad, 0x72, 0xc0, 0x29, 0xda,
        0x41, 0x2e, 0x00, 0x06, 0x00, 0x12, 0xe3, 0x83, 0x9e, 0xe3, 0x83, 0x88, 0xe3, 0x83, 0xaa, 0xe3, 0x83, 0x83,
        0xe3, 0x82, 0xaf, 0xe3, 0x82, 0xb9, 0x00, 0x00, 0x00, 0x15, 0x00, 0x1c, 0x66, 0x2f, 0x2f, 0x34, 0x39, 0x39,
        0x6b, 0x39, 0x35, 0x34, 0x64, 0x36, 0x4f, 0x4c, 0x33, 0x34, 0x6f, 0x4c, 0x39, 0x46, 0x53, 0x54, 0x76, 0x79,
        0x36, 0x34, 0x73, 0x41, 0x00, 0x14, 0x00, 0x0b, 0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0x2e, 0x6f, 0x72,
        0x67, 0x00, 0x00, 0x08, 0x00, 0x14, 0xf6, 0x70, 0x24, 0x65, 0x6d, 0xd6, 0x4a, 0x3e, 0x02, 0xb8, 0xe0, 0x71,
        0x2e, 0x85, 0xc9, 0xa2, 0x8c, 0xa8, 0x96, 0x66,
    ];
}

/// RFC 8489 Appendix B.1 sample requests, shared by the codec's and the credentials'
/// tests.
#[cfg(test)]
pub(crate) mod rfc8489_vectors {
    /// B.1's username, "<U+30DE><U+30C8><U+30EA><U+30C3><U+30AF><U+30B9>".
    pub(crate) const USERNAME: &str = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";
    /// B.1's password after OpaqueString processing.
    pub(crate) const PASSWORD: &str = "TheMatrIX";
    /// B.1's realm.
    pub(crate) const REALM: &str = "example.org";
    /// B.1's nonce.
    pub(crate) const NONCE: &str = "obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA";

    /// RFC 8489 Appendix B.1 as published: "Sample Request with Long-Term
    /// Authentication with MESSAGE-INTEGRITY-SHA256 and USERHASH". Its header length
    /// (0x9c) counts the header too, and the HMAC was computed over that wrong length.
    pub(crate) const B1_PUBLISHED: &[u8] = &[
        0x00, 0x01, 0x00, 0x9c, 0x21, 0x12, 0xa4, 0x42, 0x78, 0xad, 0x34, 0x33, 0xc6, 0xad, 0x72, 0xc0, 0x29, 0xda,
        0x41, 0x2e, 0x00, 0x1e, 0x00, 0x20, 0x4a, 0x3c, 0xf3, 0x8f, 0xef, 0x69, 0x92, 0xbd, 0xa9, 0x52, 0xc6, 0x78,
        0x04, 0x17, 0xda, 0x0f, 0x24, 0x81, 0x94, 0x15, 0x56, 0x9e, 0x60, 0xb2, 0x05, 0xc4, 0x6e, 0x41, 0x40, 0x7f,
        0x17, 0x04, 0x00, 0x15, 0x00, 0x29, 0x6f, 0x62, 0x4d, 0x61, 0x74, 0x4a, 0x6f, 0x73, 0x32, 0x41, 0x41, 0x41,
        0x43, 0x66, 0x2f, 0x2f, 0x34, 0x39, 0x39, 0x6b, 0x39, 0x35, 0x34, 0x64, 0x36, 0x4f, 0x4c, 0x33, 0x34, 0x6f,
        0x4c, 0x39, 0x46, 0x53, 0x54, 0x76, 0x79, 0x36, 0x34, 0x73, 0x41, 0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x0b,
        0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0x2e, 0x6f, 0x72, 0x67, 0x00, 0x00, 0x1c, 0x00, 0x20, 0xe4, 0x68,
        0x6c, 0x8f, 0x0e, 0xde, 0xb5, 0x90, 0x13, 0xe0, 0x70, 0x90, 0x01, 0x0a, 0x93, 0xef, 0xcc, 0xbc, 0xcc, 0x54,
        0x4c, 0x0a, 0x45, 0xd9, 0xf8, 0x30, 0xaa, 0x6d, 0x6f, 0x73, 0x5a, 0x01,
    ];

    /// Appendix B.1 as corrected by RFC 8489 Errata ID 6268: the length fixed to
    /// 0x90, PASSWORD-ALGORITHM (SHA-256, no parameters) added before the integrity
    /// attribute, and MESSAGE-INTEGRITY-SHA256 recomputed.
    pub(crate) const B1_ERRATUM_6268: &[u8] = &[
        0x00, 0x01, 0x00, 0x90, 0x21, 0x12, 0xa4, 0x42, 0x78, 0xad, 0x34, 0x33, 0xc6, 0xad, 0x72, 0xc0, 0x29, 0xda,
        0x41, 0x2e, 0x00, 0x1e, 0x00, 0x20, 0x4a, 0x3c, 0xf3, 0x8f, 0xef, 0x69, 0x92, 0xbd, 0xa9, 0x52, 0xc6, 0x78,
        0x04, 0x17, 0xda, 0x0f, 0x24, 0x81, 0x94, 0x15, 0x56, 0x9e, 0x60, 0xb2, 0x05, 0xc4, 0x6e, 0x41, 0x40, 0x7f,
        0x17, 0x04, 0x00, 0x15, 0x00, 0x29, 0x6f, 0x62, 0x4d, 0x61, 0x74, 0x4a, 0x6f, 0x73, 0x32, 0x41, 0x41, 0x41,
        0x43, 0x66, 0x2f, 0x2f, 0x34, 0x39, 0x39, 0x6b, 0x39, 0x35, 0x34, 0x64, 0x36, 0x4f, 0x4c, 0x33, 0x34, 0x6f,
        0x4c, 0x39, 0x46, 0x53, 0x54, 0x76, 0x79, 0x36, 0x34, 0x73, 0x41, 0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x0b,
        0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0x2e, 0x6f, 0x72, 0x67, 0x00, 0x00, 0x1d, 0x00, 0x04, 0x00, 0x02,
        0x00, 0x00, 0x00, 0x1c, 0x00, 0x20, 0xb5, 0xc7, 0xbf, 0x00, 0x5b, 0x6c, 0x52, 0xa2, 0x1c, 0x51, 0xc5, 0xe8,
        0x92, 0xf8, 0x19, 0x24, 0x13, 0x62, 0x96, 0xcb, 0x92, 0x7c, 0x43, 0x14, 0x93, 0x09, 0x27, 0x8c, 0xc6, 0x51,
        0x8e, 0x65,
    ];
}

#[cfg(test)]
mod tests {
    //! RFC 5769 and RFC 8489 test vectors through the integrity and fingerprint code.
    use super::tests_vectors::*;
    use super::*;
    use crate::stun::raw::{Attributes, RawAttribute};

    fn find(message: &[u8], kind: u16) -> RawAttribute<'_> {
        Attributes::new(message).map(|a| a.unwrap()).find(|a| a.kind == kind).unwrap()
    }

    fn check_short_term(message: &[u8]) {
        let mi = find(message, ATTR_MESSAGE_INTEGRITY);
        assert!(verify(IntegrityKind::Sha1, b"VOkJxbRl1RmTxUk/WvJxBt", message, mi.offset, mi.value));
        assert!(!verify(IntegrityKind::Sha1, b"VOkJxbRl1RmTxUk/WvJxBT", message, mi.offset, mi.value));
        let fp = find(message, ATTR_FINGERPRINT);
        assert!(verify_fingerprint(message, fp.offset, fp.value));
    }

    #[test]
    fn the_kept_hmac_key_never_answers_for_another_key_or_algorithm() {
        let mi = find(SAMPLE_REQUEST, ATTR_MESSAGE_INTEGRITY);
        let (right, wrong): (&[u8], &[u8]) = (b"VOkJxbRl1RmTxUk/WvJxBt", b"VOkJxbRl1RmTxUk/WvJxBT");
        let long = [7u8; 40];
        for _ in 0..3 {
            for (key, expected) in [(right, true), (wrong, false), (&long[..], false), (right, true), (right, true)] {
                assert_eq!(verify(IntegrityKind::Sha1, key, SAMPLE_REQUEST, mi.offset, mi.value), expected);
            }
            // The same bytes under the other algorithm: a different HMAC.
            let mut m = SAMPLE_REQUEST[..mi.offset].to_vec();
            append_integrity(&mut m, IntegrityKind::Sha256, right);
            let tag = find(&m, ATTR_MESSAGE_INTEGRITY_SHA256);
            assert_eq!(tag.value.len(), 32);
            assert!(verify(IntegrityKind::Sha256, right, &m, tag.offset, tag.value));
            assert!(!verify(IntegrityKind::Sha256, wrong, &m, tag.offset, tag.value));
            assert!(!verify(IntegrityKind::Sha1, right, &m, tag.offset, &tag.value[..20]));
        }
    }

    #[test]
    fn rfc5769_2_1_sample_request() {
        check_short_term(SAMPLE_REQUEST);
    }

    #[test]
    fn rfc5769_2_2_sample_ipv4_response() {
        check_short_term(SAMPLE_IPV4_RESPONSE);
    }

    #[test]
    fn rfc5769_2_3_sample_ipv6_response() {
        check_short_term(SAMPLE_IPV6_RESPONSE);
    }

    #[test]
    fn rfc5769_2_4_sample_request_with_long_term_authentication() {
        let username = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";
        let key = long_term_key_md5(username, "example.org", "TheMatrIX");
        let mi = find(SAMPLE_LONG_TERM_REQUEST, ATTR_MESSAGE_INTEGRITY);
        assert!(verify(IntegrityKind::Sha1, &key, SAMPLE_LONG_TERM_REQUEST, mi.offset, mi.value));
        let wrong = long_term_key_md5(username, "example.org", "TheMatrix");
        assert!(!verify(IntegrityKind::Sha1, &wrong, SAMPLE_LONG_TERM_REQUEST, mi.offset, mi.value));
    }

    #[test]
    fn fingerprint_mismatch_is_detected() {
        let mut corrupted = SAMPLE_REQUEST.to_vec();
        corrupted[30] ^= 1;
        let fp = find(&corrupted, ATTR_FINGERPRINT);
        assert!(!verify_fingerprint(&corrupted, fp.offset, fp.value));
    }

    #[test]
    fn appended_integrity_and_fingerprint_verify() {
        // Re-create the §2.2 response from its prefix and check we produce the same bytes.
        let mi_offset = find(SAMPLE_IPV4_RESPONSE, ATTR_MESSAGE_INTEGRITY).offset;
        let mut rebuilt = SAMPLE_IPV4_RESPONSE[..mi_offset].to_vec();
        append_integrity(&mut rebuilt, IntegrityKind::Sha1, b"VOkJxbRl1RmTxUk/WvJxBt");
        append_fingerprint(&mut rebuilt);
        assert_eq!(rebuilt, SAMPLE_IPV4_RESPONSE);
    }

    #[test]
    fn sha256_integrity_round_trip_and_truncation() {
        let mut msg = SAMPLE_REQUEST[..20].to_vec();
        msg[2..4].copy_from_slice(&[0, 0]);
        append_integrity(&mut msg, IntegrityKind::Sha256, b"key");
        let mi = find(&msg, ATTR_MESSAGE_INTEGRITY_SHA256);
        assert_eq!(mi.value.len(), 32);
        assert!(verify(IntegrityKind::Sha256, b"key", &msg, mi.offset, mi.value));
        assert!(!verify(IntegrityKind::Sha256, b"key", &msg, mi.offset, &mi.value[..15]));
    }

    #[test]
    fn rfc8489_9_2_2_md5_key_of_the_rfc_example() {
        // "user:realm:pass" gives 0x8493fbc53ba582fb4c044c456bdc40eb.
        let expected = [0x84, 0x93, 0xfb, 0xc5, 0x3b, 0xa5, 0x82, 0xfb, 0x4c, 0x04, 0x4c, 0x45, 0x6b, 0xdc, 0x40, 0xeb];
        assert_eq!(long_term_key_md5("user", "realm", "pass"), expected);
    }

    #[test]
    fn rfc8489_b_1_userhash_is_the_one_in_the_vector() {
        use super::rfc8489_vectors as v;
        let attribute = find(v::B1_ERRATUM_6268, 0x001E);
        assert_eq!(attribute.value, &userhash(v::USERNAME, v::REALM));
        assert_eq!(&v::B1_PUBLISHED[24..56], &userhash(v::USERNAME, v::REALM));
    }

    #[test]
    fn rfc8489_b_1_erratum_6268_sha256_integrity_verifies_with_the_sha256_key() {
        use super::rfc8489_vectors as v;
        let message = v::B1_ERRATUM_6268;
        let mi = find(message, ATTR_MESSAGE_INTEGRITY_SHA256);
        let key = long_term_key_sha256(v::USERNAME, v::REALM, v::PASSWORD);
        assert!(verify(IntegrityKind::Sha256, &key, message, mi.offset, mi.value));
        let md5 = long_term_key_md5(v::USERNAME, v::REALM, v::PASSWORD);
        assert!(!verify(IntegrityKind::Sha256, &md5, message, mi.offset, mi.value), "the MD5 key");
        let wrong = long_term_key_sha256(v::USERNAME, v::REALM, "TheMatrix");
        assert!(!verify(IntegrityKind::Sha256, &wrong, message, mi.offset, mi.value));
        // Re-creating the attribute from the covered prefix gives the same bytes.
        let mut rebuilt = message[..mi.offset].to_vec();
        rebuilt[2..4].copy_from_slice(&((mi.offset - HEADER_LEN) as u16).to_be_bytes());
        append_integrity(&mut rebuilt, IntegrityKind::Sha256, &key);
        assert_eq!(rebuilt, message);
    }

    #[test]
    fn rfc8489_b_1_as_published_was_signed_over_its_wrong_length() {
        use super::rfc8489_vectors as v;
        let message = v::B1_PUBLISHED;
        let mi = find(message, ATTR_MESSAGE_INTEGRITY_SHA256);
        let key = long_term_key_sha256(v::USERNAME, v::REALM, v::PASSWORD);
        // §14.6 computes the HMAC with the length up to the integrity attribute (0x88):
        // the published value does not verify that way...
        assert!(!verify(IntegrityKind::Sha256, &key, message, mi.offset, mi.value));
        // ...because it was computed over the header's 0x9c, as Errata ID 6268 explains.
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key), &message[..mi.offset]);
        assert_eq!(tag.as_ref(), mi.value);
    }
}
