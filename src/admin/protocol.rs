//! The JSON messages of `/ws`. Every message is one text frame holding one object;
//! server messages carry `"type"`, client messages carry `"op"`. `docs/admin.md`
//! documents the schema; the tests at the bottom pin its spelling.

use crate::net::report::AllocationInfo;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Schema version, sent in `hello`; bumped on incompatible changes.
pub const VERSION: u32 = 1;
/// Largest client message accepted, bytes (the connection is closed past it).
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// Fastest snapshot interval: the loop publishes once a second, so faster would repeat.
pub const MIN_INTERVAL_MS: u64 = 1000;
/// Slowest snapshot interval.
pub const MAX_INTERVAL_MS: u64 = 60_000;
/// Largest page of `list_allocations`.
pub const MAX_PAGE: usize = 1000;
/// Page size when the client names none.
pub const DEFAULT_PAGE: usize = 100;

/// What a client can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Topic {
    /// A stats snapshot at the client's interval.
    Stats,
    /// Allocations created, refreshed, deleted, expired.
    Allocations,
    /// Authentication failures.
    Auth,
    /// Peers refused by the relay policy.
    Policy,
}

/// A message from a client.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// Add topics (and optionally set the stats interval).
    Subscribe {
        /// Topics to add.
        #[serde(default)]
        topics: Vec<Topic>,
        /// Snapshot interval, clamped to [`MIN_INTERVAL_MS`]..=[`MAX_INTERVAL_MS`].
        interval_ms: Option<u64>,
        /// Echoed in the reply.
        req: Option<u64>,
    },
    /// Remove topics.
    Unsubscribe {
        /// Topics to remove.
        topics: Vec<Topic>,
        /// Echoed in the reply.
        req: Option<u64>,
    },
    /// A page of allocations ordered by id (admin).
    ListAllocations {
        /// Only allocations of this realm (a session opened with `?realm=` lists only
        /// its realm's, whatever this says).
        realm: Option<String>,
        /// Allocations to skip.
        #[serde(default)]
        offset: usize,
        /// Page size, at most [`MAX_PAGE`].
        limit: Option<usize>,
        /// Echoed in the reply.
        req: Option<u64>,
    },
    /// Drop one allocation by id (admin).
    DropAllocation {
        /// The allocation id (from events or `list_allocations`).
        id: u64,
        /// Echoed in the reply.
        req: Option<u64>,
    },
    /// Drop every allocation of a user (admin).
    DropUser {
        /// The username.
        user: String,
        /// Echoed in the reply.
        req: Option<u64>,
    },
    /// Revoke a user (and every REST credential minted for that user id) or one REST
    /// username: its allocations end and it gets 401 until `unrevoke` (admin).
    Revoke {
        /// The username, user id or REST username.
        user: String,
        /// Echoed in the reply.
        req: Option<u64>,
    },
    /// Lift a revocation (admin).
    Unrevoke {
        /// The name revoked.
        user: String,
        /// Echoed in the reply.
        req: Option<u64>,
    },
    /// The revocations in force (admin).
    ListRevocations {
        /// Echoed in the reply.
        req: Option<u64>,
    },
    /// Reload the configuration file, exactly as `SIGHUP` does (admin): the admin plane
    /// raises SIGHUP in its own process, so the reload takes the signal's path (the
    /// file is reread and checked; a bad one is logged and the running configuration
    /// kept). The reply, `reloading`, says the reload was started, not how it ended.
    Reload {
        /// Echoed in the reply.
        req: Option<u64>,
    },
    /// Drain and exit, exactly as `SIGTERM` does (admin): new Allocates are turned away,
    /// and the process exits once no allocation is left or after `drain-time`. Raised
    /// once: while the server already drains, the reply says so (`already`) and no
    /// second SIGTERM (which would mean "exit now") is sent.
    Drain {
        /// Echoed in the reply.
        req: Option<u64>,
    },
}

/// Limits a client should know about, sent in `hello`.
#[derive(Debug, Clone, Serialize)]
pub struct Limits {
    /// [`MIN_INTERVAL_MS`].
    pub min_interval_ms: u64,
    /// [`MAX_INTERVAL_MS`].
    pub max_interval_ms: u64,
    /// [`MAX_MESSAGE_BYTES`].
    pub max_message_bytes: usize,
    /// [`MAX_PAGE`].
    pub max_page: usize,
}

