//! The reader thread's share of the cost per line, without an engine: a fake engine on a Unix
//! socket of its own sends a backlog of `LINES` lines of 100 bytes (`make bench`'s line, one
//! chunk per frame, as Docker sends them), and the agent's own log stream (`Engine::logs`:
//! HTTP head, chunked body, frames) feeds them to a `LineCore` as a reader does, handing over
//! what it made after each read. The messages are counted and dropped: no backend, so their
//! memory is freed on this thread, which in the agent the backends' threads do. Measure the
//! reader's part alone with `--toggle-collect='lines::pump*'`.
//!
//!   cargo build --release --features internals --example lines
//!   valgrind --tool=callgrind target/release/examples/lines [LINES]
//!
//! Prints `lines=N messages=M` on stdout.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use container_logd::internals::lines::{LineCore, Out, Settings};
use container_logd::internals::{Engine, Since, StreamKind};
use container_logd::message::{LabelValue, Level, Origin};

/// `make bench`'s backlog.
const LINES: usize = 30_000;
/// The agent's default `MAX_LINE_BYTES`.
const MAX_LINE_BYTES: usize = 64 * 1024;

fn main() -> ExitCode {
    let lines = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(LINES);
    match run(lines) {
        Ok((read, messages)) => {
            println!("lines={read} messages={messages}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lines: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The engine's answer: a chunked body, one frame per chunk, one line per frame.
fn response(lines: usize) -> Vec<u8> {
    let text = ("bench line ".to_string() + &"0123456789".repeat(9))[..99].to_string();
    let mut out = b"HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nContent-Type: \
        application/vnd.docker.multiplexed-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        .to_vec();
    for i in 0..lines {
        let payload = format!(
            "2026-11-25T02:10:05.{:09}Z {text}\n",
            100_000_000 + i * 10_000
        );
        let mut frame = vec![1, 0, 0, 0];
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(payload.as_bytes());
        out.extend_from_slice(format!("{:x}\r\n", frame.len()).as_bytes());
        out.extend_from_slice(&frame);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// Serves one request on `listener` with `answer`, then closes.
fn fake_engine(listener: UnixListener, answer: Vec<u8>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let Ok((mut conn, _)) = listener.accept() else {
            return;
        };
        let mut request = Vec::new();
        let mut b = [0u8; 1024];
        while !request.ends_with(b"\r\n\r\n") {
            match conn.read(&mut b) {
                Ok(n) if n > 0 => request.extend_from_slice(&b[..n]),
                _ => return,
            }
        }
        let _ = conn.write_all(&answer);
    })
}

/// Reads the whole stream as a reader does; returns (lines read, messages made).
fn run(lines: usize) -> Result<(u64, u64), Box<dyn std::error::Error>> {
    let path = std::env::temp_dir().join(format!("cld-lines-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    let server = fake_engine(listener, response(lines));
    let engine = Engine::new(&format!("unix://{}", path.display()))?;
    let mut stream = engine.logs("bench", false, Since::All, MAX_LINE_BYTES)?;
    let settings = Settings {
        multiline: false,
        max_line_bytes: MAX_LINE_BYTES,
        level_stdout: Level::Info,
        level_stderr: Level::Error,
        rate_limit_lines: 0,
        rate_limit_burst: 1000,
    };
    let origin = Arc::new(Origin::new(
        Arc::from("0123456789abcdef"),
        "bench".into(),
        LabelValue::from_label("bench"),
        "bench".into(),
        None,
        Arc::from("host"),
    ));
    let mut core = LineCore::new(settings, origin, None, Instant::now());
    let (mut read, mut messages) = (0u64, 0u64);
    let mut hand_over = |core: &mut LineCore| {
        core.drain(|out| {
            if let Out::Messages(m) = out {
                messages += m.len() as u64;
            }
        });
        read += core.take_counts().lines;
    };
    pump(&mut stream, &mut core, &mut hand_over)?;
    core.finish(Instant::now());
    hand_over(&mut core);
    let _ = server.join();
    let _ = std::fs::remove_file(&path);
    Ok((read, messages))
}

/// The reader's loop (`monitor/reader.rs`, `Reader::pump`), without its counters and logs.
fn pump(
    stream: &mut container_logd::internals::LogStream,
    core: &mut LineCore,
    hand_over: &mut impl FnMut(&mut LineCore),
) -> Result<(), Box<dyn std::error::Error>> {
    use container_logd::internals::Next;
    loop {
        let idle = core.idle();
        let mut each = |l: container_logd::internals::LineRef<'_>| {
            if l.stream == StreamKind::EngineError {
                return;
            }
            core.line(l, Instant::now);
            if core.is_full() {
                hand_over(core);
            }
        };
        match stream.next(idle, &mut each)? {
            Next::Lines => {}
            Next::Idle => core.tick(Instant::now()),
            Next::End => return Ok(()),
        }
        hand_over(core);
    }
}
