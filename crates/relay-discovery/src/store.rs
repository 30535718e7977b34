//! Where groups are kept: the [`GroupStore`] trait, in memory, in sled, or (see
//! [`crate::PgGroupStore`]) in PostgreSQL.
//!
//! A store holds records as they are, expired or not, keyed by (tenant, ID). Every
//! change is one read-modify-write ([`GroupStore::modify`]) that the store makes atomic
//! (a lock in this process, a transaction with an advisory lock in PostgreSQL), so an
//! ownership check and the write it allows see the same record on every instance.
//! Nothing here runs on an async worker thread while it waits for a disk: sled's
//! writes and flushes run in `spawn_blocking`, and no lock is held across a flush.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::DiscoveryError;
use crate::group::{Group, GroupRecord};

/// What a read-modify-write decided, given the record stored under its key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant, reason = "one short-lived value per request; boxing buys nothing")]
pub enum Write {
    /// Store this record under the key (its tenant and ID are the key's).
    Put {
        /// The record to store.
        record: GroupRecord,
        /// Whether this write gives the record's owner one more live group, so it is
        /// checked against the [`Quota`] (a create, or taking over an expired ID).
        creates: bool,
    },
    /// Remove the stored record.
    Remove,
}

/// The decision of a read-modify-write: given the stored record (expired or not),
/// what to write, or why not.
pub type Decide = Box<dyn FnOnce(Option<GroupRecord>) -> Result<Write, DiscoveryError> + Send>;

/// A limit on the live groups one owner (one API key, or the keyless callers of the
/// open tenant) holds in a tenant, checked by a [`Write::Put`] that `creates`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// The most live groups an owner may hold (`--max-groups-per-key`).
    pub max: usize,
    /// The time in unix seconds, to tell live groups from expired ones.
    pub now: u64,
    /// The TTL of a group that sets none, in seconds.
    pub default_ttl_secs: u64,
}

/// Unix seconds at which `group` expires: `LastUpdated + TTL`, saturating.
pub fn expires_at(group: &Group, default_ttl_secs: u64) -> u64 {
    group.last_updated.saturating_add(group.ttl_secs.unwrap_or(default_ttl_secs))
}

/// Storage for group records, keyed by (tenant, group ID).
#[async_trait::async_trait]
pub trait GroupStore: Send + Sync {
    /// The record of `id` in `tenant`, if stored.
    async fn get(&self, tenant: &str, id: &str) -> Result<Option<GroupRecord>, DiscoveryError>;
    /// Every stored record of `tenant` (of every tenant when `None`), in (tenant, ID)
    /// order.
    async fn list(&self, tenant: Option<&str>) -> Result<Vec<GroupRecord>, DiscoveryError>;
    /// Atomically: reads the record of (`tenant`, `id`), asks `decide`, checks `quota`
    /// when the decision creates a group for its owner, and applies it. Durable when
    /// it returns, for stores that persist. Returns what was written.
    async fn modify(
        &self,
        tenant: &str,
        id: &str,
        quota: Option<Quota>,
        decide: Decide,
    ) -> Result<Write, DiscoveryError>;
    /// Removes every record expired at `now`; how many this call removed. Idempotent:
    /// two instances sweeping one database at once remove each record once.
    async fn remove_expired(&self, now: u64, default_ttl_secs: u64) -> Result<usize, DiscoveryError>;
    /// Whether the storage answers now (PostgreSQL: a `SELECT 1`); always for local stores.
    async fn check(&self) -> Result<(), DiscoveryError> {
        Ok(())
    }
}

/// Counts the live groups of `owner` in `records`, other than `id`.
fn live_owned<'a>(
    records: impl Iterator<Item = &'a GroupRecord>,
    owner: Option<&str>,
    id: &str,
    quota: &Quota,
) -> usize {
    records
        .filter(|r| {
            r.owner.as_deref() == owner
                && r.group.id != id
                && expires_at(&r.group, quota.default_ttl_secs) > quota.now
        })
        .count()
}

/// Applies the quota to a decision.
fn check_quota(
    write: &Write,
    quota: Option<&Quota>,
    owned: impl FnOnce(&Quota, &GroupRecord) -> Result<usize, DiscoveryError>,
) -> Result<(), DiscoveryError> {
    if let (Write::Put { record, creates: true }, Some(quota)) = (write, quota)
        && owned(quota, record)? >= quota.max
    {
        return Err(DiscoveryError::TooManyGroups { max: quota.max });
    }
    Ok(())
}

