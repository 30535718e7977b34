//! The one error type of the crate: every refusal the relay can send (an HTTP status
//! with its JSON `error.code`, or a WebSocket close code), plus local failures
//! (bad URL, network, TLS, timeouts).

use std::time::Duration;

use relay_proto::{CloseCode, ErrorBody, ErrorCode};

/// The close code RFC 6455 reports for a close frame without one ("no status
/// received"); never sent on the wire.
pub(crate) const NO_CLOSE_CODE: u16 = 1005;

/// Anything that can go wrong talking to the relay.
///
/// HTTP refusals carry the server's human-readable `message`; close codes carry the
/// close frame's `reason`. [`Error::http_status`] and [`Error::close_code`] give the
/// number back when a caller needs it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL could not be used (not ws/wss/http/https, no host, bad room ID...).
    #[error("invalid url {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An argument the relay would refuse anyway (empty payload, room size 0...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The TCP connection could not be made, or failed.
    #[error("network error: {0}")]
    Io(#[from] std::io::Error),
    /// The TLS configuration or handshake failed.
    #[error("tls error: {0}")]
    Tls(#[from] rustls::Error),
    /// The CA certificate PEM could not be read.
    #[error("bad ca certificate: {0}")]
    BadCaCertificate(String),
    /// Connecting (TCP, TLS and WebSocket handshake) or an HTTP request took too long.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// What was being waited for.
        what: &'static str,
        /// The configured limit.
        after: Duration,
    },
    /// An HTTP exchange failed below the status line (connection closed, bad response).
    #[error("http error: {0}")]
    Http(String),
    /// A WebSocket error below the relay protocol (bad frame, reset without close...).
    #[error("websocket error: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    /// The relay said something the protocol does not allow.
    #[error("protocol violation by the relay: {0}")]
    Protocol(String),

    // ---- HTTP refusals (docs/protocol.md: errors are {"error":{"code","message"}}) ----
    /// 400 `bad_room_id`: the room ID is not a canonical lowercase UUID.
    #[error("bad room id: {message}")]
    BadRoomId {
        /// The server's explanation.
        message: String,
    },
    /// 400 with any other code (`bad_request`, `bad_handshake`...).
    #[error("bad request ({code}): {message}")]
    BadRequest {
        /// The machine-readable code.
        code: String,
        /// The server's explanation.
        message: String,
    },
    /// 401: no API key, or an unknown one.
    #[error("unauthorized: {message}")]
    Unauthorized {
        /// The server's explanation.
        message: String,
    },
    /// 403 `bad_resume_token`: the resume token is not this room's.
    #[error("bad resume token: {message}")]
    BadResumeToken {
        /// The server's explanation.
        message: String,
    },
    /// 403 with any other code: the key is valid but not allowed (revoked, expired...).
    #[error("forbidden ({code}): {message}")]
    Forbidden {
        /// The machine-readable code.
        code: String,
        /// The server's explanation.
        message: String,
    },
    /// 404 `room_not_found`: no such room (never existed, expired or closed).
    #[error("room not found: {message}")]
    RoomNotFound {
        /// The server's explanation.
        message: String,
    },
    /// 404 with any other code: no such endpoint (wrong base URL?).
    #[error("not found ({code}): {message}")]
    NotFound {
        /// The machine-readable code.
        code: String,
        /// The server's explanation.
        message: String,
    },
    /// 409 `room_full`: every slot is taken.
    #[error("room full: {message}")]
    RoomFull {
        /// The server's explanation.
        message: String,
    },
    /// 409 `slot_taken`: the asked slot already has a party.
    #[error("slot taken: {message}")]
    SlotTaken {
        /// The server's explanation.
        message: String,
    },
    /// 409 `resume_gap`: the relay no longer holds what came after our `last_seq`.
    #[error("resume gap: {message}")]
    ResumeGap {
        /// The server's explanation.
        message: String,
    },
    /// 409 with any other code.
    #[error("conflict ({code}): {message}")]
    Conflict {
        /// The machine-readable code.
        code: String,
        /// The server's explanation.
        message: String,
    },
    /// 413: the request body is too large.
    #[error("payload too large: {message}")]
    PayloadTooLarge {
        /// The server's explanation.
        message: String,
    },
    /// 426: the endpoint is a WebSocket and this was not a handshake.
    #[error("upgrade required: {message}")]
    UpgradeRequired {
        /// The server's explanation.
        message: String,
    },
    /// 429: slow down.
    #[error("rate limited: {message}")]
    RateLimited {
        /// The server's explanation.
        message: String,
    },
    /// 503 (`too_many_rooms`, not ready...): the relay cannot take this now.
    #[error("unavailable ({code}): {message}")]
    Unavailable {
        /// The machine-readable code.
        code: String,
        /// The server's explanation.
        message: String,
    },
    /// Any other HTTP status.
    #[error("http {status} ({code}): {message}")]
    HttpStatus {
        /// The status.
        status: u16,
        /// The machine-readable code, empty when the body was not the JSON error shape.
        code: String,
        /// The server's explanation (or the raw body).
        message: String,
    },

    // ---- WebSocket close codes (docs/protocol.md 3.6 and 4) ----
    /// 1000: the room closed (every party left) or this party left.
    #[error("closed normally: {reason}")]
    Closed {
        /// The close reason.
        reason: String,
    },
    /// 1001: the relay is shutting down.
    #[error("server shutting down: {reason}")]
    ServerShutdown {
        /// The close reason.
        reason: String,
    },
    /// 1007: we sent a malformed frame (mailbox: shorter than 36 bytes, or text).
    #[error("malformed frame: {reason}")]
    Malformed {
        /// The close reason.
        reason: String,
    },
    /// 1008: a policy the relay cannot let pass (bad key, ...).
    #[error("policy violation: {reason}")]
    PolicyViolation {
        /// The close reason.
        reason: String,
    },
    /// 1009: a frame over the relay's `max_message_bytes`.
    #[error("message too big: {reason}")]
    MessageTooBig {
        /// The close reason.
        reason: String,
    },
    /// 1011: a relay bug.
    #[error("relay internal error: {reason}")]
    ServerError {
        /// The close reason.
        reason: String,
    },
    /// 1013: over quota or a slow consumer; try again later.
    #[error("try again later: {reason}")]
    TryAgainLater {
        /// The close reason.
        reason: String,
    },
    /// 4000: the room's TTL passed.
    #[error("room expired: {reason}")]
    RoomExpired {
        /// The close reason.
        reason: String,
    },
    /// 4001: the same slot resumed on a newer connection.
    #[error("replaced by a newer connection: {reason}")]
    Replaced {
        /// The close reason.
        reason: String,
    },
    /// 4002: a party aborted the room (`abort`); the room is over.
    #[error("room aborted by slot {}: {reason}", slot.map_or_else(|| "?".to_owned(), |s| s.to_string()))]
    Aborted {
        /// The slot that aborted, from the `aborted` event (`None` when only the close
        /// frame came).
        slot: Option<u16>,
        /// Its reason (the event's; else the close reason).
        reason: String,
    },
    /// Any other close code, or a close frame without a code.
    #[error("connection closed with code {code}: {reason}")]
    ClosedWithCode {
        /// The close code (1005 when the frame had none).
        code: u16,
        /// The close reason.
        reason: String,
    },

    // ---- client-side outcomes ----
    /// The connection dropped and could not be resumed within the reconnect budget.
    #[error("reconnect failed after {attempts} attempts: {last}")]
    ReconnectFailed {
        /// How many reconnects were tried.
        attempts: u32,
        /// Why the last one failed.
        last: Box<Error>,
    },
    /// The connection was lost; the text says how.
    #[error("connection lost: {0}")]
    Disconnected(String),
    /// The connection (or its background task) is gone; the reason was reported earlier.
    #[error("connection is closed")]
    ConnectionClosed,
    /// A mailbox ask got no message within its TTL.
    #[error("no message for the asked id within {0:?}")]
    AskExpired(Duration),
}

