//! `/ws`: one task per client. It forwards the hub's stats at the client's interval
//! and the events of the topics it subscribed to, and answers its requests.
//!
//! A client that does not keep up is dropped, never waited for: a send that takes
//! longer than [`SEND_TIMEOUT`], or falling [`super::hub::CLIENT_BACKLOG`] events
//! behind, ends the session. Nothing here can slow the hub, let alone the event loop:
//! the hub's broadcast never waits for receivers.
//!
//! Nor can a client hold its connection for nothing or keep the session busy:
//!
//! - **Idle**: a session that has sent no request (text message) for [`IDLE_TIMEOUT`]
//!   (30 s) and has not subscribed to anything is closed with 1008 "idle". The default
//!   `stats` feed of a new session does not count; an explicit `subscribe` that leaves
//!   at least one topic does (the dashboard sends one as soon as it connects). Pings,
//!   pongs and binary frames do not count as requests. The timeout can be shortened
//!   (for tests) with the environment variable `TURND_ADMIN_WS_IDLE_SECS` (1 to 3600).
//! - **Rate**: [`FRAMES_PER_SECOND`] (20) frames a second of any kind: text, binary,
//!   ping and pong together. The next one gets a `rate_limited` error and a 1008 close.
//!   Binary frames are answered with an error (the protocol is JSON text); pings are
//!   answered by tungstenite with a pong, so without this a ping flood would be a free
//!   echo service.
//! - **Size**: one message or frame is at most [`MAX_MESSAGE_BYTES`] (4 KiB).

use super::access::{same_origin, Resource};
use super::admission::{ConnectionSlot, Slot};
use super::protocol::{
    ClientMessage, ErrorCode, Limits, Revocation, ServerMessage, Topic, DEFAULT_PAGE, MAX_INTERVAL_MS,
    MAX_MESSAGE_BYTES, MAX_PAGE, MIN_INTERVAL_MS, VERSION,
};
use super::State;
use crate::net::Control;
use crate::turn::AllocationId;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, oneshot};
use tokio::time::{Instant, Interval, MissedTickBehavior};

/// A message the client does not take within this gets it dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an admin action waits for the event loop.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);
/// Client frames (text, binary, ping, pong) allowed per second; past it the client is
/// told and dropped.
const FRAMES_PER_SECOND: u32 = 20;
/// A session with no request for this long and no subscription is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Environment variable that overrides [`IDLE_TIMEOUT`] (whole seconds, 1 to 3600).
const IDLE_ENV: &str = "TURND_ADMIN_WS_IDLE_SECS";
/// How long a session we close waits for the client's close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// Frames read (and discarded) while waiting for it.
const CLOSE_LINGER_FRAMES: usize = 256;
/// WebSocket close code for a policy violation (RFC 6455 §7.4.1).
const CLOSE_POLICY: u16 = 1008;

/// The idle timeout: [`IDLE_TIMEOUT`] unless `TURND_ADMIN_WS_IDLE_SECS` says otherwise.
pub(crate) fn idle_timeout() -> Duration {
    parse_idle(std::env::var(IDLE_ENV).ok().as_deref())
}

fn parse_idle(value: Option<&str>) -> Duration {
    match value.map(|v| v.trim().parse::<u64>()) {
        None => IDLE_TIMEOUT,
        Some(Ok(secs)) if (1..=3600).contains(&secs) => Duration::from_secs(secs),
        Some(_) => {
            tracing::warn!("{IDLE_ENV} must be 1 to 3600 (seconds); using {}", IDLE_TIMEOUT.as_secs());
            IDLE_TIMEOUT
        }
    }
}

/// The `/ws` handler: access check, origin check, then the upgrade.
pub(crate) async fn upgrade(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    Extension(slot): Extension<ConnectionSlot>,
    headers: HeaderMap,
    uri: Uri,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let grant = match state.authorize(Resource::ReadOnly, &headers, &uri) {
        Ok(grant) => grant,
        Err(refused) => return refused.into_response(),
    };
    let header = |name| headers.get(name).map(|v: &header::HeaderValue| v.as_bytes());
    if !same_origin(header(header::ORIGIN), header(header::HOST)) {
        return (StatusCode::FORBIDDEN, "forbidden: cross-origin WebSocket\n").into_response();
    }
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    let Some(slot) = slot.take() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "connection slot already taken\n").into_response();
    };
    let session = Session {
        realm: uri.query().and_then(super::access::query_realm),
        admin: grant == super::access::Grant::Admin,
        topics: vec![Topic::Stats],
        subscribed: false,
        interval: Duration::from_millis(MIN_INTERVAL_MS),
        window: (Instant::now(), 0),
        state,
    };
    upgrade
        .max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES)
        .read_buffer_size(MAX_MESSAGE_BYTES * 2)
        // Write each message out at once: buffering would only hide a slow client.
        .write_buffer_size(0)
        .on_upgrade(move |socket| session.run(socket, slot))
}

