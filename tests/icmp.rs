//! RFC 8656 §11 ICMP relaying against the real binary: an ICMP error about a datagram
//! the relay sent to a permitted peer reaches the client as a Data indication with
//! XOR-PEER-ADDRESS and ICMP (no DATA). Two sources of errors: a peer whose port is
//! closed (port unreachable, from the local stack, over 127.0.0.1 and ::1), and a
//! router whose link to the peer has an MTU smaller than a DONT-FRAGMENT datagram
//! (fragmentation needed, with that MTU), built from network namespaces.
// A test may unwrap (a panic is a failed test) and use unsafe for process plumbing
// (signals, namespaces); the server code denies both (Cargo.toml [lints]).
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

mod common;
mod netns;
use common::turn_client;

use common::*;
use netns::Netns;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};
use stun_codec::rfc5766::attributes::DontFragment;
use stun_codec::rfc8656::attributes::{AddressFamily, RequestedAddressFamily};
use turn_client::TurnClient;

const MAGIC_COOKIE: u32 = 0x2112_A442;

fn config(listen: &str, allowed: &str) -> String {
    let (min, max) = relay_port_range();
    format!(
        "realm = \"{REALM}\"\n[[listen]]\ntransport = \"udp\"\naddress = \"{listen}\"\n\
         [relay]\nport-min = {min}\nport-max = {max}\nallowed-peers = [\"{allowed}\"]\nallow-host-peers = true\n\
         [[auth.user]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\n"
    )
}

/// A Data indication carrying an ICMP attribute, decoded by hand (the codec does not
/// know attribute 0x8004).
#[derive(Debug, PartialEq, Eq)]
struct IcmpIndication {
    peer: SocketAddr,
    kind: u8,
    code: u8,
    error_data: u32,
    has_data: bool,
}

fn parse_icmp_indication(bytes: &[u8]) -> Option<IcmpIndication> {
    if bytes.len() < 20 || u16::from_be_bytes([bytes[0], bytes[1]]) != 0x0017 {
        return None;
    }
    let tid = &bytes[8..20];
    let (mut peer, mut icmp, mut has_data) = (None, None, false);
    let mut at = 20;
    while at + 4 <= bytes.len() {
        let kind = u16::from_be_bytes([bytes[at], bytes[at + 1]]);
        let len = u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize;
        let value = bytes.get(at + 4..at + 4 + len)?;
        match kind {
            0x0012 => {
                let port = u16::from_be_bytes([value[2], value[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
                let ip = match value[1] {
                    1 => {
                        let raw = u32::from_be_bytes(value[4..8].try_into().ok()?) ^ MAGIC_COOKIE;
                        IpAddr::V4(Ipv4Addr::from(raw))
                    }
                    _ => {
                        let mut key = MAGIC_COOKIE.to_be_bytes().to_vec();
                        key.extend_from_slice(tid);
                        let raw: Vec<u8> = value[4..20].iter().zip(&key).map(|(a, b)| a ^ b).collect();
                        IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(raw).ok()?))
                    }
                };
                peer = Some(SocketAddr::new(ip, port));
            }
            0x8004 => icmp = Some((value[2], value[3], u32::from_be_bytes(value[4..8].try_into().ok()?))),
            0x0013 => has_data = true,
            _ => {}
        }
        at += 4 + len.div_ceil(4) * 4;
    }
    let (kind, code, error_data) = icmp?;
    Some(IcmpIndication { peer: peer?, kind, code, error_data, has_data })
}

/// The first ICMP Data indication the client receives within a few seconds.
fn recv_icmp(c: &TurnClient) -> Option<IcmpIndication> {
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let bytes = c.recv()?;
        if let Some(found) = parse_icmp_indication(&bytes) {
            eprintln!("ICMP Data indication: {}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>());
            return Some(found);
        }
    }
    None
}

/// A closed peer port: the relay's next datagram to it draws a port unreachable,
/// relayed to the client; the allocation keeps relaying to a live peer.
fn closed_port_is_relayed(loopback: &str, allowed: &str, want: (u8, u8)) {
    let turnd = TurndProcess::start(&config(&format!("{loopback}:0"), allowed), &[]);
    let mut c = TurnClient::new(&format!("{loopback}:0"), turnd.udp_addr(), USER, PASSWORD, REALM);
    let family = if loopback.starts_with('[') { AddressFamily::V6 } else { AddressFamily::V4 };
    c.allocate(vec![RequestedAddressFamily::new(family).into()]).expect("allocation");
    let closed = UdpSocket::bind(format!("{loopback}:0")).unwrap();
    let peer = closed.local_addr().unwrap();
    assert_eq!(c.channel_bind(0x4000, peer), None);
    drop(closed);
    c.send_channel_data(0x4000, b"to a closed port");
    let got = recv_icmp(&c).expect("a Data indication with the ICMP error");
    assert_eq!(got, IcmpIndication { peer, kind: want.0, code: want.1, error_data: 0, has_data: false });
    // Over Send indications too, and the allocation still relays to a live peer.
    c.send_indication(peer, b"again");
    assert_eq!(recv_icmp(&c).map(|i| (i.peer, i.kind, i.code)), Some((peer, want.0, want.1)));
    let live = UdpSocket::bind(format!("{loopback}:0")).unwrap();
    live.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    c.send_indication(live.local_addr().unwrap(), b"still here");
    let mut buf = [0u8; 64];
    let (n, _) = live.recv_from(&mut buf).expect("relayed after ICMP errors (same IP: permitted)");
    assert_eq!(&buf[..n], b"still here");
}

#[test]
fn rfc8656_11_port_unreachable_from_a_closed_peer_port_reaches_the_client_over_ipv4() {
    // ICMPv4 destination unreachable (3), port unreachable (3).
    closed_port_is_relayed("127.0.0.1", "127.0.0.0/8", (3, 3));
}

#[test]
fn rfc8656_11_port_unreachable_from_a_closed_peer_port_reaches_the_client_over_ipv6() {
    if UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("skipping: no ::1 on this host");
        return;
    }
    // ICMPv6 destination unreachable (1), port unreachable (4).
    closed_port_is_relayed("[::1]", "::1/128", (1, 4));
}