/// Groups in memory: lost on restart, as in Disco.
#[derive(Debug, Default)]
pub struct MemoryGroupStore {
    records: Mutex<BTreeMap<(String, String), GroupRecord>>,
}

impl MemoryGroupStore {
    /// An empty store.
    pub fn new() -> MemoryGroupStore {
        MemoryGroupStore::default()
    }

    fn records(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), GroupRecord>> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl GroupStore for MemoryGroupStore {
    async fn get(&self, tenant: &str, id: &str) -> Result<Option<GroupRecord>, DiscoveryError> {
        Ok(self.records().get(&(tenant.to_owned(), id.to_owned())).cloned())
    }

    async fn list(&self, tenant: Option<&str>) -> Result<Vec<GroupRecord>, DiscoveryError> {
        Ok(self.records().values().filter(|r| tenant.is_none_or(|t| r.tenant == t)).cloned().collect())
    }

    async fn modify(
        &self,
        tenant: &str,
        id: &str,
        quota: Option<Quota>,
        decide: Decide,
    ) -> Result<Write, DiscoveryError> {
        let key = (tenant.to_owned(), id.to_owned());
        let mut records = self.records();
        let write = decide(records.get(&key).cloned())?;
        check_quota(&write, quota.as_ref(), |q, record| {
            let tenant_records = records.values().filter(|r| r.tenant == tenant);
            Ok(live_owned(tenant_records, record.owner.as_deref(), id, q))
        })?;
        match &write {
            Write::Put { record, .. } => {
                records.insert(key, record.clone());
            }
            Write::Remove => {
                records.remove(&key);
            }
        }
        Ok(write)
    }

    async fn remove_expired(&self, now: u64, default_ttl_secs: u64) -> Result<usize, DiscoveryError> {
        let mut records = self.records();
        let before = records.len();
        records.retain(|_, r| expires_at(&r.group, default_ttl_secs) > now);
        Ok(before - records.len())
    }
}

/// How long [`SledGroupStore::open`] waits for a lock a just-dropped store may hold.
const LOCK_RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Groups in a sled database: one JSON record per group in the `groups` tree under
/// `tenant \0 ID`, flushed before a write returns, so a group survives a crash right
/// after it was acknowledged. Every sled call runs in `spawn_blocking`; the lock that
/// makes read-modify-writes atomic is released before the flush.
#[derive(Debug, Clone)]
pub struct SledGroupStore {
    db: sled::Db,
    tree: sled::Tree,
    /// Serializes read-modify-writes (held on a blocking thread, never across a flush).
    write: Arc<Mutex<()>>,
}

/// The sled key of (tenant, ID). Tenants and IDs never contain NUL.
fn sled_key(tenant: &str, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(tenant.len() + 1 + id.len());
    key.extend_from_slice(tenant.as_bytes());
    key.push(0);
    key.extend_from_slice(id.as_bytes());
    key
}

impl SledGroupStore {
    /// Opens (or creates) the database in directory `path`. A store just dropped in
    /// this process may still hold the database's lock for a moment (sled releases it
    /// from a background thread): `open` waits up to two seconds for it. Records of a
    /// version without tenants (keyed by ID alone) move to the open tenant's keys.
    /// Blocking: call it at start, or in `spawn_blocking`.
    pub fn open(path: impl AsRef<Path>) -> Result<SledGroupStore, DiscoveryError> {
        let deadline = std::time::Instant::now() + LOCK_RELEASE_WAIT;
        let db = loop {
            match sled::open(path.as_ref()) {
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                opened => break opened?,
            }
        };
        let tree = db.open_tree("groups")?;
        let store = SledGroupStore { db, tree, write: Arc::default() };
        store.rekey_untenanted()?;
        Ok(store)
    }

    /// Moves records keyed by ID alone (written before tenants) under `"" \0 ID`.
    fn rekey_untenanted(&self) -> Result<(), DiscoveryError> {
        let mut moved = 0usize;
        for kv in self.tree.iter() {
            let (key, value) = kv?;
            if key.contains(&0) {
                continue;
            }
            let mut record = Self::decode(&key, &value)?;
            record.tenant = String::new();
            let bytes = Self::encode(&record)?;
            self.tree.insert(sled_key("", &record.group.id), bytes)?;
            self.tree.remove(&key)?;
            moved += 1;
        }
        if moved > 0 {
            self.db.flush()?;
            tracing::info!(groups = moved, "moved groups stored without a tenant to the open tenant");
        }
        Ok(())
    }

