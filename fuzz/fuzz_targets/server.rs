//! The whole sans-IO server on virtual time, fed sequences of client requests (signed
//! with the right keys and the nonces the server handed out), raw datagrams,
//! ChannelData, Send indications, peer datagrams, relay-bind failures, clock steps and
//! connection closes. After every input the driver checks the quotas, the port pool,
//! lifetimes, channel bindings and the relay paths; at the end every port must be
//! back in the pool. See `src/server_driver.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use turnd_fuzz::server_driver::{run, Op};

fuzz_target!(|data: &[u8]| {
    let (seed, rest) = data.split_at(data.len().min(8));
    let mut s = [0u8; 8];
    s[..seed.len()].copy_from_slice(seed);
    let ops = Op::decode_all(rest, 256);
    run(u64::from_be_bytes(s), &ops);
});
