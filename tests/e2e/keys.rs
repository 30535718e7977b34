//! API keys and the admin API against the real binary: preconfigured, created (Sodot
//! path and REST), revoked, expired keys; admin errors; restarts and crashes keep every
//! acknowledged change; offline `relay-server keys`; no key or token in the logs.

use std::path::Path;
use std::time::Duration;

use crate::support::{
    HttpResponse, RelayProcess, STEP_TIMEOUT, Ws, http_request, post_json, refusal_status, run_binary,
    ws_connect,
};
use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use hyper::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// A preconfigured key as the Sodot page writes it: `00112233..eeff` in base64.
const PRE_KEY: &str = "ABEiM0RVZneImaq7zN3u/w==";
/// A second well-formed key that no server here knows.
const STRANGER_KEY: &str = "/+7dzLuqmYh3ZlVEMyIRAA==";
/// The admin token most tests pass with `--secret-auth`.
const TOKEN: &str = "test-admin-token-Zq8v-0123456789abcdef";

/// Starts the binary with keys enforced, a data dir and the test admin token.
async fn start(dir: &Path, extra: &[&str]) -> anyhow::Result<RelayProcess> {
    let dir = dir.to_str().context("utf-8 temp dir")?;
    let mut args = vec!["--data-dir", dir, "--secret-auth", TOKEN];
    args.extend_from_slice(extra);
    RelayProcess::start(&args).await
}

/// Stops the relay with SIGTERM and waits for it to exit cleanly.
async fn stop(mut relay: RelayProcess) -> anyhow::Result<()> {
    relay.signal(15);
    let status = relay.wait_exit(STEP_TIMEOUT).await?;
    anyhow::ensure!(status.success(), "relay-server exited with {status}; output: {}", relay.output());
    Ok(())
}

/// `GET /v1/key` presenting `key` as `Authorization: Bearer <key>`.
async fn check_key(relay: &RelayProcess, key: &str) -> anyhow::Result<HttpResponse> {
    let auth = format!("Bearer {key}");
    http_request(relay.addr, "GET", "/v1/key", &[("authorization", &auth)], b"").await
}

/// A REST admin request with `Authorization: Bearer <token>`.
async fn admin(relay: &RelayProcess, method: &str, path: &str, token: &str) -> anyhow::Result<HttpResponse> {
    let auth = format!("Bearer {token}");
    http_request(relay.addr, method, path, &[("authorization", &auth)], b"").await
}

/// `GET path` with no headers (the Sodot admin paths carry the token in the path).
async fn get(relay: &RelayProcess, path: &str) -> anyhow::Result<HttpResponse> {
    http_request(relay.addr, "GET", path, &[], b"").await
}

/// Creates a key through `/createkey` and returns it.
async fn sodot_create(relay: &RelayProcess, name: &str, expires_at: u64) -> anyhow::Result<String> {
    let resp = get(relay, &format!("/createkey/{name}/{expires_at}/{TOKEN}")).await?;
    anyhow::ensure!(resp.status == StatusCode::OK, "createkey {name}: {} {}", resp.status, resp.text());
    let key = resp.json()["key"].as_str().context("key in createkey answer")?.to_owned();
    Ok(key)
}

/// The `/rooms/<token>` listing's entry for `name`.
async fn license(relay: &RelayProcess, name: &str) -> anyhow::Result<Option<Value>> {
    let resp = get(relay, &format!("/rooms/{TOKEN}")).await?;
    anyhow::ensure!(resp.status == StatusCode::OK, "rooms listing: {} {}", resp.status, resp.text());
    let all = resp.json()["Licenses"].as_array().context("Licenses array")?.clone();
    Ok(all.into_iter().find(|k| k["name"] == name))
}