    fn decode(key: &[u8], value: &[u8]) -> Result<GroupRecord, DiscoveryError> {
        serde_json::from_slice(value).map_err(|source| DiscoveryError::Corrupt {
            key: String::from_utf8_lossy(key).replace('\0', "/"),
            source,
        })
    }

    fn encode(record: &GroupRecord) -> Result<Vec<u8>, DiscoveryError> {
        serde_json::to_vec(record)
            .map_err(|source| DiscoveryError::Corrupt { key: record.group.id.clone(), source })
    }

    fn scan(&self, tenant: Option<&str>) -> Result<Vec<GroupRecord>, DiscoveryError> {
        let iter = match tenant {
            Some(t) => self.tree.scan_prefix(sled_key(t, "")),
            None => self.tree.iter(),
        };
        iter.map(|kv| {
            let (k, v) = kv?;
            Self::decode(&k, &v)
        })
        .collect()
    }

    /// Runs `f` on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(SledGroupStore) -> Result<T, DiscoveryError> + Send + 'static,
    ) -> Result<T, DiscoveryError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(store))
            .await
            .map_err(|e| DiscoveryError::Backend(format!("group storage task failed: {e}")))?
    }
}

#[async_trait::async_trait]
impl GroupStore for SledGroupStore {
    async fn get(&self, tenant: &str, id: &str) -> Result<Option<GroupRecord>, DiscoveryError> {
        let key = sled_key(tenant, id);
        self.blocking(move |s| s.tree.get(&key)?.map(|v| Self::decode(&key, &v)).transpose()).await
    }

    async fn list(&self, tenant: Option<&str>) -> Result<Vec<GroupRecord>, DiscoveryError> {
        let tenant = tenant.map(str::to_owned);
        self.blocking(move |s| s.scan(tenant.as_deref())).await
    }

    async fn modify(
        &self,
        tenant: &str,
        id: &str,
        quota: Option<Quota>,
        decide: Decide,
    ) -> Result<Write, DiscoveryError> {
        let (tenant, id) = (tenant.to_owned(), id.to_owned());
        self.blocking(move |s| {
            let key = sled_key(&tenant, &id);
            let write = {
                let _lock = s.write.lock().unwrap_or_else(PoisonError::into_inner);
                let stored = s.tree.get(&key)?.map(|v| Self::decode(&key, &v)).transpose()?;
                let write = decide(stored)?;
                check_quota(&write, quota.as_ref(), |q, record| {
                    let records = s.scan(Some(&tenant))?;
                    Ok(live_owned(records.iter(), record.owner.as_deref(), &id, q))
                })?;
                match &write {
                    Write::Put { record, .. } => {
                        s.tree.insert(&key, Self::encode(record)?)?;
                    }
                    Write::Remove => {
                        s.tree.remove(&key)?;
                    }
                }
                write
            };
            // Outside the lock: other writers go on while this one waits for the disk.
            s.db.flush()?;
            Ok(write)
        })
        .await
    }

