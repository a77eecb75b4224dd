//! The relay host's own services are never a peer (issue: a TURN server is an open door
//! to the host it runs on). A UDP and a TCP service listen on 127.0.0.1 and the policy
//! is told, through `allowed-peers`, that 127.0.0.0/8 is fine, as a public address
//! would be: the host rule must still refuse every path to a port of the host that
//! holds no relay, over UDP, TCP and TLS client transports and RFC 6062 Connect, while
//! two allocations of the server keep relaying to each other.
// A test may unwrap (a panic is a failed test) and use unsafe for process plumbing
// (signals, namespaces); the server code denies both (Cargo.toml [lints]).
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

mod common;
mod netns;
use common::turn_client;

use common::*;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;
use stun_codec::rfc5766::attributes::{RequestedTransport, XorPeerAddress};
use stun_codec::rfc5766::methods::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, SEND};
use stun_codec::{MessageClass, Method};
use turn_client::{error_code, StreamClient, TurnClient};
use turnd::stun::attributes::{Attribute, ChannelNumber, Opaque};
use turnd::stun::message::{self, Message, Protection};

fn config(cert: &TestCert, allow_host_peers: bool) -> String {
    let (min, max) = relay_port_range();
    cert.add_to(&format!(
        "realm = \"{REALM}\"\n\
         [[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:0\"\n\
         [[listen]]\ntransport = \"tcp\"\naddress = \"127.0.0.1:0\"\n\
         [[listen]]\ntransport = \"tls\"\naddress = \"127.0.0.1:0\"\n\
         [relay]\nport-min = {min}\nport-max = {max}\nallowed-peers = [\"127.0.0.0/8\"]\nallow-host-peers = {allow_host_peers}\n\
         [[auth.user]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\n"
    ))
}

/// A UDP and a TCP service of the host, and what reached them.
struct Services {
    udp: UdpSocket,
    tcp: TcpListener,
}

impl Services {
    fn start() -> Services {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        tcp.set_nonblocking(true).unwrap();
        Services { udp, tcp }
    }
    fn udp_addr(&self) -> SocketAddr {
        self.udp.local_addr().unwrap()
    }
    fn tcp_addr(&self) -> SocketAddr {
        self.tcp.local_addr().unwrap()
    }
    fn udp_received(&self) -> bool {
        self.udp.recv_from(&mut [0u8; 512]).is_ok()
    }
    fn tcp_accepted(&self) -> bool {
        std::thread::sleep(Duration::from_millis(300));
        self.tcp.accept().is_ok()
    }
}

fn channel(number: u16) -> Attribute {
    let b = number.to_be_bytes();
    let number: ChannelNumber = Opaque(vec![b[0], b[1], 0, 0]);
    number.into()
}

fn send_indication(peer: SocketAddr) -> Vec<u8> {
    let mut m = Message::new(MessageClass::Indication, SEND, stun_codec::TransactionId::new([5; 12]));
    m.add_attribute(XorPeerAddress::new(peer));
    m.add_attribute(stun_codec::rfc5766::attributes::Data::new(b"to the host".to_vec()).unwrap());
    message::encode(m, Protection { key: None, fingerprint: false }).unwrap()
}

/// Every path from a stream client (TCP or TLS) to the host's UDP service is refused.
fn stream_paths_refused(stream: &mut (impl Read + std::io::Write), services: &Services, service: SocketAddr) {
    let mut client = StreamClient::new(USER, PASSWORD, REALM);
    assert!(client.allocate(stream).is_ok());
    let permission = client.request(stream, CREATE_PERMISSION, vec![XorPeerAddress::new(service).into()]);
    assert_eq!(error_code(&permission), None, "a permission is per IP: the host's IP may be permitted");
    assert_eq!(client.channel_bind(stream, 0x4000, service), Some(403));
    stream.write_all(&send_indication(service)).unwrap();
    assert!(!services.udp_received(), "a Send indication reached the host's UDP service");
}

