//! [`KeyStore`]: the keys on disk (sled) and in memory.
//!
//! Every key is loaded into memory at open, so [`KeyStore::verify`] reads no disk.
//! Writes (create, revoke, preconfigure, admin token) take one mutex, write to sled,
//! flush it, and only then change memory, so an `Ok` means the change survives a crash.
//!
//! On disk (trees of one sled database): `keys` (name -> [`KeyRecord`] as JSON, holding
//! the key's SHA-256, never the key), `usage` (name -> [`Usage`] as JSON, rewritten by
//! [`KeyStore::flush_usage`]), `meta` (schema version, admin token SHA-256).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::error::{KeystoreError, VerifyError};
use crate::record::{
    CreateOptions, KeyInfo, KeyOrigin, KeyRecord, KeyStatus, Usage, VerifiedKey, is_expired,
};
use crate::secret::{ApiKey, KeyDigest, PreconfiguredKey, is_valid_name};
use crate::usage::UsageCounters;

const KEYS_TREE: &str = "keys";
const USAGE_TREE: &str = "usage";
pub(crate) const META_TREE: &str = "meta";
const SCHEMA_VERSION_KEY: &str = "schema_version";
const SCHEMA_VERSION: &str = "1";

/// The API key store of one data directory. Open it once per process and share it
/// (`Arc<KeyStore>`); all methods take `&self` and are safe to call from many threads.
///
/// Dropping the store writes pending usage counters (best effort, failures logged); call
/// [`KeyStore::flush_usage`] at shutdown to see a failure.
pub struct KeyStore {
    db: sled::Db,
    keys: sled::Tree,
    usage: sled::Tree,
    pub(crate) meta: sled::Tree,
    state: RwLock<State>,
    /// Held across "check, write to sled, flush, update memory" so two writers cannot
    /// both pass a check (e.g. the same name) before either writes.
    pub(crate) writes: Mutex<()>,
    /// Held across a usage flush, so two concurrent flushes cannot write an older
    /// snapshot over a newer one.
    usage_flush: Mutex<()>,
    /// SHA-256 of the admin token, if one was set or generated.
    pub(crate) admin_digest: RwLock<Option<KeyDigest>>,
}

/// One key in memory. Entries are never removed (a revoked name stays taken), so their
/// indices in [`State::entries`] are stable.
struct Entry {
    name: String,
    digest: KeyDigest,
    tenant: String,
    created_at: u64,
    expires_at: u64,
    revoked_at: Option<u64>,
    origin: KeyOrigin,
    /// Always true for created keys; for preconfigured ones, whether this run's
    /// `preconfigure` listed them.
    configured: bool,
    usage: UsageCounters,
}

#[derive(Default)]
struct State {
    entries: Vec<Entry>,
    by_name: HashMap<String, usize>,
    /// Entries by the first 8 bytes of their digest. Lookup only narrows the search;
    /// the match itself is a constant-time comparison of all 32 bytes.
    by_bucket: HashMap<u64, Vec<usize>>,
}

impl KeyStore {
    /// Opens (creating if needed) the store in `dir`.
    ///
    /// Fails with [`KeystoreError::Locked`] when another process, or another `KeyStore`
    /// in this one, has `dir` open; with [`KeystoreError::DataDir`] when `dir` cannot be
    /// created or used; with [`KeystoreError::Corrupt`] when a stored record does not
    /// decode. Preconfigured keys stay disabled until [`KeyStore::preconfigure`] lists
    /// them.
    pub fn open(dir: &Path) -> Result<Self, KeystoreError> {
        let data_dir_error =
            |source: std::io::Error| KeystoreError::DataDir { path: dir.to_path_buf(), source };
        std::fs::create_dir_all(dir).map_err(data_dir_error)?;
        let db = open_db(dir)?;
        let keys = db.open_tree(KEYS_TREE)?;
        let usage = db.open_tree(USAGE_TREE)?;
        let meta = db.open_tree(META_TREE)?;
        check_schema(&db, &meta)?;
        let state = load_state(&keys, &usage)?;
        let admin_digest = crate::admin::load_admin_digest(&meta)?;
        tracing::debug!(dir = %dir.display(), keys = state.entries.len(), "key store opened");
        Ok(Self {
            db,
            keys,
            usage,
            meta,
            state: RwLock::new(state),
            writes: Mutex::new(()),
            usage_flush: Mutex::new(()),
            admin_digest: RwLock::new(admin_digest),
        })
    }

