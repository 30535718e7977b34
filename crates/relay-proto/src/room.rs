//! Rooms (docs/protocol.md section 3): the binary data frames both ways and the JSON
//! control events (text frames) of a room connection.
//!
//! A client sends `[to u16 LE][payload]`; the relay delivers
//! `[seq u64 LE][from u16 LE][flags u16 LE][payload]`. Control events are JSON objects
//! tagged by `type`: [`ServerEvent`] from the relay, [`ClientControl`] from a client.

use serde::{Deserialize, Serialize};

use crate::{ErrorCode, ProtoError};

/// The destination slot that means "every other party" in a client data frame.
pub const BROADCAST_SLOT: u16 = 0xFFFF;
/// Bytes before the payload in a client-to-relay data frame: `[to u16 LE]`.
pub const CLIENT_HEADER_LEN: usize = 2;
/// Bytes before the payload in a relay-to-client data frame:
/// `[seq u64 LE][from u16 LE][flags u16 LE]`.
pub const RELAY_HEADER_LEN: usize = 12;
/// Flag bit of a relay data frame: the message was a broadcast.
pub const FLAG_BROADCAST: u16 = 0x0001;
/// The longest `reason` of an `abort` the relay passes on, in bytes: a longer one is
/// cut (at a character boundary) before the `aborted` event carries it. Part of the
/// protocol, so every relay passes the same reason on.
pub const MAX_ABORT_REASON_BYTES: usize = 256;

/// `reason` cut to at most [`MAX_ABORT_REASON_BYTES`], at a character boundary.
pub fn bound_abort_reason(reason: &str) -> &str {
    if reason.len() <= MAX_ABORT_REASON_BYTES {
        return reason;
    }
    let mut end = MAX_ABORT_REASON_BYTES;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// Where a client's data frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Destination {
    /// One party, by slot.
    Slot(u16),
    /// Every other party of the room (the wire value [`BROADCAST_SLOT`]).
    Broadcast,
}

impl Destination {
    /// The destination a `to` field names: [`BROADCAST_SLOT`] is a broadcast, anything
    /// else a slot (the relay checks it against the room's size).
    pub fn from_wire(to: u16) -> Destination {
        if to == BROADCAST_SLOT { Destination::Broadcast } else { Destination::Slot(to) }
    }

    /// The `to` field for this destination.
    pub fn to_wire(self) -> u16 {
        match self {
            Destination::Slot(slot) => slot,
            Destination::Broadcast => BROADCAST_SLOT,
        }
    }
}

/// The header of a client data frame to `to`; the payload follows it.
pub fn client_header(to: Destination) -> [u8; CLIENT_HEADER_LEN] {
    to.to_wire().to_le_bytes()
}

/// A whole client data frame: `[to u16 LE][payload]`.
pub fn encode_client_frame(to: Destination, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(CLIENT_HEADER_LEN + payload.len());
    frame.extend_from_slice(&client_header(to));
    frame.extend_from_slice(payload);
    frame
}

/// Splits a client data frame into its destination and payload; `None` when it is
/// shorter than the 2-byte header (the relay answers `malformed_frame`).
pub fn parse_client_frame(frame: &[u8]) -> Option<(Destination, &[u8])> {
    let (header, payload) = frame.split_first_chunk::<CLIENT_HEADER_LEN>()?;
    Some((Destination::from_wire(u16::from_le_bytes(*header)), payload))
}

/// The header of a relay data frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayHeader {
    /// The receiver's sequence number: 1, 2, 3, ... with no gaps.
    pub seq: u64,
    /// The sender's slot, stamped by the relay.
    pub from: u16,
    /// Whether the sender broadcast it ([`FLAG_BROADCAST`]).
    pub broadcast: bool,
}

impl RelayHeader {
    /// The 12 header bytes; the payload follows them.
    pub fn encode(&self) -> [u8; RELAY_HEADER_LEN] {
        let mut h = [0u8; RELAY_HEADER_LEN];
        h[..8].copy_from_slice(&self.seq.to_le_bytes());
        h[8..10].copy_from_slice(&self.from.to_le_bytes());
        let flags = if self.broadcast { FLAG_BROADCAST } else { 0 };
        h[10..].copy_from_slice(&flags.to_le_bytes());
        h
    }

