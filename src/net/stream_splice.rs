//! RFC 6062 data connections spliced by their worker's loop (`[tcp] worker-loop`). A
//! data connection is handed over like any other ([`super::stream_conn`]); once its
//! ConnectionBind succeeds, the loop takes it out of its served connections and puts
//! it here with the peer connection the core bound it to: both sockets in the loop's
//! epoll set, raw bytes copied between them on the loop's thread (no task, no channel).
//!
//! - One bounded buffer per direction ([`SPLICE_BUFFER`]), allocated with the splice
//!   and reused for every read: what the client's ConnectionBind answer left unwritten
//!   goes first towards the client, the bytes it sent behind its ConnectionBind first
//!   towards the peer; what the peer sent before the bind waits in the peer socket.
//! - Back-pressure both ways: while a direction's buffer is full, the side it reads is
//!   not watched for data (its sender's window closes) and the side it writes is
//!   watched for room to write; nothing read is ever dropped.
//! - Ends (RFC 6062 §5.5): a side's end of stream (for TLS, its close_notify) is passed
//!   on to the other side, once what was read before it is written (a half-close, as
//!   the task path does); the splice is over when both directions have ended, and at
//!   once on any error, or when the core closes the peer connection (its allocation
//!   ended).
//! - No timeouts once bound, as on the task path: the allocation's lifetime bounds it.
//!
//! Plain read/write copies: a `splice(2)` through a pipe would save the copy but costs
//! two more descriptors per data connection and does not apply to TLS.

use super::admission::SourceSlot;
use super::event_loop::{EventLoop, READS_PER_WAKE};
use super::stream::StreamHandle;
use super::stream_conn::{Detached, Held, TLS_STEPS};
use super::tls_write::{write_plaintext, WriteError};
use super::token::{Side, Token};
use crate::turn::FiveTuple;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;
use tracing::debug;

/// Bytes in flight per direction of a spliced data connection: two TLS records' worth,
/// so a read of the socket and a write of the other rarely split one, at 64 KiB per
/// data connection.
pub(super) const SPLICE_BUFFER: usize = 32 * 1024;

/// Bytes on their way in one direction: read from one side, not yet written to the
/// other.
#[derive(Debug)]
struct Pipe {
    /// [`SPLICE_BUFFER`] bytes (more when it started with more).
    buf: Box<[u8]>,
    /// The bytes waiting start here...
    start: usize,
    /// ...and end here.
    end: usize,
    /// The side it reads from has ended its stream.
    ended: bool,
    /// The end was passed on: the side it writes to was shut down for writing.
    shut: bool,
}

impl Pipe {
    /// A pipe holding `first` (which may exceed [`SPLICE_BUFFER`]: the buffer then
    /// starts that large).
    fn new(first: &[u8]) -> Pipe {
        let mut buf = vec![0; SPLICE_BUFFER.max(first.len())].into_boxed_slice();
        if let Some(head) = buf.get_mut(..first.len()) {
            head.copy_from_slice(first);
        }
        Pipe { buf, start: 0, end: first.len(), ended: false, shut: false }
    }

    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// What waits to be written.
    fn pending(&self) -> &[u8] {
        self.buf.get(self.start..self.end).unwrap_or_default()
    }

    /// `n` bytes of [`Self::pending`] were written.
    fn taken(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Whether reading its source may go on: there is room, and the source has not ended.
    fn wants_input(&self) -> bool {
        !self.ended && (self.end < self.buf.len() || self.start > 0)
    }

    /// Where the next read goes (moving what waits to the front when the back is full).
    fn spare(&mut self) -> &mut [u8] {
        if self.end == self.buf.len() && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        self.buf.get_mut(self.end..).unwrap_or_default()
    }

    /// `n` bytes were read into [`Self::spare`].
    fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }
}

/// Whether an I/O error only means "not now".
fn not_now(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted)
}

