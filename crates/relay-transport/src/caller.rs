//! Who a request or connection acts for, and the meter that counts its usage against
//! its API key. Plain data: `http::auth` resolves a caller, the state hands out meters.

use std::sync::Arc;

use relay_core::RoomId;
use relay_keystore::KeyStore;

/// The mailbox namespace of callers when keys are not enforced.
pub(crate) const OPEN_TENANT: &str = "";

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Caller {
    /// The key's tenant: its mailbox namespace, shared by keys of the same tenant.
    pub(crate) tenant: String,
    /// The key's name, for usage accounting; `None` when keys are not enforced.
    pub(crate) key_name: Option<String>,
}

/// Counts messages against one key, in memory (a read lock and three atomic adds per
/// call). Empty when keys are not enforced or the key is unknown.
#[derive(Clone, Default)]
pub(crate) struct UsageMeter(pub(crate) Option<(Arc<KeyStore>, String)>);

impl UsageMeter {
    /// Adds `messages`, `bytes` and `rooms` to the key's usage.
    pub(crate) fn add(&self, messages: u64, bytes: u64, rooms: u64) {
        if let Some((store, name)) = &self.0
            && let Err(e) = store.record_usage(name, messages, bytes, rooms)
        {
            tracing::debug!(key = name.as_str(), "usage not counted: {e}");
        }
    }
}

/// What a WebSocket's right to stay open rests on, checked every
/// `ServerConfig::lease_check_interval` by its driver (`AppState::lease_lapsed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lease {
    /// Nothing: keys not enforced, or a room party (parties join with the room ID alone;
    /// their room closes when its creator's key is revoked).
    Unbound,
    /// The API key it was opened with, by name: revoked or expired, the socket closes
    /// with 1008.
    Key(String),
    /// The room of a room-scoped mailbox: once the room closes, the socket does too.
    Room(RoomId),
}

impl Lease {
    /// The lease of a connection opened by `caller`.
    pub(crate) fn of(caller: &Caller) -> Lease {
        caller.key_name.clone().map_or(Lease::Unbound, Lease::Key)
    }
}
