//! Reading client JSON field by field, so an error names the field that is wrong.
//!
//! Disco is written in Go, whose `encoding/json` matches object keys case-insensitively,
//! ignores unknown keys and treats `null` as "not given". Clients written against Disco
//! rely on that, so the readers here do the same.

use serde_json::{Map, Value};

use crate::error::DiscoveryError;

/// Parses `body` as a JSON object.
pub(crate) fn object(body: &[u8]) -> Result<Map<String, Value>, DiscoveryError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => {
            Err(DiscoveryError::InvalidJson(format!("expected a JSON object, got {}", kind(&other))))
        }
        Err(e) => Err(DiscoveryError::InvalidJson(e.to_string())),
    }
}

/// The value of `name` in `map`, matched case-insensitively; `null` counts as absent.
pub(crate) fn get<'a>(map: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    map.get(name)
        .or_else(|| map.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v))
        .filter(|v| !v.is_null())
}

/// An optional string field.
pub(crate) fn string(
    map: &Map<String, Value>,
    name: &str,
    field: &str,
) -> Result<Option<String>, DiscoveryError> {
    match get(map, name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(DiscoveryError::field(field, format!("expected a string, got {}", kind(other)))),
    }
}

/// An optional non-negative integer field.
pub(crate) fn unsigned(
    map: &Map<String, Value>,
    name: &str,
    field: &str,
) -> Result<Option<u64>, DiscoveryError> {
    match get(map, name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| DiscoveryError::field(field, format!("expected a non-negative integer, got {n}"))),
        Some(other) => {
            Err(DiscoveryError::field(field, format!("expected a non-negative integer, got {}", kind(other))))
        }
    }
}

/// The JSON type of `v`, for error messages.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
