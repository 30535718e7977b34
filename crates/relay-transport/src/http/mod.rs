//! What the REST routes share: JSON bodies and queries, who is calling.

pub(crate) mod auth;
pub(crate) mod body;
pub(crate) mod subprotocol;
