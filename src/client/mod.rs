//! A sans-IO TURN client (RFC 8656, RFC 6062 for TCP relays): it builds requests,
//! answers the server's 401/438 challenges with long-term or TURN REST credentials,
//! reads responses into typed results, and frames ChannelData and indications. It
//! owns no socket and reads no clock (transaction ids come from a seed passed in), so
//! `turnd probe`, the integration tests and the load benchmark put their own
//! transport around the same client.
//!
//! A transaction, whatever the transport:
//!
//! ```text
//! let sent = client.request(&Request::allocate())?;   // send sent.bytes
//! // ... read packets until one has sent.is_answered_by(packet) ...
//! let response = client.response(&sent, packet)?;
//! if client.learn(&response) { /* a 401/438 brought a fresh nonce: request again */ }
//! ```

// The one part of the client with sockets and a clock: a transport on top of it.
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
pub mod blocking;
mod credentials;
mod packet;
mod request;
mod response;

pub use credentials::Credentials;
pub use packet::{
    channel_data, indication_header_len, send_indication, write_channel_data, write_indication_header, DataIndication,
    Packet, INDICATION_HEADER_V4,
};
pub use request::{channel_number, Outgoing, Request, CONNECT, CONNECTION_BIND, PROTOCOL_TCP, PROTOCOL_UDP};
pub use response::{Response, StunError};

use crate::stun::integrity::long_term_key_md5;
use crate::stun::message::{self, IntegritySet, Message, Protection};
use std::net::SocketAddr;
use stun_codec::rfc5389::attributes::{Nonce, Realm, Username};
use stun_codec::{MessageClass, TransactionId};

/// How many times a caller should send one request before it gives up on fresh
/// nonces (a server that keeps answering 438 is broken, not busy).
pub const AUTH_ATTEMPTS: usize = 3;

