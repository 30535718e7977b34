//! The relay registry: relays announce themselves with a registration token and a TTL,
//! clients list the live ones.
//!
//! Entries live in a [`RegistryStore`]: in memory ([`MemoryRegistryStore`]; a relay
//! re-announces every third of its TTL, so after a registry restart the live relays are
//! back within one TTL, and dead ones never return), or in PostgreSQL
//! ([`crate::PgRegistryStore`]), shared by every instance of the registry.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use subtle::ConstantTimeEq;

use crate::error::DiscoveryError;
use crate::json;

/// Longest relay URL accepted.
pub const MAX_RELAY_URL_CHARS: usize = 2048;

/// The shared secret relays present to announce themselves. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryToken(String);

impl RegistryToken {
    /// Wraps a token.
    pub fn new(token: impl Into<String>) -> RegistryToken {
        RegistryToken(token.into())
    }

    /// The token itself, to send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this token, in time independent of where they differ.
    pub fn matches(&self, presented: &str) -> bool {
        self.0.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

impl fmt::Debug for RegistryToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RegistryToken(<redacted>)")
    }
}

/// How the registry behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// The token relays must present. `None`: every announcement is refused.
    pub token: Option<RegistryToken>,
    /// TTL of an announcement that asks for none (default 60 s).
    pub default_ttl: Duration,
    /// Largest TTL an announcement may ask for (default 1 hour).
    pub max_ttl: Duration,
}

impl Default for RegistryConfig {
    fn default() -> RegistryConfig {
        RegistryConfig {
            token: None,
            default_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(3600),
        }
    }
}

/// What a relay announces: `{"url": "...", "room_id_prefix": "1a2b3c4d", "ttl_secs": 60}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Announcement {
    /// Where clients reach the relay: `http`, `https`, `ws` or `wss` with a host.
    pub url: String,
    /// The relay's room-ID prefix (8 lowercase hex characters), if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_id_prefix: Option<String>,
    /// The TTL asked for, in seconds; the registry's default when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
}

impl Announcement {
    /// Parses and validates an announcement body, naming the field that is wrong.
    pub fn from_json(body: &[u8]) -> Result<Announcement, DiscoveryError> {
        let map = json::object(body)?;
        let url =
            json::string(&map, "url", "url")?.ok_or_else(|| DiscoveryError::field("url", "is required"))?;
        let announcement = Announcement {
            url,
            room_id_prefix: json::string(&map, "room_id_prefix", "room_id_prefix")?,
            ttl_secs: json::unsigned(&map, "ttl_secs", "ttl_secs")?,
        };
        announcement.validate()?;
        Ok(announcement)
    }

    /// Checks the URL and the prefix (not the TTL, which depends on the registry).
    pub fn validate(&self) -> Result<(), DiscoveryError> {
        validate_relay_url(&self.url)?;
        if let Some(prefix) = &self.room_id_prefix {
            validate_room_id_prefix(prefix)?;
        }
        Ok(())
    }
}

/// A live (or just expired) relay as `GET /v1/relays` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RelayEntry {
    /// Where clients reach the relay.
    pub url: String,
    /// Its room-ID prefix, or `null`.
    pub room_id_prefix: Option<String>,
    /// Unix seconds of its first announcement in the current run of entries.
    pub registered_at: u64,
    /// Unix seconds of its latest announcement.
    pub last_announced_at: u64,
    /// Unix seconds after which it is dropped unless it announces again.
    pub expires_at: u64,
    /// The TTL granted, in seconds: announce again well before it runs out.
    pub ttl_secs: u64,
}

/// Where registry entries are kept.
#[async_trait::async_trait]
pub trait RegistryStore: Send + Sync {
    /// Records an announcement of `announcement.url` granted `ttl_secs` at `now`,
    /// keeping `registered_at` of an entry still live at `now`. Atomic.
    async fn announce(
        &self,
        announcement: Announcement,
        ttl_secs: u64,
        now: u64,
    ) -> Result<RelayEntry, DiscoveryError>;
    /// The entries live at `now` (`expires_at > now`), by URL.
    async fn list_live(&self, now: u64) -> Result<Vec<RelayEntry>, DiscoveryError>;
    /// Removes the entries expired at `now`; how many this call removed. Idempotent.
    async fn remove_expired(&self, now: u64) -> Result<usize, DiscoveryError>;
}

/// Registry entries in memory.
#[derive(Debug, Default)]
pub struct MemoryRegistryStore {
    entries: Mutex<BTreeMap<String, RelayEntry>>,
}

impl MemoryRegistryStore {
    /// An empty store.
    pub fn new() -> MemoryRegistryStore {
        MemoryRegistryStore::default()
    }
}

/// The entry an announcement at `now` makes, after `previous`.
pub(crate) fn entry_after(
    previous: Option<&RelayEntry>,
    announcement: Announcement,
    ttl_secs: u64,
    now: u64,
) -> RelayEntry {
    let registered_at = match previous {
        Some(old) if old.expires_at > now => old.registered_at,
        _ => now,
    };
    RelayEntry {
        url: announcement.url,
        room_id_prefix: announcement.room_id_prefix,
        registered_at,
        last_announced_at: now,
        expires_at: now.saturating_add(ttl_secs),
        ttl_secs,
    }
}

