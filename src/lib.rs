//! turnd: a STUN/TURN server built around a sans-IO core.
//!
//! - [`stun`]: the wire format (codec, integrity, ChannelData).
//! - [`turn`]: the sans-IO state machine: allocations, permissions, channels, auth.
//! - [`client`]: a sans-IO TURN client (requests, challenges, ChannelData), used by
//!   [`probe`], the integration tests and the load benchmark.
//! - [`net`]: the tokio shell that owns sockets and timers and drives the core.
//! - [`admin`]: the HTTP admin listener (metrics, health, live stats, dashboard).
//! - [`metrics`]: every Prometheus metric, declared in one place.
//! - [`probe`]: `turnd probe URL`, an outside check of a STUN/TURN server after a deploy.
//! - [`sys`]: every `unsafe` system call, behind safe functions (`unsafe_code` is denied
//!   everywhere else).

// The sans-IO modules read no clock, own no socket and take no lock (the list is in
// clippy.toml); their own unit tests may, to set up virtual time and shared ledgers.
#[cfg_attr(not(test), deny(clippy::disallowed_methods, clippy::disallowed_types))]
pub mod client;
#[cfg_attr(not(test), deny(clippy::disallowed_methods, clippy::disallowed_types))]
pub mod stun;
#[cfg_attr(not(test), deny(clippy::disallowed_methods, clippy::disallowed_types))]
pub mod turn;

pub mod admin;
pub mod cluster;
pub mod config;
pub mod metrics;
pub mod net;
pub mod probe;
pub mod sys;
pub mod upgrade;
pub mod usage;
