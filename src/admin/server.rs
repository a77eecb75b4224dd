//! The accept loop: a connection cap, a header read timeout, HTTP/1.1 with upgrades.
//!
//! axum's own `serve` has neither a cap nor a header timeout, so a handful of idle or
//! slow-loris connections could hold the admin plane; hyper's connection builder has
//! both knobs, and the cap is ours.

use super::{routes, State};
use crate::metrics::AdminCounters;
use axum::Extension;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tracing::debug;

/// A client must send a request's headers within this.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (line and headers) accepted.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// What a connection over the cap gets before it is closed.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
/// How long a refused connection is kept to read (and discard) its request, so closing
/// it sends FIN after the 503 rather than a reset that could swallow the 503.
const REFUSAL_LINGER: Duration = Duration::from_millis(500);
/// Send buffer of each admin connection. Fixed, because on loopback the kernel's
/// autotuning grows it to megabytes: a client that stopped reading would then be
/// noticed (by a blocked send) only after megabytes of events.
const SEND_BUFFER: usize = 64 * 1024;

/// One admin connection's place under the cap, counted in the connections gauge.
/// A WebSocket upgrade takes it from the HTTP connection (see [`ConnectionSlot`]), so
/// a long-lived WebSocket keeps counting after the HTTP exchange is over.
#[derive(Debug)]
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
    counters: Arc<AdminCounters>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.counters.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The slot of the connection a request came on, as a request extension.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionSlot(Arc<Mutex<Option<Slot>>>);

impl ConnectionSlot {
    /// Takes the slot (for a WebSocket session that outlives the HTTP connection).
    pub(crate) fn take(&self) -> Option<Slot> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Serves `listener` until `stop` fires.
pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    max_connections: usize,
    mut stop: oneshot::Receiver<()>,
) {
    let router = routes::router(state.clone());
    let cap = Arc::new(Semaphore::new(max_connections));
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
        let Ok(permit) = cap.clone().try_acquire_owned() else {
            state.counters.refused.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(refuse(stream));
            continue;
        };
        state.counters.connections.fetch_add(1, Ordering::Relaxed);
        let slot =
            ConnectionSlot(Arc::new(Mutex::new(Some(Slot { _permit: permit, counters: state.counters.clone() }))));
        let _ = stream.set_nodelay(true);
        let _ = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER);
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
}

/// Answers 503 to a connection over the cap and closes it; bounded in time and bytes.
async fn refuse(mut stream: tokio::net::TcpStream) {
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
