//! Hostile tenants against the real binary (issue 15, items 2, 3, 4 and 8): a tenant
//! that fills the relay's memory, one that creates rooms without end, rooms nobody
//! joins, an operator closing a room, a key that expires with rooms open, and a room
//! party that stops reading while others flood it. Each test asserts what the attacker
//! sees and that everyone else keeps being served. docs/RELIABILITY.md ("Hostile
//! clients and tenants") lists them.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use futures_util::{SinkExt, StreamExt};
use hyper::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{
    RelayProcess, STEP_TIMEOUT, Ws, close_of, http_request, post_json, refusal_status, ws_connect,
};

/// The admin token of the relays here that enforce keys.
const TOKEN: &str = "tenants-admin-token-0123456789abcdef0123";

/// Starts a relay with keys enforced (data in `dir`) and `extra` flags.
async fn start_keyed(dir: &Path, extra: &[&str]) -> anyhow::Result<RelayProcess> {
    let dir = dir.to_str().context("utf-8 temp dir")?;
    let mut args = vec!["--data-dir", dir, "--secret-auth", TOKEN];
    args.extend_from_slice(extra);
    RelayProcess::start(&args).await
}

/// Creates key `name` (expiring at `expires_at` unix seconds, 0 never); returns it.
async fn create_key(addr: SocketAddr, name: &str, expires_at: u64) -> anyhow::Result<String> {
    let path = format!("/createkey/{name}/{expires_at}/{TOKEN}");
    let resp = http_request(addr, "GET", &path, &[], b"").await?;
    ensure!(resp.status == StatusCode::OK, "createkey {name}: {} {}", resp.status, resp.text());
    Ok(resp.json()["key"].as_str().context("key")?.to_owned())
}

/// `POST /v1/rooms` for a room of `size` with `key` (none when keys are not enforced):
/// the status and the body.
async fn try_create_room(
    addr: SocketAddr,
    key: Option<&str>,
    size: u16,
) -> anyhow::Result<(StatusCode, Value)> {
    let auth = key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    let resp = post_json(addr, "/v1/rooms", &headers, &json!({"room_size": size})).await?;
    let body = if resp.body.is_empty() { Value::Null } else { resp.json() };
    Ok((resp.status, body))
}

async fn create_room(addr: SocketAddr, key: Option<&str>, size: u16) -> anyhow::Result<String> {
    let (status, body) = try_create_room(addr, key, size).await?;
    ensure!(status == StatusCode::CREATED, "room not created: {status} {body}");
    Ok(body["room_uuid"].as_str().context("room_uuid")?.to_owned())
}

/// Joins `room` (at `query`, e.g. `?slot=1`) and reads its welcome.
async fn join(addr: SocketAddr, room: &str, query: &str) -> anyhow::Result<(Ws, Value)> {
    let ws = ws_connect(addr, &format!("/v1/rooms/{room}{query}")).await?;
    welcome(ws).await
}

/// Joins `room` at `query` over a socket whose receive buffer is fixed at 64 KiB (no
/// autotuning), so that a party that stops reading blocks the relay's writes after a
/// bounded amount whatever the host's TCP settings.
async fn join_small_buffer(addr: SocketAddr, room: &str, query: &str) -> anyhow::Result<(Ws, Value)> {
    welcome(connect_small_buffer(addr, &format!("/v1/rooms/{room}{query}")).await?).await
}

/// A WebSocket to `path` whose socket's receive buffer is fixed at 64 KiB.
async fn connect_small_buffer(addr: SocketAddr, path: &str) -> anyhow::Result<Ws> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(64 << 10)?;
    let stream = socket.connect(addr).await?;
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}{path}"), stream).await?;
    Ok(ws)
}

/// Reads the welcome, the first frame of a room connection.
async fn welcome(mut ws: Ws) -> anyhow::Result<(Ws, Value)> {
    let welcome = next_json(&mut ws).await?;
    ensure!(welcome["type"] == "welcome", "first frame: {welcome}");
    Ok((ws, welcome))
}

/// The next text frame, as JSON (binary frames are skipped).
async fn next_json(ws: &mut Ws) -> anyhow::Result<Value> {
    tokio::time::timeout(STEP_TIMEOUT, async {
        loop {
            match ws.next().await.context("socket ended")?? {
                Message::Text(t) => return Ok(serde_json::from_str(&t)?),
                Message::Close(c) => bail!("closed: {c:?}"),
                _ => {}
            }
        }
    })
    .await
    .context("no text frame in time")?
}

