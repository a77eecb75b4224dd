//! Stream framing (RFC 8489 §6.2.2, RFC 8656 §12.5): over TCP and TLS, STUN messages
//! and ChannelData follow each other with no delimiter; each is sized by its own
//! length field, and ChannelData is padded to 4 bytes.

use crate::stun::channel_data::{self, ChannelData};
use crate::stun::raw::{padded, HEADER_LEN};

/// The largest frame: a STUN message with a full 16-bit length.
pub const MAX_FRAME: usize = HEADER_LEN + 0xFFFF;

/// The bytes at the head of a stream do not start a STUN message or ChannelData.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stream does not carry STUN or ChannelData (first byte {0:#04x})")]
pub struct FramingError(pub u8);

/// The length of the frame at the start of `buf`: `Ok(None)` when more bytes are
/// needed to know, `Ok(Some(len))` when `len` bytes (which may not all be there yet)
/// make the frame.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, FramingError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let Some(length) = buf.get(2..4).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]]))) else {
        return Ok(None);
    };
    match first >> 6 {
        0 if length % 4 == 0 => Ok(Some(HEADER_LEN + length)),
        1 if ChannelData::parse_header(buf).is_some() => Ok(Some(channel_data::HEADER_LEN + padded(length))),
        _ => Err(FramingError(first)),
    }
}

/// What a connection's read buffer starts with, and shrinks back to once empty: room
/// for any ordinary STUN message or a full-MTU ChannelData frame. An idle connection
/// holds no more than this.
pub const INITIAL_BUFFER: usize = 2048;
/// The most a read buffer grows to: one maximal frame plus the start of the next.
pub const MAX_BUFFER: usize = MAX_FRAME + 4096;
/// Reads get at least this much room (less only when the buffer is at its maximum).
const MIN_READ: usize = 1024;

/// A bounded read buffer that hands out whole frames. It starts at
/// [`INITIAL_BUFFER`], grows with need (to hold the frame being received, or doubling
/// while reads keep filling it) up to [`MAX_BUFFER`], and shrinks back once drained,
/// so a connection that sent one large message does not keep its buffer.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The last read filled all the room it was given: more is probably waiting.
    read_was_full: bool,
}

impl Default for Framer {
    fn default() -> Self {
        Framer { buf: vec![0; INITIAL_BUFFER], start: 0, end: 0, read_was_full: false }
    }
}

