//! The turnd binary: the CLI and its subcommands. `anyhow` lives only in the binary,
//! at the edge; `serve.rs` runs the server's process life.

mod ctl;
mod descriptors;
mod fd_store;
mod live_upgrade;
mod log_escape;
mod serve;

use anyhow::{bail, Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use ipnet::IpNet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use turnd::config::{Config, LogFormat, User};
use turnd::turn::auth::rest_password;

#[derive(Parser, Debug)]
#[command(name = "turnd", version, about = "A STUN/TURN server for WebRTC")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server (with no config file: UDP and TCP on port 3478, IPv4 and IPv6, and a
    /// random user printed once).
    Serve {
        /// Config file (TOML).
        #[arg(short, long, env = "TURND_CONFIG")]
        config: Option<PathBuf>,
        /// Add a static user, NAME:PASSWORD (repeatable).
        #[arg(long = "user", value_name = "NAME:PASSWORD")]
        users: Vec<String>,
        /// Allow relaying to peers in this CIDR even if denied by default (repeatable).
        #[arg(long = "allow-peer", value_name = "CIDR")]
        allow_peers: Vec<IpNet>,
        /// Let peers be any port of this host's own addresses, not only other
        /// allocations' relays (`relay.allow-host-peers`; for labs, never in production).
        #[arg(long)]
        allow_host_peers: bool,
        /// Log format (overrides the config file).
        #[arg(long, value_enum)]
        log_format: Option<LogFormat>,
        /// Put every TURN listener on this port instead of its configured one; 0 picks
        /// one free port for all of them (logged in each "listening on" line).
        #[arg(long, env = "TURND_PORT")]
        port: Option<u16>,
        /// Worker threads (overrides `workers`; 0 means one per core).
        #[arg(long, env = "TURND_WORKERS")]
        workers: Option<usize>,
        /// Address of the admin listener (overrides `admin.address`; port 0 picks one).
        #[arg(long, env = "TURND_ADMIN_ADDRESS", value_name = "ADDRESS:PORT")]
        admin_address: Option<SocketAddr>,
    },
    /// Validate a config file and print the effective configuration.
    CheckConfig {
        /// Config file (TOML).
        file: PathBuf,
    },
    /// Mint TURN REST API credentials from a shared secret, as JSON for `iceServers`.
    Credentials {
        /// The shared secret (as in the server's `auth.secrets`).
        #[arg(long, env = "TURND_SECRET")]
        secret: String,
        /// The user id to embed in the username.
        #[arg(long, default_value = "user")]
        user: String,
        /// How long the credential is valid, e.g. "1h", "30m".
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// TURN URLs to include (repeatable); default turn:HOST:3478 for this host.
        #[arg(long = "url")]
        urls: Vec<String>,
    },
    /// Check a STUN/TURN server from the outside: Binding, Allocate, relayed data both ways.
    Probe(turnd::probe::ProbeArgs),
    /// Control a running turnd through its admin listener: status, sessions, drop,
    /// revoke, reload, drain. Exit codes: 0 done, 1 the action failed, 2 usage,
    /// 3 turnd not reachable, 4 missing or wrong admin token.
    Ctl(ctl::CtlArgs),
    /// Live upgrade: tell the running turnd (by pid) to start the binary it was started
    /// from (the new one after a package upgrade) and hand it its UDP allocations,
    /// listeners and secrets without dropping a call (the same as `kill -USR2 PID`).
    /// The outcome is logged by both processes and counted in `turnd_handovers_total`.
    Upgrade {
        /// The running turnd's process id.
        #[arg(long)]
        pid: i32,
    },
    /// Print a shell completion script, e.g. `turnd completions bash > /etc/bash_completion.d/turnd`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

fn main() -> std::process::ExitCode {
    live_upgrade::remember_how_started();
    // Errors are for operators: one line naming the file, key or address, no backtrace.
    let command = match Cli::parse().command {
        // ctl has exit codes of its own (see `ctl`).
        Command::Ctl(args) => return ctl::run(args),
        command => command,
    };
    match dispatch(command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("turnd: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Serve { config, users, allow_peers, allow_host_peers, log_format, port, workers, admin_address } => {
            let users = users
                .iter()
                .map(|u| {
                    let (name, password) = u.split_once(':').context("--user takes NAME:PASSWORD")?;
                    Ok(User { name: name.to_owned(), password: Some(password.to_owned()), key: None })
                })
                .collect::<Result<Vec<_>>>()?;
            serve::serve(
                config,
                serve::Overrides {
                    users,
                    allow_peers,
                    allow_host_peers,
                    log_format,
                    port,
                    workers,
                    admin_address,
                    descriptors: None,
                    discovered: Default::default(),
                },
            )
        }
        Command::CheckConfig { file } => {
            let config = Config::load(&file)?;
            println!("# {}: OK; effective configuration (secrets omitted):", file.display());
            print!("{}", toml::to_string_pretty(&config).context("printing the configuration")?);
            Ok(())
        }
        Command::Credentials { secret, user, ttl, urls } => credentials(&secret, &user, ttl, urls),
        Command::Probe(args) => {
            let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
            turnd::probe::cli(&args, now, &mut std::io::stdout()).map(drop).map_err(Into::into)
        }
        Command::Ctl(args) => {
            // Handled in `main` (its exit codes); kept here so the match stays total.
            match ctl::run(args) {
                code if code == std::process::ExitCode::SUCCESS => Ok(()),
                _ => bail!("turnd ctl failed"),
            }
        }
        Command::Upgrade { pid } => {
            check_upgradable(pid)?;
            turnd::sys::process::signal_process(pid, libc::SIGUSR2)
                .with_context(|| format!("sending SIGUSR2 to turnd (pid {pid})"))?;
            println!("asked turnd (pid {pid}) to hand over to a new process; see its log for the outcome");
            Ok(())
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "turnd", &mut std::io::stdout());
            Ok(())
        }
    }
}

