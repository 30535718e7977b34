//! The WebSocket upgrade: validates the handshake (RFC 6455 section 4.2.1), answers 101,
//! and hands the upgraded connection to a handler as a tokio-tungstenite stream with
//! small buffers and the configured message limit. Also the vectored write of binary
//! frames that both routes use for their data (`write_binary_vectored`).

use hyper::upgrade::Upgraded;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use relay_proto::CloseCode;
use relay_proto::ErrorCode;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as TungsteniteCloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

use crate::config::ServerConfig;
use crate::error::ApiError;
use crate::http::body::{Body, json};
use crate::http::subprotocol::{SUBPROTOCOL, offered_subprotocols};
use crate::ws::read::FrameReader;

/// A server-side WebSocket over an upgraded hyper connection, read through a
/// [`FrameReader`].
pub type WsStream = WebSocketStream<FrameReader<TokioIo<Upgraded>>>;

/// Checks that `req` is a valid WebSocket handshake; refuses with 426 or 400 otherwise,
/// and with 403 `origin_not_allowed` when it comes from a browser page whose `Origin` is
/// not on `config.cors_allowed_origins` (only checked when that list is non-empty).
pub(crate) fn validate_handshake(req: &Request<Body>, config: &ServerConfig) -> Result<String, ApiError> {
    let header_has = |name: header::HeaderName, token: &str| {
        req.headers().get_all(name).iter().any(|v| {
            v.to_str().map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))).unwrap_or(false)
        })
    };
    let is_upgrade = header_has(header::CONNECTION, "upgrade") && header_has(header::UPGRADE, "websocket");
    if !is_upgrade {
        return Err(ApiError::new(
            ErrorCode::UpgradeRequired,
            "this endpoint is a WebSocket: send GET with Connection: Upgrade and Upgrade: websocket",
        ));
    }
    if req.method() != Method::GET {
        return Err(ApiError::new(ErrorCode::BadHandshake, "a WebSocket handshake must use GET"));
    }
    check_origin(req, &config.cors_allowed_origins)?;
    if req.headers().get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        return Err(ApiError::new(ErrorCode::BadHandshake, "Sec-WebSocket-Version must be 13"));
    }
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| is_valid_ws_key(k))
        .ok_or_else(|| {
            ApiError::new(ErrorCode::BadHandshake, "Sec-WebSocket-Key must be base64 of 16 bytes")
        })?;
    Ok(derive_accept_key(key.as_bytes()))
}

/// Refuses a handshake whose `Origin` header is not on `allowed` (cross-site WebSocket
/// hijacking: browsers send `Origin`, and a page may open a socket to any host). No
/// `Origin` header (a non-browser client) and an empty list let everything through;
/// `*` on the list allows every origin.
fn check_origin(req: &Request<Body>, allowed: &[String]) -> Result<(), ApiError> {
    if allowed.is_empty() {
        return Ok(());
    }
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default().trim();
    let listed = allowed.iter().any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin));
    if listed {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::OriginNotAllowed,
        format!("WebSocket handshakes from origin {origin:?} are not allowed on this relay"),
    ))
}

/// A 16-byte value in base64 is 24 characters ending in `==`.
fn is_valid_ws_key(k: &str) -> bool {
    let b = k.as_bytes();
    b.len() == 24
        && b[22..] == *b"=="
        && b[..22].iter().all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

/// The tungstenite configuration for a server connection under `config`.
pub(crate) fn ws_config(config: &ServerConfig) -> WebSocketConfig {
    let max = config.limits.max_message_bytes;
    WebSocketConfig::default()
        .read_buffer_size(config.ws_read_buffer_bytes)
        .write_buffer_size(config.ws_write_buffer_bytes)
        .max_write_buffer_size(config.ws_write_buffer_bytes.max(max) * 2 + (64 << 10))
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}

/// Answers the handshake with 101 and runs `handler` on the upgraded stream in its own
/// task. The caller validated the request with [`validate_handshake`] first, so that
/// refusals (unknown room, bad key) are plain HTTP before any upgrade.
pub(crate) fn upgrade<F, Fut>(
    mut req: Request<Body>,
    accept_key: String,
    config: &ServerConfig,
    handler: F,
) -> Response<Body>
where
    F: FnOnce(WsStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let ws_config = ws_config(config);
    let burst = config.ws_burst_read_bytes;
    // Frames tungstenite could not take in one read of its buffer are lifted out.
    let (large_min, large_max) = (config.ws_read_buffer_bytes, config.limits.max_message_bytes);
    let speaks_relay = offered_subprotocols(&req).any(|p| p == SUBPROTOCOL);
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    FrameReader::new(TokioIo::new(upgraded), burst, large_min, large_max),
                    Role::Server,
                    Some(ws_config),
                )
                .await;
                handler(ws).await;
            }
            Err(e) => tracing::debug!("websocket upgrade failed: {e}"),
        }
    });
    let mut resp = json(StatusCode::SWITCHING_PROTOCOLS, &serde_json::Value::Null);
    *resp.body_mut() = Body::default();
    let h = resp.headers_mut();
    h.remove(header::CONTENT_TYPE);
    h.insert(header::CONNECTION, header::HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, header::HeaderValue::from_static("websocket"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept_key.parse().expect("base64 is a valid header value"));
    if speaks_relay {
        // RFC 6455: answer with one of the offered protocols, never a credential.
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, header::HeaderValue::from_static(SUBPROTOCOL));
    }
    resp
}

/// The next message of `ws` if one is ready, for a connection's hand-written poll loop.
/// Charges one unit of the task's coop budget per message: messages tungstenite already
/// buffered come without touching the socket, so they would cost none of their own, and
/// a burst would starve the tasks it feeds. `Pending` (with a wake-up registered) when
/// no message is ready or the budget is spent. A large binary message gets its payload
/// back from the [`FrameReader`] that lifted it out of the stream.
pub(crate) fn poll_next_message<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<FrameReader<S>>,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<Option<Result<Message, tokio_tungstenite::tungstenite::Error>>> {
    use futures_util::StreamExt;
    let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
    let mut next = std::task::ready!(ws.poll_next_unpin(cx));
    coop.made_progress();
    if let Some(Ok(message)) = &mut next
        && let Err(e) = ws.get_mut().on_message(message)
    {
        next = Some(Err(tokio_tungstenite::tungstenite::Error::Io(std::io::Error::other(e))));
    }
    std::task::Poll::Ready(next)
}

/// A close message with `code` and `reason`.
pub fn close_message(code: CloseCode, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: TungsteniteCloseCode::from(code.code()),
        reason: reason.to_owned().into(),
    }))
}
