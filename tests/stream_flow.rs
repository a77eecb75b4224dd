//! TCP and TLS client connections keep relaying through what makes a connection's
//! reads and writes stop and start again, against the real binary over loopback:
//! pairs of clients relay to each other's relayed address (relay to relay, as two
//! browsers behind firewalls do), and each test then checks that a ChannelData round
//! trip still goes through, both ways, on every pair.
//!
//! - bursts of ChannelData larger than one read of the server's, each message its
//!   own TLS record (many small records per segment) or all in a few large records;
//! - a client that stops reading, with a small receive buffer, while its partner
//!   floods it and while it keeps sending itself, and then reads again;
//! - the same on a `tls` listener that shares its port (`passthrough-to`), whose
//!   connections are read before the TLS handshake to route them.
//!
//! Every TLS connection after the first resumes a session, as a browser's do.
//!
//! A round trip is retried every 250 ms until it is answered, for at most [`STALL`]:
//! relayed UDP may drop a datagram under a burst. So what these tests catch is a
//! connection the server stops serving; bytes the server holds back until the client
//! sends again would be released by the retry itself.
// A test may unwrap (a panic is a failed test) and use unsafe for process plumbing
// (the common helpers send signals).
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::turn_client::{self, StreamClient};
use common::*;
use rustls::ClientConnection;
use rustls_pki_types::ServerName;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};
use turnd::client::channel_data;
use turnd::stun::framing::frame_len;

/// How long a round trip may take before the connection counts as stalled.
const STALL: Duration = Duration::from_secs(10);
/// The channel each client binds to its partner's relayed address.
const CHANNEL: u16 = 0x4000;
/// Client pairs per test: connections go to workers by address, so several pairs
/// put both ends on one worker and on two.
const PAIRS: usize = 4;

/// One end of a client connection, driven without blocking: what it sends is queued
/// (in the TLS session, or in `pending` for TCP) and written as the socket takes it;
/// what it reads is framed from `inbox`.
struct Duplex {
    sock: TcpStream,
    tls: Option<ClientConnection>,
    /// TCP bytes not written yet.
    pending: Vec<u8>,
    /// Bytes read, not framed yet.
    inbox: Vec<u8>,
    /// Its channel's ChannelData received so far.
    received: usize,
}

impl Duplex {
    /// Queues `bytes`: for TLS, as one record (or more, past 16 KiB).
    fn queue(&mut self, bytes: &[u8]) {
        nonblocking::queue(self.tls.as_mut(), &mut self.pending, bytes);
    }

    /// Writes what the socket takes now.
    fn write_some(&mut self) {
        nonblocking::write_some(&mut self.sock, self.tls.as_mut(), &mut self.pending, "client");
    }

    /// Reads what the socket has now into `inbox`.
    fn read_some(&mut self) {
        let mut buf = [0u8; 16384];
        match self.tls.as_mut() {
            Some(tls) => loop {
                match tls.read_tls(&mut self.sock) {
                    Ok(0) => panic!("the server closed a TLS connection"),
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("client read: {e}"),
                }
                tls.process_new_packets().expect("TLS records from the server");
                loop {
                    match tls.reader().read(&mut buf) {
                        Ok(0) => panic!("the server ended the TLS session"),
                        Ok(n) => self.inbox.extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => panic!("client read: {e}"),
                    }
                }
            },
            None => loop {
                match self.sock.read(&mut buf) {
                    Ok(0) => panic!("the server closed a TCP connection"),
                    Ok(n) => self.inbox.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("client read: {e}"),
                }
            },
        }
    }

    /// Takes the whole ChannelData payloads out of `inbox`.
    fn payloads(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut at = 0;
        while let Ok(Some(len)) = frame_len(&self.inbox[at..]) {
            let Some(frame) = self.inbox.get(at..at + len) else {
                break;
            };
            // ChannelData: its first two bits are 01; answers to requests are not
            // expected once the pair is set up.
            assert_eq!(frame[0] >> 6, 1, "only ChannelData after set-up");
            let size = u16::from_be_bytes([frame[2], frame[3]]) as usize;
            out.push(frame[4..4 + size].to_vec());
            at += len;
        }
        self.inbox.drain(..at);
        self.received += out.len();
        out
    }

    /// One pass: writes, reads, returns the payloads that arrived.
    fn pump(&mut self) -> Vec<Vec<u8>> {
        self.write_some();
        self.read_some();
        self.payloads()
    }
}

/// Allocates over `stream`; the relayed address.
fn allocate(stream: &mut (impl Read + Write), client: &mut StreamClient) -> SocketAddr {
    client.allocate(stream).expect("Allocate over a stream").0
}

/// A client connection while it allocates and binds its channel (blocking reads), before
/// it becomes a [`Duplex`].
enum Setup {
    Tcp(TcpStream),
    Tls(Box<turn_client::TlsStream>),
}