    /// A whole relay data frame: this header, then `payload`.
    pub fn encode_frame(&self, payload: &[u8]) -> Vec<u8> {
        let mut frame = Vec::with_capacity(RELAY_HEADER_LEN + payload.len());
        frame.extend_from_slice(&self.encode());
        frame.extend_from_slice(payload);
        frame
    }

    /// Splits a relay data frame into its header and payload; `None` when it is shorter
    /// than the 12-byte header. Flag bits other than [`FLAG_BROADCAST`] are ignored.
    pub fn parse(frame: &[u8]) -> Option<(RelayHeader, &[u8])> {
        let (h, payload) = frame.split_first_chunk::<RELAY_HEADER_LEN>()?;
        let seq = u64::from_le_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]);
        let from = u16::from_le_bytes([h[8], h[9]]);
        let flags = u16::from_le_bytes([h[10], h[11]]);
        Some((RelayHeader { seq, from, broadcast: flags & FLAG_BROADCAST != 0 }, payload))
    }
}

/// A control event from the relay (a text frame), e.g.
/// `{"type":"joined","slot":2}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerEvent {
    /// Always the first frame after the upgrade.
    Welcome(Welcome),
    /// Every slot has joined at least once.
    Ready {
        /// Number of slots.
        room_size: u16,
    },
    /// Another party connected (first time or reconnect).
    Joined {
        /// Its slot.
        slot: u16,
    },
    /// Another party's connection dropped (its slot is held), or it sent `leave`.
    Left {
        /// Its slot.
        slot: u16,
    },
    /// A non-fatal problem with something the party sent; the connection stays open.
    Error {
        /// What went wrong.
        code: ErrorCode,
        /// Human-readable explanation.
        #[serde(default)]
        message: String,
        /// The refused data frame, by the party's own count of the data frames it sent
        /// in this room (1, 2, 3, ... across connections; see [`Welcome::received`]).
        /// Absent when a text frame was refused.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        frame: Option<u64>,
    },
    /// A party aborted the room (`abort`): the relay closes every connection with
    /// close code 4002 right after, and the room is over.
    Aborted {
        /// The slot that aborted, stamped by the relay.
        slot: u16,
        /// Its reason, at most [`MAX_ABORT_REASON_BYTES`].
        #[serde(default)]
        reason: String,
    },
    /// The answer to a `status` request.
    Status(RoomStatus),
    /// Sent just before the relay closes the connection with this close code.
    Closing {
        /// The close code (see [`crate::CloseCode`]).
        code: u16,
        /// The close reason.
        #[serde(default)]
        reason: String,
    },
}

impl ServerEvent {
    /// The event as the JSON text frame the relay sends.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a control event always serializes")
    }

    /// Reads a control event from a text frame.
    pub fn parse(text: &str) -> Result<ServerEvent, ProtoError> {
        Ok(serde_json::from_str(text)?)
    }
}

/// What a party learns when it joins (the `welcome` event).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The room's ID.
    pub room_uuid: String,
    /// This party's slot.
    pub slot: u16,
    /// Number of slots.
    pub room_size: u16,
    /// Give this back (with `last_seq`) to reconnect to the same slot.
    pub resume_token: String,
    /// When the room expires, Unix seconds.
    pub expires_at: u64,
    /// Slots connected now, this one included.
    pub present: Vec<u16>,
    /// Whether this connection resumed a slot.
    pub resumed: bool,
    /// The seq the next data frame to this party will carry.
    pub next_seq: u64,
    /// Data frames the relay has taken from this slot so far, over all its
    /// connections (delivered, or refused with an `error` naming them). A party that
    /// resumes sends again exactly its frames after this one. Absent (0) from relays
    /// that predate it.
    #[serde(default)]
    pub received: u64,
}

/// The room as a `status` event describes it, each list indexed by slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomStatus {
    /// Slots connected now.
    pub present: Vec<u16>,
    /// Data frames the relay has taken from each slot (its `received` count).
    pub sent: Vec<u64>,
    /// Milliseconds since each slot last sent a data frame (since the room was created
    /// for a slot that never sent).
    pub idle_ms: Vec<u64>,
}

