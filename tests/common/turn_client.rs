//! A minimal TURN client over UDP for integration tests, built on turnd's own codec
//! (the third-party clients live in coturn_clients.rs and aioice_client.rs).

#![allow(dead_code)]

use rustls_pki_types::ServerName;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::Duration;
use stun_codec::rfc5389::attributes::{ErrorCode, Nonce, Realm, Username, XorMappedAddress};
use stun_codec::rfc5766::attributes::{Data, RequestedTransport, XorPeerAddress, XorRelayAddress};
use stun_codec::rfc5766::methods::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, SEND};
use stun_codec::{MessageClass, Method, TransactionId};
use turnd::stun::attributes::{Attribute, ChannelNumber, Opaque};
use turnd::stun::integrity::long_term_key_md5;
use turnd::stun::message::{self, IntegritySet, Message, Protection};

/// Long-term credentials and the nonce learned from the server.
pub struct Credentials {
    user: String,
    realm: String,
    password: String,
    nonce: Option<String>,
    next_tid: u64,
}

impl Credentials {
    pub fn new(user: &str, password: &str, realm: &str) -> Credentials {
        Credentials { user: user.into(), realm: realm.into(), password: password.into(), nonce: None, next_tid: 1 }
    }

    pub fn tid(&mut self) -> TransactionId {
        self.next_tid += 1;
        let mut t = [0u8; 12];
        t[4..].copy_from_slice(&self.next_tid.to_be_bytes());
        TransactionId::new(t)
    }

    /// Encodes a request, authenticated once a nonce is known.
    pub fn build(&mut self, method: Method, attrs: &[Attribute]) -> Vec<u8> {
        let mut m = Message::new(MessageClass::Request, method, self.tid());
        for a in attrs {
            m.add_attribute(a.clone());
        }
        let protection = if let Some(nonce) = &self.nonce {
            m.add_attribute(Username::new(self.user.clone()).expect("username"));
            m.add_attribute(Realm::new(self.realm.clone()).expect("realm"));
            m.add_attribute(Nonce::new(nonce.clone()).expect("nonce"));
            Some(long_term_key_md5(&self.user, &self.realm, &self.password))
        } else {
            None
        };
        let set = IntegritySet { sha1: true, sha256: false };
        let key = protection.as_ref().map(|k| (&k[..], set));
        message::encode(m, Protection { key, fingerprint: true }).expect("encode request")
    }

    /// True when the response is a 401/438 with a new nonce: send again.
    pub fn wants_retry(&mut self, response: &Message) -> bool {
        if !matches!(error_code(response), Some(401) | Some(438)) {
            return false;
        }
        let fresh = response.get_attribute::<Nonce>().map(|n| n.value().to_owned());
        if fresh.is_some() && fresh != self.nonce {
            self.nonce = fresh;
            return true;
        }
        false
    }
}

/// Sends `method` until it gets a final answer, with `exchange` doing one round trip.
fn request_with(
    creds: &mut Credentials,
    method: Method,
    attrs: Vec<Attribute>,
    mut exchange: impl FnMut(&[u8]) -> Message,
) -> Message {
    for _ in 0..3 {
        let response = exchange(&creds.build(method, &attrs));
        if !creds.wants_retry(&response) {
            return response;
        }
    }
    panic!("no final answer after three attempts");
}

/// The relayed and mapped addresses of an Allocate success, or its error code.
fn allocation_result(r: &Message) -> Result<(SocketAddr, SocketAddr), u16> {
    if let Some(code) = error_code(r) {
        return Err(code);
    }
    let relayed = r.get_attribute::<XorRelayAddress>().expect("XOR-RELAYED-ADDRESS").address();
    let mapped = r.get_attribute::<XorMappedAddress>().expect("XOR-MAPPED-ADDRESS").address();
    Ok((relayed, mapped))
}

fn channel_number(channel: u16) -> Attribute {
    let b = channel.to_be_bytes();
    let number: ChannelNumber = Opaque(vec![b[0], b[1], 0, 0]);
    number.into()
}

/// A client socket with long-term credentials.
pub struct TurnClient {
    pub socket: UdpSocket,
    pub server: SocketAddr,
    creds: Credentials,
}

/// The error code of a response, if it is an error.
pub fn error_code(m: &Message) -> Option<u16> {
    m.get_attribute::<ErrorCode>().map(|e| e.code())
}

impl TurnClient {
    /// A client bound to `local` (e.g. "127.0.0.1:0") talking to `server`.
    pub fn new(local: &str, server: SocketAddr, user: &str, password: &str, realm: &str) -> TurnClient {
        let socket = UdpSocket::bind(local).expect("bind client socket");
        socket.set_read_timeout(Some(Duration::from_secs(3))).expect("set timeout");
        TurnClient { socket, server, creds: Credentials::new(user, password, realm) }
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
        let m = Message::new(MessageClass::Request, method, self.creds.tid());
        let bytes = message::encode(m, Protection { key: None, fingerprint: true })?;
        self.socket.send_to(&bytes, self.server).ok()?;
        Some(message::decode(&self.recv()?).ok()?.message)
    }