impl Error {
    /// Maps an HTTP refusal (status and the JSON error body) to its variant. The
    /// status decides the family; the [`ErrorCode`] picks a dedicated variant within it.
    pub fn from_http(status: u16, body: &[u8]) -> Error {
        let (code, code_text, message) = match ErrorBody::parse(body) {
            Ok(b) => {
                let text = match b.error.code {
                    // A code from a newer relay: keep its text.
                    ErrorCode::Unknown => raw_error_code(body),
                    known => known.as_str().to_owned(),
                };
                (Some(b.error.code), text, b.error.message)
            }
            Err(_) => (None, String::new(), String::from_utf8_lossy(body).into_owned()),
        };
        match (status, code) {
            (400, Some(ErrorCode::BadRoomId)) => Error::BadRoomId { message },
            (400, _) => Error::BadRequest { code: code_text, message },
            (401, _) => Error::Unauthorized { message },
            (403, Some(ErrorCode::BadResumeToken)) => Error::BadResumeToken { message },
            (403, _) => Error::Forbidden { code: code_text, message },
            (404, Some(ErrorCode::RoomNotFound)) => Error::RoomNotFound { message },
            (404, _) => Error::NotFound { code: code_text, message },
            (409, Some(ErrorCode::RoomFull)) => Error::RoomFull { message },
            (409, Some(ErrorCode::SlotTaken)) => Error::SlotTaken { message },
            (409, Some(ErrorCode::ResumeGap)) => Error::ResumeGap { message },
            (409, _) => Error::Conflict { code: code_text, message },
            (413, _) => Error::PayloadTooLarge { message },
            (426, _) => Error::UpgradeRequired { message },
            (429, _) => Error::RateLimited { message },
            (503, _) => Error::Unavailable { code: code_text, message },
            _ => Error::HttpStatus { status, code: code_text, message },
        }
    }

