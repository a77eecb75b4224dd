//! `turnd serve`: binds the listeners, runs the event loop, and handles the process's
//! life: SIGHUP reloads, SIGTERM drains then exits, SIGINT exits, and systemd hears
//! about each (READY, RELOADING, STOPPING; the loop itself sends STATUS and WATCHDOG).

use anyhow::{bail, Context, Result};
use ipnet::IpNet;
use sd_notify::NotifyState;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, Semaphore};
use tracing::{error, info, warn};
use turnd::config::{Config, ListenTransport, LogFormat, User};
use turnd::net::passthrough::{Passthrough, TurnNames};
use turnd::net::route::StreamRouter;
use turnd::net::tls::ReloadableCert;
use turnd::net::{self, stream, Control, Publisher, Workers};

/// How often certificate files are checked for renewal.
const CERTIFICATE_POLL: Duration = Duration::from_secs(5);
/// How long the workers get to stop once told to.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What the command line adds to every config, including reloaded ones.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--user NAME:PASSWORD`.
    pub users: Vec<User>,
    /// `--allow-peer CIDR`.
    pub allow_peers: Vec<IpNet>,
    /// `--allow-host-peers`.
    pub allow_host_peers: bool,
    /// `--log-format`.
    pub log_format: Option<LogFormat>,
    /// `--port`: every TURN listener's port (0 is resolved to one free port at start).
    pub port: Option<u16>,
    /// `--workers`.
    pub workers: Option<usize>,
    /// `--admin-address`.
    pub admin_address: Option<SocketAddr>,
    /// What the open-file limit allows (found at start, applied to reloads too).
    pub descriptors: Option<crate::descriptors::Budget>,
}

impl Overrides {
    fn apply(&self, config: &mut Config) {
        config.auth.user.extend(self.users.iter().cloned());
        config.relay.allowed_peers.extend(self.allow_peers.iter().copied());
        config.relay.allow_host_peers |= self.allow_host_peers;
        if let Some(port) = self.port {
            for listen in &mut config.listen {
                listen.address.set_port(port);
            }
        }
        if let Some(workers) = self.workers {
            config.workers = workers;
        }
        if let Some(address) = self.admin_address {
            config.admin.address = address;
        }
        if let Some(budget) = self.descriptors {
            budget.apply(config);
        }
    }
}

/// How many times `--port 0` looks for a port free for every listener.
const SHARED_PORT_TRIES: usize = 32;

/// `--port 0`: one port that every configured listener can bind, so that a client
/// reaches UDP and TCP, IPv4 and IPv6 on the same port as with a fixed one. A port
/// the kernel picks for the first listener is tried on the others; wildcard IPv6
/// listeners on a host without IPv6 are left out of the check, as they are skipped.
fn shared_free_port(config: &Config) -> Result<u16> {
    use socket2::{Domain, Socket, Type};
    // Bound, never listening: enough to know the port is free, and nothing lingers.
    let try_bind = |listen: &turnd::config::Listen, port: u16| -> std::io::Result<Option<Socket>> {
        let address = SocketAddr::new(listen.address.ip(), port);
        let kind = if listen.transport == ListenTransport::Udp { Type::DGRAM } else { Type::STREAM };
        let bound = Socket::new(Domain::for_address(address), kind, None).and_then(|socket| {
            if address.is_ipv6() {
                socket.set_only_v6(true)?;
            }
            socket.bind(&address.into())?;
            Ok(socket)
        });
        match bound {
            Ok(socket) => Ok(Some(socket)),
            Err(e) if skipped_without_ipv6(listen.address, &e) => Ok(None),
            Err(e) => Err(e),
        }
    };
    for _ in 0..SHARED_PORT_TRIES {
        let mut held = Vec::new();
        let mut port = 0;
        let mut all_free = true;
        for listen in &config.listen {
            match try_bind(listen, port) {
                Ok(Some(socket)) => {
                    if port == 0 {
                        port = socket.local_addr()?.as_socket().map_or(0, |a| a.port());
                    }
                    held.push(socket);
                }
                Ok(None) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && port != 0 => {
                    all_free = false;
                    break;
                }
                Err(e) => return Err(e).with_context(|| format!("binding {} to pick a port", listen.address)),
            }
        }
        if all_free && port != 0 {
            return Ok(port);
        }
    }
    bail!("no port free for every listener after {SHARED_PORT_TRIES} tries")
}

/// Whether a bind error means "no IPv6 on this host" for a wildcard IPv6 listener.
fn skipped_without_ipv6(address: SocketAddr, e: &std::io::Error) -> bool {
    address.is_ipv6()
        && address.ip().is_unspecified()
        && matches!(e.raw_os_error(), Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL))
}

