#![doc = include_str!("../README.md")]

mod error;
mod group;
mod groups;
mod json;
mod postgres;
mod registry;
mod service;
mod store;

pub use error::DiscoveryError;
pub use group::{Group, GroupInput, GroupRecord, MAX_GROUP_ID_CHARS, Peer, validate_id};
pub use groups::{GroupTtl, Groups, MayChange, sweep_forever, unix_now};
pub use postgres::{PgGroupStore, PgRegistryStore, PgStores, QUERY_TIMEOUT, location_of};
pub use registry::{
    Announcement, MAX_RELAY_URL_CHARS, MemoryRegistryStore, RegistryConfig, RegistryStore, RegistryToken,
    RelayEntry, RelayRegistry, validate_relay_url, validate_room_id_prefix,
};
pub use service::{DEFAULT_MAX_GROUPS_PER_KEY, Discovery, DiscoveryConfig};
pub use store::{Decide, GroupStore, MemoryGroupStore, Quota, SledGroupStore, Write, expires_at};
