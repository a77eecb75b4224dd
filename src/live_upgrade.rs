//! Live upgrade, the process side (`turnd upgrade`, SIGUSR2): the running turnd
//! starts its successor with an inherited socket and hands it its listeners, its UDP
//! allocations with their relay sockets, and its secrets; the successor checks its
//! config against the offer before anything is frozen. The conversation is in
//! `turnd::upgrade::protocol`, the workers' part in `turnd::net::upgrade`.
//!
//! TCP and TLS client connections stay with the old process until they close or its
//! drain time ends (as nginx does on a binary upgrade): a TLS session's keys and a
//! connection's half-read frames live in tokio tasks that cannot be moved, and a TURN
//! client over TCP keeps its allocation only as long as its connection anyway. The
//! listeners move, so the successor takes every new connection at once.

use anyhow::{anyhow, bail, Context, Result};
use std::ffi::OsString;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;
use turnd::net::upgrade::{Adopted, WorkerHandover};
use turnd::net::{Control, Workers};
use turnd::sys::fdpass;
use turnd::turn::tenant::UserKey;
use turnd::turn::TenantId;
use turnd::upgrade::counters::{self, HandoverResult};
use turnd::upgrade::protocol::{self, Message, Offer, HANDOVER_FD_ENV};
use turnd::upgrade::state::{self, AllocationV1, HandoverState, Hex, ListenerState, ProcessState};
use turnd::upgrade::state::{ReservationState, StreamListenerState, WorkerState};

/// How long the successor gets for each step (loading its config, taking over).
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// The binary and arguments this process was started with: the successor is started
/// the same way (after a package upgrade the path holds the new binary).
static STARTED_AS: OnceLock<(PathBuf, Vec<OsString>)> = OnceLock::new();

/// Records how this process was started; call first thing in `main`.
pub fn remember_how_started() {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from(std::env::args_os().next().unwrap_or_default()));
    let _ = STARTED_AS.set((exe, args));
}

/// A TCP or TLS listener this process accepts on, as a live upgrade needs it.
#[derive(Debug)]
pub struct StreamListener {
    /// "tcp" or "tls".
    pub transport: &'static str,
    /// Its bound address.
    pub address: SocketAddr,
    /// A duplicate of its socket, to hand over.
    pub fd: OwnedFd,
    /// Its accept loop, stopped once the successor serves.
    pub task: tokio::task::JoinHandle<()>,
}

/// What this process serves on, for an offer.
#[derive(Debug, Default)]
pub struct Inventory {
    /// The worker count.
    pub workers: usize,
    /// The UDP listener addresses (one SO_REUSEPORT group each).
    pub udp_listeners: Vec<SocketAddr>,
    /// TCP and TLS listeners.
    pub streams: Vec<StreamListener>,
    /// The admin listener: its address and a duplicate of its socket.
    pub admin: Option<(SocketAddr, OwnedFd)>,
    /// What `--port 0` resolved to.
    pub port_override: Option<u16>,
}

/// The `[[tenant]]` realms by the ids this process gave them (the default tenant is
/// not among them): allocations cross with their realm, and the successor numbers
/// its tenants itself.
#[derive(Debug, Clone, Default)]
pub struct Realms(pub Vec<(TenantId, String)>);

impl Realms {
    /// The realms of `config`'s tenants.
    pub fn of(config: &turnd::turn::CoreConfig) -> Realms {
        Realms(config.realms().filter(|(id, _)| *id != TenantId::DEFAULT).map(|(id, r)| (id, r.to_owned())).collect())
    }

    fn realm_of(&self, id: TenantId) -> Option<String> {
        self.0.iter().find(|(t, _)| *t == id).map(|(_, r)| r.clone())
    }

    /// The id of `realm` (`None`: the default tenant), if it is configured.
    pub fn tenant_of(&self, realm: Option<&str>) -> Option<TenantId> {
        match realm {
            None => Some(TenantId::DEFAULT),
            Some(realm) => self.0.iter().find(|(_, r)| r == realm).map(|(id, _)| *id),
        }
    }
}

