//! The fleet's revocations over Redis, for the cluster task: the three-way merge with
//! the set `PREFIX:revoked` (run each interval and whenever a change is made here or
//! pushed from another node), and the subscription to the pushes on
//! `PREFIX:revocations` that wakes it. The message format and the merge's plan are
//! in `super::revocations`.

use super::revocations::{valid_names, Change, Pushed, RevocationSync};
use super::status::ClusterStatus;
use super::task::Settings;
use crate::net::report::Control;
use redis::aio::MultiplexedConnection;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::{debug, info, warn};

/// Messages one sync publishes at most: each only wakes the other nodes' sync, which
/// reads the whole set, so a sync that wrote many names (a node with a long list
/// joining an empty Redis) needs no more than a few.
const MAX_PUSHES_PER_SYNC: usize = 8;

/// Merges this node's revocations with the fleet's set (see `super::revocations`):
/// names new on either side go to the other, lifts too. Revokes received end the
/// user's allocations here. What it writes to the set is pushed on the channel in
/// the same pipeline, after the writes, so a node woken by the message reads them.
pub(super) async fn sync_revocations(
    settings: &Settings,
    conn: &mut MultiplexedConnection,
    control: &mpsc::Sender<Control>,
    sync: &mut RevocationSync,
    status: &ClusterStatus,
) -> redis::RedisResult<()> {
    let (reply, listed) = oneshot::channel();
    if control.send(Control::ListRevocations { reply }).await.is_err() {
        return Ok(()); // the workers are gone: shutting down
    }
    let local: BTreeSet<String> = listed.await.unwrap_or_default().into_iter().map(|(name, _)| name).collect();
    let key = settings.revoked_key();
    let raw: Vec<Vec<u8>> = redis::cmd("SMEMBERS").arg(&key).query_async(conn).await?;
    let (remote, bad) = valid_names(raw);
    if bad > 0 {
        status.bad(bad);
    }
    let (plan, merged) = sync.plan(&local, &remote);
    let changes: Vec<(Change, &String)> = (plan.add_remote.iter().map(|n| (Change::Revoke, n)))
        .chain(plan.remove_remote.iter().map(|n| (Change::Lift, n)))
        .collect();
    if !changes.is_empty() {
        let mut pipe = redis::pipe();
        if !plan.add_remote.is_empty() {
            pipe.cmd("SADD").arg(&key).arg(&plan.add_remote).ignore();
        }
        if !plan.remove_remote.is_empty() {
            pipe.cmd("SREM").arg(&key).arg(&plan.remove_remote).ignore();
        }
        let channel = settings.revocations_channel();
        let pushes = changes.len().min(MAX_PUSHES_PER_SYNC);
        for (change, name) in changes.iter().take(pushes) {
            pipe.cmd("PUBLISH").arg(&channel).arg(Pushed::encode(*change, &settings.node_id, name)).ignore();
        }
        pipe.query_async::<()>(conn).await?;
        status.revocations_pushed(pushes);
    }
    for user in plan.revoke_local {
        let (reply, done) = oneshot::channel();
        if control.send(Control::Revoke { user: user.clone(), reply }).await.is_ok() {
            match done.await {
                Ok(Ok(ended)) => info!(user = %user, ended, "cluster: revoked on another node; applied here"),
                Ok(Err(e)) => warn!(user = %user, error = %e, "cluster: a fleet revocation could not be applied here"),
                Err(_) => {}
            }
        }
    }
    for user in plan.lift_local {
        let (reply, done) = oneshot::channel();
        if control.send(Control::LiftRevocation { user: user.clone(), reply }).await.is_ok() && done.await.is_ok() {
            info!(user = %user, "cluster: revocation lifted on another node; lifted here");
        }
    }
    sync.commit(merged);
    Ok(())
}

/// The first wait before resubscribing after the subscription failed; doubled at each
/// failure up to [`MAX_RESUBSCRIBE_BACKOFF`], reset once subscribed.
const MIN_RESUBSCRIBE_BACKOFF: Duration = Duration::from_millis(100);

/// The longest wait between two subscription attempts.
const MAX_RESUBSCRIBE_BACKOFF: Duration = Duration::from_secs(2);

/// Keeps a subscription to the fleet's revocation pushes on its own connection
/// (a subscribed connection takes no other commands): each valid message from
/// another node wakes a sync in the cluster task (`pushed`); malformed ones are
/// counted and ignored. A lost subscription is re-established with backoff, and each
/// new one wakes a sync too (a push may have been missed meanwhile). This task only
/// ever signals: it never waits on the workers or on the publish loop.
pub(super) async fn subscribe(settings: Settings, status: Arc<ClusterStatus>, pushed: Arc<Notify>) {
    let channel = settings.revocations_channel();
    let mut backoff = MIN_RESUBSCRIBE_BACKOFF;
    let mut was_lost = false;
    loop {
        let opened = tokio::time::timeout(settings.ttl / 2, async {
            let mut pubsub = settings.client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub.split())
        })
        .await;
        match opened {
            Ok(Ok((mut sink, mut stream))) => {
                backoff = MIN_RESUBSCRIBE_BACKOFF;
                status.set_revocations_subscribed(true);
                info!(channel = %channel, "cluster: subscribed to the fleet's revocation pushes");
                pushed.notify_one();
                let why = listen(&settings, &mut sink, &mut stream, &status, &pushed).await;
                status.set_revocations_subscribed(false);
                warn!(error = %why, "cluster: the revocation subscription was lost; resubscribing (the interval's merge goes on)");
                was_lost = true;
            }
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_owned(),
                };
                if was_lost {
                    debug!(error = %why, "cluster: resubscribing to revocation pushes failed");
                } else {
                    warn!(error = %why, "cluster: could not subscribe to revocation pushes; retrying");
                    was_lost = true;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_RESUBSCRIBE_BACKOFF);
    }
}

/// Reads pushes until the subscription fails; returns why. A PING every TTL (answered
/// within half of it) notices a connection that went silent without closing.
async fn listen(
    settings: &Settings,
    sink: &mut redis::aio::PubSubSink,
    stream: &mut redis::aio::PubSubStream,
    status: &ClusterStatus,
    pushed: &Notify,
) -> String {
    let mut keepalive = tokio::time::interval(settings.ttl);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    keepalive.tick().await; // the first tick is immediate
    loop {
        let next = std::future::poll_fn(|cx| futures_core::Stream::poll_next(std::pin::Pin::new(&mut *stream), cx));
        tokio::select! {
            message = next => {
                let Some(message) = message else { return "connection closed".to_owned() };
                match Pushed::parse(message.get_payload_bytes()) {
                    Ok(change) if change.node == settings.node_id => {} // our own
                    Ok(change) => {
                        debug!(node = %change.node, user = %change.name, change = ?change.change, "cluster: revocation pushed");
                        status.revocation_push_received();
                        pushed.notify_one();
                    }
                    Err(why) => {
                        debug!(error = %why, "cluster: malformed message on the revocation channel ignored");
                        status.revocation_message_rejected();
                    }
                }
            }
            _ = keepalive.tick() => {
                match tokio::time::timeout(settings.ttl / 2, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return e.to_string(),
                    Err(_) => return "PING timed out".to_owned(),
                }
            }
        }
    }
}
