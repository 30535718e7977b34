//! The discovery service as a server embeds it: groups in their store (sled in a data
//! directory, memory, or PostgreSQL shared by every instance), the relay registry (in
//! memory, or in the same PostgreSQL), and the sweeper that purges expired groups and
//! registry entries.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::{
    DiscoveryError, GroupStore, GroupTtl, Groups, MemoryGroupStore, PgStores, RegistryConfig, RelayRegistry,
    SledGroupStore, unix_now,
};

/// Default of [`DiscoveryConfig::max_groups_per_key`].
pub const DEFAULT_MAX_GROUPS_PER_KEY: usize = 1_000;

/// Discovery settings: group TTLs, the per-key limit and the relay registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// Default and largest per-group TTL (`--group-ttl`, default 5 minutes).
    pub group_ttl: GroupTtl,
    /// How often expired groups are swept from storage (`--group-ttl-heartbeat`,
    /// default 1 minute). Expired groups are invisible before that anyway.
    pub group_ttl_heartbeat: Duration,
    /// The most live groups one API key may own in its tenant (`--max-groups-per-key`,
    /// default 1,000); with keys not enforced, the most all callers together may own.
    /// The admin token is not limited.
    pub max_groups_per_key: usize,
    /// The relay registry: its token (none = announcements refused) and entry TTLs.
    pub registry: RegistryConfig,
}

impl Default for DiscoveryConfig {
    fn default() -> DiscoveryConfig {
        DiscoveryConfig {
            group_ttl: GroupTtl::default(),
            group_ttl_heartbeat: Duration::from_secs(60),
            max_groups_per_key: DEFAULT_MAX_GROUPS_PER_KEY,
            registry: RegistryConfig::default(),
        }
    }
}

/// The server's discovery state: groups and the relay registry.
pub struct Discovery {
    groups: Arc<Groups>,
    registry: Arc<RelayRegistry>,
    heartbeat: Duration,
    /// `host:port` of the shared PostgreSQL, when the state is there.
    shared: Option<String>,
}

impl Discovery {
    /// Opens the group store: sled in `data_dir/discovery` when a data directory is
    /// given, memory otherwise; the registry in memory. Blocking (sled opens a file):
    /// call it at start.
    pub fn open(config: &DiscoveryConfig, data_dir: Option<&Path>) -> Result<Discovery, DiscoveryError> {
        let store: Arc<dyn GroupStore> = match data_dir {
            Some(dir) => Arc::new(SledGroupStore::open(dir.join("discovery"))?),
            None => Arc::new(MemoryGroupStore::new()),
        };
        Ok(Discovery {
            groups: Arc::new(Groups::new(store, config.group_ttl, config.max_groups_per_key)),
            registry: Arc::new(RelayRegistry::new(config.registry.clone())),
            heartbeat: config.group_ttl_heartbeat,
            shared: None,
        })
    }

    /// Connects to PostgreSQL at `database_url`, runs the migrations, and keeps groups
    /// and registry entries there, shared with every instance using the same database.
    /// [`DiscoveryError::Unavailable`] names PostgreSQL and `host:port` when it cannot
    /// be reached.
    pub async fn open_postgres(
        config: &DiscoveryConfig,
        database_url: &str,
    ) -> Result<Discovery, DiscoveryError> {
        let stores = PgStores::connect(database_url).await?;
        let location = stores.location().to_owned();
        Ok(Discovery {
            groups: Arc::new(Groups::new(
                Arc::new(stores.groups),
                config.group_ttl,
                config.max_groups_per_key,
            )),
            registry: Arc::new(RelayRegistry::with_store(config.registry.clone(), Arc::new(stores.registry))),
            heartbeat: config.group_ttl_heartbeat,
            shared: Some(location),
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

    /// `host:port` of the PostgreSQL server holding the state, if it is shared there.
    pub fn shared_location(&self) -> Option<&str> {
        self.shared.as_deref()
    }

    /// Whether the storage answers now (PostgreSQL: `SELECT 1`; local stores: always).
    pub async fn check_storage(&self) -> Result<(), DiscoveryError> {
        self.groups.store().check().await
    }

    /// The sweeper: removes expired groups and registry entries every heartbeat,
    /// forever. Spawn it once per instance; instances sharing a database may all run
    /// theirs (each expired record is removed once, by whichever comes first).
    pub fn sweeper(&self) -> impl Future<Output = ()> + Send + 'static {
        let (groups, registry, heartbeat) = (self.groups.clone(), self.registry.clone(), self.heartbeat);
        async move {
            let mut tick = tokio::time::interval(heartbeat);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let now = unix_now();
                match groups.sweep(now).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(removed = n, "swept expired groups"),
                    Err(e) => tracing::warn!("sweeping expired groups failed: {e}"),
                }
                match registry.sweep(now).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(removed = n, "swept expired registry entries"),
                    Err(e) => tracing::warn!("sweeping expired registry entries failed: {e}"),
                }
            }
        }
    }
}
