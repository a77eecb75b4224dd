//! Client-facing listeners: binding them (UDP and TCP), and choosing the socket a reply leaves
//! through.
//!
//! A reply must leave through a socket of the client's address family: an IPv6 client
//! answered through the `0.0.0.0` socket gets nothing (the kernel refuses with
//! EAFNOSUPPORT). The listeners are therefore stored per family, and the only way to
//! find the one for a reply is [`UdpListeners::reply_via`], which takes the family
//! from the server address itself; a socket of the other family is not among those it
//! can return.

use crate::sys::sockopt;
use crate::turn::allocation::Family;
use crate::turn::TenantId;
use quinn_udp::UdpSocketState;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};

/// Socket buffer size asked for on listeners: bursts of media must not overflow them.
const LISTENER_BUFFER: usize = 4 << 20;

/// A bound client-facing UDP socket.
pub(super) struct Listener {
    pub(super) socket: UdpSocket,
    pub(super) state: UdpSocketState,
    pub(super) local: SocketAddr,
    /// The tenant of the clients it takes (`[[listen]] realm`).
    pub(super) tenant: TenantId,
}

/// Where a listener sits among an event loop's listeners: its family and its index
/// among the listeners of that family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ListenerKey {
    family: Family,
    index: usize,
}

impl ListenerKey {
    /// The listener at `index` among those of `family`.
    pub(super) fn new(family: Family, index: usize) -> Self {
        ListenerKey { family, index }
    }

    /// The listener's family.
    pub(super) fn family(self) -> Family {
        self.family
    }

    /// The listener's index among those of its family.
    pub(super) fn index(self) -> usize {
        self.index
    }
}

/// An event loop's UDP listeners, by family.
#[derive(Default)]
pub(super) struct UdpListeners {
    by_family: [Vec<Listener>; 2],
}

impl UdpListeners {
    /// Takes ownership of bound sockets; returns them with the key of each (for epoll).
    pub(super) fn new(sockets: Vec<(UdpSocket, TenantId)>) -> io::Result<(UdpListeners, Vec<(ListenerKey, i32)>)> {
        let mut listeners = UdpListeners::default();
        let mut keys = Vec::new();
        for (socket, tenant) in sockets {
            let state = UdpSocketState::new((&socket).into())?;
            let local = socket.local_addr()?;
            disable_pmtud(&socket, super::udp::offload());
            drop_unused_control_messages(&socket, local);
            let family = Family::of(local.ip());
            let list = &mut listeners.by_family[family as usize];
            keys.push((ListenerKey { family, index: list.len() }, socket.as_raw_fd()));
            list.push(Listener { socket, state, local, tenant });
        }
        Ok((listeners, keys))
    }

    /// Every listener's key and descriptor, for (re)adding them to an epoll set.
    pub(super) fn keys(&self) -> Vec<(ListenerKey, i32)> {
        let mut keys = Vec::new();
        for (family, list) in [Family::V4, Family::V6].into_iter().zip(&self.by_family) {
            for (index, listener) in list.iter().enumerate() {
                keys.push((ListenerKey { family, index }, listener.socket.as_raw_fd()));
            }
        }
        keys
    }

    /// A duplicate of every listener socket (for a live upgrade).
    pub(super) fn duplicates(&self) -> io::Result<Vec<UdpSocket>> {
        self.by_family.iter().flatten().map(|l| l.socket.try_clone()).collect()
    }

    /// The listener a key names.
    pub(super) fn get(&self, key: ListenerKey) -> Option<&Listener> {
        self.by_family[key.family as usize].get(key.index)
    }

    /// The listener a reply to a client that sent to `server` leaves through: the one
    /// bound to exactly that address, else the wildcard of that family and port. Only
    /// listeners of `server`'s own family are looked at.
    pub(super) fn reply_via(&self, server: SocketAddr) -> Option<&Listener> {
        let same_family = &self.by_family[Family::of(server.ip()) as usize];
        same_family
            .iter()
            .find(|l| l.local == server)
            .or_else(|| same_family.iter().find(|l| l.local.port() == server.port() && l.local.ip().is_unspecified()))
    }

    /// The transport addresses the listeners answer on, for the peer policy's
    /// own-socket check. A wildcard listener is reachable on loopback at least.
    pub(super) fn own_addresses(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.by_family.iter().flatten().flat_map(|l| {
            let local = l.local;
            let loopback: IpAddr =
                if local.is_ipv4() { Ipv4Addr::LOCALHOST.into() } else { Ipv6Addr::LOCALHOST.into() };
            let wildcard = local.ip().is_unspecified().then(|| SocketAddr::new(loopback, local.port()));
            std::iter::once(local).chain(wildcard)
        })
    }
}

/// Binds a configured UDP listener as `copies` sockets on one address, one per
/// worker: an SO_REUSEPORT group when there are several, so the kernel spreads clients
/// over the workers by their 4-tuple. Separate from the event loop so the caller
/// learns the bound address (port 0 is resolved here).
pub fn bind_udp_listener(address: SocketAddr, copies: usize) -> io::Result<(Vec<UdpSocket>, SocketAddr)> {
    let group = copies > 1;
    if group && address.port() != 0 {
        // SO_REUSEPORT would let this process join a group that another turnd (same
        // user) already holds, and silently share its clients: an exclusive bind
        // first turns that into "address in use".
        drop(bind_udp_socket(address, false)?);
    }
    let first = bind_udp_socket(address, group)?;
    let local = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..copies {
        sockets.push(bind_udp_socket(local, true)?);
    }
    Ok((sockets, local))
}