fn error_code(resp: &HttpResponse) -> String {
    resp.json()["error"]["code"].as_str().unwrap_or_default().to_owned()
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[tokio::test]
async fn preconfigured_key_is_accepted_in_every_presentation_and_others_are_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = start(dir.path(), &["--api-key", &format!("{PRE_KEY},backend")]).await?;

    let bearer = check_key(&relay, PRE_KEY).await?;
    assert_eq!(bearer.status, StatusCode::OK, "{}", bearer.text());
    assert_eq!(bearer.json()["name"], "backend");
    assert_eq!(bearer.json()["tenant"], "backend");
    let raw = http_request(relay.addr, "GET", "/v1/key", &[("authorization", PRE_KEY)], b"").await?;
    assert_eq!(raw.status, StatusCode::OK, "{}", raw.text());
    let query = get(&relay, "/v1/key?api_key=ABEiM0RVZneImaq7zN3u%2Fw%3D%3D").await?;
    assert_eq!(query.status, StatusCode::OK, "{}", query.text());

    let missing = get(&relay, "/v1/key").await?;
    assert_eq!(
        (missing.status, error_code(&missing).as_str()),
        (StatusCode::UNAUTHORIZED, "missing_api_key")
    );
    let unknown = check_key(&relay, STRANGER_KEY).await?;
    assert_eq!(
        (unknown.status, error_code(&unknown).as_str()),
        (StatusCode::UNAUTHORIZED, "unknown_api_key")
    );
    let malformed = check_key(&relay, "not-a-key").await?;
    assert_eq!(
        (malformed.status, error_code(&malformed).as_str()),
        (StatusCode::UNAUTHORIZED, "unknown_api_key")
    );
    stop(relay).await
}

#[tokio::test]
async fn keys_created_by_the_sodot_path_and_by_rest_work_and_carry_their_tenant() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = start(dir.path(), &[]).await?;

    let resp = get(&relay, &format!("/createkey/phone-app/0/{TOKEN}")).await?;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    let body = resp.json();
    assert_eq!((body["name"].as_str(), body["expires_at"].as_u64()), (Some("phone-app"), Some(0)));
    let sodot_key = body["key"].as_str().context("key")?.to_owned();
    let who = check_key(&relay, &sodot_key).await?;
    assert_eq!((who.status, who.json()["tenant"].clone()), (StatusCode::OK, json!("phone-app")));

    let auth = format!("Bearer {TOKEN}");
    let created = post_json(
        relay.addr,
        "/v1/admin/keys",
        &[("authorization", &auth)],
        &json!({"name": "backend", "tenant": "acme", "expires_at": now() + 3600}),
    )
    .await?;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    assert_eq!(created.json()["tenant"], "acme");
    let rest_key = created.json()["key"].as_str().context("key")?.to_owned();
    assert_ne!(rest_key, sodot_key);
    let who = check_key(&relay, &rest_key).await?;
    assert_eq!((who.status, who.json()["name"].clone()), (StatusCode::OK, json!("backend")));
    assert_eq!(who.json()["tenant"], "acme");

    let listed = admin(&relay, "GET", "/v1/admin/keys", TOKEN).await?;
    assert_eq!(listed.status, StatusCode::OK);
    let names: Vec<String> =
        listed.json()["keys"].as_array().context("keys")?.iter().map(|k| k["name"].to_string()).collect();
    assert_eq!(names, ["\"backend\"", "\"phone-app\""]);
    assert!(!listed.text().contains(&rest_key) && !listed.text().contains(&sodot_key), "listing shows a key");
    stop(relay).await
}

#[tokio::test]
async fn revoked_key_is_refused_on_the_next_request() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = start(dir.path(), &[]).await?;
    let sodot = sodot_create(&relay, "via-sodot", 0).await?;
    let rest = sodot_create(&relay, "via-rest", 0).await?;
    assert_eq!(check_key(&relay, &sodot).await?.status, StatusCode::OK);
    assert_eq!(check_key(&relay, &rest).await?.status, StatusCode::OK);

    let revoked = get(&relay, &format!("/revokekey/via-sodot/{TOKEN}")).await?;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.text());
    assert_eq!(revoked.json()["revoked"], true);
    let revoked = admin(&relay, "DELETE", "/v1/admin/keys/via-rest", TOKEN).await?;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.text());
    assert_eq!(revoked.json()["status"], "revoked");

    for key in [&sodot, &rest] {
        let refused = check_key(&relay, key).await?;
        assert_eq!(
            (refused.status, error_code(&refused).as_str()),
            (StatusCode::FORBIDDEN, "revoked_api_key")
        );
    }
    assert_eq!(license(&relay, "via-sodot").await?.context("listed")?["revoked"], true);
    stop(relay).await
}

