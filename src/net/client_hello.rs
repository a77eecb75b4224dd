//! A bounded reader of a TLS ClientHello: what a passthrough listener
//! ([`super::passthrough`]) needs to decide, before any TLS is terminated, whether a
//! connection is TURN or belongs to the HTTPS backend: the SNI host name (RFC 6066 §3)
//! and the ALPN protocol ids (RFC 7301 §3.1).
//!
//! It parses the bytes read so far and says whether more are needed; the caller keeps
//! the bytes and replays them to whichever side gets the connection. Everything a
//! client controls is bounded: the records buffered ([`MAX_HELLO_BYTES`]), the
//! handshake message, each length field (checked against what is left, never trusted
//! for an allocation). Any malformed or unexpected input is an error, never a panic
//! (`tests` below feeds it truncations and random bytes).
//!
//! Hand-written rather than rustls' `Acceptor`: that one consumes the bytes and leaves
//! no raw ClientHello to forward to a backend that must terminate TLS itself.

/// The most bytes of TLS records read before the ClientHello must be whole. A real
/// ClientHello is 200 bytes to about 2 KB (a browser's with a post-quantum key share);
/// one full record (16 KB) plus its header leaves room for anything legitimate.
pub const MAX_HELLO_BYTES: usize = 16 * 1024 + 5;
/// The largest TLS plaintext record (RFC 8446 §5.1).
const MAX_RECORD: usize = 16 * 1024;
/// Record content type: handshake.
const HANDSHAKE: u8 = 22;
/// Handshake message type: client_hello.
const CLIENT_HELLO: u8 = 1;
/// Extension: server_name (RFC 6066).
const EXT_SERVER_NAME: u16 = 0;
/// Extension: application_layer_protocol_negotiation (RFC 7301).
const EXT_ALPN: u16 = 16;
/// The longest DNS name.
const MAX_HOST_NAME: usize = 253;

/// What a ClientHello says about where the connection is going.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hello {
    /// The SNI host name, lower-cased, without a trailing dot; `None` when the client
    /// sent none (it connected to an IP address, or does not send SNI).
    pub server_name: Option<String>,
    /// The ALPN ids offered, in the client's order; `None` when it sent no ALPN
    /// extension (browsers' `turns:`, older TURN clients).
    pub alpn: Option<Vec<Vec<u8>>>,
}

/// The outcome of parsing the bytes read so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// The ClientHello is not whole yet: read more (at most up to [`MAX_HELLO_BYTES`]).
    NeedMore,
    /// A whole, well-formed ClientHello.
    Hello(Hello),
}

/// Why the bytes are not a ClientHello turnd will route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// Not a TLS handshake record (plain STUN, HTTP, SSL 2, garbage).
    #[error("not a TLS handshake record")]
    NotTls,
    /// A TLS record, but its first handshake message is not a ClientHello.
    #[error("the first handshake message is not a ClientHello")]
    NotClientHello,
    /// Longer than [`MAX_HELLO_BYTES`].
    #[error("ClientHello too long")]
    TooLong,
    /// A length or field that does not fit.
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
}

/// Parses the records in `bytes` (everything read from the connection so far).
pub fn parse(bytes: &[u8]) -> Result<Parsed, HelloError> {
    // The handshake message may span records (RFC 8446 §5.1 allows fragmenting it);
    // its fragments are joined here, within the same bound as the records.
    let mut message: Vec<u8> = Vec::new();
    let mut at = 0;
    loop {
        let Some(header) = bytes.get(at..at + 5) else {
            // Check what there is of a first header early: a client that is not TLS at
            // all is told so at once rather than after a timeout.
            if let Some(&kind) = bytes.get(at) {
                if kind != HANDSHAKE {
                    return Err(HelloError::NotTls);
                }
            }
            if let Some(&major) = bytes.get(at + 1) {
                if major != 3 {
                    return Err(HelloError::NotTls);
                }
            }
            return more(bytes);
        };
        let (kind, major, minor) = (header[0], header[1], header[2]);
        let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
        // Record versions 3.0 to 3.4 (a ClientHello's record says 3.1 for
        // compatibility, some clients 3.0 or 3.3).
        if kind != HANDSHAKE || major != 3 || minor > 4 {
            return Err(HelloError::NotTls);
        }
        if length == 0 || length > MAX_RECORD {
            return Err(HelloError::Malformed("record length"));
        }
        let Some(fragment) = bytes.get(at + 5..at + 5 + length) else {
            // The handshake header may already be in: a message that is no ClientHello
            // or cannot fit is refused now, not after the client has sent 16 KB.
            let head: Vec<u8> =
                message.iter().chain(bytes.get(at + 5..).unwrap_or_default()).take(4).copied().collect();
            message_size(&head)?;
            return more(bytes);
        };
        message.extend_from_slice(fragment);
        at += 5 + length;
        let Some(size) = message_size(&message)? else {
            continue;
        };
        if let Some(body) = message.get(4..4 + size) {
            return client_hello(body).map(Parsed::Hello);
        }
    }
}

