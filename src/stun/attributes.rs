//! The attribute set turnd decodes and encodes with `stun_codec`, plus the attributes
//! that crate lacks. Integrity and fingerprint attributes are carried as opaque bytes:
//! they are checked over the raw message (see [`super::integrity`]), so the codec's own
//! checks, which re-encode the whole message, are kept off the request path.

use bytecodec::bytes::{BytesEncoder, RemainingBytesDecoder};
use bytecodec::{ByteCount, Decode, Encode, Eos, Result, SizedEncode, TryTaggedDecode};
use stun_codec::rfc5245::attributes::{IceControlled, IceControlling, Priority, UseCandidate};
use stun_codec::rfc5389::attributes::{
    AlternateServer, ErrorCode, MappedAddress, Nonce, Realm, Software, UnknownAttributes, Username, XorMappedAddress,
};
use stun_codec::rfc5766::attributes::{
    Data, DontFragment, EvenPort, Lifetime, RequestedTransport, ReservationToken, XorPeerAddress, XorRelayAddress,
};
use stun_codec::rfc8656::attributes::{AdditionalAddressFamily, RequestedAddressFamily};
use stun_codec::AttributeType;

/// An attribute whose value turnd handles as raw bytes; `CODE` is its type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Opaque<const CODE: u16>(pub Vec<u8>);

impl<const CODE: u16> Opaque<CODE> {
    /// The attribute's type code.
    pub const CODEPOINT: u16 = CODE;

    /// The raw value.
    pub fn value(&self) -> &[u8] {
        &self.0
    }
}

impl<const CODE: u16> stun_codec::Attribute for Opaque<CODE> {
    type Decoder = OpaqueDecoder<CODE>;
    type Encoder = OpaqueEncoder<CODE>;

    fn get_type(&self) -> AttributeType {
        AttributeType::new(CODE)
    }
}

/// Decoder for [`Opaque`].
#[derive(Debug, Default)]
pub struct OpaqueDecoder<const CODE: u16>(RemainingBytesDecoder);

impl<const CODE: u16> Decode for OpaqueDecoder<CODE> {
    type Item = Opaque<CODE>;

    fn decode(&mut self, buf: &[u8], eos: Eos) -> Result<usize> {
        self.0.decode(buf, eos)
    }

    fn finish_decoding(&mut self) -> Result<Self::Item> {
        self.0.finish_decoding().map(Opaque)
    }

    fn requiring_bytes(&self) -> ByteCount {
        self.0.requiring_bytes()
    }

    fn is_idle(&self) -> bool {
        self.0.is_idle()
    }
}

impl<const CODE: u16> TryTaggedDecode for OpaqueDecoder<CODE> {
    type Tag = AttributeType;

    fn try_start_decoding(&mut self, tag: Self::Tag) -> Result<bool> {
        Ok(tag.as_u16() == CODE)
    }
}

/// Encoder for [`Opaque`].
#[derive(Debug, Default)]
pub struct OpaqueEncoder<const CODE: u16>(BytesEncoder);

impl<const CODE: u16> Encode for OpaqueEncoder<CODE> {
    type Item = Opaque<CODE>;

    fn encode(&mut self, buf: &mut [u8], eos: Eos) -> Result<usize> {
        self.0.encode(buf, eos)
    }

    fn start_encoding(&mut self, item: Self::Item) -> Result<()> {
        self.0.start_encoding(item.0)
    }

    fn requiring_bytes(&self) -> ByteCount {
        self.0.requiring_bytes()
    }

    fn is_idle(&self) -> bool {
        self.0.is_idle()
    }
}

impl<const CODE: u16> SizedEncode for OpaqueEncoder<CODE> {
    fn exact_requiring_bytes(&self) -> u64 {
        self.0.exact_requiring_bytes()
    }
}

/// RFC 8489 §14.5 MESSAGE-INTEGRITY, checked over raw bytes.
pub type MessageIntegrity = Opaque<0x0008>;
/// RFC 8489 §14.6 MESSAGE-INTEGRITY-SHA256, checked over raw bytes.
pub type MessageIntegritySha256 = Opaque<0x001C>;
/// RFC 8489 §14.7 FINGERPRINT, checked over raw bytes.
pub type Fingerprint = Opaque<0x8028>;
/// RFC 8489 §14.11 PASSWORD-ALGORITHMS.
pub type PasswordAlgorithms = Opaque<0x8002>;
/// RFC 8489 §14.12 PASSWORD-ALGORITHM.
pub type PasswordAlgorithm = Opaque<0x001D>;
/// RFC 8489 §14.4 USERHASH.
pub type Userhash = Opaque<0x001E>;
/// RFC 8656 §18.12 ADDRESS-ERROR-CODE.
pub type AddressErrorCode = Opaque<0x8001>;
/// RFC 8656 §18.1 CHANNEL-NUMBER, kept raw: `stun_codec` rejects numbers above
/// 0x4FFF, and turnd accepts the RFC 5766 range (see `channel_data::CHANNEL_RANGE`).
pub type ChannelNumber = Opaque<0x000C>;

impl ChannelNumber {
    /// The channel number (the first two bytes), if the value has the 4-byte form.
    pub fn number(&self) -> Option<u16> {
        match self.value() {
            [hi, lo, _, _] => Some(u16::from_be_bytes([*hi, *lo])),
            _ => None,
        }
    }
}

/// RFC 6062 §6.2.1 CONNECTION-ID.
pub type ConnectionId = Opaque<0x002A>;

stun_codec::define_attribute_enums!(
    Attribute,
    AttributeDecoder,
    AttributeEncoder,
    [
        MappedAddress,
        Username,
        Realm,
        Nonce,
        ErrorCode,
        UnknownAttributes,
        Software,
        AlternateServer,
        XorMappedAddress,
        MessageIntegrity,
        MessageIntegritySha256,
        Fingerprint,
        PasswordAlgorithms,
        PasswordAlgorithm,
        Userhash,
        ChannelNumber,
        Lifetime,
        XorPeerAddress,
        Data,
        XorRelayAddress,
        EvenPort,
        RequestedTransport,
        DontFragment,
        ReservationToken,
        RequestedAddressFamily,
        AdditionalAddressFamily,
        AddressErrorCode,
        ConnectionId,
        Priority,
        UseCandidate,
        IceControlled,
        IceControlling
    ]
);
