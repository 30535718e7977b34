//! Room routes (docs/protocol.md section 3): create over REST (`POST /v1/rooms`, and the
//! Sodot shape `POST /create-room`), join over WebSocket (`GET /v1/rooms/{room_id}`).
//!
//! Every refusal of a join happens before the upgrade, as a JSON error. After the
//! upgrade one task per connection moves frames between the socket and a
//! [`relay_core::rooms::Party`]: it pulls events from the room only as fast as the
//! socket takes them, so a slow reader never costs more memory than the room's
//! held-bytes bound; it writes every event that is ready and flushes once (data events
//! with one vectored write per run of them).

use relay_proto::ErrorCode;
use std::time::Duration;

use axum::extract::{Path, State};
use hyper::{Request, Response, StatusCode};
use relay_core::CoreError;
use relay_core::rooms::{JoinRequest, Resume, RoomInfo};
use relay_proto::rest::{CreateRoomRequest, RoomCreated, SodotCreateRoomRequest, SodotRoomCreated};

use crate::caller::Caller;
use crate::error::{ApiError, core_error};
use crate::http::auth::authenticate;
use crate::http::body::{Body, json, parse_json, query_param, read_body};
use crate::http::subprotocol::{SUBPROTOCOL_PARTY_TOKEN, SUBPROTOCOL_RESUME, offered_credential};
use crate::state::AppState;
use crate::ws::room::run_party;
use crate::ws::{upgrade, validate_handshake};

/// Room size of a Sodot `/create-room` call without a body.
const SODOT_DEFAULT_ROOM_SIZE: u64 = 2;

