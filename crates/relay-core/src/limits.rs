//! The limits of rooms and the mailbox, in one struct with documented defaults.

use std::time::Duration;

/// Every limit relay-core enforces. The defaults suit a relay for threshold-signing
/// wallets on a small machine; the binary exposes each as a flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest number of parties in one room (default 64).
    pub max_room_size: u16,
    /// Largest number of live rooms at once (default 100,000); past it creation is refused.
    pub max_rooms: usize,
    /// Largest single message, room data frame or mailbox frame, in bytes (default 1 MiB).
    pub max_message_bytes: usize,
    /// Bytes a room may hold: undelivered plus delivered-but-unacked (default 16 MiB).
    pub max_room_held_bytes: usize,
    /// Bytes of stored messages one mailbox namespace may hold (default 64 MiB).
    pub max_namespace_held_bytes: usize,
    /// Shards of one mailbox namespace, each with its own lock, chosen by message ID
    /// (default 16): asks and publishes of IDs in different shards never contend. More
    /// shards spread a busy namespace over more cores; each costs about 130 bytes per
    /// live namespace.
    pub mailbox_namespace_shards: usize,
    /// Asks one mailbox connection may have waiting at once (default 10,000).
    pub max_pending_asks: usize,
    /// Cap on a mailbox message's TTL and on an ask's wait (default 1 h).
    pub max_mailbox_ttl: Duration,
    /// Room lifetime when the creator gives none (default 10 min).
    pub room_ttl_default: Duration,
    /// Longest room lifetime a creator may ask for (default 24 h).
    pub room_ttl_max: Duration,
    /// How long a room outlives its last connected party, waiting for a reconnect
    /// (default 30 s).
    pub reconnect_grace: Duration,
    /// Frames queued towards one connection before it counts as a slow consumer and is
    /// closed with 1013 (default 1024).
    pub send_queue_frames: usize,
    /// Bytes queued towards one mailbox connection before it counts as a slow consumer
    /// and is closed with 1013, counted like [`Limits::send_queue_frames`] (default
    /// 8 MiB).
    pub send_queue_bytes: usize,
    /// Bytes the whole process may hold for clients (default 1 GiB): rooms' held
    /// messages, stored mailbox messages and mailbox send queues, each counted with its
    /// per-entry overhead ([`crate::budget`]). Past it a room message is refused
    /// (`held_bytes_full`), a mailbox PUB closes its connection with 1013, and room
    /// creation answers 503.
    pub max_held_bytes: usize,
    /// Live rooms one API key may have created at once (default 1,000); past it its
    /// creations are refused (429 `too_many_rooms_for_key`) while other keys still
    /// create rooms.
    pub max_rooms_per_key: usize,
    /// A room that nobody has joined this long after its creation closes (default 60 s;
    /// zero turns the check off).
    pub room_join_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_room_size: 64,
            max_rooms: 100_000,
            max_message_bytes: 1 << 20,
            max_room_held_bytes: 16 << 20,
            max_namespace_held_bytes: 64 << 20,
            mailbox_namespace_shards: 16,
            max_pending_asks: 10_000,
            max_mailbox_ttl: Duration::from_secs(3600),
            room_ttl_default: Duration::from_secs(600),
            room_ttl_max: Duration::from_secs(86_400),
            reconnect_grace: Duration::from_secs(30),
            send_queue_frames: 1024,
            send_queue_bytes: 8 << 20,
            max_held_bytes: 1 << 30,
            max_rooms_per_key: 1_000,
            room_join_timeout: Duration::from_secs(60),
        }
    }
}
