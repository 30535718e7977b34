//! The admin API: create, list and revoke API keys, see usage and live rooms.
//!
//! Two shapes of the same operations. Sodot's, kept so an operator can switch without
//! relearning, with the admin token as the last path segment:
//! `GET /createkey/<name>/<expiry_unix>/<token>`, `GET /rooms/<token>`,
//! `GET /revokekey/<name>/<token>`. And REST, with `Authorization: Bearer <token>`:
//! `POST /v1/admin/keys`, `GET /v1/admin/keys`, `DELETE /v1/admin/keys/{name}`,
//! `GET /v1/admin/rooms`, `DELETE /v1/admin/rooms/{room_id}`, `GET /v1/admin/usage`,
//! `GET /v1/admin/stats` (the console's charts). Also `GET /v1/key` for a client to
//! check the key it holds.
//!
//! The admin token is checked (constant time, by digest) before anything else, so an
//! unauthenticated caller learns nothing, and a wrong token gets the same 401 as a
//! missing one. The token in a Sodot path must never reach a log line: anything that
//! logs a request URI goes through [`redact_uri`]. Create and revoke flush to disk
//! before they answer, on a blocking thread.

use relay_proto::ErrorCode;
use std::borrow::Cow;
use std::sync::Arc;

use axum::extract::{Path, State};
use hyper::{Request, Response, StatusCode, Uri};
use relay_keystore::{ApiKey, CreateOptions, KeyInfo, KeyOrigin, KeyStore, KeystoreError, unix_now};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::http::auth::{authenticate, bearer_or_raw, no_key_store};
use crate::http::body::{Body, json, parse_json, percent_decode, read_body};
use crate::state::AppState;

/// What a log line may show of a request URI: the admin token of a Sodot admin path
/// (`/createkey/..`, `/rooms/<token>`, `/revokekey/..`) and the value of an `api_key`
/// or `party_token` query parameter replaced by `<redacted>`. Use it wherever a URI or path is logged.
pub fn redact_uri(uri: &Uri) -> String {
    let path = redact_path(uri.path());
    match uri.query() {
        None => path.into_owned(),
        Some(query) => {
            let query: Vec<Cow<'_, str>> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _))
                        if matches!(percent_decode(k).as_deref(), Some("api_key" | "party_token")) =>
                    {
                        Cow::Owned(format!("{k}=<redacted>"))
                    }
                    _ => Cow::Borrowed(pair),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
    }
}

/// [`redact_uri`] for a path alone.
pub fn redact_path(path: &str) -> Cow<'_, str> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let secret_last =
        matches!(segments.as_slice(), ["createkey", _, _, _] | ["rooms", _] | ["revokekey", _, _]);
    match segments.split_last() {
        Some((_, head)) if secret_last => Cow::Owned(format!("/{}/<redacted>", head.join("/"))),
        _ => Cow::Borrowed(path),
    }
}

/// How a key is shown by every admin answer and by `relay-server keys`: everything the
/// store keeps but the digest. `now` decides its status.
pub fn key_json(info: &KeyInfo, now: u64) -> Value {
    json!({
        "name": info.name,
        "tenant": info.tenant,
        "origin": match info.origin {
            KeyOrigin::Preconfigured => "preconfigured",
            KeyOrigin::Created => "created",
        },
        "created_at": info.created_at,
        "expires_at": info.expires_at,
        "revoked": info.revoked_at.is_some(),
        "revoked_at": info.revoked_at,
        "status": info.status(now),
        "usage": {
            "messages": info.usage.messages,
            "bytes": info.usage.bytes,
            "rooms": info.usage.rooms,
        },
    })
}

/// The answer to a create: the key itself (shown this once) and what was stored.
pub fn created_key_json(key: &ApiKey, info: &KeyInfo) -> Value {
    json!({
        "name": info.name,
        "key": key.to_base64(),
        "tenant": info.tenant,
        "created_at": info.created_at,
        "expires_at": info.expires_at,
    })
}

/// The body of `POST /v1/admin/keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKeyRequest {
    name: String,
    /// Unix seconds; 0 or absent means never.
    #[serde(default)]
    expires_at: u64,
    /// The mailbox namespace; absent makes the key its own tenant.
    tenant: Option<String>,
}

