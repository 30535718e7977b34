//! The external servers some tests share state through: PostgreSQL and Redis.
//!
//! Each test gets its own: a fresh database (`relay_test_<uuid>`, dropped when the
//! handle drops) and a fresh Redis key prefix (`relay-test-<uuid>:`, its keys deleted
//! when the handle drops), so tests run in parallel and leave nothing behind.
//!
//! Where the server is unreachable (a newcomer's laptop) the finder returns `None`
//! after [`skip_without`] printed why; under `RELAY_REQUIRE_SERVICES=1` (CI) it fails
//! the test instead. Addresses default to the project machine's (127.0.0.1:5432, user
//! `postgres`, trust auth; 127.0.0.1:6379) and can be moved with
//! `RELAY_TEST_POSTGRES_URL` (a URL to an existing database, used to create others)
//! and `RELAY_TEST_REDIS_URL`.

use std::time::Duration;

use super::skip_without;

const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn postgres_admin_url() -> String {
    std::env::var("RELAY_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_string())
}

/// The Redis server the tests use (`RELAY_TEST_REDIS_URL`, default 127.0.0.1:6379).
pub(crate) fn redis_url() -> String {
    std::env::var("RELAY_TEST_REDIS_URL").unwrap_or_else(|_| DEFAULT_REDIS_URL.to_string())
}

/// A database of this test's own on the test PostgreSQL server. Dropped (with
/// `FORCE`, so connections a killed relay left behind do not keep it) on drop.
pub(crate) struct TestDatabase {
    /// `postgres://.../relay_test_<uuid>`, for `--database-url`.
    pub(crate) url: String,
    name: String,
    admin_url: String,
}

impl TestDatabase {
    /// Creates a fresh database, or skips (returns `None`) when PostgreSQL is
    /// unreachable and `RELAY_REQUIRE_SERVICES` is not `1`.
    pub(crate) async fn create() -> Option<TestDatabase> {
        let admin_url = postgres_admin_url();
        let client = match connect_postgres(&admin_url).await {
            Ok(client) => client,
            Err(e) => {
                skip_without(
                    &format!("PostgreSQL at {admin_url} ({e})"),
                    "start PostgreSQL on 127.0.0.1:5432 with trust auth for user postgres, \
                     or set RELAY_TEST_POSTGRES_URL",
                );
                return None;
            }
        };
        let name = format!("relay_test_{}", uuid::Uuid::new_v4().simple());
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name} on {admin_url}: {e}"));
        let url = database_url(&admin_url, &name);
        Some(TestDatabase { url, name, admin_url })
    }

    /// A client connected to this database, for a test that checks rows itself.
    pub(crate) async fn connect(&self) -> tokio_postgres::Client {
        connect_postgres(&self.url).await.unwrap_or_else(|e| panic!("connect {}: {e}", self.url))
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs inside or outside a runtime; a thread with its own keeps both right.
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let client = connect_postgres(&admin_url).await.ok()?;
                client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("warning: could not drop test database {}", self.name);
        }
    }
}

/// Replaces the database name (the path) of a `postgres://` URL.
fn database_url(base: &str, database: &str) -> String {
    let (without_query, query) = match base.split_once('?') {
        Some((url, query)) => (url, Some(query)),
        None => (base, None),
    };
    let scheme_end = without_query.find("://").map_or(0, |i| i + 3);
    let host_part = match without_query[scheme_end..].find('/') {
        Some(slash) => &without_query[..scheme_end + slash],
        None => without_query,
    };
    match query {
        Some(query) => format!("{host_part}/{database}?{query}"),
        None => format!("{host_part}/{database}"),
    }
}

async fn connect_postgres(url: &str) -> Result<tokio_postgres::Client, String> {
    let connect = tokio_postgres::connect(url, tokio_postgres::NoTls);
    let (client, connection) = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err(format!("no answer in {CONNECT_TIMEOUT:?}")),
    };
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A Redis key prefix of this test's own. Its keys are deleted on drop.
pub(crate) struct TestRedis {
    /// The server, for `--redis-url`.
    pub(crate) url: String,
    /// `relay-test-<uuid>:`, for `--redis-prefix`.
    pub(crate) prefix: String,
}

