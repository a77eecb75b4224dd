//! RFC 6062 TCP relay allocations against the real binary: Connect out to a TCP echo
//! peer, inbound peer connections announced by ConnectionAttempt, ConnectionBind of data
//! connections carrying raw bytes both ways, the 446/447/400 errors, and coturn's
//! `turnutils_uclient -T` as a client this project did not write. Every test runs both
//! ways of serving a connection (`[tcp] worker-loop` false: a task per connection;
//! true: the worker's loop, which then splices data connections itself), and the data
//! connection tests check from the log which one served them. Data connections also go
//! through back-pressure both ways (one side stops reading while the other floods: every
//! byte arrives, in order), half-closes and resets each way, the allocation's end, and
//! TLS.
// A test may unwrap (a panic is a failed test) and use unsafe for process plumbing
// (signals, namespaces); the server code denies both (Cargo.toml [lints]).
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::turn_client;
use turnd::client::Request;

use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stun_codec::rfc5766::attributes::{RequestedTransport, XorPeerAddress};
use stun_codec::rfc5766::methods::ALLOCATE;
use stun_codec::{MessageClass, Method};
use turn_client::{error_code, read_stun, StreamClient, TurnClient};
use turnd::stun::attributes::{Attribute, ConnectionId, Opaque};

const CONNECT: u16 = 0x00A;
const CONNECTION_BIND: u16 = 0x00B;

/// turnd with TCP, TLS and UDP listeners; `worker_loop` sets `[tcp] worker-loop`.
fn config(worker_loop: bool) -> String {
    let (min, max) = relay_port_range();
    format!(
        "realm = \"{REALM}\"\n[[listen]]\ntransport = \"tcp\"\naddress = \"127.0.0.1:0\"\n\
         [[listen]]\ntransport = \"tls\"\naddress = \"127.0.0.1:0\"\n\
         [[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:0\"\n[admin]\nenabled = false\n\
         [tcp]\nworker-loop = {worker_loop}\n\
         [log]\nlevel = \"info,turnd::net::stream_conn=debug,turnd::net::stream_splice=debug,turnd::net::stream=debug\"\n\
         [relay]\nport-min = {min}\nport-max = {max}\nallowed-peers = [\"127.0.0.0/8\"]\nallow-host-peers = true\n\
         [[auth.user]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\n"
    )
}

/// turnd started with [`config`], and the certificate its TLS listener serves.
fn start(worker_loop: bool) -> (TurndProcess, TestCert) {
    println!("[tcp] worker-loop = {worker_loop}");
    let cert = TestCert::new();
    (TurndProcess::start(&cert.add_to(&config(worker_loop)), &[]), cert)
}

/// Waits (5 s at most) for the log to say that the worker's loop spliced a data
/// connection, and checks that it does exactly when `[tcp] worker-loop` is on.
fn check_served_by(turnd: &TurndProcess, worker_loop: bool) {
    const SPLICED: &str = "data connection spliced by its worker";
    if worker_loop {
        assert!(
            wait_for_log(turnd, SPLICED),
            "worker-loop = true: the loop splices data connections\n{}",
            turnd.logs()
        );
    } else {
        assert!(!turnd.logs().contains(SPLICED), "worker-loop = false: tasks splice data connections");
    }
}

