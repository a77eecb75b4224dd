//! Integration-test harness: runs the real `turnd` binary, UDP echo peers,
//! and external clients (coturn's tools, aioice) with timeouts.
//!
//! Rules kept here: traffic only to loopback, ephemeral ports only, every
//! loop bounded in time, every process started is killed when dropped.
#![allow(dead_code)]

// Helpers a test binary picks by path (`common::turn_client::TurnClient`); each
// binary compiles them all, hence the crate-wide allow(dead_code) above.
pub mod ca;
pub mod fd_store;
pub mod http;
pub mod nonblocking;
pub mod turn_client;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

pub const REALM: &str = "turnd.test";
pub const USER: &str = "alice";
pub const PASSWORD: &str = "secret";

/// How long `TurndProcess::start` waits for every "listening on" line.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `Drop` waits after SIGINT before SIGKILL.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// A random number good enough to spread tests over port ranges and names.
pub fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.write_u32(std::process::id());
    h.finish()
}

/// A small deterministic generator (xorshift64*): a test's schedule replays from its
/// seed (which must not be 0).
pub struct Xorshift(pub u64);

impl Xorshift {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A random relay port range `(min, max)` of width 200 inside 20000..60000,
/// so parallel tests rarely share relay ports.
pub fn relay_port_range() -> (u16, u16) {
    let base = 20000 + (random_u64() % 39_800) as u16;
    (base, base + 199)
}

/// turnd with a TCP and a TLS listener (`tls_extra` added to the TLS one's table) and
/// `workers` workers (turnd's default when `None`). Its connections are served by the
/// worker's loop when `worker_loop`, else by their own tasks; the `stream_conn` debug
/// log says which.
pub fn stream_turnd(workers: Option<usize>, tls_extra: &str, worker_loop: bool) -> (TurndProcess, TestCert) {
    println!("[tcp] worker-loop = {worker_loop}");
    let cert = TestCert::new();
    let (min, max) = relay_port_range();
    let workers = workers.map(|n| format!("workers = {n}\n")).unwrap_or_default();
    let config = format!(
        "realm = \"{REALM}\"\n{workers}[[listen]]\ntransport = \"tcp\"\naddress = \"127.0.0.1:0\"\n\
         [[listen]]\ntransport = \"tls\"\naddress = \"127.0.0.1:0\"\n{tls_extra}\n\
         [tcp]\nworker-loop = {worker_loop}\n\
         [log]\nlevel = \"info,turnd::net::stream_conn=debug\"\n\
         [relay]\nport-min = {min}\nport-max = {max}\nallowed-peers = [\"127.0.0.0/8\"]\nallow-host-peers = true\n\
         [[auth.user]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\n"
    );
    let turnd = TurndProcess::start(&cert.add_to(&config), &[]);
    (turnd, cert)
}

/// A config with one loopback listener per transport, a random relay range,
/// loopback peers allowed and the user `alice`/`secret`.
pub fn config_with(transports: &[&str]) -> String {
    let (min, max) = relay_port_range();
    let mut s = format!("realm = \"{REALM}\"\n\n");
    for t in transports {
        s += &format!("[[listen]]\ntransport = \"{t}\"\naddress = \"127.0.0.1:0\"\n\n");
    }
    s += &format!(
        "[relay]\nport-min = {min}\nport-max = {max}\nallowed-peers = [\"127.0.0.0/8\"]\nallow-host-peers = true\n\n\
         [[auth.user]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\n"
    );
    s
}

/// A self-signed certificate for 127.0.0.1 and localhost (made with the
/// `openssl` tool; P-256 key, one day), which is also its own CA.
pub struct TestCert {
    _dir: TempDir,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCert {
    pub fn new() -> TestCert {
        let dir = TempDir::new("turnd-cert");
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let out = run_with_timeout(
            Command::new("openssl")
                .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"])
                .args(["-days", "1", "-subj", "/CN=localhost"])
                .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert),
            Duration::from_secs(30),
        );
        assert!(out.success(), "openssl could not make a test certificate:\n{out}");
        TestCert { _dir: dir, cert, key }
    }

