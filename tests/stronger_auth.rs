//! RFC 8489 stronger integrity: the password algorithm negotiation (MD5 and SHA-256
//! keys), MESSAGE-INTEGRITY-SHA256, USERHASH and the nonce cookie.
//!
//! The scenarios drive the sans-IO core on virtual time (no sockets, no sleeps), one
//! per branch of RFC 8489 §9.2.4; the last test runs the same scripted client over a
//! real UDP socket against the built binary. The clients this project did not write
//! (coturn's uclient, aioice) only speak RFC 5389 long-term credentials (MD5 key,
//! MESSAGE-INTEGRITY): coturn_clients.rs and aioice_client.rs cover that path, and
//! the RFC's own Appendix B.1 vector covers SHA-256 and USERHASH (in the library's
//! unit tests).
// A test may unwrap (a panic is a failed test) and use unsafe for process plumbing
// (signals, namespaces); the server code denies both (Cargo.toml [lints]).
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{relay_port_range, TurndProcess, UdpEchoPeer};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};
use stun_codec::rfc5389::attributes::{ErrorCode, Nonce, Realm, Username};
use stun_codec::rfc5766::attributes::{RequestedTransport, XorPeerAddress, XorRelayAddress};
use stun_codec::rfc5766::methods::{ALLOCATE, CHANNEL_BIND, REFRESH};
use stun_codec::{MessageClass, Method, TransactionId};
use turnd::stun::attributes::Userhash;
use turnd::stun::attributes::{Algorithm, Attribute, ChannelNumber, Opaque, PasswordAlgorithm, PasswordAlgorithms};
use turnd::stun::integrity::{
    append_fingerprint, append_integrity, long_term_key_md5, long_term_key_sha256, userhash, IntegrityKind,
};
use turnd::stun::message::{self, Decoded, IntegritySet, Message, Protection};
use turnd::turn::auth::{rest_password, Credentials};
use turnd::turn::{CoreConfig, Event, FiveTuple, Ledger, Output, Received, Rng, Server, Transport};

const REALM: &str = "example.org";
const UNIX_NOW: u64 = 1_800_000_000;
/// What turnd sends in PASSWORD-ALGORITHMS: SHA-256 then MD5, no parameters.
const OFFERED: [u8; 8] = [0x00, 0x02, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00];

const SHA1: IntegritySet = IntegritySet { sha1: true, sha256: false };
const SHA256: IntegritySet = IntegritySet { sha1: false, sha256: true };
const BOTH: IntegritySet = IntegritySet { sha1: true, sha256: true };

/// How the scripted client authenticates.
#[derive(Debug, Clone, Copy)]
struct Style {
    /// Echo PASSWORD-ALGORITHMS and choose this PASSWORD-ALGORITHM; `None`: an RFC
    /// 5389 client, which sends neither.
    algorithm: Option<Algorithm>,
    /// USERHASH in place of USERNAME.
    userhash: bool,
    /// Which integrity attributes the requests carry.
    integrity: IntegritySet,
}

const RFC5389: Style = Style { algorithm: None, userhash: false, integrity: SHA1 };
const RFC8489_SHA256: Style = Style { algorithm: Some(Algorithm::Sha256), userhash: false, integrity: SHA256 };

/// A long-term credential client written from RFC 8489 §9.2.5, on turnd's codec.
struct Client {
    user: String,
    password: String,
    style: Style,
    nonce: Option<String>,
    /// PASSWORD-ALGORITHMS from the last challenge, echoed as received.
    offered: Option<PasswordAlgorithms>,
    next_tid: u32,
}

impl Client {
    fn new(user: &str, password: &str, style: Style) -> Client {
        Client { user: user.into(), password: password.into(), style, nonce: None, offered: None, next_tid: 0 }
    }

    /// The key of the algorithm in use.
    fn key(&self) -> Vec<u8> {
        match self.style.algorithm {
            Some(Algorithm::Sha256) => long_term_key_sha256(&self.user, REALM, &self.password).to_vec(),
            _ => long_term_key_md5(&self.user, REALM, &self.password).to_vec(),
        }
    }

