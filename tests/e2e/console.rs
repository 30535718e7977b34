//! The operator console against the real binary: its files and their security headers,
//! `--console false` (flag, environment, config file), `GET /v1/admin/stats` and
//! `DELETE /v1/admin/rooms/{id}`, and the Grafana dashboard's queries against
//! `/metrics`. The browser tests of the pages themselves live in `console/` (npm test).

use std::collections::BTreeSet;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use hyper::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{HttpResponse, RelayProcess, STEP_TIMEOUT, Ws, http_request, post_json, ws_connect};

/// The admin token every test here passes with `--secret-auth`.
const TOKEN: &str = "console-admin-token-7Hq2-0123456789abcdef";

/// The CSP docs/console.md promises.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

async fn start(extra: &[&str]) -> RelayProcess {
    let mut args = vec!["--secret-auth", TOKEN];
    args.extend_from_slice(extra);
    RelayProcess::start(&args).await.expect("start relay-server")
}

async fn get(relay: &RelayProcess, path: &str) -> HttpResponse {
    http_request(relay.addr, "GET", path, &[], b"").await.expect("GET")
}

async fn admin(relay: &RelayProcess, method: &str, path: &str) -> HttpResponse {
    let auth = format!("Bearer {TOKEN}");
    http_request(relay.addr, method, path, &[("authorization", &auth)], b"").await.expect("admin call")
}

fn header<'a>(resp: &'a HttpResponse, name: &str) -> &'a str {
    resp.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
}

