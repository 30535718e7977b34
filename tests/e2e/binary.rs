//! The real `relay-server` binary: the room-ID prefix flag (refused when malformed,
//! honoured when valid) and SIGTERM closing an open room WebSocket with 1001 before the
//! process exits 0.

use std::time::Duration;

use crate::support::{RelayProcess, STEP_TIMEOUT, http_request, post_json, run_binary, ws_connect};
use anyhow::Context;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const OPEN: &str = "--insecure-api-keys-not-enforced";

#[tokio::test]
async fn a_malformed_room_id_prefix_exits_2_naming_the_prefix_rule() -> anyhow::Result<()> {
    for bad in ["XYZ", "1a2b3c4", "1A2B3C4D", "1a2b3c4d5"] {
        let out = run_binary(&["--listen", "127.0.0.1:0", OPEN, "--room-id-prefix", bad]).await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(stderr.contains("exactly 8 lowercase hex characters"), "{bad}: {stderr}");
        assert!(stderr.contains(bad), "the message names the value {bad}: {stderr}");
    }
    Ok(())
}

#[tokio::test]
async fn rooms_created_with_a_prefix_start_with_it() -> anyhow::Result<()> {
    let relay = RelayProcess::start(&[OPEN, "--room-id-prefix", "1a2b3c4d"]).await?;
    for _ in 0..5 {
        let resp = post_json(relay.addr, "/v1/rooms", &[], &json!({"room_size": 2})).await?;
        assert_eq!(resp.status, 201, "{}", resp.text());
        let id = resp.json()["room_uuid"].as_str().context("room_uuid")?.to_owned();
        assert!(id.starts_with("1a2b3c4d-") && id.len() == 36, "{id}");
    }
    let resp = http_request(relay.addr, "POST", "/create-room", &[], b"").await?;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let id = resp.json()["room_uuid"].as_str().context("room_uuid")?.to_owned();
    assert!(id.starts_with("1a2b3c4d-"), "{id}");
    Ok(())
}

#[tokio::test]
async fn sigterm_closes_an_open_room_with_1001_and_exits_0() -> anyhow::Result<()> {
    let mut relay = RelayProcess::start(&[OPEN]).await?;
    let resp = post_json(relay.addr, "/v1/rooms", &[], &json!({"room_size": 2})).await?;
    let room = resp.json()["room_uuid"].as_str().context("room_uuid")?.to_owned();
    let mut ws =
        tokio::time::timeout(STEP_TIMEOUT, ws_connect(relay.addr, &format!("/v1/rooms/{room}"))).await??;
    let welcome = tokio::time::timeout(STEP_TIMEOUT, ws.next()).await?.context("welcome")??;
    assert!(matches!(welcome, Message::Text(_)), "{welcome:?}");

    relay.signal(15);
    let mut closing: Option<Value> = None;
    let close = loop {
        match tokio::time::timeout(STEP_TIMEOUT, ws.next())
            .await?
            .context("stream ended before a close")??
        {
            Message::Close(frame) => break frame.context("close without a code")?,
            Message::Text(t) => closing = serde_json::from_str(t.as_str()).ok(),
            _ => {}
        }
    };
    assert_eq!(u16::from(close.code), 1001);
    assert_eq!(close.reason.as_str(), "server shutting down");
    assert_eq!(closing, Some(json!({"type": "closing", "code": 1001, "reason": "server shutting down"})));
    drop(ws);
    let status = relay.wait_exit(Duration::from_secs(15)).await?;
    assert_eq!(status.code(), Some(0), "output: {}", relay.output());
    Ok(())
}
