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
//! **Sending (rooms)**: messages queued while the connection is down are sent after
//! the resume, in order. A message whose write to the socket failed is sent again after
//! the resume (it never fully left). But a message the socket accepted shortly before
//! the drop may have been lost in the kernel's buffers or on the wire: the protocol has
//! no acknowledgement of client-to-relay frames and the resume `welcome` does not say
//! how many frames the relay accepted from this party, so the client cannot know and
//! does not resend (resending could deliver it twice). Sends are therefore *at most
//! once* across a drop; a protocol that needs exactly-once should have the relay report
//! an accepted-frame count in `welcome`.
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
//! # Protocol gaps
//!
//! - Exactly-once sends across a drop need the relay to say what it accepted: e.g. a
//!   `received` count (data frames accepted from this slot) in the resume `welcome`.
//!   With it, the client would keep unconfirmed frames and resend exactly the tail the
//!   relay did not get. Without it, sends are at most once across a drop (above).
//! - A non-fatal `error` event (`room_buffer_full`, `bad_destination`,
//!   `malformed_frame`) does not say which frame it refuses. With several sends in
//!   flight the client cannot tell which message was dropped, so it surfaces the event
//!   as [`RoomEvent::RelayError`] and does not retry: an application that can hit the
//!   room's held-bytes bound must watch for it.

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
