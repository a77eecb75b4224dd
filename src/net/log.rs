//! The log lines of core events: one line per allocation when it ends, and the
//! rate-limited authentication failures that fail2ban reads.

use super::event_loop::unix_now;
use crate::turn::stats::AuthFailure;
use crate::turn::{EndReason, Event};
use std::net::SocketAddr;
use tracing::{debug, info, warn};

/// Warning lines about failed authentications at most this often a second, over the
/// process: enough for fail2ban to count an attacker, too few to flood the log.
const AUTH_FAILURE_LINES_PER_SECOND: u64 = 100;
/// (second, lines logged in it, lines left out) of the limiter below.
static AUTH_FAILURE_LOG: std::sync::Mutex<(u64, u64, u64)> = std::sync::Mutex::new((0, 0, 0));

/// One warning line per failed authentication, in the fixed format the shipped
/// fail2ban filter matches (`ip=`, then `port=` and `reason=`; nothing a client chose),
/// rate limited. Stale nonces are the normal flow of a long call: debug only.
fn log_auth_failure(client: SocketAddr, reason: AuthFailure) {
    let (ip, port, label) = (client.ip(), client.port(), reason.label());
    if matches!(reason, AuthFailure::StaleNonce | AuthFailure::RateLimited) {
        debug!(ip = %ip, port, reason = %label, "authentication failed");
        return;
    }
    let now = unix_now();
    let left_out = {
        let mut state = AUTH_FAILURE_LOG.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (second, logged, dropped) = &mut *state;
        let mut left_out = 0;
        if *second != now {
            left_out = std::mem::take(dropped);
            (*second, *logged) = (now, 0);
        }
        if *logged >= AUTH_FAILURE_LINES_PER_SECOND {
            *dropped += 1;
            return;
        }
        *logged += 1;
        left_out
    };
    if left_out > 0 {
        warn!(count = left_out, "authentication failure lines left out in the last second (rate limit)");
    }
    warn!(ip = %ip, port, reason = %label, "authentication failed");
}

/// Logs one core event at the level an operator needs it.
pub(super) fn log_event(event: &Event) {
    match event {
        // One info line per allocation, when it ends, with everything an operator looks
        // up later (who, from where, which relay port, how long, how much): half the log
        // volume of a line at each end, and logging is a tenth of the CPU of a short call.
        Event::AllocationCreated { id, five_tuple, username, relay, lifetime } => debug!(
            allocation = id.0, client = %five_tuple.client, user = %username, relay = %relay,
            lifetime = lifetime.as_secs(), "allocation created"
        ),
        Event::AllocationRefreshed { id, lifetime } => {
            debug!(allocation = id.0, lifetime = lifetime.as_secs(), "allocation refreshed")
        }
        Event::AllocationEnded { id, five_tuple, relay, username, reason, traffic, duration } => info!(
            allocation = id.0, client = %five_tuple.client, user = %username, relay = %relay,
            reason = match reason { EndReason::Expired => "expired", EndReason::Deleted => "deleted", EndReason::Closed => "closed" },
            to_peer_bytes = traffic.to_peer_bytes, to_client_bytes = traffic.to_client_bytes,
            duration = duration.as_secs(), "allocation ended"
        ),
        Event::AuthFailed { client, reason, .. } => log_auth_failure(*client, *reason),
        Event::AllocationMoved { id, from, to, from_worker } => info!(
            allocation = id.0, from = %from.client, to = %to.client, from_worker = ?from_worker,
            "allocation moved (RFC 8016)"
        ),
        Event::PeerDenied { id, peer } => warn!(allocation = id.0, peer = %peer, "peer refused by policy"),
    }
}
