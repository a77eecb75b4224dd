//! TCP and TLS client connections served by their worker's loop (`[tcp] worker-loop =
//! true`) carry every relayed message, counted one by one, against the real binary
//! over loopback with two workers. Pairs of clients relay to each other's relayed
//! address, as two browsers behind firewalls do (so both directions cross two relay
//! sockets, and the two ends of a pair may sit on two workers), and follow a
//! browser's sequence: CreatePermission, Send indications, then a ChannelBind sent
//! while indications keep flowing, then ChannelData. On top of that, from a seeded
//! random schedule: ping-pong, bursts of many small and some large messages, pauses,
//! permission, channel and allocation refreshes in the middle of the traffic, and
//! clients that stop reading for a while. One case also sends now and then to a port
//! nobody listens on (an ICE candidate the other side gave up), whose ICMP errors come
//! back to the relay sockets.
//!
//! Each message carries its sequence number; a receiver checks it gets every one, once.
//! The test keeps what is in flight per direction under what the socket buffers on the
//! way hold (the relay sockets' receive buffers, the server's per-connection output
//! limit), so over loopback no message may be lost: a missing one is a bug, and a
//! direction that stops moving for [`STALL`] fails the test at once, with the
//! server's counters and log.
//!
//! `TURND_SOAK_SEED` replays a schedule; `TURND_SOAK_STEPS` makes a run longer.
// A test may unwrap (a panic is a failed test) and use unsafe for process plumbing
// (the common helpers send signals).
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use rustls::ClientConnection;
use rustls_pki_types::ServerName;
use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};
use turnd::client::{channel_data, Client, Credentials, DataIndication, Outgoing, Packet, Request, AUTH_ATTEMPTS};
use turnd::stun::framing::Framer;

/// A direction with messages in flight that makes no progress this long is stalled.
const STALL: Duration = Duration::from_secs(5);
/// The channel each client binds to its partner's relayed address.
const CHANNEL: u16 = 0x4000;
/// Client pairs per run: connections go to workers by address, so some pairs have both
/// ends on one worker and some on two.
const PAIRS: usize = 4;
/// Messages in flight per direction at most: bursts stay within what a relay socket's
/// receive buffer holds (about a hundred small datagrams at the default 208 KiB).
const WINDOW: usize = 48;
/// Payload bytes in flight per direction at most.
const WINDOW_BYTES: usize = 48 * 1024;
/// Scheduler steps per run (each a few milliseconds of traffic).
const STEPS: usize = 300;

/// A request sent in the middle of the traffic, waiting for its answer.
struct InFlight {
    sent: Outgoing,
    request: Request,
    what: &'static str,
    attempts: usize,
}

/// One TURN client over TCP or TLS, driven without blocking.
struct Peer {
    name: String,
    sock: TcpStream,
    tls: Option<ClientConnection>,
    /// TCP bytes not written yet.
    pending: Vec<u8>,
    framer: Framer,
    client: Client,
    relay: SocketAddr,
    /// The partner's relayed address: where this client sends.
    partner: SocketAddr,
    /// Its ChannelBind has succeeded: it sends ChannelData from now on.
    bound: bool,
    requests: Vec<InFlight>,
    /// Answers to requests, by what was asked (checked at the end).
    answered: Vec<&'static str>,
    /// Messages sent so far (the next sequence number) and their payload sizes.
    sent_sizes: Vec<usize>,
    /// Which of the partner's messages arrived, by sequence number.
    got: Vec<bool>,
    received: usize,
    duplicates: usize,
    /// How many arrived as ChannelData (the rest as Data indications).
    as_channel_data: usize,
    /// Not reading until then (a client whose reads lag).
    deaf_until: Option<Instant>,
    /// ICMP errors relayed to it.
    icmp: usize,
}

