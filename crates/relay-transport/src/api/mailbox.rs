//! Mailbox routes over WebSocket (docs/protocol.md section 4): `GET /v1/msg-relay` in the
//! caller's tenant namespace and `GET /v1/rooms/{room_id}/msg-relay` in the room's.
//!
//! Refusals before the upgrade are JSON HTTP errors. After it, one task per connection
//! moves frames between the socket and a [`relay_core::MailboxConn`]: binary frames in
//! go to the core as the `Bytes` tungstenite produced (their receivers woken once per
//! burst), frames out leave in batches with one vectored write each, never copied.
//! Errors close the socket with a code.

use relay_proto::ErrorCode;
use std::str::FromStr;

use axum::extract::{Path, State};
use hyper::{Request, Response};
use relay_core::RoomId;
use relay_core::mailbox::Namespace;

use crate::caller::{Lease, UsageMeter};
use crate::error::ApiError;
use crate::http::body::Body;
use crate::state::AppState;
use crate::ws::mailbox::run;
use crate::ws::{self};

/// `GET /v1/msg-relay` (WebSocket): the namespace is the API key's tenant.
#[utoipa::path(
    get, path = "/v1/msg-relay", operation_id = "open_mailbox", tag = "mailbox", summary = "Open the mailbox (WebSocket)",
    description = "A WebSocket handshake; binary frames as in docs/protocol.md section 4, \
        in the API key's tenant namespace. Every refusal comes before the upgrade.",
    responses(
        (status = 101, description = "Switching Protocols: the mailbox WebSocket"),
        (status = 400, description = "Malformed handshake", body = relay_proto::ErrorBody),
        (status = 401, description = "No API key, or an unknown one", body = relay_proto::ErrorBody),
        (status = 403, description = "The API key is revoked or expired, or a browser Origin not on --cors-allowed-origins", body = relay_proto::ErrorBody),
        (status = 426, description = "Not a WebSocket handshake", body = relay_proto::ErrorBody),
        (status = 503, description = "The relay is shutting down, or the mailbox is shared across instances and Redis is unreachable (storage_unavailable)", body = relay_proto::ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub(crate) async fn connect(
    State(state): State<AppState>,
    req: Request<Body>,
) -> Result<Response<Body>, ApiError> {
    let state = &state;
    let caller = crate::http::auth::authenticate(state, &req)?;
    state.check_key_rate(&caller)?;
    let meter = state.usage_meter(&caller);
    open(state, req, Namespace::tenant(&caller.tenant), meter, Lease::of(&caller))
}

/// `GET /v1/rooms/{room_id}/msg-relay` (WebSocket): the namespace is the room; whoever
/// holds the room ID may use it, no key needed.
#[utoipa::path(
    get, path = "/v1/rooms/{room_id}/msg-relay", operation_id = "open_room_mailbox", tag = "mailbox", summary = "Open a room's mailbox (WebSocket)",
    description = "A WebSocket handshake; the mailbox namespace is the room. Whoever holds \
        the room ID may use it: no API key.",
    params(("room_id" = String, Path, description = "A live room's ID")),
    responses(
        (status = 101, description = "Switching Protocols: the mailbox WebSocket"),
        (status = 400, description = "Malformed room ID or handshake", body = relay_proto::ErrorBody),
        (status = 403, description = "A browser Origin not on --cors-allowed-origins", body = relay_proto::ErrorBody),
        (status = 404, description = "No such room", body = relay_proto::ErrorBody),
        (status = 426, description = "Not a WebSocket handshake", body = relay_proto::ErrorBody),
        (status = 503, description = "The relay is shutting down, or the mailbox is shared across instances and Redis is unreachable (storage_unavailable)", body = relay_proto::ErrorBody),
    ),
)]
pub(crate) async fn connect_room(
    State(state): State<AppState>,
    Path(room_id): Path<String>,
    req: Request<Body>,
) -> Result<Response<Body>, ApiError> {
    let state = &state;
    let room = RoomId::from_str(&room_id).map_err(|e| ApiError::new(ErrorCode::BadRoomId, e.to_string()))?;
    if state.rooms().info(&room).is_none() {
        return Err(ApiError::new(
            ErrorCode::RoomNotFound,
            "no such room (it never existed, expired or closed)",
        ));
    }
    // Metered against the room's creator; ends when the room closes.
    open(state, req, Namespace::room(&room), state.room_usage_meter(&room), Lease::Room(room))
}

/// Validates the handshake, takes a drain guard and upgrades into [`run`].
fn open(
    state: &AppState,
    req: Request<Body>,
    namespace: Namespace,
    meter: UsageMeter,
    lease: Lease,
) -> Result<Response<Body>, ApiError> {
    let accept_key = ws::validate_handshake(&req, state.config())?;
    if state.redis_mailbox().is_some_and(|redis| !redis.is_up()) {
        return Err(ApiError::new(
            ErrorCode::StorageUnavailable,
            "the mailbox is shared across instances and Redis is unreachable: retry later",
        ));
    }
    let guard = state
        .drain_guard()
        .ok_or_else(|| ApiError::new(ErrorCode::ShuttingDown, "the relay is shutting down"))?;
    let task_state = state.clone();
    Ok(ws::upgrade(req, accept_key, state.config(), move |socket| async move {
        let conn = task_state.mailbox().connect(namespace);
        run(task_state, conn, socket, guard, meter, lease).await;
    }))
}
