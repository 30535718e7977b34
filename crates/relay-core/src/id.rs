//! Room IDs: canonical lowercase UUID text, optionally starting with an operator prefix
//! so a load balancer can route every party of a room to the instance that created it.

use std::fmt;
use std::str::FromStr;

/// Why a room ID or a room-ID prefix was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RoomIdError {
    /// Not 36 characters of lowercase hex in the 8-4-4-4-12 shape.
    #[error("room id must be a lowercase uuid like 1a2b3c4d-9f0e-4c1b-8a7d-2e5f6a7b8c9d")]
    Malformed,
    /// A prefix that is not exactly 8 lowercase hex characters.
    #[error("room id prefix must be exactly 8 lowercase hex characters (0-9, a-f), got {0:?}")]
    BadPrefix(String),
}

/// A room ID: 16 bytes, written as a canonical lowercase UUID.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomId([u8; 16]);

/// The 8-hex-character prefix every room ID of this instance starts with.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct RoomIdPrefix([u8; 4]);

impl RoomId {
    /// A fresh random room ID (UUID v4). With a prefix, its first 4 bytes are the
    /// prefix and the remaining 90 bits stay random (6 bits are UUID version/variant).
    pub fn generate(prefix: Option<RoomIdPrefix>) -> RoomId {
        let mut bytes = *uuid::Uuid::new_v4().as_bytes();
        if let Some(RoomIdPrefix(p)) = prefix {
            bytes[..4].copy_from_slice(&p);
        }
        RoomId(bytes)
    }

    /// The 16 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Whether this ID starts with `prefix`.
    pub fn has_prefix(&self, prefix: RoomIdPrefix) -> bool {
        self.0[..4] == prefix.0
    }
}

impl FromStr for RoomId {
    type Err = RoomIdError;

    /// Parses exactly the canonical lowercase form; uppercase, braces, URNs and the
    /// 32-character simple form are refused so one room has exactly one spelling.
    fn from_str(s: &str) -> Result<RoomId, RoomIdError> {
        let b = s.as_bytes();
        if b.len() != 36 {
            return Err(RoomIdError::Malformed);
        }
        let mut out = [0u8; 16];
        let mut nibbles = 0usize;
        for (i, &c) in b.iter().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                if c != b'-' {
                    return Err(RoomIdError::Malformed);
                }
                continue;
            }
            let v = lower_hex_value(c).ok_or(RoomIdError::Malformed)?;
            out[nibbles / 2] |= if nibbles.is_multiple_of(2) { v << 4 } else { v };
            nibbles += 1;
        }
        Ok(RoomId(out))
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = uuid::Uuid::encode_buffer();
        f.write_str(uuid::Uuid::from_bytes(self.0).hyphenated().encode_lower(&mut buf))
    }
}

impl fmt::Debug for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RoomId({self})")
    }
}

impl serde::Serialize for RoomId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl FromStr for RoomIdPrefix {
    type Err = RoomIdError;

    fn from_str(s: &str) -> Result<RoomIdPrefix, RoomIdError> {
        let b = s.as_bytes();
        if b.len() != 8 {
            return Err(RoomIdError::BadPrefix(s.to_owned()));
        }
        let mut out = [0u8; 4];
        for (i, &c) in b.iter().enumerate() {
            let v = lower_hex_value(c).ok_or_else(|| RoomIdError::BadPrefix(s.to_owned()))?;
            out[i / 2] |= if i.is_multiple_of(2) { v << 4 } else { v };
        }
        Ok(RoomIdPrefix(out))
    }
}

impl fmt::Display for RoomIdPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

fn lower_hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_round_trip_and_carry_the_prefix() {
        let prefix: RoomIdPrefix = "1a2b3c4d".parse().unwrap();
        for _ in 0..100 {
            let id = RoomId::generate(Some(prefix));
            let text = id.to_string();
            assert!(text.starts_with("1a2b3c4d-"), "{text}");
            assert_eq!(text.len(), 36);
            assert_eq!(text.parse::<RoomId>().unwrap(), id);
            assert!(id.has_prefix(prefix));
        }
    }

    #[test]
    fn ids_without_prefix_differ() {
        let a = RoomId::generate(None);
        let b = RoomId::generate(None);
        assert_ne!(a, b);
    }

    #[test]
    fn malformed_ids_are_refused() {
        for bad in [
            "",
            "1a2b3c4d",
            "1A2B3C4D-9f0e-4c1b-8a7d-2e5f6a7b8c9d",
            "1a2b3c4d-9f0e-4c1b-8a7d-2e5f6a7b8c9",
            "1a2b3c4d-9f0e-4c1b-8a7d-2e5f6a7b8c9dd",
            "1a2b3c4d 9f0e-4c1b-8a7d-2e5f6a7b8c9d",
            "1a2b3c4d9f0e4c1b8a7d2e5f6a7b8c9d",
            "1a2b3c4d-9f0e-4c1b-8a7d-2e5f6a7b8c9g",
            "{1a2b3c4d-9f0e-4c1b-8a7d-2e5f6a7b8c}",
        ] {
            assert_eq!(bad.parse::<RoomId>(), Err(RoomIdError::Malformed), "{bad}");
        }
        assert!("1a2b3c4d-9f0e-4c1b-8a7d-2e5f6a7b8c9d".parse::<RoomId>().is_ok());
    }

    #[test]
    fn prefix_must_be_eight_lowercase_hex() {
        for bad in ["", "1a2b3c4", "1a2b3c4d5", "1A2B3C4D", "1a2b3c4g", "1a2b-c4d"] {
            assert!(bad.parse::<RoomIdPrefix>().is_err(), "{bad}");
        }
        assert_eq!("0a1b2c3d".parse::<RoomIdPrefix>().unwrap().to_string(), "0a1b2c3d");
    }
}
