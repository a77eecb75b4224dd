//! `/ws`: one task per client. It forwards the hub's stats at the client's interval
//! and the events of the topics it subscribed to, and answers its requests.
//!
//! A client that does not keep up is dropped, never waited for: a send that takes
//! longer than [`SEND_TIMEOUT`], or falling [`super::hub::CLIENT_BACKLOG`] events
//! behind, ends the session. Nothing here can slow the hub, let alone the event loop:
//! the hub's broadcast never waits for receivers.

use super::access::{same_origin, Resource};
use super::protocol::{
    ClientMessage, ErrorCode, Limits, ServerMessage, Topic, DEFAULT_PAGE, MAX_INTERVAL_MS, MAX_MESSAGE_BYTES, MAX_PAGE,
    MIN_INTERVAL_MS, VERSION,
};
use super::server::{ConnectionSlot, Slot};
use super::State;
use crate::net::Control;
use crate::turn::AllocationId;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, oneshot};
use tokio::time::{Instant, Interval, MissedTickBehavior};

/// A message the client does not take within this gets it dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an admin action waits for the event loop.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);
/// Client messages allowed per second; past it the client is told and dropped.
const MESSAGES_PER_SECOND: u32 = 20;
/// WebSocket close code for a policy violation (RFC 6455 §7.4.1).
const CLOSE_POLICY: u16 = 1008;

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
        admin: grant == super::access::Grant::Admin,
        topics: vec![Topic::Stats],
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

/// What to do after one turn of the session loop.
enum Step {
    Nothing,
    Send(Message),
    /// Send this, then close with a policy-violation frame.
    SendAndClose(Option<Message>, &'static str),
}

struct Session {
    state: Arc<State>,
    admin: bool,
    topics: Vec<Topic>,
    interval: Duration,
    /// Start of the current one-second window and messages received in it.
    window: (Instant, u32),
}

impl Session {
    async fn run(mut self, mut socket: WebSocket, _slot: Slot) {
        let mut events = self.state.hub.events.subscribe();
        let mut ticker = ticker(self.interval);
        if !self.send(&mut socket, json(&self.hello())).await {
            return;
        }
        loop {
            let step = tokio::select! {
                incoming = socket.recv() => match incoming {
                    Some(Ok(Message::Text(text))) => self.on_text(&text, &mut ticker).await,
                    Some(Ok(Message::Binary(_))) => {
                        Step::Send(json(&error(None, ErrorCode::BadRequest, "send JSON in text frames")))
                    }
                    // tungstenite answers pings itself.
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => Step::Nothing,
                    Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                },
                _ = ticker.tick(), if self.topics.contains(&Topic::Stats) => {
                    match self.state.hub.stats.borrow().clone() {
                        Some(stats) => Step::Send(Message::Text(stats)),
                        None => Step::Nothing,
                    }
                }
                event = events.recv() => match event {
                    Ok(out) if self.topics.contains(&out.topic) => Step::Send(Message::Text(out.json)),
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
                Step::SendAndClose(message, why) => {
                    if let Some(message) = message {
                        self.send(&mut socket, message).await;
                    }
                    let frame = CloseFrame { code: CLOSE_POLICY, reason: why.into() };
                    self.send(&mut socket, Message::Close(Some(frame))).await;
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

    /// Whether another message fits this second's allowance.
    fn within_rate(&mut self) -> bool {
        let now = Instant::now();
        if now.duration_since(self.window.0) >= Duration::from_secs(1) {
            self.window = (now, 0);
        }
        self.window.1 += 1;
        self.window.1 <= MESSAGES_PER_SECOND
    }

    async fn on_text(&mut self, text: &str, ticker: &mut Interval) -> Step {
        if !self.within_rate() {
            let e = error(None, ErrorCode::RateLimited, "more than 20 messages in a second");
            return Step::SendAndClose(Some(json(&e)), "rate limited");
        }
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
            ClientMessage::ListAllocations { offset, limit, req } => {
                let limit = limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
                let answer = self.ask(|reply| Control::ListAllocations { offset, limit, reply }).await;
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
        };
        Step::Send(json(&reply))
    }

    fn subscribed(&self, req: Option<u64>) -> ServerMessage {
        ServerMessage::Subscribed { req, topics: self.topics.clone(), interval_ms: self.interval.as_millis() as u64 }
    }

    /// Runs an admin action on the event loop: never waits for room in its queue, and
    /// waits a bounded time for the answer.
    async fn ask<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<T>) -> Control,
    ) -> Result<T, (ErrorCode, &'static str)> {
        if !self.admin {
            return Err(if self.state.access.has_token() {
                (ErrorCode::Unauthorized, "admin actions need the bearer token")
            } else {
                (ErrorCode::Unauthorized, "admin actions are disabled: no admin.token is configured")
            });
        }
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
