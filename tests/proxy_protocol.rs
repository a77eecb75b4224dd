//! PROXY protocol (v1 and v2) on TCP and TLS listeners, and `[clients] denied` on
//! TCP/TLS (issue 15, items 4 and 2), against the real binary: through a real HAProxy
//! (`mode tcp`, `send-proxy` and `send-proxy-v2`, TLS passthrough), and through headers
//! the test writes itself as a trusted proxy.
//!
//! Loopback only. 127.0.0.9 is the proxy (HAProxy's `source`, and the test when it
//! plays the proxy) and the only trusted one; 127.0.0.5 and .6 are clients;
//! 127.0.0.66 and 198.51.100.66 are denied.
// A test may unwrap (a panic is a failed test) and use unsafe for process plumbing
// (signals, namespaces); the server code denies both (Cargo.toml [lints]).
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::turn_client;

use common::*;
use socket2::{Domain, Socket, Type};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use stun_codec::rfc5389::attributes::XorMappedAddress;
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::{MessageClass, TransactionId};
use turn_client::StreamClient;
use turnd::stun::message::{self, Message, Protection};

const PROXY: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 9);
const CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);
const OTHER_CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);
const DENIED: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 66);
const DENIED_REMOTE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 66);
const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(3);
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/aioice_turn.py");

// ---- turnd ----

/// turnd with a PROXY protocol TCP and TLS listener, a direct TCP and TLS listener (in
/// that order), 127.0.0.9 trusted, two denied clients, and `tcp` added to `[tcp]`.
fn config(cert: &TestCert, tcp: &str) -> String {
    let (min, max) = relay_port_range();
    let mut s = format!("realm = \"{REALM}\"\n\n");
    for (transport, proxy) in [("tcp", true), ("tls", true), ("tcp", false), ("tls", false)] {
        s += &format!(
            "[[listen]]\ntransport = \"{transport}\"\naddress = \"127.0.0.1:0\"\nproxy-protocol = {proxy}\n\n"
        );
    }
    s += &format!(
        "[clients]\ntrusted-proxies = [\"{PROXY}/32\"]\ndenied = [\"{DENIED}/32\", \"{DENIED_REMOTE}/32\"]\n\n\
         [tcp]\nfirst-message-timeout = \"{}s\"\n{tcp}\n\n\
         [relay]\nport-min = {min}\nport-max = {max}\nallowed-peers = [\"127.0.0.0/8\"]\nallow-host-peers = true\n\n\
         [[auth.user]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\n",
        FIRST_MESSAGE_TIMEOUT.as_secs()
    );
    cert.add_to(&s)
}

/// The listeners of [`config`].
struct Listeners {
    proxy_tcp: SocketAddr,
    proxy_tls: SocketAddr,
    tcp: SocketAddr,
    tls: SocketAddr,
}

impl Listeners {
    /// turnd logs its listeners in the config's order.
    fn of(turnd: &TurndProcess) -> Listeners {
        let of = |transport: &str| -> Vec<SocketAddr> {
            turnd.listeners().iter().filter(|(t, _)| t == transport).map(|(_, a)| *a).collect()
        };
        let (tcp, tls) = (of("tcp"), of("tls"));
        assert_eq!((tcp.len(), tls.len()), (2, 2), "{:?}", turnd.listeners());
        let logs = turnd.logs();
        for proxied in [tcp[0], tls[0]] {
            assert!(logs.contains(&format!("{proxied} (PROXY protocol")), "listener {proxied} not logged as proxied");
        }
        Listeners { proxy_tcp: tcp[0], proxy_tls: tls[0], tcp: tcp[1], tls: tls[1] }
    }
}

fn start(tcp: &str) -> (TurndProcess, Listeners, TestCert) {
    let cert = TestCert::new();
    let turnd = TurndProcess::start(&config(&cert, tcp), &[]);
    let listeners = Listeners::of(&turnd);
    (turnd, listeners, cert)
}