/// A handover that worked.
#[derive(Debug)]
pub struct Serving {
    /// The successor's pid.
    pub pid: u32,
    /// Allocations it took over.
    pub allocations: usize,
    /// Freeze to the successor serving.
    pub gap: Duration,
    /// The whole handover, from the signal.
    pub took: Duration,
}

/// Why a handover failed (this process serves on).
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The successor refused: its config cannot carry the sockets, or the state.
    #[error("the new turnd refused: `{key}`: {message}")]
    Refused {
        /// The config key.
        key: String,
        /// Why.
        message: String,
    },
    /// The successor failed or broke the protocol.
    #[error("{0}")]
    Failed(String),
}

impl Failure {
    fn result(&self) -> HandoverResult {
        match self {
            Failure::Refused { .. } => HandoverResult::Refused,
            Failure::Failed(_) => HandoverResult::Failed,
        }
    }
}

fn failed(context: &str) -> impl Fn(std::io::Error) -> Failure + '_ {
    move |e| Failure::Failed(format!("{context}: {e}"))
}

/// The predecessor's side: starts the successor and hands everything over. On
/// failure nothing is lost: the workers read their UDP sockets again and this process
/// serves on; the failure is counted.
pub async fn hand_over(
    inventory: &Inventory,
    control: &mpsc::Sender<Control>,
    workers: &Workers,
    realms: &Realms,
) -> Result<Serving, Failure> {
    let started = Instant::now();
    let result = start_and_converse(inventory, control, workers, realms, started).await;
    if let Err(failure) = &result {
        counters::count(failure.result());
    }
    result
}

async fn start_and_converse(
    inventory: &Inventory,
    control: &mpsc::Sender<Control>,
    workers: &Workers,
    realms: &Realms,
    started: Instant,
) -> Result<Serving, Failure> {
    let (exe, args) = STARTED_AS.get().cloned().ok_or_else(|| Failure::Failed("start-up not recorded".into()))?;
    let (ours, theirs) = fdpass::seqpacket_pair().map_err(failed("creating the handover socket"))?;
    fdpass::inherit_on_exec(theirs.as_raw_fd()).map_err(failed("sharing the handover socket"))?;
    ours.set_read_timeout(Some(STEP_TIMEOUT)).map_err(failed("setting a timeout"))?;
    let mut child = std::process::Command::new(&exe)
        .args(&args)
        .env(HANDOVER_FD_ENV, theirs.as_raw_fd().to_string())
        .spawn()
        .map_err(|e| Failure::Failed(format!("starting {}: {e}", exe.display())))?;
    // Only the child holds its end now: when it exits, our reads see the end.
    drop(theirs);
    let ours = Arc::new(ours);
    let result = converse(&ours, inventory, control, workers, realms, started).await;
    if result.is_err() {
        // A successor that refused exits by itself; one that hangs is stopped.
        let reaped = tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                if let Ok(Some(status)) = child.try_wait() {
                    return Some(status);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            child.wait().ok()
        })
        .await;
        if let Ok(Some(status)) = reaped {
            tracing::debug!(%status, "the new turnd exited");
        }
    }
    result
}

/// Runs a blocking socket operation off the runtime's threads.
async fn blocking<T: Send + 'static>(
    socket: &Arc<UnixDatagram>,
    f: impl FnOnce(&UnixDatagram) -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let socket = socket.clone();
    tokio::task::spawn_blocking(move || f(&socket)).await.map_err(std::io::Error::other)?
}

