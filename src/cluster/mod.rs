//! The fleet's shell side: a task that publishes this node in a Redis registry and
//! reads the others, then hands the core plain facts (the least-loaded serving node
//! per family, see `turn::fleet`). Redis is never on the request or relay path: the
//! workers only ever see the last facts sent, which hold for one TTL; with Redis gone
//! they lapse and the node serves every Allocate itself until Redis is back.

mod advertise;
mod quotas;
mod registry;
mod revocation_sync;
mod revocations;
mod secrets;
mod status;
mod task;

pub use advertise::advertised;
pub use registry::{choose, parse_entry, Addresses, NodeEntry, NodeState, MAX_ENTRY_BYTES, MAX_NODES};
pub use revocations::{valid_names, RevocationSync, SyncPlan};
pub use secrets::{parse as parse_secrets, Rejected as SecretsRejected, MAX_SECRETS, MAX_SECRET_BYTES};
pub use status::ClusterStatus;
pub use task::{spawn, Settings, SettingsError};
