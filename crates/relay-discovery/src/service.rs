//! The discovery service as a server embeds it: groups in their store (sled in a data
//! directory, or memory), the relay registry, and the sweeper that purges expired groups.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::{
    DiscoveryError, GroupStore, GroupTtl, Groups, MemoryGroupStore, RegistryConfig, RelayRegistry,
    SledGroupStore, sweep_forever, unix_now,
};

/// Discovery settings: group TTLs and the relay registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// Default and largest per-group TTL (`--group-ttl`, default 5 minutes).
    pub group_ttl: GroupTtl,
    /// How often expired groups are swept from storage (`--group-ttl-heartbeat`,
    /// default 1 minute). Expired groups are invisible before that anyway.
    pub group_ttl_heartbeat: Duration,
    /// The relay registry: its token (none = announcements refused) and entry TTLs.
    pub registry: RegistryConfig,
}

impl Default for DiscoveryConfig {
    fn default() -> DiscoveryConfig {
        DiscoveryConfig {
            group_ttl: GroupTtl::default(),
            group_ttl_heartbeat: Duration::from_secs(60),
            registry: RegistryConfig::default(),
        }
    }
}

/// The server's discovery state: groups and the relay registry.
pub struct Discovery {
    groups: Arc<Groups>,
    registry: RelayRegistry,
    heartbeat: Duration,
}

impl Discovery {
    /// Opens the group store: sled in `data_dir/discovery` when a data directory is
    /// given, memory otherwise.
    pub fn open(config: &DiscoveryConfig, data_dir: Option<&Path>) -> Result<Discovery, DiscoveryError> {
        let store: Arc<dyn GroupStore> = match data_dir {
            Some(dir) => Arc::new(SledGroupStore::open(dir.join("discovery"))?),
            None => Arc::new(MemoryGroupStore::new()),
        };
        Ok(Discovery {
            groups: Arc::new(Groups::new(store, config.group_ttl)),
            registry: RelayRegistry::new(config.registry.clone()),
            heartbeat: config.group_ttl_heartbeat,
        })
    }

    /// The groups.
    pub fn groups(&self) -> &Groups {
        &self.groups
    }

    /// The relay registry.
    pub fn registry(&self) -> &RelayRegistry {
        &self.registry
    }

    /// The sweeper: removes expired groups every heartbeat, forever. Spawn it once.
    pub fn sweeper(&self) -> impl Future<Output = ()> + Send + 'static {
        sweep_forever(self.groups.clone(), self.heartbeat, unix_now)
    }
}