impl Setup {
    fn connect(server: SocketAddr, tls: Option<&Arc<rustls::ClientConfig>>, recv_buffer: Option<usize>) -> Setup {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        if let Some(size) = recv_buffer {
            // Before connecting: the window the server sees is set at the handshake.
            socket.set_recv_buffer_size(size).unwrap();
        }
        socket.connect(&server.into()).unwrap();
        let tcp: TcpStream = socket.into();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        tcp.set_nodelay(true).unwrap();
        match tls {
            Some(config) => {
                let name = ServerName::IpAddress(server.ip().into());
                let conn = ClientConnection::new(config.clone(), name).unwrap();
                let mut stream = rustls::StreamOwned::new(conn, tcp);
                while stream.conn.is_handshaking() {
                    stream.conn.complete_io(&mut stream.sock).expect("TLS handshake");
                }
                Setup::Tls(Box::new(stream))
            }
            None => Setup::Tcp(tcp),
        }
    }

    fn allocate(&mut self, client: &mut StreamClient) -> SocketAddr {
        match self {
            Setup::Tcp(s) => allocate(s, client),
            Setup::Tls(s) => allocate(&mut **s, client),
        }
    }

    fn bind(&mut self, client: &mut StreamClient, peer: SocketAddr) {
        let code = match self {
            Setup::Tcp(s) => client.channel_bind(s, CHANNEL, peer),
            Setup::Tls(s) => client.channel_bind(&mut **s, CHANNEL, peer),
        };
        assert_eq!(code, None, "ChannelBind to {peer}");
    }

    fn into_duplex(self) -> Duplex {
        let (sock, tls) = match self {
            Setup::Tcp(s) => (s, None),
            Setup::Tls(s) => {
                let rustls::StreamOwned { mut conn, sock } = *s;
                // Everything the test queues is kept; it is written as the socket takes it.
                conn.set_buffer_limit(None);
                (sock, Some(conn))
            }
        };
        sock.set_nonblocking(true).unwrap();
        Duplex { sock, tls, pending: Vec::new(), inbox: Vec::new(), received: 0 }
    }
}

/// Two clients relaying to each other's relayed address over `server`; `a_recv_buffer`
/// sets the first one's receive buffer.
fn pair(server: SocketAddr, tls: Option<&Arc<rustls::ClientConfig>>, a_recv_buffer: Option<usize>) -> (Duplex, Duplex) {
    let mut a = Setup::connect(server, tls, a_recv_buffer);
    let mut b = Setup::connect(server, tls, None);
    let (mut ca, mut cb) = (StreamClient::new(USER, PASSWORD, REALM), StreamClient::new(USER, PASSWORD, REALM));
    let relay_a = a.allocate(&mut ca);
    let relay_b = b.allocate(&mut cb);
    a.bind(&mut ca, relay_b);
    b.bind(&mut cb, relay_a);
    (a.into_duplex(), b.into_duplex())
}

fn message(tag: &[u8], size: usize) -> Vec<u8> {
    let mut payload = tag.to_vec();
    payload.resize(size.max(tag.len()), b'.');
    channel_data(CHANNEL, &payload, true).unwrap()
}

