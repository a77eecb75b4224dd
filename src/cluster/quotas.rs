//! Per-user allocation counts shared through Redis, so `allocations-per-user` holds
//! across the fleet: each node publishes its own counts (a hash `PREFIX:users:ID`,
//! expiring with its registry entry) and folds the other live nodes' counts into its
//! ledger. Counts are eventually consistent: at most about one publish interval old,
//! so two nodes admitting the same user in the same interval can each let one
//! allocation past the quota.

use crate::turn::tenant::{TenantId, UserKey};
use crate::turn::user_bandwidth::RemoteRate;
use std::collections::HashMap;

/// The largest count accepted from Redis for one user on one node.
pub const MAX_COUNT: usize = 1_000_000;
/// The longest realm and username accepted in a field (STUN's limits, with room).
const MAX_REALM: usize = 763;
const MAX_USER: usize = 512;

/// The hash field of a user: `LEN:REALM` then the username, where LEN is the realm's
/// length in bytes (realms are shared by name: tenant ids are a node's own).
pub fn field(realm: &str, user: &str) -> String {
    format!("{}:{realm}{user}", realm.len())
}

/// The realm and username of a field, if it is well formed.
pub fn parse_field(field: &[u8]) -> Option<(&str, &str)> {
    let text = std::str::from_utf8(field).ok()?;
    let (len, rest) = text.split_once(':')?;
    let len: usize = len.parse().ok()?;
    if len > MAX_REALM || !rest.is_char_boundary(len.min(rest.len())) || len > rest.len() {
        return None;
    }
    let (realm, user) = rest.split_at(len);
    (!user.is_empty() && user.len() <= MAX_USER).then_some((realm, user))
}

/// A count as stored: decimal, at most [`MAX_COUNT`].
pub fn parse_count(value: &[u8]) -> Option<usize> {
    let n: usize = std::str::from_utf8(value).ok()?.parse().ok()?;
    (n <= MAX_COUNT).then_some(n)
}

/// The largest rate accepted from Redis for one user on one node, bytes/s (8 Tbit/s).
pub const MAX_RATE: u64 = 1_000_000_000_000;

/// Sums the other nodes' rate hashes (`PREFIX:rates:ID`: the same fields as the counts,
/// decimal bytes/s) into per-user rates and node counts for this node's tenants; at
/// most `max_users` users. Returns them and how many fields were ignored.
pub fn sum_rates(
    hashes: impl IntoIterator<Item = HashMap<Vec<u8>, Vec<u8>>>,
    realms: &HashMap<String, TenantId>,
    max_users: usize,
) -> (HashMap<UserKey, RemoteRate>, usize) {
    let mut rates: HashMap<UserKey, RemoteRate> = HashMap::new();
    let mut bad = 0;
    for hash in hashes {
        for (f, v) in hash {
            let rate = std::str::from_utf8(&v).ok().and_then(|v| v.parse::<u64>().ok()).filter(|&r| r <= MAX_RATE);
            let Some(((realm, user), rate)) = parse_field(&f).zip(rate) else {
                bad += 1;
                continue;
            };
            let Some(&tenant) = realms.get(realm) else { continue };
            let key = UserKey::new(tenant, user);
            if !rates.contains_key(&key) && rates.len() >= max_users {
                bad += 1;
                continue;
            }
            let total = rates.entry(key).or_default();
            total.bytes_per_second = total.bytes_per_second.saturating_add(rate);
            total.nodes = total.nodes.saturating_add(1);
        }
    }
    (rates, bad)
}

/// Sums the other nodes' hashes into per-user counts for this node's tenants
/// (`realms`: tenant id by realm); at most `max_users` users. Returns the counts and
/// how many fields were ignored (malformed, unknown realm, past the bound).
pub fn sum_remote(
    hashes: impl IntoIterator<Item = HashMap<Vec<u8>, Vec<u8>>>,
    realms: &HashMap<String, TenantId>,
    max_users: usize,
) -> (HashMap<UserKey, usize>, usize) {
    let mut counts: HashMap<UserKey, usize> = HashMap::new();
    let mut bad = 0;
    for hash in hashes {
        for (f, v) in hash {
            let parsed = parse_field(&f).zip(parse_count(&v));
            let Some(((realm, user), n)) = parsed else {
                bad += 1;
                continue;
            };
            let Some(&tenant) = realms.get(realm) else {
                continue; // a realm this node does not serve: nothing to count against
            };
            let key = UserKey::new(tenant, user);
            if let Some(total) = counts.get_mut(&key) {
                *total = total.saturating_add(n);
            } else if counts.len() < max_users {
                counts.insert(key, n);
            } else {
                bad += 1;
            }
        }
    }
    (counts, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_summed_per_user_with_their_node_count_and_bad_ones_skipped() {
        let realms: HashMap<String, TenantId> = [("example.org".to_owned(), TenantId::DEFAULT)].into();
        let f = field("example.org", "carol").into_bytes();
        let b: HashMap<Vec<u8>, Vec<u8>> = [(f.clone(), b"1000".to_vec()), (b"junk".to_vec(), b"1".to_vec())].into();
        let c: HashMap<Vec<u8>, Vec<u8>> =
            [(f.clone(), b"500".to_vec()), (field("other.org", "carol").into_bytes(), b"9".to_vec())].into();
        let d: HashMap<Vec<u8>, Vec<u8>> = [(f, b"99999999999999".to_vec())].into();
        let (rates, bad) = sum_rates([b, c, d], &realms, 10);
        let carol = UserKey::new(TenantId::DEFAULT, "carol");
        assert_eq!(rates.get(&carol), Some(&RemoteRate { bytes_per_second: 1500, nodes: 2 }));
        assert_eq!((rates.len(), bad), (1, 2));
    }

    #[test]
    fn fields_round_trip_and_malformed_ones_are_refused() {
        let f = field("example.org", "1700000000:alice");
        assert_eq!(f, "11:example.org1700000000:alice");
        assert_eq!(parse_field(f.as_bytes()), Some(("example.org", "1700000000:alice")));
        for bad in [&b"x:example"[..], b"99:short", b"3:abc", b"", b"5", &[0xff, b':', b'a']] {
            assert_eq!(parse_field(bad), None, "{bad:?}");
        }
        assert_eq!(parse_count(b"12"), Some(12));
        assert_eq!(parse_count(b"-1"), None);
        assert_eq!(parse_count(b"99999999"), None);
    }

    #[test]
    fn nodes_counts_add_up_per_user_of_known_realms() {
        let realms: HashMap<String, TenantId> = [("a.org".to_owned(), TenantId(0))].into();
        let node = |pairs: &[(&str, &str)]| -> HashMap<Vec<u8>, Vec<u8>> {
            pairs.iter().map(|(f, v)| (f.as_bytes().to_vec(), v.as_bytes().to_vec())).collect()
        };
        let b = node(&[("5:a.orgalice", "2"), ("5:b.orgalice", "9"), ("junk", "1")]);
        let c = node(&[("5:a.orgalice", "1"), ("5:a.orgbob", "x")]);
        let (counts, bad) = sum_remote([b, c], &realms, 10);
        assert_eq!(counts.get(&UserKey::new(TenantId(0), "alice")), Some(&3));
        assert_eq!((counts.len(), bad), (1, 2));
    }
}