/// Whether bytes moved, or why the splice is over.
type Moved = Result<bool, &'static str>;

/// Reads `socket` once into `pipe`.
fn read_into(mut socket: &TcpStream, pipe: &mut Pipe, error: &'static str) -> Moved {
    if !pipe.wants_input() {
        return Ok(false);
    }
    match socket.read(pipe.spare()) {
        Ok(0) => {
            pipe.ended = true;
            Ok(true)
        }
        Ok(n) => {
            pipe.filled(n);
            Ok(true)
        }
        Err(e) if not_now(&e) => Ok(false),
        Err(_) => Err(error),
    }
}

/// Writes what `pipe` holds to `socket`, as far as it takes it.
fn write_from(mut socket: &TcpStream, pipe: &mut Pipe, error: &'static str) -> Moved {
    let mut moved = false;
    while !pipe.is_empty() {
        match socket.write(pipe.pending()) {
            Ok(0) => return Err(error),
            Ok(n) => {
                pipe.taken(n);
                moved = true;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(error),
        }
    }
    Ok(moved)
}

/// What a side's epoll entry watches: for data, for room to write.
type Interest = (bool, bool);

/// One spliced data connection.
struct Splice {
    /// The client's data connection's 5-tuple.
    five_tuple: FiveTuple,
    /// The client's data connection.
    client: TcpStream,
    /// Its TLS session, for a `tls` listener's connection.
    tls: Option<Box<rustls::ServerConnection>>,
    /// The peer connection it is bound to.
    peer: TcpStream,
    /// From the client (for TLS: decrypted), for the peer.
    to_peer: Pipe,
    /// From the peer, for the client (for TLS: not yet given to rustls).
    to_client: Pipe,
    /// What each side's epoll entry watches now, by [`Side`] (`None`: not set yet).
    watching: [Option<Interest>; 2],
    /// The client was sent a TLS close_notify.
    notified: bool,
    /// Its place in its source's counts while it lives.
    _source: Arc<SourceSlot>,
    /// Its place under `max-connections` (see [`Held`]).
    _held: Held,
}

impl Splice {
    /// Reads the client into `to_peer`: for TLS, the plaintext rustls holds first, then
    /// the socket when `from_socket`.
    fn read_client(&mut self, from_socket: bool) -> Moved {
        let Some(tls) = self.tls.as_mut() else {
            if !from_socket {
                return Ok(false);
            }
            return read_into(&self.client, &mut self.to_peer, "client read error");
        };
        let mut moved = false;
        for _ in 0..TLS_STEPS {
            loop {
                if !self.to_peer.wants_input() {
                    return Ok(moved);
                }
                match tls.reader().read(self.to_peer.spare()) {
                    Ok(0) => {
                        self.to_peer.ended = true;
                        return Ok(true);
                    }
                    Ok(n) => {
                        self.to_peer.filled(n);
                        moved = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // Closed without a close_notify: an end too; what came before it
                    // is the peer's.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        self.to_peer.ended = true;
                        return Ok(true);
                    }
                    Err(_) => return Err("TLS error"),
                }
            }
            if !from_socket {
                return Ok(moved);
            }
            match tls.read_tls(&mut self.client) {
                Ok(0) => {
                    // rustls held no plaintext (taken above): nothing more comes.
                    self.to_peer.ended = true;
                    return Ok(true);
                }
                Ok(_) => moved = true,
                Err(e) if not_now(&e) => return Ok(moved),
                Err(_) => return Err("client read error"),
            }
            if let Err(e) = tls.process_new_packets() {
                debug!(client = %self.five_tuple.client, error = %e, "TLS error");
                // The alert rustls queued, best effort.
                let _ = tls.write_tls(&mut self.client);
                return Err("TLS error");
            }
        }
        Ok(moved)
    }

    /// Writes `to_client` to the client (for TLS: through rustls, and its records out).
    fn write_client(&mut self) -> Moved {
        let Some(tls) = self.tls.as_mut() else {
            return write_from(&self.client, &mut self.to_client, "client write error");
        };
        let written = write_plaintext(tls, &self.client, self.to_client.pending()).map_err(|e| match e {
            WriteError::Tls => "TLS error",
            WriteError::Socket => "client write error",
        })?;
        self.to_client.taken(written.taken);
        Ok(written.sent)
    }

    /// Whether bytes wait to be written to the client.
    fn client_output(&self) -> bool {
        !self.to_client.is_empty() || self.tls.as_ref().is_some_and(|tls| tls.wants_write())
    }

    /// Moves bytes both ways while they move, [`READS_PER_WAKE`] rounds at most (what
    /// is left in a socket is reported again), and passes ends on. `Ok(true)`: both
    /// directions have ended.
    fn pump(&mut self) -> Result<bool, &'static str> {
        // A side a read found empty (or its buffer full) is not read again this time:
        // epoll reports it when more comes.
        let (mut client_dry, mut peer_dry) = (false, false);
        let mut settled = false;
        for _ in 0..READS_PER_WAKE {
            let mut moved = self.write_client()?;
            moved |= write_from(&self.peer, &mut self.to_peer, "peer write error")?;
            if !client_dry {
                let read = self.read_client(true)?;
                client_dry = !read;
                moved |= read;
            }
            if !peer_dry {
                let read = read_into(&self.peer, &mut self.to_client, "peer read error")?;
                peer_dry = !read;
                moved |= read;
            }
            if !moved {
                settled = true;
                break;
            }
        }
        if !settled {
            // What the last reads brought.
            self.write_client()?;
            write_from(&self.peer, &mut self.to_peer, "peer write error")?;
        }
        // Plaintext rustls holds would not be reported by epoll: take what fits.
        self.read_client(false)?;
        self.pass_ends()?;
        Ok(self.to_peer.shut && self.to_client.shut)
    }

    /// Shuts down for writing a side whose other side's stream ended and whose
    /// buffer is written (for TLS: after a close_notify).
    fn pass_ends(&mut self) -> Result<(), &'static str> {
        if self.to_peer.ended && self.to_peer.is_empty() && !self.to_peer.shut {
            self.to_peer.shut = true;
            debug!(client = %self.five_tuple.client, "data connection: client's stream ended, passed on to the peer");
            let _ = self.peer.shutdown(Shutdown::Write);
        }
        if self.to_client.ended && self.to_client.is_empty() && !self.to_client.shut {
            if !self.notified {
                if let Some(tls) = self.tls.as_mut() {
                    tls.send_close_notify();
                }
                self.notified = true;
                self.write_client()?;
            }
            if !self.client_output() {
                self.to_client.shut = true;
                debug!(client = %self.five_tuple.client, "data connection: peer's stream ended, passed on to the client");
                let _ = self.client.shutdown(Shutdown::Write);
            }
        }
        Ok(())
    }

    /// What each side should be watched for now, by [`Side`].
    fn wanted(&self) -> [Interest; 2] {
        [(self.to_peer.wants_input(), self.client_output()), (self.to_client.wants_input(), !self.to_peer.is_empty())]
    }

    fn socket(&self, side: Side) -> &TcpStream {
        match side {
            Side::Client => &self.client,
            Side::Peer => &self.peer,
        }
    }
}