/// The size of the handshake message starting `message`, once its 4-byte header is
/// there: it must be a ClientHello that fits the bound.
fn message_size(message: &[u8]) -> Result<Option<usize>, HelloError> {
    if let Some(&kind) = message.first() {
        if kind != CLIENT_HELLO {
            return Err(HelloError::NotClientHello);
        }
    }
    let Some(size) = message.get(1..4) else {
        return Ok(None);
    };
    let size = usize::from(size[0]) << 16 | usize::from(size[1]) << 8 | usize::from(size[2]);
    if size + 4 + 5 > MAX_HELLO_BYTES {
        return Err(HelloError::TooLong);
    }
    Ok(Some(size))
}

/// `NeedMore`, unless the bound is reached.
fn more(bytes: &[u8]) -> Result<Parsed, HelloError> {
    if bytes.len() >= MAX_HELLO_BYTES {
        Err(HelloError::TooLong)
    } else {
        Ok(Parsed::NeedMore)
    }
}

/// A cursor over a byte slice whose reads fail instead of running past the end.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], HelloError> {
        if n > self.rest.len() {
            return Err(HelloError::Malformed(what));
        }
        let (taken, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(taken)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, HelloError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, HelloError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a one-byte length prefix.
    fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], HelloError> {
        let n = self.u8(what)?;
        self.take(usize::from(n), what)
    }

    /// A vector with a two-byte length prefix.
    fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], HelloError> {
        let n = self.u16(what)?;
        self.take(usize::from(n), what)
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }
}

/// The body of a ClientHello (RFC 8446 §4.1.2; TLS 1.2's is the same shape).
fn client_hello(body: &[u8]) -> Result<Hello, HelloError> {
    let mut r = Reader { rest: body };
    r.take(2, "legacy_version")?;
    r.take(32, "random")?;
    let session_id = r.vec8("legacy_session_id")?;
    if session_id.len() > 32 {
        return Err(HelloError::Malformed("legacy_session_id"));
    }
    let suites = r.vec16("cipher_suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(HelloError::Malformed("cipher_suites"));
    }
    if r.vec8("legacy_compression_methods")?.is_empty() {
        return Err(HelloError::Malformed("legacy_compression_methods"));
    }
    let mut hello = Hello::default();
    // A TLS 1.2 ClientHello may end here, without extensions.
    if r.is_empty() {
        return Ok(hello);
    }
    let mut extensions = Reader { rest: r.vec16("extensions")? };
    if !r.is_empty() {
        return Err(HelloError::Malformed("bytes after the extensions"));
    }
    let (mut seen_sni, mut seen_alpn) = (false, false);
    while !extensions.is_empty() {
        let kind = extensions.u16("extension type")?;
        let data = extensions.vec16("extension data")?;
        match kind {
            EXT_SERVER_NAME => {
                // RFC 8446 §4.2: no extension type twice.
                if std::mem::replace(&mut seen_sni, true) {
                    return Err(HelloError::Malformed("server_name twice"));
                }
                hello.server_name = server_name(data)?;
            }
            EXT_ALPN => {
                if std::mem::replace(&mut seen_alpn, true) {
                    return Err(HelloError::Malformed("ALPN twice"));
                }
                hello.alpn = Some(alpn(data)?);
            }
            _ => {}
        }
    }
    Ok(hello)
}

