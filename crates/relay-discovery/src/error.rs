//! The one error type of this crate.

/// Why a discovery operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The input is not JSON, or not a JSON object.
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    /// A field has the wrong type or a value out of range; `field` names it as the
    /// client wrote it in the canonical spelling (`Peers[0].NetAddr`, `TTL`, `url`).
    #[error("invalid field `{field}`: {reason}")]
    InvalidField {
        /// The field, e.g. `Name` or `Peers[1].Moniker`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An update named no group ID (neither in the path nor in the body).
    #[error("missing group ID: give it in the body (`ID`) or in the path (/groups/{{ID}})")]
    MissingId,
    /// The body's `ID` differs from the path's.
    #[error("the body's ID {body:?} differs from the path's ID {path:?}")]
    IdMismatch {
        /// The ID in the path.
        path: String,
        /// The ID in the body.
        body: String,
    },
    /// No live group has this ID (never created, deleted, or expired).
    #[error("no group with ID {0:?}")]
    GroupNotFound(String),
    /// The group exists but the caller may not change or delete it.
    #[error("group {0:?} was created by another API key")]
    NotOwner(String),
    /// This server has no registry token, so it accepts no announcements.
    #[error("this server is not a relay registry: it has no registry token")]
    RegistryClosed,
    /// The registration token is missing or wrong.
    #[error("missing or wrong registry token")]
    BadRegistryToken,
    /// The key already owns as many live groups as `--max-groups-per-key` allows.
    #[error(
        "this API key already owns {max} live groups, the most --max-groups-per-key allows; delete some or let them expire"
    )]
    TooManyGroups {
        /// The limit.
        max: usize,
    },
    /// The sled database failed.
    #[error("storage failed: {0}")]
    Storage(#[from] sled::Error),
    /// The shared database (PostgreSQL) cannot be reached: the request may succeed
    /// once it is back. The text names the engine and where, never credentials.
    #[error("{0}")]
    Unavailable(String),
    /// The shared database answered with an error, or a storage task failed.
    #[error("storage failed: {0}")]
    Backend(String),
    /// A stored record cannot be decoded (written by an incompatible version?).
    #[error("stored group {key:?} cannot be decoded: {source}")]
    Corrupt {
        /// The record's key.
        key: String,
        /// The decoding error.
        source: serde_json::Error,
    },
}

impl DiscoveryError {
    pub(crate) fn field(field: impl Into<String>, reason: impl Into<String>) -> DiscoveryError {
        DiscoveryError::InvalidField { field: field.into(), reason: reason.into() }
    }
}
