//! `turnd probe URL`: checks a STUN/TURN server from the outside, as an operator would
//! after a deploy.
//!
//! The probe resolves the URL (RFC 7064 `stun:`/`stuns:`, RFC 7065 `turn:`/`turns:` with
//! `?transport=udp|tcp`), sends a Binding request, allocates a relay with long-term or
//! TURN REST API credentials, then relays datagrams through the allocation and back to
//! itself, both with Send/Data indications and over a channel. Every step is reported
//! with its timing as it completes; the first failing step ends the run with an error
//! that carries the STUN error code (if any) and what it usually means.
//!
//! It is a blocking client on std sockets (one server, one request at a time: there is
//! nothing to multiplex) built on turnd's own codec. Nothing that comes from the network
//! is unwrapped: every malformed answer is a [`ProbeError`].

use crate::stun::attributes::{Attribute, ChannelNumber, Opaque};
use crate::stun::channel_data::{ChannelData, HEADER_LEN as CHANNEL_HEADER_LEN};
use crate::stun::integrity::long_term_key_md5;
use crate::stun::message::{self, IntegritySet, Message, Protection};
use crate::stun::raw::{Header, HEADER_LEN};
use crate::turn::auth::rest_password;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stun_codec::rfc5389::attributes::{ErrorCode, Nonce, Realm, Software, Username, XorMappedAddress};
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5766::attributes::{Data, Lifetime, RequestedTransport, XorPeerAddress, XorRelayAddress};
use stun_codec::rfc5766::methods::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, DATA, REFRESH, SEND};
use stun_codec::{MessageClass, Method, TransactionId};

/// Default port of `stun:` and `turn:` URLs (RFC 7064 §3.2, RFC 7065 §3.2).
pub const DEFAULT_PORT: u16 = 3478;
/// Default port of `stuns:` and `turns:` URLs (RFC 7064 §3.2, RFC 7065 §3.2).
pub const DEFAULT_TLS_PORT: u16 = 5349;
/// The channel number the probe binds (the first one RFC 8656 §12 allows).
pub const PROBE_CHANNEL: u16 = 0x4000;
/// RFC 8489 §6.2.1: the initial retransmission timeout over UDP.
const INITIAL_RTO: Duration = Duration::from_millis(500);
/// REQUESTED-TRANSPORT protocol number for UDP (RFC 8656 §18.7).
const PROTOCOL_UDP: u8 = 17;
/// How often a request is resent after 438 Stale Nonce or a 401 with a new nonce.
const AUTH_ATTEMPTS: usize = 3;
/// How long the probe waits for a UDP Binding answer to its peer socket before
/// it falls back to relaying to the allocation itself.
const PEER_BINDING_WAIT: Duration = Duration::from_millis(1500);
/// The largest message the probe reads (a STUN message or ChannelData is at most 64 KiB).
const MAX_MESSAGE: usize = 65_536 + CHANNEL_HEADER_LEN;

/// URL schemes the probe understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `stun:` (RFC 7064).
    Stun,
    /// `stuns:`: STUN over TLS (RFC 7064).
    Stuns,
    /// `turn:` (RFC 7065).
    Turn,
    /// `turns:`: TURN over TLS (RFC 7065).
    Turns,
}

impl Scheme {
    /// Whether the scheme names a TURN server (which the probe then allocates on).
    pub fn is_turn(self) -> bool {
        matches!(self, Scheme::Turn | Scheme::Turns)
    }
}

/// How the probe talks to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Datagrams.
    Udp,
    /// A TCP connection with RFC 8489 §6.2.2 / RFC 8656 §12.5 framing.
    Tcp,
    /// TLS over TCP.
    Tls,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        })
    }
}

/// A parsed `stun:`/`stuns:`/`turn:`/`turns:` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    /// The scheme.
    pub scheme: Scheme,
    /// Host name or IP address (without brackets).
    pub host: String,
    /// The port (the scheme's default when the URL has none).
    pub port: u16,
    /// The transport: `?transport=` for TURN, else the scheme's.
    pub transport: Transport,
}

/// Why a URL is not a STUN/TURN URL the probe can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Not one of the four schemes.
    #[error("unknown scheme (expected stun:, stuns:, turn: or turns:)")]
    Scheme,
    /// `turn://host`: RFC 7065 URLs have no authority part.
    #[error("no '//' after the scheme: write turn:HOST[:PORT] (RFC 7065)")]
    Slashes,
    /// An empty host or a broken `[v6]` literal.
    #[error("missing or malformed host")]
    Host,
    /// A port that is not a number in 1..=65535.
    #[error("malformed port")]
    Port,
    /// A query other than `transport=udp|tcp`, or one on a `stun:` URL.
    #[error("unsupported query {0:?} (only turn: URLs take ?transport=udp or ?transport=tcp)")]
    Query(String),
    /// `turns:...?transport=udp` is DTLS, which the probe does not speak.
    #[error("turns: over UDP is DTLS, which the probe does not support")]
    Dtls,
}

impl FromStr for ServerUrl {
    type Err = UrlError;

    fn from_str(url: &str) -> Result<Self, UrlError> {
        let (scheme, rest) = url.split_once(':').ok_or(UrlError::Scheme)?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "stun" => Scheme::Stun,
            "stuns" => Scheme::Stuns,
            "turn" => Scheme::Turn,
            "turns" => Scheme::Turns,
            _ => return Err(UrlError::Scheme),
        };
        if rest.starts_with("//") {
            return Err(UrlError::Slashes);
        }
        let (authority, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let (host, port) = split_host_port(authority)?;
        let tls = matches!(scheme, Scheme::Stuns | Scheme::Turns);
        let mut transport = if tls { Transport::Tls } else { Transport::Udp };
        if let Some(query) = query {
            let value = query.strip_prefix("transport=").filter(|_| scheme.is_turn());
            transport = match (value.map(str::to_ascii_lowercase).as_deref(), tls) {
                (Some("tcp"), false) => Transport::Tcp,
                (Some("udp"), false) => Transport::Udp,
                (Some("tcp"), true) => Transport::Tls,
                (Some("udp"), true) => return Err(UrlError::Dtls),
                _ => return Err(UrlError::Query(query.to_owned())),
            };
        }
        let port = port.unwrap_or(if tls { DEFAULT_TLS_PORT } else { DEFAULT_PORT });
        Ok(ServerUrl { scheme, host, port, transport })
    }
}

/// Splits `host[:port]` or `[v6][:port]`.
fn split_host_port(authority: &str) -> Result<(String, Option<u16>), UrlError> {
    let parse_port = |p: &str| p.parse::<u16>().ok().filter(|p| *p != 0).ok_or(UrlError::Port);
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or(UrlError::Host)?;
        host.parse::<Ipv6Addr>().map_err(|_| UrlError::Host)?;
        let port = match after {
            "" => None,
            p => Some(parse_port(p.strip_prefix(':').ok_or(UrlError::Port)?)?),
        };
        return Ok((host.to_owned(), port));
    }
    let (host, port) = match authority.rsplit_once(':') {
        // A bare IPv6 address has colons but no brackets: RFC 7065 requires them.
        Some((h, _)) if h.contains(':') => return Err(UrlError::Host),
        Some((h, p)) => (h, Some(parse_port(p)?)),
        None => (authority, None),
    };
    let valid = |c: char| c.is_ascii_alphanumeric() || "-._".contains(c);
    if host.is_empty() || !host.chars().all(valid) {
        return Err(UrlError::Host);
    }
    Ok((host.to_owned(), port))
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Stun => "stun",
            Scheme::Stuns => "stuns",
            Scheme::Turn => "turn",
            Scheme::Turns => "turns",
        };
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        write!(f, "{scheme}:{host}:{}", self.port)?;
        if self.scheme == Scheme::Turn && self.transport == Transport::Tcp {
            f.write_str("?transport=tcp")?;
        }
        Ok(())
    }
}