    /// Sends an authenticated request (getting a nonce first when needed).
    pub fn request(&mut self, method: Method, attrs: Vec<Attribute>) -> Message {
        let (socket, server) = (&self.socket, self.server);
        request_with(&mut self.creds, method, attrs, |bytes| {
            socket.send_to(bytes, server).expect("send request");
            let mut buf = vec![0u8; 65536];
            loop {
                let (n, from) = socket.recv_from(&mut buf).expect("a response");
                if from == server {
                    return message::decode(&buf[..n]).expect("decodable response").message;
                }
            }
        })
    }

    /// Allocates a UDP relay; returns (relayed, mapped) addresses.
    pub fn allocate(&mut self, extra: Vec<Attribute>) -> Result<(SocketAddr, SocketAddr), u16> {
        let mut attrs = vec![RequestedTransport::new(17).into()];
        attrs.extend(extra);
        allocation_result(&self.request(ALLOCATE, attrs))
    }

    pub fn create_permission(&mut self, peer: SocketAddr) -> Option<u16> {
        error_code(&self.request(CREATE_PERMISSION, vec![XorPeerAddress::new(peer).into()]))
    }

    pub fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> Option<u16> {
        error_code(&self.request(CHANNEL_BIND, vec![channel_number(channel), XorPeerAddress::new(peer).into()]))
    }

    pub fn send_channel_data(&self, channel: u16, payload: &[u8]) {
        let mut v = channel.to_be_bytes().to_vec();
        v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        v.extend_from_slice(payload);
        self.socket.send_to(&v, self.server).expect("send ChannelData");
    }

    pub fn send_indication(&mut self, peer: SocketAddr, payload: &[u8]) {
        let mut m = Message::new(MessageClass::Indication, SEND, self.creds.tid());
        m.add_attribute(XorPeerAddress::new(peer));
        m.add_attribute(Data::new(payload.to_vec()).expect("data"));
        let bytes = message::encode(m, Protection { key: None, fingerprint: false }).expect("encode");
        self.socket.send_to(&bytes, self.server).expect("send indication");
    }

    /// Receives relayed data: (channel or None for a Data indication, peer, payload).
    pub fn recv_data(&self) -> Option<(Option<u16>, Option<SocketAddr>, Vec<u8>)> {
        let bytes = self.recv()?;
        if (0x40..0x80).contains(bytes.first()?) {
            let channel = u16::from_be_bytes([bytes[0], bytes[1]]);
            let len = u16::from_be_bytes([bytes[2], bytes[3]]) as usize;
            return Some((Some(channel), None, bytes.get(4..4 + len)?.to_vec()));
        }
        let m = message::decode(&bytes).ok()?.message;
        let peer = m.get_attribute::<XorPeerAddress>()?.address();
        Some((None, Some(peer), m.get_attribute::<Data>()?.data().to_vec()))
    }
}

/// A TURN client over a byte stream (TCP or TLS), for framing tests.
pub struct StreamClient {
    creds: Credentials,
}

/// Reads one STUN message from a stream.
pub fn read_stun(stream: &mut impl Read) -> Message {
    let mut head = [0u8; 20];
    stream.read_exact(&mut head).expect("a STUN header");
    let len = u16::from_be_bytes([head[2], head[3]]) as usize;
    let mut all = head.to_vec();
    all.resize(20 + len, 0);
    stream.read_exact(&mut all[20..]).expect("the STUN body");
    message::decode(&all).expect("decodable").message
}

impl StreamClient {
    pub fn new(user: &str, password: &str, realm: &str) -> StreamClient {
        StreamClient { creds: Credentials::new(user, password, realm) }
    }

    pub fn request(&mut self, stream: &mut (impl Read + Write), method: Method, attrs: Vec<Attribute>) -> Message {
        request_with(&mut self.creds, method, attrs, |bytes| {
            stream.write_all(bytes).expect("write request");
            read_stun(stream)
        })
    }

    pub fn allocate(&mut self, stream: &mut (impl Read + Write)) -> Result<(SocketAddr, SocketAddr), u16> {
        allocation_result(&self.request(stream, ALLOCATE, vec![RequestedTransport::new(17).into()]))
    }

    pub fn channel_bind(&mut self, stream: &mut (impl Read + Write), channel: u16, peer: SocketAddr) -> Option<u16> {
        error_code(&self.request(stream, CHANNEL_BIND, vec![channel_number(channel), XorPeerAddress::new(peer).into()]))
    }
}

pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Connects with TLS and completes the handshake.
pub fn tls_connect(server: SocketAddr) -> TlsStream {
    let tcp = TcpStream::connect(server).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    tls_over(tcp, server.ip()).expect("TLS handshake")
}

/// A TLS handshake (any certificate accepted, the server named by `ip`) over `tcp`,
/// which may already carry something else first (a PROXY protocol header).
pub fn tls_over(tcp: TcpStream, ip: std::net::IpAddr) -> std::io::Result<TlsStream> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(turnd::probe::AcceptAnyCertificate(provider)))
        .with_no_client_auth();
    let conn =
        rustls::ClientConnection::new(Arc::new(config), ServerName::IpAddress(ip.into())).expect("client connection");
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// The presented leaf certificate as lossy text (enough to find its common name).
pub fn peer_certificate_text(stream: &TlsStream) -> String {
    let certs = stream.conn.peer_certificates().unwrap_or_default();
    certs.first().map(|c| String::from_utf8_lossy(c.as_ref()).into_owned()).unwrap_or_default()
}
