//! The WebSocket close codes the relay sends (docs/protocol.md sections 3.6 and 4).
//! Before closing a room connection the relay also sends a `closing` event with the
//! same code ([`crate::room::ServerEvent::Closing`]).

/// A close code the relay uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
#[non_exhaustive]
pub enum CloseCode {
    /// 1000: the room closed (every party left), or this party sent `leave`.
    Normal = 1000,
    /// 1001: the relay is shutting down (mailbox: also an idle timeout).
    GoingAway = 1001,
    /// 1002: a frame that breaks RFC 6455.
    Protocol = 1002,
    /// 1007: a malformed frame (mailbox: shorter than 36 bytes, or text; invalid UTF-8).
    Malformed = 1007,
    /// 1008: a policy the relay cannot let pass (bad key, idle timeout in a room).
    Policy = 1008,
    /// 1009: a frame over the relay's `max_message_bytes`.
    TooBig = 1009,
    /// 1011: a relay bug; reconnect.
    Internal = 1011,
    /// 1013: over quota or a slow consumer; try again later (rooms: resume).
    TryAgainLater = 1013,
    /// 4000: the room's TTL passed.
    RoomExpired = 4000,
    /// 4001: the same slot resumed on a newer connection.
    Replaced = 4001,
    /// 4002: a party aborted the room (`abort`); the `aborted` event names it.
    Aborted = 4002,
}

impl CloseCode {
    /// Every close code, in numeric order.
    pub const ALL: &[CloseCode] = &[
        CloseCode::Normal,
        CloseCode::GoingAway,
        CloseCode::Protocol,
        CloseCode::Malformed,
        CloseCode::Policy,
        CloseCode::TooBig,
        CloseCode::Internal,
        CloseCode::TryAgainLater,
        CloseCode::RoomExpired,
        CloseCode::Replaced,
        CloseCode::Aborted,
    ];

    /// The number on the wire.
    pub const fn code(self) -> u16 {
        self as u16
    }

    /// The close code for `code`, or `None` for one the relay does not send.
    pub fn from_code(code: u16) -> Option<CloseCode> {
        CloseCode::ALL.iter().copied().find(|c| c.code() == code)
    }

    /// Whether reconnecting may succeed: 1001 (another instance, or this one after a
    /// restart), 1011 (a relay bug) and 1013 (over quota, slow consumer).
    pub fn is_retryable(self) -> bool {
        matches!(self, CloseCode::GoingAway | CloseCode::Internal | CloseCode::TryAgainLater)
    }
}

impl From<CloseCode> for u16 {
    fn from(code: CloseCode) -> u16 {
        code.code()
    }
}

impl TryFrom<u16> for CloseCode {
    type Error = crate::ProtoError;

    fn try_from(code: u16) -> Result<CloseCode, crate::ProtoError> {
        CloseCode::from_code(code).ok_or(crate::ProtoError::UnknownCloseCode(code))
    }
}

impl std::fmt::Display for CloseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_ones_are_none() {
        for &c in CloseCode::ALL {
            assert_eq!(CloseCode::from_code(c.code()), Some(c));
        }
        assert_eq!(CloseCode::from_code(1005), None);
        assert_eq!(CloseCode::from_code(4999), None);
        let retryable: Vec<u16> =
            CloseCode::ALL.iter().filter(|c| c.is_retryable()).map(|c| c.code()).collect();
        assert_eq!(retryable, [1001, 1011, 1013]);
    }
}
