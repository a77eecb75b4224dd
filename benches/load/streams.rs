//! The data plane over TCP and TLS client transports: one connection per allocation,
//! ChannelData padded to four bytes (RFC 8656 §12.5), relayed to the same UDP echo peer
//! as the UDP cells, with the same closed loop (a fixed window of packets in flight per
//! allocation) and the same measurements.
//!
//! The generator is one thread: nonblocking sockets under mio (edge-triggered epoll),
//! frames gathered per connection and written once per loop turn (for TLS, one record
//! per turn and connection), the echo peer batched as in `relay`. Setting up (connect,
//! TLS handshake, Allocate, ChannelBind) uses `turnd::client::blocking`, one connection
//! after the other.

use crate::relay::{percentile, Outcome, Spec, LOSS_TIMEOUT, STAMP};
use crate::sessions::{CHANNEL, PASSWORD, USER};
use crate::udp::{self, RecvBatch};
use crate::{control, control::Meter};
use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use turnd::client::blocking::{Connection, Link};
use turnd::client::{write_channel_data, Client, Credentials, Packet, Request};
use turnd::stun::framing::Framer;

/// The client transport of a relay cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    pub fn label(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }

    pub fn parse(s: &str) -> Result<Transport, String> {
        match s {
            "udp" => Ok(Transport::Udp),
            "tcp" => Ok(Transport::Tcp),
            "tls" => Ok(Transport::Tls),
            other => Err(format!("unknown transport {other:?}")),
        }
    }
}

/// How long one connection's setup (connect, handshake, Allocate, ChannelBind) may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// The mio token of the echo peer (connections use their index).
const PEER: Token = Token(usize::MAX);

/// A rustls client configuration trusting the bench's CA (`ca.pem`).
pub fn tls_config(ca: &Path) -> io::Result<Arc<rustls::ClientConfig>> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca).map_err(io::Error::other)? {
        roots.add(cert.map_err(io::Error::other)?).map_err(io::Error::other)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// One client connection, nonblocking, with its allocation bound to [`CHANNEL`].
pub struct Stream {
    socket: TcpStream,
    tls: Option<Box<rustls::ClientConnection>>,
    framer: Framer,
    /// Bytes not yet written (TCP; TLS keeps its own).
    out: Vec<u8>,
    /// ChannelData gathered this turn (TLS: written through rustls as one record).
    pending: Vec<u8>,
}

/// Opens `n` connections to `server` (TLS when `tls` is given), each from its own
/// client address (`control::source`), and sets up an allocation on each with a
/// channel to `peer`.
pub fn connect(
    server: SocketAddrV4,
    n: usize,
    tls: Option<&Arc<rustls::ClientConfig>>,
    peer: SocketAddrV4,
) -> io::Result<Vec<Stream>> {
    (0..n).map(|i| open(server, i, tls, peer)).collect()
}

fn open(
    server: SocketAddrV4,
    i: usize,
    tls: Option<&Arc<rustls::ClientConfig>>,
    peer: SocketAddrV4,
) -> io::Result<Stream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.bind(&socket2::SockAddr::from(SocketAddrV4::new(control::source(i), 0)))?;
    socket.connect_timeout(&socket2::SockAddr::from(server), SETUP_TIMEOUT)?;
    socket.set_tcp_nodelay(true)?;
    let mut tcp: std::net::TcpStream = socket.into();
    let link = match tls {
        None => Link::Tcp(tcp),
        Some(config) => {
            let name = rustls_pki_types::ServerName::IpAddress((*server.ip()).into());
            let mut conn = rustls::ClientConnection::new(config.clone(), name).map_err(io::Error::other)?;
            tcp.set_read_timeout(Some(SETUP_TIMEOUT))?;
            while conn.is_handshaking() {
                conn.complete_io(&mut tcp)?;
            }
            Link::Tls(Box::new(rustls::StreamOwned::new(conn, tcp)))
        }
    };
    let mut connection = Connection::new(link, SocketAddr::V4(server));
    let mut tid_seed = [0u8; 12];
    tid_seed[..8].copy_from_slice(&(i as u64).to_be_bytes());
    let mut client = Client::new(Credentials::long_term(USER, PASSWORD), tid_seed);
    let failed = |what: &str, e: String| io::Error::other(format!("connection {i}: {what}: {e}"));
    for (what, request) in
        [("Allocate", Request::allocate()), ("ChannelBind", Request::channel_bind(CHANNEL, SocketAddr::V4(peer)))]
    {
        let response =
            connection.request(&mut client, &request, SETUP_TIMEOUT).map_err(|e| failed(what, e.to_string()))?;
        if let Some(e) = response.error() {
            return Err(failed(what, e.to_string()));
        }
    }
    let (tcp, tls) = match connection.into_link() {
        Link::Tcp(tcp) => (tcp, None),
        Link::Tls(stream) => {
            let stream = *stream;
            (stream.sock, Some(Box::new(stream.conn)))
        }
        Link::Udp(_) => unreachable!("streams only"),
    };
    tcp.set_nonblocking(true)?;
    Ok(Stream {
        socket: TcpStream::from_std(tcp),
        tls,
        framer: Framer::default(),
        out: Vec::new(),
        pending: Vec::new(),
    })
}