#[tokio::test]
async fn expired_key_is_refused_once_its_expiry_passes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = start(dir.path(), &[]).await?;
    let key = sodot_create(&relay, "short-lived", now() + 2).await?;
    assert_eq!(check_key(&relay, &key).await?.status, StatusCode::OK);

    // Poll until it is refused: bounded, and no assertion on how long it took.
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    let refused = loop {
        let resp = check_key(&relay, &key).await?;
        if resp.status != StatusCode::OK || tokio::time::Instant::now() > deadline {
            break resp;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!((refused.status, error_code(&refused).as_str()), (StatusCode::FORBIDDEN, "expired_api_key"));
    assert_eq!(license(&relay, "short-lived").await?.context("listed")?["status"], "expired");
    stop(relay).await
}

#[tokio::test]
async fn restart_keeps_keys_expiry_and_revocation() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pre = format!("{PRE_KEY},backend");
    let relay = start(dir.path(), &["--api-key", &pre]).await?;
    let kept = sodot_create(&relay, "kept", 0).await?;
    let expiring = now() + 86_400;
    let later = sodot_create(&relay, "expires-later", expiring).await?;
    let gone = sodot_create(&relay, "gone", 0).await?;
    assert_eq!(get(&relay, &format!("/revokekey/gone/{TOKEN}")).await?.status, StatusCode::OK);
    stop(relay).await?;

    let relay = start(dir.path(), &["--api-key", &pre]).await?;
    assert_eq!(check_key(&relay, PRE_KEY).await?.status, StatusCode::OK);
    assert_eq!(check_key(&relay, &kept).await?.status, StatusCode::OK);
    assert_eq!(check_key(&relay, &later).await?.status, StatusCode::OK);
    assert_eq!(check_key(&relay, &gone).await?.status, StatusCode::FORBIDDEN);
    assert_eq!(license(&relay, "expires-later").await?.context("listed")?["expires_at"], expiring);
    assert_eq!(license(&relay, "gone").await?.context("listed")?["revoked"], true);
    // The name of a revoked key stays taken.
    let again = get(&relay, &format!("/createkey/gone/0/{TOKEN}")).await?;
    assert_eq!(again.status, StatusCode::CONFLICT);
    stop(relay).await
}

#[tokio::test]
async fn revoked_preconfigured_key_stays_revoked_though_the_flag_still_passes_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pre = format!("{PRE_KEY},backend");
    let relay = start(dir.path(), &["--api-key", &pre]).await?;
    assert_eq!(check_key(&relay, PRE_KEY).await?.status, StatusCode::OK);
    assert_eq!(admin(&relay, "DELETE", "/v1/admin/keys/backend", TOKEN).await?.status, StatusCode::OK);
    assert_eq!(check_key(&relay, PRE_KEY).await?.status, StatusCode::FORBIDDEN);
    stop(relay).await?;

    let relay = start(dir.path(), &["--api-key", &pre]).await?;
    let refused = check_key(&relay, PRE_KEY).await?;
    assert_eq!((refused.status, error_code(&refused).as_str()), (StatusCode::FORBIDDEN, "revoked_api_key"));
    stop(relay).await
}

#[tokio::test]
async fn admin_refusals_wrong_token_taken_name_bad_expiry_unknown_key() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = start(dir.path(), &[]).await?;
    sodot_create(&relay, "taken", 0).await?;

    // A wrong token and no token get the same 401, on every admin route.
    let wrong = "wrong-token";
    let sodot_paths =
        [format!("/createkey/new/0/{wrong}"), format!("/rooms/{wrong}"), format!("/revokekey/taken/{wrong}")];
    let mut bodies = Vec::new();
    for path in &sodot_paths {
        let resp = get(&relay, path).await?;
        assert_eq!(resp.status, StatusCode::UNAUTHORIZED, "{path}: {}", resp.text());
        bodies.push(resp.text());
    }
    for (method, path) in [
        ("GET", "/v1/admin/keys"),
        ("POST", "/v1/admin/keys"),
        ("DELETE", "/v1/admin/keys/taken"),
        ("GET", "/v1/admin/rooms"),
        ("GET", "/v1/admin/usage"),
    ] {
        let resp = admin(&relay, method, path, wrong).await?;
        assert_eq!(resp.status, StatusCode::UNAUTHORIZED, "{method} {path}: {}", resp.text());
        bodies.push(resp.text());
        let resp = http_request(relay.addr, method, path, &[], b"").await?;
        assert_eq!(resp.status, StatusCode::UNAUTHORIZED, "{method} {path} without token");
        bodies.push(resp.text());
    }
    bodies.dedup();
    assert_eq!(bodies.len(), 1, "401 bodies differ: {bodies:?}");
    // The key was not revoked by the refused calls.
    assert_eq!(license(&relay, "taken").await?.context("listed")?["revoked"], false);

    let taken = get(&relay, &format!("/createkey/taken/0/{TOKEN}")).await?;
    assert_eq!((taken.status, error_code(&taken).as_str()), (StatusCode::CONFLICT, "key_name_taken"));
    let auth = format!("Bearer {TOKEN}");
    let taken =
        post_json(relay.addr, "/v1/admin/keys", &[("authorization", &auth)], &json!({"name": "taken"}))
            .await?;
    assert_eq!(taken.status, StatusCode::CONFLICT);

    for expiry in ["soon", "-5", "1"] {
        let resp = get(&relay, &format!("/createkey/fresh/{expiry}/{TOKEN}")).await?;
        assert_eq!(
            (resp.status, error_code(&resp).as_str()),
            (StatusCode::BAD_REQUEST, "bad_expiry"),
            "{expiry}"
        );
    }
    for body in
        [json!({"name": "fresh", "expires_at": 1}), json!({"name": "fresh", "expires_at": "tomorrow"})]
    {
        let resp = post_json(relay.addr, "/v1/admin/keys", &[("authorization", &auth)], &body).await?;
        assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{body}: {}", resp.text());
    }
    let bad_name = get(&relay, &format!("/createkey/bad%20name/0/{TOKEN}")).await?;
    assert_eq!(bad_name.status, StatusCode::BAD_REQUEST);
    let unknown = get(&relay, &format!("/revokekey/nobody/{TOKEN}")).await?;
    assert_eq!((unknown.status, error_code(&unknown).as_str()), (StatusCode::NOT_FOUND, "key_not_found"));
    assert!(license(&relay, "fresh").await?.is_none(), "a refused create left a key behind");
    stop(relay).await
}

