//! The key store on a real PostgreSQL, as several instances of a deployment use it:
//! two stores on one database see each other's keys within a second, usage sums,
//! migrations run once however many start together, the admin token is generated once,
//! a lost connection is reported and recovered with every missed change reloaded, and
//! an unreachable server is named (host and port, never the password).
//!
//! Each test creates a database of its own (`relay_keystore_test_<random>`) and drops
//! it after. Without a PostgreSQL at `RELAY_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`) the tests skip with a message, or
//! fail under `RELAY_REQUIRE_SERVICES=1`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use relay_keystore::{CreateOptions, KeyStatus, KeyStore, KeystoreError, Usage, VerifyError};

const NOW: u64 = 1_700_000_000;
/// The promise: a change on one instance is known to the others within this long.
const WITHIN: Duration = Duration::from_secs(1);

/// A fresh database, dropped (with FORCE) on drop.
struct TestDb {
    url: String,
    name: String,
    admin_url: String,
}

fn admin_url() -> String {
    std::env::var("RELAY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, String> {
    let connecting = tokio_postgres::connect(url, tokio_postgres::NoTls);
    let (client, connection) = tokio::time::timeout(Duration::from_secs(5), connecting)
        .await
        .map_err(|_| "no answer in 5 s".to_owned())?
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

impl TestDb {
    /// `None` (after saying why) when PostgreSQL is unreachable, unless
    /// `RELAY_REQUIRE_SERVICES=1`, which makes that a failure.
    async fn create() -> Option<TestDb> {
        let admin_url = admin_url();
        let client = match connect(&admin_url).await {
            Ok(client) => client,
            Err(e) => {
                let message = format!("PostgreSQL at {admin_url} is unreachable ({e})");
                assert!(std::env::var("RELAY_REQUIRE_SERVICES").as_deref() != Ok("1"), "{message}");
                eprintln!("SKIPPED: {message}; start PostgreSQL or set RELAY_TEST_POSTGRES_URL");
                return None;
            }
        };
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).expect("randomness");
        let name = format!("relay_keystore_test_{}", u64::from_le_bytes(random));
        client.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("CREATE DATABASE");
        let base = admin_url.rsplit_once('/').map_or(admin_url.as_str(), |(base, _)| base);
        Some(TestDb { url: format!("{base}/{name}"), name, admin_url })
    }

    async fn open(&self) -> KeyStore {
        KeyStore::open_postgres(&self.url).await.expect("open the key store on PostgreSQL")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let client = connect(&admin_url).await.ok()?;
                client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("warning: could not drop test database {}", self.name);
        }
    }
}

/// Polls `check` until it holds or `within` passes; returns how long it took.
async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if check() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check().then(|| start.elapsed())
}

#[tokio::test]
async fn a_key_created_on_one_instance_verifies_on_another_and_a_revocation_reaches_the_first() {
    let Some(db) = TestDb::create().await else { return };
    let (a, b) = (db.open().await, db.open().await);
    let told: Arc<Mutex<Vec<String>>> = Arc::default();
    for (store, who) in [(&a, "A"), (&b, "B")] {
        let sink = told.clone();
        store.set_revocation_observer(Box::new(move |name| {
            sink.lock().expect("told").push(format!("{who}:{name}"))
        }));
    }
    let (key, _) = a.create("shared", CreateOptions::default(), NOW).await.expect("create on A");
    let key = key.to_base64();
    let seen = eventually(WITHIN, || b.verify(&key, NOW).is_ok()).await;
    assert!(seen.is_some(), "B did not learn of A's key within {WITHIN:?}");
    let err = b.create("shared", CreateOptions::default(), NOW).await.expect_err("the name is taken");
    assert!(matches!(err, KeystoreError::NameTaken { .. }), "{err}");

    b.revoke("shared", NOW + 1).await.expect("revoke on B");
    let refused = eventually(WITHIN, || a.verify(&key, NOW + 2) == Err(VerifyError::Revoked)).await;
    assert!(refused.is_some(), "A still accepts the key B revoked after {WITHIN:?}");
    assert_eq!(a.status("shared", NOW + 2), Some(KeyStatus::Revoked));
    assert_eq!(a.get("shared").and_then(|k| k.revoked_at), Some(NOW + 1));
    // A is told (it closes the key's rooms); B, which revoked it, is not.
    eventually(WITHIN, || !told.lock().expect("told").is_empty()).await.expect("A's observer");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(*told.lock().expect("told"), ["A:shared"]);
}

