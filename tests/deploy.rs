//! The deployment files under `deploy/` (and `Dockerfile`), each checked by the tool that
//! consumes it: systemd-analyze for the unit, dpkg for the package, promtool and a real
//! Prometheus server for the scrape config and alert rules, turnd's own `/metrics` for the
//! Grafana dashboard, kubernetes-validate for the manifests.
//!
//! Tools come from `scripts/test.sh`. When one is missing a test fails in CI (`CI` set)
//! and prints "skipping" elsewhere. Network traffic stays on loopback, ports are
//! ephemeral, every wait is bounded, and every process started is killed.
// A test may unwrap (a panic is a failed test) and use unsafe for process plumbing
// (signals, namespaces); the server code denies both (Cargo.toml [lints]).
#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::turn_client;

use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// The repository root.
fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A repository file's text.
fn read(relative: &str) -> String {
    std::fs::read_to_string(repo().join(relative)).unwrap_or_else(|e| panic!("read {relative}: {e}"))
}

fn cmd(program: &str) -> Command {
    Command::new(program)
}

/// A turnd config with a UDP listener and the admin listener on loopback, both on
/// ephemeral ports, and a static user.
fn config_with_admin() -> String {
    let (min, max) = relay_port_range();
    format!(
        "realm = \"{REALM}\"\n\n[[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:0\"\n\n\
         [relay]\nport-min = {min}\nport-max = {max}\nallowed-peers = [\"127.0.0.0/8\"]\nallow-host-peers = true\n\n\
         [[auth.user]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\n\n\
         [admin]\nenabled = true\naddress = \"127.0.0.1:0\"\n"
    )
}

// ---------------------------------------------------------------------------------------
// Minimal HTTP/1.0 client for loopback servers (turnd's admin listener, Prometheus).

/// `GET path` on `addr`; returns (status, body). HTTP/1.0 so no chunked bodies.
fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read from {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("no header end in {text:?}"))?;
    let status =
        head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| format!("bad status: {head}"))?;
    Ok((status, body.to_string()))
}

/// Percent-encodes a query-string value.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// turnd's `/metrics` text, fetched from its admin listener.
fn scrape(turnd: &TurndProcess) -> String {
    let (status, body) = http_get(turnd.addr("admin"), "/metrics").unwrap_or_else(|e| panic!("GET /metrics: {e}"));
    assert_eq!(status, 200, "GET /metrics answered {status}:\n{body}");
    body
}

/// Every series name a scrape can produce: the `# TYPE` names, plus `_bucket`, `_sum`
/// and `_count` for histograms.
fn exported_series(metrics: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in metrics.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("#") || words.next() != Some("TYPE") {
            continue;
        }
        let (Some(name), Some(kind)) = (words.next(), words.next()) else { continue };
        names.insert(name.to_string());
        if kind == "histogram" || kind == "summary" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

/// The metric names (`turnd_*`, `process_*`) a rules file or dashboard mentions.
fn metric_names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    for prefix in ["turnd_", "process_"] {
        let mut from = 0;
        while let Some(i) = text[from..].find(prefix).map(|i| i + from) {
            let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
            let end = text[i..]
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .map_or(text.len(), |n| i + n);
            if boundary {
                out.insert(text[i..end].to_string());
            }
            from = end.max(i + 1);
        }
    }
    out
}

/// Sends a STUN Binding request to `server` and waits for the success response.
fn stun_binding(server: SocketAddr) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP client");
    socket.set_read_timeout(Some(Duration::from_millis(500))).expect("set a read timeout");
    let mut request = [0u8; 20];
    request[0..2].copy_from_slice(&0x0001u16.to_be_bytes()); // Binding request
    request[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes()); // magic cookie
    request[8..20].copy_from_slice(&random_u64().to_be_bytes().repeat(2)[..12]);
    for _ in 0..5 {
        socket.send_to(&request, server).expect("send a Binding request");
        let mut buf = [0u8; 512];
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            if n >= 20 && buf[0..2] == [0x01, 0x01] && buf[8..20] == request[8..20] {
                return;
            }
        }
    }
    panic!("no Binding success response from turnd at {server} in 5 tries");
}

// ---------------------------------------------------------------------------------------
// systemd

const UNIT: &str = "deploy/systemd/turnd.service";

/// The unit as `[(section, key, value)]`, comments and blank lines skipped.
fn unit_entries(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
        } else if let Some((k, v)) = line.split_once('=') {
            out.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

/// Every value of `key` in `[Service]`.
fn service_values<'a>(entries: &'a [(String, String, String)], key: &str) -> Vec<&'a str> {
    entries.iter().filter(|(s, k, _)| s == "Service" && k == key).map(|(_, _, v)| v.as_str()).collect()
}

/// The one value of `key` in `[Service]`.
fn service_value<'a>(entries: &'a [(String, String, String)], key: &str) -> &'a str {
    match service_values(entries, key)[..] {
        [v] => v,
        ref vs => panic!("{UNIT}: expected one {key}=, found {vs:?}"),
    }
}

/// A copy of the unit in `dir` with /usr/bin/turnd replaced by the binary under test,
/// so `systemd-analyze verify` can resolve ExecStart= without the package installed.
fn unit_for_binary_under_test(dir: &TempDir) -> PathBuf {
    let binary = std::fs::canonicalize(turnd_binary()).expect("the turnd binary exists");
    let text = read(UNIT).replace("/usr/bin/turnd", binary.to_str().expect("a UTF-8 binary path"));
    dir.write("turnd.service", &text)
}

/// Lines of `systemd-analyze verify` output about our unit (it also reports on unrelated
/// units of the machine, which are none of our business).
fn verify_complaints(unit: &Path) -> (bool, Vec<String>) {
    let out = run_with_timeout(
        cmd("systemd-analyze").args(["verify", "--man=no"]).arg(unit).env("SYSTEMD_LOG_COLOR", "0"),
        Duration::from_secs(60),
    );
    assert!(!out.timed_out(), "systemd-analyze verify hung:\n{out}");
    let ours = out.all().lines().filter(|l| l.contains("turnd.service")).map(str::to_string).collect();
    (out.success(), ours)
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    if !need_tool("systemd-analyze", "systemd") {
        return;
    }
    let dir = TempDir::new("turnd-unit");
    let unit = unit_for_binary_under_test(&dir);
    let (ok, complaints) = verify_complaints(&unit);
    assert!(ok && complaints.is_empty(), "systemd-analyze verify {UNIT}:\n{}", complaints.join("\n"));

    // The check has teeth: a misspelt directive is reported.
    let broken = dir.write("turnd.service", &std::fs::read_to_string(&unit).unwrap().replace("Restart=", "Restrat="));
    let (_, complaints) = verify_complaints(&broken);
    assert!(
        complaints.iter().any(|l| l.contains("Restrat")),
        "systemd-analyze verify did not flag an unknown key: {complaints:?}"
    );
}

#[test]
fn systemd_unit_security_exposure_is_at_most_2() {
    if !need_tool("systemd-analyze", "systemd") {
        return;
    }
    let dir = TempDir::new("turnd-unit");
    let unit = unit_for_binary_under_test(&dir);
    let out = run_with_timeout(
        cmd("systemd-analyze").args(["security", "--offline=true", "--no-pager"]).arg(&unit),
        Duration::from_secs(60),
    );
    assert!(out.success(), "systemd-analyze security failed:\n{out}");
    // "→ Overall exposure level for turnd.service: 1.4 OK 🙂"
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("Overall exposure level for turnd.service"))
        .unwrap_or_else(|| panic!("no overall exposure line:\n{out}"));
    let score: f64 = line
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse the exposure from {line:?}"));
    eprintln!("{}", line.trim());
    assert!(score <= 2.0, "exposure {score} > 2.0 for {UNIT}:\n{}", out.stdout);
    assert!(line.contains(" OK"), "systemd-analyze does not rate the unit OK: {line}");
}

