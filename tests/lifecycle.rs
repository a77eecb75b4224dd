//! The process's life against the real binary: SIGHUP reload under a live allocation,
//! a rejected reload, SIGTERM drain (300 Try Alternate while old allocations relay),
//! and systemd notifications (READY, STATUS/WATCHDOG, RELOADING, STOPPING).
// A test may unwrap (a panic is a failed test) and use unsafe for process plumbing
// (signals, namespaces); the server code denies both (Cargo.toml [lints]).
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::turn_client;

use common::*;
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use turn_client::{error_code, TurnClient};

fn config(users: &[(&str, &str)], extra: &str) -> String {
    let (min, max) = relay_port_range();
    let mut s = format!(
        "realm = \"{REALM}\"\n{extra}\n[[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:0\"\n\
         [admin]\nenabled = false\n\
         [relay]\nport-min = {min}\nport-max = {max}\nallowed-peers = [\"127.0.0.0/8\"]\nallow-host-peers = true\n"
    );
    for (name, password) in users {
        s += &format!("[[auth.user]]\nname = \"{name}\"\npassword = \"{password}\"\n");
    }
    s
}

/// The config file the harness wrote (the `-c` argument of the child).
fn config_path(turnd: &TurndProcess) -> std::path::PathBuf {
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", turnd.pid())).expect("cmdline");
    let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    let i = args.iter().position(|a| a == "-c").expect("-c");
    args[i + 1].clone().into()
}

fn signal(turnd: &TurndProcess, name: &str) {
    let ok = Command::new("kill").arg(format!("-{name}")).arg(turnd.pid().to_string()).status();
    assert!(ok.is_ok_and(|s| s.success()), "kill -{name}");
}

