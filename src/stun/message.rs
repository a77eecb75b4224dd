//! Decoding requests and encoding responses with `stun_codec`, with integrity and
//! fingerprint handled over the raw bytes.

use super::attributes::Attribute;
use super::attributes::PasswordAlgorithms;
use super::integrity::{self, IntegrityKind};
use super::raw::{self, padded, Attributes, Header, ATTR_FINGERPRINT, HEADER_LEN};
use bytecodec::{DecodeExt, EncodeExt};
use std::net::SocketAddr;
use stun_codec::rfc5389::attributes::{ErrorCode, MappedAddress, Nonce, Realm, Software, XorMappedAddress};
use stun_codec::rfc5766::attributes::{Lifetime, XorPeerAddress, XorRelayAddress};
use stun_codec::{MessageClass, MessageDecoder, MessageEncoder, Method, TransactionId};

/// A STUN message with turnd's attribute set.
pub type Message = stun_codec::Message<Attribute>;

/// An integrity attribute as received: where it sits and its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceivedIntegrity {
    /// Which HMAC.
    pub kind: IntegrityKind,
    /// Offset of the attribute header within the message.
    pub offset: usize,
    value: [u8; 32],
    len: usize,
}

impl ReceivedIntegrity {
    /// The HMAC value as received.
    pub fn value(&self) -> &[u8] {
        self.value.get(..self.len).unwrap_or_default()
    }

    /// Checks this HMAC over `message` (the whole raw message it came in) with `key`.
    pub fn verify(&self, key: &[u8], message: &[u8]) -> bool {
        integrity::verify(self.kind, key, message, self.offset, self.value())
    }
}

/// A decoded request or indication: the attributes before (and including) the integrity
/// attributes; anything after them but FINGERPRINT is ignored, as RFC 8489 §14.5 says.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// The message with the covered attributes.
    pub message: Message,
    /// MESSAGE-INTEGRITY, if present.
    pub integrity_sha1: Option<ReceivedIntegrity>,
    /// MESSAGE-INTEGRITY-SHA256, if present.
    pub integrity_sha256: Option<ReceivedIntegrity>,
}

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not a STUN message we can answer: drop it silently (RFC 8489 §6.3).
    #[error("not a valid STUN message: {0}")]
    Drop(&'static str),
    /// The header is readable but the body is not: a request gets 400.
    #[error("malformed STUN message")]
    Malformed {
        /// Method from the header.
        method: Method,
        /// Class from the header.
        class: MessageClass,
        /// Transaction id from the header.
        transaction_id: TransactionId,
    },
}

/// Decodes a framed STUN message (see [`raw::classify`]).
pub fn decode(packet: &[u8]) -> Result<Decoded, DecodeError> {
    let header = Header::parse(packet).ok_or(DecodeError::Drop("short header"))?;
    let malformed = || match (Method::new(header.method()), class_from_bits(header.class_bits())) {
        (Ok(method), class) => {
            DecodeError::Malformed { method, class, transaction_id: TransactionId::new(header.transaction_id) }
        }
        (Err(_), _) => DecodeError::Drop("bad method"),
    };

    let mut integrity_sha1 = None;
    let mut integrity_sha256 = None;
    let mut covered_end = packet.len();
    let mut fingerprint_seen = false;
    for attr in Attributes::new(packet) {
        let attr = attr.map_err(|_| malformed())?;
        if fingerprint_seen {
            // RFC 8489 §14.7: FINGERPRINT is the last attribute.
            return Err(malformed());
        }
        let end = attr.offset + 4 + padded(attr.value.len());
        let kind = match attr.kind {
            ATTR_FINGERPRINT => {
                if !integrity::verify_fingerprint(packet, attr.offset, attr.value) {
                    return Err(DecodeError::Drop("fingerprint mismatch"));
                }
                fingerprint_seen = true;
                covered_end = covered_end.min(attr.offset);
                continue;
            }
            raw::ATTR_MESSAGE_INTEGRITY => IntegrityKind::Sha1,
            raw::ATTR_MESSAGE_INTEGRITY_SHA256 => IntegrityKind::Sha256,
            _ => continue,
        };
        // Only the integrity attributes directly following the first one count.
        let first = integrity_sha1.is_none() && integrity_sha256.is_none();
        if !first && attr.offset != covered_end {
            continue;
        }
        let slot = match kind {
            IntegrityKind::Sha1 => &mut integrity_sha1,
            IntegrityKind::Sha256 => &mut integrity_sha256,
        };
        if slot.is_some() || attr.value.len() > 32 {
            return Err(malformed());
        }
        let mut value = [0u8; 32];
        value[..attr.value.len()].copy_from_slice(attr.value);
        *slot = Some(ReceivedIntegrity { kind, offset: attr.offset, value, len: attr.value.len() });
        covered_end = end;
    }

    let direct = packet.get(..covered_end).and_then(|covered| decode_direct(packet, covered));
    let message = if let Some(message) = direct {
        Some(Ok(message))
    } else if covered_end == packet.len() {
        decode_framed(packet)
    } else {
        // Re-frame the covered prefix so the codec never sees what follows integrity.
        let mut covered = packet.get(..covered_end).ok_or_else(malformed)?.to_vec();
        let length = (covered_end - HEADER_LEN) as u16;
        covered[2..4].copy_from_slice(&length.to_be_bytes());
        decode_framed(&covered)
    };
    match message {
        Some(Ok(message)) => Ok(Decoded { message, integrity_sha1, integrity_sha256 }),
        Some(Err(())) => Err(malformed()),
        None => Err(DecodeError::Drop("undecodable header")),
    }
}