/// Whether `line` shows up in the log within 5 s.
fn wait_for_log(turnd: &TurndProcess, line: &str) -> bool {
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < until {
        if turnd.logs().contains(line) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A TCP echo peer on loopback; counts accepted connections.
fn tcp_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(16) {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn method(code: u16) -> Method {
    Method::new(code).unwrap()
}

fn connection_id(m: &stun_codec::Message<Attribute>) -> Vec<u8> {
    m.get_attribute::<ConnectionId>().expect("CONNECTION-ID").value().to_vec()
}

fn connect_stream(server: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(server).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Opens a data connection and binds it to `id`; returns it ready for raw bytes.
fn bind_data(server: SocketAddr, id: Vec<u8>) -> TcpStream {
    let mut data = connect_stream(server);
    let mut client = StreamClient::new(USER, PASSWORD, REALM);
    let id: ConnectionId = Opaque(id);
    let response = client.request(&mut data, method(CONNECTION_BIND), vec![id.into()]);
    assert_eq!(response.class(), MessageClass::SuccessResponse, "{response:?}");
    data
}

fn tcp_allocate(control: &mut (impl Read + Write), client: &mut StreamClient) -> SocketAddr {
    let response = client.request(control, ALLOCATE, vec![RequestedTransport::new(6).into()]);
    assert_eq!(response.class(), MessageClass::SuccessResponse, "{response:?}");
    response.get_attribute::<stun_codec::rfc5766::attributes::XorRelayAddress>().unwrap().address()
}

#[test]
fn rfc6062_connect_then_connection_bind_carries_bytes_both_ways() {
    for worker_loop in [false, true] {
        let (turnd, _cert) = start(worker_loop);
        let peer = tcp_echo();
        let mut control = connect_stream(turnd.tcp_addr());
        let mut client = StreamClient::new(USER, PASSWORD, REALM);
        tcp_allocate(&mut control, &mut client);
        let response = client.request(&mut control, method(CONNECT), vec![XorPeerAddress::new(peer).into()]);
        assert_eq!(response.class(), MessageClass::SuccessResponse, "{response:?}");
        let id = connection_id(&response);
        // A second Connect to the same peer: 446.
        let again = client.request(&mut control, method(CONNECT), vec![XorPeerAddress::new(peer).into()]);
        assert_eq!(error_code(&again), Some(446));

        let mut data = bind_data(turnd.tcp_addr(), id.clone());
        data.write_all(b"raw bytes, no framing").unwrap();
        let mut echoed = [0u8; 21];
        data.read_exact(&mut echoed).unwrap();
        assert_eq!(&echoed, b"raw bytes, no framing");
        // The same id cannot be bound twice.
        let mut other = connect_stream(turnd.tcp_addr());
        let mut c2 = StreamClient::new(USER, PASSWORD, REALM);
        let id: ConnectionId = Opaque(id);
        assert_eq!(error_code(&c2.request(&mut other, method(CONNECTION_BIND), vec![id.into()])), Some(400));
        check_served_by(&turnd, worker_loop);
    }
}

#[test]
fn rfc6062_inbound_peer_connection_is_announced_and_bound() {
    for worker_loop in [false, true] {
        let (turnd, _cert) = start(worker_loop);
        let mut control = connect_stream(turnd.tcp_addr());
        let mut client = StreamClient::new(USER, PASSWORD, REALM);
        let relayed = tcp_allocate(&mut control, &mut client);

        // Without a permission the relay refuses the peer.
        let mut stranger = TcpStream::connect(relayed).unwrap();
        stranger.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        assert!(matches!(stranger.read(&mut [0u8; 1]), Ok(0) | Err(_)), "closed without a permission");

        let permission = client.request(
            &mut control,
            stun_codec::rfc5766::methods::CREATE_PERMISSION,
            vec![XorPeerAddress::new("127.0.0.1:1".parse().unwrap()).into()],
        );
        assert_eq!(permission.class(), MessageClass::SuccessResponse);
        let mut peer = TcpStream::connect(relayed).unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let attempt = read_stun(&mut control);
        assert_eq!(attempt.method(), method(0x00C), "ConnectionAttempt indication");
        assert_eq!(attempt.get_attribute::<XorPeerAddress>().unwrap().address(), peer.local_addr().unwrap());
        // What the peer sends before the ConnectionBind reaches the client first.
        peer.write_all(b"early, ").unwrap();
        let mut data = bind_data(turnd.tcp_addr(), connection_id(&attempt));
        peer.write_all(b"from the peer").unwrap();
        let mut got = [0u8; 20];
        data.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"early, from the peer");
        data.write_all(b"and back").unwrap();
        let mut got = [0u8; 8];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"and back");
        check_served_by(&turnd, worker_loop);
    }
}

#[test]
fn rfc6062_errors_447_and_400() {
    for worker_loop in [false, true] {
        let (turnd, _cert) = start(worker_loop);
        let mut control = connect_stream(turnd.tcp_addr());
        let mut client = StreamClient::new(USER, PASSWORD, REALM);
        tcp_allocate(&mut control, &mut client);
        // A closed port: the connect fails, 447.
        let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let response = client.request(&mut control, method(CONNECT), vec![XorPeerAddress::new(closed).into()]);
        assert_eq!(error_code(&response), Some(447));
        // A TCP allocation over UDP: 400.
        let mut udp = TurnClient::new("127.0.0.1:0", turnd.udp_addr(), USER, PASSWORD, REALM);
        let response = udp.request(ALLOCATE, vec![RequestedTransport::new(6).into()]);
        assert_eq!(error_code(&response), Some(400));
        // Connect on a UDP allocation: 400.
        udp.allocate(vec![]).unwrap();
        let response = udp.request(method(CONNECT), vec![XorPeerAddress::new(closed).into()]);
        assert_eq!(error_code(&response), Some(400));
    }
}

#[test]
fn coturn_uclient_tcp_relay_mode() {
    if !need_tool("turnutils_uclient", "coturn") {
        return;
    }
    for worker_loop in [false, true] {
        let (turnd, _cert) = start(worker_loop);
        let peer = tcp_echo();
        let out = run_with_timeout(
            std::process::Command::new("turnutils_uclient").args([
                "-T",
                "-u",
                USER,
                "-w",
                PASSWORD,
                "-e",
                "127.0.0.1",
                "-r",
                &peer.port().to_string(),
                "-n",
                "10",
                "-l",
                "100",
                "-p",
                &turnd.tcp_addr().port().to_string(),
                "127.0.0.1",
            ]),
            Duration::from_secs(60),
        );
        let text = out.all();
        let totals = text.lines().rev().find(|l| l.contains("tot_send_msgs=") && !l.contains("msz="));
        let totals = totals.unwrap_or_else(|| panic!("no totals from uclient -T:\n{text}\n{}", turnd.logs()));
        let number = |key: &str| -> u64 {
            let rest = &totals[totals.find(key).expect("key") + key.len()..];
            rest.split(|c: char| !c.is_ascii_digit()).next().and_then(|n| n.parse().ok()).expect("a number")
        };
        let (sent, received) = (number("tot_send_msgs="), number("tot_recv_msgs="));
        assert!(sent >= 10 && received == sent, "uclient -T sent {sent}, got back {received}:\n{text}");
    }
}

/// A TCP peer that never answers a SYN: a listener with a backlog of 0, its queue
/// filled by connections nobody accepts, so a connect to it hangs.
fn black_hole() -> (socket2::Socket, Vec<TcpStream>, SocketAddr) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let fillers = (0..2).filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()).collect();
    (socket, fillers, addr)
}

