//! The `turnd probe` command line: arguments, their checks, and the printed report.

use super::options::{Credentials, Options, TlsOptions};
use super::report::Failure;
use super::report::Summary;
use super::run::run;
use super::url::{ServerUrl, UrlError};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The `turnd probe` command line (clap derives it here so that the binary only
/// dispatches to [`cli`]).
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// The server: `stun:HOST[:PORT]`, `turn:HOST[:PORT][?transport=udp|tcp]`, `turns:HOST[:PORT]`.
    pub url: String,
    /// Username (with --password), or the user id in a REST username (with --secret).
    #[arg(long)]
    pub user: Option<String>,
    /// Password of --user.
    #[arg(long, env = "TURND_PROBE_PASSWORD", conflicts_with = "secret")]
    pub password: Option<String>,
    /// TURN REST API shared secret: the probe mints its own short-lived credential.
    #[arg(long, env = "TURND_SECRET")]
    pub secret: Option<String>,
    /// Lifetime of a minted REST credential.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// The longest wait for any one step.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// CA certificates (PEM) to verify a TLS server with, instead of the system's.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Verify the certificate for this name instead of the URL's host.
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
    /// Do not verify the TLS certificate (the probe then proves nothing about who answered).
    #[arg(long)]
    pub insecure: bool,
}

/// Why the command line cannot run.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The URL did not parse.
    #[error("{url:?}: {error}")]
    Url {
        /// The URL as given.
        url: String,
        /// Why.
        error: UrlError,
    },
    /// `--user` without `--password` (and no `--secret`), or the reverse.
    #[error("--user needs --password (or --secret for REST credentials)")]
    Credentials,
    /// The probe ran and a step failed.
    #[error(transparent)]
    Failed(#[from] Failure),
}

/// Runs `turnd probe`: prints each step to `out` and a verdict line. `unix_now` is the
/// wall clock (seconds) that REST credentials expire from.
pub fn cli(args: &ProbeArgs, unix_now: u64, out: &mut dyn Write) -> Result<Summary, CliError> {
    let url: ServerUrl = args.url.parse().map_err(|error| CliError::Url { url: args.url.clone(), error })?;
    let credentials = match (&args.user, &args.password, &args.secret) {
        (_, _, Some(secret)) => Credentials::rest(secret, args.user.as_deref().unwrap_or("probe"), unix_now, args.ttl),
        (Some(username), Some(password), None) => {
            Credentials::LongTerm { username: username.clone(), password: password.clone() }
        }
        (None, None, None) => Credentials::None,
        _ => return Err(CliError::Credentials),
    };
    let options = Options {
        url: url.clone(),
        credentials,
        timeout: args.timeout,
        tls: TlsOptions {
            ca_file: args.ca.clone(),
            server_name: args.server_name.clone(),
            danger_accept_invalid_certs: args.insecure,
        },
    };
    let _ = writeln!(out, "probing {url}");
    let start = Instant::now();
    let result = run(&options, &mut |step| {
        let _ = writeln!(out, "  {step}");
    });
    let total = start.elapsed().as_secs_f64() * 1000.0;
    match &result {
        Ok(summary) => {
            let what = match (url.scheme.is_turn(), summary.relayed_data) {
                (_, true) => "STUN and TURN work, data relayed both ways",
                (true, false) => "STUN works; TURN not fully checked",
                (false, false) => "STUN works",
            };
            let warnings = match summary.warnings.len() {
                0 => String::new(),
                n => format!(" ({n} warning{})", if n == 1 { "" } else { "s" }),
            };
            let _ = writeln!(out, "PASS {url}: {what}{warnings} in {total:.0} ms");
        }
        Err(failure) => {
            let _ = writeln!(out, "FAIL {url}: {failure}");
        }
    }
    result.map_err(CliError::Failed)
}
