//! A stand-in for systemd's side of the file descriptor store, for restarts that hand
//! allocations over through it (src/fd_store.rs): the test binds the notify socket,
//! keeps what turnd pushes on SIGTERM (`FDSTORE=1` with `FDNAME=`), and starts the next
//! turnd with those descriptors from 3 on and `LISTEN_PID`/`LISTEN_FDS`/
//! `LISTEN_FDNAMES`, as systemd does; then it collects `FDSTOREREMOVE=1`. No real
//! systemd runs in the tests (the test machines have none).

use super::{turnd_binary, TempDir};
use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The notify socket and the store of one unit.
pub struct FakeSystemd {
    _dir: TempDir,
    notify_path: PathBuf,
    notify: UnixDatagram,
}

impl FakeSystemd {
    pub fn new() -> FakeSystemd {
        let dir = TempDir::new("turnd-fdstore");
        let notify_path = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
        notify.set_read_timeout(Some(Duration::from_millis(5))).expect("a read timeout");
        FakeSystemd { _dir: dir, notify_path, notify }
    }

    /// What systemd sets for a unit with `FileDescriptorStoreMax=4096`.
    pub fn vars(&self) -> Vec<(String, OsString)> {
        vec![("NOTIFY_SOCKET".into(), self.notify_path.clone().into()), ("FDSTORE".into(), "4096".into())]
    }

    pub fn env(&self, command: &mut Command) {
        command.envs(self.vars());
    }

    /// `turnd serve -c CONFIG` as systemd would start it the first time.
    pub fn first(&self, config_file: &std::path::Path) -> Command {
        let mut command = Command::new(turnd_binary());
        command.args(["serve", "-c"]).arg(config_file);
        self.env(&mut command);
        command
    }

    /// Keeps what is pushed into the store (`(FDNAME, fd)`) until `exited` says the
    /// process is gone (call after sending it SIGTERM); `Err` after `timeout`.
    pub fn collect_store(
        &self,
        mut exited: impl FnMut() -> bool,
        timeout: Duration,
    ) -> Result<Vec<(String, OwnedFd)>, String> {
        let mut store = Vec::new();
        let deadline = Instant::now() + timeout;
        loop {
            match turnd::sys::fdpass::recv(&self.notify) {
                Ok((payload, fds)) => {
                    let text = String::from_utf8_lossy(&payload).to_string();
                    if text.lines().any(|l| l == "FDSTORE=1") {
                        let name = text.lines().find_map(|l| l.strip_prefix("FDNAME=")).unwrap_or("stored").to_owned();
                        store.extend(fds.into_iter().map(|fd| (name.clone(), fd)));
                    }
                }
                Err(_) if exited() => return Ok(store),
                Err(_) if Instant::now() >= deadline => return Err(format!("turnd did not exit within {timeout:?}")),
                Err(_) => {}
            }
        }
    }

    /// The next `turnd serve -c CONFIG`, with the store's descriptors from 3 on (the
    /// shell keeps its pid when it execs turnd, so `LISTEN_PID=$$` is turnd's).
    pub fn next(&self, store: &[(String, OwnedFd)], config_file: &std::path::Path) -> Command {
        let names: Vec<&str> = store.iter().map(|(name, _)| name.as_str()).collect();
        let raw: Vec<i32> = store.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
        let mut command = Command::new("sh");
        command
            .args(["-c", "LISTEN_PID=$$ exec \"$0\" \"$@\"", &turnd_binary(), "serve", "-c"])
            .arg(config_file)
            .env("LISTEN_FDS", raw.len().to_string())
            .env("LISTEN_FDNAMES", names.join(":"));
        self.env(&mut command);
        // SAFETY: between fork and exec the child only duplicates and closes descriptors
        // (async-signal-safe calls), moving the store's to 3, 4, ... as systemd does.
        #[allow(unsafe_code)]
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(move || {
                let high: Vec<i32> = raw.iter().map(|&fd| libc::fcntl(fd, libc::F_DUPFD, 1024)).collect();
                for (i, &fd) in high.iter().enumerate() {
                    if fd < 0 || libc::dup2(fd, 3 + i as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::close(fd);
                }
                Ok(())
            });
        }
        command
    }

    /// The names turnd removes from the store (`FDSTOREREMOVE=1`), sorted and
    /// deduplicated, once `wanted` of them came or `timeout` passed.
    pub fn removed(&self, wanted: usize, timeout: Duration) -> Vec<String> {
        let mut removed = Vec::new();
        let deadline = Instant::now() + timeout;
        while removed.len() < wanted && Instant::now() < deadline {
            if let Ok((payload, _)) = turnd::sys::fdpass::recv(&self.notify) {
                let text = String::from_utf8_lossy(&payload).to_string();
                if text.lines().any(|l| l == "FDSTOREREMOVE=1") {
                    removed.extend(text.lines().filter_map(|l| l.strip_prefix("FDNAME=")).map(str::to_owned));
                }
            }
        }
        removed.sort();
        removed.dedup();
        removed
    }
}

/// A turnd started by the test with its stderr collected (the fd-store tests play
/// systemd, so they start the processes themselves). Killed when dropped.
pub struct Started {
    pub child: Child,
    pub logs: Arc<Mutex<String>>,
}

impl Started {
    pub fn spawn(mut command: Command) -> Started {
        let mut child = command
            .env("RUST_LOG", "debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn turnd");
        let logs = Arc::new(Mutex::new(String::new()));
        let (mut stderr, into) = (child.stderr.take().expect("piped stderr"), logs.clone());
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                into.lock().expect("the log buffer").push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Started { child, logs }
    }

    pub fn logs(&self) -> String {
        self.logs.lock().expect("the log buffer").clone()
    }

    /// The first log line containing `what`; panics after 15 s.
    pub fn wait_for(&self, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(line) = self.logs().lines().find(|l| l.contains(what)) {
                return line.to_string();
            }
            assert!(Instant::now() < deadline, "no {what:?} in:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
