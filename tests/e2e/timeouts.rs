//! Protection of the accept path against the real binary: a client that sends a
//! partial request head, one that sends nothing, one that never starts its TLS
//! handshake, and connections past `--max-connections` and `--max-connections-per-ip`.

use std::time::Duration;

use crate::support::*;
use hyper::StatusCode;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// How long a test waits for the server to cut a stalled client off, with the server's
/// timeout set to 1 s.
const CUT_OFF_WITHIN: Duration = Duration::from_secs(5);

#[tokio::test]
async fn slow_request_head_is_cut_off_after_the_header_read_timeout() {
    let relay = RelayProcess::start(&["--insecure-api-keys-not-enforced", "--header-read-timeout-secs", "1"])
        .await
        .unwrap();
    let mut stream = TcpStream::connect(relay.addr).await.unwrap();
    stream.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    let received = read_until_closed(&mut stream, CUT_OFF_WITHIN).await.unwrap();
    assert!(!String::from_utf8_lossy(&received).contains("200"), "no answer to a partial request");

    // A complete request on a fresh connection is still served.
    let resp = http_request(relay.addr, "GET", "/healthz", &[], b"").await.unwrap();
    assert_eq!(resp.status, StatusCode::OK);
}

#[tokio::test]
async fn silent_client_is_cut_off_after_the_header_read_timeout() {
    let relay = RelayProcess::start(&["--insecure-api-keys-not-enforced", "--header-read-timeout-secs", "1"])
        .await
        .unwrap();
    let mut stream = TcpStream::connect(relay.addr).await.unwrap();
    let received = read_until_closed(&mut stream, CUT_OFF_WITHIN).await.unwrap();
    assert!(received.is_empty());
}

#[tokio::test]
async fn client_that_never_sends_a_client_hello_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::generate("relay test");
    let (chain, key) = cert.write_to(dir.path());
    let relay = RelayProcess::start(&[
        "--insecure-api-keys-not-enforced",
        "--chain-path",
        chain.to_str().unwrap(),
        "--key-path",
        key.to_str().unwrap(),
        "--tls-handshake-timeout-secs",
        "1",
        // Longer than the handshake timeout, so this test sees the handshake one.
        "--header-read-timeout-secs",
        "60",
    ])
    .await
    .unwrap();
    let mut stalled = TcpStream::connect(relay.addr).await.unwrap();
    let received = read_until_closed(&mut stalled, CUT_OFF_WITHIN).await.unwrap();
    assert!(received.is_empty(), "no TLS bytes without a ClientHello");

    // A real client still gets through.
    let stream = tls_connect(relay.addr, tls_client_config(&[&cert], &[b"http/1.1"])).await.unwrap();
    let mut conn = Http1Conn::handshake(stream).await.unwrap();
    assert_eq!(conn.get("/healthz").await.unwrap().status, StatusCode::OK);
}

#[tokio::test]
async fn connections_past_the_cap_are_closed_while_open_ones_keep_working() {
    let relay =
        RelayProcess::start(&["--insecure-api-keys-not-enforced", "--max-connections", "2"]).await.unwrap();
    let mut first = Http1Conn::connect(relay.addr).await.unwrap();
    let mut second = Http1Conn::connect(relay.addr).await.unwrap();
    assert_eq!(first.get("/healthz").await.unwrap().status, StatusCode::OK);
    assert_eq!(second.get("/healthz").await.unwrap().status, StatusCode::OK);

    // Both slots are taken: a third connection is accepted and closed without a byte.
    for _ in 0..3 {
        let mut third = TcpStream::connect(relay.addr).await.unwrap();
        let _ = third.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await;
        let received = read_until_closed(&mut third, CUT_OFF_WITHIN).await.unwrap();
        assert!(received.is_empty(), "refused connection got {:?}", String::from_utf8_lossy(&received));
    }
    relay.wait_for_output("connection cap reached").await.unwrap();
    // One warning for the burst, not one per refusal.
    assert_eq!(relay.output().matches("connection cap reached").count(), 1, "{}", relay.output());

    assert_eq!(first.get("/healthz").await.unwrap().status, StatusCode::OK);
    assert_eq!(second.get("/healthz").await.unwrap().status, StatusCode::OK);

    // Closing one frees its slot for a new client (the server notices the close
    // asynchronously, so retry within a bounded wait).
    drop(second);
    let served = tokio::time::timeout(STEP_TIMEOUT, async {
        loop {
            if let Ok(resp) = http_request(relay.addr, "GET", "/healthz", &[], b"").await {
                return resp.status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a slot frees up after a connection closes");
    assert_eq!(served, StatusCode::OK);
}

/// A connection to the relay from `source` (another loopback address is another client).
async fn connect_from(source: &str, relay: std::net::SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(format!("{source}:0").parse().map_err(std::io::Error::other)?)?;
    socket.connect(relay).await
}

#[tokio::test]
async fn one_address_over_its_connection_cap_is_refused_while_others_are_served() {
    let relay = RelayProcess::start(&["--insecure-api-keys-not-enforced", "--max-connections-per-ip", "3"])
        .await
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut conn =
            Http1Conn::handshake(connect_from("127.0.0.1", relay.addr).await.unwrap()).await.unwrap();
        assert_eq!(conn.get("/healthz").await.unwrap().status, StatusCode::OK);
        held.push(conn);
    }
    // The fourth from the same address is accepted and closed without a byte.
    for _ in 0..3 {
        let mut fourth = connect_from("127.0.0.1", relay.addr).await.unwrap();
        let _ = fourth.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await;
        let received = read_until_closed(&mut fourth, CUT_OFF_WITHIN).await.unwrap();
        assert!(received.is_empty(), "refused connection got {:?}", String::from_utf8_lossy(&received));
    }
    // Another address is served meanwhile, and so are the held connections; /metrics
    // counts the refusals.
    let mut other = Http1Conn::handshake(connect_from("127.0.0.2", relay.addr).await.unwrap()).await.unwrap();
    assert_eq!(other.get("/healthz").await.unwrap().status, StatusCode::OK);
    let metrics = other.get("/metrics").await.unwrap();
    assert!(metrics.text().lines().any(|l| l == "relay_connections_refused_total 3"), "{}", metrics.text());
    for conn in &mut held {
        assert_eq!(conn.get("/healthz").await.unwrap().status, StatusCode::OK);
    }

    // Once its connections close, the address is served again (the server notices a
    // close asynchronously: retry within a bounded wait).
    drop(held);
    let served = tokio::time::timeout(STEP_TIMEOUT, async {
        loop {
            if let Ok(resp) = http_request(relay.addr, "GET", "/healthz", &[], b"").await {
                return resp.status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the address is served again after its connections close");
    assert_eq!(served, StatusCode::OK);
}
