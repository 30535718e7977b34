//! The embedded backend: the keys in one sled database under the data directory.
//!
//! Trees: `keys` (name -> [`KeyRecord`] as JSON, holding the key's SHA-256, never the
//! key), `usage` (name -> [`Usage`] as JSON, the totals rewritten by each usage flush),
//! `meta` (schema version, admin token SHA-256). Every write is flushed before it
//! returns. These calls block (sled flushes to disk): [`crate::storage::Backend`] runs
//! them on tokio's blocking threads.

use std::path::Path;

use crate::error::KeystoreError;
use crate::record::{KeyRecord, Usage};
use crate::secret::KeyDigest;
use crate::storage::{Loaded, StoredKey};

const KEYS_TREE: &str = "keys";
const USAGE_TREE: &str = "usage";
pub(crate) const META_TREE: &str = "meta";
pub(crate) const SCHEMA_VERSION_KEY: &str = "schema_version";
const SCHEMA_VERSION: &str = "1";
const ADMIN_DIGEST_KEY: &str = "admin_token_sha256";

/// One open sled database. Cheap to clone (sled handles are reference-counted).
#[derive(Clone)]
pub(crate) struct SledStore {
    db: sled::Db,
    keys: sled::Tree,
    usage: sled::Tree,
    meta: sled::Tree,
}

impl SledStore {
    /// Opens (creating if needed) the database in `dir` and reads everything in it.
    pub(crate) fn open(dir: &Path) -> Result<(SledStore, Loaded), KeystoreError> {
        let data_dir_error =
            |source: std::io::Error| KeystoreError::DataDir { path: dir.to_path_buf(), source };
        std::fs::create_dir_all(dir).map_err(data_dir_error)?;
        let db = open_db(dir)?;
        let store = SledStore {
            keys: db.open_tree(KEYS_TREE)?,
            usage: db.open_tree(USAGE_TREE)?,
            meta: db.open_tree(META_TREE)?,
            db,
        };
        store.check_schema()?;
        let loaded = Loaded { keys: store.load_keys()?, admin: store.load_admin_digest()? };
        Ok((store, loaded))
    }

    /// Stores a new key; `false` when the name is taken.
    pub(crate) fn insert_new(&self, name: &str, record: &KeyRecord) -> Result<bool, KeystoreError> {
        let value = encode_record(name, record)?;
        if self.keys.compare_and_swap(name, None::<&[u8]>, Some(value))?.is_err() {
            return Ok(false);
        }
        if let Err(e) = self.db.flush() {
            // Undo so a later restart does not find a key the caller was told failed.
            let _ = self.keys.remove(name);
            return Err(e.into());
        }
        Ok(true)
    }

    /// Writes (inserting or replacing) the given records.
    pub(crate) fn put_records(&self, records: &[(String, KeyRecord)]) -> Result<(), KeystoreError> {
        for (name, record) in records {
            self.keys.insert(name.as_str(), encode_record(name, record)?)?;
        }
        if !records.is_empty() {
            self.db.flush()?;
        }
        Ok(())
    }

    /// Marks key `name` revoked at `now` unless it already is; the record after, or
    /// `None` for an unknown name.
    pub(crate) fn revoke(&self, name: &str, now: u64) -> Result<Option<KeyRecord>, KeystoreError> {
        let Some(value) = self.keys.get(name)? else { return Ok(None) };
        let mut record = decode_record(name, &value)?;
        if record.revoked_at.is_none() {
            record.revoked_at = Some(now);
            self.keys.insert(name, encode_record(name, &record)?)?;
            self.db.flush()?;
        }
        Ok(Some(record))
    }

    /// Stores the admin token's digest (unless `only_if_absent` and one is stored) and
    /// returns the digest stored after the call.
    pub(crate) fn set_admin_digest(
        &self,
        digest: KeyDigest,
        only_if_absent: bool,
    ) -> Result<KeyDigest, KeystoreError> {
        if only_if_absent && let Some(existing) = self.load_admin_digest()? {
            return Ok(existing);
        }
        self.meta.insert(ADMIN_DIGEST_KEY, &digest.0[..])?;
        self.db.flush()?;
        Ok(digest)
    }

    /// Writes the usage totals of the given keys.
    pub(crate) fn write_usage(&self, totals: &[(String, Usage)]) -> Result<(), KeystoreError> {
        for (name, usage) in totals {
            let value = serde_json::to_vec(usage).map_err(|e| KeystoreError::Corrupt {
                record: format!("{USAGE_TREE}/{name}"),
                reason: e.to_string(),
            })?;
            self.usage.insert(name.as_bytes(), value)?;
        }
        self.db.flush()?;
        Ok(())
    }

    /// Writes the schema version on first open; refuses a data directory written by a
    /// future layout.
    fn check_schema(&self) -> Result<(), KeystoreError> {
        match self.meta.get(SCHEMA_VERSION_KEY)? {
            None => {
                self.meta.insert(SCHEMA_VERSION_KEY, SCHEMA_VERSION)?;
                self.db.flush()?;
                Ok(())
            }
            Some(v) if v.as_ref() == SCHEMA_VERSION.as_bytes() => Ok(()),
            Some(v) => Err(KeystoreError::Corrupt {
                record: format!("{META_TREE}/{SCHEMA_VERSION_KEY}"),
                reason: format!(
                    "schema {} is not the supported schema {SCHEMA_VERSION}",
                    String::from_utf8_lossy(&v)
                ),
            }),
        }
    }

