//! ALPN (RFC 7443) and one port for TURN and HTTPS, against the real binary over real
//! loopback sockets:
//!
//! - a plain `tls` listener negotiates `stun.turn` with `openssl s_client -alpn` and
//!   with rustls, serves a client offering no ALPN, and refuses one offering only `h2`
//!   with a no_application_protocol alert;
//! - a `tls` listener with `passthrough-to` in front of a real HTTPS server (Python's
//!   `http.server` in `ssl`, its own CA): curl fetches a page through turnd's port and
//!   verifies the backend's certificate, while TURN clients (rustls with and without
//!   ALPN, `openssl s_client`, coturn's `turnutils_uclient -S`) get turnd's certificate,
//!   allocate and relay on the same port;
//! - garbage, oversized and slow ClientHellos are refused in bounded time, an
//!   unreachable backend is counted, and passed-through connections count against the
//!   per-source cap;
//! - headless Chromium's `turns:` relays a data channel through the same shared port
//!   (in a network namespace, as tests/webrtc.rs runs it), while curl gets the backend.
// A test may unwrap (a panic is a failed test) and use unsafe for process plumbing
// (the common helpers send signals).
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

mod common;
mod netns;

use common::ca::TestCa;
use common::http::{connect_from, metric, scrape};
use common::turn_client::{self, StreamClient, TlsStream};
use common::*;
use netns::browser::{self, Browser};
use netns::Netns;
use serde_json::json;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The TURN server's names (its certificate's SANs).
const TURN_NAMES: [&str; 2] = ["127.0.0.1", "turn.test"];
/// The web app's name (the backend's certificate).
const WEB_NAME: &str = "www.test";
/// What the backend serves.
const PAGE: &str = "hello from the HTTPS backend behind turnd\n";

/// A Python HTTPS server on 127.0.0.1 serving [`PAGE`] as /index.html with its own
/// certificate; killed on drop.
struct HttpsBackend {
    child: Child,
    addr: SocketAddr,
    _dir: TempDir,
    ca: TestCa,
}

impl HttpsBackend {
    fn start() -> HttpsBackend {
        let ca = TestCa::new(&[WEB_NAME]);
        let dir = TempDir::new("turnd-https-backend");
        dir.write("index.html", PAGE);
        // ThreadingHTTPServer: a connection held open (the per-source test) does not
        // hold up the others; the handshake runs on accept, before a thread.
        let script = r#"
import http.server, ssl, sys, os
os.chdir(sys.argv[1])
class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass
httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[2], sys.argv[3])
context.set_alpn_protocols(["http/1.1"])
httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
print(httpd.server_address[1], flush=True)
httpd.serve_forever()
"#;
        let mut child = Command::new(python())
            .args(["-c", script])
            .arg(dir.path())
            .arg(&ca.cert)
            .arg(&ca.key)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the Python HTTPS backend");
        let stdout = child.stdout.take().expect("backend stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).expect("the backend printed no port");
        let port: u16 = line.trim().parse().unwrap_or_else(|_| panic!("backend said {line:?}"));
        HttpsBackend { child, addr: SocketAddr::from(([127, 0, 0, 1], port)), _dir: dir, ca }
    }
}

impl Drop for HttpsBackend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A turnd config: one `tls` listener on loopback (`listen_extra` added to its table),
/// `extra` appended, and turnd's certificate.
fn turnd_config(ca: &TestCa, listen_extra: &str, extra: &str) -> String {
    let base = config_with(&["tls"]);
    let base = base.replacen("address = \"127.0.0.1:0\"\n", &format!("address = \"127.0.0.1:0\"\n{listen_extra}\n"), 1);
    ca.add_to(&format!("{base}\n{extra}\n"))
}