/// The request attributes of a Binding, an Allocate (its first, unauthenticated try
/// too) and a Refresh, read straight from `covered` (the part of `packet` before what
/// follows the integrity attributes) into the message the codec would build, with the
/// same constructors and so the same checks. The codec's decoder took about a
/// microsecond per authenticated request (`cargo bench --bench micro -- stun/`).
/// `None` for anything else (another attribute, a length or value these types refuse,
/// an odd header): the codec decodes it then, and decides.
fn decode_direct(packet: &[u8], covered: &[u8]) -> Option<Message> {
    use super::attributes::{MessageIntegrity, MessageIntegritySha256, Opaque};
    use stun_codec::rfc5389::attributes::Username;
    use stun_codec::rfc5766::attributes::RequestedTransport;
    let header = Header::parse(packet)?;
    let framed = usize::from(header.length) + HEADER_LEN == packet.len() && header.length % 4 == 0;
    if !framed || header.cookie != raw::MAGIC_COOKIE || header.message_type & 0xC000 != 0 {
        return None;
    }
    let method = Method::new(header.method()).ok()?;
    let class = class_from_bits(header.class_bits());
    let mut message = Message::new(class, method, TransactionId::new(header.transaction_id));
    let text = |value: &[u8]| String::from_utf8(value.to_vec()).ok();
    let word = |value: &[u8]| <[u8; 4]>::try_from(value).ok();
    for attribute in Attributes::new(covered) {
        let attribute = attribute.ok()?;
        let value = attribute.value;
        match attribute.kind {
            Username::CODEPOINT => message.add_attribute(Username::new(text(value)?).ok()?),
            Realm::CODEPOINT => message.add_attribute(Realm::new(text(value)?).ok()?),
            Nonce::CODEPOINT => message.add_attribute(Nonce::new(text(value)?).ok()?),
            Software::CODEPOINT => message.add_attribute(Software::new(text(value)?).ok()?),
            // The codec reads a 32-bit word and keeps its first byte (RFFU ignored).
            RequestedTransport::CODEPOINT => message.add_attribute(RequestedTransport::new(word(value)?[0])),
            Lifetime::CODEPOINT => message.add_attribute(Lifetime::from_u32(u32::from_be_bytes(word(value)?))),
            MessageIntegrity::CODEPOINT => {
                let integrity: MessageIntegrity = Opaque(value.to_vec());
                message.add_attribute(integrity);
            }
            MessageIntegritySha256::CODEPOINT => {
                let integrity: MessageIntegritySha256 = Opaque(value.to_vec());
                message.add_attribute(integrity);
            }
            _ => return None,
        }
    }
    Some(message)
}

/// `None`: the header did not decode; `Some(Err)`: the body did not.
fn decode_framed(bytes: &[u8]) -> Option<Result<Message, ()>> {
    match MessageDecoder::<Attribute>::new().decode_from_bytes(bytes) {
        Ok(Ok(message)) => Some(Ok(message)),
        Ok(Err(_broken)) => Some(Err(())),
        Err(_) => None,
    }
}