/// Changes the log filter of the running process.
type SetLogLevel = Box<dyn Fn(&str) -> Result<()> + Send + Sync>;

fn init_logging(level: &str, format: LogFormat) -> SetLogLevel {
    use tracing_subscriber::EnvFilter;
    // TURND_LOG (or RUST_LOG) wins over the file, and then reloads keep it.
    let from_env = EnvFilter::try_from_env("TURND_LOG").or_else(|_| EnvFilter::try_from_env("RUST_LOG")).ok();
    let pinned = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(level));
    macro_rules! setter {
        ($builder:expr) => {{
            let handle = $builder.reload_handle();
            $builder.init();
            Box::new(move |level: &str| {
                if !pinned {
                    handle.reload(EnvFilter::try_new(level)?)?;
                }
                Ok(())
            })
        }};
    }
    match format {
        LogFormat::Text => {
            let builder = tracing_subscriber::fmt()
                .with_ansi(false)
                .with_writer(crate::log_escape::EscapedStderr)
                .with_env_filter(filter)
                .with_filter_reloading();
            setter!(builder)
        }
        LogFormat::Json => {
            let builder = tracing_subscriber::fmt()
                .json()
                .with_writer(std::io::stderr)
                .with_env_filter(filter)
                .with_filter_reloading();
            setter!(builder)
        }
    }
}

/// Loads the config (or the embedded default), sets up logging, and runs.
pub fn serve(path: Option<PathBuf>, overrides: Overrides) -> Result<()> {
    let mut config = match &path {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let set_log_level = init_logging(&config.log.level, overrides.log_format.unwrap_or(config.log.format));
    let mut overrides = overrides;
    if overrides.port == Some(0) {
        // Resolved once, so that a reload applying the overrides sees the same port.
        overrides.port = Some(shared_free_port(&config)?);
    }
    overrides.apply(&mut config);
    let budget = crate::descriptors::raise_and_budget(config.worker_count());
    budget.apply(&mut config);
    overrides.descriptors = Some(budget);
    config.validate().map_err(|(key, message)| anyhow::anyhow!("`{key}`: {message}"))?;
    if !config.has_credentials() {
        let password = random_password()?;
        warn!(
            user = "turnd", password = %password,
            "no users configured: generated a one-time user for this run (configure [[auth.user]] or auth.secrets)"
        );
        let user = User { name: "turnd".into(), password: Some(password), key: None };
        config.auth.user.push(user.clone());
        // Reloads of a file without users keep it.
        overrides.users.push(user);
    }
    // The workers have threads of their own; this runtime runs the TCP/TLS connection
    // tasks (framing and TLS), the accept loops, signals, the admin fan-out and the
    // authentication webhook's lookups. With
    // several workers it gets as many threads, so that TLS is not held to one core.
    let threads = config.worker_count();
    let runtime = if threads > 1 {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()?
    } else {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    };
    runtime.block_on(run(config, path, overrides, set_log_level))
}

fn random_password() -> Result<String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 12];
    // Without a working CSPRNG a predictable password would be worse than no start.
    ring::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| anyhow::anyhow!("the system CSPRNG failed"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The signals turnd acts on, registered before anything is bound: a SIGTERM that
/// arrives while starting must still mean "stop cleanly", not the default action.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn register() -> Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("registering SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("registering SIGINT")?,
            hup: signal(SignalKind::hangup()).context("registering SIGHUP")?,
        })
    }
}

