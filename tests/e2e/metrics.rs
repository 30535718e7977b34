//! `/metrics` and `/readyz` over real sockets: the scrape parses as Prometheus text,
//! counters, gauges and histograms move when requests, rooms, messages and mailbox
//! traffic flow, labels never carry raw paths, and readiness turns 503 once shutdown
//! begins while connections already open are still served.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use crate::support::{
    Http1Conn, STEP_TIMEOUT, ServerConfig, Ws, http_request, open_config, post_json, serve_in_process,
    ws_connect,
};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// A parsed scrape: series (`name{labels}` as written) to value, and each name's type.
#[derive(Debug)]
struct Scrape {
    samples: BTreeMap<String, f64>,
    types: HashMap<String, String>,
    text: String,
}

impl Scrape {
    /// The value of one series, e.g. `relay_websockets_open{kind="room"}`; panics if absent.
    fn get(&self, series: &str) -> f64 {
        *self.samples.get(series).unwrap_or_else(|| panic!("no series {series} in:\n{}", self.text))
    }

    /// The value of a series, 0 when absent (counters only listed once non-zero).
    fn get_or_zero(&self, series: &str) -> f64 {
        self.samples.get(series).copied().unwrap_or(0.0)
    }
}

/// Parses the Prometheus text exposition format strictly: `# HELP`/`# TYPE` comments,
/// then `name{label="value",...} value` lines; every sample's metric has a TYPE line
/// before it (a histogram's `_bucket`, `_sum` and `_count` samples, its own), and no
/// series appears twice.
fn parse(text: &str) -> Scrape {
    let mut samples = BTreeMap::new();
    let mut types = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("bad TYPE line {line:?}"));
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "unexpected metric type {kind:?} in {line:?}"
            );
            assert!(types.insert(name.to_owned(), kind.to_owned()).is_none(), "TYPE twice for {name}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            assert!(rest.split_once(' ').is_some_and(|(_, h)| !h.is_empty()), "empty HELP: {line:?}");
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "unexpected line {line:?}");
        let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("no value in {line:?}"));
        let name = &line[..name_end];
        assert!(
            name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name {name:?}"
        );
        let mut rest = &line[name_end..];
        if let Some(labels) = rest.strip_prefix('{') {
            rest = parse_labels(labels, line);
        }
        let value = rest.strip_prefix(' ').unwrap_or_else(|| panic!("no space before value in {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let histogram = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|base| types.get(*base).is_some_and(|t| t == "histogram"));
        assert!(histogram.is_some() || types.contains_key(name), "sample before its TYPE line: {line:?}");
        let series = line[..line.len() - rest.len()].to_owned();
        assert!(samples.insert(series, value).is_none(), "series twice: {line:?}");
    }
    Scrape { samples, types, text: text.to_owned() }
}

/// Checks `label="value",...}` and returns what follows the closing brace.
fn parse_labels<'a>(mut s: &'a str, line: &str) -> &'a str {
    loop {
        let eq = s.find('=').unwrap_or_else(|| panic!("label without '=' in {line:?}"));
        let label = &s[..eq];
        assert!(
            !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad label name {label:?} in {line:?}"
        );
        s = s[eq + 1..].strip_prefix('"').unwrap_or_else(|| panic!("unquoted label value in {line:?}"));
        let mut chars = s.char_indices();
        let close = loop {
            match chars.next() {
                Some((_, '\\')) => {
                    let escaped = chars.next().map(|(_, c)| c);
                    assert!(matches!(escaped, Some('\\' | '"' | 'n')), "bad escape in {line:?}");
                }
                Some((i, '"')) => break i,
                Some(_) => {}
                None => panic!("unterminated label value in {line:?}"),
            }
        };
        s = &s[close + 1..];
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else {
            return s.strip_prefix('}').unwrap_or_else(|| panic!("labels not closed in {line:?}"));
        }
    }
}

async fn scrape(addr: SocketAddr) -> Scrape {
    let resp = http_request(addr, "GET", "/metrics", &[], b"").await.expect("scrape failed");
    assert_eq!(resp.status, 200);
    let content_type = resp.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "content type {content_type:?}");
    parse(&resp.text())
}