impl Stream {
    /// Writes what was gathered; false when the socket failed.
    fn flush(&mut self) -> bool {
        if let Some(tls) = &mut self.tls {
            if !self.pending.is_empty() {
                if tls.writer().write_all(&self.pending).is_err() {
                    return false;
                }
                self.pending.clear();
            }
            while tls.wants_write() {
                match tls.write_tls(&mut self.socket) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return false,
                }
            }
            return true;
        }
        if self.out.is_empty() {
            std::mem::swap(&mut self.out, &mut self.pending);
        } else {
            self.out.append(&mut self.pending);
        }
        let mut written = 0;
        while written < self.out.len() {
            match self.socket.write(&self.out[written..]) {
                Ok(0) => return false,
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        self.out.drain(..written);
        true
    }

    /// Reads everything the socket holds into the framer; false on end of stream or error.
    fn fill(&mut self) -> bool {
        loop {
            let read = match &mut self.tls {
                None => self.socket.read(self.framer.spare()),
                Some(tls) => match tls.read_tls(&mut self.socket) {
                    Ok(0) => Ok(0),
                    Ok(_) => {
                        if tls.process_new_packets().is_err() {
                            return false;
                        }
                        loop {
                            match tls.reader().read(self.framer.spare()) {
                                Ok(0) => return false,
                                Ok(n) => self.framer.filled(n),
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                                Err(_) => return false,
                            }
                        }
                        continue;
                    }
                    Err(e) => Err(e),
                },
            };
            match read {
                Ok(0) => return false,
                Ok(n) => self.framer.filled(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }
}

/// A packet in flight (as in `relay`).
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    seq: u32,
    sent_ns: u64,
    live: bool,
    counted: bool,
}

/// Runs the closed loop over `streams` (process `pid` is the server) to the echo `peer`.
pub fn run(streams: &mut [Stream], peer: &UdpSocket, pid: u32, spec: &Spec) -> io::Result<Outcome> {
    let n = streams.len();
    let window = spec.window;
    let payload_len = spec.payload.max(STAMP);
    let mut poll = Poll::new()?;
    for (i, s) in streams.iter_mut().enumerate() {
        poll.registry().register(&mut s.socket, Token(i), Interest::READABLE | Interest::WRITABLE)?;
    }
    let peer_fd = udp::fd(peer);
    poll.registry().register(&mut SourceFd(&peer_fd), PEER, Interest::READABLE)?;
    let mut events = Events::with_capacity(1024);
    let epoch = Instant::now();
    let nanos = |t: Instant| t.duration_since(epoch).as_nanos() as u64;
    let mut meter = Meter::new(pid, spec.warmup, spec.duration);
    let mut slots = vec![Slot::default(); n * window];
    let mut next_seq = vec![0u32; n];
    let mut payload = vec![0x5au8; payload_len];
    let mut echo = RecvBatch::new(64, 0);
    let (mut sent, mut lost, mut broken) = (0u64, 0u64, 0usize);
    let mut dirty: Vec<usize> = Vec::new();
    let mut answers: Vec<(usize, u32)> = Vec::new();
    let mut last_scan = Instant::now();

    // Gathers a fresh packet for connection `i` in slot `k`.
    let mut send = |i: usize, k: usize, now_ns: u64, counted: bool, streams: &mut [Stream], slots: &mut [Slot]| {
        next_seq[i] = next_seq[i].wrapping_add(1);
        let seq = next_seq[i];
        slots[i * window + k] = Slot { seq, sent_ns: now_ns, live: true, counted };
        payload[..4].copy_from_slice(&(i as u32).to_be_bytes());
        payload[4..8].copy_from_slice(&seq.to_be_bytes());
        payload[8..16].copy_from_slice(&now_ns.to_be_bytes());
        write_channel_data(CHANNEL, &payload, true, &mut streams[i].pending).expect("payload fits ChannelData");
    };

    let start_ns = nanos(Instant::now());
    for i in 0..n {
        for k in 0..window {
            send(i, k, start_ns, false, streams, &mut slots);
        }
        streams[i].flush();
    }
    let drain_until = epoch + spec.warmup + spec.duration + LOSS_TIMEOUT + Duration::from_millis(100);
    loop {
        poll.poll(&mut events, Some(Duration::from_millis(1)))?;
        let now = Instant::now();
        meter.poll(now);
        if now >= drain_until {
            break;
        }
        let sending = !meter.is_over();
        let counting = meter.in_window();
        let now_ns = nanos(now);
        for event in events.iter() {
            if event.token() == PEER {
                loop {
                    let m = echo.recv(peer_fd);
                    if m == 0 {
                        break;
                    }
                    echo.echo(peer_fd, m);
                }
                continue;
            }
            let i = event.token().0;
            if event.is_writable() {
                dirty.push(i);
            }
            if !event.is_readable() {
                continue;
            }
            if !streams[i].fill() {
                broken += 1;
                let _ = poll.registry().deregister(&mut streams[i].socket);
                continue;
            }
            while let Ok(Some(frame)) = streams[i].framer.next_frame() {
                if let Ok(Packet::ChannelData { data, .. }) = Packet::parse(frame) {
                    if let Some(stamp) = data.get(..STAMP) {
                        let seq = u32::from_be_bytes([stamp[4], stamp[5], stamp[6], stamp[7]]);
                        answers.push((u32::from_be_bytes([stamp[0], stamp[1], stamp[2], stamp[3]]) as usize, seq));
                    }
                }
            }
            for (a, seq) in answers.drain(..) {
                let Some(row) = slots.get_mut(a * window..(a + 1) * window) else { continue };
                let Some(k) = row.iter().position(|s| s.live && s.seq == seq) else { continue };
                let slot = row[k];
                row[k].live = false;
                meter.complete(Duration::from_nanos(now_ns.saturating_sub(slot.sent_ns)));
                if sending {
                    send(a, k, now_ns, counting, streams, &mut slots);
                    sent += u64::from(counting);
                    dirty.push(a);
                }
            }
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
                    send(idx / window, idx % window, now_ns, counting, streams, &mut slots);
                    sent += u64::from(counting);
                    dirty.push(idx / window);
                }
            }
        }
        dirty.sort_unstable();
        dirty.dedup();
        for i in dirty.drain(..) {
            streams[i].flush();
        }
        if !sending && slots.iter().all(|s| !s.live) {
            break;
        }
    }
    for s in streams.iter_mut() {
        let _ = poll.registry().deregister(&mut s.socket);
        s.pending.clear();
    }
    if broken > 0 {
        eprintln!("note: {broken} connections closed or failed during the run");
    }
    lost += slots.iter().filter(|s| s.live && s.counted).count() as u64;
    let mut lat = std::mem::take(&mut meter.latencies_us);
    lat.sort_unstable();
    Ok(Outcome { window: meter.window(), p50_us: percentile(&lat, 0.50), p99_us: percentile(&lat, 0.99), sent, lost })
}