/// Set once a `drain` op has raised SIGTERM: a second one would mean "exit now" to
/// `serve`, so later `drain` ops (on any connection) only say it is under way.
static DRAIN_RAISED: AtomicBool = AtomicBool::new(false);

/// What to do after one turn of the session loop.
enum Step {
    Nothing,
    Send(Message),
    /// Send this, then raise the signal in this process (`reload`, `drain`): after the
    /// reply, so that a drain with `drain-time = 0`, which exits at once, still answers.
    SendThenRaise(Message, libc::c_int),
    /// Send this, then close with a policy-violation frame.
    SendAndClose(Option<Message>, &'static str),
}

struct Session {
    state: Arc<State>,
    /// `/ws?realm=`: only this realm's events and allocations.
    realm: Option<String>,
    admin: bool,
    topics: Vec<Topic>,
    /// Whether the client has subscribed itself (the default `stats` feed does not
    /// count): such a session is not idle while it keeps a topic.
    subscribed: bool,
    interval: Duration,
    /// Start of the current one-second window and frames received in it.
    window: (Instant, u32),
}

impl Session {
    /// Whether an event about `realm` goes to this session: all do without a realm
    /// filter; with one, events of that realm and those about no realm (`suppressed`).
    fn wants_realm(&self, realm: Option<&str>) -> bool {
        match (&self.realm, realm) {
            (Some(wanted), Some(realm)) => wanted == realm,
            _ => true,
        }
    }

