//! TURN requests decoded once into what they ask for (RFC 8656 §7-11, RFC 6062 §4):
//! handlers read fields, never attributes, and every contradiction is refused here
//! with the error the RFC names.

use super::allocation::Family;
use super::{ConnectionId, PeerAddr, Transport};
use crate::stun::attributes::{ChannelNumber, ConnectionId as ConnectionIdAttr};
use crate::stun::channel_data::CHANNEL_RANGE;
use crate::stun::errors::{self, ErrorKind};
use crate::stun::message::Message;
use std::time::Duration;
use stun_codec::rfc5766::attributes::{
    DontFragment, EvenPort, Lifetime, RequestedTransport, ReservationToken, XorPeerAddress,
};
use stun_codec::rfc8656::attributes::{AdditionalAddressFamily, AddressFamily, RequestedAddressFamily};

/// RFC 8656 §14.7: REQUESTED-TRANSPORT value for UDP.
const PROTOCOL_UDP: u8 = 17;
/// RFC 6062 §6.1: REQUESTED-TRANSPORT value for TCP.
const PROTOCOL_TCP: u8 = 6;

/// Which relay port an Allocate asks for (RFC 8656 §7.2: EVEN-PORT, RESERVATION-TOKEN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortRequest {
    /// Any port.
    Any,
    /// An even port (EVEN-PORT without R).
    Even,
    /// An even port, and its successor held for a later Allocate (EVEN-PORT with R).
    EvenReserveNext,
    /// The port held for this RESERVATION-TOKEN.
    Reserved(u64),
}

impl PortRequest {
    /// Whether the port must be even.
    pub fn even(self) -> bool {
        matches!(self, PortRequest::Even | PortRequest::EvenReserveNext)
    }

    /// Whether the port's successor is held too.
    pub fn reserves_next(self) -> bool {
        self == PortRequest::EvenReserveNext
    }
}

/// What a relay carries: UDP datagrams, or RFC 6062 TCP connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayKind {
    /// A UDP relay; with `dont_fragment`, datagrams to peers carry the DF bit.
    Udp {
        /// RFC 8656 §14.8 DONT-FRAGMENT.
        dont_fragment: bool,
    },
    /// An RFC 6062 TCP relay.
    Tcp,
}

/// An Allocate request (RFC 8656 §7.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocate {
    /// UDP or TCP relay.
    pub kind: RelayKind,
    /// Which port.
    pub port: PortRequest,
    /// The relay's family (REQUESTED-ADDRESS-FAMILY; IPv4 by default).
    pub family: Family,
    /// ADDITIONAL-ADDRESS-FAMILY IPv6: a dual-stack allocation.
    pub additional_v6: bool,
    /// The lifetime asked for, if any.
    pub lifetime: Option<Duration>,
}

impl Allocate {
    /// Decodes an Allocate that arrived over `over`; the error to answer with when
    /// its attributes contradict each other or ask for what cannot be had.
    pub fn decode(request: &Message, over: Transport) -> Result<Self, ErrorKind> {
        let transport = request.get_attribute::<RequestedTransport>().ok_or(errors::BAD_REQUEST)?;
        let even_port = request.get_attribute::<EvenPort>();
        let token = request.get_attribute::<ReservationToken>();
        let dont_fragment = request.get_attribute::<DontFragment>().is_some();
        let requested = request.get_attribute::<RequestedAddressFamily>().map(|f| f.address_family());
        let additional = request.get_attribute::<AdditionalAddressFamily>().map(|f| f.address_family());
        let kind = match transport.protocol() {
            PROTOCOL_UDP => RelayKind::Udp { dont_fragment },
            // RFC 6062 §5.1: TCP relays only for clients on a TCP or TLS connection,
            // and none of the UDP-only attributes.
            PROTOCOL_TCP if over == Transport::Udp => return Err(errors::BAD_REQUEST),
            PROTOCOL_TCP if even_port.is_some() || token.is_some() || dont_fragment || additional.is_some() => {
                return Err(errors::BAD_REQUEST)
            }
            PROTOCOL_TCP => RelayKind::Tcp,
            _ => return Err(errors::UNSUPPORTED_TRANSPORT_PROTOCOL),
        };
        // RFC 8656 §7.2: these combinations are contradictory.
        if (token.is_some() && (even_port.is_some() || requested.is_some() || additional.is_some()))
            || (requested.is_some() && additional.is_some())
            || (even_port.is_some() && additional.is_some())
            || additional.is_some_and(|f| f != AddressFamily::V6)
        {
            return Err(errors::BAD_REQUEST);
        }
        let port = match (token, even_port) {
            (Some(token), _) => PortRequest::Reserved(token.token()),
            (None, Some(even)) if even.is_requested() => PortRequest::EvenReserveNext,
            (None, Some(_)) => PortRequest::Even,
            (None, None) => PortRequest::Any,
        };
        Ok(Allocate {
            kind,
            port,
            family: if requested == Some(AddressFamily::V6) { Family::V6 } else { Family::V4 },
            additional_v6: additional.is_some(),
            lifetime: lifetime(request),
        })
    }
}

/// The LIFETIME asked for (Allocate, Refresh).
pub fn lifetime(request: &Message) -> Option<Duration> {
    request.get_attribute::<Lifetime>().map(|l| l.lifetime())
}

/// The XOR-PEER-ADDRESSes of a CreatePermission (RFC 8656 §9): at least one.
pub fn permission_peers(request: &Message) -> Result<Vec<PeerAddr>, ErrorKind> {
    let peers: Vec<PeerAddr> = request
        .attributes()
        .filter_map(|a| stun_codec::convert::TryAsRef::<XorPeerAddress>::try_as_ref(a))
        .map(|p| PeerAddr::new(p.address()))
        .collect();
    if peers.is_empty() {
        return Err(errors::BAD_REQUEST);
    }
    Ok(peers)
}

/// A ChannelBind (RFC 8656 §11): a number in 0x4000..=0x4FFF and a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelBind {
    /// The channel number.
    pub number: u16,
    /// The peer to bind it to.
    pub peer: PeerAddr,
}

impl ChannelBind {
    /// Decodes a ChannelBind; 400 without both attributes or outside the range.
    pub fn decode(request: &Message) -> Result<Self, ErrorKind> {
        let number = request.get_attribute::<ChannelNumber>().and_then(|c| c.number());
        let peer = one_peer(request)?;
        match number {
            Some(number) if CHANNEL_RANGE.contains(&number) => Ok(ChannelBind { number, peer }),
            _ => Err(errors::BAD_REQUEST),
        }
    }
}

/// The XOR-PEER-ADDRESS of a ChannelBind or an RFC 6062 Connect; 400 without one.
pub fn one_peer(request: &Message) -> Result<PeerAddr, ErrorKind> {
    request.get_attribute::<XorPeerAddress>().map(|p| PeerAddr::new(p.address())).ok_or(errors::BAD_REQUEST)
}

/// The CONNECTION-ID of an RFC 6062 ConnectionBind: four bytes; 400 otherwise.
pub fn connection_id(request: &Message) -> Result<ConnectionId, ErrorKind> {
    let value = request.get_attribute::<ConnectionIdAttr>().ok_or(errors::BAD_REQUEST)?;
    <[u8; 4]>::try_from(value.value()).map(|b| ConnectionId(u32::from_be_bytes(b))).map_err(|_| errors::BAD_REQUEST)
}