#[test]
fn the_hosts_services_are_refused_on_every_path_and_its_relays_are_not() {
    let cert = TestCert::new();
    let turnd = TurndProcess::start(&config(&cert, false), &[]);
    let services = Services::start();

    // UDP client: ChannelBind 403, Send dropped, ChannelData never bound.
    let mut a = TurnClient::new("127.0.0.1:0", turnd.udp_addr(), USER, PASSWORD, REALM);
    let (a_relay, _) = a.allocate(vec![]).unwrap();
    assert_eq!(a.create_permission(services.udp_addr()), None);
    assert_eq!(a.channel_bind(0x4000, services.udp_addr()), Some(403), "ChannelBind to the host's service");
    a.send_indication(services.udp_addr(), b"to the host");
    assert!(!services.udp_received(), "a Send indication reached the host's UDP service");
    let bind = a.request(CHANNEL_BIND, vec![channel(0x4001), XorPeerAddress::new(services.tcp_addr()).into()]);
    assert_eq!(error_code(&bind), Some(403));

    // TCP and TLS clients.
    let mut tcp = TcpStream::connect(turnd.tcp_addr()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    stream_paths_refused(&mut tcp, &services, services.udp_addr());
    let mut tls = turn_client::tls_connect(turnd.tls_addr());
    stream_paths_refused(&mut tls, &services, services.udp_addr());

    // RFC 6062 Connect to the host's TCP service: 403, and no connection reaches it.
    let mut control = TcpStream::connect(turnd.tcp_addr()).unwrap();
    control.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut client = StreamClient::new(USER, PASSWORD, REALM);
    let allocated = client.request(&mut control, ALLOCATE, vec![RequestedTransport::new(6).into()]);
    assert_eq!(error_code(&allocated), None);
    let connect = Method::new(0x00A).unwrap();
    let response = client.request(&mut control, connect, vec![XorPeerAddress::new(services.tcp_addr()).into()]);
    assert_eq!(error_code(&response), Some(403), "Connect to the host's TCP service");
    assert!(!services.tcp_accepted(), "the host's TCP service got a connection");

    // Two allocations of the server still relay to each other.
    let mut b = TurnClient::new("127.0.0.1:0", turnd.udp_addr(), USER, PASSWORD, REALM);
    let (b_relay, _) = b.allocate(vec![]).unwrap();
    assert_eq!(a.create_permission(b_relay), None);
    assert_eq!(b.create_permission(a_relay), None);
    assert_eq!(a.channel_bind(0x4002, b_relay), None);
    a.send_channel_data(0x4002, b"relay to relay");
    let (_, from, payload) = b.recv_data().expect("relayed to B");
    assert_eq!((from, payload.as_slice()), (Some(a_relay), &b"relay to relay"[..]));
    // Once B's allocation ends, its port is no relay: A's channel carries nothing there.
    let refresh = b.request(
        stun_codec::rfc5766::methods::REFRESH,
        vec![stun_codec::rfc5766::attributes::Lifetime::from_u32(0).into()],
    );
    assert_eq!(error_code(&refresh), None);
    let squatter = UdpSocket::bind(b_relay);
    if let Ok(squatter) = squatter {
        squatter.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        a.send_channel_data(0x4002, b"after the end");
        assert!(squatter.recv_from(&mut [0u8; 64]).is_err(), "data reached a socket that took the old relay port");
    }
    assert!(turnd.logs().contains("peer refused by policy"), "refusals are logged");
}

#[test]
fn allow_host_peers_opens_the_hosts_services_for_labs() {
    let cert = TestCert::new();
    let turnd = TurndProcess::start(&config(&cert, true), &[]);
    let services = Services::start();
    let mut a = TurnClient::new("127.0.0.1:0", turnd.udp_addr(), USER, PASSWORD, REALM);
    a.allocate(vec![]).unwrap();
    assert_eq!(a.channel_bind(0x4000, services.udp_addr()), None);
    a.send_channel_data(0x4000, b"lab");
    assert!(services.udp_received());
}

/// The same in network namespaces: turnd on a host whose interface has an address the
/// policy takes for public (100.64.0.0/10 opened by `allowed-peers`, as a real public
/// address would be), wildcard listeners, a UDP and a TCP service on that address, and
/// clients on another host across a veth pair.
#[test]
fn in_a_namespace_the_servers_public_address_is_refused_but_its_relays_and_other_peers_are_not() {
    if let Err(why) = netns::available() {
        need(false, &format!("network namespaces ({why})"));
        return;
    }
    let y = 64 + netns::subnet_tag();
    let (server_ns, client_ns) = (netns::Netns::new("hs-srv"), netns::Netns::new("hs-cli"));
    netns::link(&server_ns, "eth0", &format!("100.{y}.7.1/24"), &client_ns, "eth0", &format!("100.{y}.7.2/24"));
    let public: std::net::IpAddr = format!("100.{y}.7.1").parse().unwrap();
    let cert = TestCert::new();
    let (min, max) = relay_port_range();
    let config = cert.add_to(&format!(
        "realm = \"{REALM}\"\n\
         [[listen]]\ntransport = \"udp\"\naddress = \"0.0.0.0:0\"\n\
         [[listen]]\ntransport = \"tcp\"\naddress = \"0.0.0.0:0\"\n\
         [[listen]]\ntransport = \"tls\"\naddress = \"0.0.0.0:0\"\n\
         [relay]\nport-min = {min}\nport-max = {max}\nallowed-peers = [\"100.64.0.0/10\"]\n\
         [[auth.user]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\n"
    ));
    let turnd = server_ns.enter(|| TurndProcess::start(&config, &[]));
    let at = |port: u16| SocketAddr::new(public, port);
    let (udp, tcp, tls) = (at(turnd.udp_addr().port()), at(turnd.tcp_addr().port()), at(turnd.tls_addr().port()));
    // The host's own services, on every address (0.0.0.0), as databases often are.
    let services = server_ns.enter(|| {
        let udp = UdpSocket::bind("0.0.0.0:0").unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let tcp = TcpListener::bind("0.0.0.0:0").unwrap();
        tcp.set_nonblocking(true).unwrap();
        Services { udp, tcp }
    });
    let (svc_udp, svc_tcp) = (at(services.udp_addr().port()), at(services.tcp_addr().port()));
    // A peer on the client's host is a peer like any other.
    let other_peer = client_ns.enter(|| UdpSocket::bind(format!("100.{y}.7.2:0"))).unwrap();
    other_peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();

    let mut a = client_ns.enter(|| TurnClient::new("0.0.0.0:0", udp, USER, PASSWORD, REALM));
    let (a_relay, _) = a.allocate(vec![]).unwrap();
    assert_eq!(a_relay.ip(), public, "the relay is on the public address");
    assert_eq!(a.channel_bind(0x4000, svc_udp), Some(403), "ChannelBind to the host's UDP service");
    a.send_indication(svc_udp, b"to the host");
    assert!(!services.udp_received(), "a Send indication reached the host's UDP service");
    assert_eq!(a.channel_bind(0x4001, other_peer.local_addr().unwrap()), None);
    a.send_channel_data(0x4001, b"to a peer");
    assert!(other_peer.recv_from(&mut [0u8; 64]).is_ok(), "a peer elsewhere is reached");

    let mut over_tcp = client_ns.enter(|| TcpStream::connect(tcp)).unwrap();
    over_tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    stream_paths_refused(&mut over_tcp, &services, svc_udp);
    let mut over_tls = client_ns.enter(|| turn_client::tls_connect(tls));
    stream_paths_refused(&mut over_tls, &services, svc_udp);

    let mut control = client_ns.enter(|| TcpStream::connect(tcp)).unwrap();
    control.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut client = StreamClient::new(USER, PASSWORD, REALM);
    assert_eq!(error_code(&client.request(&mut control, ALLOCATE, vec![RequestedTransport::new(6).into()])), None);
    let connect = client.request(&mut control, Method::new(0x00A).unwrap(), vec![XorPeerAddress::new(svc_tcp).into()]);
    assert_eq!(error_code(&connect), Some(403), "Connect to the host's TCP service");
    assert!(!services.tcp_accepted(), "the host's TCP service got a connection");

    // Two clients of the server relay to each other's relayed (public) addresses.
    let mut b = client_ns.enter(|| TurnClient::new("0.0.0.0:0", udp, USER, PASSWORD, REALM));
    let (b_relay, _) = b.allocate(vec![]).unwrap();
    assert_eq!((a.create_permission(b_relay), b.create_permission(a_relay)), (None, None));
    assert_eq!(a.channel_bind(0x4002, b_relay), None);
    a.send_channel_data(0x4002, b"relay to relay");
    let (_, from, payload) = b.recv_data().expect("relayed to B");
    assert_eq!((from, payload.as_slice()), (Some(a_relay), &b"relay to relay"[..]));
    drop(turnd);
}
