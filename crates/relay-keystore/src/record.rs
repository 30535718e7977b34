//! What the store keeps per key ([`KeyRecord`], on disk as JSON), what it shows of a key
//! ([`KeyInfo`]), and the small types around them.

use serde::{Deserialize, Serialize};

use crate::secret::KeyDigest;

/// How a key came to exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyOrigin {
    /// Given on the command line (`--api-key KEY,NAME`): never expires, can be revoked.
    Preconfigured,
    /// Created through [`crate::KeyStore::create`] (the admin API).
    Created,
}

/// Options for [`crate::KeyStore::create`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateOptions {
    /// The mailbox namespace; `None` makes the key its own tenant (its name). Keys of
    /// the same tenant see each other's mailbox messages.
    pub tenant: Option<String>,
    /// Expiry in unix seconds; 0 means never.
    pub expires_at: u64,
}

/// Counted use of a key. Totals since the key was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Mailbox and room messages sent.
    pub messages: u64,
    /// Payload bytes sent.
    pub bytes: u64,
    /// Rooms created.
    pub rooms: u64,
}

/// Whether a key would be accepted now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    /// Accepted.
    Active,
    /// Revoked (this wins over expired).
    Revoked,
    /// Past its expiry.
    Expired,
    /// A preconfigured key whose `--api-key` value was not passed this run.
    NotConfigured,
}

/// What the store shows of a key: everything but its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    /// Unique name.
    pub name: String,
    /// Mailbox namespace (the name unless chosen at creation).
    pub tenant: String,
    /// Creation time, unix seconds (first start for a preconfigured key).
    pub created_at: u64,
    /// Expiry, unix seconds; 0 means never.
    pub expires_at: u64,
    /// When it was revoked, unix seconds; `None` while not revoked.
    pub revoked_at: Option<u64>,
    /// Preconfigured or created.
    pub origin: KeyOrigin,
    /// False for a preconfigured key whose `--api-key` value was not passed this run:
    /// removing the flag disables the key without forgetting its usage or revocation.
    pub configured: bool,
    /// Counted use, including what has not been flushed yet.
    pub usage: Usage,
}

impl KeyInfo {
    /// Whether the key would be accepted at `now` (unix seconds), and if not, why.
    pub fn status(&self, now: u64) -> KeyStatus {
        if self.revoked_at.is_some() {
            KeyStatus::Revoked
        } else if is_expired(self.expires_at, now) {
            KeyStatus::Expired
        } else if !self.configured {
            KeyStatus::NotConfigured
        } else {
            KeyStatus::Active
        }
    }
}

/// The caller a verified key stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedKey {
    /// The key's name: pass it to [`crate::KeyStore::record_usage`].
    pub name: String,
    /// The key's tenant: its mailbox namespace.
    pub tenant: String,
}

/// A key as stored in the `keys` tree (value; the tree key is the name). Usage is kept
/// in its own tree so flushing counters never rewrites these records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct KeyRecord {
    /// SHA-256 of the key bytes, lowercase hex. Never the key.
    pub(crate) sha256: String,
    pub(crate) tenant: String,
    pub(crate) created_at: u64,
    pub(crate) expires_at: u64,
    pub(crate) revoked_at: Option<u64>,
    pub(crate) origin: KeyOrigin,
}

impl KeyRecord {
    pub(crate) fn digest(&self) -> Option<KeyDigest> {
        KeyDigest::from_hex(&self.sha256)
    }
}

/// Expiry rule shared by verify and [`KeyInfo::status`]: 0 never expires; otherwise a
/// key is expired from its expiry second on.
pub(crate) fn is_expired(expires_at: u64, now: u64) -> bool {
    expires_at != 0 && now >= expires_at
}