/// Scrapes until `ready` holds, at most STEP_TIMEOUT: counters are bumped by the
/// server's own tasks, which may run just after the client saw the traffic.
async fn scrape_until(addr: SocketAddr, what: &str, ready: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    loop {
        let s = scrape(addr).await;
        if ready(&s) {
            return s;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: never true; last scrape:\n{}", s.text);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next binary frame, skipping text events and pings.
async fn next_binary(ws: &mut Ws) -> Vec<u8> {
    tokio::time::timeout(STEP_TIMEOUT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => return b.to_vec(),
                Some(Ok(_)) => continue,
                other => panic!("socket ended before a binary frame: {other:?}"),
            }
        }
    })
    .await
    .expect("no binary frame in time")
}

/// The next text frame as JSON.
async fn next_json(ws: &mut Ws) -> serde_json::Value {
    tokio::time::timeout(STEP_TIMEOUT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).expect("text frame is JSON"),
                Some(Ok(_)) => continue,
                other => panic!("socket ended before a text frame: {other:?}"),
            }
        }
    })
    .await
    .expect("no text frame in time")
}

/// A mailbox frame laid out by hand: 32-byte ID, TTL u16 LE, flags u16 LE, payload.
fn mailbox_frame(tag: u8, ttl_secs: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![tag; 32];
    f.extend_from_slice(&ttl_secs.to_le_bytes());
    f.extend_from_slice(&0u16.to_le_bytes());
    f.extend_from_slice(payload);
    f
}

async fn send(ws: &mut Ws, frame: Vec<u8>) {
    tokio::time::timeout(STEP_TIMEOUT, ws.send(Message::Binary(frame.into())))
        .await
        .expect("send timed out")
        .expect("send failed");
}

#[tokio::test]
async fn scrape_parses_and_starts_at_zero() {
    let (addr, state) = serve_in_process(open_config()).await.unwrap();
    let s = scrape(addr).await;
    for series in [
        "relay_rooms_open",
        "relay_rooms_created_total",
        "relay_websockets_open{kind=\"room\"}",
        "relay_websockets_open{kind=\"mailbox\"}",
        "relay_messages_relayed_total{kind=\"room\"}",
        "relay_bytes_relayed_total{kind=\"mailbox\"}",
        "relay_mailbox_entries",
        "relay_mailbox_bytes",
        "relay_mailbox_pending_asks",
        "relay_mailbox_namespaces",
        "relay_connections_refused_total",
        "relay_auth_failures_total{reason=\"missing_api_key\"}",
    ] {
        assert_eq!(s.get(series), 0.0, "{series}");
    }
    assert!(s.get("relay_connections_open") >= 1.0, "the scrape's own connection is open");
    assert!(s.get("relay_connections_total") >= 1.0);
    for (name, kind) in [
        ("relay_connections_open", "gauge"),
        ("relay_connections_total", "counter"),
        ("relay_http_requests_total", "counter"),
        ("relay_rate_limited_total", "counter"),
        ("relay_rooms_open", "gauge"),
    ] {
        assert_eq!(s.types.get(name).map(String::as_str), Some(kind), "{name}");
    }
    let second = scrape(addr).await;
    assert_eq!(second.get("relay_http_requests_total{route=\"/metrics\",status=\"200\"}"), 1.0);
    state.begin_shutdown();
}

