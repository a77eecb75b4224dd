//! `bandwidth-per-user` on one worker, and its share of the cap when the user also
//! relays through other nodes of a fleet.
//!
//! Each user with allocations on the worker has a token bucket and a byte meter. In a
//! fleet the cluster task, once per publish interval, hands the worker the rates the
//! other live nodes published for its users ([`RemoteRate`]) and takes back this
//! worker's measured rates to publish. The worker then holds each such user to
//! [`fleet_share`] of the cap instead of all of it. The facts are eventually
//! consistent (at most about one interval old) and lapse after the registry's TTL,
//! when the whole cap applies again: stale data never throttles a user for long.

use super::rate::Bucket;
use super::tenant::UserKey;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A user's share never drops below the cap divided by this, so rates that are stale
/// or wrong cannot starve them on a node.
pub const FLOOR_DIVISOR: f64 = 10.0;
/// A user is reported (to be published) when relaying at least the cap divided by
/// this: lower rates barely move another node's share, and leaving them out keeps the
/// published entry small. Below [`FLOOR_DIVISOR`]'s floor, so a user held to the
/// floor is still reported.
pub const REPORT_DIVISOR: f64 = 16.0;

/// What the fleet's other nodes relay for one user.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RemoteRate {
    /// Their relayed bytes per second, summed.
    pub bytes_per_second: u64,
    /// How many of them published the user.
    pub nodes: u32,
}

/// The rate this worker allows a user whose cap is `cap` bytes/s, who relayed `local`
/// bytes/s here over the last interval while other nodes relayed `remote` on `nodes`
/// nodes. Under the cap in total, the user may grow into what the others leave;
/// over it, each node scales to its part of the total, but to no less than an equal
/// split (so a node where the user started late catches up instead of staying at the
/// floor). Never below `cap / FLOOR_DIVISOR`, never above `cap`.
pub fn fleet_share(cap: f64, local: f64, remote: f64, nodes: u32) -> f64 {
    if remote <= 0.0 || cap <= 0.0 {
        return cap;
    }
    let share = if local + remote <= cap {
        cap - remote
    } else {
        let proportional = local / (local + remote);
        let equal = 1.0 / (f64::from(nodes) + 1.0);
        cap * proportional.max(equal)
    };
    share.max(cap / FLOOR_DIVISOR).min(cap)
}

/// One user's bucket and meter on this worker.
#[derive(Debug, Clone)]
struct Meter {
    bucket: Bucket,
    /// Bytes relayed (allowed) since the user's first allocation here.
    relayed: u64,
    /// `relayed` at the last measurement.
    measured: u64,
    /// The rate measured then, bytes/s.
    rate: f64,
    /// The cap last charged against.
    cap: u64,
    /// The other nodes' rate for the user, from the last exchange.
    remote: RemoteRate,
}

/// Every capped user's bucket on this worker, and the fleet's facts about them.
#[derive(Debug, Clone, Default)]
pub struct UserBandwidth {
    /// Bounded by the users holding allocations on this worker (an entry goes with
    /// the user's last allocation).
    users: HashMap<UserKey, Meter>,
    /// Until when the other nodes' rates hold; `None`: never set (no fleet).
    remote_until: Option<Instant>,
    /// The last measurement.
    measured_at: Option<Instant>,
}

impl UserBandwidth {
    /// Charges `bytes` to `user`, whose cap is `cap` bytes/s: false when the bucket
    /// (one second's worth of the user's share) is empty.
    pub fn take(&mut self, user: &UserKey, cap: u64, bytes: usize, now: Instant) -> bool {
        let fleet_valid = self.remote_until.is_some_and(|until| now < until);
        let capf = cap as f64;
        let meter = match self.users.get_mut(user) {
            Some(meter) => meter,
            None => self.users.entry(user.clone()).or_insert_with(|| Meter {
                bucket: Bucket::full(capf, now),
                relayed: 0,
                measured: 0,
                rate: 0.0,
                cap,
                remote: RemoteRate::default(),
            }),
        };
        meter.cap = cap;
        let rate = match fleet_valid && meter.remote.nodes > 0 {
            true => fleet_share(capf, meter.rate, meter.remote.bytes_per_second as f64, meter.remote.nodes),
            false => capf,
        };
        if meter.bucket.take(bytes as f64, rate, rate, now) {
            meter.relayed = meter.relayed.saturating_add(bytes as u64);
            true
        } else {
            false
        }
    }

    /// Forgets a user (their last allocation here ended).
    pub fn remove(&mut self, user: &UserKey) {
        self.users.remove(user);
    }

