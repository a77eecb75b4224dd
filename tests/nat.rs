//! turnd across real NATs, built from network namespaces:
//!
//! ```text
//!   h1 (10.x.1.2) -- nat1 [MASQUERADE, stateful filter] -- 100.y.1.2
//!                                                            |
//!                                                  pub (turnd on 100.y.1.1, routes)
//!                                                            |
//!   h2 (10.x.2.2) -- nat2 [MASQUERADE, stateful filter] -- 100.y.2.2
//! ```
//!
//! Each NAT masquerades with `--random-fully` (a new random public port per
//! destination: a symmetric NAT, the case TURN exists for) and drops inbound traffic
//! that conntrack has not seen go out. The addresses exist only inside these
//! namespaces. turnd's peer policy denies 100.64.0.0/10 by default, so its config
//! allows the "public" 100.y.0.0/16.
// A test may unwrap (a panic is a failed test) and use unsafe for process plumbing
// (signals, namespaces); the server code denies both (Cargo.toml [lints]).
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

mod common;
mod netns;
use common::turn_client;

use common::*;
use netns::browser::{self, Browser};
use netns::Netns;
use serde_json::json;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};
use stun_codec::rfc5389::attributes::XorMappedAddress;
use stun_codec::rfc5389::methods::BINDING;
use turn_client::TurnClient;

/// The namespaces and turnd. Fields drop in order: turnd first, then the namespaces.
struct Topology {
    turnd: TurndProcess,
    /// turnd's address ("public").
    server: SocketAddr,
    /// The NATs' public addresses.
    nat_public: [String; 2],
    /// The hosts' private addresses.
    host_private: [String; 2],
    h: [Netns; 2],
    _nats: [Netns; 2],
    _public: Netns,
}

/// Makes `nat` a NAT between `lan` (inside) and `wan` (outside).
fn make_nat(nat: &Netns) {
    nat.sysctl("net.ipv4.ip_forward=1");
    let rules: [&[&str]; 7] = [
        &["-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE", "--random-fully"],
        &["-P", "FORWARD", "DROP"],
        &["-A", "FORWARD", "-i", "lan", "-o", "wan", "-j", "ACCEPT"],
        &["-A", "FORWARD", "-i", "wan", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
        &["-A", "INPUT", "-i", "wan", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
        &["-A", "INPUT", "-i", "wan", "-j", "DROP"],
        // No port is forwarded: nothing unsolicited reaches the LAN.
        &["-A", "FORWARD", "-i", "wan", "-j", "DROP"],
    ];
    for rule in rules {
        nat.exec("iptables", rule);
    }
}

impl Topology {
    fn new(tag: &str) -> Topology {
        let x = 10 + netns::subnet_tag();
        let y = 64 + netns::subnet_tag();
        let public = Netns::new(&format!("{tag}pub"));
        public.sysctl("net.ipv4.ip_forward=1");
        let mut nats = Vec::new();
        let mut hosts = Vec::new();
        for i in 1..=2 {
            let nat = Netns::new(&format!("{tag}nat{i}"));
            let host = Netns::new(&format!("{tag}h{i}"));
            netns::link(
                &public,
                &format!("to{i}"),
                &format!("100.{y}.{i}.1/24"),
                &nat,
                "wan",
                &format!("100.{y}.{i}.2/24"),
            );
            netns::link(&nat, "lan", &format!("10.{x}.{i}.1/24"), &host, "eth0", &format!("10.{x}.{i}.2/24"));
            nat.ip(&["route", "add", "default", "via", &format!("100.{y}.{i}.1")]);
            host.ip(&["route", "add", "default", "via", &format!("10.{x}.{i}.1")]);
            make_nat(&nat);
            nats.push(nat);
            hosts.push(host);
        }
        let (min, max) = relay_port_range();
        let config = format!(
            "realm = \"{REALM}\"\n[[listen]]\ntransport = \"udp\"\naddress = \"100.{y}.1.1:0\"\n\
             [relay]\nport-min = {min}\nport-max = {max}\nallowed-peers = [\"100.{y}.0.0/16\"]\n\
             [[auth.user]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\n"
        );
        let turnd = public.enter(|| TurndProcess::start(&config, &[]));
        let server = turnd.udp_addr();
        let [nat1, nat2]: [Netns; 2] = nats.try_into().unwrap_or_else(|_| unreachable!());
        let [h1, h2]: [Netns; 2] = hosts.try_into().unwrap_or_else(|_| unreachable!());
        Topology {
            turnd,
            server,
            nat_public: [format!("100.{y}.1.2"), format!("100.{y}.2.2")],
            host_private: [format!("10.{x}.1.2"), format!("10.{x}.2.2")],
            h: [h1, h2],
            _nats: [nat1, nat2],
            _public: public,
        }
    }

    /// A TURN client on host `i` (0 or 1), its socket inside that host.
    fn client(&self, i: usize) -> TurnClient {
        self.h[i].enter(|| TurnClient::new("0.0.0.0:0", self.server, USER, PASSWORD, REALM))
    }
}

fn ready() -> bool {
    if let Err(why) = netns::available() {
        return need(false, &format!("network namespaces ({why})"));
    }
    need_tool("iptables", "iptables")
}

/// Sends a Binding from `socket` (inside a host) to turnd; returns the mapped address.
fn mapped_address(client: &mut TurnClient) -> SocketAddr {
    let response = client.plain(BINDING).expect("a Binding response through the NAT");
    response.get_attribute::<XorMappedAddress>().expect("XOR-MAPPED-ADDRESS").address()
}

/// Datagrams `socket` receives within `wait`.
fn received_within(socket: &UdpSocket, wait: Duration) -> Vec<(SocketAddr, Vec<u8>)> {
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    // The socket's own timeout comes back afterwards: left at the last few microseconds,
    // the client's next request would give up before turnd could answer.
    let restore = socket.read_timeout().expect("read timeout");
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            socket.set_read_timeout(restore).expect("timeout");
            return got;
        }
        socket.set_read_timeout(Some(left)).expect("timeout");
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            got.push((from, buf[..n].to_vec()));
        }
    }
}