impl Peer {
    fn connect(server: SocketAddr, tls: Option<&Arc<rustls::ClientConfig>>, name: String, seed: u64) -> Peer {
        let sock = TcpStream::connect(server).unwrap();
        sock.set_nodelay(true).unwrap();
        sock.set_nonblocking(true).unwrap();
        let tls = tls.map(|config| {
            let mut conn = ClientConnection::new(config.clone(), ServerName::IpAddress(server.ip().into())).unwrap();
            conn.set_buffer_limit(None);
            conn
        });
        let mut tid = [0u8; 12];
        tid[..8].copy_from_slice(&seed.to_be_bytes());
        Peer {
            name,
            sock,
            tls,
            pending: Vec::new(),
            framer: Framer::default(),
            client: Client::new(Credentials::long_term(USER, PASSWORD), tid),
            relay: "0.0.0.0:0".parse().unwrap(),
            partner: "0.0.0.0:0".parse().unwrap(),
            bound: false,
            requests: Vec::new(),
            answered: Vec::new(),
            sent_sizes: Vec::new(),
            got: Vec::new(),
            received: 0,
            duplicates: 0,
            as_channel_data: 0,
            deaf_until: None,
            icmp: 0,
        }
    }

    fn queue(&mut self, bytes: &[u8]) {
        nonblocking::queue(self.tls.as_mut(), &mut self.pending, bytes);
    }

    fn write_some(&mut self) {
        nonblocking::write_some(&mut self.sock, self.tls.as_mut(), &mut self.pending, &self.name);
    }

    /// Reads what the socket has into the framer (through TLS when there is TLS).
    fn read_some(&mut self) {
        loop {
            match self.tls.as_mut() {
                Some(tls) => {
                    // Plaintext rustls holds first; the socket when there is none.
                    match tls.reader().read(self.framer.spare()) {
                        Ok(0) => panic!("{}: the server ended the TLS session", self.name),
                        Ok(n) => self.framer.filled(n),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => match tls.read_tls(&mut self.sock) {
                            Ok(0) => panic!("{}: the server closed the connection", self.name),
                            Ok(_) => {
                                tls.process_new_packets().expect("TLS records from the server");
                            }
                            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                            Err(e) => panic!("{}: read: {e}", self.name),
                        },
                        Err(e) => panic!("{}: TLS read: {e}", self.name),
                    }
                }
                None => match self.sock.read(self.framer.spare()) {
                    Ok(0) => panic!("{}: the server closed the connection", self.name),
                    Ok(n) => self.framer.filled(n),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("{}: read: {e}", self.name),
                },
            }
            self.take_frames();
        }
        self.take_frames();
    }

    fn take_frames(&mut self) {
        let mut frames = Vec::new();
        while let Some(frame) = self.framer.next_frame().expect("framing from the server") {
            frames.push(frame.to_vec());
        }
        for frame in frames {
            match Packet::parse(&frame).expect("a frame from the server") {
                Packet::ChannelData { channel, data } => {
                    assert_eq!(channel, CHANNEL, "{}: ChannelData on an unknown channel", self.name);
                    self.as_channel_data += 1;
                    self.record(data);
                }
                Packet::Stun(message) => {
                    // A Data indication without DATA carries an ICMP error (RFC 8656 §11.4).
                    if message.get(..2) == Some(&[0x00, 0x17][..]) && DataIndication::parse(message).is_err() {
                        self.icmp += 1;
                    } else if let Some(indication) = DataIndication::parse(message).expect("a STUN message") {
                        assert_eq!(indication.peer, self.partner, "{}: data from elsewhere", self.name);
                        self.record(indication.data);
                    } else {
                        self.answer(message);
                    }
                }
            }
        }
    }

    fn record(&mut self, data: &[u8]) {
        assert_eq!(data.first(), Some(&b'S'), "{}: a payload not ours", self.name);
        let seq = u32::from_be_bytes(data[1..5].try_into().unwrap()) as usize;
        if self.got.len() <= seq {
            self.got.resize(seq + 1, false);
        }
        if std::mem::replace(&mut self.got[seq], true) {
            self.duplicates += 1;
        } else {
            self.received += 1;
        }
    }

    fn answer(&mut self, message: &[u8]) {
        let Some(i) = self.requests.iter().position(|r| r.sent.is_answered_by(message)) else {
            panic!("{}: a STUN message that answers nothing of ours", self.name);
        };
        let mut request = self.requests.swap_remove(i);
        let response = self.client.response(&request.sent, message).expect("a response");
        if !response.is_success() && request.attempts < AUTH_ATTEMPTS && self.client.learn(&response) {
            request.attempts += 1;
            request.sent = self.client.request(&request.request).unwrap();
            self.queue(&request.sent.bytes.clone());
            self.requests.push(request);
            return;
        }
        assert!(response.is_success(), "{}: {} failed: {:?}", self.name, request.what, response.error_code());
        match request.what {
            "Allocate" => self.relay = response.relayed().expect("XOR-RELAYED-ADDRESS"),
            "ChannelBind" => self.bound = true,
            _ => {}
        }
        self.answered.push(request.what);
    }

