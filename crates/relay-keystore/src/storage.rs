//! The storage abstraction under [`crate::KeyStore`]: [`Backend`], either the embedded
//! sled database ([`crate::sled_store`], the default) or a PostgreSQL database shared
//! by every instance of a deployment ([`crate::pg`]).
//!
//! The key store keeps every key in memory and calls the backend only to commit a
//! change (create, revoke, preconfigure, admin token, usage). A call returns once the
//! change is durable. sled calls block on a disk flush, so they run on tokio's blocking
//! threads; PostgreSQL calls are async.

use crate::error::KeystoreError;
use crate::pg::PgStore;
use crate::record::{KeyRecord, Usage};
use crate::secret::KeyDigest;
use crate::sled_store::SledStore;

/// One key as the store holds it.
#[derive(Clone)]
pub(crate) struct StoredKey {
    pub(crate) name: String,
    pub(crate) digest: KeyDigest,
    pub(crate) record: KeyRecord,
    pub(crate) usage: Usage,
}

/// Everything a backend holds, read at open (and, for PostgreSQL, after a reconnect).
#[derive(Default)]
pub(crate) struct Loaded {
    pub(crate) keys: Vec<StoredKey>,
    pub(crate) admin: Option<KeyDigest>,
}

/// One key's usage to write: what was added here since the last write (`delta`) and
/// this process's idea of the new total (`total`). sled stores the total; PostgreSQL
/// adds the delta to what every instance wrote.
#[derive(Debug, Clone)]
pub(crate) struct UsageWrite {
    pub(crate) name: String,
    pub(crate) delta: Usage,
    pub(crate) total: Usage,
}

/// Where the keys are committed.
pub(crate) enum Backend {
    /// The embedded database under `--data-dir`.
    Sled(SledStore),
    /// A PostgreSQL database (`--database-url`).
    Postgres(PgStore),
}

impl Backend {
    /// Stores a new key; `false` when the name is taken.
    pub(crate) async fn insert_new(&self, name: &str, record: &KeyRecord) -> Result<bool, KeystoreError> {
        match self {
            Backend::Sled(store) => {
                let (store, name, record) = (store.clone(), name.to_owned(), record.clone());
                blocking(move || store.insert_new(&name, &record)).await
            }
            Backend::Postgres(store) => store.insert_new(name, record).await,
        }
    }

    /// Writes (inserting or replacing) preconfigured keys' records.
    pub(crate) async fn put_records(&self, records: Vec<(String, KeyRecord)>) -> Result<(), KeystoreError> {
        match self {
            Backend::Sled(store) => {
                let store = store.clone();
                blocking(move || store.put_records(&records)).await
            }
            Backend::Postgres(store) => store.put_records(&records).await,
        }
    }

    /// Marks key `name` revoked at `now` unless it already is; the record after, or
    /// `None` for an unknown name.
    pub(crate) async fn revoke(&self, name: &str, now: u64) -> Result<Option<KeyRecord>, KeystoreError> {
        match self {
            Backend::Sled(store) => {
                let (store, name) = (store.clone(), name.to_owned());
                blocking(move || store.revoke(&name, now)).await
            }
            Backend::Postgres(store) => store.revoke(name, now).await,
        }
    }

    /// Stores the admin token's digest (unless `only_if_absent` and one is stored);
    /// returns the digest stored after the call.
    pub(crate) async fn set_admin_digest(
        &self,
        digest: KeyDigest,
        only_if_absent: bool,
    ) -> Result<KeyDigest, KeystoreError> {
        match self {
            Backend::Sled(store) => {
                let store = store.clone();
                blocking(move || store.set_admin_digest(digest, only_if_absent)).await
            }
            Backend::Postgres(store) => store.set_admin_digest(digest, only_if_absent).await,
        }
    }

    /// Writes usage; returns the totals to adopt when the backend knows better than
    /// this process (PostgreSQL: every instance's sum, for every key).
    pub(crate) async fn write_usage(
        &self,
        writes: Vec<UsageWrite>,
    ) -> Result<Option<Vec<(String, Usage)>>, KeystoreError> {
        match self {
            Backend::Sled(store) => {
                if writes.is_empty() {
                    return Ok(None);
                }
                let store = store.clone();
                let totals: Vec<(String, Usage)> = writes.into_iter().map(|w| (w.name, w.total)).collect();
                blocking(move || store.write_usage(&totals)).await.map(|()| None)
            }
            Backend::Postgres(store) => store.write_usage(&writes).await.map(Some),
        }
    }
}

/// Runs a blocking sled call on tokio's blocking threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, KeystoreError> + Send + 'static,
) -> Result<T, KeystoreError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| KeystoreError::Task(e.to_string()))?
}