#[test]
fn systemd_unit_keeps_the_service_contract() {
    let text = read(UNIT);
    let e = unit_entries(&text);
    assert_eq!(service_value(&e, "Type"), "notify", "turnd reports READY=1 itself");
    // The old process of a live upgrade hands the unit to its successor with MAINPID=.
    assert_eq!(service_value(&e, "NotifyAccess"), "main");
    // Opt-in only: with a store, `systemctl stop` ends allocations instead of draining.
    assert!(service_values(&e, "FileDescriptorStoreMax").is_empty(), "the drain on stop needs no fd store");
    let watchdog = service_value(&e, "WatchdogSec");
    let watchdog = humantime::parse_duration(watchdog).unwrap_or_else(|e| panic!("WatchdogSec={watchdog}: {e}"));
    assert!((Duration::from_secs(2)..=Duration::from_secs(60)).contains(&watchdog), "WatchdogSec={watchdog:?}");
    assert_eq!(service_value(&e, "Restart"), "on-failure");
    assert_eq!(service_value(&e, "ExecStart"), "/usr/bin/turnd serve -c /etc/turnd/turnd.toml");
    let reload = service_values(&e, "ExecReload");
    assert_eq!(reload.last().copied(), Some("/bin/kill -HUP $MAINPID"), "ExecReload= must end with SIGHUP: {reload:?}");
    assert_eq!(service_value(&e, "User"), "turnd");
    assert_eq!(service_value(&e, "AmbientCapabilities"), "CAP_NET_BIND_SERVICE");
    assert_eq!(service_value(&e, "CapabilityBoundingSet"), "CAP_NET_BIND_SERVICE");
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectHome", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectControlGroups", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
    ] {
        assert_eq!(service_value(&e, key), value, "{key}=");
    }
    let families: BTreeSet<&str> = service_value(&e, "RestrictAddressFamilies").split_whitespace().collect();
    // AF_NETLINK: getifaddrs reads the host's addresses (peer policy, relay addresses).
    assert_eq!(families, BTreeSet::from(["AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"]));
    assert!(service_values(&e, "SystemCallFilter").contains(&"@system-service"));
    let nofile: u64 = service_value(&e, "LimitNOFILE").parse().expect("LimitNOFILE= is a number");
    assert!(nofile >= 65536, "LimitNOFILE={nofile}: one descriptor per relay port and TCP client");
    // Socket activation is not offered: turnd takes only its own sockets back from the fd store.
    assert!(!repo().join("deploy/systemd/turnd.socket").exists(), "turnd.socket needs socket activation support first");
}

/// A child process killed (SIGKILL) and reaped when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) on our own child, which KillOnDrop has not reaped yet.
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

/// Notification lines ("READY=1", "WATCHDOG=1", "STATUS=...") from a datagram socket
/// standing in for systemd's, with the time each arrived.
struct NotifySocket {
    socket: std::os::unix::net::UnixDatagram,
    path: PathBuf,
    lines: Vec<(Instant, String)>,
}

impl NotifySocket {
    fn bind(dir: &TempDir) -> NotifySocket {
        let path = dir.path().join("notify.sock");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("bind a notify socket");
        socket.set_read_timeout(Some(Duration::from_millis(100))).expect("set a read timeout");
        NotifySocket { socket, path, lines: Vec::new() }
    }

    /// Reads notifications until `done` holds for the lines so far, at most `timeout`.
    fn read_until(&mut self, timeout: Duration, done: impl Fn(&[(Instant, String)]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        while !done(&self.lines) {
            if Instant::now() >= deadline {
                return false;
            }
            if let Ok(n) = self.socket.recv(&mut buf) {
                let now = Instant::now();
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.lines.extend(text.lines().map(|l| (now, l.to_string())));
            }
        }
        true
    }

    fn count(lines: &[(Instant, String)], wanted: &str) -> usize {
        lines.iter().filter(|(_, l)| l == wanted).count()
    }
}

#[test]
fn turnd_speaks_the_notify_protocol_the_unit_expects() {
    // What Type=notify, WatchdogSec= and ExecReload= rely on, with this test in
    // systemd's place: READY=1 once listening, a STATUS= line, WATCHDOG=1 well within
    // WatchdogSec, RELOADING=1 then READY=1 around SIGHUP, STOPPING=1 on SIGTERM.
    let e = unit_entries(&read(UNIT));
    let watchdog = humantime::parse_duration(service_value(&e, "WatchdogSec")).expect("WatchdogSec= parses");
    let dir = TempDir::new("turnd-notify");
    let mut notify = NotifySocket::bind(&dir);
    let config = dir.write("turnd.toml", &config_with_admin().replace("enabled = true", "enabled = false"));
    let child = cmd(&turnd_binary())
        .arg("serve")
        .arg("-c")
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", watchdog.as_micros().to_string())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn turnd");
    let mut turnd = KillOnDrop(child);

    let started = Instant::now();
    let ok = notify.read_until(Duration::from_secs(15), |l| {
        NotifySocket::count(l, "READY=1") >= 1 && NotifySocket::count(l, "WATCHDOG=1") >= 3
    });
    let lines: Vec<&str> = notify.lines.iter().map(|(_, l)| l.as_str()).collect();
    assert!(ok, "no READY=1 and 3 x WATCHDOG=1 within 15 s: {lines:?}");
    let status = lines.iter().find(|l| l.starts_with("STATUS=")).unwrap_or_else(|| panic!("no STATUS=: {lines:?}"));
    assert!(status.contains("allocations"), "the status line does not count allocations: {status}");
    // Keep-alives come at most WatchdogSec/2 apart (sd_watchdog_enabled(3) advice).
    let pings: Vec<Instant> = notify.lines.iter().filter(|(_, l)| l == "WATCHDOG=1").map(|(t, _)| *t).collect();
    let gaps = std::iter::once(pings[0] - started).chain(pings.windows(2).map(|w| w[1] - w[0]));
    for gap in gaps {
        assert!(gap <= watchdog / 2, "{gap:?} between watchdog keep-alives, WatchdogSec={watchdog:?}");
    }

    notify.lines.clear();
    signal(&turnd.0, libc::SIGHUP);
    let reloaded = notify.read_until(Duration::from_secs(10), |l| {
        let reloading = l.iter().position(|(_, s)| s == "RELOADING=1");
        reloading.is_some_and(|i| l[i..].iter().any(|(_, s)| s == "READY=1"))
    });
    assert!(reloaded, "no RELOADING=1 then READY=1 after SIGHUP: {:?}", notify.lines);

    notify.lines.clear();
    signal(&turnd.0, libc::SIGTERM);
    let stopping = notify.read_until(Duration::from_secs(10), |l| NotifySocket::count(l, "STOPPING=1") >= 1);
    assert!(stopping, "no STOPPING=1 after SIGTERM: {:?}", notify.lines);
    // No allocations: the drain ends at once and turnd exits cleanly.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        match turnd.0.try_wait() {
            Ok(Some(status)) => break status,
            _ if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
            _ => panic!("turnd did not exit within 10 s of SIGTERM with no allocations"),
        }
    };
    assert!(status.success(), "turnd exited with {status} on SIGTERM");
}

/// `systemd-analyze syscall-filter`: every group and what it lists (system calls and
/// other groups).
fn syscall_groups() -> BTreeMap<String, Vec<String>> {
    let out = run_with_timeout(cmd("systemd-analyze").args(["syscall-filter", "--no-pager"]), Duration::from_secs(30));
    assert!(out.success(), "{out}");
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = None;
    for line in out.stdout.lines() {
        if line.starts_with('@') {
            current = Some(line.trim().to_string());
            groups.entry(line.trim().to_string()).or_default();
        } else if let (Some(group), item) = (&current, line.trim()) {
            if !item.is_empty() && !item.starts_with('#') {
                groups.get_mut(group).expect("the current group").push(item.to_string());
            }
        }
    }
    groups
}

fn expand_syscalls(groups: &BTreeMap<String, Vec<String>>, item: &str, out: &mut BTreeSet<String>) {
    match groups.get(item) {
        Some(members) => members.iter().for_each(|m| expand_syscalls(groups, m, out)),
        None if item.starts_with('@') => panic!("systemd-analyze knows no group {item}"),
        None => {
            out.insert(item.to_string());
        }
    }
}

/// The system calls the unit's SystemCallFilter= lines allow: the first (allow) list,
/// less every `~` (deny) list after it.
fn unit_allowed_syscalls() -> BTreeSet<String> {
    let groups = syscall_groups();
    let e = unit_entries(&read(UNIT));
    let mut allowed = BTreeSet::new();
    for value in service_values(&e, "SystemCallFilter") {
        let (deny, list) = value.strip_prefix('~').map_or((false, value), |v| (true, v));
        let mut set = BTreeSet::new();
        list.split_whitespace().for_each(|item| expand_syscalls(&groups, item, &mut set));
        if deny {
            allowed.retain(|s| !set.contains(s));
        } else {
            allowed.extend(set);
        }
    }
    allowed
}

/// The pid of `parent`'s child process (strace's tracee).
fn child_of(parent: u32) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()).find(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse::<u32>().ok())
            == Some(parent)
    })
}