#[test]
fn rfc6062_connects_in_progress_are_bounded_per_allocation() {
    for worker_loop in [false, true] {
        let (turnd, _cert) = start(worker_loop);
        let holes: Vec<_> = (0..12).map(|_| black_hole()).collect();
        let mut control = connect_stream(turnd.tcp_addr());
        let mut client = StreamClient::new(USER, PASSWORD, REALM);
        tcp_allocate(&mut control, &mut client);
        // Authenticate a Credentials of our own, then send every Connect without waiting:
        // the answers to Connects in progress come only when they connect or time out.
        let mut creds = turn_client::client(USER, PASSWORD);
        let probe = creds.request(&Request::connect(holes[0].2)).unwrap();
        control.write_all(&probe.bytes).unwrap();
        let challenge = creds.response(&probe, &turn_client::read_stun_bytes(&mut control)).unwrap();
        assert!(creds.learn(&challenge), "a 401 with a nonce");
        for (_, _, peer) in &holes {
            control.write_all(&creds.request(&Request::connect(*peer)).unwrap().bytes).unwrap();
        }
        control.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let refused = (0..4).map(|_| error_code(&read_stun(&mut control))).collect::<Vec<_>>();
        assert_eq!(refused, vec![Some(486); 4], "8 Connects in progress at most, the other 4 refused at once");
        drop(holes);
    }
}

