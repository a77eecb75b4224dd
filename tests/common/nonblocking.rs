//! A client's TCP or TLS connection driven without blocking, as the stream tests
//! drive many at once from one thread: what it sends is queued (in the TLS session, or
//! in a `pending` buffer for TCP) and written as the socket takes it.

use rustls::ClientConnection;
use std::io::{ErrorKind, Write};
use std::net::TcpStream;

/// Queues `bytes`: for TLS as one record (or more, past 16 KiB), for TCP in `pending`.
pub fn queue(tls: Option<&mut ClientConnection>, pending: &mut Vec<u8>, bytes: &[u8]) {
    match tls {
        Some(tls) => tls.writer().write_all(bytes).expect("TLS plaintext queued"),
        None => pending.extend_from_slice(bytes),
    }
}

/// Writes what the socket takes now of what [`queue`] queued; a write error fails the
/// test, naming `who`.
pub fn write_some(sock: &mut TcpStream, tls: Option<&mut ClientConnection>, pending: &mut Vec<u8>, who: &str) {
    match tls {
        Some(tls) => {
            while tls.wants_write() {
                match tls.write_tls(sock) {
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                    Err(e) => panic!("{who}: write: {e}"),
                }
            }
        }
        None => {
            while !pending.is_empty() {
                match sock.write(pending) {
                    Ok(n) => drop(pending.drain(..n)),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                    Err(e) => panic!("{who}: write: {e}"),
                }
            }
        }
    }
}