/// The next control event of type `kind`, skipping others.
async fn event(ws: &mut Ws, kind: &str) -> anyhow::Result<Value> {
    loop {
        let v = next_json(ws).await?;
        if v["type"] == kind {
            return Ok(v);
        }
    }
}

/// The next data frame: (seq, payload).
async fn next_data(ws: &mut Ws) -> anyhow::Result<(u64, Vec<u8>)> {
    tokio::time::timeout(STEP_TIMEOUT, async {
        loop {
            match ws.next().await.context("socket ended")?? {
                Message::Binary(b) => {
                    ensure!(b.len() >= 12, "short data frame");
                    let seq = u64::from_le_bytes(b[..8].try_into()?);
                    return Ok((seq, b[12..].to_vec()));
                }
                Message::Close(c) => bail!("closed: {c:?}"),
                _ => {}
            }
        }
    })
    .await
    .context("no data frame in time")?
}

/// A room data frame to `to` carrying `payload`.
fn data_frame(to: u16, payload: &[u8]) -> Message {
    let mut frame = to.to_le_bytes().to_vec();
    frame.extend_from_slice(payload);
    Message::binary(frame)
}

/// A mailbox frame for ID `id`: a PUB of `payload` (TTL 60 s), or an ASK when empty.
fn mailbox_frame(id: u32, payload: &[u8]) -> Message {
    let mut frame = [0x7eu8; 32].to_vec();
    frame[..4].copy_from_slice(&id.to_le_bytes());
    frame.extend_from_slice(&60u16.to_le_bytes());
    frame.extend_from_slice(&0u16.to_le_bytes());
    frame.extend_from_slice(payload);
    Message::binary(frame)
}

/// Asks a party's room for its status and waits for the answer: the party is served.
async fn still_served(ws: &mut Ws) -> anyhow::Result<()> {
    ws.send(Message::text(r#"{"type":"status"}"#)).await?;
    event(ws, "status").await.map(|_| ())
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A metric's value from `/metrics`.
async fn metric(addr: SocketAddr, name: &str) -> anyhow::Result<u64> {
    let text = http_request(addr, "GET", "/metrics", &[], b"").await?.text();
    let line =
        text.lines().find(|l| l.split(' ').next() == Some(name)).with_context(|| format!("no {name}"))?;
    Ok(line.rsplit(' ').next().context("value")?.parse()?)
}

/// With a 1 MiB `--max-held-bytes`, a publisher that stores 60 KiB messages until the
/// budget is full gets close 1013 `relay memory budget full`; then a room send gets the
/// `held_bytes_full` error event and room creation 503 `held_bytes_full`. What was held
/// before (a stored message of another client, a room message) is still delivered, and
/// once the hog's messages are taken the relay takes new ones again.
#[tokio::test]
async fn a_full_held_bytes_budget_refuses_new_messages_and_keeps_what_is_held() -> anyhow::Result<()> {
    let budget: u64 = 1 << 20;
    let relay = RelayProcess::start(&[
        "--insecure-api-keys-not-enforced",
        "--max-held-bytes",
        &budget.to_string(),
        "--max-message-bytes",
        "65536",
    ])
    .await?;
    let addr = relay.addr;
    // Held before the hog comes: a room message for b, and a stored mailbox message.
    let room = create_room(addr, None, 2).await?;
    let (mut a, _) = join(addr, &room, "?slot=0").await?;
    a.send(data_frame(1, b"held before the hog")).await?;
    let mut victim = ws_connect(addr, "/v1/msg-relay").await?;
    victim.send(mailbox_frame(1, b"stored before the hog")).await?;

    // The hog stores 60 KiB messages until it is refused.
    let mut hog = ws_connect(addr, "/v1/msg-relay").await?;
    let chunk = vec![0x55u8; 60 << 10];
    let mut sent = 0u32;
    let refusal = loop {
        ensure!(sent < 40, "40 x 60 KiB stored under a 1 MiB budget");
        if hog.send(mailbox_frame(100 + sent, &chunk)).await.is_err() {
            break close_of(&mut hog, STEP_TIMEOUT).await?;
        }
        sent += 1;
        if let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(50), hog.next()).await {
            match msg? {
                Message::Close(Some(c)) => break (u16::from(c.code), c.reason.to_string()),
                other => bail!("the hog got {other:?}"),
            }
        }
    };
    assert_eq!(refusal, (1013, "relay memory budget full".to_owned()), "after {sent} publishes");
    assert!((14..=17).contains(&sent), "{sent} x 60 KiB accepted under a 1 MiB budget");
    let held = metric(addr, "relay_held_bytes").await?;
    assert!(held <= budget && held > budget / 4 * 3, "relay_held_bytes {held}");
    assert_eq!(metric(addr, "relay_held_bytes_max").await?, budget);

    // New work is refused clearly.
    let (status, body) = try_create_room(addr, None, 2).await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("held_bytes_full"))
    );
    a.send(data_frame(1, &chunk)).await?;
    let error = event(&mut a, "error").await?;
    assert_eq!(error["code"], "held_bytes_full", "{error}");

    // What was held before is delivered.
    let (mut b, _) = join(addr, &room, "?slot=1").await?;
    assert_eq!(next_data(&mut b).await?, (1, b"held before the hog".to_vec()));
    let mut asker = ws_connect(addr, "/v1/msg-relay").await?;
    asker.send(mailbox_frame(1, b"")).await?;
    let got = tokio::time::timeout(STEP_TIMEOUT, asker.next()).await?.context("asker closed")??;
    assert_eq!(&got.into_data()[36..], b"stored before the hog");

    // Others are served meanwhile: health, and the room's control traffic.
    let health = http_request(addr, "GET", "/healthz", &[], b"").await?;
    assert_eq!(health.status, StatusCode::OK);
    still_served(&mut b).await?;
    Ok(())
}

