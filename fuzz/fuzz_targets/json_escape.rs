//! `message::push_json_str` against its reference, alone and after other text; and the
//! literal reads back as the text.
#![no_main]

use container_logd::internals::reference::diff;
use container_logd_fuzz::check;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check(diff::json_str("", &text));
    check(diff::json_str("{\"text\":", &text));
});
