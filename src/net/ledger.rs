//! The one thing the workers share: the core's [`Ledger`], behind a mutex the shell
//! owns. The core never sees the mutex: it runs its ledger operations through
//! [`Shared`], which this file implements by locking for the span of each.

use crate::turn::ledger::{Ledger, Shared};
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

/// The core reaches the ledger through this: the lock is taken for one group of
/// ledger operations at a time (see [`Shared`]).
impl Shared for Mutex<Ledger> {
    fn with<R>(&self, f: impl FnOnce(&mut Ledger) -> R) -> R {
        f(&mut self.lock().unwrap_or_else(PoisonError::into_inner))
    }
}
