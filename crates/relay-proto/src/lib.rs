//! The Relay wire protocol, written once: what a client and the relay put on the wire.
//!
//! - [`room`]: room data frames (client to relay and relay to client) and the JSON
//!   control events of a room connection.
//! - [`mailbox`]: the Silence Labs compatible mailbox frame (36-byte header).
//! - [`close`]: the WebSocket close codes the relay uses.
//! - [`error`]: every error code the relay sends, in HTTP bodies and `error` events.
//! - [`rest`]: the JSON bodies of the REST API.
//!
//! No I/O, no runtime, no clock: encoders return bytes or JSON text, parsers borrow
//! what they are given. The test vectors in `vectors/` pin every frame, event, close
//! code and error body, for this crate's tests and for clients in other languages.
//! The prose specification is `docs/protocol.md`.

pub mod close;
pub mod error;
pub mod mailbox;
pub mod rest;
pub mod room;

pub use close::CloseCode;
pub use error::{ErrorBody, ErrorCode};

/// What can go wrong decoding protocol data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// A JSON text that is not the expected shape.
    #[error("invalid json: {0}")]
    Json(#[from] serde_json::Error),
    /// An error code this crate does not know (see [`ErrorCode::Unknown`]).
    #[error("unknown error code {0:?}")]
    UnknownErrorCode(String),
    /// A close code this crate does not know.
    #[error("unknown close code {0}")]
    UnknownCloseCode(u16),
    /// A binary frame shorter than its header.
    #[error("frame of {len} bytes is shorter than its {min}-byte header")]
    FrameTooShort {
        /// The frame's length.
        len: usize,
        /// The header's length.
        min: usize,
    },
}

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
