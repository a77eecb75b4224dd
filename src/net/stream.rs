//! TCP and TLS client connections (RFC 8489 §6.2.2, RFC 8656 §3.1). Each connection
//! starts as a task on the main runtime, which admits it, reads a PROXY protocol
//! header or routes a shared port's ClientHello if it must, completes the TLS
//! handshake and reads the first message. That message chooses the worker (see
//! [`StreamRouter`]); the task then hands the connection itself over (socket, rustls
//! session, bytes read) and the worker's event loop serves it from then on, on its own
//! thread (`stream_conn`); an RFC 6062 data connection (first message ConnectionBind)
//! too, which the loop splices to its peer once bound (`stream_splice`). Without
//! `worker-loop`, a connection stays with its task: it hands whole messages to the
//! worker and is answered through a bounded queue, and a data connection is spliced
//! to its peer by the task once bound.
//!
//! What one client can hold is bounded:
//! - connections over all stream listeners (`max_connections`), from one source
//!   (`max_connections_per_source`) and, of those, connections that hold no
//!   allocation yet (`max_unauthenticated_per_source`), all checked at accept: a
//!   connection over a cap is closed at once;
//! - time: a client that sends nothing, or stalls mid-message, is cut after
//!   `first_message_timeout`; one that has not authenticated (holds no allocation and
//!   is no RFC 6062 data connection) `unauthenticated_timeout` after accept is cut; one
//!   that leaves its answers unread, so that nothing can be written for
//!   `write_timeout`, is cut (nothing ever blocks in a write);
//! - memory: the read buffer grows with the frame being received and shrinks back
//!   when drained ([`Framer`]), so an idle connection costs a few kilobytes; what
//!   waits to be written to a client that does not read is bounded (256 KiB; more is
//!   dropped, as UDP would).
//!
//! Who may connect ([`ClientFilter`], `[clients]`): a denied client's connection is
//! closed at accept, before any byte is read (so before a TLS handshake). On a
//! listener with `proxy-protocol`, only proxies in `trusted-proxies` may connect; each
//! connection starts with a PROXY protocol header ([`super::proxy`]) read within
//! `first_message_timeout`, and the client it names is the connection's client from
//! then on (its 5-tuple, so the core, quotas and logs see it): the deny list and the
//! per-source caps apply to it, not to the proxy.
//!
//! On a `tls` listener with `passthrough-to`, the ClientHello is read first
//! ([`super::passthrough`]): a TURN one is replayed to rustls, any other connection is
//! spliced, still encrypted, to the backend. Such a connection was admitted like any
//! other; once handed over it no longer counts as unauthenticated, but stays one of its
//! source's connections (`max_connections_per_source`, `max_connections`).

use super::admission::tenant_by_server_name;
use super::admission::{
    admit, ProxiedClaim, SourceSlot, CLIENT_FILTER, CUT_UNAUTHENTICATED, CUT_WRITE_TIMEOUT, PASSED_THROUGH,
    REFUSED_CLIENT_HELLO, REFUSED_DENIED, REFUSED_MAX_CONNECTIONS, REFUSED_PASSTHROUGH_BACKEND, REFUSED_PROXY_HEADER,
    REFUSED_UNTRUSTED_PROXY,
};
pub use super::admission::{
    counters, set_client_filter, set_tenant_server_names, ClientFilter, StreamCounters, StreamLimits,
};
use super::client_hello::Hello;
use super::passthrough::{self, Passthrough, Rewind, Route, SpliceEnd};
use super::proxy::{self, Header};
use super::route::StreamRouter;
pub use super::stream_channel::{Client, Outbound, StreamEvent, StreamHandle};
use super::stream_conn::{Handover, Held};
use crate::stun::framing::Framer;
use crate::turn::{ClientAddr, FiveTuple, TenantId, Transport};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::debug;

