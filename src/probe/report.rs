//! The report: each step as it completes, the failure that ends a run, and what a
//! successful run established.

use super::error::ProbeError;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// The status of one reported step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Done as expected.
    Ok,
    /// Done, but something an operator should look at.
    Warning,
    /// Failed: the run ends here.
    Failed,
}

/// One step of a probe run, reported as soon as it completes.
#[derive(Debug, Clone)]
pub struct Step {
    /// Short name: `resolve`, `connect`, `binding`, `allocate`, ...
    pub name: &'static str,
    /// How long the step took.
    pub elapsed: Duration,
    /// Its outcome.
    pub status: Status,
    /// What the step found, in one line.
    pub detail: String,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = match self.status {
            Status::Ok => "ok  ",
            Status::Warning => "WARN",
            Status::Failed => "FAIL",
        };
        let ms = self.elapsed.as_secs_f64() * 1000.0;
        write!(f, "{mark} {:<12} {ms:>8.1} ms  {}", self.name, self.detail)
    }
}

/// A failed run: the step that failed and why.
#[derive(Debug, thiserror::Error)]
#[error("{step} failed: {error}{hint}", hint = self.error.hint().map(|h| format!(" ({h})")).unwrap_or_default())]
pub struct Failure {
    /// The failing step's name.
    pub step: &'static str,
    /// Why it failed.
    pub error: ProbeError,
}

/// What a successful run established.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// The server address used.
    pub server: Option<SocketAddr>,
    /// Our address as the server saw it (XOR-MAPPED-ADDRESS of the Binding).
    pub mapped: Option<SocketAddr>,
    /// The relayed address of the allocation, when one was made.
    pub relayed: Option<SocketAddr>,
    /// Whether data went through the relay both ways.
    pub relayed_data: bool,
    /// Things that worked but deserve a look.
    pub warnings: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_prints_on_one_line() {
        let s = Step { name: "binding", elapsed: Duration::from_micros(1500), status: Status::Ok, detail: "x".into() };
        assert_eq!(s.to_string(), "ok   binding           1.5 ms  x");
        let e = ProbeError::ErrorResponse { code: 401, reason: String::new() };
        assert_eq!(e.to_string(), "401 Unauthorized");
    }
}