    /// A request with the credential attributes, without integrity or fingerprint.
    fn unprotected(&mut self, method: Method, attrs: &[Attribute]) -> Vec<u8> {
        self.next_tid += 1;
        let mut tid = [7u8; 12];
        tid[8..].copy_from_slice(&self.next_tid.to_be_bytes());
        let mut m = Message::new(MessageClass::Request, method, TransactionId::new(tid));
        for a in attrs {
            m.add_attribute(a.clone());
        }
        if let Some(nonce) = &self.nonce {
            if self.style.userhash {
                let hash: Userhash = Opaque(userhash(&self.user, REALM).to_vec());
                m.add_attribute(hash);
            } else {
                m.add_attribute(Username::new(self.user.clone()).expect("username"));
            }
            m.add_attribute(Realm::new(REALM.into()).expect("realm"));
            m.add_attribute(Nonce::new(nonce.clone()).expect("nonce"));
            if let Some(algorithm) = self.style.algorithm {
                m.add_attribute(self.offered.clone().expect("PASSWORD-ALGORITHMS in the challenge"));
                m.add_attribute(PasswordAlgorithm::new(algorithm));
            }
        }
        message::encode(m, Protection { key: None, fingerprint: false }).expect("encode")
    }

    /// A request protected the way the style says (unprotected before the first
    /// challenge, RFC 8489 §9.2.3.1).
    fn build(&mut self, method: Method, attrs: &[Attribute]) -> Vec<u8> {
        let mut bytes = self.unprotected(method, attrs);
        if self.nonce.is_some() {
            let key = self.key();
            if self.style.integrity.sha1 {
                append_integrity(&mut bytes, IntegrityKind::Sha1, &key);
            }
            if self.style.integrity.sha256 {
                append_integrity(&mut bytes, IntegrityKind::Sha256, &key);
            }
        }
        append_fingerprint(&mut bytes);
        bytes
    }

    /// Learns the nonce and algorithms of a 401/438; true when worth a retry.
    fn learn(&mut self, response: &Message) -> bool {
        if !matches!(error_code(response), Some(401 | 438)) {
            return false;
        }
        let fresh = response.get_attribute::<Nonce>().map(|n| n.value().to_owned());
        self.offered = response.get_attribute::<PasswordAlgorithms>().cloned();
        if fresh.is_some() && fresh != self.nonce {
            self.nonce = fresh;
            return true;
        }
        false
    }

    /// Sends `method` until a final answer, with `exchange` doing one round trip.
    fn request(
        &mut self,
        method: Method,
        attrs: &[Attribute],
        mut exchange: impl FnMut(&[u8]) -> Vec<u8>,
    ) -> (Decoded, Vec<u8>) {
        for _ in 0..3 {
            let bytes = exchange(&self.build(method, attrs));
            let decoded = message::decode(&bytes).expect("decodable response");
            if !self.learn(&decoded.message) {
                return (decoded, bytes);
            }
        }
        panic!("no final answer after three attempts");
    }
}

fn error_code(m: &Message) -> Option<u16> {
    m.get_attribute::<ErrorCode>().map(|e| e.code())
}

fn allocate_attrs() -> Vec<Attribute> {
    vec![RequestedTransport::new(17).into()]
}

/// Which integrity attributes a response carries, and whether they verify with `key`.
fn protection(response: &Decoded, bytes: &[u8], key: &[u8]) -> (Option<bool>, Option<bool>) {
    (response.integrity_sha1.map(|i| i.verify(key, bytes)), response.integrity_sha256.map(|i| i.verify(key, bytes)))
}

/// A deterministic random source.
struct CountingRng(u8);

impl Rng for CountingRng {
    fn fill(&mut self, dest: &mut [u8]) {
        for b in dest {
            *b = self.0;
            self.0 = self.0.wrapping_add(1);
        }
    }
}

/// The core on virtual time, with one client 5-tuple; relay sockets always bind.
struct Core {
    server: Server,
    ledger: std::cell::RefCell<Ledger>,
    now: Instant,
    from: FiveTuple,
    events: Vec<Event>,
}