    /// Creates a key named `name` at `now` (unix seconds) and returns it with its info.
    /// The key is shown here only: the store keeps its SHA-256.
    ///
    /// Refuses an invalid name or tenant (1 to 64 characters of `A-Z a-z 0-9 . _ -`),
    /// a name already used (also by a revoked key) with [`KeystoreError::NameTaken`],
    /// and an expiry not after `now` with [`KeystoreError::ExpiryInPast`]. Durable on
    /// `Ok`.
    pub fn create(
        &self,
        name: &str,
        options: CreateOptions,
        now: u64,
    ) -> Result<(ApiKey, KeyInfo), KeystoreError> {
        if !is_valid_name(name) {
            return Err(KeystoreError::InvalidName { name: name.to_owned() });
        }
        let tenant = options.tenant.unwrap_or_else(|| name.to_owned());
        if !is_valid_name(&tenant) {
            return Err(KeystoreError::InvalidTenant { tenant });
        }
        if options.expires_at != 0 && options.expires_at <= now {
            return Err(KeystoreError::ExpiryInPast { expires_at: options.expires_at, now });
        }
        let _writing = self.lock_writes();
        if self.read_state().by_name.contains_key(name) {
            return Err(KeystoreError::NameTaken { name: name.to_owned() });
        }
        // 128 random bits: a digest clash with an existing key is not a practical event,
        // so it is not checked for.
        let key = ApiKey::generate()?;
        let digest = key.digest();
        let record = KeyRecord {
            sha256: digest.to_hex(),
            tenant,
            created_at: now,
            expires_at: options.expires_at,
            revoked_at: None,
            origin: KeyOrigin::Created,
        };
        let value = encode_record(name, &record)?;
        if self.keys.compare_and_swap(name, None::<&[u8]>, Some(value))?.is_err() {
            return Err(KeystoreError::NameTaken { name: name.to_owned() });
        }
        if let Err(e) = self.db.flush() {
            // Undo so a later restart does not find a key the caller was told failed.
            let _ = self.keys.remove(name);
            return Err(e.into());
        }
        let info = self.write_state().insert(name, digest, &record, true, Usage::default());
        tracing::info!(key = name, tenant = %info.tenant, expires_at = info.expires_at, "API key created");
        Ok((key, info))
    }