    /// Measures each user's rate since the last call and takes the other nodes' rates
    /// (`remote`, valid for `valid_for`): returns `(user, bytes/s, cap)` for the users
    /// relaying at least `cap / REPORT_DIVISOR` here.
    pub fn exchange(
        &mut self,
        now: Instant,
        remote: &[(UserKey, RemoteRate)],
        valid_for: Duration,
    ) -> Vec<(UserKey, u64, u64)> {
        let elapsed = self.measured_at.map(|at| now.saturating_duration_since(at).as_secs_f64());
        self.measured_at = Some(now);
        self.remote_until = now.checked_add(valid_for);
        let mut report = Vec::new();
        for (user, meter) in &mut self.users {
            let bytes = meter.relayed.saturating_sub(meter.measured);
            meter.measured = meter.relayed;
            meter.rate = match elapsed {
                Some(seconds) if seconds > 0.0 => bytes as f64 / seconds,
                _ => 0.0,
            };
            meter.remote = RemoteRate::default();
            if meter.cap > 0 && meter.rate * REPORT_DIVISOR >= meter.cap as f64 {
                report.push((user.clone(), meter.rate as u64, meter.cap));
            }
        }
        for (user, rate) in remote {
            if let Some(meter) = self.users.get_mut(user) {
                meter.remote = *rate;
            }
        }
        report
    }

    /// Users with a bucket here.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether no user has a bucket here.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::turn::tenant::TenantId;

    const CAP: f64 = 100_000.0;

    #[test]
    fn alone_or_without_facts_a_user_gets_the_whole_cap() {
        assert_eq!(fleet_share(CAP, 80_000.0, 0.0, 0), CAP);
    }

    #[test]
    fn under_the_cap_a_node_may_grow_into_what_the_others_leave() {
        assert_eq!(fleet_share(CAP, 10_000.0, 30_000.0, 1), 70_000.0);
    }

    #[test]
    fn over_the_cap_nodes_scale_to_their_part_but_not_below_an_equal_split() {
        assert_eq!(fleet_share(CAP, 75_000.0, 75_000.0, 1), 50_000.0);
        assert_eq!(fleet_share(CAP, 90_000.0, 30_000.0, 1), 75_000.0);
        assert_eq!(fleet_share(CAP, 30_000.0, 90_000.0, 1), 50_000.0);
        assert_eq!(fleet_share(CAP, 10_000.0, 200_000.0, 3), 25_000.0);
    }

    #[test]
    fn the_floor_holds_whatever_the_others_report() {
        assert_eq!(fleet_share(CAP, 0.0, 1e12, 1000), CAP / FLOOR_DIVISOR);
        assert_eq!(fleet_share(CAP, 0.0, CAP, 1), CAP / FLOOR_DIVISOR);
    }

    /// Two nodes, both pushed far past the cap, each measuring the other one interval
    /// late: the total settles at the cap rather than swinging.
    #[test]
    fn two_saturated_nodes_settle_at_the_cap() {
        let (mut a, mut b) = (CAP, CAP);
        for _ in 0..20 {
            let (next_a, next_b) = (fleet_share(CAP, a, b, 1), fleet_share(CAP, b, a, 1));
            (a, b) = (next_a, next_b);
        }
        assert!((a + b - CAP).abs() < 1.0, "{a} + {b}");
        // One that started late catches up to an equal split.
        let (mut a, mut b) = (CAP * 0.95, CAP * 0.05);
        for _ in 0..30 {
            (a, b) = (fleet_share(CAP, a, b, 1), fleet_share(CAP, b, a, 1));
        }
        assert!((a - b).abs() < CAP * 0.02 && (a + b - CAP).abs() < CAP * 0.02, "{a} {b}");
    }

    #[test]
    fn the_bucket_follows_the_share_and_stale_facts_lapse() {
        let now = Instant::now();
        let user = UserKey::new(TenantId::DEFAULT, "alice");
        let mut bw = UserBandwidth::default();
        let cap = CAP as u64;
        // One second's worth at the full cap, then empty.
        assert!(bw.take(&user, cap, 100_000, now));
        assert!(!bw.take(&user, cap, 1, now));
        let t1 = now + Duration::from_secs(1);
        let report =
            bw.exchange(t1, &[(user.clone(), RemoteRate { bytes_per_second: cap, nodes: 1 })], Duration::from_secs(3));
        assert!(report.is_empty(), "no measurement before the first exchange");
        // The others relay the whole cap: this worker is held to the floor.
        let t2 = t1 + Duration::from_secs(1);
        assert!(bw.take(&user, cap, 10_000, t2));
        assert!(!bw.take(&user, cap, 1_000, t2));
        let report = bw.exchange(t2, &[], Duration::from_secs(3));
        assert_eq!(report, vec![(user.clone(), 10_000, cap)]);
        // Facts past their validity are ignored: the whole cap again.
        let _ =
            bw.exchange(t2, &[(user.clone(), RemoteRate { bytes_per_second: cap, nodes: 1 })], Duration::from_secs(3));
        let late = t2 + Duration::from_secs(4);
        assert!(bw.take(&user, cap, 100_000, late));
        bw.remove(&user);
        assert!(bw.is_empty());
    }
}
