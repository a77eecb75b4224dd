//! The server as users start it: `turnd serve` with no config file, only the port made
//! ephemeral (`--port 0`, documented in the README) and the admin listener moved off
//! its fixed port. Driven over UDP and TCP on every address of the host (loopback and
//! the machine's own IPv4 and IPv6 addresses), with one worker and with the default
//! count: a Binding, an authenticated Allocate with the one-time user turnd prints,
//! and a ChannelData round trip relayed between two allocations of the server (the
//! only peers the default policy allows on a host whose addresses are all private).
//! Then coturn's `turnutils_stunclient` and aioice, over IPv6.
//!
//! Every test configures nothing: this is the file that caught the default's IPv6 UDP
//! listener answering through its IPv4 socket.
// A test may unwrap (a panic is a failed test) and use unsafe for process plumbing
// (signals, namespaces); the server code denies both (Cargo.toml [lints]).
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::turn_client;

use common::*;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;
use stun_codec::rfc5389::attributes::XorMappedAddress;
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5766::attributes::RequestedTransport;
use stun_codec::rfc5766::attributes::XorPeerAddress;
use stun_codec::rfc5766::methods::{ALLOCATE, CREATE_PERMISSION};
use stun_codec::{MessageClass, TransactionId};
use turn_client::{error_code, StreamClient, TurnClient};
use turnd::stun::message::{self, Message, Protection};

/// The realm of the embedded default.
const DEFAULT_REALM: &str = "turnd";
/// The user turnd makes up when none is configured.
const ONE_TIME_USER: &str = "turnd";

/// The host's addresses a client can use: loopback and every global or private
/// address (not link-local, which needs an interface scope).
fn host_addresses() -> Vec<IpAddr> {
    let mut all: Vec<IpAddr> = turnd::net::interfaces::host_addresses()
        .into_iter()
        .filter(|ip| match ip {
            IpAddr::V4(v4) => !v4.is_link_local(),
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
        })
        .collect();
    all.sort();
    all.dedup();
    assert!(all.contains(&IpAddr::from([127, 0, 0, 1])), "no 127.0.0.1 among {all:?}");
    all
}

