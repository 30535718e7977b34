//! WebSockets: the upgrade (handshake checks, tungstenite config), the vectored write of
//! binary frames, and the connection of each kind (a room party, a mailbox).

pub(crate) mod mailbox;
pub(crate) mod room;
mod upgrade;
pub(crate) mod write;

pub(crate) use upgrade::{
    SUBPROTOCOL_API_KEY, SUBPROTOCOL_RESUME, offered_credential, poll_next_message, upgrade,
    validate_handshake,
};
pub use upgrade::{WsStream, close, close_message};
