//! Discovery against the real `relay-server` binary: groups survive a restart (SIGTERM
//! and SIGKILL), relays announce themselves to a third one acting as registry and drop
//! out when killed, and an unreachable registry only costs a warning.

use std::time::Duration;

use crate::support::{RelayProcess, STEP_TIMEOUT, http_request, post_json, run_binary};
use hyper::StatusCode;
use serde_json::{Value, json};

const OPEN: &str = "--insecure-api-keys-not-enforced";

async fn start(data_dir: &std::path::Path, extra: &[&str]) -> RelayProcess {
    let mut args = vec![OPEN, "--data-dir", data_dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    RelayProcess::start(&args).await.unwrap()
}

/// Polls `check` every 100 ms until it is true, failing after [`STEP_TIMEOUT`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn relay_urls(registry: &RelayProcess) -> Vec<String> {
    let resp = http_request(registry.addr, "GET", "/v1/relays", &[], b"").await.unwrap();
    let body: Value = resp.json();
    body["relays"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["url"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

async fn group_survives_a_restart_after_signal(signal: i32) {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = start(dir.path(), &[]).await;
    let group = json!({"ID": "persisted", "Name": "office group", "AppID": "BabbleChat", "TTL": 600});
    let resp = post_json(relay.addr, "/group", &[], &group).await.unwrap();
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text());
    let before = http_request(relay.addr, "GET", "/groups/persisted", &[], b"").await.unwrap().json();

    relay.signal(signal);
    relay.wait_exit(STEP_TIMEOUT).await.unwrap();
    let relay = start(dir.path(), &[]).await;
    let resp = http_request(relay.addr, "GET", "/groups/persisted", &[], b"").await.unwrap();
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(resp.json(), before);
    let listed = http_request(relay.addr, "GET", "/groups?app-id=BabbleChat", &[], b"").await.unwrap().json();
    assert_eq!(listed["persisted"], before);
}

#[tokio::test]
async fn a_group_survives_sigterm_and_restart() {
    group_survives_a_restart_after_signal(15).await;
}

#[tokio::test]
async fn a_group_survives_sigkill_and_restart() {
    group_survives_a_restart_after_signal(9).await;
}

#[tokio::test]
async fn two_relays_announce_to_a_third_and_a_killed_one_expires() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let registry = start(dirs[0].path(), &["--registry-token", "reg-token", "--relay-ttl", "2s"]).await;
    let registry_url = registry.http_url("");
    let announce = |public: &'static str| {
        [
            "--announce-to",
            registry_url.as_str(),
            "--public-url",
            public,
            "--registry-token",
            "reg-token",
            "--relay-ttl",
            "2s",
        ]
        .map(str::to_owned)
    };
    let args_a = announce("https://relay-a.example");
    let args_b = announce("https://relay-b.example");
    let mut args_a: Vec<&str> = args_a.iter().map(String::as_str).collect();
    args_a.extend(["--room-id-prefix", "1a2b3c4d"]);
    let args_b: Vec<&str> = args_b.iter().map(String::as_str).collect();
    let mut relay_a = start(dirs[1].path(), &args_a).await;
    let relay_b = start(dirs[2].path(), &args_b).await;

    eventually("both relays are listed", || async {
        relay_urls(&registry).await == ["https://relay-a.example", "https://relay-b.example"]
    })
    .await;
    let listed = http_request(registry.addr, "GET", "/v1/relays", &[], b"").await.unwrap().json();
    assert_eq!(listed["relays"][0]["room_id_prefix"], "1a2b3c4d");
    assert_eq!(listed["relays"][1]["room_id_prefix"], Value::Null);

    relay_a.signal(9);
    relay_a.wait_exit(STEP_TIMEOUT).await.unwrap();
    eventually("the killed relay expires", || async {
        relay_urls(&registry).await == ["https://relay-b.example"]
    })
    .await;
    // The live one keeps refreshing its entry past its first TTL.
    let first = http_request(registry.addr, "GET", "/v1/relays", &[], b"").await.unwrap().json();
    let first_expiry = first["relays"][0]["expires_at"].as_u64().unwrap();
    eventually("relay B refreshes its entry", || async {
        let now = http_request(registry.addr, "GET", "/v1/relays", &[], b"").await.unwrap().json();
        now["relays"][0]["expires_at"].as_u64().is_some_and(|e| e > first_expiry)
    })
    .await;
    drop(relay_b);
}

#[tokio::test]
async fn an_unreachable_registry_is_logged_and_serving_goes_on() {
    // A port that was just free: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let registry = format!("http://{closed}");
    let relay = start(
        dir.path(),
        &["--announce-to", &registry, "--public-url", "https://relay.example", "--registry-token", "t"],
    )
    .await;
    eventually("the failure is logged", || async {
        relay.output().contains("cannot announce to the registry")
    })
    .await;
    let resp = http_request(relay.addr, "GET", "/healthz", &[], b"").await.unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    assert!(!relay.output().contains("Bearer t"), "the token never appears in logs");
}

#[tokio::test]
async fn announcing_without_a_public_url_or_with_a_zero_ttl_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let out = run_binary(&[
        OPEN,
        "--data-dir",
        data,
        "--announce-to",
        "http://127.0.0.1:1",
        "--registry-token",
        "t",
    ])
    .await
    .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--public-url"), "{out:?}");
    let out = run_binary(&[OPEN, "--data-dir", data, "--group-ttl", "0s"]).await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--group-ttl"), "{out:?}");
    let out = run_binary(&[OPEN, "--data-dir", data, "--group-ttl", "5 minutes"]).await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid duration"), "{out:?}");
}
