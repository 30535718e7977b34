//! Hostile clients against the real binary on 127.0.0.1, each bounded in count and
//! time: a connection flood past `--max-connections`, drip-fed request heads, an
//! unfinished WebSocket handshake, silent and half-closed peers, frames at and over
//! `--max-message-bytes`, unmasked client frames, invalid UTF-8 text, a flood of asks
//! that are never answered, and readers that stop reading. After each, the relay is
//! still up and relays a message in a fresh room, and its resident memory (VmRSS)
//! stayed within a bound derived from the configured limits. docs/RELIABILITY.md lists
//! what each covers; the figures printed (run with `--no-capture`) are quoted there.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::{
    RelayProcess, STEP_TIMEOUT, ServerConfig, Ws, http_request, open_config, post_json, read_until_closed,
    serve_in_process, ws_connect,
};
use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use hyper::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const OPEN: &str = "--insecure-api-keys-not-enforced";

/// How long the server may take to cut off a client its timeouts (1 s here) apply to.
const CUT_OFF_WITHIN: Duration = Duration::from_secs(6);

async fn start(extra: &[&str]) -> RelayProcess {
    let mut args = vec![OPEN];
    args.extend_from_slice(extra);
    RelayProcess::start(&args).await.unwrap()
}

/// The resident set size of process `pid`, in KiB, from `/proc/<pid>/status`.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .expect("VmRSS line")
}

async fn create_room(addr: SocketAddr, size: u16) -> String {
    let resp = post_json(addr, "/v1/rooms", &[], &json!({"room_size": size})).await.unwrap();
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text());
    resp.json()["room_uuid"].as_str().unwrap().to_owned()
}

/// The next frame that is not a ping or pong, or `None` when the stream ends.
async fn recv(ws: &mut Ws) -> anyhow::Result<Option<Message>> {
    loop {
        match tokio::time::timeout(STEP_TIMEOUT, ws.next()).await.context("no frame in time")? {
            None => return Ok(None),
            Some(Err(e)) => bail!("socket error: {e}"),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(m)) => return Ok(Some(m)),
        }
    }
}

async fn join(addr: SocketAddr, room: &str) -> Ws {
    let mut ws = tokio::time::timeout(STEP_TIMEOUT, ws_connect(addr, &format!("/v1/rooms/{room}")))
        .await
        .expect("join in time")
        .expect("join");
    let welcome = recv(&mut ws).await.unwrap();
    assert!(matches!(&welcome, Some(Message::Text(t)) if t.contains("welcome")), "{welcome:?}");
    ws
}

/// Waits for the next data frame and returns its payload (after the 12-byte header).
async fn recv_payload(ws: &mut Ws) -> anyhow::Result<Vec<u8>> {
    loop {
        match recv(ws).await? {
            Some(Message::Binary(b)) => return Ok(b[12..].to_vec()),
            Some(Message::Text(_)) => {}
            other => bail!("expected data, got {other:?}"),
        }
    }
}

/// Sends `payload` from `from` to slot `to` and checks that `receiver` gets it.
async fn relay_one(from: &mut Ws, to: u16, receiver: &mut Ws, payload: &[u8]) -> anyhow::Result<()> {
    let mut frame = to.to_le_bytes().to_vec();
    frame.extend_from_slice(payload);
    tokio::time::timeout(STEP_TIMEOUT, from.send(Message::binary(frame))).await??;
    let got = recv_payload(receiver).await?;
    anyhow::ensure!(got == payload, "relayed payload differs");
    Ok(())
}

/// The relay still serves: `/healthz` answers 200 and a fresh room of two relays a
/// message each way, every step within [`STEP_TIMEOUT`].
async fn assert_serving(addr: SocketAddr) {
    let health = http_request(addr, "GET", "/healthz", &[], b"").await.expect("healthz");
    assert_eq!(health.status, StatusCode::OK);
    let room = create_room(addr, 2).await;
    let mut a = join(addr, &room).await;
    let mut b = join(addr, &room).await;
    relay_one(&mut a, 1, &mut b, b"ping from a").await.expect("a -> b in a fresh room");
    relay_one(&mut b, 0, &mut a, b"pong from b").await.expect("b -> a in a fresh room");
}