#[tokio::test]
async fn bad_api_key_values_exit_2_naming_the_position_not_the_key() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().to_str().context("utf-8")?;
    let good = format!("{PRE_KEY},good");
    let cases: [(&str, &str, &str); 5] = [
        ("c2VjcmV0LWJ1dC1ub3QtMTZi,app", "#2", "16 bytes"),
        ("/+7dzLuqmYh3ZlVEMyIRAA==", "#2", "comma"),
        ("/+7dzLuqmYh3ZlVEMyIRAA==,", "#2", "NAME is missing"),
        ("/+7dzLuqmYh3ZlVEMyIRAA==,good", "#2", "#1"),
        ("app,/+7dzLuqmYh3ZlVEMyIRAA==", "#2", "base64"),
    ];
    for (value, position, problem) in cases {
        let out = run_binary(&["--data-dir", data_dir, "--api-key", &good, "--api-key", value]).await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(2), "{value}: {stderr}");
        assert!(stderr.contains(position) && stderr.contains(problem), "{value}: {stderr}");
        for secret in [PRE_KEY, "/+7dzLuqmYh3ZlVEMyIRAA", "c2VjcmV0LWJ1dC1ub3QtMTZi"] {
            assert!(!stderr.contains(secret) && !stdout.contains(secret), "{value} echoed: {stderr}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn unusable_data_dir_stops_the_server_with_a_clear_error() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x")?;
    let out = run_binary(&["--data-dir", file.to_str().context("utf-8")?]).await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("data directory") && stderr.contains("not-a-dir"), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn generated_admin_token_is_printed_once_and_works_after_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().to_str().context("utf-8")?;
    let relay = RelayProcess::start(&["--data-dir", data_dir]).await?;
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    let token = loop {
        let found = relay
            .output()
            .lines()
            .find_map(|l| l.split("only its hash is kept): ").nth(1).map(str::to_owned));
        match found {
            Some(t) => break t,
            None if tokio::time::Instant::now() > deadline => {
                anyhow::bail!("no token line: {}", relay.output())
            }
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    assert_eq!(admin(&relay, "GET", "/v1/admin/keys", &token).await?.status, StatusCode::OK);
    stop(relay).await?;

    let relay = RelayProcess::start(&["--data-dir", data_dir]).await?;
    assert_eq!(admin(&relay, "GET", "/v1/admin/usage", &token).await?.status, StatusCode::OK);
    let output = relay.output();
    stop(relay).await?;
    assert!(!output.contains("admin token") && !output.contains(&token), "token printed again: {output}");
    Ok(())
}

#[tokio::test]
async fn insecure_mode_checks_no_key_and_warns() -> anyhow::Result<()> {
    let relay = RelayProcess::start(&["--insecure-api-keys-not-enforced"]).await?;
    assert_eq!(get(&relay, "/v1/key").await?.status, StatusCode::OK);
    assert!(relay.output().contains("NOT enforced"), "{}", relay.output());
    // The admin API still needs its token.
    assert_eq!(get(&relay, "/rooms/wrong-token").await?.status, StatusCode::UNAUTHORIZED);
    stop(relay).await
}

#[tokio::test]
async fn logs_at_debug_hold_no_key_and_no_admin_token() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().to_str().context("utf-8")?;
    let pre = format!("{PRE_KEY},backend");
    let relay = RelayProcess::start_with_env(
        &["--data-dir", data_dir, "--api-key", &pre, "--log-format", "json"],
        &[("RUST_LOG", "debug")],
    )
    .await?;
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    let token = loop {
        let found = relay
            .output()
            .lines()
            .find_map(|l| l.split("only its hash is kept): ").nth(1).map(str::to_owned));
        match found {
            Some(t) => break t,
            None if tokio::time::Instant::now() > deadline => anyhow::bail!("no token line"),
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let created = get(&relay, &format!("/createkey/app/0/{token}")).await?;
    let key = created.json()["key"].as_str().context("key")?.to_owned();
    assert_eq!(check_key(&relay, &key).await?.status, StatusCode::OK);
    assert_eq!(get(&relay, "/v1/key?api_key=ABEiM0RVZneImaq7zN3u%2Fw%3D%3D").await?.status, StatusCode::OK);
    assert_eq!(get(&relay, &format!("/rooms/{token}")).await?.status, StatusCode::OK);
    assert_eq!(get(&relay, &format!("/revokekey/app/{token}")).await?.status, StatusCode::OK);
    assert_eq!(check_key(&relay, &key).await?.status, StatusCode::FORBIDDEN);
    assert_eq!(get(&relay, "/rooms/wrong-token").await?.status, StatusCode::UNAUTHORIZED);
    let listed = admin(&relay, "GET", "/v1/admin/keys", &token).await?;
    assert_eq!(listed.status, StatusCode::OK);
    let output = relay.output();
    stop(relay).await?;

    assert!(output.lines().count() > 3, "expected debug logs: {output}");
    let token_lines: Vec<&str> = output.lines().filter(|l| l.contains(&token)).collect();
    assert_eq!(token_lines.len(), 1, "the admin token is shown once only: {token_lines:?}");
    assert!(token_lines[0].starts_with("admin token (shown once"), "{token_lines:?}");
    for secret in [key.as_str(), PRE_KEY, "ABEiM0RVZneImaq7zN3u%2Fw", "ABEiM0RVZneImaq7zN3u"] {
        assert!(!output.contains(secret), "a key is in the logs: {secret}");
    }
    Ok(())
}

#[tokio::test]
async fn acknowledged_create_and_revoke_survive_kill_9() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut keys: Vec<(String, String)> = Vec::new();
    let mut revoked: Vec<String> = Vec::new();
    for round in 0..20 {
        let mut relay = start(dir.path(), &[]).await?;
        // Every change acknowledged before the last kill -9 is there.
        for (name, key) in &keys {
            let status = check_key(&relay, key).await?.status;
            let expected = if revoked.contains(name) { StatusCode::FORBIDDEN } else { StatusCode::OK };
            assert_eq!(status, expected, "round {round}: key {name}");
        }
        if round % 2 == 0 {
            let name = format!("crash-{round}");
            let key = sodot_create(&relay, &name, 0).await?;
            keys.push((name, key));
        } else {
            let (name, _) = keys.last().context("a key from the round before")?.clone();
            let resp = admin(&relay, "DELETE", &format!("/v1/admin/keys/{name}"), TOKEN).await?;
            assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
            revoked.push(name);
        }
        relay.signal(9);
        relay.wait_exit(STEP_TIMEOUT).await?;
    }
    let relay = start(dir.path(), &[]).await?;
    for (name, key) in &keys {
        let expected = if revoked.contains(name) { StatusCode::FORBIDDEN } else { StatusCode::OK };
        assert_eq!(check_key(&relay, key).await?.status, expected, "after the last crash: {name}");
    }
    stop(relay).await
}

#[tokio::test]
async fn offline_keys_commands_work_when_stopped_and_refuse_while_running() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().to_str().context("utf-8")?;
    let future = (now() + 3600).to_string();
    let out = run_binary(&[
        "keys",
        "create",
        "offline",
        "--expires-at",
        &future,
        "--tenant",
        "acme",
        "--data-dir",
        data_dir,
    ])
    .await?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let created: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!((created["name"].as_str(), created["tenant"].as_str()), (Some("offline"), Some("acme")));
    let key = created["key"].as_str().context("key")?.to_owned();
    let out = run_binary(&["keys", "create", "doomed", "--data-dir", data_dir]).await?;
    assert!(out.status.success());
    let doomed: Value = serde_json::from_slice(&out.stdout)?;
    let out = run_binary(&["--data-dir", data_dir, "keys", "revoke", "doomed"]).await?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run_binary(&["keys", "revoke", "nobody", "--data-dir", data_dir]).await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no key named \"nobody\""), "{stderr}");
    let out = run_binary(&["keys", "list", "--data-dir", data_dir]).await?;
    let listed: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(listed["keys"].as_array().map(Vec::len), Some(2));
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&key), "list shows a key");

    let relay = start(dir.path(), &[]).await?;
    let who = check_key(&relay, &key).await?;
    assert_eq!((who.status, who.json()["tenant"].clone()), (StatusCode::OK, json!("acme")));
    let doomed_key = doomed["key"].as_str().context("key")?;
    assert_eq!(check_key(&relay, doomed_key).await?.status, StatusCode::FORBIDDEN);
    for args in [vec!["keys", "list"], vec!["keys", "revoke", "offline"]] {
        let mut args = args;
        args.extend(["--data-dir", data_dir]);
        let out = run_binary(&args).await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("already running"), "{stderr}");
    }
    // The refused revoke changed nothing.
    assert_eq!(check_key(&relay, &key).await?.status, StatusCode::OK);
    stop(relay).await
}

