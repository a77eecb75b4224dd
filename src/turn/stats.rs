//! Counters the core keeps. Plain integers in fixed arrays: one core per worker owns
//! them, so the relay path pays an add, never an atomic or a lock; the shell publishes
//! copies. Every index is a closed enum, so label cardinality is bounded by design.

use super::Transport;
use stun_codec::Method;

/// Request methods with their own counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestMethod {
    /// Binding.
    Binding,
    /// Allocate.
    Allocate,
    /// Refresh.
    Refresh,
    /// CreatePermission.
    CreatePermission,
    /// ChannelBind.
    ChannelBind,
    /// Anything else.
    Other,
}

impl RequestMethod {
    /// Every method, in index order.
    pub const ALL: [RequestMethod; 6] = [
        RequestMethod::Binding,
        RequestMethod::Allocate,
        RequestMethod::Refresh,
        RequestMethod::CreatePermission,
        RequestMethod::ChannelBind,
        RequestMethod::Other,
    ];

    /// The method of a STUN message.
    pub fn of(method: Method) -> Self {
        match method.as_u16() {
            0x001 => RequestMethod::Binding,
            0x003 => RequestMethod::Allocate,
            0x004 => RequestMethod::Refresh,
            0x008 => RequestMethod::CreatePermission,
            0x009 => RequestMethod::ChannelBind,
            _ => RequestMethod::Other,
        }
    }

    /// A metric label value.
    pub fn label(self) -> &'static str {
        match self {
            RequestMethod::Binding => "binding",
            RequestMethod::Allocate => "allocate",
            RequestMethod::Refresh => "refresh",
            RequestMethod::CreatePermission => "create_permission",
            RequestMethod::ChannelBind => "channel_bind",
            RequestMethod::Other => "other",
        }
    }
}

/// Error codes counted one by one; anything else counts as "other".
pub const ERROR_CODES: [u16; 17] =
    [300, 400, 401, 403, 405, 420, 437, 438, 440, 441, 442, 443, 446, 447, 486, 500, 508];

/// Why authentication failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No such user.
    UnknownUser,
    /// MESSAGE-INTEGRITY did not verify.
    BadIntegrity,
    /// The nonce was stale or forged.
    StaleNonce,
    /// A REST credential past its expiry.
    Expired,
    /// The source sent too many unauthenticated requests.
    RateLimited,
    /// The user or credential is revoked.
    Revoked,
    /// The authentication webhook could not tell (it failed or timed out, or too many
    /// lookups were waiting): answered 500, not 401.
    LookupUnavailable,
}

impl AuthFailure {
    /// Every reason, in index order.
    pub const ALL: [AuthFailure; 7] = [
        AuthFailure::UnknownUser,
        AuthFailure::BadIntegrity,
        AuthFailure::StaleNonce,
        AuthFailure::Expired,
        AuthFailure::RateLimited,
        AuthFailure::Revoked,
        AuthFailure::LookupUnavailable,
    ];

    /// A metric label value.
    pub fn label(self) -> &'static str {
        match self {
            AuthFailure::UnknownUser => "no_user",
            AuthFailure::BadIntegrity => "bad_integrity",
            AuthFailure::StaleNonce => "stale_nonce",
            AuthFailure::Expired => "expired_credential",
            AuthFailure::RateLimited => "rate_limited",
            AuthFailure::Revoked => "revoked",
            AuthFailure::LookupUnavailable => "lookup_unavailable",
        }
    }
}

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Not STUN or ChannelData, or failed to parse.
    Malformed,
    /// No allocation, channel or permission for it.
    NoPermission,
    /// The peer policy refuses the peer.
    Policy,
    /// Over a quota.
    Quota,
    /// Over a rate cap.
    RateCap,
    /// A response or indication a server does not expect from a client.
    Unexpected,
    /// A request from an unverified (UDP) source whose smallest answer would be more
    /// than three times its size.
    Amplification,
    /// From a client in `clients.denied`.
    DeniedClient,
    /// An ICMP error from a peer over the allocation's ICMP relaying rate (RFC 8656 §11).
    IcmpRateLimit,
}

impl DropReason {
    /// Every reason, in index order.
    pub const ALL: [DropReason; 9] = [
        DropReason::Malformed,
        DropReason::NoPermission,
        DropReason::Policy,
        DropReason::Quota,
        DropReason::RateCap,
        DropReason::Unexpected,
        DropReason::Amplification,
        DropReason::DeniedClient,
        DropReason::IcmpRateLimit,
    ];

    /// A metric label value.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::NoPermission => "no_permission",
            DropReason::Policy => "policy",
            DropReason::Quota => "quota",
            DropReason::RateCap => "rate_cap",
            DropReason::Unexpected => "unexpected",
            DropReason::Amplification => "amplification",
            DropReason::DeniedClient => "denied_client",
            DropReason::IcmpRateLimit => "icmp_rate_limit",
        }
    }
}

/// What became of a Refresh that presented a MOBILITY-TICKET from a new 5-tuple
/// (RFC 8016).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveResult {
    /// The allocation moved to the new 5-tuple on the worker that owned it.
    Moved,
    /// The allocation moved, and from another worker to the one the new 5-tuple
    /// reaches.
    MovedAcrossWorkers,
    /// The ticket did not open: forged, altered, or another user's.
    InvalidTicket,
    /// The ticket opened but names no allocation it may move: expired, used before a
    /// later move, or the allocation is gone.
    StaleTicket,
    /// Mobility is off (405).
    Forbidden,
}

