//! The handover state: what a running turnd gives its successor in a live upgrade,
//! besides the sockets themselves. Plain data with a version number, written as JSON
//! into a sealed memfd (never a file: it holds the nonce secret and the users' keys).
//!
//! Compatibility rule: a release reads its own version and every earlier one still
//! listed in [`SUPPORTED`]; a state from a newer release is refused with an error that
//! says so, and the old process keeps serving. Fields are never renamed or given new
//! meanings within a version; a new optional field may be added with
//! `#[serde(default)]`, anything else needs a new version and a conversion.
//!
//! Descriptors are not in the JSON: each socket is named by its index in the list of
//! descriptors that travels with the state (SCM_RIGHTS), see [`super::protocol`].

use crate::turn::allocation::{AllocationState, ChannelState, RelayAddr, Traffic};
use crate::turn::auth::Key;
use crate::turn::{AllocationId, ClientAddr, FiveTuple, TenantId, Transport};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use stun_codec::TransactionId;

/// The version this release writes.
pub const VERSION: u32 = 1;
/// The versions this release reads.
pub const SUPPORTED: &[u32] = &[1];
/// The largest state read (about 1.5 KB per allocation: room for 100 000).
pub const MAX_STATE_BYTES: u64 = 160 << 20;

/// Why a state cannot be taken over.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Written by a newer turnd than this one.
    #[error(
        "handover state version {found} is newer than this turnd reads (versions {supported:?}): upgrade, do not downgrade, across a live handover"
    )]
    UnknownVersion {
        /// The version found.
        found: u32,
        /// What this release reads.
        supported: &'static [u32],
    },
    /// Not a state at all, or damaged.
    #[error("handover state cannot be decoded: {0}")]
    Malformed(String),
    /// A field that decodes but makes no sense (a key of the wrong size...).
    #[error("handover state is invalid: {0}")]
    Invalid(String),
}

/// The whole state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoverState {
    /// The format version ([`VERSION`] when written by this release).
    pub version: u32,
    /// What belongs to the process as a whole.
    pub process: ProcessState,
    /// One entry per worker, in worker order: the successor's worker `i` takes entry `i`.
    pub workers: Vec<WorkerState>,
}

/// What belongs to the process, not to one worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessState {
    /// The nonce secret (hex), which also keys RFC 8016 mobility tickets: outstanding
    /// nonces and tickets stay valid across the handover.
    pub nonce_secret: Hex,
    /// How long before the export the nonce epoch was, in ms (nonce and ticket expiries
    /// count from it).
    pub nonce_epoch_age_ms: u64,
    /// Wall-clock time of the freeze (µs since the Unix epoch), to measure the gap.
    pub frozen_at_unix_us: u64,
    /// RESERVATION-TOKENs held (RFC 8656 §7.2).
    pub reservations: Vec<ReservationState>,
    /// The port `--port 0` resolved to in the predecessor, so that the successor's
    /// overrides resolve to the same one.
    pub port_override: Option<u16>,
    /// TCP and TLS listeners: the successor accepts every new connection.
    pub stream_listeners: Vec<StreamListenerState>,
    /// The admin listener's descriptor, when there is one.
    pub admin_fd: Option<usize>,
}

/// One TCP or TLS listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamListenerState {
    /// "tcp" or "tls".
    pub transport: String,
    /// Its bound address.
    pub address: SocketAddr,
    /// Index of its descriptor.
    pub fd: usize,
}

/// A RESERVATION-TOKEN and the port it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationState {
    /// The token.
    pub token: u64,
    /// The reserved port.
    pub port: u16,
    /// Time left, in ms.
    pub remaining_ms: u64,
    /// The user it counts against.
    pub user: String,
    /// The user's tenant by realm (`None`: the default tenant). Realms, not the
    /// process's tenant numbers, cross: the successor numbers its tenants itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
    /// The source (masked client address) it counts against.
    pub source: IpAddr,
}

/// One worker's share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerState {
    /// Its UDP listener sockets (one of each SO_REUSEPORT group): the kernel keeps
    /// sending the same clients to them, so they go to the same worker index.
    pub listeners: Vec<ListenerState>,
    /// Its UDP allocations.
    pub allocations: Vec<AllocationV1>,
    /// Its counters (`turn::stats::Stats` as JSON), added to the successor's. Added
    /// after v1's first sample, so optional; kept as a JSON value so a successor whose
    /// counters changed shape starts them at zero instead of refusing the handover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<serde_json::Value>,
}

/// A UDP listener socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerState {
    /// Its bound address.
    pub address: SocketAddr,
    /// Index of its descriptor.
    pub fd: usize,
}