/// Long-term credentials for the allocation.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// No credentials: the probe stops after checking that the server asks for them.
    None,
    /// A static user.
    LongTerm {
        /// The username.
        username: String,
        /// The password.
        password: String,
    },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::None => f.write_str("None"),
            Credentials::LongTerm { username, .. } => write!(f, "LongTerm({username:?}, ..)"),
        }
    }
}

impl Credentials {
    /// TURN REST API credentials (draft-uberti-behave-turn-rest): the username is
    /// `<expiry>:<user>` with `expiry = unix_now + ttl`, the password
    /// base64(HMAC-SHA1(secret, username)).
    pub fn rest(secret: &str, user: &str, unix_now: u64, ttl: Duration) -> Credentials {
        let username = format!("{}:{user}", unix_now.saturating_add(ttl.as_secs()));
        let password = rest_password(secret.as_bytes(), &username);
        Credentials::LongTerm { username, password }
    }
}

/// How the probe checks the server's TLS certificate.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// CA certificates (PEM) to trust instead of the system's bundle.
    pub ca_file: Option<PathBuf>,
    /// The name to verify the certificate against (default: the URL's host).
    pub server_name: Option<String>,
    /// Accept any certificate. Only for a first look at a server whose certificate is
    /// not ready yet: the probe then proves nothing about who answered.
    pub danger_accept_invalid_certs: bool,
}

/// Everything a probe run needs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The server.
    pub url: ServerUrl,
    /// Credentials for the allocation.
    pub credentials: Credentials,
    /// The longest wait for any one step.
    pub timeout: Duration,
    /// Certificate checking for `stuns:`/`turns:`.
    pub tls: TlsOptions,
}

/// Why a probe step failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The host name did not resolve.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        /// The host from the URL.
        host: String,
        /// The resolver's error.
        source: io::Error,
    },
    /// The host name resolved to nothing usable.
    #[error("{host} resolved to no address")]
    NoAddress {
        /// The host from the URL.
        host: String,
    },
    /// A socket operation failed (bind, connect, send, receive).
    #[error("{what}: {source}")]
    Io {
        /// What the probe was doing.
        what: &'static str,
        /// The system's error.
        source: io::Error,
    },
    /// The TLS handshake failed (certificate not trusted, wrong name, no common cipher...).
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    /// The CA file could not be read.
    #[error("cannot load CA certificates from {path}: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Nothing came back in time.
    #[error("no answer from {server} within {waited:?}{stray}", stray = stray_note(*stray_from))]
    Timeout {
        /// Where the request went.
        server: SocketAddr,
        /// How long the probe waited.
        waited: Duration,
        /// A datagram that came from another address (a multihomed server answering
        /// from the wrong interface), if one did.
        stray_from: Option<SocketAddr>,
    },
    /// The server closed the connection.
    #[error("the server closed the connection")]
    Closed,
    /// The server answered with a STUN error response.
    #[error("{code} {}", if reason.is_empty() { reason_phrase(*code) } else { reason })]
    ErrorResponse {
        /// The ERROR-CODE.
        code: u16,
        /// Its reason phrase.
        reason: String,
    },
    /// The answer could not be decoded or lacks a required attribute.
    #[error("malformed answer: {0}")]
    Malformed(&'static str),
    /// A success response whose MESSAGE-INTEGRITY does not verify with our key.
    #[error("the response's MESSAGE-INTEGRITY does not verify with our credentials")]
    Integrity,
    /// Relayed data did not arrive (or arrived changed).
    #[error("{0}")]
    Relay(String),
    /// The system's random source failed.
    #[error("no random numbers from the system")]
    Random,
}

fn stray_note(from: Option<SocketAddr>) -> String {
    match from {
        Some(addr) => format!(" (but a datagram came from {addr}: does the server answer from another address?)"),
        None => String::new(),
    }
}

impl ProbeError {
    /// What the failure usually means, for an operator.
    pub fn hint(&self) -> Option<&'static str> {
        Some(match self {
            ProbeError::ErrorResponse { code, .. } => error_code_hint(*code)?,
            ProbeError::Resolve { .. } | ProbeError::NoAddress { .. } => {
                "check the DNS record (A/AAAA) of the host in the URL"
            }
            ProbeError::Timeout { .. } => {
                "the server is not running, the port is wrong, or a firewall drops the traffic \
                 (UDP 3478 and the relay port range must be open)"
            }
            ProbeError::Tls(_) | ProbeError::CaFile { .. } => {
                "the certificate must be valid for the URL's host and chain to a trusted CA \
                 (--ca FILE to trust a private CA, --server-name to check another name)"
            }
            ProbeError::Integrity => "the server keyed the response differently: a realm or password mismatch",
            ProbeError::Relay(_) => {
                "the allocation works but data does not flow: check the relay port range in the firewall, \
                 the external (public) address the server advertises, and its peer policy"
            }
            ProbeError::Io { source, .. } if source.kind() == io::ErrorKind::ConnectionRefused => {
                "nothing listens on that port (for UDP: an ICMP port unreachable came back)"
            }
            _ => return None,
        })
    }
}

/// The registered reason phrase of an error code (servers may send an empty one).
pub fn reason_phrase(code: u16) -> &'static str {
    error_code_hint(code).and_then(|h| h.split(':').next()).unwrap_or("(no reason phrase)")
}

/// What a STUN/TURN error code usually means (RFC 8489 §14.8, RFC 8656 §19).
pub fn error_code_hint(code: u16) -> Option<&'static str> {
    Some(match code {
        300 => "Try Alternate: the server redirects to another (ALTERNATE-SERVER)",
        400 => "Bad Request: the server could not parse the request",
        401 => {
            "Unauthorized: wrong username or password, or a realm mismatch; with REST credentials, \
             a secret the server does not have or a clock skew that expired the username"
        }
        403 => {
            "Forbidden: the server's peer policy denies this peer address \
             (private, loopback and other special ranges are usually denied)"
        }
        420 => "Unknown Attribute: the server does not understand a required attribute",
        437 => {
            "Allocation Mismatch: an allocation already exists for this client address and port \
             (or, on refresh, none does: it expired or the server restarted)"
        }
        438 => "Stale Nonce: the server kept rejecting its own nonces (clock or nonce handling broken)",
        440 => "Address Family not Supported: the server has no relay address of the requested family",
        441 => "Wrong Credentials: the request used other credentials than the allocation",
        442 => "Unsupported Transport Protocol: the server does not relay that transport",
        443 => "Peer Address Family Mismatch: the peer's address family differs from the relay's",
        486 => {
            "Allocation Quota Reached: this user or client address holds too many allocations \
             (leaked clients, or a quota set too low)"
        }
        500 => "Server Error: a temporary failure inside the server",
        508 => "Insufficient Capacity: the server is out of relay ports or at its total allocation limit",
        _ => return None,
    })
}

