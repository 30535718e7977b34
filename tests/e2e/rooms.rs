//! Rooms end to end over real sockets on 127.0.0.1: creation, joining, ready, routing,
//! stamping, FIFO, holding for late joiners, resume after a dropped TCP connection,
//! refusals before the upgrade, TTL expiry, leave, and the held-bytes bound.

use std::net::SocketAddr;

use crate::support::{
    STEP_TIMEOUT, ServerConfig, Ws, http_request, open_config, post_json, refusal_status, serve_in_process,
    ws_connect,
};
use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{self, Message, protocol::frame::coding::CloseCode};

/// MPC-grade rooms (party tokens, exactly-once counts, abort, status, the broadcast
/// guarantee) against the real binary, with this module's helpers.
mod mpc;

/// One data frame as the relay sends it.
#[derive(Debug, PartialEq, Eq)]
struct Data {
    seq: u64,
    from: u16,
    flags: u16,
    payload: Vec<u8>,
}

async fn create_room(addr: SocketAddr, size: u16, ttl_secs: Option<u64>) -> anyhow::Result<String> {
    let mut body = json!({"room_size": size});
    if let Some(ttl) = ttl_secs {
        body["ttl_secs"] = json!(ttl);
    }
    let resp = post_json(addr, "/v1/rooms", &[], &body).await?;
    if resp.status != 201 {
        bail!("create answered {}: {}", resp.status, resp.text());
    }
    let v = resp.json();
    assert_eq!(v["room_size"], json!(size));
    assert!(v["expires_at"].as_u64().is_some(), "{v}");
    Ok(v["room_uuid"].as_str().context("room_uuid")?.to_owned())
}

/// Joins with `query` (e.g. `?slot=1`) and returns the socket and its welcome.
async fn join(addr: SocketAddr, room: &str, query: &str) -> anyhow::Result<(Ws, Value)> {
    let mut ws = tokio::time::timeout(STEP_TIMEOUT, ws_connect(addr, &format!("/v1/rooms/{room}{query}")))
        .await
        .context("join timed out")??;
    let welcome = recv_json(&mut ws).await?;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    Ok((ws, welcome))
}

/// The next frame that is not a ping or pong.
async fn recv(ws: &mut Ws) -> anyhow::Result<Message> {
    loop {
        let msg = tokio::time::timeout(STEP_TIMEOUT, ws.next())
            .await
            .context("no frame within the step timeout")?
            .context("stream ended")??;
        if !matches!(msg, Message::Ping(_) | Message::Pong(_)) {
            return Ok(msg);
        }
    }
}

async fn recv_json(ws: &mut Ws) -> anyhow::Result<Value> {
    match recv(ws).await? {
        Message::Text(t) => Ok(serde_json::from_str(t.as_str())?),
        other => bail!("expected a text frame, got {other:?}"),
    }
}

fn parse_data(b: &[u8]) -> Data {
    assert!(b.len() >= 12, "data frame of {} bytes", b.len());
    Data {
        seq: u64::from_le_bytes(b[0..8].try_into().unwrap()),
        from: u16::from_le_bytes([b[8], b[9]]),
        flags: u16::from_le_bytes([b[10], b[11]]),
        payload: b[12..].to_vec(),
    }
}

/// The next data frame, skipping joined/left/ready events.
async fn recv_data(ws: &mut Ws) -> anyhow::Result<Data> {
    loop {
        match recv(ws).await? {
            Message::Binary(b) => return Ok(parse_data(&b)),
            Message::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str())?;
                if !matches!(v["type"].as_str(), Some("joined" | "left" | "ready")) {
                    bail!("expected data, got {v}");
                }
            }
            other => bail!("expected data, got {other:?}"),
        }
    }
}

/// The next control event of type `kind`, skipping data and other events.
async fn recv_event(ws: &mut Ws, kind: &str) -> anyhow::Result<Value> {
    loop {
        if let Message::Text(t) = recv(ws).await? {
            let v: Value = serde_json::from_str(t.as_str())?;
            if v["type"] == kind {
                return Ok(v);
            }
        }
    }
}

