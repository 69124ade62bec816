//! The chunked body decoder against its reference: the same body bytes per `decode` call, the
//! same errors, the same end state, whatever the framing and however the input is cut.
#![no_main]

use container_logd::internals::chunked::Framing;
use container_logd::internals::reference::diff;
use container_logd_fuzz::{check, Input};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::new(data) else {
        return;
    };
    let framing = match input.flags % 8 {
        0 => Framing::UntilEof,
        1 => Framing::Length(u64::from(input.knob) * 37),
        _ => Framing::Chunked,
    };
    check(diff::chunked(framing, &input.pieces()));
});
