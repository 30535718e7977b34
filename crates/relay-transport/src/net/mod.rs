//! Socket-level pieces below HTTP, used by the accept loop and the WebSockets: TLS,
//! trusted proxies and the PROXY protocol, and opt-in busy polling (cargo feature
//! `busy-poll`). They know nothing else of the crate.

#[cfg(feature = "busy-poll")]
pub(crate) mod busy_poll;
pub(crate) mod proxy;
pub(crate) mod tls;

/// Longest busy-poll window accepted (`ServerConfig::busy_poll`): beyond it, a spinning
/// worker is a busy server, not a latency trade. Defined with or without the `busy-poll`
/// feature, so the CLI validates against the same bound either way.
pub const MAX_BUSY_POLL: std::time::Duration = std::time::Duration::from_millis(10);