/// `?api_key=` value: standard base64 percent-encoded for a query string.
fn query_key(key: &str) -> String {
    key.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D")
}

/// A mailbox frame: 32-byte ID, TTL (u16 LE), flags (u16 LE), payload; no payload = ask.
fn mailbox_frame(tag: &str, payload: &[u8]) -> Vec<u8> {
    let mut id = [0u8; 32];
    id[..tag.len()].copy_from_slice(tag.as_bytes());
    let mut frame = id.to_vec();
    frame.extend_from_slice(&60u16.to_le_bytes());
    frame.extend_from_slice(&0u16.to_le_bytes());
    frame.extend_from_slice(payload);
    frame
}

async fn send_binary(ws: &mut Ws, frame: Vec<u8>) -> anyhow::Result<()> {
    tokio::time::timeout(STEP_TIMEOUT, ws.send(Message::binary(frame))).await??;
    Ok(())
}

/// The next binary frame's payload (after the 36-byte header), skipping pings.
async fn next_payload(ws: &mut Ws) -> anyhow::Result<Vec<u8>> {
    loop {
        let msg = tokio::time::timeout(STEP_TIMEOUT, ws.next()).await?.context("socket closed")??;
        match msg {
            Message::Binary(b) => return Ok(b.get(36..).unwrap_or_default().to_vec()),
            Message::Ping(_) | Message::Pong(_) => {}
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
}

/// The next text frame of a room connection as JSON, skipping pings.
async fn next_event(ws: &mut Ws, kind: &str) -> anyhow::Result<Value> {
    loop {
        let msg = tokio::time::timeout(STEP_TIMEOUT, ws.next()).await?.context("socket closed")??;
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(t.as_str())?;
            if v["type"] == kind {
                return Ok(v);
            }
        }
    }
}

/// Polls `/v1/admin/usage` until `name`'s usage satisfies `done` (bounded); returns it.
async fn usage_of(relay: &RelayProcess, name: &str, done: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    loop {
        let resp = admin(relay, "GET", "/v1/admin/usage", TOKEN).await?;
        let entry =
            resp.json()["keys"].as_array().and_then(|k| k.iter().find(|k| k["name"] == name).cloned());
        let entry = entry.context("key in usage")?;
        if done(&entry) || tokio::time::Instant::now() > deadline {
            return Ok(entry);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn preconfigured_key_creates_rooms_and_a_revoked_key_is_refused_before_the_upgrade()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = start(dir.path(), &["--api-key", &format!("{PRE_KEY},backend")]).await?;
    let bearer = format!("Bearer {PRE_KEY}");
    let room =
        post_json(relay.addr, "/v1/rooms", &[("authorization", &bearer)], &json!({"room_size": 2})).await?;
    assert_eq!(room.status, StatusCode::CREATED, "{}", room.text());
    let sodot = http_request(relay.addr, "POST", "/create-room", &[("authorization", PRE_KEY)], b"").await?;
    assert_eq!(sodot.status, StatusCode::OK, "{}", sodot.text());
    let refused = post_json(relay.addr, "/v1/rooms", &[], &json!({"room_size": 2})).await?;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);

    let key = sodot_create(&relay, "browser", 0).await?;
    let path = format!("/v1/msg-relay?api_key={}", query_key(&key));
    let ws = ws_connect(relay.addr, &path).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    drop(ws);
    let auth = format!("Bearer {key}");
    let room =
        post_json(relay.addr, "/v1/rooms", &[("authorization", &auth)], &json!({"room_size": 2})).await?;
    assert_eq!(room.status, StatusCode::CREATED);

    assert_eq!(get(&relay, &format!("/revokekey/browser/{TOKEN}")).await?.status, StatusCode::OK);
    let err = ws_connect(relay.addr, &path).await.err().context("a revoked key was upgraded")?;
    assert_eq!(refusal_status(&err), Some(StatusCode::FORBIDDEN), "{err}");
    let room =
        post_json(relay.addr, "/v1/rooms", &[("authorization", &auth)], &json!({"room_size": 2})).await?;
    assert_eq!((room.status, error_code(&room).as_str()), (StatusCode::FORBIDDEN, "revoked_api_key"));
    let err = ws_connect(relay.addr, &format!("/v1/msg-relay?api_key={}", query_key(STRANGER_KEY))).await;
    assert_eq!(err.err().as_ref().and_then(refusal_status), Some(StatusCode::UNAUTHORIZED));
    stop(relay).await
}

#[tokio::test]
async fn keys_of_different_tenants_never_see_each_others_mailbox_messages() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = start(dir.path(), &[]).await?;
    let auth = format!("Bearer {TOKEN}");
    let mut keys = Vec::new();
    for (name, tenant) in [("phone", "acme"), ("backend", "acme"), ("rival", "other")] {
        let body = json!({"name": name, "tenant": tenant});
        let resp = post_json(relay.addr, "/v1/admin/keys", &[("authorization", &auth)], &body).await?;
        assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text());
        keys.push(resp.json()["key"].as_str().context("key")?.to_owned());
    }
    let connect = |key: &str| {
        let path = format!("/v1/msg-relay?api_key={}", query_key(key));
        async move { ws_connect(relay.addr, &path).await.map_err(|e| anyhow::anyhow!("{e}")) }
    };
    let mut phone = connect(&keys[0]).await?;
    let mut backend = connect(&keys[1]).await?;
    let mut rival = connect(&keys[2]).await?;

    // The rival asks first; acme publishes; acme's other key gets it.
    send_binary(&mut rival, mailbox_frame("round-1", b"")).await?;
    send_binary(&mut phone, mailbox_frame("round-1", b"acme secret share")).await?;
    send_binary(&mut backend, mailbox_frame("round-1", b"")).await?;
    assert_eq!(next_payload(&mut backend).await?, b"acme secret share");
    // Had the namespaces met, the rival's waiting ask would have been answered by now
    // with acme's message; instead the first thing it sees is its own publish.
    send_binary(&mut rival, mailbox_frame("round-1", b"rival data")).await?;
    assert_eq!(next_payload(&mut rival).await?, b"rival data");
    // And acme still sees its own message under that ID.
    send_binary(&mut phone, mailbox_frame("round-1", b"")).await?;
    assert_eq!(next_payload(&mut phone).await?, b"acme secret share");
    stop(relay).await
}

