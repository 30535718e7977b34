//! Groups and the relay registry in PostgreSQL, shared by every instance that points
//! `--database-url` at the same database.
//!
//! [`PgStores::connect`] checks the URL, runs the embedded migrations under a
//! session-level `pg_advisory_lock` (two instances starting at once apply each one
//! once; the history is in `relay_discovery_migrations`), then opens a pool
//! (deadpool-postgres over tokio-postgres, no TLS). A read-modify-write of a group is
//! one transaction holding a transaction-level advisory lock on its (tenant, ID), and,
//! when it creates a group, one on its owner, so ownership checks and the per-key
//! limit hold across instances. Sweeps are plain `DELETE ... WHERE expired`: two
//! instances sweeping at once remove each row once and never fight.
//!
//! Errors that mean the server is unreachable (no connection, pool timeout, SQLSTATE
//! classes 08 and 57P) are [`DiscoveryError::Unavailable`], naming PostgreSQL and
//! `host:port`, never the password; every call is bounded by [`QUERY_TIMEOUT`].

use std::future::Future;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use tokio_postgres::config::Host;

use crate::error::DiscoveryError;
use crate::group::{Group, GroupRecord};
use crate::registry::{Announcement, RegistryStore, RelayEntry};
use crate::store::{Decide, GroupStore, Quota, Write};

/// How long one storage call (pool checkout, queries, commit) may take before it is
/// reported as PostgreSQL being unavailable.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long opening a connection may take (unless the URL sets `connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections per instance's pool.
const POOL_SIZE: usize = 16;

/// The `pg_advisory_lock` key under which migrations run (the bytes of "relaydis").
const MIGRATION_LOCK: i64 = 0x7265_6c61_7964_6973;

/// The embedded migrations: version, name, SQL. Append only; never edit one released.
const MIGRATIONS: &[(i32, &str, &str)] =
    &[(1, "groups and relays", include_str!("../migrations/0001_groups_and_relays.sql"))];

/// The group store and the registry store over one pool.
#[derive(Clone)]
pub struct PgStores {
    /// Groups, keyed by (tenant, ID).
    pub groups: PgGroupStore,
    /// Registry entries.
    pub registry: PgRegistryStore,
}

/// A pool and where it points (for messages).
#[derive(Clone)]
struct Db {
    pool: Pool,
    location: String,
}

/// Groups in PostgreSQL (`relay_discovery_groups`).
#[derive(Clone)]
pub struct PgGroupStore {
    db: Db,
}

/// Registry entries in PostgreSQL (`relay_discovery_relays`).
#[derive(Clone)]
pub struct PgRegistryStore {
    db: Db,
}

impl std::fmt::Debug for PgStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStores").field("location", &self.groups.db.location).finish()
    }
}

/// `host:port` of a parsed config, for messages (never user or password).
pub fn location_of(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match host {
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(path) => format!("{}:{port}", path.display()),
            }
        })
        .collect();
    if hosts.is_empty() { "localhost:5432".to_owned() } else { hosts.join(",") }
}

impl PgStores {
    /// Connects to `url` (`postgres://user:password@host:port/database`), runs the
    /// migrations, and checks that the pool answers. Fails with
    /// [`DiscoveryError::Unavailable`] naming PostgreSQL and `host:port` when the
    /// server cannot be reached, [`DiscoveryError::Backend`] for a bad URL or schema.
    pub async fn connect(url: &str) -> Result<PgStores, DiscoveryError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
            DiscoveryError::Backend(format!("the database URL is not a valid PostgreSQL URL: {e}"))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let location = location_of(&config);
        migrate(&config, &location).await?;
        let manager =
            Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(QUERY_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(QUERY_TIMEOUT))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| DiscoveryError::Backend(format!("cannot build the PostgreSQL pool: {e}")))?;
        let db = Db { pool, location };
        let stores = PgStores { groups: PgGroupStore { db: db.clone() }, registry: PgRegistryStore { db } };
        stores.groups.check().await?;
        Ok(stores)
    }

    /// `host:port` of the server, for messages.
    pub fn location(&self) -> &str {
        &self.groups.db.location
    }
}

