//! Groups with a time to live: create, upsert, update, delete, list, and the sweeper.
//!
//! Nothing here reads the clock: every operation takes `now` in unix seconds, and the
//! sweeper takes a clock function, so tests move time by hand.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::DiscoveryError;
use crate::group::{Group, GroupInput, GroupRecord};
use crate::store::{GroupStore, Quota, Write, expires_at};

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

/// The group service: a [`GroupStore`] plus TTL rules, tenants, ownership checks and
/// the per-key limit.
///
/// Groups are keyed by (tenant, ID): a tenant sees only its own groups, and two
/// tenants may use the same ID. A group is live while `LastUpdated + ttl > now`; an
/// expired group is invisible to every operation at once, and [`Groups::sweep`]
/// removes it from the store later. Every change is one atomic read-modify-write of
/// the store, so it holds across instances sharing a PostgreSQL database.
pub struct Groups {
    store: Arc<dyn GroupStore>,
    ttl: GroupTtl,
    max_per_key: usize,
}

/// Whether a caller may change a stored group (ownership), asked inside the store's
/// read-modify-write.
pub type MayChange = Box<dyn FnOnce(&GroupRecord) -> bool + Send>;

impl Groups {
    /// A service over `store` with the given TTL rules and at most `max_per_key` live
    /// groups per owner and tenant (for callers the limit applies to).
    pub fn new(store: Arc<dyn GroupStore>, ttl: GroupTtl, max_per_key: usize) -> Groups {
        Groups { store, ttl, max_per_key }
    }

    /// The TTL rules.
    pub fn ttl(&self) -> GroupTtl {
        self.ttl
    }

    /// The most live groups one key may own (`--max-groups-per-key`).
    pub fn max_per_key(&self) -> usize {
        self.max_per_key
    }

    /// The store, e.g. to check that it answers.
    pub fn store(&self) -> &Arc<dyn GroupStore> {
        &self.store
    }

    /// The TTL of `group` in seconds: its own, or the default.
    pub fn ttl_secs_of(&self, group: &Group) -> u64 {
        group.ttl_secs.unwrap_or(self.ttl.default.as_secs())
    }

    /// Whether `group` is still live at `now`.
    pub fn is_live(&self, group: &Group, now: u64) -> bool {
        expires_at(group, self.ttl.default.as_secs()) > now
    }

    fn quota(&self, limited: bool, now: u64) -> Option<Quota> {
        limited.then_some(Quota { max: self.max_per_key, now, default_ttl_secs: self.ttl.default.as_secs() })
    }

    /// Creates a group in `tenant` (Disco's `POST /group`). Without an ID, a UUID v4 is
    /// generated. With the ID of a live group of the tenant, that group is replaced in
    /// place (absent fields become empty, as in Disco) and keeps its owner, if
    /// `may_change` allows it; with any other ID, a group is created under that ID,
    /// owned by `owner`. When `limited`, a create beyond the per-key limit is refused
    /// with [`DiscoveryError::TooManyGroups`].
    pub async fn upsert(
        &self,
        tenant: &str,
        input: GroupInput,
        owner: Option<&str>,
        now: u64,
        limited: bool,
        may_change: MayChange,
    ) -> Result<Group, DiscoveryError> {
        self.check_ttl(input.ttl_secs)?;
        let id = input.id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let (owner, record_tenant, record_id) = (owner.map(str::to_owned), tenant.to_owned(), id.clone());
        let default_ttl = self.ttl.default.as_secs();
        let decide = Box::new(move |stored: Option<GroupRecord>| {
            let live = stored.filter(|r| expires_at(&r.group, default_ttl) > now);
            let (owner, creates) = match live {
                Some(existing) if !may_change(&existing) => return Err(DiscoveryError::NotOwner(record_id)),
                Some(existing) => (existing.owner, false),
                None => (owner, true),
            };
            let record =
                GroupRecord { group: input.into_group(record_id, now), tenant: record_tenant, owner };
            Ok(Write::Put { record, creates })
        });
        written_group(self.store.modify(tenant, &id, self.quota(limited, now), decide).await?)
    }