#[test]
fn rfc8656_11_icmp_about_an_unpermitted_peer_is_not_relayed() {
    // Without a permission turnd sends nothing to the peer, so no ICMP error can come
    // back through the relay socket; the core's unit tests cover errors about peers
    // without a permission (dropped, counted as no_permission).
    let turnd = TurndProcess::start(&config("127.0.0.1:0", "127.0.0.0/8"), &[]);
    let mut c = TurnClient::new("127.0.0.1:0", turnd.udp_addr(), USER, PASSWORD, REALM);
    c.allocate(vec![]).expect("allocation");
    let closed = UdpSocket::bind("127.0.0.1:0").unwrap();
    let peer = closed.local_addr().unwrap();
    drop(closed);
    // No permission: nothing is sent, so nothing comes back.
    c.send_indication(peer, b"no permission");
    c.socket.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    assert_eq!(c.recv(), None);
}

/// turnd (and its client) in `t`, a router `r`, a peer `p`; r's link to p has MTU 1280.
#[test]
fn rfc8656_11_fragmentation_needed_from_a_router_carries_the_mtu() {
    if let Err(why) = netns::available() {
        need(false, &format!("network namespaces ({why})"));
        return;
    }
    let x = 10 + netns::subnet_tag();
    let t = Netns::new("mtut");
    let r = Netns::new("mtur");
    let p = Netns::new("mtup");
    netns::link(&t, "r0", &format!("10.{x}.1.1/24"), &r, "t0", &format!("10.{x}.1.2/24"));
    netns::link(&r, "p0", &format!("10.{x}.2.1/24"), &p, "r0", &format!("10.{x}.2.2/24"));
    r.ip(&["link", "set", "p0", "mtu", "1280"]);
    p.ip(&["link", "set", "r0", "mtu", "1280"]);
    r.sysctl("net.ipv4.ip_forward=1");
    t.ip(&["route", "add", &format!("10.{x}.2.0/24"), "via", &format!("10.{x}.1.2")]);
    p.ip(&["route", "add", "default", "via", &format!("10.{x}.2.1")]);

    let turnd = t.enter(|| TurndProcess::start(&config(&format!("10.{x}.1.1:0"), "10.0.0.0/8"), &[]));
    let mut c = t.enter(|| TurnClient::new(&format!("10.{x}.1.1:0"), turnd.udp_addr(), USER, PASSWORD, REALM));
    let peer_socket = p.enter(|| UdpSocket::bind(format!("10.{x}.2.2:0")).unwrap());
    let peer = peer_socket.local_addr().unwrap();
    c.allocate(vec![DontFragment.into()]).expect("allocation with DONT-FRAGMENT");
    assert_eq!(c.create_permission(peer), None);
    // Small enough for the link: relayed.
    c.send_indication(peer, &[7; 1000]);
    peer_socket.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = peer_socket.recv_from(&mut buf).expect("a datagram that fits the path");
    assert_eq!(n, 1000);
    // 1400 bytes of payload + 28 of headers > 1280, with DF: the router answers ICMP
    // destination unreachable (3), fragmentation needed (4), next-hop MTU 1280.
    c.send_indication(peer, &[8; 1400]);
    let got = recv_icmp(&c).expect("a Data indication with the ICMP error");
    assert_eq!(got, IcmpIndication { peer, kind: 3, code: 4, error_data: 1280, has_data: false });
    drop(turnd);
}
