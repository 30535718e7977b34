//! Deadlines from the accept, against the real binary: clients that send one byte or
//! only the HTTP/2 preface and then nothing, an HTTP/2 connection left idle, a request
//! body that never finishes, and a keyed POST with a bad key whose body never comes.
//! Each asserts what the attacker sees and that other clients keep being served.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::StatusCode;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long the server may take to cut off a client its timeouts (1 s here) apply to.
const CUT_OFF_WITHIN: Duration = Duration::from_secs(6);

/// The connection preface every HTTP/2 client sends first (RFC 9113, section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads until the server closes `stream`; returns the bytes and how long it took.
async fn closed_after(mut stream: TcpStream) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let received =
        read_until_closed(&mut stream, CUT_OFF_WITHIN).await.expect("the server cut the client off");
    (received, started.elapsed())
}

/// Polls `/healthz` on fresh connections until it answers 200, within `within`.
async fn healthz_served_within(addr: SocketAddr, within: Duration) -> bool {
    tokio::time::timeout(within, async {
        loop {
            if let Ok(resp) = http_request(addr, "GET", "/healthz", &[], b"").await
                && resp.status == StatusCode::OK
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn one_byte_and_h2_preface_clients_are_cut_at_the_header_deadline() {
    // Four slots: the attackers take all of them, as 50 did with --max-connections 50
    // before the deadline ran from the accept.
    let relay = RelayProcess::start(&[
        "--insecure-api-keys-not-enforced",
        "--max-connections",
        "4",
        "--header-read-timeout-secs",
        "1",
    ])
    .await
    .unwrap();
    // "P" (the HTTP/2 preface's first byte: version detection waits for more, and
    // before this fix no deadline ran), "G" (HTTP/1 at once), the whole preface, and a
    // partial preface.
    let openings: [&[u8]; 4] = [b"P", b"G", H2_PREFACE, &H2_PREFACE[..10]];
    let mut attackers = Vec::new();
    for (i, opening) in openings.into_iter().enumerate() {
        let mut stream = TcpStream::connect(relay.addr).await.unwrap();
        stream.write_all(opening).await.unwrap();
        attackers.push((i, stream));
    }
    // While they hold every slot, a newcomer is closed at once (the cap works) ...
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut newcomer = TcpStream::connect(relay.addr).await.unwrap();
    let _ = newcomer.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let refused = read_until_closed(&mut newcomer, CUT_OFF_WITHIN).await.unwrap();
    assert!(refused.is_empty(), "the cap is full: {:?}", String::from_utf8_lossy(&refused));

    // ... but each attacker is cut at the header deadline, with no answer.
    let cuts = futures_util::future::join_all(attackers.into_iter().map(|(i, s)| async move {
        let (received, after) = closed_after(s).await;
        (i, received, after)
    }))
    .await;
    for (i, received, after) in cuts {
        let text = String::from_utf8_lossy(&received);
        assert!(!text.contains("HTTP/1.1 200"), "attacker {i} got an answer: {text:?}");
        if i < 2 {
            assert!(received.is_empty() || text.starts_with("HTTP/1.1 4"), "one-byte client got {text:?}");
        }
        assert!(after < CUT_OFF_WITHIN, "attacker {i} cut after {after:?}");
    }
    // Everyone else is served again.
    assert!(healthz_served_within(relay.addr, STEP_TIMEOUT).await, "/healthz served after the cut");
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_the_idle_timeout() {
    let relay = RelayProcess::start(&["--insecure-api-keys-not-enforced", "--http2-idle-timeout-secs", "1"])
        .await
        .unwrap();
    let stream = TcpStream::connect(relay.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    let conn = tokio::spawn(conn);
    let req = hyper::Request::get("http://localhost/healthz").body(Full::new(Bytes::new())).unwrap();
    let resp = tokio::time::timeout(STEP_TIMEOUT, sender.send_request(req)).await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    tokio::time::timeout(STEP_TIMEOUT, resp.into_body().collect()).await.unwrap().unwrap();
    // The client answers pings but sends no request: the server ends the connection.
    let started = Instant::now();
    tokio::time::timeout(CUT_OFF_WITHIN, conn).await.expect("idle HTTP/2 connection closed").unwrap().ok();
    assert!(started.elapsed() >= Duration::from_millis(800), "closed before the idle timeout");
    assert!(healthz_served_within(relay.addr, STEP_TIMEOUT).await);
}

#[tokio::test]
async fn a_body_that_never_finishes_is_cut_by_the_body_deadline() {
    let relay = RelayProcess::start(&[
        "--insecure-api-keys-not-enforced",
        "--body-read-timeout-secs",
        "1",
        "--request-timeout-secs",
        "60",
    ])
    .await
    .unwrap();
    let mut stream = TcpStream::connect(relay.addr).await.unwrap();
    stream
        .write_all(b"POST /v1/rooms HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"room_size\"")
        .await
        .unwrap();
    let started = Instant::now();
    let received = read_until_closed(&mut stream, CUT_OFF_WITHIN).await.unwrap();
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"request_timeout\""), "{text}");
    assert!(started.elapsed() >= Duration::from_millis(800), "answered before the deadline: {text}");

    // A room is still created by a client that sends its body.
    let resp = post_json(relay.addr, "/v1/rooms", &[], &serde_json::json!({"room_size": 2})).await.unwrap();
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text());
}

#[tokio::test]
async fn a_keyed_post_with_a_bad_key_is_refused_before_its_body() {
    // Keys enforced; the body deadline is long, so an answer within seconds comes from
    // the key check, not from a timeout.
    let relay = RelayProcess::start(&["--body-read-timeout-secs", "60"]).await.unwrap();
    for path in ["/v1/rooms", "/group"] {
        let mut stream = TcpStream::connect(relay.addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer not-a-key\r\ncontent-type: application/json\r\ncontent-length: 60000\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let started = Instant::now();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("answered without the body")
            .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 401"), "{path}: {text}");
        assert!(text.contains("unknown_api_key"), "{path}: {text}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    assert!(healthz_served_within(relay.addr, STEP_TIMEOUT).await);
}

#[tokio::test]
async fn an_upgraded_websocket_outlives_the_connection_deadlines() {
    // The header deadline and the idle timeout are for HTTP; a WebSocket has its own
    // ping and idle timeout, so it must outlive both here.
    let relay = RelayProcess::start(&[
        "--insecure-api-keys-not-enforced",
        "--header-read-timeout-secs",
        "1",
        "--http2-idle-timeout-secs",
        "1",
    ])
    .await
    .unwrap();
    let mut ws = tokio::time::timeout(STEP_TIMEOUT, ws_connect(relay.addr, "/v1/msg-relay"))
        .await
        .expect("upgrade in time")
        .expect("upgrade");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::Ping(Bytes::from_static(b"still here"))).await.unwrap();
    let pong = tokio::time::timeout(STEP_TIMEOUT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Pong(p))) => return Some(p),
                Some(Ok(_)) => {}
                _ => return None,
            }
        }
    })
    .await
    .expect("an answer in time");
    assert_eq!(pong.as_deref(), Some(&b"still here"[..]), "the WebSocket was closed");
}

