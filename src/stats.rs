//! Counters of the agent as a whole (the reading side); each backend keeps its own.
//! Read by `/api/v1/health`, `/metrics`, the systemd status line and the watchdog.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug)]
pub struct Stats {
    pub started: Instant,
    /// Container lines read from the engine.
    pub lines_read: AtomicU64,
    pub bytes_read: AtomicU64,
    /// Lines in which invalid UTF-8 was replaced.
    pub invalid_utf8: AtomicU64,
    /// Lines cut at `MAX_LINE_BYTES`.
    pub truncated: AtomicU64,
    /// Log or event streams that broke, and in-band engine errors.
    pub engine_errors: AtomicU64,
    /// Streams made again because the engine or the connection cut them: the events stream,
    /// or a log stream whose container still ran. A container that stops is no reconnect.
    pub engine_reconnects: AtomicU64,
    /// Whether the engine answered last time we asked.
    pub docker_up: AtomicBool,
    /// Lines skipped by the rate limit.
    pub suppressed: AtomicU64,
    /// Resumes that found the engine had already dropped lines past the cursor.
    pub gaps: AtomicU64,
    /// Resume cursor saves that failed (a full or read-only `STATE_DIR`).
    pub cursor_save_errors: AtomicU64,
    /// Whether the last save of the resume cursors failed.
    pub cursor_save_failing: AtomicBool,
    /// The engine's API version in use.
    pub api_version: Mutex<String>,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats {
            started: Instant::now(),
            lines_read: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            invalid_utf8: AtomicU64::new(0),
            truncated: AtomicU64::new(0),
            engine_errors: AtomicU64::new(0),
            engine_reconnects: AtomicU64::new(0),
            docker_up: AtomicBool::new(false),
            suppressed: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            cursor_save_errors: AtomicU64::new(0),
            cursor_save_failing: AtomicBool::new(false),
            api_version: Mutex::new(String::new()),
        }
    }
}

impl Stats {
    /// Notes how a save of the resume cursors went: a failure is counted and shows in health
    /// until a save succeeds, and is logged once per spell of failures.
    pub fn cursors_saved(&self, result: std::io::Result<()>) {
        match result {
            Ok(()) => self.cursor_save_failing.store(false, Ordering::Relaxed),
            Err(e) => {
                Stats::add(&self.cursor_save_errors, 1);
                if !self.cursor_save_failing.swap(true, Ordering::Relaxed) {
                    log::error!("cannot save resume cursors: {e}");
                }
            }
        }
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// One Prometheus metric: name, `counter` or `gauge`, help text, value.
pub type Metric<'a> = (&'a str, &'a str, &'a str, u64);

/// Appends metrics in the Prometheus text format, `prefix` before each name.
pub fn write_metrics(out: &mut String, prefix: &str, metrics: &[Metric]) {
    use std::fmt::Write as _;
    for (name, kind, help, v) in metrics {
        let _ = writeln!(
            out,
            "# HELP {prefix}{name} {help}\n# TYPE {prefix}{name} {kind}\n{prefix}{name} {v}"
        );
    }
}