/// The first `host_name` entry of a server_name extension (RFC 6066 §3).
fn server_name(data: &[u8]) -> Result<Option<String>, HelloError> {
    let mut outer = Reader { rest: data };
    let mut list = Reader { rest: outer.vec16("server_name_list")? };
    if !outer.is_empty() {
        return Err(HelloError::Malformed("bytes after server_name_list"));
    }
    let mut found = None;
    while !list.is_empty() {
        let kind = list.u8("name_type")?;
        let name = list.vec16("host_name")?;
        if kind != 0 || found.is_some() {
            // Other name types are undefined; only the first host_name counts.
            continue;
        }
        let name = name.strip_suffix(b".").unwrap_or(name);
        let valid = !name.is_empty()
            && name.len() <= MAX_HOST_NAME
            && name.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        if !valid {
            return Err(HelloError::Malformed("host_name"));
        }
        found = Some(String::from_utf8_lossy(name).to_ascii_lowercase());
    }
    Ok(found)
}

/// The protocol ids of an ALPN extension (RFC 7301 §3.1: a non-empty list of
/// non-empty ids).
fn alpn(data: &[u8]) -> Result<Vec<Vec<u8>>, HelloError> {
    let mut outer = Reader { rest: data };
    let mut list = Reader { rest: outer.vec16("protocol_name_list")? };
    if !outer.is_empty() || list.is_empty() {
        return Err(HelloError::Malformed("protocol_name_list"));
    }
    let mut ids = Vec::new();
    while !list.is_empty() {
        let id = list.vec8("protocol_name")?;
        if id.is_empty() {
            return Err(HelloError::Malformed("empty protocol_name"));
        }
        ids.push(id.to_vec());
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A real ClientHello, as rustls writes it for `name` offering `alpn`.
    fn rustls_hello(name: &str, alpn: &[&[u8]]) -> Vec<u8> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(crate::probe::AcceptAnyCertificate(provider)))
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|id| id.to_vec()).collect();
        let name = rustls_pki_types::ServerName::try_from(name.to_owned()).unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut wire = Vec::new();
        client.write_tls(&mut wire).unwrap();
        wire
    }

    fn hello(bytes: &[u8]) -> Hello {
        match parse(bytes) {
            Ok(Parsed::Hello(hello)) => hello,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reads_sni_and_alpn_from_real_client_hellos() {
        let h = hello(&rustls_hello("Turn.Example.com", &[b"stun.turn"]));
        assert_eq!(h.server_name.as_deref(), Some("turn.example.com"));
        assert_eq!(h.alpn, Some(vec![b"stun.turn".to_vec()]));
        let h = hello(&rustls_hello("www.example.com", &[b"h2", b"http/1.1"]));
        assert_eq!(h.alpn, Some(vec![b"h2".to_vec(), b"http/1.1".to_vec()]));
        // To an IP address: no SNI (RFC 6066 §3); no ALPN list: no extension.
        let h = hello(&rustls_hello("127.0.0.1", &[]));
        assert_eq!(h, Hello { server_name: None, alpn: None });
    }

    #[test]
    fn every_truncation_asks_for_more_and_a_fragmented_hello_is_joined() {
        let whole = rustls_hello("turn.example.com", &[b"stun.turn"]);
        for end in 0..whole.len() {
            assert_eq!(parse(&whole[..end]), Ok(Parsed::NeedMore), "cut at {end}");
        }
        // The same handshake message split over records of 7 bytes.
        let message = &whole[5..];
        let mut split = Vec::new();
        for piece in message.chunks(7) {
            split.extend_from_slice(&[22, 3, 1, 0, piece.len() as u8]);
            split.extend_from_slice(piece);
        }
        assert_eq!(hello(&split), hello(&whole));
    }

    #[test]
    fn other_protocols_and_broken_hellos_are_refused() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(HelloError::NotTls));
        // A STUN Binding request (type 0x0001) on a TLS port.
        assert_eq!(parse(&[0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42]), Err(HelloError::NotTls));
        assert_eq!(parse(&[22, 2]), Err(HelloError::NotTls), "SSL 2 era version");
        assert_eq!(parse(&[22, 3, 1, 0, 0]), Err(HelloError::Malformed("record length")));
        assert_eq!(parse(&[22, 3, 1, 0x40, 1]), Err(HelloError::Malformed("record length")));
        assert_eq!(parse(&[22, 3, 1, 0, 1, 2]), Err(HelloError::NotClientHello));
        // A handshake message longer than the bound is refused without waiting for it.
        assert_eq!(parse(&[22, 3, 1, 0, 4, 1, 0, 0x40, 0]), Err(HelloError::TooLong));
        assert_eq!(parse(&[22, 3, 1, 0x40, 0, 1, 0, 0xff, 0xff]), Err(HelloError::TooLong), "record not whole");
        assert_eq!(parse(&[22, 3, 1, 0x40, 0, 2]), Err(HelloError::NotClientHello), "record not whole");
        // Records that never complete a message stop at the bound.
        let mut endless = Vec::new();
        while endless.len() < MAX_HELLO_BYTES {
            endless.extend_from_slice(&[22, 3, 1, 0, 1, 1]);
        }
        assert!(parse(&endless).is_err());
        let whole = rustls_hello("turn.example.com", &[b"stun.turn"]);
        // A length inside that claims more than is there.
        let mut broken = whole.clone();
        broken[5 + 4 + 2 + 32] = 200; // the session id's length
        assert!(matches!(parse(&broken), Err(HelloError::Malformed(_))));
    }

    #[test]
    fn duplicate_and_malformed_extensions_are_refused() {
        // A minimal TLS 1.2 ClientHello with the given extensions block.
        let build = |extensions: &[u8]| {
            let mut body = vec![3, 3];
            body.extend_from_slice(&[7; 32]);
            body.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
            body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
            body.extend_from_slice(extensions);
            let mut message = vec![1, 0, 0, body.len() as u8];
            message.extend_from_slice(&body);
            let mut record = vec![22, 3, 1, 0, message.len() as u8];
            record.extend_from_slice(&message);
            record
        };
        let sni = [0, 0, 0, 6, 0, 4, 0, 0, 1, b'a'];
        let alpn = [0, 16, 0, 5, 0, 3, 2, b'h', b'2'];
        assert_eq!(hello(&build(&sni)).server_name.as_deref(), Some("a"));
        assert_eq!(hello(&build(&alpn)).alpn, Some(vec![b"h2".to_vec()]));
        assert_eq!(hello(&build(&[])), Hello::default());
        assert!(parse(&build(&[sni, sni].concat())).is_err(), "server_name twice");
        assert!(parse(&build(&[alpn, alpn].concat())).is_err(), "ALPN twice");
        assert!(parse(&build(&[0, 16, 0, 3, 0, 1, 0])).is_err(), "an empty protocol id");
        assert!(parse(&build(&[0, 16, 0, 2, 0, 0])).is_err(), "an empty list");
        assert!(parse(&build(&[0, 0, 0, 6, 0, 4, 0, 0, 1, b' '])).is_err(), "a space in a host name");
        assert!(parse(&build(&[0, 0, 0, 9])).is_err(), "an extension longer than its block");
    }

    #[test]
    fn random_and_mutated_input_never_panics() {
        // A small xorshift generator: deterministic, no dependency.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let seeds = [rustls_hello("turn.example.com", &[b"stun.turn", b"h2"]), rustls_hello("127.0.0.1", &[])];
        for round in 0..20_000 {
            let mut bytes = seeds[round % 2].clone();
            for _ in 0..1 + next() % 8 {
                let at = (next() as usize) % bytes.len();
                bytes[at] = next() as u8;
            }
            bytes.truncate((next() as usize) % (bytes.len() + 1));
            let _ = parse(&bytes);
            let random: Vec<u8> = (0..next() % 64).map(|_| next() as u8).collect();
            let _ = parse(&random);
        }
    }
}
