//! Groups with a time to live: create, upsert, update, delete, list, and the sweeper.
//!
//! Nothing here reads the clock: every operation takes `now` in unix seconds, and the
//! sweeper takes a clock function, so tests move time by hand.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::DiscoveryError;
use crate::group::{Group, GroupInput, GroupRecord};
use crate::store::GroupStore;

/// How long groups live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupTtl {
    /// TTL of a group that sets none (Disco's `--ttl`, default 5 minutes).
    pub default: Duration,
    /// Largest per-group `TTL` a client may ask for (default 7 days).
    pub max: Duration,
}

impl Default for GroupTtl {
    fn default() -> GroupTtl {
        GroupTtl { default: Duration::from_secs(5 * 60), max: Duration::from_secs(7 * 24 * 3600) }
    }
}

/// The group service: a [`GroupStore`] plus TTL rules and ownership checks.
///
/// A group is live while `LastUpdated + ttl > now`; an expired group is invisible to
/// every operation at once, and [`Groups::sweep`] removes it from the store later.
pub struct Groups {
    store: Arc<dyn GroupStore>,
    ttl: GroupTtl,
    /// Serializes read-modify-write operations, so an ownership check and the write it
    /// allows see the same record. Writes are rare; reads do not take it.
    write: Mutex<()>,
}

impl Groups {
    /// A service over `store` with the given TTL rules.
    pub fn new(store: Arc<dyn GroupStore>, ttl: GroupTtl) -> Groups {
        Groups { store, ttl, write: Mutex::new(()) }
    }

    /// The TTL rules.
    pub fn ttl(&self) -> GroupTtl {
        self.ttl
    }

    /// The TTL of `group` in seconds: its own, or the default.
    pub fn ttl_secs_of(&self, group: &Group) -> u64 {
        group.ttl_secs.unwrap_or(self.ttl.default.as_secs())
    }

    /// Whether `group` is still live at `now`.
    pub fn is_live(&self, group: &Group, now: u64) -> bool {
        group.last_updated.saturating_add(self.ttl_secs_of(group)) > now
    }

    /// Creates a group (Disco's `POST /group`). Without an ID, a UUID v4 is generated.
    /// With the ID of a live group, that group is replaced in place (absent fields
    /// become empty, as in Disco) and keeps its owner, if `may_change` allows it; with
    /// any other ID, a group is created under that ID, owned by `owner`.
    pub fn upsert(
        &self,
        input: GroupInput,
        owner: Option<&str>,
        now: u64,
        may_change: impl FnOnce(&GroupRecord) -> bool,
    ) -> Result<Group, DiscoveryError> {
        self.check_ttl(input.ttl_secs)?;
        let _write = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let (id, owner) = match input.id.clone() {
            None => (uuid::Uuid::new_v4().to_string(), owner.map(str::to_owned)),
            Some(id) => match self.live_record(&id, now)? {
                Some(existing) if !may_change(&existing) => return Err(DiscoveryError::NotOwner(id)),
                Some(existing) => (id, existing.owner),
                None => (id, owner.map(str::to_owned)),
            },
        };
        let group = input.into_group(id, now);
        self.store.put(&GroupRecord { group: group.clone(), owner })?;
        Ok(group)
    }

    /// Changes the fields `input` names on the live group `id` (Disco's `PATCH`) and
    /// refreshes its `LastUpdated`. `id` is the path's ID, if the request had one; else
    /// the body's `ID` is used.
    pub fn update(
        &self,
        id: Option<&str>,
        input: GroupInput,
        now: u64,
        may_change: impl FnOnce(&GroupRecord) -> bool,
    ) -> Result<Group, DiscoveryError> {
        let id = match (id, input.id.as_deref()) {
            (Some(path), Some(body)) if path != body => {
                return Err(DiscoveryError::IdMismatch { path: path.to_owned(), body: body.to_owned() });
            }
            (Some(id), _) | (None, Some(id)) => id.to_owned(),
            (None, None) => return Err(DiscoveryError::MissingId),
        };
        self.check_ttl(input.ttl_secs)?;
        let _write = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let mut record =
            self.live_record(&id, now)?.ok_or_else(|| DiscoveryError::GroupNotFound(id.clone()))?;
        if !may_change(&record) {
            return Err(DiscoveryError::NotOwner(id));
        }
        input.merge_into(&mut record.group, now);
        self.store.put(&record)?;
        Ok(record.group)
    }

