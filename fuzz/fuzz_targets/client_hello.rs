//! TLS ClientHellos as a passthrough listener reads them (`net::client_hello::parse`
//! and `net::passthrough::read_client_hello`): never a panic, never more than
//! `MAX_HELLO_BYTES` read, what is accepted is well formed (a host name of DNS
//! characters, non-empty ALPN ids), and bytes after a whole ClientHello change nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use turnd::net::client_hello::{parse, Parsed, MAX_HELLO_BYTES};
use turnd::net::passthrough::read_client_hello;

fuzz_target!(|data: &[u8]| {
    let parsed = parse(data);
    if let Ok(Parsed::Hello(hello)) = &parsed {
        if let Some(name) = &hello.server_name {
            assert!(!name.is_empty() && name.len() <= 253, "{name:?}");
            assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b)));
        }
        if let Some(ids) = &hello.alpn {
            assert!(!ids.is_empty() && ids.iter().all(|id| !id.is_empty()));
        }
        // A client may send more behind its ClientHello; the decision stays.
        let mut longer = data.to_vec();
        longer.extend_from_slice(b"\x16\x03\x01 trailing");
        assert_eq!(parse(&longer), parsed);
    }
    // Read off a connection (a slice is always ready: one poll finishes).
    let mut reader: &[u8] = data;
    let outcome = {
        let mut future = pin!(read_client_hello(&mut reader));
        match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(outcome) => outcome,
            Poll::Pending => panic!("a read from a slice did not finish"),
        }
    };
    let consumed = data.len() - reader.len();
    assert!(consumed <= MAX_HELLO_BYTES, "read {consumed} bytes");
    if let Ok((bytes, hello)) = outcome {
        assert_eq!(bytes, &data[..consumed], "the bytes kept are the bytes read");
        assert_eq!(parse(&bytes), Ok(Parsed::Hello(hello)));
    }
});