    /// Applies this run's `--api-key` values at `now` (unix seconds) and returns the
    /// resulting state of each listed key, in order (the server can warn about revoked
    /// ones).
    ///
    /// - A new name is stored as a preconfigured key that never expires.
    /// - A known preconfigured name with the same key is kept as it is: a revoked one
    ///   stays revoked. With a different key, the stored digest is replaced (key
    ///   rotation), unless the name was revoked: then nothing changes and the name stays
    ///   revoked (choose a new name).
    /// - A name that belongs to a created key is refused unless it is the same key
    ///   ([`KeystoreError::PreconfiguredNameConflict`]); a key already stored under
    ///   another name is refused ([`KeystoreError::DuplicateKey`]); a name or key given
    ///   twice in `keys` is refused by position ([`KeystoreError::ApiKeyArgAt`]).
    /// - Preconfigured keys stored earlier but not listed now are disabled (verify says
    ///   [`VerifyError::Unknown`]) until listed again; their usage and revocation stay.
    ///
    /// Nothing is written unless every value is accepted. Durable on `Ok`.
    pub fn preconfigure(&self, keys: &[PreconfiguredKey], now: u64) -> Result<Vec<KeyInfo>, KeystoreError> {
        PreconfiguredKey::check_unique(keys)?;
        let _writing = self.lock_writes();
        // Decide everything first, so a refused value leaves the store untouched.
        let mut writes: Vec<(&str, KeyDigest, KeyRecord)> = Vec::new();
        {
            let state = self.read_state();
            for pk in keys {
                let digest = pk.key.digest();
                if let Some(other) = state.find(&digest).filter(|e| e.name != pk.name) {
                    return Err(KeystoreError::DuplicateKey {
                        name: pk.name.clone(),
                        existing: other.name.clone(),
                    });
                }
                match state.get(&pk.name) {
                    Some(entry) if entry.digest.ct_eq(&digest) => {}
                    Some(entry) if entry.origin == KeyOrigin::Created => {
                        return Err(KeystoreError::PreconfiguredNameConflict { name: pk.name.clone() });
                    }
                    Some(entry) if entry.revoked_at.is_some() => {
                        tracing::warn!(
                            key = %pk.name,
                            "preconfigured key is revoked and stays revoked; its new --api-key value is ignored (use a new name)"
                        );
                    }
                    Some(entry) => {
                        let mut record = entry.record();
                        record.sha256 = digest.to_hex();
                        tracing::info!(key = %pk.name, "preconfigured key replaced by a new --api-key value");
                        writes.push((&pk.name, digest, record));
                    }
                    None => {
                        let record = KeyRecord {
                            sha256: digest.to_hex(),
                            tenant: pk.name.clone(),
                            created_at: now,
                            expires_at: 0,
                            revoked_at: None,
                            origin: KeyOrigin::Preconfigured,
                        };
                        writes.push((&pk.name, digest, record));
                    }
                }
            }
        }
        for (name, _, record) in &writes {
            self.keys.insert(*name, encode_record(name, record)?)?;
        }
        if !writes.is_empty() {
            self.db.flush()?;
        }
        let mut state = self.write_state();
        for (name, digest, record) in &writes {
            match state.by_name.get(*name).copied() {
                Some(i) => {
                    if let Some(entry) = state.entries.get_mut(i) {
                        entry.digest = *digest;
                    }
                }
                None => {
                    state.insert(name, *digest, record, true, Usage::default());
                }
            }
        }
        for entry in &mut state.entries {
            if entry.origin == KeyOrigin::Preconfigured {
                entry.configured = keys.iter().any(|pk| pk.name == entry.name);
            }
        }
        state.rebuild_buckets();
        Ok(keys.iter().filter_map(|pk| state.get(&pk.name).map(Entry::info)).collect())
    }

    /// Checks a presented key (standard base64 text, or 32 hexadecimal characters) at `now` (unix seconds) and returns
    /// its name and tenant. In memory, constant-time digest comparison; call it per
    /// request or per connection.
    pub fn verify(&self, presented: &str, now: u64) -> Result<VerifiedKey, VerifyError> {
        let key = ApiKey::parse_base64_or_hex(presented).ok_or(VerifyError::Malformed)?;
        let digest = key.digest();
        let state = self.read_state();
        let entry = state.find(&digest).ok_or(VerifyError::Unknown)?;
        if entry.revoked_at.is_some() {
            return Err(VerifyError::Revoked);
        }
        if is_expired(entry.expires_at, now) {
            return Err(VerifyError::Expired);
        }
        if !entry.configured {
            return Err(VerifyError::Unknown);
        }
        Ok(VerifiedKey { name: entry.name.clone(), tenant: entry.tenant.clone() })
    }

    /// Revokes the key `name` at `now` (unix seconds). Revoking a revoked key changes
    /// nothing and returns its info. Durable on `Ok`; [`KeystoreError::NotFound`] for
    /// an unknown name.
    pub fn revoke(&self, name: &str, now: u64) -> Result<KeyInfo, KeystoreError> {
        let _writing = self.lock_writes();
        let mut record = {
            let state = self.read_state();
            let entry = state.get(name).ok_or_else(|| KeystoreError::NotFound { name: name.to_owned() })?;
            if entry.revoked_at.is_some() {
                return Ok(entry.info());
            }
            entry.record()
        };
        record.revoked_at = Some(now);
        self.keys.insert(name, encode_record(name, &record)?)?;
        self.db.flush()?;
        let mut state = self.write_state();
        let i = state.by_name.get(name).copied();
        let entry = i
            .and_then(|i| state.entries.get_mut(i))
            .ok_or_else(|| KeystoreError::NotFound { name: name.to_owned() })?;
        entry.revoked_at = Some(now);
        tracing::info!(key = name, "API key revoked");
        Ok(entry.info())
    }