// ---- A raw WebSocket client: the frames a well-behaved library never sends ----

/// Opens a TCP connection to `path` and completes the upgrade by hand; returns the
/// stream positioned after the 101 response.
async fn raw_upgrade(addr: SocketAddr, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    while !response.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(STEP_TIMEOUT, stream.read(&mut byte)).await.unwrap().unwrap();
        assert_eq!(n, 1, "connection closed during the upgrade: {}", String::from_utf8_lossy(&response));
        response.push(byte[0]);
    }
    assert!(response.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&response));
    stream
}

/// One client frame, FIN set, with `opcode`, masked with a fixed key when `masked`.
fn client_frame(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x37u8, 0xfa, 0x21, 0x3d];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// Reads server frames until a close frame or the end of the stream, within `within`.
/// Returns the close code (`None` when the server ended the TCP connection without a
/// close frame) and the text frames seen before it.
async fn read_to_close(stream: &mut TcpStream, within: Duration) -> (Option<u16>, Vec<String>) {
    let mut texts = Vec::new();
    let read = async {
        loop {
            let mut head = [0u8; 2];
            if stream.read_exact(&mut head).await.is_err() {
                return None;
            }
            let opcode = head[0] & 0x0f;
            let len = match head[1] & 0x7f {
                126 => {
                    let mut l = [0u8; 2];
                    stream.read_exact(&mut l).await.ok()?;
                    u64::from(u16::from_be_bytes(l))
                }
                127 => {
                    let mut l = [0u8; 8];
                    stream.read_exact(&mut l).await.ok()?;
                    u64::from_be_bytes(l)
                }
                n => u64::from(n),
            };
            let mut payload = vec![0u8; usize::try_from(len).ok()?];
            stream.read_exact(&mut payload).await.ok()?;
            match opcode {
                0x8 if payload.len() >= 2 => return Some(u16::from_be_bytes([payload[0], payload[1]])),
                0x8 => return Some(1005),
                0x1 => texts.push(String::from_utf8_lossy(&payload).into_owned()),
                _ => {}
            }
        }
    };
    let code =
        tokio::time::timeout(within, read).await.expect("the server neither closed nor ended the stream");
    (code, texts)
}

// ---- The tests ----