#[utoipa::path(
    get, path = "/createkey/{name}/{expiry_unix}/{token}", operation_id = "sodot_create_key", tag = "admin",
    summary = "Create an API key (Sodot shape; the admin token is the last path segment)",
    params(
        ("name" = String, Path, description = "Key name: 1 to 64 of A-Z a-z 0-9 . _ -"),
        ("expiry_unix" = u64, Path, description = "Expiry in unix seconds; 0 = never"),
        ("token" = String, Path, description = "The admin token"),
    ),
    responses(
        (status = 200, description = "The new key (shown once): name, key, tenant, created_at, expires_at", content_type = "application/json"),
        (status = 400, description = "Bad name or expiry", body = relay_proto::ErrorBody),
        (status = 401, description = "Wrong admin token", body = relay_proto::ErrorBody),
        (status = 409, description = "The name is taken", body = relay_proto::ErrorBody),
        (status = 503, description = "No key store, or storage failing", body = relay_proto::ErrorBody),
    ),
)]
/// `GET /createkey/<name>/<expiry_unix>/<token>`: 200 with the new key.
pub(crate) async fn sodot_create(
    State(state): State<AppState>,
    Path((name, expiry, token)): Path<(String, String, String)>,
) -> Result<Response<Body>, ApiError> {
    let state = &state;
    let store = admin_store(state, Some(token.as_str()))?;
    let expires_at = expiry.parse::<u64>().map_err(|_| {
        ApiError::new(ErrorCode::BadExpiry, "expiry must be unix seconds (0 = never expires)")
    })?;
    let options = CreateOptions { tenant: None, expires_at };
    create_key(store, name.to_owned(), options, StatusCode::OK).await
}

#[utoipa::path(
    get, path = "/rooms/{token}", operation_id = "sodot_list", tag = "admin",
    summary = "List keys under \"Licenses\" and live rooms under \"Rooms\" (Sodot shape)",
    params(("token" = String, Path, description = "The admin token")),
    responses(
        (status = 200, description = "Keys (never the key itself) with usage, and live rooms", content_type = "application/json"),
        (status = 401, description = "Wrong admin token", body = relay_proto::ErrorBody),
        (status = 503, description = "No key store", body = relay_proto::ErrorBody),
    ),
)]
/// `GET /rooms/<token>`: every key under `"Licenses"`, the live rooms under `"Rooms"`.
pub(crate) async fn sodot_list(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Result<Response<Body>, ApiError> {
    let state = &state;
    let store = admin_store(state, Some(token.as_str()))?;
    let now = unix_now();
    let licenses: Vec<Value> = store.list().iter().map(|k| key_json(k, now)).collect();
    Ok(json(StatusCode::OK, &json!({"Licenses": licenses, "Rooms": live_rooms(state)})))
}

#[utoipa::path(
    get, path = "/revokekey/{name}/{token}", operation_id = "sodot_revoke_key", tag = "admin",
    summary = "Revoke an API key (Sodot shape)",
    params(
        ("name" = String, Path, description = "Key name"),
        ("token" = String, Path, description = "The admin token"),
    ),
    responses(
        (status = 200, description = "The revoked key", content_type = "application/json"),
        (status = 401, description = "Wrong admin token", body = relay_proto::ErrorBody),
        (status = 404, description = "No key of that name", body = relay_proto::ErrorBody),
        (status = 503, description = "No key store, or storage failing", body = relay_proto::ErrorBody),
    ),
)]
/// `GET /revokekey/<name>/<token>`: 200 with the revoked key.
pub(crate) async fn sodot_revoke(
    State(state): State<AppState>,
    Path((name, token)): Path<(String, String)>,
) -> Result<Response<Body>, ApiError> {
    let state = &state;
    let store = admin_store(state, Some(token.as_str()))?;
    revoke_key(state, store, name.to_owned()).await
}

#[utoipa::path(
    post, path = "/v1/admin/keys", operation_id = "admin_create_key", tag = "admin",
    summary = "Create an API key",
    request_body(content_type = "application/json", description = "{\"name\": string, \"expires_at\"?: unix seconds (0 = never), \"tenant\"?: string}"),
    responses(
        (status = 201, description = "The new key (shown once)", content_type = "application/json"),
        (status = 400, description = "Bad JSON, name, tenant or expiry", body = relay_proto::ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = relay_proto::ErrorBody),
        (status = 409, description = "The name is taken", body = relay_proto::ErrorBody),
        (status = 413, description = "Body too large", body = relay_proto::ErrorBody),
        (status = 503, description = "No key store, or storage failing", body = relay_proto::ErrorBody),
    ),
    security(("bearer" = [])),
)]
/// `POST /v1/admin/keys` with `{"name", "expires_at"?, "tenant"?}`: 201 with the new key.
pub(crate) async fn create(
    State(state): State<AppState>,
    req: Request<Body>,
) -> Result<Response<Body>, ApiError> {
    let state = &state;
    let store = admin_store(state, bearer_or_raw(&req).as_deref())?;
    let body = read_body(req, state.config()).await?;
    let request: CreateKeyRequest = parse_json(&body)?;
    let options = CreateOptions { tenant: request.tenant, expires_at: request.expires_at };
    create_key(store, request.name, options, StatusCode::CREATED).await
}