#[test]
fn turnd_stays_within_the_units_system_call_filter() {
    // Under systemd a call outside SystemCallFilter= fails with EPERM, in production
    // only. Trace turnd through start, UDP/TCP/TLS allocations, relaying, a scrape, a
    // live upgrade (strace -f follows the successor: its execve, the memfd, SCM_RIGHTS),
    // a reload and a drain, and check every call both processes made against the filter.
    if !need_tool("strace", "strace") || !need_tool("systemd-analyze", "systemd") || !need_tool("openssl", "openssl") {
        return;
    }
    let allowed = unit_allowed_syscalls();
    assert!(
        allowed.contains("sendmsg") && !allowed.contains("reboot") && !allowed.contains("setrlimit"),
        "{allowed:?}"
    );

    let dir = TempDir::new("turnd-syscalls");
    let cert = TestCert::new();
    let (min, max) = relay_port_range();
    let config = cert.add_to(&format!(
        "realm = \"{REALM}\"\n\n\
         [[listen]]\ntransport = \"udp\"\naddress = \"127.0.0.1:0\"\n\n\
         [[listen]]\ntransport = \"tcp\"\naddress = \"127.0.0.1:0\"\n\n\
         [[listen]]\ntransport = \"tls\"\naddress = \"127.0.0.1:0\"\n\n\
         [relay]\nport-min = {min}\nport-max = {max}\nallowed-peers = [\"127.0.0.0/8\"]\nallow-host-peers = true\n\n\
         [[auth.user]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\n\n\
         [admin]\naddress = \"127.0.0.1:0\"\n"
    ));
    let config_file = dir.write("turnd.toml", &config);
    let summary = dir.path().join("strace-summary.txt");
    let strace = cmd("strace")
        .args(["-f", "-qq", "-c", "-o"])
        .arg(&summary)
        .arg("--")
        .arg(turnd_binary())
        .arg("serve")
        .arg("-c")
        .arg(&config_file)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn strace");
    let mut strace = KillOnDrop(strace);
    let stderr = strace.0.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut listeners = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while listeners.len() < 4 {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                if let Some((transport, addr)) = parse_listening(&line) {
                    listeners.insert(transport, addr);
                }
            }
            Err(_) => panic!("turnd under strace did not listen on udp, tcp, tls and admin: {listeners:?}"),
        }
    }
    let turnd_pid = child_of(strace.0.id()).expect("turnd's pid under strace");

    // UDP: allocate, permission, a Send indication and ChannelData through an echo peer.
    let peer = UdpEchoPeer::start();
    let mut udp = turn_client::TurnClient::new("127.0.0.1:0", listeners["udp"], USER, PASSWORD, REALM);
    udp.allocate(vec![]).expect("UDP allocation");
    assert_eq!(udp.create_permission(peer.addr()), None);
    udp.send_indication(peer.addr(), b"ping");
    assert!(udp.recv_data().is_some(), "no data back through the UDP relay");
    assert_eq!(udp.channel_bind(0x4000, peer.addr()), None);
    udp.send_channel_data(0x4000, b"pong");
    assert!(udp.recv_data().is_some(), "no ChannelData back through the UDP relay");
    // TCP and TLS allocations.
    let mut tcp = TcpStream::connect(listeners["tcp"]).expect("connect over TCP");
    tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    turn_client::StreamClient::new(USER, PASSWORD, REALM).allocate(&mut tcp).expect("TCP allocation");
    let mut tls = turn_client::tls_connect(listeners["tls"]);
    turn_client::StreamClient::new(USER, PASSWORD, REALM).allocate(&mut tls).expect("TLS allocation");
    let (status, _) = http_get(listeners["admin"], "/metrics").expect("GET /metrics");
    assert_eq!(status, 200);

    // A live upgrade: the UDP allocation moves to a new process; the old one exits once
    // its TCP and TLS connections close.
    // SAFETY: kill(2) on the pid strace started for us.
    unsafe { libc::kill(turnd_pid as libc::pid_t, libc::SIGUSR2) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let done = loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.contains("live upgrade done") => break line,
            Ok(line) => assert!(!line.contains("live upgrade failed"), "{line}"),
            Err(_) => panic!("no live upgrade under strace within 20 s"),
        }
    };
    let new_pid: libc::pid_t = done
        .split("new_pid=")
        .nth(1)
        .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no new_pid in {done}"));
    drop(tcp);
    drop(tls);
    udp.send_indication(peer.addr(), b"after the upgrade");
    assert!(udp.recv_data().is_some(), "no data back through the UDP relay after the upgrade");
    let (status, _) = http_get(listeners["admin"], "/metrics").expect("GET /metrics from the new turnd");
    assert_eq!(status, 200);

    // A reload, then SIGTERM twice to the new turnd: drain, then exit now.
    let kill = |sig| {
        // SAFETY: kill(2) on the successor turnd started under strace.
        unsafe { libc::kill(new_pid, sig) };
    };
    kill(libc::SIGHUP);
    thread::sleep(Duration::from_millis(1500));
    kill(libc::SIGTERM);
    thread::sleep(Duration::from_millis(1500));
    kill(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(15);
    let exited = loop {
        match strace.0.try_wait() {
            Ok(Some(status)) => break status,
            _ if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
            _ => panic!("turnd under strace did not exit within 15 s of two SIGTERMs"),
        }
    };
    let _ = reader.join();
    assert!(exited.success(), "turnd under strace exited with {exited}");

    // strace -c: "% time  seconds  usecs/call  calls  errors  syscall", then "total".
    let table = std::fs::read_to_string(&summary).expect("strace's summary");
    let used: BTreeSet<String> = table
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter(|name| name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
        .filter(|name| *name != "total" && *name != "syscall")
        .map(str::to_string)
        .collect();
    // sendmmsg: datagrams to clients and peers go out in batches (net/outbox.rs).
    for expected in ["bind", "accept4", "sendmmsg", "recvmmsg", "epoll_wait", "clone3", "memfd_create", "sendmsg"] {
        assert!(used.contains(expected), "the trace missed {expected}: {used:?}\n{table}");
    }
    // The successor's execve is under the filter, so it must be allowed. (The first
    // execve, strace starting turnd, would come before the filter applies.)
    assert!(used.contains("execve") && allowed.contains("execve"), "{used:?}");
    let outside: Vec<&String> = used.iter().filter(|s| !allowed.contains(*s)).collect();
    assert!(outside.is_empty(), "turnd used system calls {UNIT} forbids: {outside:?}\n{table}");
}

/// `drain-time` from `turnd check-config` output (the effective configuration).
fn effective_drain_time(check_config_stdout: &str) -> Duration {
    let value = check_config_stdout
        .lines()
        .find_map(|l| l.strip_prefix("drain-time = "))
        .unwrap_or_else(|| panic!("no drain-time in the effective config:\n{check_config_stdout}"));
    humantime::parse_duration(value.trim_matches('"')).unwrap_or_else(|e| panic!("drain-time = {value}: {e}"))
}

#[test]
fn systemd_waits_out_the_drain_before_sigkill() {
    let out = run_with_timeout(
        cmd(&turnd_binary()).arg("check-config").arg(repo().join("deploy/turnd.toml")),
        Duration::from_secs(20),
    );
    assert!(out.success(), "{out}");
    let drain = effective_drain_time(&out.stdout);
    let e = unit_entries(&read(UNIT));
    let stop = humantime::parse_duration(service_value(&e, "TimeoutStopSec")).expect("TimeoutStopSec= parses");
    assert!(
        stop >= drain + Duration::from_secs(10),
        "TimeoutStopSec={stop:?} leaves no margin over drain-time {drain:?}"
    );
}

#[test]
fn exec_reload_config_check_accepts_the_packaged_config() {
    // ExecReload= runs `turnd check-config FILE` before SIGHUP: run it on the file the
    // package installs there.
    let e = unit_entries(&read(UNIT));
    let check = service_values(&e, "ExecReload")[0];
    let args: Vec<&str> = check.split_whitespace().collect();
    assert_eq!(args[..3], ["/usr/bin/turnd", "check-config", "/etc/turnd/turnd.toml"]);
    let out = run_with_timeout(
        cmd(&turnd_binary()).arg("check-config").arg(repo().join("deploy/turnd.toml")),
        Duration::from_secs(20),
    );
    assert!(out.success(), "deploy/turnd.toml does not pass check-config:\n{out}");
    assert!(out.stdout.contains(": OK"), "{out}");
}

#[test]
fn packaged_config_serves_once_its_ports_are_made_ephemeral() {
    // deploy/turnd.toml with its fixed ports swapped for ephemeral loopback ones: every
    // listener it declares (udp, tcp, admin) comes up.
    let config = read("deploy/turnd.toml")
        .replace("0.0.0.0:3478", "127.0.0.1:0")
        .replace("[::]:3478", "[::1]:0")
        .replace("127.0.0.1:9641", "127.0.0.1:0");
    assert!(!config.contains(":3478") && !config.contains(":9641"), "a fixed port is left:\n{config}");
    let turnd = TurndProcess::start(&config, &[]);
    let transports: BTreeSet<&str> = turnd.listeners().iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(transports, BTreeSet::from(["admin", "tcp", "udp"]));
    assert_eq!(turnd.listeners().iter().filter(|(_, a)| a.is_ipv6()).count(), 2, "{:?}", turnd.listeners());
    stun_binding(turnd.udp_addr());
    let (status, _) = http_get(turnd.addr("admin"), "/healthz").expect("GET /healthz");
    assert_eq!(status, 200);
}

// ---------------------------------------------------------------------------------------
// Debian package

/// Purges the package when dropped, so a failed test leaves no install behind.
struct PurgeOnDrop;

impl Drop for PurgeOnDrop {
    fn drop(&mut self) {
        let out = run_with_timeout(cmd("dpkg").args(["--purge", "turnd"]), Duration::from_secs(120));
        if !out.success() {
            eprintln!("cleanup: dpkg --purge turnd failed:\n{out}");
        }
    }
}

fn package_installed() -> bool {
    let out = run_with_timeout(cmd("dpkg-query").args(["-W", "-f=${Status}", "turnd"]), Duration::from_secs(30));
    out.stdout.contains("install ok installed")
}

/// `getent DB NAME` split on ':', or None when absent.
fn getent(db: &str, name: &str) -> Option<Vec<String>> {
    let out = run_with_timeout(cmd("getent").args([db, name]), Duration::from_secs(10));
    out.success().then(|| out.stdout.trim().split(':').map(str::to_string).collect())
}

/// Builds the .deb into `out_dir` from a release build; returns its path.
fn build_deb(out_dir: &Path) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    // A no-op when the release binary is fresh; otherwise the one release build CI does.
    let build = run_with_timeout(
        cmd(&cargo).args(["build", "--release", "--bin", "turnd"]).current_dir(repo()),
        Duration::from_secs(20 * 60),
    );
    assert!(build.success(), "cargo build --release failed:\n{build}");
    let deb = run_with_timeout(
        cmd(&cargo).args(["deb", "--no-build", "--fast", "--output"]).arg(out_dir).current_dir(repo()),
        Duration::from_secs(5 * 60),
    );
    assert!(deb.success(), "cargo deb failed:\n{deb}");
    let debs: Vec<PathBuf> = std::fs::read_dir(out_dir)
        .expect("read the deb output dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "expected one .deb in {}: {debs:?}\n{deb}", out_dir.display());
    debs[0].clone()
}

#[test]
fn deb_package_installs_checks_its_config_and_purges_cleanly() {
    // SAFETY: geteuid(2) has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !need(root, "root (dpkg -i)")
        || !need_tool("cargo-deb", "crates.io cargo-deb")
        || !need_tool("dpkg", "dpkg")
        || !need_tool("runuser", "util-linux")
        || !need(!package_installed(), "a machine without a turnd package installed")
    {
        return;
    }
    let dir = TempDir::new("turnd-deb");
    let deb = build_deb(dir.path());
    let contents = run_with_timeout(cmd("dpkg-deb").arg("--contents").arg(&deb), Duration::from_secs(60));
    for path in ["./usr/bin/turnd", "./etc/turnd/turnd.toml", "./usr/lib/systemd/system/turnd.service"] {
        assert!(contents.stdout.contains(path), "{path} is not in the package:\n{contents}");
    }

    // Upgrades hand over live (deploy/debian/postinst): cargo-deb's own snippets must
    // neither stop turnd before an upgrade nor restart it after; they stop it on remove.
    let control = dir.path().join("control");
    let extract = run_with_timeout(cmd("dpkg-deb").arg("-e").arg(&deb).arg(&control), Duration::from_secs(60));
    assert!(extract.success(), "{extract}");
    let postinst = std::fs::read_to_string(control.join("postinst")).expect("the package's postinst");
    assert!(postinst.contains("upgrade --pid") && !postinst.contains("deb-systemd-invoke"), "{postinst}");
    let prerm = std::fs::read_to_string(control.join("prerm")).expect("the package's prerm");
    assert!(prerm.contains(r#"[ "$1" = remove ]"#) && prerm.contains("deb-systemd-invoke stop"), "{prerm}");

    let _purge = PurgeOnDrop;
    let install = run_with_timeout(cmd("dpkg").arg("-i").arg(&deb), Duration::from_secs(120));
    assert!(install.success(), "dpkg -i failed:\n{install}");

    // The binary, and the unit exactly as in the repository.
    let version = run_with_timeout(cmd("/usr/bin/turnd").arg("--version"), Duration::from_secs(10));
    assert!(version.stdout.contains(env!("CARGO_PKG_VERSION")), "{version}");
    let installed_unit = std::fs::read_to_string("/usr/lib/systemd/system/turnd.service").expect("the installed unit");
    assert_eq!(installed_unit, read(UNIT), "the installed unit differs from {UNIT}");
    if tool_on_path("systemd-analyze") {
        // Now /usr/bin/turnd exists, the unit verifies as shipped.
        let (ok, complaints) = verify_complaints(Path::new("/usr/lib/systemd/system/turnd.service"));
        assert!(ok && complaints.is_empty(), "the installed unit does not verify:\n{}", complaints.join("\n"));
    }
    // Installed, not enabled: the operator sets a secret first.
    assert!(!Path::new("/etc/systemd/system/multi-user.target.wants/turnd.service").exists());

    // A system user with no home and no shell.
    let user = getent("passwd", "turnd").expect("postinst created the turnd user");
    let uid: u32 = user[2].parse().expect("a numeric uid");
    assert!(uid < 1000, "turnd is not a system user: {user:?}");
    assert_eq!(user[6], "/usr/sbin/nologin", "{user:?}");
    assert!(!Path::new(&user[5]).exists(), "the home {} was created", user[5]);
    let gid: u32 = getent("group", "turnd").expect("the turnd group")[2].parse().expect("a numeric gid");

    // The config holds secrets: root:turnd 0640, readable by the service and no one else.
    let config = Path::new("/etc/turnd/turnd.toml");
    let meta = std::fs::metadata(config).expect("the installed config");
    assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o777), (0, gid, 0o640), "owner, group and mode of {config:?}");
    let as_turnd = run_with_timeout(
        cmd("runuser").args(["-u", "turnd", "--", "/usr/bin/turnd", "check-config"]).arg(config),
        Duration::from_secs(20),
    );
    assert!(as_turnd.success() && as_turnd.stdout.contains(": OK"), "check-config as the turnd user:\n{as_turnd}");
    let as_nobody =
        run_with_timeout(cmd("runuser").args(["-u", "nobody", "--", "cat"]).arg(config), Duration::from_secs(20));
    assert!(!as_nobody.success(), "another user can read the config:\n{as_nobody}");

    // Reinstalling (as an upgrade does) keeps a locally edited config and its mode.
    let edited = format!("{}\n# edited by the operator\n", std::fs::read_to_string(config).unwrap());
    std::fs::write(config, &edited).expect("edit the config");
    let again = run_with_timeout(cmd("dpkg").args(["-i", "--force-confold"]).arg(&deb), Duration::from_secs(120));
    assert!(again.success(), "reinstall failed:\n{again}");
    assert_eq!(std::fs::read_to_string(config).unwrap(), edited, "the reinstall overwrote the edited config");
    let meta = std::fs::metadata(config).unwrap();
    assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o777), (0, gid, 0o640), "after reinstall");
    let checked = run_with_timeout(cmd("/usr/bin/turnd").arg("check-config").arg(config), Duration::from_secs(20));
    assert!(checked.success(), "{checked}");

    // Purge leaves nothing behind.
    let purge = run_with_timeout(cmd("dpkg").args(["--purge", "turnd"]), Duration::from_secs(120));
    assert!(purge.success(), "dpkg --purge failed:\n{purge}");
    for gone in ["/usr/bin/turnd", "/etc/turnd", "/usr/lib/systemd/system/turnd.service"] {
        assert!(!Path::new(gone).exists(), "{gone} is left after purge");
    }
    assert!(getent("passwd", "turnd").is_none(), "the turnd user is left after purge");
    assert!(getent("group", "turnd").is_none(), "the turnd group is left after purge");
    let overrides = run_with_timeout(cmd("dpkg-statoverride").arg("--list"), Duration::from_secs(10));
    assert!(!overrides.stdout.contains("/etc/turnd"), "a statoverride is left:\n{overrides}");
    assert!(!package_installed());
}