#[tokio::test]
async fn room_traffic_moves_room_counters_and_gauges() {
    let (addr, state) = serve_in_process(open_config()).await.unwrap();
    let resp = post_json(addr, "/v1/rooms", &[], &serde_json::json!({"room_size": 2})).await.unwrap();
    assert_eq!(resp.status, 201, "{}", resp.text());
    let room = resp.json()["room_uuid"].as_str().unwrap().to_owned();

    let s = scrape(addr).await;
    assert_eq!(s.get("relay_rooms_open"), 1.0);
    assert_eq!(s.get("relay_rooms_created_total"), 1.0);
    assert_eq!(s.get("relay_http_requests_total{route=\"/v1/rooms\",status=\"201\"}"), 1.0);

    let mut a = ws_connect(addr, &format!("/v1/rooms/{room}?slot=0")).await.unwrap();
    let mut b = ws_connect(addr, &format!("/v1/rooms/{room}?slot=1")).await.unwrap();
    assert_eq!(next_json(&mut a).await["type"], "welcome");
    assert_eq!(next_json(&mut b).await["type"], "welcome");
    let s = scrape(addr).await;
    assert_eq!(s.get("relay_websockets_open{kind=\"room\"}"), 2.0);
    assert_eq!(s.get("relay_http_requests_total{route=\"/v1/rooms/{room_id}\",status=\"101\"}"), 2.0);
    assert!(!s.text.contains(&room), "a room ID leaked into a label:\n{}", s.text);

    // Three messages a -> b: 5, 7 and 0 payload bytes (the 2-byte destination excluded).
    for payload in [&b"hello"[..], b"goodbye", b""] {
        let mut frame = 1u16.to_le_bytes().to_vec();
        frame.extend_from_slice(payload);
        send(&mut a, frame).await;
        let got = next_binary(&mut b).await;
        assert_eq!(&got[12..], payload, "relay frame = 12-byte header + payload");
    }
    let s = scrape_until(addr, "three room messages counted", |s| {
        s.get("relay_messages_relayed_total{kind=\"room\"}") == 3.0
    })
    .await;
    assert_eq!(s.get("relay_bytes_relayed_total{kind=\"room\"}"), 12.0);
    assert_eq!(s.get("relay_messages_relayed_total{kind=\"mailbox\"}"), 0.0);

    // A refused frame (shorter than the destination) is not a relayed message.
    send(&mut a, vec![1]).await;
    let refusal = loop {
        let event = next_json(&mut a).await;
        if event["type"] == "error" {
            break event;
        }
    };
    assert_eq!(refusal["code"], "malformed_frame");
    assert_eq!(scrape(addr).await.get("relay_messages_relayed_total{kind=\"room\"}"), 3.0);

    drop(a);
    drop(b);
    scrape_until(addr, "room sockets closed", |s| s.get("relay_websockets_open{kind=\"room\"}") == 0.0).await;
    state.begin_shutdown();
}

#[tokio::test]
async fn mailbox_traffic_moves_mailbox_counters_and_gauges() {
    let (addr, state) = serve_in_process(open_config()).await.unwrap();
    let mut asker = ws_connect(addr, "/v1/msg-relay").await.unwrap();
    let mut publisher = ws_connect(addr, "/v1/msg-relay").await.unwrap();

    send(&mut asker, mailbox_frame(7, 60, b"")).await;
    let s = scrape_until(addr, "the ask is pending", |s| s.get("relay_mailbox_pending_asks") == 1.0).await;
    assert_eq!(s.get("relay_websockets_open{kind=\"mailbox\"}"), 2.0);
    assert_eq!(s.get("relay_mailbox_namespaces"), 1.0);
    assert_eq!(s.get("relay_messages_relayed_total{kind=\"mailbox\"}"), 0.0, "an ask is not a message");

    let published = mailbox_frame(7, 60, b"payload");
    send(&mut publisher, published.clone()).await;
    assert_eq!(next_binary(&mut asker).await, published);
    let s = scrape_until(addr, "the publish is counted", |s| {
        s.get("relay_messages_relayed_total{kind=\"mailbox\"}") == 1.0
    })
    .await;
    assert_eq!(s.get("relay_bytes_relayed_total{kind=\"mailbox\"}"), 7.0);
    assert_eq!(s.get("relay_mailbox_pending_asks"), 0.0);
    assert_eq!(s.get("relay_mailbox_entries"), 1.0, "kept for its TTL");
    assert_eq!(s.get("relay_mailbox_bytes"), 43.0, "36-byte header + 7");

    drop(asker);
    drop(publisher);
    scrape_until(addr, "mailbox sockets closed", |s| s.get("relay_websockets_open{kind=\"mailbox\"}") == 0.0)
        .await;
    state.begin_shutdown();
}