/// Applies the migrations this database lacks, under a session-level advisory lock on
/// a connection of its own (closed afterwards, which releases the lock even on error).
async fn migrate(config: &tokio_postgres::Config, location: &str) -> Result<(), DiscoveryError> {
    let (mut client, connection) =
        config.connect(NoTls).await.map_err(|e| unavailable(location, &e.to_string()))?;
    let driver = tokio::spawn(connection);
    let result = async {
        let err = |e: tokio_postgres::Error| pg_error(location, e);
        client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await.map_err(err)?;
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS relay_discovery_migrations (
                     version    integer     PRIMARY KEY,
                     name       text        NOT NULL,
                     applied_at timestamptz NOT NULL DEFAULT now())",
            )
            .await
            .map_err(err)?;
        let applied: Vec<i32> = client
            .query("SELECT version FROM relay_discovery_migrations ORDER BY version", &[])
            .await
            .map_err(err)?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let known = MIGRATIONS.last().map_or(0, |m| m.0);
        if let Some(newer) = applied.iter().find(|v| **v > known) {
            return Err(DiscoveryError::Backend(format!(
                "the discovery schema in PostgreSQL at {location} is at version {newer}, newer than this \
                 relay knows ({known}): upgrade the relay"
            )));
        }
        for (version, name, sql) in MIGRATIONS.iter().filter(|m| !applied.contains(&m.0)) {
            let tx = client.transaction().await.map_err(err)?;
            tx.batch_execute(sql).await.map_err(err)?;
            tx.execute(
                "INSERT INTO relay_discovery_migrations (version, name) VALUES ($1, $2)",
                &[version, name],
            )
            .await
            .map_err(err)?;
            tx.commit().await.map_err(err)?;
            tracing::info!(version, name, location, "applied discovery migration");
        }
        client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await.map_err(err)?;
        Ok(())
    };
    let result = tokio::time::timeout(QUERY_TIMEOUT * 6, result)
        .await
        .unwrap_or_else(|_| Err(unavailable(location, "the migrations did not finish in time")));
    drop(client);
    driver.abort();
    result
}

fn unavailable(location: &str, detail: &str) -> DiscoveryError {
    DiscoveryError::Unavailable(format!("PostgreSQL at {location} is unreachable: {detail}"))
}

/// Sorts a driver error: the server gone (no database error, or SQLSTATE 08xxx
/// connection exception / 57P admin shutdown) or a real refusal.
fn pg_error(location: &str, e: tokio_postgres::Error) -> DiscoveryError {
    match e.code().map(|c| c.code()) {
        Some(code) if !code.starts_with("08") && !code.starts_with("57P") => {
            DiscoveryError::Backend(format!("PostgreSQL at {location}: {e}"))
        }
        _ => unavailable(location, &e.to_string()),
    }
}

impl Db {
    fn pool_error(&self, e: PoolError) -> DiscoveryError {
        match e {
            PoolError::Backend(e) => pg_error(&self.location, e),
            other => unavailable(&self.location, &other.to_string()),
        }
    }

    fn err(&self) -> impl Fn(tokio_postgres::Error) -> DiscoveryError + '_ {
        |e| pg_error(&self.location, e)
    }

    /// Runs `f` under [`QUERY_TIMEOUT`].
    async fn bounded<T>(
        &self,
        f: impl Future<Output = Result<T, DiscoveryError>>,
    ) -> Result<T, DiscoveryError> {
        tokio::time::timeout(QUERY_TIMEOUT, f)
            .await
            .unwrap_or_else(|_| Err(unavailable(&self.location, &format!("no answer in {QUERY_TIMEOUT:?}"))))
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, DiscoveryError> {
        self.pool.get().await.map_err(|e| self.pool_error(e))
    }
}