#[async_trait::async_trait]
impl RegistryStore for MemoryRegistryStore {
    async fn announce(
        &self,
        announcement: Announcement,
        ttl_secs: u64,
        now: u64,
    ) -> Result<RelayEntry, DiscoveryError> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = entry_after(entries.get(&announcement.url), announcement, ttl_secs, now);
        entries.insert(entry.url.clone(), entry.clone());
        Ok(entry)
    }

    async fn list_live(&self, now: u64) -> Result<Vec<RelayEntry>, DiscoveryError> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(entries.values().filter(|e| e.expires_at > now).cloned().collect())
    }

    async fn remove_expired(&self, now: u64) -> Result<usize, DiscoveryError> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let before = entries.len();
        entries.retain(|_, e| e.expires_at > now);
        Ok(before - entries.len())
    }
}

/// The registry: the token check and TTL rules over a [`RegistryStore`].
pub struct RelayRegistry {
    config: RegistryConfig,
    store: Arc<dyn RegistryStore>,
}

impl fmt::Debug for RelayRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayRegistry").field("config", &self.config).finish_non_exhaustive()
    }
}

impl RelayRegistry {
    /// An empty registry in memory.
    pub fn new(config: RegistryConfig) -> RelayRegistry {
        RelayRegistry::with_store(config, Arc::new(MemoryRegistryStore::new()))
    }

    /// A registry over `store`.
    pub fn with_store(config: RegistryConfig, store: Arc<dyn RegistryStore>) -> RelayRegistry {
        RelayRegistry { config, store }
    }

    /// Whether `token` may announce: the check [`RelayRegistry::announce`] starts with,
    /// for a caller that wants to refuse before reading the announcement's body.
    pub fn check_token(&self, token: Option<&str>) -> Result<(), DiscoveryError> {
        let expected = self.config.token.as_ref().ok_or(DiscoveryError::RegistryClosed)?;
        if !token.is_some_and(|t| expected.matches(t)) {
            return Err(DiscoveryError::BadRegistryToken);
        }
        Ok(())
    }

    /// Records (or refreshes) an announcement presented with `token`. A relay already
    /// live keeps its `registered_at`.
    pub async fn announce(
        &self,
        token: Option<&str>,
        announcement: Announcement,
        now: u64,
    ) -> Result<RelayEntry, DiscoveryError> {
        self.check_token(token)?;
        announcement.validate()?;
        let max = self.config.max_ttl.as_secs();
        let ttl_secs = match announcement.ttl_secs {
            None => self.config.default_ttl.as_secs().max(1),
            Some(0) => return Err(DiscoveryError::field("ttl_secs", "must be at least 1 second")),
            Some(t) if t > max => {
                return Err(DiscoveryError::field("ttl_secs", format!("must be at most {max} seconds")));
            }
            Some(t) => t,
        };
        self.store.announce(announcement, ttl_secs, now).await
    }

    /// The relays live at `now` (`expires_at > now`), by URL.
    pub async fn list_live(&self, now: u64) -> Result<Vec<RelayEntry>, DiscoveryError> {
        self.store.list_live(now).await
    }

    /// Removes the entries expired at `now` from the store; how many this call removed.
    pub async fn sweep(&self, now: u64) -> Result<usize, DiscoveryError> {
        self.store.remove_expired(now).await
    }
}

/// Checks a relay URL: scheme `http`, `https`, `ws` or `wss`, a host (name, IPv4 or
/// `[IPv6]`), an optional numeric port, no credentials, no spaces or control characters.
pub fn validate_relay_url(url: &str) -> Result<(), DiscoveryError> {
    let bad = |reason: &str| Err(DiscoveryError::field("url", reason));
    if url.len() > MAX_RELAY_URL_CHARS {
        return bad(&format!("must be at most {MAX_RELAY_URL_CHARS} characters"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("must not contain spaces or control characters");
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return bad("must be an absolute URL such as https://relay.example.com");
    };
    if !matches!(scheme, "http" | "https" | "ws" | "wss") {
        return bad("scheme must be http, https, ws or wss");
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return bad("must not contain credentials");
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else { return bad("unterminated IPv6 address") };
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return bad("invalid IPv6 address");
        }
        (addr, after.strip_prefix(':'))
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return bad("must have a host");
    }
    if !authority.starts_with('[') && !host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return bad("host may contain only letters, digits, '-' and '.'");
    }
    if let Some(port) = port
        && port.parse::<u16>().is_err()
    {
        return bad("port must be a number from 0 to 65535");
    }
    Ok(())
}

