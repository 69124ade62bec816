//! One reader per followed container (thread `logs-<name>`): opens the engine's log stream from
//! the resume point, skips what was already handed on, makes a message of every line, and
//! re-opens the stream when it ends while the container still runs (restarts, engine restarts).
//!
//! Resume: the engine's `since` is inclusive, so a stream resumed at `(ts, seen)` first repeats
//! the lines at `ts`; the first `seen` of them are skipped. When that boundary line is no longer
//! there, the engine's own rotation dropped lines we never read: a `system` warning says so.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::SinceMode;
use crate::engine::{LogLine, Next, Since, StreamKind};
use crate::message::{line_id, Draft, Level, LogMessage, Origin, Position, SourceKind};
use crate::monitor::{cursor, level, meta, Backoff, Shared, Slot};
use crate::stats::Stats;

// Moved to the line core; their old path, which tests and notes name.
pub use crate::monitor::lines::{is_continuation, text_of};

/// Quiet time after which a multi-line message is complete.
const MULTILINE_QUIET: Duration = Duration::from_millis(300);
/// Messages handed to the backends in one go, at most.
const BATCH: usize = 64;
/// How often suppressed lines are reported.
const SUPPRESS_REPORT: Duration = Duration::from_secs(1);

pub fn follow(shared: Arc<Shared>, slot: Arc<Slot>) {
    let mut last: Option<Position> = None;
    let mut backoff = Backoff::new();
    // The run (by its start time) whose stream was read to its end after it stopped.
    let mut drained: Option<i64> = None;
    loop {
        if shared.stopping() {
            break;
        }
        let info = match shared.engine.inspect(&slot.id) {
            Ok(i) => i,
            Err(e) if e.is_not_found() => {
                if shared.detach(&slot) {
                    break;
                }
                continue;
            }
            Err(e) => {
                set_state(&slot, "reconnecting");
                log::debug!("cannot inspect {}: {e}", slot.id);
                if !shared.sleep(backoff.next_delay()) {
                    break;
                }
                continue;
            }
        };
        // A stopped container is read once more to its end: a short-lived one may have
        // stopped before we first looked, and its lines are still with the engine.
        if !info.running && drained == Some(info.started_at_ns) {
            if shared.detach(&slot) {
                break;
            }
            continue;
        }
        let origin = Arc::new(meta::origin(
            &shared.cfg,
            &shared.host,
            &info.id,
            &info.name,
            &info.labels,
        ));
        {
            let mut v = slot.view.lock().unwrap_or_else(|p| p.into_inner());
            v.name = origin.name.clone();
            v.app_id = origin.app_id.as_str().to_string();
            v.service_name = origin.service_name.clone();
        }
        let resume = last.or_else(|| shared.cursors.get(&slot.id));
        let since = match resume {
            Some(p) => Since::At(p.ts_ns),
            None => first_since(&shared, &slot, info.started_at_ns),
        };
        let mut stream =
            match shared
                .engine
                .logs(&slot.id, info.tty, since, shared.cfg.max_line_bytes)
            {
                Ok(s) => s,
                Err(e) => {
                    set_state(&slot, "reconnecting");
                    if !e.is_not_found() {
                        log::warn!("cannot open the log stream of {}: {e}", origin.name);
                        Stats::add(&shared.stats.engine_errors, 1);
                    }
                    if !shared.sleep(backoff.next_delay()) {
                        break;
                    }
                    continue;
                }
            };
        slot.set_closer(Some(stream.closer()));
        if shared.stopping() {
            break;
        }
        set_state(&slot, "following");
        let opened = Instant::now();
        let mut lines = Lines::new(&shared, &slot, origin, resume);
        loop {
            match stream.next(lines.idle()) {
                Ok(Next::Line(l)) => {
                    lines.line(l);
                    // Lines decoded from one read go to the backends together.
                    if !stream.has_buffered() || lines.out.len() >= BATCH {
                        lines.send();
                    }
                }
                Ok(Next::Idle) => lines.tick(),
                Ok(Next::End) => break,
                Err(e) => {
                    if !shared.stopping() {
                        log::warn!("log stream of {} broke: {e}", lines.origin.name);
                        Stats::add(&shared.stats.engine_errors, 1);
                    }
                    break;
                }
            }
        }
        lines.finish();
        slot.set_closer(None);
        if !info.running {
            drained = Some(info.started_at_ns);
        }
        last = lines.last.or(last);
        if shared.stopping() {
            break;
        }
        Stats::add(&shared.stats.engine_reconnects, 1);
        // A stream that ends at once while the container runs must not spin.
        if opened.elapsed() < Duration::from_secs(1) {
            if !shared.sleep(backoff.next_delay()) {
                break;
            }
        } else {
            backoff.reset();
        }
    }
}