    fn load_keys(&self) -> Result<Vec<StoredKey>, KeystoreError> {
        let mut out = Vec::new();
        for item in self.keys.iter() {
            let (name, value) = item?;
            let name = String::from_utf8(name.to_vec()).map_err(|_| KeystoreError::Corrupt {
                record: format!("{KEYS_TREE}/<non-UTF-8 name>"),
                reason: "name is not UTF-8".to_owned(),
            })?;
            let record = decode_record(&name, &value)?;
            let digest = record.digest().ok_or_else(|| KeystoreError::Corrupt {
                record: format!("{KEYS_TREE}/{name}"),
                reason: "sha256 is not 64 hex digits".into(),
            })?;
            let usage = match self.usage.get(name.as_bytes())? {
                Some(v) => serde_json::from_slice(&v).map_err(|e| KeystoreError::Corrupt {
                    record: format!("{USAGE_TREE}/{name}"),
                    reason: e.to_string(),
                })?,
                None => Usage::default(),
            };
            out.push(StoredKey { name, digest, record, usage });
        }
        Ok(out)
    }

    fn load_admin_digest(&self) -> Result<Option<KeyDigest>, KeystoreError> {
        let Some(value) = self.meta.get(ADMIN_DIGEST_KEY)? else {
            return Ok(None);
        };
        let bytes: [u8; 32] = value.as_ref().try_into().map_err(|_| KeystoreError::Corrupt {
            record: format!("{META_TREE}/{ADMIN_DIGEST_KEY}"),
            reason: format!("{} bytes, expected 32", value.len()),
        })?;
        Ok(Some(KeyDigest(bytes)))
    }
}

/// How long `open` waits for a lock that a store just dropped in this process may still
/// hold: sled releases its file lock from a background flusher thread, a moment after
/// the last handle is dropped. A server that really runs holds it far longer.
const LOCK_RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Opens the sled database in `dir`, waiting up to [`LOCK_RELEASE_WAIT`] for its lock.
fn open_db(dir: &Path) -> Result<sled::Db, KeystoreError> {
    let deadline = std::time::Instant::now() + LOCK_RELEASE_WAIT;
    loop {
        match sled::Config::new().path(dir).open().map_err(|e| open_error(dir, e)) {
            Err(KeystoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Maps sled's open failure: its lock failure (an `Other` I/O error whose text starts
/// with "could not acquire lock", sled 0.34) to [`KeystoreError::Locked`], other I/O
/// failures to [`KeystoreError::DataDir`].
fn open_error(dir: &Path, e: sled::Error) -> KeystoreError {
    match e {
        sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
            KeystoreError::Locked { path: dir.to_path_buf() }
        }
        sled::Error::Io(source) => KeystoreError::DataDir { path: dir.to_path_buf(), source },
        other => KeystoreError::Storage(other),
    }
}

fn encode_record(name: &str, record: &KeyRecord) -> Result<Vec<u8>, KeystoreError> {
    serde_json::to_vec(record)
        .map_err(|e| KeystoreError::Corrupt { record: format!("{KEYS_TREE}/{name}"), reason: e.to_string() })
}

fn decode_record(name: &str, value: &[u8]) -> Result<KeyRecord, KeystoreError> {
    serde_json::from_slice(value)
        .map_err(|e| KeystoreError::Corrupt { record: format!("{KEYS_TREE}/{name}"), reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyStore;

    fn test_dir() -> tempfile::TempDir {
        tempfile::tempdir().expect("temporary directory")
    }

    #[test]
    fn lock_failure_maps_to_locked() {
        let dir = test_dir();
        let first = KeyStore::open(dir.path()).expect("first open");
        let err = KeyStore::open(dir.path()).expect_err("second open must fail");
        assert!(matches!(err, KeystoreError::Locked { .. }), "{err:?}");
        assert!(err.to_string().starts_with("database locked: is a relay-server already running"));
        drop(first);
    }

    #[test]
    fn a_file_as_data_dir_is_a_data_dir_error() {
        let dir = test_dir();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").expect("write file");
        let err = KeyStore::open(&file).expect_err("a file is not a directory");
        assert!(matches!(err, KeystoreError::DataDir { .. }), "{err:?}");
    }

    #[test]
    fn a_future_schema_is_refused() {
        let dir = test_dir();
        {
            let db = sled::open(dir.path()).expect("sled");
            let meta = db.open_tree(META_TREE).expect("tree");
            meta.insert(SCHEMA_VERSION_KEY, "2").expect("insert");
            db.flush().expect("flush");
        }
        let err = KeyStore::open(dir.path()).expect_err("schema 2");
        assert!(matches!(err, KeystoreError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn a_damaged_record_is_refused_without_panicking() {
        let dir = test_dir();
        {
            let db = sled::open(dir.path()).expect("sled");
            db.open_tree(KEYS_TREE).expect("tree").insert("k", "{not json").expect("insert");
            db.flush().expect("flush");
        }
        let err = KeyStore::open(dir.path()).expect_err("bad record");
        assert_eq!(err.to_string().split(':').next(), Some("stored record keys/k is unreadable"));
    }
}
