//! Plaintext out through rustls to a non-blocking socket: the one write loop of the
//! TLS connections the worker's loop serves ([`super::stream_conn`]) and of the TLS
//! data connections it splices ([`super::stream_splice`]).

use super::stream_conn::TLS_STEPS;
use std::io::{self, Write};
use std::net::TcpStream;

/// What one [`write_plaintext`] call moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Written {
    /// Bytes of the plaintext rustls took (the caller keeps the rest for later).
    pub(super) taken: usize,
    /// Whether a record reached the socket.
    pub(super) sent: bool,
}

/// Why a write ended the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WriteError {
    /// rustls refused the plaintext.
    Tls,
    /// The socket failed or wrote nothing.
    Socket,
}

/// Hands `pending` to rustls and writes its records to `socket` until everything is
/// out or the socket blocks, [`TLS_STEPS`] rounds at most (the socket stays watched
/// for room, so what is left goes on the next turn). rustls cuts records at 16 KiB and
/// takes less when its own buffer is full: the plaintext it did not take stays with
/// the caller, and records it already holds go first.
pub(super) fn write_plaintext(
    tls: &mut rustls::ServerConnection,
    mut socket: &TcpStream,
    pending: &[u8],
) -> Result<Written, WriteError> {
    let mut written = Written::default();
    for _ in 0..TLS_STEPS {
        let rest = pending.get(written.taken..).unwrap_or_default();
        if !rest.is_empty() {
            written.taken += tls.writer().write(rest).map_err(|_| WriteError::Tls)?;
        }
        let mut blocked = false;
        while tls.wants_write() {
            match tls.write_tls(&mut socket) {
                Ok(0) => return Err(WriteError::Socket),
                Ok(_) => written.sent = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    blocked = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(WriteError::Socket),
            }
        }
        if blocked || written.taken >= pending.len() {
            break;
        }
    }
    Ok(written)
}
