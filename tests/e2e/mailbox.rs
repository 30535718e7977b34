//! End-to-end tests of the mailbox (docs/protocol.md section 4) over real sockets:
//! frames are built byte by byte from the documented layout, every wait is bounded.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use crate::support::{
    RelayProcess, STEP_TIMEOUT, ServerConfig, Ws, dkls_message_id, http_request, open_config, refusal_status,
    serve_in_process, ws_connect,
};
use futures_util::{SinkExt, StreamExt};
use relay_core::{Limits, RoomId};
use tokio_tungstenite::tungstenite::Message;

/// How long a test waits to be sure something does not arrive.
const QUIET: Duration = Duration::from_millis(700);

/// A frame laid out by hand: `[0..32)` id, `[32..34)` ttl u16 LE, `[34..36)` flags u16
/// LE, then the payload. Independent of the crate's encoder on purpose.
pub(crate) fn frame(id: [u8; 32], ttl_secs: u16, flags: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(36 + payload.len());
    f.extend_from_slice(&id);
    f.push((ttl_secs & 0xff) as u8);
    f.push((ttl_secs >> 8) as u8);
    f.push((flags & 0xff) as u8);
    f.push((flags >> 8) as u8);
    f.extend_from_slice(payload);
    f
}

pub(crate) fn ask(id: [u8; 32], ttl_secs: u16) -> Vec<u8> {
    frame(id, ttl_secs, 0, &[])
}

pub(crate) fn id_of(tag: &str) -> [u8; 32] {
    let mut id = [0u8; 32];
    for (i, b) in tag.bytes().take(32).enumerate() {
        id[i] = b;
    }
    id
}

pub(crate) async fn send(ws: &mut Ws, bytes: Vec<u8>) {
    tokio::time::timeout(STEP_TIMEOUT, ws.send(Message::Binary(bytes.into())))
        .await
        .expect("send timed out")
        .expect("send failed");
}

/// The next data or close message, skipping pings and pongs.
pub(crate) async fn next_message(ws: &mut Ws, wait: Duration) -> Option<Message> {
    tokio::time::timeout(wait, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(m)) => return Some(m),
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
    .ok()
    .flatten()
}

pub(crate) async fn recv_binary(ws: &mut Ws) -> Vec<u8> {
    match next_message(ws, STEP_TIMEOUT).await {
        Some(Message::Binary(b)) => b.to_vec(),
        other => panic!("expected a binary frame, got {other:?}"),
    }
}

/// Asserts nothing arrives within [`QUIET`].
pub(crate) async fn expect_nothing(ws: &mut Ws) {
    if let Ok(m) = tokio::time::timeout(QUIET, next_message(ws, QUIET)).await {
        assert!(m.is_none(), "expected nothing, got {m:?}");
    }
}