/// A default turnd: (process, the port every listener shares, the one-time password).
fn start_default(workers: Option<&str>) -> (TurndProcess, u16, String) {
    let mut args = vec!["--port", "0", "--admin-address", "127.0.0.1:0"];
    if let Some(workers) = workers {
        args.extend(["--workers", workers]);
    }
    let turnd = TurndProcess::start_default(&args);
    let udp: Vec<SocketAddr> = turnd.listeners().iter().filter(|(t, _)| t == "udp").map(|(_, a)| *a).collect();
    let tcp: Vec<SocketAddr> = turnd.listeners().iter().filter(|(t, _)| t == "tcp").map(|(_, a)| *a).collect();
    let port = udp[0].port();
    let v6 = host_addresses().iter().any(IpAddr::is_ipv6);
    let families = if v6 { 2 } else { 1 };
    assert_eq!(
        (udp.len(), tcp.len()),
        (families, families),
        "the default listens on UDP and TCP per family: {udp:?} {tcp:?}"
    );
    assert!(udp.iter().chain(&tcp).all(|a| a.port() == port && a.ip().is_unspecified()), "{udp:?} {tcp:?}");
    let logs = turnd.logs();
    let password = logs
        .split("password=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_hexdigit()).next())
        .filter(|p| p.len() == 24)
        .unwrap_or_else(|| panic!("no one-time password in the log:\n{logs}"))
        .to_owned();
    (turnd, port, password)
}

fn local(ip: IpAddr) -> String {
    SocketAddr::new(ip, 0).to_string()
}

/// A UDP client on `ip` that has allocated, with a permission for every address of
/// the host (named through its own relayed address, as the policy requires).
fn allocated_udp_client(ip: IpAddr, port: u16, password: &str) -> (TurnClient, SocketAddr) {
    let server = SocketAddr::new(ip, port);
    let mut client = TurnClient::new(&local(ip), server, ONE_TIME_USER, password, DEFAULT_REALM);
    let (relayed, mapped) =
        client.allocate(vec![]).unwrap_or_else(|code| panic!("Allocate over UDP to {server}: {code}"));
    assert_eq!(mapped, client.socket.local_addr().unwrap(), "XOR-MAPPED-ADDRESS from {server}");
    (client, relayed)
}

/// A Binding over UDP, and the size of the answers to the smallest unauthenticated
/// Binding and Allocate (at most three times the request: turnd must be no amplifier).
fn udp_binding(ip: IpAddr, port: u16) {
    let server = SocketAddr::new(ip, port);
    let mut client = TurnClient::new(&local(ip), server, "", "", DEFAULT_REALM);
    let answer = client.plain(BINDING).unwrap_or_else(|| panic!("no Binding answer over UDP from {server}"));
    let mapped = answer.get_attribute::<XorMappedAddress>().map(|a| a.address());
    assert_eq!(mapped, Some(client.socket.local_addr().unwrap()), "UDP Binding to {server}");
    let binding = Message::new(MessageClass::Request, BINDING, TransactionId::new([1; 12]));
    let mut allocate = Message::new(MessageClass::Request, ALLOCATE, TransactionId::new([2; 12]));
    allocate.add_attribute(RequestedTransport::new(17));
    for (what, request) in [("Binding", binding), ("Allocate", allocate)] {
        let request = message::encode(request, Protection { key: None, fingerprint: false }).unwrap();
        client.socket.send_to(&request, server).unwrap();
        let answer = client.recv().unwrap_or_else(|| panic!("no answer to a {what} from {server}"));
        let factor = answer.len() as f64 / request.len() as f64;
        println!("{server}: {} byte answer to a {} byte {what}: {factor:.2}x", answer.len(), request.len());
        assert!(factor <= 3.0, "{server}: {what} amplified {factor:.2}x");
    }
}

/// Binding, Allocate and a ChannelData round trip over UDP to `ip`.
fn udp_round_trip(ip: IpAddr, port: u16, password: &str) {
    udp_binding(ip, port);
    let (mut a, a_relay) = allocated_udp_client(ip, port, password);
    let (mut b, b_relay) = allocated_udp_client(ip, port, password);
    assert!(a_relay.ip().is_ipv4(), "the default relay family is IPv4 (RFC 8656 §7.2)");
    assert_eq!(a.create_permission(b_relay), None, "A's permission for B's relay {b_relay}");
    assert_eq!(b.create_permission(a_relay), None, "B's permission for A's relay {a_relay}");
    assert_eq!(a.channel_bind(0x4000, b_relay), None, "A binds a channel to B's relay");
    a.send_channel_data(0x4000, b"ping");
    let (channel, from, payload) = b.recv_data().unwrap_or_else(|| panic!("B got nothing relayed over {ip}"));
    assert_eq!((channel, from, payload.as_slice()), (None, Some(a_relay), &b"ping"[..]));
    b.send_indication(a_relay, b"pong");
    let (channel, _, payload) = a.recv_data().unwrap_or_else(|| panic!("A got nothing back over {ip}"));
    assert_eq!((channel, payload.as_slice()), (Some(0x4000), &b"pong"[..]), "ChannelData back to A over {ip}");
}

/// Binding, Allocate and a ChannelData round trip over TCP to `ip`, with a UDP client of
/// the same server as the other end.
fn tcp_round_trip(ip: IpAddr, port: u16, password: &str) {
    let server = SocketAddr::new(ip, port);
    let mut stream = TcpStream::connect(server).unwrap_or_else(|e| panic!("connect {server}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut client = StreamClient::new(ONE_TIME_USER, password, DEFAULT_REALM);
    let binding = client.request(&mut stream, BINDING, vec![]);
    let mapped = binding.get_attribute::<XorMappedAddress>().map(|a| a.address());
    assert_eq!(mapped, Some(stream.local_addr().unwrap()), "TCP Binding to {server}");
    let (a_relay, _) =
        client.allocate(&mut stream).unwrap_or_else(|code| panic!("Allocate over TCP to {server}: {code}"));
    let (mut b, b_relay) = allocated_udp_client(ip, port, password);
    let permission = client.request(&mut stream, CREATE_PERMISSION, vec![XorPeerAddress::new(b_relay).into()]);
    assert_eq!(error_code(&permission), None, "TCP client's permission for {b_relay}");
    assert_eq!(b.create_permission(a_relay), None);
    assert_eq!(client.channel_bind(&mut stream, 0x4001, b_relay), None);
    // ChannelData over a stream is padded to four bytes (RFC 8656 §12.5).
    stream.write_all(&[0x40, 0x01, 0, 5, b'p', b'i', b'n', b'g', b'!', 0, 0, 0]).unwrap();
    let (channel, from, payload) = b.recv_data().unwrap_or_else(|| panic!("nothing relayed from TCP over {ip}"));
    assert_eq!((channel, from, payload.as_slice()), (None, Some(a_relay), &b"ping!"[..]));
    b.send_indication(a_relay, b"pong");
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).unwrap_or_else(|e| panic!("no ChannelData back over TCP {ip}: {e}"));
    assert_eq!(&head, &[0x40, 0x01, 0, 4], "ChannelData header back over TCP {ip}");
    let mut body = [0u8; 4];
    stream.read_exact(&mut body).unwrap();
    assert_eq!(&body, b"pong");
}

fn serve_every_address(workers: Option<&str>) {
    let (mut turnd, port, password) = start_default(workers);
    for ip in host_addresses() {
        udp_round_trip(ip, port, &password);
        tcp_round_trip(ip, port, &password);
        println!("{ip}: Binding, Allocate and a relayed round trip over UDP and TCP");
    }
    assert!(turnd.is_running(), "turnd exited");
}

#[test]
fn the_embedded_default_serves_every_address_with_one_worker() {
    serve_every_address(Some("1"));
}

#[test]
fn the_embedded_default_serves_every_address_with_the_default_workers() {
    serve_every_address(None);
}

#[test]
fn coturn_stunclient_and_aioice_get_answers_from_the_default_over_ipv6() {
    let v6: Vec<IpAddr> = host_addresses().into_iter().filter(IpAddr::is_ipv6).collect();
    if v6.is_empty() {
        eprintln!("skipped: no IPv6 on this host");
        return;
    }
    let (_turnd, port, password) = start_default(None);
    if need_tool("turnutils_stunclient", "coturn") {
        for ip in &v6 {
            let out = run_with_timeout(
                Command::new("turnutils_stunclient").args(["-p", &port.to_string(), &ip.to_string()]),
                Duration::from_secs(20),
            );
            assert!(out.success(), "turnutils_stunclient {ip}:\n{out}");
            assert!(out.all().contains(&format!("{ip}")), "no reflexive {ip} in the answer:\n{out}");
        }
    }
    if need(python_module_available("aioice"), "Python module `aioice` (pip install aioice)") {
        for ip in &v6 {
            aioice_over(*ip, port, &password);
        }
    }
}

/// aioice allocates over IPv6 and relays to another allocation of the server, whose
/// client echoes what arrives back to where it came from.
fn aioice_over(ip: IpAddr, port: u16, password: &str) {
    let (mut echo, echo_relay) = allocated_udp_client(ip, port, password);
    // A permission for the IPv4 host addresses the aioice relay may have.
    assert_eq!(echo.create_permission(echo_relay), None);
    let count = 5;
    let echoer = std::thread::spawn(move || {
        for _ in 0..count {
            let Some((_, Some(from), payload)) = echo.recv_data() else { return };
            echo.send_indication(from, &payload);
        }
    });
    let out = run_with_timeout(
        Command::new(python())
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/aioice_turn.py"))
            .args(["--server", &SocketAddr::new(ip, port).to_string(), "--peer", &echo_relay.to_string()])
            .args(["--user", ONE_TIME_USER, "--password", password])
            .args(["--transport", "udp", "--count", &count.to_string()]),
        Duration::from_secs(60),
    );
    let _ = echoer.join();
    assert!(out.success() && out.stdout.contains("ECHOED 5/5"), "aioice over {ip}:\n{out}");
    assert!(out.stdout.contains(&format!("mapped={ip}:")), "aioice's mapped address over {ip}:\n{out}");
}

/// The README's local relay command, as written but for the port flags every test adds:
/// `serve --user alice:secret --allow-peer 127.0.0.0/8 --allow-host-peers` relays to an
/// echo server on loopback.
#[test]
fn the_readmes_local_relay_command_relays_to_a_loopback_echo_server() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let command = "cargo run --release -- serve --user alice:secret --allow-peer 127.0.0.0/8 --allow-host-peers";
    assert!(readme.contains(command), "the README no longer shows {command:?}");
    // After `cargo run --release -- serve` (start_default runs `turnd serve`).
    let mut args: Vec<&str> = command.split_whitespace().skip(5).collect();
    args.extend(["--port", "0", "--admin-address", "127.0.0.1:0", "--workers", "1"]);
    let turnd = TurndProcess::start_default(&args);
    let server = turnd.listeners().iter().find(|(t, a)| t == "udp" && a.is_ipv4()).map(|(_, a)| *a).unwrap();
    let server = SocketAddr::new(IpAddr::from([127, 0, 0, 1]), server.port());
    let peer = UdpEchoPeer::start();
    let mut client = TurnClient::new("127.0.0.1:0", server, "alice", "secret", DEFAULT_REALM);
    client.allocate(vec![]).expect("alice allocates");
    assert_eq!(client.channel_bind(0x4000, peer.addr()), None);
    client.send_channel_data(0x4000, b"echo me");
    let (_, _, payload) = client.recv_data().expect("echoed through the relay");
    assert_eq!(payload, b"echo me");
}

/// RFC 8016 mobility is on in the embedded default: a UDP client that asked for a
/// ticket moves to new sockets (with the default worker count, until a move crossed
/// workers) and keeps relaying to a second allocation of the server both ways.
#[test]
fn the_embedded_default_lets_a_udp_client_move_with_its_mobility_ticket() {
    use std::net::UdpSocket;
    use std::time::Instant;
    use turnd::client::blocking::{Connection, Link, Received};
    use turnd::client::{channel_data, Client, Credentials, DataIndication, Request};
    const TIMEOUT: Duration = Duration::from_secs(3);
    let (turnd, port, password) = start_default(None);
    let server = SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port);
    let connect = || Connection::new(Link::Udp(UdpSocket::bind("127.0.0.1:0").unwrap()), server);
    let client = |seed: u8| Client::new(Credentials::long_term(ONE_TIME_USER, &password), [seed; 12]);

    let (mut mover, mut peer) = (client(1), client(2));
    let (mut conn, mut peer_conn) = (connect(), connect());
    let allocated = conn.request(&mut mover, &Request::allocate_mobile(), TIMEOUT).unwrap().into_result().unwrap();
    let mover_relay = allocated.relayed().unwrap();
    assert!(mover.mobility_ticket().is_some(), "the default grants mobility");
    let peer_relay =
        peer_conn.request(&mut peer, &Request::allocate(), TIMEOUT).unwrap().into_result().unwrap().relayed().unwrap();
    let permitted = peer_conn.request(&mut peer, &Request::create_permission(mover_relay), TIMEOUT).unwrap();
    assert!(permitted.is_success());
    assert!(conn.request(&mut mover, &Request::channel_bind(0x4000, peer_relay), TIMEOUT).unwrap().is_success());

    let mut crossed = 0.0;
    for n in 1..=16 {
        let ticket = mover.mobility_ticket().unwrap().to_vec();
        conn = connect();
        let answer = conn.request(&mut mover, &Request::refresh_mobile(600, &ticket), TIMEOUT).unwrap();
        assert!(answer.is_success(), "move {n}: {:?}", answer.error());
        // Mover to peer: ChannelData in, a Data indication out of the mover's relay.
        let payload = format!("move {n}");
        conn.send(&channel_data(0x4000, payload.as_bytes(), true).unwrap()).unwrap();
        match peer_conn.recv_data(Instant::now() + TIMEOUT).unwrap() {
            Received::Stun(bytes) => {
                let data = DataIndication::parse(&bytes).unwrap().unwrap();
                assert_eq!((data.peer, data.data), (mover_relay, payload.as_bytes()));
            }
            other => panic!("move {n}: {other:?}"),
        }
        // Peer to mover: back on the channel, to the new socket.
        let indication = peer.send_indication(mover_relay, b"back").unwrap();
        peer_conn.send(&indication).unwrap();
        match conn.recv_data(Instant::now() + TIMEOUT).unwrap() {
            Received::ChannelData { channel, data } => assert_eq!((channel, &data[..]), (0x4000, &b"back"[..])),
            other => panic!("move {n}: {other:?}"),
        }
        let text = common::http::scrape(turnd.admin_addr());
        crossed =
            common::http::metric(&text, "turnd_mobility_moves_total{result=\"moved_across_workers\"}").unwrap_or(0.0);
        if n >= 8 && crossed > 0.0 {
            break;
        }
    }
    // The workers' counters are merged once a second.
    let deadline = Instant::now() + Duration::from_secs(3);
    while crossed == 0.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let text = common::http::scrape(turnd.admin_addr());
        crossed =
            common::http::metric(&text, "turnd_mobility_moves_total{result=\"moved_across_workers\"}").unwrap_or(0.0);
    }
    if std::thread::available_parallelism().map_or(1, |n| n.get()) > 1 {
        assert!(crossed > 0.0, "no move crossed workers");
    }
}
