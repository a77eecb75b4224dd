//! Just enough STUN/TURN for the generator, written straight onto the wire (turnd's
//! codec would cost the generator more than the servers it measures): requests with
//! long-term credentials, Send indications, and zero-copy reads of the answers.

use std::net::{SocketAddr, SocketAddrV4};
use turnd::stun::integrity::{append_fingerprint, append_integrity, IntegrityKind};
use turnd::stun::raw::{self, Attributes, Header, HEADER_LEN, MAGIC_COOKIE};

pub const BINDING: u16 = 0x001;
pub const ALLOCATE: u16 = 0x003;
pub const REFRESH: u16 = 0x004;
pub const SEND: u16 = 0x006;
pub const DATA: u16 = 0x007;
pub const CREATE_PERMISSION: u16 = 0x008;
pub const CHANNEL_BIND: u16 = 0x009;

pub const ATTR_USERNAME: u16 = 0x0006;
pub const ATTR_ERROR_CODE: u16 = 0x0009;
pub const ATTR_CHANNEL_NUMBER: u16 = 0x000C;
pub const ATTR_LIFETIME: u16 = 0x000D;
pub const ATTR_REALM: u16 = 0x0014;
pub const ATTR_NONCE: u16 = 0x0015;
pub const ATTR_XOR_RELAYED_ADDRESS: u16 = 0x0016;
pub const ATTR_REQUESTED_TRANSPORT: u16 = 0x0019;

/// Success-response class bits as `Header::class_bits` reports them.
pub const CLASS_SUCCESS: u8 = 2;

/// Marks the generator's transaction ids, so strays are ignored.
const TID_MARK: [u8; 4] = *b"tbnc";

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

/// The message type of a request for `method` (RFC 8489 §5: class bits zero).
fn request_type(method: u16) -> u16 {
    (method & 0x000F) | ((method & 0x0070) << 1) | ((method & 0x0F80) << 2)
}

/// Builds a request attribute by attribute.
pub struct Request {
    bytes: Vec<u8>,
}

impl Request {
    pub fn new(method: u16, tid: [u8; 12]) -> Self {
        let mut bytes = Vec::with_capacity(160);
        bytes.extend_from_slice(&request_type(method).to_be_bytes());
        bytes.extend_from_slice(&[0, 0]);
        bytes.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        bytes.extend_from_slice(&tid);
        Request { bytes }
    }

    pub fn attr(mut self, kind: u16, value: &[u8]) -> Self {
        self.bytes.extend_from_slice(&kind.to_be_bytes());
        self.bytes.extend_from_slice(&(value.len() as u16).to_be_bytes());
        self.bytes.extend_from_slice(value);
        self.bytes.resize(self.bytes.len() + raw::padded(value.len()) - value.len(), 0);
        let len = (self.bytes.len() - HEADER_LEN) as u16;
        self.bytes[2..4].copy_from_slice(&len.to_be_bytes());
        self
    }

    pub fn xor_address(self, kind: u16, addr: SocketAddrV4) -> Self {
        let mut tid = [0u8; 12];
        tid.copy_from_slice(&self.bytes[8..20]);
        let mut value = [0u8; 8];
        raw::encode_xor_address(SocketAddr::V4(addr), &tid, &mut value);
        self.attr(kind, &value)
    }

    /// USERNAME, REALM, NONCE, MESSAGE-INTEGRITY and FINGERPRINT when `auth` is given;
    /// a bare request otherwise.
    pub fn finish(self, auth: Option<&Auth>) -> Vec<u8> {
        let Some(auth) = auth else {
            return self.bytes;
        };
        let mut bytes = self
            .attr(ATTR_USERNAME, auth.user.as_bytes())
            .attr(ATTR_REALM, &auth.realm)
            .attr(ATTR_NONCE, &auth.nonce)
            .bytes;
        append_integrity(&mut bytes, IntegrityKind::Sha1, &auth.key);
        append_fingerprint(&mut bytes);
        bytes
    }
}

/// Long-term credentials with the realm and nonce learned from a 401.
#[derive(Clone)]
pub struct Auth {
    pub user: String,
    pub realm: Vec<u8>,
    pub nonce: Vec<u8>,
    pub key: [u8; 16],
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

/// The DATA payload of a Data indication, or `None` if it is not one.
pub fn data_indication_payload(bytes: &[u8]) -> Option<&[u8]> {
    let header = Header::parse(bytes)?;
    if header.method() != DATA || header.class_bits() != 1 {
        return None;
    }
    Attributes::new(bytes).map_while(Result::ok).find(|a| a.kind == raw::ATTR_DATA).map(|a| a.value)
}

/// The fixed 36 bytes in front of the payload of a Send (or Data) indication to an
/// IPv4 peer: header, XOR-PEER-ADDRESS, DATA attribute header.
pub const INDICATION_HEADER: usize = HEADER_LEN + 12 + 4;

/// Writes an indication header of `method` for `payload_len` bytes to `peer` into
/// `out[..36]`.
pub fn write_indication_header(out: &mut [u8], method: u16, tid: &[u8; 12], peer: SocketAddrV4, payload_len: usize) {
    let message_type = request_type(method) | 0x0010; // indication class
    let body = 12 + 4 + raw::padded(payload_len);
    out[0..2].copy_from_slice(&message_type.to_be_bytes());
    out[2..4].copy_from_slice(&(body as u16).to_be_bytes());
    out[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out[8..20].copy_from_slice(tid);
    out[20..22].copy_from_slice(&raw::ATTR_XOR_PEER_ADDRESS.to_be_bytes());
    out[22..24].copy_from_slice(&8u16.to_be_bytes());
    raw::encode_xor_address(SocketAddr::V4(peer), tid, &mut out[24..32]);
    out[32..34].copy_from_slice(&raw::ATTR_DATA.to_be_bytes());
    out[34..36].copy_from_slice(&(payload_len as u16).to_be_bytes());
}
