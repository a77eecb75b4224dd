//! PROXY protocol headers, versions 1 (text) and 2 (binary), as HAProxy's
//! `send-proxy` and `send-proxy-v2` write them in front of a TCP connection
//! (haproxy.org/download/2.6/doc/proxy-protocol.txt).
//!
//! Read straight from the socket, never past the header: what follows it (a STUN
//! message, or a TLS ClientHello on a `tls` listener) stays in the socket for the
//! connection. Every read is bounded: a v1 line is at most [`V1_MAX`] bytes, a v2
//! header 16 bytes plus at most [`V2_MAX_PAYLOAD`] of addresses and TLVs. The caller
//! bounds the time.
//!
//! Hand-written rather than the `ppp` crate: what turnd takes is small (TCP over IPv4
//! or IPv6, and v2 LOCAL), reading must stop exactly at the header's end (ppp parses
//! a buffer, so the byte-exact reads would still be ours), and it keeps the tree lean.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The longest v1 header, CRLF included (the specification's bound).
pub const V1_MAX: usize = 107;
/// The most address and TLV bytes taken after a v2 header's 16 fixed bytes (an
/// IPv6 address block is 36; the rest is room for a proxy's TLVs, which are skipped).
pub const V2_MAX_PAYLOAD: usize = 1024;
/// The v2 signature.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// What a v1 header starts with.
const V1_PREFIX: &[u8] = b"PROXY ";
/// The shortest v1 header (`PROXY UNKNOWN\r\n`): read first, so that no header is
/// read past, whichever version it is.
const V1_MIN: usize = 15;

/// What a header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// Relayed for a client: its address, and the address it connected to.
    Proxied {
        /// The real client.
        source: SocketAddr,
        /// Where the client connected (the proxy's frontend).
        destination: SocketAddr,
    },
    /// v2 LOCAL: the proxy's own connection (a health check); the connection's
    /// peer address stands.
    Local,
}

/// Why a header was refused (the connection is then closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The connection does not start with either signature.
    #[error("no PROXY protocol header")]
    Missing,
    /// The connection ended or failed before the header was complete.
    #[error("connection ended inside the PROXY protocol header")]
    Truncated,
    /// Longer than the bounds above.
    #[error("PROXY protocol header too long")]
    TooLong,
    /// Not well formed.
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
    /// Well formed, but names no TCP client turnd can serve (UNKNOWN, AF_UNSPEC,
    /// AF_UNIX, a datagram transport).
    #[error("PROXY protocol header without a TCP client address: {0}")]
    Unsupported(&'static str),
}

/// Reads one header (v1 or v2) from `reader`, and not a byte more.
pub async fn read_header<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Header, HeaderError> {
    let mut start = [0u8; 16];
    // Read in as many pieces as the peer sends them, giving up at the first byte
    // that fits neither signature (a plain client's STUN or TLS).
    let mut have = 0;
    while have < V1_MIN {
        let n = reader.read(&mut start[have..V1_MIN]).await.map_err(|_| HeaderError::Truncated)?;
        if n == 0 {
            return Err(HeaderError::Truncated);
        }
        have += n;
        let seen = &start[..have];
        let v1 = V1_PREFIX.starts_with(&seen[..have.min(V1_PREFIX.len())]);
        let v2 = V2_SIGNATURE.starts_with(&seen[..have.min(V2_SIGNATURE.len())]);
        if !v1 && !v2 {
            return Err(HeaderError::Missing);
        }
    }
    if start[..V2_SIGNATURE.len()] == V2_SIGNATURE {
        reader.read_exact(&mut start[V1_MIN..16]).await.map_err(|_| HeaderError::Truncated)?;
        read_v2(reader, &start).await
    } else {
        read_v1(reader, &start[..V1_MIN]).await
    }
}