#[tokio::test]
async fn usage_is_counted_listed_and_kept_across_a_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = start(dir.path(), &[]).await?;
    let key = sodot_create(&relay, "counted", 0).await?;
    let auth = format!("Bearer {key}");

    // One room created by the key; a room message counts against it.
    let room =
        post_json(relay.addr, "/v1/rooms", &[("authorization", &auth)], &json!({"room_size": 2})).await?;
    let room_id = room.json()["room_uuid"].as_str().context("room_uuid")?.to_owned();
    let mut a = ws_connect(relay.addr, &format!("/v1/rooms/{room_id}")).await?;
    let mut b = ws_connect(relay.addr, &format!("/v1/rooms/{room_id}")).await?;
    next_event(&mut a, "ready").await?;
    let mut frame = 1u16.to_le_bytes().to_vec();
    frame.extend_from_slice(b"0123456789");
    send_binary(&mut a, frame).await?;
    loop {
        let msg = tokio::time::timeout(STEP_TIMEOUT, b.next()).await?.context("closed")??;
        if matches!(msg, Message::Binary(_)) {
            break;
        }
    }
    // One mailbox publish of 5 payload bytes; an ask is not a message.
    let mut mb = ws_connect(relay.addr, &format!("/v1/msg-relay?api_key={}", query_key(&key))).await?;
    send_binary(&mut mb, mailbox_frame("x", b"hello")).await?;
    send_binary(&mut mb, mailbox_frame("x", b"")).await?;
    assert_eq!(next_payload(&mut mb).await?, b"hello");

    let expected = json!({"name": "counted", "tenant": "counted", "messages": 2, "bytes": 15, "rooms": 1});
    assert_eq!(usage_of(&relay, "counted", |u| u == &expected).await?, expected);
    let listing = get(&relay, &format!("/rooms/{TOKEN}")).await?.json();
    let rooms = listing["Rooms"].as_array().context("Rooms")?;
    assert!(rooms.iter().any(|r| r["room_uuid"] == room_id.as_str() && r["key"] == "counted"), "{listing}");
    let admin_rooms = admin(&relay, "GET", "/v1/admin/rooms", TOKEN).await?.json();
    assert_eq!(admin_rooms["rooms"].as_array().map(Vec::len), Some(1), "{admin_rooms}");
    // The same counts as per-key series on /metrics (by name, never the key).
    let metrics = get(&relay, "/metrics").await?.text();
    for line in [
        "relay_key_messages_total{key=\"counted\"} 2",
        "relay_key_bytes_total{key=\"counted\"} 15",
        "relay_key_rooms_created_total{key=\"counted\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "missing {line:?} in:\n{metrics}");
    }
    assert!(!metrics.contains(&key), "the key itself must never be in /metrics");
    drop((a, b, mb));
    stop(relay).await?;

    let relay = start(dir.path(), &[]).await?;
    assert_eq!(usage_of(&relay, "counted", |_| true).await?, expected);
    let license = license(&relay, "counted").await?.context("listed")?;
    assert_eq!(license["usage"], json!({"messages": 2, "bytes": 15, "rooms": 1}));
    stop(relay).await
}