/// Refuses to signal a process that is not a turnd catching SIGUSR2: the default action
/// of SIGUSR2 ends a process, so a turnd from before live upgrades (or one still
/// starting) would exit and drop every call instead.
fn check_upgradable(pid: i32) -> Result<()> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("no process {pid} (reading /proc/{pid}/status)"))?;
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
    let name = field("Name:").unwrap_or_default();
    if name != "turnd" {
        bail!("process {pid} is {name:?}, not turnd");
    }
    let caught = field("SigCgt:").and_then(|mask| u64::from_str_radix(mask, 16).ok()).unwrap_or(0);
    if caught & (1 << (libc::SIGUSR2 - 1)) == 0 {
        bail!(
            "turnd (pid {pid}) does not handle SIGUSR2: it predates live upgrades or is still starting, and would exit; \
             restart it instead (calls are dropped), or retry once it serves"
        );
    }
    Ok(())
}

/// The longest TTL `credentials` mints: REST credentials are meant to be short-lived,
/// and ten years keeps the expiry far from any overflow.
const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

fn credentials(secret: &str, user: &str, ttl: Duration, urls: Vec<String>) -> Result<()> {
    if user.contains(':') {
        bail!("--user must not contain ':' (it separates the expiry from the user id)");
    }
    if secret.is_empty() {
        bail!("--secret is empty: turnd refuses empty shared secrets (auth.secrets)");
    }
    if ttl < Duration::from_secs(1) || ttl > MAX_TTL {
        bail!("--ttl must be from 1s to 10 years (got {})", humantime::format_duration(ttl));
    }
    let expiry = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + ttl.as_secs();
    let username = format!("{expiry}:{user}");
    let urls = if urls.is_empty() { vec!["turn:127.0.0.1:3478".to_owned()] } else { urls };
    let ice_server = serde_json::json!({
        "urls": urls,
        "username": username,
        "credential": rest_password(secret.as_bytes(), &username),
    });
    println!("{}", serde_json::to_string_pretty(&ice_server)?);
    Ok(())
}
