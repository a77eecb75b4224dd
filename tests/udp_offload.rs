//! GRO and GSO on the UDP relay path (`[relay] udp-offload`), against the real binary
//! over a veth pair between two network namespaces: loopback hands every send over
//! whole, a veth pair behaves like a NIC (GSO sends cross it as one packet, GRO on its
//! receiving end). turnd runs in one namespace, the client and the peer in the other.
//!
//! A bulk flow each way: the client sends a run of same-sized ChannelData messages as
//! one GSO send, which turnd's listener takes as one coalesced buffer (GRO) and relays
//! to the peer; the peer sends a run back the same way, into the relay socket. Every
//! datagram must arrive byte for byte and in order, and `/metrics` must count
//! datagrams, not super-packets. With offload on, the receivers (with UDP_GRO) must
//! also see turnd's own sends arrive coalesced: it used GSO.
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

mod common;
mod netns;

use common::http::scrape;
use common::turn_client::TurnClient;
use common::*;
use netns::Netns;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};
use turnd::sys::mmsg::{self, Datagram, RECV_BATCH};

const CHANNEL: u16 = 0x4000;
/// Datagrams per run: one GSO send's worth.
const RUN: usize = 64;
/// Payload bytes: a multiple of 4, so ChannelData over UDP needs no padding.
const PAYLOAD: usize = 1000;
/// Runs each way.
const RUNS: usize = 4;

fn config(listen: &str, allowed: &str, offload: bool) -> String {
    let (min, max) = relay_port_range();
    format!(
        "realm = \"{REALM}\"\nworkers = 1\n[[listen]]\ntransport = \"udp\"\naddress = \"{listen}\"\n\
         [relay]\nport-min = {min}\nport-max = {max}\nallowed-peers = [\"{allowed}\"]\nudp-offload = {offload}\n\
         [[auth.user]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\n"
    )
}

/// The payload of datagram `i` of run `run` in direction `dir`: distinct bytes, so a
/// swap, a cut or a merge shows.
fn payload(dir: u8, run: usize, i: usize) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..PAYLOAD).map(|k| (k * 7 + i * 13 + run * 31) as u8 ^ dir).collect();
    bytes[..4].copy_from_slice(&((run * RUN + i) as u32).to_be_bytes());
    bytes
}

fn channel_data(bytes: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(4 + bytes.len());
    framed.extend_from_slice(&CHANNEL.to_be_bytes());
    framed.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    framed.extend_from_slice(bytes);
    framed
}

/// Sends `datagrams` from `socket` to `to` as GSO sends of [`RUN`] each, and takes
/// what `receiver` gets from `from` after each (one run in flight at a time: a relay
/// socket's default buffer holds a run of plain datagrams, not four). Returns every
/// datagram received and how many buffers came coalesced.
fn relay_runs(
    socket: &UdpSocket,
    to: SocketAddr,
    datagrams: &[Vec<u8>],
    receiver: &UdpSocket,
    from: SocketAddr,
) -> (Vec<Vec<u8>>, usize) {
    let (mut all, mut coalesced) = (Vec::new(), 0);
    for run in datagrams.chunks(RUN) {
        let sent =
            mmsg::send_batch(socket.as_raw_fd(), run.iter().map(|bytes| Datagram { to, from: None, bytes }), true);
        assert_eq!(sent, mmsg::Sent::default(), "the test's own GSO send");
        let (got, runs) = receive(receiver, from, run.len());
        all.extend(got);
        coalesced += runs;
    }
    (all, coalesced)
}

/// What a receiver with UDP_GRO got: every datagram from `from` (coalesced buffers
/// split), and how many buffers came coalesced.
fn receive(socket: &UdpSocket, from: SocketAddr, want: usize) -> (Vec<Vec<u8>>, usize) {
    socket.set_nonblocking(true).unwrap();
    let slot = 65536 + 64;
    let mut slots = vec![0u8; slot * RECV_BATCH];
    let mut received = [None; RECV_BATCH];
    let (mut got, mut coalesced) = (Vec::new(), 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < want && Instant::now() < deadline {
        let n = match mmsg::recv_batch(socket.as_raw_fd(), &mut slots, slot, 0, &mut received) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            Err(e) => panic!("receive: {e}"),
        };
        for (k, entry) in received.iter().take(n).enumerate() {
            let entry = entry.expect("a whole datagram");
            if entry.from != from {
                continue;
            }
            coalesced += usize::from(entry.segment < entry.len);
            let data = &slots[k * slot..k * slot + entry.len];
            got.extend(mmsg::segments(entry.len, entry.segment).map(|r| data[r].to_vec()));
        }
    }
    (got, coalesced)
}