/// What the package's postinst asked of `systemctl` and `turnd` in one scenario.
struct PostinstRun {
    calls: Vec<String>,
    output: CmdOutput,
}

/// Runs `deploy/debian/postinst configure <from_version>` against fakes: `systemctl`
/// and `/usr/bin/turnd` record their arguments, `systemctl is-active` answers from
/// `active`, `systemctl show -p MainPID` from a pid file that the fake `turnd upgrade`
/// changes as the old turnd's `MAINPID=` would when `upgrade` is "hands-over" (it
/// exits 1 for "refused", as `turnd upgrade` does for a turnd without the feature, and
/// 0 without a new pid for "stalls", a handover that fails after the signal).
/// `getent` and `dpkg-statoverride` report the user and the override as present.
fn run_postinst(from_version: &str, active: bool, upgrade: &str) -> PostinstRun {
    let dir = TempDir::new("turnd-postinst");
    let bin = dir.path().join("bin");
    let run_systemd = dir.path().join("run-systemd-system");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&run_systemd).unwrap();
    let log = dir.path().join("calls.log");
    let pid_file = dir.path().join("mainpid");
    std::fs::write(&pid_file, "4100\n").unwrap();
    let script = |name: &str, body: &str| {
        let path = bin.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    };
    let log_s = log.display();
    let pid_s = pid_file.display();
    script(
        "systemctl",
        &format!(
            r#"echo "systemctl $*" >> {log_s}
case "$*" in
  *is-active*) [ "{active}" = true ] ;;
  *"show -p MainPID --value"*) cat {pid_s} ;;
  *) exit 0 ;;
