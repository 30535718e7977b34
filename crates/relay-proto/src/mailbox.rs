//! The mailbox frame (docs/protocol.md section 4), Silence Labs compatible: a 36-byte
//! header of message ID, TTL and flags, then the payload. The same layout both ways.
//!
//! ```text
//! [0..32)   id     32 bytes, opaque
//! [32..34)  ttl    u16 LE, seconds
//! [34..36)  flags  u16 LE; 0x8000 = one receiver
//! [36..)    payload
//! ```
//!
//! A frame of exactly [`HEADER_LEN`] bytes is an ASK; a longer one is a PUB.

/// Bytes before the payload: 32 of ID, 2 of TTL, 2 of flags.
pub const HEADER_LEN: usize = 36;
/// Flag bit: the message is removed after its first delivery.
pub const FLAG_ONE_RECEIVER: u16 = 0x8000;

/// A 32-byte opaque message ID.
pub type MessageId = [u8; 32];

/// What a frame asks the mailbox to do, read from its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// Exactly [`HEADER_LEN`] bytes: wait for the message with this ID.
    Ask,
    /// Longer: store this message under its ID.
    Publish,
}

/// The header of a mailbox frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MailboxHeader {
    /// The message ID.
    pub id: MessageId,
    /// How long to store (PUB) or wait (ASK), in seconds, as sent: a server caps it.
    pub ttl_secs: u16,
    /// The flags word; see [`FLAG_ONE_RECEIVER`].
    pub flags: u16,
    /// ASK or PUB. Not on the wire: [`MailboxHeader::parse`] reads it from the frame's
    /// length, and [`MailboxHeader::encode`] ignores it.
    pub kind: FrameKind,
}

impl MailboxHeader {
    /// Reads the header of `frame`, or `None` when it is shorter than [`HEADER_LEN`].
    pub fn parse(frame: &[u8]) -> Option<MailboxHeader> {
        let (header, payload) = frame.split_first_chunk::<HEADER_LEN>()?;
        let (id, rest) = header.split_first_chunk::<32>()?;
        let ttl_secs = u16::from_le_bytes([rest[0], rest[1]]);
        let flags = u16::from_le_bytes([rest[2], rest[3]]);
        let kind = if payload.is_empty() { FrameKind::Ask } else { FrameKind::Publish };
        Some(MailboxHeader { id: *id, ttl_secs, flags, kind })
    }

    /// Whether the one-receiver flag is set.
    pub fn one_receiver(&self) -> bool {
        self.flags & FLAG_ONE_RECEIVER != 0
    }

    /// The 36 header bytes (the payload of a PUB follows them).
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..32].copy_from_slice(&self.id);
        h[32..34].copy_from_slice(&self.ttl_secs.to_le_bytes());
        h[34..].copy_from_slice(&self.flags.to_le_bytes());
        h
    }
}

/// An ASK frame for `id`, waiting up to `ttl_secs` (flags 0).
pub fn ask_frame(id: &MessageId, ttl_secs: u16) -> Vec<u8> {
    MailboxHeader { id: *id, ttl_secs, flags: 0, kind: FrameKind::Ask }.encode().to_vec()
}

/// A PUB frame storing `payload` under `id` for `ttl_secs`, with `flags`. An empty
/// `payload` makes an ASK: the kind is the frame's length.
pub fn publish_frame(id: &MessageId, ttl_secs: u16, flags: u16, payload: &[u8]) -> Vec<u8> {
    let header = MailboxHeader { id: *id, ttl_secs, flags, kind: FrameKind::Publish };
    let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
    frame.extend_from_slice(&header.encode());
    frame.extend_from_slice(payload);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_reads_the_layout_byte_by_byte() {
        let mut raw = vec![7u8; 32];
        raw.extend_from_slice(&[0x2c, 0x01]); // 300 s
        raw.extend_from_slice(&[0x00, 0x80]); // one receiver
        let ask = MailboxHeader::parse(&raw).unwrap();
        assert_eq!(ask.id, [7u8; 32]);
        assert_eq!(ask.ttl_secs, 300);
        assert!(ask.one_receiver());
        assert_eq!(ask.kind, FrameKind::Ask);
        assert_eq!(ask.encode()[..], raw[..]);
        raw.push(0xaa);
        assert_eq!(MailboxHeader::parse(&raw).unwrap().kind, FrameKind::Publish);
        assert_eq!(MailboxHeader::parse(&raw[..35]), None);
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