/// One key may hold `--max-rooms-per-key` live rooms: its next creation is 429
/// `too_many_rooms_for_key` while another key still creates rooms. An operator closes
/// one of its rooms with `DELETE /v1/admin/rooms/{id}` (the party there gets 1008
/// `room closed by the operator`), and the key may create one again.
#[tokio::test]
async fn one_key_cannot_exceed_its_rooms_while_another_key_still_creates_rooms() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = start_keyed(dir.path(), &["--max-rooms-per-key", "3"]).await?;
    let addr = relay.addr;
    let greedy = create_key(addr, "greedy", 0).await?;
    let modest = create_key(addr, "modest", 0).await?;
    let mut rooms = Vec::new();
    for _ in 0..3 {
        rooms.push(create_room(addr, Some(&greedy), 2).await?);
    }
    let (status, body) = try_create_room(addr, Some(&greedy), 2).await?;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "too_many_rooms_for_key", "{body}");
    // The Sodot create shape counts the same rooms.
    let auth = format!("Bearer {greedy}");
    let sodot = post_json(addr, "/create-room", &[("authorization", &auth)], &json!({})).await?;
    assert_eq!(sodot.status, StatusCode::TOO_MANY_REQUESTS, "{}", sodot.text());

    let other = create_room(addr, Some(&modest), 2).await?;
    let (mut bystander, _) = join(addr, &other, "").await?;

    // The operator closes one of the greedy key's rooms; its party is told why.
    let (mut party, _) = join(addr, &rooms[0], "").await?;
    let admin = format!("Bearer {TOKEN}");
    let path = format!("/v1/admin/rooms/{}", rooms[0]);
    let closed = http_request(addr, "DELETE", &path, &[("authorization", &admin)], b"").await?;
    assert_eq!(closed.status, StatusCode::OK, "{}", closed.text());
    assert_eq!(close_of(&mut party, STEP_TIMEOUT).await?, (1008, "room closed by the operator".to_owned()));
    let again = http_request(addr, "DELETE", &path, &[("authorization", &admin)], b"").await?;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
    create_room(addr, Some(&greedy), 2).await.context("a freed place is usable again")?;
    still_served(&mut bystander).await?;
    Ok(())
}

/// A room nobody joins closes after `--room-join-timeout-secs`: joining it then is 404
/// `room_not_found`; a room whose party joined in time stays and is served.
#[tokio::test]
async fn an_unjoined_room_closes_after_the_join_timeout() -> anyhow::Result<()> {
    let relay =
        RelayProcess::start(&["--insecure-api-keys-not-enforced", "--room-join-timeout-secs", "1"]).await?;
    let addr = relay.addr;
    let abandoned = create_room(addr, None, 2).await?;
    let used = create_room(addr, None, 2).await?;
    let (mut party, _) = join(addr, &used, "").await?;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let refused =
        ws_connect(addr, &format!("/v1/rooms/{abandoned}")).await.expect_err("joined a closed room");
    assert_eq!(refusal_status(&refused), Some(StatusCode::NOT_FOUND), "{refused}");
    still_served(&mut party).await?;
    let (mut second, _) = join(addr, &used, "").await?;
    party.send(data_frame(1, b"after the timeout")).await?;
    assert_eq!(next_data(&mut second).await?, (1, b"after the timeout".to_vec()));
    Ok(())
}