    /// `config_toml` with a `[tls]` section pointing at this certificate.
    pub fn add_to(&self, config_toml: &str) -> String {
        format!(
            "{config_toml}\n[tls]\ncertificate = \"{}\"\nprivate-key = \"{}\"\n",
            self.cert.display(),
            self.key.display()
        )
    }
}

/// The relay port range written in a config (`[relay] port-min/port-max`).
pub fn relay_range_of(config_toml: &str) -> Option<(u16, u16)> {
    let v: toml::Table = config_toml.parse().ok()?;
    let relay = v.get("relay")?.as_table()?;
    let min = relay.get("port-min")?.as_integer()?;
    let max = relay.get("port-max")?.as_integer()?;
    Some((u16::try_from(min).ok()?, u16::try_from(max).ok()?))
}

/// Transports ("udp", "tcp", "tls", "admin") turnd should log as listening.
pub fn expected_listeners(config_toml: &str) -> Vec<String> {
    let v: toml::Table = config_toml.parse().expect("test config is not valid TOML");
    let mut out = Vec::new();
    if let Some(list) = v.get("listen").and_then(|l| l.as_array()) {
        for l in list {
            let t = l.get("transport").and_then(|t| t.as_str()).unwrap_or("udp");
            out.push(t.to_string());
        }
    }
    // The admin listener runs unless `[admin] enabled = false`.
    if v.get("admin").is_some_and(|a| a.get("enabled").and_then(|e| e.as_bool()) != Some(false)) {
        out.push("admin".to_string());
    }
    out
}

/// `config_toml` with `[admin] address = "127.0.0.1:0"` added when it has no `[admin]`:
/// turnd's admin listener is on by default at the fixed port 9641, which parallel
/// tests (and a turnd running on the machine) would fight over.
pub fn with_ephemeral_admin(config_toml: &str) -> String {
    match config_toml.parse::<toml::Table>() {
        Ok(v) if !v.contains_key("admin") => format!("{config_toml}\n[admin]\naddress = \"127.0.0.1:0\"\n"),
        _ => config_toml.to_string(),
    }
}

/// Removes ANSI escape sequences (colours) from a log line.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ ... final byte in '@'..='~'
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Parses `... listening on <transport> <addr> ...` from one log line.
pub fn parse_listening(line: &str) -> Option<(String, SocketAddr)> {
    let line = strip_ansi(line);
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let mut words = rest.split_whitespace();
    let transport = words.next()?.to_string();
    // The address ends where a JSON line would go on with `"`, `}` or `,`.
    let addr: String = words.next()?.chars().take_while(|c| c.is_ascii_hexdigit() || ".:[]".contains(*c)).collect();
    Some((transport, addr.parse().ok()?))
}

/// Shared, growing copy of a child's output.
#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<String>>);

impl LogBuffer {
    fn push_line(&self, line: &str) {
        let mut b = self.0.lock().unwrap_or_else(|e| e.into_inner());
        b.push_str(line);
        b.push('\n');
    }
    pub fn text(&self) -> String {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Reads `r` line by line into `buf` (and `tx`, while anyone listens) until EOF.
fn drain<R: Read + Send + 'static>(r: R, buf: LogBuffer, tx: Option<mpsc::Sender<String>>) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(r);
        let mut raw = Vec::new();
        loop {
            raw.clear();
            match reader.read_until(b'\n', &mut raw) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&raw);
                    let line = line.trim_end_matches(['\n', '\r']);
                    buf.push_line(line);
                    if let Some(tx) = &tx {
                        let _ = tx.send(line.to_string());
                    }
                }
            }
        }
    })
}

fn send_signal(child: &Child, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) on the pid of a child we own and have not reaped.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// Waits for `child` to exit, at most `timeout`.
fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => return None,
        }
    }
}