/// A stored u64 as PostgreSQL's bigint.
fn to_i64(value: u64, field: &str) -> Result<i64, DiscoveryError> {
    i64::try_from(value).map_err(|_| DiscoveryError::field(field, "is too large"))
}

/// A bigint read back (never negative when this crate wrote it).
fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn decode_group(tenant: String, owner: Option<String>, body: &str) -> Result<GroupRecord, DiscoveryError> {
    let group: Group = serde_json::from_str(body)
        .map_err(|source| DiscoveryError::Corrupt { key: tenant.clone(), source })?;
    Ok(GroupRecord { group, tenant, owner })
}

/// The advisory-lock key (a text hashed to bigint by PostgreSQL) of a group.
fn group_lock(tenant: &str, id: &str) -> String {
    format!("relay-discovery-group/{tenant}/{id}")
}

/// The advisory-lock key of an owner's quota in a tenant.
fn owner_lock(tenant: &str, owner: Option<&str>) -> String {
    match owner {
        Some(key) => format!("relay-discovery-owner/{tenant}/key/{key}"),
        None => format!("relay-discovery-owner/{tenant}/open"),
    }
}

#[async_trait::async_trait]
impl GroupStore for PgGroupStore {
    async fn get(&self, tenant: &str, id: &str) -> Result<Option<GroupRecord>, DiscoveryError> {
        let db = &self.db;
        db.bounded(async {
            let client = db.client().await?;
            let row = client
                .query_opt(
                    "SELECT owner, body FROM relay_discovery_groups WHERE tenant = $1 AND id = $2",
                    &[&tenant, &id],
                )
                .await
                .map_err(db.err())?;
            row.map(|row| decode_group(tenant.to_owned(), row.get(0), row.get(1))).transpose()
        })
        .await
    }

    async fn list(&self, tenant: Option<&str>) -> Result<Vec<GroupRecord>, DiscoveryError> {
        let db = &self.db;
        db.bounded(async {
            let client = db.client().await?;
            let rows = client
                .query(
                    "SELECT tenant, owner, body FROM relay_discovery_groups
                     WHERE $1::text IS NULL OR tenant = $1 ORDER BY tenant, id",
                    &[&tenant],
                )
                .await
                .map_err(db.err())?;
            rows.iter().map(|row| decode_group(row.get(0), row.get(1), row.get(2))).collect()
        })
        .await
    }

