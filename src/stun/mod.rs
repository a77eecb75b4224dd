//! STUN on the wire: raw framing, the codec's attribute set, integrity and ChannelData.

pub mod attributes;
pub mod binding;
pub mod channel_data;
pub mod errors;
pub mod framing;
pub mod integrity;
pub mod message;
pub mod raw;
