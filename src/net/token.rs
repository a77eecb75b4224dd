//! Epoll tokens: the `u64` an epoll event carries names the socket that is ready. This
//! is the one place tokens are made ([`Token::encode`]) and read ([`Token::decode`]).
//!
//! Layout: bit 63 set means a TCP/TLS client connection: with bit 62 set too, one side
//! of a spliced RFC 6062 data connection (its slot shifted left by one, the low bit
//! the side), else the bits below its slot among the loop's connections. Otherwise bit 62 set means a client listener, bit 61 then its family and the bits
//! below its index among the listeners of that family. Bit 62 clear means a relay
//! socket: the allocation id shifted left by one, the low bit its family.

use super::listeners::ListenerKey;
use crate::turn::allocation::Family;
use crate::turn::AllocationId;

/// Set in every stream connection token.
const STREAM_TOKEN: u64 = 1 << 63;
/// Set, with [`STREAM_TOKEN`], in the tokens of spliced data connections' sockets.
const SPLICE_TOKEN: u64 = 1 << 62;
/// Set in every listener token.
const LISTENER_TOKEN: u64 = 1 << 62;
/// Set in the token of an IPv6 listener.
const V6_TOKEN: u64 = 1 << 61;

/// What a ready epoll event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Token {
    /// A client-facing UDP listener.
    Listener(ListenerKey),
    /// A relay socket of an allocation, one per family.
    Relay(AllocationId, Family),
    /// A TCP/TLS client connection the loop serves, by its slot.
    Stream(usize),
    /// One socket of an RFC 6062 data connection the loop splices, by its slot.
    Splice(usize, Side),
}

/// The two sockets of a spliced RFC 6062 data connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    /// The client's data connection.
    Client = 0,
    /// The connection to (or from) the peer.
    Peer = 1,
}

impl Token {
    /// The epoll token to register a socket with.
    pub(super) fn encode(self) -> u64 {
        match self {
            Token::Listener(key) => {
                let family = if key.family() == Family::V6 { V6_TOKEN } else { 0 };
                LISTENER_TOKEN | family | key.index() as u64
            }
            Token::Relay(id, family) => id.0 << 1 | family as u64,
            Token::Stream(slot) => STREAM_TOKEN | slot as u64,
            Token::Splice(slot, side) => STREAM_TOKEN | SPLICE_TOKEN | (slot as u64) << 1 | side as u64,
        }
    }

    /// The socket an epoll token names. Every `u64` decodes: a token this loop did not
    /// make names a listener or an allocation it does not have, which is then skipped.
    pub(super) fn decode(token: u64) -> Token {
        if token & STREAM_TOKEN != 0 && token & SPLICE_TOKEN != 0 {
            let side = if token & 1 == 0 { Side::Client } else { Side::Peer };
            // Out of range on a 32-bit target only; such a slot finds no connection.
            Token::Splice(usize::try_from((token & (SPLICE_TOKEN - 1)) >> 1).unwrap_or(usize::MAX), side)
        } else if token & STREAM_TOKEN != 0 {
            // Out of range on a 32-bit target only; such a slot finds no connection.
            Token::Stream(usize::try_from(token & (SPLICE_TOKEN - 1)).unwrap_or(usize::MAX))
        } else if token & LISTENER_TOKEN != 0 {
            let family = if token & V6_TOKEN != 0 { Family::V6 } else { Family::V4 };
            // Out of range on a 32-bit target only; such an index finds no listener.
            let index = usize::try_from(token & (V6_TOKEN - 1)).unwrap_or(usize::MAX);
            Token::Listener(ListenerKey::new(family, index))
        } else {
            let family = if token & 1 == 0 { Family::V4 } else { Family::V6 };
            Token::Relay(AllocationId(token >> 1), family)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_decodes_to_what_it_was_made_from() {
        for token in [
            Token::Listener(ListenerKey::new(Family::V4, 0)),
            Token::Listener(ListenerKey::new(Family::V6, 3)),
            Token::Relay(AllocationId(42), Family::V4),
            Token::Relay(AllocationId(42), Family::V6),
            Token::Stream(0),
            Token::Stream(70_000),
            Token::Splice(0, Side::Client),
            Token::Splice(0, Side::Peer),
            Token::Splice(70_000, Side::Peer),
        ] {
            assert_eq!(Token::decode(token.encode()), token);
        }
    }

    #[test]
    fn relay_tokens_are_not_listener_tokens() {
        assert_eq!(Token::decode(42 << 1), Token::Relay(AllocationId(42), Family::V4));
        assert!(matches!(Token::decode(LISTENER_TOKEN - 1), Token::Relay(..)));
    }
}
