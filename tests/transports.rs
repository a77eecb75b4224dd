//! TURN and STUN over TCP, TLS and IPv6 against the real binary: stream framing edge
//! cases, the slowloris cut, certificate reload under a live allocation, IPv6 and
//! dual-stack allocations on ::1.
// A test may unwrap (a panic is a failed test) and use unsafe for process plumbing
// (signals, namespaces); the server code denies both (Cargo.toml [lints]).
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::turn_client;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};
use stun_codec::rfc5389::attributes::XorMappedAddress;
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc8656::attributes::{AdditionalAddressFamily, AddressFamily, RequestedAddressFamily};
use stun_codec::{MessageClass, TransactionId};
use turn_client::{read_stun, TurnClient};
use turnd::stun::message::{self, Message, Protection};

fn binding_request(tid: u8) -> Vec<u8> {
    let m = Message::new(MessageClass::Request, BINDING, TransactionId::new([tid; 12]));
    message::encode(m, Protection { key: None, fingerprint: true }).unwrap()
}

fn tcp_config(extra: &str) -> String {
    let (min, max) = relay_port_range();
    format!(
        "realm = \"{REALM}\"\n[[listen]]\ntransport = \"tcp\"\naddress = \"127.0.0.1:0\"\n{extra}\n\
         [relay]\nport-min = {min}\nport-max = {max}\nallowed-peers = [\"127.0.0.0/8\", \"::1/128\"]\nallow-host-peers = true\n\
         [[auth.user]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\n"
    )
}