#[utoipa::path(
    get, path = "/v1/admin/keys", operation_id = "admin_list_keys", tag = "admin",
    summary = "List every key (never the key itself)",
    responses(
        (status = 200, description = "{\"keys\": [...]}", content_type = "application/json"),
        (status = 401, description = "Missing or wrong admin token", body = relay_proto::ErrorBody),
        (status = 503, description = "No key store", body = relay_proto::ErrorBody),
    ),
    security(("bearer" = [])),
)]
/// `GET /v1/admin/keys`: every key (revoked and expired ones too), by name.
pub(crate) async fn list(
    State(state): State<AppState>,
    req: Request<Body>,
) -> Result<Response<Body>, ApiError> {
    let (state, req) = (&state, &req);
    let store = admin_store(state, bearer_or_raw(req).as_deref())?;
    let now = unix_now();
    let keys: Vec<Value> = store.list().iter().map(|k| key_json(k, now)).collect();
    Ok(json(StatusCode::OK, &json!({"keys": keys})))
}

#[utoipa::path(
    delete, path = "/v1/admin/keys/{name}", operation_id = "admin_revoke_key", tag = "admin",
    summary = "Revoke an API key",
    params(("name" = String, Path, description = "Key name")),
    responses(
        (status = 200, description = "The revoked key", content_type = "application/json"),
        (status = 401, description = "Missing or wrong admin token", body = relay_proto::ErrorBody),
        (status = 404, description = "No key of that name", body = relay_proto::ErrorBody),
        (status = 503, description = "No key store, or storage failing", body = relay_proto::ErrorBody),
    ),
    security(("bearer" = [])),
)]
/// `DELETE /v1/admin/keys/{name}`: revokes it; 200 with the revoked key.
pub(crate) async fn revoke(
    State(state): State<AppState>,
    Path(name): Path<String>,
    req: Request<Body>,
) -> Result<Response<Body>, ApiError> {
    let (state, req) = (&state, &req);
    let store = admin_store(state, bearer_or_raw(req).as_deref())?;
    revoke_key(state, store, name.to_owned()).await
}

#[utoipa::path(
    get, path = "/v1/admin/rooms", operation_id = "admin_list_rooms", tag = "admin",
    summary = "List the live rooms",
    responses(
        (status = 200, description = "{\"rooms\": [...]}", content_type = "application/json"),
        (status = 401, description = "Missing or wrong admin token", body = relay_proto::ErrorBody),
        (status = 503, description = "No key store", body = relay_proto::ErrorBody),
    ),
    security(("bearer" = [])),
)]
/// `GET /v1/admin/rooms`: the live rooms.
pub(crate) async fn rooms(
    State(state): State<AppState>,
    req: Request<Body>,
) -> Result<Response<Body>, ApiError> {
    let (state, req) = (&state, &req);
    admin_store(state, bearer_or_raw(req).as_deref())?;
    Ok(json(StatusCode::OK, &json!({"rooms": live_rooms(state)})))
}

#[utoipa::path(
    delete, path = "/v1/admin/rooms/{room_id}", operation_id = "admin_close_room", tag = "admin",
    summary = "Close a live room: its parties get close code 1008 `room closed by the operator`",
    params(("room_id" = String, Path, description = "The room ID")),
    responses(
        (status = 200, description = "The room is closed", body = relay_proto::rest::RoomClosed),
        (status = 400, description = "Not a room ID", body = relay_proto::ErrorBody),
        (status = 401, description = "Missing or wrong admin token", body = relay_proto::ErrorBody),
        (status = 404, description = "No live room of that ID", body = relay_proto::ErrorBody),
        (status = 503, description = "No key store", body = relay_proto::ErrorBody),
    ),
    security(("bearer" = [])),
)]
/// `DELETE /v1/admin/rooms/{room_id}`: closes the room; its parties get 1008.
pub(crate) async fn close_room(
    State(state): State<AppState>,
    Path(room_id): Path<String>,
    req: Request<Body>,
) -> Result<Response<Body>, ApiError> {
    let (state, req) = (&state, &req);
    admin_store(state, bearer_or_raw(req).as_deref())?;
    let id: relay_core::RoomId = room_id
        .parse()
        .map_err(|e: relay_core::id::RoomIdError| ApiError::new(ErrorCode::BadRoomId, e.to_string()))?;
    if !state.rooms().close(&id, relay_core::rooms::CloseReason::ClosedByOperator) {
        return Err(ApiError::new(ErrorCode::RoomNotFound, "no such room"));
    }
    tracing::info!(room = %id, "room closed by the operator");
    let body = relay_proto::rest::RoomClosed { room_uuid: id.to_string(), closed: true };
    Ok(json(StatusCode::OK, &body))
}

