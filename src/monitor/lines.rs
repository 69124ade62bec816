//! The reading core of one container's log stream: what becomes of each decoded line. It places
//! every line (`Position`), skips what a resumed stream repeats, notices a gap, joins
//! continuation lines (`MULTILINE=auto`), applies the rate limit, and makes the messages.
//!
//! [`LineCore`] is a value: no socket, no `Shared`, no clock of its own. The caller (the
//! `logs-<name>` thread in `reader.rs`) feeds it lines and the time, and carries out what it
//! made: messages for the backends, `system` notes, counters, the last position. It must never
//! do I/O or read the clock itself, so its decisions are tested in this file, one step at a time.
//!
//! # Lines at one timestamp, and stdout with stderr
//!
//! A position counts the lines of *both* streams at one timestamp, in the order the engine sent
//! them (`seen`), and a resumed stream skips the first `seen` lines at the cursor's timestamp,
//! whichever stream they are on. Counting per `(timestamp, stream)` instead would survive an
//! engine that replays the two streams in another interleaving than it first sent them, but
//! no engine we read does that: Docker (json-file, local, journald), balenaEngine and Podman
//! store both streams in one log in arrival order and serve the live stream and a `since`
//! replay from that same log, so the replay has the first read's interleaving. It would also
//! cost the users: the id (`<container>-<ts>-<index>`, SPEC §4) is made from the combined
//! index, so per-stream counting changes the id of stderr lines (or the id format), the files'
//! crash de-duplication (which reads positions back from ids) and `cursors.json`.
//!
//! The residual risk, for an engine that did reorder: only the lines of the cursor's own
//! timestamp, and only when stdout and stderr both have lines at that very nanosecond (Docker
//! stamps each stream's lines apart, so this takes a coarse clock or a driver that keeps only
//! microseconds). Reordered lines that stay on their side of the cursor are harmless (the
//! skipped set is the same); a line that crosses it is repeated while another one is skipped.
//! Tests below pin both.
//!
//! # Lines in several entries stamped apart (Podman)
//!
//! A line is placed at the timestamp of the entry that ended it (`LineRef::end_ts_ns`), and
//! its message keeps the time of its first entry. Podman stamps the parts of a line written in
//! several writes apart (`engine::frames` says more), and a stream resumed with `since` at the
//! second of a line's last part no longer holds its first part: counted at its first part, the
//! line would be counted once at one second on the first read and its tail at another on the
//! resumed one, shifting every later line's index there (a line after it came twice, with a new
//! id). Every read holds the entry that ends a line, so counted there, it is placed the same
//! way by every read. Podman's timestamps have whole seconds (4.3), so many lines share one:
//! the count is the index, which a replay in the engine's order gives back.
//!
//! The residual risk: a line whose first part is in an earlier second than its end, with a line
//! of the other stream ending in between at that later second, and the agent stopped right
//! after taking that other line: the resumed stream starts at that second and gives the line
//! without its first part. Docker stamps all parts of a line alike, so none of this applies.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::engine::{LineRef, StreamKind};
use crate::message::{Draft, Id, Level, LogMessage, Origin, Position, SourceKind};
use crate::monitor::level;

/// Quiet time after which a multi-line message is complete.
pub const MULTILINE_QUIET: Duration = Duration::from_millis(300);
/// Messages handed to the backends in one go, at most.
pub const BATCH: usize = 64;
/// How often suppressed lines are reported.
pub const SUPPRESS_REPORT: Duration = Duration::from_secs(1);

/// What the core takes from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// `MULTILINE=auto`: continuation lines join the message before them.
    pub multiline: bool,
    /// A joined message grows to this many bytes at most (`MAX_LINE_BYTES`).
    pub max_line_bytes: usize,
    pub level_stdout: Level,
    pub level_stderr: Level,
    /// Lines per second kept (`RATE_LIMIT_LINES`); 0 turns the limit off.
    pub rate_limit_lines: u32,
    pub rate_limit_burst: u32,
}

impl Settings {
    pub fn of(cfg: &Config) -> Settings {
        Settings {
            multiline: cfg.multiline,
            max_line_bytes: cfg.max_line_bytes,
            level_stdout: cfg.level_stdout,
            level_stderr: cfg.level_stderr,
            rate_limit_lines: cfg.rate_limit_lines,
            rate_limit_burst: cfg.rate_limit_burst,
        }
    }
}

/// A `system` message the core asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// The resumed stream no longer has the cursor's line: the engine's log rotation dropped
    /// lines logged after `after_ns` before we read them. `at_ns` is the first line still there.
    Gap { after_ns: i64, at_ns: i64 },
    /// The rate limit held back `lines` lines since the last report.
    Suppressed { lines: u64 },
}