/// 2,000 connections at once against a cap of 200, while a room of two is open: the
/// excess is accepted and closed without a byte, nothing hangs, the room relays
/// afterwards, and memory stays bounded.
#[tokio::test]
async fn a_connection_flood_past_the_cap_is_refused_and_an_open_room_still_relays() {
    const CAP: usize = 200;
    const ATTEMPTS: usize = 2000;
    // The flood comes from one address, as a botnet's would not: the per-address
    // limits (tested in ratelimit:: and timeouts::) are off, so the global cap is what
    // this test meets.
    let relay = start(&[
        "--max-connections",
        "200",
        "--header-read-timeout-secs",
        "30",
        "--rate-limit-connections-per-ip",
        "0",
        "--rate-limit-requests-per-ip",
        "0",
    ])
    .await;
    let room = create_room(relay.addr, 2).await;
    let mut a = join(relay.addr, &room).await;
    let mut b = join(relay.addr, &room).await;
    let rss_before = rss_kib(relay.pid());

    #[derive(Debug)]
    enum Outcome {
        /// Answered 200: holds its slot (keep-alive) until the flood is over.
        Served(TcpStream),
        /// Accepted and closed without a response.
        Refused,
        /// The kernel refused the connection (listen backlog full).
        ConnectFailed,
    }
    let addr = relay.addr;
    let attempts: Vec<_> = (0..ATTEMPTS)
        .map(|_| {
            tokio::spawn(async move {
                let Ok(Ok(mut stream)) = tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(addr)).await
                else {
                    return Ok(Outcome::ConnectFailed);
                };
                let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await;
                let mut buf = [0u8; 512];
                match tokio::time::timeout(STEP_TIMEOUT, stream.read(&mut buf)).await {
                    Ok(Ok(0) | Err(_)) => Ok(Outcome::Refused),
                    Ok(Ok(n)) if buf[..n].starts_with(b"HTTP/1.1 200") => Ok(Outcome::Served(stream)),
                    Ok(Ok(n)) => Err(format!("unexpected answer {:?}", String::from_utf8_lossy(&buf[..n]))),
                    Err(_) => Err("neither served nor closed within the step timeout".to_owned()),
                }
            })
        })
        .collect();
    let (mut held, mut refused, mut connect_failed) = (Vec::new(), 0usize, 0usize);
    for attempt in attempts {
        match attempt.await.unwrap() {
            Ok(Outcome::Served(s)) => held.push(s),
            Ok(Outcome::Refused) => refused += 1,
            Ok(Outcome::ConnectFailed) => connect_failed += 1,
            Err(e) => panic!("a flood connection was not handled cleanly: {e}"),
        }
    }
    let rss_flood = rss_kib(relay.pid());
    eprintln!(
        "flood: {ATTEMPTS} attempts, cap {CAP}: served {}, refused {refused}, connect failed {connect_failed}; \
         VmRSS {rss_before} KiB before, {rss_flood} KiB during",
        held.len()
    );
    assert!(held.len() <= CAP - 2, "{} served past a cap of {CAP} with 2 held by the room", held.len());
    assert!(refused >= ATTEMPTS - CAP, "only {refused} refused");
    assert_eq!(held.len() + refused + connect_failed, ATTEMPTS);

    // The room opened before the flood is unaffected.
    relay_one(&mut a, 1, &mut b, b"after the flood").await.unwrap();
    relay_one(&mut b, 0, &mut a, b"still here").await.unwrap();
    drop(held);
    // Slots free up as the server notices the closes; retry within a bounded wait.
    tokio::time::timeout(STEP_TIMEOUT, async {
        while http_request(addr, "GET", "/healthz", &[], b"").await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("slots free up after the flood");
    assert_serving(addr).await;
    let rss_after = rss_kib(relay.pid());
    eprintln!("flood: VmRSS {rss_after} KiB after");
    assert!(rss_flood < rss_before + 64 * 1024, "RSS grew from {rss_before} to {rss_flood} KiB");
}

/// 50 clients drip-feed a request head a byte at a time (slowloris): every one is cut
/// off by the header-read deadline, and the relay serves a room meanwhile.
#[tokio::test]
async fn drip_fed_request_heads_are_all_cut_off_while_others_are_served() {
    let relay = start(&["--header-read-timeout-secs", "1"]).await;
    let addr = relay.addr;
    let slow: Vec<_> = (0..50)
        .map(|_| {
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await.unwrap();
                let head =
                    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
                let drip = async {
                    for byte in head {
                        if stream.write_all(&[*byte]).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                };
                // The head takes 10 s to send; the server must end it long before.
                let finished = tokio::time::timeout(CUT_OFF_WITHIN, drip).await.is_ok();
                let received = read_until_closed(&mut stream, CUT_OFF_WITHIN).await;
                (finished, received)
            })
        })
        .collect();
    assert_serving(addr).await;
    for s in slow {
        let (_, received) = s.await.unwrap();
        let received = received.expect("a drip-fed connection was left open");
        assert!(!String::from_utf8_lossy(&received).contains(" 200 "), "a drip-fed head was answered");
    }
    assert_serving(addr).await;
}

