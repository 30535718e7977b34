//! `--api-key KEY,NAME` values: `PreconfiguredKey::parse` on one value and
//! `PreconfiguredKey::parse_all` on the input split into lines. Checks: never a panic;
//! an accepted value's name is 1 to 64 allowed characters; parse_all accepts only when
//! every line parses alone.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_keystore::PreconfiguredKey;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(key) = PreconfiguredKey::parse(text) {
        assert!((1..=64).contains(&key.name.len()));
        assert!(key.name.bytes().all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c)));
    }
    let lines: Vec<&str> = text.split('\n').collect();
    if PreconfiguredKey::parse_all(&lines).is_ok() {
        assert!(lines.iter().all(|l| PreconfiguredKey::parse(l).is_ok()));
    }
});
