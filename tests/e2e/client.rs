//! relay-client against the real `relay-server` binary: room round trips, resume across
//! a cut TCP connection (through an in-test proxy), the mailbox with many asks in
//! flight, refusals mapped to their error variants, and the round-based adapter example.

use std::time::Duration;

use crate::support::{CuttableProxy, RelayProcess, STEP_TIMEOUT, ServerConfig, TestCert, serve_in_process};
use futures_util::{SinkExt, Stream, StreamExt};
use relay_client::{
    ApiKey, ClientConfig, Error, JoinOptions, MailboxClient, RawMailbox, ReconnectPolicy, ResumeState,
    RoomClient, RoomEvent, RoomMessage, TlsRoots,
};

/// The example, compiled into this test so its protocol runs against the real relay.
/// Its items are `pub` because the example's file is also an example of relay-client;
/// here they cannot be reachable from outside the test binary.
#[allow(unreachable_pub, reason = "the example's own items, shared with its `cargo run --example`")]
#[path = "../../crates/relay-client/examples/round_based_echo.rs"]
mod round_based_echo;

async fn open_relay() -> RelayProcess {
    RelayProcess::start(&["--insecure-api-keys-not-enforced"]).await.expect("relay-server starts")
}

fn rooms(relay: &RelayProcess) -> RoomClient {
    RoomClient::new(&relay.ws_url(""), ClientConfig::default()).expect("valid url")
}

async fn next_event<S>(s: &mut S) -> RoomEvent
where
    S: Stream<Item = relay_client::Result<RoomEvent>> + Unpin,
{
    match tokio::time::timeout(STEP_TIMEOUT, s.next()).await {
        Ok(Some(Ok(ev))) => ev,
        Ok(Some(Err(e))) => panic!("room stream failed: {e}"),
        Ok(None) => panic!("room stream ended"),
        Err(_) => panic!("no room event within {STEP_TIMEOUT:?}"),
    }
}

async fn next_message<S>(s: &mut S) -> RoomMessage
where
    S: Stream<Item = relay_client::Result<RoomEvent>> + Unpin,
{
    loop {
        if let RoomEvent::Message(m) = next_event(s).await {
            return m;
        }
    }
}

/// Reads until the stream ends; returns the data messages seen and the final error.
async fn drain<S>(s: &mut S) -> (Vec<RoomMessage>, Option<Error>)
where
    S: Stream<Item = relay_client::Result<RoomEvent>> + Unpin,
{
    let mut messages = Vec::new();
    loop {
        match tokio::time::timeout(STEP_TIMEOUT, s.next()).await.expect("stream ends in time") {
            Some(Ok(RoomEvent::Message(m))) => messages.push(m),
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                let rest =
                    tokio::time::timeout(STEP_TIMEOUT, s.next()).await.expect("stream ends after its error");
                assert!(rest.is_none(), "an error is the stream's last item");
                return (messages, Some(e));
            }
            None => return (messages, None),
        }
    }
}

fn msg(from: u16, seq: u64, broadcast: bool, payload: &'static [u8]) -> RoomMessage {
    RoomMessage { from, seq, broadcast, payload: bytes_of(payload) }
}

fn bytes_of(b: &'static [u8]) -> bytes::Bytes {
    bytes::Bytes::from_static(b)
}