/// The data connections a loop splices, in slots (a slot's index is in both sockets'
/// epoll tokens).
#[derive(Default)]
pub(super) struct Splices {
    /// Boxed: a splice with its TLS session is kilobytes, an empty slot a pointer.
    slots: Vec<Option<Box<Splice>>>,
    /// Empty slots, taken before the vector grows.
    free: Vec<usize>,
}

impl Splices {
    fn get_mut(&mut self, slot: usize) -> Option<&mut Splice> {
        self.slots.get_mut(slot).and_then(|s| s.as_deref_mut())
    }

    fn insert(&mut self, splice: Box<Splice>) -> usize {
        match self.free.pop() {
            Some(slot) => {
                if let Some(place) = self.slots.get_mut(slot) {
                    *place = Some(splice);
                }
                slot
            }
            None => {
                self.slots.push(Some(splice));
                self.slots.len() - 1
            }
        }
    }

    fn remove(&mut self, slot: usize) -> Option<Box<Splice>> {
        let splice = self.slots.get_mut(slot)?.take()?;
        self.free.push(slot);
        Some(splice)
    }
}

impl std::fmt::Debug for Splices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Splices").field("slots", &self.slots.len()).finish_non_exhaustive()
    }
}

impl EventLoop {
    /// A ConnectionBind on the connection the loop serves in `slot` succeeded: splices
    /// it to `peer` from now on. False when it cannot be (the core then closes both).
    pub(super) fn splice_served(&mut self, slot: usize, peer: tokio::net::TcpStream) -> bool {
        let Some(Detached { five_tuple, socket, tls, output, early, source, held }) = self.conns.detach(slot) else {
            return false;
        };
        self.streams.remove(&five_tuple);
        let peer = match peer.into_std() {
            Ok(peer) => peer,
            Err(e) => {
                debug!(client = %five_tuple.client, error = %e, "cannot take the peer connection: data connection closed");
                return false;
            }
        };
        // A bound data connection counts as authenticated.
        source.authenticate();
        let splice = Box::new(Splice {
            five_tuple,
            client: socket,
            tls,
            peer,
            to_peer: Pipe::new(&early),
            to_client: Pipe::new(&output),
            watching: [None, None],
            notified: false,
            _source: source,
            _held: held,
        });
        let peer_fd = splice.peer.as_raw_fd();
        let slot = self.splices.insert(splice);
        if let Err(e) = self.epoll.add(peer_fd, Token::Splice(slot, Side::Peer).encode()) {
            debug!(client = %five_tuple.client, error = %e, "cannot watch a peer connection: data connection closed");
            drop(self.splices.remove(slot));
            return false;
        }
        if let Some(splice) = self.splices.get_mut(slot) {
            splice.watching[Side::Peer as usize] = Some((true, false));
        }
        self.streams.insert(five_tuple, StreamHandle::Spliced(slot));
        debug!(client = %five_tuple.client, transport = five_tuple.transport.label(), slot, "data connection spliced by its worker");
        // The ConnectionBind success and early bytes go out now; the entries are set.
        self.serve_splice(slot, Side::Client);
        true
    }