#[test]
fn behind_nat_binding_direct_udp_fails_and_turn_relays_both_ways() {
    if !ready() {
        return;
    }
    let topo = Topology::new("n");
    let mut c1 = topo.client(0);
    let mut c2 = topo.client(1);

    // 1. A Binding from a private host returns its NAT's public address.
    let m1 = mapped_address(&mut c1);
    let m2 = mapped_address(&mut c2);
    assert_eq!(m1.ip().to_string(), topo.nat_public[0], "host 1's mapped address");
    assert_eq!(m2.ip().to_string(), topo.nat_public[1], "host 2's mapped address");
    let local1 = c1.socket.local_addr().expect("local");
    assert_ne!(local1.ip().to_string(), topo.nat_public[0]);

    // 2. Direct UDP between the hosts fails: to the private address (no route on the
    //    "internet") and to the other's mapped address, even with both sending at once
    //    (a hole-punching attempt, defeated by the symmetric mapping).
    let private2: SocketAddr = format!("{}:{}", topo.host_private[1], m2.port()).parse().expect("addr");
    for _ in 0..5 {
        let _ = c1.socket.send_to(b"direct to private", private2);
        let _ = c1.socket.send_to(b"direct 1->2", m2);
        let _ = c2.socket.send_to(b"direct 2->1", m1);
        std::thread::sleep(Duration::from_millis(20));
    }
    let at2 = received_within(&c2.socket, Duration::from_millis(700));
    let at1 = received_within(&c1.socket, Duration::from_millis(100));
    assert!(at2.iter().all(|(_, d)| !d.starts_with(b"direct")), "a direct datagram crossed NAT 2: {at2:?}");
    assert!(at1.iter().all(|(_, d)| !d.starts_with(b"direct")), "a direct datagram crossed NAT 1: {at1:?}");

    // 3. Through turnd: both allocate; each permits the other's relay (both on turnd's
    //    address), then Send/Data indications and ChannelData both ways.
    let (r1, mapped1) = c1.allocate(Vec::new()).expect("host 1 allocates");
    let (r2, mapped2) = c2.allocate(Vec::new()).expect("host 2 allocates");
    assert_eq!(mapped1.ip().to_string(), topo.nat_public[0]);
    assert_eq!(mapped2.ip().to_string(), topo.nat_public[1]);
    assert_eq!(r1.ip(), topo.server.ip(), "relayed address is turnd's public address");
    assert_eq!(c1.create_permission(r2), None, "host 1 permits relay 2");
    assert_eq!(c2.create_permission(r1), None, "host 2 permits relay 1");

    c1.send_indication(r2, b"send 1->2");
    assert_eq!(c2.recv_data(), Some((None, Some(r1), b"send 1->2".to_vec())), "Data indication at host 2");
    c2.send_indication(r1, b"send 2->1");
    assert_eq!(c1.recv_data(), Some((None, Some(r2), b"send 2->1".to_vec())), "Data indication at host 1");

    assert_eq!(c1.channel_bind(0x4000, r2), None);
    assert_eq!(c2.channel_bind(0x4001, r1), None);
    for i in 0..5u8 {
        c1.send_channel_data(0x4000, &[b'a', i]);
        assert_eq!(c2.recv_data(), Some((Some(0x4001), None, vec![b'a', i])), "ChannelData at host 2");
        c2.send_channel_data(0x4001, &[b'b', i]);
        assert_eq!(c1.recv_data(), Some((Some(0x4000), None, vec![b'b', i])), "ChannelData at host 1");
    }

    // 4. Host 2 without an allocation, sending from behind its NAT straight to relay 1
    //    (a srflx-to-relay path): host 1 permits NAT 2's public address.
    let direct = topo.h[1].enter(|| UdpSocket::bind("0.0.0.0:0")).expect("bind on host 2");
    let nat2: SocketAddr = format!("{}:1", topo.nat_public[1]).parse().expect("addr");
    assert_eq!(c1.create_permission(nat2), None, "host 1 permits NAT 2");
    direct.send_to(b"srflx 2->1", r1).expect("send to relay 1");
    let (channel, from, data) = c1.recv_data().expect("data from host 2's srflx address");
    assert_eq!((channel, data.as_slice()), (None, &b"srflx 2->1"[..]));
    let from = from.expect("a Data indication names the peer");
    assert_eq!(from.ip().to_string(), topo.nat_public[1], "the peer is NAT 2's public address");
    c1.send_indication(from, b"reply 1->2");
    let back = received_within(&direct, Duration::from_secs(2));
    assert!(back.iter().any(|(src, d)| *src == r1 && d == b"reply 1->2"), "reply through NAT 2: {back:?}");
    assert!(topo.turnd.logs().contains("listening on udp"), "{}", topo.turnd.logs());
}

