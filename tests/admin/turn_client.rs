//! A small blocking TURN client over UDP on loopback, built on turnd's own codec: just
//! what the admin tests need to make allocations, permissions, channels and traffic.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};
use stun_codec::rfc5389::attributes::{ErrorCode, Nonce, Realm, Username};
use stun_codec::rfc5766::attributes::{Lifetime, RequestedTransport, XorPeerAddress, XorRelayAddress};
use stun_codec::rfc5766::methods::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, REFRESH};
use stun_codec::{MessageClass, Method, TransactionId};
use turnd::stun::attributes::{Attribute, ChannelNumber, Opaque};
use turnd::stun::integrity::long_term_key_md5;
use turnd::stun::message::{self, IntegritySet, Message, Protection};

/// How long a request waits for its response.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);

/// One client socket with long-term credentials.
pub struct TurnClient {
    socket: UdpSocket,
    server: SocketAddr,
    user: String,
    realm: String,
    key: [u8; 16],
    nonce: Option<String>,
    next_tid: u64,
}

impl TurnClient {
    /// A client on an ephemeral loopback port.
    pub fn new(server: SocketAddr, user: &str, password: &str, realm: &str) -> TurnClient {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a client socket on loopback");
        TurnClient {
            socket,
            server,
            user: user.into(),
            realm: realm.into(),
            key: long_term_key_md5(user, realm, password),
            nonce: None,
            next_tid: 0,
        }
    }

    /// The client's own address (as turnd sees it).
    pub fn local_addr(&self) -> SocketAddr {
        self.socket.local_addr().expect("client address")
    }

    fn tid(&mut self) -> TransactionId {
        self.next_tid += 1;
        let mut t = [7u8; 12];
        t[4..].copy_from_slice(&self.next_tid.to_be_bytes());
        TransactionId::new(t)
    }

    /// Sends an authenticated request (fetching a nonce when challenged) and returns
    /// the final response.
    pub fn request(&mut self, method: Method, attrs: Vec<Attribute>) -> Message {
        for _ in 0..3 {
            let tid = self.tid();
            let mut m = Message::new(MessageClass::Request, method, tid);
            for a in attrs.iter().cloned() {
                m.add_attribute(a);
            }
            m.add_attribute(Username::new(self.user.clone()).expect("username"));
            m.add_attribute(Realm::new(self.realm.clone()).expect("realm"));
            m.add_attribute(Nonce::new(self.nonce.clone().unwrap_or_else(|| "none".into())).expect("nonce"));
            let protection =
                Protection { key: Some((&self.key, IntegritySet { sha1: true, sha256: false })), fingerprint: true };
            let bytes = message::encode(m, protection).expect("encode a request");
            self.socket.send_to(&bytes, self.server).expect("send a request");
            let response = self.response(tid);
            if matches!(error_code(&response), Some(401 | 438)) {
                if let Some(nonce) = response.get_attribute::<Nonce>() {
                    if self.nonce.as_deref() != Some(nonce.value()) {
                        self.nonce = Some(nonce.value().to_owned());
                        continue;
                    }
                }
            }
            return response;
        }
        panic!("no final answer to {method:?} after fresh nonces");
    }

    /// Waits for the response to `tid`, skipping other datagrams (data, stale answers).
    fn response(&self, tid: TransactionId) -> Message {
        let deadline = Instant::now() + RESPONSE_TIMEOUT;
        let mut buf = vec![0u8; 65536];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            self.socket.set_read_timeout(Some(left.max(Duration::from_millis(1)))).expect("set timeout");
            let Ok((n, _)) = self.socket.recv_from(&mut buf) else { break };
            if let Ok(decoded) = message::decode(&buf[..n]) {
                if decoded.message.transaction_id() == tid {
                    return decoded.message;
                }
            }
        }
        panic!("no response from turnd within {RESPONSE_TIMEOUT:?}");
    }

    /// Allocate; returns the relayed address.
    pub fn allocate(&mut self) -> SocketAddr {
        let r = self.request(ALLOCATE, vec![RequestedTransport::new(17).into()]);
        assert_eq!(r.class(), MessageClass::SuccessResponse, "Allocate failed: {:?}", error_code(&r));
        r.get_attribute::<XorRelayAddress>().expect("XOR-RELAYED-ADDRESS").address()
    }

    /// Refresh with `lifetime` seconds (0 deletes); the error code on failure.
    pub fn refresh(&mut self, lifetime: u32) -> Result<(), u16> {
        let lifetime = Lifetime::from_u32(lifetime);
        let r = self.request(REFRESH, vec![lifetime.into()]);
        error_code(&r).map_or(Ok(()), Err)
    }

    /// CreatePermission for `peer`.
    pub fn permit(&mut self, peer: SocketAddr) {
        let r = self.request(CREATE_PERMISSION, vec![XorPeerAddress::new(peer).into()]);
        assert_eq!(error_code(&r), None, "CreatePermission failed");
    }

    /// ChannelBind `channel` to `peer`.
    pub fn bind_channel(&mut self, channel: u16, peer: SocketAddr) {
        let b = channel.to_be_bytes();
        let number: ChannelNumber = Opaque(vec![b[0], b[1], 0, 0]);
        let r = self.request(CHANNEL_BIND, vec![number.into(), XorPeerAddress::new(peer).into()]);
        assert_eq!(error_code(&r), None, "ChannelBind failed");
    }

    /// Sends `payload` as ChannelData on `channel`.
    pub fn send_channel(&self, channel: u16, payload: &[u8]) {
        let mut frame = channel.to_be_bytes().to_vec();
        frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        frame.extend_from_slice(payload);
        frame.resize(frame.len().next_multiple_of(4), 0);
        self.socket.send_to(&frame, self.server).expect("send ChannelData");
    }

    /// The payload of the next ChannelData within `timeout`, if any.
    pub fn recv_channel(&self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            self.socket.set_read_timeout(Some(left.max(Duration::from_millis(1)))).ok()?;
            let (n, _) = self.socket.recv_from(&mut buf).ok()?;
            if n >= 4 && (0x40..0x80).contains(&buf[0]) {
                let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
                return buf.get(4..4 + len).map(<[u8]>::to_vec);
            }
        }
        None
    }
}

/// The error code of a response, if it is an error.
pub fn error_code(m: &Message) -> Option<u16> {
    m.get_attribute::<ErrorCode>().map(|e| e.code())
}
