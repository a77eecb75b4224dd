//! TURN over UDP end to end against the real binary, with turnd's own test client:
//! relay addresses on wildcard listeners, the external address, both relay modes,
//! DONT-FRAGMENT, and survival of a burst of malformed datagrams.
// A test may unwrap (a panic is a failed test) and use unsafe for process plumbing
// (signals, namespaces); the server code denies both (Cargo.toml [lints]).
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::turn_client;

use common::*;
use std::net::{SocketAddr, UdpSocket};
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5766::attributes::DontFragment;
use turn_client::TurnClient;

fn config(listen: &str, extra_relay: &str) -> String {
    let (min, max) = relay_port_range();
    format!(
        "realm = \"{REALM}\"\n[[listen]]\ntransport = \"udp\"\naddress = \"{listen}\"\n\
         [relay]\nport-min = {min}\nport-max = {max}\nallowed-peers = [\"127.0.0.0/8\"]\nallow-host-peers = true\n{extra_relay}\n\
         [[auth.user]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\n"
    )
}

fn client(local: &str, server: SocketAddr) -> TurnClient {
    TurnClient::new(local, server, USER, PASSWORD, REALM)
}

#[test]
fn wildcard_listener_relays_on_the_address_each_client_used() {
    let turnd = TurndProcess::start(&config("0.0.0.0:0", ""), &[]);
    let port = turnd.udp_addr().port();
    for ip in ["127.0.0.1", "127.0.0.2"] {
        let server: SocketAddr = format!("{ip}:{port}").parse().unwrap();
        let mut c = client("127.0.0.1:0", server);
        let (relayed, mapped) = c.allocate(vec![]).expect("allocation");
        assert_eq!(relayed.ip().to_string(), ip, "relay bound to the address the request arrived on");
        assert_eq!(mapped, c.socket.local_addr().unwrap());
        // And the answer came from that address too (IP_PKTINFO on the way out).
        assert_eq!(c.server, server);
    }
}

#[test]
fn external_address_is_advertised_and_the_private_one_relays() {
    let turnd = TurndProcess::start(&config("127.0.0.1:0", "external-ipv4 = \"198.51.100.7\""), &[]);
    let peer = UdpEchoPeer::start();
    let mut c = client("127.0.0.1:0", turnd.udp_addr());
    let (relayed, _) = c.allocate(vec![]).expect("allocation");
    assert_eq!(relayed.ip().to_string(), "198.51.100.7");
    assert_eq!(c.channel_bind(0x4000, peer.addr()), None);
    c.send_channel_data(0x4000, b"behind nat");
    let (channel, _, payload) = c.recv_data().expect("echo through the relay");
    assert_eq!((channel, payload.as_slice()), (Some(0x4000), &b"behind nat"[..]));
}

#[test]
fn channel_data_and_send_indications_relay_both_ways() {
    let turnd = TurndProcess::start(&config("127.0.0.1:0", ""), &[]);
    let peer = UdpEchoPeer::start();
    let mut c = client("127.0.0.1:0", turnd.udp_addr());
    let (relayed, _) = c.allocate(vec![DontFragment.into()]).expect("DONT-FRAGMENT is honoured, not rejected");
    // Without a permission nothing reaches the peer.
    c.send_indication(peer.addr(), b"too early");
    assert_eq!(c.create_permission(peer.addr()), None);
    c.send_indication(peer.addr(), b"via send");
    let (channel, from, payload) = c.recv_data().expect("Data indication");
    assert_eq!((channel, from, payload.as_slice()), (None, Some(peer.addr()), &b"via send"[..]));
    assert_eq!(c.channel_bind(0x4001, peer.addr()), None);
    c.send_channel_data(0x4001, b"via channel");
    let (channel, _, payload) = c.recv_data().expect("ChannelData");
    assert_eq!((channel, payload.as_slice()), (Some(0x4001), &b"via channel"[..]));
    assert_eq!(peer.count(), 2, "the early indication was dropped");
    // A stranger sending to the relay address without a permission is dropped.
    let stranger = UdpSocket::bind("127.0.0.2:0").unwrap();
    stranger.send_to(b"unsolicited", relayed).unwrap();
    c.socket.set_read_timeout(Some(std::time::Duration::from_millis(300))).unwrap();
    assert!(c.recv_data().is_none(), "no permission for 127.0.0.2");
}

#[test]
fn wrong_password_gets_401() {
    let turnd = TurndProcess::start(&config("127.0.0.1:0", ""), &[]);
    let mut c = TurnClient::new("127.0.0.1:0", turnd.udp_addr(), USER, "wrong", REALM);
    assert_eq!(c.allocate(vec![]), Err(401));
}

#[test]
fn survives_a_burst_of_malformed_datagrams() {
    let turnd = TurndProcess::start(&config("127.0.0.1:0", ""), &[]);
    let peer = UdpEchoPeer::start();
    let mut c = client("127.0.0.1:0", turnd.udp_addr());
    c.allocate(vec![]).expect("allocation");
    assert_eq!(c.channel_bind(0x4000, peer.addr()), None);

    let attacker = UdpSocket::bind("127.0.0.3:0").unwrap();
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let cookie = [0x21, 0x12, 0xA4, 0x42];
    for i in 0..20_000u32 {
        let len = (next() % 200) as usize;
        let mut d: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        match i % 5 {
            // A STUN header with a lying length.
            0 if d.len() >= 20 => {
                d[0] = 0;
                d[1] = 1;
                d[4..8].copy_from_slice(&cookie);
            }
            // ChannelData with a lying length.
            1 if d.len() >= 4 => d[0] = 0x40,
            // A well-framed message with garbage attributes.
            2 if d.len() >= 24 => {
                d.truncate(20 + (d.len() - 20) / 4 * 4);
                d[0] = 0;
                d[1] = 3;
                let body = (d.len() - 20) as u16;
                d[2..4].copy_from_slice(&body.to_be_bytes());
                d[4..8].copy_from_slice(&cookie);
            }
            _ => {}
        }
        let _ = attacker.send_to(&d, turnd.udp_addr());
    }
    // Still answers Binding and still relays on the existing allocation.
    let binding = c.plain(BINDING).expect("Binding answered after the burst");
    assert_eq!(binding.class(), stun_codec::MessageClass::SuccessResponse);
    c.send_channel_data(0x4000, b"still here");
    let (_, _, payload) = c.recv_data().expect("relay still works");
    assert_eq!(payload, b"still here");
}
