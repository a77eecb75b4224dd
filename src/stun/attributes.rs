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
use stun_codec::rfc5780::attributes::{OtherAddress, ResponseOrigin};
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
/// A password algorithm of RFC 8489 §18.5, by its registry number. turnd knows the two
/// the RFC defines; both take no parameters (§18.5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// 0x0001: the key is `MD5(username ":" realm ":" password)`, 16 bytes (§18.5.1.1).
    Md5,
    /// 0x0002: the key is `SHA-256(username ":" realm ":" password)`, 32 bytes
    /// (§18.5.1.2).
    Sha256,
}

impl Algorithm {
    /// The registry number.
    pub const fn number(self) -> u16 {
        match self {
            Algorithm::Md5 => 0x0001,
            Algorithm::Sha256 => 0x0002,
        }
    }

    /// The algorithm a registry number names, if turnd knows it.
    pub const fn from_number(number: u16) -> Option<Self> {
        match number {
            0x0001 => Some(Algorithm::Md5),
            0x0002 => Some(Algorithm::Sha256),
            _ => None,
        }
    }
}

/// One entry of PASSWORD-ALGORITHM or PASSWORD-ALGORITHMS as received: the algorithm
/// number and its parameters (RFC 8489 §14.11, §14.12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlgorithmEntry<'a> {
    /// The registry number (known or not).
    pub number: u16,
    /// The parameters, without padding.
    pub params: &'a [u8],
}

impl AlgorithmEntry<'_> {
    /// The algorithm, if turnd knows it and the parameters are the (empty) ones it
    /// takes.
    pub fn algorithm(&self) -> Option<Algorithm> {
        Algorithm::from_number(self.number).filter(|_| self.params.is_empty())
    }
}

/// Reads `algorithm (16) | parameters length (16) | parameters, padded to 4` entries
/// until `value` ends; `None` if an entry overruns it.
fn algorithm_entries(mut value: &[u8]) -> Option<Vec<AlgorithmEntry<'_>>> {
    let mut entries = Vec::new();
    while !value.is_empty() {
        let number = u16::from_be_bytes([*value.first()?, *value.get(1)?]);
        let len = usize::from(u16::from_be_bytes([*value.get(2)?, *value.get(3)?]));
        let params = value.get(4..4 + len)?;
        entries.push(AlgorithmEntry { number, params });
        // The padding of the last entry may be left to the attribute's own padding.
        let next = (4 + len).next_multiple_of(4).min(value.len());
        value = value.get(next..)?;
    }
    Some(entries)
}

fn encode_algorithms(algorithms: &[Algorithm]) -> Vec<u8> {
    algorithms.iter().flat_map(|a| [a.number().to_be_bytes(), [0, 0]]).flatten().collect()
}

impl PasswordAlgorithm {
    /// PASSWORD-ALGORITHM naming `algorithm`, with no parameters.
    pub fn new(algorithm: Algorithm) -> Self {
        Opaque(encode_algorithms(&[algorithm]))
    }

    /// The one entry the attribute holds; `None` if the value is not exactly one.
    pub fn entry(&self) -> Option<AlgorithmEntry<'_>> {
        match algorithm_entries(self.value())?.as_slice() {
            [entry] => Some(*entry),
            _ => None,
        }
    }
}

impl PasswordAlgorithms {
    /// PASSWORD-ALGORITHMS listing `algorithms` in order of preference, each with no
    /// parameters.
    pub fn new(algorithms: &[Algorithm]) -> Self {
        Opaque(encode_algorithms(algorithms))
    }

    /// The entries in order; `None` if the value does not parse.
    pub fn entries(&self) -> Option<Vec<AlgorithmEntry<'_>>> {
        algorithm_entries(self.value())
    }
}

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

/// RFC 5780 §7.2 CHANGE-REQUEST, kept raw: `stun_codec` 0.4 decodes its flags one bit
/// off (it reads "change IP" from the "change port" bit).
pub type ChangeRequest = Opaque<0x0003>;

impl ChangeRequest {
    /// (change IP, change port), if the value is the 4-byte form.
    pub fn flags(&self) -> Option<(bool, bool)> {
        match self.value() {
            [_, _, _, last] => Some((last & 0x04 != 0, last & 0x02 != 0)),
            _ => None,
        }
    }

