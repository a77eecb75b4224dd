//! The tokio shell around the sans-IO core: sockets, timers and signals. One event loop
//! ([`EventLoop`], in `event_loop`) owns one [`crate::turn::Server`]; every socket it
//! serves (client listeners and relay sockets) sits in one level-triggered epoll set
//! that tokio watches as a single descriptor. A process runs one event loop per worker
//! thread ([`workers`]).
//!
//! TCP and TLS connections are accepted, admitted and (for TLS) handshaken by tasks on
//! the main runtime ([`stream`]); once a connection's first message has chosen its
//! worker, the task hands the connection itself over and that worker's loop serves it
//! from its epoll set like any other socket (`stream_conn`): reads, the core and
//! writes on one thread, no channel per message.
//!
//! The loop's paths, one file each: `udp` (client datagrams and relay sockets),
//! `stream_conn` (the TCP/TLS connections it serves), `stream_events` (what TCP/TLS
//! connection tasks report), `rfc6062` (TCP allocations),
//! `control` (admin commands and snapshots), `output` (carrying out what the core asks
//! for) and `log` (the log lines of core events). `token` is the epoll token format.

mod admission;
pub mod client_hello;
mod control;
mod event_loop;
pub mod external;
pub mod handover;
mod ledger;
mod listeners;
mod log;
mod outbox;
mod output;
pub mod passthrough;
pub mod proxy;
pub mod relay_socket;
pub mod report;
mod rfc6062;
pub mod route;
pub mod stream;
mod stream_channel;
mod stream_conn;
mod stream_events;
mod stream_splice;
mod tcp_relay;
pub mod tls;
mod tls_write;
mod token;
mod udp;
pub mod upgrade;
pub mod webhook;
pub mod workers;
pub mod xdp;

/// The host's own addresses (moved to [`crate::sys`]; the path stays for callers).
pub use crate::sys::interfaces;
pub use event_loop::{EventLoop, PUBLISH_EVERY};
pub use listeners::{bind_tcp_listener, bind_udp_listener};
pub use outbox::gso_refusals as outbox_gso_refusals;
pub use report::{Control, Publisher, Snapshot};
pub use udp::set_offload as set_udp_offload;
pub use workers::Workers;
