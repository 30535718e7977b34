#![doc = include_str!("../README.md")]
//!
//! # Guarantees
//!
//! **Receiving (rooms)**: every data message reaches the [`RoomEvents`] stream exactly
//! once and in `seq` order, across any number of dropped connections, as long as each
//! drop is resumed within the [`ReconnectPolicy`] (and the relay's reconnect grace).
//! The client resumes after the highest `seq` it has put into the stream's queue, drops
//! any replayed `seq` it already has, and treats a jump in `seq` as a protocol error.
//! Acks cover only what the application has taken from the stream, so
//! [`RoomConnection::resume_state`] can even resume from another process.
//!
//! **Sending (rooms)**: every data message is taken by the relay exactly once and in
//! order, across any number of dropped connections resumed in time. The client numbers
//! its data frames (1, 2, 3, ... for the room's life), keeps those the relay has not
//! confirmed, and after a resume sends again exactly the ones numbered above the
//! `welcome`'s `received` count (what the relay took from this slot before the drop),
//! then what was queued while the connection was down. It forgets kept frames on the
//! relay's word: a resume `welcome`, an `error` naming a frame, a `status` event; past
//! [`JoinOptions::send_queue`] kept frames it asks for a `status` itself (that answer is
//! not surfaced). A frame the relay refused ([`RoomEvent::RelayError`] with its
//! `frame` number) counts as taken and is not sent again. Resuming from another process
//! ([`JoinOptions::resume`]) cannot send again what the old process had in flight.
//!
//! **Acks**: the client acks (cumulatively) what the application has taken from the
//! stream, once 64 messages are waiting or every second ([`JoinOptions::ack_every`],
//! [`JoinOptions::ack_interval`]). Messages received but not yet taken are not acked,
//! so the relay's `max_room_held_bytes` bounds the client's receive queue too.
//!
//! **Dead links**: a reset or EOF is noticed at once; a link that just goes silent is
//! noticed after [`JoinOptions::idle_timeout`] (the relay pings every 20 s).
//!
//! **Mailbox**: no resume exists in the mailbox protocol; a dropped connection fails
//! every pending ask with the reason. The relay forgets an unanswered ask silently
//! after its TTL, so [`MailboxClient::ask`] gives up on its own a little later
//! ([`Error::AskExpired`]).
//!
//! # Rooms for MPC
//!
//! [`RoomClient::create_room_with_party_tokens`] binds each slot to a token
//! ([`RoomInfo::party_tokens`]; join with [`JoinOptions::party_token`]), so the
//! relay-stamped sender is the party the backend meant. [`RoomConnection::abort`] ends
//! the room for everyone with a reason ([`RoomEvent::Aborted`], then
//! [`Error::Aborted`]); [`RoomConnection::request_status`] says who is connected and how
//! far each party got ([`RoomEvent::Status`]).
//!
//! # Protocol gaps
//!
//! - The relay confirms taken frames only in `welcome`, `error` and `status`; a party
//!   that sends much and never drops keeps up to [`JoinOptions::send_queue`] frames
//!   (plus what is sent while a `status` answer is on its way).

mod config;
mod error;
mod mailbox;
mod net;
mod room;

pub use config::{ApiKey, ClientConfig, KeyPlacement, TlsRoots};
pub use error::{Error, Result};
pub use mailbox::{
    FLAG_ONE_RECEIVER, MAILBOX_HEADER_LEN, MAILBOX_ID_LEN, MailboxClient, MailboxFrame, MailboxId, RawMailbox,
};
pub use room::{
    BROADCAST_SLOT, Destination, JoinOptions, OutgoingMessage, PartyToken, ReconnectPolicy, ResumeState,
    RoomClient, RoomConnection, RoomEvent, RoomEvents, RoomInfo, RoomMessage, RoomMessages, RoomSender,
    Welcome, create_room, decode_room_frame, join,
};

#[cfg(test)]
mod tests {
    /// Handles move into spawned tasks and are shared by reference across them.
    #[test]
    fn public_handles_are_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<crate::RoomConnection>();
        send_sync::<crate::RoomSender>();
        send_sync::<crate::RoomEvents>();
        send_sync::<crate::RoomMessages>();
        send_sync::<crate::MailboxClient>();
        send_sync::<crate::RawMailbox>();
        send_sync::<crate::Error>();
    }
}
