//! RFC 6062 sockets: the TCP listener on a TCP allocation's relayed address, and
//! outgoing connections from that same address to peers. Both set SO_REUSEADDR and
//! SO_REUSEPORT, since a connection from the relayed port shares it with the listener.

use super::stream_channel::StreamEvent;
use crate::turn::AllocationId;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tracing::debug;

/// How long a Connect may take before it fails with 447 (RFC 6062 §5.2).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds and listens on `local`; returns the listener and its bound address.
pub fn listen(local: SocketAddr) -> io::Result<(TcpListener, SocketAddr)> {
    let socket = Socket::new(Domain::for_address(local), Type::STREAM.cloexec(), Some(Protocol::TCP))?;
    if local.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SockAddr::from(local))?;
    socket.listen(128)?;
    let listener = TcpListener::from_std(socket.into())?;
    let bound = listener.local_addr()?;
    Ok((listener, bound))
}

/// Accepts peer connections until aborted (when the allocation goes).
pub async fn accept_peers(listener: TcpListener, allocation: AllocationId, events: mpsc::Sender<StreamEvent>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                if events.send(StreamEvent::PeerIncoming { allocation, stream, peer }).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                debug!(error = %e, "accept on a TCP relay failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Connects from the relayed address `local` to `peer`.
pub async fn connect(local: SocketAddr, peer: SocketAddr) -> io::Result<TcpStream> {
    let socket = if local.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(local)?;
    match tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(peer)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    }
}
