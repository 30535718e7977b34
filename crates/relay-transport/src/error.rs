//! Errors: [`TransportError`] for the server as a whole, [`ApiError`] for one request,
//! rendered as `{"error": {"code": "...", "message": "..."}}` with its status.

use hyper::StatusCode;
use relay_core::CoreError;

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Accepting on the listener failed in a way that will not pass.
    #[error("listener failed: {0}")]
    Listener(#[from] std::io::Error),
    /// The configuration cannot be served (checked before the first accept).
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// One refused request: an HTTP status, a machine-readable code and a human message.
/// As an axum response it is the JSON body with its status (and `Retry-After` when
/// set), and it carries its code in the response's extensions for the metrics layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    /// The HTTP status sent.
    pub status: StatusCode,
    /// Stable machine-readable code, e.g. `room_not_found`.
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// Whole seconds for a `Retry-After` header (429 from a rate limit).
    pub retry_after_secs: Option<u64>,
}

/// The error code of a refused request, left in the response's extensions by
/// [`ApiError`] so the metrics layer can count auth failures by code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ErrorCodeSent(pub(crate) &'static str);

impl ApiError {
    /// An error with the given status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), retry_after_secs: None }
    }

    /// 400 with the given code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404 `not_found` for a path no route serves.
    pub fn no_route() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
    }

    /// 405 for a known path with the wrong method.
    pub fn method_not_allowed() -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed on this endpoint",
        )
    }

    /// 413 `body_too_large`, naming the limit.
    pub(crate) fn body_too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body is over the {limit}-byte limit"),
        )
    }

    /// The error for a response that a layer or the router refused without a body of
    /// ours (405 from the router, 408 from the request timeout, 413 from the body
    /// limit, a path the extractor could not read): the same JSON as every other refusal.
    pub(crate) fn for_status(status: StatusCode) -> ApiError {
        match status {
            StatusCode::METHOD_NOT_ALLOWED => ApiError::method_not_allowed(),
            StatusCode::NOT_FOUND => ApiError::no_route(),
            StatusCode::REQUEST_TIMEOUT => {
                ApiError::new(status, "request_timeout", "the request took longer than the request timeout")
            }
            s if s.is_client_error() => ApiError::bad_request("bad_request", "the request could not be read"),
            s => ApiError::new(s, "internal", "the request failed"),
        }
    }

    /// The JSON body: `{"error": {"code": ..., "message": ...}}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {"code": self.code, "message": self.message}})
    }
}

/// The HTTP refusal for a core error (docs/protocol.md section 3).
pub(crate) fn core_error(e: &CoreError) -> ApiError {
    let (status, code) = match e {
        CoreError::RoomId(_) => (StatusCode::BAD_REQUEST, "bad_room_id"),
        CoreError::BadRoomSize { .. }
        | CoreError::BadTtl { .. }
        | CoreError::BadSlot { .. }
        | CoreError::ResumeAhead { .. } => (StatusCode::BAD_REQUEST, "bad_request"),
        CoreError::TooManyRooms(_) => (StatusCode::SERVICE_UNAVAILABLE, "too_many_rooms"),
        CoreError::RoomNotFound => (StatusCode::NOT_FOUND, "room_not_found"),
        CoreError::RoomFull(_) => (StatusCode::CONFLICT, "room_full"),
        CoreError::SlotTaken(_) => (StatusCode::CONFLICT, "slot_taken"),
        CoreError::ResumeGap { .. } => (StatusCode::CONFLICT, "resume_gap"),
        CoreError::BadResumeToken => (StatusCode::FORBIDDEN, "bad_resume_token"),
        CoreError::BadDestination(_) => (StatusCode::BAD_REQUEST, "bad_destination"),
        CoreError::RoomBufferFull { .. } => (StatusCode::CONFLICT, "room_buffer_full"),
        CoreError::MessageTooBig { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "message_too_big"),
        CoreError::NoRuntime | CoreError::PartyClosed | CoreError::Mailbox(_) => {
            (StatusCode::INTERNAL_SERVER_ERROR, "internal")
        }
    };
    ApiError::new(status, code, e.to_string())
}

impl axum::response::IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        let mut resp = crate::http::body::json(self.status, &self.body());
        if let Some(secs) = self.retry_after_secs {
            resp.headers_mut().insert(hyper::header::RETRY_AFTER, hyper::header::HeaderValue::from(secs));
        }
        resp.extensions_mut().insert(ErrorCodeSent(self.code));
        resp
    }
}
