//! Rate limits over real sockets on 127.0.0.1, with small limits set in the config: the
//! per-address request rate answers 429 `rate_limited` with `Retry-After` and lets the
//! client back in after that wait; the per-address connection rate closes connections
//! at once and recovers the same way; a WebSocket over its message rate is closed with
//! 1013 (room party and mailbox). The limits can also be set from the binary's flags.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use hyper::StatusCode;
use relay_transport::{Rate, RateLimits};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Requests a test makes at most while waiting to hit a limit. At 1 token per second
/// and a burst of 5, a client stays under it only if each request takes over a second.
const MAX_ATTEMPTS: usize = 30;

/// Frames a test sends at most into a WebSocket with a message rate of 10/s.
const FLOOD_FRAMES: usize = 200;

fn config(rate_limits: RateLimits) -> ServerConfig {
    ServerConfig { rate_limits, ..open_config() }
}

/// Sends `GET /healthz` on a fresh connection until one is refused with 429; returns
/// how many were served first and the refusal.
async fn healthz_until_429(addr: SocketAddr) -> anyhow::Result<(usize, HttpResponse)> {
    for served in 0..MAX_ATTEMPTS {
        let resp = http_request(addr, "GET", "/healthz", &[], b"").await?;
        if resp.status == StatusCode::TOO_MANY_REQUESTS {
            return Ok((served, resp));
        }
        anyhow::ensure!(resp.status == StatusCode::OK, "unexpected {}: {}", resp.status, resp.text());
    }
    anyhow::bail!("no 429 after {MAX_ATTEMPTS} requests")
}

fn retry_after_secs(resp: &HttpResponse) -> u64 {
    let value = resp.headers.get("retry-after").expect("a 429 carries Retry-After");
    value.to_str().unwrap().parse().expect("Retry-After in whole seconds")
}

#[tokio::test]
async fn requests_over_the_per_address_rate_get_429_then_recover_after_retry_after() {
    let (addr, _state) =
        serve_in_process(config(RateLimits { requests_per_ip: Rate::new(1, 5), ..RateLimits::default() }))
            .await
            .unwrap();

    let (served, refused) = healthz_until_429(addr).await.unwrap();
    assert!(served >= 5, "the burst of 5 is served first, got {served}");
    assert_eq!(refused.headers["content-type"], "application/json");
    let body = refused.json();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    let wait = retry_after_secs(&refused);
    assert_eq!(wait, 1, "one token per second: at most a second away");

    tokio::time::sleep(Duration::from_secs(wait)).await;
    let resp = http_request(addr, "GET", "/healthz", &[], b"").await.unwrap();
    assert_eq!(resp.status, StatusCode::OK, "served again after Retry-After: {}", resp.text());

    // A WebSocket handshake is a request too: refused with 429 before any upgrade.
    let mut refused_handshake = false;
    for _ in 0..MAX_ATTEMPTS {
        match ws_connect(addr, "/v1/msg-relay").await {
            Ok(ws) => drop(ws),
            Err(e) => {
                assert_eq!(refusal_status(&e), Some(StatusCode::TOO_MANY_REQUESTS), "{e}");
                refused_handshake = true;
                break;
            }
        }
    }
    assert!(refused_handshake, "no handshake was refused in {MAX_ATTEMPTS}");
}

/// Connects, sends a complete request and reads until the server closes: the response
/// bytes (empty when the connection was closed without one).
async fn raw_healthz(addr: SocketAddr) -> anyhow::Result<Vec<u8>> {
    let mut stream = tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(addr)).await??;
    // The server may already have closed it: a failed write is that refusal.
    let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n").await;
    read_until_closed(&mut stream, STEP_TIMEOUT).await
}

#[tokio::test]
async fn connections_over_the_per_address_rate_are_closed_at_once_then_accepted_again() {
    let (addr, _state) =
        serve_in_process(config(RateLimits { connections_per_ip: Rate::new(1, 3), ..RateLimits::default() }))
            .await
            .unwrap();

    let mut served = 0;
    let mut refused = false;
    for _ in 0..MAX_ATTEMPTS {
        let received = raw_healthz(addr).await.unwrap();
        if received.is_empty() {
            refused = true;
            break;
        }
        assert!(received.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&received));
        served += 1;
    }
    assert!(refused, "no connection was refused in {MAX_ATTEMPTS}");
    assert!(served >= 3, "the burst of 3 is served first, got {served}");

    // One token per second: a new connection a second later is served.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let received = raw_healthz(addr).await.unwrap();
    assert!(received.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&received));
}

