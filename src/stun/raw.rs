//! Zero-copy views of STUN framing, used where the codec would cost an allocation:
//! classifying datagrams, locating MESSAGE-INTEGRITY and FINGERPRINT for the integrity
//! checks, and the Send-indication fast path.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// RFC 8489 §5: the fixed value in bytes 4..8 of every STUN message.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// RFC 8489 §5: the STUN header is 20 bytes.
pub const HEADER_LEN: usize = 20;
/// RFC 8489 §14.5 MESSAGE-INTEGRITY.
pub const ATTR_MESSAGE_INTEGRITY: u16 = 0x0008;
/// RFC 8489 §14.6 MESSAGE-INTEGRITY-SHA256.
pub const ATTR_MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
/// RFC 8489 §14.7 FINGERPRINT.
pub const ATTR_FINGERPRINT: u16 = 0x8028;
/// RFC 8656 §18.3 XOR-PEER-ADDRESS.
pub const ATTR_XOR_PEER_ADDRESS: u16 = 0x0012;
/// RFC 8656 §18.4 DATA.
pub const ATTR_DATA: u16 = 0x0013;
/// RFC 8656 §18.13 ICMP.
pub const ATTR_ICMP: u16 = 0x8004;
/// RFC 6062 §6.2.1 CONNECTION-ID.
pub const ATTR_CONNECTION_ID: u16 = 0x002A;

/// RFC 8656 §12: Send indication message type (method 0x006, class indication).
pub const TYPE_SEND_INDICATION: u16 = 0x0016;
/// RFC 8656 §12: Data indication message type (method 0x007, class indication).
pub const TYPE_DATA_INDICATION: u16 = 0x0017;

/// What the first bytes of a datagram say it is (RFC 7983 §7 demultiplexing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    /// First two bits 00, magic cookie present, length consistent with the buffer.
    Stun,
    /// First two bits 00, no magic cookie: possibly an RFC 3489 message.
    ClassicStun,
    /// First byte 0x40..=0x7F: ChannelData (RFC 8656 §12.4, RFC 5766 channel range).
    ChannelData,
    /// Anything else.
    Unknown,
}

/// Classifies a datagram without reading past what its length fields promise.
pub fn classify(packet: &[u8]) -> PacketKind {
    let Some(&first) = packet.first() else {
        return PacketKind::Unknown;
    };
    match first >> 6 {
        0 => {
            let Some(header) = Header::parse(packet) else {
                return PacketKind::Unknown;
            };
            if header.length as usize + HEADER_LEN != packet.len() || header.length % 4 != 0 {
                return PacketKind::Unknown;
            }
            if header.cookie == MAGIC_COOKIE {
                PacketKind::Stun
            } else {
                PacketKind::ClassicStun
            }
        }
        1 => PacketKind::ChannelData,
        _ => PacketKind::Unknown,
    }
}

/// The fixed STUN header, read without copying the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Message type: method and class bits interleaved (RFC 8489 §5).
    pub message_type: u16,
    /// Length of the attributes section in bytes.
    pub length: u16,
    /// Bytes 4..8; [`MAGIC_COOKIE`] for RFC 5389 and later.
    pub cookie: u32,
    /// Bytes 8..20.
    pub transaction_id: [u8; 12],
}

impl Header {
    /// Reads the header, or `None` when fewer than 20 bytes are present.
    pub fn parse(packet: &[u8]) -> Option<Self> {
        let h = packet.get(..HEADER_LEN)?;
        let mut transaction_id = [0u8; 12];
        transaction_id.copy_from_slice(h.get(8..20)?);
        Some(Header {
            message_type: u16::from_be_bytes([h[0], h[1]]),
            length: u16::from_be_bytes([h[2], h[3]]),
            cookie: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
            transaction_id,
        })
    }

    /// The 12-bit method (RFC 8489 §5, figure 3).
    pub fn method(&self) -> u16 {
        let t = self.message_type;
        (t & 0x000F) | ((t & 0x00E0) >> 1) | ((t & 0x3E00) >> 2)
    }

    /// The two class bits: 0 request, 1 indication, 2 success, 3 error.
    pub fn class_bits(&self) -> u8 {
        let t = self.message_type;
        (((t >> 4) & 1) | ((t >> 7) & 2)) as u8
    }
}

/// One attribute as it appears on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawAttribute<'a> {
    /// Attribute type code.
    pub kind: u16,
    /// Offset of the attribute's 4-byte header within the message.
    pub offset: usize,
    /// The value, without padding.
    pub value: &'a [u8],
}

/// Iterates over the attributes of a framed STUN message. Stops (yielding an error
/// once) at an attribute whose length runs past the message.
pub struct Attributes<'a> {
    message: &'a [u8],
    offset: usize,
    failed: bool,
}

/// An attribute's length field runs past the end of the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("attribute at offset {0} overruns the message")]
pub struct Overrun(pub usize);

impl<'a> Attributes<'a> {
    /// Walks `message`, which must be a whole STUN message (header included).
    pub fn new(message: &'a [u8]) -> Self {
        Attributes { message, offset: HEADER_LEN, failed: false }
    }
}

impl<'a> Iterator for Attributes<'a> {
    type Item = Result<RawAttribute<'a>, Overrun>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.offset >= self.message.len() {
            return None;
        }
        let offset = self.offset;
        let parsed = self.message.get(offset..offset + 4).and_then(|h| {
            let kind = u16::from_be_bytes([h[0], h[1]]);
            let len = u16::from_be_bytes([h[2], h[3]]) as usize;
            let value = self.message.get(offset + 4..offset + 4 + len)?;
            Some((kind, len, value))
        });
        match parsed {
            Some((kind, len, value)) => {
                self.offset = offset + 4 + padded(len);
                Some(Ok(RawAttribute { kind, offset, value }))
            }
            None => {
                self.failed = true;
                Some(Err(Overrun(offset)))
            }
        }
    }
}

