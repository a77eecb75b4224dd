//! TCP and TLS client connections (RFC 8489 §6.2.2, RFC 8656 §3.1). Each connection is
//! a task that frames what it reads and hands whole messages to one worker's event
//! loop (chosen by its first message, see [`StreamRouter`]), which owns the core; the
//! loop answers through a bounded per-connection queue. A client
//! that sends nothing, or stalls mid-message, is cut after `first_message_timeout`,
//! and the number of connections is capped: slowloris cannot hold descriptors.

use super::framing::Framer;
use super::route::StreamRouter;
use crate::turn::{FiveTuple, Transport};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tracing::debug;

/// Messages queued towards one client before newer ones are dropped (a client that
/// does not read must not make the loop buffer without bound).
pub const OUTBOUND_QUEUE: usize = 256;

/// Limits on stream connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Time allowed from accept (incl. the TLS handshake) to the first whole message,
    /// and to finish any message once started.
    pub first_message_timeout: Duration,
    /// A connection with no traffic at all for this long is closed.
    pub idle_timeout: Duration,
    /// Concurrent connections over all stream listeners.
    pub max_connections: usize,
    /// Concurrent connections from one source.
    pub max_connections_per_source: usize,
    /// Concurrent connections from one source that hold no allocation yet.
    pub max_unauthenticated_per_source: usize,
    /// A connection that holds no allocation this long after accept is closed.
    pub unauthenticated_timeout: Duration,
    /// A client that leaves answers unread this long is cut.
    pub write_timeout: Duration,
    /// How client addresses are grouped into sources.
    pub sources: crate::turn::source::SourcePrefix,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            first_message_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(900),
            max_connections: 10_000,
            max_connections_per_source: 256,
            max_unauthenticated_per_source: 16,
            unauthenticated_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(10),
            sources: crate::turn::source::SourcePrefix::default(),
        }
    }
}

/// What the event loop sends a client connection.
#[derive(Debug)]
pub enum Outbound {
    /// A framed message to write.
    Bytes(Vec<u8>),
    /// RFC 6062: from now on, relay raw bytes between this connection and `peer`.
    Splice(TcpStream),
}

/// What connections tell the event loop.
#[derive(Debug)]
pub enum StreamEvent {
    /// A connection is up; send to it through `outbound`.
    Opened {
        /// Its 5-tuple.
        five_tuple: FiveTuple,
        /// Its outbound queue.
        outbound: mpsc::Sender<Outbound>,
    },
    /// A whole STUN message or ChannelData frame arrived.
    Frame {
        /// From which connection.
        five_tuple: FiveTuple,
        /// The framed bytes.
        frame: Vec<u8>,
    },
    /// The connection is gone: its allocation goes with it (RFC 8656 §3.1).
    Closed {
        /// Which connection.
        five_tuple: FiveTuple,
    },
    /// RFC 6062: a peer connected to a TCP allocation's relay address.
    PeerIncoming {
        /// The allocation.
        allocation: crate::turn::AllocationId,
        /// The peer's connection.
        stream: TcpStream,
        /// The peer's address.
        peer: std::net::SocketAddr,
    },
    /// RFC 6062: the outcome of connecting to a peer for a Connect request.
    PeerConnected {
        /// The connection id the core gave it.
        connection: crate::turn::ConnectionId,
        /// The connection, or why there is none.
        stream: std::io::Result<TcpStream>,
    },
}

/// Accepts connections on `listener` until the event channel closes.
pub async fn accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: StreamLimits,
    slots: Arc<Semaphore>,
    router: StreamRouter,
) {
    let transport = if tls.is_some() { Transport::Tls } else { Transport::Tcp };
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning; existing
                // connections and UDP keep working meanwhile.
                debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            debug!(%client, "connection refused: at max-connections");
            continue;
        };
        let Ok(server) = stream.local_addr() else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let five_tuple = FiveTuple { transport, client, server };
        let router = router.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            serve(stream, tls, five_tuple, limits, router).await;
            drop(permit);
        });
    }
}

async fn serve(
    stream: TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    five_tuple: FiveTuple,
    limits: StreamLimits,
    router: StreamRouter,
) {
    let deadline = Instant::now() + limits.first_message_timeout;
    match tls {
        None => connection(stream, five_tuple, limits, deadline, router).await,
        Some(acceptor) => match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => connection(stream, five_tuple, limits, deadline, router).await,
            Ok(Err(e)) => debug!(client = %five_tuple.client, error = %e, "TLS handshake failed"),
            Err(_) => debug!(client = %five_tuple.client, "TLS handshake timed out"),
        },
    }
}

/// How a client connection's framed phase ended.
enum End {
    /// Closed, for this reason.
    Closed(&'static str),
    /// Turned into an RFC 6062 data connection to this peer.
    Splice(TcpStream),
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    five_tuple: FiveTuple,
    limits: StreamLimits,
    first_deadline: Instant,
    router: StreamRouter,
) {
    let (outbound, mut queue) = mpsc::channel::<Outbound>(OUTBOUND_QUEUE);
    // The worker is known with the first message; until then the queue's sender waits
    // here (and nothing is announced for a connection that never sends one).
    let mut outbound = Some(outbound);
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
                loop {
                    match framer.next_frame() {
                        Ok(Some(frame)) => {
                            seen_message = true;
                            let frame = frame.to_vec();
                            if worker.is_none() {
                                let (Some(chosen), Some(outbound)) = (router.pick(&five_tuple, &frame), outbound.take())
                                else {
                                    failed = true;
                                    break;
                                };
                                if chosen.send(StreamEvent::Opened { five_tuple, outbound }).await.is_err() {
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
                partial_since = match (framer.has_partial(), partial_since) {
                    (true, None) => Some(last_activity),
                    (true, since) => since,
                    (false, _) => None,
                };
            }
            message = queue.recv() => match message {
                Some(Outbound::Bytes(bytes)) => {
                    if writer.write_all(&bytes).await.is_err() {
                        break End::Closed("write error");
                    }
                    last_activity = Instant::now();
                }
                Some(Outbound::Splice(peer)) => break End::Splice(peer),
                None => break End::Closed("server closed"),
            },
            () = tokio::time::sleep_until(deadline) => break End::Closed("timeout"),
        }
    };
    let reason = match end {
        End::Closed(reason) => {
            let _ = writer.shutdown().await;
            reason
        }
        End::Splice(peer) => {
            let client = reader.unsplit(writer);
            splice(client, framer.take_pending(), peer, &mut queue).await
        }
    };
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
