//! The admin token: the store keeps only its SHA-256 (sled: the `meta` tree;
//! PostgreSQL: `relay_keystore_meta`, shared by every instance) and compares presented
//! tokens in constant time.

use crate::error::KeystoreError;
use crate::secret::{AdminToken, KeyDigest};
use crate::store::KeyStore;

impl KeyStore {
    /// The start-up step in one call: with the operator's token (`--secret-auth`),
    /// stores its hash and returns `None`; without one, keeps the stored hash if there is
    /// one (`None`), or generates a token, stores its hash and returns it so the server
    /// prints it once. When instances sharing a database start at once without a token,
    /// one generates it and the others keep that one (and return `None`).
    pub async fn ensure_admin_token(
        &self,
        configured: Option<&AdminToken>,
    ) -> Result<Option<AdminToken>, KeystoreError> {
        match configured {
            Some(token) => {
                let unchanged = self.memory().admin().is_some_and(|d| d.ct_eq(&token.digest()));
                if !unchanged {
                    self.set_admin_token(token).await?;
                }
                Ok(None)
            }
            None if self.has_admin_token() => Ok(None),
            None => {
                let token = AdminToken::generate()?;
                let digest = token.digest();
                let _writing = self.writes.lock().await;
                let stored = self.backend.set_admin_digest(digest, true).await?;
                self.memory().set_admin(Some(stored));
                Ok(stored.ct_eq(&digest).then_some(token))
            }
        }
    }

    /// Stores the SHA-256 of `token`, replacing any earlier admin token. Durable on `Ok`.
    pub async fn set_admin_token(&self, token: &AdminToken) -> Result<(), KeystoreError> {
        let digest = token.digest();
        let _writing = self.writes.lock().await;
        let stored = self.backend.set_admin_digest(digest, false).await?;
        self.memory().set_admin(Some(stored));
        tracing::info!("admin token set");
        Ok(())
    }

    /// Generates a random admin token (43 base64url characters), stores its hash
    /// (replacing any earlier one) and returns it: the only time it can be seen.
    pub async fn generate_admin_token(&self) -> Result<AdminToken, KeystoreError> {
        let token = AdminToken::generate()?;
        self.set_admin_token(&token).await?;
        Ok(token)
    }

    /// Whether an admin token was set or generated (now, in an earlier run, or by
    /// another instance sharing the database).
    pub fn has_admin_token(&self) -> bool {
        self.memory().admin().is_some()
    }

    /// Whether `presented` is the admin token, compared by digest in constant time.
    /// False when none is set.
    pub fn verify_admin_token(&self, presented: &str) -> bool {
        let presented = KeyDigest::of(presented.as_bytes());
        self.memory().admin().is_some_and(|stored| stored.ct_eq(&presented))
    }
}
