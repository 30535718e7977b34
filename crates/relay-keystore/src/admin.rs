//! The admin token: the store keeps only its SHA-256 (in the `meta` tree) and compares
//! presented tokens in constant time.

use std::sync::PoisonError;

use crate::error::KeystoreError;
use crate::secret::{AdminToken, KeyDigest};
use crate::store::KeyStore;

const ADMIN_DIGEST_KEY: &str = "admin_token_sha256";

impl KeyStore {
    /// The start-up step in one call: with the operator's token (`--secret-auth`),
    /// stores its hash and returns `None`; without one, keeps the stored hash if there is
    /// one (`None`), or generates a token, stores its hash and returns it so the server
    /// prints it once.
    pub fn ensure_admin_token(
        &self,
        configured: Option<&AdminToken>,
    ) -> Result<Option<AdminToken>, KeystoreError> {
        match configured {
            Some(token) => {
                let unchanged = self.admin_digest().is_some_and(|d| d.ct_eq(&token.digest()));
                if !unchanged {
                    self.set_admin_token(token)?;
                }
                Ok(None)
            }
            None if self.has_admin_token() => Ok(None),
            None => self.generate_admin_token().map(Some),
        }
    }

    /// Stores the SHA-256 of `token`, replacing any earlier admin token. Durable on `Ok`.
    pub fn set_admin_token(&self, token: &AdminToken) -> Result<(), KeystoreError> {
        let digest = token.digest();
        let _writing = self.lock_writes();
        self.meta.insert(ADMIN_DIGEST_KEY, &digest.0[..])?;
        self.flush_db()?;
        *self.admin_digest.write().unwrap_or_else(PoisonError::into_inner) = Some(digest);
        tracing::info!("admin token set");
        Ok(())
    }

    /// Generates a random admin token (43 base64url characters), stores its hash
    /// (replacing any earlier one) and returns it: the only time it can be seen.
    pub fn generate_admin_token(&self) -> Result<AdminToken, KeystoreError> {
        let token = AdminToken::generate()?;
        self.set_admin_token(&token)?;
        Ok(token)
    }

    /// Whether an admin token was set or generated (now or in an earlier run).
    pub fn has_admin_token(&self) -> bool {
        self.admin_digest().is_some()
    }

    /// Whether `presented` is the admin token, compared by digest in constant time.
    /// False when none is set.
    pub fn verify_admin_token(&self, presented: &str) -> bool {
        let presented = KeyDigest::of(presented.as_bytes());
        self.admin_digest().is_some_and(|stored| stored.ct_eq(&presented))
    }

    fn admin_digest(&self) -> Option<KeyDigest> {
        *self.admin_digest.read().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Reads the stored admin token digest at open.
pub(crate) fn load_admin_digest(meta: &sled::Tree) -> Result<Option<KeyDigest>, KeystoreError> {
    let Some(value) = meta.get(ADMIN_DIGEST_KEY)? else {
        return Ok(None);
    };
    let bytes: [u8; 32] = value.as_ref().try_into().map_err(|_| KeystoreError::Corrupt {
        record: format!("{}/{ADMIN_DIGEST_KEY}", crate::store::META_TREE),
        reason: format!("{} bytes, expected 32", value.len()),
    })?;
    Ok(Some(KeyDigest(bytes)))
}