impl Note {
    /// The `system` message's action (its id and kind).
    pub fn action(&self) -> &'static str {
        match self {
            Note::Gap { .. } => "gap",
            Note::Suppressed { .. } => "suppressed",
        }
    }

    pub fn level(&self) -> Level {
        Level::Warn
    }

    /// The engine time the note is about; `None` when it is about now (the caller's clock).
    pub fn ts_ns(&self) -> Option<i64> {
        match self {
            Note::Gap { at_ns, .. } => Some(*at_ns),
            Note::Suppressed { .. } => None,
        }
    }

    /// The message's text, for the container called `name`.
    pub fn text(&self, name: &str) -> String {
        match self {
            Note::Gap { after_ns, .. } => format!(
                "lines of {name} logged after {after_ns} were dropped by the engine's log rotation before they could be read"
            ),
            Note::Suppressed { lines } => format!("suppressed {lines} lines from {name}"),
        }
    }
}

/// One piece of the core's output, in the order it was made.
#[derive(Debug)]
pub enum Out<'a> {
    Messages(&'a [Arc<LogMessage>]),
    Note(&'a Note),
}

/// Counted since the last [`LineCore::take_counts`]; the caller adds them to the shared
/// counters once per read, not per line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Lines read past the resume point (including suppressed ones).
    pub lines: u64,
    pub bytes: u64,
    pub truncated: u64,
    pub invalid_utf8: u64,
    /// Lines held back by the rate limit.
    pub suppressed: u64,
    pub gaps: u64,
    /// Engine time of the last line, ns since the epoch.
    pub last_line_ns: Option<i64>,
}

/// The per-stream state of a reader; see the module documentation.
pub struct LineCore {
    settings: Settings,
    origin: Arc<Origin>,
    resume: Option<Position>,
    gap_checked: bool,
    recent: Recent,
    pending: Option<Pending>,
    bucket: Option<Bucket>,
    suppressed: u64,
    suppressed_since: Instant,
    /// The time given to [`LineCore::new`]: stands in for `now` on the paths that need no
    /// time (no multi-line joining, no rate limit), which then never read the clock.
    opened: Instant,
    last: Option<Position>,
    /// Messages made and not yet drained.
    out: Vec<Arc<LogMessage>>,
    /// Notes not yet drained, each after the first `n` messages of `out`.
    notes: Vec<(usize, Note)>,
    counts: Counts,
}

impl LineCore {
    /// A core for one stream of `origin`'s log, resumed after `resume` (whose lines the
    /// backends have taken already), opened at `now`.
    pub fn new(
        settings: Settings,
        origin: Arc<Origin>,
        resume: Option<Position>,
        now: Instant,
    ) -> LineCore {
        LineCore {
            settings,
            origin,
            resume,
            gap_checked: false,
            recent: Recent::default(),
            pending: None,
            bucket: (settings.rate_limit_lines > 0).then(|| Bucket::new(settings, now)),
            suppressed: 0,
            suppressed_since: now,
            opened: now,
            last: None,
            out: Vec::with_capacity(BATCH),
            notes: Vec::new(),
            counts: Counts::default(),
        }
    }

    /// Whether [`LineCore::line`] reads the time: only for multi-line joining and the rate
    /// limit, so a plain stream costs no clock read per line.
    pub fn needs_time(&self) -> bool {
        self.settings.multiline || self.bucket.is_some()
    }

    /// Takes one line. `now` is called at most once, and only when [`LineCore::needs_time`].
    /// Engine errors (frame type 3) are not log lines: the caller reports them; fed here, they
    /// are ignored. A line made a message alone is not copied before its message is made.
    pub fn line(&mut self, line: LineRef<'_>, now: impl FnOnce() -> Instant) {
        if line.stream == StreamKind::EngineError {
            return;
        }
        let pos = self.recent.position(line.end_ts_ns);
        if self.repeated(pos) {
            return;
        }
        let now = if self.needs_time() {
            now()
        } else {
            self.opened
        };
        let c = &mut self.counts;
        c.lines += 1;
        c.bytes += line.bytes.len() as u64;
        c.truncated += u64::from(line.truncated);
        c.last_line_ns = Some(line.ts_ns);
        self.last = Some(pos.max(self.last.unwrap_or_default()));
        if self.settings.multiline {
            self.line_to_join(line, pos, now);
        } else {
            // The bytes go to the message as they are: it checks them as UTF-8 (and replaces
            // what is not) while escaping them, and level detection needs no check.
            let head = self.head(line.bytes, &line, pos);
            self.emit(Body::Line(line.bytes), head, now);
        }
    }

    /// [`LineCore::line`] when continuation lines are joined: the line is checked as text,
    /// which a message being joined keeps.
    fn line_to_join(&mut self, line: LineRef<'_>, pos: Position, now: Instant) {
        let (text, replaced) = text_of(line.bytes);
        self.counts.invalid_utf8 += u64::from(replaced);
        let is_stderr = line.stream == StreamKind::Stderr;
        if self.join(&text, is_stderr, line.truncated, pos, now) {
            return;
        }
        self.flush_pending(now);
        let head = self.head(text.as_bytes(), &line, pos);
        self.pending = Some(Pending {
            text: text.into_owned(),
            head,
            at: now,
        });
    }