/// A fresh directory under `std::env::temp_dir()`, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{:016x}", std::process::id(), random_u64()));
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    /// Writes `contents` to `name` inside the directory; returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let file = self.0.join(name);
        std::fs::write(&file, contents).expect("write a file in the temp dir");
        file
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The binary under test: `$TURND_BIN` if set, else the one cargo built.
pub fn turnd_binary() -> String {
    std::env::var("TURND_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_turnd").to_string())
}

/// A running `turnd serve` child process.
pub struct TurndProcess {
    child: Child,
    _dir: TempDir,
    logs: LogBuffer,
    listeners: Vec<(String, SocketAddr)>,
    config: String,
    readers: Vec<JoinHandle<()>>,
}

impl TurndProcess {
    /// Writes `config_toml` to a temp dir, runs `turnd serve -c FILE ARGS...`
    /// and waits until every configured listener is logged as listening.
    pub fn start(config_toml: &str, extra_args: &[&str]) -> TurndProcess {
        let config_toml = &with_ephemeral_admin(config_toml);
        let dir = TempDir::new("turnd-test");
        let file = dir.write("turnd.toml", config_toml);
        let mut command = Command::new(turnd_binary());
        command.arg("serve").arg("-c").arg(&file).args(extra_args);
        TurndProcess::spawn(command, dir, config_toml, expected_listeners(config_toml))
    }

    /// [`TurndProcess::start`] with extra environment variables (e.g. what systemd
    /// sets, from `fd_store::FakeSystemd::vars`).
    pub fn start_with_env(
        config_toml: &str,
        extra_args: &[&str],
        env: &[(String, std::ffi::OsString)],
    ) -> TurndProcess {
        let config_toml = &with_ephemeral_admin(config_toml);
        let dir = TempDir::new("turnd-test");
        let file = dir.write("turnd.toml", config_toml);
        let mut command = Command::new(turnd_binary());
        command.arg("serve").arg("-c").arg(&file).args(extra_args).envs(env.iter().map(|(k, v)| (k, v)));
        TurndProcess::spawn(command, dir, config_toml, expected_listeners(config_toml))
    }

    /// The config file turnd runs with (written by `start`).
    pub fn config_file(&self) -> PathBuf {
        self._dir.path().join("turnd.toml")
    }

    /// [`TurndProcess::start`] under a wrapper command, e.g. `["prlimit", "--nofile=256:1024", "--"]`.
    pub fn start_wrapped(wrapper: &[&str], config_toml: &str, extra_args: &[&str]) -> TurndProcess {
        let config_toml = &with_ephemeral_admin(config_toml);
        let dir = TempDir::new("turnd-test");
        let file = dir.write("turnd.toml", config_toml);
        let (program, wrapper_args) = wrapper.split_first().expect("a wrapper command");
        let mut command = Command::new(program);
        command.args(wrapper_args).arg(turnd_binary()).arg("serve").arg("-c").arg(&file).args(extra_args);
        TurndProcess::spawn(command, dir, config_toml, expected_listeners(config_toml))
    }

    /// Runs `turnd serve ARGS...` with no config file (the embedded default, as a user
    /// starts it) and waits for the admin listener, which is logged after every other.
    pub fn start_default(args: &[&str]) -> TurndProcess {
        let mut command = Command::new(turnd_binary());
        command.arg("serve").args(args).env_remove("TURND_CONFIG");
        TurndProcess::spawn(command, TempDir::new("turnd-test"), "", vec!["admin".to_string()])
    }

