//! Browsers against the real binary: CORS preflights and headers on the REST API for
//! `--cors-allowed-origins`, browser WebSocket handshakes from other origins refused
//! before the upgrade (403 `origin_not_allowed`), and credentials offered as WebSocket
//! subprotocols (`relay.api-key.<base64url>`, `relay.resume.<base64url>`) with the relay
//! answering `relay.v1` and never the credential.

use std::net::SocketAddr;

use base64::Engine as _;
use futures_util::StreamExt;
use hyper::StatusCode;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderName;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::support::{RelayProcess, STEP_TIMEOUT, Ws, http_request, post_json};

const APP: &str = "https://app.example";
const DEV: &str = "http://localhost:5173";
const EVIL: &str = "https://evil.example";
/// A preconfigured key: standard base64 with `/` and `=`, which a subprotocol token
/// cannot carry as they are.
const KEY: &str = "ABEiM0RVZneImaq7zN3u/w==";

/// `relay.api-key.` or `relay.resume.` followed by base64url without padding.
fn credential(prefix: &str, secret: &str) -> String {
    format!("{prefix}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret))
}

/// Opens `ws://addr{path}` with extra handshake headers; on success also returns the
/// 101's `Sec-WebSocket-Protocol`. On refusal: the status and the JSON error code.
async fn ws_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(Ws, Option<String>), (StatusCode, String)> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("ws://{addr}{path}").into_client_request().expect("request");
    for (k, v) in headers {
        req.headers_mut().insert(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    let handshake = tokio::time::timeout(STEP_TIMEOUT, tokio_tungstenite::client_async(req, stream));
    match handshake.await.expect("handshake in time") {
        Ok((ws, resp)) => {
            let protocol = resp
                .headers()
                .get("sec-websocket-protocol")
                .map(|v| v.to_str().unwrap_or_default().to_owned());
            Ok((ws, protocol))
        }
        Err(WsError::Http(resp)) => {
            let body: serde_json::Value =
                serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).unwrap_or_default();
            let code = body["error"]["code"].as_str().unwrap_or_default().to_owned();
            Err((resp.status(), code))
        }
        Err(e) => panic!("handshake to {path} failed without an HTTP answer: {e}"),
    }
}

/// The next text frame of `ws`, parsed.
async fn next_json(ws: &mut Ws) -> serde_json::Value {
    loop {
        let msg = tokio::time::timeout(STEP_TIMEOUT, ws.next()).await.expect("frame in time");
        match msg.expect("open").expect("frame") {
            Message::Text(t) => return serde_json::from_str(&t).expect("json"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

async fn create_room(addr: SocketAddr, headers: &[(&str, &str)]) -> String {
    let resp = post_json(addr, "/v1/rooms", headers, &serde_json::json!({"room_size": 2})).await.unwrap();
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text());
    resp.json()["room_uuid"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn preflights_and_responses_carry_cors_headers_for_listed_origins_only() {
    // Comma-separated and repeated forms both add to the list.
    let relay = RelayProcess::start(&[
        "--insecure-api-keys-not-enforced",
        "--cors-allowed-origins",
        &format!("{APP},{DEV}"),
        "--cors-allowed-origins=https://other.example",
    ])
    .await
    .unwrap();
    let addr = relay.addr;
    for origin in [APP, DEV, "https://other.example"] {
        let preflight = http_request(
            addr,
            "OPTIONS",
            "/v1/rooms",
            &[
                ("origin", origin),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "authorization,content-type"),
            ],
            b"",
        )
        .await
        .unwrap();
        assert!(preflight.status.is_success(), "{origin}: {}", preflight.status);
        assert_eq!(preflight.headers["access-control-allow-origin"], origin);
        let allowed =
            preflight.headers["access-control-allow-headers"].to_str().unwrap().to_ascii_lowercase();
        assert!(allowed.contains("authorization") && allowed.contains("content-type"), "{allowed}");
        let methods = preflight.headers["access-control-allow-methods"].to_str().unwrap();
        assert!(methods.contains("POST") || methods == "*", "{methods}");
    }

    let created =
        post_json(addr, "/v1/rooms", &[("origin", APP)], &serde_json::json!({"room_size": 2})).await.unwrap();
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(created.headers["access-control-allow-origin"], APP);
    let exposed = created.headers["access-control-expose-headers"].to_str().unwrap().to_ascii_lowercase();
    assert!(exposed.contains("retry-after"), "{exposed}");

    // An error answer carries them too, so the page can read the JSON error.
    let missing = http_request(addr, "GET", "/v1/nope", &[("origin", APP)], b"").await.unwrap();
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.headers["access-control-allow-origin"], APP);

    let foreign = http_request(
        addr,
        "OPTIONS",
        "/v1/rooms",
        &[("origin", EVIL), ("access-control-request-method", "POST")],
        b"",
    )
    .await
    .unwrap();
    assert!(foreign.headers.get("access-control-allow-origin").is_none());
    let plain = http_request(addr, "GET", "/healthz", &[("origin", EVIL)], b"").await.unwrap();
    assert_eq!(plain.status, StatusCode::OK);
    assert!(plain.headers.get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn the_origin_list_comes_from_the_environment_too() {
    let relay = RelayProcess::start_with_env(
        &["--insecure-api-keys-not-enforced"],
        &[("RELAY_CORS_ALLOWED_ORIGINS", &format!("{APP},{DEV}"))],
    )
    .await
    .unwrap();
    let resp = http_request(relay.addr, "GET", "/healthz", &[("origin", DEV)], b"").await.unwrap();
    assert_eq!(resp.headers["access-control-allow-origin"], DEV);
    let room = create_room(relay.addr, &[]).await;
    let refused = ws_with(relay.addr, &format!("/v1/rooms/{room}"), &[("origin", EVIL)]).await;
    assert_eq!(refused.err(), Some((StatusCode::FORBIDDEN, "origin_not_allowed".to_owned())));
}

#[tokio::test]
async fn bad_origins_on_the_command_line_are_refused_at_start() {
    let out = crate::support::run_binary(&["--cors-allowed-origins", "app.example/path", "--print-config"])
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not an origin"), "{stderr}");
}

#[tokio::test]
async fn websocket_handshakes_from_unlisted_origins_are_refused_before_the_upgrade() {
    let relay = RelayProcess::start(&["--insecure-api-keys-not-enforced", "--cors-allowed-origins", APP])
        .await
        .unwrap();
    let addr = relay.addr;
    let room = create_room(addr, &[]).await;
    for path in [format!("/v1/rooms/{room}"), format!("/v1/rooms/{room}/msg-relay"), "/v1/msg-relay".into()] {
        let refused = ws_with(addr, &path, &[("origin", EVIL)]).await;
        assert_eq!(refused.err(), Some((StatusCode::FORBIDDEN, "origin_not_allowed".to_owned())), "{path}");
        let null = ws_with(addr, &path, &[("origin", "null")]).await;
        assert_eq!(null.err(), Some((StatusCode::FORBIDDEN, "origin_not_allowed".to_owned())), "{path}");
    }
    // A listed origin and a client sending no Origin (not a browser) are let in; the
    // refusals above took no slot.
    let (mut listed, _) = ws_with(addr, &format!("/v1/rooms/{room}"), &[("origin", APP)]).await.unwrap();
    assert_eq!(next_json(&mut listed).await["slot"], 0);
    let (mut native, _) = ws_with(addr, &format!("/v1/rooms/{room}"), &[]).await.unwrap();
    assert_eq!(next_json(&mut native).await["slot"], 1);
    ws_with(addr, "/v1/msg-relay", &[("origin", APP)]).await.unwrap();
}

#[tokio::test]
async fn without_a_list_browser_websockets_from_any_origin_are_accepted() {
    let relay = RelayProcess::start(&["--insecure-api-keys-not-enforced"]).await.unwrap();
    let room = create_room(relay.addr, &[]).await;
    let (mut ws, _) = ws_with(relay.addr, &format!("/v1/rooms/{room}"), &[("origin", EVIL)]).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "welcome");
    let resp = http_request(relay.addr, "GET", "/healthz", &[("origin", EVIL)], b"").await.unwrap();
    assert!(resp.headers.get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn api_keys_offered_as_a_subprotocol_authenticate_and_are_never_echoed() {
    let relay = RelayProcess::start(&["--api-key", &format!("{KEY},browser")]).await.unwrap();
    let addr = relay.addr;
    let offer = format!("relay.v1, {}", credential("relay.api-key.", KEY));
    let (_ws, protocol) =
        ws_with(addr, "/v1/msg-relay", &[("sec-websocket-protocol", &offer)]).await.unwrap();
    assert_eq!(protocol.as_deref(), Some("relay.v1"));

    let unknown = format!("relay.v1, {}", credential("relay.api-key.", "/+7dzLuqmYh3ZlVEMyIRAA=="));
    let refused = ws_with(addr, "/v1/msg-relay", &[("sec-websocket-protocol", &unknown)]).await;
    assert_eq!(refused.err(), Some((StatusCode::UNAUTHORIZED, "unknown_api_key".to_owned())));
    // The raw key, not encoded, is not a credential: as if none was offered.
    let raw = format!("relay.v1, relay.api-key.{KEY}");
    let refused = ws_with(addr, "/v1/msg-relay", &[("sec-websocket-protocol", &raw)]).await;
    assert_eq!(refused.err(), Some((StatusCode::UNAUTHORIZED, "missing_api_key".to_owned())));
    let none = ws_with(addr, "/v1/msg-relay", &[("sec-websocket-protocol", "relay.v1")]).await;
    assert_eq!(none.err(), Some((StatusCode::UNAUTHORIZED, "missing_api_key".to_owned())));
    // Offered without relay.v1, it still authenticates; the relay then names no protocol.
    let bare = credential("relay.api-key.", KEY);
    let resp = http_request(
        addr,
        "GET",
        "/v1/msg-relay",
        &[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-protocol", &bare),
        ],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(resp.status, StatusCode::SWITCHING_PROTOCOLS);
    assert!(resp.headers.get("sec-websocket-protocol").is_none());
}

#[tokio::test]
async fn a_resume_token_offered_as_a_subprotocol_takes_the_slot_back() {
    let relay = RelayProcess::start(&["--api-key", &format!("{KEY},backend")]).await.unwrap();
    let addr = relay.addr;
    let auth = format!("Bearer {KEY}");
    let room = create_room(addr, &[("authorization", &auth)]).await;
    let path = format!("/v1/rooms/{room}");
    let (mut first, protocol) =
        ws_with(addr, &path, &[("sec-websocket-protocol", "relay.v1")]).await.unwrap();
    assert_eq!(protocol.as_deref(), Some("relay.v1"));
    let welcome = next_json(&mut first).await;
    let token = welcome["resume_token"].as_str().unwrap().to_owned();
    drop(first);

    let bad = format!("relay.v1, {}", credential("relay.resume.", "not-the-token"));
    let refused = ws_with(addr, &format!("{path}?last_seq=0"), &[("sec-websocket-protocol", &bad)]).await;
    assert_eq!(refused.err(), Some((StatusCode::FORBIDDEN, "bad_resume_token".to_owned())));

    let offer = format!("relay.v1, {}", credential("relay.resume.", &token));
    let (mut again, protocol) =
        ws_with(addr, &format!("{path}?last_seq=0"), &[("sec-websocket-protocol", &offer)]).await.unwrap();
    assert_eq!(protocol.as_deref(), Some("relay.v1"));
    let welcome = next_json(&mut again).await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["slot"], 0);
    assert_eq!(welcome["resumed"], true);
}

#[tokio::test]
async fn a_party_token_offered_as_a_subprotocol_takes_its_slot() {
    let relay = RelayProcess::start(&["--api-key", &format!("{KEY},backend")]).await.unwrap();
    let addr = relay.addr;
    let auth = format!("Bearer {KEY}");
    let body = serde_json::json!({"room_size": 2, "party_tokens": true});
    let resp = post_json(addr, "/v1/rooms", &[("authorization", &auth)], &body).await.unwrap();
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text());
    let created = resp.json();
    let room = created["room_uuid"].as_str().unwrap().to_owned();
    let tokens: Vec<String> =
        created["party_tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_owned()).collect();
    let path = format!("/v1/rooms/{room}");

    let none = ws_with(addr, &path, &[("sec-websocket-protocol", "relay.v1")]).await;
    assert_eq!(none.err(), Some((StatusCode::FORBIDDEN, "bad_party_token".to_owned())));
    let wrong = format!("relay.v1, {}", credential("relay.party-token.", "not-a-token"));
    let refused = ws_with(addr, &path, &[("sec-websocket-protocol", &wrong)]).await;
    assert_eq!(refused.err(), Some((StatusCode::FORBIDDEN, "bad_party_token".to_owned())));

    let offer = format!("relay.v1, {}", credential("relay.party-token.", &tokens[1]));
    let (mut party, protocol) = ws_with(addr, &path, &[("sec-websocket-protocol", &offer)]).await.unwrap();
    assert_eq!(protocol.as_deref(), Some("relay.v1"), "the token is never echoed");
    let welcome = next_json(&mut party).await;
    assert_eq!((welcome["type"].as_str(), welcome["slot"].as_u64()), (Some("welcome"), Some(1)));
}

#[tokio::test]
async fn a_rate_limited_answer_carries_cors_headers_so_the_page_can_read_retry_after() {
    let relay = RelayProcess::start(&[
        "--insecure-api-keys-not-enforced",
        "--cors-allowed-origins",
        APP,
        "--rate-limit-requests-per-ip",
        "1",
        "--rate-limit-requests-per-ip-burst",
        "1",
    ])
    .await
    .unwrap();
    let mut limited = None;
    for _ in 0..5 {
        let resp = http_request(relay.addr, "GET", "/healthz", &[("origin", APP)], b"").await.unwrap();
        if resp.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(resp);
            break;
        }
    }
    let limited = limited.expect("a 429 within 5 requests at 1 per second");
    assert_eq!(limited.headers["access-control-allow-origin"], APP);
    assert!(limited.headers.contains_key("retry-after"));
    let exposed = limited.headers["access-control-expose-headers"].to_str().unwrap().to_ascii_lowercase();
    assert!(exposed.contains("retry-after"), "{exposed}");
}