/// Checks a room-ID prefix: exactly 8 lowercase hex characters.
pub fn validate_room_id_prefix(prefix: &str) -> Result<(), DiscoveryError> {
    if prefix.len() == 8 && prefix.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(DiscoveryError::field("room_id_prefix", "must be exactly 8 lowercase hex characters"))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn registry() -> RelayRegistry {
        RelayRegistry::new(RegistryConfig {
            token: Some(RegistryToken::new("s3cret")),
            default_ttl: Duration::from_secs(30),
            max_ttl: Duration::from_secs(600),
        })
    }

    fn announcement(url: &str, ttl: Option<u64>) -> Announcement {
        Announcement { url: url.into(), room_id_prefix: Some("1a2b3c4d".into()), ttl_secs: ttl }
    }

    /// The contract every registry store keeps; the PostgreSQL one runs it too.
    pub(crate) async fn exercise(store: Arc<dyn RegistryStore>) {
        let r = RelayRegistry::with_store(registry().config, store);
        let e = r.announce(Some("s3cret"), announcement("https://a.example", Some(10)), 100).await.unwrap();
        assert_eq!((e.registered_at, e.expires_at, e.ttl_secs), (100, 110, 10));
        let e = r.announce(Some("s3cret"), announcement("https://a.example", Some(10)), 105).await.unwrap();
        assert_eq!((e.registered_at, e.last_announced_at, e.expires_at), (100, 105, 115));
        r.announce(Some("s3cret"), announcement("wss://b.example:8443/x", None), 105).await.unwrap();
        let urls = async |now| r.list_live(now).await.unwrap().into_iter().map(|e| e.url).collect::<Vec<_>>();
        assert_eq!(urls(114).await, ["https://a.example", "wss://b.example:8443/x"]);
        assert_eq!(urls(115).await, ["wss://b.example:8443/x"]);
        assert!(urls(135).await.is_empty());
        let e = r.announce(Some("s3cret"), announcement("https://a.example", None), 200).await.unwrap();
        assert_eq!(e.registered_at, 200, "an expired relay registers anew");
        assert_eq!(r.sweep(200).await.unwrap(), 1, "b expired at 135");
        assert_eq!(r.sweep(200).await.unwrap(), 0, "idempotent");
        assert_eq!(urls(200).await, ["https://a.example"]);
    }

    #[tokio::test]
    async fn an_announcement_lives_for_its_ttl_and_a_refresh_keeps_registered_at() {
        exercise(Arc::new(MemoryRegistryStore::new())).await;
    }

    #[tokio::test]
    async fn announcements_need_the_token() {
        let r = registry();
        let a = announcement("https://a.example", None);
        assert!(matches!(r.announce(None, a.clone(), 1).await, Err(DiscoveryError::BadRegistryToken)));
        assert!(matches!(
            r.announce(Some("s3cre"), a.clone(), 1).await,
            Err(DiscoveryError::BadRegistryToken)
        ));
        assert!(matches!(
            r.announce(Some("s3cretx"), a.clone(), 1).await,
            Err(DiscoveryError::BadRegistryToken)
        ));
        let closed = RelayRegistry::new(RegistryConfig::default());
        assert!(matches!(closed.announce(Some("s3cret"), a, 1).await, Err(DiscoveryError::RegistryClosed)));
        assert!(r.list_live(1).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn ttl_must_be_positive_and_capped() {
        let r = registry();
        for ttl in [0, 601] {
            let err = r
                .announce(Some("s3cret"), announcement("https://a.example", Some(ttl)), 1)
                .await
                .unwrap_err();
            assert!(
                matches!(&err, DiscoveryError::InvalidField { field, .. } if field == "ttl_secs"),
                "{err}"
            );
        }
    }

    #[test]
    fn urls_and_prefixes_are_validated() {
        for good in ["http://a", "https://relay.example.com/", "ws://10.0.0.1:8080/v1", "wss://[::1]:443"] {
            validate_relay_url(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in [
            "",
            "relay.example.com",
            "ftp://a",
            "https://",
            "https://:80",
            "https://u:p@a",
            "https://a b",
            "http://a:x",
            "http://[zz]",
        ] {
            let err = validate_relay_url(bad).unwrap_err();
            assert!(
                matches!(&err, DiscoveryError::InvalidField { field, .. } if field == "url"),
                "{bad}: {err}"
            );
        }
        validate_room_id_prefix("0123abcd").unwrap();
        for bad in ["0123ABCD", "0123abc", "0123abcde", "0123abcg"] {
            assert!(validate_room_id_prefix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn announcement_json_names_the_bad_field() {
        let a = Announcement::from_json(br#"{"url":"https://a","room_id_prefix":"1a2b3c4d","ttl_secs":5}"#)
            .unwrap();
        assert_eq!(
            a,
            Announcement {
                url: "https://a".into(),
                room_id_prefix: Some("1a2b3c4d".into()),
                ttl_secs: Some(5)
            }
        );
        let err = Announcement::from_json(br#"{"url":7}"#).unwrap_err();
        assert_eq!(err.to_string(), "invalid field `url`: expected a string, got a number");
        let err = Announcement::from_json(br#"{"url":"https://a","room_id_prefix":"XY"}"#).unwrap_err();
        assert!(err.to_string().starts_with("invalid field `room_id_prefix`"), "{err}");
        assert!(Announcement::from_json(br#"{}"#).unwrap_err().to_string().contains("`url`"));
    }

    #[test]
    fn the_token_is_not_in_debug_output() {
        assert!(!format!("{:?}", registry().config).contains("s3cret"));
    }
}
