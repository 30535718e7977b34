//! External engines the relay depends on when it runs scaled out (PostgreSQL for keys
//! and discovery, Redis for the mailbox): whether each is reachable right now.
//!
//! A component that talks to an engine registers it once ([`Dependencies::register`])
//! and reports every transition it sees ([`DependencyHealth::set_up`]): a failed query
//! or a lost connection marks it down, the reconnect that follows marks it up. The
//! rest of the relay only reads: `/readyz` answers 503 naming the engines that are
//! down, `/metrics` shows `relay_dependency_up{dependency}` (1 or 0) and
//! `relay_dependency_failures_total{dependency}` (transitions to down), and each
//! transition is logged once (a warning going down, info coming back), never per
//! failed request.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

/// Every engine registered in this process. Cheap to clone (one `Arc`).
#[derive(Clone, Default)]
pub struct Dependencies {
    list: Arc<RwLock<Vec<DependencyHealth>>>,
}

/// One engine's health, shared by the component that uses it and the readers.
/// Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct DependencyHealth {
    inner: Arc<Inner>,
}

struct Inner {
    /// `postgres`, `redis`: the label in `/metrics` and the name in `/readyz`.
    name: &'static str,
    /// Where it is (host and port, never credentials), for the log lines.
    location: String,
    up: AtomicBool,
    failures: AtomicU64,
}

/// What `/metrics` reports for one engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DependencyStatus {
    /// The engine's name (`postgres`, `redis`).
    pub name: &'static str,
    /// Reachable at the last check.
    pub up: bool,
    /// How many times it went from up to down since start.
    pub failures: u64,
}

impl Dependencies {
    /// Registers `name` (reachable: the caller registers after a successful connect)
    /// at `location` (host and port, without credentials). Registering a name twice
    /// gives the first registration's handle back.
    pub fn register(&self, name: &'static str, location: impl Into<String>) -> DependencyHealth {
        let mut list = self.list.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = list.iter().find(|d| d.inner.name == name) {
            return existing.clone();
        }
        let health = DependencyHealth {
            inner: Arc::new(Inner {
                name,
                location: location.into(),
                up: AtomicBool::new(true),
                failures: AtomicU64::new(0),
            }),
        };
        list.push(health.clone());
        health
    }

    /// The names of the engines that are down now, in registration order.
    pub fn down(&self) -> Vec<&'static str> {
        let list = self.list.read().unwrap_or_else(PoisonError::into_inner);
        list.iter().filter(|d| !d.is_up()).map(|d| d.inner.name).collect()
    }

    /// Every registered engine with its state, for `/metrics`.
    pub fn statuses(&self) -> Vec<DependencyStatus> {
        let list = self.list.read().unwrap_or_else(PoisonError::into_inner);
        list.iter()
            .map(|d| DependencyStatus {
                name: d.inner.name,
                up: d.is_up(),
                failures: d.inner.failures.load(Ordering::Relaxed),
            })
            .collect()
    }
}

impl std::fmt::Debug for Dependencies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.statuses()).finish()
    }
}

impl DependencyHealth {
    /// The engine's name.
    pub fn name(&self) -> &'static str {
        self.inner.name
    }

    /// Reachable at the last report.
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Acquire)
    }

    /// Reports what the caller just saw. Logs and counts transitions only, so a caller
    /// may report on every request. `detail` says what failed (or how it recovered).
    pub fn set_up(&self, up: bool, detail: &dyn std::fmt::Display) {
        let was = self.inner.up.swap(up, Ordering::AcqRel);
        match (was, up) {
            (true, false) => {
                self.inner.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    dependency = self.inner.name,
                    location = %self.inner.location,
                    "{} at {} is unreachable: {detail}; requests that need it get 503 storage_unavailable \
                     until it is back",
                    self.inner.name,
                    self.inner.location
                );
            }
            (false, true) => tracing::info!(
                dependency = self.inner.name,
                location = %self.inner.location,
                "{} at {} is reachable again ({detail})",
                self.inner.name,
                self.inner.location
            ),
            _ => {}
        }
    }
}

impl std::fmt::Debug for DependencyHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DependencyHealth")
            .field("name", &self.inner.name)
            .field("location", &self.inner.location)
            .field("up", &self.is_up())
            .finish()
    }
}

/// `host:port` of a `scheme://user:password@host:port/path?query` URL, for logs and
/// messages that must not show credentials. Falls back to `(unparsed URL)`.
pub fn redacted_location(url: &str) -> String {
    let Some((_, rest)) = url.split_once("://") else { return "(unparsed URL)".to_string() };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    if host.is_empty() { "(unparsed URL)".to_string() } else { host.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_are_counted_and_reported_down() {
        let deps = Dependencies::default();
        let pg = deps.register("postgres", "127.0.0.1:5432");
        let redis = deps.register("redis", "127.0.0.1:6379");
        assert!(deps.down().is_empty());
        redis.set_up(false, &"connection refused");
        redis.set_up(false, &"connection refused");
        assert_eq!(deps.down(), vec!["redis"]);
        redis.set_up(true, &"reconnected");
        redis.set_up(false, &"timeout");
        let statuses = deps.statuses();
        assert_eq!(statuses[0], DependencyStatus { name: "postgres", up: true, failures: 0 });
        assert_eq!(statuses[1], DependencyStatus { name: "redis", up: false, failures: 2 });
        assert!(pg.is_up());
        assert!(deps.register("postgres", "elsewhere").is_up(), "a second registration shares the first");
    }

    #[test]
    fn locations_never_carry_credentials() {
        assert_eq!(
            redacted_location("postgres://u:secret@db.internal:5432/relay?sslmode=require"),
            "db.internal:5432"
        );
        assert_eq!(redacted_location("redis://:pw@127.0.0.1:6379/0"), "127.0.0.1:6379");
        assert_eq!(redacted_location("redis://127.0.0.1"), "127.0.0.1");
        assert_eq!(redacted_location("nonsense"), "(unparsed URL)");
    }
}