async fn run(config: Config, path: Option<PathBuf>, overrides: Overrides, set_log_level: SetLogLevel) -> Result<()> {
    let mut signals = Signals::register()?;
    let cert = load_certificate(&config)?;
    warn_uncovered_names(&config, cert.as_deref());
    let worker_count = config.worker_count();
    let streams: Vec<_> = (0..worker_count.max(1)).map(|_| mpsc::channel(net::workers::STREAM_QUEUE)).collect();
    let router = StreamRouter::new(streams.iter().map(|(tx, _)| tx.clone()).collect());
    let udp_sockets = bind_listeners(&config, worker_count, path.is_none(), cert.as_ref(), router)?;
    let publisher = Publisher::new(1024);
    let (control, control_rx) = mpsc::channel(8);
    let webhook = webhook_settings(&config)?;
    let (lookup_service, lookups) = net::webhook::start(webhook, worker_count.max(1));
    let mut workers = Workers::start(config.core(), udp_sockets, &publisher, control_rx, streams, lookups)
        .context("starting the workers")?;
    info!(workers = worker_count, "serving");
    // The admin plane runs on a thread of its own; dropping the handle on return stops it.
    let _admin = if config.admin.enabled {
        let admin =
            turnd::admin::spawn_with_sources(&config.admin, config.limits.sources(), &publisher, control.clone())
                .context("starting the admin listener (see admin.address; admin.enabled = false turns it off)")?;
        info!("listening on admin {}", admin.local_addr());
        Some(admin)
    } else {
        None
    };
    let watcher = cert.clone().map(|cert| tokio::spawn(watch_certificate(cert)));
    // The fleet registry (`[cluster]`; restart to change): a task of its own, never on
    // the request path.
    let cluster = match &config.cluster {
        settings if settings.enabled() => Some(
            turnd::cluster::Settings::from_config(settings)
                .context("[cluster]")?
                .with_realms(config.core().realms().map(|(tenant, realm)| (tenant, realm.to_owned())).collect()),
        ),
        _ => None,
    };
    // Usage records: to the Redis stream with [cluster], to [usage] file if set.
    let usage = turnd::usage::spawn(
        turnd::usage::UsageSinks {
            node: cluster.as_ref().map_or_else(String::new, |c| c.node_id.clone()),
            redis: cluster.as_ref().and_then(turnd::cluster::Settings::usage_stream),
            file: config.usage.file.clone(),
            realms: config.core().realms().map(|(tenant, realm)| (tenant, realm.to_owned())).collect(),
        },
        publisher.events.subscribe(),
        publisher.snapshots.subscribe(),
        publisher.cluster.usage.clone(),
    );
    let cluster = cluster.map(|settings| {
        turnd::cluster::spawn(settings, publisher.snapshots.subscribe(), control.clone(), publisher.cluster.clone())
    });
    let _ = sd_notify::notify(&[NotifyState::Ready]);

    let mut current = config;
    let mut snapshots = publisher.snapshots.subscribe();
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    let outcome = loop {
        let deadline = drain_deadline;
        tokio::select! {
            (worker, result) = workers.exited() => {
                break result.with_context(|| format!("worker {worker}")).and_then(|()| Err(anyhow::anyhow!("worker {worker} stopped")));
            }
            _ = signals.int.recv() => break Ok(()),
            _ = signals.term.recv() => {
                if drain_deadline.is_some() || current.drain_time.is_zero() {
                    break Ok(());
                }
                let alternate = current.alternate_server;
                let _ = sd_notify::notify(&[NotifyState::Stopping]);
                let (reply, drained) = tokio::sync::oneshot::channel();
                let asked = control.send(Control::Drain { alternate, reply }).await.is_ok();
                if !asked || !matches!(tokio::time::timeout(STOP_GRACE, drained).await, Ok(Ok(()))) {
                    break Ok(());
                }
                // Logged once every worker turns new Allocates away.
                info!(drain_time = ?current.drain_time, alternate = ?alternate,
                    "SIGTERM: draining before exit, new allocations are turned away (SIGTERM again to exit now)");
                drain_deadline = Some(tokio::time::Instant::now() + current.drain_time);
            }
            () = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await },
                if deadline.is_some() => break Ok(()),
            Ok(()) = snapshots.changed(), if drain_deadline.is_some() => {
                let empty = { let s = snapshots.borrow(); s.draining && s.allocations == 0 };
                if empty {
                    info!("drained: no allocations left");
                    break Ok(());
                }
            }
            _ = signals.hup.recv() => {
                let _ = sd_notify::notify(&[NotifyState::Reloading]);
                if let Some(next) = reload(path.as_ref(), &current, &overrides, cert.as_deref(), &set_log_level, &control, &lookup_service).await {
                    current = next;
                }
                let _ = sd_notify::notify(&[NotifyState::Ready]);
            }
        }
    };
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
    if let Some(watcher) = watcher {
        watcher.abort();
    }
    for task in [cluster, usage].into_iter().flatten() {
        task.abort();
    }
    let _ = control.try_send(Control::Shutdown);
    let _ = tokio::time::timeout(STOP_GRACE, workers.join()).await;
    match outcome {
        Ok(()) => {
            info!("shutting down");
            Ok(())
        }
        Err(e) => {
            error!(error = %format!("{e:#}"), "a worker failed");
            Err(e)
        }
    }
}

