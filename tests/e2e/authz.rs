//! The authorization matrix against the real binary with keys enforced: every route
//! that needs an API key tried without one, with an unknown, a revoked and an expired
//! key (before any upgrade for WebSockets); every admin route with no token, a wrong
//! token and an API key in its place; and tenants that never meet: another tenant's
//! mailbox namespace never sees a message, a room's mailbox is reachable only through
//! the room, and another tenant's group is invisible (404).

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::{
    HttpResponse, RelayProcess, STEP_TIMEOUT, Ws, http_request, refusal_status, ws_connect,
};
use futures_util::{SinkExt, StreamExt};
use hyper::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const TOKEN: &str = "authz-admin-token-7Hq2-0123456789abcdef";
/// Well-formed (base64 of 16 bytes) and known to no relay here.
const UNKNOWN_KEY: &str = "/+7dzLuqmYh3ZlVEMyIRAA==";

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn code(resp: &HttpResponse) -> String {
    resp.json()["error"]["code"].as_str().unwrap_or_default().to_owned()
}

async fn request(addr: SocketAddr, method: &str, path: &str, auth: Option<&str>, body: &str) -> HttpResponse {
    let value;
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = auth {
        value = format!("Bearer {a}");
        headers.push(("authorization", value.as_str()));
    }
    http_request(addr, method, path, &headers, body.as_bytes()).await.unwrap()
}

/// Creates a key through the REST admin API and returns it.
async fn create_key(addr: SocketAddr, name: &str, tenant: &str, expires_at: u64) -> String {
    let body = json!({"name": name, "tenant": tenant, "expires_at": expires_at}).to_string();
    let resp = request(addr, "POST", "/v1/admin/keys", Some(TOKEN), &body).await;
    assert_eq!(resp.status, StatusCode::CREATED, "create {name}: {}", resp.text());
    resp.json()["key"].as_str().unwrap().to_owned()
}