    /// Maps a WebSocket close code and reason to its variant.
    pub fn from_close(code: u16, reason: &str) -> Error {
        let reason = reason.to_owned();
        match CloseCode::from_code(code) {
            Some(CloseCode::Normal) => Error::Closed { reason },
            Some(CloseCode::GoingAway) => Error::ServerShutdown { reason },
            Some(CloseCode::Malformed) => Error::Malformed { reason },
            Some(CloseCode::Policy) => Error::PolicyViolation { reason },
            Some(CloseCode::TooBig) => Error::MessageTooBig { reason },
            Some(CloseCode::Internal) => Error::ServerError { reason },
            Some(CloseCode::TryAgainLater) => Error::TryAgainLater { reason },
            Some(CloseCode::RoomExpired) => Error::RoomExpired { reason },
            Some(CloseCode::Replaced) => Error::Replaced { reason },
            Some(CloseCode::Aborted) => Error::Aborted { slot: None, reason },
            _ => Error::ClosedWithCode { code, reason },
        }
    }

    /// The relay's error code, when this error is an HTTP refusal that carried one.
    /// A code this client does not know is [`ErrorCode::Unknown`].
    pub fn error_code(&self) -> Option<ErrorCode> {
        Some(match self {
            Error::BadRoomId { .. } => ErrorCode::BadRoomId,
            Error::BadResumeToken { .. } => ErrorCode::BadResumeToken,
            Error::RoomNotFound { .. } => ErrorCode::RoomNotFound,
            Error::RoomFull { .. } => ErrorCode::RoomFull,
            Error::SlotTaken { .. } => ErrorCode::SlotTaken,
            Error::ResumeGap { .. } => ErrorCode::ResumeGap,
            Error::BadRequest { code, .. }
            | Error::Forbidden { code, .. }
            | Error::NotFound { code, .. }
            | Error::Conflict { code, .. }
            | Error::Unavailable { code, .. }
            | Error::HttpStatus { code, .. }
                if !code.is_empty() =>
            {
                code.parse().unwrap_or(ErrorCode::Unknown)
            }
            _ => return None,
        })
    }

    /// The HTTP status of a refusal, when this error is one.
    pub fn http_status(&self) -> Option<u16> {
        Some(match self {
            Error::BadRoomId { .. } | Error::BadRequest { .. } => 400,
            Error::Unauthorized { .. } => 401,
            Error::BadResumeToken { .. } | Error::Forbidden { .. } => 403,
            Error::RoomNotFound { .. } | Error::NotFound { .. } => 404,
            Error::RoomFull { .. }
            | Error::SlotTaken { .. }
            | Error::ResumeGap { .. }
            | Error::Conflict { .. } => 409,
            Error::PayloadTooLarge { .. } => 413,
            Error::UpgradeRequired { .. } => 426,
            Error::RateLimited { .. } => 429,
            Error::Unavailable { .. } => 503,
            Error::HttpStatus { status, .. } => *status,
            _ => return None,
        })
    }

    /// The WebSocket close code, when this error is a close by the relay.
    pub fn close_code(&self) -> Option<u16> {
        let code = match self {
            Error::Closed { .. } => CloseCode::Normal,
            Error::ServerShutdown { .. } => CloseCode::GoingAway,
            Error::Malformed { .. } => CloseCode::Malformed,
            Error::PolicyViolation { .. } => CloseCode::Policy,
            Error::MessageTooBig { .. } => CloseCode::TooBig,
            Error::ServerError { .. } => CloseCode::Internal,
            Error::TryAgainLater { .. } => CloseCode::TryAgainLater,
            Error::RoomExpired { .. } => CloseCode::RoomExpired,
            Error::Replaced { .. } => CloseCode::Replaced,
            Error::Aborted { .. } => CloseCode::Aborted,
            Error::ClosedWithCode { code, .. } => return Some(*code),
            _ => return None,
        };
        Some(code.code())
    }