/// Sends `frame` up to [`FLOOD_FRAMES`] times, stopping early when the server closes.
async fn flood(ws: &mut Ws, frame: Vec<u8>) {
    for _ in 0..FLOOD_FRAMES {
        let sent = tokio::time::timeout(STEP_TIMEOUT, ws.send(Message::binary(frame.clone()))).await;
        if !matches!(sent, Ok(Ok(()))) {
            break;
        }
    }
}

fn ws_limited() -> ServerConfig {
    config(RateLimits { ws_messages: Rate::new(10, 10), ..RateLimits::default() })
}

#[tokio::test]
async fn a_room_party_over_the_message_rate_is_closed_with_1013() {
    let (addr, _state) = serve_in_process(ws_limited()).await.unwrap();
    let created = post_json(addr, "/v1/rooms", &[], &serde_json::json!({"room_size": 2})).await.unwrap();
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    let room = created.json()["room_uuid"].as_str().unwrap().to_owned();

    let mut sender = ws_connect(addr, &format!("/v1/rooms/{room}?slot=0")).await.unwrap();
    let mut receiver = ws_connect(addr, &format!("/v1/rooms/{room}?slot=1")).await.unwrap();
    // Data frames to slot 1: `[to u16 LE][payload]`.
    flood(&mut sender, vec![1, 0, b'x']).await;
    let (code, reason) = close_of(&mut sender, STEP_TIMEOUT).await.unwrap();
    assert_eq!((code, reason.as_str()), (1013, "message rate limit exceeded"));

    // The frames within the rate were relayed: the receiver gets data.
    let first_data = async {
        loop {
            match receiver.next().await {
                Some(Ok(Message::Binary(b))) => return b,
                Some(Ok(_)) => {}
                other => panic!("receiver ended: {other:?}"),
            }
        }
    };
    let data = tokio::time::timeout(STEP_TIMEOUT, first_data).await.expect("data within the rate");
    assert_eq!(&data[12..], b"x");
}

#[tokio::test]
async fn a_mailbox_connection_over_the_message_rate_is_closed_with_1013() {
    let (addr, _state) = serve_in_process(ws_limited()).await.unwrap();
    let mut ws = ws_connect(addr, "/v1/msg-relay").await.unwrap();
    // An ask: a 36-byte frame with a 32-byte id, ttl 30 s, no flags.
    let mut ask = vec![7u8; 32];
    ask.extend_from_slice(&[30, 0, 0, 0]);
    flood(&mut ws, ask).await;
    let (code, reason) = close_of(&mut ws, STEP_TIMEOUT).await.unwrap();
    assert_eq!((code, reason.as_str()), (1013, "message rate limit exceeded"));

    // A new connection has its own budget.
    let mut again = ws_connect(addr, "/v1/msg-relay").await.unwrap();
    again.send(Message::Ping(Vec::new().into())).await.unwrap();
    let pong = tokio::time::timeout(STEP_TIMEOUT, again.next()).await.unwrap().unwrap().unwrap();
    assert!(matches!(pong, Message::Pong(_)), "{pong:?}");
}

#[tokio::test]
async fn the_binary_takes_rate_limits_from_flags() {
    let relay = RelayProcess::start(&[
        "--insecure-api-keys-not-enforced",
        "--rate-limit-requests-per-ip",
        "1",
        "--rate-limit-requests-per-ip-burst",
        "2",
    ])
    .await
    .unwrap();
    let (served, refused) = healthz_until_429(relay.addr).await.unwrap();
    assert!(served >= 2, "the burst of 2 is served first, got {served}");
    assert_eq!(refused.json()["error"]["code"], "rate_limited");
    assert!(retry_after_secs(&refused) >= 1);

    let out = run_binary(&["--insecure-api-keys-not-enforced", "--rate-limit-requests-per-ip-burst", "0"])
        .await
        .unwrap();
    assert!(!out.status.success(), "a burst of 0 would refuse everything: the flag refuses it");
}