    /// Sends a request; its answer is taken as the traffic goes on.
    fn ask(&mut self, request: Request, what: &'static str) {
        let sent = self.client.request(&request).unwrap();
        self.queue(&sent.bytes);
        self.requests.push(InFlight { sent, request, what, attempts: 0 });
    }

    /// A numbered message to the partner: a Send indication until the channel is bound.
    fn send(&mut self, size: usize) {
        let seq = self.sent_sizes.len() as u32;
        let mut payload = vec![b'.'; size.max(5)];
        payload[0] = b'S';
        payload[1..5].copy_from_slice(&seq.to_be_bytes());
        let bytes = if self.bound {
            channel_data(CHANNEL, &payload, true).unwrap()
        } else {
            self.client.send_indication(self.partner, &payload).unwrap()
        };
        self.queue(&bytes);
        self.sent_sizes.push(payload.len());
    }

    fn pump(&mut self, now: Instant) {
        self.write_some();
        if self.deaf_until.is_some_and(|until| now < until) {
            return;
        }
        self.deaf_until = None;
        self.read_some();
    }
}

/// Messages (and payload bytes) `from` has sent that `to` has not received.
fn in_flight(from: &Peer, to: &Peer) -> (usize, usize) {
    let bytes = from.sent_sizes.iter().enumerate().filter(|(seq, _)| !to.got.get(*seq).copied().unwrap_or(false));
    let (count, total) = bytes.fold((0, 0), |(c, t), (_, size)| (c + 1, t + size));
    (count, total)
}

/// The server's counters and log tail, for a failure message.
fn server_state(turnd: &TurndProcess) -> String {
    let metrics = http::get(turnd.admin_addr(), "/metrics", &[]).body;
    let relayed: String = metrics
        .lines()
        .filter(|l| l.starts_with("turnd_relayed") || l.starts_with("turnd_dropped") || l.contains("tcp_connections"))
        .map(|l| format!("  {l}\n"))
        .collect();
    format!("---- server counters ----\n{relayed}---- server log ----\n{}", turnd.logs_tail(60))
}