#[test]
fn tcp_coalesced_and_split_messages_are_framed() {
    let turnd = TurndProcess::start(&tcp_config(""), &[]);
    let mut s = TcpStream::connect(turnd.tcp_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    // Two requests in one segment.
    let mut both = binding_request(1);
    both.extend(binding_request(2));
    s.write_all(&both).unwrap();
    assert_eq!(read_stun(&mut s).transaction_id(), TransactionId::new([1; 12]));
    assert_eq!(read_stun(&mut s).transaction_id(), TransactionId::new([2; 12]));
    // One request split over three segments.
    let one = binding_request(3);
    for chunk in one.chunks(9) {
        s.write_all(chunk).unwrap();
        s.flush().unwrap();
        std::thread::sleep(Duration::from_millis(30));
    }
    let answer = read_stun(&mut s);
    assert_eq!(answer.transaction_id(), TransactionId::new([3; 12]));
    assert_eq!(answer.get_attribute::<XorMappedAddress>().unwrap().address(), s.local_addr().unwrap());
}

/// Sends `count` Binding requests in one write and reads every answer, in order: how
/// a burst goes through the worker's batched reads and writes (for TLS, many answers
/// per record) without a message lost or reordered.
fn burst_is_answered_in_order(stream: &mut (impl Read + Write), count: u16) {
    let mut burst = Vec::new();
    for i in 0..count {
        let mut tid = [0u8; 12];
        tid[..2].copy_from_slice(&i.to_be_bytes());
        let m = Message::new(MessageClass::Request, BINDING, TransactionId::new(tid));
        burst.extend(message::encode(m, Protection { key: None, fingerprint: true }).unwrap());
    }
    stream.write_all(&burst).unwrap();
    stream.flush().unwrap();
    for i in 0..count {
        let answer = read_stun(stream);
        let tid = answer.transaction_id();
        assert_eq!(&tid.as_bytes()[..2], &i.to_be_bytes(), "answer {i} of {count} out of order");
    }
}

#[test]
fn a_burst_of_pipelined_requests_is_answered_in_full_over_tcp_and_tls() {
    let dir = TempDir::new("turnd-burst");
    let (cert, key) = make_cert(&dir, "burst", "burst.test");
    // On the worker's loop (`[tcp] worker-loop`): a connection left as a task queues at
    // most 256 answers and drops what comes past them, as the README says.
    let tls = format!(
        "[[listen]]\ntransport = \"tls\"\naddress = \"127.0.0.1:0\"\n[tls]\ncertificate = \"{}\"\nprivate-key = \"{}\"\n\
         [tcp]\nworker-loop = true",
        cert.display(),
        key.display()
    );
    let turnd = TurndProcess::start(&tcp_config(&tls), &[]);
    let mut tcp = TcpStream::connect(turnd.tcp_addr()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    burst_is_answered_in_order(&mut tcp, 1000);
    let mut tls = turn_client::tls_connect(turnd.addr("tls"));
    tls.sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    burst_is_answered_in_order(&mut tls, 3000);
    // And the connections still serve one request after the burst.
    burst_is_answered_in_order(&mut tcp, 1);
    burst_is_answered_in_order(&mut tls, 1);
}

#[test]
fn tcp_slowloris_is_cut() {
    let turnd = TurndProcess::start(&tcp_config("[tcp]\nfirst-message-timeout = \"1s\""), &[]);
    // Half a message, then silence.
    let mut half = TcpStream::connect(turnd.tcp_addr()).unwrap();
    half.write_all(&binding_request(1)[..10]).unwrap();
    // Nothing at all.
    let mut silent = TcpStream::connect(turnd.tcp_addr()).unwrap();
    let started = Instant::now();
    for s in [&mut half, &mut silent] {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(s.read(&mut buf).expect("closed, not timed out"), 0, "server closed the connection");
    }
    assert!(started.elapsed() < Duration::from_secs(4), "cut after about 1s");
    // A well-behaved client still gets served.
    let mut ok = TcpStream::connect(turnd.tcp_addr()).unwrap();
    ok.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    ok.write_all(&binding_request(9)).unwrap();
    assert_eq!(read_stun(&mut ok).class(), MessageClass::SuccessResponse);
}

#[test]
fn tcp_connection_cap_refuses_extra_connections() {
    let turnd = TurndProcess::start(&tcp_config("[tcp]\nmax-connections = 2"), &[]);
    let _a = TcpStream::connect(turnd.tcp_addr()).unwrap();
    let _b = TcpStream::connect(turnd.tcp_addr()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut c = TcpStream::connect(turnd.tcp_addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let _ = c.write_all(&binding_request(1));
    let mut buf = [0u8; 4];
    assert!(matches!(c.read(&mut buf), Ok(0) | Err(_)), "the third connection is closed at once");
}

/// Allocates over TCP, binds a channel to `peer` and exchanges one ChannelData frame,
/// checking the server pads ChannelData to 4 bytes on streams.
fn tcp_allocation_relays(stream: &mut (impl Read + Write), peer: SocketAddr) {
    let mut client = turn_client::StreamClient::new(USER, PASSWORD, REALM);
    client.allocate(stream).expect("allocation over a stream");
    assert_eq!(client.channel_bind(stream, 0x4000, peer), None);
    // 5 bytes: the frame goes out padded to 12 (4 header + 5 + 3 padding).
    stream.write_all(&[0x40, 0x00, 0x00, 0x05, b'h', b'e', b'l', b'l', b'o', 0, 0, 0]).unwrap();
    let mut frame = [0u8; 12];
    stream.read_exact(&mut frame).unwrap();
    assert_eq!(&frame[..9], &[0x40, 0x00, 0x00, 0x05, b'h', b'e', b'l', b'l', b'o']);
}

#[test]
fn tcp_allocation_relays_and_goes_with_the_connection() {
    let turnd = TurndProcess::start(&tcp_config(""), &[]);
    let peer = UdpEchoPeer::start();
    let mut s = TcpStream::connect(turnd.tcp_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    tcp_allocation_relays(&mut s, peer.addr());
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !turnd.logs().contains("reason=\"closed\"") && !turnd.logs().contains("reason=closed") {
        assert!(Instant::now() < deadline, "allocation did not end with its connection:\n{}", turnd.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(turnd: &TurndProcess, name: &str) {
    let status = std::process::Command::new("kill").arg(format!("-{name}")).arg(turnd.pid().to_string()).status();
    assert!(status.is_ok_and(|s| s.success()), "kill -{name}");
}

fn make_cert(dir: &TempDir, name: &str, cn: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert = dir.path().join(format!("{name}.pem"));
    let key = dir.path().join(format!("{name}.key"));
    let status = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args(["-subj", &format!("/CN={cn}"), "-addext", "subjectAltName=IP:127.0.0.1"])
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success());
    (cert, key)
}

#[test]
fn tls_certificate_reload_reaches_new_clients_while_old_allocation_relays() {
    let dir = TempDir::new("turnd-tls");
    let (cert, key) = make_cert(&dir, "live", "first.test");
    let tls = format!(
        "[[listen]]\ntransport = \"tls\"\naddress = \"127.0.0.1:0\"\n[tls]\ncertificate = \"{}\"\nprivate-key = \"{}\"",
        cert.display(),
        key.display()
    );
    let turnd = TurndProcess::start(&tcp_config(&tls), &[]);
    let peer = UdpEchoPeer::start();
    let mut old = turn_client::tls_connect(turnd.addr("tls"));
    assert!(turn_client::peer_certificate_text(&old).contains("first.test"));
    tcp_allocation_relays(&mut old, peer.addr());

    // Renew: new files in place, as certbot would, then SIGHUP.
    let (cert2, key2) = make_cert(&dir, "next", "second.test");
    std::fs::copy(&cert2, &cert).unwrap();
    std::fs::copy(&key2, &key).unwrap();
    signal(&turnd, "HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let fresh = turn_client::tls_connect(turnd.addr("tls"));
        if turn_client::peer_certificate_text(&fresh).contains("second.test") {
            break;
        }
        assert!(Instant::now() < deadline, "new clients never saw the new certificate");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The old connection and its allocation still relay.
    old.write_all(&[0x40, 0x00, 0x00, 0x04, b'p', b'i', b'n', b'g']).unwrap();
    let mut frame = [0u8; 8];
    old.read_exact(&mut frame).unwrap();
    assert_eq!(&frame[4..], b"ping");
}

#[test]
fn tls_startup_error_names_the_file() {
    let dir = TempDir::new("turnd-tls-bad");
    let (cert, _) = make_cert(&dir, "a", "a.test");
    let (_, other_key) = make_cert(&dir, "b", "b.test");
    let config = dir.write(
        "t.toml",
        &format!(
            "[[listen]]\ntransport = \"tls\"\naddress = \"127.0.0.1:0\"\n[tls]\ncertificate = \"{}\"\nprivate-key = \"{}\"\n\
             [[auth.user]]\nname = \"a\"\npassword = \"b\"\n",
            cert.display(),
            other_key.display()
        ),
    );
    let out = std::process::Command::new(turnd_binary()).args(["serve", "-c"]).arg(&config).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&other_key.display().to_string()) && stderr.contains("does not match"), "{stderr}");
}

fn udp_config(listen: &str, relay_extra: &str) -> String {
    let (min, max) = relay_port_range();
    format!(
        "realm = \"{REALM}\"\n[[listen]]\ntransport = \"udp\"\naddress = \"{listen}\"\n\
         [relay]\nport-min = {min}\nport-max = {max}\nallowed-peers = [\"127.0.0.0/8\", \"::1/128\"]\nallow-host-peers = true\n{relay_extra}\n\
         [[auth.user]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\n"
    )
}

fn echo_v6() -> (UdpSocket, SocketAddr) {
    let s = UdpSocket::bind("[::1]:0").expect("IPv6 loopback");
    let addr = s.local_addr().unwrap();
    let echo = s.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = echo.recv_from(&mut buf) {
            let _ = echo.send_to(&buf[..n], from);
        }
    });
    (s, addr)
}

#[test]
fn ipv6_allocation_on_loopback_relays_to_an_ipv6_peer() {
    let turnd = TurndProcess::start(&udp_config("[::1]:0", ""), &[]);
    let (_echo, peer) = echo_v6();
    let mut c = TurnClient::new("[::1]:0", turnd.udp_addr(), USER, PASSWORD, REALM);
    let v6 = RequestedAddressFamily::new(AddressFamily::V6);
    let (relayed, _) = c.allocate(vec![v6.into()]).expect("IPv6 allocation");
    assert_eq!(relayed.ip().to_string(), "::1");
    assert_eq!(c.channel_bind(0x4000, peer), None);
    c.send_channel_data(0x4000, b"six");
    assert_eq!(c.recv_data().expect("echo").2, b"six");
}

#[test]
fn dual_stack_allocation_from_an_ipv4_client_reaches_both_families() {
    let turnd = TurndProcess::start(&udp_config("127.0.0.1:0", "bind-ipv6 = \"::1\""), &[]);
    let (_echo6, peer6) = echo_v6();
    let peer4 = UdpEchoPeer::start();
    let mut c = TurnClient::new("127.0.0.1:0", turnd.udp_addr(), USER, PASSWORD, REALM);
    let response = c.request(
        stun_codec::rfc5766::methods::ALLOCATE,
        vec![
            stun_codec::rfc5766::attributes::RequestedTransport::new(17).into(),
            AdditionalAddressFamily::new(AddressFamily::V6).into(),
        ],
    );
    let relays: Vec<SocketAddr> = response
        .attributes()
        .filter_map(|a| {
            stun_codec::convert::TryAsRef::<stun_codec::rfc5766::attributes::XorRelayAddress>::try_as_ref(a)
        })
        .map(|r| r.address())
        .collect();
    assert_eq!(relays.len(), 2, "two XOR-RELAYED-ADDRESS: {response:?}");
    assert!(relays[0].is_ipv4() && relays[1].is_ipv6());
    assert_eq!(c.channel_bind(0x4000, peer4.addr()), None);
    assert_eq!(c.channel_bind(0x4001, peer6), None);
    c.send_channel_data(0x4001, b"to six");
    assert_eq!(c.recv_data().expect("IPv6 echo").2, b"to six");
    c.send_channel_data(0x4000, b"to four");
    assert_eq!(c.recv_data().expect("IPv4 echo").2, b"to four");
}