/// A client's connection to turnd, plain TCP or TLS.
enum Conn {
    Tcp(TcpStream),
    Tls(Box<turn_client::TlsStream>),
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Tcp(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

impl Conn {
    fn connect(turnd: &TurndProcess, tls: bool) -> Conn {
        if tls {
            let stream = turn_client::tls_connect(turnd.addr("tls"));
            stream.sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            Conn::Tls(Box::new(stream))
        } else {
            let stream = connect_stream(turnd.tcp_addr());
            stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            Conn::Tcp(stream)
        }
    }

    /// Ends what it sends (for TLS: a close_notify first); it goes on reading.
    fn shutdown_write(&mut self) {
        match self {
            Conn::Tcp(s) => s.shutdown(Shutdown::Write).unwrap(),
            Conn::Tls(s) => {
                s.conn.send_close_notify();
                s.flush().unwrap();
                s.sock.shutdown(Shutdown::Write).unwrap();
            }
        }
    }
}

/// A TCP allocation with a data connection bound to a peer connection (made by a
/// Connect), the peer's end in hand.
struct Spliced {
    turnd: TurndProcess,
    _cert: TestCert,
    control: Conn,
    client: StreamClient,
    /// The peer's listener, which takes further Connects.
    _listener: TcpListener,
    peer_addr: SocketAddr,
    peer: TcpStream,
    data: Conn,
}

fn spliced(worker_loop: bool, tls: bool) -> Spliced {
    let (turnd, cert) = start(worker_loop);
    // Small receive buffers on the peer's side: a peer that stops reading holds back
    // the flow sooner.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(8192).unwrap();
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
    socket.listen(16).unwrap();
    let listener: TcpListener = socket.into();
    let peer_addr = listener.local_addr().unwrap();
    let mut control = Conn::connect(&turnd, tls);
    let mut client = StreamClient::new(USER, PASSWORD, REALM);
    tcp_allocate(&mut control, &mut client);
    let response = client.request(&mut control, method(CONNECT), vec![XorPeerAddress::new(peer_addr).into()]);
    assert_eq!(response.class(), MessageClass::SuccessResponse, "{response:?}");
    let (peer, _) = listener.accept().unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut data = Conn::connect(&turnd, tls);
    let id: ConnectionId = Opaque(connection_id(&response));
    let bound = StreamClient::new(USER, PASSWORD, REALM).request(&mut data, method(CONNECTION_BIND), vec![id.into()]);
    assert_eq!(bound.class(), MessageClass::SuccessResponse, "{bound:?}");
    check_served_by(&turnd, worker_loop);
    Spliced { turnd, _cert: cert, control, client, _listener: listener, peer_addr, peer, data }
}

impl Spliced {
    /// Waits (5 s at most) for the server to forget the peer connection: until a new
    /// Connect to the same peer is no longer refused with 446 (Connection Already Exists).
    fn forgotten(&mut self) {
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            let attrs = vec![XorPeerAddress::new(self.peer_addr).into()];
            let response = self.client.request(&mut self.control, method(CONNECT), attrs);
            // Success, or 447 when the kernel still holds the old connection's
            // addresses (TIME_WAIT): either way the server tried to connect again.
            if error_code(&response) != Some(446) {
                return;
            }
            assert!(Instant::now() < until, "the peer connection outlived its data connection\n{}", self.turnd.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn round_trip(&mut self, what: &str) {
        self.data.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        self.peer.read_exact(&mut got).unwrap_or_else(|e| panic!("{what}: to the peer: {e}"));
        assert_eq!(&got, b"ping");
        self.peer.write_all(b"pong").unwrap();
        self.data.read_exact(&mut got).unwrap_or_else(|e| panic!("{what}: to the client: {e}"));
        assert_eq!(&got, b"pong");
    }
}

/// Bytes per flood: more than the kernel buffers along the way hold, so the sender
/// is held back.
const FLOOD: usize = 32 << 20;

fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

/// `from` sends [`FLOOD`] bytes while `to` does not read; once the sender is held
/// back (nothing more written for 500 ms; on the worker's loop, its log says it paused
/// reading the `sender`), `to` reads them all: every byte, in order. Returns `from`.
fn flood<W: Write + Send + 'static>(
    mut from: W,
    sender: &str,
    to: &mut impl Read,
    turnd: &TurndProcess,
    worker_loop: bool,
) -> W {
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let writer = std::thread::spawn(move || {
        let mut chunk = vec![0u8; 64 * 1024];
        let mut offset = 0;
        while offset < FLOOD {
            let n = chunk.len().min(FLOOD - offset);
            for (i, b) in chunk[..n].iter_mut().enumerate() {
                *b = pattern(offset + i);
            }
            from.write_all(&chunk[..n]).unwrap();
            offset += n;
            counter.store(offset, Ordering::Relaxed);
        }
        from.flush().unwrap();
        from
    });
    let until = Instant::now() + Duration::from_secs(30);
    let (mut last, mut still_since) = (0, Instant::now());
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = sent.load(Ordering::Relaxed);
        if now != last {
            (last, still_since) = (now, Instant::now());
        } else if still_since.elapsed() >= Duration::from_millis(500) {
            break;
        }
        assert!(Instant::now() < until, "the sender never stopped: {now} bytes written");
    }
    assert!(last < FLOOD, "all {FLOOD} bytes were taken while the receiver did not read");
    if worker_loop {
        let paused = format!("data connection: reading the {sender} paused");
        assert!(wait_for_log(turnd, &paused), "the loop stopped reading the {sender}\n{}", turnd.logs());
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < FLOOD {
        let n = to.read(&mut buf).unwrap_or_else(|e| panic!("after {got} bytes: {e}"));
        assert!(n > 0, "the stream ended after {got} of {FLOOD} bytes");
        if let Some(i) = buf[..n].iter().enumerate().position(|(i, b)| *b != pattern(got + i)) {
            panic!("byte {} differs: lost or out of order", got + i);
        }
        got += n;
    }
    writer.join().unwrap()
}

/// The peer stops reading while the client floods, then reads; the other way round
/// the same; a round trip then still goes through.
fn back_pressure_both_ways(worker_loop: bool, tls: bool) {
    let mut s = spliced(worker_loop, tls);
    let data = std::mem::replace(&mut s.data, Conn::Tcp(connect_stream(s.turnd.tcp_addr())));
    s.data = flood(data, "client", &mut s.peer, &s.turnd, worker_loop);
    let peer = s.peer.try_clone().unwrap();
    flood(peer, "peer", &mut s.data, &s.turnd, worker_loop);
    s.round_trip("after the floods");
}

#[test]
fn rfc6062_a_side_that_stops_reading_holds_the_other_back_and_loses_nothing() {
    for worker_loop in [false, true] {
        back_pressure_both_ways(worker_loop, false);
    }
}

#[test]
fn rfc6062_tls_data_connection_relays_with_back_pressure_both_ways() {
    for worker_loop in [false, true] {
        back_pressure_both_ways(worker_loop, true);
    }
}

/// One side ends its stream (a half-close): the other reads what came before it and
/// then the end, and can still answer; then the other side ends too, which the first
/// sees, and the server forgets the connection.
fn half_close(worker_loop: bool, tls: bool, client_first: bool) {
    let mut s = spliced(worker_loop, tls);
    s.round_trip("before the half-close");
    if client_first {
        s.data.write_all(b"last words").unwrap();
        s.data.shutdown_write();
        let mut got = Vec::new();
        s.peer.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"last words");
        s.peer.write_all(b"an answer after the end").unwrap();
        let mut got = [0u8; 23];
        s.data.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"an answer after the end");
        s.peer.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        s.data.read_to_end(&mut rest).expect("the end of the peer's stream (for TLS: with a close_notify)");
        assert!(rest.is_empty());
    } else {
        s.peer.write_all(b"last words").unwrap();
        s.peer.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        s.data.read_to_end(&mut got).expect("the end of the peer's stream (for TLS: with a close_notify)");
        assert_eq!(got, b"last words");
        s.data.write_all(b"an answer after the end").unwrap();
        let mut got = [0u8; 23];
        s.peer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"an answer after the end");
        s.data.shutdown_write();
        let mut rest = Vec::new();
        s.peer.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }
    s.forgotten();
}

