//! Live upgrade: a running turnd hands its UDP allocations, their relay sockets, its
//! listeners and its secrets to a new process, which carries on relaying on the same
//! ports (`turnd upgrade`, SIGUSR2). [`state`] is the versioned state format,
//! [`protocol`] the conversation on the inherited socket; the process side is in the
//! binary (`src/upgrade.rs`), the workers' side in [`crate::net::upgrade`].

pub mod compat;
pub mod counters;
pub mod protocol;
pub mod state;
