//! The network face of Relay: a hyper 1.x server over an already-bound listener, the
//! REST API on axum, the WebSocket routes and their connection driver, metrics.
//!
//! The protocol logic lives in relay-core and the wire format in relay-proto; this
//! crate only moves bytes between sockets and the core, and maps the core's refusals
//! to statuses and close codes. Its folders are its layers, each importing only the
//! ones listed before it:
//!
//! | module | what |
//! |---|---|
//! | [`config`], [`error`], `state`, `metrics` | the server's configuration, errors, shared state and counters |
//! | `http` | what REST routes share: bodies and JSON, who is calling (`auth`), rate limits |
//! | `ws` | the WebSocket upgrade, vectored writes, and the connection of each kind |
//! | `api` | the routes of each feature: rooms, mailbox, discovery, admin, health |
//! | `router` | the one route table (axum + utoipa-axum), its middleware, `/openapi.json` |
//! | `net` | the accept loop, connection caps, TLS, the burst reader, busy polling |
//! | `turn` | the embedded STUN/TURN server (UDP and TCP), its auth, limits and accounting |

pub mod admin {
    //! Helpers of the admin API that the binary reuses (redaction for logs, key JSON).
    pub use crate::api::admin::{created_key_json, key_json, redact_path, redact_uri};
}
mod api;
pub mod config;
pub mod error;
mod http;
mod metrics;
mod net;
mod openapi;
mod router;
mod state;
mod turn;
pub mod ws;

pub use config::ServerConfig;
pub use error::{ApiError, TransportError};
pub use http::ratelimit::{Rate, RateLimits};
pub use metrics::KeyUsage;
pub use net::accept::serve;
pub use net::busy_poll::MAX_BUSY_POLL;
pub use net::tls::{TlsError, TlsHandle};
pub use relay_discovery::{Discovery, DiscoveryConfig};
pub use state::AppState;
pub use turn::{PeerPolicy, TurnConfig, TurnServer};

/// The README's example, compiled as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The parsers of client bytes that are otherwise private, for the fuzz targets in
/// `fuzz/`. Not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::ws::room::{Control, control, parse_data_frame};
}