/// The status of one reported step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Done as expected.
    Ok,
    /// Done, but something an operator should look at.
    Warning,
    /// Failed: the run ends here.
    Failed,
}

/// One step of a probe run, reported as soon as it completes.
#[derive(Debug, Clone)]
pub struct Step {
    /// Short name: `resolve`, `connect`, `binding`, `allocate`, ...
    pub name: &'static str,
    /// How long the step took.
    pub elapsed: Duration,
    /// Its outcome.
    pub status: Status,
    /// What the step found, in one line.
    pub detail: String,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = match self.status {
            Status::Ok => "ok  ",
            Status::Warning => "WARN",
            Status::Failed => "FAIL",
        };
        let ms = self.elapsed.as_secs_f64() * 1000.0;
        write!(f, "{mark} {:<12} {ms:>8.1} ms  {}", self.name, self.detail)
    }
}

/// A failed run: the step that failed and why.
#[derive(Debug, thiserror::Error)]
#[error("{step} failed: {error}{hint}", hint = self.error.hint().map(|h| format!(" ({h})")).unwrap_or_default())]
pub struct Failure {
    /// The failing step's name.
    pub step: &'static str,
    /// Why it failed.
    pub error: ProbeError,
}

/// What a successful run established.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// The server address used.
    pub server: Option<SocketAddr>,
    /// Our address as the server saw it (XOR-MAPPED-ADDRESS of the Binding).
    pub mapped: Option<SocketAddr>,
    /// The relayed address of the allocation, when one was made.
    pub relayed: Option<SocketAddr>,
    /// Whether data went through the relay both ways.
    pub relayed_data: bool,
    /// Things that worked but deserve a look.
    pub warnings: Vec<String>,
}

/// Runs the probe, calling `report` after each step. Returns the summary, or the first
/// failure (which has also been reported as a failed step).
pub fn run(options: &Options, report: &mut dyn FnMut(&Step)) -> Result<Summary, Failure> {
    let mut run = Run { report, summary: Summary::default() };
    let result = run.all(options);
    result.map(|()| run.summary)
}

/// The state of one run: where steps are reported and what was found so far.
struct Run<'a> {
    report: &'a mut dyn FnMut(&Step),
    summary: Summary,
}

impl Run<'_> {
    /// Times `f` as step `name`, reports it, and turns its error into a [`Failure`].
    fn step<T>(
        &mut self,
        name: &'static str,
        f: impl FnOnce(&mut Summary) -> Result<(T, String), ProbeError>,
    ) -> Result<T, Failure> {
        let start = Instant::now();
        let result = f(&mut self.summary);
        let elapsed = start.elapsed();
        match result {
            Ok((value, detail)) => {
                (self.report)(&Step { name, elapsed, status: Status::Ok, detail });
                Ok(value)
            }
            Err(error) => {
                let detail = error.to_string();
                (self.report)(&Step { name, elapsed, status: Status::Failed, detail });
                Err(Failure { step: name, error })
            }
        }
    }

    fn warn(&mut self, name: &'static str, detail: String) {
        (self.report)(&Step { name, elapsed: Duration::ZERO, status: Status::Warning, detail: detail.clone() });
        self.summary.warnings.push(detail);
    }

    fn all(&mut self, options: &Options) -> Result<(), Failure> {
        let url = &options.url;
        let timeout = options.timeout;
        let server = self.step("resolve", |_| {
            let all = resolve(&url.host, url.port)?;
            let list: Vec<String> = all.iter().map(|a| a.to_string()).collect();
            Ok((all[0], format!("{} -> {} ({})", url.host, list.join(", "), url.transport)))
        })?;
        self.summary.server = Some(server);

        let mut conn = self.step("connect", |_| {
            let conn = Connection::open(server, url, &options.tls, timeout)?;
            let detail = match &conn.link {
                Link::Udp(s) => format!("udp socket {}", s.local_addr().map(|a| a.to_string()).unwrap_or_default()),
                Link::Tcp(s) => format!("tcp connected from {}", local_of(s)),
                Link::Tls(s) => format!(
                    "tls {} from {}",
                    s.conn.protocol_version().map(|v| format!("{v:?}")).unwrap_or_default(),
                    local_of(&s.sock)
                ),
            };
            Ok((conn, detail))
        })?;

        // A UDP socket bound to the wildcard address: ask the routing table which source
        // address it uses towards the server (connect() on UDP sends nothing).
        let local = conn.local_addr().map(|l| match l.ip().is_unspecified() {
            true => source_address_towards(server).map_or(l, |ip| SocketAddr::new(ip, l.port())),
            false => l,
        });
        let (mapped, software) = self.step("binding", |summary| {
            let (mapped, software) = binding(&mut conn, timeout)?;
            summary.mapped = Some(mapped);
            let mut detail = format!("mapped address {mapped}");
            match local {
                Some(l) if l.ip() != mapped.ip() && !l.ip().is_unspecified() => {
                    detail += &format!(" (behind NAT: local address {})", l.ip());
                }
                Some(l) if l.port() != mapped.port() => detail += " (port translated: behind NAT)",
                _ => {}
            }
            if let Some(software) = &software {
                detail += &format!(", server software {software:?}");
            }
            Ok(((mapped, software), detail))
        })?;
        let _ = (mapped, software);
        if !url.scheme.is_turn() {
            return Ok(());
        }

        let mut auth = Auth::new(options.credentials.clone());
        let challenge = self.step("challenge", |_| {
            let (realm, nonce) = challenge(&mut conn, timeout)?;
            Ok(((realm.clone(), nonce.clone()), format!("401 with realm {realm:?} and a nonce")))
        });
        match challenge {
            Ok((realm, nonce)) => auth.set_challenge(realm, nonce),
            Err(Failure { error: ProbeError::Relay(open), .. }) if open == OPEN_RELAY => {
                self.warn("challenge", "the server allocated WITHOUT credentials: an open relay".into());
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        if options.credentials == Credentials::None {
            self.warn("allocate", "not checked: no credentials (give --user and --password, or --secret)".into());
            return Ok(());
        }

        let (relayed, lifetime) = self.step("allocate", |summary| {
            let response =
                auth.request(&mut conn, ALLOCATE, &[RequestedTransport::new(PROTOCOL_UDP).into()], timeout)?;
            let relayed = response
                .get_attribute::<XorRelayAddress>()
                .ok_or(ProbeError::Malformed("Allocate success without XOR-RELAYED-ADDRESS"))?
                .address();
            let lifetime = response.get_attribute::<Lifetime>().map(|l| l.lifetime()).unwrap_or_default();
            summary.relayed = Some(relayed);
            Ok(((relayed, lifetime), format!("relayed address {relayed}, lifetime {}s", lifetime.as_secs())))
        })?;
        if lifetime.is_zero() {
            self.warn("allocate", "the server granted no LIFETIME".into());
        }
        if relayed.ip().is_loopback() && !server.ip().is_loopback() {
            self.warn("allocate", "the relayed address is loopback: set the server's relay/external address".into());
        }

        let peer = self.step("peer", |_| {
            let peer = Peer::open(&conn, server, relayed, timeout)?;
            let detail = match &peer {
                Peer::Socket { reflexive, .. } => format!("a local UDP socket, seen by the server as {reflexive}"),
                Peer::Relay { address } => {
                    format!("the allocation itself ({address}): no UDP answer to a Binding from a second socket")
                }
            };
            Ok((peer, detail))
        })?;
        let peer_addr = peer.address();

        self.step("permission", |_| {
            auth.request(&mut conn, CREATE_PERMISSION, &[XorPeerAddress::new(peer_addr).into()], timeout)?;
            Ok(((), format!("for {}", peer_addr.ip())))
        })?;
        let peer_addr = self.step("indication", |_| {
            let payload = random_payload("indication")?;
            relay_by_indication(&mut conn, &peer, relayed, &payload, timeout).map(|(detail, seen)| (seen, detail))
        })?;
        if peer_addr != peer.address() {
            self.warn(
                "indication",
                format!(
                    "the peer socket reached the relay from port {} but the server from {}: this side has an \
                     address-dependent (symmetric) NAT, so peers will only reach it through the relay",
                    peer_addr.port(),
                    peer.address().port()
                ),
            );
        }
        self.step("channel", |_| {
            let attrs = [channel_number(PROBE_CHANNEL), XorPeerAddress::new(peer_addr).into()];
            auth.request(&mut conn, CHANNEL_BIND, &attrs, timeout)?;
            Ok(((), format!("0x{PROBE_CHANNEL:04X} bound to {peer_addr}")))
        })?;
        self.step("channel-data", |summary| {
            let payload = random_payload("channel")?;
            let detail = relay_by_channel(&mut conn, &peer, relayed, &payload, timeout)?;
            summary.relayed_data = true;
            Ok(((), detail))
        })?;
        self.step("refresh", |_| {
            auth.request(&mut conn, REFRESH, &[Lifetime::from_u32(0).into()], timeout)?;
            Ok(((), "allocation deleted (LIFETIME 0)".into()))
        })?;
        Ok(())
    }
}

/// The marker a challenge step uses when the server allocated without asking.
const OPEN_RELAY: &str = "open relay";

/// The source address the system would use to reach `server`.
fn source_address_towards(server: SocketAddr) -> Option<IpAddr> {
    let socket = UdpSocket::bind(unspecified(server)).ok()?;
    socket.connect(server).ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}

fn local_of(s: &TcpStream) -> String {
    s.local_addr().map(|a| a.to_string()).unwrap_or_default()
}

fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, ProbeError> {
    let all: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|source| ProbeError::Resolve { host: host.to_owned(), source })?
        .collect();
    if all.is_empty() {
        return Err(ProbeError::NoAddress { host: host.to_owned() });
    }
    Ok(all)
}

