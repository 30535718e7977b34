//! The error types of relay-keystore: [`KeystoreError`] for everything the store refuses
//! or fails at, and [`VerifyError`] for the four ways a presented key is turned away.
//!
//! No message ever contains an API key or an admin token: names, positions and paths
//! only, so every error can be logged and shown to an operator.

use std::fmt;
use std::path::PathBuf;

/// What the key store refuses or fails at, and why.
///
/// For the transport: [`KeystoreError::Storage`], [`KeystoreError::Database`],
/// [`KeystoreError::Task`], [`KeystoreError::Corrupt`] and [`KeystoreError::Random`]
/// are server faults (503); [`KeystoreError::NotFound`] is 404;
/// [`KeystoreError::NameTaken`] is 409; the other request errors are 400.
/// [`KeystoreError::DataDir`], [`KeystoreError::Locked`], [`KeystoreError::DatabaseUrl`],
/// [`KeystoreError::DatabaseUnreachable`] and the `--api-key` variants only
/// come from start-up calls and should stop the server with the message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeystoreError {
    /// The data directory cannot be created, read or written.
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        /// The directory given to [`crate::KeyStore::open`].
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// Another process (or another `KeyStore` in this one) has the database open.
    #[error("database locked: is a relay-server already running on this data dir ({path})?")]
    Locked {
        /// The directory given to [`crate::KeyStore::open`].
        path: PathBuf,
    },
    /// The embedded database failed; the request may succeed later.
    #[error("storage error: {0}")]
    Storage(#[from] sled::Error),
    /// A PostgreSQL query failed (the connection was lost, or the server refused it);
    /// the request may succeed later. The relay answers 503 `storage_unavailable`.
    #[error("PostgreSQL at {location} failed: {reason}")]
    Database {
        /// `host:port` of the database, never credentials.
        location: String,
        /// What the driver or the server said.
        reason: String,
    },
    /// No connection to PostgreSQL could be made (at start: the server stops).
    #[error("cannot reach PostgreSQL at {location}: {reason}")]
    DatabaseUnreachable {
        /// `host:port` of the database, never credentials.
        location: String,
        /// What the driver said.
        reason: String,
    },
    /// The database was migrated by a newer relay than this one (at start: the server
    /// exits 2; upgrade it).
    #[error("PostgreSQL at {location}: {reason}")]
    SchemaNewer {
        /// `host:port` of the database, never credentials.
        location: String,
        /// Which versions: the database's and this binary's.
        reason: String,
    },
    /// The database URL does not parse (the message never repeats the URL, which may
    /// hold a password).
    #[error("invalid PostgreSQL URL: {0}")]
    DatabaseUrl(String),
    /// A background task of the store (a blocking sled write) failed.
    #[error("key store task failed: {0}")]
    Task(String),
    /// A stored record does not decode: the data directory was damaged or written by an
    /// incompatible version.
    #[error("stored record {record} is unreadable: {reason}")]
    Corrupt {
        /// Which record (tree and key name), never its content.
        record: String,
        /// Why it did not decode.
        reason: String,
    },
    /// The operating system gave no randomness for a new key or token.
    #[error("no randomness from the operating system: {0}")]
    Random(#[from] getrandom::Error),
    /// A key name is not 1 to 64 characters of `A-Z a-z 0-9 . _ -`.
    #[error(
        "invalid key name {name:?}: use 1 to {max} characters of A-Z a-z 0-9 . _ -",
        max = crate::MAX_NAME_LEN
    )]
    InvalidName {
        /// The refused name.
        name: String,
    },
    /// A tenant is not 1 to 64 characters of `A-Z a-z 0-9 . _ -`.
    #[error(
        "invalid tenant {tenant:?}: use 1 to {max} characters of A-Z a-z 0-9 . _ -",
        max = crate::MAX_NAME_LEN
    )]
    InvalidTenant {
        /// The refused tenant.
        tenant: String,
    },
    /// A key with this name already exists (names stay taken after revocation).
    #[error("a key named {name:?} already exists")]
    NameTaken {
        /// The name asked for.
        name: String,
    },
    /// The expiry asked for is not in the future (0 means never).
    #[error("expiry {expires_at} is not after now ({now}); use 0 for a key that never expires")]
    ExpiryInPast {
        /// The expiry asked for, unix seconds.
        expires_at: u64,
        /// The time of the request, unix seconds.
        now: u64,
    },
    /// No key has this name.
    #[error("no key named {name:?}")]
    NotFound {
        /// The name asked for.
        name: String,
    },
    /// A single `--api-key KEY,NAME` value did not parse.
    #[error("invalid --api-key value (expected KEY,NAME): {problem}")]
    ApiKeyArg {
        /// What is wrong with it; never the key itself.
        problem: ApiKeyArgProblem,
    },
    /// One of several `--api-key` values did not parse or clashes with an earlier one.
    #[error("invalid --api-key value #{position} (expected KEY,NAME): {problem}")]
    ApiKeyArgAt {
        /// Its position among the `--api-key` values, counting from 1.
        position: usize,
        /// What is wrong with it; never the key itself.
        problem: ApiKeyArgProblem,
    },
    /// A preconfigured key uses the name of a key created through the admin API.
    #[error("--api-key name {name:?} belongs to a key created through the admin API; choose another name")]
    PreconfiguredNameConflict {
        /// The clashing name.
        name: String,
    },
    /// A preconfigured key is the same key as another stored key under another name.
    #[error("--api-key {name:?} is the same key as the stored key {existing:?}; keys must be unique")]
    DuplicateKey {
        /// The name given with the `--api-key` value.
        name: String,
        /// The name the key is already stored under.
        existing: String,
    },
    /// An admin token the operator chose is unusable.
    #[error("invalid admin token: {0}")]
    InvalidAdminToken(&'static str),
}