    /// Every key (revoked and expired ones too), sorted by name.
    pub fn list(&self) -> Vec<KeyInfo> {
        let state = self.read_state();
        let mut all: Vec<KeyInfo> = state.entries.iter().map(Entry::info).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// The key named `name`, if any.
    pub fn get(&self, name: &str) -> Option<KeyInfo> {
        self.read_state().get(name).map(Entry::info)
    }

    /// Whether key `name` would be accepted at `now` (unix seconds), and if not, why;
    /// `None` for an unknown name. A read lock and no allocation: live connections
    /// call it periodically to end when their key is revoked or expires.
    pub fn status(&self, name: &str, now: u64) -> Option<KeyStatus> {
        let state = self.read_state();
        let entry = state.get(name)?;
        Some(if entry.revoked_at.is_some() {
            KeyStatus::Revoked
        } else if is_expired(entry.expires_at, now) {
            KeyStatus::Expired
        } else if !entry.configured {
            KeyStatus::NotConfigured
        } else {
            KeyStatus::Active
        })
    }

    /// Adds to the usage of key `name`: in memory only (a read lock and three atomic
    /// adds), written by the next [`KeyStore::flush_usage`]. Counters saturate.
    pub fn record_usage(
        &self,
        name: &str,
        messages: u64,
        bytes: u64,
        rooms: u64,
    ) -> Result<(), KeystoreError> {
        let state = self.read_state();
        let entry = state.get(name).ok_or_else(|| KeystoreError::NotFound { name: name.to_owned() })?;
        entry.usage.add(messages, bytes, rooms);
        Ok(())
    }

    /// Writes the usage of every key changed since the last call, then flushes sled.
    /// Returns how many keys were written. Call it periodically and at shutdown; on an
    /// error the counters stay pending for the next call.
    pub fn flush_usage(&self) -> Result<usize, KeystoreError> {
        let _flushing = self.usage_flush.lock().unwrap_or_else(PoisonError::into_inner);
        let pending: Vec<(String, Usage)> = {
            let state = self.read_state();
            state
                .entries
                .iter()
                .filter_map(|e| e.usage.take_if_dirty().map(|u| (e.name.clone(), u)))
                .collect()
        };
        if pending.is_empty() {
            return Ok(0);
        }
        let result = self.write_usage(&pending);
        if result.is_err() {
            let state = self.read_state();
            for (name, _) in &pending {
                if let Some(entry) = state.get(name) {
                    entry.usage.mark_dirty();
                }
            }
        }
        result.map(|()| pending.len())
    }

    fn write_usage(&self, pending: &[(String, Usage)]) -> Result<(), KeystoreError> {
        for (name, usage) in pending {
            let value = serde_json::to_vec(usage).map_err(|e| KeystoreError::Corrupt {
                record: format!("{USAGE_TREE}/{name}"),
                reason: e.to_string(),
            })?;
            self.usage.insert(name.as_bytes(), value)?;
        }
        self.db.flush()?;
        Ok(())
    }

    pub(crate) fn lock_writes(&self) -> MutexGuard<'_, ()> {
        self.writes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn flush_db(&self) -> Result<(), KeystoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for KeyStore {
    fn drop(&mut self) {
        if let Err(e) = self.flush_usage() {
            tracing::warn!(error = %e, "key store closed without writing pending usage");
        }
    }
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore").field("keys", &self.read_state().entries.len()).finish()
    }
}

impl State {
    fn get(&self, name: &str) -> Option<&Entry> {
        self.by_name.get(name).and_then(|&i| self.entries.get(i))
    }