/// A key that expires has its rooms closed within the lease check: the party gets
/// 1008 `api key expired`; another key's room and party are untouched.
#[tokio::test]
async fn an_expired_keys_rooms_close_and_other_keys_rooms_stay() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = start_keyed(dir.path(), &[]).await?;
    let addr = relay.addr;
    let expires_at = now() + 2;
    let short = create_key(addr, "short-lived", expires_at).await?;
    let long = create_key(addr, "long-lived", 0).await?;
    let doomed = create_room(addr, Some(&short), 2).await?;
    let kept = create_room(addr, Some(&long), 2).await?;
    let (mut doomed_party, _) = join(addr, &doomed, "").await?;
    let (mut kept_party, _) = join(addr, &kept, "").await?;
    // Expiry is in whole seconds: at most 2 s from now, then within the 1 s check (5 s
    // promised).
    let (code, reason) = close_of(&mut doomed_party, Duration::from_secs(7)).await?;
    assert_eq!((code, reason.as_str()), (1008, "api key expired"));
    assert!(now() >= expires_at);
    let refused = ws_connect(addr, &format!("/v1/rooms/{doomed}")).await.expect_err("the room lives on");
    assert_eq!(refusal_status(&refused), Some(StatusCode::NOT_FOUND));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    still_served(&mut kept_party).await?;
    Ok(())
}

/// A room party that stops reading while another floods it is closed with 1013 `slow
/// consumer` once a write to it stays blocked for `--ws-idle-timeout-secs`; a third
/// party of the room is served all along; the flooder is never held up; and the slow
/// party resumes its slot and gets every message, in order, nothing lost.
#[tokio::test]
async fn a_room_party_that_stops_reading_is_closed_as_slow_and_resumes_with_nothing_lost()
-> anyhow::Result<()> {
    const MESSAGES: u64 = 480;
    let relay = RelayProcess::start(&[
        "--insecure-api-keys-not-enforced",
        "--ws-idle-timeout-secs",
        "2",
        "--max-room-held-bytes",
        &(96u64 << 20).to_string(),
    ])
    .await?;
    let addr = relay.addr;
    let room = create_room(addr, None, 3).await?;
    let (flooder, _) = join(addr, &room, "?slot=0").await?;
    let (slow, slow_welcome) = join_small_buffer(addr, &room, "?slot=1").await?;
    let (mut watcher, _) = join(addr, &room, "?slot=2").await?;
    let token = slow_welcome["resume_token"].as_str().context("resume_token")?.to_owned();
    // The slow party never reads from here on, but keeps its socket open.
    let mut slow = slow;
    let (mut tx, mut rx) = flooder.split();
    let drain_flooder = tokio::spawn(async move { while let Some(Ok(_)) = rx.next().await {} });

    // 480 x 64 KiB (30 MiB: far more than both sockets' buffers) to the slow party, and a
    // small message to the watcher after every 16, which it reads as they come.
    let flood = tokio::spawn(async move {
        let payload = vec![0xa5u8; 64 << 10];
        for i in 0..MESSAGES {
            let mut p = payload.clone();
            p[..8].copy_from_slice(&i.to_le_bytes());
            let sent = tokio::time::timeout(STEP_TIMEOUT, tx.send(data_frame(1, &p))).await;
            ensure!(matches!(sent, Ok(Ok(()))), "the flooder was held up at {i}");
            if i % 16 == 15 {
                tx.send(data_frame(2, &i.to_le_bytes())).await?;
            }
        }
        anyhow::Ok(tx)
    });
    for n in 0..MESSAGES / 16 {
        let (seq, payload) =
            next_data(&mut watcher).await.with_context(|| format!("watcher, message {n}"))?;
        assert_eq!((seq, payload), (n + 1, (n * 16 + 15).to_le_bytes().to_vec()));
    }
    let _tx = flood.await??;

    // Past the write timeout the relay gives up on the slow party. Its close frame (if
    // the blocked write had no frame half-written) sits behind the data it did not
    // read: read until it or the end (bounded). Were it not closed, the reads would
    // drain the socket and wait in vain.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let end = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match slow.next().await {
                Some(Ok(Message::Close(frame))) => {
                    return frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return None,
            }
        }
    })
    .await
    .context("the slow party's socket was never closed")?;
    if let Some(close) = &end {
        assert_eq!((close.0, close.1.as_str()), (1013, "slow consumer"));
    }
    drop(slow);
    still_served(&mut watcher).await?;

    // Resume from nothing: every message comes, in order.
    let (mut resumed, welcome) = join(addr, &room, &format!("?resume_token={token}&last_seq=0")).await?;
    assert_eq!(welcome["resumed"], true, "{welcome}");
    for i in 0..MESSAGES {
        let (seq, payload) = next_data(&mut resumed).await.with_context(|| format!("replay {i}"))?;
        assert_eq!(seq, i + 1);
        assert_eq!(payload.len(), 64 << 10);
        assert_eq!(payload[..8], i.to_le_bytes());
    }
    eprintln!("slow party: closed with {end:?}, resumed and got all {MESSAGES} messages");
    drain_flooder.abort();
    Ok(())
}

