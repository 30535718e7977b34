//! [`KeyStore`]: the keys in memory, committed to a [`Backend`] (sled by default,
//! PostgreSQL for a deployment of several instances).
//!
//! Every key is loaded into memory at open, so [`KeyStore::verify`] reads no storage.
//! Writes (create, revoke, preconfigure, admin token) take one async mutex, commit to
//! the backend (sled: written and flushed on a blocking thread; PostgreSQL: a committed
//! transaction), and only then change memory, so an `Ok` means the change survives a
//! crash. With PostgreSQL, other instances' changes arrive through LISTEN/NOTIFY
//! ([`crate::pg::listen`]) and are applied to the same memory.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::error::{KeystoreError, VerifyError};
use crate::pg::{HealthObserver, PgStore};
use crate::record::{
    CreateOptions, KeyInfo, KeyOrigin, KeyRecord, KeyStatus, Usage, VerifiedKey, is_expired,
};
use crate::secret::{ApiKey, KeyDigest, PreconfiguredKey, is_valid_name};
use crate::sled_store::SledStore;
use crate::storage::{Backend, Loaded, StoredKey, UsageWrite};
use crate::usage::UsageCounters;

/// The API key store of one data directory or one PostgreSQL database. Open it once
/// per process and share it (`Arc<KeyStore>`); all methods take `&self` and are safe
/// to call from many threads. The write methods are async and need a tokio runtime.
///
/// Dropping a sled store writes pending usage counters (best effort, failures logged);
/// call [`KeyStore::flush_usage`] at shutdown to see a failure.
pub struct KeyStore {
    memory: Arc<Memory>,
    pub(crate) backend: Backend,
    /// Held across "check, commit, update memory" so two writers in this process cannot
    /// both pass a check (e.g. the same name) before either writes. Async: it is held
    /// across the commit.
    pub(crate) writes: tokio::sync::Mutex<()>,
    /// Held across a usage flush, so two concurrent flushes cannot interleave.
    usage_flush: tokio::sync::Mutex<()>,
    /// PostgreSQL: the task that LISTENs and reconnects; aborted on drop.
    supervisor: Option<tokio::task::JoinHandle<()>>,
}

/// What verification reads: the keys and the admin token's digest. Shared with the
/// PostgreSQL listener, which applies other instances' changes.
#[derive(Default)]
pub(crate) struct Memory {
    state: RwLock<State>,
    /// SHA-256 of the admin token, if one was set or generated.
    admin_digest: RwLock<Option<KeyDigest>>,
    /// Told the name of each key another instance revoked, once it is applied here.
    on_revoked_elsewhere: RwLock<Option<RevocationObserver>>,
}

/// Told the name of a key that another instance sharing the database revoked, once
/// this instance knows (the relay closes the rooms that key created here).
pub type RevocationObserver = Box<dyn Fn(&str) + Send + Sync>;

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

impl Memory {
    fn new(loaded: &Loaded) -> Memory {
        let memory = Memory::default();
        memory.apply_loaded(loaded);
        memory
    }

    /// Applies everything a backend holds (at open, or after a reconnect): keys are
    /// added or updated, usage bases replaced, the admin digest replaced. Keys found
    /// revoked that were not are passed to the revocation observer.
    pub(crate) fn apply_loaded(&self, loaded: &Loaded) {
        for key in &loaded.keys {
            if self.apply_key(key, true) {
                self.revoked_elsewhere(&key.name);
            }
        }
        self.set_admin(loaded.admin);
    }

    /// Tells the revocation observer, if any, that `name` was revoked elsewhere.
    pub(crate) fn revoked_elsewhere(&self, name: &str) {
        if let Some(observer) =
            self.on_revoked_elsewhere.read().unwrap_or_else(PoisonError::into_inner).as_ref()
        {
            observer(name);
        }
    }