impl Core {
    fn new(credentials: Credentials) -> Core {
        let config = CoreConfig { credentials, port_range: 50000..=50009, ..CoreConfig::default() };
        let now = Instant::now();
        let ledger = std::cell::RefCell::new(Ledger::new(&config));
        Core {
            server: Server::new(config, Box::new(CountingRng(0)), now, &ledger),
            ledger,
            now,
            from: FiveTuple {
                transport: Transport::Udp,
                client: "198.51.100.1:40000".parse().unwrap(),
                server: "10.0.0.1:3478".parse().unwrap(),
                tenant: turnd::turn::TenantId::DEFAULT,
            },
            events: Vec::new(),
        }
    }

    fn with_users() -> Core {
        let mut credentials = Credentials::new(REALM);
        credentials.add_user("alice", "secret");
        credentials.add_user_key("carol", long_term_key_md5("carol", REALM, "opensesame"));
        Core::new(credentials)
    }

    /// Feeds one request and returns the one response it gets.
    fn exchange(&mut self, bytes: &[u8]) -> Vec<u8> {
        assert_eq!(self.server.handle_client_packet(self.now, self.from, bytes), Received::Request);
        self.server.handle_request(self.now, UNIX_NOW, self.from, bytes, &self.ledger);
        let mut sent = Vec::new();
        while let Some(output) = self.server.poll_output() {
            match output {
                Output::Transmit { bytes, .. } => sent.push(bytes),
                Output::BindRelay { allocation, local, .. } => {
                    self.server.handle_relay_bound(self.now, allocation, local, Ok(local), &self.ledger)
                }
                Output::Event(e) => self.events.push(e),
                _ => {}
            }
        }
        assert_eq!(sent.len(), 1, "one response per request");
        sent.remove(0)
    }

    fn request(&mut self, client: &mut Client, method: Method, attrs: &[Attribute]) -> (Decoded, Vec<u8>) {
        client.request(method, attrs, |bytes| self.exchange(bytes))
    }

    fn created_for(&self) -> Vec<&str> {
        let created = self.events.iter().filter_map(|e| match e {
            Event::AllocationCreated { username, .. } => Some(username.as_str()),
            _ => None,
        });
        created.collect()
    }
}

#[test]
fn rfc8489_9_2_4_challenge_carries_realm_cookie_nonce_and_password_algorithms() {
    let mut core = Core::with_users();
    let mut client = Client::new("alice", "secret", RFC5389);
    let bytes = core.exchange(&client.build(ALLOCATE, &allocate_attrs()));
    let challenge = message::decode(&bytes).unwrap();
    assert_eq!(error_code(&challenge.message), Some(401));
    assert_eq!(challenge.message.get_attribute::<Realm>().unwrap().text(), REALM);
    let nonce = challenge.message.get_attribute::<Nonce>().unwrap().value().to_owned();
    // "obMatJos2", then base64 of the feature bits: password algorithms and username
    // anonymity (bits 0 and 1) for a server with static users only.
    assert!(nonce.starts_with("obMatJos2AAAD"), "{nonce}");
    assert!(nonce.len() < 128);
    let offered = challenge.message.get_attribute::<PasswordAlgorithms>().unwrap();
    assert_eq!(offered.value(), &OFFERED);
    assert!(challenge.integrity_sha1.is_none() && challenge.integrity_sha256.is_none());
}

#[test]
fn rfc5389_client_keeps_the_md5_key_and_message_integrity() {
    let mut core = Core::with_users();
    let mut client = Client::new("alice", "secret", RFC5389);
    let (response, bytes) = core.request(&mut client, ALLOCATE, &allocate_attrs());
    assert_eq!(response.message.class(), MessageClass::SuccessResponse);
    let md5 = long_term_key_md5("alice", REALM, "secret");
    assert_eq!(protection(&response, &bytes, &md5), (Some(true), None), "MESSAGE-INTEGRITY only");
    // A user configured by precomputed MD5 key works as before too.
    core.from.client = "198.51.100.1:40001".parse().unwrap();
    let mut carol = Client::new("carol", "opensesame", RFC5389);
    let (response, _) = core.request(&mut carol, ALLOCATE, &allocate_attrs());
    assert_eq!(response.message.class(), MessageClass::SuccessResponse);
    assert_eq!(core.created_for(), vec!["alice", "carol"]);
}

