//! The network below HTTP: the accept loop with its connection caps and deadlines, TLS,
//! the burst reader of busy WebSockets, and opt-in busy polling.

pub(crate) mod accept;
pub(crate) mod burst;
pub(crate) mod busy_poll;
pub(crate) mod tls;