/// Binds every configured listener; TCP/TLS listeners get their accept loops here.
/// Returns each worker's UDP sockets: one of every configured UDP listener.
fn bind_listeners(
    config: &Config,
    workers: usize,
    embedded_default: bool,
    cert: Option<&Arc<ReloadableCert>>,
    router: StreamRouter,
) -> Result<Vec<Vec<(std::net::UdpSocket, turnd::turn::TenantId)>>> {
    let slots = Arc::new(Semaphore::new(config.tcp.max_connections));
    // Denied clients and trusted proxies, for every TCP/TLS accept loop.
    stream::set_client_filter(stream::ClientFilter::new(
        config.clients.denied.clone(),
        config.clients.trusted_proxies.clone(),
    ));
    let mut udp_sockets: Vec<Vec<(std::net::UdpSocket, turnd::turn::TenantId)>> =
        (0..workers.max(1)).map(|_| Vec::new()).collect();
    stream::set_tenant_server_names(config.tenant_server_names());
    for listen in &config.listen {
        let label = match listen.transport {
            ListenTransport::Udp => "udp",
            ListenTransport::Tcp => "tcp",
            ListenTransport::Tls => "tls",
        };
        let context = || format!("binding {label} {}", listen.address);
        // Validation made sure the realm is configured.
        let tenant = listen.realm.as_deref().and_then(|realm| config.tenant_id(realm)).unwrap_or_default();
        // The embedded default and the packaged config include [::]: a host without
        // IPv6 skips that wildcard listener instead of refusing to start.
        let skip_v6 = |e: &std::io::Error| {
            let no_ipv6 = matches!(e.raw_os_error(), Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL));
            let wildcard_v6 = listen.address.is_ipv6() && listen.address.ip().is_unspecified();
            let skip = wildcard_v6 && (embedded_default || no_ipv6);
            if skip {
                warn!(error = %e, "no IPv6 here: not listening on {label} {}", listen.address);
            }
            skip
        };
        let local = if listen.transport == ListenTransport::Udp {
            let (sockets, local) = match net::bind_udp_listener(listen.address, udp_sockets.len()) {
                Ok(bound) => bound,
                Err(e) if skip_v6(&e) => continue,
                Err(e) => return Err(e).with_context(context),
            };
            for (share, socket) in udp_sockets.iter_mut().zip(sockets) {
                share.push((socket, tenant));
            }
            local
        } else {
            let listener = match net::bind_tcp_listener(listen.address) {
                Ok(listener) => listener,
                Err(e) if skip_v6(&e) => continue,
                Err(e) => return Err(e).with_context(context),
            };
            let local = listener.local_addr()?;
            let tls = match (cert, listen.transport) {
                (Some(cert), ListenTransport::Tls) => Some(stream::TlsListener {
                    acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(cert.server_config().context("TLS setup")?)),
                    passthrough: listen.passthrough_to.map(|backend| {
                        let names = listen.normalized_turn_names();
                        let names = if names.is_empty() {
                            TurnNames::Certificate(cert.clone())
                        } else {
                            TurnNames::Listed(names)
                        };
                        Arc::new(Passthrough { backend, names })
                    }),
                }),
                _ => None,
            };
            let limits = config.tcp.limits(config.limits.sources());
            let proxy = listen.proxy_protocol;
            tokio::spawn(stream::accept_loop(listener, tls, limits, slots.clone(), router.clone(), proxy, tenant));
            local
        };
        if let Some(backend) = listen.passthrough_to {
            info!("listening on {label} {local} (connections that are not TURN pass through to {backend})");
        } else if listen.proxy_protocol {
            info!("listening on {label} {local} (PROXY protocol, from trusted proxies only)");
        } else {
            info!("listening on {label} {local}");
        }
    }
    // RFC 5780: the other three combinations of the primary and alternate IP and port
    // become ordinary UDP listeners of every worker (see `turn::nat_discovery`).
    let discovery = config.nat_discovery_addresses().map_err(|(key, message)| anyhow::anyhow!("`{key}`: {message}"))?;
    for address in discovery.iter().flat_map(|d| d.addresses()) {
        let configured = config.listen.iter().any(|l| l.transport == ListenTransport::Udp && l.address == address);
        if configured {
            continue;
        }
        let (sockets, local) = net::bind_udp_listener(address, udp_sockets.len())
            .with_context(|| format!("binding udp {address} for [nat-discovery] (is the address on this host?)"))?;
        for (share, socket) in udp_sockets.iter_mut().zip(sockets) {
            share.push((socket, turnd::turn::TenantId::DEFAULT));
        }
        info!("listening on udp {local} (RFC 5780 NAT behaviour discovery)");
    }
    Ok(udp_sockets)
}

