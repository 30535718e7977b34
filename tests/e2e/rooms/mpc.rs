//! MPC-grade rooms against the real binary: party tokens bind slots, `welcome` counts
//! the frames taken from a slot across connections, `error` names the refused frame,
//! `abort` ends the room for everyone with 4002, `status` says who the others wait
//! for, and a broadcast reaches every other party byte-identical in one accept order.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::{join, recv_close, recv_data, recv_event, recv_json, refused_join, send_data, send_json};
use crate::support::{RelayProcess, STEP_TIMEOUT, post_json};
use anyhow::Context;
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

async fn relay() -> RelayProcess {
    RelayProcess::start(&["--insecure-api-keys-not-enforced"]).await.expect("relay-server starts")
}

/// Creates a room with party tokens; returns its ID and the tokens.
async fn create_with_tokens(addr: SocketAddr, size: u16) -> anyhow::Result<(String, Vec<String>)> {
    let resp = post_json(addr, "/v1/rooms", &[], &json!({"room_size": size, "party_tokens": true})).await?;
    assert_eq!(resp.status, 201, "{}", resp.text());
    let v = resp.json();
    let tokens: Vec<String> = serde_json::from_value(v["party_tokens"].clone()).context("party_tokens")?;
    Ok((v["room_uuid"].as_str().context("room_uuid")?.to_owned(), tokens))
}

