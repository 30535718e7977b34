//! The network below HTTP: the accept loop with its connection caps and deadlines, TLS,
//! the burst reader of busy WebSockets, and opt-in busy polling (cargo feature
//! `busy-poll`).

pub(crate) mod accept;
pub(crate) mod burst;
#[cfg(feature = "busy-poll")]
pub(crate) mod busy_poll;
pub(crate) mod tls;

/// Longest busy-poll window accepted (`ServerConfig::busy_poll`): beyond it, a spinning
/// worker is a busy server, not a latency trade. Defined with or without the `busy-poll`
/// feature, so the CLI validates against the same bound either way.
pub const MAX_BUSY_POLL: std::time::Duration = std::time::Duration::from_millis(10);