/// RFC 8489 §5, figure 3: M11-M7, C1, M6-M4, C0, M3-M0.
fn raw_message_type(method: Method, class: MessageClass) -> u16 {
    let m = method.as_u16();
    let c: u16 = match class {
        MessageClass::Request => 0,
        MessageClass::Indication => 1,
        MessageClass::SuccessResponse => 2,
        MessageClass::ErrorResponse => 3,
    };
    (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | ((c & 1) << 4) | ((c & 2) << 7)
}

fn class_from_bits(bits: u8) -> MessageClass {
    match bits {
        0 => MessageClass::Request,
        1 => MessageClass::Indication,
        2 => MessageClass::SuccessResponse,
        _ => MessageClass::ErrorResponse,
    }
}

/// What protects an outgoing response.
#[derive(Debug, Clone, Copy)]
pub struct Protection<'a> {
    /// The long-term key, and which HMAC(s) to add.
    pub key: Option<(&'a [u8], IntegritySet)>,
    /// Whether to add FINGERPRINT.
    pub fingerprint: bool,
}

/// Which integrity attributes a response carries: those the request used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntegritySet {
    /// Add MESSAGE-INTEGRITY.
    pub sha1: bool,
    /// Add MESSAGE-INTEGRITY-SHA256.
    pub sha256: bool,
}

/// Encodes `message`, then appends integrity and fingerprint over the encoded bytes.
/// `None` only if the codec rejects a message we built, which is a bug.
pub fn encode(message: Message, protection: Protection<'_>) -> Option<Vec<u8>> {
    let message_type = raw_message_type(message.method(), message.class());
    let mut bytes = match encode_direct(&message) {
        Some(bytes) => bytes,
        None => MessageEncoder::<Attribute>::new().encode_into_bytes(message).ok()?,
    };
    // stun_codec 0.4 misplaces method bits M4-M11 (methods 0x010 and above) when it
    // encodes the type; the type field is written here from the RFC's layout instead.
    bytes.get_mut(..2)?.copy_from_slice(&message_type.to_be_bytes());
    if let Some((key, set)) = protection.key {
        if set.sha1 {
            integrity::append_integrity(&mut bytes, IntegrityKind::Sha1, key);
        }
        if set.sha256 {
            integrity::append_integrity(&mut bytes, IntegrityKind::Sha256, key);
        }
    }
    if protection.fingerprint {
        integrity::append_fingerprint(&mut bytes);
    }
    Some(bytes)
}

/// Room reserved past the attributes for what `encode` appends: MESSAGE-INTEGRITY (24),
/// MESSAGE-INTEGRITY-SHA256 (36) and FINGERPRINT (8).
const TRAILER_ROOM: usize = 24 + 36 + 8;

