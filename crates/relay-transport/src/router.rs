//! Maps (method, path) to a handler. Every refusal is a JSON error with its status.

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use crate::error::ApiError;
use crate::http::{Body, error_response, json};
use crate::ratelimit::ClientAddr;
use crate::server::AppState;
use crate::{discovery, mailbox, rooms};

/// Routes one request.
pub(crate) async fn route(state: AppState, req: Request<Incoming>) -> Response<Body> {
    // The per-address request rate, before any work; the accept loop sets the address.
    if let Some(&ClientAddr(ip)) = req.extensions().get::<ClientAddr>()
        && let Err(limited) = state.rate_limiter().request(ip, tokio::time::Instant::now())
    {
        // metrics: state.metrics().rate_limited("request")
        return limited.response();
    }
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = req.method().clone();
    let result = match (segments.as_slice(), &method) {
        (["healthz"], &Method::GET) => Ok(json(StatusCode::OK, &serde_json::json!({"status": "ok"}))),
        (["v1", "rooms"], &Method::POST) => rooms::create(&state, req).await,
        (["create-room"], &Method::POST) => rooms::create_sodot(&state, req).await,
        (["v1", "rooms", room_id], &Method::GET) => rooms::join(&state, req, room_id).await,
        (["v1", "msg-relay"], &Method::GET) => mailbox::connect(&state, req).await,
        (["v1", "rooms", room_id, "msg-relay"], &Method::GET) => {
            mailbox::connect_room(&state, req, room_id).await
        }
        (["group" | "groups", ..] | ["v1", "group" | "groups" | "relays", ..], _) => {
            discovery::route(&state, req, &segments).await
        }
        (
            ["healthz"]
            | ["v1", "rooms"]
            | ["create-room"]
            | ["v1", "rooms", _]
            | ["v1", "msg-relay"]
            | ["v1", "rooms", _, "msg-relay"],
            _,
        ) => Err(ApiError::method_not_allowed()),
        _ => Err(ApiError::no_route()),
    };
    result.unwrap_or_else(|e| error_response(&e))
}
