//! The process itself: its open-file limit, clock and page sizes, and signals to
//! itself.

use std::io;

/// The soft and hard RLIMIT_NOFILE, or `None` when it cannot be read.
pub fn open_file_limit() -> Option<(u64, u64)> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into `limit`, a live local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    Some((limit.rlim_cur, limit.rlim_max))
}

/// Sets the soft RLIMIT_NOFILE to `soft`, keeping the hard limit `hard`.
pub fn set_open_file_limit(soft: u64, hard: u64) -> io::Result<()> {
    let limit = libc::rlimit { rlim_cur: soft, rlim_max: hard };
    // SAFETY: setrlimit reads one rlimit from `limit`, a live local.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The CPU time this process has used so far, user plus system (getrusage(2)
/// RUSAGE_SELF: every thread), or `None` when it cannot be read.
pub fn cpu_time() -> Option<std::time::Duration> {
    // SAFETY: all-zero is a valid rusage (a plain C struct of integers).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one rusage into `usage`, a live local.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return None;
    }
    let micros = |t: libc::timeval| {
        u64::try_from(t.tv_sec).ok()?.checked_mul(1_000_000)?.checked_add(u64::try_from(t.tv_usec).ok()?)
    };
    let total = micros(usage.ru_utime)?.checked_add(micros(usage.ru_stime)?)?;
    Some(std::time::Duration::from_micros(total))
}

/// Clock ticks per second (`_SC_CLK_TCK`, the unit of /proc CPU times) and the page
/// size in bytes (`_SC_PAGESIZE`, the unit of /proc's resident set); each `<= 0`
/// when unknown.
pub fn clock_ticks_and_page_size() -> (libc::c_long, libc::c_long) {
    // SAFETY: sysconf takes no pointers and only reads a configuration value.
    unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) }
}

/// Whether this process has a handler for `signal` (rather than the default action or
/// ignoring it).
pub fn handles_signal(signal: libc::c_int) -> bool {
    // SAFETY: all-zero is a valid sigaction (a plain C struct: null handler, empty
    // mask); sigaction with a null new action only writes the current disposition
    // into `current`, a live local.
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &mut current) == 0
            && current.sa_sigaction != libc::SIG_DFL
            && current.sa_sigaction != libc::SIG_IGN
    }
}

/// Sends `signal` to this process (kill(2) on its own pid).
pub fn raise_signal(signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill takes no pointers; what the signal does is the caller's concern
    // (it checks with `handles_signal` first), not memory safety's.
    if unsafe { libc::kill(libc::getpid(), signal) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends `signal` to process `pid` (`turnd upgrade`); refuses pids that would mean a
/// process group or every process.
pub fn signal_process(pid: i32, signal: libc::c_int) -> io::Result<()> {
    if pid <= 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a process id"));
    }
    // SAFETY: kill takes no pointers; a positive pid names exactly one process.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_and_sizes_are_readable() {
        let (soft, hard) = open_file_limit().unwrap();
        assert!(soft > 0 && soft <= hard);
        let (ticks, page) = clock_ticks_and_page_size();
        assert!(ticks > 0 && page > 0);
        assert!(!handles_signal(libc::SIGWINCH));
    }
}
