//! PROXY protocol headers (v1 and v2) as turnd reads them off a connection: never a
//! panic, never a byte read past the header (what follows it is the client's STUN
//! message or TLS ClientHello), never more than the bounds allow, and an accepted
//! header names a usable client.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use turnd::net::proxy::{read_header, Header, V1_MAX, V2_MAX_PAYLOAD};

/// The v2 signature.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

fuzz_target!(|data: &[u8]| {
    let mut reader: &[u8] = data;
    // A slice is always ready: one poll finishes the read.
    let outcome = {
        let mut future = pin!(read_header(&mut reader));
        match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(outcome) => outcome,
            Poll::Pending => panic!("a read from a slice did not finish"),
        }
    };
    let consumed = &data[..data.len() - reader.len()];
    assert!(consumed.len() <= 16 + V2_MAX_PAYLOAD.max(V1_MAX), "read {} bytes", consumed.len());
    let Ok(header) = outcome else { return };
    // Exactly the header was read: what follows it belongs to STUN or TLS.
    if data.starts_with(V2_SIGNATURE) {
        let declared = usize::from(u16::from_be_bytes([data[14], data[15]]));
        assert_eq!(consumed.len(), 16 + declared, "a v2 header read past its length");
    } else {
        assert!(consumed.ends_with(b"\r\n") && consumed.len() <= V1_MAX, "a v1 header read past its CRLF");
    }
    if let Header::Proxied { source, .. } = header {
        assert_ne!(source.port(), 0);
        assert!(!source.ip().is_unspecified() && !source.ip().is_multicast());
    }
});
