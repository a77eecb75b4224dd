//! Datagrams for UDP clients, gathered while the loop serves its ready sockets and sent
//! with one sendmmsg per listener instead of one sendmsg each. Peer packets relayed to
//! clients stay where they were received (a slot of the loop's relay buffer, with the
//! ChannelData or Data indication header written in front), so batching costs no
//! copy; responses the core built are moved in. Everything queued goes out in order.
//! With GSO on, a run of same-sized datagrams to one destination goes out as one
//! UDP_SEGMENT message (see [`mmsg::send_batch`]); a socket whose kernel path refuses it
//! is remembered and served one datagram at a time from then on.

use crate::sys::mmsg::{self, Datagram};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use tracing::debug;

/// GSO sends the kernel refused (their datagrams sent again one by one), process-wide.
static GSO_REFUSED: AtomicU64 = AtomicU64::new(0);

/// How many GSO sends the kernel has refused in this process (`/metrics`).
pub fn gso_refusals() -> u64 {
    GSO_REFUSED.load(Ordering::Relaxed)
}

/// Datagrams held at most (one sendmmsg's worth); the loop flushes when full and at
/// the end of every pass.
pub const CAPACITY: usize = mmsg::SEND_BATCH;

/// Where a queued datagram's bytes are.
#[derive(Debug)]
pub enum Payload {
    /// A range of the relay buffer passed to [`Outbox::flush`].
    Slot(Range<usize>),
    /// Bytes of its own (a response).
    Owned(Vec<u8>),
}

#[derive(Debug)]
struct Entry {
    /// Push order, so that sorting by socket keeps each socket's datagrams in order.
    seq: usize,
    socket: RawFd,
    to: SocketAddr,
    /// The source address to send from, for a wildcard listener (IP_PKTINFO).
    from: Option<IpAddr>,
    payload: Payload,
}

/// Queued datagrams; see the module documentation.
#[derive(Debug)]
pub struct Outbox {
    entries: Vec<Entry>,
    /// Whether runs of datagrams go out with UDP_SEGMENT.
    gso: bool,
    /// Sockets (by descriptor number) whose GSO sends the kernel refused, one bit each;
    /// grown only on a refusal, so at most to the highest descriptor that met one.
    refused: Vec<u64>,
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox::new(false)
    }
}

impl Outbox {
    /// An empty outbox; `gso` sends runs of same-sized datagrams to one destination as
    /// one UDP_SEGMENT message.
    pub fn new(gso: bool) -> Self {
        Outbox { entries: Vec::with_capacity(CAPACITY), gso, refused: Vec::new() }
    }

    /// Forgets a refusal remembered for `socket`: its descriptor number now names
    /// another socket.
    pub fn forget(&mut self, socket: RawFd) {
        if let Some(word) = usize::try_from(socket).ok().and_then(|fd| self.refused.get_mut(fd / 64)) {
            *word &= !(1u64 << (socket as usize % 64));
        }
    }

    fn gso_for(&self, socket: RawFd) -> bool {
        let Ok(fd) = usize::try_from(socket) else {
            return false;
        };
        self.gso && !matches!(self.refused.get(fd / 64), Some(word) if word & (1u64 << (fd % 64)) != 0)
    }

    fn refuse(&mut self, socket: RawFd) {
        GSO_REFUSED.fetch_add(1, Ordering::Relaxed);
        let Ok(fd) = usize::try_from(socket) else {
            return;
        };
        if self.refused.len() <= fd / 64 {
            self.refused.resize(fd / 64 + 1, 0);
        }
        if let Some(word) = self.refused.get_mut(fd / 64) {
            *word |= 1u64 << (fd % 64);
        }
    }

    /// Whether a push must wait for a flush.
    pub fn is_full(&self) -> bool {
        self.entries.len() >= CAPACITY
    }