/// With busy polling on (`--busy-poll-us`), mailbox and room traffic are relayed as usual and the
/// time the workers spent spinning shows up at `/metrics`; with it off, the series is
/// absent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_polling_relays_mailbox_and_room_traffic_and_reports_its_spinning() {
    let off = serve_in_process(open_config()).await.unwrap();
    assert!(!scrape(off.0).await.text.contains("relay_busy_poll"), "busy polling is off by default");
    off.1.begin_shutdown();

    let config = ServerConfig { busy_poll: Duration::from_micros(500), ..open_config() };
    let (addr, state) = serve_in_process(config).await.unwrap();
    let s = scrape(addr).await;
    assert_eq!(s.get("relay_busy_poll_seconds_total"), 0.0, "nothing spun before any frame");
    assert_eq!(s.types.get("relay_busy_poll_backoffs_total").map(String::as_str), Some("counter"));

    let mut asker = ws_connect(addr, "/v1/msg-relay").await.unwrap();
    let mut publisher = ws_connect(addr, "/v1/msg-relay").await.unwrap();
    for tag in 1..=20u8 {
        send(&mut asker, mailbox_frame(tag, 60, b"")).await;
        let published = mailbox_frame(tag, 60, b"payload");
        send(&mut publisher, published.clone()).await;
        assert_eq!(next_binary(&mut asker).await, published);
    }
    // A spell is counted when it ends, one window after the last frame (or at a backoff).
    scrape_until(addr, "spinning is reported", |s| s.get("relay_busy_poll_seconds_total") > 0.0).await;
    state.begin_shutdown();

    // Room connections start spells too (on a server of their own, so the mailbox's
    // spinning above does not count).
    let config = ServerConfig { busy_poll: Duration::from_micros(500), ..open_config() };
    let (addr, state) = serve_in_process(config).await.unwrap();
    let resp = post_json(addr, "/v1/rooms", &[], &serde_json::json!({"room_size": 2})).await.unwrap();
    let room = resp.json()["room_uuid"].as_str().unwrap().to_owned();
    let mut a = ws_connect(addr, &format!("/v1/rooms/{room}?slot=0")).await.unwrap();
    let mut b = ws_connect(addr, &format!("/v1/rooms/{room}?slot=1")).await.unwrap();
    assert_eq!(next_json(&mut a).await["type"], "welcome");
    assert_eq!(next_json(&mut b).await["type"], "welcome");
    let mut frame = 1u16.to_le_bytes().to_vec();
    frame.extend_from_slice(b"hello");
    send(&mut a, frame).await;
    next_binary(&mut b).await;
    scrape_until(addr, "room spinning is reported", |s| s.get("relay_busy_poll_seconds_total") > 0.0).await;
    state.begin_shutdown();
}

#[tokio::test]
async fn auth_failures_and_refusals_are_counted_under_templates_not_paths() {
    // Keys enforced: a request without one is refused with 401 missing_api_key.
    let (addr, state) = serve_in_process(ServerConfig::default()).await.unwrap();
    let resp = post_json(addr, "/v1/rooms", &[], &serde_json::json!({"room_size": 2})).await.unwrap();
    assert_eq!((resp.status.as_u16(), resp.json()["error"]["code"].clone()), (401, "missing_api_key".into()));
    // Without a key store the admin API answers 503; its path carries the token.
    let secret_path = "/createkey/alice/0/s3cr3t-admin-token";
    assert_eq!(http_request(addr, "GET", secret_path, &[], b"").await.unwrap().status, 503);
    assert_eq!(http_request(addr, "GET", "/no/such/route", &[], b"").await.unwrap().status, 404);
    let room_path = "/v1/rooms/1a2b3c4d-9f0e-4c1b-8a7d-2e5f6a7b8c9d";
    let not_upgraded = http_request(addr, "GET", room_path, &[], b"").await.unwrap();
    assert_eq!(not_upgraded.status, 426, "{}", not_upgraded.text());

    let s = scrape(addr).await;
    assert_eq!(s.get("relay_auth_failures_total{reason=\"missing_api_key\"}"), 1.0);
    assert_eq!(s.get("relay_http_requests_total{route=\"/v1/rooms\",status=\"401\"}"), 1.0);
    assert_eq!(s.get("relay_http_requests_total{route=\"unmatched\",status=\"404\"}"), 1.0);
    let sodot = "relay_http_requests_total{route=\"/createkey/{name}/{expiry_unix}/{token}\",status=\"503\"}";
    assert_eq!(s.get(sodot), 1.0);
    assert_eq!(s.get("relay_http_requests_total{route=\"/v1/rooms/{room_id}\",status=\"426\"}"), 1.0);
    assert_eq!(s.get_or_zero("relay_rooms_created_total"), 0.0);
    // The template names the token's place, never the token, the key name or the room.
    for leaked in ["s3cr3t", "alice", "1a2b3c4d"] {
        assert!(!s.text.contains(leaked), "{leaked} leaked into the scrape:\n{}", s.text);
    }
    state.begin_shutdown();
}

