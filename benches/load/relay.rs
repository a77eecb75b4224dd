//! The data plane: a closed loop of ChannelData or Send indications from every client,
//! relayed to a UDP echo peer and back, with a fixed window of packets in flight per
//! allocation. The echo peer runs in the same thread, batched, so the generator costs
//! a few batched syscalls per round trip.
//!
//! Each payload starts with the allocation index, a sequence number and the send time;
//! the rest is filler. A round trip is two relayed datagrams (client to peer, peer back
//! to client).

use crate::control::{Clients, Meter, Window};
use crate::stun;
use crate::udp::{self, RecvBatch, SendBatch};
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};
use turnd::client::{write_indication_header, DataIndication, Packet, INDICATION_HEADER_V4};
use turnd::stun::channel_data::ChannelData;
use turnd::stun::raw::TYPE_SEND_INDICATION;

/// How the client frames data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// ChannelData (4-byte header).
    Channel,
    /// Send indications out, Data indications back (36-byte header to an IPv4 peer).
    Send,
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Mode::Channel => "channel",
            Mode::Send => "send",
        }
    }

    /// Framing bytes in front of the payload (what the forwarder strips and adds).
    pub fn header(self) -> usize {
        match self {
            Mode::Channel => 4,
            Mode::Send => INDICATION_HEADER_V4,
        }
    }
}

/// One relay measurement.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub mode: Mode,
    pub allocations: usize,
    pub payload: usize,
    pub window: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// What it measured.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub window: Window,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Packets sent inside the window, and how many of them never came back.
    pub sent: u64,
    pub lost: u64,
}

impl Outcome {
    pub fn loss(&self) -> f64 {
        self.lost as f64 / self.sent.max(1) as f64
    }
}

/// A packet in flight.
#[derive(Debug, Clone, Copy, Default)]
pub struct Slot {
    seq: u32,
    sent_ns: u64,
    live: bool,
    /// Sent inside the measurement window (counts for loss).
    counted: bool,
}

/// A packet unanswered this long is lost; its slot is refilled.
pub const LOSS_TIMEOUT: Duration = Duration::from_millis(500);
/// Packets in flight in one cell at most: the 1,000-allocation cells' 2,000 at the
/// usual window of 2. Past it (10,000 allocations) the socket buffers (4 MiB at most
/// here, net.core.rmem_max) overflow and loss measures the buffers, not the server;
/// so packets rotate over the allocations instead, round robin, each answer sending
/// the next allocation's packet: every allocation is still used, fewer at a time.
pub const MAX_IN_FLIGHT: usize = 2000;

/// Where the next packet goes after slot `k` of allocation `i` was answered or timed
/// out: the same slot, or with more slots than [`MAX_IN_FLIGHT`] a free slot of the
/// next allocation round robin.
pub fn next_slot(i: usize, k: usize, cursor: &mut usize, slots: &[Slot], window: usize) -> (usize, usize) {
    let allocations = slots.len() / window.max(1);
    if slots.len() <= MAX_IN_FLIGHT || allocations == 0 {
        return (i, k);
    }
    loop {
        let j = *cursor % allocations;
        *cursor = cursor.wrapping_add(1);
        if let Some(free) = slots[j * window..(j + 1) * window].iter().position(|s| !s.live) {
            return (j, free);
        }
    }
}

/// Payload bytes the generator reads back: allocation index, sequence, send time.
pub const STAMP: usize = 16;

