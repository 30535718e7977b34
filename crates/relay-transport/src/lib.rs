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
//! | [`config`], [`error`], `caller`, `ratelimit`, `metrics`, `stats`, `net`, `state` | the base: configuration, errors, who a request acts for, rate limits, counters and their recent samples, socket-level pieces (TLS, the burst reader, busy polling behind the cargo feature `busy-poll`, on by default), the shared state |
//! | `http` | what REST routes share: bodies and JSON, authentication |
//! | `ws` | the WebSocket upgrade, vectored writes, the connection driver (`ws::driver`) and what each kind plugs into it |
//! | `api` | the routes of each feature: rooms, mailbox, discovery, admin, health, the console's files |
//! | `router`, `openapi` | the one route table (axum + utoipa-axum) and its middleware; the document's frame |
//! | `server` | `serve`: the accept loop, connection caps, graceful shutdown |
//! | `turn` | the embedded STUN/TURN server (UDP and TCP), its auth, limits and accounting |

pub mod admin {
    //! Helpers of the admin API that the binary reuses (redaction for logs, key JSON).
    pub use crate::api::admin::{created_key_json, key_json, redact_path, redact_uri};
}
mod api;
mod caller;
pub mod config;
pub mod dependency;
pub mod error;
mod http;
mod metrics;
mod net;
mod openapi;
mod ratelimit;
pub mod redis_mailbox;
mod router;
mod server;
mod state;
mod stats;
mod turn;
pub mod ws;

pub use config::ServerConfig;
pub use dependency::{Dependencies, DependencyHealth};
pub use error::{ApiError, TransportError};
pub use metrics::KeyUsage;
pub use net::MAX_BUSY_POLL;
pub use net::proxy::{ProxyHeaderError, TrustedProxies, TrustedProxiesError};
pub use net::tls::{TlsError, TlsHandle};
pub use ratelimit::{Rate, RateLimits};
pub use redis_mailbox::{RedisMailbox, RedisMailboxError};
pub use relay_discovery::{Discovery, DiscoveryConfig};
pub use server::serve;
pub use state::AppState;
pub use stats::StatsConfig;
pub use turn::{PeerPolicy, TurnConfig, TurnServer};

/// The README's example, compiled as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The parser of client bytes that is otherwise private, for the fuzz targets in
/// `fuzz/`. Not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::ws::room::parse_data_frame;
}