    /// Adds or updates one key as the backend holds it; with `with_usage`, also
    /// replaces its usage base. Returns whether this revoked a key known here as not
    /// revoked.
    pub(crate) fn apply_key(&self, key: &StoredKey, with_usage: bool) -> bool {
        let mut state = self.write_state();
        match state.by_name.get(&key.name).copied() {
            Some(i) => {
                let Some(entry) = state.entries.get_mut(i) else { return false };
                let newly_revoked = entry.revoked_at.is_none() && key.record.revoked_at.is_some();
                let digest_changed = !entry.digest.ct_eq(&key.digest);
                entry.digest = key.digest;
                entry.tenant.clone_from(&key.record.tenant);
                entry.expires_at = key.record.expires_at;
                entry.revoked_at = key.record.revoked_at;
                entry.origin = key.record.origin;
                if with_usage {
                    entry.usage.set_base(key.usage);
                }
                if digest_changed {
                    state.rebuild_buckets();
                }
                newly_revoked
            }
            None => {
                // Created keys are live at once; preconfigured ones wait for this
                // instance's `preconfigure`.
                let configured = key.record.origin == KeyOrigin::Created;
                state.insert(&key.name, key.digest, &key.record, configured, key.usage);
                false
            }
        }
    }

    pub(crate) fn set_admin(&self, digest: Option<KeyDigest>) {
        *self.admin_digest.write().unwrap_or_else(PoisonError::into_inner) = digest;
    }