impl Framer {
    /// Free space to read into: never empty until the buffer holds [`MAX_BUFFER`]
    /// bytes, which only a peer that ignores framing can make it do.
    pub fn spare(&mut self) -> &mut [u8] {
        let pending = self.end - self.start;
        if pending == 0 {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > INITIAL_BUFFER {
                // Drained: give back what a large frame or a burst took.
                self.buf = vec![0; INITIAL_BUFFER];
            }
            return &mut self.buf[..];
        }
        // Room for the frame being received when its length is known (an error is
        // reported by `next_frame`; room does not matter then), and at least MIN_READ.
        let frame = frame_len(&self.buf[self.start..self.end]).ok().flatten().unwrap_or(0);
        let mut wanted = frame.max(pending + MIN_READ);
        if self.read_was_full {
            // Data comes faster than one buffer takes: read more per call.
            wanted = wanted.max(self.buf.len().saturating_mul(2));
        }
        let wanted = wanted.min(MAX_BUFFER);
        if self.start > 0 && self.start + wanted > self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end = pending;
            self.start = 0;
        }
        if wanted > self.buf.len() {
            self.buf.resize(wanted, 0);
        }
        &mut self.buf[self.end..]
    }

    /// Records `n` bytes read into [`Framer::spare`].
    pub fn filled(&mut self, n: usize) {
        self.read_was_full = n > 0 && self.end + n >= self.buf.len();
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Whether a partial frame is buffered.
    pub fn has_partial(&self) -> bool {
        self.end > self.start
    }

    /// Bytes held by the buffer (what the connection costs in reading).
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Bytes read but not framed yet (what follows a ConnectionBind when the
    /// connection turns into a raw data connection), emptying the buffer.
    pub fn take_pending(&mut self) -> &[u8] {
        let pending = self.start..self.end;
        self.start = self.end;
        self.buf.get(pending).unwrap_or_default()
    }

    /// The next whole frame, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FramingError> {
        let pending = &self.buf[self.start..self.end];
        let Some(len) = frame_len(pending)? else {
            return Ok(None);
        };
        if pending.len() < len {
            return Ok(None);
        }
        let frame = self.start..self.start + len;
        self.start += len;
        Ok(self.buf.get(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(framer: &mut Framer, bytes: &[u8]) {
        framer.spare()[..bytes.len()].copy_from_slice(bytes);
        framer.filled(bytes.len());
    }

    fn stun(len: u16) -> Vec<u8> {
        let mut m = vec![0, 1];
        m.extend_from_slice(&len.to_be_bytes());
        m.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
        m.extend_from_slice(&[0; 12]);
        m.extend(std::iter::repeat_n(7, len as usize));
        m
    }

    #[test]
    fn coalesced_messages_come_out_one_by_one() {
        let mut f = Framer::default();
        let mut bytes = stun(4);
        bytes.extend_from_slice(&[0x40, 0x00, 0x00, 0x03, 1, 2, 3, 0]); // padded ChannelData
        bytes.extend(stun(0));
        feed(&mut f, &bytes);
        assert_eq!(f.next_frame().unwrap().unwrap().len(), 24);
        assert_eq!(f.next_frame().unwrap().unwrap(), &[0x40, 0x00, 0x00, 0x03, 1, 2, 3, 0]);
        assert_eq!(f.next_frame().unwrap().unwrap().len(), 20);
        assert_eq!(f.next_frame().unwrap(), None);
        assert!(!f.has_partial());
    }

    #[test]
    fn a_message_split_across_reads_is_reassembled() {
        let mut f = Framer::default();
        let msg = stun(8);
        for chunk in msg.chunks(3) {
            assert_eq!(f.next_frame().unwrap(), None);
            feed(&mut f, chunk);
        }
        assert_eq!(f.next_frame().unwrap().unwrap(), msg.as_slice());
    }

    #[test]
    fn garbage_is_a_framing_error() {
        let mut f = Framer::default();
        feed(&mut f, &[0xFF, 0xFF, 0, 0]);
        assert_eq!(f.next_frame(), Err(FramingError(0xFF)));
        // A TLS ClientHello sent to a plain TCP listener.
        let mut f = Framer::default();
        feed(&mut f, &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]);
        assert_eq!(f.next_frame(), Err(FramingError(0x16)));
        let mut f = Framer::default();
        feed(&mut f, &[0, 1, 0, 3]); // STUN length not a multiple of 4
        assert!(f.next_frame().is_err());
    }

    #[test]
    fn buffer_starts_small_grows_for_a_large_frame_and_shrinks_back() {
        let mut f = Framer::default();
        assert_eq!(f.capacity(), INITIAL_BUFFER);
        // A 10 000-byte message arriving in small pieces: room for all of it.
        let big = stun(10_000);
        for chunk in big.chunks(700) {
            assert_eq!(f.next_frame().unwrap(), None);
            let spare = f.spare();
            assert!(spare.len() >= chunk.len());
            spare[..chunk.len()].copy_from_slice(chunk);
            f.filled(chunk.len());
        }
        assert!(f.capacity() >= big.len() && f.capacity() < big.len() + 2 * MIN_READ, "{}", f.capacity());
        assert_eq!(f.next_frame().unwrap().unwrap(), big.as_slice());
        // Drained: back to the initial size at the next read.
        assert!(f.spare().len() <= INITIAL_BUFFER);
        assert_eq!(f.capacity(), INITIAL_BUFFER);
    }

    #[test]
    fn full_reads_double_the_buffer_up_to_the_maximum() {
        let mut f = Framer::default();
        let mut stream = Vec::new();
        while stream.len() < 4 * MAX_BUFFER {
            stream.extend(stun(400));
        }
        let (mut offset, mut frames, mut largest) = (0, 0, 0);
        while offset < stream.len() {
            let spare = f.spare();
            let n = spare.len().min(stream.len() - offset);
            spare[..n].copy_from_slice(&stream[offset..offset + n]);
            f.filled(n);
            offset += n;
            largest = largest.max(f.capacity());
            while let Some(frame) = f.next_frame().unwrap() {
                assert_eq!(frame.len(), 420);
                frames += 1;
            }
        }
        assert_eq!(frames, stream.len() / 420);
        assert!(largest > 8 * INITIAL_BUFFER && largest <= MAX_BUFFER, "{largest}");
    }

    #[test]
    fn buffer_never_grows_past_one_frame() {
        let mut f = Framer::default();
        // A maximal frame announced, then more than it.
        feed(&mut f, &stun(0xFFFC)[..20]);
        let mut total = 20;
        while !f.spare().is_empty() {
            let n = f.spare().len();
            f.filled(n + 100);
            total += n;
            assert!(total <= MAX_BUFFER + 20);
        }
        assert_eq!(f.capacity(), MAX_BUFFER);
        assert!(f.next_frame().unwrap().is_some());
    }
}
