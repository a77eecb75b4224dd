//! The sans-IO TURN core. It owns no socket and reads no clock: the shell feeds it
//! `(now, input)` through `handle_*` methods and drains what to send, which relay
//! sockets to open or close, and when to wake it next through `poll_*` methods.

pub mod allocation;
pub(crate) mod answer;
pub mod auth;
pub mod config;
pub mod effects;
pub mod fleet;
pub mod host;
pub mod id_map;
pub mod ledger;
pub mod lookup;
pub mod mobility;
pub mod nat_discovery;
pub mod nonce;
pub mod offload;
pub(crate) mod outbox;
pub mod output;
pub mod policy;
pub mod ports;
pub mod rate;
pub mod relay;
pub mod request;
pub mod revocations;
pub mod server;
pub mod source;
pub mod stats;
pub mod table;
pub mod tcp_relay;
pub mod tenant;
pub mod ttl_cache;
pub mod user_bandwidth;

pub use config::{CoreConfig, Quotas, RelayAddresses};
pub use ledger::Ledger;
pub use nat_discovery::NatDiscovery;
pub use output::{EndReason, Event, Output, RelayBindError};
pub use server::{Received, Server};
pub use stats::Stats;
use std::net::SocketAddr;
pub use tenant::TenantId;

/// How a client reached us.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Datagrams.
    Udp,
    /// A TCP connection.
    Tcp,
    /// A TLS connection.
    Tls,
}

/// RFC 8656 §2: the 5-tuple identifying a client's allocation: transport, client
/// address and the server address the client sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FiveTuple {
    /// The transport protocol.
    pub transport: Transport,
    /// The client's transport address as the server sees it.
    pub client: ClientAddr,
    /// The server's local address the client's packets arrive on.
    pub server: SocketAddr,
    /// The tenant the shell assigned (by listener or TLS server name). Not part of
    /// RFC 8656's 5-tuple, but a function of it (one listener, one connection), so
    /// carrying it here never splits one client's allocation in two; it is how the
    /// realm reaches the core with every packet for the cost of two bytes.
    pub tenant: tenant::TenantId,
}

/// Hashed as one packed write of what tells 5-tuples apart (addresses, ports,
/// transport, tenant): the table finds a client's allocation by it for every datagram,
/// and with SipHash (kept: clients choose their addresses) the cost is per byte and per
/// write, which the derived hash, field by field with length prefixes, multiplies. An
/// IPv6 address's flow info and scope are left out: equal 5-tuples still hash equal.
impl std::hash::Hash for FiveTuple {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // Bounds: at most 18 + 18 bytes of addresses, then 3, in 40.
        fn put(buf: &mut [u8; 40], at: usize, addr: SocketAddr) -> usize {
            let end = match addr {
                SocketAddr::V4(v4) => {
                    buf[at..at + 4].copy_from_slice(&v4.ip().octets());
                    at + 4
                }
                SocketAddr::V6(v6) => {
                    buf[at..at + 16].copy_from_slice(&v6.ip().octets());
                    at + 16
                }
            };
            buf[end..end + 2].copy_from_slice(&addr.port().to_be_bytes());
            end + 2
        }
        let mut buf = [0u8; 40];
        let at = put(&mut buf, 0, self.client.get());
        let at = put(&mut buf, at, self.server);
        buf[at] = self.transport as u8;
        buf[at + 1..at + 3].copy_from_slice(&self.tenant.0.to_be_bytes());
        state.write(&buf[..at + 3]);
    }
}

/// Identifies an allocation and its relay socket between the core and the shell.
/// Never reused within a process, so a stale id cannot reach another allocation: the
/// `n`th allocation of worker `index` out of `count` gets `n * count + index` (n from
/// 1), so ids of different workers never collide and [`worker_of`] finds the owner.
/// A single-worker server numbers 1, 2, 3...
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AllocationId(pub u64);