/// Machine-readable error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The message is not valid JSON or not a known op.
    BadRequest,
    /// An admin action without the token (or with none configured).
    Unauthorized,
    /// The event loop's control queue is full; try again.
    Busy,
    /// The event loop did not answer in time or is gone.
    Unavailable,
    /// Too many messages; the connection is closed after this.
    RateLimited,
}

/// A message to a client (besides `stats` and `event`, which the hub serialises).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// First message on every connection.
    Hello {
        /// [`VERSION`].
        version: u32,
        /// `turnd/<version>`.
        server: &'static str,
        /// Whether this connection may use admin actions.
        admin: bool,
        /// Current subscription.
        topics: Vec<Topic>,
        /// Current snapshot interval.
        interval_ms: u64,
        /// Limits.
        limits: Limits,
    },
    /// Reply to `subscribe` and `unsubscribe`: the whole subscription now.
    Subscribed {
        /// Echo of the request's `req`.
        req: Option<u64>,
        /// Topics now subscribed.
        topics: Vec<Topic>,
        /// Snapshot interval now in force.
        interval_ms: u64,
    },
    /// Reply to `list_allocations`.
    Allocations {
        /// Echo of the request's `req`.
        req: Option<u64>,
        /// The page's offset.
        offset: usize,
        /// Allocations in all.
        total: usize,
        /// The page.
        allocations: Vec<AllocationInfo>,
    },
    /// Reply to `drop_allocation` and `drop_user`.
    Dropped {
        /// Echo of the request's `req`.
        req: Option<u64>,
        /// Allocations dropped.
        count: usize,
    },
    /// Reply to `revoke`: allocations ended.
    Revoked {
        /// Echo of the request's `req`.
        req: Option<u64>,
        /// Allocations ended.
        count: usize,
    },
    /// Reply to `unrevoke`.
    Unrevoked {
        /// Echo of the request's `req`.
        req: Option<u64>,
        /// Whether there was such a revocation.
        lifted: bool,
    },
    /// Reply to `list_revocations`.
    Revocations {
        /// Echo of the request's `req`.
        req: Option<u64>,
        /// Each revoked name, with the Unix time it lapses at (`null`: until lifted).
        revocations: Vec<Revocation>,
    },
    /// Reply to `reload`: SIGHUP was raised; the outcome is in the log.
    Reloading {
        /// Echo of the request's `req`.
        req: Option<u64>,
    },
    /// Reply to `drain`: SIGTERM was raised (or the server was draining already).
    Draining {
        /// Echo of the request's `req`.
        req: Option<u64>,
        /// Whether the server was draining already (then nothing was raised).
        already: bool,
    },
    /// A request failed.
    Error {
        /// Echo of the request's `req`, when it could be read.
        req: Option<u64>,
        /// What kind of failure.
        code: ErrorCode,
        /// For people.
        message: String,
    },
}

/// One revocation in `revocations`.
#[derive(Debug, Clone, Serialize)]
pub struct Revocation {
    /// The revoked name.
    pub user: String,
    /// Unix time it lapses at (a REST credential's expiry); `None`: until lifted.
    pub lapses_at: Option<u64>,
}

/// An allocation as events name it. Fields other than `id` are `null` only if the
/// admin plane missed the allocation's creation (it fell behind the event loop).
#[derive(Debug, Clone, Serialize)]
pub struct AllocationRef {
    /// The allocation id (for `drop_allocation`).
    pub id: u64,
    /// The user that created it.
    pub user: Option<String>,
    /// Its realm (tenant).
    pub realm: Option<String>,
    /// The client's transport address.
    pub client: Option<SocketAddr>,
    /// The relayed transport address.
    pub relay: Option<SocketAddr>,
    /// udp, tcp or tls.
    pub transport: Option<&'static str>,
}

/// A count per direction.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PerDirection {
    /// Client to peer.
    pub client_to_peer: u64,
    /// Peer to client.
    pub peer_to_client: u64,
}