#[tokio::test]
async fn connections_over_the_cap_are_counted_as_refused() {
    let (addr, state) = serve_in_process(ServerConfig { max_connections: 1, ..open_config() }).await.unwrap();
    let mut held = Http1Conn::connect(addr).await.unwrap();
    assert_eq!(held.get("/healthz").await.unwrap().status, 200);
    // The cap is full: this one is accepted and closed at once, without a response.
    assert!(http_request(addr, "GET", "/healthz", &[], b"").await.is_err());
    let s = held.get("/metrics").await.unwrap();
    let s = parse(&s.text());
    assert_eq!(s.get("relay_connections_refused_total"), 1.0);
    assert_eq!(s.get("relay_connections_total"), 1.0);
    assert_eq!(s.get("relay_connections_open"), 1.0);
    state.begin_shutdown();
}

#[tokio::test]
async fn readyz_turns_503_draining_once_shutdown_begins_while_healthz_stays_200() {
    let config = ServerConfig { shutdown_grace: Duration::from_secs(30), ..open_config() };
    let (addr, state) = serve_in_process(config).await.unwrap();
    let mut probe = Http1Conn::connect(addr).await.unwrap();
    let ready = probe.get("/readyz").await.unwrap();
    assert_eq!((ready.status.as_u16(), ready.json()), (200, serde_json::json!({"status": "ready"})));

    // A room socket that does not answer the close keeps the server draining.
    let resp = post_json(addr, "/v1/rooms", &[], &serde_json::json!({"room_size": 2})).await.unwrap();
    let room = resp.json()["room_uuid"].as_str().unwrap().to_owned();
    let mut party = ws_connect(addr, &format!("/v1/rooms/{room}?slot=0")).await.unwrap();
    assert_eq!(next_json(&mut party).await["type"], "welcome");

    state.begin_shutdown();
    assert!(state.is_shutting_down());
    let draining = probe.get("/readyz").await.unwrap();
    assert_eq!((draining.status.as_u16(), draining.json()), (503, serde_json::json!({"status": "draining"})));
    let health = probe.get("/healthz").await.unwrap();
    assert_eq!((health.status.as_u16(), health.json()), (200, serde_json::json!({"status": "ok"})));

    // The room socket was told to go (1001); once it has, the drain ends.
    let closing = next_json(&mut party).await;
    assert_eq!((closing["type"].clone(), closing["code"].clone()), ("closing".into(), 1001.into()));
    drop(party);
    let closed = tokio::time::timeout(STEP_TIMEOUT, state.websockets_closed()).await;
    assert!(closed.is_ok(), "the drain did not end after the last socket closed");
}

#[tokio::test]
async fn per_key_usage_comes_from_the_installed_source_at_each_scrape() {
    let (addr, state) = serve_in_process(open_config()).await.unwrap();
    let before = scrape(addr).await;
    assert!(!before.types.contains_key("relay_key_messages_total"), "no key store, no per-key series");

    let usage = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(3));
    let counted = usage.clone();
    let installed = state.set_key_usage_source(move || {
        vec![relay_transport::KeyUsage {
            name: "alice".to_owned(),
            messages: counted.load(std::sync::atomic::Ordering::Relaxed),
            bytes: 120,
            rooms: 1,
        }]
    });
    assert!(installed);
    assert!(!state.set_key_usage_source(Vec::new), "only the first source is kept");

    let s = scrape(addr).await;
    assert_eq!(s.get("relay_key_messages_total{key=\"alice\"}"), 3.0);
    assert_eq!(s.get("relay_key_bytes_total{key=\"alice\"}"), 120.0);
    assert_eq!(s.get("relay_key_rooms_created_total{key=\"alice\"}"), 1.0);
    usage.store(5, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(scrape(addr).await.get("relay_key_messages_total{key=\"alice\"}"), 5.0, "read at scrape time");
    state.begin_shutdown();
}

