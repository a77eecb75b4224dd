//! The accept loop: admission (see [`super::admission`]), header read timeouts,
//! HTTP/1.1 with upgrades.
//!
//! axum's own `serve` has neither a cap nor a header timeout, so a handful of idle or
//! slow-loris connections could hold the admin plane; hyper's connection builder has
//! both knobs, and the caps are ours. Ordinary connections get [`HEADER_READ_TIMEOUT`]
//! (10 s) for each request head (hyper starts that clock whenever it waits for a head,
//! so it also ends idle keep-alive connections); reserve connections get
//! [`RESERVE_HEAD_TIMEOUT`] (2 s) for their one request and [`RESERVE_LIFETIME`] (5 s)
//! in all.

use super::admission::{Admission, Admitted, ConnectionSlot, Reservation, RESERVE_HEAD_TIMEOUT, RESERVE_LIFETIME};
use super::{routes, State};
use axum::Extension;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tracing::debug;

/// A client must send each request's headers within this (ordinary pool).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (line and headers) accepted.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// What a connection refused everywhere gets before it is closed.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
/// How long a refused connection is kept to read (and discard) its request, so closing
/// it sends FIN after the 503 rather than a reset that could swallow the 503.
const REFUSAL_LINGER: Duration = Duration::from_millis(500);
/// Refused connections lingering at once; past this they are closed at once.
const MAX_LINGERING: usize = 32;
/// Send buffer of each admin connection. Fixed, because on loopback the kernel's
/// autotuning grows it to megabytes: a client that stopped reading would then be
/// noticed (by a blocked send) only after megabytes of events.
const SEND_BUFFER: usize = 64 * 1024;

/// Serves `listener` until `stop` fires.
pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    admission: Arc<Admission>,
    mut stop: oneshot::Receiver<()>,
) {
    let router = routes::router(state.clone());
    let reserve_router = routes::reserve_router(state.clone());
    let lingering = Arc::new(AtomicUsize::new(0));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut stop => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning on the error.
                debug!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let _ = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER);
        match admission.admit(peer.ip()) {
            Admitted::Ordinary(slot) => {
                let slot = ConnectionSlot::new(slot);
                // Per-connection extension: cheap, since the router's routes are shared.
                let service = TowerToHyperService::new(router.clone().layer(Extension(slot.clone())));
                tokio::spawn(async move {
                    let connection = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_READ_TIMEOUT)
                        .max_buf_size(MAX_HEAD_BYTES)
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades();
                    if let Err(e) = connection.await {
                        debug!(error = %e, %peer, "admin connection ended with an error");
                    }
                    // Unless a WebSocket took it, the slot is freed with the connection.
                    drop(slot.take());
                });
            }
            Admitted::Reserve(reservation) => {
                tokio::spawn(serve_reserved(stream, reservation, reserve_router.clone()));
            }
            Admitted::Refused => {
                if lingering.fetch_add(1, Ordering::Relaxed) < MAX_LINGERING {
                    let lingering = lingering.clone();
                    tokio::spawn(async move {
                        refuse(stream).await;
                        lingering.fetch_sub(1, Ordering::Relaxed);
                    });
                } else {
                    lingering.fetch_sub(1, Ordering::Relaxed);
                    drop(stream);
                }
            }
        }
        // Let the connection just accepted read its request before the next accept, so
        // a flood of new connections cannot displace it from the reserve meanwhile.
        tokio::task::yield_now().await;
    }
}

/// Serves one request from the health reserve: a short head timeout, no keep-alive,
/// a bounded lifetime, and an end as soon as another connection displaces it.
async fn serve_reserved(stream: TcpStream, reservation: Reservation, router: axum::Router) {
    let reservation = Arc::new(reservation);
    let marker = reservation.clone();
    let inner = TowerToHyperService::new(router);
    let service = hyper::service::service_fn(move |request| {
        marker.head_read();
        inner.call(request)
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(RESERVE_HEAD_TIMEOUT)
        .keep_alive(false)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        done = tokio::time::timeout(RESERVE_LIFETIME, connection) => match done {
            Ok(Err(e)) => debug!(error = %e, "reserved admin connection ended with an error"),
            Err(_) => debug!("reserved admin connection cut at its lifetime"),
            Ok(Ok(())) => {}
        },
        _ = reservation.displaced() => debug!("reserved admin connection displaced while sending its head"),
    }
}

/// Answers 503 to a connection refused everywhere and closes it; bounded in time and
/// bytes.
async fn refuse(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        stream.write_all(REFUSAL).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        for _ in 0..16 {
            if stream.read(&mut sink).await? == 0 {
                break;
            }
        }
        std::io::Result::Ok(())
    })
    .await;
}
