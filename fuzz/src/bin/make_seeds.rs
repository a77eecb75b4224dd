//! Writes the seed corpus of every fuzz target into `fuzz/seeds/<target>/` (or the
//! directory given as the first argument): the RFC 5769 vectors, requests, responses and
//! indications encoded with turnd's own codec, ChannelData frames, stream byte sequences
//! and operation scripts for the server target. Captures of real traffic (turnd with
//! coturn's turnutils_uclient, taken with tcpdump on loopback) are extracted by
//! `fuzz/seeds/pcap_to_seeds.py` into the same folders.
//!
//!   cargo run --bin make_seeds            # from fuzz/, with any toolchain

use std::path::{Path, PathBuf};
use stun_codec::rfc5389::attributes::{ErrorCode, Nonce, Realm, Software, Username, XorMappedAddress};
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5766::attributes::{
    Data, DontFragment, EvenPort, Lifetime, RequestedTransport, ReservationToken, XorPeerAddress, XorRelayAddress,
};
use stun_codec::rfc5766::methods::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, DATA, REFRESH, SEND};
use stun_codec::rfc8656::attributes::{AdditionalAddressFamily, AddressFamily, RequestedAddressFamily};
use stun_codec::{MessageClass, Method, TransactionId};
use turnd::stun::attributes::{Attribute, ChannelNumber, Opaque};
use turnd::stun::integrity::long_term_key_md5;
use turnd::stun::message::{self, IntegritySet, Message, Protection};

/// RFC 5769: SAMPLE_REQUEST.
const SAMPLE_REQUEST: &[u8] = &[
    0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf,
    0xae, 0x80, 0x22, 0x00, 0x10, 0x53, 0x54, 0x55, 0x4e, 0x20, 0x74, 0x65, 0x73, 0x74, 0x20, 0x63, 0x6c, 0x69, 0x65,
    0x6e, 0x74, 0x00, 0x24, 0x00, 0x04, 0x6e, 0x00, 0x01, 0xff, 0x80, 0x29, 0x00, 0x08, 0x93, 0x2f, 0xf9, 0xb1, 0x51,
    0x26, 0x3b, 0x36, 0x00, 0x06, 0x00, 0x09, 0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68, 0x36, 0x76, 0x59, 0x20, 0x20, 0x20,
    0x00, 0x08, 0x00, 0x14, 0x9a, 0xea, 0xa7, 0x0c, 0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e, 0xf2, 0xb5, 0xb2, 0xd3, 0xf2,
    0x49, 0xc1, 0xb5, 0x71, 0xa2, 0x80, 0x28, 0x00, 0x04, 0xe5, 0x7a, 0x3b, 0xcf,
];

/// RFC 5769: SAMPLE_IPV4_RESPONSE.
const SAMPLE_IPV4_RESPONSE: &[u8] = &[
    0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf,
    0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76, 0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, 0x00, 0x20,
    0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43, 0x00, 0x08, 0x00, 0x14, 0x2b, 0x91, 0xf5, 0x99, 0xfd,
    0x9e, 0x90, 0xc3, 0x8c, 0x74, 0x89, 0xf9, 0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b, 0xe7, 0xd7, 0x80, 0x28, 0x00, 0x04,
    0xc0, 0x7d, 0x4c, 0x96,
];

/// RFC 5769: SAMPLE_IPV6_RESPONSE.
const SAMPLE_IPV6_RESPONSE: &[u8] = &[
    0x01, 0x01, 0x00, 0x48, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf,
    0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76, 0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, 0x00, 0x20,
    0x00, 0x14, 0x00, 0x02, 0xa1, 0x47, 0x01, 0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25, 0xf4, 0xb5, 0xbe,
    0xd2, 0xb9, 0xd9, 0x00, 0x08, 0x00, 0x14, 0xa3, 0x82, 0x95, 0x4e, 0x4b, 0xe6, 0x7b, 0xf1, 0x17, 0x84, 0xc9, 0x7c,
    0x82, 0x92, 0xc2, 0x75, 0xbf, 0xe3, 0xed, 0x41, 0x80, 0x28, 0x00, 0x04, 0xc8, 0xfb, 0x0b, 0x4c,
];