/// A sample of `/metrics`, as a number.
fn sample(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn bulk_flows_relay_every_datagram_in_order(offload: bool) {
    if let Err(why) = netns::available() {
        need(false, &format!("network namespaces ({why})"));
        return;
    }
    if !need_tool("ethtool", "ethtool") {
        return;
    }
    let x = 10 + netns::subnet_tag();
    let (server_ip, generator_ip) = (format!("10.{x}.7.1"), format!("10.{x}.7.2"));
    let s = Netns::new("gsos");
    let g = Netns::new("gsog");
    netns::link(&s, "vs", &format!("{server_ip}/24"), &g, "vg", &format!("{generator_ip}/24"));
    // GRO on both ends: the veth receive path then runs in NAPI, as a NIC's does.
    s.exec("ethtool", &["-K", "vs", "gro", "on"]);
    g.exec("ethtool", &["-K", "vg", "gro", "on"]);

    let turnd =
        s.enter(|| TurndProcess::start(&config(&format!("{server_ip}:0"), &format!("10.{x}.7.0/24"), offload), &[]));
    let mut client = g.enter(|| TurnClient::new(&format!("{generator_ip}:0"), turnd.udp_addr(), USER, PASSWORD, REALM));
    let peer = g.enter(|| UdpSocket::bind(format!("{generator_ip}:0")).unwrap());
    for socket in [&client.socket, &peer] {
        turnd::sys::sockopt::set_int(socket.as_fd(), libc::SOL_UDP, libc::UDP_GRO, 1).unwrap();
        // Room for every run in flight.
        turnd::sys::sockopt::set_int(socket.as_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, 8 << 20).unwrap();
    }
    let relay = client.allocate_relay();
    assert_eq!(client.channel_bind(CHANNEL, peer.local_addr().unwrap()), None);

    // Client to peer: ChannelData in, bare payloads out.
    let up: Vec<Vec<u8>> = (0..RUNS).flat_map(|run| (0..RUN).map(move |i| payload(0x55, run, i))).collect();
    let framed: Vec<Vec<u8>> = up.iter().map(|p| channel_data(p)).collect();
    let (at_peer, coalesced_at_peer) = relay_runs(&client.socket, turnd.udp_addr(), &framed, &peer, relay);
    assert_eq!(at_peer.len(), up.len(), "every datagram reached the peer");
    assert!(at_peer == up, "byte for byte and in order at the peer");

    // Peer to client: bare payloads in, ChannelData out.
    let down: Vec<Vec<u8>> = (0..RUNS).flat_map(|run| (0..RUN).map(move |i| payload(0xAA, run, i))).collect();
    let server = turnd.udp_addr();
    let (at_client, coalesced_at_client) = relay_runs(&peer, relay, &down, &client.socket, server);
    assert_eq!(at_client.len(), down.len(), "every datagram reached the client");
    let expected: Vec<Vec<u8>> = down.iter().map(|p| channel_data(p)).collect();
    assert!(at_client == expected, "byte for byte and in order at the client");

    if offload {
        assert!(coalesced_at_peer > 0, "turnd sent to the peer with GSO");
        assert!(coalesced_at_client > 0, "turnd sent to the client with GSO");
    }
    eprintln!("coalesced buffers received: at the peer {coalesced_at_peer}, at the client {coalesced_at_client}");

    // Counted per datagram, each way: packets and payload bytes.
    let packets = (up.len()) as u64;
    let bytes = packets * PAYLOAD as u64;
    let series = |name: &str, direction: &str| format!("{name}{{direction=\"{direction}\",transport=\"udp\"}}");
    let want = [
        (series("turnd_relayed_packets_total", "client_to_peer"), packets),
        (series("turnd_relayed_packets_total", "peer_to_client"), packets),
        (series("turnd_relayed_bytes_total", "client_to_peer"), bytes),
        (series("turnd_relayed_bytes_total", "peer_to_client"), bytes),
    ];
    let admin = turnd.admin_addr();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while Instant::now() < deadline {
        let text = s.enter(|| scrape(admin));
        got = want.iter().map(|(series, _)| sample(&text, series)).collect();
        if got.iter().zip(&want).all(|(g, (_, w))| g >= w) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let want_values: Vec<u64> = want.iter().map(|(_, w)| *w).collect();
    assert_eq!(got, want_values, "{:?}", want.iter().map(|(s, _)| s).collect::<Vec<_>>());
    let text = s.enter(|| scrape(admin));
    assert_eq!(sample(&text, "turnd_udp_gso_refused_total"), 0, "no GSO send refused on a veth");
    drop(turnd);
}

#[test]
fn with_udp_offload_bulk_channel_data_is_relayed_whole_in_order_and_counted_per_datagram() {
    bulk_flows_relay_every_datagram_in_order(true);
}

#[test]
fn without_udp_offload_the_same_bulk_flows_are_relayed_the_same() {
    bulk_flows_relay_every_datagram_in_order(false);
}