/// Messages queued towards one client before newer ones are dropped (a client that
/// does not read must not make the loop buffer without bound).
pub const OUTBOUND_QUEUE: usize = 256;
/// Bytes written to a connection but not yet sent (the client's window is closed)
/// beyond which writes wait (TCP_NOTSENT_LOWAT).
const NOT_SENT_LIMIT: u32 = 128 * 1024;
/// Queued messages are written together, up to about this many bytes per write.
const WRITE_BATCH: usize = 64 * 1024;

/// What a `tls` listener serves with: its acceptor, and where connections that are not
/// TURN go when it shares its port (`passthrough-to`).
#[derive(Clone)]
pub struct TlsListener {
    /// Terminates `turns:` connections.
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// The HTTPS backend for other connections, if any.
    pub passthrough: Option<Arc<Passthrough>>,
}

/// Accepts connections on `listener` until the event channel closes. With
/// `proxy_protocol`, each connection must come from a trusted proxy and start with a
/// PROXY protocol header naming the client (see the module's documentation). Its
/// clients belong to `tenant`, unless a TLS server name chooses another.
pub async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsListener>,
    limits: StreamLimits,
    slots: Arc<Semaphore>,
    router: StreamRouter,
    proxy_protocol: bool,
    tenant: TenantId,
) {
    let transport = if tls.is_some() { Transport::Tls } else { Transport::Tcp };
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning; existing
                // connections and UDP keep working meanwhile.
                debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let accepted = Instant::now();
        // Refused connections are dropped here: closed at once, nothing read.
        {
            let filter = CLIENT_FILTER.load();
            if proxy_protocol && !filter.is_trusted_proxy(peer.ip()) {
                REFUSED_UNTRUSTED_PROXY.fetch_add(1, Ordering::Relaxed);
                debug!(%peer, "connection refused: proxy-protocol listener, and not from a trusted proxy");
                continue;
            }
            if !proxy_protocol && filter.is_denied(peer.ip()) {
                REFUSED_DENIED.fetch_add(1, Ordering::Relaxed);
                debug!(client = %peer, "connection refused: denied client");
                continue;
            }
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            REFUSED_MAX_CONNECTIONS.fetch_add(1, Ordering::Relaxed);
            debug!(%peer, "connection refused: at max-connections");
            continue;
        };
        // A proxied connection's source is known once its header is read.
        let source = if proxy_protocol {
            None
        } else {
            match admit(&slots, peer, &limits) {
                Some(source) => Some(source),
                None => continue,
            }
        };
        let Ok(server) = stream.local_addr() else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        // Bytes the client has not taken stay in the kernel; without this, autotuning
        // lets a client that never reads park megabytes there before a write blocks.
        // In-flight data is not limited, only what waits behind a closed window.
        let _ = socket2::SockRef::from(&stream).set_tcp_notsent_lowat(NOT_SENT_LIMIT);
        let five_tuple = FiveTuple { transport, client: ClientAddr::new(peer), server, tenant };
        let router = router.clone();
        let tls = tls.clone();
        match source {
            Some(source) => {
                let held: Held = Box::new(permit);
                tokio::spawn(serve(stream, tls, Accepted { five_tuple, at: accepted, source, held }, limits, router));
            }
            None => {
                let slots = slots.clone();
                tokio::spawn(proxied(stream, tls, five_tuple, accepted, slots, limits, router, permit));
            }
        }
    }
}

