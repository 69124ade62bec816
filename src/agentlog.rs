//! The agent's own log: readable lines with time and level on a terminal (simplelog), or
//! `<N>`-prefixed lines without timestamps when journald reads our stderr (`$JOURNAL_STREAM`),
//! so `journalctl -u container-logd -p warning` filters right.
//!
//! Warnings and errors are also forwarded, without blocking, as `manager` messages to the
//! backends (docs/CONTRACT.md §4). A full forward queue drops the copy and counts it; the log line itself
//! is never lost.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crossbeam_channel::{Sender, TrySendError};
use log::{Level, LevelFilter, Log, Metadata, Record};

/// A warning or error of the agent, on its way to becoming a `manager` message.
#[derive(Debug, Clone)]
pub struct Note {
    pub level: Level,
    pub text: String,
}

static FORWARD: OnceLock<Sender<Note>> = OnceLock::new();
/// Notes dropped because the forward queue was full.
pub static FORWARD_DROPPED: AtomicU64 = AtomicU64::new(0);

/// Sends copies of warnings and errors to `tx` from now on (set once).
pub fn forward_to(tx: Sender<Note>) {
    let _ = FORWARD.set(tx);
}

fn forward(record: &Record) {
    if record.level() > Level::Warn {
        return;
    }
    // Records from our own MQTT stack about the broker would echo into the broker; keep only ours.
    if !record.target().starts_with("container_logd") {
        return;
    }
    if let Some(tx) = FORWARD.get() {
        let note = Note {
            level: record.level(),
            text: record.args().to_string(),
        };
        if let Err(TrySendError::Full(_)) = tx.try_send(note) {
            FORWARD_DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// journald priority of a level (sd-daemon(3)).
pub fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

struct Journal {
    level: LevelFilter,
}

impl Log for Journal {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= self.level
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format!("<{}>{}\n", priority(record.level()), record.args());
        // One write per line so journald never sees two lines interleaved.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
        forward(record);
    }

    fn flush(&self) {}
}

struct Terminal {
    inner: Box<simplelog::SimpleLogger>,
}

impl Log for Terminal {
    fn enabled(&self, m: &Metadata) -> bool {
        self.inner.enabled(m)
    }

    fn log(&self, record: &Record) {
        self.inner.log(record);
        if self.inner.enabled(record.metadata()) {
            forward(record);
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Whether our stderr goes to journald.
pub fn under_journald() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some_and(|v| !v.is_empty())
}

/// Installs the logger; call once, first thing.
pub fn init(level: LevelFilter) {
    // Our own records at `level`; the libraries' only from warn up, so debug stays readable.
    let logger: Box<dyn Log> = if under_journald() {
        Box::new(Journal { level })
    } else {
        let cfg = simplelog::ConfigBuilder::new()
            .set_time_format_rfc3339()
            .set_target_level(LevelFilter::Off)
            .set_thread_level(LevelFilter::Off)
            .build();
        Box::new(Terminal {
            inner: simplelog::SimpleLogger::new(level, cfg),
        })
    };
    if log::set_boxed_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}
