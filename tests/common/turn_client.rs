//! A minimal TURN client over UDP for integration tests, built on turnd's own codec
//! (the third-party clients live in coturn_clients.rs and aioice_client.rs).

#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;
use stun_codec::rfc5389::attributes::{ErrorCode, Nonce, Realm, Username, XorMappedAddress};
use stun_codec::rfc5766::attributes::{Data, RequestedTransport, XorPeerAddress, XorRelayAddress};
use stun_codec::rfc5766::methods::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, SEND};
use stun_codec::{MessageClass, Method, TransactionId};
use turnd::stun::attributes::{Attribute, ChannelNumber, Opaque};
use turnd::stun::integrity::long_term_key_md5;
use turnd::stun::message::{self, IntegritySet, Message, Protection};

/// A client socket with long-term credentials.
pub struct TurnClient {
    pub socket: UdpSocket,
    pub server: SocketAddr,
    user: String,
    realm: String,
    password: String,
    nonce: Option<String>,
    next_tid: u64,
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
        TurnClient {
            socket,
            server,
            user: user.into(),
            realm: realm.into(),
            password: password.into(),
            nonce: None,
            next_tid: 1,
        }
    }

    pub fn tid(&mut self) -> TransactionId {
        self.next_tid += 1;
        let mut t = [0u8; 12];
        t[4..].copy_from_slice(&self.next_tid.to_be_bytes());
        TransactionId::new(t)
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
        let m = Message::new(MessageClass::Request, method, self.tid());
        let bytes = message::encode(m, Protection { key: None, fingerprint: true })?;
        self.socket.send_to(&bytes, self.server).ok()?;
        Some(message::decode(&self.recv()?).ok()?.message)
    }

    /// Sends an authenticated request (getting a nonce first when needed).
    pub fn request(&mut self, method: Method, attrs: Vec<Attribute>) -> Message {
        for _ in 0..3 {
            let mut m = Message::new(MessageClass::Request, method, self.tid());
            for a in &attrs {
                m.add_attribute(a.clone());
            }
            let bytes = if let Some(nonce) = &self.nonce {
                m.add_attribute(Username::new(self.user.clone()).expect("username"));
                m.add_attribute(Realm::new(self.realm.clone()).expect("realm"));
                m.add_attribute(Nonce::new(nonce.clone()).expect("nonce"));
                let key = long_term_key_md5(&self.user, &self.realm, &self.password);
                let set = IntegritySet { sha1: true, sha256: false };
                message::encode(m, Protection { key: Some((&key, set)), fingerprint: true })
            } else {
                message::encode(m, Protection { key: None, fingerprint: true })
            }
            .expect("encode request");
            self.socket.send_to(&bytes, self.server).expect("send request");
            let response = message::decode(&self.recv().expect("a response")).expect("decodable response").message;
            if matches!(error_code(&response), Some(401) | Some(438)) {
                let fresh = response.get_attribute::<Nonce>().map(|n| n.value().to_owned());
                if fresh.is_some() && fresh != self.nonce {
                    self.nonce = fresh;
                    continue;
                }
            }
            return response;
        }
        panic!("no final answer after three attempts");
    }

    /// Allocates a UDP relay; returns (relayed, mapped) addresses.
    pub fn allocate(&mut self, extra: Vec<Attribute>) -> Result<(SocketAddr, SocketAddr), u16> {
        let mut attrs = vec![RequestedTransport::new(17).into()];
        attrs.extend(extra);
        let r = self.request(ALLOCATE, attrs);
        if let Some(code) = error_code(&r) {
            return Err(code);
        }
        let relayed = r.get_attribute::<XorRelayAddress>().expect("XOR-RELAYED-ADDRESS").address();
        let mapped = r.get_attribute::<XorMappedAddress>().expect("XOR-MAPPED-ADDRESS").address();
        Ok((relayed, mapped))
    }

    pub fn create_permission(&mut self, peer: SocketAddr) -> Option<u16> {
        error_code(&self.request(CREATE_PERMISSION, vec![XorPeerAddress::new(peer).into()]))
    }

    pub fn channel_bind(&mut self, channel: u16, peer: SocketAddr) -> Option<u16> {
        let b = channel.to_be_bytes();
        let number: ChannelNumber = Opaque(vec![b[0], b[1], 0, 0]);
        error_code(&self.request(CHANNEL_BIND, vec![number.into(), XorPeerAddress::new(peer).into()]))
    }

    pub fn send_channel_data(&self, channel: u16, payload: &[u8]) {
        let mut v = channel.to_be_bytes().to_vec();
        v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        v.extend_from_slice(payload);
        self.socket.send_to(&v, self.server).expect("send ChannelData");
    }

    pub fn send_indication(&mut self, peer: SocketAddr, payload: &[u8]) {
        let mut m = Message::new(MessageClass::Indication, SEND, self.tid());
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