#[tokio::test]
async fn room_round_trip_three_parties_broadcast_and_p2p() {
    let relay = open_relay().await;
    let client = rooms(&relay);
    let room = client.create_room(3, Some(Duration::from_secs(60))).await.expect("create room");
    assert_eq!(room.room_size, 3);
    assert_eq!(room.room_uuid.len(), 36);

    let mut parties = Vec::new();
    for _ in 0..3 {
        parties.push(client.join(&room.room_uuid, JoinOptions::default()).await.expect("join"));
    }
    let slots: Vec<u16> = parties.iter().map(|p| p.slot()).collect();
    assert_eq!(slots, [0, 1, 2], "first joins take the next free slot in order");
    for p in &parties {
        assert_eq!(p.room_size(), 3);
        tokio::time::timeout(STEP_TIMEOUT, p.wait_ready()).await.expect("ready in time").expect("ready");
    }

    parties[0].broadcast(&b"hello all"[..]).await.unwrap();
    parties[1].send_to(2, &b"one to two"[..]).await.unwrap();
    parties[2].send_to(0, &b"two to zero"[..]).await.unwrap();

    assert_eq!(next_message(&mut parties[1]).await, msg(0, 1, true, b"hello all"));
    let mut at_two = [next_message(&mut parties[2]).await, next_message(&mut parties[2]).await];
    let mut seqs: Vec<u64> = at_two.iter().map(|m| m.seq).collect();
    seqs.sort();
    assert_eq!(seqs, [1, 2], "one seq sequence per receiver, shared by its senders");
    at_two.sort_by_key(|m| m.from);
    assert_eq!((at_two[0].from, at_two[0].broadcast, &at_two[0].payload[..]), (0, true, &b"hello all"[..]));
    assert_eq!((at_two[1].from, at_two[1].broadcast, &at_two[1].payload[..]), (1, false, &b"one to two"[..]));
    assert_eq!(next_message(&mut parties[0]).await, msg(2, 1, false, b"two to zero"));

    // Everyone leaves: each stream ends cleanly, and nobody got anything more (in
    // particular, party 0 never receives its own broadcast).
    for p in &parties {
        p.leave().await.unwrap();
    }
    for mut p in parties {
        let (extra, err) = drain(&mut p).await;
        assert!(extra.is_empty(), "slot {} got unexpected messages {extra:?}", p.slot());
        assert!(err.is_none(), "leave ends the stream without an error, got {err:?}");
    }
}

