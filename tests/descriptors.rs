//! The open-file limit, budgeted: turnd raises its soft limit to the hard one and gives
//! client streams half of what is left at most, so TCP connections held open can never
//! take the descriptors a UDP Allocate needs for its relay socket.
//!
//! Before: with a soft limit of 1024 (not raised) and the default `max-connections =
//! 10000`, about 1,000 held TCP connections made every UDP Allocate fail with 508.
// A test may unwrap (a panic is a failed test) and use unsafe for process plumbing
// (signals, namespaces); the server code denies both (Cargo.toml [lints]).
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::turn_client;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::{MessageClass, TransactionId};
use turn_client::TurnClient;
use turnd::stun::message::{self, Message, Protection};

/// Connections the test tries to hold: more than the budget leaves for streams.
const ATTEMPTS: usize = 700;

fn config() -> String {
    let (min, max) = relay_port_range();
    format!(
        "realm = \"{REALM}\"\nworkers = 1\n\
         [[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:0\"\n\
         [[listen]]\ntransport = \"tcp\"\naddress = \"127.0.0.1:0\"\n\
         [tcp]\nmax-connections-per-source = 10000\nmax-unauthenticated-per-source = 10000\n\
         [relay]\nport-min = {min}\nport-max = {max}\n\
         [[auth.user]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\n"
    )
}

/// Opens a connection from `source` and sends one Binding; `None` if refused.
fn hold(source: u8, server: SocketAddr) -> Option<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
    socket.bind(&SocketAddr::from(([127, 0, 0, source], 0)).into()).ok()?;
    socket.connect_timeout(&server.into(), Duration::from_secs(2)).ok()?;
    let mut stream: TcpStream = socket.into();
    let binding = Message::new(MessageClass::Request, BINDING, TransactionId::new([source; 12]));
    stream.write_all(&message::encode(binding, Protection { key: None, fingerprint: false })?).ok()?;
    Some(stream)
}

/// Whether the server answered on `stream` (a Binding response), within `wait`.
fn answered(stream: &mut TcpStream, wait: Duration) -> bool {
    stream.set_read_timeout(Some(wait)).ok();
    let mut head = [0u8; 20];
    stream.read_exact(&mut head).is_ok() && head[0..2] == [0x01, 0x01]
}

#[test]
fn held_tcp_connections_cannot_starve_udp_allocations() {
    if !need_tool("prlimit", "util-linux") {
        return;
    }
    // Soft 256, hard 1024: turnd raises to 1024 and budgets (1024 - 128 - 16) / 2 = 440
    // connections, and 880 - 440 = 440 relay sockets, so 440 allocations at most.
    let mut turnd = TurndProcess::start_wrapped(&["prlimit", "--nofile=256:1024", "--"], &config(), &[]);
    let logs = turnd.logs();
    assert!(logs.contains("raised the open-file limit"), "{logs}");
    assert!(logs.contains("tcp.max-connections") && logs.contains("used=440"), "{logs}");
    assert!(logs.contains("limits.total-allocations") && logs.contains("used=440"), "{logs}");

    let server = turnd.tcp_addr();
    let started = Instant::now();
    let mut held: Vec<TcpStream> = (0..ATTEMPTS).filter_map(|i| hold(2 + (i % 50) as u8, server)).collect();
    let served = held.iter_mut().map(|s| answered(s, Duration::from_millis(300))).filter(|&ok| ok).count();
    println!("{served} of {ATTEMPTS} connections served in {:?} (budget 440)", started.elapsed());
    assert!(served <= 440, "{served} streams served past the budget");
    assert!(served >= 400, "only {served} served: the budget should allow about 440");

    // With every stream slot held, UDP clients still allocate.
    for i in 0..5 {
        let mut client = TurnClient::new("127.0.0.1:0", turnd.udp_addr(), USER, PASSWORD, REALM);
        assert!(client.allocate(vec![]).is_ok(), "UDP Allocate {i} refused while streams are full");
    }
    assert!(turnd.is_running());
}

/// A UDP-only server keeps no share for streams, and an allocation of one family holds
/// one relay socket, so every budgeted descriptor can be an allocation (before: a
/// quarter, for streams that could not come and a second family not asked for).
#[test]
fn a_udp_only_single_family_server_gives_relay_sockets_the_whole_budget() {
    if !need_tool("prlimit", "util-linux") {
        return;
    }
    // A range of its own: the shared helper's 200 ports would run out first.
    let min = 20_000 + (random_u64() % 38_000) as u16;
    let max = min + 999;
    let config = format!(
        "realm = \"{REALM}\"\nworkers = 1\n\
         [[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:0\"\n\
         [limits]\nallocations-per-user = 5000\nallocations-per-ip = 5000\n\
         [relay]\nport-min = {min}\nport-max = {max}\n\
         [[auth.user]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\n"
    );
    // Hard 1024 with one worker: 1024 - 144 = 880 allocations, no stream share.
    let mut turnd = TurndProcess::start_wrapped(&["prlimit", "--nofile=256:1024", "--"], &config, &[]);
    let logs = turnd.logs();
    assert!(logs.contains("limits.total-allocations") && logs.contains("used=880"), "{logs}");
    assert!(!logs.contains("tcp.max-connections"), "no listener takes streams, nothing to lower: {logs}");

    // Each client is dropped once allocated: its allocation stays (until its lifetime
    // ends) and the test keeps no descriptor for it.
    let mut allocated = 0;
    let mut refusal = None;
    for i in 0..900usize {
        let source = format!("127.0.{}.{}:0", 1 + i / 250, 1 + i % 250);
        let mut client = TurnClient::new(&source, turnd.udp_addr(), USER, PASSWORD, REALM);
        match client.allocate(vec![]) {
            Ok(_) => allocated += 1,
            Err(e) => {
                refusal = Some(e);
                break;
            }
        }
    }
    assert_eq!(allocated, 880, "allocations held under the budget (then: {refusal:?})");
    assert_eq!(refusal, Some(508), "past the budget the answer is 508 (Insufficient Capacity)");
    assert!(turnd.is_running());
}