#[test]
fn rfc8489_9_2_4_sha256_negotiation_uses_the_sha256_key() {
    let mut core = Core::with_users();
    let mut client = Client::new("alice", "secret", RFC8489_SHA256);
    let (response, bytes) = core.request(&mut client, ALLOCATE, &allocate_attrs());
    assert_eq!(response.message.class(), MessageClass::SuccessResponse, "{:?}", response.message);
    let sha256 = long_term_key_sha256("alice", REALM, "secret");
    assert_eq!(protection(&response, &bytes, &sha256), (None, Some(true)), "MESSAGE-INTEGRITY-SHA256 only");
    // Later requests of the allocation authenticate the same way.
    let (refresh, bytes) = core.request(&mut client, REFRESH, &[]);
    assert_eq!(refresh.message.class(), MessageClass::SuccessResponse);
    assert_eq!(protection(&refresh, &bytes, &sha256), (None, Some(true)));
}

#[test]
fn rfc8489_9_2_4_negotiated_md5_answers_with_sha256_integrity() {
    let mut core = Core::with_users();
    let style = Style { algorithm: Some(Algorithm::Md5), userhash: false, integrity: SHA1 };
    let mut client = Client::new("alice", "secret", style);
    let (response, bytes) = core.request(&mut client, ALLOCATE, &allocate_attrs());
    assert_eq!(response.message.class(), MessageClass::SuccessResponse);
    // After a negotiation every response carries MESSAGE-INTEGRITY-SHA256, and the
    // MESSAGE-INTEGRITY this request used.
    let md5 = long_term_key_md5("alice", REALM, "secret");
    assert_eq!(protection(&response, &bytes, &md5), (Some(true), Some(true)));
}

#[test]
fn rfc8489_9_2_4_tampered_password_algorithms_get_400() {
    let mut core = Core::with_users();
    let md5_only = PasswordAlgorithms::new(&[Algorithm::Md5]);
    let reordered = PasswordAlgorithms::new(&[Algorithm::Md5, Algorithm::Sha256]);
    let unknown: PasswordAlgorithm = Opaque(vec![0x00, 0x03, 0x00, 0x00]);
    let with_params: PasswordAlgorithm = Opaque(vec![0x00, 0x02, 0x00, 0x04, 1, 2, 3, 4]);
    let cases: Vec<(&str, Option<PasswordAlgorithms>, Option<PasswordAlgorithm>)> = vec![
        ("SHA-256 stripped from the list", Some(md5_only.clone()), Some(PasswordAlgorithm::new(Algorithm::Md5))),
        ("list reordered", Some(reordered), Some(PasswordAlgorithm::new(Algorithm::Md5))),
        ("algorithm without the list", None, Some(PasswordAlgorithm::new(Algorithm::Sha256))),
        ("list without the algorithm", Some(PasswordAlgorithms::new(&[Algorithm::Sha256, Algorithm::Md5])), None),
        ("algorithm not offered", Some(PasswordAlgorithms::new(&[Algorithm::Sha256, Algorithm::Md5])), Some(unknown)),
        ("parameters", Some(PasswordAlgorithms::new(&[Algorithm::Sha256, Algorithm::Md5])), Some(with_params)),
    ];
    let mut client = Client::new("alice", "secret", RFC5389);
    let challenge = message::decode(&core.exchange(&client.build(ALLOCATE, &allocate_attrs()))).unwrap();
    assert!(client.learn(&challenge.message));
    for (case, list, chosen) in cases {
        let mut attrs = allocate_attrs();
        attrs.extend(list.map(Attribute::from));
        attrs.extend(chosen.map(Attribute::from));
        // Signed with the SHA-256 key, so only the negotiation can refuse it.
        let mut bytes = client.unprotected(ALLOCATE, &attrs);
        append_integrity(&mut bytes, IntegrityKind::Sha256, &long_term_key_sha256("alice", REALM, "secret"));
        let response = message::decode(&core.exchange(&bytes)).unwrap();
        assert_eq!(error_code(&response.message), Some(400), "{case}");
        assert!(response.integrity_sha256.is_none(), "{case}: a 400 here cannot be protected");
    }
    assert_eq!(core.server.allocation_count(), 0);
}

