//! The TCP/TLS stream framer (RFC 8489 §6.2.2, RFC 8656 §12.5) fed a byte stream in
//! chunks of varying size: never a panic, frames come out in order and exactly as
//! they went in, each as long as its own length field says, and the buffer never
//! fills up without a whole frame in it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use turnd::stun::framing::{frame_len, Framer};

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else { return };
    let mut framer = Framer::default();
    let (mut fed, mut consumed, mut round) = (0usize, 0usize, 0usize);
    loop {
        round += 1;
        // Chunk sizes from 1 byte to a few kilobytes, chosen by the first input byte.
        let chunk = 1 + (usize::from(seed) * round * 131) % (if seed & 1 == 0 { 7 } else { 4099 });
        let spare = framer.spare();
        let n = chunk.min(spare.len()).min(stream.len() - fed);
        spare[..n].copy_from_slice(&stream[fed..fed + n]);
        framer.filled(n);
        fed += n;
        loop {
            match framer.next_frame() {
                Ok(Some(frame)) => {
                    assert!(!frame.is_empty());
                    assert_eq!(frame, &stream[consumed..consumed + frame.len()], "frame bytes differ from the stream");
                    assert_eq!(frame_len(frame), Ok(Some(frame.len())), "frame length disagrees with its header");
                    consumed += frame.len();
                }
                Ok(None) => break,
                // Not STUN: the connection is closed here; nothing more to check.
                Err(_) => return,
            }
        }
        if fed == stream.len() {
            break;
        }
        assert!(n > 0, "the framer's buffer is full and holds no whole frame");
    }
    assert_eq!(framer.has_partial(), consumed < fed);
});