/// A TLS connection from `source` offering `alpn`, naming `name` (an IP address sends
/// no SNI); any certificate accepted. The handshake's error, if any.
fn tls_client(addr: SocketAddr, source: IpAddr, name: &str, alpn: &[&str]) -> std::io::Result<TlsStream> {
    let tcp = connect_from(source, addr);
    let mut config = turn_client::any_certificate_config();
    config.alpn_protocols = alpn.iter().map(|id| id.as_bytes().to_vec()).collect();
    let name = rustls_pki_types::ServerName::try_from(name.to_owned()).unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// Allocates over `stream`, binds a channel to `peer` and sees a payload come back.
fn allocates_and_relays(stream: &mut TlsStream, peer: SocketAddr) {
    let mut client = StreamClient::new(USER, PASSWORD, REALM);
    let (relay, mapped) = client.allocate(stream).expect("allocation over TLS");
    println!("TURN over TLS: relay {relay}, mapped {mapped}");
    assert_eq!(client.channel_bind(stream, 0x4000, peer), None);
    stream.write_all(&[0x40, 0x00, 0x00, 0x05, b'h', b'e', b'l', b'l', b'o', 0, 0, 0]).unwrap();
    let mut frame = [0u8; 12];
    stream.read_exact(&mut frame).unwrap();
    assert_eq!(&frame[..9], &[0x40, 0x00, 0x00, 0x05, b'h', b'e', b'l', b'l', b'o']);
}

/// `openssl s_client` against `addr` with these extra arguments; its output.
fn s_client(addr: SocketAddr, args: &[&str]) -> CmdOutput {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &addr.to_string()]).args(args).stdin(Stdio::null());
    run_with_timeout(&mut cmd, Duration::from_secs(20))
}

/// The base64 body of a PEM certificate file, on one line: what `s_client` prints of
/// the certificate it was sent.
fn pem_body(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().filter(|l| !l.starts_with("-----")).collect()
}

fn s_client_certificate(out: &CmdOutput) -> String {
    let text = out.all();
    let start = text.find("-----BEGIN CERTIFICATE-----").unwrap_or_else(|| panic!("no certificate:\n{out}"));
    let end = text[start..].find("-----END CERTIFICATE-----").unwrap() + start;
    text[start..end].lines().filter(|l| !l.starts_with("-----")).collect()
}

/// A scraped metric, 0 when absent.
fn counter(turnd: &TurndProcess, series: &str) -> f64 {
    metric(&scrape(turnd.admin_addr()), series).unwrap_or(0.0)
}

#[test]
fn alpn_stun_turn_is_negotiated_and_other_protocols_are_refused() {
    if !need_tool("openssl", "openssl") {
        return;
    }
    let ca = TestCa::new(&TURN_NAMES);
    let turnd = TurndProcess::start(&turnd_config(&ca, "", ""), &[]);
    let addr = turnd.addr("tls");
    let peer = UdpEchoPeer::start();

    let out = s_client(addr, &["-alpn", "stun.turn", "-servername", "turn.test"]);
    println!("openssl s_client -alpn stun.turn: {}", out.all().lines().find(|l| l.contains("ALPN")).unwrap_or("?"));
    assert!(out.all().contains("ALPN protocol: stun.turn"), "{out}");
    let out = s_client(addr, &["-alpn", "stun.nat-discovery"]);
    assert!(out.all().contains("ALPN protocol: stun.nat-discovery"), "{out}");
    let out = s_client(addr, &[]);
    assert!(out.all().contains("No ALPN negotiated") && out.all().contains("Verify return code"), "{out}");
    // RFC 7301 §3.2: only other protocols offered: a no_application_protocol alert.
    let out = s_client(addr, &["-alpn", "h2,http/1.1"]);
    let alert = out.all().lines().find(|l| l.contains("alert")).unwrap_or("?").to_owned();
    println!("openssl s_client -alpn h2,http/1.1: {alert}");
    assert!(out.all().contains("no application protocol"), "{out}");

    // rustls offering stun.turn negotiates it and relays; offering none still works.
    let mut stream = tls_client(addr, "127.0.0.1".parse().unwrap(), "turn.test", &["stun.turn"]).unwrap();
    assert_eq!(stream.conn.alpn_protocol(), Some(&b"stun.turn"[..]));
    allocates_and_relays(&mut stream, peer.addr());
    let mut stream = turn_client::tls_connect(addr);
    assert_eq!(stream.conn.alpn_protocol(), None);
    allocates_and_relays(&mut stream, peer.addr());
    assert!(tls_client(addr, "127.0.0.1".parse().unwrap(), "turn.test", &["h2"]).is_err());
}

