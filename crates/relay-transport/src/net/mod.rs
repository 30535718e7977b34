//! Socket-level pieces below HTTP, used by the accept loop and the WebSockets: TLS, the
//! burst reader of busy WebSockets, and opt-in busy polling. They know nothing else of
//! the crate.

pub(crate) mod burst;
pub(crate) mod busy_poll;
pub(crate) mod tls;