esac"#
        ),
    );
    let upgrade_action = match upgrade {
        "hands-over" => format!("echo 4242 > {pid_s}; exit 0"),
        "refused" => "echo 'turnd (pid 4100) does not handle SIGUSR2' >&2; exit 1".to_string(),
        "stalls" => "exit 0".to_string(),
        other => panic!("unknown scenario {other}"),
    };
    script("turnd", &format!("echo \"turnd $*\" >> {log_s}\n{upgrade_action}"));
    script("getent", "exit 0");
    script("dpkg-statoverride", "exit 0");

    // The script as shipped, but for the paths a test cannot own and a shorter wait.
    let shipped = read("deploy/debian/postinst");
    for needle in ["/run/systemd/system", "/usr/bin/turnd upgrade", "upgrade_wait=20"] {
        assert!(shipped.contains(needle), "deploy/debian/postinst no longer has {needle:?}");
    }
    let text = shipped
        .replace("/run/systemd/system", &run_systemd.display().to_string())
        .replace("/usr/bin/turnd upgrade", &format!("{} upgrade", bin.join("turnd").display()))
        .replace("upgrade_wait=20", "upgrade_wait=2");
    let postinst = dir.write("postinst", &text);
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut args = vec!["configure"];
    if !from_version.is_empty() {
        args.push(from_version);
    }
    let output = run_with_timeout(cmd("sh").arg(&postinst).args(&args).env("PATH", path), Duration::from_secs(30));
    assert!(output.success(), "postinst failed:\n{output}");
    let calls = std::fs::read_to_string(&log).unwrap_or_default().lines().map(str::to_string).collect();
    PostinstRun { calls, output }
}

impl PostinstRun {
    fn asked(&self, call: &str) -> bool {
        self.calls.iter().any(|c| c == call)
    }
}

#[test]
fn package_upgrade_hands_over_live_and_restarts_only_when_that_fails() {
    // Upgrade, turnd running, the handover succeeds: no restart.
    let run = run_postinst("0.1.0-1", true, "hands-over");
    assert!(run.asked("turnd upgrade --pid 4100"), "{:?}\n{}", run.calls, run.output);
    assert!(!run.calls.iter().any(|c| c.contains("restart")), "restarted after a handover: {:?}", run.calls);
    assert!(run.output.stdout.contains("pid 4100 -> 4242"), "{}", run.output);

    // A running turnd without live upgrades: `turnd upgrade` refuses to signal it; restart.
    let run = run_postinst("0.1.0-1", true, "refused");
    assert!(run.asked("turnd upgrade --pid 4100"), "{:?}", run.calls);
    assert!(run.asked("systemctl try-restart turnd.service"), "{:?}\n{}", run.calls, run.output);

    // Signalled, but no new main pid in time (the successor refused or failed): restart.
    let run = run_postinst("0.1.0-1", true, "stalls");
    assert!(run.asked("systemctl try-restart turnd.service"), "{:?}\n{}", run.calls, run.output);
    assert!(run.output.stderr.contains("did not complete"), "{}", run.output);

    // Unit not running: neither signal nor restart.
    let run = run_postinst("0.1.0-1", false, "hands-over");
    assert!(run.asked("systemctl is-active --quiet turnd.service"), "{:?}", run.calls);
    assert!(!run.calls.iter().any(|c| c.starts_with("turnd") || c.contains("restart")), "{:?}", run.calls);

    // A first install (no previous version): nothing is started or signalled.
    let run = run_postinst("", true, "hands-over");
    assert!(run.calls.is_empty(), "a first install touched the service: {:?}", run.calls);
}

// ---------------------------------------------------------------------------------------
// Prometheus

const ALERTS: &str = "deploy/prometheus/turnd-alerts.yml";

/// `alert:` names in the rules file.
fn alert_names() -> Vec<String> {
    read(ALERTS).lines().filter_map(|l| l.trim().strip_prefix("- alert:").map(|n| n.trim().to_string())).collect()
}

#[test]
fn prometheus_config_and_alert_rules_pass_promtool() {
    if !need_tool("promtool", "prometheus") {
        return;
    }
    let run = |args: &[&str]| {
        let out = run_with_timeout(cmd("promtool").args(args).current_dir(repo()), Duration::from_secs(120));
        assert!(out.success(), "promtool {args:?} failed:\n{out}");
        out.all()
    };
    let config = run(&["check", "config", "deploy/prometheus/prometheus.yml"]);
    assert!(config.contains("1 rule files found"), "prometheus.yml does not load the rules:\n{config}");
    let rules = run(&["check", "rules", ALERTS]);
    let names = alert_names();
    assert!(rules.contains(&format!("SUCCESS: {} rules found", names.len())), "{rules}");
    for wanted in [
        "TurndDown",
        "TurndRelayPortsNearlyExhausted",
        "TurndAuthFailureSpike",
        "TurndAllocationFailures",
        "TurndHighDropRate",
    ] {
        assert!(names.iter().any(|n| n == wanted), "no {wanted} alert in {ALERTS}: {names:?}");
    }
    // Every alert has a unit test in which it fires.
    let tests = read("deploy/prometheus/turnd-alerts.test.yml");
    for name in &names {
        let fires = tests.split("alertname: ").skip(1).any(|case| {
            case.starts_with(&format!("{name}\n")) && case.lines().nth(1).is_some_and(|l| !l.contains("exp_alerts: []"))
        });
        assert!(fires, "no test case in turnd-alerts.test.yml expects {name} to fire");
    }
    run(&["test", "rules", "deploy/prometheus/turnd-alerts.test.yml"]);
}

#[test]
fn metrics_named_in_alerts_and_dashboard_are_exported_by_turnd() {
    let turnd = TurndProcess::start(&config_with_admin(), &[]);
    let metrics = scrape(&turnd);
    let exported = exported_series(&metrics);
    assert!(exported.contains("turnd_allocations"), "no turnd_allocations in /metrics:\n{metrics}");
    for (file, at_least) in [(ALERTS, 6), ("deploy/grafana/turnd.json", 15)] {
        let used = metric_names_in(&read(file));
        assert!(used.len() >= at_least, "{file} uses only {} metrics: {used:?}", used.len());
        let missing: Vec<_> = used.difference(&exported).collect();
        assert!(missing.is_empty(), "{file} uses metrics turnd does not export: {missing:?}\nexported: {exported:?}");
    }
    if tool_on_path("promtool") {
        // The exposition itself passes Prometheus' own linter.
        let dir = TempDir::new("turnd-metrics");
        let file = dir.write("metrics.txt", &metrics);
        let out = run_with_timeout(
            cmd("sh").arg("-c").arg("promtool check metrics < \"$1\"").arg("sh").arg(&file),
            Duration::from_secs(30),
        );
        assert!(out.success(), "promtool check metrics:\n{out}");
    }
}