/// The attributes of the answers turnd sends most (Binding, Allocate and Refresh
/// successes, 401 and 438 challenges, most errors), written straight into bytes, as
/// the codec writes them (type, length, value, zero padding; the header's type field is
/// fixed by the caller). The codec costs about a microsecond per answer in encoder
/// state machines and copies (`cargo bench --bench micro -- stun/`). `None` when the
/// message holds an attribute not handled here: the codec encodes it then.
fn encode_direct(message: &Message) -> Option<Vec<u8>> {
    use crate::stun::raw::encode_xor_address;
    if message.unknown_attributes().next().is_some() {
        return None;
    }
    let tid = message.transaction_id();
    let tid = tid.as_bytes();
    let mut out = Vec::with_capacity(256 + TRAILER_ROOM);
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&raw::MAGIC_COOKIE.to_be_bytes());
    out.extend_from_slice(tid);
    let mut address = [0u8; 20];
    for attribute in message.attributes() {
        let (kind, value): (u16, &[u8]) = match attribute {
            Attribute::XorMappedAddress(a) => {
                let len = encode_xor_address(a.address(), tid, &mut address)?;
                (XorMappedAddress::CODEPOINT, address.get(..len)?)
            }
            Attribute::XorRelayAddress(a) => {
                let len = encode_xor_address(a.address(), tid, &mut address)?;
                (XorRelayAddress::CODEPOINT, address.get(..len)?)
            }
            Attribute::XorPeerAddress(a) => {
                let len = encode_xor_address(a.address(), tid, &mut address)?;
                (XorPeerAddress::CODEPOINT, address.get(..len)?)
            }
            Attribute::Lifetime(a) => {
                let seconds = u32::try_from(a.lifetime().as_secs()).ok()?;
                address[..4].copy_from_slice(&seconds.to_be_bytes());
                (Lifetime::CODEPOINT, &address[..4])
            }
            Attribute::Software(a) => (Software::CODEPOINT, a.description().as_bytes()),
            Attribute::Realm(a) => (Realm::CODEPOINT, a.text().as_bytes()),
            Attribute::Nonce(a) => (Nonce::CODEPOINT, a.value().as_bytes()),
            Attribute::ErrorCode(a) => {
                let code = a.code();
                let reason = a.reason_phrase().as_bytes();
                push_header(&mut out, ErrorCode::CODEPOINT, 4 + reason.len())?;
                out.extend_from_slice(&[0, 0, (code / 100) as u8, (code % 100) as u8]);
                out.extend_from_slice(reason);
                pad(&mut out, 4 + reason.len());
                continue;
            }
            Attribute::PasswordAlgorithms(a) => (PasswordAlgorithms::CODEPOINT, a.value()),
            _ => return None,
        };
        push_header(&mut out, kind, value.len())?;
        out.extend_from_slice(value);
        pad(&mut out, value.len());
    }
    let length = u16::try_from(out.len() - HEADER_LEN).ok()?;
    out.get_mut(2..4)?.copy_from_slice(&length.to_be_bytes());
    Some(out)
}

/// An attribute's type and length; `None` past the 16-bit length.
fn push_header(out: &mut Vec<u8>, kind: u16, len: usize) -> Option<()> {
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&u16::try_from(len).ok()?.to_be_bytes());
    Some(())
}

/// Zero padding of a value `len` bytes long to four bytes (RFC 8489 §14).
fn pad(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(&[0u8; 3][..padded(len) - len]);
}

/// An error response to a request, with the reason phrase given (may be empty).
pub fn error_response(method: Method, transaction_id: TransactionId, code: u16, reason: &str) -> Message {
    let mut message = Message::new(MessageClass::ErrorResponse, method, transaction_id);
    // Codes are ours and in 300..=699, so this cannot fail; fall back to 500 all the same.
    let attr =
        ErrorCode::new(code, reason.to_owned()).unwrap_or_else(|_| stun_codec::rfc5389::errors::ServerError.into());
    message.add_attribute(attr);
    message
}

