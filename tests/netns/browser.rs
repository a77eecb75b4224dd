//! Headless Chromium (Debian's /usr/bin/chromium through playwright-core, never a
//! downloaded browser) running tests/browser/webrtc.html, driven over stdio by
//! tests/browser/webrtc.mjs.

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long the page may take to load (Chromium's first start is the slow part; on a
/// machine loaded with release builds it was seen taking over 60 s).
const START_TIMEOUT: Duration = Duration::from_secs(150);
/// The longest a single call may take (the page's own timeouts are shorter).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The tests/browser directory.
pub fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// What is missing to run a browser test, if anything.
pub fn missing() -> Option<String> {
    if !Path::new("/usr/bin/chromium").exists() {
        return Some("/usr/bin/chromium (package chromium)".into());
    }
    if !browser_dir().join("node_modules/playwright-core").exists() {
        return Some("playwright-core (npm ci in tests/browser)".into());
    }
    let node =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join("node").exists())).unwrap_or(false);
    if !node {
        return Some("node (package nodejs)".into());
    }
    None
}

/// A running browser with the test page loaded. Spawned from the calling thread, so it
/// lives in that thread's network namespace (see `Netns::enter`).
pub struct Browser {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl Browser {
    /// Starts node + Chromium with `home` as HOME (its NSS database decides which
    /// CAs are trusted) and `chromium_args` added to Chromium's command line.
    pub fn launch(name: &str, home: &Path, chromium_args: &[&str]) -> Browser {
        let mut child = Command::new("node")
            .arg(browser_dir().join("webrtc.mjs"))
            .current_dir(browser_dir())
            .env("HOME", home)
            // One per line: an argument may hold spaces (`--host-resolver-rules=MAP a b`).
            .env("TURND_CHROMIUM_ARGS", chromium_args.join("\n"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn node");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr_pipe = child.stderr.take().expect("piped stderr");
        let stderr = Arc::new(Mutex::new(String::new()));
        let err = stderr.clone();
        let readers = vec![
            thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }),
            thread::spawn(move || {
                for line in BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
                    let mut e = err.lock().unwrap_or_else(|e| e.into_inner());
                    // Keep the log bounded: a chatty page must not eat the memory.
                    if e.len() < 256 * 1024 {
                        e.push_str(&line);
                        e.push('\n');
                    }
                }
            }),
        ];
        let stdin = child.stdin.take();
        let browser = Browser { name: name.into(), child, stdin, lines, stderr, readers };
        match browser.next_line(START_TIMEOUT) {
            Some(line) if line == "ready" => browser,
            other => panic!("browser {name} did not start: {other:?}\n{}", browser.stderr()),
        }
    }

    fn next_line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// What the page and Chromium logged so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The last `n` lines of [`Browser::stderr`]: what a failure shows after its cause.
    pub fn stderr_tail(&self, n: usize) -> String {
        let text = self.stderr();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Sends a call without waiting for its result (for two browsers working at once).
    pub fn start_call(&mut self, function: &str, arg: Value) {
        let line = serde_json::json!({ "fn": function, "arg": arg }).to_string();
        let stdin = self.stdin.as_mut().expect("browser stdin open");
        writeln!(stdin, "{line}").expect("write to the browser driver");
        stdin.flush().expect("flush the browser driver");
    }

    /// Waits for the result of the call started last.
    pub fn finish_call(&mut self, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(line) = self.next_line(left) else {
                panic!("browser {}: no result within {timeout:?}\n{}", self.name, self.stderr_tail(80));
            };
            if let Some(json) = line.strip_prefix("result ") {
                return serde_json::from_str(json).expect("the driver prints JSON");
            }
            if let Some(error) = line.strip_prefix("error ") {
                panic!("browser {}: {error}\n{}", self.name, self.stderr_tail(80));
            }
        }
    }

    /// Calls `window[function](arg)` in the page and returns its result.
    pub fn call(&mut self, function: &str, arg: Value) -> Value {
        self.start_call(function, arg);
        self.finish_call(CALL_TIMEOUT)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "quit");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        // Node's Chromium children die with it (playwright kills them on exit); a
        // SIGKILL of node alone would leave them, which the namespace's drop then ends.
        let _ = self.child.kill();
        let _ = self.child.wait();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        if thread::panicking() {
            eprintln!("---- browser {} log (last lines) ----\n{}\n---- end ----", self.name, self.stderr_tail(150));
        }
    }
}

/// A private HOME whose NSS database trusts `ca` (a PEM CA certificate) for TLS
/// servers, so Chromium accepts a `turns:` server signed by it. Needs `certutil`
/// (Debian libnss3-tools).
pub fn home_trusting(home: &Path, ca: &Path) {
    let db = home.join(".pki/nssdb");
    std::fs::create_dir_all(&db).expect("create the NSS directory");
    let db_arg = format!("sql:{}", db.display());
    super::must("certutil", &["-N", "-d", &db_arg, "--empty-password"]);
    let ca = ca.to_str().expect("utf-8 CA path");
    super::must("certutil", &["-A", "-d", &db_arg, "-n", "turnd test CA", "-t", "C,,", "-i", ca]);
}