    /// The entry whose digest equals `digest`, compared in constant time.
    fn find(&self, digest: &KeyDigest) -> Option<&Entry> {
        let candidates = self.by_bucket.get(&digest.bucket())?;
        let mut found = None;
        for &i in candidates {
            if let Some(entry) = self.entries.get(i)
                && entry.digest.ct_eq(digest)
            {
                found = Some(entry);
            }
        }
        found
    }

    fn insert(
        &mut self,
        name: &str,
        digest: KeyDigest,
        record: &KeyRecord,
        configured: bool,
        usage: Usage,
    ) -> KeyInfo {
        let entry = Entry {
            name: name.to_owned(),
            digest,
            tenant: record.tenant.clone(),
            created_at: record.created_at,
            expires_at: record.expires_at,
            revoked_at: record.revoked_at,
            origin: record.origin,
            configured,
            usage: UsageCounters::starting_at(usage),
        };
        let info = entry.info();
        let i = self.entries.len();
        self.entries.push(entry);
        self.by_name.insert(name.to_owned(), i);
        self.by_bucket.entry(digest.bucket()).or_default().push(i);
        info
    }

    fn rebuild_buckets(&mut self) {
        self.by_bucket.clear();
        for (i, entry) in self.entries.iter().enumerate() {
            self.by_bucket.entry(entry.digest.bucket()).or_default().push(i);
        }
    }
}

impl Entry {
    fn info(&self) -> KeyInfo {
        KeyInfo {
            name: self.name.clone(),
            tenant: self.tenant.clone(),
            created_at: self.created_at,
            expires_at: self.expires_at,
            revoked_at: self.revoked_at,
            origin: self.origin,
            configured: self.configured,
            usage: self.usage.snapshot(),
        }
    }

    fn record(&self) -> KeyRecord {
        KeyRecord {
            sha256: self.digest.to_hex(),
            tenant: self.tenant.clone(),
            created_at: self.created_at,
            expires_at: self.expires_at,
            revoked_at: self.revoked_at,
            origin: self.origin,
        }
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

/// Writes the schema version on first open; refuses a data directory written by a
/// future layout.
fn check_schema(db: &sled::Db, meta: &sled::Tree) -> Result<(), KeystoreError> {
    match meta.get(SCHEMA_VERSION_KEY)? {
        None => {
            meta.insert(SCHEMA_VERSION_KEY, SCHEMA_VERSION)?;
            db.flush()?;
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

fn load_state(keys: &sled::Tree, usage: &sled::Tree) -> Result<State, KeystoreError> {
    let mut state = State::default();
    for item in keys.iter() {
        let (name, value) = item?;
        let name = String::from_utf8(name.to_vec()).map_err(|_| KeystoreError::Corrupt {
            record: format!("{KEYS_TREE}/<non-UTF-8 name>"),
            reason: "name is not UTF-8".to_owned(),
        })?;
        let corrupt =
            |reason: String| KeystoreError::Corrupt { record: format!("{KEYS_TREE}/{name}"), reason };
        let record: KeyRecord = serde_json::from_slice(&value).map_err(|e| corrupt(e.to_string()))?;
        let digest = record.digest().ok_or_else(|| corrupt("sha256 is not 64 hex digits".into()))?;
        let counted = match usage.get(name.as_bytes())? {
            Some(v) => serde_json::from_slice(&v).map_err(|e| KeystoreError::Corrupt {
                record: format!("{USAGE_TREE}/{name}"),
                reason: e.to_string(),
            })?,
            None => Usage::default(),
        };
        // Created keys are live at once; preconfigured ones wait for `preconfigure`.
        let configured = record.origin == KeyOrigin::Created;
        state.insert(&name, digest, &record, configured, counted);
    }
    Ok(state)
}

fn encode_record(name: &str, record: &KeyRecord) -> Result<Vec<u8>, KeystoreError> {
    serde_json::to_vec(record)
        .map_err(|e| KeystoreError::Corrupt { record: format!("{KEYS_TREE}/{name}"), reason: e.to_string() })
}

/// Where a test store lives: a fresh temporary directory.
#[cfg(test)]
pub(crate) fn test_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temporary directory")
}

#[cfg(test)]
mod tests {
    use super::*;

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
