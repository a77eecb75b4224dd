//! The turnd binary: CLI, config loading, logging, and the run loop. `anyhow` lives
//! only here, at the edge.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use ipnet::IpNet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;
use tracing::{error, info, warn};
use turnd::config::{Config, ListenTransport, LogFormat, User};
use turnd::net::tls::ReloadableCert;
use turnd::net::{self, stream, Control, EventLoop, Publisher};
use turnd::turn::auth::rest_password;

#[derive(Parser, Debug)]
#[command(name = "turnd", version, about = "A STUN/TURN server for WebRTC")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server (with no config file: UDP 0.0.0.0:3478 and a random user).
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
        /// Log format (overrides the config file).
        #[arg(long, value_enum)]
        log_format: Option<LogFormat>,
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
}

/// How often certificate files are checked for renewal.
const CERTIFICATE_POLL: Duration = Duration::from_secs(5);

fn main() -> std::process::ExitCode {
    // Errors are for operators: one line naming the file, key or address, no backtrace.
    match dispatch(Cli::parse().command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("turnd: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Serve { config, users, allow_peers, log_format } => serve(config, users, allow_peers, log_format),
        Command::CheckConfig { file } => {
            let config = Config::load(&file)?;
            println!("# {}: OK; effective configuration (secrets omitted):", file.display());
            print!("{}", toml::to_string_pretty(&config).context("printing the configuration")?);
            Ok(())
        }
        Command::Credentials { secret, user, ttl, urls } => credentials(&secret, &user, ttl, urls),
    }
}

fn credentials(secret: &str, user: &str, ttl: Duration, urls: Vec<String>) -> Result<()> {
    if user.contains(':') {
        bail!("--user must not contain ':' (it separates the expiry from the user id)");
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

fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TURND_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_env("RUST_LOG"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn serve(
    path: Option<PathBuf>,
    users: Vec<String>,
    allow_peers: Vec<IpNet>,
    log_format: Option<LogFormat>,
) -> Result<()> {
    let mut config = match &path {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    init_logging(&config.log.level, log_format.unwrap_or(config.log.format));
    for user in users {
        let (name, password) = user.split_once(':').context("--user takes NAME:PASSWORD")?;
        config.auth.user.push(User { name: name.to_owned(), password: Some(password.to_owned()), key: None });
    }
    config.relay.allowed_peers.extend(allow_peers);
    config.validate().map_err(|(key, message)| anyhow::anyhow!("`{key}`: {message}"))?;
    if !config.has_credentials() {
        let password = random_password();
        warn!(
            user = "turnd", password = %password,
            "no users configured: generated a one-time user for this run (configure [[auth.user]] or auth.secrets)"
        );
        config.auth.user.push(User { name: "turnd".into(), password: Some(password), key: None });
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(run(config, path))
}

fn random_password() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 12];
    // Without a working CSPRNG a predictable password would be worse than no start.
    ring::rand::SystemRandom::new().fill(&mut bytes).expect("system CSPRNG");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn run(config: Config, path: Option<PathBuf>) -> Result<()> {
    let cert = load_certificate(&config)?;
    let embedded_default = path.is_none();
    let (stream_tx, stream_rx) = tokio::sync::mpsc::channel(4096);
    let slots = Arc::new(Semaphore::new(config.tcp.max_connections));
    let mut udp_sockets = Vec::new();
    for listen in &config.listen {
        let label = match listen.transport {
            ListenTransport::Udp => "udp",
            ListenTransport::Tcp => "tcp",
            ListenTransport::Tls => "tls",
        };
        let context = || format!("binding {label} {}", listen.address);
        // The embedded default includes [::]: a host without IPv6 just skips it.
        let skip_v6 = |e: &std::io::Error| {
            let skip = embedded_default && listen.address.is_ipv6();
            if skip {
                warn!(error = %e, "no IPv6 here: not listening on {label} {}", listen.address);
            }
            skip
        };
        let local = if listen.transport == ListenTransport::Udp {
            let (socket, local) = match net::bind_udp_listener(listen.address) {
                Ok(bound) => bound,
                Err(e) if skip_v6(&e) => continue,
                Err(e) => return Err(e).with_context(context),
            };
            udp_sockets.push(socket);
            local
        } else {
            let listener = match net::bind_tcp_listener(listen.address) {
                Ok(listener) => listener,
                Err(e) if skip_v6(&e) => continue,
                Err(e) => return Err(e).with_context(context),
            };
            let local = listener.local_addr()?;
            let acceptor = match (&cert, listen.transport) {
                (Some(cert), ListenTransport::Tls) => {
                    Some(tokio_rustls::TlsAcceptor::from(Arc::new(cert.server_config().context("TLS setup")?)))
                }
                _ => None,
            };
            let limits = config.tcp.limits();
            tokio::spawn(stream::accept_loop(listener, acceptor, limits, slots.clone(), stream_tx.clone()));
            local
        };
        info!("listening on {label} {local}");
    }
    let publisher = Publisher::new(1024);
    let event_loop = EventLoop::new(config.core(), udp_sockets, publisher.clone())?;
    let (control, control_rx) = tokio::sync::mpsc::channel(8);
    // The admin plane runs on a thread of its own; dropping the handle on return stops it.
    let _admin = if config.admin.enabled {
        let admin = turnd::admin::spawn(&config.admin, &publisher, control.clone())
            .context("starting the admin listener (see admin.address; admin.enabled = false turns it off)")?;
        info!("listening on admin {}", admin.local_addr());
        Some(admin)
    } else {
        None
    };
    let reloads = tokio::spawn(reload_on_sighup(path, config, cert.clone(), control.clone()));
    let watcher = cert.map(|cert| tokio::spawn(watch_certificate(cert)));
    let served = net::until_signal(event_loop.run(control_rx, stream_rx)).await;
    reloads.abort();
    if let Some(watcher) = watcher {
        watcher.abort();
    }
    match served {
        Some(Err(e)) => {
            error!(error = %e, "event loop failed");
            Err(e.into())
        }
        _ => {
            info!("shutting down");
            Ok(())
        }
    }
}

/// Loads the TLS certificate when a `tls` listener needs one; the error names the file.
fn load_certificate(config: &Config) -> Result<Option<Arc<ReloadableCert>>> {
    if !config.listen.iter().any(|l| l.transport == ListenTransport::Tls) {
        return Ok(None);
    }
    let (Some(cert), Some(key)) = (&config.tls.certificate, &config.tls.private_key) else {
        bail!("a tls listener needs [tls] certificate and private-key");
    };
    Ok(Some(Arc::new(ReloadableCert::new(cert, key)?)))
}

/// Picks up renewed certificate files (e.g. from certbot) without a SIGHUP.
async fn watch_certificate(cert: Arc<ReloadableCert>) {
    let mut tick = tokio::time::interval(CERTIFICATE_POLL);
    loop {
        tick.tick().await;
        match cert.reload_if_changed() {
            Ok(true) => info!("TLS certificate reloaded (files changed)"),
            Ok(false) => {}
            Err(e) => warn!(error = %e, "TLS certificate files changed but cannot be loaded; keeping the old one"),
        }
    }
}

/// On SIGHUP, rereads the config file and hands the loop what can change live.
async fn reload_on_sighup(
    path: Option<PathBuf>,
    mut current: Config,
    cert: Option<Arc<ReloadableCert>>,
    control: tokio::sync::mpsc::Sender<Control>,
) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        if let Some(cert) = &cert {
            match cert.reload() {
                Ok(()) => info!("TLS certificate reloaded"),
                Err(e) => error!(error = %e, "TLS certificate reload failed; keeping the old one"),
            }
        }
        let Some(path) = &path else {
            warn!("SIGHUP ignored: running without a config file");
            continue;
        };
        let mut next = match Config::load(path) {
            Ok(next) => next,
            Err(e) => {
                error!(error = %e, "reload rejected; the running configuration stays in force");
                continue;
            }
        };
        // Users given on the command line and the generated user stay.
        for user in &current.auth.user {
            if next.auth.user.iter().all(|u| u.name != user.name) && !next.has_credentials() {
                next.auth.user.push(user.clone());
            }
        }
        if next.listen != current.listen {
            warn!("listener changes need a restart; they are not applied");
        }
        if control.send(Control::Reconfigure(Box::new(next.core()))).await.is_err() {
            return;
        }
        current = next;
    }
}