/// Why the client could not build a request or read an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// Something could not be encoded (too long a payload, a username STUN cannot carry).
    #[error("{0}")]
    Encode(&'static str),
    /// An answer that does not decode or lacks what it must carry.
    #[error("{0}")]
    Malformed(&'static str),
    /// A success response whose MESSAGE-INTEGRITY does not verify with our key.
    #[error("the response's MESSAGE-INTEGRITY does not verify with our credentials")]
    Integrity,
}

/// One client's state towards one server: its credentials, the realm and nonce it
/// learned, and its transaction ids.
#[derive(Debug, Clone)]
pub struct Client {
    credentials: Credentials,
    /// The REALM and NONCE of the last challenge, once there was one.
    challenge: Option<(String, String)>,
    /// The long-term key for the credentials and the current realm.
    key: Option<[u8; 16]>,
    tid_seed: [u8; 12],
    transactions: u64,
    /// The last RFC 8016 MOBILITY-TICKET the server gave (see [`Client::learn`]).
    ticket: Option<Vec<u8>>,
}

impl Client {
    /// A client with `credentials`; `tid_seed` makes its transaction ids (random in
    /// a real client, so that an off-path attacker cannot guess them; fixed in tests).
    pub fn new(credentials: Credentials, tid_seed: [u8; 12]) -> Client {
        Client { credentials, challenge: None, key: None, tid_seed, transactions: 0, ticket: None }
    }

    /// The credentials.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// The realm and nonce learned from the server, if any.
    pub fn challenge(&self) -> Option<(&str, &str)> {
        self.challenge.as_ref().map(|(realm, nonce)| (realm.as_str(), nonce.as_str()))
    }

    /// Takes `realm` and `nonce` (from a 401 or 438) for the next requests.
    pub fn set_challenge(&mut self, realm: &str, nonce: &str) {
        self.key = match &self.credentials {
            Credentials::LongTerm { username, password } => Some(long_term_key_md5(username, realm, password)),
            Credentials::None => None,
        };
        self.challenge = Some((realm.to_owned(), nonce.to_owned()));
    }

    /// A fresh transaction id: the seed with a counter mixed into its last 8 bytes.
    pub fn transaction_id(&mut self) -> TransactionId {
        self.transactions = self.transactions.wrapping_add(1);
        let mut id = self.tid_seed;
        for (byte, count) in id[4..].iter_mut().zip(self.transactions.to_be_bytes()) {
            *byte ^= count;
        }
        TransactionId::new(id)
    }

    /// Encodes `request` with a fresh transaction id, with credentials when the
    /// request wants them and the client has both credentials and a nonce (before
    /// the first challenge a request goes out bare, and its 401 brings the nonce).
    pub fn request(&mut self, request: &Request) -> Result<Outgoing, ClientError> {
        let transaction_id = self.transaction_id();
        self.request_with_id(request, transaction_id)
    }

    /// [`Client::request`] with a transaction id of the caller's (a load generator
    /// that routes answers by what it put in the id).
    pub fn request_with_id(&self, request: &Request, transaction_id: TransactionId) -> Result<Outgoing, ClientError> {
        let mut m = Message::new(MessageClass::Request, request.method, transaction_id);
        for a in &request.attributes {
            m.add_attribute(a.clone());
        }
        let mut key = None;
        if let (true, Some(username), Some((realm, nonce)), Some(k)) =
            (request.authenticate, self.credentials.username(), &self.challenge, self.key)
        {
            let bad = |_| ClientError::Encode("username, realm or nonce not encodable");
            m.add_attribute(Username::new(username.to_owned()).map_err(bad)?);
            m.add_attribute(Realm::new(realm.clone()).map_err(bad)?);
            m.add_attribute(Nonce::new(nonce.clone()).map_err(bad)?);
            key = Some(k);
        }
        let protection = Protection {
            key: key.as_ref().map(|k| (&k[..], IntegritySet { sha1: true, sha256: false })),
            fingerprint: request.fingerprint,
        };
        let bytes =
            message::encode(m, protection).ok_or(ClientError::Encode("the codec rejected a request we built"))?;
        Ok(Outgoing { bytes, transaction_id, key })
    }

    /// Reads the response to `sent`, checking a success's MESSAGE-INTEGRITY when the
    /// request was authenticated (a forged success must not pass for the server's).
    pub fn response(&self, sent: &Outgoing, packet: &[u8]) -> Result<Response, ClientError> {
        let decoded = message::decode(packet).map_err(|_| ClientError::Malformed("undecodable STUN response"))?;
        if decoded.message.transaction_id() != sent.transaction_id {
            return Err(ClientError::Malformed("a response to another transaction"));
        }
        let response = Response { message: decoded.message };
        if let (Some(key), true) = (sent.key, response.is_success()) {
            match decoded.integrity_sha1 {
                Some(integrity) if integrity.verify(&key, packet) => {}
                Some(_) => return Err(ClientError::Integrity),
                None => return Err(ClientError::Malformed("success response without MESSAGE-INTEGRITY")),
            }
        }
        Ok(response)
    }

    /// The last MOBILITY-TICKET learned: present it with [`Request::refresh_mobile`]
    /// from a new address to keep the allocation (RFC 8016).
    pub fn mobility_ticket(&self) -> Option<&[u8]> {
        self.ticket.as_deref()
    }

    /// Learns from a 401 or 438 that carries a nonce other than the one the client
    /// used (RFC 8489 §9.2.5); returns whether the request should be sent again. It
    /// never says so without credentials, nor twice for the same nonce, so a caller
    /// that loops on it stops. A success that carries a MOBILITY-TICKET replaces the
    /// one kept (RFC 8016 §3.2: each answer brings the ticket for the next move).
    pub fn learn(&mut self, response: &Response) -> bool {
        if response.is_success() {
            if let Some(ticket) = response.mobility_ticket() {
                self.ticket = Some(ticket.to_vec());
            }
        }
        if !matches!(response.error_code(), Some(401 | 438)) {
            return false;
        }
        let Some(nonce) = response.nonce() else { return false };
        if self.challenge().is_some_and(|(_, current)| current == nonce) {
            return false;
        }
        let realm = match (response.realm(), &self.challenge) {
            (Some(realm), _) => realm.to_owned(),
            (None, Some((realm, _))) => realm.clone(),
            (None, None) => return false,
        };
        self.set_challenge(&realm, nonce);
        self.credentials != Credentials::None
    }

    /// A Send indication carrying `payload` to `peer`.
    pub fn send_indication(&mut self, peer: SocketAddr, payload: &[u8]) -> Result<Vec<u8>, ClientError> {
        let id = self.transaction_id();
        send_indication(id.as_bytes(), peer, payload)
    }
}

#[cfg(test)]
mod tests;
