//! The log stream decoder against its reference: every kind (Docker's with and without a TTY,
//! Podman's framed one with and without), line caps around the edges, the stream cut anywhere,
//! flushed (gone quiet) between pieces, ended or broken.
#![no_main]

use container_logd::internals::reference::diff::{self, End, Op, Stream};
use container_logd_fuzz::{check, line_cap, Input};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::new(data) else {
        return;
    };
    let stream = Stream {
        framed: input.flags & 1 != 0,
        tty: input.flags & 2 != 0,
        max_line_bytes: line_cap(input.knob),
    };
    let end = if input.flags & 4 != 0 {
        End::Cut
    } else {
        End::Finish
    };
    // One piece in 2^k is followed by a flush; never when k is 0.
    let flush_every = (input.flags >> 3) & 3;
    let mut rng = input.rng();
    let mut ops = Vec::new();
    for piece in input.pieces() {
        ops.push(Op::Feed(piece));
        if flush_every > 0 && rng.below(1 << flush_every) == 0 {
            ops.push(Op::FlushPartial);
        }
    }
    check(diff::frames(stream, &ops, end));
});