    async fn run(mut self, mut socket: WebSocket, _slot: Slot) {
        let mut events = self.state.hub.events.subscribe();
        let mut ticker = ticker(self.interval);
        let idle = self.state.ws_idle;
        let mut idle_at = Instant::now() + idle;
        if !self.send(&mut socket, json(&self.hello())).await {
            return;
        }
        loop {
            let step = tokio::select! {
                incoming = socket.recv() => match incoming {
                    Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                    Some(Ok(_)) if !self.within_rate() => {
                        let why = format!("more than {FRAMES_PER_SECOND} frames in a second");
                        Step::SendAndClose(Some(json(&error(None, ErrorCode::RateLimited, &why))), "rate limited")
                    }
                    Some(Ok(Message::Text(text))) => {
                        idle_at = Instant::now() + idle;
                        self.on_text(&text, &mut ticker).await
                    }
                    Some(Ok(Message::Binary(_))) => {
                        Step::Send(json(&error(None, ErrorCode::BadRequest, "send JSON in text frames")))
                    }
                    // tungstenite answers pings itself.
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => Step::Nothing,
                },
                _ = tokio::time::sleep_until(idle_at) => {
                    if self.subscribed && !self.topics.is_empty() {
                        idle_at = Instant::now() + idle;
                        Step::Nothing
                    } else {
                        Step::SendAndClose(None, "idle: no request and no subscription")
                    }
                }
                _ = ticker.tick(), if self.topics.contains(&Topic::Stats) => {
                    match self.state.hub.stats.borrow().clone() {
                        Some(stats) => Step::Send(Message::Text(stats)),
                        None => Step::Nothing,
                    }
                }
                event = events.recv() => match event {
                    Ok(out) if self.topics.contains(&out.topic) && self.wants_realm(out.realm.as_deref()) => {
                        Step::Send(Message::Text(out.json))
                    }
                    Ok(_) => Step::Nothing,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.state.counters.slow_clients_dropped.fetch_add(1, Ordering::Relaxed);
                        Step::SendAndClose(None, "too slow: events were lost")
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            match step {
                Step::Nothing => {}
                Step::Send(message) => {
                    if !self.send(&mut socket, message).await {
                        return;
                    }
                }
                Step::SendThenRaise(message, signal) => {
                    let sent = self.send(&mut socket, message).await;
                    raise(signal);
                    if !sent {
                        return;
                    }
                }
                Step::SendAndClose(message, why) => {
                    if let Some(message) = message {
                        self.send(&mut socket, message).await;
                    }
                    let frame = CloseFrame { code: CLOSE_POLICY, reason: why.into() };
                    if self.send(&mut socket, Message::Close(Some(frame))).await {
                        finish_closing(&mut socket).await;
                    }
                    return;
                }
            }
        }
    }

    /// Sends one message; `false` if the client is gone or too slow (and counted so).
    async fn send(&self, socket: &mut WebSocket, message: Message) -> bool {
        match tokio::time::timeout(SEND_TIMEOUT, socket.send(message)).await {
            Ok(Ok(())) => true,
            Ok(Err(_)) => false,
            Err(_) => {
                self.state.counters.slow_clients_dropped.fetch_add(1, Ordering::Relaxed);
                tracing::info!("dropped a WebSocket client that stopped reading");
                false
            }
        }
    }

    fn hello(&self) -> ServerMessage {
        ServerMessage::Hello {
            version: VERSION,
            server: concat!("turnd/", env!("CARGO_PKG_VERSION")),
            admin: self.admin,
            topics: self.topics.clone(),
            interval_ms: self.interval.as_millis() as u64,
            limits: Limits {
                min_interval_ms: MIN_INTERVAL_MS,
                max_interval_ms: MAX_INTERVAL_MS,
                max_message_bytes: MAX_MESSAGE_BYTES,
                max_page: MAX_PAGE,
            },
        }
    }

    /// Whether another frame fits this second's allowance.
    fn within_rate(&mut self) -> bool {
        let now = Instant::now();
        if now.duration_since(self.window.0) >= Duration::from_secs(1) {
            self.window = (now, 0);
        }
        self.window.1 = self.window.1.saturating_add(1);
        self.window.1 <= FRAMES_PER_SECOND
    }

    async fn on_text(&mut self, text: &str, ticker: &mut Interval) -> Step {
        let request: ClientMessage = match serde_json::from_str(text) {
            Ok(request) => request,
            Err(e) => return Step::Send(json(&error(None, ErrorCode::BadRequest, &e.to_string()))),
        };
        let reply = match request {
            ClientMessage::Subscribe { topics, interval_ms, req } => {
                for topic in topics {
                    if !self.topics.contains(&topic) {
                        self.topics.push(topic);
                    }
                }
                self.subscribed = true;
                if let Some(ms) = interval_ms {
                    self.interval = Duration::from_millis(ms.clamp(MIN_INTERVAL_MS, MAX_INTERVAL_MS));
                    *ticker = self::ticker(self.interval);
                }
                self.subscribed(req)
            }
            ClientMessage::Unsubscribe { topics, req } => {
                self.topics.retain(|t| !topics.contains(t));
                self.subscribed(req)
            }
            ClientMessage::ListAllocations { realm, offset, limit, req } => {
                let limit = limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
                let realm = self.realm.clone().or(realm);
                let answer = self.ask(|reply| Control::ListAllocations { realm, offset, limit, reply }).await;
                answer.map_or_else(
                    |(code, message)| error(req, code, message),
                    |(allocations, total)| ServerMessage::Allocations { req, offset, total, allocations },
                )
            }
            ClientMessage::DropAllocation { id, req } => {
                let answer = self.ask(|reply| Control::DropAllocation { id: AllocationId(id), reply }).await;
                answer.map_or_else(
                    |(code, message)| error(req, code, message),
                    |dropped| ServerMessage::Dropped { req, count: usize::from(dropped) },
                )
            }
            ClientMessage::DropUser { user, req } => {
                let answer = self.ask(|reply| Control::DropUser { user, reply }).await;
                answer.map_or_else(
                    |(code, message)| error(req, code, message),
                    |count| ServerMessage::Dropped { req, count },
                )
            }
            ClientMessage::Revoke { user, req } => match self.ask(|reply| Control::Revoke { user, reply }).await {
                Ok(Ok(count)) => {
                    // In a fleet, the cluster task pushes it to the other nodes now.
                    self.state.cluster.revocations_changed_here();
                    ServerMessage::Revoked { req, count }
                }
                Ok(Err(why)) => ServerMessage::Error { req, code: ErrorCode::BadRequest, message: why },
                Err((code, message)) => error(req, code, message),
            },
            ClientMessage::Unrevoke { user, req } => {
                let answer = self.ask(|reply| Control::LiftRevocation { user, reply }).await;
                if matches!(answer, Ok(true)) {
                    self.state.cluster.revocations_changed_here();
                }
                answer.map_or_else(
                    |(code, message)| error(req, code, message),
                    |lifted| ServerMessage::Unrevoked { req, lifted },
                )
            }
            ClientMessage::Reload { req } => {
                return match self.may_raise(libc::SIGHUP) {
                    Err((code, message)) => Step::Send(json(&error(req, code, message))),
                    Ok(()) => {
                        tracing::info!("admin: reload asked for over /ws; raising SIGHUP");
                        Step::SendThenRaise(json(&ServerMessage::Reloading { req }), libc::SIGHUP)
                    }
                };
            }
            ClientMessage::Drain { req } => {
                return match self.may_raise(libc::SIGTERM) {
                    Err((code, message)) => Step::Send(json(&error(req, code, message))),
                    Ok(()) => {
                        let draining = self.state.snapshots.borrow().draining;
                        if draining || DRAIN_RAISED.swap(true, Ordering::SeqCst) {
                            Step::Send(json(&ServerMessage::Draining { req, already: true }))
                        } else {
                            tracing::info!("admin: drain asked for over /ws; raising SIGTERM");
                            Step::SendThenRaise(json(&ServerMessage::Draining { req, already: false }), libc::SIGTERM)
                        }
                    }
                };
            }
            ClientMessage::ListRevocations { req } => {
                let answer = self.ask(|reply| Control::ListRevocations { reply }).await;
                answer.map_or_else(
                    |(code, message)| error(req, code, message),
                    |list| ServerMessage::Revocations {
                        req,
                        revocations: list.into_iter().map(|(user, lapses_at)| Revocation { user, lapses_at }).collect(),
                    },
                )
            }
        };
        Step::Send(json(&reply))
    }

    fn subscribed(&self, req: Option<u64>) -> ServerMessage {
        ServerMessage::Subscribed { req, topics: self.topics.clone(), interval_ms: self.interval.as_millis() as u64 }
    }

    /// Whether this session may raise `signal` (`reload`, `drain`): it needs the token,
    /// and the process must handle the signal (`turnd serve` does; a program embedding
    /// the admin plane without handlers would be killed by it instead).
    fn may_raise(&self, signal: libc::c_int) -> Result<(), (ErrorCode, &'static str)> {
        self.admin_only()?;
        if handles(signal) {
            Ok(())
        } else {
            Err((
                ErrorCode::Unavailable,
                "this process does not handle the signal; reload and drain need `turnd serve`",
            ))
        }
    }

    /// `Err` unless this session holds the token.
    fn admin_only(&self) -> Result<(), (ErrorCode, &'static str)> {
        if self.admin {
            Ok(())
        } else if self.state.access.has_token() {
            Err((ErrorCode::Unauthorized, "admin actions need the bearer token"))
        } else {
            Err((ErrorCode::Unauthorized, "admin actions are disabled: no admin.token is configured"))
        }
    }

    /// Runs an admin action on the event loop: never waits for room in its queue, and
    /// waits a bounded time for the answer.
    async fn ask<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<T>) -> Control,
    ) -> Result<T, (ErrorCode, &'static str)> {
        self.admin_only()?;
        let (reply, answer) = oneshot::channel();
        self.state.control.try_send(request(reply)).map_err(|e| match e {
            tokio::sync::mpsc::error::TrySendError::Full(_) => (ErrorCode::Busy, "the event loop is busy; try again"),
            tokio::sync::mpsc::error::TrySendError::Closed(_) => (ErrorCode::Unavailable, "the event loop has stopped"),
        })?;
        match tokio::time::timeout(CONTROL_TIMEOUT, answer).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_)) | Err(_) => Err((ErrorCode::Unavailable, "the event loop did not answer")),
        }
    }
}

