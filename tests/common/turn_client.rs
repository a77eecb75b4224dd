//! Thin blocking helpers over `turnd::client` for the integration tests: a UDP client
//! that owns its socket (tests also send raw bytes on it), a client for byte streams,
//! and a TLS handshake. The protocol (requests, challenges, integrity, ChannelData,
//! indications) is the library's; only the socket calls and the test-friendly
//! panics live here. Third-party clients live in coturn_clients.rs and aioice_client.rs.

use rustls_pki_types::ServerName;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stun_codec::Method;
use turnd::client::{self, Client, Credentials, DataIndication, Outgoing, Packet, Request, AUTH_ATTEMPTS};
use turnd::stun::attributes::Attribute;
use turnd::stun::message::{self, Message};

/// How long a UDP request waits for its response.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);

/// A library client with the tests' fixed transaction-id seed.
pub fn client(user: &str, password: &str) -> Client {
    Client::new(Credentials::long_term(user, password), *b"turnd-tests\0")
}

/// The error code of a response, if it is an error.
pub fn error_code(m: &Message) -> Option<u16> {
    m.get_attribute::<stun_codec::rfc5389::attributes::ErrorCode>().map(|e| e.code())
}

/// The relayed and mapped addresses of an Allocate success, or its error code.
fn allocation_result(r: &Message) -> Result<(SocketAddr, SocketAddr), u16> {
    let response = client::Response { message: r.clone() };
    if let Some(code) = response.error_code() {
        return Err(code);
    }
    Ok((response.relayed().expect("XOR-RELAYED-ADDRESS"), response.mapped().expect("XOR-MAPPED-ADDRESS")))
}

/// Sends `request` until it gets a final answer, with `exchange` doing one round trip.
fn request_with(client: &mut Client, request: &Request, mut exchange: impl FnMut(&Outgoing) -> Vec<u8>) -> Message {
    for _ in 0..AUTH_ATTEMPTS {
        let sent = client.request(request).expect("encode a request");
        let response = client.response(&sent, &exchange(&sent)).expect("a valid response");
        if !client.learn(&response) {
            return response.message;
        }
    }
    panic!("no final answer to {:?} after {AUTH_ATTEMPTS} attempts", request.method);
}

/// Sends `sent` from `socket` and returns its response, skipping other datagrams
/// (relayed data, late answers) for [`RESPONSE_TIMEOUT`] at most.
fn exchange(socket: &UdpSocket, server: SocketAddr, sent: &Outgoing) -> Option<Vec<u8>> {
    // The test may have set its own read timeout on the socket: it gets it back.
    let before = socket.read_timeout().ok()?;
    let answer = exchange_within(socket, server, sent);
    socket.set_read_timeout(before).ok()?;
    answer
}

fn exchange_within(socket: &UdpSocket, server: SocketAddr, sent: &Outgoing) -> Option<Vec<u8>> {
    socket.send_to(&sent.bytes, server).ok()?;
    let deadline = Instant::now() + RESPONSE_TIMEOUT;
    let mut buf = vec![0u8; 65536];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        socket.set_read_timeout(Some(left.max(Duration::from_millis(1)))).ok()?;
        let (n, from) = socket.recv_from(&mut buf).ok()?;
        if from == server && sent.is_answered_by(&buf[..n]) {
            return Some(buf[..n].to_vec());
        }
    }
    None
}

/// A client socket with long-term credentials.
pub struct TurnClient {
    pub socket: UdpSocket,
    pub server: SocketAddr,
    client: Client,
}

impl TurnClient {
    /// A client bound to `local` (e.g. "127.0.0.1:0") talking to `server`. The realm
    /// is the server's to say (in its 401); `_realm` documents what the test expects.
    pub fn new(local: &str, server: SocketAddr, user: &str, password: &str, _realm: &str) -> TurnClient {
        let socket = UdpSocket::bind(local).expect("bind client socket");
        socket.set_read_timeout(Some(RESPONSE_TIMEOUT)).expect("set timeout");
        TurnClient { socket, server, client: client(user, password) }
    }

    /// A client on an ephemeral loopback port.
    pub fn on_loopback(server: SocketAddr, user: &str, password: &str, realm: &str) -> TurnClient {
        TurnClient::new("127.0.0.1:0", server, user, password, realm)
    }

    /// The client's own address (as turnd sees it).
    pub fn local_addr(&self) -> SocketAddr {
        self.socket.local_addr().expect("client address")
    }

