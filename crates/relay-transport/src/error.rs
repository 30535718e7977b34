//! Errors: [`TransportError`] for the server as a whole, [`ApiError`] for one request,
//! rendered as `{"error": {"code": "...", "message": "..."}}` with its status.

use hyper::StatusCode;
use relay_core::CoreError;
use relay_proto::{ErrorBody, ErrorCode};

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

/// One refused request: a machine-readable code (relay-proto's [`ErrorCode`], which
/// also gives its HTTP status) and a human message.
/// As an axum response it is the JSON body with its status (and `Retry-After` when
/// set), and it carries its code in the response's extensions for the metrics layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    /// The HTTP status sent.
    pub status: StatusCode,
    /// Stable machine-readable code, e.g. `room_not_found`.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
    /// Whole seconds for a `Retry-After` header (429 from a rate limit).
    pub retry_after_secs: Option<u64>,
}

/// The error code of a refused request, left in the response's extensions by
/// [`ApiError`] so the metrics layer can count auth failures by code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ErrorCodeSent(pub(crate) ErrorCode);

impl ApiError {
    /// An error with `code`, sent with the status relay-proto gives that code.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        let status = StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError { status, code, message: message.into(), retry_after_secs: None }
    }

    /// 404 `not_found` for a path no route serves.
    pub fn no_route() -> ApiError {
        ApiError::new(ErrorCode::NotFound, "no such endpoint")
    }

    /// 405 for a known path with the wrong method.
    pub fn method_not_allowed() -> ApiError {
        ApiError::new(ErrorCode::MethodNotAllowed, "method not allowed on this endpoint")
    }

    /// 413 `body_too_large`, naming the limit.
    pub(crate) fn body_too_large(limit: usize) -> ApiError {
        ApiError::new(ErrorCode::BodyTooLarge, format!("request body is over the {limit}-byte limit"))
    }

    /// The error for a response that a layer or the router refused without a body of
    /// ours (405 from the router, 408 from the request timeout, 413 from the body
    /// limit, a path the extractor could not read): the same JSON as every other refusal.
    pub(crate) fn for_status(status: StatusCode) -> ApiError {
        match status {
            StatusCode::METHOD_NOT_ALLOWED => ApiError::method_not_allowed(),
            StatusCode::NOT_FOUND => ApiError::no_route(),
            StatusCode::REQUEST_TIMEOUT => {
                ApiError::new(ErrorCode::RequestTimeout, "the request took longer than the request timeout")
            }
            s if s.is_client_error() => ApiError::new(ErrorCode::BadRequest, "the request could not be read"),
            s => ApiError { status: s, ..ApiError::new(ErrorCode::Internal, "the request failed") },
        }
    }

    /// The JSON body: `{"error": {"code": ..., "message": ...}}`.
    pub fn body(&self) -> ErrorBody {
        ErrorBody::new(self.code, self.message.clone())
    }
}

/// The HTTP refusal for a core error (docs/protocol.md section 3).
pub(crate) fn core_error(e: &CoreError) -> ApiError {
    let code = match e {
        CoreError::RoomId(_) => ErrorCode::BadRoomId,
        CoreError::BadRoomSize { .. }
        | CoreError::BadTtl { .. }
        | CoreError::BadSlot { .. }
        | CoreError::ResumeAhead { .. } => ErrorCode::BadRequest,
        CoreError::TooManyRooms(_) => ErrorCode::TooManyRooms,
        CoreError::TooManyRoomsForKey(_) => ErrorCode::TooManyRoomsForKey,
        CoreError::HeldBytesFull { .. } => ErrorCode::HeldBytesFull,
        CoreError::RoomNotFound => ErrorCode::RoomNotFound,
        CoreError::RoomFull(_) => ErrorCode::RoomFull,
        CoreError::SlotTaken(_) => ErrorCode::SlotTaken,
        CoreError::ResumeGap { .. } => ErrorCode::ResumeGap,
        CoreError::BadResumeToken => ErrorCode::BadResumeToken,
        CoreError::BadPartyToken => ErrorCode::BadPartyToken,
        CoreError::BadDestination(_) => ErrorCode::BadDestination,
        CoreError::RoomBufferFull { .. } => ErrorCode::RoomBufferFull,
        CoreError::MessageTooBig { .. } => ErrorCode::MessageTooBig,
        CoreError::NoRuntime | CoreError::Random(_) | CoreError::PartyClosed | CoreError::Mailbox(_) => {
            ErrorCode::Internal
        }
    };
    ApiError::new(code, e.to_string())
}

impl axum::response::IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        // An error body always serializes: a code and a string.
        let body = serde_json::to_vec(&self.body()).unwrap_or_default();
        let mut resp = axum::response::Response::new(axum::body::Body::from(body));
        *resp.status_mut() = self.status;
        resp.headers_mut()
            .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
        if let Some(secs) = self.retry_after_secs {
            resp.headers_mut().insert(hyper::header::RETRY_AFTER, hyper::header::HeaderValue::from(secs));
        }
        resp.extensions_mut().insert(ErrorCodeSent(self.code));
        resp
    }
}