async fn converse(
    socket: &Arc<UnixDatagram>,
    inventory: &Inventory,
    control: &mpsc::Sender<Control>,
    workers: &Workers,
    realms: &Realms,
    started: Instant,
) -> Result<Serving, Failure> {
    let (relay_ports, tenant_realms) = in_use(control, realms).await;
    let offer = Offer {
        version: state::VERSION,
        workers: inventory.workers,
        udp_listeners: inventory.udp_listeners.clone(),
        stream_listeners: inventory.streams.iter().map(|s| (s.transport.to_owned(), s.address)).collect(),
        relay_ports,
        realms: tenant_realms,
        port_override: inventory.port_override,
        admin: inventory.admin.as_ref().map(|(address, _)| *address),
    };
    let message = Message::Offer(offer);
    blocking(socket, move |s| protocol::send(s, &message, &[])).await.map_err(failed("sending the offer"))?;
    match blocking(socket, protocol::recv).await {
        Ok((Message::Ready, _)) => {}
        Ok((Message::Refuse { key, message }, _)) => return Err(Failure::Refused { key, message }),
        Ok((other, _)) => return Err(Failure::Failed(format!("unexpected answer to the offer: {other:?}"))),
        Err(e) => return Err(Failure::Failed(format!("the new turnd did not take the offer: {e}"))),
    }

    // Freeze: from here on UDP datagrams wait in the kernel for whoever reads next.
    let frozen_at = SystemTime::now();
    let shares = freeze(control).await?;
    let sent = send_state(socket, inventory, shares, frozen_at, workers, realms).await;
    let answer = match sent {
        Ok(()) => blocking(socket, protocol::recv).await,
        Err(e) => Err(e),
    };
    let result = match answer {
        Ok((Message::Serving { allocations, pid, gap_us }, _)) => {
            if ask(control, |reply| Control::Release { reply }).await.is_none() {
                warn!("the workers did not let go of the moved allocations in time");
            }
            return Ok(Serving { pid, allocations, gap: Duration::from_micros(gap_us), took: started.elapsed() });
        }
        Ok((Message::Refuse { key, message }, _)) => Failure::Refused { key, message },
        Ok((other, _)) => Failure::Failed(format!("unexpected answer to the state: {other:?}")),
        Err(e) => Failure::Failed(format!("the new turnd did not take over: {e}")),
    };
    thaw(control).await;
    Err(result)
}

/// Stops the workers reading UDP and takes their shares (see [`Control::Freeze`]).
pub async fn freeze(control: &mpsc::Sender<Control>) -> Result<Vec<WorkerHandover>, Failure> {
    match ask(control, |reply| Control::Freeze { reply }).await {
        Some(Ok(shares)) => Ok(shares),
        Some(Err(e)) => Err(Failure::Failed(format!("cannot freeze: {e}"))),
        None => {
            // A freeze that completes late is undone: the workers take requests in order.
            thaw(control).await;
            Err(Failure::Failed("the workers did not freeze in time".into()))
        }
    }
}

/// The workers read their UDP sockets again (a handover failed).
pub async fn thaw(control: &mpsc::Sender<Control>) {
    if ask(control, |reply| Control::Thaw { reply }).await.is_none() {
        warn!("the workers did not confirm reading their UDP sockets again in time");
    }
}

/// Asks the workers something through the control channel, within [`STEP_TIMEOUT`]
/// (a wedged worker must not hang the process's signal loop).
async fn ask<T>(control: &mpsc::Sender<Control>, make: impl FnOnce(oneshot::Sender<T>) -> Control) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    let asked = async {
        control.send(make(tx)).await.ok()?;
        rx.await.ok()
    };
    tokio::time::timeout(STEP_TIMEOUT, asked).await.ok().flatten()
}

/// The relay ports and the `[[tenant]]` realms of UDP allocations (the successor
/// checks its relay range and its tenants).
async fn in_use(control: &mpsc::Sender<Control>, realms: &Realms) -> (Vec<u16>, Vec<String>) {
    let list = |reply| Control::ListAllocations { realm: None, offset: 0, limit: usize::MAX, reply };
    let (all, _) = ask(control, list).await.unwrap_or_default();
    let udp = || all.iter().filter(|a| a.transport == "udp");
    let mut ports: Vec<u16> = udp().map(|a| a.relay.port()).collect();
    ports.sort_unstable();
    ports.dedup();
    let mut tenants: Vec<String> =
        udp().filter(|a| realms.0.iter().any(|(_, r)| *r == a.realm)).map(|a| a.realm.clone()).collect();
    tenants.sort_unstable();
    tenants.dedup();
    (ports, tenants)
}