#[tokio::test]
async fn cut_tcp_connection_resumes_with_nothing_lost_or_duplicated() {
    const BEFORE_CUT: u32 = 300;
    const DURING_OUTAGE: u32 = 300;
    const READ_BEFORE_CUT: u32 = 150;
    // B's frames in flight when its link stalls: the relay takes some, the stalled
    // link eats the rest. The client must send again exactly the ones the relay lacks.
    const FROM_B_IN_FLIGHT: u32 = 100;
    const FROM_B_STALLED: u32 = 100;
    const FROM_RESUMER: u32 = 100;
    const FROM_B: u32 = FROM_B_IN_FLIGHT + FROM_B_STALLED + FROM_RESUMER;

    let relay = open_relay().await;
    let proxy = CuttableProxy::start(relay.addr).await.unwrap();
    let direct = rooms(&relay);
    let room = direct.create_room(2, Some(Duration::from_secs(120))).await.unwrap();
    let a = direct.join(&room.room_uuid, JoinOptions::slot(0)).await.unwrap();
    let via_proxy = RoomClient::new(&proxy.ws_base(), ClientConfig::default()).unwrap();
    let options = JoinOptions {
        slot: Some(1),
        reconnect: ReconnectPolicy {
            max_attempts: 200,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            deadline: Duration::from_secs(20),
        },
        ..JoinOptions::default()
    };
    let b = via_proxy.join(&room.room_uuid, options).await.unwrap();
    for p in [&a, &b] {
        tokio::time::timeout(STEP_TIMEOUT, p.wait_ready()).await.unwrap().unwrap();
    }
    let (a_tx, mut a_rx) = a.split();
    let (b_tx, mut b_rx) = b.split();

    // A streams to B: a first batch, then (once B's link has stalled) a second one that
    // the relay sends into the stalled link and must replay after B resumes.
    let (cut_tx, cut_rx) = tokio::sync::oneshot::channel::<()>();
    let streamer = tokio::spawn(async move {
        for i in 0..BEFORE_CUT {
            a_tx.send_to(1, i.to_le_bytes().to_vec()).await?;
        }
        let _ = cut_rx.await;
        for i in BEFORE_CUT..BEFORE_CUT + DURING_OUTAGE {
            a_tx.send_to(1, i.to_le_bytes().to_vec()).await?;
        }
        Ok::<_, Error>(a_tx)
    });

    let mut streamer = streamer;
    let mut cut_tx = Some(cut_tx);
    let mut expected = 0u32;
    let mut last_seq = 0u64;
    let mut reconnects = 0;
    while expected < BEFORE_CUT + DURING_OUTAGE {
        match next_event(&mut b_rx).await {
            RoomEvent::Message(m) => {
                assert_eq!(m.from, 0);
                assert!(!m.broadcast);
                assert_eq!(m.seq, last_seq + 1, "seq goes up by one, nothing skipped or repeated");
                let i = u32::from_le_bytes(m.payload[..].try_into().expect("4-byte payload"));
                assert_eq!(i, expected, "message {expected} lost, duplicated or out of order");
                last_seq = m.seq;
                expected += 1;
            }
            RoomEvent::Reconnected { .. } => reconnects += 1,
            _ => {}
        }
        if expected == READ_BEFORE_CUT && cut_tx.is_some() {
            // B sends while its link stalls under it: some frames reach the relay, the
            // rest pile up in the proxy with what the relay sends B, and are lost when
            // the link dies. Both sides must make up for exactly what was lost.
            for j in 0..FROM_B_IN_FLIGHT {
                b_tx.send_to(0, j.to_le_bytes().to_vec()).await.unwrap();
            }
            proxy.freeze(true);
            for j in FROM_B_IN_FLIGHT..FROM_B_IN_FLIGHT + FROM_B_STALLED {
                b_tx.send_to(0, j.to_le_bytes().to_vec()).await.unwrap();
            }
            let _ = cut_tx.take().map(|tx| tx.send(()));
            let a_done = async {
                while !streamer.is_finished() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            };
            tokio::time::timeout(STEP_TIMEOUT, a_done).await.expect("A sends its second batch");
            // Give the relay a moment to write that batch into the stalled link. Not an
            // assertion: the test must pass however much of it got there.
            tokio::time::sleep(Duration::from_millis(50)).await;
            // Pause before the cut: B's first reconnect is immediate, and one that got in
            // between the cut and the pause would never be refused.
            proxy.set_paused(true);
            assert!(proxy.cut_all().await >= 1, "B's connection went through the proxy");
            proxy.freeze(false);
            // Wait until B's client is trying to reconnect: it has seen the drop.
            let refused = async {
                while proxy.refused() == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            };
            tokio::time::timeout(STEP_TIMEOUT, refused).await.expect("B tries to reconnect");
            // Sent while B is down: queued, then sent after the resume.
            for j in FROM_B_IN_FLIGHT + FROM_B_STALLED..FROM_B {
                b_tx.send_to(0, j.to_le_bytes().to_vec()).await.unwrap();
            }
            proxy.set_paused(false);
        }
    }
    assert!(reconnects >= 1, "B reported its resume");
    assert!(proxy.forwarded() >= 2, "the resume went through the proxy again");
    let a_tx = tokio::time::timeout(STEP_TIMEOUT, &mut streamer).await.unwrap().unwrap().unwrap();

    for j in 0..FROM_B {
        let m = next_message(&mut a_rx).await;
        assert_eq!((m.from, m.seq), (1, u64::from(j) + 1), "B's frame {j} lost or duplicated");
        assert_eq!(u32::from_le_bytes(m.payload[..].try_into().unwrap()), j, "B's frames in order");
    }

    // Nothing else arrives on either side before both leave.
    b_tx.leave().await.unwrap();
    a_tx.leave().await.unwrap();
    let (extra_b, err_b) = drain(&mut b_rx).await;
    let (extra_a, err_a) = drain(&mut a_rx).await;
    assert!(extra_b.is_empty() && extra_a.is_empty(), "duplicates after the stream: {extra_a:?} {extra_b:?}");
    assert!(err_a.is_none() && err_b.is_none(), "{err_a:?} {err_b:?}");
}

#[tokio::test]
async fn client_acks_free_the_room_so_traffic_far_past_its_bound_flows() {
    // The room may hold 256 KiB (undelivered plus delivered-but-unacked). A sends B
    // 2000 KiB in windows of 100 KiB, waiting for B's reply after each. Only the
    // client's acks let the relay forget what B has read: without them the room
    // would pass its bound within 3 windows and A's sends would be refused.
    const WINDOW: u32 = 100;
    const WINDOWS: u32 = 20;
    let relay = RelayProcess::start(&["--insecure-api-keys-not-enforced", "--max-room-held-bytes", "262144"])
        .await
        .unwrap();
    let client = rooms(&relay);
    let room = client.create_room(2, None).await.unwrap();
    let mut a = client.join(&room.room_uuid, JoinOptions::slot(0)).await.unwrap();
    let mut b = client.join(&room.room_uuid, JoinOptions::slot(1)).await.unwrap();
    let payload = vec![7u8; 1024];
    for w in 0..WINDOWS {
        for _ in 0..WINDOW {
            a.send_to(1, payload.clone()).await.unwrap();
        }
        for i in 0..WINDOW {
            let m = next_message(&mut b).await;
            assert_eq!(m.seq, u64::from(w * WINDOW + i + 1));
            assert_eq!(m.payload.len(), 1024);
        }
        b.send_to(0, w.to_le_bytes().to_vec()).await.unwrap();
        loop {
            match next_event(&mut a).await {
                RoomEvent::Message(m) => {
                    assert_eq!(m.payload[..], w.to_le_bytes());
                    break;
                }
                RoomEvent::RelayError { code, message, .. } => {
                    panic!("window {w}: relay refused: {code} {message}")
                }
                _ => {}
            }
        }
    }
}