#[tokio::test]
async fn party_tokens_bind_each_slot_and_joins_without_one_are_refused_with_403() -> anyhow::Result<()> {
    let relay = relay().await;
    let addr = relay.addr;
    let (room, tokens) = create_with_tokens(addr, 3).await?;
    let (_other, other_tokens) = create_with_tokens(addr, 3).await?;
    assert_eq!(tokens.len(), 3);
    for t in &tokens {
        // 16 random bytes, base64url without padding.
        assert_eq!(t.len(), 22, "{t}");
        assert!(t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{t}");
        assert!(!other_tokens.contains(t));
    }
    let bad = (403, "bad_party_token".to_owned());
    assert_eq!(refused_join(addr, &format!("/v1/rooms/{room}")).await, bad);
    assert_eq!(refused_join(addr, &format!("/v1/rooms/{room}?slot=1")).await, bad);
    assert_eq!(refused_join(addr, &format!("/v1/rooms/{room}?party_token={}", other_tokens[0])).await, bad);
    assert_eq!(refused_join(addr, &format!("/v1/rooms/{room}?party_token=nope")).await, bad);
    assert_eq!(refused_join(addr, &format!("/v1/rooms/{room}?slot=0&party_token={}", tokens[1])).await, bad);

    let (mut c, wc) = join(addr, &room, &format!("?party_token={}", tokens[2])).await?;
    assert_eq!(wc["slot"], 2);
    assert_eq!(
        refused_join(addr, &format!("/v1/rooms/{room}?party_token={}", tokens[2])).await,
        (409, "slot_taken".to_owned())
    );
    let (mut a, wa) = join(addr, &room, &format!("?slot=0&party_token={}", tokens[0])).await?;
    assert_eq!(wa["slot"], 0);
    let (_b, wb) = join(addr, &room, &format!("?party_token={}", tokens[1])).await?;
    assert_eq!(wb["slot"], 1);
    recv_event(&mut a, "ready").await?;
    send_data(&mut a, 2, b"to the party holding token 2").await?;
    let d = recv_data(&mut c).await?;
    assert_eq!((d.from, &d.payload[..]), (0, &b"to the party holding token 2"[..]));

    // Resume keeps working with the resume token alone.
    let token = wc["resume_token"].as_str().context("resume_token")?.to_owned();
    drop(c);
    let (_c, wc2) = join(addr, &room, &format!("?resume_token={token}&last_seq=1")).await?;
    assert_eq!((wc2["slot"].as_u64(), wc2["resumed"].as_bool()), (Some(2), Some(true)));

    // The Sodot shape takes the flag too; a room without it ignores a token.
    let resp = post_json(addr, "/create-room", &[], &json!({"room_size": 2, "party_tokens": true})).await?;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let v = resp.json();
    assert_eq!(v["party_tokens"].as_array().map(Vec::len), Some(2), "{v}");
    let sodot_room = v["room_uuid"].as_str().context("room_uuid")?;
    assert_eq!(refused_join(addr, &format!("/v1/rooms/{sodot_room}")).await, bad);
    let (_s1, w) =
        join(addr, sodot_room, &format!("?party_token={}", v["party_tokens"][1].as_str().unwrap())).await?;
    assert_eq!(w["slot"], 1);
    let resp = post_json(addr, "/v1/rooms", &[], &json!({"room_size": 2})).await?;
    assert!(resp.json().get("party_tokens").is_none(), "{}", resp.text());
    let plain = resp.json()["room_uuid"].as_str().context("room_uuid")?.to_owned();
    let (_p, w) = join(addr, &plain, "?party_token=whatever").await?;
    assert_eq!(w["slot"], 0);
    Ok(())
}

#[tokio::test]
async fn welcome_counts_the_frames_taken_and_errors_name_the_refused_frame() -> anyhow::Result<()> {
    let relay = relay().await;
    let addr = relay.addr;
    let room = super::create_room(addr, 2, None).await?;
    let (mut a, wa) = join(addr, &room, "").await?;
    assert_eq!(wa["received"], 0);
    let (mut b, _) = join(addr, &room, "").await?;
    recv_event(&mut a, "ready").await?;
    send_data(&mut a, 1, b"frame 1").await?;
    send_data(&mut a, 0, b"frame 2: to myself").await?;
    let e = recv_event(&mut a, "error").await?;
    assert_eq!((e["code"].as_str(), e["frame"].as_u64()), (Some("bad_destination"), Some(2)), "{e}");
    a.send(Message::binary(vec![7u8])).await?;
    let e = recv_event(&mut a, "error").await?;
    assert_eq!((e["code"].as_str(), e["frame"].as_u64()), (Some("malformed_frame"), Some(3)), "{e}");
    send_json(&mut a, json!({"type": "dance"})).await?;
    let e = recv_event(&mut a, "error").await?;
    assert_eq!(e["code"], "bad_control");
    assert!(e.get("frame").is_none(), "a refused text frame names no data frame: {e}");
    send_data(&mut a, 1, b"frame 4").await?;
    assert_eq!(recv_data(&mut b).await?.payload, b"frame 1");
    assert_eq!(recv_data(&mut b).await?.payload, b"frame 4");

    // Across a dropped connection the count goes on.
    let token = wa["resume_token"].as_str().context("resume_token")?.to_owned();
    drop(a);
    recv_event(&mut b, "left").await?;
    let (mut a, wa) = join(addr, &room, &format!("?resume_token={token}")).await?;
    assert_eq!((wa["received"].as_u64(), wa["resumed"].as_bool()), (Some(4), Some(true)));
    send_data(&mut a, 5, b"frame 5: past the room").await?;
    let e = recv_event(&mut a, "error").await?;
    assert_eq!(e["frame"], 5, "{e}");
    Ok(())
}

#[tokio::test]
async fn status_says_who_is_present_how_much_each_sent_and_since_when() -> anyhow::Result<()> {
    let relay = relay().await;
    let addr = relay.addr;
    let room = super::create_room(addr, 3, None).await?;
    let (mut a, _) = join(addr, &room, "").await?;
    let (mut b, _) = join(addr, &room, "").await?;
    send_data(&mut a, 1, b"round 1").await?;
    send_data(&mut a, 0xFFFF, b"round 1 to all").await?;
    recv_data(&mut b).await?;
    recv_data(&mut b).await?;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    send_json(&mut b, json!({"type": "status"})).await?;
    let s = recv_event(&mut b, "status").await?;
    assert_eq!(s["present"], json!([0, 1]), "{s}");
    assert_eq!(s["sent"], json!([2, 0, 0]), "{s}");
    let idle: Vec<u64> = serde_json::from_value(s["idle_ms"].clone())?;
    assert_eq!(idle.len(), 3);
    assert!(idle[0] >= 300 && idle[0] < 60_000, "{s}");
    assert!(
        idle[1] >= idle[0] && idle[2] >= idle[0],
        "slots that never sent count from the room's creation: {s}"
    );
    Ok(())
}

#[tokio::test]
async fn abort_names_the_aborter_to_everyone_closes_all_with_4002_and_reaches_a_resumer() -> anyhow::Result<()>
{
    let relay = relay().await;
    let addr = relay.addr;
    let room = super::create_room(addr, 3, None).await?;
    let (mut a, _) = join(addr, &room, "").await?;
    let (mut b, _) = join(addr, &room, "").await?;
    let (c, wc) = join(addr, &room, "").await?;
    recv_event(&mut b, "ready").await?;
    let c_token = wc["resume_token"].as_str().context("resume_token")?.to_owned();
    drop(c);
    recv_event(&mut b, "left").await?;
    let long = "cheater: slot 2 ".repeat(40);
    send_json(&mut a, json!({"type": "abort", "reason": long})).await?;
    let ev = recv_event(&mut b, "aborted").await?;
    let cut = &long[..relay_proto::room::MAX_ABORT_REASON_BYTES];
    assert_eq!(ev, json!({"type": "aborted", "slot": 0, "reason": cut}));
    for ws in [&mut b, &mut a] {
        let (code, reason, closing) = recv_close(ws).await?;
        assert_eq!(code, 4002, "{reason}");
        assert_eq!(closing.context("closing before the close")?["code"], 4002);
    }
    // A party resuming while the room lingers learns of it too.
    let (mut c, wc) = join(addr, &room, &format!("?resume_token={c_token}")).await?;
    assert_eq!(wc["resumed"], true);
    assert_eq!(recv_json(&mut c).await?, json!({"type": "aborted", "slot": 0, "reason": cut}));
    assert_eq!(recv_close(&mut c).await?.0, 4002);
    // Nobody new gets in.
    assert_eq!(refused_join(addr, &format!("/v1/rooms/{room}")).await, (404, "room_not_found".to_owned()));
    Ok(())
}

#[tokio::test]
async fn a_broadcast_reaches_every_other_party_byte_identical_in_one_accept_order() -> anyhow::Result<()> {
    const PARTIES: u16 = 4;
    const PER_SENDER: usize = 200;
    let relay = relay().await;
    let addr = relay.addr;
    let room = super::create_room(addr, PARTIES, None).await?;
    let mut parties = Vec::new();
    for _ in 0..PARTIES {
        parties.push(join(addr, &room, "").await?.0);
    }
    for p in &mut parties {
        recv_event(p, "ready").await?;
    }
    // Payloads of every size class, the sender and index inside, so each is distinct.
    // Nobody acks: all of it (about 10 MB) stays under the room's default 16 MiB bound.
    let payload = |from: u16, i: usize| -> Vec<u8> {
        let len = [0usize, 1, 7, 300, 20_000][i % 5];
        let mut p = vec![u8::try_from(i % 251).unwrap(); len];
        if len >= 3 {
            p[0] = u8::try_from(from).unwrap();
            p[1..3].copy_from_slice(&u16::try_from(i).unwrap().to_le_bytes());
        }
        p
    };
    // Every party broadcasts at once, interleaved with a direct message now and then.
    let mut tasks = Vec::new();
    for (slot, mut ws) in parties.into_iter().enumerate() {
        let slot = u16::try_from(slot)?;
        tasks.push(tokio::spawn(async move {
            let (mut sink, mut stream) = futures_util::StreamExt::split(&mut ws);
            let send = async {
                for i in 0..PER_SENDER {
                    let mut frame = 0xFFFFu16.to_le_bytes().to_vec();
                    frame.extend_from_slice(&payload(slot, i));
                    sink.send(Message::binary(frame)).await?;
                    if i % 50 == 0 {
                        let mut direct = ((slot + 1) % PARTIES).to_le_bytes().to_vec();
                        direct.extend_from_slice(b"direct");
                        sink.send(Message::binary(direct)).await?;
                    }
                }
                anyhow::Ok(())
            };
            let expect = usize::from(PARTIES - 1) * PER_SENDER;
            let receive = async {
                let mut got = Vec::new();
                while got.len() < expect {
                    let msg = tokio::time::timeout(STEP_TIMEOUT, futures_util::StreamExt::next(&mut stream))
                        .await
                        .context("a broadcast did not arrive")?
                        .context("stream ended")??;
                    if let Message::Binary(b) = msg {
                        let d = super::parse_data(&b);
                        if d.payload != b"direct" {
                            got.push(d);
                        }
                    }
                }
                anyhow::Ok(got)
            };
            let ((), got) = tokio::try_join!(send, receive)?;
            anyhow::Ok((slot, got))
        }));
    }
    let mut seen: HashMap<u16, Vec<(u16, Vec<u8>)>> = HashMap::new();
    for t in tasks {
        let (slot, got) = t.await??;
        let mut per_sender: HashMap<u16, usize> = HashMap::new();
        for d in &got {
            assert_ne!(d.from, slot, "a sender never receives its own broadcast");
            assert_eq!(d.flags, 1, "the broadcast flag, and only it");
            let i = per_sender.entry(d.from).or_default();
            assert_eq!(d.payload, payload(d.from, *i), "byte-identical, in the sender's order");
            *i += 1;
        }
        seen.insert(slot, got.into_iter().map(|d| (d.from, d.payload)).collect());
    }
    // One accept order: any two receivers see the broadcasts both get in the same order.
    for r1 in 0..PARTIES {
        for r2 in r1 + 1..PARTIES {
            let common = |r: u16| -> Vec<&(u16, Vec<u8>)> {
                seen[&r].iter().filter(|(from, _)| *from != r1 && *from != r2).collect()
            };
            assert_eq!(common(r1), common(r2), "receivers {r1} and {r2} disagree on the order");
        }
    }
    Ok(())
}