/// Writes the state into a memfd and sends it, then every socket.
async fn send_state(
    socket: &Arc<UnixDatagram>,
    inventory: &Inventory,
    shares: Vec<WorkerHandover>,
    frozen_at: SystemTime,
    workers: &Workers,
    realms: &Realms,
) -> std::io::Result<()> {
    let (state, fds) = build_state(inventory, &shares, frozen_at, workers, realms)?;
    let memfd = fdpass::sealed_memfd("turnd-handover-state", &state.encode())?;
    let count = fds.len();
    blocking(socket, move |s| {
        protocol::send(s, &Message::State { descriptors: count }, &[memfd.as_raw_fd()])?;
        protocol::send_descriptors(s, &fds)?;
        // The duplicates this process held for the handover close with `shares`.
        drop(shares);
        Ok(())
    })
    .await
}

/// The state of this process with its workers' `shares`, and the descriptors it names
/// (by index), which stay open as long as `inventory` and `shares` do.
pub fn build_state(
    inventory: &Inventory,
    shares: &[WorkerHandover],
    frozen_at: SystemTime,
    workers: &Workers,
    realms: &Realms,
) -> std::io::Result<(HandoverState, Vec<RawFd>)> {
    let mut fds: Vec<RawFd> = Vec::new();
    let mut index_of = |fd: RawFd| {
        fds.push(fd);
        fds.len() - 1
    };
    let stream_listeners = inventory
        .streams
        .iter()
        .map(|s| StreamListenerState {
            transport: s.transport.to_owned(),
            address: s.address,
            fd: index_of(s.fd.as_raw_fd()),
        })
        .collect();
    let admin_fd = inventory.admin.as_ref().map(|(_, fd)| index_of(fd.as_raw_fd()));
    let mut worker_states = Vec::with_capacity(shares.len());
    for share in shares {
        let mut listeners = Vec::with_capacity(share.listeners.len());
        for listener in &share.listeners {
            listeners.push(ListenerState { address: listener.local_addr()?, fd: index_of(listener.as_raw_fd()) });
        }
        let allocations = share
            .allocations
            .iter()
            .map(|(state, sockets)| {
                let relay_fds = sockets.each_ref().map(|s| s.as_ref().map(|s| index_of(s.as_raw_fd())));
                AllocationV1::from_state(state, relay_fds, realms.realm_of(state.five_tuple.tenant))
            })
            .collect();
        worker_states.push(WorkerState { listeners, allocations, stats: serde_json::to_value(share.stats).ok() });
    }
    let (secret, epoch_age, reservations) = process_secrets(workers, realms);
    let state = HandoverState {
        version: state::VERSION,
        process: ProcessState {
            nonce_secret: Hex::of(&secret),
            nonce_epoch_age_ms: state::millis(epoch_age),
            frozen_at_unix_us: frozen_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64),
            reservations,
            port_override: inventory.port_override,
            stream_listeners,
            admin_fd,
        },
        workers: worker_states,
    };
    Ok((state, fds))
}

/// The nonce secret, the nonce epoch's age and the reservations, from the shared
/// ledger (through the workers' shell).
fn process_secrets(workers: &Workers, realms: &Realms) -> ([u8; 32], Duration, Vec<ReservationState>) {
    let process = workers.export_process(Instant::now());
    let reservations = process
        .reservations
        .into_iter()
        .map(|(token, port, left, user, source)| ReservationState {
            token,
            port,
            remaining_ms: state::millis(left),
            realm: realms.realm_of(user.tenant),
            user: user.name.into(),
            source,
        })
        .collect();
    (process.nonce_secret, process.nonce_epoch_age, reservations)
}

/// What the successor received: its sockets and state, and the socket to answer on.
#[derive(Debug)]
pub struct Takeover {
    /// The predecessor's socket (`turnd upgrade`), or none (systemd's store).
    socket: Option<UnixDatagram>,
    /// The names of what was taken from systemd's store, removed once serving.
    store_names: Vec<String>,
    /// The predecessor's offer.
    pub offer: Offer,
    /// The freeze time (µs since the Unix epoch).
    frozen_at_unix_us: u64,
    /// Each worker's UDP listener sockets with their addresses.
    pub udp: Vec<Vec<(SocketAddr, UdpSocket)>>,
    /// TCP and TLS listeners: transport, address, socket.
    pub streams: Vec<(String, SocketAddr, std::net::TcpListener)>,
    /// The admin listener.
    pub admin: Option<std::net::TcpListener>,
    /// What the workers adopt.
    pub adopted: Option<Adopted>,
}

