//! `message::line_id` against its reference, and `line_position` reading it back: the first
//! eight bytes are the timestamp, the next four the count, the next one how long the container
//! id is (hex of the rest).
#![no_main]

use container_logd::internals::reference::diff;
use container_logd::message::Position;
use container_logd_fuzz::check;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((ts, rest)) = data.split_first_chunk::<8>() else {
        return;
    };
    let Some((seen, rest)) = rest.split_first_chunk::<4>() else {
        return;
    };
    let Some((&len, rest)) = rest.split_first() else {
        return;
    };
    let hex: String = rest.iter().map(|b| format!("{b:02x}")).collect();
    let id = &hex[..hex.len().min(usize::from(len % 65))];
    let pos = Position {
        ts_ns: i64::from_le_bytes(*ts),
        seen: u32::from_le_bytes(*seen),
    };
    check(diff::line_id(id, pos));
    check(diff::decimal(pos.ts_ns));
});
