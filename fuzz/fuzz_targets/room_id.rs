//! Room IDs and prefixes from URLs and flags: `RoomId::from_str` and
//! `RoomIdPrefix::from_str`. Checks: never a panic; whatever parses prints back as the
//! exact input (one spelling per room), and a parsed ID has the prefix made of its own
//! first 8 characters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_core::{RoomId, RoomIdPrefix};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(id) = text.parse::<RoomId>() {
        assert_eq!(id.to_string(), text);
        let prefix: RoomIdPrefix = text[..8].parse().expect("an ID's first 8 chars are a prefix");
        assert!(id.has_prefix(prefix));
    }
    if let Ok(prefix) = text.parse::<RoomIdPrefix>() {
        assert_eq!(prefix.to_string(), text);
    }
});