fn error_code(resp: &HttpResponse) -> String {
    resp.json()["error"]["code"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn console_files_carry_the_csp_and_frame_headers_with_their_content_types() {
    let relay = start(&[]).await;
    for (path, content_type) in [
        ("/console", "text/html; charset=utf-8"),
        ("/console/", "text/html; charset=utf-8"),
        ("/console/index.html", "text/html; charset=utf-8"),
        ("/console/console.css", "text/css; charset=utf-8"),
        ("/console/js/app.js", "text/javascript; charset=utf-8"),
        ("/console/js/pages/keys.js", "text/javascript; charset=utf-8"),
        ("/console/favicon.svg", "image/svg+xml"),
    ] {
        let resp = get(&relay, path).await;
        assert_eq!(resp.status, StatusCode::OK, "{path}: {}", resp.text());
        assert_eq!(header(&resp, "content-type"), content_type, "{path}");
        assert_eq!(header(&resp, "content-security-policy"), CSP, "{path}");
        assert_eq!(header(&resp, "x-frame-options"), "DENY", "{path}");
        assert_eq!(header(&resp, "x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header(&resp, "referrer-policy"), "no-referrer", "{path}");
        assert!(!resp.body.is_empty(), "{path}");
    }
    let page = get(&relay, "/console").await.text();
    assert!(page.contains(r#"<script type="module" src="/console/js/app.js"></script>"#), "{page}");
    assert!(!page.contains("<style") && !page.contains("onclick") && !page.contains(" style="), "{page}");

    let missing = get(&relay, "/console/js/nope.js").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&missing), "not_found");
    let traversal = get(&relay, "/console/../v1/admin/keys").await;
    assert_ne!(traversal.status, StatusCode::OK);
    // Static files, not API: the OpenAPI document leaves them out.
    let doc = get(&relay, "/openapi.json").await.json();
    assert!(doc["paths"].as_object().unwrap().keys().all(|p| !p.starts_with("/console")), "{doc}");
    assert!(doc["paths"]["/v1/admin/stats"]["get"].is_object());
}

#[tokio::test]
async fn console_false_turns_it_off_from_the_flag_the_environment_and_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.toml");
    std::fs::write(&file, "console = false\n").unwrap();
    let file = file.to_str().unwrap().to_owned();
    let flag = start(&["--console", "false"]).await;
    let env =
        RelayProcess::start_with_env(&["--secret-auth", TOKEN], &[("RELAY_CONSOLE", "false")]).await.unwrap();
    let config = start(&["--config", &file]).await;
    for relay in [&flag, &env, &config] {
        for path in ["/console", "/console/", "/console/js/app.js"] {
            let resp = get(relay, path).await;
            assert_eq!(resp.status, StatusCode::NOT_FOUND, "{path}");
            assert_eq!(error_code(&resp), "not_found");
        }
        // The admin API stays.
        assert_eq!(admin(relay, "GET", "/v1/admin/stats").await.status, StatusCode::OK);
    }
    let on = start(&["--console", "true"]).await;
    assert_eq!(get(&on, "/console").await.status, StatusCode::OK);
}

/// Creates a key through the admin API and returns it.
async fn create_key(relay: &RelayProcess, name: &str) -> String {
    let auth = format!("Bearer {TOKEN}");
    let resp = post_json(relay.addr, "/v1/admin/keys", &[("authorization", &auth)], &json!({"name": name}))
        .await
        .unwrap();
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text());
    resp.json()["key"].as_str().unwrap().to_owned()
}

/// Creates a 2-party room with `key` and returns its ID.
async fn create_room(relay: &RelayProcess, key: &str) -> String {
    let auth = format!("Bearer {key}");
    let resp = post_json(relay.addr, "/v1/rooms", &[("authorization", &auth)], &json!({"room_size": 2}))
        .await
        .unwrap();
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text());
    resp.json()["room_uuid"].as_str().unwrap().to_owned()
}

async fn join(relay: &RelayProcess, room: &str) -> Ws {
    let mut ws = tokio::time::timeout(STEP_TIMEOUT, ws_connect(relay.addr, &format!("/v1/rooms/{room}")))
        .await
        .expect("join timed out")
        .expect("join");
    let welcome = next_text(&mut ws).await.unwrap();
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    ws
}

async fn next_text(ws: &mut Ws) -> anyhow::Result<Value> {
    loop {
        let msg =
            tokio::time::timeout(STEP_TIMEOUT, ws.next()).await.context("no frame")?.context("ended")??;
        match msg {
            Message::Text(t) => return Ok(serde_json::from_str(t.as_str())?),
            Message::Ping(_) | Message::Pong(_) | Message::Binary(_) => {}
            other => bail!("expected text, got {other:?}"),
        }
    }
}

/// Reads until the close frame: its code and reason.
async fn close_frame(ws: &mut Ws) -> anyhow::Result<(u16, String)> {
    loop {
        let msg =
            tokio::time::timeout(STEP_TIMEOUT, ws.next()).await.context("no close")?.context("ended")??;
        if let Message::Close(frame) = msg {
            let frame = frame.context("close without a code")?;
            return Ok((frame.code.into(), frame.reason.to_string()));
        }
    }
}

#[tokio::test]
async fn stats_need_the_admin_token_and_hold_both_rings_and_the_counters_now() {
    let relay = start(&[]).await;
    let none = get(&relay, "/v1/admin/stats").await;
    assert_eq!((none.status, error_code(&none)), (StatusCode::UNAUTHORIZED, "unauthorized".into()));
    let wrong = http_request(relay.addr, "GET", "/v1/admin/stats", &[("authorization", "Bearer nope")], b"")
        .await
        .unwrap();
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);

    // Traffic: a key, a room, a message between its two parties.
    let key = create_key(&relay, "stats-app").await;
    let room = create_room(&relay, &key).await;
    let mut a = join(&relay, &room).await;
    let mut b = join(&relay, &room).await;
    let mut frame = 1u16.to_le_bytes().to_vec();
    frame.extend_from_slice(b"hello");
    a.send(Message::binary(frame)).await.unwrap();
    let delivered = loop {
        let msg = tokio::time::timeout(STEP_TIMEOUT, b.next()).await.unwrap().unwrap().unwrap();
        if let Message::Binary(bytes) = msg {
            break bytes;
        }
    };
    assert!(delivered.ends_with(b"hello"));

    let resp = admin(&relay, "GET", "/v1/admin/stats").await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(header(&resp, "content-type"), "application/json");
    let stats = resp.json();
    assert_eq!(stats["version"], env!("CARGO_PKG_VERSION"));
    assert!(stats["started_at"].as_u64().unwrap() > 1_700_000_000, "{stats}");
    assert!(stats["uptime_secs"].as_u64().is_some(), "{stats}");
    assert_eq!(
        (stats["fine"]["step_secs"].as_u64(), stats["fine"]["capacity"].as_u64()),
        (Some(5), Some(120))
    );
    assert_eq!(
        (stats["coarse"]["step_secs"].as_u64(), stats["coarse"]["capacity"].as_u64()),
        (Some(60), Some(1440))
    );
    // The sampler took its first sample when the server started.
    let first = &stats["fine"]["samples"][0];
    assert!(first["t"].as_u64().is_some(), "{stats}");
    assert_eq!(stats["coarse"]["samples"][0]["t"], first["t"]);
    let now = &stats["now"];
    for field in [
        "t",
        "connections_open",
        "websockets_open",
        "rooms_open",
        "connections",
        "rooms_created",
        "messages",
        "bytes",
        "auth_failures",
        "rate_limited",
    ] {
        assert!(now[field].as_u64().is_some(), "{field} in {now}");
    }
    assert_eq!(now["rooms_open"], 1);
    assert_eq!(now["websockets_open"], 2);
    assert_eq!(now["messages"], 1);
    assert_eq!(now["bytes"], 5);
    assert!(now["auth_failures"].as_u64().unwrap() >= 2, "the two refused calls above: {now}");
    // Per-key usage is flushed to the store's counters as it is metered.
    let keys = now["keys"].as_array().unwrap();
    let ours = keys.iter().find(|k| k["name"] == "stats-app").unwrap_or_else(|| panic!("{now}"));
    assert_eq!(ours["rooms"], 1, "{ours}");
}