fn random_bytes<const N: usize>() -> Result<[u8; N], ProbeError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; N];
    ring::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| ProbeError::Random)?;
    Ok(bytes)
}

fn new_transaction_id() -> Result<TransactionId, ProbeError> {
    random_bytes::<12>().map(TransactionId::new)
}

/// A payload no stray packet can be mistaken for.
fn random_payload(label: &str) -> Result<Vec<u8>, ProbeError> {
    let tag: String = random_bytes::<8>()?.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("turnd probe {label} {tag}").into_bytes())
}

fn channel_number(channel: u16) -> Attribute {
    let b = channel.to_be_bytes();
    let number: ChannelNumber = Opaque(vec![b[0], b[1], 0, 0]);
    number.into()
}

fn encode(message: Message, key: Option<&[u8]>) -> Result<Vec<u8>, ProbeError> {
    let key = key.map(|k| (k, IntegritySet { sha1: true, sha256: false }));
    message::encode(message, Protection { key, fingerprint: true })
        .ok_or(ProbeError::Malformed("the codec rejected a request we built"))
}

/// A packet read from the server.
#[derive(Debug)]
enum Packet {
    /// A STUN message (raw bytes, to check integrity over).
    Stun(Vec<u8>),
    /// ChannelData: the channel and the application data.
    ChannelData(u16, Vec<u8>),
}