/// Waits until turnd's logs contain `needle` (true at once when TURND_TEST_LOG sets
/// a level other than debug).
fn wait_for_log(turnd: &TurndProcess, needle: &str) -> bool {
    if std::env::var("TURND_TEST_LOG").is_ok_and(|level| level != "debug") {
        return true;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !turnd.logs().contains(needle) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

// ---- HAProxy ----

fn haproxy_binary() -> Option<&'static str> {
    ["/usr/sbin/haproxy", "/usr/local/sbin/haproxy"].into_iter().find(|p| std::path::Path::new(p).exists())
}

fn need_haproxy() -> bool {
    need(haproxy_binary().is_some() || tool_on_path("haproxy"), "`haproxy` (package haproxy)")
}

/// A running HAProxy, killed on drop. Its frontends listen on sockets the test binds
/// (ephemeral loopback ports) and hands over as inherited descriptors (`bind fd@N`),
/// so that they accept from the moment it starts and no port can be taken meanwhile.
struct Haproxy {
    child: Child,
    dir: TempDir,
}

impl Haproxy {
    /// One `mode tcp` frontend per backend `server` line; returns the frontends'
    /// addresses, in order.
    fn start(servers: &[String]) -> (Haproxy, Vec<SocketAddr>) {
        let dir = TempDir::new("turnd-haproxy");
        let frontends: Vec<TcpListener> =
            servers.iter().map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a frontend")).collect();
        let addresses: Vec<SocketAddr> = frontends.iter().map(|l| l.local_addr().expect("address")).collect();
        let fds: Vec<i32> = frontends.iter().map(|l| l.as_raw_fd()).collect();
        let mut cfg = String::from(
            "global\n    maxconn 512\n\n\
             defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n\n",
        );
        for (i, (server, fd)) in servers.iter().zip(&fds).enumerate() {
            cfg += &format!(
                "frontend fe{i}\n    bind fd@{fd}\n    default_backend be{i}\n\n\
                 backend be{i}\n    server turnd {server}\n\n"
            );
        }
        let file = dir.write("haproxy.cfg", &cfg);
        let log = std::fs::File::create(dir.path().join("haproxy.log")).expect("haproxy log file");
        let program = haproxy_binary().unwrap_or("haproxy");
        let mut command = Command::new(program);
        command
            .arg("-f")
            .arg(&file)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        let inherit = fds.clone();
        // SAFETY: fcntl(2) is async-signal-safe; only the child's copies of the
        // frontends' descriptors lose close-on-exec (other children never see them).
        unsafe {
            command.pre_exec(move || {
                for fd in &inherit {
                    if libc::fcntl(*fd, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("spawn haproxy");
        drop(frontends);
        let mut haproxy = Haproxy { child, dir };
        // A config HAProxy rejects makes it exit at once.
        std::thread::sleep(Duration::from_millis(300));
        assert!(matches!(haproxy.child.try_wait(), Ok(None)), "haproxy exited:\n{cfg}\n{}", haproxy.log());
        (haproxy, addresses)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- haproxy log ----\n{}---- end of haproxy log ----", self.log());
        }
    }
}

/// A `server` line to `to` with `option` (send-proxy or send-proxy-v2), from 127.0.0.9.
fn server(to: SocketAddr, option: &str) -> String {
    format!("{to} {option} source {PROXY}")
}

// ---- clients ----

/// A TCP connection to `server` from the loopback address `source`.
fn connect_from(source: Ipv4Addr, server: SocketAddr) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    socket.bind(&SocketAddr::V4(SocketAddrV4::new(source, 0)).into()).expect("bind a loopback source");
    socket.connect(&server.into()).expect("connect");
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream
}

fn binding_request(tid: u8) -> Vec<u8> {
    let m = Message::new(MessageClass::Request, BINDING, TransactionId::new([tid; 12]));
    message::encode(m, Protection { key: None, fingerprint: true }).unwrap()
}

/// Reads one STUN message, or `None` when the stream ends, fails or times out first.
fn try_read_stun(stream: &mut impl Read) -> Option<Message> {
    let mut head = [0u8; 20];
    stream.read_exact(&mut head).ok()?;
    let len = u16::from_be_bytes([head[2], head[3]]) as usize;
    let mut all = head.to_vec();
    all.resize(20 + len, 0);
    stream.read_exact(&mut all[20..]).ok()?;
    Some(message::decode(&all).ok()?.message)
}

/// A Binding over `stream`: the XOR-MAPPED-ADDRESS of its success, or `None` when
/// nothing answers (a refused connection is closed).
fn binding(stream: &mut (impl Read + Write), tid: u8) -> Option<SocketAddr> {
    stream.write_all(&binding_request(tid)).ok()?;
    stream.flush().ok()?;
    let answer = try_read_stun(stream)?;
    (answer.class() == MessageClass::SuccessResponse).then_some(())?;
    answer.get_attribute::<XorMappedAddress>().map(|a| a.address())
}

/// Whether the server closed `stream` (EOF or reset) within `within`, having sent
/// nothing at all.
fn closed_silently_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
    }
}

type TlsStream = turn_client::TlsStream;

/// A TLS handshake (any certificate accepted) over `tcp`, which may already carry a
/// PROXY protocol header.
fn tls_over(tcp: TcpStream) -> std::io::Result<TlsStream> {
    turn_client::tls_over(tcp, IpAddr::from([127, 0, 0, 1]))
}

/// A v1 header naming `source` (to 127.0.0.1:3478).
fn v1(source: SocketAddr) -> Vec<u8> {
    let (family, destination) = match source {
        SocketAddr::V4(_) => ("TCP4", "127.0.0.1"),
        SocketAddr::V6(_) => ("TCP6", "::1"),
    };
    format!("PROXY {family} {} {destination} {} 3478\r\n", source.ip(), source.port()).into_bytes()
}

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// A v2 header: `command` (0 LOCAL, 1 PROXY), `family` byte, then `payload`.
fn v2_raw(command: u8, family: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x20 | command);
    out.push(family);
    out.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A v2 PROXY header naming `source` over TCP, with `tlvs` after the addresses.
fn v2(source: SocketAddr, tlvs: &[u8]) -> Vec<u8> {
    let (family, mut block) = match source.ip() {
        IpAddr::V4(ip) => (0x11, [ip.octets().to_vec(), vec![127, 0, 0, 1]].concat()),
        IpAddr::V6(ip) => (0x21, [ip.octets().to_vec(), Ipv6Addr::LOCALHOST.octets().to_vec()].concat()),
    };
    block.extend_from_slice(&source.port().to_be_bytes());
    block.extend_from_slice(&3478u16.to_be_bytes());
    block.extend_from_slice(tlvs);
    v2_raw(1, family, &block)
}

/// A connection from the trusted proxy address to `server` that starts with `header`.
fn via_header(server: SocketAddr, header: &[u8]) -> TcpStream {
    let mut stream = connect_from(PROXY, server);
    stream.write_all(header).expect("write the header");
    stream
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

// ---- (a) through HAProxy ----

#[test]
fn haproxy_v1_v2_and_tls_passthrough_carry_the_real_client() {
    if !need_haproxy() || !need_tool("openssl", "openssl") {
        return;
    }
    let (turnd, l, _cert) = start("");
    let (_haproxy, fronts) = Haproxy::start(&[
        server(l.proxy_tcp, "send-proxy"),
        server(l.proxy_tcp, "send-proxy-v2"),
        server(l.proxy_tls, "send-proxy-v2"),
    ]);
    for (front, what) in [(fronts[0], "v1"), (fronts[1], "v2")] {
        let mut stream = connect_from(CLIENT, front);
        let me = stream.local_addr().unwrap();
        assert_eq!(binding(&mut stream, 1), Some(me), "XOR-MAPPED-ADDRESS through HAProxy {what}");
        let (relayed, mapped) =
            StreamClient::new(USER, PASSWORD, REALM).allocate(&mut stream).expect("an Allocate through HAProxy");
        assert_eq!(mapped, me, "Allocate's XOR-MAPPED-ADDRESS through HAProxy {what}");
        assert_eq!(relayed.ip(), IpAddr::from([127, 0, 0, 1]));
        assert!(wait_for_log(&turnd, "proxy=127.0.0.9"), "the proxy's address is logged");
        assert!(wait_for_log(&turnd, &format!("client={me}")), "the real client is logged");
    }
    // TLS passthrough: the header comes before the ClientHello.
    let tcp = connect_from(CLIENT, fronts[2]);
    let me = tcp.local_addr().unwrap();
    let mut tls = tls_over(tcp).expect("TLS through HAProxy");
    assert_eq!(binding(&mut tls, 2), Some(me), "XOR-MAPPED-ADDRESS over TLS through HAProxy");
    let (_, mapped) = StreamClient::new(USER, PASSWORD, REALM).allocate(&mut tls).expect("an Allocate over TLS");
    assert_eq!(mapped, me);
    // The proxy is never taken for the client.
    assert!(!turnd.logs().contains("client=127.0.0.9"), "{}", turnd.logs());
}

fn aioice(server: SocketAddr, transport: &str, peer: SocketAddr, ca: Option<&str>) -> CmdOutput {
    let mut command = Command::new(python());
    command.arg(SCRIPT).args(["--server", &server.to_string(), "--peer", &peer.to_string()]).args([
        "--user",
        USER,
        "--password",
        PASSWORD,
        "--transport",
        transport,
        "--count",
        "5",
    ]);
    if let Some(ca) = ca {
        command.args(["--ca", ca]);
    }
    run_with_timeout(&mut command, Duration::from_secs(60))
}

#[test]
fn aioice_relays_through_haproxy_over_tcp_and_tls() {
    if !need_haproxy() || !need_tool("openssl", "openssl") {
        return;
    }
    if !need(python_module_available("aioice"), "Python module `aioice` (pip install aioice)") {
        return;
    }
    let (mut turnd, l, cert) = start("");
    let (_haproxy, fronts) = Haproxy::start(&[server(l.proxy_tcp, "send-proxy"), server(l.proxy_tls, "send-proxy-v2")]);
    let ca = cert.cert.to_str().expect("utf-8 temp path").to_string();
    for (front, transport, ca) in [(fronts[0], "tcp", None), (fronts[1], "tls", Some(ca.as_str()))] {
        let peer = UdpEchoPeer::start();
        let out = aioice(front, transport, peer.addr(), ca);
        assert!(turnd.is_running(), "turnd exited during the aioice run:\n{out}");
        assert!(out.success(), "aioice over {transport} through HAProxy failed:\n{out}");
        assert!(out.stdout.contains("ECHOED 5/5") && out.stdout.contains("DELETED"), "{out}");
        assert_eq!(peer.count(), 5, "datagrams the echo peer received");
        // aioice connects from 127.0.0.1 and HAProxy from 127.0.0.9: turnd mapped the former.
        assert!(out.stdout.contains("mapped=127.0.0.1:"), "the real client is mapped:\n{out}");
    }
    assert!(!turnd.logs().contains("client=127.0.0.9"), "{}", turnd.logs());
}

// ---- (b) who may send a header, and what a header may be ----

#[test]
fn only_trusted_proxies_may_connect_and_only_with_a_header() {
    if !need_tool("openssl", "openssl") {
        return;
    }
    let (turnd, l, _cert) = start("");
    // A valid header from a source that is no trusted proxy: closed at once.
    let named = addr("198.51.100.7:40000");
    for server in [l.proxy_tcp, l.proxy_tls] {
        let mut untrusted = connect_from(CLIENT, server);
        untrusted.write_all(&v1(named)).unwrap();
        assert!(closed_silently_within(&mut untrusted, Duration::from_secs(2)), "an untrusted header is refused");
    }
    let mut untrusted = connect_from(CLIENT, l.proxy_tcp);
    assert_eq!(binding(&mut untrusted, 1), None, "no STUN from an untrusted source either");
    assert!(wait_for_log(&turnd, "not from a trusted proxy"));
    // The trusted proxy without a header: closed at its first byte.
    let mut plain = connect_from(PROXY, l.proxy_tcp);
    assert_eq!(binding(&mut plain, 2), None, "STUN without a header is refused");
    assert!(tls_over(connect_from(PROXY, l.proxy_tls)).is_err(), "TLS without a header is refused");
    assert!(wait_for_log(&turnd, "no PROXY protocol header"));
    // The same header from the trusted proxy works, and direct listeners are unaffected.
    let mut trusted = via_header(l.proxy_tcp, &v1(named));
    assert_eq!(binding(&mut trusted, 3), Some(named));
    let mut direct = connect_from(CLIENT, l.tcp);
    assert_eq!(binding(&mut direct, 4), Some(direct.local_addr().unwrap()));
}

#[test]
fn bad_headers_close_and_good_ones_of_every_kind_are_taken() {
    if !need_tool("openssl", "openssl") {
        return;
    }
    let (turnd, l, _cert) = start("");
    let ipv4 = [198, 51, 100, 7, 127, 0, 0, 1, 0x9c, 0x40, 0x0d, 0x96];
    let mut too_long = v2_raw(1, 0x11, &ipv4);
    too_long[14..16].copy_from_slice(&5000u16.to_be_bytes());
    let mut v1_too_long = b"PROXY TCP4 ".to_vec();
    v1_too_long.resize(120, b'1');
    let bad: [(&str, Vec<u8>); 9] = [
        ("v1 garbage", b"PROXY TCP4 198.51.100.7 bogus\r\n".to_vec()),
        ("v1 UNKNOWN", b"PROXY UNKNOWN\r\n".to_vec()),
        ("v1 without CRLF within 107 bytes", v1_too_long),
        ("v1 port 0", b"PROXY TCP4 198.51.100.7 127.0.0.1 0 3478\r\n".to_vec()),
        ("v2 too long", too_long),
        ("v2 AF_UNIX", v2_raw(1, 0x31, &[0; 216])),
        ("v2 AF_UNSPEC", v2_raw(1, 0x00, &[])),
        ("v2 UDP", v2_raw(1, 0x12, &ipv4)),
        ("v2 bad version", {
            let mut h = v2_raw(1, 0x11, &ipv4);
            h[12] = 0x31;
            h
        }),
    ];
    for (what, header) in &bad {
        for server in [l.proxy_tcp, l.proxy_tls] {
            let mut stream = via_header(server, header);
            // Whatever follows is never answered.
            let _ = stream.write_all(&binding_request(9));
            assert!(closed_silently_within(&mut stream, Duration::from_secs(2)), "{what} to {server} is closed");
        }
    }
    // Truncated: closed at first-message-timeout.
    let started = Instant::now();
    let mut truncated = via_header(l.proxy_tcp, b"PROXY TCP4 198.51.100.7 127.0");
    assert!(closed_silently_within(&mut truncated, FIRST_MESSAGE_TIMEOUT * 2), "a truncated header is cut");
    assert!(started.elapsed() >= FIRST_MESSAGE_TIMEOUT - Duration::from_millis(500), "{:?}", started.elapsed());
    assert!(wait_for_log(&turnd, "no whole PROXY protocol header within first-message-timeout"));

    // v2 with TLVs (ALPN, a NOOP) and an IPv6 client over IPv4.
    let tlvs = [0x01, 0x00, 0x02, b'h', b'2', 0x04, 0x00, 0x00];
    let named = addr("198.51.100.7:40001");
    assert_eq!(binding(&mut via_header(l.proxy_tcp, &v2(named, &tlvs)), 1), Some(named));
    let named6 = addr("[2001:db8::7]:40002");
    assert_eq!(binding(&mut via_header(l.proxy_tcp, &v2(named6, &[])), 2), Some(named6));
    let named6 = addr("[2001:db8::7]:40006");
    assert_eq!(binding(&mut via_header(l.proxy_tcp, &v1(named6)), 3), Some(named6));
    // v2 LOCAL (a health check): the proxy's own address stands.
    let mut local = via_header(l.proxy_tcp, &v2_raw(0, 0x00, &[]));
    assert_eq!(binding(&mut local, 4), Some(local.local_addr().unwrap()));
    // Over TLS, with the header in front of the ClientHello.
    let named = addr("198.51.100.7:40003");
    let mut tls = tls_over(via_header(l.proxy_tls, &v2(named, &tlvs))).expect("TLS after a v2 header");
    assert_eq!(binding(&mut tls, 5), Some(named));
    let named = addr("198.51.100.7:40004");
    let mut tls = tls_over(via_header(l.proxy_tls, &v1(named))).expect("TLS after a v1 header");
    assert_eq!(binding(&mut tls, 6), Some(named));
    // Two connections naming one client address: the second is refused while the
    // first is open (turnd keys connections by their 5-tuple).
    let twice = addr("198.51.100.7:40005");
    let mut first = via_header(l.proxy_tcp, &v1(twice));
    assert_eq!(binding(&mut first, 7), Some(twice));
    let mut second = via_header(l.proxy_tcp, &v1(twice));
    assert_eq!(binding(&mut second, 8), None, "a second connection with the same 5-tuple");
    assert_eq!(binding(&mut first, 9), Some(twice), "the first is unaffected");
}

// ---- (c) denied clients ----

#[test]
fn denied_clients_get_nothing_over_tcp_or_tls_direct_or_proxied() {
    if !need_tool("openssl", "openssl") {
        return;
    }
    let (turnd, l, _cert) = start("");
    // Direct: closed at accept, before any byte (so before a TLS handshake).
    let mut tcp = connect_from(DENIED, l.tcp);
    assert!(closed_silently_within(&mut tcp, Duration::from_secs(2)), "a denied TCP client is closed at once");
    let mut tcp = connect_from(DENIED, l.tcp);
    assert_eq!(binding(&mut tcp, 1), None);
    assert!(tls_over(connect_from(DENIED, l.tls)).is_err(), "a denied TLS client gets no handshake");
    assert!(wait_for_log(&turnd, "client=127.0.0.66"), "the refusal is logged");
    // Named by a trusted proxy's header: closed once the header is read.
    let denied = SocketAddr::from((DENIED_REMOTE, 40000));
    assert_eq!(binding(&mut via_header(l.proxy_tcp, &v1(denied)), 2), None);
    assert_eq!(binding(&mut via_header(l.proxy_tcp, &v2(denied, &[])), 3), None);
    assert!(tls_over(via_header(l.proxy_tls, &v2(denied, &[]))).is_err(), "no handshake for a denied client");
    let mut after_header = via_header(l.proxy_tls, &v1(denied));
    assert!(closed_silently_within(&mut after_header, Duration::from_secs(2)));
    assert!(wait_for_log(&turnd, "client=198.51.100.66:40000"));
    // Others still are served.
    let mut allowed = connect_from(OTHER_CLIENT, l.tcp);
    assert_eq!(binding(&mut allowed, 4), Some(allowed.local_addr().unwrap()));
    assert!(tls_over(connect_from(OTHER_CLIENT, l.tls)).is_ok());
    let named = addr("198.51.100.67:40000");
    assert_eq!(binding(&mut via_header(l.proxy_tcp, &v1(named)), 5), Some(named));

    // Through HAProxy, from a denied client.
    if !need_haproxy() {
        return;
    }
    let (_haproxy, fronts) = Haproxy::start(&[server(l.proxy_tcp, "send-proxy"), server(l.proxy_tls, "send-proxy-v2")]);
    let mut tcp = connect_from(DENIED, fronts[0]);
    assert_eq!(binding(&mut tcp, 6), None, "a denied client through HAProxy");
    assert!(tls_over(connect_from(DENIED, fronts[1])).is_err(), "a denied client through HAProxy's TLS passthrough");
    // While the client next to it is served through the same frontends.
    let mut tcp = connect_from(OTHER_CLIENT, fronts[0]);
    assert_eq!(binding(&mut tcp, 7), Some(tcp.local_addr().unwrap()));
}

// ---- (d) per-source caps ----

const CAPS: &str = "max-connections-per-source = 2\nmax-unauthenticated-per-source = 2";

#[test]
fn per_source_caps_count_the_client_a_header_names_not_the_proxy() {
    if !need_tool("openssl", "openssl") {
        return;
    }
    let (turnd, l, _cert) = start(CAPS);
    let client = |port: u16| SocketAddr::from(([198, 51, 100, 7], port));
    // Two connections of one client, over TCP and TLS (the caps count both).
    let mut held_tcp = via_header(l.proxy_tcp, &v1(client(1001)));
    assert_eq!(binding(&mut held_tcp, 1), Some(client(1001)));
    let mut held_tls = tls_over(via_header(l.proxy_tls, &v2(client(1002), &[]))).expect("TLS");
    assert_eq!(binding(&mut held_tls, 2), Some(client(1002)));
    // A third from that client is refused...
    assert_eq!(binding(&mut via_header(l.proxy_tcp, &v1(client(1003))), 3), None);
    assert!(wait_for_log(&turnd, "client=198.51.100.7:1003"), "the refusal names the client");
    assert!(wait_for_log(&turnd, "connection refused: source at max-"), "refused by a per-source cap");
    // ...while other clients behind the same proxy (which has more than two
    // connections open by now) are served.
    let others: Vec<TcpStream> = (0..3u8)
        .map(|i| {
            let named = SocketAddr::from(([198, 51, 100, 10 + i], 2000));
            let mut stream = via_header(l.proxy_tcp, &v1(named));
            assert_eq!(binding(&mut stream, 10 + i), Some(named), "another client behind the proxy");
            stream
        })
        .collect();
    // Closing one of the client's connections frees its slot.
    drop(held_tcp);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if binding(&mut via_header(l.proxy_tcp, &v1(client(1004))), 4) == Some(client(1004)) {
            break;
        }
        assert!(Instant::now() < deadline, "the slot was not given back");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(others);

    // Through HAProxy: two connections from 127.0.0.5 are served, a third is refused,
    // and 127.0.0.6 is served, though every connection comes from 127.0.0.9.
    if !need_haproxy() {
        return;
    }
    let (_haproxy, fronts) = Haproxy::start(&[server(l.proxy_tcp, "send-proxy-v2")]);
    let mut held: Vec<TcpStream> = Vec::new();
    for tid in 20..22 {
        let mut stream = connect_from(CLIENT, fronts[0]);
        assert_eq!(binding(&mut stream, tid), Some(stream.local_addr().unwrap()));
        held.push(stream);
    }
    assert_eq!(binding(&mut connect_from(CLIENT, fronts[0]), 22), None, "a third from 127.0.0.5 is refused");
    let mut other = connect_from(OTHER_CLIENT, fronts[0]);
    assert_eq!(binding(&mut other, 23), Some(other.local_addr().unwrap()), "127.0.0.6 is served");
}