/// One allocation, version 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationV1 {
    /// Its id.
    pub id: u64,
    /// The client's address.
    pub client: SocketAddr,
    /// The server address the client sends to.
    pub server: SocketAddr,
    /// The user.
    pub username: String,
    /// The tenant by realm (`None`: the default tenant; absent in states written
    /// before tenants, which all are the default tenant's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
    /// The key (hex) later requests are checked with.
    pub key: Hex,
    /// Its relays, IPv4 first.
    pub relays: Vec<RelayV1>,
    /// Age in ms.
    pub age_ms: u64,
    /// Time left in ms.
    pub remaining_ms: u64,
    /// The Allocate's transaction id (hex, 12 bytes).
    pub transaction_id: Hex,
    /// Traffic so far: to peer (packets, bytes), to client (packets, bytes).
    pub traffic: [u64; 4],
    /// RFC 8016 mobility granted.
    pub mobile: bool,
    /// Moves so far.
    pub moves: u16,
    /// The webhook's bandwidth cap for the user.
    pub user_bandwidth: Option<u32>,
    /// Permissions: peer IP and ms left.
    pub permissions: Vec<(IpAddr, u64)>,
    /// Channel bindings.
    pub channels: Vec<ChannelV1>,
}

/// A relay socket of an allocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayV1 {
    /// Its bound address.
    pub bound: SocketAddr,
    /// The address told to the client.
    pub advertised: SocketAddr,
    /// Index of its descriptor.
    pub fd: usize,
}

/// A channel binding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelV1 {
    /// The channel number.
    pub number: u16,
    /// The peer.
    pub peer: SocketAddr,
    /// ms left.
    pub remaining_ms: u64,
    /// The peer is an address of this host.
    pub to_host: bool,
}

/// Bytes written as lowercase hex.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Hex(pub String);

impl std::fmt::Debug for Hex {
    // Keys and secrets are hex too: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hex({} chars)", self.0.len())
    }
}