#[test]
fn one_port_serves_https_through_to_the_backend_and_turn() {
    if !need_tool("openssl", "openssl") || !need_tool("curl", "curl") {
        return;
    }
    let backend = HttpsBackend::start();
    let ca = TestCa::new(&TURN_NAMES);
    let listen = format!("passthrough-to = \"{}\"", backend.addr);
    let mut turnd = TurndProcess::start(&turnd_config(&ca, &listen, ""), &[]);
    let addr = turnd.addr("tls");
    let peer = UdpEchoPeer::start();
    let port = addr.port();

    // curl (ALPN h2, http/1.1; SNI www.test) gets the backend's page and certificate:
    // it verifies the chain with the backend's CA, which did not sign turnd's.
    let resolve = format!("{WEB_NAME}:{port}:127.0.0.1");
    let url = format!("https://{WEB_NAME}:{port}/index.html");
    let out = run_with_timeout(
        Command::new("curl").args(["-sS", "-v", "--cacert"]).arg(&backend.ca.ca).args(["--resolve", &resolve, &url]),
        Duration::from_secs(30),
    );
    for line in out
        .stderr
        .lines()
        .filter(|l| l.contains("ALPN") || l.contains("subjectAltName") || l.contains("SSL connection"))
    {
        println!("curl: {line}");
    }
    println!("curl body: {}", out.stdout.trim_end());
    assert!(out.success(), "curl through turnd's port failed:\n{out}");
    assert_eq!(out.stdout, PAGE, "{out}");
    assert!(out.stderr.contains("subjectAltName: host \"www.test\" matched"), "{out}");
    // Even under turnd's own name: ALPN h2/http1.1 says HTTPS (curl -k: the backend's
    // certificate is not valid for turn.test).
    let out = run_with_timeout(
        Command::new("curl")
            .args(["-sS", "-k", "--resolve", &format!("turn.test:{port}:127.0.0.1")])
            .arg(format!("https://turn.test:{port}/index.html")),
        Duration::from_secs(30),
    );
    assert!(out.success() && out.stdout == PAGE, "{out}");

    // openssl s_client: ALPN stun.turn is TURN whatever the name; no ALPN is TURN for
    // turnd's names and the backend's for others.
    let turnd_pem = pem_body(&ca.cert);
    let backend_pem = pem_body(&backend.ca.cert);
    let out = s_client(addr, &["-alpn", "stun.turn", "-servername", WEB_NAME]);
    assert!(out.all().contains("ALPN protocol: stun.turn"), "{out}");
    assert_eq!(s_client_certificate(&out), turnd_pem, "stun.turn got the backend:\n{out}");
    println!("openssl s_client -alpn stun.turn -servername www.test: turnd's certificate, ALPN protocol: stun.turn");
    let out = s_client(addr, &["-servername", "turn.test"]);
    assert_eq!(s_client_certificate(&out), turnd_pem, "no ALPN, SNI turn.test:\n{out}");
    let out = s_client(addr, &["-servername", WEB_NAME]);
    assert_eq!(s_client_certificate(&out), backend_pem, "no ALPN, SNI www.test:\n{out}");
    let out = s_client(addr, &["-alpn", "http/1.1", "-servername", "turn.test"]);
    assert_eq!(s_client_certificate(&out), backend_pem, "ALPN http/1.1:\n{out}");
    assert!(out.all().contains("ALPN protocol: http/1.1"), "{out}");

    // TURN clients on the same port allocate and relay: rustls without ALPN and SNI
    // (an IP address), rustls with stun.turn and the web app's name, and without ALPN
    // under turnd's name.
    let local: IpAddr = "127.0.0.1".parse().unwrap();
    let mut stream = turn_client::tls_connect(addr);
    assert!(turn_client::peer_certificate_text(&stream).contains("turn.test"));
    allocates_and_relays(&mut stream, peer.addr());
    let mut stream = tls_client(addr, local, WEB_NAME, &["stun.turn"]).unwrap();
    assert_eq!(stream.conn.alpn_protocol(), Some(&b"stun.turn"[..]));
    allocates_and_relays(&mut stream, peer.addr());
    let mut stream = tls_client(addr, local, "turn.test", &[]).unwrap();
    allocates_and_relays(&mut stream, peer.addr());
    drop(stream);

    // coturn's client over TLS (-S: no ALPN, no SNI) on the same port.
    if tool_on_path("turnutils_uclient") {
        let mut cmd = Command::new("turnutils_uclient");
        cmd.args(["-t", "-S", "-c", "-p", &port.to_string(), "-u", USER, "-w", PASSWORD, "-n", "10", "-l", "100"])
            .args(["-e", "127.0.0.1", "-r", &peer.addr().port().to_string(), "127.0.0.1"]);
        let out = run_with_timeout(&mut cmd, Duration::from_secs(60));
        let totals = out.all().lines().rfind(|l| l.contains("tot_send_msgs=")).unwrap_or("?").to_owned();
        println!("turnutils_uclient -t -S: {}", totals.trim());
        assert!(out.success() && out.all().contains("tls_connect: client session connected"), "{out}");
        assert!(totals.contains("tot_send_msgs=10") && totals.contains("tot_recv_msgs=10"), "{out}");
    } else {
        need_tool("turnutils_uclient", "coturn");
    }

    assert!(turnd.is_running());
    let passed = counter(&turnd, "turnd_tls_passthrough_total");
    println!("turnd_tls_passthrough_total {passed}");
    assert_eq!(passed, 4.0, "curl twice, s_client twice");
    assert!(turnd.logs().contains("passing the connection through"), "{}", turnd.logs());
}

