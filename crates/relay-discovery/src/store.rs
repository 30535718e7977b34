//! Where groups are kept: the [`GroupStore`] trait, in memory or in sled.
//!
//! A store holds records as they are, expired or not; TTL is the business of
//! [`crate::Groups`], which reads the clock.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use crate::error::DiscoveryError;
use crate::group::GroupRecord;

/// Storage for group records, keyed by group ID.
pub trait GroupStore: Send + Sync {
    /// The record with this ID, if stored.
    fn get(&self, id: &str) -> Result<Option<GroupRecord>, DiscoveryError>;
    /// Stores `record` under its group's ID, replacing any previous one. Durable when
    /// it returns, for stores that persist.
    fn put(&self, record: &GroupRecord) -> Result<(), DiscoveryError>;
    /// Removes the record with this ID; whether it was there.
    fn remove(&self, id: &str) -> Result<bool, DiscoveryError>;
    /// Every stored record, in ID order.
    fn all(&self) -> Result<Vec<GroupRecord>, DiscoveryError>;
}

/// Groups in memory: lost on restart, as in Disco.
#[derive(Debug, Default)]
pub struct MemoryGroupStore {
    records: Mutex<BTreeMap<String, GroupRecord>>,
}

impl MemoryGroupStore {
    /// An empty store.
    pub fn new() -> MemoryGroupStore {
        MemoryGroupStore::default()
    }

    fn records(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, GroupRecord>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl GroupStore for MemoryGroupStore {
    fn get(&self, id: &str) -> Result<Option<GroupRecord>, DiscoveryError> {
        Ok(self.records().get(id).cloned())
    }

    fn put(&self, record: &GroupRecord) -> Result<(), DiscoveryError> {
        self.records().insert(record.group.id.clone(), record.clone());
        Ok(())
    }

    fn remove(&self, id: &str) -> Result<bool, DiscoveryError> {
        Ok(self.records().remove(id).is_some())
    }

    fn all(&self) -> Result<Vec<GroupRecord>, DiscoveryError> {
        Ok(self.records().values().cloned().collect())
    }
}

/// How long [`SledGroupStore::open`] waits for a lock a just-dropped store may hold.
const LOCK_RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Groups in a sled database: one JSON record per group in the `groups` tree, flushed
/// before a write returns, so a group survives a crash right after it was acknowledged.
#[derive(Debug, Clone)]
pub struct SledGroupStore {
    db: sled::Db,
    tree: sled::Tree,
}

impl SledGroupStore {
    /// Opens (or creates) the database in directory `path`. A store just dropped in
    /// this process may still hold the database's lock for a moment (sled releases it
    /// from a background thread): `open` waits up to two seconds for it.
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
        Ok(SledGroupStore { db, tree })
    }

    fn decode(key: &[u8], value: &[u8]) -> Result<GroupRecord, DiscoveryError> {
        serde_json::from_slice(value).map_err(|source| DiscoveryError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            source,
        })
    }
}

impl GroupStore for SledGroupStore {
    fn get(&self, id: &str) -> Result<Option<GroupRecord>, DiscoveryError> {
        self.tree.get(id)?.map(|v| Self::decode(id.as_bytes(), &v)).transpose()
    }

    fn put(&self, record: &GroupRecord) -> Result<(), DiscoveryError> {
        let bytes = serde_json::to_vec(record)
            .map_err(|source| DiscoveryError::Corrupt { key: record.group.id.clone(), source })?;
        self.tree.insert(record.group.id.as_bytes(), bytes)?;
        self.db.flush()?;
        Ok(())
    }

    fn remove(&self, id: &str) -> Result<bool, DiscoveryError> {
        let existed = self.tree.remove(id)?.is_some();
        if existed {
            self.db.flush()?;
        }
        Ok(existed)
    }

    fn all(&self) -> Result<Vec<GroupRecord>, DiscoveryError> {
        self.tree
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                Self::decode(&k, &v)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::Group;

    fn record(id: &str, owner: Option<&str>) -> GroupRecord {
        GroupRecord {
            group: Group { id: id.into(), name: format!("group {id}"), ..Group::default() },
            owner: owner.map(str::to_owned),
        }
    }

    fn exercise(store: &dyn GroupStore) {
        assert_eq!(store.get("a").unwrap(), None);
        store.put(&record("b", Some("k1"))).unwrap();
        store.put(&record("a", None)).unwrap();
        assert_eq!(store.get("b").unwrap(), Some(record("b", Some("k1"))));
        let ids: Vec<String> = store.all().unwrap().into_iter().map(|r| r.group.id).collect();
        assert_eq!(ids, ["a", "b"]);
        assert!(store.remove("a").unwrap());
        assert!(!store.remove("a").unwrap());
        assert_eq!(store.all().unwrap().len(), 1);
    }

    #[test]
    fn memory_store_keeps_and_removes_records() {
        exercise(&MemoryGroupStore::new());
    }

    #[test]
    fn sled_store_keeps_records_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledGroupStore::open(dir.path()).unwrap();
            exercise(&store);
        }
        let store = SledGroupStore::open(dir.path()).unwrap();
        assert_eq!(store.all().unwrap(), vec![record("b", Some("k1"))]);
    }
}