#[utoipa::path(
    get, path = "/v1/admin/stats", operation_id = "admin_stats", tag = "admin",
    summary = "Version, uptime, and recent samples of the counters (the console's charts)",
    description = "Two rings of samples of the relay's counters: every 5 s for the last 10 \
        minutes (`fine`) and every minute for the last day (`coarse`), plus the counters \
        `now`. Counters are totals since start; a rate is the difference of two samples.",
    responses(
        (status = 200, description = "The samples", body = relay_proto::rest::Stats),
        (status = 401, description = "Missing or wrong admin token", body = relay_proto::ErrorBody),
        (status = 503, description = "No key store", body = relay_proto::ErrorBody),
    ),
    security(("bearer" = [])),
)]
/// `GET /v1/admin/stats`: version, uptime and the stats rings.
pub(crate) async fn stats(
    State(state): State<AppState>,
    req: Request<Body>,
) -> Result<Response<Body>, ApiError> {
    let (state, req) = (&state, &req);
    admin_store(state, bearer_or_raw(req).as_deref())?;
    let now = crate::stats::sample(state);
    Ok(json(StatusCode::OK, &state.stats().snapshot(now)))
}

#[utoipa::path(
    get, path = "/v1/admin/usage", operation_id = "admin_usage", tag = "admin",
    summary = "Usage per key (messages, bytes, rooms) and the total",
    responses(
        (status = 200, description = "{\"keys\": [...], \"total\": {...}}", content_type = "application/json"),
        (status = 401, description = "Missing or wrong admin token", body = relay_proto::ErrorBody),
        (status = 503, description = "No key store", body = relay_proto::ErrorBody),
    ),
    security(("bearer" = [])),
)]
/// `GET /v1/admin/usage`: usage per key and the total.
pub(crate) async fn usage(
    State(state): State<AppState>,
    req: Request<Body>,
) -> Result<Response<Body>, ApiError> {
    let (state, req) = (&state, &req);
    let store = admin_store(state, bearer_or_raw(req).as_deref())?;
    let keys = store.list();
    let (mut messages, mut bytes, mut rooms) = (0u64, 0u64, 0u64);
    let per_key: Vec<Value> = keys
        .iter()
        .map(|k| {
            messages = messages.saturating_add(k.usage.messages);
            bytes = bytes.saturating_add(k.usage.bytes);
            rooms = rooms.saturating_add(k.usage.rooms);
            json!({
                "name": k.name,
                "tenant": k.tenant,
                "messages": k.usage.messages,
                "bytes": k.usage.bytes,
                "rooms": k.usage.rooms,
            })
        })
        .collect();
    let total = json!({"messages": messages, "bytes": bytes, "rooms": rooms});
    Ok(json(StatusCode::OK, &json!({"keys": per_key, "total": total})))
}