/// Binds a TCP listener (IPv6 sockets are IPv6-only, so `[::]` and `0.0.0.0` can
/// both be configured on one port).
pub fn bind_tcp_listener(address: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM.cloexec(), Some(Protocol::TCP))?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SockAddr::from(address))?;
    socket.listen(1024)?;
    tokio::net::TcpListener::from_std(socket.into())
}

fn bind_udp_socket(address: SocketAddr, reuse_port: bool) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(address), Type::DGRAM.cloexec(), Some(Protocol::UDP))?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&SockAddr::from(address))?;
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = socket.set_recv_buffer_size(LISTENER_BUFFER);
    let _ = socket.set_send_buffer_size(LISTENER_BUFFER);
    Ok(socket.into())
}

/// quinn-udp turns on GRO and path-MTU probing (DF) for QUIC. A TURN listener keeps GRO
/// only with `[relay] udp-offload` (the receive loop splits a coalesced run back into
/// datagrams by its stride), and never wants DF: relayed media should fragment rather
/// than vanish on a small-MTU path, as it would through any other relay.
fn disable_pmtud(socket: &UdpSocket, gro: bool) {
    for (level, name, value) in [
        (libc::SOL_UDP, libc::UDP_GRO, i32::from(gro)),
        (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, libc::IP_PMTUDISC_DONT),
        (libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER, libc::IPV6_PMTUDISC_DONT),
    ] {
        // Each may fail on a socket of the other family; that is fine.
        let _ = sockopt::set_int(socket.as_fd(), level, name, value);
    }
}

/// quinn-udp also asks for the TOS / traffic class of every datagram (for ECN) and for
/// its destination address (IP_PKTINFO), each a control message the kernel writes per
/// datagram received (`put_cmsg` and its checks were about 4% of turnd's CPU per
/// Binding). turnd reads neither ECN nor, on a listener bound to one address, the
/// destination, which can then only be that address: both are turned off. A wildcard
/// listener keeps PKTINFO, to answer from the address the client sent to.
fn drop_unused_control_messages(socket: &UdpSocket, local: SocketAddr) {
    let mut options = vec![(libc::IPPROTO_IP, libc::IP_RECVTOS), (libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS)];
    if !local.ip().is_unspecified() {
        options.extend([(libc::IPPROTO_IP, libc::IP_PKTINFO), (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)]);
    }
    for (level, name) in options {
        // Each may fail on a socket of the other family; that is fine.
        let _ = sockopt::set_int(socket.as_fd(), level, name, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listeners(addresses: &[&str]) -> UdpListeners {
        let sockets = addresses
            .iter()
            .map(|a| (bind_udp_listener(a.parse().unwrap(), 1).unwrap().0.remove(0), TenantId::DEFAULT))
            .collect();
        UdpListeners::new(sockets).unwrap().0
    }

    fn has_ipv6() -> bool {
        UdpSocket::bind("[::1]:0").is_ok()
    }

    #[test]
    fn replies_leave_through_a_socket_of_the_clients_family() {
        if !has_ipv6() {
            return;
        }
        // Wildcards of both families on one port, as in the embedded default.
        let v4 = bind_udp_listener("0.0.0.0:0".parse().unwrap(), 1).unwrap();
        let v6 = bind_udp_listener(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), v4.1.port()), 1);
        let Ok(v6) = v6 else {
            return; // the port is taken for IPv6 by someone else; nothing to learn
        };
        let port = v4.1.port();
        let (set, keys) = UdpListeners::new(vec![
            (v4.0.into_iter().next().unwrap(), TenantId::DEFAULT),
            (v6.0.into_iter().next().unwrap(), TenantId::DEFAULT),
        ])
        .unwrap();
        for server in [format!("[::1]:{port}"), format!("[fd00::2]:{port}")] {
            let via = set.reply_via(server.parse().unwrap()).unwrap();
            assert!(via.local.is_ipv6(), "{server} answered through {}", via.local);
        }
        for server in [format!("127.0.0.1:{port}"), format!("192.0.2.2:{port}")] {
            let via = set.reply_via(server.parse().unwrap()).unwrap();
            assert!(via.local.is_ipv4(), "{server} answered through {}", via.local);
        }
        // Each key names the socket it was made for.
        for (key, fd) in keys {
            assert_eq!(set.get(key).unwrap().socket.as_raw_fd(), fd);
        }
    }

    #[test]
    fn an_exact_listener_wins_over_the_wildcard_and_other_ports_find_none() {
        let set = listeners(&["127.0.0.1:0", "0.0.0.0:0"]);
        let exact = set.by_family[0][0].local;
        assert_eq!(set.reply_via(exact).unwrap().local, exact);
        let wildcard_port = set.by_family[0][1].local.port();
        let via = set.reply_via(SocketAddr::new(Ipv4Addr::new(127, 0, 0, 2).into(), wildcard_port)).unwrap();
        assert!(via.local.ip().is_unspecified());
        assert!(set.reply_via("127.0.0.1:1".parse().unwrap()).is_none());
    }
}
