//! TLS end to end against the real binary: HTTPS over HTTP/1.1 and HTTP/2 (ALPN), the
//! WebSocket handshake over TLS, SIGHUP reloading the certificate (and refusing a
//! broken one), and the startup refusals for a missing or mismatched certificate.

use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::StatusCode;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_tungstenite::tungstenite::Message;

fn tls_args<'a>(chain: &'a std::path::Path, key: &'a std::path::Path) -> Vec<&'a str> {
    vec![
        "--insecure-api-keys-not-enforced",
        "--chain-path",
        chain.to_str().expect("utf-8 path"),
        "--key-path",
        key.to_str().expect("utf-8 path"),
    ]
}

#[tokio::test]
async fn healthz_over_https_with_http1_and_http2() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::generate("relay test");
    let (chain, key) = cert.write_to(dir.path());
    let relay = RelayProcess::start(&tls_args(&chain, &key)).await.unwrap();

    // HTTP/1.1 (what WebSocket clients offer).
    let stream = tls_connect(relay.addr, tls_client_config(&[&cert], &[b"http/1.1"])).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(peer_certificate(&stream).as_ref(), Some(&cert.der));
    let mut conn = Http1Conn::handshake(stream).await.unwrap();
    let resp = conn.get("/healthz").await.unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.json()["status"], "ok");

    // HTTP/2 when the client prefers it.
    let stream = tls_connect(relay.addr, tls_client_config(&[&cert], &[b"h2", b"http/1.1"])).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, h2) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(h2);
    let req = hyper::Request::get("https://localhost/healthz").body(Full::new(Bytes::new())).unwrap();
    let resp = tokio::time::timeout(STEP_TIMEOUT, sender.send_request(req)).await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    let body =
        tokio::time::timeout(STEP_TIMEOUT, resp.into_body().collect()).await.unwrap().unwrap().to_bytes();
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&body).unwrap()["status"], "ok");

    // A client that does not trust the certificate fails the handshake.
    let other = TestCert::generate("someone else");
    assert!(tls_connect(relay.addr, tls_client_config(&[&other], &[b"http/1.1"])).await.is_err());
}

#[tokio::test]
async fn websocket_handshake_reaches_the_relay_over_wss() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::generate("relay test");
    let (chain, key) = cert.write_to(dir.path());
    let relay = RelayProcess::start(&tls_args(&chain, &key)).await.unwrap();

    let stream = tls_connect(relay.addr, tls_client_config(&[&cert], &[b"http/1.1"])).await.unwrap();
    let url = format!("wss://localhost:{}/v1/msg-relay", relay.addr.port());
    let outcome =
        tokio::time::timeout(STEP_TIMEOUT, tokio_tungstenite::client_async(url, stream)).await.unwrap();
    let (mut ws, resp) = outcome.expect("WebSocket handshake over TLS");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    // A mailbox round trip inside the TLS session: ask for an ID, publish it, get it.
    let id = [7u8; 32];
    let mut ask = id.to_vec();
    ask.extend_from_slice(&[30, 0, 0, 0]);
    let mut publish = ask.clone();
    publish.extend_from_slice(b"over wss");
    ws.send(Message::binary(ask)).await.unwrap();
    ws.send(Message::binary(publish.clone())).await.unwrap();
    let got = tokio::time::timeout(STEP_TIMEOUT, ws.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(got, Message::binary(publish));
    let _ = ws.close(None).await;
}

#[tokio::test]
async fn sighup_reloads_the_certificate_and_keeps_it_when_the_new_one_is_broken() {
    let dir = tempfile::tempdir().unwrap();
    let first = TestCert::generate("first");
    let second = TestCert::generate("second");
    let (chain, key) = first.write_to(dir.path());
    let relay = RelayProcess::start(&tls_args(&chain, &key)).await.unwrap();
    let trust_both = tls_client_config(&[&first, &second], &[b"http/1.1"]);

    let open = tls_connect(relay.addr, trust_both.clone()).await.unwrap();
    assert_eq!(peer_certificate(&open).as_ref(), Some(&first.der));
    let mut open = Http1Conn::handshake(open).await.unwrap();
    assert_eq!(open.get("/healthz").await.unwrap().status, StatusCode::OK);

    second.write_to(dir.path());
    relay.signal(1);
    relay.wait_for_output("TLS certificate reloaded").await.unwrap();
    let fresh = tls_connect(relay.addr, trust_both.clone()).await.unwrap();
    assert_eq!(
        peer_certificate(&fresh).as_ref(),
        Some(&second.der),
        "a new connection sees the new certificate"
    );
    // The connection opened before the reload carries on.
    assert_eq!(open.get("/healthz").await.unwrap().status, StatusCode::OK);

    // A key that does not match the certificate: refused, the second pair stays.
    std::fs::write(&key, TestCert::generate("stray").key_pem).unwrap();
    relay.signal(1);
    relay.wait_for_output("NOT reloaded").await.unwrap();
    assert!(
        relay.output().contains(key.to_str().unwrap()),
        "the error names the key file: {}",
        relay.output()
    );
    let after = tls_connect(relay.addr, trust_both.clone()).await.unwrap();
    assert_eq!(peer_certificate(&after).as_ref(), Some(&second.der));

    // A chain file that is not PEM at all: refused too.
    std::fs::write(&key, &second.key_pem).unwrap();
    std::fs::write(&chain, "not a certificate").unwrap();
    relay.signal(1);
    tokio::time::timeout(STEP_TIMEOUT, async {
        while relay.output().matches("NOT reloaded").count() < 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("second refusal logged");
    let after = tls_connect(relay.addr, trust_both).await.unwrap();
    assert_eq!(peer_certificate(&after).as_ref(), Some(&second.der));
    let mut after = Http1Conn::handshake(after).await.unwrap();
    assert_eq!(after.get("/healthz").await.unwrap().status, StatusCode::OK);
}

#[tokio::test]
async fn missing_certificate_file_exits_2_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let (_, key) = TestCert::generate("x").write_to(dir.path());
    let missing = dir.path().join("no-such-fullchain.pem");
    let out = run_binary(&tls_args(&missing, &key)).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(missing.to_str().unwrap()), "{stderr}");
}

#[tokio::test]
async fn key_not_matching_the_certificate_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let (chain, key) = TestCert::generate("cert").write_to(dir.path());
    std::fs::write(&key, TestCert::generate("other").key_pem).unwrap();
    let out = run_binary(&tls_args(&chain, &key)).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("does not match"), "{stderr}");
    assert!(stderr.contains(key.to_str().unwrap()), "{stderr}");
}

#[tokio::test]
async fn key_file_without_a_key_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::generate("cert");
    let (chain, key) = cert.write_to(dir.path());
    std::fs::write(&key, &cert.cert_pem).unwrap();
    let out = run_binary(&tls_args(&chain, &key)).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(key.to_str().unwrap()), "{stderr}");
}

#[tokio::test]
async fn chain_path_without_key_path_is_refused() {
    let out = run_binary(&["--insecure-api-keys-not-enforced", "--chain-path", "/tmp/x.pem"]).await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--key-path"));
}
