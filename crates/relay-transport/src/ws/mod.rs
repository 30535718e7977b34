//! WebSockets: the upgrade (handshake checks, tungstenite config), the vectored write of
//! binary frames, the connection driver shared by both kinds (`driver`), and what each
//! kind plugs into it (a room party, a mailbox connection).

pub(crate) mod driver;
pub(crate) mod mailbox;
pub(crate) mod read;
pub(crate) mod room;
mod upgrade;
pub(crate) mod write;

pub use upgrade::{WsStream, close_message};
pub(crate) use upgrade::{poll_next_message, upgrade, validate_handshake};