    /// Whether this is a refusal a retry can cure (network, timeout, 1011, 1013, 429,
    /// 503): what the room reconnect loop retries on.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Io(_) | Error::Timeout { .. } | Error::Http(_) | Error::WebSocket(_) => true,
            Error::ServerError { .. } | Error::TryAgainLater { .. } => true,
            Error::RateLimited { .. } | Error::Unavailable { .. } => true,
            Error::HttpStatus { status, .. } => *status >= 500,
            _ => false,
        }
    }

    /// A copy of this error for a second recipient (errors are not `Clone`: they may
    /// hold an `io::Error`): close codes and refusals keep their variant, the rest
    /// become [`Error::Disconnected`] with the same text.
    pub(crate) fn duplicate(&self) -> Error {
        if let Error::Aborted { slot, reason } = self {
            return Error::Aborted { slot: *slot, reason: reason.clone() };
        }
        if let Some(code) = self.close_code() {
            let reason = match self {
                Error::Closed { reason }
                | Error::ServerShutdown { reason }
                | Error::Malformed { reason }
                | Error::PolicyViolation { reason }
                | Error::MessageTooBig { reason }
                | Error::ServerError { reason }
                | Error::TryAgainLater { reason }
                | Error::RoomExpired { reason }
                | Error::Replaced { reason }
                | Error::ClosedWithCode { reason, .. } => reason.as_str(),
                _ => "",
            };
            return Error::from_close(code, reason);
        }
        match self {
            Error::ConnectionClosed => Error::ConnectionClosed,
            Error::AskExpired(d) => Error::AskExpired(*d),
            other => Error::Disconnected(other.to_string()),
        }
    }

    /// Converts a tungstenite error, turning a refused handshake into its HTTP variant.
    pub(crate) fn from_ws(e: tokio_tungstenite::tungstenite::Error) -> Error {
        match e {
            tokio_tungstenite::tungstenite::Error::Http(resp) => {
                let status = resp.status().as_u16();
                Error::from_http(status, resp.body().as_deref().unwrap_or_default())
            }
            tokio_tungstenite::tungstenite::Error::Io(e) => Error::Io(e),
            other => Error::WebSocket(other),
        }
    }
}

/// The `error.code` string of a JSON error body, as sent (for codes relay-proto does
/// not know).
fn raw_error_code(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error")?.get("code")?.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_refusals_map_by_status_and_code() {
        let body = |code: &str| format!(r#"{{"error":{{"code":"{code}","message":"m"}}}}"#).into_bytes();
        assert!(matches!(Error::from_http(404, &body("room_not_found")), Error::RoomNotFound { .. }));
        assert!(matches!(Error::from_http(404, &body("not_found")), Error::NotFound { .. }));
        assert!(matches!(Error::from_http(409, &body("room_full")), Error::RoomFull { .. }));
        assert!(matches!(Error::from_http(409, &body("slot_taken")), Error::SlotTaken { .. }));
        assert!(matches!(Error::from_http(409, &body("resume_gap")), Error::ResumeGap { .. }));
        assert!(matches!(Error::from_http(403, &body("bad_resume_token")), Error::BadResumeToken { .. }));
        assert!(matches!(Error::from_http(401, &body("unauthorized")), Error::Unauthorized { .. }));
        assert!(matches!(Error::from_http(429, &body("rate_limited")), Error::RateLimited { .. }));
        assert!(matches!(Error::from_http(400, &body("bad_room_id")), Error::BadRoomId { .. }));
        let e = Error::from_http(503, &body("too_many_rooms"));
        assert!(matches!(&e, Error::Unavailable { code, .. } if code == "too_many_rooms"));
        assert_eq!(e.http_status(), Some(503));
        let newer = Error::from_http(409, &body("from_the_future"));
        assert!(matches!(&newer, Error::Conflict { code, .. } if code == "from_the_future"));
        assert_eq!(newer.error_code(), Some(ErrorCode::Unknown));
        assert_eq!(
            Error::from_http(404, &body("room_not_found")).error_code(),
            Some(ErrorCode::RoomNotFound)
        );
        assert_eq!(e.error_code(), Some(ErrorCode::TooManyRooms));
        let raw = Error::from_http(502, b"bad gateway");
        assert!(matches!(&raw, Error::HttpStatus { status: 502, message, .. } if message == "bad gateway"));
    }

    #[test]
    fn close_codes_map_and_round_trip() {
        for code in CloseCode::ALL.iter().map(|c| c.code()).chain([1005, 4999]) {
            assert_eq!(Error::from_close(code, "r").close_code(), Some(code));
        }
        assert!(matches!(Error::from_close(4000, "room expired"), Error::RoomExpired { .. }));
        assert!(Error::from_close(1013, "slow consumer").is_transient());
        assert!(!Error::from_close(4001, "replaced").is_transient());
    }
}