/// The index of the worker that owns allocation `id` among `workers` workers, to route
/// an operator's "close allocation" to it. `workers` of 0 is taken as 1.
pub fn worker_of(id: AllocationId, workers: u32) -> u32 {
    // The remainder is below `workers`, so it fits in a u32.
    u32::try_from(id.0 % u64::from(workers.max(1))).unwrap_or(0)
}

/// A client's transport address as the server sees it (RFC 8656 §2), in the one form
/// the core compares and counts: an IPv4-mapped IPv6 address (what a dual-stack socket
/// or a PROXY header may give) is the IPv4 address it is, so one client cannot count
/// as two sources, or slip past `denied_clients`, by its address's spelling. Built only
/// through [`ClientAddr::new`] (or `From<SocketAddr>`, which is the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(SocketAddr);

impl ClientAddr {
    /// The client at `addr`, normalised.
    pub fn new(addr: SocketAddr) -> Self {
        ClientAddr(policy::unmapped(addr))
    }

    /// The address.
    pub fn get(self) -> SocketAddr {
        self.0
    }

    /// Its IP address.
    pub fn ip(self) -> std::net::IpAddr {
        self.0.ip()
    }

    /// Its port.
    pub fn port(self) -> u16 {
        self.0.port()
    }
}

impl From<SocketAddr> for ClientAddr {
    fn from(addr: SocketAddr) -> Self {
        ClientAddr::new(addr)
    }
}

impl std::str::FromStr for ClientAddr {
    type Err = std::net::AddrParseError;

    /// A socket address, normalised as [`ClientAddr::new`] does.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<SocketAddr>().map(ClientAddr::new)
    }
}

impl std::fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A peer's transport address (RFC 8656 §2), in the one form the core compares: an
/// IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a dual-stack socket reports) is
/// the IPv4 address it is. Built only through [`PeerAddr::new`], so no entry point
/// can forget to normalise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerAddr(SocketAddr);

impl PeerAddr {
    /// The peer at `addr`, normalised.
    pub fn new(addr: SocketAddr) -> Self {
        PeerAddr(policy::unmapped(addr))
    }

    /// The address.
    pub fn get(self) -> SocketAddr {
        self.0
    }

    /// Its IP address.
    pub fn ip(self) -> std::net::IpAddr {
        self.0.ip()
    }
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// RFC 6062 CONNECTION-ID: names a peer TCP connection of a TCP allocation until the
/// client binds a data connection to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u32);

/// The random source for nonce secrets, ports and tokens: a CSPRNG in production,
/// injectable so tests are deterministic.
pub trait Rng {
    /// Fills `dest` with random bytes.
    fn fill(&mut self, dest: &mut [u8]);

    /// A random u32.
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill(&mut b);
        u32::from_be_bytes(b)
    }

    /// A random u64.
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill(&mut b);
        u64::from_be_bytes(b)
    }
}

/// The operating system's CSPRNG (through `ring`), read 256 bytes at a time: every
/// Allocate draws a random relay port, and a getrandom(2) call each was about half a
/// percent of turnd's CPU per Allocate + Refresh(0) pair. Bytes handed out are never
/// handed out again.
pub struct SystemRng {
    source: ring::rand::SystemRandom,
    buffer: [u8; 256],
    /// Bytes of `buffer` already handed out (from the start).
    used: usize,
}

impl std::fmt::Debug for SystemRng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SystemRng(..)")
    }
}

impl Default for SystemRng {
    fn default() -> Self {
        SystemRng { source: ring::rand::SystemRandom::new(), buffer: [0; 256], used: 256 }
    }
}

impl SystemRng {
    /// Fills `dest` straight from the kernel.
    fn fill_direct(&self, dest: &mut [u8]) {
        use ring::rand::SecureRandom;
        // getrandom(2) does not fail once the kernel pool is initialised; if it ever
        // did, refusing to serve beats handing out predictable nonces and tokens.
        if self.source.fill(dest).is_err() {
            panic!("the system CSPRNG failed");
        }
    }
}