    /// Receives one datagram from the server (skipping anything else).
    pub fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 65536];
        loop {
            let (n, from) = self.socket.recv_from(&mut buf).ok()?;
            if from == self.server {
                buf.truncate(n);
                return Some(buf);
            }
        }
    }

    /// Sends an unauthenticated request and decodes the answer.
    pub fn plain(&mut self, method: Method) -> Option<Message> {
        let sent = self.client.request(&Request::new(method, Vec::new()).anonymous()).ok()?;
        Some(message::decode(&exchange(&self.socket, self.server, &sent)?).ok()?.message)
    }

    /// Sends an authenticated request (getting a nonce first when needed).
    pub fn request(&mut self, method: Method, attrs: Vec<Attribute>) -> Message {
        let (socket, server) = (&self.socket, self.server);
        request_with(&mut self.client, &Request::new(method, attrs), |sent| {
            exchange(socket, server, sent).expect("a response")
        })
    }

    /// Allocates a UDP relay; returns (relayed, mapped) addresses.
    pub fn allocate(&mut self, extra: Vec<Attribute>) -> Result<(SocketAddr, SocketAddr), u16> {
        let mut request = Request::allocate();
        request.attributes.extend(extra);
        allocation_result(&self.request(request.method, request.attributes))
    }

    /// Allocates a UDP relay that must succeed; returns the relayed address.
    pub fn allocate_relay(&mut self) -> SocketAddr {
        match self.allocate(Vec::new()) {
            Ok((relayed, _)) => relayed,
            Err(code) => panic!("Allocate failed: {code}"),
        }
    }

    /// Refresh with `lifetime` seconds (0 deletes); the error code on failure.
    pub fn refresh(&mut self, lifetime: u32) -> Result<(), u16> {
        let r = Request::refresh(lifetime);
        error_code(&self.request(r.method, r.attributes)).map_or(Ok(()), Err)
    }

    /// CreatePermission for `peer`; the error code on failure.
    pub fn create_permission(&mut self, peer: SocketAddr) -> Option<u16> {
        let r = Request::create_permission(peer);
        error_code(&self.request(r.method, r.attributes))
    }

    /// CreatePermission for `peer`, which must succeed.
    pub fn permit(&mut self, peer: SocketAddr) {
        assert_eq!(self.create_permission(peer), None, "CreatePermission failed");
    }

    /// ChannelBind `channel` to `peer`; the error code on failure.
    pub fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> Option<u16> {
        let r = Request::channel_bind(channel, peer);
        error_code(&self.request(r.method, r.attributes))
    }

    /// ChannelBind `channel` to `peer`, which must succeed.
    pub fn bind_channel(&mut self, channel: u16, peer: SocketAddr) {
        assert_eq!(self.channel_bind(channel, peer), None, "ChannelBind failed");
    }

    /// Sends `payload` as ChannelData on `channel`, unpadded.
    pub fn send_channel_data(&self, channel: u16, payload: &[u8]) {
        let frame = client::channel_data(channel, payload, false).expect("ChannelData");
        self.socket.send_to(&frame, self.server).expect("send ChannelData");
    }

    /// Sends `payload` as ChannelData on `channel`, padded to four bytes.
    pub fn send_channel(&self, channel: u16, payload: &[u8]) {
        let frame = client::channel_data(channel, payload, true).expect("ChannelData");
        self.socket.send_to(&frame, self.server).expect("send ChannelData");
    }

    /// Sends `payload` to `peer` in a Send indication.
    pub fn send_indication(&mut self, peer: SocketAddr, payload: &[u8]) {
        let bytes = self.client.send_indication(peer, payload).expect("Send indication");
        self.socket.send_to(&bytes, self.server).expect("send indication");
    }

    /// Receives relayed data: (channel or None for a Data indication, peer, payload).
    pub fn recv_data(&self) -> Option<(Option<u16>, Option<SocketAddr>, Vec<u8>)> {
        let bytes = self.recv()?;
        match Packet::parse(&bytes).ok()? {
            Packet::ChannelData { channel, data } => Some((Some(channel), None, data.to_vec())),
            Packet::Stun(m) => {
                let indication = DataIndication::parse(m).ok()??;
                Some((None, Some(indication.peer), indication.data.to_vec()))
            }
        }
    }

    /// The payload of the next ChannelData within `timeout`, if any.
    pub fn recv_channel(&self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            self.socket.set_read_timeout(Some(left.max(Duration::from_millis(1)))).ok()?;
            let (n, _) = self.socket.recv_from(&mut buf).ok()?;
            if let Ok(Packet::ChannelData { data, .. }) = Packet::parse(&buf[..n]) {
                return Some(data.to_vec());
            }
        }
        None
    }
}