/// Sends a tagged message from `from` until `to` has it, pumping both (and whatever
/// else arrives is taken and dropped); panics if that takes longer than [`STALL`].
fn round_trip(from: &mut Duplex, to: &mut Duplex, tag: &str, what: &str) {
    let started = Instant::now();
    let mut next_send = started;
    loop {
        if Instant::now() >= next_send {
            from.queue(&message(tag.as_bytes(), 100));
            next_send += Duration::from_millis(250);
        }
        from.pump();
        if to.pump().iter().any(|p| p.starts_with(tag.as_bytes())) {
            return;
        }
        assert!(
            started.elapsed() < STALL,
            "{what}: {tag} not relayed within {STALL:?} (the sender's connection has {} bytes queued; \
             the receiver got {} messages in all)",
            from.tls.as_ref().map_or(from.pending.len(), |t| usize::from(t.wants_write())),
            to.received
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Both ways on every pair.
fn still_relays(pairs: &mut [(Duplex, Duplex)], what: &str) {
    for (i, (a, b)) in pairs.iter_mut().enumerate() {
        round_trip(a, b, &format!("ping {i}"), what);
        round_trip(b, a, &format!("pong {i}"), what);
    }
}

/// Each pair's first client sends `rounds` bursts of `count` messages of `size` bytes
/// to the second, which sends each message it gets straight back; `small_records`
/// writes each message as its own TLS record, else a burst goes as few large ones.
fn bursts(pairs: &mut [(Duplex, Duplex)], rounds: usize, count: usize, size: usize, small_records: bool) {
    for round in 0..rounds {
        for (a, _) in pairs.iter_mut() {
            if small_records {
                for i in 0..count {
                    a.queue(&message(format!("burst {round} {i}").as_bytes(), size));
                }
            } else {
                let burst: Vec<u8> =
                    (0..count).flat_map(|i| message(format!("burst {round} {i}").as_bytes(), size)).collect();
                a.queue(&burst);
            }
        }
        // Echoes go back while the burst is still being written: both directions of
        // each connection busy at once.
        let until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < until {
            for (a, b) in pairs.iter_mut() {
                a.pump();
                for payload in b.pump() {
                    b.queue(&channel_data(CHANNEL, &payload, true).unwrap());
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        still_relays(pairs, &format!("after burst {round} ({count} x {size} bytes)"));
    }
}

/// [`PAIRS`] pairs; over TLS when `tls`, every connection after the first resuming the
/// first one's session (as a browser's second connection to a server does).
fn pairs(server: SocketAddr, tls: bool, a_recv_buffer: Option<usize>) -> Vec<(Duplex, Duplex)> {
    let config = tls.then(|| Arc::new(turn_client::any_certificate_config()));
    let pairs: Vec<(Duplex, Duplex)> = (0..PAIRS).map(|_| pair(server, config.as_ref(), a_recv_buffer)).collect();
    if tls {
        let resumed = pairs
            .iter()
            .flat_map(|(a, b)| [a, b])
            .filter(|d| d.tls.as_ref().and_then(|t| t.handshake_kind()) == Some(rustls::HandshakeKind::Resumed))
            .count();
        assert!(resumed > 0, "no TLS session was resumed");
    }
    pairs
}

#[test]
fn bursts_of_many_small_tls_records_and_of_large_ones_keep_relaying() {
    for worker_loop in [false, true] {
        let (turnd, _cert) = stream_turnd(None, "", worker_loop);
        let mut tls = pairs(turnd.addr("tls"), true, None);
        still_relays(&mut tls, "set up");
        // 200 x 200 bytes: 200 records in a few segments, more than one read's budget.
        bursts(&mut tls, 5, 200, 200, true);
        // 64 x 1,000 bytes in four 16 KiB records.
        bursts(&mut tls, 5, 64, 1000, false);
    }
}

#[test]
fn bursts_over_tcp_keep_relaying() {
    for worker_loop in [false, true] {
        let (turnd, _cert) = stream_turnd(None, "", worker_loop);
        let mut tcp = pairs(turnd.addr("tcp"), false, None);
        still_relays(&mut tcp, "set up");
        let adopted = turnd.logs().contains("connection adopted by its worker");
        assert_eq!(adopted, worker_loop, "[tcp] worker-loop = {worker_loop} decides who serves the connections");
        bursts(&mut tcp, 5, 200, 200, true);
        bursts(&mut tcp, 5, 64, 1000, false);
    }
}

/// The first client of each pair stops reading, with a 4 KiB receive buffer, while
/// its partner floods it and while it goes on sending itself; then it reads again.
fn a_client_that_stops_reading_then_reads_again(server: SocketAddr, tls: bool) {
    let mut pairs = pairs(server, tls, Some(4096));
    still_relays(&mut pairs, "set up");
    for round in 0..3 {
        let until = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < until {
            for (a, b) in pairs.iter_mut() {
                // a writes but never reads; b floods a and takes what a sends.
                a.queue(&message(format!("from a {round}").as_bytes(), 400));
                a.write_some();
                for _ in 0..8 {
                    b.queue(&message(format!("flood {round}").as_bytes(), 1000));
                }
                b.pump();
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        // a reads again (what waited, and what the server dropped meanwhile is lost).
        still_relays(&mut pairs, &format!("after a stopped reading (round {round})"));
    }
}

#[test]
fn a_tls_client_that_stops_reading_then_reads_again_still_relays() {
    for worker_loop in [false, true] {
        let (turnd, _cert) = stream_turnd(None, "", worker_loop);
        a_client_that_stops_reading_then_reads_again(turnd.addr("tls"), true);
    }
}

#[test]
fn a_tcp_client_that_stops_reading_then_reads_again_still_relays() {
    for worker_loop in [false, true] {
        let (turnd, _cert) = stream_turnd(None, "", worker_loop);
        a_client_that_stops_reading_then_reads_again(turnd.addr("tcp"), false);
    }
}

#[test]
fn the_same_through_a_tls_port_shared_with_https() {
    for worker_loop in [false, true] {
        // The backend is never reached (TURN clients' ClientHellos stay with turnd), so
        // a listener that accepts and holds connections stands in for it.
        let backend = TcpListener::bind("127.0.0.1:0").unwrap();
        let (turnd, _cert) =
            stream_turnd(None, &format!("passthrough-to = \"{}\"", backend.local_addr().unwrap()), worker_loop);
        let server = turnd.addr("tls");
        let mut tls = pairs(server, true, None);
        still_relays(&mut tls, "set up");
        bursts(&mut tls, 3, 200, 200, true);
        bursts(&mut tls, 3, 64, 1000, false);
        drop(tls);
        a_client_that_stops_reading_then_reads_again(server, true);
    }
}
