//! The mailbox frame layout (docs/protocol.md section 4): a 36-byte header of message ID,
//! TTL and flags, then the payload. Parsing borrows; encoding is for clients and tests.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

/// Bytes before the payload: 32 of ID, 2 of TTL, 2 of flags. A frame of exactly this
/// length is an ASK.
pub const HEADER_LEN: usize = 36;

/// Flag bit: the message is removed after its first delivery.
pub const FLAG_ONE_RECEIVER: u16 = 0x8000;

/// A 32-byte opaque message ID.
pub type MessageId = [u8; 32];

/// What a frame asks the mailbox to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// Exactly [`HEADER_LEN`] bytes: wait for the message with this ID.
    Ask,
    /// Longer: store this message under its ID.
    Publish,
}

/// The header of a frame, read without copying the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The message ID.
    pub id: MessageId,
    /// How long to store (PUB) or wait (ASK), as sent: not yet capped by the server.
    pub ttl: Duration,
    /// The flags word; see [`FLAG_ONE_RECEIVER`].
    pub flags: u16,
    /// ASK or PUB, from the frame's length.
    pub kind: FrameKind,
}

impl FrameHeader {
    /// Reads the header of `frame`, or `None` when it is shorter than [`HEADER_LEN`].
    pub fn parse(frame: &[u8]) -> Option<FrameHeader> {
        let header: &[u8; HEADER_LEN] = frame.get(..HEADER_LEN)?.try_into().ok()?;
        let mut id = [0u8; 32];
        id.copy_from_slice(&header[..32]);
        let ttl = u16::from_le_bytes([header[32], header[33]]);
        let flags = u16::from_le_bytes([header[34], header[35]]);
        let kind = if frame.len() == HEADER_LEN { FrameKind::Ask } else { FrameKind::Publish };
        Some(FrameHeader { id, ttl: Duration::from_secs(u64::from(ttl)), flags, kind })
    }

    /// Whether the one-receiver flag is set.
    pub fn one_receiver(&self) -> bool {
        self.flags & FLAG_ONE_RECEIVER != 0
    }
}

/// An ASK frame for `id`, waiting up to `ttl_secs`.
pub fn ask_frame(id: &MessageId, ttl_secs: u16) -> Bytes {
    header(id, ttl_secs, 0, 0).freeze()
}

/// A PUB frame storing `payload` under `id` for `ttl_secs`, with `flags`.
pub fn publish_frame(id: &MessageId, ttl_secs: u16, flags: u16, payload: &[u8]) -> Bytes {
    let mut buf = header(id, ttl_secs, flags, payload.len());
    buf.put_slice(payload);
    buf.freeze()
}

fn header(id: &MessageId, ttl_secs: u16, flags: u16, extra: usize) -> BytesMut {
    let mut buf = BytesMut::with_capacity(HEADER_LEN + extra);
    buf.put_slice(id);
    buf.put_u16_le(ttl_secs);
    buf.put_u16_le(flags);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_reads_the_layout_byte_by_byte() {
        let mut raw = vec![7u8; 32];
        raw.extend_from_slice(&[0x2c, 0x01]); // 300 s
        raw.extend_from_slice(&[0x00, 0x80]); // one receiver
        let ask = FrameHeader::parse(&raw).unwrap();
        assert_eq!(ask.id, [7u8; 32]);
        assert_eq!(ask.ttl, Duration::from_secs(300));
        assert!(ask.one_receiver());
        assert_eq!(ask.kind, FrameKind::Ask);
        raw.push(0xaa);
        assert_eq!(FrameHeader::parse(&raw).unwrap().kind, FrameKind::Publish);
        assert_eq!(FrameHeader::parse(&raw[..35]), None);
    }

    #[test]
    fn encoders_match_the_layout() {
        let id = [3u8; 32];
        let ask = ask_frame(&id, 0x0102);
        assert_eq!(ask.len(), HEADER_LEN);
        assert_eq!(&ask[32..], &[0x02, 0x01, 0, 0]);
        let publish = publish_frame(&id, 10, FLAG_ONE_RECEIVER, b"hi");
        assert_eq!(&publish[..32], &id);
        assert_eq!(&publish[32..], &[10, 0, 0x00, 0x80, b'h', b'i']);
    }
}