/// A TURN client over a byte stream (TCP or TLS), for framing tests.
pub struct StreamClient {
    client: Client,
}

/// Reads the bytes of one STUN message from a stream (exactly those: what follows
/// may be relayed data the test reads itself).
pub fn read_stun_bytes(stream: &mut impl Read) -> Vec<u8> {
    let mut all = vec![0u8; 20];
    stream.read_exact(&mut all).expect("a STUN header");
    let len = u16::from_be_bytes([all[2], all[3]]) as usize;
    all.resize(20 + len, 0);
    stream.read_exact(&mut all[20..]).expect("the STUN body");
    all
}

/// Reads one STUN message from a stream.
pub fn read_stun(stream: &mut impl Read) -> Message {
    message::decode(&read_stun_bytes(stream)).expect("decodable").message
}

impl StreamClient {
    pub fn new(user: &str, password: &str, _realm: &str) -> StreamClient {
        StreamClient { client: client(user, password) }
    }

    pub fn request(&mut self, stream: &mut (impl Read + Write), method: Method, attrs: Vec<Attribute>) -> Message {
        request_with(&mut self.client, &Request::new(method, attrs), |sent| {
            stream.write_all(&sent.bytes).expect("write request");
            read_stun_bytes(stream)
        })
    }

    /// Sends an unauthenticated request over `stream` and reads the answer.
    pub fn plain(&mut self, stream: &mut (impl Read + Write), method: Method) -> Message {
        let sent = self.client.request(&Request::new(method, Vec::new()).anonymous()).expect("encode");
        stream.write_all(&sent.bytes).expect("write request");
        read_stun(stream)
    }

    pub fn allocate(&mut self, stream: &mut (impl Read + Write)) -> Result<(SocketAddr, SocketAddr), u16> {
        let r = Request::allocate();
        allocation_result(&self.request(stream, r.method, r.attributes))
    }

    pub fn channel_bind(&mut self, stream: &mut (impl Read + Write), channel: u16, peer: SocketAddr) -> Option<u16> {
        let r = Request::channel_bind(channel, peer);
        error_code(&self.request(stream, r.method, r.attributes))
    }
}

pub type TlsStream = turnd::client::blocking::TlsStream;

/// A TLS client configuration accepting any certificate (the tests' servers present
/// throwaway ones). Connections made from one `Arc` of it resume each other's
/// sessions, as a browser's second connection to a server does.
pub fn any_certificate_config() -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(turnd::probe::AcceptAnyCertificate(provider)))
        .with_no_client_auth()
}

/// Connects with TLS and completes the handshake.
pub fn tls_connect(server: SocketAddr) -> TlsStream {
    let tcp = TcpStream::connect(server).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    tls_over(tcp, server.ip()).expect("TLS handshake")
}

/// A TLS handshake (any certificate accepted, the server named by `ip`) over `tcp`,
/// which may already carry something else first (a PROXY protocol header).
pub fn tls_over(tcp: TcpStream, ip: std::net::IpAddr) -> std::io::Result<TlsStream> {
    let config = Arc::new(any_certificate_config());
    let conn = rustls::ClientConnection::new(config, ServerName::IpAddress(ip.into())).expect("client connection");
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// Connects with TLS naming `name` in SNI (any certificate accepted).
pub fn tls_connect_named(server: SocketAddr, name: &str) -> TlsStream {
    let tcp = TcpStream::connect(server).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    let name = ServerName::try_from(name.to_owned()).expect("a DNS name");
    let conn = rustls::ClientConnection::new(Arc::new(any_certificate_config()), name).expect("client connection");
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).expect("TLS handshake");
    }
    stream
}

/// The presented leaf certificate as lossy text (enough to find its common name).
pub fn peer_certificate_text(stream: &TlsStream) -> String {
    let certs = stream.conn.peer_certificates().unwrap_or_default();
    certs.first().map(|c| String::from_utf8_lossy(c.as_ref()).into_owned()).unwrap_or_default()
}