#[tokio::test]
async fn a_name_taken_on_another_instance_not_yet_known_here_is_refused_by_the_database() {
    let Some(db) = TestDb::create().await else { return };
    let (a, b) = (db.open().await, db.open().await);
    // Both create at once: exactly one wins, whatever each knew in memory.
    let (ra, rb) = tokio::join!(
        a.create("race", CreateOptions::default(), NOW),
        b.create("race", CreateOptions::default(), NOW)
    );
    assert_eq!(ra.is_ok() as u8 + rb.is_ok() as u8, 1, "{ra:?} {rb:?}");
}

#[tokio::test]
async fn usage_from_every_instance_is_summed_never_overwritten() {
    let Some(db) = TestDb::create().await else { return };
    let (a, b) = (db.open().await, db.open().await);
    a.create("counted", CreateOptions::default(), NOW).await.expect("create");
    eventually(WITHIN, || b.get("counted").is_some()).await.expect("B knows the key");
    a.record_usage("counted", 3, 300, 1).expect("usage on A");
    b.record_usage("counted", 4, 400, 0).expect("usage on B");
    assert_eq!(a.flush_usage().await.expect("flush A"), 1);
    assert_eq!(b.flush_usage().await.expect("flush B"), 1);
    let total = Usage { messages: 7, bytes: 700, rooms: 1 };
    assert_eq!(b.get("counted").map(|k| k.usage), Some(total), "B read back both instances' counts");
    // A nothing pending: its flush only reads the totals back.
    assert_eq!(a.flush_usage().await.expect("refresh A"), 0);
    assert_eq!(a.get("counted").map(|k| k.usage), Some(total));
    // A again: added, not overwritten.
    a.record_usage("counted", 1, 1, 0).expect("usage on A");
    a.flush_usage().await.expect("flush A");
    let client = connect(&db.url).await.expect("connect");
    let row = client
        .query_one("SELECT messages, bytes, rooms FROM relay_key_usage WHERE name = 'counted'", &[])
        .await
        .expect("usage row");
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1), row.get::<_, i64>(2)), (8, 701, 1));
}

#[tokio::test]
async fn keys_and_usage_survive_a_restart() {
    let Some(db) = TestDb::create().await else { return };
    let store = db.open().await;
    let (key, _) = store
        .create("kept", CreateOptions { tenant: Some("t".into()), expires_at: NOW + 60 }, NOW)
        .await
        .expect("create");
    store.record_usage("kept", 2, 20, 0).expect("usage");
    store.flush_usage().await.expect("flush");
    drop(store);
    let store = db.open().await;
    let caller = store.verify(&key.to_base64(), NOW).expect("verifies after restart");
    assert_eq!((caller.name.as_str(), caller.tenant.as_str()), ("kept", "t"));
    assert_eq!(store.verify(&key.to_base64(), NOW + 60), Err(VerifyError::Expired));
    assert_eq!(store.get("kept").map(|k| k.usage), Some(Usage { messages: 2, bytes: 20, rooms: 0 }));
}

#[tokio::test]
async fn migrations_run_once_when_instances_start_together() {
    let Some(db) = TestDb::create().await else { return };
    let opened = futures_join_all((0..4).map(|_| KeyStore::open_postgres(&db.url))).await;
    for store in &opened {
        assert!(store.is_ok(), "{:?}", store.as_ref().err());
    }
    let client = connect(&db.url).await.expect("connect");
    let rows = client.query("SELECT version FROM relay_keystore_migrations", &[]).await.expect("versions");
    assert_eq!(rows.iter().map(|r| r.get::<_, i32>(0)).collect::<Vec<_>>(), vec![1]);
}