    /// Deletes the live group `id`.
    pub fn delete(
        &self,
        id: &str,
        now: u64,
        may_change: impl FnOnce(&GroupRecord) -> bool,
    ) -> Result<(), DiscoveryError> {
        let _write = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let record =
            self.live_record(id, now)?.ok_or_else(|| DiscoveryError::GroupNotFound(id.to_owned()))?;
        if !may_change(&record) {
            return Err(DiscoveryError::NotOwner(id.to_owned()));
        }
        self.store.remove(id)?;
        Ok(())
    }

    /// The live group `id`.
    pub fn get(&self, id: &str, now: u64) -> Result<Group, DiscoveryError> {
        self.live_record(id, now)?
            .map(|r| r.group)
            .ok_or_else(|| DiscoveryError::GroupNotFound(id.to_owned()))
    }

    /// The live group `id` with its owner.
    pub fn record(&self, id: &str, now: u64) -> Result<Option<GroupRecord>, DiscoveryError> {
        self.live_record(id, now)
    }

    /// Every live group, keyed by ID (Disco's `GET /groups`); only those of `app_id`
    /// when it is given and not empty.
    pub fn list(&self, app_id: Option<&str>, now: u64) -> Result<BTreeMap<String, Group>, DiscoveryError> {
        let app_id = app_id.filter(|a| !a.is_empty());
        Ok(self
            .store
            .all()?
            .into_iter()
            .map(|r| r.group)
            .filter(|g| self.is_live(g, now) && app_id.is_none_or(|a| g.app_id == a))
            .map(|g| (g.id.clone(), g))
            .collect())
    }

    /// Removes every group expired at `now` from the store; how many were removed.
    pub fn sweep(&self, now: u64) -> Result<usize, DiscoveryError> {
        let _write = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let mut removed = 0;
        for record in self.store.all()? {
            if !self.is_live(&record.group, now) && self.store.remove(&record.group.id)? {
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn live_record(&self, id: &str, now: u64) -> Result<Option<GroupRecord>, DiscoveryError> {
        Ok(self.store.get(id)?.filter(|r| self.is_live(&r.group, now)))
    }

    fn check_ttl(&self, ttl_secs: Option<u64>) -> Result<(), DiscoveryError> {
        let max = self.ttl.max.as_secs();
        match ttl_secs {
            Some(0) => Err(DiscoveryError::field("TTL", "must be at least 1 second")),
            Some(t) if t > max => Err(DiscoveryError::field("TTL", format!("must be at most {max} seconds"))),
            _ => Ok(()),
        }
    }
}

/// Runs [`Groups::sweep`] every `heartbeat` (Disco's `--ttl-heartbeat`), with the time
/// from `clock` (unix seconds; [`unix_now`] in a server). Runs until dropped: spawn it.
pub async fn sweep_forever(groups: Arc<Groups>, heartbeat: Duration, clock: impl Fn() -> u64) {
    let mut tick = tokio::time::interval(heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match groups.sweep(clock()) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "swept expired groups"),
            Err(e) => tracing::warn!("sweeping expired groups failed: {e}"),
        }
    }
}

/// The system clock in unix seconds.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::store::MemoryGroupStore;

    const T0: u64 = 1_583_773_505;

