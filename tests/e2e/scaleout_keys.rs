//! Scale-out of API keys and usage through PostgreSQL (issue 17), against two real
//! `relay-server` binaries sharing one database (`--database-url`): a key created on A
//! verifies on B; revoked on B, it is refused on A within 1 s, A's live WebSocket of
//! that key closes with 1008 "api key revoked" and the room it created on A closes; usage is summed across both; an
//! unreachable database at start exits 2 naming it; the database lost while running
//! (a TCP proxy of the test's own is cut, the shared PostgreSQL server is never
//! touched) gives `/readyz` 503 and 503 `storage_unavailable` on create while
//! verification keeps working, and everything recovers when the path is back; and
//! `relay-server keys ...` with `--database-url` reaches running relays.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use hyper::StatusCode;
use serde_json::json;

use crate::support::services::TestDatabase;
use crate::support::{
    CuttableProxy, RelayProcess, Ws, close_of, http_request, post_json, run_binary, ws_connect,
};

/// The admin token both relays start with.
const TOKEN: &str = "scaleout-keys-admin-token-0123456789abcdef";
/// The promise: a key change on one instance is known to the others within this long.
const WITHIN: Duration = Duration::from_secs(1);

/// A relay on `database_url`, checking live keys every 100 ms.
async fn start(database_url: &str) -> anyhow::Result<RelayProcess> {
    RelayProcess::start(&[
        "--database-url",
        database_url,
        "--secret-auth",
        TOKEN,
        "--lease-check-interval-ms",
        "100",
    ])
    .await
}

/// Creates key `name` through the admin API of `relay`; returns the key.
async fn create_key(relay: &RelayProcess, name: &str) -> anyhow::Result<String> {
    let auth = format!("Bearer {TOKEN}");
    let resp =
        post_json(relay.addr, "/v1/admin/keys", &[("authorization", &auth)], &json!({"name": name})).await?;
    anyhow::ensure!(resp.status == StatusCode::CREATED, "create {name}: {} {}", resp.status, resp.text());
    Ok(resp.json()["key"].as_str().context("key")?.to_owned())
}

/// `GET /v1/key` with `key`: 200 while it is accepted.
async fn whoami(addr: SocketAddr, key: &str) -> anyhow::Result<StatusCode> {
    let auth = format!("Bearer {key}");
    Ok(http_request(addr, "GET", "/v1/key", &[("authorization", &auth)], b"").await?.status)
}

