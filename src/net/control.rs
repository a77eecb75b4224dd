//! Admin commands to a worker ([`Control`]) and the snapshot it publishes every
//! [`super::PUBLISH_EVERY`]: what the admin listener, `turnd ctl` and the metrics see.

use super::event_loop::{unix_now, EventLoop};
use super::ledger::lock;
use super::report::{self, Control};
use crate::sys::interfaces;
use crate::turn::AllocationId;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tracing::info;

/// The host's addresses are read again every this many publishes (seconds): an address
/// added while turnd runs is kept from peers within that time.
const HOST_CHECK_EVERY: u32 = 5;

impl EventLoop {
    /// Carries out one admin command (all but `Shutdown`, which ends [`EventLoop::run`]).
    pub(super) fn control(&mut self, message: Control) {
        let now = Instant::now();
        match message {
            Control::Reconfigure(mut config) => {
                config.policy.deny_own_sockets(self.listeners.own_addresses());
                self.core.reconfigure(*config, &*self.ledger);
                self.host_addresses = interfaces::host_addresses();
                self.core.set_host_addresses(&self.host_addresses);
                info!("configuration reloaded");
            }
            Control::ListAllocations { realm, offset, limit, reply } => {
                let config = self.core.config();
                let mut all: Vec<_> = self
                    .core
                    .allocations()
                    .map(|(id, a)| describe(id, a, config.realm_of(a.five_tuple.tenant).unwrap_or(""), now))
                    .filter(|a| realm.as_ref().map_or(true, |r| &a.realm == r))
                    .collect();
                all.sort_by_key(|a| a.id);
                let total = all.len();
                let page = all.into_iter().skip(offset).take(limit).collect();
                let _ = reply.send((page, total));
            }
            Control::DropAllocation { id, reply } => {
                let _ = reply.send(self.core.close_allocation(id, now, &*self.ledger));
            }
            Control::DropUser { user, reply } => {
                let _ = reply.send(self.core.close_user(&user, now, &*self.ledger));
            }
            Control::Revoke { user, reply } => {
                let ended = self.core.revoke(&user, now, unix_now(), &*self.ledger).map_err(|e| e.to_string());
                if ended.is_ok() {
                    info!(user = %user, "revoked");
                }
                let _ = reply.send(ended);
            }
            Control::LiftRevocation { user, reply } => {
                let _ = reply.send(self.core.lift_revocation(&user));
            }
            Control::ListRevocations { reply } => {
                let _ = reply.send(self.core.revocations(unix_now()));
            }
            Control::FleetCounts { remote, reply } => {
                let mut ledger = lock(&self.ledger);
                ledger.set_remote_counts(remote);
                let _ = reply.send(ledger.user_counts());
            }
            Control::FleetRates { remote, valid_for, reply } => {
                let _ = reply.send(self.core.exchange_fleet_rates(now, &remote, valid_for));
            }
            Control::SetFleetSecrets { secrets } => {
                self.core.set_fleet_secrets(secrets.0);
            }
            Control::SetNonceKey { secret, since_origin } => {
                self.core.set_nonce_key(now, &secret, since_origin);
            }
            Control::SetAlternates { alternates, valid_for } => {
                self.core.set_alternates(now, *alternates, valid_for);
            }
            Control::Drain { alternate, reply } => {
                self.core.drain(alternate);
                let _ = reply.send(());
            }
            Control::Freeze { reply } => {
                let _ = reply.send(self.freeze().map(|share| vec![share]).map_err(|e| e.to_string()));
            }
            Control::Thaw { reply } => {
                self.thaw();
                let _ = reply.send(());
            }
            Control::Release { reply } => {
                self.release();
                let _ = reply.send(());
            }
            Control::Shutdown => {}
        }
        self.drain_outputs();
    }

    /// This loop's figures per configured realm: allocations and their live bytes
    /// counted now (one pass over the allocations, once a second), plus what ended
    /// allocations and auth failures left in `realm_counters`.
    fn realm_figures(&self) -> Vec<report::RealmFigures> {
        let config = self.core.config();
        let mut figures: Vec<report::RealmFigures> = config
            .realms()
            .map(|(tenant, realm)| {
                let counted = self.realm_counters.get(&tenant).copied().unwrap_or_default();
                report::RealmFigures {
                    tenant,
                    realm: realm.to_owned(),
                    allocations: 0,
                    auth_failures: counted.auth_failures,
                    relayed_bytes: counted.ended_bytes,
                }
            })
            .collect();
        for (_, a) in self.core.allocations() {
            if let Some(f) = figures.iter_mut().find(|f| f.tenant == a.five_tuple.tenant) {
                f.allocations += 1;
                f.relayed_bytes += a.traffic.to_peer_bytes + a.traffic.to_client_bytes;
            }
        }
        figures
    }

    /// Copies the loop's state into the published snapshot.
    pub(super) fn publish(&mut self) {
        self.publishes = self.publishes.wrapping_add(1);
        if self.publishes % HOST_CHECK_EVERY == 0 {
            let now_host = interfaces::host_addresses();
            if now_host != self.host_addresses {
                info!(addresses = ?now_host, "the host's addresses changed");
                self.core.set_host_addresses(&now_host);
                self.host_addresses = now_host;
            }
        }
        let now = Instant::now();
        let (permissions, channels) = self.core.binding_counts(now);
        let (ports_in_use, ports_available) = lock(&self.ledger).port_usage();
        let realms = self.realm_figures();
        let snapshot = &mut self.snapshot;
        snapshot.unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        snapshot.allocations = self.core.allocation_count();
        snapshot.permissions = permissions;
        snapshot.channels = channels;
        snapshot.ports_in_use = ports_in_use;
        snapshot.ports_available = ports_available;
        snapshot.tcp_connections = self.streams.len();
        snapshot.draining = self.core.is_draining();
        snapshot.stats = self.core.stats();
        snapshot.realms = realms;
        // Publishing is also this loop's heartbeat: the merge in [`workers`] feeds
        // systemd's watchdog only while every loop's snapshot keeps moving.
        self.publisher.snapshots.send_replace(snapshot.clone());
    }
}

fn describe(
    id: AllocationId,
    a: &crate::turn::allocation::Allocation,
    realm: &str,
    now: Instant,
) -> report::AllocationInfo {
    let (permissions, channels) = a.counts(now);
    report::AllocationInfo {
        id: id.0,
        user: a.username.to_string(),
        realm: realm.to_owned(),
        client: a.five_tuple.client.get(),
        transport: a.five_tuple.transport.label(),
        relay: a.relay_addrs().next().map_or(a.five_tuple.server, |r| r.advertised),
        age_secs: now.saturating_duration_since(a.created).as_secs(),
        expires_in_secs: a.remaining(now).as_secs(),
        permissions,
        channels,
        bytes_to_peer: a.traffic.to_peer_bytes,
        bytes_to_client: a.traffic.to_client_bytes,
    }
}