#[tokio::test]
async fn closing_a_room_from_the_admin_api_disconnects_its_parties_with_1008() {
    let relay = start(&[]).await;
    let key = create_key(&relay, "closer").await;
    let room = create_room(&relay, &key).await;
    let mut party = join(&relay, &room).await;

    let path = format!("/v1/admin/rooms/{room}");
    let unauthorized = get(&relay, &path).await;
    assert_eq!(unauthorized.status, StatusCode::METHOD_NOT_ALLOWED, "only DELETE");
    let no_token = http_request(relay.addr, "DELETE", &path, &[], b"").await.unwrap();
    assert_eq!((no_token.status, error_code(&no_token)), (StatusCode::UNAUTHORIZED, "unauthorized".into()));

    let listed = admin(&relay, "GET", "/v1/admin/rooms").await.json();
    assert_eq!(listed["rooms"][0]["room_uuid"], room.as_str());
    assert_eq!(listed["rooms"][0]["key"], "closer");
    assert!(listed["rooms"][0]["created_at"].as_u64().unwrap() > 1_700_000_000, "{listed}");

    let closed = admin(&relay, "DELETE", &path).await;
    assert_eq!(closed.status, StatusCode::OK, "{}", closed.text());
    assert_eq!(closed.json(), json!({"room_uuid": room, "closed": true}));
    let (code, reason) = close_frame(&mut party).await.unwrap();
    assert_eq!((code, reason.as_str()), (1008, "room closed by the operator"));
    assert_eq!(admin(&relay, "GET", "/v1/admin/rooms").await.json(), json!({"rooms": []}));

    let again = admin(&relay, "DELETE", &path).await;
    assert_eq!((again.status, error_code(&again)), (StatusCode::NOT_FOUND, "room_not_found".into()));
    let bad = admin(&relay, "DELETE", "/v1/admin/rooms/not-a-room").await;
    assert_eq!((bad.status, error_code(&bad)), (StatusCode::BAD_REQUEST, "bad_room_id".into()));
}

/// Every metric name a PromQL expression mentions (`relay_...`).
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("relay_") {
        let start = i + at;
        let boundary = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = expr[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(expr.len(), |n| start + n);
        if boundary {
            out.push(expr[start..end].to_owned());
        }
        i = end;
    }
    out
}

fn collect_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                    ("query", Value::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn grafana_dashboard_queries_only_metrics_the_relay_serves() {
    let path = crate::support::repo_file("contrib/grafana-dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    let queried: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    for required in [
        "relay_connections_open",
        "relay_messages_relayed_total",
        "relay_bytes_relayed_total",
        "relay_rooms_open",
        "relay_auth_failures_total",
        "relay_rate_limited_total",
        "relay_http_request_duration_seconds_bucket",
        "relay_websocket_message_bytes_bucket",
        "relay_room_lifetime_seconds_bucket",
        "relay_mailbox_ask_wait_seconds_bucket",
    ] {
        assert!(queried.contains(required), "the dashboard does not chart {required}");
    }

    // The names /metrics declares (HELP/TYPE), and a histogram's series suffixes.
    let relay = start(&[]).await;
    let scrape = get(&relay, "/metrics").await.text();
    let mut served = BTreeSet::new();
    for line in scrape.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let (name, kind) = rest.split_once(' ').unwrap();
        served.insert(name.to_owned());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                served.insert(format!("{name}{suffix}"));
            }
        }
    }
    let unknown: Vec<&String> = queried.iter().filter(|n| !served.contains(*n)).collect();
    assert!(unknown.is_empty(), "the dashboard queries metrics /metrics does not serve: {unknown:?}");
}
