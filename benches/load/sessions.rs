//! Control-plane workloads: setting up allocations (with a channel or a permission),
//! Binding requests, Allocate + Refresh(0) churn, and idle allocations for memory.

use crate::control::{drive, Clients, Meter, Next, Totals};
use crate::stun::{self, Response};
use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};
use stun_codec::TransactionId;
use turnd::client::{Client, Credentials, Request};

/// The bench's credentials, the same on both servers (whose realm, "r", the client
/// learns from their 401).
pub const USER: &str = "u";
pub const PASSWORD: &str = "p";
/// The channel every allocation binds (each allocation has its own channel space).
pub const CHANNEL: u16 = 0x4000;
/// Requests in flight while setting up allocations.
const SETUP_CONCURRENCY: usize = 64;

/// What an allocation is prepared for after Allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prepare {
    /// Nothing: an idle allocation.
    Nothing,
    /// ChannelBind [`CHANNEL`] to the peer.
    Channel,
    /// CreatePermission for the peer.
    Permission,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Allocate,
    Prepare,
    Refresh,
    Finished,
}

/// One client's conversation with the server.
#[derive(Clone)]
pub struct Conversation {
    /// Builds the requests, authenticated once a challenge was taken.
    client: Client,
    phase: Phase,
    /// The relayed address from the Allocate success.
    pub relay: Option<SocketAddr>,
    /// The error that ended the conversation, if any.
    pub error: Option<String>,
    /// Requests answered 401/438 after the first challenge (each one costs a round trip).
    pub retries: u64,
}

impl Default for Conversation {
    fn default() -> Self {
        let client = Client::new(Credentials::long_term(USER, PASSWORD), [0; 12]);
        Conversation { client, phase: Phase::Allocate, relay: None, error: None, retries: 0 }
    }
}

impl Conversation {
    fn request(&self, tid: [u8; 12], prepare: Prepare, peer: SocketAddrV4) -> Vec<u8> {
        let request = match self.phase {
            Phase::Allocate => Request::allocate(),
            Phase::Prepare if prepare == Prepare::Channel => Request::channel_bind(CHANNEL, SocketAddr::V4(peer)),
            Phase::Prepare => Request::create_permission(SocketAddr::V4(peer)),
            Phase::Refresh | Phase::Finished => Request::refresh(0),
        };
        // Bare requests (before the challenge) went without FINGERPRINT before the
        // generator used the library: keep the servers' work what it was.
        let request = if self.client.challenge().is_some() { request } else { request.without_fingerprint() };
        match self.client.request_with_id(&request, TransactionId::new(tid)) {
            Ok(sent) => sent.bytes,
            // Only a username STUN cannot carry fails, and the bench's is fixed.
            Err(e) => panic!("the bench built a request the client cannot encode: {e}"),
        }
    }

    /// Takes a 401/438 challenge: true if the request should be sent again.
    fn take_challenge(&mut self, answer: &Response<'_>) -> bool {
        let (Some(realm), Some(nonce)) = (answer.attr(stun::ATTR_REALM), answer.attr(stun::ATTR_NONCE)) else {
            return false;
        };
        let (Ok(realm), Ok(nonce)) = (std::str::from_utf8(realm), std::str::from_utf8(nonce)) else {
            return false;
        };
        let known = self.client.challenge().map(|(_, n)| n == nonce);
        if known == Some(true) && answer.error_code() == Some(401) {
            return false; // the same nonce refused again: the credentials are wrong
        }
        if known.is_some() {
            self.retries += 1;
        }
        self.client.set_challenge(realm, nonce);
        true
    }

    fn fail(&mut self, what: &str, answer: &Response<'_>) -> Next {
        self.error = Some(format!("{what}: error {:?}", answer.error_code()));
        self.phase = Phase::Finished;
        Next::Done
    }
}

