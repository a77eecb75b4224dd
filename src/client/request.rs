//! Requests as values: what to ask, before the client adds a transaction id and
//! credentials ([`super::Client::request`]).

use crate::stun::attributes::{Attribute, ChannelNumber, ConnectionId, Opaque};
use std::net::SocketAddr;
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5766::attributes::{Lifetime, RequestedTransport, XorPeerAddress};
use stun_codec::rfc5766::methods::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, REFRESH};
use stun_codec::{Method, TransactionId};

/// REQUESTED-TRANSPORT protocol number for UDP (RFC 8656 §18.7).
pub const PROTOCOL_UDP: u8 = 17;
/// REQUESTED-TRANSPORT protocol number for TCP (RFC 6062 §6.1).
pub const PROTOCOL_TCP: u8 = 6;
/// The Connect method's codepoint (RFC 6062 §6.1; stun_codec does not name it).
pub const CONNECT: u8 = 0x0A;
/// The ConnectionBind method's codepoint (RFC 6062 §6.1).
pub const CONNECTION_BIND: u8 = 0x0B;

/// A request to send: a method and its attributes. Credentials (USERNAME, REALM,
/// NONCE, MESSAGE-INTEGRITY) are the client's business, not the request's.
#[derive(Debug, Clone)]
pub struct Request {
    /// The STUN method.
    pub method: Method,
    /// The attributes, in order.
    pub attributes: Vec<Attribute>,
    /// Whether the client adds credentials once it knows a nonce (Binding does not
    /// need them, every TURN request does).
    pub authenticate: bool,
    /// Whether to end with FINGERPRINT (RFC 8489 §14.7: optional unless multiplexed).
    pub fingerprint: bool,
}

impl Request {
    /// Any method with any attributes, authenticated once a nonce is known.
    pub fn new(method: Method, attributes: Vec<Attribute>) -> Request {
        Request { method, attributes, authenticate: true, fingerprint: true }
    }

    /// A Binding request (never authenticated).
    pub fn binding() -> Request {
        Request { method: BINDING, attributes: Vec::new(), authenticate: false, fingerprint: true }
    }

    /// Allocate a UDP relay.
    pub fn allocate() -> Request {
        Request::allocate_transport(PROTOCOL_UDP)
    }

    /// Allocate a relay for `protocol` ([`PROTOCOL_UDP`], or [`PROTOCOL_TCP`] for RFC 6062).
    pub fn allocate_transport(protocol: u8) -> Request {
        Request::new(ALLOCATE, vec![RequestedTransport::new(protocol).into()])
    }

    /// Allocate a UDP relay with RFC 8016 mobility: the empty MOBILITY-TICKET asks the
    /// server for a ticket (see [`super::Client::mobility_ticket`]).
    pub fn allocate_mobile() -> Request {
        Request::allocate().with(crate::stun::attributes::MobilityTicket::from_bytes(Vec::new()))
    }

    /// RFC 8016: a Refresh that presents `ticket`, from a new 5-tuple to move the
    /// allocation there (or from its own, where it just refreshes).
    pub fn refresh_mobile(lifetime: u32, ticket: &[u8]) -> Request {
        Request::refresh(lifetime).with(crate::stun::attributes::MobilityTicket::from_bytes(ticket.to_vec()))
    }

    /// Refresh the allocation for `lifetime` seconds (0 deletes it).
    pub fn refresh(lifetime: u32) -> Request {
        Request::new(REFRESH, vec![Lifetime::from_u32(lifetime).into()])
    }

    /// CreatePermission for `peer`'s address.
    pub fn create_permission(peer: SocketAddr) -> Request {
        Request::new(CREATE_PERMISSION, vec![XorPeerAddress::new(peer).into()])
    }

    /// ChannelBind `channel` to `peer`.
    pub fn channel_bind(channel: u16, peer: SocketAddr) -> Request {
        Request::new(CHANNEL_BIND, vec![channel_number(channel), XorPeerAddress::new(peer).into()])
    }

    /// RFC 6062 Connect to a TCP `peer`.
    pub fn connect(peer: SocketAddr) -> Request {
        Request::new(Method::from(CONNECT), vec![XorPeerAddress::new(peer).into()])
    }

    /// RFC 6062 ConnectionBind of the data connection to `connection_id`.
    pub fn connection_bind(connection_id: u32) -> Request {
        let id: ConnectionId = Opaque(connection_id.to_be_bytes().to_vec());
        Request::new(Method::from(CONNECTION_BIND), vec![id.into()])
    }

    /// Adds an attribute.
    pub fn with(mut self, attribute: impl Into<Attribute>) -> Request {
        self.attributes.push(attribute.into());
        self
    }

    /// Leaves FINGERPRINT out (what a load generator sends to keep the server's work
    /// to what it measures).
    pub fn without_fingerprint(mut self) -> Request {
        self.fingerprint = false;
        self
    }

    /// Sends the request without credentials even when the client has some (to see
    /// the server's challenge, or to test how it treats an anonymous request).
    pub fn anonymous(mut self) -> Request {
        self.authenticate = false;
        self
    }
}

/// The CHANNEL-NUMBER attribute: the number and two bytes RFFU.
pub fn channel_number(channel: u16) -> Attribute {
    let b = channel.to_be_bytes();
    let number: ChannelNumber = Opaque(vec![b[0], b[1], 0, 0]);
    number.into()
}

/// An encoded request, ready for the wire, with what the client needs to check its
/// response.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The bytes to send.
    pub bytes: Vec<u8>,
    /// Its transaction id, which the response carries.
    pub transaction_id: TransactionId,
    /// The key it was signed with: a success response must be signed with it too.
    pub(super) key: Option<[u8; 16]>,
}

impl Outgoing {
    /// Whether `packet` (a STUN message) carries this request's transaction id.
    pub fn is_answered_by(&self, packet: &[u8]) -> bool {
        packet.get(8..20) == Some(self.transaction_id.as_bytes())
    }

    /// Whether the request carried credentials.
    pub fn is_authenticated(&self) -> bool {
        self.key.is_some()
    }
}
