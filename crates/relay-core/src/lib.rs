//! The protocol core of Relay: room IDs, rooms, the mailbox and their limits.
//!
//! No sockets, no disk, no HTTP. Time comes from `tokio::time` (rooms) or is passed in
//! as `now` (mailbox store), so tests control it. A Rust service can drive rooms and
//! mailboxes through channels without the transport crate: see [`rooms`] and the
//! crate README.

mod error;
pub mod id;
mod limits;
pub mod mailbox;
pub mod rooms;
mod signal;

pub use error::CoreError;
pub use id::{RoomId, RoomIdPrefix};
pub use limits::Limits;
pub use mailbox::{AskEnd, Mailbox, MailboxConn, MailboxError, Namespace};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
