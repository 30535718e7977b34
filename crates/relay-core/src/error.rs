//! The one error enum of relay-core.

use crate::id::RoomIdError;
use crate::mailbox::MailboxError;

/// What relay-core refuses, and why. Each variant maps to one HTTP status or close code
/// in the transport.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CoreError {
    /// A room ID or prefix did not parse.
    #[error(transparent)]
    RoomId(#[from] RoomIdError),
    /// The mailbox refused a frame or a connection.
    #[error(transparent)]
    Mailbox(#[from] MailboxError),
}