async fn send_data(ws: &mut Ws, to: u16, payload: &[u8]) -> anyhow::Result<()> {
    let mut frame = to.to_le_bytes().to_vec();
    frame.extend_from_slice(payload);
    tokio::time::timeout(STEP_TIMEOUT, ws.send(Message::binary(frame))).await??;
    Ok(())
}

async fn send_json(ws: &mut Ws, v: Value) -> anyhow::Result<()> {
    tokio::time::timeout(STEP_TIMEOUT, ws.send(Message::text(v.to_string()))).await??;
    Ok(())
}

/// Reads until the close frame; returns its code and reason, and the `closing` event
/// seen before it.
async fn recv_close(ws: &mut Ws) -> anyhow::Result<(u16, String, Option<Value>)> {
    let mut closing = None;
    loop {
        match recv(ws).await? {
            Message::Close(Some(frame)) => return Ok((frame.code.into(), frame.reason.to_string(), closing)),
            Message::Close(None) => bail!("close without a code"),
            Message::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str())?;
                if v["type"] == "closing" {
                    closing = Some(v);
                }
            }
            _ => {}
        }
    }
}

/// The status and JSON error code of a refused join.
async fn refused_join(addr: SocketAddr, path: &str) -> (u16, String) {
    let err = tokio::time::timeout(STEP_TIMEOUT, ws_connect(addr, path))
        .await
        .expect("refusal timed out")
        .expect_err("the join should be refused");
    let status = refusal_status(&err).expect("an HTTP refusal").as_u16();
    let code = match &err {
        tungstenite::Error::Http(resp) => {
            let body: Value =
                serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).unwrap_or_default();
            body["error"]["code"].as_str().unwrap_or_default().to_owned()
        }
        _ => String::new(),
    };
    (status, code)
}

#[tokio::test]
async fn a_room_of_three_gets_ready_and_routes_broadcast_and_p2p_with_relay_stamped_senders()
-> anyhow::Result<()> {
    let (addr, _state) = serve_in_process(open_config()).await?;
    let room = create_room(addr, 3, None).await?;
    let (mut a, wa) = join(addr, &room, "").await?;
    assert_eq!(wa["room_uuid"], room.as_str());
    assert_eq!((wa["slot"].as_u64(), wa["room_size"].as_u64()), (Some(0), Some(3)));
    assert_eq!(
        (wa["present"].clone(), wa["resumed"].clone(), wa["next_seq"].clone()),
        (json!([0]), json!(false), json!(1))
    );
    assert!(wa["resume_token"].as_str().is_some_and(|t| !t.is_empty()));
    let (mut b, wb) = join(addr, &room, "").await?;
    let (mut c, wc) = join(addr, &room, "").await?;
    assert_eq!((wb["slot"].as_u64(), wc["slot"].as_u64()), (Some(1), Some(2)));
    assert_eq!(wc["present"], json!([0, 1, 2]));

    assert_eq!(recv_json(&mut a).await?, json!({"type": "joined", "slot": 1}));
    assert_eq!(recv_json(&mut a).await?, json!({"type": "joined", "slot": 2}));
    assert_eq!(recv_json(&mut a).await?, json!({"type": "ready", "room_size": 3}));
    assert_eq!(recv_json(&mut b).await?, json!({"type": "joined", "slot": 2}));
    assert_eq!(recv_json(&mut b).await?, json!({"type": "ready", "room_size": 3}));
    assert_eq!(recv_json(&mut c).await?, json!({"type": "ready", "room_size": 3}));

    // Broadcast reaches the two others, flagged, stamped with slot 0.
    send_data(&mut a, 0xFFFF, b"hello all").await?;
    for ws in [&mut b, &mut c] {
        assert_eq!(recv_data(ws).await?, Data { seq: 1, from: 0, flags: 1, payload: b"hello all".to_vec() });
    }
    // P2P reaches only its receiver.
    send_data(&mut a, 2, b"for c only").await?;
    assert_eq!(recv_data(&mut c).await?, Data { seq: 2, from: 0, flags: 0, payload: b"for c only".to_vec() });
    // A payload dressed as a relay header does not change the stamp: b is slot 1.
    let mut forged = 7u64.to_le_bytes().to_vec();
    forged.extend_from_slice(&0u16.to_le_bytes());
    forged.extend_from_slice(&0u16.to_le_bytes());
    send_data(&mut b, 2, &forged).await?;
    assert_eq!(recv_data(&mut c).await?, Data { seq: 3, from: 1, flags: 0, payload: forged });
    // b got nothing of a's p2p: the next thing it sees is c's message, with seq 2.
    send_data(&mut c, 1, b"marker").await?;
    assert_eq!(recv_data(&mut b).await?, Data { seq: 2, from: 2, flags: 0, payload: b"marker".to_vec() });
    // And a sender never receives its own broadcast: a's next data is this one.
    send_data(&mut c, 0, b"to a").await?;
    assert_eq!(recv_data(&mut a).await?, Data { seq: 1, from: 2, flags: 0, payload: b"to a".to_vec() });
    Ok(())
}