/// A success response to an RFC 3489 Binding request (no magic cookie, 16-byte
/// transaction id): MAPPED-ADDRESS only, as those clients understand nothing newer.
pub fn classic_binding_response(request: &[u8], mapped: SocketAddr) -> Option<Vec<u8>> {
    let header = Header::parse(request)?;
    if header.message_type != 0x0001 {
        return None;
    }
    let mut out = Vec::with_capacity(HEADER_LEN + 24);
    out.extend_from_slice(&0x0101u16.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(request.get(4..HEADER_LEN)?);
    // Encode MAPPED-ADDRESS through the codec to stay consistent with it.
    let mut probe =
        Message::new(MessageClass::SuccessResponse, stun_codec::rfc5389::methods::BINDING, TransactionId::new([0; 12]));
    probe.add_attribute(MappedAddress::new(mapped));
    let encoded = MessageEncoder::<Attribute>::new().encode_into_bytes(probe).ok()?;
    out.extend_from_slice(encoded.get(HEADER_LEN..)?);
    let length = (out.len() - HEADER_LEN) as u16;
    out[2..4].copy_from_slice(&length.to_be_bytes());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::integrity::tests_vectors as v;
    use stun_codec::rfc5389::attributes::{Software, Username, XorMappedAddress};

    #[test]
    fn rfc5769_2_1_request_decodes_with_its_attributes() {
        let d = decode(v::SAMPLE_REQUEST).unwrap();
        assert_eq!(d.message.class(), MessageClass::Request);
        assert_eq!(d.message.get_attribute::<Software>().unwrap().description(), "STUN test client");
        assert_eq!(d.message.get_attribute::<Username>().unwrap().name(), "evtj:h6vY");
        let mi = d.integrity_sha1.unwrap();
        assert!(mi.verify(b"VOkJxbRl1RmTxUk/WvJxBt", v::SAMPLE_REQUEST));
    }

    #[test]
    fn rfc5769_2_2_and_2_3_responses_decode_their_mapped_address() {
        let d = decode(v::SAMPLE_IPV4_RESPONSE).unwrap();
        let addr = d.message.get_attribute::<XorMappedAddress>().unwrap().address();
        assert_eq!(addr, "192.0.2.1:32853".parse().unwrap());
        let d = decode(v::SAMPLE_IPV6_RESPONSE).unwrap();
        let addr = d.message.get_attribute::<XorMappedAddress>().unwrap().address();
        assert_eq!(addr, "[2001:db8:1234:5678:11:2233:4455:6677]:32853".parse().unwrap());
    }

    #[test]
    fn rfc5769_2_4_long_term_request_decodes() {
        let d = decode(v::SAMPLE_LONG_TERM_REQUEST).unwrap();
        assert_eq!(d.message.get_attribute::<stun_codec::rfc5389::attributes::Realm>().unwrap().text(), "example.org");
        assert!(d.integrity_sha1.is_some());
    }

    #[test]
    fn attributes_after_integrity_are_ignored() {
        let mut msg = v::SAMPLE_LONG_TERM_REQUEST.to_vec();
        // Append SOFTWARE after MESSAGE-INTEGRITY.
        msg.extend_from_slice(&[0x80, 0x22, 0x00, 0x04, b'e', b'v', b'i', b'l']);
        let len = (msg.len() - HEADER_LEN) as u16;
        msg[2..4].copy_from_slice(&len.to_be_bytes());
        let d = decode(&msg).unwrap();
        assert!(d.message.get_attribute::<Software>().is_none());
        // Integrity still verifies: it covers only what precedes it.
        let username = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";
        let key = integrity::long_term_key_md5(username, "example.org", "TheMatrIX");
        assert!(d.integrity_sha1.unwrap().verify(&key, &msg));
    }

    #[test]
    fn fingerprint_mismatch_is_dropped_and_misplaced_fingerprint_is_malformed() {
        let mut msg = v::SAMPLE_REQUEST.to_vec();
        let last = msg.len() - 1;
        msg[last] ^= 0xFF;
        assert_eq!(decode(&msg).unwrap_err(), DecodeError::Drop("fingerprint mismatch"));
        let mut msg = v::SAMPLE_REQUEST.to_vec();
        msg.extend_from_slice(&[0x80, 0x22, 0x00, 0x00]);
        let len = (msg.len() - HEADER_LEN) as u16;
        msg[2..4].copy_from_slice(&len.to_be_bytes());
        assert!(matches!(decode(&msg), Err(DecodeError::Malformed { .. })));
    }

    #[test]
    fn encode_adds_integrity_and_fingerprint_that_decode_accepts() {
        let tid = TransactionId::new([3; 12]);
        let mut m = Message::new(MessageClass::SuccessResponse, stun_codec::rfc5389::methods::BINDING, tid);
        m.add_attribute(XorMappedAddress::new("198.51.100.7:5000".parse().unwrap()));
        let set = IntegritySet { sha1: true, sha256: true };
        let bytes = encode(m, Protection { key: Some((b"k", set)), fingerprint: true }).unwrap();
        let d = decode(&bytes).unwrap();
        assert!(d.integrity_sha1.unwrap().verify(b"k", &bytes));
        assert!(d.integrity_sha256.unwrap().verify(b"k", &bytes));
        assert!(!d.integrity_sha256.unwrap().verify(b"j", &bytes));
    }

    #[test]
    fn the_direct_encoder_writes_what_the_codec_writes() {
        use stun_codec::rfc5389::attributes::{Nonce, Realm};
        use stun_codec::rfc5766::attributes::{Lifetime, ReservationToken, XorPeerAddress, XorRelayAddress};
        use stun_codec::rfc5766::methods::{ALLOCATE, REFRESH};
        let tid = TransactionId::new([7, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
        let v4: SocketAddr = "192.0.2.1:32853".parse().unwrap();
        let v6: SocketAddr = "[2001:db8:1234:5678:11:2233:4455:6677]:32853".parse().unwrap();
        let mut messages = Vec::new();
        for software in ["", "x", "turnd/0.1.0", "a name of 17 bytes", "\u{30DE}\u{30C8}"] {
            let mut m = Message::new(MessageClass::SuccessResponse, ALLOCATE, tid);
            m.add_attribute(XorRelayAddress::new(v4));
            m.add_attribute(XorRelayAddress::new(v6));
            m.add_attribute(Lifetime::from_u32(600));
            m.add_attribute(XorMappedAddress::new(v6));
            m.add_attribute(Software::new(software.to_owned()).unwrap());
            messages.push(m);
        }
        let mut m = Message::new(MessageClass::SuccessResponse, REFRESH, tid);
        m.add_attribute(Lifetime::from_u32(u32::MAX));
        m.add_attribute(XorPeerAddress::new(v4));
        messages.push(m);
        for (code, reason) in [(401, ""), (438, "Stale Nonce"), (508, "Insufficient Capacity"), (599, "abc")] {
            let mut m = error_response(ALLOCATE, tid, code, reason);
            m.add_attribute(Realm::new("example.org".to_owned()).unwrap());
            m.add_attribute(Nonce::new("obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA".to_owned()).unwrap());
            m.add_attribute(crate::stun::attributes::Opaque::<0x8002>(vec![0, 2, 0, 0, 0, 1, 0, 0]));
            messages.push(m);
        }
        messages.push(Message::new(MessageClass::SuccessResponse, REFRESH, tid));
        for m in messages {
            let direct = encode_direct(&m).expect("handled");
            let codec = MessageEncoder::<Attribute>::new().encode_into_bytes(m.clone()).unwrap();
            assert_eq!(direct[2..], codec[2..], "{m:?}");
        }
        // What it does not handle goes to the codec, and still encodes.
        let mut m = Message::new(MessageClass::SuccessResponse, ALLOCATE, tid);
        m.add_attribute(ReservationToken::new(7));
        assert!(encode_direct(&m).is_none());
        assert!(encode(m, Protection { key: None, fingerprint: true }).is_some());
    }

    #[test]
    fn the_direct_decoder_reads_what_the_codec_reads_and_leaves_it_the_rest() {
        use stun_codec::rfc5389::attributes::{Nonce, Realm};
        use stun_codec::rfc5766::attributes::{EvenPort, Lifetime, RequestedTransport};
        use stun_codec::rfc5766::methods::{ALLOCATE, REFRESH};
        let tid = TransactionId::new([9; 12]);
        let codec = |bytes: &[u8]| MessageDecoder::<Attribute>::new().decode_from_bytes(bytes).unwrap().unwrap();
        let same = |a: &Message, b: &Message| {
            (a.class(), a.method(), a.transaction_id()) == (b.class(), b.method(), b.transaction_id())
                && a.attributes().collect::<Vec<_>>() == b.attributes().collect::<Vec<_>>()
                && b.unknown_attributes().next().is_none()
        };
        let mut requests = Vec::new();
        let mut m = Message::new(MessageClass::Request, ALLOCATE, tid);
        m.add_attribute(RequestedTransport::new(17));
        requests.push(m.clone());
        m.add_attribute(Software::new("a client of 19 bytes".to_owned()).unwrap());
        m.add_attribute(Lifetime::from_u32(3600));
        m.add_attribute(Username::new("\u{30DE}\u{30C8}\u{30EA}".to_owned()).unwrap());
        m.add_attribute(Realm::new("example.org".to_owned()).unwrap());
        m.add_attribute(Nonce::new("obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA".to_owned()).unwrap());
        requests.push(m);
        let mut m = Message::new(MessageClass::Request, REFRESH, tid);
        m.add_attribute(Lifetime::from_u32(0));
        requests.push(m);
        requests.push(Message::new(MessageClass::Request, stun_codec::rfc5389::methods::BINDING, tid));
        for m in requests {
            for set in [
                None,
                Some(IntegritySet { sha1: true, sha256: false }),
                Some(IntegritySet { sha1: true, sha256: true }),
            ] {
                let bytes =
                    encode(m.clone(), Protection { key: set.map(|s| (&b"key"[..], s)), fingerprint: false }).unwrap();
                let direct = decode_direct(&bytes, &bytes).expect("read directly");
                assert!(same(&direct, &codec(&bytes)), "{m:?}");
            }
        }
        // Another attribute, a LIFETIME of the wrong length, a USERNAME that is not
        // UTF-8: the codec's to decode (or refuse).
        let mut m = Message::new(MessageClass::Request, ALLOCATE, tid);
        m.add_attribute(EvenPort::new(true));
        let bytes = encode(m, Protection { key: None, fingerprint: false }).unwrap();
        assert!(decode_direct(&bytes, &bytes).is_none());
        assert!(decode(&bytes).is_ok());
        let mut m = Message::new(MessageClass::Request, REFRESH, tid);
        m.add_attribute(Lifetime::from_u32(0));
        let mut bytes = encode(m, Protection { key: None, fingerprint: false }).unwrap();
        bytes[HEADER_LEN + 3] = 3;
        assert!(decode_direct(&bytes, &bytes).is_none());
        assert!(matches!(decode(&bytes), Err(DecodeError::Malformed { .. })));
        let mut m = Message::new(MessageClass::Request, ALLOCATE, tid);
        m.add_attribute(Username::new("ab".to_owned()).unwrap());
        let mut bytes = encode(m, Protection { key: None, fingerprint: false }).unwrap();
        bytes[HEADER_LEN + 4] = 0xFF;
        assert!(decode_direct(&bytes, &bytes).is_none());
        assert!(matches!(decode(&bytes), Err(DecodeError::Malformed { .. })));
    }

    #[test]
    fn rfc8489_5_high_methods_encode_to_the_rfc_layout() {
        for code in [0x001u16, 0x00F, 0x07F, 0x080, 0xABC, 0xFFF] {
            let method = Method::new(code).unwrap();
            let m = Message::new(MessageClass::ErrorResponse, method, TransactionId::new([1; 12]));
            let bytes = encode(m, Protection { key: None, fingerprint: true }).unwrap();
            let header = Header::parse(&bytes).unwrap();
            assert_eq!((header.method(), header.class_bits()), (code, 3));
            assert_eq!(decode(&bytes).unwrap().message.method(), method, "and the fingerprint still verifies");
        }
    }

    #[test]
    fn classic_binding_gets_mapped_address_and_same_transaction_id() {
        let mut req = vec![0x00, 0x01, 0x00, 0x00];
        req.extend_from_slice(&[9u8; 16]);
        let resp = classic_binding_response(&req, "10.0.0.1:1234".parse().unwrap()).unwrap();
        assert_eq!(&resp[..2], &[0x01, 0x01]);
        assert_eq!(&resp[4..20], &[9u8; 16]);
        assert_eq!(&resp[20..24], &[0x00, 0x01, 0x00, 0x08]);
        assert_eq!(&resp[26..28], &1234u16.to_be_bytes());
    }

    #[test]
    fn rfc8489_b_1_request_decodes_with_userhash_algorithm_and_sha256_integrity() {
        use crate::stun::attributes::{Algorithm, PasswordAlgorithm, Userhash};
        use crate::stun::integrity::rfc8489_vectors as b1;
        use stun_codec::rfc5389::attributes::{Nonce, Realm};
        let d = decode(b1::B1_ERRATUM_6268).unwrap();
        assert_eq!(d.message.class(), MessageClass::Request);
        assert_eq!(
            d.message.get_attribute::<Userhash>().unwrap().value(),
            &integrity::userhash(b1::USERNAME, b1::REALM)
        );
        assert!(d.message.get_attribute::<Username>().is_none());
        assert_eq!(d.message.get_attribute::<Nonce>().unwrap().value(), b1::NONCE);
        assert_eq!(d.message.get_attribute::<Realm>().unwrap().text(), b1::REALM);
        let algorithm = d.message.get_attribute::<PasswordAlgorithm>().unwrap().entry().unwrap().algorithm();
        assert_eq!(algorithm, Some(Algorithm::Sha256));
        assert!(d.integrity_sha1.is_none());
        let key = integrity::long_term_key_sha256(b1::USERNAME, b1::REALM, b1::PASSWORD);
        assert!(d.integrity_sha256.unwrap().verify(&key, b1::B1_ERRATUM_6268));
        // As published, the header's length counts the header too: not a STUN message.
        assert_eq!(raw::classify(b1::B1_PUBLISHED), raw::PacketKind::Unknown);
        assert!(decode(b1::B1_PUBLISHED).is_err());
    }
}
