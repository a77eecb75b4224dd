//! STUN and TURN error responses as named values: every code turnd answers with, its
//! reason phrase on the wire, and the RFC section that defines it. Handlers return
//! these through the core's `Reject`, never a bare number.

/// An ERROR-CODE (RFC 8489 §14.8): the code and the reason phrase turnd sends with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorKind {
    /// The three-digit code, 300 to 699.
    pub code: u16,
    /// The reason phrase (the RFC's, or one that says which quota).
    pub reason: &'static str,
}

const fn kind(code: u16, reason: &'static str) -> ErrorKind {
    ErrorKind { code, reason }
}

/// RFC 8489 §14.8: 300, the client should use the ALTERNATE-SERVER.
pub const TRY_ALTERNATE: ErrorKind = kind(300, "Try Alternate");
/// RFC 8489 §14.8: 400, the request was malformed.
pub const BAD_REQUEST: ErrorKind = kind(400, "Bad Request");
/// RFC 8489 §14.8: 401, the credentials are missing or wrong. Sent without a reason
/// phrase (see [`ErrorKind::wire_reason`]).
pub const UNAUTHENTICATED: ErrorKind = kind(401, "Unauthenticated");
/// RFC 8656 §19: 403, the peer policy refuses the peer.
pub const FORBIDDEN: ErrorKind = kind(403, "Forbidden");
/// RFC 8016 §3.4: 405, the server does not allow mobility (turnd's `[relay] mobility`
/// is off).
pub const MOBILITY_FORBIDDEN: ErrorKind = kind(405, "Mobility Forbidden");
/// RFC 8489 §14.8: 420, a comprehension-required attribute is not understood.
pub const UNKNOWN_ATTRIBUTE: ErrorKind = kind(420, "Unknown Attribute");
/// RFC 8656 §19: 437, no allocation on this 5-tuple (or one already there).
pub const ALLOCATION_MISMATCH: ErrorKind = kind(437, "Allocation Mismatch");
/// RFC 8489 §14.8: 438, the nonce has expired. Sent without a reason phrase.
pub const STALE_NONCE: ErrorKind = kind(438, "Stale Nonce");
/// RFC 8656 §19: 440, the server cannot relay on the requested address family.
pub const ADDRESS_FAMILY_NOT_SUPPORTED: ErrorKind = kind(440, "Address Family not Supported");
/// RFC 8656 §19: 441, the allocation belongs to another user.
pub const WRONG_CREDENTIALS: ErrorKind = kind(441, "Wrong Credentials");
/// RFC 8656 §19: 442, REQUESTED-TRANSPORT names a protocol turnd does not relay.
pub const UNSUPPORTED_TRANSPORT_PROTOCOL: ErrorKind = kind(442, "Unsupported Transport Protocol");
/// RFC 8656 §19: 443, the peer's family is not the relay's.
pub const PEER_ADDRESS_FAMILY_MISMATCH: ErrorKind = kind(443, "Peer Address Family Mismatch");
/// RFC 6062 §6.3: 446, a connection to that peer already exists.
pub const CONNECTION_ALREADY_EXISTS: ErrorKind = kind(446, "Connection Already Exists");
/// RFC 6062 §6.3: 447, the connection to the peer failed or timed out.
pub const CONNECTION_TIMEOUT_OR_FAILURE: ErrorKind = kind(447, "Connection Timeout or Failure");
/// RFC 8656 §19: 486, the user or source holds as many allocations as allowed.
pub const ALLOCATION_QUOTA_REACHED: ErrorKind = kind(486, "Allocation Quota Reached");
/// 486 for the per-allocation permission quota.
pub const PERMISSION_QUOTA_REACHED: ErrorKind = kind(486, "Permission Quota Reached");
/// 486 for the per-allocation channel quota.
pub const CHANNEL_QUOTA_REACHED: ErrorKind = kind(486, "Channel Quota Reached");
/// 486 for RFC 6062 connections of one allocation.
pub const CONNECTION_QUOTA_REACHED: ErrorKind = kind(486, "Connection Quota Reached");
/// RFC 8489 §14.8: 500, a temporary error: the client should try again. Sent when the
/// authentication webhook could not say whether a user exists (it failed, timed out,
/// or too many lookups wait): a 401 would tell the client its credentials are wrong.
pub const SERVER_ERROR: ErrorKind = kind(500, "Server Error");
/// RFC 8656 §19: 508, the server is out of ports or allocations.
pub const INSUFFICIENT_CAPACITY: ErrorKind = kind(508, "Insufficient Capacity");

impl ErrorKind {
    /// The reason phrase to send. 401 and 438 go without one: they answer requests
    /// nothing has authenticated yet, so the shorter the better (a reflector gains
    /// less), and clients act on the code alone.
    pub fn wire_reason(&self) -> &'static str {
        if matches!(self.code, 401 | 438) {
            ""
        } else {
            self.reason
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_in_the_error_range_and_401_438_go_bare() {
        let all = [
            TRY_ALTERNATE,
            BAD_REQUEST,
            UNAUTHENTICATED,
            FORBIDDEN,
            UNKNOWN_ATTRIBUTE,
            SERVER_ERROR,
            ALLOCATION_MISMATCH,
            STALE_NONCE,
            ADDRESS_FAMILY_NOT_SUPPORTED,
            WRONG_CREDENTIALS,
            UNSUPPORTED_TRANSPORT_PROTOCOL,
            PEER_ADDRESS_FAMILY_MISMATCH,
            CONNECTION_ALREADY_EXISTS,
            CONNECTION_TIMEOUT_OR_FAILURE,
            ALLOCATION_QUOTA_REACHED,
            PERMISSION_QUOTA_REACHED,
            CHANNEL_QUOTA_REACHED,
            CONNECTION_QUOTA_REACHED,
            INSUFFICIENT_CAPACITY,
        ];
        for kind in all {
            assert!((300..700).contains(&kind.code), "{kind:?}");
            assert!(stun_codec::rfc5389::attributes::ErrorCode::new(kind.code, kind.reason.into()).is_ok());
        }
        assert_eq!(UNAUTHENTICATED.wire_reason(), "");
        assert_eq!(STALE_NONCE.wire_reason(), "");
        assert_eq!(BAD_REQUEST.wire_reason(), "Bad Request");
    }
}
