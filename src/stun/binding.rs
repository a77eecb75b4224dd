//! The answer to a plain Binding request, written straight into bytes. Binding is
//! most of what a STUN server sees (every ICE agent asks, and keep-alives repeat it)
//! and needs no state, so it skips the attribute codec: decoding the request and
//! encoding the response through it cost about 2 us of the 2.5 us turnd spent per
//! Binding (`cargo bench --bench micro`). Only requests it answers byte for byte as
//! the general path would are taken; everything else goes that way.

use super::integrity::{append_fingerprint, push_attribute as push, verify_fingerprint};
use super::raw::{encode_xor_address, padded, Attributes, Header, ATTR_FINGERPRINT, HEADER_LEN, MAGIC_COOKIE};
use std::net::SocketAddr;

const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
const ATTR_SOFTWARE: u16 = 0x8022;

/// The success response to `request` when it is a well-framed Binding request with
/// no attribute but, optionally, a valid FINGERPRINT; `None` otherwise. It carries
/// XOR-MAPPED-ADDRESS for `mapped`, then SOFTWARE when given (already checked to be a
/// valid SOFTWARE value), then FINGERPRINT, as the general path sends them. SOFTWARE
/// is left out when the response would be longer than `budget` bytes.
pub fn plain_binding_response(
    request: &[u8],
    mapped: SocketAddr,
    software: Option<&str>,
    budget: Option<usize>,
) -> Option<Vec<u8>> {
    let header = Header::parse(request)?;
    let framed = usize::from(header.length) + HEADER_LEN == request.len() && header.length % 4 == 0;
    if header.message_type != BINDING_REQUEST || header.cookie != MAGIC_COOKIE || !framed {
        return None;
    }
    let mut attributes = Attributes::new(request);
    let plain = match attributes.next() {
        None => true,
        Some(Ok(fingerprint)) => {
            fingerprint.kind == ATTR_FINGERPRINT
                && attributes.next().is_none()
                && verify_fingerprint(request, fingerprint.offset, fingerprint.value)
        }
        Some(Err(_)) => false,
    };
    if !plain {
        return None;
    }
    let address_len = if mapped.is_ipv4() { 12 } else { 24 };
    let without_software = HEADER_LEN + address_len + 8;
    let software = software
        .map(str::as_bytes)
        .filter(|s| !s.is_empty() && budget.map_or(true, |b| without_software + 4 + padded(s.len()) <= b));
    let capacity = without_software + software.map_or(0, |s| 4 + padded(s.len()));
    let mut out = Vec::with_capacity(capacity);
    out.extend_from_slice(&BINDING_SUCCESS.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out.extend_from_slice(&header.transaction_id);
    let mut address = [0u8; 20];
    let len = encode_xor_address(mapped, &header.transaction_id, &mut address)?;
    push(&mut out, ATTR_XOR_MAPPED_ADDRESS, address.get(..len)?);
    if let Some(software) = software {
        push(&mut out, ATTR_SOFTWARE, software);
    }
    append_fingerprint(&mut out);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::message::{self, Message, Protection};
    use stun_codec::rfc5389::attributes::{Software, XorMappedAddress};
    use stun_codec::rfc5389::methods::BINDING;
    use stun_codec::{MessageClass, TransactionId};

    const TID: [u8; 12] = [7, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];

    fn request(fingerprint: bool, software: Option<&str>) -> Vec<u8> {
        let mut m = Message::new(MessageClass::Request, BINDING, TransactionId::new(TID));
        if let Some(s) = software {
            m.add_attribute(Software::new(s.to_owned()).unwrap());
        }
        message::encode(m, Protection { key: None, fingerprint }).unwrap()
    }

    /// What the general path sends (handlers.rs `binding` then `respond`).
    fn general(mapped: SocketAddr, software: Option<&str>) -> Vec<u8> {
        let mut m = Message::new(MessageClass::SuccessResponse, BINDING, TransactionId::new(TID));
        m.add_attribute(XorMappedAddress::new(mapped));
        if let Some(s) = software {
            m.add_attribute(Software::new(s.to_owned()).unwrap());
        }
        message::encode(m, Protection { key: None, fingerprint: true }).unwrap()
    }

    #[test]
    fn the_answer_is_the_general_paths_byte_for_byte() {
        for mapped in ["192.0.2.1:32853", "[2001:db8:1234:5678:11:2233:4455:6677]:32853"] {
            let mapped: SocketAddr = mapped.parse().unwrap();
            for software in [None, Some("turnd/0.1.0"), Some("x"), Some("a name of 17 bytes")] {
                for fingerprint in [false, true] {
                    let fast = plain_binding_response(&request(fingerprint, None), mapped, software, None);
                    assert_eq!(fast, Some(general(mapped, software)), "{mapped} {software:?} {fingerprint}");
                }
            }
        }
    }

    #[test]
    fn anything_but_a_plain_binding_request_takes_the_general_path() {
        let mapped: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let plain = request(true, None);
        assert!(plain_binding_response(&plain, mapped, None, None).is_some());
        // Another attribute (the general path may answer 420 or ignore it).
        assert_eq!(plain_binding_response(&request(true, Some("client")), mapped, None, None), None);
        // A wrong FINGERPRINT, a wrong length field, a truncated packet, an indication,
        // a classic (RFC 3489) request.
        let mut bad = plain.clone();
        *bad.last_mut().unwrap() ^= 1;
        let mut long = plain.clone();
        long[3] += 4;
        let mut indication = plain.clone();
        indication[1] = 0x11;
        let mut classic = request(false, None);
        classic[4] = 0;
        for (what, packet) in [
            ("bad fingerprint", &bad[..]),
            ("length", &long[..]),
            ("truncated", &plain[..plain.len() - 1]),
            ("indication", &indication[..]),
            ("classic", &classic[..]),
            ("header only, cut", &plain[..12]),
        ] {
            assert_eq!(plain_binding_response(packet, mapped, None, None), None, "{what}");
        }
    }

    #[test]
    fn software_is_left_out_when_the_answer_would_pass_the_budget() {
        let request = request(false, None);
        let v6: SocketAddr = "[2001:db8::1]:5000".parse().unwrap();
        let budget = Some(3 * request.len());
        let answer = plain_binding_response(&request, v6, Some("turnd/0.1.0"), budget).unwrap();
        assert_eq!(answer, general(v6, None), "an IPv6 answer with SOFTWARE would be 68 bytes");
        assert!(answer.len() <= 3 * request.len());
        let v4: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let answer = plain_binding_response(&request, v4, Some("turnd/0.1.0"), budget).unwrap();
        assert_eq!(answer, general(v4, Some("turnd/0.1.0")), "56 bytes fit");
    }
}