    async fn modify(
        &self,
        tenant: &str,
        id: &str,
        quota: Option<Quota>,
        decide: Decide,
    ) -> Result<Write, DiscoveryError> {
        let db = &self.db;
        db.bounded(async {
            let mut client = db.client().await?;
            let tx = client.transaction().await.map_err(db.err())?;
            tx.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", &[&group_lock(tenant, id)])
                .await
                .map_err(db.err())?;
            let row = tx
                .query_opt(
                    "SELECT owner, body FROM relay_discovery_groups WHERE tenant = $1 AND id = $2",
                    &[&tenant, &id],
                )
                .await
                .map_err(db.err())?;
            let stored =
                row.map(|row| decode_group(tenant.to_owned(), row.get(0), row.get(1))).transpose()?;
            // A refusal drops `tx`: rolled back, nothing written.
            let write = decide(stored)?;
            if let (Write::Put { record, creates: true }, Some(quota)) = (&write, quota) {
                let owner = record.owner.as_deref();
                tx.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                    &[&owner_lock(tenant, owner)],
                )
                .await
                .map_err(db.err())?;
                let owned: i64 = tx
                    .query_one(
                        "SELECT count(*) FROM relay_discovery_groups
                         WHERE tenant = $1 AND owner IS NOT DISTINCT FROM $2 AND id <> $3
                           AND last_updated + COALESCE(ttl_secs, $4) > $5",
                        &[
                            &tenant,
                            &owner,
                            &id,
                            &to_i64(quota.default_ttl_secs, "TTL")?,
                            &to_i64(quota.now, "LastUpdated")?,
                        ],
                    )
                    .await
                    .map_err(db.err())?
                    .get(0);
                if to_u64(owned) >= quota.max as u64 {
                    return Err(DiscoveryError::TooManyGroups { max: quota.max });
                }
            }
            match &write {
                Write::Put { record, .. } => {
                    let body = serde_json::to_string(&record.group)
                        .map_err(|source| DiscoveryError::Corrupt { key: id.to_owned(), source })?;
                    let ttl = record.group.ttl_secs.map(|t| to_i64(t, "TTL")).transpose()?;
                    tx.execute(
                        "INSERT INTO relay_discovery_groups (tenant, id, owner, last_updated, ttl_secs, body)
                         VALUES ($1, $2, $3, $4, $5, $6)
                         ON CONFLICT (tenant, id) DO UPDATE SET owner = EXCLUDED.owner,
                           last_updated = EXCLUDED.last_updated, ttl_secs = EXCLUDED.ttl_secs,
                           body = EXCLUDED.body",
                        &[
                            &tenant,
                            &id,
                            &record.owner,
                            &to_i64(record.group.last_updated, "LastUpdated")?,
                            &ttl,
                            &body,
                        ],
                    )
                    .await
                    .map_err(db.err())?;
                }
                Write::Remove => {
                    tx.execute(
                        "DELETE FROM relay_discovery_groups WHERE tenant = $1 AND id = $2",
                        &[&tenant, &id],
                    )
                    .await
                    .map_err(db.err())?;
                }
            }
            tx.commit().await.map_err(db.err())?;
            Ok(write)
        })
        .await
    }

    async fn remove_expired(&self, now: u64, default_ttl_secs: u64) -> Result<usize, DiscoveryError> {
        let db = &self.db;
        db.bounded(async {
            let client = db.client().await?;
            let removed = client
                .execute(
                    "DELETE FROM relay_discovery_groups WHERE last_updated + COALESCE(ttl_secs, $1) <= $2",
                    &[&to_i64(default_ttl_secs, "TTL")?, &to_i64(now, "now")?],
                )
                .await
                .map_err(db.err())?;
            Ok(usize::try_from(removed).unwrap_or(usize::MAX))
        })
        .await
    }

    async fn check(&self) -> Result<(), DiscoveryError> {
        let db = &self.db;
        db.bounded(async {
            let client = db.client().await?;
            client.execute("SELECT 1", &[]).await.map_err(db.err())?;
            Ok(())
        })
        .await
    }
}

#[async_trait::async_trait]
impl RegistryStore for PgRegistryStore {
    async fn announce(
        &self,
        announcement: Announcement,
        ttl_secs: u64,
        now: u64,
    ) -> Result<RelayEntry, DiscoveryError> {
        let db = &self.db;
        db.bounded(async {
            let client = db.client().await?;
            let expires_at = to_i64(now.saturating_add(ttl_secs), "ttl_secs")?;
            let row = client
                .query_one(
                    "INSERT INTO relay_discovery_relays AS r
                       (url, room_id_prefix, registered_at, last_announced_at, expires_at, ttl_secs)
                     VALUES ($1, $2, $3, $3, $4, $5)
                     ON CONFLICT (url) DO UPDATE SET room_id_prefix = EXCLUDED.room_id_prefix,
                       registered_at = CASE WHEN r.expires_at > EXCLUDED.last_announced_at
                                            THEN r.registered_at ELSE EXCLUDED.registered_at END,
                       last_announced_at = EXCLUDED.last_announced_at,
                       expires_at = EXCLUDED.expires_at, ttl_secs = EXCLUDED.ttl_secs
                     RETURNING url, room_id_prefix, registered_at, last_announced_at, expires_at, ttl_secs",
                    &[
                        &announcement.url,
                        &announcement.room_id_prefix,
                        &to_i64(now, "now")?,
                        &expires_at,
                        &to_i64(ttl_secs, "ttl_secs")?,
                    ],
                )
                .await
                .map_err(db.err())?;
            Ok(relay_entry(&row))
        })
        .await
    }

