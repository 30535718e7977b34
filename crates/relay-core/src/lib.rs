//! The protocol core of Relay: room IDs, rooms, the mailbox and their limits.
//!
//! No sockets, no disk, no HTTP, no wall clock. Time comes from `tokio::time` (room
//! deadlines) or is passed in: `now` (mailbox), `now_unix` (a room's `expires_at`), so
//! tests control it. Frame layouts, destinations and close codes are `relay_proto`'s.
//! A Rust service can drive rooms and mailboxes through channels without the transport
//! crate: see [`rooms`] and the crate README.

pub mod budget;
mod error;
pub mod id;
mod limits;
pub mod mailbox;
pub mod rooms;
mod signal;

pub use budget::HeldBytes;
pub use error::CoreError;
pub use id::{RoomId, RoomIdPrefix};
pub use limits::Limits;
pub use mailbox::{AskEnd, Mailbox, MailboxConn, MailboxError, Namespace};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