/// The HTTP/2 frames in `bytes` as (type, payload), up to the last whole one.
fn h2_frames(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 9 {
        let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        if rest.len() < 9 + len {
            break;
        }
        frames.push((rest[3], rest[9..9 + len].to_vec()));
        rest = &rest[9 + len..];
    }
    frames
}

#[tokio::test]
async fn http2_announces_its_stream_cap_and_drops_a_peer_that_ignores_pings() {
    let relay = RelayProcess::start(&[
        "--insecure-api-keys-not-enforced",
        "--http2-max-concurrent-streams",
        "7",
        "--http2-keepalive-interval-secs",
        "1",
        "--http2-keepalive-timeout-secs",
        "1",
    ])
    .await
    .unwrap();
    // A hand-made client: preface, empty SETTINGS, one GET / (HPACK static entries:
    // :method GET, :scheme http, :path /), then silence: no SETTINGS or PING ack.
    let mut stream = TcpStream::connect(relay.addr).await.unwrap();
    let mut hello = H2_PREFACE.to_vec();
    hello.extend_from_slice(&[0, 0, 0, 0x04, 0, 0, 0, 0, 0]);
    hello.extend_from_slice(&[0, 0, 3, 0x01, 0x05, 0, 0, 0, 1, 0x82, 0x86, 0x84]);
    stream.write_all(&hello).await.unwrap();
    let (received, after) = closed_after(stream).await;
    let frames = h2_frames(&received);
    let settings = frames.iter().find(|(t, _)| *t == 0x04).expect("the server's SETTINGS");
    let max_streams = settings
        .1
        .chunks_exact(6)
        .find(|e| u16::from_be_bytes([e[0], e[1]]) == 0x3)
        .map(|e| u32::from_be_bytes([e[2], e[3], e[4], e[5]]));
    assert_eq!(max_streams, Some(7), "SETTINGS_MAX_CONCURRENT_STREAMS: {frames:?}");
    assert!(frames.iter().any(|(t, _)| *t == 0x01), "the request was answered (HEADERS): {frames:?}");
    assert!(frames.iter().any(|(t, _)| *t == 0x06), "the server pinged: {frames:?}");
    assert!(after >= Duration::from_millis(900), "closed after {after:?}, before a ping could time out");

    // A client that answers pings keeps its connection past the same time.
    let stream = TcpStream::connect(relay.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    for _ in 0..2 {
        let req = hyper::Request::get("http://localhost/healthz").body(Full::new(Bytes::new())).unwrap();
        let resp = tokio::time::timeout(STEP_TIMEOUT, sender.send_request(req)).await.unwrap().unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(3000)).await;
    }
}
