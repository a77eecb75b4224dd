//! RFC 8016 MOBILITY-TICKETs: what a ticket names and how it is sealed.
//!
//! A ticket names the allocation (its id), the worker that owns it now, how many times
//! it has moved and when the ticket expires, and is bound to the allocation's user (name and tenant).
//! Nobody but this process can read or make one: it is authenticated encryption under
//! keys derived from the workers' shared secret, so any worker opens a ticket another
//! sealed.
//!
//! Why not a ring AEAD: coturn's `turnutils_uclient -M` keeps a ticket in a 33-byte C
//! string (it copies at most 32 bytes and presents it with `strlen`), so a ticket must
//! be at most 32 bytes with no NUL. An AEAD's 16-byte tag and 12-byte nonce leave
//! nothing for the plaintext once base64 has made it text. The ticket is instead a
//! synthetic-IV construction (SIV, RFC 5297's scheme with HMAC-SHA256 as the PRF):
//! the tag is `HMAC(k_mac, plaintext || user)` cut to 11 bytes, and the plaintext is
//! XORed with `HMAC(k_enc, tag)`. Deterministic, nonce-free, and a forgery needs an
//! 88-bit guess per authenticated Refresh. 11 + 13 bytes make 32 base64url characters.

use super::tenant::UserKey;
use super::AllocationId;
use base64::Engine;
use ring::hmac;
use std::time::{Duration, Instant};

/// Bytes of the ticket's plaintext: worker (1), moves (2), id (6), expiry (4).
const PLAIN_LEN: usize = 13;
/// Bytes of the tag.
const TAG_LEN: usize = 11;
/// Characters of an encoded ticket (base64url, no padding, of tag and ciphertext).
pub const TICKET_LEN: usize = 32;
/// The largest id a ticket can name (48 bits): ids are numbered from 1 upwards, so
/// no process reaches it; an allocation past it is simply not offered mobility.
const MAX_ID: u64 = (1 << 48) - 1;

/// What a ticket says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// The worker that owned the allocation when the ticket was issued.
    pub worker: u8,
    /// How many times the allocation had moved: a ticket issued before a move no
    /// longer moves it (see [`super::allocation::Allocation::moves`]).
    pub moves: u16,
    /// The allocation.
    pub id: AllocationId,
    /// Seconds after the codec's epoch at which the ticket stops working.
    pub expires: u32,
}

/// Why a presented ticket was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketError {
    /// Not one this process sealed for this user (forged, altered, another user's,
    /// or from before a restart).
    Invalid,
    /// Sealed by us, but past its expiry.
    Expired,
}

/// Seals and opens tickets. Every worker derives the same keys from the shared secret
/// and uses the same epoch, so a ticket sealed on one opens on any.
#[derive(Clone)]
pub struct TicketCodec {
    mac: hmac::Key,
    enc: hmac::Key,
    epoch: Instant,
}

impl std::fmt::Debug for TicketCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketCodec").finish_non_exhaustive()
    }
}

impl TicketCodec {
    /// Keys derived from `secret` (the workers' nonce secret: a separate key per use,
    /// so a nonce MAC can never pass for a ticket or the other way round); times are
    /// counted from `epoch`.
    pub fn new(secret: &[u8; 32], epoch: Instant) -> Self {
        let root = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let derive = |label: &[u8]| hmac::Key::new(hmac::HMAC_SHA256, hmac::sign(&root, label).as_ref());
        TicketCodec { mac: derive(b"turnd mobility-ticket mac"), enc: derive(b"turnd mobility-ticket enc"), epoch }
    }

    /// The expiry field for an instant (rounded up to the second, saturating).
    pub fn expiry(&self, at: Instant) -> u32 {
        let since = at.saturating_duration_since(self.epoch);
        let secs = since.as_secs() + u64::from(since.subsec_nanos() > 0);
        u32::try_from(secs).unwrap_or(u32::MAX)
    }