/// The socket to the server.
enum Link {
    Udp(UdpSocket),
    Tcp(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

/// The connection to the server, with a queue of data packets that arrived while a
/// transaction was waiting for its response.
struct Connection {
    link: Link,
    server: SocketAddr,
    /// Bytes read from a stream but not yet framed.
    buffer: Vec<u8>,
    /// Data indications and ChannelData read while waiting for something else.
    pending: VecDeque<Packet>,
    /// The last datagram from an address other than the server's.
    stray_from: Option<SocketAddr>,
}

impl Connection {
    fn open(server: SocketAddr, url: &ServerUrl, tls: &TlsOptions, timeout: Duration) -> Result<Self, ProbeError> {
        let io = |what| move |source| ProbeError::Io { what, source };
        let link = match url.transport {
            Transport::Udp => {
                let socket = UdpSocket::bind(unspecified(server)).map_err(io("binding a UDP socket"))?;
                Link::Udp(socket)
            }
            Transport::Tcp => Link::Tcp(TcpStream::connect_timeout(&server, timeout).map_err(io("connecting"))?),
            Transport::Tls => {
                let tcp = TcpStream::connect_timeout(&server, timeout).map_err(io("connecting"))?;
                let name = tls.server_name.as_deref().unwrap_or(&url.host);
                Link::Tls(Box::new(tls_handshake(tcp, name, tls, timeout)?))
            }
        };
        Ok(Connection { link, server, buffer: Vec::new(), pending: VecDeque::new(), stray_from: None })
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        match &self.link {
            Link::Udp(s) => s.local_addr().ok(),
            Link::Tcp(s) => s.local_addr().ok(),
            Link::Tls(s) => s.sock.local_addr().ok(),
        }
    }

    fn is_datagram(&self) -> bool {
        matches!(self.link, Link::Udp(_))
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), ProbeError> {
        let io = |source| ProbeError::Io { what: "sending to the server", source };
        match &mut self.link {
            Link::Udp(s) => s.send_to(bytes, self.server).map(drop).map_err(io),
            Link::Tcp(s) => s.write_all(bytes).map_err(io),
            Link::Tls(s) => s.write_all(bytes).and_then(|()| s.flush()).map_err(io),
        }
    }

    /// Reads the next packet, waiting until `deadline` at most.
    fn recv(&mut self, deadline: Instant) -> Result<Packet, ProbeError> {
        loop {
            if !self.is_datagram() {
                if let Some(packet) = frame(&mut self.buffer)? {
                    return Ok(packet);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ProbeError::Timeout {
                    server: self.server,
                    waited: Duration::ZERO,
                    stray_from: self.stray_from,
                });
            }
            let mut buf = vec![0u8; MAX_MESSAGE];
            let read = match &mut self.link {
                Link::Udp(s) => {
                    s.set_read_timeout(Some(left))
                        .map_err(|source| ProbeError::Io { what: "socket option", source })?;
                    match s.recv_from(&mut buf) {
                        Ok((n, from)) if from == self.server => {
                            buf.truncate(n);
                            return datagram(buf);
                        }
                        Ok((_, from)) => {
                            self.stray_from = Some(from);
                            continue;
                        }
                        Err(e) => Err(e),
                    }
                }
                Link::Tcp(s) => {
                    s.set_read_timeout(Some(left))
                        .map_err(|source| ProbeError::Io { what: "socket option", source })?;
                    s.read(&mut buf)
                }
                Link::Tls(s) => {
                    s.sock
                        .set_read_timeout(Some(left))
                        .map_err(|source| ProbeError::Io { what: "socket option", source })?;
                    s.read(&mut buf)
                }
            };
            match read {
                Ok(0) => return Err(ProbeError::Closed),
                Ok(n) => self.buffer.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(ProbeError::Io { what: "receiving from the server", source }),
            }
        }
    }

    /// Sends a request and waits for the response with its transaction id,
    /// retransmitting over UDP (RFC 8489 §6.2.1). Data packets that arrive meanwhile
    /// are kept for later.
    fn transact(&mut self, request: &[u8], timeout: Duration) -> Result<(Vec<u8>, Message), ProbeError> {
        let tid = request.get(8..HEADER_LEN).ok_or(ProbeError::Malformed("short request"))?.to_vec();
        let start = Instant::now();
        let deadline = start + timeout;
        let mut rto = INITIAL_RTO;
        let mut next_send = start;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(ProbeError::Timeout { server: self.server, waited: timeout, stray_from: self.stray_from });
            }
            if now >= next_send {
                self.send(request)?;
                next_send = if self.is_datagram() { now + rto } else { deadline };
                rto *= 2;
            }
            match self.recv(next_send.min(deadline)) {
                Ok(Packet::Stun(bytes)) => {
                    if bytes.get(8..HEADER_LEN) == Some(&tid[..]) {
                        let decoded =
                            message::decode(&bytes).map_err(|_| ProbeError::Malformed("undecodable STUN response"))?;
                        return Ok((bytes, decoded.message));
                    }
                    self.pending.push_back(Packet::Stun(bytes));
                }
                Ok(packet) => self.pending.push_back(packet),
                Err(ProbeError::Timeout { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The next Data indication or ChannelData, queued or read before `deadline`.
    fn recv_data(&mut self, deadline: Instant) -> Result<Packet, ProbeError> {
        loop {
            let packet = match self.pending.pop_front() {
                Some(p) => p,
                None => self.recv(deadline)?,
            };
            match &packet {
                Packet::ChannelData(..) => return Ok(packet),
                Packet::Stun(bytes) if Header::parse(bytes).map(|h| h.message_type) == Some(0x0017) => {
                    return Ok(packet)
                }
                // Anything else (a late retransmitted response) is of no interest now.
                Packet::Stun(_) => continue,
            }
        }
    }
}

/// A datagram from the server: STUN or ChannelData (RFC 7983 demultiplexing).
fn datagram(buf: Vec<u8>) -> Result<Packet, ProbeError> {
    match buf.first().map(|b| b >> 6) {
        Some(0) => Ok(Packet::Stun(buf)),
        Some(1) => {
            let header = ChannelData::parse_datagram(&buf).ok_or(ProbeError::Malformed("truncated ChannelData"))?;
            let data = buf.get(CHANNEL_HEADER_LEN..CHANNEL_HEADER_LEN + header.len).unwrap_or_default().to_vec();
            Ok(Packet::ChannelData(header.channel, data))
        }
        _ => Err(ProbeError::Malformed("a datagram that is neither STUN nor ChannelData")),
    }
}

/// Takes one whole message off the front of a stream buffer, if there is one. Over
/// TCP, ChannelData is padded to a multiple of four bytes (RFC 8656 §12.5).
fn frame(buffer: &mut Vec<u8>) -> Result<Option<Packet>, ProbeError> {
    let Some(&first) = buffer.first() else {
        return Ok(None);
    };
    let (len, channel) = match first >> 6 {
        0 => {
            let Some(length) = buffer.get(2..4) else { return Ok(None) };
            (HEADER_LEN + usize::from(u16::from_be_bytes([length[0], length[1]])), None)
        }
        1 => {
            let Some(header) = ChannelData::parse_header(buffer) else {
                return Ok(None);
            };
            (CHANNEL_HEADER_LEN + header.len.div_ceil(4) * 4, Some(header))
        }
        _ => return Err(ProbeError::Malformed("stream data that is neither STUN nor ChannelData")),
    };
    if buffer.len() < len {
        return Ok(None);
    }
    let rest = buffer.split_off(len);
    let message = std::mem::replace(buffer, rest);
    Ok(Some(match channel {
        None => Packet::Stun(message),
        Some(h) => {
            let data = message.get(CHANNEL_HEADER_LEN..CHANNEL_HEADER_LEN + h.len).unwrap_or_default();
            Packet::ChannelData(h.channel, data.to_vec())
        }
    }))
}

fn unspecified(server: SocketAddr) -> SocketAddr {
    let ip = if server.is_ipv4() { IpAddr::V4(Ipv4Addr::UNSPECIFIED) } else { IpAddr::V6(Ipv6Addr::UNSPECIFIED) };
    SocketAddr::new(ip, 0)
}

/// The error code of an error response as a [`ProbeError`].
fn error_of(response: &Message) -> ProbeError {
    match response.get_attribute::<ErrorCode>() {
        Some(e) => ProbeError::ErrorResponse { code: e.code(), reason: e.reason_phrase().to_owned() },
        None => ProbeError::Malformed("error response without ERROR-CODE"),
    }
}

/// A Binding request; returns the mapped address and the server's SOFTWARE.
fn binding(conn: &mut Connection, timeout: Duration) -> Result<(SocketAddr, Option<String>), ProbeError> {
    let request = encode(Message::new(MessageClass::Request, BINDING, new_transaction_id()?), None)?;
    let (_, response) = conn.transact(&request, timeout)?;
    if response.class() != MessageClass::SuccessResponse {
        return Err(error_of(&response));
    }
    let mapped = response
        .get_attribute::<XorMappedAddress>()
        .ok_or(ProbeError::Malformed("Binding success without XOR-MAPPED-ADDRESS"))?
        .address();
    Ok((mapped, response.get_attribute::<Software>().map(|s| s.description().to_owned())))
}

/// An unauthenticated Allocate, which a server that authenticates answers with 401,
/// a realm and a nonce (RFC 8489 §9.2.4). A success means an open relay: the probe
/// deletes that allocation and reports it.
fn challenge(conn: &mut Connection, timeout: Duration) -> Result<(String, String), ProbeError> {
    let mut m = Message::new(MessageClass::Request, ALLOCATE, new_transaction_id()?);
    m.add_attribute(RequestedTransport::new(PROTOCOL_UDP));
    let (_, response) = conn.transact(&encode(m, None)?, timeout)?;
    if response.class() == MessageClass::SuccessResponse {
        let mut m = Message::new(MessageClass::Request, REFRESH, new_transaction_id()?);
        m.add_attribute(Lifetime::from_u32(0));
        let _ = conn.transact(&encode(m, None)?, timeout);
        return Err(ProbeError::Relay(OPEN_RELAY.into()));
    }
    match error_of(&response) {
        ProbeError::ErrorResponse { code: 401, .. } => {}
        other => return Err(other),
    }
    let realm = response.get_attribute::<Realm>().ok_or(ProbeError::Malformed("401 without REALM"))?;
    let nonce = response.get_attribute::<Nonce>().ok_or(ProbeError::Malformed("401 without NONCE"))?;
    Ok((realm.text().to_owned(), nonce.value().to_owned()))
}

/// Long-term credential state: the key and the server's current realm and nonce.
struct Auth {
    credentials: Credentials,
    realm: String,
    nonce: String,
}

impl Auth {
    fn new(credentials: Credentials) -> Self {
        Auth { credentials, realm: String::new(), nonce: String::new() }
    }

    fn set_challenge(&mut self, realm: String, nonce: String) {
        self.realm = realm;
        self.nonce = nonce;
    }

    /// Sends an authenticated request, following a 438 (or a 401 with a fresh nonce)
    /// as RFC 8489 §9.2.5 says; checks the success response's MESSAGE-INTEGRITY.
    fn request(
        &mut self,
        conn: &mut Connection,
        method: Method,
        attrs: &[Attribute],
        timeout: Duration,
    ) -> Result<Message, ProbeError> {
        let Credentials::LongTerm { username, password } = &self.credentials else {
            return Err(ProbeError::ErrorResponse { code: 401, reason: "no credentials given".into() });
        };
        let key = long_term_key_md5(username, &self.realm, password);
        for _ in 0..AUTH_ATTEMPTS {
            let mut m = Message::new(MessageClass::Request, method, new_transaction_id()?);
            for a in attrs {
                m.add_attribute(a.clone());
            }
            let bad = |_| ProbeError::Malformed("username, realm or nonce not encodable");
            m.add_attribute(Username::new(username.clone()).map_err(bad)?);
            m.add_attribute(Realm::new(self.realm.clone()).map_err(bad)?);
            m.add_attribute(Nonce::new(self.nonce.clone()).map_err(bad)?);
            let (raw, response) = conn.transact(&encode(m, Some(&key))?, timeout)?;
            if response.class() == MessageClass::SuccessResponse {
                let decoded = message::decode(&raw).map_err(|_| ProbeError::Malformed("undecodable response"))?;
                match decoded.integrity_sha1 {
                    Some(integrity) if integrity.verify(&key, &raw) => return Ok(response),
                    Some(_) => return Err(ProbeError::Integrity),
                    None => return Err(ProbeError::Malformed("success response without MESSAGE-INTEGRITY")),
                }
            }
            let error = error_of(&response);
            let fresh = response.get_attribute::<Nonce>().map(|n| n.value().to_owned());
            match (&error, fresh) {
                (ProbeError::ErrorResponse { code: 438, .. }, Some(nonce))
                | (ProbeError::ErrorResponse { code: 401, .. }, Some(nonce))
                    if nonce != self.nonce =>
                {
                    self.nonce = nonce;
                    if let Some(realm) = response.get_attribute::<Realm>() {
                        self.realm = realm.text().to_owned();
                    }
                }
                _ => return Err(error),
            }
        }
        Err(ProbeError::ErrorResponse { code: 438, reason: format!("still stale after {AUTH_ATTEMPTS} nonces") })
    }
}

/// Where relayed data goes.
enum Peer {
    /// A second local UDP socket, at the address the server sees for it.
    Socket {
        /// The socket.
        socket: UdpSocket,
        /// Its server-reflexive address.
        reflexive: SocketAddr,
    },
    /// The allocation itself: the relay sends to its own address and receives it back.
    Relay {
        /// The relayed address.
        address: SocketAddr,
    },
}

impl Peer {
    /// A UDP socket when the server answers a Binding on it over UDP (always, for a UDP
    /// URL); otherwise the allocation itself.
    fn open(conn: &Connection, server: SocketAddr, relayed: SocketAddr, timeout: Duration) -> Result<Peer, ProbeError> {
        let io = |what| move |source| ProbeError::Io { what, source };
        let socket = UdpSocket::bind(unspecified(relayed)).map_err(io("binding the peer socket"))?;
        let wait = if conn.is_datagram() { timeout } else { PEER_BINDING_WAIT.min(timeout) };
        let mut probe = Connection {
            link: Link::Udp(socket),
            server,
            buffer: Vec::new(),
            pending: VecDeque::new(),
            stray_from: None,
        };
        match binding(&mut probe, wait) {
            Ok((reflexive, _)) => {
                let Link::Udp(socket) = probe.link else {
                    return Err(ProbeError::Malformed("unreachable: the peer link is UDP"));
                };
                Ok(Peer::Socket { socket, reflexive })
            }
            Err(e) if conn.is_datagram() => Err(e),
            Err(_) => Ok(Peer::Relay { address: relayed }),
        }
    }

    fn address(&self) -> SocketAddr {
        match self {
            Peer::Socket { reflexive, .. } => *reflexive,
            Peer::Relay { address } => *address,
        }
    }

    /// Receives one datagram on the peer socket; returns (source, payload).
    fn recv(socket: &UdpSocket, deadline: Instant, want: &[u8]) -> Result<SocketAddr, ProbeError> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ProbeError::Relay("the peer socket received nothing from the relay".into()));
            }
            socket.set_read_timeout(Some(left)).map_err(|source| ProbeError::Io { what: "socket option", source })?;
            match socket.recv_from(&mut buf) {
                Ok((n, from)) if buf.get(..n) == Some(want) => return Ok(from),
                Ok(_) => continue,
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
                Err(source) => return Err(ProbeError::Io { what: "receiving on the peer socket", source }),
            }
        }
    }
}

/// Checks a received Data indication: from `peer`, carrying `payload`.
fn check_data_indication(bytes: &[u8], peer: SocketAddr, payload: &[u8]) -> Result<Option<SocketAddr>, ProbeError> {
    let m = message::decode(bytes).map_err(|_| ProbeError::Malformed("undecodable Data indication"))?.message;
    if m.method() != DATA {
        return Ok(None);
    }
    let from =
        m.get_attribute::<XorPeerAddress>().ok_or(ProbeError::Malformed("Data indication without XOR-PEER-ADDRESS"))?;
    let data = m.get_attribute::<Data>().ok_or(ProbeError::Malformed("Data indication without DATA"))?;
    if data.data() != payload {
        return Ok(None);
    }
    // Permissions are per IP address (RFC 8656 §9): a NAT in front of the peer may give
    // it another port towards the relay than towards the server.
    if from.address().ip() != peer.ip() {
        return Err(ProbeError::Relay(format!("data came back from {} instead of {peer}", from.address())));
    }
    Ok(Some(from.address()))
}

/// Waits for `payload` to come back to the client, as a Data indication or on `channel`.
/// Returns the peer address a Data indication named.
fn await_at_client(
    conn: &mut Connection,
    peer: SocketAddr,
    channel: Option<u16>,
    payload: &[u8],
    timeout: Duration,
) -> Result<Option<SocketAddr>, ProbeError> {
    let deadline = Instant::now() + timeout;
    loop {
        let packet = match conn.recv_data(deadline) {
            Ok(p) => p,
            Err(ProbeError::Timeout { .. }) => {
                let how = if channel.is_some() { "ChannelData" } else { "a Data indication" };
                return Err(ProbeError::Relay(format!(
                    "the client got no {how} back from the relay within {timeout:?}"
                )));
            }
            Err(e) => return Err(e),
        };
        match (packet, channel) {
            (Packet::ChannelData(c, data), Some(want)) if c == want && data == payload => return Ok(None),
            (Packet::Stun(bytes), None) => {
                if let Some(from) = check_data_indication(&bytes, peer, payload)? {
                    return Ok(Some(from));
                }
            }
            _ => continue,
        }
    }
}

/// A Send indication carrying `payload` to `peer`.
fn send_indication(peer: SocketAddr, payload: &[u8]) -> Result<Vec<u8>, ProbeError> {
    let mut m = Message::new(MessageClass::Indication, SEND, new_transaction_id()?);
    m.add_attribute(XorPeerAddress::new(peer));
    m.add_attribute(Data::new(payload.to_vec()).map_err(|_| ProbeError::Malformed("payload too large"))?);
    encode(m, None)
}

/// Relays with a Send indication and, for a socket peer, back with a Data indication.
/// Returns what happened and the peer's address as the relay sees it (behind an
/// address-dependent NAT, another port than the server saw).
fn relay_by_indication(
    conn: &mut Connection,
    peer: &Peer,
    relayed: SocketAddr,
    payload: &[u8],
    timeout: Duration,
) -> Result<(String, SocketAddr), ProbeError> {
    match peer {
        Peer::Socket { socket, reflexive } => {
            // The peer speaks first: that opens its own NAT (if any) towards the relay,
            // and tests the inbound direction (peer -> relay -> Data indication).
            socket
                .send_to(payload, relayed)
                .map_err(|source| ProbeError::Io { what: "sending from the peer", source })?;
            let seen = await_at_client(conn, *reflexive, None, payload, timeout)?.unwrap_or(*reflexive);
            conn.send(&send_indication(seen, payload)?)?;
            let from = Peer::recv(socket, Instant::now() + timeout, payload)?;
            let detail =
                format!("peer {seen} -> relay -> Data indication, Send indication -> relay -> peer (from {from})");
            Ok((detail, seen))
        }
        Peer::Relay { address } => {
            conn.send(&send_indication(*address, payload)?)?;
            await_at_client(conn, *address, None, payload, timeout)?;
            Ok(("Send indication -> relay -> relay -> Data indication".into(), *address))
        }
    }
}

/// Relays over the bound channel, both ways.
fn relay_by_channel(
    conn: &mut Connection,
    peer: &Peer,
    relayed: SocketAddr,
    payload: &[u8],
    timeout: Duration,
) -> Result<String, ProbeError> {
    let len = u16::try_from(payload.len()).map_err(|_| ProbeError::Malformed("payload too large"))?;
    let mut header = [0u8; CHANNEL_HEADER_LEN];
    ChannelData::write_header(PROBE_CHANNEL, len, &mut header);
    let mut frame = header.to_vec();
    frame.extend_from_slice(payload);
    if !conn.is_datagram() {
        frame.resize(frame.len().div_ceil(4) * 4, 0);
    }
    conn.send(&frame)?;
    match peer {
        Peer::Socket { socket, .. } => {
            let from = Peer::recv(socket, Instant::now() + timeout, payload)?;
            socket
                .send_to(payload, relayed)
                .map_err(|source| ProbeError::Io { what: "sending from the peer", source })?;
            await_at_client(conn, peer.address(), Some(PROBE_CHANNEL), payload, timeout)?;
            Ok(format!("ChannelData -> relay -> peer (from {from}) -> relay -> ChannelData"))
        }
        Peer::Relay { address } => {
            await_at_client(conn, *address, Some(PROBE_CHANNEL), payload, timeout)?;
            Ok("ChannelData -> relay -> relay -> ChannelData".into())
        }
    }
}

/// Connects TLS over `tcp` and completes the handshake within `timeout`.
fn tls_handshake(
    mut tcp: TcpStream,
    name: &str,
    options: &TlsOptions,
    timeout: Duration,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>, ProbeError> {
    let config = tls_config(options)?;
    let name = ServerName::try_from(name.to_owned()).map_err(|e| ProbeError::Tls(format!("server name: {e}")))?;
    let mut conn = rustls::ClientConnection::new(config, name).map_err(|e| ProbeError::Tls(e.to_string()))?;
    tcp.set_read_timeout(Some(timeout)).map_err(|source| ProbeError::Io { what: "socket option", source })?;
    let deadline = Instant::now() + timeout;
    while conn.is_handshaking() {
        if Instant::now() >= deadline {
            return Err(ProbeError::Tls(format!("no handshake within {timeout:?}")));
        }
        match conn.complete_io(&mut tcp) {
            Ok(_) => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(ProbeError::Tls(format!("no handshake within {timeout:?}")))
            }
            Err(e) => return Err(ProbeError::Tls(e.to_string())),
        }
    }
    Ok(rustls::StreamOwned::new(conn, tcp))
}

/// Where Debian, Fedora and Alpine keep the system CA bundle.
const SYSTEM_CA_BUNDLES: [&str; 3] =
    ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"];

fn tls_config(options: &TlsOptions) -> Result<Arc<rustls::ClientConfig>, ProbeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ProbeError::Tls(e.to_string()))?;
    let config = if options.danger_accept_invalid_certs {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        let path = match &options.ca_file {
            Some(path) => path.clone(),
            None => SYSTEM_CA_BUNDLES.iter().map(PathBuf::from).find(|p| p.exists()).ok_or_else(|| {
                ProbeError::CaFile { path: PathBuf::from(SYSTEM_CA_BUNDLES[0]), reason: "no system CA bundle".into() }
            })?,
        };
        builder.with_root_certificates(load_roots(&path)?).with_no_client_auth()
    };
    Ok(Arc::new(config))
}

