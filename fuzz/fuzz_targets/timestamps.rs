//! The RFC 3339 parser against its reference: the whole input as one timestamp, and its lines
//! as a run through one `Parser` (which remembers the last minute).
#![no_main]

use container_logd::internals::reference::diff;
use container_logd_fuzz::check;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    check(diff::timestamp(data));
    let run: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    check(diff::timestamp_run(&run));
});