#[test]
fn rfc6062_half_close_by_the_client_then_the_peer() {
    for worker_loop in [false, true] {
        for tls in [false, true] {
            half_close(worker_loop, tls, true);
        }
    }
}

#[test]
fn rfc6062_half_close_by_the_peer_then_the_client() {
    for worker_loop in [false, true] {
        for tls in [false, true] {
            half_close(worker_loop, tls, false);
        }
    }
}

/// A side that resets its connection (RFC 6062 §5.5): the other side's connection is
/// closed, and the server forgets it.
fn reset(worker_loop: bool, client_resets: bool) {
    let mut s = spliced(worker_loop, false);
    s.round_trip("before the reset");
    // The side that resets is taken out (a stand-in, unrelated, takes its place), so
    // that dropping it closes its socket: with the linger at zero, a reset.
    let (gone, mut other): (TcpStream, TcpStream) = if client_resets {
        let stand_in = Conn::Tcp(connect_stream(s.turnd.tcp_addr()));
        let Conn::Tcp(data) = std::mem::replace(&mut s.data, stand_in) else { unreachable!("plain TCP") };
        (data, s.peer.try_clone().unwrap())
    } else {
        let Conn::Tcp(data) = &s.data else { unreachable!("plain TCP") };
        let other = data.try_clone().unwrap();
        (std::mem::replace(&mut s.peer, TcpStream::connect(s.peer_addr).unwrap()), other)
    };
    socket2::SockRef::from(&gone).set_linger(Some(Duration::ZERO)).unwrap();
    drop(gone);
    assert!(reads_closed(&mut other), "the other side's connection is closed");
    drop(other);
    s.forgotten();
}

#[test]
fn rfc6062_a_reset_on_either_side_closes_the_other() {
    for worker_loop in [false, true] {
        reset(worker_loop, true);
        reset(worker_loop, false);
    }
}

/// Whether a connection the server closed reads as closed (an end, or a reset).
fn reads_closed(stream: &mut impl Read) -> bool {
    match stream.read(&mut [0u8; 16]) {
        Ok(n) => n == 0,
        Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
    }
}

#[test]
fn rfc6062_the_allocation_ending_closes_its_data_connections() {
    for worker_loop in [false, true] {
        for tls in [false, true] {
            let mut s = spliced(worker_loop, tls);
            s.round_trip("before the Refresh");
            let response = s.client.request(
                &mut s.control,
                stun_codec::rfc5766::methods::REFRESH,
                vec![stun_codec::rfc5766::attributes::Lifetime::from_u32(0).into()],
            );
            assert_eq!(response.class(), MessageClass::SuccessResponse, "{response:?}");
            assert!(reads_closed(&mut s.peer), "the peer connection is closed");
            assert!(reads_closed(&mut s.data), "the data connection is closed");
        }
    }
}