/// A Prometheus server, killed when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus with `config` on a free loopback port; waits until ready.
    fn start(config: &str) -> Prometheus {
        let dir = TempDir::new("turnd-prometheus");
        let file = dir.write("prometheus.yml", config);
        let data = dir.path().join("data");
        for attempt in 1..=3 {
            // A port that was free a moment ago; if another process takes it first,
            // Prometheus exits and we try another.
            let addr = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free loopback port");
            let log = std::fs::File::create(dir.path().join(format!("prometheus-{attempt}.log"))).expect("a log file");
            let mut child = cmd("prometheus")
                .arg(format!("--config.file={}", file.display()))
                .arg(format!("--storage.tsdb.path={}", data.display()))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--log.level=warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone the log file"))
                .stderr(log)
                .spawn()
                .expect("spawn prometheus");
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if matches!(http_get(addr, "/-/ready"), Ok((200, _))) {
                    return Prometheus { child, addr, _dir: dir };
                }
                thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(dir.path().join(format!("prometheus-{attempt}.log"))).unwrap_or_default();
            eprintln!("prometheus attempt {attempt} on {addr} did not become ready:\n{log}");
        }
        panic!("prometheus did not start in 3 attempts");
    }

    /// `/api/v1/...` as JSON, `status` checked.
    fn api(&self, path: &str) -> Value {
        let (status, body) = http_get(self.addr, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"));
        assert_eq!((status, v["status"].as_str()), (200, Some("success")), "GET {path}: {body}");
        v
    }

    /// The instant vector for `query`, as (labels, value) pairs.
    fn query(&self, query: &str) -> Vec<(Value, f64)> {
        let v = self.api(&format!("/api/v1/query?query={}", url_encode(query)));
        v["data"]["result"]
            .as_array()
            .expect("a vector result")
            .iter()
            .map(|r| (r["metric"].clone(), r["value"][1].as_str().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN)))
            .collect()
    }

    /// Polls `query` until `done` accepts the result, at most `timeout`; returns the last.
    fn query_until(&self, query: &str, timeout: Duration, done: impl Fn(&[(Value, f64)]) -> bool) -> Vec<(Value, f64)> {
        let deadline = Instant::now() + timeout;
        loop {
            let result = self.query(query);
            if done(&result) || Instant::now() >= deadline {
                return result;
            }
            thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own, not yet reaped child.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_server_scrapes_turnd_and_evaluates_the_alert_rules() {
    if !need_tool("prometheus", "prometheus") {
        return;
    }
    let turnd = TurndProcess::start(&config_with_admin(), &[]);
    const BINDINGS: usize = 3;
    for _ in 0..BINDINGS {
        stun_binding(turnd.udp_addr());
    }
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         rule_files:\n  - {rules}\n\
         scrape_configs:\n  - job_name: turnd\n    static_configs:\n      - targets: [\"{admin}\"]\n",
        rules = repo().join(ALERTS).display(),
        admin = turnd.addr("admin"),
    );
    let prometheus = Prometheus::start(&config);

    let up = prometheus.query_until("up{job=\"turnd\"}", Duration::from_secs(30), |r| r.iter().any(|(_, v)| *v == 1.0));
    assert_eq!(up.len(), 1, "one turnd target: {up:?}");
    assert_eq!(up[0].1, 1.0, "Prometheus cannot scrape turnd: {up:?}");

    let series = "turnd_requests_total{job=\"turnd\", method=\"binding\", result=\"success\"}";
    let result = prometheus
        .query_until(series, Duration::from_secs(30), |r| r.first().is_some_and(|(_, v)| *v >= BINDINGS as f64));
    eprintln!("Prometheus saw {series} = {result:?}");
    assert_eq!(result.len(), 1, "{series}: {result:?}");
    assert_eq!(result[0].1, BINDINGS as f64, "{series} after {BINDINGS} Binding requests");

    let version = prometheus.query("turnd_build_info{job=\"turnd\"}");
    assert_eq!(version.len(), 1, "{version:?}");
    assert_eq!(version[0].0["version"], env!("CARGO_PKG_VERSION"));

    // The shipped rules evaluate against real turnd series without errors, and none
    // fires for a healthy node.
    let deadline = Instant::now() + Duration::from_secs(30);
    let rules = loop {
        let v = prometheus.api("/api/v1/rules");
        let rules: Vec<Value> = v["data"]["groups"]
            .as_array()
            .expect("rule groups")
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let evaluated = |r: &Value| r["lastEvaluation"].as_str().is_some_and(|t| !t.starts_with("0001-"));
        if (!rules.is_empty() && rules.iter().all(evaluated)) || Instant::now() >= deadline {
            break rules;
        }
        thread::sleep(Duration::from_millis(250));
    };
    let names: BTreeSet<String> = rules.iter().filter_map(|r| r["name"].as_str().map(str::to_string)).collect();
    assert_eq!(names, alert_names().into_iter().collect::<BTreeSet<_>>(), "rules loaded by the server");
    for rule in &rules {
        assert_eq!(rule["health"], "ok", "rule {} does not evaluate: {rule}", rule["name"]);
        assert_eq!(rule["state"], "inactive", "rule {} is not quiet on a healthy node: {rule}", rule["name"]);
    }
}

// ---------------------------------------------------------------------------------------
// Grafana

#[test]
fn grafana_dashboard_is_well_formed() {
    let text = read("deploy/grafana/turnd.json");
    let dashboard: Value = serde_json::from_str(&text).expect("deploy/grafana/turnd.json is valid JSON");
    assert_eq!(dashboard["title"], "turnd");
    assert!(
        dashboard["uid"].as_str().is_some_and(|u| !u.is_empty() && u.len() <= 40),
        "a uid of at most 40 characters"
    );
    let variables: BTreeSet<&str> = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut cells: BTreeMap<(u64, u64), String> = BTreeMap::new();
    let mut queries = 0;
    for p in panels {
        let title = p["title"].as_str().expect("every panel has a title");
        assert!(ids.insert(p["id"].as_u64().expect("a numeric id")), "duplicate panel id in {title}");
        let g = &p["gridPos"];
        let (x, y, w, h) = (g["x"].as_u64(), g["y"].as_u64(), g["w"].as_u64(), g["h"].as_u64());
        let (Some(x), Some(y), Some(w), Some(h)) = (x, y, w, h) else { panic!("{title}: gridPos {g}") };
        assert!(w >= 1 && x + w <= 24, "{title} is outside the 24-column grid");
        for cx in x..x + w {
            for cy in y..y + h {
                if let Some(other) = cells.insert((cx, cy), title.to_string()) {
                    panic!("panels {other:?} and {title:?} overlap at ({cx}, {cy})");
                }
            }
        }
        if p["type"] == "row" {
            continue;
        }
        assert!(["timeseries", "stat"].contains(&p["type"].as_str().unwrap_or("")), "{title}: type {}", p["type"]);
        let targets =
            p["targets"].as_array().filter(|t| !t.is_empty()).unwrap_or_else(|| panic!("{title} has no targets"));
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_else(|| panic!("{title}: a target without expr"));
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}: target data source");
            // Every $variable an expression uses is defined (Grafana's own are $__...).
            for var in expr
                .split('$')
                .skip(1)
                .map(|s| s.split(|c: char| !c.is_ascii_alphanumeric() && c != '_').next().unwrap_or(""))
            {
                assert!(
                    var.starts_with("__") || variables.contains(var),
                    "{title}: ${var} is not a dashboard variable"
                );
            }
            queries += 1;
        }
    }
    assert!(queries >= 20, "only {queries} queries");
}

// ---------------------------------------------------------------------------------------
// Kubernetes

const MANIFESTS: [&str; 4] = [
    "deploy/kubernetes/namespace.yaml",
    "deploy/kubernetes/configmap.yaml",
    "deploy/kubernetes/secret.yaml",
    "deploy/kubernetes/daemonset.yaml",
];

/// The fleet (`deploy/kubernetes/fleet/`): applied with the namespace and REST secret above.
const FLEET_MANIFESTS: [&str; 3] = [
    "deploy/kubernetes/fleet/configmap.yaml",
    "deploy/kubernetes/fleet/daemonset.yaml",
    "deploy/kubernetes/fleet/redis.yaml",
];

/// The resources in [`FLEET_MANIFESTS`] (redis.yaml holds a Deployment and a Service).
const FLEET_RESOURCES: usize = 4;

/// The `.yaml` files directly in `dir` (relative to the repository).
fn yaml_files_in(dir: &str) -> BTreeSet<String> {
    std::fs::read_dir(repo().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|e| e.ok())
        .map(|e| format!("{dir}/{}", e.file_name().to_string_lossy()))
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .collect()
}

fn kubernetes_validate_available() -> bool {
    python_module_available("kubernetes_validate")
}

#[test]
fn kubernetes_manifests_validate_against_the_api_schemas() {
    if !need(kubernetes_validate_available(), "Python kubernetes-validate (PyPI)") {
        return;
    }
    let listed = yaml_files_in("deploy/kubernetes");
    assert_eq!(listed, MANIFESTS.iter().map(|s| s.to_string()).collect(), "MANIFESTS is out of date");
    let fleet = yaml_files_in("deploy/kubernetes/fleet");
    assert_eq!(fleet, FLEET_MANIFESTS.iter().map(|s| s.to_string()).collect(), "FLEET_MANIFESTS is out of date");
    let validate = |files: &[PathBuf]| {
        run_with_timeout(
            cmd(&python()).args(["-m", "kubernetes_validate", "--strict"]).args(files),
            Duration::from_secs(120),
        )
    };
    let out = validate(&MANIFESTS.map(|m| repo().join(m)));
    assert!(out.success(), "kubernetes-validate:\n{out}");
    assert_eq!(out.all().matches(" passed for resource ").count(), MANIFESTS.len(), "{out}");
    let out = validate(&FLEET_MANIFESTS.map(|m| repo().join(m)));
    assert!(out.success(), "kubernetes-validate (fleet):\n{out}");
    assert_eq!(out.all().matches(" passed for resource ").count(), FLEET_RESOURCES, "{out}");

    // The validator has teeth: a misspelt field fails.
    let tmp = TempDir::new("turnd-k8s");
    let broken =
        tmp.write("daemonset.yaml", &read("deploy/kubernetes/daemonset.yaml").replace("hostNetwork:", "hostNetwrok:"));
    let out = validate(&[broken]);
    assert!(!out.success(), "kubernetes-validate accepted a misspelt field:\n{out}");
}

/// All documents of the manifests as JSON (YAML read by Python's PyYAML, which
/// kubernetes-validate brings).
fn manifests_as_json() -> Vec<Value> {
    yaml_documents(&MANIFESTS)
}

/// All documents of `files` (relative to the repository) as JSON.
fn yaml_documents(files: &[&str]) -> Vec<Value> {
    let script = "import json, sys, yaml\n\
                  json.dump([d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d], sys.stdout)";
    let out = run_with_timeout(
        cmd(&python()).arg("-c").arg(script).args(files.iter().map(|m| repo().join(m))),
        Duration::from_secs(60),
    );
    assert!(out.success(), "reading the manifests:\n{out}");
    serde_json::from_str(&out.stdout).expect("JSON from the YAML manifests")
}

fn find_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind} in the manifests"))
}

/// `env` of a container as name → value.
fn env_of(container: &Value) -> BTreeMap<String, String> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["name"].as_str()?.to_string(), e["value"].as_str().unwrap_or("").to_string())))
        .collect()
}

