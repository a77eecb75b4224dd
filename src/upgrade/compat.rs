//! Whether a successor's configuration can carry what its predecessor hands over,
//! checked before anything is frozen: the same worker count (each worker's listener
//! sockets and allocations go to the same index), every listener handed over still
//! configured, every relay port of a moved allocation inside the relay range, every
//! tenant with moved allocations still configured. A
//! refusal names the config key, and the predecessor keeps serving.

use super::protocol::Offer;
use std::net::SocketAddr;

/// A refusal: the config key and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The config key at fault.
    pub key: &'static str,
    /// Why, for the operator.
    pub message: String,
}

/// What of the successor's configuration the check needs.
#[derive(Debug, Clone)]
pub struct Planned {
    /// Its worker count.
    pub workers: usize,
    /// Its listeners: ("udp" | "tcp" | "tls", configured address), in config order.
    pub listeners: Vec<(&'static str, SocketAddr)>,
    /// Its relay port range.
    pub relay_ports: (u16, u16),
    /// Its `[[tenant]]` realms.
    pub realms: Vec<String>,
}

/// For each planned listener, the handed-over listener it takes (`None`: bind a new
/// one), or a refusal when a handed-over listener would be left without a taker.
/// A configured port 0 takes the handed-over listener of the same transport and IP.
pub fn match_listeners(
    planned: &[(&'static str, SocketAddr)],
    offered: &[(String, SocketAddr)],
) -> Result<Vec<Option<SocketAddr>>, Refusal> {
    let mut taken = vec![false; offered.len()];
    let mut claim = |transport: &str, want: &dyn Fn(SocketAddr) -> bool| {
        let i = offered.iter().zip(&taken).position(|((t, a), used)| !used && t == transport && want(*a))?;
        taken[i] = true;
        Some(offered[i].1)
    };
    // Exact addresses first, so a port-0 entry cannot take a listener that another
    // entry names exactly.
    let mut matched: Vec<Option<SocketAddr>> =
        planned.iter().map(|(t, address)| claim(t, &|a| a == *address)).collect();
    for ((t, address), slot) in planned.iter().zip(matched.iter_mut()) {
        if slot.is_none() && address.port() == 0 {
            *slot = claim(t, &|a| a.ip() == address.ip());
        }
    }
    if let Some(((transport, address), _)) = offered.iter().zip(&taken).find(|(_, used)| !**used) {
        return Err(Refusal {
            key: "listen",
            message: format!(
                "{transport} {address} is not configured any more: its sockets (and the allocations of its clients) cannot move to this configuration"
            ),
        });
    }
    Ok(matched)
}

/// Checks `planned` against `offer`; returns the listener matching on success.
pub fn check(planned: &Planned, offer: &Offer) -> Result<Vec<Option<SocketAddr>>, Refusal> {
    if planned.workers != offer.workers {
        return Err(Refusal {
            key: "workers",
            message: format!(
                "{} workers configured, the running turnd has {}: each worker's UDP listener sockets and allocations move to the same worker, so the count cannot change in a live upgrade (restart to change it)",
                planned.workers, offer.workers
            ),
        });
    }
    if let Some(realm) = offer.realms.iter().find(|r| !planned.realms.contains(r)) {
        return Err(Refusal {
            key: "tenant",
            message: format!("no [[tenant]] with realm {realm:?} any more: its allocations cannot move"),
        });
    }
    let (min, max) = planned.relay_ports;
    if let Some(port) = offer.relay_ports.iter().find(|p| !(min..=max).contains(*p)) {
        let key = if *port < min { "relay.port-min" } else { "relay.port-max" };
        return Err(Refusal {
            key,
            message: format!("relay port {port} of a live allocation is outside the new range {min}-{max}"),
        });
    }
    let offered: Vec<(String, SocketAddr)> = offer
        .udp_listeners
        .iter()
        .map(|a| ("udp".to_owned(), *a))
        .chain(offer.stream_listeners.iter().cloned())
        .collect();
    match_listeners(&planned.listeners, &offered)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn offer() -> Offer {
        Offer {
            version: 1,
            workers: 2,
            udp_listeners: vec![addr("127.0.0.1:40000")],
            stream_listeners: vec![("tcp".into(), addr("127.0.0.1:40001"))],
            relay_ports: vec![50010, 50020],
            port_override: None,
            admin: None,
            realms: vec!["b.example".into()],
        }
    }

    fn planned() -> Planned {
        Planned {
            workers: 2,
            listeners: vec![("udp", addr("127.0.0.1:0")), ("tcp", addr("127.0.0.1:40001"))],
            relay_ports: (50000, 50100),
            realms: vec!["b.example".into()],
        }
    }

    #[test]
    fn the_same_config_takes_every_socket_over() {
        let matched = check(&planned(), &offer()).unwrap();
        assert_eq!(matched, vec![Some(addr("127.0.0.1:40000")), Some(addr("127.0.0.1:40001"))]);
    }

    #[test]
    fn a_new_listener_is_bound_anew_and_a_dropped_one_is_refused() {
        let mut more = planned();
        more.listeners.push(("tls", addr("127.0.0.1:0")));
        assert_eq!(check(&more, &offer()).unwrap()[2], None);
        let mut fewer = planned();
        fewer.listeners.remove(0);
        let refusal = check(&fewer, &offer()).unwrap_err();
        assert_eq!(refusal.key, "listen");
        assert!(refusal.message.contains("udp 127.0.0.1:40000"), "{}", refusal.message);
    }

    #[test]
    fn another_worker_count_a_range_without_the_moved_ports_or_a_tenant_gone_is_refused_naming_the_key() {
        let mut workers = planned();
        workers.workers = 4;
        assert_eq!(check(&workers, &offer()).unwrap_err().key, "workers");
        let mut range = planned();
        range.relay_ports = (50015, 50100);
        assert_eq!(check(&range, &offer()).unwrap_err().key, "relay.port-min");
        range.relay_ports = (50000, 50015);
        assert_eq!(check(&range, &offer()).unwrap_err().key, "relay.port-max");
        let mut tenants = planned();
        tenants.realms.clear();
        let refusal = check(&tenants, &offer()).unwrap_err();
        assert_eq!(refusal.key, "tenant");
        assert!(refusal.message.contains("b.example"), "{}", refusal.message);
    }
}
