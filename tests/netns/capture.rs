//! A packet capture in a namespace, for tests that show what went on the wire:
//! tcpdump (Debian's `tcpdump`) writes pcap to a pipe, and [`Capture::finish`] returns
//! the UDP datagrams it saw. Only what these tests capture is parsed: Ethernet
//! (veth), IPv4, UDP; anything else is skipped.

use super::Netns;
use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

/// pcap's link type for Ethernet frames.
const LINKTYPE_ETHERNET: u32 = 1;

/// One UDP datagram from the capture.
#[derive(Debug, Clone)]
pub struct Datagram {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub payload: Vec<u8>,
}

/// A running tcpdump; killed on drop if [`Capture::finish`] was not called.
pub struct Capture {
    child: Child,
    pcap: Option<JoinHandle<Vec<u8>>>,
}

impl Capture {
    /// Starts tcpdump on `interface` inside `ns` with a pcap `filter` and waits until it
    /// listens (it says so on stderr).
    pub fn start(ns: &Netns, interface: &str, filter: &str) -> Capture {
        // `ip netns exec` execs tcpdump, so the child's pid is tcpdump's own.
        // --immediate-mode: without it libpcap hands packets over a block at a time
        // (up to a second late), and a capture stopped sooner returns nothing.
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns.name(),
                "tcpdump",
                "--immediate-mode",
                "-i",
                interface,
                "-n",
                "-U",
                "-s",
                "0",
                "-Z",
                "root",
            ])
            .args(["-w", "-", filter])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tcpdump");
        let mut stdout = child.stdout.take().expect("piped stdout");
        let pcap = std::thread::spawn(move || {
            let mut all = Vec::new();
            let _ = stdout.read_to_end(&mut all);
            all
        });
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut said = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(line) if line.contains("listening on") => break,
                Ok(line) => said.push(line),
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("tcpdump on {interface} did not start: {}", said.join("\n"));
                }
            }
        }
        Capture { child, pcap: Some(pcap) }
    }

    /// Stops tcpdump (it flushes on SIGTERM) and returns the UDP datagrams it saw.
    pub fn finish(mut self) -> Vec<Datagram> {
        // SAFETY: kill takes no pointers; the pid is the tcpdump this capture started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let bytes = self.pcap.take().and_then(|h| h.join().ok()).unwrap_or_default();
        udp_datagrams(&bytes)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if self.pcap.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn u16_be(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// The UDP datagrams in a pcap file of Ethernet frames (either byte order).
pub fn udp_datagrams(pcap: &[u8]) -> Vec<Datagram> {
    let Some(magic) = pcap.get(0..4) else { return Vec::new() };
    let little = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => return Vec::new(),
    };
    let u32_at = |at: usize| -> Option<u32> {
        let b: [u8; 4] = pcap.get(at..at + 4)?.try_into().ok()?;
        Some(if little { u32::from_le_bytes(b) } else { u32::from_be_bytes(b) })
    };
    if u32_at(20) != Some(LINKTYPE_ETHERNET) {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut at = 24;
    while let Some(captured) = u32_at(at + 8) {
        let start = at + 16;
        let Some(frame) = pcap.get(start..start + captured as usize) else { break };
        if let Some(d) = udp_in_frame(frame) {
            out.push(d);
        }
        at = start + captured as usize;
    }
    out
}

fn udp_in_frame(frame: &[u8]) -> Option<Datagram> {
    if u16_be(frame, 12)? != 0x0800 {
        return None;
    }
    let ip = frame.get(14..)?;
    let header = usize::from(ip.first()? & 0x0f) * 4;
    if ip.first()? >> 4 != 4 || *ip.get(9)? != 17 {
        return None;
    }
    let addr = |at: usize| -> Option<Ipv4Addr> { Some(Ipv4Addr::from(<[u8; 4]>::try_from(ip.get(at..at + 4)?).ok()?)) };
    let (src_ip, dst_ip) = (addr(12)?, addr(16)?);
    let udp = ip.get(header..)?;
    let length = usize::from(u16_be(udp, 4)?);
    Some(Datagram {
        src: SocketAddrV4::new(src_ip, u16_be(udp, 0)?),
        dst: SocketAddrV4::new(dst_ip, u16_be(udp, 2)?),
        payload: udp.get(8..length)?.to_vec(),
    })
}