/// A WebSocket handshake whose head never ends, and one cut mid-header, are dropped by
/// the header-read deadline without an upgrade.
#[tokio::test]
async fn an_unfinished_websocket_handshake_is_cut_off() {
    let relay = start(&["--header-read-timeout-secs", "1"]).await;
    let room = create_room(relay.addr, 2).await;
    for partial in [
        format!("GET /v1/rooms/{room} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"),
        "GET /v1/msg-relay HTTP/1.1\r\nHost: x\r\nSec-WebSocket-Ke".to_owned(),
    ] {
        let mut stream = TcpStream::connect(relay.addr).await.unwrap();
        stream.write_all(partial.as_bytes()).await.unwrap();
        let received = read_until_closed(&mut stream, CUT_OFF_WITHIN).await.unwrap();
        assert!(!String::from_utf8_lossy(&received).contains("101"), "upgraded on a partial head");
    }
    // The room's slots were not taken by the unfinished joins.
    let mut a = join(relay.addr, &room).await;
    let mut b = join(relay.addr, &room).await;
    relay_one(&mut a, 1, &mut b, b"slots were free").await.unwrap();
}

/// A party that completes the upgrade and then goes silent (what a half-open TCP
/// connection looks like from the server: no FIN, no bytes, no pongs) is closed by the
/// idle timeout and the others are told it left; one that half-closes (FIN) is noticed
/// at once. In-process: the binary has no flag for the WebSocket idle timeout.
#[tokio::test]
async fn silent_and_half_closed_peers_are_dropped_and_the_room_is_told() {
    let config = ServerConfig {
        ws_ping_interval: Duration::from_millis(200),
        ws_idle_timeout: Duration::from_secs(1),
        ..open_config()
    };
    let (addr, _state) = serve_in_process(config).await.unwrap();

    // Silent: never reads, never writes after the upgrade.
    let room = create_room(addr, 2).await;
    let mut watcher = join(addr, &room).await;
    let mut silent = raw_upgrade(addr, &format!("/v1/rooms/{room}")).await;
    // The watcher reads (and so answers pings) while the silent peer times out.
    let ((code, _), ()) =
        tokio::join!(read_to_close(&mut silent, CUT_OFF_WITHIN), left_event(&mut watcher, 1));
    assert_eq!(code, Some(1008), "a silent peer is closed with the idle-timeout policy code");

    // Half-closed: FIN after the upgrade.
    let room = create_room(addr, 2).await;
    let mut watcher = join(addr, &room).await;
    let mut half = raw_upgrade(addr, &format!("/v1/rooms/{room}")).await;
    half.shutdown().await.unwrap();
    left_event(&mut watcher, 1).await;
    // The slot is held for a resume, and a silent mailbox client is closed as well.
    let mut silent = raw_upgrade(addr, "/v1/msg-relay").await;
    let (code, _) = read_to_close(&mut silent, CUT_OFF_WITHIN).await;
    assert_eq!(code, Some(1001), "a silent mailbox client is closed with going-away");
}

async fn left_event(ws: &mut Ws, slot: u16) {
    loop {
        match recv(ws).await.unwrap() {
            Some(Message::Text(t)) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == "left" {
                    assert_eq!(v["slot"], slot);
                    return;
                }
            }
            other => panic!("expected a left event, got {other:?}"),
        }
    }
}