    /// How many more datagrams fit.
    pub fn room(&self) -> usize {
        CAPACITY.saturating_sub(self.entries.len())
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Queues a datagram for `to` on `socket` (sent from `from` when set). The caller
    /// flushes first when [`Outbox::is_full`]; a push to a full outbox is dropped.
    pub fn push(&mut self, socket: RawFd, to: SocketAddr, from: Option<IpAddr>, payload: Payload) {
        if self.is_full() {
            debug!(client = %to, "outbox full: datagram dropped");
            return;
        }
        let seq = self.entries.len();
        self.entries.push(Entry { seq, socket, to, from, payload });
    }

    /// Like [`Outbox::flush`], but first gathers each socket's datagrams (in order) so
    /// that every socket gets one sendmmsg: for payloads bound to many relay sockets.
    pub fn flush_by_socket(&mut self, slots: &[u8]) -> usize {
        // Unstable sort on a unique key: no allocation, and order kept per socket.
        self.entries.sort_unstable_by_key(|e| (e.socket, e.seq));
        self.flush(slots)
    }

    /// Sends everything queued, one sendmmsg per run of datagrams on one socket;
    /// `slots` is the buffer [`Payload::Slot`] ranges point into. Returns how many
    /// datagrams could not be sent (dropped, as a full socket buffer drops them).
    pub fn flush(&mut self, slots: &[u8]) -> usize {
        let mut failed = 0;
        let mut start = 0;
        while let Some(first) = self.entries.get(start) {
            let socket = first.socket;
            let run = self.entries[start..].iter().take_while(|e| e.socket == socket).count();
            let sent = send_run(socket, &self.entries[start..start + run], slots, self.gso_for(socket));
            if sent.gso_refused {
                self.refuse(socket);
            }
            failed += sent.failed;
            start += run;
        }
        self.entries.clear();
        failed
    }
}

/// Sends `entries` (all on `socket`, at most [`CAPACITY`]) with one sendmmsg; `failed`
/// counts what could not be sent (a slot range outside `slots` counts as one).
fn send_run(socket: RawFd, entries: &[Entry], slots: &[u8], gso: bool) -> mmsg::Sent {
    let mut missing = 0;
    let datagrams = entries.iter().take(CAPACITY).filter_map(|entry| {
        let bytes = match &entry.payload {
            Payload::Owned(bytes) => Some(bytes.as_slice()),
            Payload::Slot(range) => slots.get(range.clone()),
        };
        if bytes.is_none() {
            missing += 1;
        }
        Some(Datagram { to: entry.to, from: entry.from, bytes: bytes? })
    });
    let mut sent = mmsg::send_batch(socket, datagrams, gso);
    sent.failed += missing;
    sent
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    fn receiver(address: &str) -> UdpSocket {
        let socket = UdpSocket::bind(address).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        socket
    }

    #[test]
    fn one_flush_sends_slots_and_owned_bytes_in_order_to_each_destination() {
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (a, b) = (receiver("127.0.0.1:0"), receiver("127.0.0.1:0"));
        let slots = b"....first....second".to_vec();
        let mut outbox = Outbox::default();
        let fd = sender.as_raw_fd();
        outbox.push(fd, a.local_addr().unwrap(), None, Payload::Slot(4..9));
        outbox.push(fd, b.local_addr().unwrap(), None, Payload::Owned(b"response".to_vec()));
        outbox.push(fd, a.local_addr().unwrap(), None, Payload::Slot(13..19));
        outbox.push(fd, a.local_addr().unwrap(), None, Payload::Slot(18..99)); // out of range
        assert_eq!(outbox.flush(&slots), 1, "the bad range is the one failure");
        assert!(outbox.is_empty());
        let mut buf = [0u8; 64];
        for (socket, want) in [(&a, &b"first"[..]), (&a, b"second"), (&b, b"response")] {
            let (n, from) = socket.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..n], from), (want, sender.local_addr().unwrap()));
        }
    }

    #[test]
    fn a_wildcard_socket_sends_from_the_address_it_is_told() {
        let sender = UdpSocket::bind("0.0.0.0:0").unwrap();
        let port = sender.local_addr().unwrap().port();
        let to = receiver("127.0.0.1:0");
        let mut outbox = Outbox::default();
        for from in ["127.0.0.2", "127.0.0.1"] {
            let source = from.parse().ok();
            outbox.push(sender.as_raw_fd(), to.local_addr().unwrap(), source, Payload::Owned(from.into()));
        }
        assert_eq!(outbox.flush(&[]), 0);
        let mut buf = [0u8; 64];
        for from in ["127.0.0.2", "127.0.0.1"] {
            let (n, source) = to.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], from.as_bytes());
            assert_eq!(source, SocketAddr::new(from.parse().unwrap(), port));
        }
    }

    #[test]
    fn runs_on_different_sockets_each_go_out_and_a_full_outbox_drops() {
        let (one, two) = (UdpSocket::bind("127.0.0.1:0").unwrap(), UdpSocket::bind("127.0.0.1:0").unwrap());
        let to = receiver("127.0.0.1:0");
        let mut outbox = Outbox::default();
        for i in 0..CAPACITY + 1 {
            let socket = if i % 2 == 0 { &one } else { &two };
            outbox.push(socket.as_raw_fd(), to.local_addr().unwrap(), None, Payload::Owned(vec![i as u8]));
        }
        assert!(outbox.is_full());
        assert_eq!(outbox.flush(&[]), 0);
        let mut buf = [0u8; 8];
        let mut seen = Vec::new();
        while let Ok((n, from)) = {
            to.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
            to.recv_from(&mut buf)
        } {
            assert_eq!(n, 1);
            let expected = if buf[0] % 2 == 0 { &one } else { &two };
            assert_eq!(from, expected.local_addr().unwrap());
            seen.push(buf[0]);
        }
        assert_eq!(seen, (0..CAPACITY as u8).collect::<Vec<_>>(), "all but the one pushed when full, in order");
    }

    #[test]
    fn flush_by_socket_keeps_each_sockets_datagrams_in_order() {
        let (one, two) = (UdpSocket::bind("127.0.0.1:0").unwrap(), UdpSocket::bind("127.0.0.1:0").unwrap());
        let to = receiver("127.0.0.1:0");
        let slots: Vec<u8> = (0..10).collect();
        let mut outbox = Outbox::default();
        for i in 0..10usize {
            let socket = if i % 3 == 0 { &one } else { &two };
            outbox.push(socket.as_raw_fd(), to.local_addr().unwrap(), None, Payload::Slot(i..i + 1));
        }
        assert_eq!(outbox.flush_by_socket(&slots), 0);
        let mut by_source: std::collections::HashMap<SocketAddr, Vec<u8>> = Default::default();
        let mut buf = [0u8; 8];
        for _ in 0..10 {
            let (n, from) = to.recv_from(&mut buf).unwrap();
            assert_eq!(n, 1);
            by_source.entry(from).or_default().push(buf[0]);
        }
        assert_eq!(by_source[&one.local_addr().unwrap()], vec![0, 3, 6, 9]);
        assert_eq!(by_source[&two.local_addr().unwrap()], vec![1, 2, 4, 5, 7, 8]);
    }

    #[test]
    fn a_socket_whose_gso_send_is_refused_gets_every_datagram_out_one_by_one_from_then_on() {
        use std::os::fd::AsFd;
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        // The kernel refuses UDP_SEGMENT (EINVAL) on a socket that sends without checksums.
        crate::sys::sockopt::set_int(sender.as_fd(), libc::SOL_SOCKET, libc::SO_NO_CHECK, 1).unwrap();
        let to = receiver("127.0.0.1:0");
        let mut outbox = Outbox::new(true);
        let before = gso_refusals();
        for round in 0..2u8 {
            for i in 0..5u8 {
                outbox.push(
                    sender.as_raw_fd(),
                    to.local_addr().unwrap(),
                    None,
                    Payload::Owned(vec![round * 10 + i; 100]),
                );
            }
            assert_eq!(outbox.flush(&[]), 0, "round {round}: nothing lost");
            let mut buf = [0u8; 256];
            for i in 0..5u8 {
                let n = to.recv(&mut buf).unwrap();
                assert_eq!(&buf[..n], &[round * 10 + i; 100][..]);
            }
        }
        assert_eq!(gso_refusals() - before, 1, "refused once, then not asked again");
        outbox.forget(sender.as_raw_fd());
        assert!(outbox.gso_for(sender.as_raw_fd()));
    }
}
