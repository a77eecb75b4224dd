//! Blocking HTTP and WebSocket clients for the admin listener, with timeouts on every
//! read, so no test can hang on a silent server.

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

/// How long any one read may block.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// An HTTP response: status, raw head, body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// The address tests connect from unless they say otherwise.
pub const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A connection to `addr` from `local` (any 127.0.0.0/8 address: another source).
pub fn connect_from(local: IpAddr, addr: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.bind(&SocketAddr::new(local, 0).into()).expect("bind the client's source address");
    socket.connect_timeout(&addr.into(), IO_TIMEOUT).expect("connect to the admin listener");
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("read timeout");
    stream
}

/// A request whose head is never finished (the last CRLF is missing): a slow loris.
pub fn half_sent(local: IpAddr, addr: SocketAddr) -> TcpStream {
    let mut stream = connect_from(local, addr);
    stream.write_all(format!("GET / HTTP/1.1\r\nHost: {addr}\r\n").as_bytes()).expect("send half a request");
    stream
}

/// `GET path` with extra header lines ("Name: value"); reads until the server closes.
pub fn get(addr: SocketAddr, path: &str, headers: &[&str]) -> Response {
    get_from(LOOPBACK, addr, path, headers)
}

/// [`get`] from another loopback address.
pub fn get_from(local: IpAddr, addr: SocketAddr, path: &str, headers: &[&str]) -> Response {
    let mut stream = connect_from(local, addr);
    let mut request = format!("GET {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|h| h.to_ascii_lowercase().starts_with("host:")) {
        request += &format!("Host: {addr}\r\n");
    }
    for h in headers {
        request += &format!("{h}\r\n");
    }
    request += "\r\n";
    stream.write_all(request.as_bytes()).expect("send the request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Response { status, head: head.to_owned(), body: body.to_owned() }
}

/// The body of `/metrics`, asserting a 200.
pub fn scrape(addr: SocketAddr) -> String {
    let r = get(addr, "/metrics", &[]);
    assert_eq!(r.status, 200, "/metrics: {r:?}");
    r.body
}

/// The value of one series (`name{labels}` exactly as exported), if present.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A WebSocket session on `/ws`.
pub type Ws = WebSocket<TcpStream>;

/// Opens `/ws` with optional extra headers; `Err` carries the HTTP status of a refusal.
pub fn ws_connect(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<Ws, u16> {
    ws_connect_from(LOOPBACK, addr, path, headers)
}

/// [`ws_connect`] from another loopback address.
pub fn ws_connect_from(local: IpAddr, addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<Ws, u16> {
    let stream = connect_from(local, addr);
    let mut request = format!("ws://{addr}{path}").into_client_request().expect("a WebSocket request");
    for (name, value) in headers {
        let name = tungstenite::http::HeaderName::from_bytes(name.as_bytes()).expect("header name");
        request.headers_mut().insert(name, value.parse().expect("header value"));
    }
    match tungstenite::client(request, stream) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => Err(r.status().as_u16()),
        Err(e) => panic!("WebSocket handshake failed: {e}"),
    }
}

/// Sends one JSON message.
pub fn ws_send(ws: &mut Ws, value: Value) {
    ws.send(Message::text(value.to_string())).expect("send on the WebSocket");
}

/// The next JSON message, or `None` if the connection closed or nothing came in time.
pub fn ws_next(ws: &mut Ws) -> Option<Value> {
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => return serde_json::from_str(&t).ok(),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// Reads until the server closes; returns its close frame's code and reason (`None`
/// if the connection ended without one, or nothing came within `within`).
pub fn ws_closed(ws: &mut Ws, within: Duration) -> Option<(u16, String)> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        match ws.read() {
            Ok(Message::Close(frame)) => return frame.map(|f| (u16::from(f.code), f.reason.to_string())),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
    None
}

/// Reads messages until one satisfies `want`, for at most `within`.
pub fn ws_wait(ws: &mut Ws, within: Duration, mut want: impl FnMut(&Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let Some(m) = ws_next(ws) else { break };
        if want(&m) {
            return m;
        }
        seen.push(m["type"].to_string() + " " + m["event"].as_str().unwrap_or(""));
    }
    panic!("no matching WebSocket message within {within:?}; saw: {seen:?}");
}
