//! Behind a proxy, against the real binary: `X-Forwarded-For` believed from a peer in
//! `--trusted-proxies` (the per-address request rate hits the forwarded address, not
//! the proxy's) and ignored from anyone else; a trusted proxy's connections exempt from
//! the per-address connection cap; and `--proxy-protocol`, where the PROXY v2 header's
//! source is the client from the accept on and a connection without a valid header is
//! closed unanswered. Other loopback addresses (127.0.0.2, ...) stand for other hosts.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::support::*;
use hyper::StatusCode;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const CUT_OFF_WITHIN: Duration = Duration::from_secs(6);

/// A connection to `relay` from `source` (another loopback address is another host).
async fn connect_from(source: &str, relay: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    tokio::time::timeout(STEP_TIMEOUT, socket.connect(relay)).await.unwrap().unwrap()
}

/// `GET /healthz` from `source`, with `headers`, on a connection of its own.
async fn healthz_from(source: &str, relay: SocketAddr, headers: &[(&str, &str)]) -> StatusCode {
    let mut conn = Http1Conn::handshake(connect_from(source, relay).await).await.unwrap();
    conn.get_with("/healthz", headers).await.unwrap().status
}

#[tokio::test]
async fn forwarded_for_counts_from_a_trusted_proxy_and_is_ignored_from_others() {
    let relay = RelayProcess::start(&[
        "--insecure-api-keys-not-enforced",
        "--trusted-proxies",
        "127.0.0.1/32",
        "--rate-limit-requests-per-ip",
        "1",
        "--rate-limit-requests-per-ip-burst",
        "2",
    ])
    .await
    .unwrap();
    let a = [("x-forwarded-for", "198.51.100.1")];
    let b = [("x-forwarded-for", "203.0.113.9, 198.51.100.2")];
    // Through the trusted proxy: client A uses its burst and is limited ...
    assert_eq!(healthz_from("127.0.0.1", relay.addr, &a).await, StatusCode::OK);
    assert_eq!(healthz_from("127.0.0.1", relay.addr, &a).await, StatusCode::OK);
    assert_eq!(healthz_from("127.0.0.1", relay.addr, &a).await, StatusCode::TOO_MANY_REQUESTS);
    // ... while client B behind the same proxy is not: the limit is per forwarded
    // address (the right-most untrusted entry), not per proxy.
    assert_eq!(healthz_from("127.0.0.1", relay.addr, &b).await, StatusCode::OK);
    assert_eq!(healthz_from("127.0.0.1", relay.addr, &[("x-real-ip", "198.51.100.3")]).await, StatusCode::OK);

    // From an untrusted peer the header is ignored: a fresh forwarded address each
    // time does not escape its own address's limit.
    let mut statuses = Vec::new();
    for i in 0..3 {
        let forged = format!("192.0.2.{i}");
        statuses.push(healthz_from("127.0.0.2", relay.addr, &[("x-forwarded-for", &forged)]).await);
    }
    assert_eq!(statuses, [StatusCode::OK, StatusCode::OK, StatusCode::TOO_MANY_REQUESTS]);
}

#[tokio::test]
async fn a_trusted_proxy_is_not_held_to_one_address_connection_cap() {
    let relay = RelayProcess::start(&[
        "--insecure-api-keys-not-enforced",
        "--trusted-proxies",
        "127.0.0.1",
        "--max-connections-per-ip",
        "2",
    ])
    .await
    .unwrap();
    // The proxy carries many clients: more connections than one address may hold.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut conn = Http1Conn::handshake(connect_from("127.0.0.1", relay.addr).await).await.unwrap();
        assert_eq!(conn.get("/healthz").await.unwrap().status, StatusCode::OK);
        held.push(conn);
    }
    // An untrusted address is still capped.
    let _one = connect_from("127.0.0.2", relay.addr).await;
    let _two = connect_from("127.0.0.2", relay.addr).await;
    let mut third = connect_from("127.0.0.2", relay.addr).await;
    let _ = third.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let received = read_until_closed(&mut third, CUT_OFF_WITHIN).await.unwrap();
    assert!(received.is_empty(), "{:?}", String::from_utf8_lossy(&received));
}

