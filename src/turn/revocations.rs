//! Revoked users and credentials: an operator's "this one, no more", which must hold
//! at once (its allocations end) and until lifted, across configuration reloads (the
//! list lives beside the configuration, not in it).
//!
//! A revocation names a username. It matches a request's username exactly, and, for a
//! plain name, also the user-id part of TURN REST usernames (`<expiry>:<user id>`), so
//! revoking `alice` refuses every credential minted for her. A revocation of one REST
//! username lapses once that credential's expiry has passed: it is refused as expired
//! from then on anyway, and the list need not keep it.

use std::collections::HashMap;

/// Revocations held at most (each names a username of at most 512 bytes).
pub const MAX_REVOCATIONS: usize = 10_000;

/// Why a revocation was not recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RevokeError {
    /// The name is empty or longer than a STUN USERNAME can be.
    #[error("a username is 1 to 512 bytes")]
    BadName,
    /// [`MAX_REVOCATIONS`] are held already.
    #[error("too many revocations ({MAX_REVOCATIONS} held); lift some first")]
    Full,
}

/// The revoked usernames, with the Unix time each lapses at (`None`: until lifted).
#[derive(Debug, Clone, Default)]
pub struct Revocations {
    names: HashMap<Box<str>, Option<u64>>,
}

impl Revocations {
    /// Revokes `name` (see the module docs for what it matches).
    pub fn revoke(&mut self, name: &str, unix_now: u64) -> Result<(), RevokeError> {
        if name.is_empty() || name.len() > 512 {
            return Err(RevokeError::BadName);
        }
        self.names.retain(|_, lapses| lapses.map_or(true, |t| t > unix_now));
        if self.names.len() >= MAX_REVOCATIONS && !self.names.contains_key(name) {
            return Err(RevokeError::Full);
        }
        self.names.insert(name.into(), rest_expiry(name));
        Ok(())
    }

    /// Lifts the revocation of `name`; false if there was none.
    pub fn lift(&mut self, name: &str) -> bool {
        self.names.remove(name).is_some()
    }

    /// Whether a request by `username` is refused now.
    pub fn refuses(&self, username: &str, unix_now: u64) -> bool {
        if self.names.is_empty() {
            return false;
        }
        let live = |name: &str| self.names.get(name).is_some_and(|lapses| lapses.map_or(true, |t| t > unix_now));
        live(username) || username.split_once(':').is_some_and(|(_, user_id)| live(user_id))
    }

    /// The revocations in force, sorted.
    pub fn list(&self, unix_now: u64) -> Vec<(String, Option<u64>)> {
        let mut all: Vec<_> = self
            .names
            .iter()
            .filter(|(_, lapses)| lapses.map_or(true, |t| t > unix_now))
            .map(|(name, lapses)| (name.to_string(), *lapses))
            .collect();
        all.sort();
        all
    }
}

/// The expiry a TURN REST username carries, if it is one.
fn rest_expiry(name: &str) -> Option<u64> {
    let (expiry, _) = name.split_once(':')?;
    expiry.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn a_plain_name_refuses_the_user_and_every_rest_credential_minted_for_it() {
        let mut r = Revocations::default();
        r.revoke("alice", NOW).unwrap();
        assert!(r.refuses("alice", NOW));
        assert!(r.refuses("1800000600:alice", NOW));
        assert!(!r.refuses("1800000600:alicia", NOW));
        assert!(!r.refuses("bob", NOW));
        assert!(r.lift("alice"));
        assert!(!r.refuses("alice", NOW));
    }

    #[test]
    fn a_rest_credential_revocation_lapses_at_its_expiry() {
        let mut r = Revocations::default();
        r.revoke("1800000600:carol", NOW).unwrap();
        assert!(r.refuses("1800000600:carol", NOW + 599));
        assert!(!r.refuses("1800000900:carol", NOW), "another credential of carol");
        assert!(!r.refuses("1800000600:carol", NOW + 600));
        assert!(r.list(NOW + 600).is_empty());
    }

    #[test]
    fn the_list_is_bounded() {
        let mut r = Revocations::default();
        for i in 0..MAX_REVOCATIONS {
            r.revoke(&format!("user{i}"), NOW).unwrap();
        }
        assert_eq!(r.revoke("one-more", NOW), Err(RevokeError::Full));
        assert_eq!(r.revoke("user7", NOW), Ok(()), "revoking again is fine");
        assert_eq!(r.revoke("", NOW), Err(RevokeError::BadName));
    }
}