    pub(crate) fn admin(&self) -> Option<KeyDigest> {
        *self.admin_digest.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl KeyStore {
    /// Opens (creating if needed) the embedded store in `dir`.
    ///
    /// Fails with [`KeystoreError::Locked`] when another process, or another `KeyStore`
    /// in this one, has `dir` open; with [`KeystoreError::DataDir`] when `dir` cannot be
    /// created or used; with [`KeystoreError::Corrupt`] when a stored record does not
    /// decode. Preconfigured keys stay disabled until [`KeyStore::preconfigure`] lists
    /// them.
    pub fn open(dir: &Path) -> Result<Self, KeystoreError> {
        let (store, loaded) = SledStore::open(dir)?;
        tracing::debug!(dir = %dir.display(), keys = loaded.keys.len(), "key store opened");
        Ok(Self::with_backend(Backend::Sled(store), &loaded, None))
    }

    /// Opens the store in the PostgreSQL database at `url` (`postgres://...`), shared
    /// with every other instance opened on it: applies the schema migrations (once,
    /// under an advisory lock, however many instances start at once), reads every key
    /// and starts following other instances' changes (LISTEN/NOTIFY). Needs a tokio
    /// runtime.
    ///
    /// Fails with [`KeystoreError::DatabaseUrl`] for a URL that does not parse, with
    /// [`KeystoreError::DatabaseUnreachable`] when no connection can be made (its
    /// message names the host and port, never the password), and with
    /// [`KeystoreError::Database`] when the schema cannot be applied.
    pub async fn open_postgres(url: &str) -> Result<Self, KeystoreError> {
        let (store, loaded, listener, target) = PgStore::open(url).await?;
        tracing::debug!(location = %store.location(), keys = loaded.keys.len(), "key store opened on PostgreSQL");
        let health = store.health.clone();
        let mut keystore = Self::with_backend(Backend::Postgres(store), &loaded, None);
        keystore.supervisor = Some(crate::pg::listen::spawn_supervisor(
            listener,
            target,
            Arc::downgrade(&keystore.memory),
            health,
        ));
        Ok(keystore)
    }

    fn with_backend(
        backend: Backend,
        loaded: &Loaded,
        supervisor: Option<tokio::task::JoinHandle<()>>,
    ) -> Self {
        Self {
            memory: Arc::new(Memory::new(loaded)),
            backend,
            writes: tokio::sync::Mutex::new(()),
            usage_flush: tokio::sync::Mutex::new(()),
            supervisor,
        }
    }

    /// `"sled"` or `"postgres"`.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sled(_) => "sled",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Where the store is, for messages: the database's `host:port` (never
    /// credentials); `None` for the embedded store.
    pub fn database_location(&self) -> Option<&str> {
        match &self.backend {
            Backend::Sled(_) => None,
            Backend::Postgres(store) => Some(store.location()),
        }
    }

    /// Sets who is told when PostgreSQL becomes unreachable or reachable again
    /// (`(up, detail)`, called on every report; the observer keeps transitions). A
    /// no-op for the embedded store.
    pub fn set_health_observer(&self, observer: HealthObserver) {
        if let Backend::Postgres(store) = &self.backend {
            store.health.set(observer);
        }
    }

    /// Sets who is told the name of each key another instance revoked, once this one
    /// applied it (PostgreSQL only; a revocation through this store is not reported:
    /// its caller knows). The relay closes the rooms that key created here.
    pub fn set_revocation_observer(&self, observer: RevocationObserver) {
        *self.memory.on_revoked_elsewhere.write().unwrap_or_else(PoisonError::into_inner) = Some(observer);
    }

    /// Creates a key named `name` at `now` (unix seconds) and returns it with its info.
    /// The key is shown here only: the store keeps its SHA-256.
    ///
    /// Refuses an invalid name or tenant (1 to 64 characters of `A-Z a-z 0-9 . _ -`),
    /// a name already used (also by a revoked key, also on another instance) with
    /// [`KeystoreError::NameTaken`], and an expiry not after `now` with
    /// [`KeystoreError::ExpiryInPast`]. Durable on `Ok`.
    pub async fn create(
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
        let _writing = self.writes.lock().await;
        if self.memory.read_state().by_name.contains_key(name) {
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
        if !self.backend.insert_new(name, &record).await? {
            return Err(KeystoreError::NameTaken { name: name.to_owned() });
        }
        let stored = StoredKey { name: name.to_owned(), digest, record, usage: Usage::default() };
        let _ = self.memory.apply_key(&stored, false);
        let info = self.get(name).ok_or_else(|| KeystoreError::NotFound { name: name.to_owned() })?;
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
    pub async fn preconfigure(
        &self,
        keys: &[PreconfiguredKey],
        now: u64,
    ) -> Result<Vec<KeyInfo>, KeystoreError> {
        PreconfiguredKey::check_unique(keys)?;
        let _writing = self.writes.lock().await;
        // Decide everything first, so a refused value leaves the store untouched.
        let mut writes: Vec<(String, KeyDigest, KeyRecord)> = Vec::new();
        {
            let state = self.memory.read_state();
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
                        writes.push((pk.name.clone(), digest, record));
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
                        writes.push((pk.name.clone(), digest, record));
                    }
                }
            }
        }
        let records: Vec<(String, KeyRecord)> =
            writes.iter().map(|(n, _, r)| (n.clone(), r.clone())).collect();
        self.backend.put_records(records).await?;
        let mut state = self.memory.write_state();
        for (name, digest, record) in &writes {
            match state.by_name.get(name.as_str()).copied() {
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

    /// Checks a presented key (standard base64 text, or 32 hexadecimal characters) at
    /// `now` (unix seconds) and returns its name and tenant. In memory, constant-time
    /// digest comparison; call it per request or per connection.
    pub fn verify(&self, presented: &str, now: u64) -> Result<VerifiedKey, VerifyError> {
        let key = ApiKey::parse_base64_or_hex(presented).ok_or(VerifyError::Malformed)?;
        let digest = key.digest();
        let state = self.memory.read_state();
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
    pub async fn revoke(&self, name: &str, now: u64) -> Result<KeyInfo, KeystoreError> {
        let _writing = self.writes.lock().await;
        let digest = {
            let state = self.memory.read_state();
            let entry = state.get(name).ok_or_else(|| KeystoreError::NotFound { name: name.to_owned() })?;
            if entry.revoked_at.is_some() {
                return Ok(entry.info());
            }
            entry.digest
        };
        let record = self
            .backend
            .revoke(name, now)
            .await?
            .ok_or_else(|| KeystoreError::NotFound { name: name.to_owned() })?;
        let digest = record.digest().unwrap_or(digest);
        self.memory
            .apply_key(&StoredKey { name: name.to_owned(), digest, record, usage: Usage::default() }, false);
        tracing::info!(key = name, "API key revoked");
        self.get(name).ok_or_else(|| KeystoreError::NotFound { name: name.to_owned() })
    }

    /// Every key (revoked and expired ones too), sorted by name.
    pub fn list(&self) -> Vec<KeyInfo> {
        let state = self.memory.read_state();
        let mut all: Vec<KeyInfo> = state.entries.iter().map(Entry::info).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// The key named `name`, if any.
    pub fn get(&self, name: &str) -> Option<KeyInfo> {
        self.memory.read_state().get(name).map(Entry::info)
    }

    /// Whether key `name` would be accepted at `now` (unix seconds), and if not, why;
    /// `None` for an unknown name. A read lock and no allocation: live connections
    /// call it periodically to end when their key is revoked or expires (also when
    /// another instance revoked it: its change is applied here through NOTIFY).
    pub fn status(&self, name: &str, now: u64) -> Option<KeyStatus> {
        let state = self.memory.read_state();
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
        let state = self.memory.read_state();
        let entry = state.get(name).ok_or_else(|| KeystoreError::NotFound { name: name.to_owned() })?;
        entry.usage.add(messages, bytes, rooms);
        Ok(())
    }

    /// Writes the usage counted since the last call and returns for how many keys.
    /// sled: each changed key's total is written and flushed. PostgreSQL: each changed
    /// key's delta is added to the shared totals (`messages = messages + delta`), then
    /// every key's totals (all instances') are read back, so [`KeyStore::list`] shows
    /// the deployment's usage as of this call plus what is pending here. Call it
    /// periodically and at shutdown; on an error the counts stay pending for the next
    /// call.
    pub async fn flush_usage(&self) -> Result<usize, KeystoreError> {
        let _flushing = self.usage_flush.lock().await;
        let writes: Vec<UsageWrite> = {
            let state = self.memory.read_state();
            state
                .entries
                .iter()
                .filter_map(|e| {
                    e.usage.take_pending().map(|delta| UsageWrite {
                        name: e.name.clone(),
                        delta,
                        total: e.usage.snapshot(),
                    })
                })
                .collect()
        };
        let written = writes.len();
        let restore: Vec<(String, Usage)> = writes.iter().map(|w| (w.name.clone(), w.delta)).collect();
        match self.backend.write_usage(writes).await {
            Ok(totals) => {
                if let Some(totals) = totals {
                    let state = self.memory.read_state();
                    for (name, usage) in totals {
                        if let Some(entry) = state.get(&name) {
                            entry.usage.set_base(usage);
                        }
                    }
                }
                Ok(written)
            }
            Err(e) => {
                let state = self.memory.read_state();
                for (name, delta) in restore {
                    if let Some(entry) = state.get(&name) {
                        entry.usage.restore(delta);
                    }
                }
                Err(e)
            }
        }
    }

    pub(crate) fn memory(&self) -> &Memory {
        &self.memory
    }
}

impl Drop for KeyStore {
    fn drop(&mut self) {
        if let Some(supervisor) = &self.supervisor {
            supervisor.abort();
        }
        // sled only: a synchronous last write of pending usage (PostgreSQL needs the
        // runtime; the server calls `flush_usage` at shutdown).
        if let Backend::Sled(store) = &self.backend {
            let state = self.memory.read_state();
            let totals: Vec<(String, Usage)> = state
                .entries
                .iter()
                .filter_map(|e| e.usage.take_pending().map(|_| (e.name.clone(), e.usage.snapshot())))
                .collect();
            if !totals.is_empty()
                && let Err(e) = store.write_usage(&totals)
            {
                tracing::warn!(error = %e, "key store closed without writing pending usage");
            }
        }
    }
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("backend", &self.backend_name())
            .field("keys", &self.memory.read_state().entries.len())
            .finish()
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
