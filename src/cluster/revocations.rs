//! The fleet's shared revocation list: a Redis set (`PREFIX:revoked`) merged with
//! each node's own list once per publish interval, so a revoke (or a lift) on any
//! node holds on every node within about one interval.
//!
//! The merge is three-way, against what the last sync left on both sides: a name new
//! on one side is added to the other; a name gone from one side (lifted, or a REST
//! credential's revocation that lapsed) is removed from the other. So a node that
//! restarts (its list is in memory only) takes the fleet's list back and lifts nothing.

use crate::turn::revocations::MAX_REVOCATIONS;
use std::collections::BTreeSet;

/// The longest name accepted from Redis (a STUN USERNAME's limit).
pub const MAX_NAME: usize = 512;

/// What one sync does on each side.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncPlan {
    /// Names to add to the Redis set (revoked here).
    pub add_remote: Vec<String>,
    /// Names to remove from the Redis set (lifted here).
    pub remove_remote: Vec<String>,
    /// Names to revoke on this node (revoked elsewhere): their allocations end.
    pub revoke_local: Vec<String>,
    /// Names to lift on this node (lifted elsewhere).
    pub lift_local: Vec<String>,
}

/// The names both sides held after the last sync.
#[derive(Debug, Default)]
pub struct RevocationSync {
    synced: BTreeSet<String>,
}

impl RevocationSync {
    /// The plan that makes `local` and `remote` equal, and the base to [`commit`]
    /// once it is carried out (not before: a sync cut short must not look like a
    /// lift next time). A name in the base stays only while both sides hold it; a
    /// name not in it joins when either side holds it.
    ///
    /// [`commit`]: RevocationSync::commit
    pub fn plan(&self, local: &BTreeSet<String>, remote: &BTreeSet<String>) -> (SyncPlan, BTreeSet<String>) {
        let mut plan = SyncPlan::default();
        let mut merged = BTreeSet::new();
        for name in local.union(remote) {
            let (here, there) = (local.contains(name), remote.contains(name));
            if self.synced.contains(name) {
                match (here, there) {
                    (true, true) => {
                        merged.insert(name.clone());
                    }
                    (true, false) => plan.lift_local.push(name.clone()),
                    (false, true) => plan.remove_remote.push(name.clone()),
                    (false, false) => {}
                }
            } else if merged.len() < MAX_REVOCATIONS {
                if !here {
                    plan.revoke_local.push(name.clone());
                }
                if !there {
                    plan.add_remote.push(name.clone());
                }
                merged.insert(name.clone());
            }
        }
        (plan, merged)
    }

    /// Takes the base a carried-out plan leaves.
    pub fn commit(&mut self, merged: BTreeSet<String>) {
        self.synced = merged;
    }
}

/// The names read from Redis that are usable: non-empty, at most `MAX_NAME` bytes,
/// at most [`MAX_REVOCATIONS`] of them; and how many were not.
pub fn valid_names(raw: Vec<Vec<u8>>) -> (BTreeSet<String>, usize) {
    let total = raw.len();
    let names: BTreeSet<String> = raw
        .into_iter()
        .filter(|n| !n.is_empty() && n.len() <= MAX_NAME)
        .filter_map(|n| String::from_utf8(n).ok())
        .take(MAX_REVOCATIONS)
        .collect();
    let bad = total - names.len();
    (names, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    fn names(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }

    fn step(sync: &mut RevocationSync, local: &[&str], remote: &[&str]) -> SyncPlan {
        let (plan, merged) = sync.plan(&set(local), &set(remote));
        sync.commit(merged);
        plan
    }

    #[test]
    fn new_names_go_both_ways_and_lifts_follow() {
        let mut sync = RevocationSync::default();
        let plan = step(&mut sync, &["alice"], &["bob"]);
        assert_eq!((names(&plan.add_remote), names(&plan.revoke_local)), (vec!["alice"], vec!["bob"]));
        // Both sides now hold both. Alice is lifted here, bob elsewhere.
        let plan = step(&mut sync, &["bob"], &["alice"]);
        assert_eq!((names(&plan.remove_remote), names(&plan.lift_local)), (vec!["alice"], vec!["bob"]));
        assert_eq!(step(&mut sync, &[], &[]), SyncPlan::default());
    }

    #[test]
    fn a_restarted_node_takes_the_fleets_list_and_lifts_nothing() {
        let mut sync = RevocationSync::default();
        let plan = step(&mut sync, &[], &["alice", "bob"]);
        assert_eq!(names(&plan.revoke_local), vec!["alice", "bob"]);
        assert!(plan.remove_remote.is_empty() && plan.lift_local.is_empty());
    }

    #[test]
    fn a_plan_not_committed_changes_nothing() {
        let mut sync = RevocationSync::default();
        step(&mut sync, &["alice"], &["alice"]);
        // The local revoke of bob was cut short: the next sync plans it again.
        let _ = sync.plan(&set(&["alice"]), &set(&["alice", "bob"]));
        let plan = step(&mut sync, &["alice"], &["alice", "bob"]);
        assert_eq!(names(&plan.revoke_local), vec!["bob"]);
        assert!(plan.remove_remote.is_empty());
    }

    #[test]
    fn names_from_redis_are_bounded() {
        let long = vec![b'x'; MAX_NAME + 1];
        let (names, bad) = valid_names(vec![b"alice".to_vec(), Vec::new(), long, vec![0xff, 0xfe]]);
        assert_eq!((names, bad), (set(&["alice"]), 3));
    }
}