/// A control message from a client (a text frame).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientControl {
    /// `{"type":"ack","seq":N}`: everything up to `seq` was received.
    Ack {
        /// The highest seq received.
        seq: u64,
    },
    /// `{"type":"leave"}`: this party is done.
    Leave,
    /// `{"type":"abort","reason":"..."}`: this party stops the protocol for everyone
    /// (e.g. it caught a cheater); the others get `aborted` naming its slot.
    Abort {
        /// Why, for the others (cut to [`MAX_ABORT_REASON_BYTES`] by the relay).
        #[serde(default)]
        reason: String,
    },
    /// `{"type":"status"}`: asks for a `status` event.
    Status,
}

impl ClientControl {
    /// Reads a control text frame; `None` for anything else (the relay answers
    /// `bad_control`). Unknown extra fields are ignored.
    pub fn parse(text: &str) -> Option<ClientControl> {
        serde_json::from_str(text).ok()
    }

    /// The control message as the JSON text frame a client sends.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a control message always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_map_to_and_from_the_wire() {
        assert_eq!(Destination::from_wire(0xFFFF), Destination::Broadcast);
        assert_eq!(Destination::from_wire(3), Destination::Slot(3));
        assert_eq!(Destination::Broadcast.to_wire(), BROADCAST_SLOT);
        assert_eq!(Destination::Slot(0xFFFE).to_wire(), 0xFFFE);
    }

    #[test]
    fn client_frames_put_the_destination_first() {
        assert_eq!(encode_client_frame(Destination::Slot(2), b"hi"), [2, 0, b'h', b'i']);
        assert_eq!(encode_client_frame(Destination::Broadcast, b"x"), [0xFF, 0xFF, b'x']);
        assert_eq!(parse_client_frame(&[1, 0]), Some((Destination::Slot(1), &[][..])));
        assert_eq!(parse_client_frame(&[1]), None);
        assert_eq!(parse_client_frame(&[]), None);
    }

    #[test]
    fn relay_headers_read_seq_sender_and_broadcast_flag() {
        let h = RelayHeader { seq: 7, from: 3, broadcast: true };
        let frame = h.encode_frame(b"payload");
        assert_eq!(&frame[..12], &[7, 0, 0, 0, 0, 0, 0, 0, 3, 0, 1, 0]);
        assert_eq!(RelayHeader::parse(&frame), Some((h, &b"payload"[..])));
        assert_eq!(RelayHeader::parse(&frame[..11]), None);
        // Unknown flag bits are ignored.
        let mut odd = frame.clone();
        odd[10] = 0xFE;
        assert_eq!(RelayHeader::parse(&odd).map(|(h, _)| h.broadcast), Some(false));
    }

    #[test]
    fn client_control_is_lenient_about_extra_fields_only() {
        assert_eq!(ClientControl::parse(r#"{"type":"ack","seq":5}"#), Some(ClientControl::Ack { seq: 5 }));
        assert_eq!(
            ClientControl::parse(r#"{"seq":5,"type":"ack","x":1}"#),
            Some(ClientControl::Ack { seq: 5 })
        );
        assert_eq!(ClientControl::parse(r#"{"type":"leave","why":"done"}"#), Some(ClientControl::Leave));
        assert_eq!(ClientControl::parse(r#"{"type":"ack"}"#), None);
        assert_eq!(ClientControl::parse(r#"{"type":"ack","seq":-1}"#), None);
        assert_eq!(ClientControl::parse(r#"{"type":"nope"}"#), None);
        assert_eq!(ClientControl::parse("leave"), None);
        assert_eq!(ClientControl::Leave.to_json(), r#"{"type":"leave"}"#);
        assert_eq!(ClientControl::Ack { seq: 9 }.to_json(), r#"{"type":"ack","seq":9}"#);
    }

    #[test]
    fn server_events_tolerate_missing_text_and_unknown_codes() {
        let e = ServerEvent::parse(r#"{"type":"error","code":"from_the_future"}"#).unwrap();
        assert_eq!(e, ServerEvent::Error { code: ErrorCode::Unknown, message: String::new(), frame: None });
        assert!(ServerEvent::parse(r#"{"type":"status"}"#).is_err());
    }

    #[test]
    fn abort_reasons_are_cut_at_a_character_boundary() {
        assert_eq!(bound_abort_reason("cheater: slot 2"), "cheater: slot 2");
        let long = "é".repeat(MAX_ABORT_REASON_BYTES);
        let cut = bound_abort_reason(&long);
        assert!(cut.len() <= MAX_ABORT_REASON_BYTES && cut.len() > MAX_ABORT_REASON_BYTES - 2);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