/// Frames of exactly `--max-message-bytes` pass, one byte more closes with 1009, for
/// the mailbox and for rooms; REST bodies one byte over the 64 KiB limit get 413 JSON.
#[tokio::test]
async fn frames_at_the_size_limit_pass_and_one_byte_more_closes_with_1009() {
    const MAX: usize = 4096;
    let relay = start(&["--max-message-bytes", "4096"]).await;
    let addr = relay.addr;

    // Mailbox: a PUB of exactly MAX bytes is stored and handed back byte for byte.
    let mut publisher = ws_connect(addr, "/v1/msg-relay").await.unwrap();
    let mut asker = ws_connect(addr, "/v1/msg-relay").await.unwrap();
    let mut exact = vec![0x11u8; 32];
    exact.extend_from_slice(&60u16.to_le_bytes());
    exact.extend_from_slice(&0u16.to_le_bytes());
    exact.resize(MAX, 0xee);
    publisher.send(Message::binary(exact.clone())).await.unwrap();
    asker.send(Message::binary(exact[..36].to_vec())).await.unwrap();
    match recv(&mut asker).await.unwrap() {
        Some(Message::Binary(b)) => assert_eq!(b.as_ref(), &exact[..]),
        other => panic!("expected the stored frame, got {other:?}"),
    }
    let mut over = exact.clone();
    over[0] = 0x12;
    over.push(0xee);
    publisher.send(Message::binary(over)).await.unwrap();
    match recv(&mut publisher).await.unwrap() {
        Some(Message::Close(Some(c))) => assert_eq!(u16::from(c.code), 1009),
        other => panic!("expected close 1009, got {other:?}"),
    }

    // Rooms: a data frame of exactly MAX bytes (2 of destination) is relayed.
    let room = create_room(addr, 2).await;
    let mut a = join(addr, &room).await;
    let mut b = join(addr, &room).await;
    relay_one(&mut a, 1, &mut b, &vec![0x5au8; MAX - 2]).await.unwrap();
    let mut frame = 1u16.to_le_bytes().to_vec();
    frame.resize(MAX + 1, 0x5a);
    a.send(Message::binary(frame)).await.unwrap();
    loop {
        match recv(&mut a).await.unwrap() {
            Some(Message::Close(Some(c))) => {
                assert_eq!(u16::from(c.code), 1009);
                break;
            }
            Some(Message::Text(_)) => {}
            other => panic!("expected close 1009, got {other:?}"),
        }
    }

    // REST: 64 KiB of body is the limit.
    let big = vec![b' '; (64 << 10) + 1];
    for path in ["/group", "/v1/rooms"] {
        let resp =
            http_request(addr, "POST", path, &[("content-type", "application/json")], &big).await.unwrap();
        assert_eq!(resp.status, StatusCode::PAYLOAD_TOO_LARGE, "{path}: {}", resp.text());
        assert_eq!(resp.json()["error"]["code"], "body_too_large", "{path}");
    }
    assert_serving(addr).await;
}

/// Client frames without a mask (RFC 6455 section 5.1: the server must close the
/// connection) close it with 1002, and nothing of them is relayed. Regression: the
/// mailbox closed without a code and a room dropped the TCP connection without a close
/// frame.
#[tokio::test]
async fn unmasked_client_frames_close_with_1002_and_are_not_relayed() {
    let relay = start(&[]).await;
    let addr = relay.addr;

    // Mailbox: an unmasked PUB is not stored.
    let mut mailbox = raw_upgrade(addr, "/v1/msg-relay").await;
    let mut publish = vec![0x21u8; 32];
    publish.extend_from_slice(&[60, 0, 0, 0]);
    publish.extend_from_slice(b"unmasked payload");
    mailbox.write_all(&client_frame(0x2, &publish, false)).await.unwrap();
    let (code, _) = read_to_close(&mut mailbox, CUT_OFF_WITHIN).await;
    assert_eq!(code, Some(1002), "mailbox");
    let mut asker = ws_connect(addr, "/v1/msg-relay").await.unwrap();
    asker.send(Message::binary(publish[..36].to_vec())).await.unwrap();
    let nothing = tokio::time::timeout(Duration::from_millis(500), asker.next()).await;
    assert!(nothing.is_err(), "the unmasked PUB was stored and delivered: {nothing:?}");

    // Rooms: an unmasked data frame is not relayed.
    let room = create_room(addr, 2).await;
    let mut watcher = join(addr, &room).await;
    let mut raw = raw_upgrade(addr, &format!("/v1/rooms/{room}")).await;
    let mut data = 0u16.to_le_bytes().to_vec();
    data.extend_from_slice(b"unmasked data");
    raw.write_all(&client_frame(0x2, &data, false)).await.unwrap();
    let (code, texts) = read_to_close(&mut raw, CUT_OFF_WITHIN).await;
    assert_eq!(code, Some(1002), "room, after {texts:?}");
    left_event(&mut watcher, 1).await;
    assert_serving(addr).await;
}

