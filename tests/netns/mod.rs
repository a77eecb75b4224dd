//! Network namespaces the tests create and always remove: test hosts, NATs and a
//! "public" network on one machine (iproute2's `ip netns`, veth pairs, iptables).
//!
//! Rules kept here: every namespace is named `tdt-<pid>-<random>-<role>` so parallel
//! runs never collide; a [`Netns`] is deleted on drop (after killing whatever still
//! runs inside it), including when the test panics; namespaces left by a run that was
//! killed outright (its pid no longer exists) are removed by the next run. Addresses
//! used inside are private (10.x, 100.64.x) and exist only inside these namespaces.
#![allow(dead_code)]

pub mod browser;
pub mod capture;

use std::collections::hash_map::RandomState;
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Prefix of every namespace these tests create.
const PREFIX: &str = "tdt-";
/// How long one `ip`/`iptables` command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// A random number for names (no rand crate in the tests).
fn random_u32() -> u32 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.finish() as u32
}

/// Runs a command to completion within [`COMMAND_TIMEOUT`]; returns (success, output).
pub fn run(program: &str, args: &[&str]) -> (bool, String) {
    let child =
        Command::new(program).args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return (false, format!("cannot run {program}: {e}")),
    };
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return (false, format!("{program} {args:?} did not finish within {COMMAND_TIMEOUT:?}"));
            }
        }
    }
    match child.wait_with_output() {
        Ok(out) => (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        ),
        Err(e) => (false, e.to_string()),
    }
}

/// Runs a command that must succeed; panics with its output otherwise.
pub fn must(program: &str, args: &[&str]) -> String {
    let (ok, out) = run(program, args);
    assert!(ok, "`{program} {}` failed:\n{out}", args.join(" "));
    out
}

/// Whether this process can create network namespaces (root, iproute2, a kernel
/// that allows it). Checked once by creating and deleting one.
pub fn available() -> Result<(), String> {
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    CHECK
        .get_or_init(|| {
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } != 0 {
                return Err("network namespaces need root".into());
            }
            remove_stale();
            let name = format!("{PREFIX}{}-{:08x}-check", std::process::id(), random_u32());
            let (ok, out) = run("ip", &["netns", "add", &name]);
            if !ok {
                return Err(format!("`ip netns add` failed: {out}"));
            }
            let _ = run("ip", &["netns", "del", &name]);
            Ok(())
        })
        .clone()
}

/// Deletes namespaces whose creating process is gone (a run killed by SIGKILL).
fn remove_stale() {
    let (ok, list) = run("ip", &["netns", "list"]);
    if !ok {
        return;
    }
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else { continue };
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            kill_all_in(name);
            let _ = run("ip", &["netns", "del", name]);
        }
    }
}

/// SIGKILLs every process inside namespace `name`.
fn kill_all_in(name: &str) {
    let (_, pids) = run("ip", &["netns", "pids", name]);
    for pid in pids.split_whitespace().filter_map(|p| p.parse::<libc::pid_t>().ok()) {
        // SAFETY: kill(2) on processes inside a namespace this test run created.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// A network namespace owned by the test, deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `tdt-<pid>-<random>-<role>` with its loopback up.
    pub fn new(role: &str) -> Netns {
        let name = format!("{PREFIX}{}-{:08x}-{role}", std::process::id(), random_u32());
        must("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS...`, which must succeed.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        must("ip", &all)
    }

    /// Runs `program ARGS...` inside the namespace; it must succeed.
    pub fn exec(&self, program: &str, args: &[&str]) -> String {
        let mut all = vec!["netns", "exec", &self.name, program];
        all.extend_from_slice(args);
        must("ip", &all)
    }

    /// Like [`exec`](Self::exec) but returns (success, output).
    pub fn try_exec(&self, program: &str, args: &[&str]) -> (bool, String) {
        let mut all = vec!["netns", "exec", &self.name, program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Sets a sysctl inside the namespace (e.g. `net.ipv4.ip_forward=1`).
    pub fn sysctl(&self, setting: &str) {
        self.exec("sysctl", &["-q", "-w", setting]);
    }

    /// Runs `f` with the calling thread inside this namespace: sockets it opens and
    /// processes it spawns (which inherit the thread's namespace) live here. The thread
    /// returns to its namespace afterwards, also when `f` panics.
    pub fn enter<T>(&self, f: impl FnOnce() -> T) -> T {
        let target = File::open(format!("/var/run/netns/{}", self.name)).expect("open the namespace file");
        let original = File::open("/proc/thread-self/ns/net").expect("open this thread's namespace");
        struct Restore(File);
        impl Drop for Restore {
            fn drop(&mut self) {
                // SAFETY: setns on a namespace fd we hold open, for this thread only.
                let rc = unsafe { libc::setns(self.0.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    // Continuing in the wrong namespace would make later tests lie.
                    eprintln!("cannot return to the original network namespace; aborting");
                    std::process::abort();
                }
            }
        }
        // SAFETY: as above.
        let rc = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns into {}: {}", self.name, std::io::Error::last_os_error());
        let _restore = Restore(original);
        f()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        kill_all_in(&self.name);
        let (ok, out) = run("ip", &["netns", "del", &self.name]);
        if !ok {
            eprintln!("warning: could not delete network namespace {}: {out}", self.name);
        }
    }
}

/// Connects `a` and `b` with a veth pair: `a_if` in `a` with `a_addr` (CIDR), `b_if` in
/// `b` with `b_addr`; both ends up. The pair is created inside `a`, so its names never
/// touch the host's namespace.
pub fn link(a: &Netns, a_if: &str, a_addr: &str, b: &Netns, b_if: &str, b_addr: &str) {
    a.ip(&["link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b.name()]);
    a.ip(&["addr", "add", a_addr, "dev", a_if]);
    b.ip(&["addr", "add", b_addr, "dev", b_if]);
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["link", "set", b_if, "up"]);
}

/// A veth pair with both ends inside `ns` (a host that needs a non-loopback interface,
/// as Chromium does to gather candidates).
pub fn veth_pair_inside(ns: &Netns, a_addr: &str, b_addr: &str) {
    ns.ip(&["link", "add", "veth0", "type", "veth", "peer", "name", "veth1"]);
    ns.ip(&["addr", "add", a_addr, "dev", "veth0"]);
    ns.ip(&["addr", "add", b_addr, "dev", "veth1"]);
    ns.ip(&["link", "set", "veth0", "up"]);
    ns.ip(&["link", "set", "veth1", "up"]);
}

/// A second octet for 10.x.0.0/16 and 100.64+x ranges, different per run, so that a
/// leaked namespace of another run can never share addresses with this one (they are
/// isolated anyway; this only makes logs unambiguous).
pub fn subnet_tag() -> u8 {
    (random_u32() % 60) as u8
}