/// The HTTP status and error code a WebSocket handshake to `path` with `key` (as
/// `?api_key=`, percent-encoded) was refused with, or `None` if it was upgraded.
async fn ws_refusal(addr: SocketAddr, path: &str, key: Option<&str>) -> Option<(StatusCode, String)> {
    let path = match key {
        Some(k) => {
            format!("{path}?api_key={}", k.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D"))
        }
        None => path.to_owned(),
    };
    match tokio::time::timeout(STEP_TIMEOUT, ws_connect(addr, &path)).await.expect("handshake in time") {
        Ok(_) => None,
        Err(e) => {
            let status = refusal_status(&e).expect("refused with an HTTP status");
            let body = match &e {
                tokio_tungstenite::tungstenite::Error::Http(resp) => resp.body().clone().unwrap_or_default(),
                _ => Vec::new(),
            };
            let v: Value = serde_json::from_slice(&body).unwrap_or_default();
            Some((status, v["error"]["code"].as_str().unwrap_or_default().to_owned()))
        }
    }
}

fn ask(id: [u8; 32]) -> Message {
    let mut f = id.to_vec();
    f.extend_from_slice(&[30, 0, 0, 0]);
    Message::binary(f)
}

fn publish(id: [u8; 32], payload: &[u8]) -> Message {
    let mut f = id.to_vec();
    f.extend_from_slice(&[30, 0, 0, 0]);
    f.extend_from_slice(payload);
    Message::binary(f)
}

async fn next_binary(ws: &mut Ws, within: Duration) -> Option<Vec<u8>> {
    loop {
        match tokio::time::timeout(within, ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => return Some(b.to_vec()),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            _ => return None,
        }
    }
}

#[tokio::test]
async fn every_keyed_route_refuses_missing_unknown_revoked_and_expired_keys() {
    let relay = RelayProcess::start(&["--secret-auth", TOKEN]).await.unwrap();
    let addr = relay.addr;
    let good = create_key(addr, "good", "acme", 0).await;
    let revoked = create_key(addr, "revoked", "acme", 0).await;
    let expired = create_key(addr, "expired", "acme", now() + 2).await;
    let resp = request(addr, "DELETE", "/v1/admin/keys/revoked", Some(TOKEN), "").await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    // A group and a room the good key owns, so that per-ID routes have a target.
    let resp = request(addr, "POST", "/group", Some(&good), r#"{"ID": "g1", "AppID": "authz"}"#).await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text());
    tokio::time::sleep_until(tokio::time::Instant::now() + Duration::from_secs(3)).await;

    let rest: [(&str, &str, &str); 9] = [
        ("POST", "/v1/rooms", r#"{"room_size": 2}"#),
        ("POST", "/create-room", ""),
        ("POST", "/group", r#"{"AppID": "authz"}"#),
        ("PATCH", "/group", r#"{"ID": "g1", "Name": "x"}"#),
        ("GET", "/groups?app-id=authz", ""),
        ("GET", "/groups/g1", ""),
        ("PATCH", "/groups/g1", r#"{"Name": "x"}"#),
        ("DELETE", "/groups/g1", ""),
        ("GET", "/v1/key", ""),
    ];
    let cases: [(Option<&str>, StatusCode, &str); 4] = [
        (None, StatusCode::UNAUTHORIZED, "missing_api_key"),
        (Some(UNKNOWN_KEY), StatusCode::UNAUTHORIZED, "unknown_api_key"),
        (Some(&revoked), StatusCode::FORBIDDEN, "revoked_api_key"),
        (Some(&expired), StatusCode::FORBIDDEN, "expired_api_key"),
    ];
    let mut tried = 0;
    for (key, status, want) in &cases {
        for (method, path, body) in rest {
            let resp = request(addr, method, path, *key, body).await;
            assert_eq!(
                (resp.status, code(&resp).as_str()),
                (*status, *want),
                "{method} {path}: {}",
                resp.text()
            );
            tried += 1;
        }
        let refused = ws_refusal(addr, "/v1/msg-relay", *key).await;
        assert_eq!(refused, Some((*status, want.to_string())), "/v1/msg-relay");
        tried += 1;
    }
    // The good key passes everywhere, and the group is still there after all of it.
    let resp = request(addr, "GET", "/groups/g1", Some(&good), "").await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(ws_refusal(addr, "/v1/msg-relay", Some(&good)).await, None);
    let resp = request(addr, "POST", "/v1/rooms", Some(&good), r#"{"room_size": 2}"#).await;
    assert_eq!(resp.status, StatusCode::CREATED);
    eprintln!("authz: {tried} refusals of keyed routes checked");
}

#[tokio::test]
async fn every_admin_route_refuses_a_missing_or_wrong_token_and_an_api_key() {
    let relay = RelayProcess::start(&["--secret-auth", TOKEN]).await.unwrap();
    let addr = relay.addr;
    let key = create_key(addr, "tenant-key", "acme", 0).await;
    let before = request(addr, "GET", "/v1/admin/keys", Some(TOKEN), "").await.json();

    let mut tried = 0;
    for wrong in ["wrong-token", key.as_str(), "", TOKEN.get(..TOKEN.len() - 1).unwrap()] {
        for path in [
            format!("/createkey/intruder/0/{wrong}"),
            format!("/rooms/{wrong}"),
            format!("/revokekey/tenant-key/{wrong}"),
        ] {
            let resp = request(addr, "GET", &path, None, "").await;
            assert!(
                matches!(resp.status, StatusCode::UNAUTHORIZED | StatusCode::NOT_FOUND),
                "GET {path}: {} {}",
                resp.status,
                resp.text()
            );
            assert_ne!(resp.status, StatusCode::OK);
            tried += 1;
        }
        let auth = if wrong.is_empty() { None } else { Some(wrong) };
        for (method, path, body) in [
            ("POST", "/v1/admin/keys", r#"{"name": "intruder"}"#),
            ("GET", "/v1/admin/keys", ""),
            ("DELETE", "/v1/admin/keys/tenant-key", ""),
            ("GET", "/v1/admin/rooms", ""),
            ("GET", "/v1/admin/usage", ""),
        ] {
            let resp = request(addr, method, path, auth, body).await;
            assert_eq!(
                (resp.status, code(&resp).as_str()),
                (StatusCode::UNAUTHORIZED, "unauthorized"),
                "{method} {path}: {}",
                resp.text()
            );
            tried += 1;
        }
    }
    // Nothing changed: no key created or revoked, the tenant key still works.
    assert_eq!(request(addr, "GET", "/v1/admin/keys", Some(TOKEN), "").await.json(), before);
    assert_eq!(request(addr, "GET", "/v1/key", Some(&key), "").await.status, StatusCode::OK);
    eprintln!("authz: {tried} admin refusals checked");
}

#[tokio::test]
async fn tenants_never_meet_in_the_mailbox_and_rooms_are_reachable_only_by_their_id() {
    let relay = RelayProcess::start(&["--secret-auth", TOKEN]).await.unwrap();
    let addr = relay.addr;
    let alice = create_key(addr, "alice", "acme", 0).await;
    let carol = create_key(addr, "carol", "acme", 0).await;
    let bob = create_key(addr, "bob", "globex", 0).await;
    let mailbox = |key: String| async move {
        let path = format!(
            "/v1/msg-relay?api_key={}",
            key.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D")
        );
        ws_connect(addr, &path).await.unwrap()
    };

    // Tenant namespaces: bob (globex) asks first, then alice (acme) publishes; only
    // carol (acme) gets it.
    let id = [0x77u8; 32];
    let mut b = mailbox(bob.clone()).await;
    b.send(ask(id)).await.unwrap();
    let mut a = mailbox(alice.clone()).await;
    a.send(publish(id, b"acme only")).await.unwrap();
    let mut c = mailbox(carol).await;
    c.send(ask(id)).await.unwrap();
    assert_eq!(next_binary(&mut c, STEP_TIMEOUT).await.as_deref().map(|f| &f[36..]), Some(&b"acme only"[..]));
    assert_eq!(next_binary(&mut b, Duration::from_millis(500)).await, None, "globex saw acme's message");

    // A room alice created: its mailbox is reached by room ID (no key), and what is
    // published there never shows in a tenant namespace under the same message ID.
    let resp = request(addr, "POST", "/v1/rooms", Some(&alice), r#"{"room_size": 2}"#).await;
    let room = resp.json()["room_uuid"].as_str().unwrap().to_owned();
    let room_id = [0x78u8; 32];
    let mut bob_ns = mailbox(bob.clone()).await;
    let mut alice_ns = mailbox(alice.clone()).await;
    bob_ns.send(ask(room_id)).await.unwrap();
    alice_ns.send(ask(room_id)).await.unwrap();
    let (mut in_room, _) =
        tokio_tungstenite::client_async(format!("ws://{addr}/v1/rooms/{room}/msg-relay"), {
            tokio::net::TcpStream::connect(addr).await.unwrap()
        })
        .await
        .unwrap();
    in_room.send(publish(room_id, b"room only")).await.unwrap();
    let mut asker = ws_connect(addr, &format!("/v1/rooms/{room}/msg-relay")).await.unwrap();
    asker.send(ask(room_id)).await.unwrap();
    assert!(next_binary(&mut asker, STEP_TIMEOUT).await.is_some(), "the room's own mailbox works");
    assert_eq!(next_binary(&mut bob_ns, Duration::from_millis(300)).await, None, "room message in globex");
    assert_eq!(next_binary(&mut alice_ns, Duration::from_millis(300)).await, None, "room message in acme");

    // Groups: bob, of another tenant, does not even see alice's group; alice can delete it.
    let resp = request(addr, "POST", "/group", Some(&alice), r#"{"ID": "owned", "AppID": "authz"}"#).await;
    assert_eq!(resp.status, StatusCode::CREATED);
    for (method, path, body) in [
        ("GET", "/groups/owned", ""),
        ("PATCH", "/groups/owned", r#"{"Name": "taken over"}"#),
        ("DELETE", "/groups/owned", ""),
    ] {
        let resp = request(addr, method, path, Some(&bob), body).await;
        assert_eq!(
            (resp.status, code(&resp).as_str()),
            (StatusCode::NOT_FOUND, "group_not_found"),
            "{method}"
        );
    }
    let resp = request(addr, "DELETE", "/groups/owned", Some(&alice), "").await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
}