    /// Changes the fields `input` names on the live group `id` of `tenant` (Disco's
    /// `PATCH`) and refreshes its `LastUpdated`. `id` is the path's ID, if the request
    /// had one; else the body's `ID` is used.
    pub async fn update(
        &self,
        tenant: &str,
        id: Option<&str>,
        input: GroupInput,
        now: u64,
        may_change: MayChange,
    ) -> Result<Group, DiscoveryError> {
        let id = match (id, input.id.as_deref()) {
            (Some(path), Some(body)) if path != body => {
                return Err(DiscoveryError::IdMismatch { path: path.to_owned(), body: body.to_owned() });
            }
            (Some(id), _) | (None, Some(id)) => id.to_owned(),
            (None, None) => return Err(DiscoveryError::MissingId),
        };
        self.check_ttl(input.ttl_secs)?;
        let (record_id, default_ttl) = (id.clone(), self.ttl.default.as_secs());
        let decide = Box::new(move |stored: Option<GroupRecord>| {
            let mut record = stored
                .filter(|r| expires_at(&r.group, default_ttl) > now)
                .ok_or_else(|| DiscoveryError::GroupNotFound(record_id.clone()))?;
            if !may_change(&record) {
                return Err(DiscoveryError::NotOwner(record_id));
            }
            input.merge_into(&mut record.group, now);
            Ok(Write::Put { record, creates: false })
        });
        written_group(self.store.modify(tenant, &id, None, decide).await?)
    }

    /// Deletes the live group `id` of `tenant`.
    pub async fn delete(
        &self,
        tenant: &str,
        id: &str,
        now: u64,
        may_change: MayChange,
    ) -> Result<(), DiscoveryError> {
        let (record_id, default_ttl) = (id.to_owned(), self.ttl.default.as_secs());
        let decide = Box::new(move |stored: Option<GroupRecord>| {
            let record = stored
                .filter(|r| expires_at(&r.group, default_ttl) > now)
                .ok_or_else(|| DiscoveryError::GroupNotFound(record_id.clone()))?;
            if !may_change(&record) {
                return Err(DiscoveryError::NotOwner(record_id));
            }
            Ok(Write::Remove)
        });
        self.store.modify(tenant, id, None, decide).await?;
        Ok(())
    }

    /// The live group `id` of `tenant`.
    pub async fn get(&self, tenant: &str, id: &str, now: u64) -> Result<Group, DiscoveryError> {
        self.record(tenant, id, now)
            .await?
            .map(|r| r.group)
            .ok_or_else(|| DiscoveryError::GroupNotFound(id.to_owned()))
    }

    /// The live group `id` of `tenant` with its owner.
    pub async fn record(
        &self,
        tenant: &str,
        id: &str,
        now: u64,
    ) -> Result<Option<GroupRecord>, DiscoveryError> {
        Ok(self.store.get(tenant, id).await?.filter(|r| self.is_live(&r.group, now)))
    }

    /// Every live group of `tenant` (of every tenant when `None`: the operator's view),
    /// in (tenant, ID) order; only those of `app_id` when it is given and not empty.
    pub async fn list(
        &self,
        tenant: Option<&str>,
        app_id: Option<&str>,
        now: u64,
    ) -> Result<Vec<GroupRecord>, DiscoveryError> {
        let app_id = app_id.filter(|a| !a.is_empty());
        Ok(self
            .store
            .list(tenant)
            .await?
            .into_iter()
            .filter(|r| self.is_live(&r.group, now) && app_id.is_none_or(|a| r.group.app_id == a))
            .collect())
    }