/// `POST /v1/rooms`: `{"room_size": N, "ttl_secs": T?}` -> 201
/// `{"room_uuid", "room_size", "expires_at"}`.
#[utoipa::path(
    post, path = "/v1/rooms", operation_id = "create_room", tag = "rooms", summary = "Create a room",
    request_body = relay_proto::rest::CreateRoomRequest,
    responses(
        (status = 201, description = "The room", body = relay_proto::rest::RoomCreated),
        (status = 400, description = "Invalid JSON, or a room size or TTL out of range", body = relay_proto::ErrorBody),
        (status = 401, description = "No API key, or an unknown one", body = relay_proto::ErrorBody),
        (status = 403, description = "The API key is revoked or expired", body = relay_proto::ErrorBody),
        (status = 413, description = "Body over the size limit", body = relay_proto::ErrorBody),
        (status = 429, description = "Over the key's rate limit, or the key has --max-rooms-per-key live rooms (too_many_rooms_for_key)", body = relay_proto::ErrorBody),
        (status = 503, description = "Too many rooms (too_many_rooms), or the relay holds --max-held-bytes for clients (held_bytes_full)", body = relay_proto::ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub(crate) async fn create(
    State(state): State<AppState>,
    req: Request<Body>,
) -> Result<Response<Body>, ApiError> {
    let state = &state;
    let (caller, body) = keyed_body(state, req).await?;
    let body: CreateRoomRequest = parse_json(&body)?;
    let (room, party_tokens) = create_room(state, &caller, body.room_size, body.ttl_secs, body.party_tokens)?;
    Ok(json(
        StatusCode::CREATED,
        &RoomCreated {
            room_uuid: room.id.to_string(),
            room_size: room.room_size,
            expires_at: room.expires_at,
            party_tokens,
        },
    ))
}

/// `POST /create-room` (Sodot shape): optional `{"room_size": N}` (2 without a body)
/// -> 200 `{"room_uuid"}`.
#[utoipa::path(
    post, path = "/create-room", operation_id = "create_room_sodot", tag = "rooms", summary = "Create a room (Sodot shape)",
    request_body(content = Option<relay_proto::rest::SodotCreateRoomRequest>, description = "Optional: a 2-party room without a body"),
    responses(
        (status = 200, description = "The room", body = relay_proto::rest::SodotRoomCreated),
        (status = 400, description = "Invalid JSON, or a room size or TTL out of range", body = relay_proto::ErrorBody),
        (status = 401, description = "No API key, or an unknown one", body = relay_proto::ErrorBody),
        (status = 403, description = "The API key is revoked or expired", body = relay_proto::ErrorBody),
        (status = 413, description = "Body over the size limit", body = relay_proto::ErrorBody),
        (status = 429, description = "Over the key's rate limit, or the key has --max-rooms-per-key live rooms (too_many_rooms_for_key)", body = relay_proto::ErrorBody),
        (status = 503, description = "Too many rooms (too_many_rooms), or the relay holds --max-held-bytes for clients (held_bytes_full)", body = relay_proto::ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub(crate) async fn create_sodot(
    State(state): State<AppState>,
    req: Request<Body>,
) -> Result<Response<Body>, ApiError> {
    let state = &state;
    let (caller, body) = keyed_body(state, req).await?;
    let body: SodotCreateRoomRequest = if body.iter().all(u8::is_ascii_whitespace) {
        SodotCreateRoomRequest::default()
    } else {
        parse_json(&body)?
    };
    let size = body.room_size.unwrap_or(SODOT_DEFAULT_ROOM_SIZE);
    let (room, party_tokens) = create_room(state, &caller, size, body.ttl_secs, body.party_tokens)?;
    Ok(json(StatusCode::OK, &SodotRoomCreated { room_uuid: room.id.to_string(), party_tokens }))
}

/// `GET /v1/rooms/{room_id}` (WebSocket), with `slot`, or `resume_token` and `last_seq`;
/// `party_token` for a room created with party tokens.
#[utoipa::path(
    get, path = "/v1/rooms/{room_id}", operation_id = "join_room", tag = "rooms", summary = "Join a room (WebSocket)",
    description = "A WebSocket handshake (`Connection: Upgrade`, `Upgrade: websocket`, \
        `Sec-WebSocket-Version: 13`, `Sec-WebSocket-Key`). Every refusal comes before the \
        upgrade, as a JSON error. Whoever holds the room ID may join: no API key. A room \
        created with party tokens is joined only with one (`party_token`), which takes its slot.",
    params(
        ("room_id" = String, Path, description = "The room ID from the create call"),
        ("slot" = Option<u16>, Query, description = "The slot to take (0-based); the lowest free one when absent"),
        ("resume_token" = Option<String>, Query, description = "Resume a dropped connection: the token from its welcome"),
        ("last_seq" = Option<u64>, Query, description = "With resume_token: the last seq received"),
        ("party_token" = Option<String>, Query, description = "A room created with party tokens: the token of the slot to take (required there)"),
    ),
    responses(
        (status = 101, description = "Switching Protocols: the room's WebSocket"),
        (status = 400, description = "Malformed room ID, query or handshake", body = relay_proto::ErrorBody),
        (status = 403, description = "Bad resume token (query or relay.resume.<base64url> subprotocol), a missing or wrong party token, or a browser Origin not on --cors-allowed-origins", body = relay_proto::ErrorBody),
        (status = 404, description = "No such room", body = relay_proto::ErrorBody),
        (status = 409, description = "Room full, slot taken, or resume gap", body = relay_proto::ErrorBody),
        (status = 426, description = "Not a WebSocket handshake", body = relay_proto::ErrorBody),
        (status = 503, description = "The relay is shutting down", body = relay_proto::ErrorBody),
    ),
)]
pub(crate) async fn join(
    State(state): State<AppState>,
    Path(room_id): Path<String>,
    req: Request<Body>,
) -> Result<Response<Body>, ApiError> {
    let state = &state;
    let id = room_id
        .parse()
        .map_err(|e: relay_core::id::RoomIdError| ApiError::new(ErrorCode::BadRoomId, e.to_string()))?;
    let accept_key = validate_handshake(&req, state.config())?;
    let offered = Offered {
        resume_token: offered_credential(&req, SUBPROTOCOL_RESUME),
        party_token: offered_credential(&req, SUBPROTOCOL_PARTY_TOKEN),
    };
    let request = join_request(req.uri().query(), offered)?;
    let guard = state
        .drain_guard()
        .ok_or_else(|| ApiError::new(ErrorCode::ShuttingDown, "the relay is shutting down"))?;
    let party = state.rooms().join(&id, request).map_err(|e| core_error(&e))?;
    tracing::debug!(room = %id, slot = party.slot(), resumed = party.welcome().resumed, "party joined");
    let task_state = state.clone();
    let meter = state.room_usage_meter(&id);
    Ok(upgrade(req, accept_key, state.config(), move |ws| run_party(ws, party, task_state, guard, meter)))
}

/// The caller of a keyed create (401/403 without a valid key, 429 over its rate) and
/// the request body, read within the body limit.
async fn keyed_body(state: &AppState, req: Request<Body>) -> Result<(Caller, bytes::Bytes), ApiError> {
    let caller = authenticate(state, &req)?;
    state.check_key_rate(&caller)?;
    let body = read_body(req, state.config()).await?;
    Ok((caller, body))
}

/// Creates a room for `caller` (its slots bound to party tokens when asked, the tokens
/// returned), and counts it: the room and its messages count against the caller's key.
fn create_room(
    state: &AppState,
    caller: &Caller,
    size: u64,
    ttl_secs: Option<u64>,
    party_tokens: bool,
) -> Result<(RoomInfo, Option<Vec<String>>), ApiError> {
    let max = state.rooms().limits().max_room_size;
    let size = u16::try_from(size).map_err(|_| core_error(&CoreError::BadRoomSize { got: size, max }))?;
    let (ttl, now) = (ttl_secs.map(Duration::from_secs), relay_keystore::unix_now());
    // A room adds load: while the relay could not hold one more of the largest
    // messages (or a quarter of the budget, when that is less) for clients, it opens
    // none (503 `held_bytes_full`).
    let budget = state.rooms().budget();
    let headroom = state.rooms().limits().max_message_bytes.min(budget.max() / 4);
    if budget.held().saturating_add(headroom) > budget.max() {
        return Err(core_error(&CoreError::HeldBytesFull { max: budget.max() }));
    }
    let owner = caller.key_name.as_deref();
    let (room, tokens) =
        state.rooms().create_owned(owner, size, ttl, now, party_tokens).map_err(|e| core_error(&e))?;
    tracing::debug!(room = %room.id, size, party_tokens, "room created");
    state.metrics().room_created();
    state.record_usage(caller, 0, 0, 1);
    Ok((room, tokens))
}

/// Credentials offered in `Sec-WebSocket-Protocol` (`relay.resume.<enc>`,
/// `relay.party-token.<enc>`), which win over the query string's.
struct Offered {
    resume_token: Option<String>,
    party_token: Option<String>,
}

/// Reads `slot`, `resume_token`, `last_seq` and `party_token` from the query string; a
/// token offered as a subprotocol wins over the query's (a room created with party
/// tokens needs its party token; others ignore it).
fn join_request(query: Option<&str>, offered: Offered) -> Result<JoinRequest, ApiError> {
    let slot = match query_param(query, "slot") {
        Some(s) => Some(s.parse::<u16>().map_err(|_| {
            ApiError::new(ErrorCode::BadRequest, format!("slot must be a slot number, got {s:?}"))
        })?),
        None => None,
    };
    let last_seq = match query_param(query, "last_seq") {
        Some(s) => Some(s.parse::<u64>().map_err(|_| {
            ApiError::new(
                ErrorCode::BadRequest,
                format!("last_seq must be a non-negative integer, got {s:?}"),
            )
        })?),
        None => None,
    };
    let token = offered.resume_token.or_else(|| query_param(query, "resume_token").filter(|t| !t.is_empty()));
    let resume = match (token, last_seq) {
        (Some(token), last_seq) => Some(Resume { token, last_seq }),
        (None, Some(_)) => {
            return Err(ApiError::new(ErrorCode::BadRequest, "last_seq needs a resume_token"));
        }
        (None, None) => None,
    };
    let party_token =
        offered.party_token.or_else(|| query_param(query, "party_token").filter(|t| !t.is_empty()));
    Ok(JoinRequest { slot, resume, party_token })
}