    async fn list_live(&self, now: u64) -> Result<Vec<RelayEntry>, DiscoveryError> {
        let db = &self.db;
        db.bounded(async {
            let client = db.client().await?;
            let rows = client
                .query(
                    "SELECT url, room_id_prefix, registered_at, last_announced_at, expires_at, ttl_secs
                     FROM relay_discovery_relays WHERE expires_at > $1 ORDER BY url",
                    &[&to_i64(now, "now")?],
                )
                .await
                .map_err(db.err())?;
            Ok(rows.iter().map(relay_entry).collect())
        })
        .await
    }

    async fn remove_expired(&self, now: u64) -> Result<usize, DiscoveryError> {
        let db = &self.db;
        db.bounded(async {
            let client = db.client().await?;
            let removed = client
                .execute("DELETE FROM relay_discovery_relays WHERE expires_at <= $1", &[&to_i64(now, "now")?])
                .await
                .map_err(db.err())?;
            Ok(usize::try_from(removed).unwrap_or(usize::MAX))
        })
        .await
    }
}

fn relay_entry(row: &tokio_postgres::Row) -> RelayEntry {
    RelayEntry {
        url: row.get(0),
        room_id_prefix: row.get(1),
        registered_at: to_u64(row.get(2)),
        last_announced_at: to_u64(row.get(3)),
        expires_at: to_u64(row.get(4)),
        ttl_secs: to_u64(row.get(5)),
    }
}

#[cfg(test)]
mod tests {
    //! Against the real PostgreSQL (127.0.0.1:5432, user postgres, trust auth; or
    //! `RELAY_TEST_POSTGRES_URL`): each test in a database of its own, dropped after.
    //! Skipped with a message when the server is unreachable, unless
    //! `RELAY_REQUIRE_SERVICES=1`.

    use std::sync::Arc;

    use super::*;
    use crate::group::GroupInput;
    use crate::groups::{GroupTtl, Groups};

    const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

    struct TestDb {
        url: String,
        name: String,
        admin_url: String,
    }