fn wait_for_log(turnd: &TurndProcess, needle: &str, nth: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while turnd.logs().matches(needle).count() < nth {
        assert!(Instant::now() < deadline, "no {needle:?} in the logs:\n{}", turnd.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn relaying_client(server: SocketAddr, peer: SocketAddr) -> TurnClient {
    let mut c = TurnClient::new("127.0.0.1:0", server, USER, PASSWORD, REALM);
    c.allocate(vec![]).expect("allocation");
    assert_eq!(c.channel_bind(0x4000, peer), None);
    assert_relays(&c, b"before");
    c
}

fn assert_relays(c: &TurnClient, payload: &[u8]) {
    c.send_channel_data(0x4000, payload);
    let (_, _, echoed) = c.recv_data().expect("relayed");
    assert_eq!(echoed, payload);
}

#[test]
fn sighup_reload_changes_users_while_the_allocation_keeps_relaying() {
    let turnd = TurndProcess::start(&config(&[(USER, PASSWORD)], ""), &[]);
    let peer = UdpEchoPeer::start();
    let old = relaying_client(turnd.udp_addr(), peer.addr());

    // alice goes, bob comes.
    std::fs::write(config_path(&turnd), config(&[("bob", "builder")], "")).unwrap();
    signal(&turnd, "HUP");
    wait_for_log(&turnd, "configuration reloaded", 1);

    assert_relays(&old, b"after reload");
    let mut bob = TurnClient::new("127.0.0.1:0", turnd.udp_addr(), "bob", "builder", REALM);
    assert!(bob.allocate(vec![]).is_ok(), "a user added by the reload can allocate");
    let mut alice = TurnClient::new("127.0.0.1:0", turnd.udp_addr(), USER, PASSWORD, REALM);
    assert_eq!(alice.allocate(vec![]), Err(401), "a removed user cannot allocate anew");
}

#[test]
fn an_invalid_reload_is_rejected_and_the_old_config_stays() {
    let turnd = TurndProcess::start(&config(&[(USER, PASSWORD)], ""), &[]);
    let path = config_path(&turnd);
    std::fs::write(&path, "realm = \"x\"\n[relay]\nport-min = 0\nbogus-key = 1\n").unwrap();
    signal(&turnd, "HUP");
    wait_for_log(&turnd, "reload rejected", 1);
    assert!(turnd.logs().contains(&format!("{}:4", path.display())), "names the file and line:\n{}", turnd.logs());
    let mut alice = TurnClient::new("127.0.0.1:0", turnd.udp_addr(), USER, PASSWORD, REALM);
    assert!(alice.allocate(vec![]).is_ok(), "the old users still work");

    // A listener change is reported as needing a restart.
    let moved = config(&[(USER, PASSWORD)], "").replace("127.0.0.1:0", "127.0.0.1:1");
    std::fs::write(&path, moved).unwrap();
    signal(&turnd, "HUP");
    wait_for_log(&turnd, "need a restart", 1);
}

#[test]
fn sigterm_drains_with_try_alternate_while_old_allocations_relay() {
    let extra = "drain-time = \"20s\"\nalternate-server = \"127.0.0.1:3479\"";
    let mut turnd = TurndProcess::start(&config(&[(USER, PASSWORD)], extra), &[]);
    let peer = UdpEchoPeer::start();
    let old = relaying_client(turnd.udp_addr(), peer.addr());
    signal(&turnd, "TERM");
    wait_for_log(&turnd, "draining", 1);

    let mut newcomer = TurnClient::new("127.0.0.1:0", turnd.udp_addr(), USER, PASSWORD, REALM);
    let response = newcomer.request(
        stun_codec::rfc5766::methods::ALLOCATE,
        vec![stun_codec::rfc5766::attributes::RequestedTransport::new(17).into()],
    );
    assert_eq!(error_code(&response), Some(300));
    let alternate = response.get_attribute::<stun_codec::rfc5389::attributes::AlternateServer>().unwrap();
    assert_eq!(alternate.address(), "127.0.0.1:3479".parse::<SocketAddr>().unwrap());
    for i in 0..5 {
        assert_relays(&old, format!("draining {i}").as_bytes());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(turnd.is_running(), "still draining");
    // A second SIGTERM ends the drain at once, with a clean exit.
    let status = turnd.terminate(Duration::from_secs(5)).expect("exits");
    assert!(status.success(), "{status:?}");
}

#[test]
fn sigterm_without_allocations_exits_promptly_and_without_drain_time_at_once() {
    let mut turnd = TurndProcess::start(&config(&[(USER, PASSWORD)], "drain-time = \"60s\""), &[]);
    let started = Instant::now();
    let status = turnd.terminate(Duration::from_secs(10)).expect("exits");
    assert!(status.success());
    assert!(started.elapsed() < Duration::from_secs(5), "nothing to drain: {:?}", started.elapsed());

    let mut turnd = TurndProcess::start(&config(&[(USER, PASSWORD)], "drain-time = \"0s\""), &[]);
    let peer = UdpEchoPeer::start();
    let _client = relaying_client(turnd.udp_addr(), peer.addr());
    let status = turnd.terminate(Duration::from_secs(3)).expect("exits at once");
    assert!(status.success());
}

#[test]
fn systemd_hears_ready_status_watchdog_reloading_and_stopping() {
    let dir = TempDir::new("turnd-notify");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let config_file = dir.write("turnd.toml", &config(&[(USER, PASSWORD)], "drain-time = \"0s\""));
    let mut child = Command::new(turnd_binary())
        .args(["serve", "-c"])
        .arg(&config_file)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "2000000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = String::new();
    let read_until = |needle: &str, seen: &mut String| {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 4096];
        while !seen.contains(needle) {
            assert!(Instant::now() < deadline, "no {needle} from turnd; got:\n{seen}");
            if let Ok(n) = socket.recv(&mut buf) {
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                seen.push('\n');
            }
        }
    };
    read_until("READY=1", &mut seen);
    read_until("WATCHDOG=1", &mut seen);
    read_until("STATUS=0 allocations", &mut seen);
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    read_until("RELOADING=1", &mut seen);
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    read_until("STOPPING=1", &mut seen);
    let status = child.wait().unwrap();
    assert!(status.success());
}

#[test]
fn a_reload_that_denies_a_client_ends_its_allocation_and_turns_away_its_new_connections() {
    use std::io::{Read, Write};
    let tcp = "[[listen]]\ntransport = \"tcp\"\naddress = \"127.0.0.1:0\"\n";
    let turnd = TurndProcess::start(&format!("{}{tcp}", config(&[(USER, PASSWORD)], "")), &[]);
    let peer = UdpEchoPeer::start();
    let denied = TurnClient::new("127.0.0.66:0", turnd.udp_addr(), USER, PASSWORD, REALM);
    let mut denied = denied;
    denied.allocate(vec![]).expect("allocation before the reload");
    assert_eq!(denied.channel_bind(0x4000, peer.addr()), None);
    assert_relays(&denied, b"before");
    let connect = || {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.bind(&std::net::SocketAddr::from(([127, 0, 0, 66], 0)).into()).unwrap();
        socket.connect(&turnd.tcp_addr().into()).unwrap();
        let mut stream: std::net::TcpStream = socket.into();
        stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let binding = [0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
        let _ = stream.write_all(&binding);
        let mut head = [0u8; 20];
        stream.read_exact(&mut head).is_ok()
    };
    assert!(connect(), "served over TCP before the reload");

    let clients = "[clients]\ndenied = [\"127.0.0.66/32\"]\n";
    std::fs::write(config_path(&turnd), format!("{}{tcp}{clients}", config(&[(USER, PASSWORD)], ""))).unwrap();
    signal(&turnd, "HUP");
    wait_for_log(&turnd, "configuration reloaded", 2);
    assert!(!connect(), "a denied client's new TCP connection was served");
    denied.send_channel_data(0x4000, b"after");
    assert!(denied.recv_data().is_none(), "a denied client's allocation still relays");
}
