//! The floor: a forwarder that does nothing but move datagrams between the same kinds
//! of sockets a TURN server uses (one client-facing socket, one relay socket per
//! client), with `recvmmsg`/`sendmmsg` batching wherever one socket has several
//! datagrams. It strips `header` bytes of framing towards the peer and writes a
//! ChannelData (4) or Data indication (36) header back towards the client. It checks
//! nothing: no permissions, no integrity, no allocation lifetimes.
//!
//! Run by the bench as `<bench> --forwarder PEER HEADER BIND`; prints `listening on ADDR`.

use crate::udp::{self, RecvBatch, SendBatch};
use std::collections::HashMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use turnd::client::{write_indication_header, INDICATION_HEADER_V4};
use turnd::stun::raw::TYPE_DATA_INDICATION;

/// Datagrams per recvmmsg/sendmmsg call.
const BATCH: usize = 32;
/// Reads per socket per wake-up before others get a turn (as turnd does).
const READS_PER_WAKE: usize = 16;
/// The epoll token of the client-facing socket.
const LISTENER: u64 = u64::MAX;

struct Relay {
    socket: UdpSocket,
    client: SocketAddrV4,
}

/// Runs until killed (the bench stops it; PR_SET_PDEATHSIG covers a crashed bench).
pub fn main(peer: SocketAddrV4, header: usize, bind: Ipv4Addr) -> std::io::Result<()> {
    let listener = udp::bind(SocketAddrV4::new(bind, 0))?;
    let local = udp::local_v4(&listener)?;
    // SAFETY: epoll_create1 takes no pointers.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epoll < 0 {
        return Err(std::io::Error::last_os_error());
    }
    add(epoll, listener.as_raw_fd(), LISTENER)?;
    println!("listening on {local}");
    std::io::stdout().flush()?;

    let mut relays: Vec<Relay> = Vec::new();
    let mut by_client: HashMap<SocketAddrV4, usize> = HashMap::new();
    let mut inbox = RecvBatch::new(BATCH, INDICATION_HEADER_V4);
    let mut to_clients = SendBatch::new(BATCH);
    let peer_raw = udp::sockaddr(peer);
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    loop {
        // SAFETY: `events` is a valid buffer of `events.len()` entries.
        let n = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), events.len() as i32, 1000) };
        for e in events.iter().take(n.max(0) as usize) {
            let token = e.u64;
            if token == LISTENER {
                for _ in 0..READS_PER_WAKE {
                    let got = inbox.recv(listener.as_raw_fd());
                    for j in 0..got {
                        let (bytes, from) = inbox.get(j);
                        let i = match by_client.get(&from) {
                            Some(&i) => i,
                            None => {
                                let socket = udp::bind(SocketAddrV4::new(bind, 0))?;
                                add(epoll, socket.as_raw_fd(), relays.len() as u64)?;
                                relays.push(Relay { socket, client: from });
                                by_client.insert(from, relays.len() - 1);
                                relays.len() - 1
                            }
                        };
                        let Some(payload) = bytes.get(header..) else { continue };
                        // SAFETY: sendto with a valid buffer and sockaddr_in.
                        unsafe {
                            libc::sendto(
                                relays[i].socket.as_raw_fd(),
                                payload.as_ptr().cast(),
                                payload.len(),
                                0,
                                (&peer_raw as *const libc::sockaddr_in).cast(),
                                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                            )
                        };
                    }
                    if got < BATCH {
                        break;
                    }
                }
            } else if let Some(relay) = relays.get(token as usize) {
                for _ in 0..READS_PER_WAKE {
                    let got = inbox.recv(relay.socket.as_raw_fd());
                    for j in 0..got {
                        let (slot, len, from) = inbox.slot_mut(j);
                        let start = INDICATION_HEADER_V4 - header;
                        if header == 4 {
                            slot[start..start + 2].copy_from_slice(&crate::sessions::CHANNEL.to_be_bytes());
                            slot[start + 2..start + 4].copy_from_slice(&(len as u16).to_be_bytes());
                        } else {
                            write_indication_header(slot, TYPE_DATA_INDICATION, &[7; 12], SocketAddr::V4(from), len);
                        }
                        let framed = &slot[start..INDICATION_HEADER_V4 + len];
                        if to_clients.is_full() {
                            to_clients.flush(listener.as_raw_fd());
                        }
                        to_clients.push(relay.client, None, |buf| {
                            buf[..framed.len()].copy_from_slice(framed);
                            framed.len()
                        });
                    }
                    if got < BATCH {
                        break;
                    }
                }
            }
        }
        to_clients.flush(listener.as_raw_fd());
    }
}

fn add(epoll: i32, fd: i32, token: u64) -> std::io::Result<()> {
    let mut event = libc::epoll_event { events: libc::EPOLLIN as u32, u64: token };
    // SAFETY: a valid epoll_event for the duration of the call.
    if unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut event) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