/// A connection from a trusted proxy: reads its PROXY protocol header, then serves
/// the client it names (or the proxy itself, for a v2 LOCAL header) as any other.
#[allow(clippy::too_many_arguments)]
async fn proxied(
    mut stream: TcpStream,
    tls: Option<TlsListener>,
    mut five_tuple: FiveTuple,
    at: Instant,
    slots: Arc<Semaphore>,
    limits: StreamLimits,
    router: StreamRouter,
    permit: OwnedSemaphorePermit,
) {
    let proxy = five_tuple.client;
    let deadline = at + limits.first_message_timeout.min(limits.unauthenticated_timeout);
    let header = match tokio::time::timeout_at(deadline, proxy::read_header(&mut stream)).await {
        Ok(Ok(header)) => header,
        Ok(Err(e)) => {
            REFUSED_PROXY_HEADER.fetch_add(1, Ordering::Relaxed);
            debug!(%proxy, error = %e, "connection closed: bad PROXY protocol header");
            return;
        }
        Err(_) => {
            REFUSED_PROXY_HEADER.fetch_add(1, Ordering::Relaxed);
            debug!(%proxy, "connection closed: no whole PROXY protocol header within first-message-timeout");
            return;
        }
    };
    match header {
        Header::Proxied { source, destination } => {
            debug!(%proxy, client = %source, %destination, "PROXY protocol header");
            five_tuple.client = ClientAddr::new(source);
        }
        Header::Local => debug!(%proxy, "PROXY protocol LOCAL header: the proxy's own connection"),
    }
    let client = five_tuple.client;
    if CLIENT_FILTER.load().is_denied(client.ip()) {
        REFUSED_DENIED.fetch_add(1, Ordering::Relaxed);
        debug!(%client, %proxy, "connection refused: denied client");
        return;
    }
    let Some(claim) = ProxiedClaim::claim(five_tuple) else {
        REFUSED_PROXY_HEADER.fetch_add(1, Ordering::Relaxed);
        debug!(%client, %proxy, "connection refused: PROXY protocol header names a client already connected");
        return;
    };
    let Some(source) = admit(&slots, client.get(), &limits) else {
        return;
    };
    let held: Held = Box::new((permit, claim));
    serve(stream, tls, Accepted { five_tuple, at, source, held }, limits, router).await;
}

/// A connection let in by the limits.
struct Accepted {
    five_tuple: FiveTuple,
    /// When.
    at: Instant,
    /// Its place in its source's counts.
    source: Arc<SourceSlot>,
    /// Its place under `max-connections` (and PROXY protocol claim), held until it
    /// closes, wherever it is served.
    held: Held,
}

async fn serve(
    stream: TcpStream,
    tls: Option<TlsListener>,
    accepted: Accepted,
    limits: StreamLimits,
    router: StreamRouter,
) {
    let deadline = (accepted.at + limits.first_message_timeout).min(accepted.at + limits.unauthenticated_timeout);
    let client = accepted.five_tuple.client;
    match tls {
        None => connection(stream, accepted, limits, router).await,
        // Boxed: a TLS session is kilobytes, which every plain TCP connection's task
        // would otherwise reserve too.
        Some(tls) => {
            Box::pin(async move {
                let mut stream = stream;
                let mut early = Vec::new();
                if let Some(passthrough) = &tls.passthrough {
                    let read = tokio::time::timeout_at(deadline, passthrough::read_client_hello(&mut stream)).await;
                    let (bytes, hello) = match read {
                        Ok(Ok(read)) => read,
                        Ok(Err(e)) => {
                            REFUSED_CLIENT_HELLO.fetch_add(1, Ordering::Relaxed);
                            debug!(%client, error = %e, "connection closed: no ClientHello to route");
                            return;
                        }
                        Err(_) => {
                            REFUSED_CLIENT_HELLO.fetch_add(1, Ordering::Relaxed);
                            debug!(%client, "connection closed: no whole ClientHello within first-message-timeout");
                            return;
                        }
                    };
                    if passthrough.route(&hello) == Route::Backend {
                        pass_through(stream, &bytes, &hello, passthrough, accepted, &limits).await;
                        return;
                    }
                    // Says what a TURN client's ClientHello carried: how an operator
                    // (and the tests) see which clients send SNI or ALPN.
                    debug!(%client, sni = ?hello.server_name, alpn = ?alpn_labels(&hello), "ClientHello is TURN's");
                    // TURN: rustls reads the ClientHello again from these bytes.
                    early = bytes;
                }
                match tokio::time::timeout_at(deadline, tls.acceptor.accept(Rewind::new(early, stream))).await {
                    Ok(Ok(stream)) => {
                        let mut accepted = accepted;
                        // A tenant's server name chooses it over the listener's realm.
                        if let Some(tenant) = stream.get_ref().1.server_name().and_then(tenant_by_server_name) {
                            accepted.five_tuple.tenant = tenant;
                        }
                        connection(stream, accepted, limits, router).await
                    }
                    Ok(Err(e)) => debug!(%client, error = %e, "TLS handshake failed"),
                    Err(_) => debug!(%client, "TLS handshake timed out"),
                }
            })
            .await
        }
    }
}