#[test]
fn rfc8489_14_4_userhash_finds_a_static_user() {
    let mut core = Core::with_users();
    let style = Style { algorithm: Some(Algorithm::Sha256), userhash: true, integrity: SHA256 };
    let mut client = Client::new("alice", "secret", style);
    let (response, bytes) = core.request(&mut client, ALLOCATE, &allocate_attrs());
    assert_eq!(response.message.class(), MessageClass::SuccessResponse, "{:?}", response.message);
    let sha256 = long_term_key_sha256("alice", REALM, "secret");
    assert_eq!(protection(&response, &bytes, &sha256), (None, Some(true)));
    assert_eq!(core.created_for(), vec!["alice"], "the allocation belongs to the user behind the hash");
    // USERHASH with the RFC 5389 MD5 key works for static users as well.
    core.from.client = "198.51.100.1:40001".parse().unwrap();
    let style = Style { algorithm: None, userhash: true, integrity: SHA1 };
    let mut carol = Client::new("carol", "opensesame", style);
    assert_eq!(core.request(&mut carol, ALLOCATE, &allocate_attrs()).0.message.class(), MessageClass::SuccessResponse);
    // A hash nobody has: 401.
    core.from.client = "198.51.100.1:40002".parse().unwrap();
    let mut nobody = Client::new("mallory", "secret", style);
    assert_eq!(error_code(&core.request(&mut nobody, ALLOCATE, &allocate_attrs()).0.message), Some(401));
}

#[test]
fn rfc8489_14_4_username_and_userhash_together_get_400() {
    let mut core = Core::with_users();
    let mut client = Client::new("alice", "secret", RFC5389);
    let challenge = message::decode(&core.exchange(&client.build(ALLOCATE, &allocate_attrs()))).unwrap();
    assert!(client.learn(&challenge.message));
    let hash: Userhash = Opaque(userhash("alice", REALM).to_vec());
    let mut attrs = allocate_attrs();
    attrs.push(hash.into());
    let bytes = client.build(ALLOCATE, &attrs);
    assert_eq!(error_code(&message::decode(&core.exchange(&bytes)).unwrap().message), Some(400));
}

#[test]
fn rest_usernames_negotiate_sha256_but_cannot_be_found_by_hash() {
    let mut credentials = Credentials::new(REALM);
    credentials.add_secret(b"north");
    let mut core = Core::new(credentials);
    let username = format!("{}:bob", UNIX_NOW + 3600);
    let password = rest_password(b"north", &username);
    let mut client = Client::new(&username, &password, RFC8489_SHA256);
    let (response, bytes) = core.request(&mut client, ALLOCATE, &allocate_attrs());
    assert_eq!(response.message.class(), MessageClass::SuccessResponse, "{:?}", response.message);
    let sha256 = long_term_key_sha256(&username, REALM, &password);
    assert_eq!(protection(&response, &bytes, &sha256), (None, Some(true)));
    // With REST secrets, the cookie does not ask clients for USERHASH (bit 1 clear)...
    assert!(client.nonce.as_deref().unwrap().starts_with("obMatJos2AAAB"));
    // ...because a REST username sent as a hash cannot be found.
    core.from.client = "198.51.100.1:40001".parse().unwrap();
    let style = Style { algorithm: Some(Algorithm::Sha256), userhash: true, integrity: SHA256 };
    let mut hashed = Client::new(&username, &password, style);
    assert_eq!(error_code(&core.request(&mut hashed, ALLOCATE, &allocate_attrs()).0.message), Some(401));
}