    /// A CHANGE-REQUEST asking for the changes given.
    pub fn with_flags(ip: bool, port: bool) -> Self {
        Opaque(vec![0, 0, 0, u8::from(ip) << 2 | u8::from(port) << 1])
    }
}

/// RFC 5780 §7.5 RESPONSE-PORT, kept raw: `stun_codec` 0.4 encodes it as port 0.
pub type ResponsePort = Opaque<0x0027>;

impl ResponsePort {
    /// The port, if the value is the 4-byte form (port, then 2 bytes of padding).
    pub fn port(&self) -> Option<u16> {
        match self.value() {
            [hi, lo, _, _] => Some(u16::from_be_bytes([*hi, *lo])),
            _ => None,
        }
    }

    /// RESPONSE-PORT naming `port`.
    pub fn with_port(port: u16) -> Self {
        let [hi, lo] = port.to_be_bytes();
        Opaque(vec![hi, lo, 0, 0])
    }
}

/// RFC 5780 §7.6 PADDING: its value does not matter, only its length.
pub type Padding = Opaque<0x0026>;

/// RFC 8489 §14.16 ALTERNATE-DOMAIN: the TLS name of the ALTERNATE-SERVER, for a
/// client to check the alternate's certificate against (`stun_codec` 0.4 lacks it).
pub type AlternateDomain = Opaque<0x8003>;

/// RFC 8016 §3.4 MOBILITY-TICKET: empty in an Allocate that asks for mobility, the
/// server's opaque ticket in its answers and in a Refresh from a new 5-tuple.
pub type MobilityTicket = Opaque<0x8030>;

impl MobilityTicket {
    /// A MOBILITY-TICKET holding `ticket` (empty: asking for one).
    pub fn from_bytes(ticket: Vec<u8>) -> Self {
        Opaque(ticket)
    }
}

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
        AlternateDomain,
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
        IceControlling,
        ChangeRequest,
        ResponsePort,
        MobilityTicket,
        Padding,
        ResponseOrigin,
        OtherAddress
    ]
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc8489_14_11_password_algorithms_round_trip() {
        let offered = PasswordAlgorithms::new(&[Algorithm::Sha256, Algorithm::Md5]);
        assert_eq!(offered.value(), &[0x00, 0x02, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00]);
        let entries = offered.entries().unwrap();
        let algorithms: Vec<_> = entries.iter().map(|e| e.algorithm()).collect();
        assert_eq!(algorithms, vec![Some(Algorithm::Sha256), Some(Algorithm::Md5)]);
    }

    #[test]
    fn rfc8489_14_12_password_algorithm_round_trip_and_parameters() {
        let one = PasswordAlgorithm::new(Algorithm::Md5);
        assert_eq!(one.entry().unwrap().algorithm(), Some(Algorithm::Md5));
        // Parameters (padded inside the value) make it an algorithm turnd does not take.
        let with_params: PasswordAlgorithm = Opaque(vec![0x00, 0x02, 0x00, 0x01, 0xAA, 0, 0, 0]);
        let entry = with_params.entry().unwrap();
        assert_eq!((entry.number, entry.params, entry.algorithm()), (2, &[0xAA][..], None));
        // Unpadded last entry, unknown number.
        let unknown: PasswordAlgorithm = Opaque(vec![0x00, 0x07, 0x00, 0x02, 1, 2]);
        assert_eq!(unknown.entry().unwrap().algorithm(), None);
    }

    #[test]
    fn malformed_algorithm_lists_are_refused() {
        for value in [&[0x00][..], &[0x00, 0x01, 0x00], &[0x00, 0x01, 0x00, 0x08, 0, 0], &[]] {
            let attribute: PasswordAlgorithm = Opaque(value.to_vec());
            assert_eq!(attribute.entry(), None, "{value:?}");
        }
        let two: PasswordAlgorithm = Opaque(encode_algorithms(&[Algorithm::Md5, Algorithm::Sha256]));
        assert_eq!(two.entry(), None, "PASSWORD-ALGORITHM holds one entry");
        let truncated: PasswordAlgorithms = Opaque(vec![0x00, 0x02, 0x00, 0x00, 0x00, 0x01, 0x00]);
        assert_eq!(truncated.entries(), None);
    }
}
