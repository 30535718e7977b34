#![doc = include_str!("../README.md")]

mod error;
mod group;
mod groups;
mod json;
mod registry;
mod service;
mod store;

pub use error::DiscoveryError;
pub use group::{Group, GroupInput, GroupRecord, MAX_GROUP_ID_CHARS, Peer, validate_id};
pub use groups::{GroupTtl, Groups, sweep_forever, unix_now};
pub use registry::{
    Announcement, MAX_RELAY_URL_CHARS, RegistryConfig, RegistryToken, RelayEntry, RelayRegistry,
    validate_relay_url, validate_room_id_prefix,
};
pub use service::{Discovery, DiscoveryConfig};
pub use store::{GroupStore, MemoryGroupStore, SledGroupStore};