fn load_roots(path: &Path) -> Result<rustls::RootCertStore, ProbeError> {
    let fail = |reason: String| ProbeError::CaFile { path: path.to_owned(), reason };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| fail(e.to_string()))? {
        let cert = cert.map_err(|e| fail(e.to_string()))?;
        roots.add(cert).map_err(|e| fail(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(fail("no certificates in the file".into()));
    }
    Ok(roots)
}

/// `--insecure`: accepts any server certificate (signatures are still checked, so the
/// handshake is real; who holds the key is not).
#[derive(Debug)]
pub struct AcceptAnyCertificate(pub Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The `turnd probe` command line (clap derives it here so that the binary only
/// dispatches to [`cli`]).
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// The server: stun:HOST[:PORT], turn:HOST[:PORT][?transport=udp|tcp], turns:HOST[:PORT].
    pub url: String,
    /// Username (with --password), or the user id in a REST username (with --secret).
    #[arg(long)]
    pub user: Option<String>,
    /// Password of --user.
    #[arg(long, env = "TURND_PROBE_PASSWORD", conflicts_with = "secret")]
    pub password: Option<String>,
    /// TURN REST API shared secret: the probe mints its own short-lived credential.
    #[arg(long, env = "TURND_SECRET")]
    pub secret: Option<String>,
    /// Lifetime of a minted REST credential.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// The longest wait for any one step.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// CA certificates (PEM) to verify a TLS server with, instead of the system's.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Verify the certificate for this name instead of the URL's host.
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
    /// Do not verify the TLS certificate (the probe then proves nothing about who answered).
    #[arg(long)]
    pub insecure: bool,
}

/// Why the command line cannot run.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The URL did not parse.
    #[error("{url:?}: {error}")]
    Url {
        /// The URL as given.
        url: String,
        /// Why.
        error: UrlError,
    },
    /// `--user` without `--password` (and no `--secret`), or the reverse.
    #[error("--user needs --password (or --secret for REST credentials)")]
    Credentials,
    /// The probe ran and a step failed.
    #[error(transparent)]
    Failed(#[from] Failure),
}

/// Runs `turnd probe`: prints each step to `out` and a verdict line. `unix_now` is the
/// wall clock (seconds) that REST credentials expire from.
pub fn cli(args: &ProbeArgs, unix_now: u64, out: &mut dyn Write) -> Result<Summary, CliError> {
    let url: ServerUrl = args.url.parse().map_err(|error| CliError::Url { url: args.url.clone(), error })?;
    let credentials = match (&args.user, &args.password, &args.secret) {
        (_, _, Some(secret)) => Credentials::rest(secret, args.user.as_deref().unwrap_or("probe"), unix_now, args.ttl),
        (Some(username), Some(password), None) => {
            Credentials::LongTerm { username: username.clone(), password: password.clone() }
        }
        (None, None, None) => Credentials::None,
        _ => return Err(CliError::Credentials),
    };
    let options = Options {
        url: url.clone(),
        credentials,
        timeout: args.timeout,
        tls: TlsOptions {
            ca_file: args.ca.clone(),
            server_name: args.server_name.clone(),
            danger_accept_invalid_certs: args.insecure,
        },
    };
    let _ = writeln!(out, "probing {url}");
    let start = Instant::now();
    let result = run(&options, &mut |step| {
        let _ = writeln!(out, "  {step}");
    });
    let total = start.elapsed().as_secs_f64() * 1000.0;
    match &result {
        Ok(summary) => {
            let what = match (url.scheme.is_turn(), summary.relayed_data) {
                (_, true) => "STUN and TURN work, data relayed both ways",
                (true, false) => "STUN works; TURN not fully checked",
                (false, false) => "STUN works",
            };
            let warnings = match summary.warnings.len() {
                0 => String::new(),
                n => format!(" ({n} warning{})", if n == 1 { "" } else { "s" }),
            };
            let _ = writeln!(out, "PASS {url}: {what}{warnings} in {total:.0} ms");
        }
        Err(failure) => {
            let _ = writeln!(out, "FAIL {url}: {failure}");
        }
    }
    result.map_err(CliError::Failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Result<ServerUrl, UrlError> {
        s.parse()
    }

    #[test]
    fn rfc7065_3_1_turn_urls_with_default_ports_and_transports() {
        let u = url("turn:example.org").unwrap();
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port, u.transport),
            (Scheme::Turn, "example.org", 3478, Transport::Udp)
        );
        let u = url("turn:example.org:3479?transport=tcp").unwrap();
        assert_eq!((u.port, u.transport), (3479, Transport::Tcp));
        let u = url("turns:example.org").unwrap();
        assert_eq!((u.port, u.transport), (5349, Transport::Tls));
        let u = url("turns:example.org?transport=tcp").unwrap();
        assert_eq!(u.transport, Transport::Tls);
        assert_eq!(url("turns:example.org?transport=udp"), Err(UrlError::Dtls));
        assert_eq!(url("TURN:Example.org:1?transport=UDP").unwrap().transport, Transport::Udp);
    }

    #[test]
    fn rfc7064_3_1_stun_urls_take_no_query() {
        let u = url("stun:127.0.0.1:19302").unwrap();
        assert_eq!((u.scheme, u.port, u.transport), (Scheme::Stun, 19302, Transport::Udp));
        assert_eq!(url("stuns:h").unwrap().port, 5349);
        assert!(matches!(url("stun:h?transport=tcp"), Err(UrlError::Query(_))));
    }

    #[test]
    fn ipv6_literals_need_brackets() {
        let u = url("turn:[::1]:3478?transport=tcp").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 3478));
        assert_eq!(url("turn:[2001:db8::1]").unwrap().port, 3478);
        assert_eq!(url("turn:::1"), Err(UrlError::Host));
        assert_eq!(url("turn:[nope]:1"), Err(UrlError::Host));
        assert_eq!(u.to_string(), "turn:[::1]:3478?transport=tcp");
    }

    #[test]
    fn malformed_urls_say_why() {
        assert_eq!(url("http://example.org"), Err(UrlError::Scheme));
        assert_eq!(url("example.org"), Err(UrlError::Scheme));
        assert_eq!(url("turn://example.org"), Err(UrlError::Slashes));
        assert_eq!(url("turn:example.org:0"), Err(UrlError::Port));
        assert_eq!(url("turn:example.org:99999"), Err(UrlError::Port));
        assert_eq!(url("turn:"), Err(UrlError::Host));
        assert_eq!(url("turn:a b"), Err(UrlError::Host));
        assert!(matches!(url("turn:h?transport=sctp"), Err(UrlError::Query(_))));
    }

    #[test]
    fn rest_credentials_follow_the_turn_rest_draft() {
        let c = Credentials::rest("s3cret", "probe", 1_700_000_000, Duration::from_secs(600));
        let Credentials::LongTerm { username, password } = c else { panic!("long-term") };
        assert_eq!(username, "1700000600:probe");
        assert_eq!(password, rest_password(b"s3cret", "1700000600:probe"));
    }

    #[test]
    fn every_error_code_a_turn_server_sends_has_a_hint() {
        for code in [300, 400, 401, 403, 420, 437, 438, 440, 441, 442, 443, 486, 500, 508] {
            assert!(error_code_hint(code).is_some(), "{code}");
        }
        assert_eq!(error_code_hint(499), None);
        let f = Failure { step: "allocate", error: ProbeError::ErrorResponse { code: 486, reason: "Quota".into() } };
        assert!(f.to_string().starts_with("allocate failed: 486 Quota (Allocation Quota Reached"), "{f}");
    }

    #[test]
    fn rfc8656_12_5_stream_framing_pads_channel_data() {
        // ChannelData of 5 bytes arrives padded to 8, followed by half a STUN header.
        let mut buf = vec![0x40, 0x00, 0, 5, b'h', b'e', b'l', b'l', b'o', 0, 0, 0, 0x01, 0x01];
        match frame(&mut buf).unwrap() {
            Some(Packet::ChannelData(0x4000, data)) => assert_eq!(data, b"hello"),
            other => panic!("{other:?}"),
        }
        assert_eq!(buf, [0x01, 0x01]);
        assert!(frame(&mut buf).unwrap().is_none());
        buf.extend_from_slice(&[0, 0, 0x21, 0x12, 0xA4, 0x42]);
        buf.extend_from_slice(&[7; 12]);
        match frame(&mut buf).unwrap() {
            Some(Packet::Stun(m)) => assert_eq!(m.len(), 20),
            other => panic!("{other:?}"),
        }
        assert!(buf.is_empty());
        let mut junk = vec![0xFF, 0, 0, 0];
        assert!(frame(&mut junk).is_err());
    }

    #[test]
    fn datagrams_are_demultiplexed_without_trusting_lengths() {
        assert!(
            matches!(datagram(vec![0x40, 0x01, 0, 2, 9, 9, 0, 0]), Ok(Packet::ChannelData(0x4001, d)) if d == [9, 9])
        );
        assert!(datagram(vec![0x40, 0x01, 0, 9, 1]).is_err());
        assert!(datagram(vec![0xC0, 0]).is_err());
        assert!(datagram(Vec::new()).is_err());
    }

    #[test]
    fn a_step_prints_on_one_line() {
        let s = Step { name: "binding", elapsed: Duration::from_micros(1500), status: Status::Ok, detail: "x".into() };
        assert_eq!(s.to_string(), "ok   binding           1.5 ms  x");
        let e = ProbeError::ErrorResponse { code: 401, reason: String::new() };
        assert_eq!(e.to_string(), "401 Unauthorized");
    }
}
