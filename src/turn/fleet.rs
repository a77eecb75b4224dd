//! The fleet's part of the core: which node a new Allocate is sent to (RFC 8489 §10,
//! 300 Try Alternate) when this node should not take it.
//!
//! The shell's cluster task reads the node registry and hands the core plain facts
//! ([`Alternates`]: the least-loaded serving node per family, and for how long that
//! holds); the core decides per Allocate, with no lock and no wait on the registry.
//! Facts older than their validity are ignored, so a node cut off from the registry
//! serves every Allocate itself rather than naming a node that may be gone.

use super::allocation::Family;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The longest ALTERNATE-DOMAIN accepted (RFC 8489 §14.16: fewer than 128 characters,
/// like SOFTWARE and REALM).
pub const MAX_DOMAIN: usize = 127;

/// When this node turns new Allocates to another (from `[cluster]`); the default
/// turns none away (a single node, or a fleet member that only publishes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedirectPolicy {
    /// Front door: every Allocate goes to another node while one is known.
    pub front: bool,
    /// Allocations on this node (all workers) from which new ones go elsewhere.
    pub max_allocations: Option<usize>,
}

/// The best other node per address family, as the cluster task last saw the registry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Alternates {
    /// The least-loaded serving node's IPv4 address for clients.
    pub v4: Option<SocketAddr>,
    /// The least-loaded serving node's IPv6 address for clients.
    pub v6: Option<SocketAddr>,
    /// The IPv4 node's TLS name, sent as ALTERNATE-DOMAIN to TLS clients sent there.
    pub v4_domain: Option<String>,
    /// The IPv6 node's TLS name, likewise.
    pub v6_domain: Option<String>,
}

impl Alternates {
    /// The node for a client of `family`.
    pub fn of(&self, family: Family) -> Option<SocketAddr> {
        match family {
            Family::V4 => self.v4,
            Family::V6 => self.v6,
        }
    }

    /// The TLS name of the node for a client of `family`.
    pub fn domain_of(&self, family: Family) -> Option<&str> {
        match family {
            Family::V4 => self.v4_domain.as_deref(),
            Family::V6 => self.v6_domain.as_deref(),
        }
    }
}

/// Why an Allocate was sent to another node: the `reason` label of the redirect metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirectReason {
    /// This node is draining.
    Draining,
    /// This node holds `max-allocations` or more.
    Overloaded,
    /// This node is a front door.
    Front,
}

impl RedirectReason {
    /// Every reason, in index order.
    pub const ALL: [RedirectReason; 3] = [RedirectReason::Draining, RedirectReason::Overloaded, RedirectReason::Front];

    /// A metric label value.
    pub fn label(self) -> &'static str {
        match self {
            RedirectReason::Draining => "draining",
            RedirectReason::Overloaded => "overloaded",
            RedirectReason::Front => "front",
        }
    }
}

/// What the core knows of the fleet: the alternates and until when they hold.
#[derive(Debug, Clone, Default)]
pub struct FleetView {
    alternates: Alternates,
    valid_until: Option<Instant>,
}

impl FleetView {
    /// Takes the registry's latest facts at `now`, valid for `valid_for` (the
    /// registry's TTL: a node named here was alive at most that long ago).
    pub fn set(&mut self, now: Instant, alternates: Alternates, valid_for: Duration) {
        self.alternates = alternates;
        self.valid_until = now.checked_add(valid_for);
    }

    /// The alternates, if still valid at `now`.
    pub fn current(&self, now: Instant) -> Option<&Alternates> {
        self.valid_until.filter(|&until| now < until).map(|_| &self.alternates)
    }

    /// Where an Allocate from a client of `family` goes instead of this node, and
    /// why; `None`: this node takes it. `allocations` is this node's count now.
    pub fn redirect(
        &self,
        now: Instant,
        policy: &RedirectPolicy,
        draining: bool,
        allocations: usize,
        family: Family,
    ) -> Option<(SocketAddr, RedirectReason)> {
        let reason = if draining {
            RedirectReason::Draining
        } else if policy.front {
            RedirectReason::Front
        } else if policy.max_allocations.is_some_and(|max| allocations >= max) {
            RedirectReason::Overloaded
        } else {
            return None;
        };
        let to = self.current(now)?.of(family)?;
        Some((to, reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alternates() -> Alternates {
        Alternates {
            v4: Some("192.0.2.7:3478".parse().unwrap()),
            v6: Some("[2001:db8::7]:3478".parse().unwrap()),
            v4_domain: Some("turn.example.net".into()),
            v6_domain: None,
        }
    }

    #[test]
    fn a_serving_node_under_its_threshold_keeps_the_allocate() {
        let now = Instant::now();
        let mut view = FleetView::default();
        view.set(now, alternates(), Duration::from_secs(5));
        let policy = RedirectPolicy { front: false, max_allocations: Some(10) };
        assert_eq!(view.redirect(now, &policy, false, 9, Family::V4), None);
        let over = view.redirect(now, &policy, false, 10, Family::V4);
        assert_eq!(over, Some(("192.0.2.7:3478".parse().unwrap(), RedirectReason::Overloaded)));
    }

    #[test]
    fn the_alternate_is_of_the_clients_family_or_none() {
        let now = Instant::now();
        let mut view = FleetView::default();
        view.set(now, Alternates { v6: None, ..alternates() }, Duration::from_secs(5));
        let front = RedirectPolicy { front: true, max_allocations: None };
        assert_eq!(view.redirect(now, &front, false, 0, Family::V6), None);
        assert_eq!(view.redirect(now, &front, false, 0, Family::V4).map(|r| r.1), Some(RedirectReason::Front));
    }

    #[test]
    fn stale_facts_are_not_used_so_the_node_serves_itself() {
        let now = Instant::now();
        let mut view = FleetView::default();
        view.set(now, alternates(), Duration::from_secs(5));
        let front = RedirectPolicy { front: true, max_allocations: None };
        assert!(view.redirect(now + Duration::from_millis(4999), &front, false, 0, Family::V4).is_some());
        assert_eq!(view.redirect(now + Duration::from_secs(5), &front, false, 0, Family::V4), None);
    }

    #[test]
    fn draining_outranks_the_other_reasons() {
        let now = Instant::now();
        let mut view = FleetView::default();
        view.set(now, alternates(), Duration::from_secs(5));
        let front = RedirectPolicy { front: true, max_allocations: Some(1) };
        assert_eq!(view.redirect(now, &front, true, 5, Family::V6).map(|r| r.1), Some(RedirectReason::Draining));
    }
}