/// Hands a connection whose ClientHello is not TURN to the backend, `early` (the bytes
/// read, the ClientHello) first, and relays it until it ends.
async fn pass_through(
    stream: TcpStream,
    early: &[u8],
    hello: &Hello,
    passthrough: &Passthrough,
    accepted: Accepted,
    limits: &StreamLimits,
) {
    let client = accepted.five_tuple.client;
    // An HTTPS connection never authenticates to turnd: it must not hold one of the
    // source's few unauthenticated places (nor be cut by unauthenticated-timeout)
    // while it lives; it stays counted among the source's connections.
    accepted.source.authenticate();
    PASSED_THROUGH.fetch_add(1, Ordering::Relaxed);
    let alpn = alpn_labels(hello);
    debug!(%client, sni = ?hello.server_name, ?alpn, backend = %passthrough.backend, "passing the connection through");
    let connect_by = Instant::now() + limits.first_message_timeout;
    match passthrough::splice(stream, early, passthrough.backend, connect_by, limits).await {
        SpliceEnd::BackendUnreachable => {
            REFUSED_PASSTHROUGH_BACKEND.fetch_add(1, Ordering::Relaxed);
            debug!(%client, backend = %passthrough.backend, "passthrough backend unreachable: connection closed");
        }
        SpliceEnd::Ended(reason) => debug!(%client, reason, "passthrough connection closed"),
    }
    drop(accepted);
}

/// The ALPN ids a ClientHello offered, printable (they are the client's bytes: control
/// characters escaped; `None` when it sent no ALPN extension).
fn alpn_labels(hello: &Hello) -> Option<Vec<String>> {
    let ids = hello.alpn.as_ref()?;
    Some(ids.iter().map(|id| String::from_utf8_lossy(id).escape_debug().to_string()).collect())
}

