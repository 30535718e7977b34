//! The one error enum of relay-core.

use crate::id::RoomIdError;
use crate::mailbox::MailboxError;

/// What relay-core refuses, and why. Each variant maps to one HTTP status or close code
/// (or, for a send, one `error` event) in the transport.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CoreError {
    /// A room ID or prefix did not parse.
    #[error(transparent)]
    RoomId(#[from] RoomIdError),
    /// A room size outside 2..=`max_room_size`.
    #[error("room_size must be between 2 and {max}, got {got}")]
    BadRoomSize {
        /// The size asked for.
        got: u64,
        /// The largest size allowed.
        max: u16,
    },
    /// A room TTL outside 1 s..=`room_ttl_max`.
    #[error("ttl_secs must be between 1 and {max_secs}, got {got_secs}")]
    BadTtl {
        /// The TTL asked for, in seconds.
        got_secs: u64,
        /// The longest TTL allowed, in seconds.
        max_secs: u64,
    },
    /// `max_rooms` rooms are live already.
    #[error("too many rooms: this relay holds its maximum of {0} live rooms")]
    TooManyRooms(usize),
    /// The creating key has `max_rooms_per_key` rooms live already.
    #[error("too many rooms for this key: it has its maximum of {0} live rooms")]
    TooManyRoomsForKey(usize),
    /// Holding this would pass the process-wide `max_held_bytes`.
    #[error("the relay holds its maximum of {max} bytes for clients; try again later")]
    HeldBytesFull {
        /// The bound in bytes.
        max: usize,
    },
    /// Rooms, and a mailbox with its sweeper, are created inside a tokio runtime (each
    /// runs a timer task).
    #[error("must run inside a tokio runtime")]
    NoRuntime,
    /// No such room: it never existed, expired, or closed.
    #[error("no such room (it never existed, expired or closed)")]
    RoomNotFound,
    /// Every slot of the room already has a party.
    #[error("the room is full: all {0} slots are taken")]
    RoomFull(u16),
    /// The asked slot already has a party (joining it again needs its resume token).
    #[error("slot {0} is taken; reconnect to it with its resume token")]
    SlotTaken(u16),
    /// The asked slot is not in the room.
    #[error("slot {slot} is out of range for a room of {room_size}")]
    BadSlot {
        /// The slot asked for.
        slot: u16,
        /// The room's size.
        room_size: u16,
    },
    /// The room was created with party tokens and the join brought none, or one that
    /// is not this room's (or is another slot's than the one asked for).
    #[error("this room is joined with a party token; it is missing or not this room's")]
    BadPartyToken,
    /// The system's random source failed (party tokens cannot be drawn).
    #[error("no randomness for party tokens: {0}")]
    Random(String),
    /// The resume token is not one of this room's, or its party has left for good.
    #[error("the resume token is not valid for this room")]
    BadResumeToken,
    /// `last_seq` is older than the oldest message the relay still holds.
    #[error("cannot resume after seq {last_seq}: everything up to {acked} was acked and forgotten")]
    ResumeGap {
        /// The `last_seq` the party gave.
        last_seq: u64,
        /// Everything up to this seq was acked and is gone.
        acked: u64,
    },
    /// `last_seq` is past the last message the relay numbered for this party.
    #[error("last_seq {last_seq} is past the last seq {last} numbered for this party")]
    ResumeAhead {
        /// The `last_seq` the party gave.
        last_seq: u64,
        /// The last seq the relay numbered for it.
        last: u64,
    },
    /// A send to the sender's own slot or to a slot outside the room.
    #[error("bad destination slot {0}")]
    BadDestination(u16),
    /// A send would push the room's held bytes past `max_room_held_bytes`.
    #[error("the room's buffer is full ({max} bytes held); wait for receivers to ack")]
    RoomBufferFull {
        /// The room's bound in bytes.
        max: usize,
    },
    /// A payload over `max_message_bytes`.
    #[error("message of {got} bytes is over the {max}-byte limit")]
    MessageTooBig {
        /// The payload's size.
        got: usize,
        /// The limit.
        max: usize,
    },
    /// The party's connection is over: the room closed, it left, or it was replaced.
    #[error("this party is no longer connected to the room")]
    PartyClosed,
    /// The mailbox refused a frame or a connection.
    #[error(transparent)]
    Mailbox(#[from] MailboxError),
}
