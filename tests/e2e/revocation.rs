//! Revocation and expiry act on live connections (issue 15, item 4), against the real
//! binary: a key's mailbox WebSockets close with 1008 and a reason that says which,
//! within 5 s; the rooms it created close (their parties get 1008, their room mailboxes
//! end); other keys' sockets keep working.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use hyper::StatusCode;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{RelayProcess, STEP_TIMEOUT, Ws, close_of, http_request, post_json, ws_connect};

/// The admin token the relays here start with.
const TOKEN: &str = "revocation-admin-token-0123456789abcdef";
/// The promise: a revoked or expired key's sockets are closed within this long.
const WITHIN: Duration = Duration::from_secs(5);

async fn start(dir: &Path) -> anyhow::Result<RelayProcess> {
    let dir = dir.to_str().context("utf-8 temp dir")?;
    RelayProcess::start(&["--data-dir", dir, "--secret-auth", TOKEN]).await
}

/// Creates key `name` through `/createkey` (expiring at `expires_at`, 0 never).
async fn create_key(relay: &RelayProcess, name: &str, expires_at: u64) -> anyhow::Result<String> {
    let resp =
        http_request(relay.addr, "GET", &format!("/createkey/{name}/{expires_at}/{TOKEN}"), &[], b"").await?;
    anyhow::ensure!(resp.status == StatusCode::OK, "createkey {name}: {} {}", resp.status, resp.text());
    Ok(resp.json()["key"].as_str().context("key")?.to_owned())
}

async fn open_mailbox(relay: &RelayProcess, key: &str) -> anyhow::Result<Ws> {
    let key = key.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D");
    ws_connect(relay.addr, &format!("/v1/msg-relay?api_key={key}")).await.map_err(|e| anyhow::anyhow!("{e}"))
}

/// A publish of `payload` under ID `tag` (an ask when empty).
fn mailbox_frame(tag: &str, payload: &[u8]) -> Message {
    let mut frame = [0u8; 32].to_vec();
    frame[..tag.len()].copy_from_slice(tag.as_bytes());
    frame.extend_from_slice(&60u16.to_le_bytes());
    frame.extend_from_slice(&0u16.to_le_bytes());
    frame.extend_from_slice(payload);
    Message::binary(frame)
}

/// Publishes and asks on `ws` and checks the message comes back: the socket still works.
async fn still_works(ws: &mut Ws, tag: &str) -> anyhow::Result<()> {
    ws.send(mailbox_frame(tag, b"still here")).await?;
    ws.send(mailbox_frame(tag, b"")).await?;
    tokio::time::timeout(STEP_TIMEOUT, async {
        loop {
            match ws.next().await.context("closed")?? {
                Message::Binary(b) => {
                    anyhow::ensure!(b.get(36..) == Some(&b"still here"[..]), "another payload came back");
                    return Ok(());
                }
                Message::Close(c) => anyhow::bail!("closed: {c:?}"),
                _ => {}
            }
        }
    })
    .await?
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[tokio::test]
async fn revoking_a_key_closes_its_mailbox_sockets_and_rooms_and_spares_other_keys() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = start(dir.path()).await?;
    let doomed = create_key(&relay, "doomed", 0).await?;
    let other = create_key(&relay, "bystander", 0).await?;
    let mut doomed_ws = open_mailbox(&relay, &doomed).await?;
    let mut other_ws = open_mailbox(&relay, &other).await?;
    // A room the doomed key created, two parties joined with its ID alone, and its
    // room mailbox; and a room of the other key, which stays.
    let mut rooms = Vec::new();
    for key in [&doomed, &other] {
        let auth = format!("Bearer {key}");
        let room =
            post_json(relay.addr, "/v1/rooms", &[("authorization", &auth)], &json!({"room_size": 2})).await?;
        anyhow::ensure!(room.status == StatusCode::CREATED, "{}", room.text());
        rooms.push(room.json()["room_uuid"].as_str().context("room_uuid")?.to_owned());
    }
    let mut party = ws_connect(relay.addr, &format!("/v1/rooms/{}", rooms[0])).await?;
    let mut room_mailbox = ws_connect(relay.addr, &format!("/v1/rooms/{}/msg-relay", rooms[0])).await?;
    let mut other_party = ws_connect(relay.addr, &format!("/v1/rooms/{}", rooms[1])).await?;

    let revoked = http_request(relay.addr, "GET", &format!("/revokekey/doomed/{TOKEN}"), &[], b"").await?;
    assert_eq!(revoked.status, StatusCode::OK, "{}", revoked.text());
    let started = tokio::time::Instant::now();
    assert_eq!(close_of(&mut doomed_ws, WITHIN).await?, (1008, "api key revoked".to_owned()));
    assert!(started.elapsed() < WITHIN);
    let (party_code, _) = close_of(&mut party, WITHIN).await?;
    assert_eq!(party_code, 1008, "the revoked key's room is closed by the operator's code");
    let (mailbox_code, mailbox_reason) = close_of(&mut room_mailbox, WITHIN).await?;
    assert_eq!((mailbox_code, mailbox_reason.as_str()), (1001, "room closed"));

    // Everyone else is still served, well past the check interval.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    still_works(&mut other_ws, "bystander-1").await?;
    let auth = format!("Bearer {TOKEN}");
    let live =
        http_request(relay.addr, "GET", "/v1/admin/rooms", &[("authorization", &auth)], b"").await?.json();
    let live: Vec<&str> =
        live["rooms"].as_array().context("rooms")?.iter().filter_map(|r| r["room_uuid"].as_str()).collect();
    assert_eq!(live, [rooms[1].as_str()], "only the other key's room is left");
    other_party.send(Message::text(r#"{"type":"status"}"#)).await?;
    let reply = tokio::time::timeout(STEP_TIMEOUT, async {
        loop {
            if let Message::Text(t) = other_party.next().await.context("closed")??
                && t.contains("\"status\"")
            {
                return anyhow::Ok(());
            }
        }
    })
    .await;
    assert!(matches!(reply, Ok(Ok(()))), "the other room's party is still served: {reply:?}");
    Ok(())
}

#[tokio::test]
async fn an_expiring_key_has_its_mailbox_socket_closed_as_expired() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = start(dir.path()).await?;
    let expires_at = now() + 2;
    let short = create_key(&relay, "short-lived", expires_at).await?;
    let other = create_key(&relay, "long-lived", 0).await?;
    let mut short_ws = open_mailbox(&relay, &short).await?;
    let mut other_ws = open_mailbox(&relay, &other).await?;
    still_works(&mut short_ws, "before-expiry").await?;
    // Expiry is in whole seconds: it passes at most 2 s from now; then within 5 s.
    assert_eq!(
        close_of(&mut short_ws, Duration::from_secs(2) + WITHIN).await?,
        (1008, "api key expired".to_owned())
    );
    assert!(now() >= expires_at);
    still_works(&mut other_ws, "after-expiry").await?;
    Ok(())
}