    /// A spliced data connection's socket is ready: moves what can be moved.
    pub(super) fn serve_splice(&mut self, slot: usize, side: Side) {
        let Some(splice) = self.splices.get_mut(slot) else {
            return;
        };
        // An entry that watches nothing reports hang-ups and errors only (once: it is
        // edge-triggered then); a reset is the end of the splice.
        if splice.watching[side as usize] == Some((false, false))
            && !matches!(splice.socket(side).take_error(), Ok(None))
        {
            return self.close_splice(slot, "connection reset", true);
        }
        match splice.pump() {
            Ok(false) => self.watch_splice(slot),
            Ok(true) => self.close_splice(slot, "data connection ended", true),
            Err(reason) => self.close_splice(slot, reason, true),
        }
    }

    /// Sets both sockets' epoll entries to what the splice waits for.
    fn watch_splice(&mut self, slot: usize) {
        let Some(splice) = self.splices.get_mut(slot) else {
            return;
        };
        let wanted = splice.wanted();
        for side in [Side::Client, Side::Peer] {
            let want = wanted[side as usize];
            let was = splice.watching[side as usize];
            if was == Some(want) {
                continue;
            }
            // Rare (one side not keeping up), and what a stalled transfer's log must show.
            if was.is_some_and(|(reading, _)| reading != want.0) {
                let pipe = match side {
                    Side::Client => &splice.to_peer,
                    Side::Peer => &splice.to_client,
                };
                if !pipe.ended {
                    let (read, other) = if side == Side::Client { ("client", "peer") } else { ("peer", "client") };
                    let client = splice.five_tuple.client;
                    if want.0 {
                        debug!(%client, "data connection: reading the {read} resumed");
                    } else {
                        debug!(%client, "data connection: reading the {read} paused until the {other} takes what waits");
                    }
                }
            }
            let fd = splice.socket(side).as_raw_fd();
            if let Err(e) = self.epoll.watch_both(fd, Token::Splice(slot, side).encode(), want.0, want.1) {
                debug!(error = %e, "cannot change a data connection's epoll entry");
                return self.close_splice(slot, "epoll error", true);
            }
            splice.watching[side as usize] = Some(want);
        }
    }

