//! What the generator needs of STUN beyond `turnd::client`, which builds every message
//! it sends: transaction ids that name the session and request they belong to, and
//! zero-copy reads of the answers (decoding them with the codec would cost the
//! generator more than the servers it measures).

use std::net::SocketAddr;
use stun_codec::TransactionId;
use turnd::client::{Client, Credentials, Request};
use turnd::stun::raw::{self, Attributes, Header, MAGIC_COOKIE};

pub const ATTR_ERROR_CODE: u16 = 0x0009;
pub const ATTR_REALM: u16 = 0x0014;
pub const ATTR_NONCE: u16 = 0x0015;
pub const ATTR_XOR_RELAYED_ADDRESS: u16 = 0x0016;

/// Success-response class bits as `Header::class_bits` reports them.
pub const CLASS_SUCCESS: u8 = 2;

/// Marks the generator's transaction ids, so strays are ignored.
const TID_MARK: [u8; 4] = *b"tbnc";

/// A bare Binding request (no FINGERPRINT, as the generator always sent it).
pub fn binding_request(tid: [u8; 12]) -> Vec<u8> {
    let client = Client::new(Credentials::None, tid);
    match client.request_with_id(&Request::binding().without_fingerprint(), TransactionId::new(tid)) {
        Ok(sent) => sent.bytes,
        Err(e) => panic!("a Binding request does not encode: {e}"),
    }
}

/// A transaction id carrying the session index and its request number.
pub fn tid(session: u32, seq: u32) -> [u8; 12] {
    let mut t = [0u8; 12];
    t[..4].copy_from_slice(&session.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..].copy_from_slice(&TID_MARK);
    t
}

/// The session index and request number of one of our transaction ids.
pub fn tid_parts(t: &[u8; 12]) -> Option<(u32, u32)> {
    (t[8..] == TID_MARK)
        .then(|| (u32::from_be_bytes([t[0], t[1], t[2], t[3]]), u32::from_be_bytes([t[4], t[5], t[6], t[7]])))
}

/// A STUN message received, read in place.
pub struct Response<'a> {
    pub header: Header,
    pub bytes: &'a [u8],
}

impl<'a> Response<'a> {
    pub fn parse(bytes: &'a [u8]) -> Option<Self> {
        let header = Header::parse(bytes)?;
        (header.cookie == MAGIC_COOKIE).then_some(Response { header, bytes })
    }

    pub fn attr(&self, kind: u16) -> Option<&'a [u8]> {
        Attributes::new(self.bytes).map_while(Result::ok).find(|a| a.kind == kind).map(|a| a.value)
    }

    /// The error code of an error response.
    pub fn error_code(&self) -> Option<u16> {
        let v = self.attr(ATTR_ERROR_CODE)?;
        Some(u16::from(*v.get(2)? & 0x7) * 100 + u16::from(*v.get(3)?))
    }

    pub fn xor_address(&self, kind: u16) -> Option<SocketAddr> {
        raw::decode_xor_address(self.attr(kind)?, &self.header.transaction_id)
    }

    pub fn is_success(&self) -> bool {
        self.header.class_bits() == CLASS_SUCCESS
    }
}
