//! `turnd serve`: binds the listeners, runs the event loop, and handles the process's
//! life: SIGHUP reloads, SIGTERM drains then exits, SIGINT exits, and systemd hears
//! about each (READY, RELOADING, STOPPING; the loop itself sends STATUS and WATCHDOG).

use anyhow::{bail, Context, Result};
use ipnet::IpNet;
use sd_notify::NotifyState;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, Semaphore};
use tracing::{error, info, warn};
use turnd::config::{Config, External, ListenTransport, LogFormat, User};
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
    /// `external-ipv4`/`external-ipv6 = "auto"`: what the STUN server told at start
    /// (reloads keep it).
    pub discovered: net::external::Discovered,
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
        self.discovered.apply(config);
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
    // Started by a running turnd for a live upgrade: its offer comes first, and every
    // refusal below goes back to it (it keeps serving) as well as to our exit status.
    let handover = crate::live_upgrade::inherited()?;
    let refuse = |key: &str, e: &anyhow::Error| {
        if let Some((socket, _)) = &handover {
            crate::live_upgrade::refuse(socket, key, &format!("{e:#}"));
        }
    };
    let loaded = match &path {
        Some(path) => Config::load(path).map_err(anyhow::Error::from),
        None => Ok(Config::default()),
    };
    let mut config = loaded.inspect_err(|e| refuse("config", e))?;
    let set_log_level = init_logging(&config.log.level, overrides.log_format.unwrap_or(config.log.format));
    let mut overrides = overrides;
    // Restarted by systemd with what the previous turnd left in its store.
    let stored = if handover.is_none() { crate::fd_store::stored() } else { None };
    let stored = match stored {
        Some(Ok(stored)) => Some(stored),
        Some(Err(e)) => {
            error!(error = %format!("{e:#}"), "systemd's file descriptor store holds an unusable handover: starting afresh");
            None
        }
        None => None,
    };
    let inherited_port = match (&handover, &stored) {
        (Some((_, offer)), _) => offer.port_override,
        (None, Some((state, _, _))) => state.process.port_override,
        _ => None,
    };
    if overrides.port == Some(0) {
        // Resolved once, so that a reload applying the overrides sees the same port
        // (and a successor, the one its predecessor resolved).
        overrides.port = match inherited_port {
            Some(port) => Some(port),
            None => Some(shared_free_port(&config)?),
        };
    }
    overrides.apply(&mut config);
    let budget = crate::descriptors::raise_and_budget(crate::descriptors::Shape::of(&config));
    budget.apply(&mut config);
    overrides.descriptors = Some(budget);
    config.validate().map_err(|(key, message)| {
        let e = anyhow::anyhow!("`{key}`: {message}");
        refuse(key, &e);
        e
    })?;
    if config.relay.discovers_external_address() {
        // Before anything is bound (a successor in a live upgrade asks too, while its
        // predecessor serves on); failing here stops the start, see `net::external`.
        let discovered = net::external::discover(&config.relay, &config.listen).map_err(|e| {
            let e = anyhow::Error::from(e).context("discovering the external address");
            refuse("relay.external-address-stun", &e);
            e
        })?;
        info!(
            stun_server = config.relay.external_address_stun.as_deref().unwrap_or_default(),
            external = %[discovered.ipv4.map(IpAddr::V4), discovered.ipv6.map(IpAddr::V6)]
                .iter()
                .flatten()
                .map(IpAddr::to_string)
                .collect::<Vec<_>>()
                .join(" "),
            "external address discovered: relayed addresses are advertised at it"
        );
        overrides.discovered = discovered;
        discovered.apply(&mut config);
    }
    let realms = crate::live_upgrade::Realms::of(&config.core());
    let planned = turnd::upgrade::compat::Planned {
        workers: config.worker_count().max(1),
        listeners: planned_listeners(&config)?,
        relay_ports: (config.relay.port_min, config.relay.port_max),
        realms: realms.0.iter().map(|(_, r)| r.clone()).collect(),
    };
    let takeover = match (handover, stored) {
        (Some((socket, offer)), _) => {
            if let Err(refusal) = turnd::upgrade::compat::check(&planned, &offer) {
                crate::live_upgrade::refuse(&socket, refusal.key, &refusal.message);
                bail!("live upgrade refused: `{}`: {}", refusal.key, refusal.message);
            }
            Some(crate::live_upgrade::receive(socket, offer, &realms).context("live upgrade")?)
        }
        (None, Some((state, fds, names))) => {
            let offer = crate::live_upgrade::offer_of(&state);
            let taken = turnd::upgrade::compat::check(&planned, &offer)
                .map_err(|r| anyhow::anyhow!("`{}`: {}", r.key, r.message))
                .and_then(|_| crate::live_upgrade::Takeover::from_store(state, fds, names.clone(), &realms));
            match taken {
                Ok(takeover) => Some(takeover),
                Err(e) => {
                    // The previous turnd is gone: start afresh (its sockets leave the
                    // store first, so their addresses can be bound again).
                    crate::fd_store::forget(&names);
                    error!(error = %format!("{e:#}"), "cannot take over what systemd's store holds: starting afresh, the stored allocations are lost");
                    None
                }
            }
        }
        (None, None) => None,
    };
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
    runtime.block_on(run(config, path, overrides, set_log_level, takeover))
}