    fn spawn(mut command: Command, dir: TempDir, config_toml: &str, mut wanted: Vec<String>) -> TurndProcess {
        let mut child = command
            .env("RUST_LOG", std::env::var("TURND_TEST_LOG").unwrap_or("debug".into()))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the turnd binary");

        let logs = LogBuffer::default();
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("turnd stderr is piped");
        let stdout = child.stdout.take().expect("turnd stdout is piped");
        let readers = vec![drain(stderr, logs.clone(), Some(tx)), drain(stdout, logs.clone(), None)];
        let mut p =
            TurndProcess { child, _dir: dir, logs, listeners: Vec::new(), config: config_toml.to_string(), readers };

        let every_listener = config_toml.is_empty();
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while !wanted.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some((t, addr)) = parse_listening(&line) {
                        if let Some(i) = wanted.iter().position(|w| *w == t) {
                            wanted.remove(i);
                            p.listeners.push((t, addr));
                        } else if every_listener {
                            p.listeners.push((t, addr));
                        }
                    }
                }
                // (p's Drop prints turnd's logs while panicking.)
                Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                    "turnd did not log 'listening on' for {wanted:?} within {STARTUP_TIMEOUT:?}\n\
                     config:\n{config_toml}"
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = wait_timeout(&mut p.child, Duration::from_secs(2)).map(|s| s.to_string());
                    panic!(
                        "turnd exited ({}) before listening on {wanted:?}\nconfig:\n{config_toml}",
                        status.unwrap_or_default()
                    )
                }
            }
        }
        p
    }

    /// Starts turnd with `config_with(transports)`.
    pub fn with_transports(transports: &[&str]) -> TurndProcess {
        TurndProcess::start(&config_with(transports), &[])
    }

    /// The address of the first listener of `transport`.
    pub fn addr(&self, transport: &str) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(t, _)| t == transport)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("turnd has no {transport} listener: {:?}", self.listeners))
    }
    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.addr("admin")
    }
    /// The child's process id (to send it signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    pub fn udp_addr(&self) -> SocketAddr {
        self.addr("udp")
    }
    pub fn tcp_addr(&self) -> SocketAddr {
        self.addr("tcp")
    }
    pub fn tls_addr(&self) -> SocketAddr {
        self.addr("tls")
    }
    pub fn listeners(&self) -> &[(String, SocketAddr)] {
        &self.listeners
    }
    pub fn config(&self) -> &str {
        &self.config
    }
    pub fn relay_range(&self) -> Option<(u16, u16)> {
        relay_range_of(&self.config)
    }

    /// Everything turnd wrote to stderr and stdout so far.
    pub fn logs(&self) -> String {
        self.logs.text()
    }

    /// The last `n` lines turnd wrote: what a failure message shows after its cause
    /// (CI shows only the start of a failing test's output).
    pub fn logs_tail(&self, n: usize) -> String {
        let text = self.logs();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM and waits up to `timeout` for a clean exit. turnd drains on
    /// SIGTERM (up to its `drain-time`, earlier when no allocation is left).
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.stop_with(libc::SIGTERM, timeout)
    }

    /// Sends SIGINT (exit at once, no drain) and waits up to `timeout`.
    pub fn interrupt(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.stop_with(libc::SIGINT, timeout)
    }

    /// Sends `sig` and waits up to `timeout` for an exit.
    pub fn stop_with(&mut self, sig: libc::c_int, timeout: Duration) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        send_signal(&self.child, sig);
        wait_timeout(&mut self.child, timeout)
    }
}

impl Drop for TurndProcess {
    fn drop(&mut self) {
        // SIGINT: tests should not wait for a drain at teardown.
        if self.interrupt(SHUTDOWN_GRACE).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        if thread::panicking() {
            eprintln!("---- turnd logs ----\n{}---- end of turnd logs ----", self.logs());
        }
    }
}

