//! Who is calling: finds the API key a request presents (`Authorization: Bearer <key>`,
//! `Authorization: <key>`, the WebSocket subprotocol `relay.api-key.<base64url>`, or
//! `?api_key=<key>`) and resolves it to a caller through the
//! key store (in memory, constant-time); counts the caller's usage.
//!
//! Refusals: no key 401 `missing_api_key`; malformed or unknown key 401
//! `unknown_api_key`; revoked 403 `revoked_api_key`; expired 403 `expired_api_key` (the
//! key is known but no longer allowed, so both are 403). A WebSocket route calls
//! [`authenticate`] before it upgrades, so these are plain HTTP answers.

use hyper::{Request, header};
use relay_proto::ErrorCode;

use relay_keystore::{VerifyError, unix_now};

use crate::caller::{Caller, OPEN_TENANT};
use crate::error::ApiError;
use crate::http::body::{Body, query_param};
use crate::http::subprotocol::{SUBPROTOCOL_API_KEY, offered_credential};
use crate::state::AppState;

/// Resolves the caller of `req`, or refuses with 401/403 and a JSON error naming why.
pub(crate) fn authenticate(state: &AppState, req: &Request<Body>) -> Result<Caller, ApiError> {
    if !state.config().api_keys_enforced {
        return Ok(Caller { tenant: OPEN_TENANT.to_owned(), key_name: None });
    }
    let key = presented_key(req).ok_or_else(|| {
        ApiError::new(
            ErrorCode::MissingApiKey,
            "an API key is required: Authorization: Bearer <key>, or ?api_key=<key>",
        )
    })?;
    // Without a store (a state built by `AppState::new` with keys enforced) no key is
    // known, so every key is refused as unknown.
    let store = state.keystore().ok_or(VerifyError::Unknown).map_err(refusal)?;
    let verified = store.verify(&key, unix_now()).map_err(refusal)?;
    Ok(Caller { tenant: verified.tenant, key_name: Some(verified.name) })
}

/// The JSON error for a key the store turned away. Never names the key.
fn refusal(e: VerifyError) -> ApiError {
    match e {
        VerifyError::Malformed | VerifyError::Unknown => {
            ApiError::new(ErrorCode::UnknownApiKey, "unknown API key")
        }
        VerifyError::Revoked => ApiError::new(ErrorCode::RevokedApiKey, "this API key was revoked"),
        VerifyError::Expired => ApiError::new(ErrorCode::ExpiredApiKey, "this API key has expired"),
    }
}

/// 503 for the admin routes of a server built without a key store (a test or embedding
/// configuration; the binary always opens one).
pub(crate) fn no_key_store() -> ApiError {
    ApiError::new(
        ErrorCode::NoKeyStore,
        "this server has no key store: API keys and the admin API are unavailable",
    )
}

/// The key presented by `req`, if any: the Authorization header (with or without
/// `Bearer `) wins over a `relay.api-key.<base64url>` WebSocket subprotocol, which wins
/// over the `api_key` query parameter.
pub(crate) fn presented_key(req: &Request<Body>) -> Option<String> {
    if let Some(value) = bearer_or_raw(req) {
        return Some(value);
    }
    if let Some(value) = offered_credential(req, SUBPROTOCOL_API_KEY) {
        return Some(value);
    }
    query_param(req.uri().query(), "api_key").filter(|k| !k.is_empty())
}

/// The Authorization header's value without a leading `Bearer `, if non-empty.
pub(crate) fn bearer_or_raw(req: &Request<Body>) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())?.trim();
    let key = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")).unwrap_or(value).trim();
    (!key.is_empty()).then(|| key.to_owned())
}