    /// Ends a spliced data connection: both sockets close. `tell_core` when the core
    /// does not know yet (it then forgets the peer connection).
    pub(super) fn close_splice(&mut self, slot: usize, reason: &'static str, tell_core: bool) {
        let Some(mut splice) = self.splices.remove(slot) else {
            return;
        };
        let five_tuple = splice.five_tuple;
        if matches!(self.streams.get(&five_tuple), Some(StreamHandle::Spliced(s)) if *s == slot) {
            self.streams.remove(&five_tuple);
        }
        if reason == "closed by server" {
            // What can be written without waiting, best effort.
            let _ = splice.write_client();
            let _ = write_from(&splice.peer, &mut splice.to_peer, "");
            if let Some(tls) = splice.tls.as_mut() {
                tls.send_close_notify();
                let _ = tls.write_tls(&mut splice.client);
            }
        }
        // Closing the sockets takes them out of the epoll set.
        drop(splice);
        if tell_core {
            self.core.close_five_tuple(five_tuple, Instant::now(), &*self.ledger);
            self.drain_outputs();
        }
        debug!(client = %five_tuple.client, transport = five_tuple.transport.label(), reason, "data connection closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipe_starts_with_what_it_is_given_and_keeps_order() {
        let mut pipe = Pipe::new(b"bind answer");
        assert_eq!(pipe.pending(), b"bind answer");
        let spare = pipe.spare();
        spare[..4].copy_from_slice(b"data");
        pipe.filled(4);
        assert_eq!(pipe.pending(), b"bind answerdata");
        pipe.taken(5);
        assert_eq!(pipe.pending(), b"answerdata");
        pipe.taken(10);
        assert!(pipe.is_empty());
        // Emptied: the next read starts at the front again.
        assert_eq!(pipe.spare().len(), SPLICE_BUFFER);
    }

    #[test]
    fn a_full_pipe_stops_input_until_some_is_written() {
        let mut pipe = Pipe::new(&[]);
        let n = pipe.spare().len();
        for (i, b) in pipe.spare().iter_mut().enumerate() {
            *b = i as u8;
        }
        pipe.filled(n);
        assert!(!pipe.wants_input());
        assert!(pipe.spare().is_empty());
        pipe.taken(10);
        assert!(pipe.wants_input());
        // What waits moves to the front, in order, to make room at the back.
        assert_eq!(pipe.spare().len(), 10);
        assert_eq!(pipe.pending().len(), n - 10);
        assert!(pipe.pending().iter().enumerate().all(|(i, b)| *b == (i + 10) as u8));
    }

    #[test]
    fn an_ended_pipe_takes_no_more_input() {
        let mut pipe = Pipe::new(&[]);
        pipe.ended = true;
        assert!(!pipe.wants_input());
    }

    #[test]
    fn more_first_bytes_than_the_buffer_holds_are_kept_whole() {
        let first = vec![7u8; SPLICE_BUFFER + 100];
        let pipe = Pipe::new(&first);
        assert_eq!(pipe.pending(), &first[..]);
        assert!(!pipe.wants_input());
    }
}