/// Runs the closed loop through `server` (process `pid`) to the echo `peer`.
pub fn run(clients: &Clients<'_>, peer: &UdpSocket, server: SocketAddrV4, pid: u32, spec: &Spec) -> Outcome {
    let peer_addr = udp::local_v4(peer).expect("peer address");
    let client_fd = udp::fd(clients.socket);
    let peer_fd = udp::fd(peer);
    let window = spec.window;
    let payload = spec.payload.max(STAMP);
    let epoch = Instant::now();
    let nanos = |t: Instant| t.duration_since(epoch).as_nanos() as u64;
    let mut meter = Meter::new(pid, spec.warmup, spec.duration);
    let mut slots = vec![Slot::default(); spec.allocations * window];
    let mut next_seq = vec![0u32; spec.allocations];
    let mut out = SendBatch::new(64);
    let mut inbox = RecvBatch::new(64, 0);
    let mut echo = RecvBatch::new(64, 0);
    let (mut sent, mut lost) = (0u64, 0u64);
    let mut last_scan = Instant::now();
    let mut cursor = 0usize;

    // Sends a fresh packet for allocation `i` in slot `k`.
    let mut send = |i: usize, k: usize, now_ns: u64, counted: bool, out: &mut SendBatch, slots: &mut [Slot]| {
        next_seq[i] = next_seq[i].wrapping_add(1);
        let seq = next_seq[i];
        slots[i * window + k] = Slot { seq, sent_ns: now_ns, live: true, counted };
        if out.is_full() {
            out.flush(client_fd);
        }
        out.push(server, Some(clients.sources[i]), |buf| {
            let header = spec.mode.header();
            match spec.mode {
                Mode::Channel => {
                    let header = (&mut buf[..4]).try_into().expect("room for a ChannelData header");
                    ChannelData::write_header(crate::sessions::CHANNEL, payload as u16, header);
                }
                Mode::Send => {
                    let tid = stun::tid(i as u32, seq);
                    write_indication_header(buf, TYPE_SEND_INDICATION, &tid, SocketAddr::V4(peer_addr), payload);
                }
            }
            buf[header..header + 4].copy_from_slice(&(i as u32).to_be_bytes());
            buf[header + 4..header + 8].copy_from_slice(&seq.to_be_bytes());
            buf[header + 8..header + 16].copy_from_slice(&now_ns.to_be_bytes());
            header + turnd::stun::raw::padded(payload)
        });
    };

    let start_ns = nanos(Instant::now());
    for idx in 0..slots.len().min(MAX_IN_FLIGHT) {
        let (i, k) = next_slot(idx / window, idx % window, &mut cursor, &slots, window);
        send(i, k, start_ns, false, &mut out, &mut slots);
    }
    out.flush(client_fd);
    let drain_until = epoch + spec.warmup + spec.duration + LOSS_TIMEOUT + Duration::from_millis(100);

    loop {
        let now = Instant::now();
        meter.poll(now);
        let sending = !meter.is_over();
        let counting = meter.in_window();
        let now_ns = nanos(now);
        if now >= drain_until {
            break;
        }

        // Answers relayed back to the clients.
        let n = inbox.recv(client_fd);
        for j in 0..n {
            let (bytes, from) = inbox.get(j);
            if from != server {
                continue;
            }
            let data = match Packet::parse(bytes) {
                Ok(Packet::ChannelData { data, .. }) => Some(data),
                Ok(Packet::Stun(m)) => DataIndication::parse(m).ok().flatten().map(|d| d.data),
                Err(_) => None,
            };
            let Some(stamp) = data.and_then(|d| d.get(..STAMP)) else { continue };
            let i = u32::from_be_bytes([stamp[0], stamp[1], stamp[2], stamp[3]]) as usize;
            let seq = u32::from_be_bytes([stamp[4], stamp[5], stamp[6], stamp[7]]);
            let Some(row) = slots.get_mut(i * window..(i + 1) * window) else { continue };
            let Some(k) = row.iter().position(|s| s.live && s.seq == seq) else { continue };
            let slot = row[k];
            row[k].live = false;
            meter.complete(Duration::from_nanos(now_ns.saturating_sub(slot.sent_ns)));
            if sending {
                let (i, k) = next_slot(i, k, &mut cursor, &slots, window);
                send(i, k, now_ns, counting, &mut out, &mut slots);
                sent += u64::from(counting);
            }
        }

        // The echo peer.
        let m = echo.recv(peer_fd);
        if m > 0 {
            echo.echo(peer_fd, m);
        }

        if now.duration_since(last_scan) >= Duration::from_millis(10) {
            last_scan = now;
            let timeout = LOSS_TIMEOUT.as_nanos() as u64;
            for idx in 0..slots.len() {
                let slot = slots[idx];
                if !slot.live || now_ns.saturating_sub(slot.sent_ns) < timeout {
                    continue;
                }
                slots[idx].live = false;
                lost += u64::from(slot.counted);
                if sending {
                    let (i, k) = next_slot(idx / window, idx % window, &mut cursor, &slots, window);
                    send(i, k, now_ns, counting, &mut out, &mut slots);
                    sent += u64::from(counting);
                }
            }
        }
        out.flush(client_fd);

        if !sending && slots.iter().all(|s| !s.live) {
            break;
        }
        if n == 0 && m == 0 {
            udp::wait_readable(&[client_fd, peer_fd], 1);
        }
    }
    // Whatever is still out after the drain is lost.
    lost += slots.iter().filter(|s| s.live && s.counted).count() as u64;

    let mut lat = std::mem::take(&mut meter.latencies_us);
    lat.sort_unstable();
    Outcome { window: meter.window(), p50_us: percentile(&lat, 0.50), p99_us: percentile(&lat, 0.99), sent, lost }
}

pub fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)])
}

/// Warms the forwarder's client table so its relay sockets exist before the window
/// (the forwarder creates them on first sight, turnd and coturn at Allocate).
pub fn prime_forwarder(clients: &Clients<'_>, server: SocketAddrV4, allocations: usize, mode: Mode, peer: &UdpSocket) {
    let spec = Spec {
        mode,
        allocations,
        payload: STAMP,
        window: 1,
        warmup: Duration::ZERO,
        duration: Duration::from_millis(200),
    };
    let _ = run(clients, peer, server, std::process::id(), &spec);
}