/// Polls `whoami` until it answers `want`; fails after `within`.
async fn until_status(
    addr: SocketAddr,
    key: &str,
    want: StatusCode,
    within: Duration,
) -> anyhow::Result<Duration> {
    let start = tokio::time::Instant::now();
    loop {
        let status = whoami(addr, key).await?;
        if status == want {
            return Ok(start.elapsed());
        }
        anyhow::ensure!(
            start.elapsed() < within,
            "{addr} still answers {status} for the key after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn open_mailbox(relay: &RelayProcess, key: &str) -> anyhow::Result<Ws> {
    let key = key.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D");
    ws_connect(relay.addr, &format!("/v1/msg-relay?api_key={key}")).await.map_err(|e| anyhow::anyhow!("{e}"))
}

#[tokio::test]
async fn a_key_created_on_a_verifies_on_b_and_revoked_on_b_is_refused_on_a_within_a_second()
-> anyhow::Result<()> {
    let Some(db) = TestDatabase::create().await else { return Ok(()) };
    let (a, b) = (start(&db.url).await?, start(&db.url).await?);
    let key = create_key(&a, "shared").await?;
    let learned = until_status(b.addr, &key, StatusCode::OK, WITHIN).await.context("B learns of A's key")?;
    eprintln!("B accepted A's new key {learned:?} after A answered");
    let mut a_socket = open_mailbox(&a, &key).await?;
    // A room the key created on A, with a party joined by its ID alone.
    let auth = format!("Bearer {key}");
    let room = post_json(a.addr, "/v1/rooms", &[("authorization", &auth)], &json!({"room_size": 2})).await?;
    anyhow::ensure!(room.status == StatusCode::CREATED, "{}", room.text());
    let room = room.json()["room_uuid"].as_str().context("room_uuid")?.to_owned();
    let mut party = ws_connect(a.addr, &format!("/v1/rooms/{room}")).await?;

    let revoked = http_request(b.addr, "GET", &format!("/revokekey/shared/{TOKEN}"), &[], b"").await?;
    anyhow::ensure!(revoked.status == StatusCode::OK, "revoke on B: {}", revoked.text());
    let started = tokio::time::Instant::now();
    let refused = until_status(a.addr, &key, StatusCode::FORBIDDEN, WITHIN)
        .await
        .context("A refuses B's revocation")?;
    eprintln!("A refused the key {refused:?} after B answered the revocation");
    let close = close_of(&mut a_socket, WITHIN.saturating_sub(started.elapsed()) + Duration::from_millis(1))
        .await
        .context("A's socket of the revoked key")?;
    assert_eq!(close, (1008, "api key revoked".to_owned()));
    assert!(started.elapsed() <= WITHIN, "closed after {:?}", started.elapsed());
    let (party_code, _) =
        close_of(&mut party, WITHIN).await.context("the party of the revoked key's room on A")?;
    assert_eq!(party_code, 1008, "the revoked key's room on A is closed by the operator's code");
    // A name taken on A is taken on B.
    let auth = format!("Bearer {TOKEN}");
    let again =
        post_json(b.addr, "/v1/admin/keys", &[("authorization", &auth)], &json!({"name": "shared"})).await?;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text());
    Ok(())
}

#[tokio::test]
async fn usage_is_summed_across_instances() -> anyhow::Result<()> {
    let Some(db) = TestDatabase::create().await else { return Ok(()) };
    let (a, b) = (start(&db.url).await?, start(&db.url).await?);
    let key = create_key(&a, "counted").await?;
    until_status(b.addr, &key, StatusCode::OK, WITHIN).await?;
    let auth = format!("Bearer {key}");
    for relay in [&a, &b, &b] {
        let room =
            post_json(relay.addr, "/v1/rooms", &[("authorization", &auth)], &json!({"room_size": 2})).await?;
        anyhow::ensure!(room.status == StatusCode::CREATED, "{}", room.text());
    }
    // Each instance writes its counts every 5 s and reads the totals back: at most
    // about two intervals behind.
    let admin = format!("Bearer {TOKEN}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for relay in [&a, &b] {
        loop {
            let usage =
                http_request(relay.addr, "GET", "/v1/admin/usage", &[("authorization", &admin)], b"").await?;
            let rooms = usage.json()["total"]["rooms"].as_u64();
            if rooms == Some(3) {
                break;
            }
            anyhow::ensure!(rooms.unwrap_or(0) <= 3, "usage overcounted: {}", usage.text());
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "usage on {} never summed: {}",
                relay.addr,
                usage.text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let metrics = http_request(a.addr, "GET", "/metrics", &[], b"").await?.text();
    assert!(metrics.contains("relay_key_rooms_created_total{key=\"counted\"} 3"), "{metrics}");
    Ok(())
}

#[tokio::test]
async fn an_unreachable_database_at_start_exits_2_naming_it_without_the_password() -> anyhow::Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let dir = tempfile::tempdir()?;
    let url = format!("postgres://relay:hunter2@127.0.0.1:{port}/relay");
    let out = run_binary(&[
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().to_str().context("utf-8")?,
        "--database-url",
        &url,
    ])
    .await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot reach PostgreSQL at 127.0.0.1:{port} (--database-url): ")),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
    Ok(())
}

/// Splits a `postgres://` URL around its host and port: (before, `host:port`, after).
fn split_host(url: &str) -> anyhow::Result<(String, String, String)> {
    let scheme_end = url.find("://").context("a URL")? + 3;
    let rest = &url[scheme_end..];
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let host_start = authority.rfind('@').map_or(0, |i| i + 1);
    let hostport = &authority[host_start..];
    let hostport = if hostport.contains(':') { hostport.to_owned() } else { format!("{hostport}:5432") };
    let before = url[..scheme_end + host_start].to_owned();
    let after = rest[authority.len()..].to_owned();
    Ok((before, hostport, after))
}

#[test]
fn split_host_finds_the_host_with_or_without_user_and_port() {
    let parts = split_host("postgres://postgres@127.0.0.1:5432/db?x=1").expect("split");
    assert_eq!(parts, ("postgres://postgres@".into(), "127.0.0.1:5432".into(), "/db?x=1".into()));
    let parts = split_host("postgres://localhost/db").expect("split");
    assert_eq!(parts, ("postgres://".into(), "localhost:5432".into(), "/db".into()));
}

#[tokio::test]
async fn the_database_lost_while_running_gives_503_and_recovers() -> anyhow::Result<()> {
    let Some(db) = TestDatabase::create().await else { return Ok(()) };
    let (before, hostport, after) = split_host(&db.url)?;
    let target = tokio::net::lookup_host(&hostport).await?.next().context("the database host resolves")?;
    let proxy = CuttableProxy::start(target).await?;
    let url = format!("{before}{}{after}", proxy.addr);
    let a = start(&url).await?;
    let key = create_key(&a, "before").await?;
    let ready = http_request(a.addr, "GET", "/readyz", &[], b"").await?;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text());

    proxy.set_paused(true);
    proxy.cut_all().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let ready = http_request(a.addr, "GET", "/readyz", &[], b"").await?;
        if ready.status == StatusCode::SERVICE_UNAVAILABLE {
            assert!(ready.text().contains("postgres"), "{}", ready.text());
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "/readyz still {} after the cut",
            ready.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let auth = format!("Bearer {TOKEN}");
    let refused =
        post_json(a.addr, "/v1/admin/keys", &[("authorization", &auth)], &json!({"name": "during"})).await?;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{}", refused.text());
    assert_eq!(refused.json()["error"]["code"], "storage_unavailable", "{}", refused.text());
    assert_eq!(whoami(a.addr, &key).await?, StatusCode::OK, "verification works from memory");
    a.wait_for_output("unreachable").await?;

    proxy.set_paused(false);
    // The reconnect backoff tops out at 5 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let ready = http_request(a.addr, "GET", "/readyz", &[], b"").await?;
        if ready.status == StatusCode::OK {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "/readyz still {} after the path is back",
            ready.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let created = create_key(&a, "after").await?;
    assert_eq!(whoami(a.addr, &created).await?, StatusCode::OK);
    // The refused create left nothing behind.
    let client = db.connect().await;
    let names: Vec<String> = client
        .query("SELECT name FROM relay_keys ORDER BY name", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, ["after", "before"]);
    Ok(())
}

#[tokio::test]
async fn the_offline_keys_command_writes_to_the_database_and_running_relays_learn_of_it() -> anyhow::Result<()>
{
    let Some(db) = TestDatabase::create().await else { return Ok(()) };
    let a = start(&db.url).await?;
    let out = run_binary(&["--database-url", &db.url, "keys", "create", "offline"]).await?;
    anyhow::ensure!(out.status.success(), "keys create: {}", String::from_utf8_lossy(&out.stderr));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let key = created["key"].as_str().context("key")?;
    until_status(a.addr, key, StatusCode::OK, WITHIN).await.context("the running relay learns of the key")?;
    let out = run_binary(&["--database-url", &db.url, "keys", "revoke", "offline"]).await?;
    anyhow::ensure!(out.status.success(), "keys revoke: {}", String::from_utf8_lossy(&out.stderr));
    until_status(a.addr, key, StatusCode::FORBIDDEN, WITHIN)
        .await
        .context("the running relay learns of the revocation")?;
    Ok(())
}