impl Rng for SystemRng {
    fn fill(&mut self, dest: &mut [u8]) {
        if dest.len() > self.buffer.len() / 4 {
            self.fill_direct(dest);
            return;
        }
        if self.buffer.len() - self.used < dest.len() {
            let mut buffer = [0u8; 256];
            self.fill_direct(&mut buffer);
            self.buffer = buffer;
            self.used = 0;
        }
        let end = self.used + dest.len();
        match self.buffer.get_mut(self.used..end) {
            Some(bytes) => {
                dest.copy_from_slice(bytes);
                // Handed out once: wipe them.
                bytes.fill(0);
                self.used = end;
            }
            None => self.fill_direct(dest),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::Rng;

    /// A deterministic "random" source: counts up.
    #[derive(Debug, Default)]
    pub struct CountingRng(pub u8);

    impl Rng for CountingRng {
        fn fill(&mut self, dest: &mut [u8]) {
            for b in dest {
                *b = self.0;
                self.0 = self.0.wrapping_add(1);
            }
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod system_rng_tests {
    use super::{Rng, SystemRng};

    #[test]
    fn buffered_draws_do_not_repeat_and_large_ones_go_straight_to_the_kernel() {
        let mut rng = SystemRng::default();
        let mut seen = std::collections::HashSet::new();
        // Several refills of the 256-byte buffer, in draws of 8 and odd sizes.
        for _ in 0..200 {
            assert!(seen.insert(rng.next_u64()), "a 64-bit draw repeated");
            let mut odd = [0u8; 7];
            rng.fill(&mut odd);
        }
        let mut large = [0u8; 1000];
        rng.fill(&mut large);
        assert!(large.iter().filter(|&&b| b == 0).count() < 50, "filled");
    }
}

#[cfg(test)]
mod five_tuple_hash_tests {
    use super::{FiveTuple, TenantId, Transport};
    use std::collections::HashMap;
    use std::hash::BuildHasher;

    fn tuple(transport: Transport, client: &str, server: &str, tenant: u16) -> FiveTuple {
        FiveTuple {
            transport,
            client: client.parse().expect("client"),
            server: server.parse().expect("server"),
            tenant: TenantId(tenant),
        }
    }

    /// The packed hash must tell apart what equality tells apart, field by field, or
    /// the table would still be right but every such pair would share a bucket.
    #[test]
    fn tuples_differing_in_any_one_field_are_told_apart_and_equal_ones_hash_equal() {
        let base = tuple(Transport::Udp, "192.0.2.1:5000", "198.51.100.1:3478", 0);
        let others = [
            tuple(Transport::Tcp, "192.0.2.1:5000", "198.51.100.1:3478", 0),
            tuple(Transport::Udp, "192.0.2.2:5000", "198.51.100.1:3478", 0),
            tuple(Transport::Udp, "192.0.2.1:5001", "198.51.100.1:3478", 0),
            tuple(Transport::Udp, "192.0.2.1:5000", "198.51.100.2:3478", 0),
            tuple(Transport::Udp, "192.0.2.1:5000", "198.51.100.1:3479", 0),
            tuple(Transport::Udp, "192.0.2.1:5000", "198.51.100.1:3478", 1),
            tuple(Transport::Udp, "[2001:db8::1]:5000", "198.51.100.1:3478", 0),
            tuple(Transport::Udp, "[2001:db8::1]:5000", "[2001:db8::2]:3478", 0),
        ];
        let state = std::collections::hash_map::RandomState::new();
        for other in &others {
            assert_ne!(state.hash_one(base), state.hash_one(other), "{other:?}");
        }
        // A mapped IPv4 client is the IPv4 client (ClientAddr normalises it).
        let mapped = tuple(Transport::Udp, "[::ffff:192.0.2.1]:5000", "198.51.100.1:3478", 0);
        assert_eq!(mapped, base);
        assert_eq!(state.hash_one(mapped), state.hash_one(base));
        let mut map = HashMap::new();
        for (i, t) in std::iter::once(&base).chain(&others).enumerate() {
            map.insert(*t, i);
        }
        assert_eq!(map.len(), others.len() + 1);
        assert_eq!(map.get(&mapped), Some(&0));
    }
}