/// Rounds a length up to the 4-byte boundary attributes are aligned on.
pub const fn padded(len: usize) -> usize {
    (len + 3) & !3
}

/// Decodes an XOR-*-ADDRESS value (RFC 8489 §14.2) without allocating.
pub fn decode_xor_address(value: &[u8], transaction_id: &[u8; 12]) -> Option<SocketAddr> {
    let family = *value.get(1)?;
    let port = u16::from_be_bytes([*value.get(2)?, *value.get(3)?]) ^ (MAGIC_COOKIE >> 16) as u16;
    let cookie = MAGIC_COOKIE.to_be_bytes();
    match (family, value.len()) {
        (0x01, 8) => {
            let mut ip = [0u8; 4];
            for (i, b) in ip.iter_mut().enumerate() {
                *b = value[4 + i] ^ cookie[i];
            }
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
        }
        (0x02, 20) => {
            let mut ip = [0u8; 16];
            for (i, b) in ip.iter_mut().enumerate() {
                let mask = if i < 4 { cookie[i] } else { transaction_id[i - 4] };
                *b = value[4 + i] ^ mask;
            }
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port))
        }
        _ => None,
    }
}

/// Writes an XOR-*-ADDRESS value; returns the number of bytes written (8 or 20), or
/// `None` when `out` is too small.
pub fn encode_xor_address(addr: SocketAddr, transaction_id: &[u8; 12], out: &mut [u8]) -> Option<usize> {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
    match addr.ip() {
        IpAddr::V4(ip) => {
            let out = out.get_mut(..8)?;
            out[0] = 0;
            out[1] = 0x01;
            out[2..4].copy_from_slice(&port.to_be_bytes());
            for (i, b) in ip.octets().iter().enumerate() {
                out[4 + i] = b ^ cookie[i];
            }
            Some(8)
        }
        IpAddr::V6(ip) => {
            let out = out.get_mut(..20)?;
            out[0] = 0;
            out[1] = 0x02;
            out[2..4].copy_from_slice(&port.to_be_bytes());
            for (i, b) in ip.octets().iter().enumerate() {
                let mask = if i < 4 { cookie[i] } else { transaction_id[i - 4] };
                out[4 + i] = b ^ mask;
            }
            Some(20)
        }
    }
}

/// Whether a STUN packet is a Send indication (RFC 8656 §10.1), by its type alone: the
/// relay path's test before it reads the attributes in place.
pub fn is_send_indication(packet: &[u8]) -> bool {
    packet.get(..2) == Some(&TYPE_SEND_INDICATION.to_be_bytes()[..])
}

/// Whether a packet is a STUN message other than a Send indication (not ChannelData,
/// not relayed data): what the shell's request-time histogram measures, by the first
/// bytes alone.
pub fn is_control(packet: &[u8]) -> bool {
    packet.first().is_some_and(|b| *b < 0x40) && !is_send_indication(packet)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_rejects_short_and_lying_lengths() {
        assert_eq!(classify(&[]), PacketKind::Unknown);
        assert_eq!(classify(&[0u8; 19]), PacketKind::Unknown);
        let mut msg = [0u8; 24];
        msg[1] = 0x01;
        msg[3] = 8; // claims 8 bytes of attributes, has 4
        msg[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        assert_eq!(classify(&msg), PacketKind::Unknown);
        msg[3] = 4;
        assert_eq!(classify(&msg), PacketKind::Stun);
        msg[4] = 0;
        assert_eq!(classify(&msg), PacketKind::ClassicStun);
        assert_eq!(classify(&[0x40, 0, 0, 0]), PacketKind::ChannelData);
        assert_eq!(classify(&[0x80, 0, 0, 0]), PacketKind::Unknown);
    }

    #[test]
    fn method_and_class_bits() {
        // 0x0113: Allocate error response.
        let h = Header { message_type: 0x0113, length: 0, cookie: MAGIC_COOKIE, transaction_id: [0; 12] };
        assert_eq!(h.method(), 0x003);
        assert_eq!(h.class_bits(), 3);
        let h = Header { message_type: 0x0016, ..h };
        assert_eq!((h.method(), h.class_bits()), (0x006, 1));
    }

    #[test]
    fn attribute_walker_stops_on_overrun() {
        let mut msg = vec![0u8; 20];
        msg.extend_from_slice(&[0x00, 0x13, 0x00, 0x03, 1, 2, 3, 0]);
        msg.extend_from_slice(&[0x00, 0x12, 0x00, 0x40]);
        let items: Vec<_> = Attributes::new(&msg).collect();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0], Ok(RawAttribute { kind: 0x13, offset: 20, value: &[1, 2, 3] }));
        assert_eq!(items[1], Err(Overrun(28)));
    }

    #[test]
    fn xor_address_round_trip_both_families() {
        let tid = [7u8; 12];
        for addr in ["192.0.2.1:32853", "[2001:db8::1]:443"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let mut buf = [0u8; 20];
            let n = encode_xor_address(addr, &tid, &mut buf).unwrap();
            assert_eq!(decode_xor_address(&buf[..n], &tid), Some(addr));
        }
        assert_eq!(decode_xor_address(&[0, 1, 0], &tid), None);
    }
}