/// A text frame that is not UTF-8 closes with 1007 (invalid payload), on the mailbox
/// and on a room. Regression: a room dropped the TCP connection without a close frame.
#[tokio::test]
async fn invalid_utf8_text_frames_close_with_1007() {
    let relay = start(&[]).await;
    let addr = relay.addr;
    let bad = [0x7bu8, 0xff, 0xfe, 0x7d];

    let mut mailbox = raw_upgrade(addr, "/v1/msg-relay").await;
    mailbox.write_all(&client_frame(0x1, &bad, true)).await.unwrap();
    let (code, _) = read_to_close(&mut mailbox, CUT_OFF_WITHIN).await;
    assert_eq!(code, Some(1007), "mailbox");

    let room = create_room(addr, 2).await;
    let mut raw = raw_upgrade(addr, &format!("/v1/rooms/{room}")).await;
    raw.write_all(&client_frame(0x1, &bad, true)).await.unwrap();
    let (code, texts) = read_to_close(&mut raw, CUT_OFF_WITHIN).await;
    assert_eq!(code, Some(1007), "room, after {texts:?}");
    assert_serving(addr).await;
}

/// 5,000 asks for IDs nobody publishes, against `--max-pending-asks 100`: the asker is
/// closed with 1013 and its asks are withdrawn; another tenant's mailbox and the rooms
/// are unaffected; memory stays bounded.
#[tokio::test]
async fn a_flood_of_unanswered_asks_closes_with_1013_and_others_are_unaffected() {
    let relay = start(&["--max-pending-asks", "100"]).await;
    let addr = relay.addr;
    let rss_before = rss_kib(relay.pid());
    let mut flooder = ws_connect(addr, "/v1/msg-relay").await.unwrap();
    let sent = async {
        for i in 0u32..5000 {
            let mut ask = vec![0u8; 36];
            ask[..4].copy_from_slice(&i.to_le_bytes());
            ask[32] = 60;
            if flooder.feed(Message::binary(ask)).await.is_err() {
                break;
            }
        }
        let _ = flooder.flush().await;
    };
    tokio::time::timeout(STEP_TIMEOUT, sent).await.expect("the flood was written or refused in time");
    let code = loop {
        match recv(&mut flooder).await {
            Ok(Some(Message::Close(Some(c)))) => break Some(u16::from(c.code)),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break None,
        }
    };
    assert_eq!(code, Some(1013));

    // A room-scoped mailbox works: publish, ask, answer.
    let room = create_room(addr, 2).await;
    let mut p = ws_connect(addr, &format!("/v1/rooms/{room}/msg-relay")).await.unwrap();
    let mut q = ws_connect(addr, &format!("/v1/rooms/{room}/msg-relay")).await.unwrap();
    let mut publish = vec![0x42u8; 32];
    publish.extend_from_slice(&[30, 0, 0, 0]);
    publish.extend_from_slice(b"answered");
    q.send(Message::binary(publish[..36].to_vec())).await.unwrap();
    p.send(Message::binary(publish.clone())).await.unwrap();
    match recv(&mut q).await.unwrap() {
        Some(Message::Binary(b)) => assert_eq!(b.as_ref(), &publish[..]),
        other => panic!("expected the answer, got {other:?}"),
    }
    assert_serving(addr).await;
    let rss_after = rss_kib(relay.pid());
    eprintln!("ask flood: 5000 asks, cap 100: VmRSS {rss_before} -> {rss_after} KiB");
    assert!(rss_after < rss_before + 32 * 1024, "RSS grew from {rss_before} to {rss_after} KiB");
}