    /// Removes every group expired at `now` from the store; how many this call removed.
    pub async fn sweep(&self, now: u64) -> Result<usize, DiscoveryError> {
        self.store.remove_expired(now, self.ttl.default.as_secs()).await
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

/// The group a [`Write::Put`] stored.
fn written_group(write: Write) -> Result<Group, DiscoveryError> {
    match write {
        Write::Put { record, .. } => Ok(record.group),
        Write::Remove => {
            Err(DiscoveryError::Backend("the store removed a group it was asked to write".into()))
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
        match groups.sweep(clock()).await {
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
    const T: &str = "tenant-a";

    fn groups() -> Groups {
        let ttl = GroupTtl { default: Duration::from_secs(300), max: Duration::from_secs(3600) };
        Groups::new(Arc::new(MemoryGroupStore::new()), ttl, 3)
    }

    fn input(json: &str) -> GroupInput {
        GroupInput::from_json(json.as_bytes()).unwrap()
    }

    fn anyone() -> MayChange {
        Box::new(|_| true)
    }

    fn owner_is(key: &'static str) -> MayChange {
        Box::new(move |r| r.owner.as_deref() == Some(key))
    }

    #[tokio::test]
    async fn a_group_expires_at_last_updated_plus_ttl_and_is_invisible_before_the_sweep() {
        let g = groups();
        let id =
            g.upsert(T, input(r#"{"Name":"g","AppID":"A"}"#), None, T0, true, anyone()).await.unwrap().id;
        assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 4);
        assert_eq!(g.get(T, &id, T0 + 299).await.unwrap().last_updated, T0);
        assert!(matches!(g.get(T, &id, T0 + 300).await, Err(DiscoveryError::GroupNotFound(_))));
        assert!(g.list(Some(T), None, T0 + 300).await.unwrap().is_empty());
        assert_eq!(g.list(Some(T), Some("A"), T0 + 299).await.unwrap()[0].group.id, id);
        assert!(matches!(
            g.update(T, Some(&id), input("{}"), T0 + 300, anyone()).await,
            Err(DiscoveryError::GroupNotFound(_))
        ));
        assert!(matches!(g.delete(T, &id, T0 + 300, anyone()).await, Err(DiscoveryError::GroupNotFound(_))));
        // Still in the store until swept.
        assert_eq!(g.sweep(T0 + 299).await.unwrap(), 0);
        assert_eq!(g.sweep(T0 + 300).await.unwrap(), 1);
        assert!(g.store.list(None).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_update_refreshes_the_ttl() {
        let g = groups();
        let id = g.upsert(T, input(r#"{"Name":"g"}"#), None, T0, true, anyone()).await.unwrap().id;
        let updated = g.update(T, Some(&id), input(r#"{"Name":"h"}"#), T0 + 200, anyone()).await.unwrap();
        assert_eq!((updated.name.as_str(), updated.last_updated), ("h", T0 + 200));
        assert_eq!(g.get(T, &id, T0 + 499).await.unwrap().name, "h");
        assert_eq!(g.sweep(T0 + 499).await.unwrap(), 0);
        assert!(g.get(T, &id, T0 + 500).await.is_err());
    }

    #[tokio::test]
    async fn a_per_group_ttl_overrides_the_default_within_bounds() {
        let g = groups();
        let id = g.upsert(T, input(r#"{"Name":"g","TTL":10}"#), None, T0, true, anyone()).await.unwrap().id;
        assert!(g.get(T, &id, T0 + 9).await.is_ok());
        assert!(g.get(T, &id, T0 + 10).await.is_err());
        let long = g.upsert(T, input(r#"{"TTL":3600}"#), None, T0, true, anyone()).await.unwrap().id;
        assert!(g.get(T, &long, T0 + 3599).await.is_ok());
        for bad in [r#"{"TTL":0}"#, r#"{"TTL":3601}"#] {
            let err = g.upsert(T, input(bad), None, T0, true, anyone()).await.unwrap_err();
            assert!(matches!(&err, DiscoveryError::InvalidField { field, .. } if field == "TTL"), "{err}");
        }
        assert!(g.update(T, Some(&id), input(r#"{"TTL":0}"#), T0, anyone()).await.is_err());
    }

    #[tokio::test]
    async fn an_upsert_with_an_id_replaces_in_place_or_creates_with_that_id() {
        let g = groups();
        let created = g
            .upsert(T, input(r#"{"ID":"2","Name":"a","AppID":"X"}"#), Some("k1"), T0, true, anyone())
            .await
            .unwrap();
        assert_eq!(created.id, "2");
        let replaced =
            g.upsert(T, input(r#"{"ID":"2","Name":"b"}"#), Some("k2"), T0 + 5, true, anyone()).await.unwrap();
        assert_eq!((replaced.name.as_str(), replaced.app_id.as_str()), ("b", ""));
        let record = g.record(T, "2", T0 + 5).await.unwrap().unwrap();
        assert_eq!(record.owner.as_deref(), Some("k1"), "an in-place replace keeps the owner");
        assert_eq!(record.tenant, T);
        assert_eq!(g.list(Some(T), None, T0 + 5).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn an_expired_id_can_be_taken_by_a_new_owner() {
        let g = groups();
        g.upsert(T, input(r#"{"ID":"2"}"#), Some("k1"), T0, true, anyone()).await.unwrap();
        g.upsert(T, input(r#"{"ID":"2"}"#), Some("k2"), T0 + 300, true, Box::new(|_| false)).await.unwrap();
        assert_eq!(g.record(T, "2", T0 + 300).await.unwrap().unwrap().owner.as_deref(), Some("k2"));
    }

    #[tokio::test]
    async fn only_callers_allowed_by_may_change_can_change_or_delete() {
        let g = groups();
        g.upsert(T, input(r#"{"ID":"2","Name":"a"}"#), Some("k1"), T0, true, anyone()).await.unwrap();
        assert!(matches!(
            g.upsert(T, input(r#"{"ID":"2"}"#), Some("k2"), T0, true, owner_is("k2")).await,
            Err(DiscoveryError::NotOwner(_))
        ));
        assert!(matches!(
            g.update(T, Some("2"), input("{}"), T0, owner_is("k2")).await,
            Err(DiscoveryError::NotOwner(_))
        ));
        assert!(matches!(g.delete(T, "2", T0, owner_is("k2")).await, Err(DiscoveryError::NotOwner(_))));
        assert_eq!(g.get(T, "2", T0).await.unwrap().name, "a");
        g.delete(T, "2", T0, owner_is("k1")).await.unwrap();
        assert!(g.get(T, "2", T0).await.is_err());
    }

    #[tokio::test]
    async fn tenants_have_their_own_ids_and_never_see_each_other() {
        let g = groups();
        g.upsert("a", input(r#"{"ID":"g1","Name":"of a"}"#), Some("ka"), T0, true, anyone()).await.unwrap();
        g.upsert("b", input(r#"{"ID":"g1","Name":"of b"}"#), Some("kb"), T0, true, anyone()).await.unwrap();
        assert_eq!(g.get("a", "g1", T0).await.unwrap().name, "of a");
        assert_eq!(g.get("b", "g1", T0).await.unwrap().name, "of b");
        assert!(matches!(g.get("c", "g1", T0).await, Err(DiscoveryError::GroupNotFound(_))));
        assert!(matches!(
            g.update("c", Some("g1"), input("{}"), T0, anyone()).await,
            Err(DiscoveryError::GroupNotFound(_))
        ));
        assert!(matches!(g.delete("c", "g1", T0, anyone()).await, Err(DiscoveryError::GroupNotFound(_))));
        assert_eq!(g.list(Some("a"), None, T0).await.unwrap().len(), 1);
        assert_eq!(g.list(None, None, T0).await.unwrap().len(), 2);
        g.delete("a", "g1", T0, anyone()).await.unwrap();
        assert_eq!(g.get("b", "g1", T0).await.unwrap().name, "of b");
    }

    #[tokio::test]
    async fn a_key_may_own_at_most_max_per_key_live_groups() {
        let g = groups();
        for i in 0..3 {
            g.upsert(T, input(&format!(r#"{{"ID":"{i}"}}"#)), Some("k1"), T0, true, anyone()).await.unwrap();
        }
        let err = g.upsert(T, input(r#"{"ID":"3"}"#), Some("k1"), T0, true, anyone()).await.unwrap_err();
        assert!(matches!(err, DiscoveryError::TooManyGroups { max: 3 }), "{err}");
        // Replacing one of its own is no new group; another key and the unlimited admin go on.
        g.upsert(T, input(r#"{"ID":"0","Name":"again"}"#), Some("k1"), T0, true, anyone()).await.unwrap();
        g.upsert(T, input(r#"{"ID":"3"}"#), Some("k2"), T0, true, anyone()).await.unwrap();
        g.upsert(T, input(r#"{"ID":"4"}"#), None, T0, false, anyone()).await.unwrap();
        // Deleted or expired groups free their places.
        g.delete(T, "1", T0, anyone()).await.unwrap();
        g.upsert(T, input(r#"{"ID":"5"}"#), Some("k1"), T0, true, anyone()).await.unwrap();
        g.upsert(T, input(r#"{"ID":"6"}"#), Some("k1"), T0 + 300, true, anyone()).await.unwrap();
    }

    #[tokio::test]
    async fn an_update_needs_an_id_and_refuses_two_different_ones() {
        let g = groups();
        g.upsert(T, input(r#"{"ID":"2","Name":"a","AppID":"X"}"#), None, T0, true, anyone()).await.unwrap();
        assert!(matches!(
            g.update(T, None, input(r#"{"Name":"b"}"#), T0, anyone()).await,
            Err(DiscoveryError::MissingId)
        ));
        assert!(matches!(
            g.update(T, Some("2"), input(r#"{"ID":"3"}"#), T0, anyone()).await,
            Err(DiscoveryError::IdMismatch { .. })
        ));
        let by_body = g.update(T, None, input(r#"{"ID":"2","Name":"b"}"#), T0, anyone()).await.unwrap();
        assert_eq!((by_body.name.as_str(), by_body.app_id.as_str()), ("b", "X"), "fields not named are kept");
        assert!(matches!(
            g.update(T, Some("9"), input("{}"), T0, anyone()).await,
            Err(DiscoveryError::GroupNotFound(_))
        ));
    }

    #[tokio::test]
    async fn list_filters_by_app_id() {
        let g = groups();
        g.upsert(T, input(r#"{"ID":"1","AppID":"A"}"#), None, T0, true, anyone()).await.unwrap();
        g.upsert(T, input(r#"{"ID":"2","AppID":"B"}"#), None, T0, true, anyone()).await.unwrap();
        let ids = async |app: Option<&str>| {
            g.list(Some(T), app, T0).await.unwrap().into_iter().map(|r| r.group.id).collect::<Vec<_>>()
        };
        assert_eq!(ids(Some("A")).await, ["1"]);
        assert_eq!(ids(Some("")).await, ["1", "2"]);
        assert_eq!(ids(None).await, ["1", "2"]);
        assert!(ids(Some("C")).await.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_sweeper_removes_expired_groups_every_heartbeat() {
        let g = Arc::new(groups());
        g.upsert(T, input(r#"{"ID":"1"}"#), None, T0, true, anyone()).await.unwrap();
        let now = Arc::new(AtomicU64::new(T0));
        let clock = now.clone();
        let sweeper = tokio::spawn(sweep_forever(g.clone(), Duration::from_secs(60), move || {
            clock.load(Ordering::SeqCst)
        }));
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert_eq!(g.store.list(None).await.unwrap().len(), 1, "not expired yet");
        now.store(T0 + 300, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(g.store.list(None).await.unwrap().is_empty(), "swept at the next heartbeat");
        sweeper.abort();
    }
}