/// A mailbox reader that asks for many large messages and stops reading is closed with
/// 1013 `slow consumer` once `--send-queue-bytes` (1 MiB here) wait for it, long before
/// `--send-queue-frames` (the default 1,024) would; the publisher is never held up and
/// keeps being served, and what was queued for the reader leaves the held-bytes count
/// (what it can no longer take is stored for its TTL, as any undelivered PUB).
#[tokio::test]
async fn a_mailbox_send_queue_is_bounded_in_bytes() -> anyhow::Result<()> {
    const COUNT: u32 = 200;
    let relay = RelayProcess::start(&[
        "--insecure-api-keys-not-enforced",
        "--send-queue-bytes",
        &(1u64 << 20).to_string(),
    ])
    .await?;
    let addr = relay.addr;
    let mut reader = connect_small_buffer(addr, "/v1/msg-relay").await?;
    for i in 0..COUNT {
        reader.feed(mailbox_frame(i, b"")).await?;
    }
    reader.flush().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // 200 x 60 KiB one-receiver messages (12 MiB): taken by the reader's asks at once,
    // so they are queued towards it, not stored.
    let mut publisher = ws_connect(addr, "/v1/msg-relay").await?;
    let chunk = vec![0x3cu8; 60 << 10];
    for i in 0..COUNT {
        let mut frame = mailbox_frame(i, &chunk).into_data().to_vec();
        frame[34..36].copy_from_slice(&0x8000u16.to_le_bytes());
        let sent = tokio::time::timeout(STEP_TIMEOUT, publisher.send(Message::binary(frame))).await;
        ensure!(matches!(sent, Ok(Ok(()))), "the publisher was held up at {i}");
    }
    // The reader's close sits behind what reached its socket: read until it.
    let mut frames = 0u32;
    let end = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match reader.next().await {
                Some(Ok(Message::Binary(_))) => frames += 1,
                Some(Ok(Message::Close(frame))) => {
                    return frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return None,
            }
        }
    })
    .await
    .context("the stalled reader was never closed")?;
    assert_eq!(end, Some((1013, "slow consumer".to_owned())), "after {frames} frames");
    assert!(frames < COUNT, "all {COUNT} frames reached a reader that stopped reading");
    // The publisher is still served, and nothing is left held for the closed reader.
    publisher.send(mailbox_frame(9999, b"still served")).await?;
    publisher.send(mailbox_frame(9999, b"")).await?;
    let back = tokio::time::timeout(STEP_TIMEOUT, publisher.next()).await?.context("publisher closed")??;
    assert_eq!(&back.into_data()[36..], b"still served");
    // What is held now is the messages the reader was no longer there to take, stored
    // for their TTL, each with its overhead (a few hundred bytes): its queue (over
    // 1 MiB when it was closed) was given back.
    let held = metric(addr, "relay_held_bytes").await?;
    let (stored, entries) =
        (metric(addr, "relay_mailbox_bytes").await?, metric(addr, "relay_mailbox_entries").await?);
    assert!(held >= stored && held <= stored + entries * 512, "held {held}, stored {stored} in {entries}");
    Ok(())
}