#[tokio::test]
async fn bad_frames_get_error_events_and_the_connection_stays_open() -> anyhow::Result<()> {
    let (addr, _state) = serve_in_process(open_config()).await?;
    let room = create_room(addr, 2, None).await?;
    let (mut a, _) = join(addr, &room, "").await?;
    let (mut b, _) = join(addr, &room, "").await?;
    recv_event(&mut a, "ready").await?;
    for (frame, code) in [
        (Message::binary(0u16.to_le_bytes().to_vec()), "bad_destination"),
        (Message::binary(2u16.to_le_bytes().to_vec()), "bad_destination"),
        (Message::binary(vec![1u8]), "malformed_frame"),
        (Message::text("hello"), "bad_control"),
        (Message::text(r#"{"type":"dance"}"#), "bad_control"),
    ] {
        tokio::time::timeout(STEP_TIMEOUT, a.send(frame)).await??;
        let ev = recv_event(&mut a, "error").await?;
        assert_eq!(ev["code"], code, "{ev}");
        assert!(ev["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    send_data(&mut a, 1, b"still open").await?;
    assert_eq!(recv_data(&mut b).await?.payload, b"still open");
    Ok(())
}

#[tokio::test]
async fn ten_thousand_messages_arrive_in_order_with_contiguous_seq() -> anyhow::Result<()> {
    const N: u32 = 10_000;
    let (addr, _state) = serve_in_process(open_config()).await?;
    let room = create_room(addr, 2, None).await?;
    let (mut a, _) = join(addr, &room, "").await?;
    let (mut b, _) = join(addr, &room, "").await?;
    let sender = tokio::spawn(async move {
        for i in 0..N {
            let mut frame = 1u16.to_le_bytes().to_vec();
            frame.extend_from_slice(&i.to_le_bytes());
            a.feed(Message::binary(frame)).await?;
        }
        a.flush().await?;
        // Keep the socket open until the receiver is done.
        while let Some(msg) = a.next().await {
            msg?;
        }
        anyhow::Ok(())
    });
    for i in 0..N {
        let d = recv_data(&mut b).await?;
        assert_eq!((d.seq, d.from, d.flags), (u64::from(i) + 1, 0, 0));
        assert_eq!(d.payload, i.to_le_bytes(), "message {i} out of order");
        if d.seq % 64 == 0 {
            b.feed(Message::text(json!({"type": "ack", "seq": d.seq}).to_string())).await?;
        }
    }
    b.flush().await?;
    sender.abort();
    Ok(())
}

#[tokio::test]
async fn a_late_joiner_gets_the_messages_held_for_it() -> anyhow::Result<()> {
    let (addr, _state) = serve_in_process(open_config()).await?;
    let room = create_room(addr, 2, None).await?;
    let (mut a, _) = join(addr, &room, "").await?;
    for p in [&b"r1"[..], b"r2", b"r3"] {
        send_data(&mut a, 1, p).await?;
    }
    // The relay has them once a's next frame is answered: use a bad frame as a barrier.
    a.send(Message::binary(vec![0u8])).await?;
    recv_event(&mut a, "error").await?;
    let (mut b, wb) = join(addr, &room, "").await?;
    assert_eq!(wb["next_seq"], 1);
    assert_eq!(recv_json(&mut b).await?, json!({"type": "ready", "room_size": 2}));
    for (seq, p) in [(1, b"r1"), (2, b"r2"), (3, b"r3")] {
        assert_eq!(recv_data(&mut b).await?, Data { seq, from: 0, flags: 0, payload: p.to_vec() });
    }
    Ok(())
}

#[tokio::test]
async fn a_dropped_tcp_connection_resumes_with_nothing_lost_or_repeated() -> anyhow::Result<()> {
    let (addr, _state) = serve_in_process(open_config()).await?;
    let room = create_room(addr, 2, None).await?;
    let (mut a, _) = join(addr, &room, "").await?;
    let (mut b, wb) = join(addr, &room, "").await?;
    let token = wb["resume_token"].as_str().context("token")?.to_owned();
    recv_event(&mut a, "ready").await?;
    for i in 1u8..=5 {
        send_data(&mut a, 1, &[i]).await?;
    }
    for seq in 1..=3 {
        assert_eq!(recv_data(&mut b).await?.seq, seq);
    }
    send_json(&mut b, json!({"type": "ack", "seq": 2})).await?;
    // Drop the TCP connection without a close frame.
    drop(b);
    assert_eq!(recv_event(&mut a, "left").await?, json!({"type": "left", "slot": 1}));
    for i in 6u8..=7 {
        send_data(&mut a, 1, &[i]).await?;
    }
    let (mut b, wb) = join(addr, &room, &format!("?resume_token={token}&last_seq=3")).await?;
    assert_eq!(
        (wb["slot"].clone(), wb["resumed"].clone(), wb["next_seq"].clone()),
        (json!(1), json!(true), json!(4))
    );
    assert_eq!(wb["resume_token"], token.as_str());
    assert_eq!(recv_event(&mut a, "joined").await?, json!({"type": "joined", "slot": 1}));
    send_data(&mut a, 1, &[8]).await?;
    let got: Vec<(u64, Vec<u8>)> = {
        let mut got = Vec::new();
        for _ in 0..5 {
            let d = recv_data(&mut b).await?;
            got.push((d.seq, d.payload));
        }
        got
    };
    assert_eq!(got, (4u8..=8).map(|i| (u64::from(i), vec![i])).collect::<Vec<_>>());

    // Resuming from before the last ack is a gap; a foreign token is refused.
    send_json(&mut b, json!({"type": "ack", "seq": 8})).await?;
    drop(b);
    recv_event(&mut a, "left").await?;
    // The ack was sent before the drop; it is applied before the relay sees the drop.
    assert_eq!(
        refused_join(addr, &format!("/v1/rooms/{room}?resume_token={token}&last_seq=3")).await,
        (409, "resume_gap".into())
    );
    assert_eq!(
        refused_join(addr, &format!("/v1/rooms/{room}?resume_token=nope&last_seq=8")).await,
        (403, "bad_resume_token".into())
    );
    Ok(())
}

#[tokio::test]
async fn a_fourth_joiner_and_a_taken_slot_are_refused_with_409() -> anyhow::Result<()> {
    let (addr, _state) = serve_in_process(open_config()).await?;
    let room = create_room(addr, 3, None).await?;
    let (_c, wc) = join(addr, &room, "?slot=2").await?;
    assert_eq!(wc["slot"], 2);
    assert_eq!(refused_join(addr, &format!("/v1/rooms/{room}?slot=2")).await, (409, "slot_taken".into()));
    let (_a, _) = join(addr, &room, "").await?;
    let (_b, wb) = join(addr, &room, "").await?;
    assert_eq!(wb["slot"], 1);
    assert_eq!(refused_join(addr, &format!("/v1/rooms/{room}")).await, (409, "room_full".into()));
    Ok(())
}

#[tokio::test]
async fn the_room_closes_with_4000_when_its_ttl_passes() -> anyhow::Result<()> {
    let (addr, _state) = serve_in_process(open_config()).await?;
    let room = create_room(addr, 2, Some(1)).await?;
    let (mut a, _) = join(addr, &room, "").await?;
    let (code, reason, closing) = recv_close(&mut a).await?;
    assert_eq!((code, reason.as_str()), (4000, "room expired"));
    assert_eq!(closing, Some(json!({"type": "closing", "code": 4000, "reason": "room expired"})));
    assert_eq!(refused_join(addr, &format!("/v1/rooms/{room}")).await, (404, "room_not_found".into()));
    Ok(())
}

#[tokio::test]
async fn leave_closes_with_1000_and_tells_the_others() -> anyhow::Result<()> {
    let (addr, _state) = serve_in_process(open_config()).await?;
    let room = create_room(addr, 2, None).await?;
    let (mut a, _) = join(addr, &room, "").await?;
    let (mut b, wb) = join(addr, &room, "").await?;
    send_json(&mut b, json!({"type": "leave"})).await?;
    let (code, reason, _) = recv_close(&mut b).await?;
    assert_eq!((code, reason.as_str()), (1000, "left"));
    assert_eq!(recv_event(&mut a, "left").await?, json!({"type": "left", "slot": 1}));
    let token = wb["resume_token"].as_str().context("token")?;
    assert_eq!(
        refused_join(addr, &format!("/v1/rooms/{room}?resume_token={token}")).await,
        (403, "bad_resume_token".into())
    );
    // The last party leaving closes the room.
    send_json(&mut a, json!({"type": "leave"})).await?;
    assert_eq!(recv_close(&mut a).await?.0, 1000);
    assert_eq!(refused_join(addr, &format!("/v1/rooms/{room}")).await, (404, "room_not_found".into()));
    Ok(())
}

#[tokio::test]
async fn refusals_before_the_upgrade_are_json_errors() -> anyhow::Result<()> {
    let (addr, _state) = serve_in_process(open_config()).await?;
    let room = create_room(addr, 2, None).await?;
    let unknown = "1a2b3c4d-9f0e-4c1b-8a7d-2e5f6a7b8c9d";
    assert_eq!(refused_join(addr, &format!("/v1/rooms/{unknown}")).await, (404, "room_not_found".into()));
    assert_eq!(refused_join(addr, "/v1/rooms/not-a-room").await, (400, "bad_room_id".into()));
    assert_eq!(
        refused_join(addr, "/v1/rooms/1A2B3C4D-9F0E-4C1B-8A7D-2E5F6A7B8C9D").await,
        (400, "bad_room_id".into())
    );
    assert_eq!(refused_join(addr, &format!("/v1/rooms/{room}?slot=x")).await, (400, "bad_request".into()));
    assert_eq!(refused_join(addr, &format!("/v1/rooms/{room}?slot=9")).await, (400, "bad_request".into()));
    assert_eq!(
        refused_join(addr, &format!("/v1/rooms/{room}?last_seq=3")).await,
        (400, "bad_request".into())
    );

    let plain = http_request(addr, "GET", &format!("/v1/rooms/{room}"), &[], b"").await?;
    assert_eq!(plain.status, 426);
    assert_eq!(plain.json()["error"]["code"], "upgrade_required");

    for (body, why) in [
        (json!({"room_size": 1}), "too small"),
        (json!({"room_size": 65}), "too large"),
        (json!({"room_size": 70000}), "not a u16"),
        (json!({"room_size": 2, "ttl_secs": 0}), "zero ttl"),
        (json!({"room_size": 2, "ttl_secs": 86_401}), "ttl too long"),
        (json!({"ttl_secs": 5}), "no size"),
    ] {
        let resp = post_json(addr, "/v1/rooms", &[], &body).await?;
        assert_eq!(resp.status, 400, "{why}: {}", resp.text());
        assert_eq!(resp.json()["error"]["code"], "bad_request", "{why}");
    }
    let resp = http_request(addr, "POST", "/v1/rooms", &[], b"{not json").await?;
    assert_eq!((resp.status.as_u16(), resp.json()["error"]["code"].clone()), (400, json!("bad_request")));
    Ok(())
}

#[tokio::test]
async fn sodot_create_room_answers_room_uuid_and_defaults_to_two_parties() -> anyhow::Result<()> {
    let (addr, _state) = serve_in_process(open_config()).await?;
    let resp = http_request(addr, "POST", "/create-room", &[("authorization", "some-key")], b"").await?;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let v = resp.json();
    let room = v["room_uuid"].as_str().context("room_uuid")?.to_owned();
    assert_eq!(v.as_object().map(|o| o.len()), Some(1), "{v}");
    let (_a, _) = join(addr, &room, "").await?;
    let (_b, _) = join(addr, &room, "").await?;
    assert_eq!(refused_join(addr, &format!("/v1/rooms/{room}")).await, (409, "room_full".into()));

    let resp = post_json(addr, "/create-room", &[], &json!({"room_size": 3})).await?;
    assert_eq!(resp.status, 200);
    let room = resp.json()["room_uuid"].as_str().context("room_uuid")?.to_owned();
    let (_a, wa) = join(addr, &room, "").await?;
    assert_eq!(wa["room_size"], 3);
    Ok(())
}

#[tokio::test]
async fn a_frame_over_max_message_bytes_closes_with_1009() -> anyhow::Result<()> {
    let mut config = open_config();
    config.limits.max_message_bytes = 1024;
    let (addr, _state) = serve_in_process(config).await?;
    let room = create_room(addr, 2, None).await?;
    let (mut a, _) = join(addr, &room, "").await?;
    let _ = a.send(Message::binary(vec![0u8; 4096])).await;
    let (code, reason, _) = recv_close(&mut a).await?;
    assert_eq!((code, reason.as_str()), (1009, "message too big"));
    Ok(())
}

#[tokio::test]
async fn a_receiver_that_does_not_read_fills_the_room_bound_and_senders_are_refused() -> anyhow::Result<()> {
    let held = 64 << 10;
    let config = ServerConfig {
        limits: relay_core::Limits { max_room_held_bytes: held, ..Default::default() },
        ..open_config()
    };
    let (addr, _state) = serve_in_process(config).await?;
    let room = create_room(addr, 2, None).await?;
    let (mut a, _) = join(addr, &room, "").await?;
    let (_b_never_reads, _) = join(addr, &room, "").await?;
    recv_event(&mut a, "ready").await?;
    let chunk = vec![1u8; 4096];
    let mut refused = false;
    // b never reads; the room holds at most `held` bytes for it, then refuses.
    for _ in 0..(held / chunk.len()) * 4 {
        send_data(&mut a, 1, &chunk).await?;
        // A bad frame as a barrier: its error arrives after the data frame's answer.
        a.send(Message::binary(vec![0u8])).await?;
        let ev = recv_event(&mut a, "error").await?;
        if ev["code"] == "room_buffer_full" {
            refused = true;
            break;
        }
        assert_eq!(ev["code"], "malformed_frame");
    }
    assert!(refused, "sends past the held bound must be refused with room_buffer_full");
    Ok(())
}

#[tokio::test]
async fn shutdown_closes_room_sockets_with_1001() -> anyhow::Result<()> {
    let (addr, state) = serve_in_process(open_config()).await?;
    let room = create_room(addr, 2, None).await?;
    let (mut a, _) = join(addr, &room, "").await?;
    state.begin_shutdown();
    let (code, reason, _) = recv_close(&mut a).await?;
    assert_eq!((CloseCode::from(code), reason.as_str()), (CloseCode::Away, "server shutting down"));
    Ok(())
}