/// After our close frame: reads (and discards) what the client still sends until its
/// own close frame, for at most [`CLOSE_LINGER`]. Closing the socket with unread data
/// would make the kernel send a reset, which can destroy the close frame (and the
/// error before it) before the client reads them.
async fn finish_closing(socket: &mut WebSocket) {
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        for _ in 0..CLOSE_LINGER_FRAMES {
            match socket.recv().await {
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
}

/// Whether this process has a handler for `signal` (rather than the default action or
/// ignoring it).
fn handles(signal: libc::c_int) -> bool {
    crate::sys::process::handles_signal(signal)
}

/// Raises `signal` in this process: `reload` and `drain` take the very path of an
/// operator's `kill -HUP` / `kill -TERM` (tokio's handlers in `serve`).
fn raise(signal: libc::c_int) {
    if let Err(e) = crate::sys::process::raise_signal(signal) {
        tracing::error!(error = %e, signal, "raising the signal failed");
    }
}

fn ticker(period: Duration) -> Interval {
    let mut ticker = tokio::time::interval(period);
    // A client that was busy gets the latest snapshot, not a burst of repeats.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker
}

fn error(req: Option<u64>, code: ErrorCode, message: &str) -> ServerMessage {
    ServerMessage::Error { req, code, message: message.to_owned() }
}

fn json(message: &ServerMessage) -> Message {
    // Our own enums of plain fields: serialising cannot fail.
    Message::Text(serde_json::to_string(message).unwrap_or_default().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_idle_timeout_is_30_s_unless_the_environment_says_otherwise() {
        assert_eq!(parse_idle(None), Duration::from_secs(30));
        assert_eq!(parse_idle(Some("2")), Duration::from_secs(2));
        for bad in ["0", "3601", "x", "-1"] {
            assert_eq!(parse_idle(Some(bad)), Duration::from_secs(30), "{bad}");
        }
    }
}