/// What is wrong with a `--api-key KEY,NAME` value. Its message never repeats the value,
/// since the value may be a real key with its parts swapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ApiKeyArgProblem {
    /// No comma between KEY and NAME.
    MissingComma,
    /// KEY is not 16 bytes as standard base64 or 32 hex characters.
    BadKey,
    /// NAME is empty.
    MissingName,
    /// NAME is not 1 to 64 characters of `A-Z a-z 0-9 . _ -`.
    BadName,
    /// NAME was already given by an earlier value (its position, from 1).
    RepeatedName {
        /// Position of the earlier value.
        first: usize,
    },
    /// KEY was already given by an earlier value (its position, from 1).
    RepeatedKey {
        /// Position of the earlier value.
        first: usize,
    },
}

impl fmt::Display for ApiKeyArgProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingComma => f.write_str("no comma between KEY and NAME"),
            Self::BadKey => f.write_str("KEY is not 16 bytes as standard base64 or 32 hex characters"),
            Self::MissingName => f.write_str("NAME is missing"),
            Self::BadName => {
                write!(f, "NAME must be 1 to {} characters of A-Z a-z 0-9 . _ -", crate::MAX_NAME_LEN)
            }
            Self::RepeatedName { first } => {
                write!(f, "NAME repeats the name of --api-key value #{first}")
            }
            Self::RepeatedKey { first } => {
                write!(f, "KEY repeats the key of --api-key value #{first}")
            }
        }
    }
}

/// Why a presented API key was turned away. Transport maps all four to 401 (or a 1008
/// close); the variant says which message to give.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Not standard base64 of exactly 16 bytes.
    #[error("malformed API key: expected standard base64 of 16 bytes")]
    Malformed,
    /// Well-formed, but no stored key matches (or it is a preconfigured key whose
    /// `--api-key` was not passed this run).
    #[error("unknown API key")]
    Unknown,
    /// The key was revoked.
    #[error("revoked API key")]
    Revoked,
    /// The key's expiry has passed.
    #[error("expired API key")]
    Expired,
}
