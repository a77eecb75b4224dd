//! Restarts under systemd (`systemctl restart turnd`, a package upgrade) without
//! dropping a call: the handover of `turnd upgrade`, through systemd's file
//! descriptor store instead of a socket to a successor.
//!
//! With `FileDescriptorStoreMax=` in the unit (systemd then sets `FDSTORE`), SIGTERM
//! makes turnd freeze its UDP reads, write its state into a sealed memfd and push it
//! and every socket into the store, one `FDSTORE=1` message per descriptor, named
//! `turnd-state` and `turnd-fd-<index>` (the index the state names it by: systemd
//! does not promise the order it hands them back in), then exit at once. The turnd
//! systemd starts next finds them in `LISTEN_FDS`/`LISTEN_FDNAMES`, checks its config
//! against the state, takes over, and removes them from the store (`FDSTOREREMOVE=1`)
//! so that a later restart does not see them again. A config that cannot carry them
//! is logged with the key and the process starts afresh (the old one is gone: there
//! is no one to fall back to, which is what `turnd upgrade` adds). A stop, not a
//! restart, empties the store: the allocations end, without the drain.

use anyhow::{anyhow, bail, Context, Result};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Instant, SystemTime};
use tokio::sync::mpsc;
use turnd::net::{Control, Workers};
use turnd::sys::fdpass;
use turnd::upgrade::state::{self, HandoverState};

/// The state memfd's name in the store.
pub const STATE_NAME: &str = "turnd-state";
/// The prefix of the sockets' names in the store (followed by the state's index).
const FD_PREFIX: &str = "turnd-fd-";

/// Whether the unit has a file descriptor store for turnd.
pub fn enabled() -> bool {
    std::env::var("FDSTORE").ok().and_then(|n| n.parse::<u32>().ok()).is_some_and(|n| n > 0)
        && std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// The old process's side, on SIGTERM: freezes the workers and pushes the state and
/// every socket into the store. Returns the allocations stored; on failure the
/// workers read again and the caller drains as usual.
pub async fn store(
    inventory: &crate::live_upgrade::Inventory,
    control: &mpsc::Sender<Control>,
    workers: &Workers,
    realms: &crate::live_upgrade::Realms,
) -> Result<usize> {
    let frozen_at = SystemTime::now();
    let shares = crate::live_upgrade::freeze(control).await.map_err(|e| anyhow!("{e}"))?;
    let mut names = Vec::new();
    let mut push = || -> Result<usize> {
        let (state, fds) = crate::live_upgrade::build_state(inventory, &shares, frozen_at, workers, realms)?;
        let memfd = fdpass::sealed_memfd("turnd-handover-state", &state.encode())?;
        names.push(STATE_NAME.to_owned());
        fdpass::notify_with_fds(&format!("FDSTORE=1\nFDNAME={STATE_NAME}"), &[memfd.as_raw_fd()])
            .context("pushing the state into the store")?;
        for (index, fd) in fds.iter().enumerate() {
            let name = format!("{FD_PREFIX}{index}");
            names.push(name.clone());
            fdpass::notify_with_fds(&format!("FDSTORE=1\nFDNAME={name}"), &[*fd])
                .context("pushing a socket into the store")?;
        }
        Ok(state.workers.iter().map(|w| w.allocations.len()).sum())
    };
    let pushed = push();
    if pushed.is_err() {
        // What reached the store leaves it again, and this process serves on.
        forget(&names);
        crate::live_upgrade::thaw(control).await;
    }
    pushed
}

/// What a previous turnd left in the store: the state, the sockets in the state's
/// order, and every name (to remove them from the store once taken over).
pub type Stored = (HandoverState, Vec<OwnedFd>, Vec<String>);

/// What a previous turnd left in the store, if systemd passed it to this process.
pub fn stored() -> Option<Result<Stored>> {
    let passed = fdpass::listen_fds_with_names();
    if !passed.iter().any(|(name, _)| name == STATE_NAME) {
        return None;
    }
    let names: Vec<String> = passed.iter().map(|(name, _)| name.clone()).collect();
    Some(read(passed).map(|(state, fds)| (state, fds, names)))
}

fn read(passed: Vec<(String, OwnedFd)>) -> Result<(HandoverState, Vec<OwnedFd>)> {
    let started = Instant::now();
    let mut memfd = None;
    let mut indexed = Vec::new();
    for (name, fd) in passed {
        if name == STATE_NAME {
            memfd = Some(fd);
        } else if let Some(index) = name.strip_prefix(FD_PREFIX).and_then(|i| i.parse::<usize>().ok()) {
            indexed.push((index, fd));
        }
    }
    let memfd = memfd.ok_or_else(|| anyhow!("no state in the store"))?;
    let bytes = fdpass::read_sealed_memfd(memfd, state::MAX_STATE_BYTES)?;
    let state = HandoverState::decode(&bytes)?;
    let wanted = state.descriptor_count();
    indexed.sort_by_key(|(index, _)| *index);
    if indexed.len() != wanted || indexed.iter().enumerate().any(|(i, (index, _))| i != *index) {
        bail!(
            "the store holds {} of the state's {wanted} sockets (is FileDescriptorStoreMax= large enough?)",
            indexed.len()
        );
    }
    tracing::debug!(sockets = wanted, took_us = started.elapsed().as_micros() as u64, "read the stored state");
    Ok((state, indexed.into_iter().map(|(_, fd)| fd).collect()))
}

/// Removes what this process took over from the store.
pub fn forget(names: &[String]) {
    let mut unique: Vec<&String> = names.iter().collect();
    unique.sort();
    unique.dedup();
    for name in unique {
        let _ = fdpass::notify_with_fds(&format!("FDSTOREREMOVE=1\nFDNAME={name}"), &[]);
    }
}
