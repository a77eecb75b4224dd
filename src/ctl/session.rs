//! One `/ws` session of `turnd ctl`: connect, read `hello`, send requests within the
//! server's frame rate, wait for the answer to each.

use super::*;

/// One `/ws` session.
pub(super) struct Session<'a> {
    target: &'a Target,
    ws: WebSocket<TcpStream>,
    pub(super) hello: Value,
    next_req: u64,
    /// Start of this second's window and requests sent in it.
    window: (Instant, u32),
}

impl<'a> Session<'a> {
    /// Connects and reads `hello`.
    pub(super) fn open(target: &'a Target) -> Outcome<Session<'a>> {
        let (stream, addr) = target.connect()?;
        let mut request = format!("ws://{addr}/ws")
            .into_client_request()
            .map_err(|e| Failure::Usage(format!("--admin {}: {e}", target.name)))?;
        if let Some(token) = &target.token {
            let value = format!("Bearer {}", token.value).parse().map_err(|_| {
                Failure::Unauthorized(format!("the admin token from {} is not a valid header value", token.source))
            })?;
            request.headers_mut().insert(tungstenite::http::header::AUTHORIZATION, value);
        }
        let ws = match tungstenite::client(request, stream) {
            Ok((ws, _)) => ws,
            Err(HandshakeError::Failure(tungstenite::Error::Http(response))) => {
                let status = response.status().as_u16();
                let body = response.body().as_deref().map(String::from_utf8_lossy).unwrap_or_default();
                return Err(match status {
                    401 => target.refused(),
                    503 => Failure::Action(format!("turnd at {} is busy: {}", target.name, body.trim())),
                    _ => Failure::Action(format!("turnd at {} answered {status}: {}", target.name, body.trim())),
                });
            }
            Err(HandshakeError::Interrupted(_)) => {
                return Err(Failure::Unreachable(format!(
                    "turnd at {} accepted the connection but did not answer within {}",
                    target.name,
                    humantime::format_duration(target.timeout)
                )))
            }
            Err(HandshakeError::Failure(e)) => {
                return Err(Failure::Unreachable(format!(
                    "no turnd admin listener at {} (the WebSocket handshake failed: {e})",
                    target.name
                )))
            }
        };
        let mut session = Session { target, ws, hello: Value::Null, next_req: 1, window: (Instant::now(), 0) };
        session.hello = session.next_message(|m| m["type"] == "hello")?;
        Ok(session)
    }

    /// [`Session::open`], for admin actions: fails early without the token.
    pub(super) fn admin(target: &'a Target) -> Outcome<Session<'a>> {
        let session = Session::open(target)?;
        if session.hello["admin"].as_bool() != Some(true) {
            return Err(target.refused());
        }
        Ok(session)
    }

    /// Reads messages until one satisfies `want` (stats and events in between are skipped).
    pub(super) fn next_message(&mut self, mut want: impl FnMut(&Value) -> bool) -> Outcome<Value> {
        let deadline = Instant::now() + self.target.timeout;
        loop {
            if Instant::now() >= deadline {
                return Err(self.silent());
            }
            match self.ws.read() {
                Ok(Message::Text(text)) => {
                    let value: Value = serde_json::from_str(&text)
                        .map_err(|e| Failure::Action(format!("turnd sent something that is not JSON: {e}")))?;
                    if want(&value) {
                        return Ok(value);
                    }
                }
                Ok(Message::Close(frame)) => {
                    let why = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                    return Err(Failure::Action(format!("turnd at {} closed the connection: {why}", self.target.name)));
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(self.silent())
                }
                Err(e) => {
                    return Err(Failure::Action(format!("the connection to turnd at {} ended: {e}", self.target.name)))
                }
            }
        }
    }

    pub(super) fn silent(&self) -> Failure {
        Failure::Action(format!(
            "turnd at {} did not answer within {}",
            self.target.name,
            humantime::format_duration(self.target.timeout)
        ))
    }

    /// Sends `op` (with a fresh `req`) and returns its reply; an `error` reply is a failure.
    pub(super) fn call(&mut self, mut op: Value) -> Outcome<Value> {
        self.pace();
        let req = self.next_req;
        self.next_req += 1;
        op["req"] = json!(req);
        self.ws
            .send(Message::text(op.to_string()))
            .map_err(|e| Failure::Action(format!("sending to turnd at {}: {e}", self.target.name)))?;
        let reply = self.next_message(|m| m["req"] == json!(req))?;
        if reply["type"] != "error" {
            return Ok(reply);
        }
        let message = reply["message"].as_str().unwrap_or("").to_owned();
        Err(match reply["code"].as_str() {
            Some("unauthorized") => Failure::Unauthorized(format!("turnd at {}: {message}", self.target.name)),
            Some(code) => Failure::Action(format!("turnd at {}: {message} ({code})", self.target.name)),
            None => Failure::Action(format!("turnd at {}: {message}", self.target.name)),
        })
    }

    /// Keeps under the server's frame rate limit.
    pub(super) fn pace(&mut self) {
        let elapsed = self.window.0.elapsed();
        if elapsed >= Duration::from_secs(1) {
            self.window = (Instant::now(), 0);
        } else if self.window.1 >= REQUESTS_PER_SECOND {
            std::thread::sleep(Duration::from_millis(1100).saturating_sub(elapsed));
            self.window = (Instant::now(), 0);
        }
        self.window.1 += 1;
    }
}