#[test]
fn precomputed_md5_key_users_get_401_for_sha256() {
    let mut core = Core::with_users();
    let mut carol = Client::new("carol", "opensesame", RFC8489_SHA256);
    let (response, _) = core.request(&mut carol, ALLOCATE, &allocate_attrs());
    assert_eq!(error_code(&response.message), Some(401));
    // The same user negotiating MD5 gets in.
    let style = Style { algorithm: Some(Algorithm::Md5), userhash: false, integrity: SHA256 };
    let mut carol = Client::new("carol", "opensesame", style);
    let (response, bytes) = core.request(&mut carol, ALLOCATE, &allocate_attrs());
    assert_eq!(response.message.class(), MessageClass::SuccessResponse);
    let md5 = long_term_key_md5("carol", REALM, "opensesame");
    assert_eq!(protection(&response, &bytes, &md5), (None, Some(true)));
}

#[test]
fn rfc8489_14_6_message_integrity_sha256_alone_with_the_md5_key() {
    // An RFC 5389-style request (no algorithm attributes) protected by
    // MESSAGE-INTEGRITY-SHA256 only: MD5 key, and the response mirrors the request.
    let mut core = Core::with_users();
    let style = Style { algorithm: None, userhash: false, integrity: SHA256 };
    let mut client = Client::new("alice", "secret", style);
    let (response, bytes) = core.request(&mut client, ALLOCATE, &allocate_attrs());
    assert_eq!(response.message.class(), MessageClass::SuccessResponse);
    let md5 = long_term_key_md5("alice", REALM, "secret");
    assert_eq!(protection(&response, &bytes, &md5), (None, Some(true)));
}

#[test]
fn rfc8489_9_2_4_sha256_integrity_is_preferred_when_both_are_present() {
    let mut core = Core::with_users();
    let mut client = Client::new("alice", "secret", Style { algorithm: None, userhash: false, integrity: BOTH });
    let (response, bytes) = core.request(&mut client, ALLOCATE, &allocate_attrs());
    assert_eq!(response.message.class(), MessageClass::SuccessResponse);
    let md5 = long_term_key_md5("alice", REALM, "secret");
    assert_eq!(protection(&response, &bytes, &md5), (Some(true), Some(true)), "both, as the request had");
    // A wrong MESSAGE-INTEGRITY next to a right MESSAGE-INTEGRITY-SHA256: the SHA-256
    // one decides, so the request passes...
    let wrong = long_term_key_md5("alice", REALM, "wrong");
    let signed = |client: &mut Client, sha1_key: &[u8], sha256_key: &[u8]| {
        let mut bytes = client.unprotected(REFRESH, &[]);
        append_integrity(&mut bytes, IntegrityKind::Sha1, sha1_key);
        append_integrity(&mut bytes, IntegrityKind::Sha256, sha256_key);
        append_fingerprint(&mut bytes);
        bytes
    };
    let bytes = signed(&mut client, &wrong, &md5);
    let response = message::decode(&core.exchange(&bytes)).unwrap();
    assert_eq!(response.message.class(), MessageClass::SuccessResponse);
    // ...and the other way round it fails.
    let bytes = signed(&mut client, &md5, &wrong);
    assert_eq!(error_code(&message::decode(&core.exchange(&bytes)).unwrap().message), Some(401));
}

#[test]
fn rfc8489_9_2_1_cleared_feature_bits_make_the_nonce_stale() {
    let mut core = Core::with_users();
    let mut client = Client::new("alice", "secret", RFC5389);
    core.request(&mut client, ALLOCATE, &allocate_attrs());
    // A man in the middle clears "username anonymity" in the nonce; the client signs
    // what it got, and turnd's MAC over the bits refuses it.
    let nonce = client.nonce.clone().unwrap();
    client.nonce = Some(nonce.replacen("obMatJos2AAAD", "obMatJos2AAAB", 1));
    let response = message::decode(&core.exchange(&client.build(REFRESH, &[]))).unwrap();
    assert_eq!(error_code(&response.message), Some(438));
    assert_eq!(response.message.get_attribute::<PasswordAlgorithms>().unwrap().value(), &OFFERED);
}