/// Every UDP, TCP and TLS listener the config asks for, in the order
/// [`bind_listeners`] binds them: the configured ones, then RFC 5780's extra UDP ones.
fn planned_listeners(config: &Config) -> Result<Vec<(&'static str, SocketAddr)>> {
    let mut all: Vec<(&'static str, SocketAddr)> =
        config.listen.iter().map(|l| (transport_label(l.transport), l.address)).collect();
    let discovery = config.nat_discovery_addresses().map_err(|(key, message)| anyhow::anyhow!("`{key}`: {message}"))?;
    for address in discovery.iter().flat_map(|d| d.addresses()) {
        let configured = config.listen.iter().any(|l| l.transport == ListenTransport::Udp && l.address == address);
        if !configured {
            all.push(("udp", address));
        }
    }
    Ok(all)
}

/// The listeners as bound, UDP first, each kind in config order (the fleet's
/// advertised addresses default to their ports).
fn bound_listeners(inventory: &crate::live_upgrade::Inventory) -> Vec<(ListenTransport, SocketAddr)> {
    let udp = inventory.udp_listeners.iter().map(|a| (ListenTransport::Udp, *a));
    let streams = inventory.streams.iter().map(|l| {
        let transport = if l.transport == transport_label(ListenTransport::Tls) {
            ListenTransport::Tls
        } else {
            ListenTransport::Tcp
        };
        (transport, l.address)
    });
    udp.chain(streams).collect()
}

fn transport_label(transport: ListenTransport) -> &'static str {
    match transport {
        ListenTransport::Udp => "udp",
        ListenTransport::Tcp => "tcp",
        ListenTransport::Tls => "tls",
    }
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
    usr2: Signal,
}

impl Signals {
    fn register() -> Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("registering SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("registering SIGINT")?,
            hup: signal(SignalKind::hangup()).context("registering SIGHUP")?,
            usr2: signal(SignalKind::user_defined2()).context("registering SIGUSR2")?,
        })
    }
}