/// RFC 5769: SAMPLE_LONG_TERM_REQUEST.
const SAMPLE_LONG_TERM_REQUEST: &[u8] = &[
    0x00, 0x01, 0x00, 0x60, 0x21, 0x12, 0xa4, 0x42, 0x78, 0xad, 0x34, 0x33, 0xc6, 0xad, 0x72, 0xc0, 0x29, 0xda, 0x41,
    0x2e, 0x00, 0x06, 0x00, 0x12, 0xe3, 0x83, 0x9e, 0xe3, 0x83, 0x88, 0xe3, 0x83, 0xaa, 0xe3, 0x83, 0x83, 0xe3, 0x82,
    0xaf, 0xe3, 0x82, 0xb9, 0x00, 0x00, 0x00, 0x15, 0x00, 0x1c, 0x66, 0x2f, 0x2f, 0x34, 0x39, 0x39, 0x6b, 0x39, 0x35,
    0x34, 0x64, 0x36, 0x4f, 0x4c, 0x33, 0x34, 0x6f, 0x4c, 0x39, 0x46, 0x53, 0x54, 0x76, 0x79, 0x36, 0x34, 0x73, 0x41,
    0x00, 0x14, 0x00, 0x0b, 0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0x2e, 0x6f, 0x72, 0x67, 0x00, 0x00, 0x08, 0x00,
    0x14, 0xf6, 0x70, 0x24, 0x65, 0x6d, 0xd6, 0x4a, 0x3e, 0x02, 0xb8, 0xe0, 0x71, 0x2e, 0x85, 0xc9, 0xa2, 0x8c, 0xa8,
    0x96, 0x66,
];

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let folder = dir.join(target);
    std::fs::create_dir_all(&folder).expect("create the seed folder");
    std::fs::write(folder.join(name), bytes).expect("write a seed");
}

fn encode(class: MessageClass, method: Method, attrs: Vec<Attribute>, key: Option<IntegritySet>) -> Vec<u8> {
    let mut m = Message::new(class, method, TransactionId::new([0x5E; 12]));
    for a in attrs {
        m.add_attribute(a);
    }
    let k = long_term_key_md5("alice", "turnd.test", "secret");
    if key.is_some() {
        m.add_attribute(Username::new("alice".into()).unwrap());
        m.add_attribute(Realm::new("turnd.test".into()).unwrap());
        m.add_attribute(Nonce::new("0000025896a1b2c3d4e5f60718293a4b".into()).unwrap());
    }
    message::encode(m, Protection { key: key.map(|set| (&k[..], set)), fingerprint: true }).expect("encode a seed")
}

fn channel(n: u16) -> Attribute {
    let number: ChannelNumber = Opaque(vec![(n >> 8) as u8, n as u8, 0, 0]);
    number.into()
}