#[test]
fn rfc8489_9_2_4_stale_nonce_438_renews_the_cookie_and_algorithms() {
    let mut core = Core::with_users();
    let mut client = Client::new("alice", "secret", RFC8489_SHA256);
    core.request(&mut client, ALLOCATE, &[RequestedTransport::new(17).into()]);
    let first = client.nonce.clone();
    core.now += Duration::from_secs(601);
    core.server.handle_timeout(core.now, &core.ledger);
    let stale = message::decode(&core.exchange(&client.build(REFRESH, &[]))).unwrap();
    assert_eq!(error_code(&stale.message), Some(438));
    assert!(stale.message.get_attribute::<Nonce>().unwrap().value().starts_with("obMatJos2AAAD"));
    assert_eq!(stale.message.get_attribute::<PasswordAlgorithms>().unwrap().value(), &OFFERED);
    // The client retries with the new nonce and the same algorithm.
    core.from.client = "198.51.100.1:40001".parse().unwrap();
    let (response, _) = core.request(&mut client, ALLOCATE, &allocate_attrs());
    assert_eq!(response.message.class(), MessageClass::SuccessResponse);
    assert_ne!(client.nonce, first);
}

// ---- End to end, through a real UDP socket against the built binary ----

fn turnd_config() -> String {
    let (min, max) = relay_port_range();
    format!(
        "realm = \"{REALM}\"\n[[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:0\"\n\
         [relay]\nport-min = {min}\nport-max = {max}\nallowed-peers = [\"127.0.0.0/8\"]\nallow-host-peers = true\n\
         [[auth.user]]\nname = \"alice\"\npassword = \"secret\"\n"
    )
}

/// One UDP round trip to `server`, skipping datagrams from anyone else.
fn udp_exchange(socket: &UdpSocket, server: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    socket.send_to(bytes, server).expect("send");
    let mut buf = vec![0u8; 2048];
    loop {
        let (n, from) = socket.recv_from(&mut buf).expect("a response within the timeout");
        if from == server {
            return buf[..n].to_vec();
        }
    }
}

#[test]
fn udp_end_to_end_sha256_and_userhash_relay_to_a_peer() {
    let turnd = TurndProcess::start(&turnd_config(), &[]);
    let server = turnd.udp_addr();
    let peer = UdpEchoPeer::start();
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    let style = Style { algorithm: Some(Algorithm::Sha256), userhash: true, integrity: SHA256 };
    let mut client = Client::new("alice", "secret", style);
    let (response, bytes) = client.request(ALLOCATE, &allocate_attrs(), |b| udp_exchange(&socket, server, b));
    assert_eq!(response.message.class(), MessageClass::SuccessResponse, "{:?}", response.message);
    assert!(client.nonce.as_deref().unwrap().starts_with("obMatJos2AAAD"));
    let sha256 = long_term_key_sha256("alice", REALM, "secret");
    assert_eq!(protection(&response, &bytes, &sha256), (None, Some(true)));
    assert!(response.message.get_attribute::<XorRelayAddress>().is_some());

    let number: ChannelNumber = Opaque(vec![0x40, 0x00, 0, 0]);
    let attrs = [number.into(), XorPeerAddress::new(peer.addr()).into()];
    let (bound, _) = client.request(CHANNEL_BIND, &attrs, |b| udp_exchange(&socket, server, b));
    assert_eq!(bound.message.class(), MessageClass::SuccessResponse, "{:?}", bound.message);
    let data = [0x40, 0x00, 0x00, 0x04, b'r', b'f', b'c', b'8'];
    let echoed = udp_exchange(&socket, server, &data);
    assert_eq!(echoed[..8], data, "ChannelData through the relay and back");

    // An RFC 5389 client on the same server still gets in with the MD5 key.
    let legacy_socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    legacy_socket.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    let mut legacy = Client::new("alice", "secret", RFC5389);
    let (response, bytes) = legacy.request(ALLOCATE, &allocate_attrs(), |b| udp_exchange(&legacy_socket, server, b));
    assert_eq!(response.message.class(), MessageClass::SuccessResponse);
    let md5 = long_term_key_md5("alice", REALM, "secret");
    assert_eq!(protection(&response, &bytes, &md5), (Some(true), None));
}