#[test]
fn probe_from_behind_a_nat_sees_the_public_address_and_relays() {
    if !ready() {
        return;
    }
    let topo = Topology::new("p");
    let out = topo.h[0].enter(|| {
        run_with_timeout(
            std::process::Command::new(turnd_binary()).args([
                "probe",
                &format!("turn:{}", topo.server),
                "--user",
                USER,
                "--password",
                PASSWORD,
            ]),
            Duration::from_secs(60),
        )
    });
    assert!(out.success(), "probe from behind NAT 1 failed:\n{out}");
    assert!(out.stdout.contains(&format!("mapped address {}:", topo.nat_public[0])), "{out}");
    assert!(out.stdout.contains(&format!("(behind NAT: local address {})", topo.host_private[0])), "{out}");
    // --random-fully gives the probe's peer socket another port towards the relay.
    assert!(out.stdout.contains("WARN") && out.stdout.contains("symmetric"), "{out}");
    assert!(out.stdout.contains("data relayed both ways"), "{out}");
}

#[test]
fn chromium_behind_each_nat_connects_relay_to_relay() {
    if !ready() {
        return;
    }
    if let Some(what) = browser::missing() {
        if !need(false, &what) {
            return;
        }
    }
    let topo = Topology::new("b");
    let homes = [TempDir::new("turnd-chromium-h1"), TempDir::new("turnd-chromium-h2")];
    let mut b1 = topo.h[0].enter(|| Browser::launch("behind-nat-1", homes[0].path(), &[]));
    let mut b2 = topo.h[1].enter(|| Browser::launch("behind-nat-2", homes[1].path(), &[]));
    let ice_servers = json!([{ "urls": [format!("turn:{}", topo.server)], "username": USER, "credential": PASSWORD }]);

    // Signalling through the test: offer, answer, accept (non-trickle: the SDP
    // carries the relay candidates gathered through each NAT).
    let offer = b1.call("offer", json!({ "iceServers": ice_servers }));
    assert_eq!(offer["ok"], true, "offer: {offer:#}");
    assert!(offer["relayCandidates"].as_u64() >= Some(1), "no relay candidate behind NAT 1: {offer:#}");
    let answer = b2.call("answer", json!({ "iceServers": ice_servers, "sdp": offer["sdp"] }));
    assert_eq!(answer["ok"], true, "answer: {answer:#}");
    assert!(answer["relayCandidates"].as_u64() >= Some(1), "no relay candidate behind NAT 2: {answer:#}");
    let accepted = b1.call("accept", json!({ "sdp": answer["sdp"] }));
    assert_eq!(accepted["ok"], true, "{accepted:#}");

    // h2 answers once h1's first message is in: see `exchange` in webrtc.html for the
    // messages an answerer sending at once was seen to lose inside the browsers.
    b1.start_call("exchange", json!({ "label": "from h1" }));
    b2.start_call("exchange", json!({ "label": "from h2", "sendFirst": false }));
    let r1 = b1.finish_call(browser::CALL_TIMEOUT);
    let r2 = b2.finish_call(browser::CALL_TIMEOUT);
    for (name, r, want) in [("h1", &r1, "from h2"), ("h2", &r2, "from h1")] {
        assert_eq!(
            r["ok"],
            true,
            "{name}: {r:#}\n---- h1 ----\n{r1:#}\n---- h2 ----\n{r2:#}\n---- turnd ----\n{}",
            topo.turnd.logs()
        );
        let got: Vec<String> = r["received"].as_array().into_iter().flatten().map(|m| m.to_string()).collect();
        assert_eq!(got.len(), 5, "{name} received {got:?}");
        assert!(got.iter().all(|m| m.contains(want)), "{name} received {got:?}");
        for end in ["local", "remote"] {
            assert_eq!(r["pair"][end]["type"], "relay", "{name}'s {end} candidate: {r:#}");
            assert_eq!(r["pair"][end]["address"], topo.server.ip().to_string(), "{name}: {r:#}");
        }
    }
}