/// The rest of a v1 line, a byte at a time (it ends with CRLF, and nothing after it
/// may be consumed); at most [`V1_MAX`] bytes in all.
async fn read_v1<R: AsyncRead + Unpin>(reader: &mut R, start: &[u8]) -> Result<Header, HeaderError> {
    let mut line = [0u8; V1_MAX];
    line[..start.len()].copy_from_slice(start);
    let mut len = start.len();
    while !line[..len].ends_with(b"\r\n") {
        if len == V1_MAX {
            return Err(HeaderError::TooLong);
        }
        reader.read_exact(&mut line[len..len + 1]).await.map_err(|_| HeaderError::Truncated)?;
        len += 1;
    }
    parse_v1(&line[..len])
}

/// Parses a whole v1 line, CRLF included.
pub fn parse_v1(line: &[u8]) -> Result<Header, HeaderError> {
    let body = line
        .strip_prefix(V1_PREFIX)
        .and_then(|rest| rest.strip_suffix(b"\r\n"))
        .ok_or(HeaderError::Malformed("v1 line"))?;
    let body = std::str::from_utf8(body).map_err(|_| HeaderError::Malformed("v1 is not ASCII"))?;
    if body.contains(['\r', '\n']) {
        return Err(HeaderError::Malformed("v1 line break"));
    }
    let mut fields = body.split(' ');
    let protocol = fields.next().unwrap_or_default();
    let v6 = match protocol {
        "TCP4" => false,
        "TCP6" => true,
        "UNKNOWN" => return Err(HeaderError::Unsupported("v1 UNKNOWN")),
        _ => return Err(HeaderError::Malformed("v1 protocol")),
    };
    let (Some(source), Some(destination), Some(source_port), Some(destination_port), None) =
        (fields.next(), fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(HeaderError::Malformed("v1 field count"));
    };
    let address = |text: &str| -> Result<IpAddr, HeaderError> {
        let ip = if v6 { text.parse::<Ipv6Addr>().map(IpAddr::V6) } else { text.parse::<Ipv4Addr>().map(IpAddr::V4) };
        ip.map_err(|_| HeaderError::Malformed("v1 address"))
    };
    let port = |text: &str| -> Result<u16, HeaderError> {
        // Decimal digits only (no sign, no spaces), as the specification writes them.
        if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(HeaderError::Malformed("v1 port"));
        }
        text.parse().map_err(|_| HeaderError::Malformed("v1 port"))
    };
    let source = SocketAddr::new(address(source)?, port(source_port)?);
    let destination = SocketAddr::new(address(destination)?, port(destination_port)?);
    proxied(source, destination)
}

/// The rest of a v2 header after its 16 fixed bytes.
async fn read_v2<R: AsyncRead + Unpin>(reader: &mut R, fixed: &[u8; 16]) -> Result<Header, HeaderError> {
    let length = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if length > V2_MAX_PAYLOAD {
        return Err(HeaderError::TooLong);
    }
    let mut payload = vec![0u8; length];
    reader.read_exact(&mut payload).await.map_err(|_| HeaderError::Truncated)?;
    parse_v2(fixed, &payload)
}

