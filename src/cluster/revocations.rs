//! The fleet's shared revocation list: a Redis set (`PREFIX:revoked`) merged with
//! each node's own list once per publish interval and whenever a change is pushed
//! (below), so a revoke (or a lift) on any node holds on every node within
//! milliseconds, and within about one interval for a node that missed the push.
//!
//! The merge is three-way, against what the last sync left on both sides: a name new
//! on one side is added to the other; a name gone from one side (lifted, or a REST
//! credential's revocation that lapsed) is removed from the other. So a node that
//! restarts (its list is in memory only) takes the fleet's list back and lifts nothing.
//!
//! Changes are also pushed: a sync that writes to the set publishes what it wrote on
//! the channel `PREFIX:revocations` ([`Pushed`], one message per name), and every node
//! subscribed to it runs its own sync as soon as one arrives, so a revoke holds on
//! every node within a Redis round trip or two rather than an interval. The message
//! only wakes the receiver: the set stays the truth, and the three-way merge the only
//! writer of the sync base, so a push and the periodic merge cannot disagree; a node
//! that missed a message converges at its next interval.

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

/// The longest message accepted on the channel: the verb, a node id, a name.
pub const MAX_MESSAGE: usize = "revoke ".len() + crate::config::MAX_NODE_ID + 1 + MAX_NAME;

/// What a pushed message says happened to a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The name was added to the set (revoked).
    Revoke,
    /// The name was removed from the set (lifted).
    Lift,
}

impl Change {
    fn verb(self) -> &'static str {
        match self {
            Change::Revoke => "revoke",
            Change::Lift => "lift",
        }
    }
}

/// One message on `PREFIX:revocations`: `revoke NODE NAME` or `lift NODE NAME` (the
/// name is the rest of the message, so it may hold spaces). Sent after the set was
/// written, so a receiver's sync reads the change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// Revoked or lifted.
    pub change: Change,
    /// The node that wrote the change (a node ignores its own messages).
    pub node: String,
    /// The user or REST username.
    pub name: String,
}

impl Pushed {
    /// The message's text.
    pub fn encode(change: Change, node: &str, name: &str) -> String {
        format!("{} {node} {name}", change.verb())
    }

    /// Parses a message from the channel (anyone who can reach Redis may publish on
    /// it): at most [`MAX_MESSAGE`] bytes of UTF-8, a known verb, a valid node id and
    /// a name as [`valid_names`] takes them.
    pub fn parse(payload: &[u8]) -> Result<Pushed, BadMessage> {
        if payload.len() > MAX_MESSAGE {
            return Err(BadMessage::TooLong);
        }
        let text = std::str::from_utf8(payload).map_err(|_| BadMessage::NotText)?;
        let (verb, rest) = text.split_once(' ').ok_or(BadMessage::Shape)?;
        let (node, name) = rest.split_once(' ').ok_or(BadMessage::Shape)?;
        let change = match verb {
            "revoke" => Change::Revoke,
            "lift" => Change::Lift,
            _ => return Err(BadMessage::Verb),
        };
        if !crate::config::is_node_id(node) {
            return Err(BadMessage::Node);
        }
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(BadMessage::Name);
        }
        Ok(Pushed { change, node: node.to_owned(), name: name.to_owned() })
    }
}

/// Why a message on the channel was ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadMessage {
    /// Longer than [`MAX_MESSAGE`].
    #[error("longer than {MAX_MESSAGE} bytes")]
    TooLong,
    /// Not UTF-8.
    #[error("not UTF-8")]
    NotText,
    /// Not `VERB NODE NAME`.
    #[error("not `revoke|lift NODE NAME`")]
    Shape,
    /// Neither `revoke` nor `lift`.
    #[error("unknown verb")]
    Verb,
    /// Not a node id.
    #[error("not a node id")]
    Node,
    /// An empty or over-long name.
    #[error("empty or over-long name")]
    Name,
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

    #[test]
    fn pushed_messages_round_trip_and_names_may_hold_spaces() {
        for (change, name) in [(Change::Revoke, "alice"), (Change::Lift, "1700000000:bob smith")] {
            let text = Pushed::encode(change, "node-a.1", name);
            let parsed = Pushed::parse(text.as_bytes());
            assert_eq!(parsed, Ok(Pushed { change, node: "node-a.1".into(), name: name.into() }), "{text}");
        }
        let longest = Pushed::encode(Change::Revoke, &"n".repeat(crate::config::MAX_NODE_ID), &"x".repeat(MAX_NAME));
        assert!(Pushed::parse(longest.as_bytes()).is_ok(), "the longest valid message fits MAX_MESSAGE");
    }

    #[test]
    fn bad_pushed_messages_are_refused_with_their_reason() {
        let long_name = format!("revoke a {}", "x".repeat(MAX_NAME + 1));
        let too_long = format!("revoke a {}", "x".repeat(MAX_MESSAGE));
        let cases: [(&[u8], BadMessage); 10] = [
            (b"", BadMessage::Shape),
            (b"revoke", BadMessage::Shape),
            (b"revoke alice", BadMessage::Shape),
            (b"ban a alice", BadMessage::Verb),
            (b"REVOKE a alice", BadMessage::Verb),
            (b"revoke a/b alice", BadMessage::Node),
            (b"revoke a ", BadMessage::Name),
            (b"lift a \xff\xfe", BadMessage::NotText),
            (long_name.as_bytes(), BadMessage::Name),
            (too_long.as_bytes(), BadMessage::TooLong),
        ];
        for (payload, why) in cases {
            assert_eq!(Pushed::parse(payload), Err(why), "{}", String::from_utf8_lossy(payload));
        }
    }
}