/// Runs the futures concurrently on this task (no extra dependency for `join_all`).
async fn futures_join_all<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in set.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    out.into_iter().flatten().collect()
}

#[tokio::test]
async fn a_database_of_a_newer_schema_is_refused() {
    let Some(db) = TestDb::create().await else { return };
    drop(db.open().await);
    let client = connect(&db.url).await.expect("connect");
    client
        .batch_execute("INSERT INTO relay_keystore_migrations (version, name) VALUES (99, 'future')")
        .await
        .expect("insert");
    let err = KeyStore::open_postgres(&db.url).await.expect_err("a newer schema");
    assert!(err.to_string().contains("newer than this relay's 1"), "{err}");
}

#[tokio::test]
async fn the_admin_token_is_generated_once_and_shared() {
    let Some(db) = TestDb::create().await else { return };
    let (a, b) = (db.open().await, db.open().await);
    let (ta, tb) = tokio::join!(a.ensure_admin_token(None), b.ensure_admin_token(None));
    let tokens: Vec<_> = [ta.expect("A"), tb.expect("B")].into_iter().flatten().collect();
    assert_eq!(tokens.len(), 1, "exactly one instance generates (and prints) the token");
    let token = tokens[0].as_str().to_owned();
    assert!(a.verify_admin_token(&token) && b.verify_admin_token(&token));
    let c = db.open().await;
    assert!(c.verify_admin_token(&token), "a later instance loads it");
}

#[tokio::test]
async fn an_unreachable_server_is_named_by_host_and_port_never_the_password() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let err = KeyStore::open_postgres(&format!("postgres://relay:hunter2@127.0.0.1:{port}/relay"))
        .await
        .expect_err("nothing listens there");
    assert!(matches!(err, KeystoreError::DatabaseUnreachable { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.starts_with(&format!("cannot reach PostgreSQL at 127.0.0.1:{port}: ")), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[tokio::test]
async fn a_lost_connection_is_reported_and_after_the_reconnect_missed_changes_are_loaded() {
    let Some(db) = TestDb::create().await else { return };
    let a = db.open().await;
    let reports: Arc<Mutex<Vec<bool>>> = Arc::default();
    let sink = reports.clone();
    a.set_health_observer(Box::new(move |up, _| sink.lock().expect("reports").push(up)));
    let b = db.open().await;
    // Cut every connection of A (its listener included): the server ends them.
    let client = connect(&db.url).await.expect("connect");
    let pids: Vec<i32> = client
        .query(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .expect("backends")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let (key, _) = b.create("while-a-was-away", CreateOptions::default(), NOW).await.expect("create on B");
    for pid in pids {
        client.execute("SELECT pg_terminate_backend($1)", &[&pid]).await.expect("terminate");
    }
    let down = eventually(Duration::from_secs(5), || reports.lock().expect("reports").contains(&false)).await;
    assert!(down.is_some(), "A did not report PostgreSQL down");
    let back =
        eventually(Duration::from_secs(10), || reports.lock().expect("reports").last() == Some(&true)).await;
    assert!(back.is_some(), "A did not report PostgreSQL back: {:?}", reports.lock().expect("reports"));
    let known = eventually(Duration::from_secs(5), || a.verify(&key.to_base64(), NOW).is_ok()).await;
    assert!(known.is_some(), "A never learned of the key created while its connection was cut");
    // Writes work again through fresh pooled connections.
    let mut created = None;
    for _ in 0..20 {
        match a.create("after", CreateOptions::default(), NOW).await {
            Ok(k) => {
                created = Some(k);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(created.is_some(), "A cannot write after the reconnect");
}