fn set_state(slot: &Slot, state: &'static str) {
    slot.view.lock().unwrap_or_else(|p| p.into_inner()).state = state;
}

/// Where a container without a cursor starts (`SINCE`).
fn first_since(shared: &Shared, slot: &Slot, started_at_ns: i64) -> Since {
    let from_now = || {
        // Remember "now" as a cursor: lines written while we are down later are not lost.
        let now = cursor::now_ns();
        let id: Arc<str> = Arc::from(slot.id.as_str());
        for i in 0..shared.progress.backends() {
            shared.progress.taken(
                i,
                &id,
                Position {
                    ts_ns: now,
                    seen: 0,
                },
            );
        }
        Since::At(now)
    };
    match shared.cfg.since {
        SinceMode::All => Since::All,
        SinceMode::Now => from_now(),
        SinceMode::Cursor => {
            let started_after_us = match shared.cursors.last_alive_ns() {
                Some(t) => started_at_ns > t,
                None => false,
            };
            if slot.from_event || started_after_us {
                Since::All
            } else {
                from_now()
            }
        }
    }
}

/// A message being assembled from continuation lines (`MULTILINE=auto`).
struct Pending {
    text: String,
    first: Position,
    last: Position,
    level: Level,
    is_stderr: bool,
    truncated: bool,
    /// When the last line joined it; only kept with `MULTILINE=auto` (a clock read per line
    /// costs otherwise).
    at: Option<Instant>,
}

/// Token bucket for `RATE_LIMIT_LINES`/`RATE_LIMIT_BURST`.
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn allow(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The per-stream state of a reader: resume skipping, per-timestamp counting, multi-line joining
/// and rate limiting.
struct Lines<'a> {
    shared: &'a Shared,
    slot: &'a Slot,
    origin: Arc<Origin>,
    resume: Option<Position>,
    gap_checked: bool,
    /// Lines counted per recent timestamp (stdout and stderr may interleave out of order).
    recent: [(i64, u32); 8],
    recent_next: usize,
    pending: Option<Pending>,
    bucket: Option<Bucket>,
    suppressed: u64,
    suppressed_since: Instant,
    last: Option<Position>,
    /// Messages made but not yet handed to the backends.
    out: Vec<Arc<LogMessage>>,
    /// Counted since the last [`Lines::send`], added to the shared counters there: one update
    /// per read, not per line, of counters all readers share.
    counted: Counted,
}

#[derive(Default)]
struct Counted {
    lines: u64,
    bytes: u64,
    truncated: u64,
    invalid_utf8: u64,
    last_line_ms: Option<i64>,
}