#[test]
fn garbage_slow_and_unroutable_client_hellos_are_refused_in_bounded_time() {
    let backend = HttpsBackend::start();
    let ca = TestCa::new(&TURN_NAMES);
    // A second listener passes to a port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let listen = format!("passthrough-to = \"{}\"", backend.addr);
    let second = format!(
        "[[listen]]\ntransport = \"tls\"\naddress = \"127.0.0.1:0\"\npassthrough-to = \"{closed}\"\n\n\
         [tcp]\nfirst-message-timeout = \"2s\"\n"
    );
    let turnd = TurndProcess::start(&turnd_config(&ca, &listen, &second), &[]);
    let tls: Vec<SocketAddr> = turnd.listeners().iter().filter(|(t, _)| t == "tls").map(|(_, a)| *a).collect();
    assert_eq!(tls.len(), 2);
    let (addr, unreachable) = (tls[0], tls[1]);
    let refused = r#"turnd_tcp_connections_refused_total{reason="client_hello"}"#;

    /// How long until turnd closes a connection after `send`.
    fn closed_after(addr: SocketAddr, send: &[u8]) -> Duration {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let start = Instant::now();
        s.write_all(send).unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "turnd answered {:?}", &buf[..n]);
        start.elapsed()
    }
    // Not TLS: closed at once.
    let took = closed_after(addr, b"GET / HTTP/1.1\r\nHost: www.test\r\n\r\n");
    println!("plain HTTP on the TLS port: closed after {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    // A handshake record announcing a 64 KB ClientHello: closed at once, unread.
    let took = closed_after(addr, &[22, 3, 1, 0x40, 0, 1, 0, 0xff, 0xff]);
    println!("oversized ClientHello: closed after {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    // A slow client: half a record header, then nothing: cut at first-message-timeout.
    let took = closed_after(addr, &[22, 3]);
    println!("slow ClientHello: closed after {took:?}");
    assert!(took >= Duration::from_millis(1500) && took < Duration::from_secs(5), "{took:?}");
    // A STUN Binding request in the clear.
    let took = closed_after(addr, &[0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    assert!(took < Duration::from_secs(1), "{took:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while counter(&turnd, refused) < 4.0 {
        assert!(Instant::now() < deadline, "refusals not counted:\n{}", scrape(turnd.admin_addr()));
        std::thread::sleep(Duration::from_millis(100));
    }

    // The backend that is not there: the HTTPS client is closed, and it is counted.
    let local: IpAddr = "127.0.0.1".parse().unwrap();
    assert!(tls_client(unreachable, local, WEB_NAME, &["h2"]).is_err());
    let series = r#"turnd_tcp_connections_refused_total{reason="passthrough_backend"}"#;
    let deadline = Instant::now() + Duration::from_secs(5);
    while counter(&turnd, series) < 1.0 {
        assert!(Instant::now() < deadline, "unreachable backend not counted");
        std::thread::sleep(Duration::from_millis(100));
    }
    // TURN on that listener is unaffected.
    let peer = UdpEchoPeer::start();
    allocates_and_relays(&mut turn_client::tls_connect(unreachable), peer.addr());
    assert_eq!(counter(&turnd, "turnd_tls_passthrough_total"), 1.0);
}

#[test]
fn passed_through_connections_count_against_the_per_source_cap() {
    let backend = HttpsBackend::start();
    let ca = TestCa::new(&TURN_NAMES);
    let listen = format!("passthrough-to = \"{}\"", backend.addr);
    let tcp = "[tcp]\nmax-connections-per-source = 3\nmax-unauthenticated-per-source = 2\n";
    let turnd = TurndProcess::start(&turnd_config(&ca, &listen, tcp), &[]);
    let addr = turnd.addr("tls");
    // Another source than other tests' 127.0.0.1.
    let source: IpAddr = "127.0.0.7".parse().unwrap();
    // Three HTTPS connections held open through turnd: more than the two unauthenticated
    // places, since a passed-through connection leaves those once handed over.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = tls_client(addr, source, WEB_NAME, &["http/1.1"]).expect("an HTTPS connection through turnd");
        assert_eq!(stream.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
        assert!(turn_client::peer_certificate_text(&stream).contains(WEB_NAME));
        // Give turnd time to hand it over (leaving the unauthenticated count).
        stream.sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let mut byte = [0u8; 1];
        let _ = stream.read(&mut byte);
        held.push(stream);
    }
    // The fourth from that source is refused at accept.
    assert!(tls_client(addr, source, WEB_NAME, &["http/1.1"]).is_err(), "a fourth connection got through");
    let per_source = counter(&turnd, r#"turnd_tcp_connections_refused_total{reason="per_source"}"#);
    assert_eq!(per_source, 1.0);
    println!("fourth connection from 127.0.0.7 refused: per_source {per_source}");
    // The held connections still reach the backend.
    let stream = &mut held[0];
    stream.sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(b"GET /index.html HTTP/1.1\r\nHost: www.test\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    assert!(String::from_utf8_lossy(&response).ends_with(PAGE), "{}", String::from_utf8_lossy(&response));
    // Closing one lets another in.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    while tls_client(addr, source, WEB_NAME, &["http/1.1"]).is_err() {
        assert!(Instant::now() < deadline, "the source's places were not given back");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(counter(&turnd, "turnd_tls_passthrough_total"), 4.0, "refused connections are not passed through");
}

#[test]
fn chromium_turns_relays_through_a_port_shared_with_https() {
    if let Err(why) = netns::available() {
        if !need(false, &format!("network namespaces ({why})")) {
            return;
        }
    }
    if let Some(what) = browser::missing() {
        if !need(false, &what) {
            return;
        }
    }
    if !need_tool("certutil", "libnss3-tools") || !need_tool("openssl", "openssl") || !need_tool("curl", "curl") {
        return;
    }
    // Chromium gathers candidates only with a non-loopback interface: turnd, the
    // backend, curl and the browser all run in a namespace with a veth pair.
    let ns = Netns::new("pass");
    let octet = 64 + netns::subnet_tag();
    let server_ip = format!("100.{octet}.0.1");
    netns::veth_pair_inside(&ns, &format!("{server_ip}/24"), &format!("100.{octet}.0.2/24"));
    let backend = ns.enter(HttpsBackend::start);
    let pki = TestCa::new(&[&server_ip, "turn.test"]);
    let (min, max) = relay_port_range();
    let config = pki.add_to(&format!(
        "realm = \"{REALM}\"\n[[listen]]\ntransport = \"tls\"\naddress = \"{server_ip}:0\"\npassthrough-to = \"{}\"\n\
         [relay]\nport-min = {min}\nport-max = {max}\nallowed-peers = [\"100.{octet}.0.0/24\"]\n\
         [[auth.user]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\n",
        backend.addr
    ));
    let turnd = ns.enter(|| TurndProcess::start(&config, &[]));
    let port = turnd.addr("tls").port();

    // HTTPS through the port Chromium will use for turns:.
    let resolve = format!("{WEB_NAME}:{port}:{server_ip}");
    let url = format!("https://{WEB_NAME}:{port}/index.html");
    let out = ns.enter(|| {
        run_with_timeout(
            Command::new("curl").args(["-sS", "--cacert"]).arg(&backend.ca.ca).args(["--resolve", &resolve, &url]),
            Duration::from_secs(30),
        )
    });
    assert!(out.success() && out.stdout == PAGE, "curl in the namespace:\n{out}");

    let home = TempDir::new("turnd-chromium-home");
    browser::home_trusting(home.path(), &pki.ca);
    // turn.test resolves to turnd inside the browser, so its turns: names a server.
    let rules = format!("--host-resolver-rules=MAP turn.test {server_ip}");
    let mut browser = ns.enter(|| Browser::launch(ns.name(), home.path(), &[&rules]));
    for host in [server_ip.as_str(), "turn.test"] {
        let turns = format!("turns:{host}:{port}?transport=tcp");
        let ice = json!([{ "urls": [turns], "username": USER, "credential": PASSWORD }]);
        let r = browser.call("loopback", json!({ "iceServers": ice, "messages": 5 }));
        check_chromium_run(&turns, &r, &server_ip, &turnd);
    }
    // What Chromium's ClientHellos carried, as turnd logged them: to the IP address no
    // SNI, to turn.test that name (a TURN name: the certificate's), and never ALPN.
    let logs = turnd.logs();
    let seen: Vec<&str> = logs.lines().filter(|l| l.contains("ClientHello is TURN's")).collect();
    for line in &seen {
        println!("turnd: ClientHello{}", line.split("ClientHello").nth(1).unwrap_or(line));
    }
    assert!(seen.iter().any(|l| l.contains("sni=None alpn=None")), "{logs}");
    assert!(seen.iter().any(|l| l.contains("sni=Some(\"turn.test\") alpn=None")), "{logs}");
    // Only curl's connection went to the backend.
    assert_eq!(logs.matches("passing the connection through").count(), 1, "{logs}");
    drop(browser);
}

/// Checks a Chromium loopback run through turnd: 5 messages each way over a relay/relay
/// pair reached over TLS.
fn check_chromium_run(turns: &str, r: &serde_json::Value, server_ip: &str, turnd: &TurndProcess) {
    assert_eq!(r["ok"], true, "{turns}: {r:#}\n---- turnd ----\n{}", turnd.logs());
    let want = |label: &str| (0..5).map(|i| json!(format!("{label} {i}"))).collect::<Vec<_>>();
    assert_eq!(r["atA"].as_array(), Some(&want("b->a")), "{r:#}");
    assert_eq!(r["atB"].as_array(), Some(&want("a->b")), "{r:#}");
    for side in ["pairA", "pairB"] {
        for end in ["local", "remote"] {
            assert_eq!(r[side][end]["type"], "relay", "{r:#}");
            assert_eq!(r[side][end]["address"], server_ip, "{r:#}");
        }
        assert_eq!(r[side]["local"]["relayProtocol"], "tls", "{r:#}");
    }
    println!(
        "Chromium {turns} on the shared port: connected, 5 messages each way, pair {}:{} <-> {}:{} (relay/relay, tls)",
        r["pairA"]["local"]["address"],
        r["pairA"]["local"]["port"],
        r["pairA"]["remote"]["address"],
        r["pairA"]["remote"]["port"]
    );
}