impl MoveResult {
    /// Every result, in index order.
    pub const ALL: [MoveResult; 5] = [
        MoveResult::Moved,
        MoveResult::MovedAcrossWorkers,
        MoveResult::InvalidTicket,
        MoveResult::StaleTicket,
        MoveResult::Forbidden,
    ];

    /// A metric label value.
    pub fn label(self) -> &'static str {
        match self {
            MoveResult::Moved => "moved",
            MoveResult::MovedAcrossWorkers => "moved_across_workers",
            MoveResult::InvalidTicket => "invalid_ticket",
            MoveResult::StaleTicket => "stale_ticket",
            MoveResult::Forbidden => "forbidden",
        }
    }
}

/// Relay direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the client, out of the relay socket to a peer.
    ClientToPeer,
    /// From a peer, back to the client.
    PeerToClient,
}

impl Direction {
    /// Both directions, in index order.
    pub const ALL: [Direction; 2] = [Direction::ClientToPeer, Direction::PeerToClient];

    /// A metric label value.
    pub fn label(self) -> &'static str {
        match self {
            Direction::ClientToPeer => "client_to_peer",
            Direction::PeerToClient => "peer_to_client",
        }
    }
}

impl Transport {
    /// Every transport, in index order.
    pub const ALL: [Transport; 3] = [Transport::Udp, Transport::Tcp, Transport::Tls];

    /// A metric label value.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

/// The counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// Answered requests by [`RequestMethod`] index: `[successes, errors]`.
    pub requests: [[u64; 2]; 6],
    /// Error responses by [`ERROR_CODES`] index; the last slot is any other code.
    pub errors: [u64; ERROR_CODES.len() + 1],
    /// Authentication failures by [`AuthFailure`] index.
    pub auth_failures: [u64; AuthFailure::ALL.len()],
    /// Dropped packets by [`DropReason`] index.
    pub dropped: [u64; DropReason::ALL.len()],
    /// Relayed datagrams by [`Direction`] then [`Transport`] index.
    pub relayed_packets: [[u64; 3]; 2],
    /// Relayed payload bytes by [`Direction`] then [`Transport`] index.
    pub relayed_bytes: [[u64; 3]; 2],
    /// Allocations created.
    pub allocations_created: u64,
    /// Allocations that expired (not refreshed in time).
    pub allocations_expired: u64,
    /// ICMP errors from peers relayed to clients as Data indications (RFC 8656 §11).
    pub icmp_relayed: u64,
    /// RFC 8016 moves by [`MoveResult`] index.
    pub mobility_moves: [u64; MoveResult::ALL.len()],
    /// Allocates sent to another node of the fleet (300), by
    /// [`super::fleet::RedirectReason`] index.
    pub redirects: [u64; super::fleet::RedirectReason::ALL.len()],
}

impl Stats {
    /// Counts a dropped packet.
    #[inline]
    pub fn drop(&mut self, reason: DropReason) {
        self.dropped[reason as usize] += 1;
    }

    /// Counts a relayed datagram.
    #[inline]
    pub fn relay(&mut self, direction: Direction, transport: Transport, bytes: usize) {
        self.relayed_packets[direction as usize][transport as usize] += 1;
        self.relayed_bytes[direction as usize][transport as usize] += bytes as u64;
    }

    /// Counts an answered request.
    pub fn answer(&mut self, method: Method, error_code: Option<u16>) {
        let method = RequestMethod::of(method) as usize;
        match error_code {
            None => self.requests[method][0] += 1,
            Some(code) => {
                self.requests[method][1] += 1;
                let slot = ERROR_CODES.iter().position(|&c| c == code).unwrap_or(ERROR_CODES.len());
                self.errors[slot] += 1;
            }
        }
    }

    /// Total dropped for one reason.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize]
    }

    /// Total authentication failures.
    pub fn auth_failures_total(&self) -> u64 {
        self.auth_failures.iter().sum()
    }

    /// Packets and bytes relayed in one direction over all transports.
    pub fn relayed(&self, direction: Direction) -> (u64, u64) {
        let d = direction as usize;
        (self.relayed_packets[d].iter().sum(), self.relayed_bytes[d].iter().sum())
    }

    /// Adds another worker's counters (for publishing a total).
    pub fn add(&mut self, other: &Stats) {
        fn add<const N: usize>(a: &mut [u64; N], b: &[u64; N]) {
            a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
        }
        self.requests.iter_mut().zip(&other.requests).for_each(|(a, b)| add(a, b));
        add(&mut self.errors, &other.errors);
        add(&mut self.auth_failures, &other.auth_failures);
        add(&mut self.dropped, &other.dropped);
        self.relayed_packets.iter_mut().zip(&other.relayed_packets).for_each(|(a, b)| add(a, b));
        self.relayed_bytes.iter_mut().zip(&other.relayed_bytes).for_each(|(a, b)| add(a, b));
        self.allocations_created += other.allocations_created;
        self.allocations_expired += other.allocations_expired;
        self.icmp_relayed += other.icmp_relayed;
        add(&mut self.mobility_moves, &other.mobility_moves);
        add(&mut self.redirects, &other.redirects);
    }

    /// Counts the outcome of a Refresh with a MOBILITY-TICKET from a new 5-tuple.
    pub fn mobility(&mut self, result: MoveResult) {
        self.mobility_moves[result as usize] += 1;
    }
}