/// Pumps every client until `done` says so; fails if a direction with messages in
/// flight moves for [`STALL`] no more.
fn pump_until(
    pairs: &mut [(Peer, Peer)],
    turnd: &TurndProcess,
    what: &str,
    mut done: impl FnMut(&[(Peer, Peer)]) -> bool,
) {
    let mut progress: Vec<(usize, usize, Instant)> =
        pairs.iter().map(|(a, b)| (a.received, b.received, Instant::now())).collect();
    loop {
        let now = Instant::now();
        for (a, b) in pairs.iter_mut() {
            a.pump(now);
            b.pump(now);
        }
        if done(pairs) {
            return;
        }
        for (i, (a, b)) in pairs.iter().enumerate() {
            let (seen_a, seen_b, since) = &mut progress[i];
            if a.received != *seen_a || b.received != *seen_b {
                (*seen_a, *seen_b, *since) = (a.received, b.received, now);
                continue;
            }
            let deaf = a.deaf_until.is_some() || b.deaf_until.is_some();
            let waiting = in_flight(a, b).0 + in_flight(b, a).0 + a.requests.len() + b.requests.len();
            if waiting > 0 && !deaf && now.duration_since(*since) > STALL {
                panic!(
                    "{what}: pair {i} stalled for {STALL:?}: {} -> {}: {} of {} in flight ({} as ChannelData), \
                     {} -> {}: {} of {} in flight; requests waiting: {:?} / {:?}\n{}",
                    a.name,
                    b.name,
                    in_flight(a, b).0,
                    a.sent_sizes.len(),
                    b.as_channel_data,
                    b.name,
                    a.name,
                    in_flight(b, a).0,
                    b.sent_sizes.len(),
                    a.requests.iter().map(|r| r.what).collect::<Vec<_>>(),
                    b.requests.iter().map(|r| r.what).collect::<Vec<_>>(),
                    server_state(turnd)
                );
            }
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// Whether `from` may send a message of `size` to `to` now without overrunning the
/// buffers on the way (see [`WINDOW`]).
fn room(from: &Peer, to: &Peer, size: usize) -> bool {
    let (count, bytes) = in_flight(from, to);
    count < WINDOW && bytes + size <= WINDOW_BYTES
}

fn random_size(rng: &mut Xorshift) -> usize {
    match rng.below(10) {
        0 => 1000 + rng.below(200) as usize,
        1 if rng.chance(20) => 4000 + rng.below(4000) as usize,
        _ => 20 + rng.below(200) as usize,
    }
}

/// One run: [`PAIRS`] pairs set up as a browser does, then the random schedule.
fn soak(
    turnd: &TurndProcess,
    server: SocketAddr,
    tls: Option<&Arc<rustls::ClientConfig>>,
    seed: u64,
    label: &str,
    stray: Option<SocketAddr>,
) {
    let steps = std::env::var("TURND_SOAK_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(STEPS);
    println!("{label}: seed {seed}, {steps} steps");
    let mut rng = Xorshift(seed | 1);
    let mut pairs: Vec<(Peer, Peer)> = (0..PAIRS)
        .map(|i| {
            let a = Peer::connect(server, tls, format!("{label} a{i}"), rng.next());
            let b = Peer::connect(server, tls, format!("{label} b{i}"), rng.next());
            (a, b)
        })
        .collect();
    for (a, b) in pairs.iter_mut() {
        a.ask(Request::allocate(), "Allocate");
        b.ask(Request::allocate(), "Allocate");
    }
    pump_until(&mut pairs, turnd, "Allocate", |p| {
        p.iter().all(|(a, b)| a.requests.is_empty() && b.requests.is_empty())
    });
    for (a, b) in pairs.iter_mut() {
        (a.partner, b.partner) = (b.relay, a.relay);
        for peer in [&mut *a, &mut *b] {
            let partner = peer.partner;
            peer.ask(Request::create_permission(partner), "CreatePermission");
            if let Some(stray) = stray {
                peer.ask(Request::create_permission(stray), "CreatePermission");
            }
        }
    }
    pump_until(&mut pairs, turnd, "CreatePermission", |p| {
        p.iter().all(|(a, b)| a.requests.is_empty() && b.requests.is_empty())
    });

    // When each client sends its ChannelBind (while its indications keep going).
    let bind_at: Vec<[usize; 2]> = (0..PAIRS)
        .map(|_| [steps / 10 + rng.below(steps as u64 / 5) as usize, steps / 10 + rng.below(steps as u64 / 5) as usize])
        .collect();
    for step in 0..steps {
        let now = Instant::now();
        for (i, (a, b)) in pairs.iter_mut().enumerate() {
            for (side, &bind_step) in bind_at[i].iter().enumerate() {
                let (from, to) = if side == 0 { (&mut *a, &mut *b) } else { (&mut *b, &mut *a) };
                if step == bind_step {
                    let partner = from.partner;
                    from.ask(Request::channel_bind(CHANNEL, partner), "ChannelBind");
                }
                match rng.below(100) {
                    // A flight of same-sized messages, as a DTLS handshake's
                    // fragments are (one write, so one read of the server's).
                    71..=78 => {
                        let size = if rng.chance(50) { 1200 } else { 100 + rng.below(1100) as usize };
                        for _ in 0..2 + rng.below(6) {
                            if !room(from, to, size) {
                                break;
                            }
                            from.send(size);
                        }
                    }
                    // A burst.
                    0..=14 => {
                        for _ in 0..1 + rng.below(40) {
                            let size = random_size(&mut rng);
                            if !room(from, to, size) {
                                break;
                            }
                            from.send(size);
                        }
                    }
                    // Ping-pong: one message, usually small.
                    15..=59 => {
                        let size = random_size(&mut rng);
                        if room(from, to, size) {
                            from.send(size);
                        }
                    }
                    // Refreshes in the middle of the traffic.
                    60..=61 => {
                        let partner = from.partner;
                        from.ask(Request::create_permission(partner), "CreatePermission");
                    }
                    62 if from.bound => {
                        let partner = from.partner;
                        from.ask(Request::channel_bind(CHANNEL, partner), "ChannelBind");
                    }
                    63 => from.ask(Request::refresh(600), "Refresh"),
                    // A packet to a port nobody listens on (a candidate the other side
                    // gave up): the relay socket gets an ICMP error back.
                    66..=70 if stray.is_some() => {
                        let bytes = from.client.send_indication(stray.unwrap(), b"stray").unwrap();
                        from.queue(&bytes);
                    }
                    // A client that stops reading for a while.
                    64..=65 if from.deaf_until.is_none() => {
                        from.deaf_until = Some(now + Duration::from_millis(50 + rng.below(300)));
                    }
                    _ => {}
                }
            }
        }
        for (a, b) in pairs.iter_mut() {
            a.pump(now);
            b.pump(now);
        }
        // Pauses of random length, now and then a long one.
        let pause = if rng.chance(3) { 50 + rng.below(200) } else { rng.below(4) };
        std::thread::sleep(Duration::from_millis(pause));
        if step % 50 == 49 {
            // Every direction keeps moving.
            pump_until(&mut pairs, turnd, &format!("step {step}"), |_| true);
        }
    }
    // Everyone reads again; everything sent must arrive.
    for (a, b) in pairs.iter_mut() {
        a.deaf_until = None;
        b.deaf_until = None;
    }
    pump_until(&mut pairs, turnd, "the end", |p| {
        p.iter().all(|(a, b)| {
            in_flight(a, b).0 == 0 && in_flight(b, a).0 == 0 && a.requests.is_empty() && b.requests.is_empty()
        })
    });
    for (a, b) in &pairs {
        for (from, to) in [(a, b), (b, a)] {
            assert_eq!(to.duplicates, 0, "{} got duplicates", to.name);
            assert!(from.bound && to.as_channel_data > 0, "{}: the channel was bound and used", from.name);
            assert!(to.as_channel_data < from.sent_sizes.len(), "{}: some went as indications", from.name);
            println!(
                "{} -> {}: {} messages ({} bytes), all arrived, {} as ChannelData; {} ICMP errors relayed to the sender",
                from.name,
                to.name,
                from.sent_sizes.len(),
                from.sent_sizes.iter().sum::<usize>(),
                to.as_channel_data,
                from.icmp
            );
        }
    }
}

fn seed() -> u64 {
    std::env::var("TURND_SOAK_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(random_u64)
}

#[test]
fn tls_clients_on_the_worker_loop_lose_no_relayed_message() {
    let (turnd, _cert) = stream_turnd(Some(2), "", true);
    soak(&turnd, turnd.addr("tls"), Some(&Arc::new(turn_client::any_certificate_config())), seed(), "tls", None);
    assert!(turnd.logs().contains("connection adopted by its worker"));
}

#[test]
fn tcp_clients_on_the_worker_loop_lose_no_relayed_message() {
    let (turnd, _cert) = stream_turnd(Some(2), "", true);
    soak(&turnd, turnd.addr("tcp"), None, seed(), "tcp", None);
    assert!(turnd.logs().contains("connection adopted by its worker"));
}

#[test]
fn tls_clients_through_a_port_shared_with_https_lose_no_relayed_message() {
    // TURN clients' ClientHellos stay with turnd: a listener that holds connections
    // stands in for the HTTPS backend.
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let (turnd, _cert) =
        stream_turnd(Some(2), &format!("passthrough-to = \"{}\"", backend.local_addr().unwrap()), true);
    soak(
        &turnd,
        turnd.addr("tls"),
        Some(&Arc::new(turn_client::any_certificate_config())),
        seed(),
        "tls passthrough",
        None,
    );
    assert!(turnd.logs().contains("connection adopted by its worker"));
}

/// A port nobody listens on (bound, then closed).
fn closed_port() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// Clients that also send now and then to a port nobody listens on: each such packet
/// brings an ICMP error back to the relay socket, which must cost no other message
/// (both ways of serving a connection send from the relay sockets alike).
#[test]
fn packets_to_a_closed_port_cost_no_other_message() {
    for worker_loop in [true, false] {
        let (turnd, _cert) = stream_turnd(Some(2), "", worker_loop);
        let label = format!("tcp, worker-loop = {worker_loop}, strays");
        soak(&turnd, turnd.addr("tcp"), None, seed(), &label, Some(closed_port()));
    }
}
