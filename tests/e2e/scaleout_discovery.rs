//! Discovery scaled out: two real `relay-server` binaries sharing one PostgreSQL
//! database (`--database-url`, a fresh database per test). A group made on A is listed,
//! read, changed and deleted on B, tenants stay apart across instances, registry
//! entries announced to A are listed by B, expired groups are swept from the shared
//! table while both instances sweep, PostgreSQL unreachable at start stops the server
//! with exit 2 naming it, and PostgreSQL lost while running (cut through a proxy, the
//! shared server itself is never stopped) gives 503 `storage_unavailable` and a 503
//! `/readyz` naming it, then recovers by itself.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::services::TestDatabase;
use crate::support::{CuttableProxy, HttpResponse, RelayProcess, STEP_TIMEOUT, http_request, run_binary};
use hyper::StatusCode;
use serde_json::{Value, json};

/// Preconfigured keys (base64 of 16 bytes), the same on both instances: a key's name
/// is its tenant.
const ALICE: &str = "YWxpY2UtYWxpY2UtYWxpYw==";
const BOB: &str = "Ym9iLWJvYi1ib2ItYm9iLQ==";
const REGISTRY_TOKEN: &str = "scaleout-registry-token";

async fn start(database_url: &str, extra: &[&str]) -> RelayProcess {
    let alice = format!("{ALICE},alice");
    let bob = format!("{BOB},bob");
    let mut args = vec!["--database-url", database_url, "--api-key", &alice, "--api-key", &bob];
    args.extend_from_slice(extra);
    RelayProcess::start(&args).await.unwrap()
}

async fn call(addr: SocketAddr, method: &str, path: &str, key: &str, body: &str) -> HttpResponse {
    let bearer = format!("Bearer {key}");
    let headers = [("authorization", bearer.as_str()), ("content-type", "application/json")];
    http_request(addr, method, path, &headers, body.as_bytes()).await.unwrap()
}

fn ids(listing: &Value) -> Vec<String> {
    listing.as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default()
}

