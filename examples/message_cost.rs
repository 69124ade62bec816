//! Makes 30,000 messages shaped like `make bench`'s lines and renders each twice, so that
//! callgrind can count the instructions of making and of rendering a message apart.
//!
//!   valgrind --tool=callgrind target/release/examples/message_cost

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use container_logd::message::{
    Draft, Id, LabelValue, Level, LogMessage, Origin, Position, SourceKind,
};

const LINES: usize = 30_000;

/// The system allocator, counting the bytes asked for.
struct Counting;

static ASKED: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ASKED.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

#[inline(never)]
fn make_all(origin: &Arc<Origin>, text: &str) -> Vec<Arc<LogMessage>> {
    let mut out = Vec::with_capacity(LINES);
    let mut ts_ns = 1_767_225_600_123_456_789i64;
    for _ in 0..LINES {
        ts_ns += 1_013;
        let pos = Position { ts_ns, seen: 1 };
        out.push(Arc::new(new_one(Draft {
            id: Id::Line(pos),
            text: black_box(text),
            ts_ns,
            level: Level::Info,
            kind: SourceKind::Container,
            origin: origin.clone(),
            is_stderr: false,
            truncated: false,
            position: Some(pos),
        })));
    }
    out
}

/// `LogMessage::new` alone, so that callgrind counts it inclusively.
#[inline(never)]
fn new_one(d: Draft) -> LogMessage {
    LogMessage::new(d)
}

/// `LogMessage::write_json` alone.
#[inline(never)]
fn render_one(m: &LogMessage, buf: &mut Vec<u8>) {
    m.write_json(buf);
}

#[inline(never)]
fn render_all(msgs: &[Arc<LogMessage>], buf: &mut Vec<u8>) -> usize {
    let mut total = 0;
    for m in msgs {
        buf.clear();
        render_one(m, buf);
        total += buf.len();
    }
    total
}

fn main() {
    let origin = Arc::new(Origin::new(
        Arc::from("4c1d2f3e5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d"),
        "bench-lines".into(),
        LabelValue::from_label("1001"),
        "bench".into(),
        Some(LabelValue::from_label("2002")),
        Arc::from("pi-kitchen"),
    ));
    let text: String = ("bench line ".to_string() + &"0123456789".repeat(9))[..99].to_string();
    let before = ASKED.load(Ordering::Relaxed);
    let msgs = make_all(&origin, &text);
    let asked = ASKED.load(Ordering::Relaxed) - before - LINES * std::mem::size_of::<usize>();
    eprintln!(
        "bytes asked for per message (its Arc and its own bytes): {} (LogMessage: {})",
        asked / LINES,
        std::mem::size_of::<LogMessage>()
    );
    let mut buf = Vec::with_capacity(1024);
    let a = render_all(&msgs, &mut buf);
    let b = render_all(&msgs, &mut buf);
    let sum: usize = msgs.iter().map(|m| m.json_len()).sum();
    println!("{} {} {}", a, b, sum);
    print!("{}", String::from_utf8_lossy(&buf));
    println!();
}