    /// The ticket as MOBILITY-TICKET's value, bound to `user`; `None` when an id or
    /// worker index is past what the ticket holds.
    pub fn seal(&self, ticket: &Ticket, user: &UserKey) -> Option<Vec<u8>> {
        if ticket.id.0 > MAX_ID {
            return None;
        }
        let mut plain = [0u8; PLAIN_LEN];
        plain[0] = ticket.worker;
        plain[1..3].copy_from_slice(&ticket.moves.to_be_bytes());
        plain[3..9].copy_from_slice(&ticket.id.0.to_be_bytes()[2..]);
        plain[9..13].copy_from_slice(&ticket.expires.to_be_bytes());
        let tag = self.tag(&plain, user);
        let mut raw = [0u8; TAG_LEN + PLAIN_LEN];
        raw[..TAG_LEN].copy_from_slice(&tag);
        for (i, (p, k)) in plain.iter().zip(self.keystream(&tag)).enumerate() {
            raw[TAG_LEN + i] = p ^ k;
        }
        Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw).into_bytes())
    }

    /// Opens a ticket `user` presented at `now`.
    pub fn open(&self, value: &[u8], user: &UserKey, now: Instant) -> Result<Ticket, TicketError> {
        if value.len() != TICKET_LEN {
            return Err(TicketError::Invalid);
        }
        let mut raw = [0u8; TAG_LEN + PLAIN_LEN];
        match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode_slice(value, &mut raw) {
            Ok(n) if n == raw.len() => {}
            _ => return Err(TicketError::Invalid),
        }
        let (tag, cipher) = raw.split_at(TAG_LEN);
        let mut plain = [0u8; PLAIN_LEN];
        for (i, (c, k)) in cipher.iter().zip(self.keystream(tag)).enumerate() {
            plain[i] = c ^ k;
        }
        // Constant time: which byte differs says nothing.
        let differ = self.tag(&plain, user).iter().zip(tag).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if differ != 0 {
            return Err(TicketError::Invalid);
        }
        let mut id = [0u8; 8];
        id[2..].copy_from_slice(&plain[3..9]);
        let ticket = Ticket {
            worker: plain[0],
            moves: u16::from_be_bytes([plain[1], plain[2]]),
            id: AllocationId(u64::from_be_bytes(id)),
            expires: u32::from_be_bytes([plain[9], plain[10], plain[11], plain[12]]),
        };
        if now >= self.epoch + Duration::from_secs(ticket.expires.into()) {
            return Err(TicketError::Expired);
        }
        Ok(ticket)
    }

    fn tag(&self, plain: &[u8; PLAIN_LEN], user: &UserKey) -> [u8; TAG_LEN] {
        let mut context = hmac::Context::with_key(&self.mac);
        context.update(plain);
        // The tenant too: the same name in another realm is another user.
        context.update(&user.tenant.0.to_be_bytes());
        context.update(user.name.as_bytes());
        let full = context.sign();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full.as_ref()[..TAG_LEN]);
        tag
    }

    fn keystream(&self, tag: &[u8]) -> [u8; PLAIN_LEN] {
        let full = hmac::sign(&self.enc, tag);
        let mut stream = [0u8; PLAIN_LEN];
        stream.copy_from_slice(&full.as_ref()[..PLAIN_LEN]);
        stream
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket() -> Ticket {
        Ticket { worker: 1, moves: 3, id: AllocationId(0x0102_0304_0506), expires: 600 }
    }

    #[test]
    fn a_ticket_opens_for_its_user_on_any_codec_with_the_same_secret() {
        let t0 = Instant::now();
        let sealed = TicketCodec::new(&[7; 32], t0).seal(&ticket(), &"alice".into()).unwrap();
        assert_eq!(sealed.len(), TICKET_LEN);
        assert!(!sealed.contains(&0), "coturn's client presents it with strlen");
        let other_worker = TicketCodec::new(&[7; 32], t0);
        assert_eq!(other_worker.open(&sealed, &"alice".into(), t0 + Duration::from_secs(599)), Ok(ticket()));
    }

    #[test]
    fn another_user_a_forgery_another_secret_and_expiry_are_refused() {
        let t0 = Instant::now();
        let codec = TicketCodec::new(&[7; 32], t0);
        let sealed = codec.seal(&ticket(), &"alice".into()).unwrap();
        assert_eq!(codec.open(&sealed, &"bob".into(), t0), Err(TicketError::Invalid));
        for i in 0..sealed.len() {
            let mut flipped = sealed.clone();
            flipped[i] = if flipped[i] == b'A' { b'B' } else { b'A' };
            assert_eq!(codec.open(&flipped, &"alice".into(), t0), Err(TicketError::Invalid), "byte {i}");
        }
        assert_eq!(codec.open(&sealed[..31], &"alice".into(), t0), Err(TicketError::Invalid));
        assert_eq!(codec.open(b"", &"alice".into(), t0), Err(TicketError::Invalid));
        assert_eq!(TicketCodec::new(&[8; 32], t0).open(&sealed, &"alice".into(), t0), Err(TicketError::Invalid));
        assert_eq!(codec.open(&sealed, &"alice".into(), t0 + Duration::from_secs(600)), Err(TicketError::Expired));
    }

    #[test]
    fn ids_past_48_bits_get_no_ticket_and_expiry_rounds_up() {
        let t0 = Instant::now();
        let codec = TicketCodec::new(&[7; 32], t0);
        assert!(codec.seal(&Ticket { id: AllocationId(1 << 48), ..ticket() }, &"a".into()).is_none());
        assert_eq!(codec.expiry(t0 + Duration::from_millis(1500)), 2);
        assert_eq!(codec.expiry(t0), 0);
    }
}