/// Parses a v2 header: its 16 fixed bytes and the `length` bytes that follow.
pub fn parse_v2(fixed: &[u8; 16], payload: &[u8]) -> Result<Header, HeaderError> {
    if fixed[..12] != V2_SIGNATURE {
        return Err(HeaderError::Missing);
    }
    if usize::from(u16::from_be_bytes([fixed[14], fixed[15]])) != payload.len() {
        return Err(HeaderError::Malformed("v2 length"));
    }
    if fixed[12] >> 4 != 2 {
        return Err(HeaderError::Malformed("v2 version"));
    }
    match fixed[12] & 0x0f {
        // LOCAL: whatever follows (an address block, TLVs) is skipped.
        0 => return Ok(Header::Local),
        1 => {}
        _ => return Err(HeaderError::Malformed("v2 command")),
    }
    let (family, transport) = (fixed[13] >> 4, fixed[13] & 0x0f);
    match family {
        1 | 2 => {}
        0 => return Err(HeaderError::Unsupported("v2 AF_UNSPEC")),
        3 => return Err(HeaderError::Unsupported("v2 AF_UNIX")),
        _ => return Err(HeaderError::Malformed("v2 family")),
    }
    match transport {
        1 => {}
        0 | 2 => return Err(HeaderError::Unsupported("v2 not a stream")),
        _ => return Err(HeaderError::Malformed("v2 transport")),
    }
    // TLVs after the address block are skipped.
    let (source, destination) = if family == 1 {
        let block: &[u8; 12] =
            payload.get(..12).and_then(|b| b.try_into().ok()).ok_or(HeaderError::Malformed("v2 short IPv4 block"))?;
        let ip = |at: usize| IpAddr::V4(Ipv4Addr::new(block[at], block[at + 1], block[at + 2], block[at + 3]));
        let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
        (SocketAddr::new(ip(0), port(8)), SocketAddr::new(ip(4), port(10)))
    } else {
        let block: &[u8; 36] =
            payload.get(..36).and_then(|b| b.try_into().ok()).ok_or(HeaderError::Malformed("v2 short IPv6 block"))?;
        let ip = |at: usize| {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&block[at..at + 16]);
            IpAddr::V6(Ipv6Addr::from(octets))
        };
        let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
        (SocketAddr::new(ip(0), port(32)), SocketAddr::new(ip(16), port(34)))
    };
    proxied(source, destination)
}

