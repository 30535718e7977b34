//! Disco JSON bodies: `GroupInput::from_json` (POST and PATCH of groups) and
//! `Announcement::from_json` (relay registry). Checks: never a panic, whatever the
//! bytes; an accepted group ID passes `validate_id`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relay_discovery::{Announcement, GroupInput, validate_id};

fuzz_target!(|data: &[u8]| {
    if let Ok(group) = GroupInput::from_json(data)
        && let Some(id) = &group.id
    {
        assert!(validate_id(id).is_ok());
    }
    let _ = Announcement::from_json(data);
});