    /// What the message of `line`, whose text is `text`, is made of besides its text.
    fn head(&self, text: &[u8], line: &LineRef<'_>, pos: Position) -> Head {
        let s = &self.settings;
        let is_stderr = line.stream == StreamKind::Stderr;
        let level = level::detect_in(text, !line.eq_free).unwrap_or(if is_stderr {
            s.level_stderr
        } else {
            s.level_stdout
        });
        Head {
            ts_ns: line.ts_ns,
            first: pos,
            last: pos,
            level,
            is_stderr,
            truncated: line.truncated,
        }
    }

    /// The stream was quiet for [`LineCore::idle`]: completes a multi-line message that had
    /// its quiet time, reports suppressed lines that are due.
    pub fn tick(&mut self, now: Instant) {
        if self
            .pending
            .as_ref()
            .is_some_and(|p| now.saturating_duration_since(p.at) >= MULTILINE_QUIET)
        {
            self.flush_pending(now);
        }
        self.report_suppressed(now, false);
    }

    /// How long the stream may stay quiet before [`LineCore::tick`] has work; `None`: for ever.
    /// It takes no time: the work waits for at most these full periods from when it began,
    /// which were before the wait, so a stream quiet that long always finds it due, and
    /// reading the clock here would cost one read per line.
    pub fn idle(&self) -> Option<Duration> {
        if self.pending.is_some() {
            Some(MULTILINE_QUIET)
        } else if self.suppressed > 0 {
            Some(SUPPRESS_REPORT)
        } else {
            None
        }
    }

    /// The stream ended: completes the message being joined and reports what was suppressed.
    pub fn finish(&mut self, now: Instant) {
        self.flush_pending(now);
        self.report_suppressed(now, true);
    }

    /// Whether a batch is full and should be handed over before the next line.
    pub fn is_full(&self) -> bool {
        self.out.len() >= BATCH
    }

    /// Hands over what was made since the last drain, messages and notes in order.
    pub fn drain(&mut self, mut each: impl FnMut(Out<'_>)) {
        let mut from = 0;
        for (at, note) in &self.notes {
            if *at > from {
                each(Out::Messages(&self.out[from..*at]));
                from = *at;
            }
            each(Out::Note(note));
        }
        if from < self.out.len() {
            each(Out::Messages(&self.out[from..]));
        }
        self.out.clear();
        self.notes.clear();
    }

    /// The counts since the last call.
    pub fn take_counts(&mut self) -> Counts {
        std::mem::take(&mut self.counts)
    }

    /// The position of the last line read past the resume point (joined, emitted or
    /// suppressed); where the next stream of this container resumes.
    pub fn last(&self) -> Option<Position> {
        self.last
    }

    /// Resume: true for a line the backends have taken already. The first line decides once
    /// whether the cursor's line is still there.
    fn repeated(&mut self, pos: Position) -> bool {
        let Some(r) = self.resume else {
            return false;
        };
        if !self.gap_checked {
            self.gap_checked = true;
            // `seen == 0` is a cursor set to "now", not a line: nothing to find.
            if r.seen > 0 && pos.ts_ns > r.ts_ns {
                self.counts.gaps += 1;
                self.note(Note::Gap {
                    after_ns: r.ts_ns,
                    at_ns: pos.ts_ns,
                });
            }
        }
        pos <= r
    }

    /// Joins a continuation line to the message being assembled; false when it is not one.
    fn join(
        &mut self,
        text: &str,
        is_stderr: bool,
        truncated: bool,
        pos: Position,
        now: Instant,
    ) -> bool {
        let max = self.settings.max_line_bytes;
        let Some(p) = self.pending.as_mut() else {
            return false;
        };
        if p.head.is_stderr != is_stderr || !is_continuation(text) {
            return false;
        }
        if p.text.len() + 1 + text.len() <= max {
            p.text.push('\n');
            p.text.push_str(text);
        } else {
            p.head.truncated = true;
        }
        p.head.truncated |= truncated;
        p.head.last = pos;
        p.at = now;
        true
    }

    fn flush_pending(&mut self, now: Instant) {
        if let Some(p) = self.pending.take() {
            self.emit(Body::Joined(p.text), p.head, now);
        }
    }

    /// Makes the message, unless the rate limit holds it back (`error` lines never are). The
    /// text is a line's own bytes (borrowed) or a message joined from several (owned). A line's
    /// invalid UTF-8 is counted here, where its bytes are checked.
    fn emit(&mut self, text: Body<'_>, p: Head, now: Instant) {
        if let Some(b) = self.bucket.as_mut() {
            let kept = p.level == Level::Error || b.allow(now);
            if !kept {
                if self.suppressed == 0 {
                    self.suppressed_since = now;
                }
                self.suppressed += 1;
                self.counts.suppressed += 1;
            }
            self.report_suppressed(now, false);
            if !kept {
                if let Body::Line(bytes) = text {
                    self.counts.invalid_utf8 += u64::from(std::str::from_utf8(bytes).is_err());
                }
                return;
            }
        }
        let draft = Draft {
            id: Id::Line(p.first),
            text: "",
            ts_ns: p.ts_ns,
            level: p.level,
            kind: SourceKind::Container,
            origin: self.origin.clone(),
            is_stderr: p.is_stderr,
            truncated: p.truncated,
            position: Some(p.last),
        };
        let msg = match &text {
            Body::Line(bytes) => {
                let (msg, replaced) = LogMessage::shared_line(draft, bytes);
                self.counts.invalid_utf8 += u64::from(replaced);
                msg
            }
            Body::Joined(text) => LogMessage::shared(Draft { text, ..draft }),
        };
        self.out.push(msg);
    }

    /// Notes the suppressed lines when a report is due (or `at_once`).
    fn report_suppressed(&mut self, now: Instant, at_once: bool) {
        if self.suppressed == 0 {
            return;
        }
        if at_once || now.saturating_duration_since(self.suppressed_since) >= SUPPRESS_REPORT {
            let lines = std::mem::take(&mut self.suppressed);
            self.suppressed_since = now;
            self.note(Note::Suppressed { lines });
        }
    }

    fn note(&mut self, note: Note) {
        self.notes.push((self.out.len(), note));
    }
}

/// Lines counted per recent timestamp, both streams together (see the module documentation).
/// More than one timestamp is kept because stdout and stderr are stamped by the engine apart,
/// so a line may carry a slightly older timestamp than the one before it.
struct Recent {
    slots: [(i64, u32); 8],
    next: usize,
}

impl Default for Recent {
    fn default() -> Recent {
        Recent {
            slots: [(i64::MIN, 0); 8],
            next: 0,
        }
    }
}

impl Recent {
    /// The position of the next line stamped `ts`.
    fn position(&mut self, ts: i64) -> Position {
        if let Some(e) = self.slots.iter_mut().find(|e| e.0 == ts) {
            e.1 += 1;
            return Position {
                ts_ns: ts,
                seen: e.1,
            };
        }
        self.slots[self.next] = (ts, 1);
        self.next = (self.next + 1) % self.slots.len();
        Position { ts_ns: ts, seen: 1 }
    }
}

/// A message's text as [`LineCore::emit`] takes it.
enum Body<'a> {
    /// A line's own bytes, which may hold invalid UTF-8.
    Line(&'a [u8]),
    /// A message joined from several lines, checked as they came.
    Joined(String),
}

/// A message being assembled (`MULTILINE=auto`).
struct Pending {
    text: String,
    head: Head,
    /// When the last line joined it.
    at: Instant,
}

/// What a message is made of besides its text.
#[derive(Clone, Copy)]
struct Head {
    /// The engine's time of the first line (of its first entry).
    ts_ns: i64,
    /// Where the first line is counted (its id).
    first: Position,
    last: Position,
    level: Level,
    is_stderr: bool,
    truncated: bool,
}

/// Token bucket for `RATE_LIMIT_LINES`/`RATE_LIMIT_BURST`.
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(s: Settings, now: Instant) -> Bucket {
        Bucket {
            rate: f64::from(s.rate_limit_lines),
            burst: f64::from(s.rate_limit_burst),
            tokens: f64::from(s.rate_limit_burst),
            at: now,
        }
    }

    fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The line's text, with invalid UTF-8 replaced (U+FFFD) rather than dropped; true when
/// something was replaced. Valid lines are borrowed, checked once and not copied.
pub fn text_of(bytes: &[u8]) -> (Cow<'_, str>, bool) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (Cow::Borrowed(s), false),
        Err(_) => (String::from_utf8_lossy(bytes), true),
    }
}

/// A line that continues the message before it: indented, or a stack frame.
pub fn is_continuation(line: &str) -> bool {
    line.starts_with([' ', '\t'])
        || line.starts_with("Traceback")
        || line.starts_with("Caused by:")
        || line.starts_with("at ")
        || line.starts_with("...")
        || line.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::LogLine;
    use crate::message::LabelValue;
    use std::cell::Cell;

    /// One step of a test: what the stream or the clock does.
    #[derive(Clone, Copy)]
    enum Step {
        /// A stdout line stamped `ts` (engine ns).
        Stdout(i64, &'static str),
        /// A stderr line stamped `ts`.
        Stderr(i64, &'static str),
        /// The clock moves on this many ms.
        Wait(u64),
        /// The stream was quiet: [`LineCore::tick`]; shown as `tick` in the output.
        Tick,
        /// The stream ended: [`LineCore::finish`]; shown as `finish`.
        Finish,
    }
    use Step::{Finish, Stderr, Stdout, Tick, Wait};

    struct Case {
        name: &'static str,
        resume: Option<Position>,
        steps: &'static [Step],
        /// Messages as `<ts>-<index> <out|err> <text>` (joined lines separated by `|`),
        /// notes as `gap <after>-><at>` and `suppressed <n>`.
        want: &'static [&'static str],
    }

    const PLAIN: Settings = Settings {
        multiline: false,
        max_line_bytes: 1000,
        level_stdout: Level::Info,
        level_stderr: Level::Error,
        rate_limit_lines: 0,
        rate_limit_burst: 1000,
    };
    const MULTILINE: Settings = Settings {
        multiline: true,
        ..PLAIN
    };
    /// One line a second, bursts of two.
    const LIMITED: Settings = Settings {
        rate_limit_lines: 1,
        rate_limit_burst: 2,
        ..PLAIN
    };

    const fn at(ts_ns: i64, seen: u32) -> Position {
        Position { ts_ns, seen }
    }

    fn origin() -> Arc<Origin> {
        Arc::new(Origin::new(
            Arc::from("c0ffee"),
            "web".into(),
            LabelValue::from_label("1"),
            "web".into(),
            None,
            Arc::from("h"),
        ))
    }

    fn line(stream: StreamKind, ts_ns: i64, text: &'static str) -> LineRef<'static> {
        LineRef {
            stream,
            ts_ns,
            end_ts_ns: ts_ns,
            bytes: text.as_bytes(),
            truncated: false,
            eq_free: !text.contains('='),
        }
    }

    fn render(core: &mut LineCore, shown: &mut Vec<String>) {
        core.drain(|out| match out {
            Out::Messages(msgs) => {
                for m in msgs {
                    let id = m.id().trim_start_matches("c0ffee-");
                    let stream = if m.is_stderr() { "err" } else { "out" };
                    shown.push(format!("{id} {stream} {}", m.text().replace('\n', "|")));
                }
            }
            Out::Note(Note::Gap { after_ns, at_ns }) => {
                shown.push(format!("gap {after_ns}->{at_ns}"))
            }
            Out::Note(Note::Suppressed { lines }) => shown.push(format!("suppressed {lines}")),
        });
    }

    /// Runs the steps; returns what came out, in order, and the core.
    fn run(
        settings: Settings,
        resume: Option<Position>,
        steps: &[Step],
    ) -> (Vec<String>, LineCore) {
        let t0 = Instant::now();
        let mut now = t0;
        let mut core = LineCore::new(settings, origin(), resume, t0);
        let mut shown = Vec::new();
        for step in steps {
            match *step {
                Stdout(ts, text) => core.line(line(StreamKind::Stdout, ts, text), || now),
                Stderr(ts, text) => core.line(line(StreamKind::Stderr, ts, text), || now),
                Wait(ms) => now += Duration::from_millis(ms),
                Tick => {
                    shown.push("tick".into());
                    core.tick(now);
                }
                Finish => {
                    shown.push("finish".into());
                    core.finish(now);
                }
            }
            render(&mut core, &mut shown);
        }
        (shown, core)
    }

    fn check(settings: Settings, cases: &[Case]) {
        for c in cases {
            let (shown, _) = run(settings, c.resume, c.steps);
            assert_eq!(shown, c.want, "{}", c.name);
        }
    }

    const RESUME_CASES: &[Case] = &[
        Case {
            name: "several lines share one timestamp, one comes back to an older one",
            resume: None,
            steps: &[
                Stdout(10, "a"),
                Stdout(10, "b"),
                Stdout(11, "c"),
                Stdout(10, "d"),
            ],
            want: &["10-0 out a", "10-1 out b", "11-0 out c", "10-2 out d"],
        },
        Case {
            name: "resume skips the seen lines at the cursor's timestamp",
            resume: Some(at(10, 2)),
            steps: &[
                Stdout(10, "a"),
                Stdout(10, "b"),
                Stdout(10, "c"),
                Stdout(11, "d"),
            ],
            want: &["10-2 out c", "11-0 out d"],
        },
        Case {
            name: "resume at the last line: nothing again, no gap",
            resume: Some(at(10, 2)),
            steps: &[Stdout(10, "a"), Stdout(10, "b"), Finish],
            want: &["finish"],
        },
        Case {
            name: "lines older than the cursor (an engine ignoring since) are skipped",
            resume: Some(at(10, 1)),
            steps: &[Stdout(9, "old"), Stdout(10, "a"), Stdout(10, "b")],
            want: &["10-1 out b"],
        },
        Case {
            name: "the boundary line is gone: one gap, then every line",
            resume: Some(at(10, 2)),
            steps: &[
                Stdout(12, "x"),
                Stdout(12, "y"),
                Stdout(13, "z"),
                Stdout(20, "later"),
            ],
            want: &[
                "gap 10->12",
                "12-0 out x",
                "12-1 out y",
                "13-0 out z",
                "20-0 out later",
            ],
        },
        Case {
            name: "a cursor set to now (seen 0) is no line: no gap, nothing skipped past it",
            resume: Some(at(10, 0)),
            steps: &[Stdout(12, "x"), Stdout(12, "y")],
            want: &["12-0 out x", "12-1 out y"],
        },
        Case {
            name: "a cursor set to now keeps lines stamped at that very time",
            resume: Some(at(10, 0)),
            steps: &[Stdout(10, "x")],
            want: &["10-0 out x"],
        },
    ];

    #[test]
    fn positions_and_resume() {
        check(PLAIN, RESUME_CASES);
    }

    const PODMAN_SPLIT: &[u8] = include_bytes!("../../tests/data/podman-split.http");
    const PODMAN_SPLIT_SINCE: &[u8] = include_bytes!("../../tests/data/podman-split-since.http");
    const PODMAN_BURST: &[u8] = include_bytes!("../../tests/data/podman-burst.http");
    const PODMAN_BURST_SINCE: &[u8] = include_bytes!("../../tests/data/podman-burst-since.http");

    /// The lines of a recorded answer of Podman's own logs endpoint.
    fn podman_lines(resp: &[u8]) -> Vec<LogLine> {
        let (body, done) = crate::engine::chunked::recorded_body(resp);
        assert!(done);
        let mut d = crate::engine::frames::Decoder::framed(false, 1 << 20);
        let mut out = Vec::new();
        d.feed(&body, &mut |l| out.push(LogLine::from(l))).unwrap();
        d.finish(&mut |l| out.push(LogLine::from(l)));
        out
    }

    /// One read of `lines` resumed after `resume`: each message's id, text and position.
    fn read_all(lines: &[LogLine], resume: Option<Position>) -> Vec<(String, String, Position)> {
        let t = Instant::now();
        let mut core = LineCore::new(PLAIN, origin(), resume, t);
        let mut got = Vec::new();
        for l in lines {
            core.line(l.borrowed(), || t);
        }
        core.finish(t);
        core.drain(|o| {
            if let Out::Messages(m) = o {
                got.extend(m.iter().map(|m| {
                    let pos = m.position().unwrap();
                    (m.id().to_string(), m.text().to_string(), pos)
                }));
            }
        });
        got
    }

    /// Podman: a first read, and every resume the recordings allow (a cursor at any line of
    /// the second a recorded stream starts at, or later), give each line once, with the first
    /// read's id. The split line (`P line ` then `3` a second later) is placed at its end, so a
    /// stream resumed at that second, which holds only the `3`, counts it where the first read
    /// did, and `done` after it is not read again under a new id.
    #[test]
    fn podman_resumes_give_every_line_once_with_its_first_id() {
        for (full, resumed, n) in [
            (PODMAN_SPLIT, PODMAN_SPLIT_SINCE, 4),
            (PODMAN_BURST, PODMAN_BURST_SINCE, 55),
        ] {
            let first = read_all(&podman_lines(full), None);
            assert_eq!(first.len(), n);
            let mut ids: Vec<&String> = first.iter().map(|m| &m.0).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), n, "ids are unique");
            for stream in [podman_lines(full), podman_lines(resumed)] {
                let start = stream.iter().map(|l| l.end_ts_ns).min().unwrap();
                for (k, m) in first.iter().enumerate() {
                    if m.2.ts_ns >= start {
                        assert_eq!(read_all(&stream, Some(m.2)), first[k + 1..], "after {k}");
                    }
                }
            }
        }
        let split = read_all(&podman_lines(PODMAN_SPLIT), None);
        let texts: Vec<&str> = split.iter().map(|m| m.1.as_str()).collect();
        assert_eq!(texts, ["hello", "err", "P line 3", "done"]);
        let tail = read_all(&podman_lines(PODMAN_SPLIT_SINCE), Some(split[2].2));
        assert_eq!(tail, split[3..], "resumed after the split line: only done");
    }

    #[test]
    fn a_gap_is_counted_once() {
        let (_, mut core) = run(
            PLAIN,
            Some(at(10, 2)),
            &[Stdout(12, "x"), Stdout(13, "y"), Stdout(14, "z")],
        );
        let c = core.take_counts();
        assert_eq!((c.gaps, c.lines), (1, 3));
        assert_eq!(core.last(), Some(at(14, 1)));
    }

    const STREAM_CASES: &[Case] = &[
        Case {
            name: "both streams count together, in the engine's order",
            resume: None,
            steps: &[
                Stdout(10, "a"),
                Stderr(10, "b"),
                Stdout(10, "c"),
                Stderr(11, "d"),
            ],
            want: &["10-0 out a", "10-1 err b", "10-2 out c", "11-0 err d"],
        },
        Case {
            name: "resumed with the first read's interleaving: the same ids, nothing twice",
            resume: Some(at(10, 2)),
            steps: &[
                Stdout(10, "a"),
                Stderr(10, "b"),
                Stdout(10, "c"),
                Stderr(11, "d"),
            ],
            want: &["10-2 out c", "11-0 err d"],
        },
        Case {
            name: "skipped lines reordered among themselves: still exact",
            resume: Some(at(10, 2)),
            steps: &[Stderr(10, "b"), Stdout(10, "a"), Stdout(10, "c")],
            want: &["10-2 out c"],
        },
        Case {
            // The residual risk of the module documentation, pinned: the first read was
            // a, b (err) | c; a replay moving c before b repeats b and skips c.
            name: "a reorder across the cursor repeats one line and skips another",
            resume: Some(at(10, 2)),
            steps: &[Stdout(10, "a"), Stdout(10, "c"), Stderr(10, "b")],
            want: &["10-2 err b"],
        },
    ];

    #[test]
    fn stdout_and_stderr_at_one_timestamp() {
        check(PLAIN, STREAM_CASES);
    }

    const MULTILINE_CASES: &[Case] = &[
        Case {
            name: "continuations join; 300 ms of quiet after the last one completes it",
            resume: None,
            steps: &[
                Stdout(10, "Traceback (most recent call last):"),
                Wait(10),
                Stdout(11, "  File \"x.py\", line 1"),
                Wait(299),
                Tick,
                Wait(1),
                Tick,
            ],
            want: &[
                "tick",
                "tick",
                "10-0 out Traceback (most recent call last):|  File \"x.py\", line 1",
            ],
        },
        Case {
            name: "a line that continues nothing ends the message at once",
            resume: None,
            steps: &[
                Stdout(10, "start"),
                Stdout(11, "  more"),
                Stdout(12, "next"),
                Finish,
            ],
            want: &["10-0 out start|  more", "finish", "12-0 out next"],
        },
        Case {
            name: "stderr never continues stdout",
            resume: None,
            steps: &[
                Stdout(10, "Traceback"),
                Stderr(11, "  warn"),
                Stdout(12, "  File"),
                Finish,
            ],
            want: &[
                "10-0 out Traceback",
                "11-0 err   warn",
                "finish",
                "12-0 out   File",
            ],
        },
        Case {
            // A cursor sits at a message's last line, so it is inside one only when that
            // message was cut (quiet, or the stream ended): the rest is read as it was cut.
            name: "a resume inside a multi-line message keeps the rest as its own message",
            resume: Some(at(11, 1)),
            steps: &[
                Stdout(11, "  File a"),
                Stdout(12, "  File b"),
                Stdout(13, "  File c"),
                Finish,
            ],
            want: &["finish", "12-0 out   File b|  File c"],
        },
    ];

    #[test]
    fn multiline() {
        check(MULTILINE, MULTILINE_CASES);
    }

    #[test]
    fn multiline_respects_the_size_limit() {
        let s = Settings {
            max_line_bytes: 12,
            ..MULTILINE
        };
        let (shown, _) = run(
            s,
            None,
            &[
                Stdout(1, "first"),
                Stdout(2, "  123"),
                Stdout(3, "  more"),
                Finish,
            ],
        );
        assert_eq!(shown, ["finish", "1-0 out first|  123"]);
        let (_, mut core) = run(
            s,
            None,
            &[Stdout(1, "first"), Stdout(2, "  123"), Stdout(3, "  more")],
        );
        core.finish(Instant::now());
        let mut truncated = None;
        core.drain(|o| {
            if let Out::Messages(m) = o {
                truncated = Some(m[0].truncated());
                assert_eq!(
                    m[0].position(),
                    Some(at(3, 1)),
                    "the message ends at its last line"
                );
            }
        });
        assert_eq!(truncated, Some(true));
    }

    const RATE_LIMIT_CASES: &[Case] = &[
        Case {
            name: "a burst passes, errors always do, the rest is reported after a second",
            resume: None,
            steps: &[
                Stdout(1, "a"),
                Stdout(2, "b"),
                Stdout(3, "c"),
                Stderr(4, "d"),
                Stdout(5, "ERROR e"),
                Stdout(6, "f"),
                Wait(999),
                Tick,
                Wait(1),
                Tick,
                Stdout(7, "g"),
            ],
            want: &[
                "1-0 out a",
                "2-0 out b",
                "4-0 err d",
                "5-0 out ERROR e",
                "tick",
                "tick",
                "suppressed 2",
                "7-0 out g",
            ],
        },
        Case {
            name: "a due report comes before the next line kept",
            resume: None,
            steps: &[
                Stdout(1, "a"),
                Stdout(2, "b"),
                Stdout(3, "c"),
                Wait(1500),
                Stdout(4, "d"),
            ],
            want: &["1-0 out a", "2-0 out b", "suppressed 1", "4-0 out d"],
        },
        Case {
            name: "the end of the stream reports at once",
            resume: None,
            steps: &[Stdout(1, "a"), Stdout(2, "b"), Stdout(3, "c"), Finish],
            want: &["1-0 out a", "2-0 out b", "finish", "suppressed 1"],
        },
    ];

    #[test]
    fn rate_limit() {
        check(LIMITED, RATE_LIMIT_CASES);
    }

    #[test]
    fn rate_limit_counts() {
        let steps = [
            Stdout(1, "a"),
            Stdout(2, "b"),
            Stdout(3, "c"),
            Stdout(4, "d"),
            Finish,
        ];
        let (_, mut core) = run(LIMITED, None, &steps);
        let c = core.take_counts();
        assert_eq!((c.lines, c.suppressed), (4, 2));
        assert_eq!(core.last(), Some(at(4, 1)), "suppressed lines are read");
        assert_eq!(core.take_counts(), Counts::default(), "taken once");
    }

    /// Invalid UTF-8 is counted in every line, whether its message is made (and replaced
    /// there), held back by the rate limit or joined.
    #[test]
    fn invalid_lines_are_counted_however_they_end() {
        for (settings, made) in [(LIMITED, 2), (MULTILINE, 1), (PLAIN, 4)] {
            let t = Instant::now();
            let mut core = LineCore::new(settings, origin(), None, t);
            for (i, bytes) in [&b"a \xff"[..], b" b \xe2\x82", b" c", b" d \xc3"]
                .into_iter()
                .enumerate()
            {
                let mut l = line(StreamKind::Stdout, i as i64 + 1, "");
                l.bytes = bytes;
                core.line(l, || t);
            }
            core.finish(t);
            let mut texts = Vec::new();
            core.drain(|o| {
                if let Out::Messages(m) = o {
                    texts.extend(m.iter().map(|m| m.text().into_owned()));
                }
            });
            assert_eq!(texts.len(), made, "{texts:?}");
            assert_eq!(texts[0].split('\n').next(), Some("a \u{fffd}"));
            assert_eq!(core.take_counts().invalid_utf8, 3);
        }
    }

    #[test]
    fn idle_says_when_a_tick_has_work() {
        let (_, core) = run(PLAIN, None, &[Stdout(1, "a")]);
        assert_eq!(core.idle(), None, "a quiet plain stream costs no wake-ups");
        let (_, core) = run(MULTILINE, None, &[Stdout(1, "a")]);
        assert_eq!(core.idle(), Some(MULTILINE_QUIET));
        let (_, core) = run(
            LIMITED,
            None,
            &[Stdout(1, "a"), Stdout(2, "b"), Stdout(3, "c")],
        );
        assert_eq!(core.idle(), Some(SUPPRESS_REPORT));
    }

    #[test]
    fn the_clock_is_read_only_when_needed() {
        let reads = Cell::new(0);
        let t = Instant::now();
        let clock = || {
            reads.set(reads.get() + 1);
            t
        };
        let mut plain = LineCore::new(PLAIN, origin(), None, t);
        plain.line(line(StreamKind::Stdout, 1, "a"), clock);
        plain.line(line(StreamKind::Stdout, 2, "  b"), clock);
        assert_eq!(reads.get(), 0);
        let mut joining = LineCore::new(MULTILINE, origin(), None, t);
        joining.line(line(StreamKind::Stdout, 1, "a"), clock);
        joining.line(line(StreamKind::Stdout, 2, "  b"), clock);
        joining.line(line(StreamKind::Stdout, 3, "c"), clock);
        assert_eq!(reads.get(), 3, "once per line");
        let mut resumed = LineCore::new(MULTILINE, origin(), Some(at(5, 1)), t);
        resumed.line(line(StreamKind::Stdout, 5, "seen"), clock);
        assert_eq!(reads.get(), 3, "not for a skipped line");
    }

    #[test]
    fn batches_and_counts() {
        let mut core = LineCore::new(PLAIN, origin(), None, Instant::now());
        for i in 0..BATCH as i64 {
            assert!(!core.is_full());
            core.line(line(StreamKind::Stdout, i, "x"), Instant::now);
        }
        assert!(core.is_full());
        core.line(
            LineRef {
                stream: StreamKind::Stderr,
                ts_ns: 2_000_000_000,
                end_ts_ns: 2_000_000_000,
                bytes: b"bad \xff",
                truncated: true,
                eq_free: false,
            },
            Instant::now,
        );
        core.line(
            line(StreamKind::EngineError, 3_000_000_000, "boom"),
            Instant::now,
        );
        let mut n = 0;
        core.drain(|o| {
            if let Out::Messages(m) = o {
                n += m.len();
            }
        });
        assert_eq!(n, BATCH + 1, "engine errors make no message");
        assert!(!core.is_full());
        let c = core.take_counts();
        assert_eq!(
            c,
            Counts {
                lines: BATCH as u64 + 1,
                bytes: BATCH as u64 + 5,
                truncated: 1,
                invalid_utf8: 1,
                suppressed: 0,
                gaps: 0,
                last_line_ns: Some(2_000_000_000),
            }
        );
    }

    #[test]
    fn notes() {
        let gap = Note::Gap {
            after_ns: 10,
            at_ns: 12,
        };
        assert_eq!(
            (gap.action(), gap.ts_ns(), gap.level()),
            ("gap", Some(12), Level::Warn)
        );
        assert!(gap
            .text("web")
            .contains("lines of web logged after 10 were dropped"));
        let s = Note::Suppressed { lines: 3 };
        assert_eq!((s.action(), s.ts_ns()), ("suppressed", None));
        assert_eq!(s.text("web"), "suppressed 3 lines from web");
    }

    #[test]
    fn invalid_utf8_is_replaced_and_the_rest_kept() {
        assert_eq!(text_of(b"plain"), (Cow::Borrowed("plain"), false));
        assert_eq!(
            text_of(b"bad \xff\xfe bytes \xc3"),
            (Cow::Borrowed("bad \u{fffd}\u{fffd} bytes \u{fffd}"), true)
        );
        assert_eq!(text_of("é ok".as_bytes()), (Cow::Borrowed("é ok"), false));
        assert!(matches!(text_of("é ok".as_bytes()).0, Cow::Borrowed(_)));
    }

    #[test]
    fn continuations() {
        assert!(is_continuation("    at com.example.Foo(Foo.java:1)"));
        assert!(is_continuation("\tFile \"x.py\", line 1"));
        assert!(is_continuation("Caused by: java.io.IOException"));
        assert!(!is_continuation("ERROR boom"));
        assert!(!is_continuation("GET /index.html 200"));
    }
}
