//! A level-triggered epoll set over many relay sockets, itself watched by tokio as one
//! file descriptor. One task then serves thousands of relay sockets without a task or
//! a channel per socket, and without allocating per packet.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// An epoll instance.
#[derive(Debug)]
pub struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    /// Creates an epoll instance (close-on-exec).
    pub fn new() -> io::Result<Self> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative result is a new fd
        // that we own from here on.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a valid, open descriptor that nothing else owns (just made).
        Ok(Epoll { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Watches `fd` for readability, tagging its events with `token`.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut event = libc::epoll_event { events: libc::EPOLLIN as u32, u64: token };
        // SAFETY: `event` is a valid epoll_event for the duration of the call.
        let rc = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Changes what `fd` (already in the set under `token`) is watched for: `writable`
    /// watches for room to write instead of for data to read (a TCP client connection
    /// whose answers wait for the client to read; hang-ups and errors are reported
    /// either way).
    pub fn watch_for_writable(&self, fd: RawFd, token: u64, writable: bool) -> io::Result<()> {
        let events = if writable { libc::EPOLLOUT } else { libc::EPOLLIN };
        let mut event = libc::epoll_event { events: events as u32, u64: token };
        // SAFETY: `event` is a valid epoll_event for the duration of the call.
        let rc = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_MOD, fd, &mut event) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sets what `fd` (already in the set under `token`) is watched for, both ways at
    /// once (an RFC 6062 data connection's two sockets). Watching for nothing makes the
    /// entry edge-triggered, so a hang-up or an error, always reported, wakes the loop
    /// once rather than at every pass while the other side's buffer is full.
    pub fn watch_both(&self, fd: RawFd, token: u64, readable: bool, writable: bool) -> io::Result<()> {
        let mut events = 0;
        if readable {
            events |= libc::EPOLLIN;
        }
        if writable {
            events |= libc::EPOLLOUT;
        }
        if events == 0 {
            events = libc::EPOLLET;
        }
        let mut event = libc::epoll_event { events: events as u32, u64: token };
        // SAFETY: `event` is a valid epoll_event for the duration of the call.
        let rc = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_MOD, fd, &mut event) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Stops watching `fd`: a relay socket handed over to another worker's set.
    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        // SAFETY: EPOLL_CTL_DEL reads no event (a null pointer is allowed since Linux
        // 2.6.9); a descriptor that is not in the set fails with ENOENT, nothing more.
        let rc = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// A handle for tokio to watch the set with: readable while any watched socket is
    /// ready. It holds a duplicate of the epoll descriptor (the same epoll instance),
    /// so it stays valid however long it lives.
    pub fn watch(&self) -> io::Result<AsyncFd<OwnedFd>> {
        let fd = self.fd.try_clone()?;
        // SAFETY: `fd` is open and owned by the AsyncFd from here on, so it stays open
        // and names the same epoll instance for as long as the AsyncFd lives, and
        // OwnedFd::as_raw_fd always returns that descriptor.
        unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(|e| io::Error::other(e.to_string()))
    }

    /// Collects ready tokens into `out` without blocking; returns how many.
    pub fn poll_ready(&self, events: &mut [libc::epoll_event], out: &mut Vec<u64>) -> io::Result<usize> {
        let max = i32::try_from(events.len()).unwrap_or(i32::MAX);
        // SAFETY: `events` is a valid, writable array of `max` epoll_events.
        let n = unsafe { libc::epoll_wait(self.fd.as_raw_fd(), events.as_mut_ptr(), max, 0) };
        if n < 0 {
            let err = io::Error::last_os_error();
            return if err.kind() == io::ErrorKind::Interrupted { Ok(0) } else { Err(err) };
        }
        let n = n as usize;
        out.clear();
        out.extend(events.iter().take(n).map(|e| e.u64));
        Ok(n)
    }
}

impl AsRawFd for Epoll {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