/// With keys enforced, a discovery group can be changed or deleted only by the key that
/// created it, or by the admin token (naming the tenant); another key of the same
/// tenant gets 403 `not_owner`, a key of another tenant 404, no key 401.
#[tokio::test]
async fn group_change_by_another_key_is_403() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = start(dir.path(), &[]).await?;
    let owner = format!("Bearer {}", sodot_create(&relay, "owner", 0).await?);
    let other = format!("Bearer {}", sodot_create(&relay, "other", 0).await?);
    let admin_auth = format!("Bearer {TOKEN}");
    let created = http_request(
        relay.addr,
        "POST",
        "/v1/admin/keys",
        &[("authorization", &admin_auth), ("content-type", "application/json")],
        json!({"name": "colleague", "tenant": "owner"}).to_string().as_bytes(),
    )
    .await?;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    let colleague = format!("Bearer {}", created.json()["key"].as_str().unwrap_or_default());
    let group = json!({"ID": "g1", "Name": "office group", "AppID": "BabbleChat", "Peers": []});

    let created = post_json(relay.addr, "/group", &[("authorization", &owner)], &group).await?;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    let anonymous = post_json(relay.addr, "/group", &[], &group).await?;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED, "{}", anonymous.text());

    let patch = json!({"Name": "renamed"}).to_string();
    let call = |method: &'static str, auth: String, body: Vec<u8>| {
        let addr = relay.addr;
        async move {
            let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
            http_request(addr, method, "/groups/g1", &headers, &body).await
        }
    };
    for method in ["PATCH", "DELETE"] {
        let resp = call(method, colleague.clone(), patch.clone().into_bytes()).await?;
        assert_eq!(resp.status, StatusCode::FORBIDDEN, "{method} by another key: {}", resp.text());
        assert_eq!(resp.json()["error"]["code"], "not_owner");
        let resp = call(method, other.clone(), patch.clone().into_bytes()).await?;
        assert_eq!(resp.status, StatusCode::NOT_FOUND, "{method} by another tenant: {}", resp.text());
        assert_eq!(resp.json()["error"]["code"], "group_not_found");
    }
    // The owner may change it; the admin token, naming the tenant, may delete it.
    let resp = call("PATCH", owner.clone(), patch.into_bytes()).await?;
    assert_eq!(resp.status, StatusCode::OK, "PATCH by owner: {}", resp.text());
    let headers = [("authorization", admin_auth.as_str())];
    let resp = http_request(relay.addr, "DELETE", "/groups/g1?tenant=owner", &headers, b"").await?;
    assert_eq!(resp.status, StatusCode::OK, "DELETE by admin: {}", resp.text());
    let gone = http_request(relay.addr, "GET", "/groups/g1", &[("authorization", &owner)], b"").await?;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    stop(relay).await
}
