//! Every error code the relay sends: in HTTP error bodies
//! (`{"error":{"code":"...","message":"..."}}`, see [`ErrorBody`]) and in a room's
//! `error` events ([`crate::room::ServerEvent::Error`]).
//!
//! Codes are snake_case strings on the wire. A code this crate does not know (from a
//! newer server) reads as [`ErrorCode::Unknown`]; a client should then go by the HTTP
//! status. [`ErrorCode::status`] is the status each code is sent with today, for
//! clients that only have the code (an `error` event); the status line is what counts.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ProtoError;

/// Defines [`ErrorCode`] and its tables from one list: variant, wire code, status.
macro_rules! error_codes {
    ($( $(#[doc = $doc:literal])* $variant:ident = ($code:literal, $status:literal), )*) => {
        /// A machine-readable error code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        pub enum ErrorCode {
            $(
                $(#[doc = $doc])*
                #[serde(rename = $code)]
                $variant,
            )*
            /// A code this crate does not know, e.g. from a newer server (`unknown` when
            /// written). Never sent by the relay.
            #[serde(rename = "unknown", other)]
            Unknown,
        }

        impl ErrorCode {
            /// Every code the relay sends ([`ErrorCode::Unknown`] is not one).
            pub const ALL: &[ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The code on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $code,)*
                    ErrorCode::Unknown => "unknown",
                }
            }

            /// The HTTP status the relay sends this code with. Codes only sent in a room's
            /// `error` event have the status they would have over HTTP; `Unknown` is 500.
            pub fn status(self) -> u16 {
                match self {
                    $(ErrorCode::$variant => $status,)*
                    ErrorCode::Unknown => 500,
                }
            }
        }
    };
}

error_codes! {
    // ---- 400 ----
    /// 400: malformed JSON, or a field out of range (room size, TTL, slot, `last_seq`).
    BadRequest = ("bad_request", 400),
    /// 400: the request body could not be read.
    BadBody = ("bad_body", 400),
    /// 400: not a canonical lowercase UUID room ID.
    BadRoomId = ("bad_room_id", 400),
    /// 400: a WebSocket handshake that breaks RFC 6455 (method, version, key).
    BadHandshake = ("bad_handshake", 400),
    /// 400: a key expiry that is not unix seconds, or is in the past.
    BadExpiry = ("bad_expiry", 400),
    /// 400: a key name outside 1 to 64 of `A-Z a-z 0-9 . _ -`.
    BadKeyName = ("bad_key_name", 400),
    /// 400: a tenant name the key store refuses.
    BadTenant = ("bad_tenant", 400),
    /// 400: a discovery field of the wrong type or size.
    InvalidField = ("invalid_field", 400),
    /// 400: a group update without an `ID`.
    MissingId = ("missing_id", 400),
    /// 400: the `ID` in the body is not the one in the path.
    IdMismatch = ("id_mismatch", 400),
    /// In-room `error` event (400 over HTTP): a send to your own slot or past the room.
    BadDestination = ("bad_destination", 400),
    /// In-room `error` event: a data frame shorter than its 2-byte header.
    MalformedFrame = ("malformed_frame", 400),
    /// In-room `error` event: a text frame that is not a client control
    /// (`ack`, `leave`, `abort`, `status`).
    BadControl = ("bad_control", 400),
    // ---- 401 ----
    /// 401: no API key presented.
    MissingApiKey = ("missing_api_key", 401),
    /// 401: a malformed or unknown API key.
    UnknownApiKey = ("unknown_api_key", 401),
    /// 401: a missing or wrong admin token.
    Unauthorized = ("unauthorized", 401),
    /// 401: a missing or wrong registry token.
    BadRegistryToken = ("bad_registry_token", 401),
    // ---- 403 ----
    /// 403: the API key was revoked.
    RevokedApiKey = ("revoked_api_key", 403),
    /// 403: the API key has expired.
    ExpiredApiKey = ("expired_api_key", 403),
    /// 403: the resume token is not this room's, or its party sent `leave`.
    BadResumeToken = ("bad_resume_token", 403),
    /// 403: the group belongs to another key.
    NotOwner = ("not_owner", 403),
    /// 403: the registry takes no announcements (no registry token configured).
    RegistryClosed = ("registry_closed", 403),
    /// 403: a browser WebSocket handshake from an `Origin` not on the server's
    /// `--cors-allowed-origins` list.
    OriginNotAllowed = ("origin_not_allowed", 403),
    /// 403: a room created with party tokens joined without one, or with a token of
    /// another room or slot.
    BadPartyToken = ("bad_party_token", 403),
    // ---- 404, 405, 408 ----
    /// 404: no such endpoint.
    NotFound = ("not_found", 404),
    /// 404: no such room (never existed, expired or closed).
    RoomNotFound = ("room_not_found", 404),
    /// 404: no such group.
    GroupNotFound = ("group_not_found", 404),
    /// 404: no key of that name.
    KeyNotFound = ("key_not_found", 404),
    /// 404: this relay runs no TURN server, so it mints no TURN credentials.
    TurnDisabled = ("turn_disabled", 404),
    /// 405: a known path with the wrong method.
    MethodNotAllowed = ("method_not_allowed", 405),
    /// 408: the request (its body included) took longer than the request timeout.
    RequestTimeout = ("request_timeout", 408),
    // ---- 409 ----
    /// 409: every slot of the room is taken.
    RoomFull = ("room_full", 409),
    /// 409: the asked slot already has a party.
    SlotTaken = ("slot_taken", 409),
    /// 409: `last_seq` is older than what the relay still holds.
    ResumeGap = ("resume_gap", 409),
    /// In-room `error` event (409 over HTTP): the room's held-bytes bound is reached.
    RoomBufferFull = ("room_buffer_full", 409),
    /// 409: a key of that name exists.
    KeyNameTaken = ("key_name_taken", 409),
    // ---- 413 ----
    /// 413: the request body is over the limit.
    BodyTooLarge = ("body_too_large", 413),
    /// In-room `error` event (413 over HTTP): a message over `max_message_bytes`.
    MessageTooBig = ("message_too_big", 413),
    // ---- 426, 429 ----
    /// 426: a WebSocket endpoint called without a handshake.
    UpgradeRequired = ("upgrade_required", 426),
    /// 429: over a rate limit; `Retry-After` says when to come back.
    RateLimited = ("rate_limited", 429),
    /// 429: the API key has `--max-rooms-per-key` live rooms already; other keys still
    /// create rooms.
    TooManyRoomsForKey = ("too_many_rooms_for_key", 429),
    /// 429: the API key already owns as many live discovery groups as
    /// `--max-groups-per-key` allows.
    TooManyGroupsForKey = ("too_many_groups_for_key", 429),
    // ---- 500, 503 ----
    /// 500: a relay bug.
    Internal = ("internal", 500),
    /// 500: group storage failed.
    StorageError = ("storage_error", 500),
    /// 503: the server runs without a key store (keys and admin API unavailable).
    NoKeyStore = ("no_key_store", 503),
    /// 503: a storage engine the request needs (the key store, PostgreSQL, Redis) is
    /// failing or unreachable; try again later.
    StorageUnavailable = ("storage_unavailable", 503),
    /// 503: the relay holds as many rooms as it may.
    TooManyRooms = ("too_many_rooms", 503),
    /// 503 (and in-room `error` event): the relay holds `--max-held-bytes` for clients
    /// already; try again once messages are delivered.
    HeldBytesFull = ("held_bytes_full", 503),
    /// 503: the relay is stopping.
    ShuttingDown = ("shutting_down", 503),
}