impl<'a> Lines<'a> {
    fn new(
        shared: &'a Shared,
        slot: &'a Slot,
        origin: Arc<Origin>,
        resume: Option<Position>,
    ) -> Lines<'a> {
        let cfg = &shared.cfg;
        Lines {
            shared,
            slot,
            origin,
            resume,
            gap_checked: false,
            recent: [(i64::MIN, 0); 8],
            recent_next: 0,
            pending: None,
            bucket: (cfg.rate_limit_lines > 0).then(|| Bucket {
                rate: f64::from(cfg.rate_limit_lines),
                burst: f64::from(cfg.rate_limit_burst),
                tokens: f64::from(cfg.rate_limit_burst),
                at: Instant::now(),
            }),
            suppressed: 0,
            suppressed_since: Instant::now(),
            last: None,
            out: Vec::with_capacity(BATCH),
            counted: Counted::default(),
        }
    }

    /// How long the stream may stay quiet before [`Lines::tick`] must run.
    fn idle(&self) -> Option<Duration> {
        if self.pending.is_some() {
            Some(MULTILINE_QUIET)
        } else if self.suppressed > 0 {
            Some(SUPPRESS_REPORT)
        } else {
            None
        }
    }

    fn position(&mut self, ts: i64) -> Position {
        if let Some(e) = self.recent.iter_mut().find(|e| e.0 == ts) {
            e.1 += 1;
            return Position {
                ts_ns: ts,
                seen: e.1,
            };
        }
        self.recent[self.recent_next] = (ts, 1);
        self.recent_next = (self.recent_next + 1) % self.recent.len();
        Position { ts_ns: ts, seen: 1 }
    }

    fn line(&mut self, l: LogLine) {
        let stats = &self.shared.stats;
        if l.stream == StreamKind::EngineError {
            Stats::add(&stats.engine_errors, 1);
            log::warn!(
                "engine error in the log stream of {}: {}",
                self.origin.name,
                String::from_utf8_lossy(&l.bytes)
            );
            return;
        }
        let pos = self.position(l.ts_ns);
        if let Some(r) = self.resume {
            if !self.gap_checked {
                self.gap_checked = true;
                if r.seen > 0 && pos.ts_ns > r.ts_ns {
                    Stats::add(&stats.gaps, 1);
                    self.send();
                    self.shared.system(
                        &self.origin,
                        pos.ts_ns,
                        Level::Warn,
                        "gap",
                        format!(
                            "lines of {} logged after {} were dropped by the engine's log rotation before they could be read",
                            self.origin.name,
                            r.ts_ns
                        ),
                    );
                }
            }
            if pos <= r {
                return;
            }
        }
        let c = &mut self.counted;
        c.lines += 1;
        c.bytes += l.bytes.len() as u64;
        c.truncated += u64::from(l.truncated);
        c.last_line_ms = Some(l.ts_ns.div_euclid(1_000_000));
        self.last = Some(pos.max(self.last.unwrap_or_default()));
        let (text, replaced) = text_of(l.bytes);
        c.invalid_utf8 += u64::from(replaced);
        let is_stderr = l.stream == StreamKind::Stderr;
        let cfg = &self.shared.cfg;
        if cfg.multiline {
            if let Some(p) = self.pending.as_mut() {
                if p.is_stderr == is_stderr && is_continuation(&text) {
                    if p.text.len() + 1 + text.len() <= cfg.max_line_bytes {
                        p.text.push('\n');
                        p.text.push_str(&text);
                    } else {
                        p.truncated = true;
                    }
                    p.truncated |= l.truncated;
                    p.last = pos;
                    p.at = Some(Instant::now());
                    return;
                }
            }
            self.flush_pending();
        }
        let level = level::detect(&text).unwrap_or(if is_stderr {
            cfg.level_stderr
        } else {
            cfg.level_stdout
        });
        let p = Pending {
            text,
            first: pos,
            last: pos,
            level,
            is_stderr,
            truncated: l.truncated,
            at: cfg.multiline.then(Instant::now),
        };
        if cfg.multiline {
            self.pending = Some(p);
        } else {
            self.emit(p);
        }
    }

    fn flush_pending(&mut self) {
        if let Some(p) = self.pending.take() {
            self.emit(p);
        }
    }

    fn emit(&mut self, p: Pending) {
        if let Some(b) = self.bucket.as_mut() {
            if p.level != Level::Error && !b.allow() {
                if self.suppressed == 0 {
                    self.suppressed_since = Instant::now();
                }
                self.suppressed += 1;
                Stats::add(&self.shared.stats.suppressed, 1);
                self.report_suppressed(false);
                return;
            }
        }
        self.report_suppressed(false);
        let msg = LogMessage::new(Draft {
            id: line_id(&self.origin, p.first),
            text: p.text,
            ts_ns: p.first.ts_ns,
            level: p.level,
            kind: SourceKind::Container,
            origin: self.origin.clone(),
            is_stderr: p.is_stderr,
            truncated: p.truncated,
            position: Some(p.last),
        });
        self.out.push(Arc::new(msg));
    }

    /// Hands the messages made so far to the backends, and the counts to the shared counters.
    fn send(&mut self) {
        self.shared.deliver_many(&self.out);
        self.out.clear();
        let c = std::mem::take(&mut self.counted);
        if c.lines > 0 {
            let stats = &self.shared.stats;
            Stats::add(&stats.lines_read, c.lines);
            Stats::add(&stats.bytes_read, c.bytes);
            Stats::add(&stats.truncated, c.truncated);
            Stats::add(&stats.invalid_utf8, c.invalid_utf8);
            let mut v = self.slot.view.lock().unwrap_or_else(|p| p.into_inner());
            v.lines += c.lines;
            v.last_line_ms = c.last_line_ms;
        }
    }

    fn report_suppressed(&mut self, now: bool) {
        if self.suppressed == 0 {
            return;
        }
        if now || self.suppressed_since.elapsed() >= SUPPRESS_REPORT {
            let n = std::mem::take(&mut self.suppressed);
            self.suppressed_since = Instant::now();
            self.send();
            self.shared.system(
                &self.origin,
                cursor::now_ns(),
                Level::Warn,
                "suppressed",
                format!("suppressed {n} lines from {}", self.origin.name),
            );
        }
    }

    /// The stream was quiet for [`Lines::idle`].
    fn tick(&mut self) {
        if self
            .pending
            .as_ref()
            .is_some_and(|p| p.at.is_none_or(|at| at.elapsed() >= MULTILINE_QUIET))
        {
            self.flush_pending();
        }
        self.report_suppressed(false);
        self.send();
    }

    fn finish(&mut self) {
        self.flush_pending();
        self.report_suppressed(true);
        self.send();
        set_state(self.slot, "reconnecting");
    }
}