/// Reads until the relay's close frame and returns its code and reason.
pub(crate) async fn expect_close(ws: &mut Ws) -> (u16, String) {
    loop {
        match next_message(ws, STEP_TIMEOUT).await {
            Some(Message::Close(Some(c))) => return (u16::from(c.code), c.reason.to_string()),
            Some(Message::Binary(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

async fn open_server(config: ServerConfig) -> SocketAddr {
    serve_in_process(config).await.expect("serve").0
}

fn room_path(room: &RoomId) -> String {
    format!("/v1/rooms/{room}/msg-relay")
}

pub(crate) async fn connect(addr: SocketAddr, path: &str) -> Ws {
    tokio::time::timeout(STEP_TIMEOUT, ws_connect(addr, path))
        .await
        .expect("connect timed out")
        .expect("connect")
}

#[tokio::test]
async fn ask_before_publish_gets_the_frame_byte_for_byte() {
    let addr = open_server(open_config()).await;
    let mut asker = connect(addr, "/v1/msg-relay").await;
    let mut publisher = connect(addr, "/v1/msg-relay").await;
    // ASK: 32 bytes of id 0x11, ttl 10 s (0x000a LE), flags 0.
    let mut ask_frame = vec![0x11u8; 32];
    ask_frame.extend_from_slice(&[0x0a, 0x00, 0x00, 0x00]);
    send(&mut asker, ask_frame).await;
    // PUB: same id, ttl 10 s, flags 0, payload "hello".
    let mut pub_frame = vec![0x11u8; 32];
    pub_frame.extend_from_slice(&[0x0a, 0x00, 0x00, 0x00, b'h', b'e', b'l', b'l', b'o']);
    send(&mut publisher, pub_frame.clone()).await;
    assert_eq!(recv_binary(&mut asker).await, pub_frame);
    expect_nothing(&mut publisher).await;
}

#[tokio::test]
async fn publish_before_ask_is_stored_for_every_asker() {
    let addr = open_server(open_config()).await;
    let mut publisher = connect(addr, "/v1/msg-relay").await;
    let msg = frame(id_of("stored"), 30, 0, b"kept for everyone");
    send(&mut publisher, msg.clone()).await;
    // A connection that arrives after the publisher left still gets it.
    drop(publisher);
    for _ in 0..2 {
        let mut asker = connect(addr, "/v1/msg-relay").await;
        send(&mut asker, ask(id_of("stored"), 30)).await;
        assert_eq!(recv_binary(&mut asker).await, msg);
    }
}

#[tokio::test]
async fn a_second_publish_of_an_id_is_ignored() {
    let addr = open_server(open_config()).await;
    let mut a = connect(addr, "/v1/msg-relay").await;
    let mut b = connect(addr, "/v1/msg-relay").await;
    let first = frame(id_of("dup"), 30, 0, b"first");
    send(&mut a, first.clone()).await;
    send(&mut b, frame(id_of("dup"), 30, 0, b"second")).await;
    send(&mut b, ask(id_of("dup"), 30)).await;
    assert_eq!(recv_binary(&mut b).await, first);
    expect_nothing(&mut b).await;
}

#[tokio::test]
async fn messages_expire_after_their_ttl() {
    let addr = open_server(open_config()).await;
    let mut publisher = connect(addr, "/v1/msg-relay").await;
    let mut asker = connect(addr, "/v1/msg-relay").await;
    send(&mut publisher, frame(id_of("short"), 1, 0, b"one second")).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    send(&mut asker, ask(id_of("short"), 1)).await;
    expect_nothing(&mut asker).await;
    // The ID is free again: a new publish is stored and answered.
    let fresh = frame(id_of("short"), 30, 0, b"fresh");
    send(&mut publisher, fresh.clone()).await;
    send(&mut asker, ask(id_of("short"), 30)).await;
    assert_eq!(recv_binary(&mut asker).await, fresh);
}

#[tokio::test]
async fn unanswered_asks_expire_silently() {
    let addr = open_server(open_config()).await;
    let mut asker = connect(addr, "/v1/msg-relay").await;
    let mut publisher = connect(addr, "/v1/msg-relay").await;
    send(&mut asker, ask(id_of("abort-tag"), 1)).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let late = frame(id_of("abort-tag"), 30, 0, b"too late");
    send(&mut publisher, late.clone()).await;
    expect_nothing(&mut asker).await;
    // The connection is fine and the message was stored: asking again gets it.
    send(&mut asker, ask(id_of("abort-tag"), 30)).await;
    assert_eq!(recv_binary(&mut asker).await, late);
}

#[tokio::test]
async fn one_receiver_messages_are_delivered_once() {
    let addr = open_server(open_config()).await;
    let mut publisher = connect(addr, "/v1/msg-relay").await;
    let mut first = connect(addr, "/v1/msg-relay").await;
    let mut second = connect(addr, "/v1/msg-relay").await;
    // Flags 0x8000 little-endian: bytes 0x00, 0x80.
    let msg = frame(id_of("once"), 30, 0x8000, b"for one");
    assert_eq!(&msg[34..36], &[0x00, 0x80]);
    send(&mut publisher, msg.clone()).await;
    send(&mut first, ask(id_of("once"), 30)).await;
    assert_eq!(recv_binary(&mut first).await, msg);
    send(&mut second, ask(id_of("once"), 30)).await;
    expect_nothing(&mut second).await;
}

#[tokio::test]
async fn two_rooms_never_meet() {
    let (addr, state) = serve_in_process(open_config()).await.expect("serve");
    let room_a = state.rooms().create(2, None, 0).expect("room a").id;
    let room_b = state.rooms().create(2, None, 0).expect("room b").id;
    let mut in_a = connect(addr, &room_path(&room_a)).await;
    let mut in_b = connect(addr, &room_path(&room_b)).await;
    let mut also_b = connect(addr, &room_path(&room_b)).await;
    let mut tenant = connect(addr, "/v1/msg-relay").await;
    send(&mut in_a, ask(id_of("shared-id"), 30)).await;
    send(&mut tenant, ask(id_of("shared-id"), 30)).await;
    let msg = frame(id_of("shared-id"), 30, 0, b"room b only");
    send(&mut in_b, msg.clone()).await;
    send(&mut also_b, ask(id_of("shared-id"), 30)).await;
    assert_eq!(recv_binary(&mut also_b).await, msg);
    expect_nothing(&mut in_a).await;
    expect_nothing(&mut tenant).await;
}

#[tokio::test]
async fn many_asks_in_flight_are_all_answered() {
    let addr = open_server(open_config()).await;
    let mut asker = connect(addr, "/v1/msg-relay").await;
    let mut publisher = connect(addr, "/v1/msg-relay").await;
    let n = 2000u32;
    let id = |i: u32| {
        let mut id = [0xeeu8; 32];
        id[..4].copy_from_slice(&i.to_le_bytes());
        id
    };
    for i in 0..n {
        asker.feed(Message::Binary(ask(id(i), 60).into())).await.unwrap();
    }
    asker.flush().await.unwrap();
    // Wait until the relay has seen the asks: a marker ask answered by a stored message.
    send(&mut publisher, frame(id_of("marker"), 60, 0, b"m")).await;
    send(&mut asker, ask(id_of("marker"), 60)).await;
    assert_eq!(recv_binary(&mut asker).await[36..], *b"m");
    for i in 0..n {
        publisher.feed(Message::Binary(frame(id(i), 60, 0, &i.to_le_bytes()).into())).await.unwrap();
    }
    publisher.flush().await.unwrap();
    let mut seen = HashSet::new();
    for _ in 0..n {
        let f = recv_binary(&mut asker).await;
        assert_eq!(f.len(), 40);
        assert_eq!(f[..32], id(u32::from_le_bytes(f[36..40].try_into().unwrap())));
        seen.insert(u32::from_le_bytes(f[36..40].try_into().unwrap()));
    }
    assert_eq!(seen.len(), n as usize);
    expect_nothing(&mut asker).await;
}

#[tokio::test]
async fn frames_shorter_than_36_bytes_close_with_1007() {
    let addr = open_server(open_config()).await;
    let mut ws = connect(addr, "/v1/msg-relay").await;
    send(&mut ws, vec![0u8; 35]).await;
    let (code, reason) = expect_close(&mut ws).await;
    assert_eq!((code, reason.as_str()), (1007, "frame shorter than 36 bytes"));
}

#[tokio::test]
async fn text_frames_close_with_1007() {
    let addr = open_server(open_config()).await;
    let mut ws = connect(addr, "/v1/msg-relay").await;
    ws.send(Message::Text("hello".into())).await.unwrap();
    let (code, reason) = expect_close(&mut ws).await;
    assert_eq!(code, 1007);
    assert!(reason.contains("binary"), "{reason}");
}

#[tokio::test]
async fn oversized_frames_close_with_1009() {
    let limits = Limits { max_message_bytes: 1024, ..Limits::default() };
    let addr = open_server(ServerConfig { limits, ..open_config() }).await;
    let mut ws = connect(addr, "/v1/msg-relay").await;
    send(&mut ws, frame(id_of("fits"), 10, 0, &[1u8; 1024 - 36])).await;
    send(&mut ws, frame(id_of("big"), 10, 0, &[1u8; 4096])).await;
    let (code, _) = expect_close(&mut ws).await;
    assert_eq!(code, 1009);
}

#[tokio::test]
async fn too_many_pending_asks_close_with_1013() {
    let limits = Limits { max_pending_asks: 4, ..Limits::default() };
    let addr = open_server(ServerConfig { limits, ..open_config() }).await;
    let mut ws = connect(addr, "/v1/msg-relay").await;
    for i in 0..4u8 {
        send(&mut ws, ask([i; 32], 30)).await;
    }
    expect_nothing(&mut ws).await;
    send(&mut ws, ask([9; 32], 30)).await;
    let (code, reason) = expect_close(&mut ws).await;
    assert_eq!((code, reason.as_str()), (1013, "too many pending asks"));
}

#[tokio::test]
async fn namespace_storage_over_quota_closes_with_1013() {
    let limits = Limits { max_namespace_held_bytes: 1000, ..Limits::default() };
    let addr = open_server(ServerConfig { limits, ..open_config() }).await;
    let mut ws = connect(addr, "/v1/msg-relay").await;
    send(&mut ws, frame(id_of("a"), 30, 0, &[0u8; 600])).await;
    send(&mut ws, frame(id_of("b"), 30, 0, &[0u8; 600])).await;
    let (code, reason) = expect_close(&mut ws).await;
    assert_eq!((code, reason.as_str()), (1013, "namespace storage full"));
}

#[tokio::test]
async fn refusals_before_the_upgrade_are_json() {
    let addr = open_server(open_config()).await;
    let err = ws_connect(addr, "/v1/rooms/not-a-room/msg-relay").await.unwrap_err();
    assert_eq!(refusal_status(&err).map(|s| s.as_u16()), Some(400));
    let resp = http_request(addr, "GET", "/v1/rooms/NOT-A-ROOM/msg-relay", &[], b"").await.unwrap();
    assert_eq!(resp.status.as_u16(), 400);
    assert_eq!(resp.json()["error"]["code"], "bad_room_id");
    let resp = http_request(addr, "GET", "/v1/msg-relay", &[], b"").await.unwrap();
    assert_eq!(resp.status.as_u16(), 426);
    assert_eq!(resp.json()["error"]["code"], "upgrade_required");
}

#[tokio::test]
async fn keys_are_required_when_enforced() {
    let (addr, state) = serve_in_process(ServerConfig::default()).await.expect("serve");
    let err = ws_connect(addr, "/v1/msg-relay").await.unwrap_err();
    assert_eq!(refusal_status(&err).map(|s| s.as_u16()), Some(401));
    // The room-scoped mailbox needs only the room ID.
    let room = state.rooms().create(2, None, 0).expect("room").id;
    let mut ws = connect(addr, &room_path(&room)).await;
    send(&mut ws, ask(id_of("x"), 1)).await;
    expect_nothing(&mut ws).await;
}

#[tokio::test]
async fn shutdown_closes_mailbox_connections_with_1001() {
    let (addr, state) = serve_in_process(open_config()).await.unwrap();
    let mut ws = connect(addr, "/v1/msg-relay").await;
    send(&mut ws, ask(id_of("pending"), 30)).await;
    state.begin_shutdown();
    let (code, reason) = expect_close(&mut ws).await;
    assert_eq!((code, reason.as_str()), (1001, "server shutting down"));
}

/// A DKLs-shaped run through the real binary: three parties, four rounds; each round
/// every party publishes to each other under an ID derived from (session, round, from,
/// to) and asks for the IDs addressed to it, and also asks for an abort tag that never
/// comes.
#[tokio::test]
async fn whole_protocol_three_parties_four_rounds_through_the_binary() {
    let relay = RelayProcess::start(&["--insecure-api-keys-not-enforced"]).await.expect("start relay");
    const PARTIES: u8 = 3;
    const ROUNDS: u8 = 4;
    let session = RoomId::generate(None);
    let derive = move |round: u8, from: u8, to: u8| dkls_message_id(&session, round, from, to);
    let payload = |round: u8, from: u8, to: u8| format!("round {round}: {from} -> {to}").into_bytes();

    let mut parties = Vec::new();
    for me in 0..PARTIES {
        let mut ws = connect(relay.addr, "/v1/msg-relay").await;
        parties.push(tokio::spawn(async move {
            send(&mut ws, ask(derive(0xff, 0xff, me), 60)).await; // abort tag: never published
            for round in 0..ROUNDS {
                let flags = if round % 2 == 0 { 0x8000 } else { 0 };
                for to in (0..PARTIES).filter(|&p| p != me) {
                    send(&mut ws, frame(derive(round, me, to), 60, flags, &payload(round, me, to))).await;
                    send(&mut ws, ask(derive(round, to, me), 60)).await;
                }
                let mut got = HashSet::new();
                for _ in 1..PARTIES {
                    let f = recv_binary(&mut ws).await;
                    let from = f[17];
                    assert_eq!(f, frame(derive(round, from, me), 60, flags, &payload(round, from, me)));
                    got.insert(from);
                }
                assert_eq!(got.len(), usize::from(PARTIES - 1), "party {me} round {round}");
            }
            ws.close(None).await.ok();
        }));
    }
    for party in parties {
        tokio::time::timeout(STEP_TIMEOUT * 2, party).await.expect("protocol finished").expect("party ok");
    }
}

/// A receiver that stops reading is closed once its queue of `send_queue_frames` fills,
/// instead of the relay buffering everything published for it.
#[tokio::test]
async fn a_receiver_that_stops_reading_is_closed_as_a_slow_consumer() {
    let limits = Limits { send_queue_frames: 8, ..Limits::default() };
    let addr = open_server(ServerConfig { limits, ..open_config() }).await;
    let mut reader = connect(addr, "/v1/msg-relay").await;
    let mut publisher = connect(addr, "/v1/msg-relay").await;
    let total = 400u32;
    let id = |i: u32| {
        let mut id = [0x5cu8; 32];
        id[..4].copy_from_slice(&i.to_le_bytes());
        id
    };
    for i in 0..total {
        reader.feed(Message::Binary(ask(id(i), 60).into())).await.unwrap();
    }
    reader.flush().await.unwrap();
    // 400 x 32 KiB is far more than the socket buffers between relay and reader hold.
    let payload = vec![0xabu8; 32 << 10];
    for i in 0..total {
        let sent = tokio::time::timeout(
            STEP_TIMEOUT,
            publisher.send(Message::Binary(frame(id(i), 60, 0, &payload).into())),
        )
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            panic!("the publisher must not be held up by a stalled receiver (frame {i})");
        }
    }
    // Now read: some frames, then the end of the connection, never all of them.
    let mut received = 0u32;
    let end = loop {
        match next_message(&mut reader, STEP_TIMEOUT).await {
            Some(Message::Binary(_)) => received += 1,
            other => break other,
        }
    };
    assert!(received < total, "all {total} frames were buffered for a stalled reader");
    if let Some(Message::Close(Some(c))) = end {
        assert_eq!((u16::from(c.code), c.reason.as_str()), (1013, "slow consumer"));
    } else {
        assert!(end.is_none(), "expected a close or the end of the stream, got {end:?}");
    }
}

/// A frame larger than the socket buffers between relay and reader, to a reader that
/// pauses past the write timeout: the relay gives up on the write with part of the frame
/// on the wire, so it lets the frame finish (within its close wait) before its close
/// frame. The reader gets the whole frame and then a close, never half a frame followed
/// by something else.
#[tokio::test]
async fn a_write_given_up_mid_frame_still_ends_with_whole_frames() {
    let limits = Limits { max_message_bytes: 24 << 20, ..Limits::default() };
    let config = ServerConfig { limits, ws_idle_timeout: Duration::from_millis(800), ..open_config() };
    let addr = open_server(config).await;
    let mut reader = connect(addr, "/v1/msg-relay").await;
    let mut publisher = connect(addr, "/v1/msg-relay").await;
    let id = id_of("torn");
    send(&mut reader, ask(id, 60)).await;
    tokio::time::sleep(QUIET).await;
    // 14 MiB: more than loopback's socket buffers hold (tcp_wmem and tcp_rmem allow 4 MiB
    // and 6 MiB by default), within the test client's 16 MiB message limit.
    let payload = vec![0x3cu8; 14 << 20];
    send(&mut publisher, frame(id, 60, 0, &payload)).await;
    // Past the write timeout, inside the relay's close wait.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut whole = 0;
    loop {
        // After the frame: a close if the relay gave up on the write, or nothing at all
        // if the socket buffers took the whole frame in time (nothing was given up).
        let wait = if whole == 0 { STEP_TIMEOUT } else { QUIET * 3 };
        let Ok(next) = tokio::time::timeout(wait, reader.next()).await else {
            assert_eq!(whole, 1, "the frame never arrived");
            break;
        };
        match next {
            Some(Ok(Message::Binary(b))) => {
                assert_eq!(b.len(), 36 + payload.len(), "a binary frame arrived cut");
                whole += 1;
            }
            Some(Ok(Message::Close(Some(c)))) => {
                assert_eq!((u16::from(c.code), c.reason.as_str()), (1013, "slow consumer"));
                break;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(other)) => panic!("unexpected {other:?}"),
            Some(Err(e)) => panic!("the stream broke instead of closing: {e}"),
            None => panic!("the relay dropped the connection without a close"),
        }
    }
    assert_eq!(whole, 1);
}