/// What a state offers, as the predecessor's offer would have (systemd's store has
/// no conversation): checked against this process's config the same way.
pub fn offer_of(state: &HandoverState) -> Offer {
    let allocations = || state.workers.iter().flat_map(|w| &w.allocations);
    let mut relay_ports: Vec<u16> = allocations().flat_map(|a| a.relays.iter().map(|r| r.bound.port())).collect();
    relay_ports.sort_unstable();
    relay_ports.dedup();
    let mut realms: Vec<String> = allocations().filter_map(|a| a.realm.clone()).collect();
    realms.sort_unstable();
    realms.dedup();
    Offer {
        version: state.version,
        workers: state.workers.len(),
        udp_listeners: state
            .workers
            .first()
            .map(|w| w.listeners.iter().map(|l| l.address).collect())
            .unwrap_or_default(),
        stream_listeners: state.process.stream_listeners.iter().map(|s| (s.transport.clone(), s.address)).collect(),
        relay_ports,
        port_override: state.process.port_override,
        admin: None,
        realms,
    }
}

/// The successor's first step: the socket inherited from the predecessor, if this
/// process was started by one (the variable is removed so that a successor of this
/// one does not see it), and the predecessor's offer.
pub fn inherited() -> Result<Option<(UnixDatagram, Offer)>> {
    let Some(value) = std::env::var_os(HANDOVER_FD_ENV) else {
        return Ok(None);
    };
    std::env::remove_var(HANDOVER_FD_ENV);
    let fd: RawFd =
        value.to_str().and_then(|v| v.parse().ok()).context("TURND_HANDOVER_FD is not a descriptor number")?;
    let socket = fdpass::adopt_inherited_socket(fd).context("the inherited handover socket")?;
    socket.set_read_timeout(Some(STEP_TIMEOUT))?;
    match protocol::recv(&socket).context("reading the offer")? {
        (Message::Offer(offer), _) => Ok(Some((socket, offer))),
        (other, _) => bail!("expected an offer, got {other:?}"),
    }
}

/// Tells the predecessor this process will not take over (it keeps serving).
pub fn refuse(socket: &UnixDatagram, key: &str, message: &str) {
    let _ = protocol::send(socket, &Message::Refuse { key: key.to_owned(), message: message.to_owned() }, &[]);
}

/// The successor's second step: asks for the state and receives it with every socket.
pub fn receive(socket: UnixDatagram, offer: Offer, realms: &Realms) -> Result<Takeover> {
    protocol::send(&socket, &Message::Ready, &[]).context("answering the offer")?;
    let (message, mut fds) = protocol::recv(&socket).context("reading the state")?;
    let Message::State { descriptors } = message else {
        bail!("expected the state, got {message:?}");
    };
    let memfd = fds.pop().ok_or_else(|| anyhow!("the state came without its memfd"))?;
    let state = match fdpass::read_sealed_memfd(memfd, state::MAX_STATE_BYTES)
        .map_err(|e| anyhow!("{e}"))
        .and_then(|bytes| HandoverState::decode(&bytes).map_err(|e| anyhow!("{e}")))
    {
        Ok(state) => state,
        Err(e) => {
            refuse(&socket, "state", &e.to_string());
            return Err(e);
        }
    };
    let fds = protocol::recv_descriptors(&socket, descriptors).context("receiving the sockets")?;
    match take(&state, fds, realms) {
        Ok((udp, streams, admin, adopted)) => Ok(Takeover {
            socket: Some(socket),
            store_names: Vec::new(),
            offer,
            frozen_at_unix_us: state.process.frozen_at_unix_us,
            udp,
            streams,
            admin,
            adopted: Some(adopted),
        }),
        Err(e) => {
            refuse(&socket, "state", &format!("{e:#}"));
            Err(e)
        }
    }
}

type Taken = (
    Vec<Vec<(SocketAddr, UdpSocket)>>,
    Vec<(String, SocketAddr, std::net::TcpListener)>,
    Option<std::net::TcpListener>,
    Adopted,
);

