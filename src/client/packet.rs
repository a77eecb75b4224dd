//! What travels besides requests and responses: ChannelData and Send/Data
//! indications, written straight onto the wire (they are the data path: no codec
//! allocation per packet), and the demultiplexing of what the server sends.
//!
//! Over TCP and TLS, cut the byte stream into frames with
//! [`crate::stun::framing::Framer`] first; every frame (or datagram) then goes through
//! [`Packet::parse`].

use super::ClientError;
use crate::stun::channel_data::{ChannelData, HEADER_LEN as CHANNEL_HEADER_LEN};
use crate::stun::raw::{self, Attributes, Header, HEADER_LEN, MAGIC_COOKIE};
use std::net::SocketAddr;

/// A datagram or stream frame from the server (RFC 7983 demultiplexing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    /// A STUN message: a response, or an indication.
    Stun(&'a [u8]),
    /// ChannelData: the channel and its application data (padding dropped).
    ChannelData {
        /// The channel number.
        channel: u16,
        /// The data.
        data: &'a [u8],
    },
}

impl<'a> Packet<'a> {
    /// Reads a datagram or a whole stream frame, trusting no length field.
    pub fn parse(frame: &'a [u8]) -> Result<Packet<'a>, ClientError> {
        match frame.first().map(|b| b >> 6) {
            Some(0) => Ok(Packet::Stun(frame)),
            Some(1) => {
                let header =
                    ChannelData::parse_datagram(frame).ok_or(ClientError::Malformed("truncated ChannelData"))?;
                let data = frame.get(CHANNEL_HEADER_LEN..CHANNEL_HEADER_LEN + header.len).unwrap_or_default();
                Ok(Packet::ChannelData { channel: header.channel, data })
            }
            _ => Err(ClientError::Malformed("a datagram that is neither STUN nor ChannelData")),
        }
    }
}

/// Appends ChannelData carrying `payload` on `channel` to `out`, padded to four bytes
/// when `pad` (RFC 8656 §12.5 requires it over streams; over UDP it is optional).
pub fn write_channel_data(channel: u16, payload: &[u8], pad: bool, out: &mut Vec<u8>) -> Result<(), ClientError> {
    let len = u16::try_from(payload.len()).map_err(|_| ClientError::Encode("payload too large"))?;
    let mut header = [0u8; CHANNEL_HEADER_LEN];
    ChannelData::write_header(channel, len, &mut header);
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
    if pad {
        out.resize(out.len() + raw::padded(payload.len()) - payload.len(), 0);
    }
    Ok(())
}

/// ChannelData carrying `payload` on `channel` (see [`write_channel_data`]).
pub fn channel_data(channel: u16, payload: &[u8], pad: bool) -> Result<Vec<u8>, ClientError> {
    let mut out = Vec::with_capacity(CHANNEL_HEADER_LEN + raw::padded(payload.len()));
    write_channel_data(channel, payload, pad, &mut out)?;
    Ok(out)
}

/// The bytes in front of the payload of an indication to or from an IPv4 peer:
/// header, XOR-PEER-ADDRESS, DATA attribute header.
pub const INDICATION_HEADER_V4: usize = HEADER_LEN + 12 + 4;

/// The bytes in front of an indication's payload for `peer`'s family.
pub fn indication_header_len(peer: SocketAddr) -> usize {
    if peer.is_ipv4() {
        INDICATION_HEADER_V4
    } else {
        INDICATION_HEADER_V4 + 12
    }
}

/// Writes the header of an indication (`message_type` is
/// [`raw::TYPE_SEND_INDICATION`] or [`raw::TYPE_DATA_INDICATION`]) for `payload_len`
/// bytes with `peer` into the front of `out`, so that a caller can keep one buffer
/// per flow and rewrite only the header. Returns the header's length, or `None` when
/// `out` is shorter than [`indication_header_len`] or the payload too large.
pub fn write_indication_header(
    out: &mut [u8],
    message_type: u16,
    transaction_id: &[u8; 12],
    peer: SocketAddr,
    payload_len: usize,
) -> Option<usize> {
    let header_len = indication_header_len(peer);
    let address_len = header_len - HEADER_LEN - 8;
    let body = u16::try_from(header_len - HEADER_LEN + raw::padded(payload_len)).ok()?;
    let out = out.get_mut(..header_len)?;
    out[0..2].copy_from_slice(&message_type.to_be_bytes());
    out[2..4].copy_from_slice(&body.to_be_bytes());
    out[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out[8..20].copy_from_slice(transaction_id);
    out[20..22].copy_from_slice(&raw::ATTR_XOR_PEER_ADDRESS.to_be_bytes());
    out[22..24].copy_from_slice(&(address_len as u16).to_be_bytes());
    raw::encode_xor_address(peer, transaction_id, &mut out[24..24 + address_len])?;
    let data = 24 + address_len;
    out[data..data + 2].copy_from_slice(&raw::ATTR_DATA.to_be_bytes());
    out[data + 2..data + 4].copy_from_slice(&u16::try_from(payload_len).ok()?.to_be_bytes());
    Some(header_len)
}

/// A whole Send indication carrying `payload` to `peer`.
pub fn send_indication(transaction_id: &[u8; 12], peer: SocketAddr, payload: &[u8]) -> Result<Vec<u8>, ClientError> {
    let header_len = indication_header_len(peer);
    let mut out = vec![0u8; header_len];
    write_indication_header(&mut out, raw::TYPE_SEND_INDICATION, transaction_id, peer, payload.len())
        .ok_or(ClientError::Encode("payload too large"))?;
    out.extend_from_slice(payload);
    out.resize(header_len + raw::padded(payload.len()), 0);
    Ok(out)
}

/// A Data indication read in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataIndication<'a> {
    /// XOR-PEER-ADDRESS: where the data came from.
    pub peer: SocketAddr,
    /// DATA.
    pub data: &'a [u8],
}

impl<'a> DataIndication<'a> {
    /// The Data indication in `message`, `Ok(None)` if it is another STUN message.
    pub fn parse(message: &'a [u8]) -> Result<Option<DataIndication<'a>>, ClientError> {
        let header = Header::parse(message).ok_or(ClientError::Malformed("undecodable Data indication"))?;
        if header.message_type != raw::TYPE_DATA_INDICATION {
            return Ok(None);
        }
        let (mut peer, mut data) = (None, None);
        for attribute in Attributes::new(message) {
            let attribute = attribute.map_err(|_| ClientError::Malformed("undecodable Data indication"))?;
            match attribute.kind {
                raw::ATTR_XOR_PEER_ADDRESS => peer = raw::decode_xor_address(attribute.value, &header.transaction_id),
                raw::ATTR_DATA => data = Some(attribute.value),
                _ => {}
            }
        }
        let peer = peer.ok_or(ClientError::Malformed("Data indication without XOR-PEER-ADDRESS"))?;
        let data = data.ok_or(ClientError::Malformed("Data indication without DATA"))?;
        Ok(Some(DataIndication { peer, data }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::framing::Framer;

    fn frames(framer: &mut Framer, bytes: &[u8]) -> Vec<Vec<u8>> {
        framer.spare()[..bytes.len()].copy_from_slice(bytes);
        framer.filled(bytes.len());
        let mut out = Vec::new();
        while let Some(frame) = framer.next_frame().unwrap() {
            out.push(frame.to_vec());
        }
        out
    }

    #[test]
    fn rfc8656_12_5_stream_framing_pads_channel_data() {
        // ChannelData of 5 bytes arrives padded to 8, followed by half a STUN header.
        let mut framer = Framer::default();
        let got = frames(&mut framer, &[0x40, 0x00, 0, 5, b'h', b'e', b'l', b'l', b'o', 0, 0, 0, 0x01, 0x01]);
        assert_eq!(got.len(), 1);
        assert_eq!(Packet::parse(&got[0]).unwrap(), Packet::ChannelData { channel: 0x4000, data: b"hello" });
        let mut rest = vec![0, 0, 0x21, 0x12, 0xA4, 0x42];
        rest.extend_from_slice(&[7; 12]);
        let got = frames(&mut framer, &rest);
        assert!(matches!(Packet::parse(&got[0]).unwrap(), Packet::Stun(m) if m.len() == 20));
        assert!(!framer.has_partial());
        let mut junk = Framer::default();
        junk.spare()[..4].copy_from_slice(&[0xFF, 0, 0, 0]);
        junk.filled(4);
        assert!(junk.next_frame().is_err());
    }

    #[test]
    fn datagrams_are_demultiplexed_without_trusting_lengths() {
        let padded = [0x40, 0x01, 0, 2, 9, 9, 0, 0];
        assert_eq!(Packet::parse(&padded).unwrap(), Packet::ChannelData { channel: 0x4001, data: &[9, 9] });
        assert!(Packet::parse(&[0x40, 0x01, 0, 9, 1]).is_err());
        assert!(Packet::parse(&[0xC0, 0]).is_err());
        assert!(Packet::parse(&[]).is_err());
    }

    #[test]
    fn channel_data_is_padded_only_when_asked() {
        assert_eq!(channel_data(0x4000, b"abc", false).unwrap(), [0x40, 0, 0, 3, b'a', b'b', b'c']);
        assert_eq!(channel_data(0x4000, b"abc", true).unwrap(), [0x40, 0, 0, 3, b'a', b'b', b'c', 0]);
        assert!(channel_data(0x4000, &vec![0; 70_000], false).is_err());
    }

    #[test]
    fn a_send_indication_reads_back_as_what_it_carries() {
        for peer in ["192.0.2.1:9".parse().unwrap(), "[2001:db8::1]:9".parse().unwrap()] {
            let mut bytes = send_indication(&[3; 12], peer, b"hello").unwrap();
            assert_eq!(bytes.len() % 4, 0);
            let decoded = crate::stun::message::decode(&bytes).unwrap().message;
            assert_eq!(decoded.method(), stun_codec::rfc5766::methods::SEND);
            // The same layout with the Data type is what a server sends back.
            bytes[..2].copy_from_slice(&raw::TYPE_DATA_INDICATION.to_be_bytes());
            let data = DataIndication::parse(&bytes).unwrap().unwrap();
            assert_eq!((data.peer, data.data), (peer, &b"hello"[..]));
        }
        assert_eq!(DataIndication::parse(crate::stun::integrity::tests_vectors::SAMPLE_REQUEST).unwrap(), None);
    }
}