/// A UDP peer on 127.0.0.1 that echoes every datagram back to its sender.
pub struct UdpEchoPeer {
    addr: SocketAddr,
    count: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpEchoPeer {
    pub fn start() -> UdpEchoPeer {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind UDP echo peer on 127.0.0.1:0");
        UdpEchoPeer::from_socket(sock)
    }

    /// Two echo peers on consecutive ports `p` and `p + 1` (an RTP/RTCP pair,
    /// as `turnutils_uclient` uses without `-c`).
    pub fn start_pair() -> (UdpEchoPeer, UdpEchoPeer) {
        for _ in 0..100 {
            let a = UdpSocket::bind("127.0.0.1:0").expect("bind UDP echo peer");
            let port = a.local_addr().expect("echo peer address").port();
            if port == u16::MAX {
                continue;
            }
            if let Ok(b) = UdpSocket::bind(("127.0.0.1", port + 1)) {
                return (UdpEchoPeer::from_socket(a), UdpEchoPeer::from_socket(b));
            }
        }
        panic!("could not bind two consecutive UDP ports on 127.0.0.1 in 100 tries");
    }

    fn from_socket(sock: UdpSocket) -> UdpEchoPeer {
        let addr = sock.local_addr().expect("echo peer local address");
        sock.set_read_timeout(Some(Duration::from_millis(50))).expect("set echo peer read timeout");
        let count = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (count.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    c.fetch_add(1, Ordering::Relaxed);
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        });
        UdpEchoPeer { addr, count, stop, thread: Some(thread) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// Datagrams received (and echoed) so far.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

impl Drop for UdpEchoPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Whether `name` is an executable file in a directory on `PATH`.
pub fn tool_on_path(name: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| is_executable(&dir.join(name)))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// The Python interpreter the tests use (`$PYTHON`, else `python3`).
pub fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// Whether `python3 -c "import MODULE"` succeeds.
pub fn python_module_available(module: &str) -> bool {
    let out =
        run_with_timeout(Command::new(python()).args(["-c", &format!("import {module}")]), Duration::from_secs(20));
    out.success()
}

/// Decides what a test does when an external client is missing: in CI
/// (env `CI` set) it fails loudly; elsewhere it prints "skipping" and the
/// test returns. Use as `if !need(available, "...") { return; }`.
pub fn need(available: bool, what: &str) -> bool {
    if available {
        return true;
    }
    let ci = std::env::var("CI").map(|v| !v.is_empty()).unwrap_or(false);
    if ci {
        panic!("{what} is required but missing (CI is set); scripts/test.sh installs it");
    }
    eprintln!("skipping: {what} is not installed (scripts/test.sh installs it)");
    false
}

/// `need(tool_on_path(tool), ...)`.
pub fn need_tool(tool: &str, package: &str) -> bool {
    need(tool_on_path(tool), &format!("`{tool}` (package {package})"))
}

/// Captured result of `run_with_timeout`.
#[derive(Debug)]
pub struct CmdOutput {
    pub command: String,
    /// `None` when the command was killed at the timeout.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl CmdOutput {
    pub fn timed_out(&self) -> bool {
        self.status.is_none()
    }
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }
    /// stdout then stderr.
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl std::fmt::Display for CmdOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = match self.status {
            Some(s) => s.to_string(),
            None => "KILLED at timeout".to_string(),
        };
        write!(
            f,
            "$ {}\n[{status} after {:.1?}]\n--- stdout ---\n{}--- stderr ---\n{}--------------",
            self.command, self.elapsed, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` (stdin closed, output captured); kills it after `timeout`.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> CmdOutput {
    let command = format!("{cmd:?}");
    let start = Instant::now();
    let mut child = match cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn() {
        Ok(c) => c,
        Err(e) => {
            return CmdOutput {
                command,
                status: None,
                stdout: String::new(),
                stderr: format!("failed to spawn: {e}\n"),
                elapsed: start.elapsed(),
            }
        }
    };
    let out = LogBuffer::default();
    let err = LogBuffer::default();
    let r1 = drain(child.stdout.take().expect("piped stdout"), out.clone(), None);
    let r2 = drain(child.stderr.take().expect("piped stderr"), err.clone(), None);
    let status = wait_timeout(&mut child, timeout);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = r1.join();
    let _ = r2.join();
    CmdOutput { command, status, stdout: out.text(), stderr: err.text(), elapsed: start.elapsed() }
}
