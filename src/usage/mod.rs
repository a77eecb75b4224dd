//! Usage records: one JSON record per ended allocation (user, realm, client and relay
//! addresses, start, end, bytes and packets each way, why it ended), for billing and
//! abuse teams, without a Prometheus label per user.
//!
//! A task of its own takes `AllocationEnded` from the event channel and writes each
//! record to a Redis stream (`PREFIX:usage`, trimmed to about `usage-max-len` entries)
//! when `[cluster]` is configured, and to a JSON-lines file when `[usage] file` is
//! set. Records wait in a bounded queue while a sink is away; past the bound (or
//! when the event channel overflows) they are dropped and counted, never blocking
//! the workers.

mod record;
mod writer;

pub use record::UsageRecord;
pub use writer::{spawn, UsageCounters, UsageSinks, MAX_PENDING};
