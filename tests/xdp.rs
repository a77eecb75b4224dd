//! The XDP fast path (`[relay] xdp`, cargo feature `xdp`) against the real binary in
//! two network namespaces over a veth pair: turnd in one, a client and a UDP peer in
//! the other. What the peer and the client receive must be the same, byte for byte,
//! with the fast path on and off; the fast path must actually carry the channel
//! traffic (its own counters say so), the relayed totals in /metrics must count every
//! packet once, and traffic it may not carry (Send indications, unbound peers, a
//! deleted or expired allocation, a user with a bandwidth cap) must take the socket
//! path or not be relayed at all.
#![cfg(feature = "xdp")]
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

mod common;
mod netns;

use common::http::{metric, scrape};
use common::turn_client::TurnClient;
use common::*;
use netns::browser::{self, Browser};
use netns::Netns;
use serde_json::json;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// Datagrams each way per run: sizes cover every remainder modulo 4 (ChannelData
/// padding) and one near the veth's MTU.
const SIZES: [usize; 9] = [1, 2, 3, 4, 5, 100, 333, 1000, 1400];

/// turnd's namespace and the one of its client and peer, on one veth pair: the
/// server at 10.x.1.1, the client at 10.x.1.2, the peer at 10.x.1.3.
struct Lab {
    server: Netns,
    outside: Netns,
    x: u8,
}

impl Lab {
    fn new() -> Option<Lab> {
        if let Err(why) = netns::available() {
            need(false, &format!("network namespaces ({why})"));
            return None;
        }
        let x = 10 + netns::subnet_tag();
        let server = Netns::new("xdps");
        let outside = Netns::new("xdpo");
        netns::link(&server, "c0", &format!("10.{x}.1.1/24"), &outside, "s0", &format!("10.{x}.1.2/24"));
        outside.ip(&["addr", "add", &format!("10.{x}.1.3/24"), "dev", "s0"]);
        // XDP_TX on a veth hands the frame to the other end's NAPI, which exists only
        // with an XDP program on that end (GRO, the other way, is on by default, so
        // turning it on changes nothing here); without it the frame is dropped. The
        // program turnd builds, with maps of its own that stay empty, passes
        // everything.
        let object = concat!(env!("OUT_DIR"), "/turnd_xdp.o");
        outside.ip(&["link", "set", "dev", "s0", "xdpdrv", "obj", object, "sec", "xdp"]);
        // The program's route lookup (bpf_fib_lookup) answers only on an interface
        // that forwards; turnd refuses to start the fast path on one that does not.
        server.sysctl("net.ipv4.conf.c0.forwarding=1");
        // The program sends only to resolved neighbours (anything else takes the
        // socket path, which resolves them): resolve both now, so that which path a
        // test's first datagram takes does not depend on an ARP exchange.
        let link = outside.ip(&["link", "show", "s0"]);
        let mac = link.split("link/ether ").nth(1).and_then(|rest| rest.split_whitespace().next()).unwrap();
        for host in [2, 3] {
            server.ip(&["neigh", "replace", &format!("10.{x}.1.{host}"), "lladdr", mac, "dev", "c0"]);
        }
        Some(Lab { server, outside, x })
    }

    fn config(&self, xdp: &str) -> String {
        let (min, max) = relay_port_range();
        let x = self.x;
        format!(
            "realm = \"{REALM}\"\n[[listen]]\ntransport = \"udp\"\naddress = \"10.{x}.1.1:0\"\n\
             [relay]\nport-min = {min}\nport-max = {max}\nallowed-peers = [\"10.{x}.1.0/24\"]\n\
             xdp = \"{xdp}\"\nxdp-interfaces = [\"c0\"]\n\
             [[auth.user]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\n"
        )
    }

    fn start(&self, xdp: &str) -> TurndProcess {
        self.server.enter(|| TurndProcess::start(&self.config(xdp), &[]))
    }

    fn client(&self, turnd: &TurndProcess) -> TurnClient {
        self.outside.enter(|| TurnClient::new(&format!("10.{}.1.2:0", self.x), turnd.udp_addr(), USER, PASSWORD, REALM))
    }

    fn peer(&self) -> UdpSocket {
        let socket = self.outside.enter(|| UdpSocket::bind(format!("10.{}.1.3:0", self.x)).unwrap());
        socket.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        socket
    }

    fn metrics(&self, turnd: &TurndProcess) -> String {
        self.server.enter(|| scrape(turnd.admin_addr()))
    }

