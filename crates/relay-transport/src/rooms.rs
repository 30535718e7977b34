//! Room routes: create over REST, join over WebSocket. (Filled in by the rooms work.)

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use crate::error::ApiError;
use crate::http::Body;
use crate::server::AppState;

fn unbuilt() -> ApiError {
    ApiError::new(StatusCode::NOT_IMPLEMENTED, "not_implemented", "rooms are not built yet")
}

/// `POST /v1/rooms`.
pub(crate) async fn create(_state: &AppState, _req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    Err(unbuilt())
}

/// `POST /create-room` (Sodot shape).
pub(crate) async fn create_sodot(
    _state: &AppState,
    _req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    Err(unbuilt())
}

/// `GET /v1/rooms/{room_id}` (WebSocket).
pub(crate) async fn join(
    _state: &AppState,
    _req: Request<Incoming>,
    _room_id: &str,
) -> Result<Response<Body>, ApiError> {
    Err(unbuilt())
}
