//! Responses read into typed results: the addresses, lifetime and error a TURN
//! client acts on, without each caller looking attributes up by hand.

use crate::stun::attributes::{Attribute, ConnectionId};
use crate::stun::message::Message;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;
use stun_codec::rfc5389::attributes::{ErrorCode, Nonce, Realm, Software, XorMappedAddress};
use stun_codec::rfc5766::attributes::{Lifetime, XorRelayAddress};
use stun_codec::MessageClass;

/// A STUN error response's ERROR-CODE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StunError {
    /// The code (300..=699).
    pub code: u16,
    /// The reason phrase as the server sent it (may be empty).
    pub reason: String,
}

impl fmt::Display for StunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.reason)
    }
}

/// A decoded response to one of the client's requests (its integrity already checked
/// by [`super::Client::response`] when the request was authenticated).
#[derive(Debug, Clone)]
pub struct Response {
    /// The whole message, for attributes this type has no accessor for.
    pub message: Message,
}

impl Response {
    /// Whether it is a success response.
    pub fn is_success(&self) -> bool {
        self.message.class() == MessageClass::SuccessResponse
    }

    /// The ERROR-CODE of an error response (`None` for a success, or for an error
    /// response that lacks one, which [`Response::is_success`] tells apart).
    pub fn error(&self) -> Option<StunError> {
        let e = self.message.get_attribute::<ErrorCode>()?;
        Some(StunError { code: e.code(), reason: e.reason_phrase().to_owned() })
    }

    /// Just the error code.
    pub fn error_code(&self) -> Option<u16> {
        self.message.get_attribute::<ErrorCode>().map(|e| e.code())
    }

    /// XOR-MAPPED-ADDRESS: our address as the server sees it.
    pub fn mapped(&self) -> Option<SocketAddr> {
        self.message.get_attribute::<XorMappedAddress>().map(|a| a.address())
    }

    /// XOR-RELAYED-ADDRESS: the allocation's relayed address (the first, when the
    /// server allocated two families).
    pub fn relayed(&self) -> Option<SocketAddr> {
        self.message.get_attribute::<XorRelayAddress>().map(|a| a.address())
    }

    /// Every XOR-RELAYED-ADDRESS (RFC 8656 §7.1: one per family of a dual allocation).
    pub fn relayed_all(&self) -> Vec<SocketAddr> {
        let relayed = |a: &Attribute| match a {
            Attribute::XorRelayAddress(r) => Some(r.address()),
            _ => None,
        };
        self.message.attributes().filter_map(relayed).collect()
    }

    /// LIFETIME.
    pub fn lifetime(&self) -> Option<Duration> {
        self.message.get_attribute::<Lifetime>().map(|l| l.lifetime())
    }

    /// SOFTWARE: the server's name and version.
    pub fn software(&self) -> Option<&str> {
        self.message.get_attribute::<Software>().map(|s| s.description())
    }

    /// REALM (of a 401 challenge).
    pub fn realm(&self) -> Option<&str> {
        self.message.get_attribute::<Realm>().map(|r| r.text())
    }

    /// NONCE (of a 401 or 438).
    pub fn nonce(&self) -> Option<&str> {
        self.message.get_attribute::<Nonce>().map(|n| n.value())
    }

    /// CONNECTION-ID of an RFC 6062 Connect success.
    pub fn connection_id(&self) -> Option<u32> {
        let id = self.message.get_attribute::<ConnectionId>()?;
        let bytes: [u8; 4] = id.value().try_into().ok()?;
        Some(u32::from_be_bytes(bytes))
    }

    /// RFC 8016 MOBILITY-TICKET of an Allocate or Refresh success.
    pub fn mobility_ticket(&self) -> Option<&[u8]> {
        self.message.get_attribute::<crate::stun::attributes::MobilityTicket>().map(|t| t.value())
    }

    /// The success response, or its error.
    pub fn into_result(self) -> Result<Response, StunError> {
        match self.error() {
            Some(e) if !self.is_success() => Err(e),
            _ => Ok(self),
        }
    }
}