#[tokio::test]
async fn a_stalled_link_without_reset_is_resumed_after_the_idle_timeout() {
    let relay = open_relay().await;
    let proxy = CuttableProxy::start(relay.addr).await.unwrap();
    let direct = rooms(&relay);
    let room = direct.create_room(2, None).await.unwrap();
    let a = direct.join(&room.room_uuid, JoinOptions::slot(0)).await.unwrap();
    let via_proxy = RoomClient::new(&proxy.ws_base(), ClientConfig::default()).unwrap();
    let options =
        JoinOptions { slot: Some(1), idle_timeout: Duration::from_secs(1), ..JoinOptions::default() };
    let mut b = via_proxy.join(&room.room_uuid, options).await.unwrap();
    tokio::time::timeout(STEP_TIMEOUT, b.wait_ready()).await.unwrap().unwrap();

    // The link goes silent: no reset, no close, nothing gets through.
    proxy.freeze(true);
    for i in 0..50u32 {
        a.send_to(1, i.to_le_bytes().to_vec()).await.unwrap();
    }
    // B gives up on the silent link and dials again; let the new link through.
    let redial = async {
        while proxy.forwarded() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(STEP_TIMEOUT, redial).await.expect("B redials after its idle timeout");
    proxy.freeze(false);
    for i in 0..50u32 {
        let m = next_message(&mut b).await;
        assert_eq!((m.seq, u32::from_le_bytes(m.payload[..].try_into().unwrap())), (u64::from(i) + 1, i));
    }
}

#[tokio::test]
async fn resume_into_a_room_that_closed_meanwhile_fails_with_room_not_found() {
    let relay = RelayProcess::start(&["--insecure-api-keys-not-enforced", "--reconnect-grace-secs", "1"])
        .await
        .unwrap();
    let proxy = CuttableProxy::start(relay.addr).await.unwrap();
    let direct = rooms(&relay);
    let room = direct.create_room(2, None).await.unwrap();
    let mut a = direct.join(&room.room_uuid, JoinOptions::slot(0)).await.unwrap();
    let via_proxy = RoomClient::new(&proxy.ws_base(), ClientConfig::default()).unwrap();
    let options = JoinOptions {
        slot: Some(1),
        reconnect: ReconnectPolicy {
            max_attempts: 1000,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(50),
            deadline: Duration::from_secs(20),
        },
        ..JoinOptions::default()
    };
    let mut b = via_proxy.join(&room.room_uuid, options).await.unwrap();

    // A leaves; B's link dies and stays down past the reconnect grace.
    a.leave().await.unwrap();
    assert!(drain(&mut a).await.1.is_none());
    proxy.set_paused(true);
    proxy.cut_all().await;
    let closed = async {
        loop {
            match direct.join(&room.room_uuid, JoinOptions::default()).await {
                Err(Error::RoomNotFound { .. }) => return,
                Err(Error::RoomFull { .. }) => tokio::time::sleep(Duration::from_millis(50)).await,
                other => panic!("unexpected join outcome {other:?}"),
            }
        }
    };
    tokio::time::timeout(STEP_TIMEOUT, closed).await.expect("the room closes after the grace");
    proxy.set_paused(false);

    let (_, err) = drain(&mut b).await;
    match err {
        Some(Error::ReconnectFailed { last, .. }) => {
            assert!(matches!(*last, Error::RoomNotFound { .. }), "{last:?}")
        }
        other => panic!("expected ReconnectFailed(RoomNotFound), got {other:?}"),
    }
}

#[tokio::test]
async fn resume_from_saved_state_replaces_the_old_connection_with_4001() {
    let relay = open_relay().await;
    let client = rooms(&relay);
    let room = client.create_room(2, None).await.unwrap();
    let mut first = client.join(&room.room_uuid, JoinOptions::slot(0)).await.unwrap();
    let other = client.join(&room.room_uuid, JoinOptions::slot(1)).await.unwrap();
    other.send_to(0, &b"before"[..]).await.unwrap();
    assert_eq!(next_message(&mut first).await.payload, bytes_of(b"before"));

    let saved: ResumeState = first.resume_state();
    assert_eq!(saved.last_seq, 1);
    let resume = JoinOptions { resume: Some(saved), ..JoinOptions::default() };
    let mut second = client.join(&room.room_uuid, resume).await.unwrap();
    assert!(second.welcome().resumed);
    assert_eq!(second.slot(), 0);

    let (extra, err) = drain(&mut first).await;
    assert!(extra.is_empty());
    assert!(matches!(err, Some(Error::Replaced { .. })), "old connection closed with 4001, got {err:?}");

    other.send_to(0, &b"after"[..]).await.unwrap();
    assert_eq!(next_message(&mut second).await, msg(1, 2, false, b"after"));
}

#[tokio::test]
async fn mailbox_asks_in_flight_before_and_after_publish() {
    const N: u8 = 100;
    let relay = open_relay().await;
    let url = relay.ws_url("");
    let asker = MailboxClient::connect(&url, &ClientConfig::default()).await.unwrap();
    let publisher = MailboxClient::connect(&url, &ClientConfig::default()).await.unwrap();
    let id = |i: u8, tag: u8| {
        let mut id = [tag; 32];
        id[0] = i;
        id
    };

    // Ask before publish: N asks in flight, then the publishes answer them.
    let asks: Vec<_> = (0..N).map(|i| tokio::spawn(asker.ask(id(i, 1), 30))).collect();
    // A second ask for the same ID on the same connection gets the message too.
    let twin = tokio::spawn(asker.ask(id(7, 1), 30));
    for i in 0..N {
        publisher.publish(id(i, 1), 60, vec![i; 3]).await.unwrap();
    }
    for (i, ask) in asks.into_iter().enumerate() {
        let got = tokio::time::timeout(STEP_TIMEOUT, ask).await.unwrap().unwrap().unwrap();
        assert_eq!(&got[..], &[i as u8; 3][..]);
    }
    assert_eq!(&tokio::time::timeout(STEP_TIMEOUT, twin).await.unwrap().unwrap().unwrap()[..], &[7; 3]);

    // Publish before ask: stored, then every ask is answered at once.
    for i in 0..N {
        publisher.publish(id(i, 2), 60, vec![i, 2]).await.unwrap();
    }
    let asks: Vec<_> = (0..N).map(|i| asker.ask(id(i, 2), 30)).collect();
    let answers =
        tokio::time::timeout(STEP_TIMEOUT, futures_util::future::try_join_all(asks)).await.unwrap().unwrap();
    for (i, got) in answers.iter().enumerate() {
        assert_eq!(&got[..], &[i as u8, 2][..]);
    }

    // One receiver: the first ask takes it, a later one finds nothing.
    publisher.publish_once(id(0, 3), 60, &b"once"[..]).await.unwrap();
    assert_eq!(&asker.ask(id(0, 3), 5).await.unwrap()[..], b"once");
    assert!(matches!(publisher.ask(id(0, 3), 1).await, Err(Error::AskExpired(_))));
    // An ID nobody publishes expires on the client too.
    assert!(matches!(asker.ask(id(9, 9), 1).await, Err(Error::AskExpired(_))));
}

#[tokio::test]
async fn raw_mailbox_frames_round_trip_byte_for_byte() {
    let relay = open_relay().await;
    let mut pubr =
        RawMailbox::connect(&relay.ws_url("/v1/msg-relay"), &ClientConfig::default()).await.unwrap();
    let mut ask = RawMailbox::connect(&relay.ws_url(""), &ClientConfig::default()).await.unwrap();
    let frame = relay_client::MailboxFrame::publish([5; 32], 60, 0, &b"raw payload"[..]).encode();
    ask.send(relay_client::MailboxFrame::ask([5; 32], 30).encode()).await.unwrap();
    pubr.send(frame.clone()).await.unwrap();
    let got = tokio::time::timeout(STEP_TIMEOUT, ask.next()).await.unwrap().expect("a frame");
    assert_eq!(got, frame, "the stored frame comes back as published");
}

#[tokio::test]
async fn room_refusals_map_to_their_error_variants() {
    let relay = open_relay().await;
    let client = rooms(&relay);

    let e = client.join("00000000-0000-4000-8000-000000000000", JoinOptions::default()).await.unwrap_err();
    assert!(matches!(e, Error::RoomNotFound { .. }), "{e:?}");
    assert_eq!(e.http_status(), Some(404));
    let e = client.join("not-a-room", JoinOptions::default()).await.unwrap_err();
    assert!(matches!(e, Error::BadRoomId { .. }), "{e:?}");
    let e = client.create_room(1, None).await.unwrap_err();
    assert!(matches!(&e, Error::BadRequest { code, .. } if code == "bad_request"), "{e:?}");

    let room = client.create_room(2, None).await.unwrap();
    let _one = client.join(&room.room_uuid, JoinOptions::slot(1)).await.unwrap();
    let e = client.join(&room.room_uuid, JoinOptions::slot(1)).await.unwrap_err();
    assert!(matches!(e, Error::SlotTaken { .. }), "{e:?}");
    let _two = client.join(&room.room_uuid, JoinOptions::default()).await.unwrap();
    let e = client.join(&room.room_uuid, JoinOptions::default()).await.unwrap_err();
    assert!(matches!(e, Error::RoomFull { .. }), "{e:?}");
    let bogus = ResumeState { room_uuid: room.room_uuid.clone(), resume_token: "bogus".into(), last_seq: 0 };
    let e = client.join(&room.room_uuid, JoinOptions { resume: Some(bogus), ..JoinOptions::default() }).await;
    assert!(matches!(e, Err(Error::BadResumeToken { .. })), "{e:?}");
}

#[tokio::test]
async fn missing_or_unknown_api_keys_map_to_unauthorized() {
    // The served router with keys enforced (the binary refuses to start so until its
    // key store is wired in); no key here is known to it.
    let (addr, _state) = serve_in_process(ServerConfig::default()).await.unwrap();
    let url = format!("ws://{addr}");
    let no_key = RoomClient::new(&url, ClientConfig::default()).unwrap();
    let e = no_key.create_room(2, None).await.unwrap_err();
    assert!(matches!(e, Error::Unauthorized { .. }), "{e:?}");
    for key in [ApiKey::bearer("AAAAAAAAAAAAAAAAAAAAAA=="), ApiKey::query("AAAAAAAAAAAAAAAAAAAA/w==")] {
        let config = ClientConfig { api_key: Some(key), ..ClientConfig::default() };
        let e = RoomClient::new(&url, config.clone()).unwrap().create_room(2, None).await.unwrap_err();
        assert!(matches!(e, Error::Unauthorized { .. }), "{e:?}");
        let e = MailboxClient::connect(&url, &config).await.unwrap_err();
        assert!(matches!(e, Error::Unauthorized { .. }), "{e:?}");
    }
    let e = MailboxClient::connect(&url, &ClientConfig::default()).await.unwrap_err();
    assert!(matches!(e, Error::Unauthorized { .. }), "refused before the upgrade: {e:?}");
}

#[tokio::test]
async fn mailbox_refusals_map_close_codes_1007_and_1009() {
    // A frame shorter than 36 bytes closes with 1007, one over the size limit (1 MiB
    // by default) with 1009.
    let relay = open_relay().await;
    let mut raw = RawMailbox::connect(&relay.ws_url(""), &ClientConfig::default()).await.unwrap();
    raw.send(vec![0; 10]).await.unwrap();
    let end = tokio::time::timeout(STEP_TIMEOUT, raw.next()).await.unwrap();
    assert!(end.is_none());
    assert!(matches!(raw.close_error(), Some(Error::Malformed { .. })), "{:?}", raw.close_error());
    let mut raw = RawMailbox::connect(&relay.ws_url(""), &ClientConfig::default()).await.unwrap();
    let _ = raw.send(vec![1; (1 << 20) + 37]).await;
    let end = tokio::time::timeout(STEP_TIMEOUT, raw.next()).await.unwrap();
    assert!(end.is_none());
    assert!(matches!(raw.close_error(), Some(Error::MessageTooBig { .. })), "{:?}", raw.close_error());
}

#[tokio::test]
async fn wss_to_a_plain_relay_fails_the_tls_handshake() {
    // TLS is really attempted for wss://: a plain-HTTP relay fails the handshake.
    let relay = open_relay().await;
    let tls = RoomClient::new(&format!("wss://{}", relay.addr), ClientConfig::default()).unwrap();
    let e = tls.join("00000000-0000-4000-8000-000000000000", JoinOptions::default()).await.unwrap_err();
    assert!(matches!(e, Error::Tls(_) | Error::Io(_)), "{e:?}");
    assert!(TlsRoots::from_pem(b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n").is_err());
}

#[tokio::test]
async fn server_shutdown_reaches_the_room_stream_as_1001() {
    let relay = open_relay().await;
    let client = rooms(&relay);
    let room = client.create_room(2, None).await.unwrap();
    let mut conn = client.join(&room.room_uuid, JoinOptions::default()).await.unwrap();
    relay.signal(15);
    let (_, err) = drain(&mut conn).await;
    assert!(matches!(err, Some(Error::ServerShutdown { .. })), "{err:?}");
}

#[tokio::test]
async fn round_based_echo_runs_three_parties_over_a_room() {
    let relay = open_relay().await;
    let totals = round_based_echo::run_echo_room(&relay.ws_url(""), ClientConfig::default()).await.unwrap();
    assert_eq!(totals, [3021, 3021, 3021]);
}

#[tokio::test]
async fn rooms_and_mailbox_over_tls_with_a_given_ca() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::generate("relay-client test");
    let (chain, key) = cert.write_to(dir.path());
    let relay = RelayProcess::start(&[
        "--insecure-api-keys-not-enforced",
        "--chain-path",
        chain.to_str().unwrap(),
        "--key-path",
        key.to_str().unwrap(),
    ])
    .await
    .unwrap();
    let port = relay.addr.port();
    // The relay's own certificate is self-signed: trust it as the CA, from a PEM file.
    let config = ClientConfig { tls: TlsRoots::from_pem_file(&chain).unwrap(), ..ClientConfig::default() };

    // https:// for the REST call, wss:// for the WebSockets, both to `localhost`.
    let https = RoomClient::new(&format!("https://localhost:{port}"), config.clone()).unwrap();
    let room = https.create_room(2, None).await.expect("create over https");
    let wss_url = format!("wss://localhost:{port}");
    let wss = RoomClient::new(&wss_url, config.clone()).unwrap();
    let p0 = wss.join(&room.room_uuid, JoinOptions::slot(0)).await.expect("join over wss");
    let mut p1 = wss.join(&room.room_uuid, JoinOptions::slot(1)).await.expect("join over wss");
    p0.send_to(1, &b"over tls"[..]).await.unwrap();
    assert_eq!(next_message(&mut p1).await, msg(0, 1, false, b"over tls"));

    let pem_config = ClientConfig { tls: TlsRoots::from_pem(cert.cert_pem.as_bytes()).unwrap(), ..config };
    let mailbox = MailboxClient::connect(&wss_url, &pem_config).await.expect("mailbox over wss");
    let ask = mailbox.ask([3; 32], 10);
    mailbox.publish([3; 32], 10, &b"sealed"[..]).await.unwrap();
    assert_eq!(&tokio::time::timeout(STEP_TIMEOUT, ask).await.unwrap().unwrap()[..], b"sealed");

    // The webpki roots do not know this certificate, nor does another CA: a TLS error.
    let untrusted = RoomClient::new(&format!("https://localhost:{port}"), ClientConfig::default()).unwrap();
    let e = untrusted.create_room(2, None).await.unwrap_err();
    assert!(matches!(e, Error::Tls(rustls::Error::InvalidCertificate(_))), "{e:?}");
    let other = TestCert::generate("someone else");
    let other = ClientConfig {
        tls: TlsRoots::from_pem(other.cert_pem.as_bytes()).unwrap(),
        ..ClientConfig::default()
    };
    let e = RoomClient::new(&wss_url, other).unwrap().join(&room.room_uuid, JoinOptions::default()).await;
    assert!(matches!(e, Err(Error::Tls(rustls::Error::InvalidCertificate(_)))), "{e:?}");
}

#[tokio::test]
async fn party_tokens_status_and_abort_through_the_client() {
    let relay = open_relay().await;
    let client = rooms(&relay);
    let room = client.create_room_with_party_tokens(3, None).await.unwrap();
    assert_eq!(room.party_tokens.len(), 3);
    assert!(!format!("{room:?}").contains(room.party_tokens[0].as_str()), "tokens stay out of Debug");
    let e = client.join(&room.room_uuid, JoinOptions::slot(0)).await.unwrap_err();
    assert!(matches!(&e, Error::Forbidden { code, .. } if code == "bad_party_token"), "{e:?}");
    assert_eq!(e.error_code(), Some(relay_proto::ErrorCode::BadPartyToken));
    let mut parties = Vec::new();
    for slot in [2u16, 0, 1] {
        let options = JoinOptions::party_token(room.party_tokens[usize::from(slot)].clone());
        let p = client.join(&room.room_uuid, options).await.unwrap();
        assert_eq!(p.slot(), slot);
        parties.push(p);
    }
    let [mut c, mut a, mut b] = <[_; 3]>::try_from(parties).unwrap();
    for p in [&a, &b, &c] {
        tokio::time::timeout(STEP_TIMEOUT, p.wait_ready()).await.unwrap().unwrap();
    }
    a.send_to(1, &b"round 1"[..]).await.unwrap();
    assert_eq!(next_message(&mut b).await.payload, &b"round 1"[..]);

    // Who is B waiting for? A sent one frame, C none.
    b.request_status().await.unwrap();
    loop {
        if let RoomEvent::Status { present, sent, idle_ms } = next_event(&mut b).await {
            assert_eq!(present, vec![0, 1, 2]);
            assert_eq!(sent, vec![1, 0, 0]);
            assert_eq!(idle_ms.len(), 3);
            break;
        }
    }
    // A refused frame is named by this party's own count: B's first data frame.
    b.send_to(1, &b"to myself"[..]).await.unwrap();
    loop {
        if let RoomEvent::RelayError { code, frame, .. } = next_event(&mut b).await {
            assert_eq!((code.as_str(), frame), ("bad_destination", Some(1)));
            break;
        }
    }

    c.abort("slot 0 sent a bad share").await.unwrap();
    for p in [&mut a, &mut b] {
        let mut told = false;
        let err = loop {
            match tokio::time::timeout(STEP_TIMEOUT, p.next()).await.expect("the abort arrives") {
                Some(Ok(RoomEvent::Aborted { slot, reason })) => {
                    assert_eq!((slot, reason.as_str()), (2, "slot 0 sent a bad share"));
                    told = true;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break e,
                None => panic!("the stream ended without an error"),
            }
        };
        assert!(told, "the aborted event came before the close");
        assert!(
            matches!(&err, Error::Aborted { slot: Some(2), reason } if reason == "slot 0 sent a bad share"),
            "{err:?}"
        );
        assert_eq!(err.close_code(), Some(4002));
    }
    let (_, err) = drain(&mut c).await;
    assert!(matches!(err, Some(Error::Aborted { slot: Some(2), .. })), "{err:?}");
}

#[tokio::test]
async fn frames_kept_for_a_resend_are_bounded_without_surfacing_the_clients_own_status_requests() {
    let relay = open_relay().await;
    let client = rooms(&relay);
    let room = client.create_room(2, None).await.unwrap();
    // Past 4 kept frames the client asks the relay, itself, how many it took.
    let options = JoinOptions { slot: Some(0), send_queue: 4, ..JoinOptions::default() };
    let mut a = client.join(&room.room_uuid, options).await.unwrap();
    let mut b = client.join(&room.room_uuid, JoinOptions::slot(1)).await.unwrap();
    for i in 0..50u32 {
        a.send_to(1, i.to_le_bytes().to_vec()).await.unwrap();
    }
    a.request_status().await.unwrap();
    for i in 0..50u32 {
        let m = next_message(&mut b).await;
        assert_eq!(m.payload[..], i.to_le_bytes());
    }
    // Only the application's own request is answered in its stream.
    let mut statuses = Vec::new();
    loop {
        match next_event(&mut a).await {
            RoomEvent::Status { sent, .. } => {
                statuses.push(sent);
                a.leave().await.unwrap();
            }
            RoomEvent::Closing { .. } => break,
            _ => {}
        }
    }
    assert_eq!(statuses, vec![vec![50, 0]]);
}
