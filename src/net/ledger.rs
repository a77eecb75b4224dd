//! The one thing the workers share: the core's [`Ledger`], behind a mutex the shell
//! owns. The core never locks it; the shell locks it for each entry point that takes
//! `&mut Ledger` (control-plane paths only) and for the port figures it publishes.

use crate::turn::ledger::Ledger;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// The ledger as the workers share it: the shell owns it, and locks it for each core
/// entry point that takes it (control-plane paths only).
pub type SharedLedger = Arc<Mutex<Ledger>>;

/// Locks the ledger. A worker that panicked while holding the lock leaves at worst a
/// count off by one allocation (no ledger method panics half-way); refusing service on
/// every other worker because of it would be worse, so poisoning is ignored.
pub fn lock(ledger: &SharedLedger) -> MutexGuard<'_, Ledger> {
    ledger.lock().unwrap_or_else(PoisonError::into_inner)
}