#[test]
fn kubernetes_init_container_renders_a_config_turnd_accepts() {
    if !need(python_module_available("yaml"), "Python PyYAML (comes with kubernetes-validate)") {
        return;
    }
    let docs = manifests_as_json();
    let template =
        find_kind(&docs, "ConfigMap")["data"]["turnd.toml"].as_str().expect("ConfigMap data turnd.toml").to_string();
    let pod = &find_kind(&docs, "DaemonSet")["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    let init = &pod["initContainers"][0];
    let main = &pod["containers"][0];
    assert_eq!(init["image"], main["image"], "init and main containers run the same image");
    let script = init["args"][0].as_str().expect("the init script").to_string();
    let (init_env, main_env) = (env_of(init), env_of(main));
    assert_eq!(init_env["TURND_CONFIG"], main_env["TURND_CONFIG"], "the main container reads what init writes");
    assert_eq!(main["args"], serde_json::json!(["serve"]));
    // The rendered file's directory is the same volume in both containers.
    let run_dir = Path::new(&main_env["TURND_CONFIG"]).parent().unwrap().to_str().unwrap().to_string();
    let volume_at = |c: &Value| {
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == run_dir.as_str())
            .map(|m| m["name"].clone())
    };
    assert!(volume_at(init).is_some() && volume_at(init) == volume_at(main), "{run_dir} is not shared");
    // Scrape annotations point at the admin port the template listens on.
    let annotations = &find_kind(&docs, "DaemonSet")["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    let port = annotations["prometheus.io/port"].as_str().expect("a scrape port");
    assert!(template.contains(&format!("\"@HOST_IP@:{port}\"")), "the admin listener is not on port {port}");

    // The probes reach the admin listener without a token: off loopback only /healthz,
    // /readyz and /metrics answer without one (and only they are served from the
    // reserve when every admin connection is in use).
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &main[probe]["httpGet"];
        assert_eq!(get["port"].to_string(), port, "{probe} port");
        assert_eq!(get["path"], path, "{probe}: other admin paths need the token off loopback");
    }

    // Run the init script here, with the binary under test as `turnd` on PATH.
    let dir = TempDir::new("turnd-k8s-init");
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(std::fs::canonicalize(turnd_binary()).unwrap(), bin.join("turnd")).unwrap();
    let template_file = dir.write("template.toml", &template);
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let render = |host_ip: &str, secrets: &str| {
        let secrets_file = dir.write("rest-secrets", secrets);
        let config = dir.path().join("turnd.toml");
        let _ = std::fs::remove_file(&config);
        let out = run_with_timeout(
            cmd("/bin/sh")
                .arg("-c")
                .arg(&script)
                .env("PATH", &path)
                .env("HOST_IP", host_ip)
                .env("TURND_TEMPLATE", &template_file)
                .env("TURND_SECRETS_FILE", &secrets_file)
                .env("TURND_CONFIG", &config),
            Duration::from_secs(30),
        );
        (out, std::fs::read_to_string(&config).unwrap_or_default())
    };

    let (out, config) = render("192.0.2.10", "bmV3LXNlY3JldA==\n\nold.secret_2\n");
    assert!(out.success(), "the init script failed:\n{out}");
    assert!(config.contains("secrets = [\"bmV3LXNlY3JldA==\", \"old.secret_2\"]"), "{config}");
    assert!(config.contains("address = \"192.0.2.10:9641\""), "{config}");
    let check = run_with_timeout(
        cmd(&turnd_binary()).arg("check-config").arg(dir.path().join("turnd.toml")),
        Duration::from_secs(20),
    );
    assert!(check.success(), "{check}");
    // The kubelet waits out the drain before SIGKILL.
    let grace =
        Duration::from_secs(pod["terminationGracePeriodSeconds"].as_u64().expect("terminationGracePeriodSeconds"));
    let drain = effective_drain_time(&check.stdout);
    assert!(
        grace >= drain + Duration::from_secs(10),
        "terminationGracePeriodSeconds {grace:?} vs drain-time {drain:?}"
    );

    let (out, config) = render("2001:db8::10", "s3cret");
    assert!(out.success(), "IPv6 node:\n{out}");
    assert!(config.contains("address = \"[2001:db8::10]:9641\""), "{config}");

    // The shipped placeholder, a secret that would break TOML, and no secret at all
    // stop the pod before turnd starts.
    let placeholder =
        find_kind(&docs, "Secret")["stringData"]["rest-secrets"].as_str().expect("the Secret's rest-secrets");
    for (secrets, why) in [(placeholder, "REST secret"), ("a\"b", "may hold only"), ("\n", "no REST secret")] {
        let (out, _) = render("192.0.2.10", secrets);
        assert!(
            !out.success() && out.stderr.contains(why),
            "secrets {secrets:?} were accepted or the message is unclear:\n{out}"
        );
    }
}

/// `valueFrom` of the env var `name` of a container (`null` when it has none).
fn env_source(container: &Value, name: &str) -> Value {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == name)
        .map_or(Value::Null, |e| e["valueFrom"].clone())
}

/// A child process killed on drop (Redis run from its manifest's script).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_cli(port: u16, password: Option<&str>, args: &[&str]) -> String {
    let mut c = cmd("redis-cli");
    c.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if let Some(password) = password {
        c.args(["-a", password, "--no-auth-warning"]);
    }
    run_with_timeout(c.args(args), Duration::from_secs(10)).all().trim().to_string()
}

