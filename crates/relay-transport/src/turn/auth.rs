//! Who may use TURN. The webrtc-rs server asks [`Auth`] for the long-term key of each
//! authenticated request's username (Allocate, Refresh, CreatePermission, ChannelBind),
//! and checks the request's MESSAGE-INTEGRITY with it. Accepted:
//! - Disco's static user (`--ice-username`/`--ice-password`), when configured;
//! - a REST username `<unix expiry>:<key name>` that has not expired, whose key is in
//!   the key store and active (not revoked, not expired): looked up on every request,
//!   so a revoked key can neither allocate nor refresh. With keys not enforced, any
//!   unexpired username (a bare `<expiry>` too).
//!
//! The password is derived from the username, so a wrong password fails the integrity
//! check; the crate answers a refusal with 400/401 and no allocation.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use relay_keystore::{KeyStatus, unix_now};

use super::credentials::{self, RestUsername};
use crate::metrics::TurnCounters;
use crate::state::AppState;

/// The username whose request the server is handling, read by the relayed-socket
/// generator of the same listener.
pub(crate) type LastUser = Arc<Mutex<Option<String>>>;

/// The auth handler of one listener's server.
pub(crate) struct Auth {
    state: AppState,
    secret: String,
    counters: TurnCounters,
    last_user: LastUser,
}

impl Auth {
    pub(crate) fn new(state: &AppState, last_user: LastUser) -> Auth {
        Auth {
            secret: state.config().turn.secret.clone().unwrap_or_default(),
            counters: state.metrics().turn().clone(),
            state: state.clone(),
            last_user,
        }
    }

    fn password_of(&self, username: &str) -> Option<String> {
        let config = &self.state.config().turn;
        if let Some((user, pass)) = &config.static_user
            && user == username
        {
            return Some(pass.clone());
        }
        if self.secret.is_empty() {
            return None;
        }
        let parsed = credentials::parse_username(username, unix_now()).ok()?;
        key_allowed(&self.state, &parsed).then(|| credentials::password(&self.secret, username))
    }
}

impl ::turn::auth::AuthHandler for Auth {
    fn auth_handle(&self, username: &str, realm: &str, _src: SocketAddr) -> Result<Vec<u8>, ::turn::Error> {
        let Some(password) = self.password_of(username) else {
            self.counters.auth_refused.inc();
            tracing::debug!("TURN: username refused");
            return Err(::turn::Error::Other("username refused".to_owned()));
        };
        *self.last_user.lock().unwrap_or_else(PoisonError::into_inner) = Some(username.to_owned());
        Ok(credentials::long_term_key(username, realm, &password))
    }
}

/// Whether `parsed`'s key may use TURN now.
fn key_allowed(state: &AppState, parsed: &RestUsername<'_>) -> bool {
    if !state.config().api_keys_enforced {
        return true;
    }
    let (Some(name), Some(store)) = (parsed.key_name, state.keystore()) else { return false };
    store.get(name).is_some_and(|info| info.status(unix_now()) == KeyStatus::Active)
}

/// Whether the allocations of `username` may go on: the static user always; a REST
/// username while its key is active (its own expiry only bounds new requests, as in
/// coturn).
pub(crate) fn key_still_allowed(state: &AppState, username: &str) -> bool {
    if state.config().turn.static_user.as_ref().is_some_and(|(user, _)| user == username) {
        return true;
    }
    match credentials::parse_username(username, 0) {
        Ok(parsed) => key_allowed(state, &parsed),
        Err(_) => false,
    }
}

/// The key a username's usage counts against: `None` for the static user and for bare
/// usernames (keys not enforced).
pub(crate) fn key_of(username: &str) -> Option<String> {
    credentials::parse_username(username, 0).ok()?.key_name.map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use relay_keystore::{CreateOptions, KeyStore, unix_now};

    use super::*;
    use crate::{ServerConfig, TurnConfig};

    #[tokio::test]
    async fn only_unexpired_usernames_of_active_keys_and_the_static_user_pass() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(KeyStore::open(dir.path()).unwrap());
        let now = unix_now();
        store.create("backend", CreateOptions { tenant: None, expires_at: 0 }, now).await.unwrap();
        let turn = TurnConfig {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            secret: Some("north".to_owned()),
            static_user: Some(("babble".to_owned(), "static".to_owned())),
            ..TurnConfig::default()
        };
        let state =
            AppState::with_keystore(ServerConfig { turn, ..ServerConfig::default() }, store.clone()).unwrap();
        let auth = Auth::new(&state, LastUser::default());
        let live = format!("{}:backend", now + 60);
        assert_eq!(auth.password_of(&live), Some(credentials::password("north", &live)));
        assert_eq!(auth.password_of("babble").as_deref(), Some("static"));
        assert_eq!(auth.password_of(&format!("{}:backend", now - 1)), None, "expired username");
        assert_eq!(auth.password_of(&format!("{}:nobody", now + 60)), None, "unknown key");
        assert_eq!(auth.password_of(&(now + 60).to_string()), None, "no key with keys enforced");
        assert!(key_still_allowed(&state, &live));

        store.revoke("backend", now).await.unwrap();
        assert_eq!(auth.password_of(&live), None, "revoked key");
        assert!(!key_still_allowed(&state, &live));
        assert!(key_still_allowed(&state, "babble"));
        assert_eq!(key_of(&live).as_deref(), Some("backend"));
        assert_eq!(key_of("babble"), None);
    }
}