async fn run(
    config: Config,
    path: Option<PathBuf>,
    overrides: Overrides,
    set_log_level: SetLogLevel,
    takeover: Option<crate::live_upgrade::Takeover>,
) -> Result<()> {
    let mut signals = Signals::register()?;
    let cert = load_certificate(&config)?;
    warn_uncovered_names(&config, cert.as_deref());
    let worker_count = config.worker_count();
    let streams: Vec<_> = (0..worker_count.max(1)).map(|_| mpsc::channel(net::workers::STREAM_QUEUE)).collect();
    let router = StreamRouter::new(streams.iter().map(|(tx, _)| tx.clone()).collect());
    let mut takeover = takeover;
    let (udp_sockets, mut inventory) =
        bind_listeners(&config, worker_count, path.is_none(), cert.as_ref(), router, takeover.as_mut())?;
    inventory.port_override = overrides.port;
    let publisher = Publisher::new(1024);
    let (control, control_rx) = mpsc::channel(8);
    let webhook = webhook_settings(&config)?;
    let (lookup_service, lookups) = net::webhook::start(webhook, worker_count.max(1));
    let adopted = takeover.as_mut().and_then(|t| t.adopted.take());
    let moved = adopted.as_ref().map_or(0, |a| a.workers.iter().map(Vec::len).sum::<usize>());
    // Before the workers, which each find it running (or not) as they start.
    net::xdp::start(config.relay.xdp, &config.relay.xdp_interfaces)
        .map_err(|e| anyhow::anyhow!("`relay.xdp` = \"on\": {e} (\"auto\" falls back to sockets)"))?;
    net::set_udp_offload(config.relay.udp_offload);
    let mut workers = Workers::start(config.core(), udp_sockets, &publisher, control_rx, streams, lookups, adopted)
        .context("starting the workers")?;
    info!(workers = worker_count, "serving");
    // The admin plane runs on a thread of its own; dropping the handle on return stops it.
    let mut admin = if config.admin.enabled {
        let inherited = takeover.as_mut().and_then(|t| t.admin.take()).filter(|l| {
            // The predecessor's admin listener, if this config still asks for it.
            let wanted = config.admin.address;
            l.local_addr().is_ok_and(|a| a == wanted || (wanted.port() == 0 && a.ip() == wanted.ip()))
        });
        let listener = match inherited {
            Some(listener) => listener,
            None => turnd::admin::bind(&config.admin)
                .context("starting the admin listener (see admin.address; admin.enabled = false turns it off)")?,
        };
        inventory.admin = Some((listener.local_addr()?, listener.as_fd().try_clone_to_owned()?));
        let admin =
            turnd::admin::spawn_on(listener, &config.admin, config.limits.sources(), &publisher, control.clone())
                .context("starting the admin listener (see admin.address; admin.enabled = false turns it off)")?;
        info!("listening on admin {}", admin.local_addr());
        Some(admin)
    } else {
        None
    };
    if let Some(takeover) = takeover {
        let from = takeover.offer.udp_listeners.len();
        let gap = takeover.serving(moved);
        info!(
            allocations = moved,
            gap_ms = format!("{:.1}", gap.as_secs_f64() * 1e3),
            udp_listeners = from,
            pid = std::process::id(),
            "live upgrade: took over from the previous turnd, serving"
        );
    }
    let watcher = cert.clone().map(|cert| tokio::spawn(watch_certificate(cert)));
    // The fleet registry (`[cluster]`; restart to change): a task of its own, never on
    // the request path.
    let cluster = match &config.cluster {
        settings if settings.enabled() => Some(
            turnd::cluster::Settings::from_config(settings)
                .context("[cluster]")?
                .with_listeners(settings, &bound_listeners(&inventory))
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
    // Live upgrade done: a successor serves UDP and takes new connections; this
    // process serves its TCP and TLS connections until they close or drain-time ends.
    let mut handed_over = false;
    // Snapshots are merged once a second from the workers' own: one published before
    // the handover's release still counts what moved, so they are trusted only after
    // two more periods.
    let mut settled_after = tokio::time::Instant::now();
    let outcome = loop {
        let deadline = drain_deadline;
        tokio::select! {
            (worker, result) = workers.exited() => {
                break result.with_context(|| format!("worker {worker}")).and_then(|()| Err(anyhow::anyhow!("worker {worker} stopped")));
            }
            _ = signals.int.recv() => break Ok(()),
            _ = signals.term.recv() => {
                if drain_deadline.is_some() {
                    break Ok(());
                }
                if !handed_over && crate::fd_store::enabled() {
                    // systemd keeps a file descriptor store for turnd: hand over through
                    // it (a restart picks it up; a stop empties it).
                    let realms = crate::live_upgrade::Realms::of(&current.core());
                    match crate::fd_store::store(&inventory, &control, &workers, &realms).await {
                        Ok(allocations) => {
                            info!(allocations, "SIGTERM: state and sockets are in systemd's file descriptor store for the next turnd; exiting");
                            break Ok(());
                        }
                        Err(e) => error!(error = %format!("{e:#}"), "cannot hand over through systemd's file descriptor store: draining instead"),
                    }
                }
                if current.drain_time.is_zero() {
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
                let empty = {
                    let s = snapshots.borrow();
                    if handed_over {
                        tokio::time::Instant::now() >= settled_after && s.allocations == 0 && s.tcp_connections == 0
                    } else {
                        s.draining && s.allocations == 0
                    }
                };
                if empty {
                    info!(handed_over, "drained: no allocations left");
                    break Ok(());
                }
            }
            _ = signals.usr2.recv(), if !handed_over && drain_deadline.is_none() => {
                info!(pid = std::process::id(), "SIGUSR2: live upgrade, starting the new turnd");
                let realms = crate::live_upgrade::Realms::of(&current.core());
                match crate::live_upgrade::hand_over(&inventory, &control, &workers, &realms).await {
                    Ok(serving) => {
                        // New connections are the successor's: stop accepting here.
                        for listener in inventory.streams.drain(..) {
                            listener.task.abort();
                        }
                        inventory.admin = None;
                        // Dropping the handle stops the admin listener.
                        drop(admin.take());
                        handed_over = true;
                        settled_after = tokio::time::Instant::now() + 2 * net::PUBLISH_EVERY + Duration::from_millis(500);
                        info!(
                            new_pid = serving.pid, allocations = serving.allocations,
                            gap_ms = format!("{:.1}", serving.gap.as_secs_f64() * 1e3),
                            took_ms = serving.took.as_millis() as u64, drain_time = ?current.drain_time,
                            "live upgrade done: the new turnd serves UDP and new connections; TCP and TLS connections stay here until they close"
                        );
                        // Under systemd the unit follows the new process (this one is
                        // the main pid, the only one NotifyAccess=main lets say so);
                        // what this one says from now on is ignored.
                        let _ = sd_notify::notify(&[NotifyState::MainPid(serving.pid)]);
                        drain_deadline = Some(tokio::time::Instant::now() + current.drain_time);
                    }
                    Err(failure) => {
                        error!(error = %failure, "live upgrade failed: this turnd serves on");
                    }
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
    // The duplicate of the admin listener kept for a handover goes before the admin
    // plane, so the listener closes with it: `turnd ctl drain --wait` takes a refused
    // connection after its session ends as "turnd has exited".
    drop(inventory);
    drop(admin);
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

/// Each worker's UDP listener sockets with the tenant each serves.
type WorkerUdpSockets = Vec<Vec<(std::net::UdpSocket, turnd::turn::TenantId)>>;

/// Binds every configured listener, or takes it from the predecessor in a live
/// upgrade; TCP/TLS listeners get their accept loops here. Returns each worker's UDP
/// sockets (one of every configured UDP listener) and what a live upgrade of this
/// process would hand over.
fn bind_listeners(
    config: &Config,
    workers: usize,
    embedded_default: bool,
    cert: Option<&Arc<ReloadableCert>>,
    router: StreamRouter,
    mut takeover: Option<&mut crate::live_upgrade::Takeover>,
) -> Result<(WorkerUdpSockets, crate::live_upgrade::Inventory)> {
    let mut inventory = crate::live_upgrade::Inventory { workers: workers.max(1), ..Default::default() };
    // Which handed-over listener each planned one takes (checked before the handover).
    let planned = planned_listeners(config)?;
    let matched = match takeover.as_deref() {
        Some(t) => {
            let offered: Vec<(String, SocketAddr)> = t
                .udp
                .first()
                .into_iter()
                .flatten()
                .map(|(a, _)| ("udp".to_owned(), *a))
                .chain(t.streams.iter().map(|(transport, a, _)| (transport.clone(), *a)))
                .collect();
            turnd::upgrade::compat::match_listeners(&planned, &offered)
                .map_err(|r| anyhow::anyhow!("`{}`: {}", r.key, r.message))?
        }
        None => vec![None; planned.len()],
    };
    let mut matched = matched.into_iter();
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
        let label = transport_label(listen.transport);
        let inherited = matched.next().flatten();
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
            let bound = match (inherited, takeover.as_deref_mut()) {
                (Some(address), Some(t)) => take_udp(t, address, udp_sockets.len()),
                _ => net::bind_udp_listener(listen.address, udp_sockets.len()),
            };
            let (sockets, local) = match bound {
                Ok(bound) => bound,
                Err(e) if skip_v6(&e) => continue,
                Err(e) => return Err(e).with_context(context),
            };
            inventory.udp_listeners.push(local);
            for (share, socket) in udp_sockets.iter_mut().zip(sockets) {
                share.push((socket, tenant));
            }
            local
        } else {
            let bound = match (inherited, takeover.as_deref_mut()) {
                (Some(address), Some(t)) => take_stream(t, label, address),
                _ => net::bind_tcp_listener(listen.address),
            };
            let listener = match bound {
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
            let fd = listener.as_fd().try_clone_to_owned()?;
            let task =
                tokio::spawn(stream::accept_loop(listener, tls, limits, slots.clone(), router.clone(), proxy, tenant));
            inventory.streams.push(crate::live_upgrade::StreamListener { transport: label, address: local, fd, task });
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
        let inherited = matched.next().flatten();
        let bound = match (inherited, takeover.as_deref_mut()) {
            (Some(address), Some(t)) => take_udp(t, address, udp_sockets.len()),
            _ => net::bind_udp_listener(address, udp_sockets.len()),
        };
        let (sockets, local) = bound
            .with_context(|| format!("binding udp {address} for [nat-discovery] (is the address on this host?)"))?;
        inventory.udp_listeners.push(local);
        for (share, socket) in udp_sockets.iter_mut().zip(sockets) {
            share.push((socket, turnd::turn::TenantId::DEFAULT));
        }
        info!("listening on udp {local} (RFC 5780 NAT behaviour discovery)");
    }
    Ok((udp_sockets, inventory))
}

/// The predecessor's UDP listener sockets on `address`, one per worker, in worker order.
fn take_udp(
    takeover: &mut crate::live_upgrade::Takeover,
    address: SocketAddr,
    workers: usize,
) -> std::io::Result<(Vec<std::net::UdpSocket>, SocketAddr)> {
    let mut sockets = Vec::with_capacity(workers);
    for share in &mut takeover.udp {
        if let Some(i) = share.iter().position(|(a, _)| *a == address) {
            sockets.push(share.remove(i).1);
        }
    }
    if sockets.len() != workers {
        return Err(std::io::Error::other(format!(
            "handed {} sockets of udp {address} for {workers} workers",
            sockets.len()
        )));
    }
    Ok((sockets, address))
}

/// The predecessor's TCP or TLS listener on `address`.
fn take_stream(
    takeover: &mut crate::live_upgrade::Takeover,
    transport: &str,
    address: SocketAddr,
) -> std::io::Result<tokio::net::TcpListener> {
    let i = takeover
        .streams
        .iter()
        .position(|(t, a, _)| t == transport && *a == address)
        .ok_or_else(|| std::io::Error::other(format!("no {transport} {address} was handed over")))?;
    let (_, _, listener) = takeover.streams.remove(i);
    listener.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(listener)
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
    // "auto" for a family that was not discovered at start (the file said an address
    // then): discovery runs at start only, so the running address stays.
    if next.relay.external_ipv4.is_some_and(External::is_auto) {
        warn!("relay.external-ipv4 = \"auto\" needs a restart to be discovered; the running external-ipv4 stays");
        next.relay.external_ipv4 = current.relay.external_ipv4;
    }
    if next.relay.external_ipv6.is_some_and(External::is_auto) {
        warn!("relay.external-ipv6 = \"auto\" needs a restart to be discovered; the running external-ipv6 stays");
        next.relay.external_ipv6 = current.relay.external_ipv6;
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
