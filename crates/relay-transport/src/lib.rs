//! The network face of Relay: a hyper 1.x server over an already-bound listener, the
//! WebSocket upgrade, the REST API and its JSON errors.
//!
//! The protocol logic lives in relay-core; this crate only moves bytes between sockets
//! and the core's channels, and maps the core's refusals to statuses and close codes.

pub mod admin;
pub mod announce;
mod auth;
mod burst;
mod busy_poll;
mod config;
pub mod discovery;
mod error;
mod http;
mod mailbox;
mod metrics;
mod openapi;
mod ratelimit;
mod rooms;
mod router;
mod server;
mod tls;
pub mod ws;

pub use busy_poll::MAX_BUSY_POLL;
pub use config::ServerConfig;
pub use error::{ApiError, TransportError};
pub use metrics::KeyUsage;
pub use ratelimit::{Rate, RateLimits};
pub use server::{AppState, serve};
pub use tls::{TlsError, TlsHandle};

/// The README's example, compiled as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The parsers of client bytes that are otherwise private, for the fuzz targets in
/// `fuzz/`. Not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::rooms::{Control, control, parse_data_frame};
}
