//! ChannelData framing (RFC 8656 §12.4), read and written in place on the packet
//! buffer: this is the relay hot path, so nothing here allocates.

/// Channel numbers a client may bind. RFC 8656 §12 narrowed the range to
/// 0x4000-0x4FFF, but RFC 5766 allowed 0x4000-0x7FFF and deployed clients (coturn's
/// `turnutils_uclient` among them) still pick numbers above 0x4FFF: turnd accepts the
/// RFC 5766 range so they keep working. The two never overlap with STUN (first byte
/// 0x00-0x3F), and a TURN listener carries no QUIC or DTLS to confuse them with.
pub const CHANNEL_RANGE: std::ops::RangeInclusive<u16> = 0x4000..=0x7FFF;
/// The ChannelData header: channel number and length, 2 bytes each.
pub const HEADER_LEN: usize = 4;

/// A ChannelData message located within a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelData {
    /// The channel number from the header.
    pub channel: u16,
    /// Length of the application data (excluding header and padding).
    pub len: usize,
}

impl ChannelData {
    /// Parses a ChannelData header from a datagram. The length field must fit the
    /// datagram; trailing bytes (padding) are allowed, as RFC 8656 §12.5 says a UDP
    /// ChannelData message may be padded.
    pub fn parse_datagram(packet: &[u8]) -> Option<Self> {
        let header = Self::parse_header(packet)?;
        (HEADER_LEN + header.len <= packet.len()).then_some(header)
    }

    /// Reads the header without checking the body is present (for stream framing).
    pub fn parse_header(packet: &[u8]) -> Option<Self> {
        let h = packet.get(..HEADER_LEN)?;
        let channel = u16::from_be_bytes([h[0], h[1]]);
        let len = u16::from_be_bytes([h[2], h[3]]) as usize;
        CHANNEL_RANGE.contains(&channel).then_some(ChannelData { channel, len })
    }

    /// Writes the header for `len` bytes of data on `channel` into `out[..4]`.
    pub fn write_header(channel: u16, len: u16, out: &mut [u8; HEADER_LEN]) {
        out[..2].copy_from_slice(&channel.to_be_bytes());
        out[2..].copy_from_slice(&len.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_channels_outside_the_rfc5766_range() {
        assert_eq!(ChannelData::parse_datagram(&[0x80, 0x00, 0, 0]), None);
        assert_eq!(ChannelData::parse_datagram(&[0x7F, 0xFF, 0, 0]), Some(ChannelData { channel: 0x7FFF, len: 0 }));
        assert_eq!(ChannelData::parse_datagram(&[0x3F, 0xFF, 0, 0]), None);
        assert_eq!(ChannelData::parse_datagram(&[0x4F, 0xFF, 0, 0]), Some(ChannelData { channel: 0x4FFF, len: 0 }));
    }

    #[test]
    fn length_must_fit_but_padding_is_allowed() {
        assert_eq!(ChannelData::parse_datagram(&[0x40, 0x00, 0, 5, 1, 2, 3, 4]), None);
        let padded = [0x40, 0x01, 0, 3, 1, 2, 3, 0];
        assert_eq!(ChannelData::parse_datagram(&padded), Some(ChannelData { channel: 0x4001, len: 3 }));
        assert_eq!(ChannelData::parse_datagram(&[0x40, 0x00, 0]), None);
    }

    #[test]
    fn header_round_trip() {
        let mut h = [0u8; 4];
        ChannelData::write_header(0x4123, 1000, &mut h);
        assert_eq!(ChannelData::parse_header(&h), Some(ChannelData { channel: 0x4123, len: 1000 }));
    }
}
