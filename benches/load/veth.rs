//! The veth path (`--path veth`): the servers in one network namespace, the generator
//! (the clients and the echo peer, this process) in another, joined by a veth pair.
//! Loopback never coalesces datagrams (no GRO) and hands GSO sends over whole; a veth
//! pair carries GSO sends as one packet too, and with GRO on (which gives the receiving
//! end a NAPI context) behaves like a NIC's receive path.
//!
//! Both namespaces are made with unshare(2) and never named: nothing in /run/netns, so
//! they (and the veth pair) vanish when the last process in them exits, whatever ends
//! the bench (Ctrl-C, a panic, SIGKILL); the servers die with the bench
//! (PR_SET_PDEATHSIG). The process's main thread moves to the generator's namespace
//! before any socket or thread exists, so every socket of the generator is there; the
//! servers enter theirs between fork and exec.

use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The servers' end of the veth pair, and the generator's.
pub const SERVER_IF: &str = "vsrv";
const GENERATOR_IF: &str = "vgen";
/// The servers' address on the veth pair.
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);
/// The generator's address on the veth pair (the echo peer binds it).
pub const GENERATOR_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 2);
/// Where the generator's client source addresses come from on the veth path: local to
/// the generator's namespace as a whole (an AnyIP route), routed there from the servers'.
const CLIENTS: &str = "10.96.0.0/12";
/// The pair's subnet, the peers the servers may relay to.
const LINK: &str = "10.201.0.0/24";

/// The server namespace, once the veth path is set up.
static SERVER_NS: OnceLock<File> = OnceLock::new();

/// Whether the bench runs on the veth path.
pub fn on() -> bool {
    SERVER_NS.get().is_some()
}

/// The address the servers listen on.
pub fn server_ip() -> Ipv4Addr {
    if on() {
        SERVER_IP
    } else {
        Ipv4Addr::LOCALHOST
    }
}

/// The address the echo peer binds.
pub fn generator_ip() -> Ipv4Addr {
    if on() {
        GENERATOR_IP
    } else {
        Ipv4Addr::LOCALHOST
    }
}

/// The peers the servers are told to allow.
pub fn peer_net() -> &'static str {
    if on() {
        LINK
    } else {
        "127.0.0.0/8"
    }
}

/// Client source address `i` is `127.b.c.d` on loopback; on the veth path the same with
/// `10.(86 + b)` in front, inside [`CLIENTS`].
pub fn client_first_octets(b: u8) -> (u8, u8) {
    if on() {
        (10, 86 + b)
    } else {
        (127, b)
    }
}

/// Makes `command` start in the servers' namespace (nothing on loopback).
pub fn enter_server_ns(command: &mut Command) {
    let Some(ns) = SERVER_NS.get() else { return };
    let fd = ns.as_raw_fd();
    // SAFETY: setns(2) is async-signal-safe; `fd` stays open in the child until exec
    // (the bench never closes it), and only the child's namespace changes.
    unsafe {
        command.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Sets the veth path up: must run before the bench opens a socket or starts a thread.
/// `gro` turns GRO on at both ends of the pair (ethtool), which is what gives a veth a
/// NAPI receive path.
pub fn setup(gro: bool) -> io::Result<()> {
    let server = new_namespace()?;
    // The process (its only thread) stays in the second one: the generator's.
    new_namespace()?;
    let server_path = format!("/proc/{}/fd/{}", std::process::id(), server.as_raw_fd());
    let here = |args: &[&str]| run(args, None);
    let there = |args: &[&str]| run(args, Some(server.as_raw_fd()));
    here(&["ip", "link", "set", "lo", "up"])?;
    here(&["ip", "link", "add", GENERATOR_IF, "type", "veth", "peer", "name", SERVER_IF, "netns", &server_path])?;
    here(&["ip", "addr", "add", &format!("{GENERATOR_IP}/24"), "dev", GENERATOR_IF])?;
    here(&["ip", "link", "set", GENERATOR_IF, "up"])?;
    here(&["ip", "route", "add", "local", CLIENTS, "dev", "lo"])?;
    there(&["ip", "link", "set", "lo", "up"])?;
    there(&["ip", "addr", "add", &format!("{SERVER_IP}/24"), "dev", SERVER_IF])?;
    there(&["ip", "link", "set", SERVER_IF, "up"])?;
    there(&["ip", "route", "add", CLIENTS, "via", &GENERATOR_IP.to_string()])?;
    let gro = if gro { "on" } else { "off" };
    here(&["ethtool", "-K", GENERATOR_IF, "gro", gro])?;
    there(&["ethtool", "-K", SERVER_IF, "gro", gro])?;
    SERVER_NS.set(server).map_err(|_| io::Error::other("veth path set up twice"))
}

/// Readies the path for turnd's XDP fast path (the `turnd-xdp` server): the program's
/// route lookup answers only on an interface that forwards; its XDP_TX out of the
/// servers' end reaches the generator's only when that end has an XDP program too (a
/// veth hands such frames to the other end's NAPI, which exists only then), so the
/// generator's end gets turnd's own program, whose maps stay empty there: it passes
/// everything. That program also changes the generator's receive path for every
/// server of the run alike. The generator's address is made a permanent neighbour, so
/// that the program (which sends only to resolved neighbours) never falls back to the
/// socket path when the entry would age.
pub fn enable_xdp(object: &str) -> io::Result<()> {
    let Some(server) = SERVER_NS.get() else {
        return Err(io::Error::other("turnd-xdp needs the veth path (--path veth)"));
    };
    let there = |args: &[&str]| run(args, Some(server.as_raw_fd()));
    there(&["sysctl", "-qw", &format!("net.ipv4.conf.{SERVER_IF}.forwarding=1")])?;
    run(&["ip", "link", "set", "dev", GENERATOR_IF, "xdpdrv", "obj", object, "sec", "xdp"], None)?;
    let link = output(&["ip", "-o", "link", "show", GENERATOR_IF])?;
    let mac = link
        .split("link/ether ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .ok_or_else(|| io::Error::other(format!("no MAC address in {link:?}")))?;
    there(&["ip", "neigh", "replace", &GENERATOR_IP.to_string(), "lladdr", mac, "dev", SERVER_IF, "nud", "permanent"])
}

/// unshare(CLONE_NEWNET) for this thread; returns a handle on the new namespace.
fn new_namespace() -> io::Result<File> {
    // SAFETY: unshare takes no pointers; it moves this thread into a new namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("unshare(CLONE_NEWNET) (needs CAP_SYS_ADMIN): {e}")));
    }
    File::open("/proc/thread-self/ns/net")
}

/// Runs a command here and returns what it printed.
fn output(args: &[&str]) -> io::Result<String> {
    let out = Command::new(args[0]).args(&args[1..]).stdin(Stdio::null()).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a set-up command here or, with `ns`, in that namespace.
fn run(args: &[&str], ns: Option<RawFd>) -> io::Result<()> {
    let mut command = Command::new(args[0]);
    command.args(&args[1..]).stdin(Stdio::null()).stdout(Stdio::null());
    if let Some(fd) = ns {
        // SAFETY: as in enter_server_ns.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let out = command.output().map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", args.join(" "))))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Softirq seconds of the whole machine so far (`/proc/stat`, the `cpu` line's seventh
/// field): packet receive work a server's own process time does not show (the veth
/// receive path and socket delivery run there), counted for both ends of the path.
pub fn softirq_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else { return 0.0 };
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else { return 0.0 };
    let ticks: f64 = line.split_whitespace().nth(7).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ticks / if hz > 0 { hz as f64 } else { 100.0 }
}