/// A PROXY protocol v2 header for a TCP connection from `source` to `destination`,
/// written by hand from the specification (HAProxy's proxy-protocol.txt, section 2.2)
/// so the test does not share the server's parser.
fn proxy_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(src), SocketAddr::V4(dst)) = (source, destination) else {
        panic!("IPv4 only in this helper");
    };
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21); // version 2, PROXY
    h.push(0x11); // AF_INET, STREAM
    h.extend_from_slice(&12u16.to_be_bytes());
    h.extend_from_slice(&src.ip().octets());
    h.extend_from_slice(&dst.ip().octets());
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    h
}

/// A connection from `source` that starts with a PROXY header naming `client`.
async fn proxied(source: &str, relay: SocketAddr, client: Ipv4Addr) -> TcpStream {
    let mut stream = connect_from(source, relay).await;
    stream.write_all(&proxy_v2(SocketAddr::from((client, 40_000)), relay)).await.unwrap();
    stream
}

#[tokio::test]
async fn proxy_protocol_names_the_client_from_the_accept_and_is_required() {
    let relay = RelayProcess::start(&[
        "--insecure-api-keys-not-enforced",
        "--proxy-protocol",
        "--trusted-proxies",
        "127.0.0.1",
        "--max-connections-per-ip",
        "1",
        "--header-read-timeout-secs",
        "1",
    ])
    .await
    .unwrap();
    let alice = Ipv4Addr::new(198, 51, 100, 7);
    let bob = Ipv4Addr::new(198, 51, 100, 8);
    // Alice's first connection through the proxy is served and held.
    let mut held = Http1Conn::handshake(proxied("127.0.0.1", relay.addr, alice).await).await.unwrap();
    assert_eq!(held.get("/healthz").await.unwrap().status, StatusCode::OK);
    // Her second is over her address's cap (1): the cap applies to the PROXY source,
    // so it is closed unanswered ...
    let mut second = proxied("127.0.0.1", relay.addr, alice).await;
    let _ = second.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let received = read_until_closed(&mut second, CUT_OFF_WITHIN).await.unwrap();
    assert!(received.is_empty(), "{:?}", String::from_utf8_lossy(&received));
    // ... while Bob, through the same proxy, is served.
    let mut bobs = Http1Conn::handshake(proxied("127.0.0.1", relay.addr, bob).await).await.unwrap();
    assert_eq!(bobs.get("/healthz").await.unwrap().status, StatusCode::OK);

    // Without a header (a plain request), the connection is closed unanswered.
    let mut bare = connect_from("127.0.0.1", relay.addr).await;
    let _ = bare.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let received = read_until_closed(&mut bare, CUT_OFF_WITHIN).await.unwrap();
    assert!(received.is_empty(), "{:?}", String::from_utf8_lossy(&received));
    // A silent connection is closed at the header deadline.
    let mut silent = connect_from("127.0.0.1", relay.addr).await;
    assert!(read_until_closed(&mut silent, CUT_OFF_WITHIN).await.unwrap().is_empty());
    // A valid header from a peer outside --trusted-proxies is refused at once.
    let mut forged = proxied("127.0.0.2", relay.addr, Ipv4Addr::new(198, 51, 100, 9)).await;
    let _ = forged.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let received = read_until_closed(&mut forged, CUT_OFF_WITHIN).await.unwrap();
    assert!(received.is_empty(), "{:?}", String::from_utf8_lossy(&received));

    // Other clients keep being served (the held connections have met the 1 s
    // keep-alive header deadline by now, so on fresh connections), Alice too once hers
    // is gone.
    drop((held, bobs));
    let carol = Ipv4Addr::new(198, 51, 100, 10);
    let mut carols = Http1Conn::handshake(proxied("127.0.0.1", relay.addr, carol).await).await.unwrap();
    assert_eq!(carols.get("/healthz").await.unwrap().status, StatusCode::OK);
    let served = tokio::time::timeout(STEP_TIMEOUT, async {
        loop {
            let stream = proxied("127.0.0.1", relay.addr, alice).await;
            if let Ok(mut conn) = Http1Conn::handshake(stream).await
                && let Ok(resp) = conn.get("/healthz").await
            {
                return resp.status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("alice is served again once her connection closed");
    assert_eq!(served, StatusCode::OK);
}

#[tokio::test]
async fn proxy_protocol_without_trusted_proxies_is_refused_at_start() {
    let out = run_binary(&["--insecure-api-keys-not-enforced", "--proxy-protocol"]).await.unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--trusted-proxies"));
    let out = run_binary(&["--insecure-api-keys-not-enforced", "--trusted-proxies", "10.0.0.0/8,nginx"])
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("\"nginx\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