/// Sets up `n` allocations, each prepared with `prepare` towards `peer`. Returns the
/// conversations (relayed address or error each).
pub fn allocate(
    clients: &Clients<'_>,
    server: SocketAddrV4,
    n: usize,
    prepare: Prepare,
    peer: SocketAddrV4,
    timeout: Duration,
) -> (Vec<Conversation>, Totals) {
    let mut all = vec![Conversation::default(); n];
    let until = Instant::now() + timeout;
    let totals = drive(clients, server, n, SETUP_CONCURRENCY, until, None, |i, answer, tid, _| {
        let c = &mut all[i];
        if let Some(answer) = answer {
            if !answer.is_success() {
                if matches!(answer.error_code(), Some(401 | 438)) && c.take_challenge(answer) {
                    return Next::Send(c.request(tid, prepare, peer));
                }
                return c.fail(if c.phase == Phase::Allocate { "Allocate" } else { "prepare" }, answer);
            }
            match c.phase {
                Phase::Allocate => {
                    c.relay = answer.xor_address(stun::ATTR_XOR_RELAYED_ADDRESS);
                    c.phase = if prepare == Prepare::Nothing { Phase::Finished } else { Phase::Prepare };
                }
                _ => c.phase = Phase::Finished,
            }
        } else if c.error.is_some() {
            return Next::Done;
        }
        if c.phase == Phase::Finished {
            return Next::Done;
        }
        Next::Send(c.request(tid, prepare, peer))
    });
    (all, totals)
}

/// Binding requests from `sessions` client addresses, one outstanding each, until the
/// meter's window closes.
pub fn binding(clients: &Clients<'_>, server: SocketAddrV4, sessions: usize, meter: &mut Meter, until: Instant) {
    drive(clients, server, sessions, sessions, until, Some(meter), |_, answer, tid, _| {
        let request = stun::binding_request(tid);
        match answer {
            Some(a) if a.is_success() => Next::SendCompleted(request),
            _ => Next::Send(request),
        }
    });
}

/// What the churn workload saw.
#[derive(Debug, Default, Clone)]
pub struct Churn {
    /// Requests answered 401/438 after the first challenge of a 5-tuple.
    pub retries: u64,
    /// Error answers other than 401/438 (each restarts the pair on a new 5-tuple).
    pub errors: u64,
    /// Those errors by (method, code), most frequent first.
    pub error_codes: Vec<((u16, u16), u64)>,
    pub totals: Totals,
}

/// Allocate + Refresh(0) pairs in a loop from `sessions` clients until `until`. Each pair
/// starts on a fresh client 5-tuple, as a new call would: unauthenticated Allocate (401
/// with a nonce), authenticated Allocate, authenticated Refresh(0). Each Refresh success
/// completes a pair for the meter. Source addresses come from `pool`, round robin, so a
/// 5-tuple is reused only after `pool.len()` pairs.
pub fn churn(
    clients: &Clients<'_>,
    server: SocketAddrV4,
    sessions: usize,
    pool: &[std::net::Ipv4Addr],
    meter: &mut Meter,
    until: Instant,
) -> Churn {
    let mut all = vec![Conversation::default(); sessions];
    let mut errors = 0;
    let mut codes: std::collections::BTreeMap<(u16, u16), u64> = Default::default();
    let mut next_source = sessions;
    let peer = SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 9);
    let totals = drive(clients, server, sessions, sessions, until, Some(meter), |i, answer, tid, source| {
        let c = &mut all[i];
        let mut fresh_tuple = |c: &mut Conversation, source: &mut std::net::Ipv4Addr| {
            *source = pool[next_source % pool.len()];
            next_source += 1;
            *c = Conversation::default();
        };
        let Some(answer) = answer else {
            return Next::Send(c.request(tid, Prepare::Nothing, peer));
        };
        if !answer.is_success() {
            if matches!(answer.error_code(), Some(401 | 438)) && c.take_challenge(answer) {
                return Next::Send(c.request(tid, Prepare::Nothing, peer));
            }
            errors += 1;
            *codes.entry((answer.header.method(), answer.error_code().unwrap_or(0))).or_default() += 1;
            fresh_tuple(c, source);
            return Next::Send(c.request(tid, Prepare::Nothing, peer));
        }
        if c.phase == Phase::Allocate {
            c.phase = Phase::Refresh;
            Next::Send(c.request(tid, Prepare::Nothing, peer))
        } else {
            let retries = c.retries;
            fresh_tuple(c, source);
            c.retries = retries;
            Next::SendCompleted(c.request(tid, Prepare::Nothing, peer))
        }
    });
    let mut error_codes: Vec<_> = codes.into_iter().collect();
    error_codes.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    Churn { retries: all.iter().map(|c| c.retries).sum(), errors, error_codes, totals }
}
