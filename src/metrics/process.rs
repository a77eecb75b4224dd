//! Process metrics read from `/proc/self` (Linux). Done by hand rather than through
//! prometheus' `process` feature, which pulls in `procfs` and its dependency tree for
//! the same five numbers.

/// What `/proc` told us; `None` where it could not be read.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct ProcessStats {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<f64>,
    pub virtual_bytes: Option<f64>,
    pub open_fds: Option<f64>,
    pub max_fds: Option<f64>,
    pub start_time_seconds: Option<f64>,
}

/// Reads the current process's numbers. Never fails: missing pieces stay `None`.
pub(super) fn read() -> ProcessStats {
    let mut out = ProcessStats::default();
    if !cfg!(target_os = "linux") {
        return out;
    }
    let (ticks, page) = crate::sys::process::clock_ticks_and_page_size();
    if let Some(stat) = std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| parse_stat(&s)) {
        if ticks > 0 {
            let ticks = ticks as f64;
            out.cpu_seconds = Some((stat.utime + stat.stime) as f64 / ticks);
            out.start_time_seconds = boot_time().map(|boot| boot as f64 + stat.starttime as f64 / ticks);
        }
        out.virtual_bytes = Some(stat.vsize as f64);
        if page > 0 {
            out.resident_bytes = Some((stat.rss * page as u64) as f64);
        }
    }
    // Counting entries, not reading them: this is one getdents loop, cheap at scrape rates.
    out.open_fds = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as f64);
    if let Some((soft, _)) = crate::sys::process::open_file_limit() {
        out.max_fds = Some(soft as f64);
    }
    out
}

/// The fields of `/proc/self/stat` we use.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    utime: u64,
    stime: u64,
    starttime: u64,
    vsize: u64,
    rss: u64,
}

/// proc(5): fields after the command name, which is in parentheses and may itself
/// contain spaces and parentheses, so we split after the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    // rest starts at field 3 (state); field n is at index n - 3.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat { utime: field(14)?, stime: field(15)?, starttime: field(22)?, vsize: field(23)?, rss: field(24)? })
}

/// Boot time, seconds since the epoch (`btime` in `/proc/stat`).
fn boot_time() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines().find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_survives_odd_command_names() {
        let line = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 555 1048576 64 \
                    18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        let stat = parse_stat(line).unwrap();
        assert_eq!(stat, Stat { utime: 7, stime: 3, starttime: 555, vsize: 1048576, rss: 64 });
        assert_eq!(parse_stat("garbage"), None);
    }
}