#[test]
fn kubernetes_fleet_renders_a_config_that_joins_redis_with_its_node_name_and_discovered_address() {
    if !need(python_module_available("yaml"), "Python PyYAML (comes with kubernetes-validate)") {
        return;
    }
    let docs = yaml_documents(&FLEET_MANIFESTS);
    let base = manifests_as_json();
    let config_map = find_kind(&docs, "ConfigMap");
    let template = config_map["data"]["turnd.toml"].as_str().expect("ConfigMap data turnd.toml").to_string();
    let pod = &find_kind(&docs, "DaemonSet")["spec"]["template"]["spec"];
    assert_eq!((&pod["hostNetwork"], &pod["dnsPolicy"]), (&Value::Bool(true), &Value::from("ClusterFirstWithHostNet")));
    let volumes = pod["volumes"].as_array().expect("volumes");
    let uses = |what: &str, field: &str, name: &Value| volumes.iter().any(|v| v[what][field] == *name);
    assert!(
        uses("configMap", "name", &config_map["metadata"]["name"]),
        "the DaemonSet does not mount the fleet ConfigMap"
    );
    let rest_secret = &find_kind(&base, "Secret")["metadata"]["name"];
    assert!(uses("secret", "secretName", rest_secret), "the DaemonSet does not mount the REST Secret {rest_secret}");
    let (init, main) = (&pod["initContainers"][0], &pod["containers"][0]);
    assert_eq!(env_source(init, "NODE_NAME")["fieldRef"]["fieldPath"], "spec.nodeName");
    assert_eq!(env_source(init, "HOST_IP")["fieldRef"]["fieldPath"], "status.hostIP");
    assert_eq!(main["readinessProbe"]["httpGet"]["path"], "/readyz");
    // The config names the Redis Service, and both sides read one Secret.
    let service = find_kind(&docs, "Service");
    let url = format!(
        "redis = \"redis://{}.{}.svc.cluster.local:{}/0\"",
        service["metadata"]["name"].as_str().unwrap(),
        service["metadata"]["namespace"].as_str().unwrap(),
        service["spec"]["ports"][0]["port"]
    );
    assert!(template.contains(&url), "the config does not name the Redis Service: {url}");
    let redis = &find_kind(&docs, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    let password_ref = env_source(main, "TURND_REDIS_PASSWORD")["secretKeyRef"].clone();
    assert!(password_ref.is_object(), "turnd gets no Redis password");
    assert_eq!(
        password_ref,
        env_source(redis, "REDIS_PASSWORD")["secretKeyRef"],
        "turnd and Redis read other passwords"
    );

    // Run the init script here, with the binary under test as `turnd` on PATH.
    let dir = TempDir::new("turnd-k8s-fleet");
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(std::fs::canonicalize(turnd_binary()).unwrap(), bin.join("turnd")).unwrap();
    let template_file = dir.write("template.toml", &template);
    let secrets_file = dir.write("rest-secrets", "bmV3LXNlY3JldA==\n");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let script = init["args"][0].as_str().expect("the init script").to_string();
    let render = |node: &str, front: &str| {
        let config = dir.path().join("turnd.toml");
        let _ = std::fs::remove_file(&config);
        let out = run_with_timeout(
            cmd("/bin/sh")
                .arg("-c")
                .arg(&script)
                .env("PATH", &path)
                .env("HOST_IP", "192.0.2.10")
                .env("NODE_NAME", node)
                .env("TURND_FRONT", front)
                .env("TURND_TEMPLATE", &template_file)
                .env("TURND_SECRETS_FILE", &secrets_file)
                .env("TURND_CONFIG", &config),
            Duration::from_secs(30),
        );
        (out, std::fs::read_to_string(&config).unwrap_or_default())
    };
    let (out, config) = render("node-a.example", "false");
    assert!(out.success(), "the fleet init script failed (it runs turnd check-config):\n{out}");
    for wanted in
        ["node-id = \"node-a.example\"", "front = false", "address = \"192.0.2.10:9641\"", "external-ipv4 = \"auto\""]
    {
        assert!(config.contains(wanted), "the rendered config lacks {wanted:?}:\n{config}");
    }
    let (out, front) = render("node-b", "true");
    assert!(out.success() && front.contains("front = true"), "a front node's config:\n{out}");
    for (node, flag, why) in [("Node A", "false", "not a usable node id"), ("node-a", "yes", "must be true or false")] {
        let (out, _) = render(node, flag);
        assert!(!out.success() && out.stderr.contains(why), "NODE_NAME {node:?} TURND_FRONT {flag:?}:\n{out}");
    }

    // And the rendered config runs: Redis from its manifest's script (on loopback,
    // an ephemeral port), a turnd as the STUN server, and the node joins the registry
    // under its node name, advertising the discovered address (a node without
    // "auto" and without advertise-ipv4 would publish none).
    if !need_tool("redis-server", "redis-server") || !need_tool("redis-cli", "redis-tools") {
        return;
    }
    let redis_port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let redis_script = redis["args"][0].as_str().expect("the Redis script");
    let on_loopback = redis_script.replace("--port 6379", &format!("--port {redis_port} --bind 127.0.0.1"));
    assert_ne!(on_loopback, redis_script, "the Redis script no longer says --port 6379");
    let password = "cGFzc3dvcmQrLz0K+/=";
    let _redis = Killed(
        cmd("/bin/sh")
            .arg("-c")
            .arg(&on_loopback)
            .env("REDIS_PASSWORD", password)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server"),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while redis_cli(redis_port, Some(password), &["ping"]) != "PONG" {
        assert!(Instant::now() < deadline, "Redis from redis.yaml's script did not answer PING with its password");
        thread::sleep(Duration::from_millis(100));
    }
    // The script execs redis-server: it is the container's main process (SIGTERM
    // reaches it, and killing the child here leaves nothing behind).
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", _redis.0.id())).unwrap_or_default();
    assert_eq!(comm.trim(), "redis-server", "the Redis script does not exec redis-server");
    let refused = redis_cli(redis_port, None, &["ping"]);
    assert!(refused.contains("NOAUTH"), "Redis answered without the password: {refused}");

    let stun = TurndProcess::with_transports(&["udp"]);
    let (min, max) = relay_port_range();
    let mut local = config.clone();
    for (from, to) in [
        ("redis://turnd-redis.turnd.svc.cluster.local:6379/0".to_string(), format!("redis://127.0.0.1:{redis_port}/0")),
        ("stun.example.net:3478".into(), stun.udp_addr().to_string()),
        ("192.0.2.10:9641".into(), "127.0.0.1:0".into()),
        ("0.0.0.0:3478".into(), "127.0.0.1:0".into()),
        ("port-min = 49152".into(), format!("port-min = {min}")),
        ("port-max = 65535".into(), format!("port-max = {max}")),
    ] {
        assert!(local.contains(&from), "the rendered config no longer has {from:?}");
        local = local.replace(&from, &to);
    }
    let env = [("TURND_REDIS_PASSWORD".to_string(), std::ffi::OsString::from(password))];
    let node = TurndProcess::start_with_env(&local, &["--port", "0"], &env);
    let wanted = format!("127.0.0.1:{}", node.udp_addr().port());
    let deadline = Instant::now() + Duration::from_secs(20);
    let entry = loop {
        let entry = redis_cli(redis_port, Some(password), &["GET", "turnd:node:node-a.example"]);
        let parsed: Option<Value> = serde_json::from_str(&entry).ok();
        if parsed.as_ref().is_some_and(|e| e["ipv4"] == wanted.as_str()) || Instant::now() >= deadline {
            break entry;
        }
        thread::sleep(Duration::from_millis(200));
    };
    assert!(
        entry.contains(&format!("\"ipv4\":\"{wanted}\"")),
        "node-a.example is not in the registry advertising {wanted}: {entry:?}\nlog tail:\n{}",
        node.logs_tail(40)
    );
    // Ready once its event loops report (the kubelet's readiness probe).
    let deadline = Instant::now() + Duration::from_secs(20);
    let ready = loop {
        let ready = http_get(node.admin_addr(), "/readyz");
        if matches!(ready, Ok((200, _))) || Instant::now() >= deadline {
            break ready;
        }
        thread::sleep(Duration::from_millis(200));
    };
    assert!(matches!(ready, Ok((200, _))), "/readyz: {ready:?}\nlog tail:\n{}", node.logs_tail(40));
}

#[test]
fn turnd_serve_reads_its_config_from_turnd_config() {
    // The DaemonSet and the Dockerfile run plain `turnd serve` with TURND_CONFIG set.
    let dir = TempDir::new("turnd-env");
    let config = dir.write("turnd.toml", &config_with_admin().replace("enabled = true", "enabled = false"));
    let mut child = cmd(&turnd_binary())
        .arg("serve")
        .env("TURND_CONFIG", &config)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn turnd");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    let listening = loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                let found = parse_listening(&line);
                seen.push(line);
                if let Some(found) = found {
                    break Some(found);
                }
            }
            Err(_) => break None,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
    let (transport, addr) = listening.unwrap_or_else(|| panic!("turnd did not listen:\n{}", seen.join("\n")));
    assert_eq!(transport, "udp");
    assert!(addr.ip().is_loopback() && addr.port() != 0, "listening on {addr}: not the TURND_CONFIG file's listener");
}

// ---------------------------------------------------------------------------------------
// Dockerfile (no Docker engine here: checked by reading)

/// Dockerfile instructions as (INSTRUCTION, arguments), continuation lines joined.
fn dockerfile_instructions() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in read("Dockerfile").lines() {
        let t = line.trim();
        if current.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if let Some(body) = t.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
            continue;
        }
        current.push_str(t);
        let (op, args) = current.split_once(char::is_whitespace).unwrap_or((&current, ""));
        out.push((op.to_uppercase(), args.trim().to_string()));
        current.clear();
    }
    out
}

#[test]
fn dockerfile_builds_locked_and_runs_non_root_on_debian_slim() {
    let steps = dockerfile_instructions();
    let froms: Vec<usize> = steps.iter().enumerate().filter(|(_, (op, _))| op == "FROM").map(|(i, _)| i).collect();
    assert!(froms.len() >= 2, "not a multi-stage build");
    let last = *froms.last().unwrap();
    let runtime = &steps[last..];
    assert!(steps[last].1.starts_with("debian:") && steps[last].1.contains("slim"), "runtime image: {}", steps[last].1);
    assert!(steps[..last].iter().any(|(op, a)| op == "RUN" && a.contains("cargo build --release --locked")));

    let ignored: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/').to_string())
        .collect();
    for needed in ["Cargo.toml", "Cargo.lock", "src/main.rs", "deploy/turnd.toml"] {
        assert!(
            !ignored.iter().any(|p| needed == p || needed.starts_with(&format!("{p}/"))),
            ".dockerignore drops {needed}"
        );
    }
    // COPY from the build context: the sources exist.
    for (_, args) in steps.iter().filter(|(op, _)| op == "COPY") {
        let words: Vec<&str> = args.split_whitespace().filter(|w| !w.starts_with("--")).collect();
        if args.contains("--from=") {
            continue;
        }
        for source in &words[..words.len() - 1] {
            assert!(*source == "." || repo().join(source).exists(), "COPY {source}: no such file");
        }
    }

    let user = runtime
        .iter()
        .rev()
        .find(|(op, _)| op == "USER")
        .map(|(_, a)| a.as_str())
        .expect("a USER in the runtime stage");
    assert!(!["root", "0"].contains(&user.split(':').next().unwrap()), "runs as {user}");
    let entrypoint = runtime.iter().find(|(op, _)| op == "ENTRYPOINT").expect("an ENTRYPOINT").1.clone();
    let entrypoint: Vec<String> = serde_json::from_str(&entrypoint).expect("ENTRYPOINT in exec form");
    assert!(runtime
        .iter()
        .any(|(op, a)| op == "COPY" && a.contains("--from=") && a.ends_with(&format!(" {}", entrypoint[0]))));
    let command: Vec<String> =
        serde_json::from_str(&runtime.iter().find(|(op, _)| op == "CMD").expect("a CMD").1).expect("CMD in exec form");
    let env = runtime.iter().find(|(op, a)| op == "ENV" && a.starts_with("TURND_CONFIG=")).expect("ENV TURND_CONFIG");
    let config_path = env.1.trim_start_matches("TURND_CONFIG=");
    assert!(runtime.iter().any(|(op, a)| op == "COPY" && a.ends_with(&format!("deploy/turnd.toml {config_path}"))));
    // The command line the image runs is one turnd understands.
    let help = run_with_timeout(cmd(&turnd_binary()).args(&command).arg("--help"), Duration::from_secs(10));
    assert!(help.success(), "`turnd {}` is not a turnd command:\n{help}", command.join(" "));
}