/// Gives each descriptor of the state its type.
fn take(state: &HandoverState, fds: Vec<OwnedFd>, realms: &Realms) -> Result<Taken> {
    let tenant_of =
        |realm: Option<&str>| realms.tenant_of(realm).ok_or_else(|| anyhow!("no [[tenant]] with realm {realm:?} here"));
    let mut fds: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
    let mut take = |index: usize| {
        fds.get_mut(index).and_then(Option::take).ok_or_else(|| anyhow!("descriptor {index} missing or named twice"))
    };
    let now = Instant::now();
    let process = &state.process;
    let secret: [u8; 32] = process
        .nonce_secret
        .bytes("nonce_secret")?
        .try_into()
        .map_err(|_| anyhow!("the nonce secret is not 32 bytes"))?;
    let mut streams = Vec::new();
    for s in &process.stream_listeners {
        streams.push((s.transport.clone(), s.address, std::net::TcpListener::from(take(s.fd)?)));
    }
    let admin = process.admin_fd.map(&mut take).transpose()?.map(std::net::TcpListener::from);
    let mut udp = Vec::new();
    let mut allocations = Vec::new();
    let mut stats = Vec::new();
    for worker in &state.workers {
        match worker.stats.clone().map(serde_json::from_value::<turnd::turn::stats::Stats>) {
            Some(Ok(counters)) => stats.push(counters),
            Some(Err(e)) => warn!(error = %e, "the predecessor's counters do not fit this turnd's: they start at zero"),
            None => {}
        }
        let mut listeners = Vec::new();
        for l in &worker.listeners {
            listeners.push((l.address, UdpSocket::from(take(l.fd)?)));
        }
        udp.push(listeners);
        let mut mine = Vec::new();
        for allocation in &worker.allocations {
            let (core_state, relay_fds) = allocation.to_state(tenant_of(allocation.realm.as_deref())?)?;
            let mut sockets = [None, None];
            for (socket, fd) in sockets.iter_mut().zip(relay_fds) {
                if let Some(fd) = fd {
                    *socket = Some(UdpSocket::from(take(fd)?));
                }
            }
            mine.push((core_state, sockets));
        }
        allocations.push(mine);
    }
    let adopted = Adopted {
        nonce_secret: secret,
        nonce_epoch: now.checked_sub(Duration::from_millis(process.nonce_epoch_age_ms)),
        reservations: process
            .reservations
            .iter()
            .map(|r| {
                let user = UserKey::new(tenant_of(r.realm.as_deref())?, &r.user);
                Ok((r.token, r.port, now + Duration::from_millis(r.remaining_ms), user, r.source))
            })
            .collect::<Result<_>>()?,
        workers: allocations,
        // All workers' or none: counters are per worker index.
        stats: if stats.len() == state.workers.len() { stats } else { Vec::new() },
    };
    Ok((udp, streams, admin, adopted))
}

impl Takeover {
    /// What a previous turnd left in systemd's store: its `state` and the sockets it
    /// names, in order; `names` leave the store once this process serves.
    pub fn from_store(state: HandoverState, fds: Vec<OwnedFd>, names: Vec<String>, realms: &Realms) -> Result<Self> {
        let offer = offer_of(&state);
        let (udp, streams, admin, adopted) = take(&state, fds, realms)?;
        Ok(Takeover {
            socket: None,
            store_names: names,
            offer,
            frozen_at_unix_us: state.process.frozen_at_unix_us,
            udp,
            streams,
            admin,
            adopted: Some(adopted),
        })
    }

    /// The last step: this process serves; the predecessor lets go. Returns the gap.
    pub fn serving(self, allocations: usize) -> Duration {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
        let gap_us = now.saturating_sub(self.frozen_at_unix_us);
        let message = Message::Serving { allocations, pid: std::process::id(), gap_us };
        if let Some(socket) = &self.socket {
            if let Err(e) = protocol::send(socket, &message, &[]) {
                // It thaws and serves on too: both read the same sockets until it notices.
                warn!(error = %e, "cannot tell the previous turnd that this one serves");
            }
        }
        crate::fd_store::forget(&self.store_names);
        counters::taken_over(allocations, gap_us);
        Duration::from_micros(gap_us)
    }
}