/// The body of an `event` message; `event` names the kind.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event")]
pub enum EventBody {
    /// An allocation was created.
    #[serde(rename = "allocation.created")]
    AllocationCreated {
        /// Which.
        #[serde(flatten)]
        allocation: AllocationRef,
        /// Granted lifetime, seconds.
        lifetime_secs: u64,
    },
    /// An allocation was refreshed.
    #[serde(rename = "allocation.refreshed")]
    AllocationRefreshed {
        /// Which.
        #[serde(flatten)]
        allocation: AllocationRef,
        /// New lifetime, seconds.
        lifetime_secs: u64,
    },
    /// The client deleted an allocation (Refresh with lifetime 0) or the server closed
    /// it (an admin action, a closed TCP connection).
    #[serde(rename = "allocation.deleted")]
    AllocationDeleted(Ended),
    /// An allocation expired without a refresh.
    #[serde(rename = "allocation.expired")]
    AllocationExpired(Ended),
    /// A request failed authentication.
    #[serde(rename = "auth.failed")]
    AuthFailed {
        /// The client's transport address.
        client: SocketAddr,
        /// The realm the client tried (left out if the admin plane cannot name it yet).
        #[serde(skip_serializing_if = "Option::is_none")]
        realm: Option<String>,
        /// `no_user`, `bad_integrity`, `stale_nonce`, `expired_credential` or `rate_limited`.
        reason: &'static str,
    },
    /// The relay policy refused a peer.
    #[serde(rename = "policy.denied")]
    PeerDenied {
        /// Which allocation asked.
        #[serde(flatten)]
        allocation: AllocationRef,
        /// The refused peer.
        peer: SocketAddr,
    },
    /// Events of this topic were left out over the last second to keep the stream
    /// bounded (a flood of failed logins, say); `count` says how many.
    #[serde(rename = "suppressed")]
    Suppressed {
        /// Events left out.
        count: u64,
    },
}

/// What `allocation.deleted` and `allocation.expired` say.
#[derive(Debug, Clone, Serialize)]
pub struct Ended {
    /// Which.
    #[serde(flatten)]
    pub allocation: AllocationRef,
    /// `client` (deleted by its client), `closed` (by the server) or `expired`.
    pub reason: &'static str,
    /// Seconds it lived.
    pub duration_secs: f64,
    /// Payload bytes relayed.
    pub bytes: PerDirection,
    /// Datagrams relayed.
    pub packets: PerDirection,
}

/// The envelope of an event.
#[derive(Debug, Clone, Serialize)]
pub struct EventMessage {
    /// Always `event`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Which topic it belongs to.
    pub topic: Topic,
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// The event.
    #[serde(flatten)]
    pub body: EventBody,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ClientMessage, serde_json::Error> {
        serde_json::from_str(s)
    }

    #[test]
    fn client_messages_parse() {
        assert_eq!(
            parse(r#"{"op":"subscribe","topics":["stats","allocations"],"interval_ms":5000,"req":1}"#).unwrap(),
            ClientMessage::Subscribe {
                topics: vec![Topic::Stats, Topic::Allocations],
                interval_ms: Some(5000),
                req: Some(1)
            }
        );
        assert_eq!(
            parse(r#"{"op":"list_allocations"}"#).unwrap(),
            ClientMessage::ListAllocations { realm: None, offset: 0, limit: None, req: None }
        );
        assert_eq!(
            parse(r#"{"op":"drop_user","user":"alice"}"#).unwrap(),
            ClientMessage::DropUser { user: "alice".into(), req: None }
        );
        assert!(parse(r#"{"op":"subscribe","topics":["everything"]}"#).is_err());
        assert!(parse(r#"{"op":"drop_allocation","id":1,"extra":2}"#).is_err());
        assert!(parse(r#"{"op":"reboot"}"#).is_err());
        assert_eq!(parse(r#"{"op":"reload","req":3}"#).unwrap(), ClientMessage::Reload { req: Some(3) });
        assert_eq!(parse(r#"{"op":"drain"}"#).unwrap(), ClientMessage::Drain { req: None });
        assert!(parse(r#"{"op":"drain","now":true}"#).is_err());
    }

    #[test]
    fn server_messages_have_a_type_tag() {
        let m = ServerMessage::Dropped { req: Some(7), count: 2 };
        assert_eq!(serde_json::to_string(&m).unwrap(), r#"{"type":"dropped","req":7,"count":2}"#);
        let m = ServerMessage::Draining { req: None, already: false };
        assert_eq!(serde_json::to_string(&m).unwrap(), r#"{"type":"draining","req":null,"already":false}"#);
        let m = ServerMessage::Reloading { req: Some(1) };
        assert_eq!(serde_json::to_string(&m).unwrap(), r#"{"type":"reloading","req":1}"#);
        let e = EventMessage {
            kind: "event",
            topic: Topic::Auth,
            unix_ms: 5,
            body: EventBody::AuthFailed {
                client: "192.0.2.1:5".parse().unwrap(),
                realm: None,
                reason: "bad_integrity",
            },
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"type":"event","topic":"auth","unix_ms":5,"event":"auth.failed","client":"192.0.2.1:5","reason":"bad_integrity"}"#
        );
    }
}
