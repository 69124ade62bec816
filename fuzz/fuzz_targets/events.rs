//! The `/events` splitter and parser: never panics, and gives the same events and the same
//! error however the body is cut.
#![no_main]

use container_logd::internals::events::EventSplitter;
use container_logd::internals::Event;
use container_logd_fuzz::Input;
use libfuzzer_sys::fuzz_target;

/// The events of `pieces` fed in order, then the body's end, and the first error's text.
fn split(pieces: &[&[u8]]) -> (Vec<Event>, Result<(), String>) {
    let mut splitter = EventSplitter::new();
    let mut events = Vec::new();
    for piece in pieces {
        if let Err(e) = splitter.feed(piece, &mut |e| events.push(e)) {
            return (events, Err(e.to_string()));
        }
    }
    let end = splitter.finish(&mut |e| events.push(e));
    (events, end.map_err(|e| e.to_string()))
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::new(data) else {
        return;
    };
    let whole = split(&[input.body]);
    let cut = split(&input.pieces());
    assert_eq!(whole, cut);
});