/// A proxied connection's addresses, IPv4-mapped IPv6 ones as IPv4 (as the client
/// connected to the proxy over IPv4). A client no TCP connection can come from
/// (unspecified or multicast address, port 0) is refused.
fn proxied(source: SocketAddr, destination: SocketAddr) -> Result<Header, HeaderError> {
    let canonical = |a: SocketAddr| SocketAddr::new(crate::turn::policy::canonical(a.ip()), a.port());
    let (source, destination) = (canonical(source), canonical(destination));
    if source.port() == 0 || source.ip().is_unspecified() || source.ip().is_multicast() {
        return Err(HeaderError::Malformed("source address"));
    }
    Ok(Header::Proxied { source, destination })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn run<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(future)
    }

    /// Reads a header from `bytes` and returns it with what is left in the stream.
    fn read(bytes: &[u8]) -> (Result<Header, HeaderError>, Vec<u8>) {
        run(async {
            let (mut tx, mut rx) = tokio::io::duplex(4096);
            tx.write_all(bytes).await.unwrap();
            drop(tx);
            let header = read_header(&mut rx).await;
            let mut rest = Vec::new();
            rx.read_to_end(&mut rest).await.unwrap();
            (header, rest)
        })
    }

    fn v2(command: u8, family: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_tcp4_and_tcp6_stop_at_the_header() {
        let (header, rest) = read(b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 3478\r\nSTUN");
        assert_eq!(
            header,
            Ok(Header::Proxied { source: addr("192.0.2.7:40000"), destination: addr("198.51.100.1:3478") })
        );
        assert_eq!(rest, b"STUN");
        let (header, rest) = read(b"PROXY TCP6 2001:db8::7 2001:db8::1 65535 443\r\n\x16\x03\x01");
        assert_eq!(
            header,
            Ok(Header::Proxied { source: addr("[2001:db8::7]:65535"), destination: addr("[2001:db8::1]:443") })
        );
        assert_eq!(rest, b"\x16\x03\x01");
    }

    #[test]
    fn v1_bad_lines_are_refused() {
        for (line, expected) in [
            (&b"PROXY UNKNOWN\r\n"[..], HeaderError::Unsupported("v1 UNKNOWN")),
            (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", HeaderError::Unsupported("v1 UNKNOWN")),
            (b"PROXY TCP4 192.0.2.7 198.51.100.1 40000\r\n", HeaderError::Malformed("v1 field count")),
            (b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 3478 9\r\n", HeaderError::Malformed("v1 field count")),
            (b"PROXY TCP4  192.0.2.7 198.51.100.1 40000 3478\r\n", HeaderError::Malformed("v1 field count")),
            (b"PROXY TCP4 2001:db8::7 198.51.100.1 40000 3478\r\n", HeaderError::Malformed("v1 address")),
            (b"PROXY TCP6 192.0.2.7 2001:db8::1 40000 3478\r\n", HeaderError::Malformed("v1 address")),
            (b"PROXY TCP4 192.0.2.7 198.51.100.1 70000 3478\r\n", HeaderError::Malformed("v1 port")),
            (b"PROXY TCP4 192.0.2.7 198.51.100.1 +4000 3478\r\n", HeaderError::Malformed("v1 port")),
            (b"PROXY TCP4 192.0.2.7 198.51.100.1 0 3478\r\n", HeaderError::Malformed("source address")),
            (b"PROXY TCP4 0.0.0.0 198.51.100.1 40000 3478\r\n", HeaderError::Malformed("source address")),
            (b"PROXY UDP4 192.0.2.7 198.51.100.1 40000 3478\r\n", HeaderError::Malformed("v1 protocol")),
            (b"PROXY TCP4 192.0.2.7\n198.51.100.1 40000 3478\r\n", HeaderError::Malformed("v1 line break")),
            (b"PROXY TCP4 192.0.2.\xff 198.51.100.1 1 2\r\n", HeaderError::Malformed("v1 is not ASCII")),
        ] {
            assert_eq!(read(line).0, Err(expected), "{}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn v1_is_bounded_and_truncation_is_noticed() {
        let mut long = b"PROXY TCP6 ".to_vec();
        long.resize(200, b'1');
        let (header, rest) = read(&long);
        assert_eq!(header, Err(HeaderError::TooLong));
        assert_eq!(rest.len(), 200 - V1_MAX, "nothing read past the bound");
        // The longest TCP header (104 bytes; the 107 of the bound is for UNKNOWN).
        let longest = format!("PROXY TCP6 {0} {0} 65535 65535\r\n", "2001:0db8:ffff:ffff:ffff:ffff:ffff:fffe");
        assert_eq!(longest.len(), 104);
        assert!(matches!(read(longest.as_bytes()).0, Ok(Header::Proxied { .. })));
        let unknown = format!("PROXY UNKNOWN {0} {0} 65535 65535\r\n", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
        assert_eq!(unknown.len(), V1_MAX);
        assert_eq!(read(unknown.as_bytes()).0, Err(HeaderError::Unsupported("v1 UNKNOWN")));
        assert_eq!(read(b"PROXY TCP4 192.0.2.7 19").0, Err(HeaderError::Truncated));
        assert_eq!(read(b"PROX").0, Err(HeaderError::Truncated));
        assert_eq!(read(b"").0, Err(HeaderError::Truncated));
    }

    #[test]
    fn a_plain_client_is_refused_at_its_first_byte() {
        // A STUN Binding (type 0x0001) and a TLS ClientHello (0x16): no header.
        assert_eq!(read(&[0x00, 0x01, 0x00, 0x00, 0x21, 0x12]).0, Err(HeaderError::Missing));
        assert_eq!(read(&[0x16, 0x03, 0x01]).0, Err(HeaderError::Missing));
        assert_eq!(read(b"PROXZ TCP4 1.2.3.4 1.2.3.4 1 1\r\n").0, Err(HeaderError::Missing));
        assert_eq!(read(b"GET / HTTP/1.1\r\n\r\n").0, Err(HeaderError::Missing));
        run(async {
            // Refused without waiting for more bytes than the one that differs.
            let (mut tx, mut rx) = tokio::io::duplex(64);
            tx.write_all(b"\x16").await.unwrap();
            assert_eq!(read_header(&mut rx).await, Err(HeaderError::Missing));
        });
    }

    #[test]
    fn v2_ipv4_and_ipv6_with_tlvs_skipped() {
        let mut block = vec![192, 0, 2, 7, 198, 51, 100, 1, 0x9c, 0x40, 0x0d, 0x96];
        // Two TLVs (ALPN, a NOOP) after the addresses.
        block.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2', 0x04, 0x00, 0x00]);
        let mut bytes = v2(1, 0x11, &block);
        bytes.extend_from_slice(b"after");
        let (header, rest) = read(&bytes);
        assert_eq!(
            header,
            Ok(Header::Proxied { source: addr("192.0.2.7:40000"), destination: addr("198.51.100.1:3478") })
        );
        assert_eq!(rest, b"after");

        let src: Ipv6Addr = "2001:db8::7".parse().unwrap();
        let dst: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let mut block = src.octets().to_vec();
        block.extend_from_slice(&dst.octets());
        block.extend_from_slice(&[0x9c, 0x40, 0x01, 0xbb]);
        let (header, _) = read(&v2(1, 0x21, &block));
        assert_eq!(
            header,
            Ok(Header::Proxied { source: addr("[2001:db8::7]:40000"), destination: addr("[2001:db8::1]:443") })
        );

        // An IPv4-mapped client is an IPv4 client.
        let mapped: Ipv6Addr = "::ffff:192.0.2.9".parse().unwrap();
        let mut block = mapped.octets().to_vec();
        block.extend_from_slice(&dst.octets());
        block.extend_from_slice(&[0x9c, 0x40, 0x01, 0xbb]);
        assert!(
            matches!(read(&v2(1, 0x21, &block)).0, Ok(Header::Proxied { source, .. }) if source == addr("192.0.2.9:40000"))
        );
    }

    #[test]
    fn v2_local_keeps_the_peer_and_skips_its_payload() {
        let (header, rest) = read(&[v2(0, 0x00, &[]), b"x".to_vec()].concat());
        assert_eq!((header, rest), (Ok(Header::Local), b"x".to_vec()));
        let (header, rest) = read(&[v2(0, 0x11, &[0; 12]), b"y".to_vec()].concat());
        assert_eq!((header, rest), (Ok(Header::Local), b"y".to_vec()));
    }

    #[test]
    fn v2_bad_headers_are_refused() {
        let ipv4 = [192, 0, 2, 7, 198, 51, 100, 1, 0x9c, 0x40, 0x0d, 0x96];
        assert_eq!(read(&v2(1, 0x31, &[0; 216])).0, Err(HeaderError::Unsupported("v2 AF_UNIX")));
        assert_eq!(read(&v2(1, 0x00, &[])).0, Err(HeaderError::Unsupported("v2 AF_UNSPEC")));
        assert_eq!(read(&v2(1, 0x12, &ipv4)).0, Err(HeaderError::Unsupported("v2 not a stream")));
        assert_eq!(read(&v2(1, 0x41, &ipv4)).0, Err(HeaderError::Malformed("v2 family")));
        assert_eq!(read(&v2(2, 0x11, &ipv4)).0, Err(HeaderError::Malformed("v2 command")));
        assert_eq!(read(&v2(1, 0x11, &ipv4[..8])).0, Err(HeaderError::Malformed("v2 short IPv4 block")));
        assert_eq!(read(&v2(1, 0x21, &ipv4)).0, Err(HeaderError::Malformed("v2 short IPv6 block")));
        let mut version = v2(1, 0x11, &ipv4);
        version[12] = 0x11;
        assert_eq!(read(&version).0, Err(HeaderError::Malformed("v2 version")));
        // Too long: refused from the length alone, nothing more read.
        let mut long = v2(1, 0x11, &[]);
        long[14..16].copy_from_slice(&5000u16.to_be_bytes());
        long.extend_from_slice(&[0; 64]);
        let (header, rest) = read(&long);
        assert_eq!((header, rest.len()), (Err(HeaderError::TooLong), 64));
        // Truncated, in the fixed part and in the payload.
        assert_eq!(read(&v2(1, 0x11, &ipv4)[..15]).0, Err(HeaderError::Truncated));
        let cut = v2(1, 0x11, &ipv4);
        assert_eq!(read(&cut[..cut.len() - 1]).0, Err(HeaderError::Truncated));
    }
}
