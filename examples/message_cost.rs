//! Makes 30,000 messages shaped like `make bench`'s lines and renders each twice, so that
//! callgrind can count the instructions of making and of rendering a message apart; and
//! prints the heap a message takes for texts of 20, 100 and 300 bytes (the bytes asked for,
//! and the blocks glibc's malloc gives for them on 64-bit machines).
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
static BLOCKS: AtomicUsize = AtomicUsize::new(0);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

/// The block glibc's malloc takes for `size` bytes on a 64-bit machine: the size and its
/// 8-byte header rounded up to 16, at least 32.
fn glibc_block(size: usize) -> usize {
    ((size + 8 + 15) & !15).max(32)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ASKED.fetch_add(layout.size(), Ordering::Relaxed);
        BLOCKS.fetch_add(glibc_block(layout.size()), Ordering::Relaxed);
        ALLOCS.fetch_add(1, Ordering::Relaxed);
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

/// A container line at `pos` saying `text`, as the reader drafts it.
fn line<'a>(origin: &Arc<Origin>, text: &'a str, pos: Position) -> Draft<'a> {
    Draft {
        id: Id::Line(pos),
        text,
        ts_ns: pos.ts_ns,
        level: Level::Info,
        kind: SourceKind::Container,
        origin: origin.clone(),
        is_stderr: false,
        truncated: false,
        position: Some(pos),
    }
}

#[inline(never)]
fn make_all(origin: &Arc<Origin>, text: &str) -> Vec<Arc<LogMessage>> {
    let mut out = Vec::with_capacity(LINES);
    let mut ts_ns = 1_767_225_600_123_456_789i64;
    for _ in 0..LINES {
        ts_ns += 1_013;
        let pos = Position { ts_ns, seen: 1 };
        out.push(new_one(line(origin, black_box(text), pos)));
    }
    out
}

/// Messages whose heap is counted, made apart from those whose instructions are.
const SOME: usize = 1_000;

#[inline(never)]
fn make_some(origin: &Arc<Origin>, text: &str) -> Vec<Arc<LogMessage>> {
    (0..SOME)
        .map(|i| {
            let pos = Position {
                ts_ns: 1_767_225_600_123_456_789 + i as i64,
                seen: 1,
            };
            LogMessage::shared(line(origin, text, pos))
        })
        .collect()
}

/// `LogMessage::shared` alone (as the reader makes a line's message, in its `Arc`), so that
/// callgrind counts it inclusively.
#[inline(never)]
fn new_one(d: Draft) -> Arc<LogMessage> {
    LogMessage::shared(d)
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
    let long = "bench line ".to_string() + &"0123456789".repeat(30);
    eprintln!("LogMessage: {} bytes", std::mem::size_of::<LogMessage>());
    for len in [20, 100, 300] {
        let counted = |c: &AtomicUsize| c.load(Ordering::Relaxed);
        let before = [&ASKED, &BLOCKS, &ALLOCS].map(counted);
        let msgs = make_some(&origin, &long[..len]);
        let after = [&ASKED, &BLOCKS, &ALLOCS].map(counted);
        // Less the vector that holds them.
        let vec = SOME * std::mem::size_of::<usize>();
        eprintln!(
            "text of {len} bytes: per message {} allocations, {} bytes asked for, {} in glibc blocks",
            (after[2] - before[2] - 1) as f64 / SOME as f64,
            (after[0] - before[0] - vec) / SOME,
            (after[1] - before[1] - glibc_block(vec)) / SOME,
        );
        drop(msgs);
    }
    let text = &long[..99];
    let msgs = make_all(&origin, text);
    let mut buf = Vec::with_capacity(1024);
    let a = render_all(&msgs, &mut buf);
    let b = render_all(&msgs, &mut buf);
    let sum: usize = msgs.iter().map(|m| m.json_len()).sum();
    println!("{} {} {}", a, b, sum);
    print!("{}", String::from_utf8_lossy(&buf));
    println!();
}