#[tokio::test]
async fn histograms_time_requests_rooms_and_ask_waits_and_size_messages() {
    let (addr, state) = serve_in_process(open_config()).await.unwrap();
    let s = scrape(addr).await;
    for name in [
        "relay_http_request_duration_seconds",
        "relay_websocket_message_bytes",
        "relay_room_lifetime_seconds",
        "relay_mailbox_ask_wait_seconds",
    ] {
        assert_eq!(s.types.get(name).map(String::as_str), Some("histogram"), "{name}");
    }
    assert_eq!(s.get("relay_room_lifetime_seconds_count"), 0.0);
    assert_eq!(s.get("relay_websocket_message_bytes_count{kind=\"room\"}"), 0.0);

    // A room: created, joined by both parties, one 5-byte message, then both leave.
    let resp = post_json(addr, "/v1/rooms", &[], &serde_json::json!({"room_size": 2})).await.unwrap();
    assert_eq!(resp.status, 201, "{}", resp.text());
    let room = resp.json()["room_uuid"].as_str().unwrap().to_owned();
    let mut a = ws_connect(addr, &format!("/v1/rooms/{room}?slot=0")).await.unwrap();
    let mut b = ws_connect(addr, &format!("/v1/rooms/{room}?slot=1")).await.unwrap();
    assert_eq!(next_json(&mut a).await["type"], "welcome");
    assert_eq!(next_json(&mut b).await["type"], "welcome");
    let mut frame = 1u16.to_le_bytes().to_vec();
    frame.extend_from_slice(b"hello");
    send(&mut a, frame).await;
    next_binary(&mut b).await;
    for party in [&mut a, &mut b] {
        let leave = Message::text(r#"{"type":"leave"}"#);
        tokio::time::timeout(STEP_TIMEOUT, party.send(leave)).await.unwrap().unwrap();
    }
    let s = scrape_until(addr, "the room's lifetime is observed", |s| {
        s.get("relay_room_lifetime_seconds_count") == 1.0
    })
    .await;
    assert_eq!(s.get("relay_rooms_open"), 0.0);
    assert_eq!(s.get("relay_room_lifetime_seconds_bucket{le=\"+Inf\"}"), 1.0);
    assert_eq!(s.get("relay_websocket_message_bytes_count{kind=\"room\"}"), 1.0);
    assert_eq!(s.get("relay_websocket_message_bytes_sum{kind=\"room\"}"), 5.0);
    assert_eq!(s.get("relay_websocket_message_bytes_bucket{kind=\"room\",le=\"16\"}"), 1.0);
    let created = "{route=\"/v1/rooms\",method=\"POST\",status=\"201\"}";
    assert_eq!(s.get(&format!("relay_http_request_duration_seconds_count{created}")), 1.0);
    assert!(s.get(&format!("relay_http_request_duration_seconds_sum{created}")) > 0.0);
    let joined = "{route=\"/v1/rooms/{room_id}\",method=\"GET\",status=\"101\"}";
    assert_eq!(s.get(&format!("relay_http_request_duration_seconds_count{joined}")), 2.0);
    let joined_inf = "{route=\"/v1/rooms/{room_id}\",method=\"GET\",status=\"101\",le=\"+Inf\"}";
    assert_eq!(s.get(&format!("relay_http_request_duration_seconds_bucket{joined_inf}")), 2.0);
    assert!(!s.text.contains(&room), "a room ID leaked into a label:\n{}", s.text);

    // A mailbox ask that waits at least 50 ms for its message, then one answered at once.
    let mut asker = ws_connect(addr, "/v1/msg-relay").await.unwrap();
    let mut publisher = ws_connect(addr, "/v1/msg-relay").await.unwrap();
    send(&mut asker, mailbox_frame(9, 60, b"")).await;
    scrape_until(addr, "the ask is pending", |s| s.get("relay_mailbox_pending_asks") == 1.0).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let published = mailbox_frame(9, 60, b"payload");
    send(&mut publisher, published.clone()).await;
    assert_eq!(next_binary(&mut asker).await, published);
    send(&mut asker, mailbox_frame(9, 60, b"")).await;
    assert_eq!(next_binary(&mut asker).await, published);
    let s = scrape_until(addr, "both asks are observed", |s| {
        s.get("relay_mailbox_ask_wait_seconds_count") == 2.0
    })
    .await;
    assert_eq!(
        s.get("relay_mailbox_ask_wait_seconds_bucket{le=\"0.001\"}"),
        1.0,
        "the stored answer waited 0"
    );
    assert_eq!(s.get("relay_mailbox_ask_wait_seconds_bucket{le=\"0.025\"}"), 1.0, "the other waited 50 ms");
    assert!(s.get("relay_mailbox_ask_wait_seconds_sum") >= 0.05);
    assert_eq!(s.get("relay_mailbox_asks_expired_total"), 0.0);
    assert_eq!(s.get("relay_websocket_message_bytes_sum{kind=\"mailbox\"}"), 7.0);
    assert_eq!(s.get("relay_websocket_message_bytes_bucket{kind=\"mailbox\",le=\"16\"}"), 1.0);
    state.begin_shutdown();
}