/// How a client connection's framed phase ended.
enum End {
    /// Closed, for this reason.
    Closed(&'static str),
    /// Turned into an RFC 6062 data connection to this peer.
    Splice(TcpStream),
    /// Its first message chose this worker, which serves it from now on.
    HandOver(Vec<u8>, mpsc::Sender<StreamEvent>),
}

/// A connection's stream taken apart for its worker's loop: the socket, out of tokio's
/// reactor, and the TLS session with everything it has read.
pub(super) trait IntoRaw: Sized {
    /// The parts, or `None` when the stream cannot be taken apart (it is closed).
    fn into_raw(self) -> Option<(std::net::TcpStream, Option<Box<rustls::ServerConnection>>)>;
}

impl IntoRaw for TcpStream {
    fn into_raw(self) -> Option<(std::net::TcpStream, Option<Box<rustls::ServerConnection>>)> {
        Some((self.into_std().ok()?, None))
    }
}

impl IntoRaw for tokio_rustls::server::TlsStream<Rewind<TcpStream>> {
    fn into_raw(self) -> Option<(std::net::TcpStream, Option<Box<rustls::ServerConnection>>)> {
        let (rewind, mut session) = self.into_inner();
        let (early, stream) = rewind.into_parts();
        // Bytes read to route the ClientHello that rustls did not take yet.
        let mut early = early.as_slice();
        while !early.is_empty() {
            if session.read_tls(&mut early).ok()? == 0 {
                return None;
            }
            session.process_new_packets().ok()?;
        }
        Some((stream.into_std().ok()?, Some(Box::new(session))))
    }
}

/// Writes one message and pushes it out (TLS buffers records until flushed).
async fn write_message<W: AsyncWrite + Unpin>(writer: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    writer.write_all(bytes).await?;
    writer.flush().await
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin + IntoRaw>(
    stream: S,
    accepted: Accepted,
    limits: StreamLimits,
    router: StreamRouter,
) {
    let Accepted { five_tuple, at: accepted_at, source, held } = accepted;
    let first_deadline = accepted_at + limits.first_message_timeout;
    let unauthenticated_deadline = accepted_at + limits.unauthenticated_timeout;
    let (outbound, mut queue) = mpsc::channel::<Outbound>(OUTBOUND_QUEUE);
    // The worker is known with the first message; until then the queue's sender waits
    // here (and nothing is announced for a connection that never sends one).
    let mut outbound = Some(Client::new(outbound, source.clone()));
    let mut worker: Option<mpsc::Sender<StreamEvent>> = None;
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut framer = Framer::default();
    let mut seen_message = false;
    let mut partial_since: Option<Instant> = None;
    let mut last_activity = Instant::now();
    let end = loop {
        let deadline = if !seen_message {
            first_deadline
        } else if let Some(since) = partial_since {
            since + limits.first_message_timeout
        } else {
            last_activity + limits.idle_timeout
        };
        // Checked again when the timer fires: the event loop may have authenticated
        // the connection meanwhile, which only ever moves the deadline later.
        let authenticated = source.is_authenticated();
        let wake = if authenticated { deadline } else { deadline.min(unauthenticated_deadline) };
        tokio::select! {
            read = reader.read(framer.spare()) => {
                let n = match read {
                    Ok(0) => break End::Closed("closed by client"),
                    Ok(n) => n,
                    Err(_) => break End::Closed("read error"),
                };
                framer.filled(n);
                last_activity = Instant::now();
                let mut failed = false;
                let mut framed = false;
                let mut hand_over = None;
                loop {
                    match framer.next_frame() {
                        Ok(Some(frame)) => {
                            seen_message = true;
                            framed = true;
                            let frame = frame.to_vec();
                            if worker.is_none() {
                                let Some(chosen) = router.pick(&five_tuple, &frame) else {
                                    failed = true;
                                    break;
                                };
                                // The worker serves the connection itself from now on
                                // (an RFC 6062 data connection too: the loop splices it
                                // to its peer once bound).
                                if limits.worker_loop {
                                    hand_over = Some((frame, chosen.clone()));
                                    break;
                                }
                                let Some(client) = outbound.take() else {
                                    failed = true;
                                    break;
                                };
                                if chosen.send(StreamEvent::Opened { five_tuple, client }).await.is_err() {
                                    failed = true;
                                    break;
                                }
                                worker = Some(chosen.clone());
                            }
                            let Some(events) = &worker else {
                                failed = true;
                                break;
                            };
                            if events.send(StreamEvent::Frame { five_tuple, frame }).await.is_err() {
                                failed = true;
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(_) => {
                            failed = true;
                            break;
                        }
                    }
                }
                if failed {
                    break End::Closed("not STUN");
                }
                if let Some((first, chosen)) = hand_over {
                    break End::HandOver(first, chosen);
                }
                // The message now being received started with this read if one ended in it:
                // a client streaming back to back is never "stalled mid-message".
                partial_since = match (framer.has_partial(), partial_since) {
                    (true, Some(since)) if !framed => Some(since),
                    (true, _) => Some(last_activity),
                    (false, _) => None,
                };
            }
            message = queue.recv() => match message {
                Some(Outbound::Bytes(mut batch)) => {
                    // Everything queued goes out with it, in one write: answers leave at
                    // the pace requests are read, so a client that does not read its
                    // answers fills its socket's buffers and blocks the write.
                    let mut splice = None;
                    while batch.len() < WRITE_BATCH {
                        match queue.try_recv() {
                            Ok(Outbound::Bytes(more)) => batch.extend_from_slice(&more),
                            Ok(Outbound::Splice(peer)) => {
                                splice = Some(peer);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    // Never blocked for longer: a client that does not read is cut, and
                    // its allocation goes with it.
                    match tokio::time::timeout(limits.write_timeout, write_message(&mut writer, &batch)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => break End::Closed("write error"),
                        Err(_) => {
                            CUT_WRITE_TIMEOUT.fetch_add(1, Ordering::Relaxed);
                            break End::Closed("write timeout");
                        }
                    }
                    last_activity = Instant::now();
                    if let Some(peer) = splice {
                        break End::Splice(peer);
                    }
                }
                Some(Outbound::Splice(peer)) => break End::Splice(peer),
                None => break End::Closed("server closed"),
            },
            () = tokio::time::sleep_until(wake) => {
                if Instant::now() >= deadline {
                    break End::Closed("timeout");
                }
                if !source.is_authenticated() {
                    CUT_UNAUTHENTICATED.fetch_add(1, Ordering::Relaxed);
                    break End::Closed("unauthenticated timeout");
                }
            }
        }
    };
    let reason = match end {
        End::Closed(reason) => {
            // Bounded too: a client that reads nothing must not hold the close.
            let _ = tokio::time::timeout(limits.write_timeout, writer.shutdown()).await;
            reason
        }
        End::Splice(peer) => {
            source.authenticate();
            let client = reader.unsplit(writer);
            splice(client, framer.take_pending(), peer, &mut queue).await
        }
        End::HandOver(first, chosen) => {
            let Some((socket, tls)) = reader.unsplit(writer).into_raw() else {
                debug!(client = %five_tuple.client, "connection closed: cannot hand it to its worker");
                return;
            };
            let accepted_at = accepted_at.into_std();
            let handover = Handover { five_tuple, socket, tls, first, framer, source, held, limits, accepted_at };
            if chosen.send(StreamEvent::Adopt(Box::new(handover))).await.is_err() {
                debug!(client = %five_tuple.client, "connection closed: its worker is gone");
            }
            return;
        }
    };
    drop(held);
    if let Some(events) = worker {
        let _ = events.send(StreamEvent::Closed { five_tuple }).await;
    }
    debug!(client = %five_tuple.client, transport = five_tuple.transport.label(), reason, "connection closed");
}

/// RFC 6062 data connection: raw bytes both ways between the client and the peer until
/// either side closes or the event loop drops the connection's queue.
async fn splice<S: AsyncRead + AsyncWrite + Unpin>(
    mut client: S,
    early: &[u8],
    mut peer: TcpStream,
    queue: &mut mpsc::Receiver<Outbound>,
) -> &'static str {
    // Bytes the client sent right behind its ConnectionBind belong to the peer.
    if peer.write_all(early).await.is_err() {
        return "peer write error";
    }
    let pump = tokio::io::copy_bidirectional(&mut client, &mut peer);
    tokio::pin!(pump);
    loop {
        tokio::select! {
            result = &mut pump => return if result.is_ok() { "data connection ended" } else { "data connection error" },
            // Dropping both streams on return closes them.
            message = queue.recv() => if message.is_none() {
                return "closed by server";
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_tcp_connection_task_is_small() {
        // What every idle connection holds besides its read buffer: a TLS session must
        // not be reserved in plain TCP connections' tasks.
        let (tx, _rx) = mpsc::channel::<StreamEvent>(1);
        let router = StreamRouter::new(vec![tx]);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let stream = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
            let slots = Arc::new(Semaphore::new(1));
            let source = SourceSlot::admit(&slots, [127, 0, 0, 1].into(), &StreamLimits::default()).unwrap();
            let address = stream.local_addr().unwrap();
            let five_tuple = FiveTuple {
                transport: Transport::Tcp,
                client: address.into(),
                server: address,
                tenant: crate::turn::TenantId::DEFAULT,
            };
            let held: Held = Box::new(slots.clone().try_acquire_owned().unwrap());
            let accepted = Accepted { five_tuple, at: Instant::now(), source, held };
            let task = serve(stream, None, accepted, StreamLimits::default(), router.clone());
            assert!(std::mem::size_of_val(&task) < 4096, "{} bytes", std::mem::size_of_val(&task));
            drop(task);
            // Nor one behind a PROXY protocol header.
            let stream = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
            let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
            let task =
                proxied(stream, None, five_tuple, Instant::now(), slots, StreamLimits::default(), router, permit);
            assert!(std::mem::size_of_val(&task) < 4096, "proxied: {} bytes", std::mem::size_of_val(&task));
        });
    }
}