    /// Waits (bounded) until series `series` reads `want`; returns what it read last.
    fn wait_metric(&self, turnd: &TurndProcess, series: &str, want: f64) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = metric(&self.metrics(turnd), series).unwrap_or(-1.0);
            if got == want || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn payload(size: usize, seed: u8) -> Vec<u8> {
    (0..size).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// What each side saw: the peer's datagrams (source, bytes) and the client's raw
/// datagrams from turnd.
#[derive(Debug, PartialEq, Eq)]
struct Transcript {
    at_peer: Vec<(SocketAddr, Vec<u8>)>,
    at_client: Vec<Vec<u8>>,
}

/// Allocates, binds channel 0x4000 to the peer, relays [`SIZES`] both ways (one at a
/// time, each waited for) and returns what was received, relay addresses included.
fn relay_both_ways(lab: &Lab, turnd: &TurndProcess, xdp: bool) -> (Transcript, SocketAddr) {
    let mut client = lab.client(turnd);
    let peer = lab.peer();
    let relay = client.allocate_relay();
    client.bind_channel(0x4000, peer.local_addr().unwrap());
    if xdp {
        // The binding reaches the maps just after the answer leaves: wait for it, so
        // every datagram below takes the fast path.
        assert_eq!(lab.wait_metric(turnd, "turnd_xdp_channels", 1.0), 1.0, "the channel in the XDP maps");
    }
    let mut at_peer = Vec::new();
    let mut at_client = Vec::new();
    let mut buf = vec![0u8; 65536];
    for (i, size) in SIZES.iter().enumerate() {
        // Padded and unpadded frames alike.
        let data = payload(*size, i as u8);
        if i % 2 == 0 {
            client.send_channel(0x4000, &data);
        } else {
            client.send_channel_data(0x4000, &data);
        }
        let (n, from) = peer.recv_from(&mut buf).expect("the peer receives the ChannelData's data");
        at_peer.push((from, buf[..n].to_vec()));
        peer.send_to(&payload(*size, 100 + i as u8), relay).unwrap();
        at_client.push(client.recv().expect("the client receives the peer's datagram"));
    }
    (Transcript { at_peer, at_client }, relay)
}

fn series(name: &str, direction: &str) -> String {
    format!("{name}{{direction=\"{direction}\"}}")
}

#[test]
fn channel_data_through_xdp_is_what_the_socket_path_delivers_and_is_counted_once() {
    let Some(lab) = Lab::new() else { return };
    let mut runs = Vec::new();
    for xdp in [false, true] {
        let turnd = lab.start(if xdp { "on" } else { "off" });
        let (transcript, relay) = relay_both_ways(&lab, &turnd, xdp);
        let n = SIZES.len() as f64;
        let bytes: usize = SIZES.iter().sum();
        for direction in ["client_to_peer", "peer_to_client"] {
            let relayed = format!("turnd_relayed_packets_total{{direction=\"{direction}\",transport=\"udp\"}}");
            assert_eq!(lab.wait_metric(&turnd, &relayed, n), n, "{relayed} (xdp {xdp})");
            let relayed_bytes = format!("turnd_relayed_bytes_total{{direction=\"{direction}\",transport=\"udp\"}}");
            assert_eq!(lab.wait_metric(&turnd, &relayed_bytes, bytes as f64), bytes as f64, "{relayed_bytes}");
            // With the fast path on, every channel datagram went through it.
            let through_xdp = if xdp { n } else { 0.0 };
            let fast = series("turnd_xdp_packets_total", direction);
            assert_eq!(lab.wait_metric(&turnd, &fast, through_xdp), through_xdp, "{fast} (xdp {xdp})");
        }
        // The peer saw every datagram come from the relay address.
        assert!(transcript.at_peer.iter().all(|(from, _)| *from == relay), "{:?}", transcript.at_peer);
        runs.push(transcript.at_peer.into_iter().map(|(_, bytes)| bytes).collect::<Vec<_>>());
        runs.push(transcript.at_client);
        drop(turnd);
    }
    assert_eq!(runs[0], runs[2], "what the peer received, xdp off then on");
    assert_eq!(runs[1], runs[3], "what the client received, xdp off then on");
    // Unpadded ChannelData over UDP (RFC 8656 §12.5), header and all.
    assert_eq!(runs[3][2], [&[0x40, 0x00, 0x00, 0x03][..], &payload(3, 102)].concat());
}

#[test]
fn send_indications_and_unbound_peers_take_the_socket_path() {
    let Some(lab) = Lab::new() else { return };
    let turnd = lab.start("on");
    let mut client = lab.client(&turnd);
    let bound = lab.peer();
    let unbound = lab.peer();
    let relay = client.allocate_relay();
    client.bind_channel(0x4001, bound.local_addr().unwrap());
    client.permit(unbound.local_addr().unwrap());
    assert_eq!(lab.wait_metric(&turnd, "turnd_xdp_channels", 1.0), 1.0);
    let mut buf = [0u8; 2048];
    // A Send indication, even to the bound peer, is the socket path's.
    client.send_indication(bound.local_addr().unwrap(), b"by indication");
    let (n, from) = bound.recv_from(&mut buf).expect("relayed Send indication");
    assert_eq!((&buf[..n], from), (&b"by indication"[..], relay));
    // A peer without a channel gets to the client as a Data indication.
    unbound.send_to(b"no channel", relay).unwrap();
    let (channel, peer, data) = client.recv_data().expect("a Data indication");
    assert_eq!((channel, peer, data.as_slice()), (None, Some(unbound.local_addr().unwrap()), &b"no channel"[..]));
    // An unbound channel number is dropped, as without the fast path.
    client.send_channel_data(0x4002, b"unbound channel");
    // And the bound channel still goes through the fast path.
    client.send_channel_data(0x4001, b"fast");
    let (n, _) = bound.recv_from(&mut buf).expect("relayed ChannelData");
    assert_eq!(&buf[..n], b"fast");
    let fast = series("turnd_xdp_packets_total", "client_to_peer");
    assert_eq!(lab.wait_metric(&turnd, &fast, 1.0), 1.0);
    let relayed = "turnd_relayed_packets_total{direction=\"client_to_peer\",transport=\"udp\"}";
    assert_eq!(lab.wait_metric(&turnd, relayed, 2.0), 2.0);
    let dropped = "turnd_dropped_packets_total{reason=\"no_permission\"}";
    assert_eq!(lab.wait_metric(&turnd, dropped, 1.0), 1.0, "the unbound channel's datagram");
    let fast_down = series("turnd_xdp_packets_total", "peer_to_client");
    assert_eq!(lab.wait_metric(&turnd, &fast_down, 0.0), 0.0);
}

/// After the allocation goes (deleted, or expired), neither direction is relayed.
fn nothing_relayed_after(end: impl FnOnce(&Lab, &TurndProcess, &mut TurnClient)) {
    let Some(lab) = Lab::new() else { return };
    let turnd = lab.start("on");
    let mut client = lab.client(&turnd);
    let peer = lab.peer();
    let relay = client.allocate_relay();
    client.bind_channel(0x4000, peer.local_addr().unwrap());
    assert_eq!(lab.wait_metric(&turnd, "turnd_xdp_channels", 1.0), 1.0);
    let mut buf = [0u8; 2048];
    client.send_channel_data(0x4000, b"before");
    let (n, _) = peer.recv_from(&mut buf).expect("relayed before the end");
    assert_eq!(&buf[..n], b"before");
    end(&lab, &turnd, &mut client);
    assert_eq!(lab.wait_metric(&turnd, "turnd_xdp_channels", 0.0), 0.0, "the channel out of the maps");
    client.send_channel_data(0x4000, b"after");
    peer.send_to(b"after", relay).unwrap();
    peer.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    assert!(peer.recv_from(&mut buf).is_err(), "relayed to the peer after the allocation ended");
    client.socket.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    assert_eq!(client.recv_channel(Duration::from_millis(500)), None, "relayed to the client after the end");
    let fast = series("turnd_xdp_packets_total", "client_to_peer");
    assert_eq!(lab.wait_metric(&turnd, &fast, 1.0), 1.0);
}

#[test]
fn a_deleted_allocation_stops_the_fast_path() {
    nothing_relayed_after(|_, _, client| assert_eq!(client.refresh(0), Ok(())));
}

#[test]
fn an_expired_allocation_stops_the_fast_path() {
    nothing_relayed_after(|lab, turnd, client| {
        // A short lifetime, then wait for turnd to expire it.
        assert_eq!(client.refresh(2), Ok(()));
        let expired = "turnd_allocations_expired_total";
        assert_eq!(lab.wait_metric(turnd, expired, 1.0), 1.0);
    });
}

#[test]
fn xdp_on_without_the_interface_is_a_start_error_naming_the_key() {
    let Some(lab) = Lab::new() else { return };
    let config = lab.config("on").replace("[\"c0\"]", "[\"nosuch0\"]");
    let dir = TempDir::new("turnd-xdp");
    let file = dir.write("turnd.toml", &with_ephemeral_admin(&config));
    let out = lab.server.try_exec(&turnd_binary(), &["serve", "-c", file.to_str().unwrap()]);
    assert!(!out.0, "turnd started without its XDP interface: {}", out.1);
    assert!(out.1.contains("relay.xdp") && out.1.contains("nosuch0"), "{}", out.1);
    // An interface that does not forward: the program's route lookup would refuse.
    lab.server.sysctl("net.ipv4.conf.c0.forwarding=0");
    let file = dir.write("turnd.toml", &with_ephemeral_admin(&lab.config("on")));
    let out = lab.server.try_exec(&turnd_binary(), &["serve", "-c", file.to_str().unwrap()]);
    assert!(!out.0, "turnd started on an interface that does not forward: {}", out.1);
    assert!(out.1.contains("relay.xdp") && out.1.contains("net.ipv4.conf.c0.forwarding"), "{}", out.1);
    // "auto" falls back to the sockets and relays.
    let auto = lab.server.enter(|| TurndProcess::start(&config.replace("xdp = \"on\"", "xdp = \"auto\""), &[]));
    assert!(auto.logs().contains("relaying through sockets only"), "{}", auto.logs());
    let mut client = lab.client(&auto);
    let peer = lab.peer();
    client.allocate_relay();
    client.bind_channel(0x4000, peer.local_addr().unwrap());
    client.send_channel_data(0x4000, b"socket path");
    let mut buf = [0u8; 64];
    let (n, _) = peer.recv_from(&mut buf).expect("relayed over sockets");
    assert_eq!(&buf[..n], b"socket path");
}

#[test]
fn a_user_with_a_bandwidth_cap_stays_on_the_socket_path() {
    let Some(lab) = Lab::new() else { return };
    // The cap is a per-packet decision the program does not make.
    let config = lab.config("on").replace("[[auth.user]]", "[limits]\nbandwidth-per-user = 10000000\n\n[[auth.user]]");
    let turnd = lab.server.enter(|| TurndProcess::start(&config, &[]));
    let mut client = lab.client(&turnd);
    let peer = lab.peer();
    let relay = client.allocate_relay();
    client.bind_channel(0x4000, peer.local_addr().unwrap());
    let mut buf = [0u8; 2048];
    for i in 0..5u8 {
        client.send_channel_data(0x4000, &[i; 50]);
        let (n, _) = peer.recv_from(&mut buf).expect("relayed through the sockets");
        assert_eq!(&buf[..n], &[i; 50]);
        peer.send_to(&[i; 30], relay).unwrap();
        assert_eq!(client.recv_channel(Duration::from_secs(3)), Some(vec![i; 30]));
    }
    let relayed = "turnd_relayed_packets_total{direction=\"client_to_peer\",transport=\"udp\"}";
    assert_eq!(lab.wait_metric(&turnd, relayed, 5.0), 5.0);
    let text = lab.metrics(&turnd);
    assert_eq!(metric(&text, "turnd_xdp_channels"), Some(0.0));
    assert_eq!(metric(&text, &series("turnd_xdp_packets_total", "client_to_peer")), Some(0.0));
    assert_eq!(metric(&text, &series("turnd_xdp_packets_total", "peer_to_client")), Some(0.0));
}

#[test]
fn aioice_relays_through_the_fast_path() {
    if !need(python_module_available("aioice"), "Python module `aioice` (pip install aioice)") {
        return;
    }
    let Some(lab) = Lab::new() else { return };
    let turnd = lab.start("on");
    let echo = lab.peer();
    echo.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let peer = echo.local_addr().unwrap();
    let echoes = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut n = 0;
        while n < 10 {
            let Ok((len, from)) = echo.recv_from(&mut buf) else { break };
            echo.send_to(&buf[..len], from).unwrap();
            n += 1;
        }
        n
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/aioice_turn.py");
    let out = lab.outside.enter(|| {
        run_with_timeout(
            std::process::Command::new(python())
                .arg(script)
                .args(["--server", &turnd.udp_addr().to_string(), "--peer", &peer.to_string()])
                .args(["--user", USER, "--password", PASSWORD, "--transport", "udp", "--count", "10"]),
            Duration::from_secs(60),
        )
    });
    assert!(out.success() && out.stdout.contains("ECHOED 10/10") && out.stdout.contains("DELETED"), "{out}");
    assert_eq!(echoes.join().unwrap(), 10);
    let relayed = "turnd_relayed_packets_total{direction=\"peer_to_client\",transport=\"udp\"}";
    assert_eq!(lab.wait_metric(&turnd, relayed, 10.0), 10.0);
    // aioice sends right after its ChannelBind is answered, which can beat the maps by
    // a datagram or so; the rest go through the program.
    let text = lab.metrics(&turnd);
    let fast = metric(&text, &series("turnd_xdp_packets_total", "peer_to_client")).unwrap();
    eprintln!("{fast} of 10 echoes came back through the fast path");
    assert!(fast > 0.0, "no echo came back through the fast path:\n{text}");
}

#[test]
fn chromium_data_channel_relays_through_the_fast_path() {
    if let Some(what) = browser::missing() {
        if !need(false, &what) {
            return;
        }
    }
    let Some(lab) = Lab::new() else { return };
    // Without a media permission Chromium gathers host candidates only on the address
    // its default route leaves from, and this namespace has none yet.
    lab.outside.ip(&["route", "add", "default", "via", &format!("10.{}.1.1", lab.x)]);
    let turnd = lab.start("on");
    let homes = [TempDir::new("turnd-xdp-chromium-1"), TempDir::new("turnd-xdp-chromium-2")];
    // One side relay-only through turnd, the other answering on its own addresses: the
    // relay's peer is then that host (a relay-to-relay pair would go from turnd to
    // itself, a local destination the program leaves to the sockets). Host candidates
    // as addresses, not mDNS names the relay-only side could not resolve.
    let host_addresses = ["--disable-features=WebRtcHideLocalIpsWithMdns"];
    let mut relayed = lab.outside.enter(|| Browser::launch("xdp-relayed", homes[0].path(), &[]));
    let mut direct = lab.outside.enter(|| Browser::launch("xdp-direct", homes[1].path(), &host_addresses));
    let ice_servers =
        json!([{ "urls": [format!("turn:{}", turnd.udp_addr())], "username": USER, "credential": PASSWORD }]);
    let offer = relayed.call("offer", json!({ "iceServers": ice_servers }));
    assert_eq!(offer["ok"], true, "offer: {offer:#}");
    assert!(offer["relayCandidates"].as_u64() >= Some(1), "no relay candidate: {offer:#}");
    let answer = direct.call("answer", json!({ "iceServers": [], "policy": "all", "sdp": offer["sdp"] }));
    assert_eq!(answer["ok"], true, "answer: {answer:#}");
    let accepted = relayed.call("accept", json!({ "sdp": answer["sdp"] }));
    assert_eq!(accepted["ok"], true, "{accepted:#}");
    // As in tests/nat.rs: the answerer speaks once the offerer's first message is in.
    relayed.start_call("exchange", json!({ "label": "via relay" }));
    direct.start_call("exchange", json!({ "label": "from host", "sendFirst": false }));
    let r1 = relayed.finish_call(browser::CALL_TIMEOUT);
    let r2 = direct.finish_call(browser::CALL_TIMEOUT);
    for (name, r, want) in [("relayed", &r1, "from host"), ("direct", &r2, "via relay")] {
        assert_eq!(
            r["ok"],
            true,
            "{name}: {r:#}\n---- relayed ----\n{r1:#}\n---- direct ----\n{r2:#}\n---- turnd ----\n{}",
            turnd.logs()
        );
        let got: Vec<String> = r["received"].as_array().into_iter().flatten().map(|m| m.to_string()).collect();
        assert_eq!(got.len(), 5, "{name} received {got:?}");
        assert!(got.iter().all(|m| m.contains(want)), "{name} received {got:?}");
    }
    assert_eq!(r1["pair"]["local"]["type"], "relay", "{r1:#}");
    assert_eq!(r1["pair"]["remote"]["type"], "host", "{r1:#}");
    // The DTLS and SCTP traffic of the data channel went through the program, both ways
    // (the first datagrams, before the channel is bound, take the socket path). The
    // program's counters reach /metrics with the workers' next snapshot, once a second.
    let fast = |text: &str, direction| metric(text, &series("turnd_xdp_packets_total", direction)).unwrap_or(0.0);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut text = lab.metrics(&turnd);
    while ["client_to_peer", "peer_to_client"].iter().any(|d| fast(&text, d) == 0.0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        text = lab.metrics(&turnd);
    }
    for direction in ["client_to_peer", "peer_to_client"] {
        let fast = metric(&text, &series("turnd_xdp_packets_total", direction)).unwrap_or(0.0);
        eprintln!("{fast} datagrams {direction} through the fast path");
        assert!(fast > 0.0, "nothing {direction} went through the fast path:\n{text}");
    }
}
