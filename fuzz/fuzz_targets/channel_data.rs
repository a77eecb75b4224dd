//! ChannelData parsing (RFC 8656 §12.4), alone and through the core's relay path with
//! a live allocation that has a channel bound: never a panic, never a payload range
//! past the datagram, never relayed on a channel that is not bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;
use turnd::stun::framing::frame_len;
use turnd::stun::channel_data::{ChannelData, CHANNEL_RANGE, HEADER_LEN};
use turnd_fuzz::server_driver::{Driver, FamilyRequest, Op, Request};

thread_local! {
    /// A server with one allocation (client 0) and channel 0x4000 bound to peer 0.
    static DRIVER: RefCell<Driver> = RefCell::new({
        let mut d = Driver::new(7);
        let allocate = Request::Allocate {
            lifetime: None,
            even_port: None,
            token: false,
            family: FamilyRequest::Default,
            dont_fragment: false,
            transport: Some(17),
        };
        for request in [allocate, Request::ChannelBind { channel: 0, peer: 0 }] {
            d.apply(&Op::Request { client: 0, user: 0, sha256: false, sha1: true, wrong_key: false, request });
        }
        assert_eq!(d.server.allocation_count(), 1, "the fixture allocation");
        d
    });
}

fuzz_target!(|data: &[u8]| {
    if let Some(cd) = ChannelData::parse_datagram(data) {
        assert!(CHANNEL_RANGE.contains(&cd.channel));
        assert!(HEADER_LEN + cd.len <= data.len(), "length past the datagram");
        let mut header = [0u8; HEADER_LEN];
        ChannelData::write_header(cd.channel, cd.len as u16, &mut header);
        assert_eq!(&header[..], &data[..HEADER_LEN], "header does not round-trip");
    }
    if let (Some(h), Ok(Some(len))) = (ChannelData::parse_header(data), frame_len(data)) {
        assert_eq!(len, HEADER_LEN + h.len.div_ceil(4) * 4, "stream framing disagrees with the header");
    }
    DRIVER.with(|d| {
        let mut d = d.borrow_mut();
        // Op::Raw checks whatever is relayed (allocation, permission, payload range).
        d.apply(&Op::Raw { client: 0, bytes: data.to_vec() });
        d.apply(&Op::Raw { client: 1, bytes: data.to_vec() });
    });
});
