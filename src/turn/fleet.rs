//! The fleet's part of the core: which node a new Allocate is sent to (RFC 8489 §10,
//! 300 Try Alternate) when this node should not take it.
//!
//! The shell's cluster task reads the node registry and hands the core plain facts
//! ([`Alternates`]: the least-loaded serving node per client transport and family,
//! and for how long that holds); the core decides per Allocate, with no lock and no wait on the registry.
//! Facts older than their validity are ignored, so a node cut off from the registry
//! serves every Allocate itself rather than naming a node that may be gone.

use super::allocation::Family;
use super::Transport;
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

/// A node a client may be sent to: its address for the client's transport and
/// family (ALTERNATE-SERVER), and its TLS name (ALTERNATE-DOMAIN, for TLS clients).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alternate {
    /// Where the client goes: RFC 8489 §14.15, the client follows ALTERNATE-SERVER
    /// with the transport it used, so this is the node's address for that transport.
    pub address: SocketAddr,
    /// The node's TLS name: RFC 8489 §14.16, a TLS client checks the certificate
    /// of the server named against it.
    pub domain: Option<String>,
}

/// The best other node per address family, for clients of one transport.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PerFamily {
    /// For IPv4 clients.
    pub v4: Option<Alternate>,
    /// For IPv6 clients.
    pub v6: Option<Alternate>,
}

impl PerFamily {
    /// The node for a client of `family`.
    pub fn of(&self, family: Family) -> Option<&Alternate> {
        match family {
            Family::V4 => self.v4.as_ref(),
            Family::V6 => self.v6.as_ref(),
        }
    }
}

/// The best other node per client transport and address family, as the cluster task
/// last saw the registry. A node that does not serve a transport (publishes no
/// address for it) is never named to clients of that transport.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Alternates {
    /// For UDP clients.
    pub udp: PerFamily,
    /// For TCP clients.
    pub tcp: PerFamily,
    /// For TLS clients.
    pub tls: PerFamily,
}

impl Alternates {
    /// The node for a client of `transport` and `family`.
    pub fn of(&self, transport: Transport, family: Family) -> Option<&Alternate> {
        match transport {
            Transport::Udp => self.udp.of(family),
            Transport::Tcp => self.tcp.of(family),
            Transport::Tls => self.tls.of(family),
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

    /// Where an Allocate from a client of `transport` and `family` goes instead of
    /// this node, and why; `None`: this node takes it. `allocations` is this node's
    /// count now.
    pub fn redirect(
        &self,
        now: Instant,
        policy: &RedirectPolicy,
        draining: bool,
        allocations: usize,
        transport: Transport,
        family: Family,
    ) -> Option<(&Alternate, RedirectReason)> {
        let reason = if draining {
            RedirectReason::Draining
        } else if policy.front {
            RedirectReason::Front
        } else if policy.max_allocations.is_some_and(|max| allocations >= max) {
            RedirectReason::Overloaded
        } else {
            return None;
        };
        let to = self.current(now)?.of(transport, family)?;
        Some((to, reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to(address: &str, domain: Option<&str>) -> Option<Alternate> {
        Some(Alternate { address: address.parse().unwrap(), domain: domain.map(Into::into) })
    }

    fn alternates() -> Alternates {
        Alternates {
            udp: PerFamily { v4: to("192.0.2.7:3478", Some("turn.example.net")), v6: to("[2001:db8::7]:3478", None) },
            tcp: PerFamily { v4: to("192.0.2.7:3478", Some("turn.example.net")), v6: None },
            tls: PerFamily { v4: to("192.0.2.7:5349", Some("turn.example.net")), v6: None },
        }
    }

    const UDP: Transport = Transport::Udp;

    #[test]
    fn a_serving_node_under_its_threshold_keeps_the_allocate() {
        let now = Instant::now();
        let mut view = FleetView::default();
        view.set(now, alternates(), Duration::from_secs(5));
        let policy = RedirectPolicy { front: false, max_allocations: Some(10) };
        assert_eq!(view.redirect(now, &policy, false, 9, UDP, Family::V4), None);
        let over = view.redirect(now, &policy, false, 10, UDP, Family::V4).map(|(a, r)| (a.address, r));
        assert_eq!(over, Some(("192.0.2.7:3478".parse().unwrap(), RedirectReason::Overloaded)));
    }

    #[test]
    fn the_alternate_is_of_the_clients_family_or_none() {
        let now = Instant::now();
        let mut view = FleetView::default();
        let mut facts = alternates();
        facts.udp.v6 = None;
        view.set(now, facts, Duration::from_secs(5));
        let front = RedirectPolicy { front: true, max_allocations: None };
        assert_eq!(view.redirect(now, &front, false, 0, UDP, Family::V6), None);
        assert_eq!(view.redirect(now, &front, false, 0, UDP, Family::V4).map(|r| r.1), Some(RedirectReason::Front));
    }

    #[test]
    fn the_alternate_is_the_nodes_address_for_the_clients_transport_or_none() {
        let now = Instant::now();
        let mut view = FleetView::default();
        view.set(now, alternates(), Duration::from_secs(5));
        let front = RedirectPolicy { front: true, max_allocations: None };
        let at = |transport, family| view.redirect(now, &front, false, 0, transport, family).map(|r| r.0.address);
        assert_eq!(at(Transport::Tls, Family::V4), Some("192.0.2.7:5349".parse().unwrap()), "its TLS port");
        assert_eq!(at(Transport::Tcp, Family::V4), Some("192.0.2.7:3478".parse().unwrap()));
        assert_eq!(at(Transport::Tls, Family::V6), None, "no node serves TLS over IPv6: served here");
    }

    #[test]
    fn stale_facts_are_not_used_so_the_node_serves_itself() {
        let now = Instant::now();
        let mut view = FleetView::default();
        view.set(now, alternates(), Duration::from_secs(5));
        let front = RedirectPolicy { front: true, max_allocations: None };
        assert!(view.redirect(now + Duration::from_millis(4999), &front, false, 0, UDP, Family::V4).is_some());
        assert_eq!(view.redirect(now + Duration::from_secs(5), &front, false, 0, UDP, Family::V4), None);
    }

    #[test]
    fn draining_outranks_the_other_reasons() {
        let now = Instant::now();
        let mut view = FleetView::default();
        view.set(now, alternates(), Duration::from_secs(5));
        let front = RedirectPolicy { front: true, max_allocations: Some(1) };
        assert_eq!(view.redirect(now, &front, true, 5, UDP, Family::V6).map(|r| r.1), Some(RedirectReason::Draining));
    }
}