impl ErrorCode {
    /// Whether the code refuses a request for its credentials: what the relay counts
    /// as `relay_auth_failures_total{reason}` (API key, admin token, registry token,
    /// group owner, resume token).
    pub fn is_auth_failure(self) -> bool {
        matches!(
            self,
            ErrorCode::MissingApiKey
                | ErrorCode::UnknownApiKey
                | ErrorCode::RevokedApiKey
                | ErrorCode::ExpiredApiKey
                | ErrorCode::Unauthorized
                | ErrorCode::BadRegistryToken
                | ErrorCode::NotOwner
                | ErrorCode::BadResumeToken
        )
    }
}

impl FromStr for ErrorCode {
    type Err = ProtoError;

    /// The code for its wire string; an unknown string is an error (serde reads it as
    /// [`ErrorCode::Unknown`] instead).
    fn from_str(s: &str) -> Result<ErrorCode, ProtoError> {
        if s == ErrorCode::Unknown.as_str() {
            return Ok(ErrorCode::Unknown);
        }
        ErrorCode::ALL
            .iter()
            .copied()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| ProtoError::UnknownErrorCode(s.to_owned()))
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every HTTP refusal: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// The code and message.
    pub error: ErrorDetail,
}

/// The code and message of a refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `room_not_found`, `missing_api_key`.
    pub code: ErrorCode,
    /// Human-readable explanation. Always sent; a missing one reads as empty.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub message: String,
}

impl ErrorBody {
    /// A body with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
        ErrorBody { error: ErrorDetail { code, message: message.into() } }
    }

    /// The body as JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an error body always serializes")
    }

    /// Reads an error body.
    pub fn parse(body: &[u8]) -> Result<ErrorBody, ProtoError> {
        Ok(serde_json::from_slice(body)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_strings_are_unique_and_match_serde() {
        let mut seen = std::collections::HashSet::new();
        for &c in ErrorCode::ALL {
            assert!(seen.insert(c.as_str()), "{c} twice");
            assert_eq!(serde_json::to_string(&c).unwrap(), format!("\"{c}\""));
            assert_eq!(c.as_str().parse::<ErrorCode>().unwrap(), c);
            assert!(matches!(c.status(), 400..=599), "{c}");
        }
        assert!(!ErrorCode::ALL.contains(&ErrorCode::Unknown));
    }

    #[test]
    fn unknown_codes_read_as_unknown_but_do_not_parse() {
        let c: ErrorCode = serde_json::from_str("\"teapot\"").unwrap();
        assert_eq!(c, ErrorCode::Unknown);
        assert!(matches!("teapot".parse::<ErrorCode>(), Err(ProtoError::UnknownErrorCode(_))));
    }

    #[test]
    fn auth_failures_are_the_ones_the_relay_counts() {
        let auth: Vec<&str> =
            ErrorCode::ALL.iter().filter(|c| c.is_auth_failure()).map(|c| c.as_str()).collect();
        assert_eq!(
            auth,
            [
                "missing_api_key",
                "unknown_api_key",
                "unauthorized",
                "bad_registry_token",
                "revoked_api_key",
                "expired_api_key",
                "bad_resume_token",
                "not_owner",
            ]
        );
    }

    #[test]
    fn error_bodies_have_the_documented_shape() {
        let body = ErrorBody::new(ErrorCode::RoomNotFound, "no such room");
        assert_eq!(body.to_json(), r#"{"error":{"code":"room_not_found","message":"no such room"}}"#);
        assert_eq!(ErrorBody::parse(body.to_json().as_bytes()).unwrap(), body);
    }
}