impl TestRedis {
    /// Picks a fresh prefix, or skips (returns `None`) when Redis is unreachable and
    /// `RELAY_REQUIRE_SERVICES` is not `1`.
    pub(crate) async fn create() -> Option<TestRedis> {
        let url = redis_url();
        if let Err(e) = ping_redis(&url).await {
            skip_without(
                &format!("Redis at {url} ({e})"),
                "start redis-server on 127.0.0.1:6379, or set RELAY_TEST_REDIS_URL",
            );
            return None;
        }
        let prefix = format!("relay-test-{}:", uuid::Uuid::new_v4().simple());
        Some(TestRedis { url, prefix })
    }

    /// How many keys under this prefix Redis holds now.
    pub(crate) async fn key_count(&self) -> usize {
        let mut conn = redis_connection(&self.url).await.expect("connect to Redis");
        let keys: Vec<String> =
            redis::cmd("KEYS").arg(format!("{}*", self.prefix)).query_async(&mut conn).await.expect("KEYS");
        keys.len()
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let url = self.url.clone();
        let pattern = format!("{}*", self.prefix);
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let mut conn = redis_connection(&url).await.ok()?;
                let keys: Vec<String> = redis::cmd("KEYS").arg(&pattern).query_async(&mut conn).await.ok()?;
                if !keys.is_empty() {
                    let _: () = redis::cmd("DEL").arg(keys).query_async(&mut conn).await.ok()?;
                }
                Some(())
            })
        })
        .join();
    }
}

async fn redis_connection(url: &str) -> Result<redis::aio::MultiplexedConnection, String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    match tokio::time::timeout(CONNECT_TIMEOUT, client.get_multiplexed_async_connection()).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer in {CONNECT_TIMEOUT:?}")),
    }
}

async fn ping_redis(url: &str) -> Result<(), String> {
    let mut conn = redis_connection(url).await?;
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.map_err(|e| e.to_string())?;
    if pong == "PONG" { Ok(()) } else { Err(format!("PING answered {pong:?}")) }
}

#[test]
fn database_url_replaces_the_path_and_keeps_the_query() {
    assert_eq!(
        database_url("postgres://postgres@127.0.0.1:5432/postgres", "x"),
        "postgres://postgres@127.0.0.1:5432/x"
    );
    assert_eq!(database_url("postgres://h:1/db?sslmode=disable", "x"), "postgres://h:1/x?sslmode=disable");
    assert_eq!(database_url("postgres://h:1", "x"), "postgres://h:1/x");
}

/// The fixtures themselves: a database is created, reachable and gone after drop; a
/// prefix starts empty and is emptied on drop.
#[tokio::test]
async fn fixtures_create_and_remove_what_they_made() {
    let Some(db) = TestDatabase::create().await else { return };
    let client = db.connect().await;
    let row = client.query_one("SELECT current_database()", &[]).await.expect("query");
    let name: String = row.get(0);
    assert_eq!(name, db.name);
    drop(client);
    let admin = connect_postgres(&postgres_admin_url()).await.expect("connect");
    drop(db);
    let left = admin
        .query_one("SELECT count(*) FROM pg_database WHERE datname = $1", &[&name])
        .await
        .expect("query");
    assert_eq!(left.get::<_, i64>(0), 0, "the test database outlived its handle");

    let Some(redis) = TestRedis::create().await else { return };
    assert_eq!(redis.key_count().await, 0);
    let mut conn = redis_connection(&redis.url).await.expect("connect");
    let key = format!("{}probe", redis.prefix);
    let _: () = redis::cmd("SET").arg(&key).arg("1").query_async(&mut conn).await.expect("SET");
    assert_eq!(redis.key_count().await, 1);
    let (url, prefix) = (redis.url.clone(), redis.prefix.clone());
    drop(redis);
    let probe = TestRedis { url, prefix };
    assert_eq!(probe.key_count().await, 0, "the prefix's keys outlived its handle");
}