    fn groups() -> Groups {
        let ttl = GroupTtl { default: Duration::from_secs(300), max: Duration::from_secs(3600) };
        Groups::new(Arc::new(MemoryGroupStore::new()), ttl)
    }

    fn input(json: &str) -> GroupInput {
        GroupInput::from_json(json.as_bytes()).unwrap()
    }

    fn anyone(_: &GroupRecord) -> bool {
        true
    }

    #[test]
    fn a_group_expires_at_last_updated_plus_ttl_and_is_invisible_before_the_sweep() {
        let g = groups();
        let id = g.upsert(input(r#"{"Name":"g","AppID":"A"}"#), None, T0, anyone).unwrap().id;
        assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 4);
        assert_eq!(g.get(&id, T0 + 299).unwrap().last_updated, T0);
        assert!(matches!(g.get(&id, T0 + 300), Err(DiscoveryError::GroupNotFound(_))));
        assert!(g.list(None, T0 + 300).unwrap().is_empty());
        assert!(g.list(Some("A"), T0 + 299).unwrap().contains_key(&id));
        assert!(matches!(
            g.update(Some(&id), input("{}"), T0 + 300, anyone),
            Err(DiscoveryError::GroupNotFound(_))
        ));
        assert!(matches!(g.delete(&id, T0 + 300, anyone), Err(DiscoveryError::GroupNotFound(_))));
        // Still in the store until swept.
        assert_eq!(g.sweep(T0 + 299).unwrap(), 0);
        assert_eq!(g.sweep(T0 + 300).unwrap(), 1);
        assert!(g.store.all().unwrap().is_empty());
    }

    #[test]
    fn an_update_refreshes_the_ttl() {
        let g = groups();
        let id = g.upsert(input(r#"{"Name":"g"}"#), None, T0, anyone).unwrap().id;
        let updated = g.update(Some(&id), input(r#"{"Name":"h"}"#), T0 + 200, anyone).unwrap();
        assert_eq!((updated.name.as_str(), updated.last_updated), ("h", T0 + 200));
        assert_eq!(g.get(&id, T0 + 499).unwrap().name, "h");
        assert_eq!(g.sweep(T0 + 499).unwrap(), 0);
        assert!(g.get(&id, T0 + 500).is_err());
    }

    #[test]
    fn a_per_group_ttl_overrides_the_default_within_bounds() {
        let g = groups();
        let id = g.upsert(input(r#"{"Name":"g","TTL":10}"#), None, T0, anyone).unwrap().id;
        assert!(g.get(&id, T0 + 9).is_ok());
        assert!(g.get(&id, T0 + 10).is_err());
        let long = g.upsert(input(r#"{"TTL":3600}"#), None, T0, anyone).unwrap().id;
        assert!(g.get(&long, T0 + 3599).is_ok());
        for bad in [r#"{"TTL":0}"#, r#"{"TTL":3601}"#] {
            let err = g.upsert(input(bad), None, T0, anyone).unwrap_err();
            assert!(matches!(&err, DiscoveryError::InvalidField { field, .. } if field == "TTL"), "{err}");
        }
        assert!(g.update(Some(&id), input(r#"{"TTL":0}"#), T0, anyone).is_err());
    }

    #[test]
    fn an_upsert_with_an_id_replaces_in_place_or_creates_with_that_id() {
        let g = groups();
        let created =
            g.upsert(input(r#"{"ID":"2","Name":"a","AppID":"X"}"#), Some("k1"), T0, anyone).unwrap();
        assert_eq!(created.id, "2");
        let replaced = g.upsert(input(r#"{"ID":"2","Name":"b"}"#), Some("k2"), T0 + 5, anyone).unwrap();
        assert_eq!((replaced.name.as_str(), replaced.app_id.as_str()), ("b", ""));
        let record = g.record("2", T0 + 5).unwrap().unwrap();
        assert_eq!(record.owner.as_deref(), Some("k1"), "an in-place replace keeps the owner");
        assert_eq!(g.list(None, T0 + 5).unwrap().len(), 1);
    }

    #[test]
    fn an_expired_id_can_be_taken_by_a_new_owner() {
        let g = groups();
        g.upsert(input(r#"{"ID":"2"}"#), Some("k1"), T0, anyone).unwrap();
        g.upsert(input(r#"{"ID":"2"}"#), Some("k2"), T0 + 300, |_| false).unwrap();
        assert_eq!(g.record("2", T0 + 300).unwrap().unwrap().owner.as_deref(), Some("k2"));
    }

    #[test]
    fn only_callers_allowed_by_may_change_can_change_or_delete() {
        let g = groups();
        g.upsert(input(r#"{"ID":"2","Name":"a"}"#), Some("k1"), T0, anyone).unwrap();
        let owner_is_k2 = |r: &GroupRecord| r.owner.as_deref() == Some("k2");
        assert!(matches!(
            g.upsert(input(r#"{"ID":"2"}"#), Some("k2"), T0, owner_is_k2),
            Err(DiscoveryError::NotOwner(_))
        ));
        assert!(matches!(
            g.update(Some("2"), input("{}"), T0, owner_is_k2),
            Err(DiscoveryError::NotOwner(_))
        ));
        assert!(matches!(g.delete("2", T0, owner_is_k2), Err(DiscoveryError::NotOwner(_))));
        assert_eq!(g.get("2", T0).unwrap().name, "a");
        g.delete("2", T0, |r| r.owner.as_deref() == Some("k1")).unwrap();
        assert!(g.get("2", T0).is_err());
    }

    #[test]
    fn an_update_needs_an_id_and_refuses_two_different_ones() {
        let g = groups();
        g.upsert(input(r#"{"ID":"2","Name":"a","AppID":"X"}"#), None, T0, anyone).unwrap();
        assert!(matches!(
            g.update(None, input(r#"{"Name":"b"}"#), T0, anyone),
            Err(DiscoveryError::MissingId)
        ));
        assert!(matches!(
            g.update(Some("2"), input(r#"{"ID":"3"}"#), T0, anyone),
            Err(DiscoveryError::IdMismatch { .. })
        ));
        let by_body = g.update(None, input(r#"{"ID":"2","Name":"b"}"#), T0, anyone).unwrap();
        assert_eq!((by_body.name.as_str(), by_body.app_id.as_str()), ("b", "X"), "fields not named are kept");
        assert!(matches!(
            g.update(Some("9"), input("{}"), T0, anyone),
            Err(DiscoveryError::GroupNotFound(_))
        ));
    }

    #[test]
    fn list_filters_by_app_id() {
        let g = groups();
        g.upsert(input(r#"{"ID":"1","AppID":"A"}"#), None, T0, anyone).unwrap();
        g.upsert(input(r#"{"ID":"2","AppID":"B"}"#), None, T0, anyone).unwrap();
        let ids = |app: Option<&str>| g.list(app, T0).unwrap().into_keys().collect::<Vec<_>>();
        assert_eq!(ids(Some("A")), ["1"]);
        assert_eq!(ids(Some("")), ["1", "2"]);
        assert_eq!(ids(None), ["1", "2"]);
        assert!(ids(Some("C")).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweeper_removes_expired_groups_every_heartbeat() {
        let g = Arc::new(groups());
        g.upsert(input(r#"{"ID":"1"}"#), None, T0, anyone).unwrap();
        let now = Arc::new(AtomicU64::new(T0));
        let clock = now.clone();
        let sweeper = tokio::spawn(sweep_forever(g.clone(), Duration::from_secs(60), move || {
            clock.load(Ordering::SeqCst)
        }));
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert_eq!(g.store.all().unwrap().len(), 1, "not expired yet");
        now.store(T0 + 300, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(g.store.all().unwrap().is_empty(), "swept at the next heartbeat");
        sweeper.abort();
    }
}