/// A mailbox reader that asks for 400 messages and stops reading while 400 x 32 KiB
/// (12.5 MiB) are published for it: it is closed as a slow consumer once
/// `--send-queue-frames` (16) fill up, and the relay's memory does not grow by what was
/// published. A room party that stops reading: the sender is refused once
/// `--max-room-held-bytes` (1 MiB) is held, while 48 MiB more is thrown at it.
#[tokio::test]
async fn readers_that_stop_reading_are_bounded_by_the_limits() {
    let relay = start(&["--send-queue-frames", "16", "--max-room-held-bytes", "1048576"]).await;
    let addr = relay.addr;
    let rss_before = rss_kib(relay.pid());

    // Mailbox, one-receiver messages (removed once handed to the reader's queue).
    let mut reader = ws_connect(addr, "/v1/msg-relay").await.unwrap();
    let mut publisher = ws_connect(addr, "/v1/msg-relay").await.unwrap();
    let id = |i: u32| {
        let mut id = [0x6du8; 32];
        id[..4].copy_from_slice(&i.to_le_bytes());
        id
    };
    for i in 0..400u32 {
        let mut ask = id(i).to_vec();
        ask.extend_from_slice(&[60, 0, 0, 0]);
        reader.feed(Message::binary(ask)).await.unwrap();
    }
    reader.flush().await.unwrap();
    let payload = vec![0xabu8; 32 << 10];
    for i in 0..400u32 {
        let mut frame = id(i).to_vec();
        frame.extend_from_slice(&[60, 0, 0x00, 0x80]);
        frame.extend_from_slice(&payload);
        let sent = tokio::time::timeout(STEP_TIMEOUT, publisher.send(Message::binary(frame))).await;
        assert!(matches!(sent, Ok(Ok(()))), "the publisher was held up by a stalled reader at {i}");
    }
    let rss_mailbox = rss_kib(relay.pid());
    let mut received = 0;
    let end = loop {
        match recv(&mut reader).await {
            Ok(Some(Message::Binary(_))) => received += 1,
            Ok(other) => break other,
            Err(e) => panic!("reader: {e}"),
        }
    };
    assert!(received < 400, "all 400 frames were buffered for a stalled reader");
    if let Some(Message::Close(Some(c))) = &end {
        assert_eq!(u16::from(c.code), 1013);
    } else {
        assert!(end.is_none(), "expected close 1013 or the end, got {end:?}");
    }

    // Rooms: b never reads; a sends 768 x 64 KiB and reads its error events meanwhile.
    let room = create_room(addr, 2).await;
    let a = join(addr, &room).await;
    let _b_never_reads = join(addr, &room).await;
    let (mut a_tx, mut a_rx) = a.split();
    let errors = tokio::spawn(async move {
        let mut refused = 0usize;
        while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(2), a_rx.next()).await {
            if let Message::Text(t) = msg
                && t.contains("room_buffer_full")
            {
                refused += 1;
            }
        }
        refused
    });
    let mut frame = 1u16.to_le_bytes().to_vec();
    frame.resize(2 + (64 << 10), 0xcd);
    for i in 0..768 {
        let sent = tokio::time::timeout(STEP_TIMEOUT, a_tx.send(Message::binary(frame.clone()))).await;
        assert!(matches!(sent, Ok(Ok(()))), "the sender was held up at frame {i}");
    }
    let refused = errors.await.unwrap();
    let rss_room = rss_kib(relay.pid());
    eprintln!(
        "stalled readers: mailbox reader got {received} of 400 then {end:?}; room sender refused {refused} of 768; \
         VmRSS {rss_before} KiB at start, {rss_mailbox} after 12.5 MiB to the mailbox reader, {rss_room} after 48 MiB to the room"
    );
    assert!(refused >= 768 - 32, "only {refused} of 768 refused with a 1 MiB room bound");
    assert!(rss_room < rss_before + 48 * 1024, "RSS grew from {rss_before} to {rss_room} KiB");
    assert_serving(addr).await;
}