    async fn admin_client(url: &str) -> Result<tokio_postgres::Client, String> {
        let connect = tokio_postgres::connect(url, NoTls);
        let (client, connection) = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("no answer".into()),
        };
        tokio::spawn(connection);
        Ok(client)
    }

    impl TestDb {
        async fn create() -> Option<TestDb> {
            let admin_url =
                std::env::var("RELAY_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned());
            let client = match admin_client(&admin_url).await {
                Ok(c) => c,
                Err(e) if std::env::var("RELAY_REQUIRE_SERVICES").as_deref() == Ok("1") => {
                    panic!("PostgreSQL at {admin_url} is required (RELAY_REQUIRE_SERVICES=1): {e}")
                }
                Err(e) => {
                    eprintln!("SKIPPED: needs PostgreSQL at {admin_url} ({e})");
                    return None;
                }
            };
            let name = format!("relay_disc_test_{}", uuid::Uuid::new_v4().simple());
            client.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("CREATE DATABASE");
            let base = admin_url.rsplit_once('/').map_or(admin_url.as_str(), |(b, _)| b);
            Some(TestDb { url: format!("{base}/{name}"), name, admin_url })
        }
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
                rt.block_on(async {
                    let client = admin_client(&admin_url).await.ok()?;
                    client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await.ok()
                })
            })
            .join();
        }
    }

    #[tokio::test]
    async fn the_group_store_keeps_the_contract() {
        let Some(db) = TestDb::create().await else { return };
        let stores = PgStores::connect(&db.url).await.unwrap();
        crate::store::tests::exercise(&stores.groups).await;
    }

    #[tokio::test]
    async fn the_registry_store_keeps_the_contract() {
        let Some(db) = TestDb::create().await else { return };
        let stores = PgStores::connect(&db.url).await.unwrap();
        crate::registry::tests::exercise(Arc::new(stores.registry)).await;
    }

    #[tokio::test]
    async fn two_instances_starting_at_once_apply_each_migration_once() {
        let Some(db) = TestDb::create().await else { return };
        let (a, b, c) =
            tokio::join!(PgStores::connect(&db.url), PgStores::connect(&db.url), PgStores::connect(&db.url));
        a.unwrap();
        b.unwrap();
        c.unwrap();
        let client = admin_client(&db.url).await.unwrap();
        let rows = client.query("SELECT version FROM relay_discovery_migrations", &[]).await.unwrap();
        let versions: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
        assert_eq!(versions, MIGRATIONS.iter().map(|m| m.0).collect::<Vec<_>>());
        // A schema newer than this build knows is refused, naming the version.
        client
            .execute("INSERT INTO relay_discovery_migrations (version, name) VALUES (999, 'future')", &[])
            .await
            .unwrap();
        let err = PgStores::connect(&db.url).await.unwrap_err();
        assert!(err.to_string().contains("version 999"), "{err}");
    }

    #[tokio::test]
    async fn two_sweepers_remove_each_expired_group_once() {
        let Some(db) = TestDb::create().await else { return };
        let (a, b) = (PgStores::connect(&db.url).await.unwrap(), PgStores::connect(&db.url).await.unwrap());
        let ttl = GroupTtl { default: Duration::from_secs(10), max: Duration::from_secs(60) };
        let groups = Groups::new(Arc::new(a.groups.clone()), ttl, 1000);
        for i in 0..40 {
            let input = GroupInput::from_json(format!(r#"{{"ID":"g{i}"}}"#).as_bytes()).unwrap();
            groups.upsert("t", input, Some("k"), 100, true, Box::new(|_| true)).await.unwrap();
        }
        let live = GroupInput::from_json(br#"{"ID":"live","TTL":60}"#).unwrap();
        groups.upsert("t", live, Some("k"), 100, true, Box::new(|_| true)).await.unwrap();
        let (ra, rb) = tokio::join!(a.groups.remove_expired(110, 10), b.groups.remove_expired(110, 10));
        assert_eq!(ra.unwrap() + rb.unwrap(), 40, "each expired group removed exactly once");
        assert_eq!(b.groups.list(None).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn the_per_key_limit_holds_across_instances_creating_at_once() {
        let Some(db) = TestDb::create().await else { return };
        let ttl = GroupTtl::default();
        let a = Groups::new(Arc::new(PgStores::connect(&db.url).await.unwrap().groups), ttl, 5);
        let b = Groups::new(Arc::new(PgStores::connect(&db.url).await.unwrap().groups), ttl, 5);
        async fn create(g: &Groups, i: usize) -> Result<Group, DiscoveryError> {
            let input = GroupInput::from_json(format!(r#"{{"ID":"g{i}"}}"#).as_bytes()).unwrap();
            g.upsert("t", input, Some("k"), 1_000, true, Box::new(|_| true)).await
        }
        let mut a_calls = Vec::new();
        let mut b_calls = Vec::new();
        for i in 0..10 {
            a_calls.push(create(&a, i));
            b_calls.push(create(&b, 10 + i));
        }
        let (ra, rb) =
            tokio::join!(futures_util::future::join_all(a_calls), futures_util::future::join_all(b_calls));
        let ok = ra.iter().chain(&rb).filter(|r| r.is_ok()).count();
        assert_eq!(ok, 5, "exactly the limit succeeded");
        for r in ra.iter().chain(&rb).filter_map(|r| r.as_ref().err()) {
            assert!(matches!(r, DiscoveryError::TooManyGroups { max: 5 }), "{r}");
        }
    }

    #[tokio::test]
    async fn an_unreachable_server_is_named_without_the_password() {
        let err = PgStores::connect("postgres://relay:hunter2@127.0.0.1:1/relay").await.unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, DiscoveryError::Unavailable(_)), "{text}");
        assert!(text.contains("PostgreSQL at 127.0.0.1:1"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        let err = PgStores::connect("mysql://nope").await.unwrap_err();
        assert!(err.to_string().contains("not a valid PostgreSQL URL"), "{err}");
    }
}
