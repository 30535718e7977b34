//! Who is calling: finds the API key a request presents (`Authorization: Bearer <key>`,
//! `Authorization: <key>`, or `?api_key=<key>`) and resolves it to a caller.
//!
//! Until the key store is wired in, a server with keys enforced refuses every key-gated
//! request; the binary refuses to start in that state, so this only shows in tests.

use hyper::body::Incoming;
use hyper::{Request, StatusCode, header};

use crate::error::ApiError;
use crate::http::query_param;
use crate::server::AppState;

/// The mailbox namespace of callers when keys are not enforced.
pub(crate) const OPEN_TENANT: &str = "";

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Caller {
    /// The key's tenant: its mailbox namespace, shared by keys of the same tenant.
    pub(crate) tenant: String,
    /// The key's name, for usage accounting; `None` when keys are not enforced.
    pub(crate) key_name: Option<String>,
}

/// Resolves the caller of `req`, or refuses with 401/403 and a JSON error naming why.
pub(crate) fn authenticate(state: &AppState, req: &Request<Incoming>) -> Result<Caller, ApiError> {
    if !state.config().api_keys_enforced {
        return Ok(Caller { tenant: OPEN_TENANT.to_owned(), key_name: None });
    }
    let _key = presented_key(req).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing_api_key",
            "an API key is required: Authorization: Bearer <key>, or ?api_key=<key>",
        )
    })?;
    Err(ApiError::new(StatusCode::UNAUTHORIZED, "unknown_api_key", "unknown API key"))
}

/// The key presented by `req`, if any: the Authorization header (with or without
/// `Bearer `) wins over the `api_key` query parameter.
pub(crate) fn presented_key(req: &Request<Incoming>) -> Option<String> {
    if let Some(value) = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let value = value.trim();
        let key =
            value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")).unwrap_or(value).trim();
        if !key.is_empty() {
            return Some(key.to_owned());
        }
    }
    query_param(req.uri().query(), "api_key").filter(|k| !k.is_empty())
}