fn main() {
    let dir = std::env::args().nth(1).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("seeds"));
    let peer = "192.0.2.10:9000".parse().unwrap();
    let peer6 = "[2001:db8:77::1]:9000".parse().unwrap();
    let sha1 = Some(IntegritySet { sha1: true, sha256: false });
    let both = Some(IntegritySet { sha1: true, sha256: true });
    use MessageClass::*;
    let messages: Vec<(&str, Vec<u8>)> = vec![
        ("rfc5769-2.1-request", SAMPLE_REQUEST.to_vec()),
        ("rfc5769-2.2-ipv4-response", SAMPLE_IPV4_RESPONSE.to_vec()),
        ("rfc5769-2.3-ipv6-response", SAMPLE_IPV6_RESPONSE.to_vec()),
        ("rfc5769-2.4-long-term-request", SAMPLE_LONG_TERM_REQUEST.to_vec()),
        ("binding", encode(Request, BINDING, vec![], None)),
        ("binding-software", encode(Request, BINDING, vec![Software::new("seed".into()).unwrap().into()], None)),
        ("allocate-unauthenticated", encode(Request, ALLOCATE, vec![RequestedTransport::new(17).into()], None)),
        (
            "allocate-sha1",
            encode(Request, ALLOCATE, vec![RequestedTransport::new(17).into(), Lifetime::from_u32(600).into()], sha1),
        ),
        (
            "allocate-sha256-dual-stack",
            encode(
                Request,
                ALLOCATE,
                vec![
                    RequestedTransport::new(17).into(),
                    AdditionalAddressFamily::new(AddressFamily::V6).into(),
                    DontFragment.into(),
                ],
                both,
            ),
        ),
        (
            "allocate-even-port-v6",
            encode(
                Request,
                ALLOCATE,
                vec![
                    RequestedTransport::new(17).into(),
                    EvenPort::new(true).into(),
                    RequestedAddressFamily::new(AddressFamily::V6).into(),
                ],
                sha1,
            ),
        ),
        (
            "allocate-token",
            encode(
                Request,
                ALLOCATE,
                vec![RequestedTransport::new(17).into(), ReservationToken::new(0x0102_0304_0506_0708).into()],
                sha1,
            ),
        ),
        ("refresh-delete", encode(Request, REFRESH, vec![Lifetime::from_u32(0).into()], sha1)),
        (
            "create-permission",
            encode(
                Request,
                CREATE_PERMISSION,
                vec![XorPeerAddress::new(peer).into(), XorPeerAddress::new(peer6).into()],
                sha1,
            ),
        ),
        ("channel-bind", encode(Request, CHANNEL_BIND, vec![channel(0x4000), XorPeerAddress::new(peer).into()], sha1)),
        (
            "send-indication",
            encode(
                Indication,
                SEND,
                vec![XorPeerAddress::new(peer).into(), Data::new(b"hello".to_vec()).unwrap().into()],
                None,
            ),
        ),
        (
            "data-indication",
            encode(
                Indication,
                DATA,
                vec![XorPeerAddress::new(peer6).into(), Data::new(vec![7; 33]).unwrap().into()],
                None,
            ),
        ),
        (
            "allocate-success",
            encode(
                SuccessResponse,
                ALLOCATE,
                vec![
                    XorRelayAddress::new(peer).into(),
                    Lifetime::from_u32(600).into(),
                    XorMappedAddress::new(peer6).into(),
                ],
                sha1,
            ),
        ),
        (
            "error-401",
            encode(
                ErrorResponse,
                ALLOCATE,
                vec![
                    ErrorCode::new(401, String::new()).unwrap().into(),
                    Realm::new("turnd.test".into()).unwrap().into(),
                    Nonce::new("abc".into()).unwrap().into(),
                ],
                None,
            ),
        ),
        ("classic-binding", {
            let mut m = vec![0x00, 0x01, 0x00, 0x00];
            m.extend_from_slice(&[9; 16]);
            m
        }),
    ];
    for (name, bytes) in &messages {
        write(&dir, "stun_decode", name, bytes);
    }
    let frames: Vec<(&str, Vec<u8>)> = vec![
        ("channel-data", vec![0x40, 0x00, 0x00, 0x04, 1, 2, 3, 4]),
        ("channel-data-padded", vec![0x40, 0x01, 0x00, 0x03, 1, 2, 3, 0]),
        ("channel-data-rfc5766-range", vec![0x7F, 0xFF, 0x00, 0x01, 9]),
        ("channel-data-lying-length", vec![0x40, 0x00, 0x04, 0x00, 1, 2, 3, 4]),
        ("channel-data-empty", vec![0x40, 0x00, 0x00, 0x00]),
    ];
    for (name, bytes) in &frames {
        write(&dir, "channel_data", name, bytes);
    }
    // Streams: a chunking byte, then messages and frames back to back.
    let mut stream = vec![3];
    for (_, m) in messages.iter().take(8) {
        stream.extend_from_slice(m);
        stream.extend_from_slice(&[0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0]);
    }
    write(&dir, "framer", "mixed-stream", &stream);
    write(&dir, "framer", "one-binding-byte-by-byte", &[[0u8].as_slice(), &messages[4].1].concat());
    write(&dir, "framer", "tls-client-hello", &[1, 0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc]);
    // Server scripts (see server_driver::Op::decode): 8 seed bytes, then operations.
    let allocate = [0u8, 0, 0, 1, 0x01, 0x00, 0x00, 0x02, 0x58]; // Allocate, LIFETIME 600
    let bind = [0u8, 0, 0, 7, 0x00, 0x00, 0]; // ChannelBind 0x4000 to peer 0
    let permit = [0u8, 0, 0, 4, 1, 1]; // CreatePermission peer 1
    let channel_data = [7u8, 0, 0x00, 0x00, 0x00, 0x20, 0]; // 32 bytes on channel 0x4000
    let send = [9u8, 0, 1, 0x00, 0x10];
    let from_peer = [10u8, 0, 0, 0x00, 0x40];
    let advance = [12u8, 0x00, 0x09, 0x27, 0xC0]; // 600 s
    let refresh = [0u8, 0, 0, 3, 1, 0x00, 0x00, 0x01, 0x2C];
    let mut script = vec![0, 0, 0, 0, 0, 0, 0, 42];
    for op in [&allocate[..], &bind, &permit, &channel_data, &send, &from_peer, &refresh, &advance, &from_peer] {
        script.extend_from_slice(op);
    }
    write(&dir, "server", "allocate-bind-relay-refresh-expire", &script);
    let mut crowd = vec![0, 0, 0, 0, 0, 0, 0, 7];
    for client in 0..8u8 {
        crowd.extend_from_slice(&[0, client, client % 3, 2, 0x00]);
    }
    crowd.extend_from_slice(&advance);
    write(&dir, "server", "eight-clients-allocate", &crowd);
    for (name, bytes) in messages.iter().take(8) {
        let mut raw = vec![0, 0, 0, 0, 0, 0, 0, 1, 6, 0, (bytes.len() / 2).min(255) as u8];
        raw.extend_from_slice(bytes);
        write(&dir, "server", &format!("raw-{name}"), &raw);
    }
    println!("seeds written under {}", dir.display());
}
