//! Why a step fails, and what that usually means for an operator.

use crate::client::blocking::TransportError;
use crate::client::ClientError;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Why a probe step failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The host name did not resolve.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        /// The host from the URL.
        host: String,
        /// The resolver's error.
        source: io::Error,
    },
    /// The host name resolved to nothing usable.
    #[error("{host} resolved to no address")]
    NoAddress {
        /// The host from the URL.
        host: String,
    },
    /// A socket operation failed (bind, connect, send, receive).
    #[error("{what}: {source}")]
    Io {
        /// What the probe was doing.
        what: &'static str,
        /// The system's error.
        source: io::Error,
    },
    /// The TLS handshake failed (certificate not trusted, wrong name, no common cipher...).
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    /// The CA file could not be read.
    #[error("cannot load CA certificates from {path}: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Nothing came back in time.
    #[error("no answer from {server} within {waited:?}{stray}", stray = stray_note(*stray_from))]
    Timeout {
        /// Where the request went.
        server: SocketAddr,
        /// How long the probe waited.
        waited: Duration,
        /// A datagram that came from another address (a multihomed server answering
        /// from the wrong interface), if one did.
        stray_from: Option<SocketAddr>,
    },
    /// The server closed the connection.
    #[error("the server closed the connection")]
    Closed,
    /// The server answered with a STUN error response.
    #[error("{code} {}", if reason.is_empty() { reason_phrase(*code) } else { reason })]
    ErrorResponse {
        /// The ERROR-CODE.
        code: u16,
        /// Its reason phrase.
        reason: String,
    },
    /// The answer could not be decoded or lacks a required attribute.
    #[error("malformed answer: {0}")]
    Malformed(&'static str),
    /// A success response whose MESSAGE-INTEGRITY does not verify with our key.
    #[error("the response's MESSAGE-INTEGRITY does not verify with our credentials")]
    Integrity,
    /// Relayed data did not arrive (or arrived changed).
    #[error("{0}")]
    Relay(String),
    /// The system's random source failed.
    #[error("no random numbers from the system")]
    Random,
}

fn stray_note(from: Option<SocketAddr>) -> String {
    match from {
        Some(addr) => format!(" (but a datagram came from {addr}: does the server answer from another address?)"),
        None => String::new(),
    }
}

impl ProbeError {
    /// What the failure usually means, for an operator.
    pub fn hint(&self) -> Option<&'static str> {
        Some(match self {
            ProbeError::ErrorResponse { code, .. } => error_code_hint(*code)?,
            ProbeError::Resolve { .. } | ProbeError::NoAddress { .. } => {
                "check the DNS record (A/AAAA) of the host in the URL"
            }
            ProbeError::Timeout { .. } => {
                "the server is not running, the port is wrong, or a firewall drops the traffic \
                 (UDP 3478 and the relay port range must be open)"
            }
            ProbeError::Tls(_) | ProbeError::CaFile { .. } => {
                "the certificate must be valid for the URL's host and chain to a trusted CA \
                 (--ca FILE to trust a private CA, --server-name to check another name)"
            }
            ProbeError::Integrity => "the server keyed the response differently: a realm or password mismatch",
            ProbeError::Relay(_) => {
                "the allocation works but data does not flow: check the relay port range in the firewall, \
                 the external (public) address the server advertises, and its peer policy"
            }
            ProbeError::Io { source, .. } if source.kind() == io::ErrorKind::ConnectionRefused => {
                "nothing listens on that port (for UDP: an ICMP port unreachable came back)"
            }
            _ => return None,
        })
    }
}

/// The registered reason phrase of an error code (servers may send an empty one).
pub fn reason_phrase(code: u16) -> &'static str {
    error_code_hint(code).and_then(|h| h.split(':').next()).unwrap_or("(no reason phrase)")
}

/// What a STUN/TURN error code usually means (RFC 8489 §14.8, RFC 8656 §19).
pub fn error_code_hint(code: u16) -> Option<&'static str> {
    Some(match code {
        300 => "Try Alternate: the server redirects to another (ALTERNATE-SERVER)",
        400 => "Bad Request: the server could not parse the request",
        401 => {
            "Unauthorized: wrong username or password, or a realm mismatch; with REST credentials, \
             a secret the server does not have or a clock skew that expired the username"
        }
        403 => {
            "Forbidden: the server's peer policy denies this peer address \
             (private, loopback and other special ranges are usually denied)"
        }
        420 => "Unknown Attribute: the server does not understand a required attribute",
        437 => {
            "Allocation Mismatch: an allocation already exists for this client address and port \
             (or, on refresh, none does: it expired or the server restarted)"
        }
        438 => "Stale Nonce: the server kept rejecting its own nonces (clock or nonce handling broken)",
        440 => "Address Family not Supported: the server has no relay address of the requested family",
        441 => "Wrong Credentials: the request used other credentials than the allocation",
        442 => "Unsupported Transport Protocol: the server does not relay that transport",
        443 => "Peer Address Family Mismatch: the peer's address family differs from the relay's",
        486 => {
            "Allocation Quota Reached: this user or client address holds too many allocations \
             (leaked clients, or a quota set too low)"
        }
        500 => "Server Error: a temporary failure inside the server",
        508 => "Insufficient Capacity: the server is out of relay ports or at its total allocation limit",
        _ => return None,
    })
}

impl From<ClientError> for ProbeError {
    fn from(error: ClientError) -> ProbeError {
        match error {
            ClientError::Encode(what) | ClientError::Malformed(what) => ProbeError::Malformed(what),
            ClientError::Integrity => ProbeError::Integrity,
        }
    }
}

impl From<TransportError> for ProbeError {
    fn from(error: TransportError) -> ProbeError {
        match error {
            TransportError::Io { what, source } => ProbeError::Io { what, source },
            TransportError::Timeout { server, waited, stray_from } => {
                ProbeError::Timeout { server, waited, stray_from }
            }
            TransportError::Closed => ProbeError::Closed,
            TransportError::Client(e) => e.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::report::Failure;

    #[test]
    fn every_error_code_a_turn_server_sends_has_a_hint() {
        for code in [300, 400, 401, 403, 420, 437, 438, 440, 441, 442, 443, 486, 500, 508] {
            assert!(error_code_hint(code).is_some(), "{code}");
        }
        assert_eq!(error_code_hint(499), None);
        let f = Failure { step: "allocate", error: ProbeError::ErrorResponse { code: 486, reason: "Quota".into() } };
        assert!(f.to_string().starts_with("allocate failed: 486 Quota (Allocation Quota Reached"), "{f}");
    }
}