impl Hex {
    /// `bytes` as hex.
    pub fn of(bytes: &[u8]) -> Hex {
        Hex(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The bytes, or an error naming `what`.
    pub fn bytes(&self, what: &str) -> Result<Vec<u8>, StateError> {
        let s = self.0.as_bytes();
        if s.len() % 2 != 0 {
            return Err(StateError::Invalid(format!("{what}: odd hex length")));
        }
        s.chunks(2)
            .map(|pair| {
                std::str::from_utf8(pair)
                    .ok()
                    .and_then(|p| u8::from_str_radix(p, 16).ok())
                    .ok_or_else(|| StateError::Invalid(format!("{what}: not hex")))
            })
            .collect()
    }
}

impl HandoverState {
    /// The state as written into the memfd.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain structs of strings and numbers into a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a state: the version is checked first, so a newer release's state is
    /// refused as such rather than as malformed.
    pub fn decode(bytes: &[u8]) -> Result<HandoverState, StateError> {
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        let versioned: Versioned =
            serde_json::from_slice(bytes).map_err(|e| StateError::Malformed(format!("no version field: {e}")))?;
        if !SUPPORTED.contains(&versioned.version) {
            return Err(StateError::UnknownVersion { found: versioned.version, supported: SUPPORTED });
        }
        serde_json::from_slice(bytes).map_err(|e| StateError::Malformed(e.to_string()))
    }

    /// Every descriptor index the state names, with what it is for (each must be
    /// among the descriptors received, and named once).
    pub fn descriptor_count(&self) -> usize {
        let process = self.process.stream_listeners.len() + usize::from(self.process.admin_fd.is_some());
        let workers: usize = self
            .workers
            .iter()
            .map(|w| w.listeners.len() + w.allocations.iter().map(|a| a.relays.len()).sum::<usize>())
            .sum();
        process + workers
    }
}

impl AllocationV1 {
    /// An exported allocation, its relay sockets at descriptor indices `fds` (by
    /// family, as in [`AllocationState::relays`]), its tenant's realm `realm` (`None`
    /// for the default tenant).
    pub fn from_state(state: &AllocationState, fds: [Option<usize>; 2], realm: Option<String>) -> AllocationV1 {
        let traffic = state.traffic;
        AllocationV1 {
            id: state.id.0,
            client: state.five_tuple.client.get(),
            server: state.five_tuple.server,
            username: state.username.to_string(),
            realm,
            key: Hex::of(state.key.as_bytes()),
            relays: state
                .relays
                .iter()
                .zip(fds)
                .filter_map(|(relay, fd)| {
                    let (relay, fd) = (relay.as_ref()?, fd?);
                    Some(RelayV1 { bound: relay.bound, advertised: relay.advertised, fd })
                })
                .collect(),
            age_ms: millis(state.age),
            remaining_ms: millis(state.remaining),
            transaction_id: Hex::of(state.transaction_id.as_bytes()),
            traffic: [
                traffic.to_peer_packets,
                traffic.to_peer_bytes,
                traffic.to_client_packets,
                traffic.to_client_bytes,
            ],
            mobile: state.mobile,
            moves: state.moves,
            user_bandwidth: state.user_bandwidth,
            permissions: state.permissions.iter().map(|&(ip, left)| (ip, millis(left))).collect(),
            channels: state
                .channels
                .iter()
                .map(|c| ChannelV1 {
                    number: c.number,
                    peer: c.peer,
                    remaining_ms: millis(c.remaining),
                    to_host: c.to_host,
                })
                .collect(),
        }
    }

    /// The core's view of it in tenant `tenant` (the successor's id for
    /// [`AllocationV1::realm`]), and the descriptor index of each relay by family.
    pub fn to_state(&self, tenant: TenantId) -> Result<(AllocationState, [Option<usize>; 2]), StateError> {
        use crate::turn::allocation::Family;
        let key = self.key.bytes("key")?;
        if key.is_empty() || key.len() > 32 {
            return Err(StateError::Invalid(format!("allocation {}: a key of {} bytes", self.id, key.len())));
        }
        let transaction: [u8; 12] = self
            .transaction_id
            .bytes("transaction_id")?
            .try_into()
            .map_err(|_| StateError::Invalid(format!("allocation {}: transaction id is not 12 bytes", self.id)))?;
        let mut relays = [None, None];
        let mut fds = [None, None];
        for relay in &self.relays {
            let family = Family::of(relay.bound.ip()) as usize;
            if relays[family].is_some() {
                return Err(StateError::Invalid(format!("allocation {}: two relays of one family", self.id)));
            }
            relays[family] = Some(RelayAddr { bound: relay.bound, advertised: relay.advertised });
            fds[family] = Some(relay.fd);
        }
        let [to_peer_packets, to_peer_bytes, to_client_packets, to_client_bytes] = self.traffic;
        let state = AllocationState {
            id: AllocationId(self.id),
            five_tuple: FiveTuple {
                transport: Transport::Udp,
                client: ClientAddr::new(self.client),
                server: self.server,
                tenant,
            },
            username: self.username.as_str().into(),
            key: Key::new(&key),
            relays,
            age: Duration::from_millis(self.age_ms),
            remaining: Duration::from_millis(self.remaining_ms),
            transaction_id: TransactionId::new(transaction),
            traffic: Traffic { to_peer_packets, to_peer_bytes, to_client_packets, to_client_bytes },
            tcp: false,
            user_bandwidth: self.user_bandwidth,
            mobile: self.mobile,
            moves: self.moves,
            permissions: self.permissions.iter().map(|&(ip, ms)| (ip, Duration::from_millis(ms))).collect(),
            channels: self
                .channels
                .iter()
                .map(|c| ChannelState {
                    number: c.number,
                    peer: c.peer,
                    remaining: Duration::from_millis(c.remaining_ms),
                    to_host: c.to_host,
                })
                .collect(),
        };
        Ok((state, fds))
    }
}

/// A duration in whole milliseconds (saturating).
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v1 state as this release writes it. Kept byte for byte: the next release must
    /// still decode it (a live upgrade goes from this release to that one).
    const GOLDEN_V1: &str = include_str!("golden_v1.json");

    fn sample_allocation() -> AllocationState {
        AllocationState {
            id: AllocationId(42),
            five_tuple: FiveTuple {
                transport: Transport::Udp,
                client: ClientAddr::new("192.0.2.10:50000".parse().unwrap()),
                server: "198.51.100.1:3478".parse().unwrap(),
                tenant: TenantId::DEFAULT,
            },
            username: "alice".into(),
            key: Key::new(&[0xab; 16]),
            relays: [
                Some(RelayAddr {
                    bound: "198.51.100.1:49160".parse().unwrap(),
                    advertised: "203.0.113.1:49160".parse().unwrap(),
                }),
                None,
            ],
            age: Duration::from_millis(61_000),
            remaining: Duration::from_millis(539_000),
            transaction_id: TransactionId::new([1; 12]),
            traffic: Traffic { to_peer_packets: 10, to_peer_bytes: 1000, to_client_packets: 20, to_client_bytes: 2000 },
            tcp: false,
            user_bandwidth: Some(125_000),
            mobile: true,
            moves: 2,
            permissions: vec![("192.0.2.99".parse().unwrap(), Duration::from_millis(299_000))],
            channels: vec![ChannelState {
                number: 0x4000,
                peer: "192.0.2.99:40000".parse().unwrap(),
                remaining: Duration::from_millis(599_000),
                to_host: false,
            }],
        }
    }

    fn sample() -> HandoverState {
        HandoverState {
            version: VERSION,
            process: ProcessState {
                nonce_secret: Hex::of(&[7; 32]),
                nonce_epoch_age_ms: 3_600_000,
                frozen_at_unix_us: 1_796_000_000_000_000,
                reservations: vec![ReservationState {
                    token: 0x1122_3344_5566_7788,
                    port: 49161,
                    remaining_ms: 29_000,
                    user: "alice".into(),
                    realm: None,
                    source: "192.0.2.10".parse().unwrap(),
                }],
                port_override: None,
                stream_listeners: vec![StreamListenerState {
                    transport: "tcp".into(),
                    address: "198.51.100.1:3478".parse().unwrap(),
                    fd: 0,
                }],
                admin_fd: Some(1),
            },
            workers: vec![WorkerState {
                listeners: vec![ListenerState { address: "198.51.100.1:3478".parse().unwrap(), fd: 2 }],
                allocations: vec![AllocationV1::from_state(&sample_allocation(), [Some(3), None], None)],
                // The golden sample predates counters: a state without them decodes.
                stats: None,
            }],
        }
    }

    #[test]
    fn a_state_round_trips_and_its_allocations_convert_back_unchanged() {
        let state = sample();
        let decoded = HandoverState::decode(&state.encode()).unwrap();
        assert_eq!(decoded, state);
        let (allocation, fds) = decoded.workers[0].allocations[0].to_state(TenantId::DEFAULT).unwrap();
        assert_eq!(allocation, sample_allocation());
        assert_eq!(fds, [Some(3), None]);
        assert_eq!(decoded.descriptor_count(), 4);
    }

    #[test]
    fn a_tenants_allocation_crosses_by_realm_and_takes_the_successors_tenant_number() {
        let mut state = sample_allocation();
        state.five_tuple.tenant = TenantId(2);
        let wire = AllocationV1::from_state(&state, [Some(0), None], Some("b.example".into()));
        let decoded: AllocationV1 = serde_json::from_slice(&serde_json::to_vec(&wire).unwrap()).unwrap();
        assert_eq!(decoded.realm.as_deref(), Some("b.example"));
        // The successor numbered that realm 5.
        let (moved, _) = decoded.to_state(TenantId(5)).unwrap();
        assert_eq!(moved.five_tuple.tenant, TenantId(5));
        assert_eq!(moved.username, state.username);
    }

    #[test]
    fn a_state_from_a_newer_release_is_refused_as_such() {
        let mut state = sample();
        state.version = VERSION + 1;
        let error = HandoverState::decode(&state.encode()).unwrap_err();
        assert!(matches!(error, StateError::UnknownVersion { found, .. } if found == VERSION + 1));
        assert!(error.to_string().contains("newer than this turnd reads"), "{error}");
    }

    #[test]
    fn something_that_is_not_a_state_is_malformed() {
        assert!(matches!(HandoverState::decode(b"not json"), Err(StateError::Malformed(_))));
        assert!(matches!(HandoverState::decode(br#"{"version":1}"#), Err(StateError::Malformed(_))));
    }

    #[test]
    fn the_golden_v1_sample_decodes() {
        let decoded = HandoverState::decode(GOLDEN_V1.as_bytes()).unwrap();
        assert_eq!(decoded, sample());
    }

    #[test]
    fn a_workers_counters_round_trip_as_json() {
        let mut stats = crate::turn::stats::Stats { allocations_created: 7, ..Default::default() };
        stats.dropped[0] = 3;
        let mut state = sample();
        state.workers[0].stats = serde_json::to_value(stats).ok();
        let decoded = HandoverState::decode(&state.encode()).unwrap();
        let back: crate::turn::stats::Stats =
            serde_json::from_value(decoded.workers[0].stats.clone().unwrap()).unwrap();
        assert_eq!(back, stats);
    }

    #[test]
    fn a_bad_key_or_transaction_id_is_invalid_not_a_panic() {
        let mut allocation = sample().workers[0].allocations[0].clone();
        allocation.key = Hex("zz".into());
        assert!(matches!(allocation.to_state(TenantId::DEFAULT), Err(StateError::Invalid(_))));
        allocation.key = Hex::of(&[1; 33]);
        assert!(matches!(allocation.to_state(TenantId::DEFAULT), Err(StateError::Invalid(_))));
        allocation.key = Hex::of(&[1; 16]);
        allocation.transaction_id = Hex::of(&[1; 11]);
        assert!(matches!(allocation.to_state(TenantId::DEFAULT), Err(StateError::Invalid(_))));
    }

    #[test]
    fn secrets_are_not_in_debug_output() {
        let printed = format!("{:?}", sample());
        assert!(!printed.contains(&Hex::of(&[7; 32]).0));
        assert!(!printed.contains(&Hex::of(&[0xab; 16]).0));
    }
}