#[utoipa::path(
    get, path = "/v1/key", operation_id = "whoami", tag = "admin",
    summary = "The name, tenant and expiry of the API key presented",
    responses(
        (status = 200, description = "{\"name\", \"tenant\", \"expires_at\"}", content_type = "application/json"),
        (status = 401, description = "Missing or unknown key", body = relay_proto::ErrorBody),
        (status = 403, description = "Revoked or expired key", body = relay_proto::ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
/// `GET /v1/key` with an API key: the name, tenant and expiry of the key presented, so
/// a client can check its key without creating anything.
pub(crate) async fn whoami(
    State(state): State<AppState>,
    req: Request<Body>,
) -> Result<Response<Body>, ApiError> {
    let (state, req) = (&state, &req);
    let caller = authenticate(state, req)?;
    let info = caller.key_name.as_deref().and_then(|name| state.keystore()?.get(name));
    let body = match info {
        Some(info) => json!({"name": info.name, "tenant": info.tenant, "expires_at": info.expires_at}),
        None => json!({"name": null, "tenant": caller.tenant, "expires_at": 0}),
    };
    Ok(json(StatusCode::OK, &body))
}

/// The live rooms, as the admin sees them, with the name of the key that created each.
fn live_rooms(state: &AppState) -> Vec<Value> {
    let mut rooms = state.rooms().list();
    rooms.sort_by_key(|r| r.id.to_string());
    rooms
        .iter()
        .map(|r| {
            json!({
                "room_uuid": r.id,
                "room_size": r.room_size,
                "created_at": r.created_at,
                "expires_at": r.expires_at,
                "present": r.present,
                "ready": r.ready,
                "key": state.rooms().owner(&r.id).as_deref(),
            })
        })
        .collect()
}

/// The key store, once `presented` is the admin token. A missing and a wrong token get
/// the same answer.
fn admin_store(state: &AppState, presented: Option<&str>) -> Result<Arc<KeyStore>, ApiError> {
    let store = state.keystore().ok_or_else(no_key_store)?;
    match presented {
        Some(token) if store.verify_admin_token(token) => Ok(store.clone()),
        _ => Err(ApiError::new(ErrorCode::Unauthorized, "a valid admin token is required")),
    }
}

async fn create_key(
    store: Arc<KeyStore>,
    name: String,
    options: CreateOptions,
    status: StatusCode,
) -> Result<Response<Body>, ApiError> {
    // The store commits (sled: flushed on a blocking thread; PostgreSQL: a committed
    // transaction) before it answers.
    let (key, info) = store.create(&name, options, unix_now()).await.map_err(|e| store_error(&e))?;
    Ok(json(status, &created_key_json(&key, &info)))
}

/// Revokes key `name` and closes the rooms it created. Its WebSockets close within
/// `lease_check_interval` (`ws::driver`).
async fn revoke_key(
    state: &AppState,
    store: Arc<KeyStore>,
    name: String,
) -> Result<Response<Body>, ApiError> {
    let revoked = name.clone();
    let info = store.revoke(&name, unix_now()).await.map_err(|e| store_error(&e))?;
    let closed = state.close_rooms_of_key(&revoked);
    tracing::info!(key = revoked.as_str(), rooms_closed = closed, "rooms of a revoked key closed");
    Ok(json(StatusCode::OK, &key_json(&info, unix_now())))
}

/// The status and code for a store refusal or failure (messages never hold a secret).
fn store_error(e: &KeystoreError) -> ApiError {
    let code = match e {
        KeystoreError::NotFound { .. } => ErrorCode::KeyNotFound,
        KeystoreError::NameTaken { .. } => ErrorCode::KeyNameTaken,
        KeystoreError::InvalidName { .. } => ErrorCode::BadKeyName,
        KeystoreError::InvalidTenant { .. } => ErrorCode::BadTenant,
        KeystoreError::ExpiryInPast { .. } => ErrorCode::BadExpiry,
        KeystoreError::Storage(_)
        | KeystoreError::Database { .. }
        | KeystoreError::DatabaseUnreachable { .. }
        | KeystoreError::SchemaNewer { .. }
        | KeystoreError::Task(_)
        | KeystoreError::Corrupt { .. }
        | KeystoreError::Random(_)
        | KeystoreError::DataDir { .. }
        | KeystoreError::Locked { .. } => {
            tracing::error!("key store failed: {e}");
            ErrorCode::StorageUnavailable
        }
        _ => ErrorCode::BadRequest,
    };
    let message = if code == ErrorCode::StorageUnavailable {
        format!("the key store is unavailable, try again later: {e}")
    } else {
        e.to_string()
    };
    ApiError::new(code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_tokens_and_api_keys_are_redacted_from_logged_uris() {
        let cases = [
            ("/createkey/app/0/s3cret-token", "/createkey/app/0/<redacted>"),
            ("/rooms/s3cret-token", "/rooms/<redacted>"),
            ("/revokekey/app/s3cret-token", "/revokekey/app/<redacted>"),
            (
                "/v1/msg-relay?api_key=ABEiM0RVZneImaq7zN3u%2Fw%3D%3D&x=1",
                "/v1/msg-relay?api_key=<redacted>&x=1",
            ),
            ("/v1/rooms/abc", "/v1/rooms/abc"),
            (
                "/v1/rooms/abc?slot=1&party_token=q3Jx8Vd0nT1bC2rQ7mZ9aw",
                "/v1/rooms/abc?slot=1&party_token=<redacted>",
            ),
            ("/v1/admin/keys", "/v1/admin/keys"),
        ];
        for (uri, expected) in cases {
            let uri: Uri = uri.parse().expect("uri");
            assert_eq!(redact_uri(&uri), expected);
        }
    }
}
