//! Every `unsafe` line of turnd, behind safe functions: the system calls that neither
//! std, `socket2` nor `quinn-udp` offer (epoll, batched sends and receives with their
//! control messages, the socket error queue, getifaddrs, resource limits, signals),
//! and the CPU's prefetch hint.
//! The rest of the crate is built with `unsafe_code` denied (Cargo.toml `[lints]`),
//! and each block here says in a `SAFETY:` comment why it holds.
//!
//! A file descriptor is taken as a plain [`RawFd`](std::os::fd::RawFd) where the
//! caller keeps the socket: a system call on a descriptor that is not open fails
//! (EBADF) rather than touching memory, so that is not what the safety rests on; the
//! pointers handed to the kernel are, and they never leave these functions.

#![allow(unsafe_code)]

pub mod epoll;
pub mod fdpass;
pub mod interfaces;
pub mod mmsg;
pub mod prefetch;
pub mod process;
pub mod sockaddr;
pub mod sockopt;
#[cfg(feature = "xdp")]
pub mod xdp;
