//! RFC 6062 TCP relay allocations against the real binary: Connect out to a TCP echo
//! peer, inbound peer connections announced by ConnectionAttempt, ConnectionBind of data
//! connections carrying raw bytes both ways, the 446/447/400 errors, and coturn's
//! `turnutils_uclient -T` as a client this project did not write.
// A test may unwrap (a panic is a failed test) and use unsafe for process plumbing
// (signals, namespaces); the server code denies both (Cargo.toml [lints]).
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::turn_client;
use turnd::client::Request;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;
use stun_codec::rfc5766::attributes::{RequestedTransport, XorPeerAddress};
use stun_codec::rfc5766::methods::ALLOCATE;
use stun_codec::{MessageClass, Method};
use turn_client::{error_code, read_stun, StreamClient, TurnClient};
use turnd::stun::attributes::{Attribute, ConnectionId, Opaque};

const CONNECT: u16 = 0x00A;
const CONNECTION_BIND: u16 = 0x00B;

fn config() -> String {
    let (min, max) = relay_port_range();
    format!(
        "realm = \"{REALM}\"\n[[listen]]\ntransport = \"tcp\"\naddress = \"127.0.0.1:0\"\n\
         [[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:0\"\n[admin]\nenabled = false\n\
         [relay]\nport-min = {min}\nport-max = {max}\nallowed-peers = [\"127.0.0.0/8\"]\nallow-host-peers = true\n\
         [[auth.user]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\n"
    )
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

fn tcp_allocate(control: &mut TcpStream, client: &mut StreamClient) -> SocketAddr {
    let response = client.request(control, ALLOCATE, vec![RequestedTransport::new(6).into()]);
    assert_eq!(response.class(), MessageClass::SuccessResponse, "{response:?}");
    response.get_attribute::<stun_codec::rfc5766::attributes::XorRelayAddress>().unwrap().address()
}

#[test]
fn rfc6062_connect_then_connection_bind_carries_bytes_both_ways() {
    let turnd = TurndProcess::start(&config(), &[]);
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
}

#[test]
fn rfc6062_inbound_peer_connection_is_announced_and_bound() {
    let turnd = TurndProcess::start(&config(), &[]);
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
    let mut data = bind_data(turnd.tcp_addr(), connection_id(&attempt));
    peer.write_all(b"from the peer").unwrap();
    let mut got = [0u8; 13];
    data.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"from the peer");
    data.write_all(b"and back").unwrap();
    let mut got = [0u8; 8];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"and back");
}

#[test]
fn rfc6062_errors_447_and_400() {
    let turnd = TurndProcess::start(&config(), &[]);
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

#[test]
fn coturn_uclient_tcp_relay_mode() {
    if !need_tool("turnutils_uclient", "coturn") {
        return;
    }
    let turnd = TurndProcess::start(&config(), &[]);
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
    let turnd = TurndProcess::start(&config(), &[]);
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