    async fn remove_expired(&self, now: u64, default_ttl_secs: u64) -> Result<usize, DiscoveryError> {
        self.blocking(move |s| {
            let removed = {
                let _lock = s.write.lock().unwrap_or_else(PoisonError::into_inner);
                let mut removed = 0;
                for record in s.scan(None)? {
                    if expires_at(&record.group, default_ttl_secs) <= now
                        && s.tree.remove(sled_key(&record.tenant, &record.group.id))?.is_some()
                    {
                        removed += 1;
                    }
                }
                removed
            };
            if removed > 0 {
                s.db.flush()?;
            }
            Ok(removed)
        })
        .await
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn record(tenant: &str, id: &str, owner: Option<&str>, last_updated: u64) -> GroupRecord {
        GroupRecord {
            group: Group { id: id.into(), name: format!("group {id}"), last_updated, ..Group::default() },
            tenant: tenant.into(),
            owner: owner.map(str::to_owned),
        }
    }

    async fn put(
        store: &dyn GroupStore,
        r: GroupRecord,
        quota: Option<Quota>,
    ) -> Result<Write, DiscoveryError> {
        let (tenant, id) = (r.tenant.clone(), r.group.id.clone());
        store
            .modify(&tenant, &id, quota, Box::new(move |_| Ok(Write::Put { record: r, creates: true })))
            .await
    }

    /// The contract every store keeps; the PostgreSQL store runs it too (tests/postgres.rs).
    pub(crate) async fn exercise(store: &dyn GroupStore) {
        assert_eq!(store.get("t1", "a").await.unwrap(), None);
        put(store, record("t1", "b", Some("k1"), 100), None).await.unwrap();
        put(store, record("t1", "a", None, 100), None).await.unwrap();
        put(store, record("t2", "a", Some("k2"), 100), None).await.unwrap();
        assert_eq!(store.get("t1", "b").await.unwrap(), Some(record("t1", "b", Some("k1"), 100)));
        assert_eq!(store.get("t2", "a").await.unwrap().unwrap().owner.as_deref(), Some("k2"));
        assert_eq!(store.get("t2", "b").await.unwrap(), None, "tenants do not share IDs");
        let ids = |rs: Vec<GroupRecord>| {
            rs.into_iter().map(|r| format!("{}/{}", r.tenant, r.group.id)).collect::<Vec<_>>()
        };
        assert_eq!(ids(store.list(Some("t1")).await.unwrap()), ["t1/a", "t1/b"]);
        assert_eq!(ids(store.list(None).await.unwrap()), ["t1/a", "t1/b", "t2/a"]);

        // The quota counts the owner's live groups in the tenant, other than this ID.
        let quota = Quota { max: 2, now: 100, default_ttl_secs: 10 };
        put(store, record("t1", "c", Some("k1"), 100), Some(quota)).await.unwrap();
        let err = put(store, record("t1", "d", Some("k1"), 100), Some(quota)).await.unwrap_err();
        assert!(matches!(err, DiscoveryError::TooManyGroups { max: 2 }), "{err}");
        put(store, record("t1", "c", Some("k1"), 100), Some(quota)).await.unwrap();
        let later = Quota { now: 110, ..quota };
        put(store, record("t1", "d", Some("k1"), 110), Some(later)).await.unwrap();

        // A refusal from decide writes nothing.
        let err = store
            .modify("t1", "a", None, Box::new(|_| Err(DiscoveryError::NotOwner("a".into()))))
            .await
            .unwrap_err();
        assert!(matches!(err, DiscoveryError::NotOwner(_)));
        assert!(store.get("t1", "a").await.unwrap().is_some());
        store.modify("t1", "a", None, Box::new(|_| Ok(Write::Remove))).await.unwrap();
        assert_eq!(store.get("t1", "a").await.unwrap(), None);

        // Expired at 110: t1/b, t1/c, t2/a (LastUpdated 100, TTL 10); t1/d lives.
        assert_eq!(store.remove_expired(109, 10).await.unwrap(), 0);
        assert_eq!(store.remove_expired(110, 10).await.unwrap(), 3);
        assert_eq!(store.remove_expired(110, 10).await.unwrap(), 0, "idempotent");
        assert_eq!(ids(store.list(None).await.unwrap()), ["t1/d"]);
        store.check().await.unwrap();
    }

    #[tokio::test]
    async fn memory_store_keeps_tenants_apart_and_counts_the_quota() {
        exercise(&MemoryGroupStore::new()).await;
    }

    #[tokio::test]
    async fn sled_store_keeps_records_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledGroupStore::open(dir.path()).unwrap();
            exercise(&store).await;
        }
        let store = SledGroupStore::open(dir.path()).unwrap();
        assert_eq!(store.list(None).await.unwrap(), vec![record("t1", "d", Some("k1"), 110)]);
    }

    #[tokio::test]
    async fn sled_records_without_a_tenant_move_to_the_open_tenant() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let tree = db.open_tree("groups").unwrap();
            let old = serde_json::json!({"group": {"ID": "old", "Name": "n", "AppID": "", "PubKey": "",
                "LastUpdated": 5, "Peers": [], "InitialPeers": []}, "owner": "k1"});
            tree.insert("old", serde_json::to_vec(&old).unwrap()).unwrap();
            db.flush().unwrap();
        }
        let store = SledGroupStore::open(dir.path()).unwrap();
        let r = store.get("", "old").await.unwrap().expect("moved to the open tenant");
        assert_eq!((r.tenant.as_str(), r.owner.as_deref(), r.group.last_updated), ("", Some("k1"), 5));
        assert_eq!(store.list(None).await.unwrap().len(), 1);
    }
}