/// Polls `check` every 100 ms until it is true, failing after `within`.
async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_group_made_on_a_is_listed_read_changed_and_deleted_on_b() {
    let Some(db) = TestDatabase::create().await else { return };
    let (a, b) = (start(&db.url, &[]).await, start(&db.url, &[]).await);
    let body = json!({"ID": "g1", "Name": "office group", "AppID": "BabbleChat",
                      "Peers": [{"NetAddr": "a:1", "PubKeyHex": "0xAA", "Moniker": "Monica"}]});
    let resp = call(a.addr, "POST", "/group", ALICE, &body.to_string()).await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text());

    let on_a = call(a.addr, "GET", "/groups/g1", ALICE, "").await.json();
    let on_b = call(b.addr, "GET", "/groups/g1", ALICE, "").await;
    assert_eq!(on_b.status, StatusCode::OK, "{}", on_b.text());
    assert_eq!(on_b.json(), on_a, "the same group, Disco's shape, on both");
    let listed = call(b.addr, "GET", "/groups?app-id=BabbleChat", ALICE, "").await.json();
    assert_eq!(listed["g1"], on_a);

    // Tenants stay apart across instances: bob on B sees nothing of alice's, and makes
    // his own g1 without touching hers.
    assert!(ids(&call(b.addr, "GET", "/groups", BOB, "").await.json()).is_empty());
    assert_eq!(call(b.addr, "GET", "/groups/g1", BOB, "").await.status, StatusCode::NOT_FOUND);
    let resp = call(b.addr, "POST", "/group", BOB, r#"{"ID": "g1", "Name": "bob's"}"#).await;
    assert_eq!(resp.status, StatusCode::CREATED);
    assert_eq!(call(a.addr, "GET", "/groups/g1", BOB, "").await.json()["Name"], "bob's");
    assert_eq!(call(a.addr, "GET", "/groups/g1", ALICE, "").await.json()["Name"], "office group");

    // Changed on B, seen on A; deleted on B, gone on A.
    let resp = call(b.addr, "PATCH", "/groups/g1", ALICE, r#"{"Name": "renamed on B"}"#).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(call(a.addr, "GET", "/groups/g1", ALICE, "").await.json()["Name"], "renamed on B");
    assert_eq!(call(b.addr, "DELETE", "/groups/g1", ALICE, "").await.status, StatusCode::OK);
    assert_eq!(call(a.addr, "GET", "/groups/g1", ALICE, "").await.status, StatusCode::NOT_FOUND);
    assert_eq!(call(a.addr, "GET", "/groups/g1", BOB, "").await.json()["Name"], "bob's");

    // The rows are in discovery's own tables, with its migration history beside them.
    let client = db.connect().await;
    let rows =
        client.query("SELECT tenant, id FROM relay_discovery_groups ORDER BY tenant", &[]).await.unwrap();
    let keys: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(keys, [("bob".to_owned(), "g1".to_owned())]);
    let applied = client.query_one("SELECT count(*) FROM relay_discovery_migrations", &[]).await.unwrap();
    assert_eq!(applied.get::<_, i64>(0), 1, "two instances started: each migration applied once");
}

#[tokio::test]
async fn the_per_key_limit_counts_groups_made_on_every_instance() {
    let Some(db) = TestDatabase::create().await else { return };
    let limit = ["--max-groups-per-key", "2"];
    let (a, b) = (start(&db.url, &limit).await, start(&db.url, &limit).await);
    assert_eq!(call(a.addr, "POST", "/group", ALICE, r#"{"ID": "1"}"#).await.status, StatusCode::CREATED);
    assert_eq!(call(b.addr, "POST", "/group", ALICE, r#"{"ID": "2"}"#).await.status, StatusCode::CREATED);
    for relay in [&a, &b] {
        let resp = call(relay.addr, "POST", "/group", ALICE, r#"{"ID": "3"}"#).await;
        assert_eq!(resp.status, StatusCode::TOO_MANY_REQUESTS, "{}", resp.text());
        assert_eq!(resp.json()["error"]["code"], "too_many_groups_for_key");
    }
    assert_eq!(call(b.addr, "POST", "/group", BOB, r#"{"ID": "3"}"#).await.status, StatusCode::CREATED);
}

#[tokio::test]
async fn registry_entries_announced_to_a_are_listed_by_b() {
    let Some(db) = TestDatabase::create().await else { return };
    let token = ["--registry-token", REGISTRY_TOKEN];
    let (a, b) = (start(&db.url, &token).await, start(&db.url, &token).await);
    let bearer = format!("Bearer {REGISTRY_TOKEN}");
    let headers = [("authorization", bearer.as_str()), ("content-type", "application/json")];
    let body = json!({"url": "https://relay-1.example", "room_id_prefix": "1a2b3c4d", "ttl_secs": 60});
    let resp =
        http_request(a.addr, "POST", "/v1/relays", &headers, body.to_string().as_bytes()).await.unwrap();
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    let first = resp.json();

    let listed = http_request(b.addr, "GET", "/v1/relays", &[], b"").await.unwrap().json();
    let relays = listed["relays"].as_array().cloned().unwrap_or_default();
    assert_eq!(relays.len(), 1, "{listed}");
    assert_eq!(relays[0]["url"], "https://relay-1.example");
    assert_eq!(relays[0]["room_id_prefix"], "1a2b3c4d");

    // A refresh through B keeps the registration time A gave it.
    let resp =
        http_request(b.addr, "POST", "/v1/relays", &headers, body.to_string().as_bytes()).await.unwrap();
    assert_eq!(resp.json()["registered_at"], first["registered_at"]);
    // A wrong token on B is refused as on A.
    let wrong = [("authorization", "Bearer nope"), ("content-type", "application/json")];
    let resp = http_request(b.addr, "POST", "/v1/relays", &wrong, body.to_string().as_bytes()).await.unwrap();
    assert_eq!(resp.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn expired_groups_are_swept_from_the_shared_database_while_both_instances_sweep() {
    let Some(db) = TestDatabase::create().await else { return };
    let sweep = ["--group-ttl-heartbeat", "200ms"];
    let (a, b) = (start(&db.url, &sweep).await, start(&db.url, &sweep).await);
    for i in 0..5 {
        let resp =
            call(a.addr, "POST", "/group", ALICE, &format!(r#"{{"ID": "short-{i}", "TTL": 1}}"#)).await;
        assert_eq!(resp.status, StatusCode::CREATED);
    }
    let resp = call(b.addr, "POST", "/group", ALICE, r#"{"ID": "long", "TTL": 600}"#).await;
    assert_eq!(resp.status, StatusCode::CREATED);
    let client = db.connect().await;
    let count = async || -> i64 {
        client.query_one("SELECT count(*) FROM relay_discovery_groups", &[]).await.unwrap().get(0)
    };
    assert_eq!(count().await, 6);
    eventually("both sweepers removed the expired rows", STEP_TIMEOUT, || async { count().await == 1 }).await;
    for relay in [&a, &b] {
        assert_eq!(ids(&call(relay.addr, "GET", "/groups", ALICE, "").await.json()), ["long"]);
    }
    // Nothing comes back, and both instances keep serving.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(count().await, 1);
}

#[tokio::test]
async fn postgres_unreachable_at_start_exits_2_naming_it_without_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--insecure-api-keys-not-enforced",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--database-url",
        "postgres://relay:hunter2-secret@127.0.0.1:1/relay",
    ];
    let out = run_binary(&args).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("PostgreSQL at 127.0.0.1:1"), "names the engine and where: {stderr}");
    assert!(!stderr.contains("hunter2"), "never the password: {stderr}");
}

#[tokio::test]
async fn postgres_lost_while_running_gives_503_and_readyz_names_it_then_recovers() {
    let Some(db) = TestDatabase::create().await else { return };
    // PostgreSQL through a proxy this test can cut; the shared server itself stays up.
    let proxy = CuttableProxy::start("127.0.0.1:5432".parse().unwrap()).await.unwrap();
    let via_proxy = db.url.replacen("127.0.0.1:5432", &proxy.addr.to_string(), 1);
    assert_ne!(via_proxy, db.url, "the test database URL names 127.0.0.1:5432");
    let relay = start(&via_proxy, &[]).await;
    let resp = call(relay.addr, "POST", "/group", ALICE, r#"{"ID": "kept", "TTL": 600}"#).await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text());

    proxy.set_paused(true);
    proxy.cut_all().await;
    let resp = call(relay.addr, "GET", "/groups/kept", ALICE, "").await;
    assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE, "{}", resp.text());
    assert_eq!(resp.json()["error"]["code"], "storage_unavailable");
    let resp = call(relay.addr, "POST", "/group", ALICE, r#"{"ID": "new"}"#).await;
    assert_eq!(resp.json()["error"]["code"], "storage_unavailable");
    let ready = http_request(relay.addr, "GET", "/readyz", &[], b"").await.unwrap();
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE, "{}", ready.text());
    assert_eq!(ready.json()["unavailable"], json!(["postgres"]));
    let metrics = http_request(relay.addr, "GET", "/metrics", &[], b"").await.unwrap();
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(metrics.text().contains(r#"relay_dependency_up{dependency="postgres"} 0"#), "{}", metrics.text());
    // What does not need PostgreSQL keeps working.
    let health = http_request(relay.addr, "GET", "/healthz", &[], b"").await.unwrap();
    assert_eq!(health.status, StatusCode::OK);

    proxy.set_paused(false);
    eventually("/readyz is 200 again", Duration::from_secs(15), || async {
        http_request(relay.addr, "GET", "/readyz", &[], b"").await.is_ok_and(|r| r.status == StatusCode::OK)
    })
    .await;
    let resp = call(relay.addr, "GET", "/groups/kept", ALICE, "").await;
    assert_eq!(resp.status, StatusCode::OK, "the acknowledged group survived: {}", resp.text());
    let metrics = http_request(relay.addr, "GET", "/metrics", &[], b"").await.unwrap().text();
    assert!(metrics.contains(r#"relay_dependency_up{dependency="postgres"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"relay_dependency_failures_total{dependency="postgres"} 1"#), "{metrics}");
    let output = relay.output();
    assert!(output.contains("postgres at"), "the outage and the recovery are logged: {output}");
    assert!(!output.contains("hunter2"));
}

#[tokio::test]
async fn print_config_masks_the_database_url() {
    let out =
        run_binary(&["--print-config", "--database-url", "postgres://relay:hunter2@db.internal:5432/relay"])
            .await
            .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains(r#"database_url = "***""#), "{stdout}");
    assert!(!stdout.contains("hunter2"), "{stdout}");
    assert!(stdout.contains("max_groups_per_key = 1000"), "{stdout}");
}
