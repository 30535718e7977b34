//! Mailbox routes over WebSocket. (Filled in by the mailbox work.)

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use crate::error::ApiError;
use crate::http::Body;
use crate::server::AppState;

fn unbuilt() -> ApiError {
    ApiError::new(StatusCode::NOT_IMPLEMENTED, "not_implemented", "the mailbox is not built yet")
}

/// `GET /v1/msg-relay` (WebSocket).
pub(crate) async fn connect(_state: &AppState, _req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    Err(unbuilt())
}

/// `GET /v1/rooms/{room_id}/msg-relay` (WebSocket).
pub(crate) async fn connect_room(
    _state: &AppState,
    _req: Request<Incoming>,
    _room_id: &str,
) -> Result<Response<Body>, ApiError> {
    Err(unbuilt())
}
