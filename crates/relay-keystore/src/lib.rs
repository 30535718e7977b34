#![doc = include_str!("../README.md")]
//!
//! # Modules
//!
//! The crate root re-exports everything public: [`KeyStore`] (store.rs, admin.rs),
//! the secrets (secret.rs), the records (record.rs) and the errors (error.rs). Under
//! the store: the storage abstraction (storage.rs) over the embedded backend
//! (sled_store.rs) and the PostgreSQL one (pg/: writes, migrations, LISTEN/NOTIFY);
//! usage counters (usage.rs).

mod admin;
mod error;
mod pg;
mod record;
mod secret;
mod sled_store;
mod storage;
mod store;
mod usage;

pub use error::{ApiKeyArgProblem, KeystoreError, VerifyError};
pub use pg::HealthObserver;
pub use record::{CreateOptions, KeyInfo, KeyOrigin, KeyStatus, Usage, VerifiedKey};
pub use secret::{
    API_KEY_LEN, AdminToken, ApiKey, MAX_ADMIN_TOKEN_LEN, MAX_NAME_LEN, PreconfiguredKey, is_valid_name,
};
pub use store::{KeyStore, RevocationObserver};

/// The current time in unix seconds, for the `now` arguments (0 if the clock is before
/// 1970). Library code takes `now` as an argument so tests control time.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