/// Warns about each tenant server name the TLS certificate is not valid for: clients
/// that check the certificate (browsers do) would fail the handshake for that tenant.
fn warn_uncovered_names(config: &Config, cert: Option<&ReloadableCert>) {
    let Some(cert) = cert else {
        return;
    };
    for (name, _) in config.tenant_server_names() {
        if !cert.is_valid_for(&name) {
            warn!(server_name = %name, "the TLS certificate is not valid for this tenant server name");
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

/// The webhook's settings from `[auth.webhook]` (token and CA bundle read now).
fn webhook_settings(config: &Config) -> Result<Option<net::webhook::Settings>> {
    config
        .auth
        .webhook
        .as_ref()
        .map(|w| net::webhook::Settings::from_config(w).context("setting up the authentication webhook"))
        .transpose()
}

/// SIGHUP: rereads the config file and applies what can change live (users, secrets,
/// quotas, peer policy, lifetimes, log level, the certificate, the authentication
/// webhook). Returns the new config, or `None` when it was rejected and the running one
/// stays in force.
async fn reload(
    path: Option<&PathBuf>,
    current: &Config,
    overrides: &Overrides,
    cert: Option<&ReloadableCert>,
    set_log_level: &SetLogLevel,
    control: &mpsc::Sender<Control>,
    lookup_service: &net::webhook::Service,
) -> Option<Config> {
    if let Some(cert) = cert {
        match cert.reload() {
            Ok(()) => info!("TLS certificate reloaded"),
            Err(e) => error!(error = %e, "TLS certificate reload failed; keeping the old one"),
        }
    }
    let Some(path) = path else {
        warn!("SIGHUP: running without a config file, nothing else to reload");
        return None;
    };
    let mut next = match Config::load(path) {
        Ok(next) => next,
        Err(e) => {
            error!(error = %e, "reload rejected; the running configuration stays in force");
            return None;
        }
    };
    overrides.apply(&mut next);
    if let Err((key, message)) = next.validate() {
        error!(key, message, "reload rejected; the running configuration stays in force");
        return None;
    }
    if let Err((table, index, key, message)) = next.validate_tenants() {
        error!(table, index, key, message, "reload rejected; the running configuration stays in force");
        return None;
    }
    let needs_restart: Vec<&str> = [
        ("listen", next.listen != current.listen),
        (
            "tls listeners",
            next.tls.certificate != current.tls.certificate || next.tls.private_key != current.tls.private_key,
        ),
        ("admin", format!("{:?}", next.admin) != format!("{:?}", current.admin)),
        ("workers", next.workers != current.workers),
        ("tcp", format!("{:?}", next.tcp) != format!("{:?}", current.tcp)),
        ("nat-discovery", next.nat_discovery != current.nat_discovery),
    ]
    .into_iter()
    .filter_map(|(what, changed)| changed.then_some(what))
    .collect();
    if !needs_restart.is_empty() {
        warn!(settings = ?needs_restart, "these changes need a restart and are not applied");
    }
    if (next.relay.port_min, next.relay.port_max) != (current.relay.port_min, current.relay.port_max) {
        // The ledger switches ranges only while no port of the old one is in use.
        warn!(
            port_min = next.relay.port_min, port_max = next.relay.port_max,
            "relay port range changed: it takes effect now if no relay port is in use, else at the next reload when none is"
        );
    }
    // The webhook's token and CA bundle are read again; a failure rejects the reload.
    let webhook = match webhook_settings(&next) {
        Ok(webhook) => webhook,
        Err(e) => {
            error!(error = %format!("{e:#}"), "reload rejected; the running configuration stays in force");
            return None;
        }
    };
    // The discovery addresses are sockets: the running ones stay.
    next.nat_discovery = current.nat_discovery.clone();
    let mut core = next.core();
    core.nat_discovery = current.core().nat_discovery;
    if let Err(e) = set_log_level(&next.log.level) {
        warn!(error = %e, "log level not changed");
    }
    // New TCP/TLS connections see the new denied clients and trusted proxies at once.
    stream::set_client_filter(stream::ClientFilter::new(
        next.clients.denied.clone(),
        next.clients.trusted_proxies.clone(),
    ));
    // New TLS handshakes see the new tenants' server names.
    warn_uncovered_names(&next, cert);
    stream::set_tenant_server_names(next.tenant_server_names());
    if control.send(Control::Reconfigure(Box::new(core))).await.is_err() {
        return None;
    }
    lookup_service.reconfigure(webhook);
    info!(
        users = next.auth.user.len(),
        secrets = next.auth.secrets.len(),
        tenants = next.tenant.len(),
        "configuration reloaded"
    );
    Some(next)
}
